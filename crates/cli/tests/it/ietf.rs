//! The IETF "Resumable Uploads for HTTP" draft on `/files/`: every rule for interop version 8
//! over raw HTTP, the per-version differences (3, 5, 6, 7), tus-js-client's IETF modes, and
//! resumption after a cut body and after a SIGKILL of the server.

use crate::interop::{Client, Driver, parse_progress};
use crate::support::proxy::{Faults, Proxy};
use crate::support::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const PARTIAL: (&str, &str) = ("Content-Type", "application/partial-upload");
const MIB: usize = 1 << 20;

fn v(n: &str) -> (&'static str, &str) {
    ("Upload-Draft-Interop-Version", n)
}

/// The path part of an absolute URL.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    format!("/{}", rest.split_once('/').map_or("", |(_, p)| p))
}

/// Creates an upload (interop `ver`) with `extra` headers and `body`; returns (response, path).
fn create(addr: SocketAddr, ver: &str, extra: &[(&str, &str)], body: &[u8]) -> (String, String) {
    let mut hs = vec![v(ver)];
    hs.extend_from_slice(extra);
    let resp = send(addr, "POST", "/files/", &hs, body);
    assert_eq!(status_of(&resp), 201, "creation: {resp}");
    let loc = header_of(&resp, "location").expect("Location");
    (resp, path_of(&loc))
}

fn head(addr: SocketAddr, ver: &str, path: &str) -> String {
    send(addr, "HEAD", path, &[v(ver)], b"")
}

