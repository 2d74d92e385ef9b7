//! Every user-input error is typed and says what and where.

mod common;

use std::collections::HashMap;
use std::io::Write;

use candle_core::{DType, Device, Tensor};
use fastai_infer::{load_image, load_image_from_memory, Error, FastaiWeights, KeyProblem, Learner};

/// Writes the shipped weights with `edit` applied to the tensor map, returning the new file.
fn edited_weights(
    dir: &tempfile::TempDir,
    name: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
    metadata: Option<HashMap<String, String>>,
) -> std::path::PathBuf {
    let mut t = candle_core::safetensors::load(common::weights(), &Device::Cpu).unwrap();
    edit(&mut t);
    let path = dir.path().join(name);
    let views: Vec<(String, Tensor)> = t.into_iter().collect();
    safetensors::serialize_to_file(views.iter().map(|(k, v)| (k.clone(), v)), metadata, &path)
        .unwrap();
    path
}

fn pets_vocab_metadata() -> HashMap<String, String> {
    let w = FastaiWeights::load(common::weights(), &Device::Cpu).unwrap();
    w.metadata().clone()
}

#[test]
fn missing_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = edited_weights(
        &dir,
        "missing.safetensors",
        |t| {
            t.remove("0.model.blocks.3.attn.qkv.weight");
        },
        None,
    );
    let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
    match &err {
        Error::WeightsMismatch { path, problems } => {
            assert_eq!(path, &p);
            assert_eq!(
                problems,
                &vec![KeyProblem::Missing {
                    key: "0.model.blocks.3.attn.qkv.weight".into(),
                    expected: vec![576, 192]
                }]
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("0.model.blocks.3.attn.qkv.weight") && msg.contains("[576, 192]"));
}

#[test]
fn shape_mismatch_and_unexpected_keys_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = edited_weights(
        &dir,
        "shape.safetensors",
        |t| {
            t.insert(
                "0.model.pos_embed".into(),
                Tensor::zeros((1, 50, 192), DType::F32, &Device::Cpu).unwrap(),
            );
            t.insert(
                "0.model.head.weight".into(),
                Tensor::zeros((10, 192), DType::F32, &Device::Cpu).unwrap(),
            );
        },
        None,
    );
    let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
    let Error::WeightsMismatch { problems, .. } = &err else {
        panic!("unexpected error {err:?}")
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.contains(&KeyProblem::ShapeMismatch {
        key: "0.model.pos_embed".into(),
        expected: vec![1, 197, 192],
        found: vec![1, 50, 192],
    }));
    assert!(problems.contains(&KeyProblem::Unexpected {
        key: "0.model.head.weight".into(),
        found: vec![10, 192],
    }));
}

#[test]
fn wrong_dtype_is_reported_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = edited_weights(
        &dir,
        "dtype.safetensors",
        |t| {
            let w = t["1.2.weight"].to_dtype(DType::U8).unwrap();
            t.insert("1.2.weight".into(), w);
        },
        None,
    );
    let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
    let Error::WeightsMismatch { problems, .. } = &err else {
        panic!("unexpected error {err:?}")
    };
    assert!(matches!(&problems[..], [KeyProblem::DType { key, .. }] if key == "1.2.weight"));
}

#[test]
fn class_count_comes_from_the_head_and_vocab_length_must_match() {
    let dir = tempfile::tempdir().unwrap();
    // A 5-class head with the 37-label vocab in the metadata.
    let p = edited_weights(
        &dir,
        "five.safetensors",
        |t| {
            let w = t["1.6.weight"]
                .narrow(0, 0, 5)
                .unwrap()
                .contiguous()
                .unwrap();
            t.insert("1.6.weight".into(), w);
        },
        Some(pets_vocab_metadata()),
    );
    let w = FastaiWeights::load(&p, &Device::Cpu).unwrap();
    assert_eq!(w.config().num_classes(), 5);
    let err = Learner::load(&p, &Device::Cpu).unwrap_err();
    assert!(
        matches!(
            err,
            Error::VocabMismatch {
                expected: 5,
                found: 37,
                ..
            }
        ),
        "{err:?}"
    );

    // A labels file of the wrong length.
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "a\nb\nc\n").unwrap();
    let err = Learner::load_with_labels(common::weights(), &labels, &Device::Cpu).unwrap_err();
    match err {
        Error::VocabMismatch {
            origin,
            expected,
            found,
        } => {
            assert_eq!((expected, found), (37, 3));
            assert!(origin.contains("labels.txt"));
        }
        other => panic!("unexpected error {other:?}"),
    }
    // And one of the right length works and takes precedence.
    let five: String = (0..5).map(|i| format!("class{i}\n")).collect();
    std::fs::write(&labels, five).unwrap();
    let learn = Learner::load_with_labels(&p, &labels, &Device::Cpu).unwrap();
    assert_eq!(learn.vocab().get(4), Some("class4"));
}

#[test]
fn weights_without_vocab_need_a_labels_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = edited_weights(&dir, "novocab.safetensors", |_| {}, None);
    let err = Learner::load(&p, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::MissingVocab { .. }), "{err:?}");
}

#[test]
fn unreadable_weights_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    assert!(matches!(
        FastaiWeights::load(&missing, &Device::Cpu).unwrap_err(),
        Error::Io {
            what: "weights",
            ..
        }
    ));
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file").unwrap();
    let err = FastaiWeights::load(&garbage, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::InvalidWeights { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.safetensors"));
    assert!(matches!(
        FastaiWeights::load(dir.path(), &Device::Cpu).unwrap_err(),
        Error::Io { .. }
    ));
}

#[test]
fn unreadable_images_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    let err = load_image(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { what: "image", .. }), "{err:?}");
    assert!(err.to_string().contains("missing.png"));

    let bad = dir.path().join("bad.jpg");
    std::fs::File::create(&bad)
        .unwrap()
        .write_all(b"definitely not a jpeg")
        .unwrap();
    let err = load_image(&bad).unwrap_err();
    assert!(matches!(err, Error::UnrecognizedImage { .. }), "{err:?}");
    assert!(err.to_string().contains("bad.jpg"));

    // A truncated PNG.
    let png = std::fs::read(common::fixtures().join("images/chelsea.png")).unwrap();
    let err = load_image_from_memory(&png[..png.len() / 2]).unwrap_err();
    assert!(matches!(err, Error::ImageDecode { .. }), "{err:?}");

    // A directory.
    assert!(matches!(
        load_image(dir.path()).unwrap_err(),
        Error::Io { .. }
    ));
}

#[test]
fn sixteen_bit_images_convert_like_pil() {
    // PIL opens a 16-bit RGB PNG as 8-bit RGB, keeping each sample's high byte
    // (tests/hostile_images.rs checks this against Pillow's own output).
    let img = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(4, 4, |x, y| {
        image::Rgb([(x * 4000 + y) as u16, 0x1234, 0xFFFF])
    }));
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    let rgb = load_image_from_memory(&bytes).unwrap();
    assert_eq!(
        rgb.get_pixel(3, 2).0,
        [((3 * 4000 + 2) >> 8) as u8, 0x12, 0xFF]
    );
    // Floating-point images are still refused: a unit test in src/decode.rs checks it
    // (`to_rgb` is internal).
}
