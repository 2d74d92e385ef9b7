//! The `cuda` feature on a real GPU: the same model input, probabilities and answers as the CPU
//! path, and a GPU that keeps working after bad input. Built only with `--features cuda`
//! (`bash .ci/cuda.sh test --features cuda --test cuda`); on a machine without a CUDA GPU every
//! test prints why it skipped and passes, so CI can compile and run it anywhere.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device};
use fastai_infer::{DeviceSpec, Error, Learner};

/// GPU 0, or `None` after printing why the test skips.
fn gpu(test: &str) -> Option<Device> {
    match DeviceSpec::Cuda(0).device() {
        Ok(device) => Some(device),
        Err(e) => {
            eprintln!("{test}: skipped: no CUDA GPU ({e})");
            None
        }
    }
}

#[test]
fn cuda_gives_the_cpus_model_input_probabilities_and_answers() {
    let Some(gpu) = gpu("cuda_gives_the_cpus_model_input_probabilities_and_answers") else {
        return;
    };
    let cpu = Learner::load(common::weights(), &Device::Cpu).unwrap();
    let cuda = Learner::load(common::weights(), &gpu).unwrap();
    let mut checked = 0;
    for f in common::manifest().into_iter().filter(|f| f.lossless) {
        let img = fastai_infer::load_image(common::image_path(&f)).unwrap();
        let on_cpu = cpu.model_input(std::slice::from_ref(&img)).unwrap();
        let on_gpu = cuda
            .model_input(std::slice::from_ref(&img))
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        let d_input = common::max_abs_diff(&on_gpu, &on_cpu);
        let p_cpu = cpu.predict(&img).unwrap();
        let p_gpu = cuda.predict(&img).unwrap();
        let d_probs = p_cpu
            .probabilities
            .iter()
            .zip(&p_gpu.probabilities)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{:24} input differs by {d_input:.1e}, probabilities by {d_probs:.1e}",
            f.image
        );
        assert_eq!(d_input, 0.0, "{}: model input", f.image);
        assert!(
            d_probs <= 1e-5,
            "{}: probabilities differ by {d_probs}",
            f.image
        );
        assert_eq!(p_gpu.index, p_cpu.index, "{}: top-1", f.image);
        assert_eq!(p_gpu.index, f.index, "{}: fastai's top-1", f.image);
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} lossless fixtures");
    // The logits stay f32 on the device.
    let input = cuda
        .model_input(&[
            fastai_infer::load_image(common::fixtures().join("images/chelsea.png")).unwrap(),
        ])
        .unwrap();
    assert_eq!(cuda.logits(&input).unwrap().dtype(), DType::F32);
}

#[test]
fn the_gpu_keeps_working_after_bad_input() {
    let Some(gpu) = gpu("the_gpu_keeps_working_after_bad_input") else {
        return;
    };
    let cuda = Learner::load(common::weights(), &gpu).unwrap();
    let chelsea = common::fixtures().join("images/chelsea.png");
    let before = cuda.predict_path(&chelsea).unwrap();
    for bad in ["hostile/crc_rgb_ihdr.png", "hostile/bomb_png.png"] {
        let err = cuda.predict_path(common::fixtures().join(bad)).unwrap_err();
        println!("{bad}: {err}");
        assert!(
            err.to_string().contains(bad.rsplit('/').next().unwrap()),
            "{err}"
        );
    }
    let after = cuda.predict_path(&chelsea).unwrap();
    assert_eq!(after, before);
}

#[test]
fn a_missing_gpu_is_a_typed_error() {
    // An index no machine has: a typed error naming it, never a panic.
    match DeviceSpec::Cuda(4096).device() {
        Err(Error::Device { device, reason }) => {
            println!("cuda:4096: {reason}");
            assert_eq!(device, "cuda:4096");
        }
        Err(e) => panic!("expected Error::Device, got {e}"),
        Ok(_) => panic!("a GPU with index 4096"),
    }
}
