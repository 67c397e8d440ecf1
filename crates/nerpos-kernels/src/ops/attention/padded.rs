//! Attention in tensor ops (any device and dtype): the rows gathered into a padded `[B, heads, T, T]`
//! block with a mask on the padding — the reference the fused kernels are tested against, and what
//! runs where no fused kernel does.

use candle_core::Tensor;

use super::{AttentionCache, Dropout, Heads, RowSpans};
use crate::error::{KernelError, Result};
use crate::ops::residual::masked;

/// Index maps between packed `[N]` and a padded `[B, T]` block.
#[derive(Clone)]
pub struct PaddedIndex {
    /// `[B·T]`: the packed row of each padded slot, `N` (a zero row) for padding.
    gather: Tensor,
    /// `[N]`: the padded slot of each packed token.
    scatter: Tensor,
    /// `[B, T]` 0 on tokens, a large negative number on padding (added to the scores).
    bias: Tensor,
    b: usize,
    t: usize,
}

impl PaddedIndex {
    pub(crate) fn new(rows: &RowSpans, device: &candle_core::Device) -> Result<PaddedIndex> {
        let (b, t, n) = (rows.rows(), rows.longest(), rows.tokens());
        let mut gather = vec![n as u32; b * t];
        let mut scatter = Vec::with_capacity(n);
        let mut bias = vec![f32::MIN; b * t];
        for r in 0..b {
            for i in 0..rows.len(r) {
                gather[r * t + i] = (rows.starts[r] + i) as u32;
                bias[r * t + i] = 0.0;
                scatter.push((r * t + i) as u32);
            }
        }
        Ok(PaddedIndex {
            gather: Tensor::from_vec(gather, b * t, device)?,
            scatter: Tensor::from_vec(scatter, n, device)?,
            bias: Tensor::from_vec(bias, (b, t), device)?,
            b,
            t,
        })
    }

    /// `[N, H]` → `[B, heads, T, dh]` (padding zero).
    fn to_padded(&self, x: &Tensor, shape: Heads) -> Result<Tensor> {
        let zero = Tensor::zeros((1, x.dim(1)?), x.dtype(), x.device())?;
        Ok(Tensor::cat(&[x, &zero], 0)?
            .index_select(&self.gather, 0)?
            .reshape((self.b, self.t, shape.heads, shape.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// `[B, heads, T, dh]` → `[N, H]`.
    fn to_packed(&self, x: &Tensor, shape: Heads) -> Result<Tensor> {
        Ok(x.transpose(1, 2)?
            .contiguous()?
            .reshape((self.b * self.t, shape.hidden()))?
            .index_select(&self.scatter, 0)?)
    }
}

pub(crate) fn forward(
    qkv: &Tensor,
    rows: &RowSpans,
    shape: Heads,
    dropout: Option<Dropout>,
    keep: bool,
) -> Result<(Tensor, Option<AttentionCache>)> {
    let h = shape.hidden();
    let index = PaddedIndex::new(rows, qkv.device())?;
    let part = |i: usize| index.to_padded(&qkv.narrow(1, i * h, h)?, shape);
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    let scores = q.matmul(&k.t()?)?;
    let probs = masked_softmax_fwd(&scores, &index.bias, f64::from(shape.scale()))?;
    let mask = match dropout {
        Some(d) => d.masks.attention_padded(&probs, d.layer, d.p)?,
        None => None,
    };
    let probs_dropped = masked(&probs, mask.as_ref())?;
    let ctx = index.to_packed(&probs_dropped.matmul(&v)?, shape)?;
    let cache = keep.then_some(AttentionCache::Padded {
        probs,
        mask,
        probs_dropped,
        q,
        k,
        v,
        index,
    });
    Ok((ctx, cache))
}

pub(crate) fn backward(
    dctx: &Tensor,
    _rows: &RowSpans,
    shape: Heads,
    cache: &AttentionCache,
) -> Result<Tensor> {
    let AttentionCache::Padded {
        probs,
        mask,
        probs_dropped,
        q,
        k,
        v,
        index,
    } = cache
    else {
        return Err(KernelError::Internal(
            "the padded attention backward got another path's cache".into(),
        ));
    };
    let dctx = index.to_padded(dctx, shape)?;
    let dpd = dctx.matmul(&v.t()?)?;
    let dv = probs_dropped.t()?.matmul(&dctx)?;
    let dp = masked(&dpd, mask.as_ref())?;
    let dz = masked_softmax_bwd(probs, &dp, f64::from(shape.scale()))?;
    let dq = dz.matmul(k)?;
    let dk = dz.t()?.matmul(q)?;
    let back = |x: &Tensor| index.to_packed(x, shape);
    Ok(Tensor::cat(&[back(&dq)?, back(&dk)?, back(&dv)?], 1)?)
}

/// Attention probabilities of padded scores (B, heads, T, T): softmax(scores·scale + bias) with bias
/// (B, T) 0 on tokens and a large negative number on padding; in f32, returned in the scores' dtype.
fn masked_softmax_fwd(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let z = (super::super::f32(scores)? * scale)?
        .broadcast_add(&super::super::f32(bias)?.unsqueeze(1)?.unsqueeze(1)?)?;
    let max = z.max_keepdim(candle_core::D::Minus1)?;
    let e = z.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)?
        .to_dtype(scores.dtype())?)
}

/// d(scores) from the probabilities `p` and their gradient `dp`.
fn masked_softmax_bwd(p: &Tensor, dp: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = p.dtype();
    let (p, dp) = (super::super::f32(p)?, super::super::f32(dp)?);
    let dot = (&p * &dp)?.sum_keepdim(candle_core::D::Minus1)?;
    Ok(((p * dp.broadcast_sub(&dot)?)? * scale)?.to_dtype(dtype)?)
}
