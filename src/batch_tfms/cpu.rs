//! The CPU fast path of [`BatchTfms`](super::BatchTfms): the same arithmetic as the candle-op
//! path (`IntToFloatTensor`, fastai's area pre-interpolation, the identity `grid_sample`,
//! `Normalize`), step for step in `f32`, as direct loops over the pixels, split across threads
//! by rows. Tested to give the same bits as the candle-op path.
//!
//! The identity grid is separable, so the source coordinates, neighbour indices and bilinear
//! weights are computed once per output column and once per output row instead of once per
//! pixel.

use rayon::prelude::*;

use super::grid_sample::{area_pre_size, linspace_neg_one_to_one, pool_window};
use super::Normalize;
use crate::model::cpu::kernels::with_avx2;

/// Rows per parallel work item.
const ROWS_PER_TASK: usize = 16;

/// One axis of the identity `grid_sample` for an output position: the west/north source
/// index, whether the east/south neighbour is inside the image, and the distance to the
/// west/north pixel.
#[derive(Clone, Copy)]
struct Tap {
    i0: usize,
    i1_inside: bool,
    frac: f32,
}

/// A column's taps with the weights ready: west `i0` and east `i1` (an in-bounds stand-in of
/// weight zero when the east neighbour is outside), `ea = 1 - frac` and `we = frac`.
#[derive(Clone, Copy)]
struct ColTap {
    i0: usize,
    i1: usize,
    we: f32,
    ea: f32,
}

/// PyTorch's source coordinate for grid value `g` on an axis of `size` pixels with
/// `align_corners=True` and reflection padding (unnormalize, reflect, clip), then the tap.
fn tap(g: f32, size: usize) -> Tap {
    if size <= 1 {
        return Tap {
            i0: 0,
            i1_inside: false,
            frac: 0.0,
        };
    }
    let scaling = (size - 1) as f32 / 2.0;
    let twice_span = (size - 1) as f32 * 2.0;
    let x = (g + 1.0) * scaling;
    let abs = x.abs();
    let flips = (abs / twice_span).floor();
    let extra = abs - flips * twice_span;
    let reflected = extra.min(twice_span - extra);
    let c = reflected.max(0.0).min((size - 1) as f32);
    let f = c.floor();
    let i0 = f as usize;
    Tap {
        i0,
        i1_inside: i0 < size - 1,
        frac: c - f,
    }
}

/// `round_f32(a * b + acc)`, PyTorch's fused multiply-add, computed as the candle-op path
/// does: in `f64`, where the product of two `f32` is exact, then rounded once to `f32`. That
/// equals a hardware FMA except when the `f64` sum lands exactly halfway between two `f32`
/// values without being exact (a double rounding, about one case in 2^29 for these values).
#[inline]
fn fma(a: f32, b: f32, acc: f32) -> f32 {
    (f64::from(a) * f64::from(b) + f64::from(acc)) as f32
}

/// The output-row loop of the identity `grid_sample` with AVX2 gathers and hardware FMA, eight
/// output columns at a time.
mod gather {
    use super::ColTap;

    /// The columns' taps as arrays (structure of arrays), for vector loads.
    pub(super) struct Columns {
        i0: Vec<i32>,
        i1: Vec<i32>,
        we: Vec<f32>,
        ea: Vec<f32>,
        /// Whether the AVX2 loop may run: the CPU has AVX2 + FMA and every index fits the
        /// source row (so the gathers stay inside it).
        enabled: bool,
        /// The source row's width every index was checked against.
        width: usize,
    }

    impl Columns {
        pub(super) fn new(cols: &[ColTap], width: usize) -> Self {
            let fits = |i: usize| i < width && i32::try_from(i).is_ok();
            let enabled = crate::model::cpu::kernels::has_avx2()
                && cols.iter().all(|c| fits(c.i0) && fits(c.i1));
            Columns {
                i0: cols.iter().map(|c| c.i0 as i32).collect(),
                i1: cols.iter().map(|c| c.i1 as i32).collect(),
                we: cols.iter().map(|c| c.we).collect(),
                ea: cols.iter().map(|c| c.ea).collect(),
                enabled,
                width,
            }
        }
    }

