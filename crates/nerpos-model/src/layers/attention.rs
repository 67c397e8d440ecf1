//! A BERT layer's self-attention block: the fused query/key/value projection, attention within each
//! packed row, the output projection with bias + dropout + residual, and LayerNorm.

use candle_core::Tensor;
use nerpos_kernels::dropout::{Rows, Site};
use nerpos_kernels::ops::attention::{self, Attention, AttentionCache, Heads};
use nerpos_kernels::ops::column_sum::ColumnSum;
use nerpos_kernels::ops::embedding::EmbeddingGrad;
use nerpos_kernels::ops::residual::BiasDropoutResidual;
use nerpos_kernels::{Kernels, Mask};

use super::linear::{MATMUL, bf16_product, matmul_t, packed_for, product_add};
use super::{Linear, Norm, Pass, Sink};
use crate::config::BertConfig;
use crate::error::Result;
use crate::params::{Param, Params, Role};
use crate::profile::{scope, timed};
use nerpos_kernels::ops::matmul::{Epilogue, PackedBf16};

pub struct SelfAttention {
    /// The layer's index (its dropout sites).
    layer: usize,
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub output: Linear,
    pub norm: Norm,
    shape: Heads,
    hidden_dropout: f64,
    attention_dropout: f64,
    /// The query/key/value weights rounded to bf16 for the CPU's bf16 products (inference).
    packed_qkv: Option<PackedBf16>,
}

/// What the block's backward needs.
pub struct AttentionBlockCache {
    x: Tensor,
    w_qkv: Tensor,
    qkv: Tensor,
    attention: AttentionCache,
    context: Tensor,
    mask: Option<Mask>,
    ln_in: Tensor,
    /// The block ran after attention on the head positions only.
    only_head: bool,
}

impl SelfAttention {
    /// Layer `i`'s block, under `encoder.layer.{i}.attention`.
    pub fn new(p: &mut Params, c: &BertConfig, i: usize) -> Result<SelfAttention> {
        let h = c.hidden_size;
        let pre = format!("encoder.layer.{i}.attention");
        let mut linear =
            |name: &str| Linear::new(p, &format!("{pre}.{name}"), (h, h), Role::WEIGHT);
        let (query, key, value) = (
            linear("self.query")?,
            linear("self.key")?,
            linear("self.value")?,
        );
        let output = linear("output.dense")?;
        Ok(SelfAttention {
            layer: i,
            query,
            key,
            value,
            output,
            norm: Norm::new(p, &format!("{pre}.output.LayerNorm"), h, c.layer_norm_eps)?,
            shape: Heads {
                heads: c.num_attention_heads,
                head_dim: h / c.num_attention_heads,
            },
            hidden_dropout: c.hidden_dropout_prob,
            attention_dropout: c.attention_probs_dropout_prob,
            packed_qkv: None,
        })
    }

    /// The block's forward products on the CPU in bf16 from now on (inference: the weights as they
    /// are now; see [`Linear::pack_bf16`]).
    pub fn pack_bf16(&mut self) -> Result<()> {
        self.packed_qkv = Some(PackedBf16::new(&self.w_qkv()?)?);
        self.output.pack_bf16()
    }

    /// The query, key and value weights stacked, (3H, H).
    fn w_qkv(&self) -> Result<Tensor> {
        let w = [&self.query, &self.key, &self.value].map(|l| l.weight.t());
        Ok(Tensor::cat(&w, 0)?)
    }

