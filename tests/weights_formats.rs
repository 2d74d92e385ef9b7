//! Weights files beyond the shipped one: the recipe in the metadata, format detection, and
//! the errors for files that are not fastai ViT weights.

mod common;

use std::collections::HashMap;
use std::io::Write;

use candle_core::{Device, Tensor};
use fastai_infer::{Error, FastaiWeights, Learner, Recipe};

/// The shipped weights re-saved with `metadata` (vocab kept unless overridden).
fn with_metadata(
    dir: &tempfile::TempDir,
    name: &str,
    extra: &[(&str, String)],
) -> std::path::PathBuf {
    let w = FastaiWeights::load(common::weights(), &Device::Cpu).unwrap();
    let mut metadata: HashMap<String, String> = w.metadata().clone();
    for (k, v) in extra {
        metadata.insert(k.to_string(), v.clone());
    }
    let tensors = candle_core::safetensors::load(common::weights(), &Device::Cpu).unwrap();
    let views: Vec<(String, Tensor)> = tensors.into_iter().collect();
    let path = dir.path().join(name);
    safetensors::serialize_to_file(
        views.iter().map(|(k, v)| (k.clone(), v)),
        Some(metadata),
        &path,
    )
    .unwrap();
    path
}

#[test]
fn the_recipe_in_the_metadata_drives_the_transforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = Recipe {
        item_tfms: fastai_infer::item_tfms::RandomResizedCrop {
            width: 380,
            val_xtra: 0.25,
            ..fastai_infer::item_tfms::RandomResizedCrop::new(300)
        }
        .into(),
        ..Recipe::default()
    };
    recipe.batch_tfms.normalize.mean = [0.5, 0.5, 0.5];
    recipe.batch_tfms.normalize.std = [0.25, 0.25, 0.25];
    let p = with_metadata(
        &dir,
        "recipe.safetensors",
        &[("fastai_infer.recipe", recipe.to_json())],
    );
    let w = FastaiWeights::load(&p, &Device::Cpu).unwrap();
    assert_eq!(w.recipe().unwrap(), recipe);
    assert_eq!(w.format(), "safetensors");
    let learn = Learner::load(&p, &Device::Cpu).unwrap();
    assert_eq!(learn.item_tfms(), &recipe.item_tfms);
    assert_eq!(learn.batch_tfms(), &recipe.batch_tfms);
    let img = fastai_infer::load_image(common::fixtures().join("images/chelsea.png")).unwrap();
    let item = learn.item_tfms().encodes(&img).unwrap();
    assert_eq!(item.dimensions(), (380, 300));
    let pred = learn.predict(&img).unwrap();
    assert_eq!(pred.probabilities.len(), 37);

    // No recipe: the pets lesson.
    let shipped = FastaiWeights::load(common::weights(), &Device::Cpu).unwrap();
    assert_eq!(shipped.recipe().unwrap(), Recipe::default());
}

#[test]
fn a_bad_recipe_names_the_key_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = Recipe::default()
        .to_json()
        .replace("\"mode\":\"bilinear\"", "\"mode\":\"nearest\"");
    let p = with_metadata(&dir, "bad.safetensors", &[("fastai_infer.recipe", bad)]);
    let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
    match &err {
        Error::InvalidMetadata { key, reason, .. } => {
            assert_eq!(key, "fastai_infer.recipe");
            assert!(reason.contains("batch_tfms[1].mode"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }

    // A batch size that is not whole patches.
    let mut odd = Recipe::default();
    odd.batch_tfms.height = 300;
    odd.batch_tfms.width = 300;
    let p = with_metadata(
        &dir,
        "odd.safetensors",
        &[("fastai_infer.recipe", odd.to_json())],
    );
    let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidMetadata { reason, .. } if reason.contains("16-pixel patches")),
        "{err:?}"
    );

    // A batch size the weights' pos_embed does not fit: the shape mismatch is reported.
    let mut big = Recipe::default();
    big.batch_tfms.height = 320;
    big.batch_tfms.width = 320;
    let p = with_metadata(
        &dir,
        "big.safetensors",
        &[("fastai_infer.recipe", big.to_json())],
    );
    let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("0.model.pos_embed") && err.to_string().contains("[1, 401, 192]"),
        "{err}"
    );
}

