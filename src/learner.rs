//! The facade: a [`Learner`] that holds the model, the vocab and the validation transforms,
//! with fastai's `learn.predict` as its mental model.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Module, Tensor};
use image::RgbImage;
use rayon::prelude::*;
use rayon::ThreadPool;

use crate::batch_tfms::BatchTfms;
use crate::categorize::{LossFunc, Prediction, Vocab};
use crate::decode::{load_image_with, DecodeOptions};
use crate::error::{Error, Result};
use crate::item_tfms::ItemTfms;
use crate::model::{FastaiModel, Simd};
use crate::weights::FastaiWeights;

/// A fastai classifier (timm ViT, ResNet or ConvNeXt body) ready for inference: decode, item
/// transforms, batch transforms, model, decoding, as `learn.predict` runs them on fastai's
/// validation pipeline.
#[derive(Debug, Clone)]
pub struct Learner {
    model: FastaiModel,
    vocab: Vocab,
    item_tfms: ItemTfms,
    batch_tfms: BatchTfms,
    loss_func: LossFunc,
    decode: DecodeOptions,
    device: Device,
    /// The thread pool everything runs on ([`Learner::with_thread_pool`]); rayon's global one
    /// when `None`.
    pool: Option<Arc<ThreadPool>>,
    /// Whether [`Learner::predict_paths`] prepares the next batch while the current one runs
    /// ([`Learner::with_overlap`]).
    overlap: bool,
}

impl Learner {
    /// Loads a weights file (safetensors or `.pth`, see [`FastaiWeights::load`]) whose
    /// metadata carries the vocab, with the transforms of its recipe (the pets lesson's when it
    /// has none: `RandomResizedCrop(460)`, `aug_transforms(size=224)`, ImageNet
    /// normalization). A `.pth` carries no vocab: use [`Learner::load_with_labels`].
    pub fn load(weights: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let w = FastaiWeights::load(weights, device)?;
        let vocab = w.vocab()?.ok_or_else(|| Error::MissingVocab {
            path: w.path().to_path_buf(),
        })?;
        Self::from_weights(&w, vocab)
    }

    /// Loads weights with the vocab from a labels file (one label per line), which takes
    /// precedence over any vocab in the weights' metadata.
    pub fn load_with_labels(
        weights: impl AsRef<Path>,
        labels: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        let labels = labels.as_ref();
        let w = FastaiWeights::load(weights, device)?;
        let vocab = Vocab::from_labels_file(labels)?;
        vocab.check_len(w.config().num_classes(), &labels.display().to_string())?;
        Self::from_weights(&w, vocab)
    }

    /// Builds a learner from loaded weights and a vocab, with the transforms of the weights'
    /// recipe ([`FastaiWeights::recipe`]).
    pub fn from_weights(weights: &FastaiWeights, vocab: Vocab) -> Result<Self> {
        vocab.check_len(weights.config().num_classes(), "the given vocab")?;
        let recipe = weights.recipe()?;
        let cfg = weights.config();
        if cfg.in_chans() != 3 {
            return Err(Error::InvalidArgument(format!(
                "the model in {} takes {} input channels; fastai-infer's pipeline makes RGB images (3)",
                weights.path().display(),
                cfg.in_chans()
            )));
        }
        let (bh, bw) = recipe
            .input_size()
            .map_err(|reason| Error::InvalidMetadata {
                path: weights.path().to_path_buf(),
                key: crate::recipe::RECIPE_METADATA_KEY.to_string(),
                reason,
            })?;
        if let Some(side) = cfg.input_size().filter(|&s| (bh, bw) != (s, s)) {
            return Err(Error::InvalidMetadata {
                path: weights.path().to_path_buf(),
                key: crate::recipe::RECIPE_METADATA_KEY.to_string(),
                reason: format!(
                    "batch_tfms makes {bh}x{bw} inputs but the model's pos_embed is for {side}x{side} images"
                ),
            });
        }
        let model = weights.build_model()?;
        let device = model.device();
        Ok(Learner {
            model,
            vocab,
            item_tfms: recipe.item_tfms,
            batch_tfms: recipe.batch_tfms,
            loss_func: recipe.loss_func,
            decode: DecodeOptions::default(),
            overlap: !device.is_cpu(),
            device,
            pool: None,
        })
    }

