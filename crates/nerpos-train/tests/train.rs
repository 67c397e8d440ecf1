//! The trainer end to end on the tiny world of `common`.

mod common;

use std::process::Output;
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
    // The POS tagger learnt the corpus's tags too (evaluation reports its accuracy). It is a probe of
    // the first layer of this random 2-layer encoder, reading what it holds: 0.87 (the tagger that
    // pulled the encoder towards POS reached 0.9, at the NER model's expense).
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(end.join("eval/test.json")).unwrap())
            .unwrap();
    let pos = eval["pos_accuracy"].as_f64().unwrap();
    assert!(pos > 0.8, "POS accuracy {pos}");
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

/// 2 processes × batch 8 = 1 process × batch 16 = 1 process × 2 accumulated batches of 8, after 40
/// steps, with dropout on as users train (the head's 0.2, the checkpoint's 0.1 in the encoder) and POS
/// dropout: every mask is keyed by the sentence, not by the process or the micro-batch.
#[test]
fn data_parallel_and_accumulation_equal_one_process() {
    data_parallel_and_accumulation_with("");
}

/// The same with the CRF head (its loss and gradients are the rows' own, summed in row order).
#[test]
fn data_parallel_and_accumulation_equal_one_process_with_a_crf_head() {
    data_parallel_and_accumulation_with("head = \"crf\"");
}

fn data_parallel_and_accumulation_with(head: &str) {
    let f = fixture(400);
    let common =
        format!("max_steps = 40\npos_dropout = 0.1\ntest_at_end = false\nlog_every = 5\n{head}");
    let common = common.as_str();
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
    // The default model on a corpus with POS tags trains a POS tagger: it is part of the promise.
    assert!(w2.contains_key("pos_tagger.weight"), "no POS tagger");
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
    sigterm_then_resume_with("");
}

/// The same with the CRF head: its scores are in the checkpoint like every parameter.
#[test]
fn sigterm_then_resume_equals_an_uninterrupted_run_with_a_crf_head() {
    sigterm_then_resume_with("head = \"crf\"");
}

