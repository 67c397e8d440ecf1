//! The model's one implementation: the forward pass on a packed batch, keeping what backward needs,
//! and the backward pass written out layer by layer (no autograd graph).
//!
//! Everything runs on the real tokens `[N, H]`; attention within each row ([`crate::attention`]); the
//! head (POS embedding, concatenation, dropout, classifier) and the loss on the head positions `[M]`
//! only. Backward costs what the math costs (about two forwards), and hands out gradients one layer at
//! a time, from the head down — a caller can start reducing a layer's gradients while the layers below
//! are still being differentiated. `tests/parity.rs` checks logits and every gradient against PyTorch,
//! and against an autograd oracle kept under `tests/`.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::attention::{self, AttentionCache, Heads};
use crate::batch::{Inputs, Targets};
use crate::config::Activation;
use crate::deferred::Deferred;
use crate::dropout::{Masker, Noise, Rows, Site};
use crate::error::{ModelError, Result};
use crate::grad::Grad;
use crate::kernels::{self, Mask};
use crate::model::{
    BertNerPos, CLASSIFIER_BIAS, CLASSIFIER_WEIGHT, POS_EMBEDDING, WORD_EMBEDDINGS,
};
use crate::ops::{self, column_sum};
use crate::profile::timed;

/// The result of a training step on one batch.
pub struct StepOutput {
    /// Cross-entropy summed over the labelled positions.
    pub loss_sum: f64,
    /// Number of labelled positions.
    pub count: usize,
    /// The gradient of `loss_sum` for every parameter, by name (the parameters' order); the word
    /// embeddings' as the rows the batch used.
    pub grads: BTreeMap<String, Grad>,
}

fn d(x: &Tensor) -> Tensor {
    x.detach()
}

/// y = x·wᵀ for x (N, in), w (out, in).
///
/// On the CPU, a weight much wider than tall (the FFN's output projection, 384 × 1536) is transposed
/// into a contiguous copy first: the gemm kernels read it 1.6× faster that way (measured: 124 against
/// 199 GFLOP/s at N = 860), far more than the copy costs.
fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    Ok(timed("fwd/bwd: matmul", || {
        if kernels::on_cpu(x) && inp >= 2 * out {
            x.matmul(&d(w).t()?.contiguous()?)
        } else {
            x.matmul(&d(w).t()?)
        }
    })?)
}

/// The keep-mask of `like` at `site` in training (`masks` given), none in evaluation.
fn draw(
    masks: Option<&Masker>,
    like: &Tensor,
    rows: Rows,
    site: Site,
    p: f64,
) -> Result<Option<Mask>> {
    match masks {
        Some(m) => timed("fwd/bwd: dropout masks", || m.tokens(like, rows, site, p)),
        None => Ok(None),
    }
}

/// The forward pass's results and what backward needs from it.
struct Forward {
    summed: Tensor,
    emb_mask: Option<Mask>,
    caches: Vec<LayerCache>,
    features_dropped: Tensor,
    head_mask: Option<Mask>,
    logits: Tensor,
}

/// What a layer's backward pass needs from its forward pass.
struct LayerCache {
    x: Tensor,
    w_qkv: Tensor,
    qkv: Tensor,
    attention: AttentionCache,
    context: Tensor,
    attn_mask: Option<Mask>,
    ln1_in: Tensor,
    h1: Tensor,
    inter: Tensor,
    gelu: Tensor,
    out_mask: Option<Mask>,
    ln2_in: Tensor,
}

/// A layer's parameters as plain tensors (query, key and value fused into one projection).
struct LayerWeights {
    w_qkv: Tensor,
    b_qkv: Tensor,
}

impl BertNerPos {
    fn embed(&self, inputs: &Inputs) -> Result<Tensor> {
        let emb = &self.encoder.embeddings;
        let _t = crate::profile::scope("fwd/bwd: embeddings");
        let word = d(emb.word.embeddings()).index_select(&inputs.input_ids, 0)?;
        let pos = d(emb.position.embeddings()).index_select(&inputs.positions, 0)?;
        let type_row = d(emb.token_type.embeddings()).narrow(0, 0, 1)?;
        Ok((word + pos)?.broadcast_add(&type_row)?)
    }

