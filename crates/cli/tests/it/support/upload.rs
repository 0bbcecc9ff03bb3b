//! `ferry upload` harness: a server (directly or behind the fault-injecting proxy), client runs
//! and their JSON output, waits on forwarded and committed bytes.

use crate::support::proxy::{Faults, Proxy};
use crate::support::*;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Lines of the server log for uploads created through the draft / through tus.
pub fn created_by(server: &Server) -> (usize, usize) {
    let log = server.log();
    let ietf = log.matches("created (ietf)").count();
    let tus = log
        .lines()
        .filter(|l| l.contains("ferry_server::tus: created "))
        .count();
    (ietf, tus)
}

/// The one `--json` line of a finished run.
pub fn one(done: &Done) -> serde_json::Value {
    let lines = done.json();
    assert_eq!(lines.len(), 1, "{done:#?}");
    lines[0].clone()
}

/// The server is SIGKILLed twice mid-upload and restarted on the same port; the one client
/// run retries through both and completes verified.
pub fn server_sigkilled_and_restarted_client_completes(protocol: &str, path: &str, seed: u64) {
    const LEN: u64 = 32 * MIB;
    let mut server = Server::start(&[]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(16_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", LEN, seed);
    let mut run = env.upload(
        &[&f],
        &proxy.url(path),
        &["--protocol", protocol, "--json", "--chunk-size", "4M"],
    );
    for k in 1..=2 {
        wait_forwarded(&proxy, k * 10 * MIB, &mut run);
        server.restart_same_port_after_kill();
    }
    let done = run.wait(RUN_LIMIT).ok();
    let o = one(&done);
    assert_eq!(o["protocol"], protocol);
    assert_eq!(o["verified"], true, "{done:#?}");
    assert!(done.stderr.contains("retrying"), "{}", done.stderr);
    assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
}

pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;
/// Upper bound for one client run that is expected to finish.
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(60);
/// sha256 of nothing.
pub(crate) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub(crate) const SETUP_HINT: &str = "run `bash scripts/setup-test-deps.sh` (or scripts/test.sh) to install \
                          the interop test dependencies";

// ------------------------------------------------------------------ harness ----

/// One test's scratch space: files to upload, the client's state dir, its output files.
pub(crate) struct Env {
    tmp: tempfile::TempDir,
    runs: std::cell::Cell<u32>,
}

impl Env {
    pub(crate) fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().expect("tempdir"),
            runs: std::cell::Cell::new(0),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// A pseudo-random file of `len` bytes; returns its path and sha256.
    pub(crate) fn file(&self, name: &str, len: u64, seed: u64) -> (PathBuf, String) {
        random_file(self.tmp.path(), name, len as usize, seed)
    }

    /// Spawns `ferry ARGS --state-dir STATE`.
    pub(crate) fn ferry<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let n = self.runs.get();
        self.runs.set(n + 1);
        let out = self.path(&format!("run{n}.stdout"));
        let err = self.path(&format!("run{n}.stderr"));
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let child = Command::new(ferry_bin())
            .args(&args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .env_remove("FERRY_STATE_DIR")
            .env_remove("FERRY_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn ferry");
        Run {
            child: Some(child),
            out,
            err,
            started: Instant::now(),
            what: format!("ferry {args:?}"),
        }
    }

    /// Spawns `ferry upload FILES... URL EXTRA...`.
    pub(crate) fn upload(&self, files: &[&Path], url: &str, extra: &[&str]) -> Run {
        let mut args: Vec<OsString> = vec!["upload".into()];
        args.extend(files.iter().map(|f| f.as_os_str().to_owned()));
        args.push(url.into());
        args.extend(extra.iter().map(OsString::from));
        self.ferry(args)
    }

    /// Runs `ferry ARGS` to the end.
    pub(crate) fn run<I, S>(&self, args: I) -> Done
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ferry(args).wait(RUN_LIMIT)
    }

    /// Saved transfer records (`STATE/transfers/*.json`).
    pub(crate) fn records(&self) -> Vec<serde_json::Value> {
        let dir = self.state_dir().join("transfers");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".json") && !name.starts_with('.') {
                out.push(serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap());
            }
        }
        out
    }

    /// The upload URL of the single saved transfer.
    pub(crate) fn saved_url(&self) -> String {
        let recs = self.records();
        assert_eq!(recs.len(), 1, "one saved transfer: {recs:?}");
        recs[0]["parts"][0]["url"].as_str().unwrap().to_string()
    }
}

