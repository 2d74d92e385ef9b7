//! Stage 4, the model: fastai's `vision_learner`, i.e. `nn.Sequential(body, create_head(...))`,
//! with the state_dict's body under `0.*` and the head under `1.*`.
//!
//! | body | fastai | keys | module |
//! |---|---|---|---|
//! | timm ViT | `vision_learner(dls, 'vit_tiny_patch16_224')` | `0.model.patch_embed.*`, `0.model.blocks.N.*` | [`vit`] |
//! | torchvision ResNet | `vision_learner(dls, resnet34)` | `0.0.weight`, `0.1.*`, `0.4.N.*` ... `0.7.N.*` | [`resnet`] |
//! | timm ResNet | `vision_learner(dls, 'resnet34')` | `0.model.conv1.weight`, `0.model.layer1.N.*` | [`resnet`] |
//! | timm ConvNeXt | `vision_learner(dls, 'convnext_tiny')` | `0.model.stem.*`, `0.model.stages.N.*` | [`convnext`] |
//!
//! The head is fastai's `create_head` ([`head`]): pooling and `Flatten` for the CNN bodies,
//! then BatchNorm1d, Dropout, Linear and ReLU layers. [`FastaiModel`] runs any of them, built
//! from a [`Config`] that [`Config::infer`] reads off a state_dict's keys and shapes
//! ([`detect_family`] picks the body).

pub mod convnext;
pub(crate) mod cpu;
pub mod head;
pub(crate) mod layers;
pub mod resnet;
pub mod vit;

use std::collections::HashMap;
use std::fmt;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

pub use convnext::ConvNeXt;
pub use cpu::kernels::Simd;
pub use head::{FastaiHead, HeadOptions};
pub use resnet::ResNet;
pub use vit::VisionTransformer;

use crate::error::{Error, Result};

/// The architecture families fastai-infer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// timm's `VisionTransformer` in fastai's `TimmBody`.
    Vit,
    /// A torchvision ResNet cut by fastai's `create_body`, or timm's ResNet in `TimmBody`.
    ResNet,
    /// timm's `ConvNeXt` in fastai's `TimmBody`.
    ConvNext,
}

impl Family {
    /// The family an `arch` name belongs to (the recipe's `arch`: a timm model name or a
    /// torchvision function's name), or `None` for a name fastai-infer does not know (a custom
    /// function's name, another family). A timm pretrained tag (`convnext_tiny.fb_in22k`) and a
    /// hub prefix (`timm/`) are ignored.
    ///
    /// `vit_*` and `deit_*` are ViTs; `resnet*`, `resnext*` and `wide_resnet*` ResNets;
    /// `convnext*` ConvNeXts.
    pub fn from_arch(arch: &str) -> Option<Family> {
        let name = arch.rsplit('/').next().unwrap_or(arch);
        let name = name.split('.').next().unwrap_or(name).to_ascii_lowercase();
        if name.starts_with("vit_") || name.starts_with("deit_") {
            Some(Family::Vit)
        } else if ["resnet", "resnext", "wide_resnet"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            Some(Family::ResNet)
        } else if name.starts_with("convnext") {
            Some(Family::ConvNext)
        } else {
            None
        }
    }

