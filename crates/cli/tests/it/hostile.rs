//! Hostile input: every bad request gets the right 4xx with a one-line message, never a panic,
//! never a 5xx, and never a change to stored data.

use crate::support::*;
use std::path::Path;
use std::time::Duration;

const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");
const OCTET: (&str, &str) = ("Content-Type", "application/offset+octet-stream");
const LIMIT: Duration = Duration::from_secs(10);

/// Request headers for a table row.
type Headers<'a> = Vec<(&'a str, &'a str)>;

fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    format!("/{}", rest.split_once('/').map_or("", |(_, p)| p))
}

/// Standard base64 with padding (the tests need no dependency for this).
fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a HEAD shows of an upload.
#[derive(Debug, PartialEq, Eq, Clone)]
struct State {
    status: u16,
    offset: Option<String>,
    length: Option<String>,
    defer: Option<String>,
    metadata: Option<String>,
}

fn state(url: &str) -> State {
    let resp = client()
        .head(url)
        .header(TUS.0, TUS.1)
        .send()
        .expect("HEAD");
    let get = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    State {
        status: resp.status().as_u16(),
        offset: get("upload-offset"),
        length: get("upload-length"),
        defer: get("upload-defer-length"),
        metadata: get("upload-metadata"),
    }
}

/// Files under the data directory's upload store: creations that were refused leave none.
fn stored_files(data_dir: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { walk(&p) } else { 1 }
                })
                .sum()
        })
    }
    walk(&data_dir.join("uploads"))
}

/// A server with one upload of length 100 holding 10 known bytes and a filename.
struct Fixture {
    server: Server,
    url: String,
    path: String,
    data: Vec<u8>,
    before: State,
}

const FIXTURE_MD: &str = "filename aGVsbG8udHh0";

fn fixture(args: &[&str]) -> Fixture {
    let server = Server::start(args);
    let data = random_bytes(100, 42);
    let url = create(&server, 100, Some(FIXTURE_MD));
    assert_eq!(patch(&url, 0, data[..10].to_vec()), (204, Some(10)));
    let before = state(&url);
    assert_eq!(before.offset.as_deref(), Some("10"));
    let path = path_of(&url);
    Fixture {
        server,
        url,
        path,
        data,
        before,
    }
}

impl Fixture {
    /// The upload is as it was, the server still answers, and nothing panicked.
    fn assert_intact(&self, case: &str) {
        assert_eq!(state(&self.url), self.before, "upload changed by {case}");
        assert_healthy(&self.server, case);
    }

    /// Finishes the upload and checks every byte: proves refused requests wrote nothing.
    fn finish_and_verify(&self) {
        assert_eq!(
            patch(&self.url, 10, self.data[10..].to_vec()),
            (204, Some(100))
        );
        assert_eq!(get_sha256(&self.url), sha256(&self.data));
    }
}

fn assert_healthy(server: &Server, case: &str) {
    let url = server.files_url.replace("/files/", "/healthz");
    let resp = client().get(url).send();
    assert!(
        matches!(&resp, Ok(r) if r.status().as_u16() == 200),
        "server unhealthy after {case}: {resp:?}"
    );
    let log = server.log();
    assert!(!log.contains("panicked"), "panic after {case}:\n{log}");
}

/// A text header as bytes, for [`request`].
fn bytes<'a>((k, v): (&'a str, &'a str)) -> (&'a str, &'a [u8]) {
    (k, v.as_bytes())
}

/// The status is `want` and the body is a single non-empty line of text.
fn assert_error(resp: &str, want: u16, case: &str) {
    assert_eq!(status_of(resp), want, "{case}: {resp}");
    let body = body_of(resp);
    let line = body.strip_suffix('\n').unwrap_or(body);
    assert!(
        !line.trim().is_empty() && !line.contains(['\n', '\r']),
        "{case}: message is not one line: {body:?}"
    );
}

const BAD_NUMBERS: &[&str] = &[
    "-1",
    "+5",
    "1e3",
    " 12 3",
    "0x10",
    "1.0",
    "ten",
    "18446744073709551616",
    "9223372036854775808",
    "99999999999999999999999999999999",
    "",
];

// ---------------------------------------------------------------------------------------------
// Numbers

#[test]
fn bad_upload_offset_is_400() {
    let f = fixture(&[]);
    for bad in BAD_NUMBERS {
        let case = format!("PATCH Upload-Offset {bad:?}");
        let resp = send(
            f.server.addr,
            "PATCH",
            &f.path,
            &[TUS, OCTET, ("Upload-Offset", bad)],
            b"abcde",
        );
        assert_error(&resp, 400, &case);
        f.assert_intact(&case);
    }
    let resp = send(f.server.addr, "PATCH", &f.path, &[TUS, OCTET], b"abcde");
    assert_error(&resp, 400, "PATCH without Upload-Offset");
    f.assert_intact("PATCH without Upload-Offset");
    f.finish_and_verify();
}

