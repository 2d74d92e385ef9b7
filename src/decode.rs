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
//! | JPEG: gray, YCbCr (every sampling), stored RGB; baseline, progressive, arithmetic | `L`, `RGB` | libjpeg-turbo's pixels (`decode::jpeg`), gray copied to R, G, B | identical |
//! | CMYK and YCCK JPEG | `CMYK` | libjpeg's CMYK (Adobe-inverted, as PIL reads it), then PIL's `cmyk2rgb` | identical |
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
//! PNG chunk CRCs are checked where PIL checks them, and only there (Pillow 13 with fastai's
//! default `ImageFile.LOAD_TRUNCATED_IMAGES = False`; each case is a fixture checked against
//! Pillow in `tests/hostile_images.rs`). A wrong CRC in any chunk before the first `IDAT`
//! (`IHDR`, `PLTE`, `tRNS`, `iCCP`, `gAMA`, `pHYs`, `tEXt`, ..., and chunks PIL does not
//! interpret, such as `tIME` or a private chunk) makes PIL's `Image.open` fail ("cannot
//! identify image file"), so `learn.predict` raises; here the file is refused with an
//! [`Error::ImageDecode`] naming the file and the chunk, whose source is a [`PngCrcMismatch`]
//! (chunk, offset, stored and computed CRC). PIL never compares the CRCs of the `IDAT`
//! chunks nor of any chunk after them (`tEXt`, `IEND`, ...): such a file decodes, to the same
//! pixels as PIL's. PIL's zlib still checks the image data itself: when an `IDAT` CRC is
//! wrong, the data is inflated once before decoding and a broken stream or a wrong Adler-32
//! is refused, as PIL refuses it ("broken data stream"). One divergence is known and kept: a
//! file whose zlib data is corrupt but whose `IDAT` CRCs were computed over the corrupt bytes
//! (an encoder bug, not damage in transit) is decoded as the `png` crate decodes it, which
//! does not check the Adler-32, where PIL refuses it; checking every PNG that way would
//! inflate each one twice.
//!
//! Like fastai, the EXIF orientation tag is ignored by default: pixels are used as stored.
//! [`DecodeOptions::apply_exif_orientation`] applies it (as PIL's `ImageOps.exif_transpose`).
//!
//! JPEG is decoded by the crate's own decoder (`decode::jpeg`, `src/decode/jpeg/`), which gives libjpeg-turbo's pixels as
//! PIL runs it (Pillow 13, libjpeg-turbo 3: `JDCT_ISLOW`, fancy upsampling), corrupt data
//! included; it is checked byte for byte against PIL on the corpus of `tests/fixtures/jpeg/`
//! (`tests/jpeg.rs`, `scripts/make_fixtures_jpeg.py`). Its errors become the crate's: malformed
//! data an [`Error::ImageDecode`], a JPEG PIL cannot read either (12-bit, lossless) an
//! [`Error::UnsupportedImage`], a frame over the limit an [`Error::ImageTooLarge`], found from
//! the frame header before anything is allocated.

use std::path::Path;

