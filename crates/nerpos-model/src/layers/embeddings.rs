//! BERT's embeddings: word, position and token-type tables summed, LayerNorm, dropout.

use candle_core::Tensor;
use nerpos_kernels::Mask;
use nerpos_kernels::dropout::{Rows, Site};
use nerpos_kernels::ops::column_sum::ColumnSum;
use nerpos_kernels::ops::embedding::EmbeddingGrad;
use nerpos_kernels::ops::residual::masked;

use super::{Norm, Pass, Sink};
use crate::config::BertConfig;
use crate::error::Result;
use crate::params::{Param, Params, Role};
use crate::profile::scope;
use nerpos_dist::Grad;

/// The word-embedding table, whose gradient is given as rows ([`Grad::Rows`]).
pub const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

pub struct Embeddings {
    pub word: Param,
    pub position: Param,
    pub token_type: Param,
    pub norm: Norm,
    dropout: f64,
}

/// What the embeddings' backward needs.
pub struct EmbeddingsCache {
    summed: Tensor,
    mask: Option<Mask>,
}

impl Embeddings {
    pub fn new(p: &mut Params, c: &BertConfig) -> Result<Embeddings> {
        let h = c.hidden_size;
        let mut table =
            |name: &str, n: usize| p.add(format!("embeddings.{name}.weight"), (n, h), Role::TABLE);
        Ok(Embeddings {
            word: table("word_embeddings", c.vocab_size)?,
            position: table("position_embeddings", c.max_position_embeddings)?,
            token_type: table("token_type_embeddings", c.type_vocab_size)?,
            norm: Norm::new(p, "embeddings.LayerNorm", h, c.layer_norm_eps)?,
            dropout: c.hidden_dropout_prob,
        })
    }

    /// The encoder's input `[N, H]` (after LayerNorm and dropout).
    pub fn forward(&self, pass: &Pass) -> Result<(Tensor, EmbeddingsCache)> {
        let x = pass.inputs;
        let summed = {
            let _t = scope("fwd/bwd: embeddings");
            let word = self.word.t().index_select(&x.input_ids, 0)?;
            let pos = self.position.t().index_select(&x.positions, 0)?;
            let type_row = self.token_type.t().narrow(0, 0, 1)?;
            (word + pos)?.broadcast_add(&type_row)?
        };
        let normed = self.norm.forward(pass.kernels, &summed)?;
        let mask = pass.mask(&normed, Rows::Tokens, Site::Embeddings, self.dropout)?;
        let out = masked(&normed, mask.as_ref())?;
        Ok((out, EmbeddingsCache { summed, mask }))
    }

    /// Hands over the gradients of the LayerNorm and of the three tables (the word table's as the rows
    /// the batch used), from d(output) `dx`.
    pub fn backward(
        &self,
        pass: &Pass,
        cache: EmbeddingsCache,
        dx: &Tensor,
        sink: &mut Sink,
    ) -> Result<()> {
        let k = pass.kernels;
        let dnormed = masked(dx, cache.mask.as_ref())?;
        let dsummed = self.norm.backward(k, &cache.summed, &dnormed, sink)?;
        let _t = scope("fwd/bwd: embedding gradients");
        let dsummed = dsummed.contiguous()?;
        let (vocab, h) = self.word.tensor.dims2()?;
        let x = pass.inputs;
        let (ids, values) = EmbeddingGrad::rows(k, &x.host.input_ids, &dsummed)?;
        sink.emit(
            &self.word,
            Grad::Rows {
                ids,
                values,
                rows: vocab,
            },
        )?;
        let (positions, _) = self.position.tensor.dims2()?;
        sink.dense(
            &self.position,
            EmbeddingGrad::dense(k, &x.host.positions, &dsummed, positions)?,
        )?;
        // Every token has type 0: its row gets the column sums, the other rows nothing.
        let (types, _) = self.token_type.tensor.dims2()?;
        let row0 = ColumnSum::forward(k, &dsummed)?.unsqueeze(0)?;
        let dtypes = if types > 1 {
            let rest = Tensor::zeros((types - 1, h), row0.dtype(), row0.device())?;
            Tensor::cat(&[&row0, &rest], 0)?
        } else {
            row0
        };
        sink.dense(&self.token_type, dtypes)
    }

    /// Its parameters in the order backward hands out their gradients.
    pub fn params(&self) -> Vec<&Param> {
        let mut out = self.norm.params().to_vec();
        out.extend([&self.word, &self.position, &self.token_type]);
        out
    }
}
