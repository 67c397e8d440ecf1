//! The CUDA attention kernels' launches: one block per (row, head) of `ATT_WARPS` warps. In bf16
//! with a head size of 16, 32, 48 or 64 (BERT-base, MiniLM) the tensor-core kernels run
//! (`kernels/attention_tc.cu`: warp matrix products on tiles of `ATT_TC_TILE` rows); otherwise the
//! CUDA-core ones (`kernels/attention.cu`: tiles of `ATT_TILE` rows). Either keeps the probabilities
//! (f32, the CPU kernel's layout) for the backward pass and regenerates the dropout mask from the
//! sentences' keys in both passes. The context and dqkv are written in qkv's dtype, summed in f32: a
//! row longer than one tile keeps its running sums in an f32 scratch buffer until its last tile (in
//! f32 the output itself serves), so a bf16 output is the cast of the f32 sum without a pass to cast.

use candle_core::{DType, Tensor};

use super::{Heads, RowSpans};
use crate::error::Result;
use crate::launch::{
    ATT_TC_MAX_DH, ATT_TC_SKEW, ATT_TC_TILE, ATT_TILE, ATT_WARPS, AttShape, Elem, Exec, Launch,
    Ptr, int,
};
use crate::on_gpu;

/// Attention dropout on the GPU: the sentences' keys (`[B]` i64 on the GPU), the layer's site, p.
#[derive(Debug, Clone)]
pub struct GpuDropout {
    pub keys: Tensor,
    pub site: u64,
    pub p: f64,
}

/// One call's row tables and parameters, as the kernels take them.
pub(crate) struct Problem {
    pub starts: Vec<i32>,
    pub offsets: Vec<i64>,
    pub shape: AttShape,
}

impl Problem {
    pub(crate) fn new(
        rows: &RowSpans,
        shape: Heads,
        dropout: Option<(u64, f64)>,
    ) -> Result<Problem> {
        let (site, threshold, keep_scale) = match dropout {
            Some((site, p)) if p > 0.0 => {
                (site, crate::dropout::threshold(p), (1.0 / (1.0 - p)) as f32)
            }
            _ => (0, 65536, 1.0),
        };
        let starts = rows
            .starts
            .iter()
            .map(|&s| int(s, "token index"))
            .collect::<Result<_>>()?;
        let offsets = super::cpu::prob_offsets(rows, shape.heads)
            .into_iter()
            .map(|o| o as i64)
            .collect();
        Ok(Problem {
            starts,
            offsets,
            shape: AttShape {
                site,
                heads: int(shape.heads, "heads")?,
                head_dim: int(shape.head_dim, "head size")?,
                scale: shape.scale(),
                threshold,
                keep_scale,
                pad: 0,
            },
        })
    }

    fn rows(&self) -> usize {
        self.starts.len() - 1
    }

    /// Where the passes writing `len` elements of `out` (stored as `s`) keep the f32 running sums of
    /// rows longer than one tile: `out` itself in f32; in bf16 a scratch buffer where such a row
    /// exists, else none (no kernel touches it).
    fn running_sums(&self, e: &mut dyn Exec, s: Elem, out: Ptr, len: usize) -> Result<Ptr> {
        let tile = if self.tensor_cores(s) {
            ATT_TC_TILE
        } else {
            ATT_TILE
        };
        let longest = self.starts.windows(2).map(|w| w[1] - w[0]).max();
        match s {
            Elem::F32 => Ok(out),
            Elem::Bf16 if longest.is_some_and(|l| l as usize > tile) => e.scratch(len * 4),
            Elem::Bf16 => Ok(Ptr::NULL),
        }
    }

    pub(crate) fn probs(&self) -> usize {
        *self.offsets.last().unwrap_or(&0) as usize
    }

    fn launch(&self, kernel: String, shared_floats: usize) -> Launch {
        let blocks = (self.rows() * self.shape.heads as usize).max(1) as u32;
        Launch::new(kernel, (blocks, 1), (32, ATT_WARPS as u32)).shared(shared_floats * 4)
    }

    /// Whether the tensor-core kernels run: bf16 storage (their operands) and a head size that
    /// 16 × 16 × 16 tiles divide, up to `ATT_TC_MAX_DH` (beyond it their shared memory would pass the
    /// 48 KiB a launch gets without opting in).
    pub(crate) fn tensor_cores(&self, s: Elem) -> bool {
        let dh = self.shape.head_dim as usize;
        s == Elem::Bf16 && dh.is_multiple_of(16) && dh <= ATT_TC_MAX_DH
    }

