//! Three `ferry serve` instances sharing PostgreSQL (`FERRY_TEST_POSTGRES`) and an S3 store
//! (SeaweedFS, `FERRY_TEST_S3_ENDPOINT`) behind a balancer that sends every request to the next
//! instance: clients finish byte-exact, every upload touches two instances or more, and
//! faults (an instance killed or paused mid-PATCH, two clients at once) lose nothing.

use crate::interop::{Client, Driver};
use crate::support::cluster::{Nodes, signal};
use crate::support::pg::server_url;
use crate::support::proxy::{Faults, Proxy};
use crate::support::upload::*;
use crate::support::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn three() -> Nodes {
    Nodes::start(3, &server_url(), &crate::s3::endpoint(), &[])
}

/// `ferry upload`, one stream and eight, through three instances: byte-exact, and every
/// upload (the eight segments and the final of `-j 8` too) touched two instances or more.
#[test]
fn ferry_upload_alone_and_with_8_streams() {
    let nodes = three();
    let env = Env::new();
    let (one, one_sha) = env.file("one", 40 * MIB + 3, 71);
    let done = env
        .upload(
            &[&one],
            &nodes.files_url(),
            &["--chunk-size", "8M", "-j", "1"],
        )
        .wait(RUN_LIMIT)
        .ok();
    assert_uploaded(&env, &done.url(), &one_sha);
    let (many, many_sha) = env.file("many", 96 * MIB + 11, 72);
    let done = env
        .upload(&[&many], &nodes.files_url(), &["-j", "8"])
        .wait(RUN_LIMIT)
        .ok();
    assert_uploaded(&env, &done.url(), &many_sha);
    nodes.lb.assert_uploads_spread();
}

/// tus-js-client and tuspy, in 5 MiB chunks, through three instances.
#[test]
fn tus_js_client_and_tuspy() {
    let nodes = three();
    let tmp = tempfile::tempdir().unwrap();
    for (n, client) in [Client::TusJs, Client::Tuspy].into_iter().enumerate() {
        client.command();
        let (file, sha) = random_file(tmp.path(), &format!("f{n}"), 24 << 20, 80 + n as u64);
        let out = Driver::spawn(
            client,
            &nodes.files_url(),
            &file,
            &["--chunk-size", "5242880"],
        )
        .finish(Instant::now() + RUN_LIMIT);
        assert!(
            out.status.success(),
            "{client:?}: {}\n{}",
            out.stderr.join("\n"),
            nodes.logs()
        );
        let url = out.stdout.trim().to_string();
        assert_eq!(get_sha256(&url), sha, "{client:?}");
    }
    nodes.lb.assert_uploads_spread();
}

/// The instance serving a PATCH is SIGKILLed: the client resumes on another instance (once
/// the dead one's lease lapses) and finishes byte-exact.
#[test]
fn an_instance_killed_mid_patch() {
    let mut nodes = three();
    let env = Env::new();
    let (f, sha) = env.file("f", 48 * MIB + 5, 73);
    let mut run = env.upload(
        &[&f],
        &nodes.files_url(),
        &["--limit-rate", "8M", "--chunk-size", "16M", "-j", "1"],
    );
    wait_committed(&env, 10 * MIB, &mut run);
    let mut victim = None;
    wait_until(Duration::from_secs(20), "a PATCH in flight", || {
        victim = nodes.lb.serving("PATCH");
        victim.is_some()
    });
    let victim = victim.unwrap();
    nodes.servers[victim].kill9();
    let done = run.wait(RUN_LIMIT).ok();
    assert_uploaded(&env, &done.url(), &sha);
    nodes.lb.assert_uploads_spread();
    let after: Vec<_> = nodes
        .lb
        .log()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.status == 204 && r.instance != victim)
        .collect();
    assert!(!after.is_empty(), "another instance took the PATCHes");
    nodes.restart_after_kill(victim);
    nodes.assert_fsck_clean();
}

/// A raw PATCH on its own connection to one instance: headers and the first `first` bytes of
/// `body` sent, the rest left to [`RawPatch::finish`].
struct RawPatch {
    stream: std::net::TcpStream,
    body: Vec<u8>,
    sent: usize,
}

impl RawPatch {
    fn start(
        addr: std::net::SocketAddr,
        url: &str,
        offset: u64,
        body: Vec<u8>,
        first: usize,
    ) -> Self {
        let path = url.split_once("//").unwrap().1;
        let path = &path[path.find('/').unwrap()..];
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\n\
             Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(&body[..first]).unwrap();
        RawPatch {
            stream,
            body,
            sent: first,
        }
    }

