//! The body: a ResNet as fastai's `vision_learner` cuts it, in candle-nn.
//!
//! Two key layouts hold the same network:
//! - **torchvision** (`vision_learner(dls, resnet34)`): `create_body` keeps the model's
//!   children up to the pooling layer in an `nn.Sequential`, so the keys are `0.0.weight`
//!   (`conv1`), `0.1.*` (`bn1`), then `0.4.N.*` ... `0.7.N.*` (`layer1` ... `layer4`; `0.2` is the
//!   ReLU and `0.3` the max pool, which hold no weights);
//! - **timm** (`vision_learner(dls, 'resnet34')`): fastai's `TimmBody` holds the whole timm
//!   model as `model`, so the keys are `0.model.conv1.weight`, `0.model.bn1.*`,
//!   `0.model.layer1.N.*`, ...
//!
//! Each stage is a list of torchvision's `BasicBlock`s (`conv1`, `bn1`, `conv2`, `bn2`) or
//! `Bottleneck`s (`conv1`..`conv3`, `bn1`..`bn3`, the stride and the groups on the 3x3 `conv2`,
//! as torchvision's "v1.5" and timm's default both place them), the first block of a stage
//! with `downsample.0` (1x1 convolution) and `downsample.1` (BatchNorm2d) when its stride or
//! width changes. Stage `i` has stride 1 for `i = 0` and 2 after. Depths, widths, groups and the
//! block type are read off the keys and shapes ([`Config::infer`]), so `resnet18` ... `resnet152`,
//! the ResNeXt and wide variants and any `ResNet(BasicBlock, [1, 1, 1, 1])` load alike.
//!
//! BatchNorm2d runs in eval mode (running statistics), folded into the preceding convolution
//! at load time (each output channel's weights scaled, the shift as its bias).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::cpu::nhwc::{self, padded_channels, Map, PackedConv};
use super::layers::{BatchNorm, Conv2d};
use super::{check, count_indexed, shape_of};
use crate::error::{Error, Result};

/// Which library's module names the keys use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// torchvision's ResNet cut by fastai's `create_body`: `0.0`, `0.1`, `0.4` ... `0.7`.
    Torchvision,
    /// timm's ResNet inside fastai's `TimmBody`: `0.model.conv1`, `0.model.layer1`, ...
    Timm,
}

impl KeyLayout {
    fn stem_conv(self) -> &'static str {
        match self {
            KeyLayout::Torchvision => "0.0",
            KeyLayout::Timm => "0.model.conv1",
        }
    }

    fn stem_bn(self) -> &'static str {
        match self {
            KeyLayout::Torchvision => "0.1",
            KeyLayout::Timm => "0.model.bn1",
        }
    }

    /// The prefix of stage `i` (0-based), without the trailing dot.
    fn stage(self, i: usize) -> String {
        match self {
            KeyLayout::Torchvision => format!("0.{}", 4 + i),
            KeyLayout::Timm => format!("0.model.layer{}", i + 1),
        }
    }
}

/// torchvision's residual block types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (resnet18, resnet34); expansion 1.
    Basic,
    /// 1x1, 3x3, 1x1 convolutions (resnet50 and deeper); expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes`: 1 or 4.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The ResNet body's dimensions.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The key names in the state_dict.
    pub layout: KeyLayout,
    /// Input channels of `conv1` (3).
    pub in_chans: usize,
    /// Output channels of the 7x7 stride-2 `conv1` (64).
    pub stem_width: usize,
    /// The residual block type.
    pub block: BlockKind,
    /// Blocks per stage (`[2, 2, 2, 2]` for resnet18).
    pub depths: Vec<usize>,
    /// torchvision's `planes` per stage (`[64, 128, 256, 512]`); a stage outputs
    /// `planes * expansion` channels.
    pub planes: Vec<usize>,
    /// The width of each stage's inner convolutions: `planes` for the standard nets, more for
    /// wide ResNets and ResNeXt (torchvision's `width`).
    pub widths: Vec<usize>,
    /// Groups of the Bottleneck's 3x3 convolution (1; 32 for ResNeXt).
    pub groups: usize,
    /// BatchNorm2d's epsilon (1e-5).
    pub batch_norm_eps: f64,
}

