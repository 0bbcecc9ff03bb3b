//! Test support: real `ferry serve` processes on ephemeral ports, raw HTTP, tus helpers.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub mod balancer;
pub mod cluster;
pub mod download;
pub mod ietf;
pub mod netns;
pub mod pg;
pub mod proxy;
pub mod s3;
pub mod strace;
pub mod tus;
pub mod upload;

/// Path of the ferry binary built for these tests.
pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// With `FERRY_TEST_STORE=s3` (`scripts/test.sh` runs the protocol suites so, a second time),
/// a server started without `--store` keeps its data in a fresh prefix of the tests' bucket on
/// `FERRY_TEST_S3_ENDPOINT`: the same tests then check both stores. Restarts keep the prefix.
fn store_under_test(
    data_dir: &Path,
    mut args: Vec<String>,
    mut envs: Vec<(String, String)>,
) -> (Vec<String>, Vec<(String, String)>) {
    let s3 = std::env::var("FERRY_TEST_STORE").is_ok_and(|v| v == "s3");
    if !s3
        || args
            .iter()
            .any(|a| a == "--store" || a.starts_with("--store="))
    {
        return (args, envs);
    }
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let endpoint = std::env::var("FERRY_TEST_S3_ENDPOINT")
        .expect("FERRY_TEST_STORE=s3 needs FERRY_TEST_S3_ENDPOINT (scripts/seaweedfs.sh)");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let store = format!("s3://ferry-tests/suite-{}-{nanos}-{n}", std::process::id());
    static BUCKET: std::sync::Once = std::sync::Once::new();
    BUCKET.call_once(|| s3::ensure_test_bucket(&endpoint));
    let store_args = vec!["--store".into(), store, "--s3-endpoint".into(), endpoint];
    s3::remember(data_dir, &store_args);
    args.extend(store_args);
    for (k, v) in s3::CREDS {
        if !envs.iter().any(|(name, _)| name == k) {
            envs.push((k.into(), v.into()));
        }
    }
    (args, envs)
}

/// With `FERRY_TEST_META=postgres` (`scripts/test.sh` runs the suites so, on both stores), a
/// server started without `--meta` keeps its records in a schema of its own on
/// `FERRY_TEST_POSTGRES`; a later server on the same data directory gets the same schema.
fn meta_under_test(data_dir: &Path, mut args: Vec<String>) -> Vec<String> {
    if !pg::under_test()
        || args
            .iter()
            .any(|a| a == "--meta" || a.starts_with("--meta="))
    {
        return args;
    }
    args.extend(["--meta".into(), pg::meta_for(data_dir)]);
    args
}

/// A running `ferry serve`. Killed (and reaped) on drop; it also exits by itself when this
/// test process dies, because its stdin (our pipe) closes.
pub struct Server {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
    /// `http://addr{base}/files/`
    pub files_url: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    args: Vec<String>,
    /// Environment variables set for the server process only; restarts set them again.
    envs: Vec<(String, String)>,
    stderr_path: PathBuf,
}

