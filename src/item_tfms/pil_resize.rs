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

use std::ops::Range;

use image::RgbImage;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::cpu::kernels::with_avx2;

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
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The rounding bias every accumulator starts from. Pillow accumulates in 32-bit ints; with
/// the triangle filter's non-negative weights summing to about 2^22 the sums stay below
/// 255 * 2^22 + 2^21 < 2^31, so i32 is exact.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// A packed RGB8 buffer `width` pixels wide whose first column is column `col0` and first
/// row is row `row0` of the image it is a window of.
struct Window<'a> {
    data: &'a [u8],
    width: usize,
    col0: usize,
    row0: usize,
}

/// Horizontal pass: output columns `cols` of rows `rows` (indices of `src`'s image).
fn horizontal_pass(src: &Window, rows: Range<usize>, taps: &Taps, cols: Range<usize>) -> Vec<u8> {
    let out_w = cols.len();
    let mut out = vec![0u8; rows.len() * out_w * 3];
    out.par_chunks_mut(ROWS_PER_TASK * out_w * 3)
        .enumerate()
        .for_each(|(t, chunk)| {
            for (r, out_row) in chunk.chunks_exact_mut(out_w * 3).enumerate() {
                let y = rows.start + t * ROWS_PER_TASK + r - src.row0;
                let in_row = &src.data[y * src.width * 3..(y + 1) * src.width * 3];
                for (xx, out_px) in cols.clone().zip(out_row.chunks_exact_mut(3)) {
                    let (start, w) = taps.taps(xx);
                    let start = start - src.col0;
                    let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
                    for (px, &k) in in_row[start * 3..(start + w.len()) * 3]
                        .chunks_exact(3)
                        .zip(w)
                    {
                        s0 += i32::from(px[0]) * k;
                        s1 += i32::from(px[1]) * k;
                        s2 += i32::from(px[2]) * k;
                    }
                    out_px[0] = clip8(s0);
                    out_px[1] = clip8(s1);
                    out_px[2] = clip8(s2);
                }
            }
        });
    out
}

/// Vertical pass: output rows `rows`, all of `src`'s columns. Each output row accumulates
/// whole source rows (integer sums, so the order is free), which vectorizes.
fn vertical_pass(src: &Window, taps: &Taps, rows: Range<usize>) -> Vec<u8> {
    let stride = src.width * 3;
    let mut out = vec![0u8; rows.len() * stride];
    out.par_chunks_mut(ROWS_PER_TASK * stride)
        .enumerate()
        .for_each(|(t, chunk)| {
            let mut acc = vec![0i32; stride];
            with_avx2(
                #[inline(always)]
                || {
                    for (r, out_row) in chunk.chunks_exact_mut(stride).enumerate() {
                        let (start, w) = taps.taps(rows.start + t * ROWS_PER_TASK + r);
                        let start = start - src.row0;
                        acc.fill(HALF);
                        for (y, &k) in w.iter().enumerate() {
                            let in_row = &src.data[(start + y) * stride..(start + y + 1) * stride];
                            for (a, &v) in acc.iter_mut().zip(in_row) {
                                *a += i32::from(v) * k;
                            }
                        }
                        for (o, &a) in out_row.iter_mut().zip(&acc) {
                            *o = clip8(a);
                        }
                    }
                },
            );
        });
    out
}

/// Columns `cols` of rows `rows` of `src`, copied.
fn copy_window(src: &Window, rows: Range<usize>, cols: Range<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * cols.len() * 3);
    for y in rows {
        let y = y - src.row0;
        let start = (y * src.width + cols.start - src.col0) * 3;
        out.extend_from_slice(&src.data[start..start + cols.len() * 3]);
    }
    out
}

/// The source indices taps `out` read, as one range (taps are monotonic).
fn source_span(taps: &Taps, out: &Range<usize>) -> Range<usize> {
    let first = taps.bounds[out.start].0;
    let (last_start, last_len) = taps.bounds[out.end - 1];
    first..last_start + last_len
}

/// Resizes an RGB image to `width` x `height` exactly as PIL's
/// `Image.resize((width, height), Image.BILINEAR)` does (no `box`, no `reducing_gap`).
///
/// Like Pillow 10.x-13.x, the horizontal pass runs first, reading only the source rows the
/// vertical pass needs, unless the height shrinks by more than twice as many pixels as the
/// width does, in which case the vertical pass runs first. The order changes the rounding
/// between the passes, so it is part of the bit-exact contract.
pub fn resize_bilinear(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    resize_bilinear_crop(src, width, height, (0, 0, width, height))
}

