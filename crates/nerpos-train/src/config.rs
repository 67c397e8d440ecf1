//! The training configuration: a TOML file, `--set key=value` overrides, validation that names the
//! key, and the resolved configuration written into the run folder.

use std::path::{Path, PathBuf};

use nerpos_run::config::ConfigTable;
use serde::{Deserialize, Serialize};

pub use crate::health::NonFinitePolicy;

/// Every key a run can set. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Dataset folder written by nerpos-prep.
    pub data: PathBuf,
    /// Hugging Face checkpoint folder (or a fine-tuned nerpos folder to continue from).
    pub model: PathBuf,
    /// Run folder.
    pub out: PathBuf,

    /// Rows per process per micro-batch (with `batch_tokens`, the most rows).
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    /// Alternative to a fixed row count: real sub-word tokens per process per micro-batch (batches
    /// are packed, so this is what a step computes on); 0 = off.
    #[serde(default)]
    pub batch_tokens: usize,
    /// Micro-batches per optimiser step (gradients are reduced across processes once per step); with a
    /// global batch set, derived from it instead.
    #[serde(default = "d::one")]
    pub grad_accum: usize,
    /// Rows of one optimiser step over all processes: the quantity a run keeps when it is resumed on
    /// another number of processes (each process's micro-batches and accumulation follow from it and
    /// `batch_size`). Unset: `batch_size` × processes × `grad_accum` at the start, recorded in the run
    /// folder's config.toml.
    #[serde(default)]
    pub global_batch_size: Option<usize>,
    /// Real tokens of one optimiser step over all processes (with `batch_tokens` as the per-process
    /// budget); unset: `batch_tokens` × processes × `grad_accum` when `batch_tokens` is set.
    #[serde(default)]
    pub global_batch_tokens: Option<usize>,
    #[serde(default = "d::lr")]
    pub lr: f64,
    /// Learning rate of the new head (POS embedding and classifier); `lr` if unset.
    #[serde(default)]
    pub head_lr: Option<f64>,
    #[serde(default = "d::epochs")]
    pub epochs: usize,
    /// Stop after this many optimiser steps (0 = run all epochs); also sets the schedule's length.
    #[serde(default)]
    pub max_steps: usize,
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Warm-up in steps; overrides `warmup_ratio` when set.
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    #[serde(default = "d::weight_decay")]
    pub weight_decay: f64,
    /// Apply weight decay to biases, LayerNorm weights and embeddings too (off, as is customary).
    #[serde(default)]
    pub decay_all: bool,
    #[serde(default = "d::beta1")]
    pub adam_beta1: f64,
    #[serde(default = "d::beta2")]
    pub adam_beta2: f64,
    #[serde(default = "d::eps")]
    pub adam_eps: f64,
    /// Clip gradients to this global norm (after the all-reduce); 0 = no clipping.
    #[serde(default = "d::one_f")]
    pub max_grad_norm: f64,
    #[serde(default = "d::seed")]
    pub seed: u64,
    /// Dropout of the head (on the concatenated features).
    #[serde(default = "d::dropout")]
    pub dropout: f64,
    /// Overrides the checkpoint's encoder dropout rates (0 turns them off).
    #[serde(default)]
    pub encoder_dropout: Option<f64>,
    /// How a new head (POS embedding, classifier) is drawn: `torch` (the design's PyTorch module:
    /// POS N(0, 1), classifier U(±1/√fan_in)) or `bert` (Hugging Face's N(0, initializer_range),
    /// zero bias). Unused when `model` is a fine-tuned folder (its head is loaded).
    #[serde(default)]
    pub head_init: nerpos_model::HeadInit,
    /// What turns the logits into labels: `softmax` (cross-entropy per word) or `crf` (a linear-chain
    /// CRF over each row: its negative log-likelihood in training, Viterbi decoding in evaluation and
    /// prediction, IOB2-forbidden transitions masked).
    #[serde(default)]
    pub head: nerpos_model::HeadKind,
    /// Width of the POS embedding (the encoder's hidden size if unset).
    #[serde(default)]
    pub pos_dim: Option<usize>,
    /// Feed POS tags to the head. Unset: yes when the dataset has POS tags, no when it has none (asking
    /// for POS on a dataset without them is an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_pos: Option<bool>,
    /// The weight of a POS tagger's loss beside the NER loss: a linear layer on the encoder that learns
    /// the corpus's POS tags, so that the model tags raw text (no POS column) with its own POS
    /// (`nerpos-predict --format text`). 0 = no POS tagger. Unset: 0.5 when the model uses POS tags,
    /// none otherwise (asking for one without POS tags is an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_tagger: Option<f64>,
    /// Feed the POS embedding the POS tagger's tags in training instead of the corpus's, as raw text
    /// will be fed (needs a POS tagger).
    #[serde(default)]
    pub pos_from_tagger: bool,
    /// The encoder layer (1-based) whose output the POS tagger reads. Unset: a third of the way up
    /// (layer 2 of MiniLM's 6, 4 of BERT-base's 12), where POS is read far better than from the last
    /// layer (docs/results.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_tagger_layer: Option<usize>,
    /// The POS tagger's learning rate (under the run's schedule). The tagger is a probe — it changes
    /// nothing of the NER model — so it learns at a linear classifier's rate, not the encoder's.
    #[serde(default = "d::pos_tagger_lr")]
    pub pos_tagger_lr: f64,
    /// The share of training sentences whose POS embedding is fed the POS tagger's distribution (as
    /// raw text is at prediction) instead of the corpus's tags: the NER head learns how far to trust
    /// predicted POS. Drawn per sentence and step, keyed like dropout. 0 = none.
    #[serde(default)]
    pub tagger_pos_share: f64,
    /// Probability of replacing a POS id by the unknown id in training.
    #[serde(default)]
    pub pos_dropout: f64,
    /// Evaluate on dev every N optimiser steps (0 = at the end of each epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Stop when dev micro F1 has not improved for this many evaluations (0 = never).
    #[serde(default)]
    pub patience: usize,
    /// Evaluate the best model on test at the end.
    #[serde(default = "d::yes")]
    pub test_at_end: bool,
    /// Group rows of similar length inside large random chunks. Batches are packed (no padding), so
    /// this buys little speed and can cost accuracy; off (the default) = plain shuffle.
    #[serde(default)]
    pub length_grouping: bool,
    /// Train on the first N training sentences only (0 = all).
    #[serde(default)]
    pub train_sentences: usize,
    /// Evaluate on the first N dev and N test sentences only (0 = all): quicker evaluations for short
    /// CPU runs, at the price of a noisier F1.
    #[serde(default)]
    pub eval_sentences: usize,
    /// Published scores to show the test evaluation beside (a TOML file: `name`, `[micro]` precision,
    /// recall, f1, and `[f1]` per type), e.g. `configs/design-scores.toml`.
    #[serde(default)]
    pub reference_scores: Option<PathBuf>,
    /// Write a resumable checkpoint every N steps (0 = at each evaluation only).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Resumable checkpoints kept (older ones are deleted).
    #[serde(default = "d::keep")]
    pub keep_checkpoints: usize,
    /// Log a metrics line every N steps.
    #[serde(default = "d::log_every")]
    pub log_every: usize,
    #[serde(default = "d::eval_batch")]
    pub eval_batch_size: usize,
    /// Gradient bucket size for the all-reduce, in MB (buckets are reduced while backward runs).
    #[serde(default = "d::bucket_mb")]
    pub bucket_mb: f64,
    /// `cpu`, or `cuda` (each process takes GPU `LOCAL_RANK`).
    #[serde(default)]
    pub device: DeviceKind,
    /// `f32`; `tf32` (f32 with TF32 matrix products, CUDA only); or `bf16`: mixed precision, with
    /// forward and backward in bf16 on a copy of the f32 master weights, the loss and the optimiser
    /// (moments included) in f32.
    #[serde(default)]
    pub precision: Precision,
    /// Element type of the gradient all-reduce: `f32`, or `bf16` (half the traffic).
    #[serde(default)]
    pub allreduce_dtype: ReduceDtype,
    /// Device AdamW as one fused kernel per parameter (false: composed tensor ops, the reference).
    #[serde(default = "d::yes")]
    pub fused_adamw: bool,
    /// What a step with a non-finite loss or gradient norm does: `stop` (the run ends there, exit code
    /// 65, its update not applied, the last finite checkpoint kept) or `skip` (the update is dropped and
    /// counted; `max_skips` in a row end the run as `stop` does).
    #[serde(default)]
    pub nonfinite: NonFinitePolicy,
    /// Non-finite steps in a row that end a `skip` run.
    #[serde(default = "d::max_skips")]
    pub max_skips: usize,
    /// Warn when the (smoothed) logged loss climbs above this many times the lowest it has been: a
    /// run diverging before, or without, a NaN. 0 = never.
    #[serde(default = "d::divergence_warning")]
    pub divergence_warning: f64,
    /// The fused CUDA kernels for LayerNorm, bias+GELU, bias+dropout+residual, attention, the
    /// embedding gradients and the loss (GPU only; the CPU always runs its own kernels). On by
    /// default since they were measured on an H200 (docs/gpu.md, 2026-12-04): every kernel within its
    /// tolerance of the CPU's, training equal to the CPU's, and the step faster for both shapes.
    #[serde(default = "d::yes")]
    pub gpu_kernels: bool,
}

