//! `Trainer`: the model, its optimiser and the process's communicator, and the three things a training
//! loop does with them — [`Trainer::step`], [`Trainer::evaluate`], [`Trainer::checkpoint`].
//!
//! A step is: forward and backward of this rank's micro-batches (gradients summed locally, in f32
//! whatever the compute precision), one bucketed all-reduce of the gradients and of the step's
//! counts, then clipping and AdamW on gradients divided by the *global* number of labelled tokens —
//! so W processes × batch b train exactly what 1 process × batch W·b trains.
//!
//! The loss and the gradient norm are not read back each step: on a GPU they stay on the device (the
//! clipping factor too, which the AdamW kernel reads there) until [`Trainer::settle`] or
//! [`Trainer::take_means`] at the end of a log interval — one synchronisation per interval instead of
//! two per step. A step whose loss or norm is not finite is never applied (`crate::health`): the host
//! skips it where it knows them (the CPU), the device guard leaves it out where it does not.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use candle_core::{DType, Device, Tensor};
use nerpos_dist::Comm;
use nerpos_model::{BertNerPos, Deferred, Grad, Noise, profile};
use nerpos_run::RunDir;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::checkpoint::{self, LoopState};
use crate::config::{Precision, ReduceDtype};
use crate::evaluate::{EvalData, EvalSpec, Evaluation, evaluate};
use crate::health::{Faults, NonFinitePolicy, StepHealth};
use crate::optim::{AdamW, AdamWConfig, GradScale, Rates, Update, guard, squared_norm};
use nerpos_dist::reduce::{Buckets, Handover, Reduced, reduce_gradients};
use nerpos_kernels::stats::to_host;
use nerpos_model::{Kernels, PackedBatch};

/// What a step needs beyond the model.
#[derive(Debug, Clone)]
pub struct StepSettings {
    /// The run's seed (dropout masks derive from it, the step and the sentence).
    pub seed: u64,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Global gradient-norm clipping (0 = off).
    pub max_grad_norm: f64,
    pub precision: Precision,
    pub reduce_dtype: ReduceDtype,
    pub bucket_bytes: usize,
    pub adamw: AdamWConfig,
    /// Device AdamW as one fused kernel per parameter.
    pub fused_adamw: bool,
    /// Under `stop`, a device-held guard sticks once a step was not finite (nothing is applied until
    /// the host reads it and stops the run).
    pub nonfinite: NonFinitePolicy,
    /// Keep the step's loss and norm where they were computed and judge them when read, as on a GPU,
    /// even on the CPU (`NERPOS_TEST_DEFER_CHECKS=1`: the tests of the GPU path).
    pub defer_checks: bool,
}

/// Test hook: the CPU trainer checks steps as a GPU does (see [`StepSettings::defer_checks`]).
pub const DEFER_CHECKS_ENV: &str = "NERPOS_TEST_DEFER_CHECKS";

impl StepSettings {
    /// The settings `cfg` gives a step of `grad_accum` micro-batches.
    pub fn from_config(cfg: &crate::TrainConfig, grad_accum: usize) -> StepSettings {
        StepSettings {
            seed: cfg.seed,
            grad_accum,
            max_grad_norm: cfg.max_grad_norm,
            precision: cfg.precision,
            reduce_dtype: cfg.allreduce_dtype,
            bucket_bytes: (cfg.bucket_mb * 1e6) as usize,
            adamw: AdamWConfig {
                beta1: cfg.adam_beta1,
                beta2: cfg.adam_beta2,
                eps: cfg.adam_eps,
                weight_decay: cfg.weight_decay,
                decay_all: cfg.decay_all,
            },
            fused_adamw: cfg.fused_adamw,
            nonfinite: cfg.nonfinite,
            defer_checks: std::env::var(DEFER_CHECKS_ENV).is_ok_and(|v| v == "1"),
        }
    }
}

