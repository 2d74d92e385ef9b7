//! bytes -> a weights file -> `FastaiWeights::load`: the safetensors path (header, offsets,
//! dtypes, shapes, metadata and recipe, architecture inference, NaN/Inf check) and the `.pth`
//! path (torch's zip archive, its directory and local headers, the bounded pickle reader, the
//! class checks, the storages' sizes, offsets and strides), and for files that load,
//! `Learner::from_weights` and one prediction. The seeds (`fuzz/seeds/weights`) hold both
//! formats; nothing is caught with `catch_unwind`, so any panic is a crash.
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use fastai_infer::candle_core::Device;
use fastai_infer::{Error, FastaiWeights, Learner, Vocab};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!(
            "fastai-infer-fuzz-{}.weights",
            std::process::id()
        ))
    })
}

/// A small fixed image to predict with a loaded model.
fn image_13x9() -> image::RgbImage {
    image::RgbImage::from_fn(13, 9, |x, y| image::Rgb([x as u8 * 19, y as u8 * 27, 90]))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    {
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(data).unwrap();
    }
    match FastaiWeights::load(path, &Device::Cpu) {
        Ok(w) => {
            // Loaded weights must read their metadata, and predict or refuse with a typed error.
            let _ = w.vocab();
            let _ = w.recipe();
            let n = w.config().num_classes();
            let vocab = Vocab::new((0..n).map(|i| format!("c{i}")).collect());
            let image = image_13x9();
            match Learner::from_weights(&w, vocab).and_then(|l| l.predict(&image)) {
                Ok(p) => assert_eq!(p.probabilities.len(), n),
                Err(Error::InvalidMetadata { .. } | Error::InvalidArgument(_)) => {}
                Err(other) => panic!("a loaded model failed with {other:?}"),
            }
        }
        Err(
            Error::InvalidWeights { .. }
            | Error::NotFastaiLearner { .. }
            | Error::UnsupportedHead { .. }
            | Error::ArchMismatch { .. }
            | Error::WeightsMismatch { .. }
            | Error::InvalidMetadata { .. }
            | Error::NonFiniteWeights { .. },
        ) => {}
        Err(other) => panic!("weights gave an unexpected error kind: {other:?}"),
    }
});
