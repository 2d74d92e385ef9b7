//! Convert fastai's `learn.save` output (`.pth`) — or any weights file fastai-infer reads —
//! into one self-describing safetensors file: the state_dict, the vocab and the
//! preprocessing recipe.
//!
//! ```text
//! cargo run --release --example convert -- [--labels FILE] [--recipe FILE] [recipe flags] INPUT OUTPUT.safetensors
//! ```
//!
//! The recipe is the input's own (else the pets lesson's), replaced by `--recipe FILE` (a
//! recipe JSON, version 1 or 2, see `fastai_infer::recipe`), then changed by the flags: e.g.
//! for `item_tfms=Resize(224)`, `vision_learner(dls, resnet34)` saved with `learn.save`:
//! `--arch resnet34 --resize 224 --size item`; for a multi-label learner add
//! `--multi-label 0.5`.
//!
//! Exit codes: 0 written; 2 bad arguments, or an input that is not fastai ViT weights.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fastai_infer::batch_tfms::{Affine, Normalize};
use fastai_infer::candle_core::Device;
use fastai_infer::item_tfms::{
    CropPad, ItemTfm, ItemTfms, PadMode, RandomResizedCrop, Resample, Resize, ResizeMethod,
};
use fastai_infer::{FastaiWeights, LossFunc, Recipe, Vocab};

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
    /// a recipe JSON file (the "fastai_infer.recipe" object, version 1 or 2) to start from
    /// instead of the input's; the flags below change it
    #[arg(long, value_name = "FILE")]
    recipe: Option<PathBuf>,

    /// model name: timm's (vit_small_patch16_224, convnext_tiny) or torchvision's (resnet34)
    #[arg(long, value_name = "NAME")]
    arch: Option<String>,

    /// attention heads, when the name does not tell
    #[arg(long, value_name = "N", value_parser = at_least::<usize, 1>)]
    num_heads: Option<usize>,

    /// item_tfms=RandomResizedCrop(S): N or HxW (pets: 460)
    #[arg(long, value_name = "S", value_parser = size, conflicts_with = "resize")]
    item_size: Option<(u32, u32)>,

    /// RandomResizedCrop val_xtra (fastai's default 0.14)
    #[arg(long, value_name = "F", value_parser = val_xtra)]
    val_xtra: Option<f64>,

    /// item_tfms=Resize(S): N or HxW
    #[arg(long, value_name = "S", value_parser = size)]
    resize: Option<(u32, u32)>,

    /// Resize method
    #[arg(long, value_name = "METHOD", value_parser = ["crop", "squish", "pad"])]
    method: Option<String>,

    /// Resize or CropPad pad_mode (default: Resize reflection, CropPad zeros)
    #[arg(long, value_name = "MODE", value_parser = ["reflection", "zeros", "border"])]
    pad_mode: Option<String>,

    /// the item transform's PIL resample filter
    #[arg(long, value_name = "FILTER", value_parser = ["bilinear", "nearest"])]
    resample: Option<String>,

    /// a CropPad(S) item transform (N or HxW) before the Resize / RandomResizedCrop, or alone
    #[arg(long, value_name = "S", value_parser = size)]
    crop_pad: Option<(u32, u32)>,

    /// aug_transforms size: N or HxW, the model's input (pets: 224); "item" for
    /// aug_transforms() without a size (resampled at the item's size), "none" for no
    /// aug_transforms
    #[arg(long, value_name = "S", value_parser = batch_size)]
    size: Option<BatchSize>,

    /// Normalize mean (default ImageNet's)
    #[arg(long, value_name = "R,G,B", value_parser = triple)]
    mean: Option<[f32; 3]>,

    /// Normalize std (default ImageNet's)
    #[arg(long, value_name = "R,G,B", value_parser = positive_triple)]
    std: Option<[f32; 3]>,

    /// no Normalize batch transform (vision_learner(..., pretrained=False) adds none)
    #[arg(long, conflicts_with_all = ["mean", "std"])]
    no_normalize: bool,

    /// a multi-label learner (BCEWithLogitsLossFlat): labels where the sigmoid > THRESH
    #[arg(long, value_name = "THRESH", value_parser = thresh)]
    multi_label: Option<f32>,
}

/// `--size`: the batch transforms' resampling.
#[derive(Debug, Clone, Copy)]
enum BatchSize {
    To(u32, u32),
    Item,
    None,
}

