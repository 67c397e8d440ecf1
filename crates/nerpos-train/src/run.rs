//! The training loop of one process.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use nerpos_dist::{Comm, Rendezvous, Timeouts, all_reduce_bucketed};
use nerpos_eval::Report;
use nerpos_model::{BertNerPos, Carried, DropoutRng, HeadConfig, NerposMeta};
use nerpos_prep::{Columns, Dataset, Part, Row, Split};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::checkpoint::{self, LoopState};
use crate::config::TrainConfig;
use crate::data::{Batching, LoaderSpec, start_loader, steps_per_epoch};
use crate::evaluate::{EvalData, EvalSpec, evaluate};
use crate::optim::{AdamW, AdamWConfig, lr_factor};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    /// Stopped by SIGTERM/SIGUSR1/SIGINT after writing a resumable checkpoint.
    Interrupted,
}

/// Exit code of a run stopped by a signal after checkpointing (resume it with `--resume`).
pub const EXIT_INTERRUPTED: i32 = 75;

/// One line of `metrics.jsonl`.
#[derive(Debug, Serialize)]
struct MetricsLine {
    step: usize,
    epoch: usize,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens_per_s: f64,
    sentences_per_s: f64,
    step_s: f64,
    allreduce_s: f64,
    data_wait_s: f64,
}

/// `summary.json`: what the launcher collects.
#[derive(Debug, Serialize)]
struct Summary {
    status: &'static str,
    steps: usize,
    epochs: usize,
    world_size: usize,
    best_dev_f1: Option<f64>,
    best_step: Option<usize>,
    test_f1: Option<f64>,
    wall_s: f64,
    weights_sha256: String,
}

/// Writes `path` whole or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn device(cfg: &TrainConfig, rdv: &Rendezvous) -> anyhow::Result<Device> {
    match cfg.device.as_str() {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let dev = Device::new_cuda(rdv.local_rank).with_context(|| {
                format!(
                    "opening GPU {} (LOCAL_RANK); built with the cuda feature?",
                    rdv.local_rank
                )
            })?;
            nerpos_model::gpu::tune_for_training(&dev)?;
            // TF32 matrix products for f32 runs (cuBLAS's reduced-precision f32 mode).
            #[cfg(feature = "cuda")]
            candle_core::cuda_backend::set_gemm_reduced_precision_f32(cfg.precision == "tf32");
            Ok(dev)
        }
    }
}

fn communicator(cfg: &TrainConfig, rdv: &Rendezvous, dev: &Device) -> anyhow::Result<Comm> {
    let t = Timeouts::from_env()?;
    match dev {
        Device::Cpu => Ok(Comm::cpu(rdv, t)?),
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) if rdv.world_size > 1 => Ok(Comm::nccl(rdv, t, cuda.cuda_stream())?),
        _ => {
            let _ = cfg;
            Ok(Comm::cpu(rdv, t)?)
        }
    }
}

