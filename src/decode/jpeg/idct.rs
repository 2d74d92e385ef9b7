//! The integer IDCT (`JDCT_ISLOW`, dequantization included) with the arithmetic of
//! libjpeg-turbo's `jsimd_idct_islow_avx2`, which is what PIL runs on an AVX2 machine, and
//! libjpeg-turbo's block smoothing for progressive files (`jdcoefct.c`,
//! `decompress_smooth_data`).
//!
//! The AVX2 kernel is `jidctint.c`'s algorithm with 16-bit lanes where the C code has 32-bit
//! variables: the dequantization is a wrapping 16-bit multiply, the even/odd input sums of each
//! pass are wrapping 16-bit adds, the first pass's results are saturated to 16 bits, and the
//! output is saturated to `-128..=127` before the `+128` (where the C code wraps through its
//! `range_limit` table). The two agree on ordinary photos and differ on extreme coefficients
//! and quantization tables; [`idct_block`] reproduces the AVX2 results exactly.

/// `FIX(0.298631336)` at 13 fractional bits.
const F_0_298: i32 = 2446;
/// `FIX(0.390180644)`.
const F_0_390: i32 = 3196;
/// `FIX(0.541196100)`.
const F_0_541: i32 = 4433;
/// `FIX(0.765366865)`.
const F_0_765: i32 = 6270;
/// `FIX(0.899976223)`.
const F_0_899: i32 = 7373;
/// `FIX(1.175875602)`.
const F_1_175: i32 = 9633;
/// `FIX(1.501321110)`.
const F_1_501: i32 = 12299;
/// `FIX(1.847759065)`.
const F_1_847: i32 = 15137;
/// `FIX(1.961570560)`.
const F_1_961: i32 = 16069;
/// `FIX(2.053119869)`.
const F_2_053: i32 = 16819;
/// `FIX(2.562915447)`.
const F_2_562: i32 = 20995;
/// `FIX(3.072711026)`.
const F_3_072: i32 = 25172;

/// The constants of the kernel's `vpmaddwd` pairs, in the order [`idct_1d`] uses them.
pub(super) mod k {
    use super::*;
    /// `tmp3 = in2 * K_2A + in6 * K_6A`.
    pub const K_2A: i32 = F_0_541 + F_0_765;
    /// See [`K_2A`].
    pub const K_6A: i32 = F_0_541;
    /// `tmp2 = in2 * K_2B + in6 * K_6B`.
    pub const K_2B: i32 = F_0_541;
    /// See [`K_2B`].
    pub const K_6B: i32 = F_0_541 - F_1_847;
    /// `z3' = z3 * K_Z3A + z4 * K_Z4A`.
    pub const K_Z3A: i32 = F_1_175 - F_1_961;
    /// See [`K_Z3A`].
    pub const K_Z4A: i32 = F_1_175;
    /// `z4' = z3 * K_Z3B + z4 * K_Z4B`.
    pub const K_Z3B: i32 = F_1_175;
    /// See [`K_Z3B`].
    pub const K_Z4B: i32 = F_1_175 - F_0_390;
    /// `tmp0 = in7 * K_T0_7 + in1 * K_T0_1 + z3'`.
    pub const K_T0_7: i32 = F_0_298 - F_0_899;
    /// See [`K_T0_7`].
    pub const K_T0_1: i32 = -F_0_899;
    /// `tmp1 = in5 * K_T1_5 + in3 * K_T1_3 + z4'`.
    pub const K_T1_5: i32 = F_2_053 - F_2_562;
    /// See [`K_T1_5`].
    pub const K_T1_3: i32 = -F_2_562;
    /// `tmp3 = in7 * K_T3_7 + in1 * K_T3_1 + z4'`.
    pub const K_T3_7: i32 = -F_0_899;
    /// See [`K_T3_7`].
    pub const K_T3_1: i32 = F_1_501 - F_0_899;
    /// `tmp2 = in5 * K_T2_5 + in3 * K_T2_3 + z3'`.
    pub const K_T2_5: i32 = -F_2_562;
    /// See [`K_T2_5`].
    pub const K_T2_3: i32 = F_3_072 - F_2_562;
}

