//! AdamW (PyTorch's algorithm, decoupled weight decay), the linear warm-up/decay schedule, and global
//! gradient-norm clipping. Each parameter's update is one fused pass over its storage, in place: a
//! loop on the CPU, one kernel launch on CUDA (`nerpos-model/kernels/adamw.cu`, in the fatbin built
//! with the crate) — instead of ~10 tensor ops, each a kernel launch and a temporary, per parameter. The composed tensor-op version stays as
//! the reference (`fused: false`), and for devices without a fused kernel.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor, Var};
use nerpos_model::{Deferred, Grad};
use rayon::prelude::*;

/// What the optimiser multiplies the summed gradients by: `scale` (1/count, known on the host) times
/// the clipping factor `clip`, which a GPU computes from the gradient norm and keeps (no read-back per
/// step).
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

    /// scale · clip, read (a synchronisation if the factor is on a GPU).
    fn host(&self) -> candle_core::Result<f64> {
        Ok(self.scale * self.clip.read()?)
    }
}

/// Hugging Face's `get_linear_schedule_with_warmup`: the multiplier of the base learning rate at
/// optimiser step `step` (0-based: the first update uses step 0).
pub fn lr_factor(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        ((total as f64 - step as f64) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
    }
}

/// Whether a parameter is decayed by default: not biases, LayerNorm weights or embeddings.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias")
        || name.contains("LayerNorm")
        || name.contains("embeddings")
        || name.starts_with("pos_embedding"))
}

/// Whether a parameter is an embedding table (rows looked up by id).
fn is_embedding(name: &str) -> bool {
    name.contains("embeddings.") && !name.contains("LayerNorm") || name.starts_with("pos_embedding")
}

/// Whether a parameter belongs to the new head (POS embedding, classifier).
pub fn is_head(name: &str) -> bool {
    name.starts_with("pos_embedding") || name.starts_with("classifier")
}

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decay_all: bool,
}

struct ParamState {
    name: String,
    var: Var,
    decay: bool,
    head: bool,
    m: Mutex<Vec<f32>>,
    v: Mutex<Vec<f32>>,
    /// Embedding tables (CPU): the row width, and which rows have ever had a gradient. A row that
    /// never had one has zero moments, so its update is exactly zero while it is not decayed: the
    /// update skips it (most of a vocabulary never occurs in a fine-tuning corpus).
    rows: Option<(usize, Mutex<Vec<bool>>)>,
    /// Moments as device tensors, for devices other than the CPU.
    device_moments: Option<(Tensor, Tensor)>,
    /// The bf16 compute copy of this parameter, written by the fused device update (see
    /// [`AdamW::write_compute_copy`]).
    half: Option<Tensor>,
}

pub struct AdamW {
    config: AdamWConfig,
    /// Whether device updates use the fused kernel (true) or composed tensor ops (false).
    pub fused: bool,
    params: Vec<ParamState>,
    /// Updates done so far (PyTorch's `step` counter, for bias correction).
    pub steps: u64,
    /// A 1.0 on the parameters' GPU: the fused kernel's clipping factor when the host knows it.
    one: Option<Tensor>,
}

/// One parameter's update, fused, in place on the CPU.
struct FusedStep<'a> {
    state: &'a ParamState,
    grad: &'a Grad,
    /// Multiplies the raw gradient: 1/count and the clipping factor.
    grad_scale: f32,
    lr: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
}

impl InplaceOp1 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "nerpos-adamw"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (a, b) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("non-contiguous parameter".into()))?;
        let CpuStorage::F32(p) = storage else {
            candle_core::bail!(
                "AdamW: parameter {} is not f32 ({:?})",
                self.state.name,
                storage.dtype()
            );
        };
        let p = &mut p[a..b];
        match self.grad {
            Grad::Rows { ids, values, .. } if self.state.rows.is_some() => {
                with_cpu_slice(values, |values| self.rows_update(p, ids, values))
            }
            Grad::Rows { .. } => {
                let dense = self
                    .grad
                    .to_dense()
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                with_cpu_slice(&dense, |g| self.dense_update(p, g))
            }
            Grad::Dense(g) => with_cpu_slice(g, |g| self.dense_update(p, g)),
        }
    }
}

