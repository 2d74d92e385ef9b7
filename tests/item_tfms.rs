//! Item transforms against PIL: the bilinear resize for up- and down-scales of odd sizes, and
//! the whole `RandomResizedCrop(460)` validation transform against fastai's item bytes.

mod common;

use fastai_infer::item_tfms::{resize_bilinear, RandomResizedCrop};
use fastai_infer::load_image;

/// The sources of the PIL resize cases: crops of the fixture PNGs (checked against the
/// digest of the crop PIL resized) and a stored noise image.
fn resize_sources() -> Vec<(String, image::RgbImage)> {
    let t = common::load("stages/resize.safetensors");
    let digests = common::stage_digests("resize.safetensors");
    let crop = |file: &str, (x0, y0, x1, y1): (u32, u32, u32, u32)| {
        let img = load_image(common::fixtures().join("images").join(file)).unwrap();
        image::imageops::crop_imm(&img, x0, y0, x1 - x0, y1 - y0).to_image()
    };
    // The boxes of `RESIZE_SOURCES` in scripts/make_fixtures.py.
    let mut sources = vec![
        ("src0", crop("chelsea.png", (100, 50, 137, 111))),
        ("src1", crop("retina_large.png", (500, 300, 901, 563))),
        ("src2", crop("chelsea.png", (3, 5, 446, 295))),
    ];
    for (key, img) in &sources {
        assert_eq!(
            common::sha256(img.as_raw()),
            digests[*key].sha256,
            "{key}: not the crop PIL resized"
        );
    }
    sources.push(("src3", common::tensor_image(&t["src3"])));
    sources
        .into_iter()
        .map(|(k, img)| (k.to_string(), img))
        .collect()
}

#[test]
fn resize_matches_pil_bilinear_byte_for_byte() {
    let t = common::load("stages/resize.safetensors");
    let digests = common::stage_digests("resize.safetensors");
    let mut checked = 0;
    for (src, img) in resize_sources() {
        let (w, h) = img.dimensions();
        let mut cases: Vec<&String> = digests
            .keys()
            .filter(|k| k.starts_with(&format!("{src}_")))
            .collect();
        cases.sort();
        for case in cases {
            let want = &digests[case];
            let (oh, ow) = (want.shape[0], want.shape[1]);
            let got = resize_bilinear(&img, ow as u32, oh as u32).unwrap();
            // Small outputs are stored in full: their difference says where it is.
            if let Some(full) = t.get(case.as_str()) {
                let d = common::max_abs_diff(&common::image_tensor(&got), full);
                assert_eq!(
                    d, 0.0,
                    "{case}: {w}x{h} -> {ow}x{oh} differs from PIL by {d}"
                );
            }
            assert_eq!(
                common::sha256(got.as_raw()),
                want.sha256,
                "{case}: {w}x{h} -> {ow}x{oh} differs from PIL"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 28, "every PIL resize case was compared");
}

#[test]
fn item_bytes_match_fastai_for_lossless_images() {
    let tfm = RandomResizedCrop::new(460);
    let mut n = 0;
    for f in common::manifest().into_iter().filter(|f| f.lossless) {
        let img = load_image(common::image_path(&f)).unwrap();
        let item = tfm.encodes(&img).unwrap();
        assert_eq!(
            common::sha256(item.as_raw()),
            f.item_sha256,
            "{}: item bytes differ from fastai",
            f.image
        );
        n += 1;
    }
    assert_eq!(n, 10, "the lossless fixtures");
}

#[test]
fn jpeg_item_bytes_are_pils() {
    // The crate's JPEG decoder gives libjpeg-turbo's pixels as PIL decodes them
    // (tests/jpeg.rs), so the item bytes of the JPEG fixtures are fastai's bit for bit too.
    let tfm = RandomResizedCrop::new(460);
    let mut n = 0;
    for f in common::manifest().into_iter().filter(|f| !f.lossless) {
        let img = load_image(common::image_path(&f)).unwrap();
        let item = tfm.encodes(&img).unwrap();
        assert_eq!(
            common::sha256(item.as_raw()),
            f.item_sha256,
            "{}: the JPEG item bytes are not fastai's",
            f.image
        );
        assert_eq!(
            item.as_raw(),
            common::fastai_item(&f).as_raw(),
            "{}",
            f.image
        );
        n += 1;
    }
    assert_eq!(n, 4, "the JPEG fixtures");
}

mod tfms_fixtures;

/// Every item transform case of scripts/make_fixtures_tfms.py (Resize crop/squish/pad x
/// reflection/zeros/border, square, (h, w) and (w > h) sizes, nearest, CropPad, CropPad then
/// Resize, RandomResizedCrop) on the lossless fixture PNGs: the same bytes as fastai's
/// `test_dl` items.
#[test]
fn item_tfms_match_fastai_byte_for_byte() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in tfms_fixtures::cases() {
        for (i, img) in case.images.iter().enumerate() {
            let want = tfms_fixtures::item(&case.items, i);
            let got = case.recipe.item_tfms.encodes(img).unwrap();
            checked += 1;
            if got.dimensions() != want.dimensions() {
                failures.push(format!(
                    "{} image {i}: {:?} vs fastai {:?}",
                    case.name,
                    got.dimensions(),
                    want.dimensions()
                ));
                continue;
            }
            let differ = got
                .as_raw()
                .iter()
                .zip(want.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            if differ > 0 {
                failures.push(format!("{} image {i}: {differ} bytes differ", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 200, "only {checked} images checked");
}
