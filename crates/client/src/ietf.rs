//! The IETF "Resumable Uploads for HTTP" draft, client side (interop version 8, drafts -09 to
//! -11): one function per request, like [`crate::tus`], each turning the answer into a value or
//! an [`AttemptError`] that says whether to retry. Headers are parsed with `ferry-proto`.
//!
//! The draft has no per-request checksum of its own: `Content-Digest` (RFC 9530) can carry one,
//! but it must precede the body, so it costs a first read of the chunk; the driver sends it only
//! when asked for (`--checksum sha256|sha512`).

use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::http::PATCH_TIME_LIMIT;
use crate::response::{RemoteUpload, Sent, classify, created_url, digests_of, header, network};
use ferry_proto::Metadata;
use ferry_proto::ietf::{self, Draft};
use reqwest::{Method, RequestBuilder, Response, Url};

/// The interop version ferry's client speaks.
pub const INTEROP_VERSION: u32 = ietf::CURRENT_INTEROP_VERSION;

fn draft() -> Draft {
    // The constant is in the table; the fallback only keeps this total.
    Draft::of(INTEROP_VERSION).unwrap_or(Draft {
        interop: INTEROP_VERSION,
        drafts: "-09 to -11",
        completeness: ietf::Completeness::Complete,
        partial_upload_type: true,
        limit_age_key: Some("max-age"),
        offset_problems: true,
        length_problem: true,
        append_after_complete_is_length: true,
    })
}

/// Whether an OPTIONS answer shows the draft: `Accept-Patch` listing
/// `application/partial-upload`, an `Upload-Limit`, or an `Upload-Draft-Interop-Version`.
pub fn speaks_draft(headers: &reqwest::header::HeaderMap) -> bool {
    let accept_patch = headers
        .get_all("accept-patch")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(ietf::PARTIAL_UPLOAD))
        });
    accept_patch
        || headers.contains_key(ietf::UPLOAD_LIMIT)
        || headers.contains_key(ietf::UPLOAD_DRAFT_INTEROP_VERSION)
}

/// The `max-size` of an `Upload-Limit` header, if any.
pub fn max_size(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get(ietf::UPLOAD_LIMIT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ietf::UploadLimit::parse(v).ok())
        .and_then(|l| l.max_size)
}

fn with_version(req: RequestBuilder) -> RequestBuilder {
    req.header(ietf::UPLOAD_DRAFT_INTEROP_VERSION, INTEROP_VERSION)
}

fn bad_answer(what: &str, e: impl std::fmt::Display) -> AttemptError {
    AttemptError::Fatal(ClientError::new(
        ErrorKind::Refused,
        format!("{what}: the server sent {e}"),
    ))
}

/// The upload state an answer reports (each field only if sent).
struct Reported {
    offset: Option<u64>,
    complete: Option<bool>,
    length: Option<u64>,
}

/// `Upload-Offset`, the completeness state and `Upload-Length` of an answer.
fn state_of(resp: &Response, what: &str) -> Result<Reported, AttemptError> {
    let d = draft();
    let offset = header(resp, ietf::UPLOAD_OFFSET)
        .map(|v| ietf::parse_size(ietf::UPLOAD_OFFSET, v))
        .transpose()
        .map_err(|e| bad_answer(what, e))?;
    let complete = header(resp, d.completeness_header())
        .map(|v| d.parse_complete(v))
        .transpose()
        .map_err(|e| bad_answer(what, e))?;
    let length = header(resp, ietf::UPLOAD_LENGTH)
        .map(|v| ietf::parse_size(ietf::UPLOAD_LENGTH, v))
        .transpose()
        .map_err(|e| bad_answer(what, e))?;
    Ok(Reported {
        offset,
        complete,
        length,
    })
}

/// Creation (POST) of an upload of `length` bytes carrying `body` (`body_len` bytes, possibly
/// none). `complete` says the body is the whole file. Returns the upload's URL and what the
/// server took of the body.
pub async fn create(
    http: &reqwest::Client,
    endpoint: &Url,
    length: u64,
    metadata: &Metadata,
    body: Option<(reqwest::Body, u64)>,
    content_digest: Option<&str>,
    want_digest: Option<&str>,
) -> Result<(Url, Sent), AttemptError> {
    let d = draft();
    let body_len = body.as_ref().map_or(0, |(_, l)| *l);
    let complete = body_len == length;
    let mut req = with_version(http.post(endpoint.clone()))
        .header(d.completeness_header(), d.format_complete(complete))
        .header(ietf::UPLOAD_LENGTH, length)
        // Explicit, or a streamed body would go chunked.
        .header(reqwest::header::CONTENT_LENGTH, body_len);
    if let Some((b, _)) = body {
        // A body may be paced: the caller watches for stalls instead of a whole deadline.
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(b)
            .timeout(PATCH_TIME_LIMIT);
    }
    // Not part of the draft, but harmless and kept by ferry (and tus-js-client sends it).
    if !metadata.is_empty() {
        req = req.header(ferry_proto::tus::UPLOAD_METADATA, metadata.format());
    }
    if let Some(c) = content_digest.filter(|_| body_len > 0) {
        req = req.header("content-digest", c);
    }
    if let Some(w) = want_digest.filter(|_| complete) {
        req = req.header("want-repr-digest", w);
    }
    let resp = req.send().await.map_err(|e| network("POST", e))?;
    let (url, resp) =
        created_url(endpoint, resp, "does not accept IETF draft uploads", length).await?;
    let offset = state_of(&resp, "POST")?.offset;
    Ok((
        url,
        Sent {
            // No offset: assume nothing was taken; the next HEAD says the truth.
            offset: offset.unwrap_or(0),
            digests: digests_of(&resp),
        },
    ))
}

