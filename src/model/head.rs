//! The head: fastai's `create_head`, the `nn.Sequential` under the state_dict's `1.*` keys.
//!
//! fastai builds it from the body's output width `nf` and the class count `n_out`:
//!
//! ```python
//! create_head(nf, n_out, lin_ftrs=None, ps=0.5, pool=True, concat_pool=True,
//!             first_bn=True, bn_final=False, lin_first=False, y_range=None)
//! ```
//!
//! A CNN body (ResNet, ConvNeXt) returns a feature map, so the head starts with
//! `AdaptiveConcatPool2d` (global max ‖ global average, `2 * nf` features) or, with
//! `concat_pool=False`, `nn.AdaptiveAvgPool2d(1)`, then `Flatten`. A timm ViT body returns
//! pooled features, and fastai builds the head with `pool=False`. Then, for each pair of
//! consecutive widths in `[nf, *lin_ftrs, n_out]` (`lin_ftrs` defaults to `[512]`), a
//! `LinBnDrop`: `BatchNorm1d`, `Dropout` (only where its `p` is not 0), `Linear` (no bias
//! after a BatchNorm), and `ReLU` between the linear layers; with `lin_first=True` the order
//! is `Linear`, `ReLU`, `BatchNorm1d`, `Dropout` after a leading `Dropout`, and a final
//! biased `Linear`; `bn_final=True` appends a `BatchNorm1d`. The default head of a
//! `vision_learner` on a ResNet is thus
//! `0` AdaptiveConcatPool2d, `1` Flatten, `2` BatchNorm1d, `3` Dropout, `4` Linear, `5` ReLU,
//! `6` BatchNorm1d, `7` Dropout, `8` Linear.
//!
//! [`Config::create_head`] builds that list as fastai does; [`Config::infer`] finds the
//! `create_head` arguments whose list matches the keys and shapes of a state_dict (parameterless
//! layers show only as gaps in the indices) and refuses any other head, naming the layer.
//! `y_range` adds a parameterless `SigmoidRange` at the end, which no key shows: a regression
//! head is out of scope here.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::layers::{global_max_avg, BatchNorm, Linear};
use super::summarize;
use crate::error::{Error, Result};

/// The prefix of the head's keys in fastai's state_dict.
pub const PREFIX: &str = "1.";

/// One layer of the head's `nn.Sequential`, by its fastai/PyTorch name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// fastai's `AdaptiveConcatPool2d`: global max pooling, then global average pooling,
    /// concatenated over channels (`C` to `2C`).
    AdaptiveConcatPool2d,
    /// `nn.AdaptiveAvgPool2d(1)` (`concat_pool=False`).
    AdaptiveAvgPool2d,
    /// fastai's `Flatten`: `(B, C, 1, 1)` to `(B, C)`.
    Flatten,
    /// `nn.BatchNorm1d(num_features)` in eval mode.
    BatchNorm1d(usize),
    /// `nn.Dropout`: the identity at inference.
    Dropout,
    /// `nn.Linear`.
    Linear {
        /// Input width.
        in_features: usize,
        /// Output width.
        out_features: usize,
        /// Whether it has a bias (fastai's `Linear` after a BatchNorm has none).
        bias: bool,
    },
    /// `nn.ReLU`.
    ReLU,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::AdaptiveConcatPool2d => write!(f, "AdaptiveConcatPool2d"),
            Layer::AdaptiveAvgPool2d => write!(f, "AdaptiveAvgPool2d"),
            Layer::Flatten => write!(f, "Flatten"),
            Layer::BatchNorm1d(n) => write!(f, "BatchNorm1d({n})"),
            Layer::Dropout => write!(f, "Dropout"),
            Layer::Linear {
                in_features,
                out_features,
                bias,
            } => write!(
                f,
                "Linear({in_features}, {out_features}{})",
                if *bias { "" } else { ", bias=False" }
            ),
            Layer::ReLU => write!(f, "ReLU"),
        }
    }
}

