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
    /// The block row [`Component::coefs`] starts at: 0 when it holds the whole component,
    /// more when a single-scan file is decoded band by band and it holds only the block
    /// rows in use.
    pub coef_row0: usize,
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
    /// The EXIF payload (the TIFF data after "Exif\0\0") of the APP1 "Exif" segments before
    /// the first SOS, concatenated as PIL concatenates them in `info["exif"]` (usually one
    /// segment), for the orientation tag.
    pub exif: Option<Vec<u8>>,
    /// What libjpeg remembers of the progressive scans for block smoothing when data ran
    /// short (previous `coef_bits`, last good iMCU row); the default: nothing ran short.
    pub progress: pixels::Progress,
    /// The pixels, when the file was decoded band by band as its single scan was read
    /// ([`decode`] on a sequential Huffman-coded file with one scan): its coefficients are
    /// then not kept.
    pub streamed: Option<Decoded>,
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

/// Decodes a whole JPEG file as PIL does (`Image.open(f).load()`): every scan's coefficients
/// ([`decode_coefficients`]), then the pixels (IDCT, upsampling, colour conversion).
/// `max_pixels`: files with more pixels are refused ([`JpegError::TooLarge`]) before
/// anything is allocated.
///
/// A sequential Huffman-coded file with a single scan (most photos) is decoded as libjpeg
/// decodes it, band by band as the scan is read, holding only the coefficients of the rows
/// in use; the others keep every coefficient until the last scan.
pub(crate) fn decode(bytes: &[u8], max_pixels: u64) -> JpegResult<Decoded> {
    let mut frame = markers::read(bytes, max_pixels, markers::Until::Pixels)?;
    match frame.streamed.take() {
        Some(d) => Ok(d),
        None => pixels::to_pixels(&frame),
    }
}

/// Reads the markers and decodes every scan: the returned [`Frame`] has every component's
/// quantized coefficients (natural order, not dequantized), its latched quantization table,
/// its final `coef_bits`, and the EXIF payload. Corrupt data is decoded as libjpeg-turbo
/// decodes it; what PIL refuses (truncated data included) is [`JpegError::Malformed`].
pub(crate) fn decode_coefficients(bytes: &[u8], max_pixels: u64) -> JpegResult<Frame> {
    markers::read(bytes, max_pixels, markers::Until::End)
}

/// Reads the markers up to the first scan: size, components, colour space and EXIF, without
/// decoding any scan or allocating coefficients (`coefs` are empty).
pub(crate) fn read_header(bytes: &[u8]) -> JpegResult<Frame> {
    markers::read(bytes, u64::MAX, markers::Until::Header)
}

#[cfg(test)]
mod tests {
    //! Whole-file behaviour against values libjpeg-turbo gives (jpeglib.read_dct) and what PIL
    //! accepts or refuses; the tiny files were made with cjpeg.
    use super::*;