    /// Waits for the answer without sending more: its status and text.
    fn answer(&mut self) -> (u16, String) {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = self.stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer).to_string();
        (status_of(&text), text)
    }

    /// Sends the rest (as far as the server reads it) and returns the status, 0 when the
    /// connection ended without one. The answer is read while sending: a server that answers
    /// before reading everything closes with data unread, and the reset that follows would
    /// discard an answer not read yet.
    fn finish(mut self) -> u16 {
        let mut reader = self.stream.try_clone().unwrap();
        reader
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let answer = std::thread::spawn(move || {
            let mut answer = Vec::new();
            let _ = reader.read_to_end(&mut answer);
            answer
        });
        let _ = self.stream.write_all(&self.body[self.sent..]);
        let answer = answer.join().unwrap();
        let text = String::from_utf8_lossy(&answer);
        if text.is_empty() { 0 } else { status_of(&text) }
    }
}

/// A paused writer (SIGSTOP mid-PATCH, while a part of its is on its way to the store, which
/// it reaches through a slow link) is taken over by another instance, which finishes with
/// different bytes; once the first resumes (SIGCONT), its late part, its next part and its
/// commit are all refused. The upload is the first writer's committed bytes, then exactly the
/// second writer's.
#[test]
fn a_paused_writer_is_fenced_out() {
    let endpoint = crate::s3::endpoint();
    let target: std::net::SocketAddr = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    // Instance 0 reaches the store at 4 MB/s: a part of its takes seconds.
    let slow = Proxy::start(
        target,
        Faults {
            rate: Some(4_000_000),
            ..Faults::default()
        },
    );
    let nodes = Nodes::start_with(
        &server_url(),
        &[format!("http://{}", slow.addr), endpoint.clone()],
        &[],
    );
    let (a, b) = (&nodes.servers[0], &nodes.servers[1]);
    let len = 40 * MIB;
    let first = random_bytes(len as usize, 90);
    let second = random_bytes(len as usize, 91);
    let url = create(a, len, None);
    // Writer 1 commits 8 MiB (one part)...
    let (st, off) = patch(&a.rebase(&url), 0, first[..8 << 20].to_vec());
    assert_eq!((st, off), (204, Some(8 * MIB)), "{}", nodes.logs());
    // ...then sends 12 MiB more in a PATCH that stays open: its second part is on its way
    // (2 MiB of it through the slow link) when it is paused.
    let before = slow.forwarded.load(std::sync::atomic::Ordering::SeqCst);
    let held = RawPatch::start(a.addr, &url, 8 * MIB, first[8 << 20..].to_vec(), 12 << 20);
    let started = std::time::Instant::now();
    while slow.forwarded.load(std::sync::atomic::Ordering::SeqCst) - before < 2 << 20 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no part went out"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(a.pid(), "STOP");
    // What its part has left (in its socket buffers too) waits until it wakes up: the part
    // is still on its way when the successor writes.
    slow.set(Faults {
        stall_after: Some(0),
        ..Faults::default()
    });
    // Writer 2 (another instance) takes over once the paused one's lease lapses.
    let at = head_offset(&b.rebase(&url)).unwrap();
    assert_eq!(at, 8 * MIB, "nothing of the open PATCH was committed");
    let mid = at + 16 * MIB;
    let (st, off) = patch(
        &b.rebase(&url),
        at,
        second[at as usize..mid as usize].to_vec(),
    );
    assert_eq!((st, off), (204, Some(mid)), "{}", nodes.logs());
    // Writer 1 wakes up while the upload is still open: its part in flight lands where no
    // record points, and nothing else it does counts.
    slow.set(Faults::default());
    signal(a.pid(), "CONT");
    let late = held.finish();
    assert_eq!(late, 409, "the paused writer's PATCH: {}", nodes.logs());
    // Refused by the fence (its part reservation or its commit), not merely cut.
    let log = a.log();
    assert!(log.contains("Fenced"), "{log}");
    let (st, off) = patch(&b.rebase(&url), mid, second[mid as usize..].to_vec());
    assert_eq!((st, off), (204, Some(len)), "{}", nodes.logs());
    let mut want = first[..at as usize].to_vec();
    want.extend_from_slice(&second[at as usize..]);
    assert_eq!(
        get_sha256(&b.rebase(&url)),
        sha256(&want),
        "{}",
        nodes.logs()
    );
    assert_eq!(get_sha256(&a.rebase(&url)), sha256(&want));
    let log = a.log();
    assert!(!log.contains("internal error; reference"), "{log}");
}

