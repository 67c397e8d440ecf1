//! A linear layer's weight and bias. Its product runs without the bias: the fused op that follows
//! (bias + GELU, bias + dropout + residual) adds it in the same pass.

use candle_core::Tensor;
use nerpos_kernels::ops::matmul::{Epilogue, MatMul};
use nerpos_kernels::{Impl, Kernels};

use crate::error::Result;
use crate::params::{Param, Params, Role};
use crate::profile::timed;

pub struct Linear {
    pub weight: Param,
    pub bias: Param,
}

impl Linear {
    /// `name.weight` (out × inp, role `weight`) and `name.bias` (out, not decayed; in the head when
    /// the weight is).
    pub fn new(
        p: &mut Params,
        name: &str,
        (inp, out): (usize, usize),
        weight: Role,
    ) -> Result<Linear> {
        let bias = if weight.head {
            Role::BIAS.in_head()
        } else {
            Role::BIAS
        };
        Ok(Linear {
            weight: p.add(format!("{name}.weight"), (out, inp), weight)?,
            bias: p.add(format!("{name}.bias"), out, bias)?,
        })
    }

    /// x·Wᵀ for x (N, inp).
    pub fn matmul(&self, k: Kernels, x: &Tensor) -> Result<Tensor> {
        timed(MATMUL, || matmul_t(k, x, &self.weight.t(), Epilogue::None))
    }

    /// gelu(x·Wᵀ + bias) in one op (inference: nothing keeps x·Wᵀ + bias for a backward pass).
    pub fn bias_gelu(&self, k: Kernels, x: &Tensor) -> Result<Tensor> {
        let bias = self.bias.t();
        timed("fwd: matmul+bias+GELU", || {
            matmul_t(k, x, &self.weight.t(), Epilogue::BiasGelu(&bias))
        })
    }

    /// d(input) = dy·W.
    pub fn input_grad(&self, k: Kernels, dy: &Tensor) -> Result<Tensor> {
        timed(MATMUL, || product(k, dy, &self.weight.t(), Epilogue::None))
    }

    /// d(weight) = dyᵀ·x.
    pub fn weight_grad(k: Kernels, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
        timed(MATMUL, || product(k, &dy.t()?, x, Epilogue::None))
    }

    /// Its parameters in the order backward hands out their gradients (bias, then weight).
    pub fn params(&self) -> [&Param; 2] {
        [&self.bias, &self.weight]
    }
}

/// The profile's phase of the matrix products (with the bias, where one is added in the same op).
pub(crate) const MATMUL: &str = "fwd/bwd: matmul";

/// a·b then `epilogue`.
pub(crate) fn product(k: Kernels, a: &Tensor, b: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    Ok(MatMul::forward(k, a, b, epilogue)?)
}

/// y = x·wᵀ then `epilogue`, for x (N, in), w (out, in).
///
/// On the CPU, a weight much wider than tall (the FFN's output projection, 384 × 1536) is transposed
/// into a contiguous copy first: the gemm kernels read it 1.6× faster that way (measured: 124 against
/// 199 GFLOP/s at N = 860), far more than the copy costs.
pub(crate) fn matmul_t(k: Kernels, x: &Tensor, w: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    if k.pick(x) == Impl::Cpu && inp >= 2 * out {
        product(k, x, &w.t()?.contiguous()?, epilogue)
    } else {
        product(k, x, &w.t()?, epilogue)
    }
}
