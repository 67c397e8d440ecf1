//! Training on the GPU through the trainer's own step: correctness (against the CPU on the same
//! batches, bf16 against f32) and speed (tokens/s, MFU).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use nerpos_dist::Comm;
use nerpos_model::{BertNerPos, Kernels, ModelConfig, PackedBatch};
use nerpos_train::config::Precision;
use nerpos_train::optim::lr_factor;
use nerpos_train::{StepSettings, Trainer};
use serde_json::{Value, json};

use crate::setup::{Corpus, ModelShape, device, random_init, shape_config, train_config};

/// The trainer's step (one process) on a randomly initialised model, with the schedule of a
/// `total`-step run.
pub struct Stepper {
    pub trainer: Trainer,
    total: usize,
    done: usize,
}

impl Stepper {
    pub fn new(
        config: &ModelConfig,
        device: &Device,
        cfg: &nerpos_train::TrainConfig,
        total: usize,
    ) -> anyhow::Result<Stepper> {
        let settings = StepSettings::from_config(cfg, 1);
        Stepper::with(config, device, settings, cfg, total, Comm::Single)
    }

    /// A stepper whose trainer runs with `settings` and sums its gradients over `comm`.
    fn with(
        config: &ModelConfig,
        device: &Device,
        settings: StepSettings,
        cfg: &nerpos_train::TrainConfig,
        total: usize,
        comm: Comm,
    ) -> anyhow::Result<Stepper> {
        let master = BertNerPos::new(config.clone(), device)?
            .with_kernels(Kernels::with_gpu(cfg.gpu_kernels));
        random_init(&master, 1234)?;
        Ok(Stepper {
            trainer: Trainer::new(master, comm, settings)?,
            total,
            done: 0,
        })
    }

    /// One optimiser step on `batch` (its loss stays on the device: [`Stepper::loss`]).
    pub fn step(&mut self, batch: &PackedBatch) -> anyhow::Result<()> {
        let lr = 1e-4 * lr_factor(self.done, self.total / 10, self.total);
        let rates = nerpos_train::optim::Rates {
            lr,
            head: lr,
            probe: lr,
        };
        self.trainer
            .step(std::slice::from_ref(batch), self.done, rates, false)?;
        self.done += 1;
        Ok(())
    }

    /// Mean loss of the steps since the last call (read from the device).
    pub fn loss(&mut self) -> anyhow::Result<f64> {
        Ok(self.trainer.take_means()?.0.loss)
    }

    pub fn weights(&self) -> anyhow::Result<Weights> {
        self.trainer
            .model
            .params
            .iter()
            .map(|(n, v)| {
                Ok((
                    n.to_owned(),
                    nerpos_kernels::stats::to_host(v.as_tensor())?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                ))
            })
            .collect()
    }
}

/// Every parameter's values, by name.
type Weights = BTreeMap<String, Vec<f32>>;

/// (max |a − b|, relative L2 of a − b against b) over all weights.
fn weight_diff(wa: &Weights, wb: &Weights) -> (f64, f64) {
    let (mut max_abs, mut num, mut den) = (0f64, 0f64, 0f64);
    for (n, x) in wa {
        for (p, q) in x.iter().zip(&wb[n]) {
            let d = f64::from(p - q);
            max_abs = max_abs.max(d.abs());
            num += d * d;
            den += f64::from(*q) * f64::from(*q);
        }
    }
    (max_abs, (num / den).sqrt())
}

