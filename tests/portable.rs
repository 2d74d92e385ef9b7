//! The CPU fast path without AVX-512 or AVX2 (`FASTAI_INFER_SIMD=baseline`): the general
//! matmul, the unfused polynomials and the baseline builds of the row kernels must still give
//! fastai's answers. A test binary of its own, because the level is read once per process.

mod common;

use candle_core::Device;
use fastai_infer::Learner;

#[test]
fn baseline_and_avx2_paths_match_fastai() {
    let level = std::env::var("FASTAI_INFER_SIMD").unwrap_or_else(|_| "baseline".into());
    // Set before anything reads it; this binary holds no other test.
    std::env::set_var("FASTAI_INFER_SIMD", &level);
    let learn = Learner::load(common::weights(), &Device::Cpu).unwrap();
    let golden = common::golden();
    for f in common::manifest() {
        let logits = learn.logits(&common::fastai_input(&f)).unwrap();
        let d = common::max_abs_diff(&logits, &golden[&format!("{}.logits", f.stem)]);
        println!("{:24} {level}: logits differ by {d:.1e}", f.image);
        assert!(d <= 1e-4, "{} ({level}): logits differ by {d}", f.image);
    }
}
