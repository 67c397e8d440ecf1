//! The tagging head: the encoder's output at the head positions, concatenated with the POS embedding
//! of the word there, dropout, and a linear layer to the labels. With a POS tagger, a second linear
//! layer on the encoder's output predicts each word's POS tag: trained from the corpus's tags (which
//! feed the POS embedding in training), it supplies the POS ids when the input has none — in the same
//! pass, since the POS embedding joins after the encoder.

use candle_core::{DType, Tensor};
use nerpos_kernels::Mask;
use nerpos_kernels::dropout::{Rows, Site};
use nerpos_kernels::ops::column_sum::ColumnSum;
use nerpos_kernels::ops::embedding::EmbeddingGrad;
use nerpos_kernels::ops::residual::masked;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};

use super::decoder::Decoder;
use super::{Linear, Pass, Sink};
use crate::config::{HeadKind, ModelConfig};
use crate::error::{ModelError, Result};
use crate::params::{Param, Params, Role};
use crate::profile::scope;

/// Names of the head's parameters.
pub const POS_EMBEDDING: &str = "pos_embedding.weight";
/// The embedding of the POS tags the tagger predicts, apart from the corpus's (`tagger_pos_share`).
pub const POS_EMBEDDING_TAGGED: &str = "pos_embedding_tagged.weight";
pub const CLASSIFIER_WEIGHT: &str = "classifier.weight";
pub const CLASSIFIER_BIAS: &str = "classifier.bias";
pub const POS_TAGGER_WEIGHT: &str = "pos_tagger.weight";
pub const POS_TAGGER_BIAS: &str = "pos_tagger.bias";

/// Where the POS ids the POS embedding looks up come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PosSource {
    /// The batch's (the corpus's tags; training always).
    #[default]
    Given,
    /// The model's POS tagger's most likely tag at each head position (input without POS tags).
    Predicted,
}

pub struct Head {
    /// The POS embedding (absent in the no-POS model).
    pub pos: Option<Param>,
    /// The embedding of the tagger's POS when they have their own (`tagger_pos_share` > 0).
    pub pos_tagged: Option<Param>,
    pub classifier: Linear,
    /// What turns the logits into labels (its kind's: softmax, CRF).
    pub decoder: Box<dyn Decoder>,
    /// The POS tagger (hidden → POS ids) and its loss weight.
    pub tagger: Option<(Linear, f64)>,
    /// Training feeds the POS embedding the tagger's tags.
    pos_from_tagger: bool,
    /// The encoder layer (1-based) the tagger reads; `None`: the last.
    tagger_layer: Option<usize>,
    /// The share of training sentences fed the tagger's POS distribution.
    tagger_share: f64,
    hidden: usize,
    dropout: f64,
}

/// The head's outputs.
pub struct HeadOutput {
    /// `[M, labels]`.
    pub logits: Tensor,
    /// `[M, POS ids]` (with a POS tagger).
    pub pos_logits: Option<Tensor>,
}

/// What the head's backward needs.
pub struct HeadCache {
    features: Tensor,
    mask: Option<Mask>,
    /// What the POS tagger read (the encoder's output at the head positions, of its layer).
    at_head: Option<Tensor>,
    /// The POS ids the embedding looked up when they were the tagger's (`[M]`, on the device).
    fed: Option<Tensor>,
    /// Sentences fed the tagger's distribution (`tagger_pos_share`): the distribution `[M, POS]` and
    /// which positions took it (`[M, 1]`, 1 or 0).
    mixed: Option<(Tensor, Tensor)>,
}

impl Head {
    pub fn new(p: &mut Params, c: &ModelConfig) -> Result<Head> {
        let h = &c.head;
        let layers = c.bert.num_hidden_layers;
        if let Some(l) = h.pos_tagger_layer.filter(|&l| l == 0 || l > layers) {
            return Err(ModelError::Config(format!(
                "pos_tagger_layer {l}: the encoder's layers are 1 to {layers}"
            )));
        }
        let pos = h
            .use_pos
            .then(|| {
                p.add(
                    POS_EMBEDDING.into(),
                    (h.num_pos, h.pos_dim),
                    Role::TABLE.in_head(),
                )
            })
            .transpose()?;
        // Predicted POS get their own table when training feeds some sentences the tagger's: the head
        // learns what the corpus's tags mean and what the tagger's mean, apart.
        let pos_tagged = (pos.is_some() && h.pos_tagger.is_some() && h.tagger_pos_share > 0.0)
            .then(|| {
                p.add(
                    POS_EMBEDDING_TAGGED.into(),
                    (h.num_pos, h.pos_dim),
                    Role::TABLE.in_head(),
                )
            })
            .transpose()?;
        let dims = (c.head_features(), h.num_labels);
        let classifier = Linear::new(p, "classifier", dims, Role::WEIGHT.in_head())?;
        if h.kind != HeadKind::Softmax && h.labels.len() != h.num_labels {
            return Err(ModelError::Config(format!(
                "a {:?} head needs the names of its {} labels ({} given)",
                h.kind,
                h.num_labels,
                h.labels.len()
            )));
        }
        let decoder = h.kind.head().build(p, &h.labels)?;
        let tagger = h
            .pos_tagger
            .map(|w| {
                let dims = (c.bert.hidden_size, h.num_pos);
                let role = Role::WEIGHT.in_head().in_probe();
                let l = Linear::new(p, "pos_tagger", dims, role)?;
                Ok::<_, ModelError>((l, w))
            })
            .transpose()?;
        Ok(Head {
            pos,
            pos_tagged,
            classifier,
            decoder,
            tagger,
            pos_from_tagger: h.pos_from_tagger && h.pos_tagger.is_some(),
            tagger_layer: h.pos_tagger_layer,
            tagger_share: h.tagger_pos_share,
            hidden: c.bert.hidden_size,
            dropout: h.dropout,
        })
    }

