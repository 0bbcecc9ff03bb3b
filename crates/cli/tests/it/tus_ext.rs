//! tus extensions beyond the core: checksum and checksum-trailer, expiration, concatenation and
//! concatenation-unfinished, plus `Repr-Digest` and CORS, each with its negative cases and a
//! hostile-input sweep, against a real `ferry serve`. Digests are computed here with the
//! reference crates (sha1, sha2, md-5, crc32fast, blake3), never with ferry's own code.

use crate::support::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest as _;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");
const OCTET: (&str, &str) = ("Content-Type", "application/offset+octet-stream");
const LIMIT: Duration = Duration::from_secs(10);
const MIB: usize = 1 << 20;

/// Request headers for a table row.
type Headers<'a> = Vec<(&'a str, &'a str)>;
/// Request headers whose values may be any bytes.
type RawHeaders<'a> = Vec<(&'a str, &'a [u8])>;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The path part of an absolute URL.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    format!("/{}", rest.split_once('/').map_or("", |(_, p)| p))
}

/// The upload id at the end of an upload URL.
fn id_of(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

/// Where the local data store keeps an upload's bytes.
fn data_file(server: &Server, url: &str) -> PathBuf {
    let id = id_of(url);
    server.data_dir.join("uploads").join(&id[..2]).join(&id)
}

/// Files under the data directory's upload store.
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

fn hdr(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
}

fn head(url: &str) -> reqwest::blocking::Response {
    client()
        .head(url)
        .header(TUS.0, TUS.1)
        .send()
        .expect("HEAD")
}

fn tus_post(server: &Server) -> reqwest::blocking::RequestBuilder {
    client().post(&server.files_url).header(TUS.0, TUS.1)
}

fn tus_patch(url: &str, offset: u64) -> reqwest::blocking::RequestBuilder {
    client()
        .patch(url)
        .header(TUS.0, TUS.1)
        .header(OCTET.0, OCTET.1)
        .header("Upload-Offset", offset.to_string())
}

/// PATCH with an `Upload-Checksum` header; returns (status, Upload-Offset).
fn patch_checked(url: &str, offset: u64, body: &[u8], checksum: &str) -> (u16, Option<u64>) {
    let resp = tus_patch(url, offset)
        .header("Upload-Checksum", checksum)
        .body(body.to_vec())
        .send()
        .expect("PATCH");
    let off = hdr(&resp, "upload-offset").map(|v| v.parse().unwrap());
    (resp.status().as_u16(), off)
}

fn delete(url: &str) -> u16 {
    client()
        .delete(url)
        .header(TUS.0, TUS.1)
        .send()
        .expect("DELETE")
        .status()
        .as_u16()
}

/// GET: status, `Repr-Digest`, body.
fn get(url: &str) -> (u16, Option<String>, Vec<u8>) {
    let resp = client().get(url).send().expect("GET");
    let status = resp.status().as_u16();
    let digest = hdr(&resp, "repr-digest");
    (status, digest, resp.bytes().expect("GET body").to_vec())
}

/// Creates a partial upload of `len` bytes; returns its (absolute) URL.
fn create_partial(server: &Server, len: usize) -> String {
    let resp = tus_post(server)
        .header("Upload-Length", len.to_string())
        .header("Upload-Concat", "partial")
        .send()
        .expect("POST partial");
    assert_eq!(resp.status().as_u16(), 201, "partial: {:?}", resp.text());
    hdr(&resp, "location").expect("Location")
}

/// Creates a partial upload and uploads all of `data` into it.
fn partial_with(server: &Server, data: &[u8]) -> String {
    let url = create_partial(server, data.len());
    if !data.is_empty() {
        assert_eq!(
            patch(&url, 0, data.to_vec()),
            (204, Some(data.len() as u64))
        );
    }
    url
}

/// POST of a final upload with the given `Upload-Concat` value.
fn post_final(server: &Server, concat: &str) -> reqwest::blocking::Response {
    tus_post(server)
        .header("Upload-Concat", concat)
        .send()
        .expect("POST final")
}

fn healthz(server: &Server) -> u16 {
    let url = server.files_url.replace("/files/", "/healthz");
    client().get(url).send().map_or(0, |r| r.status().as_u16())
}

fn assert_healthy(server: &Server, case: &str) {
    assert_eq!(healthz(server), 200, "server unhealthy after {case}");
    let log = server.log();
    assert!(!log.contains("panicked"), "panic after {case}:\n{log}");
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

/// `sha-256=:<base64>:` of `data` (RFC 9530).
/// The `Repr-Digest` of small content (at most 8 MiB): SHA-256, BLAKE3 and CRC-64/NVME, all
/// computed before the completing request is answered.
fn repr_digest(data: &[u8]) -> String {
    format!(
        "{}, {}, {}",
        sha256_member(data),
        blake3_member(data),
        crc64nvme_member(data)
    )
}

fn sha256_member(data: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(sha2::Sha256::digest(data)))
}

fn blake3_member(data: &[u8]) -> String {
    format!(
        "blake3=:{}:",
        STANDARD.encode(blake3::hash(data).as_bytes())
    )
}

/// Polls `f` every 20 ms until it is true or `limit` passes; returns whether it became true.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigusr1(server: &Server) {
    let st = Command::new("kill")
        .args(["-USR1", &server.pid().to_string()])
        .status()
        .expect("kill -USR1");
    assert!(st.success(), "kill -USR1 failed");
}

fn http_date(v: &str) -> SystemTime {
    httpdate::parse_http_date(v).unwrap_or_else(|e| panic!("{v:?} is not an HTTP date: {e}"))
}

/// Seconds from now until `t` (negative if past).
fn secs_from_now(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// What a HEAD shows of an upload (every header a refused request must leave alone).
#[derive(Debug, PartialEq, Eq, Clone)]
struct State {
    status: u16,
    offset: Option<String>,
    length: Option<String>,
    concat: Option<String>,
    expires: Option<String>,
    digest: Option<String>,
    metadata: Option<String>,
}

fn state(url: &str) -> State {
    let resp = head(url);
    State {
        status: resp.status().as_u16(),
        offset: hdr(&resp, "upload-offset"),
        length: hdr(&resp, "upload-length"),
        concat: hdr(&resp, "upload-concat"),
        expires: hdr(&resp, "upload-expires"),
        digest: hdr(&resp, "repr-digest"),
        metadata: hdr(&resp, "upload-metadata"),
    }
}

// ---------------------------------------------------------------------------------------------
// Checksum algorithms, computed with the reference crates

#[derive(Clone, Copy, Debug)]
enum Algo {
    Sha1,
    Sha256,
    Sha512,
    Md5,
    Crc32,
    Crc64nvme,
    Blake3,
}

const ALGOS: [Algo; 7] = [
    Algo::Sha1,
    Algo::Sha256,
    Algo::Sha512,
    Algo::Md5,
    Algo::Crc32,
    Algo::Crc64nvme,
    Algo::Blake3,
];

impl Algo {
    fn name(self) -> &'static str {
        match self {
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
            Algo::Md5 => "md5",
            Algo::Crc32 => "crc32",
            Algo::Crc64nvme => "crc64nvme",
            Algo::Blake3 => "blake3",
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Algo::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Algo::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Algo::Sha512 => sha2::Sha512::digest(data).to_vec(),
            Algo::Md5 => md5::Md5::digest(data).to_vec(),
            // IEEE CRC-32 (what tus means by crc32), big-endian bytes.
            Algo::Crc32 => crc32fast::hash(data).to_be_bytes().to_vec(),
            Algo::Crc64nvme => crc64nvme(data).to_be_bytes().to_vec(),
            Algo::Blake3 => blake3::hash(data).as_bytes().to_vec(),
        }
    }

    /// The `Upload-Checksum` value for `data`.
    fn header(self, data: &[u8]) -> String {
        format!("{} {}", self.name(), STANDARD.encode(self.digest(data)))
    }
}

// ---------------------------------------------------------------------------------------------
// checksum

