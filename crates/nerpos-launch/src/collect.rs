//! A sweep's results: one row per point (its values, dev and test micro F1, steps, wall time, status),
//! sorted by dev F1, as CSV and Markdown, the best point's configuration, and F1 against each swept
//! value as SVG.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use nerpos_run::{RunDir, Status};

use crate::config::toml_value;
use crate::grid::{Point, Sweep, point_dir};

#[derive(Debug, Clone)]
pub struct Row {
    pub point: Point,
    pub status: Status,
    pub dev_f1: Option<f64>,
    pub test_f1: Option<f64>,
    pub steps: Option<usize>,
    pub wall_s: Option<f64>,
}

fn row(sweep_dir: &Path, point: &Point) -> anyhow::Result<Row> {
    let run = RunDir::new(point_dir(sweep_dir, point));
    let summary = run.read_summary()?;
    Ok(Row {
        point: point.clone(),
        status: run.status()?,
        dev_f1: summary.as_ref().and_then(|s| s.best_dev_f1),
        test_f1: summary.as_ref().and_then(|s| s.test_f1),
        steps: summary.as_ref().map(|s| s.steps),
        wall_s: summary.as_ref().map(|s| s.wall_s),
    })
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// Reads every point's outcome and writes `results.csv`, `results.md`, `best.toml` and `results.svg`.
pub fn collect(sweep_dir: &Path) -> anyhow::Result<Vec<Row>> {
    let sweep = Sweep::read(sweep_dir)?;
    let rows = sorted_rows(sweep_dir, &sweep)?;
    let write =
        |name: &str, text: &str| nerpos_run::write_atomic(&sweep_dir.join(name), text.as_bytes());
    let (csv, md) = tables(&sweep.keys, &rows);
    write("results.csv", &csv)?;
    write("results.md", &md)?;
    if let Some(best) = best_config(sweep_dir, &rows)? {
        write("best.toml", &best)?;
    }
    write("results.svg", &plot(&sweep.keys, &rows))?;
    Ok(rows)
}

/// Every point's outcome, best dev F1 first (points without one last, then by id).
fn sorted_rows(sweep_dir: &Path, sweep: &Sweep) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = sweep
        .points
        .iter()
        .map(|p| row(sweep_dir, p))
        .collect::<anyhow::Result<_>>()?;
    rows.sort_by(|a, b| {
        b.dev_f1
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.dev_f1.unwrap_or(f64::NEG_INFINITY))
            .then(a.point.id.cmp(&b.point.id))
    });
    Ok(rows)
}

/// The results as CSV (full precision, empty cells for what is missing) and as a Markdown table.
fn tables(keys: &[String], rows: &[Row]) -> (String, String) {
    let mut csv = format!("id,{},dev_f1,test_f1,steps,wall_s,status\n", keys.join(","));
    let mut md = format!(
        "| id | {} | dev micro F1 | test micro F1 | steps | wall (s) | status |\n",
        keys.join(" | ")
    );
    md.push_str(&format!(
        "|---|{}---:|---:|---:|---:|---|\n",
        "---|".repeat(keys.len())
    ));
    for r in rows {
        let values: Vec<String> = keys
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
    (csv, md)
}

/// The best point's configuration, headed by a comment naming it (none when no point has a dev F1).
/// A point that diverged is not a configuration to reuse, whatever it scored before.
fn best_config(sweep_dir: &Path, rows: &[Row]) -> anyhow::Result<Option<String>> {
    let Some(best) = rows
        .iter()
        .find(|r| r.dev_f1.is_some() && r.status != Status::Diverged)
    else {
        return Ok(None);
    };
    let cfg = point_dir(sweep_dir, &best.point).join("config.toml");
    let text =
        std::fs::read_to_string(&cfg).with_context(|| format!("reading {}", cfg.display()))?;
    Ok(Some(format!(
        "# best point {} of the sweep (dev micro F1 {:.4}): {}\n{text}",
        best.point.id,
        best.dev_f1.unwrap_or(0.0),
        best.point.describe()
    )))
}

/// Dev F1 against each swept value, one panel per key, as SVG; points that diverged are marked on
/// the axis instead.
fn plot(keys: &[String], rows: &[Row]) -> String {
    let data: Vec<ByValue> = keys.iter().map(|k| f1_by_value(k, rows)).collect();
    let titles: Vec<String> = keys.iter().map(|k| format!("dev F1 vs {k}")).collect();
    let panels: Vec<nerpos_plot::Series> = keys
        .iter()
        .zip(&data)
        .zip(&titles)
        .map(|((k, d), t)| nerpos_plot::Series {
            title: t,
            x_label: k,
            points: &d.points,
            flagged: Some(nerpos_plot::Flags {
                note: "diverged",
                xs: &d.diverged,
            }),
        })
        .collect();
    nerpos_plot::scatter_svg(&panels)
}

/// One panel's data: (value, dev F1) of the points that have both, the values of those that diverged.
struct ByValue {
    points: Vec<(f64, f64)>,
    diverged: Vec<f64>,
}

/// (value of `key`, dev F1) of each point with both, and the values of the points that diverged;
/// non-numeric values are placed at their index among the distinct values, in order of appearance.
fn f1_by_value(key: &str, rows: &[Row]) -> ByValue {
    let mut distinct: Vec<String> = Vec::new();
    let (mut points, mut diverged) = (Vec::new(), Vec::new());
    for r in rows {
        let x = match r.point.values.get(key) {
            None => continue,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(toml::Value::Float(f)) => *f,
            Some(other) => {
                let s = toml_value(other);
                let i = distinct.iter().position(|d| *d == s).unwrap_or_else(|| {
                    distinct.push(s);
                    distinct.len() - 1
                });
                i as f64
            }
        };
        match (r.status, r.dev_f1) {
            (Status::Diverged, _) => diverged.push(x),
            (_, Some(f1)) => points.push((x, f1)),
            _ => {}
        }
    }
    ByValue { points, diverged }
}
