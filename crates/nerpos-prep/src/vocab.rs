//! Label and POS vocabularies: sorted, so that the same corpus always gives the same ids.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::error::{PrepError, Result};
use crate::manifest::{LabelSubwords, POS_PAD, POS_UNK};
use crate::tags::{self, Prefix};

/// The label vocabulary: `used` (the corpus' final labels) sorted, or the labels file's order. With
/// labels on every sub-word, I-X must exist for every B-X (continuations carry it).
pub fn labels(
    used: &[String],
    labels_file: Option<&Path>,
    label_subwords: LabelSubwords,
) -> Result<Vec<String>> {
    let mut vocab: Vec<String> = match labels_file {
        None => {
            let mut set: BTreeSet<String> = used.iter().cloned().collect();
            if label_subwords == LabelSubwords::All {
                let inside: Vec<String> = set
                    .iter()
                    .filter_map(|l| tags::parse(l).filter(|t| t.prefix == Prefix::B))
                    .map(|t| format!("I-{}", t.ty))
                    .collect();
                set.extend(inside);
            }
            set.into_iter().collect()
        }
        Some(path) => read_labels_file(path, used)?,
    };
    if let (Some(path), LabelSubwords::All) = (labels_file, label_subwords) {
        for l in &vocab {
            if let Some(t) = tags::parse(l).filter(|t| t.prefix == Prefix::B) {
                let inside = format!("I-{}", t.ty);
                if !vocab.contains(&inside) {
                    return Err(PrepError::File {
                        path: path.to_owned(),
                        msg: format!(
                            "has {l} but not {inside}, which labels on every sub-word need for \
                             continuations"
                        ),
                    });
                }
            }
        }
    }
    vocab.shrink_to_fit();
    Ok(vocab)
}

fn read_labels_file(path: &Path, used: &[String]) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| PrepError::io(path, e))?;
    let mut vocab: Vec<String> = Vec::new();
    let mut lines: HashMap<String, u64> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i as u64 + 1;
        let label = line.trim();
        if label.is_empty() {
            continue;
        }
        if tags::parse(label).is_none() {
            return Err(PrepError::input(
                path,
                line_no,
                format!("invalid label {label:?} ({})", tags::EXPECTED),
            ));
        }
        if let Some(first) = lines.insert(label.to_owned(), line_no) {
            return Err(PrepError::input(
                path,
                line_no,
                format!("label {label} repeated (first at line {first})"),
            ));
        }
        vocab.push(label.to_owned());
    }
    if let Some(missing) = used.iter().find(|l| !lines.contains_key(*l)) {
        return Err(PrepError::File {
            path: path.to_owned(),
            msg: format!("the corpus has label {missing}, which this labels file lacks"),
        });
    }
    Ok(vocab)
}

/// The POS vocabulary: pad and unknown first, then the training split's POS tags sorted.
pub fn pos<'a>(train_pos: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>> {
    let set: BTreeSet<&str> = train_pos.into_iter().collect();
    if let Some(clash) = set.iter().find(|p| [POS_PAD, POS_UNK].contains(p)) {
        return Err(PrepError::Options(format!(
            "the corpus uses the POS tag {clash}, which nerpos reserves for padding/unknown"
        )));
    }
    Ok([POS_PAD, POS_UNK]
        .into_iter()
        .chain(set)
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn labels_sorted_and_deterministic() {
        let a = labels(
            &s(&["O", "I-per", "B-geo", "B-per"]),
            None,
            LabelSubwords::First,
        )
        .unwrap();
        let b = labels(
            &s(&["B-per", "B-geo", "O", "I-per"]),
            None,
            LabelSubwords::First,
        )
        .unwrap();
        assert_eq!(a, s(&["B-geo", "B-per", "I-per", "O"]));
        assert_eq!(a, b);
    }

    #[test]
    fn all_subwords_adds_inside_labels() {
        let v = labels(&s(&["O", "B-geo"]), None, LabelSubwords::All).unwrap();
        assert_eq!(v, s(&["B-geo", "I-geo", "O"]));
    }

    #[test]
    fn labels_file_order_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels.txt");
        std::fs::write(&p, "O\nB-per\nI-per\n\nB-geo\n").unwrap();
        let v = labels(&s(&["O", "B-geo"]), Some(&p), LabelSubwords::First).unwrap();
        assert_eq!(v, s(&["O", "B-per", "I-per", "B-geo"]));
        let err = labels(&s(&["B-org"]), Some(&p), LabelSubwords::First)
            .unwrap_err()
            .to_string();
        assert!(err.contains("B-org"), "{err}");
        let err = labels(&s(&["O"]), Some(&p), LabelSubwords::All)
            .unwrap_err()
            .to_string();
        assert!(err.contains("I-geo"), "{err}");
        std::fs::write(&p, "O\nB-x\nO\n").unwrap();
        let err = labels(&s(&["O"]), Some(&p), LabelSubwords::First)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":3:") && err.contains("first at line 1"),
            "{err}"
        );
        std::fs::write(&p, "O\nbad\n").unwrap();
        let err = labels(&s(&["O"]), Some(&p), LabelSubwords::First)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2:"), "{err}");
    }

    #[test]
    fn pos_reserves_pad_and_unknown() {
        let v = pos(["NN", "DT", "NN", "VB"]).unwrap();
        assert_eq!(v, s(&["<pad>", "<unk>", "DT", "NN", "VB"]));
        assert!(pos(["<unk>"]).is_err());
    }
}