    /// The encoder layer (1-based) the POS tagger reads, when it has one and it is not the last.
    pub fn tagger_layer(&self) -> Option<usize> {
        self.tagger.as_ref().and(self.tagger_layer)
    }

    /// Logits `[M, labels]` (and POS logits) from the encoder's output at the head positions `[M, H]`;
    /// `probe_in`: the POS tagger's input when it reads a lower layer (that layer's output there).
    pub fn forward(
        &self,
        pass: &Pass,
        at_head: Tensor,
        probe_in: Option<Tensor>,
        source: PosSource,
    ) -> Result<(HeadOutput, HeadCache)> {
        let _t = scope("fwd/bwd: head");
        let tagger_in = probe_in.unwrap_or_else(|| at_head.clone());
        let pos_logits = self
            .tagger
            .as_ref()
            .map(|(l, _)| linear(l, &tagger_in))
            .transpose()?;
        // Training feeds the tagger's tags when so configured (a training pass keeps caches).
        let source = if pass.keep && self.pos_from_tagger {
            PosSource::Predicted
        } else {
            source
        };
        let mut fed = None;
        let mut mixed = None;
        let features = match &self.pos {
            Some(e) => {
                let ids = pos_ids(pass, source, pos_logits.as_ref())?;
                let tagged = self.pos_tagged.as_ref().unwrap_or(e);
                let mut pos = match (&pos_logits, source, pass.keep) {
                    (Some(z), PosSource::Predicted, false) => soft_pos(z, tagged)?,
                    _ => e.t().index_select(&ids, 0)?,
                };
                if let (Some(z), PosSource::Given) = (&pos_logits, source) {
                    let drawn = pass.head_sentences(Site::TaggerPos, self.tagger_share);
                    if let Some(m) = drawn.filter(|d| d.iter().any(|&x| x)) {
                        let (p, c);
                        (pos, p, c) = mix_tagger_pos(&pos, z, tagged, &m)?;
                        mixed = Some((p, c));
                    }
                }
                // Backward sums the embedding's gradient by these ids when they are the tagger's.
                fed = (source == PosSource::Predicted).then_some(ids);
                Tensor::cat(&[&at_head, &pos], 1)?
            }
            None => at_head.clone(),
        };
        let mask = pass.mask(&features, Rows::Head, Site::Head, self.dropout)?;
        let features = masked(&features, mask.as_ref())?;
        let logits = linear(&self.classifier, &features)?;
        let keep_input = pass.keep && self.tagger.is_some();
        let cache = HeadCache {
            features,
            mask,
            at_head: keep_input.then_some(tagger_in),
            fed,
            mixed,
        };
        Ok((HeadOutput { logits, pos_logits }, cache))
    }

