#!/usr/bin/env python3
"""Builds tests/fixtures/jpeg/: the JPEG corpus the crate's decoder is checked against, with
what PIL (Pillow 13, libjpeg-turbo 3) and fastai make of every file.

Run it in the reference environment (see scripts/make_fixtures.py; it needs Pillow, numpy,
jpeglib, scikit-image, matplotlib, scikit-learn, and fastai + timm for the `fastai` step) with
libjpeg-turbo's `cjpeg` on the PATH:

    ~/venv-ref/bin/python scripts/make_fixtures_jpeg.py all        # corpus + fastai
    ~/venv-ref/bin/python scripts/make_fixtures_jpeg.py corpus     # the JPEGs and PIL's answers
    ~/venv-ref/bin/python scripts/make_fixtures_jpeg.py fastai     # fastai's answers (needs corpus)

Sources are photos that ship inside PyPI packages (nothing is downloaded): scikit-image's
`skimage/data`, matplotlib's `mpl-data/sample_data` and scikit-learn's `datasets/images`
(licences in tests/fixtures/images/README.md), cropped to small sizes. Each is re-encoded:

- with PIL (`Image.save`): qualities 30/75/95/100, subsampling 4:4:4, 4:2:2, 4:2:0,
  progressive, optimized Huffman tables, custom (extreme) quantization tables, grayscale,
  CMYK, EXIF orientations 1-8, odd sizes;
- with `cjpeg` (libjpeg-turbo): every sampling libjpeg-turbo decodes (4:4:0, 4:1:1, 4:1:0,
  mixed factors), restart intervals, arithmetic coding (sequential and progressive), stored
  RGB, custom progressive scan scripts (successive approximation), other DCTs;
- with `jpeglib` (libjpeg): YCCK;
- damaged by this script: truncated, flipped bytes in the entropy-coded data, wrong or
  missing restart markers, junk between markers, trailing bytes, missing tables, a 12-bit
  frame header; PIL decodes some of them (libjpeg's warnings) and refuses the others, and
  the manifest records which.

The `corpus` step also writes `fuzz/seeds/decode_transforms/jpeg_*.jpg` (a few small files,
each after the fuzz target's 3 parameter bytes).

For each file `manifest.json` records what `Image.open(f)` reports (mode, size) and the
SHA-256 of `im.tobytes()` after `load()` (PIL's native mode: L, RGB or CMYK), of
`im.convert('RGB').tobytes()` (what fastai's `PILImage.create` gives) and, where the file
has an EXIF orientation, of `ImageOps.exif_transpose(im).convert('RGB')`; or the exception
PIL raises. The `fastai` step adds, for the files marked `fastai`, the SHA-256 of fastai's
normalized input (`learn.dls.test_dl([f]).one_batch()[0]`, f32 little-endian) and
`learn.predict(f)`'s probabilities, with the repository's fixture learner
(`weights/pets_vit_tiny.safetensors`, rebuilt as scripts/make_fixtures.py does).
"""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (photo(), the fixture learner, sha256, versions)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "jpeg"
MANIFEST = OUT / "manifest.json"
BUDGET = 3 * 1024 * 1024  # the corpus stays under 3 MB

# Files whose fastai input and probabilities are recorded (`fastai` step).
FASTAI_FILES = [
    "fastai_420_q75.jpg", "fastai_444_q95.jpg", "fastai_422_q30.jpg", "fastai_prog_420.jpg",
    "fastai_gray.jpg", "fastai_cmyk.jpg", "fastai_ycck.jpg", "fastai_exif6.jpg",
    "fastai_arith.jpg", "fastai_411_restart.jpg", "fastai_440_prog.jpg",
]


def rgb(name):
    return Image.open(mf.photo(name)).convert("RGB")


def sha(b):
    return hashlib.sha256(b).hexdigest()


