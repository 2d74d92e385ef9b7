//! The body: timm's `ConvNeXt` as built by `timm.create_model('convnext_tiny', num_classes=0)`
//! inside fastai's `TimmBody`, in candle-nn. fastai calls its `forward_features`, so the
//! body returns the last stage's feature map and fastai's head pools it.
//!
//! Keys (under `0.model.`): `stem.0` (a `patch`x`patch` stride-`patch` convolution),
//! `stem.1` (LayerNorm2d); per stage `stages.N.downsample.0` (LayerNorm2d) and
//! `stages.N.downsample.1` (a 2x2 stride-2 convolution) for every stage but the first; per block
//! `stages.N.blocks.M.conv_dw` (depthwise 7x7, padding 3), `.norm` (LayerNorm over channels),
//! `.mlp.fc1`, `.mlp.fc2` (with exact GELU between) and `.gamma` (layer scale), added to the
//! block's input; then `head.norm` (which `forward_features` does not use, so it is loaded and
//! ignored) or, for `head_norm_first` models, `norm_pre` (which it does use). timm's LayerNorms
//! use `eps = 1e-6`.
//!
//! The blocks run channels-last (`(B, H, W, C)` rows), as timm's default `conv_mlp=False` path
//! computes the norm and the MLP; the non-overlapping stem and downsampling convolutions are
//! matrix products over the patches, and on the CPU the depthwise convolution is a direct loop
//! over the channels-last rows (`DepthwiseConv`). The `conv_mlp=True` variants
//! (`convnext_atto` ... `convnext_nano`: 1x1 convolutions and LayerNorm2d, the same arithmetic)
//! load too.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Storage, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use rayon::prelude::*;

use super::layers::{layer_norm, Linear};
use super::{check, count_indexed, shape_of};
use crate::error::{Error, Result};

/// The prefix of the body's keys in fastai's state_dict.
pub const PREFIX: &str = "0.model.";

/// The ConvNeXt body's dimensions.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Input channels (3).
    pub in_chans: usize,
    /// The stem's patch size and stride (4).
    pub patch_size: usize,
    /// Blocks per stage (`[3, 3, 9, 3]` for convnext_tiny).
    pub depths: Vec<usize>,
    /// Channels per stage (`[96, 192, 384, 768]` for convnext_tiny).
    pub dims: Vec<usize>,
    /// The depthwise convolution's kernel size (7).
    pub kernel_size: usize,
    /// The downsampling convolution's kernel size and stride (2).
    pub downsample_size: usize,
    /// MLP hidden width as a multiple of the stage's channels (4).
    pub mlp_ratio: usize,
    /// Whether blocks have a layer scale (`gamma`; timm's `ls_init_value` not `None`).
    pub layer_scale: bool,
    /// Whether the MLP is stored as 1x1 convolutions (timm's `conv_mlp=True`).
    pub conv_mlp: bool,
    /// Whether the final norm is `norm_pre`, applied by `forward_features` (timm's
    /// `head_norm_first=True`), rather than the unused `head.norm`.
    pub head_norm_first: bool,
    /// timm's LayerNorm epsilon (1e-6).
    pub layer_norm_eps: f64,
}

impl Config {
    fn standard(depths: [usize; 4], dims: [usize; 4]) -> Self {
        Config {
            in_chans: 3,
            patch_size: 4,
            depths: depths.to_vec(),
            dims: dims.to_vec(),
            kernel_size: 7,
            downsample_size: 2,
            mlp_ratio: 4,
            layer_scale: true,
            conv_mlp: false,
            head_norm_first: false,
            layer_norm_eps: 1e-6,
        }
    }

    /// timm's `convnext_tiny`.
    pub fn convnext_tiny() -> Self {
        Self::standard([3, 3, 9, 3], [96, 192, 384, 768])
    }

    /// timm's `convnext_small`.
    pub fn convnext_small() -> Self {
        Self::standard([3, 3, 27, 3], [96, 192, 384, 768])
    }

    /// timm's `convnext_base`.
    pub fn convnext_base() -> Self {
        Self::standard([3, 3, 27, 3], [128, 256, 512, 1024])
    }

