//! Training batches: each epoch's order comes from the seed and the epoch alone; optimiser batches of
//! (processes × rows per process × accumulation) rows are formed from it first and split across
//! micro-batches and processes afterwards, so the sequence of optimiser batches — and so the model —
//! does not depend on how many processes train it. A background thread packs the next batches while
//! the current one trains.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use nerpos_model::PackedBatch;
use nerpos_prep::Row;

/// How optimiser batches are sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batching {
    pub world: usize,
    /// Rows of one optimiser step over all processes (the cap when a token budget is set).
    pub step_rows: usize,
    /// Real sub-word tokens of one optimiser step over all processes; 0 = rows only.
    pub step_tokens: usize,
    /// Micro-batches per process per step.
    pub grad_accum: usize,
    pub length_grouping: bool,
    pub seed: u64,
}

impl Batching {
    /// The batching of `cfg` for `world` processes: the global batch (configured, or the per-process
    /// budget × processes × `grad_accum`), and as many micro-batches per process as keep each within
    /// the per-process budget (`batch_size` rows, `batch_tokens` tokens).
    pub fn resolve(cfg: &crate::TrainConfig, world: usize) -> Batching {
        let step_rows = cfg
            .global_batch_size
            .unwrap_or(cfg.batch_size * world * cfg.grad_accum);
        let step_tokens = cfg
            .global_batch_tokens
            .unwrap_or(cfg.batch_tokens * world * cfg.grad_accum);
        let grad_accum = if cfg.global_batch_size.is_some() || cfg.global_batch_tokens.is_some() {
            let by_rows = step_rows.div_ceil(world * cfg.batch_size);
            let by_tokens = match cfg.batch_tokens {
                0 => 1,
                t => step_tokens.div_ceil(world * t),
            };
            by_rows.max(by_tokens).max(1)
        } else {
            cfg.grad_accum
        };
        Batching {
            world,
            step_rows,
            step_tokens,
            grad_accum,
            length_grouping: cfg.length_grouping,
            seed: cfg.seed,
        }
    }
}

/// One optimiser step: `micro[m][r]` are the rows of micro-batch m for rank r.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    pub micro: Vec<Vec<Vec<usize>>>,
}

impl StepPlan {
    pub fn rows(&self) -> usize {
        self.micro.iter().flatten().map(Vec::len).sum()
    }
}

/// Chunk of optimiser batches within which rows are sorted by length (large, so that batches still
/// mix sentences from all over the corpus).
const GROUPING_CHUNK: usize = 50;

fn epoch_rng(seed: u64, epoch: usize, salt: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt)
}

/// The optimiser steps of `epoch` over rows of the given lengths (in sub-words).
pub fn plan_epoch(lengths: &[usize], b: &Batching, epoch: usize) -> Vec<StepPlan> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut epoch_rng(b.seed, epoch, 1));
    let per_step_rows = b.step_rows;
    let token_budget = b.step_tokens;

    // Optimiser batches, as row lists.
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let chunk_rows = if b.length_grouping {
        per_step_rows * GROUPING_CHUNK
    } else {
        order.len().max(1)
    };
    for chunk in order.chunks(chunk_rows.max(1)) {
        let mut chunk = chunk.to_vec();
        if b.length_grouping {
            chunk.sort_by_key(|&i| lengths[i]);
        }
        let mut current: Vec<usize> = Vec::new();
        let mut tokens = 0;
        for i in chunk {
            let full_rows = current.len() >= per_step_rows;
            let full_tokens = token_budget > 0 && tokens + lengths[i] > token_budget;
            if !current.is_empty() && (full_rows || full_tokens) {
                batches.push(std::mem::take(&mut current));
                tokens = 0;
            }
            tokens += lengths[i];
            current.push(i);
        }
        if !current.is_empty() {
            batches.push(current);
        }
    }
    if b.length_grouping {
        // Long and short batches interleaved over the epoch, not in length order.
        batches.shuffle(&mut epoch_rng(b.seed, epoch, 2));
    }

    batches
        .into_iter()
        .map(|rows| {
            let slices = b.grad_accum * b.world;
            let mut parts = balanced_parts(&rows, lengths, slices).into_iter();
            // Micro-batch m, rank r gets the (m·W + r)-th part.
            StepPlan {
                micro: (0..b.grad_accum)
                    .map(|_| {
                        (0..b.world)
                            .map(|_| parts.next().unwrap_or_default())
                            .collect()
                    })
                    .collect(),
            }
        })
        .collect()
}

