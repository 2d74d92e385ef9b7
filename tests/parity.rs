//! End to end against fastai: the model on fastai's own input (logits, probabilities), and the
//! whole pipeline from the image file (normalized input, probabilities, top-1).
//!
//! fastai's input for each image is rebuilt from fastai's item bytes and checked bit for bit
//! against fastai's SHA-256 (`common::fastai_input`), so the model runs on exactly the tensor
//! fastai ran it on.

mod common;

use candle_core::{Device, Tensor};
use fastai_infer::{load_image, Learner};

fn learner() -> Learner {
    Learner::load(common::weights(), &Device::Cpu).expect("shipped weights load")
}

#[test]
fn model_matches_fastai_logits_and_probabilities() {
    let learn = learner();
    let golden = common::golden();
    for f in common::manifest() {
        let logits = learn.logits(&common::fastai_input(&f)).unwrap();
        let d = common::max_abs_diff(&logits, &golden[&format!("{}.logits", f.stem)]);
        assert!(d <= 1e-4, "{}: logits differ by {d}", f.image);
        let row = logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let pred = fastai_infer::Prediction::from_logits(&row, learn.vocab()).unwrap();
        let probs = Tensor::new(pred.probabilities.as_slice(), &Device::Cpu).unwrap();
        let dp = common::max_abs_diff(&probs, &golden[&format!("{}.probs", f.stem)]);
        println!(
            "{:24} model on fastai's input: logits {d:.1e}  probs {dp:.1e}",
            f.image
        );
        assert!(dp <= 1e-5, "{}: probabilities differ by {dp}", f.image);
        assert_eq!(pred.index, f.index, "{}: top-1", f.image);
    }
}

/// All fixtures in one batch: the CPU fast path splits the rows into per-thread chunks and
/// tiles that straddle images, and each row must still match fastai's logits for that image.
#[test]
fn batched_fast_path_matches_fastai_row_by_row() {
    let learn = learner();
    let fixtures = common::manifest();
    let golden = common::golden();
    let inputs: Vec<Tensor> = fixtures.iter().map(common::fastai_input).collect();
    let batch = Tensor::cat(&inputs, 0).unwrap();
    let logits = learn.logits(&batch).unwrap();
    for (i, f) in fixtures.iter().enumerate() {
        let row = logits.narrow(0, i, 1).unwrap();
        let d = common::max_abs_diff(&row, &golden[&format!("{}.logits", f.stem)]);
        assert!(
            d <= 1e-4,
            "{} (row {i} of the batch): logits differ by {d}",
            f.image
        );
    }
}

/// The fused CPU path and the generic candle-op path compute the same function.
#[test]
fn fast_cpu_path_matches_candle_ops_path() {
    let learn = learner();
    let input = &common::golden()["chelsea.input"];
    let x = Tensor::cat(&[input, &input.flip(&[3]).unwrap()], 0).unwrap();
    let fastai_infer::model::Body::Vit(body) = learn.model().body() else {
        panic!("the pets learner is a ViT");
    };
    let fast = candle_core::Module::forward(body, &x).unwrap();
    let reference = body.forward_candle_ops(&x).unwrap();
    assert_eq!(fast.dims(), &[2, 192]);
    let d = common::max_abs_diff(&fast, &reference);
    println!("fast CPU path vs candle ops, class-token features: {d:.1e}");
    assert!(d <= 1e-4, "features differ by {d}");
}

#[test]
fn lossless_images_match_fastai_end_to_end() {
    let learn = learner();
    let golden = common::golden();
    let mut n = 0;
    for f in common::manifest().into_iter().filter(|f| f.lossless) {
        let path = common::image_path(&f);
        let img = load_image(&path).unwrap();
        // The normalized input from the file is fastai's, bit for bit (within 1e-6 of the
        // array where it is stored in full).
        let input = learn.model_input(std::slice::from_ref(&img)).unwrap();
        common::assert_input_is_fastais(&f, &input, "from the file");
        let pred = learn.predict_path(&path).unwrap();
        let probs = Tensor::new(pred.probabilities.as_slice(), &Device::Cpu).unwrap();
        let dp = common::max_abs_diff(&probs, &golden[&format!("{}.probs", f.stem)]);
        println!(
            "{:24} input bit-identical  probs {dp:.1e}  {} ({:.4})",
            f.image, pred.label, pred.probabilities[pred.index]
        );
        assert!(dp <= 1e-5, "{}: probabilities differ by {dp}", f.image);
        assert_eq!(pred.label, f.label, "{}: top-1 label", f.image);
        n += 1;
    }
    assert!(n >= 8);
}

