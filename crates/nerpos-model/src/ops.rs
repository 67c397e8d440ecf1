//! Row-wise CPU kernels and their generic counterparts: LayerNorm forward and backward, column sums,
//! the exact GELU and softmax on slices (vectorised), and the masked softmax of the padded attention
//! path. Written with candle's elementary ops each of these is 5–10 passes over memory; here one,
//! row by row in parallel. On other devices and dtypes the same formulas run in tensor ops (in f32).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous f32 tensor"),
    }
}

/// Rows per parallel task: enough work per task to amortise scheduling.
fn rows_per_task(rows: usize, width: usize) -> usize {
    (16_384 / width.max(1)).clamp(1, rows.max(1))
}

/// Runs `f` compiled for AVX-512 when the CPU has it (the kernels are the same code; the compiler
/// vectorises them wider), else for the baseline.
macro_rules! dispatch {
    ($name:ident, $kernel:ident, ($($arg:ident : $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn wide($($arg: $ty),*) {
                    $kernel($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU was just found to support every feature `wide` is compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            $kernel($($arg),*)
        }
    };
}

/// Σ x with 16 running sums: the compiler vectorises it (one running sum is a chain of dependent
/// additions it may not reorder).
#[inline(always)]
fn sum16(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ a·b, vectorised as [`sum16`].
#[inline(always)]
pub(crate) fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

// ---------------------------------------------------------------------------------------------------
// LayerNorm

struct LayerNormOp {
    eps: f32,
}

/// `centered` = x − mean(x); returns 1/std (two passes, as PyTorch: no cancellation).
#[inline(always)]
fn center(x: &[f32], centered: &mut [f32], eps: f32) -> f32 {
    let n = x.len() as f32;
    let mean = sum16(x) / n;
    for (c, &v) in centered.iter_mut().zip(x) {
        *c = v - mean;
    }
    1.0 / (dot16(centered, centered) / n + eps).sqrt()
}

#[inline(always)]
fn ln_fwd_kernel(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], eps: f32) {
    let h = w.len();
    for (yr, xr) in y.chunks_mut(h).zip(x.chunks(h)) {
        let rstd = center(xr, yr, eps);
        for i in 0..h {
            yr[i] = yr[i] * rstd * w[i] + b[i];
        }
    }
}

/// Rows of dx, and the rows' contributions to dweight (`acc[..h]`) and dbias (`acc[h..]`).
#[inline(always)]
fn ln_bwd_kernel(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    dx: &mut [f32],
    acc: &mut [f32],
    xhat: &mut [f32],
    eps: f32,
) {
    let h = w.len();
    let n = h as f32;
    for ((dxr, xr), gr) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
        let rstd = center(xr, xhat, eps);
        for i in 0..h {
            xhat[i] *= rstd;
            dxr[i] = gr[i] * w[i];
        }
        let (m1, m2) = (sum16(dxr) / n, dot16(dxr, xhat) / n);
        for i in 0..h {
            dxr[i] = rstd * (dxr[i] - m1 - xhat[i] * m2);
            acc[i] += gr[i] * xhat[i];
            acc[h + i] += gr[i];
        }
    }
}

dispatch!(ln_fwd, ln_fwd_kernel, (x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], eps: f32));
dispatch!(ln_bwd, ln_bwd_kernel, (x: &[f32], w: &[f32], g: &[f32], dx: &mut [f32], acc: &mut [f32], xhat: &mut [f32], eps: f32));

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "nerpos-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            slice(s1, l1, "layer norm x")?,
            slice(s2, l2, "layer norm weight")?,
            slice(s3, l3, "layer norm bias")?,
        );
        let h = w.len();
        let mut y = vec![0f32; x.len()];
        let chunk = rows_per_task(x.len() / h, h) * h;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(yc, xc)| ln_fwd(xc, w, b, yc, self.eps));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

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
        crate::cuda::layer_norm_fwd(self.eps, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// Gradients of LayerNorm packed in one (rows + 2, H) tensor: dx, then dweight, then dbias.
struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "nerpos-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, g) = (
            slice(s1, l1, "x")?,
            slice(s2, l2, "weight")?,
            slice(s3, l3, "grad")?,
        );
        let h = w.len();
        let rows = x.len() / h;
        let mut out = vec![0f32; (rows + 2) * h];
        let (dx, dwb) = out.split_at_mut(rows * h);
        let chunk = rows_per_task(rows, h) * h;
        // Each task: dx for its rows, and its partial sums of dweight and dbias.
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .map(|(dxc, (xc, gc))| {
                let mut acc = vec![0f32; 2 * h];
                let mut xhat = vec![0f32; h];
                ln_bwd(xc, w, gc, dxc, &mut acc, &mut xhat, self.eps);
                acc
            })
            .collect();
        for p in partials {
            dwb.iter_mut().zip(&p).for_each(|(d, s)| *d += s);
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, h))))
    }

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
        crate::cuda::layer_norm_bwd(self.eps, (s1, l1), (s2, l2), (s3, l3))
    }
}

