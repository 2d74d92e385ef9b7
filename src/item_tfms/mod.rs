//! Stage 2, item transforms: what fastai's `item_tfms` do to one image on the validation set,
//! byte for byte.
//!
//! | fastai | here |
//! |---|---|
//! | `Resize(size, method, pad_mode, resamples)` | [`Resize`] ([`ResizeMethod`], [`PadMode`], [`Resample`]) |
//! | `CropPad(size, pad_mode)` | [`CropPad`] |
//! | `RandomResizedCrop(size, val_xtra=...)` (validation: squish, centre crop) | [`RandomResizedCrop`] |
//!
//! A recipe's item transforms are an [`ItemTfms`] list of [`ItemTfm`] steps run in order, as
//! fastai's `after_item` pipeline does. PIL's resamplers are [`resize_bilinear`] and
//! [`resize_nearest`], fastai's `crop_pad` with torchvision's padding [`crop_pad_window`].

mod crop_pad;
mod pad;
mod pil_resize;
mod random_resized_crop;
mod resize;

use image::RgbImage;

use crate::error::Result;

pub use crop_pad::CropPad;
pub use pad::{crop_pad_window, PadMode};
pub use pil_resize::{resize_bilinear, resize_bilinear_crop, resize_nearest};
pub use random_resized_crop::RandomResizedCrop;
pub use resize::{Resize, ResizeMethod};

/// The largest side, in pixels, an item transform may produce (guards against sizes whose
/// buffers cannot be allocated).
pub const MAX_SIDE: u32 = 1 << 15;

/// The PIL resampling filter of an item transform (`resamples[0]` in fastai).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resample {
    /// `Image.BILINEAR` (fastai's default).
    #[default]
    Bilinear,
    /// `Image.NEAREST`.
    Nearest,
}

impl Resample {
    /// The recipe's name (`"bilinear"`, `"nearest"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Resample::Bilinear => "bilinear",
            Resample::Nearest => "nearest",
        }
    }

    /// Parses the recipe's name of a filter.
    pub fn parse(name: &str) -> Option<Resample> {
        match name {
            "bilinear" => Some(Resample::Bilinear),
            "nearest" => Some(Resample::Nearest),
            _ => None,
        }
    }
}

/// PIL's `Image.resize((width, height), resample)` (a copy when the size is unchanged).
pub fn resize(img: &RgbImage, width: u32, height: u32, resample: Resample) -> Result<RgbImage> {
    match resample {
        Resample::Bilinear => resize_bilinear(img, width, height),
        Resample::Nearest => resize_nearest(img, width, height),
    }
}

/// One item transform step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ItemTfm {
    /// fastai's `Resize`.
    Resize(Resize),
    /// fastai's `CropPad`.
    CropPad(CropPad),
    /// fastai's `RandomResizedCrop` (validation path).
    RandomResizedCrop(RandomResizedCrop),
}

impl ItemTfm {
    /// Applies the step to one RGB image.
    pub fn encodes(&self, img: &RgbImage) -> Result<RgbImage> {
        match self {
            ItemTfm::Resize(t) => t.encodes(img),
            ItemTfm::CropPad(t) => t.encodes(img),
            ItemTfm::RandomResizedCrop(t) => t.encodes(img),
        }
    }

    /// The `(height, width)` every image comes out at.
    pub fn output_size(&self) -> (u32, u32) {
        match self {
            ItemTfm::Resize(t) => (t.height, t.width),
            ItemTfm::CropPad(t) => (t.height, t.width),
            ItemTfm::RandomResizedCrop(t) => (t.height, t.width),
        }
    }

    /// fastai's class name of the step.
    pub fn name(&self) -> &'static str {
        match self {
            ItemTfm::Resize(_) => "Resize",
            ItemTfm::CropPad(_) => "CropPad",
            ItemTfm::RandomResizedCrop(_) => "RandomResizedCrop",
        }
    }
}

impl From<Resize> for ItemTfm {
    fn from(t: Resize) -> Self {
        ItemTfm::Resize(t)
    }
}

impl From<CropPad> for ItemTfm {
    fn from(t: CropPad) -> Self {
        ItemTfm::CropPad(t)
    }
}

