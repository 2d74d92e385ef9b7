#!/usr/bin/env python3
"""Checks the JPEG pixel stage (src/decode/jpeg/{idct,upsample,color,pixels,simd}.rs) against
PIL byte for byte, independently of the entropy decoder.

For each test JPEG: jpeglib (libjpeg) reads the quantized DCT coefficients, quantization
tables and sampling factors; this script adds libjpeg's final `coef_bits` (from the SOS
headers) and writes them to a dump; a small harness binary builds a `Frame` from the dump and
runs `pixels::to_pixels`; its bytes are compared with `Image.open(f).load(); im.tobytes()`.

Needs ~/venv-ref (Pillow 13.0.0, numpy, jpeglib 1.0.2) and cjpeg on PATH. The harness is a
standalone crate that includes the module by path (it compiles in seconds):

    scripts/jpeg_pixel_harness/gen.sh
    (cd scripts/jpeg_pixel_harness && CARGO_TARGET_DIR=/tmp/jpeg_pixel_harness cargo build --release)

`pix DUMP OUT [REPS]` also times the pixel stage (REPS runs, mean ms on stderr).

Usage: ~/venv-ref/bin/python scripts/check_jpeg_pixels.py [--bin PATH] [--keep DIR] [FILES...]
With no FILES it synthesizes the standard set (qualities, subsamplings, odd sizes,
grayscale, RGB, CMYK, YCCK, progressive scan scripts, extreme DQT, edited coefficients).
"""
import argparse
import io
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image
import jpeglib



def scan_info(data):
    """Component ids in SOF order, progressive flag, and libjpeg's final coef_bits (zigzag)."""
    i = 2
    ids, prog, cb = [], False, None
    jfif, adobe = False, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        m = data[i + 1]
        if m == 0xFF:
            i += 1
            continue
        if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
            i += 2
            continue
        if m == 0xD9:
            break
        ln = struct.unpack(">H", data[i + 2:i + 4])[0]
        seg = data[i + 4:i + 2 + ln]
        if m == 0xE0 and seg[:5] == b"JFIF\0":
            jfif = True
        if m == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
            adobe = seg[11]
        if m in (0xC0, 0xC1, 0xC2, 0xC9, 0xCA):
            prog = m in (0xC2, 0xCA)
            n = seg[5]
            ids = [seg[6 + 3 * k] for k in range(n)]
            cb = [[-1] * 64 for _ in ids]
        if m == 0xDA:
            n = seg[0]
            sc = [seg[1 + 2 * k] for k in range(n)]
            ss, se, a = seg[1 + 2 * n], seg[2 + 2 * n], seg[3 + 2 * n]
            al = a & 15
            for cid in sc:
                ci = ids.index(cid)
                for k in range(ss, se + 1):
                    cb[ci][k] = al
            # skip entropy-coded data
            j = i + 2 + ln
            while j + 1 < len(data) and not (data[j] == 0xFF and data[j + 1] not in (0x00,) and not (0xD0 <= data[j + 1] <= 0xD7)):
                j += 1
            i = j
            continue
        i += 2 + ln
    if not prog:
        cb = [[0] * 64 for _ in ids]
    # The colour space as jdapimin.c (default_decompress_parms) decides it.
    if len(ids) == 1:
        cs = 0
    elif len(ids) == 3:
        if jfif:
            cs = 1
        elif adobe is not None:
            cs = 2 if adobe == 0 else 1
        elif ids == [82, 71, 66]:
            cs = 2
        else:
            cs = 1
    else:
        cs = 4 if adobe is not None and adobe != 0 else 3
    return ids, prog, cb, cs


def dump(path, out):
    data = open(path, "rb").read()
    ids, prog, cb, cs = scan_info(data)
    d = jpeglib.read_dct(path)
    comps = [d.Y]
    if d.has_chrominance:
        comps += [d.Cb, d.Cr]
    if d.has_black:
        comps += [d.K]
    b = bytearray(b"JPXD")
    b += struct.pack("<IIBBB", d.width, d.height, cs, int(prog), len(comps))
    for ci, arr in enumerate(comps):
        v, h = d.samp_factor[ci]  # jpeglib gives (v, h)
        hib, wib = arr.shape[:2]
        q = d.qt[d.quant_tbl_no[ci]].astype("<u2").reshape(64)
        b += struct.pack("<BBII", int(h), int(v), wib, hib)
        b += q.tobytes()
        b += np.array(cb[ci], dtype="<i4").tobytes()
        b += arr.astype("<i2").reshape(-1).tobytes()
    open(out, "wb").write(bytes(b))


