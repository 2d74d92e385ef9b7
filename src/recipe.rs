//! The preprocessing recipe a weights file carries: which item and batch transforms the model
//! was trained with, so one file is all a deployment needs.
//!
//! # The metadata format (version 1)
//!
//! A safetensors file's `__metadata__` maps strings to strings. fastai-infer reads two keys:
//!
//! - `"vocab"`: a JSON array of the class labels in index order (`learn.dls.vocab`);
//! - `"fastai_infer.recipe"`: a JSON object
//!
//! ```json
//! {"format_version": 1,
//!  "arch": "vit_tiny_patch16_224",
//!  "item_tfms": {"name": "RandomResizedCrop", "height": 460, "width": 460,
//!                "val_xtra": 0.14, "resample": "bilinear"},
//!  "batch_tfms": {"height": 224, "width": 224, "mode": "bilinear",
//!                 "pad_mode": "reflection", "align_corners": true},
//!  "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
//! ```
//!
//! `arch` is the timm model name (optional; it fixes the number of attention heads, which
//! the weights' shapes do not determine, see [`crate::model::Config::infer`]); an optional
//! `"num_heads"` integer overrides it. Every other field is required once the key is present,
//! and only what fastai-infer reproduces exactly is accepted: `RandomResizedCrop`'s validation
//! path (PIL bilinear squish to `size + xtra`, centre crop) and the identity-affine bilinear,
//! reflection-padded, `align_corners=True` resize of `aug_transforms`. When the key is absent
//! the recipe is the pets lesson's ([`Recipe::default`]).
//!
//! `scripts/export_fastai.py` writes both keys from a fastai `Learner` (or `export.pkl`),
//! reading every value from the learner's own pipelines; `examples/convert.rs` writes them
//! from a `.pth` and command-line flags.

use serde_json::{json, Value};

use crate::batch_tfms::{BatchTfms, Normalize};
use crate::item_tfms::{RandomResizedCrop, MAX_SIDE};

/// The metadata key holding the recipe.
pub const RECIPE_METADATA_KEY: &str = "fastai_infer.recipe";
/// The recipe format this crate reads and writes.
pub const RECIPE_FORMAT_VERSION: u64 = 1;

/// The architecture name and the transforms a model expects.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// timm's model name, e.g. `vit_tiny_patch16_224`, when known.
    pub arch: Option<String>,
    /// Attention heads, when given explicitly (else derived from `arch` or the shapes).
    pub num_heads: Option<usize>,
    /// The item transforms (validation path).
    pub item_tfms: RandomResizedCrop,
    /// The batch transforms.
    pub batch_tfms: BatchTfms,
}

impl Default for Recipe {
    /// The pets lesson's transforms: `RandomResizedCrop(460)`, `aug_transforms(size=224)`,
    /// `Normalize.from_stats(*imagenet_stats)`. No `arch`: the architecture comes from the
    /// weights' shapes.
    fn default() -> Self {
        Recipe {
            arch: None,
            num_heads: None,
            item_tfms: RandomResizedCrop::default(),
            batch_tfms: BatchTfms::default(),
        }
    }
}

fn field<'a>(v: &'a Value, path: &str, key: &str) -> Result<&'a Value, String> {
    v.get(key)
        .ok_or_else(|| format!("missing field {path}.{key}"))
}

fn side(v: &Value, path: &str, key: &str) -> Result<u32, String> {
    let f = field(v, path, key)?;
    f.as_u64()
        .filter(|&n| n >= 1 && n <= u64::from(MAX_SIDE))
        .map(|n| n as u32)
        .ok_or_else(|| format!("{path}.{key} must be an integer from 1 to {MAX_SIDE}, found {f}"))
}

fn expect_str(v: &Value, path: &str, key: &str, allowed: &str) -> Result<(), String> {
    let f = field(v, path, key)?;
    match f.as_str() {
        Some(s) if s == allowed => Ok(()),
        _ => Err(format!(
            "{path}.{key} is {f}; fastai-infer reproduces only \"{allowed}\""
        )),
    }
}

fn triple(v: &Value, path: &str, key: &str, positive: bool) -> Result<[f32; 3], String> {
    let f = field(v, path, key)?;
    let arr = f
        .as_array()
        .filter(|a| a.len() == 3)
        .ok_or_else(|| format!("{path}.{key} must be an array of 3 numbers, found {f}"))?;
    let mut out = [0f32; 3];
    for (o, x) in out.iter_mut().zip(arr) {
        let n = x
            .as_f64()
            .filter(|n| n.is_finite() && (!positive || *n > 0.0))
            .ok_or_else(|| {
                format!(
                    "{path}.{key} must hold 3 finite{} numbers, found {f}",
                    if positive { " positive" } else { "" }
                )
            })?;
        *o = n as f32;
    }
    Ok(out)
}

