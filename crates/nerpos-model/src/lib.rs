//! `nerpos-model`: the BERT+POS token classifier in candle.
//!
//! BERT encoder (as Hugging Face's `BertModel`) → contextual embeddings; POS ids → dense embedding;
//! concatenate → dropout → linear to the labels. One implementation, on packed batches ([`batch`]: no
//! padding anywhere): forward, and backward written out ([`train`]), with fused CPU kernels
//! ([`kernels`], [`ops`], [`attention`]) and tensor-op versions of each for other devices. Dropout is
//! real and seeded. Loads Hugging Face checkpoint folders; saves fine-tuned folders whose encoder
//! Hugging Face loads.

pub mod attention;
pub mod batch;
pub mod bert;
pub mod checkpoint;
pub mod config;
#[cfg(feature = "cuda")]
mod cuda;
pub mod deferred;
pub mod device_check;
pub mod device_ops;
pub mod dropout;
pub mod error;
pub mod gpu;
pub mod grad;
pub mod kernels;
pub mod layers;
pub mod model;
pub mod ops;
pub mod params;
pub mod predict;
pub mod profile;
pub mod train;

#[cfg(test)]
mod emu_tests;

pub use batch::{Inputs, PackedBatch, RowSpans, Targets};
pub use checkpoint::{Carried, LabelSubwords, NerposMeta};
pub use config::{BertConfig, HeadConfig, ModelConfig};
pub use deferred::Deferred;
pub use dropout::Noise;
pub use error::{ModelError, Result};
pub use grad::Grad;
pub use model::{BertNerPos, HeadInit};
pub use params::Params;
pub use predict::{RowView, WordPrediction, predict_rows};
pub use train::StepOutput;

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
