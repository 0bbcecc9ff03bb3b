//! The HTTP clients ferry builds: HTTP/1.1 (one TCP connection per stream, never streams
//! multiplexed onto one flow), a connect timeout, no Nagle delay, ferry's User-Agent; and the
//! time limits that differ between uploads and downloads.

use crate::error::{ClientError, ErrorKind};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

/// What the user sets for every request of a run.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// A request with no progress for this long is abandoned (see the client functions).
    pub stall_timeout: Duration,
    /// Sent with every request (`-H`), e.g. a token. Values are marked sensitive: they never
    /// appear in debug output. reqwest drops `Authorization` and `Cookie` on a redirect to
    /// another host; other names follow redirects, as with curl.
    pub headers: HeaderMap,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            headers: HeaderMap::new(),
        }
    }
}

/// The HTTP client for uploads: `stall_timeout` is the limit on the small requests (OPTIONS,
/// HEAD, POST, DELETE: no body, a short answer). Requests with a body lift that limit
/// (`PATCH_TIME_LIMIT`): a body may take as long as it needs, and the driver abandons it
/// only when no bytes move for the stall timeout. (reqwest's `read_timeout` is not used: it
/// runs from the start of a request until the response headers, so it would cut off every
/// PATCH whose body takes longer to send.)
pub fn upload_client(o: &HttpOptions) -> Result<reqwest::Client, ClientError> {
    build_client(client_builder(o).timeout(o.stall_timeout))
}

/// The HTTP client for downloads.
///
/// Unlike the upload client it has no whole-request timeout: reqwest's `timeout` is a deadline
/// for the request *and its body*, so with it every ranged GET that streams for longer than
/// `--stall-timeout` (any large segment, or any segment under `--limit-rate`) would be cut and
/// retried although data kept flowing. Stalls are detected per request from the last byte
/// received; the read timeout, a little longer, is only a backstop.
pub fn download_client(o: &HttpOptions) -> Result<reqwest::Client, ClientError> {
    build_client(client_builder(o).read_timeout(o.stall_timeout.saturating_mul(2)))
}

/// Header names a user may not set: they frame the message, or carry the protocol state that
/// ferry itself sends per request.
const NOT_SETTABLE: [&str; 26] = [
    // ferry stores bytes as they arrive and resumes by its own validators: a coded body or a
    // condition of the user's would corrupt or stall a transfer.
    "accept-encoding",
    "content-encoding",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "x-http-method-override",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "tus-resumable",
    "content-range",
    "content-type",
    "content-digest",
    "range",
    "if-range",
    "repr-digest",
    "want-repr-digest",
    "upload-draft-interop-version",
];

/// A header as given on the command line (`Name: value`), checked: a token for a name, no
/// control characters in the value, and nothing ferry must set itself.
pub fn parse_header(line: &str) -> Result<(HeaderName, HeaderValue), String> {
    // Messages never repeat the value: it is often a secret.
    let Some((name, value)) = line.split_once(':') else {
        return Err("expected \"Name: value\"".into());
    };
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| "the part before the first ':' is not a header name".to_owned())?;
    if NOT_SETTABLE.contains(&name.as_str()) || name.as_str().starts_with("upload-") {
        return Err(format!("{name} is set by ferry itself"));
    }
    let mut value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of {name} has characters a header cannot carry"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// Overrides the client's per-request time limit for requests with a body (about 136 years,
/// i.e. none): a body takes as long as the link needs, and stalls are the caller's to detect
/// (no bytes moving for the stall timeout), never the total time.
pub(crate) const PATCH_TIME_LIMIT: Duration = Duration::from_secs(u32::MAX as u64);

/// What every ferry HTTP client has.
fn client_builder(o: &HttpOptions) -> reqwest::ClientBuilder {
    // The TLS stack needs a process-wide crypto provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .http1_only()
        .connect_timeout(o.connect_timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .default_headers(o.headers.clone())
}

/// Builds a client, mapping failure to a local error.
fn build_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, ClientError> {
    builder
        .build()
        .map_err(|e| ClientError::new(ErrorKind::Local, format!("cannot build HTTP client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines() {
        let (n, v) = parse_header("Authorization:  Bearer abc ").unwrap();
        assert_eq!(n.as_str(), "authorization");
        assert_eq!(v.to_str().unwrap(), "Bearer abc");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("abc"));
        let (_, v) = parse_header("X-Empty:").unwrap();
        assert!(v.is_empty());
        for bad in ["NoColon", ": value", "Bad Name: v", "X: a\u{7}b"] {
            assert!(parse_header(bad).is_err(), "{bad}");
        }
        let e = parse_header("Authorization Bearer s3cret").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        for ours in [
            "Host: h",
            "content-length: 1",
            "Upload-Offset: 0",
            "Tus-Resumable: 1",
            "Accept-Encoding: gzip",
            "If-None-Match: *",
        ] {
            let e = parse_header(ours).unwrap_err();
            assert!(e.contains("set by ferry itself"), "{ours}: {e}");
        }
    }
}
