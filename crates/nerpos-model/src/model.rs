//! `BertNerPos`: BERT encoder → contextual embeddings; POS ids → dense embedding; concatenate →
//! dropout → linear to the NER labels. Its parameters and their setup; the computation (on packed
//! batches) is in `train`, loading and saving in `checkpoint`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Embedding, Linear};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};

use crate::bert::BertEncoder;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::params::Params;

/// Names of the new head's parameters.
pub const POS_EMBEDDING: &str = "pos_embedding.weight";
/// The word-embedding table, whose gradient is given as rows ([`crate::Grad::Rows`]).
pub const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";
pub const CLASSIFIER_WEIGHT: &str = "classifier.weight";
pub const CLASSIFIER_BIAS: &str = "classifier.bias";

pub struct BertNerPos {
    pub config: ModelConfig,
    pub params: Params,
    pub(crate) encoder: BertEncoder,
    pub(crate) pos_embedding: Option<Embedding>,
    pub(crate) classifier: Linear,
}

impl BertNerPos {
    /// The model with every parameter zero (to be loaded or initialised).
    pub fn new(config: ModelConfig, device: &Device) -> Result<BertNerPos> {
        BertNerPos::with_dtype(config, device, DType::F32)
    }

    /// The model with every parameter zero, stored in `dtype`: a bf16 compute copy for mixed
    /// precision, refreshed from the f32 master with [`copy_from`](Self::copy_from) before each step.
    pub fn with_dtype(config: ModelConfig, device: &Device, dtype: DType) -> Result<BertNerPos> {
        let mut params = Params::with_dtype(device, dtype);
        let encoder = BertEncoder::new(&mut params, &config.bert)?;
        let h = &config.head;
        let pos_embedding = if h.use_pos {
            Some(Embedding::new(
                params.var(POS_EMBEDDING, (h.num_pos, h.pos_dim))?,
                h.pos_dim,
            ))
        } else {
            None
        };
        let features = config.head_features();
        let classifier = Linear::new(
            params.var(CLASSIFIER_WEIGHT, (h.num_labels, features))?,
            Some(params.var(CLASSIFIER_BIAS, h.num_labels)?),
        );
        Ok(BertNerPos {
            config,
            params,
            encoder,
            pos_embedding,
            classifier,
        })
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
                return Err(ModelError::Config(format!(
                    "copy_from: the source model has no {name}"
                )));
            };
            var.set(&src.as_tensor().to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Draws the new head (POS embedding, classifier) from `seed` as `init` says — the same on every
    /// process, since every process draws from the same seed.
    pub fn init_head(&self, init: HeadInit, seed: u64) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let features = self.config.head_features();
        let std = self.config.bert.initializer_range as f32;
        // nn.Linear's weight (Kaiming-uniform with a = √5) and bias both reduce to U(−1/√fan_in, 1/√fan_in).
        let bound = 1.0 / (features as f32).sqrt();
        let draws = match init {
            HeadInit::Torch => [
                (POS_EMBEDDING, Draw::Normal(1.0)),
                (CLASSIFIER_WEIGHT, Draw::Uniform(bound)),
                (CLASSIFIER_BIAS, Draw::Uniform(bound)),
            ],
            HeadInit::Bert => [
                (POS_EMBEDDING, Draw::Normal(std)),
                (CLASSIFIER_WEIGHT, Draw::Normal(std)),
                (CLASSIFIER_BIAS, Draw::Zero),
            ],
        };
        for (name, draw) in draws {
            if let Some(var) = self.params.get(name) {
                let data = draw.sample(var.elem_count(), &mut rng)?;
                var.set(&Tensor::from_vec(data, var.shape(), var.device())?)?;
            }
        }
        Ok(())
    }
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
#[derive(Clone, Copy)]
enum Draw {
    Normal(f32),
    Uniform(f32),
    Zero,
}

impl Draw {
    fn sample(self, n: usize, rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
        Ok(match self {
            Draw::Normal(std) => {
                let d = Normal::new(0f32, std).map_err(|e| ModelError::Config(e.to_string()))?;
                (0..n).map(|_| d.sample(rng)).collect()
            }
            Draw::Uniform(bound) => {
                let d = Uniform::new_inclusive(-bound, bound)
                    .map_err(|e| ModelError::Config(e.to_string()))?;
                (0..n).map(|_| d.sample(rng)).collect()
            }
            Draw::Zero => vec![0.0; n],
        })
    }
}
