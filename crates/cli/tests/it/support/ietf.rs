//! IETF draft helpers: raw creation, HEAD and append for an interop version, problem details.

use crate::support::*;
use std::net::SocketAddr;

pub const PARTIAL: (&str, &str) = ("Content-Type", "application/partial-upload");
pub const MIB: usize = 1 << 20;

pub fn v(n: &str) -> (&'static str, &str) {
    ("Upload-Draft-Interop-Version", n)
}

/// The path part of an absolute URL.
pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    format!("/{}", rest.split_once('/').map_or("", |(_, p)| p))
}

/// Creates an upload (interop `ver`) with `extra` headers and `body`; returns (response, path).
pub fn create(
    addr: SocketAddr,
    ver: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (String, String) {
    let mut hs = vec![v(ver)];
    hs.extend_from_slice(extra);
    let resp = send(addr, "POST", "/files/", &hs, body);
    assert_eq!(status_of(&resp), 201, "creation: {resp}");
    let loc = header_of(&resp, "location").expect("Location");
    (resp, path_of(&loc))
}

pub fn head(addr: SocketAddr, ver: &str, path: &str) -> String {
    send(addr, "HEAD", path, &[v(ver)], b"")
}

pub fn head_offset_of(addr: SocketAddr, ver: &str, path: &str) -> u64 {
    let r = head(addr, ver, path);
    assert_eq!(status_of(&r), 204, "HEAD: {r}");
    header_of(&r, "upload-offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("no Upload-Offset: {r}"))
}

/// A v8 append.
pub fn append(addr: SocketAddr, path: &str, offset: u64, complete: bool, body: &[u8]) -> String {
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

pub fn get_body_sha(addr: SocketAddr, path: &str) -> String {
    get_sha256(&format!("http://{addr}{path}"))
}

pub fn assert_problem(resp: &str, status: u16, kind: &str) {
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
