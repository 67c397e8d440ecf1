//! `nerpos-kernels`: the fused ops of the BERT+POS engine, one place each.
//!
//! Each op ([`ops`]) is one type holding its three implementations: the CPU kernel (f32, one pass over
//! memory where tensor ops take three to five), its CUDA launch (`kernels/*.cu`, compiled into a
//! fatbin by build.rs) and the tensor-op reference its tests hold both to. Which one runs is chosen by
//! the [`Kernels`] policy a model carries — built from its configuration, never from a global.
//!
//! The CUDA launches are described once ([`launch`]) and run either on a GPU or, in the tests, on a
//! CPU emulator of the CUDA runtime (`kernels/emu`): the launch code the GPU runs is the code the tests
//! run. Dropout's randomness (keyed by the sentence) is [`dropout`].

mod deferred;
pub mod dropout;
mod error;
pub mod host;
pub mod launch;
pub mod ops;
mod rows;
pub mod stats;
pub mod tier;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(test)]
mod emu;

use candle_core::{DType, Tensor};

pub use deferred::{Deferred, read_all};
pub use error::{KernelError, Result};
pub use ops::Mask;
pub use rows::RowSpans;
pub use tier::Tier;

/// Which implementation of the fused ops runs: the policy a model carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kernels {
    /// The fused kernels on the CPU (f32); on a GPU, the tensor-op versions (candle's kernels). The
    /// default until the CUDA kernels have been measured on a GPU.
    #[default]
    CpuOnly,
    /// The fused kernels on the CPU and on the GPU (f32 and bf16; CUDA builds).
    Fused,
    /// The tensor-op versions everywhere: the reference the fused kernels are tested against.
    Reference,
}

/// The implementation one call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// The CPU kernel.
    Cpu,
    /// The CUDA kernels.
    Cuda,
    /// Tensor ops (any device and dtype).
    Tensor,
}

impl Kernels {
    /// The fused GPU kernels or not (the trainer's `gpu_kernels` setting).
    pub fn with_gpu(gpu_kernels: bool) -> Kernels {
        if gpu_kernels {
            Kernels::Fused
        } else {
            Kernels::CpuOnly
        }
    }

    /// What runs on `t`: the CPU kernel for CPU f32 tensors, the CUDA kernels for f32/bf16 GPU tensors
    /// when the policy allows (and the build has them), tensor ops otherwise.
    pub fn pick(self, t: &Tensor) -> Impl {
        let dtype = t.dtype();
        match self {
            Kernels::Reference => Impl::Tensor,
            _ if t.device().is_cpu() && dtype == DType::F32 => Impl::Cpu,
            Kernels::Fused
                if cfg!(feature = "cuda")
                    && t.device().is_cuda()
                    && matches!(dtype, DType::F32 | DType::BF16) =>
            {
                Impl::Cuda
            }
            _ => Impl::Tensor,
        }
    }

    /// Whether the CUDA kernels run on `t`.
    pub fn on_gpu(self, t: &Tensor) -> bool {
        self.pick(t) == Impl::Cuda
    }
}

/// Runs an op's GPU launches on its tensors (CUDA builds): `inputs` are read (or written in place),
/// `outputs` are allocated (dtype, element count) uninitialised — every kernel writes its outputs
/// whole — and returned as tensors.
pub(crate) fn on_gpu(
    inputs: &[Option<&Tensor>],
    outputs: &[(DType, usize)],
    launches: impl FnOnce(&mut dyn launch::Exec, &[launch::Ptr], &[launch::Ptr]) -> Result<()>,
) -> Result<Vec<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        cuda::run(inputs, outputs, launches)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (inputs, outputs, launches);
        Err(KernelError::Internal(
            "a CUDA kernel was asked for in a build without the cuda feature".into(),
        ))
    }
}