    /// The body of a fastai ConvNeXt `vision_learner` read off its state_dict's shapes:
    /// `in_chans` and `patch_size` from `0.model.stem.0.weight`; the stages and their depths
    /// from the `stages.N.blocks.M.` indices present; `dims` and `kernel_size` from each stage's
    /// first `conv_dw.weight`; `downsample_size` from `stages.1.downsample.1.weight`;
    /// `mlp_ratio` and `conv_mlp` from the first `mlp.fc1.weight`; `layer_scale` from whether
    /// `gamma` exists; `head_norm_first` from whether `norm_pre.weight` exists.
    ///
    /// Every other key and shape follows from these, and is checked when the weights load.
    pub fn infer(shapes: &HashMap<String, Vec<usize>>) -> Result<Self> {
        let stem = shape_of(shapes, "0.model.stem.0.weight", 4)?;
        check(shapes, stem[2] == stem[3], || {
            format!("0.model.stem.0.weight has shape {stem:?}: patches are not square")
        })?;
        let mut depths = Vec::new();
        loop {
            let n = count_indexed(shapes, &format!("0.model.stages.{}.blocks.", depths.len()));
            if n == 0 {
                break;
            }
            depths.push(n);
        }
        check(shapes, !depths.is_empty(), || {
            "no 0.model.stages.0.blocks.0.* keys: no ConvNeXt stages".into()
        })?;
        let mut dims = Vec::new();
        let mut kernel_size = 0;
        for i in 0..depths.len() {
            let dw = shape_of(
                shapes,
                &format!("0.model.stages.{i}.blocks.0.conv_dw.weight"),
                4,
            )?;
            dims.push(dw[0]);
            kernel_size = dw[2];
        }
        let downsample_size = if depths.len() > 1 {
            shape_of(shapes, "0.model.stages.1.downsample.1.weight", 4)?[2]
        } else {
            2
        };
        let fc1_key = "0.model.stages.0.blocks.0.mlp.fc1.weight";
        let fc1 = match shapes.get(fc1_key) {
            Some(s) if s.len() == 4 => shape_of(shapes, fc1_key, 4)?,
            _ => shape_of(shapes, fc1_key, 2)?,
        };
        check(
            shapes,
            fc1[1] == dims[0] && fc1[0].is_multiple_of(dims[0]),
            || {
                format!(
                    "{fc1_key} has shape {fc1:?}; expected (k * {0}, {0})",
                    dims[0]
                )
            },
        )?;
        let cfg = Config {
            in_chans: stem[1],
            patch_size: stem[2],
            depths,
            kernel_size,
            downsample_size,
            mlp_ratio: fc1[0] / dims[0],
            layer_scale: shapes.contains_key("0.model.stages.0.blocks.0.gamma"),
            conv_mlp: fc1.len() == 4,
            head_norm_first: shapes.contains_key("0.model.norm_pre.weight"),
            dims,
            layer_norm_eps: 1e-6,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that every size is positive, there is a stage, `dims` has one entry per stage,
    /// and the depthwise kernel is odd (timm pads it by `kernel_size / 2` on each side); the
    /// error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(Error::InvalidConfig {
                field: format!("convnext.{field}"),
                reason,
            })
        };
        for (field, v) in [
            ("in_chans", self.in_chans),
            ("patch_size", self.patch_size),
            ("kernel_size", self.kernel_size),
            ("downsample_size", self.downsample_size),
            ("mlp_ratio", self.mlp_ratio),
        ] {
            if v == 0 {
                return bad(field, "is 0".into());
            }
        }
        if self.depths.is_empty() {
            return bad("depths", "is empty: no stages".into());
        }
        if self.dims.len() != self.depths.len() {
            return bad(
                "dims",
                format!(
                    "has {} entries for {} stages",
                    self.dims.len(),
                    self.depths.len()
                ),
            );
        }
        for (field, list) in [("depths", &self.depths), ("dims", &self.dims)] {
            if let Some(i) = list.iter().position(|&v| v == 0) {
                return bad(&format!("{field}[{i}]"), "is 0".into());
            }
        }
        if self.kernel_size.is_multiple_of(2) {
            return bad(
                "kernel_size",
                format!("is {}, expected an odd size", self.kernel_size),
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

    /// The channels the body outputs (768 for convnext_tiny): what fastai's head pools.
    pub fn num_features(&self) -> usize {
        self.dims.last().copied().unwrap_or(0)
    }

    /// The smallest input side the body runs on: one stem patch, then halved by every
    /// downsampling (32 for the standard nets).
    pub fn min_input_size(&self) -> usize {
        let stages = self.depths.len().saturating_sub(1) as u32;
        self.patch_size
            .saturating_mul(self.downsample_size.saturating_pow(stages))
    }

    /// Every key of the body in fastai's state_dict (`0.model.*`), with its shape, in the order
    /// PyTorch writes them.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let p = PREFIX;
        let d0 = self.dims.first().copied().unwrap_or(0);
        let (ps, k, s) = (self.patch_size, self.kernel_size, self.downsample_size);
        let mut v: Vec<(String, Vec<usize>)> = vec![
            (format!("{p}stem.0.weight"), vec![d0, self.in_chans, ps, ps]),
            (format!("{p}stem.0.bias"), vec![d0]),
            (format!("{p}stem.1.weight"), vec![d0]),
            (format!("{p}stem.1.bias"), vec![d0]),
        ];
        let fc = |o: usize, i: usize| {
            if self.conv_mlp {
                vec![o, i, 1, 1]
            } else {
                vec![o, i]
            }
        };
        for (i, (&depth, &d)) in self.depths.iter().zip(&self.dims).enumerate() {
            let st = format!("{p}stages.{i}");
            if i > 0 {
                let prev = self.dims[i - 1];
                v.extend([
                    (format!("{st}.downsample.0.weight"), vec![prev]),
                    (format!("{st}.downsample.0.bias"), vec![prev]),
                    (format!("{st}.downsample.1.weight"), vec![d, prev, s, s]),
                    (format!("{st}.downsample.1.bias"), vec![d]),
                ]);
            }
            let h = d * self.mlp_ratio;
            for j in 0..depth {
                let b = format!("{st}.blocks.{j}");
                if self.layer_scale {
                    v.push((format!("{b}.gamma"), vec![d]));
                }
                v.extend([
                    (format!("{b}.conv_dw.weight"), vec![d, 1, k, k]),
                    (format!("{b}.conv_dw.bias"), vec![d]),
                    (format!("{b}.norm.weight"), vec![d]),
                    (format!("{b}.norm.bias"), vec![d]),
                    (format!("{b}.mlp.fc1.weight"), fc(h, d)),
                    (format!("{b}.mlp.fc1.bias"), vec![h]),
                    (format!("{b}.mlp.fc2.weight"), fc(d, h)),
                    (format!("{b}.mlp.fc2.bias"), vec![d]),
                ]);
            }
        }
        let last = self.num_features();
        let norm = if self.head_norm_first {
            "norm_pre"
        } else {
            "head.norm"
        };
        v.push((format!("{p}{norm}.weight"), vec![last]));
        v.push((format!("{p}{norm}.bias"), vec![last]));
        v
    }
}

