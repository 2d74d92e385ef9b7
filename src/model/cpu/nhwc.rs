//! ResNet's convolutions as implicit matrix products on channels-last feature maps, with the
//! weights packed once at load.
//!
//! A feature map is `(B, H, W, C)` with a border of zeros around each image ([`Map`]), so a
//! 3x3 convolution with padding 1 reads its taps without bounds checks or an im2col copy:
//! output pixel `(y, x)` is `bias + Σ_(ky, kx, c) w[(ky, kx, c), o] · in[y·s + ky, x·s + kx, c]`
//! over the taps in `(ky, kx)` order and the channels in order, which is a matrix product
//! whose left rows (output pixels of one row, `s·C` floats apart) are read straight out of
//! the input: the `k` taps of one kernel row are `k` neighbouring pixels, so each pixel's
//! reduction is `k` runs of `k·C` values in a row (three for a 3x3). The weights are packed at load into 32-column panels
//! ([`PackedConv`]); the microkernels keep 12 pixels x 32 output channels (AVX-512) or 6 x 16
//! (AVX2 + FMA) in registers over the whole reduction, then add the bias, the shortcut and the
//! ReLU as they store. Each output is one sum in a fixed order whatever the threads, so the
//! AVX-512 and AVX2 kernels give the same bits.
//!
//! Channels are stored padded to a multiple of 32 (zero weights and bias in the padding, so
//! those channels stay zero), which lets every layer's output be whole panels; the network's
//! input (3 channels) is the one map that is not padded.
//!
//! The reference is candle's `conv2d` ([`crate::model::layers::Conv2d`]); the tests hold this
//! path to it within 1e-5 relative on every full-size ResNet shape, and the fixture ResNets to
//! fastai within 1e-4.

use candle_core::Tensor;
use rayon::prelude::*;

use super::packed::{Layout, PackedB, NR};

/// Channels rounded up to whole panels.
pub(crate) fn padded_channels(c: usize) -> usize {
    c.div_ceil(NR) * NR
}

/// A channels-last batch of feature maps with a border of zeros: `b` images of
/// `(h + 2·border, w + 2·border, c)` values (`c` stored channels, padding included).
#[derive(Debug, Clone)]
pub(crate) struct Map {
    /// The values, image after image, row after row, pixel after pixel.
    pub data: Vec<f32>,
    /// Images.
    pub b: usize,
    /// Rows (without the border).
    pub h: usize,
    /// Columns (without the border).
    pub w: usize,
    /// Stored channels.
    pub c: usize,
    /// Zero pixels around each image.
    pub border: usize,
}

/// Feature-map buffers a forward pass hands back for the next maps to reuse: a map's border
/// is zeroed again and its interior left as it was (every convolution and max pool writes
/// every interior value), so a reused buffer is neither allocated nor zeroed again. Kept
/// from one pass to the next, with [`Buffers::end_pass`] dropping those a pass did not use.
#[derive(Debug, Default)]
pub(crate) struct Buffers(Vec<(Vec<f32>, bool)>);

impl Buffers {
    /// A buffer of `len` values: the smallest kept one that holds them, or a new one (zeroed
    /// on every thread). The values are whatever they were.
    fn take(&mut self, len: usize) -> Vec<f32> {
        let best = (0..self.0.len())
            .filter(|&i| self.0[i].0.capacity() >= len)
            .min_by_key(|&i| self.0[i].0.capacity());
        let mut v = match best {
            Some(i) => self.0.swap_remove(i).0,
            None => Vec::with_capacity(len),
        };
        if v.len() >= len {
            v.truncate(len);
        } else {
            let more = len - v.len();
            v.par_extend(rayon::iter::repeat_n(0f32, more));
        }
        v
    }

    /// Keeps `m`'s buffer for a later map.
    pub(crate) fn give(&mut self, m: Map) {
        self.0.push((m.data, true));
    }

    /// Drops the buffers that no map took since the last call (a pass at batch 8 after one
    /// at batch 1 does not keep both passes' buffers), and marks the others unused.
    pub(crate) fn end_pass(&mut self) {
        self.0.retain(|b| b.1);
        for b in &mut self.0 {
            b.1 = false;
        }
    }
}