    /// The family's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::Vit => "timm ViT",
            Family::ResNet => "ResNet (torchvision or timm)",
            Family::ConvNext => "timm ConvNeXt",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The keys that identify each body, in the order [`detect_family`] tries them: the family,
/// the layout's name, and the keys that must all be present.
const SIGNATURES: [(Family, &str, &[&str]); 4] = [
    (
        Family::Vit,
        "timm ViT",
        &["0.model.patch_embed.proj.weight"],
    ),
    (
        Family::ConvNext,
        "timm ConvNeXt",
        &[
            "0.model.stem.0.weight",
            "0.model.stages.0.blocks.0.conv_dw.weight",
        ],
    ),
    (
        Family::ResNet,
        "timm ResNet",
        &["0.model.conv1.weight", "0.model.layer1.0.conv1.weight"],
    ),
    (
        Family::ResNet,
        "torchvision ResNet",
        &["0.0.weight", "0.4.0.conv1.weight"],
    ),
];

/// Which body a fastai `vision_learner`'s state_dict holds, from its keys, checked against the
/// recipe's `arch` when there is one. This is the one place the family is decided:
///
/// | family | keys that identify it |
/// |---|---|
/// | timm ViT | `0.model.patch_embed.proj.weight` |
/// | timm ConvNeXt | `0.model.stem.0.weight` and `0.model.stages.0.blocks.0.conv_dw.weight` |
/// | timm ResNet | `0.model.conv1.weight` and `0.model.layer1.0.conv1.weight` |
/// | torchvision ResNet (`create_body`) | `0.0.weight` and `0.4.0.conv1.weight` |
///
/// `arch` (see [`Family::from_arch`]) must name the same family when it names a known one: a
/// `"resnet34"` recipe on ConvNeXt keys is an [`Error::ArchMismatch`] naming both. An `arch`
/// fastai-infer does not know leaves the keys to decide. No matching keys is an
/// [`Error::NotFastaiLearner`] listing what was expected and some of the keys found.
///
/// The rest of the layout (depths, widths, the head) is read by the family's
/// `Config::infer` and checked key by key when the weights load.
pub fn detect_family(shapes: &HashMap<String, Vec<usize>>, arch: Option<&str>) -> Result<Family> {
    let found = SIGNATURES
        .iter()
        .find(|(_, _, keys)| keys.iter().all(|k| shapes.contains_key(*k)));
    let named = arch.and_then(|a| Family::from_arch(a).map(|f| (a, f)));
    match (found, named) {
        (Some(&(family, layout, keys)), Some((a, f))) if f != family => Err(Error::ArchMismatch {
            path: Default::default(),
            arch: a.to_string(),
            arch_family: f,
            found: layout,
            evidence: keys,
        }),
        (Some(&(family, _, _)), _) => Ok(family),
        (None, _) => {
            let expected = SIGNATURES
                .iter()
                .map(|(_, layout, keys)| format!("{} ({layout})", keys.join(" with ")))
                .collect::<Vec<_>>()
                .join(", ");
            let arch = match arch {
                Some(a) => format!(" (the recipe's arch is \"{a}\")"),
                None => String::new(),
            };
            Err(not_learner(
                shapes,
                format!("no body fastai-infer recognises{arch}: expected {expected}"),
            ))
        }
    }
}

/// The body's configuration, one per family.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyConfig {
    /// A timm ViT.
    Vit(vit::Config),
    /// A torchvision or timm ResNet.
    ResNet(resnet::Config),
    /// A timm ConvNeXt.
    ConvNext(convnext::Config),
}

impl BodyConfig {
    /// The family.
    pub fn family(&self) -> Family {
        match self {
            BodyConfig::Vit(_) => Family::Vit,
            BodyConfig::ResNet(_) => Family::ResNet,
            BodyConfig::ConvNext(_) => Family::ConvNext,
        }
    }

    /// The width of the body's output: what fastai passes `create_head` as `nf`.
    pub fn num_features(&self) -> usize {
        match self {
            BodyConfig::Vit(c) => c.embed_dim,
            BodyConfig::ResNet(c) => c.num_features(),
            BodyConfig::ConvNext(c) => c.num_features(),
        }
    }

    /// Whether the body returns a feature map the head must pool (the CNNs), rather than
    /// pooled features (the ViT): fastai's `pool` argument of `create_head`.
    pub fn needs_pool(&self) -> bool {
        !matches!(self, BodyConfig::Vit(_))
    }

    /// The input channels.
    pub fn in_chans(&self) -> usize {
        match self {
            BodyConfig::Vit(c) => c.in_chans,
            BodyConfig::ResNet(c) => c.in_chans,
            BodyConfig::ConvNext(c) => c.in_chans,
        }
    }

    /// The family's `validate`.
    pub fn validate(&self) -> Result<()> {
        match self {
            BodyConfig::Vit(c) => c.validate(),
            BodyConfig::ResNet(c) => c.validate(),
            BodyConfig::ConvNext(c) => c.validate(),
        }
    }

    /// The body's keys and shapes.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            BodyConfig::Vit(c) => c.state_dict_shapes(),
            BodyConfig::ResNet(c) => c.state_dict_shapes(),
            BodyConfig::ConvNext(c) => c.state_dict_shapes(),
        }
    }
}

