//! fastai's `RandomResizedCrop`, validation path.

use image::RgbImage;

use super::{resize, Resample, MAX_SIDE};
use crate::error::{Error, Result};
use crate::item_tfms::pil_resize::resize_bilinear_crop;

/// fastai's `RandomResizedCrop` item transform, validation behaviour only (inference never
/// draws random crops): squish the whole image to `size + xtra` pixels a side with PIL, where
/// `xtra = ceil(max(size) * val_xtra / 8) * 8` (72 for 460, so 532x532), then take a centre
/// crop of `size` (zero padding where the image is smaller).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomResizedCrop {
    /// Final height in pixels.
    pub height: u32,
    /// Final width in pixels.
    pub width: u32,
    /// Extra fraction resized beyond `size` before the centre crop (`val_xtra`, 0.14 in fastai).
    pub val_xtra: f64,
    /// The PIL filter of the squish (`resamples[0]`; bilinear by default).
    pub resample: Resample,
}

impl Default for RandomResizedCrop {
    /// The pets lesson's `RandomResizedCrop(460)`.
    fn default() -> Self {
        RandomResizedCrop::new(460)
    }
}

impl RandomResizedCrop {
    /// `RandomResizedCrop(size)` with fastai's defaults (`val_xtra=0.14`, bilinear).
    pub fn new(size: u32) -> Self {
        RandomResizedCrop {
            height: size,
            width: size,
            val_xtra: 0.14,
            resample: Resample::Bilinear,
        }
    }

    /// The extra pixels added to each side's size before the centre crop:
    /// `ceil(max(size) * val_xtra / 8) * 8`, computed in `f64` as Python does.
    pub fn xtra(&self) -> u32 {
        let m = f64::from(self.height.max(self.width));
        ((m * self.val_xtra / 8.0).ceil() * 8.0).max(0.0) as u32
    }

    /// The `(width, height)` the whole image is squished to before the centre crop.
    pub fn resize_to(&self) -> (u32, u32) {
        let x = self.xtra();
        (self.width.saturating_add(x), self.height.saturating_add(x))
    }

    /// Applies the validation transform: squish-resize to [`Self::resize_to`] with PIL's
    /// filter, then centre crop (or zero pad) to `width` x `height`.
    pub fn encodes(&self, img: &RgbImage) -> Result<RgbImage> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::InvalidArgument(format!(
                "RandomResizedCrop size must be positive, got {}x{}",
                self.width, self.height
            )));
        }
        if !self.val_xtra.is_finite() || self.val_xtra < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "RandomResizedCrop val_xtra must be finite and >= 0, got {}",
                self.val_xtra
            )));
        }
        let (rw, rh) = self.resize_to();
        if rw.max(rh) > MAX_SIDE {
            return Err(Error::InvalidArgument(format!(
                "RandomResizedCrop would resize to {rw}x{rh}, over the {MAX_SIDE}-pixel limit per side"
            )));
        }
        if self.resample == Resample::Bilinear && rw >= self.width && rh >= self.height {
            // The centre crop lies inside the resized image: resize only that window (the
            // same bytes, with a quarter less work for the pets recipe).
            let left = (rw - self.width) / 2;
            let top = (rh - self.height) / 2;
            return resize_bilinear_crop(img, rw, rh, (left, top, self.width, self.height));
        }
        let resized = resize(img, rw, rh, self.resample)?;
        Ok(super::crop_pad(&resized, self.width, self.height))
    }
}
