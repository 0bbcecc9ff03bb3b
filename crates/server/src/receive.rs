//! Streams a request body into an upload: the hot path shared by every protocol that appends.
//!
//! The body is polled frame by frame (not as a data-only stream) so trailers stay visible. Every
//! way the body can end commits what arrived, except a body that overruns the upload's length,
//! which is discarded whole.

use crate::AppState;
use crate::headers::want_digest;
use axum::body::Body;
use axum::http::Request;
use ferry_proto::checksum::{Checksum, ChecksumAlgorithm, Hasher};
use ferry_proto::digest::WantDigest;
use ferry_proto::{ProtoError, tus};
use ferry_store::{Lease, StoreError, UploadInfo};
use http_body_util::BodyExt;

/// How the bytes of one request are to be verified.
#[derive(Debug, Default)]
pub enum Verify {
    /// No checksum: every byte that arrives counts.
    #[default]
    None,
    /// `Upload-Checksum` sent as a header.
    Header(Checksum),
    /// `Trailer: Upload-Checksum` announced: the checksum arrives after the body.
    Trailer,
}

/// Why a lease's holder was told to let go.
fn let_go(lease: &ferry_store::lock::Lease) -> Ending {
    match lease.is_lost() {
        true => Ending::LeaseLost,
        false => Ending::TakenOver,
    }
}

/// Why the body loop stopped.
#[derive(Debug)]
pub enum Ending {
    /// The whole body arrived.
    Complete,
    /// The connection broke or the body was malformed; what arrived was kept.
    ClientGone(String),
    /// A newer request asked for this upload.
    TakenOver,
    /// This server could not keep its lease on the upload (the shared database did not renew
    /// it in time).
    LeaseLost,
    /// The server is shutting down.
    Shutdown,
    /// No bytes arrived for the idle timeout.
    IdleTimeout,
    /// The server's buffer memory stayed spent for the idle timeout: nothing of the body was
    /// read.
    NoMemory,
    /// Fewer bytes arrived in a window than the minimum body rate asks for.
    TooSlow {
        /// The minimum, in bytes per second.
        min_rate: u64,
        /// The window it is averaged over.
        window: std::time::Duration,
    },
    /// The body went past the upload's length; nothing from it was kept.
    TooLong {
        /// The upload's length.
        length: u64,
    },
    /// The chunk's checksum did not match; nothing from it was kept.
    ChecksumMismatch,
    /// The whole body arrived, but the announced checksum trailer was missing or malformed;
    /// nothing from it was kept.
    ChecksumIncomplete(String),
}

/// Reads a request body's frames under its pace rules: the idle timeout (no bytes at all for
/// that long) and the minimum rate averaged over a window (bytes that trickle in just inside
/// the idle timeout would otherwise hold a connection, a lease and buffers for ever). Only
/// time spent waiting for the client counts: while the server itself holds the body back
/// (waiting for write buffers, a slow disk), the window stands still.
pub(crate) struct Pace {
    idle: std::time::Duration,
    min_rate: Option<(u64, std::time::Duration)>,
    /// Time spent waiting for the client in the current window.
    waited: std::time::Duration,
    window_bytes: u64,
}

impl Pace {
    /// The rules of `config`.
    pub(crate) fn new(config: &crate::ServerConfig) -> Self {
        Self {
            idle: config.body_idle_timeout,
            min_rate: config.min_body_rate.map(|r| (r, config.body_rate_window)),
            waited: std::time::Duration::ZERO,
            window_bytes: 0,
        }
    }

    /// The next frame, `Ok(None)` at the end of the body, or how the body failed its pace.
    pub(crate) async fn frame(
        &mut self,
        body: &mut Body,
    ) -> Result<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>, Ending> {
        let Some((min_rate, window)) = self.min_rate else {
            return tokio::time::timeout(self.idle, body.frame())
                .await
                .map_err(|_| Ending::IdleTimeout);
        };
        let idle_deadline = crate::conn::far(self.idle);
        loop {
            let entered = tokio::time::Instant::now();
            let window_end = entered
                .checked_add(window.saturating_sub(self.waited))
                .unwrap_or(idle_deadline);
            // One timer per frame: whichever of the two deadlines comes first.
            let frame = tokio::time::timeout_at(idle_deadline.min(window_end), body.frame()).await;
            let now = tokio::time::Instant::now();
            self.waited += now - entered;
            if let Ok(Some(Ok(f))) = &frame
                && let Some(data) = f.data_ref()
            {
                self.window_bytes += data.len() as u64;
            }
            if self.waited >= window {
                if !pace_kept(self.window_bytes, min_rate, window) {
                    return Err(Ending::TooSlow { min_rate, window });
                }
                self.waited = std::time::Duration::ZERO;
                self.window_bytes = 0;
            }
            match frame {
                Ok(f) => return Ok(f),
                Err(_) if now >= idle_deadline => return Err(Ending::IdleTimeout),
                // The window ended while waiting and was kept: wait on.
                Err(_) => {}
            }
        }
    }
}

