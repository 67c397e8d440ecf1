//! Where a training step's time goes: named phases timed with [`scope`] and summed across steps, when
//! profiling is switched on ([`enable`], or `NERPOS_PROFILE=1` for the trainer). Off, a scope costs one
//! relaxed atomic load. The trainer prints the table at the end of a run; `tests/bench/train.sh`
//! puts it in docs/benchmarks.md.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());
/// Waits for the device's queue (a GPU profile): without it a phase's time would be the time to
/// queue its kernels, not to run them.
static SYNC: Mutex<Option<Arc<Waiter>>> = Mutex::new(None);

type Waiter = dyn Fn() + Send + Sync;

/// Starts collecting (and clears what was collected).
pub fn enable() {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    *SYNC.lock().unwrap_or_else(|e| e.into_inner()) = None;
    ON.store(true, Ordering::Relaxed);
}

/// Starts collecting with `wait` run as each phase starts and ends (a device synchronisation: the
/// phases' times are then the device's, at the cost of the overlap a real step has).
pub fn enable_synchronised(wait: impl Fn() + Send + Sync + 'static) {
    enable();
    *SYNC.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(wait));
}

fn wait() {
    let w = SYNC.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(w) = w {
        w();
    }
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Times the phase `name` until the guard is dropped.
pub fn scope(name: &'static str) -> Scope {
    let on = enabled();
    if on {
        wait();
    }
    Scope {
        name,
        started: on.then(Instant::now),
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
            wait();
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