class Corpus:
    def __init__(self):
        self.cases = []
        self.tmp = Path(tempfile.mkdtemp(prefix="jpeg-corpus-"))

    def add(self, name, group, how, data):
        assert name.endswith(".jpg") and name not in {c["file"] for c in self.cases}, name
        (OUT / name).write_bytes(data)
        self.cases.append({"file": name, "group": group, "how": how})
        return data

    def pil(self, name, group, img, how=None, **kw):
        buf = io.BytesIO()
        img.save(buf, "JPEG", **kw)
        if how is None:
            how = "PIL " + " ".join(f"{k}={v}" for k, v in kw.items() if k != "exif")
        return self.add(name, group, how, buf.getvalue())

    def cjpeg(self, name, group, img, args):
        src = self.tmp / ("in.pgm" if img.mode == "L" else "in.ppm")
        img.save(src)
        data = subprocess.run(["cjpeg", *args, str(src)], check=True,
                              capture_output=True).stdout
        return self.add(name, group, "cjpeg " + " ".join(args), data)


def segments(data):
    """(marker, offset, length incl. marker) of the marker segments before the first SOS."""
    out, i = [], 2
    while i + 4 <= len(data):
        assert data[i] == 0xFF, (i, data[i])
        m = data[i + 1]
        n = int.from_bytes(data[i + 2:i + 4], "big")
        out.append((m, i, n + 2))
        if m == 0xDA:
            break
        i += 2 + n
    return out


def scan_start(data):
    m, at, n = segments(data)[-1]
    assert m == 0xDA
    return at + n


def drop_segments(data, marker):
    out, last = bytearray(), 0
    for m, at, n in segments(data):
        if m == marker:
            out += data[last:at]
            last = at + n
    return bytes(out + data[last:])


def flip(data, at, mask=0xFF):
    """Flips bits of the byte at `at` (moved off any FF byte and its successor, so no marker
    is made or broken)."""
    b = bytearray(data)
    while b[at] == 0xFF or b[at - 1] == 0xFF or (b[at] ^ mask) == 0xFF:
        at += 1
    b[at] ^= mask
    return bytes(b)


