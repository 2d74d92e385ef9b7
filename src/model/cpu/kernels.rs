//! Row kernels of the CPU fast path: layer norm, softmax, bias + exact GELU.
//!
//! Each kernel is plain Rust written so that LLVM vectorizes it (fixed 16-lane accumulators,
//! branch-free polynomials), compiled three times by [`simd_fn!`]: for AVX-512, for AVX2 + FMA,
//! and for the baseline target, with the best one picked at run time. The polynomials use
//! [`MulAdd`]: fused multiply-adds in the AVX builds, separate operations in the baseline one,
//! so the AVX-512 and AVX2 builds give identical bits and the baseline build differs from them
//! by rounding only (both are tested against exact references).

/// Lanes of the hand-unrolled reductions: one AVX-512 register of f32.
const LANES: usize = 16;

/// Defines a function whose body is compiled for AVX-512, AVX2 + FMA and the baseline target,
/// dispatching on run-time CPU feature detection.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$m:ident>($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(unused)]
            fn body<$m: MulAdd>($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    body::<Fused>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body::<Fused>($($arg),*)
                }
                if $crate::model::cpu::kernels::has_avx512() {
                    // SAFETY: `avx512` only enables features the running CPU reports.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::model::cpu::kernels::has_avx2() {
                    // SAFETY: `avx2` only enables features the running CPU reports.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body::<Separate>($($arg),*)
        }
    };
}

/// `a * b + c`, fused (one rounding) where the CPU has FMA, as two operations where not.
/// The kernels are generic over it because Rust never contracts `a * b + c` by itself, and a
/// fused `mul_add` without hardware FMA is a slow library call.
pub(crate) trait MulAdd {
    /// `a * b + c`.
    fn madd(a: f32, b: f32, c: f32) -> f32;
}

/// Hardware fused multiply-add (only used inside functions compiled with FMA enabled).
pub(crate) struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Separate multiply and add.
pub(crate) struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The instruction sets the CPU fast path may use, best last: a model's choice
/// ([`crate::Learner::with_simd`], `FastaiModel::with_simd`), capped by what the CPU supports.
///
/// Every level gives fastai's answers; AVX2 and AVX-512 give the same bits as each other, and
/// the baseline differs from them by rounding (its general matmul blocks by batch size, and
/// its polynomials are not fused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Simd {
    /// The baseline target only (SSE2 on x86-64), with the general matmul.
    Baseline,
    /// AVX2 and FMA, with the packed weights' kernels.
    Avx2,
    /// AVX-512 (F, VL, DQ) besides AVX2 and FMA.
    Avx512,
}

impl Simd {
    /// The best level this CPU supports.
    pub fn detected() -> Simd {
        detect()
    }

    /// The level a model gets when it is built: [`Simd::detected`], capped by the
    /// `FASTAI_INFER_SIMD` environment variable (`avx512`, `avx2` or `baseline`) as it is at
    /// that moment. Read on every load, so setting the variable affects the models loaded
    /// after.
    pub fn from_env() -> Simd {
        detect().min(env_cap())
    }

    /// This level, or the best the CPU supports if that is lower.
    pub fn supported(self) -> Simd {
        self.min(detect())
    }

    /// The level's name as `FASTAI_INFER_SIMD` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Baseline => "baseline",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }
}

impl std::fmt::Display for Simd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The cap `FASTAI_INFER_SIMD` sets now (none: AVX-512).
fn env_cap() -> Simd {
    match std::env::var("FASTAI_INFER_SIMD").as_deref() {
        Ok("baseline") => Simd::Baseline,
        Ok("avx2") => Simd::Avx2,
        _ => Simd::Avx512,
    }
}

thread_local! {
    /// The level of the forward pass this thread is running a task of ([`with_level`]), as
    /// `Simd as u8 + 1`; 0 outside one.
    static PASS_LEVEL: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with the kernels limited to `level` on this thread (the fast path sets its model's
/// level around each task).
pub(crate) fn with_level<R>(level: Simd, f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            PASS_LEVEL.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(PASS_LEVEL.with(|l| l.replace(level as u8 + 1)));
    f()
}

/// The level the kernels run at on this thread: the current forward pass's model's level
/// ([`with_level`]), else the process default, [`Simd::from_env`] read once (the transforms'
/// AVX2 loops, whose results do not depend on it, use that).
pub(crate) fn simd() -> Simd {
    match PASS_LEVEL.with(|l| l.get()) {
        1 => Simd::Baseline,
        2 => Simd::Avx2,
        3 => Simd::Avx512,
        _ => {
            static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
            *LEVEL.get_or_init(Simd::from_env)
        }
    }
}

fn detect() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            if has!("avx512f") && has!("avx512vl") && has!("avx512dq") {
                return Simd::Avx512;
            }
            return Simd::Avx2;
        }
    }
    Simd::Baseline
}

/// Whether the AVX-512 builds may run.
pub(crate) fn has_avx512() -> bool {
    simd() == Simd::Avx512
}

/// Whether the AVX2 + FMA builds may run.
pub(crate) fn has_avx2() -> bool {
    simd() >= Simd::Avx2
}

