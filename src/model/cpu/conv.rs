//! The CPU fast path of `nn.Conv2d` (groups 1) for the CNN bodies: im2col, then one blocked
//! matrix product per image (the `gemm` crate, the kernels candle's own matmul uses) with the
//! bias as the product's starting value, then the residual sum and the ReLU in one pass over
//! the output while it is in cache.
//!
//! Arithmetic: output channel `o` at `(y, x)` is
//! `bias[o] + Σ w[o, c, ky, kx] · x[c, y·s + ky - p, x·s + kx - p]` over the `(c, ky, kx)` taken
//! in that order (the weight's own row-major order), the padding read as zeros; the same
//! function as candle's `conv2d` (the reference path, every device), which the tests hold this
//! one to within 1e-5 relative. A 1x1 stride-1 unpadded convolution reads the input as the
//! product's right-hand side directly, with no copy. ResNet's BatchNorms are folded into the
//! convolutions at load ([`crate::model::layers::Conv2d`]), so each block is two (or three)
//! calls here, the last one taking the shortcut.
//!
//! Also here: ConvNeXt's `fc1` and GELU ([`linear_bias_gelu`]), one product and a parallel
//! fused bias + GELU instead of candle's single-threaded elementwise `gelu_erf`.
//!
//! Batches: a feature map of at least [`TARGET_COLUMNS`] pixels is one product per image; the
//! smaller maps of the later stages put several images' im2col matrices side by side, so that
//! the weight (up to 512x4608 for resnet34's last stage) is packed once per group of images
//! instead of once per image. Threads: each product runs on every thread (gemm's own split),
//! the stacked im2col rows and epilogue in parallel chunks.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

use super::packed::{matmul_packed, PackedB, PackedRef, NR};

/// Calls `f` with the elements of `t` when it is a contiguous f32 tensor in CPU memory.
fn with_host<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() || !t.is_contiguous() {
        return None;
    }
    let (guard, layout) = t.storage_and_layout();
    match &*guard {
        Storage::Cpu(CpuStorage::F32(v)) => {
            let start = layout.start_offset();
            v.get(start..start + t.elem_count()).map(f)
        }
        _ => None,
    }
}

/// One convolution's sizes: `c` input channels of `h`x`w`, `o` output channels of
/// `oh`x`ow`, a square `k`x`k` kernel, stride `s`, padding `p`.
#[derive(Debug, Clone, Copy)]
struct Dims {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    oh: usize,
    ow: usize,
    k: usize,
    s: usize,
    p: usize,
}

