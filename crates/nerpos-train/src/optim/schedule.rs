//! The learning-rate schedule: linear warm-up then linear decay to zero (Hugging Face's
//! `get_linear_schedule_with_warmup`), over the run's length.

use crate::config::TrainConfig;

/// The multiplier of the base learning rate at optimiser step `step` (0-based: the first update uses
/// step 0).
pub fn lr_factor(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        ((total as f64 - step as f64) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
    }
}

/// The run's length and learning-rate schedule.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub per_epoch: usize,
    pub total: usize,
    pub epochs: usize,
    pub warmup: usize,
}

impl Schedule {
    /// The schedule of `cfg` with `per_epoch` optimiser steps per epoch.
    pub fn new(cfg: &TrainConfig, per_epoch: usize) -> Schedule {
        let total = if cfg.max_steps > 0 {
            cfg.max_steps
        } else {
            cfg.epochs * per_epoch
        };
        let epochs = if cfg.max_steps > 0 {
            total.div_ceil(per_epoch)
        } else {
            cfg.epochs
        };
        let warmup = cfg
            .warmup_steps
            .unwrap_or((cfg.warmup_ratio * total as f64).ceil() as usize);
        Schedule {
            per_epoch,
            total,
            epochs,
            warmup,
        }
    }

    /// The multiplier of the base learning rates at step `step` (0-based).
    pub fn lr_factor(&self, step: usize) -> f64 {
        lr_factor(step, self.warmup, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_hugging_face() {
        // warm-up 10 of 100 steps
        assert_eq!(lr_factor(0, 10, 100), 0.0);
        assert_eq!(lr_factor(5, 10, 100), 0.5);
        assert_eq!(lr_factor(10, 10, 100), 1.0);
        assert_eq!(lr_factor(55, 10, 100), 0.5);
        assert_eq!(lr_factor(100, 10, 100), 0.0);
        assert_eq!(lr_factor(0, 0, 4), 1.0);
    }
}
