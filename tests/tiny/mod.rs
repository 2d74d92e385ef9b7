//! A tiny but complete fastai ViT (8-wide, one block, 8x8 inputs, 2 classes) as safetensors
//! bytes, with a vocab and a recipe in its metadata: small enough to mutate and fuzz, and
//! loadable by `Learner::load`.
#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use fastai_infer::model::{head, vit, BodyConfig};
use fastai_infer::Config;

/// The tiny model's architecture.
pub fn config() -> Config {
    let body = vit::Config::vit_tiny_patch16_224()
        .with_embed_dim(8)
        .with_depth(1)
        .with_num_heads(2)
        .with_mlp_ratio(2)
        .with_patch_size(4)
        .with_img_size(8)
        .with_in_chans(3)
        .with_layer_norm_eps(1e-6);
    let opts = head::HeadOptions::default()
        .with_lin_ftrs(Some(vec![4]))
        .with_pool(false);
    let head = head::Config::create_head(8, 2, &opts).unwrap();
    Config::new(BodyConfig::Vit(body), head).unwrap()
}

/// Its recipe: `RandomResizedCrop(12)`, batch transforms to 8x8, two heads.
pub const RECIPE: &str = r#"{"format_version": 1, "num_heads": 2,
 "item_tfms": {"name": "RandomResizedCrop", "height": 12, "width": 12, "val_xtra": 0.14, "resample": "bilinear"},
 "batch_tfms": {"height": 8, "width": 8, "mode": "bilinear", "pad_mode": "reflection", "align_corners": true},
 "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}"#;

/// Its tensors, deterministic small values (BatchNorm variances positive, counters `I64`).
pub fn tensors() -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (i, (key, shape)) in config().state_dict_shapes().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let t = if key.ends_with("num_batches_tracked") {
            Tensor::new(&[3i64], &Device::Cpu)
                .unwrap()
                .reshape(shape.as_slice())
                .unwrap()
        } else {
            let v: Vec<f32> = (0..n)
                .map(|j| {
                    let x = ((i * 31 + j * 17) % 23) as f32 / 23.0 - 0.4;
                    if key.ends_with("running_var") {
                        x.abs() + 0.5
                    } else {
                        x * 0.5
                    }
                })
                .collect();
            Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap()
        };
        out.push((key, t));
    }
    out
}

/// The metadata: vocab `["cat", "dog"]` and [`RECIPE`].
pub fn metadata() -> HashMap<String, String> {
    HashMap::from([
        ("vocab".to_string(), r#"["cat", "dog"]"#.to_string()),
        ("fastai_infer.recipe".to_string(), RECIPE.to_string()),
    ])
}

/// The safetensors bytes of `tensors` with `metadata`.
pub fn bytes_of(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Vec<u8> {
    safetensors::serialize(tensors.iter().map(|(k, t)| (k.clone(), t)), metadata).unwrap()
}

/// The tiny model's safetensors bytes.
pub fn bytes() -> Vec<u8> {
    bytes_of(&tensors(), Some(metadata()))
}

/// `tensors()` with `key` replaced by `t`.
pub fn with_tensor(key: &str, t: Tensor) -> Vec<(String, Tensor)> {
    let mut v = tensors();
    let slot = v
        .iter_mut()
        .find(|(k, _)| k == key)
        .expect("key of the tiny model");
    slot.1 = t;
    v
}

/// A raw safetensors file: `header` (JSON text) behind its 8-byte length, then `data`.
pub fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The shape of `key` in the tiny model.
pub fn shape(key: &str) -> Vec<usize> {
    config()
        .state_dict_shapes()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, s)| s)
        .expect("key of the tiny model")
}

/// `DType` helper for tests.
pub fn zeros(key: &str, dtype: DType) -> Tensor {
    Tensor::zeros(shape(key).as_slice(), dtype, &Device::Cpu).unwrap()
}