impl Dims {
    /// The reduction length `c·k·k`.
    fn depth(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Output pixels per channel.
    fn pixels(&self) -> usize {
        self.oh * self.ow
    }

    /// Whether the input itself is the im2col matrix (1x1, stride 1, no padding).
    fn direct(&self) -> bool {
        self.k == 1 && self.s == 1 && self.p == 0
    }
}

/// Writes the `(c·k·k, oh·ow)` im2col matrix of one image `x` `(c, h, w)` into `cols`.
fn im2col(x: &[f32], d: &Dims, cols: &mut [f32]) {
    let (n, hw) = (d.pixels(), d.h * d.w);
    for (r, dst) in cols.chunks_exact_mut(n).enumerate() {
        let (ci, tap) = (r / (d.k * d.k), r % (d.k * d.k));
        im2col_row(&x[ci * hw..(ci + 1) * hw], d, tap / d.k, tap % d.k, dst);
    }
}

/// One row of the im2col matrix: tap `(ky, kx)` of input channel `plane` `(h, w)` at every
/// output pixel, `oh·ow` values into `dst`, zeros where the tap falls in the padding.
fn im2col_row(plane: &[f32], d: &Dims, ky: usize, kx: usize, dst: &mut [f32]) {
    let (oh, ow) = (d.oh, d.ow);
    for oy in 0..oh {
        let out = &mut dst[oy * ow..(oy + 1) * ow];
        let iy = (oy * d.s + ky) as isize - d.p as isize;
        if iy < 0 || iy >= d.h as isize {
            out.fill(0.0);
            continue;
        }
        let src = &plane[iy as usize * d.w..(iy as usize + 1) * d.w];
        // The columns whose input column `ox·s + kx - p` lies in `[0, w)`.
        let lo = (d.p.saturating_sub(kx)).div_ceil(d.s).min(ow);
        let hi = if d.w + d.p > kx {
            ((d.w + d.p - kx - 1) / d.s + 1).clamp(lo, ow)
        } else {
            lo
        };
        out[..lo].fill(0.0);
        out[hi..].fill(0.0);
        let first = lo * d.s + kx - d.p;
        if d.s == 1 {
            out[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
        } else {
            for (j, v) in out[lo..hi].iter_mut().enumerate() {
                *v = src[first + j * d.s];
            }
        }
    }
}

/// `dst` (after copying in `src`, if given) `+ residual`, then ReLU, as asked: the epilogue of
/// every path.
fn epilogue(dst: &mut [f32], src: Option<&[f32]>, residual: Option<&[f32]>, relu: bool) {
    if let Some(s) = src {
        dst.copy_from_slice(s);
    }
    match (residual, relu) {
        (Some(r), true) => dst
            .iter_mut()
            .zip(r)
            .for_each(|(y, &r)| *y = (*y + r).max(0.0)),
        (Some(r), false) => dst.iter_mut().zip(r).for_each(|(y, &r)| *y += r),
        (None, true) => dst.iter_mut().for_each(|y| *y = y.max(0.0)),
        (None, false) => {}
    }
}

/// Output pixels per product that amortize packing the weight (a 56x56 map): smaller maps are
/// stacked, several images side by side in one product.
const TARGET_COLUMNS: usize = 3136;

/// Images `i0..` of `x` (`in_len` values each; as many as `out` holds outputs) as one product:
/// their im2col matrices side by side, `(c·k·k, g·oh·ow)`, so the weight is packed once for
/// all of them; then each image's output rows copied out with the residual and the ReLU.
#[allow(clippy::too_many_arguments)]
fn stacked_images(
    x: &[f32],
    in_len: usize,
    i0: usize,
    d: &Dims,
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
    cols: &mut Vec<f32>,
    tmp: &mut Vec<f32>,
    par: gemm::Parallelism,
) {
    let (n, depth, hw) = (d.pixels(), d.depth(), d.h * d.w);
    let out_len = d.o * n;
    let gn = out.len() / out_len * n;
    cols.resize(depth * gn, 0.0);
    cols.par_chunks_mut(gn).enumerate().for_each(|(r, row)| {
        let (ci, tap) = (r / (d.k * d.k), r % (d.k * d.k));
        for (i, dst) in row.chunks_exact_mut(n).enumerate() {
            let img = (i0 + i) * in_len;
            let plane = &x[img + ci * hw..img + (ci + 1) * hw];
            im2col_row(plane, d, tap / d.k, tap % d.k, dst);
        }
    });
    tmp.resize(d.o * gn, 0.0);
    if let Some(b) = bias {
        for (row, &v) in tmp.chunks_exact_mut(gn).zip(b) {
            row.fill(v);
        }
    }
    assert!(weight.len() == d.o * depth && cols.len() == depth * gn && tmp.len() == d.o * gn);
    // SAFETY: `tmp` holds `o x gn` elements (row stride gn), `weight` `o x depth` (row stride
    // depth), `cols` `depth x gn` (row stride gn), as asserted above; `tmp` is a unique borrow
    // distinct from the others, and gemm stays within those extents.
    unsafe {
        gemm::gemm(
            d.o,
            gn,
            depth,
            tmp.as_mut_ptr(),
            1,
            gn as isize,
            bias.is_some(),
            weight.as_ptr(),
            1,
            depth as isize,
            cols.as_ptr(),
            1,
            gn as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
    let tmp = &*tmp;
    out.par_chunks_mut(out_len)
        .enumerate()
        .for_each(|(i, dst)| {
            for (oc, row) in dst.chunks_exact_mut(n).enumerate() {
                let src = &tmp[oc * gn + i * n..oc * gn + (i + 1) * n];
                let at = (i0 + i) * out_len + oc * n;
                epilogue(row, Some(src), residual.map(|r| &r[at..at + n]), relu);
            }
        });
}

/// One image: `out` `(o, oh·ow)` = `bias` + `weight` `(o, c·k·k)` · im2col(`x`), then
/// `+ residual`, then ReLU.
#[allow(clippy::too_many_arguments)]
fn one_image(
    x: &[f32],
    d: &Dims,
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
    cols: &mut Vec<f32>,
    par: gemm::Parallelism,
) {
    let (n, depth) = (d.pixels(), d.depth());
    let rhs: &[f32] = if d.direct() {
        x
    } else {
        cols.resize(depth * n, 0.0);
        im2col(x, d, cols);
        cols
    };
    if let Some(b) = bias {
        for (row, &v) in out.chunks_exact_mut(n).zip(b) {
            row.fill(v);
        }
    }
    debug_assert!(weight.len() == d.o * depth && rhs.len() == depth * n && out.len() == d.o * n);
    // SAFETY: `out` holds `o x n` elements (row stride n, column stride 1), `weight` `o x depth`
    // (row stride depth), `rhs` `depth x n` (row stride n), as asserted above; the three do not
    // overlap (`out` is a unique borrow), and gemm reads and writes only within those extents.
    unsafe {
        gemm::gemm(
            d.o,
            n,
            depth,
            out.as_mut_ptr(),
            1,
            n as isize,
            bias.is_some(),
            weight.as_ptr(),
            1,
            depth as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
    epilogue(out, None, residual, relu);
}

/// `relu?(conv2d(x, weight, stride, padding) + bias + residual)` on the CPU fast path, for a
/// contiguous f32 CPU input `(B, C, H, W)` and weight `(O, C, K, K)` (groups 1), with an
/// optional bias `(O)` and residual (the output's shape). `None` when the fast path does not
/// apply (another device or dtype, groups, a non-square kernel, a kernel larger than the
/// padded input, mismatched shapes): the caller then runs candle's `conv2d`, which also
/// reports any error.
pub(crate) fn conv2d_fused(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: bool,
    residual: Option<&Tensor>,
) -> Option<candle_core::Result<Tensor>> {
    let (b, c, h, w) = x.dims4().ok()?;
    let (o, wc, k, k2) = weight.dims4().ok()?;
    if wc != c || k != k2 || k == 0 || stride == 0 || b == 0 {
        return None;
    }
    if h + 2 * padding < k || w + 2 * padding < k {
        return None;
    }
    let d = Dims {
        c,
        h,
        w,
        o,
        oh: (h + 2 * padding - k) / stride + 1,
        ow: (w + 2 * padding - k) / stride + 1,
        k,
        s: stride,
        p: padding,
    };
    if bias.is_some_and(|t| t.dims() != [o]) {
        return None;
    }
    if residual.is_some_and(|t| t.dims() != [b, o, d.oh, d.ow]) {
        return None;
    }
    let (in_len, out_len) = (c * h * w, o * d.pixels());
    let mut out = vec![0f32; b * out_len];
    let threads = rayon::current_num_threads().max(1);
    // Images per product: one for large maps, several side by side for small ones.
    let group = TARGET_COLUMNS.div_ceil(d.pixels()).clamp(1, b);
    let mut run = |x: &[f32], wt: &[f32], bs: Option<&[f32]>, res: Option<&[f32]>| {
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let (mut cols, mut tmp) = (Vec::new(), Vec::new());
        for (gi, chunk) in out.chunks_mut(group * out_len).enumerate() {
            let i0 = gi * group;
            if chunk.len() == out_len {
                let r = res.map(|r| &r[i0 * out_len..(i0 + 1) * out_len]);
                let xi = &x[i0 * in_len..(i0 + 1) * in_len];
                one_image(xi, &d, wt, bs, r, relu, chunk, &mut cols, par);
            } else {
                stacked_images(
                    x, in_len, i0, &d, wt, bs, res, relu, chunk, &mut cols, &mut tmp, par,
                );
            }
        }
    };
    with_host(x, |xs| {
        with_host(weight, |ws| match (bias, residual) {
            (None, None) => {
                run(xs, ws, None, None);
                Some(())
            }
            (Some(bt), None) => with_host(bt, |bs| run(xs, ws, Some(bs), None)),
            (None, Some(rt)) => with_host(rt, |rs| run(xs, ws, None, Some(rs))),
            (Some(bt), Some(rt)) => {
                with_host(bt, |bs| with_host(rt, |rs| run(xs, ws, Some(bs), Some(rs)))).flatten()
            }
        })
    })
    .flatten()
    .flatten()?;
    Some(Tensor::from_vec(out, (b, o, d.oh, d.ow), &Device::Cpu))
}

/// `x · weight_t` for `x` `n x k` and `weight_t` `k x m` (row-major), on every thread.
fn matmul_rows(xs: &[f32], ws: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * m];
    let threads = rayon::current_num_threads().max(1);
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    assert!(xs.len() == n * k && ws.len() == k * m);
    // SAFETY: `out` is `n x m` (row stride m), `xs` `n x k` (row stride k), `ws` `k x m` (row
    // stride m), as asserted above; `out` is a fresh allocation, so nothing overlaps, and gemm
    // stays within those extents.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            out.as_mut_ptr(),
            1,
            m as isize,
            false,
            xs.as_ptr(),
            1,
            k as isize,
            ws.as_ptr(),
            1,
            m as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
    out
}

/// `x · B` for `x` `n x k` (row-major) and `B` packed at load (`k x m`, see
/// [`super::packed::PackedB`]) with the crate's AVX-512 / AVX2 kernels, on every thread, then
/// `epilogue(first_row, rows)` over the output. Enough rows: parallel chunks of rows (about
/// 1 MB of output each, the same number for every thread), each chunk's epilogue run while
/// it is in cache. Few rows (the
/// last stage at small batches): parallel groups of 32-column panels into buffers of their own,
/// assembled, then the epilogue in parallel chunks. Each output is the same sum whatever the
/// split (the kernels sum over `k` in order), so the split does not change the bits.
fn matmul_rows_packed(
    xs: &[f32],
    n: usize,
    b: PackedRef<'_>,
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let (k, m) = (b.k, b.n);
    // Zeroed on every thread (up to 4.8 MB at ConvNeXt-tiny's first stage).
    let mut out: Vec<f32> = Vec::with_capacity(n * m);
    out.par_extend(rayon::iter::repeat_n(0f32, n * m));
    let threads = rayon::current_num_threads().max(1);
    if n >= 12 * 4 * threads {
        // As few chunks as keep each one's output near 1 MB (in cache for its epilogue; every
        // chunk reads the whole weight), at least one a thread and at least 12 rows each, a
        // whole number a thread so that no thread is left with one more.
        let chunks = (n * m * 4)
            .div_ceil(1 << 20)
            .min(n / 12)
            .max(threads)
            .next_multiple_of(threads);
        let rows = n.div_ceil(chunks);
        out.par_chunks_mut(rows * m)
            .enumerate()
            .for_each(|(i, chunk)| {
                let r0 = i * rows;
                let nr = chunk.len() / m;
                matmul_packed(nr, &xs[r0 * k..], k, b, chunk, m, false, None);
                epilogue(r0, chunk);
            });
    } else {
        let panels = m / NR;
        let per = panels.div_ceil(2 * threads).max(1);
        let parts: Vec<(usize, Vec<f32>)> = (0..panels.div_ceil(per))
            .into_par_iter()
            .map(|g| {
                let (p0, p1) = (g * per, ((g + 1) * per).min(panels));
                let w = (p1 - p0) * NR;
                let sub = PackedRef {
                    k,
                    n: w,
                    layout: b.layout,
                    data: &b.data[p0 * k * NR..p1 * k * NR],
                };
                let mut buf = vec![0f32; n * w];
                matmul_packed(n, xs, k, sub, &mut buf, w, false, None);
                (p0 * NR, buf)
            })
            .collect();
        for (c0, buf) in parts {
            let w = buf.len() / n.max(1);
            for (dst, src) in out.chunks_exact_mut(m).zip(buf.chunks_exact(w)) {
                dst[c0..c0 + w].copy_from_slice(src);
            }
        }
        let c = chunk_rows(n);
        out.par_chunks_mut(c * m)
            .enumerate()
            .for_each(|(i, chunk)| epilogue(i * c, chunk));
    }
    out
}

/// Rows per parallel chunk of an elementwise pass over `n` rows.
fn chunk_rows(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1) * 4).max(1)
}

/// `packed` when it holds a `k x m` matrix and its kernels can run now (AVX2 + FMA or
/// AVX-512 allowed by `FASTAI_INFER_SIMD`).
fn usable(packed: Option<&PackedB>, k: usize, m: usize) -> Option<PackedRef<'_>> {
    packed
        .filter(|p| p.dims() == (k, m) && super::packed::available())
        .map(PackedB::view)
}

/// The sizes of `x · weight_t` when `x` `(.., k)` and `weight_t` `(k, m)` fit: `(n, k, m)` and
/// the output's shape.
fn linear_dims(
    x: &Tensor,
    weight_t: &Tensor,
    bias: &Tensor,
) -> Option<(usize, usize, usize, Vec<usize>)> {
    let (k, m) = weight_t.dims2().ok()?;
    let dims = x.dims();
    if dims.last() != Some(&k) || bias.dims() != [m] || k == 0 || m == 0 {
        return None;
    }
    let mut shape = dims.to_vec();
    if let Some(last) = shape.last_mut() {
        *last = m;
    }
    Some((x.elem_count() / k, k, m, shape))
}

/// `gelu(x · weight_t + bias)` for a contiguous f32 CPU `x` `(.., k)`, `weight_t` `(k, m)` and
/// `bias` `(m)` (ConvNeXt's `fc1` and GELU, `nn.GELU()`'s erf form as
/// [`super::kernels::gelu`] computes it): one blocked product over all the rows on every
/// thread, then the bias and the GELU over row chunks in parallel. `None` when it does not
/// apply; the caller then runs candle's ops.
pub(crate) fn linear_bias_gelu(
    x: &Tensor,
    weight_t: &Tensor,
    packed: Option<&PackedB>,
    bias: &Tensor,
) -> Option<candle_core::Result<Tensor>> {
    let (n, k, m, shape) = linear_dims(x, weight_t, bias)?;
    let packed = usable(packed, k, m);
    let out = with_host(x, |xs| {
        with_host(bias, |bs| match packed {
            Some(p) => Some(matmul_rows_packed(xs, n, p, |_, chunk| {
                super::kernels::bias_gelu_rows(chunk, bs)
            })),
            None => with_host(weight_t, |ws| {
                let mut out = matmul_rows(xs, ws, n, k, m);
                out.par_chunks_mut(chunk_rows(n) * m)
                    .for_each(|chunk| super::kernels::bias_gelu_rows(chunk, bs));
                out
            }),
        })
    })
    .flatten()
    .flatten()?;
    Some(Tensor::from_vec(out, shape, &Device::Cpu))
}

/// Hidden activations (bytes) a chunk of [`mlp_fused`] keeps in cache, at least: more when
/// the weights are larger (a quarter of theirs), so that each chunk's products amortize
/// reading both weights (from L3 when they do not fit in L2).
const FUSED_MLP_HIDDEN: usize = 1 << 18;

/// ConvNeXt's whole MLP for contiguous f32 CPU rows `x` `(n, c)`: `residual + (gelu(x · W1 +
/// b1) · W2 + b2) * gamma`, chunk of rows by chunk of rows, the hidden activations of a chunk
/// (`FUSED_MLP_HIDDEN` or more) in a buffer of its thread and never written out whole (at
/// batch 8 the first stage's are 38 MB, allocated and zeroed for every block). The same sums
/// as [`linear_bias_gelu`] then [`linear_bias_scale_add`] on the packed weights (each output's
/// reduction in order), so the same bits. Taken when there are at least two chunks a thread
/// (ConvNeXt-tiny at batch 1: the first two stages); `None` otherwise, and the caller runs
/// the two steps (whose panel split reads the weights once for few rows).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlp_fused(
    x: &Tensor,
    (w1, p1, b1): (&Tensor, Option<&PackedB>, &Tensor),
    (w2, p2, b2): (&Tensor, Option<&PackedB>, &Tensor),
    gamma: Option<&Tensor>,
    residual: &Tensor,
) -> Option<candle_core::Result<Tensor>> {
    let (n, c, h, _) = linear_dims(x, w1, b1)?;
    if w2.dims2().ok()? != (h, c) || b2.dims() != [c] || residual.elem_count() != n * c {
        return None;
    }
    let shape = residual.dims().to_vec();
    if gamma.is_some_and(|g| g.elem_count() != c) {
        return None;
    }
    let (q1, q2) = (usable(p1, c, h)?, usable(p2, h, c)?);
    let threads = rayon::current_num_threads().max(1);
    let hidden = FUSED_MLP_HIDDEN.max(2 * c * h);
    let rows = (hidden / (4 * h)).max(12) / 12 * 12;
    if n < rows * 2 * threads {
        return None;
    }
    let run = |xs: &[f32], bs1: &[f32], bs2: &[f32], gs: Option<&[f32]>, rs: &[f32]| {
        let mut out: Vec<f32> = Vec::with_capacity(n * c);
        out.par_extend(rayon::iter::repeat_n(0f32, n * c));
        out.par_chunks_mut(rows * c).enumerate().for_each_init(
            Vec::new,
            |hidden: &mut Vec<f32>, (i, o)| {
                let r0 = i * rows;
                let nr = o.len() / c;
                hidden.resize(nr * h, 0.0);
                matmul_packed(nr, &xs[r0 * c..], c, q1, hidden, h, false, None);
                super::kernels::bias_gelu_rows(hidden, bs1);
                matmul_packed(nr, hidden, h, q2, o, c, false, None);
                scale_add_rows(o, &rs[r0 * c..], bs2, gs, c);
            },
        );
        out
    };
    let out = with_host(x, |xs| {
        with_host(b1, |bs1| {
            with_host(b2, |bs2| {
                with_host(residual, |rs| match gamma {
                    Some(g) => with_host(g, |gs| run(xs, bs1, bs2, Some(gs), rs)),
                    None => Some(run(xs, bs1, bs2, None, rs)),
                })
            })
        })
    })
    .flatten()
    .flatten()
    .flatten()
    .flatten()?;
    Some(Tensor::from_vec(out, shape, &Device::Cpu))
}

/// The epilogue of `fc2`: each `m`-wide row of `o` (the products) becomes
/// `(o + bias) * gamma + residual` (or `(o + bias) + residual`), the residual's rows from
/// `r` on, in that order of operations.
fn scale_add_rows(o: &mut [f32], r: &[f32], bs: &[f32], gs: Option<&[f32]>, m: usize) {
    for (ro, rr) in o.chunks_exact_mut(m).zip(r.chunks_exact(m)) {
        match gs {
            Some(g) => {
                for (((y, &b), &g), &x) in ro.iter_mut().zip(bs).zip(g).zip(rr) {
                    *y = (*y + b) * g + x;
                }
            }
            None => {
                for ((y, &b), &x) in ro.iter_mut().zip(bs).zip(rr) {
                    *y = (*y + b) + x;
                }
            }
        }
    }
}

/// `x · weight_t + bias` on the weight packed at load (ConvNeXt's patch convolutions as
/// products over the patches), the bias added to each chunk of rows while it is in cache.
/// `None` when it does not apply (no packed weight, another device or dtype); the caller
/// then runs candle's ops.
pub(crate) fn linear_bias(
    x: &Tensor,
    weight_t: &Tensor,
    packed: Option<&PackedB>,
    bias: &Tensor,
) -> Option<candle_core::Result<Tensor>> {
    let (n, k, m, shape) = linear_dims(x, weight_t, bias)?;
    let p = usable(packed, k, m)?;
    let out = with_host(x, |xs| {
        with_host(bias, |bs| {
            matmul_rows_packed(xs, n, p, |_, chunk| {
                super::kernels::add_bias_rows(chunk, bs)
            })
        })
    })
    .flatten()?;
    Some(Tensor::from_vec(out, shape, &Device::Cpu))
}

/// `residual + (x · weight_t + bias) * gamma` (ConvNeXt's `fc2`, layer scale and shortcut, in
/// that order of operations), for contiguous f32 CPU tensors, `residual` of the output's
/// element count; without `gamma`, `residual + (x · weight_t + bias)`. `None` when it does not
/// apply.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_bias_scale_add(
    x: &Tensor,
    weight_t: &Tensor,
    packed: Option<&PackedB>,
    bias: &Tensor,
    gamma: Option<&Tensor>,
    residual: &Tensor,
) -> Option<candle_core::Result<Tensor>> {
    let (n, k, m, shape) = linear_dims(x, weight_t, bias)?;
    if residual.elem_count() != n * m || gamma.is_some_and(|g| g.elem_count() != m) {
        return None;
    }
    let packed = usable(packed, k, m);
    let rows =
        |o: &mut [f32], r: &[f32], bs: &[f32], gs: Option<&[f32]>| scale_add_rows(o, r, bs, gs, m);
    let run = |xs: &[f32], bs: &[f32], gs: Option<&[f32]>, rs: &[f32]| match packed {
        Some(p) => Some(matmul_rows_packed(xs, n, p, |r0, o| {
            rows(o, &rs[r0 * m..], bs, gs)
        })),
        None => with_host(weight_t, |ws| {
            let mut out = matmul_rows(xs, ws, n, k, m);
            let c = chunk_rows(n) * m;
            out.par_chunks_mut(c)
                .zip(rs.par_chunks(c))
                .for_each(|(o, r)| rows(o, r, bs, gs));
            out
        }),
    };
    let out = with_host(x, |xs| {
        with_host(bias, |bs| {
            with_host(residual, |rs| match gamma {
                Some(g) => with_host(g, |gs| run(xs, bs, Some(gs), rs)).flatten(),
                None => run(xs, bs, None, rs),
            })
        })
    })
    .flatten()
    .flatten()
    .flatten()?;
    Some(Tensor::from_vec(out, shape, &Device::Cpu))
}

