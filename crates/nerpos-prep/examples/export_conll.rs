//! Writes a dataset's splits back as CoNLL files (`word POS tag`, a blank line between sentences) in a
//! chosen tag scheme: a real corpus in the pre-split form CoNLL-2003 ships in, to exercise
//! `nerpos-prep --train/--dev/--test --scheme ...` end to end (docs/results.md).
//!
//! `cargo run --release --example export_conll -- DATASET OUT_DIR iob2|iob1|iobes|bilou`

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use nerpos_prep::manifest::Split;
use nerpos_prep::{Columns, Dataset, Part};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dataset, out, scheme] = args.as_slice() else {
        bail!("usage: export_conll DATASET OUT_DIR iob2|iob1|iobes|bilou");
    };
    let ds = Dataset::open(&PathBuf::from(dataset))?;
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for split in Split::ALL {
        let rows = ds.read_all(split, Part::WHOLE, Columns::All)?;
        let mut text = String::new();
        let mut sentence: Vec<(String, String, String)> = Vec::new();
        for (k, row) in rows.iter().enumerate() {
            // Windows do not overlap (overlap 0): a sentence's windows' words, in order, are its words.
            if row.word_start != row.label_start {
                bail!("{dataset}: windows overlap; prepare it with --window-overlap 0");
            }
            for ((w, p), t) in row.words.iter().zip(&row.pos).zip(&row.tags) {
                sentence.push((w.clone(), p.clone(), t.clone()));
            }
            let last = rows
                .get(k + 1)
                .is_none_or(|n| n.sentence_index != row.sentence_index);
            if last {
                let tags: Vec<&str> = sentence.iter().map(|t| t.2.as_str()).collect();
                for ((w, p, _), t) in sentence.iter().zip(convert(&tags, scheme)?) {
                    let _ = writeln!(text, "{w} {p} {t}");
                }
                text.push('\n');
                sentence.clear();
            }
        }
        let path = out.join(format!("{}.conll", split.name()));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("{}: {} rows", path.display(), rows.len());
    }
    Ok(())
}

/// IOB2 tags in another scheme. IOB1: `B-` only where a chunk follows one of the same type.
fn convert(tags: &[&str], scheme: &str) -> anyhow::Result<Vec<String>> {
    let split = |t: &str| {
        t.split_once('-')
            .map(|(p, ty)| (p.to_owned(), ty.to_owned()))
    };
    let parsed: Vec<Option<(String, String)>> = tags.iter().map(|t| split(t)).collect();
    let ty_of = |i: usize| parsed.get(i).and_then(|t| t.as_ref()).map(|t| t.1.as_str());
    (0..tags.len())
        .map(|i| {
            let Some((prefix, ty)) = &parsed[i] else {
                return Ok("O".to_string());
            };
            let continued =
                parsed.get(i + 1).and_then(|t| t.as_ref()) == Some(&("I".to_string(), ty.clone()));
            let p = match (scheme, prefix.as_str(), continued) {
                ("iob2", p, _) => p,
                ("iob1", "B", _) if i > 0 && ty_of(i - 1) == Some(ty) => "B",
                ("iob1", _, _) => "I",
                ("iobes", "B", false) => "S",
                ("bilou", "B", false) => "U",
                ("iobes" | "bilou", "B", true) | ("iobes" | "bilou", "I", true) => prefix.as_str(),
                ("iobes", "I", false) => "E",
                ("bilou", "I", false) => "L",
                _ => bail!("unknown scheme {scheme:?} (expected iob2, iob1, iobes or bilou)"),
            };
            Ok(format!("{p}-{ty}"))
        })
        .collect()
}