#[test]
fn bad_upload_length_is_400_on_post_and_patch() {
    let f = fixture(&[]);
    let files = stored_files(&f.server.data_dir);
    for bad in BAD_NUMBERS {
        let case = format!("POST Upload-Length {bad:?}");
        let resp = send(
            f.server.addr,
            "POST",
            "/files/",
            &[TUS, ("Upload-Length", bad)],
            b"",
        );
        assert_error(&resp, 400, &case);
        assert_eq!(header_of(&resp, "Location"), None, "{case}");
        assert_eq!(
            stored_files(&f.server.data_dir),
            files,
            "{case} created an upload"
        );

        let case = format!("PATCH Upload-Length {bad:?}");
        let resp = send(
            f.server.addr,
            "PATCH",
            &f.path,
            &[TUS, OCTET, ("Upload-Offset", "10"), ("Upload-Length", bad)],
            b"abcde",
        );
        assert_error(&resp, 400, &case);
        f.assert_intact(&case);
    }
    // The same on a deferred upload, whose length may still be set.
    let resp = client()
        .post(&f.server.files_url)
        .header(TUS.0, TUS.1)
        .header("Upload-Defer-Length", "1")
        .send()
        .unwrap();
    let deferred = tus::location(&resp).unwrap();
    let before = state(&deferred);
    for bad in BAD_NUMBERS {
        let case = format!("PATCH deferred Upload-Length {bad:?}");
        let resp = send(
            f.server.addr,
            "PATCH",
            &path_of(&deferred),
            &[TUS, OCTET, ("Upload-Offset", "0"), ("Upload-Length", bad)],
            b"abcde",
        );
        assert_error(&resp, 400, &case);
        assert_eq!(state(&deferred), before, "{case}");
    }
    assert_eq!(before.defer.as_deref(), Some("1"));
    f.finish_and_verify();
}

#[test]
fn creation_header_conflicts_are_400() {
    let f = fixture(&[]);
    let files = stored_files(&f.server.data_dir);
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "both lengths",
            &[("Upload-Length", "5"), ("Upload-Defer-Length", "1")],
        ),
        ("defer 2", &[("Upload-Defer-Length", "2")]),
        ("defer 0", &[("Upload-Defer-Length", "0")]),
        ("defer true", &[("Upload-Defer-Length", "true")]),
        ("no length at all", &[]),
    ];
    for (case, headers) in cases {
        let mut h = vec![TUS];
        h.extend_from_slice(headers);
        let resp = send(f.server.addr, "POST", "/files/", &h, b"");
        assert_error(&resp, 400, case);
        assert_eq!(header_of(&resp, "Location"), None, "{case}");
        assert_eq!(
            stored_files(&f.server.data_dir),
            files,
            "{case} created an upload"
        );
        f.assert_intact(case);
    }
}

#[test]
fn offset_past_the_length_is_409() {
    let f = fixture(&[]);
    for off in ["100", "150", "9223372036854775807"] {
        let case = format!("PATCH Upload-Offset {off}");
        let resp = send(
            f.server.addr,
            "PATCH",
            &f.path,
            &[TUS, OCTET, ("Upload-Offset", off)],
            b"abcde",
        );
        assert_error(&resp, 409, &case);
        assert_eq!(
            header_of(&resp, "Upload-Offset").as_deref(),
            Some("10"),
            "{case}"
        );
        f.assert_intact(&case);
    }
    f.finish_and_verify();
}

// ---------------------------------------------------------------------------------------------
// Bodies too long, lengths that change

#[test]
fn body_longer_than_the_upload_is_413_and_nothing_is_written() {
    let f = fixture(&[]);
    // Declared with Content-Length: refused before reading.
    let resp = send(
        f.server.addr,
        "PATCH",
        &f.path,
        &[TUS, OCTET, ("Upload-Offset", "10")],
        &[0xEE; 91],
    );
    assert_error(&resp, 413, "Content-Length past the length");
    f.assert_intact("Content-Length past the length");

    // Chunked: discovered while reading; the whole chunk is discarded.
    let resp = send_chunked(
        f.server.addr,
        "PATCH",
        &f.path,
        &[TUS, OCTET, ("Upload-Offset", "10")],
        &[&[0xEE; 50], &[0xEE; 41]],
        &[],
    );
    assert_error(&resp, 413, "chunked past the length");
    f.assert_intact("chunked past the length");

    // A big chunked overrun (several buffers' worth).
    let big = vec![0xEEu8; 300_000];
    let resp = send_chunked(
        f.server.addr,
        "PATCH",
        &f.path,
        &[TUS, OCTET, ("Upload-Offset", "10")],
        &[&big[..90], &big[90..]],
        &[],
    );
    assert_error(&resp, 413, "big chunked overrun");
    f.assert_intact("big chunked overrun");
    f.finish_and_verify();
}

#[test]
fn creation_with_upload_longer_than_the_length_is_413_and_leaves_nothing() {
    let f = fixture(&[]);
    let files = stored_files(&f.server.data_dir);
    let resp = send(
        f.server.addr,
        "POST",
        "/files/",
        &[TUS, OCTET, ("Upload-Length", "10")],
        &[1u8; 20],
    );
    assert_error(&resp, 413, "POST body past Upload-Length");
    assert_eq!(header_of(&resp, "Location"), None);
    f.assert_intact("POST body past Upload-Length");
    let resp = send_chunked(
        f.server.addr,
        "POST",
        "/files/",
        &[TUS, OCTET, ("Upload-Length", "10")],
        &[&[1u8; 6], &[1u8; 6]],
        &[],
    );
    assert_error(&resp, 413, "chunked POST body past Upload-Length");
    assert_eq!(
        stored_files(&f.server.data_dir),
        files,
        "refused creations left uploads"
    );
    f.assert_intact("POST body past Upload-Length");
}

#[test]
fn changing_the_length_on_patch_is_400() {
    let f = fixture(&[]);
    for l in ["99", "101", "0", "10"] {
        let case = format!("PATCH Upload-Length {l}");
        let resp = send(
            f.server.addr,
            "PATCH",
            &f.path,
            &[TUS, OCTET, ("Upload-Offset", "10"), ("Upload-Length", l)],
            b"abcde",
        );
        assert_error(&resp, 400, &case);
        f.assert_intact(&case);
    }
    f.finish_and_verify();

    // A deferred length below what was already received.
    let resp = client()
        .post(&f.server.files_url)
        .header(TUS.0, TUS.1)
        .header("Upload-Defer-Length", "1")
        .send()
        .unwrap();
    let url = tus::location(&resp).unwrap();
    assert_eq!(patch(&url, 0, vec![3; 10]), (204, Some(10)));
    let before = state(&url);
    for l in ["5", "9"] {
        let case = format!("deferred Upload-Length {l} below offset 10");
        let resp = send(
            f.server.addr,
            "PATCH",
            &path_of(&url),
            &[TUS, OCTET, ("Upload-Offset", "10"), ("Upload-Length", l)],
            b"",
        );
        assert_error(&resp, 400, &case);
        assert_eq!(state(&url), before, "{case}");
    }
    assert_eq!(before.defer.as_deref(), Some("1"));
}