impl Config {
    fn standard(block: BlockKind, depths: [usize; 4]) -> Self {
        let planes = vec![64, 128, 256, 512];
        Config {
            layout: KeyLayout::Torchvision,
            in_chans: 3,
            stem_width: 64,
            block,
            depths: depths.to_vec(),
            widths: planes.clone(),
            planes,
            groups: 1,
            batch_norm_eps: 1e-5,
        }
    }

    /// torchvision's `resnet18` (fastai's `vision_learner(dls, resnet18)`).
    pub fn resnet18() -> Self {
        Self::standard(BlockKind::Basic, [2, 2, 2, 2])
    }

    /// torchvision's `resnet34`.
    pub fn resnet34() -> Self {
        Self::standard(BlockKind::Basic, [3, 4, 6, 3])
    }

    /// torchvision's `resnet50`.
    pub fn resnet50() -> Self {
        Self::standard(BlockKind::Bottleneck, [3, 4, 6, 3])
    }

    /// torchvision's `resnet101`.
    pub fn resnet101() -> Self {
        Self::standard(BlockKind::Bottleneck, [3, 4, 23, 3])
    }

    /// torchvision's `resnet152`.
    pub fn resnet152() -> Self {
        Self::standard(BlockKind::Bottleneck, [3, 8, 36, 3])
    }

