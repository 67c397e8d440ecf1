//! The training loop of one process, as a user pictures it:
//!
//! ```text
//! for each batch:  step → judge → report → (evaluate on dev) → (checkpoint) → (stop?)
//! then:            save last/ → test the best model → summary
//! ```
//!
//! "Judge" applies the `nonfinite` policy (`crate::health`) to each step's numbers as soon as the host
//! has them — at once on the CPU, at the next read on a GPU (a log line, an evaluation, a checkpoint:
//! before anything is evaluated or written). A run that stops there ends as `diverged`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Tensor;
use nerpos_dist::Rendezvous;
use nerpos_run::{Divergence, RunDir, Status, Summary};
use tracing::{info, warn};

use crate::config::TrainConfig;
use crate::data::{LoadedStep, LoaderSpec, start_loader};
use crate::evaluate::EvalSpec;
use crate::health::{StepHealth, Verdict, Watch};
use crate::optim::Rates;
use crate::output::Output;
use crate::report::{Reporter, StepPoint};
use crate::setup::Job;
use crate::trainer::StepStats;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    /// Stopped by SIGTERM/SIGUSR1/SIGINT after writing a resumable checkpoint.
    Interrupted,
    /// Stopped at a non-finite step (`nonfinite`): what happened and what to try.
    Diverged(String),
}

/// The step that ends a run, and how many non-finite steps in a row led to it.
type Stop = (StepHealth, usize);

/// What the loop does after a step.
enum Flow {
    Continue,
    /// Dev F1 stopped improving (`patience`).
    EarlyStop,
    /// A signal: the checkpoint is written, the run resumes later.
    Interrupted,
    /// A non-finite step under the policy that ends the run.
    Diverged(Stop),
}

/// Runs (or resumes) training; `stop` is raised by signals.
pub fn run(
    cfg: TrainConfig,
    resume: Option<&Path>,
    stop: Arc<AtomicBool>,
    output: Output,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    if std::env::var("NERPOS_PROFILE").is_ok_and(|v| v == "1") {
        nerpos_model::profile::enable();
    }
    let rdv = Rendezvous::from_env()?;
    let run = RunDir::new(resume.map_or_else(|| cfg.out.clone(), Path::to_owned));
    // Under the launcher, it keeps the log files (from this process's output).
    if std::env::var_os(nerpos_run::LAUNCHER_LOGS_ENV).is_none()
        && let Err(e) = output.log_to(&run.rank_log(rdv.rank))
    {
        tracing::warn!("no log file in {}: {e}", run.logs().display());
    }
    let mut job = Job::setup(cfg, resume, &rdv)?;
    let rank0 = job.trainer.rank() == 0;
    if rank0 {
        nerpos_run::write_atomic(&job.run.config(), job.cfg.to_toml().as_bytes())?;
        // A summary says the run is over: not while it runs again (a diverged run resumed).
        remove_if_present(&job.run.summary())?;
        job.run.record(Status::Running, "")?;
    }
    let result = job.train(&stop, output, started);
    if rank0 {
        let (status, message) = match &result {
            Ok(Outcome::Finished) => (None, String::new()),
            Ok(Outcome::Interrupted) => (
                Some(Status::Interrupted),
                format!("stopped by a signal at step {}", job.state.step),
            ),
            Ok(Outcome::Diverged(why)) => (Some(Status::Diverged), why.clone()),
            Err(e) => (Some(Status::Failed), format!("{e:#}")),
        };
        if let Some(s) = status {
            job.run.record(s, message)?;
        }
    }
    result
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::Error::new(e).context(format!("removing {}", path.display())))
        }
        _ => Ok(()),
    }
}

impl Job {
    fn eval_spec(&self) -> EvalSpec {
        EvalSpec {
            labels: self.meta.labels.clone(),
            batch_rows: self.cfg.eval_batch_size,
            device: self.trainer.device().clone(),
        }
    }

