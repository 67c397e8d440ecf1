//! Grids: a `[grid]` table of lists expands to its product (or a seeded sample of it); each point gets
//! an id that depends only on its values, so re-running a sweep finds the points it already ran.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::toml_value;

/// One point of a grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub id: String,
    /// Swept key → value, sorted by key.
    pub values: BTreeMap<String, toml::Value>,
}

impl Point {
    fn new(values: BTreeMap<String, toml::Value>) -> Point {
        let canonical: Vec<String> = values
            .iter()
            .map(|(k, v)| format!("{k}={}", toml_value(v)))
            .collect();
        let digest = Sha256::digest(canonical.join(";").as_bytes());
        let id = format!("p-{:x}", digest)[..10].to_owned();
        Point { id, values }
    }

    /// `k=v` pairs, for logs and tables.
    pub fn describe(&self) -> String {
        self.values
            .iter()
            .map(|(k, v)| format!("{k}={}", toml_value(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Expands `grid` (key → list of values): the product in key order, or `sample` = (n, seed) points of it.
pub fn expand(grid: &toml::Table, sample: Option<(usize, u64)>) -> anyhow::Result<Vec<Point>> {
    let mut axes: Vec<(&String, &Vec<toml::Value>)> = Vec::new();
    for (k, v) in grid {
        match v {
            toml::Value::Array(a) if !a.is_empty() => axes.push((k, a)),
            toml::Value::Array(_) => bail!("[grid] `{k}` is an empty list"),
            other => bail!(
                "[grid] `{k}` must be a list of values, e.g. {k} = [{}]",
                toml_value(other)
            ),
        }
    }
    if axes.is_empty() {
        bail!("[grid] is empty");
    }
    axes.sort_by(|a, b| a.0.cmp(b.0));
    let mut points: Vec<BTreeMap<String, toml::Value>> = vec![BTreeMap::new()];
    for (k, values) in &axes {
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.insert((*k).clone(), v.clone());
                    q
                })
            })
            .collect();
    }
    let mut points: Vec<Point> = points.into_iter().map(Point::new).collect();
    if let Some((n, seed)) = sample {
        points.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        points.truncate(n);
    }
    Ok(points)
}

/// The sweep's record of its grid and points (`sweep.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Sweep {
    pub base_config: PathBuf,
    pub keys: Vec<String>,
    pub points: Vec<Point>,
}

impl Sweep {
    pub fn read(dir: &Path) -> anyhow::Result<Sweep> {
        let p = dir.join("sweep.json");
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("{}: not a sweep folder (no sweep.json)", dir.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: malformed", p.display()))
    }
}

/// The configuration file of one point: the base without `[grid]`, with the point's values and its own
/// `out`.
pub fn point_config(base: &toml::Table, point: &Point, sweep_dir: &Path) -> toml::Table {
    let mut t = base.clone();
    t.remove("grid");
    for (k, v) in &point.values {
        t.insert(k.clone(), v.clone());
    }
    t.insert(
        "out".into(),
        toml::Value::String(point_dir(sweep_dir, point).display().to_string()),
    );
    t
}

pub fn point_dir(sweep_dir: &Path, point: &Point) -> PathBuf {
    sweep_dir.join("points").join(&point.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(text: &str) -> toml::Table {
        text.parse::<toml::Table>().unwrap()
    }

    #[test]
    fn product_is_deterministic_with_stable_ids() {
        let a = expand(
            &grid("lr = [1e-5, 3e-5]\nbatch_size = [16, 32]\nuse_pos = [true, false]"),
            None,
        )
        .unwrap();
        let b = expand(
            &grid("use_pos = [true, false]\nbatch_size = [16, 32]\nlr = [1e-5, 3e-5]"),
            None,
        )
        .unwrap();
        assert_eq!(a.len(), 8);
        assert_eq!(a, b, "key order in the file does not matter");
        let mut ids: Vec<&str> = a.iter().map(|p| p.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 8);
        assert_eq!(a[0].describe(), "batch_size=16 lr=1e-5 use_pos=true");
    }

    #[test]
    fn sampling_is_seeded() {
        let g = grid("lr = [1, 2, 3, 4, 5]\nseed = [1, 2, 3]");
        let s1 = expand(&g, Some((4, 7))).unwrap();
        assert_eq!(s1.len(), 4);
        assert_eq!(s1, expand(&g, Some((4, 7))).unwrap());
        assert_ne!(s1, expand(&g, Some((4, 8))).unwrap());
    }

    #[test]
    fn bad_grids() {
        assert!(
            expand(&grid("lr = 1e-5"), None)
                .unwrap_err()
                .to_string()
                .contains("`lr` must be a list")
        );
        assert!(
            expand(&grid("lr = []"), None)
                .unwrap_err()
                .to_string()
                .contains("empty list")
        );
    }
}
