//! The fused CPU kernel: per row and head, QKᵀ, scale, softmax, dropout and ·V reading Q, K and V
//! straight out of the fused projection `[N, 3H]` (strided matrix products, no head split or copy),
//! and its backward likewise. It keeps the softmax output for the backward pass (Σ heads·L² values
//! per layer).

use candle_core::Tensor;
use gemm::Parallelism;
use rayon::prelude::*;

use super::{AttentionCache, Heads, RowSpans};
use crate::error::Result;
use crate::host::{dot16, read, zeros};
use crate::ops::math::softmax_in_place;

/// Keep-bytes of the probabilities in the cache's layout, and 1/(1−p).
pub(crate) type ByteMask = (Vec<u8>, f32);

/// Offsets of each row's `heads · L²` block in the cache, and the total.
pub(crate) fn prob_offsets(rows: &RowSpans, heads: usize) -> Vec<usize> {
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

/// The fused CPU kernel, with attention dropout from `mask` (keep bytes in the cache's layout, and
/// 1/(1−p)); the probabilities kept when `keep`.
pub(crate) fn forward(
    qkv: &Tensor,
    rows: &RowSpans,
    shape: Heads,
    mask: Option<ByteMask>,
    keep: bool,
) -> Result<(Tensor, Option<AttentionCache>)> {
    let (n, h, nh) = (rows.tokens(), shape.hidden(), shape.heads);
    let offsets = prob_offsets(rows, nh);
    let mut ctx = zeros(n * h);
    let mut probs = zeros(if keep { offsets[rows.rows()] } else { 0 });
    read::<f32, _>(qkv, |x| {
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
                let mut own = Vec::new();
                let probs_r: &mut [f32] = if keep {
                    probs_r
                } else {
                    own.resize(nh * l * l, 0.0);
                    &mut own
                };
                let mut dropped = vec![0f32; if mask.is_some() { l * l } else { 0 }];
                for hd in 0..nh {
                    let at = offsets[r] + hd * l * l;
                    let one = OneHead {
                        x: &x[s * 3 * h..],
                        g: &[],
                        p: &[],
                        mask: mask.as_ref().map(|(m, k)| (&m[at..at + l * l], *k)),
                        l,
                        hd,
                        shape,
                    };
                    let p_h = &mut probs_r[hd * l * l..(hd + 1) * l * l];
                    one.forward(ctx_r, p_h, &mut dropped);
                }
            });
    })?;
    let ctx = Tensor::from_vec(ctx, (n, h), qkv.device())?;
    Ok((ctx, keep.then_some(AttentionCache::Cpu { probs, mask })))
}

/// dqkv `[N, 3H]` from the context's gradient, the kept probabilities and the forward's mask.
pub(crate) fn backward(
    dctx: &Tensor,
    qkv: &Tensor,
    rows: &RowSpans,
    shape: Heads,
    probs: &[f32],
    mask: &Option<ByteMask>,
) -> Result<Tensor> {
    let (n, h, nh) = (rows.tokens(), shape.hidden(), shape.heads);
    let offsets = prob_offsets(rows, nh);
    let mut dqkv = zeros(n * 3 * h);
    read::<f32, _>(qkv, |x| {
        read::<f32, _>(dctx, |g| {
            let out_rows = split_at_offsets(&mut dqkv, &rows.starts, 3 * h);
            out_rows.into_par_iter().enumerate().for_each(|(r, out_r)| {
                let (s, l) = (rows.starts[r], rows.len(r));
                let mut scratch = Scratch {
                    dropped: vec![0f32; l * l],
                    dz: vec![0f32; l * l],
                };
                for hd in 0..nh {
                    let at = offsets[r] + hd * l * l;
                    let one = OneHead {
                        x: &x[s * 3 * h..],
                        g: &g[s * h..],
                        p: &probs[at..at + l * l],
                        mask: mask.as_ref().map(|(m, k)| (&m[at..at + l * l], *k)),
                        l,
                        hd,
                        shape,
                    };
                    one.backward(out_r, &mut scratch);
                }
            });
        })
    })??;
    Ok(Tensor::from_vec(dqkv, (n, 3 * h), dctx.device())?)
}

/// Buffers of one row's backward, reused across its heads.
struct Scratch {
    dropped: Vec<f32>,
    dz: Vec<f32>,
}

