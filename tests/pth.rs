//! `.pth` files as fastai's `learn.save` writes them (`tests/fixtures/pth`, made by
//! `scripts/make_fixtures_v2.py pth` from the shipped weights): both layouts, f32, f16 and bf16, and
//! the errors for pickles that are not a fastai ViT learner's state_dict.

mod common;

use candle_core::{DType, Device};
use fastai_infer::{Error, FastaiWeights, Learner};

fn pth(name: &str) -> std::path::PathBuf {
    common::fixtures().join("pth").join(name)
}

/// Checks a learner file's tensors against the shipped (f32) weights cast to the dtype the
/// script cast them to before `learn.save` (`dtype(key)`); integer tensors stay as they are.
/// The loader gives every float as f32, so equality proves each value came through exactly.
fn assert_same_tensors(w: &FastaiWeights, dtype: impl Fn(&str) -> DType) {
    let shipped = FastaiWeights::load(common::weights(), &Device::Cpu).unwrap();
    assert_eq!(w.tensors().len(), shipped.tensors().len());
    assert_eq!(w.config(), shipped.config());
    for (k, t) in shipped.tensors() {
        let got = w.tensors().get(k).unwrap_or_else(|| panic!("missing {k}"));
        assert_eq!(got.dims(), t.dims(), "{k}");
        let want = if t.dtype() == DType::I64 {
            t.clone()
        } else {
            t.to_dtype(dtype(k)).unwrap()
        };
        let d = common::max_abs_diff(&got.to_dtype(DType::F32).unwrap(), &want);
        assert_eq!(d, 0.0, "{k}");
    }
}

#[test]
fn learn_save_without_the_optimizer_loads_in_bf16_and_f32() {
    // The body in bf16, fastai's head in f32.
    let w = FastaiWeights::load(pth("tiny_plain_bf16_head_f32.pth"), &Device::Cpu).unwrap();
    assert_eq!(w.format(), ".pth (state_dict)");
    assert_same_tensors(&w, |k| {
        if k.starts_with("0.") {
            DType::BF16
        } else {
            DType::F32
        }
    });
}

#[test]
fn learn_save_with_the_optimizer_loads_in_f16() {
    // fastai's default `learn.save`: {'model': state_dict, 'opt': ...}, whose optimizer state
    // names fastcore's `L` (a class outside the tensor subset, but never read).
    let w = FastaiWeights::load(pth("tiny_model_opt_f16.pth"), &Device::Cpu).unwrap();
    assert_eq!(w.format(), ".pth ({'model': state_dict, 'opt': ...})");
    assert_same_tensors(&w, |_| DType::F16);
}

#[test]
fn a_pth_learner_predicts_what_the_safetensors_learner_predicts() {
    let shipped = Learner::load(common::weights(), &Device::Cpu).unwrap();
    let vocab = shipped.vocab().clone();
    let img = fastai_infer::load_image(common::fixtures().join("images/chelsea.png")).unwrap();
    let want = shipped.predict(&img).unwrap();
    for name in ["tiny_plain_bf16_head_f32.pth", "tiny_model_opt_f16.pth"] {
        // A .pth carries no vocab: it comes with the labels.
        let w = FastaiWeights::load(pth(name), &Device::Cpu).unwrap();
        assert!(w.vocab().unwrap().is_none(), "{name}");
        let learn = Learner::from_weights(&w, vocab.clone()).unwrap();
        let got = learn.predict(&img).unwrap();
        assert_eq!(got.index, want.index, "{name}");
        assert_eq!(got.label, want.label, "{name}");
        assert_eq!(got.probabilities.len(), 37);
        // bf16 weights keep 8 bits of mantissa: the probabilities move, the top-1 does not.
        let d = got
            .probabilities
            .iter()
            .zip(&want.probabilities)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 0.05, "{name}: {d}");
    }
    // Without labels there is nothing to name the classes with.
    let err = Learner::load(pth("tiny_plain_bf16_head_f32.pth"), &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::MissingVocab { .. }), "{err:?}");
}

#[test]
fn pickles_that_are_not_a_vit_learner_say_what_they_hold() {
    let err = FastaiWeights::load(pth("not_a_learner.pth"), &Device::Cpu).unwrap_err();
    match &err {
        Error::NotFastaiLearner { found, path, .. } => {
            assert_eq!(found, "bias, weight");
            assert!(path.ends_with("not_a_learner.pth"));
        }
        other => panic!("unexpected {other:?}"),
    }
    // The head alone: the body is missing.
    let err = FastaiWeights::load(pth("head_plain_f32.pth"), &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::NotFastaiLearner { .. }), "{err:?}");
    assert!(err.to_string().contains("0.model."), "{err}");
    assert!(err.to_string().contains("1.0.weight"), "{err}");
}

#[test]
fn a_pickle_with_other_objects_is_refused_by_class_name() {
    let err = FastaiWeights::load(pth("with_object.pth"), &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::InvalidWeights { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("make_fixtures_v2.FixtureMarker"), "{msg}");
    assert!(msg.contains("outside the plain tensor subset"), "{msg}");
    assert!(msg.contains("with_object.pth"), "{msg}");
}

#[test]
fn a_truncated_pth_is_invalid_weights() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(pth("tiny_plain_bf16_head_f32.pth")).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 100, 30] {
        let p = dir.path().join(format!("cut{cut}.pth"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
        assert!(
            matches!(err, Error::InvalidWeights { .. }),
            "{cut}: {err:?}"
        );
        assert!(err.to_string().contains(&format!("cut{cut}.pth")), "{err}");
    }
}