fn head_offset_of(addr: SocketAddr, ver: &str, path: &str) -> u64 {
    let r = head(addr, ver, path);
    assert_eq!(status_of(&r), 204, "HEAD: {r}");
    header_of(&r, "upload-offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("no Upload-Offset: {r}"))
}

/// A v8 append.
fn append(addr: SocketAddr, path: &str, offset: u64, complete: bool, body: &[u8]) -> String {
    let off = offset.to_string();
    let c = if complete { "?1" } else { "?0" };
    send(
        addr,
        "PATCH",
        path,
        &[
            v("8"),
            PARTIAL,
            ("Upload-Offset", &off),
            ("Upload-Complete", c),
        ],
        body,
    )
}

fn get_body_sha(addr: SocketAddr, path: &str) -> String {
    get_sha256(&format!("http://{addr}{path}"))
}

fn assert_problem(resp: &str, status: u16, kind: &str) {
    assert_eq!(status_of(resp), status, "{resp}");
    assert_eq!(
        header_of(resp, "content-type").as_deref(),
        Some("application/problem+json"),
        "{resp}"
    );
    let json: serde_json::Value = serde_json::from_str(body_of(resp)).expect("problem JSON");
    assert_eq!(
        json["type"],
        format!("https://iana.org/assignments/http-problem-types#{kind}"),
        "{resp}"
    );
}

#[test]
fn options_announces_partial_upload_and_limits() {
    let server = Server::start(&["--max-size", "1MiB", "--expire-after", "1h"]);
    let r = send(server.addr, "OPTIONS", "/files/", &[v("8")], b"");
    assert!(matches!(status_of(&r), 200 | 204), "{r}");
    assert!(
        header_of(&r, "accept-patch").is_some_and(|a| a.contains("application/partial-upload")),
        "{r}"
    );
    assert_eq!(
        header_of(&r, "upload-limit").as_deref(),
        Some("max-size=1048576, max-age=3600")
    );
    assert_eq!(
        header_of(&r, "upload-draft-interop-version").as_deref(),
        Some("8")
    );
    assert_eq!(header_of(&r, "tus-resumable"), None, "{r}");
    // -04/-05 (interop 6) called the lifetime `expires`; before that there was no Upload-Limit.
    let r6 = send(server.addr, "OPTIONS", "/files/", &[v("6")], b"");
    assert_eq!(
        header_of(&r6, "upload-limit").as_deref(),
        Some("max-size=1048576, expires=3600")
    );
    let r5 = send(server.addr, "OPTIONS", "/files/", &[v("5")], b"");
    assert_eq!(header_of(&r5, "upload-limit"), None, "{r5}");
    // Plain tus OPTIONS still answers as tus.
    let t = send(server.addr, "OPTIONS", "/files/", &[], b"");
    assert!(header_of(&t, "tus-version").is_some(), "{t}");
}

#[test]
fn create_append_complete_and_download_v8() {
    let server = Server::start(&[]);
    let a = server.addr;
    let data = random_bytes(10_000, 1);
    let (resp, path) = create(
        a,
        "8",
        &[("Upload-Complete", "?0"), ("Upload-Length", "10000")],
        b"",
    );
    assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("0"));
    assert_eq!(header_of(&resp, "upload-complete").as_deref(), Some("?0"));
    assert!(
        header_of(&resp, "upload-limit").is_some_and(|l| l.contains("max-age=")),
        "{resp}"
    );

    let h = head(a, "8", &path);
    assert_eq!(status_of(&h), 204, "{h}");
    assert_eq!(header_of(&h, "upload-offset").as_deref(), Some("0"));
    assert_eq!(header_of(&h, "upload-complete").as_deref(), Some("?0"));
    assert_eq!(header_of(&h, "upload-length").as_deref(), Some("10000"));
    assert_eq!(header_of(&h, "cache-control").as_deref(), Some("no-store"));
    assert!(header_of(&h, "upload-limit").is_some(), "{h}");

    let r = append(a, &path, 0, false, &data[..4000]);
    assert_eq!(status_of(&r), 204, "{r}");
    assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("4000"));
    assert_eq!(header_of(&r, "upload-complete").as_deref(), Some("?0"));

    // Wrong offset: 409 with the right Upload-Offset and a mismatching-upload-offset problem.
    let r = append(a, &path, 2000, false, &data[2000..3000]);
    assert_problem(&r, 409, "mismatching-upload-offset");
    assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("4000"));
    let json: serde_json::Value = serde_json::from_str(body_of(&r)).unwrap();
    assert_eq!(json["expected-offset"], 4000);
    assert_eq!(json["provided-offset"], 2000);
    assert_eq!(head_offset_of(a, "8", &path), 4000, "offset unchanged");

    let r = append(a, &path, 4000, true, &data[4000..]);
    assert_eq!(status_of(&r), 204, "{r}");
    assert_eq!(header_of(&r, "upload-complete").as_deref(), Some("?1"));
    assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("10000"));
    assert!(
        header_of(&r, "repr-digest").is_some_and(|d| d.starts_with("sha-256=:")),
        "{r}"
    );
    let h = head(a, "8", &path);
    assert_eq!(header_of(&h, "upload-complete").as_deref(), Some("?1"));
    assert_eq!(get_body_sha(a, &path), sha256(&data));

    // Appending to a completed upload: content is an inconsistent length (draft -09 on);
    // an empty non-completing append is a completed-upload problem. Nothing changes.
    let r = append(a, &path, 10_000, false, b"more");
    assert_problem(&r, 400, "inconsistent-upload-length");
    let r = append(a, &path, 10_000, false, b"");
    assert_problem(&r, 400, "completed-upload");
    // Repeating the completing empty append is harmless.
    let r = append(a, &path, 10_000, true, b"");
    assert_eq!(status_of(&r), 204, "{r}");
    assert_eq!(head_offset_of(a, "8", &path), 10_000);
    assert_eq!(get_body_sha(a, &path), sha256(&data));
}

#[test]
fn creation_with_whole_body_by_post_put_and_patch() {
    let server = Server::start(&[]);
    let a = server.addr;
    for (i, method) in ["POST", "PUT", "PATCH"].into_iter().enumerate() {
        let data = random_bytes(50_000, 10 + i as u64);
        let resp = send(
            a,
            method,
            "/files/",
            &[v("8"), ("Upload-Complete", "?1")],
            &data,
        );
        assert_eq!(status_of(&resp), 201, "{method}: {resp}");
        assert_eq!(header_of(&resp, "upload-complete").as_deref(), Some("?1"));
        assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("50000"));
        assert_eq!(header_of(&resp, "upload-length").as_deref(), Some("50000"));
        let path = path_of(&header_of(&resp, "location").unwrap());
        assert_eq!(get_body_sha(a, &path), sha256(&data), "{method}");
    }
    // An empty complete creation is an empty upload.
    let (resp, path) = create(a, "8", &[("Upload-Complete", "?1")], b"");
    assert_eq!(header_of(&resp, "upload-complete").as_deref(), Some("?1"));
    assert_eq!(get_body_sha(a, &path), sha256(b""));
}