impl Recipe {
    /// Parses the recipe JSON (see the module docs); the error says which field is wrong.
    pub fn from_json(text: &str) -> Result<Recipe, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if !v.is_object() {
            return Err(format!("expected a JSON object, found {v}"));
        }
        let version = field(&v, "recipe", "format_version")?;
        if version.as_u64() != Some(RECIPE_FORMAT_VERSION) {
            return Err(format!(
                "format_version is {version}; this fastai-infer reads version {RECIPE_FORMAT_VERSION}"
            ));
        }
        let arch = match v.get("arch") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(format!("arch must be a string, found {other}")),
        };
        let num_heads = match v.get("num_heads") {
            None | Some(Value::Null) => None,
            Some(n) => Some(
                n.as_u64()
                    .filter(|&h| h >= 1)
                    .map(|h| h as usize)
                    .ok_or_else(|| format!("num_heads must be a positive integer, found {n}"))?,
            ),
        };

        let item = field(&v, "recipe", "item_tfms")?;
        expect_str(item, "item_tfms", "name", "RandomResizedCrop")?;
        expect_str(item, "item_tfms", "resample", "bilinear")?;
        let val_xtra = field(item, "item_tfms", "val_xtra")?;
        let val_xtra = val_xtra
            .as_f64()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| {
                format!("item_tfms.val_xtra must be a finite number >= 0, found {val_xtra}")
            })?;
        let item_tfms = RandomResizedCrop {
            height: side(item, "item_tfms", "height")?,
            width: side(item, "item_tfms", "width")?,
            val_xtra,
        };

        let batch = field(&v, "recipe", "batch_tfms")?;
        expect_str(batch, "batch_tfms", "mode", "bilinear")?;
        expect_str(batch, "batch_tfms", "pad_mode", "reflection")?;
        let ac = field(batch, "batch_tfms", "align_corners")?;
        if ac.as_bool() != Some(true) {
            return Err(format!(
                "batch_tfms.align_corners is {ac}; fastai-infer reproduces only true"
            ));
        }
        let norm = field(&v, "recipe", "normalize")?;
        let batch_tfms = BatchTfms {
            height: side(batch, "batch_tfms", "height")? as usize,
            width: side(batch, "batch_tfms", "width")? as usize,
            normalize: Normalize {
                mean: triple(norm, "normalize", "mean", false)?,
                std: triple(norm, "normalize", "std", true)?,
            },
        };
        Ok(Recipe {
            arch,
            num_heads,
            item_tfms,
            batch_tfms,
        })
    }

    /// The recipe as the JSON the metadata key holds.
    pub fn to_json(&self) -> String {
        let mut v = json!({
            "format_version": RECIPE_FORMAT_VERSION,
            "item_tfms": {
                "name": "RandomResizedCrop",
                "height": self.item_tfms.height,
                "width": self.item_tfms.width,
                "val_xtra": self.item_tfms.val_xtra,
                "resample": "bilinear",
            },
            "batch_tfms": {
                "height": self.batch_tfms.height,
                "width": self.batch_tfms.width,
                "mode": "bilinear",
                "pad_mode": "reflection",
                "align_corners": true,
            },
            "normalize": {
                "mean": self.batch_tfms.normalize.mean,
                "std": self.batch_tfms.normalize.std,
            },
        });
        if let Some(arch) = &self.arch {
            v["arch"] = json!(arch);
        }
        if let Some(h) = self.num_heads {
            v["num_heads"] = json!(h);
        }
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_defaults_to_the_pets_lesson() {
        let r = Recipe::default();
        assert_eq!(Recipe::from_json(&r.to_json()).unwrap(), r);
        assert_eq!(r.item_tfms.resize_to(), (532, 532));
        assert_eq!(r.batch_tfms.height, 224);
    }

    #[test]
    fn refuses_what_it_cannot_reproduce_naming_the_field() {
        let good: Value = serde_json::from_str(&Recipe::default().to_json()).unwrap();
        let cases: [(&str, Value, &str); 7] = [
            ("/item_tfms/name", json!("Resize"), "item_tfms.name"),
            (
                "/batch_tfms/pad_mode",
                json!("zeros"),
                "batch_tfms.pad_mode",
            ),
            ("/batch_tfms/align_corners", json!(false), "align_corners"),
            ("/normalize/std", json!([1, 0, 1]), "normalize.std"),
            ("/item_tfms/height", json!(0), "item_tfms.height"),
            ("/format_version", json!(2), "format_version"),
            ("/num_heads", json!(0), "num_heads"),
        ];
        for (ptr, bad, says) in cases {
            let mut v = good.clone();
            match v.pointer_mut(ptr) {
                Some(slot) => *slot = bad,
                // Optional top-level fields the default does not write.
                None => v[&ptr[1..]] = bad,
            }
            let err = Recipe::from_json(&v.to_string()).unwrap_err();
            assert!(err.contains(says), "{ptr}: {err}");
        }
        let mut v = good.clone();
        v["batch_tfms"].as_object_mut().unwrap().remove("mode");
        assert!(Recipe::from_json(&v.to_string())
            .unwrap_err()
            .contains("missing field batch_tfms.mode"));
        assert!(Recipe::from_json("[1]").is_err());
        assert!(Recipe::from_json("{").unwrap_err().contains("not JSON"));
    }
}