#[test]
fn a_finished_upload_takes_no_more_bytes() {
    let server = Server::start(&[]);
    let data = random_bytes(10, 9);
    let url = create(&server, 10, None);
    assert_eq!(patch(&url, 0, data.clone()), (204, Some(10)));
    let before = state(&url);
    let path = path_of(&url);
    for (off, body) in [("10", &b"more"[..]), ("0", &data[..]), ("5", &b"xx"[..])] {
        let case = format!("PATCH finished at {off}");
        let resp = send(
            server.addr,
            "PATCH",
            &path,
            &[TUS, OCTET, ("Upload-Offset", off)],
            body,
        );
        let st = status_of(&resp);
        assert!(st == 413 || st == 409, "{case}: {resp}");
        assert_error(&resp, st, &case);
        assert_eq!(state(&url), before, "{case}");
        assert_healthy(&server, &case);
    }
    // An empty PATCH at the end is a harmless no-op.
    let resp = send(
        server.addr,
        "PATCH",
        &path,
        &[TUS, OCTET, ("Upload-Offset", "10")],
        b"",
    );
    assert_eq!(status_of(&resp), 204, "{resp}");
    assert_eq!(get_sha256(&url), sha256(&data));
    assert_healthy(&server, "PATCH finished");
}

#[test]
fn max_size_is_enforced_with_413() {
    let f = fixture(&["--max-size", "1K"]);
    let server = &f.server;
    let files = stored_files(&server.data_dir);
    for (case, headers, body) in [
        (
            "POST length over",
            vec![TUS, ("Upload-Length", "1025")],
            vec![],
        ),
        (
            "POST huge length",
            vec![TUS, ("Upload-Length", "9223372036854775807")],
            vec![],
        ),
        (
            "creation-with-upload over",
            vec![TUS, OCTET, ("Upload-Length", "2048")],
            vec![7u8; 100],
        ),
    ] {
        let resp = send(server.addr, "POST", "/files/", &headers, &body);
        assert_error(&resp, 413, case);
        assert_eq!(header_of(&resp, "Location"), None, "{case}");
        assert_eq!(
            header_of(&resp, "Tus-Max-Size").as_deref(),
            Some("1024"),
            "{case}"
        );
        f.assert_intact(case);
    }
    assert_eq!(stored_files(&server.data_dir), files);
    // At the limit is fine.
    let url = create(server, 1024, None);
    assert_eq!(patch(&url, 0, vec![1; 1024]), (204, Some(1024)));

    // A deferred length that turns out too large.
    let resp = client()
        .post(&server.files_url)
        .header(TUS.0, TUS.1)
        .header("Upload-Defer-Length", "1")
        .send()
        .unwrap();
    let url = tus::location(&resp).unwrap();
    assert_eq!(patch(&url, 0, vec![1; 100]), (204, Some(100)));
    let before = state(&url);
    let resp = send(
        server.addr,
        "PATCH",
        &path_of(&url),
        &[
            TUS,
            OCTET,
            ("Upload-Offset", "100"),
            ("Upload-Length", "4096"),
        ],
        &[2; 10],
    );
    assert_error(&resp, 413, "deferred length over");
    assert_eq!(state(&url), before);
    assert_healthy(server, "deferred length over");
    f.assert_intact("deferred length over");
    f.finish_and_verify();
}

// ---------------------------------------------------------------------------------------------
// Upload-Metadata

#[test]
fn malformed_metadata_is_400() {
    let f = fixture(&[]);
    let files = stored_files(&f.server.data_dir);
    let cases: &[(&str, &[u8])] = &[
        ("bad base64", b"filename !!!!"),
        ("impossible base64 length", b"filename Y"),
        ("url-safe base64", b"filename Zm9v-_"),
        ("duplicate keys", b"name YQ==,name Yg=="),
        ("duplicate key-only", b"flag,flag"),
        ("key with space", b"my key dGVzdA=="),
        ("trailing comma", b"filename YQ==,"),
        ("leading comma", b",filename YQ=="),
        ("empty element", b"a YQ==,,b Yg=="),
        ("non-ASCII key", "na\u{ef}ve YQ==".as_bytes()),
        ("latin-1 key", b"na\xefve YQ=="),
    ];
    for (case, value) in cases {
        let req = request(
            "POST",
            "/files/",
            f.server.addr,
            &[
                bytes(TUS),
                ("Upload-Length", b"5"),
                ("Upload-Metadata", value),
            ],
            b"",
        );
        let resp = raw(f.server.addr, &req, LIMIT);
        assert_error(&resp, 400, case);
        assert_eq!(header_of(&resp, "Location"), None, "{case}");
        assert_eq!(
            stored_files(&f.server.data_dir),
            files,
            "{case} created an upload"
        );
        f.assert_intact(case);
    }
    // A control byte in a header value is invalid HTTP: hyper's parser answers 400 (with no
    // body of ours) before ferry sees the request.
    let req = request(
        "POST",
        "/files/",
        f.server.addr,
        &[
            bytes(TUS),
            ("Upload-Length", b"5"),
            ("Upload-Metadata", b"a\x01b YQ=="),
        ],
        b"",
    );
    let resp = raw(f.server.addr, &req, LIMIT);
    assert_eq!(status_of(&resp), 400, "control char in key: {resp}");
    assert_eq!(
        stored_files(&f.server.data_dir),
        files,
        "control char created an upload"
    );
    f.assert_intact("control char in key");
}

