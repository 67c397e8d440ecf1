//! IOB tags: parsing, IOB1 → IOB2 conversion and dropping entity types.

use std::collections::HashMap;

/// The chunk prefix of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    B,
    I,
    O,
}

/// A parsed tag: `O`, or a prefix and a non-empty entity type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag<'a> {
    pub prefix: Prefix,
    pub ty: &'a str,
}

/// Parses `O`, `B-X` or `I-X` (X non-empty, no whitespace); anything else is `None`.
pub fn parse(tag: &str) -> Option<Tag<'_>> {
    if tag == "O" {
        return Some(Tag {
            prefix: Prefix::O,
            ty: "",
        });
    }
    let (prefix, ty) = match tag.split_at_checked(2)? {
        ("B-", ty) => (Prefix::B, ty),
        ("I-", ty) => (Prefix::I, ty),
        _ => return None,
    };
    (!ty.is_empty() && !ty.chars().any(char::is_whitespace)).then_some(Tag { prefix, ty })
}

/// What `expected` says in error messages about tags.
pub const EXPECTED: &str = "expected a tag of the form O, B-TYPE or I-TYPE";

/// Rewrites a sentence's tags (given as ids into `names`) into final labels: IOB1 → IOB2 when asked,
/// dropped types → `O`. Final label strings are interned in `labels`; the returned ids index it.
///
/// Tag ids are used instead of strings because this runs once per token of the corpus.
pub struct Relabeler {
    /// For each raw tag id: the final label ids to use (as chunk start, as continuation) and its type.
    table: Vec<Relabel>,
    iob1: bool,
    o_id: u32,
    pub labels: Vec<String>,
}

#[derive(Clone, Copy)]
struct Relabel {
    start: u32,
    cont: u32,
    prefix: Prefix,
    /// Index of the entity type (for "same type as the previous token" checks); u32::MAX for O.
    ty: u32,
}

impl Relabeler {
    /// `raw` are the distinct tags in the corpus, each already validated by [`parse`].
    pub fn new(raw: &[String], drop_types: &[String], iob1: bool) -> Relabeler {
        let mut labels: Vec<String> = Vec::new();
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut intern = |s: String| -> u32 {
            *index.entry(s.clone()).or_insert_with(|| {
                labels.push(s);
                (labels.len() - 1) as u32
            })
        };
        let o_id = intern("O".to_string());
        let mut types: HashMap<&str, u32> = HashMap::new();
        let table = raw
            .iter()
            .map(|name| {
                let tag = parse(name).expect("tags are validated while reading");
                if tag.prefix == Prefix::O || drop_types.iter().any(|d| d == tag.ty) {
                    return Relabel {
                        start: o_id,
                        cont: o_id,
                        prefix: Prefix::O,
                        ty: u32::MAX,
                    };
                }
                let n = types.len() as u32;
                let ty = *types.entry(tag.ty).or_insert(n);
                let b = intern(format!("B-{}", tag.ty));
                let i = if tag.prefix == Prefix::I || iob1 {
                    intern(format!("I-{}", tag.ty))
                } else {
                    b
                };
                Relabel {
                    start: b,
                    cont: if tag.prefix == Prefix::B { b } else { i },
                    prefix: tag.prefix,
                    ty,
                }
            })
            .collect();
        Relabeler {
            table,
            iob1,
            o_id,
            labels,
        }
    }

    /// Final label ids for one sentence's raw tag ids.
    pub fn sentence(&self, raw: impl Iterator<Item = u32>, out: &mut Vec<u32>) {
        let mut prev: Option<Relabel> = None;
        for id in raw {
            let r = self.table[id as usize];
            let label = match r.prefix {
                Prefix::O => self.o_id,
                Prefix::B => r.start,
                // In IOB1 an I- tag starts a chunk unless it continues one of the same type; in IOB2 the
                // tag is kept as written (an I- after O stays, and the scorer treats it as a start).
                Prefix::I if self.iob1 => match prev {
                    Some(p) if p.prefix != Prefix::O && p.ty == r.ty => r.cont,
                    _ => r.start,
                },
                Prefix::I => r.cont,
            };
            out.push(label);
            prev = Some(r);
        }
    }
}

/// Counts I-X tags that do not follow B-X or I-X: legal in IOB1, a sign of IOB1 input when the corpus
/// is read as IOB2. `sentence` holds ids into `tags`.
pub fn iob2_violations(tags: &[Tag], sentence: &[u32]) -> usize {
    let mut prev: Option<&Tag> = None;
    let mut n = 0;
    for &id in sentence {
        let tag = &tags[id as usize];
        let continues = prev.is_some_and(|p| p.prefix != Prefix::O && p.ty == tag.ty);
        if tag.prefix == Prefix::I && !continues {
            n += 1;
        }
        prev = Some(tag);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relabel(tags: &[&str], drop: &[&str], iob1: bool) -> Vec<String> {
        let mut raw: Vec<String> = Vec::new();
        let ids: Vec<u32> = tags
            .iter()
            .map(|t| match raw.iter().position(|r| r == t) {
                Some(i) => i as u32,
                None => {
                    raw.push(t.to_string());
                    (raw.len() - 1) as u32
                }
            })
            .collect();
        let drop: Vec<String> = drop.iter().map(|s| s.to_string()).collect();
        let r = Relabeler::new(&raw, &drop, iob1);
        let mut out = Vec::new();
        r.sentence(ids.into_iter(), &mut out);
        out.iter().map(|&i| r.labels[i as usize].clone()).collect()
    }

    #[test]
    fn parse_accepts_only_iob() {
        assert_eq!(parse("O").unwrap().prefix, Prefix::O);
        assert_eq!(parse("B-geo").unwrap().ty, "geo");
        assert_eq!(parse("I-per").unwrap().prefix, Prefix::I);
        for bad in ["", "o", "B-", "B", "X-geo", "B_geo", "S-geo", "B-a b", "I-"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn iob1_to_iob2() {
        assert_eq!(
            relabel(
                &["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-PER"],
                &[],
                true
            ),
            ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-PER"]
        );
    }

    #[test]
    fn iob2_kept_as_written() {
        assert_eq!(
            relabel(&["O", "I-PER", "B-LOC", "I-LOC"], &[], false),
            ["O", "I-PER", "B-LOC", "I-LOC"]
        );
    }

    #[test]
    fn dropped_types_become_o() {
        assert_eq!(
            relabel(
                &["B-art", "I-art", "B-geo", "I-geo", "B-eve"],
                &["art", "eve"],
                false
            ),
            ["O", "O", "B-geo", "I-geo", "O"]
        );
    }

    #[test]
    fn counts_violations() {
        let tags: Vec<Tag> = ["O", "B-A", "I-A", "I-B"]
            .map(|t| parse(t).unwrap())
            .to_vec();
        assert_eq!(iob2_violations(&tags, &[0, 2, 1, 2, 3, 3]), 2);
    }
}
