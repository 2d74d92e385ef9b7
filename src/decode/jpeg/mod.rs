//! JPEG decoding bit for bit as PIL decodes it: Pillow 13 with libjpeg-turbo 3 on its default
//! settings (`JDCT_ISLOW`, fancy upsampling, libjpeg's colour tables and rounding).
//!
//! The pipeline follows libjpeg's own split, one module a stage:
//! - [`markers`]: the marker segments (SOF, DHT, DAC, DQT, DRI, SOS, APPn, ...) into a
//!   [`Frame`] and its [`Scan`]s, the colour space chosen as `jdapimin.c` chooses it;
//! - `huffman` / `arith`: each scan's entropy-coded data into the quantized DCT coefficients
//!   of every block ([`Component::coefs`]), baseline and progressive, as `jdhuff.c`,
//!   `jdphuff.c` and `jdarith.c` decode them (corrupt data handled as libjpeg handles it);
//! - `idct`: `jidctint.c`'s integer IDCT (dequantization included);
//! - `upsample`: `jdsample.c`'s fancy (triangle) upsampling, and box replication where
//!   libjpeg uses it;
//! - `color`: `jdcolor.c`'s YCbCr -> RGB, YCCK -> CMYK, gray and RGB outputs.
//!
//! The result is what PIL holds after `Image.open(f).load()` ([`Decoded`]: mode `L`, `RGB` or
//! `CMYK`); `crate::decode` converts it to RGB as `convert('RGB')` does.
#![allow(dead_code)] // The skeleton: the stages fill it in.

mod arith;
mod color;
mod huffman;
mod idct;
mod markers;
mod pixels;
mod simd;
mod upsample;

/// One component of the frame (a colour channel), with the coefficients of all its blocks.
#[derive(Debug, Clone)]
pub(crate) struct Component {
    /// The component identifier from SOF (`Ci`).
    pub id: u8,
    /// Horizontal sampling factor (`Hi`, 1..=4).
    pub h: usize,
    /// Vertical sampling factor (`Vi`, 1..=4).
    pub v: usize,
    /// Index of its quantization table (`Tqi`, 0..=3).
    pub tq: usize,
    /// The quantization table in natural (row-major) order, latched when the component's
    /// first scan starts, as libjpeg latches it (`jdinput.c`, `latch_quant_tables`).
    pub quant: [u16; 64],
    /// `ceil(ceil(width * h / max_h) / 8)`: libjpeg's `width_in_blocks`.
    pub width_in_blocks: usize,
    /// `ceil(ceil(height * v / max_v) / 8)`: libjpeg's `height_in_blocks`.
    pub height_in_blocks: usize,
    /// `ceil(width * h / max_h)`: libjpeg's `downsampled_width`, the real samples in a row.
    pub downsampled_width: usize,
    /// `ceil(height * v / max_v)`: libjpeg's `downsampled_height`.
    pub downsampled_height: usize,
    /// Blocks in a row of [`Component::coefs`]: `width_in_blocks` rounded up to a multiple
    /// of `h` (the MCU padding interleaved scans decode; libjpeg's coefficient arrays).
    pub blocks_w: usize,
    /// Block rows in [`Component::coefs`]: `height_in_blocks` rounded up to a multiple of `v`.
    pub blocks_h: usize,
    /// Quantized coefficients of every block, row-major (`blocks_h` rows of `blocks_w`),
    /// each block in natural order (un-zigzagged). Zero until a scan sets them.
    pub coefs: Vec<[i16; 64]>,
    /// libjpeg's `coef_bits` for this component: for each coefficient, the successive
    /// approximation bit position still unknown (`-1`: no scan has touched it yet; `0`:
    /// fully known). Progressive only; decides block smoothing (`jdcoefct.c`).
    pub coef_bits: [i32; 64],
}

/// The colour space of the stored components, decided as `jdapimin.c`
/// (`default_decompress_parms`) decides it from the component count, the JFIF and Adobe
/// markers and the component identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColorSpace {
    /// One component.
    Gray,
    /// Three components, YCbCr (JFIF, Adobe transform 1, or libjpeg's default guess).
    YCbCr,
    /// Three components stored as RGB (Adobe transform 0, or ids 'R','G','B').
    Rgb,
    /// Four components stored as CMYK (Adobe transform 0 or no Adobe marker).
    Cmyk,
    /// Four components stored as YCCK (Adobe transform 2).
    Ycck,
}

