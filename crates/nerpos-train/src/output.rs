//! What a person sees of a training process: log lines through `tracing` (rank 0 at info, the other
//! ranks at warn unless `NERPOS_LOG` says otherwise), each rank's log file in the run folder (no colour
//! codes), and the progress of the run — a bar on a terminal, progress lines for the launcher when it
//! owns the terminal, nothing extra otherwise (the log line of each interval is the plain form).

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use nerpos_run::progress::{Bar, PIPE_ENV, Progress};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How rank 0 shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// stderr is a terminal: draw the bar.
    Bar,
    /// The launcher draws it: send it [`Progress`] lines on stdout.
    Pipe,
    /// Neither: the log line of each interval is the progress.
    Lines,
}

/// The process's output: its progress mode, the bar, and the log file once the run folder is known.
#[derive(Clone)]
pub struct Output {
    pub mode: ProgressMode,
    pub bar: Bar,
    file: Arc<Mutex<Option<File>>>,
}

impl Output {
    /// A quiet output (no logging set up): for library use and tests.
    pub fn quiet() -> Output {
        Output {
            mode: ProgressMode::Lines,
            bar: Bar::hidden(),
            file: Arc::default(),
        }
    }

    /// Sets up logging for process `rank`: stderr (colours only on a terminal) and, once
    /// [`Output::log_to`] is called, a file.
    pub fn init(rank: usize) -> Output {
        let mode = if std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else if std::env::var_os(PIPE_ENV).is_some() {
            ProgressMode::Pipe
        } else {
            ProgressMode::Lines
        };
        let out = Output {
            mode,
            bar: Bar::hidden(),
            file: Arc::default(),
        };
        // NERPOS_LOG (tracing's filter syntax) overrides the per-rank default; empty means unset.
        let filter = || {
            std::env::var("NERPOS_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .and_then(|v| EnvFilter::try_new(v).ok())
                .unwrap_or_else(|| EnvFilter::new(if rank == 0 { "info" } else { "warn" }))
        };
        let terminal = tracing_subscriber::fmt::layer()
            .with_writer(BarWriter {
                bar: out.bar.clone(),
            })
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .with_timer(Clock { date: false })
            .with_filter(filter());
        let file = tracing_subscriber::fmt::layer()
            .with_writer(FileWriter {
                file: out.file.clone(),
            })
            .with_ansi(false)
            .with_target(false)
            .with_timer(Clock { date: true })
            .with_filter(filter());
        let _ = tracing_subscriber::registry()
            .with(terminal)
            .with(file)
            .try_init();
        out
    }

    /// From now on, log lines also go to `path` (appended: a resumed run continues its log).
    pub fn log_to(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
        Ok(())
    }

    /// Shows a step's progress (rank 0).
    pub fn progress(&self, p: &Progress) {
        match self.mode {
            ProgressMode::Bar => self.bar.update(p),
            ProgressMode::Pipe => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", p.to_line());
                let _ = out.flush();
            }
            ProgressMode::Lines => {}
        }
    }

    /// Reports the error that ends the process, on stderr and in the log file.
    pub fn error(&self, message: &str) {
        self.bar.finish();
        eprintln!("{message}");
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = writeln!(f, "{message}");
        }
    }

    /// Prints a block of text (an evaluation report) above the bar, and into the log file.
    pub fn print_block(&self, text: &str) {
        self.bar.suspend(|| eprint!("{text}"));
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = f.write_all(text.as_bytes());
        }
    }
}

/// UTC wall time to the second: `HH:MM:SS` on the terminal, with the date in files.
struct Clock {
    date: bool,
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

/// stderr, with the progress bar cleared while a line is written.
struct BarWriter {
    bar: Bar,
}

/// One event's formatted line, written when dropped.
struct Line {
    buf: Vec<u8>,
    sink: Sink,
}

enum Sink {
    Stderr(Bar),
    File(Arc<Mutex<Option<File>>>),
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        match &self.sink {
            Sink::Stderr(bar) => bar.suspend(|| {
                let _ = std::io::stderr().write_all(&self.buf);
            }),
            Sink::File(file) => {
                if let Some(f) = file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    let _ = f.write_all(&self.buf);
                }
            }
        }
    }
}

impl<'a> MakeWriter<'a> for BarWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::new(),
            sink: Sink::Stderr(self.bar.clone()),
        }
    }
}

struct FileWriter {
    file: Arc<Mutex<Option<File>>>,
}

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::new(),
            sink: Sink::File(self.file.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::civil_date;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_786), (2026, 11, 29));
    }
}