/// Creates an upload of `data` with a raw `filename` value; returns its URL and the exact
/// Upload-Metadata sent.
fn upload_named(server: &Server, filename: &[u8], data: &[u8]) -> (String, String) {
    let md = format!("filename {}", b64(filename));
    let resp = send(
        server.addr,
        "POST",
        "/files/",
        &[
            TUS,
            ("Upload-Length", &data.len().to_string()),
            ("Upload-Metadata", &md),
        ],
        b"",
    );
    assert_eq!(status_of(&resp), 201, "{resp}");
    let url = url_at(server.addr, &header_of(&resp, "Location").unwrap());
    assert_eq!(patch(&url, 0, data.to_vec()).0, 204);
    (url, md)
}

/// A GET of a finished upload, raw, so injected header lines would show.
fn raw_get(server: &Server, url: &str) -> String {
    let resp = send(server.addr, "GET", &path_of(url), &[], b"");
    assert_eq!(status_of(&resp), 200, "{resp}");
    resp
}

fn assert_disposition_safe(cd: &str, case: &str) {
    assert!(
        cd.bytes().all(|b| b == b' ' || (0x21..=0x7e).contains(&b)),
        "{case}: Content-Disposition not visible ASCII: {cd:?}"
    );
    assert!(cd.starts_with("attachment"), "{case}: {cd}");
    if let Some(rest) = cd.strip_prefix("attachment; filename=\"") {
        // The quoted fallback has no unescaped quote: it ends exactly before filename*.
        let end = rest.find('"').unwrap();
        assert!(
            rest[end..].starts_with("\"; filename*=UTF-8''"),
            "{case}: quote inside the fallback name: {cd}"
        );
        assert!(!rest[end + 1..].contains('"'), "{case}: stray quote: {cd}");
    }
}

#[test]
fn metadata_with_cr_lf_and_quotes_is_only_echoed_encoded() {
    let server = Server::start(&[]);
    let evil = b"evil\r\nSet-Cookie: pwned=1\r\n\"x\".html";
    let (url, md) = upload_named(&server, evil, b"hello");
    // HEAD echoes the base64 form, nothing decoded.
    let resp = send(server.addr, "HEAD", &path_of(&url), &[TUS], b"");
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(
        header_of(&resp, "Upload-Metadata").as_deref(),
        Some(md.as_str())
    );
    assert_eq!(
        header_of(&resp, "Set-Cookie"),
        None,
        "header injection via HEAD"
    );
    // GET: the name is neutralised.
    let resp = raw_get(&server, &url);
    assert_eq!(header_of(&resp, "Set-Cookie"), None, "{resp}");
    let cd = header_of(&resp, "Content-Disposition").unwrap();
    assert_disposition_safe(&cd, "CR/LF/quotes");
    assert!(
        cd.contains("filename*=UTF-8''evilSet-Cookie%3A%20pwned%3D1%22x%22.html"),
        "{cd}"
    );
    assert!(resp.ends_with("\r\n\r\nhello"), "body: {resp}");
    assert_healthy(&server, "CR/LF/quotes");
}

#[test]
fn non_utf8_and_very_long_filenames_are_stored_and_served_safely() {
    let server = Server::start(&[]);
    let (url, md) = upload_named(&server, b"\xff\xfename\xc3.txt", b"abc");
    assert_eq!(
        state(&url).metadata.as_deref(),
        Some(md.as_str()),
        "non-UTF-8 echo"
    );
    let resp = raw_get(&server, &url);
    let cd = header_of(&resp, "Content-Disposition").unwrap();
    assert_disposition_safe(&cd, "non-UTF-8");
    assert!(cd.contains("filename*=UTF-8''%EF%BF%BD"), "{cd}");

    let long: Vec<u8> = std::iter::repeat_n(b'a', 10 * 1024)
        .chain(*b".bin")
        .collect();
    let (url, md) = upload_named(&server, &long, b"abc");
    assert_eq!(
        state(&url).metadata.as_deref(),
        Some(md.as_str()),
        "10 KB echo"
    );
    let resp = raw_get(&server, &url);
    let cd = header_of(&resp, "Content-Disposition").unwrap();
    assert_disposition_safe(&cd, "10 KB name");
    assert!(cd.len() < 1024, "Content-Disposition of {} bytes", cd.len());
    assert_eq!(get_sha256(&url), sha256(b"abc"));
    assert_healthy(&server, "long names");
}

// ---------------------------------------------------------------------------------------------
// Oversize headers

#[test]
fn oversize_headers_are_refused_and_the_server_stays_up() {
    let f = fixture(&[]);
    let big = "a".repeat(100 * 1024);
    let many: Vec<(String, String)> = (0..200).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cases: Vec<(&str, &str, &str, Headers)> = vec![
        (
            "100 KB junk header on HEAD",
            "HEAD",
            f.path.as_str(),
            vec![TUS, ("X-Junk", &big)],
        ),
        (
            "100 KB Upload-Offset on PATCH",
            "PATCH",
            f.path.as_str(),
            vec![TUS, OCTET, ("Upload-Offset", &big)],
        ),
        (
            "100 KB Upload-Metadata on POST",
            "POST",
            "/files/",
            vec![TUS, ("Upload-Length", "5"), ("Upload-Metadata", &big)],
        ),
        ("200 headers", "HEAD", f.path.as_str(), {
            let mut h = vec![TUS];
            h.extend(many.iter().copied());
            h
        }),
    ];
    let files = stored_files(&f.server.data_dir);
    for (case, method, path, headers) in cases {
        let resp = send(f.server.addr, method, path, &headers, b"");
        let st = status_of(&resp);
        assert!(
            st == 431 || st == 0,
            "{case}: expected 431 or a closed connection: {resp:.300}"
        );
        f.assert_intact(case);
    }
    assert_eq!(stored_files(&f.server.data_dir), files);
    f.finish_and_verify();
}