/// The arguments of fastai's `create_head` (and `vision_learner`) that shape the head, with
/// fastai's defaults.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HeadOptions {
    /// Hidden widths (`None`: fastai's `[512]`).
    pub lin_ftrs: Option<Vec<usize>>,
    /// Dropout probabilities: one value (spread as fastai does: `p / 2` for all but the last
    /// layer) or one per linear layer. Only whether each is 0 matters at inference: fastai
    /// leaves out the `Dropout` module of a `p = 0` layer, which shifts the later indices.
    pub ps: Vec<f64>,
    /// Whether the head pools (CNN bodies) or takes pooled features (timm ViT: `False`).
    pub pool: bool,
    /// `AdaptiveConcatPool2d` (`True`) or `nn.AdaptiveAvgPool2d(1)`.
    pub concat_pool: bool,
    /// Whether the first linear layer has a BatchNorm before it.
    pub first_bn: bool,
    /// Whether a BatchNorm follows the last linear layer.
    pub bn_final: bool,
    /// Linear before BatchNorm in each block.
    pub lin_first: bool,
}

impl Default for HeadOptions {
    fn default() -> Self {
        HeadOptions {
            lin_ftrs: None,
            ps: vec![0.5],
            pool: true,
            concat_pool: true,
            first_bn: true,
            bn_final: false,
            lin_first: false,
        }
    }
}

/// The head's layers, in `nn.Sequential` order (index `i` holds the keys `1.i.*`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The width of the body's output (`nf`): channels of the feature map it pools, or the
    /// pooled features of a ViT.
    pub in_features: usize,
    /// The layers.
    pub layers: Vec<Layer>,
    /// BatchNorm1d's epsilon (1e-5).
    pub batch_norm_eps: f64,
}

/// A parameter-holding layer as the keys show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    BatchNorm1d(usize),
    Linear(usize, usize, bool),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Found::BatchNorm1d(n) => Layer::BatchNorm1d(n).fmt(f),
            Found::Linear(i, o, bias) => Layer::Linear {
                in_features: i,
                out_features: o,
                bias,
            }
            .fmt(f),
        }
    }
}

/// The most linear layers [`Config::infer`] searches `create_head` arguments for.
const MAX_LINEAR: usize = 12;

