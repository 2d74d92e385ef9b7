//! `jdcolor.c`'s colour conversion: YCbCr -> RGB (`ycc_rgb_convert`, with its tables), YCCK
//! -> CMYK (`ycck_cmyk_convert`), and the plain copies for gray, stored RGB and CMYK. The
//! AVX2 YCbCr -> RGB kernel of libjpeg-turbo is bit-exact with these tables.

use std::sync::OnceLock;

/// `SCALEBITS` of `jdcolor.c`.
const SCALEBITS: u32 = 16;
/// `ONE_HALF` of `jdcolor.c`.
const ONE_HALF: i32 = 1 << (SCALEBITS - 1);

/// libjpeg's `FIX(x)` at 16 fractional bits.
const fn fix(x: f64) -> i32 {
    (x * (1u32 << SCALEBITS) as f64 + 0.5) as i32
}

/// `FIX(1.40200)`.
pub(super) const FIX_1_40200: i32 = fix(1.40200);
/// `FIX(1.77200)`.
pub(super) const FIX_1_77200: i32 = fix(1.77200);
/// `FIX(0.71414)`.
pub(super) const FIX_0_71414: i32 = fix(0.71414);
/// `FIX(0.34414)`.
pub(super) const FIX_0_34414: i32 = fix(0.34414);

/// `build_ycc_rgb_table`'s four tables, indexed by the sample value.
pub(super) struct YccTables {
    /// `Cr_r_tab`: nearest integer to `1.402 * (cr - 128)`.
    pub cr_r: [i32; 256],
    /// `Cb_b_tab`: nearest integer to `1.772 * (cb - 128)`.
    pub cb_b: [i32; 256],
    /// `Cr_g_tab`: `-FIX(0.71414) * (cr - 128)`.
    pub cr_g: [i32; 256],
    /// `Cb_g_tab`: `-FIX(0.34414) * (cb - 128) + ONE_HALF`.
    pub cb_g: [i32; 256],
}

/// The tables, built once.
pub(super) fn tables() -> &'static YccTables {
    static T: OnceLock<YccTables> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = YccTables {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i32 - 128;
            t.cr_r[i] = (FIX_1_40200 * x + ONE_HALF) >> SCALEBITS;
            t.cb_b[i] = (FIX_1_77200 * x + ONE_HALF) >> SCALEBITS;
            t.cr_g[i] = -FIX_0_71414 * x;
            t.cb_g[i] = -FIX_0_34414 * x + ONE_HALF;
        }
        t
    })
}

/// Clamps to a sample (`range_limit`; the values stay within -256..512).
#[inline(always)]
fn clamp(x: i32) -> u8 {
    x.clamp(0, 255) as u8
}

/// One row of YCbCr to interleaved RGB (`ycc_rgb_convert`), `out.len() == 3 * y.len()`.
pub(super) fn ycc_to_rgb_row(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    let t = tables();
    for (((o, &y), &cb), &cr) in out.chunks_exact_mut(3).zip(y).zip(cb).zip(cr) {
        let y = y as i32;
        let (cb, cr) = (cb as usize, cr as usize);
        o[0] = clamp(y + t.cr_r[cr]);
        o[1] = clamp(y + ((t.cb_g[cb] + t.cr_g[cr]) >> SCALEBITS));
        o[2] = clamp(y + t.cb_b[cb]);
    }
}

/// One row of YCCK to CMYK (`ycck_cmyk_convert`) followed by PIL's "CMYK;I" inversion of
/// every sample: `out.len() == 4 * y.len()`.
pub(super) fn ycck_to_cmyk_inverted_row(y: &[u8], cb: &[u8], cr: &[u8], k: &[u8], out: &mut [u8]) {
    let t = tables();
    for ((((o, &y), &cb), &cr), &k) in out.chunks_exact_mut(4).zip(y).zip(cb).zip(cr).zip(k) {
        let y = y as i32;
        let (cb, cr) = (cb as usize, cr as usize);
        // libjpeg writes 255 - clamp(...); PIL inverts it back.
        o[0] = clamp(y + t.cr_r[cr]);
        o[1] = clamp(y + ((t.cb_g[cb] + t.cr_g[cr]) >> SCALEBITS));
        o[2] = clamp(y + t.cb_b[cb]);
        o[3] = 255 - k;
    }
}

/// Interleaves `planes.len()` rows of samples into `out` (`null_convert` / `rgb_rgb_convert`),
/// inverting every sample when `invert` (PIL's "CMYK;I").
pub(super) fn interleave_row(planes: &[&[u8]], out: &mut [u8], invert: bool) {
    let n = planes.len();
    let x = if invert { 255u8 } else { 0 };
    if n == 1 {
        for (o, &s) in out.iter_mut().zip(planes[0]) {
            *o = s ^ x;
        }
        return;
    }
    for (c, p) in planes.iter().enumerate() {
        for (o, &s) in out[c..].iter_mut().step_by(n).zip(p.iter()) {
            *o = s ^ x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_match_libjpeg_values() {
        // Values printed by libjpeg's build_ycc_rgb_table (jdcolor.c) for i = 0, 1, 255.
        let t = tables();
        assert_eq!(
            (FIX_1_40200, FIX_1_77200, FIX_0_71414, FIX_0_34414),
            (91881, 116130, 46802, 22554)
        );
        assert_eq!((t.cr_r[0], t.cr_r[255]), (-179, 178));
        assert_eq!((t.cb_b[0], t.cb_b[255]), (-227, 225));
        assert_eq!(t.cb_g[128], ONE_HALF);
    }
}