    fn loader(&self) -> std::sync::mpsc::Receiver<LoadedStep> {
        start_loader(
            self.train.clone(),
            LoaderSpec {
                batching: self.batching,
                rank: self.trainer.rank(),
                epochs: self.schedule.epochs,
                pos_unk: self.meta.pos_unk_id,
                pos_dropout: self.cfg.pos_dropout,
            },
            self.state.epoch,
            self.state.index_in_epoch,
        )
    }

    /// The loop; returns how it ended.
    fn train(
        &mut self,
        stop: &AtomicBool,
        output: Output,
        started: Instant,
    ) -> anyhow::Result<Outcome> {
        let s = self.schedule;
        let mut report = Reporter::new(
            &self.run,
            self.trainer.rank(),
            self.state.step,
            (s.total, s.epochs, self.cfg.log_every),
            output,
        )?
        .with_alarm(self.cfg.divergence_warning);
        let mut watch = Watch::new(self.cfg.nonfinite, self.cfg.max_skips);
        let mut best: Option<Vec<Tensor>> = None;
        // Step time (data wait included) and steps, for the profile.
        let mut stepped = (0.0f64, 0usize);
        let loader = self.loader();
        let mut wait_started = Instant::now();
        while self.state.step < s.total {
            let Ok(loaded) = loader.recv() else { break };
            let data_wait_s = wait_started.elapsed().as_secs_f64();
            let (point, stats, ended) =
                self.step(&loaded, (stop, data_wait_s), &mut report, &mut watch)?;
            stepped = (stepped.0 + point.step_s, stepped.1 + 1);
            if let Some(ended) = ended {
                return self.diverged(&mut report, ended, started);
            }
            match self.after_step(&stats, &mut report, &mut best, &mut watch)? {
                Flow::Continue => {}
                Flow::EarlyStop => break,
                Flow::Interrupted => return Ok(Outcome::Interrupted),
                Flow::Diverged(ended) => return self.diverged(&mut report, ended, started),
            }
            wait_started = Instant::now();
        }
        drop(loader);
        self.write_profile(stepped)?;
        self.finish(&mut report, best, started)?;
        Ok(Outcome::Finished)
    }

    /// Applies the policy to steps in order; returns the one that ends the run, if any.
    fn judge(
        &self,
        watch: &mut Watch,
        steps: impl IntoIterator<Item = StepHealth>,
    ) -> Option<Stop> {
        for h in steps {
            match watch.judge(h) {
                Verdict::Applied => {}
                Verdict::Skipped => warn!(
                    step = h.step,
                    loss = h.loss,
                    grad_norm = h.grad_norm,
                    skipped = watch.skipped,
                    "non-finite step skipped: its update was not applied (nonfinite = \"skip\")"
                ),
                Verdict::Stop(h, in_a_row) => return Some((h, in_a_row)),
            }
        }
        None
    }

    /// One optimiser step on `loaded`, judged and reported (its time includes the wait for the
    /// data); the step that ends the run, if one does.
    fn step(
        &mut self,
        loaded: &LoadedStep,
        (stop, data_wait_s): (&AtomicBool, f64),
        report: &mut Reporter,
        watch: &mut Watch,
    ) -> anyhow::Result<(StepPoint, StepStats, Option<Stop>)> {
        let t0 = Instant::now();
        let factor = self.schedule.lr_factor(self.state.step);
        let c = &self.cfg;
        let rates = Rates {
            lr: c.lr * factor,
            head: c.head_lr.unwrap_or(c.lr) * factor,
            probe: c.pos_tagger_lr * factor,
        };
        let lr = rates.lr;
        let wants_stop = stop.load(Ordering::Relaxed);
        let stats = self
            .trainer
            .step(&loaded.micro, self.state.step, rates, wants_stop)?;
        self.advance(loaded);
        let point = StepPoint {
            step: self.state.step,
            epoch: loaded.epoch + 1,
            lr,
            step_s: t0.elapsed().as_secs_f64() + data_wait_s,
            data_wait_s,
        };
        let mut ended = self.judge(watch, stats.health);
        report.step(&point, &stats, watch.skipped);
        // At the end of a log interval (every rank, at the same steps), the loss and gradient norm
        // are read from the device — once per interval, not every step — and the steps judged; the
        // interval a run stops in is logged too.
        if report.logs_at(self.state.step) || ended.is_some() {
            let (means, late) = self.trainer.take_means()?;
            ended = ended.or_else(|| self.judge(watch, late));
            report.interval(&means)?;
        }
        nerpos_model::profile::add("step: data wait", data_wait_s);
        Ok((point, stats, ended))
    }