def make_corpus():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    c = Corpus()
    chelsea = rgb("chelsea")
    astronaut = rgb("astronaut")
    coffee = rgb("coffee")
    rocket = rgb("rocket")
    hopper = rgb("grace_hopper")
    china = rgb("china")
    camera = Image.open(mf.photo("camera")).convert("L")
    retina = rgb("retina")

    # Small crops with sides that are not multiples of 16 (partial MCUs at the edges).
    cat = chelsea.crop((150, 40, 150 + 101, 40 + 75))
    face = astronaut.crop((160, 40, 160 + 93, 40 + 83))
    cup = coffee.crop((200, 100, 200 + 117, 100 + 71))
    sky = china.crop((100, 20, 100 + 85, 20 + 66))
    gray = camera.crop((200, 60, 200 + 97, 60 + 77))

    # -- PIL: sampling x quality, baseline and progressive ------------------------------------
    for ss in ("4:4:4", "4:2:2", "4:2:0"):
        tag = ss.replace(":", "")
        for q in (30, 75, 95):
            c.pil(f"pil_{tag}_q{q}.jpg", ss, cat, quality=q, subsampling=ss)
            c.pil(f"pil_{tag}_q{q}_prog.jpg", f"{ss} progressive", face, quality=q,
                  subsampling=ss, progressive=True)
        c.pil(f"pil_{tag}_q100.jpg", ss, cup, quality=100, subsampling=ss)
        c.pil(f"pil_{tag}_opt.jpg", ss, sky, quality=85, subsampling=ss, optimize=True)
    c.pil("pil_420_q75_opt_prog.jpg", "4:2:0 progressive", sky, quality=75, optimize=True,
          progressive=True)
    # Restart intervals written by PIL.
    c.pil("pil_420_rst_blocks3.jpg", "restart intervals", cat, quality=80, subsampling="4:2:0",
          restart_marker_blocks=3)
    c.pil("pil_444_rst_rows1.jpg", "restart intervals", cup, quality=80, subsampling="4:4:4",
          restart_marker_rows=1)
    # Grayscale.
    for q in (30, 75, 95):
        c.pil(f"pil_gray_q{q}.jpg", "grayscale", gray, quality=q)
    c.pil("pil_gray_prog.jpg", "grayscale progressive", gray, quality=80, progressive=True)
    # CMYK (PIL writes an Adobe marker, transform 0, inverted samples).
    for q in (50, 90):
        c.pil(f"pil_cmyk_q{q}.jpg", "CMYK", cat.convert("CMYK"), quality=q)
    c.pil("pil_cmyk_prog.jpg", "CMYK progressive", face.convert("CMYK"), quality=75,
          progressive=True)
    # Extreme quantization tables: all 1 (every coefficient kept), all 255, 16-bit tables.
    c.pil("qt_all1.jpg", "quantization tables", cup, qtables=[[1] * 64, [1] * 64],
          subsampling="4:2:0")
    c.pil("qt_all255.jpg", "quantization tables", cup, qtables=[[255] * 64, [255] * 64],
          subsampling="4:2:0")
    c.pil("qt_16bit.jpg", "quantization tables", cat,
          qtables=[[1000 + 30 * i for i in range(64)], [32767] * 64], subsampling="4:4:4")
    c.pil("qt_mixed.jpg", "quantization tables", face,
          qtables=[[1 + (i * 37) % 255 for i in range(64)], [2 + (i * 11) % 200 for i in range(64)]],
          subsampling="4:2:2")
    # Odd sizes: 1x1, 7x9, a width sweep (4:2:0) and a height sweep (4:2:2).
    c.pil("size_1x1.jpg", "odd sizes", cat.crop((50, 50, 51, 51)), quality=90)
    c.pil("size_1x1_gray.jpg", "odd sizes", gray.crop((50, 50, 51, 51)), quality=90)
    c.pil("size_7x9.jpg", "odd sizes", cat.crop((10, 10, 17, 19)), quality=90)
    c.pil("size_7x9_prog.jpg", "odd sizes", face.crop((10, 10, 17, 19)), quality=90,
          progressive=True)
    for w in range(1, 18):
        c.pil(f"width_{w:02d}_420.jpg", "odd sizes", cat.crop((40, 20, 40 + w, 31)), quality=85,
              subsampling="4:2:0")
    for h in range(1, 18):
        c.pil(f"height_{h:02d}_422.jpg", "odd sizes", face.crop((20, 30, 33, 30 + h)),
              quality=85, subsampling="4:2:2")
    # A large odd-sized photo, baseline 4:2:0 and progressive 4:4:4.
    big = retina.crop((150, 200, 150 + 1023, 200 + 767))
    c.pil("large_1023x767.jpg", "large", big, quality=60, subsampling="4:2:0")
    c.pil("large_1023x767_prog.jpg", "large", big.resize((511, 383), Image.LANCZOS), quality=70,
          subsampling="4:4:4", progressive=True)
    # EXIF orientations 1-8 (fastai ignores the tag; the crate applies it on request).
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        c.pil(f"exif_orientation{o}.jpg", "EXIF orientation", face, how=f"PIL orientation={o}",
              quality=80, exif=exif.tobytes())

    # -- cjpeg: every sampling, restarts, arithmetic, RGB, scan scripts -----------------------
    samplings = {
        "444": "1x1", "422": "2x1", "420": "2x2", "440": "1x2", "411": "4x1", "410": "4x2",
        "h1v4": "1x4", "h2v4": "2x4",
    }
    names = {"440": "4:4:0", "411": "4:1:1", "410": "4:1:0", "h1v4": "1x4 (4:4:0 x2)",
             "h2v4": "2x4", "444": "4:4:4", "422": "4:2:2", "420": "4:2:0"}
    for tag, s in samplings.items():
        for q in (30, 90):
            c.cjpeg(f"cj_{tag}_q{q}.jpg", names[tag], cat, ["-quality", str(q), "-sample", s])
        c.cjpeg(f"cj_{tag}_prog.jpg", f"{names[tag]} progressive", face,
                ["-quality", "75", "-sample", s, "-progressive"])
    # Mixed per-component factors (luma not the largest in one direction, chroma 2x1/1x2, 3x).
    c.cjpeg("cj_mixed_2x1_1x2.jpg", "mixed sampling", cup,
            ["-quality", "80", "-sample", "2x1,1x2,1x1"])
    c.cjpeg("cj_mixed_1x1_2x2.jpg", "mixed sampling", cup,
            ["-quality", "80", "-sample", "1x1,2x2,2x2"])
    c.cjpeg("cj_mixed_3x1.jpg", "mixed sampling", cup, ["-quality", "80", "-sample", "3x1"])
    c.cjpeg("cj_mixed_3x2_prog.jpg", "mixed sampling", cup,
            ["-quality", "80", "-sample", "3x2,1x1,1x1", "-progressive"])
    # Restart intervals (in MCU rows and in MCUs), baseline and progressive.
    c.cjpeg("cj_rst_row1.jpg", "restart intervals", cat, ["-quality", "75", "-restart", "1"])
    c.cjpeg("cj_rst_1b.jpg", "restart intervals", cat, ["-quality", "75", "-restart", "1B"])
    c.cjpeg("cj_rst_5b_444.jpg", "restart intervals", face,
            ["-quality", "75", "-sample", "1x1", "-restart", "5B"])
    c.cjpeg("cj_rst_2b_prog.jpg", "restart intervals", face,
            ["-quality", "75", "-progressive", "-restart", "2B"])
    c.cjpeg("cj_rst_gray.jpg", "restart intervals", gray, ["-quality", "75", "-restart", "3B"])
    # Arithmetic coding.
    for tag, s in (("444", "1x1"), ("420", "2x2"), ("411", "4x1")):
        c.cjpeg(f"cj_arith_{tag}.jpg", "arithmetic", cat,
                ["-quality", "75", "-arithmetic", "-sample", s])
        c.cjpeg(f"cj_arith_{tag}_prog.jpg", "arithmetic progressive", face,
                ["-quality", "75", "-arithmetic", "-progressive", "-sample", s])
    c.cjpeg("cj_arith_q30.jpg", "arithmetic", cup, ["-quality", "30", "-arithmetic"])
    c.cjpeg("cj_arith_q98.jpg", "arithmetic", cup, ["-quality", "98", "-arithmetic"])
    c.cjpeg("cj_arith_gray.jpg", "arithmetic", gray, ["-quality", "75", "-arithmetic"])
    c.cjpeg("cj_arith_gray_prog.jpg", "arithmetic progressive", gray,
            ["-quality", "75", "-arithmetic", "-progressive"])
    c.cjpeg("cj_arith_rst.jpg", "arithmetic", cat, ["-quality", "75", "-arithmetic",
                                                    "-restart", "2B"])
    c.cjpeg("cj_arith_prog_rst.jpg", "arithmetic progressive", face,
            ["-quality", "75", "-arithmetic", "-progressive", "-restart", "1"])
    # Grayscale, stored RGB, optimized tables, other DCTs.
    c.cjpeg("cj_gray_q30.jpg", "grayscale", gray, ["-quality", "30", "-grayscale"])
    c.cjpeg("cj_gray_from_rgb.jpg", "grayscale", cat, ["-quality", "80", "-grayscale"])
    c.cjpeg("cj_gray_prog.jpg", "grayscale progressive", gray,
            ["-quality", "90", "-progressive"])
    c.cjpeg("cj_rgb.jpg", "stored RGB", cat, ["-quality", "80", "-rgb"])
    c.cjpeg("cj_rgb_prog.jpg", "stored RGB", face, ["-quality", "80", "-rgb", "-progressive"])
    c.cjpeg("cj_optimize.jpg", "4:2:0", sky, ["-quality", "75", "-optimize"])
    c.cjpeg("cj_dct_float.jpg", "4:2:0", sky, ["-quality", "90", "-dct", "float"])
    c.cjpeg("cj_dct_fast.jpg", "4:2:0", sky, ["-quality", "90", "-dct", "fast"])
    c.cjpeg("cj_q100_444.jpg", "4:4:4", sky, ["-quality", "100", "-sample", "1x1"])
    c.cjpeg("cj_q1.jpg", "4:2:0", sky, ["-quality", "1"])
    c.cjpeg("cj_smooth.jpg", "4:2:0", sky, ["-quality", "75", "-smooth", "30"])
    # Custom progressive scripts: non-interleaved DC, narrow bands, several refinement passes.
    scripts = {
        "sa": "0,1,2: 0-0, 0, 2;\n0: 1-5, 0, 2;\n2: 1-63, 0, 1;\n1: 1-63, 0, 1;\n"
              "0: 6-63, 0, 2;\n0: 1-63, 2, 1;\n0,1,2: 0-0, 2, 1;\n0,1,2: 0-0, 1, 0;\n"
              "2: 1-63, 1, 0;\n1: 1-63, 1, 0;\n0: 1-63, 1, 0;\n",
        "dc_separate": "0: 0-0, 0, 0;\n1: 0-0, 0, 0;\n2: 0-0, 0, 0;\n"
                       "0: 1-1, 0, 0;\n0: 2-63, 0, 0;\n1: 1-63, 0, 0;\n2: 1-63, 0, 0;\n",
        "deep_sa": "0,1,2: 0-0, 0, 3;\n0,1,2: 0-0, 3, 2;\n0,1,2: 0-0, 2, 1;\n"
                   "0: 1-63, 0, 4;\n1: 1-63, 0, 0;\n0: 1-63, 4, 3;\n0: 1-63, 3, 2;\n"
                   "0,1,2: 0-0, 1, 0;\n0: 1-63, 2, 1;\n2: 1-63, 0, 0;\n0: 1-63, 1, 0;\n",
        "sequential_split": "0: 0-63, 0, 0;\n1: 0-63, 0, 0;\n2: 0-63, 0, 0;\n",
    }
    for tag, text in scripts.items():
        p = c.tmp / f"{tag}.scans"
        p.write_text(text)
        c.cjpeg(f"cj_scans_{tag}.jpg", "progressive scan scripts", cup,
                ["-quality", "85", "-scans", str(p)])
        c.cases[-1]["how"] = f"cjpeg -quality 85 -scans ({tag}: {text.strip()})"
    p = c.tmp / "sa.scans"
    c.cjpeg("cj_scans_sa_arith.jpg", "arithmetic progressive", cup,
            ["-quality", "85", "-arithmetic", "-scans", str(p)])
    c.cases[-1]["how"] = "cjpeg -quality 85 -arithmetic -scans (sa)"

    # -- jpeglib: YCCK and libjpeg's CMYK -----------------------------------------------------
    import jpeglib
    for name, space, img, q in (("ycck_q80.jpg", "JCS_YCCK", cat, 80),
                                ("ycck_q30.jpg", "JCS_YCCK", face, 30),
                                ("ycck_prog.jpg", "JCS_YCCK", cup, 75)):
        arr = np.asarray(img.convert("CMYK"))
        j = jpeglib.from_spatial(np.ascontiguousarray(arr),
                                 in_color_space=jpeglib.Colorspace.JCS_CMYK)
        j.jpeg_color_space = getattr(jpeglib.Colorspace, space)
        flags = ["+PROGRESSIVE_MODE"] if "prog" in name else []
        p = c.tmp / name
        j.write_spatial(str(p), qt=q, flags=flags)
        c.add(name, "YCCK", f"jpeglib {space} quality={q} {' '.join(flags)}".strip(),
              p.read_bytes())

    # -- damaged and unusual files ------------------------------------------------------------
    base = c.pil("src_base.jpg", "4:2:0", cat, quality=75)
    prog = c.pil("src_prog.jpg", "4:2:0 progressive", face, quality=75, progressive=True)
    rst = (OUT / "cj_rst_1b.jpg").read_bytes()
    arith = (OUT / "cj_arith_420.jpg").read_bytes()
    s0, sp = scan_start(base), scan_start(prog)
    for frac in (0.3, 0.6, 0.95):
        c.add(f"bad_trunc{int(frac * 100)}.jpg", "truncated", f"src_base.jpg cut at {frac:.0%}",
              base[:int(len(base) * frac)])
        c.add(f"bad_trunc{int(frac * 100)}_prog.jpg", "truncated",
              f"src_prog.jpg cut at {frac:.0%}", prog[:int(len(prog) * frac)])
    c.add("bad_no_eoi.jpg", "truncated", "src_base.jpg without its EOI marker", base[:-2])
    c.add("bad_no_eoi_prog.jpg", "truncated", "src_prog.jpg without its EOI marker", prog[:-2])
    c.add("bad_trunc_header.jpg", "truncated", "src_base.jpg cut inside its DHT",
          base[:segments(base)[-2][1] + 10])
    c.add("bad_only_headers.jpg", "truncated", "src_base.jpg cut just after SOS", base[:s0])
    c.add("bad_trailing_junk.jpg", "corrupt", "src_base.jpg + 300 bytes after EOI",
          base + bytes(range(256)) + b"\xff\xd8" + b"x" * 42)
    for k, frac in enumerate((0.1, 0.5, 0.9)):
        at = s0 + int((len(base) - 2 - s0) * frac)
        c.add(f"bad_flip{k}.jpg", "corrupt", f"src_base.jpg, byte {at} of the scan inverted",
              flip(base, at))
        at = sp + int((len(prog) - 2 - sp) * frac)
        c.add(f"bad_flip{k}_prog.jpg", "corrupt", f"src_prog.jpg, byte {at} inverted",
              flip(prog, at))
    sa = scan_start(arith)
    at = sa + (len(arith) - sa) // 3
    c.add("bad_flip_arith.jpg", "corrupt", f"cj_arith_420.jpg, byte {at} inverted",
          flip(arith, at))
    many = bytearray(base)
    for at in range(s0 + 50, len(base) - 10, 97):
        many = bytearray(flip(bytes(many), at, 0x55))
    c.add("bad_flip_many.jpg", "corrupt", "src_base.jpg, every 97th scan byte xor 0x55",
          bytes(many))
    # Restart markers: one renumbered (libjpeg resynchronizes), one removed.
    i = rst.index(b"\xff\xd3", scan_start(rst))
    b = bytearray(rst)
    b[i + 1] = 0xD6
    c.add("bad_rst_wrong.jpg", "corrupt", "cj_rst_1b.jpg, RST3 renumbered RST6", bytes(b))
    c.add("bad_rst_missing.jpg", "corrupt", "cj_rst_1b.jpg, RST3 removed",
          rst[:i] + rst[i + 2:])
    # Junk between markers: bytes before SOF, fill bytes (FF FF) before a marker.
    sof = next(at for m, at, _ in segments(base) if m == 0xC0)
    c.add("odd_junk_before_sof.jpg", "unusual markers", "src_base.jpg, 4 zero bytes before SOF",
          base[:sof] + b"\0\0\0\0" + base[sof:])
    c.add("odd_fill_ff.jpg", "unusual markers", "src_base.jpg, FF fill bytes before SOF and SOS",
          base[:sof] + b"\xff\xff\xff" + base[sof:s0 - segments(base)[-1][2]] + b"\xff\xff"
          + base[s0 - segments(base)[-1][2]:])
    # No DHT: libjpeg falls back on the standard tables (what PIL wrote without optimize).
    c.add("odd_no_dht.jpg", "unusual markers", "src_base.jpg without its DHT segments",
          drop_segments(base, 0xC4))
    c.add("bad_no_dqt.jpg", "corrupt", "src_base.jpg without its DQT segments",
          drop_segments(base, 0xDB))
    # SOF1 (extended sequential, Huffman): decoded as baseline.
    b = bytearray(base)
    b[sof + 1] = 0xC1
    c.add("odd_sof1.jpg", "unusual markers", "src_base.jpg, SOF0 relabelled SOF1", bytes(b))
    # 12-bit precision, lossless: PIL refuses them.
    b = bytearray(base)
    b[sof + 4] = 12
    c.add("bad_12bit.jpg", "unsupported", "src_base.jpg, SOF precision 12", bytes(b))
    b = bytearray(base)
    b[sof + 1] = 0xC3
    c.add("bad_lossless_sof3.jpg", "unsupported", "src_base.jpg, SOF0 relabelled SOF3", bytes(b))
    # Zero height (DNL-style), and a comment + APP segments PIL skips.
    b = bytearray(base)
    b[sof + 5:sof + 7] = b"\0\0"
    c.add("bad_zero_height.jpg", "corrupt", "src_base.jpg, SOF height 0", bytes(b))
    com = b"\xff\xfe" + (2 + 20).to_bytes(2, "big") + b"a comment, 20 bytes."
    app = b"\xff\xe9" + (2 + 5).to_bytes(2, "big") + b"junk\0"
    c.add("odd_com_app.jpg", "unusual markers", "src_base.jpg with a COM and an APP9 before SOF",
          base[:sof] + com + app + base[sof:])
    # Arithmetic files over PIL's 64 KiB read block: PIL feeds libjpeg 65536 bytes at a time
    # and libjpeg's arithmetic decoder cannot suspend inside a scan (JERR_CANT_SUSPEND), so
    # PIL refuses a file whose scan data crosses byte 65536 and decodes one just under it.
    hubble = rgb("hubble")
    c.cjpeg("cj_arith_under64k.jpg", "arithmetic", hubble.crop((0, 0, 600, 520)),
            ["-quality", "85", "-arithmetic", "-restart", "1"])
    c.cjpeg("bad_arith_over64k.jpg", "arithmetic", hubble.crop((0, 0, 800, 300)),
            ["-quality", "85", "-arithmetic", "-sample", "1x1"])
    # CMYK without an Adobe marker (libjpeg: plain CMYK; PIL still reads it inverted).
    cm = (OUT / "pil_cmyk_q90.jpg").read_bytes()
    c.add("odd_cmyk_no_adobe.jpg", "CMYK", "pil_cmyk_q90.jpg without its Adobe APP14",
          drop_segments(cm, 0xEE))

    # -- the fastai cases: larger crops, one a mode -------------------------------------------
    hop = hopper.crop((40, 60, 40 + 300, 60 + 340))
    roc = rocket.crop((100, 0, 100 + 380, 0 + 290))
    ch = china.crop((120, 50, 120 + 330, 50 + 250))
    c.pil("fastai_420_q75.jpg", "fastai", hop, quality=75, subsampling="4:2:0")
    c.pil("fastai_444_q95.jpg", "fastai", roc, quality=95, subsampling="4:4:4")
    c.pil("fastai_422_q30.jpg", "fastai", ch, quality=30, subsampling="4:2:2")
    c.pil("fastai_prog_420.jpg", "fastai", chelsea.crop((100, 20, 420, 280)), quality=80,
          progressive=True)
    c.pil("fastai_gray.jpg", "fastai", camera.crop((100, 50, 420, 350)), quality=85)
    c.pil("fastai_cmyk.jpg", "fastai", roc.convert("CMYK"), quality=85)
    arr = np.ascontiguousarray(np.asarray(hop.convert("CMYK")))
    j = jpeglib.from_spatial(arr, in_color_space=jpeglib.Colorspace.JCS_CMYK)
    j.jpeg_color_space = jpeglib.Colorspace.JCS_YCCK
    p = c.tmp / "fy.jpg"
    j.write_spatial(str(p), qt=85)
    c.add("fastai_ycck.jpg", "fastai", "jpeglib JCS_YCCK quality=85", p.read_bytes())
    exif = Image.Exif()
    exif[0x0112] = 6
    c.pil("fastai_exif6.jpg", "fastai", ch, how="PIL quality=80 orientation=6", quality=80,
          exif=exif.tobytes())
    c.cjpeg("fastai_arith.jpg", "fastai", roc, ["-quality", "80", "-arithmetic"])
    c.cjpeg("fastai_411_restart.jpg", "fastai", hop,
            ["-quality", "70", "-sample", "4x1", "-restart", "2B"])
    c.cjpeg("fastai_440_prog.jpg", "fastai", ch, ["-quality", "90", "-sample", "1x2",
                                                  "-progressive"])
    assert all((OUT / f).exists() for f in FASTAI_FILES)
    shutil.rmtree(c.tmp)
    return c.cases


