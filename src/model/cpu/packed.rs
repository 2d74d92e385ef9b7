//! Linear-layer weights packed once at load time into 32-column panels, and AVX-512 and
//! AVX2 + FMA microkernels that multiply by them directly.
//!
//! A general GEMM (the `gemm` crate, candle's) repacks the weight matrix on every call; at
//! batch 1 each transformer block's four weight matrices are repacked on every thread, about a
//! tenth of the forward pass. Packing once, as ONNX Runtime does, removes that. The AVX-512
//! kernel keeps a 12 x 32 block of outputs in 24 registers and streams one 32-wide row of
//! the panel per step of the reduction; the AVX2 kernel (16 registers of 8 lanes) does the same
//! for each 16-column half of a panel, which the AVX2 [`Layout`] stores as its own contiguous
//! block. Both sum each output in the order of the reduction with one fused multiply-add per
//! step, so they give the same bits.

use std::sync::Arc;

/// Columns per panel: two AVX-512 registers of f32.
pub(crate) const NR: usize = 32;
/// Rows per AVX2 microkernel call (12 of its 16 registers hold outputs).
const MR: usize = 6;
/// Rows per AVX-512 microkernel call: 24 of its 32 registers hold outputs, so each panel row
/// loaded feeds twice the fused multiply-adds a 6-row block gives it (a single-thread probe
/// on this project's Xeon: 135 -> 159 GFLOP/s for fc2's `k = 768`, 158 -> 167 for qkv).
const MR512: usize = 12;

/// How a panel's 32 columns are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `k` rows of 32 values: what the AVX-512 kernel streams.
    Rows32,
    /// Two blocks of `k` rows of 16 values (columns 0-15, then 16-31): each step of the AVX2
    /// kernel reads one whole cache line, and a half-panel is contiguous.
    Halves16,
}

impl Layout {
    /// The layout of the kernel this CPU runs.
    pub(crate) fn preferred() -> Self {
        if super::kernels::has_avx512() {
            Layout::Rows32
        } else {
            Layout::Halves16
        }
    }

    /// The layout of the kernel a model at `level` runs (AVX-512: [`Layout::Rows32`]).
    pub(crate) fn for_level(level: super::kernels::Simd) -> Self {
        if level >= super::kernels::Simd::Avx512 {
            Layout::Rows32
        } else {
            Layout::Halves16
        }
    }

    /// Values per stored row.
    fn width(self) -> usize {
        match self {
            Layout::Rows32 => NR,
            Layout::Halves16 => NR / 2,
        }
    }

    /// Where element `(kk, j)` of a packed `k`-row matrix lives.
    fn index(self, k: usize, kk: usize, j: usize) -> usize {
        let w = self.width();
        (j / NR) * k * NR + (j % NR / w) * k * w + kk * w + j % w
    }
}