impl Server {
    /// Starts a server on a fresh temp data dir with extra `args`.
    pub fn start(args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut s = Self::start_in(&data_dir, args);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data_dir` (kept by the caller).
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stderr_path = data_dir.with_extension(format!("stderr.{}", std::process::id()));
        Self::spawn(data_dir.to_path_buf(), args, None, stderr_path).expect("server starts")
    }

    /// Starts a server under a wrapper command (e.g. strace), given as program + args.
    pub fn start_wrapped(data_dir: &Path, args: &[&str], wrapper: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stderr_path = data_dir.with_extension("stderr");
        Self::spawn(
            data_dir.to_path_buf(),
            args,
            Some(wrapper.iter().map(|s| s.to_string()).collect()),
            stderr_path,
        )
        .expect("server starts")
    }

    /// Starts a server on a fresh temp data dir with extra `args` and environment variables
    /// (e.g. `FERRY_MAX_SIZE`) set for the server process only; restarts set them again.
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let stderr_path = data_dir.with_extension(format!("stderr.{}", std::process::id()));
        let mut s =
            Self::spawn_with_env(data_dir, args, None, stderr_path, envs).expect("server starts");
        s._tmp = Some(tmp);
        s
    }

    fn env_refs(&self) -> Vec<(&str, &str)> {
        self.envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// [`start_in`](Self::start_in) with environment variables for the server process only.
    pub fn start_in_with_env(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let args = args.iter().map(|s| s.to_string()).collect();
        let envs = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let stderr_path = data_dir.with_extension(format!("stderr.{}", std::process::id()));
        Self::spawn_with_env(data_dir.to_path_buf(), args, None, stderr_path, envs)
            .expect("server starts")
    }

    fn spawn(
        data_dir: PathBuf,
        args: Vec<String>,
        wrapper: Option<Vec<String>>,
        stderr_path: PathBuf,
    ) -> Result<Server, String> {
        Self::spawn_with_env(data_dir, args, wrapper, stderr_path, Vec::new())
    }

    fn spawn_with_env(
        data_dir: PathBuf,
        args: Vec<String>,
        wrapper: Option<Vec<String>>,
        stderr_path: PathBuf,
        envs: Vec<(String, String)>,
    ) -> Result<Server, String> {
        let (args, envs) = store_under_test(&data_dir, args, envs);
        let args = meta_under_test(&data_dir, args);
        let mut full: Vec<String> = vec!["serve".into()];
        if !args.iter().any(|a| a == "--listen") {
            full.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        full.extend([
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--exit-on-stdin-close".into(),
        ]);
        full.extend(args.iter().cloned());
        let mut cmd = match &wrapper {
            Some(w) => {
                let mut c = Command::new(&w[0]);
                c.args(&w[1..]).arg(ferry_bin()).args(&full);
                c
            }
            None => {
                let mut c = Command::new(ferry_bin());
                c.args(&full);
                c
            }
        };
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env_remove("FERRY_CONFIG")
            .envs(envs.clone())
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(format!("server did not start; stderr:\n{err}"));
            }
        };
        let files_url = line
            .strip_prefix("ferry listening on ")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?
            .to_string();
        let authority = files_url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .unwrap();
        let addr: SocketAddr = authority.parse().unwrap();
        let stdin = child.stdin.take();
        Ok(Server {
            child: Some(child),
            stdin,
            addr,
            files_url,
            data_dir,
            _tmp: None,
            args,
            envs,
            stderr_path,
        })
    }

    /// The S3 store (`--store`, `--s3-endpoint`) this server keeps its data in, if any.
    pub fn s3_store(&self) -> Option<(String, String)> {
        let after = |flag: &str| {
            let i = self.args.iter().position(|a| a == flag)?;
            self.args.get(i + 1).cloned()
        };
        Some((after("--store")?, after("--s3-endpoint")?))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The server's stderr so far (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGKILL, reaped.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stdin.take();
    }

    /// SIGTERM, then waits up to `limit` for exit; returns the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills (SIGKILL) and starts a new server on the same data dir and args; the new server
    /// has a new port.
    pub fn restart_after_kill(&mut self) {
        self.kill9();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut next = Self::start_in_with_env(&self.data_dir, &args, &self.env_refs());
        self.child = next.child.take();
        self.stdin = next.stdin.take();
        self.addr = next.addr;
        self.files_url = next.files_url.clone();
    }

    /// Kills (SIGKILL) and starts a new server on the same data dir, args and port, so URLs
    /// handed out before stay valid.
    pub fn restart_same_port_after_kill(&mut self) {
        self.kill9();
        let mut args: Vec<String> = self
            .args
            .iter()
            .filter(|a| !a.starts_with("--listen"))
            .cloned()
            .collect();
        args.extend(["--listen".into(), self.addr.to_string()]);
        let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut next = Self::start_in_with_env(&self.data_dir, &args_ref, &self.env_refs());
        self.child = next.child.take();
        self.stdin = next.stdin.take();
    }

    /// Same upload URL on the current port (after a restart).
    pub fn rebase(&self, upload_url: &str) -> String {
        let id = upload_url.rsplit('/').next().unwrap();
        format!("{}{}", self.files_url, id)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking HTTP client without a whole-request timeout but bounded connects.
/// The `--json` events of a run's stdout (whole lines only: a killed run may leave half a
/// line).
pub fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["version"] == 1 && v["event"].is_string())
        .collect()
}

/// The `file_done` events of a run's stdout, one per finished file.
pub fn files_done(stdout: &str) -> Vec<serde_json::Value> {
    events(stdout)
        .into_iter()
        .filter(|v| v["event"] == "file_done")
        .collect()
}

pub fn client() -> reqwest::blocking::Client {
    // reqwest is built with `rustls-no-provider` (for ferry-client): a process-wide crypto
    // provider must exist before any client is built, even for plain http. Installing it
    // again is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A `Location` value from a raw answer of the server at `addr`, as an absolute URL.
pub fn url_at(addr: SocketAddr, location: &str) -> String {
    if location.starts_with('/') {
        format!("http://{addr}{location}")
    } else {
        location.to_string()
    }
}

/// Creates a tus upload, returns its URL.
pub fn create(server: &Server, length: u64, metadata: Option<&str>) -> String {
    let mut req = client()
        .post(&server.files_url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", length.to_string());
    if let Some(m) = metadata {
        req = req.header("Upload-Metadata", m);
    }
    let resp = req.send().expect("POST");
    assert_eq!(resp.status().as_u16(), 201, "create: {:?}", resp.text());
    tus::location(&resp).unwrap()
}

/// PATCH `body` at `offset`; returns (status, Upload-Offset header if any).
pub fn patch(url: &str, offset: u64, body: Vec<u8>) -> (u16, Option<u64>) {
    let resp = client()
        .patch(url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", offset.to_string())
        .header("Content-Type", "application/offset+octet-stream")
        .body(body)
        .send()
        .expect("PATCH");
    let off = resp
        .headers()
        .get("upload-offset")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (resp.status().as_u16(), off)
}

/// HEAD offset (None if not 200).
pub fn head_offset(url: &str) -> Option<u64> {
    let resp = client()
        .head(url)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .ok()?;
    if resp.status().as_u16() != 200 {
        return None;
    }
    resp.headers()
        .get("upload-offset")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

/// CRC-64/NVME of `data`, from the `crc` crate (not the one ferry uses).
pub fn crc64nvme(data: &[u8]) -> u64 {
    crc::Crc::<u64>::new(&crc::CRC_64_NVME).checksum(data)
}

/// The `crc64nvme=:<base64>:` member of a `Repr-Digest` for `data` (8 bytes, big-endian).
pub fn crc64nvme_member(data: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "crc64nvme=:{}:",
        base64::engine::general_purpose::STANDARD.encode(crc64nvme(data).to_be_bytes())
    )
}

/// GET a finished upload: the CRC-64/NVME (hex) of what it returns.
pub fn get_crc64nvme(url: &str) -> String {
    let resp = client().get(url).send().expect("GET");
    assert_eq!(resp.status().as_u16(), 200, "GET {url}");
    format!("{:016x}", crc64nvme(&resp.bytes().expect("read body")))
}

pub fn get_sha256(url: &str) -> String {
    let mut resp = client().get(url).send().expect("GET");
    assert_eq!(resp.status().as_u16(), 200, "GET {url}");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = resp.read(&mut buf).expect("read body");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Checks the whole-file digest a `ferry upload --json` line reports against the file:
/// CRC-64/NVME (`"crc64nvme"`, against ferry's server), BLAKE3 (`"blake3"`) or SHA-256
/// (`"sha256"`, against servers that know nothing else).
pub fn assert_reported_digest(line: &serde_json::Value, path: &Path) {
    let data = std::fs::read(path).unwrap();
    match (
        line.get("crc64nvme"),
        line.get("blake3"),
        line.get("sha256"),
    ) {
        (Some(c), _, _) => assert_eq!(
            c.as_str(),
            Some(format!("{:016x}", crc64nvme(&data)).as_str()),
            "{line}"
        ),
        (None, Some(b), _) => assert_eq!(
            b.as_str(),
            Some(blake3::hash(&data).to_hex().as_str()),
            "{line}"
        ),
        (None, None, Some(s)) => {
            assert_eq!(s.as_str(), Some(sha256(&data).as_str()), "{line}")
        }
        (None, None, None) => panic!("no digest reported: {line}"),
    }
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Deterministic pseudo-random bytes (xorshift), cheap to generate in bulk.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a pseudo-random file of `len` bytes in `dir`; returns its path and sha256.
pub fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, String) {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let mut h = Sha256::new();
    let mut written = 0;
    let mut s = seed;
    while written < len {
        let n = (len - written).min(8 << 20);
        let chunk = random_bytes(n, s);
        s += 1;
        h.update(&chunk);
        f.write_all(&chunk).unwrap();
        written += n;
    }
    (path, hex::encode(h.finalize()))
}

/// Sends raw bytes on a fresh connection and reads the response until the server closes or
/// `limit` passes. Returns what was read (possibly empty).
pub fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(limit)).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // One response is enough when its headers say it has no body or a known one.
                if response_complete(&out) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let head = text[..end].to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + len
}

/// Status code of a raw response ("HTTP/1.1 204 ..."), 0 if none.
pub fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Value of a header in a raw response (case-insensitive name).
pub fn header_of(resp: &str, name: &str) -> Option<String> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Reads /proc/PID/status VmHWM in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// How long the raw-request helpers wait for an answer.
pub const RAW_LIMIT: Duration = Duration::from_secs(10);

/// One raw HTTP/1.1 request (`Connection: close`); header values are bytes so that anything can
/// be sent. `Content-Length` is added for POST/PATCH or a body unless `headers` has one.
pub fn request(
    method: &str,
    path: &str,
    addr: SocketAddr,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Vec<u8> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    let has_cl = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !has_cl && (!body.is_empty() || matches!(method, "POST" | "PATCH")) {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

/// Sends a raw request with text headers and returns the raw response.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> String {
    let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    raw(addr, &request(method, path, addr, &h, body), RAW_LIMIT)
}

/// A chunked request whose body is `chunks`, followed by `trailers` after the last chunk.
pub fn send_chunked(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
    trailers: &[(&str, &str)],
) -> String {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n"
    )
    .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    for c in chunks {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n");
    for (k, v) in trailers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    raw(addr, &req, RAW_LIMIT)
}

/// The body of a raw response.
pub fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A finished `ferry` client run.
#[derive(Debug)]
pub struct Ran {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// A child process SIGKILLed and reaped on drop (a panicking test leaves nothing behind).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `ferry ARGS --state-dir STATE` to the end, bounded by `limit` (killed and a panic with
/// its stderr past it). Output goes to files beside `state`.
pub fn run_ferry(args: &[&str], state: &Path, limit: Duration) -> Ran {
    std::fs::create_dir_all(state).unwrap();
    let out = state.with_extension("stdout");
    let err = state.with_extension("stderr");
    let started = Instant::now();
    let mut child = KillOnDrop(
        Command::new(ferry_bin())
            .args(args)
            .arg("--state-dir")
            .arg(state)
            .env_remove("FERRY_STATE_DIR")
            .env_remove("FERRY_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn ferry"),
    );
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("try_wait") {
            break st;
        }
        if started.elapsed() > limit {
            drop(child);
            panic!(
                "ferry {args:?} did not finish within {limit:?}; stderr:\n{}",
                read(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code: status.code(),
        stdout: read(&out),
        stderr: read(&err),
        elapsed: started.elapsed(),
    }
}

/// Runs `ferry fsck` on a data directory no server uses and fails unless it finds nothing.
pub fn assert_fsck_clean(data_dir: &Path) {
    let out = Command::new(ferry_bin())
        .args(["fsck", "--data-dir"])
        .arg(data_dir)
        .args(s3::store_of(data_dir).unwrap_or_default())
        .args(pg::meta_args_of(data_dir))
        .envs(s3::CREDS)
        .output()
        .expect("ferry fsck runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no problems"),
        "ferry fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ferry upload --limit-rate 1M --state-dir STATE ARGS` (paced, so that it cannot finish
/// first) until its record is on disk, then SIGKILLs it: an unfinished upload for a later run.
/// Its stderr goes to `STATE.killed.err`.
pub fn upload_then_kill(args: &[&str], state: &Path) {
    std::fs::create_dir_all(state).unwrap();
    let err = std::fs::File::create(state.with_extension("killed.err")).unwrap();
    let mut child = KillOnDrop(
        Command::new(ferry_bin())
            .args(["upload", "--limit-rate", "1M", "--state-dir"])
            .arg(state)
            .args(args)
            .env_remove("FERRY_STATE_DIR")
            .env_remove("FERRY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn ferry upload"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    // A record is a `.json` file; the temporary file written before it is not one yet.
    let saved = || {
        std::fs::read_dir(state.join("transfers")).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
    };
    while !saved() {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "ferry upload ended before saving a record"
        );
        assert!(Instant::now() < deadline, "no record within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the tests run as root (mounting a tmpfs, running a command as another user).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs `ferry serve` on `dir` with `args` until it exits (it must within 30 s); returns its
/// exit code and standard error.
pub fn serve_until_exit(
    dir: &std::path::Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Option<i32>, String) {
    let mut child = KillOnDrop(
        Command::new(ferry_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(args)
            .env_remove("FERRY_CONFIG")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("FERRY_S3_REGION")
            .env_remove("FERRY_S3_PATH_STYLE")
            .env_remove("FERRY_META")
            .env_remove("PGPASSWORD")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "ferry serve kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status.code(), err)
}
