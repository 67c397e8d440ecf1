//! Self-attention over packed rows: each row attends only to itself, so no padding is ever multiplied
//! and no mask is needed. Three implementations: the fused CPU kernel ([`cpu`]), the CUDA kernels
//! ([`gpu`], `kernels/attention.cu`: one block per row × head, keys and values in shared-memory tiles,
//! the dropout mask regenerated from the sentences' keys rather than stored) and the padded tensor-op
//! reference ([`padded`]).

mod cpu;
pub(crate) mod gpu;
mod padded;

use candle_core::Tensor;

use crate::dropout::{Masker, Site};
use crate::error::{KernelError, Result};
use crate::rows::RowSpans;
use crate::{Impl, Kernels, Mask};

pub use gpu::AttentionTables;
pub use padded::PaddedIndex;

/// Largest head size the CUDA kernels take (two tiles of 32 rows of it fit in 48 KB of shared
/// memory); larger heads use the padded tensor-op path.
pub const MAX_HEAD_DIM: usize = 128;

/// The shape of one attention problem.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub head_dim: usize,
}

impl Heads {
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// One layer's attention dropout: the batch's masks, the layer, p.
#[derive(Clone, Copy)]
pub struct Dropout<'a> {
    pub masks: &'a Masker,
    pub layer: usize,
    pub p: f64,
}

/// What backward needs from forward.
pub enum AttentionCache {
    Cpu {
        /// Softmax output of every (row, head), row by row: `heads · L²` values per row.
        probs: Vec<f32>,
        /// Dropout keep-mask in the same layout, and 1/(1−p).
        mask: Option<(Vec<u8>, f32)>,
    },
    /// The CUDA kernels': the softmax output (f32, the CPU layout), the dropout its mask is
    /// regenerated from, the batch's row tables, and the projection's bias they fold in (if any).
    Device {
        probs: Tensor,
        dropout: Option<gpu::GpuDropout>,
        tables: AttentionTables,
        bias: Option<Tensor>,
    },
    Padded {
        probs: Tensor,
        mask: Option<Mask>,
        probs_dropped: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        index: PaddedIndex,
    },
}

/// Attention within the rows of a packed batch.
pub struct Attention;

impl Attention {
    /// Whether the CUDA kernels run for a projection from `x` — and so can fold the projection's
    /// bias in as they read Q, K and V ([`Attention::forward`]'s `bias`), sparing the product its own
    /// bias add (a pass over `[N, 3H]`). Elsewhere the product's epilogue adds it best.
    pub fn folds_bias(k: Kernels, x: &Tensor, shape: Heads) -> bool {
        k.pick(x) == Impl::Cuda && shape.head_dim <= MAX_HEAD_DIM
    }

    /// Context `[N, H]` from the fused projection `qkv` `[N, 3H]`, with attention dropout when
    /// given (training); the cache when `keep`. `bias` (`[3H]`, qkv's dtype) is the projection's,
    /// when qkv was computed without it: only where [`Attention::folds_bias`] (an error elsewhere);
    /// backward then takes the same qkv. The CUDA kernels read the batch's row tables from `tables`
    /// when given (uploaded once per batch), else upload their own.
    pub fn forward(
        k: Kernels,
        (qkv, bias): (&Tensor, Option<&Tensor>),
        (rows, tables): (&RowSpans, Option<&AttentionTables>),
        shape: Heads,
        dropout: Option<Dropout>,
        keep: bool,
    ) -> Result<(Tensor, Option<AttentionCache>)> {
        let dropout = dropout.filter(|d| d.p > 0.0);
        if bias.is_some() && !Attention::folds_bias(k, qkv, shape) {
            return Err(KernelError::Internal(
                "attention folds the projection's bias in only in the CUDA kernels".into(),
            ));
        }
        match k.pick(qkv) {
            Impl::Cuda if shape.head_dim <= MAX_HEAD_DIM => {
                let dropout = dropout.and_then(|d| {
                    d.masks.gpu().map(|g| gpu::GpuDropout {
                        keys: g.keys.clone(),
                        site: Site::Attention(d.layer).code(),
                        p: d.p,
                    })
                });
                let tables = match tables {
                    Some(t) => t.clone(),
                    None => AttentionTables::new(rows, shape, qkv.device())?,
                };
                let bias = bias.map(|b| checked_bias(b, qkv, shape)).transpose()?;
                let (ctx, probs) =
                    gpu::forward(qkv, bias.as_ref(), rows, shape, dropout.as_ref(), &tables)?;
                let cache = AttentionCache::Device {
                    probs,
                    dropout,
                    tables,
                    bias,
                };
                Ok((ctx, keep.then_some(cache)))
            }
            Impl::Cpu => {
                let mask = dropout.and_then(|d| {
                    let bytes = d.masks.attention_bytes(shape.heads, d.layer, d.p)?;
                    Some((bytes, (1.0 / (1.0 - d.p)) as f32))
                });
                cpu::forward(qkv, rows, shape, mask, keep)
            }
            _ => padded::forward(qkv, rows, shape, dropout, keep),
        }
    }

    /// `dqkv` `[N, 3H]` from the context's gradient `dctx` `[N, H]` (the path of the cache's forward).
    pub fn backward(
        dctx: &Tensor,
        qkv: &Tensor,
        rows: &RowSpans,
        shape: Heads,
        cache: &AttentionCache,
    ) -> Result<Tensor> {
        match cache {
            AttentionCache::Cpu { probs, mask } => {
                cpu::backward(dctx, qkv, rows, shape, probs, mask)
            }
            AttentionCache::Device {
                probs,
                dropout,
                tables,
                bias,
            } => {
                let qkv = (qkv, bias.as_ref());
                gpu::backward(dctx, qkv, probs, rows, shape, dropout.as_ref(), tables)
            }
            AttentionCache::Padded { .. } => padded::backward(dctx, rows, shape, cache),
        }
    }
}

/// `bias` as the kernels read it: `[3H]` contiguous, in qkv's dtype.
fn checked_bias(bias: &Tensor, qkv: &Tensor, shape: Heads) -> Result<Tensor> {
    if bias.elem_count() != 3 * shape.hidden() || bias.dtype() != qkv.dtype() {
        return Err(KernelError::Internal(format!(
            "attention's folded bias: {:?} {:?}, expected [{}] {:?}",
            bias.dims(),
            bias.dtype(),
            3 * shape.hidden(),
            qkv.dtype()
        )));
    }
    Ok(bias.flatten_all()?.contiguous()?)
}

#[cfg(test)]
mod tests;
