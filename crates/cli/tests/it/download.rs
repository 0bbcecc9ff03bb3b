//! Downloads: ranged GETs from `ferry serve` (a `--share` directory and finished uploads),
//! third-party clients against it (aria2c, curl, wget), `ferry download` against nginx, ferry
//! and small test origins written here, SIGKILL at random points, network faults, files that
//! change between runs, and the server's memory bound.
//!
//! aria2c, wget and nginx come from `scripts/setup-test-deps.sh`; a missing one fails the test
//! with a message saying so. Every child process is killed when its guard drops, every wait
//! is bounded.
//!
//! [`support::proxy::Proxy`] faults and counts only the client→server (upload) direction, so
//! the download-direction faults and byte counts here come from [`DownProxy`].

use crate::support::{
    self, Server, crc64nvme_member, ferry_bin, random_bytes, random_file, sha256, sha256_file,
};
use base64::Engine as _;
use sha2::Digest as _;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const MIB: usize = 1 << 20;

// ------------------------------------------------------------------ processes -----------

/// A child process, killed (SIGKILL) and reaped when dropped.
struct Kid(Option<Child>);

impl Kid {
    fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Waits up to `limit`; `None` if it is still running then.
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (`INT`, `TERM`).
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `cmd` to completion within `limit`, capturing its output; kills it and fails the test
/// beyond.
fn run(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let mut kid = Kid(Some(child));
    match kid.wait_for(limit) {
        Some(status) => Output {
            status,
            stdout: t_out.join().unwrap(),
            stderr: t_err.join().unwrap(),
        },
        None => {
            kid.kill9();
            let err = t_err.join().unwrap();
            panic!(
                "{cmd:?} did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The path of a tool from PATH (or the sbin directories, where Debian puts nginx).
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A required third-party tool, or a failure that says how to install it.
fn require(name: &str) -> PathBuf {
    tool(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: run `bash scripts/setup-test-deps.sh` \
             (it installs aria2, wget, curl and nginx-light for the download tests)"
        )
    })
}

/// `ferry download --state-dir STATE ARGS...`, bounded.
fn ferry_download(state: &Path, args: &[&str]) -> Output {
    run(
        Command::new(ferry_bin())
            .arg("download")
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .env_remove("FERRY_STATE_DIR")
            .env_remove("FERRY_LOG"),
        Duration::from_secs(90),
    )
}

/// Starts `ferry download` in the background, its output going to `log` (stdout) and
/// `log.err` (stderr).
fn spawn_download(state: &Path, args: &[&str], log: &Path) -> Kid {
    let out = std::fs::File::create(log).unwrap();
    let err = std::fs::File::create(log.with_extension("err")).unwrap();
    Kid(Some(
        Command::new(ferry_bin())
            .arg("download")
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .env_remove("FERRY_STATE_DIR")
            .env_remove("FERRY_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn ferry download"),
    ))
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The JSON line `ferry download --json` printed.
fn json_line(out: &Output) -> serde_json::Value {
    let s = text(&out.stdout);
    let line = s.lines().last().unwrap_or_else(|| panic!("no JSON: {s}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The saved download records: (done bytes, size) per record.
fn saved(state: &Path) -> Vec<(u64, u64)> {
    let Ok(dir) = std::fs::read_dir(state.join("transfers")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let Ok(t) = std::fs::read(e.path()) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&t).expect("a record is whole JSON");
        if v["kind"] == "download" {
            let done: u64 = v["done"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r[1].as_u64().unwrap() - r[0].as_u64().unwrap())
                .sum();
            out.push((done, v["size"].as_u64().unwrap()));
        }
    }
    out
}

/// Waits until the one saved record shows at least `min` bytes done.
fn wait_saved(state: &Path, min: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(&(done, _)) = saved(state).first()
            && done >= min
        {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "no saved progress ≥ {min} within {limit:?}: {:?}",
            saved(state)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sets a file's modification time.
fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn an_hour_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

/// Writes `data` to `dir/name`, dated an hour ago (so Last-Modified is a strong validator).
fn publish(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    set_mtime(&p, an_hour_ago());
    p
}

// ------------------------------------------------------------------ servers --------------

/// `ferry serve --share <tempdir>`.
fn share_server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--share", dir.path().to_str().unwrap()]);
    (server, dir)
}

fn share_url(addr: SocketAddr, name: &str) -> String {
    format!("http://{addr}/share/{name}")
}

/// nginx serving `root` on a free loopback port, from a config in a tempdir; killed on drop.
struct Nginx {
    addr: SocketAddr,
    _kid: Kid,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path) -> Nginx {
        let bin = require("nginx");
        let mut last = String::new();
        // The port is picked free and handed to nginx; a rare race with another binder is
        // retried.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let d = dir.path().display();
            std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
            let conf = format!(
                "master_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n\
                 proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n\
                 uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
                 sendfile on;\n  server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n",
                root = root.display()
            );
            std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
            let kid = Kid(Some(
                Command::new(&bin)
                    .arg("-p")
                    .arg(dir.path())
                    .arg("-c")
                    .arg(dir.path().join("nginx.conf"))
                    .arg("-e")
                    .arg(dir.path().join("error.log"))
                    .args(["-g", "daemon off;"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn nginx"),
            ));
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut kid = kid;
            while Instant::now() < deadline {
                if TcpStream::connect(addr).is_ok() {
                    return Nginx {
                        addr,
                        _kid: kid,
                        _dir: dir,
                    };
                }
                if kid.wait_for(Duration::ZERO).is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        }
        panic!("nginx did not start; error.log:\n{last}");
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

/// What the download-direction proxy does.
#[derive(Debug, Clone, Default)]
struct DownFaults {
    /// Total server→client rate over all connections, bytes/s.
    rate: Option<u64>,
    /// Close a connection after this many server→client bytes on it.
    cut_after: Option<u64>,
    /// Stop forwarding (keeping the connection open) after this many bytes on it.
    stall_after: Option<u64>,
}

/// A TCP proxy that faults and counts the server→client direction.
struct DownProxy {
    addr: SocketAddr,
    faults: Arc<Mutex<DownFaults>>,
    /// Server→client bytes forwarded, all connections.
    sent: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// A token bucket shared by every connection of a proxy.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl DownProxy {
    fn start(target: SocketAddr, faults: DownFaults) -> DownProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let p = DownProxy {
            addr,
            faults: Arc::new(Mutex::new(faults)),
            sent: Arc::new(AtomicU64::new(0)),
            connections: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (faults, sent, conns, stop) = (
            p.faults.clone(),
            p.sent.clone(),
            p.connections.clone(),
            p.stop.clone(),
        );
        let bucket = Arc::new(Mutex::new(Bucket {
            tokens: 0.0,
            last: Instant::now(),
        }));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                conns.fetch_add(1, Ordering::Relaxed);
                let closed = Arc::new(AtomicBool::new(false));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (closed2, stop2) = (closed.clone(), stop.clone());
                std::thread::spawn(move || {
                    // client → server: plain.
                    let (mut from, mut to) = (c2, s2);
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
                    while !stop2.load(Ordering::Relaxed) && !closed2.load(Ordering::Relaxed) {
                        match from.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                    closed2.store(true, Ordering::Relaxed);
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                });
                let (faults, sent, stop, bucket) =
                    (faults.clone(), sent.clone(), stop.clone(), bucket.clone());
                std::thread::spawn(move || {
                    down_pump(server, client, &faults, &sent, &stop, &closed, &bucket)
                });
            }
        });
        p
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, f: DownFaults) {
        *self.faults.lock().unwrap() = f;
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for DownProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// server → client, with the faults.
fn down_pump(
    mut from: TcpStream,
    mut to: TcpStream,
    faults: &Mutex<DownFaults>,
    sent: &AtomicU64,
    stop: &AtomicBool,
    closed: &AtomicBool,
    bucket: &Mutex<Bucket>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    while !stop.load(Ordering::Relaxed) && !closed.load(Ordering::Relaxed) {
        let f = faults.lock().unwrap().clone();
        let mut want = buf.len();
        if let Some(cut) = f.cut_after {
            if total >= cut {
                break;
            }
            want = want.min((cut - total) as usize);
        }
        if let Some(stall) = f.stall_after {
            if total >= stall {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            want = want.min((stall - total) as usize);
        }
        if let Some(rate) = f.rate {
            want = want.min((rate / 50).max(1024) as usize);
        }
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        if let Some(rate) = f.rate {
            // Book the bytes in the shared bucket (bursts of at most 1/20 s), then wait for them.
            let wait = {
                let mut b = bucket.lock().unwrap();
                let now = Instant::now();
                let refill = now.duration_since(b.last).as_secs_f64() * rate as f64;
                b.tokens = (b.tokens + refill).min(rate as f64 / 20.0) - n as f64;
                b.last = now;
                (b.tokens < 0.0).then(|| Duration::from_secs_f64(-b.tokens / rate as f64))
            };
            if let Some(w) = wait {
                std::thread::sleep(w);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
        sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    closed.store(true, Ordering::Relaxed);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// How a test origin answers.
#[derive(Debug, Clone, Default)]
struct OriginCfg {
    /// Serve single byte ranges (206) and advertise Accept-Ranges.
    ranges: bool,
    /// `ETag` header value as sent (e.g. `W/"v1"`).
    etag: Option<String>,
    /// `Last-Modified` header value as sent.
    last_modified: Option<String>,
    /// `Date` header value as sent (default: now).
    date: Option<String>,
    /// Send `Repr-Digest` with the content's SHA-256.
    repr_digest: bool,
    /// Send this `Repr-Digest` instead (a lying server).
    repr_digest_override: Option<String>,
    /// Bytes/s per response.
    rate: Option<u64>,
}

/// What a test origin saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    range: Option<String>,
    if_range: Option<String>,
    status: u16,
}

struct OriginState {
    cfg: Mutex<OriginCfg>,
    /// Content and its SHA-256.
    body: Mutex<(Arc<Vec<u8>>, [u8; 32])>,
    /// Bumped whenever the content changes: responses in flight are aborted then, as a
    /// server whose file was replaced would break them.
    generation: AtomicU64,
    seen: Mutex<Vec<Seen>>,
    sent: AtomicU64,
}

/// A small HTTP/1.1 origin written with std::net: serves one resource at any path, with
/// validators and range support chosen by the test (e.g. a weak ETag only, or none at all),
/// and If-Range compared as plain text, as simple servers do.
struct Origin {
    addr: SocketAddr,
    st: Arc<OriginState>,
    stop: Arc<AtomicBool>,
}

impl Origin {
    fn start(cfg: OriginCfg, body: Vec<u8>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let digest: [u8; 32] = sha2::Sha256::digest(&body).into();
        let st = Arc::new(OriginState {
            cfg: Mutex::new(cfg),
            body: Mutex::new((Arc::new(body), digest)),
            generation: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (st2, stop2) = (st.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let (st, stop) = (st2.clone(), stop2.clone());
                        std::thread::spawn(move || origin_conn(s, &st, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Origin { addr, st, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/data/file.bin", self.addr)
    }

    /// Replaces the content (and the headers), breaking responses in flight.
    fn change(&self, body: Vec<u8>, cfg: OriginCfg) {
        let digest: [u8; 32] = sha2::Sha256::digest(&body).into();
        *self.st.cfg.lock().unwrap() = cfg;
        *self.st.body.lock().unwrap() = (Arc::new(body), digest);
        self.st.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn set_rate(&self, rate: Option<u64>) {
        self.st.cfg.lock().unwrap().rate = rate;
    }

    fn seen(&self) -> Vec<Seen> {
        self.st.seen.lock().unwrap().clone()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn origin_conn(s: TcpStream, st: &OriginState, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    while !stop.load(Ordering::Relaxed) {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let method = line.split_whitespace().next().unwrap_or("").to_string();
        let mut headers: HashMap<String, String> = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let cfg = st.cfg.lock().unwrap().clone();
        let (body, digest) = st.body.lock().unwrap().clone();
        let generation = st.generation.load(Ordering::SeqCst);
        let len = body.len() as u64;
        // Range: one `a-b`, `a-` or `-n` (enough for the clients under test).
        let mut range = None;
        let mut unsatisfiable = false;
        if cfg.ranges
            && method == "GET"
            && let Some(spec) = headers.get("range").and_then(|r| r.strip_prefix("bytes="))
            && !spec.contains(',')
            && let Some((a, b)) = spec.split_once('-')
        {
            let r = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
                (Some(a), Some(b)) if a <= b => Some((a, b.min(len.saturating_sub(1)))),
                (Some(a), None) if b.is_empty() => Some((a, len.saturating_sub(1))),
                (None, Some(n)) if a.is_empty() && n > 0 => Some((len.saturating_sub(n), len - 1)),
                _ => None,
            };
            match r {
                Some((a, _)) if a >= len => unsatisfiable = true,
                r => range = r,
            }
        }
        if let Some(ir) = headers.get("if-range") {
            let strong_tag = cfg
                .etag
                .as_deref()
                .is_some_and(|t| !t.starts_with("W/") && t == ir);
            let same_date = cfg.last_modified.as_deref() == Some(ir.as_str());
            if !(strong_tag || same_date) {
                range = None;
                unsatisfiable = false;
            }
        }
        let status = if unsatisfiable {
            416
        } else if range.is_some() {
            206
        } else {
            200
        };
        st.seen.lock().unwrap().push(Seen {
            range: headers.get("range").cloned(),
            if_range: headers.get("if-range").cloned(),
            status,
        });
        let (start, end) = range.unwrap_or((0, len));
        let end = if range.is_some() { end + 1 } else { end };
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\n",
            match status {
                206 => "Partial Content",
                416 => "Range Not Satisfiable",
                _ => "OK",
            }
        );
        let date = cfg
            .date
            .clone()
            .unwrap_or_else(|| httpdate::fmt_http_date(SystemTime::now()));
        head.push_str(&format!("Date: {date}\r\n"));
        if cfg.ranges {
            head.push_str("Accept-Ranges: bytes\r\n");
        }
        if let Some(e) = &cfg.etag {
            head.push_str(&format!("ETag: {e}\r\n"));
        }
        if let Some(lm) = &cfg.last_modified {
            head.push_str(&format!("Last-Modified: {lm}\r\n"));
        }
        if let Some(d) = &cfg.repr_digest_override {
            head.push_str(&format!("Repr-Digest: {d}\r\n"));
        } else if cfg.repr_digest {
            head.push_str(&format!(
                "Repr-Digest: sha-256=:{}:\r\n",
                base64::engine::general_purpose::STANDARD.encode(digest)
            ));
        }
        if status == 416 {
            head.push_str(&format!(
                "Content-Range: bytes */{len}\r\nContent-Length: 0\r\n\r\n"
            ));
            if w.write_all(head.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        if status == 206 {
            head.push_str(&format!(
                "Content-Range: bytes {start}-{}/{len}\r\n",
                end - 1
            ));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", end - start));
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method == "HEAD" {
            continue;
        }
        let began = Instant::now();
        let mut at = start;
        while at < end {
            if st.generation.load(Ordering::SeqCst) != generation || stop.load(Ordering::Relaxed) {
                // The file was replaced: this response cannot go on.
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
            let n = (end - at).min(16 * 1024);
            if w.write_all(&body[at as usize..(at + n) as usize]).is_err() {
                return;
            }
            at += n;
            st.sent.fetch_add(n, Ordering::Relaxed);
            if let Some(rate) = st.cfg.lock().unwrap().rate {
                let due = Duration::from_secs_f64((at - start) as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(began.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

// ------------------------------------------------------------------ HTTP helpers ----------

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn h(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    let c = support::client();
    let mut req = c.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    resp.read_to_end(&mut body).unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers)
}

/// Finds `needle` in `hay` from `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// `bytes a-b/len` → (a, b, len).
fn content_range(v: &str) -> (u64, u64, u64) {
    let rest = v.strip_prefix("bytes ").unwrap_or_else(|| panic!("{v}"));
    let (r, len) = rest.split_once('/').unwrap();
    let (a, b) = r.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap(), len.parse().unwrap())
}

/// The parts of a 206: one from Content-Range, or each of a multipart/byteranges body (their
/// lengths taken from their Content-Range, the framing checked).
fn parts(r: &Resp) -> Vec<(u64, u64, Vec<u8>)> {
    assert_eq!(r.status, 206);
    let ctype = r.h("content-type").unwrap();
    assert_eq!(
        r.h("content-length").unwrap().parse::<usize>().unwrap(),
        r.body.len(),
        "Content-Length is exact"
    );
    let Some(boundary) = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .map(|b| b.trim_matches('"').to_string())
    else {
        let (a, b, _) = content_range(&r.h("content-range").expect("Content-Range"));
        return vec![(a, b, r.body.clone())];
    };
    assert!(
        r.h("content-range").is_none(),
        "no Content-Range on a multipart whole"
    );
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut at = find(&r.body, delim.as_bytes(), 0).expect("first boundary");
    loop {
        let after = at + delim.len();
        if r.body[after..].starts_with(b"--") {
            break;
        }
        let head_end = find(&r.body, b"\r\n\r\n", after).expect("part head");
        let head = text(&r.body[after..head_end]);
        let cr = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-range")
                    .then(|| v.trim().to_string())
            })
            .expect("part Content-Range");
        let (a, b, _) = content_range(&cr);
        let start = head_end + 4;
        let end = start + (b - a + 1) as usize;
        out.push((a, b, r.body[start..end].to_vec()));
        assert!(
            r.body[end..].starts_with(format!("\r\n{delim}").as_bytes()),
            "part framing"
        );
        at = end + 2;
    }
    out
}

/// Checks every part against `data`.
fn check_parts(r: &Resp, data: &[u8], want: &[(u64, u64)], what: &str) {
    let got = parts(r);
    let spans: Vec<(u64, u64)> = got.iter().map(|(a, b, _)| (*a, *b)).collect();
    assert_eq!(spans, want, "{what}: ranges served");
    for (a, b, bytes) in got {
        assert_eq!(
            bytes,
            &data[a as usize..=b as usize],
            "{what}: bytes {a}-{b}"
        );
    }
}

// ------------------------------------------------------------------ server: ranges -------

#[test]
fn shared_file_ranges_validators_and_conditionals() {
    let (server, dir) = share_server();
    let data = random_bytes(100_000, 1);
    publish(dir.path(), "f.bin", &data);
    let url = share_url(server.addr, "f.bin");

    let h = request("HEAD", &url, &[]);
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(h.h("accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(h.h("content-length").as_deref(), Some("100000"));
    let etag = h.h("etag").expect("ETag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    let lm = h.h("last-modified").expect("Last-Modified");
    let lm_t = httpdate::parse_http_date(&lm).unwrap();
    let mtime = std::fs::metadata(dir.path().join("f.bin"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(
        mtime.duration_since(lm_t).unwrap() < Duration::from_secs(1),
        "Last-Modified is the mtime"
    );

    let full = get(&url, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.body, data);
    assert_eq!(full.h("etag"), Some(etag.clone()));

    let cases: &[(&str, &[(u64, u64)])] = &[
        ("bytes=10-19", &[(10, 19)]),
        ("bytes=99990-", &[(99990, 99999)]),
        ("bytes=-10", &[(99990, 99999)]),
        ("bytes=-200000", &[(0, 99999)]), // suffix longer than the file
        ("bytes=99999-99999", &[(99999, 99999)]), // last byte
        ("bytes=0-0", &[(0, 0)]),
        ("bytes=99990-5000000", &[(99990, 99999)]),
        (
            "bytes=0-9,50-59,99990-",
            &[(0, 9), (50, 59), (99990, 99999)],
        ),
        ("bytes=50-59, 0-9", &[(0, 9), (50, 59)]),
        ("bytes=0-10,5-20", &[(0, 20)]), // overlapping: coalesced
        ("bytes=0-9,10-19,30-39", &[(0, 19), (30, 39)]), // adjacent: coalesced
        ("bytes=200000-,0-0", &[(0, 0)]), // one satisfiable of two
        (" bytes = 1-2 ", &[(1, 2)]),
    ];
    for (range, want) in cases {
        let r = get(&url, &[("Range", range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.h("etag"), Some(etag.clone()), "{range}");
        if want.len() == 1 {
            let (a, b, len) = content_range(&r.h("content-range").unwrap());
            assert_eq!((a, b, len), (want[0].0, want[0].1, 100_000), "{range}");
        }
        check_parts(&r, &data, want, range);
    }
    // Many ranges: 64 are served as 64 parts; more are ignored (a full 200, as RFC 9110 lets
    // a server do against range amplification).
    let many: Vec<String> = (0..64)
        .map(|i| format!("{}-{}", i * 100, i * 100 + 9))
        .collect();
    let want: Vec<(u64, u64)> = (0..64).map(|i| (i * 100, i * 100 + 9)).collect();
    let r = get(&url, &[("Range", &format!("bytes={}", many.join(",")))]);
    check_parts(&r, &data, &want, "64 ranges");
    let too_many: Vec<String> = (0..200).map(|i| format!("{}-{}", i * 10, i * 10)).collect();
    let r = get(&url, &[("Range", &format!("bytes={}", too_many.join(",")))]);
    assert_eq!(r.status, 200, "200 ranges");
    assert_eq!(r.body, data);

    for range in [
        "bytes=100000-",
        "bytes=100000-200000",
        "bytes=-0",
        "bytes=500000-,-0",
    ] {
        let r = get(&url, &[("Range", range)]);
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(
            r.h("content-range").as_deref(),
            Some("bytes */100000"),
            "{range}"
        );
    }
    // Bad syntax is ignored: the whole representation, 200 (RFC 9110 §14.2).
    for range in [
        "bytes=5-1",
        "bytes=abc",
        "items=0-1",
        "bytes=--1",
        "bytes 0-1",
        "bytes=1",
        "bytes=",
        "bytes=0x10-0x20",
        "bytes=1-2,x",
    ] {
        let r = get(&url, &[("Range", range)]);
        assert_eq!(r.status, 200, "{range}");
        assert_eq!(r.body, data, "{range}");
    }
    // Range on HEAD is ignored (ranges are defined for GET only).
    let r = request("HEAD", &url, &[("Range", "bytes=0-9")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.h("content-length").as_deref(), Some("100000"));

    // If-Range: the range only while the validator matches strongly.
    let weak = format!("W/{etag}");
    let r = get(&url, &[("Range", "bytes=0-9"), ("If-Range", &etag)]);
    check_parts(&r, &data, &[(0, 9)], "If-Range: current ETag");
    let r = get(&url, &[("Range", "bytes=0-9"), ("If-Range", &lm)]);
    check_parts(&r, &data, &[(0, 9)], "If-Range: current (strong) date");
    for other in [
        "\"something-else\"",
        weak.as_str(),
        "Thu, 01 Jan 2015 00:00:00 GMT",
        "garbage",
    ] {
        let r = get(&url, &[("Range", "bytes=0-9"), ("If-Range", other)]);
        assert_eq!(r.status, 200, "If-Range {other}");
        assert_eq!(r.body, data, "If-Range {other}");
    }
    // If-Match: strong comparison; 412 otherwise.
    for (v, want) in [
        (etag.as_str(), 200),
        ("*", 200),
        ("\"x\", \"y\"", 412),
        (weak.as_str(), 412),
        ("\"nope\"", 412),
    ] {
        let r = get(&url, &[("If-Match", v)]);
        assert_eq!(r.status, want, "If-Match {v}");
    }
    let list = format!("\"x\", {etag}");
    assert_eq!(get(&url, &[("If-Match", &list)]).status, 200);
    let r = get(&url, &[("If-Match", "\"nope\""), ("Range", "bytes=0-0")]);
    assert_eq!(r.status, 412, "If-Match before Range");
    // If-None-Match: weak comparison; 304 with the validators and no body.
    for v in [etag.as_str(), weak.as_str(), "*"] {
        for method in ["GET", "HEAD"] {
            let r = request(
                method,
                &url,
                &[("If-None-Match", v), ("Range", "bytes=0-9")],
            );
            assert_eq!(r.status, 304, "{method} If-None-Match {v}");
            assert!(r.body.is_empty());
            assert_eq!(r.h("etag"), Some(etag.clone()));
        }
    }
    assert_eq!(get(&url, &[("If-None-Match", "\"other\"")]).status, 200);
    // If-Modified-Since (only without If-None-Match).
    assert_eq!(get(&url, &[("If-Modified-Since", &lm)]).status, 304);
    assert_eq!(
        get(
            &url,
            &[("If-Modified-Since", "Thu, 01 Jan 2015 00:00:00 GMT")]
        )
        .status,
        200
    );
    assert_eq!(
        get(
            &url,
            &[("If-Modified-Since", &lm), ("If-None-Match", "\"other\"")]
        )
        .status,
        200
    );

    // A 0-byte file: no range is satisfiable; bad syntax still 200.
    publish(dir.path(), "empty", b"");
    let e = share_url(server.addr, "empty");
    let r = get(&e, &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.h("content-length").as_deref(), Some("0"));
    for range in ["bytes=0-0", "bytes=-1", "bytes=0-"] {
        let r = get(&e, &[("Range", range)]);
        assert_eq!(r.status, 416, "empty file {range}");
        assert_eq!(r.h("content-range").as_deref(), Some("bytes */0"));
    }
    assert_eq!(get(&e, &[("Range", "bytes=x")]).status, 200);
    // A one-byte file.
    publish(dir.path(), "one", b"Z");
    let r = get(&share_url(server.addr, "one"), &[("Range", "bytes=-5")]);
    check_parts(&r, b"Z", &[(0, 0)], "one byte, long suffix");
}

#[test]
fn shared_etag_is_a_version_not_mtime_and_size() {
    let (server, dir) = share_server();
    let path = publish(dir.path(), "v.bin", &random_bytes(4096, 1));
    let url = share_url(server.addr, "v.bin");
    let tag = |what: &str| {
        let r = request("HEAD", &url, &[]);
        assert_eq!(r.status, 200, "{what}");
        (r.h("etag").unwrap(), r.h("last-modified").unwrap())
    };
    let (t1, lm1) = tag("first");
    assert_eq!(tag("again").0, t1, "stable while unchanged");
    let old_mtime = std::fs::metadata(&path).unwrap().modified().unwrap();

    // Same size, same mtime (put back to the nanosecond): what mtime+size tags cannot see.
    let v2 = random_bytes(4096, 2);
    std::fs::write(&path, &v2).unwrap();
    set_mtime(&path, old_mtime);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        old_mtime
    );
    let (t2, lm2) = tag("rewritten in place");
    assert_eq!(lm2, lm1, "the test kept mtime and size");
    assert_ne!(t2, t1, "content changed: the ETag must change");
    // An old validator can no longer select a range of the new content.
    let r = get(&url, &[("Range", "bytes=0-9"), ("If-Range", &t1)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, v2);
    assert_eq!(get(&url, &[("If-Match", &t1)]).status, 412);
    assert_eq!(get(&url, &[("If-None-Match", &t1)]).status, 200);

    // Replaced by a rename (new inode), same size and mtime again.
    let tmp = dir.path().join(".tmp");
    std::fs::write(&tmp, random_bytes(4096, 3)).unwrap();
    set_mtime(&tmp, old_mtime);
    std::fs::rename(&tmp, &path).unwrap();
    let (t3, _) = tag("replaced by rename");
    assert!(t3 != t1 && t3 != t2, "{t1} {t2} {t3}");

    // Two writes within the same second.
    std::fs::write(&path, random_bytes(4096, 4)).unwrap();
    let (t4, _) = tag("written");
    std::fs::write(&path, random_bytes(4096, 5)).unwrap();
    let (t5, _) = tag("written again at once");
    assert_ne!(t4, t5);
}

#[test]
fn shared_directory_confinement() {
    let top = tempfile::tempdir().unwrap();
    let share = top.path().join("share");
    let outside = top.path().join("outside");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOPSECRET").unwrap();
    std::fs::write(share.join("pub.txt"), "public").unwrap();
    std::fs::write(share.join("sub/inner.txt"), "inner").unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", share.join("link_out")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), share.join("abs_link")).unwrap();
    std::os::unix::fs::symlink("../outside", share.join("dir_out")).unwrap();
    std::os::unix::fs::symlink("../../outside/secret.txt", share.join("sub/deep_out")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", share.join("passwd")).unwrap();
    std::os::unix::fs::symlink("pub.txt", share.join("link_in")).unwrap();
    std::os::unix::fs::symlink("../pub.txt", share.join("sub/up_in")).unwrap();
    let server = Server::start(&["--share", share.to_str().unwrap()]);
    let addr = server.addr;
    let raw = |target: &str, extra: &str| {
        support::raw(
            addr,
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(10),
        )
    };

    // Inside: served, including symlinks that stay inside.
    for (p, want) in [
        ("/share/pub.txt", "public"),
        ("/share/sub/inner.txt", "inner"),
        ("/share/link_in", "public"),
        ("/share/sub/up_in", "public"),
        ("/share/sub%2Finner.txt", "inner"), // an encoded separator inside the tree
    ] {
        let r = raw(p, "");
        assert_eq!(support::status_of(&r), 200, "{p}: {r}");
        assert!(r.ends_with(want), "{p}: {r}");
    }
    let escapes = [
        "/share/../outside/secret.txt",
        "/share/sub/../../outside/secret.txt",
        "/share/%2e%2e/outside/secret.txt",
        "/share/%2E%2E/outside/secret.txt",
        "/share/%2e%2e%2foutside%2fsecret.txt",
        "/share/sub/..%2f..%2foutside%2fsecret.txt",
        "/share/sub/%2e%2e/%2e%2e/outside/secret.txt",
        "/share/..%5c..%5coutside%5csecret.txt",
        "/share/%252e%252e/outside/secret.txt",
        "/share/.%2e/outside/secret.txt",
        "/share//outside/secret.txt",
        "/share/%2f..%2foutside%2fsecret.txt",
        "/share/%2Ftmp",
        "/share/%00/../outside/secret.txt",
        "/share/link_out",
        "/share/abs_link",
        "/share/passwd",
        "/share/dir_out/secret.txt",
        "/share/dir_out/",
        "/share/dir_out",
        "/share/sub/deep_out",
        "/share/sub/../../../../../../etc/passwd",
        "/share/./pub.txt/../../outside/secret.txt",
    ];
    for p in escapes {
        for extra in ["", "Range: bytes=0-3\r\n"] {
            let r = raw(p, extra);
            let st = support::status_of(&r);
            assert!(
                st != 0 && !(200..300).contains(&st),
                "{p} {extra:?}: must not be served: {r}"
            );
            assert!(!r.contains("TOPSECRET") && !r.contains("root:"), "{p}: {r}");
        }
    }
    // Absolute-form request targets are held to the same rules.
    let r = raw(&format!("http://{addr}/share/../outside/secret.txt"), "");
    assert!(!r.contains("TOPSECRET"), "{r}");
    // Listings never show what lies outside.
    let r = raw("/share/", "");
    assert_eq!(support::status_of(&r), 200, "{r}");
    assert!(r.contains("pub.txt") && !r.contains("TOPSECRET"), "{r}");
    let r = raw("/share/dir_out/", "");
    assert!(!r.contains("secret.txt"), "listing through a symlink: {r}");
    // Read-only.
    for method in ["PUT", "DELETE", "POST"] {
        let r = support::raw(
            addr,
            format!(
                "{method} /share/pub.txt HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
            Duration::from_secs(10),
        );
        assert_eq!(support::status_of(&r), 405, "{method}: {r}");
    }
    assert_eq!(
        std::fs::read_to_string(share.join("pub.txt")).unwrap(),
        "public"
    );
}

// ------------------------------------------------------------------ finished uploads ------

#[test]
fn finished_upload_downloads_with_ranges_digest_and_names() {
    let server = Server::start(&[]);
    let data = random_bytes(3 * MIB + 123, 7);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let meta = format!("filename {}", b64("report 1.pdf"));
    let url = support::create(&server, data.len() as u64, Some(&meta));
    // Unfinished: no download yet.
    let (st, _) = support::patch(&url, 0, data[..MIB].to_vec());
    assert_eq!(st, 204);
    let r = get(&url, &[]);
    assert_eq!(r.status, 409, "an unfinished upload is not downloadable");
    let (st, off) = support::patch(&url, MIB as u64, data[MIB..].to_vec());
    assert_eq!((st, off), (204, Some(data.len() as u64)));

    // Plain HEAD (no Tus-Resumable) describes the download.
    let h = request("HEAD", &url, &[]);
    assert_eq!(h.status, 200, "plain HEAD of a finished upload");
    assert_eq!(h.h("accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(
        h.h("content-length").unwrap().parse::<usize>().unwrap(),
        data.len()
    );
    let etag = h.h("etag").expect("ETag");
    assert!(etag.starts_with('"'));
    assert!(h.h("last-modified").is_some());
    // A tus HEAD is still a tus HEAD.
    let t = request("HEAD", &url, &[("Tus-Resumable", "1.0.0")]);
    assert_eq!(t.h("upload-offset"), Some(data.len().to_string()));

    let r = get(&url, &[("Range", "bytes=100-199"), ("If-Range", &etag)]);
    check_parts(&r, &data, &[(100, 199)], "upload range");
    let r = get(&url, &[("Range", "bytes=0-1,-2")]);
    let n = data.len() as u64;
    check_parts(&r, &data, &[(0, 1), (n - 2, n - 1)], "upload multipart");
    let r = get(&url, &[("Range", &format!("bytes={n}-"))]);
    assert_eq!(r.status, 416);
    assert_eq!(r.h("content-range"), Some(format!("bytes */{n}")));
    assert_eq!(get(&url, &[("If-None-Match", &etag)]).status, 304);
    // Repr-Digest once known (computed when the upload completes).
    let deadline = Instant::now() + Duration::from_secs(10);
    let digest = loop {
        if let Some(d) = request("HEAD", &url, &[]).h("repr-digest") {
            break d;
        }
        assert!(Instant::now() < deadline, "no Repr-Digest");
        std::thread::sleep(Duration::from_millis(50));
    };
    // (Small content: every digest computed at completion.)
    let enc = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let want = format!(
        "sha-256=:{}:, blake3=:{}:, {}",
        enc(&sha2::Sha256::digest(&data)),
        enc(blake3::hash(&data).as_bytes()),
        crc64nvme_member(&data)
    );
    assert_eq!(digest, want);

    // ferry download: named by Content-Disposition, verified against Repr-Digest.
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let out_dir = tmp.path().join("out");
    let out = ferry_download(&state, &["-d", out_dir.to_str().unwrap(), "--json", &url]);
    ok(&out, "ferry download /files/{id}");
    let j = json_line(&out);
    assert_eq!(j["verified"], true, "{j}");
    let got = out_dir.join("report 1.pdf");
    assert_eq!(j["file"], got.display().to_string());
    assert_eq!(sha256_file(&got), sha256(&data));
    assert!(saved(&state).is_empty(), "state is removed once done");

    // A hostile name cannot leave the directory.
    let evil = support::create(
        &server,
        5,
        Some(&format!("filename {}", b64("../../../evil.sh"))),
    );
    support::patch(&evil, 0, b"hello".to_vec());
    let out = ferry_download(&state, &["-d", out_dir.to_str().unwrap(), &evil]);
    ok(&out, "hostile name");
    assert_eq!(std::fs::read(out_dir.join("evil.sh")).unwrap(), b"hello");
    assert!(!tmp.path().join("evil.sh").exists());

    // curl resumes a partial file of an upload.
    let curl = require("curl");
    let part = tmp.path().join("curl.bin");
    std::fs::write(&part, &data[..MIB]).unwrap();
    let out = run(
        Command::new(curl)
            .args(["-sS", "-f", "-C", "-", "-o"])
            .arg(&part)
            .args(["-w", "%{http_code}"])
            .arg(&url),
        Duration::from_secs(60),
    );
    ok(&out, "curl -C -");
    assert_eq!(text(&out.stdout), "206");
    assert_eq!(sha256_file(&part), sha256(&data));
}

// ------------------------------------------------------------------ third-party clients ---

#[test]
fn aria2c_curl_and_wget_download_from_ferry_serve_and_resume() {
    let aria2c = require("aria2c");
    let curl = require("curl");
    let wget = require("wget");
    let (server, dir) = share_server();
    let size = 24 * MIB + 77;
    let (src, want) = random_file(dir.path(), "big.bin", size, 11);
    set_mtime(&src, an_hour_ago());
    let proxy = DownProxy::start(server.addr, DownFaults::default());
    let url = proxy.url("/share/big.bin");
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    let data = std::fs::read(&src).unwrap();
    let limit = Duration::from_secs(120);

    // Whole files.
    let r = run(
        Command::new(&aria2c)
            .args([
                "-q",
                "-x8",
                "-s8",
                "-k1M",
                "--allow-overwrite=true",
                "--auto-file-renaming=false",
                "--file-allocation=none",
                "-d",
            ])
            .arg(o)
            .args(["-o", "aria.bin", &url]),
        limit,
    );
    ok(&r, "aria2c -x8");
    assert_eq!(sha256_file(&o.join("aria.bin")), want, "aria2c -x8");
    let r = run(
        Command::new(&curl)
            .args(["-sS", "-f", "-o"])
            .arg(o.join("curl.bin"))
            .arg(&url),
        limit,
    );
    ok(&r, "curl");
    assert_eq!(sha256_file(&o.join("curl.bin")), want, "curl");
    let r = run(
        Command::new(&wget)
            .args(["-q", "-O"])
            .arg(o.join("wget.bin"))
            .arg(&url),
        limit,
    );
    ok(&r, "wget");
    assert_eq!(sha256_file(&o.join("wget.bin")), want, "wget");

    // Resume of a partial file: each client fetches only the rest (counted at the proxy,
    // paced so that connections a client drops early carry little unread data).
    proxy.set(DownFaults {
        rate: Some(32 * MIB as u64),
        ..DownFaults::default()
    });
    let prefix = 10 * MIB + 5;
    let rest = (size - prefix) as u64;
    let slack = 512 * 1024;
    // curl -C -
    let p = o.join("curl-resume.bin");
    std::fs::write(&p, &data[..prefix]).unwrap();
    let before = proxy.sent();
    let r = run(
        Command::new(&curl)
            .args(["-sS", "-f", "-C", "-", "-o"])
            .arg(&p)
            .arg(&url),
        limit,
    );
    ok(&r, "curl -C -");
    assert_eq!(sha256_file(&p), want, "curl -C -");
    let fetched = proxy.sent() - before;
    assert!(
        fetched >= rest && fetched < rest + slack,
        "curl -C -: {fetched} bytes for {rest}"
    );
    // wget -c
    let wdir = o.join("wget-resume");
    std::fs::create_dir_all(&wdir).unwrap();
    std::fs::write(wdir.join("big.bin"), &data[..prefix]).unwrap();
    let before = proxy.sent();
    let r = run(
        Command::new(&wget)
            .args(["-q", "-c", "-P"])
            .arg(&wdir)
            .arg(&url),
        limit,
    );
    ok(&r, "wget -c");
    assert_eq!(sha256_file(&wdir.join("big.bin")), want, "wget -c");
    let fetched = proxy.sent() - before;
    assert!(
        fetched >= rest && fetched < rest + slack,
        "wget -c: {fetched} bytes for {rest}"
    );
    // aria2c -c on a partial file without a control file continues from its length.
    std::fs::write(o.join("aria-resume.bin"), &data[..prefix]).unwrap();
    let before = proxy.sent();
    let r = run(
        Command::new(&aria2c)
            .args([
                "-q",
                "-c",
                "-x8",
                "-s8",
                "-k1M",
                "--auto-file-renaming=false",
                "--file-allocation=none",
                "-d",
            ])
            .arg(o)
            .args(["-o", "aria-resume.bin", &url]),
        limit,
    );
    ok(&r, "aria2c -c");
    assert_eq!(sha256_file(&o.join("aria-resume.bin")), want, "aria2c -c");
    // aria2c's first connection asks for everything from the file's length and is cut
    // short once the rest is split among its eight, so some buffered bytes are dropped;
    // what matters is that the 10 MiB already there are not fetched again.
    let fetched = proxy.sent() - before;
    assert!(
        fetched < rest + (prefix as u64) / 2,
        "aria2c -c: {fetched} bytes for {rest}"
    );

    // aria2c interrupted (SIGKILL) and resumed with its control file.
    proxy.set(DownFaults {
        rate: Some(8 * MIB as u64),
        ..DownFaults::default()
    });
    let args = [
        "-q",
        "-c",
        "-x8",
        "-s8",
        "-k1M",
        "--auto-file-renaming=false",
        "--file-allocation=none",
        "--auto-save-interval=1",
        "-d",
    ];
    let mut kid = Kid(Some(
        Command::new(&aria2c)
            .args(args)
            .arg(o)
            .args(["-o", "aria-killed.bin", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(1500));
    kid.kill9();
    proxy.set(DownFaults::default());
    let r = run(
        Command::new(&aria2c)
            .args(args)
            .arg(o)
            .args(["-o", "aria-killed.bin", &url]),
        limit,
    );
    ok(&r, "aria2c resumed after SIGKILL");
    assert_eq!(sha256_file(&o.join("aria-killed.bin")), want);

    // aria2c and curl also fetch a finished upload.
    let upload = support::create(&server, 5 * MIB as u64, None);
    let udata = random_bytes(5 * MIB, 12);
    assert_eq!(support::patch(&upload, 0, udata.clone()).0, 204);
    let r = run(
        Command::new(&aria2c)
            .args([
                "-q",
                "-x8",
                "-s8",
                "-k1M",
                "--allow-overwrite=true",
                "--file-allocation=none",
                "-d",
            ])
            .arg(o)
            .args(["-o", "upload.bin", &upload]),
        limit,
    );
    ok(&r, "aria2c /files/{id}");
    assert_eq!(sha256_file(&o.join("upload.bin")), sha256(&udata));
    let r = run(
        Command::new(&wget)
            .args(["-q", "-O"])
            .arg(o.join("upload-w.bin"))
            .arg(&upload),
        limit,
    );
    ok(&r, "wget /files/{id}");
    assert_eq!(sha256_file(&o.join("upload-w.bin")), sha256(&udata));
}

// ------------------------------------------------------------------ ferry download --------

#[test]
fn ferry_download_from_nginx() {
    let root = tempfile::tempdir().unwrap();
    let size = 20 * MIB + 3;
    let (src, want) = random_file(root.path(), "big.bin", size, 21);
    set_mtime(&src, an_hour_ago());
    publish(root.path(), "empty.bin", b"");
    let nginx = Nginx::start(root.path());
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let url = nginx.url("big.bin");

    for j in ["4", "1", "auto", "16"] {
        let dest = tmp.path().join(format!("j{j}.bin"));
        let out = ferry_download(
            &state,
            &["-j", j, "-o", dest.to_str().unwrap(), "--json", &url],
        );
        ok(&out, &format!("ferry download -j {j} from nginx"));
        assert_eq!(sha256_file(&dest), want, "-j {j}");
        let v = json_line(&out);
        assert_eq!(v["bytes"], size as u64);
        assert_eq!(v["resumed_from"], 0);
        assert!(!PathBuf::from(format!("{}.ferry-part", dest.display())).exists());
    }
    // -d names the file from the URL; an empty file works.
    let d = tmp.path().join("dir");
    let out = ferry_download(
        &state,
        &["-d", d.to_str().unwrap(), &url, &nginx.url("empty.bin")],
    );
    ok(&out, "-d with two URLs");
    assert_eq!(sha256_file(&d.join("big.bin")), want);
    assert_eq!(std::fs::read(d.join("empty.bin")).unwrap(), b"");
    // --checksum: verified when it matches; on a mismatch nothing claims to be complete.
    let dest = tmp.path().join("ck.bin");
    let out = ferry_download(
        &state,
        &[
            "-o",
            dest.to_str().unwrap(),
            "--json",
            "--checksum",
            &format!("sha256={want}"),
            &url,
        ],
    );
    ok(&out, "--checksum (right)");
    assert_eq!(json_line(&out)["verified"], true);
    let bad = tmp.path().join("bad.bin");
    let out = ferry_download(
        &state,
        &[
            "-o",
            bad.to_str().unwrap(),
            "--checksum",
            &format!("sha256={}", "0".repeat(64)),
            &url,
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not match"),
        "{}",
        text(&out.stderr)
    );
    assert!(!bad.exists(), "no file that claims to be complete");
    assert!(!PathBuf::from(format!("{}.ferry-part", bad.display())).exists());
    assert!(saved(&state).is_empty());

    // Interrupted (Ctrl-C) and resumed against nginx (ETag/If-Range), counting bytes.
    let proxy = DownProxy::start(
        nginx.addr,
        DownFaults {
            rate: Some(6 * MIB as u64),
            ..DownFaults::default()
        },
    );
    let purl = proxy.url("/big.bin");
    let dest = tmp.path().join("resumed.bin");
    let log = tmp.path().join("resumed.log");
    let mut kid = spawn_download(
        &state,
        &["-j", "4", "-o", dest.to_str().unwrap(), &purl],
        &log,
    );
    wait_saved(&state, 4 * MIB as u64, Duration::from_secs(30));
    kid.signal("INT");
    let st = kid
        .wait_for(Duration::from_secs(10))
        .expect("exits on Ctrl-C");
    assert_eq!(st.code(), Some(130));
    let done = saved(&state)[0].0;
    // Still paced, so what the proxy counts is what the client asked for, not what a
    // loopback socket buffers ahead of a stream cut short by work stealing.
    let first = proxy.sent();
    let out = ferry_download(
        &state,
        &["-j", "4", "-o", dest.to_str().unwrap(), "--json", &purl],
    );
    ok(&out, "resumed from nginx");
    assert_eq!(sha256_file(&dest), want);
    assert_eq!(json_line(&out)["resumed_from"], done);
    // Nothing saved is fetched again (≥ 4 MiB were); the slack is the tail of work
    // stealing: a stream cut short drops what the proxy had already pushed to it.
    let second = proxy.sent() - first;
    assert!(
        second <= size as u64 - done + MIB as u64,
        "the resumed run fetched {second} bytes for {} missing",
        size as u64 - done
    );
}

#[test]
fn ferry_download_from_ferry_serve_share_and_json() {
    let (server, dir) = share_server();
    let size = 9 * MIB + 1;
    let (src, want) = random_file(dir.path(), "a b.bin", size, 31);
    set_mtime(&src, an_hour_ago());
    publish(dir.path(), "empty", b"");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let url = share_url(server.addr, "a%20b.bin");
    let out = ferry_download(
        &state,
        &["-d", tmp.path().to_str().unwrap(), "--json", &url],
    );
    ok(&out, "from ferry serve --share");
    let v = json_line(&out);
    assert_eq!(v["file"], tmp.path().join("a b.bin").display().to_string());
    assert_eq!(v["bytes"], size as u64);
    assert_eq!(sha256_file(&tmp.path().join("a b.bin")), want);
    assert!(
        text(&out.stderr).contains("not verified"),
        "{}",
        text(&out.stderr)
    );
    let e = tmp.path().join("e");
    let out = ferry_download(
        &state,
        &["-o", e.to_str().unwrap(), &share_url(server.addr, "empty")],
    );
    ok(&out, "empty file");
    assert_eq!(std::fs::read(&e).unwrap(), b"");
    // A missing file: refused, nothing left behind.
    let m = tmp.path().join("m");
    let out = ferry_download(
        &state,
        &["-o", m.to_str().unwrap(), &share_url(server.addr, "nope")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(!m.exists());
    assert!(saved(&state).is_empty());
}

/// `--limit-rate` paces the whole download, and a request that runs longer than
/// `--stall-timeout` while making progress is not a stall.
#[test]
fn limit_rate_paces_and_long_requests_are_not_stalls() {
    let (server, dir) = share_server();
    let (src, want) = random_file(dir.path(), "r.bin", 3 * MIB, 41);
    set_mtime(&src, an_hour_ago());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("r.bin");
    let t0 = Instant::now();
    let out = ferry_download(
        &tmp.path().join("state"),
        &[
            "-j",
            "2",
            "--limit-rate",
            "1M",
            "--stall-timeout",
            "1s",
            "-o",
            dest.to_str().unwrap(),
            &share_url(server.addr, "r.bin"),
        ],
    );
    let took = t0.elapsed();
    ok(&out, "--limit-rate");
    assert_eq!(sha256_file(&dest), want);
    assert!(
        took >= Duration::from_millis(2500),
        "3 MiB at 1 MiB/s took {took:?}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    let err = text(&out.stderr);
    assert!(
        !err.contains("retrying"),
        "no request failed while data flowed: {err}"
    );
}

#[test]
fn ctrl_c_leaves_a_resumable_state_that_status_and_forget_cover() {
    let (server, dir) = share_server();
    let size = 8 * MIB;
    let (src, want) = random_file(dir.path(), "s.bin", size, 51);
    set_mtime(&src, an_hour_ago());
    let proxy = DownProxy::start(
        server.addr,
        DownFaults {
            rate: Some(3 * MIB as u64),
            ..DownFaults::default()
        },
    );
    let url = proxy.url("/share/s.bin");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let dest = tmp.path().join("s.bin");
    let partial = PathBuf::from(format!("{}.ferry-part", dest.display()));
    let status = |json: bool| {
        let mut c = Command::new(ferry_bin());
        c.arg("status").arg("--state-dir").arg(&state);
        if json {
            c.arg("--json");
        }
        let out = run(&mut c, Duration::from_secs(20));
        ok(&out, "ferry status");
        text(&out.stdout)
    };

    let log = tmp.path().join("run1.log");
    let mut kid = spawn_download(
        &state,
        &["-o", dest.to_str().unwrap(), "--json", &url],
        &log,
    );
    wait_saved(&state, 1, Duration::from_secs(30));
    kid.signal("INT");
    let st = kid
        .wait_for(Duration::from_secs(10))
        .expect("Ctrl-C ends it");
    assert_eq!(st.code(), Some(130));
    let err = std::fs::read_to_string(log.with_extension("err")).unwrap();
    assert!(
        err.contains("run the same command again to resume"),
        "{err}"
    );
    assert!(!dest.exists(), "no complete-looking file after Ctrl-C");
    assert!(partial.exists());
    let (done, total) = saved(&state)[0];
    assert!(done > 0 && done < total && total == size as u64);

    let js = status(true);
    let line: serde_json::Value = serde_json::from_str(js.lines().next().unwrap()).unwrap();
    assert_eq!(line["kind"], "download");
    assert_eq!(line["url"], url);
    assert_eq!(line["dest"], dest.display().to_string());
    assert_eq!(line["bytes"], size as u64);
    assert_eq!(line["done"], done);
    let plain = status(false);
    assert!(
        plain.contains("download") && plain.contains(&url),
        "{plain}"
    );

    // Re-running resumes.
    proxy.set(DownFaults::default());
    let out = ferry_download(&state, &["-o", dest.to_str().unwrap(), "--json", &url]);
    ok(&out, "resume after Ctrl-C");
    assert_eq!(json_line(&out)["resumed_from"], done);
    assert_eq!(sha256_file(&dest), want);
    assert!(!partial.exists());
    assert_eq!(status(true).trim(), "", "nothing left to resume");

    // forget drops the state and the partial file.
    std::fs::remove_file(&dest).unwrap();
    proxy.set(DownFaults {
        rate: Some(3 * MIB as u64),
        ..DownFaults::default()
    });
    let mut kid = spawn_download(&state, &["-o", dest.to_str().unwrap(), &url], &log);
    wait_saved(&state, 1, Duration::from_secs(30));
    kid.signal("INT");
    kid.wait_for(Duration::from_secs(10))
        .expect("Ctrl-C ends it");
    assert!(partial.exists());
    let out = run(
        Command::new(ferry_bin())
            .arg("forget")
            .arg("--state-dir")
            .arg(&state)
            .arg(&dest),
        Duration::from_secs(20),
    );
    ok(&out, "ferry forget");
    assert!(!partial.exists(), "forget removes the partial file");
    assert_eq!(status(true).trim(), "");
}

// ------------------------------------------------------------------ crashes and faults ----

/// SIGKILL at random points, re-run each time (with various stream counts): the result is
/// byte-exact and each kill costs at most what was in flight since the last batch of state
/// was saved — never a restart.
#[test]
fn sigkill_at_random_points_then_rerun_refetches_only_in_flight() {
    let (server, dir) = share_server();
    // Four runs of at most 2 s at 4 MiB/s cannot finish 48 MiB.
    let size = 48 * MIB + 12345;
    let (src, want) = random_file(dir.path(), "k.bin", size, 61);
    set_mtime(&src, an_hour_ago());
    let rate = 4 * MIB as u64;
    let proxy = DownProxy::start(
        server.addr,
        DownFaults {
            rate: Some(rate),
            ..DownFaults::default()
        },
    );
    let url = proxy.url("/share/k.bin");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let dest = tmp.path().join("k.bin");
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut rng = seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut done_before = 0u64;
    let mut report = Vec::new();
    for (i, j) in ["4", "auto", "3", "8"].iter().enumerate() {
        let before = proxy.sent();
        let log = tmp.path().join(format!("run{i}.log"));
        let started = SystemTime::now();
        let mut kid = spawn_download(&state, &["-j", j, "-o", dest.to_str().unwrap(), &url], &log);
        let after = Duration::from_millis(500 + next() % 1500);
        std::thread::sleep(after);
        kid.kill9();
        let killed = SystemTime::now();
        let fetched = proxy.sent() - before;
        let done = saved(&state).first().map_or(0, |r| r.0);
        // How long before the kill the last batch landed (the record is renamed into place
        // after its data was synced).
        let unsaved = std::fs::read_dir(state.join("transfers"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max()
            .map_or(started, |t| t.max(started));
        let unsaved = killed.duration_since(unsaved).unwrap_or_default();
        assert!(
            done >= done_before,
            "seed {seed}: saved progress never goes back: {done} < {done_before}\n{}",
            report.join("\n")
        );
        let wasted = fetched.saturating_sub(done - done_before);
        report.push(format!(
            "kill {i} (-j {j}) after {after:?}: fetched {fetched}, saved +{}, wasted {wasted}, \
             last batch saved {unsaved:?} before the kill",
            done - done_before
        ));
        // In flight = what arrived since the last saved batch was noted: the client notes
        // what is on disk, syncs it, then saves (every quarter second, once the previous
        // save is done), and a stream writes what it gathered within 50 ms. So a kill loses
        // the transfer since the last save landed, plus the sync before it: seen here, about
        // 0.1–0.25 s of transfer. Bounded by that time plus 1 s (a loaded disk syncs slowly).
        let bound = rate as f64 * (unsaved.as_secs_f64() + 1.0);
        assert!(
            wasted as f64 <= bound,
            "seed {seed}: a kill cost more than the in-flight data:\n{}",
            report.join("\n")
        );
        assert!(!dest.exists(), "no complete file before the end");
        done_before = done;
    }
    assert!(done_before > 0, "seed {seed}: {}", report.join("\n"));
    // The last run stays paced: unpaced, a stream cut short by work stealing leaves whatever
    // loopback buffered ahead of it counted at the proxy, which is not a re-fetch.
    let before = proxy.sent();
    let out = ferry_download(
        &state,
        &["-j", "2", "-o", dest.to_str().unwrap(), "--json", &url],
    );
    ok(&out, "final run");
    assert_eq!(sha256_file(&dest), want, "seed {seed}");
    assert_eq!(json_line(&out)["resumed_from"], done_before);
    // As in ferry_download_from_nginx: only the missing bytes, plus the work-stealing tail.
    let last = proxy.sent() - before;
    assert!(
        last <= size as u64 - done_before + MIB as u64,
        "the final run fetched {last} for {} missing",
        size as u64 - done_before
    );
    eprintln!("seed {seed}\n{}", report.join("\n"));
}

#[test]
fn cut_and_stalled_connections_still_complete() {
    let (server, dir) = share_server();
    let size = 12 * MIB + 9;
    let (src, want) = random_file(dir.path(), "f.bin", size, 71);
    set_mtime(&src, an_hour_ago());
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");

    // Every connection is cut after 1 MiB of body.
    let proxy = DownProxy::start(
        server.addr,
        DownFaults {
            cut_after: Some(MIB as u64),
            ..DownFaults::default()
        },
    );
    let dest = tmp.path().join("cut.bin");
    let out = ferry_download(
        &state,
        &[
            "-j",
            "3",
            "--stall-timeout",
            "2s",
            "-o",
            dest.to_str().unwrap(),
            &proxy.url("/share/f.bin"),
        ],
    );
    ok(&out, "through cuts");
    assert_eq!(sha256_file(&dest), want);
    assert!(proxy.connections.load(Ordering::Relaxed) >= 12);

    // Every connection stalls (open, silent) after 3 MiB.
    let proxy = DownProxy::start(
        server.addr,
        DownFaults {
            stall_after: Some(3 * MIB as u64),
            ..DownFaults::default()
        },
    );
    let dest = tmp.path().join("stall.bin");
    let t0 = Instant::now();
    let out = ferry_download(
        &state,
        &[
            "-j",
            "2",
            "--stall-timeout",
            "2s",
            "-o",
            dest.to_str().unwrap(),
            &proxy.url("/share/f.bin"),
        ],
    );
    ok(&out, "through stalls");
    assert_eq!(sha256_file(&dest), want);
    let err = text(&out.stderr);
    assert!(err.contains("stalled"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(45), "{:?}", t0.elapsed());
}

// ------------------------------------------------------------------ changing files --------

/// Per-response rate of the slow test origins: a few MiB take seconds, so a run can be
/// interrupted after its first saved batch.
const SLOW: u64 = 512 * 1024;

/// Interrupts a download of `url` once some progress is saved (Ctrl-C or SIGKILL).
fn interrupted_run(state: &Path, dest: &Path, url: &str, log: &Path, sigkill: bool) {
    let mut kid = spawn_download(state, &["-j", "2", "-o", dest.to_str().unwrap(), url], log);
    wait_saved(state, 1, Duration::from_secs(30));
    if sigkill {
        kid.kill9();
    } else {
        kid.signal("INT");
        kid.wait_for(Duration::from_secs(10))
            .expect("Ctrl-C ends it");
    }
    let (done, size) = *saved(state)
        .first()
        .expect("the run was interrupted before it finished (slow the source down)");
    assert!(done > 0 && done < size, "a partial download: {done}/{size}");
    assert!(!dest.exists());
}

/// After a change, runs again (at most three times) and checks that every result is either
/// the new content, byte-exact, or no complete file; returns the runs' stderr.
fn rerun_expecting(state: &Path, dest: &Path, url: &str, new: &[u8], extra: &[&str]) -> String {
    let mut errs = String::new();
    for _ in 0..3 {
        let mut args = vec!["-j", "2", "-o", dest.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(url);
        let out = ferry_download(state, &args);
        errs.push_str(&text(&out.stderr));
        if dest.exists() {
            assert_eq!(
                sha256_file(dest),
                sha256(new),
                "a complete file must be the new content, byte-exact; stderr:\n{errs}"
            );
        }
        if out.status.success() {
            assert!(dest.exists());
            return errs;
        }
        assert!(!dest.exists(), "a failed run leaves no complete file");
    }
    errs
}

#[test]
fn files_changing_between_runs_on_ferry_and_nginx() {
    let size = 6 * MIB;
    let v1 = random_bytes(size, 81);
    let v2 = random_bytes(size, 82);
    let root = tempfile::tempdir().unwrap();
    let path = publish(root.path(), "c.bin", &v1);
    let server = Server::start(&["--share", root.path().to_str().unwrap()]);
    let nginx = Nginx::start(root.path());
    let slow = DownFaults {
        rate: Some(2 * MIB as u64),
        ..DownFaults::default()
    };
    for (what, target, keep_mtime, sigkill) in [
        ("ferry: same size, new mtime", server.addr, false, false),
        ("ferry: same size, same mtime", server.addr, true, true),
        ("nginx: same size, new mtime", nginx.addr, false, true),
    ] {
        std::fs::write(&path, &v1).unwrap();
        set_mtime(&path, an_hour_ago());
        let proxy = DownProxy::start(target, slow.clone());
        let url = if target == server.addr {
            proxy.url("/share/c.bin")
        } else {
            proxy.url("/c.bin")
        };
        let tmp = tempfile::tempdir().unwrap();
        let (state, dest) = (tmp.path().join("state"), tmp.path().join("c.bin"));
        interrupted_run(&state, &dest, &url, &tmp.path().join("log"), sigkill);
        let old = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, &v2).unwrap();
        set_mtime(
            &path,
            if keep_mtime {
                old
            } else {
                old + Duration::from_secs(5)
            },
        );
        proxy.set(DownFaults::default());
        let errs = rerun_expecting(&state, &dest, &url, &v2, &[]);
        assert!(dest.exists(), "{what}: {errs}");
        assert!(
            errs.contains("changed"),
            "{what}: says why it starts over: {errs}"
        );
    }
}

/// Origins without a strong validator: a weak ETag, no validator at all, a Last-Modified too
/// recent to be strong; then a digest makes resuming safe.
#[test]
fn files_changing_between_runs_without_strong_validators() {
    let size = 3 * MIB;
    let v1 = random_bytes(size, 91);
    let v2 = random_bytes(size, 92);
    let now = httpdate::fmt_http_date(SystemTime::now());
    let cases: Vec<(&str, OriginCfg, &str)> = vec![
        (
            "weak ETag only (unchanged by the change)",
            OriginCfg {
                etag: Some("W/\"v1\"".into()),
                ..OriginCfg::default()
            },
            "no strong validator",
        ),
        (
            "no validators at all",
            OriginCfg::default(),
            "no strong validator",
        ),
        (
            "Last-Modified equal to Date (weak), unchanged by the change",
            OriginCfg {
                last_modified: Some(now.clone()),
                date: Some(now.clone()),
                ..OriginCfg::default()
            },
            "no strong validator",
        ),
        (
            "no validators, Repr-Digest",
            OriginCfg {
                repr_digest: true,
                ..OriginCfg::default()
            },
            "changed",
        ),
    ];
    for (what, cfg, why) in cases {
        let cfg = OriginCfg {
            ranges: true,
            rate: Some(SLOW),
            ..cfg
        };
        let origin = Origin::start(cfg.clone(), v1.clone());
        let tmp = tempfile::tempdir().unwrap();
        let (state, dest) = (tmp.path().join("state"), tmp.path().join("o.bin"));
        interrupted_run(&state, &dest, &origin.url(), &tmp.path().join("log"), false);
        origin.change(
            v2.clone(),
            OriginCfg {
                rate: None,
                ..cfg.clone()
            },
        );
        let errs = rerun_expecting(&state, &dest, &origin.url(), &v2, &[]);
        assert!(dest.exists(), "{what}: {errs}");
        assert!(
            errs.contains(why),
            "{what}: says why it starts over: {errs}"
        );
    }

    // No validators and a --checksum of the OLD content: resuming is allowed (the digest
    // guards it), the spliced result fails verification and nothing claims to be complete.
    let origin = Origin::start(
        OriginCfg {
            ranges: true,
            rate: Some(SLOW),
            ..OriginCfg::default()
        },
        v1.clone(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let (state, dest) = (tmp.path().join("state"), tmp.path().join("o.bin"));
    let ck = format!("sha256={}", sha256(&v1));
    let mut kid = spawn_download(
        &state,
        &[
            "-j",
            "2",
            "--checksum",
            &ck,
            "-o",
            dest.to_str().unwrap(),
            &origin.url(),
        ],
        &tmp.path().join("log"),
    );
    wait_saved(&state, 1, Duration::from_secs(30));
    kid.signal("INT");
    kid.wait_for(Duration::from_secs(10)).unwrap();
    origin.change(
        v2.clone(),
        OriginCfg {
            ranges: true,
            ..OriginCfg::default()
        },
    );
    let out = ferry_download(
        &state,
        &[
            "-j",
            "2",
            "--checksum",
            &ck,
            "-o",
            dest.to_str().unwrap(),
            &origin.url(),
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(!dest.exists(), "no file that claims to be complete");
    let out = ferry_download(
        &state,
        &["-j", "2", "-o", dest.to_str().unwrap(), &origin.url()],
    );
    ok(&out, "without the stale checksum");
    assert_eq!(sha256_file(&dest), sha256(&v2));
}

/// Strong validators on a plain origin: every resumed request carries If-Range; a Last-Modified
/// that changes restarts; a change in the middle of a run (200 to If-Range) never splices.
#[test]
fn if_range_on_every_resumed_request_and_mid_run_changes() {
    let size = 4 * MIB;
    let v1 = random_bytes(size, 101);
    let v2 = random_bytes(size, 102);
    let old = httpdate::fmt_http_date(an_hour_ago());
    for (what, cfg) in [
        (
            "strong ETag",
            OriginCfg {
                etag: Some("\"v1\"".into()),
                ..OriginCfg::default()
            },
        ),
        (
            "strong Last-Modified",
            OriginCfg {
                last_modified: Some(old.clone()),
                ..OriginCfg::default()
            },
        ),
    ] {
        let cfg = OriginCfg {
            ranges: true,
            rate: Some(SLOW),
            ..cfg
        };
        let validator = cfg.etag.clone().or(cfg.last_modified.clone()).unwrap();
        let origin = Origin::start(cfg.clone(), v1.clone());
        let tmp = tempfile::tempdir().unwrap();
        let (state, dest) = (tmp.path().join("state"), tmp.path().join("o.bin"));
        interrupted_run(&state, &dest, &origin.url(), &tmp.path().join("log"), true);
        let seen_before = origin.seen().len();
        origin.set_rate(None);
        let out = ferry_download(
            &state,
            &["-j", "3", "-o", dest.to_str().unwrap(), &origin.url()],
        );
        ok(&out, what);
        assert_eq!(sha256_file(&dest), sha256(&v1), "{what}");
        let resumed: Vec<Seen> = origin.seen()[seen_before..]
            .iter()
            .filter(|s| s.range.as_deref() != Some("bytes=0-0"))
            .cloned()
            .collect();
        assert!(!resumed.is_empty());
        for s in &resumed {
            assert_eq!(
                s.if_range.as_deref(),
                Some(validator.as_str()),
                "{what}: {s:?}"
            );
            assert_eq!(s.status, 206, "{what}: {s:?}");
        }

        // The validator changes between runs: start over, the new content.
        std::fs::remove_file(&dest).unwrap();
        origin.set_rate(Some(MIB as u64));
        interrupted_run(&state, &dest, &origin.url(), &tmp.path().join("log"), false);
        let new_cfg = OriginCfg {
            etag: cfg.etag.as_ref().map(|_| "\"v2\"".to_string()),
            last_modified: cfg
                .last_modified
                .as_ref()
                .map(|_| httpdate::fmt_http_date(an_hour_ago() + Duration::from_secs(60))),
            rate: None,
            ..cfg.clone()
        };
        origin.change(v2.clone(), new_cfg);
        let errs = rerun_expecting(&state, &dest, &origin.url(), &v2, &[]);
        assert!(dest.exists() && errs.contains("changed"), "{what}: {errs}");

        // The file changes in the middle of a run: requests made after it get 200 to their
        // If-Range; the client must not splice the two versions.
        std::fs::remove_file(&dest).unwrap();
        origin.change(
            v1.clone(),
            OriginCfg {
                rate: Some(SLOW),
                ..cfg.clone()
            },
        );
        let log = tmp.path().join("mid.log");
        let mut kid = spawn_download(
            &state,
            &["-j", "2", "-o", dest.to_str().unwrap(), &origin.url()],
            &log,
        );
        std::thread::sleep(Duration::from_millis(800));
        origin.change(
            v2.clone(),
            OriginCfg {
                etag: cfg.etag.as_ref().map(|_| "\"v2\"".to_string()),
                last_modified: cfg
                    .last_modified
                    .as_ref()
                    .map(|_| httpdate::fmt_http_date(an_hour_ago() + Duration::from_secs(120))),
                rate: None,
                ..cfg.clone()
            },
        );
        // The same run starts over (with a message) and ends with the new version.
        let st = kid.wait_for(Duration::from_secs(60)).expect("finishes");
        let err = std::fs::read_to_string(log.with_extension("err")).unwrap();
        assert!(st.success(), "{what}: mid-run change: {st:?} {err}");
        assert_eq!(
            sha256_file(&dest),
            sha256(&v2),
            "{what}: mid-run change: {err}"
        );
        assert!(
            err.contains("changed on the server while downloading; starting over"),
            "{what}: {err}"
        );
        assert!(
            origin
                .seen()
                .iter()
                .any(|s| s.if_range.is_some() && s.status == 200),
            "{what}: the change was seen through If-Range"
        );
    }
}

#[test]
fn servers_without_ranges_or_with_a_wrong_digest() {
    let data = random_bytes(2 * MIB + 5, 111);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // No Range support: one stream, said so, byte-exact.
    let origin = Origin::start(
        OriginCfg {
            etag: Some("\"x\"".into()),
            ..OriginCfg::default()
        },
        data.clone(),
    );
    let dest = tmp.path().join("nr.bin");
    let out = ferry_download(
        &state,
        &["-j", "4", "-o", dest.to_str().unwrap(), &origin.url()],
    );
    ok(&out, "no ranges");
    assert_eq!(sha256_file(&dest), sha256(&data));
    let err = text(&out.stderr);
    assert!(err.contains("does not support ranges"), "{err}");
    assert!(
        origin
            .seen()
            .iter()
            .filter(|s| s.range.as_deref() != Some("bytes=0-0"))
            .count()
            == 1,
        "one stream: {:?}",
        origin.seen()
    );
    // A Repr-Digest that does not match: reported, nothing complete left.
    let origin = Origin::start(
        OriginCfg {
            ranges: true,
            etag: Some("\"x\"".into()),
            repr_digest_override: Some(format!(
                "sha-256=:{}:",
                base64::engine::general_purpose::STANDARD.encode([7u8; 32])
            )),
            ..OriginCfg::default()
        },
        data.clone(),
    );
    let dest = tmp.path().join("wd.bin");
    let out = ferry_download(&state, &["-o", dest.to_str().unwrap(), &origin.url()]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("does not match"));
    assert!(!dest.exists());
    assert!(!PathBuf::from(format!("{}.ferry-part", dest.display())).exists());
    // A matching one: verified.
    let origin = Origin::start(
        OriginCfg {
            ranges: true,
            repr_digest: true,
            ..OriginCfg::default()
        },
        data.clone(),
    );
    let dest = tmp.path().join("ok.bin");
    let out = ferry_download(
        &state,
        &["--json", "-o", dest.to_str().unwrap(), &origin.url()],
    );
    ok(&out, "digest");
    assert_eq!(json_line(&out)["verified"], true);
    assert_eq!(sha256_file(&dest), sha256(&data));
}

// ------------------------------------------------------------------ memory ----------------

/// `ferry serve` streams with bounded memory: 16 parallel ranged streams of a 128 MiB shared
/// file, read slowly enough that the server must hold back, keep its peak RSS small.
#[test]
fn serving_sixteen_ranged_streams_keeps_server_memory_small() {
    let (server, dir) = share_server();
    let size: u64 = 128 << 20;
    // Sparse: reads as zeros, costs no disk; the server cannot tell.
    std::fs::File::create(dir.path().join("m.bin"))
        .unwrap()
        .set_len(size)
        .unwrap();
    let base = support::vm_hwm_kib(server.pid()).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(16));
    let addr = server.addr;
    let threads: Vec<_> = (0..16u64)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let slice = size / 16;
                let (a, b) = (i * slice, (i + 1) * slice - 1);
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                barrier.wait();
                write!(
                    s,
                    "GET /share/m.bin HTTP/1.1\r\nHost: {addr}\r\nRange: bytes={a}-{b}\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                let mut paused = false;
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    if !paused && total > 2 << 20 {
                        // Everyone stops reading for a while: the server must not buffer ahead.
                        paused = true;
                        std::thread::sleep(Duration::from_millis(700));
                    }
                }
                total
            })
        })
        .collect();
    let mut all = 0;
    for t in threads {
        all += t.join().unwrap();
    }
    assert!(all >= size, "{all}");
    let peak = support::vm_hwm_kib(server.pid()).unwrap();
    eprintln!("ferry serve VmHWM: {base} KiB at start, {peak} KiB after 16 streams");
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB serving 16 streams of a 128 MiB file"
    );
}
