//! What a transfer run tells people and programs: redrawn progress lines that fit a terminal, a
//! plain progress line every few seconds when stderr is a log, JSON Lines events for programs
//! (`--json`), and the result lines on stdout.

pub mod view;

use ferry_client::error::ClientError;
use ferry_client::progress::ProgressSink;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use view::{Line, Meter};

/// The version of the `--json` event schema (docs/client.md): a field's meaning never changes
/// within a version; new fields may appear.
pub const EVENTS_VERSION: u32 = 1;

/// Most file lines drawn above the total on a terminal.
const FILE_LINES: usize = 4;

/// How the run talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Redrawn lines on a terminal.
    Terminal,
    /// A plain line every interval (stderr is a file or a pipe).
    Plain,
    /// JSON Lines events on stdout.
    Json,
    /// Results and errors only.
    Quiet,
}

/// What the flags asked for.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
    /// Between plain lines or `progress` events; [`Settings::interval_or_default`] when unset.
    pub interval: Option<Duration>,
    /// JSON events go to stderr (the file itself is on stdout).
    pub json_to_stderr: bool,
}

impl Settings {
    /// The style for these flags and this stderr.
    pub fn style(&self) -> Style {
        if self.json {
            Style::Json
        } else if self.quiet {
            Style::Quiet
        } else if std::io::stderr().is_terminal() {
            Style::Terminal
        } else {
            Style::Plain
        }
    }

    fn interval_or_default(&self, style: Style) -> Duration {
        self.interval.unwrap_or(match style {
            Style::Json => Duration::from_secs(1),
            _ => Duration::from_secs(5),
        })
    }
}

/// The run's output. Cheap to clone; every file's sink reports into it.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    op: &'static str,
    style: Style,
    verbose: u8,
    interval: Duration,
    json_to_stderr: bool,
    multi: MultiProgress,
    board: Mutex<Board>,
    slots: Mutex<Vec<ProgressBar>>,
    stop: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
    next_id: AtomicU64,
}

/// What is known of the run at a moment.
struct Board {
    started: Instant,
    files_total: usize,
    files_done: usize,
    files_failed: usize,
    bytes_total: Option<u64>,
    /// Files whose size is learnt only when they start (several downloads): the total is
    /// known once none is left.
    sizes_unknown: usize,
    /// The sizes learnt so far.
    sized_sum: u64,
    /// Bytes of the files no longer in `active`.
    finished_bytes: u64,
    active: Vec<Active>,
    /// Bytes moved by this run (resumed bytes are not moved), never decreasing.
    moved: u64,
    meter: Meter,
    last_emit: Instant,
}

struct Active {
    id: u64,
    name: String,
    /// None: known only at the end (standard input).
    total: Option<u64>,
    position: u64,
    streams: usize,
}

impl Board {
    /// A file of `size` (None: known only at its end) started, or one that never will
    /// failed (`Some(0)`).
    fn learn_size(&mut self, size: Option<u64>) {
        if self.sizes_unknown == 0 {
            return;
        }
        self.sizes_unknown -= 1;
        match size {
            Some(s) => {
                self.sized_sum = self.sized_sum.saturating_add(s);
                if self.sizes_unknown == 0 {
                    self.bytes_total = Some(self.sized_sum);
                }
            }
            // Standard input: no total until the end.
            None => self.sizes_unknown = 0,
        }
    }

    fn bytes_done(&self) -> u64 {
        self.finished_bytes + self.active.iter().map(|a| a.position).sum::<u64>()
    }

    fn total_line(&self, now: Instant) -> Line {
        let rate = self.meter.rate();
        let stalled = self.meter.stalled(now);
        let done = self.bytes_done();
        let remaining = self.bytes_total.map(|t| t.saturating_sub(done));
        Line {
            label: format!("Total {}/{} files", self.files_done, self.files_total),
            done,
            total: self.bytes_total,
            rate: Some(rate),
            stalled,
            eta: Some(view::eta(remaining, rate, stalled)),
            streams: None,
        }
    }

    fn file_line(&self, a: &Active, now: Instant, alone: bool) -> Line {
        let mut l = Line {
            label: a.name.clone(),
            done: a.position,
            total: a.total,
            streams: Some(a.streams),
            ..Line::default()
        };
        if alone {
            let rate = self.meter.rate();
            l.stalled = self.meter.stalled(now);
            l.rate = Some(rate);
            l.eta = Some(view::eta(
                a.total.map(|t| t.saturating_sub(a.position)),
                rate,
                l.stalled,
            ));
        }
        l
    }

