//! Entity extraction: seqeval's default chunking (conlleval rules) and its strict, scheme-based one.

use crate::tags::{DefaultTag, Prefix, StrictTag};

/// An entity: its type and its span `[start, end]` in offsets shared by the gold and predicted
/// streams (inclusive end in default mode, exclusive in strict mode, as seqeval has them; the two
/// modes are never compared with each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entity {
    pub start: u64,
    pub end: u64,
    pub ty: u32,
}

/// seqeval's `get_entities` over sentences flattened with an `O` between them, run as a stream so that
/// sentences can be fed one at a time. Keeping the state across sentences (rather than restarting at
/// each) reproduces seqeval even on malformed tag sequences.
#[derive(Debug, Clone)]
pub struct DefaultChunker {
    prev_tag: char,
    /// `None` is seqeval's initial empty type, which equals no real type (not even `_`).
    prev_type: Option<u32>,
    begin: u64,
    /// Offset of the next token in the flattened sequence.
    pub offset: u64,
}

impl Default for DefaultChunker {
    fn default() -> Self {
        DefaultChunker {
            prev_tag: 'O',
            prev_type: None,
            begin: 0,
            offset: 0,
        }
    }
}

fn end_of_chunk(prev_tag: char, tag: char, prev_type: Option<u32>, ty: u32) -> bool {
    matches!(prev_tag, 'E' | 'S')
        || (matches!(prev_tag, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev_tag != 'O' && prev_tag != '.' && prev_type != Some(ty))
}

fn start_of_chunk(prev_tag: char, tag: char, prev_type: Option<u32>, ty: u32) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev_tag, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != Some(ty))
}

impl DefaultChunker {
    /// Feeds one token; pushes the entity that ends before it, if any.
    pub fn step(&mut self, t: DefaultTag, out: &mut Vec<Entity>) {
        let i = self.offset;
        if end_of_chunk(self.prev_tag, t.tag, self.prev_type, t.ty)
            && let Some(ty) = self.prev_type
        {
            out.push(Entity {
                start: self.begin,
                end: i - 1,
                ty,
            });
        }
        if start_of_chunk(self.prev_tag, t.tag, self.prev_type, t.ty) {
            self.begin = i;
        }
        self.prev_tag = t.tag;
        self.prev_type = Some(t.ty);
        self.offset += 1;
    }

    /// Feeds a sentence followed by the `O` that separates it from the next (`outside` is `O`'s tag).
    pub fn sentence(
        &mut self,
        tags: impl Iterator<Item = DefaultTag>,
        outside: DefaultTag,
        out: &mut Vec<Entity>,
    ) {
        for t in tags {
            self.step(t, out);
        }
        self.step(outside, out);
    }
}

/// A chunk-boundary pattern of `seqeval.scheme`: previous prefix in a set, current prefix in a set,
/// and a condition on the two types.
#[derive(Debug, Clone, Copy)]
struct Pattern(Prefix, Prefix, TypeCond);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypeCond {
    Any,
    Same,
    Diff,
}

/// The tagging schemes of strict mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "UPPERCASE")]
pub enum Scheme {
    Iob1,
    Ioe1,
    Iob2,
    Ioe2,
    Iobes,
    Bilou,
}

struct SchemeDef {
    allowed: Prefix,
    start: &'static [Pattern],
    inside: &'static [Pattern],
    end: &'static [Pattern],
}

use Prefix as P;
use TypeCond::{Any, Diff, Same};

const IOB1: SchemeDef = SchemeDef {
    allowed: P::I.or(P::O).or(P::B),
    start: &[
        Pattern(P::O, P::I, Any),
        Pattern(P::I, P::I, Diff),
        Pattern(P::B, P::I, Any),
        Pattern(P::I, P::B, Same),
        Pattern(P::B, P::B, Same),
    ],
    inside: &[Pattern(P::B, P::I, Same), Pattern(P::I, P::I, Same)],
    end: &[
        Pattern(P::I, P::I, Diff),
        Pattern(P::I, P::O, Any),
        Pattern(P::I, P::B, Any),
        Pattern(P::B, P::O, Any),
        Pattern(P::B, P::I, Diff),
        Pattern(P::B, P::B, Same),
    ],
};

const IOE1: SchemeDef = SchemeDef {
    allowed: P::I.or(P::O).or(P::E),
    start: &[
        Pattern(P::O, P::I, Any),
        Pattern(P::I, P::I, Diff),
        Pattern(P::E, P::I, Any),
        Pattern(P::E, P::E, Same),
    ],
    inside: &[Pattern(P::I, P::I, Same), Pattern(P::I, P::E, Same)],
    end: &[
        Pattern(P::I, P::I, Diff),
        Pattern(P::I, P::O, Any),
        Pattern(P::I, P::E, Diff),
        Pattern(P::E, P::I, Same),
        Pattern(P::E, P::E, Same),
    ],
};

const IOB2: SchemeDef = SchemeDef {
    allowed: P::I.or(P::O).or(P::B),
    start: &[Pattern(P::ANY, P::B, Any)],
    inside: &[Pattern(P::B, P::I, Same), Pattern(P::I, P::I, Same)],
    end: &[
        Pattern(P::I, P::O, Any),
        Pattern(P::I, P::I, Diff),
        Pattern(P::I, P::B, Any),
        Pattern(P::B, P::O, Any),
        Pattern(P::B, P::I, Diff),
        Pattern(P::B, P::B, Any),
    ],
};

