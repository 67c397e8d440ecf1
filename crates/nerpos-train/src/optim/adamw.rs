//! AdamW (PyTorch's algorithm, decoupled weight decay) over the model's parameters, grouped by their
//! roles: weight decay on weights only (unless `decay_all`), the head at its own learning rate. Each
//! parameter's update is one fused pass over its storage, in place — the CPU loop for parameters on the
//! CPU (skipping embedding rows that never had a gradient: exactly the dense update), one kernel
//! launch on a GPU (`nerpos_kernels::ops::adamw`) — or, as the reference and for devices without the
//! kernel, the composed tensor-op version.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor, Var};
use nerpos_kernels::ops::adamw::AdamWStep;
use nerpos_kernels::ops::multi_tensor::{ParamUpdate, adamw_all};
use nerpos_model::{Deferred, Grad, Role};
use rayon::prelude::*;

use super::clip::GradScale;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay every parameter, biases, LayerNorm parameters and embedding tables included.
    pub decay_all: bool,
}

/// One step's learning rates: the encoder's, the new head's (POS embedding, classifier, CRF) and the
/// probes' (the POS tagger).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub lr: f64,
    pub head: f64,
    pub probe: f64,
}

/// How device parameters are updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// One fused kernel per parameter on a GPU (the CPU loop on the CPU).
    Fused,
    /// Composed tensor ops on a GPU (the CPU loop on the CPU).
    Composed,
    /// Composed tensor ops everywhere, the CPU included: the reference the fused updates are tested
    /// against.
    Reference,
}

/// A parameter's moments, where its update runs.
enum Moments {
    /// On the host, for the CPU loop. For an embedding table, the row width and which rows have ever
    /// had a gradient: a row that never had one has zero moments, so its update is exactly zero while
    /// it is not decayed, and the loop skips it (most of a vocabulary never occurs in a fine-tuning
    /// corpus).
    Host {
        m: Vec<f32>,
        v: Vec<f32>,
        rows: Option<(usize, Vec<bool>)>,
    },
    /// Tensors on the parameter's device.
    Device { m: Tensor, v: Tensor },
}

struct ParamState {
    name: String,
    var: Var,
    role: Role,
    moments: Moments,
    /// The bf16 compute copy of this parameter, written by the fused device update (see
    /// [`AdamW::write_compute_copy`]).
    half: Option<Tensor>,
}

pub struct AdamW {
    config: AdamWConfig,
    update: Update,
    params: Vec<ParamState>,
    /// Updates done so far (PyTorch's `step` counter, for bias correction).
    pub steps: u64,
    /// A 1.0 on the parameters' GPU: the fused kernel's clipping factor when the host knows it.
    one: Option<Tensor>,
}

