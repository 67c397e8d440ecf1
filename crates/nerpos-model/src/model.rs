//! `BertNerPos`: BERT encoder → contextual embeddings; POS ids → dense embedding; concatenate →
//! dropout → linear to the NER labels. Its parameters and their setup; the computation (on packed
//! batches) is in `train`, loading and saving in `checkpoint`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Embedding, Linear};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

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
        let features = config.bert.hidden_size + if h.use_pos { h.pos_dim } else { 0 };
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

    /// Initialises the head as Hugging Face initialises new modules: weights ~ N(0, initializer_range),
    /// biases 0, from `seed` (so that every process starts from the same head).
    pub fn init_head(&self, seed: u64) -> Result<()> {
        let std = self.config.bert.initializer_range;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal =
            Normal::new(0f32, std as f32).map_err(|e| ModelError::Config(e.to_string()))?;
        for name in [POS_EMBEDDING, CLASSIFIER_WEIGHT] {
            let Some(var) = self.params.get(name) else {
                continue;
            };
            let data: Vec<f32> = (0..var.elem_count())
                .map(|_| normal.sample(&mut rng))
                .collect();
            var.set(&Tensor::from_vec(data, var.shape(), var.device())?)?;
        }
        let bias = self
            .params
            .get(CLASSIFIER_BIAS)
            .expect("the classifier has a bias");
        bias.set(&bias.zeros_like()?)?;
        Ok(())
    }
}
