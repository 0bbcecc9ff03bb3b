//! tus 1.0 core, creation, creation-with-upload, creation-defer-length and termination: every
//! status code and header rule, against a real `ferry serve`.

use crate::support::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");
const OCTET: (&str, &str) = ("Content-Type", "application/offset+octet-stream");
const LIMIT: Duration = Duration::from_secs(10);

/// Request headers for a table row.
type Headers<'a> = Vec<(&'a str, &'a str)>;

/// One raw HTTP/1.1 request on a fresh connection (`Connection: close`), so the path and
/// headers reach the server exactly as written. `Content-Length` is added for a body.
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes, LIMIT)
}

/// Same, but with a `Host` header of the caller's choosing.
fn send_with_host(
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

/// The path part of an absolute URL.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    format!("/{}", rest.split_once('/').map_or("", |(_, p)| p))
}

/// The body of a raw response.
fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The id at the end of an upload URL: 32 lowercase hex chars.
fn assert_upload_url(location: &str, prefix: &str) {
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

fn head(url: &str) -> reqwest::blocking::Response {
    client()
        .head(url)
        .header(TUS.0, TUS.1)
        .send()
        .expect("HEAD")
}

fn hdr(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
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

fn healthz(server: &Server) -> u16 {
    let url = server.files_url.replace("/files/", "/healthz");
    client()
        .get(url)
        .send()
        .expect("GET /healthz")
        .status()
        .as_u16()
}

// ---------------------------------------------------------------------------------------------
// OPTIONS

#[test]
fn options_announces_version_all_nine_extensions_and_checksums() {
    let server = Server::start(&[]);
    // No Tus-Resumable on purpose: OPTIONS must not require it; a foreign version is ignored too.
    for (what, extra) in [("none", None), ("foreign", Some("0.2.2"))] {
        let mut req = client().request(reqwest::Method::OPTIONS, &server.files_url);
        if let Some(v) = extra {
            req = req.header("Tus-Resumable", v);
        }
        let resp = req.send().expect("OPTIONS");
        assert_eq!(resp.status().as_u16(), 204, "Tus-Resumable {what}");
        assert_eq!(hdr(&resp, "tus-version").as_deref(), Some("1.0.0"));
        let mut ext: Vec<String> = hdr(&resp, "tus-extension")
            .expect("Tus-Extension")
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        ext.sort();
        assert_eq!(
            ext,
            [
                "checksum",
                "checksum-trailer",
                "concatenation",
                "concatenation-unfinished",
                "creation",
                "creation-defer-length",
                "creation-with-upload",
                "expiration",
                "termination",
            ],
            "Tus-Extension"
        );
        let mut algos: Vec<String> = hdr(&resp, "tus-checksum-algorithm")
            .expect("Tus-Checksum-Algorithm")
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        algos.sort();
        assert_eq!(
            algos,
            [
                "blake3",
                "crc32",
                "crc64nvme",
                "md5",
                "sha1",
                "sha256",
                "sha512"
            ]
        );
        assert_eq!(
            hdr(&resp, "tus-max-size"),
            None,
            "no --max-size, no Tus-Max-Size"
        );
    }
    // Also on an upload URL.
    let url = create(&server, 3, None);
    let resp = client()
        .request(reqwest::Method::OPTIONS, &url)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(hdr(&resp, "tus-version").as_deref(), Some("1.0.0"));
}

#[test]
fn options_announces_max_size_when_set() {
    let server = Server::start(&["--max-size", "1M"]);
    let resp = client()
        .request(reqwest::Method::OPTIONS, &server.files_url)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(hdr(&resp, "tus-max-size").as_deref(), Some("1048576"));
}

// ---------------------------------------------------------------------------------------------
// Creation

#[test]
fn post_creates_with_absolute_location_under_files_url() {
    let server = Server::start(&[]);
    let resp = tus_post(&server)
        .header("Upload-Length", "42")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(hdr(&resp, "tus-resumable").as_deref(), Some("1.0.0"));
    assert_eq!(
        hdr(&resp, "upload-offset"),
        None,
        "no body, no Upload-Offset"
    );
    let location = hdr(&resp, "location").expect("Location");
    assert_upload_url(&location, &server.files_url);
    let h = head(&location);
    assert_eq!(h.status().as_u16(), 200);
    assert_eq!(hdr(&h, "upload-offset").as_deref(), Some("0"));
    assert_eq!(hdr(&h, "upload-length").as_deref(), Some("42"));
    // Two creations never share an id.
    let other = create(&server, 42, None);
    assert_ne!(other, location);
}

#[test]
fn zero_length_upload_is_complete_at_once() {
    let server = Server::start(&[]);
    let url = create(&server, 0, None);
    let h = head(&url);
    assert_eq!(h.status().as_u16(), 200);
    assert_eq!(hdr(&h, "upload-offset").as_deref(), Some("0"));
    assert_eq!(hdr(&h, "upload-length").as_deref(), Some("0"));
    let resp = client().get(&url).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(hdr(&resp, "content-length").as_deref(), Some("0"));
    assert!(resp.bytes().unwrap().is_empty());
}

#[test]
fn creation_with_upload_answers_the_new_offset() {
    let server = Server::start(&[]);
    let data = random_bytes(5000, 1);
    // Part of the upload in the POST.
    let resp = tus_post(&server)
        .header("Upload-Length", "5000")
        .header(OCTET.0, OCTET.1)
        .body(data[..1200].to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("1200"));
    let url = hdr(&resp, "location").unwrap();
    assert_upload_url(&url, &server.files_url);
    assert_eq!(head_offset(&url), Some(1200));
    assert_eq!(patch(&url, 1200, data[1200..].to_vec()), (204, Some(5000)));
    assert_eq!(get_sha256(&url), sha256(&data));

    // The whole upload in the POST.
    let resp = tus_post(&server)
        .header("Upload-Length", "5000")
        .header(OCTET.0, OCTET.1)
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("5000"));
    assert_eq!(get_sha256(&hdr(&resp, "location").unwrap()), sha256(&data));
}

#[test]
fn creation_with_upload_needs_the_tus_content_type() {
    let server = Server::start(&[]);
    let resp = tus_post(&server)
        .header("Upload-Length", "10")
        .header("Content-Type", "application/octet-stream")
        .body(vec![1u8; 10])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    assert_eq!(hdr(&resp, "location"), None);
}

#[test]
fn defer_length_then_declare_on_patch_then_never_change() {
    let server = Server::start(&[]);
    let data = random_bytes(3000, 2);
    let resp = tus_post(&server)
        .header("Upload-Defer-Length", "1")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let url = hdr(&resp, "location").unwrap();

    let h = head(&url);
    assert_eq!(h.status().as_u16(), 200);
    assert_eq!(hdr(&h, "upload-defer-length").as_deref(), Some("1"));
    assert_eq!(hdr(&h, "upload-length"), None);
    assert_eq!(hdr(&h, "upload-offset").as_deref(), Some("0"));

    // Bytes before the length is known.
    assert_eq!(patch(&url, 0, data[..1000].to_vec()), (204, Some(1000)));
    let h = head(&url);
    assert_eq!(hdr(&h, "upload-defer-length").as_deref(), Some("1"));
    assert_eq!(hdr(&h, "upload-length"), None);

    // The length arrives with the next PATCH.
    let resp = tus_patch(&url, 1000)
        .header("Upload-Length", "3000")
        .body(data[1000..2000].to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("2000"));
    let h = head(&url);
    assert_eq!(hdr(&h, "upload-length").as_deref(), Some("3000"));
    assert_eq!(hdr(&h, "upload-defer-length"), None);

    // Once set it cannot change; nothing is written.
    let resp = tus_patch(&url, 2000)
        .header("Upload-Length", "4000")
        .body(data[2000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let h = head(&url);
    assert_eq!(hdr(&h, "upload-length").as_deref(), Some("3000"));
    assert_eq!(hdr(&h, "upload-offset").as_deref(), Some("2000"));

    // Repeating the same length is harmless.
    let resp = tus_patch(&url, 2000)
        .header("Upload-Length", "3000")
        .body(data[2000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("3000"));
    assert_eq!(get_sha256(&url), sha256(&data));
}

#[test]
fn defer_length_declared_by_an_empty_patch() {
    let server = Server::start(&[]);
    let resp = tus_post(&server)
        .header("Upload-Defer-Length", "1")
        .send()
        .unwrap();
    let url = hdr(&resp, "location").unwrap();
    let resp = tus_patch(&url, 0)
        .header("Upload-Length", "4")
        .body(Vec::new())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("0"));
    assert_eq!(hdr(&head(&url), "upload-length").as_deref(), Some("4"));
    assert_eq!(patch(&url, 0, b"abcd".to_vec()), (204, Some(4)));
    assert_eq!(get_sha256(&url), sha256(b"abcd"));
}

// ---------------------------------------------------------------------------------------------
// HEAD and PATCH

#[test]
fn head_reports_offset_length_metadata_and_no_store() {
    let server = Server::start(&[]);
    // "a.txt" and "text/plain", plus a key without value.
    let md = "filename YS50eHQ=,filetype dGV4dC9wbGFpbg==,flag";
    let url = create(&server, 10, Some(md));
    assert_eq!(patch(&url, 0, b"0123".to_vec()), (204, Some(4)));
    let h = head(&url);
    assert_eq!(h.status().as_u16(), 200);
    assert_eq!(hdr(&h, "upload-offset").as_deref(), Some("4"));
    assert_eq!(hdr(&h, "upload-length").as_deref(), Some("10"));
    assert_eq!(hdr(&h, "upload-metadata").as_deref(), Some(md));
    assert_eq!(hdr(&h, "cache-control").as_deref(), Some("no-store"));
    assert_eq!(hdr(&h, "tus-resumable").as_deref(), Some("1.0.0"));
    assert_eq!(hdr(&h, "upload-defer-length"), None);

    // Without metadata there is no Upload-Metadata header.
    let url = create(&server, 10, None);
    assert_eq!(hdr(&head(&url), "upload-metadata"), None);
}

#[test]
fn patch_appends_and_answers_204_with_the_new_offset() {
    let server = Server::start(&[]);
    let data = random_bytes(100_000, 3);
    let url = create(&server, data.len() as u64, None);
    let mut offset = 0;
    for chunk in data.chunks(30_000) {
        let resp = tus_patch(&url, offset).body(chunk.to_vec()).send().unwrap();
        assert_eq!(resp.status().as_u16(), 204, "PATCH at {offset}");
        offset += chunk.len() as u64;
        assert_eq!(
            hdr(&resp, "upload-offset"),
            Some(offset.to_string()),
            "PATCH to {offset}"
        );
        assert_eq!(hdr(&resp, "tus-resumable").as_deref(), Some("1.0.0"));
        assert_eq!(head_offset(&url), Some(offset));
    }
    assert_eq!(get_sha256(&url), sha256(&data));
}

#[test]
fn patch_at_the_wrong_offset_is_409_and_changes_nothing() {
    let server = Server::start(&[]);
    let data = random_bytes(100, 4);
    let url = create(&server, 100, None);
    assert_eq!(patch(&url, 0, data[..40].to_vec()), (204, Some(40)));
    for wrong in [0u64, 39, 41, 99] {
        let (status, offset) = patch(&url, wrong, vec![0xEE; 10]);
        assert_eq!(status, 409, "Upload-Offset {wrong}");
        assert_eq!(offset, Some(40), "409 carries the real offset ({wrong})");
        assert_eq!(head_offset(&url), Some(40), "after Upload-Offset {wrong}");
    }
    assert_eq!(patch(&url, 40, data[40..].to_vec()), (204, Some(100)));
    assert_eq!(get_sha256(&url), sha256(&data), "no stray bytes");
}

#[test]
fn patch_without_the_tus_content_type_is_415() {
    let server = Server::start(&[]);
    let url = create(&server, 10, None);
    let path = path_of(&url);
    for (what, ct) in [
        ("missing", None),
        ("octet-stream", Some("application/octet-stream")),
        ("text", Some("text/plain")),
        ("suffix", Some("application/offset+octet-stream-x")),
    ] {
        let mut headers = vec![TUS, ("Upload-Offset", "0")];
        if let Some(ct) = ct {
            headers.push(("Content-Type", ct));
        }
        let resp = send(server.addr, "PATCH", &path, &headers, b"abc");
        assert_eq!(status_of(&resp), 415, "Content-Type {what}: {resp}");
        assert_eq!(head_offset(&url), Some(0), "Content-Type {what}");
    }
}

#[test]
fn missing_or_wrong_tus_resumable_is_412_with_tus_version() {
    let server = Server::start(&[]);
    let url = create(&server, 10, None);
    let path = path_of(&url);
    for version in [None, Some("0.2.2"), Some("1.0"), Some("2.0.0")] {
        let v = version.unwrap_or("missing");
        let tus: Vec<(&str, &str)> = version.map(|v| ("Tus-Resumable", v)).into_iter().collect();
        let cases: [(&str, &str, Headers, &[u8]); 4] = [
            ("POST", "/files/", vec![("Upload-Length", "5")], b""),
            ("HEAD", path.as_str(), vec![], b""),
            (
                "PATCH",
                path.as_str(),
                vec![OCTET, ("Upload-Offset", "0")],
                b"abc",
            ),
            ("DELETE", path.as_str(), vec![], b""),
        ];
        for (method, p, mut headers, body) in cases {
            headers.extend(tus.iter().copied());
            let resp = send(server.addr, method, p, &headers, body);
            assert_eq!(
                status_of(&resp),
                412,
                "{method} with Tus-Resumable {v}: {resp}"
            );
            assert_eq!(
                header_of(&resp, "Tus-Version").as_deref(),
                Some("1.0.0"),
                "{method} with Tus-Resumable {v}"
            );
            assert_eq!(header_of(&resp, "Location"), None, "{method} {v}");
        }
        assert_eq!(
            head_offset(&url),
            Some(0),
            "Tus-Resumable {v}: PATCH was not processed"
        );
    }
    // DELETE was not processed either.
    assert_eq!(head(&url).status().as_u16(), 200);
}

#[test]
fn unknown_upload_is_404_without_offset() {
    let server = Server::start(&[]);
    let url = format!("{}0123456789abcdef0123456789abcdef", server.files_url);
    let h = head(&url);
    assert_eq!(h.status().as_u16(), 404);
    assert_eq!(hdr(&h, "upload-offset"), None);
    let resp = tus_patch(&url, 0).body(b"abc".to_vec()).send().unwrap();
    assert_eq!(resp.status().as_u16(), 404, "PATCH");
    let resp = client().delete(&url).header(TUS.0, TUS.1).send().unwrap();
    assert_eq!(resp.status().as_u16(), 404, "DELETE");
    let resp = client().get(&url).send().unwrap();
    assert_eq!(resp.status().as_u16(), 404, "GET");
}

// ---------------------------------------------------------------------------------------------
// Termination

#[test]
fn delete_is_204_then_the_upload_is_gone() {
    let server = Server::start(&[]);
    let url = create(&server, 10, None);
    assert_eq!(patch(&url, 0, b"01234".to_vec()), (204, Some(5)));
    let resp = client().delete(&url).header(TUS.0, TUS.1).send().unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(hdr(&resp, "tus-resumable").as_deref(), Some("1.0.0"));
    assert_eq!(head(&url).status().as_u16(), 404, "HEAD after DELETE");
    let (status, _) = patch(&url, 5, b"56789".to_vec());
    assert_eq!(status, 404, "PATCH after DELETE");
    assert_eq!(client().get(&url).send().unwrap().status().as_u16(), 404);
    let resp = client().delete(&url).header(TUS.0, TUS.1).send().unwrap();
    assert_eq!(resp.status().as_u16(), 404, "second DELETE");
    // Deleting one upload leaves others alone.
    let keep = create(&server, 3, None);
    let gone = create(&server, 3, None);
    client().delete(&gone).header(TUS.0, TUS.1).send().unwrap();
    assert_eq!(head_offset(&keep), Some(0));
}

// ---------------------------------------------------------------------------------------------
// X-HTTP-Method-Override

#[test]
fn method_override_tunnels_patch_head_and_delete_through_post() {
    let server = Server::start(&[]);
    let url = create(&server, 6, None);
    let resp = client()
        .post(&url)
        .header(TUS.0, TUS.1)
        .header("X-HTTP-Method-Override", "PATCH")
        .header(OCTET.0, OCTET.1)
        .header("Upload-Offset", "0")
        .body(b"abc".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204, "override PATCH");
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("3"));

    let resp = client()
        .post(&url)
        .header(TUS.0, TUS.1)
        .header("X-HTTP-Method-Override", "HEAD")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "override HEAD");
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("3"));
    assert_eq!(hdr(&resp, "upload-length").as_deref(), Some("6"));

    // Lowercase works too.
    let resp = client()
        .post(&url)
        .header(TUS.0, TUS.1)
        .header("X-HTTP-Method-Override", "patch")
        .header(OCTET.0, OCTET.1)
        .header("Upload-Offset", "3")
        .body(b"def".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204, "override patch");
    assert_eq!(get_sha256(&url), sha256(b"abcdef"));

    let resp = client()
        .post(&url)
        .header(TUS.0, TUS.1)
        .header("X-HTTP-Method-Override", "DELETE")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204, "override DELETE");
    assert_eq!(head(&url).status().as_u16(), 404);
}

