//! Batch transforms against PyTorch: area interpolation at several ratios, grid_sample on
//! non-identity affine grids (rotation, zoom, translation past the border), affine_grid, and
//! fastai's `_grid_sample` with its area pre-interpolation.

mod common;

use candle_core::{DType, Tensor};
use fastai_infer::batch_tfms::{
    affine_grid, area_interpolate, area_interpolate_ops, fastai_grid_sample, grid_sample,
    identity_grid, BatchTfms,
};

fn to_unit(x8: &Tensor) -> Tensor {
    // IntToFloatTensor: x.float() / 255 (true division).
    x8.to_dtype(DType::F32)
        .unwrap()
        .broadcast_div(&Tensor::new(255f32, x8.device()).unwrap())
        .unwrap()
}

#[test]
fn area_interpolation_matches_torch() {
    let t = common::load("stages/area.safetensors");
    let mut n = 0;
    for (src_key, x) in [
        ("x460", to_unit(&t["x460_u8"])),
        ("x37x53", t["x37x53"].clone()),
    ] {
        for (key, want) in t
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{src_key}_")) && !k.ends_with("u8"))
        {
            let (_, _, oh, ow) = want.dims4().unwrap();
            let got = area_interpolate(&x, oh, ow).unwrap();
            let d = common::max_abs_diff(&got, want);
            println!("{key}: max abs diff {d:e}");
            assert_eq!(d, 0.0, "{key}: area interpolation differs by {d}");
            // The device-generic candle-op path (what CUDA runs) gives the same bits.
            let ops = area_interpolate_ops(&x, oh, ow).unwrap();
            assert_eq!(
                common::max_abs_diff(&ops, want),
                0.0,
                "{key}: candle-op path"
            );
            n += 1;
        }
    }
    assert_eq!(n, 7);
}

#[test]
fn grid_sample_matches_torch_on_affine_grids() {
    let t = common::load("stages/grid_sample.safetensors");
    let input = &t["input"];
    let mut n = 0;
    for key in t
        .keys()
        .filter(|k| k.ends_with("_grid") && !k.starts_with("fastai"))
    {
        let stem = key.trim_end_matches("_grid");
        let got = grid_sample(input, &t[key]).unwrap();
        let d = common::max_abs_diff(&got, &t[&format!("{stem}_out")]);
        println!("{stem}: max abs diff {d:e}");
        assert_eq!(d, 0.0, "{stem}: grid_sample differs by {d}");
        n += 1;
    }
    assert_eq!(n, 12);
}

#[test]
fn affine_grid_matches_torch() {
    let t = common::load("stages/grid_sample.safetensors");
    let mut n = 0;
    for key in t.keys().filter(|k| k.ends_with("_theta")) {
        let stem = key.trim_end_matches("_theta");
        let want = &t[&format!("{stem}_grid")];
        let (_, h, w, _) = want.dims4().unwrap();
        let got = affine_grid(&t[key], h, w).unwrap();
        let d = common::max_abs_diff(&got, want);
        assert!(d <= 1e-6, "{stem}: affine_grid differs by {d}");
        n += 1;
    }
    assert_eq!(n, 12);
    // The identity grid is torch's linspace bit for bit.
    let eye = identity_grid(1, 224, 224, &candle_core::Device::Cpu).unwrap();
    assert_eq!(common::max_abs_diff(&eye, &t["fastai_grid"]), 0.0);
}

#[test]
fn fastai_grid_sample_matches_fastai() {
    let t = common::load("stages/grid_sample.safetensors");
    let x = to_unit(&t["fastai_input_u8"]);
    for (grid, out) in [
        ("fastai_grid", "fastai_out"),
        ("fastai_zoom_grid", "fastai_zoom_out"),
    ] {
        let got = fastai_grid_sample(&x, &t[grid]).unwrap();
        let d = common::max_abs_diff(&got, &t[out]);
        println!("{out}: max abs diff {d:e}");
        assert_eq!(d, 0.0, "{out}: differs from fastai's _grid_sample by {d}");
    }
}

#[test]
fn batch_tfms_match_fastai_normalized_input() {
    // Feed fastai's own item bytes, so this checks the batch transforms alone.
    let mut n = 0;
    for f in common::manifest() {
        let g = common::load(&format!("golden/{}", f.golden));
        let item = g["item"].unsqueeze(0).unwrap();
        let got = BatchTfms::default().encodes(&item).unwrap();
        let d = common::max_abs_diff(&got, &g["input"]);
        assert!(d <= 1e-6, "{}: normalized input differs by {d}", f.image);
        n += 1;
    }
    assert!(n >= 10);
}

/// The CPU direct-loop path and the candle-op path give the same bits, with and without the
/// area pre-interpolation, for square and non-square outputs, one image or several.
#[test]
fn cpu_fast_path_equals_candle_ops_path() {
    let items: Vec<Tensor> = common::manifest()
        .iter()
        .take(5)
        .map(|f| common::load(&format!("golden/{}", f.golden))["item"].clone())
        .collect();
    let batch = Tensor::stack(&items, 0).unwrap();
    let one = batch.narrow(0, 0, 1).unwrap();
    // (224, 224) pools 460 -> 448 first; (300, 300) and (120, 310) sample directly (fastai's
    // rule compares with the output width); (200, 64) pools to a non-square size.
    for (h, w) in [(224, 224), (300, 300), (120, 310), (200, 64), (1, 1)] {
        let t = BatchTfms {
            height: h,
            width: w,
            ..BatchTfms::default()
        };
        for x in [&one, &batch] {
            let fast = t.encodes(x).unwrap();
            let ops = t.encodes_ops(x).unwrap();
            assert_eq!(fast.dims(), ops.dims());
            let d = common::max_abs_diff(&fast, &ops);
            assert_eq!(
                d,
                0.0,
                "{h}x{w}, batch {}: paths differ by {d}",
                x.dim(0).unwrap()
            );
        }
    }
}

/// `encodes_images` (no u8 batch built on the CPU) equals `stack` + the candle-op path, and
/// refuses mixed sizes and empty batches.
#[test]
fn encodes_images_equals_stack_then_ops() {
    let device = candle_core::Device::Cpu;
    let images: Vec<image::RgbImage> = common::manifest()
        .iter()
        .take(3)
        .map(|f| {
            let item = &common::load(&format!("golden/{}", f.golden))["item"];
            let (h, w, _) = item.dims3().unwrap();
            let raw = item.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            image::RgbImage::from_raw(w as u32, h as u32, raw).unwrap()
        })
        .collect();
    let t = BatchTfms::default();
    let fast = t.encodes_images(&images, &device).unwrap();
    let ops = t
        .encodes_ops(&BatchTfms::stack(&images, &device).unwrap())
        .unwrap();
    assert_eq!(common::max_abs_diff(&fast, &ops), 0.0);
    let small = image::RgbImage::new(10, 10);
    let err = t
        .encodes_images(&[images[0].clone(), small], &device)
        .unwrap_err();
    assert!(err.to_string().contains("differ in size"), "{err}");
    assert!(t.encodes_images(&[], &device).is_err());
}