impl From<RandomResizedCrop> for ItemTfm {
    fn from(t: RandomResizedCrop) -> Self {
        ItemTfm::RandomResizedCrop(t)
    }
}

/// The item transforms of a recipe: [`ItemTfm`] steps applied in order (fastai's
/// `after_item` at validation, `ToTensor` aside).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemTfms(pub Vec<ItemTfm>);

impl Default for ItemTfms {
    /// The pets lesson's `RandomResizedCrop(460)`.
    fn default() -> Self {
        ItemTfms(vec![RandomResizedCrop::default().into()])
    }
}

impl ItemTfms {
    /// Applies every step in order (a copy of the image when there are none).
    pub fn encodes(&self, img: &RgbImage) -> Result<RgbImage> {
        let mut steps = self.0.iter();
        let Some(first) = steps.next() else {
            return Ok(img.clone());
        };
        let mut out = first.encodes(img)?;
        for t in steps {
            out = t.encodes(&out)?;
        }
        Ok(out)
    }

    /// The `(height, width)` every image comes out at (the last step's size), or `None`
    /// without steps (images keep their own sizes).
    pub fn output_size(&self) -> Option<(u32, u32)> {
        self.0.last().map(ItemTfm::output_size)
    }

    /// The steps.
    pub fn steps(&self) -> &[ItemTfm] {
        &self.0
    }
}

impl From<Vec<ItemTfm>> for ItemTfms {
    fn from(v: Vec<ItemTfm>) -> Self {
        ItemTfms(v)
    }
}

impl From<ItemTfm> for ItemTfms {
    fn from(t: ItemTfm) -> Self {
        ItemTfms(vec![t])
    }
}

impl From<Resize> for ItemTfms {
    fn from(t: Resize) -> Self {
        ItemTfms(vec![t.into()])
    }
}

impl From<CropPad> for ItemTfms {
    fn from(t: CropPad) -> Self {
        ItemTfms(vec![t.into()])
    }
}

impl From<RandomResizedCrop> for ItemTfms {
    fn from(t: RandomResizedCrop) -> Self {
        ItemTfms(vec![t.into()])
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
    use crate::error::Error;

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
        assert!(matches!(
            CropPad::new(u32::MAX).encodes(&img),
            Err(Error::InvalidArgument(_))
        ));
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
        assert_eq!(CropPad::with_size(4, 7).encodes(&img).unwrap(), p);
    }

    #[test]
    fn tiny_images_and_sizes_never_panic() {
        let methods = [ResizeMethod::Crop, ResizeMethod::Squish, ResizeMethod::Pad];
        let pads = [PadMode::Zeros, PadMode::Reflection, PadMode::Border];
        for (w, h) in [(1, 1), (1, 5), (7, 1), (2, 3)] {
            let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
            for (sh, sw) in [(1, 1), (1, 9), (9, 1), (4, 6)] {
                for m in methods {
                    for p in pads {
                        for r in [Resample::Bilinear, Resample::Nearest] {
                            let t = Resize::with_size(sh, sw).method(m).pad_mode(p).resample(r);
                            if let Ok(out) = t.encodes(&img) {
                                assert_eq!(out.dimensions(), (sw, sh));
                            }
                        }
                    }
                    let c = CropPad::with_size(sh, sw).pad_mode(pads[sh as usize % 3]);
                    assert_eq!(c.encodes(&img).unwrap().dimensions(), (sw, sh));
                }
            }
        }
    }

    #[test]
    fn steps_run_in_order() {
        let img = RgbImage::from_fn(9, 5, |x, y| image::Rgb([x as u8, y as u8, 1]));
        let t = ItemTfms(vec![CropPad::new(4).into(), Resize::new(2).into()]);
        assert_eq!(t.output_size(), Some((2, 2)));
        let step = Resize::new(2).encodes(&CropPad::new(4).encodes(&img).unwrap());
        assert_eq!(t.encodes(&img).unwrap(), step.unwrap());
        assert_eq!(ItemTfms(vec![]).encodes(&img).unwrap(), img);
    }
}