// ---------------------------------------------------------------------------------------------
// GET

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
    let url = hdr(&resp, "location").unwrap();
    let resp = client().get(&url).send().unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("0"));
}

#[test]
fn empty_upload_metadata_header_is_accepted() {
    // tuspy sends "Upload-Metadata: " when there is no metadata.
    let server = Server::start(&[]);
    for value in ["", " "] {
        let resp = send(
            server.addr,
            "POST",
            "/files/",
            &[TUS, ("Upload-Length", "3"), ("Upload-Metadata", value)],
            b"",
        );
        assert_eq!(status_of(&resp), 201, "Upload-Metadata {value:?}: {resp}");
        let url = header_of(&resp, "Location").unwrap();
        let h = head(&url);
        assert_eq!(h.status().as_u16(), 200);
        assert_eq!(hdr(&h, "upload-metadata"), None);
    }
}

// ---------------------------------------------------------------------------------------------
// Other routes

#[test]
fn healthz_answers_200() {
    let server = Server::start(&[]);
    let resp = send(server.addr, "GET", "/healthz", &[], b"");
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(body_of(&resp), "ok\n");
    let resp = send(server.addr, "HEAD", "/healthz", &[], b"");
    assert_eq!(status_of(&resp), 200, "{resp}");
    let resp = send(server.addr, "POST", "/healthz", &[], b"");
    assert_eq!(status_of(&resp), 405, "{resp}");
    assert_eq!(header_of(&resp, "Allow").as_deref(), Some("GET, HEAD"));
}

