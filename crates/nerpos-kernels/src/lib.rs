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
mod cublas;
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
            _ if self.cuda()
                && t.device().is_cuda()
                && matches!(dtype, DType::F32 | DType::BF16) =>
            {
                Impl::Cuda
            }
            _ => Impl::Tensor,
        }
    }

    /// Whether this policy lets our CUDA kernels run at all (the fused policy, in a CUDA build): the
    /// one test every choice below makes — the ops', the dropout masks' and the optimiser's.
    pub fn cuda(self) -> bool {
        self == Kernels::Fused && cfg!(feature = "cuda")
    }

    /// Whether a batch's dropout masks on `device` are drawn by our CUDA mask kernels (else on the
    /// host, element for element the same, and uploaded).
    pub fn masks_on_gpu(self, device: &candle_core::Device) -> bool {
        self.cuda() && device.is_cuda()
    }

    /// Whether the optimiser may use its fused CUDA kernels (AdamW per parameter, the multi-tensor
    /// norm) when `wanted` (the trainer's `fused_adamw`); else composed tensor ops on a GPU.
    pub fn fused_optimiser(self, wanted: bool) -> bool {
        wanted && self.cuda()
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

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::{Impl, Kernels};

    /// Every choice of what runs goes through the policy's one test (`Kernels::cuda`): with
    /// `gpu_kernels = false` (CpuOnly) or the reference policy none of our CUDA kernels is chosen —
    /// not an op's, not the dropout masks', not the optimiser's.
    #[test]
    fn only_the_fused_policy_chooses_our_cuda_kernels() {
        assert_eq!(Kernels::with_gpu(false), Kernels::CpuOnly);
        assert_eq!(Kernels::with_gpu(true), Kernels::Fused);
        for k in [Kernels::CpuOnly, Kernels::Reference] {
            assert!(!k.cuda(), "{k:?}");
            assert!(!k.fused_optimiser(true), "{k:?}");
            assert!(!k.masks_on_gpu(&Device::Cpu), "{k:?}");
        }
        assert_eq!(Kernels::Fused.cuda(), cfg!(feature = "cuda"));
        assert!(!Kernels::Fused.fused_optimiser(false));
        assert!(!Kernels::Fused.masks_on_gpu(&Device::Cpu));
        let f32 = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let bf16 = f32.to_dtype(DType::BF16).unwrap();
        assert_eq!(Kernels::CpuOnly.pick(&f32), Impl::Cpu);
        assert_eq!(Kernels::Fused.pick(&f32), Impl::Cpu);
        assert_eq!(Kernels::Reference.pick(&f32), Impl::Tensor);
        assert_eq!(Kernels::Fused.pick(&bf16), Impl::Tensor);
    }
}
