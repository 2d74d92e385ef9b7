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

/// A stage fixture's large `u8` input, made by SplitMix64 (`noise_u8`) and checked against
/// the digest of the array the reference ran on.
fn noise_input(file: &str, key: &str, seed: u64) -> Tensor {
    let digests = common::stage_digests(file);
    let x8 = Tensor::from_vec(
        common::noise_u8(seed, 3 * 460 * 460),
        (1, 3, 460, 460),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(common::tensor_sha256(&x8), digests[key].sha256, "{key}");
    x8
}

/// Compares an output with the reference: bit for bit by digest, and by value where the
/// fixture stores it in full (small outputs, for diagnosis).
fn assert_same_as_reference(
    t: &std::collections::HashMap<String, Tensor>,
    digests: &std::collections::HashMap<String, common::StageDigest>,
    key: &str,
    got: &Tensor,
    what: &str,
) {
    let want = &digests[key];
    assert_eq!(got.dims(), want.shape.as_slice(), "{key}: shape");
    if let Some(want) = t.get(key) {
        let d = common::max_abs_diff(got, want);
        assert_eq!(d, 0.0, "{key}: {what} differs by {d}");
    }
    assert_eq!(
        common::tensor_sha256(got),
        want.sha256,
        "{key}: {what} differs from the reference"
    );
}

#[test]
fn area_interpolation_matches_torch() {
    let file = "area.safetensors";
    let (t, digests) = (
        common::load("stages/area.safetensors"),
        common::stage_digests(file),
    );
    let mut n = 0;
    for (src_key, x) in [
        ("x460", to_unit(&noise_input(file, "x460_u8", 1))),
        ("x37x53", t["x37x53"].clone()),
    ] {
        let mut keys: Vec<&String> = digests
            .keys()
            .filter(|k| k.starts_with(&format!("{src_key}_")) && !k.ends_with("u8"))
            .collect();
        keys.sort();
        for key in keys {
            let (oh, ow) = (digests[key].shape[2], digests[key].shape[3]);
            let got = area_interpolate(&x, oh, ow).unwrap();
            assert_same_as_reference(&t, &digests, key, &got, "area interpolation");
            // The device-generic candle-op path (what CUDA runs) gives the same bits.
            let ops = area_interpolate_ops(&x, oh, ow).unwrap();
            assert_same_as_reference(&t, &digests, key, &ops, "candle-op path");
            println!("{key}: bit-identical");
            n += 1;
        }
    }
    assert_eq!(n, 7);
}

#[test]
fn grid_sample_matches_torch_on_affine_grids() {
    let file = "grid_sample.safetensors";
    let (t, digests) = (
        common::load("stages/grid_sample.safetensors"),
        common::stage_digests(file),
    );
    let input = &t["input"];
    let mut n = 0;
    for key in t
        .keys()
        .filter(|k| k.ends_with("_grid") && !k.starts_with("fastai"))
    {
        let stem = key.trim_end_matches("_grid");
        let got = grid_sample(input, &t[key]).unwrap();
        assert_same_as_reference(&t, &digests, &format!("{stem}_out"), &got, "grid_sample");
        println!("{stem}: bit-identical");
        n += 1;
    }
    assert_eq!(n, 12);
}

#[test]
fn affine_grid_matches_torch() {
    let file = "grid_sample.safetensors";
    let (t, digests) = (
        common::load("stages/grid_sample.safetensors"),
        common::stage_digests(file),
    );
    let mut n = 0;
    for key in t.keys().filter(|k| k.ends_with("_theta")) {
        let stem = key.trim_end_matches("_theta");
        let want_key = format!("{stem}_grid");
        let shape = &digests[&want_key].shape;
        let got = affine_grid(&t[key], shape[1], shape[2]).unwrap();
        if let Some(want) = t.get(&want_key) {
            let d = common::max_abs_diff(&got, want);
            assert!(d <= 1e-6, "{stem}: affine_grid differs by {d}");
        }
        let same = common::tensor_sha256(&got) == digests[&want_key].sha256;
        println!("{stem}: affine_grid bit-identical: {same}");
        // The zoomed grid fastai's rule runs on is stored as a digest only: it must be exact.
        assert!(
            same || t.contains_key(&want_key),
            "{stem}: affine_grid differs"
        );
        n += 1;
    }
    assert_eq!(n, 13);
    // The identity grid is torch's linspace bit for bit.
    let eye = identity_grid(1, 224, 224, &candle_core::Device::Cpu).unwrap();
    assert_eq!(common::tensor_sha256(&eye), digests["fastai_grid"].sha256);
}

#[test]
fn fastai_grid_sample_matches_fastai() {
    let file = "grid_sample.safetensors";
    let (t, digests) = (
        common::load("stages/grid_sample.safetensors"),
        common::stage_digests(file),
    );
    let x = to_unit(&noise_input(file, "fastai_input_u8", 2));
    let eye = identity_grid(1, 224, 224, &candle_core::Device::Cpu).unwrap();
    let zoom = affine_grid(&t["fastai_zoom_theta"], 224, 224).unwrap();
    for (grid, grid_key, out) in [
        (eye, "fastai_grid", "fastai_out"),
        (zoom, "fastai_zoom_grid", "fastai_zoom_out"),
    ] {
        assert_same_as_reference(&t, &digests, grid_key, &grid, "the grid");
        let got = fastai_grid_sample(&x, &grid).unwrap();
        assert_same_as_reference(&t, &digests, out, &got, "fastai's _grid_sample");
        println!("{out}: bit-identical");
    }
}

#[test]
fn batch_tfms_match_fastai_normalized_input() {
    // Feed fastai's own item bytes, so this checks the batch transforms alone.
    let mut n = 0;
    for f in common::manifest() {
        let item = common::image_tensor(&common::fastai_item(&f))
            .unsqueeze(0)
            .unwrap();
        let got = BatchTfms::default().encodes(&item).unwrap();
        common::assert_input_is_fastais(&f, &got, "batch transforms");
        n += 1;
    }
    assert_eq!(n, 14);
}

/// The CPU direct-loop path and the candle-op path give the same bits, with and without the
/// area pre-interpolation, for square and non-square outputs, one image or several.
#[test]
fn cpu_fast_path_equals_candle_ops_path() {
    let items: Vec<Tensor> = common::manifest()
        .iter()
        .take(5)
        .map(|f| common::image_tensor(&common::fastai_item(f)))
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
        .map(common::fastai_item)
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

mod tfms_fixtures;

/// The batch transform cases of scripts/make_fixtures_tfms.py (aug_transforms with and
/// without a size, down- and upsizing, pad modes, Normalize present or absent,
/// IntToFloatTensor alone) from fastai's own item bytes: the CPU path and the candle-op path
/// give exactly fastai's model input (max abs difference 0.0).
#[test]
fn batch_tfms_match_fastai_exactly() {
    let device = candle_core::Device::Cpu;
    let mut report = Vec::new();
    let mut worst = 0f32;
    let mut cases = 0;
    for case in tfms_fixtures::cases() {
        let n = case.images.len();
        let items: Vec<image::RgbImage> = (0..n)
            .map(|i| tfms_fixtures::item(&case.items, i))
            .collect();
        let want = match &case.input {
            Some(t) => t.clone(),
            // IntToFloatTensor alone: fastai's input is the items / 255.
            None => to_unit(&case.items),
        };
        let t = &case.recipe.batch_tfms;
        let fast = t.encodes_images(&items, &device).unwrap();
        let ops = t
            .encodes_ops(&BatchTfms::stack(&items, &device).unwrap())
            .unwrap();
        assert_eq!(fast.dims(), want.dims(), "{}", case.name);
        let d_fast = common::max_abs_diff(&fast, &want);
        let d_ops = common::max_abs_diff(&ops, &want);
        worst = worst.max(d_fast).max(d_ops);
        report.push(format!("{}: cpu {d_fast:e}, ops {d_ops:e}", case.name));
        cases += 1;
    }
    assert_eq!(worst, 0.0, "{}", report.join("\n"));
    assert!(cases >= 30);
}