/// Two clients PATCH one upload through two instances at once. When the first has sent no
/// byte yet, the second takes over and wins (204), the first gets 409. When the first is
/// streaming, it commits what it received and ends with 409, and the second's offset no longer
/// matches (409): the stored bytes are the first's, unmixed.
#[test]
fn two_clients_at_once_through_two_instances() {
    let nodes = three();
    let (a, b) = (&nodes.servers[0], &nodes.servers[1]);
    let len = 16 * MIB;
    let x = random_bytes(len as usize, 92);
    let y = random_bytes(len as usize, 93);
    for round in 0..3 {
        // Headers only: the first request holds the upload without a byte.
        let url = create(a, len, None);
        let first = RawPatch::start(a.addr, &url, 0, x.clone(), 0);
        std::thread::sleep(Duration::from_millis(300));
        let (st, off) = patch(&b.rebase(&url), 0, y.clone());
        assert_eq!(
            (st, off),
            (204, Some(len)),
            "round {round}: {}",
            nodes.logs()
        );
        let lost = first.finish();
        assert!(lost == 409 || lost == 0, "round {round}: first got {lost}");
        assert_eq!(get_sha256(&a.rebase(&url)), sha256(&y), "round {round}");
        // Streaming: the first commits what it received, the second's offset is stale.
        let url = create(a, len, None);
        let first = RawPatch::start(a.addr, &url, 0, x.clone(), 6 << 20);
        std::thread::sleep(Duration::from_millis(500));
        let (st, _) = patch(&b.rebase(&url), 0, y.clone());
        let lost = first.finish();
        let at = head_offset(&b.rebase(&url)).unwrap();
        assert!(
            (st == 409 && (lost == 409 || lost == 0)) || (st == 204 && at == len),
            "round {round}: second {st}, first {lost}, offset {at}"
        );
        if st == 409 {
            assert!(at > 0 && at <= 6 * MIB, "round {round}: offset {at}");
            let (st, off) = patch(&b.rebase(&url), at, x[at as usize..].to_vec());
            assert_eq!((st, off), (204, Some(len)));
            assert_eq!(get_sha256(&b.rebase(&url)), sha256(&x), "round {round}");
        } else {
            assert_eq!(get_sha256(&b.rebase(&url)), sha256(&y), "round {round}");
        }
    }
}