    /// After a step: evaluate, checkpoint, stop — as the configuration and the step's signals say.
    fn after_step(
        &mut self,
        stats: &StepStats,
        report: &mut Reporter,
        best: &mut Option<Vec<Tensor>>,
        watch: &mut Watch,
    ) -> anyhow::Result<Flow> {
        let end_of_epoch = self.state.index_in_epoch == 0;
        let (every, step) = (self.cfg.eval_every, self.state.step);
        let eval_now = (every > 0 && step % every == 0)
            || (every == 0 && end_of_epoch)
            || step == self.schedule.total;
        let checkpoint_every = self.cfg.checkpoint_every;
        let checkpoint_now =
            eval_now || stats.stop || (checkpoint_every > 0 && step % checkpoint_every == 0);
        if eval_now || checkpoint_now {
            // Nothing is evaluated or written before every step's numbers are judged (a GPU's come
            // here); AdamW's step count, set back for steps left out, goes into the checkpoint.
            let late = self.trainer.settle()?;
            if let Some(ended) = self.judge(watch, late) {
                return Ok(Flow::Diverged(ended));
            }
            self.state.adam_steps = self.trainer.optimizer.steps;
        }
        let mut stop_early = false;
        if eval_now && !self.dev.is_empty() {
            stop_early = self.evaluate_dev(report, best)?;
        }
        if checkpoint_now {
            self.checkpoint()?;
        }
        if stats.stop {
            self.trainer.comm.barrier()?;
            report.stop(&format!(
                "stopped at step {step}: resume with --resume {}",
                self.run.path().display()
            ));
            return Ok(Flow::Interrupted);
        }
        if stop_early {
            info!(
                patience = self.cfg.patience,
                "early stop: dev F1 did not improve"
            );
            return Ok(Flow::EarlyStop);
        }
        Ok(Flow::Continue)
    }

    /// With `NERPOS_PROFILE=1`: where the steps' time went, in `profile.json` and the log (rank 0).
    fn write_profile(&self, (step_s, steps): (f64, usize)) -> anyhow::Result<()> {
        if !nerpos_model::profile::enabled() || self.trainer.rank() != 0 {
            return Ok(());
        }
        let phases: Vec<serde_json::Value> = nerpos_model::profile::totals()
            .into_iter()
            .map(|(name, secs, n)| serde_json::json!({"phase": name, "seconds": secs, "count": n}))
            .collect();
        let v = serde_json::json!({"steps": steps, "step_seconds": step_s, "phases": phases});
        nerpos_run::write_atomic(
            &self.run.path().join("profile.json"),
            (serde_json::to_string_pretty(&v)? + "\n").as_bytes(),
        )?;
        info!(
            "where {steps} steps' {step_s:.2} s went:\n{}",
            nerpos_model::profile::table(step_s)
        );
        Ok(())
    }

    /// Moves the loop's position past the step just taken.
    fn advance(&mut self, loaded: &LoadedStep) {
        let st = &mut self.state;
        st.step += 1;
        st.adam_steps = self.trainer.optimizer.steps;
        st.epoch = loaded.epoch;
        st.index_in_epoch = loaded.index + 1;
        if st.index_in_epoch >= self.schedule.per_epoch {
            st.epoch += 1;
            st.index_in_epoch = 0;
        }
    }

