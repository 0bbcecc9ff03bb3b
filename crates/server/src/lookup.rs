//! Finding an upload for a request: 404 and 410, and waiting (bounded) for a digest a client
//! asked for.

use crate::AppState;
use crate::error::ApiError;
use ferry_proto::UploadId;
use ferry_proto::digest::WantDigest;
use ferry_store::UploadInfo;
use http::StatusCode;
use std::time::Duration;

/// Loads a visible, unexpired upload: 404 if unknown, 410 once expired (until swept).
pub(crate) async fn load(state: &AppState, id: UploadId) -> Result<UploadInfo, ApiError> {
    let info = state
        .uploads
        .get(id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if info.is_expired(ferry_store::model::now_ms()) {
        return Err(ApiError::new(StatusCode::GONE, "upload expired"));
    }
    Ok(info)
}

/// Longest a HEAD with `Want-Repr-Digest` waits for a digest still being computed.
const DIGEST_WAIT: Duration = Duration::from_secs(60);

/// A client that asks for the digest (RFC 9530 `Want-Repr-Digest`) of a finished upload gets
/// it even if it is still being computed in the background: wait for it, bounded.
pub(crate) async fn wait_for_digest(
    state: &AppState,
    mut info: UploadInfo,
    want: WantDigest,
) -> Result<UploadInfo, ApiError> {
    if !info.is_complete() || has_wanted_digest(&info, want) {
        return Ok(info);
    }
    // CRC-64/NVME comes with completion (or shortly after, when read back); BLAKE3 or SHA-256
    // of a large upload is computed only now that somebody wants it (and accepts nothing
    // cheaper).
    state.uploads.ensure_digests(&info, want).await;
    info = load(state, info.id).await?;
    let deadline = tokio::time::Instant::now() + DIGEST_WAIT;
    while !has_wanted_digest(&info, want) && tokio::time::Instant::now() < deadline {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        info = load(state, info.id).await?;
    }
    Ok(info)
}

/// Whether `info` already carries a digest the client accepts.
pub(crate) fn has_wanted_digest(info: &UploadInfo, want: WantDigest) -> bool {
    info.digests.satisfies(want)
}