#[test]
fn jpeg_images_match_fastai_end_to_end() {
    // The crate's JPEG decoder gives PIL's (libjpeg-turbo's) pixels: the normalized input is
    // fastai's bit for bit and the probabilities within 1e-5, as for the lossless images.
    let learn = learner();
    let golden = common::golden();
    let mut n = 0;
    for f in common::manifest().into_iter().filter(|f| !f.lossless) {
        let path = common::image_path(&f);
        let img = load_image(&path).unwrap();
        let input = learn.model_input(std::slice::from_ref(&img)).unwrap();
        common::assert_input_is_fastais(&f, &input, "from the JPEG file");
        let pred = learn.predict_path(&path).unwrap();
        let probs = Tensor::new(pred.probabilities.as_slice(), &Device::Cpu).unwrap();
        let dp = common::max_abs_diff(&probs, &golden[&format!("{}.probs", f.stem)]);
        println!(
            "{:24} JPEG: input bit-identical  probs {dp:.1e}  {} ({:.4})",
            f.image, pred.label, pred.probabilities[pred.index]
        );
        assert!(dp <= 1e-5, "{}: probabilities differ by {dp}", f.image);
        assert_eq!(pred.label, f.label, "{}: top-1 label", f.image);
        n += 1;
    }
    assert_eq!(n, 4, "the JPEG fixtures");
}

/// An image's logits do not depend on the batch it is in: the CPU fast path splits a batch's
/// rows into different chunks and tiles at batch 1, 2 and 4, and with its packed kernels
/// (AVX2 + FMA or AVX-512) every output is summed in the same order whatever the split, so
/// the bits are the same. The general matmul (`FASTAI_INFER_SIMD=baseline`, or a CPU without
/// AVX2) blocks by batch size and is only held to 1e-5.
#[test]
fn logits_are_bit_identical_whatever_the_batch() {
    #[cfg(target_arch = "x86_64")]
    let packed = std::env::var("FASTAI_INFER_SIMD").as_deref() != Ok("baseline")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let packed = false;
    let same = |a: &[f32], b: &[f32], what: &str| {
        if packed {
            assert_eq!(a, b, "{what}");
        } else {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d <= 1e-5, "{what}: {d}");
        }
    };
    let learn = learner();
    let inputs: Vec<Tensor> = [
        "chelsea.png",
        "rocket.jpg",
        "coffee_odd.png",
        "astronaut_portrait.png",
    ]
    .iter()
    .map(|name| common::fastai_input(&common::fixture(name)))
    .collect();
    let all = Tensor::cat(&inputs, 0).unwrap();
    let big = learn.logits(&all).unwrap().to_vec2::<f32>().unwrap();
    for (i, x) in inputs.iter().enumerate() {
        let one = learn.logits(x).unwrap().to_vec2::<f32>().unwrap();
        same(
            &one[0],
            &big[i],
            &format!("image {i} alone vs in a batch of 4"),
        );
    }
    let pair = Tensor::cat(&inputs[1..3], 0).unwrap();
    let two = learn.logits(&pair).unwrap().to_vec2::<f32>().unwrap();
    for (j, row) in two.iter().enumerate() {
        same(
            row,
            &big[1 + j],
            &format!("image {} in a pair vs in a batch of 4", 1 + j),
        );
    }
}

#[test]
fn predict_batch_equals_one_predict_per_image() {
    let learn = learner();
    let images: Vec<_> = common::manifest()
        .iter()
        .map(|f| load_image(common::image_path(f)).unwrap())
        .collect();
    let batch = learn.predict_batch(&images).unwrap();
    assert_eq!(batch.len(), images.len());
    for (img, b) in images.iter().zip(&batch) {
        let one = learn.predict(img).unwrap();
        assert_eq!(one.index, b.index);
        assert_eq!(one.label, b.label);
        let d = one
            .probabilities
            .iter()
            .zip(&b.probabilities)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-6, "batch vs single differ by {d}");
    }
    assert!(learn.predict_batch(&[]).unwrap().is_empty());
}

#[test]
fn predictions_are_peaked_and_vocab_is_the_pets_breeds() {
    let learn = learner();
    assert_eq!(learn.vocab().len(), 37);
    assert_eq!(learn.vocab().get(0), Some("Abyssinian"));
    let pred = learn
        .predict_path(common::fixtures().join("images/chelsea.png"))
        .unwrap();
    let top = pred.top_k(3);
    assert_eq!(top.len(), 3);
    assert!(top[0].probability >= top[1].probability && top[1].probability >= top[2].probability);
    assert!(
        top[0].probability > 0.5,
        "fixture model should be confident on a training photo"
    );
}