#[test]
fn unknown_length_is_fixed_by_the_completing_request() {
    let server = Server::start(&[]);
    let a = server.addr;
    let data = random_bytes(3000, 2);
    let (resp, path) = create(a, "8", &[("Upload-Complete", "?0")], &data[..1000]);
    assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("1000"));
    assert_eq!(header_of(&resp, "upload-length"), None, "{resp}");
    // A chunked append (no Content-Length).
    let r = send_chunked(
        a,
        "PATCH",
        &path,
        &[
            v("8"),
            PARTIAL,
            ("Upload-Offset", "1000"),
            ("Upload-Complete", "?0"),
        ],
        &[&data[1000..1500], &data[1500..3000]],
        &[],
    );
    assert_eq!(status_of(&r), 204, "{r}");
    assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("3000"));
    assert_eq!(head_offset_of(a, "8", &path), 3000);
    // An empty completing append: the length is the offset.
    let r = append(a, &path, 3000, true, b"");
    assert_eq!(status_of(&r), 204, "{r}");
    assert_eq!(header_of(&r, "upload-complete").as_deref(), Some("?1"));
    let h = head(a, "8", &path);
    assert_eq!(header_of(&h, "upload-length").as_deref(), Some("3000"));
    assert_eq!(get_body_sha(a, &path), sha256(&data));
}

#[test]
fn inconsistent_lengths_are_refused() {
    let server = Server::start(&[]);
    let a = server.addr;
    // Upload-Length and a complete body of another size.
    let r = send(
        a,
        "POST",
        "/files/",
        &[v("8"), ("Upload-Complete", "?1"), ("Upload-Length", "5")],
        b"abc",
    );
    assert_problem(&r, 400, "inconsistent-upload-length");

    let (_, path) = create(
        a,
        "8",
        &[("Upload-Complete", "?0"), ("Upload-Length", "10")],
        b"12345",
    );
    // Past the known length (Content-Length says so): refused before reading, upload kept.
    let r = append(a, &path, 5, false, b"6789012345");
    assert_problem(&r, 400, "inconsistent-upload-length");
    assert_eq!(head_offset_of(a, "8", &path), 5);
    // Completing short of the length.
    let r = append(a, &path, 5, true, b"678");
    assert_problem(&r, 400, "inconsistent-upload-length");
    // Another Upload-Length.
    let r = send(
        a,
        "PATCH",
        &path,
        &[
            v("8"),
            PARTIAL,
            ("Upload-Offset", "5"),
            ("Upload-Complete", "?0"),
            ("Upload-Length", "11"),
        ],
        b"6",
    );
    assert_problem(&r, 400, "inconsistent-upload-length");
    assert_eq!(head_offset_of(a, "8", &path), 5);
    // A chunked body that runs past the length: the upload is deactivated.
    let r = send_chunked(
        a,
        "PATCH",
        &path,
        &[
            v("8"),
            PARTIAL,
            ("Upload-Offset", "5"),
            ("Upload-Complete", "?0"),
        ],
        &[b"678901234567"],
        &[],
    );
    assert_problem(&r, 400, "inconsistent-upload-length");
    assert_eq!(status_of(&head(a, "8", &path)), 404);
}

/// Request headers, expected status, a phrase of the message.
type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);

