//! nerpos-gpu-bench: the measurements behind `launch/gpu-check.sh`.
//!
//! `correctness`: the same batches trained on the GPU (f32) and on the CPU, loss curves and final
//! weights compared; then a bf16 run of the same batches against the f32 one.
//! `speed`: training throughput, peak GPU memory and model FLOPs utilisation of randomly initialised
//! models of MiniLM's and BERT-base's shapes, on batches of a prepared dataset (no checkpoint needed).
//! `kernels`: every fused CUDA kernel against its CPU kernel on the same random inputs (f32, bf16).
//! Each prints JSON (and writes it to `--out`); the shell suite turns it into its table.
//! `--gpu-kernels` runs `correctness` and `speed` with the fused CUDA kernels on.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use clap::{Parser, Subcommand, ValueEnum};
use nerpos_dist::Comm;
use nerpos_model::PackedBatch;
use nerpos_model::device_check::KernelCheck;
use nerpos_model::{BertNerPos, Grad, HeadConfig, ModelConfig};
use nerpos_prep::{Columns, Dataset, Part, Row, Split};
use nerpos_train::config::ReduceDtype;
use nerpos_train::data::pack_batch;
use nerpos_train::optim::{AdamW, AdamWConfig, GradScale, lr_factor};
use nerpos_train::{StepSettings, Trainer};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    version,
    about = "GPU correctness and speed measurements for launch/gpu-check.sh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
enum ModelShape {
    /// 6 layers, hidden 384, 12 heads (all-MiniLM-L6-v2)
    Minilm,
    /// 12 layers, hidden 768, 12 heads (bert-base)
    Base,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
enum Precision {
    F32,
    Tf32,
    Bf16,
}

#[derive(Subcommand)]
enum Cmd {
    /// GPU f32 vs CPU on the same batches; bf16 vs f32 on the GPU.
    Correctness {
        /// Dataset folder written by nerpos-prep.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, value_enum, default_value = "minilm")]
        shape: ModelShape,
        /// With the fused CUDA kernels (LayerNorm, GELU, dropout, attention, cross-entropy).
        #[arg(long)]
        gpu_kernels: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Every fused CUDA kernel against its CPU kernel (one JSON line per kernel and dtype).
    Kernels,
    /// Training throughput of one configuration.
    Speed {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_enum)]
        shape: ModelShape,
        /// Sentences per batch.
        #[arg(long)]
        batch: usize,
        /// Instead of a fixed number of sentences: as many as fit this many real tokens.
        #[arg(long)]
        batch_tokens: Option<usize>,
        #[arg(long, value_enum)]
        precision: Precision,
        /// Timed steps (after the warm-up).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Batch sentences of similar length together (less padding), as the trainer does.
        #[arg(long)]
        grouped: bool,
        /// Device AdamW from composed tensor ops instead of the fused kernel.
        #[arg(long)]
        unfused_adamw: bool,
        /// With the fused CUDA kernels (LayerNorm, GELU, dropout, attention, cross-entropy).
        #[arg(long)]
        gpu_kernels: bool,
        /// Dense bf16 peak of the GPU in TFLOP/s (for MFU; 989 for H100/H200 SXM).
        #[arg(long)]
        peak_tflops: Option<f64>,
        /// Write the padded batches (warm-up and timed) as JSON lines, for the PyTorch reference.
        #[arg(long)]
        dump_batches: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn shape_config(
    shape: ModelShape,
    num_labels: usize,
    num_pos: usize,
    dropout: bool,
) -> anyhow::Result<ModelConfig> {
    let (hidden, layers, inter) = match shape {
        ModelShape::Minilm => (384, 6, 1536),
        ModelShape::Base => (768, 12, 3072),
    };
    let p = if dropout { 0.1 } else { 0.0 };
    let bert = serde_json::from_value(json!({
        "vocab_size": 30522, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": 12, "intermediate_size": inter, "hidden_act": "gelu",
        "hidden_dropout_prob": p, "attention_probs_dropout_prob": p, "max_position_embeddings": 512,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
    }))?;
    Ok(ModelConfig {
        bert,
        head: HeadConfig {
            num_labels,
            num_pos,
            pos_dim: hidden,
            use_pos: true,
            dropout: if dropout { 0.2 } else { 0.0 },
        },
    })
}

/// Hugging Face's initialisation of a fresh BERT: weights ~ N(0, 0.02), LayerNorm γ = 1, biases 0.
fn random_init(model: &BertNerPos, seed: u64) -> anyhow::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0f32, 0.02)?;
    for (name, var) in model.params.iter() {
        let n = var.elem_count();
        let data: Vec<f32> = if name.contains("LayerNorm.weight") {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            (0..n)
                .map(|_| rand_distr::Distribution::sample(&normal, &mut rng))
                .collect()
        };
        var.set(&Tensor::from_vec(data, var.shape(), &Device::Cpu)?.to_device(var.device())?)?;
    }
    Ok(())
}

