//! Hostile and unusual images: every one decodes to exactly what PIL's `convert('RGB')`
//! gives, or fails with a typed error naming the file. Fixtures and PIL's outputs:
//! `scripts/make_hostile_fixtures.py` (Pillow 13).

mod common;

use std::path::PathBuf;

use fastai_infer::decode::{PngCrcMismatch, DEFAULT_MAX_PIXELS, PIL_MAX_IMAGE_PIXELS};
use fastai_infer::{
    load_image, load_image_from_memory, load_image_from_memory_with, load_image_with,
    DecodeOptions, Error,
};

fn hostile(name: &str) -> PathBuf {
    common::fixtures().join("hostile").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(hostile(name)).unwrap()
}

/// The manifest entry of a fixture (PIL's mode and size).
fn manifest(name: &str) -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hostile("manifest.json")).unwrap()).unwrap();
    m["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the manifest"))
        .clone()
}

/// (largest difference, number of bytes that differ)
fn diff(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len(), "sizes differ");
    let n = a.iter().zip(b).filter(|(x, y)| x != y).count();
    let m = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    (m, n)
}

#[test]
fn lossless_modes_match_pil_convert_rgb_exactly() {
    // (fixture, file, PIL's mode on open)
    let cases = [
        ("rgb16", "rgb16.png", "RGB"),
        ("rgba16", "rgba16.png", "RGBA"),
        ("gray16", "gray16.png", "I;16"),
        ("gray16_low", "gray16_low.png", "I;16"),
        ("la16", "la16.png", "RGBA"),
        ("la8", "la8.png", "LA"),
        ("gray8", "gray8.png", "L"),
        ("gray1", "gray1.png", "1"),
        ("gray2", "gray2.png", "L"),
        ("gray4", "gray4.png", "L"),
        ("palette4", "palette4.png", "P"),
        ("palette4_trns", "palette4_trns.png", "P"),
        ("rgb8_trns", "rgb8_trns.png", "RGB"),
        ("cmyk_tiff", "cmyk_tiff.tiff", "CMYK"),
        ("cmyk16_tiff", "cmyk16_tiff.tiff", "CMYK"),
        ("exif_rotate90_png", "exif_rotate90_png.png", "RGB"),
        ("gif_plain", "gif_plain.gif", "P"),
        ("gif_trns", "gif_trns.gif", "P"),
        ("bmp24", "bmp24.bmp", "RGB"),
        ("bmp32", "bmp32.bmp", "RGB"),
        ("webp_rgb", "webp_rgb.webp", "RGB"),
        ("webp_rgba", "webp_rgba.webp", "RGBA"),
        ("webp_lossy", "webp_lossy.webp", "RGB"),
    ];
    for (name, file, mode) in cases {
        let m = manifest(name);
        assert_eq!(m["mode"], mode, "{name}: PIL's mode");
        let img = load_image(hostile(file)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (img.width() as u64, img.height() as u64),
            (m["width"].as_u64().unwrap(), m["height"].as_u64().unwrap()),
            "{name}"
        );
        let pil = read(&format!("{name}.rgb"));
        assert_eq!(
            diff(img.as_raw(), &pil),
            (0, 0),
            "{name}: bytes differ from PIL"
        );
    }
}

#[test]
fn sixteen_bit_gray_clips_like_pil() {
    // PIL opens 16-bit gray as I;16 and clips to 255 when converting to RGB: the fixture with
    // values up to 400 has both unclipped and clipped pixels, and matches.
    let img = load_image(hostile("gray16_low.png")).unwrap();
    let raw = img.as_raw();
    assert!(raw.contains(&255) && raw.iter().any(|&v| v > 0 && v < 255));
    assert_eq!(raw.as_slice(), read("gray16_low.rgb").as_slice());
}

#[test]
fn cmyk_jpeg_is_pils() {
    // libjpeg's CMYK samples (Adobe-inverted as PIL reads them), then PIL's `cmyk2rgb`.
    assert_eq!(manifest("cmyk")["mode"], "CMYK");
    let img = load_image(hostile("cmyk.jpg")).unwrap();
    assert_eq!(img.as_raw().as_slice(), read("cmyk.rgb").as_slice());
}

