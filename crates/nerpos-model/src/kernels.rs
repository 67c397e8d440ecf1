//! Fused CPU kernels for the training pass, each one pass over memory where the tensor-op version
//! takes three to five: bias + dropout + residual, bias + GELU, dropout with the bias gradient, and the
//! embedding gradient (attention has its own module). Each has the same computation in tensor ops for
//! other devices (`on_cpu` decides).
//!
//! Dropout masks are bytes (keep = 1) on the CPU, keyed by the sentence ([`crate::dropout`]).

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Elements per parallel task.
const TASK: usize = 16_384;

/// Whether the CPU kernels apply to `t`.
pub fn on_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` on the contiguous host data of `t` (which must be a contiguous CPU tensor of type `T`).
pub(crate) fn read<T: candle_core::WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> R,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(ModelError::Config(
            "a CPU kernel got a device tensor".into(),
        ));
    };
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| ModelError::Config("a CPU kernel got a non-contiguous tensor".into()))?;
    Ok(f(&cpu.as_slice::<T>()?[a..b]))
}

fn cpu_tensor<S: Into<candle_core::Shape>>(data: Vec<f32>, shape: S) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// A dropout keep-mask: bytes (1 = keep) on the CPU; elsewhere an f32 tensor already scaled by
/// 1/(1−p).
#[derive(Clone)]
pub struct Mask {
    pub tensor: Tensor,
    pub p: f64,
}

impl Mask {
    fn scale(&self) -> f32 {
        (1.0 / (1.0 - self.p)) as f32
    }
}

/// x ⊙ mask (scaled), or x without a mask.
pub fn masked(x: &Tensor, mask: Option<&Mask>) -> Result<Tensor> {
    match mask {
        Some(m) if on_cpu(x) && m.tensor.dtype() == DType::U8 => {
            let scale = m.scale();
            let mut out = vec![0f32; x.elem_count()];
            read::<f32, _>(x, |x| {
                read::<u8, _>(&m.tensor, |m| {
                    out.par_chunks_mut(TASK)
                        .zip(x.par_chunks(TASK).zip(m.par_chunks(TASK)))
                        .for_each(|(o, (x, m))| {
                            for ((o, &x), &k) in o.iter_mut().zip(x).zip(m) {
                                *o = x * f32::from(k) * scale;
                            }
                        });
                })
            })??;
            cpu_tensor(out, x.shape())
        }
        _ => apply(x, mask),
    }
}

/// Applies an optional mask to a tensor (the generic path).
fn apply(x: &Tensor, mask: Option<&Mask>) -> Result<Tensor> {
    Ok(match mask {
        None => x.clone(),
        Some(m) if m.tensor.dtype() == DType::U8 => {
            (x * (m.tensor.to_dtype(x.dtype())? * m.scale() as f64)?)?
        }
        Some(m) => (x * &m.tensor)?,
    })
}

/// For the fused GPU kernels: `Some(mask tensor or none)` when they apply to `x` and the mask is in
/// their form (scaled, `x`'s dtype); `None` otherwise.
fn device_mask<'a>(x: &Tensor, mask: Option<&'a Mask>) -> Option<Option<&'a Tensor>> {
    if !crate::device_ops::applies(x) {
        return None;
    }
    match mask {
        None => Some(None),
        Some(m) if m.tensor.dtype() == x.dtype() => Some(Some(&m.tensor)),
        Some(_) => None,
    }
}

/// Rows of width `h` per parallel task: enough work per task to amortise scheduling.
fn task_rows(h: usize) -> usize {
    (TASK / h.max(1)).max(1)
}

/// z = dropout(y + bias) + residual, for y and residual (N, H).
pub fn bias_dropout_residual(
    y: &Tensor,
    bias: &Tensor,
    mask: Option<&Mask>,
    residual: &Tensor,
) -> Result<Tensor> {
    if let Some(m) = device_mask(y, mask) {
        return crate::device_ops::bias_dropout_residual(y, bias, m, residual);
    }
    if !on_cpu(y) {
        return Ok((apply(&y.broadcast_add(bias)?, mask)? + residual)?);
    }
    let h = bias.dim(0)?;
    let scale = mask.map_or(1.0, Mask::scale);
    let chunk = task_rows(h) * h;
    let mut z = vec![0f32; y.elem_count()];
    read::<f32, _>(y, |y| {
        read::<f32, _>(bias, |b| {
            read::<f32, _>(residual, |r| {
                let mut body = |m: Option<&[u8]>| {
                    z.par_chunks_mut(chunk).enumerate().for_each(|(c, zc)| {
                        let at = c * chunk;
                        for (k, zr) in zc.chunks_mut(h).enumerate() {
                            let row = at + k * h..at + (k + 1) * h;
                            let (yr, rr) = (&y[row.clone()], &r[row.clone()]);
                            match m {
                                Some(m) => {
                                    let mr = &m[row];
                                    for i in 0..h {
                                        let keep = f32::from(mr[i]) * scale;
                                        zr[i] = (yr[i] + b[i]) * keep + rr[i];
                                    }
                                }
                                None => {
                                    for i in 0..h {
                                        zr[i] = yr[i] + b[i] + rr[i];
                                    }
                                }
                            }
                        }
                    });
                };
                match mask {
                    Some(m) => read::<u8, _>(&m.tensor, |m| body(Some(m))),
                    None => {
                        body(None);
                        Ok(())
                    }
                }
            })
        })
    })????;
    cpu_tensor(z, y.shape())
}

/// The gradient through dropout (dy = dz ⊙ mask) and its column sum (the bias gradient).
pub fn dropout_colsum(dz: &Tensor, mask: Option<&Mask>) -> Result<(Tensor, Tensor)> {
    let (n, h) = dz.dims2()?;
    if let Some(m) = device_mask(dz, mask) {
        return crate::device_ops::dropout_colsum(dz, m);
    }
    if !on_cpu(dz) {
        let dy = apply(dz, mask)?;
        let db = dy.sum(0)?;
        return Ok((dy, db));
    }
    let scale = mask.map_or(1.0, Mask::scale);
    let chunk = task_rows(h) * h;
    let mut dy = vec![0f32; n * h];
    let partials: Vec<Vec<f32>> = read::<f32, _>(dz, |g| {
        let mut run = |m: Option<&[u8]>| -> Vec<Vec<f32>> {
            dy.par_chunks_mut(chunk)
                .enumerate()
                .map(|(c, dc)| {
                    let mut acc = vec![0f32; h];
                    let at = c * chunk;
                    for (k, dr) in dc.chunks_mut(h).enumerate() {
                        let row = at + k * h..at + (k + 1) * h;
                        let gr = &g[row.clone()];
                        match m {
                            Some(m) => {
                                let mr = &m[row];
                                for i in 0..h {
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
                    acc
                })
                .collect()
        };
        match mask {
            Some(m) => read::<u8, _>(&m.tensor, |m| run(Some(m))),
            None => Ok(run(None)),
        }
    })??;
    let mut db = vec![0f32; h];
    for p in partials {
        db.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
    }
    Ok((cpu_tensor(dy, (n, h))?, cpu_tensor(db, h)?))
}

/// (u, gelu(u)) for u = y + bias, y (N, I).
pub fn bias_gelu(y: &Tensor, bias: &Tensor) -> Result<(Tensor, Tensor)> {
    if crate::device_ops::applies(y) {
        return crate::device_ops::bias_gelu(y, &bias.to_dtype(y.dtype())?);
    }
    if !on_cpu(y) {
        let u = y.broadcast_add(bias)?;
        let g = u.gelu_erf()?;
        return Ok((u, g));
    }
    let i_dim = bias.dim(0)?;
    let n = y.elem_count();
    let mut u = vec![0f32; n];
    let mut g = vec![0f32; n];
    read::<f32, _>(y, |y| {
        read::<f32, _>(bias, |b| {
            let chunk = (TASK / i_dim).max(1) * i_dim;
            u.par_chunks_mut(chunk)
                .zip(g.par_chunks_mut(chunk))
                .zip(y.par_chunks(chunk))
                .for_each(|((uc, gc), yc)| {
                    for (ur, yr) in uc.chunks_mut(i_dim).zip(yc.chunks(i_dim)) {
                        for ((o, &v), &bv) in ur.iter_mut().zip(yr).zip(b) {
                            *o = v + bv;
                        }
                    }
                    crate::ops::gelu_slice(uc, gc);
                });
        })
    })??;
    Ok((cpu_tensor(u, y.shape())?, cpu_tensor(g, y.shape())?))
}

/// (du, dbias) for g = gelu(u): du = dg ⊙ gelu'(u), dbias = column sums of du.
pub fn gelu_colsum(u: &Tensor, dg: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, i_dim) = u.dims2()?;
    if crate::device_ops::applies(u) {
        return crate::device_ops::gelu_colsum(u, &dg.to_dtype(u.dtype())?);
    }
    if !on_cpu(u) {
        let du = crate::ops::gelu_bwd_t(u, dg)?;
        let db = du.sum(0)?;
        return Ok((du, db));
    }
    let mut du = vec![0f32; n * i_dim];
    let rows = (TASK / i_dim).max(1);
    let partials: Vec<Vec<f32>> = read::<f32, _>(u, |u| {
        read::<f32, _>(dg, |g| {
            du.par_chunks_mut(rows * i_dim)
                .zip(u.par_chunks(rows * i_dim).zip(g.par_chunks(rows * i_dim)))
                .map(|(dc, (uc, gc))| {
                    crate::ops::gelu_bwd_slice(uc, gc, dc);
                    let mut acc = vec![0f32; i_dim];
                    for r in dc.chunks(i_dim) {
                        acc.iter_mut().zip(r).for_each(|(a, v)| *a += v);
                    }
                    acc
                })
                .collect()
        })
    })??;
    let mut db = vec![0f32; i_dim];
    for p in partials {
        db.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
    }
    Ok((cpu_tensor(du, (n, i_dim))?, cpu_tensor(db, i_dim)?))
}

/// The gradient of an embedding table (rows × dim) from the gradients `d` (N, dim) of the rows `ids`
/// (N) that were looked up.
pub fn embedding_grad(ids: &Tensor, d: &Tensor, rows: usize) -> Result<Tensor> {
    let dim = d.dim(1)?;
    if !on_cpu(d) {
        return Ok(
            Tensor::zeros((rows, dim), d.dtype(), d.device())?.index_add(
                ids,
                &d.contiguous()?,
                0,
            )?,
        );
    }
    let mut out = vec![0f32; rows * dim];
    read::<u32, _>(ids, |ids| {
        read::<f32, _>(d, |d| {
            for (i, &id) in ids.iter().enumerate() {
                let dst = &mut out[id as usize * dim..][..dim];
                dst.iter_mut()
                    .zip(&d[i * dim..][..dim])
                    .for_each(|(a, v)| *a += v);
            }
        })
    })??;
    cpu_tensor(out, (rows, dim))
}

/// The gradient of an embedding table as the rows that were looked up: the distinct `ids` (sorted)
/// and, for each, the sum of the gradients `d` (N, dim) of its look-ups. The ids come from the host
/// (the batch keeps them there): nothing is read back from a GPU.
pub fn embedding_grad_rows(all: &[u32], d: &Tensor) -> Result<(Vec<u32>, Tensor)> {
    let dim = d.dim(1)?;
    let mut distinct = all.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let at: Vec<u32> = all
        .iter()
        .map(|id| distinct.binary_search(id).unwrap_or_default() as u32)
        .collect();
    if !on_cpu(d) {
        let at = Tensor::from_vec(at, all.len(), d.device())?;
        let zeros = Tensor::zeros((distinct.len(), dim), d.dtype(), d.device())?;
        return Ok((distinct, zeros.index_add(&at, &d.contiguous()?, 0)?));
    }
    let mut out = vec![0f32; distinct.len() * dim];
    read::<f32, _>(d, |d| {
        for (i, &row) in at.iter().enumerate() {
            let dst = &mut out[row as usize * dim..][..dim];
            dst.iter_mut()
                .zip(&d[i * dim..][..dim])
                .for_each(|(a, v)| *a += v);
        }
    })?;
    let rows = distinct.len();
    Ok((distinct, cpu_tensor(out, (rows, dim))?))
}
