//! The per-block and per-row kernels behind one dispatcher: AVX2 versions where the CPU has
//! AVX2 (detected once at run time), the plain versions otherwise. Each AVX2 kernel is tested
//! equal to its plain version on random and extreme inputs.

use super::{color, idct, upsample};

/// Whether the AVX2 kernels may run (checked once).
#[inline]
pub(super) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVX2: OnceLock<bool> = OnceLock::new();
        *AVX2.get_or_init(|| std::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dequantizes and inverse-transforms one block into 8 rows of `out` (see
/// [`idct::idct_block`]); `out` must hold `7 * stride + 8` samples.
#[inline]
pub(super) fn idct_block(coef: &[i16; 64], mult: &[i16; 64], out: &mut [u8], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && out.len() >= 7 * stride + 8 {
        // SAFETY: AVX2 is present (checked above) and `out` holds the 8 rows written.
        unsafe { avx2::idct_block(coef, mult, out, stride) };
        return;
    }
    idct::idct_block(coef, mult, out, stride)
}

/// One row of YCbCr to interleaved RGB (see [`color::ycc_to_rgb_row`]).
#[inline]
pub(super) fn ycc_to_rgb_row(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        let n = y.len().min(cb.len()).min(cr.len()).min(out.len() / 3);
        let done = n / 16 * 16;
        // SAFETY: AVX2 is present; every slice holds `done` samples (`out` 3 * `done`).
        unsafe { avx2::ycc_to_rgb(&y[..done], &cb[..done], &cr[..done], &mut out[..3 * done]) };
        color::ycc_to_rgb_row(
            &y[done..n],
            &cb[done..n],
            &cr[done..n],
            &mut out[3 * done..3 * n],
        );
        return;
    }
    color::ycc_to_rgb_row(y, cb, cr, out)
}

/// The horizontal triangle filter (see [`upsample::fancy_h2_plain`]).
#[inline]
pub(super) fn fancy_h2(buf: &[u16], out: &mut [u8], even_bias: u16, odd_bias: u16, shift: u32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && buf.len() >= 2 {
        // Whole groups of 8 inputs (16 outputs) whose neighbours are in `buf`.
        let n = buf.len() - 2;
        let groups = (n / 8).min(out.len() / 16);
        // SAFETY: AVX2 is present; the kernel reads `buf[..8 * groups + 2]` and writes
        // `out[..16 * groups]`, both in bounds.
        unsafe { avx2::fancy_h2(buf, &mut out[..16 * groups], even_bias, odd_bias, shift) };
        let done = 16 * groups;
        // The rest: outputs `done..` use inputs from `done / 2`.
        let rest = &mut out[done..];
        upsample::fancy_h2_plain(&buf[done / 2..], rest, even_bias, odd_bias, shift);
        return;
    }
    upsample::fancy_h2_plain(buf, out, even_bias, odd_bias, shift)
}

/// The AVX2 kernels.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::idct::k::*;
    use std::arch::x86_64::*;

    /// The `vpmaddwd` constant `a * first + b * second`.
    #[inline(always)]
    unsafe fn kk(a: i32, b: i32) -> __m256i {
        _mm256_set1_epi32(((b as u32) << 16 | (a as u32 & 0xffff)) as i32)
    }

    /// A `vpmaddwd` constant with different pairs in the low and high 128-bit lanes.
    #[inline(always)]
    unsafe fn kk2(lo: (i32, i32), hi: (i32, i32)) -> __m256i {
        let w = |a: i32, b: i32| ((b as u32) << 16 | (a as u32 & 0xffff)) as i32;
        let (l, h) = (w(lo.0, lo.1), w(hi.0, hi.1));
        _mm256_setr_epi32(l, l, l, l, h, h, h, h)
    }

    /// The kernel's `DODCT` macro: one 1-D pass on the rows (or columns) held as
    /// `in0_4`, `in3_1`, `in2_6`, `in7_5` (two 8-lane rows a register, 16 bits a lane).
    /// Returns `data0_1`, `data3_2`, `data4_5`, `data7_6`, saturated to 16 bits.
    #[inline(always)]
    unsafe fn dodct<const SHIFT: i32>(
        in04: __m256i,
        in31: __m256i,
        in26: __m256i,
        in75: __m256i,
    ) -> [__m256i; 4] {
        // Even part.
        let in62 = _mm256_permute2x128_si256::<0x01>(in26, in26);
        let k_even = kk2((K_2A, K_6A), (K_6B, K_2B));
        let tmp32l = _mm256_madd_epi16(_mm256_unpacklo_epi16(in26, in62), k_even);
        let tmp32h = _mm256_madd_epi16(_mm256_unpackhi_epi16(in26, in62), k_even);
        let in40 = _mm256_permute2x128_si256::<0x01>(in04, in04);
        let signed = _mm256_sign_epi16(
            in04,
            _mm256_setr_epi16(1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1),
        );
        let tmp01 = _mm256_add_epi16(in40, signed);
        let zero = _mm256_setzero_si256();
        let tmp01l = _mm256_srai_epi32::<3>(_mm256_unpacklo_epi16(zero, tmp01));
        let tmp01h = _mm256_srai_epi32::<3>(_mm256_unpackhi_epi16(zero, tmp01));
        let tmp1312l = _mm256_sub_epi32(tmp01l, tmp32l);
        let tmp1011l = _mm256_add_epi32(tmp01l, tmp32l);
        let tmp1312h = _mm256_sub_epi32(tmp01h, tmp32h);
        let tmp1011h = _mm256_add_epi32(tmp01h, tmp32h);
        // Odd part.
        let z34 = _mm256_add_epi16(in75, in31);
        let z43 = _mm256_permute2x128_si256::<0x01>(z34, z34);
        let k_z = kk2((K_Z3A, K_Z4A), (K_Z4B, K_Z3B));
        let z34l = _mm256_madd_epi16(_mm256_unpacklo_epi16(z34, z43), k_z);
        let z34h = _mm256_madd_epi16(_mm256_unpackhi_epi16(z34, z43), k_z);
        let in13 = _mm256_permute2x128_si256::<0x01>(in31, in31);
        let p_l = _mm256_unpacklo_epi16(in75, in13);
        let p_h = _mm256_unpackhi_epi16(in75, in13);
        let k_t01 = kk2((K_T0_7, K_T0_1), (K_T1_5, K_T1_3));
        let k_t32 = kk2((K_T3_7, K_T3_1), (K_T2_5, K_T2_3));
        let t01l = _mm256_add_epi32(_mm256_madd_epi16(p_l, k_t01), z34l);
        let t01h = _mm256_add_epi32(_mm256_madd_epi16(p_h, k_t01), z34h);
        let z43l = _mm256_permute2x128_si256::<0x01>(z34l, z34l);
        let z43h = _mm256_permute2x128_si256::<0x01>(z34h, z34h);
        let t32l = _mm256_add_epi32(_mm256_madd_epi16(p_l, k_t32), z43l);
        let t32h = _mm256_add_epi32(_mm256_madd_epi16(p_h, k_t32), z43h);
        // Final output stage.
        let round = _mm256_set1_epi32(1 << (SHIFT - 1));
        let d = |l: __m256i, h: __m256i| {
            _mm256_packs_epi32(
                _mm256_srai_epi32::<SHIFT>(_mm256_add_epi32(l, round)),
                _mm256_srai_epi32::<SHIFT>(_mm256_add_epi32(h, round)),
            )
        };
        [
            d(
                _mm256_add_epi32(tmp1011l, t32l),
                _mm256_add_epi32(tmp1011h, t32h),
            ),
            d(
                _mm256_add_epi32(tmp1312l, t01l),
                _mm256_add_epi32(tmp1312h, t01h),
            ),
            d(
                _mm256_sub_epi32(tmp1312l, t01l),
                _mm256_sub_epi32(tmp1312h, t01h),
            ),
            d(
                _mm256_sub_epi32(tmp1011l, t32l),
                _mm256_sub_epi32(tmp1011h, t32h),
            ),
        ]
    }

    /// The kernel's `DOTRANSPOSE`: `data0_1`, `data3_2`, `data4_5`, `data7_6` (rows) to
    /// `data0_4`, `data1_5`, `data2_6`, `data3_7` (columns).
    #[inline(always)]
    unsafe fn dotranspose(r: [__m256i; 4]) -> [__m256i; 4] {
        let a = _mm256_permute4x64_epi64::<0xD8>(r[0]);
        let b = _mm256_permute4x64_epi64::<0x72>(r[1]);
        let c = _mm256_permute4x64_epi64::<0xD8>(r[2]);
        let d = _mm256_permute4x64_epi64::<0x72>(r[3]);
        let p1 = _mm256_unpacklo_epi16(a, b);
        let p2 = _mm256_unpackhi_epi16(a, b);
        let p3 = _mm256_unpacklo_epi16(c, d);
        let p4 = _mm256_unpackhi_epi16(c, d);
        let q5 = _mm256_unpacklo_epi16(p1, p2);
        let q6 = _mm256_unpacklo_epi16(p3, p4);
        let q7 = _mm256_unpackhi_epi16(p1, p2);
        let q8 = _mm256_unpackhi_epi16(p3, p4);
        [
            _mm256_unpacklo_epi64(q5, q6),
            _mm256_unpackhi_epi64(q5, q6),
            _mm256_unpacklo_epi64(q7, q8),
            _mm256_unpackhi_epi64(q7, q8),
        ]
    }

    /// `jsimd_idct_islow_avx2` itself, step for step: [`super::idct::idct_block`] in vectors.
    ///
    /// # Safety
    /// AVX2 must be present and `out.len() >= 7 * stride + 8`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn idct_block(
        coef: &[i16; 64],
        mult: &[i16; 64],
        out: &mut [u8],
        stride: usize,
    ) {
        let c = coef.as_ptr() as *const __m256i;
        let m = mult.as_ptr() as *const __m256i;
        let r01 = _mm256_loadu_si256(c);
        let r23 = _mm256_loadu_si256(c.add(1));
        let r45 = _mm256_loadu_si256(c.add(2));
        let r67 = _mm256_loadu_si256(c.add(3));
        // Rows 1..7 all zero: the dequantized DC row shifted in 16 bits, every row alike.
        let any = _mm256_or_si256(
            _mm256_or_si256(_mm256_permute2x128_si256::<0x11>(r01, r01), r23),
            _mm256_or_si256(r45, r67),
        );
        let (c04, c15, c26, c37) = if _mm256_testz_si256(any, any) != 0 {
            let dc = _mm_slli_epi16::<2>(_mm_mullo_epi16(
                _mm256_castsi256_si128(r01),
                _mm256_castsi256_si128(_mm256_loadu_si256(m)),
            ));
            let lo = _mm_unpacklo_epi16(dc, dc);
            let hi = _mm_unpackhi_epi16(dc, dc);
            let v = _mm256_set_m128i(hi, lo);
            (
                _mm256_shuffle_epi32::<0x00>(v),
                _mm256_shuffle_epi32::<0x55>(v),
                _mm256_shuffle_epi32::<0xAA>(v),
                _mm256_shuffle_epi32::<0xFF>(v),
            )
        } else {
            let r01 = _mm256_mullo_epi16(r01, _mm256_loadu_si256(m));
            let r23 = _mm256_mullo_epi16(r23, _mm256_loadu_si256(m.add(1)));
            let r45 = _mm256_mullo_epi16(r45, _mm256_loadu_si256(m.add(2)));
            let r67 = _mm256_mullo_epi16(r67, _mm256_loadu_si256(m.add(3)));
            let in04 = _mm256_permute2x128_si256::<0x20>(r01, r45);
            let in31 = _mm256_permute2x128_si256::<0x31>(r23, r01);
            let in26 = _mm256_permute2x128_si256::<0x20>(r23, r67);
            let in75 = _mm256_permute2x128_si256::<0x31>(r67, r45);
            let t = dotranspose(dodct::<11>(in04, in31, in26, in75));
            (t[0], t[1], t[2], t[3])
        };
        // Pass 2: rows.
        let in75 = _mm256_permute2x128_si256::<0x31>(c37, c15);
        let in31 = _mm256_permute2x128_si256::<0x20>(c37, c15);
        let o = dotranspose(dodct::<18>(c04, in31, c26, in75));
        // o = rows 0_4, 1_5, 2_6, 3_7: saturate to bytes and centre.
        let bias = _mm256_set1_epi8(-128);
        let b0 = _mm256_xor_si256(_mm256_packs_epi16(o[0], o[1]), bias); // 0 1 | 4 5
        let b1 = _mm256_xor_si256(_mm256_packs_epi16(o[2], o[3]), bias); // 2 3 | 6 7
        let p = out.as_mut_ptr();
        let st = |row: usize, v: __m128i| _mm_storel_epi64(p.add(row * stride) as *mut __m128i, v);
        let (lo0, hi0) = (
            _mm256_castsi256_si128(b0),
            _mm256_extracti128_si256::<1>(b0),
        );
        let (lo1, hi1) = (
            _mm256_castsi256_si128(b1),
            _mm256_extracti128_si256::<1>(b1),
        );
        st(0, lo0);
        st(1, _mm_unpackhi_epi64(lo0, lo0));
        st(2, lo1);
        st(3, _mm_unpackhi_epi64(lo1, lo1));
        st(4, hi0);
        st(5, _mm_unpackhi_epi64(hi0, hi0));
        st(6, hi1);
        st(7, _mm_unpackhi_epi64(hi1, hi1));
    }

    /// [`super::upsample::fancy_h2_plain`] on `out.len() / 16` groups of 8 inputs.
    ///
    /// # Safety
    /// AVX2 must be present, `out.len()` a multiple of 16 and `buf.len() >= out.len() / 2 + 2`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fancy_h2(buf: &[u16], out: &mut [u8], eb: u16, ob: u16, shift: u32) {
        let eb = _mm_set1_epi16(eb as i16);
        let ob = _mm_set1_epi16(ob as i16);
        let sh = _mm_cvtsi32_si128(shift as i32);
        let p = buf.as_ptr();
        for g in 0..out.len() / 16 {
            let l = _mm_loadu_si128(p.add(8 * g) as *const __m128i);
            let c = _mm_loadu_si128(p.add(8 * g + 1) as *const __m128i);
            let r = _mm_loadu_si128(p.add(8 * g + 2) as *const __m128i);
            let c3 = _mm_add_epi16(_mm_add_epi16(c, c), c);
            let e = _mm_srl_epi16(_mm_add_epi16(_mm_add_epi16(c3, l), eb), sh);
            let o = _mm_srl_epi16(_mm_add_epi16(_mm_add_epi16(c3, r), ob), sh);
            // Each lane is below 256: interleave the low bytes.
            let v = _mm_or_si128(e, _mm_slli_epi16::<8>(o));
            _mm_storeu_si128(out.as_mut_ptr().add(16 * g) as *mut __m128i, v);
        }
    }

    /// YCbCr to interleaved RGB for a multiple of 16 pixels, exactly `color::ycc_to_rgb_row`
    /// in 16-bit lanes: with `x = c - 128`, `FIX(1.402) x = 65536 x + 26345 x`,
    /// `FIX(1.772) x = 131072 x - 14942 x` and `-FIX(0.34414) xb - FIX(0.71414) xr =
    /// -22554 xb - 23401 xr - 23401 xr`, so every table value is an integer part plus the high
    /// half of a `vpmaddwd` sum (the `ONE_HALF` rounding enters as `2 * 16384`).
    ///
    /// # Safety
    /// AVX2 must be present; `y`, `cb`, `cr` hold `n` samples (a multiple of 16), `out` 3n.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
        let c128 = _mm256_set1_epi16(128);
        let two = _mm256_set1_epi16(2);
        let k_r = kk(26345, 16384);
        let k_b = kk(-14942, 16384);
        let k_g1 = kk(-22554, -23401);
        let k_g2 = kk(-23401, 16384);
        // pshufb masks interleaving 16 R, G, B bytes into 48 (three 16-byte stores).
        let mr0 = _mm_setr_epi8(0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1, -1, 5);
        let mg0 = _mm_setr_epi8(-1, 0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1, -1);
        let mb0 = _mm_setr_epi8(-1, -1, 0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1);
        let mr1 = _mm_setr_epi8(-1, -1, 6, -1, -1, 7, -1, -1, 8, -1, -1, 9, -1, -1, 10, -1);
        let mg1 = _mm_setr_epi8(5, -1, -1, 6, -1, -1, 7, -1, -1, 8, -1, -1, 9, -1, -1, 10);
        let mb1 = _mm_setr_epi8(-1, 5, -1, -1, 6, -1, -1, 7, -1, -1, 8, -1, -1, 9, -1, -1);
        let mr2 = _mm_setr_epi8(
            -1, 11, -1, -1, 12, -1, -1, 13, -1, -1, 14, -1, -1, 15, -1, -1,
        );
        let mg2 = _mm_setr_epi8(
            -1, -1, 11, -1, -1, 12, -1, -1, 13, -1, -1, 14, -1, -1, 15, -1,
        );
        let mb2 = _mm_setr_epi8(
            10, -1, -1, 11, -1, -1, 12, -1, -1, 13, -1, -1, 14, -1, -1, 15,
        );
        // The high halves of the 32-bit sums `a . k` over 16 pixels, back in pixel order.
        let hi = |lo: __m256i, hi: __m256i| {
            _mm256_packs_epi32(_mm256_srai_epi32::<16>(lo), _mm256_srai_epi32::<16>(hi))
        };
        // 16 i16 lanes to 16 clamped bytes.
        let to8 = |v: __m256i| {
            _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0x08>(_mm256_packus_epi16(v, v)))
        };
        let n = y.len();
        let mut i = 0;
        while i + 16 <= n {
            let ld = |s: &[u8]| {
                _mm256_cvtepu8_epi16(_mm_loadu_si128(s.as_ptr().add(i) as *const __m128i))
            };
            let yv = ld(y);
            let xb = _mm256_sub_epi16(ld(cb), c128);
            let xr = _mm256_sub_epi16(ld(cr), c128);
            let (r2l, r2h) = (
                _mm256_unpacklo_epi16(xr, two),
                _mm256_unpackhi_epi16(xr, two),
            );
            let (b2l, b2h) = (
                _mm256_unpacklo_epi16(xb, two),
                _mm256_unpackhi_epi16(xb, two),
            );
            let (brl, brh) = (_mm256_unpacklo_epi16(xb, xr), _mm256_unpackhi_epi16(xb, xr));
            let rr = hi(_mm256_madd_epi16(r2l, k_r), _mm256_madd_epi16(r2h, k_r));
            let bb = hi(_mm256_madd_epi16(b2l, k_b), _mm256_madd_epi16(b2h, k_b));
            let gg = hi(
                _mm256_add_epi32(_mm256_madd_epi16(brl, k_g1), _mm256_madd_epi16(r2l, k_g2)),
                _mm256_add_epi32(_mm256_madd_epi16(brh, k_g1), _mm256_madd_epi16(r2h, k_g2)),
            );
            let r8 = to8(_mm256_add_epi16(_mm256_add_epi16(yv, xr), rr));
            let g8 = to8(_mm256_add_epi16(yv, gg));
            let b8 = to8(_mm256_add_epi16(
                _mm256_add_epi16(yv, _mm256_add_epi16(xb, xb)),
                bb,
            ));
            let o = out.as_mut_ptr().add(3 * i) as *mut __m128i;
            let s0 = _mm_or_si128(
                _mm_or_si128(_mm_shuffle_epi8(r8, mr0), _mm_shuffle_epi8(g8, mg0)),
                _mm_shuffle_epi8(b8, mb0),
            );
            let s1 = _mm_or_si128(
                _mm_or_si128(_mm_shuffle_epi8(r8, mr1), _mm_shuffle_epi8(g8, mg1)),
                _mm_shuffle_epi8(b8, mb1),
            );
            let s2 = _mm_or_si128(
                _mm_or_si128(_mm_shuffle_epi8(r8, mr2), _mm_shuffle_epi8(g8, mg2)),
                _mm_shuffle_epi8(b8, mb2),
            );
            _mm_storeu_si128(o, s0);
            _mm_storeu_si128(o.add(1), s1);
            _mm_storeu_si128(o.add(2), s2);
            i += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) for the tests' inputs.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn idct_avx2_equals_plain_on_random_and_extreme_blocks() {
        if !has_avx2() {
            return;
        }
        let mut s = 0x1234_5678_9abc_def0u64;
        for case in 0..20000 {
            let mut coef = [0i16; 64];
            let mut mult = [0i16; 64];
            for k in 0..64 {
                let r = rng(&mut s);
                coef[k] = match case % 4 {
                    0 => (r % 64) as i16 - 32,
                    1 => r as i16,
                    2 if k < 8 || r.is_multiple_of(5) => (r >> 8) as i16 % 2048,
                    3 if k == 0 => r as i16,
                    _ => 0,
                };
                mult[k] = match case % 3 {
                    0 => (r >> 20) as i16 % 100 + 1,
                    1 => (r >> 24) as i16,
                    _ => 255,
                };
            }
            let mut a = [0u8; 8 * 11];
            let mut b = [0u8; 8 * 11];
            idct::idct_block(&coef, &mult, &mut a, 11);
            // SAFETY: checked above; the buffer holds 8 rows of stride 11.
            unsafe { avx2::idct_block(&coef, &mult, &mut b, 11) };
            assert_eq!(a, b, "case {case}: {coef:?} {mult:?}");
        }
    }

    #[test]
    fn fancy_avx2_equals_plain_on_random_rows() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for n in 1..70usize {
            for (eb, ob, sh, max) in [(1u16, 2u16, 2u32, 256u64), (8, 7, 4, 1021)] {
                let mut buf: Vec<u16> = (0..n + 2).map(|_| (rng(&mut s) % max) as u16).collect();
                buf[0] = buf[1];
                buf[n + 1] = buf[n];
                for w in [2 * n - 1, 2 * n] {
                    let mut a = vec![0u8; w];
                    let mut b = vec![0u8; w];
                    upsample::fancy_h2_plain(&buf, &mut a, eb, ob, sh);
                    fancy_h2(&buf, &mut b, eb, ob, sh);
                    assert_eq!(a, b, "n {n} w {w}");
                }
            }
        }
    }

    #[test]
    fn ycc_avx2_equals_plain_on_every_chroma_pair() {
        // Every (cb, cr) pair, each with several luma values, and an unaligned tail.
        let n = 65536 + 13;
        let (mut y, mut cb, mut cr) = (vec![0u8; n], vec![0u8; n], vec![0u8; n]);
        for i in 0..n {
            cb[i] = (i % 256) as u8;
            cr[i] = (i / 256 % 256) as u8;
        }
        for shift in 0..6 {
            for (i, v) in y.iter_mut().enumerate() {
                *v = [0, 255, 128, 1, 254, (i * 37 % 256) as u8][shift];
            }
            let mut a = vec![0u8; 3 * n];
            let mut b = vec![0u8; 3 * n];
            color::ycc_to_rgb_row(&y, &cb, &cr, &mut a);
            ycc_to_rgb_row(&y, &cb, &cr, &mut b);
            assert_eq!(a, b);
        }
    }
}
