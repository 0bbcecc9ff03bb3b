//! tus helpers: requests through reqwest, HEAD state, stored files, digests, and the fixture the
//! hostile-input sweeps run against.

use crate::support::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

pub const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");
pub const OCTET: (&str, &str) = ("Content-Type", "application/offset+octet-stream");
pub const LIMIT: Duration = Duration::from_secs(10);

/// Request headers for a table row.
pub type Headers<'a> = Vec<(&'a str, &'a str)>;

/// Same, but with a `Host` header of the caller's choosing.
pub fn send_with_host(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    raw(addr, req.as_bytes(), LIMIT)
}

/// The id at the end of an upload URL: 32 lowercase hex chars.
pub fn assert_upload_url(location: &str, prefix: &str) {
    let id = location
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("Location {location:?} is not under {prefix:?}"));
    assert_eq!(id.len(), 32, "id in {location:?}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "id in {location:?}"
    );
}
pub const MIB: usize = 1 << 20;
/// Request headers whose values may be any bytes.
pub type RawHeaders<'a> = Vec<(&'a str, &'a [u8])>;

/// The path part of an absolute URL.
pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    format!("/{}", rest.split_once('/').map_or("", |(_, p)| p))
}

/// The upload id at the end of an upload URL.
pub fn id_of(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

/// Where the local data store keeps an upload's bytes.
pub fn data_file(server: &Server, url: &str) -> PathBuf {
    let id = id_of(url);
    server.data_dir.join("uploads").join(&id[..2]).join(&id)
}

/// Bytes the server's store holds of the upload at `url`: its file's size (local store), or
/// its object's (S3: 0 while only a multipart upload or staged pieces exist); `None` once
/// nothing of it is left.
pub fn stored(server: &Server, url: &str) -> Option<u64> {
    match server.s3_store() {
        Some((store, endpoint)) => super::s3::held(&store, &endpoint, &id_of(url)),
        None => std::fs::metadata(data_file(server, url))
            .ok()
            .map(|m| m.len()),
    }
}

/// Files under the data directory's upload store.
pub fn stored_files(data_dir: &Path) -> usize {
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

pub fn hdr(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
}

/// `Location`, resolved against the URL asked (the server sends a path unless it knows its
/// public URL), as a client resolves it.
pub fn location(resp: &reqwest::blocking::Response) -> Option<String> {
    let value = hdr(resp, "location")?;
    Some(
        resp.url()
            .join(&value)
            .expect("Location is a URL reference")
            .to_string(),
    )
}

pub fn head(url: &str) -> reqwest::blocking::Response {
    client()
        .head(url)
        .header(TUS.0, TUS.1)
        .send()
        .expect("HEAD")
}

pub fn tus_post(server: &Server) -> reqwest::blocking::RequestBuilder {
    client().post(&server.files_url).header(TUS.0, TUS.1)
}

pub fn tus_patch(url: &str, offset: u64) -> reqwest::blocking::RequestBuilder {
    client()
        .patch(url)
        .header(TUS.0, TUS.1)
        .header(OCTET.0, OCTET.1)
        .header("Upload-Offset", offset.to_string())
}

/// PATCH with an `Upload-Checksum` header; returns (status, Upload-Offset).
pub fn patch_checked(url: &str, offset: u64, body: &[u8], checksum: &str) -> (u16, Option<u64>) {
    let resp = tus_patch(url, offset)
        .header("Upload-Checksum", checksum)
        .body(body.to_vec())
        .send()
        .expect("PATCH");
    let off = hdr(&resp, "upload-offset").map(|v| v.parse().unwrap());
    (resp.status().as_u16(), off)
}

pub fn delete(url: &str) -> u16 {
    client()
        .delete(url)
        .header(TUS.0, TUS.1)
        .send()
        .expect("DELETE")
        .status()
        .as_u16()
}

/// GET: status, `Repr-Digest`, body.
pub fn get(url: &str) -> (u16, Option<String>, Vec<u8>) {
    let resp = client().get(url).send().expect("GET");
    let status = resp.status().as_u16();
    let digest = hdr(&resp, "repr-digest");
    (status, digest, resp.bytes().expect("GET body").to_vec())
}

/// Creates a partial upload of `len` bytes; returns its (absolute) URL.
pub fn create_partial(server: &Server, len: usize) -> String {
    let resp = tus_post(server)
        .header("Upload-Length", len.to_string())
        .header("Upload-Concat", "partial")
        .send()
        .expect("POST partial");
    assert_eq!(resp.status().as_u16(), 201, "partial: {:?}", resp.text());
    location(&resp).expect("Location")
}

/// Creates a partial upload and uploads all of `data` into it.
/// Returns its URL on the server's own address (whatever `--public-url` says).
pub fn partial_with(server: &Server, data: &[u8]) -> String {
    let url = server.rebase(&create_partial(server, data.len()));
    if !data.is_empty() {
        assert_eq!(
            patch(&url, 0, data.to_vec()),
            (204, Some(data.len() as u64))
        );
    }
    url
}

/// POST of a final upload with the given `Upload-Concat` value.
pub fn post_final(server: &Server, concat: &str) -> reqwest::blocking::Response {
    tus_post(server)
        .header("Upload-Concat", concat)
        .send()
        .expect("POST final")
}

pub fn healthz(server: &Server) -> u16 {
    let url = server.files_url.replace("/files/", "/healthz");
    client().get(url).send().map_or(0, |r| r.status().as_u16())
}

pub fn assert_healthy(server: &Server, case: &str) {
    assert_eq!(healthz(server), 200, "server unhealthy after {case}");
    let log = server.log();
    assert!(!log.contains("panicked"), "panic after {case}:\n{log}");
}

/// The status is `want` and the body is a single non-empty line of text.
pub fn assert_error(resp: &str, want: u16, case: &str) {
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
pub fn repr_digest(data: &[u8]) -> String {
    format!(
        "{}, {}, {}",
        sha256_member(data),
        blake3_member(data),
        crc64nvme_member(data)
    )
}

pub fn sha256_member(data: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(sha2::Sha256::digest(data)))
}

pub fn blake3_member(data: &[u8]) -> String {
    format!(
        "blake3=:{}:",
        STANDARD.encode(blake3::hash(data).as_bytes())
    )
}

/// Polls `f` every 20 ms until it is true or `limit` passes; returns whether it became true.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
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

pub fn sigusr1(server: &Server) {
    let st = Command::new("kill")
        .args(["-USR1", &server.pid().to_string()])
        .status()
        .expect("kill -USR1");
    assert!(st.success(), "kill -USR1 failed");
}

pub fn http_date(v: &str) -> SystemTime {
    httpdate::parse_http_date(v).unwrap_or_else(|e| panic!("{v:?} is not an HTTP date: {e}"))
}

/// Seconds from now until `t` (negative if past).
pub fn secs_from_now(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// What a HEAD shows of an upload (every header a refused request must leave alone).
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct State {
    pub status: u16,
    pub offset: Option<String>,
    pub length: Option<String>,
    pub concat: Option<String>,
    pub expires: Option<String>,
    pub digest: Option<String>,
    pub metadata: Option<String>,
}

pub fn state(url: &str) -> State {
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

#[derive(Clone, Copy, Debug)]
pub enum Algo {
    Sha1,
    Sha256,
    Sha512,
    Md5,
    Crc32,
    Crc64nvme,
    Blake3,
}

pub const ALGOS: [Algo; 7] = [
    Algo::Sha1,
    Algo::Sha256,
    Algo::Sha512,
    Algo::Md5,
    Algo::Crc32,
    Algo::Crc64nvme,
    Algo::Blake3,
];

impl Algo {
    pub fn name(self) -> &'static str {
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

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
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
    pub fn header(self, data: &[u8]) -> String {
        format!("{} {}", self.name(), STANDARD.encode(self.digest(data)))
    }
}

/// A server with a half-done upload (100 bytes, 10 known) to aim at.
pub struct Target {
    pub server: Server,
    pub url: String,
    pub path: String,
    pub data: Vec<u8>,
    pub before: State,
}

pub fn target(args: &[&str]) -> Target {
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
    pub fn assert_intact(&self, case: &str) {
        assert_eq!(state(&self.url), self.before, "upload changed by {case}");
        assert_healthy(&self.server, case);
    }

    pub fn finish_and_verify(&self) {
        assert_eq!(
            patch(&self.url, 10, self.data[10..].to_vec()),
            (204, Some(100))
        );
        assert_eq!(get(&self.url).2, self.data);
    }
}
