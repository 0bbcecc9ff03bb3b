//! `ferry download` harness: client processes, nginx, a fault-injecting download proxy, small
//! test origins written here, and raw HTTP helpers for ranged and multipart answers.

use crate::support::{Server, ferry_bin};
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

pub const MIB: usize = 1 << 20;

// ------------------------------------------------------------------ processes -----------

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Kid(pub Option<Child>);

impl Kid {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Waits up to `limit`; `None` if it is still running then.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
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

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (`INT`, `TERM`).
    pub fn signal(&self, sig: &str) {
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
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
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

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The path of a tool from PATH (or the sbin directories, where Debian puts nginx).
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A required third-party tool, or a failure that says how to install it.
pub fn require(name: &str) -> PathBuf {
    tool(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: run `bash scripts/setup-test-deps.sh` \
             (it installs aria2, wget, curl and nginx-light for the download tests)"
        )
    })
}

/// `ferry download --state-dir STATE ARGS...`, bounded.
pub fn ferry_download(state: &Path, args: &[&str]) -> Output {
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
pub fn spawn_download(state: &Path, args: &[&str], log: &Path) -> Kid {
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

pub fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The JSON line `ferry download --json` printed.
pub fn json_line(out: &Output) -> serde_json::Value {
    let s = text(&out.stdout);
    super::files_done(&s)
        .pop()
        .unwrap_or_else(|| panic!("no file_done event: {s}"))
}

/// The saved download records: (done bytes, size) per record.
pub fn saved(state: &Path) -> Vec<(u64, u64)> {
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
pub fn wait_saved(state: &Path, min: u64, limit: Duration) -> u64 {
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
pub fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

pub fn an_hour_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

/// Writes `data` to `dir/name`, dated an hour ago (so Last-Modified is a strong validator).
pub fn publish(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    set_mtime(&p, an_hour_ago());
    p
}

// ------------------------------------------------------------------ servers --------------

/// `ferry serve --share <tempdir>`.
pub fn share_server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--share", dir.path().to_str().unwrap()]);
    (server, dir)
}

pub fn share_url(addr: SocketAddr, name: &str) -> String {
    format!("http://{addr}/share/{name}")
}

/// nginx on a free loopback port, from a config in a tempdir; killed on drop.
pub struct Nginx {
    pub addr: SocketAddr,
    pub _kid: Kid,
    pub _dir: tempfile::TempDir,
}

impl Nginx {
    /// Serving the files under `root`.
    pub fn start(root: &Path) -> Nginx {
        Self::serving(&format!("root {};", root.display()))
    }

    /// A reverse proxy to `upstream` as deployments set one up: nginx's default `Host` (the
    /// upstream's address, not the name clients use), bodies streamed, no size limit.
    pub fn proxy_to(upstream: SocketAddr) -> Nginx {
        Self::serving(&format!(
            "location / {{ proxy_pass http://{upstream}; proxy_http_version 1.1; \
             proxy_request_buffering off; proxy_buffering off; client_max_body_size 0; }}"
        ))
    }

    /// [`Nginx::proxy_to`] behind a gate, as deployments authenticate tus: 401 unless the
    /// request carries `header: value`.
    pub fn gate(upstream: SocketAddr, header: &str, value: &str) -> Nginx {
        let var = header.to_ascii_lowercase().replace('-', "_");
        Self::serving(&format!(
            "location / {{ if ($http_{var} != \"{value}\") {{ return 401; }} \
             proxy_pass http://{upstream}; proxy_http_version 1.1; \
             proxy_request_buffering off; proxy_buffering off; client_max_body_size 0; }}"
        ))
    }

    /// With `directives` in its one `server` block.
    fn serving(directives: &str) -> Nginx {
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
                 sendfile on;\n  server {{\n    listen 127.0.0.1:{port};\n    {directives}\n  }}\n}}\n"
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

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

/// What the download-direction proxy does.
#[derive(Debug, Clone, Default)]
pub struct DownFaults {
    /// Total server→client rate over all connections, bytes/s.
    pub rate: Option<u64>,
    /// Close a connection after this many server→client bytes on it.
    pub cut_after: Option<u64>,
    /// Stop forwarding (keeping the connection open) after this many bytes on it.
    pub stall_after: Option<u64>,
}

/// A TCP proxy that faults and counts the server→client direction.
pub struct DownProxy {
    pub addr: SocketAddr,
    pub faults: Arc<Mutex<DownFaults>>,
    /// Server→client bytes forwarded, all connections.
    pub sent: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
}

/// A token bucket shared by every connection of a proxy.
pub struct Bucket {
    pub tokens: f64,
    pub last: Instant,
}

impl DownProxy {
    pub fn start(target: SocketAddr, faults: DownFaults) -> DownProxy {
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

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, f: DownFaults) {
        *self.faults.lock().unwrap() = f;
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for DownProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// server → client, with the faults.
pub fn down_pump(
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
pub struct OriginCfg {
    /// Serve single byte ranges (206) and advertise Accept-Ranges.
    pub ranges: bool,
    /// `ETag` header value as sent (e.g. `W/"v1"`).
    pub etag: Option<String>,
    /// `Last-Modified` header value as sent.
    pub last_modified: Option<String>,
    /// `Date` header value as sent (default: now).
    pub date: Option<String>,
    /// Send `Repr-Digest` with the content's SHA-256.
    pub repr_digest: bool,
    /// Send this `Repr-Digest` instead (a lying server).
    pub repr_digest_override: Option<String>,
    /// Bytes/s per response.
    pub rate: Option<u64>,
}

/// What a test origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub status: u16,
}

pub struct OriginState {
    pub cfg: Mutex<OriginCfg>,
    /// Content and its SHA-256.
    pub body: Mutex<(Arc<Vec<u8>>, [u8; 32])>,
    /// Bumped whenever the content changes: responses in flight are aborted then, as a
    /// server whose file was replaced would break them.
    pub generation: AtomicU64,
    pub seen: Mutex<Vec<Seen>>,
    pub sent: AtomicU64,
}

/// A small HTTP/1.1 origin written with std::net: serves one resource at any path, with
/// validators and range support chosen by the test (e.g. a weak ETag only, or none at all),
/// and If-Range compared as plain text, as simple servers do.
pub struct Origin {
    pub addr: SocketAddr,
    pub st: Arc<OriginState>,
    pub stop: Arc<AtomicBool>,
}

impl Origin {
    pub fn start(cfg: OriginCfg, body: Vec<u8>) -> Origin {
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

    pub fn url(&self) -> String {
        format!("http://{}/data/file.bin", self.addr)
    }

    /// Replaces the content (and the headers), breaking responses in flight.
    pub fn change(&self, body: Vec<u8>, cfg: OriginCfg) {
        let digest: [u8; 32] = sha2::Sha256::digest(&body).into();
        *self.st.cfg.lock().unwrap() = cfg;
        *self.st.body.lock().unwrap() = (Arc::new(body), digest);
        self.st.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn set_rate(&self, rate: Option<u64>) {
        self.st.cfg.lock().unwrap().rate = rate;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.st.seen.lock().unwrap().clone()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn origin_conn(s: TcpStream, st: &OriginState, stop: &AtomicBool) {
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

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn h(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    let c = crate::support::client();
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

pub fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers)
}

/// Finds `needle` in `hay` from `from`.
pub fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// `bytes a-b/len` → (a, b, len).
pub fn content_range(v: &str) -> (u64, u64, u64) {
    let rest = v.strip_prefix("bytes ").unwrap_or_else(|| panic!("{v}"));
    let (r, len) = rest.split_once('/').unwrap();
    let (a, b) = r.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap(), len.parse().unwrap())
}

/// The parts of a 206: one from Content-Range, or each of a multipart/byteranges body (their
/// lengths taken from their Content-Range, the framing checked).
pub fn parts(r: &Resp) -> Vec<(u64, u64, Vec<u8>)> {
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
pub fn check_parts(r: &Resp, data: &[u8], want: &[(u64, u64)], what: &str) {
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