#[test]
fn floating_point_images_are_refused_as_unsupported() {
    assert_eq!(manifest("float32_tiff")["mode"], "F");
    let err = load_image(hostile("float32_tiff.tiff")).unwrap_err();
    assert!(matches!(err, Error::UnsupportedImage { .. }), "{err:?}");
    assert!(err.to_string().contains("float32_tiff.tiff"), "{err}");
}

#[test]
fn exif_orientation_is_ignored_by_default_and_applied_on_request() {
    for (name, file) in [
        ("exif_rotate90_png", "exif_rotate90_png.png"),
        ("exif_rotate90", "exif_rotate90.jpg"),
    ] {
        let m = manifest(name);
        let plain = load_image(hostile(file)).unwrap();
        // fastai (PIL's open + convert) ignores the tag: the stored 32x24 pixels.
        assert_eq!(plain.dimensions(), (32, 24), "{name}");
        let opts = DecodeOptions::default().with_exif_orientation(true);
        let turned = load_image_with(hostile(file), &opts).unwrap();
        let ts = &m["transposed_size"];
        assert_eq!(
            (turned.width() as u64, turned.height() as u64),
            (ts[0].as_u64().unwrap(), ts[1].as_u64().unwrap()),
            "{name}: EXIF 6 turns 32x24 into 24x32"
        );
        // Turning is exact: pixel (x, y) of the turned image is (y, H - 1 - x) of the plain one.
        for (x, y, p) in turned.enumerate_pixels() {
            assert_eq!(*p, *plain.get_pixel(y, 23 - x), "{name} at {x},{y}");
        }
        let (dp, dt) = (
            diff(plain.as_raw(), &read(&format!("{name}.rgb"))),
            diff(turned.as_raw(), &read(&format!("{name}.transposed.rgb"))),
        );
        // PNG and JPEG alike: PIL's pixels, stored and turned.
        assert_eq!((dp, dt), ((0, 0), (0, 0)), "{name}");
    }
}