impl AdamW {
    /// An optimiser over `params` (name, variable, role), in the given (sorted) order.
    pub fn new<'a>(
        params: impl Iterator<Item = (&'a str, &'a Var, Role)>,
        config: AdamWConfig,
        update: Update,
    ) -> candle_core::Result<AdamW> {
        let params = params
            .map(|(name, var, role)| {
                Ok(ParamState {
                    name: name.to_owned(),
                    var: var.clone(),
                    role,
                    moments: moments(var, role, update)?,
                    half: None,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Made once: the fused kernel's clipping factor when the host knows it.
        let one = match params.first() {
            Some(p) if update == Update::Fused && fused_on_device(p.var.as_tensor()) => {
                Some(Tensor::ones(1, DType::F32, p.var.device())?)
            }
            _ => None,
        };
        Ok(AdamW {
            config,
            update,
            params,
            steps: 0,
            one,
        })
    }

    /// One update: gradients are raw sums over the optimiser batch and are multiplied by `grad_scale`
    /// (1/count, times the clipping factor). `lr` and `head_lr` are this step's learning rates (a
    /// probe's is `head_lr` here).
    pub fn step(
        &mut self,
        grads: &BTreeMap<String, Grad>,
        grad_scale: &GradScale,
        lr: f64,
        head_lr: f64,
    ) -> candle_core::Result<()> {
        let rates = Rates {
            lr,
            head: head_lr,
            probe: head_lr,
        };
        self.step_with_probes(grads, [grad_scale, grad_scale], rates)
    }

    /// [`AdamW::step`] with the probes' gradients (`Role::probe`) multiplied by their own factor
    /// (`[rest, probes]`): a probe is left out of the rest's clipping, and learns at its own rate.
    pub fn step_with_probes(
        &mut self,
        grads: &BTreeMap<String, Grad>,
        [rest, probes]: [&GradScale; 2],
        rates: Rates,
    ) -> candle_core::Result<()> {
        self.steps += 1;
        let factors = [
            Factors::new(rest, self.one.as_ref())?,
            Factors::new(probes, self.one.as_ref())?,
        ];
        let mut together: [Vec<_>; 2] = [Vec::new(), Vec::new()];
        for (k, p) in self.params.iter_mut().enumerate() {
            let g = grads
                .get(&p.name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {}", p.name)))?;
            let constants = self.config.constants(p.role, rates, self.steps);
            let group = usize::from(p.role.probe);
            if self.update == Update::Fused && p.multi_tensor(g) {
                together[group].push((k, dense(g)?, constants));
                continue;
            }
            p.update(g, constants, &factors[group], self.update)?;
        }
        for (group, f) in together.iter().zip(&factors) {
            self.update_together(group, f)?;
        }
        Ok(())
    }

    /// The parameters the multi-tensor kernel updates, all in one launch.
    fn update_together(
        &self,
        together: &[(usize, Tensor, AdamWStep)],
        f: &Factors,
    ) -> candle_core::Result<()> {
        let Some((_, _, first)) = together.first() else {
            return Ok(());
        };
        let clip = f.clip.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("AdamW: no clipping factor on the GPU".into())
        })?;
        let updates = together
            .iter()
            .map(|(k, g, c)| {
                let p = &self.params[*k];
                let Moments::Device { m, v } = &p.moments else {
                    unreachable!("only device parameters are updated together")
                };
                Ok(ParamUpdate {
                    p: p.var.as_tensor(),
                    g,
                    m,
                    v,
                    half: p.half.as_ref(),
                    lr_wd: c.lr_wd,
                    step_size: c.step_size,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let common = AdamWStep {
            grad_scale: f.device as f32,
            ..*first
        };
        Ok(adamw_all(&updates, &common, clip)?)
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
                self.update == Update::Fused
                    && matches!(p.moments, Moments::Device { .. })
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

    /// The moments, by name (`m.NAME`, `v.NAME`), on the host, for a checkpoint.
    pub fn state_tensors(&self) -> candle_core::Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for p in &self.params {
            let (m, v) = match &p.moments {
                Moments::Device { m, v } => (
                    nerpos_kernels::stats::to_host(m)?,
                    nerpos_kernels::stats::to_host(v)?,
                ),
                Moments::Host { m, v, .. } => {
                    let shape = p.var.shape();
                    (
                        Tensor::from_slice(m, shape, &Device::Cpu)?,
                        Tensor::from_slice(v, shape, &Device::Cpu)?,
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
        let saved = candle_core::safetensors::load(path, &Device::Cpu)?;
        for p in &mut self.params {
            let get = |k: String| {
                saved
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg(format!("{}: no {k}", path.display())))
            };
            let (m, v) = (get(format!("m.{}", p.name))?, get(format!("v.{}", p.name))?);
            p.moments = match &p.moments {
                Moments::Device { .. } => Moments::Device {
                    m: m.to_device(p.var.device())?,
                    v: v.to_device(p.var.device())?,
                },
                Moments::Host { rows, .. } => {
                    let (m, v): (Vec<f32>, Vec<f32>) =
                        (m.flatten_all()?.to_vec1()?, v.flatten_all()?.to_vec1()?);
                    // A row with any non-zero moment has had a gradient.
                    let rows = rows.as_ref().map(|(w, touched)| {
                        let touched = (0..touched.len())
                            .map(|r| {
                                let span = r * w..(r + 1) * w;
                                m[span.clone()].iter().chain(&v[span]).any(|&x| x != 0.0)
                            })
                            .collect();
                        (*w, touched)
                    });
                    Moments::Host { m, v, rows }
                }
            };
        }
        self.steps = steps;
        Ok(())
    }
}

impl AdamWConfig {
    /// One step's constants for a parameter of `role`, at the learning rates (encoder, head) of
    /// optimiser step `t` (1-based: bias correction).
    fn constants(&self, role: Role, rates: Rates, t: u64) -> AdamWStep {
        let lr = match (role.probe, role.head) {
            (true, _) => rates.probe,
            (false, true) => rates.head,
            (false, false) => rates.lr,
        };
        let wd = if role.decay || self.decay_all {
            self.weight_decay
        } else {
            0.0
        };
        let t = t as i32;
        AdamWStep {
            grad_scale: 0.0,
            lr_wd: (lr * wd) as f32,
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            eps: self.eps as f32,
            step_size: (lr / (1.0 - self.beta1.powi(t))) as f32,
            bc2_sqrt: (1.0 - self.beta2.powi(t)).sqrt() as f32,
        }
    }
}

/// A new parameter's zero moments, where `update` runs for it.
fn moments(var: &Var, role: Role, update: Update) -> candle_core::Result<Moments> {
    if var.device().is_cpu() && update != Update::Reference {
        let n = var.elem_count();
        let rows = match var.dims() {
            [r, w] if role.table => Some((*w, vec![false; *r])),
            _ => None,
        };
        return Ok(Moments::Host {
            m: vec![0.0; n],
            v: vec![0.0; n],
            rows,
        });
    }
    Ok(Moments::Device {
        m: var.zeros_like()?,
        v: var.zeros_like()?,
    })
}

/// Whether `t`'s device has the fused update kernel (CUDA builds, f32 parameters on a GPU).
fn fused_on_device(t: &Tensor) -> bool {
    cfg!(feature = "cuda") && t.device().is_cuda() && t.dtype() == DType::F32
}

/// The gradient factor as each update takes it.
struct Factors<'a> {
    scale: &'a GradScale,
    /// The host part for device updates, and the clipping factor when it is on the device.
    device: f64,
    clip: Option<Tensor>,
}

impl Factors<'_> {
    fn new<'a>(s: &'a GradScale, one: Option<&Tensor>) -> candle_core::Result<Factors<'a>> {
        Ok(match &s.clip {
            Deferred::Host(c) => Factors {
                scale: s,
                device: s.scale * c,
                clip: one.cloned(),
            },
            Deferred::Device(t) => Factors {
                scale: s,
                device: s.scale,
                clip: Some(t.to_dtype(DType::F32)?.reshape(1)?),
            },
        })
    }

    /// scale · clip for the CPU loop (a host number there: CPU parameters have a host clip).
    fn host(&self) -> candle_core::Result<f64> {
        Ok(self.scale.scale * self.scale.clip.read()?)
    }
}

impl ParamState {
    /// Whether the multi-tensor kernel updates this parameter (device moments, an f32 parameter on a
    /// GPU, a gradient the kernel takes).
    fn multi_tensor(&self, g: &Grad) -> bool {
        let g = match g {
            Grad::Dense(t) => t,
            Grad::Rows { values, .. } => values,
        };
        matches!(self.moments, Moments::Device { .. })
            && fused_on_device(self.var.as_tensor())
            && super::clip::multi_tensor_on(g)
    }

    /// This parameter's update with `g`, on its backend.
    fn update(
        &mut self,
        g: &Grad,
        mut c: AdamWStep,
        f: &Factors,
        update: Update,
    ) -> candle_core::Result<()> {
        match &mut self.moments {
            Moments::Host { m, v, rows } => {
                c.grad_scale = f.host()? as f32;
                if !c.grad_scale.is_finite() {
                    // A guarded step (optim/clip.rs): left out, as the GPU kernels leave it.
                    return Ok(());
                }
                let op = HostStep {
                    name: &self.name,
                    grad: g,
                    c,
                    m: RefCell::new(m),
                    v: RefCell::new(v),
                    rows: RefCell::new(rows.as_mut()),
                };
                self.var.as_tensor().inplace_op1(&op)
            }
            Moments::Device { m, v }
                if update == Update::Fused && fused_on_device(self.var.as_tensor()) =>
            {
                c.grad_scale = f.device as f32;
                let clip = f.clip.as_ref().ok_or_else(|| {
                    candle_core::Error::Msg("AdamW: no clipping factor on the GPU".into())
                })?;
                let g = dense(g)?;
                let p = self.var.as_tensor();
                c.gpu([p, &g, m, v], clip, self.half.as_ref())?;
                Ok(())
            }
            Moments::Device { m, v } => {
                c.grad_scale = f.device as f32;
                let g = dense(g)?;
                let (p, m_new, v_new) =
                    c.reference([self.var.as_tensor(), &g, m, v], f.clip.as_ref())?;
                self.var.set(&p)?;
                *m = m_new;
                *v = v_new;
                Ok(())
            }
        }
    }
}

/// Runs `f` on the values of a CPU f32 tensor.
fn host_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    Ok(nerpos_kernels::host::read::<f32, _>(t, f)?)
}

/// A gradient as one dense tensor (devices without a row update).
fn dense(g: &Grad) -> candle_core::Result<Tensor> {
    g.to_dense()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// One parameter's update, fused, in place on the CPU (its moments borrowed for the call).
struct HostStep<'a> {
    name: &'a str,
    grad: &'a Grad,
    c: AdamWStep,
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
    rows: RefCell<Option<&'a mut (usize, Vec<bool>)>>,
}

impl InplaceOp1 for HostStep<'_> {
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
                self.name,
                storage.dtype()
            );
        };
        let p = &mut p[a..b];
        let (mut m, mut v, mut rows) = (
            self.m.borrow_mut(),
            self.v.borrow_mut(),
            self.rows.borrow_mut(),
        );
        match (self.grad, rows.as_deref_mut()) {
            (Grad::Rows { ids, values, .. }, Some(table)) => host_values(values, |values| {
                self.rows_update(p, ids, values, &mut m, &mut v, table)
            }),
            (g, table) => host_values(&dense(g)?, |g| {
                self.dense_update(p, g, &mut m, &mut v, table)
            }),
        }
    }
}

