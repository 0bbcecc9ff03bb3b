//! `ferry upload --protocol`: the IETF draft adapter against the real `ferry serve` (byte-exact,
//! client SIGKILL and resume, server SIGKILL and restart, connection cuts, a large file), and
//! what `auto` picks (tus against ferry; the draft against a server whose OPTIONS shows only
//! the draft; a clear failure against one that shows neither); `--protocol chunks` (Content-Range
//! chunk sessions: byte-exact, parallel streams into one session, both kinds of kill).

use crate::support::proxy::{Faults, Proxy};
use crate::support::*;
use crate::upload::{Env, MIB, RUN_LIMIT, assert_uploaded, wait_committed, wait_forwarded};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lines of the server log for uploads created through the draft / through tus.
fn created_by(server: &Server) -> (usize, usize) {
    let log = server.log();
    let ietf = log.matches("created (ietf)").count();
    let tus = log
        .lines()
        .filter(|l| l.contains("ferry_server::tus: created "))
        .count();
    (ietf, tus)
}

/// The one `--json` line of a finished run.
fn one(done: &crate::upload::Done) -> serde_json::Value {
    let lines = done.json();
    assert_eq!(lines.len(), 1, "{done:#?}");
    lines[0].clone()
}

#[test]
fn ietf_upload_is_byte_exact_and_one_stream() {
    let server = Server::start(&[]);
    let env = Env::new();
    let (f, sha) = env.file("f", 40 * MIB, 71);
    // -j 4 asks for parallel streams, which the draft does not allow: a note, then one stream.
    let done = env
        .upload(
            &[&f],
            &server.files_url,
            &[
                "--protocol",
                "ietf",
                "--json",
                "-j",
                "4",
                "--chunk-size",
                "4M",
            ],
        )
        .wait(RUN_LIMIT)
        .ok();
    let o = one(&done);
    assert_eq!(o["protocol"], "ietf", "{done:#?}");
    assert_eq!(o["verified"], true, "{done:#?}");
    assert_reported_digest(&o, &f);
    assert!(done.stderr.contains("allows one stream"), "{}", done.stderr);
    assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
    // One draft upload, no tus uploads (no concatenation parts).
    assert_eq!(created_by(&server), (1, 0), "{}", server.log());
}

#[test]
fn ietf_small_and_empty_files() {
    let server = Server::start(&[]);
    let env = Env::new();
    for (name, len) in [("small", 1000u64), ("empty", 0)] {
        let (f, sha) = env.file(name, len, 72);
        let done = env
            .upload(&[&f], &server.files_url, &["--protocol", "ietf", "--json"])
            .wait(RUN_LIMIT)
            .ok();
        let o = one(&done);
        assert_eq!(o["protocol"], "ietf");
        assert_eq!(o["verified"], true, "{done:#?}");
        assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
    }
    assert_eq!(created_by(&server), (2, 0), "{}", server.log());
}

#[test]
fn ietf_content_digest_on_request() {
    let server = Server::start(&[]);
    let env = Env::new();
    let (f, sha) = env.file("f", 9 * MIB, 73);
    let done = env
        .upload(
            &[&f],
            &server.files_url,
            &[
                "--protocol",
                "ietf",
                "--checksum",
                "sha256",
                "--json",
                "--chunk-size",
                "2M",
            ],
        )
        .wait(RUN_LIMIT)
        .ok();
    assert_uploaded(&env, one(&done)["url"].as_str().unwrap(), &sha);
    // The draft's Content-Digest knows no CRC-32: a usage error before anything is sent.
    let done = env
        .upload(
            &[&f],
            &server.files_url,
            &["--protocol", "ietf", "--checksum", "crc32"],
        )
        .wait(RUN_LIMIT)
        .code(2);
    assert!(done.stderr.contains("Content-Digest"), "{}", done.stderr);
    assert_eq!(created_by(&server), (1, 0), "{}", server.log());
}

#[test]
fn auto_picks_tus_against_ferry() {
    let server = Server::start(&[]);
    let env = Env::new();
    let (f, sha) = env.file("f", 5 * MIB, 74);
    let done = env
        .upload(&[&f], &server.files_url, &["--json"])
        .wait(RUN_LIMIT)
        .ok();
    let o = one(&done);
    assert_eq!(o["protocol"], "tus", "{done:#?}");
    assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
    assert_eq!(created_by(&server), (0, 1), "{}", server.log());
}

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