impl FusedStep<'_> {
    /// The update with a dense gradient, in parallel over chunks of whole rows (embedding tables,
    /// skipping rows that never had a gradient) or of elements.
    fn dense_update(&self, p: &mut [f32], g: &[f32]) {
        let mut m = self.state.m.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = self.state.v.lock().unwrap_or_else(|e| e.into_inner());
        let decayed = self.lr * self.weight_decay != 0.0;
        let (width, mut touched) = match &self.state.rows {
            Some((w, t)) if !decayed => (*w, Some(t.lock().unwrap_or_else(|e| e.into_inner()))),
            _ => (p.len().clamp(1, 16_384), None),
        };
        let rows_per_task = (65_536 / width).max(1);
        let chunk = rows_per_task * width;
        let tasks = p
            .par_chunks_mut(chunk)
            .zip(g.par_chunks(chunk))
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk));
        match touched.as_deref_mut() {
            Some(touched) => tasks.zip(touched.par_chunks_mut(rows_per_task)).for_each(
                |((((p, g), m), v), touched)| {
                    for (r, t) in touched.iter_mut().enumerate() {
                        let span = r * width..(r + 1) * width;
                        if !*t && g[span.clone()].iter().all(|&x| x == 0.0) {
                            continue;
                        }
                        *t = true;
                        self.update(
                            &mut p[span.clone()],
                            &g[span.clone()],
                            &mut m[span.clone()],
                            &mut v[span],
                        );
                    }
                },
            ),
            None => tasks.for_each(|(((p, g), m), v)| self.update(p, g, m, v)),
        }
    }

    /// The update of an embedding table from the rows `ids` (sorted) of its gradient: those rows
    /// with their gradient, the other rows that ever had one (or all, when decayed) with a zero
    /// gradient — exactly the dense update — and nothing for the rest.
    fn rows_update(&self, p: &mut [f32], ids: &[u32], values: &[f32]) {
        let Some((width, touched)) = &self.state.rows else {
            return;
        };
        let width = *width;
        let mut m = self.state.m.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = self.state.v.lock().unwrap_or_else(|e| e.into_inner());
        let mut touched = touched.lock().unwrap_or_else(|e| e.into_inner());
        let decayed = self.lr * self.weight_decay != 0.0;
        let rows_per_task = (65_536 / width).max(1);
        let chunk = rows_per_task * width;
        let zeros = vec![0f32; width];
        p.par_chunks_mut(chunk)
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk))
            .zip(touched.par_chunks_mut(rows_per_task))
            .enumerate()
            .for_each(|(c, (((p, m), v), touched))| {
                let first = c * rows_per_task;
                let mut k = ids.partition_point(|&i| (i as usize) < first);
                for (r, t) in touched.iter_mut().enumerate() {
                    let g = if ids.get(k).is_some_and(|&i| i as usize == first + r) {
                        k += 1;
                        *t = true;
                        &values[(k - 1) * width..k * width]
                    } else if *t || decayed {
                        &zeros[..]
                    } else {
                        continue;
                    };
                    let span = r * width..(r + 1) * width;
                    self.update(&mut p[span.clone()], g, &mut m[span.clone()], &mut v[span]);
                }
            });
    }
}

impl FusedStep<'_> {
    /// PyTorch's AdamW on a span of one parameter, in place.
    #[inline]
    fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let decay = 1.0 - self.lr * self.weight_decay;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let gi = g * self.grad_scale;
            *p *= decay;
            *m += (1.0 - self.beta1) * (gi - *m);
            *v = self.beta2 * *v + (1.0 - self.beta2) * gi * gi;
            let denom = v.sqrt() / self.bias_correction2_sqrt + self.eps;
            *p -= self.step_size * *m / denom;
        }
    }
}

