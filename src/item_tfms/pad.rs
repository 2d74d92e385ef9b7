//! fastai's `PadMode` and `Image.crop_pad`: crop a window out of an image, padding where the
//! window leaves it, as `_do_crop_pad` does with PIL's `crop` and torchvision's `pad`.

use image::RgbImage;

use crate::error::{Error, Result};

/// fastai's `PadMode`: how pixels outside an image are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PadMode {
    /// `PadMode.Zeros`: black (torchvision's `constant` padding with fill 0).
    Zeros,
    /// `PadMode.Reflection` (the default of `Resize`): mirror the image without repeating
    /// the edge pixel (numpy's and torchvision's `reflect`), repeatedly when the padding is
    /// wider than the image.
    #[default]
    Reflection,
    /// `PadMode.Border`: repeat the edge pixel (torchvision's `edge`).
    Border,
}

impl PadMode {
    /// The name fastai gives the mode (`"zeros"`, `"reflection"`, `"border"`).
    pub fn as_str(self) -> &'static str {
        match self {
            PadMode::Zeros => "zeros",
            PadMode::Reflection => "reflection",
            PadMode::Border => "border",
        }
    }

    /// Parses fastai's name of a pad mode.
    pub fn parse(name: &str) -> Option<PadMode> {
        match name {
            "zeros" => Some(PadMode::Zeros),
            "reflection" => Some(PadMode::Reflection),
            "border" => Some(PadMode::Border),
            _ => None,
        }
    }

    /// The index in `0..n` that padded position `r` (relative to the image's first pixel,
    /// negative before it, `>= n` after it) reads, or `None` for a zero pixel.
    fn source(self, r: i64, n: i64) -> Option<i64> {
        if (0..n).contains(&r) {
            return Some(r);
        }
        match self {
            PadMode::Zeros => None,
            PadMode::Border => Some(r.clamp(0, n - 1)),
            PadMode::Reflection => {
                if n == 1 {
                    return Some(0);
                }
                let period = 2 * (n - 1);
                let m = r.rem_euclid(period);
                Some(if m < n { m } else { period - m })
            }
        }
    }
}

/// One axis of a crop-pad: the kept source range `[a, b)` and, per output position, the
/// source index (or `None` for a zero pixel).
fn axis(tl: i64, sz: u32, orig: u32, pad: PadMode) -> Option<Vec<Option<u32>>> {
    let (sz, orig) = (i64::from(sz), i64::from(orig));
    // PIL's crop keeps [max(tl, 0), min(tl + sz, orig)); torchvision pads that cropped image.
    let a = tl.max(0);
    let b = (tl + sz).min(orig);
    let n = b - a;
    if n <= 0 {
        return None;
    }
    Some(
        (0..sz)
            .map(|o| pad.source(o + tl - a, n).map(|i| (i + a) as u32))
            .collect(),
    )
}

/// fastai's `Image.crop_pad(sz, tl, pad_mode=...)` without a resize: the `width` x `height`
/// window whose top-left corner is `(left, top)` in the image (negative or past the edges
/// where the window leaves the image: those pixels are padded with `pad_mode`, from the part
/// of the image the window keeps).
///
/// A window that keeps no pixel of the image is an [`Error::InvalidArgument`] (fastai's
/// transforms never make one).
pub fn crop_pad_window(
    img: &RgbImage,
    (width, height): (u32, u32),
    (left, top): (i64, i64),
    pad_mode: PadMode,
) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    let bad = || {
        Error::InvalidArgument(format!(
            "crop_pad: a {width}x{height} window at ({left}, {top}) keeps no pixel of a {w}x{h} image"
        ))
    };
    let xs = axis(left, width, w, pad_mode).ok_or_else(bad)?;
    let ys = axis(top, height, h, pad_mode).ok_or_else(bad)?;
    let src = img.as_raw();
    let stride = w as usize * 3;
    let mut out = vec![0u8; width as usize * height as usize * 3];
    for (row, sy) in out.chunks_exact_mut(width as usize * 3).zip(&ys) {
        let Some(sy) = sy else { continue };
        let line = &src[*sy as usize * stride..(*sy as usize + 1) * stride];
        for (px, sx) in row.chunks_exact_mut(3).zip(&xs) {
            if let Some(sx) = sx {
                let i = *sx as usize * 3;
                px.copy_from_slice(&line[i..i + 3]);
            }
        }
    }
    RgbImage::from_raw(width, height, out)
        .ok_or_else(|| Error::InvalidArgument("crop_pad: internal buffer size".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_repeats_like_numpy() {
        // np.pad(np.arange(3), (7, 8), 'reflect')
        let got: Vec<i64> = (-7..11)
            .map(|r| PadMode::Reflection.source(r, 3).unwrap())
            .collect();
        assert_eq!(got, [1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2]);
        assert_eq!(PadMode::Reflection.source(-4, 1), Some(0));
        assert_eq!(PadMode::Border.source(-4, 5), Some(0));
        assert_eq!(PadMode::Border.source(9, 5), Some(4));
        assert_eq!(PadMode::Zeros.source(5, 5), None);
    }

    #[test]
    fn a_window_outside_the_image_is_an_error() {
        let img = RgbImage::new(4, 4);
        assert!(crop_pad_window(&img, (2, 2), (10, 0), PadMode::Zeros).is_err());
        assert!(crop_pad_window(&img, (2, 2), (1, 1), PadMode::Zeros).is_ok());
    }
}
