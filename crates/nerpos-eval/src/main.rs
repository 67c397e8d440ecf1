use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use nerpos_eval::conll::{self, Column};
use nerpos_eval::tags::{Prefix, looks_like_ne_tag};
use nerpos_eval::{Mode, Report, Scheme, Scorer};

/// Score NER predictions exactly as seqeval does: entity-level precision, recall and F1 per type with
/// micro, macro and weighted averages, and token accuracy.
#[derive(Parser)]
#[command(name = "nerpos-eval", version)]
struct Cli {
    /// CoNLL file with gold and predicted tags in columns (blank line between sentences).
    #[arg(required_unless_present_all = ["gold", "pred"], conflicts_with_all = ["gold", "pred"])]
    file: Option<PathBuf>,
    /// Gold file (with --pred): words in column 0, tags in --gold-col (default: last).
    #[arg(long, requires = "pred")]
    gold: Option<PathBuf>,
    /// Predicted file (with --gold), aligned with it by sentence and word.
    #[arg(long, requires = "gold")]
    pred: Option<PathBuf>,
    /// Column of the gold tag; negative counts from the end [default: -2, or -1 with --gold].
    #[arg(long, allow_negative_numbers = true)]
    gold_col: Option<i64>,
    /// Column of the predicted tag [default: -1].
    #[arg(long, allow_negative_numbers = true)]
    pred_col: Option<i64>,
    /// Entity rules: seqeval's default (conlleval) or strict (only well-formed chunks of a scheme)
    /// [default: default, or strict with --scheme].
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Tag scheme of the files (IOBES and BILOU files need it): scores in seqeval's strict mode with
    /// this scheme; auto detects it from the gold tags as seqeval does.
    #[arg(long, value_enum)]
    scheme: Option<SchemeArg>,
    /// Decimals in the table (seqeval's `digits`).
    #[arg(long, default_value_t = 2)]
    digits: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also print the type confusion table (entities on identical spans; missed; spurious).
    #[arg(long)]
    confusion: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Default,
    Strict,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SchemeArg {
    Auto,
    Iob1,
    Ioe1,
    Iob2,
    Ioe2,
    Iobes,
    Bilou,
}

fn main() -> ExitCode {
    // The same start-up as every binary (its report goes to stdout; warnings through tracing).
    nerpos_run::cli::init_logging("warn");
    nerpos_run::cli::exit(run(Cli::parse()).map(|()| ExitCode::SUCCESS))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let texts: Vec<(PathBuf, String)> = match (&cli.file, &cli.gold, &cli.pred) {
        (Some(f), _, _) => vec![(f.clone(), conll::read_text(f)?)],
        (None, Some(g), Some(p)) => vec![
            (g.clone(), conll::read_text(g)?),
            (p.clone(), conll::read_text(p)?),
        ],
        _ => bail!("give a FILE, or --gold and --pred"),
    };
    let (table, gold_tags, pred_tags) = tag_columns(&cli, &texts)?;
    let source = texts
        .last()
        .map(|(p, _)| p.as_path())
        .unwrap_or(Path::new("-"));
    let mode = mode_of(&cli, &gold_tags)?;
    let mut scorer = Scorer::new(mode);
    for n in 0..table.sentences() {
        let range = table.range(n);
        scorer
            .add(&gold_tags[range.clone()], &pred_tags[range.clone()])
            .with_context(|| {
                format!(
                    "{}:{}: sentence {}",
                    source.display(),
                    table.lines[range.start],
                    n + 1
                )
            })?;
    }
    if mode == Mode::Default {
        for tag in scorer.tag_names().iter().filter(|t| !looks_like_ne_tag(t)) {
            eprintln!(
                "warning: {tag} seems not to be an NE tag (seqeval warns the same and reads its first character as the chunk tag)"
            );
        }
    }
    let report = Report::new(&scorer.counts());
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_seqeval_string(cli.digits));
        println!("token accuracy: {:.*}", cli.digits, report.accuracy);
        if cli.confusion {
            println!("\n{}", report.confusion_table());
        }
    }
    Ok(())
}

/// Gold and predicted tags of every token, and the sentence boundaries, from one file (two tag
/// columns) or two (aligned word for word).
fn tag_columns<'a>(
    cli: &Cli,
    texts: &'a [(PathBuf, String)],
) -> anyhow::Result<(conll::Table<'a>, Vec<&'a str>, Vec<&'a str>)> {
    fn last<'a>(t: &mut conll::Table<'a>) -> Vec<&'a str> {
        t.columns.pop().expect("a tag column was requested")
    }
    if let [(path, text)] = texts {
        let cols = [
            Column(cli.gold_col.unwrap_or(-2)),
            Column(cli.pred_col.unwrap_or(-1)),
        ];
        let mut t = conll::read_table(path, text, &cols)?;
        let pred = last(&mut t);
        let gold = last(&mut t);
        return Ok((t, gold, pred));
    }
    let (gp, gt) = &texts[0];
    let (pp, pt) = &texts[1];
    let mut g = conll::read_table(gp, gt, &[Column(0), Column(cli.gold_col.unwrap_or(-1))])?;
    let mut p = conll::read_table(pp, pt, &[Column(0), Column(cli.pred_col.unwrap_or(-1))])?;
    conll::check_aligned(gp, &g, pp, &p)?;
    let (gold, pred) = (last(&mut g), last(&mut p));
    Ok((g, gold, pred))
}

/// A scheme means strict mode: the default (conlleval) rules know only IOB prefixes.
fn mode_of(cli: &Cli, gold_tags: &[&str]) -> anyhow::Result<Mode> {
    Ok(match (cli.mode, cli.scheme) {
        (Some(ModeArg::Default), Some(_)) => {
            bail!("--scheme applies to strict mode; drop --mode default or --scheme")
        }
        (Some(ModeArg::Default), None) | (None, None) => Mode::Default,
        (Some(ModeArg::Strict), s) | (None, s @ Some(_)) => {
            Mode::Strict(scheme(s.unwrap_or(SchemeArg::Auto), gold_tags)?)
        }
    })
}

/// The strict-mode scheme: as given, or detected from the gold tags' prefixes (seqeval's auto_detect).
fn scheme(arg: SchemeArg, gold: &[&str]) -> anyhow::Result<Scheme> {
    Ok(match arg {
        SchemeArg::Iob1 => Scheme::Iob1,
        SchemeArg::Ioe1 => Scheme::Ioe1,
        SchemeArg::Iob2 => Scheme::Iob2,
        SchemeArg::Ioe2 => Scheme::Ioe2,
        SchemeArg::Iobes => Scheme::Iobes,
        SchemeArg::Bilou => Scheme::Bilou,
        SchemeArg::Auto => {
            let mut seen = 0u8;
            for tag in gold {
                let prefix = tag
                    .chars()
                    .next()
                    .and_then(Prefix::from_char)
                    .with_context(|| {
                        format!(
                            "gold tag {tag:?} has no I/O/B/E/S/U/L prefix; cannot detect a scheme"
                        )
                    })?;
                seen |= prefix.bits();
            }
            Scheme::detect(seen).context(
                "the gold tags' prefixes fit no scheme (IOB2, IOE2, IOBES, BILOU); pass --scheme",
            )?
        }
    })
}
