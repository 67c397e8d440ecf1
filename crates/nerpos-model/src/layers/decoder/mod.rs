//! What turns the classifier's logits into labels — the one part of the tagging head that differs
//! between kinds of head (softmax, CRF). A kind of head is a type in its own file here implementing
//! [`HeadType`] (how it is built, what it refuses to learn from) and [`Decoder`] (its parameters, loss
//! and decoding), registered once here in [`HeadKind`]; the model, prediction, checkpoints and the
//! trainer ask it instead of matching on the kind.

use candle_core::Tensor;
use nerpos_kernels::{Deferred, Kernels};
use serde::{Deserialize, Serialize};

pub mod crf;
pub mod softmax;

use super::Sink;
pub use super::head::Draw;
use crate::batch::{Inputs, Targets};
use crate::error::Result;
use crate::params::{Param, Params};
use crate::predict::WordPrediction;
use crf::CrfHead;
use softmax::SoftmaxHead;

/// What turns the logits into labels: each position's softmax, or a CRF over each row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Cross-entropy per position; each position's most likely label.
    #[default]
    Softmax,
    /// A linear-chain CRF: the rows' negative log-likelihood; Viterbi decoding.
    Crf,
}

impl HeadKind {
    /// Every kind (their weights are the head's in any checkpoint, whichever kind a model has).
    pub const ALL: [HeadKind; 2] = [HeadKind::Softmax, HeadKind::Crf];

    /// The kind's type: the one place a kind of head is registered.
    pub fn head(self) -> &'static dyn HeadType {
        match self {
            HeadKind::Softmax => &SoftmaxHead,
            HeadKind::Crf => &CrfHead,
        }
    }

    /// Whether `key` is a weight of some kind of head's decoder.
    pub fn is_decoder_key(key: &str) -> bool {
        HeadKind::ALL.iter().any(|k| k.head().keys().contains(&key))
    }
}

/// A kind of head before a model is built: what it builds, its weights' names, and what it cannot
/// learn from.
pub trait HeadType: Sync {
    /// Its decoder over `labels` (the labels' names in id order), its parameters registered in `p`.
    fn build(&self, p: &mut Params, labels: &[String]) -> Result<Box<dyn Decoder>>;

    /// The names of its parameters (in checkpoints).
    fn keys(&self) -> &'static [&'static str];

    /// Why it cannot learn from the labelled words `path` (label ids; the first is word `first` of
    /// its sentence, 0-based), if it cannot.
    fn refuses(&self, _labels: &[String], _path: &[u32], _first: usize) -> Option<String> {
        None
    }
}

/// A built head's decoder: its parameters, its loss and its decoding.
pub trait Decoder: Send + Sync {
    /// Its parameters in the order its loss hands out their gradients.
    fn params(&self) -> Vec<&Param>;

    /// Its parameters in the order a seed draws them, each with its draw.
    fn draws(&self) -> Vec<(&Param, Draw)>;

    /// The loss summed over the batch's labelled positions and d(loss)/d(logits); its own gradients
    /// go to `sink` first.
    fn loss(
        &self,
        kernels: Kernels,
        logits: &Tensor,
        inputs: &Inputs,
        targets: &Targets,
        sink: &mut Sink,
    ) -> Result<(Deferred, Tensor)>;

    /// What decodes rows of logits on the host (its parameters read once).
    fn decoding(&self) -> Result<Box<dyn Decoding>>;
}

/// Decodes rows of logits on the host.
pub trait Decoding {
    /// One row's words (sentence-level indices) and the logits at their first sub-words, in order.
    fn decode(&self, words: Vec<u32>, z: Vec<Vec<f32>>, keep_logits: bool) -> Vec<WordPrediction>;
}