impl fmt::Display for BodyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyConfig::Vit(c) => write!(
                f,
                "timm ViT (embed_dim {}, depth {}, {} heads, patch {}, {}x{} input)",
                c.embed_dim, c.depth, c.num_heads, c.patch_size, c.img_size, c.img_size
            ),
            BodyConfig::ResNet(c) => write!(
                f,
                "{} ResNet ({:?} blocks {:?}, planes {:?}{})",
                match c.layout {
                    resnet::KeyLayout::Torchvision => "torchvision",
                    resnet::KeyLayout::Timm => "timm",
                },
                c.block,
                c.depths,
                c.planes,
                if c.groups > 1 {
                    format!(", groups {}", c.groups)
                } else {
                    String::new()
                }
            ),
            BodyConfig::ConvNext(c) => write!(
                f,
                "timm ConvNeXt (depths {:?}, dims {:?})",
                c.depths, c.dims
            ),
        }
    }
}

/// The whole model's architecture: the body and fastai's head.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The body (`0.*` keys).
    pub body: BodyConfig,
    /// The head (`1.*` keys).
    pub head: head::Config,
}

impl Default for Config {
    /// `vit_tiny_patch16_224` with fastai's head for the 37 pets breeds.
    fn default() -> Self {
        Config::vit_tiny_patch16_224(37)
    }
}

impl Config {
    /// A body and a head, after [`Config::validate`].
    pub fn new(body: BodyConfig, head: head::Config) -> Result<Self> {
        let cfg = Config { body, head };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `vit_tiny_patch16_224` with fastai's default head for `num_classes` classes.
    pub fn vit_tiny_patch16_224(num_classes: usize) -> Self {
        let body = vit::Config::vit_tiny_patch16_224();
        let opts = HeadOptions {
            pool: false,
            ..Default::default()
        };
        let head = head::Config {
            in_features: body.embed_dim,
            // fastai's default options always make a head.
            layers: head::create_head_layers(body.embed_dim, num_classes, &opts)
                .unwrap_or_default(),
            batch_norm_eps: 1e-5,
        };
        Config {
            body: BodyConfig::Vit(body),
            head,
        }
    }

    /// A body with fastai's default head for it and `num_classes` classes
    /// (`vision_learner`'s defaults: `lin_ftrs=[512]`, `ps=0.5`, concat pooling for a CNN).
    pub fn with_default_head(body: BodyConfig, num_classes: usize) -> Result<Self> {
        let opts = HeadOptions {
            pool: body.needs_pool(),
            ..Default::default()
        };
        let head = head::Config::create_head(body.num_features(), num_classes, &opts)?;
        Config::new(body, head)
    }

    /// The architecture of a fastai `vision_learner` read off its state_dict's shapes
    /// (`shapes` maps each key to its shape): the family by [`detect_family`] (with the
    /// recipe's `arch`), the body by its family's `infer` ([`vit::Config::infer`] uses
    /// `img_size`, the square input the recipe makes, and `arch`/`num_heads` for the attention
    /// heads; the CNNs take any input size), the head by [`head::Config::infer`].
    ///
    /// The error names what did not fit: [`Error::NotFastaiLearner`] (unknown body, a missing
    /// key or a wrong shape), [`Error::UnsupportedHead`], [`Error::ArchMismatch`] or
    /// [`Error::InvalidConfig`]; their `path` is empty (the weights loader fills it in).
    pub fn infer(
        shapes: &HashMap<String, Vec<usize>>,
        img_size: usize,
        arch: Option<&str>,
        num_heads: Option<usize>,
    ) -> Result<Self> {
        let body = match detect_family(shapes, arch)? {
            Family::Vit => BodyConfig::Vit(vit::Config::infer(shapes, img_size, arch, num_heads)?),
            Family::ResNet => BodyConfig::ResNet(resnet::Config::infer(shapes)?),
            Family::ConvNext => BodyConfig::ConvNext(convnext::Config::infer(shapes)?),
        };
        let head = head::Config::infer(shapes, body.num_features(), body.needs_pool())?;
        Config::new(body, head)
    }

    /// Checks the body's and the head's configs, and that the head fits the body: it takes the
    /// body's output width, and pools exactly when the body returns a feature map. The error
    /// ([`Error::InvalidConfig`]) names the field.
    pub fn validate(&self) -> Result<()> {
        self.body.validate()?;
        self.head.validate()?;
        let nf = self.body.num_features();
        if self.head.in_features != nf {
            return Err(Error::InvalidConfig {
                field: "head.in_features".into(),
                reason: format!(
                    "is {}, but the body outputs {nf} features",
                    self.head.in_features
                ),
            });
        }
        if self.head.pools() != self.body.needs_pool() {
            return Err(Error::InvalidConfig {
                field: "head.layers[0]".into(),
                reason: if self.body.needs_pool() {
                    format!(
                        "is {}, but the {} body returns a feature map the head must pool",
                        self.head.layers[0],
                        self.body.family()
                    )
                } else {
                    format!(
                        "is {}, but the {} body returns pooled features (fastai's head has \
                         pool=False)",
                        self.head.layers[0],
                        self.body.family()
                    )
                },
            });
        }
        Ok(())
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.body.family()
    }

    /// The number of classes the head outputs.
    pub fn num_classes(&self) -> usize {
        self.head.num_classes()
    }

    /// This architecture with `n` classes.
    pub fn with_num_classes(mut self, n: usize) -> Self {
        self.head = self.head.with_num_classes(n);
        self
    }

    /// The input channels.
    pub fn in_chans(&self) -> usize {
        self.body.in_chans()
    }

    /// The square input side the model requires, when it requires one (a ViT's `img_size`,
    /// which its `pos_embed` is made for); `None` for the CNNs, which take any size (a
    /// ConvNeXt at least [`convnext::Config::min_input_size`]).
    pub fn input_size(&self) -> Option<usize> {
        match &self.body {
            BodyConfig::Vit(c) => Some(c.img_size),
            _ => None,
        }
    }

    /// Every key of fastai's state_dict for this architecture, with its shape: the body's in
    /// the order PyTorch writes them, then the head's.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = self.body.state_dict_shapes();
        v.extend(self.head.state_dict_shapes());
        v
    }
}

