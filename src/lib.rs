//! # fastai-infer
//!
//! Run fastai-trained image classifiers (a timm ViT, torchvision/timm ResNet or timm ConvNeXt
//! body with fastai's head, as `vision_learner` builds them) in pure Rust on [candle], with the same answers fastai gives:
//! no Python, PyTorch or PIL at run time.
//!
//! The modules follow fastai's validation pipeline, one stage each:
//!
//! | stage | fastai | here |
//! |---|---|---|
//! | decode | `PILImage.create` (`convert('RGB')`) | [`decode`] |
//! | item transforms | `Resize`, `CropPad`, `RandomResizedCrop` (validation paths) | [`item_tfms`] |
//! | batch transforms | `IntToFloatTensor`, `aug_transforms(size=...)` or without a size, `Normalize` (or none) | [`batch_tfms`] |
//! | model | `vision_learner(dls, 'vit_tiny_patch16_224')`, `resnet34`, `'convnext_tiny'`; `create_head` | [`model`], weights in [`weights`] |
//! | decode labels | softmax + argmax (`CrossEntropyLossFlat`) or sigmoid + threshold (`BCEWithLogitsLossFlat`), `dls.vocab` | [`categorize`] |
//! | facade | `Learner.predict` | [`Learner`] |
//!
//! The learner runs on the device it is loaded on: [`DeviceSpec`] names one (`cpu`, `cuda`,
//! `cuda:N`, as the examples' `--device` flag does); a GPU needs the `cuda` feature.
//!
//! ```
//! use candle_core::Device;
//! use fastai_infer::Learner;
//!
//! # fn main() -> fastai_infer::Result<()> {
//! let root = env!("CARGO_MANIFEST_DIR");
//! let learn = Learner::load(format!("{root}/weights/pets_vit_tiny.safetensors"), &Device::Cpu)?;
//! let pred = learn.predict_path(format!("{root}/tests/fixtures/images/chelsea.png"))?;
//! println!("{} ({:.3})", pred.label, pred.probabilities[pred.index]);
//! for r in pred.top_k(3) {
//!     println!("{:>30} {:.4}", r.label, r.probability);
//! }
//! # assert_eq!(pred.probabilities.len(), learn.vocab().len());
//! # Ok(())
//! # }
//! ```
//!
//! The supported public API is what these docs show: `docs/public-api.txt` in the repository
//! lists every public item, method and trait impl, and `.ci/public-api.sh` regenerates and
//! diffs it. Config structs are `#[non_exhaustive]`: build them from a preset or constructor
//! and the `with_*` setters (e.g. `model::vit::Config::vit_tiny_patch16_224().with_depth(6)`).
//!
//! [candle]: https://github.com/huggingface/candle

#![warn(missing_docs)]

pub mod batch_tfms;
pub mod categorize;
pub mod decode;
pub mod device;
pub mod error;
pub mod item_tfms;
pub mod learner;
pub mod model;
pub mod recipe;
pub mod weights;

pub use categorize::{LossFunc, Prediction, PredictionKind, Ranked, Vocab};
pub use decode::{
    load_image, load_image_from_memory, load_image_from_memory_with, load_image_with, DecodeOptions,
};
pub use device::DeviceSpec;
pub use error::{Error, KeyProblem, NonFinite, Result};
pub use learner::Learner;
pub use model::{Config, FastaiModel, Simd};
pub use recipe::Recipe;
pub use weights::FastaiWeights;

/// Re-exported so users can name devices and tensors without adding candle themselves.
pub use candle_core;
/// Re-exported so users can build the thread pool [`Learner::with_thread_pool`] takes without
/// adding rayon themselves.
pub use rayon;

/// Re-exported because its types are in this crate's signatures: [`load_image`] returns an
/// [`image::RgbImage`], the item transforms take and return one, and decoding errors carry an
/// [`image::ImageError`]. Use this re-export (`fastai_infer::image::RgbImage`) rather than your
/// own `image` dependency, so the versions always match.
pub use image;

// The README's Rust example is compiled and run as a doctest, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
