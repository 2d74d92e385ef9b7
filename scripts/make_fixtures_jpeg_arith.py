#!/usr/bin/env python3
"""Arithmetic-coded JPEG fixtures for the JPEG decoder (`src/decode/jpeg/arith.rs`).

Writes `tests/fixtures/jpeg_arith/*.jpg` and `manifest.json`. Run from the repository root with
the reference venv (Pillow 13.0.0 with libjpeg-turbo 3.2.0, numpy, jpeglib 1.0.2) and
libjpeg-turbo's command-line tools (`cjpeg`, `jpegtran`, `djpeg`; 2.1.5 made the committed
files):

    ~/venv-ref/bin/python scripts/make_fixtures_jpeg_arith.py

The files come from the fixture photos in `tests/fixtures/images/` (cropped small), encoded with
`cjpeg -arithmetic` / `jpegtran -arithmetic` in the sequential and progressive modes, with and
without restart intervals, every chroma sampling cjpeg offers, gray, RGB and CMYK; then DAC
variants (a DAC segment patched to other L/U/Kx, so the same bytes decode under other
conditioning) and corrupt variants (flipped bits that make libjpeg warn "bad arithmetic code",
wrong, missing and out-of-order restart markers, a marker inside the entropy-coded data,
garbage between scans, a truncated file).

Expected values, per file:
- `components`: the quantized DCT coefficients libjpeg reads (`jpeglib.read_dct` with
  libjpeg-turbo 2.1, whose `jdarith.c` decodes as 3.2's does for 8-bit data): for each
  component its `width_in_blocks`, `height_in_blocks` and the SHA-256 of the coefficients as
  little-endian i16, block rows top to bottom, blocks left to right, each block in natural
  (row-major) order;
- `pil`: what `Image.open(f).load()` gives with Pillow 13: `mode`, `width`, `height`, the
  SHA-256 of `im.tobytes()` and (`rgb_sha256`) of `im.convert("RGB").tobytes()`, or `error`
  with PIL's message;
- `warnings`: what `djpeg` says about the file (libjpeg's warnings: PIL ignores them);
- `what`: how the file was made.
PIL and large arithmetic files: Pillow feeds libjpeg from a suspending source in blocks of
`ImageFile.decodermaxblock` (65536) bytes, and `jdarith.c` cannot suspend, so Pillow 13 raises
"broken data stream when reading image file" on any arithmetic file whose entropy-coded data
runs past the first block (measured: cjpeg -arithmetic 451x300 4:4:4 at quality 95, 57 KB,
loads; at quality 97, 77 KB, fails; jpegtran -arithmetic -progressive of china.jpg, 175 KB,
fails). With `im.decodermaxblock = 1 << 30` the same files load, and the crate's decoder gives
those bytes exactly (checked on all three); it does not reproduce the failure. The fixtures stay
under 64 KiB each.

A file with `"components": null` is one libjpeg (under PIL) refuses: the decoder must return an
error (`truncated.jpg`: data that ends inside a scan).
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile

import jpeglib
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests", "fixtures", "images")
OUT = os.path.join(ROOT, "tests", "fixtures", "jpeg_arith")
TMP = tempfile.mkdtemp(prefix="jpeg_arith_")

jpeglib.version.set("turbo210")


def run(cmd, data=None):
    r = subprocess.run(cmd, input=data, capture_output=True, check=True)
    return r.stdout


def pnm(name, box=None, mode="RGB"):
    """A crop of a fixture image as a PPM/PGM file for cjpeg; returns its path."""
    im = Image.open(os.path.join(SRC, name)).convert(mode)
    if box:
        im = im.crop(box)
    path = os.path.join(TMP, f"{name}_{box}_{mode}.{'pgm' if mode == 'L' else 'ppm'}")
    im.save(path)
    return path


def cjpeg(src, *args):
    return run(["cjpeg", *args, src])


def jpegtran(jpeg, *args):
    return run(["jpegtran", *args], data=jpeg)


def segments(b):
    """(offset, marker, length) of each marker segment up to the first SOS (inclusive)."""
    out, i = [], 2
    while i < len(b):
        m = b[i + 1]
        length = b[i + 2] << 8 | b[i + 3]
        out.append((i, m, length))
        if m == 0xDA:
            break
        i += 2 + length
    return out


def with_dac(b, entries):
    """`b` with its DAC segments replaced by one DAC (list of (Tc<<4|Tb, value)) put right
    before the first SOS."""
    out = bytearray(b[:2])
    i = 2
    dac = bytes([0xFF, 0xCC, 0, 2 + 2 * len(entries)]) + bytes(x for e in entries for x in e)
    while True:
        m = b[i + 1]
        length = b[i + 2] << 8 | b[i + 3]
        if m == 0xDA:
            out += dac + b[i:]
            break
        if m != 0xCC:
            out += b[i : i + 2 + length]
        i += 2 + length
    # Later DAC segments (progressive files have one before each scan) are dropped too.
    rest = bytearray(out)
    j = rest.index(b"\xff\xda")
    tail = rest[j:]
    k = 0
    cleaned = bytearray()
    while k < len(tail):
        if tail[k] == 0xFF and k + 1 < len(tail) and tail[k + 1] == 0xCC:
            length = tail[k + 2] << 8 | tail[k + 3]
            k += 2 + length
            continue
        cleaned.append(tail[k])
        k += 1
    return bytes(rest[:j] + cleaned)


def scan_data_range(b, which=0):
    """(start, end) of the entropy-coded data of scan `which` (end: the marker after it, RSTn
    markers included in the data)."""
    i, n = 2, -1
    while True:
        j = b.index(b"\xff\xda", i)
        n += 1
        length = b[j + 2] << 8 | b[j + 3]
        start = j + 2 + length
        k = start
        while not (b[k] == 0xFF and b[k + 1] not in (0x00, 0xFF) and not 0xD0 <= b[k + 1] <= 0xD7):
            k += 1
        if n == which:
            return start, k
        i = k


def rst_positions(b):
    s, e = scan_data_range(b, 0)
    return [k for k in range(s, e - 1) if b[k] == 0xFF and 0xD0 <= b[k + 1] <= 0xD7]


def djpeg_warnings(path):
    r = subprocess.run(["djpeg", "-outfile", os.devnull, path], capture_output=True, text=True)
    return [line for line in r.stderr.splitlines() if line.strip()]


def coef_digest(path):
    try:
        d = jpeglib.read_dct(path)
        arrs = [d.Y] + ([d.Cb, d.Cr] if d.Cb is not None else [])
        if d.K is not None:
            arrs.append(d.K)
        out = []
        for a in arrs:
            a = np.ascontiguousarray(a, dtype="<i2")
            out.append(
                {
                    "width_in_blocks": int(a.shape[1]),
                    "height_in_blocks": int(a.shape[0]),
                    "sha256": hashlib.sha256(a.tobytes()).hexdigest(),
                }
            )
        return out
    except Exception:  # libjpeg refuses the file
        return None


def pil_result(path):
    try:
        im = Image.open(path)
        im.load()
        return {
            "mode": im.mode,
            "width": im.width,
            "height": im.height,
            "sha256": hashlib.sha256(im.tobytes()).hexdigest(),
            "rgb_sha256": hashlib.sha256(im.convert("RGB").tobytes()).hexdigest(),
        }
    except Exception as e:  # noqa: BLE001 - recorded as the expected outcome
        return {"error": str(e)}


def find_mutation(b, make, want, seed_range=range(2000)):
    """The first `make(b, seed)` for which djpeg's warnings contain `want` and PIL decodes it."""
    for seed in seed_range:
        m = make(b, seed)
        if m is None:
            continue
        p = os.path.join(TMP, "probe.jpg")
        with open(p, "wb") as f:
            f.write(m)
        w = djpeg_warnings(p)
        if os.environ.get("DBG"):
            print(seed, w, pil_result(p), file=sys.stderr)
        if any(want in x for x in w) and "error" not in pil_result(p):
            return m
    raise SystemExit(f"no mutation gives {want!r} ({make})")