    /// The body of a fastai ResNet `vision_learner` read off its state_dict's shapes: the
    /// layout from `0.model.conv1.weight` (timm) or `0.0.weight` (torchvision); `in_chans` and
    /// `stem_width` from `conv1`; the stages and their depths from the block indices present
    /// (`0.4.N.` ... or `0.model.layer1.N.` ...); the block type from whether
    /// `conv3.weight` exists; per stage, `widths` from the first block's `conv1` and `planes`
    /// from its last convolution; `groups` from the first Bottleneck's `conv2`.
    ///
    /// Every other key and shape follows from these, and is checked when the weights load.
    pub fn infer(shapes: &HashMap<String, Vec<usize>>) -> Result<Self> {
        let layout = if shapes.contains_key("0.model.conv1.weight") {
            KeyLayout::Timm
        } else {
            KeyLayout::Torchvision
        };
        let conv1 = shape_of(shapes, &format!("{}.weight", layout.stem_conv()), 4)?;
        let (stem_width, in_chans) = (conv1[0], conv1[1]);
        let mut depths = Vec::new();
        loop {
            let n = count_indexed(shapes, &format!("{}.", layout.stage(depths.len())));
            if n == 0 {
                break;
            }
            depths.push(n);
        }
        check(shapes, !depths.is_empty(), || {
            format!("no residual stages: no {}.0.conv1.weight", layout.stage(0))
        })?;
        let first = |i: usize, name: &str| format!("{}.0.{name}.weight", layout.stage(i));
        let block = if shapes.contains_key(&first(0, "conv3")) {
            BlockKind::Bottleneck
        } else {
            BlockKind::Basic
        };
        let (mut widths, mut planes) = (Vec::new(), Vec::new());
        for i in 0..depths.len() {
            widths.push(shape_of(shapes, &first(i, "conv1"), 4)?[0]);
            let last = match block {
                BlockKind::Basic => shape_of(shapes, &first(i, "conv2"), 4)?,
                BlockKind::Bottleneck => shape_of(shapes, &first(i, "conv3"), 4)?,
            };
            let e = block.expansion();
            check(shapes, last[0].is_multiple_of(e), || {
                format!(
                    "{} has {} output channels, not a multiple of the Bottleneck's expansion {e}",
                    first(i, "conv3"),
                    last[0]
                )
            })?;
            planes.push(last[0] / e);
        }
        let groups = match block {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => {
                let c2 = shape_of(shapes, &first(0, "conv2"), 4)?;
                check(shapes, widths[0].is_multiple_of(c2[1]), || {
                    format!(
                        "{} has shape {c2:?}: its {} input channels per group do not divide the \
                         stage's width {}",
                        first(0, "conv2"),
                        c2[1],
                        widths[0]
                    )
                })?;
                widths[0] / c2[1]
            }
        };
        let cfg = Config {
            layout,
            in_chans,
            stem_width,
            block,
            depths,
            planes,
            widths,
            groups,
            batch_norm_eps: 1e-5,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that every size is positive, there is a stage, the per-stage lists have one
    /// entry per stage, and the groups divide the widths; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(Error::InvalidConfig {
                field: format!("resnet.{field}"),
                reason,
            })
        };
        if self.in_chans == 0 {
            return bad("in_chans", "is 0".into());
        }
        if self.stem_width == 0 {
            return bad("stem_width", "is 0".into());
        }
        if self.depths.is_empty() {
            return bad("depths", "is empty: no stages".into());
        }
        let n = self.depths.len();
        for (field, list) in [
            ("depths", &self.depths),
            ("planes", &self.planes),
            ("widths", &self.widths),
        ] {
            if list.len() != n {
                return bad(field, format!("has {} entries for {n} stages", list.len()));
            }
            if let Some(i) = list.iter().position(|&v| v == 0) {
                return bad(&format!("{field}[{i}]"), "is 0".into());
            }
        }
        if self.groups == 0 {
            return bad("groups", "is 0".into());
        }
        if self.block == BlockKind::Basic && self.groups != 1 {
            return bad(
                "groups",
                format!("is {}; a BasicBlock has groups 1", self.groups),
            );
        }
        if let Some(i) = self
            .widths
            .iter()
            .position(|w| !w.is_multiple_of(self.groups))
        {
            return bad(
                &format!("widths[{i}]"),
                format!(
                    "is {}, not a multiple of groups {}",
                    self.widths[i], self.groups
                ),
            );
        }
        if !(self.batch_norm_eps.is_finite() && self.batch_norm_eps > 0.0) {
            return bad(
                "batch_norm_eps",
                format!("is {}, expected a positive number", self.batch_norm_eps),
            );
        }
        Ok(())
    }

    /// The channels the body outputs (512 for resnet18/34, 2048 for resnet50 and deeper): what
    /// fastai's head pools.
    pub fn num_features(&self) -> usize {
        self.planes.last().copied().unwrap_or(0) * self.block.expansion()
    }

    /// Stage `i`'s stride: 1 for the first, 2 after.
    fn stride(i: usize) -> usize {
        if i == 0 {
            1
        } else {
            2
        }
    }

    /// Every key of the body in fastai's state_dict, with its shape, in the order PyTorch
    /// writes them.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        let bn = |v: &mut Vec<(String, Vec<usize>)>, p: &str, n: usize| {
            for name in ["weight", "bias", "running_mean", "running_var"] {
                v.push((format!("{p}.{name}"), vec![n]));
            }
            v.push((format!("{p}.num_batches_tracked"), vec![]));
        };
        let l = self.layout;
        v.push((
            format!("{}.weight", l.stem_conv()),
            vec![self.stem_width, self.in_chans, 7, 7],
        ));
        bn(&mut v, l.stem_bn(), self.stem_width);
        let mut inplanes = self.stem_width;
        let e = self.block.expansion();
        for (i, &depth) in self.depths.iter().enumerate() {
            // `get`: a config that fails `validate` still lists its keys without panicking.
            let w = self.widths.get(i).copied().unwrap_or(0);
            let out = self.planes.get(i).copied().unwrap_or(0) * e;
            for j in 0..depth {
                let p = format!("{}.{j}", l.stage(i));
                match self.block {
                    BlockKind::Basic => {
                        v.push((format!("{p}.conv1.weight"), vec![w, inplanes, 3, 3]));
                        bn(&mut v, &format!("{p}.bn1"), w);
                        v.push((format!("{p}.conv2.weight"), vec![out, w, 3, 3]));
                        bn(&mut v, &format!("{p}.bn2"), out);
                    }
                    BlockKind::Bottleneck => {
                        v.push((format!("{p}.conv1.weight"), vec![w, inplanes, 1, 1]));
                        bn(&mut v, &format!("{p}.bn1"), w);
                        v.push((
                            format!("{p}.conv2.weight"),
                            vec![w, w / self.groups.max(1), 3, 3],
                        ));
                        bn(&mut v, &format!("{p}.bn2"), w);
                        v.push((format!("{p}.conv3.weight"), vec![out, w, 1, 1]));
                        bn(&mut v, &format!("{p}.bn3"), out);
                    }
                }
                if j == 0 && (Self::stride(i) != 1 || inplanes != out) {
                    v.push((
                        format!("{p}.downsample.0.weight"),
                        vec![out, inplanes, 1, 1],
                    ));
                    bn(&mut v, &format!("{p}.downsample.1"), out);
                }
                inplanes = out;
            }
        }
        v
    }
}

