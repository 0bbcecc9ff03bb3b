//! `ferry upload`, `ferry status` and `ferry forget` end to end: the real `ferry` binary as the
//! client, against a real `ferry serve` (directly or through the fault-injecting proxy), over
//! tus and, in the inner modules, `--protocol ietf` and `--protocol auto`. Against third-party
//! servers: `interop::servers`.
//!
//! Every client run gets `--state-dir` in the test's temp dir, writes stdout/stderr to files
//! there, and is owned by a [`Run`] guard that SIGKILLs and reaps it on drop; every wait is
//! bounded.

use crate::support::proxy::{Faults, Proxy};
use crate::support::upload::*;
use crate::support::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

// ------------------------------------------------------------- happy path ----

#[test]
fn prints_the_url_json_and_leaves_no_state() {
    let server = Server::start(&[]);
    let env = Env::new();
    let (a, sha_a) = env.file("a.bin", 5 * MIB + 123, 1);
    let (b, sha_b) = env.file("b.bin", 300 * KIB, 2);
    let empty = env.path("empty");
    std::fs::File::create(&empty).unwrap();

    // Plain: stdout is exactly the URL, nothing else.
    let done = env
        .upload(&[&a], &server.files_url, &[])
        .wait(RUN_LIMIT)
        .ok();
    let url = done.url();
    assert_eq!(done.stdout, format!("{url}\n"));
    assert!(url.starts_with(&server.files_url), "{url}");
    assert!(
        !done.stderr.contains("not verified"),
        "ferry serve exposes Repr-Digest: {}",
        done.stderr
    );
    assert_uploaded(&env, &url, &sha_a);

    // --json: one object per file, in order, with the documented fields.
    let done = env
        .upload(&[&b, &empty], &server.files_url, &["--json"])
        .wait(RUN_LIMIT)
        .ok();
    let objs = done.json();
    assert_eq!(objs.len(), 2, "{done:#?}");
    for (o, (len, sha, path)) in objs
        .iter()
        .zip([(300 * KIB, &sha_b, &b), (0, &EMPTY_SHA256.into(), &empty)])
    {
        let url = o["url"].as_str().expect("url");
        assert!(url.starts_with(&server.files_url), "{o}");
        assert_eq!(o["bytes"], len, "{o}");
        assert!(o["seconds"].as_f64().is_some_and(|s| s >= 0.0), "{o}");
        assert!(
            o.get("crc64nvme").is_some(),
            "ferry serve offers CRC-64/NVME: {o}"
        );
        assert_reported_digest(o, path);
        assert_eq!(o["verified"], true, "{o}");
        assert_uploaded(&env, url, sha);
    }
}

/// A file over the 8 MiB inline-digest limit: ferry's server has only the CRC at completion, so
/// `--digest blake3` / `sha256` make it compute the cryptographic digest on request.
#[test]
fn digest_flag_asks_for_a_cryptographic_digest() {
    let server = Server::start(&[]);
    let env = Env::new();
    let (f, sha) = env.file("big.bin", 9 * MIB + 7, 21);
    let data = std::fs::read(&f).unwrap();
    for (flag, key, want) in [
        ("blake3", "blake3", blake3::hash(&data).to_hex().to_string()),
        ("sha256", "sha256", sha.clone()),
        (
            "crc64nvme",
            "crc64nvme",
            format!("{:016x}", crc64nvme(&data)),
        ),
    ] {
        let done = env
            .upload(&[&f], &server.files_url, &["--json", "--digest", flag])
            .wait(RUN_LIMIT)
            .ok();
        let out = done.json();
        assert_eq!(out.len(), 1, "{done:#?}");
        assert_eq!(
            out[0][key].as_str(),
            Some(want.as_str()),
            "{flag}: {}",
            out[0]
        );
        assert_eq!(out[0]["verified"], true, "{flag}: {}", out[0]);
        assert_uploaded(&env, out[0]["url"].as_str().unwrap(), &sha);
    }
    // A chunk session over 8 MiB gets no cryptographic digest (sessions do not act on
    // Want-Repr-Digest): asked for one, the client says so instead of comparing the CRC.
    let chunks = format!("http://{}/chunks/", server.addr);
    let done = env
        .upload(
            &[&f],
            &chunks,
            &["--protocol", "chunks", "--json", "--digest", "blake3"],
        )
        .wait(RUN_LIMIT)
        .ok();
    let out = done.json();
    assert_eq!(out[0]["verified"], false, "{done:#?}");
    assert!(
        done.stderr
            .contains("did not give the blake3 digest asked for (--digest)"),
        "{done:#?}"
    );
    assert_uploaded(&env, out[0]["url"].as_str().unwrap(), &sha);
}

