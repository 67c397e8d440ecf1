//! Non-finite steps: what the trainer does when a step's loss or gradient norm is NaN or infinite (a
//! learning rate too high, a bad batch, a bf16 overflow), and the warning before it happens.
//!
//! The decision for a step is made from numbers every rank shares — the loss summed over ranks and the
//! norm of the all-reduced gradients — so all ranks decide the same at the same step. A non-finite
//! step's update is never applied: on the CPU the host knows the numbers before the update and skips
//! it; on a GPU the numbers stay on the device and turn the update into a no-op there
//! ([`crate::optim::GradScale::guarded`]), and the host learns of it when it next reads them (the log
//! interval, an evaluation, a checkpoint). What follows is the policy's:
//!
//! - `stop` (default): the run ends at the first non-finite step, on every rank, with its weights and
//!   optimiser as after the step before (on a GPU the no-op sticks until the host reads it).
//! - `skip`: the step is dropped and counted (`metrics.jsonl`, the progress line); `max_skips`
//!   non-finite steps in a row end the run as `stop` does.

use serde::{Deserialize, Serialize};

/// What a non-finite step does to the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    /// End the run at the first non-finite step (its update not applied).
    #[default]
    Stop,
    /// Drop the step's update, count it, and go on (up to `max_skips` in a row).
    Skip,
}

/// One optimiser step's numbers, as the host learns them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepHealth {
    /// The step's number (1-based: steps done after it).
    pub step: usize,
    /// Mean loss over every rank's labelled tokens.
    pub loss: f64,
    /// Global gradient norm (of the mean loss, before clipping).
    pub grad_norm: f64,
}

impl StepHealth {
    pub fn finite(&self) -> bool {
        self.loss.is_finite() && self.grad_norm.is_finite()
    }
}

/// What became of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Applied,
    /// Dropped (`skip`): the weights and moments are as before it.
    Skipped,
    /// The run ends here: the step and how many non-finite steps in a row led to it.
    Stop(StepHealth, usize),
}

/// The policy applied to steps in order.
#[derive(Debug, Clone)]
pub struct Watch {
    policy: NonFinitePolicy,
    max_skips: usize,
    in_a_row: usize,
    /// Steps skipped since the run (or this session of it) started.
    pub skipped: usize,
}

impl Watch {
    pub fn new(policy: NonFinitePolicy, max_skips: usize) -> Watch {
        Watch {
            policy,
            max_skips: max_skips.max(1),
            in_a_row: 0,
            skipped: 0,
        }
    }

    /// The verdict on the next step.
    pub fn judge(&mut self, h: StepHealth) -> Verdict {
        if h.finite() {
            self.in_a_row = 0;
            return Verdict::Applied;
        }
        self.in_a_row += 1;
        match self.policy {
            NonFinitePolicy::Skip if self.in_a_row < self.max_skips => {
                self.skipped += 1;
                Verdict::Skipped
            }
            _ => Verdict::Stop(h, self.in_a_row),
        }
    }
}

/// Warns when the logged loss climbs far above the lowest it has been: a run on its way to NaN, or
/// one that diverges without ever reaching it (a loss of 1e13 is finite).
///
/// It follows an exponential average of the interval means (so one noisy interval does not trip it)
/// and its running minimum; it warns when the average exceeds `factor` × that minimum, once, until the
/// average has come back under half that line.
#[derive(Debug, Clone)]
pub struct LossAlarm {
    factor: f64,
    average: Option<f64>,
    lowest: f64,
    raised: bool,
}

impl LossAlarm {
    /// `factor` 0 turns the warning off.
    pub fn new(factor: f64) -> LossAlarm {
        LossAlarm {
            factor,
            average: None,
            lowest: f64::INFINITY,
            raised: false,
        }
    }

    /// Takes an interval's mean loss; returns (average, lowest) when it is time to warn.
    pub fn observe(&mut self, loss: f64) -> Option<(f64, f64)> {
        if self.factor <= 0.0 || !loss.is_finite() {
            return None;
        }
        let avg = self.average.map_or(loss, |a| 0.7 * a + 0.3 * loss);
        self.average = Some(avg);
        self.lowest = self.lowest.min(avg);
        let line = self.factor * self.lowest;
        if !self.raised && avg > line {
            self.raised = true;
            return Some((avg, self.lowest));
        }
        if self.raised && avg < 0.5 * line {
            self.raised = false;
        }
        None
    }

    /// (average, lowest) when the warning is still up: the run ends with its loss climbed.
    pub fn raised(&self) -> Option<(f64, f64)> {
        self.average
            .filter(|_| self.raised)
            .map(|a| (a, self.lowest))
    }
}

