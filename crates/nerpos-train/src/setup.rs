//! Everything a run needs before its first step: the process's place in the job, its device and
//! communicator, the dataset, the model (a pretrained checkpoint, a fine-tuned folder, or the newest
//! checkpoint of the run being resumed), the same weights on every rank, the data splits, and the
//! schedule.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use candle_core::Device;
use nerpos_dist::{Comm, Rendezvous, Timeouts};
use nerpos_model::{BertNerPos, Carried, HeadConfig, NerposMeta};
use nerpos_prep::{Columns, Dataset, Manifest, Part, Row, Split};
use nerpos_run::RunDir;
use tracing::info;

use crate::checkpoint::{self, LoopState};
use crate::config::{DeviceKind, Precision, TrainConfig};
use crate::data::{Batching, steps_per_epoch};
use crate::evaluate::EvalData;
use crate::optim::Schedule;
use crate::trainer::{StepSettings, Trainer};

/// A run, set up.
pub struct Job {
    pub cfg: TrainConfig,
    pub run: RunDir,
    pub trainer: Trainer,
    pub carried: Carried,
    pub meta: NerposMeta,
    pub train: Arc<Vec<Row>>,
    pub dev: EvalData,
    pub test: EvalData,
    /// Published scores the test evaluation is shown beside.
    pub reference: Option<nerpos_eval::ReferenceScores>,
    pub state: LoopState,
    pub schedule: Schedule,
    /// How the data is cut into optimiser steps and micro-batches for this world size.
    pub batching: Batching,
}

pub fn device(cfg: &TrainConfig, local_rank: usize) -> anyhow::Result<Device> {
    match cfg.device {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => {
            let dev = Device::new_cuda(local_rank).with_context(|| {
                format!("opening GPU {local_rank} (LOCAL_RANK); built with the cuda feature?")
            })?;
            nerpos_model::gpu::tune_for_training(&dev)?;
            Ok(dev)
        }
    }
}

fn communicator(rdv: &Rendezvous, dev: &Device) -> anyhow::Result<Comm> {
    let t = Timeouts::from_env()?;
    match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) if rdv.world_size > 1 => Ok(Comm::nccl(rdv, t, cuda.cuda_stream())?),
        _ => Ok(Comm::cpu(rdv, t)?),
    }
}

/// The model to train: a fine-tuned folder to continue from, or a pretrained encoder with a new head.
fn load_model(
    cfg: &TrainConfig,
    m: &Manifest,
    dev: &Device,
) -> anyhow::Result<(BertNerPos, Carried)> {
    let fine_tuned = cfg
        .model
        .join(nerpos_model::checkpoint::NERPOS_JSON)
        .is_file();
    if fine_tuned {
        let (model, meta) =
            BertNerPos::load_with_dropout(&cfg.model, dev, cfg.encoder_dropout, Some(cfg.dropout))?;
        if meta.head != cfg.head {
            bail!(
                "{} was fine-tuned with a {:?} head, but the configuration asks for head = {:?}",
                cfg.model.display(),
                meta.head,
                cfg.head
            );
        }
        if meta.labels != m.labels || meta.pos != m.pos {
            bail!(
                "{} was fine-tuned with other labels or POS tags than {} has; continue training only on \
                 data with the same vocabularies",
                cfg.model.display(),
                cfg.data.display()
            );
        }
        return Ok((model, Carried::default()));
    }
    let (bert, _) = nerpos_model::BertConfig::read(&cfg.model)?;
    let tagger = pos_tagger(cfg, use_pos(cfg, m)?)?;
    let head = HeadConfig {
        num_labels: m.labels.len(),
        num_pos: m.pos.len(),
        pos_dim: cfg.pos_dim.unwrap_or(bert.hidden_size),
        use_pos: use_pos(cfg, m)?,
        dropout: cfg.dropout,
        kind: cfg.head,
        labels: m.labels.clone(),
        pos_tagger: tagger,
        pos_from_tagger: cfg.pos_from_tagger,
        pos_tagger_layer: tagger.and(Some(
            cfg.pos_tagger_layer
                .unwrap_or((bert.num_hidden_layers / 3).max(1)),
        )),
        tagger_pos_share: cfg.tagger_pos_share,
    };
    Ok(BertNerPos::from_pretrained(
        &cfg.model,
        head,
        cfg.encoder_dropout,
        (cfg.head_init, cfg.seed),
        dev,
    )?)
}

