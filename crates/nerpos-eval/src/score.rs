//! The scorer: feed sentences of gold and predicted tags, get mergeable counts.

use rustc_hash::FxHashMap as HashMap;

use crate::entities::{DefaultChunker, Entity, Scheme};
use crate::tags::{self, DefaultTag, Prefix, StrictTag};

/// How entities are read from tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// seqeval's default (conlleval-compatible): an I- after O starts an entity, a type switch starts
    /// a new one; any tag is accepted.
    Default,
    /// seqeval's `mode="strict"` with a scheme: only chunks that are well-formed in the scheme count;
    /// tags with a prefix the scheme does not allow are errors.
    Strict(Scheme),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScoreError {
    #[error("gold has {gold} tags but the prediction has {pred}")]
    Length { gold: usize, pred: usize },
    #[error("empty tag")]
    EmptyTag,
    #[error("tag {tag:?} has no IOBES/BILOU prefix (strict mode needs one of I, O, B, E, S, U, L)")]
    NoPrefix { tag: String },
    #[error("tag {tag:?} is not allowed in the {scheme} scheme")]
    NotInScheme { tag: String, scheme: &'static str },
}

#[derive(Debug, Clone)]
struct TagInfo {
    default: DefaultTag,
    strict: Option<StrictTag>,
}

/// Per-type counts plus token accuracy and type confusion; what a process contributes to a
/// distributed evaluation (counts from several scorers with the same types add up).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    /// Type names in id order.
    pub types: Vec<String>,
    /// Per type: entities in both (same type and span), predicted, gold.
    pub tp: Vec<u64>,
    pub pred: Vec<u64>,
    pub gold: Vec<u64>,
    /// `(types + 1)²`, row-major: row = gold type (or `types.len()` = no gold entity on that span),
    /// column = predicted type (or `types.len()` = no predicted entity on that span).
    pub confusion: Vec<u64>,
    pub correct_tokens: u64,
    pub total_tokens: u64,
}

impl Counts {
    fn zero(types: Vec<String>) -> Counts {
        let n = types.len();
        Counts {
            types,
            tp: vec![0; n],
            pred: vec![0; n],
            gold: vec![0; n],
            confusion: vec![0; (n + 1) * (n + 1)],
            correct_tokens: 0,
            total_tokens: 0,
        }
    }

    /// All counts as one vector (for an all-reduce or all-gather between processes).
    pub fn to_vec(&self) -> Vec<u64> {
        let mut v = Vec::with_capacity(3 * self.types.len() + self.confusion.len() + 2);
        v.extend(&self.tp);
        v.extend(&self.pred);
        v.extend(&self.gold);
        v.extend(&self.confusion);
        v.push(self.correct_tokens);
        v.push(self.total_tokens);
        v
    }

    /// The inverse of [`Counts::to_vec`] for the same types; `None` if the length does not fit.
    pub fn from_vec(types: Vec<String>, v: &[u64]) -> Option<Counts> {
        let n = types.len();
        if v.len() != 3 * n + (n + 1) * (n + 1) + 2 {
            return None;
        }
        let (tp, rest) = v.split_at(n);
        let (pred, rest) = rest.split_at(n);
        let (gold, rest) = rest.split_at(n);
        let (confusion, rest) = rest.split_at((n + 1) * (n + 1));
        Some(Counts {
            types,
            tp: tp.to_vec(),
            pred: pred.to_vec(),
            gold: gold.to_vec(),
            confusion: confusion.to_vec(),
            correct_tokens: rest[0],
            total_tokens: rest[1],
        })
    }

