//! The body: timm's `VisionTransformer` as built by
//! `timm.create_model('vit_tiny_patch16_224', num_classes=0)`, in candle-nn.
//!
//! Struct and field names mirror timm's module names, so each weight's key reads off the
//! struct path (`blocks.3.attn.qkv.weight` is `VisionTransformer::blocks[3].attn.qkv`).
//! fastai's `TimmBody` holds it as `model`, so its state_dict keys start with `0.model.`; the
//! model returns the pooled (final-normed class token) features, and fastai's head
//! ([`super::head`]) is built with `pool=False`.

use std::collections::HashMap;

use candle_core::{Module, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};

use super::cpu::kernels::Simd;
use super::cpu::packed::{Layout, PackedB};
use super::{check, shape_of};
use crate::error::{Error, Result};

/// The prefix of the body's keys in fastai's state_dict.
pub const PREFIX: &str = "0.model.";

/// The ViT body's dimensions. [`Config::default`] is `vit_tiny_patch16_224`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
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
    /// Input image side in pixels (224): `pos_embed` holds one position per patch of it.
    pub img_size: usize,
    /// Input channels (3).
    pub in_chans: usize,
    /// timm's LayerNorm epsilon (1e-6).
    pub layer_norm_eps: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config::vit_tiny_patch16_224()
    }
}

impl Config {
    /// `vit_tiny_patch16_224`.
    pub fn vit_tiny_patch16_224() -> Self {
        Config {
            embed_dim: 192,
            depth: 12,
            num_heads: 3,
            mlp_ratio: 4,
            patch_size: 16,
            img_size: 224,
            in_chans: 3,
            layer_norm_eps: 1e-6,
        }
    }

    /// The body of a fastai ViT `vision_learner` read off its state_dict's shapes (`shapes`
    /// maps each key to its shape) for `img_size`-pixel square inputs (the recipe's batch
    /// size, which `0.model.pos_embed` must then fit): `embed_dim`, `in_chans` and
    /// `patch_size` from `0.model.patch_embed.proj.weight` `(embed_dim, in_chans, patch,
    /// patch)`; `depth` from the highest `0.model.blocks.N.` key; `mlp_ratio` from
    /// `blocks.0.mlp.fc1.weight`.
    ///
    /// The number of attention heads does not show in any shape. It comes from `num_heads`
    /// when given, else from the timm `arch` name when it is a known ViT size (`tiny` 3,
    /// `small` 6, `base` 12, `large` 16, `huge` 16), else it is `embed_dim / 64`: every timm ViT
    /// size uses 64-wide heads.
    ///
    /// The error ([`Error::NotFastaiLearner`], or [`Error::InvalidConfig`] for heads that do
    /// not divide the width) says which key is missing or has the wrong shape.
    pub fn infer(
        shapes: &HashMap<String, Vec<usize>>,
        img_size: usize,
        arch: Option<&str>,
        num_heads: Option<usize>,
    ) -> Result<Self> {
        let get = |key: &str, rank: usize| shape_of(shapes, key, rank);
        let pe = get("0.model.patch_embed.proj.weight", 4)?;
        let (embed_dim, in_chans, patch_size) = (pe[0], pe[1], pe[2]);
        check(shapes, pe[3] == patch_size, || {
            format!("0.model.patch_embed.proj.weight has shape {pe:?}: patches are not square")
        })?;
        let depth = super::count_indexed(shapes, "0.model.blocks.");
        check(shapes, depth > 0, || {
            "no 0.model.blocks.N.* keys: no transformer blocks".into()
        })?;
        let fc1 = get("0.model.blocks.0.mlp.fc1.weight", 2)?;
        check(
            shapes,
            fc1[1] == embed_dim && fc1[0].is_multiple_of(embed_dim),
            || {
                format!(
                    "0.model.blocks.0.mlp.fc1.weight has shape {fc1:?}; expected (k * {embed_dim}, {embed_dim})"
                )
            },
        )?;
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
        let cfg = Config {
            embed_dim,
            depth,
            num_heads: heads,
            mlp_ratio: fc1[0] / embed_dim,
            patch_size,
            img_size,
            in_chans,
            layer_norm_eps: 1e-6,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that every size is positive, the heads divide `embed_dim`, and `img_size` is a
    /// whole number of patches; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(Error::InvalidConfig {
                field: format!("vit.{field}"),
                reason,
            })
        };
        for (field, v) in [
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("mlp_ratio", self.mlp_ratio),
            ("patch_size", self.patch_size),
            ("img_size", self.img_size),
            ("in_chans", self.in_chans),
        ] {
            if v == 0 {
                return bad(field, "is 0".into());
            }
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return bad(
                "num_heads",
                format!(
                    "is {}, which does not divide embed_dim {}",
                    self.num_heads, self.embed_dim
                ),
            );
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            return bad(
                "img_size",
                format!(
                    "is {}, not a whole number of {}-pixel patches",
                    self.img_size, self.patch_size
                ),
            );
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad(
                "layer_norm_eps",
                format!("is {}, expected a positive number", self.layer_norm_eps),
            );
        }
        Ok(())
    }

    /// Patches per image side squared (196 for ViT-tiny at 224).
    pub fn num_patches(&self) -> usize {
        let g = self.img_size / self.patch_size.max(1);
        g * g
    }

    /// The MLP's hidden width (768 for ViT-tiny).
    pub fn mlp_hidden(&self) -> usize {
        self.embed_dim * self.mlp_ratio
    }

    /// Every key of the body in fastai's state_dict (`0.model.*`), with its shape, in the order
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
        v
    }
}