/// A `k x n` row-major matrix (a transposed `nn.Linear` weight) stored as `n / 32` panels of
/// `k x 32` values each, laid out as [`Layout`] says.
#[derive(Clone)]
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    layout: Layout,
    /// The packed values from `start` on, with up to 15 values of slack before them.
    data: Arc<[f32]>,
    /// Where the values begin in `data`: the first 64-byte boundary, so that the kernels'
    /// 64-byte loads of a panel row never straddle two cache lines (an `Arc`'s values begin
    /// 16 bytes into its allocation, so they would otherwise all be split loads).
    start: usize,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl PackedB {
    /// Packs `b` (`k x n`, row-major) in a given layout, or `None` when `n` is not a multiple
    /// of 32 or this CPU lacks AVX2 + FMA (callers then use the general matmul).
    pub(crate) fn with_layout(b: &[f32], k: usize, n: usize, layout: Layout) -> Option<Self> {
        if b.len() != k * n {
            return None;
        }
        Self::build(k, n, layout, |kk, j| b[kk * n + j])
    }

    /// Packs the transpose of a PyTorch `nn.Linear` weight `w` (`out x in`, row-major): the
    /// `in x out` matrix the layer multiplies by, without making the transposed copy first.
    pub(crate) fn from_out_in(w: &[f32], out: usize, inp: usize, layout: Layout) -> Option<Self> {
        if w.len() != out * inp {
            return None;
        }
        Self::build(inp, out, layout, |kk, j| w[j * inp + kk])
    }

    /// A `k x n` matrix packed from `at(row, column)`, written once into its final allocation.
    fn build(k: usize, n: usize, layout: Layout, at: impl Fn(usize, usize) -> f32) -> Option<Self> {
        let cpu_ok = super::kernels::Simd::detected() >= super::kernels::Simd::Avx2;
        if n == 0 || k == 0 || !n.is_multiple_of(NR) || !cpu_ok {
            return None;
        }
        // Element `i` of the packed data, in storage order (`Layout::index` inverted): panel
        // `i / (k * 32)`, then block, row and column within the panel.
        let w = layout.width();
        // The allocation, then the values written from its first 64-byte boundary on.
        let mut data: Arc<[f32]> = std::iter::repeat_n(0f32, k * n + 15).collect();
        let start = (data.as_ptr() as usize).wrapping_neg() % 64 / 4;
        let values = &mut Arc::get_mut(&mut data)?[start..start + k * n];
        for (i, v) in values.iter_mut().enumerate() {
            let (panel, r) = (i / (k * NR), i % (k * NR));
            let (block, r) = (r / (k * w), r % (k * w));
            let (kk, jj) = (r / w, r % w);
            *v = at(kk, panel * NR + block * w + jj);
        }
        Some(PackedB {
            k,
            n,
            layout,
            data,
            start,
        })
    }

    /// The packed values, in storage order.
    fn values(&self) -> &[f32] {
        &self.data[self.start..self.start + self.k * self.n]
    }

    /// The matrix back as `k x n` row-major values (exact: packing only moves them).
    pub(crate) fn unpack(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for kk in 0..self.k {
            for j in 0..self.n {
                out[kk * self.n + j] = self.values()[self.layout.index(self.k, kk, j)];
            }
        }
        out
    }

    /// `(k, n)`.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// How the panels are stored.
    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// A borrowed view for [`matmul_packed`].
    pub(crate) fn view(&self) -> PackedRef<'_> {
        PackedRef {
            k: self.k,
            n: self.n,
            layout: self.layout,
            data: self.values(),
        }
    }
}

/// A packed `k x n` matrix (see [`PackedB`]) in borrowed memory.
#[derive(Clone, Copy)]
pub(crate) struct PackedRef<'a> {
    pub k: usize,
    pub n: usize,
    pub layout: Layout,
    pub data: &'a [f32],
}

/// Packs the transpose of `n` rows of `k` values (row `j` starts at `src[j * row_stride]`),
/// times `scale`, as a `k x n` matrix, padding the columns with zeros to a multiple of 32.
/// Returns the padded width. Used for each image's keys: `k` is the head width, `n` the tokens.
pub(crate) fn pack_transposed(
    src: &[f32],
    (k, n): (usize, usize),
    row_stride: usize,
    scale: f32,
    layout: Layout,
    out: &mut Vec<f32>,
) -> usize {
    let padded = n.div_ceil(NR) * NR;
    out.clear();
    out.resize(k * padded, 0.0);
    let w = layout.width();
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::kernels::has_avx2() && k.is_multiple_of(8) && n >= 8 {
        assert!(
            (n - 1) * row_stride + k <= src.len(),
            "pack_transposed: src"
        );
        done = n / 8 * 8;
        // SAFETY: AVX2 is present; rows `0..done` of `k` values lie inside `src` (asserted),
        // and `out` holds the packed `k x padded` matrix, which every index stays inside.
        unsafe { transpose8::pack(src, (k, done), row_stride, scale, layout, out) };
    }
    for j in done..n {
        let row = &src[j * row_stride..j * row_stride + k];
        // Column j's first element; the next rows follow `w` apart.
        let column = &mut out[layout.index(k, 0, j)..];
        for (dst, &v) in column.iter_mut().step_by(w).zip(row) {
            *dst = v * scale;
        }
    }
    padded
}

/// The transposing pack eight rows by eight values at a time, with AVX2 shuffles.
#[cfg(target_arch = "x86_64")]
mod transpose8 {
    use super::Layout;
    use std::arch::x86_64::*;

