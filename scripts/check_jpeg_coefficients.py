#!/usr/bin/env python3
"""Compares the JPEG decoder's quantized DCT coefficients with libjpeg's, block for block.

Makes a varied set of JPEGs in a work folder (cjpeg and PIL: qualities 10..100, sampling
4:4:4 / 4:2:2 / 4:2:0 / 4:4:0 / 4:1:1 / odd factors, sizes from 1x1 up, progressive,
-optimize, restart intervals, grayscale, -rgb, CMYK, multi-scan sequential via -scans, custom
progressions), dumps each one's coefficients with the `dump` binary of a scratch crate built on
src/decode/jpeg (see the jhuff report: `dump --batch LIST` writes, per component, u32
width_in_blocks, u32 height_in_blocks, 64 u16 quant (natural order), then the blocks as 64
little-endian i16 each), and compares with `jpeglib.read_dct` (libjpeg-turbo 2.1).

Usage: ~/venv-ref/bin/python scripts/check_jpeg_coefficients.py DUMP_BINARY [WORKDIR]
"""
import os
import subprocess
import sys

import jpeglib
import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "images")


def sources():
    """A few real photos (the repository's fixtures) and synthetic noise."""
    out = {}
    for name in ["astronaut_portrait.png", "chelsea.png", "coffee_odd.png", "retina_large.png"]:
        p = os.path.join(FIXTURES, name)
        if os.path.exists(p):
            out[name.split(".")[0]] = Image.open(p).convert("RGB")
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    out["noise"] = Image.fromarray(noise)
    return out


def crops(img):
    """Full size and odd sizes."""
    w, h = img.size
    yield "full", img
    for cw, ch in [(1, 1), (7, 9), (17, 33), (1023, 767), (64, 8), (9, 200)]:
        if cw <= w and ch <= h:
            yield f"{cw}x{ch}", img.crop((0, 0, cw, ch))


def make_cases(work):
    cases = []
    srcs = sources()
    scan_files = {
        "seq3": "0;\n1;\n2;\n",
        "seq12": "0;\n1 2;\n",
        "prog_sa": "0,1,2: 0-0, 0, 1;\n0: 1-5, 0, 2;\n2: 1-63, 0, 1;\n1: 1-63, 0, 1;\n0: 6-63, 0, 2;\n0: 1-63, 2, 1;\n0,1,2: 0-0, 1, 0;\n2: 1-63, 1, 0;\n1: 1-63, 1, 0;\n0: 1-63, 1, 0;\n",
    }
    for k, v in scan_files.items():
        with open(os.path.join(work, k + ".scans"), "w") as f:
            f.write(v)
    for sname, img in srcs.items():
        for cname, im in crops(img):
            if sname == "retina_large" and cname == "full":
                continue
            base = os.path.join(work, f"{sname}_{cname}")
            im.save(base + ".ppm")
            im.convert("L").save(base + ".pgm")
            variants = [
                ("q75", ["-quality", "75"]),
                ("q10", ["-quality", "10"]),
                ("q100", ["-quality", "100"]),
                ("s444", ["-quality", "90", "-sample", "1x1"]),
                ("s422", ["-quality", "85", "-sample", "2x1"]),
                ("s440", ["-quality", "85", "-sample", "1x2"]),
                ("s411", ["-quality", "85", "-sample", "4x1"]),
                ("s420", ["-quality", "85", "-sample", "2x2"]),
                ("s31", ["-quality", "80", "-sample", "3x1,1x2,1x1"]),
                ("prog", ["-quality", "80", "-progressive"]),
                ("prog444", ["-quality", "95", "-progressive", "-sample", "1x1"]),
                ("opt", ["-quality", "60", "-optimize"]),
                ("rst1", ["-quality", "70", "-restart", "1B"]),
                ("rst3", ["-quality", "70", "-restart", "3B", "-progressive"]),
                ("rgb", ["-quality", "90", "-rgb"]),
                ("seq3", ["-quality", "75", "-scans", os.path.join(work, "seq3.scans")]),
                ("seq12", ["-quality", "75", "-scans", os.path.join(work, "seq12.scans")]),
                ("prog_sa", ["-quality", "88", "-scans", os.path.join(work, "prog_sa.scans")]),
            ]
            if cname not in ("full", "1023x767"):
                variants = [v for v in variants if v[0] in ("q75", "s420", "s422", "prog", "rst1", "seq3", "s411", "prog_sa")]
            for vname, args in variants:
                out = f"{base}_{vname}.jpg"
                subprocess.run(["cjpeg", *args, "-outfile", out, base + ".ppm"], check=True)
                cases.append(out)
            for vname, args in [("gray", ["-quality", "80"]), ("grayprog", ["-quality", "50", "-progressive"]), ("grayrst", ["-quality", "50", "-restart", "2B"])]:
                out = f"{base}_{vname}.jpg"
                subprocess.run(["cjpeg", *args, "-grayscale", "-outfile", out, base + ".pgm"], check=True)
                cases.append(out)
            for q in (30, 95):
                for sub in (0, 1, 2):
                    out = f"{base}_pil_q{q}_sub{sub}.jpg"
                    im.save(out, quality=q, subsampling=sub)
                    cases.append(out)
            out = f"{base}_pil_prog_opt.jpg"
            im.save(out, quality=70, progressive=True, optimize=True)
            cases.append(out)
            out = f"{base}_pil_cmyk.jpg"
            im.convert("CMYK").save(out, quality=85)
            cases.append(out)
    return cases