// ---------------------------------------------------------------------------------------------
// Ids and paths

#[test]
fn path_tricks_in_ids_are_404() {
    let f = fixture(&[]);
    let id = f.url.rsplit('/').next().unwrap().to_string();
    let mut paths = vec![
        "/files/..".to_string(),
        "/files/../files/".to_string(),
        format!("/files/../files/{id}"),
        "/files/%2e%2e".to_string(),
        "/files/%2e%2e/%2e%2e/etc/passwd".to_string(),
        format!("/files/%2F{}", &id[..29]),
        format!("/files/%2F{id}"),
        format!("/files/{}%2F", &id[..29]),
        format!("/files/{}%00", &id[..29]),
        format!("/files/{id}%00"),
        format!("/files/{}%00{}", &id[..16], &id[19..]),
        format!("/files/{}", &id[..31]),
        format!("/files/{id}0"),
        format!("/files/{id}/"),
        format!("/files//{id}"),
        format!("/files/{id}/x"),
        format!("/files/./{id}"),
        format!(
            "/files/{}",
            id.replacen(|c: char| c.is_ascii_digit(), "%30", 1)
        ),
        "/files/0123456789abcdef0123456789abcdeg".to_string(),
        "/files/%".to_string(),
    ];
    if id.to_ascii_uppercase() != id {
        paths.push(format!("/files/{}", id.to_ascii_uppercase()));
    }
    for p in &paths {
        let cases: [(&str, Headers, &[u8]); 4] = [
            ("HEAD", vec![TUS], b""),
            ("GET", vec![], b""),
            ("PATCH", vec![TUS, OCTET, ("Upload-Offset", "10")], b"abcde"),
            ("DELETE", vec![TUS], b""),
        ];
        for (method, headers, body) in cases {
            let case = format!("{method} {p}");
            let resp = send(f.server.addr, method, p, &headers, body);
            // The id parser sees anything but exactly 32 lowercase hex chars as unknown, and
            // paths are never normalised, so none of these reaches the real upload.
            if method == "HEAD" {
                assert_eq!(status_of(&resp), 404, "{case}: {resp}");
                assert_eq!(header_of(&resp, "Upload-Offset"), None, "{case}");
            } else {
                assert_error(&resp, 404, &case);
            }
            f.assert_intact(&case);
        }
    }
    f.finish_and_verify();
}

// ---------------------------------------------------------------------------------------------
// Methods

#[test]
fn unknown_methods_are_405() {
    let f = fixture(&[]);
    for (method, path) in [
        ("BREW", f.path.as_str()),
        ("PUT", f.path.as_str()),
        ("POST", f.path.as_str()),
        ("PROPFIND", f.path.as_str()),
        ("BREW", "/files/"),
        ("CONNECT", "/files/"),
    ] {
        let case = format!("{method} {path}");
        let resp = send(
            f.server.addr,
            method,
            path,
            &[TUS, OCTET, ("Upload-Offset", "10")],
            b"abcde",
        );
        let st = status_of(&resp);
        if method == "CONNECT" {
            // hyper refuses CONNECT to a path before routing; any 4xx (or a close) is fine.
            assert!(st == 0 || (400..500).contains(&st), "{case}: {resp}");
        } else {
            assert_error(&resp, 405, &case);
            assert!(header_of(&resp, "Allow").is_some(), "{case}: no Allow");
        }
        f.assert_intact(&case);
    }
    f.finish_and_verify();
}

#[test]
fn garbage_method_override_is_400() {
    let f = fixture(&[]);
    for bad in ["BREW", "PATCH, DELETE", "", "PUT", "DELETE PATCH", "\u{e9}"] {
        let case = format!("X-HTTP-Method-Override {bad:?}");
        let req = request(
            "POST",
            &f.path,
            f.server.addr,
            &[
                bytes(TUS),
                bytes(OCTET),
                ("Upload-Offset", b"10"),
                ("X-HTTP-Method-Override", bad.as_bytes()),
            ],
            b"abcde",
        );
        let resp = raw(f.server.addr, &req, LIMIT);
        assert_error(&resp, 400, &case);
        f.assert_intact(&case);
    }
    // Garbage on the collection: no upload created.
    let files = stored_files(&f.server.data_dir);
    let resp = send(
        f.server.addr,
        "POST",
        "/files/",
        &[
            TUS,
            ("Upload-Length", "5"),
            ("X-HTTP-Method-Override", "BREW"),
        ],
        b"",
    );
    assert_error(&resp, 400, "override BREW on the collection");
    assert_eq!(stored_files(&f.server.data_dir), files);
    // The override only applies to POST: a GET or HEAD asking to be a DELETE stays a read.
    for method in ["GET", "HEAD", "OPTIONS"] {
        let case = format!("{method} with X-HTTP-Method-Override: DELETE");
        let resp = send(
            f.server.addr,
            method,
            &f.path,
            &[TUS, ("X-HTTP-Method-Override", "DELETE")],
            b"",
        );
        assert!(
            status_of(&resp) != 204 || method == "OPTIONS",
            "{case}: {resp}"
        );
        f.assert_intact(&case);
    }
    f.finish_and_verify();
}

