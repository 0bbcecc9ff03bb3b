//! Finding an upload for a request: 404 and 410, and waiting (bounded) for a digest a client
//! asked for.

use crate::AppState;
use crate::error::ApiError;
use ferry_proto::UploadId;
use ferry_proto::digest::WantDigest;
use ferry_store::UploadInfo;
use http::StatusCode;

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

/// A client that asks for the digest (RFC 9530 `Want-Repr-Digest`) of a finished upload gets
/// it even if it is still being computed, when it can be ready within `--digest-wait`;
/// otherwise it gets the digests already known (CRC-64/NVME, almost always) at once or at the
/// bound.
pub(crate) async fn wait_for_digest(
    state: &AppState,
    info: UploadInfo,
    want: WantDigest,
) -> Result<UploadInfo, ApiError> {
    if !info.is_complete() || has_wanted_digest(&info, want) {
        return Ok(info);
    }
    // CRC-64/NVME comes with completion (or shortly after, when read back); BLAKE3 or SHA-256
    // of a large upload is computed only now that somebody wants it (and accepts nothing
    // cheaper), once, on the store's bounded pool of read-backs.
    tokio::select! {
        () = state.shutdown.cancelled() => {}
        () = state.uploads.wait_for_digests(&info, want, state.config.digest_wait) => {}
    }
    load(state, info.id).await
}

/// Whether `info` already carries a digest the client accepts.
pub(crate) fn has_wanted_digest(info: &UploadInfo, want: WantDigest) -> bool {
    info.digests.satisfies(want)
}
