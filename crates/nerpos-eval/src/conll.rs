//! Reading CoNLL-style prediction files: whitespace-separated columns, a blank line between sentences,
//! `-DOCSTART-` lines skipped.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConllError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {msg}", path.display())]
    Line {
        path: PathBuf,
        line: u64,
        msg: String,
    },
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
}

/// A column index: non-negative from the left, negative from the right (-1 is the last column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column(pub i64);

impl Column {
    fn resolve(self, n: usize) -> Option<usize> {
        if self.0 >= 0 {
            let i = self.0 as usize;
            (i < n).then_some(i)
        } else {
            n.checked_sub(self.0.unsigned_abs() as usize)
        }
    }
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The requested columns of every token of a file, flat, with sentence boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table<'a> {
    /// Line of each token.
    pub lines: Vec<u64>,
    /// Index of each sentence's first token, then the token count: sentence `s` is
    /// `bounds[s]..bounds[s + 1]`.
    pub bounds: Vec<usize>,
    /// `columns[c][k]`: the c-th requested column of token k.
    pub columns: Vec<Vec<&'a str>>,
}

impl Table<'_> {
    pub fn sentences(&self) -> usize {
        self.bounds.len() - 1
    }

    pub fn range(&self, sentence: usize) -> std::ops::Range<usize> {
        self.bounds[sentence]..self.bounds[sentence + 1]
    }
}

/// Reads a file as UTF-8 text.
pub fn read_text(path: &Path) -> Result<String, ConllError> {
    let bytes = std::fs::read(path).map_err(|source| ConllError::Io {
        path: path.to_owned(),
        source,
    })?;
    let bytes = bytes
        .strip_prefix(b"\xEF\xBB\xBF")
        .map(<[u8]>::to_vec)
        .unwrap_or(bytes);
    String::from_utf8(bytes).map_err(|e| {
        let pos = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..pos].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        ConllError::Line {
            path: path.to_owned(),
            line,
            msg: format!(
                "byte 0x{:02X} is not valid UTF-8 (expected UTF-8 text; convert with iconv)",
                e.as_bytes()[pos]
            ),
        }
    })
}

/// Splits `text` (read from `path`) into sentences holding the `wanted` columns of each token.
pub fn read_table<'a>(
    path: &Path,
    text: &'a str,
    wanted: &[Column],
) -> Result<Table<'a>, ConllError> {
    let mut table = Table {
        lines: Vec::new(),
        bounds: Vec::new(),
        columns: vec![Vec::new(); wanted.len()],
    };
    let mut open = false;
    let mut fields: Vec<&str> = Vec::with_capacity(8);
    // Every token line has the first one's number of columns (as conlleval requires): a line with
    // fewer or more would shift the columns counted from the right — a word read as a tag.
    let mut shape: Option<(usize, u64)> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let line = i as u64 + 1;
        fields.clear();
        fields.extend(raw.split_ascii_whitespace());
        if fields.is_empty() || fields[0] == "-DOCSTART-" {
            open = false;
            continue;
        }
        match shape {
            None => shape = Some((fields.len(), line)),
            Some((n, first)) if n != fields.len() => {
                return Err(ConllError::Line {
                    path: path.to_owned(),
                    line,
                    msg: format!(
                        "{} column(s), expected {n} like every token line before (line {first} has {n})",
                        fields.len()
                    ),
                });
            }
            Some(_) => {}
        }
        if !open {
            table.bounds.push(table.lines.len());
            open = true;
        }
        table.lines.push(line);
        for (col, out) in wanted.iter().zip(&mut table.columns) {
            let idx = col.resolve(fields.len()).ok_or_else(|| ConllError::Line {
                path: path.to_owned(),
                line,
                msg: format!(
                    "{} column(s); column {col} does not exist (expected a tag there)",
                    fields.len()
                ),
            })?;
            out.push(fields[idx]);
        }
    }
    if table.lines.is_empty() {
        return Err(ConllError::File {
            path: path.to_owned(),
            msg: "no sentences (expected token lines with tag columns)".into(),
        });
    }
    table.bounds.push(table.lines.len());
    Ok(table)
}