/// Pass 1 descale: `CONST_BITS - PASS1_BITS`.
const DESCALE_P1: u32 = 11;
/// Pass 2 descale: `CONST_BITS + PASS1_BITS + 3`.
const DESCALE_P2: u32 = 18;

/// The dequantization table as the kernel holds it: libjpeg's `ISLOW_MULT_TYPE` (16 bits) copy
/// of the quantization table, natural order.
pub(super) fn mult_table(quant: &[u16; 64]) -> [i16; 64] {
    let mut t = [0i16; 64];
    for (d, &q) in t.iter_mut().zip(quant) {
        *d = q as i16;
    }
    t
}

/// One 1-D pass over eight 16-bit inputs, as the AVX2 `DODCT` macro computes it: the results
/// after `(x + round) >> shift` in 32 bits, before the 16-bit saturation.
#[inline(always)]
fn idct_1d(i: [i16; 8], shift: u32) -> [i32; 8] {
    use k::*;
    let round = 1i32 << (shift - 1);
    let w = |x: i16| x as i32;
    // Even part.
    let tmp3 = w(i[2]) * K_2A + w(i[6]) * K_6A;
    let tmp2 = w(i[2]) * K_2B + w(i[6]) * K_6B;
    let tmp0 = (i[0].wrapping_add(i[4]) as i32) << 13;
    let tmp1 = (i[0].wrapping_sub(i[4]) as i32) << 13;
    let tmp10 = tmp0.wrapping_add(tmp3);
    let tmp13 = tmp0.wrapping_sub(tmp3);
    let tmp11 = tmp1.wrapping_add(tmp2);
    let tmp12 = tmp1.wrapping_sub(tmp2);
    // Odd part.
    let z3 = w(i[7].wrapping_add(i[3]));
    let z4 = w(i[5].wrapping_add(i[1]));
    let z3p = z3 * K_Z3A + z4 * K_Z4A;
    let z4p = z3 * K_Z3B + z4 * K_Z4B;
    let t0 = (w(i[7]) * K_T0_7 + w(i[1]) * K_T0_1).wrapping_add(z3p);
    let t1 = (w(i[5]) * K_T1_5 + w(i[3]) * K_T1_3).wrapping_add(z4p);
    let t3 = (w(i[7]) * K_T3_7 + w(i[1]) * K_T3_1).wrapping_add(z4p);
    let t2 = (w(i[5]) * K_T2_5 + w(i[3]) * K_T2_3).wrapping_add(z3p);
    let d = |x: i32| x.wrapping_add(round) >> shift;
    [
        d(tmp10.wrapping_add(t3)),
        d(tmp11.wrapping_add(t2)),
        d(tmp12.wrapping_add(t1)),
        d(tmp13.wrapping_add(t0)),
        d(tmp13.wrapping_sub(t0)),
        d(tmp12.wrapping_sub(t1)),
        d(tmp11.wrapping_sub(t2)),
        d(tmp10.wrapping_sub(t3)),
    ]
}

/// Saturates to 16 bits (`vpackssdw`).
#[inline(always)]
fn sat16(x: i32) -> i16 {
    x.clamp(i16::MIN as i32, i16::MAX as i32) as i16
}

/// Dequantizes and inverse-transforms one block (natural order) into 8 rows of 8 samples at
/// `out[r * stride..][..8]`, exactly as `jsimd_idct_islow_avx2` does.
pub(super) fn idct_block(coef: &[i16; 64], mult: &[i16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i16; 64];
    // Pass 1: columns. The kernel skips the transform when rows 1..7 are all zero (tested on
    // the quantized coefficients) and then shifts the dequantized DC row in 16 bits.
    if coef[8..].iter().all(|&c| c == 0) {
        for c in 0..8 {
            let v = coef[c].wrapping_mul(mult[c]).wrapping_shl(2);
            for r in 0..8 {
                ws[r * 8 + c] = v;
            }
        }
    } else {
        for c in 0..8 {
            let mut i = [0i16; 8];
            for (r, x) in i.iter_mut().enumerate() {
                *x = coef[r * 8 + c].wrapping_mul(mult[r * 8 + c]);
            }
            let o = idct_1d(i, DESCALE_P1);
            for r in 0..8 {
                ws[r * 8 + c] = sat16(o[r]);
            }
        }
    }
    // Pass 2: rows, saturated to -128..=127 and offset by 128.
    for r in 0..8 {
        let mut i = [0i16; 8];
        i.copy_from_slice(&ws[r * 8..r * 8 + 8]);
        let o = idct_1d(i, DESCALE_P2);
        let row = &mut out[r * stride..r * stride + 8];
        for (d, &v) in row.iter_mut().zip(&o) {
            *d = (v.clamp(-128, 127) + 128) as u8;
        }
    }
}

