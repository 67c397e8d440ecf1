//! A configuration as the trainer and the launcher read it: a TOML file with `--set key=value`
//! overrides applied in order. Typing and validation are the reader's (the trainer's `TrainConfig`);
//! this is the one place that reads the file and applies the overrides.

use std::path::{Path, PathBuf};

use crate::{Result, RunError};

/// A configuration table and where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct ConfigTable {
    pub table: toml::Table,
    pub origin: PathBuf,
}

/// Parses a `--set` value: TOML syntax (numbers, booleans, quoted strings, arrays), else a bare string
/// (`--set out=runs/x` needs no quotes).
pub fn parse_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// Splits `key=value`.
pub fn parse_set(arg: &str) -> Result<(String, toml::Value)> {
    let bad = |msg: &str| RunError::Set {
        arg: arg.to_owned(),
        msg: msg.to_owned(),
    };
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(bad("empty key"));
    }
    Ok((key.to_owned(), parse_value(value.trim())))
}

impl ConfigTable {
    /// Reads `path` (or starts empty) and applies the `key=value` overrides in order.
    pub fn load(path: Option<&Path>, sets: &[String]) -> Result<ConfigTable> {
        let (mut table, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| RunError::io(p, e))?;
                let table = text
                    .parse::<toml::Table>()
                    .map_err(|e| RunError::malformed(p, e.to_string().trim()))?;
                (table, p.to_owned())
            }
            None => (toml::Table::new(), PathBuf::from("(command line)")),
        };
        for arg in sets {
            let (k, v) = parse_set(arg)?;
            table.insert(k, v);
        }
        Ok(ConfigTable { table, origin })
    }

    /// The run (or sweep) folder: the `out` key.
    pub fn out_dir(&self) -> Result<PathBuf> {
        match self.table.get("out") {
            Some(toml::Value::String(s)) => Ok(PathBuf::from(s)),
            Some(other) => Err(RunError::malformed(
                &self.origin,
                format!("`out` must be a path string, not {other}"),
            )),
            None => Err(RunError::malformed(
                &self.origin,
                "no `out` (the run folder)",
            )),
        }
    }

    /// The `[grid]` table, if the configuration is a hyper-parameter grid.
    pub fn grid(&self) -> Option<&toml::Table> {
        match self.table.get("grid") {
            Some(toml::Value::Table(g)) => Some(g),
            _ => None,
        }
    }

    /// A top-level value as it reads after `key = ` (strings without quotes), for scripts.
    pub fn get_str(&self, key: &str) -> Option<String> {
        self.table.get(key).map(|v| match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_in_order_with_toml_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "out = \"runs/a\"\nlr = 1e-4\n[grid]\nlr = [1e-5]\n").unwrap();
        let sets: Vec<String> = ["lr=3e-5", "out=runs/b", "use_pos=false", "name=\"x y\""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let c = ConfigTable::load(Some(&p), &sets).unwrap();
        assert_eq!(c.table["lr"].as_float(), Some(3e-5));
        assert_eq!(c.out_dir().unwrap(), PathBuf::from("runs/b"));
        assert_eq!(c.table["use_pos"].as_bool(), Some(false));
        assert_eq!(c.get_str("name").as_deref(), Some("x y"));
        assert!(c.grid().is_some());
        let e = ConfigTable::load(Some(&p), &["nokey".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("key=value"), "{e}");
        std::fs::write(&p, "out = [").unwrap();
        let e = ConfigTable::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("c.toml"), "{e}");
    }
}
