//! Stage 2, item transforms: what fastai's `item_tfms` do to one image on the validation set.
//!
//! The pets recipe uses `RandomResizedCrop(460)`. On the validation set fastai does not crop
//! randomly: it squishes the whole image to `size + xtra` pixels a side with PIL's bilinear
//! resize, where `xtra = ceil(max(size) * val_xtra / 8) * 8` (72 for 460, so 532x532), then
//! takes a centre crop of `size` (zero padding where the image is smaller). This module
//! reproduces those bytes exactly; [`pil_resize`] holds the resampler.

pub mod pil_resize;

use image::RgbImage;

use crate::error::{Error, Result};

pub use pil_resize::{resize_bilinear, resize_bilinear_crop};

/// The largest side, in pixels, an item transform may produce (guards against sizes whose
/// buffers cannot be allocated).
pub const MAX_SIDE: u32 = 1 << 15;

/// fastai's `RandomResizedCrop` item transform, validation behaviour only (inference never
/// draws random crops).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomResizedCrop {
    /// Final height in pixels.
    pub height: u32,
    /// Final width in pixels.
    pub width: u32,
    /// Extra fraction resized beyond `size` before the centre crop (`val_xtra`, 0.14 in fastai).
    pub val_xtra: f64,
}

impl Default for RandomResizedCrop {
    /// The pets lesson's `RandomResizedCrop(460)`.
    fn default() -> Self {
        RandomResizedCrop::new(460)
    }
}

impl RandomResizedCrop {
    /// `RandomResizedCrop(size)` with fastai's default `val_xtra=0.14`.
    pub fn new(size: u32) -> Self {
        RandomResizedCrop {
            height: size,
            width: size,
            val_xtra: 0.14,
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
    /// bilinear filter, then centre crop (or zero pad) to `width` x `height`.
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
        if rw >= self.width && rh >= self.height {
            // The centre crop lies inside the resized image: resize only that window (the
            // same bytes, with a quarter less work for the pets recipe).
            let left = (rw - self.width) / 2;
            let top = (rh - self.height) / 2;
            return resize_bilinear_crop(img, rw, rh, (left, top, self.width, self.height));
        }
        let resized = resize_bilinear(img, rw, rh)?;
        Ok(crop_pad(&resized, self.width, self.height))
    }
}

/// fastai's `Image.crop_pad(sz)` with the default centre position and zero padding:
/// the top-left corner is `(orig - sz) // 2` (floor division, negative when padding).
pub fn crop_pad(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let left = (w - i64::from(width)).div_euclid(2);
    let top = (h - i64::from(height)).div_euclid(2);
    let mut out = RgbImage::new(width, height);
    for oy in 0..i64::from(height) {
        let sy = oy + top;
        if sy < 0 || sy >= h {
            continue;
        }
        for ox in 0..i64::from(width) {
            let sx = ox + left;
            if sx < 0 || sx >= w {
                continue;
            }
            out.put_pixel(ox as u32, oy as u32, *img.get_pixel(sx as u32, sy as u32));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtra_matches_fastai_for_460() {
        let t = RandomResizedCrop::new(460);
        assert_eq!(t.xtra(), 72);
        assert_eq!(t.resize_to(), (532, 532));
    }

    #[test]
    fn absurd_sizes_are_errors_not_panics() {
        let img = RgbImage::new(3, 3);
        let t = RandomResizedCrop::new(u32::MAX);
        assert!(matches!(t.encodes(&img), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn crop_pad_centres_and_pads_with_zeros() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let c = crop_pad(&img, 3, 3);
        assert_eq!(c.get_pixel(0, 0).0, [1, 0, 9]);
        let p = crop_pad(&img, 7, 4);
        // (5-7)//2 = -1 and (3-4)//2 = -1: one column and one row of padding.
        assert_eq!(p.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(p.get_pixel(1, 1).0, [0, 0, 9]);
        assert_eq!(p.get_pixel(6, 3).0, [0, 0, 0]);
    }
}
