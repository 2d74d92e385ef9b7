//! Stage 1, decode: fastai's `PILImage.create`, i.e. `Image.open(fn)` then `convert('RGB')`.
//!
//! The result is always an 8-bit RGB image ([`image::RgbImage`]), converted the way PIL's
//! `convert('RGB')` converts the modes a photo usually comes in:
//!
//! | PIL mode | what happens |
//! |---|---|
//! | `RGB` | unchanged |
//! | `RGBA` | alpha dropped (no premultiplication, no background) |
//! | `L` | gray copied to R, G and B |
//! | `LA` | gray copied to R, G and B, alpha dropped |
//! | `P` | palette looked up (transparency ignored) |
//!
//! Images of 16 bits per channel or floating point are refused with
//! [`Error::UnsupportedImage`] rather than converted differently from PIL.
//!
//! Like fastai, the EXIF orientation tag is ignored: pixels are used as stored.
//!
//! JPEG decoding uses the `image` crate's decoder, which differs from PIL's libjpeg-turbo by a
//! few levels on some pixels (see the README's fidelity figures); PNG decodes identically.

use std::path::Path;

use image::{DynamicImage, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Opens and decodes an image file, converting it to RGB as `PILImage.create` does.
///
/// The format is guessed from the file's content, not its extension.
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        what: "image",
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes, &path.display().to_string())
}

/// Decodes an encoded image held in memory (PNG, JPEG, ...) and converts it to RGB.
pub fn load_image_from_memory(bytes: &[u8]) -> Result<RgbImage> {
    decode_image(bytes, "<memory>")
}

fn decode_image(bytes: &[u8], origin: &str) -> Result<RgbImage> {
    let decode_err = |source| Error::ImageDecode {
        origin: origin.to_string(),
        source,
    };
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(image::ImageError::IoError(e)))?;
    let img = reader.decode().map_err(decode_err)?;
    to_rgb(img, origin)
}

/// Converts a decoded image to 8-bit RGB the way PIL's `convert('RGB')` does.
///
/// Returns [`Error::UnsupportedImage`] for pixel formats whose PIL conversion is not
/// reproduced (16-bit and floating-point images), and for images with no pixels.
pub fn to_rgb(img: DynamicImage, origin: &str) -> Result<RgbImage> {
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::UnsupportedImage {
            origin: origin.to_string(),
            reason: format!("image has no pixels ({}x{})", img.width(), img.height()),
        });
    }
    let rgb = match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let p = rgba.get_pixel(x, y).0;
            image::Rgb([p[0], p[1], p[2]])
        }),
        DynamicImage::ImageLuma8(l) => RgbImage::from_fn(l.width(), l.height(), |x, y| {
            let v = l.get_pixel(x, y).0[0];
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA8(la) => RgbImage::from_fn(la.width(), la.height(), |x, y| {
            let v = la.get_pixel(x, y).0[0];
            image::Rgb([v, v, v])
        }),
        other => {
            return Err(Error::UnsupportedImage {
                origin: origin.to_string(),
                reason: format!(
                    "pixel format {:?} is not converted to RGB the way PIL does; \
                     only 8-bit RGB, RGBA, L, LA and palette images are supported",
                    other.color()
                ),
            })
        }
    };
    Ok(rgb)
}