/// The loss after each step and the final weights of `steps` steps on `plan`.
fn trajectory(
    config: &ModelConfig,
    cfg: &nerpos_train::TrainConfig,
    plan: &[PackedBatch],
) -> anyhow::Result<(Vec<f64>, Weights)> {
    let dev = device(cfg)?;
    let mut s = Stepper::new(config, &dev, cfg, plan.len())?;
    let losses = plan
        .iter()
        .map(|b| {
            s.step(b)?;
            s.loss()
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((losses, s.weights()?))
}

/// GPU f32 against the CPU on the same batches, dropout on (both draw the same masks: keyed by the
/// sentence); the fused against the composed AdamW on the GPU (trajectories, informative); bf16's
/// final loss against f32's.
pub fn correctness(
    data: &Path,
    steps: usize,
    batch: usize,
    shape: ModelShape,
    gpu_kernels: bool,
) -> anyhow::Result<Value> {
    let corpus = Corpus::read(data)?;
    let config = shape_config(shape, corpus.num_labels, corpus.num_pos, true)?;
    let plan = corpus.batches(batch, None, steps, true, 7);
    let gpu = |p: Precision, fused: bool| train_config(data, p, gpu_kernels, fused);
    let mut on_cpu = gpu(Precision::F32, true)?;
    on_cpu.device = nerpos_train::config::DeviceKind::Cpu;
    let (cpu_loss, cpu_w) = trajectory(&config, &on_cpu, &plan)?;
    let (gpu_loss, gpu_w) = trajectory(&config, &gpu(Precision::F32, true)?, &plan)?;
    let (plain_loss, plain_w) = trajectory(&config, &gpu(Precision::F32, false)?, &plan)?;
    let (bf_loss, _) = trajectory(&config, &gpu(Precision::Bf16, true)?, &plan)?;
    let max_rel = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
            .fold(0.0, f64::max)
    };
    let (w_abs, w_rel) = weight_diff(&gpu_w, &cpu_w);
    let (t_abs, t_rel) = weight_diff(&gpu_w, &plain_w);
    let loss_rel = max_rel(&gpu_loss, &cpu_loss);
    let last = steps - 1;
    let bf16_rel = (bf_loss[last] - gpu_loss[last]).abs() / gpu_loss[last];
    // GPU vs CPU: different summation orders in every reduction, amplified by 30 Adam steps.
    let ok_gpu = loss_rel < 1e-3 && w_rel < 1e-3;
    let ok_bf16 = bf16_rel < 0.02;
    Ok(json!({
        "check": "correctness", "shape": format!("{shape:?}").to_lowercase(), "steps": steps, "batch": batch,
        "gpu_kernels": gpu_kernels, "loss_cpu": cpu_loss, "loss_gpu_f32": gpu_loss,
        "loss_gpu_f32_plain_adamw": plain_loss, "loss_gpu_bf16": bf_loss,
        "loss_max_rel_diff_gpu_vs_cpu": loss_rel, "weights_max_abs_diff_gpu_vs_cpu": w_abs,
        "weights_rel_l2_diff_gpu_vs_cpu": w_rel, "bf16_final_loss_rel_diff": bf16_rel,
        "trajectory_weights_max_abs_diff_fused_vs_plain_adamw": t_abs,
        "trajectory_weights_rel_l2_diff_fused_vs_plain_adamw": t_rel,
        "pass_gpu_vs_cpu": ok_gpu, "pass_bf16": ok_bf16, "pass": ok_gpu && ok_bf16,
    }))
}

/// A NaN step as the trainer meets one on the GPU (step 5 of 8 poisoned: its loss and a gradient):
/// the device guard leaves it out of the update — under `stop` the steps after it too — without a
/// read-back in any step; the host learns of it when it reads the numbers. Weights compared exactly.
pub fn nonfinite(data: &Path, gpu_kernels: bool) -> anyhow::Result<Value> {
    use nerpos_kernels::stats;
    use nerpos_train::health::{Faults, NonFinitePolicy};
    let corpus = Corpus::read(data)?;
    let config = shape_config(ModelShape::Minilm, corpus.num_labels, corpus.num_pos, true)?;
    let plan = corpus.batches(16, None, 8, true, 13);
    let mut out = serde_json::Map::new();
    let mut pass = true;
    for policy in [NonFinitePolicy::Stop, NonFinitePolicy::Skip] {
        let mut cfg = train_config(data, Precision::Bf16, gpu_kernels, true)?;
        cfg.nonfinite = policy;
        let dev = device(&cfg)?;
        let mut settings = StepSettings::from_config(&cfg, 1);
        // On a GPU the numbers are on the device anyway; on the CPU (NERPOS_BENCH_DEVICE=cpu) this
        // takes the GPU's path there.
        settings.defer_checks = true;
        let mut s = Stepper::with(&config, &dev, settings, &cfg, plan.len(), Comm::Single)?;
        s.trainer.set_faults(Faults::at(&[5]));
        for b in &plan[..4] {
            s.step(b)?;
        }
        s.loss()?;
        let before = s.weights()?;
        let reads = stats::read_backs();
        // `stop`: steps 5–8 all left out; `skip`: step 5 only (read before step 6).
        let left_out = if policy == NonFinitePolicy::Stop {
            4
        } else {
            1
        };
        for b in &plan[4..4 + left_out] {
            s.step(b)?;
        }
        let read_backs = stats::read_backs() - reads;
        let unchanged = weight_diff(&s.weights()?, &before).0 == 0.0;
        for b in &plan[4 + left_out..] {
            s.step(b)?;
        }
        let (_, late) = s.trainer.take_means()?;
        let bad: Vec<usize> = late
            .iter()
            .filter(|h| !h.finite())
            .map(|h| h.step)
            .collect();
        let adam_steps = s.trainer.optimizer.steps;
        let want_adam = if policy == NonFinitePolicy::Stop {
            8
        } else {
            7
        };
        let ok = read_backs == 0
            && unchanged
            && bad == [5]
            && (policy == NonFinitePolicy::Stop || adam_steps == want_adam);
        pass &= ok;
        out.insert(
            format!("{policy:?}").to_lowercase(),
            json!({"read_backs": read_backs, "weights_unchanged": unchanged, "non_finite_steps": bad,
                "adam_steps": adam_steps, "pass": ok}),
        );
    }
    Ok(json!({"check": "nonfinite", "gpu_kernels": gpu_kernels, "policies": out, "pass": pass}))
}

/// Model FLOPs of one training step (forward + backward = 3× forward) on a packed batch: the real
/// tokens' linear layers, each row's attention over itself, the head on the labelled positions.
fn step_flops(c: &ModelConfig, b: &PackedBatch) -> f64 {
    let (h, l, i) = (
        c.bert.hidden_size as f64,
        c.bert.num_hidden_layers as f64,
        c.bert.intermediate_size as f64,
    );
    let tokens = b.tokens() as f64;
    let per_token_layer = 2.0 * (4.0 * h * h + 2.0 * h * i);
    let attention: f64 = b
        .lengths()
        .iter()
        .map(|&len| 2.0 * 2.0 * (len * len) as f64 * h)
        .sum();
    let head = 2.0 * (h + c.head.pos_dim as f64) * c.head.num_labels as f64;
    3.0 * (l * (tokens * per_token_layer + attention) + b.head.len() as f64 * head)
}

/// A packed batch as the padded batch PyTorch's reference (tests/bench/gpu_torch.py) reads.
fn padded_json(b: &PackedBatch, c: &Corpus) -> Value {
    let len = b.lengths().into_iter().max().unwrap_or(0);
    let n = b.rows() * len;
    let (mut ids, mut mask) = (vec![c.pad_id; n], vec![0u8; n]);
    let (mut pos, mut labels) = (vec![c.pos_pad; n], vec![-100i64; n]);
    let starts = &b.cu_seqlens;
    let mut head = b.head.iter().zip(&b.labels).peekable();
    for r in 0..b.rows() {
        let (s, e) = (starts[r] as usize, starts[r + 1] as usize);
        for (k, t) in (s..e).enumerate() {
            ids[r * len + k] = b.input_ids[t];
            mask[r * len + k] = 1;
            pos[r * len + k] = b.pos_ids[t];
            if let Some((_, &l)) = head.next_if(|(p, _)| **p as usize == t) {
                labels[r * len + k] = i64::from(l);
            }
        }
    }
    json!({"rows": b.rows(), "len": len, "input_ids": ids, "attention_mask": mask, "pos_ids": pos,
        "labels": labels, "num_labels": c.num_labels, "num_pos": c.num_pos})
}

/// What one speed measurement runs.
pub struct SpeedRun<'a> {
    pub data: &'a Path,
    pub shape: ModelShape,
    pub batch: usize,
    pub batch_tokens: Option<usize>,
    pub precision: Precision,
    pub steps: usize,
    pub warmup: usize,
    pub grouped: bool,
    pub fused_adamw: bool,
    pub gpu_kernels: bool,
    pub peak_tflops: Option<f64>,
    pub dump: Option<&'a Path>,
    /// Synchronise between phases and report where the step's time goes (slower steps).
    pub profile: bool,
    /// Sum the gradients over a world-1 NCCL communicator (the multi-GPU path, nothing to exchange)
    /// and time that reduction alone too.
    pub nccl: bool,
}

