//! A linear-chain CRF over the tagging head's logits (`head = "crf"`): a score for each transition
//! between labels, and for starting and ending on each label. Training minimises the negative
//! log-likelihood of each row's gold labels (the forward algorithm), whose gradient is the
//! forward–backward marginals minus the gold counts; evaluation and prediction decode each row with
//! Viterbi, and report each chosen label's marginal probability.
//!
//! Transitions the IOB2 scheme forbids (`O → I-x`, `B-x → I-y` and `I-x → I-y` for y ≠ x, and
//! starting on `I-x`) are masked: they score [`FORBIDDEN`], never appear in a decoded path, and
//! their parameters get no gradient. The parameters follow pytorch-crf's (`transitions[i][j]`: from
//! label i to label j; `start`, `end`), which the tests check this against.
//!
//! It runs on the host in f64: a row holds tens of positions and a dozen labels, so the whole
//! batch's CRF is a few hundred thousand operations, far below a step's matrix products.

use candle_core::{DType, Device, Tensor};

use nerpos_kernels::{Deferred, Kernels};

use super::{Decoder, Decoding, Draw, HeadType};
use crate::batch::{Inputs, Targets};
use crate::error::{ModelError, Result};
use crate::layers::Sink;
use crate::params::{Param, Params, Role};
use crate::predict::WordPrediction;
use crate::profile::timed;

pub const CRF_TRANSITIONS: &str = "crf.transitions";
pub const CRF_START: &str = "crf.start";
pub const CRF_END: &str = "crf.end";

/// The score of a forbidden transition: far below any path's, finite (no NaN from ∞ − ∞).
pub const FORBIDDEN: f64 = -10_000.0;

/// Which transitions the label scheme allows.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    labels: usize,
    /// `[from × to]`.
    transitions: Vec<bool>,
    start: Vec<bool>,
}

/// A label's IOB2 part: outside, or the beginning or inside of an entity type.
enum Part<'a> {
    Outside,
    Begin(&'a str),
    Inside(&'a str),
}

fn part(label: &str) -> Part<'_> {
    match label.split_once('-') {
        Some(("B", ty)) => Part::Begin(ty),
        Some(("I", ty)) => Part::Inside(ty),
        _ => Part::Outside,
    }
}

impl Allowed {
    /// Every transition allowed.
    pub fn all(labels: usize) -> Allowed {
        Allowed {
            labels,
            transitions: vec![true; labels * labels],
            start: vec![true; labels],
        }
    }

    /// IOB2's: `I-x` only after `B-x` or `I-x`.
    pub fn iob2(labels: &[String]) -> Allowed {
        let may_precede = |from: &str, to: &str| match (part(from), part(to)) {
            (_, Part::Outside | Part::Begin(_)) => true,
            (Part::Begin(a) | Part::Inside(a), Part::Inside(b)) => a == b,
            (Part::Outside, Part::Inside(_)) => false,
        };
        let n = labels.len();
        let mut transitions = Vec::with_capacity(n * n);
        for from in labels {
            transitions.extend(labels.iter().map(|to| may_precede(from, to)));
        }
        let start = labels
            .iter()
            .map(|l| !matches!(part(l), Part::Inside(_)))
            .collect();
        Allowed {
            labels: n,
            transitions,
            start,
        }
    }

    /// The first place in `labels` where the scheme is broken, as (position, from, to).
    pub fn first_violation(&self, labels: &[u32]) -> Option<(usize, Option<u32>, u32)> {
        let first = *labels.first()?;
        if !self.start[first as usize] {
            return Some((0, None, first));
        }
        labels.windows(2).enumerate().find_map(|(t, w)| {
            let ok = self.transitions[w[0] as usize * self.labels + w[1] as usize];
            (!ok).then_some((t + 1, Some(w[0]), w[1]))
        })
    }
}

/// The CRF's parameters and its mask.
pub struct Crf {
    pub transitions: Param,
    pub start: Param,
    pub end: Param,
    allowed: Allowed,
}