// ---------------------------------------------------------------------------------------------------
// GELU (exact, erf-based: Hugging Face's "gelu").
//
// libm's erff is accurate but scalar; these approximations are branch-free arithmetic the compiler
// vectorises (AVX-512 where the CPU has it): exp by range reduction (x = n·ln2 + r) and a degree-6
// polynomial (relative error < 3e-7 in f32), erf by Abramowitz & Stegun 7.1.26 (absolute error
// 1.5e-7 in exact arithmetic, < 5e-7 in f32).

const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// e^x for x in [-87, 0] (all the kernels below need).
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    // Cody–Waite: ln 2 split in a part exact in few bits and a correction, so r keeps its precision.
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p: f32 = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p.mul_add(r, c);
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// erf(x) and, sharing the exponential, e^(−x²).
#[inline(always)]
fn erf_and_gauss(x: f32) -> (f32, f32) {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut poly = 1.061_405_4f32;
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        poly = poly.mul_add(t, c);
    }
    let g = exp_neg(-a * a);
    ((1.0 - poly * t * g).copysign(x), g)
}

#[inline(always)]
fn gelu_fwd_kernel(x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        let (erf, _) = erf_and_gauss(v * SQRT_HALF);
        *o = 0.5 * v * (1.0 + erf);
    }
}

#[inline(always)]
fn gelu_bwd_kernel(x: &[f32], g: &[f32], d: &mut [f32]) {
    for ((o, &v), &gv) in d.iter_mut().zip(x).zip(g) {
        // e^(−(v/√2)²) = e^(−v²/2): the normal density up to 1/√(2π).
        let (erf, gauss) = erf_and_gauss(v * SQRT_HALF);
        *o = gv * (0.5 * (1.0 + erf) + v * INV_SQRT_2PI * gauss);
    }
}

dispatch!(gelu_fwd, gelu_fwd_kernel, (x: &[f32], y: &mut [f32]));
dispatch!(gelu_bwd, gelu_bwd_kernel, (x: &[f32], g: &[f32], d: &mut [f32]));

/// GELU of a slice (vectorised where the CPU allows).
pub(crate) fn gelu_slice(x: &[f32], y: &mut [f32]) {
    gelu_fwd(x, y)
}

/// GELU's backward on a slice: d = g ⊙ gelu'(x).
pub(crate) fn gelu_bwd_slice(x: &[f32], g: &[f32], d: &mut [f32]) {
    gelu_bwd(x, g, d)
}