    /// Scores dev, keeps the best model; returns whether patience ran out.
    fn evaluate_dev(
        &mut self,
        report: &mut Reporter,
        best: &mut Option<Vec<Tensor>>,
    ) -> anyhow::Result<bool> {
        let spec = self.eval_spec();
        let dev = self.trainer.evaluate(&self.dev, &spec)?;
        let dev_report = &dev.report;
        let step = self.state.step;
        let hash = self
            .trainer
            .check_same_weights(&format!("at step {step}"))?;
        let f1 = dev_report.micro.f1;
        let st = &mut self.state;
        let improved = st.best_dev_f1.is_none_or(|b| f1 > b);
        if improved {
            st.best_dev_f1 = Some(f1);
            st.best_step = Some(step);
            st.evals_since_best = 0;
            *best = Some(self.trainer.snapshot()?);
        } else {
            st.evals_since_best += 1;
        }
        report.dev_eval(step, &dev, &hash)?;
        if improved && self.trainer.rank() == 0 {
            self.trainer.model.save(
                &self.run.best(),
                &self.cfg.model,
                &self.meta,
                &self.carried,
            )?;
        }
        info!(
            step,
            dev_f1 = format!("{f1:.4}"),
            best = format!("{:.4}", self.state.best_dev_f1.unwrap_or(0.0)),
            "evaluated"
        );
        Ok(self.cfg.patience > 0 && self.state.evals_since_best >= self.cfg.patience)
    }

    /// Rank 0 writes a resumable checkpoint.
    fn checkpoint(&self) -> anyhow::Result<()> {
        if self.trainer.rank() == 0 {
            let dir = self
                .trainer
                .checkpoint(&self.run, &self.state, self.cfg.keep_checkpoints)?;
            info!(checkpoint = %dir.display(), "checkpoint written");
        }
        Ok(())
    }

    /// After the last step: `last/`, the best dev model on test, `summary.json` and the curves.
    fn finish(
        &mut self,
        report: &mut Reporter,
        best: Option<Vec<Tensor>>,
        started: Instant,
    ) -> anyhow::Result<()> {
        let final_hash = self.trainer.check_same_weights("at the end")?;
        let rank0 = self.trainer.rank() == 0;
        if rank0 {
            self.trainer.model.save(
                &self.run.last(),
                &self.cfg.model,
                &self.meta,
                &self.carried,
            )?;
        }
        let mut test_f1 = None;
        if self.cfg.test_at_end && !self.test.is_empty() {
            if let Some(w) = &best {
                self.trainer.restore(w)?;
            }
            let spec = self.eval_spec();
            let test = self.trainer.evaluate(&self.test, &spec)?;
            test_f1 = Some(test.report.micro.f1);
            let which = if best.is_some() {
                "best dev model"
            } else {
                "final model"
            };
            let reference = self.reference.as_ref();
            report.test_eval(self.state.step, (&test, which), reference, &final_hash)?;
        }
        let s = self.schedule;
        report.finish(&Summary {
            status: Status::Finished,
            steps: self.state.step,
            epochs: self.state.epoch.max(s.epochs.min(self.state.epoch + 1)),
            world_size: self.trainer.world_size(),
            best_dev_f1: self.state.best_dev_f1,
            best_step: self.state.best_step,
            test_f1,
            wall_s: started.elapsed().as_secs_f64(),
            weights_sha256: final_hash,
            diverged: None,
        })?;
        if rank0 {
            // Numbers as a person reads them; no dev score without a dev split.
            let f = |v: f64| format!("{v:.4}");
            match (self.state.best_dev_f1.map(f), test_f1.map(f)) {
                (Some(dev), Some(test)) => {
                    info!(run = %self.run.path().display(), best_dev_f1 = %dev, test_f1 = %test, "done");
                }
                (Some(dev), None) => {
                    info!(run = %self.run.path().display(), best_dev_f1 = %dev, "done")
                }
                (None, Some(test)) => {
                    info!(run = %self.run.path().display(), test_f1 = %test, "done")
                }
                (None, None) => info!(run = %self.run.path().display(), "done"),
            }
        }
        self.trainer.comm.barrier()?;
        Ok(())
    }

