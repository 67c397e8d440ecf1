//! Matrix products `a·b` of 2-D tensors of any strides, with what may follow them in the same call:
//! a bias, bias + GELU (inference, where nothing keeps the pre-activation for a backward pass), or a
//! matrix to add (a layer's two input gradients: on a GPU accumulated by cuBLAS, β = 1).
//!
//! On the CPU, gemm writes straight into a fresh buffer and the thread pool applies the bias (and
//! GELU) to it in place. candle's matmul zero-fills its output on the calling thread first, and a
//! separate bias or GELU op allocates and fills another buffer there too: measured with perf while
//! tagging on 2 cores, the calling thread's zero-filling and bias add were 12 % of all samples, time in
//! which the pool's threads waited.

use candle_core::{Device, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

pub(crate) mod bf16;

pub use bf16::PackedBf16;

use super::gelu::{BiasGelu, bias_gelu_in_place};
use crate::error::{KernelError, Result};
use crate::host::{read, read_strided, task_rows};
use crate::{Impl, Kernels};

/// What is applied to the product, row by row.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    None,
    /// `+ bias` (one value per column).
    Bias(&'a Tensor),
    /// `gelu(· + bias)`, the exact (erf) GELU.
    BiasGelu(&'a Tensor),
    /// `+ c`, a matrix of the product's shape.
    Add(&'a Tensor),
}

/// `a·b` then the epilogue.
pub struct MatMul;

impl MatMul {
    /// `a (m×k) · b (k×n)`, then `epilogue`.
    pub fn forward(k: Kernels, a: &Tensor, b: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        match k.pick(a) {
            Impl::Cpu => cpu_forward(a, b, epilogue),
            Impl::Cuda | Impl::Tensor => {
                let y = a.matmul(b)?;
                match epilogue {
                    Epilogue::None => Ok(y),
                    Epilogue::Bias(bias) => Ok(y.broadcast_add(bias)?),
                    Epilogue::BiasGelu(bias) => Ok(BiasGelu::forward(k, &y, bias)?.1),
                    Epilogue::Add(c) => Ok((y + c)?),
                }
            }
        }
    }

    /// `a·b + c`: the sum of a layer's two input gradients. Where our CUDA kernels run, cuBLAS
    /// accumulates the product into c's memory (β = 1) — no pass of its own for the sum, and c's old
    /// values are gone: `c` is taken, and no other handle on its memory may be read afterwards.
    /// Elsewhere (and for strided operands) the product, then the sum: on the CPU added by the thread
    /// pool, with the bits of candle's `a·b + c`.
    pub fn forward_add(k: Kernels, a: &Tensor, b: &Tensor, c: Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if k.pick(a) == Impl::Cuda && crate::cublas::add_product(a, b, &c)? {
            return Ok(c);
        }
        MatMul::forward(k, a, b, Epilogue::Add(&c))
    }
}

impl MatMul {
    /// `x (m×k) · wᵀ` then `epilogue` with bf16 inputs and f32 sums (`--precision bf16` on a CPU with
    /// AVX512-BF16: [`PackedBf16::supported`]); `x` a CPU f32 tensor.
    pub fn forward_bf16(x: &Tensor, w: &PackedBf16, epilogue: Epilogue) -> Result<Tensor> {
        bf16::forward(x, w, epilogue)
    }
}

fn cpu_forward(a: &Tensor, b: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    let ((m, inner), (inner_b, n)) = (a.dims2()?, b.dims2()?);
    if inner != inner_b {
        return Err(KernelError::Internal(format!(
            "matmul of {:?} by {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let mut y = product(a, b, (m, inner, n))?;
    match epilogue {
        Epilogue::None => {}
        Epilogue::Bias(bias) => read::<f32, _>(bias, |bias| add_bias(&mut y, bias))?,
        Epilogue::BiasGelu(bias) => read::<f32, _>(bias, |bias| bias_gelu_in_place(&mut y, bias))?,
        Epilogue::Add(c) => add_matrix(&mut y, c, (m, n))?,
    }
    Ok(Tensor::from_vec(y, (m, n), &Device::Cpu)?)
}

/// The product into a fresh buffer that gemm writes whole (never zero-filled).
fn product(a: &Tensor, b: &Tensor, (m, inner, n): (usize, usize, usize)) -> Result<Vec<f32>> {
    if inner == 0 || m == 0 || n == 0 {
        return Ok(vec![0f32; m * n]);
    }
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    read_strided(a, |a, [a_rs, a_cs]| {
        read_strided(b, |b, [b_rs, b_cs]| {
            let a_last = (m - 1) * a_rs + (inner - 1) * a_cs;
            let b_last = (inner - 1) * b_rs + (n - 1) * b_cs;
            if a_last >= a.len() || b_last >= b.len() {
                return Err(KernelError::Internal(
                    "matmul operands out of their storage".into(),
                ));
            }
            // SAFETY: the operands' last elements lie inside their storage (checked above); `y` has
            // room for m·n values and overlaps neither; with `read_dst` false gemm writes every one of
            // them (m, n, inner > 0) without reading them, so all are initialised before `set_len`.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    inner,
                    y.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    a_cs as isize,
                    a_rs as isize,
                    b.as_ptr(),
                    b_cs as isize,
                    b_rs as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
                y.set_len(m * n);
            }
            Ok(())
        })?
    })??;
    Ok(y)
}

/// `y` (m × n) plus `c`, element by element, by the thread pool.
fn add_matrix(y: &mut [f32], c: &Tensor, (m, n): (usize, usize)) -> Result<()> {
    if c.dims2()? != (m, n) {
        return Err(KernelError::Internal(format!(
            "adding a {:?} matrix to a {m}×{n} product",
            c.dims()
        )));
    }
    read::<f32, _>(c, |c| {
        let chunk = task_rows(n.max(1)) * n.max(1);
        // A chunk of c is a "bias" as wide as the chunk: the bias kernel adds it element by element.
        y.par_chunks_mut(chunk)
            .zip(c.par_chunks(chunk))
            .for_each(|(y, c)| add_bias_rows(y, c));
    })
}

/// Rows of `y` plus `bias`, by the thread pool.
fn add_bias(y: &mut [f32], bias: &[f32]) {
    let width = bias.len().max(1);
    y.par_chunks_mut(task_rows(width) * width)
        .for_each(|c| add_bias_rows(c, bias));
}

/// Rows of `y` (width `bias.len()`) plus `bias`, on this thread.
#[inline(always)]
fn add_bias_kernel(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_mut(bias.len().max(1)) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

crate::host::dispatch!(add_bias_rows, add_bias_rows_at, add_bias_kernel, (y: &mut [f32], bias: &[f32]));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu;
    use crate::ops::testing::{cpu, flat, random, rng};

    /// Every layout the engine multiplies (plain, a transposed weight, a transposed activation)
    /// and every epilogue, against candle's matmul + tensor ops.
    #[test]
    fn cpu_products_match_the_reference() {
        let mut r = rng(5);
        let (m, inner, n) = (37, 50, 29);
        let a = cpu(&random(&mut r, m * inner, 1.0), &[m, inner]);
        let b = cpu(&random(&mut r, inner * n, 1.0), &[inner, n]);
        let bt = cpu(&random(&mut r, n * inner, 1.0), &[n, inner]);
        let at = cpu(&random(&mut r, inner * m, 1.0), &[inner, m]);
        let bias = cpu(&random(&mut r, n, 1.0), &[n]);
        let other = cpu(&random(&mut r, 20 * n, 1.0), &[20, n]);
        let cases = [
            (a.clone(), b.clone()),
            (a.clone(), bt.t().unwrap()),
            (at.t().unwrap(), b.clone()),
            (a.narrow(0, 3, 20).unwrap(), b.narrow(1, 4, 20).unwrap()),
        ];
        for (x, w) in &cases {
            for e in [
                Epilogue::None,
                Epilogue::Bias(&bias),
                Epilogue::BiasGelu(&bias),
                Epilogue::Add(&other),
            ] {
                let fits = match e {
                    Epilogue::None => true,
                    Epilogue::Add(c) => c.dims() == [x.dim(0).unwrap(), w.dim(1).unwrap()],
                    _ => w.dim(1).unwrap() == n,
                };
                if fits {
                    let ours = MatMul::forward(Kernels::CpuOnly, x, w, e).unwrap();
                    let want = MatMul::forward(Kernels::Reference, x, w, e).unwrap();
                    emu::close(&format!("{e:?}"), &flat(&ours), &flat(&want), 2e-6);
                }
            }
        }
    }

    /// On the CPU `a·b + c` has the bits of the product followed by candle's sum (training on the CPU
    /// gives the numbers it gave before the sum joined the product).
    #[test]
    fn cpu_product_plus_a_matrix_is_the_product_then_the_sum() {
        let mut r = rng(8);
        let (m, inner, n) = (61, 48, 33);
        let a = cpu(&random(&mut r, m * inner, 1.0), &[m, inner]);
        let w = cpu(&random(&mut r, n * inner, 1.0), &[n, inner]);
        let c = cpu(&random(&mut r, m * n, 1.0), &[m, n]);
        let k = Kernels::CpuOnly;
        let summed = MatMul::forward_add(k, &a, &w.t().unwrap(), c.clone()).unwrap();
        let product = MatMul::forward(k, &a, &w.t().unwrap(), Epilogue::None).unwrap();
        let want = (product + &c).unwrap();
        let bits = |t: &Tensor| flat(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&summed), bits(&want));
        let wrong = cpu(&random(&mut r, n, 1.0), &[1, n]);
        assert!(MatMul::forward_add(k, &a, &w.t().unwrap(), wrong).is_err());
    }
}
