//! The preprocessing recipe a weights file carries: which item and batch transforms the model
//! was trained with and how its outputs decode, so one file is all a deployment needs.
//!
//! # The metadata format (version 2)
//!
//! A safetensors file's `__metadata__` maps strings to strings. fastai-infer reads two keys:
//!
//! - `"vocab"`: a JSON array of the class labels in index order (`learn.dls.vocab`);
//! - `"fastai_infer.recipe"`: a JSON object
//!
//! ```json
//! {"format_version": 2,
//!  "arch": "resnet34",
//!  "item_tfms": [
//!    {"name": "Resize", "height": 224, "width": 224, "method": "crop",
//!     "pad_mode": "reflection", "resample": "bilinear"}],
//!  "batch_tfms": [
//!    {"name": "IntToFloatTensor", "div": 255.0},
//!    {"name": "AffineCoordTfm", "height": null, "width": null, "mode": "bilinear",
//!     "pad_mode": "reflection", "align_corners": true},
//!    {"name": "Normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}],
//!  "loss_func": {"name": "BCEWithLogitsLossFlat", "thresh": 0.5}}
//! ```
//!
//! - `item_tfms`: fastai's validation `after_item` steps in order (one or more), each one of
//!   - `{"name": "Resize", "height", "width", "method": "crop"|"squish"|"pad",
//!     "pad_mode": "reflection"|"zeros"|"border", "resample": "bilinear"|"nearest"}`,
//!   - `{"name": "CropPad", "height", "width", "pad_mode"}`,
//!   - `{"name": "RandomResizedCrop", "height", "width", "val_xtra", "resample"}`;
//! - `batch_tfms`: `IntToFloatTensor` (`div` 255) first, then at most one `AffineCoordTfm`
//!   (what `aug_transforms` leaves at validation; `height`/`width` null when it was given no
//!   size: the identity affine at the item's size), then at most one `Normalize`;
//! - `loss_func` (optional, default `{"name": "CrossEntropyLossFlat"}`): single-label softmax,
//!   or multi-label `BCEWithLogitsLossFlat` with its `thresh`.
//!
//! `arch` is the timm/torchvision model name (optional; it fixes a ViT's number of attention
//! heads, which the weights' shapes do not determine, see [`crate::model::Config::infer`], and
//! must name the body's family when it names a known one); an optional `"num_heads"` integer
//! overrides it. Only what fastai-infer reproduces exactly is accepted; anything else is an
//! error naming the field. When the key is absent the recipe is the pets lesson's
//! ([`Recipe::default`]).
//!
//! # Version 1
//!
//! Files written before version 2 keep loading: their recipe is
//!
//! ```json
//! {"format_version": 1, "arch": "vit_tiny_patch16_224",
//!  "item_tfms": {"name": "RandomResizedCrop", "height": 460, "width": 460,
//!                "val_xtra": 0.14, "resample": "bilinear"},
//!  "batch_tfms": {"height": 224, "width": 224, "mode": "bilinear",
//!                 "pad_mode": "reflection", "align_corners": true},
//!  "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
//! ```
//!
//! (one `RandomResizedCrop`, `aug_transforms(size=...)`, a `Normalize`, single-label).
//! [`Recipe::to_json`] writes version 2.
//!
//! `scripts/export_fastai.py` writes both keys from a fastai `Learner` (or `export.pkl`),
//! reading every value from the learner's own pipelines; `examples/convert.rs` writes them
//! from a `.pth` and command-line flags or a recipe file.

use serde_json::{json, Value};

use crate::batch_tfms::{Affine, BatchTfms, Normalize};
use crate::categorize::LossFunc;
use crate::item_tfms::{
    CropPad, ItemTfm, ItemTfms, PadMode, RandomResizedCrop, Resample, Resize, ResizeMethod,
    MAX_SIDE,
};

/// The metadata key holding the recipe.
pub const RECIPE_METADATA_KEY: &str = "fastai_infer.recipe";
/// The recipe format this crate writes (it also reads version 1).
pub const RECIPE_FORMAT_VERSION: u64 = 2;

/// The architecture name, the transforms a model expects, and how its outputs decode.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// The model's name (timm's, e.g. `vit_tiny_patch16_224`, or torchvision's), when known.
    pub arch: Option<String>,
    /// Attention heads, when given explicitly (else derived from `arch` or the shapes).
    pub num_heads: Option<usize>,
    /// The item transforms (validation path), in order.
    pub item_tfms: ItemTfms,
    /// The batch transforms.
    pub batch_tfms: BatchTfms,
    /// The loss function's activation and decoding (single- or multi-label).
    pub loss_func: LossFunc,
}

