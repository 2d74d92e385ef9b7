//! PyTorch layers the CNN bodies and the head share, in eval mode: `nn.Linear`,
//! `nn.BatchNorm1d`/`nn.BatchNorm2d` (running statistics), `nn.Conv2d` (optionally with the
//! BatchNorm after it folded into its weights) and `nn.LayerNorm` over the last dimension.

use candle_core::{Module, Tensor, D};
use candle_nn::VarBuilder;

/// `nn.Linear` with its weight stored transposed, `(in_features, out_features)` row-major:
/// `y = x · Wᵀ + b` as one matrix product over the rows of `x`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
    /// `weight_t` packed for the CPU kernels ([`Linear::with_packed`]), when asked for and
    /// the CPU has them.
    packed: Option<super::cpu::packed::PackedB>,
}

impl Linear {
    /// Loads `weight` `(out_dim, in_dim)` and, when `with_bias`, `bias` `(out_dim)`.
    pub(crate) fn new(
        in_dim: usize,
        out_dim: usize,
        with_bias: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if with_bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Self::from_weight(&weight, bias)
    }

    /// From a weight `(out, in)` (or `(out, in, 1, 1)`, a 1x1 convolution's) and a bias.
    pub(crate) fn from_weight(weight: &Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        let out_dim = weight.dim(0)?;
        let weight = weight.reshape((out_dim, weight.elem_count() / out_dim.max(1)))?;
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?,
            bias,
            packed: None,
        })
    }

    /// This layer with its weight also packed once for the CPU's AVX-512 or AVX2 kernels
    /// ([`super::cpu::packed::PackedB`], in the layout of the level the CPU and
    /// `FASTAI_INFER_SIMD` allow now), so that [`Linear::forward_gelu`] and
    /// [`Linear::forward_scale_add`] multiply by it without repacking it on every call (about
    /// a fifth of ConvNeXt's time went to that). Unchanged off the CPU, for other dtypes, or
    /// when the output width is not a multiple of 32. The weight is then held twice.
    pub(crate) fn with_packed(mut self) -> candle_core::Result<Self> {
        let (k, n) = self.weight_t.dims2()?;
        let level = super::cpu::kernels::Simd::from_env();
        if level >= super::cpu::kernels::Simd::Avx2 {
            self.packed = super::cpu::with_host_slice(&self.weight_t, |w| {
                super::cpu::packed::PackedB::with_layout(
                    w,
                    k,
                    n,
                    super::cpu::packed::Layout::for_level(level),
                )
            })
            .flatten();
        }
        Ok(self)
    }
}

impl Linear {
    /// `gelu(self(x))` (`nn.GELU()`, erf): on a CPU f32 input with a bias, one blocked product
    /// and a parallel fused bias + GELU ([`super::cpu::conv::linear_bias_gelu`]); else candle's
    /// ops.
    pub(crate) fn forward_gelu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(b) = &self.bias {
            if let Some(y) =
                super::cpu::conv::linear_bias_gelu(x, &self.weight_t, self.packed.as_ref(), b)
            {
                return y;
            }
        }
        self.forward(x)?.gelu_erf()
    }

    /// `self(x)`: on the CPU with a packed weight and a bias, one product on the packed weight
    /// and the bias added in the same pass ([`super::cpu::conv::linear_bias`]); else candle's
    /// ops ([`Module::forward`]).
    pub(crate) fn forward_fast(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(b) = &self.bias {
            if let Some(y) =
                super::cpu::conv::linear_bias(x, &self.weight_t, self.packed.as_ref(), b)
            {
                return y;
            }
        }
        self.forward(x)
    }

    /// `residual + self(x) * gamma` (or `residual + self(x)`), the output reshaped as
    /// `residual`: on the CPU one product and a parallel fused epilogue
    /// ([`super::cpu::conv::linear_bias_scale_add`]); else candle's ops in that order.
    pub(crate) fn forward_scale_add(
        &self,
        x: &Tensor,
        gamma: Option<&Tensor>,
        residual: &Tensor,
    ) -> candle_core::Result<Tensor> {
        if let Some(b) = &self.bias {
            if let Some(y) = super::cpu::conv::linear_bias_scale_add(
                x,
                &self.weight_t,
                self.packed.as_ref(),
                b,
                gamma,
                residual,
            ) {
                return y?.reshape(residual.shape());
            }
        }
        let y = self.forward(x)?;
        let y = match gamma {
            Some(g) => y.broadcast_mul(g)?,
            None => y,
        };
        y.reshape(residual.shape())? + residual
    }

    /// The transposed weight, its packed copy and the bias, for fused fast paths; `None`
    /// without a bias.
    pub(crate) fn parts(&self) -> Option<(&Tensor, Option<&super::cpu::packed::PackedB>, &Tensor)> {
        Some((&self.weight_t, self.packed.as_ref(), self.bias.as_ref()?))
    }

    /// The device the weight lives on.
    pub(crate) fn device(&self) -> &candle_core::Device {
        self.weight_t.device()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.broadcast_matmul(&self.weight_t)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// `nn.BatchNorm1d` / `nn.BatchNorm2d` in eval mode: the running statistics folded into a scale
/// and a shift the way PyTorch's CPU kernel folds them (`alpha = weight / sqrt(var + eps)`,
/// `beta = bias - mean * alpha`, `y = x * alpha + beta`), over dimension 1.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    alpha: Tensor,
    beta: Tensor,
}

