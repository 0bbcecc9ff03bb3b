//! The tus 1.0 client side: one function per request, each turning the answer into a value or
//! an [`AttemptError`] that says whether to retry. Headers are parsed with `ferry-proto`.

use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::http::PATCH_TIME_LIMIT;
use crate::response::{created_url, digests_of, header};
use ferry_proto::checksum::Checksum;
use ferry_proto::{Metadata, tus};
use reqwest::{Response, Url};

// Shared by every protocol, and reachable here too.
pub use crate::discovery::options;
pub use crate::response::{Digests, RemoteUpload, Sent, ServerCaps, classify, network, resolve};

/// How a request's bytes are checksummed (tus checksum extension).
#[derive(Debug, Clone, Copy)]
pub enum RequestChecksum<'a> {
    /// Not at all.
    None,
    /// `Upload-Checksum` header (computed before the body).
    Header(&'a Checksum),
    /// `Upload-Checksum` trailer (computed while the body goes out; chunked encoding).
    Trailer,
}

/// POST: creates an upload of `length` bytes; returns its URL.
pub async fn create(
    http: &reqwest::Client,
    endpoint: &Url,
    length: u64,
    metadata: &Metadata,
    concat: Option<&str>,
) -> Result<Url, AttemptError> {
    let mut req = http
        .post(endpoint.clone())
        .header(tus::TUS_RESUMABLE, tus::TUS_VERSION)
        .header(reqwest::header::CONTENT_LENGTH, 0);
    if concat.is_none_or(|c| c == "partial") {
        req = req.header(tus::UPLOAD_LENGTH, length);
    }
    if !metadata.is_empty() {
        req = req.header(tus::UPLOAD_METADATA, metadata.format());
    }
    if let Some(c) = concat {
        req = req.header(tus::UPLOAD_CONCAT, c);
    }
    let resp = req.send().await.map_err(|e| network("POST", e))?;
    Ok(created_url(endpoint, resp, TUS_404, length).await?.0)
}

const TUS_404: &str = "is not a tus endpoint";

/// HEAD: the committed offset (and digests, when `want_digest` holds a `Want-Repr-Digest`).
pub async fn head(
    http: &reqwest::Client,
    url: &Url,
    want_digest: Option<&str>,
) -> Result<RemoteUpload, AttemptError> {
    let mut req = http
        .head(url.clone())
        .header(tus::TUS_RESUMABLE, tus::TUS_VERSION);
    if let Some(w) = want_digest {
        req = req.header("want-repr-digest", w);
    }
    let resp = req.send().await.map_err(|e| network("HEAD", e))?;
    if !resp.status().is_success() {
        return Err(classify(resp, "HEAD").await);
    }
    let num = |name: &'static str| {
        header(&resp, name)
            .map(|v| tus::parse_number(name, v))
            .transpose()
            .map_err(|e| {
                AttemptError::Fatal(ClientError::new(
                    ErrorKind::Refused,
                    format!("server sent {e}"),
                ))
            })
    };
    let offset = num(tus::UPLOAD_OFFSET)?.unwrap_or(0);
    let length = num(tus::UPLOAD_LENGTH)?;
    Ok(RemoteUpload {
        offset,
        length,
        complete: None,
        digests: digests_of(&resp),
    })
}

/// A PATCH: `body` (`len` bytes) appended at `offset` of the upload at `url`.
#[derive(Debug)]
pub struct Patch<'a> {
    /// The upload.
    pub url: &'a Url,
    /// Where the body goes.
    pub offset: u64,
    /// The body's length.
    pub len: u64,
    /// The bytes.
    pub body: reqwest::Body,
    /// How the body is checksummed.
    pub checksum: RequestChecksum<'a>,
    /// A body larger than any the server has accepted so far: see [`patch`].
    pub probe: bool,
    /// `Want-Repr-Digest`, for the request that may complete the upload.
    pub want_digest: Option<&'a str>,
}

/// PATCH: appends the request's body; returns the new offset. The request has no time limit:
/// the caller must race it against a stall detector.
///
/// `probe` marks a body larger than any the server has accepted so far: it goes with
/// `Connection: close`, because a server may refuse it with an early 413 without reading it,
/// and some then leave the connection open but never answer on it again (rustus does), which
/// would hang the next request that the pool put on it.
pub async fn patch(http: &reqwest::Client, p: Patch<'_>) -> Result<Sent, AttemptError> {
    let Patch {
        url,
        offset,
        len,
        body,
        checksum,
        probe,
        want_digest,
    } = p;
    let mut req = http
        .patch(url.clone())
        .header(tus::TUS_RESUMABLE, tus::TUS_VERSION)
        .header(tus::UPLOAD_OFFSET, offset)
        .header(reqwest::header::CONTENT_TYPE, tus::OFFSET_OCTET_STREAM)
        .timeout(PATCH_TIME_LIMIT)
        .body(body);
    req = match checksum {
        // Explicit, or the body would go chunked (some servers refuse chunked PATCH).
        RequestChecksum::None => req.header(reqwest::header::CONTENT_LENGTH, len),
        RequestChecksum::Header(c) => req
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(tus::UPLOAD_CHECKSUM, c.format()),
        // A trailer needs chunked encoding: no Content-Length (only servers that announce
        // checksum-trailer get this).
        RequestChecksum::Trailer => req.header(reqwest::header::TRAILER, tus::UPLOAD_CHECKSUM),
    };
    if probe {
        req = req.header(reqwest::header::CONNECTION, "close");
    }
    if let Some(w) = want_digest {
        req = req.header("want-repr-digest", w);
    }
    let resp = req.send().await.map_err(|e| network("PATCH", e))?;
    match resp.status().as_u16() {
        204 | 200 => sent(&resp, "PATCH"),
        413 => Err(AttemptError::TooLarge { size: len }),
        _ => Err(classify(resp, "PATCH").await),
    }
}

