//! Stage 3, batch transforms: what fastai's `batch_tfms` do to a validation batch, as candle
//! ops on the model's device.
//!
//! The pets recipe's `aug_transforms(size=224)` + `Normalize.from_stats(*imagenet_stats)`
//! reduce, on the validation set, to:
//! 1. [`IntToFloatTensor`]: `uint8` `(N, H, W, 3)` to `f32` `(N, 3, H, W)` divided by 255;
//! 2. `AffineCoordTfm` with the identity affine at `size`: fastai's `_grid_sample`, i.e. an
//!    'area' pre-interpolation ([`area_interpolate`]) when downsizing by more
//!    than the rule in `area_pre_size`, then a bilinear
//!    [`grid_sample()`] with reflection padding and `align_corners=True`;
//! 3. [`Normalize`] with the ImageNet statistics.
//!
//! The random flips, rotations, zooms, warps and lighting changes of `aug_transforms` are
//! training-only and are not applied, exactly as on fastai's validation set.
//!
//! Other learners differ in two places, which [`BatchTfms::affine`] and
//! [`BatchTfms::normalize`] express:
//! - `aug_transforms()` without a `size` ([`Affine::ItemSize`]): at validation fastai's
//!   `AffineCoordTfm` still resamples, with the identity affine at the item's own size
//!   (`F.grid_sample` bilinear, `align_corners=True`; measured against fastai: this is not a
//!   copy of the pixels, some values move by a rounding step); no `aug_transforms` at all
//!   ([`Affine::None`]): no resampling;
//! - no `Normalize` (a `vision_learner(..., pretrained=False)` adds none): the identity
//!   statistics ([`Normalize::identity`]), which give the same bits as skipping the step.
//!
//! The identity affine samples only inside the image, so `aug_transforms`' `pad_mode` has no
//! effect at validation (reflection, zeros and border give the same tensors; fixture-checked).

mod cpu;
mod fma;
mod grid_sample;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

pub use grid_sample::{
    affine_grid, area_interpolate, area_interpolate_ops, fastai_grid_sample,
    fastai_grid_sample_with_range, grid_sample, identity_grid, identity_grid_range,
};

/// fastai's `IntToFloatTensor`: `x.float() / 255` (true division, as PyTorch does).
#[derive(Debug, Clone, Copy, Default)]
pub struct IntToFloatTensor;

impl IntToFloatTensor {
    /// Converts a `u8` batch laid out `(N, H, W, 3)` (as images are stored) to `f32`
    /// `(N, 3, H, W)` in `[0, 1]`.
    pub fn encodes(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, _, c) = x.dims4().map_err(|_| {
            Error::InvalidArgument(format!(
                "IntToFloatTensor: expected (N, H, W, C), got {:?}",
                x.dims()
            ))
        })?;
        if c != 3 {
            return Err(Error::InvalidArgument(format!(
                "IntToFloatTensor: expected 3 channels, got {c}"
            )));
        }
        let x = x.permute((0, 3, 1, 2))?.to_dtype(DType::F32)?;
        let d = Tensor::new(255f32, x.device())?;
        Ok(x.broadcast_div(&d)?)
    }
}

/// The ImageNet channel means fastai's `imagenet_stats` holds.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// The ImageNet channel standard deviations fastai's `imagenet_stats` holds.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// fastai's `Normalize.from_stats(mean, std)`: `(x - mean) / std` per channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