#[test]
fn hostile_host_headers_never_reach_location() {
    let server = Server::start(&[]);
    for host in [
        "evil@attacker.example",
        "a b",
        "x.example/path",
        "\"quoted\"",
        "attacker.example",
    ] {
        let req = format!(
            "POST /files/ HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 1\r\n\
             Connection: close\r\nContent-Length: 0\r\n\r\n"
        );
        let resp = raw(server.addr, req.as_bytes(), LIMIT);
        let st = status_of(&resp);
        // Malformed: 400. Well-formed but not a name of this loopback server: 421.
        let want = if host == "attacker.example" { 421 } else { 400 };
        assert_eq!(st, want, "Host {host:?}: {resp}");
        assert_eq!(header_of(&resp, "Location"), None, "Host {host:?}");
    }
    assert_healthy(&server, "hostile Host");
}

// ---------------------------------------------------------------------------------------------
// The hostile table: malformed and malicious requests over every route family, one row each,
// from `data/hostile.toml`.

/// What a row attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
enum Cat {
    Numbers,
    Headers,
    Bodies,
    Paths,
    Methods,
    Encodings,
    Sizes,
    SlowLoris,
    Floods,
}

/// Which route family a row goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
enum Route {
    /// tus 1.0 on `/files/`.
    Tus,
    /// The IETF draft on `/files/` (`Upload-Draft-Interop-Version: 8`).
    Ietf,
    /// `GET /files/{id}`: ranges and conditionals.
    Download,
    /// `--share` at `/share/`.
    Share,
    /// Content-Range chunk sessions at `/chunks/`.
    Chunks,
}

/// How a row's bytes go out.
enum Send {
    /// All at once (`Connection: close`), then read the answer.
    Once(Vec<u8>),
    /// A request head one byte every 100 ms, never finished: the server's header read timeout
    /// must close the connection.
    Dribble(Vec<u8>),
    /// A head and part of the body, then silence with the socket open: the server's body idle
    /// timeout must end it.
    Stall(Vec<u8>),
    /// A head and part of the body, then a half-close (FIN) of the sending side.
    ShortEof(Vec<u8>),
    /// A keep-alive request: answered, then the connection must be closed by the server.
    ThenClose(Vec<u8>),
}

/// What a row must get.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Exactly this status (with a one-line message when the response has a body).
    Status(u16),
    /// Some 4xx, or the connection closed without an answer (a request hyper cannot parse, a
    /// body that lied about its framing).
    ClientErrorOrClose,
}

struct Row {
    cat: Cat,
    route: Route,
    name: String,
    send: Send,
    want: Want,
}

/// The fixture the table runs against.
struct Target {
    server: Server,
    /// tus upload, length 100, 10 bytes in.
    tus: String,
    /// IETF upload (interop 8), length 100, 10 bytes in.
    ietf: String,
    /// A finished upload of 64 bytes (for downloads).
    done: String,
    /// A chunk session, length 100, bytes 0-9 received.
    chunks: String,
    share_dir: tempfile::TempDir,
}

const IV: (&str, &str) = ("Upload-Draft-Interop-Version", "8");
const PARTIAL: (&str, &str) = ("Content-Type", "application/partial-upload");
const NOT_DONE: (&str, &str) = ("Upload-Complete", "?0");
/// Server timeouts for the slow-loris rows.
const SLOW_TIMEOUT: Duration = Duration::from_secs(2);

fn target() -> Target {
    let share_dir = tempfile::tempdir().unwrap();
    std::fs::write(share_dir.path().join("a.txt"), random_bytes(64, 5)).unwrap();
    let share = share_dir.path().to_str().unwrap().to_string();
    let server = Server::start(&[
        "--share",
        &share,
        "--max-size",
        "1M",
        "--body-idle-timeout",
        "2s",
        "--header-read-timeout",
        "2s",
    ]);
    let tus = create(&server, 100, Some(FIXTURE_MD));
    assert_eq!(patch(&tus, 0, random_bytes(10, 1)), (204, Some(10)));
    let resp = send(
        server.addr,
        "POST",
        "/files/",
        &[IV, NOT_DONE, PARTIAL, ("Upload-Length", "100")],
        &random_bytes(10, 2),
    );
    assert_eq!(status_of(&resp), 201, "{resp}");
    let ietf = url_at(server.addr, &header_of(&resp, "Location").unwrap());
    let done = create(&server, 64, None);
    assert_eq!(patch(&done, 0, random_bytes(64, 3)), (204, Some(64)));
    let resp = send(
        server.addr,
        "POST",
        "/chunks/",
        &[("Upload-Length", "100")],
        b"",
    );
    assert_eq!(status_of(&resp), 201, "{resp}");
    let chunks = path_of(&header_of(&resp, "Location").unwrap());
    let resp = send(
        server.addr,
        "PUT",
        &chunks,
        &[("Content-Range", "bytes 0-9/100")],
        &random_bytes(10, 4),
    );
    assert_eq!(status_of(&resp), 200, "{resp}");
    Target {
        chunks,
        tus: path_of(&tus),
        ietf: path_of(&ietf),
        done: path_of(&done),
        server,
        share_dir,
    }
}

/// A raw request head without `Connection: close` (for cases that check the server closes).
fn keep_alive(
    method: &str,
    path: &str,
    addr: std::net::SocketAddr,
    headers: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n").into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: ").as_bytes());
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// The table's cases: `data/hostile.toml` (its header comment describes the fields).
const TABLE: &str = include_str!("data/hostile.toml");

#[derive(serde::Deserialize)]
struct Table {
    case: Vec<Case>,
}

/// One `[[case]]` of the table, as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    cat: Cat,
    route: Route,
    name: String,
    #[serde(default)]
    send: SendKind,
    request: String,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    body: String,
    flood: Option<(usize, usize)>,
    want: WantSpec,
}

#[derive(serde::Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum SendKind {
    #[default]
    Once,
    Chunked,
    ShortEof,
    Stall,
    Dribble,
    ThenClose,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum WantSpec {
    Status(u16),
    Other(String),
}

