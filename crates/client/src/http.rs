//! The HTTP clients ferry builds: HTTP/1.1 (one TCP connection per stream, never streams
//! multiplexed onto one flow), a connect timeout, no Nagle delay, ferry's User-Agent; and the
//! time limits that differ between uploads and downloads.

use crate::error::{ClientError, ErrorKind};
use std::time::Duration;

/// The HTTP client for uploads: `stall_timeout` is the limit on the small requests (OPTIONS,
/// HEAD, POST, DELETE: no body, a short answer). Requests with a body lift that limit
/// (`PATCH_TIME_LIMIT`): a body may take as long as it needs, and the driver abandons it
/// only when no bytes move for the stall timeout. (reqwest's `read_timeout` is not used: it
/// runs from the start of a request until the response headers, so it would cut off every
/// PATCH whose body takes longer to send.)
pub fn upload_client(
    connect_timeout: Duration,
    stall_timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    build_client(client_builder(connect_timeout).timeout(stall_timeout))
}

/// The HTTP client for downloads.
///
/// Unlike the upload client it has no whole-request timeout: reqwest's `timeout` is a deadline
/// for the request *and its body*, so with it every ranged GET that streams for longer than
/// `--stall-timeout` (any large segment, or any segment under `--limit-rate`) would be cut and
/// retried although data kept flowing. Stalls are detected per request from the last byte
/// received; the read timeout, a little longer, is only a backstop.
pub fn download_client(
    connect_timeout: Duration,
    stall_timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    build_client(client_builder(connect_timeout).read_timeout(stall_timeout.saturating_mul(2)))
}

/// Overrides the client's per-request time limit for requests with a body (about 136 years,
/// i.e. none): a body takes as long as the link needs, and stalls are the caller's to detect
/// (no bytes moving for the stall timeout), never the total time.
pub(crate) const PATCH_TIME_LIMIT: Duration = Duration::from_secs(u32::MAX as u64);

/// What every ferry HTTP client has.
fn client_builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    // The TLS stack needs a process-wide crypto provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .http1_only()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
}

/// Builds a client, mapping failure to a local error.
fn build_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, ClientError> {
    builder
        .build()
        .map_err(|e| ClientError::new(ErrorKind::Local, format!("cannot build HTTP client: {e}")))
}