    /// `cjpeg -quality 50 -grayscale` of a 16x8 gray image: baseline, two blocks (373 bytes).
    const BASE: &[u8] = &[
        255, 216, 255, 224, 0, 16, 74, 70, 73, 70, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 255, 219, 0, 67,
        0, 16, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40, 26, 24, 22, 22, 24, 49,
        35, 37, 29, 40, 58, 51, 61, 60, 57, 51, 56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56, 80,
        109, 81, 87, 95, 98, 103, 104, 103, 62, 77, 113, 121, 112, 100, 120, 92, 101, 103, 99, 255,
        192, 0, 11, 8, 0, 8, 0, 16, 1, 1, 17, 0, 255, 196, 0, 31, 0, 0, 1, 5, 1, 1, 1, 1, 1, 1, 0,
        0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 255, 196, 0, 181, 16, 0, 2, 1, 3,
        3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125, 1, 2, 3, 0, 4, 17, 5, 18, 33, 49, 65, 6, 19, 81, 97,
        7, 34, 113, 20, 50, 129, 145, 161, 8, 35, 66, 177, 193, 21, 82, 209, 240, 36, 51, 98, 114,
        130, 9, 10, 22, 23, 24, 25, 26, 37, 38, 39, 40, 41, 42, 52, 53, 54, 55, 56, 57, 58, 67, 68,
        69, 70, 71, 72, 73, 74, 83, 84, 85, 86, 87, 88, 89, 90, 99, 100, 101, 102, 103, 104, 105,
        106, 115, 116, 117, 118, 119, 120, 121, 122, 131, 132, 133, 134, 135, 136, 137, 138, 146,
        147, 148, 149, 150, 151, 152, 153, 154, 162, 163, 164, 165, 166, 167, 168, 169, 170, 178,
        179, 180, 181, 182, 183, 184, 185, 186, 194, 195, 196, 197, 198, 199, 200, 201, 202, 210,
        211, 212, 213, 214, 215, 216, 217, 218, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234,
        241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 255, 218, 0, 8, 1, 1, 0, 0, 63, 0, 203,
        211, 129, 16, 133, 251, 204, 205, 180, 229, 185, 57, 0, 22, 201, 247, 24, 7, 242, 247, 232,
        173, 163, 108, 159, 221, 162, 44, 156, 13, 216, 98, 172, 121, 228, 30, 167, 35, 28, 227,
        191, 174, 107, 255, 217,
    ];
    /// `BASE`'s coefficients as libjpeg-turbo reads them (jpeglib.read_dct), blocks in raster order, natural order
    const BASE_COEFS: &[i16] = &[
        -20, -17, -6, -1, 2, 0, -1, -1, -1, -1, -2, 2, -2, 1, -1, -1, 1, 0, 2, 1, 0, 1, 1, 0, 0, 2,
        0, 1, 2, 0, -1, 0, 0, 1, 1, 0, 0, -1, 0, 0, 2, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, -1, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 1, 14, -9, 1, 1, 0, 0, 0, 0, -4, 0, 0, 4, -1, 1, 1, -1, 2, 0, -2,
        -1, 2, 0, 1, 0, -4, -3, 0, -2, 0, 0, -1, 0, -3, 2, 1, 1, 1, 0, 0, 1, 0, 2, -1, 1, 0, 0, 0,
        1, -1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, -1, 0, 0, 1, 0,
    ];
    /// `BASE` cut at offset 338 (inside the scan) and ended with EOI: libjpeg's coefficients
    const BASE_EOI_INSIDE_COEFS: &[i16] = &[
        -20, -17, -6, -1, 2, 0, -1, -1, -1, -1, -2, 2, -2, -1, -1, -1, 1, 0, 2, 1, -1, -1, -1, -1,
        0, 2, 0, -1, -1, -1, -1, -1, 0, 1, -1, -1, -1, -1, -1, -1, -3, -1, -1, -1, -1, -1, -1, -1,
        -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    /// `BASE`'s image with `-restart 1B`: one MCU an interval, RST0 at offset 354 (381 bytes).
    const RST: &[u8] = &[
        255, 216, 255, 224, 0, 16, 74, 70, 73, 70, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 255, 219, 0, 67,
        0, 16, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40, 26, 24, 22, 22, 24, 49,
        35, 37, 29, 40, 58, 51, 61, 60, 57, 51, 56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56, 80,
        109, 81, 87, 95, 98, 103, 104, 103, 62, 77, 113, 121, 112, 100, 120, 92, 101, 103, 99, 255,
        192, 0, 11, 8, 0, 8, 0, 16, 1, 1, 17, 0, 255, 196, 0, 31, 0, 0, 1, 5, 1, 1, 1, 1, 1, 1, 0,
        0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 255, 196, 0, 181, 16, 0, 2, 1, 3,
        3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125, 1, 2, 3, 0, 4, 17, 5, 18, 33, 49, 65, 6, 19, 81, 97,
        7, 34, 113, 20, 50, 129, 145, 161, 8, 35, 66, 177, 193, 21, 82, 209, 240, 36, 51, 98, 114,
        130, 9, 10, 22, 23, 24, 25, 26, 37, 38, 39, 40, 41, 42, 52, 53, 54, 55, 56, 57, 58, 67, 68,
        69, 70, 71, 72, 73, 74, 83, 84, 85, 86, 87, 88, 89, 90, 99, 100, 101, 102, 103, 104, 105,
        106, 115, 116, 117, 118, 119, 120, 121, 122, 131, 132, 133, 134, 135, 136, 137, 138, 146,
        147, 148, 149, 150, 151, 152, 153, 154, 162, 163, 164, 165, 166, 167, 168, 169, 170, 178,
        179, 180, 181, 182, 183, 184, 185, 186, 194, 195, 196, 197, 198, 199, 200, 201, 202, 210,
        211, 212, 213, 214, 215, 216, 217, 218, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234,
        241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 255, 221, 0, 4, 0, 1, 255, 218, 0, 8, 1,
        1, 0, 0, 63, 0, 203, 211, 129, 16, 133, 251, 204, 205, 180, 229, 185, 57, 0, 22, 201, 247,
        24, 7, 242, 247, 255, 208, 189, 109, 27, 100, 254, 237, 17, 100, 224, 110, 195, 21, 99,
        207, 32, 245, 57, 24, 231, 29, 253, 115, 95, 255, 217,
    ];
    /// `RST` with its RST0 changed to RST1 (a restart ahead): libjpeg's coefficients
    const RST_AHEAD_COEFS: &[i16] = &[
        -20, -17, -6, -1, 2, 0, -1, -1, -1, -1, -2, 2, -2, 1, -1, -1, 1, 0, 2, 1, 0, 1, 1, 0, 0, 2,
        0, 1, 2, 0, -1, 0, 0, 1, 1, 0, 0, -1, 0, 0, 2, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, -1, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 1, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        -1, -1,
    ];
    /// `cjpeg -quality 60 -progressive -sample 2x2` of a 16x16 colour noise image (655 bytes).
    const PROG: &[u8] = &[
        255, 216, 255, 224, 0, 16, 74, 70, 73, 70, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 255, 219, 0, 67,
        0, 13, 9, 10, 11, 10, 8, 13, 11, 10, 11, 14, 14, 13, 15, 19, 32, 21, 19, 18, 18, 19, 39,
        28, 30, 23, 32, 46, 41, 49, 48, 46, 41, 45, 44, 51, 58, 74, 62, 51, 54, 70, 55, 44, 45, 64,
        87, 65, 70, 76, 78, 82, 83, 82, 50, 62, 90, 97, 90, 80, 96, 74, 81, 82, 79, 255, 219, 0,
        67, 1, 14, 14, 14, 19, 17, 19, 38, 21, 21, 38, 79, 53, 45, 53, 79, 79, 79, 79, 79, 79, 79,
        79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79,
        79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 79, 255, 194,
        0, 17, 8, 0, 16, 0, 16, 3, 1, 34, 0, 2, 17, 1, 3, 17, 1, 255, 196, 0, 22, 0, 1, 1, 1, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 255, 196, 0, 21, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 1, 255, 218, 0, 12, 3, 1, 0, 2, 16, 3, 16, 0, 0, 1, 197, 43, 255, 196,
        0, 24, 16, 1, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 33, 66, 255, 218, 0, 8,
        1, 1, 0, 1, 5, 2, 230, 171, 72, 228, 35, 63, 255, 196, 0, 21, 17, 1, 1, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 49, 255, 218, 0, 8, 1, 3, 1, 1, 63, 1, 175, 255, 196, 0, 21, 17,
        1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 33, 255, 218, 0, 8, 1, 2, 1, 1, 63, 1,
        143, 255, 196, 0, 27, 16, 0, 2, 3, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 1, 49, 65,
        33, 97, 129, 255, 218, 0, 8, 1, 1, 0, 6, 63, 2, 94, 14, 54, 206, 46, 58, 21, 188, 140, 63,
        255, 196, 0, 29, 16, 0, 2, 1, 5, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 17, 33, 0, 49, 65,
        81, 97, 240, 113, 255, 218, 0, 8, 1, 1, 0, 1, 63, 33, 41, 108, 137, 18, 44, 22, 117, 34,
        136, 90, 185, 106, 79, 189, 52, 0, 159, 19, 32, 243, 204, 90, 160, 86, 51, 33, 64, 71, 62,
        42, 255, 218, 0, 12, 3, 1, 0, 2, 0, 3, 0, 0, 0, 16, 231, 255, 196, 0, 24, 17, 0, 2, 3, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 17, 0, 81, 209, 255, 218, 0, 8, 1, 3, 1, 1, 63, 16,
        97, 72, 188, 159, 255, 196, 0, 27, 17, 1, 0, 1, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        113, 0, 17, 33, 49, 161, 240, 255, 218, 0, 8, 1, 2, 1, 1, 63, 16, 64, 57, 159, 91, 186,
        154, 255, 196, 0, 28, 16, 1, 1, 1, 0, 2, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 17, 33, 0, 65,
        49, 81, 97, 113, 255, 218, 0, 8, 1, 1, 0, 1, 63, 16, 84, 92, 31, 96, 2, 221, 122, 25, 140,
        250, 81, 33, 117, 0, 70, 75, 87, 193, 186, 40, 7, 78, 104, 249, 85, 8, 175, 25, 25, 58,
        128, 206, 158, 13, 22, 101, 237, 133, 253, 40, 61, 246, 187, 255, 217,
    ];
    /// `PROG`'s coefficients (Y, Cb, Cr) as libjpeg reads them
    const PROG_COEFS: &[i16] = &[
        -5, 2, -10, -2, -3, -1, 0, -2, 1, 0, -5, -1, -4, -2, 1, 2, -2, 1, 0, 0, -2, -1, 0, -2, 1,
        -2, 2, 0, 1, 0, 0, 1, 0, 2, 0, 1, -2, 0, -1, 0, 2, 0, 3, 1, -1, 0, -1, 0, -2, 0, 1, 0, 0,
        0, 0, 0, 1, 0, 0, -1, 0, 0, 1, -1, -3, 8, -4, 0, 3, 1, 0, 0, 8, 3, 6, 5, -2, 1, -1, -1, 2,
        -5, 1, 7, 2, 0, -1, 0, 2, -1, 1, 2, -1, 0, 0, -1, 1, -1, -2, 0, 0, 1, -1, -1, -1, -1, 1, 0,
        0, 1, -1, 2, -1, 0, 1, 0, 1, 0, 0, -1, 1, 1, 1, -1, 0, 0, 0, 0, -3, 4, -3, 0, -1, 0, 1, 0,
        -4, -3, 0, -6, 1, 2, 0, 0, 4, -7, 5, 1, -1, 0, -1, -3, 3, 0, -2, -3, 3, -1, 0, 0, 1, 2, 2,
        -1, 0, 0, 0, -1, -4, 1, 0, -3, 0, -1, 0, 1, 1, -1, 1, -2, -1, 0, -1, 0, 0, -1, -1, -1, 0,
        0, 0, 0, -4, -12, -9, -1, 3, 2, -2, 0, 5, 6, -6, 7, 1, 2, 0, -2, -5, -1, 2, 1, -2, 1, 1, 1,
        -3, 4, -5, -4, 0, 0, -2, 1, 0, -5, -3, 1, 0, 0, 0, 0, 3, 1, 0, 0, -1, 0, 0, 1, 2, -2, 0,
        -1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 2, 1, -1, 1, 0, 0, 0, 0, -1, -1, 0, 0, 0, 0, 0, 0,
        -2, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0,
        0, 0, 0, 0, 0, 0, -1, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, -1, 1, 0, 0, -1, 1, 3, 1,
        0, 0, 0, 0, 0, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// All blocks of all components (real blocks only, raster order) flattened.
    fn flat(f: &Frame) -> Vec<i16> {
        let mut out = Vec::new();
        for c in &f.components {
            for by in 0..c.height_in_blocks {
                for bx in 0..c.width_in_blocks {
                    out.extend_from_slice(&c.coefs[by * c.blocks_w + bx]);
                }
            }
        }
        out
    }

    fn coefs(bytes: &[u8]) -> JpegResult<Vec<i16>> {
        decode_coefficients(bytes, u64::MAX).map(|f| flat(&f))
    }

    fn is_malformed(r: JpegResult<Vec<i16>>) -> bool {
        matches!(r, Err(JpegError::Malformed(_)))
    }

    #[test]
    fn baseline_progressive_and_restarts_match_libjpeg() {
        assert_eq!(coefs(BASE).unwrap(), BASE_COEFS);
        assert_eq!(coefs(RST).unwrap(), BASE_COEFS);
        assert_eq!(coefs(PROG).unwrap(), PROG_COEFS);
        let f = decode_coefficients(PROG, u64::MAX).unwrap();
        assert!(f.progressive);
        assert_eq!(f.color_space, ColorSpace::YCbCr);
        assert_eq!((f.max_h, f.max_v), (2, 2));
        assert_eq!(f.components[1].coef_bits, [0; 64]);
        assert_eq!(f.components[0].quant[0], 13);
    }

    #[test]
    fn header_only() {
        let f = read_header(PROG).unwrap();
        assert_eq!((f.width, f.height, f.components.len()), (16, 16, 3));
        assert!(f.components.iter().all(|c| c.coefs.is_empty()));
        let f = read_header(BASE).unwrap();
        assert_eq!(
            (f.width, f.height, f.color_space),
            (16, 8, ColorSpace::Gray)
        );
        assert_eq!(
            decode_coefficients(BASE, 127).unwrap_err(),
            JpegError::TooLarge {
                width: 16,
                height: 8
            }
        );
    }

    #[test]
    fn marker_inside_scan_feeds_zeros_like_libjpeg() {
        let mut d = BASE[..338].to_vec();
        d.extend_from_slice(&[0xFF, 0xD9]);
        assert_eq!(coefs(&d).unwrap(), BASE_EOI_INSIDE_COEFS);
    }

    #[test]
    fn wrong_restart_numbers_resync_like_libjpeg() {
        // RST3 instead of RST0: too far away, discarded, decoding goes on.
        let mut d = RST.to_vec();
        assert_eq!(d[354..356], [0xFF, 0xD0]);
        d[355] = 0xD3;
        assert_eq!(coefs(&d).unwrap(), BASE_COEFS);
        // RST1 instead of RST0: a restart ahead, so the interval before it is empty.
        d[355] = 0xD1;
        assert_eq!(coefs(&d).unwrap(), RST_AHEAD_COEFS);
        // No RSTn at all: the scan's data runs into EOI at the restart.
        let mut d = RST[..354].to_vec();
        d.extend_from_slice(&RST[356..]);
        assert!(coefs(&d).is_ok());
    }

    #[test]
    fn truncation_as_pil_decides_it() {
        // PIL refuses a baseline file cut inside its scan, or missing only its EOI (PIL's
        // "image file is truncated"), and a progressive file missing its EOI.
        assert!(is_malformed(coefs(&BASE[..300])));
        assert!(is_malformed(coefs(&BASE[..BASE.len() - 2])));
        assert!(is_malformed(coefs(&PROG[..PROG.len() - 2])));
        assert!(is_malformed(coefs(&BASE[..150])));
        assert!(is_malformed(coefs(&BASE[..1])));
        // Anything after EOI is never read.
        let mut d = BASE.to_vec();
        d.extend_from_slice(b"garbage\xFF\xD8\xFF");
        assert_eq!(coefs(&d).unwrap(), BASE_COEFS);
        // A single-scan file's rows are all out before the marker after the scan is read:
        // a segment cut by the end of the file there is accepted (PIL ignores the
        // suspension in jpeg_finish_decompress) ...
        let mut d = BASE[..BASE.len() - 2].to_vec();
        d.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x40, 0x00]);
        assert_eq!(coefs(&d).unwrap(), BASE_COEFS);
        // ... but a second SOI there is an error (jpeg_finish_decompress raises it).
        let mut d = BASE[..BASE.len() - 2].to_vec();
        d.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xD9]);
        assert!(is_malformed(coefs(&d)));
    }

    #[test]
    fn header_errors_are_typed() {
        // SOF0 is at offset 89 in BASE: precision byte at 93.
        assert_eq!(BASE[89..91], [0xFF, 0xC0]);
        let mut d = BASE.to_vec();
        d[93] = 12;
        assert!(matches!(coefs(&d), Err(JpegError::Unsupported(_))));
        let mut d = BASE.to_vec();
        d[90] = 0xC3; // lossless
        assert!(matches!(coefs(&d), Err(JpegError::Unsupported(_))));
        let mut d = BASE.to_vec();
        d[94] = 0; // height 0
        d[95] = 0;
        assert!(is_malformed(coefs(&d)));
        let mut d = BASE.to_vec();
        d[100] = 0x51; // sampling factors 5x1
        assert!(is_malformed(coefs(&d)));
        let mut d = BASE.to_vec();
        d[101] = 2; // quantization table 2 is not defined
        assert!(is_malformed(coefs(&d)));
        // The first DHT's class/index byte at 106: DC table 5.
        assert_eq!(BASE[102..104], [0xFF, 0xC4]);
        let mut d = BASE.to_vec();
        d[106] = 5;
        assert!(is_malformed(coefs(&d)));
        // Not a JPEG.
        assert!(is_malformed(coefs(b"\x89PNG\r\n\x1a\n")));
    }

    #[test]
    fn missing_huffman_tables_default_to_the_standard_ones() {
        // BASE uses exactly the standard luminance tables: without its DHT segments
        // libjpeg-turbo installs them itself.
        let dht1 = 102;
        let dht2 = dht1 + 2 + 31;
        let end = dht2 + 2 + 181;
        assert_eq!(BASE[end..end + 2], [0xFF, 0xDA]);
        let mut d = BASE[..dht1].to_vec();
        d.extend_from_slice(&BASE[end..]);
        assert_eq!(coefs(&d).unwrap(), BASE_COEFS);
    }

    /// Decoding band by band as the scan is read ([`markers::Until::Pixels`]) gives what the
    /// whole-frame path gives (itself checked byte for byte against PIL in `tests/jpeg.rs`),
    /// on every fixture JPEG, with bands small enough that the coefficient window slides
    /// many times (sizes up to 1023x767; every sampling; restarts; corrupt and cut data).
    #[test]
    fn streamed_bands_give_the_whole_frame_pixels() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut files = Vec::new();
        for dir in ["jpeg", "images"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "jpg") {
                    files.push(p);
                }
            }
        }
        files.sort();
        let mut streamed = 0;
        for p in &files {
            let bytes = std::fs::read(p).unwrap();
            let whole = decode_coefficients(&bytes, u64::MAX).and_then(|f| pixels::to_pixels(&f));
            for band in [1, 2, 3, pixels::STREAM_IMCU_ROWS] {
                let got = markers::read_with_band(&bytes, u64::MAX, markers::Until::Pixels, band)
                    .and_then(|mut f| match f.streamed.take() {
                        Some(d) => {
                            streamed += 1;
                            assert!(f
                                .components
                                .iter()
                                .all(|c| { c.coefs.len() <= (band + 2) * c.v * c.blocks_w }));
                            Ok(d)
                        }
                        None => pixels::to_pixels(&f),
                    });
                match (&whole, &got) {
                    (Ok(a), Ok(b)) => assert!(a == b, "{} band {band}: pixels differ", p.display()),
                    (Err(_), Err(_)) => {}
                    _ => panic!(
                        "{} band {band}: {:?} vs {:?}",
                        p.display(),
                        whole.is_ok(),
                        got.is_ok()
                    ),
                }
            }
        }
        // Most fixtures are single-scan sequential files, decoded band by band.
        assert!(streamed > 4 * 100, "only {streamed} streamed decodes");
    }
}
