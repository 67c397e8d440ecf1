//! The training step written out: forward keeping what backward needs, then backward layer by layer,
//! without candle's autograd.
//!
//! candle's backward allocates a zero tensor and adds into it for every gradient of every graph node;
//! on a MiniLM step that made backward three times slower than forward. Written by hand, backward costs
//! what the math costs (about two forwards), and gradients come out one layer at a time, from the head
//! down — a caller can start reducing a layer's gradients while the layers below are still being
//! differentiated. `tests/parity.rs` checks every gradient against PyTorch, and against candle's own
//! autograd on the same model.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::kernels::{self, Mask};
use crate::layers::DropoutRng;
use crate::model::{
    BertNerPos, CLASSIFIER_BIAS, CLASSIFIER_WEIGHT, Inputs, POS_EMBEDDING, Targets,
};
use crate::ops::{self, column_sum};

/// The result of a training step on one batch.
pub struct StepOutput {
    /// Cross-entropy summed over the labelled positions.
    pub loss_sum: f64,
    /// Number of labelled positions.
    pub count: usize,
    /// The gradient of `loss_sum` for every parameter, by name (the parameters' order).
    pub grads: BTreeMap<String, Tensor>,
}

fn d(x: &Tensor) -> Tensor {
    x.detach()
}

/// y = x·wᵀ + b for x (N, in).
fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&d(w).t()?)?.broadcast_add(&d(b))?)
}

/// (dx, dw, db) of y = x·wᵀ + b.
fn linear_bwd(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let dx = dy.matmul(&d(w))?;
    let dw = dy.t()?.matmul(x)?;
    Ok((dx, dw, column_sum(dy)?))
}

