//! `BertNerPos`: BERT encoder → contextual embeddings; POS ids → dense embedding; concatenate →
//! dropout → linear to the NER labels. The layers ([`crate::layers`]) own their parameters and maths;
//! the model runs them on a packed batch — forward, and backward from the head down, handing out each
//! gradient as soon as it is computed (a caller can start reducing a layer's gradients while the
//! layers below are still being differentiated). `tests/parity.rs` checks logits and every gradient
//! against PyTorch, and against an autograd oracle kept under `tests/`.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use nerpos_kernels::dropout::{Masker, Noise};
use nerpos_kernels::ops::attention::{AttentionTables, Heads};
use nerpos_kernels::ops::cross_entropy::CrossEntropy;
use nerpos_kernels::ops::embedding::EmbeddingGrad;
use nerpos_kernels::{Deferred, Kernels};

use crate::batch::{Inputs, Targets};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::decoder::Decoding;
use crate::layers::{BertLayer, Embeddings, Head, Pass, Sink};
use crate::params::Params;
use crate::profile::{scope, timed};
use nerpos_dist::Grad;

pub use crate::layers::embeddings::WORD_EMBEDDINGS;
pub use crate::layers::head::{
    CLASSIFIER_BIAS, CLASSIFIER_WEIGHT, HeadInit, HeadOutput, POS_EMBEDDING, POS_EMBEDDING_TAGGED,
    POS_TAGGER_BIAS, POS_TAGGER_WEIGHT, PosSource,
};

pub struct BertNerPos {
    pub config: ModelConfig,
    pub params: Params,
    /// Which implementation of the fused ops runs (the `gpu_kernels` setting on a GPU).
    pub kernels: Kernels,
    embeddings: Embeddings,
    layers: Vec<BertLayer>,
    head: Head,
    /// Every parameter in the order backward hands out its gradient.
    order: Vec<String>,
    /// The encoder's products run in bf16 on the CPU ([`with_bf16_products`](Self::with_bf16_products)):
    /// inference only.
    bf16_products: bool,
}

/// The result of a training step on one batch.
pub struct StepOutput {
    /// Cross-entropy summed over the labelled positions.
    pub loss_sum: f64,
    /// Number of labelled positions.
    pub count: usize,
    /// The gradient of `loss_sum` for every parameter, by name; the word embeddings' as the rows the
    /// batch used.
    pub grads: BTreeMap<String, Grad>,
}

/// The forward pass's results and what backward needs.
struct Forward {
    out: HeadOutput,
    caches: Option<Caches>,
}

struct Caches {
    embeddings: crate::layers::embeddings::EmbeddingsCache,
    layers: Vec<crate::layers::bert_layer::LayerCache>,
    head: crate::layers::head::HeadCache,
}

impl BertNerPos {
    /// The model with every parameter zero (to be loaded or initialised).
    pub fn new(config: ModelConfig, device: &Device) -> Result<BertNerPos> {
        BertNerPos::with_dtype(config, device, DType::F32)
    }

    /// The model with every parameter zero, stored in `dtype`: a bf16 compute copy for mixed
    /// precision, refreshed from the f32 master with [`copy_from`](Self::copy_from).
    pub fn with_dtype(config: ModelConfig, device: &Device, dtype: DType) -> Result<BertNerPos> {
        let mut params = Params::with_dtype(device, dtype);
        let embeddings = Embeddings::new(&mut params, &config.bert)?;
        let layers = (0..config.bert.num_hidden_layers)
            .map(|i| BertLayer::new(&mut params, &config.bert, i))
            .collect::<Result<Vec<_>>>()?;
        let head = Head::new(&mut params, &config)?;
        let mut order: Vec<String> = head.params().iter().map(|p| p.name.clone()).collect();
        for l in layers.iter().rev() {
            order.extend(l.params().iter().map(|p| p.name.clone()));
        }
        order.extend(embeddings.params().iter().map(|p| p.name.clone()));
        Ok(BertNerPos {
            config,
            params,
            kernels: Kernels::default(),
            embeddings,
            layers,
            head,
            order,
            bf16_products: false,
        })
    }