/// The block smoothing decision for one frame (`jdcoefct.c`, `smoothing_ok`), from the final
/// `coef_bits` (PIL reads progressive files whole before output).
///
/// `quants` and `coef_bits` are each component's latched table and `coef_bits` (zigzag index).
pub(super) fn smoothing_ok(quants: &[&[u16; 64]], coef_bits: &[&[i32; 64]]) -> bool {
    let mut useful = false;
    for (q, cb) in quants.iter().zip(coef_bits) {
        if [0usize, 1, 8, 16, 9, 2, 3, 10, 17, 24]
            .iter()
            .any(|&p| q[p] == 0)
        {
            return false;
        }
        if cb[0] < 0 {
            return false;
        }
        if cb[1..10].iter().any(|&b| b != 0) {
            useful = true;
        }
    }
    useful
}

/// The smoothed block estimate for one coefficient (`jdcoefct.c`): the rounded quotient of
/// `num` by `q << 8`, limited to `(1 << al) - 1` in magnitude when `al > 0`.
#[inline]
fn predict(num: i64, q: i64, al: i32) -> i16 {
    // libjpeg computes the quotient in `JLONG` and keeps it in an `int`.
    let mut pred = if num >= 0 {
        ((q << 7) + num) / (q << 8)
    } else {
        ((q << 7) - num) / (q << 8)
    } as i32;
    if al > 0 && al < 31 && pred >= (1i32 << al) {
        pred = (1i32 << al) - 1;
    }
    if num < 0 {
        pred = pred.wrapping_neg();
    }
    pred as i16
}

/// The 5x5 neighbourhood of DC values around a block, `dc[row][col]` with row/col 0..5
/// (libjpeg's `DC01`..`DC25`, row-major).
pub(super) type DcWindow = [[i32; 5]; 5];