/// One optimiser step's counts, summed over all ranks (its loss and gradient norm: [`Trainer::take_means`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    /// Labelled tokens.
    pub count: f64,
    /// Real sub-word tokens and rows.
    pub tokens: f64,
    pub rows: f64,
    /// Seconds waited for gradient reductions after backward (the exposed all-reduce).
    pub allreduce_s: f64,
    /// Seconds spent reducing, overlapped with backward or not.
    pub allreduce_total_s: f64,
    /// Some rank was asked to stop (a signal): every rank sees it at the same step.
    pub stop: bool,
    /// The step's loss and norm when the host knows them at once (the CPU); on a GPU they come later,
    /// from [`Trainer::settle`].
    pub health: Option<StepHealth>,
}

/// Mean loss and gradient norm over the steps since the last [`Trainer::take_means`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Means {
    /// Mean over the applied steps of each step's mean cross-entropy (all ranks); over all of them
    /// when none was applied (then not finite).
    pub loss: f64,
    /// The same mean of the global gradient norm (of the mean loss, before clipping).
    pub grad_norm: f64,
    /// Steps whose loss or norm was not finite (their update left out).
    pub left_out: usize,
}

/// A step's numbers (all ranks'), where they were computed, until they are read.
struct Record {
    health: StepHealth,
    loss: Deferred,
    norm: Deferred,
    /// Judged already (the host knew the numbers at the step).
    judged: bool,
}

pub struct Trainer {
    /// The f32 master weights (what is saved, evaluated and updated).
    pub model: BertNerPos,
    /// A bf16 copy for forward/backward under mixed precision, refreshed before each step.
    compute: Option<BertNerPos>,
    /// The optimiser writes the bf16 copy as it updates the master weights (with the fused GPU
    /// kernels), so after a step the copy is current.
    copy_by_optimizer: bool,
    /// Whether the bf16 copy holds the master weights as they are now.
    compute_fresh: bool,
    pub optimizer: AdamW,
    pub comm: Comm,
    settings: StepSettings,
    /// Gradient buckets, in backward order.
    buckets: Buckets,
    /// The steps since the last [`Trainer::take_means`], in order.
    unread: Vec<Record>,
    /// The device-held guard that sticks under `stop` (0, or NaN once a step was not finite).
    sticky: Option<Tensor>,
    faults: Faults,
    /// The parameters of probes (the POS tagger): outside the clipping of the rest.
    probes: std::collections::HashSet<String>,
}

impl Trainer {
    pub fn new(model: BertNerPos, comm: Comm, settings: StepSettings) -> anyhow::Result<Trainer> {
        let compute = match settings.precision {
            Precision::Bf16 => Some(
                BertNerPos::with_dtype(model.config.clone(), model.device(), DType::BF16)?
                    .with_kernels(model.kernels),
            ),
            Precision::F32 | Precision::Tf32 => None,
        };
        // The policy decides, as for every kernel: with gpu_kernels = false none of ours runs.
        let update = if model.kernels.fused_optimiser(settings.fused_adamw) {
            Update::Fused
        } else {
            Update::Composed
        };
        let mut optimizer = AdamW::new(model.params.with_roles(), settings.adamw, update)?;
        let probes = model
            .params
            .with_roles()
            .filter(|(_, _, r)| r.probe)
            .map(|(n, _, _)| n.to_owned())
            .collect();
        // With the fused GPU kernels the AdamW kernel also writes the bf16 copy.
        let copy_by_optimizer = match &compute {
            Some(c) if model.kernels == Kernels::Fused => optimizer.write_compute_copy(c)?,
            _ => false,
        };
        let element = settings.reduce_dtype.dtype().size_in_bytes();
        let order: Vec<(String, usize, bool)> = model
            .gradient_order()
            .into_iter()
            .map(|(name, n, rows)| (name, n * element, rows))
            .collect();
        let buckets = Buckets::plan(&order, settings.bucket_bytes);
        Ok(Trainer {
            model,
            compute,
            copy_by_optimizer,
            compute_fresh: false,
            optimizer,
            comm,
            settings,
            buckets,
            unread: Vec::new(),
            sticky: None,
            faults: Faults::from_env()?,
            probes,
        })
    }

