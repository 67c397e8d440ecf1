//! A diverging run (`nonfinite`): a NaN at a chosen step (the trainer's test hook poisons that step's
//! loss and a gradient before the all-reduce) stops the run cleanly or is skipped, every file stays
//! readable, and the weights on disk are finite. Each test also runs the GPU's way of checking —
//! numbers kept as tensors and judged when read, the update left out by the device guard — on the
//! CPU (`NERPOS_TEST_DEFER_CHECKS=1`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use nerpos_run::MetricsLine;

const POISON: &str = "NERPOS_TEST_NONFINITE";
const DIVERGED: i32 = nerpos_run::EXIT_DIVERGED as i32;
const DEFER: &str = "NERPOS_TEST_DEFER_CHECKS";

fn env(poison: &str, deferred: bool) -> Vec<(&str, &str)> {
    let mut e = vec![(POISON, poison)];
    if deferred {
        e.push((DEFER, "1"));
    }
    e
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The names of the run's checkpoint folders, oldest first.
fn checkpoints(run: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("step-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every tensor of a checkpoint's file, exactly.
fn tensors(path: PathBuf) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn all_finite(w: &HashMap<String, Vec<f32>>) -> bool {
    w.values().flatten().all(|x| x.is_finite())
}

#[test]
fn a_nan_stops_the_run_and_its_last_checkpoint_resumes_to_the_uninterrupted_run() {
    stop_then_resume(false);
}

#[test]
fn a_nan_stops_the_run_and_its_last_checkpoint_resumes_to_the_uninterrupted_run_gpu_path() {
    stop_then_resume(true);
}

/// Step 9 of 24 is NaN (checkpoints at 6, 12, ...): the run stops there with exit code 65 and the
/// message, keeps the step-6 checkpoint as its newest, writes only finite weights, says `diverged`
/// in status.json and summary.json alike; `--resume` then gives the uninterrupted run's weights.
/// On the GPU path the NaN is found at the next read (step 12, the log line) and the guard has left
/// steps 9–12 out: the weights it leaves are those after step 8 all the same.
fn stop_then_resume(deferred: bool) {
    let f = fixture(400);
    let extra = "max_steps = 24\neval_every = 6\nlog_every = 4\ntest_at_end = false";
    // The uninterrupted run checks the same way (the GPU path holds the clipping factor in f32).
    let full = f.dir.path().join("full");
    let same_way: &[(&str, &str)] = if deferred { &[(DEFER, "1")] } else { &[] };
    ok(&train_with(
        &["--config", config(&f, &full, extra).to_str().unwrap()],
        same_way,
    ));

    let cut = f.dir.path().join("cut");
    let cfg = config(&f, &cut, extra);
    let o = train_with(&["--config", cfg.to_str().unwrap()], &env("9", deferred));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(DIVERGED), "{err}");
    for part in [
        "training diverged at step 9",
        "weights are those after step 8",
        "checkpoints/step-00000006",
        "--resume",
        "a lower `lr`",
    ] {
        assert!(err.contains(part), "no {part:?} in:\n{err}");
    }
    assert_eq!(checkpoints(&cut), vec!["step-00000006"]);
    let status = json(&cut.join("status.json"));
    assert_eq!(status["status"], "diverged");
    assert!(status["message"].as_str().unwrap().contains("step 9"));
    let summary = json(&cut.join("summary.json"));
    assert_eq!(summary["status"], "diverged", "{summary}");
    assert_eq!(summary["diverged"]["step"], 9);
    assert_eq!(summary["steps"], 8);
    assert!(
        summary["diverged"]["checkpoint"]
            .as_str()
            .unwrap()
            .ends_with("step-00000006")
    );
    for folder in ["best", "last"] {
        assert!(all_finite(&weights(&cut.join(folder))), "{folder}/");
    }
    let ckpt = cut.join("checkpoints/step-00000006");
    assert!(all_finite(&tensors(ckpt.join("weights.safetensors"))));
    assert!(all_finite(&tensors(ckpt.join("optimizer.safetensors"))));

    // Every file reads: metrics.jsonl (NaN as null), the curves, TensorBoard.
    let lines = MetricsLine::read_all(&cut.join("metrics.jsonl")).unwrap();
    let last = lines.last().unwrap();
    assert_eq!(last.skipped_steps, 1, "{last:?}");
    let svg = std::fs::read_to_string(cut.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    if !deferred {
        // Found at once: the interval of step 9 alone is logged, its loss NaN.
        assert_eq!(last.step, 9);
        assert!(last.loss.is_nan(), "{last:?}");
        assert!(svg.contains("non-finite point(s) not drawn"), "{svg}");
        let tb = tb_scalars(&cut);
        assert!(
            tb.iter()
                .any(|(s, t, v)| *s == 9 && t == "train/loss" && v.is_nan())
        );
        tensorboard_reads_them_alike("nonfinite::stop_then_resume", &cut.join("tb"), tb);
    } else {
        assert_eq!(last.step, 12, "found at the next read");
    }

    let resumed = train_with(&["--resume", cut.to_str().unwrap()], same_way);
    ok(&resumed);
    let d = max_abs_diff(&weights(&full.join("last")), &weights(&cut.join("last")));
    assert!(d <= 1e-6, "resumed run vs uninterrupted: {d}");
    let summary = json(&cut.join("summary.json"));
    assert_eq!(
        (summary["status"].as_str(), summary["steps"].as_u64()),
        (Some("finished"), Some(24))
    );
    assert!(summary.get("diverged").is_none());
}

/// The CPU's way (found at step 9) and the GPU's (found at step 12, steps 9–12 left out by the
/// sticky guard) leave the same weights: those after step 8.
#[test]
fn both_ways_of_checking_leave_the_weights_of_the_last_good_step() {
    let f = fixture(400);
    let extra = "max_steps = 24\neval_every = 6\nlog_every = 4\ntest_at_end = false";
    let mut last = Vec::new();
    for deferred in [false, true] {
        let run = f.dir.path().join(format!("deferred-{deferred}"));
        let cfg = config(&f, &run, extra);
        let o = train_with(&["--config", cfg.to_str().unwrap()], &env("9", deferred));
        assert_eq!(o.status.code(), Some(DIVERGED), "{}", stderr(&o));
        last.push(weights(&run.join("last")));
    }
    let d = max_abs_diff(&last[0], &last[1]);
    // The GPU path holds the clipping factor in f32: rounding, not three more updates (~1e-3).
    assert!(d <= 1e-5, "{d}");
}

fn tb_scalars(run: &Path) -> Vec<(u64, String, f32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(run.join("tb")).unwrap() {
        out.extend(nerpos_run::tensorboard::read_scalars(&e.unwrap().path()).unwrap());
    }
    out
}

#[test]
fn skip_leaves_weights_and_moments_as_they_were() {
    skip_one_step(false);
}

#[test]
fn skip_leaves_weights_and_moments_as_they_were_gpu_path() {
    skip_one_step(true);
}

/// `skip`: step 5 is dropped — the checkpoint after it holds exactly the weights and AdamW moments
/// (and step count) of the one before it — counted in metrics.jsonl, and the run finishes.
fn skip_one_step(deferred: bool) {
    let f = fixture(200);
    let run = f.dir.path().join("skip");
    let extra = "max_steps = 8\ncheckpoint_every = 1\nkeep_checkpoints = 20\ntest_at_end = false\nnonfinite = \"skip\"";
    let cfg = config(&f, &run, extra);
    let o = train_with(&["--config", cfg.to_str().unwrap()], &env("5", deferred));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("non-finite step skipped"), "{err}");
    let ckpt = |step: usize| run.join(format!("checkpoints/step-{step:08}"));
    for file in ["weights.safetensors", "optimizer.safetensors"] {
        assert_eq!(
            tensors(ckpt(4).join(file)),
            tensors(ckpt(5).join(file)),
            "{file}: step 5 changed it"
        );
        assert_ne!(tensors(ckpt(5).join(file)), tensors(ckpt(6).join(file)));
    }
    let adam = |step| json(&ckpt(step).join("state.json"))["adam_steps"].as_u64();
    assert_eq!((adam(4), adam(5), adam(6)), (Some(4), Some(4), Some(5)));
    let lines = MetricsLine::read_all(&run.join("metrics.jsonl")).unwrap();
    let skipped: Vec<(usize, usize)> = lines.iter().map(|l| (l.step, l.skipped_steps)).collect();
    assert_eq!(skipped.iter().map(|s| s.1).sum::<usize>(), 1, "{skipped:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.step == 5 && l.skipped_steps == 1 && l.loss.is_nan())
    );
    assert_eq!(json(&run.join("summary.json"))["status"], "finished");
}

/// `max_skips` non-finite steps in a row end a `skip` run as `stop` does.
#[test]
fn too_many_skips_in_a_row_stop_the_run() {
    let f = fixture(200);
    let run = f.dir.path().join("skips");
    let extra = "max_steps = 8\ntest_at_end = false\nnonfinite = \"skip\"\nmax_skips = 2";
    let cfg = config(&f, &run, extra);
    let o = train_with(&["--config", cfg.to_str().unwrap()], &env("3,4", false));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(DIVERGED), "{err}");
    assert!(err.contains("2 non-finite steps in a row"), "{err}");
    assert!(err.contains("weights are those after step 2"), "{err}");
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["diverged"]["step"], 4);
    assert_eq!(summary["diverged"]["skipped_in_a_row"], 2);
    assert!(summary["diverged"]["checkpoint"].is_null(), "{summary}");
}