fn sigterm_then_resume_with(head: &str) {
    let f = fixture(400);
    let extra = format!("max_steps = 60\neval_every = 30\ntest_at_end = false\n{head}");
    let extra = extra.as_str();
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
    // A change that breaks the saved place in the data is refused, naming the key.
    let refused = train(&["--resume", cut.to_str().unwrap(), "--set", "seed=7"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("`seed`"), "{err}");
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

/// The run's TensorBoard scalars, read back by TensorBoard's own event reader (and by ours): the
/// training curves of every log interval and dev F1 (micro and per type) of every evaluation, equal
/// to what metrics.jsonl and the eval reports hold.
#[test]
fn tensorboard_reads_the_runs_scalars() {
    let name = "tensorboard_reads_the_runs_scalars";
    let f = fixture(200);
    let run = f.dir.path().join("tb");
    ok(&train(&[
        "--config",
        config(
            &f,
            &run,
            "max_steps = 12\neval_every = 6\nlog_every = 4\ntest_at_end = false",
        )
        .to_str()
        .unwrap(),
    ]));
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(run.join("tb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let ours = nerpos_run::tensorboard::read_scalars(&files[0]).unwrap();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let losses: Vec<(u64, f64)> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        losses.iter().map(|l| l.0).collect::<Vec<_>>(),
        vec![4, 8, 12]
    );
    let tb_loss: Vec<(u64, f64)> = ours
        .iter()
        .filter(|(_, t, _)| t == "train/loss")
        .map(|(s, _, v)| (*s, f64::from(*v)))
        .collect();
    assert_eq!(tb_loss.len(), 3);
    for ((s1, a), (s2, b)) in losses.iter().zip(&tb_loss) {
        assert_eq!(s1, s2);
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
    }
    let dev = |step: u64| -> f64 {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join(format!("eval/step-{step:08}-dev.json"))).unwrap(),
        )
        .unwrap();
        v["micro"]["f1"].as_f64().unwrap()
    };
    let tb_f1: Vec<(u64, f32)> = ours
        .iter()
        .filter(|(_, t, _)| t == "dev/f1_micro")
        .map(|(s, _, v)| (*s, *v))
        .collect();
    assert_eq!(
        tb_f1,
        vec![(6, dev(6) as f32), (12, dev(12) as f32)],
        "dev F1 in TensorBoard"
    );
    assert!(ours.iter().any(|(_, t, _)| t == "dev/f1_per"));

    tensorboard_reads_them_alike(name, &run.join("tb"), ours);
}

/// Rank 0 logs at info, the other ranks at warn: each line once; log files carry no colour codes.
#[test]
fn only_rank_0_logs_progress() {
    let f = fixture(200);
    let run = f.dir.path().join("two");
    let cfg = config(
        &f,
        &run,
        "max_steps = 4\neval_every = 4\ntest_at_end = false\nlog_every = 2",
    );
    // NERPOS_LOG empty: the default levels (the tests' helper asks for info everywhere).
    let children = spawn_ranks(
        2,
        &["--config", cfg.to_str().unwrap()],
        &[("NERPOS_LOG", "")],
    );
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outputs {
        ok(o);
    }
    let err = |r: usize| String::from_utf8_lossy(&outputs[r].stderr).into_owned();
    assert_eq!(err(0).matches(" train ").count(), 2, "{}", err(0));
    assert!(
        !err(1).contains(" INFO "),
        "rank 1 logged info lines:\n{}",
        err(1)
    );
    let log0 = std::fs::read_to_string(run.join("logs/rank-0.log")).unwrap();
    assert!(
        log0.contains("dev @ step 4") && log0.contains(" train "),
        "{log0}"
    );
    assert!(!log0.contains('\u{1b}'), "colour codes in the log file");
    assert!(run.join("logs/rank-1.log").is_file());
}

/// Elastic resume: a run interrupted on 2 processes and resumed on 1 (and the reverse) follows the
/// uninterrupted run — the global batch (16 rows a step) is what the run keeps; each process's
/// micro-batches (at most `batch_size` = 8 rows) and their accumulation follow from the world size;
/// dropout on (the defaults), its masks keyed by the sentence.
#[test]
fn resumed_on_another_number_of_processes_equals_an_uninterrupted_run() {
    let f = fixture(400);
    let extra = "global_batch_size = 16\nmax_steps = 40\neval_every = 20\ntest_at_end = false";
    let full = f.dir.path().join("full");
    ok(&train(&[
        "--config",
        config(&f, &full, extra).to_str().unwrap(),
    ]));
    let reference = weights(&full.join("last"));

    for (before, after) in [(2, 1), (1, 2)] {
        let run = f.dir.path().join(format!("elastic-{before}-{after}"));
        let cfg = config(&f, &run, extra);
        let mut children = spawn_ranks(before, &["--config", cfg.to_str().unwrap()], &[]);
        wait_for_step(&run.join("metrics.jsonl"), 8, Duration::from_secs(60));
        // SAFETY: sending a signal to our own child process; the others learn it from the step's
        // reduction and stop at the same step.
        unsafe { libc_kill(children[0].id() as i32) };
        for c in children.drain(..) {
            let o = c.wait_with_output().unwrap();
            assert_eq!(
                o.status.code(),
                Some(75),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let resumed = spawn_ranks(after, &["--resume", run.to_str().unwrap()], &[]);
        for c in resumed {
            ok(&c.wait_with_output().unwrap());
        }
        assert_eq!(summary(&run)["steps"], 40);
        assert_eq!(summary(&run)["world_size"], after);
        let d = max_abs_diff(&reference, &weights(&run.join("last")));
        eprintln!(
            "{before} processes, interrupted, resumed on {after}: max |difference| = {d:.2e}"
        );
        assert!(d <= 1e-5, "{before} -> {after}: {d}");
    }
}

/// A global batch the run derived (1 process × 16 rows) is recorded in its checkpoints, not written
/// into the run's config.toml, and kept when the run is resumed on 2 processes with 8 rows each: the
/// result is the uninterrupted run's.
#[test]
fn a_derived_global_batch_is_kept_on_resume_and_not_written_into_the_config() {
    let f = fixture(400);
    let extra = "batch_size = 16\nmax_steps = 30\neval_every = 15\ntest_at_end = false";
    let full = f.dir.path().join("full");
    ok(&train(&[
        "--config",
        config(&f, &full, extra).to_str().unwrap(),
    ]));
    let run = f.dir.path().join("derived");
    let cfg = config(&f, &run, extra);
    let child = spawn_ranks(1, &["--config", cfg.to_str().unwrap()], &[]).remove(0);
    wait_for_step(&run.join("metrics.jsonl"), 6, Duration::from_secs(60));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc_kill(child.id() as i32) };
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(75));
    let written = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        !written.contains("global_batch"),
        "derived values in config.toml:\n{written}"
    );
    let resumed = spawn_ranks(
        2,
        &["--resume", run.to_str().unwrap(), "--set", "batch_size=8"],
        &[],
    );
    for c in resumed {
        ok(&c.wait_with_output().unwrap());
    }
    let d = max_abs_diff(&weights(&full.join("last")), &weights(&run.join("last")));
    eprintln!("1 process x 16, resumed on 2 x 8: max |difference| = {d:.2e}");
    assert!(d <= 1e-5, "{d}");
}