def pil_answer(path):
    """What PIL makes of the file: mode, size and digests, or the exception it raises."""
    try:
        im = Image.open(path)
        mode, size = im.mode, im.size
        im.load()
        native = im.tobytes()
        rgb_bytes = im.convert("RGB").tobytes()
        orientation = im.getexif().get(0x0112)
        out = {"mode": mode, "width": size[0], "height": size[1],
               "native_sha256": sha(native), "rgb_sha256": sha(rgb_bytes)}
        if orientation not in (None, 1):
            t = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
            out.update(orientation=orientation, transposed_width=t.size[0],
                       transposed_height=t.size[1], transposed_sha256=sha(t.tobytes()))
        return out
    except Exception as e:  # noqa: BLE001  (every refusal is recorded)
        return {"error": type(e).__name__, "message": str(e).replace(str(path), path.name)}


def write_manifest(cases, fastai=None, old_versions=None):
    for case in cases:
        p = OUT / case["file"]
        case["bytes"] = p.stat().st_size
        case["pil"] = pil_answer(p)
    total = sum(c["bytes"] for c in cases)
    assert total < BUDGET, f"corpus is {total} bytes, over the {BUDGET} budget"
    MANIFEST.write_text(json.dumps({
        "generated_by": "scripts/make_fixtures_jpeg.py",
        "versions": {**(old_versions or {}), **versions()},
        "cases": cases,
        "fastai": fastai or [],
    }, indent=1) + "\n")
    ok = sum("error" not in c["pil"] for c in cases)
    print(f"{len(cases)} files, {total} bytes; PIL decodes {ok}, refuses {len(cases) - ok}")