    fn lines(&self, now: Instant) -> Vec<Line> {
        if self.files_total <= 1 {
            return self
                .active
                .iter()
                .take(1)
                .map(|a| self.file_line(a, now, true))
                .collect();
        }
        let mut lines: Vec<Line> = self
            .active
            .iter()
            .take(FILE_LINES)
            .map(|a| self.file_line(a, now, false))
            .collect();
        lines.push(self.total_line(now));
        lines
    }

    fn progress_event(&self, op: &str, now: Instant) -> Value {
        let total = self.total_line(now);
        let percent = |done: u64, total: Option<u64>| {
            total.map(|t| {
                if t == 0 {
                    100.0
                } else {
                    (done.min(t) as f64 * 1000.0 / t as f64).floor() / 10.0
                }
            })
        };
        json!({
            "version": EVENTS_VERSION,
            "event": "progress",
            "op": op,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": total.done,
            "bytes_total": total.total,
            "percent": percent(total.done, total.total),
            "rate": total.rate.flatten().map(|r| r.round() as u64),
            "eta_seconds": total.eta.flatten().map(|d| d.as_secs()),
            "stalled": total.stalled,
            "seconds": now.duration_since(self.started).as_secs_f64(),
            "active": self.active.iter().map(|a| json!({
                "file": a.name,
                "bytes_done": a.position,
                "bytes_total": a.total,
                "percent": percent(a.position, a.total),
                "streams": a.streams,
            })).collect::<Vec<_>>(),
        })
    }
}

