//! What a crash or a superseded writer leaves in the bucket, and the reconciler that removes
//! it: at startup whatever its age, while serving once it is older than the grace period;
//! whatever a record names stays.

use crate::s3::{endpoint, ensure_bucket, fresh_store};
use crate::support::s3::{CREDS, s3_client};
use crate::support::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

const M: usize = 1 << 20;

/// The key prefix of `store` (`s3://ferry-tests/P` → `P/`).
fn prefix_of(store: &str) -> String {
    format!("{}/", store.trim_start_matches("s3://ferry-tests/"))
}

/// The object key of the upload at `url` under `prefix`.
fn key_of(prefix: &str, url: &str) -> String {
    format!("{prefix}{}", url.rsplit('/').next().unwrap())
}

/// Multipart uploads and objects under `prefix`, as keys (upload ids dropped).
fn listing(rt: &tokio::runtime::Runtime, prefix: &str) -> (Vec<String>, Vec<String>) {
    let c = s3_client(&endpoint());
    rt.block_on(async {
        let uploads = c.list_uploads(prefix).await.unwrap();
        let objects = c.list_objects(prefix).await.unwrap();
        (
            uploads.into_iter().map(|u| u.key).collect(),
            objects.into_iter().map(|o| o.key).collect(),
        )
    })
}

/// A TCP relay to the S3 endpoint that SIGKILLs the process it is armed with the moment the
/// answer to a CreateMultipartUpload (`POST …?uploads`) comes back, before the process can
/// read it: the multipart upload exists, its record never will.
struct KillOnCreate {
    addr: SocketAddr,
    pid: Arc<AtomicU32>,
    fired: Arc<AtomicBool>,
}

impl KillOnCreate {
    fn start(target: SocketAddr) -> KillOnCreate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pid = Arc::new(AtomicU32::new(0));
        let fired = Arc::new(AtomicBool::new(false));
        let (p, f) = (pid.clone(), fired.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                relay(client, server, p.clone(), f.clone());
            }
        });
        KillOnCreate { addr, pid, fired }
    }

    fn arm(&self, pid: u32) {
        self.pid.store(pid, Ordering::SeqCst);
    }
}

fn relay(client: TcpStream, server: TcpStream, pid: Arc<AtomicU32>, fired: Arc<AtomicBool>) {
    let armed = Arc::new(AtomicBool::new(false));
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up_armed = armed.clone();
    let up_pid = pid.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = c_in.read(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if up_pid.load(Ordering::SeqCst) != 0 && is_create_multipart(&text) {
                up_armed.store(true, Ordering::SeqCst);
            }
            if s_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let (mut s_in, mut c_out) = (server, client);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = s_in.read(&mut buf) {
            if armed.load(Ordering::SeqCst) {
                let target = pid.load(Ordering::SeqCst);
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &target.to_string()])
                    .status();
                fired.store(true, Ordering::SeqCst);
                let _ = c_out.shutdown(Shutdown::Both);
                return;
            }
            if c_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_out.shutdown(Shutdown::Write);
    });
}

/// Whether `request` (its head) is a CreateMultipartUpload: `POST /…?…uploads…` (the
/// `uploads` parameter may come anywhere in a signed query).
fn is_create_multipart(request: &str) -> bool {
    let Some(line) = request.lines().next() else {
        return false;
    };
    let target = line.strip_prefix("POST ").unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let query = query.split(' ').next().unwrap_or("");
    query
        .split('&')
        .any(|p| p == "uploads" || p.starts_with("uploads="))
}