/// A frame: the image's size, its components and how its scans are coded.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// Image width in pixels (from SOF).
    pub width: usize,
    /// Image height in pixels (from SOF).
    pub height: usize,
    /// Sample precision in bits (8; 12-bit files are refused as unsupported).
    pub precision: u8,
    /// SOF2/SOF6/SOF10/SOF14: progressive.
    pub progressive: bool,
    /// SOF9..SOF15: arithmetic coding.
    pub arithmetic: bool,
    /// The components in SOF order.
    pub components: Vec<Component>,
    /// The largest horizontal sampling factor.
    pub max_h: usize,
    /// The largest vertical sampling factor.
    pub max_v: usize,
    /// The colour space of the stored components.
    pub color_space: ColorSpace,
    /// Whether an Adobe APP14 marker was present (PIL then reads CMYK as inverted, "CMYK;I").
    pub adobe: bool,
    /// The EXIF payload of the first APP1 "Exif\0\0" segment, for the orientation tag.
    pub exif: Option<Vec<u8>>,
}

/// A scan header (SOS): which components it codes and how.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    /// Indices into [`Frame::components`], in scan order (1..=4 of them).
    pub comps: Vec<usize>,
    /// DC entropy table selector for each component of the scan (`Tdj`).
    pub dc_table: Vec<usize>,
    /// AC entropy table selector for each component of the scan (`Taj`).
    pub ac_table: Vec<usize>,
    /// Spectral selection start (`Ss`).
    pub ss: u8,
    /// Spectral selection end (`Se`).
    pub se: u8,
    /// Successive approximation high bit (`Ah`).
    pub ah: u8,
    /// Successive approximation low bit (`Al`).
    pub al: u8,
    /// The restart interval in MCUs in force for this scan (DRI; 0: none).
    pub restart_interval: usize,
}

/// The decoded image as PIL holds it after `load()`, before any `convert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// PIL's mode.
    pub mode: Mode,
    /// Interleaved samples, row-major: 1 (`L`), 3 (`RGB`) or 4 (`CMYK`) a pixel, exactly
    /// PIL's `im.tobytes()`.
    pub data: Vec<u8>,
}

/// PIL's image mode for a decoded JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Grayscale.
    L,
    /// RGB (YCbCr converted, or stored RGB).
    Rgb,
    /// CMYK as PIL stores it (inverted back when the file has an Adobe marker).
    Cmyk,
}

/// Why a JPEG could not be decoded; `crate::decode` turns it into the crate's typed
/// [`crate::Error`] naming the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JpegError {
    /// Malformed or truncated data that libjpeg (and so PIL) refuses; the text says what and
    /// where (marker, byte offset).
    Malformed(String),
    /// A valid JPEG this decoder does not handle (12-bit, lossless, hierarchical, ...), as
    /// [`crate::Error::UnsupportedImage`].
    Unsupported(String),
    /// More pixels than the caller's limit, found from the frame header before anything is
    /// allocated, as [`crate::Error::ImageTooLarge`].
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
}

/// The result of a JPEG decoding step.
pub(crate) type JpegResult<T> = std::result::Result<T, JpegError>;

/// Reads the markers up to the first scan: size, mode and EXIF, nothing decoded or allocated.
/// (Placeholder until the markers stage lands on main.)
pub(crate) fn read_header(bytes: &[u8]) -> JpegResult<Frame> {
    let _ = bytes;
    Err(JpegError::Unsupported(
        "the JPEG decoder's stages are not wired yet".into(),
    ))
}

/// The whole decoder: coefficients, then pixels. (Placeholder until the stages land on main.)
pub(crate) fn decode(bytes: &[u8], max_pixels: u64) -> JpegResult<Decoded> {
    let _ = (bytes, max_pixels);
    Err(JpegError::Unsupported(
        "the JPEG decoder's stages are not wired yet".into(),
    ))
}
