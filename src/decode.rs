//! Stage 1, decode: fastai's `PILImage.create`, i.e. `Image.open(fn)` then `convert('RGB')`.
//!
//! The result is always an 8-bit RGB image ([`image::RgbImage`]), converted the way PIL's
//! `convert('RGB')` converts it. Each row is tested byte for byte against Pillow 13
//! (`tests/hostile_images.rs`, fixtures from `scripts/make_hostile_fixtures.py`):
//!
//! | file | PIL mode | what happens | against PIL |
//! |---|---|---|---|
//! | 8-bit RGB | `RGB` | unchanged (a PNG `tRNS` colour key ignored) | identical |
//! | 8-bit RGBA | `RGBA` | alpha dropped (no premultiplication, no background) | identical |
//! | 8-bit gray; 1, 2, 4-bit gray PNG | `L`, `1` | gray (scaled to 0-255) copied to R, G, B | identical |
//! | 8-bit gray + alpha | `LA` | gray copied, alpha dropped | identical |
//! | palette PNG or GIF, with or without transparency | `P` | palette looked up, transparency ignored | identical |
//! | BMP 24 and 32-bit; WebP lossless (RGB, RGBA) and lossy | `RGB`, `RGBA` | as above | identical |
//! | 16-bit RGB, RGBA PNG | `RGB`, `RGBA` | high byte of each sample | identical |
//! | 16-bit gray + alpha PNG | `RGBA` | high byte of the gray | identical |
//! | 16-bit gray PNG | `I;16` | **clipped** to 255 (PIL does not scale: mostly white) | identical |
//! | CMYK TIFF, 8 or 16-bit | `CMYK` | high byte; PIL's `cmyk2rgb`: `255 - k - round((255 - k) c / 255)` | identical |
//! | CMYK JPEG | `CMYK` | the JPEG decoder's own conversion | within 1 level |
//! | floating point (TIFF) | `F` | refused: [`Error::UnsupportedImage`] | - |
//! | other layouts the decoders do not read | - | refused: [`Error::UnsupportedImage`] | - |
//!
//! Hostile input is refused with a typed error naming the file (or `<memory>`): an empty file
//! or unknown bytes ([`Error::UnrecognizedImage`]), a format recognised but not built in
//! (QOI, ICO, PNM, HDR, AVIF, ...: [`Error::UnsupportedImage`]), truncated or corrupt data
//! ([`Error::ImageDecode`]; a JPEG without its end marker is refused as PIL refuses it), an
//! image with no pixels, and a decompression bomb: an image declaring more than
//! [`DecodeOptions::max_pixels`] pixels (default [`DEFAULT_MAX_PIXELS`], PIL's
//! `DecompressionBombError` limit) is refused from its header, before any pixel buffer is
//! allocated ([`Error::ImageTooLarge`]).
//!
//! Like fastai, the EXIF orientation tag is ignored by default: pixels are used as stored.
//! [`DecodeOptions::apply_exif_orientation`] applies it (as PIL's `ImageOps.exif_transpose`).
//!
//! JPEG decoding uses the `image` crate's decoder, which differs from PIL's libjpeg-turbo by a
//! few levels on some pixels (see the README's fidelity figures); PNG decodes identically.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// PIL's `Image.MAX_IMAGE_PIXELS` (`1024 * 1024 * 1024 // 4 // 3`): above it PIL warns.
pub const PIL_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// The default pixel limit, `2 * PIL_MAX_IMAGE_PIXELS` = 178,956,970 pixels: PIL raises
/// `DecompressionBombError` for images with more pixels than this, so every image PIL opens
/// (with or without its warning) is decoded here too, and nothing larger. Its 8-bit RGB buffer
/// is just under 512 MiB.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * PIL_MAX_IMAGE_PIXELS;

