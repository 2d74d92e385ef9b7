//! The transform cases of `scripts/make_fixtures_tfms.py`: each case's recipe, images and
//! fastai's item bytes and model input (tests/fixtures/tfms/).
#![allow(dead_code)] // each test file uses part of it

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use fastai_infer::{load_image, Recipe};
use image::RgbImage;

/// One case of `cases.json`.
pub struct Case {
    /// The case's name.
    pub name: String,
    /// Its recipe (the item and batch transforms fastai's reader found).
    pub recipe: Recipe,
    /// The fixture images it ran on, decoded.
    pub images: Vec<RgbImage>,
    /// fastai's item-transformed images, `u8` `(N, 3, H, W)`.
    pub items: Tensor,
    /// fastai's model input, `f32` `(N, 3, H, W)`, when the case has batch transforms beyond
    /// `IntToFloatTensor`.
    pub input: Option<Tensor>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every case, in the file's order.
pub fn cases() -> Vec<Case> {
    let dir = root().join("tfms");
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("tfms.safetensors"), &Device::Cpu).unwrap();
    let text = std::fs::read_to_string(dir.join("cases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_object().unwrap();
    let mut names: Vec<&String> = cases.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let c = &cases[name];
            let mut recipe = c["recipe"].clone();
            recipe["format_version"] = 2.into();
            let recipe =
                Recipe::from_json(&recipe.to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let images = c["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| load_image(root().join("images").join(f.as_str().unwrap())).unwrap())
                .collect();
            Case {
                name: name.clone(),
                recipe,
                images,
                items: tensors.remove(&format!("{name}.items")).unwrap(),
                input: tensors.remove(&format!("{name}.input")),
            }
        })
        .collect()
}

/// Image `i` of a `u8` `(N, 3, H, W)` tensor as an RGB image.
pub fn item(items: &Tensor, i: usize) -> RgbImage {
    let t = items.get(i).unwrap().permute((1, 2, 0)).unwrap();
    let (h, w, _) = t.dims3().unwrap();
    let data = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    RgbImage::from_raw(w as u32, h as u32, data).unwrap()
}