    /// Adds another scorer's counts over the same types.
    pub fn merge(&mut self, other: &Counts) {
        assert_eq!(
            self.types, other.types,
            "merging counts needs the same types in the same order"
        );
        let add = |a: &mut Vec<u64>, b: &Vec<u64>| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        add(&mut self.tp, &other.tp);
        add(&mut self.pred, &other.pred);
        add(&mut self.gold, &other.gold);
        add(&mut self.confusion, &other.confusion);
        self.correct_tokens += other.correct_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// A tag as a scorer knows it: handed out by [`Scorer::tag_id`] and [`Scorer::with_tags`] and only
/// meaningful to the scorer that made it. A separate type so that a model's label *indices* cannot be
/// passed where tag ids are meant (the two differ: the scorer interns `O` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TagId(u32);

impl TagId {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// Accumulates entities of gold and predicted sentences.
///
/// Tags are interned: a scorer made [`with_tags`](Scorer::with_tags) from a fixed label list gives
/// the same type ids in every process, so their [`Counts`] can be summed.
#[derive(Debug, Clone)]
pub struct Scorer {
    mode: Mode,
    tag_ids: HashMap<String, TagId>,
    tags: Vec<TagInfo>,
    tag_names: Vec<String>,
    type_ids: HashMap<String, u32>,
    types: Vec<String>,
    outside: TagInfo,
    gold_chunker: DefaultChunker,
    pred_chunker: DefaultChunker,
    /// Offset of the next sentence (strict mode: sentences are chunked separately).
    offset: u64,
    gold: Vec<Entity>,
    pred: Vec<Entity>,
    correct_tokens: u64,
    total_tokens: u64,
    gold_ids: Vec<TagId>,
    pred_ids: Vec<TagId>,
}

impl Scorer {
    pub fn new(mode: Mode) -> Scorer {
        let mut s = Scorer {
            mode,
            tag_ids: HashMap::default(),
            tags: Vec::new(),
            tag_names: Vec::new(),
            type_ids: HashMap::default(),
            types: Vec::new(),
            outside: TagInfo {
                default: DefaultTag { tag: 'O', ty: 0 },
                strict: None,
            },
            gold_chunker: DefaultChunker::default(),
            pred_chunker: DefaultChunker::default(),
            offset: 0,
            gold: Vec::new(),
            pred: Vec::new(),
            correct_tokens: 0,
            total_tokens: 0,
            gold_ids: Vec::new(),
            pred_ids: Vec::new(),
        };
        let o = s.tag_id("O").expect("O is valid in every mode");
        s.outside = s.tags[o.index()].clone();
        s
    }

    /// A scorer with `labels` interned (e.g. a model's label vocabulary), so that every process gives
    /// them the same ids, and the scorer's tag id of each label index. The ids are the scorer's, not
    /// the labels' positions (`O` is always interned first): label indices go through the returned map
    /// before [`Scorer::add_ids`] — passed directly, every tag is scored as its neighbour.
    pub fn with_tags<S: AsRef<str>>(
        mode: Mode,
        labels: &[S],
    ) -> Result<(Scorer, Vec<TagId>), ScoreError> {
        let mut s = Scorer::new(mode);
        let ids = labels
            .iter()
            .map(|l| s.tag_id(l.as_ref()))
            .collect::<Result<Vec<TagId>, _>>()?;
        Ok((s, ids))
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The tags seen so far, in id order.
    pub fn tag_names(&self) -> &[String] {
        &self.tag_names
    }

    fn type_id(&mut self, ty: &str) -> u32 {
        if let Some(&id) = self.type_ids.get(ty) {
            return id;
        }
        let id = self.types.len() as u32;
        self.types.push(ty.to_owned());
        self.type_ids.insert(ty.to_owned(), id);
        id
    }

    /// The id of a tag, interning it on first sight.
    pub fn tag_id(&mut self, tag: &str) -> Result<TagId, ScoreError> {
        if let Some(&id) = self.tag_ids.get(tag) {
            return Ok(id);
        }
        let first = tag.chars().next().ok_or(ScoreError::EmptyTag)?;
        let default = DefaultTag {
            tag: first,
            ty: self.type_id(tags::default_type(tag)),
        };
        let strict = match self.mode {
            Mode::Default => None,
            Mode::Strict(scheme) => {
                let prefix = Prefix::from_char(first).ok_or_else(|| ScoreError::NoPrefix {
                    tag: tag.to_owned(),
                })?;
                if !scheme.allows(prefix) {
                    return Err(ScoreError::NotInScheme {
                        tag: tag.to_owned(),
                        scheme: scheme.name(),
                    });
                }
                Some(StrictTag {
                    prefix,
                    ty: self.type_id(tags::strict_type(tag)),
                })
            }
        };
        let id = TagId(self.tags.len() as u32);
        self.tags.push(TagInfo { default, strict });
        self.tag_names.push(tag.to_owned());
        self.tag_ids.insert(tag.to_owned(), id);
        Ok(id)
    }

    /// Adds one sentence given as tag strings.
    pub fn add(&mut self, gold: &[&str], pred: &[&str]) -> Result<(), ScoreError> {
        if gold.len() != pred.len() {
            return Err(ScoreError::Length {
                gold: gold.len(),
                pred: pred.len(),
            });
        }
        let mut g = std::mem::take(&mut self.gold_ids);
        let mut p = std::mem::take(&mut self.pred_ids);
        g.clear();
        p.clear();
        for (a, b) in gold.iter().zip(pred) {
            g.push(self.tag_id(a)?);
            p.push(self.tag_id(b)?);
        }
        let result = self.add_ids(&g, &p);
        self.gold_ids = g;
        self.pred_ids = p;
        result
    }

    /// Adds one sentence given as tag ids (from [`Scorer::tag_id`] or [`Scorer::with_tags`]).
    pub fn add_ids(&mut self, gold: &[TagId], pred: &[TagId]) -> Result<(), ScoreError> {
        if gold.len() != pred.len() {
            return Err(ScoreError::Length {
                gold: gold.len(),
                pred: pred.len(),
            });
        }
        self.total_tokens += gold.len() as u64;
        self.correct_tokens += gold.iter().zip(pred).filter(|(a, b)| a == b).count() as u64;
        match self.mode {
            Mode::Default => {
                let tags = &self.tags;
                let outside = self.outside.default;
                self.gold_chunker.sentence(
                    gold.iter().map(|&i| tags[i.index()].default),
                    outside,
                    &mut self.gold,
                );
                self.pred_chunker.sentence(
                    pred.iter().map(|&i| tags[i.index()].default),
                    outside,
                    &mut self.pred,
                );
            }
            Mode::Strict(scheme) => {
                let strict = |ids: &[TagId]| -> Vec<StrictTag> {
                    ids.iter()
                        .map(|&i| {
                            self.tags[i.index()]
                                .strict
                                .expect("strict tags are interned in strict mode")
                        })
                        .collect()
                };
                let (g, p) = (strict(gold), strict(pred));
                let outside = self.outside.strict.expect("O is interned in strict mode");
                scheme.entities(&g, outside, self.offset, &mut self.gold);
                scheme.entities(&p, outside, self.offset, &mut self.pred);
                self.offset += gold.len() as u64 + 1;
            }
        }
        Ok(())
    }

    /// The entities of one sentence of tag ids under this scorer's rules (default mode), without
    /// adding them to the counts: (type, first, last) with positions within the sentence.
    pub fn sentence_entities(&self, ids: &[TagId]) -> Vec<(String, usize, usize)> {
        let mut chunker = DefaultChunker::default();
        let mut out = Vec::new();
        chunker.sentence(
            ids.iter().map(|&i| self.tags[i.index()].default),
            self.outside.default,
            &mut out,
        );
        out.into_iter()
            .map(|e| {
                (
                    self.types[e.ty as usize].clone(),
                    e.start as usize,
                    e.end as usize,
                )
            })
            .collect()
    }

    /// The counts so far: per type, entities found in both (same type and span), predicted and gold.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::zero(self.types.clone());
        let none = self.types.len();
        let mut gold = self.gold.clone();
        let mut pred = self.pred.clone();
        gold.sort_unstable();
        pred.sort_unstable();
        for e in &gold {
            c.gold[e.ty as usize] += 1;
        }
        for e in &pred {
            c.pred[e.ty as usize] += 1;
        }
        // Walk both span-sorted lists: same span and type is a hit; same span, other type a confusion;
        // a span on one side only is missed (gold) or spurious (predicted).
        let (mut i, mut j) = (0, 0);
        let width = none + 1;
        while i < gold.len() || j < pred.len() {
            let g = gold.get(i).map(|e| (e.start, e.end));
            let p = pred.get(j).map(|e| (e.start, e.end));
            match (g, p) {
                (Some(a), Some(b)) if a == b => {
                    let (gt, pt) = (gold[i].ty as usize, pred[j].ty as usize);
                    if gt == pt {
                        c.tp[gt] += 1;
                    }
                    c.confusion[gt * width + pt] += 1;
                    i += 1;
                    j += 1;
                }
                (Some(a), b) if b.is_none_or(|b| a < b) => {
                    c.confusion[gold[i].ty as usize * width + none] += 1;
                    i += 1;
                }
                _ => {
                    c.confusion[none * width + pred[j].ty as usize] += 1;
                    j += 1;
                }
            }
        }
        c.correct_tokens = self.correct_tokens;
        c.total_tokens = self.total_tokens;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entities(mode: Mode, sentences: &[&[&str]]) -> Vec<(String, u64, u64)> {
        let mut s = Scorer::new(mode);
        for sent in sentences {
            s.add(sent, sent).unwrap();
        }
        let mut out: Vec<_> = s
            .gold
            .iter()
            .map(|e| (s.types[e.ty as usize].clone(), e.start, e.end))
            .collect();
        out.sort_by_key(|e| (e.1, e.2));
        out
    }

    fn e(ty: &str, a: u64, b: u64) -> (String, u64, u64) {
        (ty.to_string(), a, b)
    }

    #[test]
    fn default_mode_follows_conlleval() {
        // seqeval docs: get_entities(['B-PER', 'I-PER', 'O', 'B-LOC']) == [('PER', 0, 1), ('LOC', 3, 3)]
        assert_eq!(
            entities(Mode::Default, &[&["B-PER", "I-PER", "O", "B-LOC"]]),
            [e("PER", 0, 1), e("LOC", 3, 3)]
        );
        // I- after O starts an entity; a type switch starts a new one.
        assert_eq!(
            entities(Mode::Default, &[&["O", "I-PER", "I-PER", "I-LOC"]]),
            [e("PER", 1, 2), e("LOC", 3, 3)]
        );
        // Sentences never join: offsets are global with an O between sentences.
        assert_eq!(
            entities(Mode::Default, &[&["B-PER"], &["I-PER"]]),
            [e("PER", 0, 0), e("PER", 2, 2)]
        );
        // IOBES.
        assert_eq!(
            entities(Mode::Default, &[&["S-PER", "B-LOC", "E-LOC", "S-LOC"]]),
            [e("PER", 0, 0), e("LOC", 1, 2), e("LOC", 3, 3)]
        );
    }

    #[test]
    fn strict_iob2_drops_ill_formed_chunks() {
        let s = Mode::Strict(Scheme::Iob2);
        // I- after O is no entity in strict IOB2; B-X I-Y ends X at B and Y never starts.
        assert_eq!(
            entities(s, &[&["O", "I-PER", "B-LOC", "I-LOC"]]),
            [e("LOC", 2, 4)]
        );
        assert_eq!(entities(s, &[&["B-PER", "I-LOC"]]), [e("PER", 0, 1)]);
    }

    #[test]
    fn strict_rejects_prefixes_outside_the_scheme() {
        let mut s = Scorer::new(Mode::Strict(Scheme::Iob2));
        assert!(matches!(
            s.add(&["S-PER"], &["O"]),
            Err(ScoreError::NotInScheme { .. })
        ));
        assert!(matches!(
            s.add(&["X-PER"], &["O"]),
            Err(ScoreError::NoPrefix { .. })
        ));
        assert_eq!(
            s.add(&["O"], &["O", "O"]),
            Err(ScoreError::Length { gold: 1, pred: 2 })
        );
    }

    #[test]
    fn sentence_entities_for_taggers() {
        assert_eq!(
            crate::entities(&["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]),
            [
                ("PER".to_string(), 0, 1),
                ("LOC".to_string(), 3, 3),
                ("LOC".to_string(), 4, 4)
            ]
        );
        assert!(crate::entities(&[]).is_empty());
    }

    #[test]
    fn counts_and_confusion() {
        let mut s = Scorer::new(Mode::Default);
        s.add(
            &["B-PER", "O", "B-LOC", "O", "B-ORG"],
            &["B-PER", "O", "B-ORG", "B-MISC", "O"],
        )
        .unwrap();
        let c = s.counts();
        let id = |t: &str| c.types.iter().position(|x| x == t).unwrap();
        assert_eq!(c.tp[id("PER")], 1);
        assert_eq!(
            (c.gold[id("LOC")], c.pred[id("LOC")], c.tp[id("LOC")]),
            (1, 0, 0)
        );
        assert_eq!(
            (c.gold[id("ORG")], c.pred[id("ORG")], c.tp[id("ORG")]),
            (1, 1, 0)
        );
        let w = c.types.len() + 1;
        let none = c.types.len();
        assert_eq!(
            c.confusion[id("LOC") * w + id("ORG")],
            1,
            "same span, other type"
        );
        assert_eq!(c.confusion[id("ORG") * w + none], 1, "missed");
        assert_eq!(c.confusion[none * w + id("MISC")], 1, "spurious");
        assert_eq!((c.correct_tokens, c.total_tokens), (2, 5));

        let v = c.to_vec();
        let back = Counts::from_vec(c.types.clone(), &v).unwrap();
        assert_eq!(back, c);
        let mut twice = c.clone();
        twice.merge(&c);
        assert_eq!(twice.tp[id("PER")], 2);
    }

    /// Scoring label indices through `Scorer::with_tags`'s map is scoring the label strings (`O` is not first in a
    /// sorted vocabulary, which is what broke the direct use of indices).
    #[test]
    fn label_indices_score_as_their_strings() {
        let labels: Vec<String> = ["B-geo", "B-per", "I-geo", "I-per", "O"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let gold = [[0u32, 2, 4, 1, 3, 4], [4, 4, 0, 4, 1, 4]];
        let pred = [[0u32, 4, 4, 1, 3, 4], [4, 4, 0, 4, 4, 4]];
        let (mut by_index, ids) = Scorer::with_tags(Mode::Default, &labels).unwrap();
        let mut by_string = Scorer::new(Mode::Default);
        for (g, p) in gold.iter().zip(&pred) {
            let map = |v: &[u32]| v.iter().map(|&l| ids[l as usize]).collect::<Vec<_>>();
            by_index.add_ids(&map(g), &map(p)).unwrap();
            let names = |v: &[u32]| {
                v.iter()
                    .map(|&l| labels[l as usize].as_str())
                    .collect::<Vec<_>>()
            };
            by_string.add(&names(g), &names(p)).unwrap();
        }
        let (a, b) = (
            crate::Report::new(&by_index.counts()),
            crate::Report::new(&by_string.counts()),
        );
        assert_eq!(a.micro.f1, b.micro.f1);
        // 3 gold entities (geo, per, geo, per → 4), predicted 3, 2 correct.
        assert!(
            (a.micro.precision - 2.0 / 3.0).abs() < 1e-12,
            "{}",
            a.to_seqeval_string(4)
        );
    }
}