/// Where a process computes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    /// GPU `LOCAL_RANK` of the process (CUDA builds).
    Cuda,
}

/// The arithmetic of forward and backward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// f32 with TF32 matrix products (CUDA only).
    Tf32,
    /// Mixed precision: a bf16 compute copy of the f32 master weights.
    Bf16,
}

/// Element type of the gradient all-reduce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReduceDtype {
    #[default]
    F32,
    Bf16,
}

impl ReduceDtype {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            ReduceDtype::F32 => candle_core::DType::F32,
            ReduceDtype::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// Defaults.
mod d {
    pub fn batch_size() -> usize {
        32
    }
    pub fn one() -> usize {
        1
    }
    pub fn one_f() -> f64 {
        1.0
    }
    pub fn lr() -> f64 {
        5e-5
    }
    pub fn epochs() -> usize {
        3
    }
    pub fn weight_decay() -> f64 {
        0.01
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.999
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn seed() -> u64 {
        42
    }
    pub fn dropout() -> f64 {
        0.2
    }
    pub fn yes() -> bool {
        true
    }
    pub fn keep() -> usize {
        2
    }
    pub fn log_every() -> usize {
        10
    }
    pub fn eval_batch() -> usize {
        64
    }
    /// Small enough that several buckets are reduced while backward runs (MiniLM's dense gradients
    /// are 44 MB: 25 MB buckets left half of them to after backward; measured in docs/benchmarks.md).
    pub fn bucket_mb() -> f64 {
        4.0
    }
    pub fn pos_tagger_lr() -> f64 {
        1e-2
    }
    pub fn max_skips() -> usize {
        10
    }
    pub fn divergence_warning() -> f64 {
        10.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading the file or applying `--set`.
    #[error(transparent)]
    Read(#[from] nerpos_run::RunError),
    #[error("{}: {msg}", path.display())]
    Parse { path: PathBuf, msg: String },
    #[error("config key `{key}`: {msg}")]
    Invalid { key: &'static str, msg: String },
    /// A `--set` on resume that would make the saved position in the data meaningless.
    #[error(
        "config key `{key}` changed on resume ({from} → {to}): {why}; resume with the run's own \
         value, or start a new run"
    )]
    ChangedOnResume {
        key: String,
        from: String,
        to: String,
        why: &'static str,
    },
}

fn bad(key: &'static str, msg: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { key, msg })
}

/// A setting that differs between a run's saved configuration and the one it is resumed with.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeChange {
    pub key: String,
    pub from: String,
    pub to: String,
    /// Whether the weights from here on differ from an uninterrupted run's (`false`: logging,
    /// checkpoints, how the global batch is cut into micro-batches — exact to float rounding).
    pub changes_training: bool,
}

impl TrainConfig {
    /// Reads `path` (or starts empty) and applies the `key=value` overrides in order.
    pub fn load(path: Option<&Path>, sets: &[String]) -> Result<TrainConfig, ConfigError> {
        let ConfigTable { table, origin } = ConfigTable::load(path, sets)?;
        if table.contains_key("grid") {
            return Err(ConfigError::Parse {
                path: origin.clone(),
                msg: format!(
                    "has a [grid] table: a grid runs one training per point; start it with \
                     `launch/train.sh grid --config {}`",
                    origin.display()
                ),
            });
        }
        let config: TrainConfig =
            table
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin,
                    msg: e.to_string().trim().to_owned(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work. TOML has `nan` and `inf`: every float check is
    /// written so that they fail it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_batches()?;
        self.check_schedule()?;
        self.check_optimizer()?;
        self.check_model()?;
        if !(self.bucket_mb > 0.0 && self.bucket_mb.is_finite()) {
            return bad("bucket_mb", "must be positive".into());
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints", "must keep at least 1".into());
        }
        if self.max_skips == 0 {
            return bad(
                "max_skips",
                "must be at least 1 (1 stops at the first non-finite step)".into(),
            );
        }
        if !(self.divergence_warning >= 0.0 && self.divergence_warning.is_finite()) {
            return bad(
                "divergence_warning",
                format!(
                    "{} is not a factor ≥ 0 (0 = never)",
                    self.divergence_warning
                ),
            );
        }
        Ok(())
    }

    fn check_batches(&self) -> Result<(), ConfigError> {
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1".into());
        }
        if self.global_batch_size == Some(0) {
            return bad("global_batch_size", "must be at least 1".into());
        }
        if self
            .global_batch_tokens
            .is_some_and(|t| t == 0 || self.batch_tokens == 0)
        {
            return bad(
                "global_batch_tokens",
                "needs a positive value and a per-process budget `batch_tokens`".into(),
            );
        }
        Ok(())
    }