#[test]
fn bad_requests_get_clear_4xx() {
    let server = Server::start(&["--max-size", "1000"]);
    let a = server.addr;
    let cases: Vec<Case> = vec![
        (vec![v("8")], 400, "Upload-Complete is required"),
        (vec![v("8"), ("Upload-Complete", "yes")], 400, "boolean"),
        (
            vec![v("9"), ("Upload-Complete", "?0")],
            400,
            "not supported",
        ),
        (
            vec![v("eight"), ("Upload-Complete", "?0")],
            400,
            "not supported",
        ),
        (
            vec![v("8"), ("Upload-Complete", "?0"), ("Upload-Length", "-1")],
            400,
            "negative",
        ),
        (
            vec![v("8"), ("Upload-Complete", "?0"), ("Upload-Length", "1x")],
            400,
            "Upload-Length",
        ),
        (
            vec![v("8"), ("Upload-Complete", "?0"), ("Upload-Length", "2000")],
            413,
            "maximum",
        ),
    ];
    for (hs, status, msg) in cases {
        let r = send(a, "POST", "/files/", &hs, b"");
        assert_eq!(status_of(&r), status, "{hs:?}: {r}");
        assert!(body_of(&r).contains(msg), "{hs:?}: {r}");
    }
    // 413 from a limit carries the limits.
    let r = send(
        a,
        "POST",
        "/files/",
        &[v("8"), ("Upload-Complete", "?0"), ("Upload-Length", "2000")],
        b"",
    );
    assert!(
        header_of(&r, "upload-limit").is_some_and(|l| l.contains("max-size=1000")),
        "{r}"
    );

    let (_, path) = create(a, "8", &[("Upload-Complete", "?0")], b"");
    // Appends need the media type (interop 6 on), Upload-Offset and Upload-Complete.
    let r = send(
        a,
        "PATCH",
        &path,
        &[
            v("8"),
            ("Content-Type", "application/offset+octet-stream"),
            ("Upload-Offset", "0"),
            ("Upload-Complete", "?0"),
        ],
        b"x",
    );
    assert_eq!(status_of(&r), 415, "{r}");
    let r = send(
        a,
        "PATCH",
        &path,
        &[v("8"), PARTIAL, ("Upload-Complete", "?0")],
        b"x",
    );
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(body_of(&r).contains("Upload-Offset"), "{r}");
    let r = send(
        a,
        "PATCH",
        &path,
        &[v("8"), PARTIAL, ("Upload-Offset", "0")],
        b"x",
    );
    assert_eq!(status_of(&r), 400, "{r}");
    // Unknown upload.
    let r = head(a, "8", "/files/00000000000000000000000000000000");
    assert_eq!(status_of(&r), 404, "{r}");
    assert_eq!(head_offset_of(a, "8", &path), 0);
}

#[test]
fn content_digest_is_verified() {
    let server = Server::start(&[]);
    let a = server.addr;
    let (_, path) = create(a, "8", &[("Upload-Complete", "?0")], b"");
    let good = |data: &[u8]| {
        use base64::Engine as _;
        use sha2::Digest as _;
        format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
        )
    };
    let digest = good(b"hello");
    let r = send(
        a,
        "PATCH",
        &path,
        &[
            v("8"),
            PARTIAL,
            ("Upload-Offset", "0"),
            ("Upload-Complete", "?0"),
            ("Content-Digest", &digest),
        ],
        b"hello",
    );
    assert_eq!(status_of(&r), 204, "{r}");
    assert_eq!(head_offset_of(a, "8", &path), 5);
    let wrong = good(b"other");
    let r = send(
        a,
        "PATCH",
        &path,
        &[
            v("8"),
            PARTIAL,
            ("Upload-Offset", "5"),
            ("Upload-Complete", "?1"),
            ("Content-Digest", &wrong),
        ],
        b"world",
    );
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(body_of(&r).contains("Content-Digest"), "{r}");
    assert_eq!(
        head_offset_of(a, "8", &path),
        5,
        "mismatching content discarded"
    );
    // Unknown algorithms only are ignored (RFC 9530).
    let r = send(
        a,
        "PATCH",
        &path,
        &[
            v("8"),
            PARTIAL,
            ("Upload-Offset", "5"),
            ("Upload-Complete", "?1"),
            ("Content-Digest", "unixsum=12"),
        ],
        b"world",
    );
    assert_eq!(status_of(&r), 204, "{r}");
    // HEAD with Want-Repr-Digest gets the whole upload's digest.
    let h = send(
        a,
        "HEAD",
        &path,
        &[v("8"), ("Want-Repr-Digest", "sha-256=10")],
        b"",
    );
    // (Small uploads carry SHA-256 and ferry's BLAKE3 and CRC-64/NVME.)
    let b3 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(blake3::hash(b"helloworld").as_bytes())
    };
    assert_eq!(
        header_of(&h, "repr-digest"),
        Some(format!(
            "{}, blake3=:{b3}:, {}",
            good(b"helloworld"),
            crc64nvme_member(b"helloworld")
        ))
    );
}