#[test]
fn other_methods_are_405_with_allow() {
    let server = Server::start(&[]);
    let url = create(&server, 3, None);
    let path = path_of(&url);
    let cases = [
        ("GET", "/files/", "OPTIONS, POST"),
        ("PUT", "/files/", "OPTIONS, POST"),
        ("DELETE", "/files", "OPTIONS, POST"),
        ("PATCH", "/files/", "OPTIONS, POST"),
        ("PUT", path.as_str(), "OPTIONS, HEAD, GET, PATCH, DELETE"),
        ("POST", path.as_str(), "OPTIONS, HEAD, GET, PATCH, DELETE"),
        ("TRACE", path.as_str(), "OPTIONS, HEAD, GET, PATCH, DELETE"),
    ];
    for (method, p, allow) in cases {
        let resp = send(server.addr, method, p, &[TUS], b"");
        assert_eq!(status_of(&resp), 405, "{method} {p}: {resp}");
        assert_eq!(
            header_of(&resp, "Allow").as_deref(),
            Some(allow),
            "{method} {p}"
        );
    }
    assert_eq!(head_offset(&url), Some(0));
}

// ---------------------------------------------------------------------------------------------
// URLs: base path, public URL, Host, proxies

#[test]
fn base_path_prefixes_every_route() {
    let server = Server::start(&["--base-path", "/api/v1/"]);
    let base = format!("http://{}/api/v1/files/", server.addr);
    assert_eq!(server.files_url, base);
    let url = create(&server, 3, None);
    assert_upload_url(&url, &base);
    assert_eq!(patch(&url, 0, b"abc".to_vec()), (204, Some(3)));
    assert_eq!(get_sha256(&url), sha256(b"abc"));
    let id = url.rsplit('/').next().unwrap();

    assert_eq!(
        status_of(&send(server.addr, "GET", "/api/v1/healthz", &[], b"")),
        200
    );
    let resp = send(server.addr, "OPTIONS", "/api/v1/files/", &[], b"");
    assert_eq!(status_of(&resp), 204);
    // Without the prefix nothing is there.
    for (method, p) in [
        ("GET", "/healthz".to_string()),
        ("OPTIONS", "/files/".to_string()),
        ("POST", "/files/".to_string()),
        ("HEAD", format!("/files/{id}")),
        ("GET", format!("/files/{id}")),
        ("GET", format!("/api/files/{id}")),
        ("GET", format!("/api/v1x/files/{id}")),
    ] {
        let resp = send(server.addr, method, &p, &[TUS, ("Upload-Length", "3")], b"");
        assert_eq!(status_of(&resp), 404, "{method} {p}: {resp}");
    }
}