    /// [`super::pack_transposed`] for the first `n` rows, `n` and `k` multiples of 8: each
    /// 8 x 8 tile is loaded as eight rows, transposed in registers, scaled (the same single
    /// multiply as the scalar loop) and stored as eight runs of eight consecutive columns
    /// (eight consecutive columns never straddle a stored block of either layout).
    ///
    /// # Safety
    /// AVX2 must be present, `src` must hold `n` rows of `k` values `row_stride` apart, and
    /// `out` the packed matrix (`k x` at least `n` columns).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pack(
        src: &[f32],
        (k, n): (usize, usize),
        row_stride: usize,
        scale: f32,
        layout: Layout,
        out: &mut [f32],
    ) {
        let s = _mm256_set1_ps(scale);
        let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
        for j in (0..n).step_by(8) {
            for kb in (0..k).step_by(8) {
                let r: [__m256; 8] =
                    std::array::from_fn(|i| _mm256_loadu_ps(sp.add((j + i) * row_stride + kb)));
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
                // Column kb + c of the tile: value c of each of the eight rows.
                let cols = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (c, v) in cols.into_iter().enumerate() {
                    let at = layout.index(k, kb + c, j);
                    _mm256_storeu_ps(op.add(at), _mm256_mul_ps(v, s));
                }
            }
        }
    }
}

/// Packs `k` rows of `n` values (row `i` starts at `src[i * row_stride]`, `n` a multiple of
/// 32) as a `k x n` matrix. Used for each image's values: `k` is the tokens, `n` the head width.
pub(crate) fn pack_rows(
    src: &[f32],
    (k, n): (usize, usize),
    row_stride: usize,
    layout: Layout,
    out: &mut Vec<f32>,
) {
    debug_assert!(n.is_multiple_of(NR));
    out.clear();
    out.resize(k * n, 0.0);
    let w = layout.width();
    // Each stored block is `k` rows of `w` values from columns `c0..c0 + w`.
    for (b, block) in out.chunks_exact_mut(k * w).enumerate() {
        let c0 = b * w;
        for (i, dst) in block.chunks_exact_mut(w).enumerate() {
            let start = i * row_stride + c0;
            dst.copy_from_slice(&src[start..start + w]);
        }
    }
}

/// Whether a packed kernel can run (AVX-512, or AVX2 + FMA; see [`super::kernels::simd`]).
pub(crate) fn available() -> bool {
    super::kernels::has_avx2()
}

/// What a microkernel block adds its sums to before storing them (see [`matmul_packed`]):
/// `bias` points at the block's first column of the bias.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Out {
    accumulate: bool,
    bias: Option<*const f32>,
}

