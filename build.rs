//! Compiles the crate's CUDA kernels (`src/batch_tfms/kernels/*.cu`) to PTX with `nvcc` when the
//! `cuda` feature is on, as candle-kernels does; without the feature it does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = match std::env::var_os("CUDA_HOME") {
        Some(home) => PathBuf::from(home).join("bin").join("nvcc"),
        None => PathBuf::from("nvcc"),
    };
    // The virtual architecture the PTX targets: CUDA_COMPUTE_CAP (e.g. 90) as candle-kernels
    // reads it, else the oldest CUDA 13 supports, so the driver can JIT it for any newer GPU.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "75".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    compile(&nvcc, &cap, &out_dir, "fma");
}

/// `nvcc --ptx` on `src/batch_tfms/kernels/<kernel>.cu`, into `OUT_DIR/<kernel>.ptx`.
fn compile(nvcc: &Path, cap: &str, out_dir: &Path, kernel: &str) {
    let src = PathBuf::from("src/batch_tfms/kernels").join(format!("{kernel}.cu"));
    println!("cargo::rerun-if-changed={}", src.display());
    let ptx = out_dir.join(format!("{kernel}.ptx"));
    let status = Command::new(nvcc)
        .args(["--ptx", "-O3", "--fmad=false"])
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg("-o")
        .arg(&ptx)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {} for {}: {e}", nvcc.display(), src.display()));
    assert!(status.success(), "nvcc failed on {}", src.display());
}