/// `nn.Linear`: `y = x · Wᵀ + b`. Loads PyTorch's `weight` `(out, in)` and `bias`.
///
/// On the CPU, at [`Simd::Avx2`] or above, the weight is kept only packed for the fast path's
/// kernels (the generic candle forward pass unpacks it when it runs); otherwise it is kept
/// transposed, `(in, out)` row-major, the layout candle's matmul and the general matmul
/// multiply fastest.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) weight: LinearWeight,
    pub(crate) bias: Option<Tensor>,
}

/// A linear layer's weight `Wᵀ` `(in, out)`, in one of two forms.
#[derive(Debug, Clone)]
pub(crate) enum LinearWeight {
    /// Row-major `(in, out)`, on any device.
    Dense(Tensor),
    /// Packed for the CPU fast path's kernels (CPU, f32, AVX2 + FMA or AVX-512).
    Packed(PackedB),
}

impl LinearWeight {
    /// The weight of a layer from PyTorch's `(out, in)` tensor: packed straight from it when
    /// `level` allows and it is an f32 CPU tensor whose `out` is a multiple of 32, else
    /// transposed.
    fn from_out_in(w: Tensor, level: Simd) -> candle_core::Result<Self> {
        let (out, inp) = w.dims2()?;
        if level >= Simd::Avx2 {
            let layout = Layout::for_level(level);
            if let Some(Some(p)) =
                super::cpu::with_host_slice(&w, |v| PackedB::from_out_in(v, out, inp, layout))
            {
                return Ok(LinearWeight::Packed(p));
            }
        }
        Ok(LinearWeight::Dense(w.t()?.contiguous()?))
    }

    /// The same weight in the form a model at `level` uses (packed in `level`'s layout where
    /// possible); the values are only moved, never recomputed.
    fn at_level(&self, level: Simd) -> candle_core::Result<Self> {
        let want = (level >= Simd::Avx2).then(|| Layout::for_level(level));
        match self {
            LinearWeight::Packed(p) if Some(p.layout()) == want => Ok(self.clone()),
            LinearWeight::Packed(p) => {
                let (k, n) = p.dims();
                let values = p.unpack();
                if let Some(layout) = want {
                    if let Some(p) = PackedB::with_layout(&values, k, n, layout) {
                        return Ok(LinearWeight::Packed(p));
                    }
                }
                Ok(LinearWeight::Dense(Tensor::from_vec(
                    values,
                    (k, n),
                    &candle_core::Device::Cpu,
                )?))
            }
            LinearWeight::Dense(t) => {
                if let Some(layout) = want {
                    let (k, n) = t.dims2()?;
                    if let Some(Some(p)) =
                        super::cpu::with_host_slice(t, |v| PackedB::with_layout(v, k, n, layout))
                    {
                        return Ok(LinearWeight::Packed(p));
                    }
                }
                Ok(self.clone())
            }
        }
    }

    /// `Wᵀ` `(in, out)` as a tensor (a packed weight unpacked into a new one).
    pub(crate) fn dense(&self) -> candle_core::Result<Tensor> {
        match self {
            LinearWeight::Dense(t) => Ok(t.clone()),
            LinearWeight::Packed(p) => {
                Tensor::from_vec(p.unpack(), p.dims(), &candle_core::Device::Cpu)
            }
        }
    }
}

