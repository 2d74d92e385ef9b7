//! Stage 4, the model: fastai's `vision_learner` on a timm ViT, i.e.
//! `nn.Sequential(TimmBody(vit), create_head(...))`.
//!
//! [`vit::VisionTransformer`] is the body (fastai's `0.model.*` keys), [`head::FastaiHead`] the
//! head (`1.N.*` keys), and [`FastaiVit`] the two in sequence.

pub(crate) mod cpu;
pub mod head;
pub mod vit;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

pub use head::{BatchNorm1d, FastaiHead};
pub use vit::VisionTransformer;

/// The architecture's dimensions. [`Config::default`] is `vit_tiny_patch16_224` with fastai's
/// default head for the 37 pets breeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Token width (192 for ViT-tiny).
    pub embed_dim: usize,
    /// Number of transformer blocks (12).
    pub depth: usize,
    /// Attention heads (3 for ViT-tiny).
    pub num_heads: usize,
    /// MLP hidden width as a multiple of `embed_dim` (4).
    pub mlp_ratio: usize,
    /// Patch side in pixels (16).
    pub patch_size: usize,
    /// Input image side in pixels (224).
    pub img_size: usize,
    /// Input channels (3).
    pub in_chans: usize,
    /// Hidden width of fastai's head (`lin_ftrs`, 512).
    pub head_hidden: usize,
    /// Number of classes (the head's output, from `1.6.weight`).
    pub num_classes: usize,
    /// timm's LayerNorm epsilon (1e-6).
    pub layer_norm_eps: f64,
    /// PyTorch's BatchNorm1d epsilon (1e-5).
    pub batch_norm_eps: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config::vit_tiny_patch16_224(37)
    }
}

impl Config {
    /// `vit_tiny_patch16_224` with fastai's head for `num_classes` classes.
    pub fn vit_tiny_patch16_224(num_classes: usize) -> Self {
        Config {
            embed_dim: 192,
            depth: 12,
            num_heads: 3,
            mlp_ratio: 4,
            patch_size: 16,
            img_size: 224,
            in_chans: 3,
            head_hidden: 512,
            num_classes,
            layer_norm_eps: 1e-6,
            batch_norm_eps: 1e-5,
        }
    }

