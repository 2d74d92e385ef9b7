//! Convert fastai's `learn.save` output (`.pth`) — or any weights file fastai-infer reads —
//! into one self-describing safetensors file: the state_dict, the vocab and the
//! preprocessing recipe.
//!
//! ```text
//! cargo run --release --example convert -- [--labels FILE] [recipe flags] INPUT OUTPUT.safetensors
//! ```
//!
//! Exit codes: 0 written; 2 bad arguments, or an input that is not fastai ViT weights.

use std::path::PathBuf;
use std::process::ExitCode;

use fastai_infer::candle_core::Device;
use fastai_infer::{FastaiWeights, Recipe, Vocab};

const USAGE: &str = "\
usage: convert [--labels FILE] [--arch NAME] [--num-heads N] [--item-size N|HxW]
               [--val-xtra F] [--size N|HxW] [--mean R,G,B] [--std R,G,B] INPUT OUTPUT

  INPUT            fastai's state_dict: learn.save's .pth (with or without the optimizer
                   state; f32, f16 or bf16) or a safetensors file
  OUTPUT           the safetensors file to write (f32 tensors, vocab and recipe in the metadata)
  --labels FILE    the vocab, one label per line in class-index order (default: the input's
                   vocab metadata, if any; a .pth has none)
  recipe flags (defaults: the input's recipe, else the pets lesson):
  --arch NAME      timm model name, e.g. vit_small_patch16_224 (fixes the attention heads)
  --num-heads N    attention heads, when the name does not tell
  --item-size S    RandomResizedCrop size: N or HxW (pets: 460)
  --val-xtra F     RandomResizedCrop val_xtra (fastai's default 0.14)
  --size S         aug_transforms size: N or HxW, the model's input (pets: 224)
  --mean R,G,B     Normalize mean (default ImageNet's)
  --std R,G,B      Normalize std (default ImageNet's)

exit codes: 0 written, 2 bad arguments or input";

fn size(v: &str) -> Result<(u32, u32), String> {
    let parse = |s: &str| {
        s.parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("bad size {v:?}: expected N or HxW with positive integers"))
    };
    match v.split_once('x') {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => parse(v).map(|n| (n, n)),
    }
}

fn triple(v: &str) -> Result<[f32; 3], String> {
    let parts: Vec<f32> = v
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad triple {v:?}: expected three numbers R,G,B"))?;
    <[f32; 3]>::try_from(parts).map_err(|_| format!("bad triple {v:?}: expected three numbers"))
}

fn run() -> Result<(), String> {
    let mut labels: Option<PathBuf> = None;
    let mut flags: Vec<(String, String)> = Vec::new();
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else {
            paths.push(PathBuf::from(a));
            continue;
        };
        match s {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--labels" => labels = Some(it.next().ok_or("--labels needs a value")?.into()),
            "--arch" | "--num-heads" | "--item-size" | "--val-xtra" | "--size" | "--mean"
            | "--std" => {
                let v = it
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .ok_or_else(|| format!("{s} needs a value"))?;
                flags.push((s.to_string(), v));
            }
            f if f.starts_with("--") => return Err(format!("unknown option {f}\n\n{USAGE}")),
            _ => paths.push(PathBuf::from(s)),
        }
    }
    let [input, output] = <[PathBuf; 2]>::try_from(paths)
        .map_err(|_| format!("expected INPUT and OUTPUT\n\n{USAGE}"))?;
    if input == output {
        return Err("INPUT and OUTPUT are the same file".into());
    }

    // The input's own recipe (or the default), then the flags on top.
    let device = Device::Cpu;
    let mut recipe = FastaiWeights::load(&input, &device)
        .ok()
        .and_then(|w| w.recipe().ok())
        .unwrap_or_default();
    for (flag, v) in &flags {
        match flag.as_str() {
            "--arch" => recipe.arch = Some(v.clone()),
            "--num-heads" => {
                recipe.num_heads = Some(
                    v.parse()
                        .ok()
                        .filter(|&n: &usize| n > 0)
                        .ok_or("--num-heads needs a positive integer")?,
                )
            }
            "--item-size" => {
                let (h, w) = size(v)?;
                recipe.item_tfms.height = h;
                recipe.item_tfms.width = w;
            }
            "--val-xtra" => {
                recipe.item_tfms.val_xtra = v
                    .parse()
                    .ok()
                    .filter(|x: &f64| x.is_finite() && *x >= 0.0)
                    .ok_or("--val-xtra needs a number >= 0")?
            }
            "--size" => {
                let (h, w) = size(v)?;
                recipe.batch_tfms.height = h as usize;
                recipe.batch_tfms.width = w as usize;
            }
            "--mean" => recipe.batch_tfms.normalize.mean = triple(v)?,
            "--std" => {
                let s = triple(v)?;
                if s.iter().any(|x| !(*x > 0.0 && x.is_finite())) {
                    return Err("--std needs three positive numbers".into());
                }
                recipe.batch_tfms.normalize.std = s;
            }
            _ => unreachable!("flags are filtered above"),
        }
    }
    // Check the recipe the way a reader will.
    let recipe = Recipe::from_json(&recipe.to_json()).map_err(|e| format!("recipe: {e}"))?;

    let weights =
        FastaiWeights::load_with_recipe(&input, &recipe, &device).map_err(|e| e.to_string())?;
    let vocab = match &labels {
        Some(l) => Some(Vocab::from_labels_file(l).map_err(|e| e.to_string())?),
        None => weights.vocab().map_err(|e| e.to_string())?,
    };
    weights
        .save_safetensors(&output, vocab.as_ref(), &recipe)
        .map_err(|e| e.to_string())?;
    let cfg = weights.config();
    eprintln!(
        "wrote {} from {} ({}): {} tensors, {cfg}, {} classes, {}",
        output.display(),
        input.display(),
        weights.format(),
        weights.tensors().len(),
        cfg.num_classes(),
        match &vocab {
            Some(_) => "vocab included".to_string(),
            None => "NO vocab (pass --labels, or give predict --labels)".to_string(),
        }
    );
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