#[test]
fn checksum_every_algorithm_accepts_a_correct_digest_and_refuses_a_wrong_one() {
    let server = Server::start(&[]);
    for (i, algo) in ALGOS.into_iter().enumerate() {
        let data = random_bytes(2000, 100 + i as u64);
        let (a, b) = data.split_at(1000);
        let url = create(&server, 2000, None);
        // Sanity: the digest really has the algorithm's length (catches a wrong crate).
        let len = algo.digest(b"").len();
        assert_eq!(len, [20, 32, 64, 16, 4, 8, 32][i], "{algo:?} digest length");

        // A digest of other bytes: 460, nothing kept, the 460 carries the unchanged offset.
        let wrong = algo.header(b);
        assert_eq!(
            patch_checked(&url, 0, a, &wrong),
            (460, Some(0)),
            "{algo:?} wrong digest"
        );
        assert_eq!(head_offset(&url), Some(0), "{algo:?}: offset after 460");

        assert_eq!(
            patch_checked(&url, 0, a, &algo.header(a)),
            (204, Some(1000)),
            "{algo:?} correct digest"
        );
        // Flip one bit of the real digest: still a mismatch.
        let mut d = algo.digest(b);
        d[0] ^= 1;
        let flipped = format!("{} {}", algo.name(), STANDARD.encode(&d));
        assert_eq!(
            patch_checked(&url, 1000, b, &flipped),
            (460, Some(1000)),
            "{algo:?} one bit off"
        );
        assert_eq!(head_offset(&url), Some(1000), "{algo:?}: offset after 460");
        assert_eq!(
            patch_checked(&url, 1000, b, &algo.header(b)),
            (204, Some(2000)),
            "{algo:?} second chunk"
        );
        let (status, _, body) = get(&url);
        assert_eq!(status, 200);
        assert!(
            body == data,
            "{algo:?}: stored bytes differ from the source"
        );
    }
    assert_healthy(&server, "all algorithms");
}

/// A mismatching chunk far larger than the server's write buffers reaches the disk before the
/// digest is known; it must still count for nothing, and the next chunk must overwrite it.
#[test]
fn checksum_mismatch_on_a_large_chunk_keeps_nothing() {
    let server = Server::start(&[]);
    let data = random_bytes(3 * MIB + 4097, 7);
    let total = data.len() as u64;
    let url = create(&server, total, None);
    assert_eq!(
        patch_checked(&url, 0, &data[..100], &Algo::Sha256.header(&data[..100])),
        (204, Some(100))
    );
    let rest = &data[100..];
    let mut garbled = rest.to_vec();
    garbled[rest.len() / 2] ^= 0xff;
    // The body is garbled in transit (digest of the real bytes).
    assert_eq!(
        patch_checked(&url, 100, &garbled, &Algo::Sha256.header(rest)),
        (460, Some(100))
    );
    assert_eq!(head_offset(&url), Some(100));
    assert_eq!(
        patch_checked(&url, 100, rest, &Algo::Sha256.header(rest)),
        (204, Some(total))
    );
    assert_eq!(get_sha256(&url), sha256(&data), "GET after the retry");
    assert_eq!(
        std::fs::metadata(data_file(&server, &url)).unwrap().len(),
        total,
        "data file holds exactly the upload"
    );
}

/// tus: an unsupported algorithm is 400, answered from the headers alone: the client need not
/// send (and the server does not wait for) the body.
#[test]
fn unknown_checksum_algorithm_is_400_before_the_body() {
    let server = Server::start(&[]);
    let url = create(&server, 1_000_000, None);
    assert_eq!(patch(&url, 0, vec![1; 10]), (204, Some(10)));
    let files = stored_files(&server.data_dir);
    for (method, path, extra) in [
        ("PATCH", path_of(&url), vec![("Upload-Offset", "10")]),
        (
            "POST",
            "/files/".to_string(),
            vec![("Upload-Length", "1000000")],
        ),
    ] {
        let mut h: Vec<(&str, &str)> = vec![
            TUS,
            OCTET,
            ("Upload-Checksum", "whirlpool AAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ("Content-Length", "999990"),
        ];
        h.extend(extra);
        let hb: Vec<(&str, &[u8])> = h.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        // Headers only: the declared body never comes.
        let req = request(method, &path, server.addr, &hb, b"");
        let started = Instant::now();
        let resp = raw(server.addr, &req, Duration::from_secs(5));
        assert_error(&resp, 400, &format!("{method} with an unknown algorithm"));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{method}: the 400 waited for the body"
        );
        assert!(
            body_of(&resp).contains("sha1"),
            "{method}: the 400 names the supported algorithms: {resp}"
        );
    }
    assert_eq!(head_offset(&url), Some(10));
    assert_eq!(
        stored_files(&server.data_dir),
        files,
        "refused creation left no upload"
    );
}

#[test]
fn malformed_checksum_headers_are_400_and_change_nothing() {
    let server = Server::start(&[]);
    let data = random_bytes(64, 3);
    let url = create(&server, 64, None);
    let sha1_of_16 = format!("sha1 {}", STANDARD.encode([7u8; 16]));
    let sha256_with_sha1_digest = format!("sha256 {}", STANDARD.encode(Algo::Sha1.digest(&data)));
    let cases: Vec<(&str, String)> = vec![
        ("bad base64", "sha1 !!!!not*base64!!!!".into()),
        (
            "base64 with a hole",
            "sha1 Kq5sNclPz7QV 2+lfQIuc6R7oRu0=".into(),
        ),
        ("digest too short", sha1_of_16),
        ("digest of another algorithm", sha256_with_sha1_digest),
        ("missing digest", "sha1".into()),
        ("empty digest", "sha1 ".into()),
        ("empty value", String::new()),
        ("only a digest", STANDARD.encode(Algo::Sha1.digest(&data))),
    ];
    for (case, value) in &cases {
        let (status, _) = patch_checked(&url, 0, &data, value);
        assert_eq!(status, 400, "{case}: {value:?}");
        assert_eq!(head_offset(&url), Some(0), "{case}: offset");
    }
    assert_eq!(
        patch_checked(&url, 0, &data, &Algo::Sha1.header(&data)),
        (204, Some(64))
    );
    assert_eq!(get(&url).2, data);
}

/// A chunk with a checksum is all or nothing: when its body is cut off, none of it counts
/// (without a checksum the server keeps what arrived; see tus_core).
#[test]
fn a_cut_off_body_with_a_checksum_keeps_nothing() {
    let server = Server::start(&[]);
    let data = random_bytes(200_000, 5);
    let url = create(&server, 200_000, None);
    let checksum = Algo::Sha1.header(&data);
    let head_bytes = request(
        "PATCH",
        &path_of(&url),
        server.addr,
        &[
            (TUS.0, TUS.1.as_bytes()),
            (OCTET.0, OCTET.1.as_bytes()),
            ("Upload-Offset", b"0"),
            ("Upload-Checksum", checksum.as_bytes()),
            ("Content-Length", b"200000"),
        ],
        b"",
    );
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(&head_bytes).unwrap();
    s.write_all(&data[..120_000]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.shutdown(Shutdown::Write).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    // The server may or may not get its answer out before the socket goes; if it does, it
    // is a 400.
    assert!(
        matches!(status_of(&resp), 0 | 400),
        "cut-off checksummed PATCH: {resp}"
    );
    drop(s);
    // Whatever the timing, a PATCH at offset 0 must now be accepted: had any of the 120,000
    // bytes been kept, it would be 409 (a new PATCH takes the upload over, so the cut request
    // has finished by the time this one is checked).
    assert_eq!(
        patch_checked(&url, 0, &data[..1000], &Algo::Sha1.header(&data[..1000])),
        (204, Some(1000)),
        "bytes of the cut-off chunk were kept"
    );
    assert_eq!(
        patch(&url, 1000, data[1000..].to_vec()),
        (204, Some(200_000))
    );
    assert_eq!(get(&url).2, data);
}

#[test]
fn checksum_on_creation_with_upload() {
    let server = Server::start(&[]);
    let data = random_bytes(5000, 11);
    let first = &data[..3000];

    // Correct: 201 with Location and the new offset.
    let resp = tus_post(&server)
        .header("Upload-Length", "5000")
        .header(OCTET.0, OCTET.1)
        .header("Upload-Checksum", Algo::Blake3.header(first))
        .body(first.to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("3000"));
    let url = hdr(&resp, "location").expect("Location");
    assert_eq!(head_offset(&url), Some(3000));
    assert_eq!(
        patch_checked(&url, 3000, &data[3000..], &Algo::Md5.header(&data[3000..])),
        (204, Some(5000))
    );
    assert_eq!(get(&url).2, data);

    // Wrong: 460, and nothing of the request is left behind (no unreachable empty upload).
    let files = stored_files(&server.data_dir);
    let resp = tus_post(&server)
        .header("Upload-Length", "5000")
        .header(OCTET.0, OCTET.1)
        .header("Upload-Checksum", Algo::Sha1.header(&data[1..3001]))
        .body(first.to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 460);
    if let Some(loc) = hdr(&resp, "location") {
        // If the server does keep the upload, the client must be able to find it and it
        // must be empty.
        assert_eq!(head_offset(&loc), Some(0), "upload behind a 460");
    } else {
        assert_eq!(
            stored_files(&server.data_dir),
            files,
            "a 460 on creation left an upload nobody can reach"
        );
    }

    // Malformed: 400, no upload created.
    for value in ["sha1 ***", "sha1", "crc32 AAAAAAAA", "rot13 AAAA"] {
        let resp = tus_post(&server)
            .header("Upload-Length", "5000")
            .header(OCTET.0, OCTET.1)
            .header("Upload-Checksum", value)
            .body(first.to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{value:?}");
        assert_eq!(hdr(&resp, "location"), None, "{value:?}");
    }
    assert_eq!(stored_files(&server.data_dir), files);
}

// ---------------------------------------------------------------------------------------------
// checksum-trailer (raw chunked requests; no tus client sends trailers)

#[test]
fn checksum_trailer_correct_wrong_missing_and_doubled() {
    let server = Server::start(&[]);
    let data = random_bytes(300, 21);
    let url = create(&server, 300, None);
    let path = path_of(&url);
    let hdrs = |offset: &'static str| vec![TUS, OCTET, ("Upload-Offset", offset)];
    let announced = |offset: &'static str| {
        let mut h = hdrs(offset);
        h.push(("Trailer", "Upload-Checksum"));
        h
    };
    let (a, b) = (&data[..100], &data[100..200]);

    // Correct trailer, body in two chunks: 204 with the new offset.
    let resp = send_chunked(
        server.addr,
        "PATCH",
        &path,
        &announced("0"),
        &[&a[..40], &a[40..]],
        &[("Upload-Checksum", &Algo::Sha1.header(a))],
    );
    assert_eq!(status_of(&resp), 204, "correct trailer: {resp}");
    assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("100"));

    // Wrong trailer: 460, offset unchanged.
    let resp = send_chunked(
        server.addr,
        "PATCH",
        &path,
        &announced("100"),
        &[b],
        &[("Upload-Checksum", &Algo::Sha1.header(a))],
    );
    assert_error(&resp, 460, "wrong trailer");
    assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("100"));
    assert_eq!(head_offset(&url), Some(100));

    // Announced but never sent: 400, nothing kept.
    let resp = send_chunked(server.addr, "PATCH", &path, &announced("100"), &[b], &[]);
    assert_error(&resp, 400, "announced, missing trailer");
    assert_eq!(head_offset(&url), Some(100));

    // Announced on a body with Content-Length (which cannot carry trailers): 400, nothing kept.
    let resp = send(server.addr, "PATCH", &path, &announced("100"), b);
    assert_error(&resp, 400, "announced trailer on a Content-Length body");
    assert_eq!(head_offset(&url), Some(100));

    // Header and trailer both (both correct): ambiguous, 400, nothing kept.
    let mut both = announced("100");
    let header_value = Algo::Sha1.header(b);
    both.push(("Upload-Checksum", &header_value));
    let resp = send_chunked(
        server.addr,
        "PATCH",
        &path,
        &both,
        &[b],
        &[("Upload-Checksum", &Algo::Sha1.header(b))],
    );
    assert_error(&resp, 400, "header and trailer");
    assert_eq!(head_offset(&url), Some(100));

    // Other algorithms work as trailers too.
    let resp = send_chunked(
        server.addr,
        "PATCH",
        &path,
        &announced("100"),
        &[&b[..1], &b[1..]],
        &[("Upload-Checksum", &Algo::Blake3.header(b))],
    );
    assert_eq!(status_of(&resp), 204, "blake3 trailer: {resp}");
    assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("200"));
    let c = &data[200..];
    let resp = send_chunked(
        server.addr,
        "PATCH",
        &path,
        &announced("200"),
        &[c],
        &[("Upload-Checksum", &Algo::Crc32.header(c))],
    );
    assert_eq!(status_of(&resp), 204, "crc32 trailer: {resp}");
    assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("300"));
    assert_eq!(get(&url).2, data, "stored bytes");
}