    fn check_schedule(&self) -> Result<(), ConfigError> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", format!("{} is not a positive learning rate", self.lr));
        }
        if let Some(h) = self.head_lr
            && !(h > 0.0 && h.is_finite())
        {
            return bad("head_lr", format!("{h} is not a positive learning rate"));
        }
        if self.epochs == 0 && self.max_steps == 0 {
            return bad(
                "epochs",
                "0 epochs and no max_steps: nothing to train".into(),
            );
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(
                "warmup_ratio",
                format!("{} is not in [0, 1)", self.warmup_ratio),
            );
        }
        Ok(())
    }

    fn check_optimizer(&self) -> Result<(), ConfigError> {
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(
                "weight_decay",
                format!("{} is not a weight decay ≥ 0", self.weight_decay),
            );
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return bad("adam_beta1", "betas must be in [0, 1)".into());
        }
        if !(self.adam_eps > 0.0 && self.adam_eps.is_finite()) {
            return bad("adam_eps", format!("{} is not positive", self.adam_eps));
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return bad(
                "max_grad_norm",
                format!(
                    "{} is not a norm ≥ 0 (0 turns clipping off)",
                    self.max_grad_norm
                ),
            );
        }
        Ok(())
    }

    fn check_model(&self) -> Result<(), ConfigError> {
        let rates = [
            ("dropout", Some(self.dropout)),
            ("pos_dropout", Some(self.pos_dropout)),
            ("encoder_dropout", self.encoder_dropout),
        ];
        for (key, p) in rates {
            if let Some(p) = p.filter(|p| !(0.0..1.0).contains(p)) {
                return bad(key, format!("{p} is not a probability in [0, 1)"));
            }
        }
        if let Some(w) = self.pos_tagger
            && !(w >= 0.0 && w.is_finite())
        {
            return bad("pos_tagger", format!("{w} is not a weight ≥ 0 (0 = none)"));
        }
        if !(self.pos_tagger_lr > 0.0 && self.pos_tagger_lr.is_finite()) {
            return bad(
                "pos_tagger_lr",
                format!("{} is not a positive learning rate", self.pos_tagger_lr),
            );
        }
        if !(0.0..=1.0).contains(&self.tagger_pos_share) {
            return bad(
                "tagger_pos_share",
                format!("{} is not a share in [0, 1]", self.tagger_pos_share),
            );
        }
        if self.tagger_pos_share > 0.0 && self.pos_from_tagger {
            return bad(
                "tagger_pos_share",
                "pos_from_tagger = true already feeds every sentence the tagger's tags".into(),
            );
        }
        if self.pos_tagger_layer == Some(0) {
            return bad(
                "pos_tagger_layer",
                "layers count from 1 (the first encoder layer)".into(),
            );
        }
        if self.pos_dim == Some(0) {
            return bad("pos_dim", "must be at least 1".into());
        }
        Ok(())
    }

    /// What differs from `saved` (the run's configuration) when resuming with this one. Errors for a
    /// change that breaks the saved position in the data (the data, the seed, the global batch, the
    /// model): the checkpoint's step and place in the epoch would point into another sequence of
    /// batches. (A global batch the run derived is recorded in its checkpoints and checked there.)
    pub fn resume_changes(&self, saved: &TrainConfig) -> Result<Vec<ResumeChange>, ConfigError> {
        let table = |c: &TrainConfig| match toml::Value::try_from(c) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        let (now, before) = (table(self), table(saved));
        let mut keys: Vec<&String> = now.keys().chain(before.keys()).collect();
        keys.sort();
        keys.dedup();
        let show =
            |v: Option<&toml::Value>| v.map_or_else(|| "unset".to_owned(), |v| v.to_string());
        let mut out = Vec::new();
        for key in keys {
            let (to, from) = (now.get(key), before.get(key));
            if to == from {
                continue;
            }
            let (from, to) = (show(from), show(to));
            let refused = |why| ConfigError::ChangedOnResume {
                key: key.clone(),
                from: from.clone(),
                to: to.clone(),
                why,
            };
            match key.as_str() {
                "data" | "train_sentences" => {
                    return Err(refused(
                        "the checkpoint's place in the epoch indexes these rows",
                    ));
                }
                "seed" | "length_grouping" => {
                    return Err(refused("the epochs' batch order comes from it"));
                }
                "model" | "use_pos" | "pos_dim" | "head_init" | "head" | "pos_tagger"
                | "pos_from_tagger" | "pos_tagger_layer" | "tagger_pos_share" => {
                    return Err(refused("the checkpoint holds a model built from it"));
                }
                "global_batch_size" | "global_batch_tokens" => {
                    return Err(refused(
                        "the epochs' optimiser steps are cut from the global batch",
                    ));
                }
                _ => {}
            }
            let changes_training = !matches!(
                key.as_str(),
                "out"
                    | "reference_scores"
                    | "device"
                    | "log_every"
                    | "checkpoint_every"
                    | "keep_checkpoints"
                    | "eval_batch_size"
                    | "bucket_mb"
                    | "nonfinite"
                    | "max_skips"
                    | "divergence_warning"
                    | "batch_size"
                    | "batch_tokens"
                    | "grad_accum"
            );
            out.push(ResumeChange {
                key: key.clone(),
                from,
                to,
                changes_training,
            });
        }
        Ok(out)
    }

    /// The configuration as TOML (what the run folder's `config.toml` holds).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, sets: &[&str]) -> Result<TrainConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        TrainConfig::load(
            Some(&p),
            &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    const BASE: &str = "data = \"d\"\nmodel = \"m\"\nout = \"o\"\n";

    #[test]
    fn defaults_and_overrides() {
        let c = load(
            BASE,
            &[
                "lr=3e-5",
                "batch_size=16",
                "out=runs/x",
                "use_pos=false",
                "head_lr=1e-3",
            ],
        )
        .unwrap();
        assert_eq!(
            (c.lr, c.batch_size, c.use_pos, c.head_lr),
            (3e-5, 16, Some(false), Some(1e-3))
        );
        assert_eq!(c.out, PathBuf::from("runs/x"));
        assert_eq!(c.epochs, 3);
        let again: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(BASE, &["lrr=1"]).unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
        let e = load(BASE, &["lr=fast"]).unwrap_err().to_string();
        assert!(e.contains("lr"), "{e}");
        let e = load(BASE, &["dropout=1.5"]).unwrap_err().to_string();
        assert!(e.contains("`dropout`"), "{e}");
        let e = load(BASE, &["batch_size=0"]).unwrap_err().to_string();
        assert!(e.contains("`batch_size`"), "{e}");
        // TOML's nan and inf are refused where a finite value is needed.
        for (set, key) in [
            ("adam_eps=nan", "`adam_eps`"),
            ("weight_decay=nan", "`weight_decay`"),
            ("max_grad_norm=inf", "`max_grad_norm`"),
            ("bucket_mb=nan", "`bucket_mb`"),
            ("lr=inf", "`lr`"),
            ("warmup_ratio=nan", "`warmup_ratio`"),
        ] {
            let e = load(BASE, &[set]).unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
        let e = load(BASE, &["nokeyvalue"]).unwrap_err().to_string();
        assert!(e.contains("key=value"), "{e}");
        let e = load("model = \"m\"\nout = \"o\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("data"), "{e}");
        let e = load(&format!("{BASE}[grid]\nlr = [1e-5]\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("[grid]"), "{e}");
    }

    /// On resume: bookkeeping changes pass quietly, changes of the trajectory are reported, and changes
    /// that break the saved place in the data are refused naming the key.
    #[test]
    fn resume_changes_are_sorted_by_their_effect() {
        let saved = load(BASE, &[]).unwrap();
        let changes = |sets: &[&str]| load(BASE, sets).unwrap().resume_changes(&saved);
        assert_eq!(changes(&[]).unwrap(), vec![]);
        let c = changes(&["log_every=50", "batch_size=8"]).unwrap();
        assert!(c.iter().all(|c| !c.changes_training), "{c:?}");
        let c = changes(&["lr=1e-3"]).unwrap();
        assert_eq!((c[0].key.as_str(), c[0].changes_training), ("lr", true));
        assert_eq!((c[0].from.as_str(), c[0].to.as_str()), ("0.00005", "0.001"));
        for (set, key) in [
            ("seed=1", "`seed`"),
            ("data=\"other\"", "`data`"),
            ("global_batch_size=64", "`global_batch_size`"),
        ] {
            let e = changes(&[set]).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("resume"), "{set}: {e}");
        }
    }

    #[test]
    fn closed_settings_are_enums_whose_errors_name_the_key() {
        let c = load(
            BASE,
            &["device=cuda", "precision=bf16", "allreduce_dtype=bf16"],
        )
        .unwrap();
        assert_eq!(
            (c.device, c.precision, c.allreduce_dtype),
            (DeviceKind::Cuda, Precision::Bf16, ReduceDtype::Bf16)
        );
        assert_eq!(load(BASE, &[]).unwrap().precision, Precision::F32);
        for (set, key) in [
            ("device=gpu", "device"),
            ("nonfinite=ignore", "nonfinite"),
            ("precision=fp16", "precision"),
            ("allreduce_dtype=f16", "allreduce_dtype"),
        ] {
            let e = load(BASE, &[set]).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("expected"), "{set}: {e}");
        }
    }
}
