use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use candle_core::Device;
use clap::Parser;
use nerpos_predict::{
    InputFormat, OutputFormat, Tagger, read_input, score, write_npy, write_predictions,
};
use nerpos_prep::args::ReadArgs;
use nerpos_prep::tags::Scheme;
use nerpos_run::atomic::write_atomic_with;

/// Tag a CoNLL, GMB or JSON Lines file (words, and POS tags if the model uses them) or plain text (one sentence per line) with a
/// fine-tuned BERT+POS model folder; write CoNLL or JSON Lines.
#[derive(Parser)]
#[command(name = "nerpos-predict", version)]
struct Cli {
    /// Fine-tuned model folder (written by nerpos-train: nerpos.json, model.safetensors, tokenizer).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    #[arg(long, value_enum)]
    format: InputFormat,
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = OutputFormat::Conll)]
    output_format: OutputFormat,
    /// Also write each word's first-sub-word logits as a float32 .npy array [words, labels].
    #[arg(long, value_name = "FILE.npy")]
    logits: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Words of context repeated between the windows of sentences longer than the model's max length.
    #[arg(long, default_value_t = 16)]
    window_overlap: usize,
    #[command(flatten)]
    read: ReadArgs,
    /// Tag scheme of the input's gold tags: convert them to IOB2 as nerpos-prep does (default: keep
    /// them as written).
    #[arg(long, value_enum)]
    scheme: Option<Scheme>,
    /// `cpu`, or `cuda` / `cuda:N` (with the cuda feature).
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() -> ExitCode {
    nerpos_model::keep_freed_memory();
    nerpos_run::cli::init_logging("info");
    nerpos_run::cli::exit(run(Cli::parse()).map(|()| ExitCode::SUCCESS))
}

fn device(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .map(str::parse)
                .transpose()
                .context("device ordinal")?
                .unwrap_or(0);
            Device::new_cuda(ordinal)
                .with_context(|| format!("opening {s} (built without the cuda feature?)"))
        }
        other => bail!("--device {other:?}: expected cpu, cuda or cuda:N"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dev = device(&cli.device)?;
    let tagger = Tagger::load(&cli.model, &dev)?;
    let sentences = read_input(&cli.input, cli.format, &cli.read, cli.scheme)?;
    if tagger.meta.use_pos && sentences.iter().all(|s| s.pos.is_empty()) {
        tracing::warn!(
            "the model was trained with POS tags but the input has none: every POS is <unk>, \
             which costs accuracy"
        );
    }
    let words: usize = sentences.iter().map(|s| s.words.len()).sum();
    tracing::info!(
        sentences = sentences.len(),
        words,
        "read {}",
        cli.input.display()
    );
    let started = std::time::Instant::now();
    let preds = tagger.tag(
        &sentences,
        cli.batch_size,
        cli.window_overlap,
        cli.logits.is_some(),
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    )?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(secs, words_per_sec = words as f64 / secs, "tagged");
    let labels = &tagger.meta.labels;
    write_atomic_with(&cli.out, |w| {
        write_predictions(w, cli.output_format, &sentences, &preds, labels)
    })?;
    if let Some(path) = &cli.logits {
        let data: Vec<f32> = preds
            .iter()
            .flatten()
            .flat_map(|p| p.logits.clone().unwrap_or_default())
            .collect();
        write_atomic_with(path, |w| write_npy(w, &data, words, labels.len()))?;
    }
    // With gold tags, the seqeval report of this run.
    if let Some(report) = score(&sentences, &preds, labels)? {
        eprint!("{}", report.to_seqeval_string(4));
    }
    eprintln!("wrote {}", cli.out.display());
    Ok(())
}