#[inline(always)]
fn softmax_kernel(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in row.iter_mut() {
        *v = exp_neg(*v - max);
    }
    let inv = 1.0 / sum16(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

dispatch!(softmax_dispatch, softmax_kernel, (row: &mut [f32]));

/// Softmax of one row, in place (vectorised where the CPU allows).
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    softmax_dispatch(row)
}

// ---------------------------------------------------------------------------------------------------
// Explicit forward/backward helpers for the hand-written training pass (`train`): fused kernels on
// CPU f32, the same formulas in tensor ops elsewhere. None of these record autograd nodes.

fn is_fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// `x` in f32. The generic paths below compute normalisations and reductions in f32 whatever the
/// compute dtype, and hand back results in the input's dtype — what PyTorch's autocast does for
/// LayerNorm, softmax and sums under bf16.
fn f32(x: &Tensor) -> candle_core::Result<Tensor> {
    x.to_dtype(candle_core::DType::F32)
}

/// LayerNorm forward without autograd.
pub fn layer_norm_fwd(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if crate::device_ops::applies(x) {
        let (w, b) = (w.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
        return x.contiguous()?.apply_op3_no_bwd(
            &w.contiguous()?,
            &b.contiguous()?,
            &LayerNormOp { eps: eps as f32 },
        );
    }
    if is_fused(x) {
        return x
            .contiguous()?
            .apply_op3_no_bwd(w, b, &LayerNormOp { eps: eps as f32 });
    }
    let dtype = x.dtype();
    let x = f32(x)?;
    let mean = x.mean_keepdim(candle_core::D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(&f32(w)?)?
        .broadcast_add(&f32(b)?)?
        .to_dtype(dtype)
}

/// LayerNorm backward: (dx, dweight, dbias) for x (N, H).
pub fn layer_norm_bwd(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (rows, h) = x.dims2()?;
    if is_fused(x) || crate::device_ops::applies(x) {
        let (w, dy) = (w.to_dtype(x.dtype())?, dy.to_dtype(x.dtype())?);
        let packed = x.contiguous()?.apply_op3_no_bwd(
            &w.contiguous()?,
            &dy.contiguous()?,
            &LayerNormBwd { eps: eps as f32 },
        )?;
        return Ok((
            packed.narrow(0, 0, rows)?,
            packed.narrow(0, rows, 1)?.reshape(h)?,
            packed.narrow(0, rows + 1, 1)?.reshape(h)?,
        ));
    }
    let dtype = x.dtype();
    let (x, w, dy) = (f32(x)?, f32(w)?, f32(dy)?);
    let mean = x.mean_keepdim(1)?;
    let centered = x.broadcast_sub(&mean)?;
    let rstd = (centered.sqr()?.mean_keepdim(1)? + eps)?.sqrt()?.recip()?;
    let xhat = centered.broadcast_mul(&rstd)?;
    let dxhat = dy.broadcast_mul(&w)?;
    let m1 = dxhat.mean_keepdim(1)?;
    let m2 = (&dxhat * &xhat)?.mean_keepdim(1)?;
    let dx = dxhat
        .broadcast_sub(&m1)?
        .sub(&xhat.broadcast_mul(&m2)?)?
        .broadcast_mul(&rstd)?;
    Ok((
        dx.to_dtype(dtype)?,
        (&dy * &xhat)?.sum(0)?.to_dtype(dtype)?,
        dy.sum(0)?.to_dtype(dtype)?,
    ))
}

/// Attention probabilities of padded scores (B, heads, T, T): softmax(scores·scale + bias) with bias
/// (B, T) 0 on tokens and a large negative number on padding; in f32, returned in the scores' dtype.
pub fn masked_softmax_fwd(
    scores: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let z = (f32(scores)? * scale)?.broadcast_add(&f32(bias)?.unsqueeze(1)?.unsqueeze(1)?)?;
    let max = z.max_keepdim(candle_core::D::Minus1)?;
    let e = z.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)?
        .to_dtype(scores.dtype())
}

/// d(scores) from the probabilities `p` and their gradient `dp`.
pub fn masked_softmax_bwd(p: &Tensor, dp: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let dtype = p.dtype();
    let (p, dp) = (f32(p)?, f32(dp)?);
    let dot = (&p * &dp)?.sum_keepdim(candle_core::D::Minus1)?;
    ((p * dp.broadcast_sub(&dot)?)? * scale)?.to_dtype(dtype)
}

/// GELU backward: dy · (Φ(x) + x·φ(x)) (the generic path; the CPU kernel is `gelu_bwd_slice`).
pub fn gelu_bwd_t(x: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
    let cdf = ((x * SQRT_HALF as f64)?.erf()? + 1.0)? * 0.5;
    let pdf = ((x.sqr()? * -0.5)?.exp()? * INV_SQRT_2PI as f64)?;
    dy * (cdf? + (x * pdf)?)?
}

struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "nerpos-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "column sum input")?;
        let h = *l.shape().dims().last().unwrap_or(&1);
        let rows = x.len() / h;
        let chunk = rows_per_task(rows, h) * h;
        let partials: Vec<Vec<f32>> = x
            .par_chunks(chunk)
            .map(|c| {
                let mut acc = vec![0f32; h];
                for r in c.chunks(h) {
                    acc.iter_mut().zip(r).for_each(|(a, v)| *a += v);
                }
                acc
            })
            .collect();
        let mut out = vec![0f32; h];
        for p in partials {
            out.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
        }
        Ok((CpuStorage::F32(out), Shape::from(h)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::column_sum(s, l)
    }
}

/// Sum over the rows of an (N, H) tensor: the gradient of a bias broadcast over rows.
pub fn column_sum(x: &Tensor) -> candle_core::Result<Tensor> {
    if is_fused(x) || crate::device_ops::applies(x) {
        return x.contiguous()?.apply_op1_no_bwd(&ColumnSum);
    }
    f32(x)?.sum(0)?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_erf_are_accurate() {
        for i in 0..=20_000 {
            let x = -87.0 + 87.0 * i as f32 / 20_000.0;
            let (ours, exact) = (exp_neg(x) as f64, (x as f64).exp());
            assert!(
                (ours - exact).abs() <= 3e-7 * exact,
                "exp({x}): {ours} vs {exact}"
            );
        }
        for i in -20_000..=20_000 {
            let x = i as f32 / 2_000.0;
            let (ours, _) = erf_and_gauss(x);
            let exact = libm::erf(x as f64);
            assert!(
                (ours as f64 - exact).abs() < 5e-7,
                "erf({x}): {ours} vs {exact}"
            );
        }
    }

    #[test]
    fn gelu_kernels_match_the_definition() {
        let x: Vec<f32> = (-400..=400).map(|i| i as f32 / 50.0).collect();
        let mut y = vec![0f32; x.len()];
        gelu_fwd(&x, &mut y);
        let g = vec![1f32; x.len()];
        let mut d = vec![0f32; x.len()];
        gelu_bwd(&x, &g, &mut d);
        for ((&v, &yv), &dv) in x.iter().zip(&y).zip(&d) {
            let v64 = v as f64;
            let cdf = 0.5 * (1.0 + libm::erf(v64 / 2f64.sqrt()));
            let pdf = (-0.5 * v64 * v64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!(
                (yv as f64 - v64 * cdf).abs() < 1e-6 * (1.0 + v64.abs()),
                "gelu({v})"
            );
            assert!(
                (dv as f64 - (cdf + v64 * pdf)).abs() < 1e-6 * (1.0 + v64.abs()),
                "gelu'({v})"
            );
        }
    }
}
