//! Checkpoint folders: Hugging Face BERT folders in, fine-tuned folders (usable by Hugging Face for the
//! encoder, and by nerpos whole) out. The fine-tuned folder format is defined here and only here.
//!
//! A fine-tuned folder holds `config.json` (the source checkpoint's, unchanged), `model.safetensors`
//! (encoder weights under Hugging Face's names, so `BertModel.from_pretrained` loads them, plus the
//! pooler if the source had one, plus `pos_embedding.weight`, `classifier.weight`, `classifier.bias`),
//! `nerpos.json` (labels, POS vocabulary and head settings) and the tokenizer files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::config::{BertConfig, HeadConfig, HeadKind, ModelConfig};
use crate::error::{ModelError, Result};
use crate::model::{
    BertNerPos, CLASSIFIER_BIAS, CLASSIFIER_WEIGHT, HeadInit, POS_EMBEDDING, POS_EMBEDDING_TAGGED,
    POS_TAGGER_BIAS, POS_TAGGER_WEIGHT,
};

pub const NERPOS_JSON: &str = "nerpos.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const PTH_WEIGHTS: &str = "pytorch_model.bin";
pub const FORMAT_VERSION: u32 = 1;
/// Tokenizer files copied into a fine-tuned folder when the source has them.
pub const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
];

/// `nerpos.json`: what a fine-tuned folder adds to a Hugging Face checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NerposMeta {
    pub format_version: u32,
    pub created_by: String,
    /// NER labels in id order.
    pub labels: Vec<String>,
    /// POS tags in id order.
    pub pos: Vec<String>,
    pub pos_pad_id: u32,
    pub pos_unk_id: u32,
    pub pos_dim: usize,
    pub use_pos: bool,
    /// Longest input in sub-words (special tokens included) the model was trained on.
    pub max_len: usize,
    /// Head dropout used in training.
    pub dropout: f64,
    /// Which sub-words carried labels in training.
    #[serde(default)]
    pub label_subwords: LabelSubwords,
    /// SHA-256 of the tokenizer files, as `nerpos_prep::fingerprint` computes it.
    #[serde(default)]
    pub tokenizer_fingerprint: Option<String>,
    /// Softmax or CRF (older folders: softmax). A CRF's scores are saved with the head's weights
    /// (`crf.transitions`, `crf.start`, `crf.end`), which Hugging Face's loaders of the encoder ignore.
    #[serde(default)]
    pub head: HeadKind,
    /// The POS vocabulary is POS tags crossed with word shapes (`NNP|Aa`, `nerpos-prep --pos-shape`):
    /// prediction crosses its input's tags alike.
    #[serde(default)]
    pub pos_shape: bool,
    /// The weight of the POS tagger's loss in training, when the model has one (`pos_tagger.*`
    /// weights): prediction tags POS itself when its input has no POS tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_tagger: Option<f64>,
    /// Training fed the POS embedding the tagger's tags (continued training does too).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pos_from_tagger: bool,
    /// The encoder layer the POS tagger reads (1-based; absent: the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_tagger_layer: Option<usize>,
    /// The share of training sentences fed the tagger's POS distribution (continued training too).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tagger_pos_share: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

pub use nerpos_prep::LabelSubwords;

impl NerposMeta {
    pub fn head(&self) -> HeadConfig {
        HeadConfig {
            num_labels: self.labels.len(),
            num_pos: self.pos.len(),
            pos_dim: self.pos_dim,
            use_pos: self.use_pos,
            dropout: self.dropout,
            kind: self.head,
            labels: self.labels.clone(),
            pos_tagger: self.pos_tagger,
            pos_from_tagger: self.pos_from_tagger,
            pos_tagger_layer: self.pos_tagger_layer,
            tagger_pos_share: self.tagger_pos_share,
        }
    }

    pub fn read(dir: &Path) -> Result<NerposMeta> {
        let path = dir.join(NERPOS_JSON);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::checkpoint(dir, format!(
                    "no {NERPOS_JSON}: not a fine-tuned nerpos model folder (a pretrained checkpoint is \
                     trained with nerpos-train first)"
                ))
            } else {
                ModelError::io(&path, e)
            }
        })?;
        let meta: NerposMeta = serde_json::from_str(&text)
            .map_err(|e| ModelError::checkpoint(&path, format!("malformed: {e}")))?;
        if meta.format_version != FORMAT_VERSION {
            return Err(ModelError::checkpoint(
                &path,
                format!(
                    "format version {} (this build reads {FORMAT_VERSION})",
                    meta.format_version
                ),
            ));
        }
        Ok(meta)
    }
}

/// Weights of the source checkpoint that the tagger does not use but a saved folder should keep (the
/// pooler, so that `BertModel.from_pretrained` finds every weight it expects).
#[derive(Debug, Clone, Default)]
pub struct Carried {
    pub tensors: BTreeMap<String, Tensor>,
}

