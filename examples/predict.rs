//! Predict image files with a fastai ViT classifier, as `learn.predict` would.
//!
//! ```text
//! cargo run --release --example predict -- [--weights FILE] [--labels FILE] [--top-k N]
//!     [--json] [--dump-input DIR] IMAGE...
//! ```
//!
//! Exit codes: 0 every image predicted; 1 at least one image failed (the others still ran);
//! 2 bad arguments or weights.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fastai_infer::candle_core::{Device, Tensor};
use fastai_infer::{load_image, Learner, Prediction};

const USAGE: &str = "\
usage: predict [--weights FILE] [--labels FILE] [--top-k N] [--json] [--dump-input DIR] IMAGE...

  --weights FILE    fastai's state_dict as safetensors or as learn.save's .pth
                    (default: the shipped weights/pets_vit_tiny.safetensors)
  --labels FILE     vocab, one label per line (default: the vocab in the weights' metadata)
  --top-k N         how many classes to show (default 3)
  --json            one JSON object per image per line:
                    {\"path\", \"label\", \"index\", \"probabilities\", \"top_k\": [{\"label\", \"probability\"}]}
                    or {\"path\", \"error\"} for an image that failed
  --dump-input DIR  write each image's normalized (1,3,224,224) f32 model input to DIR/<stem>.npy

exit codes: 0 all images predicted, 1 some image failed, 2 bad arguments or weights";

struct Args {
    weights: PathBuf,
    labels: Option<PathBuf>,
    top_k: usize,
    json: bool,
    dump_input: Option<PathBuf>,
    images: Vec<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        weights: Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/pets_vit_tiny.safetensors"),
        labels: None,
        top_k: 3,
        json: false,
        dump_input: None,
        images: Vec::new(),
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .map(PathBuf::from)
        };
        match a.to_str() {
            Some("--weights") => args.weights = value("--weights")?,
            Some("--labels") => args.labels = Some(value("--labels")?),
            Some("--top-k") => {
                let v = value("--top-k")?;
                args.top_k = v
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .filter(|&k: &usize| k > 0)
                    .ok_or_else(|| format!("--top-k needs a positive integer, got {v:?}"))?;
            }
            Some("--json") => args.json = true,
            Some("--dump-input") => args.dump_input = Some(value("--dump-input")?),
            Some("-h") | Some("--help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Some(s) if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => args.images.push(PathBuf::from(a)),
        }
    }
    if args.images.is_empty() {
        return Err("no IMAGE given".into());
    }
    Ok(args)
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

fn run_one(learn: &Learner, path: &Path, dump: Option<&Path>) -> Result<Prediction, String> {
    let img = load_image(path).map_err(|e| e.to_string())?;
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

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
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
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &args.dump_input {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("error: cannot create {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    let mut failed = false;
    for path in &args.images {
        let result = run_one(&learn, path, args.dump_input.as_deref());
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
                println!("{v}");
            }
            (Ok(p), false) => {
                println!("{shown}");
                for r in p.top_k(args.top_k) {
                    println!("  {:<28} {:.4}", r.label, r.probability);
                }
            }
            (Err(e), json) => {
                failed = true;
                if json {
                    println!("{}", serde_json::json!({"path": shown, "error": e}));
                } else {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
