"""Writes tests/fixtures/hostile/: small images in the pixel modes PIL opens, each beside the
raw bytes of PIL's `Image.open(f).convert('RGB')` (what fastai's `PILImage.create` gives), and
hostile files (truncated, corrupt, bombs, EXIF-rotated).

    ~/venv-ref/bin/python scripts/make_hostile_fixtures.py

Deterministic: the images are made from fixed arrays, the PNGs written by a tiny encoder
below (so the bit depth, colour type and chunks are exactly what each case needs). Outputs:

- `<name>.<ext>`: the image;
- `<name>.rgb`: PIL's `convert('RGB')` as raw row-major RGB bytes (only for images PIL opens);
- `<name>.transposed.rgb`: for the EXIF cases, `ImageOps.exif_transpose(im).convert('RGB')`;
- `manifest.json`: one entry per image: file, PIL's mode, width, height, and the raw file
  (or null when PIL cannot open it, with PIL's error); for the `crc_*` cases also the chunk
  whose CRC was broken (`bad_crc`: type, index, byte offset of the chunk).

The `crc_*` PNGs (16x16) carry one chunk with a wrong CRC each (`crc_rgb_ok` and
`crc_pal_ok`: none), to pin down where Pillow checks chunk CRCs. Pillow 13 with its default
`ImageFile.LOAD_TRUNCATED_IMAGES = False`: `Image.open` walks every chunk before the first
`IDAT` and checks its CRC, critical or ancillary, known to PIL (iCCP, gAMA, pHYs, tEXt, PLTE,
tRNS) or skipped by it (tIME, a private chunk); a mismatch raises `SyntaxError`, which
`Image.open` reports as `UnidentifiedImageError: cannot identify image file`. The CRCs of the
`IDAT` chunks and of every chunk after them (tEXt, IEND) are read past and never compared: such
files decode, with the same pixels. (With `LOAD_TRUNCATED_IMAGES = True`, not fastai's default,
PIL skips the CRCs of ancillary chunks too; IHDR and PLTE stay checked.)
"""