/// A non-overlapping `k`x`k` stride-`k` convolution with bias (timm's stem and downsampling
/// layers) as one matrix product over the patches.
#[derive(Debug, Clone)]
pub(crate) struct PatchConv {
    /// The weight as `(k * k * in, out)`, rows in the order the patches are flattened.
    linear: Linear,
    kernel: usize,
    out_chans: usize,
    /// Whether the input is `(B, C, H, W)` (the stem) rather than channels-last.
    channels_first: bool,
}

impl PatchConv {
    /// Loads `weight` `(out, in, k, k)` and `bias` `(out)`.
    fn new(
        in_chans: usize,
        out_chans: usize,
        kernel: usize,
        channels_first: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let w = vb.get((out_chans, in_chans, kernel, kernel), "weight")?;
        // Patches flatten as (in, ky, kx) channels-first and (ky, kx, in) channels-last.
        let w = if channels_first {
            w
        } else {
            w.permute((0, 2, 3, 1))?.contiguous()?
        };
        let bias = vb.get(out_chans, "bias")?;
        Ok(PatchConv {
            linear: Linear::from_weight(&w, Some(bias))?.with_packed()?,
            kernel,
            out_chans,
            channels_first,
        })
    }

    /// `(B, C, H, W)` or `(B, H, W, C)` to channels-last `(B, H / k, W / k, out)`, the last
    /// rows and columns that do not fill a patch dropped as PyTorch's convolution drops them.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let k = self.kernel;
        let (b, c, h, w) = if self.channels_first {
            x.dims4()?
        } else {
            let (b, h, w, c) = x.dims4()?;
            (b, c, h, w)
        };
        let (gh, gw) = (h / k, w / k);
        if gh == 0 || gw == 0 {
            candle_core::bail!(
                "a {h}x{w} feature map is smaller than ConvNeXt's {k}x{k} patches: the input is \
                 too small"
            );
        }
        let (hd, wd) = if self.channels_first { (2, 3) } else { (1, 2) };
        let x = x.narrow(hd, 0, gh * k)?.narrow(wd, 0, gw * k)?;
        let patches = if self.channels_first {
            x.reshape((b, c, gh, k, gw, k))?
                .permute((0, 2, 4, 1, 3, 5))?
        } else {
            x.reshape((b, gh, k, gw, k, c))?
                .permute((0, 1, 3, 2, 4, 5))?
        };
        let patches = patches.contiguous()?.reshape((b * gh * gw, c * k * k))?;
        self.linear
            .forward_fast(&patches)?
            .reshape((b, gh, gw, self.out_chans))
    }
}