/// Expands the `{...}` placeholders of a table string into bytes.
fn expand(s: &str, t: &Target) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        let j = i + rest[i..]
            .find('}')
            .unwrap_or_else(|| panic!("unclosed {{ in {s:?}"));
        out.extend(expand_one(&rest[i + 1..j], t));
        rest = &rest[j + 1..];
    }
    out.extend_from_slice(rest.as_bytes());
    out
}

fn expand_one(token: &str, t: &Target) -> Vec<u8> {
    if let Some(r) = token.strip_prefix("rep ") {
        let (n, text) = r.split_once(' ').expect("{rep N TEXT}");
        return text.repeat(n.parse().expect("{rep N TEXT}")).into_bytes();
    }
    if let Some(n) = token.strip_prefix("ranges ") {
        let n: usize = n.parse().expect("{ranges N}");
        let ranges: Vec<String> = (0..n).map(|i| format!("{i}-{i}")).collect();
        return ranges.join(",").into_bytes();
    }
    if let Some(b) = token.strip_prefix("0x") {
        let (hex, n) = b.split_once('*').unwrap_or((b, "1"));
        let byte = u8::from_str_radix(hex, 16).expect("{0xNN}");
        return vec![byte; n.parse().expect("{0xNN*N}")];
    }
    let (name, part) = token.split_once('.').unwrap_or((token, ""));
    let path = match name {
        "tus" => &t.tus,
        "ietf" => &t.ietf,
        "done" => &t.done,
        "chunks" => &t.chunks,
        _ => panic!("unknown placeholder {{{token}}}"),
    };
    let id = path.rsplit('/').next().unwrap();
    let text = match part {
        "" => path.clone(),
        "id" => id.to_string(),
        "ID" => id.to_ascii_uppercase(),
        p => {
            let n: usize = p
                .strip_prefix("id:")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unknown placeholder {{{token}}}"));
            id[..n].to_string()
        }
    };
    text.into_bytes()
}

/// The bytes a case sends and how.
fn build(case: &Case, t: &Target) -> Send {
    let a = t.server.addr;
    let (method, path) = case
        .request
        .split_once(' ')
        .unwrap_or_else(|| panic!("{}: request is not \"METHOD PATH\"", case.name));
    let path = String::from_utf8(expand(path, t)).unwrap();
    let mut headers: Vec<(String, Vec<u8>)> = case
        .headers
        .iter()
        .map(|h| {
            let (k, v) = h
                .split_once(": ")
                .unwrap_or_else(|| panic!("{}: header {h:?} is not \"Name: value\"", case.name));
            (k.to_string(), expand(v, t))
        })
        .collect();
    if let Some((n, size)) = case.flood {
        headers.extend((0..n).map(|i| (format!("X-Flood-{i}"), vec![b'v'; size])));
    }
    let h: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let body = expand(&case.body, t);
    match case.send {
        SendKind::Once => Send::Once(request(method, &path, a, &h, &body)),
        SendKind::ShortEof => Send::ShortEof(request(method, &path, a, &h, &body)),
        SendKind::Stall => Send::Stall(request(method, &path, a, &h, &body)),
        SendKind::Chunked => {
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\
                 Transfer-Encoding: chunked\r\n"
            )
            .into_bytes();
            for (k, v) in &h {
                req.extend_from_slice(format!("{k}: ").as_bytes());
                req.extend_from_slice(v);
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"\r\n");
            req.extend_from_slice(&body);
            Send::Once(req)
        }
        SendKind::Dribble => {
            // Never finished: the blank line is left off.
            let mut b = keep_alive(method, &path, a, &h);
            b.truncate(b.len() - 2);
            b.extend_from_slice(b"X-Slow: ");
            b.extend(std::iter::repeat_n(b'z', 200));
            Send::Dribble(b)
        }
        SendKind::ThenClose => Send::ThenClose(keep_alive(method, &path, a, &h)),
    }
}

fn table(t: &Target) -> Vec<Row> {
    let table: Table = toml::from_str(TABLE).expect("data/hostile.toml");
    table
        .case
        .iter()
        .map(|case| Row {
            cat: case.cat,
            route: case.route,
            name: case.name.clone(),
            send: build(case, t),
            want: match &case.want {
                WantSpec::Status(s) => Want::Status(*s),
                WantSpec::Other(w) if w == "4xx-or-close" => Want::ClientErrorOrClose,
                WantSpec::Other(w) => panic!("{}: unknown want {w:?}", case.name),
            },
        })
        .collect()
}

/// What a row's connection did: the bytes answered and whether the server closed it.
struct Outcome {
    resp: String,
    closed: bool,
    elapsed: Duration,
}

