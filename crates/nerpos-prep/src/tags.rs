//! Chunk tags: parsing, the input schemes (IOB1, IOB2, IOBES, BILOU) converted to IOB2, and dropping
//! entity types.
//!
//! Everything is trained and scored in IOB2. A sequence that is not well formed in the stated scheme
//! (an IOB2 `I-X` that continues nothing, an IOBES `B-X` never closed by `E-X`, ...) is read the way
//! seqeval's strict mode reads it — its tokens are outside any entity, so they become `O` — and is
//! counted, never silently.

use std::collections::HashMap;

/// The chunk prefix of a tag. `E` is IOBES's `E-` and BILOU's `L-` (last), `S` is `S-` and `U-` (unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    B,
    I,
    O,
    E,
    S,
}

/// A parsed tag: `O`, or a prefix and a non-empty entity type; `letter` as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag<'a> {
    pub prefix: Prefix,
    pub ty: &'a str,
    pub letter: char,
}

/// Parses `O` or `P-X` for P one of B, I, E, S, L, U (X non-empty, no whitespace); anything else is
/// `None`. Which prefixes a corpus may use depends on its [`Scheme`].
pub fn parse(tag: &str) -> Option<Tag<'_>> {
    if tag == "O" {
        return Some(Tag {
            prefix: Prefix::O,
            ty: "",
            letter: 'O',
        });
    }
    let (head, ty) = tag.split_at_checked(2)?;
    let (letter, prefix) = match head {
        "B-" => ('B', Prefix::B),
        "I-" => ('I', Prefix::I),
        "E-" => ('E', Prefix::E),
        "S-" => ('S', Prefix::S),
        "L-" => ('L', Prefix::E),
        "U-" => ('U', Prefix::S),
        _ => return None,
    };
    (!ty.is_empty() && !ty.chars().any(char::is_whitespace)).then_some(Tag { prefix, ty, letter })
}

/// What `expected` says in error messages about tags.
pub const EXPECTED: &str = "expected a tag of the form O, B-TYPE or I-TYPE (E-/S- with --scheme iobes, \
                            L-/U- with --scheme bilou)";

/// The tag scheme of an input corpus.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// I- inside and at the start of chunks; B- only between two chunks of one type (the original
    /// CoNLL-2003 release).
    Iob1,
    /// B- starts every chunk, I- continues it.
    #[default]
    Iob2,
    /// B- begin, I- inside, E- end, S- single-token chunk.
    Iobes,
    /// As IOBES with L- (last) and U- (unit).
    Bilou,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Iob1 => "iob1",
            Scheme::Iob2 => "iob2",
            Scheme::Iobes => "iobes",
            Scheme::Bilou => "bilou",
        }
    }

    /// The prefix letters a corpus in this scheme may use.
    fn letters(self) -> &'static [char] {
        match self {
            Scheme::Iob1 | Scheme::Iob2 => &['O', 'B', 'I'],
            Scheme::Iobes => &['O', 'B', 'I', 'E', 'S'],
            Scheme::Bilou => &['O', 'B', 'I', 'L', 'U'],
        }
    }
}

/// A raw tag the scheme does not allow (the caller knows where it occurs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotInScheme {
    /// Index of the raw tag.
    pub raw: usize,
}

/// Rewrites a sentence's tags (given as ids into the corpus' distinct tags) into final IOB2 labels:
/// the scheme converted, dropped types → `O`. Final label strings are interned in `labels`; the ids
/// returned index it.
///
/// Tag ids are used instead of strings because this runs once per token of the corpus.
pub struct Relabeler {
    /// For each raw tag id: its prefix, its type (index; `u32::MAX` for O) and its final B-/I- labels.
    table: Vec<Raw>,
    scheme: Scheme,
    o_id: u32,
    pub labels: Vec<String>,
}

#[derive(Clone, Copy)]
struct Raw {
    prefix: Prefix,
    ty: u32,
    b: u32,
    i: u32,
}