impl Reporter {
    /// A reporter for a run of `op` ("upload" or "download"); the ticker starts now.
    pub fn new(op: &'static str, settings: Settings) -> Self {
        let style = settings.style();
        let target = if style == Style::Terminal {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        let now = Instant::now();
        let inner = Arc::new(Inner {
            op,
            style,
            verbose: settings.verbose,
            interval: settings.interval_or_default(style),
            json_to_stderr: settings.json_to_stderr,
            multi: MultiProgress::with_draw_target(target),
            board: Mutex::new(Board {
                started: now,
                files_total: 0,
                files_done: 0,
                files_failed: 0,
                bytes_total: Some(0),
                sizes_unknown: 0,
                sized_sum: 0,
                finished_bytes: 0,
                active: Vec::new(),
                moved: 0,
                meter: Meter::default(),
                last_emit: now,
            }),
            slots: Mutex::new(Vec::new()),
            stop: Mutex::new(None),
            ticker: Mutex::new(None),
            next_id: AtomicU64::new(0),
        });
        let reporter = Self { inner };
        if style != Style::Quiet {
            reporter.start_ticker();
        }
        reporter
    }

    fn start_ticker(&self) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let every = if self.inner.style == Style::Terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(250).min(self.inner.interval)
        };
        // A weak handle: the ticker never keeps the run's output alive.
        let weak = Arc::downgrade(&self.inner);
        let handle = std::thread::Builder::new()
            .name("ferry-progress".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    match weak.upgrade() {
                        Some(inner) => inner.tick(),
                        None => break,
                    }
                }
            })
            .ok();
        *lock(&self.inner.stop) = Some(tx);
        *lock(&self.inner.ticker) = handle;
    }

    /// The run has `files` files of `bytes` in all (`None`: sizes not known before each
    /// file starts).
    pub fn plan(&self, files: usize, bytes: Option<u64>) {
        let mut b = lock(&self.inner.board);
        b.files_total = files;
        b.bytes_total = bytes;
        b.sizes_unknown = if bytes.is_none() { files } else { 0 };
        b.sized_sum = 0;
    }

    /// Whether `-v` was given.
    pub fn verbose(&self) -> bool {
        self.inner.verbose > 0
    }

    /// A sink for one file; `url` is the remote side when known (downloads).
    pub fn sink(&self, url: Option<&str>) -> Arc<FileSink> {
        Arc::new(FileSink {
            reporter: self.clone(),
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            name: Mutex::new(None),
            url: url.map(str::to_owned),
            started: AtomicBool::new(false),
            last: AtomicU64::new(0),
        })
    }

    /// A notice for people (stderr; not with `--quiet`).
    pub fn note(&self, line: &str) {
        if self.inner.style != Style::Quiet {
            self.inner.stderr_line(line);
        }
    }

    /// A notice only with `-v`.
    pub fn detail(&self, line: &str) {
        if self.verbose() {
            self.note(line);
        }
    }

    /// An error for people: on stderr whatever the style.
    pub fn warn(&self, line: &str) {
        self.inner.stderr_line(line);
    }

    /// A result line on stdout (not with `--json`, whose results are events).
    pub fn result(&self, line: &str) {
        if self.inner.style != Style::Json {
            self.inner.multi.suspend(|| outln!("{line}"));
        }
    }

    /// Emits `event` with the run's fields (`--json` only).
    pub fn event(&self, event: &str, mut fields: Value) {
        if self.inner.style != Style::Json {
            return;
        }
        fields["version"] = EVENTS_VERSION.into();
        fields["event"] = event.into();
        fields["op"] = self.inner.op.into();
        self.inner.json_line(&fields);
    }

    /// A file finished: counted, and its `file_done` event carries `fields`.
    pub fn file_done(&self, sink: &FileSink, fields: Value) {
        sink.finish();
        lock(&self.inner.board).files_done += 1;
        self.event("file_done", fields);
    }

    /// A file failed: counted, said on stderr (named by `file`, else `url`), and an `error`
    /// event with its exit code. A download's file is the one it started writing, if any.
    pub fn file_failed(
        &self,
        sink: Option<&FileSink>,
        file: Option<&str>,
        url: Option<&str>,
        e: &ClientError,
    ) {
        let started = sink.and_then(|s| {
            s.finish();
            lock(&s.name).clone()
        });
        let mut b = lock(&self.inner.board);
        b.files_failed += 1;
        if started.is_none() {
            // It will not start: the total is what the others make.
            b.learn_size(Some(0));
        }
        drop(b);
        let file = file.map(str::to_owned).or(started);
        let shown = file.as_deref().or(url).unwrap_or("-");
        self.warn(&format!("ferry: {shown}: {}", e.message));
        self.event("error", error_fields(file.as_deref(), url, e));
    }

    /// The run ended with `code`: the bars go, and `--json` gets its `summary`.
    pub fn finish(&self, code: u8, extra: Value) {
        self.stop_ticker();
        let b = lock(&self.inner.board);
        let mut fields = json!({
            "files_done": b.files_done,
            "files_failed": b.files_failed,
            "files_total": b.files_total,
            "bytes_done": b.bytes_done(),
            "bytes_moved": b.moved,
            "seconds": b.started.elapsed().as_secs_f64(),
            "exit_code": code,
        });
        drop(b);
        if let (Some(f), Some(e)) = (fields.as_object_mut(), extra.as_object()) {
            f.extend(e.clone());
        }
        self.event("summary", fields);
    }

    fn stop_ticker(&self) {
        drop(lock(&self.inner.stop).take());
        if let Some(h) = lock(&self.inner.ticker).take() {
            let _ = h.join();
        }
        for bar in lock(&self.inner.slots).drain(..) {
            bar.finish_and_clear();
            self.inner.multi.remove(&bar);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(lock(&self.stop).take());
    }
}

/// `v` as one line, `version`, `event` and `op` first: readable by people who look, whatever
/// order the other fields come in.
pub fn event_line(v: &Value) -> String {
    let Some(map) = v.as_object() else {
        return v.to_string();
    };
    let first = ["version", "event", "op"];
    let mut out = String::from("{");
    for (k, val) in first
        .iter()
        .filter_map(|k| map.get_key_value(*k))
        .chain(map.iter().filter(|(k, _)| !first.contains(&k.as_str())))
    {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&Value::from(k.as_str()).to_string());
        out.push(':');
        out.push_str(&val.to_string());
    }
    out.push('}');
    out
}

/// The fields of an `error` event.
pub fn error_fields(file: Option<&str>, url: Option<&str>, e: &ClientError) -> Value {
    json!({
        "file": file,
        "url": url,
        "exit_code": e.kind.exit_code(),
        "kind": format!("{:?}", e.kind).to_lowercase(),
        "status": e.status,
        "message": e.message,
    })
}

impl Inner {
    fn stderr_line(&self, line: &str) {
        if self.style == Style::Terminal {
            let _ = self.multi.println(line);
        } else {
            errln!("{line}");
        }
    }

    fn json_line(&self, v: &Value) {
        let line = event_line(v);
        if self.json_to_stderr {
            errln!("{line}");
        } else {
            outln!("{line}");
        }
    }

