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

/// The intermediate image between the two passes, kept per thread between calls so that
/// repeated resizes do not allocate (and fault in) a fresh buffer each time.
mod scratch {
    use std::cell::Cell;

    /// Buffers larger than this are dropped rather than kept.
    const MAX_KEPT: usize = 16 << 20;

    thread_local! {
        static BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    }

    /// This thread's buffer (empty if another resize on this thread holds it).
    pub(super) fn take() -> Vec<u8> {
        BUF.with(Cell::take)
    }

    /// Gives a buffer back for the next resize on this thread.
    pub(super) fn put(buf: Vec<u8>) {
        if buf.capacity() <= MAX_KEPT {
            BUF.with(|b| b.set(buf));
        }
    }
}

/// A packed RGB8 buffer `width` pixels wide whose first column is column `col0` and first
/// row is row `row0` of the image it is a window of.
struct Window<'a> {
    data: &'a [u8],
    width: usize,
    col0: usize,
    row0: usize,
}

/// Horizontal pass: output columns `cols` of rows `rows` (indices of `src`'s image), written
/// into `out` (resized to fit).
fn horizontal_pass(
    src: &Window,
    rows: Range<usize>,
    taps: &Taps,
    cols: Range<usize>,
    mut out: Vec<u8>,
) -> Vec<u8> {
    let out_w = cols.len();
    out.clear();
    out.resize(rows.len() * out_w * 3, 0);
    let gathered = gather::Columns::new(taps, cols.clone(), src.col0);
    out.par_chunks_mut(ROWS_PER_TASK * out_w * 3)
        .enumerate()
        .for_each(|(t, chunk)| {
            for (r, out_row) in chunk.chunks_exact_mut(out_w * 3).enumerate() {
                let y = rows.start + t * ROWS_PER_TASK + r - src.row0;
                let in_row = &src.data[y * src.width * 3..(y + 1) * src.width * 3];
                // Whole groups of eight output pixels with AVX2, the rest below.
                let done = gathered.row(&src.data[y * src.width * 3..], out_row);
                for (xx, out_px) in cols.clone().zip(out_row.chunks_exact_mut(3)).skip(done) {
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

/// The horizontal pass eight output pixels at a time with AVX2: one 32-bit gather per tap
/// reads the tap's R, G and B bytes for eight pixels at once, and the same integer sums as the
/// scalar loop (exact, so in any order) run in vector lanes.
mod gather {
    use std::ops::Range;

    use super::{Taps, HALF, PRECISION_BITS};

    /// Output pixels per group: one AVX2 register of `i32`.
    const GROUP: usize = 8;

    /// The taps of a run of output columns, tap-major (structure of arrays).
    pub(super) struct Columns {
        /// Taps per output pixel (the longest tap list; shorter ones are padded).
        ksize: usize,
        /// Output pixels in the run.
        len: usize,
        /// `ksize x len` byte offsets from the row start of each tap's pixel; a padding tap
        /// repeats the first pixel (with weight zero).
        offsets: Vec<i32>,
        /// `ksize x len` fixed-point weights.
        weights: Vec<i32>,
        /// For each group, one past the last byte its gathers read from the row start.
        group_end: Vec<usize>,
        /// Whether the CPU has AVX2 and every offset fits in an `i32`.
        enabled: bool,
    }

    impl Columns {
        /// The taps of output columns `cols`, with source pixels counted from column `col0`.
        pub(super) fn new(taps: &Taps, cols: Range<usize>, col0: usize) -> Self {
            let len = cols.len();
            let groups = len / GROUP;
            let ksize = cols.clone().map(|x| taps.bounds[x].1).max().unwrap_or(0);
            let enabled = crate::model::cpu::kernels::has_avx2()
                && groups > 0
                && ksize > 0
                && cols.clone().all(|x| {
                    let (start, n) = taps.bounds[x];
                    n > 0 && start >= col0 && i32::try_from((start - col0 + n) * 3 + 1).is_ok()
                });
            if !enabled {
                return Columns {
                    ksize: 0,
                    len,
                    offsets: Vec::new(),
                    weights: Vec::new(),
                    group_end: Vec::new(),
                    enabled: false,
                };
            }
            let mut offsets = vec![0i32; ksize * len];
            let mut weights = vec![0i32; ksize * len];
            for (i, x) in cols.clone().enumerate() {
                let (start, w) = taps.taps(x);
                let first = start - col0;
                for j in 0..ksize {
                    let px = if j < w.len() { first + j } else { first };
                    offsets[j * len + i] = (px * 3) as i32;
                    weights[j * len + i] = w.get(j).copied().unwrap_or(0);
                }
            }
            // A gather reads four bytes, one past the pixel's three.
            let group_end = (0..groups)
                .map(|g| {
                    let (start, n) = taps.bounds[cols.start + g * GROUP + GROUP - 1];
                    (start - col0 + n) * 3 + 1
                })
                .collect();
            Columns {
                ksize,
                len,
                offsets,
                weights,
                group_end,
                enabled,
            }
        }

        /// Resamples the first whole groups of `out_row` (RGB bytes of the run's pixels)
        /// from `row` (the source row's first byte onwards; later rows may follow it), and
        /// returns how many pixels it did; zero without AVX2.
        #[inline]
        pub(super) fn row(&self, row: &[u8], out_row: &mut [u8]) -> usize {
            #[cfg(target_arch = "x86_64")]
            if self.enabled {
                assert!(out_row.len() >= self.len * 3);
                // Groups whose every gather stays inside `row` (the ends are monotonic).
                let groups = self.group_end.partition_point(|&end| end <= row.len());
                // SAFETY: AVX2 is present (`enabled`); each group's offsets read at most
                // `group_end` bytes from the start of `row`, which holds them (just checked);
                // `out_row` holds `self.len >= groups * GROUP` pixels (asserted).
                unsafe { self.avx2(row, out_row, groups) };
                return groups * GROUP;
            }
            0
        }

        /// # Safety
        /// AVX2 must be present, `row` must hold `group_end[g]` bytes for every `g < groups`,
        /// and `out_row` must hold `groups * GROUP` pixels.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(&self, row: &[u8], out_row: &mut [u8], groups: usize) {
            use std::arch::x86_64::*;
            let base = row.as_ptr().cast::<i32>();
            let byte = _mm256_set1_epi32(0xff);
            for g in 0..groups {
                let i = g * GROUP;
                let (mut r, mut gr, mut b) = (
                    _mm256_set1_epi32(HALF),
                    _mm256_set1_epi32(HALF),
                    _mm256_set1_epi32(HALF),
                );
                for j in 0..self.ksize {
                    let at = j * self.len + i;
                    let off = _mm256_loadu_si256(self.offsets.as_ptr().add(at).cast());
                    let k = _mm256_loadu_si256(self.weights.as_ptr().add(at).cast());
                    let px = _mm256_i32gather_epi32::<1>(base, off);
                    let pr = _mm256_and_si256(px, byte);
                    let pg = _mm256_and_si256(_mm256_srli_epi32::<8>(px), byte);
                    let pb = _mm256_and_si256(_mm256_srli_epi32::<16>(px), byte);
                    r = _mm256_add_epi32(r, _mm256_mullo_epi32(pr, k));
                    gr = _mm256_add_epi32(gr, _mm256_mullo_epi32(pg, k));
                    b = _mm256_add_epi32(b, _mm256_mullo_epi32(pb, k));
                }
                // clip8 on each lane: arithmetic shift, then clamp to 0..=255.
                let zero = _mm256_setzero_si256();
                let clip = |v| _mm256_min_epi32(_mm256_max_epi32(v, zero), byte);
                let r = clip(_mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(r));
                let gr = clip(_mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(gr));
                let b = clip(_mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(b));
                let rgb = _mm256_or_si256(
                    r,
                    _mm256_or_si256(_mm256_slli_epi32::<8>(gr), _mm256_slli_epi32::<16>(b)),
                );
                let mut lanes = [0u32; GROUP];
                _mm256_storeu_si256(lanes.as_mut_ptr().cast(), rgb);
                let out = &mut out_row[i * 3..(i + GROUP) * 3];
                for (o, v) in out.chunks_exact_mut(3).zip(lanes) {
                    o.copy_from_slice(&v.to_le_bytes()[..3]);
                }
            }
        }
    }
}

/// Bytes of a vertical-pass row accumulated in registers at a time.
const V_BLOCK: usize = 32;

/// Vertical pass: output rows `rows`, columns `cols` of `src` (indices of `src`'s image),
/// into `out`. Each block of [`V_BLOCK`] bytes of an output row accumulates the same bytes of
/// every source row under its taps in registers (integer sums, so the order is free), which
/// vectorizes.
fn vertical_pass(
    src: &Window,
    taps: &Taps,
    rows: Range<usize>,
    cols: Range<usize>,
    out: &mut Vec<u8>,
) {
    let in_stride = src.width * 3;
    let in_off = (cols.start - src.col0) * 3;
    let stride = cols.len() * 3;
    out.clear();
    out.resize(rows.len() * stride, 0);
    out.par_chunks_mut(ROWS_PER_TASK * stride)
        .enumerate()
        .for_each(|(t, chunk)| {
            with_avx2(
                #[inline(always)]
                || {
                    for (r, out_row) in chunk.chunks_exact_mut(stride).enumerate() {
                        let (start, w) = taps.taps(rows.start + t * ROWS_PER_TASK + r);
                        let first = (start - src.row0) * in_stride + in_off;
                        if stride < V_BLOCK {
                            for (i, o) in out_row.iter_mut().enumerate() {
                                let mut acc = HALF;
                                for (y, &k) in w.iter().enumerate() {
                                    acc += i32::from(src.data[first + y * in_stride + i]) * k;
                                }
                                *o = clip8(acc);
                            }
                            continue;
                        }
                        // Whole blocks, then one last block ending at the row's end, which
                        // recomputes some bytes of the one before (the same values).
                        let last = stride - V_BLOCK;
                        let starts = (0..last).step_by(V_BLOCK).chain([last]);
                        for c in starts {
                            let out = &mut out_row[c..c + V_BLOCK];
                            vertical_block::<V_BLOCK>(src.data, first + c, in_stride, w, out);
                        }
                    }
                },
            );
        });
}

/// `N` output bytes of the vertical pass: source bytes `at..at + N` of each row under the
/// taps `w` (rows `in_stride` apart), weighted and summed.
#[inline(always)]
fn vertical_block<const N: usize>(
    data: &[u8],
    at: usize,
    in_stride: usize,
    w: &[i32],
    out: &mut [u8],
) {
    let mut acc = [HALF; N];
    for (y, &k) in w.iter().enumerate() {
        let row: &[u8; N] = data[at + y * in_stride..at + y * in_stride + N]
            .try_into()
            .expect("N bytes");
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += i32::from(v) * k;
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = clip8(a);
    }
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
            // The intermediate is reused (per thread) when the vertical pass follows.
            let buf = if vert.is_some() {
                scratch::take()
            } else {
                Vec::new()
            };
            horizontal_pass(
                &image,
                src_rows.clone(),
                &Taps::new(in_w, out_w),
                cols.clone(),
                buf,
            )
        } else {
            copy_window(&image, src_rows.clone(), cols.clone())
        };
        match vert {
            Some(vert) => {
                let win = Window {
                    data: &mid,
                    width: cols.len(),
                    col0: cols.start,
                    row0: src_rows.start,
                };
                let mut out = Vec::new();
                vertical_pass(&win, &vert, rows, cols, &mut out);
                scratch::put(mid);
                out
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
        let mut mid = scratch::take();
        let vert = Taps::new(in_h, out_h);
        vertical_pass(&image, &vert, rows.clone(), src_cols.clone(), &mut mid);
        let win = Window {
            data: &mid,
            width: src_cols.len(),
            col0: src_cols.start,
            row0: rows.start,
        };
        let out = match horiz {
            Some(horiz) => horizontal_pass(&win, rows, &horiz, cols, Vec::new()),
            None => copy_window(&win, rows, cols),
        };
        scratch::put(mid);
        out
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

    /// One pass of the resampler written as plainly as possible: every output byte from its
    /// taps, along the x axis (`horizontal`) or the y axis.
    fn naive_pass(src: &RgbImage, taps: &Taps, horizontal: bool) -> RgbImage {
        let (w, h) = src.dimensions();
        let (ow, oh) = if horizontal {
            (taps.bounds.len() as u32, h)
        } else {
            (w, taps.bounds.len() as u32)
        };
        RgbImage::from_fn(ow, oh, |x, y| {
            let (start, k) = taps.taps(if horizontal { x } else { y } as usize);
            let mut px = [0u8; 3];
            for (c, p) in px.iter_mut().enumerate() {
                let mut acc = HALF;
                for (j, &kj) in k.iter().enumerate() {
                    let (sx, sy) = if horizontal {
                        ((start + j) as u32, y)
                    } else {
                        (x, (start + j) as u32)
                    };
                    acc += i32::from(src.get_pixel(sx, sy)[c]) * kj;
                }
                *p = clip8(acc);
            }
            image::Rgb(px)
        })
    }

    /// The vectorized passes (gathers, register blocks, the overlapping last block) give the
    /// same bytes as the plain loops, for tiny and wide images, up- and downscales with few
    /// and many taps, and both pass orders.
    #[test]
    fn vector_passes_equal_plain_loops() {
        let mut seed = 0x9e37_79b9u32;
        let mut byte = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed >> 24) as u8
        };
        let cases = [
            (1, 1, 3, 2),
            (3, 5, 17, 4),
            (10, 7, 9, 13),
            (37, 29, 11, 100),
            (300, 40, 41, 40),
            (512, 600, 532, 532),
            (451, 300, 532, 532),
            (700, 90, 64, 90),
            (90, 700, 90, 35),
            (1000, 33, 37, 31),
        ];
        for (w, h, ow, oh) in cases {
            let img = RgbImage::from_fn(w, h, |_, _| image::Rgb([byte(), byte(), byte()]));
            let horizontal_first = !(h > oh && (h - oh) as i64 > 2 * (w as i64 - ow as i64));
            let hx = Taps::new(w as usize, ow as usize);
            let vy = Taps::new(h as usize, oh as usize);
            let want = if horizontal_first {
                let mid = if ow != w {
                    naive_pass(&img, &hx, true)
                } else {
                    img.clone()
                };
                if oh != h {
                    naive_pass(&mid, &vy, false)
                } else {
                    mid
                }
            } else {
                let mid = naive_pass(&img, &vy, false);
                if ow != w {
                    naive_pass(&mid, &hx, true)
                } else {
                    mid
                }
            };
            let got = resize_bilinear(&img, ow, oh).unwrap();
            assert_eq!(got, want, "{w}x{h} -> {ow}x{oh}");
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

/// The source index PIL's nearest-neighbour resize reads for each of `out` output positions
/// over `inp` input positions (`None` past the edge: left black). Pillow scales with an affine
/// transform: the position starts at half a step and accumulates the step `inp / out` in
/// `f64` once per output pixel, truncating each to an index.
fn nearest_indices(inp: usize, out: usize) -> Vec<Option<usize>> {
    let step = inp as f64 / out as f64;
    let mut pos = step * 0.5;
    (0..out)
        .map(|_| {
            let i = if pos < 0.0 { None } else { Some(pos as usize) };
            pos += step;
            i.filter(|&i| i < inp)
        })
        .collect()
}

/// Resizes an RGB image to `width` x `height` exactly as PIL's
/// `Image.resize((width, height), Image.NEAREST)` does (a copy when the size is unchanged).
pub fn resize_nearest(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
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
    if (in_w, in_h) == (width as usize, height as usize) {
        return Ok(src.clone());
    }
    let xs = nearest_indices(in_w, width as usize);
    let ys = nearest_indices(in_h, height as usize);
    let data = src.as_raw();
    let mut out = vec![0u8; width as usize * height as usize * 3];
    out.par_chunks_mut(width as usize * 3)
        .zip(ys.par_iter())
        .for_each(|(row, sy)| {
            let Some(sy) = sy else { return };
            let line = &data[sy * in_w * 3..(sy + 1) * in_w * 3];
            for (px, sx) in row.chunks_exact_mut(3).zip(&xs) {
                if let Some(sx) = sx {
                    px.copy_from_slice(&line[sx * 3..sx * 3 + 3]);
                }
            }
        });
    RgbImage::from_raw(width, height, out)
        .ok_or_else(|| Error::InvalidArgument("resize: internal buffer size".into()))
}

#[cfg(test)]
mod nearest_tests {
    use super::*;

    #[test]
    fn nearest_indices_accumulate_like_pillow() {
        // PIL: Image.new('L', (5, 1)) resized to 3 reads columns 0, 2, 4.
        let got: Vec<usize> = nearest_indices(5, 3).into_iter().flatten().collect();
        assert_eq!(got, [0, 2, 4]);
        let up: Vec<usize> = nearest_indices(2, 5).into_iter().flatten().collect();
        assert_eq!(up, [0, 0, 1, 1, 1]);
    }
}
