//! Precision, recall, F1 and support computed as seqeval's `classification_report` does, and its text
//! table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::score::Counts;

/// One row of the report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

/// A confusion cell: gold type (or `null` for a predicted entity on a span with no gold entity) against
/// predicted type (or `null` for a gold entity whose span has no predicted entity).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    pub gold: Option<String>,
    pub pred: Option<String>,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Types that occur in the gold or the predicted entities, sorted.
    pub per_type: BTreeMap<String, Scores>,
    pub micro: Scores,
    #[serde(rename = "macro")]
    pub macro_avg: Scores,
    pub weighted: Scores,
    /// Token accuracy (seqeval's `accuracy_score`).
    pub accuracy: f64,
    /// Entities by (gold type, predicted type) on identical spans, plus missed and spurious ones.
    pub confusion: Vec<Confusion>,
}

/// numpy's float64 sum (`np.add.reduce`): the first element, plus the rest summed pairwise with eight
/// accumulators — so that averages match seqeval to the last bit, not only to rounding.
fn np_sum(a: &[f64]) -> f64 {
    fn pairwise(a: &[f64]) -> f64 {
        let n = a.len();
        if n < 8 {
            a.iter().fold(0.0, |acc, x| acc + x)
        } else if n <= 128 {
            let mut r = [0.0; 8];
            r.copy_from_slice(&a[..8]);
            let mut i = 8;
            while i < n - n % 8 {
                for (j, rj) in r.iter_mut().enumerate() {
                    *rj += a[i + j];
                }
                i += 8;
            }
            let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for x in &a[i..] {
                res += x;
            }
            res
        } else {
            let mut n2 = n / 2;
            n2 -= n2 % 8;
            pairwise(&a[..n2]) + pairwise(&a[n2..])
        }
    }
    match a.split_first() {
        None => 0.0,
        Some((first, rest)) => first + pairwise(rest),
    }
}

/// Precision, recall, F1 and support of each type in seqeval's order, as the columns numpy averages.
struct Columns {
    p: Vec<f64>,
    r: Vec<f64>,
    f: Vec<f64>,
    support: Vec<u64>,
}

impl Columns {
    fn new(counts: &Counts, order: &[usize]) -> Columns {
        let mut c = Columns {
            p: vec![],
            r: vec![],
            f: vec![],
            support: vec![],
        };
        for &i in order {
            let p = divide(counts.tp[i], counts.pred[i]);
            let r = divide(counts.tp[i], counts.gold[i]);
            c.p.push(p);
            c.r.push(r);
            c.f.push(f1(p, r));
            c.support.push(counts.gold[i]);
        }
        c
    }

    fn per_type(&self, counts: &Counts, order: &[usize]) -> BTreeMap<String, Scores> {
        order
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let scores = Scores {
                    precision: self.p[k],
                    recall: self.r[k],
                    f1: self.f[k],
                    support: self.support[k],
                };
                (counts.types[i].clone(), scores)
            })
            .collect()
    }

    fn macro_avg(&self, gold: u64) -> Scores {
        // np.average over no types is nan (seqeval warns); kept as nan, shown as null in JSON.
        let mean = |v: &[f64]| np_sum(v) / v.len() as f64;
        Scores {
            precision: mean(&self.p),
            recall: mean(&self.r),
            f1: mean(&self.f),
            support: gold,
        }
    }

    fn weighted(&self, gold: u64) -> Scores {
        if gold == 0 {
            return Scores {
                precision: 0.0,
                recall: 0.0,
                f1: 0.0,
                support: 0,
            };
        }
        let weights: Vec<f64> = self.support.iter().map(|&w| w as f64).collect();
        let scale = np_sum(&weights);
        let avg = |v: &[f64]| {
            np_sum(
                &v.iter()
                    .zip(&weights)
                    .map(|(x, w)| x * w)
                    .collect::<Vec<_>>(),
            ) / scale
        };
        Scores {
            precision: avg(&self.p),
            recall: avg(&self.r),
            f1: avg(&self.f),
            support: gold,
        }
    }
}

/// Non-zero cells of the confusion between gold and predicted entity types (None: no entity there).
fn confusion(counts: &Counts) -> Vec<Confusion> {
    let n = counts.types.len();
    let name = |i: usize| (i < n).then(|| counts.types[i].clone());
    let mut confusion: Vec<Confusion> = counts
        .confusion
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(k, &count)| Confusion {
            gold: name(k / (n + 1)),
            pred: name(k % (n + 1)),
            count,
        })
        .collect();
    confusion.sort_by(|a, b| (&a.gold, &a.pred).cmp(&(&b.gold, &b.pred)));
    confusion
}

