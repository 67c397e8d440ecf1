//! The fused ops, one module each: the CPU kernel, the GPU launches (run on the GPU by
//! [`crate::on_gpu`], on the emulator by the op's test) and the tensor-op reference, chosen by the
//! [`crate::Kernels`] policy the caller passes. Each takes and returns candle tensors.
//!
//! Adding an op: its kernel in `kernels/<op>.cu` (one `#include` line in `kernels/all.cu`), its type
//! here (`<op>.rs`: the three implementations), its test beside it (CPU against the reference, the
//! emulated launches against the CPU).

pub mod adamw;
pub mod attention;
pub mod column_sum;
pub mod cross_entropy;
pub mod embedding;
pub mod gelu;
pub mod layer_norm;
pub(crate) mod math;
pub mod matmul;
pub mod multi_tensor;
pub mod residual;

use candle_core::{DType, Tensor};

use crate::error::Result;

pub use residual::Mask;

/// `x` in f32. The reference paths compute normalisations and reductions in f32 whatever the storage
/// type, and hand back results in the input's dtype — what PyTorch's autocast does for LayerNorm,
/// softmax and sums under bf16.
pub(crate) fn f32(x: &Tensor) -> Result<Tensor> {
    Ok(x.to_dtype(DType::F32)?)
}

#[cfg(test)]
pub(crate) mod testing {
    //! What the ops' tests share: seeded random data and comparisons.

    use candle_core::{DType, Device, Tensor};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    pub(crate) fn rng(seed: u64) -> SmallRng {
        SmallRng::seed_from_u64(seed)
    }

    pub(crate) fn random(rng: &mut SmallRng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    pub(crate) fn cpu(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    pub(crate) fn flat(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}
