//! The one request pipeline for bodies appended in order (tus PATCH and creation-with-upload,
//! the IETF draft's creation and appends): check against the committed record, take the lease,
//! reload and check again, declare a length learned late, receive the body, and turn how the
//! body ended into the committed state or an error. Protocols parse their headers into a
//! [`Plan`] and describe what differs in a [`Dialect`]; every status of an ending is decided in
//! [`settle`], and every storage error's in [`ApiError`]'s `From<StoreError>`.

use crate::AppState;
use crate::error::ApiError;
use crate::headers::{h, has_body};
use crate::lookup::load;
use crate::receive::{Ending, Received, Verify, receive};
use axum::body::Body;
use ferry_proto::UploadId;
use ferry_proto::digest::WantDigest;
use ferry_store::UploadInfo;
use http::{Request, StatusCode, header};
use std::sync::Arc;

/// `Upload-Offset`: the same header name in tus and the IETF draft.
const UPLOAD_OFFSET: &str = ferry_proto::tus::UPLOAD_OFFSET;

/// Seconds a client is told to wait before resuming after a graceful shutdown: long enough for
/// a supervisor to restart the server.
pub const SHUTDOWN_RETRY_AFTER: u64 = 5;

/// What a protocol asks of one request that appends, read from its headers.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// `Content-Length`, if sent.
    pub expected: Option<u64>,
    /// How the bytes are verified.
    pub verify: Verify,
    /// A length to declare before the body, if the upload's is still unknown.
    pub declare: Option<u64>,
    /// The request ends the upload where its body ends (IETF `Upload-Complete: ?1`).
    pub completes: bool,
}

/// What differs between the protocols beyond header syntax and response headers.
pub(crate) trait Dialect: Sync {
    /// Checks the request against the committed record: before taking the upload over, and
    /// again against the state the previous holder left.
    fn check(&self, info: &UploadInfo) -> Result<(), ApiError>;

    /// The status of a body whose checksum does not match it, and the header that carried
    /// the checksum (for the message).
    fn mismatch(&self) -> (StatusCode, &'static str);

    /// A body went past the upload's length. `Some(error)`: the upload itself is invalid from
    /// now on (the IETF draft) and is deleted; `None`: only the request's bytes are dropped.
    fn overrun_ends_upload(&self, length: u64) -> Option<ApiError>;

    /// A request that ends an upload at an offset other than its declared length.
    fn inconsistent(&self, detail: String) -> ApiError;

    /// Whether clients of this protocol can resume an upload whose creating request failed
    /// (they read `Location` from the error). If not, one that kept no byte is deleted.
    fn resumes_failed_creation(&self) -> bool;
}

/// The committed state after a request, and what it asked for in the answer.
pub(crate) struct Written {
    /// The committed record (the offset to report).
    pub info: UploadInfo,
    /// The request's `Want-Repr-Digest`.
    pub want: Option<WantDigest>,
}

/// An error answered before the body was read closes the connection, so a client does not keep
/// sending into a connection nobody reads.
fn unread(body_follows: bool) -> impl Fn(ApiError) -> ApiError {
    move |e| if body_follows { e.closing() } else { e }
}

/// Appends the body of `req` to upload `id`.
pub(crate) async fn append(
    state: &Arc<AppState>,
    dialect: &dyn Dialect,
    id: UploadId,
    req: Request<Body>,
    plan: Plan,
) -> Result<Written, ApiError> {
    let body_follows = has_body(&req);
    let fail = unread(body_follows);
    let lease = match state.uploads.try_lease(id).await {
        // Nobody is writing: nobody to disturb.
        Ok(lease) => lease,
        Err(ferry_store::StoreError::Busy(_)) => {
            // Cheap checks against the committed state before disturbing the current writer.
            let info = load(state, id).await.map_err(&fail)?;
            dialect.check(&info).map_err(&fail)?;
            // Take the upload over (the writer commits and lets go), then check again.
            state.uploads.lease(id).await.map_err(|e| fail(e.into()))?
        }
        Err(e) => return Err(fail(e.into())),
    };
    let mut info = load(state, id).await.map_err(&fail)?;
    dialect.check(&info).map_err(&fail)?;
    if let (Some(length), None) = (plan.declare, info.length) {
        info = state
            .uploads
            .declare_length(&lease, length)
            .await
            .map_err(|e| fail(e.into()))?;
    }
    let written = if body_follows {
        let offset = info.offset;
        let received = receive(state.clone(), lease, info, req, plan.expected, plan.verify)
            .await
            .map_err(|e| fail(ApiError::from(e).with_header(h(UPLOAD_OFFSET), offset)))?;
        let want = received.want;
        let info = match settle(dialect, received) {
            Ok(info) => info,
            Err(Settled::Failed(e)) => return Err(e),
            Err(Settled::Overrun(e)) => {
                delete_quietly(state, id).await;
                return Err(e);
            }
        };
        Written { info, want }
    } else {
        drop(lease);
        Written {
            info,
            want: crate::headers::want_digest(req.headers()),
        }
    };
    finish(state, dialect, plan.completes, written).await
}

/// Receives the body of the request that created `info` (tus creation-with-upload, IETF
/// creation with content). An error carries `location` while the upload still exists.
pub(crate) async fn first_body(
    state: &Arc<AppState>,
    dialect: &dyn Dialect,
    info: UploadInfo,
    req: Request<Body>,
    plan: Plan,
    location: &str,
) -> Result<Written, ApiError> {
    let id = info.id;
    let with_location = |e: ApiError| e.with_header(header::LOCATION, location);
    let lease = state
        .uploads
        .lease(id)
        .await
        .map_err(|e| with_location(ApiError::from(e).closing()))?;
    let received = receive(state.clone(), lease, info, req, plan.expected, plan.verify)
        .await
        .map_err(|e| with_location(ApiError::from(e).with_header(h(UPLOAD_OFFSET), 0).closing()))?;
    let want = received.want;
    let info = match settle(dialect, received) {
        Ok(info) => info,
        Err(Settled::Overrun(e)) => {
            // Made for this request only: do not leave it half-made.
            delete_quietly(state, id).await;
            return Err(e);
        }
        Err(Settled::Failed(e)) => {
            let kept = state.uploads.get(id).await.ok().flatten();
            if kept.as_ref().is_some_and(|i| i.offset == 0) && !dialect.resumes_failed_creation() {
                // Nothing kept, and the client cannot learn the URL from an error: it creates
                // again, and this one would only wait for expiry.
                delete_quietly(state, id).await;
                return Err(e);
            }
            return Err(with_location(e));
        }
    };
    finish(state, dialect, plan.completes, Written { info, want })
        .await
        .map_err(with_location)
}

/// A request marked as the last one: the upload's length is where it ended.
async fn finish(
    state: &AppState,
    dialect: &dyn Dialect,
    completes: bool,
    written: Written,
) -> Result<Written, ApiError> {
    if !completes {
        state.finished(&written.info);
        return Ok(written);
    }
    let Written { info, want } = written;
    let info = match info.length {
        Some(l) if l == info.offset => info,
        Some(l) => {
            return Err(dialect.inconsistent(format!(
                "marked complete at offset {} but the upload length is {l}",
                info.offset
            )));
        }
        None => {
            let lease = state.uploads.lease(info.id).await?;
            state.uploads.declare_length(&lease, info.offset).await?
        }
    };
    state.finished(&info);
    Ok(Written { info, want })
}

async fn delete_quietly(state: &AppState, id: UploadId) {
    if let Err(e) = state.uploads.delete(id).await {
        tracing::warn!(upload = %id.tag(), error = %e, "deleting a failed upload failed");
    }
}

/// How a body that did not end well is answered.
pub(crate) enum Settled {
    /// The answer; the upload stays.
    Failed(ApiError),
    /// The body overran the length and the protocol gives the upload up.
    Overrun(ApiError),
}

/// The one mapping from how a body ended to the committed state or the answer. Every error
/// carries the committed offset and closes the connection (the body may be partly unread).
pub(crate) fn settle(dialect: &dyn Dialect, received: Received) -> Result<UploadInfo, Settled> {
    let offset = received.info.offset;
    let fate = if received.discarded {
        Fate::Discarded
    } else {
        Fate::Kept
    };
    let error = match (received.error, received.ending) {
        (Some(e), _) => ApiError::from(e),
        (None, Ending::Complete) => return Ok(received.info),
        (None, Ending::TooLong { length }) => match dialect.overrun_ends_upload(length) {
            Some(e) => return Err(Settled::Overrun(e.closing())),
            None => ending_error(Ending::TooLong { length }, fate, dialect.mismatch()),
        },
        (None, ending) => ending_error(ending, fate, dialect.mismatch()),
    };
    Err(Settled::Failed(
        error.with_header(h(UPLOAD_OFFSET), offset).closing(),
    ))
}

/// What became of a request's bytes, for the message.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fate {
    /// Committed (what arrived counts).
    Kept,
    /// Dropped whole (a checksummed request, or a chunk of a Content-Range session).
    Discarded,
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fate::Kept => "bytes received were kept",
            Fate::Discarded => "the request's bytes were discarded, send them again",
        })
    }
}

