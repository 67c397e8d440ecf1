//! Evaluation with nerpos-eval: word-level predictions at each word's first sub-word, the windows of
//! long sentences re-assembled into whole sentences before scoring, each process scoring its share of
//! sentences, the counts gathered and added.

use std::ops::Range;

use candle_core::Device;
use nerpos_dist::Comm;
use nerpos_eval::{Counts, Mode, Report, Scorer};
use nerpos_model::{BertNerPos, RowView, WordPrediction, predict_rows};
use nerpos_prep::Row;

/// A split's rows grouped by sentence (rows of a sentence are its windows, in order).
pub struct EvalData {
    pub rows: Vec<Row>,
    pub sentences: Vec<Range<usize>>,
}

impl EvalData {
    pub fn new(mut rows: Vec<Row>) -> EvalData {
        rows.sort_by_key(|r| (r.sentence_index, r.window));
        let mut sentences = Vec::new();
        let mut start = 0;
        for i in 1..=rows.len() {
            if i == rows.len() || rows[i].sentence_index != rows[start].sentence_index {
                sentences.push(start..i);
                start = i;
            }
        }
        EvalData { rows, sentences }
    }

    pub fn is_empty(&self) -> bool {
        self.sentences.is_empty()
    }
}

/// Settings of an evaluation.
pub struct EvalSpec {
    pub labels: Vec<String>,
    /// Rows per packed batch.
    pub batch_rows: usize,
    pub device: Device,
}

/// An evaluation's results.
pub struct Evaluation {
    /// The seqeval report of the NER tags.
    pub report: Report,
    pub counts: Counts,
    /// The POS tagger's accuracy on the words' corpus POS tags (a model with a POS tagger).
    pub pos_accuracy: Option<f64>,
}

/// Scores `data` with `model`: this rank scores sentences r, r+W, r+2W, …; the counts of all ranks are
/// gathered and added, so every rank returns the same report.
pub fn evaluate(
    model: &BertNerPos,
    comm: &mut Comm,
    data: &EvalData,
    spec: &EvalSpec,
) -> anyhow::Result<Evaluation> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let mine: Vec<usize> = (rank..data.sentences.len()).step_by(world).collect();
    let rows: Vec<usize> = mine
        .iter()
        .flat_map(|&s| data.sentences[s].clone())
        .collect();
    // Per row: its owned words' predictions.
    let mut predicted: Vec<Vec<WordPrediction>> = vec![Vec::new(); data.rows.len()];
    for batch in rows.chunks(spec.batch_rows.max(1)) {
        let views: Vec<RowView> = batch
            .iter()
            .map(|&i| RowView::from(&data.rows[i]))
            .collect();
        for (&i, words) in batch.iter().zip(predict_rows(
            model,
            &views,
            Default::default(),
            &spec.device,
        )?) {
            predicted[i] = words;
        }
    }
    let (mut scorer, ids) = Scorer::with_tags(Mode::Default, &spec.labels)?;
    let mut pos = [0u64; 2];
    for &s in &mine {
        let (mut gold, mut pred) = (Vec::new(), Vec::new());
        for i in data.sentences[s].clone() {
            let (labels, gold_pos) = gold_of(&data.rows[i]);
            gold.extend(labels.into_iter().map(|l| ids[l as usize]));
            pred.extend(predicted[i].iter().map(|w| ids[w.label as usize]));
            for (w, g) in predicted[i].iter().zip(gold_pos) {
                if let Some(p) = w.pos {
                    pos[0] += u64::from(p == g);
                    pos[1] += 1;
                }
            }
        }
        scorer.add_ids(&gold, &pred)?;
    }
    let (total, pos) = gather(comm, scorer.counts(), pos)?;
    Ok(Evaluation {
        report: Report::new(&total),
        counts: total,
        pos_accuracy: (pos[1] > 0).then(|| pos[0] as f64 / pos[1] as f64),
    })
}

/// Every rank's counts (and POS tags right and scored), added.
fn gather(comm: &mut Comm, mine: Counts, pos: [u64; 2]) -> anyhow::Result<(Counts, [u64; 2])> {
    let mut values = mine.to_vec();
    values.extend(pos);
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let zeros = vec![0; values.len() - 2];
    let mut total = Counts::from_vec(mine.types.clone(), &zeros).expect("same layout");
    let mut pos = [0u64; 2];
    for part in comm.all_gather(&bytes)? {
        let values: Vec<u64> = part
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8 bytes")))
            .collect();
        // The counts, then the POS tags right and scored.
        let shape_error = || anyhow::anyhow!("a rank sent evaluation counts of another shape");
        let (counts, [right, scored]) = values.split_last_chunk::<2>().ok_or_else(shape_error)?;
        total.merge(&Counts::from_vec(mine.types.clone(), counts).ok_or_else(shape_error)?);
        pos[0] += right;
        pos[1] += scored;
    }
    Ok((total, pos))
}

/// The gold label ids and the corpus's POS ids of a row's owned words (at each word's first sub-word).
fn gold_of(r: &Row) -> (Vec<u32>, Vec<u32>) {
    let owned = r.label_start as i32..r.label_end as i32;
    r.word_ids
        .iter()
        .enumerate()
        .filter(|&(p, &w)| owned.contains(&w) && (p == 0 || r.word_ids[p - 1] != w))
        .map(|(p, _)| {
            (
                r.labels[p].max(0) as u32,
                r.pos_ids.get(p).copied().unwrap_or(0),
            )
        })
        .unzip()
}