/// A running client. SIGKILLed and reaped on drop.
pub(crate) struct Run {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
    what: String,
}

/// A finished client run.
#[derive(Debug)]
pub(crate) struct Done {
    /// Exit code (None when killed by a signal).
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

impl Run {
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Whether it has exited (reaps it if so).
    pub(crate) fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().expect("try_wait").is_some(),
            None => true,
        }
    }

    /// Waits for the exit; on timeout kills it and panics with its stderr.
    pub(crate) fn wait(mut self, limit: Duration) -> Done {
        let deadline = self.started + limit;
        let mut child = self.child.take().expect("running");
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not finish within {limit:?}; stderr:\n{}",
                    self.what,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Done {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
            elapsed: self.started.elapsed(),
        }
    }

    /// SIGKILL, reaped.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (e.g. "INT").
    pub(crate) fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Done {
    /// Asserts exit code 0 and returns self.
    pub(crate) fn ok(self) -> Done {
        assert_eq!(self.code, Some(0), "expected success: {self:#?}");
        self
    }

    /// Asserts the exit code.
    pub(crate) fn code(self, want: i32) -> Done {
        assert_eq!(self.code, Some(want), "expected exit {want}: {self:#?}");
        self
    }

    /// The single line on stdout (the upload URL).
    pub(crate) fn url(&self) -> String {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "stdout is exactly one URL: {self:#?}");
        lines[0].to_string()
    }

    /// The `file_done` events on stdout.
    pub(crate) fn json(&self) -> Vec<serde_json::Value> {
        super::files_done(&self.stdout)
    }

    /// Every stdout line as JSON (`ferry status --json`).
    pub(crate) fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `limit`.
pub(crate) fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the proxy has forwarded `at_least` upload bytes, while `run` keeps running.
pub(crate) fn wait_forwarded(proxy: &Proxy, at_least: u64, run: &mut Run) {
    let deadline = Instant::now() + RUN_LIMIT;
    while proxy.forwarded.load(Ordering::Relaxed) < at_least {
        assert!(
            !run.exited(),
            "client exited before {at_least} bytes went through; stderr:\n{}",
            run.stderr()
        );
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {at_least} bytes through the proxy; stderr:\n{}",
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded) until the proxy has forwarded nothing for 200 ms: after a client is killed
/// it may still pass on what it had read, which would count towards the next run.
pub(crate) fn wait_proxy_quiet(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = proxy.forwarded.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = proxy.forwarded.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        assert!(Instant::now() < deadline, "the proxy kept forwarding");
        last = now;
    }
}

/// Waits until the server has committed `at_least` bytes of the saved transfer, while `run`
/// keeps running.
pub(crate) fn wait_committed(env: &Env, at_least: u64, run: &mut Run) {
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        assert!(
            !run.exited(),
            "client exited before {at_least} bytes were committed; stderr:\n{}",
            run.stderr()
        );
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {at_least} committed bytes; stderr:\n{}",
            run.stderr()
        );
        if let [rec] = env.records().as_slice()
            && let Some(url) = rec["parts"][0]["url"].as_str()
            && head_offset(url).is_some_and(|o| o >= at_least)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// HTTP status of a tus HEAD.
pub(crate) fn head_status(url: &str) -> u16 {
    client()
        .head(url)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .expect("HEAD")
        .status()
        .as_u16()
}

/// A port nobody listens on (bound, then released).
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Asserts a finished upload at `url` on a ferry server holds exactly `sha`, and that nothing
/// of the transfer is left in the state dir.
pub(crate) fn assert_uploaded(env: &Env, url: &str, sha: &str) {
    assert_eq!(get_sha256(url), sha, "server copy of {url}");
    assert!(env.records().is_empty(), "state left: {:?}", env.records());
}