/// How images are decoded: the decompression-bomb limit and the EXIF opt-in.
///
/// The default ([`DecodeOptions::default`]) is what fastai does, with PIL's bomb limit:
/// at most [`DEFAULT_MAX_PIXELS`] pixels and the EXIF orientation ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// The most pixels (`width * height`) an image may declare; larger images are refused with
    /// [`Error::ImageTooLarge`] after reading only their header, before any pixel buffer is
    /// allocated. It also bounds the decoder's allocations (8 bytes a pixel plus 64 MiB), so
    /// memory stays bounded whatever the file says. Raise it for huge images; `u64::MAX` (PIL's
    /// `Image.MAX_IMAGE_PIXELS = None`) leaves a hostile file free to exhaust memory, which
    /// aborts the process.
    pub max_pixels: u64,
    /// Rotate and flip the image as its EXIF orientation tag says (JPEG, PNG, TIFF, WebP).
    /// Off by default: fastai's `PILImage.create` ignores the tag, and so must a model that
    /// was trained on unrotated pixels.
    pub apply_exif_orientation: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
            apply_exif_orientation: false,
        }
    }
}

impl DecodeOptions {
    /// These options with another pixel limit.
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// These options with the EXIF orientation applied (or not).
    pub fn with_exif_orientation(mut self, apply: bool) -> Self {
        self.apply_exif_orientation = apply;
        self
    }
}

/// Opens and decodes an image file, converting it to RGB as `PILImage.create` does, with the
/// default [`DecodeOptions`].
///
/// The format is guessed from the file's content, not its extension.
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    load_image_with(path, &DecodeOptions::default())
}

/// [`load_image`] with explicit [`DecodeOptions`] (pixel limit, EXIF orientation).
pub fn load_image_with(path: impl AsRef<Path>, options: &DecodeOptions) -> Result<RgbImage> {
    let path = path.as_ref();
    let io_err = |source| Error::Io {
        what: "image",
        path: path.to_path_buf(),
        source,
    };
    if std::fs::metadata(path).map_err(io_err)?.is_dir() {
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a directory",
        )));
    }
    let bytes = std::fs::read(path).map_err(io_err)?;
    decode_image(&bytes, &path.display().to_string(), options)
}

/// Decodes an encoded image held in memory (PNG, JPEG, ...) and converts it to RGB, with the
/// default [`DecodeOptions`]. Errors name the origin `<memory>`.
pub fn load_image_from_memory(bytes: &[u8]) -> Result<RgbImage> {
    load_image_from_memory_with(bytes, &DecodeOptions::default())
}

/// [`load_image_from_memory`] with explicit [`DecodeOptions`].
pub fn load_image_from_memory_with(bytes: &[u8], options: &DecodeOptions) -> Result<RgbImage> {
    decode_image(bytes, "<memory>", options)
}

/// The most bytes a decoder may allocate for an image of `max_pixels` pixels: 8 bytes a
/// pixel (16-bit RGBA, the widest layout converted here) plus slack for the decoders' own
/// buffers.
fn alloc_limit(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(8).saturating_add(64 << 20)
}