/// The status and message of a body that did not end whole, for every protocol (chunk
/// sessions too). `mismatch` is the protocol's status for a checksum that does not match, and
/// the header that carried it.
pub(crate) fn ending_error(
    ending: Ending,
    fate: Fate,
    mismatch: (StatusCode, &'static str),
) -> ApiError {
    match ending {
        Ending::Complete => ApiError::internal(&"a complete body was answered as an error"),
        Ending::ClientGone(why) => {
            ApiError::bad_request(format!("request body ended early ({why}); {fate}"))
        }
        Ending::TakenOver => ApiError::new(
            StatusCode::CONFLICT,
            format!("a newer request took over this upload; {fate}"),
        ),
        Ending::LeaseLost => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this server lost its hold on the upload (its database is slow); {fate}; resume"
            ),
        )
        .with_header(header::RETRY_AFTER, 1),
        Ending::Shutdown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("server is shutting down; {fate}; resume later"),
        )
        .with_header(header::RETRY_AFTER, SHUTDOWN_RETRY_AFTER),
        Ending::NoMemory => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server's memory for request bodies stayed in use; nothing of this body was \
             read, send it again",
        )
        .with_header(header::RETRY_AFTER, 1),
        Ending::IdleTimeout => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("request body stalled; {fate}"),
        ),
        Ending::TooSlow { min_rate, window } => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body arrived slower than {min_rate} bytes/s over {}s; {fate}",
                window.as_secs()
            ),
        ),
        // A checkpoint may have committed part of the body before it overran.
        Ending::TooLong { length } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body goes past the length of {length} bytes; what it sent after the last \
                 commit was discarded (Upload-Offset says what was kept)"
            ),
        ),
        Ending::ChecksumMismatch => ApiError::new(
            mismatch.0,
            format!("{} does not match the body; {fate}", mismatch.1),
        ),
        Ending::ChecksumIncomplete(why) => ApiError::bad_request(format!("{why}; {fate}")),
    }
}
