//! The run's progress as a person watches it: a bar (step/total, epoch, loss, tokens/s, ETA) on a
//! terminal, with log lines and evaluations printed above it.
//!
//! Whoever owns the terminal draws the bar: `nerpos-train` itself when run by hand, the launcher when
//! it started the ranks (their output reaches it through pipes). In the second case rank 0 sends one
//! [`Progress`] line per step on stdout, marked with [`MARKER`], which the launcher turns into its bar
//! and keeps out of the logs.

use std::borrow::Cow;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

/// Start of a progress line on rank 0's stdout.
pub const MARKER: &str = "@nerpos-progress ";

/// Environment variable the launcher sets on rank 0 when it draws the bar itself.
pub const PIPE_ENV: &str = "NERPOS_PROGRESS_PIPE";

/// Where training stands after a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub step: usize,
    pub total: usize,
    /// 1-based.
    pub epoch: usize,
    pub epochs: usize,
    /// Mean loss of the last log interval (none before the first).
    #[serde(default)]
    pub loss: Option<f64>,
    /// Real sub-word tokens per second, all ranks.
    pub tokens_per_s: f64,
    /// Steps skipped so far for a non-finite loss or gradient (`nonfinite = "skip"`).
    #[serde(default)]
    pub skipped: usize,
}

impl Progress {
    /// The marked line for the launcher.
    pub fn to_line(&self) -> String {
        format!(
            "{MARKER}{}",
            serde_json::to_string(self).expect("plain data serialises")
        )
    }

    /// Parses a marked line; `None` for any other line.
    pub fn from_line(line: &str) -> Option<Progress> {
        serde_json::from_str(line.strip_prefix(MARKER)?).ok()
    }

    fn message(&self) -> String {
        let loss = match self.loss {
            Some(l) => format!("loss {l:.4}"),
            None => "loss –".to_owned(),
        };
        let skipped = match self.skipped {
            0 => String::new(),
            n => format!(" · {n} skipped"),
        };
        format!(
            "epoch {}/{} · {loss} · {:.0} tok/s{skipped}",
            self.epoch, self.epochs, self.tokens_per_s
        )
    }
}

/// A progress bar on stderr; hidden (every call a no-op but [`Bar::suspend`]'s closure) when stderr
/// is not a terminal.
#[derive(Clone, Debug)]
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn hidden() -> Bar {
        Bar {
            bar: ProgressBar::hidden(),
        }
    }

    /// Starts drawing on stderr (if it is a terminal) for a run of `total` steps, at `position`.
    pub fn show(&self, total: usize, position: usize) {
        self.bar.set_style(
            ProgressStyle::with_template(
                "{msg}  [{bar:28}] {pos}/{len} steps  {elapsed_precise} < {eta_precise}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        self.bar.set_length(total as u64);
        self.bar.set_position(position as u64);
        self.bar.reset_eta();
        self.bar.set_draw_target(ProgressDrawTarget::stderr());
        self.bar.enable_steady_tick(Duration::from_millis(500));
    }

    pub fn update(&self, p: &Progress) {
        if self.bar.length() != Some(p.total as u64) {
            self.show(p.total, p.step.saturating_sub(1));
        }
        self.bar.set_message(Cow::Owned(p.message()));
        self.bar.set_position(p.step as u64);
        if p.step >= p.total {
            // Training is over: the last state stays, evaluations print below it.
            self.bar.finish();
        }
    }

    /// Runs `f` (which prints) with the bar cleared, then redraws it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Prints a line above the bar (on stderr).
    pub fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// Removes the bar (the last state stays in the log lines).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_others_are_ignored() {
        let p = Progress {
            step: 3,
            total: 63,
            epoch: 1,
            epochs: 1,
            loss: Some(1.25),
            tokens_per_s: 800.0,
            skipped: 0,
        };
        assert_eq!(Progress::from_line(&p.to_line()), Some(p));
        assert_eq!(Progress::from_line("INFO train step=3"), None);
    }
}