#[test]
fn delete_cancels_the_upload() {
    let server = Server::start(&[]);
    let a = server.addr;
    let (_, path) = create(a, "8", &[("Upload-Complete", "?0")], b"abc");
    let r = send(a, "DELETE", &path, &[v("8")], b"");
    assert_eq!(status_of(&r), 204, "{r}");
    assert_eq!(status_of(&head(a, "8", &path)), 404);
    let r = append(a, &path, 3, true, b"d");
    assert_eq!(status_of(&r), 404, "{r}");
}

/// What differs between interop versions: the completeness header (3), the append media type
/// (6 on), the problem types (6 on; inconsistent length 7 on).
#[test]
fn older_interop_versions_differ_as_tabled() {
    let server = Server::start(&[]);
    let a = server.addr;

    // 3: Upload-Incomplete, no media type on appends, plain-text errors.
    let (resp, path) = create(a, "3", &[("Upload-Incomplete", "?1")], b"ab");
    assert_eq!(header_of(&resp, "upload-incomplete").as_deref(), Some("?1"));
    assert_eq!(header_of(&resp, "upload-complete"), None);
    assert_eq!(
        header_of(&resp, "upload-draft-interop-version").as_deref(),
        Some("3")
    );
    let r = send(
        a,
        "PATCH",
        &path,
        &[v("3"), ("Upload-Offset", "0"), ("Upload-Incomplete", "?0")],
        b"cd",
    );
    assert_eq!(status_of(&r), 409, "{r}");
    assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("2"));
    assert_ne!(
        header_of(&r, "content-type").as_deref(),
        Some("application/problem+json")
    );
    let r = send(
        a,
        "PATCH",
        &path,
        &[v("3"), ("Upload-Offset", "2"), ("Upload-Incomplete", "?0")],
        b"cd",
    );
    assert_eq!(status_of(&r), 204, "{r}");
    assert_eq!(header_of(&r, "upload-incomplete").as_deref(), Some("?0"));
    // Upload-Complete means nothing to interop 3.
    let r = send(
        a,
        "POST",
        "/files/",
        &[v("3"), ("Upload-Complete", "?1")],
        b"",
    );
    assert_eq!(status_of(&r), 400, "{r}");
    assert_eq!(get_body_sha(a, &path), sha256(b"abcd"));

    // 5 (tus-js-client ietf-draft-03): Upload-Complete, any media type, no problem types.
    let (_, path) = create(a, "5", &[("Upload-Complete", "?0")], b"");
    let r = send(
        a,
        "PATCH",
        &path,
        &[
            v("5"),
            ("Content-Type", "application/offset+octet-stream"),
            ("Upload-Offset", "0"),
            ("Upload-Complete", "?0"),
        ],
        b"xy",
    );
    assert_eq!(status_of(&r), 204, "{r}");
    let r = send(
        a,
        "PATCH",
        &path,
        &[v("5"), ("Upload-Offset", "1"), ("Upload-Complete", "?1")],
        b"z",
    );
    assert_eq!(status_of(&r), 409, "{r}");
    assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("2"));
    assert!(body_of(&r).starts_with("Upload-Offset"), "{r}");
    let h = head(a, "5", &path);
    assert_eq!(header_of(&h, "upload-limit"), None, "{h}");

    // 6: partial-upload required, offset problems yes, inconsistent-length problem not yet.
    let (_, path) = create(
        a,
        "6",
        &[("Upload-Complete", "?0"), ("Upload-Length", "4")],
        b"",
    );
    let r = send(
        a,
        "PATCH",
        &path,
        &[v("6"), ("Upload-Offset", "0"), ("Upload-Complete", "?0")],
        b"xy",
    );
    assert_eq!(status_of(&r), 415, "{r}");
    let r = send(
        a,
        "PATCH",
        &path,
        &[
            v("6"),
            PARTIAL,
            ("Upload-Offset", "3"),
            ("Upload-Complete", "?0"),
        ],
        b"xy",
    );
    assert_problem(&r, 409, "mismatching-upload-offset");
    let r = send(
        a,
        "PATCH",
        &path,
        &[
            v("6"),
            PARTIAL,
            ("Upload-Offset", "0"),
            ("Upload-Complete", "?0"),
        ],
        b"xyzzy",
    );
    assert_eq!(status_of(&r), 400, "{r}");
    assert_ne!(
        header_of(&r, "content-type").as_deref(),
        Some("application/problem+json")
    );
    assert!(
        header_of(&head(a, "6", &path), "upload-limit").is_some_and(|l| l.contains("expires=")),
        "interop 6 spells the lifetime `expires`"
    );
    // 7: inconsistent-upload-length exists.
    let r = send(
        a,
        "PATCH",
        &path,
        &[
            v("7"),
            PARTIAL,
            ("Upload-Offset", "0"),
            ("Upload-Complete", "?0"),
        ],
        b"xyzzy",
    );
    assert_problem(&r, 400, "inconsistent-upload-length");
    // Before -09, content sent to a completed upload is a completed-upload problem.
    let r = send(
        a,
        "PATCH",
        &path,
        &[
            v("7"),
            PARTIAL,
            ("Upload-Offset", "0"),
            ("Upload-Complete", "?1"),
        ],
        b"wxyz",
    );
    assert_eq!(status_of(&r), 204, "{r}");
    let r = send(
        a,
        "PATCH",
        &path,
        &[
            v("7"),
            PARTIAL,
            ("Upload-Offset", "4"),
            ("Upload-Complete", "?1"),
        ],
        b"!",
    );
    assert_problem(&r, 400, "completed-upload");
}

