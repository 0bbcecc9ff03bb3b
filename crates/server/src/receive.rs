//! Streams a request body into an upload: the hot path shared by every protocol that appends.
//!
//! The body is polled frame by frame (not as a data-only stream) so trailers stay visible. Every
//! way the body can end commits what arrived, except a body that overruns the upload's length,
//! which is discarded whole.

use crate::AppState;
use axum::body::Body;
use ferry_store::{Lease, StoreError, UploadInfo};
use http_body_util::BodyExt;

/// Why the body loop stopped.
#[derive(Debug)]
pub enum Ending {
    /// The whole body arrived.
    Complete,
    /// The connection broke or the body was malformed; what arrived was kept.
    ClientGone(String),
    /// A newer request asked for this upload.
    TakenOver,
    /// The server is shutting down.
    Shutdown,
    /// No bytes arrived for the idle timeout.
    IdleTimeout,
    /// The body went past the upload's length; nothing from it was kept.
    TooLong {
        /// The upload's length.
        length: u64,
    },
}

/// Result of receiving a body.
pub struct Received {
    /// How the body ended.
    pub ending: Ending,
    /// The committed record after the body (the offset to report).
    pub info: UploadInfo,
    /// A storage failure, if one stopped the body (the record shows what was still committed).
    pub error: Option<StoreError>,
}

/// Receives `body` into the upload held by `lease`, committing per the sync policy. Runs in
/// its own task so that a dropped connection cannot skip the final commit.
pub async fn receive(
    state: std::sync::Arc<AppState>,
    lease: Lease,
    body: Body,
    expected: Option<u64>,
) -> Result<Received, StoreError> {
    let task = tokio::spawn(async move {
        let result = receive_inner(&state, &lease, body, expected).await;
        drop(lease);
        result
    });
    task.await
        .unwrap_or_else(|e| Err(StoreError::Io(std::io::Error::other(e.to_string()))))
}

async fn receive_inner(
    state: &AppState,
    lease: &Lease,
    mut body: Body,
    expected: Option<u64>,
) -> Result<Received, StoreError> {
    let mut append = state.uploads.append(lease, expected).await?;
    let idle = state.config.body_idle_timeout;
    let checkpoint = state.config.checkpoint_bytes;
    let mut error = None;
    let ending = loop {
        let frame = tokio::select! {
            biased;
            () = lease.taken_over() => break Ending::TakenOver,
            () = state.shutdown.cancelled() => break Ending::Shutdown,
            f = tokio::time::timeout(idle, body.frame()) => f,
        };
        let frame = match frame {
            Err(_) => break Ending::IdleTimeout,
            Ok(None) => break Ending::Complete,
            Ok(Some(Err(e))) => break Ending::ClientGone(e.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailer frames carry no data; checksum-trailer support reads them here.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match append.push(&data).await {
            Ok(()) => {}
            Err(StoreError::ExceedsLength { length }) => {
                // Discard the whole body: dropping the append leaves the offset untouched.
                let info = append.info().clone();
                return Ok(Received {
                    ending: Ending::TooLong { length },
                    info,
                    error: None,
                });
            }
            Err(e) => {
                error = Some(e);
                break Ending::ClientGone("storage write failed".into());
            }
        }
        if append.uncommitted() >= checkpoint
            && let Err(e) = append.commit().await
        {
            error = Some(e);
            break Ending::ClientGone("storage write failed".into());
        }
    };
    if let Err(e) = append.commit().await
        && error.is_none()
    {
        error = Some(e);
    }
    let info = append.info().clone();
    match (&ending, &error) {
        (Ending::Complete, None) => {}
        _ => {
            tracing::info!(upload = %info.id, offset = info.offset, ending = ?ending, error = ?error, "body ended early")
        }
    }
    Ok(Received {
        ending,
        info,
        error,
    })
}
