//! The fused GPU kernels as candle custom ops, callable on any build: with the `cuda` feature their
//! `cuda_fwd` launches `kernels/train.cu` ([`crate::cuda`]); elsewhere [`applies`] is false and the
//! callers keep their CPU kernels or tensor-op paths.
//!
//! The kernels are off unless turned on ([`set_fused_kernels`]; the trainer's `gpu_kernels` key):
//! they are checked against the CPU kernels on the CPU emulator in every test run, but the launches on
//! a real GPU are only checked by `nerpos-gpu-bench kernels` when a GPU is at hand.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use crate::dropout::{GpuKeys, Rows};
use crate::error::Result;

/// The AdamW update kernels (`kernels/adamw.cu`; launched by nerpos-train's optimiser): their source,
/// for the test that runs them on the CUDA emulator.
pub const ADAMW_SOURCE: &str = include_str!("../kernels/adamw.cu");

/// An exported kernel of the nerpos fatbin (built with the crate: nothing compiled at run time) on
/// `dev`'s context.
#[cfg(feature = "cuda")]
pub fn cuda_function(
    dev: &candle_core::CudaDevice,
    name: &str,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaFunction> {
    crate::cuda::loaded(dev, name)
}

/// Largest head size the attention kernels take (two tiles of 32 rows of it fit in 48 KB of shared
/// memory); larger heads use the padded tensor-op path.
pub const MAX_HEAD_DIM: usize = 128;

static FUSED: AtomicBool = AtomicBool::new(false);

/// Turns the fused CUDA kernels on or off for this process (off by default).
pub fn set_fused_kernels(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Whether the fused CUDA kernels are on.
pub fn fused_kernels() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// Whether the fused CUDA kernels run on `t`: a CUDA build, the kernels on, an f32 or bf16 tensor on a
/// GPU.
pub fn applies(t: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && fused_kernels()
        && t.device().is_cuda()
        && matches!(t.dtype(), DType::F32 | DType::BF16)
}

fn gpu_only(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{name} is a GPU kernel (callers check `applies` first)"
    ))
}

#[cfg(feature = "cuda")]
type GpuView<'a> = (&'a candle_core::CudaStorage, &'a Layout);

/// Runs `f` on the GPU storage of `t` (a tensor an op reads or writes besides its operands).
#[cfg(feature = "cuda")]
fn on_gpu<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(GpuView) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (s, l) = t.storage_and_layout();
    let candle_core::Storage::Cuda(s) = &*s else {
        candle_core::bail!("{what} is not on the GPU");
    };
    f((s, l))
}

/// As [`on_gpu`] for an optional tensor (`None` passed on).
#[cfg(feature = "cuda")]
fn maybe_on_gpu<R>(
    t: Option<&Tensor>,
    what: &str,
    f: impl FnOnce(Option<GpuView>) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    match t {
        None => f(None),
        Some(t) => on_gpu(t, what, |v| f(Some(v))),
    }
}

macro_rules! no_cpu {
    ($($arg:ident),*) => {
        fn cpu_fwd(&self, $($arg: &CpuStorage, _: &Layout),*) -> candle_core::Result<(CpuStorage, Shape)> {
            $(let _ = $arg;)*
            Err(gpu_only(self.name()))
        }
    };
}

/// (u, gelu(u)) for u = y + bias.
pub fn bias_gelu(y: &Tensor, bias: &Tensor) -> Result<(Tensor, Tensor)> {
    let rows = y.dim(0)?;
    let both = y
        .contiguous()?
        .apply_op2_no_bwd(&bias.contiguous()?, &BiasGelu)?;
    Ok((both.narrow(0, 0, rows)?, both.narrow(0, rows, rows)?))
}

struct BiasGelu;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "nerpos-bias-gelu"
    }
    no_cpu!(a, b);

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::bias_gelu((s1, l1), (s2, l2))
    }
}

/// (du, dbias) for g = gelu(u).
pub fn gelu_colsum(u: &Tensor, dg: &Tensor) -> Result<(Tensor, Tensor)> {
    let rows = u.dim(0)?;
    let packed = u
        .contiguous()?
        .apply_op2_no_bwd(&dg.contiguous()?, &GeluColsum)?;
    Ok((packed.narrow(0, 0, rows)?, packed.get(rows)?))
}

struct GeluColsum;