    /// Hands over the head's gradients; returns d(encoder output) at the head positions `[M, H]`.
    /// `dpos_logits`: the POS tagger's loss gradient (weighted), with a POS tagger.
    pub fn backward(
        &self,
        pass: &Pass,
        c: HeadCache,
        dlogits: &Tensor,
        dpos_logits: Option<&Tensor>,
        sink: &mut Sink,
    ) -> Result<Tensor> {
        let _t = scope("fwd/bwd: head");
        let k = pass.kernels;
        let w = &self.classifier.weight;
        sink.dense(w, dlogits.t()?.matmul(&c.features)?)?;
        sink.dense(&self.classifier.bias, ColumnSum::forward(k, dlogits)?)?;
        let dfeat = masked(&dlogits.matmul(&w.t())?, c.mask.as_ref())?;
        let dx = dfeat.narrow(1, 0, self.hidden)?.contiguous()?;
        if let Some((tagger, _)) = &self.tagger {
            let (Some(dz), Some(x)) = (dpos_logits, &c.at_head) else {
                return Err(ModelError::Internal(
                    "the POS tagger's backward without its gradient or input".into(),
                ));
            };
            // A probe: its own gradients, none for the encoder. Sent back, its loss pulled the shared
            // encoder while the NER head was still learning (−0.069 dev F1 on a 3,000-sentence run of
            // another corpus; docs/results.md); read-only, the NER path trains exactly as without it.
            sink.dense(&tagger.weight, dz.t()?.matmul(x)?)?;
            sink.dense(&tagger.bias, ColumnSum::forward(k, dz)?)?;
        }
        if let Some(e) = &self.pos {
            let (rows, dim) = e.tensor.dims2()?;
            let dpos = dfeat.narrow(1, self.hidden, dim)?.contiguous()?;
            let grad = match (&c.fed, &c.mixed) {
                // The tagger's ids stay on the device (no read-back): summed there.
                (Some(ids), _) => Tensor::zeros((rows, dim), dpos.dtype(), dpos.device())?
                    .index_add(ids, &dpos, 0)?,
                // Gold rows by their ids, the others through the (fixed) distribution: pᵀ·d — into
                // the predicted tags' own table when the model has one.
                (None, Some((p, took))) => {
                    let took = took.to_dtype(dpos.dtype())?;
                    let gold = dpos.broadcast_mul(&took.affine(-1.0, 1.0)?)?;
                    let by_ids =
                        EmbeddingGrad::dense(k, &pass.inputs.host.head_pos_ids, &gold, rows)?;
                    let soft = p
                        .to_dtype(dpos.dtype())?
                        .t()?
                        .matmul(&dpos.broadcast_mul(&took)?)?;
                    if let Some(t) = &self.pos_tagged {
                        sink.dense(e, by_ids)?;
                        sink.dense(t, soft)?;
                        return Ok(dx);
                    }
                    (by_ids + soft)?
                }
                (None, None) => {
                    EmbeddingGrad::dense(k, &pass.inputs.host.head_pos_ids, &dpos, rows)?
                }
            };
            sink.dense(e, grad)?;
            // A batch with no sentence drawn for the tagger's POS still hands the predicted tags'
            // table a (zero) gradient: the gradient order, and every bucket cut from it, is fixed.
            if let Some(t) = &self.pos_tagged {
                sink.dense(t, t.tensor.zeros_like()?)?;
            }
        }
        Ok(dx)
    }

    /// Its parameters in the order backward hands out their gradients.
    pub fn params(&self) -> Vec<&Param> {
        let mut out = self.decoder.params();
        out.extend([&self.classifier.weight, &self.classifier.bias]);
        if let Some((t, _)) = &self.tagger {
            out.extend([&t.weight, &t.bias]);
        }
        out.extend(&self.pos);
        out.extend(&self.pos_tagged);
        out
    }

    /// The POS tagger's loss weight (none without a tagger).
    pub fn pos_weight(&self) -> Option<f64> {
        self.tagger.as_ref().map(|(_, w)| *w)
    }