#[cfg(test)]
mod tests {
    use super::super::{conv_reference as reference, rel_diff};
    use super::*;

    /// Every convolution shape of torchvision's resnet18/34/50 (the stem, the 3x3s of each
    /// stage at stride 1 and 2, the 1x1 bottleneck and downsampling convolutions) and
    /// ConvNeXt's 4x4 stem, at full size, batch 1 and 3 (both threading modes), with and
    /// without bias, residual and ReLU, against candle's `conv2d`: within 1e-5 relative.
    #[test]
    fn matches_candle_conv2d_on_full_size_resnet_shapes() {
        let dev = Device::Cpu;
        // (in, out, k, stride, padding, input side)
        let shapes = [
            (3, 64, 7, 2, 3, 224),
            (64, 64, 3, 1, 1, 56),
            (64, 128, 3, 2, 1, 56),
            (128, 128, 3, 1, 1, 28),
            (128, 256, 3, 2, 1, 28),
            (256, 256, 3, 1, 1, 14),
            (256, 512, 3, 2, 1, 14),
            (512, 512, 3, 1, 1, 7),
            (64, 128, 1, 2, 0, 56),
            (256, 64, 1, 1, 0, 56),
            (64, 256, 1, 1, 0, 56),
            (1024, 2048, 1, 2, 0, 14),
            (3, 96, 4, 4, 0, 224),
            (5, 7, 3, 1, 1, 1),
            (5, 7, 3, 2, 1, 9),
        ];
        for (i, &(c, o, k, s, p, side)) in shapes.iter().enumerate() {
            for batch in [1, 3, 70] {
                if batch == 70 && side > 14 {
                    continue; // the stacked path at every group size, on the small maps only
                }
                let x = Tensor::randn(0f32, 1.0, (batch, c, side, side), &dev).unwrap();
                let w = (Tensor::randn(0f32, 1.0, (o, c, k, k), &dev).unwrap()
                    * (1.0 / ((c * k * k) as f64).sqrt()))
                .unwrap();
                let bias = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
                let oh = (side + 2 * p - k) / s + 1;
                let res = Tensor::randn(0f32, 1.0, (batch, o, oh, oh), &dev).unwrap();
                let variant = i % 4;
                let b = (variant != 1).then_some(&bias);
                let r = (variant >= 2).then_some(&res);
                let relu = variant != 3;
                let fast = conv2d_fused(&x, &w, b, s, p, relu, r)
                    .expect("the fast path applies")
                    .unwrap();
                let want = reference(&x, &w, b, s, p, relu, r);
                assert_eq!(fast.dims(), want.dims());
                let d = rel_diff(&fast, &want);
                assert!(d <= 1e-5, "shape {:?} batch {batch}: {d}", shapes[i]);
            }
        }
    }

