//! Downloads: ranged GETs from `ferry serve` (a `--share` directory and finished uploads, and a
//! tus GET of finished and unfinished uploads), third-party clients against it (aria2c, curl,
//! wget), `ferry download` against nginx and ferry (JSON output, `--limit-rate`, Ctrl-C), and
//! the server's memory bound. Interrupted `ferry download` runs: `download_resume`.
//!
//! aria2c, wget and nginx come from `scripts/setup-test-deps.sh`; a missing one fails the test
//! with a message saying so. Every child process is killed when its guard drops, every wait
//! is bounded.
//!
//! [`support::proxy::Proxy`] faults and counts only the client→server (upload) direction, so
//! the download-direction faults and byte counts come from [`DownProxy`] (`support::download`).

use crate::support::download::*;
use crate::support::{
    self, Server, crc64nvme_member, ferry_bin, random_bytes, random_file, sha256, sha256_file,
};
use base64::Engine as _;
use sha2::Digest as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ server: ranges -------

#[test]
fn shared_file_ranges_validators_and_conditionals() {
    let (server, dir) = share_server();
    let data = random_bytes(100_000, 1);
    publish(dir.path(), "f.bin", &data);
    let url = share_url(server.addr, "f.bin");

    let h = request("HEAD", &url, &[]);
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(h.h("accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(h.h("content-length").as_deref(), Some("100000"));
    let etag = h.h("etag").expect("ETag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    let lm = h.h("last-modified").expect("Last-Modified");
    let lm_t = httpdate::parse_http_date(&lm).unwrap();
    let mtime = std::fs::metadata(dir.path().join("f.bin"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(
        mtime.duration_since(lm_t).unwrap() < Duration::from_secs(1),
        "Last-Modified is the mtime"
    );

    let full = get(&url, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.body, data);
    assert_eq!(full.h("etag"), Some(etag.clone()));

    let cases: &[(&str, &[(u64, u64)])] = &[
        ("bytes=10-19", &[(10, 19)]),
        ("bytes=99990-", &[(99990, 99999)]),
        ("bytes=-10", &[(99990, 99999)]),
        ("bytes=-200000", &[(0, 99999)]), // suffix longer than the file
        ("bytes=99999-99999", &[(99999, 99999)]), // last byte
        ("bytes=0-0", &[(0, 0)]),
        ("bytes=99990-5000000", &[(99990, 99999)]),
        (
            "bytes=0-9,50-59,99990-",
            &[(0, 9), (50, 59), (99990, 99999)],
        ),
        ("bytes=50-59, 0-9", &[(0, 9), (50, 59)]),
        ("bytes=0-10,5-20", &[(0, 20)]), // overlapping: coalesced
        ("bytes=0-9,10-19,30-39", &[(0, 19), (30, 39)]), // adjacent: coalesced
        ("bytes=200000-,0-0", &[(0, 0)]), // one satisfiable of two
        (" bytes = 1-2 ", &[(1, 2)]),
    ];
    for (range, want) in cases {
        let r = get(&url, &[("Range", range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.h("etag"), Some(etag.clone()), "{range}");
        if want.len() == 1 {
            let (a, b, len) = content_range(&r.h("content-range").unwrap());
            assert_eq!((a, b, len), (want[0].0, want[0].1, 100_000), "{range}");
        }
        check_parts(&r, &data, want, range);
    }
    // Many ranges: 64 are served as 64 parts; more are ignored (a full 200, as RFC 9110 lets
    // a server do against range amplification).
    let many: Vec<String> = (0..64)
        .map(|i| format!("{}-{}", i * 100, i * 100 + 9))
        .collect();
    let want: Vec<(u64, u64)> = (0..64).map(|i| (i * 100, i * 100 + 9)).collect();
    let r = get(&url, &[("Range", &format!("bytes={}", many.join(",")))]);
    check_parts(&r, &data, &want, "64 ranges");
    let too_many: Vec<String> = (0..200).map(|i| format!("{}-{}", i * 10, i * 10)).collect();
    let r = get(&url, &[("Range", &format!("bytes={}", too_many.join(",")))]);
    assert_eq!(r.status, 200, "200 ranges");
    assert_eq!(r.body, data);

    for range in [
        "bytes=100000-",
        "bytes=100000-200000",
        "bytes=-0",
        "bytes=500000-,-0",
    ] {
        let r = get(&url, &[("Range", range)]);
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(
            r.h("content-range").as_deref(),
            Some("bytes */100000"),
            "{range}"
        );
    }
    // Bad syntax is ignored: the whole representation, 200 (RFC 9110 §14.2).
    for range in [
        "bytes=5-1",
        "bytes=abc",
        "items=0-1",
        "bytes=--1",
        "bytes 0-1",
        "bytes=1",
        "bytes=",
        "bytes=0x10-0x20",
        "bytes=1-2,x",
    ] {
        let r = get(&url, &[("Range", range)]);
        assert_eq!(r.status, 200, "{range}");
        assert_eq!(r.body, data, "{range}");
    }
    // Range on HEAD is ignored (ranges are defined for GET only).
    let r = request("HEAD", &url, &[("Range", "bytes=0-9")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.h("content-length").as_deref(), Some("100000"));

    // If-Range: the range only while the validator matches strongly.
    let weak = format!("W/{etag}");
    let r = get(&url, &[("Range", "bytes=0-9"), ("If-Range", &etag)]);
    check_parts(&r, &data, &[(0, 9)], "If-Range: current ETag");
    let r = get(&url, &[("Range", "bytes=0-9"), ("If-Range", &lm)]);
    check_parts(&r, &data, &[(0, 9)], "If-Range: current (strong) date");
    for other in [
        "\"something-else\"",
        weak.as_str(),
        "Thu, 01 Jan 2015 00:00:00 GMT",
        "garbage",
    ] {
        let r = get(&url, &[("Range", "bytes=0-9"), ("If-Range", other)]);
        assert_eq!(r.status, 200, "If-Range {other}");
        assert_eq!(r.body, data, "If-Range {other}");
    }
    // If-Match: strong comparison; 412 otherwise.
    for (v, want) in [
        (etag.as_str(), 200),
        ("*", 200),
        ("\"x\", \"y\"", 412),
        (weak.as_str(), 412),
        ("\"nope\"", 412),
    ] {
        let r = get(&url, &[("If-Match", v)]);
        assert_eq!(r.status, want, "If-Match {v}");
    }
    let list = format!("\"x\", {etag}");
    assert_eq!(get(&url, &[("If-Match", &list)]).status, 200);
    let r = get(&url, &[("If-Match", "\"nope\""), ("Range", "bytes=0-0")]);
    assert_eq!(r.status, 412, "If-Match before Range");
    // If-None-Match: weak comparison; 304 with the validators and no body.
    for v in [etag.as_str(), weak.as_str(), "*"] {
        for method in ["GET", "HEAD"] {
            let r = request(
                method,
                &url,
                &[("If-None-Match", v), ("Range", "bytes=0-9")],
            );
            assert_eq!(r.status, 304, "{method} If-None-Match {v}");
            assert!(r.body.is_empty());
            assert_eq!(r.h("etag"), Some(etag.clone()));
        }
    }
    assert_eq!(get(&url, &[("If-None-Match", "\"other\"")]).status, 200);
    // If-Modified-Since (only without If-None-Match).
    assert_eq!(get(&url, &[("If-Modified-Since", &lm)]).status, 304);
    assert_eq!(
        get(
            &url,
            &[("If-Modified-Since", "Thu, 01 Jan 2015 00:00:00 GMT")]
        )
        .status,
        200
    );
    assert_eq!(
        get(
            &url,
            &[("If-Modified-Since", &lm), ("If-None-Match", "\"other\"")]
        )
        .status,
        200
    );

    // A 0-byte file: no range is satisfiable; bad syntax still 200.
    publish(dir.path(), "empty", b"");
    let e = share_url(server.addr, "empty");
    let r = get(&e, &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.h("content-length").as_deref(), Some("0"));
    for range in ["bytes=0-0", "bytes=-1", "bytes=0-"] {
        let r = get(&e, &[("Range", range)]);
        assert_eq!(r.status, 416, "empty file {range}");
        assert_eq!(r.h("content-range").as_deref(), Some("bytes */0"));
    }
    assert_eq!(get(&e, &[("Range", "bytes=x")]).status, 200);
    // A one-byte file.
    publish(dir.path(), "one", b"Z");
    let r = get(&share_url(server.addr, "one"), &[("Range", "bytes=-5")]);
    check_parts(&r, b"Z", &[(0, 0)], "one byte, long suffix");
}

#[test]
fn shared_etag_is_a_version_not_mtime_and_size() {
    let (server, dir) = share_server();
    let path = publish(dir.path(), "v.bin", &random_bytes(4096, 1));
    let url = share_url(server.addr, "v.bin");
    let tag = |what: &str| {
        let r = request("HEAD", &url, &[]);
        assert_eq!(r.status, 200, "{what}");
        (r.h("etag").unwrap(), r.h("last-modified").unwrap())
    };
    let (t1, lm1) = tag("first");
    assert_eq!(tag("again").0, t1, "stable while unchanged");
    let old_mtime = std::fs::metadata(&path).unwrap().modified().unwrap();

    // Same size, same mtime (put back to the nanosecond): what mtime+size tags cannot see.
    let v2 = random_bytes(4096, 2);
    std::fs::write(&path, &v2).unwrap();
    set_mtime(&path, old_mtime);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        old_mtime
    );
    let (t2, lm2) = tag("rewritten in place");
    assert_eq!(lm2, lm1, "the test kept mtime and size");
    assert_ne!(t2, t1, "content changed: the ETag must change");
    // An old validator can no longer select a range of the new content.
    let r = get(&url, &[("Range", "bytes=0-9"), ("If-Range", &t1)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, v2);
    assert_eq!(get(&url, &[("If-Match", &t1)]).status, 412);
    assert_eq!(get(&url, &[("If-None-Match", &t1)]).status, 200);

    // Replaced by a rename (new inode), same size and mtime again.
    let tmp = dir.path().join(".tmp");
    std::fs::write(&tmp, random_bytes(4096, 3)).unwrap();
    set_mtime(&tmp, old_mtime);
    std::fs::rename(&tmp, &path).unwrap();
    let (t3, _) = tag("replaced by rename");
    assert!(t3 != t1 && t3 != t2, "{t1} {t2} {t3}");

    // Two writes within the same second.
    std::fs::write(&path, random_bytes(4096, 4)).unwrap();
    let (t4, _) = tag("written");
    std::fs::write(&path, random_bytes(4096, 5)).unwrap();
    let (t5, _) = tag("written again at once");
    assert_ne!(t4, t5);
}

#[test]
fn shared_directory_confinement() {
    let top = tempfile::tempdir().unwrap();
    let share = top.path().join("share");
    let outside = top.path().join("outside");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOPSECRET").unwrap();
    std::fs::write(share.join("pub.txt"), "public").unwrap();
    std::fs::write(share.join("sub/inner.txt"), "inner").unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", share.join("link_out")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), share.join("abs_link")).unwrap();
    std::os::unix::fs::symlink("../outside", share.join("dir_out")).unwrap();
    std::os::unix::fs::symlink("../../outside/secret.txt", share.join("sub/deep_out")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", share.join("passwd")).unwrap();
    std::os::unix::fs::symlink("pub.txt", share.join("link_in")).unwrap();
    std::os::unix::fs::symlink("../pub.txt", share.join("sub/up_in")).unwrap();
    let server = Server::start(&["--share", share.to_str().unwrap()]);
    let addr = server.addr;
    let raw = |target: &str, extra: &str| {
        support::raw(
            addr,
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(10),
        )
    };

    // Inside: served, including symlinks that stay inside.
    for (p, want) in [
        ("/share/pub.txt", "public"),
        ("/share/sub/inner.txt", "inner"),
        ("/share/link_in", "public"),
        ("/share/sub/up_in", "public"),
        ("/share/sub%2Finner.txt", "inner"), // an encoded separator inside the tree
    ] {
        let r = raw(p, "");
        assert_eq!(support::status_of(&r), 200, "{p}: {r}");
        assert!(r.ends_with(want), "{p}: {r}");
    }
    let escapes = [
        "/share/../outside/secret.txt",
        "/share/sub/../../outside/secret.txt",
        "/share/%2e%2e/outside/secret.txt",
        "/share/%2E%2E/outside/secret.txt",
        "/share/%2e%2e%2foutside%2fsecret.txt",
        "/share/sub/..%2f..%2foutside%2fsecret.txt",
        "/share/sub/%2e%2e/%2e%2e/outside/secret.txt",
        "/share/..%5c..%5coutside%5csecret.txt",
        "/share/%252e%252e/outside/secret.txt",
        "/share/.%2e/outside/secret.txt",
        "/share//outside/secret.txt",
        "/share/%2f..%2foutside%2fsecret.txt",
        "/share/%2Ftmp",
        "/share/%00/../outside/secret.txt",
        "/share/link_out",
        "/share/abs_link",
        "/share/passwd",
        "/share/dir_out/secret.txt",
        "/share/dir_out/",
        "/share/dir_out",
        "/share/sub/deep_out",
        "/share/sub/../../../../../../etc/passwd",
        "/share/./pub.txt/../../outside/secret.txt",
    ];
    for p in escapes {
        for extra in ["", "Range: bytes=0-3\r\n"] {
            let r = raw(p, extra);
            let st = support::status_of(&r);
            assert!(
                st != 0 && !(200..300).contains(&st),
                "{p} {extra:?}: must not be served: {r}"
            );
            assert!(!r.contains("TOPSECRET") && !r.contains("root:"), "{p}: {r}");
        }
    }
    // Absolute-form request targets are held to the same rules.
    let r = raw(&format!("http://{addr}/share/../outside/secret.txt"), "");
    assert!(!r.contains("TOPSECRET"), "{r}");
    // Listings never show what lies outside.
    let r = raw("/share/", "");
    assert_eq!(support::status_of(&r), 200, "{r}");
    assert!(r.contains("pub.txt") && !r.contains("TOPSECRET"), "{r}");
    let r = raw("/share/dir_out/", "");
    assert!(!r.contains("secret.txt"), "listing through a symlink: {r}");
    // Read-only.
    for method in ["PUT", "DELETE", "POST"] {
        let r = support::raw(
            addr,
            format!(
                "{method} /share/pub.txt HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
            Duration::from_secs(10),
        );
        assert_eq!(support::status_of(&r), 405, "{method}: {r}");
    }
    assert_eq!(
        std::fs::read_to_string(share.join("pub.txt")).unwrap(),
        "public"
    );
}

// ------------------------------------------------------------------ finished uploads ------

#[test]
fn finished_upload_downloads_with_ranges_digest_and_names() {
    let server = Server::start(&[]);
    let data = random_bytes(3 * MIB + 123, 7);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let meta = format!("filename {}", b64("report 1.pdf"));
    let url = support::create(&server, data.len() as u64, Some(&meta));
    // Unfinished: no download yet.
    let (st, _) = support::patch(&url, 0, data[..MIB].to_vec());
    assert_eq!(st, 204);
    let r = get(&url, &[]);
    assert_eq!(r.status, 409, "an unfinished upload is not downloadable");
    let (st, off) = support::patch(&url, MIB as u64, data[MIB..].to_vec());
    assert_eq!((st, off), (204, Some(data.len() as u64)));

    // Plain HEAD (no Tus-Resumable) describes the download.
    let h = request("HEAD", &url, &[]);
    assert_eq!(h.status, 200, "plain HEAD of a finished upload");
    assert_eq!(h.h("accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(
        h.h("content-length").unwrap().parse::<usize>().unwrap(),
        data.len()
    );
    let etag = h.h("etag").expect("ETag");
    assert!(etag.starts_with('"'));
    assert!(h.h("last-modified").is_some());
    // A tus HEAD is still a tus HEAD.
    let t = request("HEAD", &url, &[("Tus-Resumable", "1.0.0")]);
    assert_eq!(t.h("upload-offset"), Some(data.len().to_string()));

    let r = get(&url, &[("Range", "bytes=100-199"), ("If-Range", &etag)]);
    check_parts(&r, &data, &[(100, 199)], "upload range");
    let r = get(&url, &[("Range", "bytes=0-1,-2")]);
    let n = data.len() as u64;
    check_parts(&r, &data, &[(0, 1), (n - 2, n - 1)], "upload multipart");
    let r = get(&url, &[("Range", &format!("bytes={n}-"))]);
    assert_eq!(r.status, 416);
    assert_eq!(r.h("content-range"), Some(format!("bytes */{n}")));
    assert_eq!(get(&url, &[("If-None-Match", &etag)]).status, 304);
    // Repr-Digest once known (computed when the upload completes).
    let deadline = Instant::now() + Duration::from_secs(10);
    let digest = loop {
        if let Some(d) = request("HEAD", &url, &[]).h("repr-digest") {
            break d;
        }
        assert!(Instant::now() < deadline, "no Repr-Digest");
        std::thread::sleep(Duration::from_millis(50));
    };
    // (Small content: every digest computed at completion.)
    let enc = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let want = format!(
        "sha-256=:{}:, blake3=:{}:, {}",
        enc(&sha2::Sha256::digest(&data)),
        enc(blake3::hash(&data).as_bytes()),
        crc64nvme_member(&data)
    );
    assert_eq!(digest, want);

    // ferry download: named by Content-Disposition, verified against Repr-Digest.
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let out_dir = tmp.path().join("out");
    let out = ferry_download(&state, &["-d", out_dir.to_str().unwrap(), "--json", &url]);
    ok(&out, "ferry download /files/{id}");
    let j = json_line(&out);
    assert_eq!(j["verified"], true, "{j}");
    let got = out_dir.join("report 1.pdf");
    assert_eq!(j["file"], got.display().to_string());
    assert_eq!(sha256_file(&got), sha256(&data));
    assert!(saved(&state).is_empty(), "state is removed once done");

    // A hostile name cannot leave the directory.
    let evil = support::create(
        &server,
        5,
        Some(&format!("filename {}", b64("../../../evil.sh"))),
    );
    support::patch(&evil, 0, b"hello".to_vec());
    let out = ferry_download(&state, &["-d", out_dir.to_str().unwrap(), &evil]);
    ok(&out, "hostile name");
    assert_eq!(std::fs::read(out_dir.join("evil.sh")).unwrap(), b"hello");
    assert!(!tmp.path().join("evil.sh").exists());

    // curl resumes a partial file of an upload.
    let curl = require("curl");
    let part = tmp.path().join("curl.bin");
    std::fs::write(&part, &data[..MIB]).unwrap();
    let out = run(
        Command::new(curl)
            .args(["-sS", "-f", "-C", "-", "-o"])
            .arg(&part)
            .args(["-w", "%{http_code}"])
            .arg(&url),
        Duration::from_secs(60),
    );
    ok(&out, "curl -C -");
    assert_eq!(text(&out.stdout), "206");
    assert_eq!(sha256_file(&part), sha256(&data));
}

// ------------------------------------------------------------------ third-party clients ---

#[test]
fn aria2c_curl_and_wget_download_from_ferry_serve_and_resume() {
    let aria2c = require("aria2c");
    let curl = require("curl");
    let wget = require("wget");
    let (server, dir) = share_server();
    let size = 24 * MIB + 77;
    let (src, want) = random_file(dir.path(), "big.bin", size, 11);
    set_mtime(&src, an_hour_ago());
    let proxy = DownProxy::start(server.addr, DownFaults::default());
    let url = proxy.url("/share/big.bin");
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    let data = std::fs::read(&src).unwrap();
    let limit = Duration::from_secs(120);

    // Whole files.
    let r = run(
        Command::new(&aria2c)
            .args([
                "-q",
                "-x8",
                "-s8",
                "-k1M",
                "--allow-overwrite=true",
                "--auto-file-renaming=false",
                "--file-allocation=none",
                "-d",
            ])
            .arg(o)
            .args(["-o", "aria.bin", &url]),
        limit,
    );
    ok(&r, "aria2c -x8");
    assert_eq!(sha256_file(&o.join("aria.bin")), want, "aria2c -x8");
    let r = run(
        Command::new(&curl)
            .args(["-sS", "-f", "-o"])
            .arg(o.join("curl.bin"))
            .arg(&url),
        limit,
    );
    ok(&r, "curl");
    assert_eq!(sha256_file(&o.join("curl.bin")), want, "curl");
    let r = run(
        Command::new(&wget)
            .args(["-q", "-O"])
            .arg(o.join("wget.bin"))
            .arg(&url),
        limit,
    );
    ok(&r, "wget");
    assert_eq!(sha256_file(&o.join("wget.bin")), want, "wget");

    // Resume of a partial file: each client fetches only the rest (counted at the proxy,
    // paced so that connections a client drops early carry little unread data).
    proxy.set(DownFaults {
        rate: Some(32 * MIB as u64),
        ..DownFaults::default()
    });
    let prefix = 10 * MIB + 5;
    let rest = (size - prefix) as u64;
    let slack = 512 * 1024;
    // curl -C -
    let p = o.join("curl-resume.bin");
    std::fs::write(&p, &data[..prefix]).unwrap();
    let before = proxy.sent();
    let r = run(
        Command::new(&curl)
            .args(["-sS", "-f", "-C", "-", "-o"])
            .arg(&p)
            .arg(&url),
        limit,
    );
    ok(&r, "curl -C -");
    assert_eq!(sha256_file(&p), want, "curl -C -");
    let fetched = proxy.sent() - before;
    assert!(
        fetched >= rest && fetched < rest + slack,
        "curl -C -: {fetched} bytes for {rest}"
    );
    // wget -c
    let wdir = o.join("wget-resume");
    std::fs::create_dir_all(&wdir).unwrap();
    std::fs::write(wdir.join("big.bin"), &data[..prefix]).unwrap();
    let before = proxy.sent();
    let r = run(
        Command::new(&wget)
            .args(["-q", "-c", "-P"])
            .arg(&wdir)
            .arg(&url),
        limit,
    );
    ok(&r, "wget -c");
    assert_eq!(sha256_file(&wdir.join("big.bin")), want, "wget -c");
    let fetched = proxy.sent() - before;
    assert!(
        fetched >= rest && fetched < rest + slack,
        "wget -c: {fetched} bytes for {rest}"
    );
    // aria2c -c on a partial file without a control file continues from its length.
    std::fs::write(o.join("aria-resume.bin"), &data[..prefix]).unwrap();
    let before = proxy.sent();
    let r = run(
        Command::new(&aria2c)
            .args([
                "-q",
                "-c",
                "-x8",
                "-s8",
                "-k1M",
                "--auto-file-renaming=false",
                "--file-allocation=none",
                "-d",
            ])
            .arg(o)
            .args(["-o", "aria-resume.bin", &url]),
        limit,
    );
    ok(&r, "aria2c -c");
    assert_eq!(sha256_file(&o.join("aria-resume.bin")), want, "aria2c -c");
    // aria2c's first connection asks for everything from the file's length and is cut
    // short once the rest is split among its eight, so some buffered bytes are dropped;
    // what matters is that the 10 MiB already there are not fetched again.
    let fetched = proxy.sent() - before;
    assert!(
        fetched < rest + (prefix as u64) / 2,
        "aria2c -c: {fetched} bytes for {rest}"
    );

    // aria2c interrupted (SIGKILL) and resumed with its control file.
    proxy.set(DownFaults {
        rate: Some(8 * MIB as u64),
        ..DownFaults::default()
    });
    let args = [
        "-q",
        "-c",
        "-x8",
        "-s8",
        "-k1M",
        "--auto-file-renaming=false",
        "--file-allocation=none",
        "--auto-save-interval=1",
        "-d",
    ];
    let mut kid = Kid(Some(
        Command::new(&aria2c)
            .args(args)
            .arg(o)
            .args(["-o", "aria-killed.bin", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(1500));
    kid.kill9();
    proxy.set(DownFaults::default());
    let r = run(
        Command::new(&aria2c)
            .args(args)
            .arg(o)
            .args(["-o", "aria-killed.bin", &url]),
        limit,
    );
    ok(&r, "aria2c resumed after SIGKILL");
    assert_eq!(sha256_file(&o.join("aria-killed.bin")), want);

    // aria2c and curl also fetch a finished upload.
    let upload = support::create(&server, 5 * MIB as u64, None);
    let udata = random_bytes(5 * MIB, 12);
    assert_eq!(support::patch(&upload, 0, udata.clone()).0, 204);
    let r = run(
        Command::new(&aria2c)
            .args([
                "-q",
                "-x8",
                "-s8",
                "-k1M",
                "--allow-overwrite=true",
                "--file-allocation=none",
                "-d",
            ])
            .arg(o)
            .args(["-o", "upload.bin", &upload]),
        limit,
    );
    ok(&r, "aria2c /files/{id}");
    assert_eq!(sha256_file(&o.join("upload.bin")), sha256(&udata));
    let r = run(
        Command::new(&wget)
            .args(["-q", "-O"])
            .arg(o.join("upload-w.bin"))
            .arg(&upload),
        limit,
    );
    ok(&r, "wget /files/{id}");
    assert_eq!(sha256_file(&o.join("upload-w.bin")), sha256(&udata));
}

// ------------------------------------------------------------------ ferry download --------

#[test]
fn ferry_download_from_nginx() {
    let root = tempfile::tempdir().unwrap();
    let size = 20 * MIB + 3;
    let (src, want) = random_file(root.path(), "big.bin", size, 21);
    set_mtime(&src, an_hour_ago());
    publish(root.path(), "empty.bin", b"");
    let nginx = Nginx::start(root.path());
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let url = nginx.url("big.bin");

    for j in ["4", "1", "auto", "16"] {
        let dest = tmp.path().join(format!("j{j}.bin"));
        let out = ferry_download(
            &state,
            &["-j", j, "-o", dest.to_str().unwrap(), "--json", &url],
        );
        ok(&out, &format!("ferry download -j {j} from nginx"));
        assert_eq!(sha256_file(&dest), want, "-j {j}");
        let v = json_line(&out);
        assert_eq!(v["bytes"], size as u64);
        assert_eq!(v["resumed_from"], 0);
        assert!(!PathBuf::from(format!("{}.ferry-part", dest.display())).exists());
    }
    // -d names the file from the URL; an empty file works.
    let d = tmp.path().join("dir");
    let out = ferry_download(
        &state,
        &["-d", d.to_str().unwrap(), &url, &nginx.url("empty.bin")],
    );
    ok(&out, "-d with two URLs");
    assert_eq!(sha256_file(&d.join("big.bin")), want);
    assert_eq!(std::fs::read(d.join("empty.bin")).unwrap(), b"");
    // --checksum: verified when it matches; on a mismatch nothing claims to be complete.
    let dest = tmp.path().join("ck.bin");
    let out = ferry_download(
        &state,
        &[
            "-o",
            dest.to_str().unwrap(),
            "--json",
            "--checksum",
            &format!("sha256={want}"),
            &url,
        ],
    );
    ok(&out, "--checksum (right)");
    assert_eq!(json_line(&out)["verified"], true);
    let bad = tmp.path().join("bad.bin");
    let out = ferry_download(
        &state,
        &[
            "-o",
            bad.to_str().unwrap(),
            "--checksum",
            &format!("sha256={}", "0".repeat(64)),
            &url,
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not match"),
        "{}",
        text(&out.stderr)
    );
    assert!(!bad.exists(), "no file that claims to be complete");
    assert!(!PathBuf::from(format!("{}.ferry-part", bad.display())).exists());
    assert!(saved(&state).is_empty());

    // Interrupted (Ctrl-C) and resumed against nginx (ETag/If-Range), counting bytes.
    let proxy = DownProxy::start(
        nginx.addr,
        DownFaults {
            rate: Some(6 * MIB as u64),
            ..DownFaults::default()
        },
    );
    let purl = proxy.url("/big.bin");
    let dest = tmp.path().join("resumed.bin");
    let log = tmp.path().join("resumed.log");
    let mut kid = spawn_download(
        &state,
        &["-j", "4", "-o", dest.to_str().unwrap(), &purl],
        &log,
    );
    wait_saved(&state, 4 * MIB as u64, Duration::from_secs(30));
    kid.signal("INT");
    let st = kid
        .wait_for(Duration::from_secs(10))
        .expect("exits on Ctrl-C");
    assert_eq!(st.code(), Some(130));
    let done = saved(&state)[0].0;
    // Still paced, so what the proxy counts is what the client asked for, not what a
    // loopback socket buffers ahead of a stream cut short by work stealing.
    let first = proxy.sent();
    let out = ferry_download(
        &state,
        &["-j", "4", "-o", dest.to_str().unwrap(), "--json", &purl],
    );
    ok(&out, "resumed from nginx");
    assert_eq!(sha256_file(&dest), want);
    assert_eq!(json_line(&out)["resumed_from"], done);
    // Nothing saved is fetched again (≥ 4 MiB were); the slack is the tail of work
    // stealing: a stream cut short drops what the proxy had already pushed to it.
    let second = proxy.sent() - first;
    assert!(
        second <= size as u64 - done + MIB as u64,
        "the resumed run fetched {second} bytes for {} missing",
        size as u64 - done
    );
}

#[test]
fn ferry_download_from_ferry_serve_share_and_json() {
    let (server, dir) = share_server();
    let size = 9 * MIB + 1;
    let (src, want) = random_file(dir.path(), "a b.bin", size, 31);
    set_mtime(&src, an_hour_ago());
    publish(dir.path(), "empty", b"");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let url = share_url(server.addr, "a%20b.bin");
    let out = ferry_download(
        &state,
        &["-d", tmp.path().to_str().unwrap(), "--json", &url],
    );
    ok(&out, "from ferry serve --share");
    let v = json_line(&out);
    assert_eq!(v["file"], tmp.path().join("a b.bin").display().to_string());
    assert_eq!(v["bytes"], size as u64);
    assert_eq!(sha256_file(&tmp.path().join("a b.bin")), want);
    assert!(
        text(&out.stderr).contains("not verified"),
        "{}",
        text(&out.stderr)
    );
    let e = tmp.path().join("e");
    let out = ferry_download(
        &state,
        &["-o", e.to_str().unwrap(), &share_url(server.addr, "empty")],
    );
    ok(&out, "empty file");
    assert_eq!(std::fs::read(&e).unwrap(), b"");
    // A missing file: refused, nothing left behind.
    let m = tmp.path().join("m");
    let out = ferry_download(
        &state,
        &["-o", m.to_str().unwrap(), &share_url(server.addr, "nope")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(!m.exists());
    assert!(saved(&state).is_empty());
}

/// `--limit-rate` paces the whole download, and a request that runs longer than
/// `--stall-timeout` while making progress is not a stall.
#[test]
fn limit_rate_paces_and_long_requests_are_not_stalls() {
    let (server, dir) = share_server();
    let (src, want) = random_file(dir.path(), "r.bin", 3 * MIB, 41);
    set_mtime(&src, an_hour_ago());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("r.bin");
    let t0 = Instant::now();
    let out = ferry_download(
        &tmp.path().join("state"),
        &[
            "-j",
            "2",
            "--limit-rate",
            "1M",
            "--stall-timeout",
            "1s",
            "-o",
            dest.to_str().unwrap(),
            &share_url(server.addr, "r.bin"),
        ],
    );
    let took = t0.elapsed();
    ok(&out, "--limit-rate");
    assert_eq!(sha256_file(&dest), want);
    assert!(
        took >= Duration::from_millis(2500),
        "3 MiB at 1 MiB/s took {took:?}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    let err = text(&out.stderr);
    assert!(
        !err.contains("retrying"),
        "no request failed while data flowed: {err}"
    );
}

#[test]
fn ctrl_c_leaves_a_resumable_state_that_status_and_forget_cover() {
    let (server, dir) = share_server();
    let size = 8 * MIB;
    let (src, want) = random_file(dir.path(), "s.bin", size, 51);
    set_mtime(&src, an_hour_ago());
    let proxy = DownProxy::start(
        server.addr,
        DownFaults {
            rate: Some(3 * MIB as u64),
            ..DownFaults::default()
        },
    );
    let url = proxy.url("/share/s.bin");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let dest = tmp.path().join("s.bin");
    let partial = PathBuf::from(format!("{}.ferry-part", dest.display()));
    let status = |json: bool| {
        let mut c = Command::new(ferry_bin());
        c.arg("status").arg("--state-dir").arg(&state);
        if json {
            c.arg("--json");
        }
        let out = run(&mut c, Duration::from_secs(20));
        ok(&out, "ferry status");
        text(&out.stdout)
    };

    let log = tmp.path().join("run1.log");
    let mut kid = spawn_download(
        &state,
        &["-o", dest.to_str().unwrap(), "--json", &url],
        &log,
    );
    wait_saved(&state, 1, Duration::from_secs(30));
    kid.signal("INT");
    let st = kid
        .wait_for(Duration::from_secs(10))
        .expect("Ctrl-C ends it");
    assert_eq!(st.code(), Some(130));
    let err = std::fs::read_to_string(log.with_extension("err")).unwrap();
    assert!(
        err.contains("run the same command again to resume"),
        "{err}"
    );
    assert!(!dest.exists(), "no complete-looking file after Ctrl-C");
    assert!(partial.exists());
    let (done, total) = saved(&state)[0];
    assert!(done > 0 && done < total && total == size as u64);

    let js = status(true);
    let line: serde_json::Value = serde_json::from_str(js.lines().next().unwrap()).unwrap();
    assert_eq!(line["kind"], "download");
    assert_eq!(line["url"], url);
    assert_eq!(line["dest"], dest.display().to_string());
    assert_eq!(line["bytes"], size as u64);
    assert_eq!(line["done"], done);
    let plain = status(false);
    assert!(
        plain.contains("download") && plain.contains(&url),
        "{plain}"
    );

    // Re-running resumes.
    proxy.set(DownFaults::default());
    let out = ferry_download(&state, &["-o", dest.to_str().unwrap(), "--json", &url]);
    ok(&out, "resume after Ctrl-C");
    assert_eq!(json_line(&out)["resumed_from"], done);
    assert_eq!(sha256_file(&dest), want);
    assert!(!partial.exists());
    assert_eq!(status(true).trim(), "", "nothing left to resume");

    // forget drops the state and the partial file.
    std::fs::remove_file(&dest).unwrap();
    proxy.set(DownFaults {
        rate: Some(3 * MIB as u64),
        ..DownFaults::default()
    });
    let mut kid = spawn_download(&state, &["-o", dest.to_str().unwrap(), &url], &log);
    wait_saved(&state, 1, Duration::from_secs(30));
    kid.signal("INT");
    kid.wait_for(Duration::from_secs(10))
        .expect("Ctrl-C ends it");
    assert!(partial.exists());
    let out = run(
        Command::new(ferry_bin())
            .arg("forget")
            .arg("--state-dir")
            .arg(&state)
            .arg(&dest),
        Duration::from_secs(20),
    );
    ok(&out, "ferry forget");
    assert!(!partial.exists(), "forget removes the partial file");
    assert_eq!(status(true).trim(), "");
}

// ------------------------------------------------------------------ memory ----------------

/// `ferry serve` streams with bounded memory: 16 parallel ranged streams of a 128 MiB shared
/// file, read slowly enough that the server must hold back, keep its peak RSS small.
#[test]
fn serving_sixteen_ranged_streams_keeps_server_memory_small() {
    let (server, dir) = share_server();
    let size: u64 = 128 << 20;
    // Sparse: reads as zeros, costs no disk; the server cannot tell.
    std::fs::File::create(dir.path().join("m.bin"))
        .unwrap()
        .set_len(size)
        .unwrap();
    let base = support::vm_hwm_kib(server.pid()).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(16));
    let addr = server.addr;
    let threads: Vec<_> = (0..16u64)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let slice = size / 16;
                let (a, b) = (i * slice, (i + 1) * slice - 1);
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                barrier.wait();
                write!(
                    s,
                    "GET /share/m.bin HTTP/1.1\r\nHost: {addr}\r\nRange: bytes={a}-{b}\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                let mut paused = false;
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    if !paused && total > 2 << 20 {
                        // Everyone stops reading for a while: the server must not buffer ahead.
                        paused = true;
                        std::thread::sleep(Duration::from_millis(700));
                    }
                }
                total
            })
        })
        .collect();
    let mut all = 0;
    for t in threads {
        all += t.join().unwrap();
    }
    assert!(all >= size, "{all}");
    let peak = support::vm_hwm_kib(server.pid()).unwrap();
    eprintln!("ferry serve VmHWM: {base} KiB at start, {peak} KiB after 16 streams");
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB serving 16 streams of a 128 MiB file"
    );
}

/// GET of tus uploads: finished ones byte-exact with safe headers, unfinished ones 409.
mod tus {
    use crate::support::tus::*;
    use crate::support::*;

    #[test]
    fn get_of_a_finished_upload_is_byte_exact_and_safe() {
        let server = Server::start(&[]);
        let data = random_bytes(70_001, 5);
        // filename "report final.pdf", filetype "text/html"
        let md = "filename cmVwb3J0IGZpbmFsLnBkZg==,filetype dGV4dC9odG1s";
        let url = create(&server, data.len() as u64, Some(md));
        assert_eq!(patch(&url, 0, data.clone()), (204, Some(data.len() as u64)));
        let resp = client().get(&url).send().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(hdr(&resp, "content-length"), Some(data.len().to_string()));
        assert_eq!(
            hdr(&resp, "content-type").as_deref(),
            Some("application/octet-stream"),
            "never the uploader's filetype"
        );
        assert_eq!(
            hdr(&resp, "x-content-type-options").as_deref(),
            Some("nosniff")
        );
        let cd = hdr(&resp, "content-disposition").expect("Content-Disposition");
        assert!(cd.starts_with("attachment"), "{cd}");
        assert!(
            cd.contains("filename*=UTF-8''report%20final.pdf"),
            "Content-Disposition {cd}"
        );
        let body = resp.bytes().unwrap();
        assert_eq!(body.len(), data.len());
        assert!(body[..] == data[..], "GET body differs");

        // Without metadata: a bare attachment.
        let url = create(&server, 2, None);
        patch(&url, 0, b"hi".to_vec());
        let resp = client().get(&url).send().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            hdr(&resp, "content-disposition").as_deref(),
            Some("attachment")
        );
    }

    #[test]
    fn get_of_an_unfinished_upload_is_409_with_offset() {
        let server = Server::start(&[]);
        let url = create(&server, 10, None);
        assert_eq!(patch(&url, 0, b"0123".to_vec()), (204, Some(4)));
        let resp = client().get(&url).send().unwrap();
        assert_eq!(resp.status().as_u16(), 409);
        assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("4"));
        assert_ne!(
            hdr(&resp, "content-type").as_deref(),
            Some("application/octet-stream"),
            "an error, not a partial file"
        );
        // A deferred-length upload is unfinished too, even with bytes.
        let resp = tus_post(&server)
            .header("Upload-Defer-Length", "1")
            .send()
            .unwrap();
        let url = location(&resp).unwrap();
        let resp = client().get(&url).send().unwrap();
        assert_eq!(resp.status().as_u16(), 409);
        assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("0"));
    }
}