/// SHA-256 of all parameters (name order), to compare ranks.
fn weights_hash(model: &BertNerPos) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    for (name, var) in model.params.iter() {
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

fn check_same_weights(comm: &mut Comm, model: &BertNerPos, when: &str) -> anyhow::Result<String> {
    let hash = weights_hash(model)?;
    let all = comm.all_gather(hash.as_bytes())?;
    if let Some(r) = all.iter().position(|h| h != hash.as_bytes()) {
        bail!(
            "weights diverged {when}: rank {r} has {} but rank {} has {hash}",
            String::from_utf8_lossy(&all[r]),
            comm.rank()
        );
    }
    // Every rank logs its own hash: job logs show the agreement, not only rank 0's word for it.
    info!(weights_sha256 = %hash, ranks = all.len(), "weights identical on all ranks {when}");
    Ok(hash)
}

fn snapshot(model: &BertNerPos) -> anyhow::Result<Vec<Tensor>> {
    model
        .params
        .iter()
        .map(|(_, v)| Ok(v.as_tensor().copy()?))
        .collect()
}

fn restore(model: &BertNerPos, weights: &[Tensor]) -> anyhow::Result<()> {
    for ((_, v), w) in model.params.iter().zip(weights) {
        v.set(w)?;
    }
    Ok(())
}

/// Everything a run needs, set up.
struct Setup {
    cfg: TrainConfig,
    run: PathBuf,
    rank: usize,
    world: usize,
    comm: Comm,
    dev: Device,
    model: BertNerPos,
    carried: Carried,
    meta: NerposMeta,
    train: Arc<Vec<Row>>,
    dev_data: EvalData,
    test_data: EvalData,
    pad_id: u32,
    state: LoopState,
    optimizer_state: Option<PathBuf>,
}

fn read_split(ds: &Dataset, split: Split) -> anyhow::Result<Vec<Row>> {
    Ok(ds.read_all(split, Part::WHOLE, Columns::Model)?)
}

/// Keeps the rows of the first `n` sentences (by sentence index; every window of a long sentence stays
/// with it); 0 keeps all.
fn first_sentences(rows: &mut Vec<Row>, n: usize) {
    if n == 0 {
        return;
    }
    let mut ids: Vec<u32> = rows.iter().map(|r| r.sentence_index).collect();
    ids.sort_unstable();
    ids.dedup();
    if let Some(&last) = ids.get(n - 1) {
        rows.retain(|r| r.sentence_index <= last);
    }
}

fn setup(cfg: TrainConfig, resume: Option<&Path>) -> anyhow::Result<Setup> {
    let rdv = Rendezvous::from_env()?;
    let dev = device(&cfg, &rdv)?;
    let mut comm = communicator(&cfg, &rdv, &dev)?;
    let (rank, world) = (comm.rank(), comm.world_size());
    info!(rank, world, launch = ?rdv.mode, device = ?dev, "process joined");

    let ds = Dataset::open(&cfg.data)?;
    if rank == 0 {
        ds.verify()?;
    }
    let m = &ds.manifest;
    let (_, model_fp) = nerpos_prep::fingerprint(&cfg.model)?;
    if model_fp != m.tokenizer.fingerprint {
        bail!(
            "{} was prepared with another tokenizer ({}) than {}'s ({model_fp}); prepare the data with \
             nerpos-prep --tokenizer {}",
            cfg.data.display(),
            m.tokenizer.fingerprint,
            cfg.model.display(),
            cfg.model.display()
        );
    }

    let fine_tuned = cfg
        .model
        .join(nerpos_model::checkpoint::NERPOS_JSON)
        .is_file();
    let (model, carried) = if fine_tuned {
        let (model, meta) = BertNerPos::load_with_dropout(
            &cfg.model,
            &dev,
            cfg.encoder_dropout,
            Some(cfg.dropout),
        )?;
        if meta.labels != m.labels || meta.pos != m.pos {
            bail!(
                "{} was fine-tuned with other labels or POS tags than {} has; continue training only on \
                 data with the same vocabularies",
                cfg.model.display(),
                cfg.data.display()
            );
        }
        (model, Carried::default())
    } else {
        let (bert, _) = nerpos_model::BertConfig::read(&cfg.model)?;
        let head = HeadConfig {
            num_labels: m.labels.len(),
            num_pos: m.pos.len(),
            pos_dim: cfg.pos_dim.unwrap_or(bert.hidden_size),
            use_pos: cfg.use_pos,
            dropout: cfg.dropout,
        };
        BertNerPos::from_pretrained(&cfg.model, head, cfg.encoder_dropout, cfg.seed, &dev)?
    };
    let meta = NerposMeta {
        format_version: nerpos_model::checkpoint::FORMAT_VERSION,
        created_by: format!("nerpos-train {}", env!("CARGO_PKG_VERSION")),
        labels: m.labels.clone(),
        pos: m.pos.clone(),
        pos_pad_id: m.pos_pad_id,
        pos_unk_id: m.pos_unk_id,
        pos_dim: model.config.head.pos_dim,
        use_pos: model.config.head.use_pos,
        max_len: m.options.max_len,
        dropout: cfg.dropout,
        label_subwords: match m.options.label_subwords {
            nerpos_prep::manifest::LabelSubwords::First => "first".into(),
            nerpos_prep::manifest::LabelSubwords::All => "all".into(),
        },
        tokenizer_fingerprint: Some(m.tokenizer.fingerprint.clone()),
    };

    let mut state = LoopState {
        step: 0,
        epoch: 0,
        index_in_epoch: 0,
        adam_steps: 0,
        best_dev_f1: None,
        best_step: None,
        evals_since_best: 0,
        world_size: world,
        labels: m.labels.clone(),
        pos: m.pos.clone(),
    };
    let run = match resume {
        Some(r) => r.to_owned(),
        None => cfg.out.clone(),
    };
    let mut optimizer_state = None;
    if resume.is_some() {
        let loaded = checkpoint::load_latest(&run)?;
        if loaded.state.labels != m.labels || loaded.state.pos != m.pos {
            bail!(
                "{}: the checkpoint's labels or POS tags differ from {}'s",
                loaded.dir.display(),
                cfg.data.display()
            );
        }
        if loaded.state.world_size != world {
            warn!(
                saved = loaded.state.world_size,
                now = world,
                "resuming with another number of processes: the optimiser batches stay the same only if \
                 batch_size × processes is unchanged"
            );
        }
        for (name, var) in model.params.iter() {
            let w = loaded
                .weights
                .get(name)
                .with_context(|| format!("{}: no weights for {name}", loaded.dir.display()))?;
            var.set(&w.to_device(&dev)?)?;
        }
        info!(checkpoint = %loaded.dir.display(), step = loaded.state.step, "resuming");
        state = LoopState {
            world_size: world,
            ..loaded.state
        };
        optimizer_state = Some(loaded.optimizer);
    } else if rank == 0 && run.join("config.toml").exists() && !checkpoint::list(&run)?.is_empty() {
        bail!(
            "{} already holds a run; resume it with --resume {}, or set another `out`",
            run.display(),
            run.display()
        );
    }

    // Rank 0's weights everywhere (identical already when every rank loaded the same files with the
    // same seed; the broadcast makes it so even if the files differ between nodes).
    for (_, var) in model.params.iter() {
        comm.broadcast_tensor(var.as_tensor(), 0)?;
    }
    check_same_weights(&mut comm, &model, "at the start")?;

    let mut train = read_split(&ds, Split::Train)?;
    first_sentences(&mut train, cfg.train_sentences);
    if train.is_empty() {
        bail!("{}: the training split is empty", cfg.data.display());
    }
    let mut dev_rows = read_split(&ds, Split::Dev)?;
    first_sentences(&mut dev_rows, cfg.eval_sentences);
    let mut test_rows = read_split(&ds, Split::Test)?;
    first_sentences(&mut test_rows, cfg.eval_sentences);
    let dev_data = EvalData::new(dev_rows);
    let test_data = EvalData::new(test_rows);
    Ok(Setup {
        cfg,
        run,
        rank,
        world,
        comm,
        dev,
        model,
        carried,
        meta,
        train: Arc::new(train),
        dev_data,
        test_data,
        pad_id: m.tokenizer.pad_token_id,
        state,
        optimizer_state,
    })
}

/// Runs (or resumes) training; `stop` is raised by signals.
pub fn run(
    cfg: TrainConfig,
    resume: Option<&Path>,
    stop: Arc<AtomicBool>,
    progress: bool,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let Setup {
        cfg,
        run,
        rank,
        world,
        mut comm,
        dev,
        model,
        carried,
        meta,
        train,
        dev_data,
        test_data,
        pad_id,
        mut state,
        optimizer_state,
    } = setup(cfg, resume)?;

    let batching = Batching {
        world,
        batch_size: cfg.batch_size,
        batch_tokens: cfg.batch_tokens,
        grad_accum: cfg.grad_accum,
        length_grouping: cfg.length_grouping,
        seed: cfg.seed,
    };
    let lengths: Vec<usize> = train.iter().map(|r| r.input_ids.len()).collect();
    let per_epoch = steps_per_epoch(&lengths, &batching);
    let total = if cfg.max_steps > 0 {
        cfg.max_steps
    } else {
        cfg.epochs * per_epoch
    };
    let epochs = if cfg.max_steps > 0 {
        total.div_ceil(per_epoch)
    } else {
        cfg.epochs
    };
    let warmup = cfg
        .warmup_steps
        .unwrap_or((cfg.warmup_ratio * total as f64).ceil() as usize);
    info!(
        train_rows = train.len(),
        steps_per_epoch = per_epoch,
        total_steps = total,
        warmup,
        "schedule"
    );

    // Mixed precision: forward/backward on a bf16 copy refreshed from the f32 master every step.
    let compute = match cfg.precision.as_str() {
        "bf16" => {
            let half = BertNerPos::with_dtype(model.config.clone(), &dev, DType::BF16)?;
            Some(half)
        }
        _ => None,
    };
    let reduce_dtype = if cfg.allreduce_dtype == "bf16" {
        DType::BF16
    } else {
        DType::F32
    };

    let mut optimizer = AdamW::new(
        model.params.iter(),
        AdamWConfig {
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
            decay_all: cfg.decay_all,
        },
    )?;
    optimizer.fused = cfg.fused_adamw;
    if let Some(p) = &optimizer_state {
        optimizer.load_state(p, state.adam_steps)?;
    }

    let metrics_path = run.join("metrics.jsonl");
    if rank == 0 {
        std::fs::create_dir_all(run.join("eval"))
            .with_context(|| format!("creating {}", run.display()))?;
        write_atomic(&run.join("config.toml"), cfg.to_toml().as_bytes())?;
        // On resume, drop the lines of steps after the checkpoint (they will be redone).
        let kept: String = std::fs::read_to_string(&metrics_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s as usize <= state.step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&metrics_path, kept.as_bytes())?;
    }
    let mut metrics = if rank == 0 {
        Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&metrics_path)
                .with_context(|| format!("opening {}", metrics_path.display()))?,
        )
    } else {
        None
    };

    let bar = if rank == 0 && progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:25}] {pos}/{len} steps {per_sec} ETA {eta}")?
            .progress_chars("=> "),
    );
    bar.set_position(state.step as u64);

    let eval_spec = EvalSpec {
        labels: &meta.labels,
        batch_rows: cfg.eval_batch_size,
        pad_id,
        pos_pad_id: meta.pos_pad_id,
        device: &dev,
    };
    let bucket_bytes = (cfg.bucket_mb * 1e6) as usize;
    let mut best_weights: Option<Vec<Tensor>> = None;
    let mut window = Window::default();
    let mut curves = Curves::default();
    let mut stopped = false;

    let loader = start_loader(
        train.clone(),
        LoaderSpec {
            batching,
            rank,
            epochs,
            pad_id,
            pos_pad: meta.pos_pad_id,
            pos_unk: meta.pos_unk_id,
            pos_dropout: cfg.pos_dropout,
        },
        state.epoch,
        state.index_in_epoch,
    );
    let mut wait_started = Instant::now();
    while state.step < total {
        let Ok(loaded) = loader.recv() else { break };
        let data_wait = wait_started.elapsed().as_secs_f64();
        let t0 = Instant::now();

        // Forward/backward of this rank's micro-batches, gradients summed locally.
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let (mut loss_sum, mut count, mut tokens, mut rows) = (0f64, 0usize, 0usize, 0usize);
        if let Some(half) = &compute {
            half.copy_from(&model)?;
        }
        let stepper = compute.as_ref().unwrap_or(&model);
        for (k, hb) in loaded.micro.iter().enumerate() {
            if hb.rows == 0 {
                continue;
            }
            let (inputs, targets) = hb.to_device(&dev)?;
            let seed = DropoutRng::step_seed(
                cfg.seed,
                (state.step * cfg.grad_accum + k) as u64,
                rank as u64,
            );
            let mut rng = DropoutRng::new(seed, &dev)?;
            let out = stepper.forward_backward(&inputs, &targets, Some(&mut rng))?;
            for (name, g) in out.grads {
                // Micro-batch gradients are accumulated in f32 whatever the compute dtype.
                let g = match grads.remove(&name) {
                    Some(acc) => (acc.to_dtype(DType::F32)? + g.to_dtype(DType::F32)?)?,
                    None => g,
                };
                grads.insert(name, g);
            }
            loss_sum += out.loss_sum;
            count += out.count;
            tokens += hb.tokens;
            rows += hb.rows;
        }
        // A rank with no rows this step still takes part in the reduction, with zeros.
        for (name, var) in model.params.iter() {
            if !grads.contains_key(name) {
                grads.insert(name.to_owned(), var.as_tensor().zeros_like()?);
            }
        }

        let t_reduce = Instant::now();
        let names: Vec<String> = grads.keys().cloned().collect();
        let list: Vec<Tensor> = names
            .iter()
            .map(|n| grads[n].to_dtype(reduce_dtype)?.contiguous())
            .collect::<candle_core::Result<_>>()?;
        let reduced = all_reduce_bucketed(&mut comm, &list, bucket_bytes)?;
        let reduced: Vec<Tensor> = reduced
            .into_iter()
            .map(|g| g.to_dtype(DType::F32))
            .collect::<candle_core::Result<_>>()?;
        let grads: BTreeMap<String, Tensor> = names.into_iter().zip(reduced).collect();
        let mut scalars = [
            loss_sum,
            count as f64,
            tokens as f64,
            rows as f64,
            f64::from(u8::from(stop.load(Ordering::Relaxed))),
        ];
        comm.all_reduce_sum(&mut scalars)?;
        let allreduce = t_reduce.elapsed().as_secs_f64();
        let [g_loss, g_count, g_tokens, g_rows, g_stop] = scalars;

        let lr = cfg.lr * lr_factor(state.step, warmup, total);
        let head_lr = cfg.head_lr.unwrap_or(cfg.lr) * lr_factor(state.step, warmup, total);
        let mut grad_norm = 0.0;
        if g_count > 0.0 {
            let scale = 1.0 / g_count;
            grad_norm = AdamW::squared_norm(&grads)?.sqrt() * scale;
            let clip = if cfg.max_grad_norm > 0.0 {
                (cfg.max_grad_norm / (grad_norm + 1e-6)).min(1.0)
            } else {
                1.0
            };
            optimizer.step(&grads, scale * clip, lr, head_lr)?;
        }
        state.step += 1;
        state.adam_steps = optimizer.steps;
        state.epoch = loaded.epoch;
        state.index_in_epoch = loaded.index + 1;
        if state.index_in_epoch >= per_epoch {
            state.epoch += 1;
            state.index_in_epoch = 0;
        }
        let step_s = t0.elapsed().as_secs_f64() + data_wait;
        let loss = if g_count > 0.0 { g_loss / g_count } else { 0.0 };
        window.add(
            loss, lr, grad_norm, g_tokens, g_rows, step_s, allreduce, data_wait,
        );
        curves.loss.push((state.step as f64, loss));
        curves.lr.push((state.step as f64, lr));
        bar.set_message(format!(
            "epoch {} loss {loss:.4} lr {lr:.2e}",
            loaded.epoch + 1
        ));
        bar.set_position(state.step as u64);
        if state.step % cfg.log_every == 0 || state.step == total {
            let line = window.take(state.step, loaded.epoch + 1);
            if let Some(f) = metrics.as_mut() {
                writeln!(f, "{}", serde_json::to_string(&line)?)?;
            }
            info!(
                step = line.step,
                loss = format!("{:.4}", line.loss),
                lr = format!("{:.2e}", line.lr),
                tokens_per_s = format!("{:.0}", line.tokens_per_s),
                "train"
            );
        }

        let end_of_epoch = state.index_in_epoch == 0;
        let eval_now = (cfg.eval_every > 0 && state.step % cfg.eval_every == 0)
            || (cfg.eval_every == 0 && end_of_epoch)
            || state.step == total;
        let interrupted = g_stop > 0.0;
        let mut stop_early = false;
        if eval_now && !dev_data.is_empty() {
            let (report, _) = evaluate(&model, &mut comm, &dev_data, &eval_spec)?;
            let hash = check_same_weights(&mut comm, &model, &format!("at step {}", state.step))?;
            let f1 = report.micro.f1;
            curves.f1.push((state.step as f64, f1));
            let improved = state.best_dev_f1.is_none_or(|b| f1 > b);
            if improved {
                state.best_dev_f1 = Some(f1);
                state.best_step = Some(state.step);
                state.evals_since_best = 0;
                best_weights = Some(snapshot(&model)?);
            } else {
                state.evals_since_best += 1;
            }
            if rank == 0 {
                bar.suspend(|| {
                    eprint!("dev @ step {}\n{}", state.step, report.to_seqeval_string(4))
                });
                write_eval(
                    &run,
                    &format!("step-{:08}-dev", state.step),
                    &report,
                    state.step,
                    &hash,
                )?;
                if improved {
                    model.save(&run.join("best"), &cfg.model, &meta, &carried)?;
                }
            }
            info!(
                step = state.step,
                dev_f1 = format!("{f1:.4}"),
                best = format!("{:.4}", state.best_dev_f1.unwrap_or(0.0)),
                "evaluated"
            );
            stop_early = cfg.patience > 0 && state.evals_since_best >= cfg.patience;
        }
        let checkpoint_now = eval_now
            || interrupted
            || (cfg.checkpoint_every > 0 && state.step % cfg.checkpoint_every == 0);
        if checkpoint_now && rank == 0 {
            let weights: BTreeMap<String, Tensor> = model
                .params
                .iter()
                .map(|(n, v)| Ok((n.to_owned(), v.as_tensor().to_device(&Device::Cpu)?)))
                .collect::<anyhow::Result<_>>()?;
            let dir = checkpoint::save(
                &run,
                &state,
                weights,
                optimizer.state_tensors()?,
                cfg.keep_checkpoints,
            )?;
            info!(checkpoint = %dir.display(), "checkpoint written");
        }
        if interrupted {
            comm.barrier()?;
            bar.abandon_with_message(format!(
                "stopped at step {}: resume with --resume {}",
                state.step,
                run.display()
            ));
            stopped = true;
            break;
        }
        if stop_early {
            info!(
                patience = cfg.patience,
                "early stop: dev F1 did not improve"
            );
            break;
        }
        wait_started = Instant::now();
    }
    drop(loader);
    bar.finish_and_clear();
    if stopped {
        return Ok(Outcome::Interrupted);
    }

    let final_hash = check_same_weights(&mut comm, &model, "at the end")?;
    if rank == 0 {
        model.save(&run.join("last"), &cfg.model, &meta, &carried)?;
    }
    let mut test_f1 = None;
    if cfg.test_at_end && !test_data.is_empty() {
        if let Some(w) = &best_weights {
            restore(&model, w)?;
        }
        let (report, _) = evaluate(&model, &mut comm, &test_data, &eval_spec)?;
        test_f1 = Some(report.micro.f1);
        if rank == 0 {
            eprint!("test (best dev model)\n{}", report.to_seqeval_string(4));
            write_eval(&run, "test", &report, state.step, &final_hash)?;
        }
    }
    if rank == 0 {
        let summary = Summary {
            status: "finished",
            steps: state.step,
            epochs: state.epoch.max(epochs.min(state.epoch + 1)),
            world_size: world,
            best_dev_f1: state.best_dev_f1,
            best_step: state.best_step,
            test_f1,
            wall_s: started.elapsed().as_secs_f64(),
            weights_sha256: final_hash,
        };
        write_atomic(
            &run.join("summary.json"),
            (serde_json::to_string_pretty(&summary)? + "\n").as_bytes(),
        )?;
        let svg = nerpos_plot::svg(&[
            nerpos_plot::Series {
                title: "training loss",
                x_label: "step",
                points: &curves.loss_all(&metrics_path),
            },
            nerpos_plot::Series {
                title: "learning rate",
                x_label: "step",
                points: &curves.lr_all(&metrics_path),
            },
            nerpos_plot::Series {
                title: "dev micro F1",
                x_label: "step",
                points: &curves.f1_all(&run),
            },
        ]);
        write_atomic(&run.join("curves.svg"), svg.as_bytes())?;
        info!(run = %run.display(), best_dev_f1 = ?state.best_dev_f1, test_f1 = ?test_f1, "done");
    }
    comm.barrier()?;
    Ok(Outcome::Finished)
}