#[test]
fn public_url_is_used_in_location() {
    for (public, base, expect) in [
        (
            "https://files.example.com",
            None,
            "https://files.example.com/files/",
        ),
        (
            "https://files.example.com/",
            None,
            "https://files.example.com/files/",
        ),
        ("http://[::1]:9999", None, "http://[::1]:9999/files/"),
        (
            "https://x.example:8443",
            Some("/up"),
            "https://x.example:8443/up/files/",
        ),
    ] {
        let mut args = vec!["--public-url", public];
        if let Some(b) = base {
            args.extend(["--base-path", b]);
        }
        let server = Server::start(&args);
        // The Host header and forwarded headers lose to --public-url.
        let path = format!("{}/files/", base.unwrap_or(""));
        let resp = send_with_host(
            server.addr,
            "other.example",
            "POST",
            &path,
            &[
                TUS,
                ("Upload-Length", "1"),
                ("X-Forwarded-Host", "proxy.example"),
            ],
        );
        assert_eq!(status_of(&resp), 201, "{public}: {resp}");
        let location = header_of(&resp, "Location").unwrap();
        assert_upload_url(&location, expect);
        // The URL works when mapped back to the real address.
        let id = location.rsplit('/').next().unwrap();
        assert_eq!(head_offset(&format!("{}{id}", server.files_url)), Some(0));
    }
}