/// A depthwise `k`x`k` convolution, stride 1, zero padding `k / 2`, with bias, on channels-last
/// `(B, H, W, C)` maps.
#[derive(Debug, Clone)]
pub(crate) struct DepthwiseConv {
    /// `(C, 1, k, k)` as PyTorch stores it.
    weight: Tensor,
    bias: Tensor,
    /// On the CPU in f32: the weight as `(k, k, C)` and the bias, for the direct loop.
    host: Option<(Vec<f32>, Vec<f32>)>,
    kernel: usize,
}

impl DepthwiseConv {
    /// Loads `weight` `(C, 1, k, k)` and `bias` `(C)`.
    fn new(chans: usize, kernel: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get((chans, 1, kernel, kernel), "weight")?;
        let bias = vb.get(chans, "bias")?;
        let host = if weight.device().is_cpu() && weight.dtype() == DType::F32 {
            let w = weight
                .reshape((chans, kernel * kernel))?
                .t()?
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Some((w, bias.to_vec1::<f32>()?))
        } else {
            None
        };
        Ok(DepthwiseConv {
            weight,
            bias,
            host,
            kernel,
        })
    }

    /// The same convolution through candle's grouped `conv2d` (any device): the reference the
    /// direct loop is tested against.
    pub(crate) fn forward_candle_ops(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = x.dim(3)?;
        let y = x.permute((0, 3, 1, 2))?.contiguous()?.conv2d(
            &self.weight,
            self.kernel / 2,
            1,
            1,
            c,
        )?;
        y.broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?
            .permute((0, 2, 3, 1))?
            .contiguous()
    }
}

impl Module for DepthwiseConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let Some((w, bias)) = &self.host else {
            return self.forward_candle_ops(x);
        };
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            return self.forward_candle_ops(x);
        }
        let (b, h, wd, c) = x.dims4()?;
        if c != bias.len() {
            candle_core::bail!("depthwise convolution of {} channels given {c}", bias.len());
        }
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let src: &[f32] = match &*storage {
            Storage::Cpu(cpu) => {
                let all = cpu.as_slice::<f32>()?;
                &all[layout.start_offset()..layout.start_offset() + b * h * wd * c]
            }
            _ => candle_core::bail!("depthwise convolution: expected CPU storage"),
        };
        let out = depthwise_rows(src, (b, h, wd, c), w, bias, self.kernel);
        drop(storage);
        Tensor::from_vec(out, (b, h, wd, c), &Device::Cpu)
    }
}

/// The direct depthwise convolution: one task per output row
/// ([`crate::model::cpu::depthwise::depthwise_row`]: each output pixel sums its taps in
/// `(ky, kx)` order, then adds the bias).
fn depthwise_rows(
    src: &[f32],
    (b, h, w, c): (usize, usize, usize, usize),
    weight: &[f32],
    bias: &[f32],
    k: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; b * h * w * c];
    out.par_chunks_mut(w * c)
        .enumerate()
        .for_each(|(row, dst)| {
            crate::model::cpu::depthwise::depthwise_row(src, (h, w, c), weight, bias, k, row, dst)
        });
    out
}

/// timm's `Mlp` (or `ConvMlp` with 1x1 convolutions): `fc1`, exact GELU, `fc2`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