    fn layer_weights(layer: &crate::bert::BertLayer) -> Result<LayerWeights> {
        // One projection for query, key and value: a (N, 3H) product instead of three (N, H) ones.
        Ok(LayerWeights {
            w_qkv: Tensor::cat(
                &[
                    d(layer.query.weight()),
                    d(layer.key.weight()),
                    d(layer.value.weight()),
                ],
                0,
            )?,
            b_qkv: Tensor::cat(
                &[
                    d(bias_of(&layer.query)?),
                    d(bias_of(&layer.key)?),
                    d(bias_of(&layer.value)?),
                ],
                0,
            )?,
        })
    }

    /// One encoder layer forward; the cache when `keep`.
    ///
    /// `only_head`: the last layer — everything after attention runs on the head positions only
    /// (the other tokens' outputs would feed nothing; they still serve as keys and values).
    fn layer_forward(
        &self,
        (i, layer): (usize, &crate::bert::BertLayer),
        x: Tensor,
        inputs: &Inputs,
        masks: Option<&Masker>,
        keep: bool,
        only_head: bool,
    ) -> Result<(Tensor, Option<LayerCache>)> {
        let LayerWeights { w_qkv, b_qkv } = Self::layer_weights(layer)?;
        let qkv = matmul_t(&x, &w_qkv)?;
        let qkv = timed("fwd/bwd: bias", || qkv.broadcast_add(&b_qkv))?;
        let shape = Heads {
            heads: layer.heads,
            head_dim: layer.head_dim,
        };
        let (context, attention) = timed("fwd/bwd: attention", || {
            let dropout = masks.map(|masks| attention::Dropout {
                masks,
                layer: i,
                p: layer.attention_dropout,
            });
            attention::forward(&qkv, &inputs.rows, shape, dropout, keep)
        })?;
        let (context, residual) = if only_head {
            let _t = crate::profile::scope("fwd/bwd: head");
            (
                context.index_select(&inputs.head, 0)?,
                x.index_select(&inputs.head, 0)?,
            )
        } else {
            (context, x.clone())
        };
        // After attention, the last layer holds the head positions only.
        let rows = if only_head { Rows::Head } else { Rows::Tokens };
        let attended = matmul_t(&context, layer.attn_out.weight())?;
        let attn_mask = draw(
            masks,
            &attended,
            rows,
            Site::AttentionOutput(i),
            layer.hidden_dropout,
        )?;
        let ln1_in = timed("fwd/bwd: bias+dropout+residual", || {
            kernels::bias_dropout_residual(
                &attended,
                &d(bias_of(&layer.attn_out)?),
                attn_mask.as_ref(),
                &residual,
            )
        })?;
        let h1 = timed("fwd/bwd: layer norm", || {
            ops::layer_norm_fwd(
                &ln1_in,
                &d(&layer.attn_norm.weight),
                &d(&layer.attn_norm.bias),
                layer.attn_norm.eps,
            )
        })?;
        let raw = matmul_t(&h1, layer.intermediate.weight())?;
        let (inter, gelu) = timed("fwd/bwd: bias+GELU", || {
            activation_fwd(layer.activation, &raw, &d(bias_of(&layer.intermediate)?))
        })?;
        let out = matmul_t(&gelu, layer.output.weight())?;
        let out_mask = draw(
            masks,
            &out,
            rows,
            Site::FeedForwardOutput(i),
            layer.hidden_dropout,
        )?;
        let ln2_in = timed("fwd/bwd: bias+dropout+residual", || {
            kernels::bias_dropout_residual(
                &out,
                &d(bias_of(&layer.output)?),
                out_mask.as_ref(),
                &h1,
            )
        })?;
        let next = timed("fwd/bwd: layer norm", || {
            ops::layer_norm_fwd(
                &ln2_in,
                &d(&layer.out_norm.weight),
                &d(&layer.out_norm.bias),
                layer.out_norm.eps,
            )
        })?;
        let Some(attention) = attention else {
            return Ok((next, None));
        };
        let cache = LayerCache {
            x,
            w_qkv,
            qkv,
            attention,
            context,
            attn_mask,
            ln1_in,
            h1,
            inter,
            gelu,
            out_mask,
            ln2_in,
        };
        Ok((next, Some(cache)))
    }