/// What the timed steps did besides computing.
struct Counts {
    /// Fused-kernel launches per step (candle's own kernels are not counted).
    launches: f64,
    /// Device→host reads during the timed steps, before the one read of the loss at their end.
    read_backs: u64,
}

/// The timed steps on `plan`: the seconds they took, the mean loss and the counts.
fn timed_steps(
    s: &mut Stepper,
    dev: &Device,
    plan: &[PackedBatch],
) -> anyhow::Result<(f64, f64, Counts)> {
    use nerpos_kernels::stats;
    let (launches, reads) = (stats::launches(), stats::read_backs());
    let t0 = Instant::now();
    for b in plan {
        s.step(b)?;
    }
    let read_backs = stats::read_backs() - reads;
    let launched = stats::launches() - launches;
    let mean_loss = s.loss()?;
    dev.synchronize()?;
    let counts = Counts {
        launches: launched as f64 / plan.len() as f64,
        read_backs,
    };
    Ok((t0.elapsed().as_secs_f64(), mean_loss, counts))
}

/// The synchronised profile of the timed steps: milliseconds per step by phase, and grouped into
/// matrix products, attention, the other kernels (glue), the optimiser and the rest of the step.
fn profile_json(steps: usize, secs: f64) -> Value {
    let per_step = |s: f64| 1e3 * s / steps as f64;
    let phases = nerpos_model::profile::totals();
    let sum =
        |f: &dyn Fn(&str) -> bool| -> f64 { phases.iter().filter(|p| f(p.0)).map(|p| p.1).sum() };
    let matmul = sum(&|n| n == "fwd/bwd: matmul");
    let attention = sum(&|n| n == "fwd/bwd: attention");
    let kernels = sum(&|n| n.starts_with("fwd/bwd: ") && !n.contains("rows"));
    let optimiser = sum(&|n| n == "step: AdamW" || n == "step: gradient norm");
    let by_phase: serde_json::Map<String, Value> = phases
        .iter()
        .map(|(n, s, _)| ((*n).to_owned(), json!(per_step(*s))))
        .collect();
    json!({
        "step_ms": per_step(secs), "matmul_ms": per_step(matmul), "attention_ms": per_step(attention),
        "glue_ms": per_step(kernels - matmul - attention), "optimiser_ms": per_step(optimiser),
        "other_ms": per_step(secs - kernels - optimiser), "phases_ms": by_phase,
    })
}