/// Whether the model reads POS tags: as configured, else whether the dataset has them.
fn use_pos(cfg: &TrainConfig, m: &Manifest) -> anyhow::Result<bool> {
    match cfg.use_pos {
        Some(true) if !m.has_pos => bail!(
            "use_pos = true, but the dataset {} has no POS tags (prepared with --pos-col none or \
             without --pos-key); remove use_pos or set it to false",
            cfg.data.display()
        ),
        Some(v) => Ok(v),
        None => Ok(m.has_pos),
    }
}

/// The POS tagger's loss weight, if the model has one (see `TrainConfig::pos_tagger`).
fn pos_tagger(cfg: &TrainConfig, use_pos: bool) -> anyhow::Result<Option<f64>> {
    let weight = tagger_weight(cfg, use_pos)?;
    if cfg.pos_from_tagger && weight.is_none() {
        bail!(
            "pos_from_tagger = true needs a POS tagger (pos_tagger > 0 and POS tags in the data)"
        );
    }
    if cfg.tagger_pos_share > 0.0 && weight.is_none() {
        bail!(
            "tagger_pos_share = {} needs a POS tagger (pos_tagger > 0 and POS tags in the data)",
            cfg.tagger_pos_share
        );
    }
    Ok(weight)
}

fn tagger_weight(cfg: &TrainConfig, use_pos: bool) -> anyhow::Result<Option<f64>> {
    match cfg.pos_tagger {
        Some(w) if w > 0.0 && !use_pos => bail!(
            "pos_tagger = {w}, but the model reads no POS tags (the dataset {} has none, or use_pos = \
             false): there is nothing for a POS tagger to learn or to feed; remove pos_tagger",
            cfg.data.display()
        ),
        Some(w) => Ok((w > 0.0).then_some(w)),
        None => Ok(use_pos.then_some(DEFAULT_POS_TAGGER)),
    }
}

/// The POS tagger's loss weight when a model with POS does not say (docs/results.md).
pub const DEFAULT_POS_TAGGER: f64 = 0.5;

/// The training labels must be ones the head can learn from (a CRF: IOB2, whose forbidden
/// transitions it masks — a gold path through one would score −10,000): the first row that is not is
/// an error.
fn check_labels(
    kind: nerpos_model::HeadKind,
    train: &[Row],
    labels: &[String],
    data: &Path,
) -> anyhow::Result<()> {
    let head = kind.head();
    for r in train {
        let y: Vec<u32> = r
            .labels
            .iter()
            .filter_map(|&l| u32::try_from(l).ok())
            .collect();
        // A window after a sentence's first may start inside an entity.
        let from = usize::from(r.window > 0 && !y.is_empty());
        if let Some(why) = head.refuses(labels, &y[from.min(y.len())..], from) {
            bail!(
                "{}: sentence {} (source line {}): {why}",
                data.display(),
                r.sentence_id,
                r.source_line,
            );
        }
    }
    Ok(())
}

fn meta_of(cfg: &TrainConfig, m: &Manifest, model: &BertNerPos) -> NerposMeta {
    NerposMeta {
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
        label_subwords: m.options.label_subwords,
        pos_shape: m.options.pos_shape,
        tokenizer_fingerprint: Some(m.tokenizer.fingerprint.clone()),
        pos_tagger: model.config.head.pos_tagger,
        pos_from_tagger: model.config.head.pos_from_tagger,
        pos_tagger_layer: model.config.head.pos_tagger_layer,
        tagger_pos_share: model.config.head.tagger_pos_share,
        head: model.config.head.kind,
    }
}