struct Corpus {
    rows: Vec<Row>,
    num_labels: usize,
    num_pos: usize,
    pad_id: u32,
    pos_pad: u32,
}

fn read_corpus(dir: &Path) -> anyhow::Result<Corpus> {
    let ds = Dataset::open(dir).with_context(|| format!("opening dataset {}", dir.display()))?;
    let rows = ds.read_all(Split::Train, Part::WHOLE, Columns::Model)?;
    if rows.is_empty() {
        bail!("{}: the training split is empty", dir.display());
    }
    let m = &ds.manifest;
    Ok(Corpus {
        rows,
        num_labels: m.labels.len(),
        num_pos: m.pos.len(),
        pad_id: m.tokenizer.pad_token_id,
        pos_pad: m.pos_pad_id,
    })
}

/// `count` batches of `batch` training sentences (or of sentences filling `tokens` real tokens):
/// shuffled (seeded), optionally grouped by length.
fn batches(
    c: &Corpus,
    batch: usize,
    tokens: Option<usize>,
    count: usize,
    grouped: bool,
    seed: u64,
) -> Vec<PackedBatch> {
    if let Some(budget) = tokens {
        return token_batches(c, budget, count, seed);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = Vec::new();
    while order.len() < batch * count {
        let mut idx: Vec<usize> = (0..c.rows.len()).collect();
        idx.shuffle(&mut rng);
        order.extend(idx);
    }
    order.truncate(batch * count);
    let mut out: Vec<Vec<usize>> = Vec::new();
    if grouped {
        // As the trainer: sort chunks of 50 batches by length, cut, shuffle the batches.
        for chunk in order.chunks(batch * 50) {
            let mut chunk = chunk.to_vec();
            chunk.sort_by_key(|&i| c.rows[i].input_ids.len());
            out.extend(chunk.chunks(batch).map(<[usize]>::to_vec));
        }
        out.shuffle(&mut rng);
    } else {
        out = order.chunks(batch).map(<[usize]>::to_vec).collect();
    }
    out.iter()
        .map(|rows| pack_batch(&c.rows, rows, None))
        .collect()
}

/// `count` batches of shuffled sentences, each as many as fit `budget` real tokens.
fn token_batches(c: &Corpus, budget: usize, count: usize, seed: u64) -> Vec<PackedBatch> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(count);
    let (mut rows, mut used) = (Vec::new(), 0);
    while out.len() < count {
        let mut idx: Vec<usize> = (0..c.rows.len()).collect();
        idx.shuffle(&mut rng);
        for i in idx {
            let len = c.rows[i].input_ids.len();
            if used + len > budget && !rows.is_empty() {
                out.push(pack_batch(&c.rows, &rows, None));
                rows.clear();
                used = 0;
                if out.len() == count {
                    break;
                }
            }
            rows.push(i);
            used += len;
        }
    }
    out
}

