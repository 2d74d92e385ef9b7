//! The JPEG decoder against PIL and fastai, on the corpus of `tests/fixtures/jpeg/` (written by
//! `scripts/make_fixtures_jpeg.py`): every file decodes to PIL's RGB bytes (SHA-256 of
//! `Image.open(f).convert('RGB').tobytes()`), or is refused with a typed error naming the file
//! where PIL raises; EXIF orientations as `ImageOps.exif_transpose`; fastai's normalized input
//! bit for bit and its probabilities within 1e-5; and no panic, no pixel limit passed, on
//! thousands of damaged copies.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Tensor};
use fastai_infer::{
    load_image, load_image_from_memory_with, load_image_with, DecodeOptions, Error, Learner,
};
use serde_json::Value;

fn dir() -> PathBuf {
    common::fixtures().join("jpeg")
}

fn manifest() -> Value {
    let path = dir().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn cases() -> Vec<Value> {
    manifest()["cases"].as_array().unwrap().clone()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

/// Every corpus file gives PIL's RGB bytes, or a typed error naming the file where PIL
/// raises. Prints the table of cases per group (the README's fidelity table).
#[test]
fn corpus_decodes_to_pils_bytes() {
    let mut table: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in cases() {
        let file = str_of(&case, "file");
        let group = str_of(&case, "group").to_string();
        let pil = &case["pil"];
        let path = dir().join(file);
        let got = load_image(&path);
        let ok = match (pil.get("error"), got) {
            (None, Ok(img)) => {
                let same_size = u64::from(img.width()) == pil["width"].as_u64().unwrap()
                    && u64::from(img.height()) == pil["height"].as_u64().unwrap();
                let same = same_size && common::sha256(img.as_raw()) == str_of(pil, "rgb_sha256");
                if !same {
                    failures.push(format!(
                        "{file}: {}x{} decoded, not PIL's bytes ({} {}x{})",
                        img.width(),
                        img.height(),
                        str_of(pil, "mode"),
                        pil["width"],
                        pil["height"]
                    ));
                }
                same
            }
            (None, Err(e)) => {
                failures.push(format!("{file}: refused ({e}), PIL decodes it"));
                false
            }
            (Some(pil_err), Ok(_)) => {
                failures.push(format!("{file}: decoded, PIL raises {pil_err}"));
                false
            }
            (Some(_), Err(e)) => {
                let typed = matches!(
                    e,
                    Error::ImageDecode { .. }
                        | Error::UnsupportedImage { .. }
                        | Error::UnrecognizedImage { .. }
                );
                if !typed || !e.to_string().contains(file) {
                    failures.push(format!("{file}: error not typed or not naming it: {e:?}"));
                }
                typed
            }
        };
        let row = table.entry(group).or_default();
        row.0 += usize::from(ok);
        row.1 += 1;
    }
    println!("| group | as PIL |");
    println!("|---|---|");
    for (group, (ok, n)) in &table {
        println!("| {group} | {ok}/{n} |");
    }
    let (ok, n) = table
        .values()
        .fold((0, 0), |(a, b), (ok, n)| (a + ok, b + n));
    println!("{ok}/{n} corpus files as PIL");
    assert!(
        failures.is_empty(),
        "{} of {n} files differ from PIL:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(n >= 190, "the corpus has {n} files");
}

/// With the EXIF opt-in, every orientation is applied as `ImageOps.exif_transpose` applies
/// it; without it (fastai's default) the pixels are used as stored.
#[test]
fn exif_orientation_is_pils_exif_transpose() {
    let mut n = 0;
    for case in cases() {
        let pil = &case["pil"];
        let Some(want) = pil.get("transposed_sha256") else {
            continue;
        };
        let path = dir().join(str_of(&case, "file"));
        let img =
            load_image_with(&path, &DecodeOptions::default().with_exif_orientation(true)).unwrap();
        assert_eq!(
            (u64::from(img.width()), u64::from(img.height())),
            (
                pil["transposed_width"].as_u64().unwrap(),
                pil["transposed_height"].as_u64().unwrap()
            ),
            "{}",
            path.display()
        );
        assert_eq!(
            &common::sha256(img.as_raw()),
            want.as_str().unwrap(),
            "{}: orientation {} not applied as PIL applies it",
            path.display(),
            pil["orientation"]
        );
        let stored = load_image(&path).unwrap();
        assert_eq!(common::sha256(stored.as_raw()), str_of(pil, "rgb_sha256"));
        n += 1;
    }
    // Orientations 2-8, and the fastai case (6).
    assert_eq!(n, 8);
}

/// fastai's normalized input from each file bit for bit, and `learn.predict`'s
/// probabilities within 1e-5.
#[test]
fn fastai_input_and_probabilities_from_jpeg_files() {
    let learn = Learner::load(common::weights(), &Device::Cpu).unwrap();
    let m = manifest();
    let entries = m["fastai"].as_array().unwrap();
    let mut worst = 0f32;
    for e in entries {
        let file = str_of(e, "file");
        let path = dir().join(file);
        let img = load_image(&path).unwrap();
        let input = learn.model_input(std::slice::from_ref(&img)).unwrap();
        assert_eq!(
            common::tensor_sha256(&input),
            str_of(e, "input_sha256"),
            "{file}: the normalized input is not fastai's bit for bit"
        );
        let pred = learn.predict_path(&path).unwrap();
        let want: Vec<f32> = e["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap() as f32)
            .collect();
        let got = Tensor::new(pred.probabilities.as_slice(), &Device::Cpu).unwrap();
        let want = Tensor::new(want.as_slice(), &Device::Cpu).unwrap();
        let d = common::max_abs_diff(&got, &want);
        println!(
            "{file:26} input bit-identical  probs {d:.1e}  {} ({:.4})",
            pred.label, pred.probabilities[pred.index]
        );
        assert!(d <= 1e-5, "{file}: probabilities differ by {d}");
        assert_eq!(pred.label, str_of(e, "label"), "{file}: top-1");
        worst = worst.max(d);
    }
    println!(
        "max probability difference over {} files: {worst:.1e}",
        entries.len()
    );
    assert!(entries.len() >= 10);
}

/// A frame over the pixel limit is refused from its header, with the size it declares.
#[test]
fn the_pixel_limit_is_checked_from_the_frame_header() {
    let bytes = std::fs::read(dir().join("pil_420_q75.jpg")).unwrap();
    let opts = DecodeOptions::default().with_max_pixels(101 * 75 - 1);
    match load_image_from_memory_with(&bytes, &opts) {
        Err(Error::ImageTooLarge {
            width: 101,
            height: 75,
            max_pixels,
            ..
        }) => assert_eq!(max_pixels, 101 * 75 - 1),
        other => panic!("{other:?}"),
    }
    let img = load_image_from_memory_with(&bytes, &opts.with_max_pixels(101 * 75)).unwrap();
    assert_eq!(img.dimensions(), (101, 75));
    // The same frame declaring 65500x65500 (about 4.3 gigapixels).
    let sof = sof_offset(&bytes).unwrap();
    let mut bomb = bytes.clone();
    bomb[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xDC, 0xFF, 0xDC]);
    match load_image_from_memory_with(&bomb, &DecodeOptions::default()) {
        Err(Error::ImageTooLarge {
            width: 65500,
            height: 65500,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// The offset of the first SOFn marker (`FF C0`..`FF CF` but DHT, JPG, DAC) in a file.
fn sof_offset(bytes: &[u8]) -> Option<usize> {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        let m = bytes[i + 1];
        if matches!(m, 0xC0..=0xCF) && !matches!(m, 0xC4 | 0xC8 | 0xCC) {
            return Some(i);
        }
        i += 2 + usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
    }
    None
}

/// Counts panics, caught or not, anywhere in this test binary (the wiring catches a panicking
/// decoder; this makes it visible).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Thousands of damaged copies of corpus files (truncations, flipped and overwritten bytes,
/// bytes inserted and deleted, header fields changed): each decodes or is refused with a
/// typed error, never panics, and never gives more pixels than the limit allows.
#[test]
fn damaged_copies_never_panic_nor_pass_the_pixel_limit() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let sources = [
        "src_base.jpg",
        "src_prog.jpg",
        "cj_arith_420.jpg",
        "cj_arith_444_prog.jpg",
        "cj_rst_1b.jpg",
        "cj_scans_sa.jpg",
        "cj_411_q30.jpg",
        "cj_mixed_3x2_prog.jpg",
        "pil_cmyk_q50.jpg",
        "ycck_q30.jpg",
        "pil_gray_prog.jpg",
        "exif_orientation6.jpg",
        "size_7x9.jpg",
        "qt_16bit.jpg",
    ];
    let max_pixels = 256 * 256;
    let opts = DecodeOptions::default()
        .with_max_pixels(max_pixels)
        .with_exif_orientation(true);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move |n: usize| {
        // SplitMix64.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    };
    let (mut decoded, mut refused, mut total) = (0, 0, 0);
    for name in sources {
        let good = std::fs::read(dir().join(name)).unwrap();
        let sof = sof_offset(&good).unwrap();
        for k in 0..240 {
            let mut b = good.clone();
            match k % 8 {
                0 => b.truncate(rand(good.len())),
                1 => {
                    let at = rand(b.len());
                    b[at] ^= 1 << rand(8);
                }
                2 => {
                    for _ in 0..1 + rand(8) {
                        let at = rand(b.len());
                        b[at] = rand(256) as u8;
                    }
                }
                3 => {
                    // A header byte (markers and tables), where damage changes the layout.
                    let at = rand(sof + 40).min(b.len() - 1);
                    b[at] = rand(256) as u8;
                }
                4 => {
                    let at = rand(b.len());
                    b.insert(at, rand(256) as u8);
                }
                5 => {
                    let at = rand(b.len());
                    let n = rand(64).min(b.len() - at);
                    b.drain(at..at + n);
                }
                6 => {
                    // The frame header's size and sampling fields.
                    let at = sof + 5 + rand(8);
                    if at < b.len() {
                        b[at] = [0, 1, 0xFF, 0x11, 0x22, 0x44, 0x41, 0x14][rand(8)];
                    }
                }
                _ => {
                    // A marker byte made 0xFF, or 0xFF bytes made something else.
                    let at = rand(b.len());
                    b[at] = if b[at] == 0xFF { rand(256) as u8 } else { 0xFF };
                }
            }
            total += 1;
            match load_image_from_memory_with(&b, &opts) {
                Ok(img) => {
                    assert!(
                        u64::from(img.width()) * u64::from(img.height()) <= max_pixels,
                        "{name} copy {k}: {}x{} over the limit",
                        img.width(),
                        img.height()
                    );
                    decoded += 1;
                }
                Err(
                    Error::ImageDecode { .. }
                    | Error::UnsupportedImage { .. }
                    | Error::UnrecognizedImage { .. }
                    | Error::ImageTooLarge { .. },
                ) => refused += 1,
                Err(e) => panic!("{name} copy {k}: untyped error {e:?}"),
            }
        }
    }
    println!("{total} damaged copies: {decoded} decoded, {refused} refused");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the decoder panicked");
    assert!(total >= 3000);
}