/// The offset (and digests) of a successful PATCH or creation with a body.
fn sent(resp: &Response, what: &str) -> Result<Sent, AttemptError> {
    let v = header(resp, tus::UPLOAD_OFFSET)
        .ok_or_else(|| AttemptError::retry(format!("{what} answered without Upload-Offset")))?;
    let offset = tus::parse_upload_offset(v)
        .map_err(|e| AttemptError::retry(format!("{what} answered with a bad offset: {e}")))?;
    Ok(Sent {
        offset,
        digests: digests_of(resp),
    })
}

/// A creation carrying the whole (small) file.
#[derive(Debug)]
pub struct CreateWithBody<'a> {
    /// Where uploads are created.
    pub endpoint: &'a Url,
    /// `Upload-Metadata`.
    pub metadata: &'a Metadata,
    /// The whole file.
    pub data: bytes::Bytes,
    /// The run's rate limit, if any: the body is paced, and the request has no deadline (the
    /// caller watches `Pace::activity` for stalls instead).
    pub pace: Option<Pace>,
    /// The body's checksum, if any.
    pub checksum: Option<&'a Checksum>,
    /// `Want-Repr-Digest`.
    pub want_digest: Option<&'a str>,
}

/// A paced body and the activity it reports.
#[derive(Debug, Clone)]
pub struct Pace {
    /// The run's rate limit.
    pub limiter: std::sync::Arc<crate::progress::RateLimiter>,
    /// Touched as each block leaves.
    pub activity: std::sync::Arc<crate::source::Activity>,
}

impl Pace {
    /// `data` as a body: paced when there is a pace, else all at once.
    pub(crate) fn body(pace: Option<Pace>, data: bytes::Bytes) -> reqwest::Body {
        match pace {
            Some(p) => {
                let activity = p.activity;
                crate::progress::paced_body(data, Some(p.limiter), move |n| activity.moved(n))
            }
            None => data.into(),
        }
    }
}

/// POST with the whole file as body (creation-with-upload), for small files: one request
/// instead of two. Returns the upload's URL and what the body achieved.
pub async fn create_with_body(
    http: &reqwest::Client,
    c: CreateWithBody<'_>,
) -> Result<(Url, Sent), AttemptError> {
    let CreateWithBody {
        endpoint,
        metadata,
        data,
        pace,
        checksum,
        want_digest,
    } = c;
    let len = data.len() as u64;
    let paced = pace.is_some();
    let mut req = http
        .post(endpoint.clone())
        .header(tus::TUS_RESUMABLE, tus::TUS_VERSION)
        .header(tus::UPLOAD_LENGTH, len)
        .header(reqwest::header::CONTENT_TYPE, tus::OFFSET_OCTET_STREAM)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(Pace::body(pace, data));
    if paced {
        req = req.timeout(PATCH_TIME_LIMIT);
    }
    if !metadata.is_empty() {
        req = req.header(tus::UPLOAD_METADATA, metadata.format());
    }
    if let Some(c) = checksum {
        req = req.header(tus::UPLOAD_CHECKSUM, c.format());
    }
    if let Some(w) = want_digest {
        req = req.header("want-repr-digest", w);
    }
    let resp = req.send().await.map_err(|e| network("POST", e))?;
    let (url, resp) = created_url(endpoint, resp, TUS_404, len).await?;
    // A server without creation-with-upload semantics may ignore the body: no offset means
    // nothing was taken.
    let done = if header(&resp, tus::UPLOAD_OFFSET).is_some() {
        sent(&resp, "POST")?
    } else {
        Sent {
            offset: 0,
            digests: Digests::default(),
        }
    };
    Ok((url, done))
}

/// DELETE (termination). An upload the server no longer has is [`AttemptError::Gone`].
pub async fn delete(http: &reqwest::Client, url: &Url) -> Result<(), AttemptError> {
    let resp = http
        .delete(url.clone())
        .header(tus::TUS_RESUMABLE, tus::TUS_VERSION)
        .send()
        .await
        .map_err(|e| network("DELETE", e))?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        404 | 410 => Err(AttemptError::Gone),
        _ => Err(classify(resp, "DELETE").await),
    }
}
