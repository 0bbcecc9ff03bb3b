//! Interop: real third-party tus clients (tus-js-client and tuspy, driven by the scripts in
//! `tests/interop/`) uploading 100 MiB files to a real `ferry serve` (default options, i.e.
//! `--sync always`), checked byte for byte with a GET of the finished upload.
//!
//! The clients are installed by `scripts/setup-test-deps.sh`; `scripts/test.sh` exports
//! `FERRY_TEST_PYTHON` and `FERRY_TEST_NODE_DIR`. When unset they default to
//! `<repo>/tests/interop/.venv/bin/python` and `<repo>/tests/interop`. Missing dependencies
//! fail the test (never a silent skip).
//!
//! Every driver process is owned by a guard that SIGKILLs and reaps it on drop, and every wait
//! on a driver is bounded.

use crate::support::proxy::{Faults, Proxy};
use crate::support::*;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// Size of every uploaded file.
const SIZE: usize = 100 * MIB;
/// `--chunk-size` for the chunked runs.
const CHUNK: &str = "8388608";
/// Upper bound for one driver run (a 100 MiB upload takes a few seconds even in a debug build).
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// Upload rate cap through the proxy for the kill-and-resume runs, so that the first run lasts
/// a few seconds and can be killed half-way.
const RESUME_RATE: u64 = 40_000_000;

const SETUP_HINT: &str = "run `bash scripts/setup-test-deps.sh` (or scripts/test.sh) to install \
                          the interop test dependencies";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `FERRY_TEST_NODE_DIR`, or `<repo>/tests/interop`.
fn node_dir() -> PathBuf {
    std::env::var_os("FERRY_TEST_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/interop"))
}

/// `FERRY_TEST_PYTHON`, or `<repo>/tests/interop/.venv/bin/python`.
fn python() -> PathBuf {
    std::env::var_os("FERRY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/interop/.venv/bin/python"))
}

/// Which third-party client.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Client {
    /// tus-js-client (Node).
    TusJs,
    Tuspy,
}

