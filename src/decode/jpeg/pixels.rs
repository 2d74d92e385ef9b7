//! The decoded coefficients to PIL's pixels: IDCT, upsampling and colour conversion over the
//! whole frame, in bands of MCU rows.

use super::{Decoded, Frame, JpegError, JpegResult};

/// The image PIL holds after `load()` for a frame whose scans have all been decoded.
pub(super) fn to_pixels(frame: &Frame) -> JpegResult<Decoded> {
    let _ = frame;
    Err(JpegError::Unsupported("not written yet".into()))
}
