//! `ferry upload`, `ferry status` and `ferry forget` end to end: the real `ferry` binary as the
//! client, against a real `ferry serve` (directly or through the fault-injecting proxy), against
//! @tus/server (npm) and against rustus (crates.io).
//!
//! Every client run gets `--state-dir` in the test's temp dir, writes stdout/stderr to files
//! there, and is owned by a [`Run`] guard that SIGKILLs and reaps it on drop; every wait is
//! bounded. Third-party servers are owned by guards too. Missing third-party dependencies fail
//! the test with a hint to run `scripts/setup-test-deps.sh` (never a silent skip).

use crate::support::proxy::{Faults, Proxy};
use crate::support::*;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

    /// One JSON object per stdout line.
    pub(crate) fn json(&self) -> Vec<serde_json::Value> {
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

// ------------------------------------------------------------- happy path ----

#[test]
fn prints_the_url_json_and_leaves_no_state() {
    let server = Server::start(&[]);
    let env = Env::new();
    let (a, sha_a) = env.file("a.bin", 5 * MIB + 123, 1);
    let (b, sha_b) = env.file("b.bin", 300 * KIB, 2);
    let empty = env.path("empty");
    std::fs::File::create(&empty).unwrap();

    // Plain: stdout is exactly the URL, nothing else.
    let done = env
        .upload(&[&a], &server.files_url, &[])
        .wait(RUN_LIMIT)
        .ok();
    let url = done.url();
    assert_eq!(done.stdout, format!("{url}\n"));
    assert!(url.starts_with(&server.files_url), "{url}");
    assert!(
        !done.stderr.contains("not verified"),
        "ferry serve exposes Repr-Digest: {}",
        done.stderr
    );
    assert_uploaded(&env, &url, &sha_a);

    // --json: one object per file, in order, with the documented fields.
    let done = env
        .upload(&[&b, &empty], &server.files_url, &["--json"])
        .wait(RUN_LIMIT)
        .ok();
    let objs = done.json();
    assert_eq!(objs.len(), 2, "{done:#?}");
    for (o, (len, sha, path)) in objs
        .iter()
        .zip([(300 * KIB, &sha_b, &b), (0, &EMPTY_SHA256.into(), &empty)])
    {
        let url = o["url"].as_str().expect("url");
        assert!(url.starts_with(&server.files_url), "{o}");
        assert_eq!(o["bytes"], len, "{o}");
        assert!(o["seconds"].as_f64().is_some_and(|s| s >= 0.0), "{o}");
        assert!(
            o.get("crc64nvme").is_some(),
            "ferry serve offers CRC-64/NVME: {o}"
        );
        assert_reported_digest(o, path);
        assert_eq!(o["verified"], true, "{o}");
        assert_uploaded(&env, url, sha);
    }
}

/// A file over the 8 MiB inline-digest limit: ferry's server has only the CRC at completion, so
/// `--digest blake3` / `sha256` make it compute the cryptographic digest on request.
#[test]
fn digest_flag_asks_for_a_cryptographic_digest() {
    let server = Server::start(&[]);
    let env = Env::new();
    let (f, sha) = env.file("big.bin", 9 * MIB + 7, 21);
    let data = std::fs::read(&f).unwrap();
    for (flag, key, want) in [
        ("blake3", "blake3", blake3::hash(&data).to_hex().to_string()),
        ("sha256", "sha256", sha.clone()),
        (
            "crc64nvme",
            "crc64nvme",
            format!("{:016x}", crc64nvme(&data)),
        ),
    ] {
        let done = env
            .upload(&[&f], &server.files_url, &["--json", "--digest", flag])
            .wait(RUN_LIMIT)
            .ok();
        let out = done.json();
        assert_eq!(out.len(), 1, "{done:#?}");
        assert_eq!(
            out[0][key].as_str(),
            Some(want.as_str()),
            "{flag}: {}",
            out[0]
        );
        assert_eq!(out[0]["verified"], true, "{flag}: {}", out[0]);
        assert_uploaded(&env, out[0]["url"].as_str().unwrap(), &sha);
    }
    // A chunk session over 8 MiB gets no cryptographic digest (sessions do not act on
    // Want-Repr-Digest): asked for one, the client says so instead of comparing the CRC.
    let chunks = format!("http://{}/chunks/", server.addr);
    let done = env
        .upload(
            &[&f],
            &chunks,
            &["--protocol", "chunks", "--json", "--digest", "blake3"],
        )
        .wait(RUN_LIMIT)
        .ok();
    let out = done.json();
    assert_eq!(out[0]["verified"], false, "{done:#?}");
    assert!(
        done.stderr
            .contains("did not give the blake3 digest asked for (--digest)"),
        "{done:#?}"
    );
    assert_uploaded(&env, out[0]["url"].as_str().unwrap(), &sha);
}

// ------------------------------------------------------------- exit codes ----

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    let (f, _) = env.file("f", 1000, 3);
    let f = f.to_str().unwrap();
    let missing = env.path("missing");
    let cases: Vec<Vec<&str>> = vec![
        vec!["upload", f, "not a url"],
        vec!["upload", f, "ftp://127.0.0.1/files/"],
        vec![
            "upload",
            missing.to_str().unwrap(),
            "http://127.0.0.1:9/files/",
        ],
        vec![
            "upload",
            f,
            "http://127.0.0.1:9/files/",
            "--chunk-size",
            "lots",
        ],
        vec![
            "upload",
            f,
            "http://127.0.0.1:9/files/",
            "--retry-time",
            "soon",
        ],
        vec!["upload", f, "http://127.0.0.1:9/files/", "--no-such-flag"],
        vec!["upload", "http://127.0.0.1:9/files/"],
    ];
    for args in cases {
        let done = env.run(&args);
        assert_eq!(done.code, Some(2), "{args:?}: {done:#?}");
        assert!(done.stdout.is_empty(), "{args:?}: {done:#?}");
        assert!(!done.stderr.trim().is_empty(), "{args:?}: says why");
    }
    let done = env.run([
        "upload",
        missing.to_str().unwrap(),
        "http://127.0.0.1:9/files/",
    ]);
    assert!(done.stderr.contains("missing"), "{done:#?}");
    assert!(env.records().is_empty());
}