/// A gradient as one dense tensor (devices without a row update).
fn dense(g: &Grad) -> candle_core::Result<Tensor> {
    g.to_dense()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Runs `f` on the values of a CPU f32 tensor.
fn with_cpu_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(s) = &*s else {
        candle_core::bail!("expected a CPU tensor");
    };
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("non-contiguous tensor".into()))?;
    Ok(f(&s.as_slice::<f32>()?[a..b]))
}

/// Whether `t`'s device has a fused update kernel (CUDA builds, f32 parameters on a GPU).
fn fused_on_device(t: &Tensor) -> bool {
    cfg!(feature = "cuda") && t.device().is_cuda() && t.dtype() == DType::F32
}

/// One parameter's update on a GPU: p, m, v updated in place by one kernel.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct DeviceStep<'a> {
    grad: &'a Tensor,
    m: &'a Tensor,
    v: &'a Tensor,
    /// The bf16 compute copy to write the new value into, rounded to nearest even.
    half: Option<&'a Tensor>,
    /// One f32 on the GPU multiplying `grad_scale` (the clipping factor, computed there).
    clip: &'a Tensor,
    /// grad_scale, lr·weight_decay, β1, β2, ε, lr/(1−β1ᵗ), √(1−β2ᵗ).
    scalars: [f32; 7],
}

/// The update kernels' source, for the test that runs them on the CUDA emulator against the CPU
/// update (`tests/adamw_kernel.rs`).
#[doc(hidden)]
pub const ADAMW_KERNEL: &str = nerpos_model::device_ops::ADAMW_SOURCE;

impl InplaceOp1 for DeviceStep<'_> {
    fn name(&self) -> &'static str {
        "nerpos-adamw-device"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("the device AdamW step is for GPU parameters")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<()> {
        use candle_core::cuda_backend::WrapErr;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};

        // Each buffer: n contiguous f32 from its layout's offset (gradients are often views, e.g. the
        // query/key/value slices of one fused projection's gradient).
        fn span(l: &Layout, n: usize, what: &str) -> candle_core::Result<std::ops::Range<usize>> {
            match l.contiguous_offsets() {
                Some((a, b)) if b - a == n => Ok(a..b),
                _ => {
                    candle_core::bail!("AdamW: the {what} is not a contiguous buffer of {n} values")
                }
            }
        }
        let n = layout.shape().elem_count();
        let ps = span(layout, n, "parameter")?;
        let (gs, gl) = self.grad.storage_and_layout();
        let (ms, ml) = self.m.storage_and_layout();
        let (vs, vl) = self.v.storage_and_layout();
        let (cs, cl) = self.clip.storage_and_layout();
        let (gr, mr, vr, cr) = (
            span(gl, n, "gradient")?,
            span(ml, n, "first moment")?,
            span(vl, n, "second moment")?,
            span(cl, 1, "clipping factor")?,
        );
        let (Storage::Cuda(gs), Storage::Cuda(ms), Storage::Cuda(vs), Storage::Cuda(cs)) =
            (&*gs, &*ms, &*vs, &*cs)
        else {
            candle_core::bail!(
                "AdamW: gradient, moments and clipping factor must be on the parameter's GPU"
            );
        };
        let dev = storage.device().clone();
        let name = if self.half.is_some() {
            "nerpos_adamw_half"
        } else {
            "nerpos_adamw"
        };
        let func = nerpos_model::device_ops::cuda_function(&dev, name)?;
        let g = gs.as_cuda_slice::<f32>()?.slice(gr);
        let m = ms.as_cuda_slice::<f32>()?.slice(mr);
        let v = vs.as_cuda_slice::<f32>()?.slice(vr);
        let clip = cs.as_cuda_slice::<f32>()?.slice(cr);
        let half = self.half.map(Tensor::storage_and_layout);
        let h = match &half {
            Some((hs, hl)) => {
                let Storage::Cuda(hs) = &**hs else {
                    candle_core::bail!("AdamW: the bf16 copy must be on the parameter's GPU");
                };
                Some(
                    hs.as_cuda_slice::<half::bf16>()?
                        .slice(span(hl, n, "bf16 copy")?),
                )
            }
            None => None,
        };
        let mut p = storage.as_cuda_slice_mut::<f32>()?.slice_mut(ps);
        let n64 = n as u64;
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).clamp(1, 4096) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        // m, v and the bf16 copy are written through: the kernel owns their buffers for this launch.
        b.arg(&mut p).arg(&g).arg(&m).arg(&v).arg(&clip);
        if let Some(h) = &h {
            b.arg(h);
        }
        b.arg(&n64);
        for s in &self.scalars {
            b.arg(s);
        }
        // SAFETY: the views hold n elements each (checked above) and the kernel touches only [0, n).
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }
}

