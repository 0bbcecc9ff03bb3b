//! Durability and concurrency: kill -9 mid-upload, the fsync order under strace, takeover of
//! a half-open connection, graceful shutdown.

use crate::support::strace::{Event, parse_strace};
use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Uploads `data` to `url` in `chunk`-sized PATCHes, resuming from HEAD after any failure,
/// until done or `deadline`. Records every offset the server acknowledged and checks that
/// the server never reports less later.
fn upload_resuming(url: &str, data: &[u8], chunk: usize, deadline: Instant) -> Result<(), String> {
    let mut acked: u64 = 0;
    let client = client();
    loop {
        if Instant::now() > deadline {
            return Err(format!("{url}: not finished in time (acked {acked})"));
        }
        let offset = match client.head(url).header("Tus-Resumable", "1.0.0").send() {
            Ok(r) if r.status().as_u16() == 200 => r.headers()["upload-offset"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
            Ok(r) => return Err(format!("{url}: HEAD gave {}", r.status())),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if offset < acked {
            return Err(format!(
                "{url}: server reports offset {offset} after acknowledging {acked}"
            ));
        }
        if offset == data.len() as u64 {
            return Ok(());
        }
        let end = (offset as usize + chunk).min(data.len());
        let resp = client
            .patch(url)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(data[offset as usize..end].to_vec())
            .send();
        if let Ok(r) = resp
            && r.status().as_u16() == 204
        {
            let new: u64 = r.headers()["upload-offset"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            if new != end as u64 {
                return Err(format!("{url}: 204 with offset {new}, expected {end}"));
            }
            acked = new;
        }
    }
}

#[test]
fn kill9_during_ten_concurrent_uploads_then_all_complete_byte_exact() {
    let mut server = Server::start(&[]);
    let size = 12 << 20;
    let uploads: Vec<(String, Arc<Vec<u8>>)> = (0..10)
        .map(|i| {
            let data = Arc::new(random_bytes(size, 100 + i));
            (create(&server, size as u64, None), data)
        })
        .collect();
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut threads = Vec::new();
    for (url, data) in &uploads {
        let (url, data, progress) = (url.clone(), data.clone(), progress.clone());
        threads.push(std::thread::spawn(move || {
            // Report progress so the killer can pick its moments.
            let r = upload_resuming(&url, &data, 1 << 20, deadline);
            progress.fetch_add(1, Ordering::Relaxed);
            r
        }));
    }
    // Kill the server three times while uploads are in flight.
    let mut kills = 0;
    while kills < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(150 + 100 * kills));
        if progress.load(Ordering::Relaxed) == 10 {
            break;
        }
        server.restart_same_port_after_kill();
        kills += 1;
    }
    done.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .expect("uploader thread")
            .expect("upload completes");
    }
    assert!(kills >= 1, "the server was never killed mid-upload");
    for (url, data) in &uploads {
        assert_eq!(
            get_sha256(url),
            sha256(data),
            "{url} byte-exact after {kills} kills"
        );
    }
}