/// Runs `f` compiled with AVX2 enabled when the CPU has it (and `FASTAI_INFER_SIMD` allows
/// it), for loops whose results do not depend on the instruction set: integer arithmetic and
/// `f32` operations in a fixed order (Rust never fuses a multiply and an add by itself).
/// `f` should be `#[inline(always)]` so that its body is compiled inside the AVX2 function.
#[inline(always)]
pub(crate) fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if has_avx2() {
            // SAFETY: `avx2` only enables a feature the running CPU reports.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Sum of `x` with 16 independent accumulators (vectorizable; fixed order, so deterministic).
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    for (i, v) in tail.iter().enumerate() {
        acc[i] += v;
    }
    acc.iter().sum()
}

/// Sum of `(x - mean)^2` with 16 accumulators.
#[inline(always)]
fn lane_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    for (i, v) in tail.iter().enumerate() {
        let d = v - mean;
        acc[i] += d * d;
    }
    acc.iter().sum()
}

/// Maximum of `x` with 16 accumulators (`x` must be non-empty; NaN-free input assumed, as in
/// attention scores from finite weights).
#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    for (i, v) in tail.iter().enumerate() {
        acc[i] = if *v > acc[i] { *v } else { acc[i] };
    }
    acc.iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `exp(x)` for `x <= 88` (softmax after subtracting the row max, the GELU's tail): Cody-Waite range reduction
/// `x = n ln2 + r`, a degree-6 polynomial for `exp(r)` on `|r| <= ln2 / 2` (Cephes' `expf`
/// coefficients), and `2^n` built in the exponent bits. Within 2 ulp of `f32::exp`; inputs below
/// -87.3 give about 1e-38 instead of a subnormal or 0, which no softmax sum can notice.
#[inline(always)]
pub(crate) fn exp_neg<M: MulAdd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x < -87.3 { -87.3 } else { x };
    let n = M::madd(x, LOG2E, 0.5).floor();
    let r = M::madd(n, -LN2_LO, M::madd(n, -LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    p = M::madd(p, r, 1.398_199_9e-3);
    p = M::madd(p, r, 8.333_452e-3);
    p = M::madd(p, r, 4.166_579_6e-2);
    p = M::madd(p, r, 1.666_666_5e-1);
    p = M::madd(p, r, 0.5);
    let y = M::madd(p * r, r, r + 1.0);
    // 2^n from the exponent bits. `n + 127` is a whole number in [1, 254]; adding 2^23 puts it
    // in the low mantissa bits, where a shift moves it into the exponent. (A float-to-int cast
    // would do the same but stops LLVM from vectorizing the loop.)
    let biased = (n + 127.0 + 8_388_608.0).to_bits();
    let scale = f32::from_bits(biased << 23);
    y * scale
}

/// `gelu(v) = v Φ(v)` computed as PyTorch's vectorized CPU kernel does (`nn.GELU()`, the
/// exact-erf GELU that timm's MLP uses), so that the activations match fastai's bit for bit in
/// most cases: `h = v / 2`, `gelu = h + h · erf(v / √2)`, with PyTorch's AVX2/AVX-512 `erf`,
/// the Abramowitz-Stegun 7.1.26 approximation `1 - t (a1 + t (a2 + ...)) exp(-z²)`,
/// `t = 1 / (1 + p |z|)` (absolute error below 1.5e-7). Against PyTorch 2.15's AVX2 kernel it
/// gives the same bits for about nine values in ten and is never more than 2.4e-7 away (the
/// difference is the `exp`); see the `gelu_matches_pytorch` test.
#[inline(always)]
pub(crate) fn gelu<M: MulAdd>(v: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        1.061_405_4,
        -1.453_152_1,
        1.421_413_8,
        -0.284_496_72,
        0.254_829_6,
    ];
    let h = v * 0.5;
    let z = v * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / M::madd(P, z.abs(), 1.0);
    let mut r = A[0];
    for a in &A[1..] {
        r = M::madd(r, t, *a);
    }
    let e = exp_neg::<M>(-(z * z));
    let y = M::madd(-e * t, r, 1.0);
    let erf = if z.is_sign_negative() { -y } else { y };
    M::madd(h, erf, h)
}

simd_fn! {
    /// Layer norm of each `dim`-wide row of `x` into `out`, with `weight` and `bias` of `dim`
    /// (biased variance, `eps` inside the square root, as `torch.nn.LayerNorm`).
    pub(crate) fn layer_norm_rows<M>(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
        let dim = weight.len();
        for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            let mean = lane_sum(row) / dim as f32;
            let var = lane_sq_dev(row, mean) / dim as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            for (((o, x), w), b) in o.iter_mut().zip(row).zip(weight).zip(bias) {
                *o = (x - mean) * rstd * w + b;
            }
        }
    }
}

