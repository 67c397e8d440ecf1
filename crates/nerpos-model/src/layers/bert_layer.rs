//! One BERT encoder layer (post-LayerNorm, as Hugging Face's `BertLayer`): self-attention, then the
//! feed-forward block.

use candle_core::Tensor;
use nerpos_kernels::dropout::Rows;

use super::attention::AttentionBlockCache;
use super::feed_forward::FeedForwardCache;
use super::{FeedForward, Pass, SelfAttention, Sink};
use crate::config::BertConfig;
use crate::error::Result;
use crate::params::{Param, Params};

pub struct BertLayer {
    pub attention: SelfAttention,
    pub feed_forward: FeedForward,
}

/// What a layer's backward needs.
pub struct LayerCache {
    attention: AttentionBlockCache,
    feed_forward: FeedForwardCache,
}

impl BertLayer {
    pub fn new(p: &mut Params, c: &BertConfig, i: usize) -> Result<BertLayer> {
        Ok(BertLayer {
            attention: SelfAttention::new(p, c, i)?,
            feed_forward: FeedForward::new(p, c, i)?,
        })
    }

    /// The layer's forward products on the CPU in bf16 from now on (inference; see
    /// [`super::Linear::pack_bf16`]).
    pub fn pack_bf16(&mut self) -> Result<()> {
        self.attention.pack_bf16()?;
        self.feed_forward.pack_bf16()
    }

    /// The layer's output; with `only_head` (the last layer) on the head positions only.
    pub fn forward(
        &self,
        pass: &Pass,
        x: Tensor,
        only_head: bool,
    ) -> Result<(Tensor, Option<LayerCache>)> {
        let (h1, attention) = self.attention.forward(pass, x, only_head)?;
        let rows = if only_head { Rows::Head } else { Rows::Tokens };
        let (out, feed_forward) = self.feed_forward.forward(pass, h1, rows)?;
        let cache = attention
            .zip(feed_forward)
            .map(|(attention, feed_forward)| LayerCache {
                attention,
                feed_forward,
            });
        Ok((out, cache))
    }

    /// Hands over the layer's gradients (the feed-forward block's first); returns d(input).
    pub fn backward(
        &self,
        pass: &Pass,
        cache: LayerCache,
        dout: &Tensor,
        sink: &mut Sink,
    ) -> Result<Tensor> {
        let dh1 = self
            .feed_forward
            .backward(pass, cache.feed_forward, dout, sink)?;
        self.attention.backward(pass, cache.attention, &dh1, sink)
    }

    /// Its parameters in the order backward hands out their gradients.
    pub fn params(&self) -> Vec<&Param> {
        let mut out = self.feed_forward.params();
        out.extend(self.attention.params());
        out
    }
}
