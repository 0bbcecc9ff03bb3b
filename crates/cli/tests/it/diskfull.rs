//! A full disk: the server on a small tmpfs (mounted here, as root; CI runs as root). Writes
//! that hit ENOSPC answer 507 with the committed offset, the committed bytes stay intact, and
//! the upload completes once space is freed; a declared length that cannot fit is refused at
//! creation.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{Server, body_of, header_of, random_bytes, send, sha256, status_of, url_at};

/// A tmpfs mounted on a temp dir, unmounted on drop (declare servers after it, so they stop
/// first).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None (with a loud message) when not root: mounting needs it.
    fn mount(size: &str) -> Option<Tmpfs> {
        if !crate::support::is_root() {
            eprintln!("!!! SKIPPED: disk-full tests need root to mount a tmpfs !!!");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(st.success(), "mount -t tmpfs failed as root");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(self.path())
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free bytes")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy: detach it so that no mount outlives the test.
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// A PATCH whose body is written by another thread while this one reads: a server that answers
/// before reading the whole body (507) closes the connection, and a client that only reads
/// after writing would see a reset instead of the answer.
fn patch_concurrently(addr: SocketAddr, path: &str, offset: u64, body: Vec<u8>) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&body);
    });
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    String::from_utf8_lossy(&out).into_owned()
}

fn path_of(url: &str) -> String {
    let i = url.find("/files/").expect("upload URL");
    url[i..].to_string()
}

fn data_file(data_dir: &Path, url: &str) -> PathBuf {
    let id = url.rsplit('/').next().unwrap();
    data_dir.join("uploads").join(&id[..2]).join(id)
}

#[test]
fn enospc_answers_507_keeps_the_committed_offset_and_resumes_when_space_is_freed() {
    let Some(fs) = Tmpfs::mount("64m") else {
        return;
    };
    let data_dir = fs.path().join("data");
    let server = Server::start_in(&data_dir, &[]);
    let length: u64 = 24 << 20;
    let data = random_bytes(length as usize, 507);
    // Created while it fits; then a filler leaves ~6 MiB free.
    let created = send(
        server.addr,
        "POST",
        "/files/",
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Length", &length.to_string()),
        ],
        b"",
    );
    assert_eq!(status_of(&created), 201, "{created}");
    let url = url_at(
        server.addr,
        &header_of(&created, "location").expect("Location"),
    );
    let path = path_of(&url);
    let filler = fs.path().join("filler");
    let fill = fs.free().saturating_sub(6 << 20);
    std::fs::write(&filler, vec![0u8; fill as usize]).expect("filler");

    let resp = patch_concurrently(server.addr, &path, 0, data.clone());
    assert_eq!(status_of(&resp), 507, "{resp}");
    assert!(body_of(&resp).contains("storage is full"), "{resp}");
    let acked: u64 = header_of(&resp, "upload-offset")
        .and_then(|v| v.parse().ok())
        .expect("507 carries Upload-Offset");
    assert!(acked < length, "{resp}");

    // HEAD tells the same committed offset, and the bytes before it are the ones sent.
    let head = send(
        server.addr,
        "HEAD",
        &path,
        &[("Tus-Resumable", "1.0.0")],
        b"",
    );
    let offset: u64 = header_of(&head, "upload-offset").unwrap().parse().unwrap();
    assert_eq!(offset, acked, "{head}");
    assert!(
        offset > 0,
        "bytes written before ENOSPC were committed: {head}\n{}",
        server.log()
    );
    let stored = std::fs::read(data_file(&data_dir, &url)).expect("data file");
    assert!(stored.len() as u64 >= offset);
    assert!(
        stored[..offset as usize] == data[..offset as usize],
        "committed bytes intact"
    );
    // Still full: another attempt is refused the same way, nothing committed goes backwards.
    let again = patch_concurrently(server.addr, &path, offset, data[offset as usize..].to_vec());
    assert_eq!(status_of(&again), 507, "{again}");
    let after: u64 = header_of(&again, "upload-offset").unwrap().parse().unwrap();
    assert!(after >= offset);

    // Space freed: the upload resumes from HEAD and completes byte-exact.
    std::fs::remove_file(&filler).unwrap();
    let head = send(
        server.addr,
        "HEAD",
        &path,
        &[("Tus-Resumable", "1.0.0")],
        b"",
    );
    let offset: u64 = header_of(&head, "upload-offset").unwrap().parse().unwrap();
    assert!(offset >= after);
    let done = patch_concurrently(server.addr, &path, offset, data[offset as usize..].to_vec());
    assert_eq!(status_of(&done), 204, "{done}");
    assert_eq!(
        header_of(&done, "upload-offset").as_deref(),
        Some(length.to_string().as_str())
    );
    let got = crate::support::client()
        .get(&url)
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(sha256(&got), sha256(&data), "completed byte-exact");
    drop(server);
}

#[test]
fn a_declared_length_that_cannot_fit_is_refused_at_creation() {
    let Some(fs) = Tmpfs::mount("64m") else {
        return;
    };
    let server = Server::start_in(&fs.path().join("data"), &[]);
    let too_big = (100u64 << 20).to_string();
    let tus = send(
        server.addr,
        "POST",
        "/files/",
        &[("Tus-Resumable", "1.0.0"), ("Upload-Length", &too_big)],
        b"",
    );
    assert_eq!(status_of(&tus), 507, "{tus}");
    assert!(body_of(&tus).contains("does not fit"), "{tus}");
    assert!(header_of(&tus, "location").is_none());

    let ietf = send(
        server.addr,
        "POST",
        "/files/",
        &[
            ("Upload-Draft-Interop-Version", "8"),
            ("Upload-Complete", "?0"),
            ("Upload-Length", &too_big),
        ],
        b"",
    );
    assert_eq!(status_of(&ietf), 507, "{ietf}");
    assert!(header_of(&ietf, "location").is_none());

    // ferry upload ends at once, in human units, without the server's free bytes.
    let t = tempfile::tempdir().unwrap();
    let big = t.path().join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let r = crate::support::run_ferry(
        &["upload", big.to_str().unwrap(), &server.files_url],
        &t.path().join("state"),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(
        r.stderr.contains("the server has no room for 100.0 MiB"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("retrying"), "{}", r.stderr);

    // Nothing was created by the refusals.
    let entries = std::fs::read_dir(fs.path().join("data/uploads"))
        .unwrap()
        .count();
    assert_eq!(entries, 0);

    // What fits, and deferred lengths, are accepted.
    let fits = send(
        server.addr,
        "POST",
        "/files/",
        &[("Tus-Resumable", "1.0.0"), ("Upload-Length", "1048576")],
        b"",
    );
    assert_eq!(status_of(&fits), 201, "{fits}");
    let deferred = send(
        server.addr,
        "POST",
        "/files/",
        &[("Tus-Resumable", "1.0.0"), ("Upload-Defer-Length", "1")],
        b"",
    );
    assert_eq!(status_of(&deferred), 201, "{deferred}");
    let ietf_open = send(
        server.addr,
        "POST",
        "/files/",
        &[
            ("Upload-Draft-Interop-Version", "8"),
            ("Upload-Complete", "?0"),
        ],
        b"",
    );
    assert_eq!(status_of(&ietf_open), 201, "{ietf_open}");
    drop(server);
}
