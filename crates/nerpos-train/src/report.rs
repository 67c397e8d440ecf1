//! What a run writes about itself as it goes (rank 0): `metrics.jsonl` and TensorBoard scalars per log
//! interval, the progress, evaluation reports, and at the end `summary.json` and `curves.svg`.

use std::io::Write as _;
use std::path::Path;

use crate::evaluate::Evaluation;
use anyhow::Context;
use nerpos_run::progress::Progress;
use nerpos_run::tensorboard::EventWriter;
use nerpos_run::{MetricsLine, RunDir, Summary};
use serde::Deserialize;
use tracing::{info, warn};

use crate::health::LossAlarm;
use crate::output::Output;
use crate::trainer::{Means, StepStats};

/// Sums over the steps since the last metrics line.
#[derive(Default)]
struct Window {
    n: usize,
    tokens: f64,
    rows: f64,
    step_s: f64,
    allreduce_s: f64,
    allreduce_total_s: f64,
    data_wait_s: f64,
}

impl Window {
    fn add(&mut self, s: &StepStats, step_s: f64, data_wait_s: f64) {
        self.n += 1;
        self.tokens += s.tokens;
        self.rows += s.rows;
        self.step_s += step_s;
        self.allreduce_s += s.allreduce_s;
        self.allreduce_total_s += s.allreduce_total_s;
        self.data_wait_s += data_wait_s;
    }

    fn take(&mut self, step: usize, epoch: usize, lr: f64, means: &Means) -> MetricsLine {
        let n = self.n.max(1) as f64;
        let secs = self.step_s.max(1e-9);
        let line = MetricsLine {
            step,
            epoch,
            loss: means.loss,
            lr,
            grad_norm: means.grad_norm,
            skipped_steps: means.left_out,
            tokens_per_s: self.tokens / secs,
            sentences_per_s: self.rows / secs,
            step_s: self.step_s / n,
            allreduce_s: self.allreduce_s / n,
            allreduce_total_s: self.allreduce_total_s / n,
            data_wait_s: self.data_wait_s / n,
        };
        *self = Window::default();
        line
    }
}

/// Where a step stands, for the report.
#[derive(Debug, Clone)]
pub struct StepPoint {
    /// Steps done.
    pub step: usize,
    /// 1-based epoch of this step.
    pub epoch: usize,
    pub lr: f64,
    /// Whole step time (data wait included) and the data wait.
    pub step_s: f64,
    pub data_wait_s: f64,
}

/// The run's own account of itself. Only rank 0 writes files; every rank logs.
pub struct Reporter {
    run: RunDir,
    files: Option<(std::fs::File, EventWriter)>,
    output: Output,
    window: Window,
    /// The last metrics line's mean loss (the bar shows it: reading the loss every step would stop a
    /// GPU's queue every step).
    last_loss: Option<f64>,
    /// The last step accounted for (its interval's line is written at it).
    last: Option<StepPoint>,
    alarm: LossAlarm,
    log_every: usize,
    total: usize,
    epochs: usize,
}

impl Reporter {
    /// For a run (or resumed run) whose last completed step is `step`.
    pub fn new(
        run: &RunDir,
        rank: usize,
        step: usize,
        (total, epochs, log_every): (usize, usize, usize),
        output: Output,
    ) -> anyhow::Result<Reporter> {
        let files = if rank == 0 {
            std::fs::create_dir_all(run.eval_dir())
                .with_context(|| format!("creating {}", run.eval_dir().display()))?;
            // On resume, drop the lines of steps after the checkpoint (they will be redone).
            MetricsLine::truncate_after(&run.metrics(), step)?;
            let metrics = std::fs::OpenOptions::new()
                .append(true)
                .open(run.metrics())
                .with_context(|| format!("opening {}", run.metrics().display()))?;
            Some((metrics, EventWriter::create(&run.tensorboard())?))
        } else {
            None
        };
        if rank == 0 {
            output.bar.show(total, step);
        }
        Ok(Reporter {
            run: run.clone(),
            files,
            output,
            window: Window::default(),
            last_loss: None,
            last: None,
            alarm: LossAlarm::new(0.0),
            log_every: log_every.max(1),
            total,
            epochs,
        })
    }

