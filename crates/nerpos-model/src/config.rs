//! Configuration: the BERT encoder's (Hugging Face `config.json`) and the tagging head's.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The fields of a Hugging Face BERT `config.json` the encoder needs (the file itself is kept whole
/// and written back unchanged when a fine-tuned model is saved).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "point_one")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "point_one")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "five_twelve")]
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "init_range")]
    pub initializer_range: f64,
    #[serde(default = "ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn gelu() -> String {
    "gelu".into()
}
fn point_one() -> f64 {
    0.1
}
fn five_twelve() -> usize {
    512
}
fn two() -> usize {
    2
}
fn init_range() -> f64 {
    0.02
}
fn ln_eps() -> f64 {
    1e-12
}
fn absolute() -> String {
    "absolute".into()
}

/// The activations Hugging Face's BERT accepts that we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact, erf-based GELU.
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl BertConfig {
    /// Reads `config.json` of a checkpoint folder: the typed fields, and the whole JSON object.
    pub fn read(dir: &Path) -> Result<(BertConfig, serde_json::Value)> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::checkpoint(&path, format!("not JSON: {e}")))?;
        let config: BertConfig = serde_json::from_value(value.clone())
            .map_err(|e| ModelError::checkpoint(&path, format!("not a BERT config: {e}")))?;
        config
            .validate()
            .map_err(|msg| ModelError::checkpoint(&path, msg))?;
        Ok((config, value))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(t) = &self.model_type
            && !["bert", "roberta", "xlm-roberta", "camembert", "electra"].contains(&t.as_str())
        {
            return Err(format!("model_type {t:?} is not a BERT-family encoder"));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        self.activation().map(|_| ())
    }

    pub fn activation(&self) -> std::result::Result<Activation, String> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(format!(
                "hidden_act {other:?} is not supported (gelu, gelu_new, relu)"
            )),
        }
    }
}

/// The tagging head: POS embedding, dropout, classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub num_labels: usize,
    pub num_pos: usize,
    /// Width of the POS embedding (the encoder's hidden size unless set).
    pub pos_dim: usize,
    /// `false` drops the POS embedding (the no-POS ablation): the classifier sees the encoder alone.
    pub use_pos: bool,
    /// Dropout on the concatenation before the classifier.
    pub dropout: f64,
    /// What turns the logits into labels (softmax, CRF).
    #[serde(default)]
    pub kind: HeadKind,
    /// The labels' names in id order (a CRF's IOB2 mask reads them; a softmax head does not need
    /// them).
    #[serde(default)]
    pub labels: Vec<String>,
    /// A POS tagger beside the NER head (a linear layer on the encoder's output at the head positions,
    /// trained from the corpus's POS tags), with its loss weight: it supplies the POS ids when the
    /// input has none. `None`: no POS tagger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_tagger: Option<f64>,
    /// In training, feed the POS embedding the tagger's tags (as prediction on raw text will) instead
    /// of the corpus's: the NER head learns to use the POS it will get.
    #[serde(default)]
    pub pos_from_tagger: bool,
    /// The encoder layer (1-based) whose output, at the head positions, the POS tagger reads; `None`:
    /// the last (folders of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_tagger_layer: Option<usize>,
    /// In training, the share of sentences whose POS embedding is fed the tagger's distribution (as
    /// raw text is at prediction) instead of the corpus's tags; drawn per sentence.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tagger_pos_share: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

pub use crate::layers::decoder::HeadKind;

/// Dropout rates of the encoder, which a trainer may override (`encoder_dropout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutRates {
    pub hidden: f64,
    pub attention: f64,
    pub head: f64,
}

/// Everything needed to build the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub bert: BertConfig,
    pub head: HeadConfig,
}

impl ModelConfig {
    pub fn dropout(&self) -> DropoutRates {
        DropoutRates {
            hidden: self.bert.hidden_dropout_prob,
            attention: self.bert.attention_probs_dropout_prob,
            head: self.head.dropout,
        }
    }

    /// Width of what the classifier reads: the encoder's output, and the POS embedding when used.
    pub fn head_features(&self) -> usize {
        self.bert.hidden_size
            + if self.head.use_pos {
                self.head.pos_dim
            } else {
                0
            }
    }

    /// Sets the encoder's dropout rates (both), e.g. 0 to turn them off.
    pub fn set_encoder_dropout(&mut self, p: f64) {
        self.bert.hidden_dropout_prob = p;
        self.bert.attention_probs_dropout_prob = p;
    }
}