    /// Draws the head's parameters (in `params`) from `seed` as `init` says — the same on every
    /// process, since every process draws from the same seed. `initializer_range` is the checkpoint's
    /// (for [`HeadInit::Bert`]).
    pub fn init(
        &self,
        params: &Params,
        init: HeadInit,
        seed: u64,
        initializer_range: f64,
    ) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let std = initializer_range as f32;
        // nn.Linear's weight (Kaiming-uniform with a = √5) and bias both reduce to U(−1/√fan_in, 1/√fan_in).
        let (_, fan_in) = self.classifier.weight.tensor.dims2()?;
        let bound = 1.0 / (fan_in as f32).sqrt();
        let [pos, weight, bias] = match init {
            HeadInit::Torch => [
                Draw::Normal(1.0),
                Draw::Uniform(bound),
                Draw::Uniform(bound),
            ],
            HeadInit::Bert => [Draw::Normal(std), Draw::Normal(std), Draw::Zero],
        };
        // The draws' order (POS embedding, weight, bias, then the decoder's — a CRF's as pytorch-crf
        // draws them — then the POS tagger's as the classifier's) is part of what a seed gives.
        let tagger = self.tagger.as_ref().map(|(l, _)| l);
        let tagger_bound = 1.0 / (self.hidden as f32).sqrt();
        let [tagger_w, tagger_b] = match init {
            HeadInit::Torch => [Draw::Uniform(tagger_bound), Draw::Uniform(tagger_bound)],
            HeadInit::Bert => [Draw::Normal(std), Draw::Zero],
        };
        let mut draws = vec![
            (self.pos.as_ref(), pos),
            (Some(&self.classifier.weight), weight),
            (Some(&self.classifier.bias), bias),
        ];
        draws.extend(self.decoder.draws().into_iter().map(|(p, d)| (Some(p), d)));
        draws.extend([
            (tagger.map(|l| &l.weight), tagger_w),
            (tagger.map(|l| &l.bias), tagger_b),
            (self.pos_tagged.as_ref(), pos),
        ]);
        for (param, draw) in draws {
            let Some(var) = param.and_then(|p| params.get(&p.name)) else {
                continue;
            };
            let data = draw.sample(var.elem_count(), &mut rng)?;
            let value = Tensor::from_vec(data, var.shape(), var.device())?;
            var.set(&value.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

/// The POS ids the embedding looks up: the batch's, or the tagger's most likely at each position.
fn pos_ids(pass: &Pass, source: PosSource, pos_logits: Option<&Tensor>) -> Result<Tensor> {
    match (source, pos_logits) {
        (PosSource::Given, _) => Ok(pass.inputs.head_pos_ids.clone()),
        (PosSource::Predicted, Some(z)) => Ok(z.argmax(1)?),
        (PosSource::Predicted, None) => Err(ModelError::Internal(
            "POS ids to predict, but the model has no POS tagger".into(),
        )),
    }
}

/// The POS embedding the tagger's distribution gives at inference: Σ p(tag)·E[tag] per position
/// (`[M, pos_dim]`). Where the tagger hesitates (NN or NNP, which GMB's entities follow closely) the head
/// gets both rather than a confident wrong one: on raw text +0.012 entity F1 over the argmax's
/// embedding (3,000-sentence model, docs/results.md). Input with POS tags is unaffected.
fn soft_pos(z: &Tensor, e: &Param) -> Result<Tensor> {
    let table = e.t();
    let p = candle_nn::ops::softmax_last_dim(&z.to_dtype(DType::F32)?)?;
    Ok(p.matmul(&table.to_dtype(DType::F32)?)?
        .to_dtype(table.dtype())?)
}

/// `gold` (`[M, pos_dim]`, the corpus's tags' embedding) with the positions of `drawn` sentences
/// replaced by the tagger's distribution's (logits `z`): the mixed embedding, the distribution and
/// which positions took it. The distribution is a constant here: the tagger stays a probe.
fn mix_tagger_pos(
    gold: &Tensor,
    z: &Tensor,
    e: &Param,
    drawn: &[bool],
) -> Result<(Tensor, Tensor, Tensor)> {
    let p = candle_nn::ops::softmax_last_dim(&z.to_dtype(DType::F32)?)?;
    let soft = p
        .matmul(&e.t().to_dtype(DType::F32)?)?
        .to_dtype(gold.dtype())?;
    let took: Vec<f32> = drawn.iter().map(|&d| f32::from(u8::from(d))).collect();
    let took = Tensor::from_vec(took, (drawn.len(), 1), gold.device())?;
    let c = took.to_dtype(gold.dtype())?;
    let mixed = (gold + (soft - gold)?.broadcast_mul(&c)?)?;
    Ok((mixed, p, took))
}

/// x·Wᵀ + b.
fn linear(l: &Linear, x: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&l.weight.t().t()?)?.broadcast_add(&l.bias.t())?)
}

/// How a new head's parameters are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInit {
    /// As the design's PyTorch module draws it: `nn.Embedding` for POS (N(0, 1)) and `nn.Linear` for
    /// the classifier (weight and bias U(−1/√fan_in, 1/√fan_in)). At this scale the POS vectors are
    /// as large as the encoder's outputs they are concatenated with, and the model uses them.
    #[default]
    Torch,
    /// As Hugging Face initialises new modules: weights N(0, initializer_range), bias 0. POS vectors
    /// ~50× smaller than the encoder's outputs: the model learns little from POS (docs/results.md).
    Bert,
}

/// One parameter's distribution.
/// How a seed draws a parameter's initial values.
#[derive(Debug, Clone, Copy)]
pub enum Draw {
    Normal(f32),
    Uniform(f32),
    Zero,
}

impl Draw {
    fn sample(self, n: usize, rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
        Ok(match self {
            Draw::Normal(std) => {
                let d = Normal::new(0f32, std).map_err(|e| ModelError::Internal(e.to_string()))?;
                (0..n).map(|_| d.sample(rng)).collect()
            }
            Draw::Uniform(bound) => {
                let d = Uniform::new_inclusive(-bound, bound)
                    .map_err(|e| ModelError::Internal(e.to_string()))?;
                (0..n).map(|_| d.sample(rng)).collect()
            }
            Draw::Zero => vec![0.0; n],
        })
    }
}
