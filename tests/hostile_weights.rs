//! Hostile weights files: truncated, lying headers, unexpected dtypes, NaN and Inf. Each one is
//! a typed error naming the file and, where there is one, the key.

mod tiny;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use fastai_infer::{Error, FastaiWeights, KeyProblem, Learner, NonFinite};

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn load(p: &Path) -> Result<FastaiWeights, Error> {
    FastaiWeights::load(p, &Device::Cpu)
}

/// Asserts `InvalidWeights` naming `p`, and returns the reason.
fn invalid(p: &Path) -> String {
    match load(p) {
        Err(Error::InvalidWeights { path, reason }) => {
            assert_eq!(path, p);
            reason
        }
        other => panic!("{}: {:?}", p.display(), other.map(|_| "loaded")),
    }
}

#[test]
fn the_tiny_model_loads_and_predicts() {
    // The base every hostile variant below is made from works end to end.
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "tiny.safetensors", &tiny::bytes());
    let learn = Learner::load(&p, &Device::Cpu).unwrap();
    assert_eq!(learn.vocab().labels(), ["cat", "dog"]);
    let img = image::RgbImage::from_fn(13, 9, |x, y| image::Rgb([x as u8 * 9, y as u8 * 20, 77]));
    let pred = learn.predict(&img).unwrap();
    assert!((pred.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
}

#[test]
fn the_learner_decodes_files_with_its_decode_options() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "tiny.safetensors", &tiny::bytes());
    let hostile = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    let gray = hostile.join("gray8.png"); // 32x24
    let learn = Learner::load(&p, &Device::Cpu).unwrap();
    assert_eq!(
        *learn.decode_options(),
        fastai_infer::DecodeOptions::default()
    );
    learn.predict_path(&gray).unwrap();
    assert!(matches!(
        learn
            .predict_path(hostile.join("bomb_png.png"))
            .unwrap_err(),
        Error::ImageTooLarge { .. }
    ));
    let strict =
        learn.with_decode_options(fastai_infer::DecodeOptions::default().with_max_pixels(700));
    for err in [
        strict.predict_path(&gray).unwrap_err(),
        strict.predict_paths(&[&gray], 4).unwrap_err(),
    ] {
        match err {
            Error::ImageTooLarge {
                origin, max_pixels, ..
            } => {
                assert!(origin.ends_with("gray8.png"));
                assert_eq!(max_pixels, 700);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn truncated_safetensors_are_invalid_at_every_cut() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = tiny::bytes();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cuts = (0..bytes.len()).step_by(97).chain([
        1,
        8,
        9,
        8 + header_len - 1,
        8 + header_len,
        8 + header_len + 1,
        bytes.len() - 1,
    ]);
    for cut in cuts {
        let p = write(&dir, "cut.safetensors", &bytes[..cut]);
        let reason = invalid(&p);
        assert!(!reason.is_empty(), "cut {cut}");
    }
}

#[test]
fn headers_that_lie_about_offsets_or_sizes_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let data = [0u8; 64];
    let cases: &[(&str, Vec<u8>)] = &[
        // Offsets past the end of the data.
        (
            "past_end",
            tiny::raw(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,1000]}}"#,
                &data,
            ),
        ),
        // A byte range whose length does not match dtype x shape.
        (
            "size",
            tiny::raw(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#,
                &data[..12],
            ),
        ),
        // Two tensors overlapping.
        (
            "overlap",
            tiny::raw(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
                &data[..24],
            ),
        ),
        // End before start.
        (
            "reversed",
            tiny::raw(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
                &data[..4],
            ),
        ),
        // A shape whose element count overflows.
        (
            "overflow",
            tiny::raw(
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#,
                &data[..16],
            ),
        ),
        // An unknown dtype name.
        (
            "dtype_name",
            tiny::raw(
                r#"{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#,
                &data[..4],
            ),
        ),
        // A header that is not JSON, and one that is not UTF-8.
        ("not_json", tiny::raw("{not json at all}", &data)),
        ("not_utf8", {
            let mut v = tiny::raw("{\"a\":1}", &[]);
            v[9] = 0xFF;
            v
        }),
        // A header length far beyond the file.
        ("header_len", {
            let mut v = u64::MAX.to_le_bytes().to_vec();
            v.extend_from_slice(b"{}");
            v
        }),
    ];
    for (name, bytes) in cases {
        let p = write(&dir, &format!("{name}.safetensors"), bytes);
        let err = load(&p).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidWeights { path, .. } if path == &p),
            "{name}: {err:?}"
        );
        assert!(
            err.to_string().contains(&format!("{name}.safetensors")),
            "{err}"
        );
    }
}