/// Training throughput of one configuration (no read-back until the end of the timed steps, as the
/// training loop runs between log lines).
pub fn speed(r: &SpeedRun) -> anyhow::Result<Value> {
    let corpus = Corpus::read(r.data)?;
    let config = shape_config(r.shape, corpus.num_labels, corpus.num_pos, true)?;
    let plan = corpus.batches(r.batch, r.batch_tokens, r.warmup + r.steps, r.grouped, 11);
    if let Some(path) = r.dump {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for b in &plan {
            writeln!(f, "{}", padded_json(b, &corpus))?;
        }
    }
    let cfg = train_config(r.data, r.precision, r.gpu_kernels, r.fused_adamw)?;
    let dev = device(&cfg)?;
    let comm = if r.nccl {
        crate::comm::nccl_alone(&dev)?
    } else {
        Comm::Single
    };
    let settings = StepSettings::from_config(&cfg, 1);
    let mut s = Stepper::with(&config, &dev, settings, &cfg, r.warmup + r.steps, comm)?;
    for b in &plan[..r.warmup] {
        s.step(b)?;
    }
    s.loss()?;
    dev.synchronize()?;
    nerpos_model::gpu::reset_peak_memory(&dev)?;
    if r.profile {
        let d = dev.clone();
        nerpos_model::profile::enable_synchronised(move || {
            // A failed wait shows again at the step's own synchronisation.
            let _ = d.synchronize();
        });
    }
    let timed = &plan[r.warmup..];
    let (secs, mean_loss, counts) = timed_steps(&mut s, &dev, timed)?;
    if counts.read_backs > 0 {
        anyhow::bail!(
            "{} device→host reads during {} timed steps: a step must not wait for the device",
            counts.read_backs,
            r.steps
        );
    }
    let grad_dtype = match r.precision {
        Precision::Bf16 => candle_core::DType::BF16,
        Precision::F32 | Precision::Tf32 => candle_core::DType::F32,
    };
    let reduction_ms = if r.nccl {
        Some(crate::comm::reduction_alone(
            &mut s.trainer,
            grad_dtype,
            &dev,
            5,
        )?)
    } else {
        None
    };
    let tokens: usize = timed.iter().map(PackedBatch::tokens).sum();
    // What the same batches would be padded to their longest row (PyTorch's reference computes that).
    let padded: usize = timed
        .iter()
        .map(|b| b.rows() * b.lengths().into_iter().max().unwrap_or(0))
        .sum();
    let sentences: usize = timed.iter().map(PackedBatch::rows).sum();
    let flops: f64 = timed.iter().map(|b| step_flops(&config, b)).sum();
    let achieved = flops / secs / 1e12;
    Ok(json!({
        "check": "speed", "impl": "nerpos", "shape": format!("{:?}", r.shape).to_lowercase(), "batch": r.batch,
        "batch_tokens": r.batch_tokens, "gpu_kernels": r.gpu_kernels,
        "precision": format!("{:?}", r.precision).to_lowercase(), "grouped": r.grouped, "fused_adamw": r.fused_adamw,
        "steps": r.steps, "seconds": secs, "step_ms": 1e3 * secs / r.steps as f64,
        "tokens_per_s": tokens as f64 / secs, "padded_tokens_per_s": padded as f64 / secs,
        "sentences_per_s": sentences as f64 / secs, "model_tflops": achieved,
        "mfu": r.peak_tflops.map(|p| achieved / p),
        "peak_memory_mib": nerpos_model::gpu::peak_memory(&dev)?.map(|b| b as f64 / 1048576.0),
        "mean_loss": mean_loss, "params": s.trainer.model.params.count(),
        "launches_per_step": counts.launches, "read_backs_per_step": counts.read_backs as f64 / r.steps as f64,
        "profiled": r.profile, "profile": r.profile.then(|| profile_json(r.steps, secs)),
        "comm": if r.nccl { "nccl" } else { "single" }, "reduction_alone_ms": reduction_ms,
    }))
}