/// HEAD: the committed offset, whether the upload is complete, its length, and digests (when
/// `want_digest` holds a `Want-Repr-Digest`).
pub async fn head(
    http: &reqwest::Client,
    url: &Url,
    want_digest: Option<&str>,
) -> Result<RemoteUpload, AttemptError> {
    let mut req = with_version(http.head(url.clone()));
    if let Some(w) = want_digest {
        req = req.header("want-repr-digest", w);
    }
    let resp = req.send().await.map_err(|e| network("HEAD", e))?;
    if !resp.status().is_success() {
        return Err(classify(resp, "HEAD").await);
    }
    let Reported {
        offset,
        complete,
        length,
    } = state_of(&resp, "HEAD")?;
    let offset = offset.ok_or_else(|| bad_answer("HEAD", "no Upload-Offset"))?;
    Ok(RemoteUpload {
        offset,
        length,
        complete,
        digests: digests_of(&resp),
    })
}

/// An append: `body` (`len` bytes) at `offset` of the upload at `url`.
#[derive(Debug)]
pub struct Append<'a> {
    /// The upload.
    pub url: &'a Url,
    /// Where the body goes.
    pub offset: u64,
    /// The body's length.
    pub len: u64,
    /// The bytes.
    pub body: reqwest::Body,
    /// The request ends the upload (`Upload-Complete: ?1`).
    pub last: bool,
    /// A ready `Content-Digest` value.
    pub content_digest: Option<&'a str>,
    /// A body larger than any the server has accepted so far: sent with `Connection: close`
    /// (a server may refuse it early without reading it).
    pub probe: bool,
    /// `Want-Repr-Digest`, for the request that may complete the upload.
    pub want_digest: Option<&'a str>,
}

/// PATCH (append), with `Upload-Complete: ?1` when `last`. No time limit: the caller races it
/// against a stall detector.
pub async fn append(http: &reqwest::Client, a: Append<'_>) -> Result<Sent, AttemptError> {
    let Append {
        url,
        offset,
        len,
        body,
        last,
        content_digest,
        probe,
        want_digest,
    } = a;
    let d = draft();
    let mut req = with_version(http.request(Method::PATCH, url.clone()))
        .header(ietf::UPLOAD_OFFSET, offset)
        .header(d.completeness_header(), d.format_complete(last))
        .header(reqwest::header::CONTENT_TYPE, ietf::PARTIAL_UPLOAD)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .timeout(PATCH_TIME_LIMIT)
        .body(body);
    if let Some(c) = content_digest {
        req = req.header("content-digest", c);
    }
    if probe {
        req = req.header(reqwest::header::CONNECTION, "close");
    }
    if let Some(w) = want_digest {
        req = req.header("want-repr-digest", w);
    }
    let resp = req.send().await.map_err(|e| network("PATCH", e))?;
    match resp.status().as_u16() {
        200..=299 => {
            let offset = state_of(&resp, "PATCH")?
                .offset
                .ok_or_else(|| AttemptError::retry("PATCH answered without Upload-Offset"))?;
            Ok(Sent {
                offset,
                digests: digests_of(&resp),
            })
        }
        413 => Err(AttemptError::TooLarge { size: len }),
        // 409: the offsets disagree (a request the server saw but whose answer was lost, or
        // another writer). Retrying means a HEAD and sending from the server's offset.
        _ => Err(classify(resp, "PATCH").await),
    }
}

/// DELETE (cancellation). Missing uploads count as deleted.
pub async fn delete(http: &reqwest::Client, url: &Url) -> Result<(), AttemptError> {
    let resp = with_version(http.delete(url.clone()))
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
    use reqwest::header::{HeaderMap, HeaderValue};

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn recognises_the_draft_in_options() {
        assert!(speaks_draft(&map(&[(
            "accept-patch",
            "application/json, application/partial-upload"
        )])));
        assert!(speaks_draft(&map(&[("upload-limit", "max-size=100")])));
        assert!(speaks_draft(&map(&[("upload-draft-interop-version", "8")])));
        assert!(!speaks_draft(&map(&[("accept-patch", "application/json")])));
        assert!(!speaks_draft(&map(&[("allow", "GET, PATCH")])));
        assert_eq!(
            max_size(&map(&[("upload-limit", "max-size=100, max-age=60")])),
            Some(100)
        );
        assert_eq!(max_size(&map(&[("upload-limit", "max-size=x")])), None);
    }

    #[test]
    fn speaks_interop_8() {
        assert_eq!(INTEROP_VERSION, 8);
        assert_eq!(draft().completeness_header(), "upload-complete");
    }
}
