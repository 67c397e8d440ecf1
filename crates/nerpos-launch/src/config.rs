//! How the launcher writes configuration values (grid point ids, tables). Reading a configuration
//! with its `--set` overrides is `nerpos_run::config`'s; the launcher reads only `out` and `[grid]`
//! of it (it does not link the trainer, which validates everything else).

/// Renders a value as it would appear after `key = ` in TOML.
pub fn toml_value(v: &toml::Value) -> String {
    // Learning rates read better as 3e-5 than as 0.00003 (what the toml crate writes).
    if let toml::Value::Float(f) = v
        && *f != 0.0
        && f.is_finite()
        && (f.abs() < 1e-3 || f.abs() >= 1e6)
    {
        return format!("{f:e}");
    }
    let mut t = toml::Table::new();
    t.insert("v".into(), v.clone());
    let s = toml::to_string(&t).unwrap_or_default();
    s.trim().trim_start_matches("v =").trim().to_owned()
}
