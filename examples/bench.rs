//! Time the forward pass and the whole pipeline, so any script can compare the crate with other
//! runtimes on the same machine.
//!
//! ```text
//! cargo run --release --example bench -- [--weights FILE] [--batch N] [--iters N] [--json]
//!     [--dir DIR] [IMAGE...]
//! ```
//!
//! Prints, as medians over `--iters` runs:
//! - the cold start: weights file to the first prediction (load, build, first image), measured
//!   once before anything else runs;
//! - the forward pass on a batch of N (the images' model inputs, repeated to fill the batch);
//! - end to end for one image, file to probabilities (decode, item and batch transforms,
//!   model, softmax), cycling through the images;
//! - the item + batch transforms alone (decode excluded) for one image;
//! - with `--dir`, the throughput of `Learner::predict_paths` over every image in DIR, N per
//!   forward pass;
//! - the process's peak resident memory at the end.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use fastai_infer::candle_core::{Device, Tensor};
use fastai_infer::{load_image, Learner};

const USAGE: &str = "\
usage: bench [--weights FILE] [--batch N] [--iters N] [--json] [--dir DIR] [IMAGE...]
  --weights FILE  safetensors weights (default: the shipped weights/pets_vit_tiny.safetensors)
  --batch N       forward-pass batch size, also the batch size for --dir (default 1)
  --iters N       timed iterations of each measurement (default 20; 3 passes over --dir)
  --json          print one line {\"batch\": N, \"forward_ms\": ..., \"end_to_end_ms\": ...,
                  \"transforms_ms\": ..., \"cold_start_ms\": ..., \"peak_rss_mb\": ...
                  [, \"dir_images\": ..., \"dir_images_per_s\": ...]}
  --dir DIR       also time predict_paths over the image files in DIR (sorted by name)
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

/// Runs `f` `iters` times and returns the median wall time in ms.
fn time_ms<F: FnMut() -> Result<(), String>>(iters: usize, mut f: F) -> Result<f64, String> {
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median_ms(v))
}

/// Peak resident set size in MiB (Linux `VmHWM`), or NaN elsewhere.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Image files in `dir`, sorted by name.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "jpg" | "jpeg" | "png" | "bmp" | "gif" | "webp" | "tif" | "tiff"
                )
            })
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no image files", dir.display()));
    }
    Ok(files)
}

fn run() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut weights = root.join("weights/pets_vit_tiny.safetensors");
    let (mut batch, mut iters, mut json) = (1usize, 20usize, false);
    let mut dir: Option<PathBuf> = None;
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
            "--dir" => dir = Some(it.next().map(PathBuf::from).ok_or("--dir needs a value")?),
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
    let err = |e: fastai_infer::Error| e.to_string();

    // Cold start: weights file to the first prediction, before anything else has run.
    let t = Instant::now();
    let learn = Learner::load(&weights, &Device::Cpu).map_err(err)?;
    learn.predict_path(&images[0]).map_err(err)?;
    let cold_start_ms = t.elapsed().as_secs_f64() * 1e3;

    let decoded = images
        .iter()
        .map(load_image)
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let filled: Vec<_> = decoded.iter().cycle().take(batch).cloned().collect();
    let input: Tensor = learn.model_input(&filled).map_err(err)?;

    // Warm up, then time.
    learn.logits(&input).map_err(err)?;
    let forward_ms = time_ms(iters, || learn.logits(&input).map(|_| ()).map_err(err))?;
    let mut i = 0;
    let end_to_end_ms = time_ms(iters, || {
        i += 1;
        learn
            .predict_path(&images[i % images.len()])
            .map(|_| ())
            .map_err(err)
    })?;
    let mut i = 0;
    let transforms_ms = time_ms(iters, || {
        i += 1;
        let img = std::slice::from_ref(&decoded[i % decoded.len()]);
        learn.model_input(img).map(|_| ()).map_err(err)
    })?;

    let dir_result = match &dir {
        Some(dir) => {
            let files = image_files(dir)?;
            learn.predict_paths(&files, batch).map_err(err)?;
            let ms = time_ms(3, || {
                learn.predict_paths(&files, batch).map(|_| ()).map_err(err)
            })?;
            Some((files.len(), files.len() as f64 / (ms / 1e3)))
        }
        None => None,
    };
    let rss = peak_rss_mb();

    if json {
        let mut line = format!(
            "{{\"batch\": {batch}, \"forward_ms\": {forward_ms:.3}, \"end_to_end_ms\": {end_to_end_ms:.3}, \
             \"transforms_ms\": {transforms_ms:.3}, \"cold_start_ms\": {cold_start_ms:.1}, \
             \"peak_rss_mb\": {rss:.1}"
        );
        if let Some((n, ips)) = dir_result {
            line += &format!(", \"dir_images\": {n}, \"dir_images_per_s\": {ips:.2}");
        }
        println!("{line}}}");
    } else {
        println!("cold start, weights file to first prediction: {cold_start_ms:.1} ms");
        println!(
            "forward, batch {batch}: {forward_ms:.2} ms median ({:.2} ms per image)",
            forward_ms / batch as f64
        );
        println!("end to end, file to probabilities, batch 1: {end_to_end_ms:.2} ms median");
        println!("item + batch transforms, one image: {transforms_ms:.2} ms median");
        if let Some((n, ips)) = dir_result {
            println!("predict_paths over {n} files, batch {batch}: {ips:.1} images/s");
        }
        println!("peak RSS: {rss:.1} MiB");
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