/// POS tags replaced by the unknown tag in training: each sub-word's draw keyed by the run's seed, the
/// epoch and the sentence (as dropout masks are, [`nerpos_model::dropout`]), so that it does not depend
/// on the process or the batch the sentence lands in.
#[derive(Debug, Clone, Copy)]
pub struct PosDropout {
    pub seed: u64,
    pub epoch: usize,
    pub p: f64,
    /// The unknown POS id.
    pub unk: u32,
}

impl PosDropout {
    /// Row `sentence`'s POS ids with the dropped ones replaced.
    fn apply(&self, sentence: u64, row: &Row, out: &mut Vec<u32>) {
        use nerpos_kernels::dropout::{Site, draw, sentence_key, site_key};
        out.clear();
        let key = site_key(
            sentence_key(self.seed, self.epoch as u64, sentence),
            Site::PosTags.code(),
        );
        // Dropped when the draw falls below p·2¹⁶ (the complement of a keep-threshold).
        let below = (self.p * 65536.0).round() as u32;
        out.extend(
            row.pos_ids
                .iter()
                .zip(&row.word_ids)
                .enumerate()
                .map(|(k, (&p, &w))| {
                    let drop = w >= 0 && draw(key, k as u64) < below;
                    if drop { self.unk } else { p }
                }),
        );
    }
}

/// Packs `rows` of `data` into one micro-batch (no padding): the head runs on the labelled sub-words;
/// each row's sentence is its index in `data`. POS ids are dropped as `pos_dropout` says (training).
pub fn pack_batch(data: &[Row], rows: &[usize], pos_dropout: Option<&PosDropout>) -> PackedBatch {
    let mut b = PackedBatch::new();
    let mut pos: Vec<u32> = Vec::new();
    for &i in rows {
        let r = &data[i];
        match pos_dropout {
            Some(d) if d.p > 0.0 => d.apply(i as u64, r, &mut pos),
            _ => {
                pos.clear();
                pos.extend_from_slice(&r.pos_ids);
            }
        }
        let labelled = r
            .labels
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l >= 0)
            .map(|(p, &l)| (p, Some(l as u32)));
        b.push_row(i as u64, &r.input_ids, &pos, labelled);
        // The POS tagger learns the corpus's tags, not what POS dropout left of them.
        let gold_pos = r.labels.iter().zip(&r.pos_ids).filter(|&(&l, _)| l >= 0);
        b.pos_targets.extend(gold_pos.map(|(_, &p)| p));
    }
    b
}

/// What the loader thread sends: the step's micro-batches for this rank.
pub struct LoadedStep {
    pub epoch: usize,
    /// Index of the step within its epoch.
    pub index: usize,
    pub micro: Vec<PackedBatch>,
}

/// Settings of the background loader.
#[derive(Clone)]
pub struct LoaderSpec {
    pub batching: Batching,
    pub rank: usize,
    pub epochs: usize,
    pub pos_unk: u32,
    pub pos_dropout: f64,
}

/// Starts the loader at (`epoch`, `step`) and returns the channel it fills (a few steps ahead).
pub fn start_loader(
    data: Arc<Vec<Row>>,
    spec: LoaderSpec,
    epoch: usize,
    step: usize,
) -> Receiver<LoadedStep> {
    let (tx, rx): (SyncSender<LoadedStep>, _) = sync_channel(3);
    std::thread::Builder::new()
        .name("nerpos-loader".into())
        .spawn(move || {
            let lengths: Vec<usize> = data.iter().map(|r| r.input_ids.len()).collect();
            for e in epoch..spec.epochs {
                let plan = plan_epoch(&lengths, &spec.batching, e);
                let first = if e == epoch { step } else { 0 };
                let pos_dropout = PosDropout {
                    seed: spec.batching.seed,
                    epoch: e,
                    p: spec.pos_dropout,
                    unk: spec.pos_unk,
                };
                for (index, s) in plan.iter().enumerate().skip(first) {
                    let micro = s
                        .micro
                        .iter()
                        .map(|ranks| pack_batch(&data, &ranks[spec.rank], Some(&pos_dropout)))
                        .collect();
                    let loaded = LoadedStep {
                        epoch: e,
                        index,
                        micro,
                    };
                    if tx.send(loaded).is_err() {
                        return;
                    }
                }
            }
        })
        .expect("the loader thread starts");
    rx
}