// ---------------------------------------------------------------------------------------------
// expiration

#[test]
fn post_patch_and_head_carry_upload_expires_about_expire_after_ahead() {
    let server = Server::start(&["--expire-after", "1h", "--expire-finished-after", "2h"]);
    let near = |v: Option<String>, secs: f64, what: &str| {
        let v = v.unwrap_or_else(|| panic!("{what}: no Upload-Expires"));
        let ahead = secs_from_now(http_date(&v));
        assert!(
            (ahead - secs).abs() < 5.0,
            "{what}: Upload-Expires {v:?} is {ahead:.0}s ahead, want about {secs}s"
        );
    };
    let resp = tus_post(&server)
        .header("Upload-Length", "10")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    near(hdr(&resp, "upload-expires"), 3600.0, "POST");
    let url = hdr(&resp, "location").unwrap();

    // creation-with-upload too.
    let resp = tus_post(&server)
        .header("Upload-Length", "10")
        .header(OCTET.0, OCTET.1)
        .body(vec![0u8; 4])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    near(hdr(&resp, "upload-expires"), 3600.0, "POST with upload");

    let resp = tus_patch(&url, 0).body(vec![1u8; 4]).send().unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    near(hdr(&resp, "upload-expires"), 3600.0, "PATCH");
    near(hdr(&head(&url), "upload-expires"), 3600.0, "HEAD");

    // The completing PATCH switches to the finished-upload policy.
    let resp = tus_patch(&url, 4).body(vec![2u8; 6]).send().unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    near(hdr(&resp, "upload-expires"), 7200.0, "completing PATCH");

    // Default policy: finished uploads never expire, so they carry no Upload-Expires.
    let server = Server::start(&["--expire-after", "1h"]);
    let url = create(&server, 3, None);
    let resp = tus_patch(&url, 0).body(b"abc".to_vec()).send().unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(
        hdr(&resp, "upload-expires"),
        None,
        "finished, never expires"
    );
    assert_eq!(hdr(&head(&url), "upload-expires"), None);
}

#[test]
fn expired_upload_is_gone_then_swept_on_sigusr1() {
    // A long sweep interval: only SIGUSR1 sweeps during this test.
    let server = Server::start(&["--expire-after", "2s", "--sweep-interval", "1h"]);
    // Each made in one request, so neither can expire half-made.
    let make = |body: &[u8], length: u64| {
        let resp = tus_post(&server)
            .header("Upload-Length", length.to_string())
            .header(OCTET.0, OCTET.1)
            .body(body.to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        hdr(&resp, "location").unwrap()
    };
    let stale = make(b"abc", 10);
    let done = make(b"finished", 8);
    let stale_file = data_file(&server, &stale);
    assert!(stale_file.is_file());

    assert!(
        eventually(Duration::from_secs(6), || head(&stale).status().as_u16()
            == 410),
        "unfinished upload never expired"
    );
    let resp = head(&stale);
    assert_eq!(hdr(&resp, "upload-offset"), None, "410 carries no offset");
    let resp = tus_patch(&stale, 3).body(b"defg".to_vec()).send().unwrap();
    assert_eq!(resp.status().as_u16(), 410, "PATCH on expired");
    assert_eq!(get(&stale).0, 410, "GET on expired");
    assert_eq!(
        head(&done).status().as_u16(),
        200,
        "finished upload expired"
    );
    assert!(stale_file.is_file(), "expired but not yet swept");

    sigusr1(&server);
    assert!(
        eventually(Duration::from_secs(10), || head(&stale).status().as_u16()
            == 404),
        "SIGUSR1 did not sweep the expired upload; log:\n{}",
        server.log()
    );
    assert!(
        eventually(Duration::from_secs(5), || !stale_file.exists()),
        "swept upload's data file {} is still there",
        stale_file.display()
    );
    let resp = head(&done);
    assert_eq!(resp.status().as_u16(), 200, "finished upload swept");
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("8"));
    assert_eq!(get(&done).2, b"finished");
    assert!(data_file(&server, &done).is_file());
}

#[test]
fn patches_push_the_expiry_forward() {
    let server = Server::start(&["--expire-after", "3s", "--sweep-interval", "1h"]);
    let active = create(&server, 100, None);
    let idle = create(&server, 100, None);
    let first = http_date(&hdr(&head(&active), "upload-expires").unwrap());
    let started = Instant::now();
    let mut offset = 0;
    let mut last = first;
    // 4.5 s of activity, a PATCH every 0.5 s: longer than the expiry, never idle for long.
    while started.elapsed() < Duration::from_millis(4500) {
        let resp = tus_patch(&active, offset).body(vec![9u8]).send().unwrap();
        assert_eq!(
            resp.status().as_u16(),
            204,
            "PATCH after {:?}",
            started.elapsed()
        );
        offset += 1;
        let exp = http_date(&hdr(&resp, "upload-expires").expect("Upload-Expires on PATCH"));
        assert!(exp >= last, "Upload-Expires went backwards");
        last = exp;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        last.duration_since(first).unwrap() >= Duration::from_secs(3),
        "expiry was not pushed forward: {first:?} -> {last:?}"
    );
    let resp = head(&active);
    assert_eq!(resp.status().as_u16(), 200, "active upload expired");
    assert_eq!(hdr(&resp, "upload-offset"), Some(offset.to_string()));
    assert_eq!(
        head(&idle).status().as_u16(),
        410,
        "idle upload did not expire"
    );
}

