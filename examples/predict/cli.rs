//! The predict command's logic, separate from `main` so that `tests/cli.rs` can run it
//! in-process (`#[path]`-included) with its own argument list and output buffers.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Parser;
use fastai_infer::candle_core::{Device, Tensor};
use fastai_infer::{load_image_with, DecodeOptions, Learner, Prediction};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

#[path = "../common/mod.rs"]
pub mod common;

use common::{MaxPixelsArg, ModelArgs, TopKArg};
pub use common::{EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE};

/// The file extensions a directory walk picks up (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff"];

const EXIT_CODES: &str = "\
exit codes:
  0  every image predicted
  1  some input failed: a missing or unreadable path, a directory with no images, an image
     that does not decode or is over the pixel limit (each is reported with its path; the
     others still run)
  2  bad arguments, or weights, labels or a device that cannot be loaded (nothing is
     predicted)

When standard error is a terminal, a progress bar (done/total, images/s, time left) is
drawn there; piped, it stays silent. Each result is written as soon as it is known.";

/// The parsed command line.
#[derive(Parser, Debug)]
#[command(
    name = "predict",
    about = "Predict image files with a fastai classifier, as learn.predict would",
    after_help = EXIT_CODES,
    args_override_self = true
)]
pub struct Args {
    /// an image file (any name: the format is read from the bytes) or a directory, walked
    /// recursively in sorted order (byte order of the names, depth first) for files named
    /// *.png, *.jpg, *.jpeg, *.gif, *.bmp, *.webp, *.tif, *.tiff (any case); hidden entries
    /// (.name) and symlinked directories are skipped
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub top_k: TopKArg,

    /// one JSON object per image per line: {"path", "label", "index", "probabilities",
    /// "top_k": [{"label", "probability"}]} (a multi-label learner: {"path", "labels",
    /// "probabilities", "top_k"}), or {"path", "error"} for a path that failed
    #[arg(long)]
    pub json: bool,

    /// write each image's normalized (1,3,H,W) f32 model input to DIR/<stem>.npy, to diff
    /// against fastai's learn.dls.test_dl([path]).one_batch()
    #[arg(long, value_name = "DIR")]
    pub dump_input: Option<PathBuf>,

    #[command(flatten)]
    pub max_pixels: MaxPixelsArg,

    /// rotate/flip images as their EXIF orientation says (fastai does not: off by default)
    #[arg(long)]
    pub exif_orientation: bool,
}

impl Args {
    /// The decoder's options from `--max-pixels` and `--exif-orientation`.
    pub fn decode(&self) -> DecodeOptions {
        DecodeOptions::default()
            .with_max_pixels(self.max_pixels.max_pixels)
            .with_exif_orientation(self.exif_orientation)
    }
}

/// One input after directory expansion: an image file to predict, or a path that failed.
#[derive(Debug, PartialEq)]
pub enum Input {
    Image(PathBuf),
    Failed(PathBuf, String),
}

/// Whether a directory walk picks up `path`.
fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().first() == Some(&b'.'))
}

/// Expands the command line's paths: files as given (whatever their name), directories
/// walked recursively in sorted order. Missing paths, unreadable directories and directories
/// without images become [`Input::Failed`] in their place.
pub fn expand(paths: &[PathBuf]) -> Vec<Input> {
    let mut out = Vec::new();
    for p in paths {
        match std::fs::metadata(p) {
            Err(e) => out.push(Input::Failed(
                p.clone(),
                format!("cannot read {}: {e}", p.display()),
            )),
            Ok(m) if m.is_dir() => {
                let before = out.len();
                walk(p, &mut out);
                if out.len() == before {
                    out.push(Input::Failed(
                        p.clone(),
                        format!(
                            "no images in directory {} (looked for {})",
                            p.display(),
                            IMAGE_EXTENSIONS.join(", ")
                        ),
                    ));
                }
            }
            Ok(_) => out.push(Input::Image(p.clone())),
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<Input>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd.collect::<Result<Vec<_>, _>>(),
        Err(e) => Err(e),
    };
    let mut entries = match entries {
        Ok(v) => v,
        Err(e) => {
            out.push(Input::Failed(
                dir.to_path_buf(),
                format!("cannot read directory {}: {e}", dir.display()),
            ));
            return;
        }
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if hidden(&path) {
            continue;
        }
        // `file_type` does not follow symlinks: a symlinked directory is skipped (no loops),
        // a symlinked file is taken like a file.
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&path, out),
            Ok(t) if t.is_symlink() => {
                if path.is_file() && is_image_name(&path) {
                    out.push(Input::Image(path));
                }
            }
            Ok(_) if is_image_name(&path) => out.push(Input::Image(path)),
            Ok(_) => {}
            Err(err) => out.push(Input::Failed(
                path.clone(),
                format!("cannot read {}: {err}", path.display()),
            )),
        }
    }
}