#[test]
fn location_follows_the_host_header() {
    let server = Server::start(&[]);
    for host in ["uploads.example:8443", "uploads.example", "[::1]:1234"] {
        let resp = send_with_host(
            server.addr,
            host,
            "POST",
            "/files/",
            &[TUS, ("Upload-Length", "1")],
        );
        assert_eq!(status_of(&resp), 201, "Host {host}: {resp}");
        let location = header_of(&resp, "Location").unwrap();
        assert_upload_url(&location, &format!("http://{host}/files/"));
    }
}

#[test]
fn forwarded_headers_count_only_with_trust_proxy() {
    let xfwd: &[(&str, &str)] = &[
        TUS,
        ("Upload-Length", "1"),
        ("X-Forwarded-Host", "proxy.example"),
        ("X-Forwarded-Proto", "https"),
    ];
    let fwd: &[(&str, &str)] = &[
        TUS,
        ("Upload-Length", "1"),
        (
            "Forwarded",
            "for=192.0.2.1;proto=https;host=\"fwd.example:8443\"",
        ),
        ("X-Forwarded-Host", "ignored.example"),
    ];
    let untrusting = Server::start(&[]);
    for (what, headers) in [("X-Forwarded", xfwd), ("Forwarded", fwd)] {
        let resp = send_with_host(
            untrusting.addr,
            "direct.example",
            "POST",
            "/files/",
            headers,
        );
        assert_eq!(status_of(&resp), 201, "{what}: {resp}");
        assert_upload_url(
            &header_of(&resp, "Location").unwrap(),
            "http://direct.example/files/",
        );
    }
    let trusting = Server::start(&["--trust-proxy"]);
    for (what, headers, expect) in [
        ("X-Forwarded", xfwd, "https://proxy.example/files/"),
        ("Forwarded", fwd, "https://fwd.example:8443/files/"),
    ] {
        let resp = send_with_host(trusting.addr, "direct.example", "POST", "/files/", headers);
        assert_eq!(status_of(&resp), 201, "{what}: {resp}");
        assert_upload_url(&header_of(&resp, "Location").unwrap(), expect);
    }
    // Only the proto forwarded: the Host header supplies the host.
    let resp = send_with_host(
        trusting.addr,
        "direct.example",
        "POST",
        "/files/",
        &[TUS, ("Upload-Length", "1"), ("X-Forwarded-Proto", "https")],
    );
    assert_upload_url(
        &header_of(&resp, "Location").unwrap(),
        "https://direct.example/files/",
    );
}

