#!/usr/bin/env python3
"""Decodes every file of one or more folders with the crate and with PIL, and counts the files
whose RGB bytes are identical (PIL: `Image.open(f).convert('RGB')`, as fastai's
`PILImage.create`; the crate: `load_image`, through `examples/decode_digest.rs`).

    ~/venv-ref/bin/python scripts/check_jpegs_against_pil.py [--exif] [--release] DIR_OR_FILE...

A file PIL refuses counts as agreeing when the crate refuses it too. Prints one line for each
file that differs, then the totals; exits 1 if any file differs. `--exif` applies the EXIF
orientation on both sides (PIL: `ImageOps.exif_transpose`).
"""
import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent


def pil_digest(path, exif):
    try:
        im = Image.open(path)
        im.load()
        if exif:
            im = ImageOps.exif_transpose(im)
        rgb = im.convert("RGB")
        return ("ok", f"{rgb.size[0]}x{rgb.size[1]}", hashlib.sha256(rgb.tobytes()).hexdigest())
    except Exception as e:  # noqa: BLE001  (every refusal counts)
        return ("error", f"{type(e).__name__}: {e}", None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+", help="folders (their files) or files")
    ap.add_argument("--exif", action="store_true", help="apply the EXIF orientation")
    ap.add_argument("--debug", action="store_true", help="a debug build (default: release)")
    args = ap.parse_args()
    profile = [] if args.debug else ["--release"]
    cmd = ["cargo", "run", "-q", *profile, "--example", "decode_digest", "--"]
    if args.exif:
        cmd.append("--exif")
    out = subprocess.run(cmd + args.paths, cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    same = differ = both_refuse = 0
    for line in out.splitlines():
        fields = line.split("\t")
        path = fields[-1]
        pil = pil_digest(path, args.exif)
        if fields[0] == "ok" and pil[0] == "ok":
            if (fields[1], fields[2]) == (pil[1], pil[2]):
                same += 1
                continue
            why = f"crate {fields[1]} {fields[2][:12]}, PIL {pil[1]} {pil[2][:12]}"
        elif fields[0] == "error" and pil[0] == "error":
            both_refuse += 1
            continue
        elif fields[0] == "error":
            why = f"crate refuses ({fields[1]}), PIL decodes it"
        else:
            why = f"crate decodes it, PIL refuses ({pil[1]})"
        differ += 1
        print(f"DIFFERS {path}: {why}")
    total = same + differ + both_refuse
    print(f"{same}/{total} files byte-identical to PIL, {both_refuse} refused by both, "
          f"{differ} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