/// A corpus without POS tags (CoNLL `word tag`, `--pos-col none`): the trainer builds the model
/// without the POS embedding, saves it, and nerpos-predict tags and scores with it; asking for POS on
/// such a dataset is an error naming the key.
#[test]
fn a_corpus_without_pos_trains_saves_predicts_and_scores() {
    let (f, conll) = corpus_without_pos();

    let bad = f.dir.path().join("bad");
    let o = train(&[
        "--config",
        config(&f, &bad, "use_pos = true").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("use_pos") && err.contains("no POS"),
        "{err}"
    );

    let (best, meta) = train_to_best(&f, "run", "epochs = 4\neval_every = 25");
    assert_eq!(meta["use_pos"], false);
    assert!(weights(&best).keys().all(|k| !k.contains("pos_embedding")));
    let (_, f1) = predict_and_score(&best, &conll);
    assert!(f1 > 0.85, "F1 of nerpos-predict's tags {f1}");
}

/// Trains on the fixture's corpus with `extra` settings into run folder `name`; its test F1 must be
/// over 0.85. Returns the best model's folder and its nerpos.json.
fn train_to_best(f: &Fixture, name: &str, extra: &str) -> (std::path::PathBuf, serde_json::Value) {
    let run = f.dir.path().join(name);
    ok(&train(&[
        "--config",
        config(f, &run, extra).to_str().unwrap(),
    ]));
    let test = summary(&run)["test_f1"].as_f64().unwrap();
    assert!(test > 0.85, "test F1 {test}");
    let best = run.join("best");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("nerpos.json")).unwrap()).unwrap();
    (best, meta)
}