/// A bias-free convolution and the BatchNorm2d after it: folded into one convolution
/// ([`Conv2d::with_batch_norm`]), or kept apart (the reference the folding is tested against).
#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: Option<BatchNorm>,
    /// The folded convolution packed for the channels-last path, when it applies.
    packed: Option<PackedConv>,
}

/// Loads `conv.weight` and `bn.*` for a square `kernel` with PyTorch's `padding = kernel / 2`;
/// folded (`fold`), also packed for the channels-last path (`stem`: the convolution reading
/// the network's input, whose channels are not padded).
#[allow(clippy::too_many_arguments)]
fn conv_bn(
    in_chans: usize,
    out_chans: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    eps: f64,
    conv: VarBuilder,
    bn: VarBuilder,
    fold: bool,
    stem: bool,
) -> candle_core::Result<ConvBn> {
    let c = Conv2d::new(
        in_chans,
        out_chans,
        kernel,
        stride,
        kernel / 2,
        groups,
        false,
        conv,
    )?;
    let b = BatchNorm::new(out_chans, eps, bn)?;
    Ok(if fold {
        let conv = c.with_batch_norm(&b)?;
        // The network's input is stored as it comes; every other map padded to whole panels.
        let stored = if stem {
            in_chans
        } else {
            padded_channels(in_chans)
        };
        ConvBn {
            packed: conv.packed_nhwc(stored),
            conv,
            bn: None,
        }
    } else {
        ConvBn {
            conv: c,
            bn: Some(b),
            packed: None,
        }
    })
}

impl ConvBn {
    /// `relu?(bn(conv(x)) + residual)`; a folded one on the CPU fast path when `fast`
    /// ([`Conv2d::forward_fused`]).
    fn forward_fused(
        &self,
        x: &Tensor,
        relu: bool,
        residual: Option<&Tensor>,
        fast: bool,
    ) -> candle_core::Result<Tensor> {
        let Some(bn) = &self.bn else {
            return self.conv.forward_fused(x, relu, residual, fast);
        };
        let mut y = bn.forward(&self.conv.forward(x)?)?;
        if let Some(r) = residual {
            y = (y + r)?;
        }
        if relu {
            y = y.relu()?;
        }
        Ok(y)
    }
}

/// torchvision's `BasicBlock`: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
#[derive(Debug, Clone)]
pub(crate) struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    downsample: Option<ConvBn>,
}

/// torchvision's `Bottleneck`: 1x1, 3x3 (stride, groups), 1x1, each with its BatchNorm, ReLU
/// between, plus the shortcut, then ReLU.
#[derive(Debug, Clone)]
pub(crate) struct Bottleneck {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    downsample: Option<ConvBn>,
}

/// One residual block.
#[derive(Debug, Clone)]
pub(crate) enum Block {
    /// A `BasicBlock`.
    Basic(BasicBlock),
    /// A `Bottleneck`.
    Bottleneck(Bottleneck),
}