impl HostStep<'_> {
    /// The update with a dense gradient, in parallel over chunks of whole rows (embedding tables,
    /// skipping rows that never had a gradient while not decayed) or of elements.
    fn dense_update(
        &self,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        table: Option<&mut (usize, Vec<bool>)>,
    ) {
        let c = self.c;
        let decayed = c.lr_wd != 0.0;
        let (width, touched) = match table {
            Some((w, t)) if !decayed => (*w, Some(t)),
            _ => (p.len().clamp(1, 16_384), None),
        };
        let rows_per_task = (65_536 / width).max(1);
        let chunk = rows_per_task * width;
        let tasks = p
            .par_chunks_mut(chunk)
            .zip(g.par_chunks(chunk))
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk));
        let Some(touched) = touched else {
            tasks.for_each(|(((p, g), m), v)| c.cpu(p, g, m, v));
            return;
        };
        tasks
            .zip(touched.par_chunks_mut(rows_per_task))
            .for_each(|((((p, g), m), v), touched)| {
                for (r, t) in touched.iter_mut().enumerate() {
                    let span = r * width..(r + 1) * width;
                    if !*t && g[span.clone()].iter().all(|&x| x == 0.0) {
                        continue;
                    }
                    *t = true;
                    c.cpu(
                        &mut p[span.clone()],
                        &g[span.clone()],
                        &mut m[span.clone()],
                        &mut v[span],
                    );
                }
            });
    }

    /// The update of an embedding table from the rows `ids` (sorted) of its gradient: those rows
    /// with their gradient, the other rows that ever had one (or all, when decayed) with a zero
    /// gradient — exactly the dense update — and nothing for the rest.
    fn rows_update(
        &self,
        p: &mut [f32],
        ids: &[u32],
        values: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        table: &mut (usize, Vec<bool>),
    ) {
        let (width, touched) = (table.0, &mut table.1);
        let c = self.c;
        let decayed = c.lr_wd != 0.0;
        let rows_per_task = (65_536 / width).max(1);
        let chunk = rows_per_task * width;
        let zeros = vec![0f32; width];
        p.par_chunks_mut(chunk)
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk))
            .zip(touched.par_chunks_mut(rows_per_task))
            .enumerate()
            .for_each(|(task, (((p, m), v), touched))| {
                let first = task * rows_per_task;
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
                    c.cpu(&mut p[span.clone()], g, &mut m[span.clone()], &mut v[span]);
                }
            });
    }
}

#[cfg(test)]
mod tests;