impl Relabeler {
    /// `raw` are the distinct tags of the corpus, each already validated by [`parse`]; an error names
    /// the first whose prefix the scheme does not allow.
    pub fn new(
        raw: &[String],
        drop_types: &[String],
        scheme: Scheme,
    ) -> Result<Relabeler, NotInScheme> {
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
        let mut table = Vec::with_capacity(raw.len());
        for (k, name) in raw.iter().enumerate() {
            let tag = parse(name).expect("tags are validated while reading");
            if !scheme.letters().contains(&tag.letter) {
                return Err(NotInScheme { raw: k });
            }
            if tag.prefix == Prefix::O || drop_types.iter().any(|d| d == tag.ty) {
                table.push(Raw {
                    prefix: Prefix::O,
                    ty: u32::MAX,
                    b: o_id,
                    i: o_id,
                });
                continue;
            }
            let n = types.len() as u32;
            let ty = *types.entry(tag.ty).or_insert(n);
            // Only the labels this tag can become are interned (the label set is what occurs).
            let starts = matches!(tag.prefix, Prefix::B | Prefix::S)
                || (scheme == Scheme::Iob1 && tag.prefix == Prefix::I);
            let continues = matches!(tag.prefix, Prefix::I | Prefix::E);
            table.push(Raw {
                prefix: tag.prefix,
                ty,
                b: if starts {
                    intern(format!("B-{}", tag.ty))
                } else {
                    o_id
                },
                i: if continues {
                    intern(format!("I-{}", tag.ty))
                } else {
                    o_id
                },
            });
        }
        Ok(Relabeler {
            table,
            scheme,
            o_id,
            labels,
        })
    }

    /// The first token of a sentence (raw tag ids, final labels from [`Relabeler::sentence`]) that was
    /// tagged in the input but is outside every chunk of the output: where a violation is.
    pub fn first_violation(&self, raw: impl Iterator<Item = u32>, labels: &[u32]) -> Option<usize> {
        raw.zip(labels)
            .position(|(r, &l)| self.table[r as usize].prefix != Prefix::O && l == self.o_id)
    }

    /// Appends the final label ids of one sentence's raw tag ids to `out`; returns how many of its
    /// tokens were tagged but are not part of a well-formed chunk of the scheme (they become `O`).
    pub fn sentence(&self, raw: impl Iterator<Item = u32>, out: &mut Vec<u32>) -> usize {
        let tags: Vec<Raw> = raw.map(|id| self.table[id as usize]).collect();
        let start = out.len();
        out.resize(start + tags.len(), self.o_id);
        let labels = &mut out[start..];
        match self.scheme {
            Scheme::Iob1 => self.iob1(&tags, labels),
            Scheme::Iob2 => self.iob2(&tags, labels),
            Scheme::Iobes | Scheme::Bilou => self.iobes(&tags, labels),
        }
    }

    /// IOB1: an I-X starts a chunk unless it continues one of type X; B-X starts one. Every sequence is
    /// well formed.
    fn iob1(&self, tags: &[Raw], out: &mut [u32]) -> usize {
        let mut prev: Option<Raw> = None;
        for (t, o) in tags.iter().zip(out.iter_mut()) {
            *o = match t.prefix {
                Prefix::O => self.o_id,
                Prefix::I if prev.is_some_and(|p| p.prefix != Prefix::O && p.ty == t.ty) => t.i,
                _ => t.b,
            };
            prev = Some(*t);
        }
        0
    }

    /// IOB2: B-X starts a chunk, I-X continues a chunk of type X; an I-X that continues nothing is not
    /// in a chunk (seqeval strict).
    fn iob2(&self, tags: &[Raw], out: &mut [u32]) -> usize {
        let mut bad = 0;
        let mut open: Option<u32> = None;
        for (t, o) in tags.iter().zip(out.iter_mut()) {
            *o = match t.prefix {
                Prefix::B => {
                    open = Some(t.ty);
                    t.b
                }
                Prefix::I if open == Some(t.ty) => t.i,
                Prefix::O => {
                    open = None;
                    self.o_id
                }
                _ => {
                    bad += 1;
                    open = None;
                    self.o_id
                }
            };
        }
        bad
    }

