//! One start-up for every nerpos binary: logging through `tracing` in one line format (UTC time to the
//! second — `HH:MM:SS` on the terminal, with the date in log files —, the level, the message; colours
//! only on a terminal; `NERPOS_LOG` overrides the level), the error exit (`error: ` and the cause
//! chain, exit code 1), and the counting style of their progress bars.

use std::fmt::Display;
use std::io::IsTerminal;
use std::process::ExitCode;

use indicatif::{ProgressState, ProgressStyle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// `NERPOS_LOG` (tracing's filter syntax) if set and valid, else `default` (`info`, `warn`).
pub fn log_filter(default: &str) -> EnvFilter {
    std::env::var("NERPOS_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default))
}

/// Logs to stderr at `default` level (see [`log_filter`]), in the common line format.
pub fn init_logging(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter(default))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_timer(Clock { date: false })
        .try_init();
}

/// The exit of a binary's `main`: its exit code, or its error's cause chain after `error: ` on stderr
/// and exit code 1.
pub fn exit<E: Display>(result: Result<ExitCode, E>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// UTC wall time to the second: `HH:MM:SS`, with the date (`YYYY-MM-DD HH:MM:SSZ`) in files.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub date: bool,
}

impl FormatTime for Clock {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
        if self.date {
            let (y, mo, d) = civil_date(days as i64);
            write!(w, "{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}Z")
        } else {
            write!(w, "{h:02}:{m:02}:{s:02}")
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A count as people read it: `950`, `12.3k`, `1.00M`.
pub fn human_count(x: f64) -> String {
    match x {
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e4 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// The style of a counting bar (`what [=====>   ] done/total rate/s ETA`), its rate as
/// [`human_count`] writes it.
pub fn count_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg:>10} [{bar:30}] {human_pos}/{human_len} {rate}/s ETA {eta}")
        .expect("a valid template")
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", human_count(s.per_sec()));
        })
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_786), (2026, 11, 29));
    }

    #[test]
    fn counts_read_as_people_read_them() {
        assert_eq!(human_count(950.4), "950");
        assert_eq!(human_count(12_345.0), "12.3k");
        assert_eq!(human_count(1_004_947.093_3), "1.00M");
    }
}