    fn tick(&self) {
        let now = Instant::now();
        let mut b = lock(&self.board);
        let moved = b.moved;
        b.meter.record(now, moved);
        match self.style {
            Style::Terminal => {
                let width = console::Term::stderr()
                    .size_checked()
                    .map_or(80, |(_, cols)| cols as usize);
                let lines: Vec<String> = b.lines(now).iter().map(|l| l.fit(width)).collect();
                drop(b);
                self.draw(&lines);
            }
            Style::Plain => {
                if b.active.is_empty() || now.duration_since(b.last_emit) < self.interval {
                    return;
                }
                b.last_emit = now;
                let mut line = if b.files_total <= 1 {
                    b.lines(now).first().map(Line::plain).unwrap_or_default()
                } else {
                    let mut s = b.total_line(now).plain();
                    let names: Vec<&str> =
                        b.active.iter().map(|a| a.name.as_str()).take(3).collect();
                    s.push_str(&format!(" (now: {}", names.join(", ")));
                    if b.active.len() > names.len() {
                        s.push_str(&format!(" and {} more", b.active.len() - names.len()));
                    }
                    s.push(')');
                    s
                };
                line.insert_str(0, "ferry: ");
                drop(b);
                errln!("{line}");
            }
            Style::Json => {
                if b.active.is_empty() || now.duration_since(b.last_emit) < self.interval {
                    return;
                }
                b.last_emit = now;
                let v = b.progress_event(self.op, now);
                drop(b);
                self.json_line(&v);
            }
            Style::Quiet => {}
        }
    }

    /// One bar per line, added and removed as the count changes.
    fn draw(&self, lines: &[String]) {
        let mut slots = lock(&self.slots);
        while slots.len() > lines.len() {
            if let Some(bar) = slots.pop() {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
        }
        while slots.len() < lines.len() {
            let bar = self.multi.add(ProgressBar::new(0));
            bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
            slots.push(bar);
        }
        for (bar, line) in slots.iter().zip(lines) {
            bar.set_message(line.clone());
        }
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Board, usize)) {
        let mut b = lock(&self.board);
        if let Some(i) = b.active.iter().position(|a| a.id == id) {
            f(&mut b, i);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One file's progress, reported into its run's [`Reporter`].
pub struct FileSink {
    reporter: Reporter,
    id: u64,
    /// The name it started under.
    name: Mutex<Option<String>>,
    url: Option<String>,
    started: AtomicBool,
    last: AtomicU64,
}

impl FileSink {
    fn begin(&self, name: &str, total: Option<u64>, position: u64) {
        let inner = &self.reporter.inner;
        *lock(&self.name) = Some(name.to_owned());
        self.last.store(position, Ordering::Relaxed);
        {
            let mut b = lock(&inner.board);
            match b.active.iter_mut().find(|a| a.id == self.id) {
                Some(a) => {
                    a.total = total;
                    a.position = position;
                }
                None => {
                    b.active.push(Active {
                        id: self.id,
                        name: name.to_owned(),
                        total,
                        position,
                        streams: 1,
                    });
                    b.learn_size(total);
                }
            }
        }
        if !self.started.swap(true, Ordering::Relaxed) {
            self.reporter.event(
                "started",
                json!({
                    "file": name,
                    "url": self.url,
                    "bytes_total": total,
                    "resumed_from": position,
                }),
            );
        }
    }
}

impl ProgressSink for FileSink {
    fn start(&self, name: &str, total: u64, position: u64) {
        self.begin(name, Some(total), position);
    }

    fn start_unknown(&self, name: &str) {
        self.begin(name, None, 0);
    }

    fn position(&self, position: u64) {
        let before = self.last.swap(position, Ordering::Relaxed);
        self.reporter.inner.update(self.id, |b, i| {
            b.active[i].position = position;
            b.moved += position.saturating_sub(before);
        });
    }

    fn streams(&self, n: usize) {
        self.reporter
            .inner
            .update(self.id, |b, i| b.active[i].streams = n);
    }

    fn note(&self, message: &str) {
        self.reporter.note(&format!("ferry: {message}"));
    }

    fn finish(&self) {
        let mut b = lock(&self.reporter.inner.board);
        if let Some(i) = b.active.iter().position(|a| a.id == self.id) {
            let a = b.active.remove(i);
            b.finished_bytes += a.position;
        }
    }
}

/// `tracing` writer that keeps the bars intact.
pub struct LogWriter(Reporter);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.inner.stderr_line(text.trim_end());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Reporter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogWriter(self.clone())
    }
}