simd_fn! {
    /// In-place softmax of the first `dim` values of each `stride`-wide row.
    pub(crate) fn softmax_rows<M>(x: &mut [f32], dim: usize, stride: usize) {
        for row in x.chunks_mut(stride) {
            let row = &mut row[..dim];
            let max = lane_max(row);
            for v in row.iter_mut() {
                *v = exp_neg::<M>(*v - max);
            }
            let inv = 1.0 / lane_sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

simd_fn! {
    /// In place, each `bias.len()`-wide row `x` becomes `gelu(x + bias)` (see [`gelu`]).
    pub(crate) fn bias_gelu_rows<M>(x: &mut [f32], bias: &[f32]) {
        let dim = bias.len();
        for row in x.chunks_exact_mut(dim) {
            for (r, b) in row.iter_mut().zip(bias) {
                let v = *r + b;
                *r = gelu::<M>(v);
            }
        }
    }
}

simd_fn! {
    /// Adds `bias` to each `bias.len()`-wide row of `x`.
    pub(crate) fn add_bias_rows<M>(x: &mut [f32], bias: &[f32]) {
        let dim = bias.len();
        for row in x.chunks_exact_mut(dim) {
            for (r, b) in row.iter_mut().zip(bias) {
                *r += b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_neg_is_within_2_ulp_of_std() {
        let mut worst = 0;
        for i in 0..200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            worst = worst.max(ulps(exp_neg::<Separate>(x), x.exp()));
            worst = worst.max(ulps(exp_neg::<Fused>(x), x.exp()));
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(exp_neg::<Separate>(0.0), 1.0);
        assert_eq!(exp_neg::<Fused>(0.0), 1.0);
        assert!(exp_neg::<Separate>(f32::NEG_INFINITY) < 1e-37);
    }

    /// PyTorch's own `gelu` (the fixture from `scripts/make_fixtures_v2.py gelu`): most values
    /// bit for bit, all within 2.4e-7 (one `exp` rounding apart), in the AVX2 + FMA build;
    /// the baseline build (separate multiply and add) within a few ulp more.
    #[test]
    fn gelu_matches_pytorch() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/stages/gelu.safetensors"
        );
        let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
        let xs: Vec<f32> = t["x"].to_vec1().unwrap();
        let want: Vec<f32> = t["gelu"].to_vec1().unwrap();
        assert_eq!(xs.len(), 80_001);
        let mut ours = xs.clone();
        bias_gelu_rows(&mut ours, &[0.0]);
        let worst = |got: &[f32]| {
            got.iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let same = ours.iter().zip(&want).filter(|(a, b)| a == b).count();
        if has_avx2() {
            assert!(
                same * 10 >= xs.len() * 8,
                "only {same} of {} equal",
                xs.len()
            );
            assert!(worst(&ours) <= 2.5e-7, "worst {}", worst(&ours));
        } else {
            eprintln!("skipped: the fused (AVX2 + FMA) GELU's bars (this CPU, or FASTAI_INFER_SIMD, has no AVX2 + FMA)");
        }
        let baseline: Vec<f32> = xs.iter().map(|&x| gelu::<Separate>(x)).collect();
        assert!(
            worst(&baseline) <= 1e-6,
            "baseline worst {}",
            worst(&baseline)
        );
        eprintln!(
            "gelu vs PyTorch: {same}/{} identical, max diff {:.2e} (baseline build {:.2e})",
            xs.len(),
            worst(&ours),
            worst(&baseline)
        );
    }

    /// Against the exact GELU (candle's `gelu_erf`, erf in f64): within the approximation's
    /// error, as PyTorch's is.
    #[test]
    fn gelu_stays_close_to_the_exact_gelu() {
        let xs: Vec<f32> = (0..20_001)
            .map(|i| (i as f32 - 10_000.0) / 1000.0)
            .collect();
        let exact: Vec<f32> = Tensor::new(xs.as_slice(), &Device::Cpu)
            .unwrap()
            .gelu_erf()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut ours = xs.clone();
        bias_gelu_rows(&mut ours, &[0.0]);
        for ((a, e), x) in ours.iter().zip(&exact).zip(&xs) {
            assert!((a - e).abs() <= 1e-6, "x = {x}: {a} vs exact {e}");
        }
    }

    #[test]
    fn layer_norm_and_softmax_match_f64() {
        let dim = 197;
        let x: Vec<f32> = (0..dim * 3)
            .map(|i| ((i * 7919 % 1000) as f32 / 100.0 - 5.0) * 3.0)
            .collect();
        let w: Vec<f32> = (0..dim).map(|i| 0.5 + i as f32 / dim as f32).collect();
        let b: Vec<f32> = (0..dim).map(|i| i as f32 / 1000.0).collect();
        let mut out = vec![0f32; x.len()];
        layer_norm_rows(&x, &mut out, &w, &b, 1e-6);
        let mut sm = x.clone();
        softmax_rows(&mut sm, dim, dim);
        for (r, row) in x.chunks(dim).enumerate() {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
            let max = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
            let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            for i in 0..dim {
                let ln = (row[i] as f64 - mean) / (var + 1e-6).sqrt() * w[i] as f64 + b[i] as f64;
                assert!((out[r * dim + i] as f64 - ln).abs() < 2e-6);
                let p = (row[i] as f64 - max).exp() / z;
                assert!((sm[r * dim + i] as f64 - p).abs() < 1e-7);
            }
        }
    }
}
