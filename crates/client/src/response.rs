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
    /// The answer shows a Content-Range chunk-session endpoint (ferry's `/chunks/`).
    pub chunks: bool,
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

/// The status and the first line of an error body, bounded, for messages. An HTML page (a web
/// server's error page, a proxy's) says nothing a person can use in one line: only the status.
async fn reason(resp: Response) -> String {
    let status = resp.status();
    let html = header(&resp, "content-type").is_some_and(|t| t.contains("html"));
    let text = resp.text().await.unwrap_or_default();
    let line = text.lines().next().unwrap_or("").trim();
    if html || line.starts_with('<') || line.is_empty() {
        return status.to_string();
    }
    let line: String = line.chars().take(200).collect();
    format!("{status}: {line}")
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
            answered: true,
        },
        code => AttemptError::Fatal(
            ClientError::new(
                ErrorKind::Refused,
                format!("{what} refused by the server: {}", reason(resp).await),
            )
            .with_status(code),
        ),
    }
}

/// How a request failed below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetFailure {
    /// Connection refused: nothing listens there.
    Refused,
    /// The name does not resolve.
    NoSuchHost,
    /// The TLS handshake failed (often: https:// to a plain HTTP server).
    Tls,
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// Anything else (a cut connection, a reset, a timeout while sending).
    Other,
}

/// What kind of failure `e` is, from its chain of causes, and the innermost cause's text
/// (the one line worth showing; the outer ones repeat the URL and the layers).
fn net_failure(e: &reqwest::Error) -> (NetFailure, String) {
    let mut kind = if e.is_connect() && e.is_timeout() {
        NetFailure::ConnectTimeout
    } else {
        NetFailure::Other
    };
    let mut innermost = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(s) = next {
        innermost = s.to_string();
        if innermost.starts_with("dns error") {
            kind = NetFailure::NoSuchHost;
        }
        if s.is::<rustls::Error>() {
            kind = NetFailure::Tls;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                kind = NetFailure::Refused;
            }
            // An io::Error's source() skips the error it wraps: step into it.
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        next = s.source();
    }
    (kind, innermost)
}