impl Block {
    /// Loads block `vb` of a stage: `in_chans` channels in, stride `stride`.
    fn new(
        cfg: &Config,
        stage: usize,
        in_chans: usize,
        stride: usize,
        vb: VarBuilder,
        fold: bool,
    ) -> candle_core::Result<Self> {
        let (w, out) = (cfg.widths[stage], cfg.planes[stage] * cfg.block.expansion());
        let eps = cfg.batch_norm_eps;
        let downsample = if stride != 1 || in_chans != out {
            Some(conv_bn(
                in_chans,
                out,
                1,
                stride,
                1,
                eps,
                vb.pp("downsample").pp("0"),
                vb.pp("downsample").pp("1"),
                fold,
                false,
            )?)
        } else {
            None
        };
        let cb = |i: usize, cin, cout, k, s, g| {
            conv_bn(
                cin,
                cout,
                k,
                s,
                g,
                eps,
                vb.pp(format!("conv{i}")),
                vb.pp(format!("bn{i}")),
                fold,
                false,
            )
        };
        Ok(match cfg.block {
            BlockKind::Basic => Block::Basic(BasicBlock {
                conv1: cb(1, in_chans, w, 3, stride, 1)?,
                conv2: cb(2, w, out, 3, 1, 1)?,
                downsample,
            }),
            BlockKind::Bottleneck => Block::Bottleneck(Bottleneck {
                conv1: cb(1, in_chans, w, 1, 1, 1)?,
                conv2: cb(2, w, w, 3, stride, cfg.groups)?,
                conv3: cb(3, w, out, 1, 1, 1)?,
                downsample,
            }),
        })
    }
}

impl Block {
    /// The block, its last convolution fused with the shortcut's sum and the ReLU; the
    /// convolutions on the CPU fast path when `fast`.
    fn forward_with(&self, x: &Tensor, fast: bool) -> candle_core::Result<Tensor> {
        let downsample = match self {
            Block::Basic(b) => &b.downsample,
            Block::Bottleneck(b) => &b.downsample,
        };
        let shortcut = match downsample {
            Some(d) => d.forward_fused(x, false, None, fast)?,
            None => x.clone(),
        };
        match self {
            Block::Basic(b) => {
                let y = b.conv1.forward_fused(x, true, None, fast)?;
                b.conv2.forward_fused(&y, true, Some(&shortcut), fast)
            }
            Block::Bottleneck(b) => {
                let y = b.conv1.forward_fused(x, true, None, fast)?;
                let y = b.conv2.forward_fused(&y, true, None, fast)?;
                b.conv3.forward_fused(&y, true, Some(&shortcut), fast)
            }
        }
    }
}

impl Block {
    /// Every convolution of the block, the shortcut's included.
    fn convs(&self) -> Vec<&ConvBn> {
        let (mut v, ds) = match self {
            Block::Basic(b) => (vec![&b.conv1, &b.conv2], &b.downsample),
            Block::Bottleneck(b) => (vec![&b.conv1, &b.conv2, &b.conv3], &b.downsample),
        };
        v.extend(ds.iter());
        v
    }

    /// The block on the channels-last path ([`nhwc::conv`]): its output map and real
    /// channels, or `None` if a convolution is not packed or a shape does not fit.
    fn forward_nhwc(&self, x: &Map, bufs: &mut nhwc::Buffers) -> Option<(Map, usize)> {
        let downsample = match self {
            Block::Basic(b) => &b.downsample,
            Block::Bottleneck(b) => &b.downsample,
        };
        let own = match downsample {
            Some(d) => Some(nhwc::conv(x, d.packed.as_ref()?, false, None, bufs)?),
            None => None,
        };
        let (y, last) = match self {
            Block::Basic(b) => (
                nhwc::conv(x, b.conv1.packed.as_ref()?, true, None, bufs)?,
                &b.conv2,
            ),
            Block::Bottleneck(b) => {
                let y1 = nhwc::conv(x, b.conv1.packed.as_ref()?, true, None, bufs)?;
                let y2 = nhwc::conv(&y1, b.conv2.packed.as_ref()?, true, None, bufs)?;
                bufs.give(y1);
                (y2, &b.conv3)
            }
        };
        let pc = last.packed.as_ref()?;
        let out = nhwc::conv(&y, pc, true, Some(own.as_ref().unwrap_or(x)), bufs)?;
        bufs.give(y);
        if let Some(d) = own {
            bufs.give(d);
        }
        Some((out, pc.out_channels()))
    }
}