def read_dump(path):
    data = open(path, "rb").read()
    n = int.from_bytes(data[:4], "little")
    off = 4
    comps = []
    for _ in range(n):
        wib = int.from_bytes(data[off:off + 4], "little")
        hib = int.from_bytes(data[off + 4:off + 8], "little")
        off += 8
        q = np.frombuffer(data, dtype="<u2", count=64, offset=off)
        off += 128
        blocks = np.frombuffer(data, dtype="<i2", count=wib * hib * 64, offset=off)
        off += wib * hib * 128
        comps.append((q.reshape(8, 8), blocks.reshape(hib, wib, 8, 8)))
    return comps


def main():
    binary = sys.argv[1]
    work = sys.argv[2] if len(sys.argv) > 2 else "/tmp/jhuff_coef_cases"
    os.makedirs(work, exist_ok=True)
    jpeglib.version.set("turbo210")
    cases = make_cases(work)
    listfile = os.path.join(work, "list.tsv")
    with open(listfile, "w") as f:
        for c in cases:
            f.write(f"{c}\t{c}.dump\n")
    res = subprocess.run([binary, "--batch", listfile], capture_output=True, text=True, check=True)
    status = {}
    for line in res.stdout.splitlines():
        parts = line.split(" ", 2)
        status[parts[1]] = (parts[0], parts[2] if len(parts) > 2 else "")
    ok = bad = 0
    for c in cases:
        st, msg = status.get(c, ("MISSING", ""))
        if st != "OK":
            print("FAIL (decoder error)", c, msg)
            bad += 1
            continue
        mine = read_dump(c + ".dump")
        ref = jpeglib.read_dct(c)
        arrays = [ref.Y] + ([ref.Cb, ref.Cr] if ref.has_chrominance else []) + ([ref.K] if ref.has_black else [])
        good = len(arrays) == len(mine)
        why = "component count"
        if good:
            for ci, (arr, (q, blocks)) in enumerate(zip(arrays, mine)):
                if arr.shape != blocks.shape:
                    good, why = False, f"comp {ci} shape {arr.shape} vs {blocks.shape}"
                    break
                if not np.array_equal(arr, blocks):
                    diff = np.argwhere(arr != blocks)[0]
                    good, why = False, f"comp {ci} differs first at {tuple(diff)}"
                    break
                if not np.array_equal(ref.get_component_qt(ci), q):
                    good, why = False, f"comp {ci} quant table"
                    break
        if good:
            ok += 1
        else:
            bad += 1
            print("FAIL", c, why)
    print(f"{ok}/{ok + bad} files: coefficients identical to libjpeg's")
    sys.exit(0 if bad == 0 else 1)


if __name__ == "__main__":
    main()