/// Reads the weights of a checkpoint folder (`model.safetensors`, else `pytorch_model.bin`), as f32.
fn read_weights(dir: &Path) -> Result<(PathBuf, Vec<(String, Tensor)>)> {
    let st = dir.join(WEIGHTS);
    let pth = dir.join(PTH_WEIGHTS);
    let (path, tensors) = if st.is_file() {
        let map = candle_core::safetensors::load(&st, &Device::Cpu)
            .map_err(|e| ModelError::checkpoint(&st, format!("unreadable safetensors: {e}")))?;
        (st, map.into_iter().collect::<Vec<_>>())
    } else if pth.is_file() {
        let v = candle_core::pickle::read_all(&pth).map_err(|e| {
            ModelError::checkpoint(&pth, format!("unreadable PyTorch checkpoint: {e}"))
        })?;
        (pth, v)
    } else {
        return Err(ModelError::checkpoint(
            dir,
            format!("no {WEIGHTS} or {PTH_WEIGHTS} (expected a Hugging Face checkpoint folder)"),
        ));
    };
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| {
            Ok((
                k,
                if t.dtype() == DType::F32 {
                    t
                } else {
                    t.to_dtype(DType::F32)?
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((path, tensors))
}

/// Hugging Face's own renames: a `bert.` prefix (task-model checkpoints) and the old `gamma`/`beta`
/// LayerNorm names.
fn normalize(key: &str) -> String {
    let key = key.strip_prefix("bert.").unwrap_or(key);
    if let Some(stem) = key.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = key.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        key.to_owned()
    }
}

/// Keys of BERT checkpoints that the tagger has no use for: pre-training heads and buffers.
fn ignorable(key: &str) -> bool {
    key.starts_with("cls.")
        || key.ends_with("position_ids")
        || key.ends_with("embeddings.token_type_ids")
}

fn list(keys: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = keys
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(", … ({} in all)", keys.len()));
    }
    s
}

/// The head's weights: loaded when their shapes fit, drawn anew otherwise (unless a head is required).
/// Every kind's decoder weights count (a CRF folder continued with a softmax head), each declared
/// by its kind.
const HEAD_KEYS: [&str; 6] = [
    POS_EMBEDDING,
    POS_EMBEDDING_TAGGED,
    POS_TAGGER_WEIGHT,
    POS_TAGGER_BIAS,
    CLASSIFIER_WEIGHT,
    CLASSIFIER_BIAS,
];

fn is_head(key: &str) -> bool {
    HEAD_KEYS.contains(&key) || HeadKind::is_decoder_key(key)
}

/// A checkpoint's tensors sorted by what loading did with them.
#[derive(Default)]
struct Sorted {
    seen: HashSet<String>,
    carried: Carried,
    ignored: Vec<String>,
    mismatched: Vec<String>,
    unexpected: Vec<String>,
}

impl Sorted {
    /// Everything that keeps the checkpoint from fitting the model, in one line (None: it fits).
    fn problems(&self, missing: &[String]) -> Option<String> {
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("missing weights: {}", list(missing)));
        }
        if !self.mismatched.is_empty() {
            problems.push(format!("shape mismatches: {}", list(&self.mismatched)));
        }
        if !self.unexpected.is_empty() {
            problems.push(format!("unexpected weights: {}", list(&self.unexpected)));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

impl BertNerPos {
    /// Loads weights into the model's parameters. Encoder keys must all be present with the right
    /// shapes; head keys are loaded when present (`require_head` makes their absence an error); the
    /// pooler is carried; anything else is an error listing the keys.
    fn load_weights(&self, dir: &Path, require_head: bool) -> Result<(Carried, bool)> {
        let (path, tensors) = read_weights(dir)?;
        let mut sorted = Sorted::default();
        for (raw, t) in tensors {
            let key = normalize(&raw);
            match self.params.get(&key) {
                Some(var) if var.shape() == t.shape() => {
                    var.set(&t.to_device(self.device())?)?;
                    sorted.seen.insert(key);
                }
                // A head for other labels (e.g. a token-classification checkpoint): initialised anew.
                Some(_) if is_head(&key) && !require_head => sorted.ignored.push(raw),
                Some(var) => sorted.mismatched.push(format!(
                    "{key}: checkpoint {:?}, model {:?}",
                    t.dims(),
                    var.dims()
                )),
                None if key.starts_with("pooler.") => {
                    sorted.carried.tensors.insert(key, t);
                }
                None if ignorable(&key) => sorted.ignored.push(raw),
                // A head of another shape than configured (e.g. no POS) is not ours to load.
                None if is_head(&key) && !require_head => sorted.ignored.push(raw),
                None => sorted.unexpected.push(raw),
            }
        }
        if !sorted.ignored.is_empty() {
            debug!(keys = %list(&sorted.ignored), "ignored checkpoint weights the tagger does not use");
        }
        let missing: Vec<String> = self
            .params
            .iter()
            .map(|(k, _)| k.to_owned())
            .filter(|k| !sorted.seen.contains(k) && (require_head || !is_head(k)))
            .collect();
        if let Some(problems) = sorted.problems(&missing) {
            return Err(ModelError::Weights {
                path,
                msg: format!("does not fit a BERT+POS model of this configuration: {problems}"),
            });
        }
        let head_loaded = self
            .head_keys()
            .into_iter()
            .all(|k| sorted.seen.contains(k));
        Ok((sorted.carried, head_loaded))
    }

    /// A Hugging Face BERT checkpoint folder with a new head: the head is drawn as `init` says from
    /// `seed` unless the folder already has one of the same shape. `encoder_dropout` overrides the
    /// checkpoint's dropout rates.
    pub fn from_pretrained(
        dir: &Path,
        head: HeadConfig,
        encoder_dropout: Option<f64>,
        (init, seed): (HeadInit, u64),
        device: &Device,
    ) -> Result<(BertNerPos, Carried)> {
        let (bert, _) = BertConfig::read(dir)?;
        let mut config = ModelConfig { bert, head };
        if let Some(p) = encoder_dropout {
            config.set_encoder_dropout(p);
        }
        let model = BertNerPos::new(config, device)?;
        let (carried, head_loaded) = model.load_weights(dir, false)?;
        if !head_loaded {
            model.init_head(init, seed)?;
        }
        info!(
            folder = %dir.display(),
            parameters = model.params.count(),
            head = if head_loaded { "loaded" } else { "initialised" },
            "loaded checkpoint"
        );
        Ok((model, carried))
    }

    /// A fine-tuned folder written by [`BertNerPos::save`], whole.
    pub fn load(dir: &Path, device: &Device) -> Result<(BertNerPos, NerposMeta)> {
        Self::load_with_dropout(dir, device, None, None)
    }

    /// As [`BertNerPos::load`], with the encoder's and the head's dropout rates overridden (to continue
    /// training a fine-tuned model with other rates).
    pub fn load_with_dropout(
        dir: &Path,
        device: &Device,
        encoder_dropout: Option<f64>,
        head_dropout: Option<f64>,
    ) -> Result<(BertNerPos, NerposMeta)> {
        let meta = NerposMeta::read(dir)?;
        let (bert, _) = BertConfig::read(dir)?;
        let mut config = ModelConfig {
            bert,
            head: meta.head(),
        };
        if let Some(p) = encoder_dropout {
            config.set_encoder_dropout(p);
        }
        if let Some(p) = head_dropout {
            config.head.dropout = p;
        }
        let model = BertNerPos::new(config, device)?;
        model.load_weights(dir, true)?;
        Ok((model, meta))
    }

    /// Every weight under its saved name: encoder (Hugging Face names), carried pooler, head.
    pub fn named_weights(&self, carried: &Carried) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (k, v) in self.params.iter() {
            out.insert(
                k.to_owned(),
                nerpos_kernels::stats::to_host(v.as_tensor())?.to_dtype(DType::F32)?,
            );
        }
        for (k, t) in &carried.tensors {
            out.insert(k.clone(), t.clone());
        }
        Ok(out)
    }

    /// Writes a fine-tuned folder at `dir`: built in a temporary folder beside it and renamed into
    /// place, so `dir` is either the previous folder or the complete new one. `source` is the
    /// checkpoint folder whose `config.json` and tokenizer files are copied.
    pub fn save(
        &self,
        dir: &Path,
        source: &Path,
        meta: &NerposMeta,
        carried: &Carried,
    ) -> Result<()> {
        let tmp = nerpos_run::staging_dir(dir)?;

        let config_src = source.join("config.json");
        std::fs::copy(&config_src, tmp.path().join("config.json"))
            .map_err(|e| ModelError::io(&config_src, e))?;
        for f in TOKENIZER_FILES {
            let src = source.join(f);
            if src.is_file() {
                std::fs::copy(&src, tmp.path().join(f)).map_err(|e| ModelError::io(&src, e))?;
            }
        }
        let weights = self.named_weights(carried)?;
        // A diverged model is never written: a NaN in a weight makes every prediction NaN.
        if let Some((name, bad)) =
            nerpos_kernels::host::first_non_finite(weights.iter().map(|(k, t)| (k.as_str(), t)))?
        {
            return Err(ModelError::Weights {
                path: dir.to_owned(),
                msg: format!(
                    "not written: {bad} value(s) of {name} are not finite (NaN or infinite)"
                ),
            });
        }
        let weights: HashMap<String, Tensor> = weights.into_iter().collect();
        candle_core::safetensors::save(&weights, tmp.path().join(WEIGHTS))?;
        let json = serde_json::to_string_pretty(meta).expect("meta serialises") + "\n";
        std::fs::write(tmp.path().join(NERPOS_JSON), json)
            .map_err(|e| ModelError::io(tmp.path(), e))?;

        nerpos_run::publish_dir(tmp, dir)?;
        Ok(())
    }
}