fn write_eval(
    run: &Path,
    name: &str,
    report: &Report,
    step: usize,
    hash: &str,
) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(report)?;
    v["step"] = step.into();
    v["weights_sha256"] = hash.into();
    write_atomic(
        &run.join("eval").join(format!("{name}.json")),
        (serde_json::to_string_pretty(&v)? + "\n").as_bytes(),
    )?;
    write_atomic(
        &run.join("eval").join(format!("{name}.txt")),
        report.to_seqeval_string(4).as_bytes(),
    )
}

/// Sums over the steps since the last metrics line.
#[derive(Default)]
struct Window {
    n: usize,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens: f64,
    rows: f64,
    step_s: f64,
    allreduce_s: f64,
    data_wait_s: f64,
}

impl Window {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens: f64,
        rows: f64,
        step_s: f64,
        allreduce_s: f64,
        data_wait_s: f64,
    ) {
        self.n += 1;
        self.loss += loss;
        self.lr = lr;
        self.grad_norm += grad_norm;
        self.tokens += tokens;
        self.rows += rows;
        self.step_s += step_s;
        self.allreduce_s += allreduce_s;
        self.data_wait_s += data_wait_s;
    }

    fn take(&mut self, step: usize, epoch: usize) -> MetricsLine {
        let n = self.n.max(1) as f64;
        let line = MetricsLine {
            step,
            epoch,
            loss: self.loss / n,
            lr: self.lr,
            grad_norm: self.grad_norm / n,
            tokens_per_s: self.tokens / self.step_s.max(1e-9),
            sentences_per_s: self.rows / self.step_s.max(1e-9),
            step_s: self.step_s / n,
            allreduce_s: self.allreduce_s / n,
            data_wait_s: self.data_wait_s / n,
        };
        *self = Window::default();
        line
    }
}