    /// Poisons these steps (the test hook's effect; the GPU check uses it on the device).
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The gradient buckets and the dtype they are summed in (for measuring the reduction alone).
    pub fn reduction(&self) -> (Buckets, DType) {
        (self.buckets.clone(), self.settings.reduce_dtype.dtype())
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// One optimiser step (number `step`, 0-based) on this rank's micro-batches, at learning rates
    /// `rates` (encoder, head, probes). `stop` is this rank's wish to stop.
    /// A step whose loss or gradient norm is not finite is not applied (see the module's note).
    pub fn step(
        &mut self,
        micro: &[PackedBatch],
        step: usize,
        rates: Rates,
        stop: bool,
    ) -> anyhow::Result<StepStats> {
        let (local, grads, mut comm_time) = self.gradients(micro, step)?;
        let t_scalars = Instant::now();
        // The loss rides along when the host has it (the CPU): every rank judges the step from the sum.
        let host_loss = match &local.loss_sum {
            Deferred::Host(x) => *x,
            Deferred::Device(_) => 0.0,
        };
        let mut scalars = [
            local.count,
            local.tokens,
            local.rows,
            f64::from(u8::from(stop)),
            host_loss,
        ];
        self.comm.all_reduce_sum(&mut scalars)?;
        let scalars_s = t_scalars.elapsed();
        comm_time.exposed += scalars_s;
        comm_time.total += scalars_s;
        let [count, tokens, rows, stops, loss_sum] = scalars;

        let mut health = None;
        if count > 0.0 {
            let loss = match local.loss_sum {
                Deferred::Host(_) => Deferred::Host(loss_sum),
                Deferred::Device(t) => {
                    let t = t.to_dtype(DType::F32)?.copy()?;
                    self.comm.all_reduce_tensor(&t)?;
                    Deferred::Device(t)
                }
            }
            .scale(1.0 / count)?;
            health = self.update(&grads, (loss, count, step + 1), rates)?;
        } else {
            // No labelled token anywhere: nothing to apply; the step counts as a loss of 0.
            let health = StepHealth {
                step: step + 1,
                loss: 0.0,
                grad_norm: 0.0,
            };
            self.unread.push(Record {
                health,
                loss: Deferred::Host(0.0),
                norm: Deferred::Host(0.0),
                judged: true,
            });
        }
        profile::add(
            "step: all-reduce (exposed)",
            comm_time.exposed.as_secs_f64(),
        );
        Ok(StepStats {
            count,
            tokens,
            rows,
            allreduce_s: comm_time.exposed.as_secs_f64(),
            allreduce_total_s: comm_time.total.as_secs_f64(),
            stop: stops > 0.0,
            health,
        })
    }

    /// Clipping and AdamW for step `number` (1-based) with the summed gradients of `count` labelled
    /// tokens whose mean loss is `loss`: skipped on the host when its numbers are known there and not
    /// finite, else applied with the device guard when they are held on the device. Returns the step's
    /// numbers when the host knows them.
    fn update(
        &mut self,
        grads: &BTreeMap<String, Grad>,
        (loss, count, number): (Deferred, f64, usize),
        rates: Rates,
    ) -> anyhow::Result<Option<StepHealth>> {
        let scale = 1.0 / count;
        // The multi-tensor norm kernels are ours: the policy decides, as for the update.
        let fused = self
            .model
            .kernels
            .fused_optimiser(self.settings.fused_adamw);
        let probes = &self.probes;
        let (squared, squared_probes) = profile::timed("step: gradient norm", || {
            let part = |probe: bool| {
                let gs = grads
                    .iter()
                    .filter(move |(n, _)| probes.contains(*n) == probe);
                squared_norm(gs.map(|(_, g)| g), fused)
            };
            anyhow::Ok((part(false)?, part(true)?))
        })?;
        // Clipping leaves the probes (the POS tagger) out: the rest trains exactly as without them.
        let (grad_scale, _) = GradScale::clipped(scale, &squared, self.settings.max_grad_norm)?;
        let probe_scale = GradScale::plain(scale);
        // The step's norm, probes included: what is checked and logged.
        let norm = squared.add(&squared_probes)?.sqrt()?.scale(scale)?;
        let device = self.model.device().clone();
        let (loss, norm) = if self.settings.defer_checks {
            (held(&loss, &device)?, held(&norm, &device)?)
        } else {
            (loss, norm)
        };
        let known = match (&loss, &norm) {
            (Deferred::Host(l), Deferred::Host(n)) => Some(StepHealth {
                step: number,
                loss: *l,
                grad_norm: *n,
            }),
            _ => None,
        };
        let scales = match known {
            // Not finite: left out here, weights and moments untouched.
            Some(h) if !h.finite() => None,
            Some(_) => Some([grad_scale, probe_scale]),
            None => {
                if self.settings.nonfinite == NonFinitePolicy::Stop && self.sticky.is_none() {
                    self.sticky = Some(Tensor::new(0f32, &device)?);
                }
                let bad = guard(&loss, &norm, self.sticky.as_mut(), &device)?;
                Some([grad_scale.guarded(&bad)?, probe_scale.guarded(&bad)?])
            }
        };
        if let Some([rest, probes]) = scales {
            // The master weights change here; the bf16 copy with them only if the optimiser writes it.
            self.compute_fresh = false;
            profile::timed("step: AdamW", || {
                self.optimizer
                    .step_with_probes(grads, [&rest, &probes], rates)
            })?;
            self.compute_fresh = self.copy_by_optimizer;
        }
        let health = known.unwrap_or(StepHealth {
            step: number,
            loss: f64::NAN,
            grad_norm: f64::NAN,
        });
        self.unread.push(Record {
            health,
            loss,
            norm,
            judged: known.is_some(),
        });
        Ok(known)
    }

    /// Reads the numbers of the steps not read yet (one read-back for those on a device) and returns
    /// the steps not judged yet, in order. Such a step that was not finite was left out by the device
    /// guard after AdamW counted it: the count (its bias correction) is set back. Every rank calls it
    /// at the same steps (the numbers are every rank's, the verdicts the same).
    pub fn settle(&mut self) -> anyhow::Result<Vec<StepHealth>> {
        let pending: Vec<usize> = (0..self.unread.len())
            .filter(|&k| !self.unread[k].judged)
            .collect();
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let held: Vec<Deferred> = pending
            .iter()
            .flat_map(|&k| [self.unread[k].loss.clone(), self.unread[k].norm.clone()])
            .collect();
        let values = nerpos_kernels::read_all(&held)?;
        let mut late = Vec::with_capacity(pending.len());
        for (&k, v) in pending.iter().zip(values.chunks(2)) {
            let r = &mut self.unread[k];
            r.health.loss = v[0];
            r.health.grad_norm = v[1];
            (r.loss, r.norm, r.judged) = (Deferred::Host(v[0]), Deferred::Host(v[1]), true);
            if !r.health.finite() {
                self.optimizer.steps = self.optimizer.steps.saturating_sub(1);
            }
            late.push(r.health);
        }
        Ok(late)
    }

    /// Mean loss and gradient norm of the steps since the last call (see [`Means`]; a step without
    /// labelled tokens counts as 0), read from the device (waiting for its queued work), and the steps
    /// not judged until now ([`Trainer::settle`]).
    pub fn take_means(&mut self) -> anyhow::Result<(Means, Vec<StepHealth>)> {
        let late = self.settle()?;
        let records = std::mem::take(&mut self.unread);
        let applied: Vec<&StepHealth> = records
            .iter()
            .map(|r| &r.health)
            .filter(|h| h.finite())
            .collect();
        let counted: Vec<&StepHealth> = if applied.is_empty() {
            records.iter().map(|r| &r.health).collect()
        } else {
            applied.clone()
        };
        let n = counted.len().max(1) as f64;
        let means = Means {
            loss: counted.iter().map(|h| h.loss).sum::<f64>() / n,
            grad_norm: counted.iter().map(|h| h.grad_norm).sum::<f64>() / n,
            left_out: records.len() - applied.len(),
        };
        Ok((means, late))
    }

    /// This rank's forward and backward, and the gradients summed over all ranks (in f32): bucket by
    /// bucket while backward runs on the CPU ring, after backward with NCCL, not at all alone
    /// (`nerpos_dist::reduce`).
    fn gradients(
        &mut self,
        micro: &[PackedBatch],
        step: usize,
    ) -> anyhow::Result<(LocalStep, BTreeMap<String, Grad>, CommTime)> {
        if let Some(half) = &self.compute
            && !self.compute_fresh
        {
            half.copy_from(&self.model)?;
            self.compute_fresh = true;
        }
        let dtype = self.settings.reduce_dtype.dtype();
        let pass = Pass {
            master: &self.model,
            stepper: self.compute.as_ref().unwrap_or(&self.model),
            settings: &self.settings,
            poison: self.faults.hits(step + 1, self.comm.rank()),
        };
        let (local, reduced) = reduce_gradients(&mut self.comm, &self.buckets, dtype, |h| {
            let mut local = LocalStep::default();
            pass.run(micro, step, &mut local, h)?;
            for (name, g) in pass.finish(&mut local, |n| h.given(n))? {
                h.push(&name, g)?;
            }
            anyhow::Ok(local)
        })?;
        let Reduced {
            grads,
            busy,
            exposed,
            ..
        } = reduced;
        let time = CommTime {
            exposed,
            total: busy,
        };
        Ok((local, grads, time))
    }

    /// Scores `data` (every rank its share of sentences; every rank gets the whole report).
    pub fn evaluate(&mut self, data: &EvalData, spec: &EvalSpec) -> anyhow::Result<Evaluation> {
        evaluate(&self.model, &mut self.comm, data, spec)
    }

    /// SHA-256 of all parameters (name order).
    pub fn weights_hash(&self) -> anyhow::Result<String> {
        let mut h = Sha256::new();
        for (name, var) in self.model.params.iter() {
            h.update(name.as_bytes());
            let v = to_host(var.as_tensor())?
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            for x in v {
                h.update(x.to_le_bytes());
            }
        }
        Ok(format!("{:x}", h.finalize()))
    }

    /// Checks that every rank holds the same weights; returns their hash.
    pub fn check_same_weights(&mut self, when: &str) -> anyhow::Result<String> {
        let hash = self.weights_hash()?;
        let all = self.comm.all_gather(hash.as_bytes())?;
        if let Some(r) = all.iter().position(|h| h != hash.as_bytes()) {
            bail!(
                "weights diverged {when}: rank {r} has {} but rank {} has {hash}",
                String::from_utf8_lossy(&all[r]),
                self.rank()
            );
        }
        info!(weights_sha256 = %hash, ranks = all.len(), "weights identical on all ranks {when}");
        Ok(hash)
    }

    /// Writes a resumable checkpoint of the weights, the optimiser and `state` (rank 0's call),
    /// keeping the newest `keep`.
    pub fn checkpoint(
        &self,
        run: &RunDir,
        state: &LoopState,
        keep: usize,
    ) -> anyhow::Result<std::path::PathBuf> {
        let weights: BTreeMap<String, Tensor> = self
            .model
            .params
            .iter()
            .map(|(n, v)| Ok((n.to_owned(), to_host(v.as_tensor())?)))
            .collect::<anyhow::Result<_>>()?;
        checkpoint::save(run, state, weights, self.optimizer.state_tensors()?, keep)
    }

    /// A copy of the weights (to restore the best model before the final test).
    pub fn snapshot(&self) -> anyhow::Result<Vec<Tensor>> {
        self.model
            .params
            .iter()
            .map(|(_, v)| Ok(v.as_tensor().copy()?))
            .collect()
    }

    pub fn restore(&self, weights: &[Tensor]) -> anyhow::Result<()> {
        for ((_, v), w) in self.model.params.iter().zip(weights) {
            v.set(w)?;
        }
        Ok(())
    }
}

/// `d` held as a one-value f32 tensor on `device` (the GPU's way of keeping a step's numbers).
fn held(d: &Deferred, device: &Device) -> candle_core::Result<Deferred> {
    Ok(match d {
        Deferred::Host(x) => Deferred::Device(Tensor::new(*x as f32, device)?),
        Deferred::Device(t) => Deferred::Device(t.clone()),
    })
}

/// This rank's part of a step, before the all-reduce.
#[derive(Default)]
struct LocalStep {
    /// Gradients summed over micro-batches, not handed over yet.
    grads: BTreeMap<String, Grad>,
    /// Summed loss (on the device).
    loss_sum: Deferred,
    count: f64,
    tokens: f64,
    rows: f64,
}

/// Time in gradient collectives: waited for after backward, and spent in all.
#[derive(Default)]
struct CommTime {
    exposed: std::time::Duration,
    total: std::time::Duration,
}

/// One step's forward and backward over this rank's micro-batches.
struct Pass<'a> {
    /// The f32 master (the shapes of gradients this rank has none of).
    master: &'a BertNerPos,
    /// The model that runs (the master, or its bf16 copy).
    stepper: &'a BertNerPos,
    settings: &'a StepSettings,
    /// The test hook's poisoned step (`crate::health::FAULT_ENV`): a NaN loss and gradient.
    poison: bool,
}

