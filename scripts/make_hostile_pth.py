#!/usr/bin/env python3
"""Writes issue 15's three crafted .pth files to a directory (default /tmp/hostile_pth) and says
what torch.load(weights_only=True) does with each, in a child process under a 4 GB
address-space limit (torch itself does not import under 1 GB). The crate's tests make the same files (and more) at run time
(tests/hostile_weights.rs, tests/bomb_alloc.rs); this script is for trying them by hand:

    ~/venv-ref/bin/python scripts/make_hostile_pth.py [DIR]
    cargo run --release --example predict -- --weights DIR/memo_bomb.pth \\
        --labels tests/fixtures/pth/labels.txt tests/fixtures/images/chelsea.png

Files (torch's zip layout: archive/data.pkl, stored):
  memo_bomb.pth      EMPTY_TUPLE, BINPUT 0, then 40 x (BINGET 0, BINGET 0, TUPLE2, BINPUT 0)
  huge_string.pth    BINUNICODE declaring 4,294,967,280 bytes with 3 present
  deep_nesting.pth   EMPTY_TUPLE wrapped by 2,000,000 TUPLE1
"""
import struct
import subprocess
import sys
import zipfile
from pathlib import Path


def files():
    bomb = b"\x80\x02)q\x00" + b"h\x00h\x00\x86q\x00" * 40 + b"."
    huge = b"\x80\x02X" + struct.pack("<I", 0xFFFFFFF0) + b"abc"
    deep = b"\x80\x02)" + b"\x85" * 2_000_000 + b"."
    return {"memo_bomb.pth": bomb, "huge_string.pth": huge, "deep_nesting.pth": deep}


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hostile_pth")
    out.mkdir(parents=True, exist_ok=True)
    for name, pickle in files().items():
        path = out / name
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr("archive/data.pkl", pickle)
            z.writestr("archive/byteorder", "little")
            z.writestr("archive/version", "3\n")
        probe = ("import torch,sys\n"
                 "try:\n"
                 f"    torch.load({str(path)!r}, weights_only=True); print('loads')\n"
                 "except BaseException as e:\n"
                 "    print(type(e).__name__ + ': ' + str(e).splitlines()[0][:160])\n")
        r = subprocess.run(["sh", "-c", f"ulimit -v 4000000; exec {sys.executable} -c \"$0\"",
                            probe], capture_output=True, text=True)
        said = (r.stdout.strip() or r.stderr.strip().splitlines()[-1:] or ["?"])
        said = said if isinstance(said, str) else said[0]
        print(f"{name:18s} {path.stat().st_size:>9,} bytes  torch.load(weights_only=True), "
              f"4 GB limit: exit {r.returncode}: {said}")


if __name__ == "__main__":
    main()
