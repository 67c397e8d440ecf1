use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use nerpos_prep::args::ReadArgs;
use nerpos_prep::corpus::Format;
use nerpos_prep::inspect::{Inspection, summary};
use nerpos_prep::manifest::LabelSubwords;
use nerpos_prep::tags::Scheme;
use nerpos_prep::{Dataset, Input, PrepareOptions, prepare, split};

/// Turn a token-level NER corpus (GMB CSV, CoNLL, JSON Lines or a Hugging Face dataset; one file split
/// at random, or the train/dev/test files it ships as, or a DatasetDict folder's splits) into a sharded Parquet dataset of sub-word ids, labels and POS ids
/// aligned for a BERT tokenizer, with a manifest.
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
    /// Corpus file, split into train/dev/test at random (--split, --seed); with --format hf also a
    /// save_to_disk folder (a DatasetDict's splits are kept: train, validation or dev, test).
    #[arg(long, required_unless_present = "train", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Training file of a pre-split corpus: its sentences form the training split, in file order.
    #[arg(long, conflicts_with = "input", value_name = "FILE")]
    train: Option<PathBuf>,
    /// Development file of a pre-split corpus (the dev split; empty without it).
    #[arg(long, requires = "train", value_name = "FILE")]
    dev: Option<PathBuf>,
    /// Test file of a pre-split corpus (the test split; empty without it).
    #[arg(long, requires = "train", value_name = "FILE")]
    test: Option<PathBuf>,
    /// Hugging Face checkpoint folder with tokenizer.json (or vocab.txt + tokenizer_config.json).
    #[arg(long, required = true, value_name = "DIR")]
    tokenizer: Option<PathBuf>,
    /// Output dataset directory (created; must not exist unless --force).
    #[arg(long, required = true, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    read: ReadArgs,
    /// Tag scheme of the input; converted to IOB2.
    #[arg(long, value_enum, default_value_t = Scheme::Iob2)]
    scheme: Scheme,
    /// Same as --scheme iob1 (I- starts chunks; the original CoNLL-2003 release).
    #[arg(long, conflicts_with = "scheme")]
    iob1: bool,
    /// Entity types to map to O, e.g. art,eve,nat.
    #[arg(long, value_delimiter = ',', value_name = "TYPES")]
    drop_types: Vec<String>,
    /// Cross each POS tag with its word's shape (NNP|Aa, NN|a, CD|0, ...): casing an uncased
    /// checkpoint cannot see, fed to the model through the POS embedding.
    #[arg(long)]
    pos_shape: bool,
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
    /// Train,dev,test fractions of sentences of --input [default: 0.8,0.1,0.1].
    #[arg(long, conflicts_with = "train")]
    split: Option<String>,
    /// Seed of the split of --input.
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
    nerpos_run::cli::init_logging("info");
    nerpos_run::cli::exit(run(Cli::parse()).map(|()| ExitCode::SUCCESS))
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
            let input = match (a.input, a.train) {
                (Some(input), None) => Input::One(input),
                (None, Some(train)) => Input::Split {
                    train,
                    dev: a.dev,
                    test: a.test,
                },
                _ => anyhow::bail!("give --input FILE, or --train FILE [--dev FILE] [--test FILE]"),
            };
            let format: Format = a.format.context(required)?;
            // A folder may bring its own splits (a DatasetDict's).
            let input = format.reader().resolve(input)?;
            let mut opts = PrepareOptions::new(
                input,
                a.read.options(format)?,
                a.tokenizer.context(required)?,
                a.out.context(required)?,
            );
            opts.scheme = if a.iob1 { Scheme::Iob1 } else { a.scheme };
            opts.drop_types = a.drop_types.into_iter().filter(|t| !t.is_empty()).collect();
            opts.pos_shape = a.pos_shape;
            opts.labels_file = a.labels;
            opts.max_len = a.max_len;
            opts.window_overlap = a.window_overlap;
            opts.label_subwords = a.label_subwords;
            if let Some(s) = &a.split {
                opts.split = split::parse_fractions(s)?;
            }
            opts.seed = a.seed;
            opts.shard_rows = a.shard_rows;
            opts.force = a.force;
            opts.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let manifest = prepare(&opts)?;
            print!("{}", summary(&manifest, &opts.out.display().to_string()));
            Ok(())
        }
    }
}
