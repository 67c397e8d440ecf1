use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use nerpos_prep::corpus::{ConllColumns, Format};
use nerpos_prep::encoding::TextEncoding;
use nerpos_prep::inspect::{Inspection, summary};
use nerpos_prep::manifest::LabelSubwords;
use nerpos_prep::{Dataset, PrepareOptions, prepare, split};

/// Turn a token-level NER corpus (GMB CSV or CoNLL) into a sharded Parquet dataset of sub-word ids,
/// labels and POS ids aligned for a BERT tokenizer, with a manifest.
#[derive(Parser)]
#[command(
    name = "nerpos-prep",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    prepare: PrepareArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Summarise a dataset: manifest, row-length histogram, label and POS counts (checksums verified).
    Inspect {
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct PrepareArgs {
    /// Input format.
    #[arg(long, value_enum, required = true)]
    format: Option<Format>,
    /// Corpus file.
    #[arg(long, required = true, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Hugging Face checkpoint folder with tokenizer.json (or vocab.txt + tokenizer_config.json).
    #[arg(long, required = true, value_name = "DIR")]
    tokenizer: Option<PathBuf>,
    /// Output dataset directory (created; must not exist unless --force).
    #[arg(long, required = true, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Text encoding of the input.
    #[arg(long, value_enum, default_value_t = TextEncoding::Auto)]
    encoding: TextEncoding,
    /// CoNLL: column of the word (0-based).
    #[arg(long, default_value_t = 0)]
    word_col: usize,
    /// CoNLL: column of the POS tag.
    #[arg(long, default_value_t = 1)]
    pos_col: usize,
    /// CoNLL: column of the NER tag.
    #[arg(long, default_value_t = 3)]
    tag_col: usize,
    /// The input's tags are IOB1 (I- starts chunks); convert them to IOB2.
    #[arg(long)]
    iob1: bool,
    /// Entity types to map to O, e.g. art,eve,nat.
    #[arg(long, value_delimiter = ',', value_name = "TYPES")]
    drop_types: Vec<String>,
    /// Label vocabulary, one per line, in id order (default: the corpus' labels, sorted).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Longest row in sub-words, special tokens included; longer sentences become several windows.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Words repeated as context between consecutive windows of a long sentence.
    #[arg(long, default_value_t = 0)]
    window_overlap: usize,
    /// Put the label on each word's first sub-word, or on all (I- on continuations).
    #[arg(long, value_enum, default_value_t = LabelSubwords::First)]
    label_subwords: LabelSubwords,
    /// Train,dev,test fractions of sentences.
    #[arg(long, default_value = "0.8,0.1,0.1")]
    split: String,
    /// Seed of the split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Rows per Parquet shard.
    #[arg(long, default_value_t = 8192)]
    shard_rows: usize,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NERPOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Inspect { dir, json }) => {
            let ds = Dataset::open(&dir)?;
            let inspection = Inspection::compute(&ds)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&inspection)?);
            } else {
                print!("{}", inspection.render());
            }
            Ok(())
        }
        None => {
            let a = cli.prepare;
            let required = "clap enforces required arguments";
            let mut opts = PrepareOptions::new(
                a.format.context(required)?,
                a.input.context(required)?,
                a.tokenizer.context(required)?,
                a.out.context(required)?,
            );
            opts.encoding = a.encoding;
            opts.conll_columns = ConllColumns {
                word: a.word_col,
                pos: a.pos_col,
                tag: a.tag_col,
            };
            opts.iob1 = a.iob1;
            opts.drop_types = a.drop_types.into_iter().filter(|t| !t.is_empty()).collect();
            opts.labels_file = a.labels;
            opts.max_len = a.max_len;
            opts.window_overlap = a.window_overlap;
            opts.label_subwords = a.label_subwords;
            opts.split = split::parse_fractions(&a.split)?;
            opts.seed = a.seed;
            opts.shard_rows = a.shard_rows;
            opts.force = a.force;
            opts.progress = std::io::stderr().is_terminal();
            let manifest = prepare(&opts)?;
            print!("{}", summary(&manifest, &opts.out.display().to_string()));
            Ok(())
        }
    }
}
