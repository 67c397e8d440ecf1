//! Published scores to compare a run with (a paper's or a design's table): read from a small TOML
//! file, shown beside a [`Report`] type by type.
//!
//! ```toml
//! name = "design: bert-base-cased + POS"
//! [micro]
//! precision = 0.8397
//! recall = 0.8512
//! f1 = 0.8445
//! [f1]          # per type, as published (any subset)
//! geo = 0.88
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::Report;

/// The published numbers: micro precision/recall/F1 and per-type F1 (those the source gives).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReferenceScores {
    pub name: String,
    pub micro: MicroScores,
    #[serde(default)]
    pub f1: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MicroScores {
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("reading reference scores {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: not reference scores (expected name, [micro] f1 and an optional [f1] table per type): {msg}"
    )]
    Parse { path: String, msg: String },
}

impl ReferenceScores {
    pub fn load(path: &Path) -> Result<ReferenceScores, ReferenceError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ReferenceError::Read {
            path: shown.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ReferenceError::Parse {
            path: shown,
            msg: e.to_string(),
        })
    }

    /// `report` beside these scores: a Markdown table of each type (precision, recall, F1, support,
    /// the reference's F1 and the difference), then micro, macro and weighted averages.
    pub fn beside(&self, report: &Report) -> String {
        let mut s = format!(
            "| {} | precision | recall | F1 | support | {} F1 | Δ F1 |\n|---|---:|---:|---:|---:|---:|---:|\n",
            "type", self.name
        );
        let cell = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.4}"));
        let delta = |ours: f64, theirs: Option<f64>| {
            theirs.map_or_else(|| "—".to_owned(), |t| format!("{:+.4}", ours - t))
        };
        for (ty, sc) in &report.per_type {
            let theirs = self.f1.get(ty).copied();
            s.push_str(&format!(
                "| {ty} | {:.4} | {:.4} | {:.4} | {} | {} | {} |\n",
                sc.precision,
                sc.recall,
                sc.f1,
                sc.support,
                cell(theirs),
                delta(sc.f1, theirs)
            ));
        }
        let m = &report.micro;
        s.push_str(&format!(
            "| **micro avg** | {:.4} ({}) | {:.4} ({}) | **{:.4}** | {} | **{:.4}** | **{:+.4}** |\n",
            m.precision,
            cell(self.micro.precision),
            m.recall,
            cell(self.micro.recall),
            m.f1,
            m.support,
            self.micro.f1,
            m.f1 - self.micro.f1
        ));
        for (what, sc) in [
            ("macro avg", &report.macro_avg),
            ("weighted avg", &report.weighted),
        ] {
            s.push_str(&format!(
                "| {what} | {:.4} | {:.4} | {:.4} | {} | — | — |\n",
                sc.precision, sc.recall, sc.f1, sc.support
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scores;

    fn scores(p: f64, r: f64, f1: f64, support: u64) -> Scores {
        Scores {
            precision: p,
            recall: r,
            f1,
            support,
        }
    }

    #[test]
    fn a_report_is_shown_beside_the_published_numbers() {
        let reference: ReferenceScores = toml::from_str(
            "name = \"paper\"\n[micro]\nprecision = 0.8\nrecall = 0.9\nf1 = 0.85\n[f1]\ngeo = 0.88\n",
        )
        .unwrap();
        let report = Report {
            per_type: [
                ("geo".to_string(), scores(0.9, 0.8, 0.847, 10)),
                ("tim".to_string(), scores(0.5, 0.5, 0.5, 2)),
            ]
            .into(),
            micro: scores(0.8, 0.75, 0.7742, 12),
            macro_avg: scores(0.7, 0.65, 0.6735, 12),
            weighted: scores(0.83, 0.75, 0.7892, 12),
            accuracy: 0.9,
            confusion: Vec::new(),
        };
        let t = reference.beside(&report);
        assert!(
            t.contains("| geo | 0.9000 | 0.8000 | 0.8470 | 10 | 0.8800 | -0.0330 |"),
            "{t}"
        );
        assert!(
            t.contains("| tim | 0.5000 | 0.5000 | 0.5000 | 2 | — | — |"),
            "{t}"
        );
        assert!(t.contains("| **micro avg** | 0.8000 (0.8000) | 0.7500 (0.9000) | **0.7742** | 12 | **0.8500** | **-0.0758** |"), "{t}");
        assert!(
            t.contains("| weighted avg | 0.8300 | 0.7500 | 0.7892 | 12 |"),
            "{t}"
        );
    }

    #[test]
    fn a_malformed_file_is_named_with_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.toml");
        std::fs::write(&path, "name = \"x\"\n[micro]\nprecision = 0.8\n").unwrap();
        let err = ReferenceScores::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("scores.toml") && err.contains("[micro] f1"),
            "{err}"
        );
    }
}