    /// The block's output from its input `x` `[N, H]`; with `only_head`, everything after attention
    /// runs on the head positions only (`[M, H]`: the last layer, whose other tokens' outputs would
    /// feed nothing — they still serve as keys and values).
    pub fn forward(
        &self,
        pass: &Pass,
        x: Tensor,
        only_head: bool,
    ) -> Result<(Tensor, Option<AttentionBlockCache>)> {
        let k = pass.kernels;
        // One projection for query, key and value: a (N, 3H) product instead of three (N, H) ones.
        let b_qkv = Tensor::cat(
            &[self.query.bias.t(), self.key.bias.t(), self.value.bias.t()],
            0,
        )?;
        // Where the CUDA attention kernels run they add the bias as they read Q, K and V: the
        // product skips its own pass over [N, 3H] (a separate bias add on a GPU).
        let fold = Attention::folds_bias(k, &x, self.shape);
        let bias = if fold {
            Epilogue::None
        } else {
            Epilogue::Bias(&b_qkv)
        };
        // The stacked f32 weight only where it is multiplied (then kept for backward); the packed
        // bf16 one (inference) needs no copy per batch.
        let (qkv, w_qkv) = match packed_for(k, &x, self.packed_qkv.as_ref()) {
            Some(w) => (timed(MATMUL, || bf16_product(&x, w, bias))?, None),
            None => {
                let w = self.w_qkv()?;
                (timed(MATMUL, || matmul_t(k, &x, &w, bias))?, Some(w))
            }
        };
        let dropout = pass.masks.map(|masks| attention::Dropout {
            masks,
            layer: self.layer,
            p: self.attention_dropout,
        });
        let (context, cache) = timed("fwd/bwd: attention", || {
            let rows = (&pass.inputs.rows, pass.tables.as_ref());
            let folded = fold.then_some(&b_qkv);
            Attention::forward(k, (&qkv, folded), rows, self.shape, dropout, pass.keep)
        })?;
        let (context, residual) = if only_head {
            let _t = scope("fwd/bwd: head");
            let head = &pass.inputs.head;
            (context.index_select(head, 0)?, x.index_select(head, 0)?)
        } else {
            (context, x.clone())
        };
        let rows = if only_head { Rows::Head } else { Rows::Tokens };
        let attended = self.output.matmul(k, &context)?;
        let site = Site::AttentionOutput(self.layer);
        let mask = pass.mask(&attended, rows, site, self.hidden_dropout)?;
        let (out, ln_in) = self.norm.after_residual(
            k,
            pass.keep,
            (&attended, &self.output.bias.t()),
            mask.as_ref(),
            &residual,
        )?;
        // A packed model never trains (BertNerPos refuses), so a kept pass always has w_qkv.
        let cache = cache
            .zip(ln_in)
            .zip(w_qkv)
            .map(|((attention, ln_in), w_qkv)| AttentionBlockCache {
                x,
                w_qkv,
                qkv,
                attention,
                context,
                mask,
                ln_in,
                only_head,
            });
        Ok((out, cache))
    }

    /// Hands over the block's gradients; returns d(x) `[N, H]` from d(output).
    pub fn backward(
        &self,
        pass: &Pass,
        c: AttentionBlockCache,
        dout: &Tensor,
        sink: &mut Sink,
    ) -> Result<Tensor> {
        let k = pass.kernels;
        let dz = self.norm.backward(k, &c.ln_in, dout, sink)?;
        let (dattended, db) = timed("fwd/bwd: bias+dropout+residual", || {
            BiasDropoutResidual::backward(k, &dz, c.mask.as_ref())
        })?;
        sink.dense(&self.output.bias, db)?;
        sink.dense(
            &self.output.weight,
            Linear::weight_grad(k, &dattended, &c.context)?,
        )?;
        let dcontext = self.output.input_grad(k, &dattended)?;
        let (dcontext, dz) = if c.only_head {
            // Back to all tokens: the head positions' rows, zero elsewhere.
            let _t = scope("fwd/bwd: head");
            let (head, n) = (&pass.inputs.host.head, pass.inputs.rows.tokens());
            (
                EmbeddingGrad::dense(k, head, &dcontext, n)?,
                EmbeddingGrad::dense(k, head, &dz, n)?,
            )
        } else {
            (dcontext, dz)
        };
        let dqkv = timed("fwd/bwd: attention", || {
            Attention::backward(
                &dcontext,
                &c.qkv,
                &pass.inputs.rows,
                self.shape,
                &c.attention,
            )
        })?;
        self.qkv_backward(k, &dqkv, &c.x, sink)?;
        // dz, the residual's gradient, is read by nothing after this sum: the product may add into it.
        timed(MATMUL, || product_add(k, &dqkv, &c.w_qkv, dz))
    }

    /// Hands over the query, key and value projections' gradients from d(qkv).
    fn qkv_backward(&self, k: Kernels, dqkv: &Tensor, x: &Tensor, sink: &mut Sink) -> Result<()> {
        let h = self.shape.hidden();
        let db = timed("fwd/bwd: bias", || ColumnSum::forward(k, dqkv))?;
        let dw = Linear::weight_grad(k, dqkv, x)?;
        for (j, l) in [&self.query, &self.key, &self.value]
            .into_iter()
            .enumerate()
        {
            sink.dense(&l.weight, dw.narrow(0, j * h, h)?)?;
            sink.dense(&l.bias, db.narrow(0, j * h, h)?)?;
        }
        Ok(())
    }

    /// Its parameters in the order backward hands out their gradients.
    pub fn params(&self) -> Vec<&Param> {
        let mut out = self.norm.params().to_vec();
        out.extend(self.output.params());
        for l in [&self.query, &self.key, &self.value] {
            out.extend([&l.weight, &l.bias]);
        }
        out
    }
}
