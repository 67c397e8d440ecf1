//! Bias + GELU (the exact, erf form: Hugging Face's "gelu") of the feed-forward layer, and its backward
//! with the bias gradient: one pass over memory each.

use candle_core::Tensor;
use rayon::prelude::*;

use super::column_sum;
use super::math::{INV_SQRT_2PI, SQRT_HALF, erf_and_gauss};
use crate::error::Result;
use crate::host::{TASK, dispatch, read, sum_partials, task_rows, tensor, zeros};
use crate::launch::{self, Elem, Exec, Launch, Ptr, int};
use crate::{Impl, Kernels, on_gpu};

/// u = y + bias, g = gelu(u), and backward du = dg ⊙ gelu'(u) with dbias = Σ_rows du.
pub struct BiasGelu;

impl BiasGelu {
    /// (u, gelu(u)) for u = y + bias, y (N, I).
    pub fn forward(k: Kernels, y: &Tensor, bias: &Tensor) -> Result<(Tensor, Tensor)> {
        match k.pick(y) {
            Impl::Cpu => cpu_forward(y, bias),
            Impl::Cuda => gpu_forward(y, &bias.to_dtype(y.dtype())?),
            Impl::Tensor => {
                let u = y.broadcast_add(bias)?;
                let g = u.gelu_erf()?;
                Ok((u, g))
            }
        }
    }

    /// (du, dbias) from u and d(gelu(u)).
    pub fn backward(k: Kernels, u: &Tensor, dg: &Tensor) -> Result<(Tensor, Tensor)> {
        match k.pick(u) {
            Impl::Cpu => cpu_backward(u, dg),
            Impl::Cuda => column_sum::gpu_pass("gelu_bwd_cols", u, Some(dg)),
            Impl::Tensor => {
                let du = reference_backward(u, dg)?;
                let db = du.sum(0)?;
                Ok((du, db))
            }
        }
    }
}

/// GELU's backward in tensor ops: dg · (Φ(u) + u·φ(u)).
pub fn reference_backward(u: &Tensor, dg: &Tensor) -> Result<Tensor> {
    let cdf = ((u * f64::from(SQRT_HALF))?.erf()? + 1.0)? * 0.5;
    let pdf = ((u.sqr()? * -0.5)?.exp()? * f64::from(INV_SQRT_2PI))?;
    Ok((dg * (cdf? + (u * pdf)?)?)?)
}

fn cpu_forward(y: &Tensor, bias: &Tensor) -> Result<(Tensor, Tensor)> {
    let width = bias.dim(0)?;
    let n = y.elem_count();
    let mut u = zeros(n);
    let mut g = zeros(n);
    read::<f32, _>(y, |y| {
        read::<f32, _>(bias, |b| {
            let chunk = (TASK / width).max(1) * width;
            u.par_chunks_mut(chunk)
                .zip(g.par_chunks_mut(chunk))
                .zip(y.par_chunks(chunk))
                .for_each(|((uc, gc), yc)| {
                    for (ur, yr) in uc.chunks_mut(width).zip(yc.chunks(width)) {
                        for ((o, &v), &bv) in ur.iter_mut().zip(yr).zip(b) {
                            *o = v + bv;
                        }
                    }
                    gelu_fwd(uc, gc);
                });
        })
    })??;
    Ok((tensor(u, y.shape())?, tensor(g, y.shape())?))
}

fn cpu_backward(u: &Tensor, dg: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, width) = u.dims2()?;
    let mut du = zeros(n * width);
    let rows = (TASK / width).max(1);
    let partials: Vec<Vec<f32>> = read::<f32, _>(u, |u| {
        read::<f32, _>(dg, |g| {
            du.par_chunks_mut(rows * width)
                .zip(u.par_chunks(rows * width).zip(g.par_chunks(rows * width)))
                .map(|(dc, (uc, gc))| {
                    gelu_bwd(uc, gc, dc);
                    let mut acc = vec![0f32; width];
                    for r in dc.chunks(width) {
                        acc.iter_mut().zip(r).for_each(|(a, v)| *a += v);
                    }
                    acc
                })
                .collect()
        })
    })??;
    Ok((
        tensor(du, (n, width))?,
        tensor(sum_partials(partials, width), width)?,
    ))
}

fn gpu_forward(y: &Tensor, bias: &Tensor) -> Result<(Tensor, Tensor)> {
    let (rows, width) = y.dims2()?;
    let n = rows * width;
    let s = Elem::of(y.dtype())?;
    let out = on_gpu(&[Some(y), Some(bias)], &[(y.dtype(), 2 * n)], |e, i, o| {
        forward_launches(e, s, [i[0], i[1], o[0]], n, width)
    })?;
    let both = out[0].reshape((2 * rows, width))?;
    Ok((both.narrow(0, 0, rows)?, both.narrow(0, rows, rows)?))
}

