//! ConvNeXt's depthwise `k`x`k` convolution (stride 1, zero padding `k / 2`, with bias) on a
//! channels-last map, one output row at a time: AVX-512 and AVX2 + FMA kernels that keep 64
//! (or 32) channels of one output pixel in registers over all its taps, and the plain loop
//! they are tested against.
//!
//! Each output is `bias + Σ w[ky, kx, c] · x[y + ky - p, x + kx - p, c]` over the taps inside
//! the image in `(ky, kx)` order, accumulated from zero: fused multiply-adds in the SIMD
//! kernels (the same bits on AVX-512 and AVX2), a multiply then an add in the plain loop.

/// Output row `row` (image `row / h`, line `row % h`) of the depthwise convolution of `src`
/// (`(B, h, w, c)` channels-last), `weight` `(k, k, c)`, `bias` `(c)`, into `dst` (`w·c`
/// values), with the best kernel the CPU (and `FASTAI_INFER_SIMD`) allows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_row(
    src: &[f32],
    (h, w, c): (usize, usize, usize),
    weight: &[f32],
    bias: &[f32],
    k: usize,
    row: usize,
    dst: &mut [f32],
) {
    let g = Geometry::new(src, (h, w, c), weight, bias, k, row, dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        if super::kernels::has_avx512() {
            // SAFETY: AVX-512F is present; `Geometry::new` checked that every tap of every
            // pixel of the row, the weight, the bias and `dst` lie inside their slices.
            unsafe { simd::row512(&g, src, weight, bias, dst) };
            return;
        }
        if super::kernels::has_avx2() {
            // SAFETY: AVX2 and FMA are present; the slices are checked as above.
            unsafe { simd::row256(&g, src, weight, bias, dst) };
            return;
        }
    }
    plain_row(&g, src, weight, bias, dst);
}

/// The row's geometry, checked once.
struct Geometry {
    /// Image width and channels.
    w: usize,
    c: usize,
    /// Kernel size and padding.
    k: usize,
    pad: usize,
    /// Offset of the row's image in `src`.
    plane: usize,
    /// The output line.
    y: usize,
    /// The input lines the taps reach.
    ys: std::ops::Range<usize>,
}

impl Geometry {
    /// # Panics
    /// If the slices do not hold the maps (an internal shape bug: the caller checked the
    /// tensor shapes).
    fn new(
        src: &[f32],
        (h, w, c): (usize, usize, usize),
        weight: &[f32],
        bias: &[f32],
        k: usize,
        row: usize,
        dst_len: usize,
    ) -> Self {
        let pad = k / 2;
        let (img, y) = (row / h.max(1), row % h.max(1));
        assert!(
            (img + 1) * h * w * c <= src.len()
                && weight.len() >= k * k * c
                && bias.len() >= c
                && dst_len >= w * c,
            "depthwise_row: shapes"
        );
        Geometry {
            w,
            c,
            k,
            pad,
            plane: img * h * w * c,
            y,
            ys: y.saturating_sub(pad)..(y + k - pad).min(h),
        }
    }

    /// The input columns the taps of output column `x` reach.
    fn xs(&self, x: usize) -> std::ops::Range<usize> {
        x.saturating_sub(self.pad)..(x + self.k - self.pad).min(self.w)
    }
}