fn decode_image(bytes: &[u8], origin: &str, options: &DecodeOptions) -> Result<RgbImage> {
    let decode_err = |source| match source {
        image::ImageError::Unsupported(e) => Error::UnsupportedImage {
            origin: origin.to_string(),
            reason: e.to_string(),
        },
        source => Error::ImageDecode {
            origin: origin.to_string(),
            source,
        },
    };
    if bytes.is_empty() {
        return Err(Error::UnrecognizedImage {
            origin: origin.to_string(),
            reason: "the file is empty (0 bytes)".into(),
        });
    }
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(image::ImageError::IoError(e)))?;
    let reader_format = reader.format();
    if reader_format.is_none() {
        return Err(Error::UnrecognizedImage {
            origin: origin.to_string(),
            reason: format!(
                "not an image in a supported format (PNG, JPEG, GIF, BMP, WebP, TIFF); \
                 it starts with {:02x?}",
                &bytes[..bytes.len().min(8)]
            ),
        });
    };
    if reader_format == Some(image::ImageFormat::Jpeg) && !jpeg_has_end(bytes) {
        return Err(decode_err(image::ImageError::Decoding(
            image::error::DecodingError::new(
                image::error::ImageFormatHint::Exact(image::ImageFormat::Jpeg),
                "the file is truncated: no end-of-image marker (FF D9) after the scan data \
                 (PIL refuses it too: \"image file is truncated\")",
            ),
        )));
    }
    if reader_format == Some(image::ImageFormat::Png) {
        if let Err(reason) = png_palette_ok(bytes) {
            return Err(decode_err(image::ImageError::Decoding(
                image::error::DecodingError::new(
                    image::error::ImageFormatHint::Exact(image::ImageFormat::Png),
                    reason,
                ),
            )));
        }
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(alloc_limit(options.max_pixels));
    reader.limits(limits);
    let mut decoder = guarded(origin, || reader.into_decoder()).map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(Error::UnsupportedImage {
            origin: origin.to_string(),
            reason: format!("image has no pixels ({width}x{height})"),
        });
    }
    if u64::from(width) * u64::from(height) > options.max_pixels
        || decoder.total_bytes() > alloc_limit(options.max_pixels)
    {
        return Err(Error::ImageTooLarge {
            origin: origin.to_string(),
            width,
            height,
            max_pixels: options.max_pixels,
        });
    }
    let orientation = if options.apply_exif_orientation {
        // A broken EXIF block is ignored (as a viewer would), never fatal.
        decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms)
    } else {
        image::metadata::Orientation::NoTransforms
    };
    let cmyk_tiff = reader_format == Some(image::ImageFormat::Tiff)
        && matches!(
            decoder.original_color_type(),
            image::ExtendedColorType::Cmyk8 | image::ExtendedColorType::Cmyk16
        );
    let mut img = if cmyk_tiff {
        // The `image` crate converts CMYK to RGB itself, truncating where PIL rounds; read the
        // raw CMYK samples and convert them as PIL does.
        DynamicImage::ImageRgb8(decode_cmyk_tiff(bytes, width, height, origin)?)
    } else {
        guarded(origin, || DynamicImage::from_decoder(decoder)).map_err(decode_err)?
    };
    img.apply_orientation(orientation);
    to_rgb(img, origin)
}

/// Runs a decoder step, turning a panic inside the decoder into a decoding error: a bug in a
/// codec crate must not take down a process that serves other requests. (With
/// `panic = "abort"` nothing can be caught; the checks before decoding still apply.)
fn guarded<T>(origin: &str, f: impl FnOnce() -> image::ImageResult<T>) -> image::ImageResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(image::ImageError::Decoding(
            image::error::DecodingError::new(
                image::error::ImageFormatHint::Unknown,
                format!("the decoder panicked on {origin}: {what}"),
            ),
        ))
    })
}

/// Checks a PNG's `PLTE` chunk before decoding: its length must be a whole number of RGB
/// entries, 1 to 256 (PNG spec 11.2.3). The `png` crate (0.18) panics on a palette of another
/// length when it expands it (found by fuzzing). The chunks before the first `IDAT` are walked
/// by their lengths; a layout too broken to walk is left to the decoder to reject.
fn png_palette_ok(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut i = 8; // after the signature
    while let Some(head) = bytes.get(i..i + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        if kind == b"PLTE" && (!len.is_multiple_of(3) || len == 0 || len > 768) {
            return Err(format!(
                "invalid PLTE chunk: {len} bytes, not 1 to 256 RGB entries of 3 bytes"
            ));
        }
        if kind == b"IDAT" || kind == b"IEND" {
            break;
        }
        i = i.saturating_add(12).saturating_add(len);
    }
    Ok(())
}

