//! AdamW's element update (PyTorch's algorithm, decoupled weight decay), in place: the CPU loop on a
//! span of a parameter, the CUDA kernel on a whole parameter (`kernels/adamw.cu`, optionally also
//! writing the bf16 compute copy), and the composed tensor-op version the fused ones are tested
//! against. The optimiser's state (moments, which embedding rows ever had a gradient) is the caller's.

use candle_core::{DType, Tensor};

use crate::error::{KernelError, Result};
use crate::launch::{self, Exec, Launch, Ptr};
use crate::on_gpu;

/// One step's constants for a parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Multiplies the raw gradient (1/count, and the clipping factor when the host knows it).
    pub grad_scale: f32,
    /// lr · weight_decay.
    pub lr_wd: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// lr / (1 − β1ᵗ).
    pub step_size: f32,
    /// √(1 − β2ᵗ).
    pub bc2_sqrt: f32,
}

impl AdamWStep {
    /// The update of a span of one parameter, in place (the CPU kernel, at the CPU's tier).
    #[inline]
    pub fn cpu(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        adamw_span(self, p, g, m, v)
    }

    /// The update of a parameter on its GPU, in place: `p`, `m`, `v` (contiguous f32), the gradient
    /// `g`, `clip` (one f32 on the GPU: the clipping factor there, multiplying `grad_scale`) and, when
    /// given, the bf16 compute copy `half` written with the new weights.
    pub fn gpu(
        &self,
        [p, g, m, v]: [&Tensor; 4],
        clip: &Tensor,
        half: Option<&Tensor>,
    ) -> Result<()> {
        for (t, what) in [(p, "parameter"), (m, "first moment"), (v, "second moment")] {
            if !t.is_contiguous() || t.dtype() != DType::F32 {
                return Err(KernelError::Internal(format!(
                    "AdamW updates a contiguous f32 {what} in place"
                )));
            }
        }
        if half.is_some_and(|h| !h.is_contiguous() || h.elem_count() != p.elem_count()) {
            return Err(KernelError::Internal(
                "the bf16 copy must be a contiguous tensor of the parameter's size".into(),
            ));
        }
        let g = g.to_dtype(DType::F32)?;
        let n = p.elem_count();
        on_gpu(
            &[Some(p), Some(&g), Some(m), Some(v), Some(clip), half],
            &[],
            |e, i, _| self.launches(e, [i[0], i[1], i[2], i[3], i[4], i[5]], n),
        )?;
        Ok(())
    }

    /// The kernel's launch for `[p, g, m, v, clip, half (or null)]` of `n` values.
    pub(crate) fn launches(
        &self,
        e: &mut dyn Exec,
        [p, g, m, v, clip, half]: [Ptr; 6],
        n: usize,
    ) -> Result<()> {
        let (grid, block) = launch::per_element(n);
        let kernel = if half == Ptr::NULL {
            "nerpos_adamw"
        } else {
            "nerpos_adamw_half"
        };
        let mut l = Launch::new(kernel, grid, block)
            .arg(p)
            .arg(g)
            .arg(m)
            .arg(v)
            .arg(clip);
        if half != Ptr::NULL {
            l = l.arg(half);
        }
        l = l.arg(n as u64);
        for s in [
            self.grad_scale,
            self.lr_wd,
            self.beta1,
            self.beta2,
            self.eps,
            self.step_size,
            self.bc2_sqrt,
        ] {
            l = l.arg(s);
        }
        e.launch(l)
    }

    /// The composed version (tensor ops, any device): the new (p, m, v), with `clip` (when given)
    /// multiplying the scaled gradient. A non-finite `clip` leaves the step out, as the kernels do:
    /// (p, m, v) come back as they were.
    pub fn reference(
        &self,
        [p, g, m, v]: [&Tensor; 4],
        clip: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let mut g = (g.to_dtype(DType::F32)? * f64::from(self.grad_scale))?;
        if let Some(clip) = clip {
            g = g.broadcast_mul(clip)?;
        }
        let (b1, b2) = (f64::from(self.beta1), f64::from(self.beta2));
        let decayed = (p * (1.0 - f64::from(self.lr_wd)))?;
        let m_new = (m + ((&g - m)? * (1.0 - b1))?)?;
        let v_new = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
        let denom = ((v_new.sqrt()? / f64::from(self.bc2_sqrt))? + f64::from(self.eps))?;
        let update = ((&m_new / denom)? * f64::from(self.step_size))?;
        let p_new = (decayed - update)?;
        let Some(clip) = clip else {
            return Ok((p_new, m_new, v_new));
        };
        // x − x is 0 exactly for a finite x, NaN for NaN and ±Inf.
        let finite = clip.sub(clip)?.eq(0.0)?.reshape(())?;
        let pick =
            |new: Tensor, old: &Tensor| finite.broadcast_as(old.shape())?.where_cond(&new, old);
        Ok((pick(p_new, p)?, pick(m_new, m)?, pick(v_new, v)?))
    }
}

