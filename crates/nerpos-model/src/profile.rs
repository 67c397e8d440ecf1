//! Where a training step's time goes: named phases timed with [`scope`] and summed across steps, when
//! profiling is switched on ([`enable`], or `NERPOS_PROFILE=1` for the trainer). Off, a scope costs one
//! relaxed atomic load. The trainer prints the table at the end of a run; `tests/bench/train.sh`
//! puts it in docs/benchmarks.md.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// Starts collecting (and clears what was collected).
pub fn enable() {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ON.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Times the phase `name` until the guard is dropped.
pub fn scope(name: &'static str) -> Scope {
    Scope {
        name,
        started: enabled().then(Instant::now),
    }
}

/// Adds `secs` measured elsewhere to the phase `name`.
pub fn add(name: &'static str, secs: f64) {
    if enabled() {
        let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        let e = totals.entry(name).or_default();
        e.0 += Duration::from_secs_f64(secs.max(0.0));
        e.1 += 1;
    }
}

/// Runs `f` as the phase `name`.
pub fn timed<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    let _s = scope(name);
    f()
}

pub struct Scope {
    name: &'static str,
    started: Option<Instant>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(t) = self.started {
            let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
            let e = totals.entry(self.name).or_default();
            e.0 += t.elapsed();
            e.1 += 1;
        }
    }
}

/// The phases so far: (name, total seconds, times entered), largest first.
pub fn totals() -> Vec<(&'static str, f64, u64)> {
    let mut v: Vec<(&'static str, f64, u64)> = TOTALS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, (d, n))| (*k, d.as_secs_f64(), *n))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// The phases as a Markdown table, with each phase's share of `whole` seconds.
pub fn table(whole: f64) -> String {
    let mut s = String::from("| phase | seconds | share of the step time |\n|---|---:|---:|\n");
    for (name, secs, _) in totals() {
        s.push_str(&format!(
            "| {name} | {secs:.3} | {:.1}% |\n",
            100.0 * secs / whole.max(1e-9)
        ));
    }
    s
}