/// Whether a JPEG has an end-of-image marker after its first scan header, i.e. was not cut
/// short. The `image` crate's decoder fills a truncated scan with gray and succeeds; PIL
/// (without `LOAD_TRUNCATED_IMAGES`, as fastai runs it) raises "image file is truncated".
///
/// The marker segments before the first scan are walked by their lengths (so an EXIF
/// thumbnail's own markers are skipped); entropy-coded data escapes every `FF` byte, so an
/// `FF D9` after the scan header is a real marker. Bytes after it are ignored, as PIL ignores
/// them. A header too malformed to walk is left to the decoder to reject.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    let scan = loop {
        // Fill bytes before a marker.
        while bytes.get(i) == Some(&0xFF) && bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(i), bytes.get(i + 1)) else {
            return true;
        };
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD8 => i += 2,
            _ => {
                let (Some(&hi), Some(&lo)) = (bytes.get(i + 2), bytes.get(i + 3)) else {
                    return false;
                };
                let next = i + 2 + usize::from(u16::from_be_bytes([hi, lo]));
                if marker == 0xDA {
                    break next;
                }
                i = next;
            }
        }
    };
    bytes
        .get(scan..)
        .is_some_and(|rest| rest.windows(2).any(|w| w == [0xFF, 0xD9]))
}

/// An 8 or 16-bit CMYK TIFF converted to RGB as PIL's `convert('RGB')` does:
/// `255 - k - round((255 - k) * c / 255)`, with PIL's integer rounding (`MULDIV255`).
fn decode_cmyk_tiff(bytes: &[u8], width: u32, height: u32, origin: &str) -> Result<RgbImage> {
    let tiff_err = |e: tiff::TiffError| {
        image::ImageError::Decoding(image::error::DecodingError::new(
            image::error::ImageFormatHint::Exact(image::ImageFormat::Tiff),
            e,
        ))
    };
    let decoded = guarded(origin, || {
        let mut decoder =
            tiff::decoder::Decoder::new(std::io::Cursor::new(bytes)).map_err(tiff_err)?;
        decoder.read_image().map_err(tiff_err)
    })
    .map_err(|source| Error::ImageDecode {
        origin: origin.to_string(),
        source,
    })?;
    let samples = match decoded {
        tiff::decoder::DecodingResult::U8(v) => v,
        // PIL opens 16-bit CMYK as 8-bit CMYK, keeping each sample's high byte.
        tiff::decoder::DecodingResult::U16(v) => v.into_iter().map(hi).collect(),
        _ => Vec::new(),
    };
    let pixels = width as usize * height as usize;
    if samples.len() != pixels * 4 {
        return Err(Error::UnsupportedImage {
            origin: origin.to_string(),
            reason: format!(
                "CMYK TIFF layout not supported ({} samples for {width}x{height} pixels)",
                samples.len()
            ),
        });
    }
    let muldiv255 = |a: u8, b: u8| {
        let t = u32::from(a) * u32::from(b) + 128;
        (((t >> 8) + t) >> 8) as u8
    };
    Ok(from_samples(width, height, &samples, 4, |p| {
        let nk = 255 - p[3];
        [
            nk.saturating_sub(muldiv255(p[0], nk)),
            nk.saturating_sub(muldiv255(p[1], nk)),
            nk.saturating_sub(muldiv255(p[2], nk)),
        ]
    }))
}