impl fmt::Display for Config {
    /// E.g. `torchvision ResNet (Basic blocks [3, 4, 6, 3], planes [64, 128, 256, 512]) +
    /// create_head: AdaptiveConcatPool2d, Flatten, BatchNorm1d(1024), ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} + create_head: {}", self.body, self.head)
    }
}

/// The loaded body, one per family.
#[derive(Debug, Clone)]
pub enum Body {
    /// A timm ViT (its CPU forward pass is the fused fast path of `model::cpu`).
    Vit(VisionTransformer),
    /// A torchvision or timm ResNet.
    ResNet(ResNet),
    /// A timm ConvNeXt.
    ConvNext(ConvNeXt),
}

impl Module for Body {
    /// Normalized images `(B, C, H, W)` to the ViT's pooled `(B, embed_dim)` features or a
    /// CNN's last feature map `(B, num_features, H', W')`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Body::Vit(b) => b.forward(x),
            Body::ResNet(b) => b.forward(x),
            Body::ConvNext(b) => b.forward(x),
        }
    }
}

/// fastai's model: `nn.Sequential(body, head)`, mapping a normalized `(B, 3, H, W)` batch to
/// `(B, num_classes)` logits.
#[derive(Debug, Clone)]
pub struct FastaiModel {
    body: Body,
    head: FastaiHead,
    cfg: Config,
}

impl FastaiModel {
    /// Builds the model from a `VarBuilder` holding fastai's state_dict keys, after
    /// [`Config::validate`].
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let body = match &cfg.body {
            BodyConfig::Vit(c) => Body::Vit(VisionTransformer::new(c, vb.pp("0").pp("model"))?),
            BodyConfig::ResNet(c) => Body::ResNet(ResNet::new(c, vb.clone())?),
            BodyConfig::ConvNext(c) => Body::ConvNext(ConvNeXt::new(c, vb.pp("0").pp("model"))?),
        };
        Ok(FastaiModel {
            body,
            head: FastaiHead::new(&cfg.head, vb.pp("1"))?,
            cfg: cfg.clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// fastai's `0`, the body.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// fastai's `1`, the head.
    pub fn head(&self) -> &FastaiHead {
        &self.head
    }

    /// The device the weights live on.
    pub fn device(&self) -> candle_core::Device {
        self.head.device()
    }

    /// The instruction sets the CPU fast path uses: the ViT's (see [`Simd`]); `None` for a
    /// ResNet or ConvNeXt, which run on candle's ops only.
    pub fn simd(&self) -> Option<Simd> {
        match &self.body {
            Body::Vit(v) => Some(v.simd()),
            _ => None,
        }
    }

    /// This model with its ViT's CPU fast path limited to `simd` (or what the CPU supports,
    /// if less), overriding `FASTAI_INFER_SIMD`; a ResNet or ConvNeXt is returned unchanged.
    /// See [`VisionTransformer::with_simd`].
    pub fn with_simd(&self, simd: Simd) -> Result<Self> {
        let body = match &self.body {
            Body::Vit(v) => Body::Vit(v.with_simd(simd)?),
            other => other.clone(),
        };
        Ok(FastaiModel {
            body,
            head: self.head.clone(),
            cfg: self.cfg.clone(),
        })
    }

    /// A test hook: see [`VisionTransformer::inject_fast_path_panic`]. Returns whether the
    /// model has a fast path to inject into (a ViT).
    #[doc(hidden)]
    pub fn inject_fast_path_panic(&self, stage: usize, task: usize) -> bool {
        match &self.body {
            Body::Vit(v) => {
                v.inject_fast_path_panic(stage, task);
                true
            }
            _ => false,
        }
    }
}

impl Module for FastaiModel {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.head.forward(&self.body.forward(x)?)
    }
}

/// The shape of `key` if it has `rank` dimensions, none of them 0; else an
/// [`Error::NotFastaiLearner`] saying what is wrong.
pub(crate) fn shape_of<'a>(
    shapes: &'a HashMap<String, Vec<usize>>,
    key: &str,
    rank: usize,
) -> Result<&'a [usize]> {
    match shapes.get(key) {
        None => Err(not_learner(shapes, format!("no {key}"))),
        Some(s) if s.len() != rank => Err(not_learner(
            shapes,
            format!("{key} has shape {s:?}, expected {rank} dimensions"),
        )),
        Some(s) if s.contains(&0) => Err(not_learner(
            shapes,
            format!("{key} has an empty shape {s:?}"),
        )),
        Some(s) => Ok(s.as_slice()),
    }
}

