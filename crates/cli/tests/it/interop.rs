//! Interop: real third-party tus clients (tus-js-client and tuspy, driven by the scripts in
//! `tests/interop/`) uploading 100 MiB files to a real `ferry serve` (default options, i.e.
//! `--sync always`), checked byte for byte with a GET of the finished upload; tus-js-client in
//! its IETF draft modes (`ietf`); `ferry upload` against @tus/server (npm) and rustus
//! (crates.io) (`servers`).
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

/// `FERRY_TEST_PYTHON`, or `<repo>/tests/interop/.venv/bin/python` (with `requests`).
pub(crate) fn python() -> PathBuf {
    let p = std::env::var_os("FERRY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/interop/.venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run `bash scripts/setup-test-deps.sh`",
        p.display()
    );
    p
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

/// The same upload into `ferry serve --store s3://…` (SeaweedFS): tus-js-client's 1 MiB
/// chunks are each staged, and parts are assembled from the staged pieces.
fn full_upload_to_s3(client: Client, args: &[&str], seed: u64) {
    client.command();
    let tmp = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(tmp.path(), "source.bin", SIZE, seed);
    crate::s3::ensure_bucket();
    let server = crate::s3::serve_s3(&crate::s3::fresh_store());
    let (url, _) = upload_ok(client, &server, &server.files_url, &file, args);
    assert_stored(&server, &url, &sha);
}

#[test]
fn tus_js_1mib_chunks_to_s3() {
    full_upload_to_s3(Client::TusJs, &["--chunk-size", "1048576"], 0x1011);
}

#[test]
fn tuspy_8mib_chunks_to_s3() {
    full_upload_to_s3(Client::Tuspy, &["--chunk-size", CHUNK], 0x1013);
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

/// Behind nginx (which sends the upstream's address as `Host`), tus-js-client's parallel
/// upload goes through the proxy from start to end: every `Location` resolves against the
/// proxy's URL, and the final names its parts by the proxy's URLs. Without `--public-url` the
/// server cannot know that name; with one, the parts' URLs match it.
#[test]
fn tus_js_parallel_through_a_host_rewriting_proxy() {
    const SIZE: usize = 8 * MIB;
    let client = Client::TusJs;
    client.command();
    let tmp = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(tmp.path(), "source.bin", SIZE, 0x3002);
    for with_public_url in [false, true] {
        // The proxy's port is only known once it runs: start the server behind it after.
        let mut server = Server::start(&[]);
        let proxy = crate::support::download::Nginx::proxy_to(server.addr);
        let public = format!("http://{}", proxy.addr);
        if with_public_url {
            let addr = server.addr.to_string();
            drop(server);
            server = Server::start(&["--listen", &addr, "--public-url", &public]);
        }
        let endpoint = format!("http://{}/files/", proxy.addr);
        let out = Driver::spawn(client, &endpoint, &file, &["--parallel", "4"])
            .finish(Instant::now() + RUN_LIMIT);
        assert!(
            out.status.success(),
            "public URL {with_public_url}: upload failed ({}); driver stderr:\n{}\n--- server log:\n{}",
            out.status,
            out.stderr.join("\n"),
            server.log()
        );
        let url = out.stdout.trim().to_string();
        assert!(
            url.starts_with(&endpoint),
            "public URL {with_public_url}: upload URL {url:?}"
        );
        assert_eq!(
            get_sha256(&server.rebase(&url)),
            sha,
            "public URL {with_public_url}"
        );
        let resp = client_head(&url);
        let concat = resp.headers()["upload-concat"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(concat.split(' ').count(), 4, "{concat}");
    }
}

fn client_head(url: &str) -> reqwest::blocking::Response {
    client()
        .head(url)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .expect("HEAD")
}

/// tus-js-client in its IETF draft modes (drafts 03 and 05): whole files, small chunks, killed
/// half-way and resumed.
mod ietf {
    use super::{Client, Driver, parse_progress};
    use crate::support::ietf::*;
    use crate::support::proxy::{Faults, Proxy};
    use crate::support::*;
    use std::time::{Duration, Instant};

    const JS_SIZE: usize = 20 * MIB;
    const JS_LIMIT: Duration = Duration::from_secs(120);

    fn js_upload(
        server: &Server,
        endpoint: &str,
        file: &std::path::Path,
        args: &[&str],
    ) -> (String, usize) {
        let out =
            Driver::spawn(Client::TusJs, endpoint, file, args).finish(Instant::now() + JS_LIMIT);
        assert!(
            out.status.success(),
            "tus-js-client failed ({}):\n{}\n--- server log:\n{}",
            out.status,
            out.stderr.join("\n"),
            server.log()
        );
        assert_eq!(
            out.progress().last().copied(),
            Some((JS_SIZE as u64, JS_SIZE as u64))
        );
        let chunks = out
            .stderr
            .iter()
            .filter(|l| l.starts_with("chunk "))
            .count();
        (out.stdout.trim().to_string(), chunks)
    }

    /// Runs tus-js-client with `--protocol protocol`; returns the server, its log and the number
    /// of acknowledged requests that carried data (`chunk` lines of the driver).
    fn js_run(protocol: &str, extra: &[&str], seed: u64) -> (Server, String, usize) {
        Client::TusJs.command();
        let tmp = tempfile::tempdir().unwrap();
        let (file, sha) = random_file(tmp.path(), "source.bin", JS_SIZE, seed);
        let server = Server::start(&[]);
        let mut args = vec!["--protocol", protocol];
        args.extend_from_slice(extra);
        let (url, chunks) = js_upload(&server, &server.files_url, &file, &args);
        assert_eq!(get_sha256(&url), sha, "{protocol}: stored bytes differ");
        let log = server.log();
        (server, log, chunks)
    }

    #[test]
    fn tus_js_ietf_draft_03_whole_file() {
        let (_s, log, chunks) = js_run("ietf-draft-03", &[], 0x3001);
        assert!(log.contains("interop=5"), "spoke interop 5:\n{log}");
        assert_eq!(chunks, 1, "one PATCH");
    }

    #[test]
    fn tus_js_ietf_draft_05_whole_file() {
        let (_s, log, _) = js_run("ietf-draft-05", &[], 0x3002);
        assert!(log.contains("interop=6"), "spoke interop 6:\n{log}");
    }

    #[test]
    fn tus_js_ietf_draft_05_small_chunks() {
        let (_s, _, chunks) = js_run("ietf-draft-05", &["--chunk-size", "1048576"], 0x3003);
        assert_eq!(chunks, JS_SIZE / MIB, "one PATCH per MiB");
    }

    #[test]
    fn tus_js_ietf_draft_03_small_chunks() {
        let (_s, _, chunks) = js_run("ietf-draft-03", &["--chunk-size", "3000000"], 0x3004);
        assert_eq!(chunks, JS_SIZE.div_ceil(3_000_000), "one PATCH per chunk");
    }

    /// Rate-capped upload, driver SIGKILLed half-way, re-run with the same URL storage: it resumes
    /// the same upload from the server's offset and the result is byte-exact.
    #[test]
    fn tus_js_ietf_draft_05_killed_half_way_resumes() {
        Client::TusJs.command();
        let tmp = tempfile::tempdir().unwrap();
        let (file, sha) = random_file(tmp.path(), "source.bin", JS_SIZE, 0x3005);
        let storage = tmp.path().join("url-storage.json");
        let storage_arg = storage.display().to_string();
        let args = [
            "--protocol",
            "ietf-draft-05",
            "--chunk-size",
            "2097152",
            "--url-storage",
            &storage_arg,
        ];
        let server = Server::start(&[]);
        let proxy = Proxy::start(
            server.addr,
            Faults {
                rate: Some(5_000_000),
                ..Faults::default()
            },
        );
        let endpoint = proxy.url("/files/");
        let deadline = Instant::now() + JS_LIMIT;
        let mut first = Driver::spawn(Client::TusJs, &endpoint, &file, &args);
        let mut url = None;
        loop {
            let Some(line) = first.next_line(deadline) else {
                panic!("driver ended early:\n{}", first.log.join("\n"));
            };
            if let Some(u) = line.strip_prefix("upload-url ") {
                url = Some(u.trim().to_string());
            }
            if let Some((sent, total)) = parse_progress(&line)
                && sent * 2 >= total
            {
                first.kill();
                assert!(sent < total, "finished before the kill");
                break;
            }
        }
        drop(first);
        let url = url.expect("upload-url line");
        let direct = server.rebase(&url);
        let p = path_of(&direct);
        let offset = head_offset_of(server.addr, "6", &p);
        assert!(offset > 0 && offset < JS_SIZE as u64, "offset {offset}");

        proxy.set(Faults::default());
        let out =
            Driver::spawn(Client::TusJs, &endpoint, &file, &args).finish(Instant::now() + JS_LIMIT);
        assert!(
            out.status.success(),
            "re-run failed:\n{}",
            out.stderr.join("\n")
        );
        assert!(
            out.stderr
                .iter()
                .any(|l| l.strip_prefix("resume ").map(str::trim) == Some(url.as_str())),
            "did not resume {url}:\n{}",
            out.stderr.join("\n")
        );
        assert_eq!(out.stdout.trim(), url);
        let first_progress = out.progress().first().map(|p| p.0);
        assert!(
            first_progress.is_some_and(|s| s >= offset),
            "re-run started at {first_progress:?}, server had {offset}"
        );
        assert_eq!(head_offset_of(server.addr, "6", &p), JS_SIZE as u64);
        assert_eq!(get_sha256(&direct), sha);
    }
}

/// `ferry upload` against third-party tus servers (@tus/server from npm, rustus from crates.io).
mod servers {
    use crate::support::proxy::{Faults, Proxy};
    use crate::support::upload::*;
    use crate::support::*;
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

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

    /// Standard input, its length deferred, to @tus/server (creation-defer-length).
    #[test]
    fn standard_input_to_tus_node_server() {
        let env = Env::new();
        let dir = env.path("tus-node-data");
        let (server, endpoint) = start_tus_node_server(&dir, env.path("tus-node.log"));
        let (f, sha) = env.file("f", 5 * MIB + 3, 18);
        // The connection is cut in the last request, the one that carries Upload-Length:
        // what the server then holds decides whether the length goes again.
        let proxy = Proxy::start(
            endpoint
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap(),
            // Counted over every connection: the client may open a new one for the last
            // request (a cut scheduled on connection 0 alone then never happened).
            Faults {
                cut_at_total: Some(4 * MIB + MIB / 2),
                ..Faults::default()
            },
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; cat '{}' | '{}' upload --state-dir '{}' --chunk-size 4M - '{}'",
                f.display(),
                ferry_bin().display(),
                env.path("state").display(),
                proxy.url("/files")
            ))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}; server: {}", server.log());
        assert!(stderr.contains("retrying"), "{stderr}");
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let id = url.rsplit('/').next().unwrap();
        assert_eq!(
            sha256_file(&dir.join(id)),
            sha,
            "server log: {}",
            server.log()
        );
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
}
