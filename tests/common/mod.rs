//! Helpers shared by the integration tests: fixture paths, tensor comparisons, SHA-256
//! digests, and fastai's golden outputs (`tests/fixtures/golden`, written by
//! `scripts/make_fixtures.py golden`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

/// `tests/fixtures` in the source tree.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The shipped fixture weights.
pub fn weights() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/pets_vit_tiny.safetensors")
}

/// Loads a safetensors fixture onto the CPU.
pub fn load(rel: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(rel);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load fixture {}: {e}", path.display()))
}

/// The digest and shape of a reference array that a stage fixture does not (or not only)
/// store: an entry of `tests/fixtures/stages/digests.json`.
#[derive(Debug, Clone)]
pub struct StageDigest {
    /// SHA-256 of the array's contiguous little-endian bytes ([`tensor_sha256`]).
    pub sha256: String,
    /// The array's shape.
    pub shape: Vec<usize>,
}

/// The digests of the reference arrays behind `stages/<file>`, by key.
pub fn stage_digests(file: &str) -> HashMap<String, StageDigest> {
    let path = fixtures().join("stages/digests.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v[file]
        .as_object()
        .unwrap_or_else(|| panic!("{file} not in {}", path.display()))
        .iter()
        .map(|(k, d)| {
            let shape = d["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap() as usize)
                .collect();
            let sha256 = d["sha256"].as_str().unwrap().to_string();
            (k.clone(), StageDigest { sha256, shape })
        })
        .collect()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Lower-case hex SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of a tensor's elements in row-major order, little-endian: what the fixture
/// scripts compute with `hashlib.sha256(t.contiguous().numpy().tobytes())` (`u8` and `f32`).
pub fn tensor_sha256(t: &Tensor) -> String {
    let flat = t.flatten_all().unwrap();
    match t.dtype() {
        DType::U8 => sha256(&flat.to_vec1::<u8>().unwrap()),
        DType::F32 => {
            let v = flat.to_vec1::<f32>().unwrap();
            sha256(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
        }
        other => panic!("no digest for {other:?} tensors"),
    }
}

/// `n` pseudo-random bytes: SplitMix64 from `seed`, each output's 8 bytes little-endian, as
/// `scripts/make_fixtures.py`'s `noise_u8` makes the stage fixtures' large inputs.
pub fn noise_u8(seed: u64, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    let mut state = seed;
    while out.len() < n {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// One fixture image of `tests/fixtures/golden/manifest.json`.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The file under `tests/fixtures/images`.
    pub image: String,
    /// Its stem: the prefix of its keys in `golden.safetensors`.
    pub stem: String,
    /// PNG (decoded exactly as PIL decodes it) rather than JPEG.
    pub lossless: bool,
    /// fastai's top-1 label and its index in the vocab.
    pub label: String,
    pub index: usize,
    /// SHA-256 of fastai's 460x460x3 item bytes (HWC `u8`).
    pub item_sha256: String,
    /// SHA-256 of fastai's normalized input (1, 3, 224, 224) `f32`.
    pub input_sha256: String,
    /// fastai's item bytes as a PNG under `golden/` (the JPEG images), if stored.
    pub item_png: Option<String>,
    /// Whether `golden.safetensors` holds `<stem>.input` in full.
    pub input_stored: bool,
}

/// The fixtures listed in the golden manifest, written by `scripts/make_fixtures.py golden`.
pub fn manifest() -> Vec<Fixture> {
    let path = fixtures().join("golden/manifest.json");
    let text = std::fs::read_to_string(&path).expect("golden manifest");
    let v: serde_json::Value = serde_json::from_str(&text).expect("manifest json");
    v["fixtures"]
        .as_array()
        .expect("fixtures array")
        .iter()
        .map(|f| Fixture {
            image: f["image"].as_str().unwrap().to_string(),
            stem: f["stem"].as_str().unwrap().to_string(),
            lossless: f["lossless"].as_bool().unwrap(),
            label: f["label"].as_str().unwrap().to_string(),
            index: f["index"].as_u64().unwrap() as usize,
            item_sha256: f["item_sha256"].as_str().unwrap().to_string(),
            input_sha256: f["input_sha256"].as_str().unwrap().to_string(),
            item_png: f["item_png"].as_str().map(str::to_string),
            input_stored: f["input_stored"].as_bool().unwrap(),
        })
        .collect()
}

/// The manifest entry of one image.
pub fn fixture(image: &str) -> Fixture {
    manifest()
        .into_iter()
        .find(|f| f.image == image)
        .unwrap_or_else(|| panic!("{image} not in the golden manifest"))
}

/// `golden/golden.safetensors`: `<stem>.logits`, `<stem>.probs` for every image, and
/// `<stem>.input` for those with `input_stored`.
pub fn golden() -> HashMap<String, Tensor> {
    load("golden/golden.safetensors")
}

/// The path of a fixture image.
pub fn image_path(f: &Fixture) -> PathBuf {
    fixtures().join("images").join(&f.image)
}

/// fastai's 460x460 item bytes for a fixture image, checked against fastai's digest: for a
/// JPEG, the stored PNG of fastai's item; for a PNG, this crate's decode + `RandomResizedCrop`
/// (bit-identical to fastai's, which the digest proves).
pub fn fastai_item(f: &Fixture) -> image::RgbImage {
    let item = match &f.item_png {
        Some(png) => image::open(fixtures().join("golden").join(png))
            .unwrap()
            .into_rgb8(),
        None => {
            let img = fastai_infer::load_image(image_path(f)).unwrap();
            fastai_infer::item_tfms::RandomResizedCrop::new(460)
                .encodes(&img)
                .unwrap()
        }
    };
    assert_eq!(
        sha256(item.as_raw()),
        f.item_sha256,
        "{}: the item bytes are not fastai's (SHA-256 differs)",
        f.image
    );
    item
}

/// fastai's normalized input for a fixture image (1, 3, 224, 224): the batch transforms on
/// fastai's item bytes ([`fastai_item`]), checked bit for bit against fastai's digest (and
/// within 1e-6 of fastai's array where it is stored in full).
pub fn fastai_input(f: &Fixture) -> Tensor {
    let item = image_tensor(&fastai_item(f)).unsqueeze(0).unwrap();
    let input = fastai_infer::batch_tfms::BatchTfms::default()
        .encodes(&item)
        .unwrap();
    assert_input_is_fastais(f, &input, "batch transforms on fastai's item");
    input
}

/// Asserts that `input` is fastai's normalized input for `f`: within 1e-6 of the stored
/// array (when stored), and bit-identical by SHA-256.
pub fn assert_input_is_fastais(f: &Fixture, input: &Tensor, what: &str) {
    if f.input_stored {
        let want = &golden()[&format!("{}.input", f.stem)];
        let d = max_abs_diff(input, want);
        assert!(
            d <= 1e-6,
            "{} ({what}): normalized input differs by {d}",
            f.image
        );
    }
    assert_eq!(
        tensor_sha256(input),
        f.input_sha256,
        "{} ({what}): the normalized input is not fastai's bit for bit",
        f.image
    );
}

/// Converts an `RgbImage` to a `(H, W, 3)` `u8` tensor.
pub fn image_tensor(img: &image::RgbImage) -> Tensor {
    Tensor::from_vec(
        img.as_raw().clone(),
        (img.height() as usize, img.width() as usize, 3),
        &Device::Cpu,
    )
    .unwrap()
}

/// An `RgbImage` from a `(H, W, 3)` `u8` tensor.
pub fn tensor_image(t: &Tensor) -> image::RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    image::RgbImage::from_raw(
        w as u32,
        h as u32,
        t.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    )
    .unwrap()
}
