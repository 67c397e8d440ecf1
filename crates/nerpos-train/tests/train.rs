//! The trainer end to end on the tiny world of `common`.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn learns_the_synthetic_corpus() {
    let f = fixture(600);
    let start = f.dir.path().join("start");
    ok(&train(&[
        "--config",
        config(&f, &start, "max_steps = 1\neval_every = 1")
            .to_str()
            .unwrap(),
    ]));
    let end = f.dir.path().join("end");
    ok(&train(&[
        "--config",
        config(&f, &end, "epochs = 4\neval_every = 25")
            .to_str()
            .unwrap(),
    ]));
    let (f0, f1) = (
        summary(&start)["best_dev_f1"].as_f64().unwrap(),
        summary(&end)["best_dev_f1"].as_f64().unwrap(),
    );
    assert!(f1 > 0.9 && f1 - f0 > 0.5, "dev F1 from {f0} to {f1}");
    let test = summary(&end)["test_f1"].as_f64().unwrap();
    assert!(test > 0.85, "test F1 {test}");
    for f in [
        "config.toml",
        "metrics.jsonl",
        "curves.svg",
        "best/model.safetensors",
        "best/nerpos.json",
        "best/vocab.txt",
        "last/config.json",
        "eval/test.json",
    ] {
        assert!(end.join(f).is_file(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(end.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for key in [
        "step",
        "epoch",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "step_s",
        "allreduce_s",
        "data_wait_s",
    ] {
        assert!(first.get(key).is_some(), "metrics.jsonl lacks {key}");
    }
}

/// 2 processes × batch 8 = 1 process × batch 16 = 1 process × 2 accumulated batches of 8 (dropout
/// off), after 20 steps.
#[test]
fn data_parallel_and_accumulation_equal_one_process() {
    let f = fixture(400);
    let common =
        "max_steps = 20\ndropout = 0.0\nencoder_dropout = 0.0\ntest_at_end = false\nlog_every = 5";
    let one = f.dir.path().join("one");
    ok(&train(&[
        "--config",
        config(&f, &one, common).to_str().unwrap(),
        "--set",
        "batch_size=16",
    ]));
    let accum = f.dir.path().join("accum");
    ok(&train(&[
        "--config",
        config(&f, &accum, common).to_str().unwrap(),
        "--set",
        "grad_accum=2",
    ]));
    let two = f.dir.path().join("two");
    let cfg = config(&f, &two, common);
    let children = spawn_ranks(2, &["--config", cfg.to_str().unwrap()], &[]);
    for c in children {
        let o = c.wait_with_output().unwrap();
        ok(&o);
    }
    let (w1, wa, w2) = (
        weights(&one.join("last")),
        weights(&accum.join("last")),
        weights(&two.join("last")),
    );
    let d2 = max_abs_diff(&w1, &w2);
    let da = max_abs_diff(&w1, &wa);
    eprintln!(
        "max |1 process - 2 processes| = {d2:.2e}, max |batch 16 - 2 x 8 accumulated| = {da:.2e}"
    );
    assert!(d2 <= 1e-5 && da <= 1e-5, "{d2} {da}");
    let start = weights(&f.model);
    let key = "encoder.layer.0.attention.self.query.weight";
    assert_ne!(start[key], w1[key], "training changed the weights");
}

fn wait_for_step(metrics: &std::path::Path, step: u64, limit: Duration) {
    let t = Instant::now();
    while t.elapsed() < limit {
        let last = std::fs::read_to_string(metrics)
            .unwrap_or_default()
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|v| v["step"].as_u64());
        if last.is_some_and(|s| s >= step) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no step {step} in {} within {limit:?}", metrics.display());
}

/// SIGTERM writes a checkpoint and exits 75; --resume finishes; the result equals an uninterrupted run.
#[test]
fn sigterm_then_resume_equals_an_uninterrupted_run() {
    let f = fixture(400);
    let extra = "max_steps = 60\neval_every = 30\ntest_at_end = false";
    let full = f.dir.path().join("full");
    ok(&train(&[
        "--config",
        config(&f, &full, extra).to_str().unwrap(),
    ]));

    let cut = f.dir.path().join("cut");
    let cfg = config(&f, &cut, extra);
    let child = spawn_ranks(1, &["--config", cfg.to_str().unwrap()], &[]).remove(0);
    wait_for_step(&cut.join("metrics.jsonl"), 12, Duration::from_secs(60));
    let pid = child.id();
    // SAFETY: sending a signal to our own child process.
    unsafe { libc_kill(pid as i32) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(cut.join("checkpoints").read_dir().unwrap().count() >= 1);
    assert!(!cut.join("summary.json").exists());
    ok(&train(&["--resume", cut.to_str().unwrap()]));
    let d = max_abs_diff(&weights(&full.join("last")), &weights(&cut.join("last")));
    eprintln!("max |uninterrupted - interrupted and resumed| = {d:.2e}");
    assert!(d <= 1e-6, "{d}");
    assert_eq!(summary(&cut)["steps"], 60);
}

unsafe fn libc_kill(pid: i32) {
    // SIGTERM = 15
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    unsafe { kill(pid, 15) };
}

/// A rank killed mid-run: the other exits non-zero within 60 s, naming it.
#[test]
fn a_dead_peer_stops_the_run() {
    let f = fixture(400);
    let run = f.dir.path().join("dead");
    let cfg = config(&f, &run, "epochs = 50\ntest_at_end = false");
    let mut children = spawn_ranks(
        2,
        &["--config", cfg.to_str().unwrap()],
        &[("NERPOS_DIST_TIMEOUT", "20")],
    );
    wait_for_step(&run.join("metrics.jsonl"), 3, Duration::from_secs(60));
    let mut victim = children.remove(1);
    victim.kill().unwrap();
    let _ = victim.wait();
    let t = Instant::now();
    let o = children.remove(0).wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rank 1"), "{err}");
}

#[test]
fn refuses_a_dataset_of_another_tokenizer_and_bad_config() {
    let f = fixture(50);
    let other = f.dir.path().join("other_tok");
    std::fs::create_dir_all(&other).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(f.model.join(file), other.join(file)).unwrap();
    }
    let vocab = std::fs::read_to_string(f.model.join("vocab.txt"))
        .unwrap()
        .replace("paris", "parís");
    std::fs::write(other.join("vocab.txt"), vocab).unwrap();
    let run = f.dir.path().join("r");
    let o = train(&[
        "--config",
        config(&f, &run, "").to_str().unwrap(),
        "--set",
        &format!("model={:?}", other),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another tokenizer"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = train(&[
        "--config",
        config(&f, &run, "").to_str().unwrap(),
        "--set",
        "lr=-1",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("`lr`"));
    let o = train(&[
        "--config",
        config(&f, &run, "").to_str().unwrap(),
        "--set",
        "learning_rate=1e-3",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("learning_rate"));
}