    /// Replaces the item transforms: one step (a [`crate::item_tfms::Resize`],
    /// [`crate::item_tfms::CropPad`] or [`crate::item_tfms::RandomResizedCrop`]) or a list
    /// ([`ItemTfms`]).
    pub fn with_item_tfms(mut self, item_tfms: impl Into<ItemTfms>) -> Self {
        self.item_tfms = item_tfms.into();
        self
    }

    /// Replaces how outputs decode (single-label softmax or multi-label sigmoid and
    /// threshold; default: the recipe's).
    pub fn with_loss_func(mut self, loss_func: LossFunc) -> Self {
        self.loss_func = loss_func;
        self
    }

    /// How outputs decode (the recipe's `loss_func`).
    pub fn loss_func(&self) -> &LossFunc {
        &self.loss_func
    }

    /// Replaces the batch transforms (default size 224 with ImageNet statistics).
    pub fn with_batch_tfms(mut self, batch_tfms: BatchTfms) -> Self {
        self.batch_tfms = batch_tfms;
        self
    }

    /// Replaces the options [`Learner::predict_path`] and [`Learner::predict_paths`] decode
    /// files with (default: PIL's decompression-bomb limit, EXIF orientation ignored).
    pub fn with_decode_options(mut self, options: DecodeOptions) -> Self {
        self.decode = options;
        self
    }

    /// Runs this learner's work (decoding, transforms, the forward pass) on `pool` instead of
    /// rayon's global pool: one pool per learner isolates concurrent learners (or keeps them
    /// to a share of the cores), and one pool shared by several caps them together. Several
    /// calls at once on the same learner share its pool: each forward pass takes the threads
    /// that are free, and with the packed kernels (AVX2 or AVX-512, see [`Simd`]) the outputs
    /// are the same bits whatever the threads.
    pub fn with_thread_pool(mut self, pool: Arc<ThreadPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Runs this learner on a pool of its own of `threads` threads (see
    /// [`Learner::with_thread_pool`]). Fails when `threads` is 0 or the threads cannot be
    /// started.
    pub fn with_num_threads(self, threads: usize) -> Result<Self> {
        if threads == 0 {
            return Err(Error::InvalidArgument(
                "with_num_threads: threads must be at least 1".into(),
            ));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("fastai-infer-{i}"))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("with_num_threads({threads}): {e}")))?;
        Ok(self.with_thread_pool(Arc::new(pool)))
    }

    /// Whether [`Learner::predict_paths`] decodes and item-transforms batch k+1 on the CPU
    /// threads while batch k runs its batch transforms and forward pass (default: on for a GPU
    /// learner, whose forward pass leaves the CPU free; off on the CPU, where the forward pass
    /// already uses every thread). The predictions are the same either way.
    pub fn with_overlap(mut self, overlap: bool) -> Self {
        self.overlap = overlap;
        self
    }

    /// Whether [`Learner::predict_paths`] overlaps preparing a batch with running the
    /// previous one (see [`Learner::with_overlap`]).
    pub fn overlap(&self) -> bool {
        self.overlap
    }

    /// The thread pool given to [`Learner::with_thread_pool`], if any.
    pub fn thread_pool(&self) -> Option<&Arc<ThreadPool>> {
        self.pool.as_ref()
    }

    /// Limits the ViT's CPU fast path to the instruction sets `simd` (or what the CPU
    /// supports, if less), overriding the `FASTAI_INFER_SIMD` environment variable, which is
    /// read when each model is loaded. The outputs are the same bits at AVX2 and AVX-512;
    /// the baseline (no AVX) differs by rounding. No effect on a ResNet or ConvNeXt.
    pub fn with_simd(mut self, simd: Simd) -> Result<Self> {
        self.model = self.model.with_simd(simd)?;
        Ok(self)
    }

    /// The options files are decoded with.
    pub fn decode_options(&self) -> &DecodeOptions {
        &self.decode
    }

    /// The vocab (fastai's `dls.vocab`).
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The model.
    pub fn model(&self) -> &FastaiModel {
        &self.model
    }

    /// The device the model and the batch transforms run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The item transforms.
    pub fn item_tfms(&self) -> &ItemTfms {
        &self.item_tfms
    }