/// Keeps the rows of the first `n` sentences (by sentence index; every window of a long sentence stays
/// with it); 0 keeps all.
pub(crate) fn first_sentences(rows: &mut Vec<Row>, n: usize) {
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

fn read_split(ds: &Dataset, split: Split, first: usize) -> anyhow::Result<Vec<Row>> {
    let mut rows = ds.read_all(split, Part::WHOLE, Columns::Model)?;
    first_sentences(&mut rows, first);
    Ok(rows)
}

fn check_tokenizer(cfg: &TrainConfig, m: &Manifest) -> anyhow::Result<()> {
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
    Ok(())
}

/// The loop's starting point: the newest checkpoint's (weights set into `model`) on resume, else 0.
/// Returns it with the optimiser state file to load.
fn starting_point(
    run: &RunDir,
    resume: bool,
    m: &Manifest,
    model: &BertNerPos,
    rank: usize,
    world: usize,
) -> anyhow::Result<(LoopState, Option<std::path::PathBuf>)> {
    let fresh = LoopState {
        step: 0,
        epoch: 0,
        index_in_epoch: 0,
        adam_steps: 0,
        best_dev_f1: None,
        best_step: None,
        evals_since_best: 0,
        world_size: world,
        global_batch: None,
        labels: m.labels.clone(),
        pos: m.pos.clone(),
    };
    if !resume {
        if rank == 0 && run.config().exists() && !run.checkpoints().is_empty() {
            bail!(
                "{} already holds a run; resume it with --resume {}, or set another `out`",
                run.path().display(),
                run.path().display()
            );
        }
        return Ok((fresh, None));
    }
    let loaded = checkpoint::load_latest(run)?;
    if loaded.state.labels != m.labels || loaded.state.pos != m.pos {
        bail!(
            "{}: the checkpoint's labels or POS tags differ from the dataset's",
            loaded.dir.display(),
        );
    }
    if loaded.state.world_size != world {
        info!(
            saved = loaded.state.world_size,
            now = world,
            "resuming on another number of processes: the global batch stays, the micro-batches follow"
        );
    }
    for (name, var) in model.params.iter() {
        let w = loaded
            .weights
            .get(name)
            .with_context(|| format!("{}: no weights for {name}", loaded.dir.display()))?;
        var.set(&w.to_device(model.device())?)?;
    }
    info!(checkpoint = %loaded.dir.display(), step = loaded.state.step, "resuming");
    let state = LoopState {
        world_size: world,
        ..loaded.state
    };
    Ok((state, Some(loaded.optimizer)))
}

/// How `world` processes cut the run's optimiser steps: the global batch the run recorded (on resume),
/// else the one `cfg` gives. A configured global batch other than the recorded one is refused.
fn batching(
    cfg: &TrainConfig,
    world: usize,
    recorded: Option<(usize, usize)>,
) -> anyhow::Result<Batching> {
    let Some((rows, tokens)) = recorded else {
        return Ok(Batching::resolve(cfg, world));
    };
    let keep = |key: &str, set: Option<usize>, run: usize| match set {
        Some(v) if v != run => bail!(
            "config key `{key}` is {v} but the run being resumed keeps {run}: its steps are cut \
             from that global batch; resume with the run's value, or start a new run"
        ),
        _ => Ok(()),
    };
    keep("global_batch_size", cfg.global_batch_size, rows)?;
    keep("global_batch_tokens", cfg.global_batch_tokens, tokens)?;
    let recorded = TrainConfig {
        global_batch_size: Some(rows),
        global_batch_tokens: (tokens > 0).then_some(tokens),
        ..cfg.clone()
    };
    Ok(Batching::resolve(&recorded, world))
}

/// The trainer with the saved optimizer state (a resume) and rank 0's weights on every rank
/// (identical already when every rank loaded the same files with the same seed; the broadcast makes it
/// so even if the files differ between nodes).
fn start_trainer(
    model: BertNerPos,
    comm: Comm,
    settings: StepSettings,
    optimizer: Option<(&Path, u64)>,
) -> anyhow::Result<Trainer> {
    let mut trainer = Trainer::new(model, comm, settings)?;
    if let Some((p, adam_steps)) = optimizer {
        trainer.optimizer.load_state(p, adam_steps)?;
    }
    for (_, var) in trainer.model.params.iter() {
        trainer.comm.broadcast_tensor(var.as_tensor(), 0)?;
    }
    trainer.check_same_weights("at the start")?;
    Ok(trainer)
}

/// The training rows (not empty; well-formed IOB2 for a CRF head) and the dev and test sets.
fn read_splits(cfg: &TrainConfig, ds: &Dataset) -> anyhow::Result<(Vec<Row>, EvalData, EvalData)> {
    let train = read_split(ds, Split::Train, cfg.train_sentences)?;
    check_labels(cfg.head, &train, &ds.manifest.labels, &cfg.data)?;
    if train.is_empty() {
        bail!("{}: the training split is empty", cfg.data.display());
    }
    let dev = EvalData::new(read_split(ds, Split::Dev, cfg.eval_sentences)?);
    let test = EvalData::new(read_split(ds, Split::Test, cfg.eval_sentences)?);
    Ok((train, dev, test))
}

impl Job {
    /// Sets up the run `cfg` describes (or resumes the one in `resume`).
    pub fn setup(cfg: TrainConfig, resume: Option<&Path>, rdv: &Rendezvous) -> anyhow::Result<Job> {
        let tier = nerpos_kernels::Tier::check_env()?;
        let dev = device(&cfg, rdv.local_rank)?;
        let comm = communicator(rdv, &dev)?;
        let (rank, world) = (comm.rank(), comm.world_size());
        info!(rank, world, launch = ?rdv.mode, device = ?dev, "process joined");
        if dev.is_cpu() {
            info!(%tier, "CPU {}", nerpos_kernels::tier::describe());
        }

        // A bad reference file is an error now, not after hours of training.
        let reference = cfg
            .reference_scores
            .as_deref()
            .map(nerpos_eval::ReferenceScores::load)
            .transpose()?;
        let ds = Dataset::open(&cfg.data)?;
        if rank == 0 {
            ds.verify()?;
        }
        let m = &ds.manifest;
        check_tokenizer(&cfg, m)?;
        let (model, carried) = load_model(&cfg, m, &dev)?;
        // What runs, decided in one place: the fused CUDA kernels when configured (the CPU kernels
        // always run on the CPU) — the ops', the dropout masks' and the optimiser's alike — and TF32
        // products for `precision = "tf32"` (off otherwise, as candle's default).
        let model = model.with_kernels(nerpos_model::Kernels::with_gpu(cfg.gpu_kernels));
        nerpos_model::gpu::set_tf32(&dev, cfg.precision == Precision::Tf32);
        let meta = meta_of(&cfg, m, &model);
        let run = RunDir::new(resume.map_or_else(|| cfg.out.clone(), Path::to_owned));
        let (mut state, optimizer_state) =
            starting_point(&run, resume.is_some(), m, &model, rank, world)?;
        // The global batch is what the run keeps: recorded in its checkpoints, so that a resume on
        // another number of processes derives its micro-batches from it.
        let batching = batching(&cfg, world, state.global_batch)?;
        state.global_batch = Some((batching.step_rows, batching.step_tokens));
        let settings = StepSettings::from_config(&cfg, batching.grad_accum);
        let optimizer = optimizer_state.as_deref().map(|p| (p, state.adam_steps));
        let trainer = start_trainer(model, comm, settings, optimizer)?;
        let (train, dev_data, test_data) = read_splits(&cfg, &ds)?;
        let lengths: Vec<usize> = train.iter().map(|r| r.input_ids.len()).collect();
        let schedule = Schedule::new(&cfg, steps_per_epoch(&lengths, &batching));
        info!(
            global_batch = batching.step_rows,
            micro_batches = batching.grad_accum,
            train_rows = train.len(),
            steps_per_epoch = schedule.per_epoch,
            total_steps = schedule.total,
            warmup = schedule.warmup,
            "schedule"
        );
        Ok(Job {
            cfg,
            run,
            trainer,
            carried,
            meta,
            train: Arc::new(train),
            dev: dev_data,
            test: test_data,
            reference,
            state,
            schedule,
            batching,
        })
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