/// With concatenation-unfinished a final exists while its parts are still being uploaded; as
/// long as they are, the final must not expire under them.
#[test]
fn an_unfinished_final_lives_as_long_as_its_parts_are_active() {
    let server = Server::start(&["--expire-after", "3s", "--sweep-interval", "1h"]);
    let data = random_bytes(20, 8);
    let part = create_partial(&server, 20);
    let resp = post_final(&server, &format!("final;{}", path_of(&part)));
    assert_eq!(resp.status().as_u16(), 201);
    let fin = hdr(&resp, "location").unwrap();
    let started = Instant::now();
    let mut offset = 0;
    while started.elapsed() < Duration::from_millis(4500) {
        assert_eq!(
            patch(
                &part,
                offset,
                data[offset as usize..offset as usize + 1].to_vec()
            )
            .0,
            204
        );
        offset += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        head(&fin).status().as_u16(),
        200,
        "the final expired while its part was being uploaded"
    );
    assert_eq!(
        patch(&part, offset, data[offset as usize..].to_vec()),
        (204, Some(20))
    );
    let resp = head(&fin);
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("20"));
    assert_eq!(get(&fin).2, data);
}

// ---------------------------------------------------------------------------------------------
// concatenation and concatenation-unfinished

#[test]
fn partial_creation_is_marked_partial() {
    let server = Server::start(&[]);
    let url = create_partial(&server, 10);
    let resp = head(&url);
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(hdr(&resp, "upload-concat").as_deref(), Some("partial"));
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("0"));
    assert_eq!(hdr(&resp, "upload-length").as_deref(), Some("10"));
    // A partial is written like any upload, and stays partial when done.
    assert_eq!(patch(&url, 0, b"0123456789".to_vec()), (204, Some(10)));
    let resp = head(&url);
    assert_eq!(hdr(&resp, "upload-concat").as_deref(), Some("partial"));
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("10"));
    // Creation-with-upload of a partial.
    let resp = tus_post(&server)
        .header("Upload-Length", "3")
        .header("Upload-Concat", "partial")
        .header(OCTET.0, OCTET.1)
        .body(b"xyz".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("3"));
    let loc = hdr(&resp, "location").unwrap();
    assert_eq!(
        hdr(&head(&loc), "upload-concat").as_deref(),
        Some("partial")
    );
    // A plain upload is not marked.
    let plain = create(&server, 3, None);
    assert_eq!(hdr(&head(&plain), "upload-concat"), None);
}

#[test]
fn final_from_relative_urls_is_byte_exact_and_read_only() {
    let server = Server::start(&[]);
    let parts: Vec<Vec<u8>> = vec![
        random_bytes(5 * 1024, 1),
        random_bytes(1, 2),
        random_bytes(700 * 1024 + 3, 3),
    ];
    let whole: Vec<u8> = parts.concat();
    let urls: Vec<String> = parts.iter().map(|p| partial_with(&server, p)).collect();
    let paths: Vec<String> = urls.iter().map(|u| path_of(u)).collect();
    let resp = tus_post(&server)
        .header("Upload-Concat", format!("final;{}", paths.join(" ")))
        .header("Upload-Metadata", "filename d2hvbGUuYmlu")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text());
    let fin = hdr(&resp, "location").expect("Location");
    assert!(fin.starts_with(&server.files_url), "{fin}");

    let resp = head(&fin);
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        hdr(&resp, "upload-concat"),
        Some(format!("final;{}", paths.join(" ")))
    );
    let n = whole.len().to_string();
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some(n.as_str()));
    assert_eq!(hdr(&resp, "upload-length").as_deref(), Some(n.as_str()));
    assert_eq!(
        hdr(&resp, "upload-metadata").as_deref(),
        Some("filename d2hvbGUuYmlu"),
        "the final has its own metadata"
    );
    assert_eq!(hdr(&resp, "repr-digest"), Some(repr_digest(&whole)));
    let (status, digest, body) = get(&fin);
    assert_eq!(status, 200);
    assert!(body == whole, "final differs from the concatenation");
    assert_eq!(digest, Some(repr_digest(&whole)));

    // PATCH on a final: 403, nothing changes (neither the final nor its parts).
    for offset in [0, whole.len() as u64] {
        let resp = tus_patch(&fin, offset).body(b"x".to_vec()).send().unwrap();
        assert_eq!(resp.status().as_u16(), 403, "PATCH final at {offset}");
    }
    let resp = tus_patch(&fin, 0).send().unwrap();
    assert_eq!(resp.status().as_u16(), 403, "empty PATCH on final");
    assert_eq!(get(&fin).2, whole);
    for (u, p) in urls.iter().zip(&parts) {
        assert_eq!(&get(u).2, p, "a part changed");
    }
}

/// tus-js-client names the parts by the absolute URLs it got in `Location`.
#[test]
fn final_from_absolute_urls_and_repeated_parts() {
    let server = Server::start(&[]);
    let a = random_bytes(1000, 31);
    let b = random_bytes(2000, 32);
    let ua = partial_with(&server, &a);
    let ub = partial_with(&server, &b);
    assert!(ua.starts_with("http://"), "{ua}");
    let resp = post_final(&server, &format!("final;{ua} {ub}"));
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text());
    let fin = hdr(&resp, "location").unwrap();
    assert_eq!(get(&fin).2, [a.clone(), b.clone()].concat());

    // Mixed absolute and relative, extra spaces.
    let resp = post_final(&server, &format!("final; {}  {ua}", path_of(&ub)));
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text());
    let fin2 = hdr(&resp, "location").unwrap();
    assert_eq!(get(&fin2).2, [b.clone(), a.clone()].concat());

    // tus: "The same partial upload MAY be present multiple times in the Upload-Concat
    // header" and a partial MAY be used by several finals.
    let resp = post_final(&server, &format!("final;{ua} {ub} {ua}"));
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text());
    let fin3 = hdr(&resp, "location").unwrap();
    let want = [a.clone(), b.clone(), a.clone()].concat();
    let resp = head(&fin3);
    assert_eq!(hdr(&resp, "upload-length"), Some(want.len().to_string()));
    let (_, digest, body) = get(&fin3);
    assert!(body == want);
    assert_eq!(digest, Some(repr_digest(&want)));
    // The Host the client used is what counts: an absolute URL built from `localhost` on
    // the same port names the same upload when the request also came with that Host.
    let port = server.addr.port();
    let resp = send_host(
        &server,
        &format!("localhost:{port}"),
        &format!("final;http://localhost:{port}{}", path_of(&ua)),
    );
    assert_eq!(status_of(&resp), 201, "{resp}");
}

/// A raw final POST with a chosen Host header.
fn send_host(server: &Server, host: &str, concat: &str) -> String {
    let req = format!(
        "POST /files/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Concat: {concat}\r\nContent-Length: 0\r\n\r\n"
    );
    raw(server.addr, req.as_bytes(), LIMIT)
}

#[test]
fn final_created_before_its_parts_finish_completes_with_the_last_one() {
    let server = Server::start(&[]);
    let a = random_bytes(100_000, 41);
    let b = random_bytes(50_000, 42);
    let ua = create_partial(&server, a.len());
    let ub = create_partial(&server, b.len());
    assert_eq!(patch(&ua, 0, a[..60_000].to_vec()), (204, Some(60_000)));
    let resp = post_final(&server, &format!("final;{ua} {ub}"));
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text());
    let fin = hdr(&resp, "location").unwrap();
    let total = (a.len() + b.len()).to_string();

    let check_unfinished = |when: &str| {
        let resp = head(&fin);
        assert_eq!(resp.status().as_u16(), 200, "{when}");
        assert_eq!(
            hdr(&resp, "upload-offset"),
            None,
            "{when}: a final has no offset until all parts are done"
        );
        // tus: "The Upload-Length header MUST be included if the length of the final
        // resource can be calculated at the time of the request."
        assert_eq!(
            hdr(&resp, "upload-length").as_deref(),
            Some(total.as_str()),
            "{when}: the parts' lengths are known"
        );
        assert_eq!(
            hdr(&resp, "upload-concat"),
            Some(format!("final;{} {}", path_of(&ua), path_of(&ub))),
            "{when}"
        );
        assert_eq!(hdr(&resp, "repr-digest"), None, "{when}");
        let (status, _, _) = get(&fin);
        assert_eq!(status, 409, "{when}: GET of an unfinished final");
        let resp = tus_patch(&fin, 0).body(b"x".to_vec()).send().unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{when}: PATCH on a final");
    };
    check_unfinished("no part done");
    assert_eq!(
        patch(&ua, 60_000, a[60_000..].to_vec()),
        (204, Some(100_000))
    );
    check_unfinished("one part done");
    assert_eq!(patch(&ub, 0, b.to_vec()), (204, Some(50_000)));
    // Completed by the time the last part's 204 arrived: no polling.
    let resp = head(&fin);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some(total.as_str()));
    assert_eq!(hdr(&resp, "upload-length").as_deref(), Some(total.as_str()));
    let whole = [a, b].concat();
    assert_eq!(hdr(&resp, "repr-digest"), Some(repr_digest(&whole)));
    assert!(get(&fin).2 == whole);
}