    /// Whether `step` (steps done) ends a log interval: the steps at which the loop passes
    /// [`Trainer::take_means`](crate::trainer::Trainer::take_means) to [`Reporter::step`].
    pub fn logs_at(&self, step: usize) -> bool {
        step.is_multiple_of(self.log_every) || step == self.total
    }

    /// Warns when the logged loss climbs above `factor` × its lowest (`LossAlarm`; 0 = never).
    pub fn with_alarm(mut self, factor: f64) -> Reporter {
        self.alarm = LossAlarm::new(factor);
        self
    }

    /// Accounts for a finished step and shows the progress (`skipped`: steps skipped so far).
    pub fn step(&mut self, at: &StepPoint, stats: &StepStats, skipped: usize) {
        self.window.add(stats, at.step_s, at.data_wait_s);
        self.output.progress(&Progress {
            step: at.step,
            total: self.total,
            epoch: at.epoch,
            epochs: self.epochs,
            loss: self.last_loss,
            tokens_per_s: stats.tokens / at.step_s.max(1e-9),
            skipped,
        });
        self.last = Some(at.clone());
    }

    /// Whether steps were accounted for since the last metrics line.
    pub fn pending(&self) -> bool {
        self.window.n > 0
    }

    /// Writes the metrics line of the interval ending at the last step accounted for.
    pub fn interval(&mut self, means: &Means) -> anyhow::Result<()> {
        let Some(at) = self.last.clone() else {
            return Ok(());
        };
        self.last_loss = Some(means.loss);
        let line = self.window.take(at.step, at.epoch, at.lr, means);
        self.log_line(&line);
        let Some((metrics, tb)) = &mut self.files else {
            return Ok(());
        };
        writeln!(metrics, "{}", line.to_json())
            .with_context(|| format!("writing {}", self.run.metrics().display()))?;
        tb.scalars(
            line.step as u64,
            &[
                ("train/loss", line.loss),
                ("train/lr", line.lr),
                ("train/grad_norm", line.grad_norm),
                ("train/tokens_per_s", line.tokens_per_s),
                ("train/sentences_per_s", line.sentences_per_s),
                ("train/skipped_steps", line.skipped_steps as f64),
            ],
        )?;
        if let Some((average, lowest)) = self.alarm.observe(line.loss) {
            warn!(
                step = line.step,
                "the loss is climbing: {average:.4e} (smoothed) against {lowest:.4e} at its lowest; \
                 the run may be diverging (a lower `lr` or `max_grad_norm` may help)"
            );
        }
        Ok(())
    }

    /// The interval's log line (every rank logs it; rank 0's is shown).
    fn log_line(&self, line: &MetricsLine) {
        // The all-reduce's share of the step: waited for after backward / spent in all.
        let share = |s: f64| format!("{:.1}%", 100.0 * s / line.step_s.max(1e-9));
        info!(
            step = line.step,
            epoch = line.epoch,
            loss = format!("{:.4}", line.loss),
            lr = format!("{:.2e}", line.lr),
            tokens_per_s = format!("{:.0}", line.tokens_per_s),
            allreduce = format!(
                "{} exposed / {} total",
                share(line.allreduce_s),
                share(line.allreduce_total_s)
            ),
            "train"
        );
    }

    /// Reports a dev evaluation at `step`: printed above the bar, saved, and in TensorBoard.
    pub fn dev_eval(&mut self, step: usize, eval: &Evaluation, hash: &str) -> anyhow::Result<()> {
        let Some((_, tb)) = &mut self.files else {
            return Ok(());
        };
        let report = &eval.report;
        let mut scalars = vec![
            ("dev/f1_micro".to_string(), report.micro.f1),
            ("dev/precision_micro".to_string(), report.micro.precision),
            ("dev/recall_micro".to_string(), report.micro.recall),
        ];
        scalars.extend(
            report
                .per_type
                .iter()
                .map(|(ty, s)| (format!("dev/f1_{ty}"), s.f1)),
        );
        scalars.extend(
            eval.pos_accuracy
                .map(|a| ("dev/pos_accuracy".to_string(), a)),
        );
        let refs: Vec<(&str, f64)> = scalars.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        tb.scalars(step as u64, &refs)?;
        self.output
            .print_block(&format!("dev @ step {step}\n{}", report_text(eval)));
        write_report(&self.run.dev_eval(step), eval, step, hash)
    }