pub(crate) mod jpeg;

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
#[non_exhaustive]
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
    // A copy of a PNG whose IDAT-or-later CRCs were corrected (see `png_check_chunks`); it
    // must outlive the reader.
    let mut patched: Option<Vec<u8>> = None;
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
    if reader_format == Some(image::ImageFormat::Jpeg) {
        return decode_jpeg(bytes, origin, options);
    }
    // PNG image data whose chunk CRCs were wrong, to be checked as PIL's zlib checks it.
    let mut unchecked_image_data = None;
    if reader_format == Some(image::ImageFormat::Png) {
        match png_check_chunks(bytes) {
            Err(PngRefusal::Crc(m)) => return Err(png_err(origin, Box::new(m))),
            Err(PngRefusal::Palette(reason)) => return Err(png_err(origin, reason.into())),
            Ok(walk) if walk.crc_fixes.is_empty() => {}
            Ok(walk) => {
                // PIL never compares these CRCs (IDAT and later chunks); the `png` crate would
                // refuse the critical ones, so decode a copy with them corrected.
                let mut copy = bytes.to_vec();
                for (at, crc) in &walk.crc_fixes {
                    copy[*at..*at + 4].copy_from_slice(&crc.to_be_bytes());
                }
                patched = Some(copy);
                unchecked_image_data = Some(walk.image_data);
            }
        }
    }
    if let Some(copy) = &patched {
        reader = ImageReader::new(std::io::Cursor::new(copy.as_slice()));
        reader.set_format(image::ImageFormat::Png);
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
    if let Some(ranges) = unchecked_image_data {
        // Within the size limits: now inflate the image data once to check it.
        let cap = decoder
            .total_bytes()
            .saturating_mul(2)
            .saturating_add(1 << 16);
        png_image_data_intact(bytes, &ranges, cap).map_err(|e| png_err(origin, e.into()))?;
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

/// A JPEG decoded by the crate's own decoder ([`jpeg`], libjpeg-turbo's arithmetic as PIL
/// runs it) and converted to RGB as PIL's `convert('RGB')` converts its mode.
///
/// The frame header is read first ([`jpeg::read_header`]: size, EXIF, nothing allocated), so
/// that an image over [`DecodeOptions::max_pixels`] is refused before any buffer exists; the
/// decoder checks the limit again itself.
fn decode_jpeg(bytes: &[u8], origin: &str, options: &DecodeOptions) -> Result<RgbImage> {
    let header =
        jpeg_guarded(|| jpeg::read_header(bytes)).map_err(|e| jpeg_err(origin, e, options))?;
    let (width, height) = (header.width, header.height);
    if width == 0 || height == 0 {
        return Err(Error::UnsupportedImage {
            origin: origin.to_string(),
            reason: format!("image has no pixels ({width}x{height})"),
        });
    }
    if (width as u64).saturating_mul(height as u64) > options.max_pixels {
        return Err(Error::ImageTooLarge {
            origin: origin.to_string(),
            width: u32::try_from(width).unwrap_or(u32::MAX),
            height: u32::try_from(height).unwrap_or(u32::MAX),
            max_pixels: options.max_pixels,
        });
    }
    if header.arithmetic {
        if let Some(at) = arithmetic_scan_crosses_pil_block(bytes) {
            return Err(jpeg_err(
                origin,
                jpeg::JpegError::Malformed(format!(
                    "arithmetic-coded scan data runs across byte {at}, where PIL hands libjpeg \
                     its next {PIL_READ_BLOCK}-byte block: libjpeg's arithmetic decoder cannot \
                     wait for more data there (JERR_CANT_SUSPEND), so PIL refuses the file \
                     (\"broken data stream\")"
                )),
                options,
            ));
        }
    }
    let decoded = jpeg_guarded(|| jpeg::decode(bytes, options.max_pixels))
        .map_err(|e| jpeg_err(origin, e, options))?;
    let (w, h) = (decoded.width as u32, decoded.height as u32);
    let rgb = match decoded.mode {
        jpeg::Mode::Rgb => RgbImage::from_raw(w, h, decoded.data),
        jpeg::Mode::L => Some(from_samples(w, h, &decoded.data, 1, |s| [s[0]; 3])),
        jpeg::Mode::Cmyk => Some(from_samples(w, h, &decoded.data, 4, cmyk_to_rgb)),
    };
    let rgb = rgb
        .filter(|img| img.dimensions() == (w, h) && w > 0 && h > 0)
        .ok_or_else(|| Error::UnsupportedImage {
            origin: origin.to_string(),
            reason: format!("pixel buffer does not match its {w}x{h} size"),
        })?;
    let orientation = match (&header.exif, options.apply_exif_orientation) {
        (Some(exif), true) => {
            // The TIFF structure after the "Exif\0\0" identifier; a broken block is ignored
            // (as PIL's `exif_transpose` ignores it), never fatal.
            let tiff = exif.strip_prefix(b"Exif\0\0").unwrap_or(exif);
            image::metadata::Orientation::from_exif_chunk(tiff)
                .unwrap_or(image::metadata::Orientation::NoTransforms)
        }
        _ => image::metadata::Orientation::NoTransforms,
    };
    if orientation == image::metadata::Orientation::NoTransforms {
        return Ok(rgb);
    }
    let mut img = DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    to_rgb(img, origin)
}

/// The block size PIL reads an image file in (`ImageFile.MAXBLOCK`), feeding each block to
/// libjpeg's suspending data source.
const PIL_READ_BLOCK: usize = 65536;

/// Where, if anywhere, an arithmetic-coded JPEG's scan data (restart markers included) spans
/// a multiple of [`PIL_READ_BLOCK`]: PIL gives libjpeg the file one block at a time, and
/// libjpeg's arithmetic decoder, unlike its Huffman decoder, cannot suspend when the buffer
/// runs dry inside a scan (`jdarith.c`, `get_byte`: `JERR_CANT_SUSPEND`), so PIL refuses such
/// a file ("broken data stream when reading image file") although libjpeg reading the whole
/// file at once would decode it. Measured: 1000x872 arithmetic files (170 kB) refused, their
/// 500x436 crops (45 kB) decoded.
///
/// The scan data of each SOS runs from the end of its header to the next marker other than
/// RSTn (stuffed `FF 00` and fill bytes skipped). The last bytes before that marker may not
/// all be read by the decoder, so a block boundary within them is counted as crossed; PIL
/// may decode such a file (a narrow edge, not seen in the corpus).
fn arithmetic_scan_crosses_pil_block(bytes: &[u8]) -> Option<usize> {
    let mut i = 2; // after SOI
    loop {
        while bytes.get(i) == Some(&0xFF) && bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(i), bytes.get(i + 1)) else {
            return None;
        };
        match marker {
            0xD9 => return None,
            0x01 | 0xD0..=0xD8 => i += 2,
            _ => {
                let (Some(&hi), Some(&lo)) = (bytes.get(i + 2), bytes.get(i + 3)) else {
                    return None;
                };
                let next = i + 2 + usize::from(u16::from_be_bytes([hi, lo]));
                if marker != 0xDA {
                    i = next;
                    continue;
                }
                // The entropy-coded data: up to the next marker that is not RSTn.
                let start = next;
                let mut end = start;
                while end + 1 < bytes.len() {
                    if bytes[end] == 0xFF && !matches!(bytes[end + 1], 0x00 | 0xFF | 0xD0..=0xD7) {
                        break;
                    }
                    end += 1;
                }
                let end = if end + 1 >= bytes.len() {
                    bytes.len()
                } else {
                    end
                };
                // The first block boundary at or after the data's start.
                let boundary = start.div_ceil(PIL_READ_BLOCK).max(1) * PIL_READ_BLOCK;
                if boundary < end {
                    return Some(boundary);
                }
                i = end;
            }
        }
    }
}

/// Runs a step of the JPEG decoder, turning a panic (a bug: the decoder is written to return
/// a [`jpeg::JpegError`] for every input) into a [`jpeg::JpegError::Malformed`], so that one
/// bad file cannot take down a process serving others.
fn jpeg_guarded<T>(f: impl FnOnce() -> jpeg::JpegResult<T>) -> jpeg::JpegResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(jpeg::JpegError::Malformed(format!(
            "the JPEG decoder panicked: {what}"
        )))
    })
}

