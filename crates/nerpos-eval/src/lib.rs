//! `nerpos-eval`: entity-level NER metrics exactly as seqeval computes them.
//!
//! Feed sentences of gold and predicted tags to a [`Scorer`] (default, conlleval-compatible rules, or
//! strict with a [`Scheme`]); its [`Counts`] add up across processes; a [`Report`] holds per-type and
//! averaged precision, recall, F1 and support, token accuracy and a type confusion table, and prints
//! seqeval's text table. No ML dependencies.
//!
//! ```
//! use nerpos_eval::{Mode, Report, Scorer};
//! let mut scorer = Scorer::new(Mode::Default);
//! scorer.add(&["B-PER", "I-PER", "O"], &["B-PER", "I-PER", "O"]).unwrap();
//! let report = Report::new(&scorer.counts());
//! assert_eq!(report.micro.f1, 1.0);
//! ```

pub mod conll;
pub mod entities;
pub mod reference;
pub mod report;
pub mod score;
pub mod tags;

pub use entities::Scheme;

/// The entities of one sentence's tags under seqeval's default rules: (type, first word, last word),
/// in order. What a tagger's output is read as.
pub fn entities(tags: &[&str]) -> Vec<(String, usize, usize)> {
    let mut scorer = Scorer::new(Mode::Default);
    let outside = scorer.tag_id("O").expect("O is valid in default mode");
    let ids: Vec<TagId> = tags
        .iter()
        .map(|t| scorer.tag_id(t).unwrap_or(outside))
        .collect();
    scorer.sentence_entities(&ids)
}
pub use reference::ReferenceScores;
pub use report::{Report, Scores};
pub use score::{Counts, Mode, ScoreError, Scorer, TagId};