    /// The weight `w` (`k x m`) packed in each layout this CPU's kernels run, and not packed.
    fn packings(w: &Tensor) -> Vec<Option<PackedB>> {
        let (k, m) = w.dims2().unwrap();
        let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut v = vec![None];
        for layout in [
            super::super::packed::Layout::Rows32,
            super::super::packed::Layout::Halves16,
        ] {
            if let Some(p) = PackedB::with_layout(&ws, k, m, layout) {
                v.push(Some(p));
            }
        }
        v
    }

    /// `fc1` + GELU against candle's `broadcast_matmul`, bias and `gelu_erf`, on ConvNeXt
    /// tiny's first-stage shape (3136 rows of 96 to 384), its last stage at batch 1 (49 rows of
    /// 768 to 3072: the panel split), a small one and an odd one (not packed: 3 columns), with
    /// the weight packed in each layout and not packed.
    #[test]
    fn linear_bias_gelu_matches_candle() {
        let dev = Device::Cpu;
        for (n, k, m) in [(3136, 96, 384), (49, 768, 3072), (40, 64, 96), (7, 5, 3)] {
            let x = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let w = (Tensor::randn(0f32, 1.0, (k, m), &dev).unwrap() * (1.0 / (k as f64).sqrt()))
                .unwrap();
            let b = Tensor::randn(0f32, 1.0, m, &dev).unwrap();
            let want = x
                .broadcast_matmul(&w)
                .unwrap()
                .broadcast_add(&b)
                .unwrap()
                .gelu_erf()
                .unwrap();
            for p in packings(&w) {
                let got = linear_bias_gelu(&x, &w, p.as_ref(), &b).unwrap().unwrap();
                let d = rel_diff(&got, &want);
                assert!(d <= 1e-5, "{n}x{k}x{m} {:?}: {d}", p.map(|p| p.layout()));
            }
        }
    }