/// The crate's typed error for a [`jpeg::JpegError`], naming the file: malformed data is an
/// [`Error::ImageDecode`] (its source a decoding error with the decoder's what and where), a
/// JPEG the decoder does not handle an [`Error::UnsupportedImage`], a frame over the pixel
/// limit an [`Error::ImageTooLarge`].
fn jpeg_err(origin: &str, e: jpeg::JpegError, options: &DecodeOptions) -> Error {
    match e {
        jpeg::JpegError::Malformed(what) => Error::ImageDecode {
            origin: origin.to_string(),
            source: image::ImageError::Decoding(image::error::DecodingError::new(
                image::error::ImageFormatHint::Exact(image::ImageFormat::Jpeg),
                what,
            )),
        },
        jpeg::JpegError::Unsupported(reason) => Error::UnsupportedImage {
            origin: origin.to_string(),
            reason,
        },
        jpeg::JpegError::TooLarge { width, height } => Error::ImageTooLarge {
            origin: origin.to_string(),
            width,
            height,
            max_pixels: options.max_pixels,
        },
    }
}

/// PIL's `convert('RGB')` of one CMYK pixel (`cmyk2rgb` in `Convert.c`):
/// `255 - k - round((255 - k) * c / 255)` for each of C, M, Y, with PIL's integer rounding
/// (`MULDIV255`).
fn cmyk_to_rgb(p: &[u8]) -> [u8; 3] {
    let muldiv255 = |a: u8, b: u8| {
        let t = u32::from(a) * u32::from(b) + 128;
        (((t >> 8) + t) >> 8) as u8
    };
    let nk = 255 - p[3];
    [
        nk.saturating_sub(muldiv255(p[0], nk)),
        nk.saturating_sub(muldiv255(p[1], nk)),
        nk.saturating_sub(muldiv255(p[2], nk)),
    ]
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

/// A PNG chunk before the image data whose CRC does not match its bytes: the file is refused,
/// as PIL refuses it. Carried as the source of the [`Error::ImageDecode`] that reports it
/// (reach it with [`std::error::Error::source`] on the `image::ImageError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PngCrcMismatch {
    /// The chunk's four-byte type, e.g. `*b"iCCP"`.
    pub chunk: [u8; 4],
    /// Byte offset of the chunk (its length field) in the file.
    pub offset: usize,
    /// The CRC stored after the chunk.
    pub stored: u32,
    /// The CRC-32 of the chunk's type and data.
    pub computed: u32,
}