/// PostgreSQL restarted (killed, 5 s down) while an upload goes through three instances:
/// requests meanwhile get 503 with Retry-After, then everything finishes byte-exact.
#[test]
fn a_postgres_restart_mid_upload() {
    let pg = crate::pg::Cluster::start();
    let nodes = Nodes::start(3, &pg.url, &crate::s3::endpoint(), &[]);
    let env = Env::new();
    let (f, sha) = env.file("f", 32 * MIB + 9, 74);
    let mut run = env.upload(
        &[&f],
        &nodes.files_url(),
        &["--limit-rate", "4M", "--chunk-size", "4M", "-j", "1"],
    );
    wait_committed(&env, 8 * MIB, &mut run);
    pg.script("kill");
    std::thread::sleep(Duration::from_secs(5));
    assert!(!run.exited(), "the client waited: {}", run.stderr());
    let url = env.records()[0]["parts"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let answered = client()
        .head(&url)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .unwrap();
    assert_eq!(answered.status().as_u16(), 503);
    assert!(answered.headers().contains_key("retry-after"));
    pg.script("start");
    let done = run.wait(3 * RUN_LIMIT).ok();
    assert_uploaded(&env, &done.url(), &sha);
    nodes.lb.assert_uploads_spread();
    let logs = nodes.logs();
    assert!(
        !logs.contains("internal error; reference"),
        "no 500: {logs}"
    );
}

/// SeaweedFS as a small cluster (a master, three volume servers, one extra replica of each
/// volume) under three instances: one volume server killed mid-upload loses nothing.
#[test]
fn a_volume_server_killed_under_three_instances() {
    let sw = crate::support::s3::Weed::new();
    let endpoint = sw.run(&["cluster"]);
    let nodes = Nodes::start(3, &server_url(), &endpoint, &[]);
    let env = Env::new();
    let (f, sha) = env.file("f", 40 * MIB + 7, 75);
    let mut run = env.upload(
        &[&f],
        &nodes.files_url(),
        &["--limit-rate", "8M", "--chunk-size", "8M", "-j", "1"],
    );
    wait_committed(&env, 12 * MIB, &mut run);
    sw.run(&["kill-volume", "2"]);
    let done = run.wait(3 * RUN_LIMIT).ok();
    assert_uploaded(&env, &done.url(), &sha);
    nodes.lb.assert_uploads_spread();
    let logs = nodes.logs();
    assert!(
        !logs.contains("internal error; reference"),
        "no 500: {logs}"
    );
}

/// A Content-Range chunk session written by four streams through three instances: each
/// range committed atomically, the file byte-exact.
#[test]
fn chunk_sessions_across_instances() {
    let nodes = three();
    let env = Env::new();
    let (f, sha) = env.file("f", 48 * MIB + 1, 76);
    let done = env
        .upload(
            &[&f],
            &nodes.lb.url("/chunks/"),
            &["--protocol", "chunks", "-j", "4", "--chunk-size", "8M"],
        )
        .wait(RUN_LIMIT)
        .ok();
    assert_uploaded(&env, &done.url(), &sha);
    nodes.lb.assert_uploads_spread();
}

/// A name serves in one live instance at a time, and no instance starts while the database is
/// held exclusively (as `ferry fsck --repair` and builds from before leases hold it): exit 2
/// with what to do.
#[test]
fn a_live_namesake_and_an_exclusive_holder_are_refused() {
    let nodes = Nodes::start(1, &server_url(), &crate::s3::endpoint(), &[]);
    let endpoint = crate::s3::endpoint();
    let twin = Nodes::args(0, &nodes.meta, &nodes.store, &endpoint, &[]);
    let twin: Vec<&str> = twin.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = serve_until_exit(&dir.path().join("a"), &twin, &crate::support::s3::CREDS);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("another instance named \"node-0\""), "{err}");
    let id = crate::support::pg::psql(
        &nodes.meta,
        "SELECT value FROM ferry_settings WHERE key = 'database_id'",
    );
    let key = i64::from_str_radix(&id[..15], 16).unwrap();
    let held =
        crate::support::pg::Session::hold(&nodes.meta, &format!("SELECT pg_advisory_lock({key});"));
    let other = Nodes::args(1, &nodes.meta, &nodes.store, &endpoint, &[]);
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    let (code, err) = serve_until_exit(&dir.path().join("b"), &other, &crate::support::s3::CREDS);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("held exclusively"), "{err}");
    drop(held);
}

/// A holder whose database stalls (its lease table locked by another session, so renewals
/// hang) stops at ttl − margin all the same and ends its PATCH with 503 and Retry-After, the
/// server's failure rather than a conflict; once the database answers, the client resumes and
/// finishes byte-exact.
#[test]
fn a_stalled_database_ends_a_patch_with_503() {
    let nodes = Nodes::start(1, &server_url(), &crate::s3::endpoint(), &[]);
    let server = &nodes.servers[0];
    let len = 6 * MIB;
    let data = random_bytes(len as usize, 93);
    let url = create(server, len, None);
    let (st, off) = patch(&url, 0, data[..(MIB as usize)].to_vec());
    assert_eq!((st, off), (204, Some(MIB)), "{}", nodes.logs());
    // A PATCH that sends a little and then waits.
    let mut held = RawPatch::start(server.addr, &url, MIB, data[MIB as usize..].to_vec(), 4096);
    std::thread::sleep(Duration::from_millis(300));
    let lock = crate::support::pg::Session::hold(
        &nodes.meta,
        "BEGIN; LOCK TABLE ferry_leases, ferry_instances IN ACCESS EXCLUSIVE MODE;",
    );
    let locked = Instant::now();
    // It stops ttl − margin after its last renewal (4 s − 1 s here) while the renewal hangs;
    // the lock goes at once, so its commit (within the margin) goes through.
    while !server.log().contains("lease not renewed in time") {
        assert!(
            locked.elapsed() < Duration::from_secs(6),
            "not stopped in time: {}",
            nodes.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(lock);
    let (status, answer) = held.answer();
    assert_eq!(status, 503, "{answer}\n{}", nodes.logs());
    assert!(answer.contains("lost its hold"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after"),
        "{answer}"
    );
    let at = head_offset(&url).unwrap();
    let (st, off) = patch(&url, at, data[at as usize..].to_vec());
    assert_eq!((st, off), (204, Some(len)), "{}", nodes.logs());
    assert_eq!(get_sha256(&url), sha256(&data));
}
