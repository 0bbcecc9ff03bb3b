//! Content-Range chunk sessions (`{base}/chunks/`), client side: one function per request, like
//! [`crate::tus`]. A session takes chunks in any order and several at once, so the driver's
//! targets (the whole file, or a segment of it) are ranges of one session; [`Session::offset`]
//! turns the session's received ranges into a target's offset. Headers are parsed with
//! `ferry-proto`.

use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::http::PATCH_TIME_LIMIT;
use crate::response::{
    Digests, Sent, classify, creation_failed, digests_of, header, network, resolve,
};
use ferry_proto::Metadata;
use ferry_proto::range::{UPLOAD_RANGES, format_content_range, parse_upload_ranges};
use reqwest::{Response, StatusCode, Url};

/// A session's state as an answer reports it.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Received ranges, half-open, sorted and merged.
    pub received: Vec<(u64, u64)>,
    /// The session's length, once known.
    pub length: Option<u64>,
    /// `Upload-Complete`.
    pub complete: bool,
    /// `Repr-Digest`, once computed.
    pub digests: Digests,
}

impl Session {
    /// Bytes of `[base, base + len)` received in one run from `base`: the offset of a target.
    pub fn offset(&self, base: u64, len: u64) -> u64 {
        self.received
            .iter()
            .find(|&&(a, b)| a <= base && base < b)
            .map_or(0, |&(_, b)| b.min(base.saturating_add(len)) - base)
    }
}

fn bad_answer(what: &str, e: impl std::fmt::Display) -> AttemptError {
    AttemptError::Fatal(ClientError::new(
        ErrorKind::Refused,
        format!("{what}: the server sent {e}"),
    ))
}

/// The session state of a 200/201. No `Upload-Ranges` at all means the URL is not a chunk
/// session (e.g. a tus `/files/` URL given with `--protocol chunks`).
fn state_of(resp: &Response, what: &str) -> Result<Session, AttemptError> {
    let ranges = header(resp, UPLOAD_RANGES).ok_or_else(|| {
        AttemptError::Fatal(ClientError::new(
            ErrorKind::Refused,
            format!(
                "{what}: the answer has no Upload-Ranges, so this is not a Content-Range chunk \
                 session; --protocol chunks needs a {{base}}/chunks/ URL"
            ),
        ))
    })?;
    let received = parse_upload_ranges(ranges).map_err(|e| bad_answer(what, e))?;
    let length = header(resp, "upload-length")
        .map(|v| v.trim().parse::<u64>())
        .transpose()
        .map_err(|e| bad_answer(what, format!("a bad Upload-Length ({e})")))?;
    let complete = header(resp, "upload-complete").is_some_and(|v| v.trim() == "?1");
    Ok(Session {
        received,
        length,
        complete,
        digests: digests_of(resp),
    })
}

/// Creation (POST, no body) of a session of `length` bytes.
pub async fn create(
    http: &reqwest::Client,
    endpoint: &Url,
    length: u64,
    metadata: &Metadata,
) -> Result<Url, AttemptError> {
    let mut req = http
        .post(endpoint.clone())
        .header("upload-length", length)
        .header(reqwest::header::CONTENT_LENGTH, 0);
    if !metadata.is_empty() {
        req = req.header(ferry_proto::tus::UPLOAD_METADATA, metadata.format());
    }
    let resp = req.send().await.map_err(|e| network("POST", e))?;
    if resp.status() != StatusCode::CREATED {
        return Err(
            creation_failed(endpoint, resp, "does not accept chunk sessions", length).await,
        );
    }
    let location = header(&resp, "location").ok_or_else(|| {
        AttemptError::Fatal(ClientError::new(
            ErrorKind::Refused,
            "server created the session but sent no Location",
        ))
    })?;
    let url = resolve(endpoint, location)?;
    state_of(&resp, "POST")?;
    Ok(url)
}

/// HEAD: the session's received ranges, length, completeness and digests.
pub async fn head(http: &reqwest::Client, url: &Url) -> Result<Session, AttemptError> {
    let resp = http
        .head(url.clone())
        .send()
        .await
        .map_err(|e| network("HEAD", e))?;
    if !resp.status().is_success() {
        return Err(classify(resp, "HEAD").await);
    }
    state_of(&resp, "HEAD")
}

/// PUT of bytes `[start, start + len)` of a `total`-byte file: `Content-Range` with an
/// inclusive END, `Content-Length` explicit (a streamed body would otherwise go chunked).
/// No time limit: the caller races it against a stall detector.
pub async fn put(
    http: &reqwest::Client,
    url: &Url,
    start: u64,
    len: u64,
    total: u64,
    body: reqwest::Body,
    probe: bool,
) -> Result<Session, AttemptError> {
    if len == 0 {
        // An empty chunk has no inclusive range: ask for the state instead.
        return head(http, url).await;
    }
    let mut req = http
        .put(url.clone())
        .header(
            reqwest::header::CONTENT_RANGE,
            format_content_range(start, start + len - 1, total),
        )
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, len)
        .timeout(PATCH_TIME_LIMIT)
        .body(body);
    if probe {
        req = req.header(reqwest::header::CONNECTION, "close");
    }
    let resp = req.send().await.map_err(|e| network("PUT", e))?;
    match resp.status().as_u16() {
        200..=299 => state_of(&resp, "PUT"),
        413 => Err(AttemptError::TooLarge { size: len }),
        _ => Err(classify(resp, "PUT").await),
    }
}

/// What a PUT means for the driver: the target's new offset.
pub fn sent(s: Session, base: u64, len: u64) -> Sent {
    Sent {
        offset: s.offset(base, len),
        digests: s.digests,
    }
}

/// DELETE (best effort: ferry's sessions have no DELETE and expire instead, so 405 counts as
/// done, like a missing session).
pub async fn delete(http: &reqwest::Client, url: &Url) -> Result<(), AttemptError> {
    let resp = http
        .delete(url.clone())
        .send()
        .await
        .map_err(|e| network("DELETE", e))?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        404 | 410 => Err(AttemptError::Gone),
        _ => Err(classify(resp, "DELETE").await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_targets_offset_is_the_run_from_its_base() {
        let s = Session {
            received: vec![(0, 10), (20, 40)],
            ..Session::default()
        };
        assert_eq!(s.offset(0, 100), 10);
        assert_eq!(s.offset(0, 5), 5, "capped at the target's length");
        assert_eq!(s.offset(10, 10), 0, "a gap at the base");
        assert_eq!(s.offset(25, 10), 10);
        assert_eq!(s.offset(25, 100), 15);
        assert_eq!(s.offset(40, 10), 0, "ranges are half-open");
        assert_eq!(Session::default().offset(0, 1), 0);
    }
}
