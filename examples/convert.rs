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

use clap::Parser;
use fastai_infer::candle_core::Device;
use fastai_infer::{FastaiWeights, Recipe, Vocab};

#[path = "common/mod.rs"]
mod common;

use common::{at_least, LabelsArg, EXIT_USAGE};

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "convert",
    about = "Write fastai's learn.save output (or any weights file fastai-infer reads) as one \
             self-describing safetensors file: the state_dict, the vocab and the preprocessing \
             recipe",
    after_help = "exit codes: 0 written, 2 bad arguments or input",
    args_override_self = true
)]
pub(crate) struct Args {
    /// fastai's state_dict: learn.save's .pth (with or without the optimizer state; f32, f16 or
    /// bf16) or a safetensors file
    #[arg(value_name = "INPUT")]
    input: PathBuf,

    /// the safetensors file to write (f32 tensors, vocab and recipe in the metadata)
    #[arg(value_name = "OUTPUT")]
    output: PathBuf,

    #[command(flatten)]
    labels: LabelsArg,

    #[command(flatten)]
    recipe: RecipeArgs,
}

/// The recipe flags: each replaces one field of the input's recipe.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Recipe (default: the input's recipe, else the pets lesson's)")]
struct RecipeArgs {
    /// timm model name, e.g. vit_small_patch16_224 (fixes the attention heads)
    #[arg(long, value_name = "NAME")]
    arch: Option<String>,

    /// attention heads, when the name does not tell
    #[arg(long, value_name = "N", value_parser = at_least::<usize, 1>)]
    num_heads: Option<usize>,

    /// RandomResizedCrop size: N or HxW (pets: 460)
    #[arg(long, value_name = "S", value_parser = size)]
    item_size: Option<(u32, u32)>,

    /// RandomResizedCrop val_xtra (fastai's default 0.14)
    #[arg(long, value_name = "F", value_parser = val_xtra)]
    val_xtra: Option<f64>,

    /// aug_transforms size: N or HxW, the model's input (pets: 224)
    #[arg(long, value_name = "S", value_parser = size)]
    size: Option<(u32, u32)>,

    /// Normalize mean (default ImageNet's)
    #[arg(long, value_name = "R,G,B", value_parser = triple)]
    mean: Option<[f32; 3]>,

    /// Normalize std (default ImageNet's)
    #[arg(long, value_name = "R,G,B", value_parser = positive_triple)]
    std: Option<[f32; 3]>,
}

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

fn positive_triple(v: &str) -> Result<[f32; 3], String> {
    let s = triple(v)?;
    if s.iter().any(|x| !(*x > 0.0 && x.is_finite())) {
        return Err("expected three positive numbers".into());
    }
    Ok(s)
}

fn val_xtra(v: &str) -> Result<f64, String> {
    v.parse()
        .ok()
        .filter(|x: &f64| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| "expected a number >= 0".into())
}

pub(crate) fn run(args: Args) -> Result<(), String> {
    let Args {
        input,
        output,
        labels: LabelsArg { labels },
        recipe: flags,
    } = args;
    if input == output {
        return Err("INPUT and OUTPUT are the same file".into());
    }

    // The input's own recipe (or the default), then the flags on top.
    let device = Device::Cpu;
    let mut recipe = FastaiWeights::load(&input, &device)
        .ok()
        .and_then(|w| w.recipe().ok())
        .unwrap_or_default();
    if let Some(arch) = flags.arch {
        recipe.arch = Some(arch);
    }
    if let Some(n) = flags.num_heads {
        recipe.num_heads = Some(n);
    }
    if let Some((h, w)) = flags.item_size {
        recipe.item_tfms.height = h;
        recipe.item_tfms.width = w;
    }
    if let Some(x) = flags.val_xtra {
        recipe.item_tfms.val_xtra = x;
    }
    if let Some((h, w)) = flags.size {
        recipe.batch_tfms.height = h as usize;
        recipe.batch_tfms.width = w as usize;
    }
    if let Some(m) = flags.mean {
        recipe.batch_tfms.normalize.mean = m;
    }
    if let Some(s) = flags.std {
        recipe.batch_tfms.normalize.std = s;
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
    match run(common::parse_or_exit()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