// ------------------------------------------------------------- exit codes ----

/// A checksum a trailer cannot carry (the server hashes only the CRCs on the way) goes in a
/// header, hashed in a first pass: every algorithm uploads whole, in several requests.
#[test]
fn every_checksum_algorithm_uploads() {
    let server = Server::start(&["--sync", "none"]);
    let env = Env::new();
    for (i, checksum) in ["crc32", "crc64nvme", "sha1", "sha256", "blake3"]
        .into_iter()
        .enumerate()
    {
        let (f, sha) = env.file(&format!("c{i}"), 3 * MIB + 5, 40 + i as u64);
        let args = ["--checksum", checksum, "--chunk-size", "1M", "-j", "1"];
        let done = env
            .upload(&[&f], &server.files_url, &args)
            .wait(RUN_LIMIT)
            .ok();
        assert_uploaded(&env, &done.url(), &sha);
        // Sent in headers from the start, not as a trailer the server refused.
        assert!(
            !done.stderr.contains("checksum trailer"),
            "--checksum {checksum}: {}",
            done.stderr
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    let (f, _) = env.file("f", 1000, 3);
    let f = f.to_str().unwrap();
    let missing = env.path("missing");
    let cases: Vec<Vec<&str>> = vec![
        vec!["upload", f, "not a url"],
        vec!["upload", f, "ftp://127.0.0.1/files/"],
        vec![
            "upload",
            missing.to_str().unwrap(),
            "http://127.0.0.1:9/files/",
        ],
        vec![
            "upload",
            f,
            "http://127.0.0.1:9/files/",
            "--chunk-size",
            "lots",
        ],
        vec![
            "upload",
            f,
            "http://127.0.0.1:9/files/",
            "--retry-time",
            "soon",
        ],
        vec!["upload", f, "http://127.0.0.1:9/files/", "--no-such-flag"],
        vec!["upload", "http://127.0.0.1:9/files/"],
    ];
    for args in cases {
        let done = env.run(&args);
        assert_eq!(done.code, Some(2), "{args:?}: {done:#?}");
        assert!(done.stdout.is_empty(), "{args:?}: {done:#?}");
        assert!(!done.stderr.trim().is_empty(), "{args:?}: says why");
    }
    let done = env.run([
        "upload",
        missing.to_str().unwrap(),
        "http://127.0.0.1:9/files/",
    ]);
    assert!(done.stderr.contains("missing"), "{done:#?}");
    assert!(env.records().is_empty());
}

#[test]
fn refused_by_the_server_exits_3() {
    let server = Server::start(&["--max-size", "1M"]);
    let env = Env::new();
    let (f, _) = env.file("big", 2 * MIB, 4);
    let done = env
        .upload(&[&f], &server.files_url, &[])
        .wait(RUN_LIMIT)
        .code(3);
    assert!(done.stdout.is_empty(), "{done:#?}");
    assert!(
        done.stderr
            .contains("2.0 MiB is more than the server accepts (1.0 MiB)"),
        "says the size and the limit: {}",
        done.stderr
    );
    assert!(env.records().is_empty(), "nothing to resume");
}

#[test]
fn server_killed_exhausts_then_a_rerun_resumes() {
    let mut server = Server::start(&[]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(4_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", 8 * MIB, 6);
    let endpoint = proxy.url("/files/");
    // Small requests, so that part of the file is committed when the server dies.
    let args = [
        "--retries",
        "2",
        "--retry-time",
        "3s",
        "--chunk-size",
        "1M",
        "--max-chunk",
        "1M",
    ];

    let mut run = env.upload(&[&f], &endpoint, &args);
    wait_committed(&env, 2 * MIB, &mut run);
    server.kill9();
    let done = run.wait(Duration::from_secs(30)).code(4);
    assert!(
        done.stderr.contains("run the same command again to resume"),
        "{}",
        done.stderr
    );
    assert!(done.stdout.is_empty());

    // `ferry status` lists it.
    let url = env.saved_url();
    let status = env.run(["status"]).ok();
    assert!(
        status.stdout.contains(&url) && status.stdout.contains(f.to_str().unwrap()),
        "{status:#?}"
    );

    // The server comes back; the same command resumes and completes.
    server.restart_same_port_after_kill();
    proxy.set(Faults::default());
    let done = env.upload(&[&f], &endpoint, &args).wait(RUN_LIMIT).ok();
    assert!(done.stderr.contains("resuming"), "{}", done.stderr);
    assert_eq!(done.url(), url);
    assert_uploaded(&env, &url, &sha);
}

// ------------------------------------------------------------ proxy faults ----

/// Uploads `len` bytes through a proxy with `faults` and checks the result; returns the proxy
/// and the client's stderr.
fn upload_through(faults: Faults, len: u64, extra: &[&str]) -> (Proxy, Done) {
    let server = Server::start(&[]);
    let proxy = Proxy::start(server.addr, faults);
    let env = Env::new();
    let (f, sha) = env.file("f", len, 7);
    let done = env
        .upload(&[&f], &proxy.url("/files/"), &[&["--json"], extra].concat())
        .wait(RUN_LIMIT)
        .ok();
    let o = &done.json()[0];
    let url = o["url"].as_str().unwrap();
    assert!(url.starts_with(&proxy.url("/files/")), "{url}");
    assert_eq!(o["verified"], true);
    assert_reported_digest(o, &f);
    assert_uploaded(&env, url, &sha);
    assert!(proxy.forwarded.load(Ordering::Relaxed) >= len);
    (proxy, done)
}

#[test]
fn connections_cut_repeatedly() {
    let (proxy, done) = upload_through(
        Faults {
            cut_after: Some(3 * MIB),
            ..Faults::default()
        },
        12 * MIB,
        &[],
    );
    let conns = proxy.connections.load(Ordering::Relaxed);
    assert!(conns >= 4, "each connection carries at most 3 MiB: {conns}");
    assert!(done.stderr.contains("retrying"), "{}", done.stderr);
}

#[test]
fn connections_reset_repeatedly() {
    let (proxy, done) = upload_through(
        Faults {
            reset_after: Some(3 * MIB),
            ..Faults::default()
        },
        10 * MIB,
        &[],
    );
    let conns = proxy.connections.load(Ordering::Relaxed);
    assert!(conns >= 4, "each connection carries at most 3 MiB: {conns}");
    assert!(done.stderr.contains("retrying"), "{}", done.stderr);
}

#[test]
fn slow_and_throttled_link() {
    let rate = 4_000_000;
    let len = 6 * MIB;
    let (_proxy, done) = upload_through(
        Faults {
            delay: Duration::from_millis(5),
            rate: Some(rate),
            ..Faults::default()
        },
        len,
        &[],
    );
    // The cap was in the path (a single connection cannot beat it).
    let floor = Duration::from_secs_f64(len as f64 / rate as f64 * 0.9);
    assert!(done.elapsed >= floor, "{:?} < {floor:?}", done.elapsed);
}

#[test]
fn stall_is_detected_by_the_stall_timeout() {
    let server = Server::start(&[]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            stall_after: Some(2 * MIB),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", 6 * MIB, 20);
    let started = Instant::now();
    let run = env.upload(&[&f], &proxy.url("/files/"), &["--stall-timeout", "2s"]);
    wait_until(RUN_LIMIT, "the stall to be noticed", || {
        run.stderr()
            .contains("no progress for 2s (stalled connection)")
    });
    // The link recovers.
    proxy.set(Faults::default());
    let done = run.wait(RUN_LIMIT).ok();
    assert_uploaded(&env, &done.url(), &sha);
    assert!(
        proxy.connections.load(Ordering::Relaxed) >= 2,
        "reconnected"
    );
    // Generous: the default 30 s stall timeout (or the server's 60 s body timeout) would blow
    // it.
    assert!(started.elapsed() < Duration::from_secs(60), "{done:#?}");
}

/// A request whose body takes longer than --stall-timeout to send is not a stall while its
/// bytes keep moving.
#[test]
fn slow_requests_are_not_mistaken_for_stalls() {
    let server = Server::start(&["--sync", "none"]);
    let env = Env::new();
    let (f, sha) = env.file("f", 3 * MIB, 21);
    // One 3 MiB request at 1 MB/s: about 3 s, three times the stall timeout.
    let done = env
        .upload(
            &[&f],
            &server.files_url,
            &[
                "--limit-rate",
                "1M",
                "--stall-timeout",
                "1s",
                "--chunk-size",
                "4M",
            ],
        )
        .wait(RUN_LIMIT)
        .ok();
    assert!(!done.stderr.contains("retrying"), "{}", done.stderr);
    assert_uploaded(&env, &done.url(), &sha);
}

// ------------------------------------------------------------- kill -9 ----

#[test]
fn client_sigkilled_five_times_resumes_with_bounded_resends() {
    const LEN: u64 = 64 * MIB;
    const CHUNK: u64 = 4 * MIB;
    const KILLS: u64 = 5;
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(24_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", LEN, 8);
    let endpoint = proxy.url("/files/");
    // One stream (-j 1), so "one chunk per kill" is the bound.
    let args = ["--chunk-size", "4M", "--max-chunk", "4M", "-j", "1"];
    let mut runs = 0u64;
    for k in 0..KILLS {
        let before = proxy.forwarded.load(Ordering::Relaxed);
        let mut run = env.upload(&[&f], &endpoint, &args);
        runs += 1;
        // Kill somewhere inside a chunk (not on a boundary): 6.5 MiB into this run.
        wait_forwarded(&proxy, before + 6 * MIB + MIB / 2, &mut run);
        run.kill9();
        let err = run.stderr();
        if k > 0 {
            assert!(err.contains("resuming"), "run {k}: {err}");
        }
    }
    let done = env.upload(&[&f], &endpoint, &args).wait(RUN_LIMIT).ok();
    runs += 1;
    assert!(done.stderr.contains("resuming"), "{}", done.stderr);
    assert_uploaded(&env, &done.url(), &sha);
    // Every byte crosses once, plus at most one chunk per kill, plus request heads (generously
    // 64 KiB for each request: per run OPTIONS, HEAD, HEAD+verify; one PATCH per chunk).
    let forwarded = proxy.forwarded.load(Ordering::Relaxed);
    let requests = LEN / CHUNK + KILLS + 4 * runs;
    let bound = LEN + KILLS * CHUNK + requests * 64 * KIB;
    assert!(
        forwarded <= bound,
        "forwarded {forwarded} > {bound} (file {LEN}, {KILLS} kills of {CHUNK}-byte chunks)"
    );
}

#[test]
fn server_sigkilled_five_times_client_carries_on() {
    const LEN: u64 = 40 * MIB;
    let mut server = Server::start(&[]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(16_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", LEN, 9);
    let mut run = env.upload(&[&f], &proxy.url("/files/"), &["--json", "-j", "1"]);
    for k in 1..=5 {
        wait_forwarded(&proxy, k * 6 * MIB, &mut run);
        server.restart_same_port_after_kill();
    }
    let done = run.wait(RUN_LIMIT).ok();
    let o = &done.json()[0];
    assert_eq!(o["verified"], true, "{done:#?}");
    assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
}

// ------------------------------------------------------------ file changes ----

/// Rewrites `path` with new pseudo-random content of the same size; returns the new sha256.
fn rewrite_same_size(path: &Path, seed: u64) -> String {
    let len = std::fs::metadata(path).unwrap().len();
    let (tmp, sha) = random_file(path.parent().unwrap(), "rewrite.tmp", len as usize, seed);
    // Overwrite in place (same inode), as an editor saving over the file might.
    std::fs::write(path, std::fs::read(&tmp).unwrap()).unwrap();
    std::fs::remove_file(tmp).unwrap();
    sha
}

#[test]
fn file_changed_between_runs_is_uploaded_afresh() {
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(8_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, old_sha) = env.file("f", 12 * MIB, 10);
    let endpoint = proxy.url("/files/");
    let mut run = env.upload(&[&f], &endpoint, &[]);
    wait_forwarded(&proxy, 3 * MIB, &mut run);
    run.kill9();
    let stale = env.saved_url();
    assert_eq!(head_status(&stale), 200);

    let new_sha = rewrite_same_size(&f, 11);
    assert_ne!(new_sha, old_sha);
    proxy.set(Faults::default());
    let done = env.upload(&[&f], &endpoint, &[]).wait(RUN_LIMIT).ok();
    assert!(
        done.stderr.contains("changed since the last run") && done.stderr.contains("afresh"),
        "{}",
        done.stderr
    );
    assert!(!done.stderr.contains("resuming"), "{}", done.stderr);
    let url = done.url();
    assert_ne!(url, stale);
    assert_uploaded(&env, &url, &new_sha);
    assert_eq!(
        head_status(&stale),
        404,
        "the stale server upload was deleted"
    );
}

#[test]
fn file_changed_during_the_upload_exits_6() {
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(4_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let len = 8 * MIB;
    let (f, _) = env.file("f", len, 12);
    let endpoint = proxy.url("/files/");
    let mut run = env.upload(&[&f], &endpoint, &[]);
    wait_forwarded(&proxy, 2 * MIB, &mut run);
    // Same size, one byte near the end changed.
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.write_all_at(b"\xff\x00\xff", len - 10).unwrap();
    drop(file);
    let done = run.wait(RUN_LIMIT).code(6);
    assert!(done.stdout.is_empty(), "{done:#?}");
    assert!(
        done.stderr.contains("changed during the upload"),
        "{}",
        done.stderr
    );

    // Running again uploads the file as it is now.
    let now_sha = sha256_file(&f);
    proxy.set(Faults::default());
    let done = env.upload(&[&f], &endpoint, &[]).wait(RUN_LIMIT).ok();
    assert!(done.stderr.contains("afresh"), "{}", done.stderr);
    assert_uploaded(&env, &done.url(), &now_sha);
}

/// A file that shrinks mid-upload fails the reads of it: that is a change (exit 6), not a
/// network error to retry, with or without per-request checksums.
#[test]
fn file_truncated_during_the_upload_exits_6() {
    let server = Server::start(&["--sync", "none"]);
    let env = Env::new();
    for (i, checksum) in ["auto", "none"].into_iter().enumerate() {
        let (f, _) = env.file(&format!("f{i}"), 8 * MIB, 22 + i as u64);
        let args = [
            "--limit-rate",
            "4M",
            "--chunk-size",
            "1M",
            "--checksum",
            checksum,
        ];
        let mut run = env.upload(&[&f], &server.files_url, &args);
        wait_committed(&env, 2 * MIB, &mut run);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(3 * MIB)
            .unwrap();
        let done = run.wait(Duration::from_secs(30)).code(6);
        assert!(
            done.stderr.contains("changed during the upload"),
            "--checksum {checksum}: {}",
            done.stderr
        );
        assert!(done.elapsed < Duration::from_secs(20), "{done:#?}");
        // Clean up for the next round (the record stays for a re-run).
        env.run(["forget", f.to_str().unwrap()]).ok();
    }
}

// -------------------------------------------------------- status / forget ----

#[test]
fn status_lists_and_forget_deletes() {
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(4_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let len = 16 * MIB;
    let (f, _) = env.file("f", len, 13);
    let (g, _) = env.file("g", len, 14);
    let endpoint = proxy.url("/files/");
    for file in [&f, &g] {
        let before = proxy.forwarded.load(Ordering::Relaxed);
        let mut run = env.upload(&[file], &endpoint, &[]);
        wait_forwarded(&proxy, before + MIB, &mut run);
        run.kill9();
    }
    let records = env.records();
    assert_eq!(records.len(), 2);
    let url_of = |p: &Path| {
        let src = std::fs::canonicalize(p).unwrap();
        records
            .iter()
            .find(|r| r["source"].as_str() == src.to_str())
            .map(|r| {
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["parts"][0]["url"].as_str().unwrap().to_string(),
                )
            })
            .unwrap()
    };
    let (key_f, url_f) = url_of(&f);
    let (key_g, url_g) = url_of(&g);

    let status = env.run(["status"]).ok();
    let lines: Vec<&str> = status.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{status:#?}");
    for (key, url, p) in [(&key_f, &url_f, &f), (&key_g, &url_g, &g)] {
        let line = lines.iter().find(|l| l.contains(key.as_str())).unwrap();
        assert!(line.contains(url.as_str()), "{line}");
        assert!(line.contains(&len.to_string()), "{line}");
        assert!(
            line.contains(p.file_name().unwrap().to_str().unwrap()),
            "{line}"
        );
    }
    let status = env.run(["status", "--json"]).ok();
    let objs = status.json_lines();
    assert_eq!(objs.len(), 2, "{status:#?}");
    for o in &objs {
        assert_eq!(o["kind"], "upload");
        assert_eq!(o["bytes"], len);
        assert_eq!(o["endpoint"].as_str(), Some(endpoint.as_str()));
        let want = if o["key"] == key_f.as_str() {
            &url_f
        } else {
            &url_g
        };
        assert_eq!(o["urls"], serde_json::json!([want]), "{o}");
    }

    // Forget one by path, the other by key: both server-side uploads are deleted.
    assert_eq!(head_status(&url_f), 200);
    let done = env.run(["forget", f.to_str().unwrap()]).ok();
    assert!(done.stderr.contains(&url_f), "{done:#?}");
    assert_eq!(head_status(&url_f), 404);
    assert_eq!(env.records().len(), 1);
    let done = env.run(["forget", &key_g]).ok();
    assert!(done.stderr.contains(&url_g), "{done:#?}");
    assert_eq!(head_status(&url_g), 404);

    let status = env.run(["status"]).ok();
    assert!(status.stdout.is_empty(), "{status:#?}");
    assert!(status.stderr.contains("no unfinished transfers"));
    assert!(env.run(["status", "--json"]).ok().stdout.is_empty());
    env.run(["forget", f.to_str().unwrap()]).code(2);
}

// --------------------------------------------------------------- checksums ----

#[test]
fn corrupted_bytes_are_caught_by_the_checksum_and_resent() {
    let (proxy, done) = upload_through(
        Faults {
            // Inside the first PATCH body (the requests before it are a few hundred bytes).
            corrupt_at: Some(3 * MIB),
            ..Faults::default()
        },
        8 * MIB,
        &[],
    );
    assert_eq!(
        proxy.corrupted.load(Ordering::Relaxed),
        1,
        "a byte was flipped"
    );
    assert!(
        done.stderr.contains("460"),
        "the server refused the checksum: {}",
        done.stderr
    );
}

#[test]
fn without_checksums_corruption_fails_verification_exit_5() {
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            corrupt_at: Some(3 * MIB),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", 8 * MIB, 15);
    let done = env
        .upload(&[&f], &proxy.url("/files/"), &["--checksum", "none"])
        .wait(RUN_LIMIT)
        .code(5);
    assert_eq!(proxy.corrupted.load(Ordering::Relaxed), 1);
    assert!(done.stdout.is_empty(), "{done:#?}");
    assert_ne!(get_sha256(&env.saved_url()), sha);
    // Against ferry serve the whole-file check is CRC-64/NVME.
    let stored = get_crc64nvme(&env.saved_url());
    let sha = format!("{:016x}", crc64nvme(&std::fs::read(&f).unwrap()));
    assert_ne!(stored, sha);
    assert!(
        done.stderr.contains(&stored) && done.stderr.contains(&sha),
        "names both digests ({stored} stored, {sha} local): {}",
        done.stderr
    );
}

/// Parallel streams with verification off: the whole-file hash reader that runs beside the
/// streams has nothing to do and must not hold the upload up (it once re-read the file forever).
#[test]
fn parallel_streams_without_verification_complete() {
    let server = Server::start(&["--sync", "none"]);
    let env = Env::new();
    let (f, sha) = env.file("f", 40 * MIB, 31);
    let done = env
        .upload(
            &[&f],
            &server.files_url,
            &["-j", "4", "--no-verify", "--checksum", "none", "--json"],
        )
        .wait(RUN_LIMIT)
        .ok();
    let o = &done.json()[0];
    assert_eq!(o["verified"], false, "{o}");
    assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
}

// ----------------------------------------------------------------- Ctrl-C ----

#[test]
fn ctrl_c_stops_quickly_and_a_rerun_resumes() {
    let server = Server::start(&["--sync", "none"]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(4_000_000),
            ..Faults::default()
        },
    );
    let env = Env::new();
    let (f, sha) = env.file("f", 16 * MIB, 16);
    let endpoint = proxy.url("/files/");
    // One stream: the proxy paces each connection, and the interrupt must land mid-file.
    let mut run = env.upload(&[&f], &endpoint, &["-j", "1"]);
    wait_committed(&env, 2 * MIB, &mut run);
    let sent = Instant::now();
    run.signal("INT");
    let done = run.wait(RUN_LIMIT).code(130);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        sent.elapsed()
    );
    assert!(
        done.stderr.contains("interrupted")
            && done.stderr.contains("run the same command again to resume"),
        "{}",
        done.stderr
    );
    assert!(done.stdout.is_empty());
    assert_eq!(env.records().len(), 1, "resumable state kept");

    proxy.set(Faults::default());
    let done = env.upload(&[&f], &endpoint, &[]).wait(RUN_LIMIT).ok();
    assert!(done.stderr.contains("resuming"), "{}", done.stderr);
    assert_uploaded(&env, &done.url(), &sha);
}

/// Ctrl-C while a request hangs (a server that accepts connections but never answers) still
/// stops at once, rather than after the stall timeout.
#[test]
fn ctrl_c_while_the_server_does_not_answer() {
    // Bound but never accepted: connections complete in the backlog, requests go unanswered.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/files/", hole.local_addr().unwrap());
    let env = Env::new();
    let (f, _) = env.file("f", MIB, 24);
    let run = env.upload(&[&f], &url, &[]);
    // Long enough for the client to be waiting on its first request.
    std::thread::sleep(Duration::from_millis(1500));
    let sent = Instant::now();
    run.signal("INT");
    let done = run.wait(RUN_LIMIT).code(130);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "stopped {:?} after Ctrl-C: {done:#?}",
        sent.elapsed()
    );
    assert!(done.stderr.contains("interrupted"), "{}", done.stderr);
    drop(hole);
}

/// `--protocol ietf`: the IETF draft adapter against `ferry serve` (byte-exact, client and
/// server SIGKILLs, connection cuts, a large file, a 409 takeover).
mod ietf {
    use crate::support::proxy::{Faults, Proxy};
    use crate::support::upload::*;
    use crate::support::*;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

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
}

/// `--protocol auto`: what it picks against ferry and against other servers.
mod auto {
    use crate::support::upload::*;
    use crate::support::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

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
            // The whole request head is read before answering: a socket closed with bytes
            // unread resets the connection, which can destroy the answer on its way (the
            // client then asks again).
            let mut head = first.to_vec();
            let mut rest = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                match c.read(&mut rest) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&rest[..n]),
                }
            }
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
        // Asked once per run; a second OPTIONS only re-measures the round trip when the first
        // answer was slow (a loaded machine: `server_caps` in the client's upload/mod.rs).
        let seen = front.options_seen.load(Ordering::Relaxed);
        assert!((1..=2).contains(&seen), "OPTIONS asked {seen} times");
        assert_uploaded(&env, o["url"].as_str().unwrap(), &sha);
        assert_eq!(created_by(&server), (1, 0), "{}", server.log());

        // Upload-Limit announces max-size: a larger file is refused before anything is created.
        let small = OptionsFront::start(server.addr, "Upload-Limit: max-size=1000\r\n");
        let done = env
            .upload(&[&f], &format!("http://{}/files/", small.addr), &[])
            .wait(RUN_LIMIT)
            .code(3);
        assert!(
            done.stderr
                .contains("more than the server accepts (1000 B)"),
            "{}",
            done.stderr
        );
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
}