/// Converts a decoded image to 8-bit RGB the way PIL's `convert('RGB')` does.
///
/// Returns [`Error::UnsupportedImage`] for pixel formats whose PIL conversion is not
/// reproduced (floating-point images), and for images with no pixels.
pub fn to_rgb(img: DynamicImage, origin: &str) -> Result<RgbImage> {
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::UnsupportedImage {
            origin: origin.to_string(),
            reason: format!("image has no pixels ({}x{})", img.width(), img.height()),
        });
    }
    let (w, h) = (img.width(), img.height());
    let rgb = match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => {
            from_samples(w, h, rgba.as_raw(), 4, |s| [s[0], s[1], s[2]])
        }
        DynamicImage::ImageLuma8(l) => from_samples(w, h, l.as_raw(), 1, |s| [s[0]; 3]),
        DynamicImage::ImageLumaA8(la) => from_samples(w, h, la.as_raw(), 2, |s| [s[0]; 3]),
        // PIL opens 16-bit RGB(A) and gray+alpha PNGs as 8-bit RGB/RGBA, keeping each sample's
        // high byte ("RGB;16B", "RGBA;16B", "LA;16B" raw modes).
        DynamicImage::ImageRgb16(rgb) => {
            from_samples(w, h, rgb.as_raw(), 3, |s| [hi(s[0]), hi(s[1]), hi(s[2])])
        }
        DynamicImage::ImageRgba16(rgba) => {
            from_samples(w, h, rgba.as_raw(), 4, |s| [hi(s[0]), hi(s[1]), hi(s[2])])
        }
        DynamicImage::ImageLumaA16(la) => from_samples(w, h, la.as_raw(), 2, |s| [hi(s[0]); 3]),
        // PIL opens 16-bit gray as mode "I;16", and its conversion to RGB clips each value to
        // 0..=255 (it does not scale): a 16-bit gray photo comes out mostly white, in PIL and
        // so in fastai, and here too.
        DynamicImage::ImageLuma16(l) => {
            from_samples(w, h, l.as_raw(), 1, |s| [s[0].min(255) as u8; 3])
        }
        other => {
            return Err(Error::UnsupportedImage {
                origin: origin.to_string(),
                reason: format!(
                    "pixel format {:?} is not converted to RGB the way PIL does; \
                     supported: 8-bit RGB, RGBA, L, LA, palette and 1/2/4-bit images, \
                     16-bit RGB, RGBA, L and LA",
                    other.color()
                ),
            })
        }
    };
    if rgb.dimensions() != (w, h) {
        return Err(Error::UnsupportedImage {
            origin: origin.to_string(),
            reason: format!("pixel buffer does not match its {w}x{h} size"),
        });
    }
    Ok(rgb)
}

/// The high byte of a 16-bit sample.
fn hi(v: u16) -> u8 {
    (v >> 8) as u8
}

/// An RGB image from interleaved samples, `channels` a pixel, mapped by `f`.
fn from_samples<T: Copy>(
    w: u32,
    h: u32,
    samples: &[T],
    channels: usize,
    f: impl Fn(&[T]) -> [u8; 3],
) -> RgbImage {
    let mut out = Vec::with_capacity(samples.len() / channels * 3);
    for px in samples.chunks_exact(channels) {
        out.extend_from_slice(&f(px));
    }
    // `image` buffers always hold `w * h * channels` samples, so this is always `Some`; the
    // fallback (an empty image, refused by the caller's size check) keeps this panic-free.
    RgbImage::from_raw(w, h, out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_decoder_step_becomes_a_decoding_error() {
        let r: image::ImageResult<()> = guarded("x.png", || panic!("boom {}", 7));
        let err = r.unwrap_err().to_string();
        assert!(err.contains("panicked on x.png: boom 7"), "{err}");
        let ok: image::ImageResult<u8> = guarded("x.png", || Ok(3));
        assert_eq!(ok.unwrap(), 3);
    }

    #[test]
    fn png_palettes_must_be_whole_rgb_entries() {
        let png = |plte_len: u32| {
            let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
            v.extend([0; 13 + 4]);
            v.extend(plte_len.to_be_bytes());
            v.extend(b"PLTE");
            v.extend(vec![0; plte_len as usize + 4]);
            v.extend(b"\0\0\0\0IDAT");
            v
        };
        assert!(png_palette_ok(&png(48)).is_ok());
        assert!(png_palette_ok(&png(768)).is_ok());
        for bad in [0, 53, 769, 771] {
            assert!(png_palette_ok(&png(bad)).is_err(), "{bad}");
        }
        // Too short to walk: left to the decoder.
        assert!(png_palette_ok(b"\x89PNG\r\n\x1a\n\0\0").is_ok());
    }
}