/// The step settings of every bench run: the trainer's defaults.
fn settings(precision: Precision, fused: bool) -> StepSettings {
    StepSettings {
        seed: 1234,
        grad_accum: 1,
        max_grad_norm: 1.0,
        precision: match precision {
            Precision::F32 => nerpos_train::config::Precision::F32,
            Precision::Tf32 => nerpos_train::config::Precision::Tf32,
            Precision::Bf16 => nerpos_train::config::Precision::Bf16,
        },
        reduce_dtype: ReduceDtype::F32,
        bucket_bytes: 25_000_000,
        adamw: AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decay_all: false,
        },
        fused_adamw: fused,
    }
}

/// The trainer's step (one process) on a randomly initialised model, with the schedule of a
/// `total`-step run.
struct Stepper {
    trainer: Trainer,
    /// A second copy of the weights updated by the composed (unfused) AdamW with exactly the same
    /// gradients: how far the fused update drifts from the plain one, without the feedback through
    /// later gradients that makes two whole trajectories differ more.
    shadow: Option<(BertNerPos, AdamW)>,
    total: usize,
    done: usize,
}

impl Stepper {
    fn new(
        config: &ModelConfig,
        device: &Device,
        precision: Precision,
        fused: bool,
        total: usize,
    ) -> anyhow::Result<Stepper> {
        let master = BertNerPos::new(config.clone(), device)?;
        random_init(&master, 1234)?;
        Ok(Stepper {
            trainer: Trainer::new(master, Comm::Single, settings(precision, fused))?,
            shadow: None,
            total,
            done: 0,
        })
    }

    fn with_plain_shadow(mut self) -> anyhow::Result<Stepper> {
        let master = &self.trainer.model;
        let copy = BertNerPos::new(master.config.clone(), master.device())?;
        copy.copy_from(master)?;
        let opt = AdamW::new_composed(copy.params.iter(), settings(Precision::F32, false).adamw)?;
        self.shadow = Some((copy, opt));
        Ok(self)
    }

    /// One optimiser step on `hb` (its loss stays on the device: [`Stepper::loss`]).
    fn step(&mut self, hb: &PackedBatch) -> anyhow::Result<()> {
        let lr = 1e-4 * lr_factor(self.done, self.total / 10, self.total);
        let shadow = &mut self.shadow;
        self.trainer.step_observed(
            std::slice::from_ref(hb),
            self.done,
            lr,
            lr,
            false,
            |grads, scale| {
                if let Some((_, opt)) = shadow {
                    opt.step(grads, scale, lr, lr)?;
                }
                Ok(())
            },
        )?;
        self.done += 1;
        Ok(())
    }

    /// Mean loss of the steps since the last call (read from the device).
    fn loss(&mut self) -> anyhow::Result<f64> {
        Ok(self.trainer.take_means()?.loss)
    }

    fn weights(&self) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
        weights_of(&self.trainer.model)
    }
}

fn weights_of(model: &BertNerPos) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
    model
        .params
        .iter()
        .map(|(n, v)| {
            Ok((
                n.to_owned(),
                v.as_tensor()
                    .to_device(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            ))
        })
        .collect()
}

fn gpu() -> anyhow::Result<Device> {
    // NERPOS_BENCH_DEVICE=cpu runs the suite's code paths without a GPU (to test the suite itself).
    if std::env::var("NERPOS_BENCH_DEVICE").is_ok_and(|v| v == "cpu") {
        return Ok(Device::Cpu);
    }
    let dev = Device::new_cuda(0)
        .context("opening GPU 0 (is this a CUDA build? see launch/build-cuda.sh)")?;
    nerpos_model::gpu::tune_for_training(&dev)?;
    Ok(dev)
}

fn set_tf32(on: bool) {
    #[cfg(feature = "cuda")]
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(on);
    #[cfg(not(feature = "cuda"))]
    let _ = on;
}