/// Reads until EOF, an error, or `limit`.
fn read_to_close(s: &mut std::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

fn run_row(addr: std::net::SocketAddr, send: &Send) -> Outcome {
    use std::io::Write;
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    // Bounds for every way a row can go: the server's 2 s timeouts plus ample slack.
    let bound = SLOW_TIMEOUT + Duration::from_secs(6);
    let (resp, closed) = match send {
        Send::Once(b) | Send::ThenClose(b) => {
            let _ = s.write_all(b);
            read_to_close(&mut s, LIMIT)
        }
        Send::Stall(b) => {
            let _ = s.write_all(b);
            read_to_close(&mut s, bound)
        }
        Send::ShortEof(b) => {
            let _ = s.write_all(b);
            let _ = s.shutdown(std::net::Shutdown::Write);
            read_to_close(&mut s, bound)
        }
        Send::Dribble(b) => {
            let mut got = (Vec::new(), false);
            for byte in b.iter().cycle() {
                if started.elapsed() > bound || s.write_all(&[*byte]).is_err() {
                    got.1 = true;
                    break;
                }
                let r = read_to_close(&mut s, Duration::from_millis(100));
                if r.1 || !r.0.is_empty() {
                    got = r;
                    break;
                }
            }
            if !got.1 {
                let r = read_to_close(&mut s, Duration::from_secs(2));
                got.0.extend(r.0);
                got.1 = r.1;
            }
            got
        }
    };
    Outcome {
        resp: String::from_utf8_lossy(&resp).into_owned(),
        closed,
        elapsed: started.elapsed(),
    }
}

/// Every file under `dir` (relative path → sha256), and every upload's HEAD state (found by
/// the 32-hex names in the tree).
/// Files (relative path, sha256) and uploads (id, HEAD state), sorted.
type Snapshot = (Vec<(String, String)>, Vec<(String, State)>);

fn snapshot(server: &Server, dirs: &[&Path]) -> Snapshot {
    fn walk(root: &Path, p: &Path, out: &mut Vec<(String, String)>, ids: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or("");
            if stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
                ids.push(stem.to_string());
            }
            if path.is_dir() {
                walk(root, &path, out, ids);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, sha256(&std::fs::read(&path).unwrap_or_default())));
            }
        }
    }
    let (mut files, mut ids) = (Vec::new(), Vec::new());
    for d in dirs {
        walk(d, d, &mut files, &mut ids);
    }
    files.sort();
    ids.sort();
    ids.dedup();
    let states = ids
        .into_iter()
        .map(|id| {
            let st = state(&format!("{}{id}", server.files_url));
            (id, st)
        })
        .collect();
    (files, states)
}

#[test]
fn hostile_table_every_route_family() {
    let t = target();
    let dirs = [t.server.data_dir.as_path(), t.share_dir.path()];
    let before = snapshot(&t.server, &dirs);
    assert!(
        before.1.len() >= 3 && before.1.iter().all(|(_, s)| s.status == 200),
        "the three uploads are listed: {:?}",
        before.1
    );
    let rows = table(&t);
    let mut counts: std::collections::BTreeMap<Cat, usize> = Default::default();
    let mut families: std::collections::BTreeMap<Route, usize> = Default::default();
    let mut failures = Vec::new();
    let mut last_cat = None;
    for row in &rows {
        if last_cat.is_some_and(|c| c != row.cat) {
            assert_healthy(&t.server, &format!("the {:?} rows", last_cat.unwrap()));
        }
        last_cat = Some(row.cat);
        *counts.entry(row.cat).or_default() += 1;
        *families.entry(row.route).or_default() += 1;
        let case = format!("{:?}/{:?} {}", row.cat, row.route, row.name);
        let out = run_row(t.server.addr, &row.send);
        let st = status_of(&out.resp);
        let ok = match row.want {
            Want::Status(w) => st == w,
            Want::ClientErrorOrClose => (400..500).contains(&st) || (st == 0 && out.closed),
        };
        if !ok {
            failures.push(format!(
                "{case}: want {:?}, got {st} (closed {}): {:?}",
                row.want,
                out.closed,
                body_of(&out.resp).lines().next().unwrap_or("")
            ));
            continue;
        }
        if st >= 400 && !out.resp.starts_with("HEAD") {
            // A one-line message (text, or a one-line problem-details JSON), when ferry wrote
            // the answer; hyper's own 431 has no body.
            let body = body_of(&out.resp);
            let line = body.strip_suffix('\n').unwrap_or(body);
            if line.contains(['\n', '\r']) {
                failures.push(format!("{case}: message is not one line: {body:?}"));
            }
        }
        if matches!(row.send, Send::ThenClose(_)) && !out.closed {
            failures.push(format!("{case}: the connection stayed open after {st}"));
        }
        if matches!(row.send, Send::Dribble(_) | Send::Stall(_))
            && out.elapsed > SLOW_TIMEOUT + Duration::from_secs(5)
        {
            failures.push(format!("{case}: took {:?}", out.elapsed));
        }
        if matches!(row.send, Send::Dribble(_)) && !out.closed {
            failures.push(format!("{case}: the dribbling connection was not closed"));
        }
    }
    assert_healthy(&t.server, "the whole table");
    let after = snapshot(&t.server, &dirs);
    let changed_files: Vec<_> = before
        .0
        .iter()
        .filter(|f| !after.0.contains(f))
        .chain(after.0.iter().filter(|f| !before.0.contains(f)))
        .collect();
    let changed_uploads: Vec<_> = before
        .1
        .iter()
        .filter(|u| !after.1.contains(u))
        .chain(after.1.iter().filter(|u| !before.1.contains(u)))
        .collect();
    let crashes = usize::from(t.server.log().contains("panicked"));
    println!(
        "hostile: {} requests; {}; routes: {}; {crashes} crashes, {} changed files, {} changed uploads",
        rows.len(),
        counts
            .iter()
            .map(|(c, n)| format!("{c:?} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        families
            .iter()
            .map(|(r, n)| format!("{r:?} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        changed_files.len(),
        changed_uploads.len(),
    );
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        changed_files,
        Vec::<&(String, String)>::new(),
        "stored bytes changed"
    );
    assert_eq!(
        changed_uploads,
        Vec::<&(String, State)>::new(),
        "upload state changed"
    );
    assert_eq!(crashes, 0);
    assert!(rows.len() >= 60, "{} rows", rows.len());
    for (c, n) in &counts {
        assert!(*n >= 5, "{c:?} has {n} rows");
    }
    for r in [
        Route::Tus,
        Route::Ietf,
        Route::Download,
        Route::Share,
        Route::Chunks,
    ] {
        assert!(families.get(&r).copied().unwrap_or(0) >= 5, "{r:?}");
    }
}