    /// The same model with the encoder's linear layers multiplying in bf16 on the CPU (inputs rounded
    /// to bf16, sums in f32; AVX512-BF16: `PackedBf16::supported`), everything else in f32 — what
    /// PyTorch's CPU autocast does. The weights are rounded as they are now: for inference, and the
    /// model refuses to train afterwards.
    pub fn with_bf16_products(mut self) -> Result<BertNerPos> {
        for layer in &mut self.layers {
            layer.pack_bf16()?;
        }
        self.bf16_products = true;
        Ok(self)
    }

    /// The same model running the fused ops as `kernels` says.
    pub fn with_kernels(mut self, kernels: Kernels) -> BertNerPos {
        self.kernels = kernels;
        self
    }

    pub fn device(&self) -> &Device {
        self.params.device()
    }

    pub fn dtype(&self) -> DType {
        self.params.dtype()
    }

    /// Sets every parameter to `master`'s value, cast to this model's dtype.
    pub fn copy_from(&self, master: &BertNerPos) -> Result<()> {
        for (name, var) in self.params.iter() {
            let Some(src) = master.params.get(name) else {
                return Err(ModelError::Internal(format!(
                    "copy_from: the source model has no {name}"
                )));
            };
            var.set(&src.as_tensor().to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Draws the new head (POS embedding, classifier) from `seed` as `init` says.
    pub fn init_head(&self, init: HeadInit, seed: u64) -> Result<()> {
        let range = self.config.bert.initializer_range;
        self.head.init(&self.params, init, seed, range)
    }

    /// Every parameter in the order backward hands out its gradient (the head first, the layers top
    /// down, the embeddings last), with its number of values and whether its gradient comes as rows
    /// ([`Grad::Rows`]): what gradient buckets are cut from. Backward checks it follows it.
    pub fn gradient_order(&self) -> Vec<(String, usize, bool)> {
        self.order
            .iter()
            .map(|n| {
                let size = self.params.get(n).map_or(0, |v| v.elem_count());
                (n.clone(), size, n == WORD_EMBEDDINGS)
            })
            .collect()
    }

    /// What decodes rows of logits into labels on the host (the head's kind's: softmax, CRF).
    pub fn decoding(&self) -> Result<Box<dyn Decoding>> {
        self.head.decoder.decoding()
    }

    /// Names of the head's parameters.
    pub(crate) fn head_keys(&self) -> Vec<&str> {
        self.head.params().iter().map(|p| p.name.as_str()).collect()
    }

    /// Logits `[M, labels]` at the head positions in evaluation mode (no dropout), keeping nothing for
    /// a backward pass.
    pub fn eval_logits(&self, inputs: &Inputs) -> Result<Tensor> {
        Ok(self.eval(inputs, PosSource::Given)?.logits)
    }

    /// The head's outputs in evaluation mode, the POS embedding looking up the POS ids `source` says.
    pub fn eval(&self, inputs: &Inputs, source: PosSource) -> Result<HeadOutput> {
        Ok(self
            .run_forward(&self.pass(inputs, None, false)?, source)?
            .out)
    }

    /// Whether the model has a POS tagger (and so can tag input without POS tags).
    pub fn has_pos_tagger(&self) -> bool {
        self.head.pos_weight().is_some()
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
        Ok(StepOutput {
            loss_sum: loss_sum.read()?,
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
        if self.bf16_products {
            return Err(ModelError::Internal(
                "a model whose products were packed in bf16 for inference cannot be trained".into(),
            ));
        }
        let masks = noise.map(|n| inputs.masks(n, self.kernels)).transpose()?;
        let pass = self.pass(inputs, masks.as_ref(), true)?;
        let fwd = self.run_forward(&pass, PosSource::Given)?;
        let caches = fwd
            .caches
            .ok_or_else(|| ModelError::Internal("a training pass kept no caches".into()))?;
        let mut sink = Sink::new(&self.order, &mut sink);
        let logits = &fwd.out.logits;
        let (mut loss_sum, dlogits) =
            self.head
                .decoder
                .loss(self.kernels, logits, inputs, targets, &mut sink)?;
        let dpos = match (&fwd.out.pos_logits, self.head.pos_weight()) {
            (Some(z), Some(w)) => {
                let (loss, d) = self.pos_loss(z, targets, w)?;
                loss_sum = loss_sum.add(&loss)?;
                Some(d)
            }
            _ => None,
        };
        let mut dx = self
            .head
            .backward(&pass, caches.head, &dlogits, dpos.as_ref(), &mut sink)?;
        if self.layers.is_empty() {
            // Head positions are distinct: summing into zeros places each row.
            let n = inputs.rows.tokens();
            dx = EmbeddingGrad::dense(self.kernels, &inputs.host.head, &dx, n)?;
        }
        for (layer, cache) in self.layers.iter().zip(caches.layers).rev() {
            dx = layer.backward(&pass, cache, &dx, &mut sink)?;
        }
        self.embeddings
            .backward(&pass, caches.embeddings, &dx, &mut sink)?;
        sink.finish()?;
        Ok((loss_sum, targets.count))
    }

    /// The POS tagger's cross-entropy against the corpus's POS ids, times `weight`, and its gradient.
    fn pos_loss(&self, z: &Tensor, targets: &Targets, weight: f64) -> Result<(Deferred, Tensor)> {
        let Some(ids) = &targets.pos else {
            return Err(ModelError::Internal(
                "a model with a POS tagger got a batch without POS targets".into(),
            ));
        };
        let (loss, d) = timed("fwd/bwd: loss", || {
            CrossEntropy::forward_backward(self.kernels, z, ids)
        })?;
        Ok((loss.scale(weight)?, d.affine(weight, 0.0)?))
    }

    fn pass<'a>(
        &self,
        inputs: &'a Inputs,
        masks: Option<&'a Masker>,
        keep: bool,
    ) -> Result<Pass<'a>> {
        let bert = &self.config.bert;
        let shape = Heads {
            heads: bert.num_attention_heads,
            head_dim: bert.hidden_size / bert.num_attention_heads,
        };
        let device = inputs.input_ids.device();
        Ok(Pass {
            kernels: self.kernels,
            inputs,
            masks,
            keep,
            tables: AttentionTables::for_batch(self.kernels, &inputs.rows, shape, device)?,
        })
    }

    /// The forward pass: logits at the head positions and (when the pass keeps them) the caches.
    fn run_forward(&self, pass: &Pass, source: PosSource) -> Result<Forward> {
        let (mut x, embeddings) = self.embeddings.forward(pass)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        let last = self.layers.len().checked_sub(1);
        // The POS tagger's input when it reads a layer below the last: that layer's output at the head
        // positions (the last layer's is `at_head` itself).
        let probe = self
            .head
            .tagger_layer()
            .map(|l| l - 1)
            .filter(|&l| Some(l) != last);
        let mut probe_in = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let (next, cache) = layer.forward(pass, x, Some(i) == last)?;
            layers.extend(cache);
            x = next;
            if Some(i) == probe {
                probe_in = Some(x.index_select(&pass.inputs.head, 0)?);
            }
        }
        // The last layer's output is at the head positions already.
        let at_head = if last.is_some() {
            x
        } else {
            let _t = scope("fwd/bwd: head");
            x.index_select(&pass.inputs.head, 0)?
        };
        let (out, head) = self.head.forward(pass, at_head, probe_in, source)?;
        let caches = pass.keep.then_some(Caches {
            embeddings,
            layers,
            head,
        });
        Ok(Forward { out, caches })
    }
}
