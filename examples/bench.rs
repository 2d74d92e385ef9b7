//! Time the forward pass and the whole pipeline, so any script can compare the crate with other
//! runtimes on the same machine.
//!
//! ```text
//! cargo run --release --example bench -- [--weights FILE] [--labels FILE] [--device DEVICE]
//!     [--batch N] [--iters N] [--json] [--dir DIR] [--stdin] [IMAGE...]
//! ```
//!
//! `--weights`, `--labels` and `--device` are the flags every example shares
//! (`examples/common/mod.rs`). On a GPU every timed run waits for the device to finish.
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
//!
//! With `--stdin` it loads the weights once, prints the cold start as one JSON line, then
//! answers one request per line of standard input with one JSON line, so that a comparison
//! script can interleave the crate's timings finely with other runtimes' (this project's VM
//! has slow spells of seconds, which coarse alternation would put on one side only):
//!
//! ```text
//! forward N ITERS      forward pass on a batch of N
//! e2e ITERS            file to probabilities, batch 1, cycling through the images
//! transforms ITERS     item + batch transforms of one decoded image
//! decode ITERS         decoding one image file (`load_image`), cycling through the images
//! dir ITERS            predict_paths over --dir, --batch per forward pass
//! ```
//!
//! Each answer is `{"what": ..., "median_ms": ..., "times_ms": [...]}` (for `dir`, also
//! `"images"`); a bad request is answered `{"error": ...}` and the loop goes on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use fastai_infer::candle_core::Tensor;
use fastai_infer::{load_image, Learner};

#[path = "common/mod.rs"]
mod common;

use common::{at_least, ModelArgs, EXIT_USAGE};

const STDIN_REQUESTS: &str = "\
--stdin requests, one a line, each answered by one JSON line
{\"what\", \"median_ms\", \"times_ms\": [...]} (for dir also \"images\"), or {\"error\"}:
  forward N ITERS   forward pass on a batch of N
  e2e ITERS         file to probabilities, batch 1, cycling through the images
  transforms ITERS  item + batch transforms of one decoded image
  decode ITERS      decoding one image file, cycling through the images
  dir ITERS         predict_paths over --dir, --batch per forward pass

exit codes: 0 done, 2 bad arguments, weights, labels, device or images";

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Time the forward pass and the whole pipeline (medians over --iters runs)",
    after_help = STDIN_REQUESTS,
    args_override_self = true
)]
struct Args {
    /// images for the end-to-end time (default: the shipped
    /// tests/fixtures/images/grace_hopper.jpg)
    #[arg(value_name = "IMAGE")]
    images: Vec<PathBuf>,

    #[command(flatten)]
    model: ModelArgs,

    /// forward-pass batch size, also the batch size for --dir
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least::<usize, 1>)]
    batch: usize,

    /// timed iterations of each measurement (--dir: 3 passes after one untimed)
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = at_least::<usize, 1>)]
    iters: usize,

    /// print one line {"batch": N, "forward_ms", "end_to_end_ms", "transforms_ms",
    /// "cold_start_ms", "peak_rss_mb" [, "dir_images", "dir_images_per_s"]}
    #[arg(long)]
    json: bool,

    /// also time predict_paths over the image files in DIR (sorted by name)
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// load once, then answer timing requests read from standard input (below)
    #[arg(long)]
    stdin: bool,
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `f` `iters` times and returns each run's wall time in ms.
fn times_ms<F: FnMut() -> Result<(), String>>(iters: usize, mut f: F) -> Result<Vec<f64>, String> {
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(v)
}

/// What the timed measurements need: the learner, the images (as files and decoded), the
/// files of `--dir` and the batch size for it.
struct Subject {
    learn: Learner,
    images: Vec<PathBuf>,
    decoded: Vec<image::RgbImage>,
    dir_files: Vec<PathBuf>,
    batch: usize,
}

impl Subject {
    /// The model input for a batch of `n`: the decoded images' inputs, repeated to fill it.
    fn input(&self, n: usize) -> Result<Tensor, String> {
        let filled: Vec<_> = self.decoded.iter().cycle().take(n).cloned().collect();
        self.learn.model_input(&filled).map_err(err)
    }

    /// Waits for the device to finish the work queued so far (a no-op on the CPU), so that a
    /// GPU's time is measured, not the time to queue its kernels.
    fn sync(&self) -> Result<(), String> {
        self.learn.device().synchronize().map_err(|e| e.to_string())
    }

    fn forward(&self, input: &Tensor, iters: usize) -> Result<Vec<f64>, String> {
        self.learn.logits(input).map_err(err)?;
        self.sync()?;
        times_ms(iters, || {
            self.learn.logits(input).map_err(err)?;
            self.sync()
        })
    }

    /// One untimed run first, as for every measurement except `dir`.
    fn end_to_end(&self, iters: usize) -> Result<Vec<f64>, String> {
        self.learn.predict_path(&self.images[0]).map_err(err)?;
        let mut i = 0;
        times_ms(iters, || {
            i += 1;
            let path = &self.images[i % self.images.len()];
            self.learn.predict_path(path).map(|_| ()).map_err(err)
        })
    }