fn batch_size(v: &str) -> Result<BatchSize, String> {
    match v {
        "item" => Ok(BatchSize::Item),
        "none" => Ok(BatchSize::None),
        _ => size(v).map(|(h, w)| BatchSize::To(h, w)),
    }
}

fn thresh(v: &str) -> Result<f32, String> {
    v.parse()
        .ok()
        .filter(|x: &f32| x.is_finite())
        .ok_or_else(|| "expected a number".into())
}

/// Applies the flags to `recipe`.
fn apply(recipe: &mut Recipe, flags: RecipeArgs) -> Result<(), String> {
    if let Some(arch) = flags.arch {
        recipe.arch = Some(arch);
    }
    if let Some(n) = flags.num_heads {
        recipe.num_heads = Some(n);
    }
    let pad_mode = flags.pad_mode.as_deref().and_then(PadMode::parse);
    let resample = flags.resample.as_deref().and_then(Resample::parse);
    // The main (sizing) item step: the flags' own, else the recipe's last step changed.
    let mut steps = recipe.item_tfms.steps().to_vec();
    let crop_pad = match steps.first() {
        Some(ItemTfm::CropPad(c)) if steps.len() > 1 => Some(*c),
        _ => None,
    };
    let mut main = steps.pop();
    if let Some(ItemTfm::CropPad(_)) = main {
        if flags.resize.is_some() || flags.item_size.is_some() {
            main = None;
        }
    }
    if let Some((h, w)) = flags.resize {
        main = Some(Resize::with_size(h, w).into());
    }
    if let Some((h, w)) = flags.item_size {
        let mut t = match main {
            Some(ItemTfm::RandomResizedCrop(t)) => t,
            _ => RandomResizedCrop::new(h),
        };
        (t.height, t.width) = (h, w);
        main = Some(t.into());
    }
    match &mut main {
        Some(ItemTfm::Resize(r)) => {
            if let Some(m) = flags.method.as_deref().and_then(ResizeMethod::parse) {
                r.method = m;
            }
            if let Some(p) = pad_mode {
                r.pad_mode = p;
            }
            if let Some(s) = resample {
                r.resample = s;
            }
            if flags.val_xtra.is_some() {
                return Err(
                    "--val-xtra is RandomResizedCrop's; the item transform is a Resize".into(),
                );
            }
        }
        Some(ItemTfm::RandomResizedCrop(t)) => {
            if let Some(x) = flags.val_xtra {
                t.val_xtra = x;
            }
            if let Some(s) = resample {
                t.resample = s;
            }
            if flags.method.is_some() {
                return Err("--method is Resize's; the item transform is a RandomResizedCrop (use --resize)".into());
            }
        }
        _ => {}
    }
    let crop_pad = match flags.crop_pad {
        Some((h, w)) => {
            let mut c = CropPad::with_size(h, w);
            if let (Some(p), None) = (pad_mode, &main) {
                c.pad_mode = p;
            }
            Some(c)
        }
        None => crop_pad,
    };
    let mut out: Vec<ItemTfm> = crop_pad.into_iter().map(ItemTfm::from).collect();
    out.extend(main);
    recipe.item_tfms = ItemTfms(out);
    match flags.size {
        Some(BatchSize::To(h, w)) => {
            recipe.batch_tfms.affine = Affine::ToSize;
            recipe.batch_tfms.height = h as usize;
            recipe.batch_tfms.width = w as usize;
        }
        Some(BatchSize::Item) => recipe.batch_tfms.affine = Affine::ItemSize,
        Some(BatchSize::None) => recipe.batch_tfms.affine = Affine::None,
        None => {}
    }
    if flags.no_normalize {
        recipe.batch_tfms.normalize = Normalize::identity();
    }
    if let Some(m) = flags.mean {
        recipe.batch_tfms.normalize.mean = m;
    }
    if let Some(s) = flags.std {
        recipe.batch_tfms.normalize.std = s;
    }
    if let Some(t) = flags.multi_label {
        recipe.loss_func = LossFunc::BCEWithLogitsLossFlat { thresh: t };
    }
    Ok(())
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
    let mut recipe = match &flags.recipe {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("--recipe {}: {e}", file.display()))?;
            Recipe::from_json(&text).map_err(|e| format!("--recipe {}: {e}", file.display()))?
        }
        None => FastaiWeights::load(&input, &device)
            .ok()
            .and_then(|w| w.recipe().ok())
            .unwrap_or_default(),
    };
    apply(&mut recipe, flags)?;
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