impl Crf {
    /// Parameters for `labels` labels, registered in the head (zeros until initialised, as
    /// pytorch-crf's U(−0.1, 0.1) in [`super::head::init`]).
    pub fn new(p: &mut Params, labels: usize, allowed: Allowed) -> Result<Crf> {
        if allowed.labels != labels {
            return Err(ModelError::Internal(format!(
                "a CRF mask for {} labels on a head of {labels}",
                allowed.labels
            )));
        }
        let role = Role::WEIGHT.in_head();
        Ok(Crf {
            transitions: p.add(CRF_TRANSITIONS.into(), (labels, labels), role)?,
            start: p.add(CRF_START.into(), labels, role)?,
            end: p.add(CRF_END.into(), labels, role)?,
            allowed,
        })
    }

    /// Its parameters in the order [`Crf::loss`] hands out their gradients.
    pub fn allowed(&self) -> &Allowed {
        &self.allowed
    }

    /// The masked scores, read to the host once (a step's or an evaluation batch's).
    pub fn scores(&self) -> Result<Scores> {
        let host = |p: &Param| -> Result<Vec<f64>> {
            let t = nerpos_kernels::stats::to_host(&p.t().to_dtype(DType::F64)?)?;
            Ok(t.flatten_all()?.to_vec1::<f64>()?)
        };
        Scores::new(
            (
                host(&self.transitions)?,
                host(&self.start)?,
                host(&self.end)?,
            ),
            &self.allowed,
        )
    }

    /// The summed negative log-likelihood of the rows' labels (each row's labelled positions, in
    /// order: `segments` of the logits' rows) and d(loss)/d(logits); the CRF's own gradients go to
    /// `sink`.
    pub fn nll(
        &self,
        logits: &Tensor,
        labels: &[u32],
        segments: &[(usize, usize)],
        sink: &mut Sink,
    ) -> Result<(f64, Tensor)> {
        let scores = self.scores()?;
        let (m, l) = logits.dims2()?;
        let host = nerpos_kernels::stats::to_host(&logits.to_dtype(DType::F32)?)?;
        let emissions = host.flatten_all()?.to_vec1::<f32>()?;
        let mut g = Gradients::new(m, l);
        let mut total = 0f64;
        for &(start, len) in segments {
            let rows = start * l..(start + len) * l;
            total += scores.row(&emissions[rows], &labels[start..start + len], start, &mut g);
        }
        let device = logits.device();
        let dlogits = Tensor::from_vec(g.emissions, (m, l), device)?.to_dtype(logits.dtype())?;
        let grad = |v: Vec<f64>, p: &Param, masked: &[bool]| -> Result<Tensor> {
            let v: Vec<f32> = v
                .iter()
                .zip(masked)
                .map(|(&x, &ok)| if ok { x as f32 } else { 0.0 })
                .collect();
            Ok(Tensor::from_vec(v, p.t().shape(), &Device::Cpu)?
                .to_device(p.t().device())?
                .to_dtype(p.t().dtype())?)
        };
        let a = &self.allowed;
        sink.dense(&self.end, grad(g.end, &self.end, &vec![true; l])?)?;
        sink.dense(&self.start, grad(g.start, &self.start, &a.start)?)?;
        let trans = grad(g.transitions, &self.transitions, &a.transitions)?;
        sink.dense(&self.transitions, trans)?;
        Ok((total, dlogits))
    }
}

/// The CRF head (`head = "crf"`): IOB2's forbidden transitions masked, so it refuses training labels
/// that take one.
pub struct CrfHead;

impl HeadType for CrfHead {
    fn build(&self, p: &mut Params, labels: &[String]) -> Result<Box<dyn Decoder>> {
        Ok(Box::new(Crf::new(p, labels.len(), Allowed::iob2(labels))?))
    }