/// Whether `bytes` received in `window` keep a minimum rate of `min_rate` bytes per second.
fn pace_kept(bytes: u64, min_rate: u64, window: std::time::Duration) -> bool {
    u128::from(bytes) * 1000 >= u128::from(min_rate) * window.as_millis()
}

/// Result of receiving a body.
pub struct Received {
    /// The request's `Want-Repr-Digest`, for the answer.
    pub want: Option<WantDigest>,
    /// How the body ended.
    pub ending: Ending,
    /// The committed record after the body (the offset to report).
    pub info: UploadInfo,
    /// A storage failure, if one stopped the body (the record shows what was still committed).
    pub error: Option<StoreError>,
    /// The request's bytes were all dropped (a checksummed chunk is all or nothing), so
    /// `ending` says why the body stopped but nothing of it counts.
    pub discarded: bool,
}

/// Receives the body of `req` into the upload held by `lease`, committing per the sync
/// policy. Runs in its own task so that a dropped connection cannot skip the final commit. The
/// request's `Want-Repr-Digest` comes back in [`Received::want`]; on the request that starts an
/// upload it also keeps the cryptographic digest asked for running (see
/// [`ferry_store::Append::keep_running`]).
pub async fn receive(
    state: std::sync::Arc<AppState>,
    lease: Lease,
    info: ferry_store::UploadInfo,
    req: Request<Body>,
    expected: Option<u64>,
    verify: Verify,
) -> Result<Received, StoreError> {
    let want = want_digest(req.headers());
    let read_buffer = crate::read_buffer_of(&req);
    let body = req.into_body();
    let task = tokio::spawn(async move {
        let result = receive_inner(
            &state,
            &lease,
            info,
            body,
            expected,
            verify,
            want,
            read_buffer,
        )
        .await;
        drop(lease);
        result
    });
    task.await
        .unwrap_or_else(|e| Err(StoreError::Io(std::io::Error::other(e.to_string()))))
}

