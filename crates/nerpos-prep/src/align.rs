//! Aligning word-level labels and POS tags to sub-words, and windowing long sentences.

use crate::manifest::{IGNORE_LABEL, LabelSubwords, POS_PAD_ID};
use crate::shards::Row;

/// A window over a sentence's words: it holds words `word_start..word_end` and carries the labels of
/// words `label_start..label_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub word_start: usize,
    pub word_end: usize,
    pub label_start: usize,
    pub label_end: usize,
}

/// Splits a sentence whose words have `lens` sub-words into windows of at most `budget` sub-words, at
/// word boundaries, consecutive windows sharing up to `overlap` words. Every `lens[i]` must be ≤ `budget`
/// (longer words are cut before). The label ranges partition the words: a word in an overlap is
/// labelled in the window where it sits further from the edge (the overlap is split in half).
pub fn plan_windows(lens: &[usize], budget: usize, overlap: usize) -> Vec<Window> {
    debug_assert!(lens.iter().all(|&l| l <= budget && l > 0));
    let n = lens.len();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    loop {
        let mut end = start;
        let mut used = 0;
        while end < n && used + lens[end] <= budget {
            used += lens[end];
            end += 1;
        }
        spans.push((start, end));
        if end >= n {
            break;
        }
        // Repeat up to `overlap` words as left context, but always leave room for the next new word.
        let mut next = end.saturating_sub(overlap).max(start + 1);
        while lens[next..=end].iter().sum::<usize>() > budget {
            next += 1;
        }
        start = next;
    }
    let mut windows = Vec::with_capacity(spans.len());
    let mut label_start = 0;
    for (k, &(s, e)) in spans.iter().enumerate() {
        let label_end = match spans.get(k + 1) {
            Some(&(next_s, _)) => (next_s + (e - next_s) / 2).max(label_start),
            None => n,
        };
        windows.push(Window {
            word_start: s,
            word_end: e,
            label_start,
            label_end,
        });
        label_start = label_end;
    }
    windows
}

/// Everything about one sentence that alignment needs, as ids.
pub struct SentenceInput<'a> {
    pub sentence_index: u32,
    pub sentence_id: &'a str,
    pub source_line: u32,
    /// Each word's sub-word ids (already non-empty; [UNK] for words the tokenizer dropped).
    pub pieces: Vec<&'a [u32]>,
    pub labels: Vec<i32>,
    pub pos_ids: Vec<u32>,
    pub words: Vec<&'a str>,
    pub pos: Vec<&'a str>,
    pub tags: Vec<&'a str>,
}

/// Alignment settings shared by all sentences of a run.
pub struct Aligner {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
    pub max_len: usize,
    pub overlap: usize,
    pub label_subwords: LabelSubwords,
    /// For `LabelSubwords::All`: label id to put on a word's continuation sub-words (I-X for B-X).
    pub continuation: Vec<i32>,
}

/// What aligning a sentence counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlignStats {
    pub subwords: usize,
    pub truncated_words: usize,
}

impl Aligner {
    /// Sub-words available for words in one window.
    pub fn budget(&self) -> usize {
        self.max_len - self.prefix.len() - self.suffix.len()
    }

