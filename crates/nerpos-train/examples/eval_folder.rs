//! Scores a saved model folder (a run's best/ or last/) on a split of a dataset with the trainer's own
//! evaluation, in one process: `eval_folder MODEL_DIR DATASET_DIR [dev|test|train]`. Prints one JSON
//! line. (tests/reference/eval_saved.py scores the same folder with the PyTorch reference's code.)

use candle_core::Device;
use nerpos_dist::Comm;
use nerpos_model::BertNerPos;
use nerpos_prep::{Columns, Dataset, Part, Split};
use nerpos_train::evaluate::{EvalData, EvalSpec, evaluate};

fn main() -> anyhow::Result<()> {
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
    let (report, _) = evaluate(&model, &mut Comm::Single, &data, &spec)?;
    println!(
        "{}",
        serde_json::json!({"model": model_dir, "split": format!("{split:?}").to_lowercase(), "micro_f1": report.micro.f1})
    );
    Ok(())
}