impl Map {
    /// A map for an output: a buffer from `bufs` with its border zeroed; its interior is
    /// whatever the buffer held, for the caller to write whole.
    fn for_output(
        bufs: &mut Buffers,
        b: usize,
        h: usize,
        w: usize,
        c: usize,
        border: usize,
    ) -> Self {
        let len = b * (h + 2 * border) * (w + 2 * border) * c;
        let mut m = Map {
            data: bufs.take(len),
            b,
            h,
            w,
            c,
            border,
        };
        let (rp, ir) = (m.row_pixels(), m.image_rows());
        for (r, row) in m.data.chunks_exact_mut(rp * c).enumerate() {
            let y = r % ir;
            if y < border || y >= ir - border {
                row.fill(0.0);
            } else {
                row[..border * c].fill(0.0);
                row[(rp - border) * c..].fill(0.0);
            }
        }
        m
    }

    /// A map of zeros.
    fn zeros(b: usize, h: usize, w: usize, c: usize, border: usize) -> Self {
        let len = b * (h + 2 * border) * (w + 2 * border) * c;
        // Zeroed on every thread: a map is up to a few MB, zeroed for every convolution.
        let mut data = Vec::with_capacity(len);
        data.par_extend(rayon::iter::repeat_n(0f32, len));
        Map {
            data,
            b,
            h,
            w,
            c,
            border,
        }
    }

    /// Stored pixels in a row, the border included.
    fn row_pixels(&self) -> usize {
        self.w + 2 * self.border
    }

    /// Stored rows of an image, the border included.
    fn image_rows(&self) -> usize {
        self.h + 2 * self.border
    }

    /// Offset of pixel `(y, x)` of image `i`, in stored (bordered) coordinates.
    fn at(&self, i: usize, y: usize, x: usize) -> usize {
        ((i * self.image_rows() + y) * self.row_pixels() + x) * self.c
    }

    /// `(B, C, H, W)` values into a map with `border` zero pixels around each image.
    pub(crate) fn from_nchw(
        x: &[f32],
        (b, c, h, w): (usize, usize, usize, usize),
        border: usize,
    ) -> Self {
        let mut m = Map::zeros(b, h, w, c, border);
        let plane = h * w;
        let (rp, ir) = (m.row_pixels(), m.image_rows());
        // One task per stored row of every image (the border rows stay zero).
        m.data
            .par_chunks_mut(rp * c)
            .enumerate()
            .for_each(|(r, dst)| {
                let (i, y) = (r / ir, r % ir);
                if y < border || y >= border + h {
                    return;
                }
                let y = y - border;
                let src = &x[i * c * plane..(i + 1) * c * plane];
                for xx in 0..w {
                    let px = &mut dst[(border + xx) * c..(border + xx + 1) * c];
                    for (ch, v) in px.iter_mut().enumerate() {
                        *v = src[ch * plane + y * w + xx];
                    }
                }
            });
        m
    }

    /// The first `c` channels as `(B, c, H, W)` values.
    pub(crate) fn to_nchw(&self, c: usize) -> Vec<f32> {
        let (h, w) = (self.h, self.w);
        let mut out = vec![0f32; self.b * c * h * w];
        out.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, dst)| {
                let (i, ch) = (plane / c, plane % c);
                for y in 0..h {
                    for x in 0..w {
                        dst[y * w + x] =
                            self.data[self.at(i, y + self.border, x + self.border) + ch];
                    }
                }
            });
        out
    }
}

/// A convolution (groups 1, square kernel) packed for [`conv`]: the weight as a
/// `(k·k·c) x o` matrix, rows in `(ky, kx, c)` order over the stored input channels `c`,
/// columns the output channels padded to whole panels, in 32-column panels; and the bias,
/// padded with zeros.
#[derive(Debug, Clone)]
pub(crate) struct PackedConv {
    /// Kernel size.
    k: usize,
    /// Stride.
    s: usize,
    /// Padding.
    p: usize,
    /// Stored input channels.
    c: usize,
    /// Real output channels.
    o: usize,
    /// The packed weight.
    weight: PackedB,
    /// The bias, `padded_channels(o)` long.
    bias: Vec<f32>,
}