/// The ResNet body: `conv1` + `bn1`, ReLU, 3x3 stride-2 max pool, then the stages; returns the
/// last stage's feature map `(B, num_features, H / 32, W / 32)` (rounded up), which fastai's head
/// pools.
#[derive(Debug, Clone)]
pub struct ResNet {
    conv1: ConvBn,
    layers: Vec<Vec<Block>>,
    cfg: Config,
    /// Whether the convolutions take the CPU fast path where it applies.
    fast: bool,
    /// Whether every convolution is packed for the channels-last path.
    nhwc: bool,
    /// The channels-last path's feature-map buffers, kept from one forward pass for the next
    /// (shared by clones): a pass takes them, or starts with none while another pass holds
    /// them, and leaves its own for the next. This keeps one pass's maps allocated (about
    /// 10 MB at batch 1, 80 MB at batch 8 for resnet34), as ONNX Runtime's arena does, and
    /// saves allocating, zeroing and faulting them in again every pass (a fresh 3.3 MB stem
    /// map took 0.2 ms before its convolution could start).
    bufs: Arc<Mutex<Option<nhwc::Buffers>>>,
}

impl ResNet {
    /// Loads the body from `vb` rooted at the state_dict's top level (its keys start with
    /// `0.`), after [`Config::validate`]; each BatchNorm2d is folded into its convolution.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, vb, true)
    }

    /// Loads with the BatchNorms folded into the convolutions (`fold`), or run after them as
    /// PyTorch does.
    pub(crate) fn load(cfg: &Config, vb: VarBuilder, fold: bool) -> Result<Self> {
        cfg.validate()?;
        let l = cfg.layout;
        let conv1 = conv_bn(
            cfg.in_chans,
            cfg.stem_width,
            7,
            2,
            1,
            cfg.batch_norm_eps,
            vb.pp(l.stem_conv()),
            vb.pp(l.stem_bn()),
            fold,
            true,
        )?;
        let mut inplanes = cfg.stem_width;
        let mut layers = Vec::with_capacity(cfg.depths.len());
        for (i, &depth) in cfg.depths.iter().enumerate() {
            let stage = vb.pp(l.stage(i));
            let mut blocks = Vec::with_capacity(depth);
            for j in 0..depth {
                let stride = if j == 0 { Config::stride(i) } else { 1 };
                blocks.push(Block::new(cfg, i, inplanes, stride, stage.pp(j), fold)?);
                inplanes = cfg.planes[i] * cfg.block.expansion();
            }
            layers.push(blocks);
        }
        let nhwc = conv1.packed.is_some()
            && layers
                .iter()
                .flatten()
                .all(|b| b.convs().iter().all(|c| c.packed.is_some()));
        Ok(ResNet {
            conv1,
            layers,
            cfg: cfg.clone(),
            fast: true,
            nhwc,
            bufs: Arc::default(),
        })
    }

    /// With the convolutions on candle's `conv2d` (any device), `fast` false, or on the CPU
    /// fast path where it applies (the default): what the tests compare.
    #[cfg(test)]
    pub(crate) fn with_fast_path(mut self, fast: bool) -> Self {
        self.fast = fast;
        self
    }

    /// The architecture.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The body on the channels-last path (a CPU f32 input, every convolution packed):
    /// the input copied channels-last once, then every convolution, the max pool and the
    /// shortcuts on [`Map`]s, the last map copied back to `(B, C, H, W)`. `None` when it does
    /// not apply.
    fn forward_nhwc(&self, x: &Tensor) -> Option<candle_core::Result<Tensor>> {
        let stem = self.conv1.packed.as_ref()?;
        let (b, c, h, w) = x.dims4().ok()?;
        if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
            return None;
        }
        let x = x.contiguous().ok()?;
        let m =
            super::cpu::with_host_slice(&x, |xs| Map::from_nchw(xs, (b, c, h, w), stem.padding()))?;
        // The maps' buffers, handed on from one convolution to the next, and from the
        // previous pass.
        let mut bufs = self
            .bufs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        let y = nhwc::conv(&m, stem, true, None, &mut bufs)?;
        let mut m = nhwc::max_pool_3x3_s2(&y, &mut bufs)?;
        bufs.give(y);
        let mut ch = stem.out_channels();
        for stage in &self.layers {
            for block in stage {
                let (next, c) = block.forward_nhwc(&m, &mut bufs)?;
                bufs.give(std::mem::replace(&mut m, next));
                ch = c;
            }
        }
        let out = m.to_nchw(ch);
        let (mh, mw) = (m.h, m.w);
        bufs.give(m);
        bufs.end_pass();
        self.bufs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(bufs);
        Some(Tensor::from_vec(
            out,
            (b, ch, mh, mw),
            &candle_core::Device::Cpu,
        ))
    }
}

