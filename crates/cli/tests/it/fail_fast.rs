//! Failing fast where retrying cannot help: before anything was transferred (no record, no
//! answer yet) a refused connection, an unknown host and a TLS handshake with a plain HTTP
//! server end at once (exit 7), as does an answer that is final (a server that is not tus: 501;
//! 404; exit 3); once a transfer has begun, the same failures are a server restarting, and are
//! waited for.

use crate::support::download::{Kid, ferry_download, text};
use crate::support::upload::free_port;
use crate::support::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn upload(file: &Path, url: &str, state: &Path) -> Ran {
    run_ferry(
        &["upload", file.to_str().unwrap(), url],
        state,
        Duration::from_secs(60),
    )
}

/// Exit `code` within a few seconds (the retry budget would take minutes), saying `says`.
fn assert_fast(r: &Ran, code: i32, says: &str) {
    assert_eq!(r.code, Some(code), "{}", r.stderr);
    assert!(r.stderr.contains(says), "wanted {says:?} in {}", r.stderr);
    assert!(!r.stderr.contains("retrying"), "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(10), "took {:?}", r.elapsed);
}

/// `python3 -m http.server` on a free port: a web server that is not tus (501 to OPTIONS and
/// POST).
struct PlainHttp {
    port: u16,
    _kid: Kid,
}

impl PlainHttp {
    fn start(dir: &Path) -> PlainHttp {
        let port = free_port();
        let kid = Kid(Some(
            Command::new("python3")
                .args([
                    "-m",
                    "http.server",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3"),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "python3 -m http.server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PlainHttp { port, _kid: kid }
    }
}

#[test]
fn unreachable_before_anything_was_transferred_ends_at_once() {
    let t = tempfile::tempdir().unwrap();
    let (file, _) = random_file(t.path(), "f.bin", 3 << 20, 1);
    let state = t.path().join("state");
    let port = free_port();

    let r = upload(&file, &format!("http://127.0.0.1:{port}/files/"), &state);
    assert_fast(&r, 7, &format!("nothing listens on 127.0.0.1:{port}"));
    let out = ferry_download(&state, &[&format!("http://127.0.0.1:{port}/x")]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("nothing listens"));

    let r = upload(&file, "http://no-such-host.invalid/files/", &state);
    assert_fast(&r, 7, "no such host: no-such-host.invalid");

    // https:// to a server that speaks plain HTTP.
    let server = Server::start(&[]);
    let https = server.files_url.replace("http://", "https://");
    let r = upload(&file, &https, &state);
    assert_fast(&r, 7, "use an http:// URL");
    let out = ferry_download(&state, &[&format!("https://{}/files/x", server.addr)]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));

    // Nothing was left to resume.
    assert!(
        std::fs::read_dir(state.join("transfers"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );
}

#[test]
fn a_server_that_is_not_tus_is_named_with_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let (file, _) = random_file(t.path(), "f.bin", 100_000, 2);
    let web = PlainHttp::start(t.path());
    let state = t.path().join("state");
    let r = upload(
        &file,
        &format!("http://127.0.0.1:{}/files/", web.port),
        &state,
    );
    assert_fast(
        &r,
        3,
        "answered 501: it speaks neither tus nor the IETF draft",
    );
    assert!(!r.stderr.contains("DOCTYPE"), "no HTML: {}", r.stderr);
    // A host-only URL: the hint names the path to add.
    let r = upload(&file, &format!("http://127.0.0.1:{}", web.port), &state);
    assert_fast(&r, 3, &format!("try http://127.0.0.1:{}/files/", web.port));
    // A 404: the URL named once, no HTML.
    let url = format!("http://127.0.0.1:{}/missing.bin", web.port);
    let out = ferry_download(&state, &[&url]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.matches(&url).count(), 1, "{err}");
    assert!(err.contains("not found (404)"), "{err}");
}

#[test]
fn once_begun_an_unreachable_server_is_waited_for() {
    let mut server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(t.path(), "f.bin", 6 << 20, 3);
    let f = file.to_str().unwrap();
    let state = t.path().join("state");
    // A first run that leaves a record.
    upload_then_kill(&[f, &server.files_url], &state);
    server.kill9();
    // The next run finds the server down: it waits, and finishes once it is back.
    let err = t.path().join("second.err");
    let mut second = Kid(Some(
        Command::new(ferry_bin())
            .args(["upload", "--state-dir"])
            .arg(&state)
            .args([f, &server.files_url])
            .env_remove("FERRY_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(t.path().join("second.out")).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(second.wait_for(Duration::ZERO).is_none(), "gave up at once");
    server.restart_same_port_after_kill();
    let status = second.wait_for(Duration::from_secs(60)).expect("finishes");
    let said = std::fs::read_to_string(&err).unwrap();
    assert!(status.success(), "{said}");
    assert!(said.contains("nothing listens"), "{said}");
    let url = std::fs::read_to_string(t.path().join("second.out")).unwrap();
    let back = t.path().join("back.bin");
    let out = ferry_download(
        &t.path().join("dstate"),
        &["-o", back.to_str().unwrap(), url.trim()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(sha256_file(&back), sha);
}

#[test]
fn a_download_resumed_into_a_directory_waits_for_its_server() {
    let mut server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(t.path(), "f.bin", 6 << 20, 4);
    let r = run_ferry(
        &["upload", file.to_str().unwrap(), &server.files_url],
        &t.path().join("ustate"),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let url = r.stdout.trim().to_owned();
    let (state, out) = (t.path().join("dstate"), t.path().join("out"));
    std::fs::create_dir(&out).unwrap();
    let o = out.to_str().unwrap();
    let mut first = crate::support::download::spawn_download(
        &state,
        &["--limit-rate", "1M", "-d", o, &url],
        &t.path().join("first.log"),
    );
    crate::support::download::wait_saved(&state, 1, Duration::from_secs(20));
    first.kill9();
    server.kill9();
    let mut second = crate::support::download::spawn_download(
        &state,
        &["-d", o, &url],
        &t.path().join("second.log"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(second.wait_for(Duration::ZERO).is_none(), "gave up at once");
    server.restart_same_port_after_kill();
    let status = second.wait_for(Duration::from_secs(60)).expect("finishes");
    let said = std::fs::read_to_string(t.path().join("second.err")).unwrap_or_default();
    assert!(status.success(), "{said}");
    let got: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().collect();
    assert_eq!(got.len(), 1, "{said}");
    assert_eq!(sha256_file(&got[0].path()), sha);
}
