//! bytes -> a weights file -> `FastaiWeights::load` (the safetensors path: header, offsets,
//! dtypes, shapes, metadata and recipe, architecture inference, NaN/Inf check).
//!
//! Zip archives (`.pth`) are skipped: their reader turns panics of candle's pickle parser into
//! errors with `catch_unwind`, which libFuzzer's panic hook would report as crashes.
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use fastai_infer::candle_core::Device;
use fastai_infer::{Error, FastaiWeights};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("fastai-infer-fuzz-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"PK") {
        return;
    }
    let path = scratch();
    {
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(data).unwrap();
    }
    match FastaiWeights::load(path, &Device::Cpu) {
        Ok(w) => {
            // Loaded weights must build a model and read their metadata without panicking.
            let _ = w.vocab();
            let _ = w.recipe();
            let _ = w.build_model();
        }
        Err(
            Error::InvalidWeights { .. }
            | Error::NotFastaiVit { .. }
            | Error::WeightsMismatch { .. }
            | Error::InvalidMetadata { .. }
            | Error::NonFiniteWeights { .. },
        ) => {}
        Err(other) => panic!("weights gave an unexpected error kind: {other:?}"),
    }
});