impl PackedConv {
    /// Packs `weight` `(o, c, k, k)` (f32, on the CPU) and `bias` `(o)` for inputs stored with
    /// `stored_c >= c` channels. `None` when the CPU has no AVX2 + FMA (or
    /// `FASTAI_INFER_SIMD` forbids it) or the tensors are not f32 CPU ones.
    pub(crate) fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        stored_c: usize,
    ) -> Option<Self> {
        let level = super::kernels::Simd::from_env();
        if level < super::kernels::Simd::Avx2 {
            return None;
        }
        let (o, c, k, k2) = weight.dims4().ok()?;
        if k != k2 || k == 0 || stride == 0 || stored_c < c {
            return None;
        }
        let w = super::with_host_slice(&weight.contiguous().ok()?, |w| w.to_vec())?;
        let mut b = match bias {
            Some(t) if t.dims() == [o] => super::with_host_slice(t, |v| v.to_vec())?,
            Some(_) => return None,
            None => vec![0f32; o],
        };
        let op = padded_channels(o);
        b.resize(op, 0.0);
        let rows = k * k * stored_c;
        let mut mat = vec![0f32; rows * op];
        for oc in 0..o {
            for ic in 0..c {
                for ky in 0..k {
                    for kx in 0..k {
                        let r = (ky * k + kx) * stored_c + ic;
                        mat[r * op + oc] = w[((oc * c + ic) * k + ky) * k + kx];
                    }
                }
            }
        }
        let weight = PackedB::with_layout(&mat, rows, op, Layout::Rows32)?;
        Some(PackedConv {
            k,
            s: stride,
            p: padding,
            c: stored_c,
            o,
            weight,
            bias: b,
        })
    }

    /// Real output channels.
    pub(crate) fn out_channels(&self) -> usize {
        self.o
    }

    /// The padding, the border its input map needs.
    pub(crate) fn padding(&self) -> usize {
        self.p
    }

    /// Output size for an `h x w` input.
    fn out_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let (hp, wp) = (h + 2 * self.p, w + 2 * self.p);
        if hp < self.k || wp < self.k {
            return None;
        }
        Some(((hp - self.k) / self.s + 1, (wp - self.k) / self.s + 1))
    }
}