impl CustomOp2 for GeluColsum {
    fn name(&self) -> &'static str {
        "nerpos-gelu-colsum"
    }
    no_cpu!(a, b);

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::columns_with(
            crate::cuda::ColumnPass::GeluBackward,
            (s1, l1),
            Some((s2, l2)),
        )
    }
}

/// z = dropout(y + bias) + residual with `mask` the scaled keep-mask (same dtype as y), or none.
pub fn bias_dropout_residual(
    y: &Tensor,
    bias: &Tensor,
    mask: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    let op = BiasDropoutResidual {
        mask: mask.map(Tensor::contiguous).transpose()?,
    };
    Ok(y.contiguous()?
        .apply_op3_no_bwd(&bias.contiguous()?, &residual.contiguous()?, &op)?)
}

struct BiasDropoutResidual {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    mask: Option<Tensor>,
}

impl CustomOp3 for BiasDropoutResidual {
    fn name(&self) -> &'static str {
        "nerpos-bias-dropout-residual"
    }
    no_cpu!(a, b, c);

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        maybe_on_gpu(self.mask.as_ref(), "the dropout mask", |mask| {
            crate::cuda::bias_dropout_residual((s1, l1), (s2, l2), (s3, l3), mask)
        })
    }
}

/// (dy, dbias) for dy = dz ⊙ mask (the scaled keep-mask, or none).
pub fn dropout_colsum(dz: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let rows = dz.dim(0)?;
    let op = DropoutColsum {
        mask: mask.map(Tensor::contiguous).transpose()?,
    };
    let packed = dz.contiguous()?.apply_op1_no_bwd(&op)?;
    Ok((packed.narrow(0, 0, rows)?, packed.get(rows)?))
}

struct DropoutColsum {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    mask: Option<Tensor>,
}

impl CustomOp1 for DropoutColsum {
    fn name(&self) -> &'static str {
        "nerpos-dropout-colsum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(gpu_only(self.name()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda::{ColumnPass, columns_with};
        maybe_on_gpu(self.mask.as_ref(), "the dropout mask", |mask| {
            columns_with(ColumnPass::DropoutBackward, (s, l), mask)
        })
    }
}

/// Summed cross-entropy of logits `[M, C]` against u32 labels `[M]` (left on the device), and
/// d(loss)/d(logits).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<(crate::Deferred, Tensor)> {
    // The kernel writes each row's loss here as it writes the gradient (an op has one output).
    let rows = Tensor::zeros(logits.dim(0)?, DType::F32, logits.device())?;
    let op = CrossEntropy { loss: rows.clone() };
    let grad = logits
        .contiguous()?
        .apply_op2_no_bwd(&labels.contiguous()?, &op)?;
    Ok((crate::Deferred::sum_of(&rows)?, grad))
}

struct CrossEntropy {
    /// `[M]` f32 on the logits' GPU: each row's loss, written by the launch.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    loss: Tensor,
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "nerpos-cross-entropy"
    }
    no_cpu!(a, b);

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        on_gpu(&self.loss, "the cross-entropy loss buffer", |loss| {
            crate::cuda::cross_entropy((s1, l1), (s2, l2), loss)
        })
    }
}