impl Pass<'_> {
    /// Runs every micro-batch: the gradients of all but the last are summed into `local`; the last
    /// one's (plus what `local` holds for the same parameter) are handed over as backward produces
    /// them — gradients are reduced only once per optimiser step.
    fn run(
        &self,
        micro: &[PackedBatch],
        step: usize,
        local: &mut LocalStep,
        hand_over: &mut Handover,
    ) -> anyhow::Result<()> {
        let device = self.master.device();
        let last = micro.len().saturating_sub(1);
        let mut poison = self.poison;
        for (k, batch) in micro.iter().enumerate() {
            local.tokens += batch.tokens() as f64;
            local.rows += batch.rows() as f64;
            let (inputs, targets) = batch.to_device(device)?;
            let Some(targets) = targets else {
                // Rows without a single label: nothing to learn from them.
                continue;
            };
            // Dropout keyed by (seed, step, sentence): the same masks on any number of processes.
            let noise = Noise {
                seed: self.settings.seed,
                step: step as u64,
            };
            let mut sink = |name: &str, g: Grad| -> nerpos_model::Result<()> {
                let summed = match local.grads.remove(name) {
                    Some(acc) => acc.add(&g)?,
                    None => g,
                };
                if k < last {
                    local.grads.insert(name.to_owned(), summed);
                    return Ok(());
                }
                let summed = match summed {
                    Grad::Dense(t) if std::mem::take(&mut poison) => {
                        Grad::Dense(t.affine(f64::NAN, 0.0)?)
                    }
                    g => g,
                };
                Ok(hand_over.push(name, summed)?)
            };
            let (loss_sum, count) =
                profile::timed("step: forward+backward (all fwd/bwd: rows)", || {
                    self.stepper
                        .forward_backward_with(&inputs, &targets, Some(noise), &mut sink)
                })?;
            local.loss_sum = local.loss_sum.add(&loss_sum)?;
            local.count += count as f64;
        }
        if self.poison {
            local.loss_sum = local.loss_sum.scale(f64::NAN)?;
        }
        Ok(())
    }

    /// What `run` did not hand over (`given` says what it did): the summed gradients left in `local`,
    /// and zeros for parameters without one (a rank with nothing to differentiate still takes part in
    /// the reduction).
    fn finish(
        &self,
        local: &mut LocalStep,
        given: impl Fn(&str) -> bool,
    ) -> anyhow::Result<BTreeMap<String, Grad>> {
        let mut out = std::mem::take(&mut local.grads);
        for (name, var) in self.master.params.iter() {
            if !out.contains_key(name) && !given(name) {
                let zero = if name == nerpos_model::model::WORD_EMBEDDINGS {
                    let (rows, width) = var.as_tensor().dims2()?;
                    Grad::empty_rows(rows, width, DType::F32, var.device())?
                } else {
                    Grad::Dense(var.as_tensor().zeros_like()?)
                };
                out.insert(name.to_owned(), zero);
            }
        }
        Ok(out)
    }
}