/// A request that stays open with part of its body sent.
fn open_partial_patch(
    addr: SocketAddr,
    path: &str,
    offset: u64,
    total: usize,
    sent: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nUpload-Draft-Interop-Version: 8\r\n\
         Content-Type: application/partial-upload\r\nUpload-Offset: {offset}\r\n\
         Upload-Complete: ?1\r\nContent-Length: {total}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(sent).unwrap();
    s.flush().unwrap();
    s
}

/// Waits (bounded) until HEAD reports at least `at_least`.
fn wait_offset(addr: SocketAddr, path: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = head_offset_of(addr, "8", path);
        if o >= at_least || Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn new_request_takes_over_a_busy_upload() {
    let server = Server::start(&[]);
    let a = server.addr;
    let data = random_bytes(100, 3);
    let (_, path) = create(
        a,
        "8",
        &[("Upload-Complete", "?0"), ("Upload-Length", "100")],
        b"",
    );
    let old = open_partial_patch(a, &path, 0, 100, &data[..40]);
    std::thread::sleep(Duration::from_millis(300));
    // HEAD never waits for the writer: the committed offset is still 0.
    assert_eq!(head_offset_of(a, "8", &path), 0);
    // A new append at 0 takes over: the old request commits its 40 bytes, so the new one is
    // told the true offset.
    let r = append(a, &path, 0, false, b"");
    assert_problem(&r, 409, "mismatching-upload-offset");
    assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("40"));
    drop(old);
    let r = append(a, &path, 40, true, &data[40..]);
    assert_eq!(status_of(&r), 204, "{r}");
    assert_eq!(get_body_sha(a, &path), sha256(&data));
}

/// The upload id of the newest IETF creation, from the server log (without a 104 the client of
/// a cut creation never saw its Location; the log is the server's own record).
fn created_path_from_log(server: &Server) -> String {
    let log = server.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("created (ietf)"))
        .unwrap_or_else(|| panic!("no creation in the log:\n{log}"));
    let id = line
        .split("upload=")
        .nth(1)
        .and_then(|r| r.get(..32))
        .unwrap_or_else(|| panic!("no id in {line:?}"));
    format!("/files/{id}")
}

