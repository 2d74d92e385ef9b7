//! `jdsample.c`'s upsampling, chosen per component as `jinit_upsampler` chooses it with PIL's
//! settings (fancy upsampling on, no IDCT scaling): fullsize copy, h2v1 and h2v2 fancy
//! (triangle) filters when the component is more than 2 samples wide, h1v2 fancy always,
//! and box replication (`h2v1_upsample`, `h2v2_upsample`, `int_upsample`) otherwise.
//!
//! The fancy vertical filters read the rows above and below (libjpeg's context rows,
//! `jdmainct.c`); at the image's top and bottom edge the first and last real rows
//! (`downsampled_height`) stand in for the missing ones.

use super::{JpegError, JpegResult};

/// How one component is brought to full resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    /// Already full size (`fullsize_upsample`).
    Full,
    /// Twice as wide, triangle filter (`h2v1_fancy_upsample`).
    H2V1Fancy,
    /// Twice as tall, triangle filter (`h1v2_fancy_upsample`).
    H1V2Fancy,
    /// Twice as wide and tall, triangle filter (`h2v2_fancy_upsample`).
    H2V2Fancy,
    /// Box replication by integral factors (`h2v1_upsample`, `h2v2_upsample`,
    /// `int_upsample`).
    Box {
        /// Horizontal factor.
        h: usize,
        /// Vertical factor.
        v: usize,
    },
}

impl Method {
    /// `jinit_upsampler`'s choice for a component with sampling factors `h`, `v` in a frame
    /// whose largest factors are `max_h`, `max_v`, `downsampled_width` samples wide.
    pub(super) fn choose(
        h: usize,
        v: usize,
        max_h: usize,
        max_v: usize,
        downsampled_width: usize,
    ) -> JpegResult<Method> {
        if h == 0 || v == 0 || max_h % h != 0 || max_v % v != 0 {
            return Err(JpegError::Unsupported(format!(
                "fractional sampling factors {h}x{v} of {max_h}x{max_v} (libjpeg: \
                 JERR_FRACT_SAMPLE_NOTIMPL)"
            )));
        }
        let fancy_w = downsampled_width > 2;
        Ok(if h == max_h && v == max_v {
            Method::Full
        } else if h * 2 == max_h && v == max_v {
            if fancy_w {
                Method::H2V1Fancy
            } else {
                Method::Box { h: 2, v: 1 }
            }
        } else if h == max_h && v * 2 == max_v {
            Method::H1V2Fancy
        } else if h * 2 == max_h && v * 2 == max_v && fancy_w {
            Method::H2V2Fancy
        } else {
            Method::Box {
                h: max_h / h,
                v: max_v / v,
            }
        })
    }

    /// The vertical factor (output rows per component row).
    pub(super) fn v_factor(self) -> usize {
        match self {
            Method::Full | Method::H2V1Fancy => 1,
            Method::H1V2Fancy | Method::H2V2Fancy => 2,
            Method::Box { v, .. } => v,
        }
    }
}

/// A component's samples after the IDCT: `rows` rows of `stride` samples, of which the first
/// `height` rows and `width` columns are real (`downsampled_height`, `downsampled_width`).
pub(super) struct Plane<'a> {
    /// The samples, row-major.
    pub data: &'a [u8],
    /// Samples a row in `data`.
    pub stride: usize,
    /// `downsampled_width`.
    pub width: usize,
    /// `downsampled_height`.
    pub height: usize,
}

impl Plane<'_> {
    /// Row `y` (clamped to the real rows, as libjpeg's context rows replicate the edges).
    #[inline]
    fn row(&self, y: isize) -> &[u8] {
        let y = y.clamp(0, self.height as isize - 1) as usize;
        &self.data[y * self.stride..y * self.stride + self.stride]
    }
}

/// Writes output row `y` (`out.len()` = image width) of one component.
pub(super) fn row(method: Method, p: &Plane<'_>, y: usize, out: &mut [u8]) {
    let w = out.len();
    match method {
        Method::Full => out.copy_from_slice(&p.row(y as isize)[..w]),
        Method::H2V1Fancy => h2v1_fancy(&p.row(y as isize)[..p.width], out),
        Method::H1V2Fancy => {
            let r = (y / 2) as isize;
            let (other, bias) = if y % 2 == 0 { (r - 1, 1) } else { (r + 1, 2) };
            let a = &p.row(r)[..w];
            let b = &p.row(other)[..w];
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = ((a as u16 * 3 + b as u16 + bias) >> 2) as u8;
            }
        }
        Method::H2V2Fancy => {
            let r = (y / 2) as isize;
            let other = if y % 2 == 0 { r - 1 } else { r + 1 };
            h2v2_fancy(&p.row(r)[..p.width], &p.row(other)[..p.width], out);
        }
        Method::Box { h, v } => {
            let src = p.row((y / v) as isize);
            if h == 1 {
                out.copy_from_slice(&src[..w]);
            } else {
                for (x, o) in out.iter_mut().enumerate() {
                    *o = src[x / h];
                }
            }
        }
    }
}

/// `h2v1_fancy_upsample` on one row of `inp.len() >= 3` samples into `out` (at most
/// `2 * inp.len()` samples).
pub(super) fn h2v1_fancy(inp: &[u8], out: &mut [u8]) {
    let n = inp.len();
    for (x, o) in out.iter_mut().enumerate() {
        let i = x / 2;
        let v = inp[i] as u16 * 3;
        *o = if x % 2 == 0 {
            ((v + inp[i.saturating_sub(1)] as u16 + 1) >> 2) as u8
        } else {
            ((v + inp[(i + 1).min(n - 1)] as u16 + 2) >> 2) as u8
        };
    }
}

/// `h2v2_fancy_upsample` for one output row: `near` is the nearest input row, `far` the
/// next nearest (above for even output rows, below for odd), each `>= 3` samples.
pub(super) fn h2v2_fancy(near: &[u8], far: &[u8], out: &mut [u8]) {
    let n = near.len();
    let sum = |i: usize| near[i] as u16 * 3 + far[i] as u16;
    for (x, o) in out.iter_mut().enumerate() {
        let i = x / 2;
        let this = sum(i) * 3;
        *o = if x % 2 == 0 {
            ((this + sum(i.saturating_sub(1)) + 8) >> 4) as u8
        } else {
            ((this + sum((i + 1).min(n - 1)) + 7) >> 4) as u8
        };
    }
}