#[test]
fn refused_by_the_server_exits_3() {
    let server = Server::start(&["--max-size", "1M"]);
    let env = Env::new();
    let (f, _) = env.file("big", 2 * MIB, 4);
    let done = env
        .upload(&[&f], &server.files_url, &[])
        .wait(RUN_LIMIT)
        .code(3);
    assert!(done.stdout.is_empty(), "{done:#?}");
    assert!(
        done.stderr.contains("2097152 bytes") && done.stderr.contains("at most 1048576"),
        "says the size and the limit: {}",
        done.stderr
    );
    assert!(env.records().is_empty(), "nothing to resume");
}

#[test]
fn unreachable_server_exhausts_retries_with_exit_4() {
    let env = Env::new();
    let (f, _) = env.file("f", 1000, 5);
    let url = format!("http://127.0.0.1:{}/files/", free_port());
    let done = env
        .upload(&[&f], &url, &["--retries", "2", "--retry-time", "3s"])
        .wait(RUN_LIMIT)
        .code(4);
    assert!(
        done.stderr.contains("run the same command again to resume"),
        "{}",
        done.stderr
    );
    assert!(done.elapsed < Duration::from_secs(20), "{done:#?}");
}

#[test]
fn server_killed_exhausts_then_a_rerun_resumes() {
    let mut server = Server::start(&[]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(4_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", 8 * MIB, 6);
    let endpoint = proxy.url("/files/");
    // Small requests, so that part of the file is committed when the server dies.
    let args = [
        "--retries",
        "2",
        "--retry-time",
        "3s",
        "--chunk-size",
        "1M",
        "--max-chunk",
        "1M",
    ];

    let mut run = env.upload(&[&f], &endpoint, &args);
    wait_committed(&env, 2 * MIB, &mut run);
    server.kill9();
    let done = run.wait(Duration::from_secs(30)).code(4);
    assert!(
        done.stderr.contains("run the same command again to resume"),
        "{}",
        done.stderr
    );
    assert!(done.stdout.is_empty());

    // `ferry status` lists it.
    let url = env.saved_url();
    let status = env.run(["status"]).ok();
    assert!(
        status.stdout.contains(&url) && status.stdout.contains(f.to_str().unwrap()),
        "{status:#?}"
    );

    // The server comes back; the same command resumes and completes.
    server.restart_same_port_after_kill();
    proxy.set(Faults::default());
    let done = env.upload(&[&f], &endpoint, &args).wait(RUN_LIMIT).ok();
    assert!(done.stderr.contains("resuming"), "{}", done.stderr);
    assert_eq!(done.url(), url);
    assert_uploaded(&env, &url, &sha);
}

// ------------------------------------------------------------ proxy faults ----

/// Uploads `len` bytes through a proxy with `faults` and checks the result; returns the proxy
/// and the client's stderr.
fn upload_through(faults: Faults, len: u64, extra: &[&str]) -> (Proxy, Done) {
    let server = Server::start(&[]);
    let proxy = Proxy::start(server.addr, faults);
    let env = Env::new();
    let (f, sha) = env.file("f", len, 7);
    let done = env
        .upload(&[&f], &proxy.url("/files/"), &[&["--json"], extra].concat())
        .wait(RUN_LIMIT)
        .ok();
    let o = &done.json()[0];
    let url = o["url"].as_str().unwrap();
    assert!(url.starts_with(&proxy.url("/files/")), "{url}");
    assert_eq!(o["verified"], true);
    assert_reported_digest(o, &f);
    assert_uploaded(&env, url, &sha);
    assert!(proxy.forwarded.load(Ordering::Relaxed) >= len);
    (proxy, done)
}

#[test]
fn connections_cut_repeatedly() {
    let (proxy, done) = upload_through(
        Faults {
            cut_after: Some(3 * MIB),
            ..Faults::default()
        },
        12 * MIB,
        &[],
    );
    let conns = proxy.connections.load(Ordering::Relaxed);
    assert!(conns >= 4, "each connection carries at most 3 MiB: {conns}");
    assert!(done.stderr.contains("retrying"), "{}", done.stderr);
}

#[test]
fn connections_reset_repeatedly() {
    let (proxy, done) = upload_through(
        Faults {
            reset_after: Some(3 * MIB),
            ..Faults::default()
        },
        10 * MIB,
        &[],
    );
    let conns = proxy.connections.load(Ordering::Relaxed);
    assert!(conns >= 4, "each connection carries at most 3 MiB: {conns}");
    assert!(done.stderr.contains("retrying"), "{}", done.stderr);
}

#[test]
fn slow_and_throttled_link() {
    let rate = 4_000_000;
    let len = 6 * MIB;
    let (_proxy, done) = upload_through(
        Faults {
            delay: Duration::from_millis(5),
            rate: Some(rate),
            ..Faults::default()
        },
        len,
        &[],
    );
    // The cap was in the path (a single connection cannot beat it).
    let floor = Duration::from_secs_f64(len as f64 / rate as f64 * 0.9);
    assert!(done.elapsed >= floor, "{:?} < {floor:?}", done.elapsed);
}

#[test]
fn stall_is_detected_by_the_stall_timeout() {
    let server = Server::start(&[]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            stall_after: Some(2 * MIB),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", 6 * MIB, 20);
    let started = Instant::now();
    let run = env.upload(&[&f], &proxy.url("/files/"), &["--stall-timeout", "2s"]);
    wait_until(RUN_LIMIT, "the stall to be noticed", || {
        run.stderr()
            .contains("no progress for 2s (stalled connection)")
    });
    // The link recovers.
    proxy.set(Faults::default());
    let done = run.wait(RUN_LIMIT).ok();
    assert_uploaded(&env, &done.url(), &sha);
    assert!(
        proxy.connections.load(Ordering::Relaxed) >= 2,
        "reconnected"
    );
    // Generous: the default 30 s stall timeout (or the server's 60 s body timeout) would blow
    // it.
    assert!(started.elapsed() < Duration::from_secs(60), "{done:#?}");
}

/// A request whose body takes longer than --stall-timeout to send is not a stall while its
/// bytes keep moving.
#[test]
fn slow_requests_are_not_mistaken_for_stalls() {
    let server = Server::start(&["--sync", "none"]);
    let env = Env::new();
    let (f, sha) = env.file("f", 3 * MIB, 21);
    // One 3 MiB request at 1 MB/s: about 3 s, three times the stall timeout.
    let done = env
        .upload(
            &[&f],
            &server.files_url,
            &[
                "--limit-rate",
                "1M",
                "--stall-timeout",
                "1s",
                "--chunk-size",
                "4M",
            ],
        )
        .wait(RUN_LIMIT)
        .ok();
    assert!(!done.stderr.contains("retrying"), "{}", done.stderr);
    assert_uploaded(&env, &done.url(), &sha);
}

// ------------------------------------------------------------- kill -9 ----

#[test]
fn client_sigkilled_five_times_resumes_with_bounded_resends() {
    const LEN: u64 = 64 * MIB;
    const CHUNK: u64 = 4 * MIB;
    const KILLS: u64 = 5;
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(24_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", LEN, 8);
    let endpoint = proxy.url("/files/");
    // One stream (-j 1), so "one chunk per kill" is the bound.
    let args = ["--chunk-size", "4M", "--max-chunk", "4M", "-j", "1"];
    let mut runs = 0u64;
    for k in 0..KILLS {
        let before = proxy.forwarded.load(Ordering::Relaxed);
        let mut run = env.upload(&[&f], &endpoint, &args);
        runs += 1;
        // Kill somewhere inside a chunk (not on a boundary): 6.5 MiB into this run.
        wait_forwarded(&proxy, before + 6 * MIB + MIB / 2, &mut run);
        run.kill9();
        let err = run.stderr();
        if k > 0 {
            assert!(err.contains("resuming"), "run {k}: {err}");
        }
    }
    let done = env.upload(&[&f], &endpoint, &args).wait(RUN_LIMIT).ok();
    runs += 1;
    assert!(done.stderr.contains("resuming"), "{}", done.stderr);
    assert_uploaded(&env, &done.url(), &sha);
    // Every byte crosses once, plus at most one chunk per kill, plus request heads (generously
    // 64 KiB for each request: per run OPTIONS, HEAD, HEAD+verify; one PATCH per chunk).
    let forwarded = proxy.forwarded.load(Ordering::Relaxed);
    let requests = LEN / CHUNK + KILLS + 4 * runs;
    let bound = LEN + KILLS * CHUNK + requests * 64 * KIB;
    assert!(
        forwarded <= bound,
        "forwarded {forwarded} > {bound} (file {LEN}, {KILLS} kills of {CHUNK}-byte chunks)"
    );
}

#[test]
fn server_sigkilled_five_times_client_carries_on() {
    const LEN: u64 = 40 * MIB;
    let mut server = Server::start(&[]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(16_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", LEN, 9);
    let mut run = env.upload(&[&f], &proxy.url("/files/"), &["--json", "-j", "1"]);
    for k in 1..=5 {
        wait_forwarded(&proxy, k * 6 * MIB, &mut run);
        server.restart_same_port_after_kill();
    }
    let done = run.wait(RUN_LIMIT).ok();
    let o = &done.json()[0];
    assert_eq!(o["verified"], true, "{done:#?}");
    assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
}

// ------------------------------------------------------------ file changes ----

/// Rewrites `path` with new pseudo-random content of the same size; returns the new sha256.
fn rewrite_same_size(path: &Path, seed: u64) -> String {
    let len = std::fs::metadata(path).unwrap().len();
    let (tmp, sha) = random_file(path.parent().unwrap(), "rewrite.tmp", len as usize, seed);
    // Overwrite in place (same inode), as an editor saving over the file might.
    std::fs::write(path, std::fs::read(&tmp).unwrap()).unwrap();
    std::fs::remove_file(tmp).unwrap();
    sha
}

#[test]
fn file_changed_between_runs_is_uploaded_afresh() {
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(8_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, old_sha) = env.file("f", 12 * MIB, 10);
    let endpoint = proxy.url("/files/");
    let mut run = env.upload(&[&f], &endpoint, &[]);
    wait_forwarded(&proxy, 3 * MIB, &mut run);
    run.kill9();
    let stale = env.saved_url();
    assert_eq!(head_status(&stale), 200);

    let new_sha = rewrite_same_size(&f, 11);
    assert_ne!(new_sha, old_sha);
    proxy.set(Faults::default());
    let done = env.upload(&[&f], &endpoint, &[]).wait(RUN_LIMIT).ok();
    assert!(
        done.stderr.contains("changed since the last run") && done.stderr.contains("afresh"),
        "{}",
        done.stderr
    );
    assert!(!done.stderr.contains("resuming"), "{}", done.stderr);
    let url = done.url();
    assert_ne!(url, stale);
    assert_uploaded(&env, &url, &new_sha);
    assert_eq!(
        head_status(&stale),
        404,
        "the stale server upload was deleted"
    );
}

#[test]
fn file_changed_during_the_upload_exits_6() {
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(4_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let len = 8 * MIB;
    let (f, _) = env.file("f", len, 12);
    let endpoint = proxy.url("/files/");
    let mut run = env.upload(&[&f], &endpoint, &[]);
    wait_forwarded(&proxy, 2 * MIB, &mut run);
    // Same size, one byte near the end changed.
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.write_all_at(b"\xff\x00\xff", len - 10).unwrap();
    drop(file);
    let done = run.wait(RUN_LIMIT).code(6);
    assert!(done.stdout.is_empty(), "{done:#?}");
    assert!(
        done.stderr.contains("changed during the upload"),
        "{}",
        done.stderr
    );

    // Running again uploads the file as it is now.
    let now_sha = sha256_file(&f);
    proxy.set(Faults::default());
    let done = env.upload(&[&f], &endpoint, &[]).wait(RUN_LIMIT).ok();
    assert!(done.stderr.contains("afresh"), "{}", done.stderr);
    assert_uploaded(&env, &done.url(), &now_sha);
}

/// A file that shrinks mid-upload fails the reads of it: that is a change (exit 6), not a
/// network error to retry, with or without per-request checksums.
#[test]
fn file_truncated_during_the_upload_exits_6() {
    let server = Server::start(&["--sync", "none"]);
    let env = Env::new();
    for (i, checksum) in ["auto", "none"].into_iter().enumerate() {
        let (f, _) = env.file(&format!("f{i}"), 8 * MIB, 22 + i as u64);
        let args = [
            "--limit-rate",
            "4M",
            "--chunk-size",
            "1M",
            "--checksum",
            checksum,
        ];
        let mut run = env.upload(&[&f], &server.files_url, &args);
        wait_committed(&env, 2 * MIB, &mut run);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(3 * MIB)
            .unwrap();
        let done = run.wait(Duration::from_secs(30)).code(6);
        assert!(
            done.stderr.contains("changed during the upload"),
            "--checksum {checksum}: {}",
            done.stderr
        );
        assert!(done.elapsed < Duration::from_secs(20), "{done:#?}");
        // Clean up for the next round (the record stays for a re-run).
        env.run(["forget", f.to_str().unwrap()]).ok();
    }
}

// -------------------------------------------------------- status / forget ----

#[test]
fn status_lists_and_forget_deletes() {
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(4_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let len = 16 * MIB;
    let (f, _) = env.file("f", len, 13);
    let (g, _) = env.file("g", len, 14);
    let endpoint = proxy.url("/files/");
    for file in [&f, &g] {
        let before = proxy.forwarded.load(Ordering::Relaxed);
        let mut run = env.upload(&[file], &endpoint, &[]);
        wait_forwarded(&proxy, before + MIB, &mut run);
        run.kill9();
    }
    let records = env.records();
    assert_eq!(records.len(), 2);
    let url_of = |p: &Path| {
        let src = std::fs::canonicalize(p).unwrap();
        records
            .iter()
            .find(|r| r["source"].as_str() == src.to_str())
            .map(|r| {
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["parts"][0]["url"].as_str().unwrap().to_string(),
                )
            })
            .unwrap()
    };
    let (key_f, url_f) = url_of(&f);
    let (key_g, url_g) = url_of(&g);

    let status = env.run(["status"]).ok();
    let lines: Vec<&str> = status.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{status:#?}");
    for (key, url, p) in [(&key_f, &url_f, &f), (&key_g, &url_g, &g)] {
        let line = lines.iter().find(|l| l.contains(key.as_str())).unwrap();
        assert!(line.contains(url.as_str()), "{line}");
        assert!(line.contains(&len.to_string()), "{line}");
        assert!(
            line.contains(p.file_name().unwrap().to_str().unwrap()),
            "{line}"
        );
    }
    let status = env.run(["status", "--json"]).ok();
    let objs = status.json();
    assert_eq!(objs.len(), 2, "{status:#?}");
    for o in &objs {
        assert_eq!(o["kind"], "upload");
        assert_eq!(o["bytes"], len);
        assert_eq!(o["endpoint"].as_str(), Some(endpoint.as_str()));
        let want = if o["key"] == key_f.as_str() {
            &url_f
        } else {
            &url_g
        };
        assert_eq!(o["urls"], serde_json::json!([want]), "{o}");
    }

    // Forget one by path, the other by key: both server-side uploads are deleted.
    assert_eq!(head_status(&url_f), 200);
    let done = env.run(["forget", f.to_str().unwrap()]).ok();
    assert!(done.stderr.contains(&url_f), "{done:#?}");
    assert_eq!(head_status(&url_f), 404);
    assert_eq!(env.records().len(), 1);
    let done = env.run(["forget", &key_g]).ok();
    assert!(done.stderr.contains(&url_g), "{done:#?}");
    assert_eq!(head_status(&url_g), 404);

    let status = env.run(["status"]).ok();
    assert!(status.stdout.is_empty(), "{status:#?}");
    assert!(status.stderr.contains("no unfinished transfers"));
    assert!(env.run(["status", "--json"]).ok().stdout.is_empty());
    env.run(["forget", f.to_str().unwrap()]).code(2);
}

// --------------------------------------------------------------- checksums ----

#[test]
fn corrupted_bytes_are_caught_by_the_checksum_and_resent() {
    let (proxy, done) = upload_through(
        Faults {
            // Inside the first PATCH body (the requests before it are a few hundred bytes).
            corrupt_at: Some(3 * MIB),
            ..Faults::default()
        },
        8 * MIB,
        &[],
    );
    assert_eq!(
        proxy.corrupted.load(Ordering::Relaxed),
        1,
        "a byte was flipped"
    );
    assert!(
        done.stderr.contains("460"),
        "the server refused the checksum: {}",
        done.stderr
    );
}

#[test]
fn without_checksums_corruption_fails_verification_exit_5() {
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            corrupt_at: Some(3 * MIB),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", 8 * MIB, 15);
    let done = env
        .upload(&[&f], &proxy.url("/files/"), &["--checksum", "none"])
        .wait(RUN_LIMIT)
        .code(5);
    assert_eq!(proxy.corrupted.load(Ordering::Relaxed), 1);
    assert!(done.stdout.is_empty(), "{done:#?}");
    assert_ne!(get_sha256(&env.saved_url()), sha);
    // Against ferry serve the whole-file check is CRC-64/NVME.
    let stored = get_crc64nvme(&env.saved_url());
    let sha = format!("{:016x}", crc64nvme(&std::fs::read(&f).unwrap()));
    assert_ne!(stored, sha);
    assert!(
        done.stderr.contains(&stored) && done.stderr.contains(&sha),
        "names both digests ({stored} stored, {sha} local): {}",
        done.stderr
    );
}

/// Parallel streams with verification off: the whole-file hash reader that runs beside the
/// streams has nothing to do and must not hold the upload up (it once re-read the file forever).
#[test]
fn parallel_streams_without_verification_complete() {
    let server = Server::start(&["--sync", "none"]);
    let env = Env::new();
    let (f, sha) = env.file("f", 40 * MIB, 31);
    let done = env
        .upload(
            &[&f],
            &server.files_url,
            &["-j", "4", "--no-verify", "--checksum", "none", "--json"],
        )
        .wait(RUN_LIMIT)
        .ok();
    let o = &done.json()[0];
    assert_eq!(o["verified"], false, "{o}");
    assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
}

// ----------------------------------------------------------------- Ctrl-C ----

#[test]
fn ctrl_c_stops_quickly_and_a_rerun_resumes() {
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(4_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", 16 * MIB, 16);
    let endpoint = proxy.url("/files/");
    // One stream: the proxy paces each connection, and the interrupt must land mid-file.
    let mut run = env.upload(&[&f], &endpoint, &["-j", "1"]);
    wait_committed(&env, 2 * MIB, &mut run);
    let sent = Instant::now();
    run.signal("INT");
    let done = run.wait(RUN_LIMIT).code(130);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        sent.elapsed()
    );
    assert!(
        done.stderr.contains("interrupted")
            && done.stderr.contains("run the same command again to resume"),
        "{}",
        done.stderr
    );
    assert!(done.stdout.is_empty());
    assert_eq!(env.records().len(), 1, "resumable state kept");

    proxy.set(Faults::default());
    let done = env.upload(&[&f], &endpoint, &[]).wait(RUN_LIMIT).ok();
    assert!(done.stderr.contains("resuming"), "{}", done.stderr);
    assert_uploaded(&env, &done.url(), &sha);
}

/// Ctrl-C while a request hangs (a server that accepts connections but never answers) still
/// stops at once, rather than after the stall timeout.
#[test]
fn ctrl_c_while_the_server_does_not_answer() {
    // Bound but never accepted: connections complete in the backlog, requests go unanswered.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/files/", hole.local_addr().unwrap());
    let env = Env::new();
    let (f, _) = env.file("f", MIB, 24);
    let run = env.upload(&[&f], &url, &[]);
    // Long enough for the client to be waiting on its first request.
    std::thread::sleep(Duration::from_millis(1500));
    let sent = Instant::now();
    run.signal("INT");
    let done = run.wait(RUN_LIMIT).code(130);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "stopped {:?} after Ctrl-C: {done:#?}",
        sent.elapsed()
    );
    assert!(done.stderr.contains("interrupted"), "{}", done.stderr);
    drop(hole);
}

// ---------------------------------------------------------------- interop ----

/// A third-party server process, SIGKILLed and reaped on drop.
struct ThirdParty {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl ThirdParty {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ThirdParty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// @tus/server on an ephemeral port storing into `dir`; returns it and its endpoint.
fn start_tus_node_server(dir: &Path, log: PathBuf) -> (ThirdParty, String) {
    let node_dir = std::env::var_os("FERRY_TEST_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/interop"));
    let script = node_dir.join("tus_node_server.mjs");
    let pkg = node_dir.join("node_modules/@tus/server/package.json");
    assert!(
        script.is_file() && pkg.is_file(),
        "@tus/server driver not found ({} / {}); {SETUP_HINT}",
        script.display(),
        pkg.display()
    );
    let mut child = Command::new("node")
        .arg(&script)
        .args(["--port", "0", "--dir"])
        .arg(dir)
        // Our end of its stdin stays open as long as the child handle lives.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn node: {e}; {SETUP_HINT}"));
    let stdout = child.stdout.take().unwrap();
    let server = ThirdParty {
        child,
        name: "@tus/server",
        log,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("@tus/server did not start: {}", server.log()));
    let base = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected {line:?}"));
    (server, format!("{base}/files"))
}

#[test]
fn interop_tus_node_server() {
    let env = Env::new();
    let dir = env.path("tus-node-data");
    let (server, endpoint) = start_tus_node_server(&dir, env.path("tus-node.log"));
    let (f, sha) = env.file("f", 20 * MIB + 7, 17);
    let done = env
        .upload(&[&f], &endpoint, &["--json"])
        .wait(RUN_LIMIT)
        .ok();
    assert!(
        done.stderr.contains("not verified"),
        "says the result was not verified: {}",
        done.stderr
    );
    let o = &done.json()[0];
    assert_eq!(o["verified"], false);
    assert_reported_digest(o, &f);
    let url = o["url"].as_str().unwrap();
    let id = url.rsplit('/').next().unwrap();
    assert_eq!(
        sha256_file(&dir.join(id)),
        sha,
        "stored bytes; server log: {}",
        server.log()
    );
    assert!(env.records().is_empty());

    // Resuming against it: connections cut every 3 MiB.
    let proxy = Proxy::start(
        url.trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap(),
        Faults {
            cut_after: Some(3 * MIB),
            ..Faults::default()
        },
    );
    let (g, sha_g) = env.file("g", 10 * MIB, 18);
    let done = env
        .upload(&[&g], &proxy.url("/files"), &[])
        .wait(RUN_LIMIT)
        .ok();
    let id = done.url().rsplit('/').next().unwrap().to_string();
    assert_eq!(sha256_file(&dir.join(id)), sha_g, "{}", server.log());
    assert!(proxy.connections.load(Ordering::Relaxed) >= 4);
    drop(server);
}

/// The rustus binary: `FERRY_TEST_RUSTUS`, or the one `scripts/setup-test-deps.sh` installs.
fn rustus_bin() -> PathBuf {
    let bin = std::env::var_os("FERRY_TEST_RUSTUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/interop/.rustus/bin/rustus"));
    assert!(
        bin.is_file(),
        "rustus not found at {}; {SETUP_HINT}",
        bin.display()
    );
    bin
}

/// rustus with its defaults (notably the 256 KiB body limit) on a free port. (The port is
/// picked by binding and releasing it; if someone takes it meanwhile, rustus exits and another
/// port is tried.)
fn start_rustus(data: &Path, log: PathBuf) -> (ThirdParty, String) {
    let bin = rustus_bin();
    std::fs::create_dir_all(data).unwrap();
    for _ in 0..3 {
        let port = free_port();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(data)
            .arg("--info-dir")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}; {SETUP_HINT}", bin.display()));
        let mut server = ThirdParty {
            child,
            name: "rustus",
            log: log.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if server.child.try_wait().unwrap().is_some() {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (server, format!("http://127.0.0.1:{port}/files/"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!(
        "rustus did not start; its stderr: {}",
        std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
    );
}

#[test]
fn interop_rustus_body_limit_learned_from_413() {
    const LEN: u64 = 6 * MIB + 5;
    let env = Env::new();
    let data = env.path("rustus-data");
    // Direct, not through the test proxy: rustus answers an oversized PATCH with an early 413
    // and closes, and the proxy's teardown would turn that into a reset that hides the 413.
    let (server, endpoint) = start_rustus(&data, env.path("rustus.log"));
    let (f, sha) = env.file("f", LEN, 19);
    let done = env
        .upload(&[&f], &endpoint, &["--json"])
        .wait(RUN_LIMIT)
        .ok();
    let o = &done.json()[0];
    assert_eq!(
        o["sha256"].as_str(),
        Some(sha.as_str()),
        "rustus knows no BLAKE3"
    );
    assert_eq!(o["verified"], false, "rustus exposes no Repr-Digest");
    assert!(done.stderr.contains("not verified"), "{}", done.stderr);
    let url = o["url"].as_str().unwrap();
    let id = url.trim_end_matches('/').rsplit('/').next().unwrap();
    assert_eq!(
        sha256_file(&data.join(id)),
        sha,
        "{} stored the bytes; its log: {}",
        server.name,
        server.log()
    );
    assert!(env.records().is_empty());
    // No hang: a connection left open after a 413 that the client reused would cost a whole
    // stall timeout (30 s) per refused size.
    assert!(done.elapsed < Duration::from_secs(25), "{done:#?}");
    // The limit is learned, not rediscovered: halving from the first request reaches 256 KiB
    // in a handful of refusals (8 MiB -> 128 KiB is 6), where a client that forgot it would
    // be refused about once per accepted request (LEN / 256 KiB = 24).
    let log = server.log();
    let patches = |status: &str| {
        log.lines()
            .filter(|l| l.contains("\"PATCH /files/") && l.contains(&format!("\"{status}\"")))
            .count()
    };
    let (refused, accepted) = (patches("413"), patches("204"));
    assert!(
        accepted as u64 >= LEN.div_ceil(256 * KIB),
        "{accepted} accepted; log:\n{log}"
    );
    assert!(refused <= 8, "{refused} refused; log:\n{log}");
}
