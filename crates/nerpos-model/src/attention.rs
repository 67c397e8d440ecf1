//! Self-attention over packed rows: each row attends only to itself, so no padding is ever multiplied
//! and no mask is needed.
//!
//! On the CPU (f32) one fused kernel per row and head does QKᵀ, scale, softmax, dropout and ·V reading
//! Q, K and V straight out of the fused projection `[N, 3H]` (strided matrix products, no head split
//! or copy), and its backward likewise; it keeps the softmax output for the backward pass
//! (Σ heads·L² values per layer). On other devices (until their own kernels exist) the same
//! computation runs in tensor ops on the rows gathered into a padded block, with a mask — or, on a GPU
//! with the fused kernels on ([`crate::device_ops`]), in the CUDA twin of the CPU kernel.

use candle_core::Tensor;
use gemm::Parallelism;
use rayon::prelude::*;

use crate::batch::RowSpans;
use crate::device_ops::AttentionDropout;
use crate::dropout::{Masker, Site};
use crate::error::Result;
use crate::kernels::{self, Mask};

/// What backward needs from forward.
pub enum AttentionCache {
    Cpu {
        /// Softmax output of every (row, head), row by row: `heads · L²` values per row.
        probs: Vec<f32>,
        /// Dropout keep-mask in the same layout, and 1/(1−p).
        mask: Option<(Vec<u8>, f32)>,
    },
    /// The fused GPU kernel's: the softmax output (f32, the CPU layout) and the dropout (the
    /// sentences' keys, the site, p) its mask is regenerated from.
    Device {
        probs: Tensor,
        dropout: Option<AttentionDropout>,
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

/// The shape of one attention problem.
#[derive(Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub head_dim: usize,
}

impl Heads {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// Offsets of each row's `heads · L²` block in the cache, and the total.
fn prob_offsets(rows: &RowSpans, heads: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(rows.rows() + 1);
    let mut at = 0;
    out.push(0);
    for r in 0..rows.rows() {
        at += heads * rows.len(r) * rows.len(r);
        out.push(at);
    }
    out
}

/// Splits `buf` into consecutive chunks that end at `ends[1..]` times `unit`.
fn split_at_offsets<'a, T>(
    mut buf: &'a mut [T],
    offsets: &[usize],
    unit: usize,
) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(offsets.len().saturating_sub(1));
    for w in offsets.windows(2) {
        let (a, b) = std::mem::take(&mut buf).split_at_mut((w[1] - w[0]) * unit);
        out.push(a);
        buf = b;
    }
    out
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, every matrix given by a pointer and (row, column) strides.
///
/// # Safety
/// Every pointer must be valid for the elements its strides and sizes address; `dst` must not
/// overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    scale: f32,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            false,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            0.0,
            scale,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// One layer's attention dropout: the batch's masks, the layer, p.
#[derive(Clone, Copy)]
pub struct Dropout<'a> {
    pub masks: &'a Masker,
    pub layer: usize,
    pub p: f64,
}

/// Context `[N, H]` of packed rows from the fused projection `qkv` `[N, 3H]` (bias included), with
/// attention dropout when given (training); the cache when `keep`.
pub fn forward(
    qkv: &Tensor,
    rows: &RowSpans,
    shape: Heads,
    dropout: Option<Dropout>,
    keep: bool,
) -> Result<(Tensor, Option<AttentionCache>)> {
    let dropout = dropout.filter(|d| d.p > 0.0);
    if crate::device_ops::applies(qkv) && shape.head_dim <= crate::device_ops::MAX_HEAD_DIM {
        let dropout = dropout.and_then(|d| {
            d.masks.gpu().map(|g| AttentionDropout {
                keys: g.keys.clone(),
                site: Site::Attention(d.layer).code(),
                p: d.p,
            })
        });
        let (ctx, probs) = crate::device_ops::attention_forward(
            qkv,
            &rows.starts,
            shape.heads,
            shape.head_dim,
            dropout.clone(),
        )?;
        return Ok((
            ctx,
            keep.then_some(AttentionCache::Device { probs, dropout }),
        ));
    }
    if kernels::on_cpu(qkv) {
        let mask = dropout.and_then(|d| {
            let bytes = d.masks.attention_bytes(shape.heads, d.layer, d.p)?;
            Some((bytes, (1.0 / (1.0 - d.p)) as f32))
        });
        return cpu_forward(qkv, rows, shape, mask, keep);
    }
    padded_forward(qkv, rows, shape, dropout, keep)
}