/// timm's `ConvNeXtBlock`: `x + gamma * mlp(norm(conv_dw(x)))`, channels-last.
#[derive(Debug, Clone)]
pub(crate) struct ConvNeXtBlock {
    conv_dw: DepthwiseConv,
    norm: LayerNorm,
    /// On the CPU in f32: `norm`'s weight, bias and epsilon, for the parallel row kernel.
    norm_host: Option<(Vec<f32>, Vec<f32>, f32)>,
    mlp: Mlp,
    gamma: Option<Tensor>,
}

impl ConvNeXtBlock {
    fn new(cfg: &Config, dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = dim * cfg.mlp_ratio;
        let fc = |name: &str, i: usize, o: usize| -> candle_core::Result<Linear> {
            let vb = vb.pp("mlp").pp(name);
            let w = if cfg.conv_mlp {
                vb.get((o, i, 1, 1), "weight")?
            } else {
                vb.get((o, i), "weight")?
            };
            Linear::from_weight(&w, Some(vb.get(o, "bias")?))?.with_packed()
        };
        let mut block = ConvNeXtBlock {
            conv_dw: DepthwiseConv::new(dim, cfg.kernel_size, vb.pp("conv_dw"))?,
            norm: layer_norm(dim, cfg.layer_norm_eps, vb.pp("norm"))?,
            norm_host: None,
            mlp: Mlp {
                fc1: fc("fc1", dim, h)?,
                fc2: fc("fc2", h, dim)?,
            },
            gamma: if cfg.layer_scale {
                Some(vb.get(dim, "gamma")?)
            } else {
                None
            },
        };
        let (w, b) = (block.norm.weight(), block.norm.bias());
        if let Some(b) = b.filter(|_| w.device().is_cpu() && w.dtype() == DType::F32) {
            block.norm_host = Some((
                w.to_vec1::<f32>()?,
                b.to_vec1::<f32>()?,
                cfg.layer_norm_eps as f32,
            ));
        }
        Ok(block)
    }
}

impl Module for ConvNeXtBlock {
    /// `(B, H, W, C)` to `(B, H, W, C)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let y = self.conv_dw.forward(x)?.reshape((b * h * w, c))?;
        let y = match self.norm_host.as_ref().and_then(|n| layer_norm_rows(&y, n)) {
            Some(y) => y?,
            None => self.norm.forward(&y)?,
        };
        if let (Some(p1), Some(p2)) = (self.mlp.fc1.parts(), self.mlp.fc2.parts()) {
            // The first stages: the whole MLP chunk by chunk, the hidden activations in cache.
            if let Some(out) =
                crate::model::cpu::conv::mlp_fused(&y, p1, p2, self.gamma.as_ref(), x)
            {
                return out;
            }
        }
        let y = self.mlp.fc1.forward_gelu(&y)?;
        self.mlp.fc2.forward_scale_add(&y, self.gamma.as_ref(), x)
    }
}

/// `nn.LayerNorm` over the last dimension of contiguous f32 CPU rows `y` `(n, c)` with the
/// crate's row kernel ([`crate::model::cpu::kernels::layer_norm_rows`]) on every thread
/// (candle's runs on one); `None` when `y` is not such a tensor.
fn layer_norm_rows(
    y: &Tensor,
    (w, b, eps): &(Vec<f32>, Vec<f32>, f32),
) -> Option<candle_core::Result<Tensor>> {
    let c = w.len();
    if y.dims().last() != Some(&c) || c == 0 {
        return None;
    }
    let out = crate::model::cpu::with_host_slice(y, |ys| {
        let mut out = vec![0f32; ys.len()];
        let rows = (ys.len() / c)
            .div_ceil(4 * rayon::current_num_threads().max(1))
            .max(1);
        out.par_chunks_mut(rows * c)
            .zip(ys.par_chunks(rows * c))
            .for_each(|(o, x)| crate::model::cpu::kernels::layer_norm_rows(x, o, w, b, *eps));
        out
    })?;
    Some(Tensor::from_vec(out, y.shape(), &Device::Cpu))
}

/// timm's `ConvNeXtStage`: the optional downsampling (LayerNorm2d, 2x2 stride-2 convolution),
/// then the blocks.
#[derive(Debug, Clone)]
pub(crate) struct ConvNeXtStage {
    downsample: Option<(LayerNorm, PatchConv)>,
    blocks: Vec<ConvNeXtBlock>,
}

