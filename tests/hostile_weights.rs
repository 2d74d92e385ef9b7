//! Hostile weights files: truncated, lying headers, unexpected dtypes, NaN and Inf. Each one is
//! a typed error naming the file and, where there is one, the key.

mod common;
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
    // .pth files: the tiny model in torch's layout (f32; bf16 and transposed), the small
    // fixture files made by fastai, and a few crafted ones.
    std::fs::write(weights.join("tiny.pth"), tiny_pth(DType::F32, false)).unwrap();
    std::fs::write(
        weights.join("tiny_bf16_transposed.pth"),
        tiny_pth(DType::BF16, true),
    )
    .unwrap();
    let pth = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth");
    for name in ["not_a_learner.pth", "with_object.pth", "head_only.pth"] {
        std::fs::copy(pth.join(name), weights.join(name)).unwrap();
    }
    for (name, bytes, _) in hostile_pth() {
        if bytes.len() < 4096 {
            std::fs::write(weights.join(name), bytes).unwrap();
        }
    }
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

// ---------------------------------------------------------------------------------------------
// Hostile `.pth` files (torch's zip format), made here at run time.
// ---------------------------------------------------------------------------------------------

/// A stored (uncompressed) zip archive of `entries`, laid out the way `torch.save` writes one.
fn zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32fast::hash(data);
        let header = |sig: &[u8], central_entry: bool| {
            let mut h = sig.to_vec();
            if central_entry {
                h.extend(20u16.to_le_bytes()); // made by
            }
            h.extend(20u16.to_le_bytes()); // needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(0u16.to_le_bytes()); // stored
            h.extend(0u32.to_le_bytes()); // time, date
            h.extend(crc.to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central_entry {
                h.extend(0u16.to_le_bytes()); // comment
                h.extend(0u32.to_le_bytes()); // disk, internal attributes
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(header(b"PK\x03\x04", false));
        out.extend(data);
        central.extend(header(b"PK\x01\x02", true));
    }
    let (dir_offset, n) = (out.len() as u32, entries.len());
    out.extend(&central);
    if n > 0xFFFF {
        // The zip64 record and its locator, for the entry count.
        let at = out.len() as u64;
        out.extend(b"PK\x06\x06");
        out.extend(44u64.to_le_bytes());
        out.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend((n as u64).to_le_bytes());
        out.extend((n as u64).to_le_bytes());
        out.extend((central.len() as u64).to_le_bytes());
        out.extend(u64::from(dir_offset).to_le_bytes());
        out.extend(b"PK\x06\x07\0\0\0\0");
        out.extend(at.to_le_bytes());
        out.extend(1u32.to_le_bytes());
    }
    let n = n.min(0xFFFF) as u16;
    out.extend(b"PK\x05\x06\0\0\0\0");
    out.extend(n.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(dir_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// A torch archive: `archive/data.pkl` and `archive/data/<key>` storages.
fn torch_zip(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![("archive/data.pkl".to_string(), pickle.to_vec())];
    entries.extend(
        storages
            .iter()
            .map(|(k, d)| (format!("archive/data/{k}"), d.clone())),
    );
    entries.push(("archive/byteorder".into(), b"little".to_vec()));
    zip(&entries)
}

/// Writes pickle opcodes.
#[derive(Default)]
struct Pk(Vec<u8>);

impl Pk {
    fn new() -> Pk {
        Pk(vec![0x80, 2])
    }
    fn op(&mut self, bytes: &[u8]) -> &mut Pk {
        self.0.extend(bytes);
        self
    }
    fn str(&mut self, s: &str) -> &mut Pk {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Pk {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn int(&mut self, v: u64) -> &mut Pk {
        self.0.extend([0x8a, 8]);
        self.0.extend(v.to_le_bytes());
        self
    }
    fn ints(&mut self, v: &[u64]) -> &mut Pk {
        self.op(b"(");
        for &x in v {
            self.int(x);
        }
        self.op(b"t")
    }
    /// `_rebuild_tensor_v2(storage(key, numel), offset, shape, stride, False, OrderedDict())`
    /// over a `torch.FloatStorage`.
    fn tensor(
        &mut self,
        key: &str,
        numel: u64,
        offset: u64,
        shape: &[u64],
        stride: &[u64],
    ) -> &mut Pk {
        self.tensor_of("FloatStorage", key, numel, offset, shape, stride)
    }
    /// The same over a `torch.<class>`.
    fn tensor_of(
        &mut self,
        class: &str,
        key: &str,
        numel: u64,
        offset: u64,
        shape: &[u64],
        stride: &[u64],
    ) -> &mut Pk {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
        self.str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu");
        self.int(numel)
            .op(b"tQ")
            .int(offset)
            .ints(shape)
            .ints(stride);
        self.op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")R");
        self.op(b"tR")
    }
    fn ordered_dict(&mut self) -> &mut Pk {
        self.global("collections", "OrderedDict").op(b")R")
    }
    fn stop(&mut self) -> Vec<u8> {
        self.0.push(b'.');
        std::mem::take(&mut self.0)
    }
}

/// `{'w': one F32 tensor}` over the storage `'0'` of `data`.
fn one_tensor(numel: u64, offset: u64, shape: &[u64], stride: &[u64], data: Vec<u8>) -> Vec<u8> {
    let mut p = Pk::new();
    p.ordered_dict().op(b"(").str("w");
    p.tensor("0", numel, offset, shape, stride);
    torch_zip(&p.op(b"u").stop(), &[("0", data)])
}

/// Patches the central-directory sizes of entry `name` in a [`zip`] archive.
fn patch_size(zip: &mut [u8], name: &str, size: u32) {
    let at = (0..zip.len() - 4)
        .find(|&i| {
            zip[i..].starts_with(b"PK\x01\x02") && zip[i + 46..].starts_with(name.as_bytes())
        })
        .unwrap();
    zip[at + 20..at + 24].copy_from_slice(&size.to_le_bytes());
    zip[at + 24..at + 28].copy_from_slice(&size.to_le_bytes());
}

/// The crafted files: (file name, bytes, what the error must say).
fn hostile_pth() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut v = Vec::new();
    // Issue 15's three files. The memo-clone bomb: a 2^40-leaf tree in 40 shared nodes.
    let mut bomb = Pk::new();
    bomb.op(b")q\x00");
    for _ in 0..40 {
        bomb.op(b"h\x00h\x00\x86q\x00");
    }
    v.push((
        "memo_bomb.pth",
        torch_zip(&bomb.stop(), &[]),
        "the pickle holds a tuple, expected a state_dict",
    ));
    let mut huge = Pk::new();
    huge.op(b"X").op(&0xFFFF_FFF0u32.to_le_bytes()).op(b"abc");
    v.push((
        "huge_string.pth",
        torch_zip(&huge.0, &[]),
        "declares 4294967280 bytes, 3 left",
    ));
    let mut deep = Pk::new();
    deep.op(b")").op(&vec![0x85; 2_000_000]);
    v.push((
        "deep_nesting.pth",
        torch_zip(&deep.stop(), &[]),
        "nested more than 100 deep",
    ));
    // Storages shorter than their tensors, or than they say.
    let f4 = vec![0u8; 16];
    v.push((
        "shape_past_storage.pth",
        one_tensor(4, 0, &[1000], &[1], f4.clone()),
        "does not fit its storage of 4 elements",
    ));
    v.push((
        "offset_past_storage.pth",
        one_tensor(4, 3, &[2], &[1], f4.clone()),
        "does not fit its storage",
    ));
    v.push((
        "broadcast_stride.pth",
        one_tensor(4, 0, &[1 << 30], &[0], f4.clone()),
        "does not fit its storage",
    ));
    v.push((
        "overflowing_shape.pth",
        one_tensor(4, 0, &[1 << 40, 1 << 40, 1 << 40], &[1, 1, 1], f4.clone()),
        "does not fit its storage",
    ));
    v.push((
        "storage_size_lies.pth",
        one_tensor(1 << 28, 0, &[4], &[1], f4.clone()),
        "declares 268435456 F32 elements, but the entry holds 16 bytes",
    ));
    // A zip entry declaring 4 GB in a file of a few hundred bytes.
    let mut big = one_tensor(4, 0, &[4], &[1], f4.clone());
    patch_size(&mut big, "archive/data/0", 0xFFFF_FFF0);
    v.push(("huge_entry.pth", big, "declares 4294967280 bytes at offset"));
    // 10^6 tensors (too many items for one dict), and 300,000 sharing one 4-byte storage.
    for (name, n, says) in [
        (
            "million_tensors.pth",
            1_000_000,
            "more than 1000000 items in one container",
        ),
        (
            "shared_storage_tensors.pth",
            300_000,
            "the state_dict's tensors add up to 1200000 bytes, more than the 4 bytes",
        ),
    ] {
        let mut many = Pk::new();
        many.ordered_dict().op(b"(").str("t0");
        many.tensor("0", 1, 0, &[1], &[1]).op(b"q\x01");
        for i in 1..n {
            many.str(&format!("t{i}")).op(b"h\x01");
        }
        v.push((
            name,
            torch_zip(&many.op(b"u").stop(), &[("0", vec![0; 4])]),
            says,
        ));
    }
    // 150,000 zip entries.
    let entries: Vec<(String, Vec<u8>)> = (0..150_000)
        .map(|i| (format!("archive/data/{i}"), Vec::new()))
        .collect();
    v.push((
        "many_entries.pth",
        zip(&entries),
        "a zip archive of 150000 entries; at most 100000 are read",
    ));
    // A directory said to be past the end of the file.
    let mut far = one_tensor(4, 0, &[4], &[1], f4.clone());
    let n = far.len();
    far[n - 6..n - 2].copy_from_slice(&0xFFFF_0000u32.to_le_bytes());
    v.push(("directory_past_end.pth", far, "does not fit in the file"));
    // numpy scalars are data only inside 'opt'.
    let mut np = Pk::new();
    np.op(b"}(").str("model").ordered_dict().op(b"(").str("lr");
    np.global("numpy._core.multiarray", "scalar")
        .global("numpy", "dtype");
    np.op(b"(")
        .str("f8")
        .op(&[0x89, 0x88])
        .op(b"tR")
        .str("x")
        .op(b"\x86R");
    np.op(b"u").str("opt").op(b"}u");
    v.push((
        "numpy_in_model.pth",
        torch_zip(&np.stop(), &[]),
        "outside the optimizer state ('opt')",
    ));
    let mut codec = Pk::new();
    codec
        .op(b"}(")
        .str("w")
        .global("_codecs", "encode")
        .str("a")
        .str("latin1");
    codec.op(b"\x86Ru");
    v.push((
        "codecs_in_state_dict.pth",
        torch_zip(&codec.stop(), &[]),
        "names the Python class _codecs.encode in a state_dict",
    ));
    let mut system = Pk::new();
    system.global("os", "system").str("echo pwned").op(b"\x85R");
    v.push((
        "os_system.pth",
        torch_zip(&system.stop(), &[]),
        "needs the Python class os.system",
    ));
    let mut inst = Pk::new();
    inst.op(b"(ios\nsystem\n");
    v.push((
        "inst_opcode.pth",
        torch_zip(&inst.stop(), &[]),
        "opcode INST",
    ));
    // A list that contains itself.
    let mut cycle = Pk::new();
    cycle.op(b"]q\x00h\x00a");
    v.push((
        "self_list.pth",
        torch_zip(&cycle.stop(), &[]),
        "the pickle holds a list",
    ));
    // A compressed (deflate) storage entry.
    let mut deflated = one_tensor(4, 0, &[4], &[1], f4);
    let at = (0..deflated.len())
        .rev()
        .find(|&i| {
            deflated[i..].starts_with(b"PK\x01\x02")
                && deflated[i + 46..].starts_with(b"archive/data/0")
        })
        .unwrap();
    deflated[at + 10] = 8;
    v.push(("deflated.pth", deflated, "is compressed (method 8)"));
    v
}

const HOSTILE_DIR: &str = "FASTAI_INFER_HOSTILE_PTH_DIR";

/// Each crafted `.pth` is an `InvalidWeights` error naming the file and the cause, in a child
/// process whose address space is limited to 1 GB (`ulimit -v`): an allocation the size a file
/// declares, or a stack overflow, would abort the child.
#[cfg(unix)]
#[test]
fn hostile_pth_files_are_refused_within_1gb_of_address_space() {
    let dir = tempfile::tempdir().unwrap();
    let cases = hostile_pth();
    let mut manifest = String::new();
    for (name, bytes, says) in &cases {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        manifest.push_str(&format!("{name}\t{says}\n"));
    }
    std::fs::write(dir.path().join("manifest.tsv"), manifest).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576 && exec \"$0\" \"$@\"")
        .arg(exe)
        .args([
            "--ignored",
            "--exact",
            "hostile_pth_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOSTILE_DIR, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    println!("{stdout}");
    for (name, _, _) in &cases {
        assert!(
            stdout.contains(&format!("refused {name}:")),
            "{name}\n{stdout}"
        );
    }
}

#[test]
#[ignore = "the child process of the hostile .pth test; does nothing alone"]
fn hostile_pth_child() {
    let Some(dir) = std::env::var_os(HOSTILE_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv")).unwrap();
    for line in manifest.lines() {
        let (name, says) = line.split_once('\t').unwrap();
        let p = dir.join(name);
        let reason = invalid(&p);
        assert!(reason.contains(says), "{name}: {reason}");
        println!("refused {name}: {reason}");
    }
}

#[test]
fn hostile_pth_files_are_refused_in_process_too() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, says) in hostile_pth() {
        let p = write(&dir, name, &bytes);
        let reason = invalid(&p);
        assert!(reason.contains(says), "{name}: {reason}");
    }
}

/// The tiny model as a torch `.pth` state_dict (`torch.save`'s layout, each tensor over its own
/// storage): floats as `float` (F32, F16 or BF16), counters as I64; with `transposed`, every
/// 2-D float tensor is stored the way a transposed view is (the storage holds `W^T`, the
/// tensor has strides `(1, rows)`).
fn tiny_pth(float: DType, transposed: bool) -> Vec<u8> {
    tiny_pth_with(float, transposed, None)
}

/// fastai's optimizer state as `fit_one_cycle` leaves it: `{'state': [], 'hypers':
/// L([{'lr': np.float64(...)}])}`, the numpy scalar pickled through `<numpy>.scalar`,
/// `numpy.dtype` and `_codecs.encode`.
fn fastai_opt(p: &mut Pk, numpy: &str) {
    p.op(b"}(").str("state").op(b"]").str("hypers");
    p.global("fastcore.foundation", "L").op(b")\x81");
    p.op(b"}(").str("items").op(b"](}(").str("lr");
    p.global(numpy, "scalar").global("numpy", "dtype");
    p.op(b"(").str("f8").op(&[0x89, 0x88]).op(b"tR");
    p.op(b"(K\x03")
        .str("<")
        .op(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
    p.global("_codecs", "encode")
        .str("abcdefgh")
        .str("latin1")
        .op(b"\x86R");
    p.op(b"\x86R").op(b"ueub").op(b"u");
}

/// [`tiny_pth`], as `{'model': state_dict, 'opt': fastai_opt}` when `opt` names numpy's
/// multiarray module.
fn tiny_pth_with(float: DType, transposed: bool, opt: Option<&str>) -> Vec<u8> {
    let mut p = Pk::new();
    if opt.is_some() {
        p.op(b"}(").str("model");
    }
    p.ordered_dict().op(b"(");
    let mut storages = Vec::new();
    for (i, (key, t)) in tiny::tensors().into_iter().enumerate() {
        let shape: Vec<u64> = t.dims().iter().map(|&d| d as u64).collect();
        let n: u64 = shape.iter().product();
        let is_float = t.dtype() == DType::F32;
        let t = if is_float {
            t.to_dtype(float).unwrap()
        } else {
            t
        };
        let class = match t.dtype() {
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            _ => "LongStorage",
        };
        let (stored, stride) = if transposed && is_float && shape.len() == 2 {
            (t.t().unwrap().contiguous().unwrap(), vec![1, shape[0]])
        } else {
            let mut stride = vec![1u64; shape.len()];
            for d in (0..shape.len().saturating_sub(1)).rev() {
                stride[d] = stride[d + 1] * shape[d + 1];
            }
            (t, stride)
        };
        let k = i.to_string();
        p.str(&key).tensor_of(class, &k, n, 0, &shape, &stride);
        storages.push((k, safetensors::View::data(&stored).into_owned()));
    }
    p.op(b"u");
    if let Some(numpy) = opt {
        p.str("opt");
        fastai_opt(&mut p, numpy);
        p.op(b"u");
    }
    let pickle = p.stop();
    let refs: Vec<(&str, Vec<u8>)> = storages
        .iter()
        .map(|(k, d)| (k.as_str(), d.clone()))
        .collect();
    torch_zip(&pickle, &refs)
}

#[test]
fn numpy_scalars_in_fastais_optimizer_state_are_read_as_data() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = fastai_infer::Recipe::from_json(tiny::RECIPE).unwrap();
    // numpy >= 2 pickles its scalars as numpy._core.multiarray.scalar, numpy 1 as numpy.core.
    for numpy in ["numpy._core.multiarray", "numpy.core.multiarray"] {
        let p = write(
            &dir,
            "opt.pth",
            &tiny_pth_with(DType::F32, false, Some(numpy)),
        );
        let w = FastaiWeights::load_with_recipe(&p, &recipe, &Device::Cpu).unwrap();
        assert_eq!(w.format(), ".pth ({'model': state_dict, 'opt': ...})");
        assert_eq!(w.config(), &tiny::config());
    }
    // Any other module's `scalar` is refused by name.
    let p = write(
        &dir,
        "opt.pth",
        &tiny_pth_with(DType::F32, false, Some("numpy.evil")),
    );
    assert!(invalid(&p).contains("the Python class numpy.evil.scalar"));
    // A fastai export.pkl is a pickle of the whole Learner: refused with a hint.
    let mut export = Pk::new();
    export.global("fastai.learner", "Learner").op(b")\x81");
    let p = write(&dir, "export.pkl", &torch_zip(&export.stop(), &[]));
    let reason = invalid(&p);
    assert!(reason.contains("fastai.learner.Learner"), "{reason}");
    assert!(reason.contains("scripts/export_fastai.py"), "{reason}");
}

#[test]
fn a_pth_with_strided_and_half_tensors_loads_the_stored_values() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = fastai_infer::Recipe::from_json(tiny::RECIPE).unwrap();
    let want: std::collections::HashMap<String, Tensor> = tiny::tensors().into_iter().collect();
    let img = image::RgbImage::from_fn(13, 9, |x, y| image::Rgb([x as u8 * 9, y as u8 * 20, 77]));
    let reference = Learner::load(
        write(&dir, "tiny.safetensors", &tiny::bytes()),
        &Device::Cpu,
    )
    .unwrap()
    .predict(&img)
    .unwrap();
    for float in [DType::F32, DType::F16, DType::BF16] {
        for transposed in [false, true] {
            let p = write(&dir, "tiny.pth", &tiny_pth(float, transposed));
            let w = FastaiWeights::load_with_recipe(&p, &recipe, &Device::Cpu).unwrap();
            assert_eq!(w.format(), ".pth (state_dict)");
            assert_eq!(w.config(), &tiny::config());
            for (k, t) in w.tensors() {
                let t0 = &want[k];
                if t0.dtype() == DType::I64 {
                    assert_eq!(
                        t.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
                        t0.flatten_all().unwrap().to_vec1::<i64>().unwrap()
                    );
                    continue;
                }
                let rounded = t0.to_dtype(float).unwrap().to_dtype(DType::F32).unwrap();
                let d = common::max_abs_diff(t, &rounded);
                assert_eq!(d, 0.0, "{float:?} transposed={transposed} {k}");
            }
            if float == DType::F32 {
                let vocab = fastai_infer::Vocab::new(vec!["cat".into(), "dog".into()]);
                let got = Learner::from_weights(&w, vocab)
                    .unwrap()
                    .predict(&img)
                    .unwrap();
                assert_eq!(got.probabilities, reference.probabilities);
            }
        }
    }
}
