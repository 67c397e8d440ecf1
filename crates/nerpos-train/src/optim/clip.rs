//! Global gradient-norm clipping, as PyTorch's `clip_grad_norm_`: the norm of all summed gradients
//! (after the all-reduce), and the factor the optimiser multiplies them by — kept on the GPU there (no
//! read-back per step; the AdamW kernel reads it from device memory).

use candle_core::{DType, Tensor};
use nerpos_model::{Deferred, Grad};

/// What the optimiser multiplies the summed gradients by: `scale` (1/count, known on the host) times
/// the clipping factor `clip`, which a GPU computes from the gradient norm and keeps.
#[derive(Clone, Debug)]
pub struct GradScale {
    pub scale: f64,
    pub clip: Deferred,
}

impl GradScale {
    /// No clipping.
    pub fn plain(scale: f64) -> GradScale {
        GradScale {
            scale,
            clip: Deferred::Host(1.0),
        }
    }

    /// From the squared norm of the summed gradients: clip to `max_norm` (0 = no clipping), as
    /// PyTorch's `clip_grad_norm_` (factor max/(norm + 1e-6), at most 1). Returns the scale and the
    /// norm of the scaled gradients (before clipping), both where the squared norm is.
    pub fn clipped(
        scale: f64,
        squared_norm: &Deferred,
        max_norm: f64,
    ) -> candle_core::Result<(GradScale, Deferred)> {
        let (clip, norm) = match squared_norm {
            Deferred::Host(s) => {
                let norm = s.sqrt() * scale;
                let clip = if max_norm > 0.0 {
                    (max_norm / (norm + 1e-6)).min(1.0)
                } else {
                    1.0
                };
                (Deferred::Host(clip), Deferred::Host(norm))
            }
            Deferred::Device(s) => {
                let norm = s.sqrt()?.affine(scale, 0.0)?;
                let clip = if max_norm > 0.0 {
                    Deferred::Device(
                        norm.affine(1.0, 1e-6)?
                            .recip()?
                            .affine(max_norm, 0.0)?
                            .minimum(1.0)?,
                    )
                } else {
                    Deferred::Host(1.0)
                };
                (clip, Deferred::Device(norm))
            }
        };
        Ok((GradScale { scale, clip }, norm))
    }
}

/// A step's guard where its numbers stay on the device (a GPU, which must not read them back each
/// step): a one-value f32 tensor, 0 when the step's `loss` and gradient `norm` are finite, NaN when
/// not — or when `sticky` already holds a NaN, which it then keeps for the steps after.
pub fn guard(
    loss: &Deferred,
    norm: &Deferred,
    sticky: Option<&mut Tensor>,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let held = |d: &Deferred| match d {
        Deferred::Host(x) => Tensor::new(*x as f32, device),
        Deferred::Device(t) => t.to_dtype(DType::F32)?.reshape(()),
    };
    let (loss, norm) = (held(loss)?, held(norm)?);
    // x − x is 0 exactly for a finite x, NaN for NaN and ±Inf: adding it changes nothing else.
    let mut bad = (norm.sub(&norm)? + loss.sub(&loss)?)?;
    if let Some(s) = sticky {
        *s = (&*s + &bad)?;
        bad = s.clone();
    }
    Ok(bad)
}

impl GradScale {
    /// This scale with the step's [`guard`] folded into its clipping factor (NaN when the step is not
    /// finite): every update (the GPU kernels, the composed update, the CPU loop) leaves a step with a
    /// non-finite factor out — weights and moments untouched.
    pub fn guarded(&self, bad: &Tensor) -> candle_core::Result<GradScale> {
        let clip = match &self.clip {
            Deferred::Host(c) => bad.affine(1.0, *c)?,
            Deferred::Device(t) => (t.to_dtype(DType::F32)?.reshape(())? + bad)?,
        };
        Ok(GradScale {
            scale: self.scale,
            clip: Deferred::Device(clip),
        })
    }
}