/// A raw pointer shared by the tasks of one [`conv`], each writing only its own part.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the pointer is only written through by `conv`'s tasks, which write disjoint parts of
// one buffer that outlives them (see `conv`).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the whole `Shared`).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `relu?(conv(x) + bias + residual)` into a new map with a border of 1 (what the next 3x3
/// convolution or max pool reads). `x` must have the channels `pc` was packed for and a
/// border of at least `pc`'s padding; `residual`, if given, the output's geometry. `None` when
/// those do not hold or the CPU lacks the kernels (the caller then takes candle's path).
pub(crate) fn conv(
    x: &Map,
    pc: &PackedConv,
    relu: bool,
    residual: Option<&Map>,
    bufs: &mut Buffers,
) -> Option<Map> {
    if x.c != pc.c || x.border < pc.p || !super::packed::available() {
        return None;
    }
    let (oh, ow) = pc.out_size(x.h, x.w)?;
    let op = padded_channels(pc.o);
    if let Some(r) = residual {
        if (r.b, r.h, r.w, r.c, r.border) != (x.b, oh, ow, op, 1) {
            return None;
        }
    }
    let mut out = Map::for_output(bufs, x.b, oh, ow, op, 1);
    let (k, s, c) = (pc.k, pc.s, pc.c);
    // The taps of one kernel row, `(ky, 0..k)`, are `k` neighbouring pixels: `k·c` values
    // in a row, in the order of the packed weight's rows. So the reduction runs as `k` runs
    // of `k·c` values (a 7x7 stem on 3 channels: 7 runs of 21, not 49 of 3), each starting
    // at a row's offset from a pixel's first tap, in floats.
    let taps: Vec<usize> = (0..k).map(|ky| ky * x.row_pixels() * c).collect();
    let run = k * c;
    // The stored coordinate of tap (0, 0) for output (0, 0): the padding is the border.
    let off = x.border - pc.p;
    let panels = op / NR;
    let rows = x.b * oh;
    let threads = rayon::current_num_threads().max(1);
    // Tasks: chunks of output rows x groups of panels, 4 a thread (one on one thread). A task
    // runs panel by panel, so each panel stays in cache over the task's rows: a task reads
    // its panels once and its rows' inputs once per panel group. The split reads the least:
    // row chunks x the weight + panel groups x the input (the last stages' weights, up to
    // 9.4 MB, dwarf their inputs).
    let want = if threads == 1 { 1 } else { 4 * threads };
    let (wbytes, xbytes) = (k * k * c * op, x.data.len());
    let (row_chunks, panel_groups) = (1..=panels)
        .map(|g| (want.div_ceil(g).clamp(1, rows.max(1)), g))
        .min_by_key(|&(r, g)| r * wbytes + g * xbytes)
        .unwrap_or((1, 1));
    // Near-equal parts (28 rows in 8 chunks: 3 or 4 rows each, not 7 chunks of 4).
    let ntasks = row_chunks * panel_groups;
    let ptr = Shared(out.data.as_mut_ptr());
    let out_len = out.data.len();
    let (orp, oir) = (out.row_pixels(), out.image_rows());
    let xd = &x.data;
    let res = residual.map(|r| &r.data[..]);
    let use512 = super::kernels::has_avx512();
    (0..ntasks).into_par_iter().for_each(|t| {
        let (rc, pg) = (t / panel_groups, t % panel_groups);
        let (r0, r1) = (rc * rows / row_chunks, (rc + 1) * rows / row_chunks);
        let (p0, p1) = (pg * panels / panel_groups, (pg + 1) * panels / panel_groups);
        let plen = k * k * c * NR;
        // The task's output pixels, row after row, in blocks of at most 12 as even as
        // possible (a block may span rows: 7x7 maps run as 10, 10, 10, 10, 9): where each
        // pixel's first tap is in `x` and its first channel in `out`, found once for every
        // panel by walking the pixels (no division a pixel: a 1x1 or stem convolution's
        // reduction is short enough for that to show).
        let total = (r1 - r0) * ow;
        let nb = total.div_ceil(12);
        let (mut i, mut y, mut xx) = (r0 / oh, r0 % oh, 0);
        let blocks: Vec<(usize, [usize; 12], [usize; 12])> = (0..nb)
            .map(|bi| {
                let n = total / nb + usize::from(bi < total % nb);
                let mut apix = [0usize; 12];
                let mut opix = [0usize; 12];
                for (ap, opx) in apix.iter_mut().zip(opix.iter_mut()).take(n) {
                    *ap = x.at(i, y * s + off, off) + xx * s * c;
                    // Output pixel `xx` of row `y`: stored pixel xx + 1 of stored row y + 1.
                    *opx = ((i * oir + y + 1) * orp + 1 + xx) * op;
                    debug_assert!(
                        *opx + op <= out_len && *ap + taps[taps.len() - 1] + run <= xd.len()
                    );
                    xx += 1;
                    if xx == ow {
                        xx = 0;
                        y += 1;
                        if y == oh {
                            y = 0;
                            i += 1;
                        }
                    }
                }
                (n, apix, opix)
            })
            .collect();
        for p in p0..p1 {
            let panel = &pc.weight.view().data[p * plen..(p + 1) * plen];
            let bias = &pc.bias[p * NR..(p + 1) * NR];
            // The next panel is brought into L2 while this one runs, a share of its lines by
            // each block: this task's next, or else the next task's first (tasks in order
            // mostly run on one thread, each thread taking a range of them).
            let next_panel = if p + 1 < p1 {
                Some(p + 1)
            } else {
                (t + 1 < ntasks).then(|| (t + 1) % panel_groups * panels / panel_groups)
            };
            let next = match next_panel {
                Some(np) => pc.weight.view().data[np * plen..].as_ptr(),
                None => std::ptr::null(),
            };
            let panel_lines = if next.is_null() { 0 } else { plen / 16 };
            let mut pf_line = 0;
            for &(n, apix, mut opix) in &blocks {
                for o in &mut opix[..n] {
                    *o += p * NR;
                }
                let job = Job {
                    a: xd,
                    apix,
                    taps: &taps,
                    run,
                    panel,
                    bias,
                    res,
                    opix,
                    relu,
                    next: next.wrapping_add(pf_line * 16),
                    prefetch: panel_lines.saturating_sub(pf_line).min(plen / NR),
                };
                pf_line += plen / NR;
                // SAFETY: the kernels read, for each of the `n` pixels, `run` values from each
                // of its kernel rows' offsets past `apix` (inside `x`: the last tap of a pixel lies inside its image,
                // the padding being the border), `k·k·c` panel rows, and write that pixel's
                // 32 channels at `opix` (inside `out`, and of the same layout as the shortcut);
                // checked above in debug builds. Tasks partition (output pixels x panels), so
                // no two write the same values, and `out` outlives the parallel loop; AVX2 +
                // FMA (and AVX-512 for `use512`) are present (`available`, `has_avx512`).
                unsafe {
                    if use512 {
                        kernels::run512(n, &job, ptr.get());
                    } else {
                        kernels::run256(n, &job, ptr.get());
                    }
                }
            }
        }
    });
    Some(out)
}

