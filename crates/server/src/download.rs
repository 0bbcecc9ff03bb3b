//! Downloads of finished uploads: `GET` (and plain `HEAD`) of `/files/{id}` with ranges and
//! validators. An upload's bytes never change once complete, so its id is its version: the
//! strong `ETag` is derived from the id (and the SHA-256 once known would be equivalent).

use crate::AppState;
use crate::error::ApiError;
use crate::ranged::{Representation, respond};
use axum::body::Body;
use ferry_proto::range::ETag;
use ferry_proto::{UploadId, disposition, tus};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Serves a complete upload; an unfinished one gets 409 with its offset, never a partial body
/// dressed as complete.
pub async fn get(
    state: Arc<AppState>,
    id: UploadId,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let info = crate::lookup::load(&state, id).await?;
    let Some(length) = info.length.filter(|l| *l == info.offset) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "upload is not finished: {} bytes received so far",
                info.offset
            ),
        )
        .with_header(HeaderName::from_static(tus::UPLOAD_OFFSET), info.offset));
    };
    let rep = Representation {
        len: length,
        etag: ETag::strong(format!("u-{id}")),
        last_modified: Some(UNIX_EPOCH + Duration::from_millis(info.updated_ms)),
        digests: info.digests.clone(),
        // Never a type taken from the uploader: that would let an upload become stored XSS.
        content_type: HeaderValue::from_static("application/octet-stream"),
        disposition: HeaderValue::from_str(&disposition::attachment(info.metadata.filename())).ok(),
        ranges: state.uploads.capabilities().ranged_reads,
    };
    // Where the bytes are, found at the first read and kept for the others: a multipart
    // answer costs one record read per part of a final, and a HEAD or a 304 none.
    let pieces = Arc::new(tokio::sync::OnceCell::new());
    let st = state.clone();
    let opener = Box::new(move |s: u64, e: u64| {
        let (st, info, pieces) = (st.clone(), info.clone(), pieces.clone());
        Box::pin(async move {
            pieces
                .get_or_try_init(|| st.uploads.pieces(&info))
                .await?
                .read(s, e)
                .await
        }) as _
    });
    let mut resp = respond(headers, method, rep, opener).await?;
    resp.headers_mut().insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(resp)
}