    fn keys(&self) -> &'static [&'static str] {
        &[CRF_TRANSITIONS, CRF_START, CRF_END]
    }

    fn refuses(&self, labels: &[String], path: &[u32], first: usize) -> Option<String> {
        let (t, prev, to) = Allowed::iob2(labels).first_violation(path)?;
        let name = |l: u32| labels.get(l as usize).map_or("?", String::as_str);
        Some(format!(
            "labelled word {} is {} after {}, which IOB2 forbids; the CRF head masks that transition \
             (fix the tags, e.g. with nerpos-prep's IOB2 conversion, or train with head = \"softmax\")",
            t + first + 1,
            name(to),
            prev.map_or("the sentence's start", name)
        ))
    }
}

impl Decoder for Crf {
    fn params(&self) -> Vec<&Param> {
        vec![&self.end, &self.start, &self.transitions]
    }

    /// pytorch-crf's U(−0.1, 0.1), in its order.
    fn draws(&self) -> Vec<(&Param, Draw)> {
        [&self.start, &self.end, &self.transitions]
            .into_iter()
            .map(|p| (p, Draw::Uniform(0.1)))
            .collect()
    }

    fn loss(
        &self,
        _kernels: Kernels,
        logits: &Tensor,
        inputs: &Inputs,
        targets: &Targets,
        sink: &mut Sink,
    ) -> Result<(Deferred, Tensor)> {
        timed("fwd/bwd: CRF", || {
            let segments = segments(&inputs.host.head, &inputs.rows);
            let (loss, d) = self.nll(logits, &targets.host, &segments, sink)?;
            Ok((Deferred::Host(loss), d))
        })
    }

    fn decoding(&self) -> Result<Box<dyn Decoding>> {
        Ok(Box::new(self.scores()?))
    }
}

impl Decoding for Scores {
    /// Viterbi's path, each word with its label's marginal probability.
    fn decode(&self, words: Vec<u32>, z: Vec<Vec<f32>>, keep_logits: bool) -> Vec<WordPrediction> {
        let labels = z.first().map_or(0, Vec::len);
        let flat: Vec<f32> = z.iter().flatten().copied().collect();
        let path = self.viterbi(&flat);
        let marginals = self.marginals(&flat);
        words
            .into_iter()
            .zip(z)
            .enumerate()
            .map(|(t, (word, z))| WordPrediction {
                word,
                label: path[t],
                prob: marginals[t * labels + path[t] as usize] as f32,
                logits: keep_logits.then_some(z),
                pos: None,
            })
            .collect()
    }
}

/// The batch's rows as `(first, count)` runs of its head positions (`head`: flat token positions in
/// row order; `rows`: the rows' spans).
pub fn segments(head: &[u32], rows: &nerpos_kernels::RowSpans) -> Vec<(usize, usize)> {
    // (row, first, count)
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for (k, &p) in head.iter().enumerate() {
        let r = row_of(p, rows);
        match out.last_mut() {
            Some((row, _, count)) if *row == r => *count += 1,
            _ => out.push((r, k, 1)),
        }
    }
    out.into_iter()
        .map(|(_, first, count)| (first, count))
        .collect()
}

fn row_of(p: u32, rows: &nerpos_kernels::RowSpans) -> usize {
    rows.starts.partition_point(|&s| s <= p as usize) - 1
}

/// What a batch's rows add to the gradients.
struct Gradients {
    labels: usize,
    emissions: Vec<f32>,
    transitions: Vec<f64>,
    start: Vec<f64>,
    end: Vec<f64>,
}

impl Gradients {
    fn new(positions: usize, labels: usize) -> Gradients {
        Gradients {
            labels,
            emissions: vec![0.0; positions * labels],
            transitions: vec![0.0; labels * labels],
            start: vec![0.0; labels],
            end: vec![0.0; labels],
        }
    }
}

/// The masked scores on the host, in f64.
#[derive(Debug, Clone)]
pub struct Scores {
    labels: usize,
    /// `[from × to]`.
    transitions: Vec<f64>,
    start: Vec<f64>,
    /// The start scores unmasked: for a row that continues a sentence (a window after the first,
    /// whose first labelled word may be inside an entity).
    start_unmasked: Vec<f64>,
    end: Vec<f64>,
}

