//! `nerpos-prep inspect`: a dataset's manifest summary, row-length histogram, label and POS counts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::dataset::{Columns, Dataset, Part};
use crate::error::Result;
use crate::manifest::{CorpusStats, IGNORE_LABEL, LabelSubwords, Manifest, Split};

/// Counts read from the shards (the manifest alone has the totals).
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub dir: String,
    pub checksums_verified: bool,
    pub manifest: Manifest,
    /// Per split: rows per length bucket `[from, to]` of tokens (special tokens included).
    pub length_histogram: BTreeMap<&'static str, Vec<Bucket>>,
    /// Per split: labelled positions per label name.
    pub labels: BTreeMap<&'static str, BTreeMap<String, usize>>,
    /// Per split: words per POS id name (unknown tags counted under `<unk>`).
    pub pos: BTreeMap<&'static str, BTreeMap<String, usize>>,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub struct Bucket {
    pub from: usize,
    pub to: usize,
    pub rows: usize,
}

const BUCKET: usize = 16;

impl Inspection {
    /// Verifies checksums and reads every split's id columns once.
    pub fn compute(ds: &Dataset) -> Result<Inspection> {
        ds.verify()?;
        let m = &ds.manifest;
        let buckets = m.options.max_len.div_ceil(BUCKET);
        let mut out = Inspection {
            dir: ds.dir.display().to_string(),
            checksums_verified: true,
            manifest: m.clone(),
            length_histogram: BTreeMap::new(),
            labels: BTreeMap::new(),
            pos: BTreeMap::new(),
        };
        for split in Split::ALL {
            let mut hist: Vec<Bucket> = (0..buckets)
                .map(|b| Bucket {
                    from: b * BUCKET + 1,
                    to: ((b + 1) * BUCKET).min(m.options.max_len),
                    rows: 0,
                })
                .collect();
            let mut labels = vec![0usize; m.labels.len()];
            let mut pos = vec![0usize; m.pos.len()];
            for batch in ds.reader(split, Part::WHOLE, 4096, Columns::Model)? {
                for row in batch? {
                    let len = row.input_ids.len();
                    hist[(len.max(1) - 1) / BUCKET].rows += 1;
                    for &l in row.labels.iter().filter(|&&l| l != IGNORE_LABEL) {
                        labels[l as usize] += 1;
                    }
                    // One count per labelled word: its first sub-word in the window that owns it.
                    let owned = row.label_start as i32..row.label_end as i32;
                    for (p, &w) in row.word_ids.iter().enumerate() {
                        let first = p == 0 || row.word_ids[p - 1] != w;
                        if first && owned.contains(&w) {
                            pos[row.pos_ids[p] as usize] += 1;
                        }
                    }
                }
            }
            let named = |counts: Vec<usize>, names: &[String]| -> BTreeMap<String, usize> {
                names
                    .iter()
                    .cloned()
                    .zip(counts)
                    .filter(|(_, c)| *c > 0)
                    .collect()
            };
            out.length_histogram.insert(split.name(), hist);
            out.labels.insert(split.name(), named(labels, &m.labels));
            out.pos.insert(split.name(), named(pos, &m.pos));
        }
        Ok(out)
    }

    pub fn render(&self) -> String {
        let mut s = summary(&self.manifest, &self.dir);
        let _ = writeln!(
            s,
            "checksums  {}",
            if self.checksums_verified {
                "ok"
            } else {
                "not checked"
            }
        );
        let _ = writeln!(
            s,
            "\nrow length in tokens (special tokens included), all splits"
        );
        let total: Vec<usize> = (0..self.length_histogram["train"].len())
            .map(|b| self.length_histogram.values().map(|h| h[b].rows).sum())
            .collect();
        let peak = total.iter().copied().max().unwrap_or(0).max(1);
        for (b, rows) in total.iter().enumerate() {
            let bucket = self.length_histogram["train"][b];
            let width = (rows * 40).div_ceil(peak);
            let _ = writeln!(
                s,
                "  {:>4}-{:<4} {:<40} {}",
                bucket.from,
                bucket.to,
                "#".repeat(width),
                thousands(*rows)
            );
        }
        let table =
            |s: &mut String, title: &str, counts: &BTreeMap<&str, BTreeMap<String, usize>>| {
                let mut names: Vec<&String> = counts.values().flat_map(|c| c.keys()).collect();
                names.sort();
                names.dedup();
                let _ = writeln!(
                    s,
                    "\n{:<12} {:>10} {:>10} {:>10}",
                    title, "train", "dev", "test"
                );
                for name in names {
                    let get = |split: &str| counts[split].get(name).copied().unwrap_or(0);
                    let _ = writeln!(
                        s,
                        "{:<12} {:>10} {:>10} {:>10}",
                        name,
                        thousands(get("train")),
                        thousands(get("dev")),
                        thousands(get("test"))
                    );
                }
            };
        let what = match self.manifest.options.label_subwords {
            LabelSubwords::First => "labels",
            LabelSubwords::All => "labels (sub-words)",
        };
        table(&mut s, what, &self.labels);
        table(&mut s, "POS (words)", &self.pos);
        s
    }
}

