//! Dropout with what surrounds it: bias + dropout + residual (after each projection of a BERT layer),
//! its backward (the gradient through dropout with the bias gradient), and a mask applied alone.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::column_sum;
use crate::error::Result;
use crate::host::{TASK, read, sum_partials, task_rows, tensor, zeros};
use crate::launch::{self, Elem, Exec, Launch, Ptr, int};
use crate::{Impl, Kernels, on_gpu};

/// A dropout keep-mask: bytes (1 = keep) for the CPU kernels; elsewhere the keep values already
/// scaled by 1/(1−p), in the masked tensor's dtype.
#[derive(Debug, Clone)]
pub struct Mask {
    pub tensor: Tensor,
    pub p: f64,
}

impl Mask {
    fn scale(&self) -> f32 {
        (1.0 / (1.0 - self.p)) as f32
    }

    fn is_bytes(&self) -> bool {
        self.tensor.dtype() == DType::U8
    }
}

/// x ⊙ mask (scaled), or x without a mask.
pub fn masked(x: &Tensor, mask: Option<&Mask>) -> Result<Tensor> {
    match mask {
        Some(m) if x.device().is_cpu() && x.dtype() == DType::F32 && m.is_bytes() => {
            let scale = m.scale();
            let mut out = zeros(x.elem_count());
            read::<f32, _>(x, |x| {
                read::<u8, _>(&m.tensor, |m| {
                    out.par_chunks_mut(TASK)
                        .zip(x.par_chunks(TASK).zip(m.par_chunks(TASK)))
                        .for_each(|(o, (x, m))| mask_span(x, m, scale, o));
                })
            })??;
            tensor(out, x.shape())
        }
        _ => apply(x, mask),
    }
}

/// A mask applied in tensor ops (any device, either form).
fn apply(x: &Tensor, mask: Option<&Mask>) -> Result<Tensor> {
    Ok(match mask {
        None => x.clone(),
        Some(m) if m.is_bytes() => (x * (m.tensor.to_dtype(x.dtype())? * f64::from(m.scale()))?)?,
        Some(m) => (x * &m.tensor)?,
    })
}

/// z = dropout(y + bias) + residual, and backward dy = dz ⊙ mask with dbias = Σ_rows dy.
pub struct BiasDropoutResidual;

impl BiasDropoutResidual {
    /// z for y and residual (N, H), bias (H).
    pub fn forward(
        k: Kernels,
        y: &Tensor,
        bias: &Tensor,
        mask: Option<&Mask>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        match (k.pick(y), gpu_form(y, mask)) {
            (Impl::Cpu, _) => cpu_forward(y, bias, mask, residual),
            (Impl::Cuda, Some(m)) => gpu_forward(y, bias, m, residual),
            _ => Ok((apply(&y.broadcast_add(bias)?, mask)? + residual)?),
        }
    }

    /// (dy, dbias) for dy = dz ⊙ mask.
    pub fn backward(k: Kernels, dz: &Tensor, mask: Option<&Mask>) -> Result<(Tensor, Tensor)> {
        match (k.pick(dz), gpu_form(dz, mask)) {
            (Impl::Cpu, _) => cpu_backward(dz, mask),
            (Impl::Cuda, Some(m)) => column_sum::gpu_pass("dropout_bwd_cols", dz, m),
            _ => {
                let dy = apply(dz, mask)?;
                let db = dy.sum(0)?;
                Ok((dy, db))
            }
        }
    }
}

/// The mask as the CUDA kernels take it (scaled, `x`'s dtype): `Some(None)` without a mask, `None`
/// when it is in another form (then the tensor ops run).
fn gpu_form<'a>(x: &Tensor, mask: Option<&'a Mask>) -> Option<Option<&'a Tensor>> {
    match mask {
        None => Some(None),
        Some(m) if m.tensor.dtype() == x.dtype() => Some(Some(&m.tensor)),
        Some(_) => None,
    }
}

fn cpu_forward(
    y: &Tensor,
    bias: &Tensor,
    mask: Option<&Mask>,
    residual: &Tensor,
) -> Result<Tensor> {
    let h = bias.dim(0)?;
    let scale = mask.map_or(1.0, Mask::scale);
    let chunk = task_rows(h) * h;
    let mut z = zeros(y.elem_count());
    let body = |y: &[f32], b: &[f32], r: &[f32], m: Option<&[u8]>, z: &mut [f32]| {
        z.par_chunks_mut(chunk).enumerate().for_each(|(c, zc)| {
            let span = c * chunk..c * chunk + zc.len();
            let m = m.map(|m| (&m[span.clone()], scale));
            residual_rows(&y[span.clone()], b, &r[span], m, zc);
        });
    };
    read::<f32, _>(y, |y| {
        read::<f32, _>(bias, |b| {
            read::<f32, _>(residual, |r| match mask {
                Some(m) => read::<u8, _>(&m.tensor, |m| body(y, b, r, Some(m), &mut z)),
                None => {
                    body(y, b, r, None, &mut z);
                    Ok(())
                }
            })
        })
    })????;
    tensor(z, y.shape())
}