fn log_sum_exp(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = v.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + v.map(|x| (x - max).exp()).sum::<f64>().ln()
}

impl Scores {
    /// From the parameters `(transitions, start, end)` and the mask.
    pub fn new(
        (transitions, start, end): (Vec<f64>, Vec<f64>, Vec<f64>),
        allowed: &Allowed,
    ) -> Result<Scores> {
        let l = allowed.labels;
        if transitions.len() != l * l || start.len() != l || end.len() != l {
            return Err(ModelError::Internal("CRF scores of the wrong size".into()));
        }
        let mask = |v: Vec<f64>, ok: &[bool]| -> Vec<f64> {
            v.into_iter()
                .zip(ok)
                .map(|(x, &ok)| if ok { x } else { FORBIDDEN })
                .collect()
        };
        Ok(Scores {
            labels: l,
            transitions: mask(transitions, &allowed.transitions),
            start: mask(start.clone(), &allowed.start),
            start_unmasked: start,
            end,
        })
    }

    fn a(&self, from: usize, to: usize) -> f64 {
        self.transitions[from * self.labels + to]
    }

    /// α: `alpha[t·L + j]` = log Σ of the scores of the paths over positions 0..=t ending in j.
    fn forward(&self, e: &[f32]) -> Vec<f64> {
        let l = self.labels;
        let n = e.len() / l;
        let mut alpha = vec![0f64; n * l];
        for j in 0..l {
            alpha[j] = self.start[j] + f64::from(e[j]);
        }
        for t in 1..n {
            for j in 0..l {
                let prev = &alpha[(t - 1) * l..t * l];
                let s = log_sum_exp(prev.iter().enumerate().map(|(i, &a)| a + self.a(i, j)));
                alpha[t * l + j] = s + f64::from(e[t * l + j]);
            }
        }
        alpha
    }

    /// β: `beta[t·L + i]` = log Σ of the scores of the paths over positions t+1.. from i at t.
    fn backward(&self, e: &[f32]) -> Vec<f64> {
        let l = self.labels;
        let n = e.len() / l;
        let mut beta = vec![0f64; n * l];
        beta[(n - 1) * l..].copy_from_slice(&self.end);
        for t in (0..n - 1).rev() {
            for i in 0..l {
                let next = (0..l)
                    .map(|j| self.a(i, j) + f64::from(e[(t + 1) * l + j]) + beta[(t + 1) * l + j]);
                beta[t * l + i] = log_sum_exp(next);
            }
        }
        beta
    }

    /// log Z of a row's emissions `[T × L]`.
    pub fn log_partition(&self, e: &[f32]) -> f64 {
        let l = self.labels;
        let alpha = self.forward(e);
        let last = &alpha[alpha.len() - l..];
        log_sum_exp(last.iter().zip(&self.end).map(|(a, e)| a + e))
    }

    /// The score of the path `y` through a row's emissions.
    pub fn path_score(&self, e: &[f32], y: &[u32]) -> f64 {
        let l = self.labels;
        let mut s = self.start[y[0] as usize];
        for (t, &label) in y.iter().enumerate() {
            s += f64::from(e[t * l + label as usize]);
            if t > 0 {
                s += self.a(y[t - 1] as usize, label as usize);
            }
        }
        s + self.end[y[y.len() - 1] as usize]
    }

