//! The predict command's logic, separate from `main` so that `tests/cli.rs` can run it
//! in-process (`#[path]`-included) with its own argument list and output buffers.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use fastai_infer::candle_core::{Device, Tensor};
use fastai_infer::{load_image_with, DecodeOptions, Learner, Prediction};

/// Every image predicted.
pub const EXIT_OK: u8 = 0;
/// At least one input failed (the others still ran).
pub const EXIT_SOME_FAILED: u8 = 1;
/// Bad arguments, weights or labels: nothing was predicted.
pub const EXIT_USAGE: u8 = 2;

/// The file extensions a directory walk picks up (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff"];

pub const USAGE: &str = "\
usage: predict [--weights FILE] [--labels FILE] [--top-k N] [--json] [--dump-input DIR]
               [--max-pixels N] [--exif-orientation] PATH...

  PATH              an image file (any name: the format is read from the bytes) or a
                    directory, walked recursively in sorted order (byte order of the names,
                    depth first) for files named *.png, *.jpg, *.jpeg, *.gif, *.bmp, *.webp,
                    *.tif, *.tiff (any case); hidden entries (.name) and symlinked
                    directories are skipped
  --weights FILE    fastai's state_dict as safetensors or as learn.save's .pth
                    (default: the shipped weights/pets_vit_tiny.safetensors)
  --labels FILE     vocab, one label per line (default: the vocab in the weights' metadata)
  --top-k N         how many classes to show (default 3)
  --json            one JSON object per image per line:
                    {\"path\", \"label\", \"index\", \"probabilities\", \"top_k\": [{\"label\", \"probability\"}]}
                    or {\"path\", \"error\"} for a path that failed
  --dump-input DIR  write each image's normalized (1,3,224,224) f32 model input to DIR/<stem>.npy
  --max-pixels N    refuse images of more than N pixels before decoding them
                    (default 178956970, PIL's DecompressionBombError limit)
  --exif-orientation
                    rotate/flip images as their EXIF orientation says (fastai does not:
                    off by default)

exit codes:
  0  every image predicted
  1  some input failed: a missing or unreadable path, a directory with no images, an image
     that does not decode or is over the pixel limit (each is reported with its path; the
     others still run)
  2  bad arguments, or weights or labels that cannot be loaded (nothing is predicted)";

/// The parsed command line.
#[derive(Debug)]
pub struct Args {
    pub weights: PathBuf,
    pub labels: Option<PathBuf>,
    pub top_k: usize,
    pub json: bool,
    pub dump_input: Option<PathBuf>,
    pub decode: DecodeOptions,
    pub paths: Vec<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Help,
    Predict(Args),
}

/// Parses the arguments (without the program name).
pub fn parse_args(argv: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    let mut args = Args {
        weights: Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/pets_vit_tiny.safetensors"),
        labels: None,
        top_k: 3,
        json: false,
        dump_input: None,
        decode: DecodeOptions::default(),
        paths: Vec::new(),
    };
    let mut it = argv.into_iter();
    let mut only_paths = false;
    while let Some(a) = it.next() {
        if only_paths {
            args.paths.push(PathBuf::from(a));
            continue;
        }
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .map(PathBuf::from)
        };
        let number = |name: &str, v: PathBuf| {
            v.to_str()
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|&k| k > 0)
                .ok_or_else(|| format!("{name} needs a positive integer, got {v:?}"))
        };
        match a.to_str() {
            Some("--weights") => args.weights = value("--weights")?,
            Some("--labels") => args.labels = Some(value("--labels")?),
            Some("--top-k") => {
                let k = number("--top-k", value("--top-k")?)?;
                args.top_k = usize::try_from(k).map_err(|_| "--top-k is too large".to_string())?;
            }
            Some("--max-pixels") => {
                args.decode.max_pixels = number("--max-pixels", value("--max-pixels")?)?
            }
            Some("--exif-orientation") => args.decode.apply_exif_orientation = true,
            Some("--json") => args.json = true,
            Some("--dump-input") => args.dump_input = Some(value("--dump-input")?),
            Some("-h") | Some("--help") => return Ok(Command::Help),
            Some("--") => only_paths = true,
            Some(s) if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => args.paths.push(PathBuf::from(a)),
        }
    }
    if args.paths.is_empty() {
        return Err("no PATH given".into());
    }
    Ok(Command::Predict(args))
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

/// Runs the command: predictions to `out`, errors to `err` (in `--json` mode a failed path is
/// a `{"path", "error"}` line on `out`). Returns the exit code.
pub fn run(
    argv: impl IntoIterator<Item = OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    // Output errors (a closed pipe) cannot be reported anywhere better; they are ignored.
    let args = match parse_args(argv) {
        Ok(Command::Help) => {
            let _ = writeln!(out, "{USAGE}");
            return EXIT_OK;
        }
        Ok(Command::Predict(a)) => a,
        Err(e) => {
            let _ = writeln!(err, "error: {e}\n\n{USAGE}");
            return EXIT_USAGE;
        }
    };
    let device = Device::Cpu;
    let learn = match &args.labels {
        Some(labels) => Learner::load_with_labels(&args.weights, labels, &device),
        None => Learner::load(&args.weights, &device),
    };
    let learn = match learn {
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
    let mut failed = false;
    for input in expand(&args.paths) {
        let (path, result) = match input {
            Input::Image(p) => {
                let r = run_one(&learn, &p, &args.decode, args.dump_input.as_deref());
                (p, r)
            }
            Input::Failed(p, e) => (p, Err(e)),
        };
        let shown = path.display().to_string();
        match (result, args.json) {
            (Ok(p), true) => {
                let top: Vec<_> = p
                    .top_k(args.top_k)
                    .into_iter()
                    .map(|r| serde_json::json!({"label": r.label, "probability": r.probability}))
                    .collect();
                let v = serde_json::json!({
                    "path": shown,
                    "label": p.label,
                    "index": p.index,
                    "probabilities": p.probabilities,
                    "top_k": top,
                });
                let _ = writeln!(out, "{v}");
            }
            (Ok(p), false) => {
                let _ = writeln!(out, "{shown}");
                for r in p.top_k(args.top_k) {
                    let _ = writeln!(out, "  {:<28} {:.4}", r.label, r.probability);
                }
            }
            (Err(e), json) => {
                failed = true;
                if json {
                    let _ = writeln!(out, "{}", serde_json::json!({"path": shown, "error": e}));
                } else {
                    let _ = writeln!(err, "error: {e}");
                }
            }
        }
    }
    if failed {
        EXIT_SOME_FAILED
    } else {
        EXIT_OK
    }
}