impl std::fmt::Display for PngCrcMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bad CRC in the {} chunk at byte {} (stored {:#010x}, computed {:#010x}); \
             PIL refuses such a file (\"cannot identify image file\")",
            self.chunk.escape_ascii(),
            self.offset,
            self.stored,
            self.computed
        )
    }
}

impl std::error::Error for PngCrcMismatch {}

/// A PNG refused by this crate's own checks, as an [`Error::ImageDecode`].
fn png_err(origin: &str, e: Box<dyn std::error::Error + Send + Sync>) -> Error {
    Error::ImageDecode {
        origin: origin.to_string(),
        source: image::ImageError::Decoding(image::error::DecodingError::new(
            image::error::ImageFormatHint::Exact(image::ImageFormat::Png),
            e,
        )),
    }
}

/// What [`png_check_chunks`] found in a PNG it does not refuse.
#[derive(Debug, Default, PartialEq, Eq)]
struct PngWalk {
    /// Wrong CRCs at or after the first `IDAT`: (offset of the CRC, the right CRC).
    crc_fixes: Vec<(usize, u32)>,
    /// The byte ranges of the `IDAT` chunks' data, in file order.
    image_data: Vec<std::ops::Range<usize>>,
}

/// Why a PNG is refused before decoding.
#[derive(Debug)]
enum PngRefusal {
    Crc(PngCrcMismatch),
    Palette(String),
}

/// Whether chunk CRCs are compared. Fuzz builds (`--cfg fuzzing`, set by cargo-fuzz) skip
/// them, as the `png` crate does, so that mutated inputs reach the decoders.
const CHECK_PNG_CRCS: bool = !cfg!(fuzzing);

