//! The BERT encoder's parameters as Hugging Face's `BertModel` names and shapes them (post-LayerNorm
//! layers, absolute positions), with the dropout rates it applies. The computation is `train`'s.

use candle_nn::{Embedding, Linear};

use crate::config::{Activation, BertConfig};
use crate::error::Result;
use crate::layers::LayerNorm;
use crate::params::Params;

fn linear(p: &mut Params, name: &str, inp: usize, out: usize) -> Result<Linear> {
    let w = p.var(&format!("{name}.weight"), (out, inp))?;
    let b = p.var(&format!("{name}.bias"), out)?;
    Ok(Linear::new(w, Some(b)))
}

fn layer_norm(p: &mut Params, name: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        p.var(&format!("{name}.weight"), dim)?,
        p.var(&format!("{name}.bias"), dim)?,
        eps,
    ))
}

pub struct BertEmbeddings {
    pub(crate) word: Embedding,
    pub(crate) position: Embedding,
    pub(crate) token_type: Embedding,
    pub(crate) norm: LayerNorm,
    pub(crate) dropout: f64,
}

impl BertEmbeddings {
    pub fn new(p: &mut Params, c: &BertConfig) -> Result<BertEmbeddings> {
        let h = c.hidden_size;
        let emb = |p: &mut Params, name: &str, n: usize| -> Result<Embedding> {
            Ok(Embedding::new(
                p.var(&format!("embeddings.{name}.weight"), (n, h))?,
                h,
            ))
        };
        Ok(BertEmbeddings {
            word: emb(p, "word_embeddings", c.vocab_size)?,
            position: emb(p, "position_embeddings", c.max_position_embeddings)?,
            token_type: emb(p, "token_type_embeddings", c.type_vocab_size)?,
            norm: layer_norm(p, "embeddings.LayerNorm", h, c.layer_norm_eps)?,
            dropout: c.hidden_dropout_prob,
        })
    }
}

pub struct BertLayer {
    pub(crate) query: Linear,
    pub(crate) key: Linear,
    pub(crate) value: Linear,
    pub(crate) attn_out: Linear,
    pub(crate) attn_norm: LayerNorm,
    pub(crate) intermediate: Linear,
    pub(crate) output: Linear,
    pub(crate) out_norm: LayerNorm,
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) activation: Activation,
    pub(crate) hidden_dropout: f64,
    pub(crate) attention_dropout: f64,
}

impl BertLayer {
    pub fn new(p: &mut Params, c: &BertConfig, i: usize) -> Result<BertLayer> {
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let pre = format!("encoder.layer.{i}");
        Ok(BertLayer {
            query: linear(p, &format!("{pre}.attention.self.query"), h, h)?,
            key: linear(p, &format!("{pre}.attention.self.key"), h, h)?,
            value: linear(p, &format!("{pre}.attention.self.value"), h, h)?,
            attn_out: linear(p, &format!("{pre}.attention.output.dense"), h, h)?,
            attn_norm: layer_norm(
                p,
                &format!("{pre}.attention.output.LayerNorm"),
                h,
                c.layer_norm_eps,
            )?,
            intermediate: linear(p, &format!("{pre}.intermediate.dense"), h, inter)?,
            output: linear(p, &format!("{pre}.output.dense"), inter, h)?,
            out_norm: layer_norm(p, &format!("{pre}.output.LayerNorm"), h, c.layer_norm_eps)?,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
            activation: c.activation().map_err(crate::error::ModelError::Config)?,
            hidden_dropout: c.hidden_dropout_prob,
            attention_dropout: c.attention_probs_dropout_prob,
        })
    }
}

pub struct BertEncoder {
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
}

impl BertEncoder {
    pub fn new(p: &mut Params, c: &BertConfig) -> Result<BertEncoder> {
        Ok(BertEncoder {
            embeddings: BertEmbeddings::new(p, c)?,
            layers: (0..c.num_hidden_layers)
                .map(|i| BertLayer::new(p, c, i))
                .collect::<Result<_>>()?,
        })
    }
}
