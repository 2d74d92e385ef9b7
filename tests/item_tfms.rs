//! Item transforms against PIL: the bilinear resize for up- and down-scales of odd sizes, and
//! the whole `RandomResizedCrop(460)` validation transform against fastai's item bytes.

mod common;

use fastai_infer::item_tfms::{resize_bilinear, RandomResizedCrop};
use fastai_infer::load_image;

#[test]
fn resize_matches_pil_bilinear_byte_for_byte() {
    let t = common::load("stages/resize.safetensors");
    let mut checked = 0;
    for i in 0..4 {
        let src = &t[&format!("src{i}")];
        let (h, w, _) = src.dims3().unwrap();
        let img = image::RgbImage::from_raw(
            w as u32,
            h as u32,
            src.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
        )
        .unwrap();
        for (key, want) in t.iter().filter(|(k, _)| k.starts_with(&format!("src{i}_"))) {
            let (oh, ow, _) = want.dims3().unwrap();
            let got = resize_bilinear(&img, ow as u32, oh as u32).unwrap();
            let got = common::image_tensor(&got);
            assert_eq!(
                common::max_abs_diff(&got, want),
                0.0,
                "{key}: {w}x{h} -> {ow}x{oh} differs from PIL"
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
        let img = load_image(common::fixtures().join("images").join(&f.image)).unwrap();
        let item = tfm.encodes(&img).unwrap();
        let want = &common::load(&format!("golden/{}", f.golden))["item"];
        let got = common::image_tensor(&item);
        assert_eq!(
            common::max_abs_diff(&got, want),
            0.0,
            "{}: item bytes differ from fastai",
            f.image
        );
        n += 1;
    }
    assert!(n >= 8, "only {n} lossless fixtures");
}

#[test]
fn jpeg_item_bytes_stay_close_to_pil() {
    // The image crate's JPEG decoder is not libjpeg-turbo: report the difference, and bound it.
    let tfm = RandomResizedCrop::new(460);
    for f in common::manifest().into_iter().filter(|f| !f.lossless) {
        let img = load_image(common::fixtures().join("images").join(&f.image)).unwrap();
        let item = tfm.encodes(&img).unwrap();
        let want = &common::load(&format!("golden/{}", f.golden))["item"];
        let got = common::image_tensor(&item);
        let max = common::max_abs_diff(&got, want);
        let diff = (got.to_dtype(candle_core::DType::F32).unwrap()
            - want.to_dtype(candle_core::DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .ge(1f32)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        println!(
            "{:24} JPEG item bytes vs PIL: max diff {max} levels, {:.2}% of values differ",
            f.image,
            diff * 100.0
        );
        assert!(
            max <= 8.0,
            "{}: JPEG decode differs by {max} levels",
            f.image
        );
    }
}
