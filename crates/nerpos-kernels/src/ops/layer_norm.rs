//! LayerNorm over the rows of `x` (N, H), forward and backward. Two passes for the variance (no
//! cancellation), as PyTorch; one row per task on the CPU, one warp per row on the GPU.

use candle_core::{D, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::host::{dispatch, dot16, read_all, sum_partials, sum16, task_rows, tensor, zeros};
use crate::launch::{self, Elem, Exec, Launch, Ptr, int};
use crate::{Impl, Kernels, on_gpu};

/// LayerNorm with weight `w` and bias `b` (H), ε = `eps`.
#[derive(Debug, Clone, Copy)]
pub struct LayerNorm {
    pub eps: f64,
}

/// LayerNorm's gradients: (dx, dweight, dbias).
pub type LayerNormGrads = (Tensor, Tensor, Tensor);

impl LayerNorm {
    pub fn forward(&self, k: Kernels, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        match k.pick(x) {
            Impl::Cpu => self.cpu_forward(x, w, b),
            Impl::Cuda => self.gpu_forward(x, w, b),
            Impl::Tensor => self.reference_forward(x, w, b),
        }
    }

    /// LayerNorm(y + bias + residual): a block's end when nothing is dropped and nothing kept for a
    /// backward pass (inference). On the CPU one pass over rows (the same arithmetic as
    /// bias + residual then LayerNorm, without the intermediate tensor); elsewhere those two ops.
    pub fn forward_residual(
        &self,
        k: Kernels,
        (y, bias, residual): (&Tensor, &Tensor, &Tensor),
        w: &Tensor,
        b: &Tensor,
    ) -> Result<Tensor> {
        match k.pick(y) {
            Impl::Cpu => self.cpu_forward_residual((y, bias, residual), w, b),
            _ => {
                let z = super::residual::BiasDropoutResidual::forward(k, y, bias, None, residual)?;
                self.forward(k, &z, w, b)
            }
        }
    }

    pub fn backward(
        &self,
        k: Kernels,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<LayerNormGrads> {
        match k.pick(x) {
            Impl::Cpu => self.cpu_backward(x, w, dy),
            Impl::Cuda => self.gpu_backward(x, w, dy),
            Impl::Tensor => self.reference_backward(x, w, dy),
        }
    }

    fn cpu_forward_residual(
        &self,
        (y, bias, residual): (&Tensor, &Tensor, &Tensor),
        w: &Tensor,
        b: &Tensor,
    ) -> Result<Tensor> {
        let h = w.dim(0)?;
        let eps = self.eps as f32;
        let mut out = zeros(y.elem_count());
        let chunk = task_rows(h) * h;
        read_all([y, residual, bias, w, b], |[y, r, bias, w, b]| {
            out.par_chunks_mut(chunk)
                .zip(y.par_chunks(chunk).zip(r.par_chunks(chunk)))
                .for_each(|(o, (y, r))| ln_residual_fwd(Rows { y, bias, r }, w, b, o, eps));
        })?;
        tensor(out, y.shape())
    }

    fn cpu_forward(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let h = w.dim(0)?;
        let eps = self.eps as f32;
        let mut y = zeros(x.elem_count());
        let chunk = task_rows(h) * h;
        read_all([x, w, b], |[x, w, b]| {
            y.par_chunks_mut(chunk)
                .zip(x.par_chunks(chunk))
                .for_each(|(yc, xc)| ln_fwd(xc, w, b, yc, eps));
        })?;
        tensor(y, x.shape())
    }

    fn cpu_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<LayerNormGrads> {
        let (rows, h) = x.dims2()?;
        let eps = self.eps as f32;
        let mut dx = zeros(rows * h);
        let chunk = task_rows(h) * h;
        // Each task: dx for its rows, and its partial sums of dweight and dbias.
        let partials: Vec<Vec<f32>> = read_all([x, w, dy], |[x, w, g]| {
            dx.par_chunks_mut(chunk)
                .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
                .map(|(dxc, (xc, gc))| {
                    let mut acc = vec![0f32; 2 * h];
                    let mut xhat = vec![0f32; h];
                    ln_bwd(xc, w, gc, dxc, &mut acc, &mut xhat, eps);
                    acc
                })
                .collect()
        })?;
        let dwb = sum_partials(partials, 2 * h);
        Ok((
            tensor(dx, (rows, h))?,
            tensor(dwb[..h].to_vec(), h)?,
            tensor(dwb[h..].to_vec(), h)?,
        ))
    }

    /// In f32 whatever the storage type, returned in it.
    fn reference_forward(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = super::f32(x)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        Ok(centered
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&super::f32(w)?)?
            .broadcast_add(&super::f32(b)?)?
            .to_dtype(dtype)?)
    }

    fn reference_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<LayerNormGrads> {
        let dtype = x.dtype();
        let (x, w, dy) = (super::f32(x)?, super::f32(w)?, super::f32(dy)?);
        let mean = x.mean_keepdim(1)?;
        let centered = x.broadcast_sub(&mean)?;
        let rstd = (centered.sqr()?.mean_keepdim(1)? + self.eps)?
            .sqrt()?
            .recip()?;
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

    fn gpu_forward(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (rows, h) = x.dims2()?;
        let s = Elem::of(x.dtype())?;
        let (w, b) = (w.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
        let eps = self.eps as f32;
        let out = on_gpu(
            &[Some(x), Some(&w), Some(&b)],
            &[(x.dtype(), rows * h)],
            |e, i, o| forward_launches(e, s, [i[0], i[1], i[2], o[0]], rows, h, eps),
        )?;
        Ok(out[0].reshape((rows, h))?)
    }

    fn gpu_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<LayerNormGrads> {
        let (rows, h) = x.dims2()?;
        let s = Elem::of(x.dtype())?;
        let (w, dy) = (w.to_dtype(x.dtype())?, dy.to_dtype(x.dtype())?);
        let eps = self.eps as f32;
        let out = on_gpu(
            &[Some(x), Some(&w), Some(&dy)],
            &[(x.dtype(), (rows + 2) * h)],
            |e, i, o| backward_launches(e, s, [i[0], i[1], i[2], o[0]], rows, h, eps),
        )?;
        let packed = out[0].reshape((rows + 2, h))?;
        Ok((
            packed.narrow(0, 0, rows)?,
            packed.get(rows)?,
            packed.get(rows + 1)?,
        ))
    }
}

/// y = LayerNorm(x) for `[x, w, b, y]`: one warp per row.
pub(crate) fn forward_launches(
    e: &mut dyn Exec,
    s: Elem,
    [x, w, b, y]: [Ptr; 4],
    rows: usize,
    h: usize,
    eps: f32,
) -> Result<()> {
    let (grid, block) = launch::per_row(rows);
    e.launch(
        Launch::new(s.kernel("ln_fwd"), grid, block)
            .arg(x)
            .arg(w)
            .arg(b)
            .arg(y)
            .arg(int(rows, "rows")?)
            .arg(int(h, "width")?)
            .arg(eps),
    )
}

/// `out` = [dx (rows × h); dweight (h); dbias (h)] for `[x, w, dy, out]`: dx and each row's
/// statistics by rows, then the weight and bias gradients by chunks of rows, summed in order.
pub(crate) fn backward_launches(
    e: &mut dyn Exec,
    s: Elem,
    [x, w, dy, out]: [Ptr; 4],
    rows: usize,
    h: usize,
    eps: f32,
) -> Result<()> {
    let (r, hh) = (int(rows, "rows")?, int(h, "width")?);
    let (chunk, chunks) = launch::chunking(rows);
    let stats = e.scratch(2 * rows.max(1) * 4)?;
    let partial = e.scratch(chunks * 2 * h * 4)?;
    let (grid, block) = launch::per_row(rows);
    e.launch(
        Launch::new(s.kernel("ln_bwd_rows"), grid, block)
            .arg(x)
            .arg(w)
            .arg(dy)
            .arg(out)
            .arg(stats)
            .arg(r)
            .arg(hh)
            .arg(eps),
    )?;
    let (grid, block) = launch::per_column(h, chunks);
    e.launch(
        Launch::new(s.kernel("ln_bwd_cols"), grid, block)
            .arg(x)
            .arg(dy)
            .arg(stats)
            .arg(partial)
            .arg(r)
            .arg(hh)
            .arg(int(chunk, "chunk")?),
    )?;
    let grads = out.offset(rows * h * s.bytes());
    e.launch(launch::colsum_finish(s, partial, grads, chunks, 2 * h)?)
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

/// A block's rows before its LayerNorm: the product `y`, the bias, the residual `r`.
pub(crate) struct Rows<'a> {
    pub(crate) y: &'a [f32],
    pub(crate) bias: &'a [f32],
    pub(crate) r: &'a [f32],
}

/// Rows of LayerNorm(y + bias + r) into `out` (z = y + bias + r first, in `out`, as the
/// bias + residual op computes it; then centred and scaled there).
#[inline(always)]
fn ln_residual_fwd_kernel(x: Rows, w: &[f32], b: &[f32], out: &mut [f32], eps: f32) {
    let h = w.len();
    let n = h as f32;
    for ((o, yr), rr) in out.chunks_mut(h).zip(x.y.chunks(h)).zip(x.r.chunks(h)) {
        for i in 0..h {
            o[i] = yr[i] + x.bias[i] + rr[i];
        }
        let mean = sum16(o) / n;
        o.iter_mut().for_each(|v| *v -= mean);
        let rstd = 1.0 / (dot16(o, o) / n + eps).sqrt();
        for i in 0..h {
            o[i] = o[i] * rstd * w[i] + b[i];
        }
    }
}

dispatch!(
    ln_residual_fwd,
    ln_residual_fwd_at,
    ln_residual_fwd_kernel,
    (x: Rows, w: &[f32], b: &[f32], out: &mut [f32], eps: f32)
);

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

dispatch!(ln_fwd, ln_fwd_at, ln_fwd_kernel, (x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], eps: f32));
dispatch!(ln_bwd, ln_bwd_at, ln_bwd_kernel, (x: &[f32], w: &[f32], g: &[f32], dx: &mut [f32], acc: &mut [f32], xhat: &mut [f32], eps: f32));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::{self, EmuExec, HostBuf};
    use crate::ops::testing::{cpu, flat, random, rng};

    const LN: LayerNorm = LayerNorm { eps: 1e-12 };

    fn data(rows: usize, h: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut r = rng(1);
        let x = random(&mut r, rows * h, 2.0)
            .iter()
            .map(|v| v + 0.5)
            .collect();
        (
            x,
            random(&mut r, h, 1.0),
            random(&mut r, h, 1.0),
            random(&mut r, rows * h, 1.0),
        )
    }

    /// The fused bias + residual + LayerNorm equals the two ops on the CPU bit for bit, and the
    /// reference within rounding.
    #[test]
    fn residual_then_norm_in_one_pass() {
        let (rows, h) = (37, 72);
        let (y, w, b, r) = data(rows, h);
        let mut g = rng(4);
        let (y, w, b, r, bias) = (
            cpu(&y, &[rows, h]),
            cpu(&w, &[h]),
            cpu(&b, &[h]),
            cpu(&r, &[rows, h]),
            cpu(&random(&mut g, h, 1.0), &[h]),
        );
        let fused = |k| LN.forward_residual(k, (&y, &bias, &r), &w, &b).unwrap();
        let ours = fused(Kernels::CpuOnly);
        let z = crate::ops::residual::BiasDropoutResidual::forward(
            Kernels::CpuOnly,
            &y,
            &bias,
            None,
            &r,
        )
        .unwrap();
        let two_ops = LN.forward(Kernels::CpuOnly, &z, &w, &b).unwrap();
        assert_eq!(flat(&ours), flat(&two_ops));
        emu::close(
            "fused",
            &flat(&ours),
            &flat(&fused(Kernels::Reference)),
            2e-5,
        );
    }

    #[test]
    fn cpu_kernels_match_the_reference() {
        let (rows, h) = (37, 72);
        let (x, w, b, g) = data(rows, h);
        let (x, w, b, g) = (
            cpu(&x, &[rows, h]),
            cpu(&w, &[h]),
            cpu(&b, &[h]),
            cpu(&g, &[rows, h]),
        );
        let y = LN.forward(Kernels::CpuOnly, &x, &w, &b).unwrap();
        let r = LN.forward(Kernels::Reference, &x, &w, &b).unwrap();
        emu::close("forward", &flat(&y), &flat(&r), 1e-5);
        let (dx, dw, db) = LN.backward(Kernels::CpuOnly, &x, &w, &g).unwrap();
        let (rx, rw, rb) = LN.backward(Kernels::Reference, &x, &w, &g).unwrap();
        emu::close("dx", &flat(&dx), &flat(&rx), 1e-4);
        emu::close("dweight", &flat(&dw), &flat(&rw), 1e-4);
        emu::close("dbias", &flat(&db), &flat(&rb), 1e-4);
    }

    /// The launches on the emulator against the CPU kernels on the same (rounded) inputs, f32 and
    /// bf16.
    #[test]
    fn emulated_launches_match_the_cpu_kernels() {
        let Some(lib) = emu::emulator("layer_norm::tests::emulated_launches_match_the_cpu_kernels")
        else {
            return;
        };
        let (rows, h) = (100, 72);
        let (x, w, b, g) = data(rows, h);
        for elem in [Elem::F32, Elem::Bf16] {
            let tol = emu::tol(elem, 2e-5, 1e-2);
            let seen = |v: &[f32], s: &[usize]| cpu(&emu::seen(elem, v), s);
            let (xs, ws, bs, gs) = (
                seen(&x, &[rows, h]),
                seen(&w, &[h]),
                seen(&b, &[h]),
                seen(&g, &[rows, h]),
            );
            let y = flat(&LN.cpu_forward(&xs, &ws, &bs).unwrap());
            let (dx, dw, db) = LN.cpu_backward(&xs, &ws, &gs).unwrap();
            let host = |v: &[f32]| HostBuf::new(elem, v);
            let (hx, hw, hb, hg) = (host(&x), host(&w), host(&b), host(&g));
            let mut out = HostBuf::zeros(elem, rows * h);
            let ptrs = [hx.ptr(), hw.ptr(), hb.ptr(), out.ptr_mut()];
            forward_launches(&mut EmuExec::new(lib), elem, ptrs, rows, h, 1e-12).unwrap();
            emu::close(&format!("forward {elem:?}"), &out.values(), &y, tol);
            let mut out = HostBuf::zeros(elem, (rows + 2) * h);
            let ptrs = [hx.ptr(), hw.ptr(), hg.ptr(), out.ptr_mut()];
            backward_launches(&mut EmuExec::new(lib), elem, ptrs, rows, h, 1e-12).unwrap();
            let out = out.values();
            emu::close(&format!("dx {elem:?}"), &out[..rows * h], &flat(&dx), tol);
            // Summed over 100 rows: compare relative to the column's magnitude.
            let (w_at, b_at) = (rows * h..(rows + 1) * h, (rows + 1) * h..);
            emu::close(
                &format!("dweight {elem:?}"),
                &out[w_at],
                &flat(&dw),
                tol * 4.0,
            );
            emu::close(
                &format!("dbias {elem:?}"),
                &out[b_at],
                &flat(&db),
                tol * 4.0,
            );
        }
    }
}
