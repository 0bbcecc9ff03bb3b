//! The tus 1.0 client side: one function per request, each turning the answer into a value or
//! an [`AttemptError`] that says whether to retry. Headers are parsed with `ferry-proto`.

use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::retry::parse_retry_after;
use ferry_proto::checksum::{Checksum, ChecksumAlgorithm};
use ferry_proto::digest::parse_digest_field;
use ferry_proto::{Metadata, tus};
use reqwest::{Method, Response, StatusCode, Url};

/// What a tus server offers (from OPTIONS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerCaps {
    /// `Tus-Extension`, lowercased.
    pub extensions: Vec<String>,
    /// The fastest checksum algorithm both sides know.
    pub checksum: Option<ChecksumAlgorithm>,
    /// Every checksum algorithm the server lists (that ferry knows).
    pub algorithms: Vec<ChecksumAlgorithm>,
    /// `Tus-Max-Size` (else the IETF `Upload-Limit` `max-size`).
    pub max_size: Option<u64>,
    /// The server answered OPTIONS at all (the other fields are guesses otherwise).
    pub answered: bool,
    /// The answer shows tus (`Tus-Version` or `Tus-Resumable`).
    pub tus: bool,
    /// The answer shows the IETF resumable-upload draft (see [`crate::ietf::speaks_draft`]).
    pub ietf: bool,
}

impl ServerCaps {
    /// Whether an extension is offered.
    pub fn has(&self, ext: &str) -> bool {
        self.extensions.iter().any(|e| e == ext)
    }
}

/// An upload's state on the server (from HEAD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUpload {
    /// Committed offset.
    pub offset: u64,
    /// Length, if known.
    pub length: Option<u64>,
    /// Whether the server says the upload is complete (`None`: the protocol does not say, as
    /// with tus, where reaching the length completes it).
    pub complete: Option<bool>,
    /// Whole-upload digests from `Repr-Digest` (algorithm key, bytes), if the server sent any.
    pub digests: Digests,
}

/// Whole-upload digests a server sent in `Repr-Digest`: `(key, bytes)` pairs, keys lowercased
/// (`sha-256`, `blake3`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digests(pub Vec<(String, Vec<u8>)>);

impl Digests {
    pub(crate) fn from_response(resp: &Response) -> Digests {
        Digests(
            header(resp, "repr-digest")
                .and_then(|v| parse_digest_field(v).ok())
                .unwrap_or_default(),
        )
    }

    /// The digest for an RFC 9530 key, if present.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, d)| d.as_slice())
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

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

/// What a PATCH (or a creation with a body) achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The committed offset the server reports.
    pub offset: u64,
    /// Whole-upload digests, when the request completed the upload and asked for them.
    pub digests: Digests,
}

fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The first line of an error body, bounded, for messages.
async fn reason(resp: Response) -> String {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let line = text.lines().next().unwrap_or("").trim();
    let line: String = line.chars().take(200).collect();
    if line.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {line}")
    }
}

/// Classifies a non-success answer: retry (5xx, 408, 409, 423, 429, 460), resize (413), gone
/// (404, 410) or refused (other 4xx).
pub async fn classify(resp: Response, what: &str) -> AttemptError {
    let status = resp.status();
    let retry_after = header(&resp, "retry-after").and_then(parse_retry_after);
    match status.as_u16() {
        404 | 410 => AttemptError::Gone,
        408 | 409 | 423 | 429 | 460 | 500..=599 => AttemptError::Retry {
            why: format!("{what}: {}", reason(resp).await),
            retry_after,
        },
        _ => AttemptError::Fatal(ClientError::new(
            ErrorKind::Refused,
            format!("{what} refused by the server: {}", reason(resp).await),
        )),
    }
}

/// Network-level failures are always worth retrying.
pub fn network(what: &str, e: reqwest::Error) -> AttemptError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    AttemptError::retry(format!("{what}: {msg}"))
}

/// Resolves a `Location` against the request URL (relative locations are allowed).
pub fn resolve(base: &Url, location: &str) -> Result<Url, AttemptError> {
    base.join(location).map_err(|e| {
        AttemptError::Fatal(ClientError::new(
            ErrorKind::Refused,
            format!("server sent an unusable Location {location:?}: {e}"),
        ))
    })
}