    /// The forward pass: logits at the head positions and (with `keep`) everything backward needs.
    fn run_forward(&self, inputs: &Inputs, masks: Option<&Masker>, keep: bool) -> Result<Forward> {
        let c = &self.config;
        let emb = &self.encoder.embeddings;
        let summed = self.embed(inputs)?;
        let normed = timed("fwd/bwd: layer norm", || {
            ops::layer_norm_fwd(
                &summed,
                &d(&emb.norm.weight),
                &d(&emb.norm.bias),
                emb.norm.eps,
            )
        })?;
        let emb_mask = draw(masks, &normed, Rows::Tokens, Site::Embeddings, emb.dropout)?;
        let mut x = kernels::masked(&normed, emb_mask.as_ref())?;

        let mut caches = Vec::with_capacity(self.encoder.layers.len());
        let last = self.encoder.layers.len().checked_sub(1);
        for (i, layer) in self.encoder.layers.iter().enumerate() {
            let only_head = Some(i) == last;
            let (next, cache) =
                self.layer_forward((i, layer), x, inputs, masks, keep, only_head)?;
            caches.extend(cache);
            x = next;
        }

        // The head, on the head positions only (the last layer's output is there already).
        let _t = crate::profile::scope("fwd/bwd: head");
        let at_head = if last.is_some() {
            x
        } else {
            x.index_select(&inputs.head, 0)?
        };
        let features = match &self.pos_embedding {
            Some(e) => Tensor::cat(
                &[
                    &at_head,
                    &d(e.embeddings()).index_select(&inputs.head_pos_ids, 0)?,
                ],
                1,
            )?,
            None => at_head,
        };
        let head_mask = draw(masks, &features, Rows::Head, Site::Head, c.head.dropout)?;
        let features_dropped = kernels::masked(&features, head_mask.as_ref())?;
        let logits = features_dropped
            .matmul(&d(self.classifier.weight()).t()?)?
            .broadcast_add(&d(bias_of(&self.classifier)?))?;
        Ok(Forward {
            summed,
            emb_mask,
            caches,
            features_dropped,
            head_mask,
            logits,
        })
    }

    /// Every parameter in the order backward hands out its gradient (the head first, the layers top
    /// down, the embeddings last), with its number of values and whether its gradient comes as rows
    /// ([`Grad::Rows`]). What gradient buckets are cut from; `forward_backward_with` follows it
    /// (a test checks).
    pub fn gradient_order(&self) -> Vec<(String, usize, bool)> {
        let mut names: Vec<String> = vec![CLASSIFIER_WEIGHT.into(), CLASSIFIER_BIAS.into()];
        if self.pos_embedding.is_some() {
            names.push(POS_EMBEDDING.into());
        }
        for i in (0..self.encoder.layers.len()).rev() {
            let pre = format!("encoder.layer.{i}");
            for part in [
                "output.LayerNorm.weight",
                "output.LayerNorm.bias",
                "output.dense.bias",
                "output.dense.weight",
                "intermediate.dense.bias",
                "intermediate.dense.weight",
                "attention.output.LayerNorm.weight",
                "attention.output.LayerNorm.bias",
                "attention.output.dense.bias",
                "attention.output.dense.weight",
                "attention.self.query.weight",
                "attention.self.query.bias",
                "attention.self.key.weight",
                "attention.self.key.bias",
                "attention.self.value.weight",
                "attention.self.value.bias",
            ] {
                names.push(format!("{pre}.{part}"));
            }
        }
        names.extend(
            [
                "embeddings.LayerNorm.weight",
                "embeddings.LayerNorm.bias",
                WORD_EMBEDDINGS,
                "embeddings.position_embeddings.weight",
                "embeddings.token_type_embeddings.weight",
            ]
            .map(String::from),
        );
        names
            .into_iter()
            .map(|n| {
                let size = self.params.get(&n).map_or(0, |v| v.elem_count());
                let rows = n == WORD_EMBEDDINGS;
                (n, size, rows)
            })
            .collect()
    }

    /// Logits `[M, labels]` at the head positions in evaluation mode (no dropout), keeping nothing for
    /// a backward pass.
    pub fn eval_logits(&self, inputs: &Inputs) -> Result<Tensor> {
        Ok(self.run_forward(inputs, None, false)?.logits)
    }