/// `dqkv` `[N, 3H]` from the context's gradient `dctx` `[N, H]`.
pub fn backward(
    dctx: &Tensor,
    qkv: &Tensor,
    rows: &RowSpans,
    shape: Heads,
    cache: &AttentionCache,
) -> Result<Tensor> {
    match cache {
        AttentionCache::Cpu { probs, mask } => cpu_backward(dctx, qkv, rows, shape, probs, mask),
        AttentionCache::Device { probs, dropout } => crate::device_ops::attention_backward(
            dctx,
            qkv,
            probs,
            &rows.starts,
            shape.heads,
            shape.head_dim,
            dropout.clone(),
        ),
        AttentionCache::Padded { .. } => padded_backward(dctx, rows, shape, cache),
    }
}

/// The fused CPU kernel, with attention dropout from `mask` (keep bytes in the cache's layout, and
/// 1/(1−p)).
pub(crate) fn cpu_forward(
    qkv: &Tensor,
    rows: &RowSpans,
    shape: Heads,
    mask: Option<(Vec<u8>, f32)>,
    keep: bool,
) -> Result<(Tensor, Option<AttentionCache>)> {
    let (n, h, nh, dh) = (rows.tokens(), shape.hidden(), shape.heads, shape.head_dim);
    let offsets = prob_offsets(rows, nh);
    let mut ctx = vec![0f32; n * h];
    let mut probs = vec![0f32; if keep { offsets[rows.rows()] } else { 0 }];
    kernels::read::<f32, _>(qkv, |x| {
        let ctx_rows = split_at_offsets(&mut ctx, &rows.starts, h);
        let prob_rows = if keep {
            split_at_offsets(&mut probs, &offsets, 1)
        } else {
            (0..rows.rows()).map(|_| &mut [][..]).collect()
        };
        ctx_rows
            .into_par_iter()
            .zip(prob_rows)
            .enumerate()
            .for_each(|(r, (ctx_r, probs_r))| {
                let (s, l) = (rows.starts[r], rows.len(r));
                let mask_r = mask
                    .as_ref()
                    .map(|(m, k)| (&m[offsets[r]..offsets[r + 1]], *k));
                let mut own = Vec::new();
                let probs_r: &mut [f32] = if keep {
                    probs_r
                } else {
                    own.resize(nh * l * l, 0.0);
                    &mut own
                };
                let mut dropped = vec![0f32; if mask_r.is_some() { l * l } else { 0 }];
                for hd in 0..nh {
                    let p_h = &mut probs_r[hd * l * l..(hd + 1) * l * l];
                    let q = x[s * 3 * h + hd * dh..].as_ptr();
                    let k = x[s * 3 * h + h + hd * dh..].as_ptr();
                    let v = x[s * 3 * h + 2 * h + hd * dh..].as_ptr();
                    // SAFETY: Q and K of this row and head are l rows of dh values, 3H apart, inside
                    // `x`; p_h holds l×l values.
                    unsafe {
                        matmul(
                            (l, l, dh),
                            (p_h.as_mut_ptr(), l, 1),
                            (q, 3 * h, 1),
                            (k, 1, 3 * h),
                            shape.scale(),
                        )
                    };
                    for row in p_h.chunks_mut(l) {
                        crate::ops::softmax_in_place(row);
                    }
                    let weights: &[f32] = match mask_r {
                        Some((m, keep_scale)) => {
                            let m = &m[hd * l * l..(hd + 1) * l * l];
                            for ((d, &pv), &mv) in dropped.iter_mut().zip(p_h.iter()).zip(m) {
                                *d = pv * f32::from(mv) * keep_scale;
                            }
                            &dropped
                        }
                        None => p_h,
                    };
                    // SAFETY: ctx_r is this row's l×H block; V is l rows of dh values, 3H apart.
                    unsafe {
                        matmul(
                            (l, dh, l),
                            (ctx_r[hd * dh..].as_mut_ptr(), h, 1),
                            (weights.as_ptr(), l, 1),
                            (v, 3 * h, 1),
                            1.0,
                        )
                    };
                }
            });
    })?;
    let ctx = Tensor::from_vec(ctx, (n, h), qkv.device())?;
    Ok((ctx, keep.then_some(AttentionCache::Cpu { probs, mask })))
}