    /// Computes the first multiple of eight of `out`'s columns exactly as the scalar loop
    /// (with a hardware FMA in place of [`super::fma`]) and returns how many it did; zero
    /// without AVX2 + FMA.
    #[inline(always)]
    pub(super) fn sample_row(
        cols: &Columns,
        (nrow, srow): (&[f32], &[f32]),
        (north_w, south_w): (f32, f32),
        (mean, std): (f32, f32),
        out: &mut [f32],
    ) -> usize {
        #[cfg(target_arch = "x86_64")]
        if cols.enabled {
            assert!(nrow.len() >= cols.width && srow.len() >= cols.width);
            let n = out.len().min(cols.i0.len()) / 8 * 8;
            // SAFETY: `enabled` means the CPU has AVX2 + FMA and every index is below
            // `width`, which both rows reach (asserted); `n` is within every array.
            unsafe {
                avx2(
                    cols,
                    (nrow, srow),
                    (north_w, south_w),
                    (mean, std),
                    &mut out[..n],
                )
            };
            return n;
        }
        0
    }

    /// # Safety
    /// AVX2 + FMA must be present, every index in `cols` must be inside `nrow` and `srow`, and
    /// `out.len()` a multiple of eight no longer than `cols`' arrays.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(
        cols: &Columns,
        (nrow, srow): (&[f32], &[f32]),
        (north_w, south_w): (f32, f32),
        (mean, std): (f32, f32),
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let (nw, sw) = (_mm256_set1_ps(north_w), _mm256_set1_ps(south_w));
        let (mean, std) = (_mm256_set1_ps(mean), _mm256_set1_ps(std));
        let (np, sp) = (nrow.as_ptr(), srow.as_ptr());
        for x in (0..out.len()).step_by(8) {
            let i0 = _mm256_loadu_si256(cols.i0.as_ptr().add(x).cast());
            let i1 = _mm256_loadu_si256(cols.i1.as_ptr().add(x).cast());
            let ea = _mm256_loadu_ps(cols.ea.as_ptr().add(x));
            let we = _mm256_loadu_ps(cols.we.as_ptr().add(x));
            let n0 = _mm256_i32gather_ps::<4>(np, i0);
            let n1 = _mm256_i32gather_ps::<4>(np, i1);
            let s0 = _mm256_i32gather_ps::<4>(sp, i0);
            let s1 = _mm256_i32gather_ps::<4>(sp, i1);
            let mut v = _mm256_mul_ps(n0, _mm256_mul_ps(nw, ea));
            v = _mm256_fmadd_ps(n1, _mm256_mul_ps(nw, we), v);
            v = _mm256_fmadd_ps(s0, _mm256_mul_ps(sw, ea), v);
            v = _mm256_fmadd_ps(s1, _mm256_mul_ps(sw, we), v);
            let o = _mm256_div_ps(_mm256_sub_ps(v, mean), std);
            _mm256_storeu_ps(out.as_mut_ptr().add(x), o);
        }
    }
}