/// One row and head of the backward pass.
struct OneHead<'a> {
    /// The row's qkv rows (from its first token on).
    x: &'a [f32],
    /// The row's dctx rows (backward).
    g: &'a [f32],
    /// This head's l×l probabilities (backward).
    p: &'a [f32],
    /// This head's keep-bytes and 1/(1−p).
    mask: Option<(&'a [u8], f32)>,
    l: usize,
    hd: usize,
    shape: Heads,
}

impl OneHead<'_> {
    /// This head's probabilities into `p_h` (l×l) and its context into the row's block `ctx_r`.
    fn forward(&self, ctx_r: &mut [f32], p_h: &mut [f32], dropped: &mut [f32]) {
        let (l, h, dh, hd) = (self.l, self.shape.hidden(), self.shape.head_dim, self.hd);
        let q = self.x[hd * dh..].as_ptr();
        let k = self.x[h + hd * dh..].as_ptr();
        let v = self.x[2 * h + hd * dh..].as_ptr();
        // SAFETY: Q and K of this row and head are l rows of dh values, 3H apart, inside `x`; p_h
        // holds l×l values.
        unsafe {
            matmul(
                (l, l, dh),
                (p_h.as_mut_ptr(), l, 1),
                (q, 3 * h, 1),
                (k, 1, 3 * h),
                self.shape.scale(),
            )
        };
        for row in p_h.chunks_mut(l) {
            softmax_in_place(row);
        }
        let weights: &[f32] = match self.mask {
            Some((m, keep_scale)) => {
                for ((d, &pv), &mv) in dropped.iter_mut().zip(p_h.iter()).zip(m) {
                    *d = pv * f32::from(mv) * keep_scale;
                }
                dropped
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

    /// Adds this head's dQ, dK and dV into the row's block `out_r` of dqkv.
    fn backward(&self, out_r: &mut [f32], s: &mut Scratch) {
        let (l, h, dh, hd) = (self.l, self.shape.hidden(), self.shape.head_dim, self.hd);
        let weights: &[f32] = match self.mask {
            Some((m, keep_scale)) => {
                for ((d, &pv), &mv) in s.dropped.iter_mut().zip(self.p).zip(m) {
                    *d = pv * f32::from(mv) * keep_scale;
                }
                &s.dropped
            }
            None => self.p,
        };
        let q = self.x[hd * dh..].as_ptr();
        let k = self.x[h + hd * dh..].as_ptr();
        let v = self.x[2 * h + hd * dh..].as_ptr();
        let gc = self.g[hd * dh..].as_ptr();
        // SAFETY (all products below): every operand is this row's block of `x`, `g`, `out_r` or an
        // l×l buffer, addressed with its own strides.
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
                (s.dz.as_mut_ptr(), l, 1),
                (gc, h, 1),
                (v, 1, 3 * h),
                1.0,
            );
        }
        self.through_softmax(&mut s.dz);
        unsafe {
            // dQ = scale · dZ · K;  dK = scale · dZᵀ · Q
            let scale = self.shape.scale();
            let dz = s.dz.as_ptr();
            matmul(
                (l, dh, l),
                (out_r[hd * dh..].as_mut_ptr(), 3 * h, 1),
                (dz, l, 1),
                (k, 3 * h, 1),
                scale,
            );
            matmul(
                (l, dh, l),
                (out_r[h + hd * dh..].as_mut_ptr(), 3 * h, 1),
                (dz, 1, l),
                (q, 3 * h, 1),
                scale,
            );
        }
    }

    /// Through dropout and softmax, in place: dZ = P ⊙ (dP − Σ P⊙dP) with dP = mask ⊙ dPd.
    fn through_softmax(&self, dz: &mut [f32]) {
        let l = self.l;
        for (i, (dz_row, p_row)) in dz.chunks_mut(l).zip(self.p.chunks(l)).enumerate() {
            if let Some((m, keep_scale)) = self.mask {
                for (d, &mv) in dz_row.iter_mut().zip(&m[i * l..(i + 1) * l]) {
                    *d *= f32::from(mv) * keep_scale;
                }
            }
            let dot = dot16(dz_row, p_row);
            for (d, &pv) in dz_row.iter_mut().zip(p_row) {
                *d = pv * (*d - dot);
            }
        }
    }
}
