//! Scores a saved model folder (a run's best/ or last/) on a split of a dataset with the trainer's own
//! evaluation, in one process: `eval_folder MODEL_DIR DATASET_DIR [dev|test|train]`. Prints one JSON
//! line with the F1 and the evaluation's speed (tests/bench/train.sh uses it; tests/reference/eval_saved.py
//! scores the same folder with the PyTorch reference's code).

use candle_core::Device;
use nerpos_dist::Comm;
use nerpos_model::BertNerPos;
use nerpos_prep::{Columns, Dataset, Part, Split};
use nerpos_train::evaluate::{EvalData, EvalSpec, evaluate};

fn main() -> anyhow::Result<()> {
    nerpos_model::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        anyhow::bail!("usage: eval_folder MODEL_DIR DATASET_DIR [dev|test|train]");
    }
    let (model_dir, data_dir) = (
        std::path::Path::new(&args[1]),
        std::path::Path::new(&args[2]),
    );
    let split = match args.get(3).map(String::as_str) {
        Some("test") => Split::Test,
        Some("train") => Split::Train,
        _ => Split::Dev,
    };
    let dev = Device::Cpu;
    let (model, meta) = BertNerPos::load(model_dir, &dev)?;
    let ds = Dataset::open(data_dir)?;
    let data = EvalData::new(ds.read_all(split, Part::WHOLE, Columns::Model)?);
    let spec = EvalSpec {
        labels: meta.labels.clone(),
        batch_rows: 64,
        device: dev.clone(),
    };
    // Warm-up (thread pool, allocator), then the timed evaluation of the whole split.
    let warm = EvalData::new(data.rows.iter().take(128).cloned().collect());
    evaluate(&model, &mut Comm::Single, &warm, &spec)?;
    if std::env::var("NERPOS_PROFILE").is_ok_and(|v| v == "1") {
        nerpos_model::profile::enable();
    }
    let t0 = std::time::Instant::now();
    let report = evaluate(&model, &mut Comm::Single, &data, &spec)?.report;
    let secs = t0.elapsed().as_secs_f64();
    if nerpos_model::profile::enabled() {
        eprint!("{}", nerpos_model::profile::table(secs));
    }
    println!(
        "{}",
        serde_json::json!({"model": model_dir, "split": format!("{split:?}").to_lowercase(),
            "micro_f1": report.micro.f1, "eval_sentences": data.sentences.len(),
            "eval_seconds": secs, "eval_sentences_per_s": data.sentences.len() as f64 / secs})
    );
    Ok(())
}