/// The scaled keep-mask of `like` (`[rows, width]`, holding the batch's `rows`) at dropout site
/// `site`, drawn on the GPU from the sentences' keys (`kernels/dropout.cuh`).
pub(crate) fn dropout_mask(
    like: &Tensor,
    keys: &GpuKeys,
    rows: Rows,
    site: u64,
    p: f64,
) -> Result<Tensor> {
    let (row, pos) = match rows {
        Rows::Tokens => (&keys.token_rows, &keys.token_positions),
        Rows::Head => (&keys.head_rows, &keys.head_positions),
    };
    let op = DropoutMask {
        keys: keys.keys.clone(),
        row: row.clone(),
        pos: pos.clone(),
        site,
        p,
    };
    Ok(like.apply_op1_no_bwd(&op)?)
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct DropoutMask {
    keys: Tensor,
    row: Tensor,
    pos: Tensor,
    site: u64,
    p: f64,
}

impl CustomOp1 for DropoutMask {
    fn name(&self) -> &'static str {
        "nerpos-dropout-mask"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(gpu_only(self.name()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        on_gpu(&self.keys, "the sentence keys", |keys| {
            on_gpu(&self.row, "the mask rows", |row| {
                on_gpu(&self.pos, "the mask positions", |pos| {
                    crate::cuda::dropout_mask((s, l), keys, row, pos, self.site, self.p)
                })
            })
        })
    }
}

/// The scaled keep-mask of attention probabilities gathered into a padded `[B, heads, T, T]` block
/// (`like`), drawn on the GPU; padding 0.
pub(crate) fn padded_attention_mask(
    like: &Tensor,
    keys: &GpuKeys,
    site: u64,
    p: f64,
) -> Result<Tensor> {
    let op = PaddedAttentionMask {
        keys: keys.keys.clone(),
        starts: keys.starts.clone(),
        site,
        p,
    };
    Ok(like.apply_op1_no_bwd(&op)?)
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct PaddedAttentionMask {
    keys: Tensor,
    starts: Tensor,
    site: u64,
    p: f64,
}

impl CustomOp1 for PaddedAttentionMask {
    fn name(&self) -> &'static str {
        "nerpos-padded-attention-mask"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(gpu_only(self.name()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        on_gpu(&self.keys, "the sentence keys", |keys| {
            on_gpu(&self.starts, "the row starts", |starts| {
                crate::cuda::padded_attention_mask((s, l), keys, starts, self.site, self.p)
            })
        })
    }
}

/// Attention dropout for the fused kernels: the sentences' keys on the GPU, the layer's site, p.
#[derive(Clone)]
pub struct AttentionDropout {
    pub keys: Tensor,
    pub site: u64,
    pub p: f64,
}

/// Attention on the GPU: the context `[N, H]` (qkv's dtype) and the probabilities (f32, kept for the
/// backward pass) from qkv `[N, 3H]`.
pub fn attention_forward(
    qkv: &Tensor,
    starts: &[usize],
    heads: usize,
    head_dim: usize,
    dropout: Option<AttentionDropout>,
) -> Result<(Tensor, Tensor)> {
    let op = AttentionFwd {
        starts: starts.to_vec(),
        heads,
        head_dim,
        dropout,
    };
    let packed = qkv.contiguous()?.apply_op1_no_bwd(&op)?;
    let n = *starts.last().unwrap_or(&0);
    let h = heads * head_dim;
    let ctx = packed.narrow(0, 0, n * h)?.reshape((n, h))?;
    let probs = packed.narrow(0, n * h, packed.dim(0)? - n * h)?;
    Ok((ctx.to_dtype(qkv.dtype())?, probs))
}

/// dqkv `[N, 3H]` (qkv's dtype) from the context's gradient and the kept probabilities.
pub fn attention_backward(
    dctx: &Tensor,
    qkv: &Tensor,
    probs: &Tensor,
    starts: &[usize],
    heads: usize,
    head_dim: usize,
    dropout: Option<AttentionDropout>,
) -> Result<Tensor> {
    let op = AttentionBwd {
        fwd: AttentionFwd {
            starts: starts.to_vec(),
            heads,
            head_dim,
            dropout,
        },
    };
    let dqkv = qkv.contiguous()?.apply_op3_no_bwd(
        &dctx.to_dtype(qkv.dtype())?.contiguous()?,
        &probs.contiguous()?,
        &op,
    )?;
    Ok(dqkv.to_dtype(qkv.dtype())?)
}

struct AttentionFwd {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    starts: Vec<usize>,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    heads: usize,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    head_dim: usize,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    dropout: Option<AttentionDropout>,
}

#[cfg(feature = "cuda")]
impl AttentionFwd {
    fn problem(&self) -> crate::cuda::Attention<'_> {
        crate::cuda::Attention {
            starts: &self.starts,
            heads: self.heads,
            head_dim: self.head_dim,
            dropout: self.dropout.as_ref().map(|d| (d.site, d.p)),
        }
    }

    /// Runs `f` with the sentence keys' GPU view (none without dropout).
    fn with_keys<R>(
        &self,
        f: impl FnOnce(crate::cuda::Keys) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        maybe_on_gpu(
            self.dropout.as_ref().map(|d| &d.keys),
            "the sentence keys",
            f,
        )
    }
}

impl CustomOp1 for AttentionFwd {
    fn name(&self) -> &'static str {
        "nerpos-attention"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(gpu_only(self.name()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.with_keys(|keys| self.problem().forward(s, l, keys))
    }
}

struct AttentionBwd {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fwd: AttentionFwd,
}

impl CustomOp3 for AttentionBwd {
    fn name(&self) -> &'static str {
        "nerpos-attention-bwd"
    }
    no_cpu!(a, b, c);

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.fwd.with_keys(|keys| {
            self.fwd
                .problem()
                .backward((s1, l1), (s2, l2), (s3, l3), keys)
        })
    }
}
