//! A linear layer's weight and bias. Its product runs without the bias: the fused op that follows
//! (bias + GELU, bias + dropout + residual) adds it in the same pass.

use candle_core::Tensor;
use nerpos_kernels::ops::matmul::{Epilogue, MatMul, PackedBf16};
use nerpos_kernels::{Impl, Kernels};

use crate::error::Result;
use crate::params::{Param, Params, Role};
use crate::profile::timed;

pub struct Linear {
    pub weight: Param,
    pub bias: Param,
    /// The weight rounded to bf16 for the CPU's bf16 products (inference with `--precision bf16`):
    /// set by [`pack_bf16`](Self::pack_bf16), then used by `matmul` and `bias_gelu`.
    packed: Option<PackedBf16>,
}

impl Linear {
    /// `name.weight` (out × inp, role `weight`) and `name.bias` (out, not decayed; in the head and
    /// in a probe when the weight is).
    pub fn new(
        p: &mut Params,
        name: &str,
        (inp, out): (usize, usize),
        weight: Role,
    ) -> Result<Linear> {
        let bias = Role {
            head: weight.head,
            probe: weight.probe,
            ..Role::BIAS
        };
        Ok(Linear {
            weight: p.add(format!("{name}.weight"), (out, inp), weight)?,
            bias: p.add(format!("{name}.bias"), out, bias)?,
            packed: None,
        })
    }

    /// From now on the forward products on the CPU take bf16 inputs (the weight as it is now, rounded
    /// once; the activation rounded per call) and sum in f32. Inference only: the packed weight does
    /// not follow later updates.
    pub fn pack_bf16(&mut self) -> Result<()> {
        self.packed = Some(PackedBf16::new(&self.weight.t())?);
        Ok(())
    }

    /// x·Wᵀ for x (N, inp).
    pub fn matmul(&self, k: Kernels, x: &Tensor) -> Result<Tensor> {
        timed(MATMUL, || self.forward(k, x, Epilogue::None))
    }

    /// gelu(x·Wᵀ + bias) in one op (inference: nothing keeps x·Wᵀ + bias for a backward pass).
    pub fn bias_gelu(&self, k: Kernels, x: &Tensor) -> Result<Tensor> {
        let bias = self.bias.t();
        timed("fwd: matmul+bias+GELU", || {
            self.forward(k, x, Epilogue::BiasGelu(&bias))
        })
    }

    /// x·Wᵀ then `epilogue`: in bf16 where the weight is packed for it and `x` is on the CPU.
    fn forward(&self, k: Kernels, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        match packed_for(k, x, self.packed.as_ref()) {
            Some(w) => bf16_product(x, w, epilogue),
            None => matmul_t(k, x, &self.weight.t(), epilogue),
        }
    }

    /// d(input) = dy·W.
    pub fn input_grad(&self, k: Kernels, dy: &Tensor) -> Result<Tensor> {
        timed(MATMUL, || product(k, dy, &self.weight.t(), Epilogue::None))
    }

    /// d(input) = dy·W + `other`, the input's gradient by another path (taken: see
    /// [`product_add`]).
    pub fn input_grad_add(&self, k: Kernels, dy: &Tensor, other: Tensor) -> Result<Tensor> {
        timed(MATMUL, || product_add(k, dy, &self.weight.t(), other))
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

/// a·b + c, c taken: on a GPU the product is accumulated into c's memory (the sum of two gradients
/// without a pass of its own), so c must be a tensor nothing else reads afterwards.
pub(crate) fn product_add(k: Kernels, a: &Tensor, b: &Tensor, c: Tensor) -> Result<Tensor> {
    Ok(MatMul::forward_add(k, a, b, c)?)
}

/// `packed` where the CPU kernels run on `x` (the bf16 products are a CPU kernel), else none.
pub(crate) fn packed_for<'a>(
    k: Kernels,
    x: &Tensor,
    packed: Option<&'a PackedBf16>,
) -> Option<&'a PackedBf16> {
    packed.filter(|_| k.pick(x) == Impl::Cpu)
}

/// x·wᵀ then `epilogue` with the bf16 weight `w`.
pub(crate) fn bf16_product(x: &Tensor, w: &PackedBf16, epilogue: Epilogue) -> Result<Tensor> {
    Ok(MatMul::forward_bf16(x, w, epilogue)?)
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