impl AdamW {
    /// An optimiser over `params` (name, variable), in the given (sorted) order.
    pub fn new<'a>(
        params: impl Iterator<Item = (&'a str, &'a Var)>,
        config: AdamWConfig,
    ) -> candle_core::Result<AdamW> {
        AdamW::build(params, config, false)
    }

    /// The plain version on any device, CPU included: every update composed of tensor ops (the
    /// reference the fused updates are tested against).
    pub fn new_composed<'a>(
        params: impl Iterator<Item = (&'a str, &'a Var)>,
        config: AdamWConfig,
    ) -> candle_core::Result<AdamW> {
        let mut opt = AdamW::build(params, config, true)?;
        opt.fused = false;
        Ok(opt)
    }

    fn build<'a>(
        params: impl Iterator<Item = (&'a str, &'a Var)>,
        config: AdamWConfig,
        composed: bool,
    ) -> candle_core::Result<AdamW> {
        let params = params
            .map(|(name, var)| {
                let cpu = var.device().is_cpu() && !composed;
                let n = if cpu { var.elem_count() } else { 0 };
                let rows = match var.dims() {
                    [r, w] if cpu && is_embedding(name) => Some((*w, Mutex::new(vec![false; *r]))),
                    _ => None,
                };
                Ok(ParamState {
                    name: name.to_owned(),
                    var: var.clone(),
                    decay: config.decay_all || decays(name),
                    head: is_head(name),
                    m: Mutex::new(vec![0.0; n]),
                    v: Mutex::new(vec![0.0; n]),
                    rows,
                    device_moments: if cpu {
                        None
                    } else {
                        Some((var.zeros_like()?, var.zeros_like()?))
                    },
                    half: None,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Made once: the fused kernel's clipping factor when the host knows it.
        let one = match params.first() {
            Some(p) if fused_on_device(p.var.as_tensor()) => {
                Some(Tensor::ones(1, DType::F32, p.var.device())?)
            }
            _ => None,
        };
        Ok(AdamW {
            config,
            params,
            steps: 0,
            fused: true,
            one,
        })
    }

    /// Σ g² over all gradients (before any scaling).
    pub fn squared_norm(grads: &BTreeMap<String, Grad>) -> candle_core::Result<Deferred> {
        // CPU f32 gradients: summed in place, in parallel, in f64. Others: summed on their device
        // and left there (a GPU's is not read back). Row gradients: their rows.
        let mut host = 0f64;
        let mut total: Option<Tensor> = None;
        for g in grads.values() {
            let g = match g {
                Grad::Dense(t) => t,
                Grad::Rows { values, .. } => values,
            };
            if g.device().is_cpu() && g.dtype() == DType::F32 {
                // f32 partial sums of 1,024 squares (vectorised), added up in f64.
                host += with_cpu_slice(g, |x| {
                    x.par_chunks(65_536)
                        .map(|c| {
                            c.chunks(1024)
                                .map(|k| f64::from(k.iter().map(|&v| v * v).sum::<f32>()))
                                .sum::<f64>()
                        })
                        .sum::<f64>()
                })?;
                continue;
            }
            let s = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + s)?,
                None => s,
            });
        }
        Ok(match total {
            None => Deferred::Host(host),
            Some(t) if t.device().is_cpu() => {
                Deferred::Host(host + f64::from(t.to_scalar::<f32>()?))
            }
            Some(t) => Deferred::Device(t).add(&Deferred::Host(host))?,
        })
    }

    /// One update: gradients are raw sums over the optimiser batch and are multiplied by `grad_scale`
    /// (1/count, times the clipping factor). `lr` and `head_lr` are this step's learning rates.
    pub fn step(
        &mut self,
        grads: &BTreeMap<String, Grad>,
        grad_scale: &GradScale,
        lr: f64,
        head_lr: f64,
    ) -> candle_core::Result<()> {
        // The factor as device updates take it: the host part, and the clipping factor if it is on
        // the device (the CPU loop reads the whole factor: a host number there).
        let (device_scale, device_clip) = match &grad_scale.clip {
            Deferred::Host(c) => (grad_scale.scale * c, None),
            Deferred::Device(t) => (grad_scale.scale, Some(t.to_dtype(DType::F32)?)),
        };
        self.steps += 1;
        let t = self.steps as i32;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for p in &mut self.params {
            let g = grads
                .get(&p.name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {}", p.name)))?;
            let lr = if p.head { head_lr } else { lr };
            let wd = if p.decay { c.weight_decay } else { 0.0 };
            match &p.device_moments {
                None => p.var.as_tensor().inplace_op1(&FusedStep {
                    state: p,
                    grad: g,
                    grad_scale: grad_scale.host()? as f32,
                    lr: lr as f32,
                    weight_decay: wd as f32,
                    beta1: c.beta1 as f32,
                    beta2: c.beta2 as f32,
                    eps: c.eps as f32,
                    step_size: (lr / bc1) as f32,
                    bias_correction2_sqrt: bc2.sqrt() as f32,
                })?,
                Some((m, v)) if self.fused && fused_on_device(p.var.as_tensor()) => {
                    let g = dense(g)?.to_dtype(DType::F32)?.contiguous()?;
                    let clip = match (&device_clip, &self.one) {
                        (Some(t), _) => t.reshape(1)?,
                        (None, Some(one)) => one.clone(),
                        (None, None) => candle_core::bail!("AdamW: no 1.0 on the parameters' GPU"),
                    };
                    p.var.as_tensor().inplace_op1(&DeviceStep {
                        grad: &g,
                        m,
                        v,
                        half: p.half.as_ref(),
                        clip: &clip,
                        scalars: [
                            device_scale as f32,
                            (lr * wd) as f32,
                            c.beta1 as f32,
                            c.beta2 as f32,
                            c.eps as f32,
                            (lr / bc1) as f32,
                            bc2.sqrt() as f32,
                        ],
                    })?;
                }
                Some((m, v)) => {
                    let mut g = (dense(g)?.to_dtype(DType::F32)? * device_scale)?;
                    if let Some(clip) = &device_clip {
                        g = g.broadcast_mul(clip)?;
                    }
                    let decayed = (p.var.as_tensor() * (1.0 - lr * wd))?;
                    let m_new = (m + ((&g - m)? * (1.0 - c.beta1))?)?;
                    let v_new = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let denom = ((v_new.sqrt()? / bc2.sqrt())? + c.eps)?;
                    let update = ((&m_new / denom)? * (lr / bc1))?;
                    p.var.set(&(decayed - update)?)?;
                    p.device_moments = Some((m_new, v_new));
                }
            }
        }
        Ok(())
    }

    /// Makes every update also write the parameter, rounded to bf16, into `copy` (a bf16 model of the
    /// same parameters on the same GPU), so that it need not be refreshed by a cast per parameter before
    /// each step. Returns whether every parameter's update will (the fused update on a GPU, a bf16
    /// tensor of the parameter's shape in `copy`); when not, nothing is attached.
    pub fn write_compute_copy(
        &mut self,
        copy: &nerpos_model::BertNerPos,
    ) -> candle_core::Result<bool> {
        let mut halves = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let fits = copy.params.get(&p.name).filter(|h| {
                self.fused
                    && p.device_moments.is_some()
                    && fused_on_device(p.var.as_tensor())
                    && h.dtype() == DType::BF16
                    && h.shape() == p.var.shape()
                    && h.as_tensor().is_contiguous()
            });
            match fits {
                Some(h) => halves.push(h.as_tensor().clone()),
                None => return Ok(false),
            }
        }
        for (p, h) in self.params.iter_mut().zip(halves) {
            p.half = Some(h);
        }
        Ok(true)
    }

    /// The moments, by name (`m.NAME`, `v.NAME`), for a checkpoint.
    pub fn state_tensors(&self) -> candle_core::Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for p in &self.params {
            let (m, v) = match &p.device_moments {
                Some((m, v)) => (
                    m.to_device(&candle_core::Device::Cpu)?,
                    v.to_device(&candle_core::Device::Cpu)?,
                ),
                None => {
                    let shape = p.var.shape();
                    let m = p.m.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let v = p.v.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    (
                        Tensor::from_vec(m, shape, &candle_core::Device::Cpu)?,
                        Tensor::from_vec(v, shape, &candle_core::Device::Cpu)?,
                    )
                }
            };
            out.insert(format!("m.{}", p.name), m);
            out.insert(format!("v.{}", p.name), v);
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, path: &Path, steps: u64) -> candle_core::Result<()> {
        let saved = candle_core::safetensors::load(path, &candle_core::Device::Cpu)?;
        for p in &mut self.params {
            let get = |k: &str| {
                saved
                    .get(k)
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg(format!("{}: no {k}", path.display())))
            };
            let (m, v) = (
                get(&format!("m.{}", p.name))?,
                get(&format!("v.{}", p.name))?,
            );
            match &mut p.device_moments {
                Some((dm, dv)) => {
                    *dm = m.to_device(p.var.device())?;
                    *dv = v.to_device(p.var.device())?;
                }
                None => {
                    let (m, v): (Vec<f32>, Vec<f32>) =
                        (m.flatten_all()?.to_vec1()?, v.flatten_all()?.to_vec1()?);
                    // A row with any non-zero moment has had a gradient.
                    if let Some((w, touched)) = &p.rows {
                        let mut t = touched.lock().unwrap_or_else(|e| e.into_inner());
                        for (r, flag) in t.iter_mut().enumerate() {
                            let span = r * w..(r + 1) * w;
                            *flag = m[span.clone()].iter().chain(&v[span]).any(|&x| x != 0.0);
                        }
                    }
                    *p.m.lock().unwrap_or_else(|e| e.into_inner()) = m;
                    *p.v.lock().unwrap_or_else(|e| e.into_inner()) = v;
                }
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .unwrap()
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

    #[test]
    fn schedule_matches_hugging_face() {
        // warm-up 10 of 100 steps
        assert_eq!(lr_factor(0, 10, 100), 0.0);
        assert_eq!(lr_factor(5, 10, 100), 0.5);
        assert_eq!(lr_factor(10, 10, 100), 1.0);
        assert_eq!(lr_factor(55, 10, 100), 0.5);
        assert_eq!(lr_factor(100, 10, 100), 0.0);
        assert_eq!(lr_factor(0, 0, 4), 1.0);
    }

    #[test]
    fn decay_groups() {
        assert!(decays("encoder.layer.0.attention.self.query.weight"));
        assert!(decays("classifier.weight"));
        for n in [
            "classifier.bias",
            "embeddings.LayerNorm.weight",
            "embeddings.word_embeddings.weight",
            "pos_embedding.weight",
        ] {
            assert!(!decays(n), "{n}");
        }
    }

    /// The fused CPU update equals PyTorch's AdamW formula computed step by step in f64.
    #[test]
    fn fused_update_follows_pytorch_adamw() {
        let dev = candle_core::Device::Cpu;
        let var = Var::from_vec(vec![0.5f32, -1.0, 2.0], 3, &dev).unwrap();
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_all: true,
        };
        let mut opt = AdamW::new([("w", &var)].into_iter(), cfg).unwrap();
        let grads_seq = [[0.1f32, -0.2, 0.3], [0.05, 0.1, -0.4], [-0.3, 0.2, 0.0]];
        let (mut p, mut m, mut v) = ([0.5f64, -1.0, 2.0], [0f64; 3], [0f64; 3]);
        for (t, g) in grads_seq.iter().enumerate() {
            let mut grads = BTreeMap::new();
            grads.insert(
                "w".to_string(),
                Grad::Dense(Tensor::new(&g[..], &dev).unwrap()),
            );
            opt.step(&grads, &GradScale::plain(0.5), 1e-2, 1e-2)
                .unwrap();
            let step = (t + 1) as i32;
            for i in 0..3 {
                let gi = g[i] as f64 * 0.5;
                p[i] *= 1.0 - 1e-2 * 0.1;
                m[i] += 0.1 * (gi - m[i]);
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(step)).sqrt() + 1e-8;
                p[i] -= 1e-2 / (1.0 - 0.9f64.powi(step)) * m[i] / denom;
            }
        }
        let ours = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..3 {
            assert!((ours[i] as f64 - p[i]).abs() < 1e-6, "{ours:?} vs {p:?}");
        }
        // Moments survive a save and load.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        let st: std::collections::HashMap<String, Tensor> =
            opt.state_tensors().unwrap().into_iter().collect();
        candle_core::safetensors::save(&st, &path).unwrap();
        let var2 = Var::from_vec(ours.clone(), 3, &dev).unwrap();
        let mut opt2 = AdamW::new([("w", &var2)].into_iter(), cfg).unwrap();
        opt2.load_state(&path, opt.steps).unwrap();
        let mut grads = BTreeMap::new();
        grads.insert(
            "w".to_string(),
            Grad::Dense(Tensor::new(&[0.2f32, 0.2, 0.2][..], &dev).unwrap()),
        );
        opt.step(&grads, &GradScale::plain(1.0), 1e-2, 1e-2)
            .unwrap();
        opt2.step(&grads, &GradScale::plain(1.0), 1e-2, 1e-2)
            .unwrap();
        assert_eq!(
            var.as_tensor().to_vec1::<f32>().unwrap(),
            var2.as_tensor().to_vec1::<f32>().unwrap()
        );
    }

    /// The fused update (one pass per parameter) gives what the plain, tensor-op version gives.
    #[test]
    fn fused_matches_the_plain_version() {
        use rand::{Rng, SeedableRng};
        let dev = candle_core::Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let shapes: [&[usize]; 4] = [&[64, 48], &[48], &[1000], &[7, 3, 5]];
        let names = [
            "encoder.layer.0.attention.self.query.weight",
            "encoder.layer.0.attention.self.query.bias",
            "classifier.weight",
            "pos_embedding.weight",
        ];
        let init: Vec<Vec<f32>> = shapes
            .iter()
            .map(|s| {
                (0..s.iter().product::<usize>())
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect()
            })
            .collect();
        let vars = |_: ()| -> Vec<Var> {
            init.iter()
                .zip(shapes)
                .map(|(v, s)| Var::from_vec(v.clone(), s, &dev).unwrap())
                .collect()
        };
        let (a, b) = (vars(()), vars(()));
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decay_all: false,
        };
        let mut fused = AdamW::new(names.iter().copied().zip(a.iter()), cfg).unwrap();
        let mut plain = AdamW::new_composed(names.iter().copied().zip(b.iter()), cfg).unwrap();
        for step in 0..20 {
            let grads: BTreeMap<String, Grad> = names
                .iter()
                .zip(shapes)
                .map(|(n, s)| {
                    let g: Vec<f32> = (0..s.iter().product::<usize>())
                        .map(|_| rng.random_range(-3.0f32..3.0))
                        .collect();
                    (
                        n.to_string(),
                        Grad::Dense(Tensor::from_vec(g, s, &dev).unwrap()),
                    )
                })
                .collect();
            let lr = 1e-3 * lr_factor(step, 2, 20);
            fused
                .step(&grads, &GradScale::plain(0.25), lr, 2.0 * lr)
                .unwrap();
            // The plain update takes its clipping factor as a tensor (as a GPU keeps it).
            let held = GradScale {
                scale: 0.5,
                clip: Deferred::Device(Tensor::new(0.5f32, &dev).unwrap()),
            };
            plain.step(&grads, &held, lr, 2.0 * lr).unwrap();
        }
        for (x, y) in a.iter().zip(&b) {
            let d = max_abs_diff(x.as_tensor(), y.as_tensor());
            assert!(d <= 1e-6, "fused and plain AdamW differ by {d}");
        }
        let moments = |o: &AdamW| o.state_tensors().unwrap();
        let (mf, mp) = (moments(&fused), moments(&plain));
        for (k, t) in &mf {
            let d = max_abs_diff(t, &mp[k]);
            assert!(d <= 1e-6, "{k}: moments differ by {d}");
        }
    }

    /// Embedding rows that never had a gradient are skipped — exactly: the result equals the plain
    /// update of every row, across a save and a load of the moments.
    #[test]
    fn skipping_untouched_embedding_rows_is_exact() {
        use rand::{Rng, SeedableRng};
        let dev = candle_core::Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (rows, width) = (50, 6);
        let init: Vec<f32> = (0..rows * width)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let name = "embeddings.word_embeddings.weight";
        let a = Var::from_vec(init.clone(), (rows, width), &dev).unwrap();
        let b = Var::from_vec(init, (rows, width), &dev).unwrap();
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decay_all: false,
        };
        let mut fused = AdamW::new([(name, &a)].into_iter(), cfg).unwrap();
        let mut plain = AdamW::new_composed([(name, &b)].into_iter(), cfg).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for step in 0..12 {
            // Each step touches a few rows; rows 40.. never. The fused update gets them as rows
            // (even steps) or dense (odd steps), the plain one dense.
            let mut ids: Vec<u32> = (0..4).map(|_| rng.random_range(0..40u32)).collect();
            ids.sort_unstable();
            ids.dedup();
            let values: Vec<f32> = (0..ids.len() * width)
                .map(|_| rng.random_range(-2.0f32..2.0))
                .collect();
            let rows_grad = Grad::Rows {
                values: Tensor::from_vec(values, (ids.len(), width), &dev).unwrap(),
                ids,
                rows,
            };
            let dense = Grad::Dense(rows_grad.to_dense().unwrap());
            let as_map =
                |g: &Grad| -> BTreeMap<String, Grad> { [(name.to_string(), g.clone())].into() };
            let fused_grad = if step % 2 == 0 { &rows_grad } else { &dense };
            fused
                .step(&as_map(fused_grad), &GradScale::plain(0.5), 1e-2, 1e-2)
                .unwrap();
            plain
                .step(&as_map(&dense), &GradScale::plain(0.5), 1e-2, 1e-2)
                .unwrap();
            if step == 5 {
                // Save and reload: the touched rows are recovered from the moments.
                let path = dir.path().join("opt.safetensors");
                let st: std::collections::HashMap<String, Tensor> =
                    fused.state_tensors().unwrap().into_iter().collect();
                candle_core::safetensors::save(&st, &path).unwrap();
                let steps = fused.steps;
                fused = AdamW::new([(name, &a)].into_iter(), cfg).unwrap();
                fused.load_state(&path, steps).unwrap();
            }
        }
        let d = max_abs_diff(a.as_tensor(), b.as_tensor());
        assert!(
            d <= 1e-6,
            "row-skipping AdamW differs from the plain one by {d}"
        );
    }
}
