//! A BERT layer's feed-forward block: the intermediate projection with bias + activation, the output
//! projection with bias + dropout + residual, and LayerNorm.

use candle_core::Tensor;
use nerpos_kernels::dropout::{Rows, Site};
use nerpos_kernels::ops::column_sum::ColumnSum;
use nerpos_kernels::ops::gelu::BiasGelu;
use nerpos_kernels::ops::residual::BiasDropoutResidual;
use nerpos_kernels::{Kernels, Mask};

use super::{Linear, Norm, Pass, Sink};
use crate::config::{Activation, BertConfig};
use crate::error::{ModelError, Result};
use crate::params::{Param, Params, Role};
use crate::profile::timed;

pub struct FeedForward {
    layer: usize,
    pub intermediate: Linear,
    pub output: Linear,
    pub norm: Norm,
    activation: Activation,
    dropout: f64,
}

/// What the block's backward needs.
pub struct FeedForwardCache {
    x: Tensor,
    inter: Tensor,
    act: Tensor,
    mask: Option<Mask>,
    ln_in: Tensor,
}

impl FeedForward {
    /// Layer `i`'s block (`encoder.layer.{i}.intermediate`, `.output`).
    pub fn new(p: &mut Params, c: &BertConfig, i: usize) -> Result<FeedForward> {
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let pre = format!("encoder.layer.{i}");
        Ok(FeedForward {
            layer: i,
            intermediate: Linear::new(
                p,
                &format!("{pre}.intermediate.dense"),
                (h, inter),
                Role::WEIGHT,
            )?,
            output: Linear::new(p, &format!("{pre}.output.dense"), (inter, h), Role::WEIGHT)?,
            norm: Norm::new(p, &format!("{pre}.output.LayerNorm"), h, c.layer_norm_eps)?,
            activation: c.activation().map_err(ModelError::Config)?,
            dropout: c.hidden_dropout_prob,
        })
    }

    /// The block's forward products on the CPU in bf16 from now on (inference; see
    /// [`Linear::pack_bf16`]).
    pub fn pack_bf16(&mut self) -> Result<()> {
        self.intermediate.pack_bf16()?;
        self.output.pack_bf16()
    }

    /// The block's output from its input `x` (the tokens `rows` says).
    pub fn forward(
        &self,
        pass: &Pass,
        x: Tensor,
        rows: Rows,
    ) -> Result<(Tensor, Option<FeedForwardCache>)> {
        let k = pass.kernels;
        let (inter, act) = if !pass.keep && self.activation == Activation::GeluErf {
            // Nothing keeps the pre-activation: product, bias and GELU in one op, one buffer.
            (None, self.intermediate.bias_gelu(k, &x)?)
        } else {
            let raw = self.intermediate.matmul(k, &x)?;
            let (inter, act) = timed("fwd/bwd: bias+GELU", || {
                activation_forward(k, self.activation, &raw, &self.intermediate.bias.t())
            })?;
            (Some(inter), act)
        };
        let y = self.output.matmul(k, &act)?;
        let site = Site::FeedForwardOutput(self.layer);
        let mask = pass.mask(&y, rows, site, self.dropout)?;
        let (out, ln_in) = self.norm.after_residual(
            k,
            pass.keep,
            (&y, &self.output.bias.t()),
            mask.as_ref(),
            &x,
        )?;
        let cache = inter
            .filter(|_| pass.keep)
            .zip(ln_in)
            .map(|(inter, ln_in)| FeedForwardCache {
                x,
                inter,
                act,
                mask,
                ln_in,
            });
        Ok((out, cache))
    }

    /// Hands over the block's gradients; returns d(x) (the residual's included).
    pub fn backward(
        &self,
        pass: &Pass,
        c: FeedForwardCache,
        dout: &Tensor,
        sink: &mut Sink,
    ) -> Result<Tensor> {
        let k = pass.kernels;
        let dz = self.norm.backward(k, &c.ln_in, dout, sink)?;
        let (dy, db) = timed("fwd/bwd: bias+dropout+residual", || {
            BiasDropoutResidual::backward(k, &dz, c.mask.as_ref())
        })?;
        sink.dense(&self.output.bias, db)?;
        sink.dense(&self.output.weight, Linear::weight_grad(k, &dy, &c.act)?)?;
        let dact = self.output.input_grad(k, &dy)?;
        let (dinter, db) = timed("fwd/bwd: bias+GELU", || {
            activation_backward(k, self.activation, &c.inter, &dact)
        })?;
        sink.dense(&self.intermediate.bias, db)?;
        sink.dense(
            &self.intermediate.weight,
            Linear::weight_grad(k, &dinter, &c.x)?,
        )?;
        // dz, the LayerNorm's gradient, is read by nothing after this sum: the product may add into it.
        self.intermediate.input_grad_add(k, &dinter, dz)
    }

    /// Its parameters in the order backward hands out their gradients.
    pub fn params(&self) -> Vec<&Param> {
        let mut out = self.norm.params().to_vec();
        out.extend(self.output.params());
        out.extend(self.intermediate.params());
        out
    }
}

/// (u, act(u)) for u = y + bias.
fn activation_forward(
    k: Kernels,
    a: Activation,
    y: &Tensor,
    bias: &Tensor,
) -> Result<(Tensor, Tensor)> {
    match a {
        Activation::GeluErf => Ok(BiasGelu::forward(k, y, bias)?),
        Activation::GeluTanh => {
            let u = y.broadcast_add(bias)?;
            let g = u.gelu()?;
            Ok((u, g))
        }
        Activation::Relu => {
            let u = y.broadcast_add(bias)?;
            let g = u.relu()?;
            Ok((u, g))
        }
    }
}

/// (du, dbias) from d(act(u)).
fn activation_backward(
    k: Kernels,
    a: Activation,
    u: &Tensor,
    dg: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let du = match a {
        Activation::GeluErf => return Ok(BiasGelu::backward(k, u, dg)?),
        Activation::GeluTanh => gelu_tanh_backward(u, dg)?,
        Activation::Relu => (dg * u.gt(0.0)?.to_dtype(dg.dtype())?)?,
    };
    let db = ColumnSum::forward(k, &du)?;
    Ok((du, db))
}

/// Derivative of the tanh-approximated GELU.
fn gelu_tanh_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * c)?;
    let th = inner.tanh()?;
    let dinner = ((x.sqr()? * (3.0 * 0.044715))? + 1.0)? * c;
    let sech2 = (th.sqr()?.neg()? + 1.0)?;
    let grad = (((th + 1.0)? * 0.5)? + ((x * 0.5)? * (sech2 * dinner?)?)?)?;
    Ok((dy * grad)?)
}