#[test]
fn unexpected_dtypes_are_reported_by_key_with_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let key = "0.model.blocks.0.attn.qkv.weight";
    for (dtype, name) in [
        (DType::F64, "F64"),
        (DType::U8, "U8"),
        (DType::I64, "I64"),
        (DType::U32, "U32"),
    ] {
        let t = tiny::with_tensor(key, tiny::zeros(key, dtype));
        let p = write(
            &dir,
            "dtype.safetensors",
            &tiny::bytes_of(&t, Some(tiny::metadata())),
        );
        match load(&p).unwrap_err() {
            Error::WeightsMismatch { path, problems } => {
                assert_eq!(path, p);
                assert_eq!(
                    problems,
                    vec![KeyProblem::DType {
                        key: key.into(),
                        expected: "F32, F16 or BF16".into(),
                        found: name.into(),
                    }]
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // A BatchNorm counter stored as a float.
    let counter = "1.0.num_batches_tracked";
    let t = tiny::with_tensor(counter, tiny::zeros(counter, DType::F32));
    let p = write(
        &dir,
        "counter.safetensors",
        &tiny::bytes_of(&t, Some(tiny::metadata())),
    );
    match load(&p).unwrap_err() {
        Error::WeightsMismatch { problems, .. } => assert!(
            matches!(&problems[..], [KeyProblem::DType { key, expected, .. }] if key == counter && expected == "an integer"),
            "{problems:?}"
        ),
        other => panic!("{other:?}"),
    }
    // Dtypes candle has no type for (BOOL, I8) are named too.
    let header = {
        let mut h: serde_json::Value = serde_json::from_slice(&{
            let b = tiny::bytes();
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            b[8..8 + n].to_vec()
        })
        .unwrap();
        h[key]["dtype"] = "I8".into();
        // Same byte span, now 1-byte elements: 4x as many, so the sizes still agree.
        let n: u64 = tiny::shape(key).iter().product::<usize>() as u64;
        h[key]["shape"] = serde_json::json!([n * 4]);
        h
    };
    let b = tiny::bytes();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let p = write(
        &dir,
        "i8.safetensors",
        &tiny::raw(&header.to_string(), &b[8 + n..]),
    );
    match load(&p).unwrap_err() {
        Error::WeightsMismatch { problems, .. } => {
            assert!(
                problems.iter().any(|q| matches!(q,
                KeyProblem::DType { key: k, found, .. } if k == key && found == "I8")),
                "{problems:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn nan_and_inf_are_reported_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let a = "0.model.blocks.0.mlp.fc2.weight";
    let b = "0.model.norm.bias";
    let mut t = tiny::tensors();
    for (k, v) in t.iter_mut() {
        if k == a {
            let mut x = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            x[5] = f32::NAN;
            x[7] = f32::INFINITY;
            x[9] = f32::NAN;
            *v = Tensor::from_vec(x, v.dims(), &Device::Cpu).unwrap();
        } else if k == b {
            // An F16 tensor with -inf: non-finite after the conversion to F32 too.
            let mut x = v.to_vec1::<f32>().unwrap();
            x[1] = f32::NEG_INFINITY;
            *v = Tensor::new(x.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap();
        }
    }
    let p = write(
        &dir,
        "nan.safetensors",
        &tiny::bytes_of(&t, Some(tiny::metadata())),
    );
    let err = load(&p).unwrap_err();
    match &err {
        Error::NonFiniteWeights { path, tensors } => {
            assert_eq!(path, &p);
            assert_eq!(
                tensors,
                &vec![
                    NonFinite {
                        key: a.into(),
                        nan: 2,
                        inf: 1,
                        first_index: 5
                    },
                    NonFinite {
                        key: b.into(),
                        nan: 0,
                        inf: 1,
                        first_index: 1
                    },
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(a) && msg.contains(b) && msg.contains("nan.safetensors"),
        "{msg}"
    );
    // The learner refuses them the same way.
    assert!(matches!(
        Learner::load(&p, &Device::Cpu).unwrap_err(),
        Error::NonFiniteWeights { .. }
    ));
}

#[test]
fn empty_and_tiny_files_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("empty", &b""[..]),
        ("short", b"\x02\x00\x00"),
        ("braces", b"\x02\x00\x00\x00\x00\x00\x00\x00{}"),
    ] {
        let p = write(&dir, &format!("{name}.safetensors"), bytes);
        let err = load(&p).unwrap_err();
        // A valid but empty safetensors file is not a fastai ViT; the rest do not parse.
        assert!(
            matches!(&err, Error::InvalidWeights { path, .. } | Error::NotFastaiLearner { path, .. } if path == &p),
            "{name}: {err:?}"
        );
    }
}

/// Writes the fuzzers' seed inputs (`fuzz/seeds/`, committed):
/// `cargo test --test hostile_weights -- --ignored write_fuzz_seeds`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let weights = root.join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    std::fs::write(weights.join("tiny.safetensors"), tiny::bytes()).unwrap();
    std::fs::write(
        weights.join("tiny_no_metadata.safetensors"),
        tiny::bytes_of(&tiny::tensors(), None),
    )
    .unwrap();
    let f16: Vec<_> = tiny::tensors()
        .into_iter()
        .map(|(k, t)| {
            let t = if t.dtype() == DType::F32 {
                t.to_dtype(DType::F16).unwrap()
            } else {
                t
            };
            (k, t)
        })
        .collect();
    std::fs::write(
        weights.join("tiny_f16.safetensors"),
        tiny::bytes_of(&f16, Some(tiny::metadata())),
    )
    .unwrap();
    // Images: three parameter bytes (item size, batch size, val_xtra), then the file.
    let images = root.join("decode_transforms");
    std::fs::create_dir_all(&images).unwrap();
    let hostile = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    let mut names: Vec<_> = std::fs::read_dir(&hostile)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".rgb") && !n.ends_with(".json"))
        .collect();
    names.sort();
    let mut files: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| (n.clone(), std::fs::read(hostile.join(n)).unwrap()))
        .collect();
    // The other formats the crate decodes, re-encoded from one fixture.
    let img = image::load_from_memory(&std::fs::read(hostile.join("la8.png")).unwrap()).unwrap();
    for (ext, format) in [
        ("bmp", image::ImageFormat::Bmp),
        ("gif", image::ImageFormat::Gif),
        ("webp", image::ImageFormat::WebP),
        ("tiff", image::ImageFormat::Tiff),
    ] {
        let mut out = std::io::Cursor::new(Vec::new());
        img.to_rgba8().write_to(&mut out, format).unwrap();
        files.push((format!("la8_as.{ext}"), out.into_inner()));
    }
    for (i, (name, bytes)) in files.iter().enumerate() {
        let mut seed = vec![(i * 37 % 128) as u8, (i * 11 % 64) as u8, 36];
        seed.extend(bytes);
        std::fs::write(images.join(name), seed).unwrap();
    }
}
