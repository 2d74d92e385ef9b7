//! `.pth` files from REAL fastai training runs (`tests/fixtures/pth`, made by
//! `scripts/make_fixtures_pth.py`): fastai's default `learn.save` after `fit_one_cycle` (numpy
//! scalars in the optimizer's hyper-parameters, Adam's state tensors), after `fine_tune`
//! (several phases), after `freeze()`, and with `with_opt=False` and a bf16 body; each one
//! loaded by the library, by `predict` and by `convert`, against fastai's own predictions
//! (`predictions.json`). Then the errors for pickles that are not a fastai learner's.
// predict and convert each include the examples' shared `common` module.
#![allow(clippy::duplicate_mod)]

mod common;

#[path = "../examples/predict/cli.rs"]
mod cli;

#[allow(dead_code)] // its `main` is not called here
#[path = "../examples/convert.rs"]
mod convert;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use clap::Parser;
use fastai_infer::{Error, FastaiWeights, Learner};

fn pth(name: &str) -> PathBuf {
    common::fixtures().join("pth").join(name)
}

fn labels() -> PathBuf {
    pth("labels.txt")
}

/// The learner files and the layout each one has.
const LEARNERS: [(&str, &str); 4] = [
    ("model.pth", ".pth ({'model': state_dict, 'opt': ...})"),
    ("fine_tune.pth", ".pth ({'model': state_dict, 'opt': ...})"),
    ("frozen.pth", ".pth ({'model': state_dict, 'opt': ...})"),
    ("plain_bf16_body.pth", ".pth (state_dict)"),
];

/// fastai's `learn.predict` for one file and image: (label, index, probabilities).
fn fastai_prediction(file: &str, image: &str) -> (String, usize, Vec<f32>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pth("predictions.json")).unwrap()).unwrap();
    let row = v["files"][file]
        .as_array()
        .unwrap_or_else(|| panic!("no predictions for {file}"))
        .iter()
        .find(|r| r["image"] == image)
        .unwrap_or_else(|| panic!("no prediction for {file} {image}"));
    let probs = row["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap() as f32)
        .collect();
    (
        row["label"].as_str().unwrap().to_string(),
        row["index"].as_u64().unwrap() as usize,
        probs,
    )
}

fn images() -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pth("predictions.json")).unwrap()).unwrap();
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The largest probability difference the crate may show against fastai's `learn.predict`
/// (measured on this machine: 3.6e-7, see tests/fixtures/pth/README.md).
const TOLERANCE: f32 = 1e-6;

/// Checks one prediction against fastai's; returns the largest probability difference.
fn check(file: &str, image: &str, label: &str, index: usize, probs: &[f32]) -> f32 {
    let (want_label, want_index, want) = fastai_prediction(file, image);
    assert_eq!(
        (label, index),
        (want_label.as_str(), want_index),
        "{file} {image}"
    );
    assert_eq!(probs.len(), want.len(), "{file} {image}");
    let d = probs
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d <= TOLERANCE, "{file} {image}: {d}");
    d
}

#[test]
fn real_learn_save_files_load_in_both_layouts() {
    for (name, layout) in LEARNERS {
        let w = FastaiWeights::load(pth(name), &Device::Cpu).unwrap();
        assert_eq!(w.format(), layout, "{name}");
        // The vision_learner's ViT: 64 wide, 1 block, one 64-wide head; fastai's head with
        // lin_ftrs=[32]; 6 classes. 28 float tensors and 2 BatchNorm counters.
        let cfg = w.config();
        assert_eq!(cfg.num_classes(), 6, "{name}");
        assert_eq!(
            cfg.to_string(),
            FastaiWeights::load(pth("model.pth"), &Device::Cpu)
                .unwrap()
                .config()
                .to_string()
        );
        assert_eq!(w.tensors().len(), 30, "{name}");
        assert!(
            w.vocab().unwrap().is_none(),
            "{name}: a .pth carries no vocab"
        );
    }
}

#[test]
fn the_bf16_body_file_holds_the_f32_files_values_rounded() {
    // plain_bf16_body.pth is model.pth's weights (learn.save(with_opt=False)) with the body
    // cast to bf16 by torch and fastai's head left in f32.
    let f32s = FastaiWeights::load(pth("model.pth"), &Device::Cpu).unwrap();
    let bf16 = FastaiWeights::load(pth("plain_bf16_body.pth"), &Device::Cpu).unwrap();
    for (k, t) in f32s.tensors() {
        let got = &bf16.tensors()[k];
        let want = if k.starts_with("0.") {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        } else {
            t.clone()
        };
        let d = if t.dtype() == DType::I64 {
            let (a, b) = (
                got.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
            );
            assert_eq!(a, b, "{k}");
            0.0
        } else {
            common::max_abs_diff(got, &want)
        };
        assert_eq!(d, 0.0, "{k}");
    }
    // The other runs trained other weights.
    let tuned = FastaiWeights::load(pth("fine_tune.pth"), &Device::Cpu).unwrap();
    let k = "1.2.weight";
    assert!(common::max_abs_diff(&tuned.tensors()[k], &f32s.tensors()[k]) > 0.0);
}