/// The CRF head end to end: trained (its loss), evaluated and saved (its scores in the model
/// folder, `head` in nerpos.json), and nerpos-predict decodes with Viterbi — every predicted
/// sentence follows IOB2, each word's probability is its label's marginal.
#[test]
fn a_crf_head_trains_decodes_and_predicts() {
    let (f, conll) = corpus_without_pos();
    let (best, meta) = train_to_best(&f, "crf", "epochs = 4\neval_every = 25\nhead = \"crf\"");
    assert_eq!(meta["head"], "crf");
    let w = weights(&best);
    assert!(
        ["crf.transitions", "crf.start", "crf.end"]
            .iter()
            .all(|k| w.contains_key(*k))
    );
    let (preds, f1) = predict_and_score(&best, &conll);
    assert!(f1 > 0.85, "F1 of nerpos-predict's tags {f1}");
    let labels: Vec<String> = meta["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    let allowed = nerpos_model::layers::crf::Allowed::iob2(&labels);
    for sentence in &preds {
        let path: Vec<u32> = sentence.iter().map(|p| p.label).collect();
        assert_eq!(allowed.first_violation(&path), None, "{path:?}");
        assert!(
            sentence
                .iter()
                .all(|p| p.prob > 0.0 && p.prob <= 1.0 + 1e-6)
        );
    }
}

/// A prepared CoNLL corpus of `word tag` lines (no POS column), and the file.
fn corpus_without_pos() -> (Fixture, std::path::PathBuf) {
    use nerpos_prep::corpus::{ConllColumns, Format, ReadOptions};

    let f = fixture(10);
    let conll = f.dir.path().join("nopos.conll");
    std::fs::write(&conll, conll_without_pos(600)).unwrap();
    let data = f.dir.path().join("nopos-data");
    let mut read = ReadOptions::new(Format::Conll);
    read.conll = ConllColumns {
        word: 0,
        pos: None,
        tag: 1,
    };
    let mut opts = nerpos_prep::PrepareOptions::new(
        nerpos_prep::Input::One(conll.clone()),
        read,
        f.model.clone(),
        data.clone(),
    );
    opts.max_len = 12;
    assert!(!nerpos_prep::prepare(&opts).unwrap().has_pos);
    let f = Fixture {
        dir: f.dir,
        model: f.model,
        data,
    };
    (f, conll)
}

/// nerpos-predict's predictions of the CoNLL file `conll` with the model in `best`, and their F1.
fn predict_and_score(
    best: &std::path::Path,
    conll: &std::path::Path,
) -> (Vec<Vec<nerpos_model::WordPrediction>>, f64) {
    let tagger =
        nerpos_predict::Tagger::load(best, &candle_core::Device::Cpu, Default::default()).unwrap();
    let args = nerpos_prep::args::ReadArgs {
        encoding: nerpos_prep::encoding::TextEncoding::Auto,
        word_col: 0,
        pos_col: nerpos_prep::args::OptionalColumn(None),
        tag_col: 1,
        tokens_key: None,
        tags_key: None,
        pos_key: None,
        tag_names: None,
        pos_names: None,
    };
    let sentences = nerpos_predict::read_input(
        conll,
        nerpos_predict::InputFormat::Corpus(nerpos_prep::corpus::Format::Conll),
        &args,
        None,
    )
    .unwrap();
    assert!(sentences.iter().all(|s| s.pos.is_empty()));
    let opts = nerpos_predict::TagOptions {
        batch_size: 32,
        overlap: 4,
        keep_logits: false,
        pos: nerpos_model::PosSource::Given,
    };
    let preds = tagger.tag(&sentences, opts).unwrap();
    let mut scoring = nerpos_predict::Scoring::new(&tagger.meta.labels).unwrap();
    scoring
        .add(&sentences, &preds, &tagger.meta.labels)
        .unwrap();
    let report = scoring.report().expect("the CoNLL file has gold tags");
    (preds, report.micro.f1)
}

/// The POS tagger is a probe: it learns from the encoder's output without sending gradient back and
/// outside the clipping of the rest, so the NER model trains exactly as without it — every weight but
/// the tagger's bit-identical after 120 steps with the default dropout and gradient clipping — while
/// the tagger itself learns (its POS accuracy reported).
#[test]
fn a_pos_tagger_leaves_the_ner_model_exactly_as_without_it() {
    let f = fixture(400);
    let extra = "max_steps = 120\neval_every = 20\ntest_at_end = false\nlr = 5e-3";
    let mut last = Vec::new();
    for (name, tagger) in [("with", "pos_tagger = 0.5"), ("without", "pos_tagger = 0")] {
        let run = f.dir.path().join(name);
        ok(&train(&[
            "--config",
            config(&f, &run, &format!("{extra}\n{tagger}"))
                .to_str()
                .unwrap(),
        ]));
        last.push((run.clone(), weights(&run.join("last"))));
    }
    let (with, without) = (&last[0].1, &last[1].1);
    assert!(with.keys().any(|k| k.starts_with("pos_tagger")));
    for (k, v) in without {
        assert_eq!(v, &with[k], "{k} differs with the tagger");
    }
    let acc = |step: usize| -> f64 {
        let path = last[0].0.join(format!("eval/step-{step:08}-dev.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        v["pos_accuracy"].as_f64().unwrap()
    };
    let (early, late) = (acc(20), acc(120));
    eprintln!("POS accuracy of the probe: {early:.4} at step 20, {late:.4} at step 120");
    assert!(
        late > early + 0.1,
        "the tagger did not learn: {early} → {late}"
    );
}