    /// The rows (windows) of one sentence.
    pub fn rows<'a>(&self, s: &SentenceInput<'a>) -> (Vec<Row<&'a str>>, AlignStats) {
        let budget = self.budget();
        let mut stats = AlignStats::default();
        // A single word longer than a window keeps its first `budget` sub-words: its label is on the
        // first one, so nothing is lost but the tail of a pathological word.
        let pieces: Vec<&[u32]> = s
            .pieces
            .iter()
            .map(|p| {
                if p.len() > budget {
                    stats.truncated_words += 1;
                    &p[..budget]
                } else {
                    p
                }
            })
            .collect();
        let lens: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
        stats.subwords = lens.iter().sum();
        let windows = plan_windows(&lens, budget, self.overlap);
        let num_windows = windows.len() as u16;
        let rows = windows
            .iter()
            .enumerate()
            .map(|(k, w)| {
                let mut row = self.empty_row(s, w, k as u16, num_windows, &lens);
                self.push_special(&mut row, &self.prefix);
                self.push_words(&mut row, s, w, &pieces);
                self.push_special(&mut row, &self.suffix);
                row
            })
            .collect();
        (rows, stats)
    }

    /// Window `k`'s row with its bookkeeping and words filled in, its token columns empty (sized
    /// for the window's sub-words and special tokens).
    fn empty_row<'a>(
        &self,
        s: &SentenceInput<'a>,
        w: &Window,
        k: u16,
        num_windows: u16,
        lens: &[usize],
    ) -> Row<&'a str> {
        let len: usize = lens[w.word_start..w.word_end].iter().sum::<usize>()
            + self.prefix.len()
            + self.suffix.len();
        Row {
            sentence_index: s.sentence_index,
            sentence_id: s.sentence_id,
            source_line: s.source_line,
            window: k,
            num_windows,
            word_start: w.word_start as u32,
            label_start: w.label_start as u32,
            label_end: w.label_end as u32,
            input_ids: Vec::with_capacity(len),
            attention_mask: vec![1; len],
            labels: Vec::with_capacity(len),
            pos_ids: Vec::with_capacity(len),
            word_ids: Vec::with_capacity(len),
            words: s.words[w.word_start..w.word_end].to_vec(),
            pos: s.pos[w.word_start..w.word_end].to_vec(),
            tags: s.tags[w.word_start..w.word_end].to_vec(),
        }
    }

    /// Special tokens ([CLS], [SEP]): no label, no POS, no word.
    fn push_special(&self, row: &mut Row<&str>, ids: &[u32]) {
        for &id in ids {
            row.input_ids.push(id);
            row.labels.push(IGNORE_LABEL);
            row.pos_ids.push(POS_PAD_ID);
            row.word_ids.push(-1);
        }
    }

    /// The window's words' sub-words. Only words the window owns (its label span; overlap words are
    /// context) carry labels: on the first sub-word, or on all with continuations as I-X.
    fn push_words(&self, row: &mut Row<&str>, s: &SentenceInput, w: &Window, pieces: &[&[u32]]) {
        let words = pieces[w.word_start..w.word_end]
            .iter()
            .zip(&s.labels[w.word_start..w.word_end])
            .zip(&s.pos_ids[w.word_start..w.word_end]);
        for (i, ((word_pieces, &word_label), &pos)) in (w.word_start..).zip(words) {
            let owned = (w.label_start..w.label_end).contains(&i);
            for (j, &id) in word_pieces.iter().enumerate() {
                let label = match (owned, j, self.label_subwords) {
                    (false, _, _) => IGNORE_LABEL,
                    (true, 0, _) => word_label,
                    (true, _, LabelSubwords::First) => IGNORE_LABEL,
                    (true, _, LabelSubwords::All) => self.continuation[word_label as usize],
                };
                row.input_ids.push(id);
                row.labels.push(label);
                row.pos_ids.push(pos);
                row.word_ids.push(i as i32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_partition(lens: &[usize], budget: usize, overlap: usize) -> Vec<Window> {
        let ws = plan_windows(lens, budget, overlap);
        let mut next_label = 0;
        for (k, w) in ws.iter().enumerate() {
            assert!(
                lens[w.word_start..w.word_end].iter().sum::<usize>() <= budget,
                "{ws:?}"
            );
            assert!(w.word_start < w.word_end, "{ws:?}");
            assert_eq!(
                w.label_start, next_label,
                "labels partition the words: {ws:?}"
            );
            assert!(
                w.word_start <= w.label_start && w.label_end <= w.word_end,
                "{ws:?}"
            );
            next_label = w.label_end;
            if k > 0 {
                let prev = ws[k - 1];
                assert!(
                    w.word_start > prev.word_start && w.word_end > prev.word_end,
                    "{ws:?}"
                );
                assert!(w.word_start <= prev.word_end, "no word skipped: {ws:?}");
                assert!(prev.word_end - w.word_start <= overlap, "{ws:?}");
            }
        }
        assert_eq!(next_label, lens.len());
        assert_eq!(ws.last().unwrap().word_end, lens.len());
        ws
    }

    #[test]
    fn short_sentence_is_one_window() {
        let ws = check_partition(&[1, 2, 3], 10, 0);
        assert_eq!(
            ws,
            [Window {
                word_start: 0,
                word_end: 3,
                label_start: 0,
                label_end: 3
            }]
        );
    }

    #[test]
    fn long_sentence_splits_at_word_boundaries() {
        let ws = check_partition(&[2, 2, 2, 2, 2], 5, 0);
        let spans: Vec<_> = ws.iter().map(|w| (w.word_start, w.word_end)).collect();
        assert_eq!(spans, [(0, 2), (2, 4), (4, 5)]);
    }

    #[test]
    fn overlap_repeats_words_and_splits_their_labels() {
        let ws = check_partition(&[1; 10], 6, 2);
        let spans: Vec<_> = ws
            .iter()
            .map(|w| (w.word_start, w.word_end, w.label_start, w.label_end))
            .collect();
        assert_eq!(spans, [(0, 6, 0, 5), (4, 10, 5, 10)]);
    }

    #[test]
    fn windows_partition_labels_under_many_shapes() {
        // Deterministic pseudo-random sentences, budgets and overlaps.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m) as usize
        };
        for _ in 0..2000 {
            let budget = 1 + next(12);
            let n = 1 + next(40);
            let lens: Vec<usize> = (0..n).map(|_| 1 + next(budget as u64)).collect();
            check_partition(&lens, budget, next(5));
        }
    }

    fn sentence<'a>(pieces: Vec<&'a [u32]>, labels: Vec<i32>) -> SentenceInput<'a> {
        let n = pieces.len();
        SentenceInput {
            sentence_index: 7,
            sentence_id: "s7",
            source_line: 3,
            pieces,
            labels,
            pos_ids: (0..n as u32).map(|i| 10 + i).collect(),
            words: vec!["w"; n],
            pos: vec!["P"; n],
            tags: vec!["O"; n],
        }
    }

    fn aligner(max_len: usize, label_subwords: LabelSubwords) -> Aligner {
        Aligner {
            prefix: vec![101],
            suffix: vec![102],
            max_len,
            overlap: 0,
            label_subwords,
            // labels: 0 = B-X, 1 = I-X, 2 = O
            continuation: vec![1, 1, 2],
        }
    }

    #[test]
    fn first_subword_alignment() {
        let (rows, stats) = aligner(16, LabelSubwords::First)
            .rows(&sentence(vec![&[5, 6], &[7], &[8, 9, 10]], vec![0, 1, 2]));
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.input_ids, [101, 5, 6, 7, 8, 9, 10, 102]);
        assert_eq!(r.labels, [-100, 0, -100, 1, 2, -100, -100, -100]);
        assert_eq!(r.pos_ids, [0, 10, 10, 11, 12, 12, 12, 0]);
        assert_eq!(r.word_ids, [-1, 0, 0, 1, 2, 2, 2, -1]);
        assert_eq!(r.attention_mask, [1; 8]);
        assert_eq!(stats.subwords, 6);
    }

    #[test]
    fn all_subword_alignment_uses_inside_tags() {
        let (rows, _) =
            aligner(16, LabelSubwords::All).rows(&sentence(vec![&[5, 6], &[7, 8]], vec![0, 2]));
        assert_eq!(rows[0].labels, [-100, 0, 1, 2, 2, -100]);
    }

    #[test]
    fn windows_keep_every_label_once() {
        let (rows, _) = aligner(5, LabelSubwords::First).rows(&sentence(
            vec![&[1, 2], &[3], &[4, 5], &[6]],
            vec![0, 1, 2, 0],
        ));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].input_ids, [101, 1, 2, 3, 102]);
        assert_eq!(rows[1].input_ids, [101, 4, 5, 6, 102]);
        assert_eq!(rows[1].word_ids, [-1, 2, 2, 3, -1]);
        assert_eq!(rows[1].word_start, 2);
        let labelled: usize = rows
            .iter()
            .map(|r| r.labels.iter().filter(|&&l| l != -100).count())
            .sum();
        assert_eq!(labelled, 4);
        assert!(rows.iter().all(|r| r.num_windows == 2));
    }

    #[test]
    fn overlong_word_is_cut_not_dropped() {
        let long: Vec<u32> = (1..=10).collect();
        let (rows, stats) =
            aligner(5, LabelSubwords::First).rows(&sentence(vec![&long, &[42]], vec![0, 2]));
        assert_eq!(stats.truncated_words, 1);
        assert_eq!(rows[0].input_ids, [101, 1, 2, 3, 102]);
        assert_eq!(rows[0].labels, [-100, 0, -100, -100, -100]);
        assert_eq!(rows[1].input_ids, [101, 42, 102]);
    }
}