    /// The negative log-likelihood of `y` for one row (positions `at..` of the batch's logits),
    /// adding its gradients to `g`.
    fn row(&self, e: &[f32], y: &[u32], at: usize, g: &mut Gradients) -> f64 {
        if y.is_empty() {
            return 0.0;
        }
        let first = y[0] as usize;
        if self.start[first] == FORBIDDEN && self.start_unmasked[first] != FORBIDDEN {
            // A window that continues a sentence inside an entity (the training data is checked
            // to follow IOB2 where sentences start): its first label is not a sentence's first.
            let continued = Scores {
                start: self.start_unmasked.clone(),
                ..self.clone()
            };
            return continued.row(e, y, at, g);
        }
        let l = self.labels;
        let (alpha, beta) = (self.forward(e), self.backward(e));
        let n = y.len();
        let last = &alpha[(n - 1) * l..];
        let log_z = log_sum_exp(last.iter().zip(&self.end).map(|(a, e)| a + e));
        let p = |t: usize, j: usize| (alpha[t * l + j] + beta[t * l + j] - log_z).exp();
        for (t, &label) in y.iter().enumerate() {
            for j in 0..l {
                let gold = f64::from(u8::from(label as usize == j));
                g.emissions[(at + t) * l + j] += (p(t, j) - gold) as f32;
            }
        }
        for j in 0..l {
            g.start[j] += p(0, j);
            g.end[j] += p(n - 1, j);
        }
        g.start[y[0] as usize] -= 1.0;
        g.end[y[n - 1] as usize] -= 1.0;
        self.pair_gradients(e, (&alpha, &beta, log_z), y, g);
        log_z - self.path_score(e, y)
    }

    /// Σ_t P(y_{t−1} = i, y_t = j) − the gold path's transitions.
    fn pair_gradients(
        &self,
        e: &[f32],
        (alpha, beta, log_z): (&[f64], &[f64], f64),
        y: &[u32],
        g: &mut Gradients,
    ) {
        let l = self.labels;
        for t in 1..y.len() {
            for i in 0..l {
                for j in 0..l {
                    let s = alpha[(t - 1) * l + i]
                        + self.a(i, j)
                        + f64::from(e[t * l + j])
                        + beta[t * l + j];
                    g.transitions[i * l + j] += (s - log_z).exp();
                }
            }
            g.transitions[y[t - 1] as usize * l + y[t] as usize] -= 1.0;
        }
        debug_assert_eq!(g.labels, l);
    }

    /// The best path through a row's emissions `[T × L]` (ties to the lower label, as
    /// `torch.max` breaks them).
    pub fn viterbi(&self, e: &[f32]) -> Vec<u32> {
        let l = self.labels;
        let n = e.len() / l;
        if n == 0 {
            return Vec::new();
        }
        let mut delta: Vec<f64> = (0..l).map(|j| self.start[j] + f64::from(e[j])).collect();
        let mut back = vec![0u32; n * l];
        for t in 1..n {
            let mut next = vec![0f64; l];
            for j in 0..l {
                let (best, score) = (0..l)
                    .map(|i| (i, delta[i] + self.a(i, j)))
                    .fold((0, f64::NEG_INFINITY), |b, c| if c.1 > b.1 { c } else { b });
                back[t * l + j] = best as u32;
                next[j] = score + f64::from(e[t * l + j]);
            }
            delta = next;
        }
        let (mut at, _) = (0..l)
            .map(|j| (j, delta[j] + self.end[j]))
            .fold((0, f64::NEG_INFINITY), |b, c| if c.1 > b.1 { c } else { b });
        let mut path = vec![0u32; n];
        for t in (0..n).rev() {
            path[t] = at as u32;
            at = back[t * l + at] as usize;
        }
        path
    }

