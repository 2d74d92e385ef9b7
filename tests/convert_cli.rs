//! The convert command (`examples/convert.rs`) end to end, run in-process (`#[path]`-included,
//! as tests/cli.rs includes predict): a `.pth` that fastai's `learn.save` wrote plus a recipe
//! given as `--recipe FILE` and as flags, to a safetensors file that `Learner::load` serves
//! with that recipe, the vocab from `--labels` and the `.pth`'s tensors unchanged.

mod common;
#[allow(dead_code, unused_imports)]
#[path = "../examples/convert.rs"]
mod convert;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use clap::Parser;
use fastai_infer::{FastaiWeights, Learner, Recipe};

/// Parses `args` as convert's command line and runs it.
fn convert(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<(), String> {
    let argv = std::iter::once(std::ffi::OsString::from("convert"))
        .chain(args.iter().map(|a| a.as_ref().to_os_string()));
    let parsed = convert::Args::try_parse_from(argv).map_err(|e| e.to_string())?;
    convert::run(parsed)
}

fn pth() -> PathBuf {
    common::fixtures().join("pth/plain_bf16_body.pth")
}

/// The shipped learner's recipe (the pets lesson's transforms) without its `arch`, so the
/// attention heads follow the `.pth`'s width (a 64-wide, one-head ViT trained by fastai), as a
/// `--recipe` file; and the `.pth`'s vocab (`pth/labels.txt`) as a `--labels` file.
fn recipe_and_labels(dir: &Path) -> (Recipe, PathBuf, PathBuf) {
    let shipped = FastaiWeights::load(common::weights(), &Device::Cpu).unwrap();
    let mut recipe = shipped.recipe().unwrap();
    recipe.arch = None;
    let recipe_file = dir.join("recipe.json");
    std::fs::write(&recipe_file, recipe.to_json()).unwrap();
    let labels = dir.join("labels.txt");
    std::fs::copy(common::fixtures().join("pth/labels.txt"), &labels).unwrap();
    (recipe, recipe_file, labels)
}

#[test]
fn a_pth_with_a_recipe_file_converts_to_a_file_that_predicts_as_the_pth_does() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, recipe_file, labels) = recipe_and_labels(dir.path());
    let out = dir.path().join("out.safetensors");
    convert(&[
        &"--recipe",
        &recipe_file,
        &"--labels",
        &labels,
        &pth(),
        &out,
    ])
    .unwrap();

    // The file carries the recipe, the labels and the .pth's tensors, exactly.
    let written = FastaiWeights::load(&out, &Device::Cpu).unwrap();
    assert_eq!(written.recipe().unwrap(), recipe);
    let src = FastaiWeights::load_with_recipe(pth(), &recipe, &Device::Cpu).unwrap();
    assert_eq!(written.tensors().len(), src.tensors().len());
    for (k, t) in src.tensors() {
        let got = written
            .tensors()
            .get(k)
            .unwrap_or_else(|| panic!("missing {k}"));
        let (a, b) = if t.dtype() == DType::I64 {
            (got.clone(), t.clone())
        } else {
            (
                got.to_dtype(DType::F32).unwrap(),
                t.to_dtype(DType::F32).unwrap(),
            )
        };
        assert_eq!(a.dims(), b.dims(), "{k}");
        if a.dtype() == DType::F32 {
            assert_eq!(common::max_abs_diff(&a, &b), 0.0, "{k}");
        }
    }
    let vocab = fastai_infer::Vocab::from_labels_file(&labels).unwrap();
    let learner = Learner::load(&out, &Device::Cpu).unwrap();
    assert_eq!(learner.vocab(), &vocab);

    // It predicts as the .pth does in-process with the same recipe and vocab.
    let direct = Learner::from_weights(&src, vocab).unwrap();
    let img = fastai_infer::load_image(common::fixtures().join("images/coffee_odd.png")).unwrap();
    assert_eq!(
        learner.predict(&img).unwrap(),
        direct.predict(&img).unwrap()
    );
}

#[test]
fn recipe_flags_change_the_written_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, recipe_file, labels) = recipe_and_labels(dir.path());
    let out = dir.path().join("out.safetensors");
    convert(&[
        &"--recipe",
        &recipe_file,
        &"--labels",
        &labels,
        &"--resize",
        &"224",
        &"--method",
        &"squish",
        &"--size",
        &"none",
        &"--multi-label",
        &"0.3",
        &pth(),
        &out,
    ])
    .unwrap();
    let written = FastaiWeights::load(&out, &Device::Cpu).unwrap();
    let got = written.recipe().unwrap();
    assert_ne!(got, recipe);
    let json: serde_json::Value = serde_json::from_str(&got.to_json()).unwrap();
    let item = &json["item_tfms"][0];
    assert_eq!(item["name"], "Resize", "{json}");
    assert_eq!(item["method"], "squish", "{json}");
    assert_eq!(
        got.loss_func,
        fastai_infer::LossFunc::BCEWithLogitsLossFlat { thresh: 0.3 }
    );
    // The learner it makes runs with that recipe: a multi-label answer.
    let learner = Learner::load(&out, &Device::Cpu).unwrap();
    let img = fastai_infer::load_image(common::fixtures().join("images/coffee_odd.png")).unwrap();
    assert!(learner.predict(&img).unwrap().is_multi_label());
}

#[test]
fn bad_recipes_and_paths_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let e = convert(&[&"--recipe", &bad, &pth(), &out]).unwrap_err();
    assert!(e.contains("--recipe") && e.contains("bad.json"), "{e}");
    let missing = dir.path().join("missing.json");
    let e = convert(&[&"--recipe", &missing, &pth(), &out]).unwrap_err();
    assert!(e.contains("missing.json"), "{e}");
    let e = convert(&[&pth(), &pth()]).unwrap_err();
    assert!(e.contains("same file"), "{e}");
    assert!(!out.exists());
}
