//! fastai's `CropPad` item transform.

use image::RgbImage;

use super::pad::{crop_pad_window, PadMode};
use super::MAX_SIDE;
use crate::error::{Error, Result};

/// fastai's `CropPad(size, pad_mode)`: the centred `size` window of the image, cut where the
/// image is larger and padded (with `pad_mode`, zeros by default) where it is smaller. The
/// top-left corner is `(orig - size) // 2` (floor division, negative when padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropPad {
    /// Output height in pixels.
    pub height: u32,
    /// Output width in pixels.
    pub width: u32,
    /// How padding is filled.
    pub pad_mode: PadMode,
}

impl CropPad {
    /// `CropPad(size)`: square, zero padding (fastai's default).
    pub fn new(size: u32) -> Self {
        CropPad::with_size(size, size)
    }

    /// `CropPad((height, width))` with zero padding.
    pub fn with_size(height: u32, width: u32) -> Self {
        CropPad {
            height,
            width,
            pad_mode: PadMode::Zeros,
        }
    }

    /// This transform with another pad mode.
    pub fn pad_mode(mut self, pad_mode: PadMode) -> Self {
        self.pad_mode = pad_mode;
        self
    }

    /// Applies the transform to one RGB image.
    pub fn encodes(&self, img: &RgbImage) -> Result<RgbImage> {
        if self.width == 0 || self.height == 0 || self.width.max(self.height) > MAX_SIDE {
            return Err(Error::InvalidArgument(format!(
                "CropPad size must be between 1 and {MAX_SIDE} per side, got {}x{} (HxW)",
                self.height, self.width
            )));
        }
        let (w, h) = (i64::from(img.width()), i64::from(img.height()));
        let tl = (
            (w - i64::from(self.width)).div_euclid(2),
            (h - i64::from(self.height)).div_euclid(2),
        );
        crop_pad_window(img, (self.width, self.height), tl, self.pad_mode)
    }
}