#[test]
fn final_naming_unknown_foreign_or_non_partial_uploads_is_refused() {
    let server = Server::start(&[]);
    let part = partial_with(&server, b"abc");
    let regular = create(&server, 3, None);
    assert_eq!(patch(&regular, 0, b"xyz".to_vec()), (204, Some(3)));
    let files = stored_files(&server.data_dir);
    let unknown = "0123456789abcdef0123456789abcdef";
    let p = path_of(&part);
    let id = id_of(&part);
    let addr = server.addr;
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("final;/files/{unknown}"), 404, "unknown id"),
        (format!("final;{p} /files/{unknown}"), 404, "one unknown id"),
        (
            format!("final;http://{addr}/files/{unknown}"),
            404,
            "unknown id, absolute",
        ),
        (
            format!("final;http://other.example/files/{id}"),
            400,
            "other host",
        ),
        (
            format!("final;http://127.0.0.2:{}/files/{id}", addr.port()),
            400,
            "other address",
        ),
        (
            format!("final;http://{}:1/files/{id}", addr.ip()),
            400,
            "other port",
        ),
        (format!("final;/uploads/{id}"), 400, "path outside /files/"),
        (format!("final;/{id}"), 400, "bare id path"),
        (format!("final;files/{id}"), 400, "not a URL"),
        (
            format!("final;ftp://{addr}/files/{id}"),
            400,
            "other scheme",
        ),
        (
            format!("final;{}", path_of(&regular)),
            400,
            "regular upload",
        ),
        (
            format!("final;{p} {}", path_of(&regular)),
            400,
            "one regular",
        ),
    ];
    for (value, want, case) in &cases {
        let resp = post_final(&server, value);
        assert_eq!(resp.status().as_u16(), *want, "{case}: {value}");
        assert_eq!(hdr(&resp, "location"), None, "{case}");
    }

    // Upload-Length (or a deferred length) with a final: 400; a body: 403.
    let concat = format!("final;{p}");
    for (k, v) in [("Upload-Length", "3"), ("Upload-Defer-Length", "1")] {
        let resp = tus_post(&server)
            .header("Upload-Concat", &concat)
            .header(k, v)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "final with {k}");
    }
    let resp = tus_post(&server)
        .header("Upload-Concat", &concat)
        .header(OCTET.0, OCTET.1)
        .body(b"abc".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403, "final with a body");

    // A final of a final.
    let resp = post_final(&server, &concat);
    assert_eq!(resp.status().as_u16(), 201);
    let fin = hdr(&resp, "location").unwrap();
    let resp = post_final(&server, &format!("final;{}", path_of(&fin)));
    assert_eq!(resp.status().as_u16(), 400, "final of a final");
    assert_eq!(
        stored_files(&server.data_dir),
        files,
        "refused finals stored nothing (and a final has no data of its own)"
    );
    assert_eq!(get(&part).2, b"abc");
    assert_eq!(get(&fin).2, b"abc");
}

#[test]
fn deleting_a_used_partial_keeps_the_final_and_deleting_the_final_purges_it() {
    let server = Server::start(&[]);
    let a = random_bytes(10_000, 51);
    let b = random_bytes(20_000, 52);
    let ua = partial_with(&server, &a);
    let ub = partial_with(&server, &b);
    let resp = post_final(&server, &format!("final;{ua} {ub}"));
    assert_eq!(resp.status().as_u16(), 201);
    let fin = hdr(&resp, "location").unwrap();
    let whole = [a.clone(), b.clone()].concat();
    let (fa, fb) = (data_file(&server, &ua), data_file(&server, &ub));

    assert_eq!(delete(&ua), 204);
    assert_eq!(head(&ua).status().as_u16(), 404, "deleted partial");
    assert_eq!(get(&ua).0, 404);
    assert_eq!(delete(&ua), 404, "deleted twice");
    let (status, digest, body) = get(&fin);
    assert_eq!(status, 200, "final after its part was deleted");
    assert!(body == whole, "final changed when its part was deleted");
    assert_eq!(digest, Some(repr_digest(&whole)));
    assert!(fa.is_file(), "the hidden part's bytes are still needed");
    // The hidden part cannot be used again.
    let resp = post_final(&server, &format!("final;{ua}"));
    assert_eq!(resp.status().as_u16(), 404, "final naming a deleted part");

    assert_eq!(delete(&fin), 204);
    assert_eq!(head(&fin).status().as_u16(), 404);
    assert!(
        eventually(Duration::from_secs(5), || !fa.exists()),
        "the hidden part's data file {} outlived the final",
        fa.display()
    );
    // The part that was not deleted is untouched.
    assert_eq!(head(&ub).status().as_u16(), 200);
    assert!(fb.is_file());
    assert_eq!(get(&ub).2, b);
}