/// One block of pixels for a microkernel.
#[derive(Clone, Copy)]
struct Job<'a> {
    /// The input map's values.
    a: &'a [f32],
    /// Where each pixel's first tap is in `a` (`n` of them used).
    apix: [usize; 12],
    /// Offsets of each kernel row's taps from a pixel's first tap.
    taps: &'a [usize],
    /// Values a kernel row: `k` taps of the stored channels.
    run: usize,
    /// The panel: `taps.len()·run` rows of 32.
    panel: &'a [f32],
    /// The panel's 32 bias values.
    bias: &'a [f32],
    /// The shortcut map's values (the output's layout).
    res: Option<&'a [f32]>,
    /// Where each pixel's first output channel is in the output (and the shortcut).
    opix: [usize; 12],
    /// ReLU after the sum.
    relu: bool,
    /// Lines of the next panel to ask L2 for, one a step of the reduction, from `next` on
    /// (the last stages' weights come from memory, each panel read once a pass).
    next: *const f32,
    /// Lines of the next panel still to ask for: none (0), else the block asks for one a step
    /// of its reduction.
    prefetch: usize,
}

/// `nn.MaxPool2d(3, stride=2, padding=1)` of a ReLU's output (every value `>= 0`, so the zero
/// border stands in for PyTorch's `-inf` padding), into a map with a border of 1.
pub(crate) fn max_pool_3x3_s2(x: &Map, bufs: &mut Buffers) -> Option<Map> {
    if x.border < 1 || x.h == 0 || x.w == 0 {
        return None;
    }
    let (oh, ow) = ((x.h + 2 - 3) / 2 + 1, (x.w + 2 - 3) / 2 + 1);
    let mut out = Map::for_output(bufs, x.b, oh, ow, x.c, 1);
    let (orp, oir, c) = (out.row_pixels(), out.image_rows(), x.c);
    let off = x.border - 1;
    out.data
        .par_chunks_mut(orp * c)
        .enumerate()
        .for_each(|(r, dst)| {
            let (i, y) = (r / oir, r % oir);
            if y == 0 || y > oh {
                return;
            }
            let y = y - 1;
            super::kernels::with_avx2(
                #[inline(always)]
                || {
                    for xx in 0..ow {
                        let px = &mut dst[(xx + 1) * c..(xx + 2) * c];
                        // From zero, which the zero border also stands for.
                        px.fill(0.0);
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let at = x.at(i, 2 * y + ky + off, 2 * xx + kx + off);
                                for (m, &v) in px.iter_mut().zip(&x.data[at..at + c]) {
                                    *m = m.max(v);
                                }
                            }
                        }
                    }
                },
            )
        });
    Some(out)
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    use super::{Job, NR};
    use std::arch::x86_64::*;

    /// `n` (1..=12) pixels with the AVX-512 kernel.
    ///
    /// # Safety
    /// AVX-512F must be present, and `job` and `dst` must hold what [`super::conv`] says.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run512(n: usize, job: &Job<'_>, dst: *mut f32) {
        if job.prefetch > 0 {
            run512_pf::<true>(n, job, dst)
        } else {
            run512_pf::<false>(n, job, dst)
        }
    }

    /// [`run512`], prefetching the next panel or not.
    #[inline(always)]
    unsafe fn run512_pf<const PF: bool>(n: usize, job: &Job<'_>, dst: *mut f32) {
        match n {
            12 => block512::<12, PF>(job, dst),
            11 => block512::<11, PF>(job, dst),
            10 => block512::<10, PF>(job, dst),
            9 => block512::<9, PF>(job, dst),
            8 => block512::<8, PF>(job, dst),
            7 => block512::<7, PF>(job, dst),
            6 => block512::<6, PF>(job, dst),
            5 => block512::<5, PF>(job, dst),
            4 => block512::<4, PF>(job, dst),
            3 => block512::<3, PF>(job, dst),
            2 => block512::<2, PF>(job, dst),
            _ => block512::<1, PF>(job, dst),
        }
    }

    /// `R` pixels x 32 channels, the whole reduction in registers.
    #[inline(always)]
    unsafe fn block512<const R: usize, const PF: bool>(job: &Job<'_>, dst: *mut f32) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let a0 = job.a.as_ptr();
        let mut b = job.panel.as_ptr();
        let mut pf = job.next;
        for &t in job.taps {
            let rows: [*const f32; R] = core::array::from_fn(|r| a0.add(job.apix[r] + t));
            for cc in 0..job.run {
                if PF {
                    // A hint: past the next panel's end (its last share) it reads nothing.
                    _mm_prefetch::<_MM_HINT_T1>(pf.cast());
                    pf = pf.wrapping_add(16);
                }
                // The panel streams from L2 (74 KB to 590 KB): its rows 2 KB ahead are asked
                // for in L1 (resnet34 at batch 1, one thread: 57-60 -> 53-54 ms).
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(16 * NR).cast());
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(16 * NR + 16).cast());
                let b0 = _mm512_loadu_ps(b);
                let b1 = _mm512_loadu_ps(b.add(16));
                b = b.add(NR);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*rows[r].add(cc));
                    acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
                }
            }
        }
        let bias = job.bias.as_ptr();
        let (c0, c1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16)));
        let zero = _mm512_setzero_ps();
        for (r, acc) in acc.iter().enumerate() {
            let mut v0 = _mm512_add_ps(c0, acc[0]);
            let mut v1 = _mm512_add_ps(c1, acc[1]);
            if let Some(res) = job.res {
                let rp = res.as_ptr().add(job.opix[r]);
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(rp));
                v1 = _mm512_add_ps(v1, _mm512_loadu_ps(rp.add(16)));
            }
            if job.relu {
                v0 = _mm512_max_ps(v0, zero);
                v1 = _mm512_max_ps(v1, zero);
            }
            let d = dst.add(job.opix[r]);
            _mm512_storeu_ps(d, v0);
            _mm512_storeu_ps(d.add(16), v1);
        }
    }

    /// `n` (1..=12) pixels with the AVX2 kernel: six at a time, each panel in two halves.
    ///
    /// # Safety
    /// AVX2 and FMA must be present, and `job` and `dst` must hold what [`super::conv`] says.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run256(n: usize, job: &Job<'_>, dst: *mut f32) {
        let mut r0 = 0;
        while r0 < n {
            let rows = (n - r0).min(6);
            for half in 0..2 {
                let mut sub = Job {
                    bias: &job.bias[half * 16..],
                    panel: &job.panel[half * 16..],
                    ..*job
                };
                for j in 0..rows {
                    sub.apix[j] = job.apix[r0 + j];
                    sub.opix[j] = job.opix[r0 + j] + half * 16;
                }
                let d = dst;
                match rows {
                    6 => block256::<6>(&sub, d),
                    5 => block256::<5>(&sub, d),
                    4 => block256::<4>(&sub, d),
                    3 => block256::<3>(&sub, d),
                    2 => block256::<2>(&sub, d),
                    _ => block256::<1>(&sub, d),
                }
            }
            r0 += rows;
        }
    }

    /// `R` pixels x 16 channels (half a panel, rows 32 apart).
    #[inline(always)]
    unsafe fn block256<const R: usize>(job: &Job<'_>, dst: *mut f32) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let a0 = job.a.as_ptr();
        let mut b = job.panel.as_ptr();
        for &t in job.taps {
            let rows: [*const f32; R] = core::array::from_fn(|r| a0.add(job.apix[r] + t));
            for cc in 0..job.run {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(16 * NR).cast());
                let b0 = _mm256_loadu_ps(b);
                let b1 = _mm256_loadu_ps(b.add(8));
                b = b.add(NR);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*rows[r].add(cc));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
        }
        let bias = job.bias.as_ptr();
        let (c0, c1) = (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)));
        let zero = _mm256_setzero_ps();
        for (r, acc) in acc.iter().enumerate() {
            let mut v0 = _mm256_add_ps(c0, acc[0]);
            let mut v1 = _mm256_add_ps(c1, acc[1]);
            if let Some(res) = job.res {
                let rp = res.as_ptr().add(job.opix[r]);
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(rp));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(rp.add(8)));
            }
            if job.relu {
                v0 = _mm256_max_ps(v0, zero);
                v1 = _mm256_max_ps(v1, zero);
            }
            let d = dst.add(job.opix[r]);
            _mm256_storeu_ps(d, v0);
            _mm256_storeu_ps(d.add(8), v1);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernels {
    use super::Job;

    /// Never called: [`super::conv`] requires the x86-64 kernels (`available`).
    pub(super) unsafe fn run512(_: usize, _: &Job<'_>, _: *mut f32) {
        unreachable!("the channels-last kernels are x86-64 only")
    }

    /// Never called, as [`run512`].
    pub(super) unsafe fn run256(_: usize, _: &Job<'_>, _: *mut f32) {
        unreachable!("the channels-last kernels are x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Every convolution shape of torchvision's resnet18/34/50 at full size (the 7x7 stem on
    /// 3 unpadded channels, the 3x3s at stride 1 and 2, the 1x1 bottleneck and downsampling
    /// ones), and channel counts that are not whole panels (the fixture ResNets'), at batch 1
    /// and 2, with and without the shortcut and the ReLU, through the AVX-512 kernel (where the
    /// CPU has it) and the AVX2 one: within 1e-5 relative of candle's `conv2d`.
    #[test]
    fn matches_candle_conv2d_on_resnet_shapes() {
        use super::super::kernels::{with_level, Simd};
        let dev = Device::Cpu;
        // (batch, in, out, size, kernel, stride)
        let shapes = [
            (1usize, 3usize, 64usize, 64usize, 7usize, 2usize),
            (2, 64, 64, 56, 3, 1),
            (1, 64, 128, 56, 3, 2),
            (2, 64, 128, 56, 1, 2),
            (1, 128, 128, 28, 3, 1),
            (2, 256, 256, 14, 3, 1),
            (1, 256, 512, 14, 3, 2),
            (2, 512, 512, 7, 3, 1),
            (1, 64, 256, 56, 1, 1),
            (2, 256, 64, 56, 1, 1),
            (1, 1024, 2048, 14, 1, 2),
            (2, 8, 16, 9, 3, 2),
            (1, 16, 40, 11, 3, 1),
        ];
        let levels: Vec<Simd> = [Simd::Avx512, Simd::Avx2]
            .into_iter()
            .filter(|&l| l <= Simd::detected())
            .collect();
        assert!(!levels.is_empty(), "this CPU has no AVX2 + FMA");
        for &(b, c, o, hw, k, s) in &shapes {
            let p = k / 2;
            let stem = c == 3;
            let sc = if stem { c } else { padded_channels(c) };
            let w = (Tensor::randn(0f32, 1.0, (o, c, k, k), &dev).unwrap()
                * (1.0 / ((c * k * k) as f64).sqrt()))
            .unwrap();
            let bias = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (b, c, hw, hw), &dev).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // The input map, its channels padded with zeros as a previous layer leaves them.
            let mut m = Map::from_nchw(&xs, (b, c, hw, hw), p.max(1));
            if sc != c {
                let mut padded = Map::zeros(b, hw, hw, sc, p.max(1));
                for (dst, src) in padded.data.chunks_exact_mut(sc).zip(m.data.chunks_exact(c)) {
                    dst[..c].copy_from_slice(src);
                }
                m = padded;
            }
            let pc = PackedConv::new(&w, Some(&bias), s, p, sc).unwrap();
            let (oh, ow) = pc.out_size(hw, hw).unwrap();
            let r = Tensor::randn(0f32, 1.0, (b, o, oh, ow), &dev).unwrap();
            let rs = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut rm = Map::zeros(b, oh, ow, padded_channels(o), 1);
            let small = Map::from_nchw(&rs, (b, o, oh, ow), 1);
            for (dst, src) in rm
                .data
                .chunks_exact_mut(padded_channels(o))
                .zip(small.data.chunks_exact(o))
            {
                dst[..o].copy_from_slice(src);
            }
            // One pool for every call, so later calls reuse (stale) buffers as a pass does.
            let mut bufs = Buffers::default();
            for &level in &levels {
                for (relu, res) in [(false, None), (true, None), (true, Some((&r, &rm)))] {
                    let want = super::super::conv_reference(
                        &x,
                        &w,
                        Some(&bias),
                        s,
                        p,
                        relu,
                        res.map(|x| x.0),
                    );
                    let map =
                        with_level(level, || conv(&m, &pc, relu, res.map(|x| x.1), &mut bufs))
                            .expect("the channels-last path applies");
                    let got = Tensor::from_vec(map.to_nchw(o), (b, o, oh, ow), &dev).unwrap();
                    bufs.give(map);
                    let d = super::super::rel_diff(&got, &want);
                    assert!(
                        d <= 1e-5,
                        "b{b} c{c} o{o} {hw} k{k} s{s} relu {relu} residual {} {level}: {d}",
                        res.is_some(),
                    );
                }
            }
        }
    }

    /// The max pool against candle's on a ReLU's output (padding with zeros is then exact).
    #[test]
    fn max_pool_matches_candle() {
        let dev = Device::Cpu;
        for &(b, c, hw) in &[(2usize, 64usize, 112usize), (1, 32, 9), (1, 32, 8)] {
            let x = Tensor::randn(0f32, 1.0, (b, c, hw, hw), &dev)
                .unwrap()
                .relu()
                .unwrap();
            let want = x
                .pad_with_zeros(2, 1, 1)
                .unwrap()
                .pad_with_zeros(3, 1, 1)
                .unwrap()
                .max_pool2d_with_stride(3, 2)
                .unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // A pool holding a buffer of garbage: the pool's output must not depend on it.
            let mut bufs = Buffers::default();
            bufs.give(Map {
                data: vec![7.0; b * (hw + 2) * (hw + 2) * c],
                b,
                h: hw,
                w: hw,
                c,
                border: 1,
            });
            let got = max_pool_3x3_s2(&Map::from_nchw(&xs, (b, c, hw, hw), 1), &mut bufs).unwrap();
            let got = Tensor::from_vec(got.to_nchw(c), want.shape(), &dev).unwrap();
            let d = super::super::rel_diff(&got, &want);
            assert_eq!(d, 0.0, "b{b} c{c} {hw}");
        }
    }

    /// Prints the packed matmul's throughput on the same sizes as an im2col would give (a
    /// probe, as [`nhwc_probe`]).
    #[test]
    #[ignore]
    fn matmul_probe() {
        for &(m, k, n) in &[
            (3136usize, 576usize, 64usize),
            (784, 1152, 128),
            (196, 2304, 256),
            (49, 4608, 512),
            (392, 4608, 512),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
            let pb = PackedB::with_layout(&b, k, n, Layout::Rows32).unwrap();
            let mut c = vec![0f32; m * n];
            let t = std::time::Instant::now();
            let iters = 10;
            for _ in 0..iters {
                super::super::packed::matmul_packed(m, &a, k, pb.view(), &mut c, n, false, None);
            }
            let secs = t.elapsed().as_secs_f64() / iters as f64;
            println!(
                "matmul {m}x{k}x{n}: {:.1} GFLOP/s",
                2.0 * (m * k * n) as f64 / secs / 1e9
            );
        }
    }

    /// Prints the single-conv throughput of full-size ResNet shapes (a probe, not a test:
    /// `cargo test --release --lib nhwc_probe -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn nhwc_probe() {
        let dev = Device::Cpu;
        for &(b, c, o, hw, k, s) in &[
            (1usize, 3usize, 64usize, 224usize, 7usize, 2usize),
            (1, 64, 128, 56, 3, 2),
            (1, 64, 128, 56, 1, 2),
            (1, 64, 64, 56, 3, 1),
            (8, 64, 64, 56, 3, 1),
            (1, 128, 128, 28, 3, 1),
            (8, 128, 128, 28, 3, 1),
            (1, 256, 256, 14, 3, 1),
            (8, 256, 256, 14, 3, 1),
            (1, 512, 512, 7, 3, 1),
            (8, 512, 512, 7, 3, 1),
        ] {
            let w = Tensor::randn(0f32, 0.1, (o, c, k, k), &dev).unwrap();
            let pc = PackedConv::new(&w, None, s, k / 2, c).unwrap();
            let border = (k / 2).max(1);
            let x = Tensor::randn(0f32, 1.0, (b, c, hw, hw), &dev).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let m = Map::from_nchw(&xs, (b, c, hw, hw), border);
            let mut bufs = Buffers::default();
            let _ = conv(&m, &pc, true, None, &mut bufs).unwrap();
            let t = std::time::Instant::now();
            let n = 10;
            for _ in 0..n {
                let y = conv(&m, &pc, true, None, &mut bufs).unwrap();
                bufs.give(std::hint::black_box(y));
            }
            let secs = t.elapsed().as_secs_f64() / n as f64;
            let (oh, ow) = pc.out_size(hw, hw).unwrap();
            let flop = 2.0 * (b * oh * ow * o * c * k * k) as f64;
            println!(
                "b{b} c{c} o{o} {hw}x{hw} k{k} s{s}: {:.3} ms, {:.1} GFLOP/s",
                secs * 1e3,
                flop / secs / 1e9
            );
        }
    }
}