impl Linear {
    /// Loads `weight` `(out_dim, in_dim)` and, when `with_bias`, `bias` `(out_dim)`, for a
    /// model at `level`.
    pub(crate) fn new(
        in_dim: usize,
        out_dim: usize,
        with_bias: bool,
        vb: VarBuilder,
        level: Simd,
    ) -> candle_core::Result<Self> {
        let weight = LinearWeight::from_out_in(vb.get((out_dim, in_dim), "weight")?, level)?;
        let bias = if with_bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    fn at_level(&self, level: Simd) -> candle_core::Result<Self> {
        Ok(Linear {
            weight: self.weight.at_level(level)?,
            bias: self.bias.clone(),
        })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.broadcast_matmul(&self.weight.dense()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

fn linear(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
    level: Simd,
) -> candle_core::Result<Linear> {
    Linear::new(in_dim, out_dim, true, vb, level)
}

/// timm's `PatchEmbed`: a 16x16 stride-16 convolution, computed as one matmul over the
/// flattened patches.
#[derive(Debug, Clone)]
pub(crate) struct PatchEmbed {
    /// `proj.weight` reshaped to `(embed_dim, 3 * patch * patch)`, as a linear layer's.
    pub(crate) weight: LinearWeight,
    /// `proj.bias`.
    pub(crate) bias: Tensor,
    patch_size: usize,
    embed_dim: usize,
}

impl PatchEmbed {
    /// Loads `proj.weight` `(embed_dim, 3, patch, patch)` and `proj.bias`.
    pub(crate) fn new(cfg: &Config, vb: VarBuilder, level: Simd) -> candle_core::Result<Self> {
        let p = cfg.patch_size;
        let vb = vb.pp("proj");
        let w = vb.get((cfg.embed_dim, cfg.in_chans, p, p), "weight")?;
        let weight =
            LinearWeight::from_out_in(w.reshape((cfg.embed_dim, cfg.in_chans * p * p))?, level)?;
        let bias = vb.get(cfg.embed_dim, "bias")?;
        Ok(PatchEmbed {
            weight,
            bias,
            patch_size: p,
            embed_dim: cfg.embed_dim,
        })
    }

    fn at_level(&self, level: Simd) -> candle_core::Result<Self> {
        Ok(PatchEmbed {
            weight: self.weight.at_level(level)?,
            ..self.clone()
        })
    }
}

impl Module for PatchEmbed {
    /// `(B, C, H, W)` to `(B, num_patches, embed_dim)`, patches in row-major order.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * p * p))?;
        let y = patches
            .matmul(&self.weight.dense()?)?
            .broadcast_add(&self.bias)?;
        y.reshape((b, gh * gw, self.embed_dim))
    }
}

/// timm's `Attention`: fused `qkv` linear, scaled dot-product attention, `proj`.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    pub(crate) qkv: Linear,
    pub(crate) proj: Linear,
    num_heads: usize,
    scale: f64,
}

impl Attention {
    /// Loads `qkv.*` and `proj.*`.
    pub(crate) fn new(cfg: &Config, vb: VarBuilder, level: Simd) -> candle_core::Result<Self> {
        let dim = cfg.embed_dim;
        Ok(Attention {
            qkv: linear(dim, dim * 3, vb.pp("qkv"), level)?,
            proj: linear(dim, dim, vb.pp("proj"), level)?,
            num_heads: cfg.num_heads,
            scale: 1.0 / ((dim / cfg.num_heads) as f64).sqrt(),
        })
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let hd = c / self.num_heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, n, 3, self.num_heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * self.scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let attn = q.matmul(&k.t()?)?;
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let y = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        self.proj.forward(&y)
    }
}

/// timm's `Mlp`: `fc1`, exact (erf) GELU, `fc2`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
}

impl Mlp {
    /// Loads `fc1.*` and `fc2.*`.
    pub(crate) fn new(cfg: &Config, vb: VarBuilder, level: Simd) -> candle_core::Result<Self> {
        let hidden = cfg.mlp_hidden();
        Ok(Mlp {
            fc1: linear(cfg.embed_dim, hidden, vb.pp("fc1"), level)?,
            fc2: linear(hidden, cfg.embed_dim, vb.pp("fc2"), level)?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu_erf()?)
    }
}

/// timm's pre-norm transformer `Block`.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) norm1: LayerNorm,
    pub(crate) attn: Attention,
    pub(crate) norm2: LayerNorm,
    pub(crate) mlp: Mlp,
}

fn ln(cfg: &Config, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    super::layers::layer_norm(cfg.embed_dim, cfg.layer_norm_eps, vb)
}

impl Block {
    /// Loads `norm1`, `attn`, `norm2`, `mlp`.
    pub(crate) fn new(cfg: &Config, vb: VarBuilder, level: Simd) -> candle_core::Result<Self> {
        Ok(Block {
            norm1: ln(cfg, vb.pp("norm1"))?,
            attn: Attention::new(cfg, vb.pp("attn"), level)?,
            norm2: ln(cfg, vb.pp("norm2"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"), level)?,
        })
    }

    fn at_level(&self, level: Simd) -> candle_core::Result<Self> {
        let mut b = self.clone();
        b.attn.qkv = b.attn.qkv.at_level(level)?;
        b.attn.proj = b.attn.proj.at_level(level)?;
        b.mlp.fc1 = b.mlp.fc1.at_level(level)?;
        b.mlp.fc2 = b.mlp.fc2.at_level(level)?;
        Ok(b)
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}

/// timm's `VisionTransformer` with `num_classes=0` and `global_pool='token'`: returns the
/// final-normed class token, `(B, embed_dim)`.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    pub(crate) patch_embed: PatchEmbed,
    pub(crate) cls_token: Tensor,
    pub(crate) pos_embed: Tensor,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm: LayerNorm,
    pub(crate) cfg: Config,
    /// The instruction sets the CPU fast path uses for this model.
    pub(crate) simd: Simd,
    /// Reused buffers of the CPU fast path.
    pub(crate) workspaces: super::cpu::WorkspacePool,
}

impl VisionTransformer {
    /// Loads the body from `vb` rooted at timm's names (fastai's `0.model.`), after
    /// [`Config::validate`], for the CPU fast path at [`Simd::from_env`].
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Self::with_level(cfg, vb, Simd::from_env())
    }

    fn with_level(cfg: &Config, vb: VarBuilder, level: Simd) -> Result<Self> {
        cfg.validate()?;
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg, vb.pp("blocks").pp(i), level))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(VisionTransformer {
            patch_embed: PatchEmbed::new(cfg, vb.pp("patch_embed"), level)?,
            cls_token: vb.get((1, 1, cfg.embed_dim), "cls_token")?,
            pos_embed: vb.get((1, cfg.num_patches() + 1, cfg.embed_dim), "pos_embed")?,
            blocks,
            norm: ln(cfg, vb.pp("norm"))?,
            cfg: cfg.clone(),
            simd: level,
            workspaces: Default::default(),
        })
    }