/// Σ g² over all gradients (before any scaling): CPU f32 gradients summed in place, in parallel, in
/// f64; others summed on their device and left there (a GPU's is not read back) — with `fused`, on a
/// GPU, by the multi-tensor kernels in two launches for all of them; else per gradient in tensor ops.
/// Row gradients: their rows.
pub fn squared_norm<'a>(
    grads: impl IntoIterator<Item = &'a Grad>,
    fused: bool,
) -> candle_core::Result<Deferred> {
    let mut host = 0f64;
    let mut total: Option<Tensor> = None;
    let mut on_gpu: Vec<&Tensor> = Vec::new();
    for g in grads {
        let g = match g {
            Grad::Dense(t) => t,
            Grad::Rows { values, .. } => values,
        };
        if g.device().is_cpu() && g.dtype() == DType::F32 {
            host += host_squares(g)?;
            continue;
        }
        if fused && multi_tensor_on(g) && on_gpu.first().is_none_or(|f| f.dtype() == g.dtype()) {
            on_gpu.push(g);
            continue;
        }
        let s = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + s)?,
            None => s,
        });
    }
    if !on_gpu.is_empty() {
        let s = nerpos_kernels::ops::multi_tensor::sum_of_squares(&on_gpu)?.reshape(())?;
        total = Some(match total {
            Some(t) => (t + s)?,
            None => s,
        });
    }
    Ok(match total {
        None => Deferred::Host(host),
        Some(t) if t.device().is_cpu() => Deferred::Host(host + f64::from(t.to_scalar::<f32>()?)),
        Some(t) => Deferred::Device(t).add(&Deferred::Host(host))?,
    })
}

/// Whether the multi-tensor kernels take `t` (CUDA builds, an f32 or bf16 tensor on a GPU).
pub(crate) fn multi_tensor_on(t: &Tensor) -> bool {
    cfg!(feature = "cuda") && t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16)
}

/// Σ x² of a CPU f32 tensor (nerpos-kernels' kernel, at the CPU's tier).
fn host_squares(t: &Tensor) -> candle_core::Result<f64> {
    Ok(nerpos_kernels::host::read::<f32, _>(
        t,
        nerpos_kernels::host::sum_of_squares,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard: the clipping factor is unchanged for a finite step, NaN for a step with a NaN or
    /// infinite loss or norm; a sticky guard keeps the NaN for the steps after.
    #[test]
    fn a_guarded_factor_is_nan_exactly_when_the_step_is_not_finite() {
        let dev = candle_core::Device::Cpu;
        let held = |x: f32| Deferred::Device(Tensor::new(x, &dev).unwrap());
        let clip = |loss: f64, norm: f64, sticky: Option<&mut Tensor>| {
            let s = GradScale {
                scale: 0.5,
                clip: held(0.25),
            };
            let bad = guard(&Deferred::Host(loss), &held(norm as f32), sticky, &dev).unwrap();
            let g = s.guarded(&bad).unwrap();
            assert_eq!(g.scale, 0.5);
            g.clip.read().unwrap()
        };
        assert_eq!(clip(2.0, 3.0, None), 0.25);
        for (loss, norm) in [
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
            (f64::NEG_INFINITY, 1.0),
        ] {
            assert!(clip(loss, norm, None).is_nan(), "{loss} {norm}");
        }
        let mut sticky = Tensor::new(0f32, &dev).unwrap();
        assert_eq!(clip(2.0, 3.0, Some(&mut sticky)), 0.25);
        assert!(clip(f64::NAN, 3.0, Some(&mut sticky)).is_nan());
        assert!(clip(2.0, 3.0, Some(&mut sticky)).is_nan(), "sticky");
        // A host factor (no clipping) is guarded the same way.
        let bad = guard(&Deferred::Host(f64::NAN), &Deferred::Host(1.0), None, &dev).unwrap();
        let plain = GradScale::plain(1.0).guarded(&bad).unwrap();
        assert!(plain.clip.read().unwrap().is_nan());
    }

    /// Clipping computed from a host norm and from a tensor-held one (the GPU's way, here on the CPU)
    /// agree with PyTorch's `clip_grad_norm_` factor.
    #[test]
    fn clipping_factor_on_host_and_device_agree() {
        let sq = 400.0f64; // Σg² of the summed gradients: norm 20, scaled by 1/4 → 5
        let held = Deferred::Device(Tensor::new(sq as f32, &candle_core::Device::Cpu).unwrap());
        for (max_norm, want) in [(0.0, 1.0), (10.0, 1.0), (2.5, 2.5 / (5.0 + 1e-6))] {
            for sq in [Deferred::Host(sq), held.clone()] {
                let (s, norm) = GradScale::clipped(0.25, &sq, max_norm).unwrap();
                assert_eq!(s.scale, 0.25);
                assert!((norm.read().unwrap() - 5.0).abs() < 1e-6);
                let clip = s.clip.read().unwrap();
                assert!(
                    (clip - want).abs() < 1e-6,
                    "max {max_norm}: {clip} vs {want}"
                );
            }
        }
    }
}
