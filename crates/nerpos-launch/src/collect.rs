//! A sweep's results: one row per point (its values, dev and test micro F1, steps, wall time, status),
//! sorted by dev F1, as CSV and Markdown, the best point's configuration, and F1 against each swept
//! value as SVG.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::toml_value;
use crate::grid::{Point, Sweep, point_dir};

/// Why a point has no result (yet).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchRecord {
    pub status: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub point: Point,
    pub status: String,
    pub dev_f1: Option<f64>,
    pub test_f1: Option<f64>,
    pub steps: Option<u64>,
    pub wall_s: Option<f64>,
}

fn row(sweep_dir: &Path, point: &Point) -> Row {
    let dir = point_dir(sweep_dir, point);
    let summary: Option<serde_json::Value> = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let record: Option<LaunchRecord> = std::fs::read_to_string(dir.join("launch.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let status = match (&summary, &record) {
        (Some(s), _) => s["status"].as_str().unwrap_or("finished").to_owned(),
        (None, Some(r)) => r.status.clone(),
        (None, None) if dir.join("checkpoints").is_dir() => "interrupted".into(),
        (None, None) if dir.is_dir() => "running".into(),
        _ => "pending".into(),
    };
    let get = |k: &str| summary.as_ref().and_then(|s| s[k].as_f64());
    Row {
        point: point.clone(),
        status,
        dev_f1: get("best_dev_f1"),
        test_f1: get("test_f1"),
        steps: summary.as_ref().and_then(|s| s["steps"].as_u64()),
        wall_s: get("wall_s"),
    }
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// Reads every point's outcome and writes `results.csv`, `results.md`, `best.toml` and `results.svg`.
pub fn collect(sweep_dir: &Path) -> anyhow::Result<Vec<Row>> {
    let sweep = Sweep::read(sweep_dir)?;
    let mut rows: Vec<Row> = sweep.points.iter().map(|p| row(sweep_dir, p)).collect();
    rows.sort_by(|a, b| {
        b.dev_f1
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.dev_f1.unwrap_or(f64::NEG_INFINITY))
            .then(a.point.id.cmp(&b.point.id))
    });

    let mut csv = format!(
        "id,{},dev_f1,test_f1,steps,wall_s,status\n",
        sweep.keys.join(",")
    );
    let mut md = format!(
        "| id | {} | dev micro F1 | test micro F1 | steps | wall (s) | status |\n",
        sweep.keys.join(" | ")
    );
    md.push_str(&format!(
        "|---|{}---:|---:|---:|---:|---|\n",
        "---|".repeat(sweep.keys.len())
    ));
    for r in &rows {
        let values: Vec<String> = sweep
            .keys
            .iter()
            .map(|k| r.point.values.get(k).map_or("-".into(), toml_value))
            .collect();
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{}",
            r.point.id,
            values
                .iter()
                .map(|v| format!("\"{}\"", v.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(","),
            r.dev_f1.map_or(String::new(), |v| v.to_string()),
            r.test_f1.map_or(String::new(), |v| v.to_string()),
            r.steps.map_or(String::new(), |v| v.to_string()),
            r.wall_s.map_or(String::new(), |v| format!("{v:.1}")),
            r.status
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.point.id,
            values.join(" | "),
            fmt(r.dev_f1, 4),
            fmt(r.test_f1, 4),
            r.steps.map_or("-".into(), |v| v.to_string()),
            fmt(r.wall_s, 0),
            r.status
        );
    }
    let write = |name: &str, text: &str| write_atomic(&sweep_dir.join(name), text);
    write("results.csv", &csv)?;
    write("results.md", &md)?;
    if let Some(best) = rows.iter().find(|r| r.dev_f1.is_some()) {
        let cfg = point_dir(sweep_dir, &best.point).join("config.toml");
        let text =
            std::fs::read_to_string(&cfg).with_context(|| format!("reading {}", cfg.display()))?;
        write(
            "best.toml",
            &format!(
                "# best point {} of the sweep (dev micro F1 {:.4}): {}\n{text}",
                best.point.id,
                best.dev_f1.unwrap_or(0.0),
                best.point.describe()
            ),
        )?;
    }
    // F1 against each swept value; non-numeric values are placed at their index in the grid.
    let series: Vec<(String, Vec<(f64, f64)>)> = sweep
        .keys
        .iter()
        .map(|k| {
            let mut distinct: Vec<String> = Vec::new();
            let pts = rows
                .iter()
                .filter_map(|r| {
                    let v = r.point.values.get(k)?;
                    let x = match v {
                        toml::Value::Integer(i) => *i as f64,
                        toml::Value::Float(f) => *f,
                        other => {
                            let s = toml_value(other);
                            let i = distinct.iter().position(|d| *d == s).unwrap_or_else(|| {
                                distinct.push(s);
                                distinct.len() - 1
                            });
                            i as f64
                        }
                    };
                    Some((x, r.dev_f1?))
                })
                .collect();
            (k.clone(), pts)
        })
        .collect();
    let titles: Vec<String> = series
        .iter()
        .map(|(k, _)| format!("dev F1 vs {k}"))
        .collect();
    let panels: Vec<nerpos_plot::Series> = series
        .iter()
        .zip(&titles)
        .map(|((k, pts), t)| nerpos_plot::Series {
            title: t,
            x_label: k,
            points: pts,
        })
        .collect();
    write("results.svg", &nerpos_plot::scatter_svg(&panels))?;
    Ok(rows)
}

/// Writes `text` to `path` through a temporary file in the same folder and a rename: readers (and
/// array tasks writing the same file at once) never see a half-written file.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
