use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use candle_core::Device;
use clap::Parser;
use indicatif::ProgressBar;
use nerpos_model::PosSource;
use nerpos_predict::{
    InputFormat, OutputFormat, Precision, Scoring, Sentence, TagOptions, Tagger, TextLines,
    read_input, write_npy, write_predictions,
};
use nerpos_prep::args::ReadArgs;
use nerpos_prep::tags::Scheme;
use nerpos_run::atomic::write_atomic_with;

/// Tag raw text (one sentence or paragraph per line: entities come out with character offsets) or a
/// CoNLL, GMB or JSON Lines file (words, and POS tags if the model uses them) with a fine-tuned
/// BERT+POS model folder; write CoNLL or JSON Lines.
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
    /// Also write each word's first-sub-word logits as a float32 .npy array [words, labels] (held in
    /// memory until the end).
    #[arg(long, value_name = "FILE.npy")]
    logits: Option<PathBuf>,
    /// Rows (sentence windows) per batch: larger batches keep the matrix products efficient (on 2 CPU
    /// cores 256 rows tag 1.26× faster than 64).
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Words of context repeated between the windows of sentences longer than the model's max length.
    #[arg(long, default_value_t = 16)]
    window_overlap: usize,
    /// Where the POS tags come from: `auto` (the input's when it has them, else the model's POS
    /// tagger when it has one), `input`, or `model` (the tagger's, even when the input has tags).
    #[arg(long, value_enum, default_value_t = PosFrom::Auto)]
    pos: PosFrom,
    #[command(flatten)]
    read: ReadArgs,
    /// Tag scheme of the input's gold tags: convert them to IOB2 as nerpos-prep does (default: keep
    /// them as written).
    #[arg(long, value_enum)]
    scheme: Option<Scheme>,
    /// `cpu`, or `cuda` / `cuda:N` (with the cuda feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `bf16`: weights and activations in bf16 (the fast path on a GPU; on the CPU slower than f32,
    /// for measuring what bf16 changes).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PosFrom {
    Auto,
    Input,
    Model,
}

/// Sentences are read, tagged and written in chunks of about this many words (or bytes of text, for
/// lines of few words): memory stays bounded however large the input, and each chunk is long enough
/// to batch by length.
const CHUNK_WORDS: usize = 32_768;
const CHUNK_BYTES: usize = 4 << 20;

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

/// The input: raw text line by line, or a tokenised corpus read whole.
enum Source {
    Text {
        lines: TextLines,
        size: u64,
    },
    Corpus {
        sentences: std::vec::IntoIter<Sentence>,
        total: usize,
        has_pos: bool,
    },
}

impl Source {
    fn open(cli: &Cli) -> anyhow::Result<Source> {
        if cli.format == InputFormat::Text {
            let size = std::fs::metadata(&cli.input)
                .with_context(|| format!("reading {}", cli.input.display()))?
                .len();
            let lines = TextLines::open(&cli.input, cli.read.encoding)?;
            return Ok(Source::Text { lines, size });
        }
        let all = read_input(&cli.input, cli.format, &cli.read, cli.scheme)?;
        let words: usize = all.iter().map(|s| s.words.len()).sum();
        tracing::info!(sentences = all.len(), words, "read {}", cli.input.display());
        Ok(Source::Corpus {
            has_pos: all.iter().any(|s| !s.pos.is_empty()),
            total: all.len(),
            sentences: all.into_iter(),
        })
    }

    fn has_pos(&self) -> bool {
        matches!(self, Source::Corpus { has_pos: true, .. })
    }

    /// The next sentences, about [`CHUNK_WORDS`] words of them; empty at the end.
    fn next_chunk(&mut self) -> anyhow::Result<Vec<Sentence>> {
        let mut chunk = Vec::new();
        let (mut words, mut bytes) = (0, 0);
        while words < CHUNK_WORDS && bytes < CHUNK_BYTES {
            let next = match self {
                Source::Text { lines, .. } => lines.next_sentence()?,
                Source::Corpus { sentences, .. } => sentences.next(),
            };
            let Some(s) = next else { break };
            words += s.words.len().max(1);
            bytes += s.text.len();
            chunk.push(s);
        }
        Ok(chunk)
    }

    /// A progress bar over the input's bytes (text) or sentences (a corpus).
    fn bar(&self, visible: bool) -> ProgressBar {
        if !visible {
            return ProgressBar::hidden();
        }
        match self {
            Source::Text { size, .. } => ProgressBar::new(*size).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            ),
            Source::Corpus { total, .. } => {
                ProgressBar::new(*total as u64).with_style(nerpos_run::cli::count_style())
            }
        }
        .with_message("tagging")
    }

    fn done(&self, sentences: usize) -> u64 {
        match self {
            Source::Text { lines, .. } => lines.bytes_read,
            Source::Corpus { .. } => sentences as u64,
        }
    }
}