def photo(w, h, seed=0):
    """A photo-like test image: gradients, edges, texture and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / 13.0 + y / 29.0)
    g = 128 + 90 * np.cos(x / 7.0 - y / 11.0) * np.sin(y / 5.0)
    bl = (x * 255.0 / max(w - 1, 1)) * ((y // 16 + x // 16) % 2) + 40
    img = np.stack([r, g, bl], -1) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def cjpeg(img, path, args):
    ppm = path + (".pgm" if img.mode == "L" else ".ppm")
    img.save(ppm)
    r = subprocess.run(["cjpeg", *args, "-outfile", path, ppm], capture_output=True)
    os.unlink(ppm)
    return r.returncode == 0


def synth(dirn):
    files = []

    def add(name, img, args=None, pil=None):
        p = os.path.join(dirn, name + ".jpg")
        if pil is not None:
            img.save(p, "JPEG", **pil)
        elif not cjpeg(img, p, args):
            print(f"cjpeg {args} refused {name}")
            return p
        files.append(p)
        return p

    base = photo(211, 137)
    for q in (10, 25, 50, 75, 90, 95, 100):
        add(f"q{q}_420", base, ["-quality", str(q), "-sample", "2x2"])
        add(f"q{q}_444", base, ["-quality", str(q), "-sample", "1x1"])
    for s in ("1x1", "2x1", "2x2", "1x2", "4x1", "1x4", "4x2", "2x4",
              "2x1,1x1,1x2", "2x2,1x2,2x1", "2x2,2x1,1x1", "1x2,1x1,1x1", "3x1", "3x2,1x1,1x1"):
        add("s_" + s.replace(",", "_"), base, ["-quality", "85", "-sample", s])
    for (w, h) in ((1, 1), (2, 2), (3, 5), (9, 17), (15, 16), (16, 15), (33, 7), (1023, 767)):
        im = photo(w, h, seed=w * h)
        for s in ("2x2", "2x1", "1x2", "1x1"):
            add(f"sz{w}x{h}_{s}", im, ["-quality", "80", "-sample", s])
    for w in range(1, 21):
        im = photo(w, 11, seed=w)
        for s in ("2x2", "2x1", "1x2", "4x1"):
            add(f"w{w}_{s}", im, ["-quality", "70", "-sample", s])
    add("gray", base.convert("L"), ["-quality", "80", "-grayscale"])
    add("gray_odd", photo(17, 9).convert("L"), ["-quality", "60"])
    add("rgb", base, ["-quality", "80", "-rgb"])
    add("rgb_prog", base, ["-quality", "80", "-rgb", "-progressive"])
    add("cmyk", base.convert("CMYK"), None, pil={"quality": 85})
    add("cmyk_prog", base.convert("CMYK"), None, pil={"quality": 85, "progressive": True})
    for name, samp in (("ycck", None), ("ycck_444", [[1, 1]] * 4)):
        y, x = np.mgrid[0:45, 0:77]
        arr = np.stack([(x * 3) % 256, (y * 5) % 256, (x + y) % 256, (x * y) % 256], -1).astype(np.uint8)
        sj = jpeglib.from_spatial(arr, jpeglib.JCS_CMYK)
        sj.jpeg_color_space = jpeglib.JCS_YCCK
        if samp is not None:
            sj.samp_factor = np.array(samp)
        p = os.path.join(dirn, name + ".jpg")
        sj.write_spatial(p, qt=85)
        files.append(p)
    add("pil_420", base, None, pil={"quality": 85, "subsampling": 2})
    add("pil_422", base, None, pil={"quality": 85, "subsampling": 1})
    # Progressive, default and smoothing-relevant scan scripts.
    add("prog_420", base, ["-quality", "80", "-progressive"])
    add("prog_444", base, ["-quality", "80", "-progressive", "-sample", "1x1"])
    big = photo(333, 251, seed=7)
    scripts = {
        "dc_only": "0,1,2: 0 0 0 0;",
        "dc_lowac": "0,1,2: 0 0 0 0; 0: 1 5 0 0; 1: 1 5 0 0; 2: 1 5 0 0;",
        "dc_sa": "0,1,2: 0 0 0 1; 0: 1 9 0 2; 1: 1 63 0 1; 2: 1 63 0 0;",
        "no_refine": "0,1,2: 0 0 0 1; 0: 1 5 0 2; 0: 6 63 0 2; 1: 1 63 0 1; 2: 1 63 0 1;",
        "refine_partial": "0,1,2: 0 0 0 1; 0: 1 5 0 2; 0: 1 5 2 1; 0: 6 63 0 0; 1: 1 63 0 0; 2: 1 63 0 0; 0,1,2: 0 0 1 0;",
        "ac_first": "0: 0 0 0 0; 0: 1 2 0 0; 1: 0 0 0 0; 2: 0 0 0 0; 1: 1 63 0 0;",
    }
    for name, sc in scripts.items():
        sp = os.path.join(dirn, name + ".txt")
        open(sp, "w").write(sc)
        for s in ("2x2", "1x1", "2x1"):
            add(f"scan_{name}_{s}", big, ["-quality", "75", "-sample", s, "-scans", sp])
        add(f"scan_{name}_odd", photo(37, 29, seed=3), ["-quality", "60", "-sample", "2x2", "-scans", sp])
    # Extreme quantization tables.
    qt = os.path.join(dirn, "q255.txt")
    open(qt, "w").write(" ".join(["255"] * 64) + "\n")
    q1 = os.path.join(dirn, "q1.txt")
    open(q1, "w").write(" ".join(["1"] * 64) + "\n")
    sat = photo(64, 48, seed=11)
    add("dqt255", sat, ["-qtables", qt, "-sample", "1x1", "-baseline"])
    add("dqt1", sat, ["-qtables", q1, "-sample", "2x2"])
    # Edited coefficients: extremes that make the AVX2 kernel and jidctint.c differ.
    rng = np.random.default_rng(5)
    edit_src = [f for f in files if os.path.basename(f) in ("dqt255.jpg", "dqt1.jpg", "q90_420.jpg", "prog_420.jpg")]
    for k, p in enumerate(edit_src):
        for mode in ("big", "dc"):
            d = jpeglib.read_dct(p)
            y = d.Y.astype(np.int32)
            if mode == "big":
                mask = rng.random(y.shape) < 0.05
                y[mask] = rng.integers(-1023, 1024, mask.sum())
            else:
                y[..., 0, 0] = rng.integers(-1023, 1024, y.shape[:2])
                y[..., 1:, :] = 0
            d.Y = y.astype(np.int16)
            out = os.path.join(dirn, f"edit{k}_{mode}.jpg")
            d.write_dct(out)
            files.append(out)
    return files


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="/tmp/jpeg_pixel_harness/release/pix")
    ap.add_argument("--keep")
    ap.add_argument("files", nargs="*")
    a = ap.parse_args()
    tmp = a.keep or tempfile.mkdtemp(prefix="jpix")
    os.makedirs(tmp, exist_ok=True)
    files = a.files or synth(tmp)
    ok = bad = 0
    for f in files:
        try:
            im = Image.open(f)
            im.load()
            want = im.tobytes()
        except Exception as e:  # PIL refuses it: nothing to compare
            print(f"SKIP {f}: PIL: {e}")
            continue
        dp = os.path.join(tmp, "dump.bin")
        op = os.path.join(tmp, "out.bin")
        dump(f, dp)
        r = subprocess.run([a.bin, dp, op], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"FAIL {f}: harness: {r.stderr.strip()[-300:]}")
            bad += 1
            continue
        got = open(op, "rb").read()
        if got == want:
            ok += 1
        else:
            bad += 1
            g = np.frombuffer(got, np.uint8)
            w = np.frombuffer(want, np.uint8)
            if g.shape != w.shape:
                print(f"FAIL {f}: {len(got)} bytes, PIL {len(want)} ({im.mode} {im.size})")
            else:
                dif = np.nonzero(g != w)[0]
                print(f"FAIL {f}: {len(dif)} of {len(w)} bytes differ, max {np.abs(g.astype(int) - w).max()}, first at {dif[0]} ({im.mode} {im.size})")
    print(f"{ok} identical, {bad} different, of {ok + bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
