//! What the GPU glue counts: kernel launches (a step should make a number of them that does not grow
//! with the model's parameter count) and device→host reads (a step should make none: each one waits
//! for the whole queue). Process-wide counters — statistics read by the GPU bench and the trainer's
//! checks, never a switch that changes what runs.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor};

use crate::error::Result;

static LAUNCHES: AtomicU64 = AtomicU64::new(0);
static READ_BACKS: AtomicU64 = AtomicU64::new(0);

/// Kernel launches of the fused ops so far in this process.
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn count_launch() {
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
}

/// Device→host reads made through [`to_host`] so far in this process.
pub fn read_backs() -> u64 {
    READ_BACKS.load(Ordering::Relaxed)
}

/// `t` on the host: the one way the engine and the trainer read a device tensor back, counted (a copy
/// of a CPU tensor is free and not counted).
pub fn to_host(t: &Tensor) -> Result<Tensor> {
    if !t.device().is_cpu() {
        READ_BACKS.fetch_add(1, Ordering::Relaxed);
    }
    Ok(t.to_device(&Device::Cpu)?)
}