/// Runs the batch transforms on HWC `u8` images of `h` x `w` (each slice one image, `h * w * 3`
/// bytes), returning the normalized `(images.len(), 3, out_h, out_w)` `f32` batch.
///
/// One pass per output row, with no full-size intermediate: the (at most two) rows of the
/// sampled image an output row reads are built on the fly from the bytes (`IntToFloatTensor`,
/// then the area pooling when fastai applies it), into a small per-task buffer.
pub(crate) fn encodes(
    images: &[&[u8]],
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
    normalize: &Normalize,
) -> Vec<f32> {
    let xs = linspace_neg_one_to_one(out_w);
    let ys = linspace_neg_one_to_one(out_h);
    let range = {
        let all = xs.iter().chain(&ys);
        let mx = all.clone().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mn = all.fold(f32::INFINITY, |a, &b| a.min(b));
        mx - mn
    };
    let n = images.len();
    let source = Source::new(images, (h, w), area_pre_size(h, w, out_w, range));
    let (sh, sw) = source.size();
    let cols: Vec<ColTap> = xs
        .iter()
        .map(|&g| {
            let t = tap(g, sw);
            // Outside the image the east neighbour gets weight zero (see below).
            let we = if t.i1_inside { t.frac } else { 0.0 };
            ColTap {
                i0: t.i0,
                i1: if t.i1_inside { t.i0 + 1 } else { t.i0 },
                we,
                ea: 1.0 - t.frac,
            }
        })
        .collect();
    let rows: Vec<Tap> = ys.iter().map(|&g| tap(g, sh)).collect();
    let soa = gather::Columns::new(&cols, sw);

    let mut out = vec![0f32; n * 3 * out_h * out_w];
    // One task per block of output rows of one image, all three channels.
    let blocks = out_h.div_ceil(ROWS_PER_TASK);
    let mut tasks: Vec<(usize, usize, Vec<&mut [f32]>)> = Vec::with_capacity(n * blocks);
    for (img, image_out) in out.chunks_exact_mut(3 * out_h * out_w).enumerate() {
        let mut planes: Vec<_> = image_out
            .chunks_exact_mut(out_h * out_w)
            .map(|p| p.chunks_mut(ROWS_PER_TASK * out_w))
            .collect();
        for b in 0..blocks {
            let parts: Vec<&mut [f32]> = planes.iter_mut().filter_map(|p| p.next()).collect();
            tasks.push((img, b * ROWS_PER_TASK, parts));
        }
    }
    tasks.into_par_iter().for_each(|(img, y0, mut parts)| {
        with_avx2(
            #[inline(always)]
            || {
                let mut north = vec![0f32; 3 * sw];
                let mut south = vec![0f32; 3 * sw];
                let mut cache = RowCache::new(w);
                let rows_here = parts.first().map_or(0, |p| p.len() / out_w);
                for r in 0..rows_here {
                    let ty = rows[y0 + r];
                    source.row(img, ty.i0, &mut north, &mut cache);
                    if ty.i1_inside {
                        source.row(img, ty.i0 + 1, &mut south, &mut cache);
                    }
                    let no = ty.frac;
                    let so = 1.0 - no;
                    // A neighbour outside the image has weight zero: torch adds it as a masked zero,
                    // and `fma(x, 0, v) == v`, so reading any in-bounds pixel there gives the same bits
                    // without a branch per pixel.
                    let south_row = if ty.i1_inside { &south } else { &north };
                    let (north_w, south_w) = (so, if ty.i1_inside { no } else { 0.0 });
                    for (ch, part) in parts.iter_mut().enumerate() {
                        let nrow = &north[ch * sw..(ch + 1) * sw];
                        let srow = &south_row[ch * sw..(ch + 1) * sw];
                        let orow = &mut part[r * out_w..(r + 1) * out_w];
                        let (mean, std) = (normalize.mean[ch], normalize.std[ch]);
                        let done = gather::sample_row(
                            &soa,
                            (nrow, srow),
                            (north_w, south_w),
                            (mean, std),
                            orow,
                        );
                        for (o, c) in orow.iter_mut().zip(&cols).skip(done) {
                            let mut v = nrow[c.i0] * (north_w * c.ea);
                            v = fma(nrow[c.i1], north_w * c.we, v);
                            v = fma(srow[c.i0], south_w * c.ea, v);
                            v = fma(srow[c.i1], south_w * c.we, v);
                            *o = (v - mean) / std;
                        }
                    }
                }
            },
        )
    });
    out
}

/// `IntToFloatTensor` then `Normalize` without resampling (no `AffineCoordTfm`): HWC `u8`
/// images of `h` x `w` to the normalized `(images.len(), 3, h, w)` `f32` batch, each value
/// `(v / 255 - mean) / std` in `f32` as the candle-op path computes it.
pub(crate) fn encodes_plain(
    images: &[&[u8]],
    (h, w): (usize, usize),
    normalize: &Normalize,
) -> Vec<f32> {
    let lut: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
    let plane = h * w;
    let mut out = vec![0f32; images.len() * 3 * plane];
    out.par_chunks_mut(3 * plane)
        .zip(images.par_iter())
        .for_each(|(o, img)| {
            for ch in 0..3 {
                let (mean, std) = (normalize.mean[ch], normalize.std[ch]);
                for (dst, px) in o[ch * plane..(ch + 1) * plane]
                    .iter_mut()
                    .zip(img.chunks_exact(3))
                {
                    *dst = (lut[usize::from(px[ch])] - mean) / std;
                }
            }
        });
    out
}

/// `(image index, row index)`.
type ImageRow = (usize, usize);
/// Start and end (exclusive) of a pooling window.
type Window = (usize, usize);

/// The last few source rows converted to `f32`, so that overlapping pooling windows and
/// neighbouring output rows convert each source row once.
struct RowCache {
    /// `(image, row)` held by each slot, and the row.
    slots: Vec<(Option<ImageRow>, Vec<f32>)>,
}

impl RowCache {
    const SLOTS: usize = 4;

    fn new(w: usize) -> Self {
        RowCache {
            slots: (0..Self::SLOTS)
                .map(|_| (None, vec![0f32; 3 * w]))
                .collect(),
        }
    }

    #[inline(always)]
    fn get(&mut self, src: &Source, img: usize, y: usize) -> &[f32] {
        let slot = &mut self.slots[y % Self::SLOTS];
        if slot.0 != Some((img, y)) {
            src.convert_row(img, y, &mut slot.1);
            slot.0 = Some((img, y));
        }
        &slot.1
    }
}

