//! fastai's `Resize` item transform, validation path.

use image::RgbImage;

use super::pad::{crop_pad_window, PadMode};
use super::{resize, Resample, MAX_SIDE};
use crate::error::{Error, Result};

/// The most pixels the window `Resize` cuts or pads before resizing may hold (a guard against
/// extreme aspect ratios whose padded window could not be allocated).
const MAX_WINDOW_PIXELS: u64 = 1 << 28;

/// fastai's `ResizeMethod`: how `Resize` fits an image to the target aspect ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMethod {
    /// `ResizeMethod.Crop` (the default): cut the largest centred window of the target's
    /// aspect ratio, then resize it.
    #[default]
    Crop,
    /// `ResizeMethod.Squish`: resize the whole image, changing its aspect ratio.
    Squish,
    /// `ResizeMethod.Pad`: pad the image (with the pad mode) to the target's aspect ratio,
    /// centred, then resize it.
    Pad,
}

impl ResizeMethod {
    /// fastai's name (`"crop"`, `"squish"`, `"pad"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResizeMethod::Crop => "crop",
            ResizeMethod::Squish => "squish",
            ResizeMethod::Pad => "pad",
        }
    }

    /// Parses fastai's name of a method.
    pub fn parse(name: &str) -> Option<ResizeMethod> {
        match name {
            "crop" => Some(ResizeMethod::Crop),
            "squish" => Some(ResizeMethod::Squish),
            "pad" => Some(ResizeMethod::Pad),
            _ => None,
        }
    }
}

/// fastai's `Resize(size, method, pad_mode, resamples)` at validation (centred: fastai draws
/// a random window position only on the training set).
///
/// For `crop` and `pad` the window is `int(m * size)` pixels a side, where `m` is the smaller
/// (crop) or larger (pad) of `width / size_w` and `height / size_h`, placed at
/// `int(0.5 * (orig - window))`; it is cut (PIL `crop`) or padded (torchvision `pad`) out of
/// the image, then resized to the size with PIL. `squish` resizes the whole image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    /// Target height in pixels.
    pub height: u32,
    /// Target width in pixels.
    pub width: u32,
    /// How the aspect ratio is fitted.
    pub method: ResizeMethod,
    /// How padding is filled (`pad` method; default reflection).
    pub pad_mode: PadMode,
    /// The PIL filter of the resize (`resamples[0]`; bilinear by default).
    pub resample: Resample,
}

impl Resize {
    /// `Resize(size)`: square, `crop`, reflection padding, bilinear, as fastai's defaults.
    pub fn new(size: u32) -> Self {
        Resize::with_size(size, size)
    }

    /// `Resize((height, width))` with fastai's defaults.
    pub fn with_size(height: u32, width: u32) -> Self {
        Resize {
            height,
            width,
            method: ResizeMethod::Crop,
            pad_mode: PadMode::Reflection,
            resample: Resample::Bilinear,
        }
    }

    /// This transform with another method.
    pub fn method(mut self, method: ResizeMethod) -> Self {
        self.method = method;
        self
    }

    /// This transform with another pad mode.
    pub fn pad_mode(mut self, pad_mode: PadMode) -> Self {
        self.pad_mode = pad_mode;
        self
    }

    /// This transform with another resample filter.
    pub fn resample(mut self, resample: Resample) -> Self {
        self.resample = resample;
        self
    }

    /// The `(width, height)` window cut or padded out of a `w` x `h` image, and its top-left
    /// corner, as fastai computes them (Python floats, `int()` truncating toward zero).
    pub fn window(&self, w: u32, h: u32) -> ((i64, i64), (i64, i64)) {
        let (w, h) = (f64::from(w), f64::from(h));
        let (sw, sh) = (f64::from(self.width), f64::from(self.height));
        let (rw, rh) = (w / sw, h / sh);
        let m = match self.method {
            ResizeMethod::Pad if rw > rh => rw,
            ResizeMethod::Crop if rw < rh => rw,
            ResizeMethod::Squish => return ((w as i64, h as i64), (0, 0)),
            _ => rh,
        };
        let (cw, ch) = ((m * sw) as i64, (m * sh) as i64);
        let left = (0.5 * (w - cw as f64)) as i64;
        let top = (0.5 * (h - ch as f64)) as i64;
        ((cw, ch), (left, top))
    }

    /// Applies the validation transform to one RGB image.
    pub fn encodes(&self, img: &RgbImage) -> Result<RgbImage> {
        if self.width == 0 || self.height == 0 || self.width.max(self.height) > MAX_SIDE {
            return Err(Error::InvalidArgument(format!(
                "Resize size must be between 1 and {MAX_SIDE} per side, got {}x{} (HxW)",
                self.height, self.width
            )));
        }
        if self.method == ResizeMethod::Squish {
            return resize(img, self.width, self.height, self.resample);
        }
        let ((cw, ch), tl) = self.window(img.width(), img.height());
        let fits = |v: i64| v >= 1 && v <= i64::from(u32::MAX);
        if !fits(cw) || !fits(ch) || (cw as u64) * (ch as u64) > MAX_WINDOW_PIXELS {
            return Err(Error::InvalidArgument(format!(
                "Resize({}x{}, method={}) of a {}x{} image needs a {cw}x{ch} window, outside 1..{MAX_WINDOW_PIXELS} pixels",
                self.height,
                self.width,
                self.method.as_str(),
                img.width(),
                img.height()
            )));
        }
        if (cw, ch) == (i64::from(img.width()), i64::from(img.height())) && tl == (0, 0) {
            return resize(img, self.width, self.height, self.resample);
        }
        let window = crop_pad_window(img, (cw as u32, ch as u32), tl, self.pad_mode)?;
        resize(&window, self.width, self.height, self.resample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_fastai_arithmetic() {
        // 451x300 to 29x29: crop keeps int(300/29*29) = 300 (float rounding) a side.
        let r = Resize::new(29);
        assert_eq!(r.window(451, 300), ((300, 300), (75, 0)));
        // Pad: the window is larger than the image; int(0.5 * -151) = -75 (toward zero).
        let p = r.method(ResizeMethod::Pad);
        assert_eq!(p.window(451, 300), ((451, 451), (0, -75)));
    }

    #[test]
    fn degenerate_windows_are_errors() {
        let img = RgbImage::new(1, 3000);
        let r = Resize::with_size(1, 30000).method(ResizeMethod::Pad);
        assert!(matches!(r.encodes(&img), Err(Error::InvalidArgument(_))));
        assert!(Resize::new(0).encodes(&img).is_err());
    }
}
