//! The head: fastai's `create_head(192, n_out, pool=False)` for a timm body whose forward
//! already pools, i.e. `nn.Sequential` indices
//! `0` BatchNorm1d, `1` Dropout, `2` Linear (no bias), `3` ReLU, `4` BatchNorm1d,
//! `5` Dropout, `6` Linear (no bias). Dropout is the identity at inference.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::vit::Linear;
use super::Config;

/// `nn.BatchNorm1d` in eval mode: running statistics folded into a scale and shift the way
/// PyTorch's CPU kernel folds them (`alpha = weight / sqrt(var + eps)`,
/// `beta = bias - mean * alpha`, `y = x * alpha + beta`).
#[derive(Debug, Clone)]
pub struct BatchNorm1d {
    alpha: Tensor,
    beta: Tensor,
}

impl BatchNorm1d {
    /// Loads `weight`, `bias`, `running_mean` and `running_var` of `num_features`.
    pub fn new(num_features: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get(num_features, "weight")?;
        let bias = vb.get(num_features, "bias")?;
        let mean = vb.get(num_features, "running_mean")?;
        let var = vb.get(num_features, "running_var")?;
        let invstd = (var + eps)?.sqrt()?.recip()?;
        let alpha = (invstd * weight)?;
        let beta = (bias - (mean * &alpha)?)?;
        Ok(BatchNorm1d { alpha, beta })
    }
}

impl Module for BatchNorm1d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_mul(&self.alpha)?.broadcast_add(&self.beta)
    }
}

/// fastai's classification head (see the module docs for the layer indices).
#[derive(Debug, Clone)]
pub struct FastaiHead {
    bn0: BatchNorm1d,
    lin2: Linear,
    bn4: BatchNorm1d,
    lin6: Linear,
}

impl FastaiHead {
    /// Loads `0.*`, `2.weight`, `4.*` and `6.weight` from `vb` rooted at fastai's `1.`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(FastaiHead {
            bn0: BatchNorm1d::new(cfg.embed_dim, cfg.batch_norm_eps, vb.pp("0"))?,
            lin2: Linear::new(cfg.embed_dim, cfg.head_hidden, false, vb.pp("2"))?,
            bn4: BatchNorm1d::new(cfg.head_hidden, cfg.batch_norm_eps, vb.pp("4"))?,
            lin6: Linear::new(cfg.head_hidden, cfg.num_classes, false, vb.pp("6"))?,
        })
    }
}

impl FastaiHead {
    /// The device the head's weights live on.
    pub fn device(&self) -> candle_core::Device {
        self.bn0.alpha.device().clone()
    }
}

impl Module for FastaiHead {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.lin2.forward(&self.bn0.forward(x)?)?.relu()?;
        self.lin6.forward(&self.bn4.forward(&x)?)
    }
}