#[test]
fn the_format_is_told_by_the_bytes_and_errors_say_what_was_found() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (
            write("legacy.pth", &[0x80, 0x02, 0x8a, 0x0a, 0x6c]),
            "legacy (pre-zip) PyTorch",
        ),
        (
            write("text.pth", b"hello, not weights"),
            "neither a safetensors file",
        ),
        (
            write("empty.safetensors", b""),
            "neither a safetensors file",
        ),
    ];
    for (p, says) in cases {
        let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::InvalidWeights { .. }), "{err:?}");
        assert!(err.to_string().contains(says), "{}: {err}", p.display());
    }

    // A zip archive that torch.save did not write.
    let p = dir.path().join("other.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("readme.txt", opts).unwrap();
    z.write_all(b"hello").unwrap();
    z.finish().unwrap();
    let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("no data.pkl"), "{err}");

    // A truncated zip.
    let shipped = std::fs::read(&p).unwrap();
    let cut = write("cut.pth", &shipped[..shipped.len() / 2]);
    let err = FastaiWeights::load(&cut, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::InvalidWeights { .. }), "{err:?}");
}

#[test]
fn tensors_that_are_not_a_vit_learner_say_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("linear.safetensors");
    let w = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
    safetensors::serialize_to_file([("weight", &w), ("bias", &b)], None, &p).unwrap();
    let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
    match &err {
        Error::NotFastaiLearner { reason, found, .. } => {
            assert!(
                reason.contains("0.model.patch_embed.proj.weight"),
                "{reason}"
            );
            assert_eq!(found, "bias, weight");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err
        .to_string()
        .contains("expected fastai's state_dict keys"));
}

#[test]
fn save_safetensors_round_trips_with_vocab_and_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let w = FastaiWeights::load(common::weights(), &Device::Cpu).unwrap();
    let vocab = w.vocab().unwrap().unwrap();
    let mut recipe = Recipe {
        arch: Some("vit_tiny_patch16_224".into()),
        ..Default::default()
    };
    recipe.item_tfms = fastai_infer::item_tfms::RandomResizedCrop {
        val_xtra: 0.2,
        ..Default::default()
    }
    .into();
    let out = dir.path().join("out.safetensors");
    w.save_safetensors(&out, Some(&vocab), &recipe).unwrap();
    let back = FastaiWeights::load(&out, &Device::Cpu).unwrap();
    assert_eq!(back.recipe().unwrap(), recipe);
    assert_eq!(back.vocab().unwrap().unwrap(), vocab);
    assert_eq!(back.config(), w.config());
    assert_eq!(back.tensors().len(), w.tensors().len());
    for (k, t) in w.tensors() {
        let d = common::max_abs_diff(
            &t.to_dtype(candle_core::DType::F32).unwrap(),
            &back.tensors()[k].to_dtype(candle_core::DType::F32).unwrap(),
        );
        assert_eq!(d, 0.0, "{k}");
    }
    // A vocab of the wrong length is refused before anything is written.
    let short = fastai_infer::Vocab::new(vec!["a".into()]);
    let err = w
        .save_safetensors(dir.path().join("short.safetensors"), Some(&short), &recipe)
        .unwrap_err();
    assert!(matches!(err, Error::VocabMismatch { .. }), "{err:?}");
    assert!(!dir.path().join("short.safetensors").exists());
    // An unwritable destination is an Io error naming it.
    let err = w
        .save_safetensors(dir.path().join("no/such/dir.safetensors"), None, &recipe)
        .unwrap_err();
    assert!(err.to_string().contains("no/such/dir.safetensors"), "{err}");
}