    /// Forward and backward on one batch: dropout keyed by `noise` and the batch's sentences when
    /// given (training), none otherwise.
    pub fn forward_backward(
        &self,
        inputs: &Inputs,
        targets: &Targets,
        noise: Option<Noise>,
    ) -> Result<StepOutput> {
        let mut grads = BTreeMap::new();
        let (loss_sum, count) = self.forward_backward_with(inputs, targets, noise, |name, g| {
            grads.insert(name.to_owned(), g);
            Ok(())
        })?;
        let loss_sum = loss_sum.read()?;
        if grads.len() != self.params.len() {
            return Err(ModelError::Config(format!(
                "backward produced {} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        Ok(StepOutput {
            loss_sum,
            count,
            grads,
        })
    }

    /// As [`forward_backward`](Self::forward_backward), handing each gradient to `sink` as soon as it
    /// is computed: the head's first, then layer by layer down to the embeddings. The summed loss stays
    /// on the device until read (no synchronisation per batch).
    pub fn forward_backward_with(
        &self,
        inputs: &Inputs,
        targets: &Targets,
        noise: Option<Noise>,
        mut sink: impl FnMut(&str, Grad) -> Result<()>,
    ) -> Result<(Deferred, usize)> {
        let masks = noise.map(|n| Masker::new(n, inputs)).transpose()?;
        let fwd = self.run_forward(inputs, masks.as_ref(), true)?;
        let (loss_sum, dlogits) = timed("fwd/bwd: loss", || cross_entropy(&fwd.logits, targets))?;
        let dx = self.head_backward(inputs, &fwd, &dlogits, &mut sink)?;
        let mut dx = dx;
        let last = self.encoder.layers.len().saturating_sub(1);
        for (i, (layer, cache)) in self.encoder.layers.iter().zip(fwd.caches).enumerate().rev() {
            dx = self.layer_backward(i, layer, cache, inputs, &dx, i == last, &mut sink)?;
        }
        self.embeddings_backward(inputs, &fwd.summed, fwd.emb_mask.as_ref(), &dx, &mut sink)?;
        Ok((loss_sum, targets.count))
    }

    /// The head's gradients; returns d(encoder output): `[M, H]`, the last layer's rows (`[N, H]`,
    /// zero off the head positions, without layers).
    fn head_backward(
        &self,
        inputs: &Inputs,
        fwd: &Forward,
        dlogits: &Tensor,
        sink: &mut impl FnMut(&str, Grad) -> Result<()>,
    ) -> Result<Tensor> {
        let _t = crate::profile::scope("fwd/bwd: head");
        let h = self.config.bert.hidden_size;
        let w = self.classifier.weight();
        sink(
            CLASSIFIER_WEIGHT,
            Grad::Dense(dlogits.t()?.matmul(&fwd.features_dropped)?),
        )?;
        sink(CLASSIFIER_BIAS, Grad::Dense(column_sum(dlogits)?))?;
        let dfeat = kernels::masked(&dlogits.matmul(&d(w))?, fwd.head_mask.as_ref())?;
        if let Some(e) = &self.pos_embedding {
            let (rows, dim) = e.embeddings().dims2()?;
            let dpos = dfeat.narrow(1, h, dim)?.contiguous()?;
            sink(
                POS_EMBEDDING,
                Grad::Dense(kernels::embedding_grad(&inputs.head_pos_ids, &dpos, rows)?),
            )?;
        }
        let dhead = dfeat.narrow(1, 0, h)?.contiguous()?;
        if !self.encoder.layers.is_empty() {
            // The last layer's output is the head positions' rows.
            return Ok(dhead);
        }
        // Head positions are distinct: summing into zeros places each row.
        kernels::embedding_grad(&inputs.head, &dhead, inputs.rows.tokens())
    }

    /// One layer's backward: its gradients to `sink`, d(layer input) returned.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        i: usize,
        layer: &crate::bert::BertLayer,
        cache: LayerCache,
        inputs: &Inputs,
        dx: &Tensor,
        only_head: bool,
        sink: &mut impl FnMut(&str, Grad) -> Result<()>,
    ) -> Result<Tensor> {
        let pre = format!("encoder.layer.{i}");
        let h = self.config.bert.hidden_size;
        let (dz2, dw, db) = timed("fwd/bwd: layer norm", || {
            ops::layer_norm_bwd(
                &cache.ln2_in,
                &d(&layer.out_norm.weight),
                dx,
                layer.out_norm.eps,
            )
        })?;
        sink(&format!("{pre}.output.LayerNorm.weight"), Grad::Dense(dw))?;
        sink(&format!("{pre}.output.LayerNorm.bias"), Grad::Dense(db))?;
        let (dout, db) = timed("fwd/bwd: bias+dropout+residual", || {
            kernels::dropout_colsum(&dz2, cache.out_mask.as_ref())
        })?;
        sink(&format!("{pre}.output.dense.bias"), Grad::Dense(db))?;
        sink(
            &format!("{pre}.output.dense.weight"),
            Grad::Dense(timed("fwd/bwd: matmul", || dout.t()?.matmul(&cache.gelu))?),
        )?;
        let dgelu = timed("fwd/bwd: matmul", || dout.matmul(&d(layer.output.weight())))?;
        let (dinter, db) = timed("fwd/bwd: bias+GELU", || {
            activation_bwd(layer.activation, &cache.inter, &dgelu)
        })?;
        sink(&format!("{pre}.intermediate.dense.bias"), Grad::Dense(db))?;
        sink(
            &format!("{pre}.intermediate.dense.weight"),
            Grad::Dense(timed("fwd/bwd: matmul", || dinter.t()?.matmul(&cache.h1))?),
        )?;
        let dh1 = timed("fwd/bwd: matmul", || {
            dinter.matmul(&d(layer.intermediate.weight()))? + &dz2
        })?;
        let (dz1, dw, db) = timed("fwd/bwd: layer norm", || {
            ops::layer_norm_bwd(
                &cache.ln1_in,
                &d(&layer.attn_norm.weight),
                &dh1,
                layer.attn_norm.eps,
            )
        })?;
        sink(
            &format!("{pre}.attention.output.LayerNorm.weight"),
            Grad::Dense(dw),
        )?;
        sink(
            &format!("{pre}.attention.output.LayerNorm.bias"),
            Grad::Dense(db),
        )?;
        let (dattended, db) = timed("fwd/bwd: bias+dropout+residual", || {
            kernels::dropout_colsum(&dz1, cache.attn_mask.as_ref())
        })?;
        sink(
            &format!("{pre}.attention.output.dense.bias"),
            Grad::Dense(db),
        )?;
        sink(
            &format!("{pre}.attention.output.dense.weight"),
            Grad::Dense(timed("fwd/bwd: matmul", || {
                dattended.t()?.matmul(&cache.context)
            })?),
        )?;
        let dcontext = timed("fwd/bwd: matmul", || {
            dattended.matmul(&d(layer.attn_out.weight()))
        })?;
        // The last layer ran on the head positions after attention: back to all tokens.
        let n = inputs.rows.tokens();
        let (dcontext, dz1) = if only_head {
            let _t = crate::profile::scope("fwd/bwd: head");
            (
                kernels::embedding_grad(&inputs.head, &dcontext, n)?,
                kernels::embedding_grad(&inputs.head, &dz1, n)?,
            )
        } else {
            (dcontext, dz1)
        };
        let shape = Heads {
            heads: layer.heads,
            head_dim: layer.head_dim,
        };
        let dqkv = timed("fwd/bwd: attention", || {
            attention::backward(&dcontext, &cache.qkv, &inputs.rows, shape, &cache.attention)
        })?;
        let db_qkv = timed("fwd/bwd: bias", || column_sum(&dqkv))?;
        let dw_qkv = timed("fwd/bwd: matmul", || dqkv.t()?.matmul(&cache.x))?;
        for (j, name) in ["query", "key", "value"].iter().enumerate() {
            sink(
                &format!("{pre}.attention.self.{name}.weight"),
                Grad::Dense(dw_qkv.narrow(0, j * h, h)?),
            )?;
            sink(
                &format!("{pre}.attention.self.{name}.bias"),
                Grad::Dense(db_qkv.narrow(0, j * h, h)?),
            )?;
        }
        Ok(timed("fwd/bwd: matmul", || {
            dqkv.matmul(&cache.w_qkv)? + dz1
        })?)
    }

    /// The embeddings' gradients from d(embedding output).
    fn embeddings_backward(
        &self,
        inputs: &Inputs,
        summed: &Tensor,
        emb_mask: Option<&Mask>,
        dx: &Tensor,
        sink: &mut impl FnMut(&str, Grad) -> Result<()>,
    ) -> Result<()> {
        let emb = &self.encoder.embeddings;
        let dnormed = kernels::masked(dx, emb_mask)?;
        let (dsummed, dw, db) = timed("fwd/bwd: layer norm", || {
            ops::layer_norm_bwd(summed, &d(&emb.norm.weight), &dnormed, emb.norm.eps)
        })?;
        sink("embeddings.LayerNorm.weight", Grad::Dense(dw))?;
        sink("embeddings.LayerNorm.bias", Grad::Dense(db))?;
        let _t = crate::profile::scope("fwd/bwd: embedding gradients");
        let dsummed = dsummed.contiguous()?;
        let (vocab, h) = emb.word.embeddings().dims2()?;
        let (ids, values) = kernels::embedding_grad_rows(&inputs.host.input_ids, &dsummed)?;
        sink(
            WORD_EMBEDDINGS,
            Grad::Rows {
                ids,
                values,
                rows: vocab,
            },
        )?;
        let (max_pos, _) = emb.position.embeddings().dims2()?;
        sink(
            "embeddings.position_embeddings.weight",
            Grad::Dense(kernels::embedding_grad(
                &inputs.positions,
                &dsummed,
                max_pos,
            )?),
        )?;
        let (types, _) = emb.token_type.embeddings().dims2()?;
        let dtype0 = column_sum(&dsummed)?.unsqueeze(0)?;
        let dtypes = if types > 1 {
            let rest = Tensor::zeros((types - 1, h), dtype0.dtype(), dtype0.device())?;
            Tensor::cat(&[&dtype0, &rest], 0)?
        } else {
            dtype0
        };
        sink(
            "embeddings.token_type_embeddings.weight",
            Grad::Dense(dtypes),
        )
    }
}

fn bias_of(l: &candle_nn::Linear) -> Result<&Tensor> {
    l.bias()
        .ok_or_else(|| ModelError::Config("a linear layer without bias".into()))
}

/// (u, act(u)) for u = y + bias.
fn activation_fwd(a: Activation, y: &Tensor, bias: &Tensor) -> Result<(Tensor, Tensor)> {
    match a {
        Activation::GeluErf => kernels::bias_gelu(y, bias),
        Activation::GeluTanh => {
            let u = y.broadcast_add(bias)?;
            let g = u.gelu()?;
            Ok((u, g))
        }
        Activation::Relu => {
            let u = y.broadcast_add(bias)?;
            let g = u.relu()?;
            Ok((u, g))
        }
    }
}

/// (du, dbias) from d(act(u)).
fn activation_bwd(a: Activation, u: &Tensor, dg: &Tensor) -> Result<(Tensor, Tensor)> {
    match a {
        Activation::GeluErf => kernels::gelu_colsum(u, dg),
        Activation::GeluTanh => {
            let g = gelu_tanh_bwd(u, dg)?;
            let db = column_sum(&g)?;
            Ok((g, db))
        }
        Activation::Relu => {
            let g = (dg * u.gt(0.0)?.to_dtype(dg.dtype())?)?;
            let db = column_sum(&g)?;
            Ok((g, db))
        }
    }
}

/// Derivative of the tanh-approximated GELU.
fn gelu_tanh_bwd(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * c)?;
    let th = inner.tanh()?;
    let dinner = ((x.sqr()? * (3.0 * 0.044715))? + 1.0)? * c;
    let sech2 = (th.sqr()?.neg()? + 1.0)?;
    let grad = (((th + 1.0)? * 0.5)? + ((x * 0.5)? * (sech2 * dinner?)?)?)?;
    Ok((dy * grad)?)
}

