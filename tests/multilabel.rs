//! A real multi-label learner (`MultiCategoryBlock`, `BCEWithLogitsLossFlat(thresh=0.35)`, a
//! small torchvision ResNet trained with `fit_one_cycle` on crops of real photos, `Resize(pad,
//! zeros)`, `aug_transforms()` without a size, `Normalize`), exported by
//! scripts/export_fastai.py: the model input, the sigmoid probabilities and the label sets
//! against fastai's (scripts/make_fixtures_tfms.py multilabel).

#[path = "../examples/predict/cli.rs"]
mod cli;
mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use fastai_infer::{Learner, LossFunc, PredictionKind};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden() -> (HashMap<String, Tensor>, serde_json::Value) {
    let t = candle_core::safetensors::load(
        dir().join("tfms/multilabel_golden.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let m = std::fs::read_to_string(dir().join("tfms/multilabel.json")).unwrap();
    (t, serde_json::from_str(&m).unwrap())
}

#[test]
fn multi_label_learner_matches_fastai() {
    let (g, meta) = golden();
    let learn = Learner::load(dir().join("tfms/multilabel.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(
        *learn.loss_func(),
        LossFunc::BCEWithLogitsLossFlat { thresh: 0.35 },
        "the threshold comes from the loss function, through the recipe"
    );
    let files: Vec<PathBuf> = meta["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| dir().join("images").join(f.as_str().unwrap()))
        .collect();
    let images: Vec<_> = files
        .iter()
        .map(|f| fastai_infer::load_image(f).unwrap())
        .collect();

    let input = learn.model_input(&images).unwrap();
    let d_input = common::max_abs_diff(&input, &g["input"]);
    assert_eq!(
        d_input, 0.0,
        "model input differs from fastai's by {d_input}"
    );

    let preds = learn.predict_paths(&files, 4).unwrap();
    let probs = g["probs"].to_vec2::<f32>().unwrap();
    let want_labels = meta["labels"].as_array().unwrap();
    let mut worst = 0f32;
    for ((p, want_p), want_l) in preds.iter().zip(&probs).zip(want_labels) {
        assert_eq!(p.kind, PredictionKind::MultiLabel { thresh: 0.35 });
        assert!(p.is_multi_label());
        for (a, b) in p.probabilities.iter().zip(want_p) {
            worst = worst.max((a - b).abs());
        }
        let want_l: Vec<&str> = want_l
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(p.labels, want_l, "labels differ from learn.predict's");
    }
    assert!(worst <= 1e-4, "probabilities differ by {worst}");
    eprintln!("multi-label: input max |diff| {d_input}, probabilities max |diff| {worst:e}");
}

#[test]
fn a_single_label_decode_of_the_same_learner_is_a_softmax() {
    // with_loss_func overrides the recipe's decoding (the user's choice, not fastai's).
    let learn = Learner::load(dir().join("tfms/multilabel.safetensors"), &Device::Cpu)
        .unwrap()
        .with_loss_func(LossFunc::CrossEntropyLossFlat);
    let p = learn
        .predict_path(dir().join("images/chelsea.png"))
        .unwrap();
    assert_eq!(p.kind, PredictionKind::SingleLabel);
    assert_eq!(p.labels, std::slice::from_ref(&p.label));
    assert!((p.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
}

#[test]
fn predict_json_prints_one_multi_label_line_per_image() {
    let (_, meta) = golden();
    let files: Vec<PathBuf> = meta["images"].as_array().unwrap()[..3]
        .iter()
        .map(|f| dir().join("images").join(f.as_str().unwrap()))
        .collect();
    let mut argv: Vec<OsString> = vec![
        "--json".into(),
        "--top-k".into(),
        "2".into(),
        "--weights".into(),
        dir().join("tfms/multilabel.safetensors").into(),
    ];
    argv.extend(files.iter().map(|f| f.clone().into_os_string()));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run(argv, &mut out, &mut err, false);
    let (out, err) = (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    );
    assert_eq!(code, cli::EXIT_OK, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), files.len());
    for ((line, file), want) in lines
        .iter()
        .zip(&files)
        .zip(meta["labels"].as_array().unwrap())
    {
        let obj = line.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["labels", "path", "probabilities", "top_k"]);
        assert_eq!(line["path"], file.display().to_string());
        assert_eq!(&line["labels"], want);
        assert_eq!(line["probabilities"].as_array().unwrap().len(), 8);
        let top = line["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!(top[0]["probability"].as_f64() >= top[1]["probability"].as_f64());
    }
}

/// `predict_paths` with the next batch prepared while the current one runs (the default on a
/// GPU) gives the same predictions as without, in order, at every batch size, and still names
/// the first file that cannot be read.
#[test]
fn overlapped_predict_paths_equals_the_plain_one() {
    let (_, meta) = golden();
    let learn = Learner::load(dir().join("tfms/multilabel.safetensors"), &Device::Cpu).unwrap();
    assert!(!learn.overlap(), "off by default on the CPU");
    let files: Vec<PathBuf> = meta["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| dir().join("images").join(f.as_str().unwrap()))
        .collect();
    let plain = learn.predict_paths(&files, 32).unwrap();
    let overlapped = learn.clone().with_overlap(true);
    for batch in [1, 2, 4, 5] {
        let got = overlapped.predict_paths(&files, batch).unwrap();
        assert_eq!(got.len(), plain.len());
        for (a, b) in got.iter().zip(&plain) {
            assert_eq!(a.probabilities, b.probabilities, "batch size {batch}");
            assert_eq!(a.labels, b.labels, "batch size {batch}");
        }
    }
    let mut bad = files.clone();
    bad.push(dir().join("images/no_such_file.png"));
    let err = overlapped.predict_paths(&bad, 4).unwrap_err().to_string();
    assert!(err.contains("no_such_file.png"), "{err}");
}
