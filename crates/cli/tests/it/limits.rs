//! Bounds under abuse that need real sockets and processes: the connection cap with its
//! shedding tier, backoff on accept errors, and the lingering close that lets a client read an
//! answer sent before its body was read.

use crate::interop::python;
use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A `GET /healthz` on a fresh connection, answered within `limit`?
fn healthz(server: &Server, limit: Duration) -> String {
    raw(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        limit,
    )
}

#[test]
fn healthz_answers_while_idle_sockets_hold_every_file_descriptor() {
    let tmp = tempfile::tempdir().unwrap();
    // 256 descriptors, as in the report: 300 idle sockets used to exhaust them, after which
    // accept failed about 20 times a second and /healthz never answered.
    let server = Server::start_wrapped(
        &tmp.path().join("data"),
        &[],
        &["prlimit", "--nofile=256:256", "--"],
    );
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(server.addr).ok())
        .collect();
    assert!(idle.len() > 256, "only {} connected", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let resp = healthz(&server, Duration::from_secs(5));
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(body_of(&resp).starts_with("ok"), "{resp}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Work past the cap is told to come back, not left hanging.
    let resp = raw(
        server.addr,
        b"POST /files/ HTTP/1.1\r\nHost: localhost\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert_eq!(
        header_of(&resp, "retry-after").as_deref(),
        Some("1"),
        "{resp}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let failures = server.log().matches("accept failed").count();
    assert!(
        failures <= 2,
        "accept errors are logged once per streak: {failures}"
    );
    drop(idle);
    // Once the sockets go, service is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = raw(
            server.addr,
            b"OPTIONS /files/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        if status_of(&resp) == 204 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {resp}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_early_409_reaches_a_client_that_sends_its_whole_body_first() {
    let server = Server::start(&[]);
    let url = create(&server, 100 << 20, None);
    let path = url
        .split_once(&server.addr.to_string())
        .unwrap()
        .1
        .to_string();
    // Python's http.client writes the whole body before it reads a byte of the answer.
    let script = r#"
import http.client, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection(host, port, timeout=60)
body = b"\0" * (50 << 20)
c.request("PATCH", path, body=body, headers={
    "Tus-Resumable": "1.0.0",
    "Upload-Offset": "7",
    "Content-Type": "application/offset+octet-stream",
})
r = c.getresponse()
print(r.status, r.getheader("Upload-Offset"))
"#;
    let out = std::process::Command::new(python())
        .args([
            "-c",
            script,
            "127.0.0.1",
            &server.addr.port().to_string(),
            &path,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "409 0");
    assert_eq!(head_offset(&url), Some(0), "nothing of the body was stored");
}

#[test]
fn a_client_that_keeps_sending_past_the_lingering_time_is_cut_off() {
    let server = Server::start(&["--lingering-time", "2s"]);
    let url = create(&server, 100, None);
    let path = url
        .split_once(&server.addr.to_string())
        .unwrap()
        .1
        .to_string();
    let mut s = TcpStream::connect(server.addr).unwrap();
    write!(
        s,
        "PATCH {path} HTTP/1.1\r\nHost: localhost\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 7\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: 10000000000\r\n\r\n"
    )
    .unwrap();
    let mut w = s.try_clone().unwrap();
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        let piece = vec![0u8; 64 * 1024];
        // Sends until the server cuts the connection (or a bound the test sets).
        while started.elapsed() < Duration::from_secs(30) {
            if w.write_all(&piece).is_err() {
                return Some(started.elapsed());
            }
        }
        None
    });
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = s.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert_eq!(status_of(&answer), 409, "{answer}");
    let cut = sender.join().unwrap().expect("never cut off");
    assert!(
        cut >= Duration::from_millis(1500) && cut < Duration::from_secs(10),
        "cut off after {cut:?}"
    );
}

#[test]
fn the_minimum_body_rate_never_cuts_ferry_upload_at_1m_over_32_files() {
    // The default minimum (1 KiB/s) judged every second instead of every minute: ferry's own
    // rate limit spread over 32 files (about 32 KB/s each) must stay far above it.
    let server = Server::start(&["--body-rate-window", "1s"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("files");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..32 {
        random_file(&dir, &format!("f{i:02}.bin"), 64 * 1024, 900 + i);
    }
    let ran = run_ferry(
        &[
            "upload",
            dir.to_str().unwrap(),
            &server.files_url,
            "--limit-rate",
            "1M",
            "--files-at-once",
            "32",
            "--json",
        ],
        &tmp.path().join("state"),
        Duration::from_secs(60),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let done = files_done(&ran.stdout).len();
    assert_eq!(done, 32, "{}", ran.stdout);
    assert!(
        !server.log().contains("TooSlow"),
        "a body was cut: {}",
        server.log()
    );
}