impl Client {
    /// The driver command (program + script), after checking that its dependencies exist.
    pub(crate) fn command(self) -> Command {
        match self {
            Client::TusJs => {
                let dir = node_dir();
                let script = dir.join("tus_js_upload.mjs");
                let pkg = dir.join("node_modules/tus-js-client/package.json");
                assert!(
                    script.is_file() && pkg.is_file(),
                    "tus-js-client driver not found ({} / {}); {SETUP_HINT}",
                    script.display(),
                    pkg.display()
                );
                let node_ok = Command::new("node")
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(node_ok, "`node` is not runnable; {SETUP_HINT}");
                let mut c = Command::new("node");
                c.arg(script);
                c
            }
            Client::Tuspy => {
                let py = python();
                let script = repo_root().join("tests/interop/tuspy_upload.py");
                assert!(
                    py.is_file(),
                    "tuspy venv interpreter not found at {}; {SETUP_HINT}",
                    py.display()
                );
                let import_ok = Command::new(&py)
                    .args(["-c", "import tusclient.client"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(
                    import_ok,
                    "tuspy is not importable with {}; {SETUP_HINT}",
                    py.display()
                );
                let mut c = Command::new(py);
                c.arg(script);
                c
            }
        }
    }
}

/// A running driver. SIGKILLed and reaped on drop, so no path leaves it behind.
pub(crate) struct Driver {
    client: Client,
    child: Option<Child>,
    stderr_lines: Receiver<String>,
    stdout: Receiver<String>,
    /// Every stderr line read so far.
    pub(crate) log: Vec<String>,
}

/// A finished driver run.
pub(crate) struct Outcome {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: Vec<String>,
}

impl Outcome {
    /// `progress A B` lines, in order.
    pub(crate) fn progress(&self) -> Vec<(u64, u64)> {
        self.stderr
            .iter()
            .filter_map(|l| parse_progress(l))
            .collect()
    }
}

pub(crate) fn parse_progress(line: &str) -> Option<(u64, u64)> {
    let mut it = line.strip_prefix("progress ")?.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

impl Driver {
    pub(crate) fn spawn(client: Client, endpoint: &str, file: &Path, args: &[&str]) -> Driver {
        let mut cmd = client.command();
        cmd.arg("--endpoint")
            .arg(endpoint)
            .arg("--file")
            .arg(file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {client:?} driver: {e}; {SETUP_HINT}"));
        let (line_tx, stderr_lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (out_tx, stdout) = mpsc::channel();
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            let _ = out_tx.send(s);
        });
        Driver {
            client,
            child: Some(child),
            stderr_lines,
            stdout,
            log: Vec::new(),
        }
    }

    /// Next stderr line, or None when stderr closed. Panics (killing the driver) at `deadline`.
    pub(crate) fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.stderr_lines.recv_timeout(wait) {
            Ok(line) => {
                self.log.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                panic!(
                    "{:?} driver timed out; stderr so far:\n{}",
                    self.client,
                    self.log.join("\n")
                );
            }
        }
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded by `deadline`) for the driver to exit; returns its output.
    pub(crate) fn finish(mut self, deadline: Instant) -> Outcome {
        while self.next_line(deadline).is_some() {}
        let wait = deadline.saturating_duration_since(Instant::now());
        let stdout = match self.stdout.recv_timeout(wait) {
            Ok(s) => s,
            Err(_) => {
                self.kill();
                panic!(
                    "{:?} driver did not close stdout; stderr:\n{}",
                    self.client,
                    self.log.join("\n")
                );
            }
        };
        let mut child = self.child.take().unwrap();
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{:?} driver did not exit; stderr:\n{}",
                    self.client,
                    self.log.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Outcome {
            status,
            stdout,
            stderr: std::mem::take(&mut self.log),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a driver to completion and asserts it succeeded; returns (upload URL, outcome).
fn upload_ok(
    client: Client,
    server: &Server,
    endpoint: &str,
    file: &Path,
    args: &[&str],
) -> (String, Outcome) {
    let out = Driver::spawn(client, endpoint, file, args).finish(Instant::now() + RUN_LIMIT);
    assert!(
        out.status.success(),
        "{client:?} upload failed ({}); driver stderr:\n{}\n--- server log:\n{}",
        out.status,
        out.stderr.join("\n"),
        server.log()
    );
    let url = out.stdout.trim().to_string();
    assert!(
        url.starts_with("http://"),
        "{client:?}: no upload URL on stdout: {:?}",
        out.stdout
    );
    let last = out.progress().last().copied();
    assert_eq!(
        last,
        Some((SIZE as u64, SIZE as u64)),
        "{client:?}: final progress line"
    );
    (url, out)
}

/// Asserts the finished upload (fetched from the server directly) hashes to `sha`.
fn assert_stored(server: &Server, url: &str, sha: &str) {
    let direct = server.rebase(url);
    assert_eq!(
        head_offset(&direct),
        Some(SIZE as u64),
        "HEAD offset of {direct}"
    );
    assert_eq!(
        get_sha256(&direct),
        sha,
        "GET {direct} differs from the source; server log:\n{}",
        server.log()
    );
}

/// One full upload of a fresh 100 MiB file, straight to the server.
fn full_upload(client: Client, args: &[&str], seed: u64) {
    client.command(); // fail fast (before writing 100 MiB) when the client is missing
    let tmp = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(tmp.path(), "source.bin", SIZE, seed);
    let server = Server::start(&[]);
    let (url, _) = upload_ok(client, &server, &server.files_url, &file, args);
    assert_stored(&server, &url, &sha);
}

#[test]
fn tus_js_default_options() {
    full_upload(Client::TusJs, &[], 0x1001);
}

#[test]
fn tus_js_8mib_chunks() {
    full_upload(Client::TusJs, &["--chunk-size", CHUNK], 0x1002);
}

/// tuspy with its default options except the chunk size: tuspy's default chunk size
/// (`sys.maxsize`, one PATCH) reads the whole file into memory, so 8 MiB is given explicitly.
#[test]
fn tuspy_8mib_chunks() {
    full_upload(Client::Tuspy, &["--chunk-size", CHUNK], 0x1003);
}

/// Without metadata tuspy still sends an empty `Upload-Metadata:` header, which a tus server
/// must accept.
#[test]
fn tuspy_no_metadata() {
    full_upload(
        Client::Tuspy,
        &["--chunk-size", CHUNK, "--no-metadata"],
        0x1004,
    );
}

/// Uploads through a rate-capped proxy, SIGKILLs the driver once it reports half the file,
/// re-runs it with the same `--url-storage` and checks that the re-run resumes the same upload
/// (stored URL, server offset and first progress line all above 0) and that the result is
/// byte-exact.
fn kill_and_resume(client: Client, seed: u64) {
    client.command(); // fail fast (before writing 100 MiB) when the client is missing
    let tmp = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(tmp.path(), "source.bin", SIZE, seed);
    let storage = tmp.path().join("url-storage.json");
    let storage_arg = storage.display().to_string();
    let args = ["--chunk-size", CHUNK, "--url-storage", &storage_arg];
    let server = Server::start(&[]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(RESUME_RATE),
            ..Faults::default()
        },
    );
    let endpoint = proxy.url("/files/");

    // First run: kill it once it reports half the file.
    let deadline = Instant::now() + RUN_LIMIT;
    let mut first = Driver::spawn(client, &endpoint, &file, &args);
    let mut url = None;
    let killed_at = loop {
        let Some(line) = first.next_line(deadline) else {
            panic!(
                "{client:?} driver ended before half-way; stderr:\n{}\n--- server log:\n{}",
                first.log.join("\n"),
                server.log()
            );
        };
        if let Some(u) = line.strip_prefix("upload-url ") {
            url = Some(u.trim().to_string());
        }
        if let Some((a, b)) = parse_progress(&line)
            && a * 2 >= b
        {
            first.kill();
            assert!(
                a < b,
                "{client:?} finished before it could be killed (rate cap too high?)"
            );
            break a;
        }
    };
    let first_log = first.log.join("\n");
    drop(first);
    let url = url.unwrap_or_else(|| panic!("{client:?}: no upload-url line:\n{first_log}"));

    // The server kept what arrived.
    let offset = head_offset(&server.rebase(&url)).expect("HEAD after kill");
    assert!(
        offset > 0 && offset < SIZE as u64,
        "{client:?}: server offset {offset} after killing the client at progress {killed_at}"
    );

    // Second run, unthrottled, same endpoint (tus-js-client fingerprints it) and storage.
    proxy.set(Faults::default());
    let (url2, out) = upload_ok(client, &server, &endpoint, &file, &args);
    let stderr = out.stderr.join("\n");
    assert!(
        out.stderr
            .iter()
            .any(|l| l.strip_prefix("resume ").map(str::trim) == Some(url.as_str())),
        "{client:?}: re-run did not resume {url}; stderr:\n{stderr}"
    );
    assert_eq!(url2, url, "{client:?}: re-run finished a different upload");
    let first_progress = out.progress().first().map(|p| p.0);
    eprintln!(
        "{client:?}: killed at progress {killed_at}, server offset {offset}, \
         re-run first progress {first_progress:?}"
    );
    assert!(
        first_progress.is_some_and(|a| a > 0 && a >= offset),
        "{client:?}: re-run started from {first_progress:?}, not from the server's offset \
         ({offset}); stderr:\n{stderr}"
    );
    assert_stored(&server, &url, &sha);
}

#[test]
fn tus_js_killed_half_way_resumes() {
    kill_and_resume(Client::TusJs, 0x2001);
}

#[test]
fn tuspy_killed_half_way_resumes() {
    kill_and_resume(Client::Tuspy, 0x2002);
}

/// tus-js-client with `parallelUploads: 4` splits the file into 4 partial uploads
/// (`Upload-Concat: partial`) sent at once, then creates the final upload naming the parts by
/// the ABSOLUTE URLs it got in `Location` (`Upload-Concat: final;http://... http://...`). The
/// final must be byte-exact and be a concatenation of 4 partials.
#[test]
fn tus_js_parallel_4_concatenates_200_mib() {
    const BIG: usize = 200 * MIB;
    let client = Client::TusJs;
    client.command(); // fail fast (before writing 200 MiB) when the client is missing
    let tmp = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(tmp.path(), "source.bin", BIG, 0x3001);
    let server = Server::start(&[]);
    let out = Driver::spawn(client, &server.files_url, &file, &["--parallel", "4"])
        .finish(Instant::now() + 2 * RUN_LIMIT);
    assert!(
        out.status.success(),
        "parallel upload failed ({}); driver stderr:\n{}\n--- server log:\n{}",
        out.status,
        out.stderr.join("\n"),
        server.log()
    );
    assert_eq!(
        out.progress().last().copied(),
        Some((BIG as u64, BIG as u64)),
        "final progress line"
    );
    let url = out.stdout.trim().to_string();
    assert!(url.starts_with(&server.files_url), "upload URL {url:?}");

    let resp = client_head(&url);
    assert_eq!(resp.status().as_u16(), 200, "HEAD {url}");
    let header = |r: &reqwest::blocking::Response, n: &str| {
        r.headers().get(n).map(|v| v.to_str().unwrap().to_string())
    };
    let concat = header(&resp, "upload-concat").expect("Upload-Concat on the final");
    let parts: Vec<&str> = concat
        .strip_prefix("final;")
        .unwrap_or_else(|| panic!("not a final upload: Upload-Concat {concat:?}"))
        .split(' ')
        .collect();
    assert_eq!(parts.len(), 4, "Upload-Concat {concat:?}");
    assert_eq!(header(&resp, "upload-offset"), Some(BIG.to_string()));
    assert_eq!(header(&resp, "upload-length"), Some(BIG.to_string()));
    let mut sum = 0u64;
    for p in &parts {
        let part_url = format!("http://{}{p}", server.addr);
        let r = client_head(&part_url);
        assert_eq!(r.status().as_u16(), 200, "HEAD part {part_url}");
        assert_eq!(header(&r, "upload-concat").as_deref(), Some("partial"));
        sum += header(&r, "upload-length").unwrap().parse::<u64>().unwrap();
    }
    assert_eq!(sum, BIG as u64, "parts add up to the file");
    assert_eq!(
        get_sha256(&url),
        sha,
        "GET of the final differs from the source; server log:\n{}",
        server.log()
    );
}

fn client_head(url: &str) -> reqwest::blocking::Response {
    client()
        .head(url)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .expect("HEAD")
}
