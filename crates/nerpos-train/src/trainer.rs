//! `Trainer`: the model, its optimiser and the process's communicator, and the three things a training
//! loop does with them — [`Trainer::step`], [`Trainer::evaluate`], [`Trainer::checkpoint`].
//!
//! A step is: forward and backward of this rank's micro-batches (gradients summed locally, in f32
//! whatever the compute precision), one bucketed all-reduce of the gradients and of the step's
//! counts, then clipping and AdamW on gradients divided by the *global* number of labelled tokens —
//! so W processes × batch b train exactly what 1 process × batch W·b trains.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use candle_core::{DType, Device, Tensor};
use nerpos_dist::{Comm, all_reduce_bucketed};
use nerpos_eval::Report;
use nerpos_model::{BertNerPos, DropoutRng, Grad, profile};
use nerpos_run::RunDir;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::checkpoint::{self, LoopState};
use crate::config::{Precision, ReduceDtype};
use crate::evaluate::{EvalData, EvalSpec, evaluate};
use crate::optim::{AdamW, AdamWConfig};
use nerpos_model::PackedBatch;

/// What a step needs beyond the model.
#[derive(Debug, Clone)]
pub struct StepSettings {
    /// The run's seed (dropout masks derive from it, the step and the rank).
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
}

/// One optimiser step's results, summed over all ranks.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    /// Mean cross-entropy over the step's labelled tokens.
    pub loss: f64,
    /// Labelled tokens.
    pub count: f64,
    /// Real sub-word tokens and rows.
    pub tokens: f64,
    pub rows: f64,
    /// Global gradient norm (of the mean loss, before clipping).
    pub grad_norm: f64,
    /// Seconds in the all-reduce.
    pub allreduce_s: f64,
    /// Some rank was asked to stop (a signal): every rank sees it at the same step.
    pub stop: bool,
}

pub struct Trainer {
    /// The f32 master weights (what is saved, evaluated and updated).
    pub model: BertNerPos,
    /// A bf16 copy for forward/backward under mixed precision, refreshed before each step.
    compute: Option<BertNerPos>,
    pub optimizer: AdamW,
    pub comm: Comm,
    settings: StepSettings,
}