/// ferry SIGKILLed right after S3 answered its CreateMultipartUpload, before the upload's
/// record was committed: the multipart upload is left in the bucket with no record naming it,
/// and the reconciler at the next start finds and aborts it.
#[test]
fn a_server_killed_right_after_create_multipart_leaves_nothing_after_restart() {
    ensure_bucket();
    let target: SocketAddr = endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let tap = KillOnCreate::start(target);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = fresh_store();
    let prefix = prefix_of(&store);
    let via_tap = format!("http://{}", tap.addr);
    let args = |e: &str| -> Vec<String> {
        ["--store", &store, "--s3-endpoint", e, "--sync", "none"]
            .map(String::from)
            .to_vec()
    };
    let tapped = args(&via_tap);
    let tapped: Vec<&str> = tapped.iter().map(String::as_str).collect();
    let mut server = Server::start_in_with_env(&data, &tapped, &CREDS);
    tap.arm(server.pid());
    let created = client()
        .post(&server.files_url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1000")
        .send();
    assert!(tap.fired.load(Ordering::SeqCst), "the kill fired");
    assert!(
        created.is_err(),
        "no answer from a killed server: {created:?}"
    );
    server.kill9();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (uploads, _) = listing(&rt, &prefix);
    assert_eq!(
        uploads.len(),
        1,
        "the multipart upload was left: {uploads:?}"
    );
    let direct = args(&endpoint());
    let direct: Vec<&str> = direct.iter().map(String::as_str).collect();
    let server = Server::start_in_with_env(&data, &direct, &CREDS);
    assert!(
        server.log().contains("deleted data that no upload owns"),
        "{}",
        server.log()
    );
    let (uploads, objects) = listing(&rt, &prefix);
    assert!(uploads.is_empty(), "{uploads:?}");
    assert_eq!(objects, vec![format!("{prefix}.ferry-owner")]);
    // And the store serves on.
    let url = create(&server, 3, None);
    assert_eq!(patch(&url, 0, b"abc".to_vec()).0, 204);
    let got = client().get(&url).send().unwrap().bytes().unwrap();
    assert_eq!(got.as_ref(), b"abc");
}

/// What a crash between CreateMultipartUpload and the record's commit leaves (a multipart
/// upload with a part, a staged piece) is found and removed when ferry starts, and an upload
/// that has a record resumes untouched.
#[test]
fn leftovers_no_record_owns_are_removed_at_start_and_live_uploads_resume() {
    ensure_bucket();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = fresh_store();
    let prefix = prefix_of(&store);
    let e = endpoint();
    let args = ["--store", &store, "--s3-endpoint", &e, "--sync", "none"];
    // A live upload: 6 MiB of 10 committed (staged, no part yet).
    let mut server = Server::start_in_with_env(&data, &args, &CREDS);
    let body: Vec<u8> = (0..10 * M).map(|i| (i * 13 % 251) as u8).collect();
    let url = create(&server, body.len() as u64, None);
    assert_eq!(patch(&url, 0, body[..6 * M].to_vec()).0, 204);
    server.terminate(Duration::from_secs(10));
    // The leftovers of a creation that died before its record: no record names this id.
    let orphan = format!("{prefix}00000000000000000000000000000abc");
    let c = s3_client(&e);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let id = c.create_multipart(&orphan).await.unwrap();
        c.upload_part(&orphan, &id, 1, vec![7u8; 5 * M])
            .await
            .unwrap();
        c.put_object(&format!("{orphan}.staged/x"), vec![8u8; 1000])
            .await
            .unwrap();
    });
    let server = Server::start_in_with_env(&data, &args, &CREDS);
    assert!(
        server.log().contains("deleted data that no upload owns"),
        "{}",
        server.log()
    );
    let (uploads, objects) = listing(&rt, &orphan);
    assert!(uploads.is_empty(), "{uploads:?}");
    assert!(objects.is_empty(), "{objects:?}");
    // The live upload goes on from its offset.
    let url = server.rebase(&url);
    assert_eq!(patch(&url, 6 * M as u64, body[6 * M..].to_vec()).0, 204);
    let got = client().get(&url).send().unwrap().bytes().unwrap();
    assert!(got.as_ref() == body.as_slice(), "byte-exact");
}