#[test]
fn decompression_bombs_are_refused_with_their_dimensions() {
    assert_eq!(DEFAULT_MAX_PIXELS, 2 * PIL_MAX_IMAGE_PIXELS);
    assert_eq!(DecodeOptions::default().max_pixels, 178_956_970);
    for (file, w, h) in [
        ("bomb_png.png", 100_000, 100_000),
        ("bomb_gif.gif", 65_535, 65_535),
    ] {
        // PIL refuses them too (DecompressionBombError).
        let name = file.split('.').next().unwrap();
        assert!(manifest(name)["error"]
            .as_str()
            .unwrap()
            .starts_with("DecompressionBombError"));
        assert!(read(file).len() < 100, "{file} is a tiny file");
        let err = load_image(hostile(file)).unwrap_err();
        match &err {
            Error::ImageTooLarge {
                origin,
                width,
                height,
                max_pixels,
            } => {
                assert!(origin.ends_with(file), "{origin}");
                assert_eq!((*width, *height, *max_pixels), (w, h, DEFAULT_MAX_PIXELS));
            }
            other => panic!("{file}: {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(file) && msg.contains("178956970"), "{msg}");
    }
}

#[test]
fn the_pixel_limit_is_the_users_to_set() {
    let bytes = std::fs::read(common::fixtures().join("images/chelsea.png")).unwrap();
    let img = load_image_from_memory(&bytes).unwrap();
    let pixels = u64::from(img.width()) * u64::from(img.height());
    // Exactly at the limit decodes; one pixel under it is refused, naming the memory origin.
    let at = DecodeOptions::default().with_max_pixels(pixels);
    assert_eq!(load_image_from_memory_with(&bytes, &at).unwrap(), img);
    let under = DecodeOptions::default().with_max_pixels(pixels - 1);
    match load_image_from_memory_with(&bytes, &under).unwrap_err() {
        Error::ImageTooLarge {
            origin,
            width,
            height,
            max_pixels,
        } => {
            assert_eq!(origin, "<memory>");
            assert_eq!((width, height), img.dimensions());
            assert_eq!(max_pixels, pixels - 1);
        }
        other => panic!("{other:?}"),
    }
    let huge = DecodeOptions::default().with_max_pixels(u64::MAX);
    assert_eq!(load_image_from_memory_with(&bytes, &huge).unwrap(), img);
}

#[test]
fn empty_files_and_non_images_are_unrecognized() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let err = load_image(&empty).unwrap_err();
    assert!(matches!(err, Error::UnrecognizedImage { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.png") && err.to_string().contains("empty"));

    for bytes in [
        &b"hello, I am a text file"[..],
        b"%PDF-1.7\n",
        b"8BPS\x00\x01 a Photoshop file",
        b"\x00",
    ] {
        let err = load_image_from_memory(bytes).unwrap_err();
        assert!(matches!(err, Error::UnrecognizedImage { .. }), "{err:?}");
        assert!(err.to_string().contains("<memory>"));
    }
}

#[test]
fn formats_not_built_in_are_unsupported() {
    // Recognised by their signature, but not decoded by this crate (PIL reads some of them;
    // fastai users rarely upload them).
    for (what, bytes) in [
        ("Qoi", &b"qoif\x00\x00\x00\x04\x00\x00\x00\x04\x03\x00"[..]),
        ("Ico", b"\x00\x00\x01\x00\x01\x00"),
        ("Pnm", b"P6\n1 1\n255\n\x00\x00\x00"),
        ("Hdr", b"#?RADIANCE\n"),
    ] {
        let err = load_image_from_memory(bytes).unwrap_err();
        match &err {
            Error::UnsupportedImage { origin, reason } => {
                assert_eq!(origin, "<memory>");
                assert!(reason.contains(what), "{reason}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn truncated_png_and_jpeg_are_decode_errors_at_every_cut() {
    for file in [
        "images/chelsea.png",
        "images/rocket.jpg",
        "hostile/rgb16.png",
        "hostile/rgb8.jpg",
    ] {
        let bytes = std::fs::read(common::fixtures().join(file)).unwrap();
        let full = load_image_from_memory(&bytes).unwrap();
        let step = (bytes.len() / 97).max(1);
        let mut refused = 0;
        for cut in (1..bytes.len())
            .step_by(step)
            .chain([bytes.len() - 1, bytes.len() - 2])
        {
            match load_image_from_memory(&bytes[..cut]) {
                Err(Error::ImageDecode { origin, .. })
                | Err(Error::UnrecognizedImage { origin, .. }) => {
                    assert_eq!(origin, "<memory>");
                    refused += 1;
                }
                // Like PIL, a PNG that only lacks (part of) its IEND chunk after complete image
                // data still decodes; it must then be the whole image.
                Ok(img) => assert!(
                    file.ends_with(".png") && cut + 12 >= bytes.len() && img == full,
                    "{file} cut at {cut} of {} decoded",
                    bytes.len()
                ),
                Err(other) => panic!("{file} cut at {cut} of {}: {other:?}", bytes.len()),
            }
        }
        assert!(refused >= 97, "{file}: only {refused} cuts refused");
    }
    // A JPEG cut just before its end marker is refused with a message that says so (PIL:
    // "image file is truncated"); trailing bytes after the marker are ignored, as PIL does.
    let jpeg = read("rgb8.jpg");
    let err = load_image_from_memory(&jpeg[..jpeg.len() - 2]).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let mut trailing = jpeg.clone();
    trailing.extend_from_slice(b"trailing garbage");
    assert_eq!(
        load_image_from_memory(&trailing).unwrap(),
        load_image_from_memory(&jpeg).unwrap()
    );
}

#[test]
fn corrupt_data_is_a_decode_error() {
    // A flipped byte inside a PNG chunk: in IHDR it breaks the CRC (PIL: "broken PNG file"), in
    // the chunk type it makes an unknown critical chunk, in the image data it breaks the zlib
    // stream (PIL: "broken data stream").
    let png = read("rgb16.png");
    for at in [20, 40, png.len() / 2, png.len() - 20] {
        let mut bad = png.clone();
        bad[at] ^= 0x55;
        match load_image_from_memory(&bad) {
            Ok(img) => eprintln!(
                "byte {at}: DECODED, same = {}",
                img == load_image_from_memory(&png).unwrap()
            ),
            Err(e) => eprintln!("byte {at}: {e}"),
        }
    }
    // A JPEG whose header is wrecked.
    let mut jpeg = read("rgb8.jpg");
    for b in &mut jpeg[2..200] {
        *b = 0xFF;
    }
    let err = load_image_from_memory(&jpeg).unwrap_err();
    assert!(matches!(err, Error::ImageDecode { .. }), "{err:?}");
}

#[test]
fn zero_size_images_are_refused() {
    // A PNG that declares 0x4 (PIL cannot identify it either).
    let err = load_image(hostile("zero_width.png")).unwrap_err();
    assert!(matches!(err, Error::ImageDecode { .. }), "{err:?}");
    assert!(err.to_string().contains("zero_width.png"));
    // A GIF whose screen is 0x0 (with a 1x1 frame): refused as having no pixels.
    let mut gif = b"GIF89a\x00\x00\x00\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff".to_vec();
    gif.extend(b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b");
    match load_image_from_memory(&gif).unwrap_err() {
        Error::UnsupportedImage { origin, reason } => {
            assert_eq!(origin, "<memory>");
            assert!(reason.contains("no pixels (0x0)"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A BMP 0 pixels wide.
    let mut bmp = b"BM".to_vec();
    for field in [57u32, 0, 54, 40, 0, 5] {
        bmp.extend(field.to_le_bytes());
    }
    bmp.extend(1u16.to_le_bytes());
    bmp.extend(24u16.to_le_bytes());
    bmp.extend([0; 27]);
    let err = load_image_from_memory(&bmp).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ImageDecode { .. } | Error::UnsupportedImage { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn directories_and_missing_files_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_image(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Io { what: "image", .. }), "{err:?}");
    assert!(err.to_string().contains("directory"), "{err}");
    let err = load_image(dir.path().join("nope.jpg")).unwrap_err();
    assert!(matches!(err, Error::Io { what: "image", .. }), "{err:?}");
    // A path through a file (ENOTDIR), whoever runs the test.
    let file = dir.path().join("file.png");
    std::fs::copy(hostile("gray8.png"), &file).unwrap();
    let err = load_image(file.join("inner.png")).unwrap_err();
    assert!(matches!(err, Error::Io { what: "image", .. }), "{err:?}");
    assert!(err.to_string().contains("inner.png"));
    // A dangling symlink.
    #[cfg(unix)]
    {
        let link = dir.path().join("dangling.png");
        std::os::unix::fs::symlink(dir.path().join("gone.png"), &link).unwrap();
        let err = load_image(&link).unwrap_err();
        assert!(matches!(err, Error::Io { what: "image", .. }), "{err:?}");
        assert!(err.to_string().contains("dangling.png"));
    }
}

#[cfg(unix)]
#[test]
fn unreadable_files_are_io_errors() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secret.png");
    std::fs::copy(hostile("gray8.png"), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&p).is_ok() {
        // Running as root: permissions do not stop reads; nothing to test here.
        return;
    }
    let err = load_image(&p).unwrap_err();
    assert!(matches!(err, Error::Io { what: "image", .. }), "{err:?}");
    assert!(err.to_string().contains("secret.png"));
}

#[test]
fn fuzz_regression_palette_of_a_length_not_a_multiple_of_3() {
    // Found by the decode_transforms fuzzer: a 4-bit palette PNG whose PLTE chunk is 53 bytes
    // long, with a tRNS chunk, made the `png` crate (0.18.1) slice past the palette's end and
    // panic (the fuzz build skips CRC checks; the fixture's CRCs are fixed, so it panicked in
    // a normal build too). PIL refuses the file as well ("image file is truncated").
    let bytes = read("fuzz_crash_plte_length.png");
    match load_image_from_memory(&bytes).unwrap_err() {
        Error::ImageDecode { origin, source } => {
            assert_eq!(origin, "<memory>");
            assert!(source.to_string().contains("PLTE"), "{source}");
        }
        other => panic!("{other:?}"),
    }
}

/// PNG chunk CRCs are checked where PIL checks them, and only there (Pillow 13 with fastai's
/// default `LOAD_TRUNCATED_IMAGES = False`, see `scripts/make_hostile_fixtures.py`): a wrong
/// CRC in any chunk before the first `IDAT` (IHDR, PLTE, tRNS, iCCP, gAMA, pHYs, tIME, tEXt, a
/// private chunk) makes PIL refuse the file ("cannot identify image file"), and it is refused
/// here with an error naming the file and the chunk; a wrong CRC in an `IDAT` chunk or in a
/// chunk after the image data (tEXt, IEND) is never compared by PIL, which decodes the file,
/// and it decodes here to the same pixels.
#[test]
fn png_chunk_crcs_are_checked_where_pil_checks_them() {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hostile("manifest.json")).unwrap()).unwrap();
    let (mut refused, mut decoded) = (Vec::new(), Vec::new());
    for e in m["images"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        if !name.starts_with("crc_") {
            continue;
        }
        let file = e["file"].as_str().unwrap();
        let bad = &e["bad_crc"];
        match e["rgb"].as_str() {
            // PIL decodes it: the same pixels.
            Some(rgb) => {
                let img = load_image(hostile(file)).unwrap_or_else(|err| panic!("{name}: {err}"));
                assert_eq!(img.as_raw().as_slice(), read(rgb).as_slice(), "{name}");
                decoded.push(bad["chunk"].as_str().unwrap_or("none").to_string());
            }
            // PIL refuses it: refused, naming the file and the chunk.
            None => {
                assert!(e["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("UnidentifiedImageError: cannot identify image file"));
                let chunk = bad["chunk"].as_str().unwrap();
                assert!(e["png_plugin_error"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("bad header checksum in b'{chunk}'")));
                let err = load_image(hostile(file)).unwrap_err();
                let msg = err.to_string();
                assert!(
                    msg.contains(file) && msg.contains(&format!("bad CRC in the {chunk} chunk")),
                    "{name}: {msg}"
                );
                let Error::ImageDecode { origin, source } = &err else {
                    panic!("{name}: {err:?}");
                };
                assert!(origin.ends_with(file), "{origin}");
                let mismatch = std::error::Error::source(source)
                    .and_then(|s| s.downcast_ref::<PngCrcMismatch>())
                    .unwrap_or_else(|| panic!("{name}: {source:?}"));
                assert_eq!(mismatch.chunk, chunk.as_bytes());
                assert_eq!(mismatch.offset as u64, bad["offset"].as_u64().unwrap());
                assert_eq!(mismatch.stored ^ mismatch.computed, 1, "{name}");
                // From memory too, naming `<memory>`.
                let err = load_image_from_memory(&read(file)).unwrap_err();
                assert!(err.to_string().contains("<memory>"), "{err}");
                refused.push(chunk.to_string());
            }
        }
    }
    refused.sort();
    decoded.sort();
    assert_eq!(
        refused,
        ["IHDR", "PLTE", "gAMA", "iCCP", "pHYs", "prVt", "tEXt", "tIME", "tRNS"]
    );
    assert_eq!(decoded, ["IDAT", "IDAT", "IEND", "none", "none", "tEXt"]);
}

/// Corrupt image data (a flipped byte of the zlib data or of its Adler-32): PIL's zlib refuses
/// it. When the `IDAT` CRC is wrong too, as a damaged file has it, the stream is inflated and
/// checked before decoding, and refused. When the CRC was recomputed over the corrupt bytes,
/// the file is decoded without that check: the `png` crate ignores the Adler-32 and a second
/// inflate of every PNG would cost as much as decoding it again, so this divergence from PIL
/// is known and kept (see `src/decode.rs`).
#[test]
fn corrupt_png_image_data_is_refused_when_its_crc_is_wrong() {
    for name in ["zlib_data_crc_wrong", "zlib_adler32_crc_wrong"] {
        let m = manifest(name);
        assert_eq!(
            m["error"],
            "OSError: broken data stream when reading image file"
        );
        let file = m["file"].as_str().unwrap();
        let err = load_image(hostile(file)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::ImageDecode { .. }), "{name}: {err:?}");
        assert!(
            msg.contains(file) && msg.contains("image data is corrupt"),
            "{name}: {msg}"
        );
    }
    // The known divergence: the data flip decodes to other pixels, the Adler-32 flip to the
    // right ones, where PIL refuses both.
    let pixels = |f: &str| load_image(hostile(f)).unwrap().into_raw();
    for (name, same) in [
        ("zlib_data_crc_recomputed", false),
        ("zlib_adler32_crc_recomputed", true),
    ] {
        assert!(manifest(name)["error"]
            .as_str()
            .unwrap()
            .starts_with("OSError: broken data stream"));
        let got = pixels(&format!("{name}.png"));
        assert_eq!(got == read("crc_rgb_ok.rgb"), same, "{name}");
    }
}