#[allow(clippy::too_many_arguments)]
async fn receive_inner(
    state: &AppState,
    lease: &Lease,
    info: ferry_store::UploadInfo,
    mut body: Body,
    expected: Option<u64>,
    verify: Verify,
    want: Option<WantDigest>,
    read_buffer: usize,
) -> Result<Received, StoreError> {
    let mut append = state.uploads.append_to(lease, info, expected).await?;
    if let Some(w) = want {
        append.keep_running(w);
    }
    let mut pace = Pace::new(&state.config);
    // A chunk with a checksum is all or nothing: no checkpoint may commit part of it.
    let all_or_nothing = !matches!(verify, Verify::None);
    let checkpoint = if all_or_nothing {
        u64::MAX
    } else {
        state.config.checkpoint_bytes
    };
    let mut claimed = match &verify {
        Verify::Header(c) => Some(c.clone()),
        _ => None,
    };
    // With a trailer the algorithm is known only at the end, and the bytes are never read
    // back (a store need not keep uncommitted bytes readable): every algorithm a trailer may
    // name is hashed on the way. Those are the two CRCs, nearly free; the others go in a
    // header (docs/protocol.md).
    let mut hashers: Vec<Hasher> = match &verify {
        Verify::Header(c) => vec![Hasher::new(c.algorithm)],
        Verify::Trailer => ChecksumAlgorithm::IN_TRAILERS
            .into_iter()
            .map(Hasher::new)
            .collect(),
        Verify::None => Vec::new(),
    };
    let mut trailer_error = None;
    let mut error = None;
    // Nothing of the body is read until its buffers (and the connection's read buffer, which
    // grows only while the body is read) fit in the server's budget: past it, bodies wait in
    // their sockets and memory does not grow with the number of uploads.
    let waited = tokio::select! {
        biased;
        () = lease.taken_over() => Some(let_go(lease)),
        () = state.shutdown.cancelled() => Some(Ending::Shutdown),
        () = append.reserve(read_buffer) => None,
        () = tokio::time::sleep_until(crate::conn::far(state.config.body_idle_timeout)) => {
            Some(Ending::NoMemory)
        }
    };
    let mut ending = if let Some(ending) = waited {
        ending
    } else {
        loop {
            let frame = tokio::select! {
                biased;
                () = lease.taken_over() => break let_go(lease),
                () = state.shutdown.cancelled() => break Ending::Shutdown,
                f = pace.frame(&mut body) => f,
            };
            let frame = match frame {
                Err(ending) => break ending,
                Ok(None) => break Ending::Complete,
                Ok(Some(Err(e))) => break Ending::ClientGone(e.to_string()),
                Ok(Some(Ok(frame))) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    // checksum-trailer: the checksum follows the body.
                    if let Ok(trailers) = frame.into_trailers()
                        && let Some(v) = trailers.get(tus::UPLOAD_CHECKSUM)
                    {
                        match v
                            .to_str()
                            .map_err(|_| {
                                ProtoError::InvalidChecksum(
                                    "Upload-Checksum trailer is not ASCII".into(),
                                )
                            })
                            .and_then(Checksum::parse)
                        {
                            Ok(c) if claimed.is_none() => claimed = Some(c),
                            Ok(_) => {
                                trailer_error =
                                    Some("Upload-Checksum sent both as header and trailer".into())
                            }
                            Err(e) => trailer_error = Some(e.to_string()),
                        }
                    }
                    continue;
                }
            };
            for h in &mut hashers {
                h.update(&data);
            }
            match append.push(&data).await {
                Ok(()) => {}
                Err(StoreError::ExceedsLength { length }) => {
                    // Discard the whole body: dropping the append leaves the offset untouched.
                    let info = append.info().clone();
                    return Ok(Received {
                        want,
                        ending: Ending::TooLong { length },
                        info,
                        error: None,
                        discarded: true,
                    });
                }
                Err(e) => {
                    let why = match e {
                        StoreError::TooLarge { .. } => "the upload reached the size limit",
                        _ => "storage write failed",
                    };
                    error = Some(e);
                    break Ending::ClientGone(why.into());
                }
            }
            if append.uncommitted() >= checkpoint
                && let Err(e) = append.commit().await
            {
                error = Some(e);
                break Ending::ClientGone("storage write failed".into());
            }
        }
    };
    if all_or_nothing {
        // A body cut off (shutdown, takeover, stall, storage failure) keeps its cause: only
        // what arrived whole is judged by its checksum.
        let verdict = match (ending, &error) {
            (Ending::Complete, None) => match (trailer_error, claimed) {
                (Some(why), _) => Err(Ending::ChecksumIncomplete(why)),
                (None, None) => Err(Ending::ChecksumIncomplete(
                    "Upload-Checksum trailer was announced but not sent".into(),
                )),
                (None, Some(claim)) => {
                    let hasher = hashers
                        .into_iter()
                        .find(|h| h.algorithm() == claim.algorithm);
                    match hasher.map(Hasher::finalize) {
                        Some(actual) if actual == claim.digest => Ok(Ending::Complete),
                        Some(_) => Err(Ending::ChecksumMismatch),
                        None => Err(Ending::ChecksumIncomplete(format!(
                            "an Upload-Checksum trailer may use crc32 or crc64nvme; send {} in a header",
                            claim.algorithm.name()
                        ))),
                    }
                }
            },
            (cut, _) => Err(cut),
        };
        match verdict {
            Ok(complete) => ending = complete,
            Err(ending) => {
                // Dropping the append discards every byte of this request.
                let info = append.info().clone();
                tracing::info!(upload = %info.id.tag(), ending = ?ending, error = ?error, "chunk discarded");
                return Ok(Received {
                    want,
                    ending,
                    info,
                    error,
                    discarded: true,
                });
            }
        }
    }
    // A fenced-out writer's successor owns the upload: committing here would record an offset
    // over bytes the successor cut or rewrote.
    let fenced = matches!(error, Some(StoreError::Fenced { .. }));
    if !fenced && let Err(e) = append.commit().await {
        match &error {
            None => error = Some(e),
            // The first error is what the client hears; this one says why less was committed.
            Some(first) => {
                tracing::warn!(upload = %append.info().id.tag(), error = %e, first = %first, "commit after a failed write failed too")
            }
        }
    }
    let info = append.info().clone();
    match (&ending, &error) {
        (Ending::Complete, None) => {}
        _ => {
            tracing::info!(upload = %info.id.tag(), offset = info.offset, ending = ?ending, error = ?error, "body ended early")
        }
    }
    Ok(Received {
        want,
        ending,
        info,
        error,
        discarded: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_minimum_rate_is_averaged_over_the_window() {
        let w = Duration::from_secs(60);
        assert!(pace_kept(60 * 1024, 1024, w));
        assert!(!pace_kept(60 * 1024 - 1, 1024, w));
        assert!(!pace_kept(1, 1024, w), "a byte a minute");
        assert!(pace_kept(0, 0, w));
        assert!(pace_kept(u64::MAX, u64::MAX, Duration::from_secs(1)));
    }
}
