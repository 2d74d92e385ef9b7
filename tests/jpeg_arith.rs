//! Arithmetic-coded JPEGs through the public API, against PIL: every file of
//! `tests/fixtures/jpeg_arith/` (written by `scripts/make_fixtures_jpeg_arith.py`: sequential
//! and progressive, restarts, every sampling, gray/RGB/CMYK, DAC variants, corrupt data)
//! decodes to PIL's RGB bytes (SHA-256 of `Image.open(f).convert('RGB').tobytes()`), or is
//! refused with a typed error where PIL raises. The coefficient-level checks (libjpeg's
//! quantized coefficients for every file) are unit tests in `src/decode/jpeg/arith.rs`.

mod common;

use fastai_infer::{load_image, Error};
use serde_json::Value;

#[test]
fn arith_fixtures_decode_to_pils_bytes() {
    let dir = common::fixtures().join("jpeg_arith");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let files = manifest.as_object().unwrap();
    assert!(files.len() >= 30);
    let mut failures = Vec::new();
    for (file, want) in files {
        let pil = &want["pil"];
        match (pil.get("error"), load_image(dir.join(file))) {
            (None, Ok(img)) => {
                let same = u64::from(img.width()) == pil["width"].as_u64().unwrap()
                    && u64::from(img.height()) == pil["height"].as_u64().unwrap()
                    && common::sha256(img.as_raw()) == pil["rgb_sha256"].as_str().unwrap();
                if !same {
                    failures.push(format!("{file}: not PIL's bytes"));
                }
            }
            (None, Err(e)) => failures.push(format!("{file}: refused ({e}), PIL decodes it")),
            (Some(p), Ok(_)) => failures.push(format!("{file}: decoded, PIL raises {p}")),
            (Some(_), Err(e)) => {
                let typed = matches!(
                    e,
                    Error::ImageDecode { .. } | Error::UnsupportedImage { .. }
                );
                if !typed || !e.to_string().contains(file.as_str()) {
                    failures.push(format!(
                        "{file}: error without the file's name or type: {e}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