    /// P(y_t = j) of every position and label of a row's emissions `[T × L]`.
    pub fn marginals(&self, e: &[f32]) -> Vec<f64> {
        if e.is_empty() {
            return Vec::new();
        }
        let (alpha, beta) = (self.forward(e), self.backward(e));
        let log_z = self.log_partition(e);
        alpha
            .iter()
            .zip(&beta)
            .map(|(a, b)| (a + b - log_z).exp())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Reference {
        labels: usize,
        transitions: Vec<f64>,
        start: Vec<f64>,
        end: Vec<f64>,
        cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    struct Case {
        emissions: Vec<f64>,
        labels: Vec<u32>,
        nll: f64,
        d_emissions: Vec<f64>,
        d_transitions: Vec<f64>,
        d_start: Vec<f64>,
        d_end: Vec<f64>,
        viterbi: Vec<u32>,
    }

    fn close(what: &str, ours: &[f64], theirs: &[f64]) {
        assert_eq!(ours.len(), theirs.len(), "{what}");
        for (k, (a, b)) in ours.iter().zip(theirs).enumerate() {
            // The emissions reach us as f32 (the logits' type): ~1e-7 relative.
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{what}[{k}]: {a} vs {b}"
            );
        }
    }

    /// Log-likelihood, every gradient and the Viterbi path against pytorch-crf on random inputs
    /// (tests/reference/crf_reference.py wrote the fixture).
    #[test]
    fn nll_gradients_and_viterbi_match_pytorch_crf() {
        let r: Reference =
            serde_json::from_str(include_str!("../../../tests/fixtures/crf/reference.json"))
                .unwrap();
        let l = r.labels;
        let params = (r.transitions.clone(), r.start.clone(), r.end.clone());
        let scores = Scores::new(params, &Allowed::all(l)).unwrap();
        for c in &r.cases {
            let e: Vec<f32> = c.emissions.iter().map(|&x| x as f32).collect();
            let n = c.labels.len();
            let mut g = Gradients::new(n, l);
            let nll = scores.row(&e, &c.labels, 0, &mut g);
            close(&format!("nll (length {n})"), &[nll], &[c.nll]);
            let de: Vec<f64> = g.emissions.iter().map(|&x| f64::from(x)).collect();
            close("d emissions", &de, &c.d_emissions);
            close("d transitions", &g.transitions, &c.d_transitions);
            close("d start", &g.start, &c.d_start);
            close("d end", &g.end, &c.d_end);
            assert_eq!(scores.viterbi(&e), c.viterbi, "Viterbi (length {n})");
            let m = scores.marginals(&e);
            for t in 0..n {
                let sum: f64 = m[t * l..(t + 1) * l].iter().sum();
                assert!((sum - 1.0).abs() < 1e-9, "marginals at {t} sum to {sum}");
            }
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// IOB2's forbidden transitions never appear in a decoded path, even where the emissions ask for
    /// them, and a path that breaks IOB2 is found.
    #[test]
    fn iob2_masks_forbidden_transitions() {
        let labels = names(&["O", "B-geo", "I-geo", "B-per", "I-per"]);
        let allowed = Allowed::iob2(&labels);
        let zeros = (vec![0.0; 25], vec![0.0; 5], vec![0.0; 5]);
        let scores = Scores::new(zeros, &allowed).unwrap();
        // Emissions: O, then I-per strongly, then I-geo strongly.
        let mut e = vec![0f32; 15];
        e[0] = 5.0;
        e[5 + 4] = 9.0;
        e[5 + 3] = 8.0;
        e[10 + 2] = 9.0;
        e[10 + 1] = 8.5;
        let path = scores.viterbi(&e);
        assert_eq!(
            path,
            [0, 3, 1],
            "O, B-per (not I-per after O), B-geo (not I-geo after per)"
        );
        assert_eq!(allowed.first_violation(&[0, 1, 2, 0]), None);
        assert_eq!(allowed.first_violation(&[0, 4]), Some((1, Some(0), 4)));
        assert_eq!(allowed.first_violation(&[1, 4]), Some((1, Some(1), 4)));
        assert_eq!(allowed.first_violation(&[2]), Some((0, None, 2)));
        // A row whose first label is inside an entity (a later window of a long sentence) has a
        // finite loss: its start is not a sentence's.
        let mut g = Gradients::new(2, 5);
        let nll = scores.row(&e[..10], &[2, 2], 0, &mut g);
        assert!(nll.is_finite() && nll < 100.0, "{nll}");
    }

    #[test]
    fn segments_group_head_positions_by_row() {
        let rows = nerpos_kernels::RowSpans::new(vec![4, 3, 5]);
        // Row 0 has positions 1, 2; row 1 none; row 2 has 8, 9, 11.
        assert_eq!(segments(&[1, 2, 8, 9, 11], &rows), [(0, 2), (2, 3)]);
        assert_eq!(segments(&[], &rows), []);
    }
}