/// Applies libjpeg-turbo's block smoothing (the 2.1+ 5x5 version) to `ws`, a copy of one
/// block, given the DC window around it, the component's latched quantization table (natural
/// order) and its `coef_bits` (zigzag index).
pub(super) fn smooth_block(ws: &mut [i16; 64], dc: &DcWindow, quant: &[u16; 64], cb: &[i32; 64]) {
    let d = |n: usize| dc[(n - 1) / 5][(n - 1) % 5] as i64;
    let change_dc = cb[1..10].iter().all(|&b| b == -1);
    let q = |p: usize| quant[p] as i64;
    let q00 = q(0);
    // AC01
    let al = cb[1];
    if al != 0 && ws[1] == 0 {
        let s = if change_dc {
            -d(1) - d(2) + d(4) + d(5) - 3 * d(6) + 13 * d(7) - 13 * d(9) + 3 * d(10) - 3 * d(11)
                + 38 * d(12)
                - 38 * d(14)
                + 3 * d(15)
                - 3 * d(16)
                + 13 * d(17)
                - 13 * d(19)
                + 3 * d(20)
                - d(21)
                - d(22)
                + d(24)
                + d(25)
        } else {
            -7 * d(11) + 50 * d(12) - 50 * d(14) + 7 * d(15)
        };
        ws[1] = predict(q00 * s, q(1), al);
    }
    // AC10
    let al = cb[2];
    if al != 0 && ws[8] == 0 {
        let s = if change_dc {
            -d(1) - 3 * d(2) - 3 * d(3) - 3 * d(4) - d(5) - d(6) + 13 * d(7) + 38 * d(8) + 13 * d(9)
                - d(10)
                + d(16)
                - 13 * d(17)
                - 38 * d(18)
                - 13 * d(19)
                + d(20)
                + d(21)
                + 3 * d(22)
                + 3 * d(23)
                + 3 * d(24)
                + d(25)
        } else {
            -7 * d(3) + 50 * d(8) - 50 * d(18) + 7 * d(23)
        };
        ws[8] = predict(q00 * s, q(8), al);
    }
    // AC20
    let al = cb[3];
    if al != 0 && ws[16] == 0 {
        let s = if change_dc {
            d(3) + 2 * d(7) + 7 * d(8) + 2 * d(9) - 5 * d(12) - 14 * d(13) - 5 * d(14)
                + 2 * d(17)
                + 7 * d(18)
                + 2 * d(19)
                + d(23)
        } else {
            -d(3) + 13 * d(8) - 24 * d(13) + 13 * d(18) - d(23)
        };
        ws[16] = predict(q00 * s, q(16), al);
    }
    // AC11
    let al = cb[4];
    if al != 0 && ws[9] == 0 {
        let s = if change_dc {
            -d(1) + d(5) + 9 * d(7) - 9 * d(9) - 9 * d(17) + 9 * d(19) + d(21) - d(25)
        } else {
            d(10) + d(16) - 10 * d(17) + 10 * d(19) - d(2) - d(20) + d(22) - d(24) + d(4) - d(6)
                + 10 * d(7)
                - 10 * d(9)
        };
        ws[9] = predict(q00 * s, q(9), al);
    }
    // AC02
    let al = cb[5];
    if al != 0 && ws[2] == 0 {
        let s = if change_dc {
            2 * d(7) - 5 * d(8) + 2 * d(9) + d(11) + 7 * d(12) - 14 * d(13)
                + 7 * d(14)
                + d(15)
                + 2 * d(17)
                - 5 * d(18)
                + 2 * d(19)
        } else {
            -d(11) + 13 * d(12) - 24 * d(13) + 13 * d(14) - d(15)
        };
        ws[2] = predict(q00 * s, q(2), al);
    }
    if change_dc {
        // AC03
        let al = cb[6];
        if al != 0 && ws[3] == 0 {
            let s = d(7) - d(9) + 2 * d(12) - 2 * d(14) + d(17) - d(19);
            ws[3] = predict(q00 * s, q(3), al);
        }
        // AC12
        let al = cb[7];
        if al != 0 && ws[10] == 0 {
            let s = d(7) - 3 * d(8) + d(9) - d(17) + 3 * d(18) - d(19);
            ws[10] = predict(q00 * s, q(10), al);
        }
        // AC21
        let al = cb[8];
        if al != 0 && ws[17] == 0 {
            let s = d(7) - d(9) - 3 * d(12) + 3 * d(14) + d(17) - d(19);
            ws[17] = predict(q00 * s, q(17), al);
        }
        // AC30
        let al = cb[9];
        if al != 0 && ws[24] == 0 {
            let s = d(7) + 2 * d(8) + d(9) - d(17) - 2 * d(18) - d(19);
            ws[24] = predict(q00 * s, q(24), al);
        }
        // DC: a Gaussian-like average of the 5x5 window (no limit: `al` is not used).
        let s = -2 * d(1) - 6 * d(2) - 8 * d(3) - 6 * d(4) - 2 * d(5) - 6 * d(6)
            + 6 * d(7)
            + 42 * d(8)
            + 6 * d(9)
            - 6 * d(10)
            - 8 * d(11)
            + 42 * d(12)
            + 152 * d(13)
            + 42 * d(14)
            - 8 * d(15)
            - 6 * d(16)
            + 6 * d(17)
            + 42 * d(18)
            + 6 * d(19)
            - 6 * d(20)
            - 2 * d(21)
            - 6 * d(22)
            - 8 * d(23)
            - 6 * d(24)
            - 2 * d(25);
        ws[0] = predict(q00 * s, q00, 0);
    }
}
