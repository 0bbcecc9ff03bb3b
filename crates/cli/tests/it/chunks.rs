//! Content-Range chunk sessions (`POST /chunks/`, then `PUT`/`POST` chunks with
//! `Content-Range: bytes START-END/TOTAL`): every rule and status over raw HTTP against a real
//! `ferry serve`, then the article's Python client (threads, out of order, killed and resumed),
//! a curl loop, and `ferry upload --protocol chunks` (`client`).

use crate::support::proxy::{Faults, Proxy};
use crate::support::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path part of an absolute URL.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    format!("/{}", rest.split_once('/').map_or("", |(_, p)| p))
}

/// `POST /chunks/` (with `Upload-Length` when given); returns the session's path.
fn create(server: &Server, length: Option<u64>) -> String {
    let len;
    let mut headers = vec![];
    if let Some(l) = length {
        len = l.to_string();
        headers.push(("Upload-Length", len.as_str()));
    }
    let resp = send(server.addr, "POST", "/chunks/", &headers, b"");
    assert_eq!(status_of(&resp), 201, "{resp}");
    let location = header_of(&resp, "location").expect("Location");
    path_of(&location)
}

/// One chunk: `Content-Range: bytes {start}-{end}/{total}` with `body`.
fn put(addr: SocketAddr, path: &str, range: &str, body: &[u8]) -> String {
    send(addr, "PUT", path, &[("Content-Range", range)], body)
}

/// `bytes start-end/total` for `data[start..end]` (end exclusive).
fn chunk(addr: SocketAddr, path: &str, data: &[u8], start: usize, end: usize) -> String {
    let range = format!("bytes {start}-{}/{}", end - 1, data.len());
    put(addr, path, &range, &data[start..end])
}

fn ranges(resp: &str) -> String {
    header_of(resp, "upload-ranges").unwrap_or_else(|| panic!("no Upload-Ranges in {resp}"))
}

fn head(addr: SocketAddr, path: &str) -> String {
    send(addr, "HEAD", path, &[], b"")
}