/// Formats 1234567 as 1,234,567.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The manifest as a few human-readable lines and a per-split table.
pub fn summary(m: &Manifest, dir: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "dataset    {dir} ({} v{}, {})",
        m.format, m.format_version, m.created_by
    );
    source_lines(&mut s, m);
    let _ = writeln!(
        s,
        "tokenizer  {} ({}, {})",
        m.tokenizer.path,
        m.tokenizer.files.join(" + "),
        m.tokenizer.fingerprint
    );
    corpus_lines(&mut s, &m.corpus);
    options_line(&mut s, m);
    let _ = writeln!(s, "labels     {}: {}", m.labels.len(), m.labels.join(" "));
    // A hand-edited manifest may name reserved ids outside the list: shown, not indexed blindly.
    let pos_name = |id: u32| m.pos.get(id as usize).map_or("?", String::as_str);
    let _ = writeln!(
        s,
        "POS        {} ({} and {} reserved)",
        m.pos.len(),
        pos_name(m.pos_pad_id),
        pos_name(m.pos_unk_id)
    );
    split_table(&mut s, m);
    s
}

fn source_lines(s: &mut String, m: &Manifest) {
    // Older manifests list only `source`.
    let files = if m.files.is_empty() {
        vec![crate::manifest::SourceFile {
            split: None,
            source: m.source.clone(),
        }]
    } else {
        m.files.clone()
    };
    for f in &files {
        let _ = writeln!(
            s,
            "source     {}{} ({}, {}, {} bytes, sha256 {})",
            f.split.map_or(String::new(), |x| format!("{}: ", x.name())),
            f.source.path,
            f.source.format.name(),
            f.source.encoding,
            thousands(f.source.bytes as usize),
            f.source.sha256.get(..16).unwrap_or(&f.source.sha256)
        );
    }
}

fn corpus_lines(s: &mut String, c: &CorpusStats) {
    let _ = writeln!(
        s,
        "corpus     {} sentences, {} words ({} distinct), {} tags, {} POS tags; longest {} words / {} sub-words",
        thousands(c.sentences),
        thousands(c.words),
        thousands(c.distinct_words),
        c.tags,
        c.pos_tags,
        c.longest_sentence_words,
        c.longest_sentence_subwords
    );
    let _ = writeln!(
        s,
        "           {} word(s) without sub-words ([UNK]), {} truncated word(s), {} token(s) outside \
         well-formed chunks{}",
        c.words_without_subwords,
        c.truncated_words,
        c.scheme_violations,
        c.first_violation
            .as_ref()
            .map_or(String::new(), |at| format!(" (first at {at})"))
    );
}

fn options_line(s: &mut String, m: &Manifest) {
    let o = &m.options;
    let _ = writeln!(
        s,
        "options    max-len {}, overlap {}, labels on {} sub-words, {}, {} tags{}{}",
        o.max_len,
        o.window_overlap,
        match o.label_subwords {
            LabelSubwords::First => "first",
            LabelSubwords::All => "all",
        },
        match o.split {
            Some(f) => format!("split {}/{}/{} seed {}", f[0], f[1], f[2], o.seed),
            None => "split by file".to_string(),
        },
        o.scheme.name(),
        if m.has_pos { "" } else { ", no POS" },
        if o.drop_types.is_empty() {
            String::new()
        } else {
            format!(", dropped types {}", o.drop_types.join(","))
        }
    );
}

fn split_table(s: &mut String, m: &Manifest) {
    let _ = writeln!(
        s,
        "\n{:<6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9} {:>10} {:>8} {:>7}",
        "split",
        "sentences",
        "words",
        "sub-words",
        "tokens",
        "windows",
        ">max-len",
        "labelled",
        "unk-POS",
        "shards"
    );
    for split in Split::ALL {
        let i = m.splits.get(split);
        let _ = writeln!(
            s,
            "{:<6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9} {:>10} {:>8} {:>7}",
            split.name(),
            thousands(i.sentences),
            thousands(i.words),
            thousands(i.subwords),
            thousands(i.tokens),
            thousands(i.windows),
            i.windowed_sentences,
            thousands(i.labelled),
            i.unknown_pos,
            i.shards.len()
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1048575), "1,048,575");
    }
}