impl Module for ConvNeXtStage {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = match &self.downsample {
            Some((norm, conv)) => conv.forward(&norm.forward(x)?)?,
            None => x.clone(),
        };
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(x)
    }
}

/// timm's `ConvNeXt` as fastai's `TimmBody` runs it (`forward_features`): returns the last
/// stage's feature map `(B, num_features, H', W')`, channels-first as PyTorch's.
#[derive(Debug, Clone)]
pub struct ConvNeXt {
    stem: (PatchConv, LayerNorm),
    stages: Vec<ConvNeXtStage>,
    norm_pre: Option<LayerNorm>,
    cfg: Config,
}

impl ConvNeXt {
    /// Loads the body from `vb` rooted at timm's names (fastai's `0.model.`), after
    /// [`Config::validate`].
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let eps = cfg.layer_norm_eps;
        let d0 = cfg.dims[0];
        let stem = (
            PatchConv::new(
                cfg.in_chans,
                d0,
                cfg.patch_size,
                true,
                vb.pp("stem").pp("0"),
            )?,
            layer_norm(d0, eps, vb.pp("stem").pp("1"))?,
        );
        let mut stages = Vec::with_capacity(cfg.depths.len());
        for (i, (&depth, &d)) in cfg.depths.iter().zip(&cfg.dims).enumerate() {
            let vb = vb.pp("stages").pp(i);
            let downsample = if i > 0 {
                let prev = cfg.dims[i - 1];
                let ds = vb.pp("downsample");
                Some((
                    layer_norm(prev, eps, ds.pp("0"))?,
                    PatchConv::new(prev, d, cfg.downsample_size, false, ds.pp("1"))?,
                ))
            } else {
                None
            };
            let blocks = (0..depth)
                .map(|j| ConvNeXtBlock::new(cfg, d, vb.pp("blocks").pp(j)))
                .collect::<candle_core::Result<Vec<_>>>()?;
            stages.push(ConvNeXtStage { downsample, blocks });
        }
        let last = cfg.num_features();
        let norm_pre = if cfg.head_norm_first {
            Some(layer_norm(last, eps, vb.pp("norm_pre"))?)
        } else {
            // Loaded only to check it is there: forward_features does not use it.
            layer_norm(last, eps, vb.pp("head").pp("norm"))?;
            None
        };
        Ok(ConvNeXt {
            stem,
            stages,
            norm_pre,
            cfg: cfg.clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

impl Module for ConvNeXt {
    /// `(B, in_chans, H, W)` to `(B, num_features, H', W')`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.stem.1.forward(&self.stem.0.forward(x)?)?;
        for stage in &self.stages {
            x = stage.forward(&x)?;
        }
        if let Some(norm) = &self.norm_pre {
            x = norm.forward(&x)?;
        }
        x.permute((0, 3, 1, 2))?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct loop and candle's grouped convolution agree, with odd sizes, borders and a
    /// kernel larger than the map.
    #[test]
    fn depthwise_loop_matches_candle_grouped_conv() {
        let dev = Device::Cpu;
        for (b, h, w, c, k) in [
            (2, 5, 7, 3, 7),
            (1, 2, 3, 4, 7),
            (1, 9, 4, 5, 3),
            (1, 1, 1, 2, 1),
        ] {
            let n = (b * h * w * c) as f32;
            let x = Tensor::arange(0f32, n, &dev)
                .unwrap()
                .affine(0.37, -3.0)
                .unwrap()
                .sin()
                .unwrap()
                .reshape((b, h, w, c))
                .unwrap();
            let wt = Tensor::arange(0f32, (c * k * k) as f32, &dev)
                .unwrap()
                .affine(0.11, 0.5)
                .unwrap()
                .cos()
                .unwrap()
                .reshape((c, 1, k, k))
                .unwrap();
            let bias = Tensor::arange(0f32, c as f32, &dev).unwrap();
            let mut map = HashMap::new();
            map.insert("weight".to_string(), wt);
            map.insert("bias".to_string(), bias);
            let conv =
                DepthwiseConv::new(c, k, VarBuilder::from_tensors(map, DType::F32, &dev)).unwrap();
            assert!(conv.host.is_some());
            let fast = conv.forward(&x).unwrap();
            let reference = conv.forward_candle_ops(&x).unwrap();
            let d = (fast - reference)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d <= 1e-5, "{b}x{h}x{w}x{c}, k {k}: {d}");
        }
    }
}
