//! GET of a finished upload: its bytes, streamed from the store. (Ranges and validators come
//! with the downloads work.)

use crate::AppState;
use crate::error::ApiError;
use axum::body::Body;
use ferry_proto::{UploadId, disposition, tus};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, header};
use std::sync::Arc;

/// Serves `GET`/`HEAD`-less download of a complete upload; unfinished uploads get 409 with
/// their offset, never a partial body dressed as complete.
pub async fn get(
    state: Arc<AppState>,
    id: UploadId,
    method: &Method,
) -> Result<Response<Body>, ApiError> {
    let info = crate::tus::load(&state, id).await?;
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
    let body = if method == Method::HEAD || length == 0 {
        Body::empty()
    } else {
        Body::from_stream(state.uploads.read(&info, 0, length).await?)
    };
    let mut resp = Response::new(body);
    crate::tus::set_repr_digest(&mut resp, &info);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    // Never a type taken from the uploader: that would let an upload become stored XSS.
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition::attachment(info.metadata.filename())) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(resp)
}
