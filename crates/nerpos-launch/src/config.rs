//! The little the launcher reads of a training configuration: its `out` folder and its `[grid]`. (The
//! launcher does not link the trainer; nerpos-train validates everything else.)

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Parses a `--set` value as nerpos-train does: TOML syntax, else a bare string.
pub fn parse_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// A configuration file with `--set` overrides applied.
pub fn load(path: &Path, sets: &[String]) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not TOML", path.display()))?;
    for s in sets {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--set {s:?}: expected key=value");
        };
        table.insert(k.trim().to_owned(), parse_value(v.trim()));
    }
    Ok(table)
}

/// The run (or sweep) folder of a configuration.
pub fn out_dir(table: &toml::Table, origin: &Path) -> anyhow::Result<PathBuf> {
    match table.get("out") {
        Some(toml::Value::String(s)) => Ok(PathBuf::from(s)),
        Some(other) => bail!(
            "{}: `out` must be a path string, not {other}",
            origin.display()
        ),
        None => bail!("{}: no `out` (the run folder)", origin.display()),
    }
}

/// Renders a value as it would appear after `key = ` in TOML.
pub fn toml_value(v: &toml::Value) -> String {
    // Learning rates read better as 3e-5 than as 0.00003 (what the toml crate writes).
    if let toml::Value::Float(f) = v {
        if *f != 0.0 && f.is_finite() && (f.abs() < 1e-3 || f.abs() >= 1e6) {
            return format!("{f:e}");
        }
    }
    let mut t = toml::Table::new();
    t.insert("v".into(), v.clone());
    let s = toml::to_string(&t).unwrap_or_default();
    s.trim().trim_start_matches("v =").trim().to_owned()
}
