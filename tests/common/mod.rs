//! Helpers shared by the integration tests: fixture paths and tensor comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

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

/// One fixture image of `tests/fixtures/golden/manifest.json`.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub image: String,
    pub golden: String,
    pub lossless: bool,
    pub label: String,
    pub index: usize,
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
            golden: f["golden"].as_str().unwrap().to_string(),
            lossless: f["lossless"].as_bool().unwrap(),
            label: f["label"].as_str().unwrap().to_string(),
            index: f["index"].as_u64().unwrap() as usize,
        })
        .collect()
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