    /// The instruction sets the CPU fast path uses for this model.
    pub fn simd(&self) -> Simd {
        self.simd
    }

    /// This model with the CPU fast path limited to `simd` (or what the CPU supports, if less):
    /// the weights are repacked for that level's kernels (or unpacked for the baseline's
    /// general matmul). The outputs are the same bits at AVX2 and AVX-512.
    pub fn with_simd(&self, simd: Simd) -> Result<Self> {
        let level = simd.supported();
        Ok(VisionTransformer {
            patch_embed: self.patch_embed.at_level(level)?,
            blocks: self
                .blocks
                .iter()
                .map(|b| b.at_level(level))
                .collect::<candle_core::Result<_>>()?,
            simd: level,
            workspaces: Default::default(),
            ..self.clone()
        })
    }

    /// A test hook: the next forward pass on the CPU fast path panics in task `task` of stage
    /// `stage` (stage 0 is the embedding, stage `i + 1` block `i`), as a bug there would. The
    /// pass then returns an error and the model keeps working.
    #[doc(hidden)]
    pub fn inject_fast_path_panic(&self, stage: usize, task: usize) {
        self.workspaces.inject_panic(stage, task);
    }

    /// The forward pass built from generic candle ops, on any device. [`Module::forward`]
    /// uses it everywhere but on the CPU, where the fused path of `model::cpu` computes the same
    /// function faster; kept public (hidden from the docs) as the reference that path is
    /// tested against in `tests/parity.rs`: not part of the supported API.
    #[doc(hidden)]
    pub fn forward_candle_ops(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.patch_embed.forward(x)?;
        let (b, _, c) = x.dims3()?;
        let cls = self.cls_token.broadcast_as((b, 1, c))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.norm.forward(&x)?;
        x.narrow(D::Minus2, 0, 1)?.squeeze(D::Minus2)
    }
}

impl Module for VisionTransformer {
    /// `(B, 3, img_size, img_size)` normalized images to `(B, embed_dim)` class-token features.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match super::cpu::vit_forward(self, x)? {
            Some(y) => Ok(y),
            None => self.forward_candle_ops(x),
        }
    }
}