/// Where the POS ids come from, as `--pos` and what the input and the model have say.
fn pos_source(from: PosFrom, tagger: &Tagger, input_has_pos: bool) -> anyhow::Result<PosSource> {
    let has_tagger = tagger.model.has_pos_tagger();
    if !tagger.meta.use_pos {
        if from == PosFrom::Model {
            bail!("--pos model: the model reads no POS tags (trained without them)");
        }
        return Ok(PosSource::Given);
    }
    Ok(match from {
        PosFrom::Model if !has_tagger => bail!(
            "--pos model: the model has no POS tagger (it was trained with pos_tagger = 0 or before \
             POS tagging existed); use --pos input"
        ),
        PosFrom::Model => PosSource::Predicted,
        PosFrom::Auto if !input_has_pos && has_tagger => {
            tracing::info!("the input has no POS tags: the model's POS tagger supplies them");
            PosSource::Predicted
        }
        _ => {
            if !input_has_pos {
                tracing::warn!(
                    "the model was trained with POS tags but the input has none and the model has \
                     no POS tagger: every POS is <unk>, which costs accuracy"
                );
            }
            PosSource::Given
        }
    })
}

/// What a pass over the input counted.
#[derive(Default)]
struct Tally {
    sentences: usize,
    words: usize,
    logits: Vec<f32>,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    nerpos_kernels::Tier::check_env()?;
    let dev = device(&cli.device)?;
    if dev.is_cpu() {
        tracing::info!("CPU {}", nerpos_kernels::tier::describe());
    }
    let tagger = Tagger::load(&cli.model, &dev, cli.precision)?;
    let mut source = Source::open(&cli)?;
    let opts = TagOptions {
        batch_size: cli.batch_size,
        overlap: cli.window_overlap,
        keep_logits: cli.logits.is_some(),
        pos: pos_source(cli.pos, &tagger, source.has_pos())?,
    };
    let labels = &tagger.meta.labels;
    let bar = source.bar(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let mut scoring = Scoring::new(labels)?;
    let mut tally = Tally::default();
    if std::env::var("NERPOS_PROFILE").is_ok_and(|v| v == "1") {
        nerpos_model::profile::enable();
    }
    let started = std::time::Instant::now();
    write_atomic_with(&cli.out, |w| {
        loop {
            let mut chunk = nerpos_model::profile::timed("read+split", || source.next_chunk())?;
            if chunk.is_empty() {
                break;
            }
            let out = Out {
                format: cli.output_format,
                scoring: &mut scoring,
                tally: &mut tally,
            };
            tag_chunk(w, &tagger, opts, &mut chunk, out)?;
            bar.set_position(source.done(tally.sentences));
        }
        if tally.words == 0 {
            bail!(
                "{}: no words (expected one sentence per line)",
                cli.input.display()
            );
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    finish(&cli, &source, &tally, secs);
    if nerpos_model::profile::enabled() {
        eprint!("{}", nerpos_model::profile::table(secs));
    }
    if let Some(path) = &cli.logits {
        write_atomic_with(path, |w| {
            write_npy(w, &tally.logits, tally.words, labels.len())
        })?;
    }
    // With gold tags, the seqeval report of this run.
    if let Some(report) = scoring.report() {
        eprint!("{}", report.to_seqeval_string(4));
    }
    eprintln!("wrote {}", cli.out.display());
    Ok(())
}

/// Where a tagged chunk goes: the output file's format, the running seqeval counts (with gold tags)
/// and the tally.
struct Out<'a> {
    format: OutputFormat,
    scoring: &'a mut Scoring,
    tally: &'a mut Tally,
}

/// Tags one chunk and writes it. Predicted POS replace the input's (absent) ones in the output.
fn tag_chunk(
    w: &mut dyn std::io::Write,
    tagger: &Tagger,
    opts: TagOptions,
    chunk: &mut [Sentence],
    out: Out,
) -> anyhow::Result<()> {
    let labels = &tagger.meta.labels;
    let preds = tagger.tag(chunk, opts)?;
    if opts.pos == PosSource::Predicted {
        for (s, p) in chunk.iter_mut().zip(&preds) {
            let name = |w: &nerpos_model::WordPrediction| {
                w.pos.map_or("<unk>", |id| tagger.pos_name(id)).to_owned()
            };
            s.pos = p.iter().map(name).collect();
        }
    }
    nerpos_model::profile::timed("write", || {
        write_predictions(w, out.format, chunk, &preds, labels)?;
        out.scoring.add(chunk, &preds, labels)
    })?;
    let tally = out.tally;
    tally.sentences += chunk.len();
    tally.words += chunk.iter().map(|s| s.words.len()).sum::<usize>();
    if opts.keep_logits {
        let all = preds.iter().flatten();
        tally
            .logits
            .extend(all.flat_map(|p| p.logits.clone().unwrap_or_default()));
    }
    Ok(())
}

/// Logs what was tagged, how fast, and what the text reader removed.
fn finish(cli: &Cli, source: &Source, tally: &Tally, secs: f64) {
    if let Source::Text { lines, .. } = source
        && let (removed @ 1.., Some(line)) = lines.removed
    {
        tracing::warn!(
            removed,
            first_line = line,
            "removed control characters from {} (as the tokenizer does)",
            cli.input.display()
        );
    }
    tracing::info!(
        sentences = tally.sentences,
        words = tally.words,
        secs,
        words_per_sec = tally.words as f64 / secs,
        "tagged {}",
        cli.input.display()
    );
}