/// Walks a PNG's chunks by their lengths before decoding and applies PIL's rules
/// (Pillow 13, `PngImagePlugin`, with fastai's default `LOAD_TRUNCATED_IMAGES = False`):
///
/// - every chunk before the first `IDAT` (critical or ancillary, known to PIL or not) must
///   carry the right CRC: `Image.open` checks each one and raises otherwise;
/// - the CRCs of the `IDAT` chunks and of every chunk after them are never compared by PIL,
///   which decodes such a file. The `png` crate does compare those of critical chunks
///   (`IDAT`, `IEND`), so wrong ones are returned here (`crc_fixes`) for the caller to correct
///   in a copy before decoding. PIL's zlib then still checks the image data itself (its
///   Adler-32 and its codes), and so must the caller ([`png_image_data_intact`], with
///   `image_data`): the `png` crate ignores the Adler-32, and a wrong `IDAT` CRC is most often
///   corrupt data;
/// - the `PLTE` chunk's length must be a whole number of RGB entries, 1 to 256 (PNG spec
///   11.2.3): the `png` crate (0.18) panics on a palette of another length when it expands it
///   (found by fuzzing).
///
/// A layout too broken to walk (a chunk running past the end of the file) stops the walk;
/// the decoder then rejects the file (or, when only the end of `IEND` is missing, decodes it,
/// as PIL does).
fn png_check_chunks(bytes: &[u8]) -> std::result::Result<PngWalk, PngRefusal> {
    let mut walk = PngWalk::default();
    let mut in_image_data = false;
    let mut i = 8; // after the signature
    while let Some(head) = bytes.get(i..i + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = [head[4], head[5], head[6], head[7]];
        if &kind == b"IEND" && !in_image_data {
            break; // PIL stops there too, unchecked; the decoder finds no image data.
        }
        in_image_data |= &kind == b"IDAT";
        if &kind == b"PLTE" && (!len.is_multiple_of(3) || len == 0 || len > 768) {
            return Err(PngRefusal::Palette(format!(
                "invalid PLTE chunk: {len} bytes, not 1 to 256 RGB entries of 3 bytes"
            )));
        }
        let crc_at = i.saturating_add(8).saturating_add(len);
        let Some(stored) = bytes.get(crc_at..crc_at.saturating_add(4)) else {
            break;
        };
        let stored = u32::from_be_bytes([stored[0], stored[1], stored[2], stored[3]]);
        if CHECK_PNG_CRCS {
            let computed = crc32fast::hash(&bytes[i + 4..crc_at]);
            if computed != stored {
                if !in_image_data {
                    return Err(PngRefusal::Crc(PngCrcMismatch {
                        chunk: kind,
                        offset: i,
                        stored,
                        computed,
                    }));
                }
                walk.crc_fixes.push((crc_at, computed));
            }
        }
        if &kind == b"IDAT" {
            walk.image_data.push(i + 8..crc_at);
        }
        if &kind == b"IEND" {
            break;
        }
        i = crc_at + 4;
    }
    Ok(walk)
}

/// Inflates a PNG's image data (the `ranges` of its `IDAT` chunks, one zlib stream) into a
/// sink, to check it as PIL's zlib does: an invalid code or a wrong Adler-32 is an error
/// (PIL: "broken data stream when reading image file"). Stops after `cap` inflated bytes,
/// or at a stream cut short, leaving those to the decoder.
fn png_image_data_intact(
    bytes: &[u8],
    ranges: &[std::ops::Range<usize>],
    cap: u64,
) -> std::result::Result<(), String> {
    use std::io::Read;
    let data: Vec<u8> = ranges
        .iter()
        .flat_map(|r| &bytes[r.clone()])
        .copied()
        .collect();
    let mut inflated = flate2::read::ZlibDecoder::new(data.as_slice()).take(cap);
    match std::io::copy(&mut inflated, &mut std::io::sink()) {
        Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => Err(format!(
            "the image data is corrupt ({e}) and its IDAT chunks' CRCs are wrong; PIL \
             refuses such a file too (\"broken data stream when reading image file\")"
        )),
        _ => Ok(()),
    }
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
    Ok(from_samples(width, height, &samples, 4, cmyk_to_rgb))
}

