//! Resident memory of a ViT learner on the CPU: at load, after a batch of 1, after a batch of
//! 64, and after another batch of 1 (the fast path's workspaces are trimmed after a large
//! batch). Each model is measured in a child process of its own (this binary run again with
//! `FASTAI_MEMORY_MODEL` set), so the figures are that model's alone:
//!
//! ```text
//! cargo test --release --test memory -- --include-ignored --nocapture
//! ```
//!
//! `vit_tiny` is the shipped `weights/pets_vit_tiny.safetensors`; `vit_small` is a
//! `vit_small_patch16_224`-shaped learner (width 384, 6 heads, 12 blocks, fastai's head for 37
//! classes) with deterministic pseudo-random weights written to a temporary file, since the
//! repository ships no ViT-small weights (ignored by default: it takes a while in debug builds).
//!
//! The figures are printed, not asserted (no thresholds on an allocator's behaviour). What is
//! asserted: a batch's logits are the same bits before and after a batch of 64 used and
//! trimmed the workspaces.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use fastai_infer::model::{vit, BodyConfig};
use fastai_infer::{Config, Learner};

/// `VmHWM` and `VmRSS` from `/proc/self/status`, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// A deterministic normalized input batch `(n, 3, 224, 224)`.
fn input(n: usize) -> Tensor {
    let len = n * 3 * 224 * 224;
    let v: Vec<f32> = (0..len)
        .map(|i| ((i * 7919 + 13) % 2003) as f32 / 1001.5 - 1.0)
        .collect();
    Tensor::from_vec(v, (n, 3, 224, 224), &Device::Cpu).unwrap()
}

/// Writes a ViT-small-shaped fastai learner with pseudo-random weights (f16, as fastai's
/// exports of the pets learner are) and a 37-label file into `dir`.
fn write_vit_small(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut body = vit::Config::vit_tiny_patch16_224();
    body.embed_dim = 384;
    body.num_heads = 6;
    let cfg = Config::with_default_head(BodyConfig::Vit(body), 37).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut tensors = HashMap::new();
    for (key, shape) in cfg.state_dict_shapes() {
        let t = if key.ends_with("num_batches_tracked") {
            Tensor::new(0i64, &Device::Cpu).unwrap()
        } else {
            let n: usize = shape.iter().product();
            let around_one = key.ends_with("running_var")
                || (key.contains("norm") && key.ends_with(".weight"))
                || (key.starts_with("1.") && key.ends_with(".weight") && shape.len() == 1);
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    let u = next();
                    if around_one {
                        1.0 + 0.1 * u
                    } else {
                        0.05 * u
                    }
                })
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap()
        };
        tensors.insert(key, t);
    }
    let weights = dir.join("vit_small_random.safetensors");
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let labels = dir.join("labels.txt");
    let text: String = (0..37).map(|i| format!("class_{i}\n")).collect();
    std::fs::write(&labels, text).unwrap();
    (weights, labels)
}

/// The child's part: loads the model, runs the batches, prints one line per stage
/// (`stage hwm_mib rss_mib`) and the logits' bits for the comparison.
#[test]
#[ignore = "run by the other tests of this file in a child process"]
fn child_measure() {
    let Ok(which) = std::env::var("FASTAI_MEMORY_MODEL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let files = (which == "vit_small").then(|| write_vit_small(dir.path()));
    // Writing the file is not part of the model's memory: the peak starts again from here
    // ("5": reset the peak RSS to the current RSS, Linux 4.0+; ignored where not allowed).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let report = |stage: &str| {
        let (hwm, rss) = rss_mib();
        println!("MEM {which} {stage} {hwm:.1} {rss:.1}");
    };
    report("start");
    let learn = match &files {
        Some((w, l)) => Learner::load_with_labels(w, l, &Device::Cpu).unwrap(),
        None => Learner::load(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/pets_vit_tiny.safetensors"),
            &Device::Cpu,
        )
        .unwrap(),
    };
    report("load");
    let one = input(1);
    let first = learn.logits(&one).unwrap().to_vec2::<f32>().unwrap();
    report("batch1");
    let big = learn.logits(&input(64)).unwrap();
    assert_eq!(big.dims(), &[64, 37]);
    drop(big);
    report("batch64");
    let again = learn.logits(&one).unwrap().to_vec2::<f32>().unwrap();
    report("batch1_after_64");
    let bits = |v: &[Vec<f32>]| -> Vec<u32> { v[0].iter().map(|x| x.to_bits()).collect() };
    let digest: u64 = bits(&first).iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    println!("LOGITS {which} {digest:016x}");
    assert_eq!(
        bits(&first),
        bits(&again),
        "{which}: batch-1 logits changed after a batch of 64"
    );
}

/// Runs [`child_measure`] for `which` in a child process and prints its figures.
fn measure(which: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["child_measure", "--exact", "--ignored", "--nocapture"])
        .env("FASTAI_MEMORY_MODEL", which)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{which}: the child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{which}: stage, peak RSS (VmHWM) MiB, current RSS (VmRSS) MiB");
    let mut stages = 0;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("MEM ") {
            println!("  {rest}");
            stages += 1;
        } else if line.starts_with("LOGITS ") {
            println!("  {line}");
        }
    }
    assert_eq!(stages, 5, "{which}: every stage reported:\n{stdout}");
}

#[test]
fn vit_tiny_resident_memory() {
    measure("vit_tiny");
}

#[test]
#[ignore = "a ViT-small at batch 64: slow in debug builds; run with --include-ignored"]
fn vit_small_resident_memory() {
    measure("vit_small");
}
