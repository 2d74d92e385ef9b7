//! PIL's `Image.resize(size, Image.BILINEAR)` for 8-bit RGB images, reproduced bit for bit.
//!
//! Pillow resamples in two separable passes (horizontal, then vertical) with a triangle
//! filter whose support widens with the downscale factor (so a downscale averages every
//! source pixel under the output pixel, like an antialiased resize). Each pass convolves in
//! 22-bit fixed point and rounds to `u8` before the next pass starts. This module mirrors that
//! arithmetic exactly: the coefficients are computed in `f64` as Pillow does, converted to
//! fixed point with the same rounding, accumulated in integers from the same rounding bias and
//! clipped the same way, and the passes run in the same order, so the output bytes are
//! identical to PIL's (checked against Pillow 13.0).

use image::RgbImage;

use crate::error::{Error, Result};

/// Fixed-point precision of Pillow's 8-bit resampler (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Per-output-pixel convolution taps along one axis.
struct Taps {
    /// Maximum number of taps per output pixel (the stride of `weights`).
    ksize: usize,
    /// For each output pixel, the first input index and the number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` fixed-point weights per output pixel (unused ones are zero).
    weights: Vec<i32>,
}

/// Pillow's bilinear (triangle) filter, support 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

impl Taps {
    /// The taps that resample `in_size` pixels to `out_size` pixels over the whole input
    /// (Pillow's `precompute_coeffs` with the box `(0, in_size)` and `normalize_coeffs_8bpc`).
    fn new(in_size: usize, out_size: usize) -> Taps {
        // Pillow passes the box edges as C floats.
        let in0 = 0f32;
        let in1 = in_size as f32;
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = filterscale; // the triangle's support is 1.0
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;

        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for (xx, row) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let xmax = xmax.max(0) as usize;
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(xmax) {
                let w = triangle(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            for (x, out) in row.iter_mut().enumerate() {
                let mut w = if x < xmax { k[x] } else { 0.0 };
                if x < xmax && ww != 0.0 {
                    w /= ww;
                }
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *out = if w < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            bounds.push((xmin as usize, xmax));
        }
        Taps {
            ksize,
            bounds,
            weights,
        }
    }

    fn taps(&self, out_index: usize) -> (usize, &[i32]) {
        let (start, len) = self.bounds[out_index];
        let w = &self.weights[out_index * self.ksize..out_index * self.ksize + len];
        (start, w)
    }
}

/// Pillow's `clip8`: drop the fixed-point fraction (arithmetic shift) and clamp to 0..=255.
#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The rounding bias every accumulator starts from.
const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over rows `first_row..first_row + rows` of `src` (`in_w` pixels wide).
fn horizontal_pass(src: &[u8], in_w: usize, first_row: usize, rows: usize, taps: &Taps) -> Vec<u8> {
    let out_w = taps.bounds.len();
    let mut out = vec![0u8; rows * out_w * 3];
    for (r, out_row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let y = first_row + r;
        let in_row = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for (xx, out_px) in out_row.chunks_exact_mut(3).enumerate() {
            let (start, w) = taps.taps(xx);
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for (px, &k) in in_row[start * 3..(start + w.len()) * 3]
                .chunks_exact(3)
                .zip(w)
            {
                let k = i64::from(k);
                s0 += i64::from(px[0]) * k;
                s1 += i64::from(px[1]) * k;
                s2 += i64::from(px[2]) * k;
            }
            out_px[0] = clip8(s0);
            out_px[1] = clip8(s1);
            out_px[2] = clip8(s2);
        }
    }
    out
}

/// Vertical pass over `src` (`width` pixels wide); tap row indices are shifted by
/// `row_offset` (the first source row `src` holds).
fn vertical_pass(src: &[u8], width: usize, row_offset: usize, taps: &Taps) -> Vec<u8> {
    let stride = width * 3;
    let out_h = taps.bounds.len();
    let mut out = vec![0u8; out_h * stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (start, w) = taps.taps(yy);
        let start = start - row_offset;
        for (i, out_v) in out_row.iter_mut().enumerate() {
            let mut s = HALF;
            for (y, &k) in w.iter().enumerate() {
                s += i64::from(src[(start + y) * stride + i]) * i64::from(k);
            }
            *out_v = clip8(s);
        }
    }
    out
}

/// Resizes an RGB image to `width` x `height` exactly as PIL's
/// `Image.resize((width, height), Image.BILINEAR)` does (no `box`, no `reducing_gap`).
///
/// Like Pillow 10.x-13.x, the horizontal pass runs first, reading only the source rows the
/// vertical pass needs, unless the height shrinks by more than twice as many pixels as the
/// width does, in which case the vertical pass runs first. The order changes the rounding
/// between the passes, so it is part of the bit-exact contract.
pub fn resize_bilinear(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidArgument(format!(
            "resize target must be at least 1x1, got {width}x{height}"
        )));
    }
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    if in_w == 0 || in_h == 0 {
        return Err(Error::InvalidArgument(format!(
            "cannot resize an empty {in_w}x{in_h} image"
        )));
    }
    let (out_w, out_h) = (width as usize, height as usize);
    if (in_w, in_h) == (out_w, out_h) {
        return Ok(src.clone());
    }
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    let dh = in_h as i64 - out_h as i64;
    let dw = in_w as i64 - out_w as i64;
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let raw = src.as_raw().as_slice();

    let out = if horizontal_first {
        let vert = Taps::new(in_h, out_h);
        // Source rows the vertical pass reads.
        let first_row = vert.bounds[0].0;
        let last_row = vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1;
        if need_h {
            let horiz = Taps::new(in_w, out_w);
            if need_v {
                let mid = horizontal_pass(raw, in_w, first_row, last_row - first_row, &horiz);
                vertical_pass(&mid, out_w, first_row, &vert)
            } else {
                horizontal_pass(raw, in_w, 0, in_h, &horiz)
            }
        } else {
            vertical_pass(raw, in_w, 0, &vert)
        }
    } else {
        let vert = Taps::new(in_h, out_h);
        let mid = vertical_pass(raw, in_w, 0, &vert);
        if need_h {
            horizontal_pass(&mid, in_w, 0, out_h, &Taps::new(in_w, out_w))
        } else {
            mid
        }
    };
    RgbImage::from_raw(width, height, out)
        .ok_or_else(|| Error::InvalidArgument("internal: resize buffer size mismatch".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (i, o) in [(37, 532), (532, 37), (460, 448), (1000, 532), (5, 5)] {
            let t = Taps::new(i, o);
            for xx in 0..o {
                let (_, w) = t.taps(xx);
                let s: i64 = w.iter().map(|&k| i64::from(k)).sum();
                // Rounding each tap can move the sum by at most half a unit per tap.
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                    "{i}->{o} at {xx}"
                );
            }
        }
    }

    #[test]
    fn zero_target_is_an_error() {
        let img = RgbImage::new(4, 4);
        assert!(matches!(
            resize_bilinear(&img, 0, 3),
            Err(Error::InvalidArgument(_))
        ));
    }
}
