//! Arithmetic-coded scans, sequential and progressive (`jdarith.c`).

use super::{Frame, JpegError, JpegResult, Scan};

/// The arithmetic conditioning values from the DAC markers, per table index 0..=3
/// (defaults: DC `L = 0`, `U = 1`; AC `Kx = 5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ArithConditioning {
    /// DC lower bound `L` per DC table.
    pub dc_l: [u8; 4],
    /// DC upper bound `U` per DC table.
    pub dc_u: [u8; 4],
    /// AC `Kx` per AC table.
    pub ac_k: [u8; 4],
}

impl Default for ArithConditioning {
    fn default() -> Self {
        Self {
            dc_l: [0; 4],
            dc_u: [1; 4],
            ac_k: [5; 4],
        }
    }
}

/// Decodes one arithmetic-coded scan into `frame`'s coefficients. `data` starts right after
/// the SOS segment; restart markers (RSTn) inside it are handled here. Returns the offset in
/// `data` of the first marker that ends the scan (not an RSTn).
pub(super) fn decode_scan(
    frame: &mut Frame,
    scan: &Scan,
    cond: &ArithConditioning,
    data: &[u8],
) -> JpegResult<usize> {
    let _ = (frame, scan, cond, data);
    Err(JpegError::Unsupported(
        "arithmetic-coded JPEG (not written yet)".into(),
    ))
}
