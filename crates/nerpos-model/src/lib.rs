//! `nerpos-model`: the BERT+POS token classifier in candle.
//!
//! BERT encoder (as Hugging Face's `BertModel`) → contextual embeddings; POS ids → dense embedding;
//! concatenate → dropout → linear to the labels. One implementation, on packed batches ([`batch`]: no
//! padding anywhere): the layers ([`layers`]) own their parameters, forward and hand-written backward,
//! on the fused ops of `nerpos-kernels` (CPU kernels, CUDA kernels, tensor-op references — chosen by
//! the [`Kernels`] policy the model carries). Dropout is real and keyed by the sentence. Loads Hugging
//! Face checkpoint folders; saves fine-tuned folders whose encoder Hugging Face loads.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod gpu;
pub mod layers;
pub mod model;
pub mod params;
pub mod predict;
pub mod profile;

pub use batch::{HostIndex, Inputs, PackedBatch, Targets};
pub use checkpoint::{Carried, LabelSubwords, NerposMeta};
pub use config::{BertConfig, HeadConfig, HeadKind, ModelConfig};
pub use error::{ModelError, Result};
pub use model::{BertNerPos, HeadInit, HeadOutput, PosSource, StepOutput};
pub use nerpos_dist::Grad;
pub use nerpos_kernels::dropout::Noise;
pub use nerpos_kernels::ops::matmul::PackedBf16;
pub use nerpos_kernels::{Deferred, Kernels, RowSpans};
pub use params::{Param, Params, Role};
pub use predict::{PredictOptions, RowView, WordPrediction, predict_rows};

/// Makes the C allocator keep freed memory for reuse instead of returning it to the system.
///
/// A training step allocates and frees the same few hundred megabytes of activations every time;
/// glibc hands large blocks back to the kernel on free (mmap/trim), so every step page-faults them in
/// again, zeroed — about 5 % of a CPU step. Call once at the start of a binary's `main`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ONE_GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only sets allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, ONE_GIB);
            libc::mallopt(libc::M_TRIM_THRESHOLD, ONE_GIB);
        }
    }
}