impl Default for Recipe {
    /// The pets lesson's transforms: `RandomResizedCrop(460)`, `aug_transforms(size=224)`,
    /// `Normalize.from_stats(*imagenet_stats)`, single-label. No `arch`: the architecture
    /// comes from the weights' shapes.
    fn default() -> Self {
        Recipe {
            arch: None,
            num_heads: None,
            item_tfms: ItemTfms::default(),
            batch_tfms: BatchTfms::default(),
            loss_func: LossFunc::CrossEntropyLossFlat,
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

/// A string field parsed by `parse`, or an error listing the `allowed` names.
fn one_of<T>(
    v: &Value,
    path: &str,
    key: &str,
    parse: impl Fn(&str) -> Option<T>,
    allowed: &str,
) -> Result<T, String> {
    let f = field(v, path, key)?;
    f.as_str()
        .and_then(parse)
        .ok_or_else(|| format!("{path}.{key} is {f}; fastai-infer reproduces {allowed}"))
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

fn val_xtra(item: &Value, path: &str) -> Result<f64, String> {
    let f = field(item, path, "val_xtra")?;
    f.as_f64()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| format!("{path}.val_xtra must be a finite number >= 0, found {f}"))
}

const RESAMPLES: &str = "\"bilinear\" and \"nearest\"";
const PAD_MODES: &str = "\"reflection\", \"zeros\" and \"border\"";

fn item_step(item: &Value, path: &str) -> Result<ItemTfm, String> {
    if !item.is_object() {
        return Err(format!("{path} must be an object, found {item}"));
    }
    let name = field(item, path, "name")?;
    let pad = |key| one_of(item, path, key, PadMode::parse, PAD_MODES);
    let resample = || one_of(item, path, "resample", Resample::parse, RESAMPLES);
    Ok(match name.as_str() {
        Some("Resize") => ItemTfm::Resize(Resize {
            height: side(item, path, "height")?,
            width: side(item, path, "width")?,
            method: one_of(
                item,
                path,
                "method",
                ResizeMethod::parse,
                "\"crop\", \"squish\" and \"pad\"",
            )?,
            pad_mode: pad("pad_mode")?,
            resample: resample()?,
        }),
        Some("CropPad") => ItemTfm::CropPad(CropPad {
            height: side(item, path, "height")?,
            width: side(item, path, "width")?,
            pad_mode: pad("pad_mode")?,
        }),
        Some("RandomResizedCrop") => ItemTfm::RandomResizedCrop(RandomResizedCrop {
            height: side(item, path, "height")?,
            width: side(item, path, "width")?,
            val_xtra: val_xtra(item, path)?,
            resample: resample()?,
        }),
        _ => {
            return Err(format!(
                "{path}.name is {name}; fastai-infer reproduces the item transforms \"Resize\", \"CropPad\" and \"RandomResizedCrop\""
            ))
        }
    })
}

fn normalize_step(v: &Value, path: &str) -> Result<Normalize, String> {
    Ok(Normalize {
        mean: triple(v, path, "mean", false)?,
        std: triple(v, path, "std", true)?,
    })
}

/// The batch transforms of a version 2 recipe.
fn batch_steps(steps: &Value) -> Result<BatchTfms, String> {
    let steps = steps
        .as_array()
        .ok_or_else(|| format!("batch_tfms must be an array, found {steps}"))?;
    let mut out = BatchTfms {
        affine: Affine::None,
        normalize: Normalize::identity(),
        ..BatchTfms::default()
    };
    // 0: IntToFloatTensor seen, 1: AffineCoordTfm seen, 2: Normalize seen.
    let mut stage = None;
    for (i, step) in steps.iter().enumerate() {
        let path = format!("batch_tfms[{i}]");
        if !step.is_object() {
            return Err(format!("{path} must be an object, found {step}"));
        }
        let name = field(step, &path, "name")?;
        let (this, needs) = match name.as_str() {
            Some("IntToFloatTensor") => (0, None),
            Some("AffineCoordTfm") => (1, Some(0)),
            Some("Normalize") => (2, Some(0)),
            _ => {
                return Err(format!(
                    "{path}.name is {name}; fastai-infer reproduces the batch transforms \"IntToFloatTensor\", \"AffineCoordTfm\" and \"Normalize\""
                ))
            }
        };
        let ordered = match (stage, needs) {
            (None, None) => true,
            (Some(s), Some(_)) => this > s,
            _ => false,
        };
        if !ordered {
            return Err(format!(
                "{path} is {name}: batch_tfms must be IntToFloatTensor, then at most one AffineCoordTfm, then at most one Normalize (fastai's order)"
            ));
        }
        stage = Some(this);
        match this {
            0 => {
                let div = field(step, &path, "div")?;
                if div.as_f64() != Some(255.0) {
                    return Err(format!(
                        "{path}.div is {div}; fastai-infer reproduces only 255"
                    ));
                }
            }
            1 => {
                expect_str(step, &path, "mode", "bilinear")?;
                // The identity affine samples inside the image: the pad mode has no effect.
                one_of(step, &path, "pad_mode", PadMode::parse, PAD_MODES)?;
                let ac = field(step, &path, "align_corners")?;
                if ac.as_bool() != Some(true) {
                    return Err(format!(
                        "{path}.align_corners is {ac}; fastai-infer reproduces only true"
                    ));
                }
                let (h, w) = (field(step, &path, "height")?, field(step, &path, "width")?);
                if h.is_null() && w.is_null() {
                    out.affine = Affine::ItemSize;
                } else {
                    out.affine = Affine::ToSize;
                    out.height = side(step, &path, "height")? as usize;
                    out.width = side(step, &path, "width")? as usize;
                }
            }
            _ => out.normalize = normalize_step(step, &path)?,
        }
    }
    if stage.is_none() {
        return Err("batch_tfms must start with IntToFloatTensor".into());
    }
    Ok(out)
}

fn loss_func(v: &Value) -> Result<LossFunc, String> {
    let Some(l) = v.get("loss_func").filter(|l| !l.is_null()) else {
        return Ok(LossFunc::CrossEntropyLossFlat);
    };
    let name = field(l, "loss_func", "name")?;
    match name.as_str() {
        Some("CrossEntropyLossFlat") => Ok(LossFunc::CrossEntropyLossFlat),
        Some("BCEWithLogitsLossFlat") => {
            let t = field(l, "loss_func", "thresh")?;
            let thresh = t
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("loss_func.thresh must be a finite number, found {t}"))?;
            Ok(LossFunc::BCEWithLogitsLossFlat {
                thresh: thresh as f32,
            })
        }
        _ => Err(format!(
            "loss_func.name is {name}; fastai-infer decodes \"CrossEntropyLossFlat\" (softmax) and \"BCEWithLogitsLossFlat\" (sigmoid, threshold)"
        )),
    }
}

impl Recipe {
    /// Parses the recipe JSON, version 2 or 1 (see the module docs); the error says which
    /// field is wrong.
    pub fn from_json(text: &str) -> Result<Recipe, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if !v.is_object() {
            return Err(format!("expected a JSON object, found {v}"));
        }
        let version = field(&v, "recipe", "format_version")?;
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
        let (item_tfms, batch_tfms, loss_func) = match version.as_u64() {
            Some(1) => {
                let (i, b) = Self::v1_tfms(&v)?;
                (i, b, LossFunc::CrossEntropyLossFlat)
            }
            Some(2) => {
                let items = field(&v, "recipe", "item_tfms")?;
                let items = items
                    .as_array()
                    .ok_or_else(|| format!("item_tfms must be an array, found {items}"))?;
                if items.is_empty() {
                    return Err("item_tfms is empty; fastai-infer needs a Resize, CropPad or RandomResizedCrop to give every image one size".into());
                }
                let steps = items
                    .iter()
                    .enumerate()
                    .map(|(i, s)| item_step(s, &format!("item_tfms[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                let batch = batch_steps(field(&v, "recipe", "batch_tfms")?)?;
                (ItemTfms(steps), batch, loss_func(&v)?)
            }
            _ => {
                return Err(format!(
                    "format_version is {version}; this fastai-infer reads versions 1 and {RECIPE_FORMAT_VERSION}"
                ))
            }
        };
        Ok(Recipe {
            arch,
            num_heads,
            item_tfms,
            batch_tfms,
            loss_func,
        })
    }

    /// The transforms of a version 1 recipe.
    fn v1_tfms(v: &Value) -> Result<(ItemTfms, BatchTfms), String> {
        let item = field(v, "recipe", "item_tfms")?;
        expect_str(item, "item_tfms", "name", "RandomResizedCrop")?;
        expect_str(item, "item_tfms", "resample", "bilinear")?;
        let item_tfms = RandomResizedCrop {
            height: side(item, "item_tfms", "height")?,
            width: side(item, "item_tfms", "width")?,
            val_xtra: val_xtra(item, "item_tfms")?,
            resample: Resample::Bilinear,
        };
        let batch = field(v, "recipe", "batch_tfms")?;
        expect_str(batch, "batch_tfms", "mode", "bilinear")?;
        expect_str(batch, "batch_tfms", "pad_mode", "reflection")?;
        let ac = field(batch, "batch_tfms", "align_corners")?;
        if ac.as_bool() != Some(true) {
            return Err(format!(
                "batch_tfms.align_corners is {ac}; fastai-infer reproduces only true"
            ));
        }
        let norm = field(v, "recipe", "normalize")?;
        let batch_tfms = BatchTfms {
            height: side(batch, "batch_tfms", "height")? as usize,
            width: side(batch, "batch_tfms", "width")? as usize,
            normalize: normalize_step(norm, "normalize")?,
            affine: Affine::ToSize,
        };
        Ok((item_tfms.into(), batch_tfms))
    }

    /// The `(height, width)` of the model input the recipe's transforms make, or why there
    /// is none (no item transform fixes the size and the batch transforms resample to none).
    pub fn input_size(&self) -> Result<(usize, usize), String> {
        let item = self
            .item_tfms
            .output_size()
            .map(|(h, w)| (h as usize, w as usize));
        match (self.batch_tfms.affine, item) {
            (Affine::ToSize, _) => Ok((self.batch_tfms.height, self.batch_tfms.width)),
            (_, Some(size)) => Ok(size),
            (_, None) => Err("no item transform fixes the image size and the batch transforms resample to no size".into()),
        }
    }

    /// The recipe as the JSON the metadata key holds (version 2).
    pub fn to_json(&self) -> String {
        let items: Vec<Value> = self
            .item_tfms
            .steps()
            .iter()
            .map(|t| match t {
                ItemTfm::Resize(r) => json!({
                    "name": "Resize", "height": r.height, "width": r.width,
                    "method": r.method.as_str(), "pad_mode": r.pad_mode.as_str(),
                    "resample": r.resample.as_str(),
                }),
                ItemTfm::CropPad(c) => json!({
                    "name": "CropPad", "height": c.height, "width": c.width,
                    "pad_mode": c.pad_mode.as_str(),
                }),
                ItemTfm::RandomResizedCrop(r) => json!({
                    "name": "RandomResizedCrop", "height": r.height, "width": r.width,
                    "val_xtra": r.val_xtra, "resample": r.resample.as_str(),
                }),
            })
            .collect();
        let b = &self.batch_tfms;
        let mut batch = vec![json!({"name": "IntToFloatTensor", "div": 255.0})];
        let affine = |h: Value, w: Value| {
            json!({"name": "AffineCoordTfm", "height": h, "width": w, "mode": "bilinear",
                   "pad_mode": "reflection", "align_corners": true})
        };
        match b.affine {
            Affine::ToSize => batch.push(affine(json!(b.height), json!(b.width))),
            Affine::ItemSize => batch.push(affine(Value::Null, Value::Null)),
            Affine::None => {}
        }
        if !b.normalize.is_identity() {
            batch.push(json!({"name": "Normalize", "mean": b.normalize.mean,
                              "std": b.normalize.std}));
        }
        let loss = match self.loss_func {
            LossFunc::CrossEntropyLossFlat => json!({"name": "CrossEntropyLossFlat"}),
            LossFunc::BCEWithLogitsLossFlat { thresh } => {
                json!({"name": "BCEWithLogitsLossFlat", "thresh": thresh})
            }
        };
        let mut v = json!({
            "format_version": RECIPE_FORMAT_VERSION,
            "item_tfms": items,
            "batch_tfms": batch,
            "loss_func": loss,
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

    /// The pets lesson's recipe as version 1 files hold it.
    const V1: &str = r#"{"format_version": 1, "arch": "vit_tiny_patch16_224",
        "item_tfms": {"name": "RandomResizedCrop", "height": 460, "width": 460,
                      "val_xtra": 0.14, "resample": "bilinear"},
        "batch_tfms": {"height": 224, "width": 224, "mode": "bilinear",
                       "pad_mode": "reflection", "align_corners": true},
        "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}"#;

    #[test]
    fn round_trips_and_defaults_to_the_pets_lesson() {
        let r = Recipe::default();
        assert_eq!(Recipe::from_json(&r.to_json()).unwrap(), r);
        assert_eq!(r.input_size().unwrap(), (224, 224));
        let v1 = Recipe::from_json(V1).unwrap();
        assert_eq!(
            v1,
            Recipe {
                arch: Some("vit_tiny_patch16_224".into()),
                ..Recipe::default()
            }
        );
    }

    #[test]
    fn version_2_expresses_every_supported_step() {
        let r = Recipe {
            arch: Some("resnet34".into()),
            num_heads: None,
            item_tfms: ItemTfms(vec![
                CropPad::with_size(300, 200)
                    .pad_mode(PadMode::Reflection)
                    .into(),
                Resize::with_size(64, 80)
                    .method(ResizeMethod::Pad)
                    .pad_mode(PadMode::Border)
                    .resample(Resample::Nearest)
                    .into(),
            ]),
            batch_tfms: BatchTfms {
                affine: Affine::ItemSize,
                normalize: Normalize::identity(),
                ..BatchTfms::default()
            },
            loss_func: LossFunc::BCEWithLogitsLossFlat { thresh: 0.35 },
        };
        let back = Recipe::from_json(&r.to_json()).unwrap();
        assert_eq!(back.item_tfms, r.item_tfms);
        assert_eq!(back.batch_tfms.affine, Affine::ItemSize);
        assert!(back.batch_tfms.normalize.is_identity());
        assert_eq!(back.loss_func, r.loss_func);
        assert_eq!(back.input_size().unwrap(), (64, 80));
        let none = Recipe {
            batch_tfms: BatchTfms {
                affine: Affine::None,
                ..BatchTfms::default()
            },
            ..r
        };
        let back = Recipe::from_json(&none.to_json()).unwrap();
        assert_eq!(back.batch_tfms.affine, Affine::None);
        assert_eq!(back.batch_tfms.normalize, Normalize::default());
    }

    #[test]
    fn refuses_what_it_cannot_reproduce_naming_the_field() {
        let good: Value = serde_json::from_str(V1).unwrap();
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
            ("/format_version", json!(3), "format_version"),
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

    #[test]
    fn version_2_refusals_name_the_step() {
        let good: Value = serde_json::from_str(&Recipe::default().to_json()).unwrap();
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "/item_tfms/0/name",
                json!("RatioResize"),
                "item_tfms[0].name is \"RatioResize\"",
            ),
            (
                "/item_tfms/0/resample",
                json!("bicubic"),
                "item_tfms[0].resample",
            ),
            ("/item_tfms", json!([]), "item_tfms is empty"),
            ("/batch_tfms/1/mode", json!("nearest"), "batch_tfms[1].mode"),
            (
                "/batch_tfms/1/pad_mode",
                json!("wrap"),
                "batch_tfms[1].pad_mode",
            ),
            (
                "/batch_tfms/2/name",
                json!("Brightness"),
                "batch_tfms[2].name is \"Brightness\"",
            ),
            ("/batch_tfms/0/div", json!(1.0), "batch_tfms[0].div"),
            ("/batch_tfms/1/height", json!(0), "batch_tfms[1].height"),
            (
                "/loss_func/name",
                json!("FocalLossFlat"),
                "loss_func.name is \"FocalLossFlat\"",
            ),
        ];
        for (ptr, bad, says) in cases {
            let mut v = good.clone();
            *v.pointer_mut(ptr).unwrap() = bad;
            let err = Recipe::from_json(&v.to_string()).unwrap_err();
            assert!(err.contains(says), "{ptr}: {err}");
        }
        // Out of fastai's order: Normalize before the affine.
        let mut v = good.clone();
        v["batch_tfms"].as_array_mut().unwrap().swap(1, 2);
        let err = Recipe::from_json(&v.to_string()).unwrap_err();
        assert!(err.contains("batch_tfms[2] is \"AffineCoordTfm\""), "{err}");
        let mut v = good.clone();
        v["loss_func"] = json!({"name": "BCEWithLogitsLossFlat"});
        let err = Recipe::from_json(&v.to_string()).unwrap_err();
        assert!(err.contains("missing field loss_func.thresh"), "{err}");
    }
}