    /// The batch transforms.
    pub fn batch_tfms(&self) -> &BatchTfms {
        &self.batch_tfms
    }

    /// The normalized model input for decoded RGB images, `f32` `(N, 3, H, W)` on the
    /// learner's device: item transforms, then batch transforms.
    ///
    /// The images' item transforms run in parallel.
    pub fn model_input(&self, images: &[RgbImage]) -> Result<Tensor> {
        self.in_pool(|| {
            let items = images
                .par_iter()
                .map(|img| self.item_tfms.encodes(img))
                .collect::<Result<Vec<_>>>()?;
            self.batch_tfms.encodes_images(&items, &self.device)
        })
    }

    /// The logits `(N, num_classes)` for a normalized model input.
    pub fn logits(&self, input: &Tensor) -> Result<Tensor> {
        self.in_pool(|| Ok(self.model.forward(input)?))
    }

    /// Predicts one decoded RGB image.
    pub fn predict(&self, image: &RgbImage) -> Result<Prediction> {
        let mut preds = self.predict_batch(std::slice::from_ref(image))?;
        preds
            .pop()
            .ok_or_else(|| Error::InvalidArgument("internal: empty prediction".into()))
    }

    /// Decodes an image file (as `PILImage.create` does, with the learner's
    /// [`DecodeOptions`]) and predicts it.
    pub fn predict_path(&self, path: impl AsRef<Path>) -> Result<Prediction> {
        self.predict(&load_image_with(path, &self.decode)?)
    }

    /// Decodes and predicts image files, `batch_size` per forward pass (decoding and item
    /// transforms run in parallel; with [`Learner::with_overlap`], the next batch's while the
    /// current one runs). Fails on the first file that cannot be read or decoded, naming it;
    /// results are in the order of `paths`.
    pub fn predict_paths<P: AsRef<Path> + Sync>(
        &self,
        paths: &[P],
        batch_size: usize,
    ) -> Result<Vec<Prediction>> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch_size must be at least 1".into(),
            ));
        }
        // Decode + item transforms of one batch, in parallel over its files.
        let prepare = |chunk: &[P]| -> Result<Vec<RgbImage>> {
            chunk
                .par_iter()
                .map(|p| self.item_tfms.encodes(&load_image_with(p, &self.decode)?))
                .collect()
        };
        self.in_pool(|| {
            let mut preds = Vec::with_capacity(paths.len());
            let mut chunks = paths.chunks(batch_size);
            let Some(first) = chunks.next() else {
                return Ok(preds);
            };
            let mut items = prepare(first)?;
            for next in chunks {
                let (done, next_items) = if self.overlap {
                    rayon::join(|| self.predict_items(&items), || prepare(next))
                } else {
                    (self.predict_items(&items), prepare(next))
                };
                preds.extend(done?);
                items = next_items?;
            }
            preds.extend(self.predict_items(&items)?);
            Ok(preds)
        })
    }

    /// Predicts a batch of decoded RGB images in one forward pass; the results equal one
    /// [`Learner::predict`] per image.
    pub fn predict_batch(&self, images: &[RgbImage]) -> Result<Vec<Prediction>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        self.in_pool(|| {
            let items = images
                .par_iter()
                .map(|img| self.item_tfms.encodes(img))
                .collect::<Result<Vec<_>>>()?;
            self.predict_items(&items)
        })
    }

    /// Batch transforms, forward pass and decoding for item-transformed images.
    fn predict_items(&self, items: &[RgbImage]) -> Result<Vec<Prediction>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.in_pool(|| {
            let input = self.batch_tfms.encodes_images(items, &self.device)?;
            let logits = self
                .logits(&input)?
                .to_device(&Device::Cpu)?
                .to_vec2::<f32>()?;
            logits
                .iter()
                .map(|row| Prediction::decode(row, &self.vocab, &self.loss_func))
                .collect()
        })
    }
}

impl Learner {
    /// Runs `f` on a thread of the learner's pool (in place when already on one), so that the
    /// parallel steps inside it start and finish on pool threads instead of each waking the
    /// calling thread.
    fn in_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => rayon::scope(|_| f()),
        }
    }
}
