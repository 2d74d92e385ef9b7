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