/// One line for a failure below HTTP, and whether it is [`AttemptError::Unreachable`] (final
/// before the transfer has begun) or retried.
pub(crate) fn describe_net_failure(
    what: &str,
    url: Option<&Url>,
    kind: NetFailure,
    innermost: &str,
) -> AttemptError {
    let host = url.and_then(Url::host_str).unwrap_or("the server");
    let at = match url.and_then(Url::port_or_known_default) {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    match kind {
        NetFailure::Refused => AttemptError::Unreachable(format!("nothing listens on {at}")),
        // EAI_AGAIN: the resolver could not answer now, which a wait may fix.
        NetFailure::NoSuchHost if innermost.contains("Temporary failure") => AttemptError::retry(
            format!("{what}: looking up {host} failed for now: {innermost}"),
        ),
        NetFailure::NoSuchHost => AttemptError::Unreachable(format!("no such host: {host}")),
        // A plain-HTTP answer to a TLS hello reads as a corrupt record.
        NetFailure::Tls
            if url.is_some_and(|u| u.scheme() == "https")
                && (innermost.contains("InvalidContentType") || innermost.contains("corrupt")) =>
        {
            AttemptError::Unreachable(format!(
                "the TLS handshake with {at} failed ({innermost}); if it serves plain HTTP, \
                 use an http:// URL"
            ))
        }
        NetFailure::Tls => {
            AttemptError::Unreachable(format!("the TLS handshake with {at} failed: {innermost}"))
        }
        NetFailure::ConnectTimeout => AttemptError::retry(format!(
            "{what}: no connection to {at} within the connect timeout"
        )),
        NetFailure::Other => AttemptError::retry(format!("{what} to {at}: {innermost}")),
    }
}

/// A request that failed below HTTP: unreachable (see [`AttemptError::Unreachable`]) or worth
/// retrying.
pub fn network(what: &str, e: reqwest::Error) -> AttemptError {
    let (kind, innermost) = net_failure(&e);
    describe_net_failure(what, e.url(), kind, &innermost)
}

/// Why a creation (POST) answered by `status` cannot succeed by trying again, if it cannot:
/// the URL is not an upload endpoint, or the upload does not fit.
pub(crate) fn creation_refusal(
    status: u16,
    endpoint: &Url,
    not_here: &str,
    length: u64,
) -> Option<ClientError> {
    let hint = if endpoint.path() == "/" {
        format!(
            "; ferry serves uploads at /files/ (try {})",
            endpoint
                .join("/files/")
                .map_or_else(|_| "/files/".into(), String::from)
        )
    } else {
        "; is the URL right (…/files/)?".to_owned()
    };
    let message = match status {
        404 => format!("{endpoint} answered 404: it {not_here}{hint}"),
        405 | 501 => {
            format!("{endpoint} answered {status}: it speaks neither tus nor the IETF draft{hint}")
        }
        507 => format!(
            "the server has no room for {}",
            crate::progress::human_bytes(length)
        ),
        _ => return None,
    };
    Some(ClientError::new(ErrorKind::Refused, message))
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

/// A creation (POST) that did not create: final where [`creation_refusal`] says so, else
/// classified as any answer.
pub(crate) async fn creation_failed(
    endpoint: &Url,
    resp: Response,
    not_here: &str,
    length: u64,
) -> AttemptError {
    match creation_refusal(resp.status().as_u16(), endpoint, not_here, length) {
        Some(e) => AttemptError::Fatal(e),
        None => classify(resp, "creating the upload").await,
    }
}

/// The URL of the upload a POST created (201 with `Location`), or why not; `not_here` ends the
/// message for a 404 ("is not a tus endpoint").
pub(crate) async fn created_url(
    endpoint: &Url,
    resp: Response,
    not_here: &str,
    length: u64,
) -> Result<(Url, Response), AttemptError> {
    if resp.status() != StatusCode::CREATED {
        return Err(creation_failed(endpoint, resp, not_here, length).await);
    }
    let location = header(&resp, "location").ok_or_else(|| {
        AttemptError::Fatal(ClientError::new(
            ErrorKind::Refused,
            "server created the upload but sent no Location",
        ))
    })?;
    Ok((resolve(endpoint, location)?, resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(kind: NetFailure, url: &str, inner: &str) -> (bool, String) {
        let url = Url::parse(url).unwrap();
        match describe_net_failure("GET", Some(&url), kind, inner) {
            AttemptError::Unreachable(why) => (true, why),
            e => (false, e.message()),
        }
    }

    #[test]
    fn failures_below_http_in_one_line_and_final_only_where_no_wait_helps() {
        let u = "http://127.0.0.1:1081/files/";
        assert_eq!(
            said(NetFailure::Refused, u, "Connection refused (os error 111)"),
            (true, "nothing listens on 127.0.0.1:1081".into())
        );
        let h = "https://h.example/files/";
        assert_eq!(
            said(
                NetFailure::NoSuchHost,
                h,
                "dns error: Name or service not known"
            ),
            (true, "no such host: h.example".into())
        );
        let (fin, why) = said(
            NetFailure::NoSuchHost,
            h,
            "dns error: Temporary failure in name resolution",
        );
        assert!(!fin, "{why}");
        let (fin, why) = said(
            NetFailure::Tls,
            h,
            "received corrupt message of type InvalidContentType",
        );
        assert!(fin && why.contains("use an http:// URL"), "{why}");
        let (fin, why) = said(
            NetFailure::Tls,
            h,
            "invalid peer certificate: UnknownIssuer",
        );
        assert!(
            fin && !why.contains("http://") && why.contains("UnknownIssuer"),
            "{why}"
        );
        let (fin, why) = said(NetFailure::ConnectTimeout, h, "timed out");
        assert!(!fin && why.contains("h.example:443"), "{why}");
        let (fin, why) = said(NetFailure::Other, h, "connection reset by peer");
        assert!(
            !fin && why == "GET to h.example:443: connection reset by peer",
            "{why}"
        );
    }

    #[test]
    fn creations_that_cannot_succeed_name_the_fix() {
        let root = Url::parse("http://h:1080/").unwrap();
        let e = creation_refusal(501, &root, "is not a tus endpoint", 0).unwrap();
        assert!(
            e.message.contains("try http://h:1080/files/"),
            "{}",
            e.message
        );
        let files = Url::parse("http://h:1080/files/").unwrap();
        let e = creation_refusal(404, &files, "is not a tus endpoint", 0).unwrap();
        assert!(e.message.contains("is the URL right"), "{}", e.message);
        let e = creation_refusal(507, &files, "", 3_328_599_654).unwrap();
        assert_eq!(e.message, "the server has no room for 3.1 GiB");
        for retried in [500, 503, 409, 423] {
            assert!(
                creation_refusal(retried, &files, "", 1).is_none(),
                "{retried}"
            );
        }
    }
}