#[test]
fn two_processes_stop_at_the_same_step() {
    two_processes(false);
}

#[test]
fn two_processes_stop_at_the_same_step_gpu_path() {
    two_processes(true);
}

/// Only rank 1's step 7 is poisoned: the sums every rank shares make both stop at step 7, with the
/// diverged exit code, within a bounded time.
fn two_processes(deferred: bool) {
    let f = fixture(400);
    let run = f.dir.path().join("two");
    let cfg = config(
        &f,
        &run,
        "max_steps = 20\neval_every = 5\ntest_at_end = false",
    );
    let t = Instant::now();
    let children = spawn_ranks(
        2,
        &["--config", cfg.to_str().unwrap()],
        &env("7@1", deferred),
    );
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    assert!(t.elapsed() < Duration::from_secs(120), "{:?}", t.elapsed());
    for (rank, o) in outs.iter().enumerate() {
        assert_eq!(
            o.status.code(),
            Some(DIVERGED),
            "rank {rank}: {}",
            stderr(o)
        );
    }
    assert!(
        stderr(&outs[0]).contains("training diverged at step 7"),
        "{}",
        stderr(&outs[0])
    );
    let summary = json(&run.join("summary.json"));
    assert_eq!(
        (
            summary["diverged"]["step"].as_u64(),
            summary["world_size"].as_u64()
        ),
        (Some(7), Some(2))
    );
    assert_eq!(checkpoints(&run), vec!["step-00000005"]);
}
