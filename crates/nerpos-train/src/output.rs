//! What a person sees of a training process: log lines through `tracing` (rank 0 at info, the other
//! ranks at warn unless `NERPOS_LOG` says otherwise), each rank's log file in the run folder (no colour
//! codes), and the progress of the run — a bar on a terminal, progress lines for the launcher when it
//! owns the terminal, nothing extra otherwise (the log line of each interval is the plain form).

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use nerpos_run::cli::{Clock, log_filter};
use nerpos_run::progress::{Bar, PIPE_ENV, Progress};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
        let filter = || log_filter(if rank == 0 { "info" } else { "warn" });
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