    /// Ends the run at a non-finite step (every rank at the same one): the interval it stopped in
    /// logged, nothing more evaluated; `last/` (the weights as the run leaves them: after the last
    /// applied step), the summary (`diverged`) and the curves written. Its checkpoints and `best/` are
    /// all from before the step.
    fn diverged(
        &mut self,
        report: &mut Reporter,
        (bad, in_a_row): Stop,
        started: Instant,
    ) -> anyhow::Result<Outcome> {
        if report.pending() {
            let (means, _) = self.trainer.take_means()?;
            report.interval(&means)?;
        }
        let hash = self.trainer.check_same_weights("when the run stopped")?;
        if self.trainer.rank() == 0 {
            let c = &self.cfg;
            self.trainer
                .model
                .save(&self.run.last(), &c.model, &self.meta, &self.carried)?;
        }
        let checkpoint = self.run.checkpoints().pop();
        let message = self.divergence_message(bad, in_a_row, checkpoint.as_deref());
        report.finish(&Summary {
            status: Status::Diverged,
            steps: bad.step - 1,
            epochs: self.state.epoch.min(self.schedule.epochs).max(1),
            world_size: self.trainer.world_size(),
            best_dev_f1: self.state.best_dev_f1,
            best_step: self.state.best_step,
            test_f1: None,
            wall_s: started.elapsed().as_secs_f64(),
            weights_sha256: hash,
            diverged: Some(Divergence {
                step: bad.step,
                loss: bad.loss,
                grad_norm: bad.grad_norm,
                skipped_in_a_row: in_a_row,
                checkpoint,
            }),
        })?;
        self.trainer.comm.barrier()?;
        Ok(Outcome::Diverged(message))
    }

    /// What happened at `bad`, where the good weights are, and what to try.
    fn divergence_message(
        &self,
        bad: StepHealth,
        in_a_row: usize,
        checkpoint: Option<&Path>,
    ) -> String {
        let c = &self.cfg;
        let row = match in_a_row {
            1 => String::new(),
            n => format!(
                ", {n} non-finite steps in a row (max_skips = {})",
                c.max_skips
            ),
        };
        let run = self.run.path().display();
        let resume = match checkpoint {
            Some(p) => format!(
                "The newest checkpoint, every value finite, is {}: `launch/train.sh --resume {run} --set lr=...` continues from it with a new setting.",
                p.display()
            ),
            None => "No checkpoint was written before it (`checkpoint_every` writes some).".into(),
        };
        let mut tries = vec![format!("a lower `lr` (now {})", number(c.lr))];
        if c.max_grad_norm == 0.0 {
            tries.push("gradient clipping (`max_grad_norm = 1.0`; now off)".into());
        }
        if c.precision == crate::config::Precision::Bf16 {
            tries.push("`precision = \"f32\"` (bf16 overflows sooner)".into());
        }
        if c.nonfinite == crate::health::NonFinitePolicy::Stop {
            tries.push("`nonfinite = \"skip\"` to drop such steps and go on".into());
        }
        format!(
            "training diverged at step {}: loss {}, gradient norm {}{row}. No such step was applied: the weights are those after step {}. {resume} Try {}.",
            bad.step,
            number(bad.loss),
            number(bad.grad_norm),
            bad.step - in_a_row,
            tries.join(", or ")
        )
    }
}

/// A number as a person reads it: 0.00005 and 2.5 as such, 1e30 and 4.2e13 in exponent form.
fn number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() || (1e-5..1e5).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}