def versions():
    import PIL
    v = {"Pillow": PIL.__version__, "python": sys.version.split()[0],
         "libjpeg_turbo": getattr(PIL.features, "version")("libjpeg_turbo"),
         "cjpeg": subprocess.run(["cjpeg", "-version"], capture_output=True,
                                 text=True).stderr.strip()}
    return v


def fastai_step():
    import torch
    torch.set_num_threads(2)
    learn = mf.load_learner_from_fixture()
    out = []
    for name in FASTAI_FILES:
        f = OUT / name
        (x,) = learn.dls.test_dl([f], num_workers=0).one_batch()
        x = torch.Tensor(x).as_subclass(torch.Tensor).contiguous().float()
        _, idx, probs = learn.predict(f)
        probs = torch.Tensor(probs).as_subclass(torch.Tensor).contiguous().float()
        out.append({"file": name, "input_sha256": mf.sha256(x),
                    "label": learn.dls.vocab[int(idx)], "index": int(idx),
                    "probs": [float(p) for p in probs]})
        print(f"  {name:26s} -> {out[-1]['label']:20s} p={float(probs[idx]):.4f}")
    return out


# Small corpus files that seed the `decode_transforms` fuzz target, one a decoder path.
FUZZ_SEEDS = [
    "src_base.jpg", "src_prog.jpg", "cj_arith_420.jpg", "cj_arith_444_prog.jpg",
    "cj_rst_1b.jpg", "cj_scans_sa.jpg", "cj_411_q30.jpg", "cj_mixed_3x2_prog.jpg",
    "ycck_q30.jpg", "pil_gray_prog.jpg", "size_7x9.jpg", "qt_16bit.jpg",
    "bad_rst_wrong.jpg", "bad_trunc60_prog.jpg", "cj_scans_sequential_split.jpg",
    "cj_scans_dc_separate.jpg", "odd_no_dht.jpg", "cj_arith_rst.jpg", "cj_h2v4_q30.jpg",
    "cj_mixed_2x1_1x2.jpg", "cj_rst_row1.jpg", "cj_scans_deep_sa.jpg",
]