// ---------------------------------------------------------------------------------------------
// Bodies that break or arrive chunked

#[test]
fn a_cut_off_body_keeps_the_bytes_that_arrived() {
    let server = Server::start(&[]);
    let data = random_bytes(100_000, 6);
    let url = create(&server, data.len() as u64, None);
    let path = path_of(&url);
    {
        let mut s = TcpStream::connect(server.addr).unwrap();
        let head = format!(
            "PATCH {path} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\n\
             Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n\
             Content-Length: 100000\r\n\r\n",
            server.addr
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&data[..30_000]).unwrap();
        s.flush().unwrap();
        // Dropping the stream closes the connection mid-body.
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut offset = head_offset(&url);
    while offset != Some(30_000) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
        offset = head_offset(&url);
    }
    assert_eq!(offset, Some(30_000), "bytes that arrived are kept");
    assert_eq!(
        patch(&url, 30_000, data[30_000..].to_vec()),
        (204, Some(100_000))
    );
    assert_eq!(get_sha256(&url), sha256(&data));
}

#[test]
fn a_chunked_patch_works() {
    let server = Server::start(&[]);
    let data = random_bytes(50_000, 7);
    let url = create(&server, data.len() as u64, None);
    let path = path_of(&url);
    let mut req = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        server.addr
    )
    .into_bytes();
    for chunk in data[..40_000].chunks(7_000) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let resp = raw(server.addr, &req, LIMIT);
    assert_eq!(status_of(&resp), 204, "{resp}");
    assert_eq!(header_of(&resp, "Upload-Offset").as_deref(), Some("40000"));
    assert_eq!(head_offset(&url), Some(40_000));
    assert_eq!(
        patch(&url, 40_000, data[40_000..].to_vec()),
        (204, Some(50_000))
    );
    assert_eq!(get_sha256(&url), sha256(&data));
    assert_eq!(healthz(&server), 200);
}
