//! Dropout's random masks and the parameter holders candle-nn lacks.
//!
//! candle's CPU random generator cannot be seeded, so dropout masks come from our own seeded generator
//! (on CUDA, from the device's seeded generator): every step's masks follow from (seed, step, rank),
//! which is what resuming relies on.

use candle_core::{DType, Device, Tensor};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use crate::error::Result;

/// The source of dropout masks for one training step. Seeding it from (seed, step, rank) makes every
/// step's masks reproducible without saving generator state (what resuming relies on).
pub struct DropoutRng {
    host: SmallRng,
}

impl DropoutRng {
    /// A generator for `device`; on CUDA this also reseeds the device's generator.
    pub fn new(seed: u64, device: &Device) -> Result<DropoutRng> {
        if device.is_cuda() {
            device.set_seed(seed)?;
        }
        Ok(DropoutRng {
            host: SmallRng::seed_from_u64(seed),
        })
    }

    /// The seed for `step` of process `rank` in a run seeded with `seed`.
    pub fn step_seed(seed: u64, step: u64, rank: u64) -> u64 {
        // SplitMix-style mixing so nearby (seed, step, rank) give unrelated streams.
        let mut z = seed
            ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ rank.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A seed for a mask drawn on the device (the fused attention kernel's hash mask).
    pub(crate) fn next_seed(&mut self) -> u64 {
        self.host.next_u64()
    }

    /// `n` keep-mask bytes (1 = keep, with probability 1−p) from the host stream.
    pub(crate) fn keep_bytes(&mut self, n: usize, p: f64) -> Vec<u8> {
        crate::kernels::keep_bytes(&mut self.host, n, p)
    }

    /// A keep-mask for `like` in the kernels' form: bytes on the CPU, a scaled f32 mask elsewhere.
    pub(crate) fn keep_mask(&mut self, like: &Tensor, p: f64) -> Result<crate::kernels::Mask> {
        let tensor = if crate::kernels::on_cpu(like) {
            let bytes = crate::kernels::keep_bytes(&mut self.host, like.elem_count(), p);
            Tensor::from_vec(bytes, like.shape(), like.device())?
        } else {
            self.mask(like, p)?
        };
        Ok(crate::kernels::Mask { tensor, p })
    }

    /// A keep-mask scaled by 1/(1−p): each element is 1/(1−p) with probability 1−p, else 0.
    pub(crate) fn mask(&mut self, like: &Tensor, p: f64) -> Result<Tensor> {
        let scale = 1.0 / (1.0 - p);
        let device = like.device();
        if device.is_cpu() {
            // Four 16-bit draws per 64-bit random number: keep when the draw is below (1−p)·2¹⁶
            // (the keep probability is exact to 2⁻¹⁶).
            let threshold = ((1.0 - p) * 65536.0).round() as u64;
            let n = like.elem_count();
            let mut data = Vec::with_capacity(n + 3);
            while data.len() < n {
                let r = self.host.next_u64();
                for k in 0..4 {
                    let keep = (r >> (16 * k)) & 0xFFFF < threshold;
                    data.push(if keep { scale as f32 } else { 0.0 });
                }
            }
            data.truncate(n);
            Ok(Tensor::from_vec(data, like.shape(), device)?.to_dtype(like.dtype())?)
        } else {
            let u = Tensor::rand(0f32, 1f32, like.shape(), device)?;
            Ok((u.ge(p)?.to_dtype(DType::F32)? * scale)?.to_dtype(like.dtype())?)
        }
    }
}

/// A LayerNorm's parameters (the computation is `ops::layer_norm_fwd` / `layer_norm_bwd`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> LayerNorm {
        LayerNorm { weight, bias, eps }
    }
}