#[test]
fn load_with_labels_predicts_what_fastai_predicted() {
    let mut worst = 0f32;
    for (name, _) in LEARNERS {
        let learn = Learner::load_with_labels(pth(name), labels(), &Device::Cpu).unwrap();
        for image in images() {
            let p = learn
                .predict_path(common::fixtures().join("images").join(&image))
                .unwrap();
            worst = worst.max(check(name, &image, &p.label, p.index, &p.probabilities));
        }
    }
    eprintln!("largest probability difference against fastai: {worst:e}");
    // Without labels there is nothing to name the classes with.
    let err = Learner::load(pth("model.pth"), &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::MissingVocab { .. }), "{err:?}");
}

#[test]
fn the_predict_command_gives_fastais_answers_for_a_learn_save_file() {
    let images: Vec<PathBuf> = images()
        .iter()
        .map(|i| common::fixtures().join("images").join(i))
        .collect();
    for name in ["model.pth", "plain_bf16_body.pth"] {
        let mut argv: Vec<OsString> = ["--json", "--weights"].iter().map(OsString::from).collect();
        argv.push(pth(name).into());
        argv.push("--labels".into());
        argv.push(labels().into());
        argv.extend(images.iter().map(OsString::from));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = cli::run(argv, &mut out, &mut err, false);
        let (out, err) = (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        );
        assert_eq!(code, cli::EXIT_OK, "{name}: {err} {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), images.len(), "{out}");
        for (line, path) in lines.iter().zip(&images) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let probs: Vec<f32> = v["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_f64().unwrap() as f32)
                .collect();
            let image = path.file_name().unwrap().to_str().unwrap();
            check(
                name,
                image,
                v["label"].as_str().unwrap(),
                v["index"].as_u64().unwrap() as usize,
                &probs,
            );
        }
    }
}

/// Runs the convert example's logic on `args` (after the program name).
fn run_convert(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<(), String> {
    let argv = std::iter::once(OsString::from("convert"))
        .chain(args.iter().map(|a| a.as_ref().to_os_string()));
    let parsed = convert::Args::try_parse_from(argv).map_err(|e| e.to_string())?;
    convert::run(parsed)
}

#[test]
fn convert_writes_a_safetensors_file_that_predicts_what_fastai_predicted() {
    let dir = tempfile::tempdir().unwrap();
    for (name, _) in LEARNERS {
        let out = dir.path().join(format!("{name}.safetensors"));
        run_convert(&[&pth(name), &out, &"--labels", &labels()]).unwrap();
        // Self-describing: the vocab is inside, no labels needed.
        let learn = Learner::load(&out, &Device::Cpu).unwrap();
        assert_eq!(
            learn.vocab().labels(),
            [
                "astronaut",
                "camera",
                "chelsea",
                "coffee",
                "horse",
                "rocket"
            ]
        );
        for image in images() {
            let p = learn
                .predict_path(common::fixtures().join("images").join(&image))
                .unwrap();
            check(name, &image, &p.label, p.index, &p.probabilities);
        }
    }
    // A file it cannot read is refused, naming it.
    let out = dir.path().join("x.safetensors");
    let err = run_convert(&[&pth("with_object.pth"), &out]).unwrap_err();
    assert!(err.contains("with_object.pth"), "{err}");
    assert!(!out.exists());
}

#[test]
fn pickles_that_are_not_a_learner_say_what_they_hold() {
    let err = FastaiWeights::load(pth("not_a_learner.pth"), &Device::Cpu).unwrap_err();
    match &err {
        Error::NotFastaiLearner { found, path, .. } => {
            assert_eq!(found, "bias, weight");
            assert!(path.ends_with("not_a_learner.pth"));
        }
        other => panic!("unexpected {other:?}"),
    }
    // The head alone: the body is missing.
    let err = FastaiWeights::load(pth("head_only.pth"), &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::NotFastaiLearner { .. }), "{err:?}");
    assert!(err.to_string().contains("1.0.weight"), "{err}");
}

#[test]
fn a_pickle_with_other_objects_is_refused_by_class_name() {
    let err = FastaiWeights::load(pth("with_object.pth"), &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::InvalidWeights { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("make_fixtures_pth.FixtureMarker"), "{msg}");
    assert!(msg.contains("outside the plain tensor subset"), "{msg}");
    assert!(msg.contains("with_object.pth"), "{msg}");
}

#[test]
fn a_truncated_pth_is_invalid_weights_at_every_cut() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(pth("frozen.pth")).unwrap();
    let n = bytes.len();
    let cuts = (0..n)
        .step_by(n / 60)
        .chain([1, 4, 30, n - 100, n - 22, n - 21, n - 1]);
    for cut in cuts {
        let p = dir.path().join(format!("cut{cut}.pth"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidWeights { path, .. } if path == Path::new(&p)),
            "{cut}: {err:?}"
        );
        assert!(err.to_string().contains(&format!("cut{cut}.pth")), "{err}");
    }
}