/// Consecutive pooled columns whose windows have the same width and start one source column
/// apart: column `cols.start + k` pools source columns `src + k .. src + k + width`. Runs turn
/// the pooling into additions of contiguous slices, which vectorize.
struct Run {
    cols: std::ops::Range<usize>,
    src: usize,
    width: usize,
}

/// Splits column windows into [`Run`]s.
fn runs(windows: &[Window]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (j, &(c0, c1)) in windows.iter().enumerate() {
        let width = c1 - c0;
        match out.last_mut() {
            Some(run) if run.width == width && run.src + run.cols.len() == c0 => {
                run.cols.end = j + 1
            }
            _ => out.push(Run {
                cols: j..j + 1,
                src: c0,
                width,
            }),
        }
    }
    out
}

/// The image `grid_sample` reads: the bytes as `f32` in `[0, 1]`, or their area pooling.
struct Source<'a> {
    images: &'a [&'a [u8]],
    h: usize,
    w: usize,
    /// `v / 255` in f32 for every byte value: the same quotients as dividing each time.
    lut: [f32; 256],
    /// Pooling windows of the rows and runs of the columns, when fastai pre-interpolates.
    pool: Option<(Vec<Window>, Vec<Run>)>,
    /// The column windows' widths as f32.
    col_widths: Vec<f32>,
}

impl<'a> Source<'a> {
    fn new(images: &'a [&'a [u8]], (h, w): (usize, usize), pooled: Option<(usize, usize)>) -> Self {
        let (pool, col_widths) = match pooled {
            Some((ph, pw)) => {
                let cols: Vec<Window> = (0..pw).map(|i| pool_window(i, pw, w)).collect();
                let widths = cols.iter().map(|(c0, c1)| (c1 - c0) as f32).collect();
                let rows = (0..ph).map(|i| pool_window(i, ph, h)).collect();
                (Some((rows, runs(&cols))), widths)
            }
            None => (None, Vec::new()),
        };
        Source {
            images,
            h,
            w,
            lut: std::array::from_fn(|v| v as f32 / 255.0),
            pool,
            col_widths,
        }
    }

    /// Height and width of the sampled image.
    fn size(&self) -> (usize, usize) {
        match &self.pool {
            Some((rows, _)) => (rows.len(), self.col_widths.len()),
            None => (self.h, self.w),
        }
    }

    /// Source row `y` of image `img` as `f32`, channel-planar (`out[ch * w + x]`).
    #[inline(always)]
    fn convert_row(&self, img: usize, y: usize, out: &mut [f32]) {
        let w = self.w;
        let src = &self.images[img][y * w * 3..(y + 1) * w * 3];
        let (l0, rest) = out.split_at_mut(w);
        let (l1, l2) = rest.split_at_mut(w);
        for ((px, a), (b, c)) in src
            .chunks_exact(3)
            .zip(l0.iter_mut())
            .zip(l1.iter_mut().zip(l2.iter_mut()))
        {
            *a = self.lut[usize::from(px[0])];
            *b = self.lut[usize::from(px[1])];
            *c = self.lut[usize::from(px[2])];
        }
    }

    /// Row `y` of the sampled image `img`, channel-planar: `out[ch * width + x]`.
    #[inline(always)]
    fn row(&self, img: usize, y: usize, out: &mut [f32], cache: &mut RowCache) {
        let w = self.w;
        match &self.pool {
            None => self.convert_row(img, y, &mut out[..3 * w]),
            Some((rows, runs)) => {
                // PyTorch's adaptive average pooling: each window summed in row-major order
                // from zero, divided by its height, then its width. Going row by row through
                // the window, and within a row column by column, keeps that order for every
                // output; a run adds one source slice per window column.
                let pw = self.col_widths.len();
                let (r0, r1) = rows[y];
                out[..3 * pw].fill(0.0);
                for r in r0..r1 {
                    let line = cache.get(self, img, r);
                    for ch in 0..3 {
                        let l = &line[ch * w..(ch + 1) * w];
                        let o = &mut out[ch * pw..(ch + 1) * pw];
                        for run in runs {
                            let o = &mut o[run.cols.clone()];
                            let n = o.len();
                            for t in 0..run.width {
                                let start = run.src + t;
                                for (acc, &v) in o.iter_mut().zip(&l[start..start + n]) {
                                    *acc += v;
                                }
                            }
                        }
                    }
                }
                let kh = (r1 - r0) as f32;
                for ch in 0..3 {
                    let o = &mut out[ch * pw..(ch + 1) * pw];
                    for (acc, kw) in o.iter_mut().zip(&self.col_widths) {
                        *acc = *acc / kh / kw;
                    }
                }
            }
        }
    }
}