/// `tp / denominator`, 0 where the denominator is 0 (seqeval's default `zero_division`).
fn divide(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// F1 as numpy computes it: `(1 + β²) · p · r / (β² · p + r)` with a zero denominator replaced by 1.
fn f1(p: f64, r: f64) -> f64 {
    let denom = p + r;
    let denom = if denom == 0.0 { 1.0 } else { denom };
    2.0 * p * r / denom
}

impl Report {
    /// The report for `counts`, exactly as seqeval computes it.
    pub fn new(counts: &Counts) -> Report {
        let mut order: Vec<usize> = (0..counts.types.len())
            .filter(|&i| counts.gold[i] > 0 || counts.pred[i] > 0)
            .collect();
        order.sort_by(|&a, &b| counts.types[a].cmp(&counts.types[b]));
        let columns = Columns::new(counts, &order);

        let sum = |v: &[u64]| order.iter().map(|&i| v[i]).sum::<u64>();
        let (tp, pred, gold) = (sum(&counts.tp), sum(&counts.pred), sum(&counts.gold));
        let (mp, mr) = (divide(tp, pred), divide(tp, gold));
        let micro = Scores {
            precision: mp,
            recall: mr,
            f1: f1(mp, mr),
            support: gold,
        };
        Report {
            per_type: columns.per_type(counts, &order),
            micro,
            macro_avg: columns.macro_avg(gold),
            weighted: columns.weighted(gold),
            accuracy: counts.correct_tokens as f64 / counts.total_tokens as f64,
            confusion: confusion(counts),
        }
    }

    /// seqeval's `classification_report` text with `digits` decimals, byte for byte.
    pub fn to_seqeval_string(&self, digits: usize) -> String {
        let name_width = self
            .per_type
            .keys()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0);
        let width = name_width.max("weighted avg".len()).max(digits);
        let mut out = format!("{:>width$} ", "");
        for h in ["precision", "recall", "f1-score", "support"] {
            let _ = write!(out, " {h:>9}");
        }
        out.push_str("\n\n");
        let num = |x: f64| {
            if x.is_nan() {
                format!(" {:>9}", "nan")
            } else {
                format!(" {x:>9.digits$}")
            }
        };
        let row = |name: &str, s: &Scores| {
            format!(
                "{name:>width$} {}{}{} {:>9}",
                num(s.precision),
                num(s.recall),
                num(s.f1),
                s.support
            )
        };
        let mut lines: Vec<String> = self.per_type.iter().map(|(k, s)| row(k, s)).collect();
        lines.push(String::new());
        lines.push(row("micro avg", &self.micro));
        lines.push(row("macro avg", &self.macro_avg));
        lines.push(row("weighted avg", &self.weighted));
        lines.push(String::new());
        out.push_str(&lines.join("\n"));
        out
    }

    /// A table of entities by gold type (rows) and predicted type (columns) on identical spans; the
    /// `(missed)` column counts gold entities with no predicted entity on their span, the
    /// `(spurious)` row predicted entities with no gold entity on theirs.
    pub fn confusion_table(&self) -> String {
        let mut types: Vec<&String> = self.per_type.keys().collect();
        types.sort();
        let cell = |g: Option<&String>, p: Option<&String>| -> u64 {
            self.confusion
                .iter()
                .filter(|c| c.gold.as_ref() == g && c.pred.as_ref() == p)
                .map(|c| c.count)
                .sum()
        };
        let width = types
            .iter()
            .map(|t| t.chars().count())
            .max()
            .unwrap_or(0)
            .max(10);
        let mut out = format!("{:>width$}", "gold \\ pred");
        for t in &types {
            let _ = write!(out, " {:>9}", t);
        }
        out.push_str(&format!(" {:>9}\n", "(missed)"));
        let rows = types
            .iter()
            .map(|t| (Some(*t), t.as_str()))
            .chain([(None, "(spurious)")]);
        for (g, label) in rows {
            let _ = write!(out, "{label:>width$}");
            for t in &types {
                let _ = write!(out, " {:>9}", cell(g, Some(t)));
            }
            if g.is_some() {
                let _ = write!(out, " {:>9}", cell(g, None));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::{Mode, Scorer};

    #[test]
    fn seqeval_docstring_example() {
        // seqeval's docs: micro 0.5/0.5/0.5, per-class MISC 0 and PER 1.
        let mut s = Scorer::new(Mode::Default);
        s.add(
            &["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"],
            &["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"],
        )
        .unwrap();
        s.add(&["B-PER", "I-PER", "O"], &["B-PER", "I-PER", "O"])
            .unwrap();
        let r = Report::new(&s.counts());
        assert_eq!(r.micro.f1, 0.5);
        assert_eq!(r.macro_avg.f1, 0.5);
        assert_eq!(r.per_type["MISC"].f1, 0.0);
        assert_eq!(r.per_type["PER"].precision, 1.0);
        assert_eq!(r.accuracy, 0.8);
        let expected = "              precision    recall  f1-score   support\n\n        MISC       0.00      0.00      0.00         1\n         PER       1.00      1.00      1.00         1\n\n   micro avg       0.50      0.50      0.50         2\n   macro avg       0.50      0.50      0.50         2\nweighted avg       0.50      0.50      0.50         2\n";
        assert_eq!(r.to_seqeval_string(2), expected);
    }

    #[test]
    fn numpy_sum_order() {
        assert_eq!(np_sum(&[]), 0.0);
        assert_eq!(np_sum(&[1.0, 2.0]), 3.0);
        let v: Vec<f64> = (0..300).map(|i| 0.1 * i as f64).collect();
        assert!((np_sum(&v) - v.iter().sum::<f64>()).abs() < 1e-9);
    }
}