/// Writes a little-endian f32 array in numpy's `.npy` format (version 1.0).
fn write_npy(path: &Path, t: &Tensor) -> Result<(), String> {
    let shape = t.dims();
    let data = t
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())?;
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Pad so that magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn run_one(
    learn: &Learner,
    path: &Path,
    decode: &DecodeOptions,
    dump: Option<&Path>,
) -> Result<Prediction, String> {
    let img = load_image_with(path, decode).map_err(|e| e.to_string())?;
    if let Some(dir) = dump {
        let input = learn
            .model_input(std::slice::from_ref(&img))
            .and_then(|t| Ok(t.to_device(&Device::Cpu)?))
            .map_err(|e| e.to_string())?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "input".into());
        write_npy(&dir.join(format!("{stem}.npy")), &input)?;
    }
    learn.predict(&img).map_err(|e| e.to_string())
}

/// A progress bar on the process's standard error when `show` (predict's `main` passes
/// whether standard error is a terminal), or a hidden one.
pub fn progress_bar(total: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{bar:30} {pos}/{len} images, {rate} images/s, {eta} left (elapsed {elapsed})",
    )
    .map(|s| {
        s.with_key("rate", |st: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1}", st.per_sec());
        })
    })
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
        .with_style(style)
}

/// What predict's `main` runs: the process's own standard streams, the progress bar only when
/// standard error is a terminal. Standard error is not locked, so that the bar and the error
/// lines can share it.
pub fn run_on_process_streams(argv: impl IntoIterator<Item = OsString>) -> u8 {
    let show_progress = std::io::stderr().is_terminal();
    run(
        argv,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr(),
        show_progress,
    )
}

/// Runs the command: predictions to `out`, errors to `err` (in `--json` mode a failed path is
/// a `{"path", "error"}` line on `out`), a progress bar on the process's standard error when
/// `show_progress`. Each image's result is written and flushed as soon as it is known.
/// Returns the exit code.
pub fn run(
    argv: impl IntoIterator<Item = OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
    show_progress: bool,
) -> u8 {
    // Output errors (a closed pipe) cannot be reported anywhere better; they are ignored.
    let args: Args = match common::parse(argv, out, err) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let learn = match args.model.load() {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_USAGE;
        }
    };
    if let Some(dir) = &args.dump_input {
        if let Err(e) = std::fs::create_dir_all(dir) {
            let _ = writeln!(err, "error: cannot create {}: {e}", dir.display());
            return EXIT_USAGE;
        }
    }
    let decode = args.decode();
    let top_k = args.top_k.top_k;
    let inputs = expand(&args.paths);
    let bar = progress_bar(inputs.len(), show_progress);
    let mut failed = false;
    for input in inputs {
        let (path, result) = match input {
            Input::Image(p) => {
                let r = run_one(&learn, &p, &decode, args.dump_input.as_deref());
                (p, r)
            }
            Input::Failed(p, e) => (p, Err(e)),
        };
        let shown = path.display().to_string();
        failed |= result.is_err();
        // The bar is cleared while a result is written (stdout and stderr may be one terminal).
        bar.suspend(|| {
            match (result, args.json) {
                (Ok(p), true) => {
                    let _ = writeln!(out, "{}", common::prediction_json(&p, &shown, top_k));
                }
                (Ok(p), false) => {
                    let _ = writeln!(out, "{shown}");
                    if p.is_multi_label() {
                        let _ = writeln!(out, "  labels: [{}]", p.labels.join(", "));
                    }
                    for r in p.top_k(top_k) {
                        let _ = writeln!(out, "  {:<28} {:.4}", r.label, r.probability);
                    }
                }
                (Err(e), true) => {
                    let _ = writeln!(out, "{}", serde_json::json!({"path": shown, "error": e}));
                }
                (Err(e), false) => {
                    let _ = writeln!(err, "error: {e}");
                    let _ = err.flush();
                }
            }
            let _ = out.flush();
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    if failed {
        EXIT_SOME_FAILED
    } else {
        EXIT_OK
    }
}