    /// Shared memory (f32 words) of a tensor-core kernel staging `tiles` tiles: `TcSmem`'s layout —
    /// the tiles (bf16, rows padded by `ATT_TC_SKEW`), then per warp a 16-row strip and a scratch area
    /// for two 16-row operands or one f32 staging tile, whichever is larger.
    fn tc_shared(&self, tiles: usize) -> usize {
        let dh = self.shape.head_dim as usize;
        let pitch = dh + ATT_TC_SKEW;
        let tile = ATT_TC_TILE * pitch * 2;
        let strip = 16 * pitch * 2;
        let operands = 2 * 16 * (ATT_TC_TILE + ATT_TC_SKEW) * 2;
        let staging = 16 * ATT_TC_TILE.max(dh) * 4;
        (tiles * tile + ATT_WARPS * (strip + operands.max(staging))) / 4
    }

    /// The launch of one pass (`fwd`, `bwd_scores`, `bwd_dq`, `bwd_dkv`): its tensor-core kernel
    /// staging `tc_tiles` tiles where [`Problem::tensor_cores`], else its CUDA-core kernel with
    /// `shared` words of shared memory.
    fn pass(&self, s: Elem, pass: &str, shared: usize, tc_tiles: usize) -> Launch {
        if self.tensor_cores(s) {
            self.launch(
                s.kernel(&format!("attn_tc_{pass}")),
                self.tc_shared(tc_tiles),
            )
        } else {
            self.launch(s.kernel(&format!("attn_{pass}")), shared)
        }
    }

    /// Shared memory of one tile of keys or values and, per warp, a query row or a row of dropped
    /// probabilities (whichever is longer).
    fn one_tile(&self) -> usize {
        let dh = self.shape.head_dim as usize;
        ATT_TILE * (dh + 1) + ATT_WARPS * dh.max(ATT_TILE)
    }

    /// Shared memory of two tiles (queries and the context's gradient) and, per warp, a key's column
    /// of dropped probabilities and of dZ.
    fn two_tiles(&self) -> usize {
        2 * ATT_TILE * (self.shape.head_dim as usize + 1) + ATT_WARPS * 2 * ATT_TILE
    }
}

/// The tables of a problem on the device: row starts (i32) and probability offsets (i64).
pub(crate) struct Tables {
    pub starts: Ptr,
    pub offsets: Ptr,
}

/// The context (N·H, stored as `s`) and the probabilities (Σ heads·L², f32) from qkv (plus its bias
/// when not null), for `[qkv, bias (or null), keys (or null), ctx, probs]`.
pub(crate) fn forward_launches(
    e: &mut dyn Exec,
    s: Elem,
    pr: &Problem,
    t: &Tables,
    [qkv, bias, keys, ctx, probs]: [Ptr; 5],
    ctx_len: usize,
) -> Result<()> {
    let partial = pr.running_sums(e, s, ctx, ctx_len)?;
    e.launch(
        pr.pass(s, "fwd", pr.one_tile(), 1)
            .arg(qkv)
            .arg(bias)
            .arg(t.starts)
            .arg(keys)
            .arg(t.offsets)
            .arg(probs)
            .arg(ctx)
            .arg(partial)
            .arg(pr.shape),
    )
}

/// dqkv (`dqkv_len` = N·3H elements, stored as `s`) from qkv (plus its bias when not null), the
/// context's gradient and the kept probabilities, for `[qkv, bias (or null), dctx, keys (or null),
/// probs, dqkv]`: the scores' gradient (scratch), then dQ, then dK and dV.
pub(crate) fn backward_launches(
    e: &mut dyn Exec,
    s: Elem,
    pr: &Problem,
    t: &Tables,
    [qkv, bias, dctx, keys, probs, dqkv]: [Ptr; 6],
    dqkv_len: usize,
) -> Result<()> {
    let dz = e.scratch(pr.probs().max(1) * 4)?;
    let partial = pr.running_sums(e, s, dqkv, dqkv_len)?;
    e.launch(
        pr.pass(s, "bwd_scores", pr.one_tile(), 1)
            .arg(qkv)
            .arg(bias)
            .arg(dctx)
            .arg(t.starts)
            .arg(keys)
            .arg(t.offsets)
            .arg(probs)
            .arg(dz)
            .arg(pr.shape),
    )?;
    e.launch(
        pr.pass(s, "bwd_dq", pr.two_tiles(), 1)
            .arg(qkv)
            .arg(bias)
            .arg(t.starts)
            .arg(t.offsets)
            .arg(dz)
            .arg(dqkv)
            .arg(partial)
            .arg(pr.shape),
    )?;
    e.launch(
        pr.pass(s, "bwd_dkv", pr.two_tiles(), 2)
            .arg(qkv)
            .arg(bias)
            .arg(dctx)
            .arg(t.starts)
            .arg(keys)
            .arg(t.offsets)
            .arg(probs)
            .arg(dz)
            .arg(dqkv)
            .arg(partial)
            .arg(pr.shape),
    )
}

