//! The parameter holders candle-nn lacks.

use candle_core::Tensor;

/// A LayerNorm's parameters (the computation is `ops::layer_norm_fwd` / `layer_norm_bwd`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> LayerNorm {
        LayerNorm { weight, bias, eps }
    }
}