    /// IOBES / BILOU: a chunk is S-X alone, or B-X, I-X…, E-X; any other tagged token is not in a
    /// chunk (seqeval strict).
    fn iobes(&self, tags: &[Raw], out: &mut [u32]) -> usize {
        let mut bad = 0;
        let mut i = 0;
        while i < tags.len() {
            let t = tags[i];
            match t.prefix {
                Prefix::O => i += 1,
                Prefix::S => {
                    out[i] = t.b;
                    i += 1;
                }
                Prefix::B => {
                    let mut j = i + 1;
                    while j < tags.len() && tags[j].prefix == Prefix::I && tags[j].ty == t.ty {
                        j += 1;
                    }
                    if j < tags.len() && tags[j].prefix == Prefix::E && tags[j].ty == t.ty {
                        out[i] = t.b;
                        // The I-/E- tags carry the type's I- label (a B- tag's is O).
                        for k in i + 1..=j {
                            out[k] = tags[k].i;
                        }
                        i = j + 1;
                    } else {
                        bad += j - i;
                        i = j;
                    }
                }
                Prefix::I | Prefix::E => {
                    bad += 1;
                    i += 1;
                }
            }
        }
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relabel(tags: &[&str], drop: &[&str], scheme: Scheme) -> (Vec<String>, usize) {
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
        let r = Relabeler::new(&raw, &drop, scheme).unwrap();
        let mut out = Vec::new();
        let bad = r.sentence(ids.into_iter(), &mut out);
        (
            out.iter().map(|&i| r.labels[i as usize].clone()).collect(),
            bad,
        )
    }

    #[test]
    fn parse_accepts_chunk_tags() {
        assert_eq!(parse("O").unwrap().prefix, Prefix::O);
        assert_eq!(parse("B-geo").unwrap().ty, "geo");
        assert_eq!(parse("I-per").unwrap().prefix, Prefix::I);
        assert_eq!(parse("L-per").unwrap().prefix, Prefix::E);
        assert_eq!(parse("U-per").unwrap().letter, 'U');
        for bad in ["", "o", "B-", "B", "X-geo", "B_geo", "B-a b", "I-"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn iob1_to_iob2() {
        assert_eq!(
            relabel(
                &["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-PER"],
                &[],
                Scheme::Iob1
            ),
            (
                vec!["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-PER"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                0
            )
        );
    }

    #[test]
    fn iob2_strict_drops_what_continues_nothing() {
        let (out, bad) = relabel(
            &["O", "I-PER", "B-LOC", "I-LOC", "I-PER", "B-PER", "I-PER"],
            &[],
            Scheme::Iob2,
        );
        assert_eq!(out, ["O", "O", "B-LOC", "I-LOC", "O", "B-PER", "I-PER"]);
        assert_eq!(bad, 2);
    }

    #[test]
    fn iobes_and_bilou_give_the_same_iob2() {
        let iob2 = ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"];
        let (a, bad_a) = relabel(
            &["B-PER", "I-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC"],
            &[],
            Scheme::Iobes,
        );
        let (b, bad_b) = relabel(
            &["B-PER", "I-PER", "L-PER", "O", "U-LOC", "B-LOC", "L-LOC"],
            &[],
            Scheme::Bilou,
        );
        assert_eq!((a, bad_a), (iob2.map(String::from).to_vec(), 0));
        assert_eq!((b, bad_b), (iob2.map(String::from).to_vec(), 0));
        // A chunk never closed, a stray end: not entities.
        let (c, bad) = relabel(
            &["B-PER", "I-PER", "O", "E-LOC", "S-PER"],
            &[],
            Scheme::Iobes,
        );
        assert_eq!(c, ["O", "O", "O", "O", "B-PER"]);
        assert_eq!(bad, 3);
    }

    #[test]
    fn prefixes_outside_the_scheme_are_refused() {
        let raw: Vec<String> = ["O", "B-PER", "E-PER"].map(String::from).to_vec();
        assert_eq!(
            Relabeler::new(&raw, &[], Scheme::Iob2).err(),
            Some(NotInScheme { raw: 2 })
        );
        assert!(Relabeler::new(&raw, &[], Scheme::Bilou).is_err());
        assert!(Relabeler::new(&raw, &[], Scheme::Iobes).is_ok());
    }

    #[test]
    fn dropped_types_become_o() {
        assert_eq!(
            relabel(
                &["B-art", "I-art", "B-geo", "I-geo", "B-eve"],
                &["art", "eve"],
                Scheme::Iob2
            )
            .0,
            ["O", "O", "B-geo", "I-geo", "O"]
        );
    }
}
