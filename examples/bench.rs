//! Time the forward pass and the whole pipeline, so any script can compare the crate with other
//! runtimes on the same machine.
//!
//! ```text
//! cargo run --release --example bench -- [--weights FILE] [--batch N] [--iters N] [--json] [IMAGE...]
//! ```
//!
//! Prints the median forward-pass time on a batch of N (the images' model inputs, repeated to
//! fill the batch) and the median end-to-end time for one image, file to probabilities
//! (decode, item and batch transforms, model, softmax), cycling through the images.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use fastai_infer::candle_core::{Device, Tensor};
use fastai_infer::{load_image, Learner};

const USAGE: &str = "\
usage: bench [--weights FILE] [--batch N] [--iters N] [--json] [IMAGE...]
  --weights FILE  safetensors weights (default: the shipped weights/pets_vit_tiny.safetensors)
  --batch N       forward-pass batch size (default 1)
  --iters N       timed iterations of each measurement (default 20)
  --json          print one line {\"batch\": N, \"forward_ms\": ..., \"end_to_end_ms\": ...}
  IMAGE...        images for the end-to-end time (default: a shipped fixture photo)";

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn run() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut weights = root.join("weights/pets_vit_tiny.safetensors");
    let (mut batch, mut iters, mut json) = (1usize, 20usize, false);
    let mut images: Vec<PathBuf> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n > 0)
                .ok_or_else(|| format!("{name} needs a positive integer"))
        };
        match a.as_str() {
            "--weights" => {
                weights = it
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--weights needs a value")?
            }
            "--batch" => batch = num("--batch")?,
            "--iters" => iters = num("--iters")?,
            "--json" => json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n\n{USAGE}")),
            _ => images.push(PathBuf::from(a)),
        }
    }
    if images.is_empty() {
        images.push(root.join("tests/fixtures/images/grace_hopper.jpg"));
    }
    let learn = Learner::load(&weights, &Device::Cpu).map_err(|e| e.to_string())?;
    let decoded = images
        .iter()
        .map(load_image)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let filled: Vec<_> = decoded.iter().cycle().take(batch).cloned().collect();
    let input: Tensor = learn.model_input(&filled).map_err(|e| e.to_string())?;

    // Warm up, then time.
    learn.logits(&input).map_err(|e| e.to_string())?;
    let mut fwd = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        learn.logits(&input).map_err(|e| e.to_string())?;
        fwd.push(t.elapsed().as_secs_f64() * 1e3);
    }
    learn.predict_path(&images[0]).map_err(|e| e.to_string())?;
    let mut e2e = Vec::with_capacity(iters);
    for i in 0..iters {
        let t = Instant::now();
        learn
            .predict_path(&images[i % images.len()])
            .map_err(|e| e.to_string())?;
        e2e.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (f, e) = (median_ms(fwd), median_ms(e2e));
    if json {
        println!("{{\"batch\": {batch}, \"forward_ms\": {f:.3}, \"end_to_end_ms\": {e:.3}}}");
    } else {
        println!(
            "forward, batch {batch}: {f:.2} ms median ({:.2} ms per image)",
            f / batch as f64
        );
        println!("end to end, file to probabilities, batch 1: {e:.2} ms median");
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