/// Waits (bounded) until the server log contains `needle`.
fn wait_for_log(server: &Server, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the server log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn create_issues_unguessable_session_urls() {
    let server = Server::start(&[]);
    let resp = send(
        server.addr,
        "POST",
        "/chunks/",
        &[("Upload-Length", "10")],
        b"",
    );
    assert_eq!(status_of(&resp), 201, "{resp}");
    let location = header_of(&resp, "location").unwrap();
    let id = location
        .strip_prefix("/chunks/")
        .unwrap_or_else(|| panic!("Location {location:?}"));
    assert!(
        id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{id:?}"
    );
    assert_eq!(ranges(&resp), "");
    assert_eq!(header_of(&resp, "upload-length").as_deref(), Some("10"));
    assert_eq!(
        body_of(&resp).trim(),
        r#"{"received":[],"length":10,"complete":false}"#
    );
    assert_ne!(create(&server, Some(10)), path_of(&location), "fresh ids");
    // A key chosen by the client is never a session.
    for path in [
        "/chunks/mykey",
        "/chunks/00000000000000000000000000000000",
        "/chunks/../files/",
    ] {
        let r = put(server.addr, path, "bytes 0-0/10", b"x");
        assert_eq!(status_of(&r), 404, "{path}: {r}");
    }
    // tus does not announce chunk sessions; their own OPTIONS does.
    let opts = send(server.addr, "OPTIONS", "/files/", &[], b"");
    assert!(!opts.to_ascii_lowercase().contains("chunk"), "{opts}");
    let opts = send(server.addr, "OPTIONS", "/chunks/", &[], b"");
    assert_eq!(
        header_of(&opts, "ferry-chunk-sessions").as_deref(),
        Some("content-range"),
        "{opts}"
    );
    let r = send(server.addr, "GET", "/chunks/", &[], b"");
    assert_eq!(status_of(&r), 405, "{r}");
    assert_eq!(header_of(&r, "allow").as_deref(), Some("OPTIONS, POST"));
    let r = send(server.addr, "POST", "/chunks/", &[], b"abc");
    assert_eq!(status_of(&r), 400, "a body on creation: {r}");
    let r = send(
        server.addr,
        "POST",
        "/chunks/",
        &[("Upload-Length", "-1")],
        b"",
    );
    assert_eq!(status_of(&r), 400, "{r}");
}

#[test]
fn out_of_order_overlapping_and_retried_chunks_complete_byte_exact() {
    let server = Server::start(&[]);
    let data = random_bytes(3_000_000, 7);
    let path = create(&server, Some(data.len() as u64));
    const MIB: usize = 1 << 20;
    // The last chunk first: its END is the file's last byte (inclusive).
    let r = chunk(server.addr, &path, &data, 2 * MIB, data.len());
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(ranges(&r), format!("{}-2999999", 2 * MIB));
    assert_eq!(header_of(&r, "range"), None, "no prefix yet");
    assert_eq!(header_of(&r, "upload-complete").as_deref(), Some("?0"));
    assert_eq!(
        body_of(&r).trim(),
        format!(
            r#"{{"received":[[{},2999999]],"length":3000000,"complete":false}}"#,
            2 * MIB
        )
    );
    let r = chunk(server.addr, &path, &data, 0, MIB);
    assert_eq!(ranges(&r), format!("0-{},{}-2999999", MIB - 1, 2 * MIB));
    assert_eq!(header_of(&r, "range"), Some(format!("bytes=0-{}", MIB - 1)));
    // An idempotent retry: same answer, nothing changes.
    let again = chunk(server.addr, &path, &data, 0, MIB);
    assert_eq!(status_of(&again), 200);
    assert_eq!(ranges(&again), ranges(&r));
    // A retry of an already received range with other bytes: first write wins.
    let mut wrong = data[..MIB].to_vec();
    wrong.iter_mut().for_each(|b| *b = !*b);
    let r = put(
        server.addr,
        &path,
        &format!("bytes 0-{}/{}", MIB - 1, data.len()),
        &wrong,
    );
    assert_eq!(status_of(&r), 200, "{r}");
    // An overlapping chunk that fills the gap and straddles both neighbours completes it.
    let r = chunk(server.addr, &path, &data, MIB - 1000, 2 * MIB + 1000);
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(ranges(&r), "0-2999999");
    assert_eq!(header_of(&r, "upload-complete").as_deref(), Some("?1"));
    assert!(body_of(&r).contains(r#""complete":true"#), "{r}");
    let sha = sha256(&data);
    let digest = header_of(&r, "repr-digest").expect("digest computed inline (< 8 MiB)");
    use base64::Engine;
    let want = base64::engine::general_purpose::STANDARD.encode(hex::decode(&sha).unwrap());
    let b3 = base64::engine::general_purpose::STANDARD.encode(blake3::hash(&data).as_bytes());
    assert_eq!(
        digest,
        format!(
            "sha-256=:{want}:, blake3=:{b3}:, {}",
            crc64nvme_member(&data)
        )
    );
    // Downloadable by GET on the same URL, byte-exact, with ranges and validators.
    let url = format!("http://{}{path}", server.addr);
    assert_eq!(get_sha256(&url), sha);
    let resp = client()
        .get(&url)
        .header("Range", "bytes=1000-1999")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 206);
    assert!(resp.headers().contains_key("etag"));
    assert_eq!(resp.bytes().unwrap().as_ref(), &data[1000..2000]);
    // A chunk after completion changes nothing either.
    let r = put(server.addr, &path, "bytes 0-2/3000000", b"zzz");
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(get_sha256(&url), sha);
}

#[test]
fn status_query_by_head_and_by_put_star() {
    let server = Server::start(&[]);
    let data = random_bytes(100, 1);
    let path = create(&server, Some(100));
    chunk(server.addr, &path, &data, 0, 10);
    chunk(server.addr, &path, &data, 50, 60);
    let h = head(server.addr, &path);
    assert_eq!(status_of(&h), 200, "{h}");
    assert_eq!(ranges(&h), "0-9,50-59");
    assert_eq!(header_of(&h, "range").as_deref(), Some("bytes=0-9"));
    assert_eq!(header_of(&h, "upload-length").as_deref(), Some("100"));
    assert_eq!(header_of(&h, "upload-complete").as_deref(), Some("?0"));
    assert_eq!(header_of(&h, "cache-control").as_deref(), Some("no-store"));
    assert_eq!(body_of(&h), "", "HEAD has no body");
    for method in ["PUT", "POST"] {
        let q = send(
            server.addr,
            method,
            &path,
            &[("Content-Range", "bytes */100")],
            b"",
        );
        assert_eq!(status_of(&q), 200, "{q}");
        assert_eq!(ranges(&q), "0-9,50-59");
        assert_eq!(
            body_of(&q).trim(),
            r#"{"received":[[0,9],[50,59]],"length":100,"complete":false}"#
        );
    }
    let q = put(server.addr, &path, "bytes */101", b"");
    assert_eq!(status_of(&q), 409, "{q}");
    assert!(
        body_of(&q).contains("differs from the session's length"),
        "{q}"
    );
    let q = put(server.addr, &path, "bytes */100", b"abc");
    assert_eq!(status_of(&q), 400, "{q}");
    assert!(body_of(&q).contains("carries no body"), "{q}");
    // Unfinished: GET says what is missing instead of serving a partial file.
    let g = send(server.addr, "GET", &path, &[], b"");
    assert_eq!(status_of(&g), 409, "{g}");
    assert!(body_of(&g).contains("20 of 100 bytes"), "{g}");
    assert_eq!(ranges(&g), "0-9,50-59");
}

/// A table row: method, headers, body, expected status, a phrase of the expected message.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);

#[test]
fn each_fault_has_its_status_and_message() {
    let server = Server::start(&[]);
    let path = create(&server, Some(3_000_000));
    let a = server.addr;
    let cases: Vec<Case> = vec![
        // The article's last chunk: (i+1)*chunk-1 past the end of a 3,000,000-byte file.
        (
            "PUT",
            vec![("Content-Range", "bytes 2097152-3145727/3000000")],
            vec![0; 1048576],
            416,
            "must be below TOTAL",
        ),
        (
            "PUT",
            vec![("Content-Range", "bytes 0-3000000/3000000")],
            vec![0; 3000001],
            416,
            "must be below TOTAL",
        ),
        (
            "PUT",
            vec![("Content-Range", "bytes 10-9/3000000")],
            vec![],
            416,
            "is after END",
        ),
        (
            "PUT",
            vec![("Content-Range", "bytes 2999999-3000000/*")],
            vec![0; 2],
            416,
            "past the session's last byte",
        ),
        (
            "PUT",
            vec![("Content-Range", "bytes=0-9/3000000")],
            vec![0; 10],
            400,
            "malformed",
        ),
        (
            "PUT",
            vec![("Content-Range", "bytes 0-x/3000000")],
            vec![0; 10],
            400,
            "malformed",
        ),
        ("PUT", vec![], vec![0; 10], 400, "Content-Range is required"),
        (
            "PUT",
            vec![
                ("Content-Range", "bytes 0-9/3000000"),
                ("Content-Range", "bytes 0-9/3000000"),
            ],
            vec![0; 10],
            400,
            "must be sent once",
        ),
        (
            "PUT",
            vec![("Content-Range", "bytes 0-9/3000000")],
            vec![0; 9],
            400,
            "Content-Length 9 differs from the 10 bytes",
        ),
        (
            "PUT",
            vec![("Content-Range", "bytes 0-9/3000000")],
            vec![0; 11],
            400,
            "Content-Length 11 differs",
        ),
        (
            "PUT",
            vec![("Content-Range", "bytes 0-9/3000001")],
            vec![0; 10],
            409,
            "differs from the session's length of 3000000",
        ),
        (
            "PATCH",
            vec![("Content-Range", "bytes 0-9/3000000")],
            vec![0; 10],
            405,
            "method not allowed",
        ),
    ];
    for (method, headers, body, status, message) in cases {
        let r = send(a, method, &path, &headers, &body);
        assert_eq!(status_of(&r), status, "{method} {headers:?}: {r}");
        assert!(
            body_of(&r).contains(message),
            "{method} {headers:?}: {message:?} not in {r}"
        );
    }
    let h = head(a, &path);
    assert_eq!(ranges(&h), "", "no fault recorded a range");
    // Unknown sessions, and uploads of another protocol.
    let tus = create_tus(&server);
    let tus_id = tus.rsplit('/').next().unwrap();
    let r = put(a, &format!("/chunks/{tus_id}"), "bytes 0-0/1", b"x");
    assert_eq!(status_of(&r), 404, "a tus upload is no chunk session: {r}");
    let r = send(
        a,
        "PATCH",
        &format!("/files/{}", path.rsplit('/').next().unwrap()),
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Offset", "0"),
            ("Content-Type", "application/offset+octet-stream"),
        ],
        b"abc",
    );
    assert_eq!(
        status_of(&r),
        403,
        "tus cannot append to a chunk session: {r}"
    );
    assert!(body_of(&r).contains("chunk session"), "{r}");
}

fn create_tus(server: &Server) -> String {
    crate::support::create(server, 1, None)
}

#[test]
fn body_that_ends_early_or_disconnects_records_nothing() {
    let server = Server::start(&[]);
    let path = create(&server, Some(1000));
    // A chunked body shorter than the Content-Range.
    let r = send_chunked(
        server.addr,
        "PUT",
        &path,
        &[("Content-Range", "bytes 0-99/1000")],
        &[&[1u8; 60]],
        &[],
    );
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(
        body_of(&r).contains("body ended after 60 of the 100 bytes"),
        "{r}"
    );
    // A chunked body longer than the Content-Range.
    let r = send_chunked(
        server.addr,
        "PUT",
        &path,
        &[("Content-Range", "bytes 0-99/1000")],
        &[&[1u8; 60], &[1u8; 60]],
        &[],
    );
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(body_of(&r).contains("longer than the 100 bytes"), "{r}");
    // A client that disconnects after half its body.
    let mut s = TcpStream::connect(server.addr).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Range: bytes 100-899/1000\r\n\
         Content-Length: 800\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[2u8; 400]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    wait_for_log(&server, "request body ended early");
    let h = head(server.addr, &path);
    assert_eq!(ranges(&h), "", "no partial chunk recorded: {h}");
    // The same ranges sent whole are recorded.
    let data = random_bytes(1000, 3);
    assert_eq!(status_of(&chunk(server.addr, &path, &data, 100, 900)), 200);
    assert_eq!(status_of(&chunk(server.addr, &path, &data, 0, 100)), 200);
    let r = chunk(server.addr, &path, &data, 900, 1000);
    assert!(body_of(&r).contains(r#""complete":true"#), "{r}");
    assert_eq!(
        get_sha256(&format!("http://{}{path}", server.addr)),
        sha256(&data)
    );
}

#[test]
fn length_learned_from_the_first_chunk() {
    let server = Server::start(&[]);
    let path = create(&server, None);
    let h = head(server.addr, &path);
    assert_eq!(header_of(&h, "upload-length"), None);
    let r = put(server.addr, &path, "bytes 5-9/*", b"fghij");
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(body_of(&r).contains(r#""length":null"#), "{r}");
    let r = put(server.addr, &path, "bytes 0-4/10", b"abcde");
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(header_of(&r, "upload-length").as_deref(), Some("10"));
    assert!(body_of(&r).contains(r#""complete":true"#), "{r}");
    let r = put(server.addr, &path, "bytes 0-4/11", b"abcde");
    assert_eq!(status_of(&r), 409, "{r}");
    let g = send(server.addr, "GET", &path, &[], b"");
    assert_eq!(body_of(&g), "abcdefghij");
    // An empty file: the length comes with a status query.
    let path = create(&server, None);
    let q = put(server.addr, &path, "bytes */0", b"");
    assert!(body_of(&q).contains(r#""complete":true"#), "{q}");
    let g = send(server.addr, "GET", &path, &[], b"");
    assert_eq!(status_of(&g), 200, "{g}");
}

#[test]
fn over_max_size_is_413() {
    let server = Server::start(&["--max-size", "1000"]);
    let r = send(
        server.addr,
        "POST",
        "/chunks/",
        &[("Upload-Length", "1001")],
        b"",
    );
    assert_eq!(status_of(&r), 413, "{r}");
    assert!(
        body_of(&r).contains("exceed the maximum size of 1000"),
        "{r}"
    );
    let path = create(&server, None);
    let r = put(server.addr, &path, "bytes 0-0/1001", b"x");
    assert_eq!(status_of(&r), 413, "{r}");
    let r = put(server.addr, &path, "bytes 1000-1000/*", b"x");
    assert_eq!(status_of(&r), 413, "{r}");
    let r = put(server.addr, &path, "bytes 999-999/*", b"x");
    assert_eq!(status_of(&r), 200, "{r}");
}

#[test]
fn concurrent_chunk_puts_on_one_session() {
    let server = Server::start(&[]);
    let data = std::sync::Arc::new(random_bytes(8 << 20, 11));
    let path = create(&server, Some(data.len() as u64));
    const CHUNK: usize = 256 << 10;
    let n = data.len() / CHUNK;
    // Every chunk twice (a retry racing its original), in a scattered order, on 8 threads.
    let mut order: Vec<usize> = (0..n).chain(0..n).collect();
    let mut x = 12345u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let order = std::sync::Arc::new(std::sync::Mutex::new(order));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (order, data, path, addr) =
                (order.clone(), data.clone(), path.clone(), server.addr);
            std::thread::spawn(move || {
                loop {
                    let Some(i) = order.lock().unwrap().pop() else {
                        return;
                    };
                    let r = chunk(addr, &path, &data, i * CHUNK, (i + 1) * CHUNK);
                    assert_eq!(status_of(&r), 200, "chunk {i}: {r}");
                }
            })
        })
        .collect();
    for t in threads {
        if t.join().is_err() {
            panic!("a chunk failed: {}", server.log());
        }
    }
    let h = head(server.addr, &path);
    assert_eq!(ranges(&h), format!("0-{}", data.len() - 1), "{h}");
    assert_eq!(header_of(&h, "upload-complete").as_deref(), Some("?1"));
    assert_eq!(
        get_sha256(&format!("http://{}{path}", server.addr)),
        sha256(&data)
    );
}

#[test]
fn restart_keeps_received_ranges() {
    let mut server = Server::start(&[]);
    let data = random_bytes(500_000, 5);
    let path = create(&server, Some(data.len() as u64));
    chunk(server.addr, &path, &data, 400_000, 500_000);
    chunk(server.addr, &path, &data, 0, 100_000);
    server.restart_same_port_after_kill();
    let h = head(server.addr, &path);
    assert_eq!(status_of(&h), 200, "{h}");
    assert_eq!(ranges(&h), "0-99999,400000-499999");
    // A session with a gap between its ranges is as it should be.
    server.kill9();
    assert_fsck_clean(&server.data_dir);
    server.restart_same_port_after_kill();
    let r = chunk(server.addr, &path, &data, 100_000, 400_000);
    assert!(body_of(&r).contains(r#""complete":true"#), "{r}");
    assert_eq!(
        get_sha256(&format!("http://{}{path}", server.addr)),
        sha256(&data)
    );
}

#[test]
fn expired_sessions_are_swept() {
    let server = Server::start(&["--expire-after", "2s", "--sweep-interval", "1h"]);
    let path = create(&server, Some(10));
    assert_eq!(
        status_of(&put(server.addr, &path, "bytes 0-1/10", b"ab")),
        200
    );
    std::thread::sleep(Duration::from_millis(2500));
    let h = head(server.addr, &path);
    assert_eq!(status_of(&h), 410, "expired: {h}");
    let st = Command::new("kill")
        .args(["-USR1", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(&head(server.addr, &path)) != 404 {
        assert!(Instant::now() < deadline, "not swept:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn chunk_acknowledgements_follow_data_fdatasync_and_metadata_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let log_path = tmp.path().join("strace.log");
    let log_arg = log_path.display().to_string();
    let mut server = Server::start_wrapped(
        &data_dir,
        &[],
        &[
            "strace",
            "-f",
            "-y",
            "-s",
            "32",
            "-e",
            "trace=fdatasync,fsync,write,writev,sendto,sendmsg",
            "-o",
            &log_arg,
        ],
    );
    let data = random_bytes(3 << 20, 12);
    let path = create(&server, Some(data.len() as u64));
    let id = path.rsplit('/').next().unwrap().to_string();
    for i in [2usize, 0, 1] {
        let r = chunk(server.addr, &path, &data, i << 20, (i + 1) << 20);
        assert_eq!(status_of(&r), 200, "{r}");
    }
    server.terminate(Duration::from_secs(10));
    let log = std::fs::read_to_string(&log_path).unwrap();
    let events = crate::support::strace::parse_strace(&log);
    let acks: Vec<_> = events
        .iter()
        .filter(|e| e.arg.contains("HTTP/1.1 200"))
        .collect();
    assert_eq!(acks.len(), 3, "three 200s in the trace:\n{log}");
    let mut previous_ack = 0;
    for ack in acks {
        let data_sync = events
            .iter()
            .rfind(|e| {
                e.line > previous_ack
                    && e.line < ack.line
                    && e.call == "fdatasync"
                    && e.arg.contains(&id)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no fdatasync of the data file before the 200 at line {}:\n{log}",
                    ack.line
                )
            });
        assert!(
            events.iter().any(|e| e.line > data_sync.line
                && e.line < ack.line
                && (e.call == "fsync" || e.call == "fdatasync")
                && e.arg.contains("ferry.redb")),
            "no metadata commit between the data fdatasync at line {} and the 200 at line {}:\n{log}",
            data_sync.line,
            ack.line
        );
        previous_ack = ack.line;
    }
}

// ---------------------------------------------------------------------------------------------
// The article's Python client and a curl loop.

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

use crate::interop::python;

/// A child process killed (and reaped) on drop.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_python(endpoint: &str, file: &Path, state: &Path) -> Kid {
    let child = Command::new(python())
        .arg(repo_root().join("tests/interop/chunks_upload.py"))
        .args([
            "--endpoint",
            endpoint,
            "--chunk-size",
            "262144",
            "--threads",
            "4",
        ])
        .arg("--file")
        .arg(file)
        .arg("--state")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    Kid(child)
}

/// Waits (bounded: killed after `limit`) for a child; returns success, stdout and stderr.
fn finish(mut kid: Kid, limit: Duration) -> (bool, String, String) {
    let pipe = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = pipe(kid.0.stdout.take().map(|p| Box::new(p) as _));
    let err = pipe(kid.0.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let ok = loop {
        if let Some(st) = kid.0.try_wait().unwrap() {
            break st.success();
        }
        if Instant::now() > deadline {
            let _ = kid.0.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (ok, out.join().unwrap(), err.join().unwrap())
}

#[test]
fn python_article_client_killed_half_way_resumes() {
    const SIZE: usize = 16 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(tmp.path(), "source.bin", SIZE, 21);
    let state = tmp.path().join("state");
    let server = Server::start(&[]);
    // Throttled so that the first run lasts a few seconds and can be killed half-way.
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(4_000_000),
            ..Faults::default()
        },
    );
    let endpoint = proxy.url("/chunks/");
    let mut first = run_python(&endpoint, &file, &state);
    let stderr = first.0.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no half-way progress:\n{}", log.join("\n")));
        log.push(line.clone());
        let progress = line
            .strip_prefix("progress ")
            .and_then(|r| r.split_once(' '))
            .map(|(a, _)| a.parse::<usize>().unwrap());
        if progress.is_some_and(|p| p * 2 >= SIZE) {
            let _ = first.0.kill(); // SIGKILL
            break;
        }
    }
    drop(first);
    let url = std::fs::read_to_string(&state).expect("state file holds the session URL");
    let path = path_of(url.trim());
    let h = head(server.addr, &path);
    assert_eq!(
        header_of(&h, "upload-complete").as_deref(),
        Some("?0"),
        "{h}"
    );
    let before: u64 = ferry_proto::range::parse_upload_ranges(&ranges(&h))
        .unwrap()
        .iter()
        .map(|(a, b)| b - a)
        .sum();
    assert!(before > 0, "{h}");

    // Second run, unthrottled: resumes from the server's status.
    proxy.set(Faults::default());
    let second = run_python(&endpoint, &file, &state);
    let (ok, stdout, err) = finish(second, Duration::from_secs(120));
    assert!(ok, "second run failed:\n{err}");
    assert_eq!(stdout.trim(), url.trim());
    assert!(
        err.lines().any(|l| l.starts_with("resume ")),
        "did not resume:\n{err}"
    );
    let sent: usize = err
        .lines()
        .find_map(|l| l.strip_prefix("sent "))
        .expect("sent line")
        .parse()
        .unwrap();
    assert!(
        sent < SIZE / 262_144,
        "resumed run sent {sent} chunks: all of them again ({before} bytes were there)"
    );
    assert_eq!(get_sha256(&format!("http://{}{path}", server.addr)), sha);
}

#[test]
fn curl_loop_uploads_byte_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 3 * 1_048_576 + 12_345;
    let (file, sha) = random_file(tmp.path(), "source.bin", size, 33);
    let server = Server::start(&[]);
    let script = r#"
set -euo pipefail
file=$1; endpoint=$2; cs=$3
size=$(stat -c %s "$file")
loc=$(curl -sS -f -D - -o /dev/null -X POST -H "Upload-Length: $size" "$endpoint" \
      | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
# Location is a path unless the server knows its public URL.
case $loc in
  /*) url="$(echo "$endpoint" | cut -d/ -f1-3)$loc" ;;
  *) url=$loc ;;
esac
n=$(( (size + cs - 1) / cs ))
# Out of order: last chunk first. END is inclusive and below TOTAL.
for ((i = n - 1; i >= 0; i--)); do
  start=$(( i * cs )); end=$(( start + cs - 1 ))
  if (( end >= size )); then end=$(( size - 1 )); fi
  dd if="$file" bs="$cs" skip="$i" count=1 status=none \
    | curl -sS -f -o /dev/null --data-binary @- -X PUT \
        -H "Content-Range: bytes $start-$end/$size" "$url"
done
curl -sS -f -X PUT -H "Content-Range: bytes */$size" "$url"
echo "$url"
"#;
    let out = Command::new("bash")
        .args(["-c", script, "curl-loop"])
        .arg(&file)
        .arg(format!("http://{}/chunks/", server.addr))
        .arg("1048576")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl loop failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let status = lines.next().unwrap();
    assert_eq!(
        status,
        format!(
            r#"{{"received":[[0,{}]],"length":{size},"complete":true}}"#,
            size - 1
        )
    );
    let url = lines.next().unwrap();
    assert_eq!(get_sha256(url), sha);
}

/// `ferry upload --protocol chunks`.
mod client {
    use crate::support::proxy::{Faults, Proxy};
    use crate::support::upload::*;
    use crate::support::*;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    /// Chunk sessions created, by the server's log.
    fn sessions_created(server: &Server) -> usize {
        server.log().matches("chunk session created").count()
    }

    /// HEAD a chunk session: its `Upload-Ranges` (inclusive pairs, as sent).
    fn upload_ranges(url: &str) -> Option<String> {
        let resp = client().head(url).send().ok()?;
        (resp.status().as_u16() == 200).then_some(())?;
        Some(
            resp.headers()
                .get("upload-ranges")?
                .to_str()
                .ok()?
                .to_string(),
        )
    }

    /// Sum of the bytes an `Upload-Ranges` value lists.
    fn ranges_bytes(v: &str) -> u64 {
        v.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (a, b) = p.split_once('-').expect("a-b");
                b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1
            })
            .sum()
    }

    #[test]
    fn chunks_upload_is_byte_exact_small_and_empty_too() {
        let server = Server::start(&[]);
        let env = Env::new();
        let chunks_url = format!("http://{}/chunks/", server.addr);
        // 20 MiB + 1: the last chunk is one byte (END inclusive: END = 20 MiB).
        for (name, len) in [("f", 20 * MIB + 1), ("small", 1000u64), ("empty", 0)] {
            let (f, sha) = env.file(name, len, 75);
            let done = env
                .upload(
                    &[&f],
                    &chunks_url,
                    &["--protocol", "chunks", "--json", "--chunk-size", "4M"],
                )
                .wait(RUN_LIMIT)
                .ok();
            let o = one(&done);
            assert_eq!(o["protocol"], "chunks", "{done:#?}");
            assert_eq!(o["verified"], true, "{done:#?}");
            let url = o["url"].as_str().unwrap();
            assert!(url.starts_with(&chunks_url), "{url}");
            assert_uploaded(&env, url, &sha);
        }
        assert_eq!(sessions_created(&server), 3, "{}", server.log());
        assert_eq!(created_by(&server), (0, 0), "{}", server.log());
        assert!(
            !server.log().contains("chunk not recorded"),
            "{}",
            server.log()
        );
    }

    #[test]
    fn chunks_with_a_files_url_fails_clearly() {
        let server = Server::start(&[]);
        let env = Env::new();
        let (f, _) = env.file("f", 1000, 75);
        let done = env
            .upload(&[&f], &server.files_url, &["--protocol", "chunks"])
            .wait(RUN_LIMIT)
            .code(2);
        assert!(done.stderr.contains("/chunks/"), "{}", done.stderr);
        assert_eq!(created_by(&server), (0, 0));
        assert_eq!(sessions_created(&server), 0);
    }

    /// A `/chunks/` URL without `--protocol`: the endpoint's OPTIONS says what it is, so auto
    /// speaks chunk sessions (it created a session and then got 405 for every PATCH), and a
    /// forced tus or IETF upload is refused before anything is created.
    #[test]
    fn a_chunks_url_is_recognised_by_auto() {
        let server = Server::start(&[]);
        let env = Env::new();
        let chunks_url = format!("http://{}/chunks/", server.addr);
        for (name, len) in [("big", 5 * MIB), ("small", 1000u64)] {
            let (f, sha) = env.file(name, len, 77);
            let done = env
                .upload(&[&f], &chunks_url, &["--json"])
                .wait(RUN_LIMIT)
                .ok();
            let o = one(&done);
            assert_eq!(o["protocol"], "chunks", "{done:#?}");
            assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
        }
        assert_eq!(sessions_created(&server), 2, "{}", server.log());
        for protocol in ["tus", "ietf"] {
            let (f, _) = env.file("f", 1000, 78);
            let done = env
                .upload(&[&f], &chunks_url, &["--protocol", protocol])
                .wait(RUN_LIMIT)
                .code(2);
            assert!(done.stderr.contains("--protocol chunks"), "{}", done.stderr);
        }
        assert_eq!(sessions_created(&server), 2, "{}", server.log());
    }

    /// `-j 4`: four streams write ranges of one session; `FERRY_IT_BIG` bytes (default 64M).
    #[test]
    fn chunks_parallel_streams_write_one_session() {
        let len = std::env::var("FERRY_IT_BIG")
            .ok()
            .map(|v| ferry_proto::size::parse_size(&v).expect("FERRY_IT_BIG: a size like 1G"))
            .unwrap_or(64 * MIB);
        let server = Server::start(&["--sync", "none"]);
        let proxy = Proxy::start(server.addr, Faults::default());
        let env = Env::new();
        let (f, sha) = env.file("big", len, 76);
        let limit = RUN_LIMIT.max(Duration::from_secs(len / MIB));
        let t0 = Instant::now();
        let done = env
            .upload(
                &[&f],
                &proxy.url("/chunks/"),
                &["--protocol", "chunks", "--json", "-j", "4"],
            )
            .wait(limit)
            .ok();
        let took = t0.elapsed();
        let o = one(&done);
        assert_eq!(o["protocol"], "chunks", "{done:#?}");
        assert_eq!(o["verified"], true, "{done:#?}");
        assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
        assert_eq!(sessions_created(&server), 1, "{}", server.log());
        assert_eq!(created_by(&server), (0, 0), "{}", server.log());
        // The chunks came over several connections at once (plus the creation's).
        let conns = proxy.connections.load(Ordering::Relaxed);
        assert!(conns >= 4, "{conns} connections");
        eprintln!(
            "chunks_parallel_streams_write_one_session: {len} bytes in {:.2}s, {conns} connections",
            took.as_secs_f64()
        );
    }

    /// One stream (`-j 1`): the record holds the session; the re-run sends from its received run.
    #[test]
    fn chunks_client_sigkilled_midway_resumes() {
        chunks_kill_and_resume(&["-j", "1"], 1);
    }

    /// `-j 4`: the segments' record holds the one session; the re-run resumes every segment from
    /// the session's ranges.
    #[test]
    fn chunks_parallel_client_sigkilled_midway_resumes() {
        chunks_kill_and_resume(&["-j", "4"], 4);
    }

    fn chunks_kill_and_resume(streams: &[&str], parts_at_least: usize) {
        const LEN: u64 = 32 * MIB;
        let server = Server::start(&["--sync", "none"]);
        let proxy = Proxy::start(
            server.addr,
            Faults {
                rate: Some(24_000_000),
                ..Faults::default()
            },
        );
        let env = Env::new();
        let (f, sha) = env.file("f", LEN, 77);
        let endpoint = proxy.url("/chunks/");
        let mut args = vec![
            "--protocol",
            "chunks",
            "--json",
            "--chunk-size",
            "2M",
            "--max-chunk",
            "2M",
        ];
        args.extend_from_slice(streams);
        let mut run = env.upload(&[&f], &endpoint, &args);
        wait_forwarded(&proxy, LEN / 2, &mut run);
        run.kill9();
        wait_proxy_quiet(&proxy);
        let recs = env.records();
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0]["protocol"], "chunks", "{recs:?}");
        let parts = recs[0]["parts"].as_array().unwrap();
        assert!(parts.len() >= parts_at_least, "{recs:?}");
        // Every started segment writes the one session.
        let urls: std::collections::BTreeSet<&str> =
            parts.iter().filter_map(|p| p["url"].as_str()).collect();
        assert_eq!(urls.len(), 1, "{recs:?}");
        let url = env.saved_url();
        let had = ranges_bytes(&upload_ranges(&url).expect("session state"));
        assert!(
            (2 * MIB..LEN).contains(&had),
            "killed with {had} bytes received"
        );

        let before = proxy.forwarded.load(Ordering::Relaxed);
        let done = env.upload(&[&f], &endpoint, &args).wait(RUN_LIMIT).ok();
        let second = proxy.forwarded.load(Ordering::Relaxed) - before;
        let o = one(&done);
        assert_eq!(o["protocol"], "chunks", "{done:#?}");
        assert_eq!(o["url"], url.as_str());
        let resumed = o["resumed_from"].as_u64().unwrap();
        assert!(
            resumed >= had && resumed < LEN,
            "resumed from {resumed}, had {had}: {done:#?}"
        );
        assert!(
            second < LEN - had + MIB,
            "second run sent {second} bytes, {had} were there"
        );
        assert_eq!(o["verified"], true, "{done:#?}");
        assert_uploaded(&env, &url, &sha);
        assert_eq!(sessions_created(&server), 1, "{}", server.log());
    }

    #[test]
    fn chunks_server_sigkilled_and_restarted_client_completes() {
        server_sigkilled_and_restarted_client_completes("chunks", "/chunks/", 78);
    }
}