#[test]
fn creation_cut_half_way_keeps_what_arrived_and_resumes() {
    let server = Server::start(&[]);
    let a = server.addr;
    let data = random_bytes(2 * MIB, 4);
    let half = MIB;
    {
        let mut s = TcpStream::connect(a).unwrap();
        let head = format!(
            "POST /files/ HTTP/1.1\r\nHost: {a}\r\nUpload-Draft-Interop-Version: 8\r\n\
             Upload-Complete: ?1\r\nContent-Length: {}\r\n\r\n",
            data.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&data[..half]).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let path = loop {
        if server.log().contains("created (ietf)") {
            break created_path_from_log(&server);
        }
        assert!(Instant::now() < deadline, "no creation logged");
        std::thread::sleep(Duration::from_millis(20));
    };
    let offset = wait_offset(a, &path, half as u64);
    assert_eq!(offset, half as u64, "HEAD shows exactly what arrived");
    let h = head(a, "8", &path);
    assert_eq!(header_of(&h, "upload-complete").as_deref(), Some("?0"));
    assert_eq!(
        header_of(&h, "upload-length").as_deref(),
        Some(data.len().to_string().as_str())
    );
    let r = append(a, &path, offset, true, &data[half..]);
    assert_eq!(status_of(&r), 204, "{r}");
    assert_eq!(header_of(&r, "upload-complete").as_deref(), Some("?1"));
    assert_eq!(get_body_sha(a, &path), sha256(&data));
}

/// SIGKILL while a body is in flight: after a restart HEAD reports exactly what was committed
/// (the 64 MiB checkpoint), never less than a HEAD before the kill, and the upload completes.
#[test]
fn server_killed_mid_upload_restarts_with_truthful_offset() {
    let mut server = Server::start(&[]);
    let a = server.addr;
    let total = 80 * MIB;
    let data = random_bytes(total, 5);
    let len = total.to_string();
    let (_, path) = create(
        a,
        "8",
        &[("Upload-Complete", "?0"), ("Upload-Length", &len)],
        b"",
    );
    let mut s = open_partial_patch(a, &path, 0, total, &[]);
    s.write_all(&data[..70 * MIB]).unwrap();
    s.flush().unwrap();
    let before = wait_offset(a, &path, 64 * MIB as u64);
    assert!(before >= 64 * MIB as u64, "checkpoint committed: {before}");
    server.restart_same_port_after_kill();
    drop(s);
    let after = head_offset_of(a, "8", &path);
    assert!(
        after >= before && after <= 70 * MIB as u64,
        "offset after restart {after}, before kill {before}"
    );
    let r = append(a, &path, after, true, &data[after as usize..]);
    assert_eq!(status_of(&r), 204, "{r}");
    assert_eq!(get_body_sha(a, &path), sha256(&data));
}

// ---- tus-js-client in its IETF draft modes ----

const JS_SIZE: usize = 20 * MIB;
const JS_LIMIT: Duration = Duration::from_secs(120);

fn js_upload(
    server: &Server,
    endpoint: &str,
    file: &std::path::Path,
    args: &[&str],
) -> (String, usize) {
    let out = Driver::spawn(Client::TusJs, endpoint, file, args).finish(Instant::now() + JS_LIMIT);
    assert!(
        out.status.success(),
        "tus-js-client failed ({}):\n{}\n--- server log:\n{}",
        out.status,
        out.stderr.join("\n"),
        server.log()
    );
    assert_eq!(
        out.progress().last().copied(),
        Some((JS_SIZE as u64, JS_SIZE as u64))
    );
    let chunks = out
        .stderr
        .iter()
        .filter(|l| l.starts_with("chunk "))
        .count();
    (out.stdout.trim().to_string(), chunks)
}

/// Runs tus-js-client with `--protocol protocol`; returns the server, its log and the number
/// of acknowledged requests that carried data (`chunk` lines of the driver).
fn js_run(protocol: &str, extra: &[&str], seed: u64) -> (Server, String, usize) {
    Client::TusJs.command();
    let tmp = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(tmp.path(), "source.bin", JS_SIZE, seed);
    let server = Server::start(&[]);
    let mut args = vec!["--protocol", protocol];
    args.extend_from_slice(extra);
    let (url, chunks) = js_upload(&server, &server.files_url, &file, &args);
    assert_eq!(get_sha256(&url), sha, "{protocol}: stored bytes differ");
    let log = server.log();
    (server, log, chunks)
}

#[test]
fn tus_js_ietf_draft_03_whole_file() {
    let (_s, log, chunks) = js_run("ietf-draft-03", &[], 0x3001);
    assert!(log.contains("interop=5"), "spoke interop 5:\n{log}");
    assert_eq!(chunks, 1, "one PATCH");
}

#[test]
fn tus_js_ietf_draft_05_whole_file() {
    let (_s, log, _) = js_run("ietf-draft-05", &[], 0x3002);
    assert!(log.contains("interop=6"), "spoke interop 6:\n{log}");
}

#[test]
fn tus_js_ietf_draft_05_small_chunks() {
    let (_s, _, chunks) = js_run("ietf-draft-05", &["--chunk-size", "1048576"], 0x3003);
    assert_eq!(chunks, JS_SIZE / MIB, "one PATCH per MiB");
}

#[test]
fn tus_js_ietf_draft_03_small_chunks() {
    let (_s, _, chunks) = js_run("ietf-draft-03", &["--chunk-size", "3000000"], 0x3004);
    assert_eq!(chunks, JS_SIZE.div_ceil(3_000_000), "one PATCH per chunk");
}

/// Rate-capped upload, driver SIGKILLed half-way, re-run with the same URL storage: it resumes
/// the same upload from the server's offset and the result is byte-exact.
#[test]
fn tus_js_ietf_draft_05_killed_half_way_resumes() {
    Client::TusJs.command();
    let tmp = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(tmp.path(), "source.bin", JS_SIZE, 0x3005);
    let storage = tmp.path().join("url-storage.json");
    let storage_arg = storage.display().to_string();
    let args = [
        "--protocol",
        "ietf-draft-05",
        "--chunk-size",
        "2097152",
        "--url-storage",
        &storage_arg,
    ];
    let server = Server::start(&[]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            rate: Some(5_000_000),
            ..Faults::default()
        },
    );
    let endpoint = proxy.url("/files/");
    let deadline = Instant::now() + JS_LIMIT;
    let mut first = Driver::spawn(Client::TusJs, &endpoint, &file, &args);
    let mut url = None;
    loop {
        let Some(line) = first.next_line(deadline) else {
            panic!("driver ended early:\n{}", first.log.join("\n"));
        };
        if let Some(u) = line.strip_prefix("upload-url ") {
            url = Some(u.trim().to_string());
        }
        if let Some((sent, total)) = parse_progress(&line)
            && sent * 2 >= total
        {
            first.kill();
            assert!(sent < total, "finished before the kill");
            break;
        }
    }
    drop(first);
    let url = url.expect("upload-url line");
    let direct = server.rebase(&url);
    let p = path_of(&direct);
    let offset = head_offset_of(server.addr, "6", &p);
    assert!(offset > 0 && offset < JS_SIZE as u64, "offset {offset}");

    proxy.set(Faults::default());
    let out =
        Driver::spawn(Client::TusJs, &endpoint, &file, &args).finish(Instant::now() + JS_LIMIT);
    assert!(
        out.status.success(),
        "re-run failed:\n{}",
        out.stderr.join("\n")
    );
    assert!(
        out.stderr
            .iter()
            .any(|l| l.strip_prefix("resume ").map(str::trim) == Some(url.as_str())),
        "did not resume {url}:\n{}",
        out.stderr.join("\n")
    );
    assert_eq!(out.stdout.trim(), url);
    let first_progress = out.progress().first().map(|p| p.0);
    assert!(
        first_progress.is_some_and(|s| s >= offset),
        "re-run started at {first_progress:?}, server had {offset}"
    );
    assert_eq!(head_offset_of(server.addr, "6", &p), JS_SIZE as u64);
    assert_eq!(get_sha256(&direct), sha);
}