/// `Ok` when `ok`, else an [`Error::NotFastaiLearner`] with `reason()`.
pub(crate) fn check(
    shapes: &HashMap<String, Vec<usize>>,
    ok: bool,
    reason: impl FnOnce() -> String,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(not_learner(shapes, reason()))
    }
}

/// One more than the highest `N` of the keys `{prefix}N.*` (0 when there is none).
pub(crate) fn count_indexed(shapes: &HashMap<String, Vec<usize>>, prefix: &str) -> usize {
    shapes
        .keys()
        .filter_map(|k| {
            k.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |last| last.saturating_add(1))
}

/// An [`Error::NotFastaiLearner`] without a path, listing some of the keys.
pub(crate) fn not_learner(shapes: &HashMap<String, Vec<usize>>, reason: String) -> Error {
    let mut keys: Vec<&String> = shapes.keys().collect();
    keys.sort();
    Error::NotFastaiLearner {
        path: Default::default(),
        reason,
        found: summarize(&keys),
    }
}

/// A few of `keys`, for error messages.
pub(crate) fn summarize(keys: &[&String]) -> String {
    const SHOWN: usize = 6;
    let mut s = keys
        .iter()
        .take(SHOWN)
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        s += &format!(", ... ({} keys in all)", keys.len());
    }
    if keys.is_empty() {
        s = "no tensors".into();
    }
    s
}

