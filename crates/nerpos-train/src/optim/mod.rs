//! The optimiser by concern: the learning-rate schedule ([`schedule`]), global gradient-norm
//! clipping ([`clip`]) and AdamW ([`adamw`]), whose element update is `nerpos-kernels`' AdamW op.

pub mod adamw;
pub mod clip;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig, Rates, Update};
pub use clip::{GradScale, guard, squared_norm};
pub use schedule::{Schedule, lr_factor};