/// Checks that a gold and a predicted table (each: words, tags) hold the same sentences and words.
pub fn check_aligned(
    gold_path: &Path,
    gold: &Table,
    pred_path: &Path,
    pred: &Table,
) -> Result<(), ConllError> {
    if gold.sentences() != pred.sentences() {
        return Err(ConllError::File {
            path: pred_path.to_owned(),
            msg: format!(
                "{} sentences, but {} has {} (expected the same sentences)",
                pred.sentences(),
                gold_path.display(),
                gold.sentences()
            ),
        });
    }
    for n in 0..gold.sentences() {
        let (g, p) = (gold.range(n), pred.range(n));
        if g.len() != p.len() {
            return Err(ConllError::Line {
                path: pred_path.to_owned(),
                line: pred.lines[p.start],
                msg: format!(
                    "sentence {} has {} tokens here but {} in {} (line {})",
                    n + 1,
                    p.len(),
                    g.len(),
                    gold_path.display(),
                    gold.lines[g.start]
                ),
            });
        }
        let (gw, pw) = (&gold.columns[0][g.clone()], &pred.columns[0][p.clone()]);
        if let Some(i) = (0..gw.len()).find(|&i| gw[i] != pw[i]) {
            return Err(ConllError::Line {
                path: pred_path.to_owned(),
                line: pred.lines[p.start + i],
                msg: format!(
                    "sentence {}, word {}: {:?} here but {:?} in {} (line {})",
                    n + 1,
                    i + 1,
                    pw[i],
                    gw[i],
                    gold_path.display(),
                    gold.lines[g.start + i]
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_from_both_ends() {
        assert_eq!(Column(0).resolve(3), Some(0));
        assert_eq!(Column(-1).resolve(3), Some(2));
        assert_eq!(Column(-3).resolve(3), Some(0));
        assert_eq!(Column(-4).resolve(3), None);
        assert_eq!(Column(3).resolve(3), None);
    }

    #[test]
    fn sentences_and_docstart() {
        let text = "-DOCSTART- O O\n\nEU B-ORG B-ORG\nrejects O O\n\n\nPeter B-PER I-PER\r\n";
        let t = read_table(Path::new("f"), text, &[Column(-2), Column(-1)]).unwrap();
        assert_eq!(t.sentences(), 2);
        assert_eq!(t.columns[0][t.range(0)], ["B-ORG", "O"]);
        assert_eq!(t.columns[1][t.range(1)], ["I-PER"]);
        assert_eq!(t.lines[t.range(1).start], 7);
        let err = read_table(Path::new("f"), "a B\nb\n", &[Column(-2)])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f:2:"), "{err}");
    }

    #[test]
    fn alignment_errors_name_sentence_and_line() {
        let g = "a O\nb O\n\nc O\n";
        let p = "a O\nb O\n\nd O\n";
        let gs = read_table(Path::new("g"), g, &[Column(0), Column(-1)]).unwrap();
        let ps = read_table(Path::new("p"), p, &[Column(0), Column(-1)]).unwrap();
        let err = check_aligned(Path::new("g"), &gs, Path::new("p"), &ps)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p:4:") && err.contains("sentence 2, word 1"),
            "{err}"
        );
        let ps = read_table(Path::new("p"), "a O\n\nc O\n", &[Column(0), Column(-1)]).unwrap();
        let err = check_aligned(Path::new("g"), &gs, Path::new("p"), &ps)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sentence 1 has 1 tokens here but 2"), "{err}");
    }

    /// A line with another number of columns is refused (conlleval refuses it too): read from the
    /// right, "rejects O" after "EU B-ORG B-ORG" would make "rejects" a gold tag.
    #[test]
    fn lines_with_another_column_count_are_refused() {
        let err = read_table(
            Path::new("f"),
            "EU B-ORG B-ORG\nrejects O\n",
            &[Column(-2), Column(-1)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("f:2:") && err.contains("2 column(s), expected 3"),
            "{err}"
        );
    }
}