    /// The architecture of a fastai ViT `vision_learner` read off its state_dict's shapes
    /// (`shapes` maps each key to its shape) for `img_size`-pixel square inputs (the recipe's
    /// batch size, which `0.model.pos_embed` must then fit):
    /// `embed_dim`, `in_chans` and `patch_size` from `0.model.patch_embed.proj.weight`
    /// `(embed_dim, in_chans, patch, patch)`; `depth` from the highest `0.model.blocks.N.` key;
    /// `mlp_ratio` from `blocks.0.mlp.fc1.weight`; `head_hidden` and `num_classes` from
    /// `1.2.weight` and `1.6.weight`.
    ///
    /// The number of attention heads does not show in any shape. It comes from `num_heads`
    /// when given, else from the timm `arch` name when it is a known ViT size (`tiny` 3,
    /// `small` 6, `base` 12, `large` 16, `huge` 16), else it is `embed_dim / 64`: every timm ViT
    /// size uses 64-wide heads.
    ///
    /// The error says which key is missing or has the wrong shape: a file that is not a
    /// fastai ViT learner stops here.
    pub fn infer(
        shapes: &std::collections::HashMap<String, Vec<usize>>,
        img_size: usize,
        arch: Option<&str>,
        num_heads: Option<usize>,
    ) -> Result<Self, String> {
        let get = |key: &str, rank: usize| -> Result<&[usize], String> {
            match shapes.get(key) {
                None => Err(format!("no {key}")),
                Some(s) if s.len() != rank => {
                    Err(format!("{key} has shape {s:?}, expected {rank} dimensions"))
                }
                Some(s) if s.contains(&0) => Err(format!("{key} has an empty shape {s:?}")),
                Some(s) => Ok(s.as_slice()),
            }
        };
        let pe = get("0.model.patch_embed.proj.weight", 4)?;
        let (embed_dim, in_chans, patch_size) = (pe[0], pe[1], pe[2]);
        if pe[3] != patch_size {
            return Err(format!(
                "0.model.patch_embed.proj.weight has shape {pe:?}: patches are not square"
            ));
        }
        let depth = shapes
            .keys()
            .filter_map(|k| {
                k.strip_prefix("0.model.blocks.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |last| last + 1);
        if depth == 0 {
            return Err("no 0.model.blocks.N.* keys: no transformer blocks".into());
        }
        let fc1 = get("0.model.blocks.0.mlp.fc1.weight", 2)?;
        if fc1[1] != embed_dim || !fc1[0].is_multiple_of(embed_dim) {
            return Err(format!(
                "0.model.blocks.0.mlp.fc1.weight has shape {fc1:?}; expected (k * {embed_dim}, {embed_dim})"
            ));
        }
        let lin2 = get("1.2.weight", 2)?;
        let lin6 = get("1.6.weight", 2)?;
        let heads = match num_heads {
            Some(h) => h,
            None => {
                let known = arch.and_then(|a| {
                    [
                        ("tiny", 3),
                        ("small", 6),
                        ("base", 12),
                        ("large", 16),
                        ("huge", 16),
                    ]
                    .into_iter()
                    .find(|(size, _)| a.starts_with("vit_") && a.split('_').nth(1) == Some(*size))
                    .map(|(_, h)| h)
                });
                known.unwrap_or(embed_dim / 64)
            }
        };
        if heads == 0 || !embed_dim.is_multiple_of(heads) {
            return Err(format!(
                "{heads} attention heads do not divide the {embed_dim}-wide tokens"
            ));
        }
        Ok(Config {
            embed_dim,
            depth,
            num_heads: heads,
            mlp_ratio: fc1[0] / embed_dim,
            patch_size,
            img_size,
            in_chans,
            head_hidden: lin2[0],
            num_classes: lin6[0],
            layer_norm_eps: 1e-6,
            batch_norm_eps: 1e-5,
        })
    }

    /// Patches per image side squared (196 for ViT-tiny at 224).
    pub fn num_patches(&self) -> usize {
        let g = self.img_size / self.patch_size;
        g * g
    }

    /// The MLP's hidden width (768 for ViT-tiny).
    pub fn mlp_hidden(&self) -> usize {
        self.embed_dim * self.mlp_ratio
    }

    /// Every key of fastai's state_dict for this architecture, with its shape, in the order
    /// PyTorch writes them.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.embed_dim;
        let h = self.mlp_hidden();
        let p = self.patch_size;
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("0.model.cls_token".into(), vec![1, 1, d]),
            (
                "0.model.pos_embed".into(),
                vec![1, self.num_patches() + 1, d],
            ),
            (
                "0.model.patch_embed.proj.weight".into(),
                vec![d, self.in_chans, p, p],
            ),
            ("0.model.patch_embed.proj.bias".into(), vec![d]),
        ];
        for i in 0..self.depth {
            let b = format!("0.model.blocks.{i}");
            v.extend([
                (format!("{b}.norm1.weight"), vec![d]),
                (format!("{b}.norm1.bias"), vec![d]),
                (format!("{b}.attn.qkv.weight"), vec![3 * d, d]),
                (format!("{b}.attn.qkv.bias"), vec![3 * d]),
                (format!("{b}.attn.proj.weight"), vec![d, d]),
                (format!("{b}.attn.proj.bias"), vec![d]),
                (format!("{b}.norm2.weight"), vec![d]),
                (format!("{b}.norm2.bias"), vec![d]),
                (format!("{b}.mlp.fc1.weight"), vec![h, d]),
                (format!("{b}.mlp.fc1.bias"), vec![h]),
                (format!("{b}.mlp.fc2.weight"), vec![d, h]),
                (format!("{b}.mlp.fc2.bias"), vec![d]),
            ]);
        }
        v.push(("0.model.norm.weight".into(), vec![d]));
        v.push(("0.model.norm.bias".into(), vec![d]));
        for (idx, n) in [(0, d), (4, self.head_hidden)] {
            for name in ["weight", "bias", "running_mean", "running_var"] {
                v.push((format!("1.{idx}.{name}"), vec![n]));
            }
            v.push((format!("1.{idx}.num_batches_tracked"), vec![]));
        }
        v.push(("1.2.weight".into(), vec![self.head_hidden, d]));
        v.push((
            "1.6.weight".into(),
            vec![self.num_classes, self.head_hidden],
        ));
        v
    }
}

/// fastai's model: `nn.Sequential(body, head)`, mapping a normalized `(B, 3, 224, 224)` batch
/// to `(B, num_classes)` logits.
#[derive(Debug, Clone)]
pub struct FastaiVit {
    /// fastai's `0` (`TimmBody`), whose `model` is the timm ViT.
    pub body: VisionTransformer,
    /// fastai's `1`, the classification head.
    pub head: FastaiHead,
    cfg: Config,
}

impl FastaiVit {
    /// Builds the model from a `VarBuilder` holding fastai's state_dict keys.
    pub fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(FastaiVit {
            body: VisionTransformer::new(cfg, vb.pp("0").pp("model"))?,
            head: FastaiHead::new(cfg, vb.pp("1"))?,
            cfg: cfg.clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> candle_core::Device {
        self.head.device()
    }
}

impl Module for FastaiVit {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.head.forward(&self.body.forward(x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn shapes(cfg: &Config) -> HashMap<String, Vec<usize>> {
        cfg.state_dict_shapes().into_iter().collect()
    }

    #[test]
    fn infers_vit_tiny_and_other_sizes_from_shapes() {
        let tiny = Config::vit_tiny_patch16_224(37);
        assert_eq!(
            Config::infer(&shapes(&tiny), 224, None, None).unwrap(),
            tiny
        );
        let small = Config {
            embed_dim: 384,
            num_heads: 6,
            num_classes: 5,
            ..tiny.clone()
        };
        let s = shapes(&small);
        // From the arch name, from the 64-wide-heads rule, and given explicitly.
        assert_eq!(
            Config::infer(&s, 224, Some("vit_small_patch16_224"), None).unwrap(),
            small
        );
        assert_eq!(Config::infer(&s, 224, None, None).unwrap(), small);
        let eight = Config::infer(&s, 224, Some("vit_small_patch16_224"), Some(8)).unwrap();
        assert_eq!(eight.num_heads, 8);
        let base32 = Config {
            embed_dim: 768,
            num_heads: 12,
            patch_size: 32,
            img_size: 384,
            depth: 2,
            ..tiny.clone()
        };
        assert_eq!(
            Config::infer(&shapes(&base32), 384, Some("vit_base_patch32_384"), None).unwrap(),
            base32
        );
    }

    #[test]
    fn says_what_is_missing_or_wrong() {
        let tiny = Config::vit_tiny_patch16_224(37);
        let mut s = shapes(&tiny);
        s.remove("0.model.patch_embed.proj.weight");
        let e = Config::infer(&s, 224, None, None).unwrap_err();
        assert!(e.contains("no 0.model.patch_embed.proj.weight"), "{e}");
        let mut s = shapes(&tiny);
        s.insert(
            "0.model.patch_embed.proj.weight".into(),
            vec![192, 3, 16, 8],
        );
        assert!(Config::infer(&s, 224, None, None)
            .unwrap_err()
            .contains("not square"));
        let s: HashMap<String, Vec<usize>> = shapes(&tiny)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("0.model.blocks."))
            .collect();
        assert!(Config::infer(&s, 224, None, None)
            .unwrap_err()
            .contains("no transformer blocks"));
        let mut s = shapes(&tiny);
        s.remove("1.6.weight");
        assert!(Config::infer(&s, 224, None, None)
            .unwrap_err()
            .contains("1.6.weight"));
        let s = shapes(&tiny);
        assert!(Config::infer(&s, 224, None, Some(5))
            .unwrap_err()
            .contains("heads"));
    }
}