fn cpu_backward(
    dctx: &Tensor,
    qkv: &Tensor,
    rows: &RowSpans,
    shape: Heads,
    probs: &[f32],
    mask: &Option<(Vec<u8>, f32)>,
) -> Result<Tensor> {
    let (n, h, nh, dh) = (rows.tokens(), shape.hidden(), shape.heads, shape.head_dim);
    let offsets = prob_offsets(rows, nh);
    let mut dqkv = vec![0f32; n * 3 * h];
    kernels::read::<f32, _>(qkv, |x| {
        kernels::read::<f32, _>(dctx, |g| {
            let out_rows = split_at_offsets(&mut dqkv, &rows.starts, 3 * h);
            out_rows.into_par_iter().enumerate().for_each(|(r, out_r)| {
                let (s, l) = (rows.starts[r], rows.len(r));
                let mut dropped = vec![0f32; l * l];
                let mut dz = vec![0f32; l * l];
                for hd in 0..nh {
                    let at = offsets[r] + hd * l * l;
                    let p_h = &probs[at..at + l * l];
                    let m_h = mask.as_ref().map(|(m, k)| (&m[at..at + l * l], *k));
                    let weights: &[f32] = match m_h {
                        Some((m, keep_scale)) => {
                            for ((d, &pv), &mv) in dropped.iter_mut().zip(p_h).zip(m) {
                                *d = pv * f32::from(mv) * keep_scale;
                            }
                            &dropped
                        }
                        None => p_h,
                    };
                    let q = x[s * 3 * h + hd * dh..].as_ptr();
                    let k = x[s * 3 * h + h + hd * dh..].as_ptr();
                    let v = x[s * 3 * h + 2 * h + hd * dh..].as_ptr();
                    let gc = g[s * h + hd * dh..].as_ptr();
                    // SAFETY (all products below): every operand is this row's block of `x`, `g`,
                    // `out_r` or an l×l buffer, addressed with its own strides.
                    unsafe {
                        // dV = Pdᵀ · dctx
                        matmul(
                            (l, dh, l),
                            (out_r[2 * h + hd * dh..].as_mut_ptr(), 3 * h, 1),
                            (weights.as_ptr(), 1, l),
                            (gc, h, 1),
                            1.0,
                        );
                        // dPd = dctx · Vᵀ
                        matmul(
                            (l, l, dh),
                            (dz.as_mut_ptr(), l, 1),
                            (gc, h, 1),
                            (v, 1, 3 * h),
                            1.0,
                        );
                    }
                    // Through dropout and softmax: dZ = P ⊙ (dP − Σ P⊙dP), with the scores' scale.
                    for (i, (dz_row, p_row)) in dz.chunks_mut(l).zip(p_h.chunks(l)).enumerate() {
                        if let Some((m, keep_scale)) = m_h {
                            for (d, &mv) in dz_row.iter_mut().zip(&m[i * l..(i + 1) * l]) {
                                *d *= f32::from(mv) * keep_scale;
                            }
                        }
                        let dot = crate::ops::dot16(dz_row, p_row);
                        for (d, &pv) in dz_row.iter_mut().zip(p_row) {
                            *d = pv * (*d - dot);
                        }
                    }
                    unsafe {
                        // dQ = scale · dZ · K;  dK = scale · dZᵀ · Q
                        matmul(
                            (l, dh, l),
                            (out_r[hd * dh..].as_mut_ptr(), 3 * h, 1),
                            (dz.as_ptr(), l, 1),
                            (k, 3 * h, 1),
                            shape.scale(),
                        );
                        matmul(
                            (l, dh, l),
                            (out_r[h + hd * dh..].as_mut_ptr(), 3 * h, 1),
                            (dz.as_ptr(), 1, l),
                            (q, 3 * h, 1),
                            shape.scale(),
                        );
                    }
                }
            });
        })
    })??;
    Ok(Tensor::from_vec(dqkv, (n, 3 * h), dctx.device())?)
}

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
    fn new(rows: &RowSpans, device: &candle_core::Device) -> Result<PaddedIndex> {
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

fn padded_forward(
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
    let probs = crate::ops::masked_softmax_fwd(&scores, &index.bias, f64::from(shape.scale()))?;
    let mask = match dropout {
        Some(d) => d.masks.attention_padded(&probs, d.layer, d.p)?,
        None => None,
    };
    let probs_dropped = kernels::masked(&probs, mask.as_ref())?;
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

fn padded_backward(
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
        unreachable!("padded_backward is called with a padded cache");
    };
    let dctx = index.to_padded(dctx, shape)?;
    let dpd = dctx.matmul(&v.t()?)?;
    let dv = probs_dropped.t()?.matmul(&dctx)?;
    let dp = kernels::masked(&dpd, mask.as_ref())?;
    let dz = crate::ops::masked_softmax_bwd(probs, &dp, f64::from(shape.scale()))?;
    let dq = dz.matmul(k)?;
    let dk = dz.t()?.matmul(q)?;
    let back = |x: &Tensor| index.to_packed(x, shape);
    Ok(Tensor::cat(&[back(&dq)?, back(&dk)?, back(&dv)?], 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// The masks of a batch of rows of these lengths (sentences 0, 1, ...), at step 1 of seed 3.
    fn masks(lengths: &[usize]) -> Masker {
        let mut b = crate::PackedBatch::new();
        for (r, &l) in lengths.iter().enumerate() {
            b.push_row(r as u64, &vec![1; l], &vec![0; l], std::iter::empty());
        }
        let (inputs, _) = b.to_device(&Device::Cpu).unwrap();
        let noise = crate::dropout::Noise { seed: 3, step: 1 };
        Masker::new(noise, &inputs).unwrap()
    }

    /// The fused CPU kernel (forward and backward) equals the padded tensor-op path, without dropout
    /// and with it (the same sentence-keyed masks in either layout).
    #[test]
    fn cpu_kernel_matches_the_padded_path() {
        let lengths = [5, 1, 9, 3];
        let masks = masks(&lengths);
        for p in [0.0, 0.3] {
            let dropout = Dropout {
                masks: &masks,
                layer: 2,
                p,
            };
            kernel_matches_padded(&lengths, Some(dropout));
        }
    }

    fn kernel_matches_padded(lengths: &[usize], dropout: Option<Dropout>) {
        let rows = RowSpans::new(lengths.to_vec());
        let shape = Heads {
            heads: 3,
            head_dim: 4,
        };
        let (n, h) = (rows.tokens(), shape.hidden());
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        let mut random = |len: usize| -> Tensor {
            let v: Vec<f32> = (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            Tensor::from_vec(v, len, &Device::Cpu).unwrap()
        };
        let qkv = random(n * 3 * h).reshape((n, 3 * h)).unwrap();
        let dctx = random(n * h).reshape((n, h)).unwrap();
        let (ctx_cpu, cache_cpu) = forward(&qkv, &rows, shape, dropout, true).unwrap();
        let (ctx_pad, cache_pad) = padded_forward(&qkv, &rows, shape, dropout, true).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(max_diff(&ctx_cpu, &ctx_pad) < 1e-5);
        let d_cpu = backward(&dctx, &qkv, &rows, shape, &cache_cpu.unwrap()).unwrap();
        let d_pad = backward(&dctx, &qkv, &rows, shape, &cache_pad.unwrap()).unwrap();
        assert!(
            max_diff(&d_cpu, &d_pad) < 1e-5,
            "{}",
            max_diff(&d_cpu, &d_pad)
        );
        // Nothing kept gives the same context.
        let (ctx_eval, none) = forward(&qkv, &rows, shape, dropout, false).unwrap();
        assert!(none.is_none());
        assert_eq!(max_diff(&ctx_eval, &ctx_cpu), 0.0);
    }

    /// With dropout, the CPU kernel's backward is the gradient of its forward (finite differences).
    #[test]
    fn cpu_kernel_backward_with_dropout_is_the_gradient() {
        let rows = RowSpans::new(vec![4, 6]);
        let shape = Heads {
            heads: 2,
            head_dim: 3,
        };
        let (n, h) = (rows.tokens(), shape.hidden());
        let mut r = rand::rngs::SmallRng::seed_from_u64(9);
        let x: Vec<f32> = (0..n * 3 * h)
            .map(|_| r.random_range(-1.0f32..1.0))
            .collect();
        let g: Vec<f32> = (0..n * h).map(|_| r.random_range(-1.0f32..1.0)).collect();
        let dctx = Tensor::from_vec(g.clone(), (n, h), &Device::Cpu).unwrap();
        // The loss Σ g ⊙ ctx(x), with the same masks every time.
        let masks = masks(&[4, 6]);
        let dropout = Some(Dropout {
            masks: &masks,
            layer: 0,
            p: 0.3,
        });
        let loss = |x: &[f32]| -> f64 {
            let qkv = Tensor::from_vec(x.to_vec(), (n, 3 * h), &Device::Cpu).unwrap();
            let (ctx, _) = forward(&qkv, &rows, shape, dropout, false).unwrap();
            let c = ctx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            c.iter().zip(&g).map(|(a, b)| f64::from(a * b)).sum()
        };
        let qkv = Tensor::from_vec(x.clone(), (n, 3 * h), &Device::Cpu).unwrap();
        let (_, cache) = forward(&qkv, &rows, shape, dropout, true).unwrap();
        let grad = backward(&dctx, &qkv, &rows, shape, &cache.unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for i in (0..x.len()).step_by(7) {
            let eps = 1e-2f32;
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += eps;
            down[i] -= eps;
            let numeric = (loss(&up) - loss(&down)) / f64::from(2.0 * eps);
            assert!(
                (numeric - f64::from(grad[i])).abs() < 2e-3,
                "d/dx[{i}]: numeric {numeric}, kernel {}",
                grad[i]
            );
        }
    }
}