/// Curves for the plot: this session's points, plus (after a resume) what metrics.jsonl and the eval
/// files hold from before.
#[derive(Default)]
struct Curves {
    loss: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
    f1: Vec<(f64, f64)>,
}

impl Curves {
    fn from_metrics(path: &Path, key: &str) -> Vec<(f64, f64)> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
            .collect()
    }

    fn loss_all(&self, metrics: &Path) -> Vec<(f64, f64)> {
        let logged = Self::from_metrics(metrics, "loss");
        if logged.len() >= 2 {
            logged
        } else {
            self.loss.clone()
        }
    }

    fn lr_all(&self, metrics: &Path) -> Vec<(f64, f64)> {
        let logged = Self::from_metrics(metrics, "lr");
        if logged.len() >= 2 {
            logged
        } else {
            self.lr.clone()
        }
    }

    fn f1_all(&self, run: &Path) -> Vec<(f64, f64)> {
        let mut points: HashMap<u64, f64> = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(run.join("eval")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !(name.starts_with("step-") && name.ends_with("-dev.json")) {
                    continue;
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(
                    &std::fs::read_to_string(e.path()).unwrap_or_default(),
                ) {
                    if let (Some(s), Some(f)) = (v["step"].as_u64(), v["micro"]["f1"].as_f64()) {
                        points.insert(s, f);
                    }
                }
            }
        }
        for &(s, f) in &self.f1 {
            points.insert(s as u64, f);
        }
        let mut v: Vec<(f64, f64)> = points.into_iter().map(|(s, f)| (s as f64, f)).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sentence_index: u32, window: u16) -> Row {
        Row {
            sentence_index,
            window,
            ..Row::default()
        }
    }

    #[test]
    fn first_sentences_keeps_whole_sentences_in_any_order() {
        // Shuffled, with sentence 1 split into two windows.
        let mut rows = vec![
            row(4, 0),
            row(1, 1),
            row(0, 0),
            row(2, 0),
            row(1, 0),
            row(3, 0),
        ];
        first_sentences(&mut rows, 2);
        let kept: Vec<(u32, u16)> = rows.iter().map(|r| (r.sentence_index, r.window)).collect();
        assert_eq!(kept, vec![(1, 1), (0, 0), (1, 0)]);

        let mut all = vec![row(0, 0), row(1, 0)];
        first_sentences(&mut all, 0);
        assert_eq!(all.len(), 2);
        first_sentences(&mut all, 5);
        assert_eq!(all.len(), 2);
    }
}