/// The plain loop: a multiply and an add a tap.
fn plain_row(g: &Geometry, src: &[f32], weight: &[f32], bias: &[f32], dst: &mut [f32]) {
    let (w, c, k, pad) = (g.w, g.c, g.k, g.pad);
    for x in 0..w {
        let out = &mut dst[x * c..(x + 1) * c];
        out.fill(0.0);
        for iy in g.ys.clone() {
            for ix in g.xs(x) {
                let t = ((iy + pad - g.y) * k + ix + pad - x) * c;
                let p = g.plane + (iy * w + ix) * c;
                for ((o, &wv), &xv) in out.iter_mut().zip(&weight[t..t + c]).zip(&src[p..p + c]) {
                    *o += wv * xv;
                }
            }
        }
        for (o, &b) in out.iter_mut().zip(&bias[..c]) {
            *o += b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::Geometry;
    use std::arch::x86_64::*;

    /// The row with AVX-512: interior pixels four at a time (32 channels a pass), the others
    /// one at a time (64 channels a pass, 16 at the end), then the rest of the channels one by
    /// one.
    ///
    /// # Safety
    /// AVX-512F must be present and the slices checked by [`Geometry::new`].
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn row512(
        g: &Geometry,
        src: &[f32],
        weight: &[f32],
        bias: &[f32],
        dst: &mut [f32],
    ) {
        let (w, c, k, pad) = (g.w, g.c, g.k, g.pad);
        let (s, wt, bs, d) = (
            src.as_ptr(),
            weight.as_ptr(),
            bias.as_ptr(),
            dst.as_mut_ptr(),
        );
        let mut x = 0;
        while x < w {
            // Four pixels whose taps all lie inside the row, 32 channels at a time: each
            // weight vector loaded once feeds four multiply-adds (the same sum for each output
            // as one pixel at a time).
            if c % 32 == 0 && x >= pad && x + 3 + k - pad <= w {
                for c0 in (0..c).step_by(32) {
                    let mut acc = [[_mm512_setzero_ps(); 2]; 4];
                    for iy in g.ys.clone() {
                        for kx in 0..k {
                            let t = wt.add(((iy + pad - g.y) * k + kx) * c + c0);
                            let (w0, w1) = (_mm512_loadu_ps(t), _mm512_loadu_ps(t.add(16)));
                            let p = s.add(g.plane + (iy * w + x + kx - pad) * c + c0);
                            for (j, a) in acc.iter_mut().enumerate() {
                                let q = p.add(j * c);
                                a[0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(q), a[0]);
                                a[1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(q.add(16)), a[1]);
                            }
                        }
                    }
                    let b0 = _mm512_loadu_ps(bs.add(c0));
                    let b1 = _mm512_loadu_ps(bs.add(c0 + 16));
                    for (j, a) in acc.iter().enumerate() {
                        let o = d.add((x + j) * c + c0);
                        _mm512_storeu_ps(o, _mm512_add_ps(a[0], b0));
                        _mm512_storeu_ps(o.add(16), _mm512_add_ps(a[1], b1));
                    }
                }
                x += 4;
                continue;
            }
            let xs = g.xs(x);
            let mut c0 = 0;
            while c0 + 64 <= c {
                let mut acc = [_mm512_setzero_ps(); 4];
                for iy in g.ys.clone() {
                    for ix in xs.clone() {
                        let t = wt.add(((iy + pad - g.y) * k + ix + pad - x) * c + c0);
                        let p = s.add(g.plane + (iy * w + ix) * c + c0);
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(
                                _mm512_loadu_ps(t.add(16 * j)),
                                _mm512_loadu_ps(p.add(16 * j)),
                                *a,
                            );
                        }
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    let v = _mm512_add_ps(*a, _mm512_loadu_ps(bs.add(c0 + 16 * j)));
                    _mm512_storeu_ps(d.add(x * c + c0 + 16 * j), v);
                }
                c0 += 64;
            }
            while c0 + 16 <= c {
                let mut a = _mm512_setzero_ps();
                for iy in g.ys.clone() {
                    for ix in xs.clone() {
                        let t = wt.add(((iy + pad - g.y) * k + ix + pad - x) * c + c0);
                        let p = s.add(g.plane + (iy * w + ix) * c + c0);
                        a = _mm512_fmadd_ps(_mm512_loadu_ps(t), _mm512_loadu_ps(p), a);
                    }
                }
                let v = _mm512_add_ps(a, _mm512_loadu_ps(bs.add(c0)));
                _mm512_storeu_ps(d.add(x * c + c0), v);
                c0 += 16;
            }
            tail(g, x, c0, src, weight, bias, dst);
            x += 1;
        }
    }

    /// The row with AVX2: 32 channels a pass (8 at the end), then the rest one by one.
    ///
    /// # Safety
    /// AVX2 and FMA must be present and the slices checked by [`Geometry::new`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row256(
        g: &Geometry,
        src: &[f32],
        weight: &[f32],
        bias: &[f32],
        dst: &mut [f32],
    ) {
        let (w, c, k, pad) = (g.w, g.c, g.k, g.pad);
        let (s, wt, bs, d) = (
            src.as_ptr(),
            weight.as_ptr(),
            bias.as_ptr(),
            dst.as_mut_ptr(),
        );
        for x in 0..w {
            let xs = g.xs(x);
            let mut c0 = 0;
            while c0 + 32 <= c {
                let mut acc = [_mm256_setzero_ps(); 4];
                for iy in g.ys.clone() {
                    for ix in xs.clone() {
                        let t = wt.add(((iy + pad - g.y) * k + ix + pad - x) * c + c0);
                        let p = s.add(g.plane + (iy * w + ix) * c + c0);
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(
                                _mm256_loadu_ps(t.add(8 * j)),
                                _mm256_loadu_ps(p.add(8 * j)),
                                *a,
                            );
                        }
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    let v = _mm256_add_ps(*a, _mm256_loadu_ps(bs.add(c0 + 8 * j)));
                    _mm256_storeu_ps(d.add(x * c + c0 + 8 * j), v);
                }
                c0 += 32;
            }
            while c0 + 8 <= c {
                let mut a = _mm256_setzero_ps();
                for iy in g.ys.clone() {
                    for ix in xs.clone() {
                        let t = wt.add(((iy + pad - g.y) * k + ix + pad - x) * c + c0);
                        let p = s.add(g.plane + (iy * w + ix) * c + c0);
                        a = _mm256_fmadd_ps(_mm256_loadu_ps(t), _mm256_loadu_ps(p), a);
                    }
                }
                let v = _mm256_add_ps(a, _mm256_loadu_ps(bs.add(c0)));
                _mm256_storeu_ps(d.add(x * c + c0), v);
                c0 += 8;
            }
            tail(g, x, c0, src, weight, bias, dst);
        }
    }

    /// Channels `c0..` of output column `x`, one at a time, fused as the vector lanes are.
    #[inline(always)]
    fn tail(
        g: &Geometry,
        x: usize,
        c0: usize,
        src: &[f32],
        weight: &[f32],
        bias: &[f32],
        dst: &mut [f32],
    ) {
        let (w, c, k, pad) = (g.w, g.c, g.k, g.pad);
        for ch in c0..c {
            let mut a = 0f32;
            for iy in g.ys.clone() {
                for ix in g.xs(x) {
                    let t = ((iy + pad - g.y) * k + ix + pad - x) * c + ch;
                    let p = g.plane + (iy * w + ix) * c + ch;
                    a = weight[t].mul_add(src[p], a);
                }
            }
            dst[x * c + ch] = a + bias[ch];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::kernels::{with_level, Simd};

    /// Every kernel the CPU has against the plain loop, on ConvNeXt's channel counts and odd
    /// ones (vector tails), small and 7-wide maps: within a few rounding errors (fused and
    /// unfused multiply-adds), and AVX-512 equal to AVX2 bit for bit.
    #[test]
    fn kernels_match_the_plain_loop() {
        for &(b, h, w, c) in &[
            (1usize, 9usize, 11usize, 96usize),
            (2, 7, 7, 768),
            (1, 5, 6, 45),
            (1, 3, 2, 7),
        ] {
            let k = 7;
            let n = b * h * w * c;
            let src: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let weight: Vec<f32> = (0..k * k * c)
                .map(|i| ((i * 104729) % 997) as f32 / 998.0 - 0.5)
                .collect();
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.01 - 0.3).collect();
            let run = |level: Option<Simd>| {
                let mut out = vec![0f32; n];
                for (row, dst) in out.chunks_exact_mut(w * c).enumerate() {
                    let g = Geometry::new(&src, (h, w, c), &weight, &bias, k, row, dst.len());
                    match level {
                        None => plain_row(&g, &src, &weight, &bias, dst),
                        Some(l) => with_level(l, || {
                            depthwise_row(&src, (h, w, c), &weight, &bias, k, row, dst)
                        }),
                    }
                }
                out
            };
            let plain = run(None);
            let mut simd = Vec::new();
            for level in [Simd::Avx512, Simd::Avx2] {
                if level <= Simd::detected() {
                    let got = run(Some(level));
                    let worst = got
                        .iter()
                        .zip(&plain)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(worst <= 1e-5, "{level} b{b} {h}x{w} c{c}: {worst}");
                    simd.push(got);
                }
            }
            if simd.len() == 2 {
                assert_eq!(simd[0], simd[1], "AVX-512 and AVX2 differ");
            }
        }
    }
}