impl Trainer {
    pub fn new(model: BertNerPos, comm: Comm, settings: StepSettings) -> anyhow::Result<Trainer> {
        let compute = match settings.precision {
            Precision::Bf16 => Some(BertNerPos::with_dtype(
                model.config.clone(),
                model.device(),
                DType::BF16,
            )?),
            Precision::F32 | Precision::Tf32 => None,
        };
        let mut optimizer = AdamW::new(model.params.iter(), settings.adamw)?;
        optimizer.fused = settings.fused_adamw;
        Ok(Trainer {
            model,
            compute,
            optimizer,
            comm,
            settings,
        })
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// One optimiser step (number `step`, 0-based) on this rank's micro-batches, at learning rates
    /// `lr` (encoder) and `head_lr` (POS embedding and classifier). `stop` is this rank's wish to stop.
    pub fn step(
        &mut self,
        micro: &[PackedBatch],
        step: usize,
        lr: f64,
        head_lr: f64,
        stop: bool,
    ) -> anyhow::Result<StepStats> {
        self.step_observed(micro, step, lr, head_lr, stop, |_, _| Ok(()))
    }

    /// As [`Trainer::step`], showing `observe` the reduced gradients and the factor the optimiser
    /// multiplies them by, before the update (the GPU checks feed a second optimiser the same ones).
    pub fn step_observed(
        &mut self,
        micro: &[PackedBatch],
        step: usize,
        lr: f64,
        head_lr: f64,
        stop: bool,
        observe: impl FnOnce(&BTreeMap<String, Grad>, f64) -> anyhow::Result<()>,
    ) -> anyhow::Result<StepStats> {
        let local = self.forward_backward(micro, step)?;
        let t_reduce = Instant::now();
        let grads = profile::timed("step: all-reduce", || self.all_reduce(local.grads))?;
        let mut scalars = [
            local.loss_sum,
            local.count,
            local.tokens,
            local.rows,
            f64::from(u8::from(stop)),
        ];
        self.comm.all_reduce_sum(&mut scalars)?;
        let allreduce_s = t_reduce.elapsed().as_secs_f64();
        let [loss_sum, count, tokens, rows, stops] = scalars;

        let mut grad_norm = 0.0;
        if count > 0.0 {
            let scale = 1.0 / count;
            grad_norm = profile::timed("step: gradient norm", || AdamW::squared_norm(&grads))?
                .sqrt()
                * scale;
            let clip = if self.settings.max_grad_norm > 0.0 {
                (self.settings.max_grad_norm / (grad_norm + 1e-6)).min(1.0)
            } else {
                1.0
            };
            observe(&grads, scale * clip)?;
            profile::timed("step: AdamW", || {
                self.optimizer.step(&grads, scale * clip, lr, head_lr)
            })?;
        }
        Ok(StepStats {
            loss: if count > 0.0 { loss_sum / count } else { 0.0 },
            count,
            tokens,
            rows,
            grad_norm,
            allreduce_s,
            stop: stops > 0.0,
        })
    }

    /// Forward and backward of this rank's micro-batches; gradients summed in f32.
    fn forward_backward(&self, micro: &[PackedBatch], step: usize) -> anyhow::Result<LocalStep> {
        let mut out = LocalStep::default();
        if let Some(half) = &self.compute {
            half.copy_from(&self.model)?;
        }
        let stepper = self.compute.as_ref().unwrap_or(&self.model);
        let rank = self.rank() as u64;
        for (k, batch) in micro.iter().enumerate() {
            out.tokens += batch.tokens() as f64;
            out.rows += batch.rows() as f64;
            let (inputs, targets) = batch.to_device(self.device())?;
            let Some(targets) = targets else {
                // Rows without a single label: nothing to learn from them.
                continue;
            };
            let seed = DropoutRng::step_seed(
                self.settings.seed,
                (step * self.settings.grad_accum + k) as u64,
                rank,
            );
            let mut rng = DropoutRng::new(seed, self.device())?;
            let result = profile::timed("step: forward+backward (all fwd/bwd: rows)", || {
                stepper.forward_backward(&inputs, &targets, Some(&mut rng))
            })?;
            let _acc = profile::scope("step: gradient accumulation");
            for (name, g) in result.grads {
                let g = match out.grads.remove(&name) {
                    Some(acc) => acc.add(&g)?,
                    None => g,
                };
                out.grads.insert(name, g);
            }
            out.loss_sum += result.loss_sum;
            out.count += result.count as f64;
        }
        // A rank with no rows this step still takes part in the reduction, with zeros.
        for (name, var) in self.model.params.iter() {
            if !out.grads.contains_key(name) {
                let zero = if name == nerpos_model::model::WORD_EMBEDDINGS {
                    let (rows, width) = var.as_tensor().dims2()?;
                    Grad::empty_rows(rows, width, var.dtype(), var.device())?
                } else {
                    Grad::Dense(var.as_tensor().zeros_like()?)
                };
                out.grads.insert(name.to_owned(), zero);
            }
        }
        Ok(out)
    }

    /// Sums gradients over the ranks (in the configured element type), back in f32: the dense ones
    /// in buckets; a row gradient over the union of every rank's rows.
    fn all_reduce(
        &mut self,
        grads: BTreeMap<String, Grad>,
    ) -> anyhow::Result<BTreeMap<String, Grad>> {
        if self.world_size() == 1 {
            return grads
                .into_iter()
                .map(|(n, g)| Ok((n, g.to_dtype(DType::F32)?)))
                .collect();
        }
        let dtype = self.settings.reduce_dtype.dtype();
        let mut out = BTreeMap::new();
        let (mut names, mut dense) = (Vec::new(), Vec::new());
        for (name, g) in grads {
            match g {
                Grad::Dense(t) => {
                    names.push(name);
                    dense.push(t.to_dtype(dtype)?.contiguous()?);
                }
                Grad::Rows { ids, values, rows } => {
                    let g = self.all_reduce_rows(&ids, &values, rows)?;
                    out.insert(name, g);
                }
            }
        }
        let reduced = all_reduce_bucketed(&mut self.comm, &dense, self.settings.bucket_bytes)?;
        for (name, t) in names.into_iter().zip(reduced) {
            out.insert(name, Grad::Dense(t.to_dtype(DType::F32)?));
        }
        Ok(out)
    }

    /// A row gradient summed over the ranks: the union of their row ids (every rank gathers them),
    /// then one all-reduce of the rows' values laid out over that union.
    fn all_reduce_rows(
        &mut self,
        ids: &[u32],
        values: &Tensor,
        rows: usize,
    ) -> anyhow::Result<Grad> {
        let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        let mut all: Vec<u32> = Vec::new();
        for part in self.comm.all_gather(&bytes)? {
            let theirs: Vec<u32> = part
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            all = nerpos_model::grad::union(&all, &theirs);
        }
        let laid_out =
            nerpos_model::grad::scatter_rows(&all, &[(ids, &values.to_dtype(DType::F32)?)])?
                .to_dtype(self.settings.reduce_dtype.dtype())?;
        self.comm.all_reduce_tensor(&laid_out)?;
        Ok(Grad::Rows {
            ids: all,
            values: laid_out.to_dtype(DType::F32)?,
            rows,
        })
    }

    /// Scores `data` (every rank its share of sentences; every rank gets the whole report).
    pub fn evaluate(&mut self, data: &EvalData, spec: &EvalSpec) -> anyhow::Result<Report> {
        Ok(evaluate(&self.model, &mut self.comm, data, spec)?.0)
    }

    /// SHA-256 of all parameters (name order).
    pub fn weights_hash(&self) -> anyhow::Result<String> {
        let mut h = Sha256::new();
        for (name, var) in self.model.params.iter() {
            h.update(name.as_bytes());
            let v = var
                .as_tensor()
                .to_device(&Device::Cpu)?
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
            .map(|(n, v)| Ok((n.to_owned(), v.as_tensor().to_device(&Device::Cpu)?)))
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

/// This rank's part of a step, before the all-reduce.
#[derive(Default)]
struct LocalStep {
    grads: BTreeMap<String, Grad>,
    loss_sum: f64,
    count: f64,
    tokens: f64,
    rows: f64,
}