fn cpu_backward(dz: &Tensor, mask: Option<&Mask>) -> Result<(Tensor, Tensor)> {
    let (n, h) = dz.dims2()?;
    let scale = mask.map_or(1.0, Mask::scale);
    let chunk = task_rows(h) * h;
    let mut dy = zeros(n * h);
    let run = |g: &[f32], m: Option<&[u8]>, dy: &mut [f32]| -> Vec<Vec<f32>> {
        dy.par_chunks_mut(chunk)
            .enumerate()
            .map(|(c, dc)| {
                let mut acc = vec![0f32; h];
                let span = c * chunk..c * chunk + dc.len();
                let m = m.map(|m| (&m[span.clone()], scale));
                residual_bwd_rows(&g[span], m, dc, &mut acc);
                acc
            })
            .collect()
    };
    let partials = read::<f32, _>(dz, |g| match mask {
        Some(m) => read::<u8, _>(&m.tensor, |m| run(g, Some(m), &mut dy)),
        None => Ok(run(g, None, &mut dy)),
    })??;
    Ok((tensor(dy, (n, h))?, tensor(sum_partials(partials, h), h)?))
}

/// x ⊙ keep-bytes × scale into `o`.
#[inline(always)]
fn mask_kernel(x: &[f32], m: &[u8], scale: f32, o: &mut [f32]) {
    for ((o, &x), &k) in o.iter_mut().zip(x).zip(m) {
        *o = x * f32::from(k) * scale;
    }
}

/// Rows of z = (y + bias) ⊙ mask × scale + r (without a mask: y + bias + r), rows of width
/// `b.len()`.
#[inline(always)]
fn residual_rows_kernel(y: &[f32], b: &[f32], r: &[f32], m: Option<(&[u8], f32)>, z: &mut [f32]) {
    let h = b.len().max(1);
    for (k, zr) in z.chunks_mut(h).enumerate() {
        let row = k * h..k * h + zr.len();
        let (yr, rr) = (&y[row.clone()], &r[row.clone()]);
        match m {
            Some((m, scale)) => {
                let mr = &m[row];
                for i in 0..zr.len() {
                    zr[i] = (yr[i] + b[i]) * f32::from(mr[i]) * scale + rr[i];
                }
            }
            None => {
                for i in 0..zr.len() {
                    zr[i] = yr[i] + b[i] + rr[i];
                }
            }
        }
    }
}

/// Rows of dy = g ⊙ mask × scale (without a mask: g), their sum added to `acc` (width h).
#[inline(always)]
fn residual_bwd_rows_kernel(g: &[f32], m: Option<(&[u8], f32)>, dy: &mut [f32], acc: &mut [f32]) {
    let h = acc.len().max(1);
    for (k, dr) in dy.chunks_mut(h).enumerate() {
        let row = k * h..k * h + dr.len();
        let gr = &g[row.clone()];
        match m {
            Some((m, scale)) => {
                let mr = &m[row];
                for i in 0..dr.len() {
                    dr[i] = gr[i] * f32::from(mr[i]) * scale;
                    acc[i] += dr[i];
                }
            }
            None => {
                dr.copy_from_slice(gr);
                for (a, &v) in acc.iter_mut().zip(gr) {
                    *a += v;
                }
            }
        }
    }
}

crate::host::dispatch!(mask_span, mask_span_at, mask_kernel, (x: &[f32], m: &[u8], scale: f32, o: &mut [f32]));
crate::host::dispatch!(residual_rows, residual_rows_at, residual_rows_kernel, (y: &[f32], b: &[f32], r: &[f32], m: Option<(&[u8], f32)>, z: &mut [f32]));
crate::host::dispatch!(residual_bwd_rows, residual_bwd_rows_at, residual_bwd_rows_kernel, (g: &[f32], m: Option<(&[u8], f32)>, dy: &mut [f32], acc: &mut [f32]));

fn gpu_forward(
    y: &Tensor,
    bias: &Tensor,
    mask: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    let (rows, width) = y.dims2()?;
    let s = Elem::of(y.dtype())?;
    let bias = bias.to_dtype(y.dtype())?;
    let out = on_gpu(
        &[Some(y), Some(&bias), mask, Some(residual)],
        &[(y.dtype(), rows * width)],
        |e, i, o| forward_launches(e, s, [i[0], i[1], i[2], i[3], o[0]], rows * width, width),
    )?;
    Ok(out[0].reshape((rows, width))?)
}