/// Creating a final while its last part is finishing must never leave the final waiting
/// forever (the part's completion and the final's creation race).
#[test]
fn final_created_while_the_last_part_finishes_always_completes() {
    let server = Server::start(&[]);
    let head_part = partial_with(&server, b"0123456789");
    let mut stuck = Vec::new();
    for i in 0..25u64 {
        let data = random_bytes(64 * 1024, 600 + i);
        let last = create_partial(&server, data.len());
        assert_eq!(patch(&last, 0, data[..60_000].to_vec()).0, 204);
        let concat = format!("final;{} {}", path_of(&head_part), path_of(&last));
        let tail = data[60_000..].to_vec();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (b2, last2) = (barrier.clone(), last.clone());
        let t = std::thread::spawn(move || {
            b2.wait();
            // Stagger a little so the PATCH lands anywhere inside the final's creation.
            std::thread::sleep(Duration::from_micros((i % 5) * 700));
            patch(&last2, 60_000, tail)
        });
        barrier.wait();
        let resp = post_final(&server, &concat);
        assert_eq!(resp.status().as_u16(), 201);
        let fin = hdr(&resp, "location").unwrap();
        assert_eq!(t.join().unwrap(), (204, Some(64 * 1024)));
        let done = eventually(Duration::from_secs(3), || {
            hdr(&head(&fin), "upload-offset").is_some()
        });
        if !done {
            stuck.push(i);
        }
    }
    assert!(
        stuck.is_empty(),
        "finals never completed in rounds {stuck:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Repr-Digest

/// A large upload whose first PATCH asks for BLAKE3 (`Want-Repr-Digest`, as `ferry upload
/// --digest blake3` sends) has it when the last PATCH is answered: kept running, not read back
/// (which would only start then, in the background). One that accepts the CRC gets just that.
#[test]
fn want_repr_digest_on_the_first_patch_keeps_blake3_running() {
    let server = Server::start(&[]);
    let large = random_bytes(9 * MIB + 3, 63);
    let half = large.len() / 2;
    for (want, expect) in [
        (
            "blake3=10, sha-256=3",
            format!("{}, {}", blake3_member(&large), crc64nvme_member(&large)),
        ),
        ("crc64nvme=10, blake3=5", crc64nvme_member(&large)),
    ] {
        let url = create(&server, large.len() as u64, None);
        let send = |offset: usize, bytes: &[u8]| {
            client()
                .patch(&url)
                .header(TUS.0, TUS.1)
                .header("Upload-Offset", offset.to_string())
                .header("Content-Type", "application/offset+octet-stream")
                .header("Want-Repr-Digest", want)
                .body(bytes.to_vec())
                .send()
                .unwrap()
        };
        let first = send(0, &large[..half]);
        assert_eq!(first.status().as_u16(), 204);
        assert_eq!(hdr(&first, "repr-digest"), None, "{want}: not finished yet");
        let last = send(half, &large[half..]);
        assert_eq!(last.status().as_u16(), 204);
        assert_eq!(hdr(&last, "repr-digest"), Some(expect), "{want}");
    }
}

#[test]
fn repr_digest_on_finished_uploads_only() {
    let server = Server::start(&[]);
    // Small: computed before the completing PATCH is answered.
    let small = random_bytes(MIB, 61);
    let url = create(&server, small.len() as u64, None);
    assert_eq!(patch(&url, 0, small[..1000].to_vec()), (204, Some(1000)));
    assert_eq!(hdr(&head(&url), "repr-digest"), None, "unfinished upload");
    assert_eq!(get(&url).0, 409);
    assert_eq!(
        patch(&url, 1000, small[1000..].to_vec()),
        (204, Some(MIB as u64))
    );
    let want = repr_digest(&small);
    assert_eq!(hdr(&head(&url), "repr-digest"), Some(want.clone()), "HEAD");
    let (status, digest, body) = get(&url);
    assert_eq!(status, 200);
    assert_eq!(digest, Some(want), "GET");
    assert!(body == small);

    // Large (> 8 MiB): CRC-64/NVME (kept running) at once; BLAKE3 or SHA-256 only once a
    // client asks for it (Want-Repr-Digest), computed then.
    let large = random_bytes(9 * MIB + 1, 62);
    let url = create(&server, large.len() as u64, None);
    assert_eq!(
        patch(&url, 0, large.clone()),
        (204, Some(large.len() as u64))
    );
    let crc_only = crc64nvme_member(&large);
    assert_eq!(
        hdr(&head(&url), "repr-digest"),
        Some(crc_only.clone()),
        "HEAD"
    );
    assert_eq!(get(&url).1, Some(crc_only.clone()), "GET");
    let asking = |want: &str| {
        let resp = client()
            .head(&url)
            .header(TUS.0, TUS.1)
            .header("want-repr-digest", want)
            .send()
            .unwrap();
        hdr(&resp, "repr-digest")
    };
    assert_eq!(
        asking("crc64nvme=5, sha-256=1"),
        Some(crc_only.clone()),
        "CRC-64/NVME accepted: nothing computed"
    );
    let b3 = format!("{}, {crc_only}", blake3_member(&large));
    assert_eq!(
        asking("blake3=5, sha-256=1"),
        Some(b3),
        "BLAKE3 accepted: HEAD waits for it, no SHA-256 computed"
    );
    let want = format!(
        "{}, {}, {crc_only}",
        sha256_member(&large),
        blake3_member(&large)
    );
    assert_eq!(
        asking("sha-256=10"),
        Some(want.clone()),
        "HEAD waits for SHA-256"
    );
    let (status, digest, body) = get(&url);
    assert_eq!(status, 200);
    assert_eq!(digest, Some(want), "GET");
    assert!(body == large);

    // Zero-length: complete at once, digest of nothing.
    let url = create(&server, 0, None);
    assert_eq!(hdr(&head(&url), "repr-digest"), Some(repr_digest(b"")));
}

// ---------------------------------------------------------------------------------------------
// CORS

fn preflight(url: &str, origin: &str) -> reqwest::blocking::Response {
    client()
        .request(reqwest::Method::OPTIONS, url)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "PATCH")
        .header(
            "Access-Control-Request-Headers",
            "tus-resumable,upload-offset,upload-checksum,content-type",
        )
        .send()
        .expect("preflight")
}

fn list_has(list: &Option<String>, item: &str) -> bool {
    list.as_deref()
        .is_some_and(|l| l.split(',').any(|x| x.trim().eq_ignore_ascii_case(item)))
}

fn cors_headers(resp: &reqwest::blocking::Response) -> Vec<String> {
    resp.headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[test]
fn cors_preflight_and_exposed_headers() {
    let server = Server::start(&[]);
    let origin = "https://app.example";
    let url = create(&server, 10, None);
    for target in [server.files_url.as_str(), url.as_str()] {
        let resp = preflight(target, origin);
        assert_eq!(resp.status().as_u16(), 204, "preflight {target}");
        assert_eq!(
            hdr(&resp, "access-control-allow-origin").as_deref(),
            Some("*")
        );
        let methods = hdr(&resp, "access-control-allow-methods");
        for m in ["POST", "PATCH", "HEAD", "DELETE", "GET", "OPTIONS"] {
            assert!(list_has(&methods, m), "Allow-Methods {methods:?} lacks {m}");
        }
        let allowed = hdr(&resp, "access-control-allow-headers");
        for h in [
            "Upload-Offset",
            "Tus-Resumable",
            "Upload-Checksum",
            "Upload-Length",
            "Upload-Metadata",
            "Upload-Concat",
            "Upload-Defer-Length",
            "Content-Type",
            "X-HTTP-Method-Override",
        ] {
            assert!(list_has(&allowed, h), "Allow-Headers {allowed:?} lacks {h}");
        }
        let max_age: u64 = hdr(&resp, "access-control-max-age")
            .expect("Max-Age")
            .parse()
            .expect("Max-Age is a number");
        assert!(max_age > 0);
    }

    // Normal responses expose what a browser script must read.
    let resp = tus_post(&server)
        .header("Origin", origin)
        .header("Upload-Length", "5")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(
        hdr(&resp, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let exposed = hdr(&resp, "access-control-expose-headers");
    for h in [
        "Location",
        "Upload-Offset",
        "Upload-Length",
        "Upload-Expires",
        "Tus-Resumable",
        "Upload-Concat",
        "Repr-Digest",
    ] {
        assert!(
            list_has(&exposed, h),
            "Expose-Headers {exposed:?} lacks {h}"
        );
    }
    let loc = hdr(&resp, "location").unwrap();
    let resp = client()
        .patch(&loc)
        .header(TUS.0, TUS.1)
        .header(OCTET.0, OCTET.1)
        .header("Upload-Offset", "0")
        .header("Origin", origin)
        .body(b"hello".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(list_has(
        &hdr(&resp, "access-control-expose-headers"),
        "Upload-Offset"
    ));
    // Errors too (a browser must be able to read a 409's Upload-Offset).
    let resp = client()
        .patch(&loc)
        .header(TUS.0, TUS.1)
        .header(OCTET.0, OCTET.1)
        .header("Upload-Offset", "3")
        .header("Origin", origin)
        .body(b"x".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    assert_eq!(
        hdr(&resp, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert!(list_has(
        &hdr(&resp, "access-control-expose-headers"),
        "Upload-Offset"
    ));
    // No Origin, no CORS headers.
    let resp = head(&loc);
    assert!(cors_headers(&resp).is_empty(), "{:?}", cors_headers(&resp));
}

#[test]
fn cors_allow_list_answers_only_listed_origins() {
    let server = Server::start(&["--cors-origins", "https://a.example"]);
    let resp = preflight(&server.files_url, "https://a.example");
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(
        hdr(&resp, "access-control-allow-origin").as_deref(),
        Some("https://a.example")
    );
    assert!(list_has(&hdr(&resp, "vary"), "Origin"), "Vary: Origin");
    assert!(hdr(&resp, "access-control-allow-headers").is_some());
    for other in [
        "https://b.example",
        "http://a.example",
        "https://a.example:444",
        "https://a.example.evil.example",
        "null",
    ] {
        let resp = preflight(&server.files_url, other);
        assert!(
            cors_headers(&resp).is_empty(),
            "preflight from {other}: {:?}",
            cors_headers(&resp)
        );
        let resp = tus_post(&server)
            .header("Origin", other)
            .header("Upload-Length", "1")
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        assert!(
            cors_headers(&resp).is_empty(),
            "POST from {other}: {:?}",
            cors_headers(&resp)
        );
    }
    let resp = tus_post(&server)
        .header("Origin", "https://a.example")
        .header("Upload-Length", "1")
        .send()
        .unwrap();
    assert_eq!(
        hdr(&resp, "access-control-allow-origin").as_deref(),
        Some("https://a.example")
    );
    assert!(list_has(
        &hdr(&resp, "access-control-expose-headers"),
        "Location"
    ));
}

#[test]
fn cors_none_sends_no_cors_headers() {
    let server = Server::start(&["--cors-origins", "none"]);
    let resp = preflight(&server.files_url, "https://a.example");
    assert!(cors_headers(&resp).is_empty(), "{:?}", cors_headers(&resp));
    let resp = tus_post(&server)
        .header("Origin", "https://a.example")
        .header("Upload-Length", "1")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert!(cors_headers(&resp).is_empty(), "{:?}", cors_headers(&resp));
}

// ---------------------------------------------------------------------------------------------
// Hostile input over the extensions

/// A server with a half-done upload (100 bytes, 10 known) to aim at.
struct Target {
    server: Server,
    url: String,
    path: String,
    data: Vec<u8>,
    before: State,
}

fn target(args: &[&str]) -> Target {
    let server = Server::start(args);
    let data = random_bytes(100, 77);
    let url = create(&server, 100, Some("filename aGVsbG8udHh0"));
    assert_eq!(patch(&url, 0, data[..10].to_vec()), (204, Some(10)));
    let before = state(&url);
    let path = path_of(&url);
    Target {
        server,
        url,
        path,
        data,
        before,
    }
}

impl Target {
    fn assert_intact(&self, case: &str) {
        assert_eq!(state(&self.url), self.before, "upload changed by {case}");
        assert_healthy(&self.server, case);
    }

    fn finish_and_verify(&self) {
        assert_eq!(
            patch(&self.url, 10, self.data[10..].to_vec()),
            (204, Some(100))
        );
        assert_eq!(get(&self.url).2, self.data);
    }
}

#[test]
fn hostile_checksums_and_trailers() {
    let t = target(&[]);
    let chunk = &t.data[10..30];
    let good = Algo::Sha1.header(chunk);
    let long_value = format!("sha1 {}", "A".repeat(60_000));
    let base: Vec<(&str, &[u8])> = vec![
        (TUS.0, TUS.1.as_bytes()),
        (OCTET.0, OCTET.1.as_bytes()),
        ("Upload-Offset", b"10"),
    ];
    let with = |extra: &[(&'static str, &'static [u8])]| {
        let mut h = base.clone();
        h.extend_from_slice(extra);
        h
    };
    let leak = |s: String| -> &'static [u8] { Box::leak(s.into_bytes().into_boxed_slice()) };
    fn b(s: &'static [u8]) -> &'static [u8] {
        s
    }
    // Header cases: (name, headers, body, expected status).
    let cases: Vec<(&str, RawHeaders, Vec<u8>, u16)> = vec![
        (
            "unknown algorithm",
            with(&[("Upload-Checksum", b(b"whirlpool AAAA"))]),
            chunk.to_vec(),
            400,
        ),
        (
            "upper-case garbage algorithm",
            with(&[("Upload-Checksum", b(b"SHA-1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="))]),
            chunk.to_vec(),
            400,
        ),
        (
            "checksum sent twice",
            with(&[
                ("Upload-Checksum", leak(good.clone())),
                ("Upload-Checksum", leak(good.clone())),
            ]),
            chunk.to_vec(),
            400,
        ),
        (
            "non-ASCII value",
            with(&[("Upload-Checksum", b(b"sha1 \xff\xfe\xfd="))]),
            chunk.to_vec(),
            400,
        ),
        (
            "60 KB digest",
            with(&[("Upload-Checksum", leak(long_value))]),
            chunk.to_vec(),
            400,
        ),
        (
            "crc32 with 8 bytes",
            with(&[("Upload-Checksum", b(b"crc32 AAAAAAAAAAA="))]),
            chunk.to_vec(),
            400,
        ),
        (
            "url-safe base64",
            with(&[(
                "Upload-Checksum",
                leak(format!(
                    "sha256 {}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfbu8; 32])
                )),
            )]),
            chunk.to_vec(),
            400,
        ),
        (
            "right digest, body one byte longer",
            with(&[("Upload-Checksum", leak(good.clone()))]),
            t.data[10..31].to_vec(),
            460,
        ),
        (
            "right digest, empty body",
            with(&[("Upload-Checksum", leak(good.clone()))]),
            Vec::new(),
            // An empty PATCH changes nothing whatever it claims.
            204,
        ),
        (
            "checksum on a body past the length",
            with(&[("Upload-Checksum", leak(Algo::Sha1.header(&[0u8; 91])))]),
            vec![0u8; 91],
            413,
        ),
        (
            "trailer announced on a Content-Length body",
            with(&[("Trailer", b(b"Upload-Checksum"))]),
            chunk.to_vec(),
            400,
        ),
    ];
    for (case, headers, body, want) in &cases {
        let resp = raw(
            t.server.addr,
            &request("PATCH", &t.path, t.server.addr, headers, body),
            LIMIT,
        );
        if *want == 204 {
            // An empty body appends nothing; whether its checksum is then checked (460) or
            // ignored (204), nothing may change.
            assert!(matches!(status_of(&resp), 204 | 460), "{case}: {resp}");
        } else {
            assert_error(&resp, *want, case);
        }
        t.assert_intact(case);
    }

    // A control byte in a header value is invalid HTTP: hyper's parser answers 400 (with no
    // body of ours) before ferry sees the request.
    let req = request(
        "PATCH",
        &t.path,
        t.server.addr,
        &with(&[(
            "Upload-Checksum",
            b(b"sha1 Kq5sNclPz7QV2+lf\x01QIuc6R7oRu0="),
        )]),
        chunk,
    );
    let resp = raw(t.server.addr, &req, LIMIT);
    assert_eq!(status_of(&resp), 400, "control character: {resp}");
    t.assert_intact("control character");

    // Trailer cases (chunked).
    let hdrs = vec![
        TUS,
        OCTET,
        ("Upload-Offset", "10"),
        ("Trailer", "Upload-Checksum"),
    ];
    let mut with_header = hdrs.clone();
    with_header.push(("Upload-Checksum", &good));
    let bad_len = format!("sha1 {}", STANDARD.encode([1u8; 19]));
    let trailer_cases: Vec<(&str, &Headers, Headers, u16)> = vec![
        (
            "trailer: unknown algorithm",
            &hdrs,
            vec![("Upload-Checksum", "whirlpool AAAA")],
            400,
        ),
        (
            "trailer: bad base64",
            &hdrs,
            vec![("Upload-Checksum", "sha1 ***")],
            400,
        ),
        (
            "trailer: wrong length",
            &hdrs,
            vec![("Upload-Checksum", bad_len.as_str())],
            400,
        ),
        ("trailer: empty", &hdrs, vec![("Upload-Checksum", "")], 400),
        (
            "trailer: digest of other bytes",
            &hdrs,
            vec![("Upload-Checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")],
            460,
        ),
        (
            "trailer: only another trailer",
            &hdrs,
            vec![("X-Other", "1")],
            400,
        ),
        (
            "trailer: header and trailer",
            &with_header,
            vec![("Upload-Checksum", good.as_str())],
            400,
        ),
        ("trailer: announced, none sent", &hdrs, vec![], 400),
    ];
    for (case, headers, trailers, want) in &trailer_cases {
        let resp = send_chunked(
            t.server.addr,
            "PATCH",
            &t.path,
            headers,
            &[&chunk[..7], &chunk[7..]],
            trailers,
        );
        assert_error(&resp, *want, case);
        t.assert_intact(case);
    }
    t.finish_and_verify();
}

#[test]
fn hostile_requests_on_expired_uploads() {
    let server = Server::start(&["--expire-after", "2s", "--sweep-interval", "1h"]);
    // A finished upload (never expires) that must come through unchanged.
    let keep = create(&server, 5, None);
    assert_eq!(patch(&keep, 0, b"12345".to_vec()), (204, Some(5)));
    let resp = tus_post(&server)
        .header("Upload-Length", "100")
        .header(OCTET.0, OCTET.1)
        .body(vec![7u8; 10])
        .send()
        .unwrap();
    let expired = hdr(&resp, "location").unwrap();
    let kept_before = state(&keep);
    assert!(
        eventually(Duration::from_secs(6), || head(&expired).status().as_u16()
            == 410),
        "upload did not expire"
    );
    let expired_before = state(&expired);
    assert_eq!(expired_before.status, 410);
    let p = path_of(&expired);
    let addr = server.addr;
    let good = Algo::Sha1.header(&[7u8; 10]);
    let fin_p = format!("final;{p}");
    let cases: Vec<(&str, &str, Headers, Vec<u8>, u16)> = vec![
        ("HEAD", "HEAD", vec![TUS], vec![], 410),
        ("GET", "GET", vec![], vec![], 410),
        (
            "PATCH at its offset",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "10")],
            vec![1; 10],
            410,
        ),
        (
            "PATCH at 0",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "0")],
            vec![1; 10],
            410,
        ),
        (
            "empty PATCH",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "10")],
            vec![],
            410,
        ),
        (
            "PATCH with a checksum",
            "PATCH",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "10"),
                ("Upload-Checksum", good.as_str()),
            ],
            vec![7; 10],
            410,
        ),
        (
            "PATCH with Upload-Length",
            "PATCH",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "10"),
                ("Upload-Length", "100"),
            ],
            vec![],
            410,
        ),
        (
            "PATCH tunnelled through POST",
            "POST",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "10"),
                ("X-HTTP-Method-Override", "PATCH"),
            ],
            vec![1; 5],
            410,
        ),
        ("DELETE", "DELETE", vec![TUS], vec![], 410),
        (
            "DELETE tunnelled through POST",
            "POST",
            vec![TUS, ("X-HTTP-Method-Override", "DELETE")],
            vec![],
            410,
        ),
        (
            "PATCH with a garbage Upload-Expires",
            "PATCH",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "10"),
                ("Upload-Expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
            ],
            vec![1; 5],
            410,
        ),
        (
            "PATCH with a garbage offset",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "-1")],
            vec![1; 5],
            400,
        ),
        (
            "final naming it",
            "POST",
            vec![TUS, ("Upload-Concat", fin_p.as_str())],
            vec![],
            400,
        ),
    ];
    for (case, method, headers, body, want) in &cases {
        let path = if *method == "POST" && !case.contains("tunnelled") {
            "/files/"
        } else {
            p.as_str()
        };
        let resp = send(addr, method, path, headers, body);
        if *method == "HEAD" {
            assert_eq!(status_of(&resp), *want, "{case}: {resp}");
        } else {
            assert_error(&resp, *want, case);
        }
        assert_eq!(
            state(&expired),
            expired_before,
            "expired upload changed by {case}"
        );
        assert_eq!(
            state(&keep),
            kept_before,
            "finished upload changed by {case}"
        );
        assert_healthy(&server, case);
    }

    // Garbage the server must ignore: a client cannot choose the expiry.
    for (case, value) in [
        ("far future", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ("past", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ("not a date", "tomorrow-ish"),
        ("number", "99999999999"),
    ] {
        let resp = tus_post(&server)
            .header("Upload-Length", "10")
            .header("Upload-Expires", value)
            .send()
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            201,
            "POST with Upload-Expires {case}"
        );
        let exp = http_date(&hdr(&resp, "upload-expires").unwrap());
        let ahead = secs_from_now(exp);
        assert!(
            (0.0..=4.0).contains(&ahead),
            "Upload-Expires {case}: the server's own expiry must win ({ahead:.1}s ahead)"
        );
    }
    assert_eq!(state(&keep), kept_before);

    // Finally the sweep removes it for good.
    sigusr1(&server);
    assert!(
        eventually(Duration::from_secs(10), || head(&expired).status().as_u16()
            == 404),
        "not swept"
    );
    assert_eq!(get(&keep).2, b"12345");
}