#[inline(always)]
fn adamw_kernel(c: &AdamWStep, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let decay = 1.0 - c.lr_wd;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let gi = g * c.grad_scale;
        *p *= decay;
        *m += (1.0 - c.beta1) * (gi - *m);
        *v = c.beta2 * *v + (1.0 - c.beta2) * gi * gi;
        let denom = v.sqrt() / c.bc2_sqrt + c.eps;
        *p -= c.step_size * *m / denom;
    }
}

crate::host::dispatch!(adamw_span, adamw_span_at, adamw_kernel, (c: &AdamWStep, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::{self, EmuExec};

    fn step() -> AdamWStep {
        let (lr, wd, b1, b2) = (1e-3f64, 0.01, 0.9f64, 0.999f64);
        AdamWStep {
            grad_scale: 0.25,
            lr_wd: (lr * wd) as f32,
            beta1: b1 as f32,
            beta2: b2 as f32,
            eps: 1e-8,
            step_size: (lr / (1.0 - b1)) as f32,
            bc2_sqrt: (1.0 - b2).sqrt() as f32,
        }
    }

    /// Relative error against each value's own magnitude.
    fn close(what: &str, a: &[f32], b: &[f32]) {
        let e = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / (1e-6 + y.abs()))
            .fold(0f32, f32::max);
        assert!(e < 1e-5, "{what}: relative error {e:e}");
    }

    fn data(n: usize) -> (Vec<f32>, Vec<f32>) {
        let p = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let g = (0..n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 10.0)
            .collect();
        (p, g)
    }

    /// The composed update leaves a step with a non-finite factor out, as the kernels do.
    #[test]
    fn the_composed_update_leaves_a_guarded_step_out() {
        let n = 50;
        let (p, g) = data(n);
        let t = |x: &[f32]| Tensor::from_slice(x, n, &candle_core::Device::Cpu).unwrap();
        let (m, v) = (vec![0.1f32; n], vec![0.2f32; n]);
        for guard in [f32::NAN, f32::INFINITY] {
            let clip = Tensor::new(&[guard], &candle_core::Device::Cpu).unwrap();
            let (rp, rm, rv) = step()
                .reference([&t(&p), &t(&g), &t(&m), &t(&v)], Some(&clip))
                .unwrap();
            let flat = |t: Tensor| t.to_vec1::<f32>().unwrap();
            assert_eq!(
                (flat(rp), flat(rm), flat(rv)),
                (p.clone(), m.clone(), v.clone())
            );
        }
    }

    #[test]
    fn cpu_update_matches_the_composed_one() {
        let n = 1000;
        let (p, g) = data(n);
        let s = step();
        let (mut pc, mut m, mut v) = (p.clone(), vec![0.1f32; n], vec![0.2f32; n]);
        let t = |x: &[f32]| Tensor::from_slice(x, n, &candle_core::Device::Cpu).unwrap();
        let (rp, rm, rv) = s.reference([&t(&p), &t(&g), &t(&m), &t(&v)], None).unwrap();
        s.cpu(&mut pc, &g, &mut m, &mut v);
        let flat = |t: Tensor| t.to_vec1::<f32>().unwrap();
        emu::close("weights", &pc, &flat(rp), 1e-6);
        emu::close("first moment", &m, &flat(rm), 1e-6);
        emu::close("second moment", &v, &flat(rv), 1e-6);
    }

    /// Both kernels on the emulator against the CPU update (1,000 values: several blocks and
    /// grid-stride rounds), the clipping factor read from device memory (2 × 0.25 here); the bf16 copy
    /// is exactly the new weight cast to bf16 (round to nearest even).
    #[test]
    fn emulated_kernels_equal_the_cpu_update() {
        let Some(lib) = emu::emulator("adamw::tests::emulated_kernels_equal_the_cpu_update") else {
            return;
        };
        let n = 1000;
        let (p, g) = data(n);
        let s = step();
        let (mut want_p, mut want_m, mut want_v) = (p.clone(), vec![0f32; n], vec![0f32; n]);
        AdamWStep {
            grad_scale: 0.5,
            ..s
        }
        .cpu(&mut want_p, &g, &mut want_m, &mut want_v);
        let clip = [2.0f32];
        for with_copy in [false, true] {
            let (mut pk, mut m, mut v) = (p.clone(), vec![0f32; n], vec![0f32; n]);
            let mut h = vec![half::bf16::ZERO; n];
            let half_at = if with_copy {
                emu::ptr_mut(&mut h)
            } else {
                Ptr::NULL
            };
            let ptrs = [
                emu::ptr_mut(&mut pk),
                emu::ptr(&g),
                emu::ptr_mut(&mut m),
                emu::ptr_mut(&mut v),
                emu::ptr(&clip),
                half_at,
            ];
            s.launches(&mut EmuExec::new(lib), ptrs, n).unwrap();
            let what = if with_copy {
                "bf16-copy kernel"
            } else {
                "plain kernel"
            };
            close(&format!("weights ({what})"), &pk, &want_p);
            close(&format!("first moment ({what})"), &m, &want_m);
            close(&format!("second moment ({what})"), &v, &want_v);
            if with_copy {
                for (i, (&b, &w)) in h.iter().zip(&pk).enumerate() {
                    assert_eq!(
                        b.to_bits(),
                        half::bf16::from_f32(w).to_bits(),
                        "copy of value {i}"
                    );
                }
            }
        }
    }

    /// A non-finite clipping factor is the trainer's guard of a non-finite step: both kernels leave
    /// the weights, the moments and the bf16 copy exactly as they were (no host read-back decides it).
    #[test]
    fn emulated_kernels_leave_a_guarded_step_out() {
        let Some(lib) = emu::emulator("adamw::tests::emulated_kernels_leave_a_guarded_step_out")
        else {
            return;
        };
        let n = 300;
        let (p, g) = data(n);
        for guard in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for with_copy in [false, true] {
                let (mut pk, mut m, mut v) = (p.clone(), vec![0.1f32; n], vec![0.2f32; n]);
                let mut h = vec![half::bf16::ONE; n];
                let half_at = if with_copy {
                    emu::ptr_mut(&mut h)
                } else {
                    Ptr::NULL
                };
                let clip = [guard];
                let ptrs = [
                    emu::ptr_mut(&mut pk),
                    emu::ptr(&g),
                    emu::ptr_mut(&mut m),
                    emu::ptr_mut(&mut v),
                    emu::ptr(&clip),
                    half_at,
                ];
                step().launches(&mut EmuExec::new(lib), ptrs, n).unwrap();
                assert_eq!(pk, p, "weights ({guard}, copy {with_copy})");
                assert!(m.iter().all(|&x| x == 0.1) && v.iter().all(|&x| x == 0.2));
                assert!(h.iter().all(|&x| x == half::bf16::ONE));
            }
        }
    }

    /// A diverged weight stays diverged in the bf16 copy: NaN stays NaN and ±Inf stays ±Inf (the
    /// emulator gives NaNs the GPU's canonical bits, 0x7FFFFFFF, whose naive rounding to bf16 carries
    /// into the sign bit and reads −0.0 — a weight silently zeroed, a loss that stays finite).
    #[test]
    fn nan_and_inf_survive_the_bf16_copy() {
        let Some(lib) = emu::emulator("adamw::tests::nan_and_inf_survive_the_bf16_copy") else {
            return;
        };
        let mut p = vec![0.5f32, f32::INFINITY, f32::NEG_INFINITY, 1.0];
        let g = vec![f32::NAN, 0.0, 0.0, 0.1];
        let (mut m, mut v) = (vec![0f32; 4], vec![0f32; 4]);
        let mut h = vec![half::bf16::ZERO; 4];
        let clip = [1.0f32];
        let ptrs = [
            emu::ptr_mut(&mut p),
            emu::ptr(&g),
            emu::ptr_mut(&mut m),
            emu::ptr_mut(&mut v),
            emu::ptr(&clip),
            emu::ptr_mut(&mut h),
        ];
        step().launches(&mut EmuExec::new(lib), ptrs, 4).unwrap();
        assert!(
            p[0].is_nan() && h[0].is_nan(),
            "NaN weight, copy {:#06x}",
            h[0].to_bits()
        );
        assert_eq!(h[1], half::bf16::INFINITY);
        assert_eq!(h[2], half::bf16::NEG_INFINITY);
        assert_eq!(h[3], half::bf16::from_f32(p[3]));
        // The CPU update gives the same: NaN and the infinities stay.
        let (mut pc, mut mc, mut vc) = (
            vec![0.5f32, f32::INFINITY, f32::NEG_INFINITY, 1.0],
            vec![0f32; 4],
            vec![0f32; 4],
        );
        AdamWStep {
            grad_scale: 1.0,
            ..step()
        }
        .cpu(&mut pc, &g, &mut mc, &mut vc);
        assert!(pc[0].is_nan() && pc[1] == f32::INFINITY && pc[2] == f32::NEG_INFINITY);
    }
}
