//! Recipe version 2 in weights files: written and read back, version 1 files still loading,
//! convert's route (a recipe given for weights that carry none), and the typed errors for a
//! recipe fastai-infer cannot reproduce.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use fastai_infer::batch_tfms::Affine;
use fastai_infer::item_tfms::{ItemTfm, PadMode, RandomResizedCrop, ResizeMethod};
use fastai_infer::{Error, FastaiWeights, Learner, LossFunc, Recipe};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn multilabel() -> PathBuf {
    fixtures().join("tfms/multilabel.safetensors")
}

/// The multi-label fixture's tensors re-saved with `metadata` in place of its own.
fn resave(dir: &Path, name: &str, metadata: HashMap<String, String>) -> PathBuf {
    let tensors = candle_core::safetensors::load(multilabel(), &Device::Cpu).unwrap();
    let views: Vec<(String, Tensor)> = tensors.into_iter().collect();
    let path = dir.join(name);
    safetensors::serialize_to_file(
        views.iter().map(|(k, v)| (k.clone(), v)),
        Some(metadata),
        &path,
    )
    .unwrap();
    path
}

fn vocab_only() -> HashMap<String, String> {
    let w = FastaiWeights::load(multilabel(), &Device::Cpu).unwrap();
    let mut m = w.metadata().clone();
    m.remove("fastai_infer.recipe");
    m
}

#[test]
fn the_exporters_version_2_recipe_reads_as_fastai_built_it() {
    let w = FastaiWeights::load(multilabel(), &Device::Cpu).unwrap();
    let raw: serde_json::Value =
        serde_json::from_str(&w.metadata()["fastai_infer.recipe"]).unwrap();
    assert_eq!(raw["format_version"], 2);
    let r = w.recipe().unwrap();
    match r.item_tfms.steps() {
        [ItemTfm::Resize(t)] => {
            assert_eq!((t.height, t.width), (48, 64));
            assert_eq!(t.method, ResizeMethod::Pad);
            assert_eq!(t.pad_mode, PadMode::Zeros);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.batch_tfms.affine, Affine::ItemSize);
    assert_eq!(
        r.loss_func,
        LossFunc::BCEWithLogitsLossFlat { thresh: 0.35 }
    );
    assert_eq!(r.input_size().unwrap(), (48, 64));
    // Written back by this crate (version 2) it reads the same.
    assert_eq!(Recipe::from_json(&r.to_json()).unwrap(), r);
}

#[test]
fn version_1_files_keep_loading() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = r#"{"format_version": 1, "arch": "resnet_basic_1111",
        "item_tfms": {"name": "RandomResizedCrop", "height": 60, "width": 70,
                      "val_xtra": 0.14, "resample": "bilinear"},
        "batch_tfms": {"height": 48, "width": 64, "mode": "bilinear",
                       "pad_mode": "reflection", "align_corners": true},
        "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}"#;
    let mut meta = vocab_only();
    meta.insert("fastai_infer.recipe".into(), v1.into());
    let p = resave(dir.path(), "v1.safetensors", meta);
    let learn = Learner::load(&p, &Device::Cpu).unwrap();
    let rrc = RandomResizedCrop {
        width: 70,
        ..RandomResizedCrop::new(60)
    };
    assert_eq!(learn.item_tfms().steps(), [ItemTfm::from(rrc)]);
    assert_eq!(learn.batch_tfms().affine, Affine::ToSize);
    assert_eq!(*learn.loss_func(), LossFunc::CrossEntropyLossFlat);
    let pred = learn
        .predict_path(fixtures().join("images/chelsea.png"))
        .unwrap();
    assert!(!pred.is_multi_label());
    assert_eq!(pred.probabilities.len(), 8);
}

#[test]
fn a_recipe_given_at_load_replaces_a_missing_one() {
    // convert's route for a .pth: the weights carry no recipe, one is given (--recipe FILE).
    let dir = tempfile::tempdir().unwrap();
    let bare = resave(dir.path(), "bare.safetensors", vocab_only());
    let recipe = FastaiWeights::load(multilabel(), &Device::Cpu)
        .unwrap()
        .recipe()
        .unwrap();
    let w = FastaiWeights::load_with_recipe(&bare, &recipe, &Device::Cpu).unwrap();
    assert_eq!(w.recipe().unwrap(), recipe);
    let out = dir.path().join("out.safetensors");
    w.save_safetensors(&out, w.vocab().unwrap().as_ref(), &recipe)
        .unwrap();
    let a = Learner::load(&out, &Device::Cpu).unwrap();
    let b = Learner::load(multilabel(), &Device::Cpu).unwrap();
    let img = fastai_infer::load_image(fixtures().join("images/coffee_odd.png")).unwrap();
    assert_eq!(a.predict(&img).unwrap(), b.predict(&img).unwrap());
}

#[test]
fn unsupported_recipes_are_typed_errors_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let good: serde_json::Value = serde_json::from_str(
        &FastaiWeights::load(multilabel(), &Device::Cpu)
            .unwrap()
            .metadata()["fastai_infer.recipe"],
    )
    .unwrap();
    let cases: [(&str, serde_json::Value, &str); 4] = [
        (
            "/item_tfms/0/name",
            "RatioResize".into(),
            "item_tfms[0].name is \"RatioResize\"",
        ),
        (
            "/item_tfms/0/method",
            "fit".into(),
            "item_tfms[0].method is \"fit\"",
        ),
        (
            "/loss_func/name",
            "FocalLossFlat".into(),
            "loss_func.name is \"FocalLossFlat\"",
        ),
        (
            "/batch_tfms/1/name",
            "RandomResizedCropGPU".into(),
            "batch_tfms[1].name is \"RandomResizedCropGPU\"",
        ),
    ];
    for (i, (ptr, bad, says)) in cases.into_iter().enumerate() {
        let mut v = good.clone();
        *v.pointer_mut(ptr).unwrap() = bad;
        let mut meta = vocab_only();
        meta.insert("fastai_infer.recipe".into(), v.to_string());
        let p = resave(dir.path(), &format!("bad{i}.safetensors"), meta);
        match Learner::load(&p, &Device::Cpu) {
            Err(Error::InvalidMetadata { key, reason, path }) => {
                assert_eq!(key, "fastai_infer.recipe");
                assert_eq!(path, p);
                assert!(reason.contains(says), "{ptr}: {reason}");
            }
            other => panic!("{ptr}: expected InvalidMetadata, got {other:?}"),
        }
    }
}