/// A batch's row tables on its GPU — row starts (i32) and each row's offset into the probabilities
/// (i64) — uploaded once per batch and read by every layer's attention, forward and backward.
#[derive(Debug, Clone)]
pub struct AttentionTables {
    starts: Tensor,
    offsets: Tensor,
}

impl AttentionTables {
    /// The tables for a batch of `rows` on `device` when the fused CUDA attention runs there (the
    /// fused policy, a CUDA build and device, heads of at most [`super::MAX_HEAD_DIM`]), else none.
    pub fn for_batch(
        k: crate::Kernels,
        rows: &RowSpans,
        shape: Heads,
        device: &candle_core::Device,
    ) -> Result<Option<AttentionTables>> {
        let fused = k == crate::Kernels::Fused && cfg!(feature = "cuda") && device.is_cuda();
        if !fused || shape.head_dim > super::MAX_HEAD_DIM {
            return Ok(None);
        }
        Ok(Some(AttentionTables::new(rows, shape, device)?))
    }

    pub fn new(
        rows: &RowSpans,
        shape: Heads,
        device: &candle_core::Device,
    ) -> Result<AttentionTables> {
        let pr = Problem::new(rows, shape, None)?;
        Ok(AttentionTables {
            starts: Tensor::from_slice(&pr.starts, pr.starts.len(), device)?,
            offsets: Tensor::from_slice(&pr.offsets, pr.offsets.len(), device)?,
        })
    }
}

/// The context `[N, H]` (qkv's dtype, written so by the kernels) and the probabilities (f32) from qkv
/// `[N, 3H]` plus `bias` `[3H]` (qkv's dtype) when given.
pub(crate) fn forward(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    rows: &RowSpans,
    shape: Heads,
    dropout: Option<&GpuDropout>,
    tables: &AttentionTables,
) -> Result<(Tensor, Tensor)> {
    let pr = Problem::new(rows, shape, dropout.map(|d| (d.site, d.p)))?;
    let (starts, offsets) = (tables.starts.clone(), tables.offsets.clone());
    let s = Elem::of(qkv.dtype())?;
    let (n, h) = (rows.tokens(), shape.hidden());
    let out = on_gpu(
        &[
            Some(qkv),
            Some(&starts),
            Some(&offsets),
            dropout.map(|d| &d.keys),
            bias,
        ],
        &[(qkv.dtype(), n * h), (DType::F32, pr.probs())],
        |e, i, o| {
            let t = Tables {
                starts: i[1],
                offsets: i[2],
            };
            forward_launches(e, s, &pr, &t, [i[0], i[4], i[3], o[0], o[1]], n * h)
        },
    )?;
    Ok((out[0].reshape((n, h))?, out[1].clone()))
}

/// dqkv `[N, 3H]` (qkv's dtype) from the context's gradient and the kept probabilities; `bias` as
/// in [`forward`].
pub(crate) fn backward(
    dctx: &Tensor,
    (qkv, bias): (&Tensor, Option<&Tensor>),
    probs: &Tensor,
    rows: &RowSpans,
    shape: Heads,
    dropout: Option<&GpuDropout>,
    tables: &AttentionTables,
) -> Result<Tensor> {
    let pr = Problem::new(rows, shape, dropout.map(|d| (d.site, d.p)))?;
    let (starts, offsets) = (tables.starts.clone(), tables.offsets.clone());
    let s = Elem::of(qkv.dtype())?;
    let dctx = dctx.to_dtype(qkv.dtype())?;
    let n = rows.tokens();
    let out = on_gpu(
        &[
            Some(qkv),
            Some(&dctx),
            Some(&starts),
            Some(&offsets),
            dropout.map(|d| &d.keys),
            Some(probs),
            bias,
        ],
        &[(qkv.dtype(), n * 3 * shape.hidden())],
        |e, i, o| {
            let t = Tables {
                starts: i[2],
                offsets: i[3],
            };
            let ptrs = [i[0], i[6], i[1], i[4], i[5], o[0]];
            backward_launches(e, s, &pr, &t, ptrs, n * 3 * shape.hidden())
        },
    )?;
    Ok(out[0].reshape((n, 3 * shape.hidden()))?)
}
