//! Progress bars on stderr (hidden when stderr is not a terminal) and logs that don't tear them.

use ferry_client::progress::ProgressSink;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Arc;

/// Shared drawing surface for all bars of one command.
#[derive(Clone)]
pub struct Bars {
    multi: MultiProgress,
    visible: bool,
}

impl Bars {
    /// Bars on stderr, shown only on a terminal.
    pub fn new() -> Self {
        let visible = std::io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            visible,
        }
    }

    /// Prints a line to stderr above the bars.
    pub fn println(&self, line: &str) {
        if self.visible {
            let _ = self.multi.println(line);
        } else {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }

    /// A sink for one transfer.
    pub fn sink(&self) -> Arc<BarSink> {
        Arc::new(BarSink {
            bars: self.clone(),
            bar: std::sync::Mutex::new(None),
        })
    }

    /// Prints a result line on stdout without tearing the bars.
    pub fn println_stdout(&self, line: &str) {
        self.multi.suspend(|| outln!("{line}"));
    }

    /// One bar for the total of several files.
    pub fn total(&self, bytes: u64, files: usize) -> Arc<TotalBar> {
        let bar = self.multi.add(ProgressBar::new(bytes));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:20!} {bar:30.cyan/blue} {bytes:>10}/{total_bytes:10} {binary_bytes_per_sec:>12} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("{files} files"));
        Arc::new(TotalBar {
            bars: self.clone(),
            bar,
        })
    }

    /// A writer for tracing that suspends the bars while a line is written.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter(self.clone())
    }
}

/// One transfer's bar.
pub struct BarSink {
    bars: Bars,
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

impl ProgressSink for BarSink {
    fn start(&self, name: &str, total: u64, position: u64) {
        let bar = self.bars.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:30!} {bar:30.cyan/blue} {bytes:>10}/{total_bytes:10} {binary_bytes_per_sec:>12} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(name.to_string());
        bar.set_position(position);
        // A resumed transfer must not count the bytes it skipped as speed.
        bar.reset_eta();
        *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
    }

    fn position(&self, position: u64) {
        if let Some(b) = &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
            b.set_position(position);
        }
    }

    fn note(&self, message: &str) {
        self.bars.println(&format!("ferry: {message}"));
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
            self.bars.multi.remove(&b);
        }
    }
}

/// `tracing` writer that keeps bars intact.
pub struct LogWriter(Bars);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.println(text.trim_end());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Bars {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.log_writer()
    }
}

/// The total bar of a multi-file upload.
pub struct TotalBar {
    bars: Bars,
    bar: ProgressBar,
}

impl TotalBar {
    /// A sink for one of the files: its progress moves the total.
    pub fn file_sink(self: &Arc<Self>) -> Arc<FileInTotal> {
        Arc::new(FileInTotal {
            total: self.clone(),
            last: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// One file's share of the total bar.
pub struct FileInTotal {
    total: Arc<TotalBar>,
    last: std::sync::atomic::AtomicU64,
}

impl ProgressSink for FileInTotal {
    fn start(&self, _name: &str, _total: u64, position: u64) {
        self.position(position);
        self.total.bar.reset_eta();
    }

    fn position(&self, position: u64) {
        use std::sync::atomic::Ordering;
        let before = self.last.swap(position, Ordering::Relaxed);
        if position >= before {
            self.total.bar.inc(position - before);
        } else {
            let now = self.total.bar.position();
            self.total
                .bar
                .set_position(now.saturating_sub(before - position));
        }
    }

    fn note(&self, message: &str) {
        self.total.bars.println(&format!("ferry: {message}"));
    }

    fn finish(&self) {}
}