/// z for `[y, bias, mask (or null), residual, z]`, n elements in rows of `width`.
pub(crate) fn forward_launches(
    e: &mut dyn Exec,
    s: Elem,
    [y, bias, mask, residual, z]: [Ptr; 5],
    n: usize,
    width: usize,
) -> Result<()> {
    let (grid, block) = launch::per_element(n);
    e.launch(
        Launch::new(s.kernel("bias_dropout_residual"), grid, block)
            .arg(y)
            .arg(bias)
            .arg(mask)
            .arg(residual)
            .arg(z)
            .arg(n as u64)
            .arg(int(width, "width")?),
    )
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;
    use crate::emu::{self, EmuExec, HostBuf};
    use crate::ops::testing::{cpu, flat, random, rng};
    use candle_core::Device;

    /// A fixed byte mask (keep 0.9) and its GPU form, the keep-scale values.
    fn masks(rows: usize, width: usize) -> (Mask, Vec<f32>) {
        let mut r = rng(9);
        let p = 0.1;
        let bytes: Vec<u8> = (0..rows * width)
            .map(|_| u8::from(r.random::<f32>() >= 0.1))
            .collect();
        let scaled = bytes
            .iter()
            .map(|&k| f32::from(k) / (1.0 - p as f32))
            .collect();
        let tensor = Tensor::from_vec(bytes, (rows, width), &Device::Cpu).unwrap();
        (Mask { tensor, p }, scaled)
    }

    #[test]
    fn cpu_kernels_match_the_reference() {
        let (rows, width) = (30, 48);
        let mut r = rng(4);
        let (y, b, res, dz) = (
            cpu(&random(&mut r, rows * width, 1.0), &[rows, width]),
            cpu(&random(&mut r, width, 1.0), &[width]),
            cpu(&random(&mut r, rows * width, 1.0), &[rows, width]),
            cpu(&random(&mut r, rows * width, 1.0), &[rows, width]),
        );
        let (mask, _) = masks(rows, width);
        for m in [Some(&mask), None] {
            let z = BiasDropoutResidual::forward(Kernels::CpuOnly, &y, &b, m, &res).unwrap();
            let rz = BiasDropoutResidual::forward(Kernels::Reference, &y, &b, m, &res).unwrap();
            emu::close("z", &flat(&z), &flat(&rz), 1e-6);
            let (dy, db) = BiasDropoutResidual::backward(Kernels::CpuOnly, &dz, m).unwrap();
            let (rdy, rdb) = BiasDropoutResidual::backward(Kernels::Reference, &dz, m).unwrap();
            emu::close("dy", &flat(&dy), &flat(&rdy), 1e-6);
            emu::close("dbias", &flat(&db), &flat(&rdb), 1e-5);
        }
    }

    /// The launches on the emulator against the CPU kernels, with and without a mask (the GPU form of
    /// the same keep pattern).
    #[test]
    fn emulated_launches_match_the_cpu_kernels() {
        let Some(lib) = emu::emulator("residual::tests::emulated_launches_match_the_cpu_kernels")
        else {
            return;
        };
        let (rows, width) = (130, 300);
        let n = rows * width;
        let mut r = rng(2);
        let (y, b, res, dz) = (
            random(&mut r, n, 3.0),
            random(&mut r, width, 1.0),
            random(&mut r, n, 1.0),
            random(&mut r, n, 1.0),
        );
        let (mask, scaled) = masks(rows, width);
        for with_mask in [true, false] {
            let m = with_mask.then_some(&mask);
            let mp = if with_mask {
                emu::ptr(&scaled)
            } else {
                Ptr::NULL
            };
            let z = cpu_forward(
                &cpu(&y, &[rows, width]),
                &cpu(&b, &[width]),
                m,
                &cpu(&res, &[rows, width]),
            )
            .unwrap();
            let mut out = HostBuf::zeros(Elem::F32, n);
            let ptrs = [
                emu::ptr(&y),
                emu::ptr(&b),
                mp,
                emu::ptr(&res),
                out.ptr_mut(),
            ];
            forward_launches(&mut EmuExec::new(lib), Elem::F32, ptrs, n, width).unwrap();
            let what = format!("bias + dropout + residual (mask {with_mask})");
            emu::close(&what, &out.values(), &flat(&z), 1e-6);

            let (dy, db) = cpu_backward(&cpu(&dz, &[rows, width]), m).unwrap();
            let mut out = HostBuf::zeros(Elem::F32, n + width);
            let ptrs = [emu::ptr(&dz), mp, out.ptr_mut()];
            let mut e = EmuExec::new(lib);
            column_sum::pass_launches(&mut e, Elem::F32, "dropout_bwd_cols", ptrs, rows, width)
                .unwrap();
            let out = out.values();
            emu::close(
                &format!("dropout backward: dy (mask {with_mask})"),
                &out[..n],
                &flat(&dy),
                1e-6,
            );
            emu::close(
                &format!("dropout backward: dbias (mask {with_mask})"),
                &out[n..],
                &flat(&db),
                1e-5,
            );
        }
    }
}