impl BatchNorm {
    /// Loads `weight`, `bias`, `running_mean` and `running_var` of `num_features`.
    pub(crate) fn new(num_features: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get(num_features, "weight")?;
        let bias = vb.get(num_features, "bias")?;
        let mean = vb.get(num_features, "running_mean")?;
        let var = vb.get(num_features, "running_var")?;
        let invstd = (var + eps)?.sqrt()?.recip()?;
        let alpha = (invstd * weight)?;
        let beta = (bias - (mean * &alpha)?)?;
        Ok(BatchNorm { alpha, beta })
    }

    /// The device the statistics live on.
    pub(crate) fn device(&self) -> &candle_core::Device {
        self.alpha.device()
    }
}

impl Module for BatchNorm {
    /// `(B, C)` or `(B, C, H, W)`, normalized per channel `C`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.rank() == 2 {
            x.broadcast_mul(&self.alpha)?.broadcast_add(&self.beta)
        } else {
            let c = self.alpha.dim(0)?;
            let shape = per_channel(x.rank(), c);
            x.broadcast_mul(&self.alpha.reshape(shape.as_slice())?)?
                .broadcast_add(&self.beta.reshape(shape.as_slice())?)
        }
    }
}

/// `(1, c, 1, ...)`: a per-channel vector shaped to broadcast over a rank-`rank` batch.
fn per_channel(rank: usize, c: usize) -> Vec<usize> {
    let mut shape = vec![1; rank.max(2)];
    shape[1] = c;
    shape
}

/// `nn.Conv2d` with square kernels, equal strides and paddings, and an optional bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    groups: usize,
}

impl Conv2d {
    /// Loads `weight` `(out, in / groups, k, k)` and, when `with_bias`, `bias` `(out)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        in_chans: usize,
        out_chans: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        with_bias: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((out_chans, in_chans / groups, kernel, kernel), "weight")?;
        let bias = if with_bias {
            Some(vb.get(out_chans, "bias")?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            stride,
            padding,
            groups,
        })
    }

    /// This bias-free convolution followed by `bn`, as one convolution: each output channel's
    /// weights scaled by BatchNorm's `alpha`, and `beta` as the bias. The products round
    /// differently from PyTorch's conv-then-BatchNorm by about one unit in the last place; see
    /// the crate's fidelity tests for what that does to the logits.
    pub(crate) fn with_batch_norm(self, bn: &BatchNorm) -> candle_core::Result<Self> {
        let out = self.weight.dim(0)?;
        let weight = self
            .weight
            .broadcast_mul(&bn.alpha.reshape((out, 1, 1, 1))?)?
            .contiguous()?;
        let bias = match &self.bias {
            None => bn.beta.clone(),
            Some(b) => (b.mul(&bn.alpha)? + &bn.beta)?,
        };
        Ok(Conv2d {
            weight,
            bias: Some(bias),
            ..self
        })
    }
}

impl Conv2d {
    /// This convolution packed for the channels-last path ([`super::cpu::nhwc`]), its input
    /// stored with `stored_c` channels; `None` for grouped convolutions, off the CPU, or
    /// without AVX2 + FMA.
    pub(crate) fn packed_nhwc(&self, stored_c: usize) -> Option<super::cpu::nhwc::PackedConv> {
        if self.groups != 1 {
            return None;
        }
        super::cpu::nhwc::PackedConv::new(
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
            stored_c,
        )
    }

    /// `relu?(conv(x) + residual)`: on a CPU f32 input with groups 1, the fast path
    /// ([`super::cpu::conv`]: im2col and one blocked matrix product per image, the bias, the
    /// residual and the ReLU fused), else (or with `fast` false) candle's `conv2d` and one op
    /// per step, the reference.
    pub(crate) fn forward_fused(
        &self,
        x: &Tensor,
        relu: bool,
        residual: Option<&Tensor>,
        fast: bool,
    ) -> candle_core::Result<Tensor> {
        if fast && self.groups == 1 {
            if let Some(y) = super::cpu::conv::conv2d_fused(
                x,
                &self.weight,
                self.bias.as_ref(),
                self.stride,
                self.padding,
                relu,
                residual,
            ) {
                return y;
            }
        }
        let mut y = self.forward(x)?;
        if let Some(r) = residual {
            y = (y + r)?;
        }
        if relu {
            y = y.relu()?;
        }
        Ok(y)
    }
}

impl Module for Conv2d {
    /// `(B, in, H, W)` to `(B, out, H', W')`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, self.groups)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// `nn.LayerNorm(num_features, eps)` over the last dimension, as candle-nn computes it.
pub(crate) fn layer_norm(
    num_features: usize,
    eps: f64,
    vb: VarBuilder,
) -> candle_core::Result<candle_nn::LayerNorm> {
    let c = candle_nn::LayerNormConfig {
        eps,
        ..Default::default()
    };
    candle_nn::layer_norm(num_features, c, vb)
}

/// Global max and average pooling of `(B, C, H, W)`: `((B, C), (B, C))`.
pub(crate) fn global_max_avg(x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let flat = x.flatten_from(2)?;
    Ok((flat.max(D::Minus1)?, flat.mean(D::Minus1)?))
}