def write_fuzz_seeds():
    """fuzz/seeds/decode_transforms/jpeg_*.jpg: each seed is 3 parameter bytes (the target's
    transform sizes) then the JPEG."""
    seeds = ROOT / "fuzz" / "seeds" / "decode_transforms"
    for f in seeds.glob("jpeg_*.jpg"):
        f.unlink()
    for k, name in enumerate(FUZZ_SEEDS):
        params = bytes([(37 * k + 64) % 256, (23 * k + 32) % 256, k % 2])
        (seeds / f"jpeg_{name}").write_bytes(params + (OUT / name).read_bytes())


def main():
    step = sys.argv[1] if len(sys.argv) > 1 else "all"
    if step in ("corpus", "all"):
        # `corpus` alone keeps the fastai answers already recorded.
        old = json.loads(MANIFEST.read_text()) if step == "corpus" and MANIFEST.exists() \
            else {}
        write_manifest(make_corpus(), old.get("fastai"), old.get("versions"))
        write_fuzz_seeds()
    if step in ("fastai", "all"):
        m = json.loads(MANIFEST.read_text())
        m["fastai"] = fastai_step()
        m["versions"].update(mf.versions_info())
        MANIFEST.write_text(json.dumps(m, indent=1) + "\n")
    if step not in ("corpus", "fastai", "all"):
        sys.exit(f"unknown step {step!r}: corpus, fastai or all")


if __name__ == "__main__":
    main()