fn correctness(
    data: &Path,
    steps: usize,
    batch: usize,
    shape: ModelShape,
) -> anyhow::Result<Value> {
    let corpus = read_corpus(data)?;
    // Dropout on, as users train: the GPU draws the CPU's masks (keyed by the sentence).
    let config = shape_config(shape, corpus.num_labels, corpus.num_pos, true)?;
    let plan = batches(&corpus, batch, None, steps, true, 7);
    let gpu = gpu()?;
    set_tf32(false);
    let run = |dev: &Device,
               bf16: bool,
               fused: bool,
               shadow: bool|
     -> anyhow::Result<(Vec<f64>, Stepper)> {
        let precision = if bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        };
        let mut s = Stepper::new(&config, dev, precision, fused, steps)?;
        if shadow {
            s = s.with_plain_shadow()?;
        }
        let losses = plan
            .iter()
            .map(|b| {
                s.step(b)?;
                s.loss()
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((losses, s))
    };
    let (cpu_loss, cpu) = run(&Device::Cpu, false, true, false)?;
    let (gpu_loss, g32) = run(&gpu, false, true, true)?;
    let (plain_loss, plain) = run(&gpu, false, false, false)?;
    let (bf_loss, _) = run(&gpu, true, true, false)?;

    let max_rel = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
            .fold(0.0, f64::max)
    };
    let weight_diff = |wa: BTreeMap<String, Vec<f32>>,
                       wb: BTreeMap<String, Vec<f32>>|
     -> anyhow::Result<(f64, f64)> {
        let (mut max_abs, mut num, mut den) = (0f64, 0f64, 0f64);
        for (n, x) in &wa {
            for (p, q) in x.iter().zip(&wb[n]) {
                let d = f64::from(p - q);
                max_abs = max_abs.max(d.abs());
                num += d * d;
                den += f64::from(*q) * f64::from(*q);
            }
        }
        Ok((max_abs, (num / den).sqrt()))
    };
    let (w_abs, w_rel) = weight_diff(g32.weights()?, cpu.weights()?)?;
    // Trajectories: fused and composed AdamW each with their own gradients (informative).
    let (t_abs, t_rel) = weight_diff(g32.weights()?, plain.weights()?)?;
    // The criterion: the same 30 gradients applied by both.
    let shadow = match &g32.shadow {
        Some((m, _)) => weights_of(m)?,
        None => g32.weights()?,
    };
    let (f_abs, _) = weight_diff(g32.weights()?, shadow)?;
    let loss_rel = max_rel(&gpu_loss, &cpu_loss);
    let last = steps - 1;
    let bf16_rel = (bf_loss[last] - gpu_loss[last]).abs() / gpu_loss[last];
    // GPU vs CPU: different summation orders in every reduction, amplified by 30 Adam steps.
    let ok_gpu = loss_rel < 1e-3 && w_rel < 1e-3;
    let ok_fused = f_abs <= 1e-6;
    let ok_bf16 = bf16_rel < 0.02;
    Ok(json!({
        "check": "correctness", "shape": format!("{shape:?}").to_lowercase(), "steps": steps, "batch": batch,
        "loss_cpu": cpu_loss, "loss_gpu_f32": gpu_loss, "loss_gpu_f32_plain_adamw": plain_loss, "loss_gpu_bf16": bf_loss,
        "loss_max_rel_diff_gpu_vs_cpu": loss_rel, "weights_max_abs_diff_gpu_vs_cpu": w_abs,
        "weights_rel_l2_diff_gpu_vs_cpu": w_rel, "weights_max_abs_diff_fused_vs_plain_adamw": f_abs,
        "bf16_final_loss_rel_diff": bf16_rel,
        "trajectory_weights_max_abs_diff_fused_vs_plain_adamw": t_abs, "trajectory_weights_rel_l2_diff_fused_vs_plain_adamw": t_rel,
        "pass_gpu_vs_cpu": ok_gpu, "pass_fused_adamw": ok_fused, "pass_bf16": ok_bf16,
        "pass": ok_gpu && ok_fused && ok_bf16,
    }))
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

#[allow(clippy::too_many_arguments)]
fn speed(
    data: &Path,
    shape: ModelShape,
    batch: usize,
    batch_tokens: Option<usize>,
    precision: Precision,
    steps: usize,
    warmup: usize,
    grouped: bool,
    fused: bool,
    peak_tflops: Option<f64>,
    dump: Option<&Path>,
) -> anyhow::Result<Value> {
    let corpus = read_corpus(data)?;
    let config = shape_config(shape, corpus.num_labels, corpus.num_pos, true)?;
    let plan = batches(&corpus, batch, batch_tokens, warmup + steps, grouped, 11);
    if let Some(path) = dump {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for b in &plan {
            writeln!(f, "{}", padded_json(b, &corpus))?;
        }
    }
    let dev = gpu()?;
    set_tf32(precision == Precision::Tf32);
    let mut s = Stepper::new(&config, &dev, precision, fused, warmup + steps)?;
    for b in &plan[..warmup] {
        s.step(b)?;
    }
    s.loss()?;
    dev.synchronize()?;
    nerpos_model::gpu::reset_peak_memory(&dev)?;
    // As the training loop runs: no read-back until the end of the (one) log interval.
    let t0 = Instant::now();
    for b in &plan[warmup..] {
        s.step(b)?;
    }
    let mean_loss = s.loss()?;
    dev.synchronize()?;
    let secs = t0.elapsed().as_secs_f64();
    let timed = &plan[warmup..];
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
        "check": "speed", "impl": "nerpos", "shape": format!("{shape:?}").to_lowercase(), "batch": batch,
        "batch_tokens": batch_tokens, "gpu_kernels": nerpos_model::device_ops::fused_kernels(),
        "precision": format!("{precision:?}").to_lowercase(), "grouped": grouped, "fused_adamw": fused,
        "steps": steps, "seconds": secs, "step_ms": 1e3 * secs / steps as f64,
        "tokens_per_s": tokens as f64 / secs, "padded_tokens_per_s": padded as f64 / secs,
        "sentences_per_s": sentences as f64 / secs, "model_tflops": achieved,
        "mfu": peak_tflops.map(|p| achieved / p), "peak_memory_mib": nerpos_model::gpu::peak_memory(&dev)?.map(|b| b as f64 / 1048576.0),
        "mean_loss": mean_loss, "params": s.trainer.model.params.count(),
    }))
}

