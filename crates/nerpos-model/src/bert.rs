//! The BERT encoder as Hugging Face's `BertModel` computes it (post-LayerNorm layers, absolute
//! positions), with dropout where it applies it. Parameter names are Hugging Face's.

use candle_core::{D, DType, Module, Tensor};
use candle_nn::{Embedding, Linear};

use crate::config::{Activation, BertConfig};
use crate::error::Result;
use crate::layers::{LayerNorm, Mode, attention_probs, dropout, gelu_erf};
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

    /// Word + position + token type 0, normalised, dropped out.
    pub fn forward(&self, input_ids: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let (_, t) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, input_ids.device())?;
        let types = Tensor::zeros(1, DType::U32, input_ids.device())?;
        let x = self
            .word
            .forward(input_ids)?
            .broadcast_add(&self.position.forward(&positions)?)?
            .broadcast_add(&self.token_type.forward(&types)?)?;
        dropout(&self.norm.forward(&x)?, self.dropout, mode)
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

    /// One layer; `mask_bias` is (B, T): 0 on real tokens, a large negative number on padding.
    pub fn forward(&self, x: &Tensor, mask_bias: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let heads = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = heads(self.query.forward(x)?)?;
        let k = heads(self.key.forward(x)?)?;
        let v = heads(self.value.forward(x)?)?;
        let scores = q.matmul(&k.t()?)?;
        let probs = attention_probs(&scores, mask_bias, 1.0 / (self.head_dim as f64).sqrt())?;
        let probs = dropout(&probs, self.attention_dropout, mode)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let attended = dropout(&self.attn_out.forward(&context)?, self.hidden_dropout, mode)?;
        let x = self.attn_norm.forward(&(attended + x)?)?;

        let inner = self.intermediate.forward(&x)?;
        let inner = match self.activation {
            Activation::GeluErf => gelu_erf(&inner)?,
            Activation::GeluTanh => inner.gelu()?,
            Activation::Relu => inner.relu()?,
        };
        let out = dropout(&self.output.forward(&inner)?, self.hidden_dropout, mode)?;
        Ok(self.out_norm.forward(&(out + x)?)?)
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

    /// Contextual embeddings (B, T, H) of `input_ids` (B, T) with `attention_mask` (B, T) of 1/0.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let mut x = self.embeddings.forward(input_ids, mode)?;
        // Hugging Face's extended mask: (1 - mask) * the dtype's minimum, added to attention scores.
        let mask = attention_mask.to_dtype(x.dtype())?;
        let bias = ((mask.ones_like()? - mask)? * f32::MIN as f64)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, mode)?;
        }
        Ok(x)
    }
}

/// The concatenation of the encoder output and the POS embedding along the last dimension.
pub fn concat_features(encoded: &Tensor, pos: Option<&Tensor>) -> Result<Tensor> {
    Ok(match pos {
        Some(p) => Tensor::cat(&[encoded, p], D::Minus1)?,
        None => encoded.clone(),
    })
}