/// The `(left, top, width, height)` window of [`resize_bilinear`]`(src, width, height)`,
/// computing only the pixels inside it: the same bytes as resizing and then cropping, as each
/// output pixel depends only on its own taps. The window must lie inside the resized image.
pub fn resize_bilinear_crop(
    src: &RgbImage,
    width: u32,
    height: u32,
    (left, top, crop_w, crop_h): (u32, u32, u32, u32),
) -> Result<RgbImage> {
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
    let inside = |start: u32, len: u32, size: u32| {
        len > 0 && start.checked_add(len).is_some_and(|e| e <= size)
    };
    if !inside(left, crop_w, width) || !inside(top, crop_h, height) {
        return Err(Error::InvalidArgument(format!(
            "crop {crop_w}x{crop_h} at ({left}, {top}) does not fit in {width}x{height}"
        )));
    }
    let (out_w, out_h) = (width as usize, height as usize);
    let cols = left as usize..(left + crop_w) as usize;
    let rows = top as usize..(top + crop_h) as usize;
    let image = Window {
        data: src.as_raw(),
        width: in_w,
        col0: 0,
        row0: 0,
    };
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    let dh = in_h as i64 - out_h as i64;
    let dw = in_w as i64 - out_w as i64;
    let horizontal_first = !(dh > 0 && dh > dw * 2);

    let out = if horizontal_first {
        // Horizontal pass over the source rows the wanted output rows read, then vertical.
        let vert = need_v.then(|| Taps::new(in_h, out_h));
        let src_rows = vert
            .as_ref()
            .map_or(rows.clone(), |v| source_span(v, &rows));
        let mid = if need_h {
            horizontal_pass(
                &image,
                src_rows.clone(),
                &Taps::new(in_w, out_w),
                cols.clone(),
            )
        } else {
            copy_window(&image, src_rows.clone(), cols.clone())
        };
        match vert {
            Some(vert) => {
                let mid = Window {
                    data: &mid,
                    width: cols.len(),
                    col0: cols.start,
                    row0: src_rows.start,
                };
                vertical_pass(&mid, &vert, rows)
            }
            None => mid,
        }
    } else {
        // Vertical pass over the source columns the wanted output columns read, then
        // horizontal.
        let horiz = need_h.then(|| Taps::new(in_w, out_w));
        let src_cols = horiz
            .as_ref()
            .map_or(cols.clone(), |h| source_span(h, &cols));
        let narrow = copy_window(&image, 0..in_h, src_cols.clone());
        let narrow = Window {
            data: &narrow,
            width: src_cols.len(),
            col0: src_cols.start,
            row0: 0,
        };
        let mid = vertical_pass(&narrow, &Taps::new(in_h, out_h), rows.clone());
        let mid = Window {
            data: &mid,
            width: src_cols.len(),
            col0: src_cols.start,
            row0: rows.start,
        };
        match horiz {
            Some(horiz) => horizontal_pass(&mid, rows, &horiz, cols),
            None => copy_window(&mid, rows, cols),
        }
    };
    RgbImage::from_raw(crop_w, crop_h, out)
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

    /// Resizing a window equals resizing everything and cropping, on both pass orders and
    /// with one axis left alone.
    #[test]
    fn window_equals_crop_of_full_resize() {
        let img = RgbImage::from_fn(61, 37, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (255 - x * 4) as u8])
        });
        // (out_w, out_h): horizontal first, vertical first (height shrinks a lot), same
        // width, same height, upscale.
        for (ow, oh) in [(50, 30), (58, 9), (61, 20), (45, 37), (130, 90)] {
            let full = resize_bilinear(&img, ow, oh).unwrap();
            for (l, t, cw, ch) in [
                (0, 0, ow, oh),
                (3, 2, ow - 5, oh - 3),
                (ow - 1, oh - 1, 1, 1),
            ] {
                let win = resize_bilinear_crop(&img, ow, oh, (l, t, cw, ch)).unwrap();
                let cropped = image::imageops::crop_imm(&full, l, t, cw, ch).to_image();
                assert_eq!(win, cropped, "{ow}x{oh} window ({l}, {t}, {cw}, {ch})");
            }
        }
        assert!(resize_bilinear_crop(&img, 10, 10, (5, 0, 6, 10)).is_err());
        assert!(resize_bilinear_crop(&img, 10, 10, (0, 0, 0, 10)).is_err());
        assert!(resize_bilinear_crop(&img, 10, 10, (u32::MAX, 0, 2, 10)).is_err());
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