/// `out` = [u (n); gelu(u) (n)] for `[y, bias, out]`.
pub(crate) fn forward_launches(
    e: &mut dyn Exec,
    s: Elem,
    [y, bias, out]: [Ptr; 3],
    n: usize,
    width: usize,
) -> Result<()> {
    let (grid, block) = launch::per_element(n);
    e.launch(
        Launch::new(s.kernel("bias_gelu"), grid, block)
            .arg(y)
            .arg(bias)
            .arg(out)
            .arg(n as u64)
            .arg(int(width, "width")?),
    )
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

/// Rows of `y` (width `bias.len()`) replaced by gelu(row + bias).
#[inline(always)]
fn bias_gelu_in_place_kernel(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            let u = *v + b;
            let (erf, _) = erf_and_gauss(u * SQRT_HALF);
            *v = 0.5 * u * (1.0 + erf);
        }
    }
}

dispatch!(gelu_fwd, gelu_fwd_at, gelu_fwd_kernel, (x: &[f32], y: &mut [f32]));
dispatch!(bias_gelu_in_place_rows, bias_gelu_in_place_at, bias_gelu_in_place_kernel, (y: &mut [f32], bias: &[f32]));

/// gelu(y + bias) in place over whole rows of `y`, by the thread pool: the forward when nothing
/// keeps u for a backward pass (inference), on a product that is still the caller's own buffer.
pub(crate) fn bias_gelu_in_place(y: &mut [f32], bias: &[f32]) {
    let width = bias.len().max(1);
    y.par_chunks_mut(task_rows(width) * width)
        .for_each(|c| bias_gelu_in_place_rows(c, bias));
}
dispatch!(gelu_bwd, gelu_bwd_at, gelu_bwd_kernel, (x: &[f32], g: &[f32], d: &mut [f32]));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::{self, EmuExec, HostBuf};
    use crate::ops::testing::{cpu, flat, random, rng};

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

    #[test]
    fn cpu_kernels_match_the_reference() {
        let mut r = rng(3);
        let (rows, width) = (40, 96);
        let (y, b, dg) = (
            cpu(&random(&mut r, rows * width, 3.0), &[rows, width]),
            cpu(&random(&mut r, width, 1.0), &[width]),
            cpu(&random(&mut r, rows * width, 1.0), &[rows, width]),
        );
        let (u, g) = BiasGelu::forward(Kernels::CpuOnly, &y, &b).unwrap();
        let (ru, rg) = BiasGelu::forward(Kernels::Reference, &y, &b).unwrap();
        emu::close("u", &flat(&u), &flat(&ru), 1e-6);
        emu::close("gelu", &flat(&g), &flat(&rg), 2e-6);
        let (du, db) = BiasGelu::backward(Kernels::CpuOnly, &u, &dg).unwrap();
        let (rdu, rdb) = BiasGelu::backward(Kernels::Reference, &u, &dg).unwrap();
        emu::close("du", &flat(&du), &flat(&rdu), 2e-6);
        emu::close("dbias", &flat(&db), &flat(&rdb), 1e-5);
    }

    /// The launches on the emulator against the CPU kernels (130 × 300: chunk and block boundaries).
    #[test]
    fn emulated_launches_match_the_cpu_kernels() {
        let Some(lib) = emu::emulator("gelu::tests::emulated_launches_match_the_cpu_kernels")
        else {
            return;
        };
        let mut r = rng(2);
        let (rows, width) = (130, 300);
        let n = rows * width;
        let (y, b, dg) = (
            random(&mut r, n, 3.0),
            random(&mut r, width, 1.0),
            random(&mut r, n, 1.0),
        );
        let (u, g) = cpu_forward(&cpu(&y, &[rows, width]), &cpu(&b, &[width])).unwrap();
        let mut out = HostBuf::zeros(Elem::F32, 2 * n);
        let ptrs = [emu::ptr(&y), emu::ptr(&b), out.ptr_mut()];
        forward_launches(&mut EmuExec::new(lib), Elem::F32, ptrs, n, width).unwrap();
        let out = out.values();
        emu::close("bias + GELU: u", &out[..n], &flat(&u), 1e-6);
        emu::close("bias + GELU: gelu(u)", &out[n..], &flat(&g), 2e-6);

        let (du, db) = cpu_backward(&u, &cpu(&dg, &[rows, width])).unwrap();
        let uv = flat(&u);
        let mut out = HostBuf::zeros(Elem::F32, n + width);
        let ptrs = [emu::ptr(&uv), emu::ptr(&dg), out.ptr_mut()];
        let mut e = EmuExec::new(lib);
        column_sum::pass_launches(&mut e, Elem::F32, "gelu_bwd_cols", ptrs, rows, width).unwrap();
        let out = out.values();
        emu::close("GELU backward: du", &out[..n], &flat(&du), 2e-6);
        emu::close("GELU backward: dbias", &out[n..], &flat(&db), 1e-5);
    }
}