/// Summed cross-entropy of logits `[M, C]` against `targets`, and d(loss)/d(logits), computed on the
/// host in f32 (a few thousand rows of a few dozen labels) and handed back in the logits' dtype — or
/// on the GPU by the fused kernel, the loss left there.
pub(crate) fn cross_entropy(logits: &Tensor, targets: &Targets) -> Result<(Deferred, Tensor)> {
    let (m, classes) = logits.dims2()?;
    let dev: Device = logits.device().clone();
    if m == 0 {
        return Ok((
            Deferred::Host(0.0),
            Tensor::zeros((0, classes), logits.dtype(), &dev)?,
        ));
    }
    if crate::device_ops::applies(logits) {
        return crate::device_ops::cross_entropy(logits, &targets.labels);
    }
    let rows = logits
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    let labels = targets.labels.to_device(&Device::Cpu)?.to_vec1::<u32>()?;
    let mut grad = vec![0f32; m * classes];
    let mut loss = 0f64;
    for ((row, &label), out) in rows.iter().zip(&labels).zip(grad.chunks_mut(classes)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&z| ((z - max) as f64).exp()).sum();
        loss += sum.ln() - (row[label as usize] - max) as f64;
        for (o, &z) in out.iter_mut().zip(row) {
            *o = (((z - max) as f64).exp() / sum) as f32;
        }
        out[label as usize] -= 1.0;
    }
    Ok((
        Deferred::Host(loss),
        Tensor::from_vec(grad, (m, classes), &dev)?.to_dtype(logits.dtype())?,
    ))
}