/// Builder-style setters for the `#[non_exhaustive]` config structs, which other crates cannot
/// build with a struct literal: start from a preset (`vit::Config::vit_tiny_patch16_224()`,
/// `resnet::Config::resnet50()`, `HeadOptions::default()`, ...) and change fields. Nothing is
/// checked here; [`Config::new`], [`FastaiModel::new`] and each body's and head's constructor
/// call `validate`, so a degenerate value is an [`Error::InvalidConfig`] naming the field.
macro_rules! setters {
    ($ty:ty, $what:literal { $($name:ident => $field:ident : $t:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("This ", $what, " with `", stringify!($field),
                    "` set to `value` (checked when a model is built from it).")]
                #[must_use]
                pub fn $name(mut self, value: $t) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters!(vit::Config, "ViT config" {
    with_embed_dim => embed_dim: usize,
    with_depth => depth: usize,
    with_num_heads => num_heads: usize,
    with_mlp_ratio => mlp_ratio: usize,
    with_patch_size => patch_size: usize,
    with_img_size => img_size: usize,
    with_in_chans => in_chans: usize,
    with_layer_norm_eps => layer_norm_eps: f64,
});

setters!(resnet::Config, "ResNet config" {
    with_layout => layout: resnet::KeyLayout,
    with_in_chans => in_chans: usize,
    with_stem_width => stem_width: usize,
    with_block => block: resnet::BlockKind,
    with_depths => depths: Vec<usize>,
    with_planes => planes: Vec<usize>,
    with_widths => widths: Vec<usize>,
    with_groups => groups: usize,
    with_batch_norm_eps => batch_norm_eps: f64,
});

setters!(convnext::Config, "ConvNeXt config" {
    with_in_chans => in_chans: usize,
    with_patch_size => patch_size: usize,
    with_depths => depths: Vec<usize>,
    with_dims => dims: Vec<usize>,
    with_kernel_size => kernel_size: usize,
    with_downsample_size => downsample_size: usize,
    with_mlp_ratio => mlp_ratio: usize,
    with_layer_scale => layer_scale: bool,
    with_conv_mlp => conv_mlp: bool,
    with_head_norm_first => head_norm_first: bool,
    with_layer_norm_eps => layer_norm_eps: f64,
});

setters!(HeadOptions, "set of head options" {
    with_lin_ftrs => lin_ftrs: Option<Vec<usize>>,
    with_ps => ps: Vec<f64>,
    with_pool => pool: bool,
    with_concat_pool => concat_pool: bool,
    with_first_bn => first_bn: bool,
    with_bn_final => bn_final: bool,
    with_lin_first => lin_first: bool,
});

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(cfg: &Config) -> HashMap<String, Vec<usize>> {
        cfg.state_dict_shapes().into_iter().collect()
    }

    fn vit(f: impl FnOnce(&mut vit::Config)) -> Config {
        let mut c = Config::vit_tiny_patch16_224(37);
        if let BodyConfig::Vit(v) = &mut c.body {
            f(v);
        }
        c
    }

    #[test]
    fn infers_vit_tiny_and_other_sizes_from_shapes() {
        let tiny = Config::vit_tiny_patch16_224(37);
        assert_eq!(
            Config::infer(&shapes(&tiny), 224, None, None).unwrap(),
            tiny
        );
        let small = vit(|v| {
            v.embed_dim = 384;
            v.num_heads = 6;
        });
        let small = Config::with_default_head(small.body, 5).unwrap();
        let s = shapes(&small);
        // From the arch name, from the 64-wide-heads rule, and given explicitly.
        assert_eq!(
            Config::infer(&s, 224, Some("vit_small_patch16_224"), None).unwrap(),
            small
        );
        assert_eq!(Config::infer(&s, 224, None, None).unwrap(), small);
        let eight = Config::infer(&s, 224, Some("vit_small_patch16_224"), Some(8)).unwrap();
        let BodyConfig::Vit(v) = &eight.body else {
            panic!("{eight}")
        };
        assert_eq!(v.num_heads, 8);
        let base32 = vit(|v| {
            v.embed_dim = 768;
            v.num_heads = 12;
            v.patch_size = 32;
            v.img_size = 384;
            v.depth = 2;
        });
        let base32 = Config::with_default_head(base32.body, 37).unwrap();
        assert_eq!(
            Config::infer(&shapes(&base32), 384, Some("vit_base_patch32_384"), None).unwrap(),
            base32
        );
    }

    #[test]
    fn says_what_is_missing_or_wrong() {
        let tiny = Config::vit_tiny_patch16_224(37);
        let reason = |s: &HashMap<String, Vec<usize>>, heads: Option<usize>| {
            Config::infer(s, 224, None, heads).unwrap_err().to_string()
        };
        let mut s = shapes(&tiny);
        s.remove("0.model.patch_embed.proj.weight");
        assert!(reason(&s, None).contains("no body fastai-infer recognises"));
        let mut s = shapes(&tiny);
        s.insert(
            "0.model.patch_embed.proj.weight".into(),
            vec![192, 3, 16, 8],
        );
        assert!(reason(&s, None).contains("not square"));
        let s: HashMap<String, Vec<usize>> = shapes(&tiny)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("0.model.blocks."))
            .collect();
        assert!(reason(&s, None).contains("no transformer blocks"));
        let mut s = shapes(&tiny);
        s.remove("1.6.weight");
        let e = reason(&s, None);
        assert!(e.contains("1.4 BatchNorm1d(512)"), "{e}");
        let s = shapes(&tiny);
        let e = Config::infer(&s, 224, None, Some(5)).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "vit.num_heads"),
            "{e}"
        );
        // ResNet and ConvNeXt keys with a wrong shape.
        let mut s = shapes(
            &Config::with_default_head(BodyConfig::ResNet(resnet::Config::resnet18()), 3).unwrap(),
        );
        s.insert("0.4.0.conv1.weight".into(), vec![64, 64, 3]);
        let e = reason(&s, None);
        assert!(
            e.contains("0.4.0.conv1.weight has shape [64, 64, 3], expected 4 dimensions"),
            "{e}"
        );
        let mut s = shapes(
            &Config::with_default_head(BodyConfig::ConvNext(convnext::Config::convnext_tiny()), 3)
                .unwrap(),
        );
        s.insert(
            "0.model.stages.0.blocks.0.mlp.fc1.weight".into(),
            vec![380, 96],
        );
        let e = reason(&s, None);
        assert!(e.contains("expected (k * 96, 96)"), "{e}");
    }

    /// Bodies the fixtures do not cover round-trip through their keys: ResNeXt-style groups,
    /// a wide ResNet, more or fewer stages, ConvNeXt with 1x1-conv MLPs, `norm_pre`, no layer
    /// scale.
    #[test]
    fn other_bodies_round_trip_through_their_keys() {
        let resnext = resnet::Config {
            widths: vec![128, 256, 512, 1024],
            groups: 32,
            ..resnet::Config::resnet50()
        };
        let wide_timm = resnet::Config {
            layout: resnet::KeyLayout::Timm,
            widths: vec![128, 256, 512, 1024],
            ..resnet::Config::resnet50()
        };
        let three_stages = resnet::Config {
            depths: vec![1, 2, 1],
            planes: vec![8, 16, 32],
            widths: vec![8, 16, 32],
            in_chans: 1,
            ..resnet::Config::resnet18()
        };
        let atto = convnext::Config {
            depths: vec![2, 2, 6, 2],
            dims: vec![40, 80, 160, 320],
            conv_mlp: true,
            ..convnext::Config::convnext_tiny()
        };
        let odd = convnext::Config {
            depths: vec![1, 1],
            dims: vec![8, 12],
            layer_scale: false,
            head_norm_first: true,
            kernel_size: 5,
            mlp_ratio: 3,
            ..convnext::Config::convnext_tiny()
        };
        for body in [
            BodyConfig::ResNet(resnext),
            BodyConfig::ResNet(wide_timm),
            BodyConfig::ResNet(three_stages),
            BodyConfig::ConvNext(atto),
            BodyConfig::ConvNext(odd),
        ] {
            let cfg = Config::with_default_head(body, 4).unwrap();
            assert_eq!(Config::infer(&shapes(&cfg), 224, None, None).unwrap(), cfg);
            let dev = candle_core::Device::Cpu;
            let vb = VarBuilder::zeros(candle_core::DType::F32, &dev);
            if cfg.body.in_chans() == 3
                && !matches!(&cfg.body, BodyConfig::ResNet(r) if r.groups > 1)
            {
                let model = FastaiModel::new(&cfg, vb).unwrap();
                let x = Tensor::zeros((1, 3, 64, 48), candle_core::DType::F32, &dev).unwrap();
                assert_eq!(model.forward(&x).unwrap().dims(), &[1, 4], "{cfg}");
            }
        }
    }

    /// Each degenerate config is refused by `validate` and by every public constructor, naming
    /// the field.
    #[test]
    fn validate_refuses_degenerate_configs() {
        let resnet = |f: &dyn Fn(&mut resnet::Config)| {
            let mut r = resnet::Config::resnet18();
            f(&mut r);
            let head = head::Config::default_cnn(512, 3).unwrap();
            Config {
                body: BodyConfig::ResNet(r),
                head,
            }
        };
        let convnext = |f: &dyn Fn(&mut convnext::Config)| {
            let mut c = convnext::Config::convnext_tiny();
            f(&mut c);
            let head = head::Config::default_cnn(768, 3).unwrap();
            Config {
                body: BodyConfig::ConvNext(c),
                head,
            }
        };
        let cases: Vec<(Config, &str)> = vec![
            (vit(|v| v.num_heads = 0), "vit.num_heads is 0"),
            (vit(|v| v.patch_size = 0), "vit.patch_size is 0"),
            (vit(|v| v.embed_dim = 0), "vit.embed_dim is 0"),
            (vit(|v| v.depth = 0), "vit.depth is 0"),
            (vit(|v| v.mlp_ratio = 0), "vit.mlp_ratio is 0"),
            (vit(|v| v.img_size = 0), "vit.img_size is 0"),
            (vit(|v| v.in_chans = 0), "vit.in_chans is 0"),
            (vit(|v| v.num_heads = 5), "vit.num_heads is 5, which does not divide embed_dim 192"),
            (vit(|v| v.img_size = 200), "vit.img_size is 200, not a whole number of 16-pixel patches"),
            (vit(|v| v.layer_norm_eps = f64::NAN), "vit.layer_norm_eps"),
            (resnet(&|r| r.depths.clear()), "resnet.depths is empty"),
            (resnet(&|r| r.depths[2] = 0), "resnet.depths[2] is 0"),
            (resnet(&|r| r.planes.pop().map_or((), |_| ())), "resnet.planes has 3 entries for 4 stages"),
            (resnet(&|r| r.widths[0] = 0), "resnet.widths[0] is 0"),
            (resnet(&|r| r.stem_width = 0), "resnet.stem_width is 0"),
            (resnet(&|r| r.in_chans = 0), "resnet.in_chans is 0"),
            (resnet(&|r| r.groups = 0), "resnet.groups is 0"),
            (resnet(&|r| r.groups = 2), "resnet.groups is 2; a BasicBlock has groups 1"),
            (
                resnet(&|r| {
                    r.block = resnet::BlockKind::Bottleneck;
                    r.groups = 3;
                }),
                "resnet.widths[0] is 64, not a multiple of groups 3",
            ),
            (resnet(&|r| r.batch_norm_eps = -1.0), "resnet.batch_norm_eps"),
            (convnext(&|c| c.dims[1] = 0), "convnext.dims[1] is 0"),
            (convnext(&|c| c.depths[3] = 0), "convnext.depths[3] is 0"),
            (convnext(&|c| c.dims.truncate(3)), "convnext.dims has 3 entries for 4 stages"),
            (convnext(&|c| { c.depths.clear(); c.dims.clear(); }), "convnext.depths is empty"),
            (convnext(&|c| c.patch_size = 0), "convnext.patch_size is 0"),
            (convnext(&|c| c.kernel_size = 6), "convnext.kernel_size is 6, expected an odd size"),
            (convnext(&|c| c.downsample_size = 0), "convnext.downsample_size is 0"),
            (convnext(&|c| c.mlp_ratio = 0), "convnext.mlp_ratio is 0"),
            (convnext(&|c| c.in_chans = 0), "convnext.in_chans is 0"),
            (convnext(&|c| c.layer_norm_eps = 0.0), "convnext.layer_norm_eps"),
            // The head does not fit the body.
            (resnet(&|r| r.planes[3] = 256), "head.in_features is 512, but the body outputs 256"),
            (
                Config {
                    head: head::Config::default_vit(512, 3).unwrap(),
                    ..resnet(&|_| ())
                },
                "head.layers[0] is BatchNorm1d(512), but the ResNet (torchvision or timm) body returns a feature map",
            ),
            (
                Config {
                    head: head::Config::default_cnn(192, 3).unwrap(),
                    ..vit(|_| ())
                },
                "head.layers[0] is AdaptiveConcatPool2d, but the timm ViT body returns pooled features",
            ),
            (Config::vit_tiny_patch16_224(0), "head.layers[6] is Linear(512, 0, bias=False)"),
        ];
        let dev = candle_core::Device::Cpu;
        for (cfg, says) in cases {
            // Listing the keys of an invalid config does not panic.
            let _ = cfg.state_dict_shapes();
            let e = cfg.validate().unwrap_err();
            assert!(matches!(e, Error::InvalidConfig { .. }), "{e:?}");
            assert!(e.to_string().contains(says), "{e} (expected {says})");
            let vb = VarBuilder::zeros(candle_core::DType::F32, &dev);
            let e = FastaiModel::new(&cfg, vb.clone()).unwrap_err();
            assert!(e.to_string().contains(says), "FastaiModel::new: {e}");
            let e = Config::new(cfg.body.clone(), cfg.head.clone()).unwrap_err();
            assert!(e.to_string().contains(says), "Config::new: {e}");
            let body = match &cfg.body {
                BodyConfig::Vit(c) => VisionTransformer::new(c, vb.clone()).map(|_| ()),
                BodyConfig::ResNet(c) => ResNet::new(c, vb.clone()).map(|_| ()),
                BodyConfig::ConvNext(c) => ConvNeXt::new(c, vb.clone()).map(|_| ()),
            };
            let head = FastaiHead::new(&cfg.head, vb).map(|_| ());
            // A head that does not fit its body is only refused by the whole model.
            if cfg.body.validate().is_err() {
                assert!(body.is_err(), "{says}: the body's constructor accepted it");
            }
            if cfg.head.validate().is_err() {
                assert!(head.is_err(), "{says}: the head's constructor accepted it");
            }
        }
    }
}