impl Default for Normalize {
    /// `Normalize.from_stats(*imagenet_stats)`.
    fn default() -> Self {
        Normalize {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

impl Normalize {
    /// No normalization: mean 0 and std 1 per channel (`(x - 0) / 1` is exactly `x` in `f32`),
    /// what a batch pipeline without `Normalize` computes.
    pub fn identity() -> Self {
        Normalize {
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    /// Whether this is [`Normalize::identity`].
    pub fn is_identity(&self) -> bool {
        *self == Normalize::identity()
    }

    /// Normalizes an `f32` `(N, 3, H, W)` batch.
    pub fn encodes(&self, x: &Tensor) -> Result<Tensor> {
        let device = x.device();
        let mean = Tensor::new(&self.mean, device)?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&self.std, device)?.reshape((1, 3, 1, 1))?;
        Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }
}

/// Which `AffineCoordTfm` (the resampling step of `aug_transforms`) runs at validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affine {
    /// `aug_transforms(size=...)`: the identity affine resampled to
    /// [`BatchTfms::height`] x [`BatchTfms::width`].
    #[default]
    ToSize,
    /// `aug_transforms()` without a size: the identity affine at the item's own size (fastai
    /// still runs its `grid_sample`); `height` and `width` are not used.
    ItemSize,
    /// No `AffineCoordTfm`: no resampling; `height` and `width` are not used.
    None,
}

/// The whole validation batch pipeline: [`IntToFloatTensor`], fastai's `_grid_sample` with the
/// identity affine (see [`Affine`]), [`Normalize`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchTfms {
    /// Output height (`size` of `aug_transforms`) when `affine` is [`Affine::ToSize`].
    pub height: usize,
    /// Output width when `affine` is [`Affine::ToSize`].
    pub width: usize,
    /// The normalization ([`Normalize::identity`] when the learner has none).
    pub normalize: Normalize,
    /// Which resampling runs.
    pub affine: Affine,
}

impl Default for BatchTfms {
    /// `aug_transforms(size=224)` + `Normalize.from_stats(*imagenet_stats)`.
    fn default() -> Self {
        BatchTfms {
            height: 224,
            width: 224,
            normalize: Normalize::default(),
            affine: Affine::ToSize,
        }
    }
}

impl BatchTfms {
    /// The `(height, width)` of the model input for items of `item` `(height, width)`.
    pub fn output_size(&self, item: (usize, usize)) -> (usize, usize) {
        match self.affine {
            Affine::ToSize => (self.height, self.width),
            Affine::ItemSize | Affine::None => item,
        }
    }

    /// Runs the pipeline on a `u8` batch `(N, H, W, 3)` already on the target device and
    /// returns the model input, `f32` `(N, 3, height, width)`.
    ///
    /// On the CPU a `u8` batch takes a direct-loop path that gives the same bits as
    /// `BatchTfms::encodes_ops` (the device-generic reference), faster; everything else runs as candle ops.
    pub fn encodes(&self, x: &Tensor) -> Result<Tensor> {
        self.check_size()?;
        if x.device().is_cpu() && x.dtype() == DType::U8 {
            if let Ok((n, h, w, 3)) = x.dims4() {
                if n > 0 && h > 0 && w > 0 {
                    let data = x.flatten_all()?.to_vec1::<u8>()?;
                    let images: Vec<&[u8]> = data.chunks_exact(h * w * 3).collect();
                    return self.encodes_cpu(&images, (h, w), x.device());
                }
            }
        }
        self.encodes_ops(x)
    }

    /// [`BatchTfms::encodes`] as device-generic candle ops (the path every non-CPU device
    /// takes, and the reference the CPU path is tested against in `tests/batch_tfms.rs`;
    /// hidden from the docs: not part of the supported API).
    #[doc(hidden)]
    pub fn encodes_ops(&self, x: &Tensor) -> Result<Tensor> {
        self.check_size()?;
        let x = IntToFloatTensor.encodes(x)?;
        let (n, _, h, w) = x.dims4()?;
        let x = match self.affine {
            Affine::None => x,
            Affine::ToSize | Affine::ItemSize => {
                let (oh, ow) = self.output_size((h, w));
                let grid = identity_grid(n, oh, ow, x.device())?;
                let range = identity_grid_range(oh, ow);
                fastai_grid_sample_with_range(&x, &grid, range)?
            }
        };
        self.normalize.encodes(&x)
    }

    /// Runs the pipeline on item-transformed images (all the same size) and returns the model
    /// input on `device`: the same as [`BatchTfms::stack`] then [`BatchTfms::encodes`], and on
    /// the CPU without building the `u8` batch first.
    pub fn encodes_images(&self, images: &[image::RgbImage], device: &Device) -> Result<Tensor> {
        let first = images
            .first()
            .ok_or_else(|| Error::InvalidArgument("empty batch".into()))?;
        if !device.is_cpu() {
            return self.encodes(&Self::stack(images, device)?);
        }
        self.check_size()?;
        let (w, h) = first.dimensions();
        if let Some(img) = images.iter().find(|i| i.dimensions() != (w, h)) {
            return Err(Error::InvalidArgument(format!(
                "batch images differ in size: {}x{} and {}x{}",
                w,
                h,
                img.width(),
                img.height()
            )));
        }
        if w == 0 || h == 0 {
            return self.encodes(&Self::stack(images, device)?);
        }
        let raws: Vec<&[u8]> = images.iter().map(|i| i.as_raw().as_slice()).collect();
        self.encodes_cpu(&raws, (h as usize, w as usize), device)
    }

    fn encodes_cpu(
        &self,
        images: &[&[u8]],
        (h, w): (usize, usize),
        device: &Device,
    ) -> Result<Tensor> {
        let (oh, ow) = self.output_size((h, w));
        let out = match self.affine {
            Affine::None => cpu::encodes_plain(images, (h, w), &self.normalize),
            Affine::ToSize | Affine::ItemSize => {
                cpu::encodes(images, (h, w), (oh, ow), &self.normalize)
            }
        };
        Ok(Tensor::from_vec(out, (images.len(), 3, oh, ow), device)?)
    }

    fn check_size(&self) -> Result<()> {
        let max = crate::item_tfms::MAX_SIDE as usize;
        if self.affine != Affine::ToSize {
            return Ok(());
        }
        if self.height == 0 || self.width == 0 || self.height.max(self.width) > max {
            return Err(Error::InvalidArgument(format!(
                "batch transform size must be between 1 and {max} per side, got {}x{}",
                self.height, self.width
            )));
        }
        Ok(())
    }

    /// Moves a batch of item-transformed images to `device` as one `u8` `(N, H, W, 3)`
    /// tensor. All images must have the same size.
    pub fn stack(images: &[image::RgbImage], device: &Device) -> Result<Tensor> {
        let first = images
            .first()
            .ok_or_else(|| Error::InvalidArgument("empty batch".into()))?;
        let (w, h) = first.dimensions();
        let mut data = Vec::with_capacity(images.len() * (w * h * 3) as usize);
        for img in images {
            if img.dimensions() != (w, h) {
                return Err(Error::InvalidArgument(format!(
                    "batch images differ in size: {}x{} and {}x{}",
                    w,
                    h,
                    img.width(),
                    img.height()
                )));
            }
            data.extend_from_slice(img.as_raw());
        }
        Ok(Tensor::from_vec(
            data,
            (images.len(), h as usize, w as usize, 3),
            device,
        )?)
    }
}