const IOE2: SchemeDef = SchemeDef {
    allowed: P::I.or(P::O).or(P::E),
    start: &[
        Pattern(P::O, P::I, Any),
        Pattern(P::O, P::E, Any),
        Pattern(P::E, P::I, Any),
        Pattern(P::E, P::E, Any),
        Pattern(P::I, P::I, Diff),
        Pattern(P::I, P::E, Diff),
    ],
    inside: &[Pattern(P::I, P::E, Same), Pattern(P::I, P::I, Same)],
    end: &[Pattern(P::E, P::ANY, Any)],
};

const IOBES: SchemeDef = SchemeDef {
    allowed: P::I.or(P::O).or(P::B).or(P::E).or(P::S),
    start: &[Pattern(P::ANY, P::B, Any), Pattern(P::ANY, P::S, Any)],
    inside: &[
        Pattern(P::B, P::I, Same),
        Pattern(P::B, P::E, Same),
        Pattern(P::I, P::I, Same),
        Pattern(P::I, P::E, Same),
    ],
    end: &[Pattern(P::S, P::ANY, Any), Pattern(P::E, P::ANY, Any)],
};

const BILOU: SchemeDef = SchemeDef {
    allowed: P::B.or(P::I).or(P::L).or(P::O).or(P::U),
    start: &[Pattern(P::ANY, P::B, Any), Pattern(P::ANY, P::U, Any)],
    inside: &[
        Pattern(P::B, P::I, Same),
        Pattern(P::B, P::L, Same),
        Pattern(P::I, P::I, Same),
        Pattern(P::I, P::L, Same),
    ],
    end: &[Pattern(P::U, P::ANY, Any), Pattern(P::L, P::ANY, Any)],
};

impl Scheme {
    fn def(self) -> &'static SchemeDef {
        match self {
            Scheme::Iob1 => &IOB1,
            Scheme::Ioe1 => &IOE1,
            Scheme::Iob2 => &IOB2,
            Scheme::Ioe2 => &IOE2,
            Scheme::Iobes => &IOBES,
            Scheme::Bilou => &BILOU,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scheme::Iob1 => "IOB1",
            Scheme::Ioe1 => "IOE1",
            Scheme::Iob2 => "IOB2",
            Scheme::Ioe2 => "IOE2",
            Scheme::Iobes => "IOBES",
            Scheme::Bilou => "BILOU",
        }
    }

    /// Whether the scheme allows a prefix (seqeval raises on the others).
    pub fn allows(self, p: Prefix) -> bool {
        p.within(self.def().allowed)
    }

    /// seqeval's `auto_detect`: the scheme whose allowed prefix sets include exactly the prefixes seen
    /// in the gold tags (given as a bit set).
    pub fn detect(seen: u8) -> Option<Scheme> {
        let set = |ps: &[Prefix]| ps.iter().fold(0u8, |acc, p| acc | p.bits());
        let (i, o, b, e, s, u, l) = (P::I, P::O, P::B, P::E, P::S, P::U, P::L);
        let iob2 = [set(&[i, o, b]), set(&[i, b]), set(&[b, o]), set(&[b])];
        let ioe2 = [set(&[i, o, e]), set(&[i, e]), set(&[e, o]), set(&[e])];
        let iobes = [
            set(&[i, o, b, e, s]),
            set(&[i, b, e, s]),
            set(&[i, o, b, e]),
            set(&[o, b, e, s]),
            set(&[i, b, e]),
            set(&[b, e, s]),
            set(&[o, b, e]),
            set(&[b, e]),
            set(&[s]),
        ];
        let bilou = [
            set(&[i, o, b, l, u]),
            set(&[i, b, l, u]),
            set(&[i, o, b, l]),
            set(&[o, b, l, u]),
            set(&[i, b, l]),
            set(&[b, l, u]),
            set(&[o, b, l]),
            set(&[b, l]),
            set(&[u]),
        ];
        if iob2.contains(&seen) {
            Some(Scheme::Iob2)
        } else if ioe2.contains(&seen) {
            Some(Scheme::Ioe2)
        } else if iobes.contains(&seen) {
            Some(Scheme::Iobes)
        } else if bilou.contains(&seen) {
            Some(Scheme::Bilou)
        } else {
            None
        }
    }

    fn matches(patterns: &[Pattern], prev: StrictTag, cur: StrictTag) -> bool {
        patterns.iter().any(|&Pattern(pp, cp, cond)| {
            prev.prefix.within(pp)
                && cur.prefix.within(cp)
                && match cond {
                    Any => true,
                    Same => prev.ty == cur.ty,
                    Diff => prev.ty != cur.ty,
                }
        })
    }

    /// seqeval's `Tokens.entities` for one sentence; `outside` is `O`'s tag, `base` the sentence's
    /// first offset.
    pub fn entities(
        self,
        tokens: &[StrictTag],
        outside: StrictTag,
        base: u64,
        out: &mut Vec<Entity>,
    ) {
        let d = self.def();
        let at = |i: usize| if i < tokens.len() { tokens[i] } else { outside };
        let n = tokens.len() + 1;
        let mut i = 0;
        let mut prev = outside;
        while i < n {
            let token = at(i);
            if Self::matches(d.start, prev, token) {
                // Walk while tokens continue the chunk; the extended sequence ends with O, which
                // continues none, so this stops within it.
                let mut end = i + 1;
                let mut p = token;
                while end < n && Self::matches(d.inside, p, at(end)) {
                    p = at(end);
                    end += 1;
                }
                debug_assert!(end < n, "O continues no chunk in any scheme");
                if Self::matches(d.end, at(end - 1), at(end)) {
                    out.push(Entity {
                        start: base + i as u64,
                        end: base + end as u64,
                        ty: token.ty,
                    });
                }
                i = end;
            } else {
                i += 1;
            }
            prev = at(i - 1);
        }
    }
}