/// While serving, the reconciler removes leftovers once they are older than the grace period:
/// an unowned multipart upload and staged piece, and of a live upload a staged piece and a
/// multipart upload its record does not name (a writer that died between staging and
/// committing, a retried CreateMultipartUpload). Younger ones stay, and so does everything the
/// record names: the live upload then finishes byte-exact.
#[test]
fn the_reconciler_removes_leftovers_older_than_the_grace_period_while_serving() {
    ensure_bucket();
    let store = fresh_store();
    let prefix = prefix_of(&store);
    let e = endpoint();
    let args = [
        "--store",
        &store,
        "--s3-endpoint",
        &e,
        "--sync",
        "none",
        "--reconcile-interval",
        "500ms",
        "--reconcile-grace",
        "8s",
    ];
    let server = Server::start_with_env(&args, &CREDS);
    let body: Vec<u8> = (0..12 * M).map(|i| (i * 7 % 253) as u8).collect();
    let url = create(&server, body.len() as u64, None);
    assert_eq!(patch(&url, 0, body[..3 * M].to_vec()).0, 204);
    let live = key_of(&prefix, &url);
    let orphan = format!("{prefix}00000000000000000000000000000def");
    let c = s3_client(&e);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let planted = [
        format!("{orphan}.staged/x"),
        format!("{live}.staged/never-committed"),
    ];
    rt.block_on(async {
        c.create_multipart(&orphan).await.unwrap();
        c.create_multipart(&live).await.unwrap();
        for key in &planted {
            c.put_object(key, vec![1u8; 100]).await.unwrap();
        }
    });
    let (uploads, objects) = listing(&rt, &prefix);
    let recorded: Vec<String> = objects
        .iter()
        .filter(|k| k.starts_with(&format!("{live}.staged/")) && !planted.contains(k))
        .cloned()
        .collect();
    assert_eq!(recorded.len(), 1, "the committed piece: {objects:?}");
    assert_eq!(uploads.len(), 3, "{uploads:?}");
    // Younger than the grace period (LastModified is in whole seconds): several passes later,
    // all still there.
    std::thread::sleep(Duration::from_secs(3));
    let (uploads, objects) = listing(&rt, &prefix);
    assert_eq!(uploads.len(), 3, "{uploads:?}");
    assert!(planted.iter().all(|k| objects.contains(k)), "{objects:?}");
    // Older: gone, all but what the record names.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (uploads, objects) = listing(&rt, &prefix);
        let gone = uploads == vec![live.clone()] && !planted.iter().any(|k| objects.contains(k));
        if gone {
            assert!(objects.contains(&recorded[0]), "{objects:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leftovers stayed: {uploads:?} {objects:?}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        server.log().contains("leftovers removed"),
        "{}",
        server.log()
    );
    assert_eq!(patch(&url, 3 * M as u64, body[3 * M..].to_vec()).0, 204);
    let got = client().get(&url).send().unwrap().bytes().unwrap();
    assert!(got.as_ref() == body.as_slice(), "byte-exact");
}

/// The record is the truth and the bucket lost what it names (the multipart upload aborted
/// behind ferry's back): the next start reports it, the upload refuses to go on rather than
/// build on what is gone, `ferry fsck --store …` finds it, and `--repair` drops the record;
/// an intact upload beside it is untouched and fsck is then clean.
#[test]
fn data_lost_from_the_bucket_is_reported_at_start_and_repaired_by_fsck() {
    ensure_bucket();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = fresh_store();
    let prefix = prefix_of(&store);
    let e = endpoint();
    let args = ["--store", &store, "--s3-endpoint", &e, "--sync", "none"];
    let mut server = Server::start_in_with_env(&data, &args, &CREDS);
    let body: Vec<u8> = (0..10 * M).map(|i| (i * 31 % 247) as u8).collect();
    let lost = create(&server, body.len() as u64, None);
    let kept = create(&server, body.len() as u64, None);
    for url in [&lost, &kept] {
        assert_eq!(patch(url, 0, body[..9 * M].to_vec()).0, 204);
    }
    server.terminate(Duration::from_secs(10));
    let c = s3_client(&e);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = key_of(&prefix, &lost);
    rt.block_on(async {
        for u in c.list_uploads(&key).await.unwrap() {
            c.abort(&u.key, &u.upload_id).await.unwrap();
        }
    });
    let fsck = |repair: bool| {
        let mut cmd = std::process::Command::new(ferry_bin());
        cmd.args(["fsck", "--data-dir"])
            .arg(&data)
            .args(["--store", &store, "--s3-endpoint", &e])
            .envs(CREDS);
        if repair {
            cmd.arg("--repair");
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let server = Server::start_in_with_env(&data, &args, &CREDS);
    let lost = server.rebase(&lost);
    let kept = server.rebase(&kept);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("data missing from the store") {
        assert!(Instant::now() < deadline, "not reported: {}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = patch(&lost, 9 * M as u64, body[9 * M..].to_vec());
    assert!(
        status == 404 || status == 410,
        "went on over lost data: {status}"
    );
    drop(server);
    let (code, out) = fsck(false);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("its data is missing"), "{out}");
    let (code, out) = fsck(true);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = fsck(false);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("no problems"), "{out}");
    // Another data directory (no uploads) pointed at this prefix is refused, not "repaired".
    let other = dir.path().join("other");
    drop(Server::start_in(&other, &[]));
    let out = std::process::Command::new(ferry_bin())
        .args(["fsck", "--repair", "--data-dir"])
        .arg(&other)
        .args(["--store", &store, "--s3-endpoint", &e])
        .envs(CREDS)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("has never served"), "{err}");
    let server = Server::start_in_with_env(&data, &args, &CREDS);
    assert_eq!(head_offset(&server.rebase(&lost)), None, "dropped");
    let kept = server.rebase(&kept);
    assert_eq!(patch(&kept, 9 * M as u64, body[9 * M..].to_vec()).0, 204);
    let got = client().get(&kept).send().unwrap().bytes().unwrap();
    assert!(got.as_ref() == body.as_slice(), "byte-exact");
}