    fn transforms(&self, iters: usize) -> Result<Vec<f64>, String> {
        self.learn.model_input(&self.decoded[..1]).map_err(err)?;
        self.sync()?;
        let mut i = 0;
        times_ms(iters, || {
            i += 1;
            let img = std::slice::from_ref(&self.decoded[i % self.decoded.len()]);
            self.learn.model_input(img).map_err(err)?;
            self.sync()
        })
    }

    fn decode(&self, iters: usize) -> Result<Vec<f64>, String> {
        load_image(&self.images[0]).map_err(err)?;
        let mut i = 0;
        times_ms(iters, || {
            i += 1;
            load_image(&self.images[i % self.images.len()])
                .map(|_| ())
                .map_err(err)
        })
    }

    /// No untimed run first: one pass over a directory is long enough to be its own warm-up.
    fn dir(&self, iters: usize) -> Result<Vec<f64>, String> {
        if self.dir_files.is_empty() {
            return Err("dir needs --dir DIR".into());
        }
        times_ms(iters, || {
            self.learn
                .predict_paths(&self.dir_files, self.batch)
                .map(|_| ())
                .map_err(err)
        })
    }

    /// Answers one `--stdin` request line with one JSON line.
    fn answer(&self, line: &str, inputs: &mut Vec<(usize, Tensor)>) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> Result<usize, String> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .filter(|&n: &usize| n > 0)
                .ok_or_else(|| format!("{line:?}: word {} must be a positive integer", i + 1))
        };
        let result = match words.first().copied() {
            Some("forward") => num(1).and_then(|n| {
                let iters = num(2)?;
                if !inputs.iter().any(|(m, _)| *m == n) {
                    inputs.push((n, self.input(n)?));
                }
                let input = inputs
                    .iter()
                    .find(|(m, _)| *m == n)
                    .map(|(_, t)| t)
                    .ok_or("internal: input not cached")?;
                self.forward(input, iters)
            }),
            Some("e2e") => num(1).and_then(|it| self.end_to_end(it)),
            Some("transforms") => num(1).and_then(|it| self.transforms(it)),
            Some("decode") => num(1).and_then(|it| self.decode(it)),
            Some("dir") => num(1).and_then(|it| self.dir(it)),
            _ => Err(format!(
                "{line:?}: expected forward N ITERS, e2e ITERS, transforms ITERS, decode ITERS or dir ITERS"
            )),
        };
        match result {
            Ok(times) => {
                let mut answer = serde_json::json!({
                    "what": words[0],
                    "median_ms": median_ms(times.clone()),
                    "times_ms": times,
                });
                if words[0] == "dir" {
                    answer["images"] = self.dir_files.len().into();
                }
                answer.to_string()
            }
            Err(e) => serde_json::json!({ "error": e }).to_string(),
        }
    }
}

fn err(e: fastai_infer::Error) -> String {
    e.to_string()
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

fn run(args: Args) -> Result<(), String> {
    let Args {
        mut images,
        model,
        batch,
        iters,
        json,
        dir,
        stdin,
    } = args;
    if images.is_empty() {
        images.push(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/grace_hopper.jpg"),
        );
    }

    // Cold start: weights file to the first prediction, before anything else has run.
    let t = Instant::now();
    let learn: Learner = model.load().map_err(err)?;
    learn.predict_path(&images[0]).map_err(err)?;
    let cold_start_ms = t.elapsed().as_secs_f64() * 1e3;

    let decoded = images
        .iter()
        .map(load_image)
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let dir_files = match &dir {
        Some(dir) => image_files(dir)?,
        None => Vec::new(),
    };
    let subject = Subject {
        learn,
        images,
        decoded,
        dir_files,
        batch,
    };

    if stdin {
        let rss = peak_rss_mb();
        println!("{{\"cold_start_ms\": {cold_start_ms:.1}, \"peak_rss_mb\": {rss:.1}}}");
        let mut inputs = Vec::new();
        for line in std::io::stdin().lines() {
            let line = line.map_err(|e| format!("standard input: {e}"))?;
            if line.trim().is_empty() {
                continue;
            }
            println!("{}", subject.answer(&line, &mut inputs));
        }
        return Ok(());
    }

    let input = subject.input(batch)?;
    let forward_ms = median_ms(subject.forward(&input, iters)?);
    let end_to_end_ms = median_ms(subject.end_to_end(iters)?);
    let transforms_ms = median_ms(subject.transforms(iters)?);
    let dir_result = if dir.is_some() {
        subject.dir(1)?;
        let ms = median_ms(subject.dir(3)?);
        let n = subject.dir_files.len();
        Some((n, n as f64 / (ms / 1e3)))
    } else {
        None
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
    match run(common::parse_or_exit()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