/// `dst = lhs · B` (or `dst += lhs · B` when `accumulate`) for `m` rows: `lhs` rows are
/// `lhs_row_stride` apart and `B.k()` long, `dst` rows `dst_row_stride` apart and `B.n()` long.
///
/// With a `bias` (`B.n()` long), each output is `bias + lhs · B`, or `(dst + bias) + lhs · B`
/// when `accumulate`: the bits of first writing or adding the bias to `dst` and then
/// accumulating, without that extra pass over `dst` (for `qkv` at batch 32 a 14.5 MB buffer
/// written once more and read back).
///
/// # Panics
/// If a matrix does not fit in its slice (an internal shape bug; shapes are validated when the
/// weights load).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_packed(
    m: usize,
    lhs: &[f32],
    lhs_row_stride: usize,
    b: PackedRef<'_>,
    dst: &mut [f32],
    dst_row_stride: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
) {
    if m == 0 {
        return;
    }
    assert!(bias.is_none_or(|v| v.len() >= b.n), "matmul_packed: bias");
    assert!(
        (m - 1) * lhs_row_stride + b.k <= lhs.len(),
        "matmul_packed: lhs"
    );
    assert!(
        (m - 1) * dst_row_stride + b.n <= dst.len(),
        "matmul_packed: dst"
    );
    assert!(
        b.n.is_multiple_of(NR) && b.data.len() >= b.k * b.n,
        "matmul_packed: packed"
    );
    assert!(available(), "matmul_packed: no AVX2 + FMA");
    #[cfg(target_arch = "x86_64")]
    {
        if super::kernels::has_avx512() && b.layout == Layout::Rows32 {
            // SAFETY: AVX-512F is present (checked just above), and the asserts above prove
            // every row the kernel reads or writes (and the bias) lies inside its slice.
            unsafe {
                avx512::matmul(
                    m,
                    lhs,
                    lhs_row_stride,
                    b,
                    dst,
                    dst_row_stride,
                    accumulate,
                    bias,
                );
            }
        } else {
            // SAFETY: AVX2 and FMA are present (`available`, asserted above), and the asserts
            // above prove every row the kernel reads or writes (and the bias) lies inside its
            // slice.
            unsafe {
                avx2::matmul(
                    m,
                    lhs,
                    lhs_row_stride,
                    b,
                    dst,
                    dst_row_stride,
                    accumulate,
                    bias,
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        unreachable!("PackedB::new returns None off x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Out, PackedRef, MR512, NR};
    use std::arch::x86_64::*;

    /// See [`super::matmul_packed`].
    ///
    /// # Safety
    /// The CPU must support AVX-512F, and the slices must hold the matrices (checked by the
    /// caller).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matmul(
        m: usize,
        lhs: &[f32],
        lda: usize,
        b: PackedRef<'_>,
        dst: &mut [f32],
        ldc: usize,
        accumulate: bool,
        bias: Option<&[f32]>,
    ) {
        let (k, n) = (b.k, b.n);
        let a = lhs.as_ptr();
        let c = dst.as_mut_ptr();
        let panels = n / NR;
        // The next panel is fetched into L2 while this one runs: at batch 1 the weights come
        // from L3 on every forward pass. The prefetches are spread evenly over as many of this
        // panel's whole 12-row blocks as there are (one cache line every 4, 2 or 1 steps of the
        // reduction, or two a step in the first block when there are fewer than two), so they
        // never crowd the blocks' own loads. A single-thread probe cycling through ViT-tiny's
        // 22 MB of weights (best of 5, GFLOP/s): at 98 rows 156 -> 162, at 60 rows 158 -> 167,
        // at 24 rows 145 -> 165, against 76-135 -> 84-148 for the first-block-only prefetch
        // over none.
        // Blocks of 12 rows, except that a remainder of 1-5 rows is merged with the last whole
        // block and the two split in halves (98 rows: 7 x 12, 7, 7): a block of fewer than about
        // 6 rows waits on its few FMA chains' latency, so a 2-row block cost about a third of a
        // 12-row one for a sixth of its rows. Every output row is computed the same way
        // whatever block it lands in, so the bits do not change.
        let block_rows = |left: usize| {
            if left > MR512 && left < MR512 + 6 {
                left.div_ceil(2)
            } else {
                left.min(MR512)
            }
        };
        let split = m > MR512 && (m % MR512).clamp(1, 5) == m % MR512;
        let full = m / MR512 - usize::from(split);
        let (pf, lines_per_block) = match full {
            8.. => (PF_EVERY4, k.div_ceil(4)),
            4.. => (PF_EVERY2, k.div_ceil(2)),
            2.. => (PF_EVERY1, k),
            _ => (PF_DENSE, 2 * k),
        };
        // Cache lines in a panel: `k` rows of 32 values, 128 bytes each.
        let panel_lines = 2 * k;
        for p in 0..panels {
            let panel = b.data.as_ptr().add(p * k * NR);
            let next = b.data.as_ptr().add((p + 1).min(panels - 1) * k * NR);
            let out = Out {
                accumulate,
                bias: bias.map(|v| v.as_ptr().add(p * NR)),
            };
            let mut i = 0;
            let mut bi = 0;
            while i < m {
                let rows = block_rows(m - i);
                let ai = a.add(i * lda);
                let ci = c.add(i * ldc + p * NR);
                let first_line = bi * lines_per_block;
                let prefetch = p + 1 < panels && rows == MR512 && first_line < panel_lines;
                // This block's share of the next panel: 16 values (one line) per line.
                let nx = next.wrapping_add(first_line * 16);
                match rows {
                    12 if prefetch => match pf {
                        PF_EVERY4 => block::<12, PF_EVERY4>(k, ai, lda, panel, ci, ldc, out, nx),
                        PF_EVERY2 => block::<12, PF_EVERY2>(k, ai, lda, panel, ci, ldc, out, nx),
                        PF_EVERY1 => block::<12, PF_EVERY1>(k, ai, lda, panel, ci, ldc, out, nx),
                        _ => block::<12, PF_DENSE>(k, ai, lda, panel, ci, ldc, out, nx),
                    },
                    12 => block::<12, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                    11 => block::<11, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                    10 => block::<10, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                    9 => block::<9, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                    8 => block::<8, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                    7 => block::<7, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                    6 => block::<6, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                    5 => block::<5, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                    4 => block::<4, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                    3 => block::<3, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                    2 => block::<2, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                    _ => block::<1, PF_NONE>(k, ai, lda, panel, ci, ldc, out, nx),
                }
                i += rows;
                bi += 1;
            }
        }
    }

    /// No prefetch.
    const PF_NONE: u8 = 0;
    /// Two lines (a whole 32-value row of the next panel) every step of the reduction.
    const PF_DENSE: u8 = 1;
    /// One line every step.
    const PF_EVERY1: u8 = 2;
    /// One line every 2 steps.
    const PF_EVERY2: u8 = 3;
    /// One line every 4 steps.
    const PF_EVERY4: u8 = 4;

    /// `R` rows x 32 columns of output, the whole reduction in registers; unless `PF` is
    /// [`PF_NONE`], also asks for consecutive cache lines from `next` on to be brought into L2
    /// at the rate `PF` names (hints: they read nothing and cannot fault).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn block<const R: usize, const PF: u8>(
        k: usize,
        a: *const f32,
        lda: usize,
        panel: *const f32,
        c: *mut f32,
        ldc: usize,
        out: Out,
        next: *const f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for kk in 0..k {
            match PF {
                PF_DENSE => {
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(kk * NR).cast());
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(kk * NR + 16).cast());
                }
                PF_EVERY1 => _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(kk * 16).cast()),
                PF_EVERY2 if kk % 2 == 0 => {
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(kk / 2 * 16).cast())
                }
                PF_EVERY4 if kk % 4 == 0 => {
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(kk / 4 * 16).cast())
                }
                _ => {}
            }
            // The panel's rows 2 KB ahead, asked for in L1 (panels over 48 KB stream from
            // L2; ConvNeXt-tiny at batch 1 on two threads 57 -> 52 ms, ViT-tiny 10.9 -> 10.4).
            _mm_prefetch::<_MM_HINT_T0>(panel.wrapping_add((kk + 16) * NR).cast());
            _mm_prefetch::<_MM_HINT_T0>(panel.wrapping_add((kk + 16) * NR + 16).cast());
            let b0 = _mm512_loadu_ps(panel.add(kk * NR));
            let b1 = _mm512_loadu_ps(panel.add(kk * NR + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * lda + kk));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        }
        let bias = out
            .bias
            .map(|b| (_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16))));
        for (r, acc) in acc.iter().enumerate() {
            let cr = c.add(r * ldc);
            // What the sums are added to: the output, the bias, or the output plus the bias.
            let base = match (out.accumulate, bias) {
                (false, None) => None,
                (false, Some(b)) => Some(b),
                (true, None) => Some((_mm512_loadu_ps(cr), _mm512_loadu_ps(cr.add(16)))),
                (true, Some((b0, b1))) => Some((
                    _mm512_add_ps(_mm512_loadu_ps(cr), b0),
                    _mm512_add_ps(_mm512_loadu_ps(cr.add(16)), b1),
                )),
            };
            let (mut v0, mut v1) = (acc[0], acc[1]);
            if let Some((c0, c1)) = base {
                v0 = _mm512_add_ps(c0, v0);
                v1 = _mm512_add_ps(c1, v1);
            }
            _mm512_storeu_ps(cr, v0);
            _mm512_storeu_ps(cr.add(16), v1);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Layout, Out, PackedRef, MR, NR};
    use std::arch::x86_64::*;

    /// Columns per AVX2 block: half a panel, two registers of 8 lanes.
    const HALF: usize = NR / 2;

    /// See [`super::matmul_packed`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA, and the slices must hold the matrices (checked by the
    /// caller).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn matmul(
        m: usize,
        lhs: &[f32],
        lda: usize,
        b: PackedRef<'_>,
        dst: &mut [f32],
        ldc: usize,
        accumulate: bool,
        bias: Option<&[f32]>,
    ) {
        let (k, n) = (b.k, b.n);
        // Where the second half of a panel starts, and the distance between its rows.
        let (half_at, bs) = match b.layout {
            Layout::Rows32 => (HALF, NR),
            Layout::Halves16 => (k * HALF, HALF),
        };
        let a = lhs.as_ptr();
        let c = dst.as_mut_ptr();
        for p in 0..n / NR {
            let panel = b.data.as_ptr().add(p * k * NR);
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(MR);
                let ai = a.add(i * lda);
                for half in 0..2 {
                    let bh = (panel.add(half * half_at), bs);
                    let ci = c.add(i * ldc + p * NR + half * HALF);
                    let out = Out {
                        accumulate,
                        bias: bias.map(|v| v.as_ptr().add(p * NR + half * HALF)),
                    };
                    match rows {
                        6 => block::<6>(k, ai, lda, bh, ci, ldc, out),
                        5 => block::<5>(k, ai, lda, bh, ci, ldc, out),
                        4 => block::<4>(k, ai, lda, bh, ci, ldc, out),
                        3 => block::<3>(k, ai, lda, bh, ci, ldc, out),
                        2 => block::<2>(k, ai, lda, bh, ci, ldc, out),
                        _ => block::<1>(k, ai, lda, bh, ci, ldc, out),
                    }
                }
                i += rows;
            }
        }
    }

    /// `R` rows x 16 columns of output (`b` points at the half-panel's first row, whose rows
    /// are `bs` apart), the whole reduction in twelve registers at most.
    #[inline(always)]
    unsafe fn block<const R: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        (b, bs): (*const f32, usize),
        c: *mut f32,
        ldc: usize,
        out: Out,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for kk in 0..k {
            let b0 = _mm256_loadu_ps(b.add(kk * bs));
            let b1 = _mm256_loadu_ps(b.add(kk * bs + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*a.add(r * lda + kk));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
        let bias = out
            .bias
            .map(|b| (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))));
        for (r, acc) in acc.iter().enumerate() {
            let cr = c.add(r * ldc);
            // What the sums are added to, as in the AVX-512 kernel.
            let base = match (out.accumulate, bias) {
                (false, None) => None,
                (false, Some(b)) => Some(b),
                (true, None) => Some((_mm256_loadu_ps(cr), _mm256_loadu_ps(cr.add(8)))),
                (true, Some((b0, b1))) => Some((
                    _mm256_add_ps(_mm256_loadu_ps(cr), b0),
                    _mm256_add_ps(_mm256_loadu_ps(cr.add(8)), b1),
                )),
            };
            let (mut v0, mut v1) = (acc[0], acc[1]);
            if let Some((c0, c1)) = base {
                v0 = _mm256_add_ps(c0, v0);
                v1 = _mm256_add_ps(c1, v1);
            }
            _mm256_storeu_ps(cr, v0);
            _mm256_storeu_ps(cr.add(8), v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUTS: [Layout; 2] = [Layout::Rows32, Layout::Halves16];

    #[test]
    fn packed_product_matches_naive() {
        let (k, n) = (37, 64);
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
            .collect();
        for layout in LAYOUTS {
            let Some(packed) = PackedB::with_layout(&b, k, n, layout).filter(|_| available())
            else {
                eprintln!("skipped: packed kernel test (this CPU, or FASTAI_INFER_SIMD, has no AVX2 + FMA)");
                return;
            };
            for m in [1, 5, 6, 7, 13] {
                let lda = k + 3;
                let a: Vec<f32> = (0..m * lda)
                    .map(|i| ((i * 7) % 11) as f32 / 4.0 - 1.0)
                    .collect();
                let ldc = n + 5;
                let mut c = vec![0.5f32; m * ldc];
                matmul_packed(m, &a, lda, packed.view(), &mut c, ldc, true, None);
                for i in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k)
                            .map(|p| f64::from(a[i * lda + p]) * f64::from(b[p * n + j]))
                            .sum();
                        let got = f64::from(c[i * ldc + j]);
                        assert!(
                            (got - (0.5 + s)).abs() < 1e-4,
                            "{layout:?} m={m} ({i}, {j})"
                        );
                    }
                    assert_eq!(c[i * ldc + n], 0.5, "padding column untouched");
                }
            }
            assert!(PackedB::with_layout(&b[..k * 48], k, 48, layout).is_none());

            // The same matrix packed from its transpose (rows of k), scaled, 5 columns short.
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let mut buf = Vec::new();
            let padded = pack_transposed(&bt, (k, n - 5), k, 2.0, layout, &mut buf);
            assert_eq!(padded, n);
            let view = PackedRef {
                k,
                n: padded,
                layout,
                data: &buf,
            };
            let a: Vec<f32> = (0..3 * k).map(|i| (i % 5) as f32 - 2.0).collect();
            let mut c = vec![0f32; 3 * n];
            matmul_packed(3, &a, k, view, &mut c, n, false, None);
            for i in 0..3 {
                for j in 0..n {
                    let s: f32 = if j < n - 5 {
                        (0..k).map(|p| a[i * k + p] * b[p * n + j] * 2.0).sum()
                    } else {
                        0.0
                    };
                    assert!(
                        (c[i * n + j] - s).abs() < 1e-3,
                        "{layout:?} transposed ({i}, {j})"
                    );
                }
            }
            // And from rows with a stride: the same bytes as packing the weight.
            let mut buf = Vec::new();
            let wide: Vec<f32> = b
                .chunks(n)
                .flat_map(|r| r.iter().chain([9.0; 3].iter()))
                .copied()
                .collect();
            pack_rows(&wide, (k, n), n + 3, layout, &mut buf);
            assert_eq!(&buf[..], packed.values(), "{layout:?}");
        }
    }

    /// Packing a PyTorch `(out, in)` weight directly gives the bytes of packing its
    /// transpose, and unpacking gives the transpose back exactly.
    #[test]
    fn packing_from_out_in_and_unpacking_round_trip() {
        let (out, inp) = (64, 23);
        let w: Vec<f32> = (0..out * inp).map(|i| (i as f32 * 0.37).sin()).collect();
        let wt: Vec<f32> = (0..inp * out)
            .map(|i| w[(i % out) * inp + i / out])
            .collect();
        for layout in LAYOUTS {
            let Some(a) = PackedB::from_out_in(&w, out, inp, layout).filter(|_| available()) else {
                eprintln!(
                    "skipped: packing test (this CPU, or FASTAI_INFER_SIMD, has no AVX2 + FMA)"
                );
                return;
            };
            let b = PackedB::with_layout(&wt, inp, out, layout).expect("AVX2 present");
            assert_eq!(a.values(), b.values(), "{layout:?}");
            // The values start on a cache line, so no 64-byte load of a panel row is split.
            for p in [&a, &b] {
                assert_eq!(p.view().data.as_ptr() as usize % 64, 0, "{layout:?}");
            }
            assert_eq!(a.dims(), (inp, out));
            assert_eq!(a.unpack(), wt, "{layout:?}");
            assert!(PackedB::from_out_in(&w[1..], out, inp, layout).is_none());
        }
    }

    /// The AVX2 transposing pack writes the same values as the scalar loop it replaces, for
    /// a ViT-tiny head (64 values) over 197 tokens and for row counts around multiples of 8.
    #[test]
    fn transposing_pack_matches_scalar() {
        for layout in LAYOUTS {
            for (k, n, stride) in [(64, 197, 576), (8, 8, 8), (16, 23, 19), (24, 7, 24)] {
                let src: Vec<f32> = (0..(n - 1) * stride + k)
                    .map(|i| ((i * 37) % 101) as f32 / 9.0 - 5.0)
                    .collect();
                let mut fast = Vec::new();
                let padded = pack_transposed(&src, (k, n), stride, 0.125, layout, &mut fast);
                let mut want = vec![0f32; k * padded];
                for j in 0..n {
                    for kk in 0..k {
                        want[layout.index(k, kk, j)] = src[j * stride + kk] * 0.125;
                    }
                }
                assert_eq!(fast, want, "{layout:?} k={k} n={n}");
            }
        }
    }

    /// Every kernel and layout sums in the same order with the same fused operations, so a
    /// CPU's choice of kernel does not change the model's output bits: the AVX2 kernel on both
    /// layouts, and the AVX-512 kernel where the CPU has it.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn kernels_and_layouts_agree_bitwise() {
        let (k, n) = (45, 96);
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 13) % 29) as f32 / 7.0 - 2.0)
            .collect();
        let Some(rows) = PackedB::with_layout(&b, k, n, Layout::Rows32).filter(|_| available())
        else {
            eprintln!("skipped: packed kernels bit-identity test (this CPU, or FASTAI_INFER_SIMD, has no AVX2 + FMA)");
            return;
        };
        let halves = PackedB::with_layout(&b, k, n, Layout::Halves16).expect("AVX2 present");
        let bias: Vec<f32> = (0..n).map(|j| (j % 7) as f32 * 0.37 - 1.1).collect();
        // 11 rows: one partial block of either kernel; 14: the AVX-512 kernel's two 7-row
        // halves; 25: two whole blocks and a row; 98 and 110: seven and eight whole blocks and
        // two halves (each of the spread prefetch rates runs in one of 25, 98 and 110).
        for m in [11, 14, 25, 98, 110] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 5) % 23) as f32 / 3.0 - 3.5)
                .collect();
            for (accumulate, bias) in [(true, None), (false, Some(&bias[..])), (true, Some(&bias))]
            {
                let run = |f: &dyn Fn(&mut [f32])| {
                    let mut c = vec![0.25f32; m * n];
                    f(&mut c);
                    c
                };
                // SAFETY (all three calls): AVX2 + FMA are present (the packing succeeded),
                // AVX-512 where it is called, and the shapes fit the slices.
                let on_rows = run(&|c| unsafe {
                    avx2::matmul(m, &a, k, rows.view(), c, n, accumulate, bias)
                });
                let on_halves = run(&|c| unsafe {
                    avx2::matmul(m, &a, k, halves.view(), c, n, accumulate, bias)
                });
                assert_eq!(on_rows, on_halves, "m={m} {accumulate} {}", bias.is_some());
                if crate::model::cpu::kernels::has_avx512() {
                    let wide = run(&|c| unsafe {
                        avx512::matmul(m, &a, k, rows.view(), c, n, accumulate, bias)
                    });
                    assert_eq!(on_rows, wide, "m={m} {accumulate} {}", bias.is_some());
                }
            }
        }
        if !crate::model::cpu::kernels::has_avx512() {
            eprintln!(
                "skipped: the AVX-512 kernel half of the bit-identity test (no AVX-512 here)"
            );
        }
    }

    /// A bias given to the kernel gives the bits of writing (or adding) it to the output
    /// first and accumulating the product after, as the forward pass did before.
    #[test]
    fn bias_in_the_kernel_equals_bias_first() {
        let (k, n, m) = (64, 64, 14);
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7) % 19) as f32 / 5.0 - 1.9)
            .collect();
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 3) % 13) as f32 / 3.1 - 2.0)
            .collect();
        let bias: Vec<f32> = (0..n).map(|j| (j as f32 * 0.731).sin() * 3.0).collect();
        let start: Vec<f32> = (0..m * n).map(|i| (i as f32 * 0.173).cos()).collect();
        for layout in LAYOUTS {
            let Some(p) = PackedB::with_layout(&b, k, n, layout).filter(|_| available()) else {
                eprintln!("skipped: packed kernel test (this CPU, or FASTAI_INFER_SIMD, has no AVX2 + FMA)");
                return;
            };
            // Overwrite with a bias: bias rows first, then accumulate.
            let mut want = bias.repeat(m);
            matmul_packed(m, &a, k, p.view(), &mut want, n, true, None);
            let mut got = start.clone();
            matmul_packed(m, &a, k, p.view(), &mut got, n, false, Some(&bias));
            assert_eq!(got, want, "{layout:?} overwrite");
            // Accumulate with a bias: the bias added to the output first.
            let mut want: Vec<f32> = start
                .chunks(n)
                .flat_map(|r| r.iter().zip(&bias).map(|(x, b)| x + b))
                .collect();
            matmul_packed(m, &a, k, p.view(), &mut want, n, true, None);
            let mut got = start.clone();
            matmul_packed(m, &a, k, p.view(), &mut got, n, true, Some(&bias));
            assert_eq!(got, want, "{layout:?} accumulate");
            assert_ne!(got, start);
        }
    }
}