/// The server is SIGKILLed twice mid-upload and restarted on the same port; the one client
/// run retries through both and completes verified.
fn server_sigkilled_and_restarted_client_completes(protocol: &str, path: &str, seed: u64) {
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

#[test]
fn chunks_server_sigkilled_and_restarted_client_completes() {
    server_sigkilled_and_restarted_client_completes("chunks", "/chunks/", 78);
}

/// A front for a ferry server that answers OPTIONS itself with `options_headers` (and closes
/// that connection) and passes every other connection through untouched: a server whose
/// OPTIONS shows only what the test wants, while the upload goes to the real ferry server.
struct OptionsFront {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    options_seen: Arc<AtomicU64>,
}

impl OptionsFront {
    fn start(target: SocketAddr, options_headers: &'static str) -> OptionsFront {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let options_seen = Arc::new(AtomicU64::new(0));
        let (stop2, seen2) = (stop.clone(), options_seen.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let seen = seen2.clone();
                        std::thread::spawn(move || front(c, target, options_headers, &seen));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        OptionsFront {
            addr,
            stop,
            options_seen,
        }
    }
}

impl Drop for OptionsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn front(mut c: TcpStream, target: SocketAddr, options_headers: &str, seen: &AtomicU64) {
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut first = [0u8; 8];
    if c.read_exact(&mut first).is_err() {
        return;
    }
    if first.starts_with(b"OPTIONS ") {
        seen.fetch_add(1, Ordering::Relaxed);
        // The request head is small; reading what is there is enough before answering.
        let mut rest = [0u8; 4096];
        let _ = c.read(&mut rest);
        let _ = write!(
            c,
            "HTTP/1.1 204 No Content\r\n{options_headers}Connection: close\r\n\r\n"
        );
        return;
    }
    let Ok(mut s) = TcpStream::connect(target) else {
        return;
    };
    c.set_read_timeout(None).ok();
    if s.write_all(&first).is_err() {
        return;
    }
    let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut s, &mut c);
    let _ = c.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

#[test]
fn auto_picks_the_draft_when_options_shows_only_the_draft() {
    let server = Server::start(&[]);
    let front = OptionsFront::start(
        server.addr,
        "Accept-Patch: application/partial-upload\r\nUpload-Limit: max-size=1000000000\r\n",
    );
    let env = Env::new();
    let (f, sha) = env.file("f", 6 * MIB, 76);
    let url = format!("http://{}/files/", front.addr);
    let done = env
        .upload(&[&f], &url, &["--json", "--chunk-size", "2M"])
        .wait(RUN_LIMIT)
        .ok();
    let o = one(&done);
    assert_eq!(o["protocol"], "ietf", "{done:#?}");
    assert_eq!(o["verified"], true, "{done:#?}");
    assert_eq!(front.options_seen.load(Ordering::Relaxed), 1);
    assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
    assert_eq!(created_by(&server), (1, 0), "{}", server.log());

    // Upload-Limit announces max-size: a larger file is refused before anything is created.
    let small = OptionsFront::start(server.addr, "Upload-Limit: max-size=1000\r\n");
    let done = env
        .upload(&[&f], &format!("http://{}/files/", small.addr), &[])
        .wait(RUN_LIMIT)
        .code(3);
    assert!(done.stderr.contains("at most 1000"), "{}", done.stderr);
    assert_eq!(created_by(&server), (1, 0), "{}", server.log());
}

#[test]
fn auto_fails_clearly_when_options_shows_neither() {
    let server = Server::start(&[]);
    let front = OptionsFront::start(server.addr, "Allow: GET, PUT\r\n");
    let env = Env::new();
    let (f, _) = env.file("f", MIB, 77);
    let done = env
        .upload(&[&f], &format!("http://{}/files/", front.addr), &[])
        .wait(RUN_LIMIT)
        .code(3);
    assert!(
        done.stderr
            .contains("neither tus nor the IETF resumable-upload draft; try --protocol chunks"),
        "{}",
        done.stderr
    );
    assert_eq!(created_by(&server), (0, 0), "{}", server.log());
}

#[test]
fn ietf_client_sigkilled_midway_resumes() {
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
    let (f, sha) = env.file("f", LEN, 78);
    let endpoint = proxy.url("/files/");
    let args = [
        "--protocol",
        "ietf",
        "--json",
        "--chunk-size",
        "2M",
        "--max-chunk",
        "2M",
    ];
    let mut run = env.upload(&[&f], &endpoint, &args);
    wait_committed(&env, LEN / 2, &mut run);
    run.kill9();
    let recs = env.records();
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["protocol"], "ietf", "{recs:?}");
    let url = env.saved_url();
    let at = head_offset(&url).expect("offset");
    assert!((LEN / 2..LEN).contains(&at), "killed at {at}");

    // Plain `auto` resumes too: the record says which protocol the upload speaks.
    let done = env
        .upload(&[&f], &endpoint, &["--json"])
        .wait(RUN_LIMIT)
        .ok();
    let o = one(&done);
    assert_eq!(o["protocol"], "ietf", "{done:#?}");
    assert_eq!(o["url"], url.as_str());
    let resumed = o["resumed_from"].as_u64().unwrap();
    assert!(
        resumed >= at && resumed < LEN,
        "resumed from {resumed}, was at {at}"
    );
    assert!(done.stderr.contains("resuming"), "{}", done.stderr);
    assert_eq!(o["verified"], true, "{done:#?}");
    assert_uploaded(&env, &url, &sha);
    assert_eq!(created_by(&server), (1, 0), "{}", server.log());
}

#[test]
fn ietf_server_sigkilled_and_restarted_client_completes() {
    server_sigkilled_and_restarted_client_completes("ietf", "/files/", 79);
}

#[test]
fn ietf_through_connection_cuts() {
    const LEN: u64 = 24 * MIB;
    let server = Server::start(&[]);
    // Cuts at uneven places on the first connections (a seeded, fixed schedule), then none.
    let schedule = vec![
        3 * MIB + 17,
        700_001,
        5 * MIB + 4093,
        1_234_567,
        2 * MIB + 1,
        99_999,
    ];
    let cuts = schedule.len() as u64;
    let proxy = Proxy::start(
        server.addr,
        Faults {
            cut_schedule: schedule,
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", LEN, 80);
    let done = env
        .upload(
            &[&f],
            &proxy.url("/files/"),
            &["--protocol", "ietf", "--json", "--chunk-size", "4M"],
        )
        .wait(RUN_LIMIT)
        .ok();
    let o = one(&done);
    assert_eq!(o["protocol"], "ietf");
    assert_eq!(o["verified"], true, "{done:#?}");
    assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
    let conns = proxy.connections.load(Ordering::Relaxed);
    assert!(conns > cuts, "{conns} connections for {cuts} cuts");
    assert!(done.stderr.contains("retrying"), "{}", done.stderr);
}

/// `FERRY_IT_BIG` bytes (curl-style size; default 64M) over the draft, straight to the server;
/// prints the throughput.
#[test]
fn ietf_big_file() {
    let len = std::env::var("FERRY_IT_BIG")
        .ok()
        .map(|v| ferry_proto::size::parse_size(&v).expect("FERRY_IT_BIG: a size like 1G"))
        .unwrap_or(64 * MIB);
    let server = Server::start(&["--sync", "none"]);
    let env = Env::new();
    let (f, sha) = env.file("big", len, 81);
    let limit = RUN_LIMIT.max(Duration::from_secs(len / MIB));
    let t0 = Instant::now();
    let done = env
        .upload(&[&f], &server.files_url, &["--protocol", "ietf", "--json"])
        .wait(limit)
        .ok();
    let took = t0.elapsed();
    let o = one(&done);
    assert_eq!(o["protocol"], "ietf");
    assert_eq!(o["verified"], true, "{done:#?}");
    assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
    eprintln!(
        "ietf_big_file: {len} bytes in {:.2}s wall ({:.2}s reported), {:.0} MiB/s",
        took.as_secs_f64(),
        o["seconds"].as_f64().unwrap_or(0.0),
        len as f64 / MIB as f64 / took.as_secs_f64()
    );
}

/// Another writer takes the upload over mid-request: the client's append is answered 409; it
/// asks the offset again (HEAD) and carries on from the server's offset.
#[test]
fn ietf_409_takeover_heads_and_resumes() {
    const LEN: u64 = 24 * MIB;
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(8_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", LEN, 82);
    let mut run = env.upload(
        &[&f],
        &proxy.url("/files/"),
        &[
            "--protocol",
            "ietf",
            "--json",
            "--chunk-size",
            "16M",
            "--max-chunk",
            "16M",
        ],
    );
    // Inside the first (16 MiB) append.
    wait_forwarded(&proxy, 6 * MIB, &mut run);
    let url = env.saved_url();
    let path = format!("/{}", url.splitn(4, '/').nth(3).unwrap());
    // An empty append at the committed offset (where the client's in-flight append started:
    // bytes in flight are committed when a request ends), straight to the server: it passes
    // the first offset check and takes the upload over (the client's request commits what
    // arrived and is answered 409), then is refused itself because the offset moved. Under
    // load the client's request may end between our HEAD and PATCH: then try again.
    let mut tries = Vec::new();
    while !run.stderr().contains("409") && !run.exited() && tries.len() < 20 {
        let committed = head_offset(&url).expect("offset");
        let at = committed.to_string();
        let r = send(
            server.addr,
            "PATCH",
            &path,
            &[
                ("Upload-Draft-Interop-Version", "8"),
                ("Content-Type", "application/partial-upload"),
                ("Upload-Offset", &at),
                ("Upload-Complete", "?0"),
            ],
            b"",
        );
        // 204: the client was between requests, nothing to take over.
        assert!(matches!(status_of(&r), 204 | 409), "{r}");
        tries.push(committed);
        std::thread::sleep(Duration::from_millis(200));
    }
    let done = run.wait(RUN_LIMIT).ok();
    let o = one(&done);
    assert_eq!(o["verified"], true, "{done:#?}");
    assert!(
        done.stderr.contains("409"),
        "takeovers at {tries:?}: {}",
        done.stderr
    );
    assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
    // Sent once plus what the cut request had in flight, not twice.
    let forwarded = proxy.forwarded.load(Ordering::Relaxed);
    assert!(forwarded < LEN + 8 * MIB, "forwarded {forwarded}");
}
