//! Criterion benches of each stage: item transforms, batch transforms, forward pass at
//! batch 1/8/32, and end to end from file to probabilities.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use fastai_infer::batch_tfms::BatchTfms;
use fastai_infer::candle_core::{DType, Device, Tensor};
use fastai_infer::item_tfms::RandomResizedCrop;
use fastai_infer::{load_image, Learner};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn benches(c: &mut Criterion) {
    let device = Device::Cpu;
    let learn = Learner::load(root().join("weights/pets_vit_tiny.safetensors"), &device)
        .expect("shipped weights");
    let image_path = root().join("tests/fixtures/images/chelsea.png");
    let img = load_image(&image_path).expect("fixture image");

    c.bench_function("item_tfms/RandomResizedCrop(460)", |b| {
        let t = RandomResizedCrop::new(460);
        b.iter(|| t.encodes(&img).unwrap())
    });
    let item = RandomResizedCrop::new(460).encodes(&img).unwrap();
    let batch = BatchTfms::stack(std::slice::from_ref(&item), &device).unwrap();
    c.bench_function("batch_tfms/460->224", |b| {
        let t = BatchTfms::default();
        b.iter(|| t.encodes(&batch).unwrap())
    });

    let mut g = c.benchmark_group("forward");
    g.sample_size(10);
    for n in [1usize, 8, 32] {
        let x = Tensor::randn(0f32, 1f32, (n, 3, 224, 224), &device)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        g.bench_function(format!("batch{n}"), |b| {
            b.iter(|| learn.logits(&x).unwrap())
        });
    }
    g.finish();

    c.bench_function("end_to_end/file_to_probabilities", |b| {
        b.iter(|| learn.predict_path(&image_path).unwrap())
    });
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
