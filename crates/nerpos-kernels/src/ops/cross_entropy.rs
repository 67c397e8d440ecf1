//! Softmax cross-entropy of logits `[M, C]` against labels `[M]`: the summed loss and d(loss)/d(logits)
//! in one pass. On a GPU the loss stays there ([`Deferred`]) until read once per log interval.

use candle_core::{D, DType, Device, Tensor};

use crate::deferred::Deferred;
use crate::error::Result;
use crate::launch::{self, Elem, Exec, Launch, Ptr, int};
use crate::{Impl, Kernels, on_gpu};

/// Softmax cross-entropy with its gradient.
pub struct CrossEntropy;

impl CrossEntropy {
    /// The summed loss and d(loss)/d(logits) (the logits' dtype) for u32 `labels`.
    pub fn forward_backward(
        k: Kernels,
        logits: &Tensor,
        labels: &Tensor,
    ) -> Result<(Deferred, Tensor)> {
        let (m, classes) = logits.dims2()?;
        if m == 0 {
            let zeros = Tensor::zeros((0, classes), logits.dtype(), logits.device())?;
            return Ok((Deferred::Host(0.0), zeros));
        }
        match k.pick(logits) {
            Impl::Cpu => cpu(logits, labels),
            Impl::Cuda => gpu(logits, labels),
            Impl::Tensor => reference(logits, labels),
        }
    }
}

/// On the host in f64 sums (a few thousand rows of a few dozen labels).
fn cpu(logits: &Tensor, labels: &Tensor) -> Result<(Deferred, Tensor)> {
    let (m, classes) = logits.dims2()?;
    let rows = logits.to_vec2::<f32>()?;
    let labels = labels.to_vec1::<u32>()?;
    let mut grad = vec![0f32; m * classes];
    let mut loss = 0f64;
    for ((row, &label), out) in rows.iter().zip(&labels).zip(grad.chunks_mut(classes)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&z| f64::from(z - max).exp()).sum();
        loss += sum.ln() - f64::from(row[label as usize] - max);
        for (o, &z) in out.iter_mut().zip(row) {
            *o = (f64::from(z - max).exp() / sum) as f32;
        }
        out[label as usize] -= 1.0;
    }
    Ok((
        Deferred::Host(loss),
        Tensor::from_vec(grad, (m, classes), &Device::Cpu)?,
    ))
}

/// In tensor ops on the logits' device (f32 inside, nothing read back): softmax − one-hot, and the
/// loss summed where it is.
fn reference(logits: &Tensor, labels: &Tensor) -> Result<(Deferred, Tensor)> {
    let (m, classes) = logits.dims2()?;
    let z = super::f32(logits)?;
    let max = z.max_keepdim(D::Minus1)?;
    let shifted = z.broadcast_sub(&max)?;
    let sum = shifted.exp()?.sum_keepdim(D::Minus1)?;
    let log_probs = shifted.broadcast_sub(&sum.log()?)?;
    let at = labels.to_dtype(DType::U32)?.reshape((m, 1))?;
    let picked = log_probs.gather(&at, 1)?;
    let loss = Deferred::sum_of(&picked.neg()?)?;
    let one_hot = Tensor::zeros((m, classes), DType::F32, logits.device())?.scatter_add(
        &at,
        &Tensor::ones((m, 1), DType::F32, logits.device())?,
        1,
    )?;
    let grad = (log_probs.exp()? - one_hot)?.to_dtype(logits.dtype())?;
    Ok((loss, grad))
}

fn gpu(logits: &Tensor, labels: &Tensor) -> Result<(Deferred, Tensor)> {
    let (m, classes) = logits.dims2()?;
    let s = Elem::of(logits.dtype())?;
    let out = on_gpu(
        &[Some(logits), Some(labels)],
        &[(logits.dtype(), m * classes), (DType::F32, m)],
        |e, i, o| launches(e, s, [i[0], i[1], o[1], o[0]], m, classes),
    )?;
    Ok((Deferred::sum_of(&out[1])?, out[0].reshape((m, classes))?))
}

/// Each row's loss and the gradient, for `[logits, labels, loss, grad]`: one warp per row.
pub(crate) fn launches(
    e: &mut dyn Exec,
    s: Elem,
    [logits, labels, loss, grad]: [Ptr; 4],
    m: usize,
    classes: usize,
) -> Result<()> {
    let (grid, block) = launch::per_row(m);
    e.launch(
        Launch::new(s.kernel("cross_entropy"), grid, block)
            .arg(logits)
            .arg(labels)
            .arg(loss)
            .arg(grad)
            .arg(int(m, "rows")?)
            .arg(int(classes, "classes")?),
    )
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;
    use crate::emu::{self, EmuExec, HostBuf};
    use crate::ops::testing::{cpu as host, flat, random, rng};

    fn data(m: usize, c: usize) -> (Vec<f32>, Vec<u32>) {
        let mut r = rng(4);
        let logits = random(&mut r, m * c, 4.0);
        let labels = (0..m).map(|_| r.random_range(0..c as u32)).collect();
        (logits, labels)
    }

    #[test]
    fn cpu_matches_the_tensor_op_version() {
        let (m, c) = (50, 17);
        let (logits, labels) = data(m, c);
        let (z, y) = (
            host(&logits, &[m, c]),
            Tensor::from_vec(labels, m, &Device::Cpu).unwrap(),
        );
        let (loss, grad) = CrossEntropy::forward_backward(Kernels::CpuOnly, &z, &y).unwrap();
        let (rloss, rgrad) = CrossEntropy::forward_backward(Kernels::Reference, &z, &y).unwrap();
        let (a, b) = (loss.read().unwrap(), rloss.read().unwrap());
        assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
        emu::close("gradient", &flat(&grad), &flat(&rgrad), 1e-6);
    }

    #[test]
    fn emulated_launch_matches_the_cpu() {
        let Some(lib) = emu::emulator("cross_entropy::tests::emulated_launch_matches_the_cpu")
        else {
            return;
        };
        let (m, c) = (50, 17);
        let (logits, labels) = data(m, c);
        let z = host(&logits, &[m, c]);
        let (loss, grad) = cpu(
            &z,
            &Tensor::from_vec(labels.clone(), m, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let loss = loss.read().unwrap();
        let (mut rows, mut g) = (
            HostBuf::zeros(Elem::F32, m),
            HostBuf::zeros(Elem::F32, m * c),
        );
        let ptrs = [
            emu::ptr(&logits),
            emu::ptr(&labels),
            rows.ptr_mut(),
            g.ptr_mut(),
        ];
        launches(&mut EmuExec::new(lib), Elem::F32, ptrs, m, c).unwrap();
        let sum: f64 = rows.values().iter().map(|&v| f64::from(v)).sum();
        assert!(
            (sum - loss).abs() <= 1e-5 * loss.abs(),
            "loss: emulated kernel {sum}, CPU {loss}"
        );
        emu::close("cross-entropy gradient", &g.values(), &flat(&grad), 1e-6);
    }
}