    /// Reports the final test evaluation of `which` model ("best dev model", "final model"), beside
    /// published scores when the run has them.
    pub fn test_eval(
        &mut self,
        step: usize,
        (eval, which): (&Evaluation, &str),
        reference: Option<&nerpos_eval::ReferenceScores>,
        hash: &str,
    ) -> anyhow::Result<()> {
        if self.files.is_none() {
            return Ok(());
        }
        self.output
            .print_block(&format!("test ({which})\n{}", report_text(eval)));
        write_report(&self.run.test_eval(), eval, step, hash)?;
        let report = &eval.report;
        if let Some(r) = reference {
            let table = format!("test ({which}) beside {}\n\n{}", r.name, r.beside(report));
            self.output.print_block(&table);
            nerpos_run::write_atomic(&self.run.test_vs_reference(), table.as_bytes())?;
        }
        Ok(())
    }

    /// Clears the bar, leaving a last message.
    pub fn stop(&self, message: &str) {
        self.output.bar.finish();
        if self.files.is_some() && !message.is_empty() {
            self.output.bar.println(message);
        }
    }

    /// Writes `summary.json` and `curves.svg` (rank 0).
    pub fn finish(&mut self, summary: &Summary) -> anyhow::Result<()> {
        self.output.bar.finish();
        if self.files.is_none() {
            return Ok(());
        }
        if let Some((average, lowest)) = self.alarm.raised() {
            warn!(
                "the run ends with its loss at {average:.4e} (smoothed), {:.1e}× the lowest it had \
                 ({lowest:.4e}): it diverged without reaching a NaN; its scores are not to be trusted",
                average / lowest
            );
        }
        summary.write(&self.run.summary())?;
        let logged = MetricsLine::read_all(&self.run.metrics())?;
        let loss: Vec<(f64, f64)> = logged.iter().map(|l| (l.step as f64, l.loss)).collect();
        let lr: Vec<(f64, f64)> = logged.iter().map(|l| (l.step as f64, l.lr)).collect();
        let f1 = dev_f1_curve(&self.run)?;
        let svg = nerpos_plot::svg(&[
            nerpos_plot::Series {
                title: "training loss",
                x_label: "step",
                points: &loss,
                flagged: None,
            },
            nerpos_plot::Series {
                title: "learning rate",
                x_label: "step",
                points: &lr,
                flagged: None,
            },
            nerpos_plot::Series {
                title: "dev micro F1",
                x_label: "step",
                points: &f1,
                flagged: None,
            },
        ]);
        nerpos_run::write_atomic(&self.run.curves(), svg.as_bytes())?;
        Ok(())
    }
}

/// Writes an evaluation report as JSON (the report, its step and the weights' hash) and as text.
fn write_report(
    (json_path, txt_path): &(std::path::PathBuf, std::path::PathBuf),
    eval: &Evaluation,
    step: usize,
    hash: &str,
) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(&eval.report)?;
    v["step"] = step.into();
    v["weights_sha256"] = hash.into();
    if let Some(a) = eval.pos_accuracy {
        v["pos_accuracy"] = a.into();
    }
    nerpos_run::write_atomic(
        json_path,
        (serde_json::to_string_pretty(&v)? + "\n").as_bytes(),
    )?;
    nerpos_run::write_atomic(txt_path, report_text(eval).as_bytes())?;
    Ok(())
}

/// The seqeval report, and the POS tagger's accuracy under it.
fn report_text(eval: &Evaluation) -> String {
    let mut text = eval.report.to_seqeval_string(4);
    if let Some(a) = eval.pos_accuracy {
        text.push_str(&format!("\nPOS accuracy: {a:.4}\n"));
    }
    text
}

/// The part of an evaluation file the curves need.
#[derive(Deserialize)]
struct EvalHead {
    step: usize,
    micro: MicroF1,
}

#[derive(Deserialize)]
struct MicroF1 {
    f1: f64,
}

fn read_eval_head(path: &Path) -> anyhow::Result<EvalHead> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not an evaluation report", path.display()))
}

/// Dev micro F1 by step, from every evaluation the run folder holds (earlier sessions included).
fn dev_f1_curve(run: &RunDir) -> anyhow::Result<Vec<(f64, f64)>> {
    run.dev_evals()
        .iter()
        .map(|(_, p)| {
            let h = read_eval_head(p)?;
            Ok((h.step as f64, h.micro.f1))
        })
        .collect()
}