/// OPTIONS: what the server supports.
pub async fn options(http: &reqwest::Client, endpoint: &Url) -> Result<ServerCaps, AttemptError> {
    let resp = http
        .request(Method::OPTIONS, endpoint.clone())
        .send()
        .await
        .map_err(|e| network("OPTIONS", e))?;
    if !resp.status().is_success() {
        return Err(classify(resp, "OPTIONS").await);
    }
    let extensions = header(&resp, tus::TUS_EXTENSION)
        .unwrap_or("")
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect::<Vec<_>>();
    let listed = header(&resp, tus::TUS_CHECKSUM_ALGORITHM)
        .filter(|_| extensions.iter().any(|e| e == "checksum"));
    let checksum = listed.and_then(ChecksumAlgorithm::best_of);
    let algorithms = listed
        .map(|l| {
            l.split(',')
                .filter_map(|n| ChecksumAlgorithm::from_name(n.trim()))
                .collect()
        })
        .unwrap_or_default();
    let max_size = header(&resp, tus::TUS_MAX_SIZE)
        .and_then(|v| tus::parse_number(tus::TUS_MAX_SIZE, v).ok())
        .or_else(|| crate::ietf::max_size(resp.headers()));
    Ok(ServerCaps {
        extensions,
        checksum,
        algorithms,
        max_size,
        answered: true,
        tus: resp.headers().contains_key(tus::TUS_VERSION_HEADER)
            || resp.headers().contains_key(tus::TUS_RESUMABLE),
        ietf: crate::ietf::speaks_draft(resp.headers()),
    })
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
    Ok(created_url(endpoint, resp, TUS_404).await?.0)
}

const TUS_404: &str = "is not a tus endpoint";

/// The URL of the upload a POST created (201 with `Location`), or why not; `not_here` ends the
/// message for a 404 ("is not a tus endpoint").
pub(crate) async fn created_url(
    endpoint: &Url,
    resp: Response,
    not_here: &str,
) -> Result<(Url, Response), AttemptError> {
    if resp.status() != StatusCode::CREATED {
        return Err(match classify(resp, "creating the upload").await {
            AttemptError::Gone => AttemptError::Fatal(ClientError::new(
                ErrorKind::Refused,
                format!("{endpoint} {not_here} (404)"),
            )),
            other => other,
        });
    }
    let location = header(&resp, "location").ok_or_else(|| {
        AttemptError::Fatal(ClientError::new(
            ErrorKind::Refused,
            "server created the upload but sent no Location",
        ))
    })?;
    Ok((resolve(endpoint, location)?, resp))
}

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
        digests: Digests::from_response(&resp),
    })
}

/// Overrides the client's per-request time limit for PATCH (about 136 years, i.e. none): a
/// body takes as long as the link needs, and stalls are the caller's to detect (no bytes
/// moving for the stall timeout), never the total time.
pub(crate) const PATCH_TIME_LIMIT: std::time::Duration =
    std::time::Duration::from_secs(u32::MAX as u64);

/// PATCH: appends `body` (`len` bytes) at `offset`; returns the new offset. The request has
/// no time limit: the caller must race it against a stall detector.
///
/// `probe` marks a body larger than any the server has accepted so far: it goes with
/// `Connection: close`, because a server may refuse it with an early 413 without reading it,
/// and some then leave the connection open but never answer on it again (rustus does), which
/// would hang the next request that the pool put on it.
#[allow(clippy::too_many_arguments)]
pub async fn patch(
    http: &reqwest::Client,
    url: &Url,
    offset: u64,
    len: u64,
    body: reqwest::Body,
    checksum: RequestChecksum<'_>,
    probe: bool,
    want_digest: Option<&str>,
) -> Result<Sent, AttemptError> {
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
        digests: Digests::from_response(resp),
    })
}

/// POST with the whole file as body (creation-with-upload), for small files: one request
/// instead of two. Returns the upload's URL and what the body achieved.
#[allow(clippy::too_many_arguments)]
pub async fn create_with_body(
    http: &reqwest::Client,
    endpoint: &Url,
    metadata: &Metadata,
    data: bytes::Bytes,
    checksum: Option<&Checksum>,
    want_digest: Option<&str>,
) -> Result<(Url, Sent), AttemptError> {
    let len = data.len() as u64;
    let mut req = http
        .post(endpoint.clone())
        .header(tus::TUS_RESUMABLE, tus::TUS_VERSION)
        .header(tus::UPLOAD_LENGTH, len)
        .header(reqwest::header::CONTENT_TYPE, tus::OFFSET_OCTET_STREAM)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(data);
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
    let (url, resp) = created_url(endpoint, resp, TUS_404).await?;
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

/// DELETE (termination). Missing uploads count as deleted.
pub async fn delete(http: &reqwest::Client, url: &Url) -> Result<(), AttemptError> {
    let resp = http
        .delete(url.clone())
        .header(tus::TUS_RESUMABLE, tus::TUS_VERSION)
        .send()
        .await
        .map_err(|e| network("DELETE", e))?;
    match resp.status().as_u16() {
        200..=299 | 404 | 410 => Ok(()),
        _ => Err(classify(resp, "DELETE").await),
    }
}