#[test]
fn hostile_concatenation_requests() {
    let server = Server::start(&[]);
    let a = random_bytes(1000, 91);
    let ua = partial_with(&server, &a);
    let ub = create_partial(&server, 500);
    assert_eq!(patch(&ub, 0, vec![3u8; 200]), (204, Some(200)));
    let regular = create(&server, 4, None);
    assert_eq!(patch(&regular, 0, b"reg!".to_vec()), (204, Some(4)));
    let resp = post_final(&server, &format!("final;{}", path_of(&ua)));
    assert_eq!(resp.status().as_u16(), 201);
    let fin = hdr(&resp, "location").unwrap();
    let watched = [ua.clone(), ub.clone(), regular.clone(), fin.clone()];
    let before: Vec<State> = watched.iter().map(|u| state(u)).collect();
    let files = stored_files(&server.data_dir);
    let pa = path_of(&ua);
    let ida = id_of(&ua);
    let addr = server.addr;

    let many_parts = format!("final;{}", vec![pa.as_str(); 10_001].join(" "));
    let huge = format!("final;{}", "/".repeat(70_000));
    const E400: &[u16] = &[400];
    // Paths that cannot name an upload: refused as foreign (400) or unknown (404).
    const E400_404: &[u16] = &[400, 404];
    // Larger than the 64 KiB request head limit: 431 from the HTTP layer.
    const E400_431: &[u16] = &[400, 431];
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("empty", b"".to_vec(), E400),
        ("whitespace", b"   ".to_vec(), E400),
        ("Partial (case)", b"Partial".to_vec(), E400),
        ("partial;", b"partial;".to_vec(), E400),
        ("final without list", b"final".to_vec(), E400),
        ("final; empty list", b"final;".to_vec(), E400),
        ("final; spaces only", b"final;   ".to_vec(), E400),
        ("final with space", format!("final {pa}").into_bytes(), E400),
        ("finale", format!("finale;{pa}").into_bytes(), E400),
        (
            "comma list",
            format!("final;{pa},{pa}").into_bytes(),
            E400_404,
        ),
        (
            "non-ASCII URL",
            [b"final;/files/\xff".as_slice(), ida.as_bytes()].concat(),
            E400,
        ),
        (
            "control character",
            format!("final;{pa}\x01").into_bytes(),
            E400,
        ),
        ("10,001 parts", many_parts.into_bytes(), E400_431),
        ("70 KB value", huge.into_bytes(), E400_431),
        (
            "dot segments",
            format!("final;/files/../files/{ida}").into_bytes(),
            E400_404,
        ),
        (
            "dot segments outside",
            format!("final;/x/../files/{ida}").into_bytes(),
            E400_404,
        ),
        (
            "encoded slash",
            format!("final;/files%2F{ida}").into_bytes(),
            E400_404,
        ),
        (
            "encoded id slash",
            format!("final;/files/%2F{ida}").into_bytes(),
            E400_404,
        ),
        (
            "encoded dots",
            format!("final;/files/%2e%2e/{ida}").into_bytes(),
            E400_404,
        ),
        (
            "id in the query",
            format!("final;/files/?id={ida}").into_bytes(),
            E400_404,
        ),
        (
            "id in a foreign URL's query",
            format!("final;http://evil.example/?u=http://{addr}/files/{ida}").into_bytes(),
            E400,
        ),
        (
            "id with a trailing slash",
            format!("final;{pa}/").into_bytes(),
            E400_404,
        ),
        (
            "upper-case id",
            format!("final;/files/{}", ida.to_uppercase()).into_bytes(),
            E400_404,
        ),
        ("the collection", b"final;/files/".to_vec(), E400_404),
        (
            "final of a final",
            format!("final;{}", path_of(&fin)).into_bytes(),
            E400,
        ),
        (
            "a part and a final",
            format!("final;{pa} {}", path_of(&fin)).into_bytes(),
            E400,
        ),
        (
            "regular upload",
            format!("final;{}", path_of(&regular)).into_bytes(),
            E400,
        ),
        (
            "userinfo",
            format!("final;http://user@{addr}/files/{ida}").into_bytes(),
            E400,
        ),
        (
            "javascript URL",
            format!("final;javascript:alert(1)//{ida}").into_bytes(),
            E400,
        ),
    ];
    let check = |case: &str| {
        for (u, b) in watched.iter().zip(&before) {
            assert_eq!(&state(u), b, "{u} changed by {case}");
        }
        assert_eq!(
            stored_files(&server.data_dir),
            files,
            "{case} stored something"
        );
        assert_healthy(&server, case);
    };
    for (case, value, want) in &cases {
        let req = request(
            "POST",
            "/files/",
            addr,
            &[
                (TUS.0, TUS.1.as_bytes()),
                ("Upload-Concat", value.as_slice()),
            ],
            b"",
        );
        let resp = raw(addr, &req, LIMIT);
        let status = status_of(&resp);
        assert!(
            want.contains(&status),
            "{case}: got {status}, want one of {want:?}: {resp}"
        );
        assert_eq!(header_of(&resp, "location"), None, "{case}");
        check(case);
    }

    // The same with a sent-twice header, a length, and a body.
    let two = send(
        addr,
        "POST",
        "/files/",
        &[
            TUS,
            ("Upload-Concat", "partial"),
            ("Upload-Concat", "partial"),
            ("Upload-Length", "1"),
        ],
        b"",
    );
    assert_error(&two, 400, "Upload-Concat twice");
    check("Upload-Concat twice");
    let fin_a = format!("final;{pa}");
    for (case, headers, body, want) in [
        (
            "final with Upload-Length",
            vec![
                TUS,
                ("Upload-Concat", fin_a.as_str()),
                ("Upload-Length", "1000"),
            ],
            vec![],
            400,
        ),
        (
            "final with a huge Upload-Length",
            vec![
                TUS,
                ("Upload-Concat", fin_a.as_str()),
                ("Upload-Length", "99999999999999999999"),
            ],
            vec![],
            400,
        ),
        (
            "final with Upload-Defer-Length",
            vec![
                TUS,
                ("Upload-Concat", fin_a.as_str()),
                ("Upload-Defer-Length", "1"),
            ],
            vec![],
            400,
        ),
        (
            "final with a body",
            vec![TUS, OCTET, ("Upload-Concat", fin_a.as_str())],
            a[..10].to_vec(),
            403,
        ),
        (
            "final with a checksummed body",
            vec![
                TUS,
                OCTET,
                ("Upload-Concat", fin_a.as_str()),
                ("Upload-Checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="),
            ],
            a[..10].to_vec(),
            403,
        ),
    ] {
        let resp = send(addr, "POST", "/files/", &headers, &body);
        assert_error(&resp, want, case);
        check(case);
    }
    // PATCH and method tricks on the final itself.
    let pf = path_of(&fin);
    for (case, method, headers) in [
        (
            "PATCH final",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "1000")],
        ),
        (
            "PATCH final at 0",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "0")],
        ),
        (
            "PATCH final with a length",
            "PATCH",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "1000"),
                ("Upload-Length", "1001"),
            ],
        ),
        (
            "PATCH final via override",
            "POST",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "1000"),
                ("X-HTTP-Method-Override", "PATCH"),
            ],
        ),
    ] {
        let resp = send(addr, method, &pf, &headers, b"z");
        assert_error(&resp, 403, case);
        check(case);
    }
    // Repeating a part is allowed by tus (not hostile): it works and leaves the rest alone.
    let resp = post_final(&server, &format!("final;{pa} {pa}"));
    assert_eq!(resp.status().as_u16(), 201);
    let twice = hdr(&resp, "location").unwrap();
    assert!(get(&twice).2 == [a.clone(), a.clone()].concat());
    for (u, b) in watched.iter().zip(&before) {
        assert_eq!(&state(u), b, "{u} changed by a repeated-part final");
    }
    assert_eq!(get(&fin).2, a);
}