impl Config {
    /// A head of explicit `layers` (in `nn.Sequential` order) on a body of `in_features`
    /// output width, with BatchNorm1d's epsilon `batch_norm_eps`, after [`Config::validate`]
    /// (an [`Error::InvalidConfig`] naming the layer that does not fit). To build the layers
    /// fastai's `create_head` makes, use [`Config::create_head`].
    pub fn new(in_features: usize, layers: Vec<Layer>, batch_norm_eps: f64) -> Result<Self> {
        let cfg = Config {
            in_features,
            layers,
            batch_norm_eps,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// fastai's default head for a `nf`-channel CNN body and `n_out` classes.
    pub fn default_cnn(nf: usize, n_out: usize) -> Result<Self> {
        Self::create_head(nf, n_out, &HeadOptions::default())
    }

    /// fastai's head for a timm ViT body of width `nf` (`pool=False`, the other defaults).
    pub fn default_vit(nf: usize, n_out: usize) -> Result<Self> {
        Self::create_head(
            nf,
            n_out,
            &HeadOptions {
                pool: false,
                ..Default::default()
            },
        )
    }

    /// The layers fastai's `create_head(nf, n_out, ...)` builds with `opts`, validated.
    ///
    /// `opts.ps` must hold one value or one per linear layer (fastai's `zip` would otherwise
    /// drop layers and build a head that does not run).
    pub fn create_head(nf: usize, n_out: usize, opts: &HeadOptions) -> Result<Self> {
        let cfg = Config {
            in_features: nf,
            layers: create_head_layers(nf, n_out, opts)?,
            batch_norm_eps: 1e-5,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The head of a state_dict: the `create_head` layers whose BatchNorm1d and Linear layers
    /// sit at exactly the indices and shapes of the `1.N.*` keys, for a body of `nf` output
    /// channels that `pool`s (a CNN) or not (a ViT). The arguments searched are
    /// `concat_pool`, `lin_first`, `first_bn`, `bn_final` and which `ps` are 0; `lin_ftrs` and
    /// `n_out` are the linear layers' widths.
    ///
    /// Anything else is an [`Error::UnsupportedHead`] naming the key or layer: a key that is
    /// not a BatchNorm1d's or a Linear's parameter (a `custom_head`'s convolution, a nested
    /// module), a first layer whose width does not fit the body's, or layers in an order
    /// `create_head` does not make.
    pub fn infer(shapes: &HashMap<String, Vec<usize>>, nf: usize, pool: bool) -> Result<Self> {
        let unsupported = |reason: String| Error::UnsupportedHead {
            path: Default::default(),
            reason,
        };
        let found = found_layers(shapes).map_err(unsupported)?;
        let linears: Vec<(usize, usize)> = found
            .values()
            .filter_map(|f| match *f {
                Found::Linear(i, o, _) => Some((i, o)),
                Found::BatchNorm1d(_) => None,
            })
            .collect();
        let described = || {
            found
                .iter()
                .map(|(i, f)| format!("1.{i} {f}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(&(_, n_out)) = linears.last() else {
            return Err(unsupported(if found.is_empty() {
                let mut keys: Vec<&String> = shapes.keys().collect();
                keys.sort();
                format!("no head: no 1.N.* keys among {}", summarize(&keys))
            } else {
                format!("no Linear layer among {}", described())
            }));
        };
        if linears.len() > MAX_LINEAR {
            return Err(unsupported(format!(
                "{} Linear layers (1.* keys); fastai-infer searches create_head's arguments for up to {MAX_LINEAR}",
                linears.len()
            )));
        }
        let hidden: Vec<usize> = linears[..linears.len() - 1].iter().map(|l| l.1).collect();
        let concat_choices: &[bool] = if pool { &[true, false] } else { &[false] };
        for &concat_pool in concat_choices {
            for lin_first in [false, true] {
                for first_bn in [true, false] {
                    for bn_final in [false, true] {
                        for mask in 0u32..(1 << linears.len()) {
                            let ps = (0..linears.len())
                                .map(|i| if mask >> i & 1 == 1 { 0.0 } else { 0.5 })
                                .collect();
                            let opts = HeadOptions {
                                lin_ftrs: Some(hidden.clone()),
                                ps,
                                pool,
                                concat_pool,
                                first_bn,
                                bn_final,
                                lin_first,
                            };
                            if let Ok(cfg) = Self::create_head(nf, n_out, &opts) {
                                if cfg.found() == found {
                                    return Ok(cfg);
                                }
                            }
                        }
                    }
                }
            }
        }
        // Name the most likely cause.
        let first = found.iter().next();
        let takes = |f: &Found| match *f {
            Found::BatchNorm1d(n) => n,
            Found::Linear(i, _, _) => i,
        };
        let reason = match first {
            Some((&i, f)) if pool && i < 2 => format!(
                "its first layer 1.{i} ({f}) comes before any pooling, but the body returns a \
                 feature map: fastai's head starts with AdaptiveConcatPool2d/AdaptiveAvgPool2d and \
                 Flatten (1.0, 1.1); found {}",
                described()
            ),
            Some((&i, f)) if !pool && i >= 2 => format!(
                "its first layer is 1.{i} ({f}): the head pools, but a timm ViT body returns \
                 pooled features (fastai builds its head with pool=False); found {}",
                described()
            ),
            Some((&i, f))
                if ![nf, nf.saturating_mul(2)].contains(&takes(f)) || (!pool && takes(f) != nf) =>
            {
                format!(
                    "its first layer 1.{i} ({f}) takes {} features but the body gives {nf}{}; found {}",
                    takes(f),
                    if pool {
                        format!(" ({} after AdaptiveConcatPool2d)", nf.saturating_mul(2))
                    } else {
                        String::new()
                    },
                    described()
                )
            }
            _ => format!(
                "its layers are not in an order create_head makes: found {}",
                described()
            ),
        };
        Err(unsupported(reason))
    }

    /// The BatchNorm1d and Linear layers by index.
    fn found(&self) -> BTreeMap<usize, Found> {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match *l {
                Layer::BatchNorm1d(n) => Some((i, Found::BatchNorm1d(n))),
                Layer::Linear {
                    in_features,
                    out_features,
                    bias,
                } => Some((i, Found::Linear(in_features, out_features, bias))),
                _ => None,
            })
            .collect()
    }

    /// Whether the head pools a feature map (it starts with a pooling layer).
    pub fn pools(&self) -> bool {
        matches!(
            self.layers.first(),
            Some(Layer::AdaptiveConcatPool2d | Layer::AdaptiveAvgPool2d)
        )
    }

    /// The number of classes: the last linear layer's output width.
    pub fn num_classes(&self) -> usize {
        self.layers
            .iter()
            .rev()
            .find_map(|l| match *l {
                Layer::Linear { out_features, .. } => Some(out_features),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// This head with `n` classes: the last linear layer and any BatchNorm1d after it resized.
    pub fn with_num_classes(mut self, n: usize) -> Self {
        if let Some(last) = self
            .layers
            .iter()
            .rposition(|l| matches!(l, Layer::Linear { .. }))
        {
            for l in &mut self.layers[last..] {
                match l {
                    Layer::Linear { out_features, .. } => *out_features = n,
                    Layer::BatchNorm1d(m) => *m = n,
                    _ => {}
                }
            }
        }
        self
    }

    /// Checks that the layers chain: a pooling layer only first and followed by `Flatten`, each
    /// BatchNorm1d and Linear taking the width before it, at least one Linear, every width
    /// positive; the error names the layer (`head.layers[i]`).
    pub fn validate(&self) -> Result<()> {
        let bad = |field: String, reason: String| Err(Error::InvalidConfig { field, reason });
        if self.in_features == 0 {
            return bad("head.in_features".into(), "is 0".into());
        }
        if self.layers.is_empty() {
            return bad("head.layers".into(), "is empty".into());
        }
        if !(self.batch_norm_eps.is_finite() && self.batch_norm_eps > 0.0) {
            return bad(
                "head.batch_norm_eps".into(),
                format!("is {}, expected a positive number", self.batch_norm_eps),
            );
        }
        // What flows between the layers: a feature map, a pooled (B, C, 1, 1) map, or (B, C).
        #[derive(PartialEq)]
        enum Flow {
            Map(usize),
            Pooled(usize),
            Features(usize),
        }
        let mut flow = if self.pools() {
            Flow::Map(self.in_features)
        } else {
            Flow::Features(self.in_features)
        };
        let mut linear = false;
        for (i, layer) in self.layers.iter().enumerate() {
            let field = || format!("head.layers[{i}]");
            flow = match (layer, &flow) {
                (Layer::AdaptiveConcatPool2d, Flow::Map(c)) => Flow::Pooled(c.saturating_mul(2)),
                (Layer::AdaptiveAvgPool2d, Flow::Map(c)) => Flow::Pooled(*c),
                (Layer::Flatten, Flow::Pooled(c)) => Flow::Features(*c),
                (Layer::BatchNorm1d(n), Flow::Features(c)) if n == c && *n > 0 => {
                    Flow::Features(*c)
                }
                (
                    Layer::Linear {
                        in_features,
                        out_features,
                        ..
                    },
                    Flow::Features(c),
                ) if in_features == c && *out_features > 0 => {
                    linear = true;
                    Flow::Features(*out_features)
                }
                (Layer::Dropout | Layer::ReLU, Flow::Features(c)) => Flow::Features(*c),
                (layer, flow) => {
                    let given = match flow {
                        Flow::Map(c) => format!("a {c}-channel feature map"),
                        Flow::Pooled(c) => format!("a pooled {c}-channel map (not flattened)"),
                        Flow::Features(c) => format!("{c} features"),
                    };
                    return bad(field(), format!("is {layer}, which cannot take {given}"));
                }
            };
        }
        if !linear {
            return bad("head.layers".into(), "has no Linear layer".into());
        }
        match flow {
            Flow::Features(c) if c > 0 => Ok(()),
            _ => bad(
                "head.layers".into(),
                "does not end with class scores (B, n_out)".into(),
            ),
        }
    }

    /// Every key of the head in fastai's state_dict (`1.*`), with its shape.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            match *layer {
                Layer::BatchNorm1d(n) => {
                    for name in ["weight", "bias", "running_mean", "running_var"] {
                        v.push((format!("{PREFIX}{i}.{name}"), vec![n]));
                    }
                    v.push((format!("{PREFIX}{i}.num_batches_tracked"), vec![]));
                }
                Layer::Linear {
                    in_features,
                    out_features,
                    bias,
                } => {
                    v.push((
                        format!("{PREFIX}{i}.weight"),
                        vec![out_features, in_features],
                    ));
                    if bias {
                        v.push((format!("{PREFIX}{i}.bias"), vec![out_features]));
                    }
                }
                _ => {}
            }
        }
        v
    }
}

impl fmt::Display for Config {
    /// The layers as PyTorch prints them, in one line: `AdaptiveConcatPool2d, Flatten,
    /// BatchNorm1d(1024), Dropout, Linear(1024, 512, bias=False), ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.layers.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

/// The layers of fastai's `create_head(nf, n_out, ...)` with `opts`, not validated; an error
/// only when `opts.ps` has neither one value nor one per linear layer.
pub(crate) fn create_head_layers(
    nf: usize,
    n_out: usize,
    opts: &HeadOptions,
) -> Result<Vec<Layer>> {
    let nf_in = if opts.pool && opts.concat_pool {
        nf.saturating_mul(2)
    } else {
        nf
    };
    let mut widths = vec![nf_in];
    widths.extend(opts.lin_ftrs.clone().unwrap_or_else(|| vec![512]));
    widths.push(n_out);
    let n = widths.len();
    let mut ps = opts.ps.clone();
    if ps.len() == 1 {
        let p = ps[0];
        ps = vec![p / 2.0; n - 2];
        ps.push(p);
    }
    if ps.len() != n - 1 {
        return Err(Error::InvalidConfig {
            field: "head.ps".into(),
            reason: format!(
                "has {} values for {} linear layers (give one value, or one per layer)",
                opts.ps.len(),
                n - 1
            ),
        });
    }
    let mut layers = Vec::new();
    if opts.pool {
        layers.push(if opts.concat_pool {
            Layer::AdaptiveConcatPool2d
        } else {
            Layer::AdaptiveAvgPool2d
        });
        layers.push(Layer::Flatten);
    }
    let mut ps = ps.into_iter();
    if opts.lin_first {
        // fastai appends nn.Dropout(ps.pop(0)) whatever its p.
        ps.next();
        layers.push(Layer::Dropout);
    }
    let blocks = if opts.lin_first { n - 2 } else { n - 1 };
    for (i, p) in (0..blocks).zip(ps) {
        let (ni, no) = (widths[i], widths[i + 1]);
        let bn = if i == 0 { opts.first_bn } else { true };
        let act = i + 2 < n;
        let lin = Layer::Linear {
            in_features: ni,
            out_features: no,
            bias: !bn,
        };
        if opts.lin_first {
            layers.push(lin);
            if act {
                layers.push(Layer::ReLU);
            }
            if bn {
                layers.push(Layer::BatchNorm1d(no));
            }
            if p != 0.0 {
                layers.push(Layer::Dropout);
            }
        } else {
            if bn {
                layers.push(Layer::BatchNorm1d(ni));
            }
            if p != 0.0 {
                layers.push(Layer::Dropout);
            }
            layers.push(lin);
            if act {
                layers.push(Layer::ReLU);
            }
        }
    }
    if opts.lin_first {
        layers.push(Layer::Linear {
            in_features: widths[n - 2],
            out_features: n_out,
            bias: true,
        });
    }
    if opts.bn_final {
        layers.push(Layer::BatchNorm1d(n_out));
    }
    Ok(layers)
}

/// The head's BatchNorm1d and Linear layers as the `1.N.*` keys show them, or what does not
/// fit, naming the key.
fn found_layers(
    shapes: &HashMap<String, Vec<usize>>,
) -> std::result::Result<BTreeMap<usize, Found>, String> {
    let mut groups: BTreeMap<usize, BTreeMap<&str, &[usize]>> = BTreeMap::new();
    let mut keys: Vec<&String> = shapes.keys().filter(|k| k.starts_with(PREFIX)).collect();
    keys.sort();
    for key in keys {
        let rest = &key[PREFIX.len()..];
        let (idx, param) = rest.split_once('.').ok_or_else(|| {
            format!("{key} is not a parameter of a layer of the head's nn.Sequential")
        })?;
        let idx: usize = idx.parse().map_err(|_| {
            format!("{key} is not under a numbered layer of the head's nn.Sequential")
        })?;
        if param.contains('.') {
            return Err(format!(
                "{key} belongs to a nested module (1.{idx} is a container); create_head's layers \
                 hold their parameters directly"
            ));
        }
        groups
            .entry(idx)
            .or_default()
            .insert(param, shapes[key].as_slice());
    }
    let mut out = BTreeMap::new();
    for (idx, params) in groups {
        let names: Vec<&str> = params.keys().copied().collect();
        let weight = params.get("weight").copied();
        let layer = match (names.as_slice(), weight) {
            (
                ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"],
                Some([n]),
            ) if ["bias", "running_mean", "running_var"]
                .iter()
                .all(|p| params[p] == [*n])
                && params["num_batches_tracked"].is_empty() =>
            {
                Some(Found::BatchNorm1d(*n))
            }
            (["weight"], Some([o, i])) => Some(Found::Linear(*i, *o, false)),
            (["bias", "weight"], Some([o, i])) if params["bias"] == [*o] => {
                Some(Found::Linear(*i, *o, true))
            }
            _ => None,
        };
        match layer {
            Some(l) => {
                out.insert(idx, l);
            }
            None => {
                let held = params
                    .iter()
                    .map(|(p, s)| format!("1.{idx}.{p} {s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(format!(
                    "layer 1.{idx} holds {held}: not a BatchNorm1d or Linear of create_head"
                ));
            }
        }
    }
    Ok(out)
}

/// One layer of the loaded head.
#[derive(Debug, Clone)]
enum HeadLayer {
    ConcatPool,
    AvgPool,
    Flatten,
    BatchNorm1d(BatchNorm),
    Dropout,
    Linear(Linear),
    ReLU,
}

/// fastai's head, loaded: the layers of a [`Config`] in order.
#[derive(Debug, Clone)]
pub struct FastaiHead {
    layers: Vec<HeadLayer>,
    cfg: Config,
}

impl FastaiHead {
    /// Loads `N.weight` (and the BatchNorms' statistics, the biases) for every layer of `cfg`
    /// from `vb` rooted at fastai's `1.`, after [`Config::validate`].
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let layers = cfg
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Ok(match *l {
                    Layer::AdaptiveConcatPool2d => HeadLayer::ConcatPool,
                    Layer::AdaptiveAvgPool2d => HeadLayer::AvgPool,
                    Layer::Flatten => HeadLayer::Flatten,
                    Layer::BatchNorm1d(n) => {
                        HeadLayer::BatchNorm1d(BatchNorm::new(n, cfg.batch_norm_eps, vb.pp(i))?)
                    }
                    Layer::Dropout => HeadLayer::Dropout,
                    Layer::Linear {
                        in_features,
                        out_features,
                        bias,
                    } => HeadLayer::Linear(Linear::new(in_features, out_features, bias, vb.pp(i))?),
                    Layer::ReLU => HeadLayer::ReLU,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(FastaiHead {
            layers,
            cfg: cfg.clone(),
        })
    }

    /// The head's layers.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the head's weights live on.
    pub fn device(&self) -> candle_core::Device {
        self.layers
            .iter()
            .find_map(|l| match l {
                HeadLayer::Linear(lin) => Some(lin.device().clone()),
                HeadLayer::BatchNorm1d(bn) => Some(bn.device().clone()),
                _ => None,
            })
            .unwrap_or(candle_core::Device::Cpu)
    }
}

impl Module for FastaiHead {
    /// The body's output (`(B, C, H, W)` for a pooling head, `(B, C)` otherwise) to the logits
    /// `(B, n_out)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = match layer {
                HeadLayer::ConcatPool => {
                    let (max, avg) = global_max_avg(&x)?;
                    Tensor::cat(&[&max, &avg], 1)?
                }
                HeadLayer::AvgPool => global_max_avg(&x)?.1,
                // The pooling layers above already drop the 1x1 dimensions.
                HeadLayer::Flatten => x.flatten_from(1)?,
                HeadLayer::BatchNorm1d(bn) => bn.forward(&x)?,
                HeadLayer::Dropout => x,
                HeadLayer::Linear(lin) => lin.forward(&x)?,
                HeadLayer::ReLU => x.relu()?,
            };
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(cfg: &Config) -> HashMap<String, Vec<usize>> {
        cfg.state_dict_shapes().into_iter().collect()
    }

    /// fastai's layer lists for the heads `vision_learner` makes (printed by PyTorch in
    /// scripts/make_fixtures_models.py's log), and `infer` finds each from its keys alone.
    #[test]
    fn create_head_builds_fastais_layers_and_infer_finds_them() {
        use Layer::*;
        let lin = |i, o, bias| Linear {
            in_features: i,
            out_features: o,
            bias,
        };
        let default = Config::default_cnn(64, 3).unwrap();
        assert_eq!(
            default.layers,
            [
                AdaptiveConcatPool2d,
                Flatten,
                BatchNorm1d(128),
                Dropout,
                lin(128, 512, false),
                ReLU,
                BatchNorm1d(512),
                Dropout,
                lin(512, 3, false)
            ]
        );
        let lin_first = Config::create_head(
            64,
            3,
            &HeadOptions {
                lin_first: true,
                bn_final: true,
                lin_ftrs: Some(vec![24]),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            lin_first.layers,
            [
                AdaptiveConcatPool2d,
                Flatten,
                Dropout,
                lin(128, 24, false),
                ReLU,
                BatchNorm1d(24),
                Dropout,
                lin(24, 3, true),
                BatchNorm1d(3)
            ]
        );
        let plain = Config::create_head(
            32,
            3,
            &HeadOptions {
                concat_pool: false,
                first_bn: false,
                ps: vec![0.0],
                lin_ftrs: Some(vec![]),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(plain.layers, [AdaptiveAvgPool2d, Flatten, lin(32, 3, true)]);
        let vit = Config::default_vit(192, 37).unwrap();
        assert_eq!(
            vit.layers,
            [
                BatchNorm1d(192),
                Dropout,
                lin(192, 512, false),
                ReLU,
                BatchNorm1d(512),
                Dropout,
                lin(512, 37, false)
            ]
        );
        let deep = Config::create_head(
            64,
            5,
            &HeadOptions {
                lin_ftrs: Some(vec![32, 16]),
                ps: vec![0.1, 0.0, 0.3],
                ..Default::default()
            },
        )
        .unwrap();
        for (cfg, pool) in [
            (&default, true),
            (&lin_first, true),
            (&plain, true),
            (&vit, false),
            (&deep, true),
        ] {
            assert_eq!(
                &Config::infer(&shapes(cfg), cfg.in_features, pool).unwrap(),
                cfg,
                "{cfg}"
            );
        }
        assert_eq!(deep.num_classes(), 5);
        assert_eq!(lin_first.clone().with_num_classes(7).num_classes(), 7);
        assert_eq!(
            lin_first.with_num_classes(7).layers.last(),
            Some(&BatchNorm1d(7))
        );
    }

    #[test]
    fn refuses_custom_heads_naming_the_layer() {
        let mut s = shapes(&Config::default_cnn(64, 3).unwrap());
        // A convolution in the head.
        s.insert("1.3.weight".into(), vec![8, 128, 3, 3]);
        let e = Config::infer(&s, 64, true).unwrap_err().to_string();
        assert!(
            e.contains("layer 1.3 holds 1.3.weight [8, 128, 3, 3]"),
            "{e}"
        );
        // A nested custom module.
        let mut s = shapes(&Config::default_cnn(64, 3).unwrap());
        s.insert("1.9.0.weight".into(), vec![3, 3]);
        let e = Config::infer(&s, 64, true).unwrap_err().to_string();
        assert!(e.contains("1.9.0.weight belongs to a nested module"), "{e}");
        // A head made for another body width.
        let s = shapes(&Config::default_cnn(40, 3).unwrap());
        let e = Config::infer(&s, 64, true).unwrap_err().to_string();
        assert!(
            e.contains("1.2 (BatchNorm1d(80)) takes 80 features but the body gives 64 (128 after"),
            "{e}"
        );
        // Layers in an order create_head does not make: ReLU-free back-to-back linears.
        let s: HashMap<String, Vec<usize>> = [
            ("1.2.weight".to_string(), vec![16, 128]),
            ("1.3.weight".to_string(), vec![3, 16]),
        ]
        .into();
        let e = Config::infer(&s, 64, true).unwrap_err().to_string();
        assert!(e.contains("not in an order create_head makes"), "{e}");
        assert!(e.contains("1.2 Linear(128, 16, bias=False)"), "{e}");
        // A pooling head on a ViT, an unpooled head on a CNN.
        let cnn = shapes(&Config::default_cnn(64, 3).unwrap());
        let e = Config::infer(&cnn, 128, false).unwrap_err().to_string();
        assert!(e.contains("pool=False"), "{e}");
        let vit = shapes(&Config::default_vit(64, 3).unwrap());
        let e = Config::infer(&vit, 64, true).unwrap_err().to_string();
        assert!(e.contains("comes before any pooling"), "{e}");
        // No head at all.
        let e = Config::infer(&HashMap::new(), 64, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no head"), "{e}");
    }

    #[test]
    fn validate_names_the_layer_that_does_not_chain() {
        use Layer::*;
        let ok = Config::default_cnn(64, 3).unwrap();
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    in_features: 0,
                    ..ok.clone()
                },
                "head.in_features is 0",
            ),
            (
                Config {
                    layers: vec![],
                    ..ok.clone()
                },
                "head.layers is empty",
            ),
            (
                Config {
                    batch_norm_eps: 0.0,
                    ..ok.clone()
                },
                "head.batch_norm_eps",
            ),
            (
                {
                    let mut c = ok.clone();
                    c.layers[2] = BatchNorm1d(64);
                    c
                },
                "head.layers[2] is BatchNorm1d(64), which cannot take 128 features",
            ),
            (
                {
                    let mut c = ok.clone();
                    c.layers.remove(1);
                    c
                },
                "head.layers[1] is BatchNorm1d(128), which cannot take a pooled",
            ),
            (
                {
                    let mut c = ok.clone();
                    c.layers.truncate(4);
                    c
                },
                "head.layers has no Linear layer",
            ),
            (
                ok.clone().with_num_classes(0),
                "head.layers[8] is Linear(512, 0, bias=False)",
            ),
        ];
        for (cfg, says) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            let e = Config::new(cfg.in_features, cfg.layers.clone(), cfg.batch_norm_eps)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "Config::new: {e}");
            assert!(FastaiHead::new(
                &cfg,
                VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu)
            )
            .is_err());
        }
        let e = Config::create_head(
            64,
            3,
            &HeadOptions {
                ps: vec![0.1, 0.2, 0.3],
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("head.ps has 3 values for 2 linear layers"),
            "{e}"
        );
    }
}