/// `nn.MaxPool2d(kernel_size=3, stride=2, padding=1)` on a ReLU's output: every value is
/// `>= 0`, so padding with zeros gives the same maxima as PyTorch's `-inf` padding (every
/// window holds at least one real value).
fn max_pool_3x3_s2_after_relu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .max_pool2d_with_stride(3, 2)
}

/// Images per pass through the body on the CPU fast path: a larger batch runs in chunks of
/// this many, so a chunk's activations stay in cache from one convolution to the next (at
/// batch 32 about 10% faster on resnet34 than the whole batch per convolution, in a few
/// interleaved runs on the 2-core VM).
const CPU_BATCH_CHUNK: usize = 8;

impl Module for ResNet {
    /// `(B, in_chans, H, W)` to the last stage's `(B, num_features, H', W')`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, chunk) = (x.dim(0)?, CPU_BATCH_CHUNK);
        if b > chunk && self.fast && x.device().is_cpu() {
            let mut parts = Vec::new();
            let mut i = 0;
            while i < b {
                let n = chunk.min(b - i);
                parts.push(self.forward(&x.narrow(0, i, n)?)?);
                i += n;
            }
            return Tensor::cat(&parts, 0);
        }
        if self.fast && self.nhwc {
            if let Some(y) = self.forward_nhwc(x) {
                return y;
            }
        }
        let stem = self.conv1.forward_fused(x, true, None, self.fast)?;
        let mut x = max_pool_3x3_s2_after_relu(&stem)?;
        for stage in &self.layers {
            for block in stage {
                x = block.forward_with(&x, self.fast)?;
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn scale_of(t: &Tensor) -> f32 {
        let m = t.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        m.to_scalar::<f32>().unwrap().max(1.0)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .unwrap()
    }

    /// Folding each BatchNorm2d into its convolution moves the fixtures' logits by about as
    /// much as the convolutions' own rounding: both stay far inside the 1e-4 bar against
    /// fastai (scripts/make_fixtures_models.py).
    #[test]
    fn folded_batch_norm_matches_the_unfolded_reference() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
        let golden =
            candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
        for name in ["resnet_basic", "resnet_bottleneck", "resnet_timm"] {
            let t = candle_core::safetensors::load(
                dir.join(format!("{name}.safetensors")),
                &Device::Cpu,
            )
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let v = if v.dtype() == DType::I64 {
                    v
                } else {
                    v.to_dtype(DType::F32).unwrap()
                };
                (k, v)
            })
            .collect::<HashMap<_, _>>();
            let shapes = t
                .iter()
                .map(|(k, v)| (k.clone(), v.dims().to_vec()))
                .collect();
            let cfg = Config::infer(&shapes).unwrap();
            let head_cfg =
                super::super::head::Config::infer(&shapes, cfg.num_features(), true).unwrap();
            let vb = VarBuilder::from_tensors(t, DType::F32, &Device::Cpu);
            let head = super::super::FastaiHead::new(&head_cfg, vb.pp("1")).unwrap();
            let folded = ResNet::load(&cfg, vb.clone(), true).unwrap();
            let reference = folded.clone().with_fast_path(false);
            let unfolded = ResNet::load(&cfg, vb, false).unwrap();
            let x = &golden["input"];
            let (a, b) = (folded.forward(x).unwrap(), unfolded.forward(x).unwrap());
            // The CPU fast path against candle's conv2d on the same folded weights, and on a
            // batch larger than CPU_BATCH_CHUNK (run in chunks, small maps stacked).
            let r = reference.forward(x).unwrap();
            let fr = max_diff(&a, &r);
            let n = x.dim(0).unwrap();
            let copies = vec![x.clone(); (CPU_BATCH_CHUNK * 2 + 3).div_ceil(n)];
            let big = Tensor::cat(&copies, 0).unwrap();
            let big_diff = max_diff(
                &folded.forward(&big).unwrap(),
                &reference.forward(&big).unwrap(),
            );
            assert!(
                big_diff <= 1e-5 * scale_of(&r),
                "{name}: batch {}: {big_diff}",
                big.dim(0).unwrap()
            );
            let d = max_diff(&a, &b);
            let scale = b
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let fastai = &golden[&format!("{name}.logits")];
            let la = max_diff(&head.forward(&a).unwrap(), fastai);
            let lb = max_diff(&head.forward(&b).unwrap(), fastai);
            println!(
                "{name}: body features folded vs unfolded {d:.1e}, fast path vs candle conv2d \
                 {fr:.1e} (largest feature {scale:.2}); logits vs fastai: folded {la:.1e}, \
                 unfolded {lb:.1e}"
            );
            assert!(d <= 1e-5 * scale.max(1.0), "{name}: {d}");
            assert!(fr <= 1e-5 * scale.max(1.0), "{name}: fast path {fr}");
            assert!(la <= 1e-4 && lb <= 1e-4, "{name}: {la} {lb}");
        }
    }

    /// The channels-last path on Bottleneck bodies (groups 1, as resnet50's; the fixture's
    /// Bottleneck has groups 2 and takes candle's path), with random weights and BatchNorm
    /// statistics, widths that are and are not whole panels, batch 1 and 3: within 1e-5 of
    /// candle's `conv2d` on the same folded weights.
    #[test]
    fn channels_last_bottleneck_matches_candle() {
        let dev = Device::Cpu;
        for (planes, stem) in [(vec![8, 16, 32, 64], 8), (vec![32, 64, 32, 64], 64)] {
            let mut cfg = Config::resnet50();
            cfg.depths = vec![2, 1, 1, 1];
            cfg.widths = planes.clone();
            cfg.planes = planes;
            cfg.stem_width = stem;
            let mut t = HashMap::new();
            for (i, (k, shape)) in cfg.state_dict_shapes().into_iter().enumerate() {
                let v = if k.ends_with("num_batches_tracked") {
                    Tensor::zeros(shape.as_slice(), DType::I64, &dev).unwrap()
                } else if k.ends_with("running_var") || k.ends_with("bn1.weight") {
                    (Tensor::rand(0.5f32, 1.5, shape.as_slice(), &dev).unwrap() * 1.0).unwrap()
                } else {
                    let fan: usize = shape.iter().skip(1).product::<usize>().max(1);
                    (Tensor::randn(0f32, 1.0, shape.as_slice(), &dev).unwrap()
                        * (1.0 / (fan as f64).sqrt() + 0.01 * i as f64 % 0.05))
                        .unwrap()
                };
                t.insert(k, v);
            }
            let vb = VarBuilder::from_tensors(t, DType::F32, &dev);
            let fast = ResNet::load(&cfg, vb, true).unwrap();
            assert!(fast.nhwc, "every convolution should be packed");
            let reference = fast.clone().with_fast_path(false);
            // Batch 1, 3, then 1 again: the later passes run on the buffers the earlier ones
            // left (larger, and holding their values).
            for b in [1, 3, 1] {
                let x = Tensor::randn(0f32, 1.0, (b, 3, 64, 64), &dev).unwrap();
                let want = reference.forward(&x).unwrap();
                let got = fast.forward(&x).unwrap();
                let d = max_diff(&got, &want);
                assert!(d <= 1e-5 * scale_of(&want), "stem {stem} batch {b}: {d}");
            }
        }
    }
}