fn draw(rng: &mut Option<&mut DropoutRng>, like: &Tensor, p: f64) -> Result<Option<Mask>> {
    match rng {
        Some(rng) if p > 0.0 => Ok(Some(rng.keep_mask(like, p)?)),
        _ => Ok(None),
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
    ids: Tensor,
    pos_ids: Tensor,
}

/// What a layer's backward pass needs from its forward pass.
struct LayerCache {
    x: Tensor,
    w_qkv: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    probs: Tensor,
    probs_mask: Option<Mask>,
    probs_dropped: Tensor,
    context: Tensor,
    attn_mask: Option<Mask>,
    ln1_in: Tensor,
    h1: Tensor,
    inter: Tensor,
    gelu: Tensor,
    out_mask: Option<Mask>,
    ln2_in: Tensor,
}

impl BertNerPos {
    /// Forward and backward on one batch: dropout from `rng` when given (training), none otherwise.
    pub fn forward_backward(
        &self,
        inputs: &Inputs,
        targets: &Targets,
        rng: Option<&mut DropoutRng>,
    ) -> Result<StepOutput> {
        let mut grads = BTreeMap::new();
        let (loss_sum, count) = self.forward_backward_with(inputs, targets, rng, |name, g| {
            grads.insert(name.to_owned(), g);
            Ok(())
        })?;
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
    /// is computed: the head's first, then layer by layer down to the embeddings.
    /// The forward pass: logits, and (with `keep`) everything backward needs.
    fn run_forward(
        &self,
        inputs: &Inputs,
        mut rng: Option<&mut DropoutRng>,
        keep: bool,
    ) -> Result<Forward> {
        let c = &self.config;
        let (b, t) = inputs.input_ids.dims2()?;
        let n = b * t;
        let h = c.bert.hidden_size;
        let emb = &self.encoder.embeddings;

        // ---- forward: embeddings
        let ids = inputs.input_ids.flatten_all()?;
        let word = d(emb.word.embeddings()).index_select(&ids, 0)?;
        let pos_rows = d(emb.position.embeddings()).narrow(0, 0, t)?;
        let type_row = d(emb.token_type.embeddings()).narrow(0, 0, 1)?;
        let summed = word
            .reshape((b, t, h))?
            .broadcast_add(&pos_rows)?
            .broadcast_add(&type_row)?
            .reshape((n, h))?;
        let normed = ops::layer_norm_fwd(
            &summed,
            &d(&emb.norm.weight),
            &d(&emb.norm.bias),
            emb.norm.eps,
        )?;
        let emb_mask = draw(&mut rng, &normed, emb.dropout)?;
        let mut x = kernels::masked(&normed, emb_mask.as_ref())?;

        let mask = inputs.attention_mask.to_dtype(DType::F32)?;
        let bias = ((mask.ones_like()? - &mask)? * f32::MIN as f64)?;

        // ---- forward: layers
        let mut caches = Vec::with_capacity(self.encoder.layers.len());
        for layer in &self.encoder.layers {
            let (nh, dh) = (layer.heads, layer.head_dim);
            // One projection for query, key and value: a (N, 3H) product instead of three (N, H) ones.
            let w_qkv = Tensor::cat(
                &[
                    d(layer.query.weight()),
                    d(layer.key.weight()),
                    d(layer.value.weight()),
                ],
                0,
            )?;
            let b_qkv = Tensor::cat(
                &[
                    d(bias_of(&layer.query)?),
                    d(bias_of(&layer.key)?),
                    d(bias_of(&layer.value)?),
                ],
                0,
            )?;
            let (q, k, v) = kernels::qkv_heads(&x.matmul(&w_qkv.t()?)?, &b_qkv, b, t, nh)?;
            let scale = 1.0 / (dh as f64).sqrt();
            let scores = q.matmul(&k.t()?)?;
            let probs_mask = draw(&mut rng, &scores, layer.attention_dropout)?;
            let (probs, probs_dropped) =
                kernels::softmax_dropout(&scores, &bias, scale, probs_mask.as_ref())?;
            let context = probs_dropped
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((n, h))?;
            let attended = context.matmul(&d(layer.attn_out.weight()).t()?)?;
            let attn_mask = draw(&mut rng, &attended, layer.hidden_dropout)?;
            let ln1_in = kernels::bias_dropout_residual(
                &attended,
                &d(bias_of(&layer.attn_out)?),
                attn_mask.as_ref(),
                &x,
            )?;
            let h1 = ops::layer_norm_fwd(
                &ln1_in,
                &d(&layer.attn_norm.weight),
                &d(&layer.attn_norm.bias),
                layer.attn_norm.eps,
            )?;
            let raw = h1.matmul(&d(layer.intermediate.weight()).t()?)?;
            let (inter, gelu) = match layer.activation {
                crate::config::Activation::GeluErf => {
                    kernels::bias_gelu(&raw, &d(bias_of(&layer.intermediate)?))?
                }
                crate::config::Activation::GeluTanh => {
                    let u = raw.broadcast_add(&d(bias_of(&layer.intermediate)?))?;
                    let g = u.gelu()?;
                    (u, g)
                }
                crate::config::Activation::Relu => {
                    let u = raw.broadcast_add(&d(bias_of(&layer.intermediate)?))?;
                    let g = u.relu()?;
                    (u, g)
                }
            };
            let out = gelu.matmul(&d(layer.output.weight()).t()?)?;
            let out_mask = draw(&mut rng, &out, layer.hidden_dropout)?;
            let ln2_in = kernels::bias_dropout_residual(
                &out,
                &d(bias_of(&layer.output)?),
                out_mask.as_ref(),
                &h1,
            )?;
            let next = ops::layer_norm_fwd(
                &ln2_in,
                &d(&layer.out_norm.weight),
                &d(&layer.out_norm.bias),
                layer.out_norm.eps,
            )?;
            if keep {
                caches.push(LayerCache {
                    x,
                    w_qkv,
                    q,
                    k,
                    v,
                    probs,
                    probs_mask,
                    probs_dropped,
                    context,
                    attn_mask,
                    ln1_in,
                    h1,
                    inter,
                    gelu,
                    out_mask,
                    ln2_in,
                });
            }
            x = next;
        }

        // ---- forward: head
        let pos_ids = inputs.pos_ids.flatten_all()?;
        let features = match &self.pos_embedding {
            Some(e) => Tensor::cat(&[&x, &d(e.embeddings()).index_select(&pos_ids, 0)?], 1)?,
            None => x.clone(),
        };
        let head_mask = draw(&mut rng, &features, c.head.dropout)?;
        let features_dropped = kernels::masked(&features, head_mask.as_ref())?;
        let logits = linear(
            &features_dropped,
            self.classifier.weight(),
            bias_of(&self.classifier)?,
        )?;

        Ok(Forward {
            summed,
            emb_mask,
            caches,
            features_dropped,
            head_mask,
            logits,
            ids,
            pos_ids,
        })
    }

    /// Logits (B·T, labels) in evaluation mode (no dropout), keeping nothing for a backward pass.
    pub fn eval_logits(&self, inputs: &Inputs) -> Result<Tensor> {
        Ok(self.run_forward(inputs, None, false)?.logits)
    }

    pub fn forward_backward_with(
        &self,
        inputs: &Inputs,
        targets: &Targets,
        mut rng: Option<&mut DropoutRng>,
        mut sink: impl FnMut(&str, Tensor) -> Result<()>,
    ) -> Result<(f64, usize)> {
        let (b, t) = inputs.input_ids.dims2()?;
        let h = self.config.bert.hidden_size;
        let dev = inputs.input_ids.device().clone();
        let emb = &self.encoder.embeddings;
        let Forward {
            summed,
            emb_mask,
            caches,
            features_dropped,
            head_mask,
            logits,
            ids,
            pos_ids,
        } = self.run_forward(inputs, rng.take(), true)?;

        // ---- loss and its gradient (on the host: a few thousand rows of a few dozen labels)
        let (loss_sum, dlogits) = cross_entropy(&logits, targets, &dev)?;

        // ---- backward: head
        let (dfeat, dwc, dbc) = linear_bwd(&features_dropped, self.classifier.weight(), &dlogits)?;
        sink(CLASSIFIER_WEIGHT, dwc)?;
        sink(CLASSIFIER_BIAS, dbc)?;
        let dfeat = kernels::masked(&dfeat, head_mask.as_ref())?;
        let mut dx = dfeat.narrow(1, 0, h)?.contiguous()?;
        if let Some(e) = &self.pos_embedding {
            let (rows, dim) = e.embeddings().dims2()?;
            let dpos = dfeat.narrow(1, h, dim)?.contiguous()?;
            sink(
                POS_EMBEDDING,
                kernels::embedding_grad(&pos_ids, &dpos, rows)?,
            )?;
        }

        // ---- backward: layers, top down
        for (i, (layer, cache)) in self.encoder.layers.iter().zip(caches).enumerate().rev() {
            let pre = format!("encoder.layer.{i}");
            let (nh, dh) = (layer.heads, layer.head_dim);
            let (dz2, dw, db) = ops::layer_norm_bwd(
                &cache.ln2_in,
                &d(&layer.out_norm.weight),
                &dx,
                layer.out_norm.eps,
            )?;
            sink(&format!("{pre}.output.LayerNorm.weight"), dw)?;
            sink(&format!("{pre}.output.LayerNorm.bias"), db)?;
            let (dout, db) = kernels::dropout_colsum(&dz2, cache.out_mask.as_ref())?;
            sink(&format!("{pre}.output.dense.bias"), db)?;
            sink(
                &format!("{pre}.output.dense.weight"),
                dout.t()?.matmul(&cache.gelu)?,
            )?;
            let dgelu = dout.matmul(&d(layer.output.weight()))?;
            let (dinter, db) = match layer.activation {
                crate::config::Activation::GeluErf => kernels::gelu_colsum(&cache.inter, &dgelu)?,
                crate::config::Activation::GeluTanh => {
                    let g = gelu_tanh_bwd(&cache.inter, &dgelu)?;
                    let db = column_sum(&g)?;
                    (g, db)
                }
                crate::config::Activation::Relu => {
                    let g = (dgelu * cache.inter.gt(0.0)?.to_dtype(DType::F32)?)?;
                    let db = column_sum(&g)?;
                    (g, db)
                }
            };
            sink(&format!("{pre}.intermediate.dense.bias"), db)?;
            sink(
                &format!("{pre}.intermediate.dense.weight"),
                dinter.t()?.matmul(&cache.h1)?,
            )?;
            let dh1 = (dinter.matmul(&d(layer.intermediate.weight()))? + dz2)?;
            let (dz1, dw, db) = ops::layer_norm_bwd(
                &cache.ln1_in,
                &d(&layer.attn_norm.weight),
                &dh1,
                layer.attn_norm.eps,
            )?;
            sink(&format!("{pre}.attention.output.LayerNorm.weight"), dw)?;
            sink(&format!("{pre}.attention.output.LayerNorm.bias"), db)?;
            let (dattended, db) = kernels::dropout_colsum(&dz1, cache.attn_mask.as_ref())?;
            sink(&format!("{pre}.attention.output.dense.bias"), db)?;
            sink(
                &format!("{pre}.attention.output.dense.weight"),
                dattended.t()?.matmul(&cache.context)?,
            )?;
            let dcontext = dattended.matmul(&d(layer.attn_out.weight()))?;
            let dcontext = dcontext
                .reshape((b, t, nh, dh))?
                .transpose(1, 2)?
                .contiguous()?;
            let dprobs_dropped = dcontext.matmul(&cache.v.t()?)?;
            let dv = cache.probs_dropped.t()?.matmul(&dcontext)?;
            let dscores = kernels::softmax_dropout_bwd(
                &cache.probs,
                cache.probs_mask.as_ref(),
                &dprobs_dropped,
                1.0 / (dh as f64).sqrt(),
            )?;
            let dq = dscores.matmul(&cache.k)?;
            let dk = dscores.t()?.matmul(&cache.q)?;
            let (dqkv, db_qkv) = kernels::qkv_merge(&dq, &dk, &dv)?;
            let dw_qkv = dqkv.t()?.matmul(&cache.x)?;
            for (j, name) in ["query", "key", "value"].iter().enumerate() {
                sink(
                    &format!("{pre}.attention.self.{name}.weight"),
                    dw_qkv.narrow(0, j * h, h)?,
                )?;
                sink(
                    &format!("{pre}.attention.self.{name}.bias"),
                    db_qkv.narrow(0, j * h, h)?,
                )?;
            }
            dx = (dqkv.matmul(&cache.w_qkv)? + dz1)?;
        }

        // ---- backward: embeddings
        let dnormed = kernels::masked(&dx, emb_mask.as_ref())?;
        let (dsummed, dw, db) =
            ops::layer_norm_bwd(&summed, &d(&emb.norm.weight), &dnormed, emb.norm.eps)?;
        sink("embeddings.LayerNorm.weight", dw)?;
        sink("embeddings.LayerNorm.bias", db)?;
        let dsummed = dsummed.contiguous()?;
        let (vocab, _) = emb.word.embeddings().dims2()?;
        sink(
            "embeddings.word_embeddings.weight",
            kernels::embedding_grad(&ids, &dsummed, vocab)?,
        )?;
        let (max_pos, _) = emb.position.embeddings().dims2()?;
        let dpos = dsummed
            .reshape((b, t, h))?
            .to_dtype(DType::F32)?
            .sum(0)?
            .to_dtype(dsummed.dtype())?;
        let dpos = if max_pos > t {
            Tensor::cat(
                &[&dpos, &Tensor::zeros((max_pos - t, h), dpos.dtype(), &dev)?],
                0,
            )?
        } else {
            dpos
        };
        sink("embeddings.position_embeddings.weight", dpos)?;
        let (types, _) = emb.token_type.embeddings().dims2()?;
        let dtype0 = column_sum(&dsummed)?.unsqueeze(0)?;
        let dtypes = if types > 1 {
            Tensor::cat(
                &[
                    &dtype0,
                    &Tensor::zeros((types - 1, h), dtype0.dtype(), &dev)?,
                ],
                0,
            )?
        } else {
            dtype0
        };
        sink("embeddings.token_type_embeddings.weight", dtypes)?;
        Ok((loss_sum, targets.count))
    }
}

fn bias_of(l: &candle_nn::Linear) -> Result<&Tensor> {
    l.bias()
        .ok_or_else(|| ModelError::Config("a linear layer without bias".into()))
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

/// Summed cross-entropy over the labelled rows of logits (N, C), and d(loss)/d(logits).
fn cross_entropy(logits: &Tensor, targets: &Targets, dev: &Device) -> Result<(f64, Tensor)> {
    let (n, classes) = logits.dims2()?;
    let mut grad = vec![0f32; n * classes];
    if targets.count == 0 {
        return Ok((
            0.0,
            Tensor::from_vec(grad, (n, classes), dev)?.to_dtype(logits.dtype())?,
        ));
    }
    let rows = logits
        .index_select(&targets.positions, 0)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    let positions = targets.positions.to_vec1::<u32>()?;
    let labels = targets.labels.to_vec1::<u32>()?;
    let mut loss = 0f64;
    for ((row, &p), &label) in rows.iter().zip(&positions).zip(&labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&z| ((z - max) as f64).exp()).sum();
        loss += sum.ln() - (row[label as usize] - max) as f64;
        let out = &mut grad[p as usize * classes..(p as usize + 1) * classes];
        for (o, &z) in out.iter_mut().zip(row) {
            *o = (((z - max) as f64).exp() / sum) as f32;
        }
        out[label as usize] -= 1.0;
    }
    // The loss is computed in f32 whatever the compute dtype; its gradient goes back in that dtype.
    Ok((
        loss,
        Tensor::from_vec(grad, (n, classes), dev)?.to_dtype(logits.dtype())?,
    ))
}