import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hostile"
W, H = 32, 24


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width, height, bit_depth, color_type, rows, extra=(), ihdr=None):
    """A PNG from already-packed scanlines (bytes each, without the filter byte)."""
    raw = b"".join(b"\x00" + r for r in rows)
    head = ihdr or struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = chunk(b"IHDR", head)
    for kind, data in extra:
        body += chunk(kind, data)
    body += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def tiff(width, height, samples, bits, photometric, data):
    """A minimal little-endian, uncompressed, single-strip TIFF."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, samples, None),  # BitsPerSample: one per sample, stored after the IFD
        (259, 3, 1, 1),
        (262, 3, 1, photometric),
        (273, 4, 1, None),  # StripOffsets
        (277, 3, 1, samples),
        (278, 4, 1, height),
        (279, 4, 1, len(data)),
        (284, 3, 1, 1),
    ]
    ifd_at = 8
    ifd_len = 2 + 12 * len(entries) + 4
    bps_at = ifd_at + ifd_len
    data_at = bps_at + 2 * samples
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if tag == 258:
            value = bps_at if samples > 2 else bits
        if tag == 273:
            value = data_at
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    out += struct.pack("<I", 0)
    out += struct.pack("<" + "H" * samples, *([bits] * samples))
    return bytes(out + data)


def pack_bits(values, bits):
    """Packs small unsigned ints MSB first, as PNG does for 1, 2 and 4-bit samples."""
    out, acc, n = bytearray(), 0, 0
    for v in values:
        acc = (acc << bits) | int(v)
        n += bits
        if n == 8:
            out.append(acc)
            acc, n = 0, 0
    if n:
        out.append(acc << (8 - n))
    return bytes(out)


def gradient(channels, maxval, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([(x * 7 + y * 3 + 29 * c) % 97 for c in range(channels)], axis=-1) / 96.0
    noise = rng.random((H, W, channels))
    return np.round((0.7 * base + 0.3 * noise) * maxval).astype(np.int64)


def rows16(a):
    return [b"".join(struct.pack(">H", int(v)) for v in a[r].reshape(-1)) for r in range(H)]


def rows8(a):
    return [bytes(a[r].reshape(-1).astype(np.uint8)) for r in range(H)]


def crc_chunks(base):
    """The chunks of a 16x16 PNG with ancillary chunks before and after its two IDAT chunks:
    `rgb` (8-bit RGB, iCCP, gAMA, pHYs, tIME, tEXt, a private `prVt`) or `pal` (8-bit palette,
    PLTE, tRNS)."""
    from PIL import ImageCms

    rng = np.random.default_rng(70 if base == "rgb" else 71)
    n = 16
    if base == "rgb":
        px = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
        ihdr = struct.pack(">IIBBBBB", n, n, 8, 2, 0, 0, 0)
        rows = [px[r].tobytes() for r in range(n)]
        icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
        # The profile's creation date (header bytes 24-35) fixed, so the file is reproducible.
        icc[24:36] = struct.pack(">6H", 2026, 12, 4, 0, 0, 0)
        icc = bytes(icc)
        before = [
            (b"iCCP", b"sRGB\x00\x00" + zlib.compress(icc, 9)),
            (b"gAMA", struct.pack(">I", 45455)),
            (b"pHYs", struct.pack(">IIB", 2835, 2835, 1)),
            (b"tIME", struct.pack(">HBBBBB", 2026, 12, 4, 12, 0, 0)),
            (b"tEXt", b"Comment\x00before the image data"),
            (b"prVt", b"a private ancillary chunk PIL does not know"),
        ]
    else:
        idx = rng.integers(0, 8, (n, n), dtype=np.uint8)
        ihdr = struct.pack(">IIBBBBB", n, n, 8, 3, 0, 0, 0)
        rows = [idx[r].tobytes() for r in range(n)]
        before = [(b"PLTE", bytes(rng.integers(0, 256, 24, dtype=np.uint8))), (b"tRNS", bytes([0, 128]))]
    data = zlib.compress(b"".join(b"\x00" + r for r in rows), 9)
    half = len(data) // 2
    return ([(b"IHDR", ihdr)] + before
            + [(b"IDAT", data[:half]), (b"IDAT", data[half:]),
               (b"tEXt", b"Comment\x00after the image data"), (b"IEND", b"")])


def crc_png(chunks, bad=None):
    """The PNG of `chunks`, the CRC of chunk number `bad` (if any) off by one bit.
    Returns (bytes, byte offset of the bad chunk or None)."""
    out, at = b"\x89PNG\r\n\x1a\n", None
    for i, (kind, data) in enumerate(chunks):
        c = chunk(kind, data)
        if i == bad:
            at = len(out)
            c = c[:-4] + struct.pack(">I", struct.unpack(">I", c[-4:])[0] ^ 1)
        out += c
    return out, at


def crc_cases():
    """name -> (file bytes, bad-CRC description or None)."""
    out = {}
    for base in ("rgb", "pal"):
        chunks = crc_chunks(base)
        out[f"crc_{base}_ok"] = (crc_png(chunks)[0], None)
        seen = {}
        first_idat = next(i for i, (k, _) in enumerate(chunks) if k == b"IDAT")
        for i, (kind, _) in enumerate(chunks):
            # The palette image adds only its own chunks (PLTE, tRNS) to the RGB image's cases.
            if base == "pal" and kind not in (b"PLTE", b"tRNS"):
                continue
            k = kind.decode().lower()
            seen[k] = seen.get(k, 0) + 1
            if kind == b"IDAT":
                k = f"idat{seen[k]}"
            elif kind == b"tEXt":
                k = "text_before_idat" if i < first_idat else "text_after_idat"
            data, at = crc_png(chunks, i)
            out[f"crc_{base}_{k}"] = (data, {"chunk": kind.decode(), "index": i, "offset": at})
    # Corrupt image data: one byte of the first IDAT's zlib data, or of the zlib stream's
    # Adler-32 (the last 4 bytes of the last IDAT), flipped, the chunk's CRC left wrong (as
    # a damaged file has it) or recomputed. PIL's zlib refuses all of them.
    chunks = crc_chunks("rgb")
    good, _ = crc_png(chunks)
    idats = [i for i, (k, _) in enumerate(chunks) if k == b"IDAT"]
    offsets, at = [], 8
    for kind, data in chunks:
        offsets.append(at)
        at += 12 + len(data)
    for name, i, pos in [("data", idats[0], len(chunks[idats[0]][1]) // 2),
                         ("adler32", idats[-1], len(chunks[idats[-1]][1]) - 1)]:
        for crc in ("wrong", "recomputed"):
            flip = offsets[i] + 8 + pos
            b = bytearray(good)
            b[flip] ^= 0x55
            if crc == "recomputed":
                end = offsets[i] + 8 + len(chunks[i][1])
                b[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(b[offsets[i] + 4:end])))
            out[f"zlib_{name}_crc_{crc}"] = (bytes(b), {"chunk": "IDAT", "index": i, "offset": offsets[i],
                                                     "flipped_byte": flip, "crc": crc})
    return out


def images():
    """name -> file bytes, extension."""
    out = {}
    out["rgb16"] = (png(W, H, 16, 2, rows16(gradient(3, 65535, 1))), "png")
    out["rgba16"] = (png(W, H, 16, 6, rows16(gradient(4, 65535, 2))), "png")
    out["gray16"] = (png(W, H, 16, 0, rows16(gradient(1, 65535, 3))), "png")
    # 16-bit gray with most values below 256: PIL's I;16 -> RGB clips at 255.
    out["gray16_low"] = (png(W, H, 16, 0, rows16(gradient(1, 400, 4))), "png")
    out["la16"] = (png(W, H, 16, 4, rows16(gradient(2, 65535, 5))), "png")
    out["la8"] = (png(W, H, 8, 4, rows8(gradient(2, 255, 6))), "png")
    out["gray8"] = (png(W, H, 8, 0, rows8(gradient(1, 255, 7))), "png")
    for bits in (1, 2, 4):
        g = gradient(1, (1 << bits) - 1, 8 + bits)
        out[f"gray{bits}"] = (png(W, H, bits, 0, [pack_bits(g[r, :, 0], bits) for r in range(H)]), "png")
    palette = bytes(np.random.default_rng(20).integers(0, 256, 16 * 3, dtype=np.uint8))
    idx = gradient(1, 15, 21)
    prow = [pack_bits(idx[r, :, 0], 4) for r in range(H)]
    out["palette4"] = (png(W, H, 4, 3, prow, extra=[(b"PLTE", palette)]), "png")
    trns = bytes([0, 128, 255, 7])
    out["palette4_trns"] = (png(W, H, 4, 3, prow, extra=[(b"PLTE", palette), (b"tRNS", trns)]), "png")
    # RGB with a tRNS colour key: PIL keeps RGB (the key only matters for RGBA conversion).
    out["rgb8_trns"] = (
        png(W, H, 8, 2, rows8(gradient(3, 255, 22)), extra=[(b"tRNS", struct.pack(">HHH", 10, 20, 30))]),
        "png",
    )

    # CMYK, as PIL writes it (Adobe-style inverted JPEG) and as a TIFF.
    cmyk = Image.fromarray(gradient(4, 255, 30).astype(np.uint8), mode="CMYK")
    b = io.BytesIO()
    cmyk.save(b, "JPEG", quality=95)
    out["cmyk"] = (b.getvalue(), "jpg")
    b = io.BytesIO()
    cmyk.save(b, "TIFF")
    out["cmyk_tiff"] = (b.getvalue(), "tiff")
    # 16-bit CMYK TIFF (PIL opens it as 8-bit CMYK).
    c16 = gradient(4, 65535, 31)
    le16 = b"".join(struct.pack("<H", int(v)) for v in c16.reshape(-1))
    out["cmyk16_tiff"] = (tiff(W, H, 4, 16, 5, le16), "tiff")

    # EXIF orientation 6 (rotate 90 clockwise to display) on a non-square JPEG.
    rgb = Image.fromarray(gradient(3, 255, 40).astype(np.uint8), mode="RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    b = io.BytesIO()
    rgb.save(b, "JPEG", quality=95, exif=exif.tobytes())
    out["exif_rotate90"] = (b.getvalue(), "jpg")
    b = io.BytesIO()
    rgb.save(b, "PNG", exif=exif.tobytes())
    out["exif_rotate90_png"] = (b.getvalue(), "png")

    # 8-bit RGB JPEG (the truncation tests' source) and a float TIFF (refused).
    b = io.BytesIO()
    rgb.save(b, "JPEG", quality=90)
    out["rgb8"] = (b.getvalue(), "jpg")
    f = Image.fromarray(gradient(1, 1000, 50)[:, :, 0].astype(np.float32), mode="F")
    b = io.BytesIO()
    f.save(b, "TIFF")
    out["float32_tiff"] = (b.getvalue(), "tiff")

    # Other containers PIL writes: GIF (palette, with and without a transparent index), BMP
    # (24-bit, and 32-bit with alpha), WebP (lossless RGB and RGBA, lossy).
    pal = Image.fromarray(gradient(1, 15, 60)[:, :, 0].astype(np.uint8), mode="L").convert("P")
    pal.putpalette(list(np.random.default_rng(61).integers(0, 256, 16 * 3, dtype=np.uint8)))
    for name, kw in [("gif_plain", {}), ("gif_trns", {"transparency": 3})]:
        b = io.BytesIO()
        pal.save(b, "GIF", **kw)
        out[name] = (b.getvalue(), "gif")
    rgba = Image.fromarray(gradient(4, 255, 62).astype(np.uint8), mode="RGBA")
    for name, im, fmt, kw in [
        ("bmp24", rgb, "BMP", {}),
        ("bmp32", rgba, "BMP", {}),
        ("webp_rgb", rgb, "WEBP", {"lossless": True}),
        ("webp_rgba", rgba, "WEBP", {"lossless": True}),
        ("webp_lossy", rgb, "WEBP", {"quality": 80}),
    ]:
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        out[name] = (b.getvalue(), fmt.lower())

    # Decompression bombs: tiny files that declare huge images.
    out["bomb_png"] = (png(100_000, 100_000, 8, 2, [b"\x00" * 3]), "png")
    # A GIF that declares 65535x65535 with a one-pixel frame.
    gif = bytearray(b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x80\x00\x00")
    gif += b"\x00\x00\x00\xff\xff\xff"  # 2-colour global palette
    gif += b"\x2c" + struct.pack("<HHHH", 0, 0, 65535, 65535) + b"\x00"
    gif += b"\x02\x02\x44\x01\x00\x3b"
    out["bomb_gif"] = (bytes(gif), "gif")
    # A zero-width PNG (PIL: "image size is zero" style error).
    out["zero_width"] = (png(0, 4, 8, 2, [b""] * 4), "png")
    for name, (data, _) in crc_cases().items():
        out[name] = (data, "png")
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = []
    crc = {name: bad for name, (_, bad) in crc_cases().items()}
    # fastai runs PIL with its defaults; the CRC cases depend on this one.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for name, (data, ext) in images().items():
        f = OUT / f"{name}.{ext}"
        f.write_bytes(data)
        entry = {"name": name, "file": f.name}
        if name in crc:
            entry["bad_crc"] = crc[name]
        try:
            im = Image.open(io.BytesIO(data))
            entry.update(mode=im.mode, width=im.width, height=im.height)
            rgb = im.convert("RGB")
            (OUT / f"{name}.rgb").write_bytes(rgb.tobytes())
            entry["rgb"] = f"{name}.rgb"
            if name.startswith("exif_"):
                # What the opt-in EXIF orientation must give: PIL's exif_transpose.
                t = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
                (OUT / f"{name}.transposed.rgb").write_bytes(t.tobytes())
                entry.update(transposed=f"{name}.transposed.rgb", transposed_size=[t.width, t.height])
        except Exception as e:  # noqa: BLE001 - recorded, not hidden
            msg = re.sub(r"<_io.BytesIO object at 0x[0-9a-f]+>", "<file>", str(e))
            entry.update(mode=None, error=f"{type(e).__name__}: {msg}", rgb=None)
            if name.startswith("crc_"):
                # The PNG plugin's own reason, which Image.open reports as "cannot identify".
                try:
                    PngImagePlugin.PngImageFile(io.BytesIO(data))
                except SyntaxError as why:
                    entry["png_plugin_error"] = f"SyntaxError: {why}"
        manifest.append(entry)
        print(entry)
    (OUT / "manifest.json").write_text(json.dumps({"pillow": Image.__version__, "images": manifest}, indent=1) + "\n")


if __name__ == "__main__":
    main()
