//! What servers answer, whatever the protocol: the server's capabilities, an upload's state,
//! what a request achieved, and how a failed answer is classified (retry, resize, gone,
//! refused). Every protocol module and the download engine build on this; it builds on none of
//! them.

use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::retry::parse_retry_after;
use ferry_proto::checksum::ChecksumAlgorithm;
use reqwest::{Response, StatusCode, Url};

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
    /// The answer shows the IETF resumable-upload draft (`Accept-Patch` listing
    /// `application/partial-upload`, an `Upload-Limit`, or an interop version).
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
    /// Whole-upload digests from `Repr-Digest`, if the server sent any.
    pub digests: Digests,
}

pub use ferry_proto::digest::Digests;

/// The whole-upload digests a server sent in `Repr-Digest` that ferry knows (empty if none).
pub(crate) fn digests_of(resp: &Response) -> Digests {
    header(resp, "repr-digest")
        .and_then(|v| Digests::from_field(v).ok())
        .unwrap_or_default()
}

/// What a PATCH (or a creation with a body) achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The committed offset the server reports.
    pub offset: u64,
    /// Whole-upload digests, when the request completed the upload and asked for them.
    pub digests: Digests,
}

pub(crate) fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
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
