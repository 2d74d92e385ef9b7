//! What the examples (`predict`, `bench`, `serve`, `convert`) share: their common flags, parsed
//! with clap, so that `--weights`, `--labels`, `--device`, `--top-k` and `--max-pixels` have one
//! spelling, one help text and one parser everywhere; the exit codes; and how a bad command
//! line is answered.
//!
//! Each example includes this file with `#[path = "../common/mod.rs"] mod common;` (it is not an
//! example of its own: cargo only builds `examples/*.rs` and `examples/*/main.rs`).
#![allow(dead_code)] // each example uses part of it

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use fastai_infer::decode::DEFAULT_MAX_PIXELS;
use fastai_infer::{DeviceSpec, Learner, Prediction};

/// Success: everything asked for was done.
pub const EXIT_OK: u8 = 0;
/// Some inputs failed (the others still ran).
pub const EXIT_SOME_FAILED: u8 = 1;
/// Bad arguments, or weights, labels or a device that cannot be loaded: nothing was done.
pub const EXIT_USAGE: u8 = 2;

/// The weights shipped in the repository (a test fixture, see `weights/README.md`).
pub fn shipped_weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/pets_vit_tiny.safetensors")
}

/// The model to run: `--weights`, `--labels` and `--device` (predict, bench, serve).
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// fastai's state_dict as safetensors or as learn.save's .pth (default: the shipped
    /// weights/pets_vit_tiny.safetensors)
    #[arg(long, value_name = "FILE", default_value_os_t = shipped_weights(), hide_default_value = true)]
    pub weights: PathBuf,

    #[command(flatten)]
    pub labels: LabelsArg,

    /// where the model and the batch transforms run: cpu, cuda (the first GPU) or cuda:N; a GPU
    /// needs a binary built with --features cuda
    #[arg(long, value_name = "DEVICE", default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
}

impl ModelArgs {
    /// Opens the device and loads the learner, with the `--labels` vocab if one was given.
    /// An error here is the caller's exit code 2.
    pub fn load(&self) -> fastai_infer::Result<Learner> {
        let device = self.device.device()?;
        match &self.labels.labels {
            Some(labels) => Learner::load_with_labels(&self.weights, labels, &device),
            None => Learner::load(&self.weights, &device),
        }
    }
}

/// `--labels` (predict, bench, serve through [`ModelArgs`]; convert on its own).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LabelsArg {
    /// the vocab, one label per line in class-index order (default: the vocab in the weights'
    /// metadata; a .pth has none)
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
}

/// `--top-k` (predict, serve).
#[derive(clap::Args, Debug, Clone)]
pub struct TopKArg {
    /// how many classes to list, most probable first
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = at_least::<usize, 1>)]
    pub top_k: usize,
}

/// `--max-pixels` (predict, serve). Each command may set its own default with
/// `#[command(mut_arg("max_pixels", |a| a.default_value("N")))]`.
#[derive(clap::Args, Debug, Clone)]
pub struct MaxPixelsArg {
    /// refuse an image of more than N pixels (width x height), read from its header before
    /// anything is decoded (PIL raises DecompressionBombError over 178956970)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PIXELS, value_parser = at_least::<u64, 1>)]
    pub max_pixels: u64,
}

/// A clap value parser for an integer of at least `MIN`, with a message that says so (clap's
/// ranged parsers print the type's bounds).
pub fn at_least<T, const MIN: u64>(s: &str) -> Result<T, String>
where
    T: TryFrom<u64>,
{
    s.parse::<u64>()
        .ok()
        .filter(|&n| n >= MIN)
        .ok_or_else(|| format!("expected an integer >= {MIN}"))
        .and_then(|n| T::try_from(n).map_err(|_| format!("{n} is too large")))
}

/// Parses a command line (without the program name) into `T`. `-h`/`--help` writes the help to
/// `out` and gives `Err(EXIT_OK)`; a bad argument writes clap's message (with the usage line and
/// a pointer to `--help`) to `err` and gives `Err(EXIT_USAGE)`. Never exits the process.
pub fn parse<T: Parser>(
    argv: impl IntoIterator<Item = OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<T, u8> {
    let name = T::command().get_name().to_string();
    match T::try_parse_from(std::iter::once(OsString::from(name)).chain(argv)) {
        Ok(args) => Ok(args),
        Err(e) => {
            // Output errors (a closed pipe) cannot be reported anywhere better; they are ignored.
            let text = e.render().to_string();
            if e.use_stderr() {
                let _ = write!(err, "{text}");
                Err(EXIT_USAGE)
            } else {
                let _ = write!(out, "{text}");
                Err(EXIT_OK)
            }
        }
    }
}

/// [`parse`] on the process's own arguments and standard streams; exits the process on
/// `--help` (0) or a bad argument (2).
pub fn parse_or_exit<T: Parser>() -> T {
    match parse(
        std::env::args_os().skip(1),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ) {
        Ok(args) => args,
        Err(code) => std::process::exit(i32::from(code)),
    }
}

/// One image's prediction as the JSON object `predict --json` prints on a line (and `serve`
/// answers with): single-label `{"path", "label", "index", "probabilities", "top_k"}`;
/// multi-label `{"path", "labels", "probabilities", "top_k"}` (`labels`: every class over the
/// learner's threshold, in vocab order, possibly none). `top_k` lists the `k` most probable
/// classes as `{"label", "probability"}`, most probable first; `probabilities` has one entry
/// per class in vocab order.
pub fn prediction_json(p: &Prediction, path: &str, k: usize) -> serde_json::Value {
    let top: Vec<_> = p
        .top_k(k)
        .into_iter()
        .map(|r| serde_json::json!({"label": r.label, "probability": r.probability}))
        .collect();
    if p.is_multi_label() {
        serde_json::json!({
            "path": path,
            "labels": p.labels,
            "probabilities": p.probabilities,
            "top_k": top,
        })
    } else {
        serde_json::json!({
            "path": path,
            "label": p.label,
            "index": p.index,
            "probabilities": p.probabilities,
            "top_k": top,
        })
    }
}
