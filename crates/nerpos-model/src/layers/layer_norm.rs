//! A LayerNorm layer: its weight and bias, and the fused op.

use candle_core::Tensor;
use nerpos_kernels::ops::layer_norm::LayerNorm;
use nerpos_kernels::ops::residual::BiasDropoutResidual;
use nerpos_kernels::{Kernels, Mask};

use super::Sink;
use crate::error::Result;
use crate::params::{Param, Params, Role};
use crate::profile::timed;

pub struct Norm {
    pub weight: Param,
    pub bias: Param,
    op: LayerNorm,
}

impl Norm {
    /// `name.weight` and `name.bias` (h each, not decayed).
    pub fn new(p: &mut Params, name: &str, h: usize, eps: f64) -> Result<Norm> {
        Ok(Norm {
            weight: p.add(format!("{name}.weight"), h, Role::BIAS)?,
            bias: p.add(format!("{name}.bias"), h, Role::BIAS)?,
            op: LayerNorm { eps },
        })
    }

    pub fn forward(&self, k: Kernels, x: &Tensor) -> Result<Tensor> {
        timed("fwd/bwd: layer norm", || {
            Ok(self.op.forward(k, x, &self.weight.t(), &self.bias.t())?)
        })
    }

    /// A block's end: LayerNorm(dropout(y + bias) + residual), and the LayerNorm's input when `keep`
    /// (for the backward pass). With nothing dropped and nothing kept (inference) one fused op;
    /// otherwise bias + dropout + residual, then LayerNorm.
    pub fn after_residual(
        &self,
        k: Kernels,
        keep: bool,
        (y, bias): (&Tensor, &Tensor),
        mask: Option<&Mask>,
        residual: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if keep || mask.is_some() {
            let ln_in = timed("fwd/bwd: bias+dropout+residual", || {
                BiasDropoutResidual::forward(k, y, bias, mask, residual)
            })?;
            return Ok((self.forward(k, &ln_in)?, Some(ln_in)));
        }
        let out = timed("fwd: bias+residual+layer norm", || {
            let (w, b) = (self.weight.t(), self.bias.t());
            self.op.forward_residual(k, (y, bias, residual), &w, &b)
        })?;
        Ok((out, None))
    }

    /// Hands over d(weight) and d(bias); returns d(x) for the forward's input `x`.
    pub fn backward(&self, k: Kernels, x: &Tensor, dy: &Tensor, sink: &mut Sink) -> Result<Tensor> {
        let (dx, dw, db) = timed("fwd/bwd: layer norm", || {
            self.op.backward(k, x, &self.weight.t(), dy)
        })?;
        sink.dense(&self.weight, dw)?;
        sink.dense(&self.bias, db)?;
        Ok(dx)
    }

    /// Its parameters in the order backward hands out their gradients.
    pub fn params(&self) -> [&Param; 2] {
        [&self.weight, &self.bias]
    }
}
