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
        if h == 0 || v == 0 || !max_h.is_multiple_of(h) || !max_v.is_multiple_of(v) {
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
    /// The component row that `data`'s first row holds (a band of the component).
    pub row0: usize,
}

impl<'a> Plane<'a> {
    /// Row `y`'s first `w` samples, for a full-size component.
    #[inline]
    pub(super) fn full_row(&self, y: usize, w: usize) -> &'a [u8] {
        &self.row(y as isize)[..w]
    }

    /// Row `y` (clamped to the real rows, as libjpeg's context rows replicate the edges).
    #[inline]
    fn row(&self, y: isize) -> &'a [u8] {
        let y = (y.clamp(0, self.height as isize - 1) as usize).saturating_sub(self.row0);
        let start = (y * self.stride).min(self.data.len());
        &self.data[start..(start + self.stride).min(self.data.len())]
    }
}

/// Writes output row `y` (`out.len()` = image width) of one component; `scratch` is reused
/// between calls (the fancy filters' column sums).
pub(super) fn row(method: Method, p: &Plane<'_>, y: usize, out: &mut [u8], scratch: &mut Vec<u16>) {
    let w = out.len();
    match method {
        Method::Full => out.copy_from_slice(&p.row(y as isize)[..w]),
        Method::H2V1Fancy => {
            let inp = &p.row(y as isize)[..p.width];
            sums(scratch, inp.iter().map(|&v| v as u16));
            super::simd::fancy_h2(scratch, out, 1, 2, 2);
        }
        Method::H1V2Fancy => {
            let r = (y / 2) as isize;
            let (other, bias) = if y.is_multiple_of(2) {
                (r - 1, 1)
            } else {
                (r + 1, 2)
            };
            let a = &p.row(r)[..w];
            let b = &p.row(other)[..w];
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = ((a as u16 * 3 + b as u16 + bias) >> 2) as u8;
            }
        }
        Method::H2V2Fancy => {
            let r = (y / 2) as isize;
            let other = if y.is_multiple_of(2) { r - 1 } else { r + 1 };
            let near = &p.row(r)[..p.width];
            let far = &p.row(other)[..p.width];
            sums(
                scratch,
                near.iter().zip(far).map(|(&a, &b)| a as u16 * 3 + b as u16),
            );
            super::simd::fancy_h2(scratch, out, 8, 7, 4);
        }
        Method::Box { h, v } => {
            let src = p.row((y / v) as isize);
            match h {
                1 => out.copy_from_slice(&src[..w]),
                2 => {
                    for (o, &s) in out.chunks_mut(2).zip(src) {
                        o.fill(s);
                    }
                }
                _ => {
                    for (o, &s) in out.chunks_mut(h).zip(src) {
                        o.fill(s);
                    }
                }
            }
        }
    }
}

/// Fills `buf` with the column sums of a row padded by one copy of the first and the last
/// (`buf[0] = s[0]`, `buf[1..=n] = s`, `buf[n + 1] = s[n - 1]`), the fancy filters' edges.
fn sums(buf: &mut Vec<u16>, s: impl ExactSizeIterator<Item = u16>) {
    let n = s.len();
    buf.clear();
    buf.push(0);
    buf.extend(s);
    buf[0] = buf[1];
    buf.push(buf[n]);
}

/// The horizontal triangle filter on padded column sums `buf` (see [`sums`]): output `2i` is
/// `(3 * s[i] + s[i - 1] + even_bias) >> shift`, output `2i + 1` is
/// `(3 * s[i] + s[i + 1] + odd_bias) >> shift` (`h2v1_fancy_upsample`: biases 1, 2, shift 2;
/// `h2v2_fancy_upsample`: biases 8, 7, shift 4).
pub(super) fn fancy_h2_plain(
    buf: &[u16],
    out: &mut [u8],
    even_bias: u16,
    odd_bias: u16,
    shift: u32,
) {
    for (x, o) in out.iter_mut().enumerate() {
        let i = x / 2 + 1;
        let c = buf[i] * 3;
        *o = if x.is_multiple_of(2) {
            ((c + buf[i - 1] + even_bias) >> shift) as u8
        } else {
            ((c + buf[i + 1] + odd_bias) >> shift) as u8
        };
    }
}