    /// ConvNeXt's patch convolutions as products (`x · W + b`) on the packed weight against
    /// candle's ops: the stem (4x4 patches of 3 channels to 96) and a downsampling (2x2 of 96
    /// to 192) at batch 1, both packed layouts; not packed, the caller's fallback.
    #[test]
    fn linear_bias_matches_candle() {
        let dev = Device::Cpu;
        for (n, k, m) in [(3136, 48, 96), (784, 384, 192), (7, 5, 3)] {
            let x = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let w = (Tensor::randn(0f32, 1.0, (k, m), &dev).unwrap() * (1.0 / (k as f64).sqrt()))
                .unwrap();
            let b = Tensor::randn(0f32, 1.0, m, &dev).unwrap();
            let want = x.broadcast_matmul(&w).unwrap().broadcast_add(&b).unwrap();
            for p in packings(&w) {
                match linear_bias(&x, &w, p.as_ref(), &b) {
                    Some(got) => {
                        let d = rel_diff(&got.unwrap(), &want);
                        assert!(d <= 1e-5, "{n}x{k}x{m} {:?}: {d}", p.map(|p| p.layout()));
                    }
                    None => assert!(p.is_none(), "{n}x{k}x{m}: a packed weight was not used"),
                }
            }
        }
    }

    /// The fused MLP against candle's ops (within 1e-5) and bit for bit against the two
    /// steps on the same packed weights, on ConvNeXt-tiny's first stage at batch 1 and its
    /// third at batch 8, with and without the layer scale, in both packed layouts.
    #[test]
    fn mlp_fused_matches_the_two_steps() {
        let dev = Device::Cpu;
        for (n, c, h) in [(3136, 96, 384), (1568, 384, 1536)] {
            let x = Tensor::randn(0f32, 1.0, (n, c), &dev).unwrap();
            let w1 = (Tensor::randn(0f32, 1.0, (c, h), &dev).unwrap() * (1.0 / (c as f64).sqrt()))
                .unwrap();
            let w2 = (Tensor::randn(0f32, 1.0, (h, c), &dev).unwrap() * (1.0 / (h as f64).sqrt()))
                .unwrap();
            let b1 = Tensor::randn(0f32, 1.0, h, &dev).unwrap();
            let b2 = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
            let g = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (1, n, c), &dev).unwrap();
            let hid = x
                .broadcast_matmul(&w1)
                .unwrap()
                .broadcast_add(&b1)
                .unwrap()
                .gelu_erf()
                .unwrap();
            let y = hid
                .broadcast_matmul(&w2)
                .unwrap()
                .broadcast_add(&b2)
                .unwrap();
            for gamma in [Some(&g), None] {
                let want = match gamma {
                    Some(g) => y.broadcast_mul(g).unwrap(),
                    None => y.clone(),
                };
                let want = (want.reshape((1, n, c)).unwrap() + &r).unwrap();
                for (p1, p2) in packings(&w1).into_iter().zip(packings(&w2)) {
                    let got = mlp_fused(
                        &x,
                        (&w1, p1.as_ref(), &b1),
                        (&w2, p2.as_ref(), &b2),
                        gamma,
                        &r,
                    );
                    let Some(got) = got else {
                        assert!(p1.is_none(), "{n}x{c}x{h}: packed but not fused");
                        continue;
                    };
                    let got = got.unwrap();
                    let d = rel_diff(&got, &want);
                    assert!(
                        d <= 1e-5,
                        "{n}x{c}x{h} {:?}: {d}",
                        p1.as_ref().map(|p| p.layout())
                    );
                    let hid = linear_bias_gelu(&x, &w1, p1.as_ref(), &b1)
                        .unwrap()
                        .unwrap();
                    let two = linear_bias_scale_add(&hid, &w2, p2.as_ref(), &b2, gamma, &r)
                        .unwrap()
                        .unwrap()
                        .reshape((1, n, c))
                        .unwrap();
                    assert_eq!(
                        rel_diff(&got, &two),
                        0.0,
                        "{n}x{c}x{h}: fused and two-step bits differ"
                    );
                }
            }
        }
    }

    /// `fc2`, layer scale and shortcut against candle's ops, on ConvNeXt tiny's first-stage
    /// and last-stage (batch 1) shapes, a small one and an odd one, with and without the
    /// scale, the weight packed in each layout and not packed.
    #[test]
    fn linear_bias_scale_add_matches_candle() {
        let dev = Device::Cpu;
        for (n, k, m) in [(3136, 384, 96), (49, 3072, 768), (40, 96, 64), (7, 5, 3)] {
            let x = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let w = (Tensor::randn(0f32, 1.0, (k, m), &dev).unwrap() * (1.0 / (k as f64).sqrt()))
                .unwrap();
            let b = Tensor::randn(0f32, 1.0, m, &dev).unwrap();
            let g = Tensor::randn(0f32, 1.0, m, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (1, n, m), &dev).unwrap();
            let y = x.broadcast_matmul(&w).unwrap().broadcast_add(&b).unwrap();
            for gamma in [Some(&g), None] {
                let want = match gamma {
                    Some(g) => y.broadcast_mul(g).unwrap(),
                    None => y.clone(),
                };
                let want = (want.reshape((1, n, m)).unwrap() + &r).unwrap();
                for p in packings(&w) {
                    let got = linear_bias_scale_add(&x, &w, p.as_ref(), &b, gamma, &r)
                        .unwrap()
                        .unwrap()
                        .reshape((1, n, m))
                        .unwrap();
                    let d = rel_diff(&got, &want);
                    assert!(d <= 1e-5, "{n}x{k}x{m} {:?}: {d}", p.map(|p| p.layout()));
                }
            }
        }
    }

    /// Inputs the fast path does not take are left to candle.
    #[test]
    fn declines_what_it_does_not_handle() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 2, 3, 3), DType::F32, &dev).unwrap();
        assert!(
            conv2d_fused(&x, &w, None, 1, 1, false, None).is_none(),
            "groups 2"
        );
        let w = Tensor::zeros((4, 4, 3, 3), DType::F64, &dev).unwrap();
        assert!(
            conv2d_fused(&x, &w, None, 1, 1, false, None).is_none(),
            "f64 weight"
        );
        let w = Tensor::zeros((4, 4, 11, 11), DType::F32, &dev).unwrap();
        assert!(
            conv2d_fused(&x, &w, None, 1, 1, false, None).is_none(),
            "kernel > input"
        );
        let w = Tensor::zeros((4, 4, 3, 3), DType::F32, &dev).unwrap();
        let r = Tensor::zeros((1, 4, 4, 4), DType::F32, &dev).unwrap();
        assert!(
            conv2d_fused(&x, &w, None, 1, 1, false, Some(&r)).is_none(),
            "residual shape"
        );
        let xt = x.transpose(2, 3).unwrap();
        assert!(
            conv2d_fused(&xt, &w, None, 1, 1, false, None).is_none(),
            "strided input"
        );
    }
}
