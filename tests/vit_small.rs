//! A fastai `vision_learner` on `vit_small_patch16_224` with timm kwargs `depth=2,
//! mlp_ratio=1.0` (`tests/fixtures/vit_small`, made by `scripts/make_fixtures_v2.py small` and
//! exported by `scripts/export_fastai.py`): another width (384) and head count (6) than the
//! shipped ViT-tiny, a non-default depth and MLP width. The architecture is read off the
//! shapes, the heads off the arch name, the recipe off the metadata, and the core fidelity bars
//! hold against fastai's own outputs.

mod common;

use candle_core::{DType, Device, Tensor};
use fastai_infer::model::{head, BodyConfig};
use fastai_infer::{FastaiWeights, Learner, Prediction, Recipe};

fn small(rel: &str) -> std::path::PathBuf {
    common::fixtures().join("vit_small").join(rel)
}

struct Case {
    image: String,
    stem: String,
    label: String,
    index: usize,
    input_sha256: String,
}

fn manifest() -> Vec<Case> {
    let text = std::fs::read_to_string(small("manifest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            image: c["image"].as_str().unwrap().into(),
            stem: c["stem"].as_str().unwrap().into(),
            label: c["label"].as_str().unwrap().into(),
            index: c["index"].as_u64().unwrap() as usize,
            input_sha256: c["input_sha256"].as_str().unwrap().into(),
        })
        .collect()
}

/// Largest difference between a prediction's probabilities and fastai's.
fn probs_diff(pred: &Prediction, reference: &Tensor) -> f32 {
    let probs = Tensor::new(pred.probabilities.as_slice(), &Device::Cpu).unwrap();
    common::max_abs_diff(&probs, &reference.to_dtype(DType::F32).unwrap())
}

#[test]
fn the_architecture_and_recipe_come_from_the_file() {
    let w = FastaiWeights::load(small("model.safetensors"), &Device::Cpu).unwrap();
    let BodyConfig::Vit(c) = &w.config().body else {
        panic!("not a ViT: {}", w.config());
    };
    assert_eq!(
        (
            c.embed_dim,
            c.depth,
            c.num_heads,
            c.patch_size,
            c.img_size,
            w.config().num_classes()
        ),
        (384, 2, 6, 16, 224, 37)
    );
    // A 384-wide MLP (mlp_ratio 1), fastai's default 512-wide head.
    let head_hidden = w.config().head.layers.iter().find_map(|l| match l {
        head::Layer::Linear { out_features, .. } => Some(*out_features),
        _ => None,
    });
    assert_eq!(
        (c.mlp_ratio, c.mlp_hidden(), head_hidden),
        (1, 384, Some(512))
    );
    let expected = std::fs::read_to_string(small("recipe_expected.json")).unwrap();
    assert_eq!(w.recipe().unwrap(), Recipe::from_json(&expected).unwrap());
    assert_eq!(w.vocab().unwrap().unwrap().len(), 37);
}

#[test]
fn vit_small_meets_the_fidelity_bars() {
    let learn = Learner::load(small("model.safetensors"), &Device::Cpu).unwrap();
    let golden = candle_core::safetensors::load(small("golden.safetensors"), &Device::Cpu).unwrap();
    let cases = manifest();
    assert_eq!(cases.len(), 8);
    let (mut worst_logits, mut worst_probs) = (0f32, 0f32);
    let (mut worst_input, mut worst_file_probs) = (0f32, 0f32);
    for case in &cases {
        // fastai's input: the ViT-tiny golden's for the same image (the same recipe), checked
        // bit for bit against this learner's digest too.
        let input = &common::fastai_input(&common::fixture(&case.image));
        assert_eq!(
            common::tensor_sha256(input),
            case.input_sha256,
            "{}",
            case.image
        );
        let logits_ref = &golden[&format!("{}.logits", case.stem)];
        let probs_ref = &golden[&format!("{}.probs", case.stem)];

        // The model on fastai's own input: logits and learn.predict's probabilities.
        let logits = learn.logits(input).unwrap();
        let d = common::max_abs_diff(&logits, logits_ref);
        assert!(d <= 1e-4, "{}: logits differ by {d}", case.image);
        worst_logits = worst_logits.max(d);
        let row = logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let pred = Prediction::from_logits(&row, learn.vocab()).unwrap();
        let dp = probs_diff(&pred, probs_ref);
        assert!(dp <= 1e-5, "{}: probabilities differ by {dp}", case.image);
        worst_probs = worst_probs.max(dp);
        assert_eq!(pred.index, case.index, "{}", case.image);

        // File to probabilities, JPEG and lossless alike: the JPEG decoder gives PIL's
        // pixels, so the input is fastai's bit for bit and the probabilities within 1e-5.
        let path = common::fixtures().join("images").join(&case.image);
        let img = fastai_infer::load_image(&path).unwrap();
        let ours = learn.model_input(std::slice::from_ref(&img)).unwrap();
        let pred = learn.predict(&img).unwrap();
        let dp = probs_diff(&pred, probs_ref);
        let d = common::max_abs_diff(&ours, input);
        assert!(d <= 1e-6, "{}: input differs by {d}", case.image);
        assert_eq!(
            common::tensor_sha256(&ours),
            case.input_sha256,
            "{}",
            case.image
        );
        worst_input = worst_input.max(d);
        assert!(dp <= 1e-5, "{}: probabilities differ by {dp}", case.image);
        worst_file_probs = worst_file_probs.max(dp);
        assert_eq!(pred.index, case.index, "{}", case.image);
        assert_eq!(pred.label, case.label, "{}", case.image);
    }
    println!(
        "vit_small, worst: model on fastai's input: logits {worst_logits:.1e}, probs \
         {worst_probs:.1e}; from the files (JPEG too): input {worst_input:.1e}, probs \
         {worst_file_probs:.1e}"
    );
}
