//! The model's layers, each owning its parameters and its maths, as candle-nn's modules do: `new`
//! registers the parameters under the layer's name prefix with their [`Role`](crate::params::Role)s;
//! `forward` returns the output and what backward needs; `backward` hands the layer's gradients to the
//! [`Sink`] and returns the gradient of its input; `params` lists its parameters in the order backward
//! hands out their gradients — the model's gradient order is these lists, head first.

pub(crate) mod attention;
pub(crate) mod bert_layer;
pub mod decoder;
pub(crate) mod embeddings;
pub(crate) mod feed_forward;
pub(crate) mod head;
mod layer_norm;
mod linear;

pub use attention::SelfAttention;
pub use bert_layer::BertLayer;
pub use decoder::crf;
pub use embeddings::Embeddings;
pub use feed_forward::FeedForward;
pub use head::Head;
pub use layer_norm::Norm;
pub use linear::Linear;

use nerpos_kernels::Kernels;
use nerpos_kernels::dropout::{Masker, Rows, Site};

use crate::batch::Inputs;
use crate::error::{ModelError, Result};
use crate::params::Param;
use nerpos_dist::Grad;

/// What one forward pass runs with.
#[derive(Clone)]
pub struct Pass<'a> {
    /// Which implementation of the fused ops runs.
    pub kernels: Kernels,
    pub inputs: &'a Inputs,
    /// The batch's dropout masks in training; none in evaluation.
    pub masks: Option<&'a Masker>,
    /// Keep what backward needs.
    pub keep: bool,
    /// The batch's row tables for the CUDA attention, uploaded once for all layers (none elsewhere).
    pub tables: Option<nerpos_kernels::ops::attention::AttentionTables>,
}

impl Pass<'_> {
    /// For each head position, whether its sentence is drawn at `site` with probability `p` in
    /// training (keyed by the sentence, as the masks); none in evaluation.
    pub fn head_sentences(&self, site: nerpos_kernels::dropout::Site, p: f64) -> Option<Vec<bool>> {
        self.masks
            .filter(|_| p > 0.0)
            .map(|m| m.head_sentences(site, p))
    }

    /// The keep-mask of `like` at `site` in training, none in evaluation.
    pub fn mask(
        &self,
        like: &candle_core::Tensor,
        rows: Rows,
        site: Site,
        p: f64,
    ) -> Result<Option<nerpos_kernels::Mask>> {
        match self.masks {
            Some(m) => crate::profile::timed("fwd/bwd: dropout masks", || {
                Ok(m.tokens(like, rows, site, p)?)
            }),
            None => Ok(None),
        }
    }
}

/// Where backward hands each gradient as soon as it is computed — checked against the model's
/// gradient order, which gradient buckets are cut from.
pub struct Sink<'a> {
    order: &'a [String],
    next: usize,
    out: &'a mut dyn FnMut(&str, Grad) -> Result<()>,
}

impl<'a> Sink<'a> {
    pub fn new(order: &'a [String], out: &'a mut dyn FnMut(&str, Grad) -> Result<()>) -> Sink<'a> {
        Sink {
            order,
            next: 0,
            out,
        }
    }

    /// Hands over `p`'s gradient.
    pub fn emit(&mut self, p: &Param, g: Grad) -> Result<()> {
        if self.order.get(self.next) != Some(&p.name) {
            return Err(ModelError::Internal(format!(
                "backward produced the gradient of {} where the gradient order has {:?}",
                p.name,
                self.order.get(self.next)
            )));
        }
        self.next += 1;
        (self.out)(&p.name, g)
    }

    /// Hands over `p`'s dense gradient.
    pub fn dense(&mut self, p: &Param, g: candle_core::Tensor) -> Result<()> {
        self.emit(p, Grad::Dense(g))
    }

    /// Checks that every gradient was handed over.
    pub fn finish(&self) -> Result<()> {
        if self.next != self.order.len() {
            return Err(ModelError::Internal(format!(
                "backward produced {} gradients for {} parameters",
                self.next,
                self.order.len()
            )));
        }
        Ok(())
    }
}