/// Test hook: `NERPOS_TEST_NONFINITE=STEP[@RANK][,...]` makes the loss and a gradient of optimiser step
/// STEP (1-based) NaN on rank RANK (every rank without one) before the all-reduce — a poisoned batch,
/// for the tests of the policies.
pub const FAULT_ENV: &str = "NERPOS_TEST_NONFINITE";

/// The steps (and ranks) [`FAULT_ENV`] poisons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults(Vec<(usize, Option<usize>)>);

impl Faults {
    pub fn from_env() -> anyhow::Result<Faults> {
        match std::env::var(FAULT_ENV) {
            Ok(v) if !v.trim().is_empty() => Faults::parse(&v),
            _ => Ok(Faults::default()),
        }
    }

    /// Every rank's steps `steps` (1-based).
    pub fn at(steps: &[usize]) -> Faults {
        Faults(steps.iter().map(|&s| (s, None)).collect())
    }

    fn parse(text: &str) -> anyhow::Result<Faults> {
        let number = |s: &str| {
            s.trim().parse::<usize>().map_err(|_| {
                anyhow::anyhow!("{FAULT_ENV}={text:?}: expected STEP[@RANK][,...], not {s:?}")
            })
        };
        let items = text.split(',').map(|item| match item.split_once('@') {
            Some((step, rank)) => Ok((number(step)?, Some(number(rank)?))),
            None => Ok((number(item)?, None)),
        });
        Ok(Faults(items.collect::<anyhow::Result<_>>()?))
    }

    /// Whether rank `rank`'s step `step` (1-based) is poisoned.
    pub fn hits(&self, step: usize, rank: usize) -> bool {
        self.0
            .iter()
            .any(|&(s, r)| s == step && r.is_none_or(|r| r == rank))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(step: usize, loss: f64) -> StepHealth {
        StepHealth {
            step,
            loss,
            grad_norm: 1.0,
        }
    }

    #[test]
    fn stop_ends_at_the_first_non_finite_step() {
        let mut w = Watch::new(NonFinitePolicy::Stop, 10);
        assert_eq!(w.judge(h(1, 2.0)), Verdict::Applied);
        let bad = StepHealth {
            grad_norm: f64::INFINITY,
            ..h(2, 1.0)
        };
        assert_eq!(w.judge(bad), Verdict::Stop(bad, 1));
    }

    #[test]
    fn skip_counts_and_stops_after_max_skips_in_a_row() {
        let mut w = Watch::new(NonFinitePolicy::Skip, 3);
        assert_eq!(w.judge(h(1, f64::NAN)), Verdict::Skipped);
        assert_eq!(w.judge(h(2, f64::NAN)), Verdict::Skipped);
        assert_eq!(w.judge(h(3, 1.0)), Verdict::Applied);
        assert_eq!(w.judge(h(4, f64::NAN)), Verdict::Skipped);
        assert_eq!(w.judge(h(5, f64::INFINITY)), Verdict::Skipped);
        assert!(matches!(w.judge(h(6, f64::NAN)), Verdict::Stop(s, 3) if s.step == 6));
        assert_eq!(w.skipped, 4);
    }

    #[test]
    fn the_alarm_rings_once_when_the_loss_climbs() {
        let mut a = LossAlarm::new(10.0);
        for l in [2.5, 1.0, 0.5, 0.3, 0.35, 0.28, 0.6, 0.3] {
            assert_eq!(a.observe(l), None, "{l}");
        }
        let rang: Vec<_> = [5.0, 40.0, 1e3, 1e13]
            .iter()
            .filter_map(|&l| a.observe(l))
            .collect();
        assert_eq!(rang.len(), 1, "{rang:?}");
        assert!(rang[0].0 > 10.0 * rang[0].1);
        assert!(a.raised().is_some_and(|(avg, low)| avg > 1e12 && low < 1.0));
        // The average forgets 3e12 at 0.7 a line: ~90 lines to be back near 0.3.
        for _ in 0..100 {
            a.observe(0.3);
        }
        assert_eq!(a.raised(), None, "back down: the warning is off");
        assert_eq!(LossAlarm::new(0.0).observe(1e30), None);
    }

    #[test]
    fn faults_parse_and_match() {
        let f = Faults::parse("7, 9@1").unwrap();
        assert!(f.hits(7, 0) && f.hits(7, 3) && f.hits(9, 1));
        assert!(!f.hits(9, 0) && !f.hits(8, 0));
        let e = Faults::parse("x@1").unwrap_err().to_string();
        assert!(e.contains(FAULT_ENV) && e.contains("STEP[@RANK]"), "{e}");
    }
}