#[test]
fn body_in_flight_at_kill9_is_cut_back_and_upload_completes() {
    let mut server = Server::start(&[]);
    let data = random_bytes(4 << 20, 7);
    let url = create(&server, data.len() as u64, None);
    assert_eq!(patch(&url, 0, data[..1 << 20].to_vec()).0, 204);
    // Start a PATCH that never finishes: 2 MiB of 3 MiB sent, then the server dies.
    let mut conn = TcpStream::connect(server.addr).unwrap();
    let path = url.split_once(&server.addr.to_string()).unwrap().1;
    write!(
        conn,
        "PATCH {path} HTTP/1.1\r\nHost: localhost\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 1048576\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: 3145728\r\n\r\n"
    )
    .unwrap();
    conn.write_all(&data[1 << 20..3 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.restart_same_port_after_kill();
    drop(conn);
    // Nothing of the unfinished body was acknowledged, so nothing of it counts.
    assert_eq!(head_offset(&url), Some(1 << 20));
    assert_eq!(patch(&url, 1 << 20, data[1 << 20..].to_vec()).0, 204);
    assert_eq!(get_sha256(&url), sha256(&data));
}

#[test]
fn every_acknowledgement_follows_data_fdatasync_and_metadata_commit() {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        panic!("strace is not installed: run scripts/setup-test-deps.sh");
    }
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
    let data = random_bytes(3 << 20, 11);
    let url = create(&server, data.len() as u64, None);
    let id = url.rsplit('/').next().unwrap().to_string();
    for i in 0..3 {
        let (status, off) = patch(
            &url,
            (i << 20) as u64,
            data[i << 20..(i + 1) << 20].to_vec(),
        );
        assert_eq!((status, off), (204, Some(((i + 1) << 20) as u64)));
    }
    server.terminate(Duration::from_secs(10));
    let log = std::fs::read_to_string(&log_path).unwrap();
    let events = parse_strace(&log);
    let acks: Vec<&Event> = events
        .iter()
        .filter(|e| e.arg.contains("HTTP/1.1 204"))
        .collect();
    assert_eq!(acks.len(), 3, "three 204s in the trace:\n{log}");
    let mut previous_ack = 0;
    for ack in acks {
        let data_sync = events.iter().rfind(|e| {
            e.line > previous_ack
                && e.line < ack.line
                && e.call == "fdatasync"
                && e.arg.contains(&id)
        });
        let data_sync = data_sync.unwrap_or_else(|| {
            panic!(
                "no fdatasync of the data file before the 204 at line {}:\n{log}",
                ack.line
            )
        });
        let meta_sync = events.iter().find(|e| {
            e.line > data_sync.line
                && e.line < ack.line
                && (e.call == "fsync" || e.call == "fdatasync")
                && e.arg.contains("ferry.redb")
        });
        assert!(
            meta_sync.is_some(),
            "no metadata commit (fsync of ferry.redb) between the data fdatasync at line {} \
             and the 204 at line {}:\n{log}",
            data_sync.line,
            ack.line
        );
        previous_ack = ack.line;
    }
    // Creation: the new file's directory entry is made durable before the 201.
    let created = events
        .iter()
        .find(|e| e.arg.contains("HTTP/1.1 201"))
        .expect("201 in trace");
    assert!(
        events.iter().any(|e| e.line < created.line
            && e.call == "fsync"
            && e.arg.contains("/uploads/")
            && !e.arg.contains(&id)),
        "no directory fsync before the 201:\n{log}"
    );
}

#[test]
fn new_request_takes_over_from_a_half_open_connection() {
    // A long idle timeout: only the takeover rule can free the upload quickly.
    let server = Server::start(&["--body-idle-timeout", "600s"]);
    let data = random_bytes(8 << 20, 21);
    let url = create(&server, data.len() as u64, None);
    let path = url
        .split_once(&server.addr.to_string())
        .unwrap()
        .1
        .to_string();
    // The "old" connection: announces the whole file, sends 3 MiB, then goes silent.
    let mut old = TcpStream::connect(server.addr).unwrap();
    write!(
        old,
        "PATCH {path} HTTP/1.1\r\nHost: localhost\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .unwrap();
    old.write_all(&data[..3 << 20]).unwrap();
    old.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    // The reconnecting client: HEAD, PATCH; on 409 re-read the offset and PATCH again.
    let started = Instant::now();
    let offset = head_offset(&url).unwrap();
    let (status, reported) = patch(&url, offset, data[offset as usize..].to_vec());
    let final_status = if status == 409 {
        let now = reported.expect("409 carries Upload-Offset");
        assert_eq!(
            head_offset(&url),
            Some(now),
            "409 reports the committed offset"
        );
        assert!(
            now > 0,
            "the old connection's bytes were committed on takeover"
        );
        patch(&url, now, data[now as usize..].to_vec()).0
    } else {
        status
    };
    let took = started.elapsed();
    assert_eq!(final_status, 204, "resumed after takeover");
    eprintln!("takeover resume took {took:?}");

    // The old connection was answered (or closed) rather than left hanging.
    old.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = old.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || text.starts_with("HTTP/1.1 409"),
        "old request ended by takeover, got {text:?}"
    );
    assert_eq!(get_sha256(&url), sha256(&data));
}

#[test]
fn sigterm_commits_the_body_in_flight_and_exits_cleanly() {
    let mut server = Server::start(&[]);
    let data = random_bytes(6 << 20, 31);
    let url = create(&server, data.len() as u64, None);
    let path = url
        .split_once(&server.addr.to_string())
        .unwrap()
        .1
        .to_string();
    let mut conn = TcpStream::connect(server.addr).unwrap();
    write!(
        conn,
        "PATCH {path} HTTP/1.1\r\nHost: localhost\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .unwrap();
    conn.write_all(&data[..2 << 20]).unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let response = Arc::new(Mutex::new(String::new()));
    let reader = {
        let mut c = conn.try_clone().unwrap();
        let response = response.clone();
        std::thread::spawn(move || {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = vec![0u8; 4096];
            if let Ok(n) = c.read(&mut buf) {
                *response.lock().unwrap() = String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        })
    };
    let status = server
        .terminate(Duration::from_secs(15))
        .expect("server exits");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    reader.join().unwrap();
    let resp = response.lock().unwrap().clone();
    assert_eq!(
        status_of(&resp),
        503,
        "in-flight request answered: {resp:?}"
    );
    assert_eq!(
        header_of(&resp, "upload-offset").as_deref(),
        Some("2097152")
    );
    drop(conn);
    // A new server on the same data sees exactly what was acknowledged.
    server.restart_same_port_after_kill();
    assert_eq!(head_offset(&url), Some(2 << 20));
    assert_eq!(patch(&url, 2 << 20, data[2 << 20..].to_vec()).0, 204);
    assert_eq!(get_sha256(&url), sha256(&data));
}