/// `rows` cut into `slices` contiguous parts of near-equal token counts (ranks wait for the slowest
/// one at every reduction; with packed batches work is tokens, not rows), every part non-empty while
/// there are rows enough.
fn balanced_parts(rows: &[usize], lengths: &[usize], slices: usize) -> Vec<Vec<usize>> {
    let total: usize = rows.iter().map(|&i| lengths[i]).sum();
    let mut parts: Vec<Vec<usize>> = Vec::with_capacity(slices);
    let mut current = Vec::new();
    let mut done = 0;
    for (k, &i) in rows.iter().enumerate() {
        current.push(i);
        done += lengths[i];
        let cut = parts.len() + 1;
        let rows_left = rows.len() - k - 1;
        let parts_left = slices - cut;
        // Cut once this part reaches its share of the tokens, or when the remaining rows are just
        // enough for one per remaining part.
        if cut < slices && (done * slices >= total * cut || rows_left <= parts_left) {
            parts.push(std::mem::take(&mut current));
        }
    }
    parts.push(current);
    parts.resize_with(slices, Vec::new);
    parts
}

/// Steps per epoch for `rows` rows (same for every epoch and every rank).
pub fn steps_per_epoch(lengths: &[usize], b: &Batching) -> usize {
    plan_epoch(lengths, b, 0).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batching(world: usize, batch_size: usize, grad_accum: usize) -> Batching {
        Batching {
            world,
            step_rows: batch_size * world * grad_accum,
            step_tokens: 0,
            grad_accum,
            length_grouping: true,
            seed: 7,
        }
    }

    fn lengths(n: usize) -> Vec<usize> {
        (0..n).map(|i| 5 + (i * 37) % 60).collect()
    }

    /// The rows of each optimiser step, as a set.
    fn step_sets(plan: &[StepPlan]) -> Vec<Vec<usize>> {
        plan.iter()
            .map(|s| {
                let mut v: Vec<usize> = s.micro.iter().flatten().flatten().copied().collect();
                v.sort();
                v
            })
            .collect()
    }

    #[test]
    fn optimiser_batches_do_not_depend_on_the_world_size() {
        let l = lengths(1000);
        let one = plan_epoch(&l, &batching(1, 16, 1), 0);
        let two = plan_epoch(&l, &batching(2, 8, 1), 0);
        let accum = plan_epoch(&l, &batching(1, 8, 2), 0);
        let four = plan_epoch(&l, &batching(4, 2, 2), 0);
        assert_eq!(step_sets(&one), step_sets(&two));
        assert_eq!(step_sets(&one), step_sets(&accum));
        assert_eq!(step_sets(&one), step_sets(&four));
        // Every row once per epoch; epochs differ; same epoch, same plan.
        let mut all: Vec<usize> = step_sets(&one).concat();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_ne!(
            step_sets(&plan_epoch(&l, &batching(1, 16, 1), 1)),
            step_sets(&one)
        );
        assert_eq!(plan_epoch(&l, &batching(2, 8, 1), 0), two);
    }

    #[test]
    fn every_rank_gets_a_share_of_every_step() {
        let plan = plan_epoch(&lengths(101), &batching(3, 4, 2), 0);
        for s in &plan {
            assert_eq!(s.micro.len(), 2);
            assert!(s.micro.iter().all(|m| m.len() == 3));
        }
        assert_eq!(plan.iter().map(StepPlan::rows).sum::<usize>(), 101);
    }

    #[test]
    fn grouping_pads_less() {
        let l = lengths(2000);
        let padding = |grouping: bool| -> usize {
            let b = Batching {
                length_grouping: grouping,
                ..batching(1, 32, 1)
            };
            plan_epoch(&l, &b, 0)
                .iter()
                .map(|s| {
                    let rows = &s.micro[0][0];
                    let max = rows.iter().map(|&i| l[i]).max().unwrap_or(0);
                    rows.iter().map(|&i| max - l[i]).sum::<usize>()
                })
                .sum()
        };
        assert!(
            padding(true) * 5 < padding(false),
            "{} vs {}",
            padding(true),
            padding(false)
        );
    }

    /// The token budget counts real tokens (packed batches have no padding).
    #[test]
    fn token_budget_bounds_real_tokens() {
        let l = lengths(500);
        let b = Batching {
            step_tokens: 800,
            ..batching(2, 1000, 1)
        };
        let plan = plan_epoch(&l, &b, 0);
        for s in &plan {
            let rows: Vec<usize> = s.micro.iter().flatten().flatten().copied().collect();
            let tokens: usize = rows.iter().map(|&i| l[i]).sum();
            assert!(rows.len() == 1 || tokens <= 800, "{tokens} tokens");
        }
        // Full: the steps are not much smaller than the budget.
        let total: usize = l.iter().sum();
        assert!(plan.len() <= total / 700 + 2, "{} steps", plan.len());
    }
}