def flip_in_scan(which):
    def make(b, seed):
        s, e = scan_data_range(b, which)
        rng = np.random.default_rng(seed)
        p = int(rng.integers(s + 2, e - 2))
        if b[p] == 0xFF or b[p - 1] == 0xFF:
            return None
        v = b[p] ^ (1 << int(rng.integers(0, 8)))
        if v == 0xFF:
            return None
        return b[:p] + bytes([v]) + b[p + 1 :]

    return make


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".jpg"):
            os.remove(os.path.join(OUT, f))
    files = {}

    def add(name, data, what):
        assert name not in files
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        files[name] = what

    cat = pnm("chelsea.png", (150, 40, 271, 131))  # 121x91, odd sides
    coffee = pnm("coffee_odd.png", (60, 50, 157, 123))  # 97x73
    tiny = pnm("rocket_tiny.png")  # 37x61
    cam = pnm("camera_L.png", (180, 60, 313, 181), "L")  # 133x121
    astro = pnm("astronaut_portrait.png", (100, 60, 173, 171))  # 73x111

    # Sequential.
    add("seq_420.jpg", cjpeg(cat, "-arithmetic"), "cjpeg -arithmetic (4:2:0), 121x91")
    add("seq_422_q95.jpg", cjpeg(coffee, "-arithmetic", "-sample", "2x1", "-quality", "95"),
        "cjpeg -arithmetic -sample 2x1 -quality 95, 97x73")
    add("seq_444_q100.jpg", cjpeg(tiny, "-arithmetic", "-sample", "1x1", "-quality", "100"),
        "cjpeg -arithmetic -sample 1x1 -quality 100 (large values, magnitude categories), 37x61")
    add("seq_440_rst.jpg", cjpeg(astro, "-arithmetic", "-sample", "1x2", "-restart", "1"),
        "cjpeg -arithmetic -sample 1x2 -restart 1 (a restart every MCU row), 73x111")
    add("seq_411_rst_blocks.jpg", cjpeg(cat, "-arithmetic", "-sample", "4x1", "-restart", "3B"),
        "cjpeg -arithmetic -sample 4x1 -restart 3B (every 3 MCUs, wraps RST7->RST0), 121x91")
    add("seq_gray.jpg", cjpeg(cam, "-arithmetic", "-grayscale"), "cjpeg -arithmetic, gray 133x121")
    add("seq_rgb.jpg", cjpeg(coffee, "-arithmetic", "-rgb"), "cjpeg -arithmetic -rgb (stored RGB)")
    add("seq_4x2_odd.jpg", cjpeg(astro, "-arithmetic", "-sample", "4x2,1x1,1x1", "-quality", "85"),
        "cjpeg -arithmetic -sample 4x2,1x1,1x1 (10 blocks an MCU), 73x111")
    qt = os.path.join(TMP, "q.txt")
    with open(qt, "w") as f:
        f.write(" ".join(str(1 + (i * 7) % 23) for i in range(64)) + "\n")
        f.write(" ".join(str(2 + (i * 5) % 31) for i in range(64)) + "\n")
    add("seq_qtables.jpg", cjpeg(cat, "-arithmetic", "-qtables", qt, "-qslots", "0,1,1"),
        "cjpeg -arithmetic -qtables (custom tables 0 and 1)")
    scans = os.path.join(TMP, "scans.txt")
    with open(scans, "w") as f:
        f.write("0;\n2;\n1;\n")
    add("seq_noninterleaved.jpg", cjpeg(coffee, "-arithmetic", "-scans", scans),
        "cjpeg -arithmetic -scans '0; 2; 1;' (sequential, one component a scan, out of order)")

    # Progressive.
    add("prog_420.jpg", cjpeg(cat, "-arithmetic", "-progressive"), "cjpeg -arithmetic -progressive")
    add("prog_444_rst.jpg",
        cjpeg(coffee, "-arithmetic", "-progressive", "-sample", "1x1", "-restart", "2B"),
        "cjpeg -arithmetic -progressive -sample 1x1 -restart 2B")
    add("prog_gray_q100.jpg", cjpeg(cam, "-arithmetic", "-progressive", "-quality", "100"),
        "cjpeg -arithmetic -progressive -quality 100, gray")
    add("prog_422_rst.jpg",
        cjpeg(tiny, "-arithmetic", "-progressive", "-sample", "2x1", "-restart", "1"),
        "cjpeg -arithmetic -progressive -sample 2x1 -restart 1, 37x61")
    prog_scans = os.path.join(TMP, "pscans.txt")
    with open(prog_scans, "w") as f:
        # DC in two steps, AC first passes with Al 3 and 2, refinements down to Al 0.
        f.write("0,1,2: 0-0, 0, 2;\n0: 1-5, 0, 3;\n2: 1-63, 0, 1;\n1: 1-63, 0, 1;\n"
                "0: 6-63, 0, 3;\n0,1,2: 0-0, 2, 1;\n0: 1-63, 3, 2;\n0,1,2: 0-0, 1, 0;\n"
                "0: 1-63, 2, 1;\n2: 1-63, 1, 0;\n1: 1-63, 1, 0;\n0: 1-63, 1, 0;\n")
    add("prog_deep_refine.jpg", cjpeg(astro, "-arithmetic", "-scans", prog_scans),
        "cjpeg -arithmetic -scans: DC Al 2 with two refinements, AC Al 3 with three")
    small = cjpeg(astro, "-quality", "80")
    add("jpegtran_prog.jpg", jpegtran(small, "-arithmetic", "-progressive"),
        "cjpeg -quality 80 (Huffman), then jpegtran -arithmetic -progressive")
    cmyk = Image.open(os.path.join(SRC, "rocket_tiny.png")).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=90)
    add("seq_cmyk.jpg", jpegtran(buf.getvalue(), "-arithmetic"),
        "PIL CMYK JPEG (Adobe marker), then jpegtran -arithmetic")
    add("prog_cmyk.jpg", jpegtran(buf.getvalue(), "-arithmetic", "-progressive"),
        "PIL CMYK JPEG (Adobe marker), then jpegtran -arithmetic -progressive")

    # DAC variants: the same bytes decoded under other conditioning.
    seq = cjpeg(cat, "-arithmetic")
    add("dac_dc_l2_u5.jpg", with_dac(seq, [(0, 0x52), (1, 0x52), (0x10, 5), (0x11, 5)]),
        "seq_420 bytes with DAC DC L=2 U=5 (tables 0, 1)")
    add("dac_dc_l0_u0.jpg", with_dac(seq, [(0, 0x00), (1, 0xF0), (0x10, 5), (0x11, 5)]),
        "seq_420 bytes with DAC DC L=0 U=0 (table 0), L=0 U=15 (table 1)")
    add("dac_ac_k1_k63.jpg", with_dac(seq, [(0, 0x10), (1, 0x10), (0x10, 1), (0x11, 63)]),
        "seq_420 bytes with DAC AC Kx=1 (table 0), Kx=63 (table 1)")
    prog = cjpeg(coffee, "-arithmetic", "-progressive", "-sample", "1x1")
    add("dac_prog_mixed.jpg",
        with_dac(prog, [(0, 0x31), (1, 0xFF), (0x10, 20), (0x11, 2)]),
        "progressive 4:4:4 with one DAC: DC L=1 U=3, L=15 U=15; AC Kx=20, 2")

    # Corrupt variants.
    rst = cjpeg(cat, "-arithmetic", "-restart", "2B")
    add("bad_code.jpg", find_mutation(seq, flip_in_scan(0), "bad arithmetic code"),
        "seq_420 with one flipped bit: a spectral/magnitude overflow (rest of the scan skipped)")
    add("bad_code_rst.jpg", find_mutation(rst, flip_in_scan(0), "bad arithmetic code"),
        "restart every 2 MCUs, one flipped bit: overflow, decoding resumes at the next RSTn")
    add("bad_code_prog.jpg",
        find_mutation(prog, flip_in_scan(1), "bad arithmetic code",
                      seed_range=range(4000)),
        "progressive 4:4:4, one flipped bit in the first AC scan (Y, 1..=5)")
    pos = rst_positions(rst)

    def set_rst(b, k, n):
        p = pos[k]
        return b[: p + 1] + bytes([0xD0 + n]) + b[p + 2 :]

    k = 5
    n = b"%c" % rst[pos[k] + 1]
    n = n[0] - 0xD0
    add("rst_ahead.jpg", set_rst(rst, k, (n + 1) & 7),
        f"RST marker {k} renumbered one ahead (resync action 3: an empty interval, then resync)")
    add("rst_far.jpg", set_rst(rst, k, (n + 4) & 7),
        f"RST marker {k} renumbered four ahead (resync action 1: taken as the expected one)")
    add("rst_behind.jpg", set_rst(rst, k, (n - 1) & 7),
        f"RST marker {k} renumbered one behind (resync action 2: skip to the next marker)")
    add("rst_missing.jpg", rst[: pos[k]] + rst[pos[k] + 2 :], f"RST marker {k} deleted")
    add("rst_garbage.jpg", rst[: pos[k]] + b"\x12\x34\xff\x00\x56" + rst[pos[k] :],
        f"garbage bytes (with a stuffed FF 00) before RST marker {k}")
    s, e = scan_data_range(seq, 0)
    mid = (s + e) // 2
    while seq[mid] == 0xFF or seq[mid - 1] == 0xFF:
        mid += 1
    add("marker_in_data.jpg", seq[:mid] + b"\xff\xd9",
        "seq_420 cut in the middle of its scan by EOI: zeros fed to the end of the scan")
    s3, e3 = scan_data_range(prog, 4)
    mid = (s3 + e3) // 2
    while prog[mid] == 0xFF or prog[mid - 1] == 0xFF:
        mid += 1
    add("marker_in_data_prog.jpg", prog[:mid] + b"\xff\xff\xd2" + prog[mid:],
        "progressive: FF FF D2 (fill byte and a stray RST2) inside scan 4's data")
    add("garbage_after_scan.jpg", prog[:e3] + b"\x00\x01\x02\xff\x00\x03" + prog[e3:],
        "progressive: garbage (with a stuffed FF 00) after scan 4, before the next marker")
    add("truncated.jpg", seq[: (s + e) // 2], "seq_420 cut in the middle of its scan (no EOI)")

    manifest = {}
    total = 0
    for name, what in sorted(files.items()):
        path = os.path.join(OUT, name)
        total += os.path.getsize(path)
        manifest[name] = {
            "what": what,
            # libjpeg's stdio source (djpeg, jpeglib) pads a truncated file with a fake EOI;
            # PIL's suspending source cannot, and jdarith.c cannot suspend: an error.
            "components": None if name == "truncated.jpg" else coef_digest(path),
            "pil": pil_result(path),
            "warnings": djpeg_warnings(path),
        }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(files)} files, {total} bytes", file=sys.stderr)
    assert total <= 150_000, total


if __name__ == "__main__":
    main()