/// Converts a decoded image to 8-bit RGB the way PIL's `convert('RGB')` does.
///
/// Returns [`Error::UnsupportedImage`] for pixel formats whose PIL conversion is not
/// reproduced (floating-point images), and for images with no pixels.
pub(crate) fn to_rgb(img: DynamicImage, origin: &str) -> Result<RgbImage> {
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
    fn floating_point_and_empty_images_are_refused() {
        let f = DynamicImage::ImageRgb32F(image::ImageBuffer::new(4, 4));
        let err = to_rgb(f, "<test>").unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedImage { origin, .. } if origin == "<test>"),
            "{err:?}"
        );
        let empty = DynamicImage::ImageRgb8(RgbImage::new(0, 3));
        let err = to_rgb(empty, "<empty>").unwrap_err();
        assert!(err.to_string().contains("no pixels"), "{err}");
    }

    #[test]
    fn a_panicking_decoder_step_becomes_a_decoding_error() {
        let r: image::ImageResult<()> = guarded("x.png", || panic!("boom {}", 7));
        let err = r.unwrap_err().to_string();
        assert!(err.contains("panicked on x.png: boom 7"), "{err}");
        let ok: image::ImageResult<u8> = guarded("x.png", || Ok(3));
        assert_eq!(ok.unwrap(), 3);
    }

    /// A PNG from `(type, data)` chunks with right CRCs.
    fn png(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in chunks {
            v.extend((data.len() as u32).to_be_bytes());
            v.extend(*kind);
            v.extend(data);
            let mut crc = crc32fast::Hasher::new();
            crc.update(*kind);
            crc.update(data);
            v.extend(crc.finalize().to_be_bytes());
        }
        v
    }

    #[test]
    fn png_palettes_must_be_whole_rgb_entries() {
        let with_plte = |plte_len: usize| {
            png(&[
                (b"IHDR", vec![0; 13]),
                (b"PLTE", vec![0; plte_len]),
                (b"IDAT", vec![]),
            ])
        };
        assert!(png_check_chunks(&with_plte(48)).is_ok());
        assert!(png_check_chunks(&with_plte(768)).is_ok());
        for bad in [0, 53, 769, 771] {
            assert!(
                matches!(
                    png_check_chunks(&with_plte(bad)),
                    Err(PngRefusal::Palette(_))
                ),
                "{bad}"
            );
        }
        // Too short to walk: left to the decoder.
        assert_eq!(
            png_check_chunks(b"\x89PNG\r\n\x1a\n\0\0").unwrap(),
            PngWalk::default()
        );
    }

    #[test]
    fn png_crcs_are_refused_before_the_image_data_and_corrected_after_it() {
        let chunks: [(&[u8; 4], Vec<u8>); 5] = [
            (b"IHDR", vec![7; 13]),
            (b"gAMA", vec![0, 0, 177, 143]),
            (b"IDAT", vec![1, 2, 3]),
            (b"tEXt", b"a\0b".to_vec()),
            (b"IEND", vec![]),
        ];
        let good = png(&chunks);
        let walk = png_check_chunks(&good).unwrap();
        assert!(walk.crc_fixes.is_empty());
        assert_eq!(walk.image_data, vec![57..60]);
        // Byte offsets of each chunk, and of its CRC.
        let offsets = [8usize, 33, 49, 64, 79];
        let crc_at = |k: usize| offsets[k] + 8 + chunks[k].1.len();
        for (k, (kind, _)) in chunks.iter().enumerate() {
            let mut bad = good.clone();
            bad[crc_at(k) + 3] ^= 1;
            let right = u32::from_be_bytes(good[crc_at(k)..crc_at(k) + 4].try_into().unwrap());
            match (k, png_check_chunks(&bad)) {
                (0 | 1, Err(PngRefusal::Crc(m))) => {
                    assert_eq!(m.chunk, **kind);
                    assert_eq!(m.offset, offsets[k]);
                    assert_eq!((m.computed, m.stored), (right, right ^ 1));
                    let msg = m.to_string();
                    assert!(msg.contains(std::str::from_utf8(*kind).unwrap()), "{msg}");
                }
                (2.., Ok(walk)) => assert_eq!(walk.crc_fixes, vec![(crc_at(k), right)]),
                (k, other) => panic!("chunk {k}: {other:?}"),
            }
        }
        // A chunk cut short before its CRC ends the walk.
        assert_eq!(
            png_check_chunks(&good[..crc_at(1) + 2]).unwrap(),
            PngWalk::default()
        );
        // IEND before any IDAT ends it unchecked, as in PIL.
        let mut early = png(&[(b"IHDR", vec![7; 13]), (b"IEND", vec![])]);
        let n = early.len();
        early[n - 1] ^= 1;
        assert_eq!(png_check_chunks(&early).unwrap(), PngWalk::default());
    }
}
