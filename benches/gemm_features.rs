//! Does anything still need `gemm`'s `x86-v4` feature? Times the work that runs on the `gemm`
//! crate against the ViT fast path (which runs on its own packed kernels), so that a build
//! with the feature and one without can be compared:
//!
//! ```text
//! cargo bench --bench gemm_features                     # as Cargo.toml has it
//! cargo bench --bench gemm_features -- 15              # 15 rounds (default 7)
//! ```
//!
//! Prints the median milliseconds of each item over the rounds (items interleaved within a
//! round), and a digest of the outputs' bits (whether the feature changes results):
//! - `vit fast path bN`: `Learner::logits` on ViT-tiny, batch N (the packed kernels);
//! - `vit candle ops b8`: ViT-tiny's generic candle forward pass, batch 8 (candle's matmul,
//!   that is `gemm`, for every linear layer and attention);
//! - `candle matmul`: one `(1576, 192) x (192, 768)` product (ViT-tiny's fc1 at batch 8);
//! - `candle conv3x3`: a 64-channel 3x3 convolution on `(8, 64, 56, 56)` (a ResNet stage;
//!   candle lowers it to `gemm`).

use std::time::Instant;

use fastai_infer::candle_core::{Device, Tensor};
use fastai_infer::model::Body;
use fastai_infer::Learner;

/// A deterministic tensor of `shape` with values in [-1, 1).
fn pattern(shape: &[usize], seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn digest(t: &Tensor) -> u64 {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, v| {
            (h ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3)
        })
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(7);
    let root = env!("CARGO_MANIFEST_DIR");
    let learn = Learner::load(
        format!("{root}/weights/pets_vit_tiny.safetensors"),
        &Device::Cpu,
    )
    .expect("the shipped weights");
    let Body::Vit(vit) = learn.model().body() else {
        unreachable!("the shipped model is a ViT")
    };
    let x1 = pattern(&[1, 3, 224, 224], 1);
    let x8 = pattern(&[8, 3, 224, 224], 2);
    let a = pattern(&[1576, 192], 3);
    let b = pattern(&[192, 768], 4);
    let img = pattern(&[8, 64, 56, 56], 5);
    let kernel = (pattern(&[64, 64, 3, 3], 6) * 0.05).unwrap();
    type Item<'a> = (&'a str, Box<dyn Fn() -> Tensor + 'a>);
    let items: Vec<Item> = vec![
        ("vit fast path b1", Box::new(|| learn.logits(&x1).unwrap())),
        ("vit fast path b8", Box::new(|| learn.logits(&x8).unwrap())),
        (
            "vit candle ops b8",
            Box::new(|| vit.forward_candle_ops(&x8).unwrap()),
        ),
        ("candle matmul", Box::new(|| a.matmul(&b).unwrap())),
        (
            "candle conv3x3",
            Box::new(|| img.conv2d(&kernel, 1, 1, 1, 1).unwrap()),
        ),
    ];
    let mut times = vec![Vec::new(); items.len()];
    let mut digests = vec![0u64; items.len()];
    for (i, (_, f)) in items.iter().enumerate() {
        digests[i] = digest(&f()); // warm-up
    }
    for _ in 0..rounds {
        for (i, (_, f)) in items.iter().enumerate() {
            let t = Instant::now();
            let y = f();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(digest(&y), digests[i], "deterministic");
        }
    }
    println!("gemm_features: {rounds} rounds, median ms, output digest");
    for (i, (name, _)) in items.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort_by(f64::total_cmp);
        println!("{name:20} {:9.2} ms  {:016x}", t[t.len() / 2], digests[i]);
    }
}
