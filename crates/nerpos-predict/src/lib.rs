//! `nerpos-predict`'s pieces: reading the input (GMB, CoNLL, JSON Lines whole; raw text line by line,
//! split into words with their character spans), tagging it in length-sorted batches of windows (POS
//! from the input or from the model's POS tagger), and writing CoNLL, JSON Lines (entities with
//! character offsets) and `.npy` logits.

pub mod input;
pub mod output;
pub mod tagger;

pub use input::{InputFormat, Sentence, TextLines, read_input};
pub use output::{Entity, OutputFormat, Scoring, entities_of, write_npy, write_predictions};
pub use tagger::{Precision, TagOptions, Tagger};