/// One JSON line per kernel and dtype; fails when any kernel is off its CPU reference.
fn kernels() -> anyhow::Result<()> {
    let dev = gpu()?;
    if !dev.is_cuda() {
        bail!("the kernel check compares CUDA kernels with the CPU: it needs a GPU");
    }
    let mut checks = nerpos_model::device_check::run(&dev)?;
    checks.extend(adamw_checks(&dev)?);
    let mut failed = Vec::new();
    for c in &checks {
        let mut v = serde_json::to_value(c)?;
        v["check"] = json!("kernel");
        println!("{v}");
        if !c.pass {
            failed.push(format!("{} ({})", c.kernel, c.dtype));
        }
    }
    if !failed.is_empty() {
        bail!("kernels off their CPU reference: {}", failed.join(", "));
    }
    Ok(())
}

/// The AdamW kernels on the GPU against the CPU update: three steps of a MiniLM-shaped model on random
/// gradients large enough to be clipped, the clipping factor computed and read on the device; then the
/// bf16 copy the kernel writes against the new weights cast to bf16 (bit for bit).
fn adamw_checks(dev: &Device) -> anyhow::Result<Vec<KernelCheck>> {
    let config = shape_config(ModelShape::Minilm, 9, 7, false)?;
    let (cpu, gpu) = (
        BertNerPos::new(config.clone(), &Device::Cpu)?,
        BertNerPos::new(config.clone(), dev)?,
    );
    random_init(&cpu, 5)?;
    random_init(&gpu, 5)?;
    let half = BertNerPos::with_dtype(config, dev, candle_core::DType::BF16)?;
    let adamw = settings(Precision::F32, true).adamw;
    let mut on_cpu = AdamW::new(cpu.params.iter(), adamw)?;
    let mut on_gpu = AdamW::new(gpu.params.iter(), adamw)?;
    anyhow::ensure!(
        on_gpu.write_compute_copy(&half)?,
        "the AdamW kernel does not take the bf16 copy"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for step in 0..3 {
        let mut g_cpu = BTreeMap::new();
        let mut g_gpu = BTreeMap::new();
        for (name, var) in cpu.params.iter() {
            let v: Vec<f32> = (0..var.elem_count())
                .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
                .collect();
            let t = Tensor::from_vec(v, var.shape(), &Device::Cpu)?;
            g_gpu.insert(name.to_owned(), Grad::Dense(t.to_device(dev)?));
            g_cpu.insert(name.to_owned(), Grad::Dense(t));
        }
        // Norm ≈ 5 after the 1/500 scale: clipped to 1.
        let lr = 1e-3 * (step + 1) as f64;
        for (opt, grads) in [(&mut on_cpu, &g_cpu), (&mut on_gpu, &g_gpu)] {
            let (scale, _) = GradScale::clipped(1.0 / 500.0, &AdamW::squared_norm(grads)?, 1.0)?;
            opt.step(grads, &scale, lr, lr)?;
        }
    }
    let (mut err, mut copy_err) = (0f32, 0f32);
    for (name, var) in cpu.params.iter() {
        let want = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let got = gpu.params.get(name).context("a parameter")?.as_tensor();
        let copy = half.params.get(name).context("a parameter")?.as_tensor();
        let cast = got
            .to_dtype(candle_core::DType::BF16)?
            .to_dtype(candle_core::DType::F32)?;
        let copy = copy.to_dtype(candle_core::DType::F32)?;
        let (got, cast, copy) = (
            got.flatten_all()?.to_vec1::<f32>()?,
            cast.flatten_all()?.to_vec1::<f32>()?,
            copy.flatten_all()?.to_vec1::<f32>()?,
        );
        for ((g, w), (c, h)) in got.iter().zip(&want).zip(cast.iter().zip(&copy)) {
            err = err.max((g - w).abs() / (1.0 + w.abs()));
            copy_err = copy_err.max((c - h).abs());
        }
    }
    let check = |kernel: &str, dtype, max_rel_err: f32, tolerance: f32| KernelCheck {
        kernel: kernel.to_owned(),
        dtype,
        max_rel_err,
        tolerance,
        pass: max_rel_err <= tolerance,
    };
    Ok(vec![
        check("adamw, 3 steps, clipping on the device", "f32", err, 1e-5),
        check("adamw bf16 copy = new weights cast", "bf16", copy_err, 0.0),
    ])
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (result, out) = match cli.cmd {
        Cmd::Correctness {
            data,
            steps,
            batch,
            shape,
            gpu_kernels,
            out,
        } => {
            nerpos_model::device_ops::set_fused_kernels(gpu_kernels);
            let mut v = correctness(&data, steps.max(2), batch, shape)?;
            v["gpu_kernels"] = json!(gpu_kernels);
            (v, out)
        }
        Cmd::Kernels => return kernels(),
        Cmd::Speed {
            data,
            shape,
            batch,
            batch_tokens,
            precision,
            steps,
            warmup,
            grouped,
            unfused_adamw,
            gpu_kernels,
            peak_tflops,
            dump_batches,
            out,
        } => (
            {
                nerpos_model::device_ops::set_fused_kernels(gpu_kernels);
                speed(
                    &data,
                    shape,
                    batch,
                    batch_tokens,
                    precision,
                    steps.max(1),
                    warmup,
                    grouped,
                    !unfused_adamw,
                    peak_tflops,
                    dump_batches.as_deref(),
                )?
            },
            out,
        ),
    };
    let text = serde_json::to_string(&result)?;
    println!("{text}");
    if let Some(path) = out {
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
