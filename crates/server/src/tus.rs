//! tus 1.0 (core, creation, creation-with-upload, creation-defer-length, termination): a thin
//! translation between HTTP and the upload engine.

use crate::error::ApiError;
use crate::receive::{Ending, Received, receive};
use crate::{AppState, Ctx};
use axum::body::Body;
use ferry_proto::{Metadata, UploadId, tus};
use ferry_store::{NewUpload, Protocol, UploadInfo};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use std::sync::Arc;

/// Extensions this server implements, in the order announced by OPTIONS.
pub const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,termination";

type Reply = Result<Response<Body>, ApiError>;

fn h(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{name} must be visible ASCII"))),
    }
}

fn require_version(headers: &HeaderMap) -> Result<(), ApiError> {
    let v = header_str(headers, tus::TUS_RESUMABLE)?.unwrap_or("");
    tus::check_tus_resumable(v).map_err(ApiError::from)
}

/// Whether the request carries a body (declared length > 0, or chunked).
fn has_body(req: &Request<Body>) -> bool {
    use http_body::Body as _;
    req.body().size_hint().exact() != Some(0)
}

fn content_length(req: &Request<Body>) -> Option<u64> {
    use http_body::Body as _;
    req.body().size_hint().exact()
}

fn base_response(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r.headers_mut().insert(
        h(tus::TUS_RESUMABLE),
        HeaderValue::from_static(tus::TUS_VERSION),
    );
    r
}

fn set(resp: &mut Response<Body>, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        resp.headers_mut().insert(h(name), v);
    }
}

/// OPTIONS on the collection or an upload: what this server offers.
pub fn options(state: &AppState) -> Response<Body> {
    let mut r = base_response(StatusCode::NO_CONTENT);
    set(&mut r, tus::TUS_VERSION_HEADER, tus::SUPPORTED_VERSIONS);
    set(&mut r, tus::TUS_EXTENSION, EXTENSIONS);
    if let Some(max) = state.config.max_size {
        set(&mut r, tus::TUS_MAX_SIZE, max);
    }
    r
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = header_str(headers, header::CONTENT_TYPE.as_str())?.unwrap_or("");
    if tus::media_type_is(ct, tus::OFFSET_OCTET_STREAM) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {}", tus::OFFSET_OCTET_STREAM),
        ))
    }
}

fn check_size(state: &AppState, length: u64) -> Result<(), ApiError> {
    match state.config.max_size {
        Some(max) if length > max => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Upload-Length {length} exceeds the maximum size of {max} bytes"),
        )
        .with_header(h(tus::TUS_MAX_SIZE), max)),
        _ => Ok(()),
    }
}

/// POST on the collection: creation (and creation-with-upload, creation-defer-length).
pub async fn create(state: Arc<AppState>, ctx: &Ctx, req: Request<Body>) -> Reply {
    let headers = req.headers();
    let body_follows = has_body(&req);
    let fail = |e: ApiError| if body_follows { e.closing() } else { e };
    require_version(headers).map_err(fail)?;
    let length = header_str(headers, tus::UPLOAD_LENGTH).map_err(fail)?;
    let defer = header_str(headers, tus::UPLOAD_DEFER_LENGTH).map_err(fail)?;
    let length = match (length, defer) {
        (Some(_), Some(_)) => {
            return Err(fail(ApiError::bad_request(
                "send either Upload-Length or Upload-Defer-Length, not both",
            )));
        }
        (None, None) => {
            return Err(fail(ApiError::bad_request(
                "Upload-Length or Upload-Defer-Length: 1 is required",
            )));
        }
        (Some(l), None) => Some(tus::parse_upload_length(l).map_err(|e| fail(e.into()))?),
        (None, Some(d)) => {
            tus::parse_defer_length(d).map_err(|e| fail(e.into()))?;
            None
        }
    };
    if let Some(l) = length {
        check_size(&state, l).map_err(fail)?;
    }
    let metadata = match header_str(headers, tus::UPLOAD_METADATA).map_err(fail)? {
        Some(m) => Metadata::parse(m).map_err(|e| fail(e.into()))?,
        None => Metadata::default(),
    };
    if body_follows {
        check_content_type(headers).map_err(fail)?;
        if let (Some(cl), Some(l)) = (content_length(&req), length)
            && cl > l
        {
            return Err(fail(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body of {cl} bytes is longer than Upload-Length {l}"),
            )));
        }
    }
    let info = state
        .uploads
        .create(NewUpload {
            length,
            metadata,
            protocol: Protocol::Tus,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(e.into()))?;
    let location = state.upload_url(ctx, headers, info.id);
    tracing::info!(upload = %info.id, length = ?info.length, "created");
    let mut resp = base_response(StatusCode::CREATED);
    set(&mut resp, "location", &location);
    if !body_follows {
        return Ok(resp);
    }
    // creation-with-upload: the body holds the first bytes.
    let expected = content_length(&req);
    let lease = state.uploads.lease(info.id).await?;
    let received = receive(state.clone(), lease, req.into_body(), expected).await?;
    if let Ending::TooLong { length } = received.ending {
        // The upload was created for this request only; do not leave it half-made.
        let _ = state.uploads.delete(info.id).await;
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body goes past Upload-Length {length}"),
        )
        .closing());
    }
    set(&mut resp, tus::UPLOAD_OFFSET, received.info.offset);
    finish_body_response(resp, received)
}

/// Turns how a body ended into the response (success, or an error carrying the offset).
fn finish_body_response(ok: Response<Body>, received: Received) -> Reply {
    let offset = received.info.offset;
    let err = |status: StatusCode, msg: &str| {
        Err(ApiError::new(status, msg)
            .with_header(h(tus::UPLOAD_OFFSET), offset)
            .closing())
    };
    if let Some(e) = received.error {
        return Err(ApiError::from(e)
            .with_header(h(tus::UPLOAD_OFFSET), offset)
            .closing());
    }
    match received.ending {
        Ending::Complete => Ok(ok),
        Ending::ClientGone(why) => err(
            StatusCode::BAD_REQUEST,
            &format!("request body ended early ({why}); bytes received were kept"),
        ),
        Ending::TakenOver => err(
            StatusCode::CONFLICT,
            "a newer request took over this upload; bytes received were kept",
        ),
        Ending::Shutdown => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "server is shutting down; bytes received were kept, resume later",
        ),
        Ending::IdleTimeout => err(
            StatusCode::REQUEST_TIMEOUT,
            "request body stalled; bytes received were kept",
        ),
        Ending::TooLong { length } => err(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body goes past Upload-Length {length}; the chunk was discarded"),
        ),
    }
}

fn upload_headers(resp: &mut Response<Body>, info: &UploadInfo) {
    set(resp, tus::UPLOAD_OFFSET, info.offset);
    match info.length {
        Some(l) => set(resp, tus::UPLOAD_LENGTH, l),
        None => set(resp, tus::UPLOAD_DEFER_LENGTH, 1),
    }
    if !info.metadata.is_empty() {
        set(resp, tus::UPLOAD_METADATA, info.metadata.format());
    }
}

async fn load(state: &AppState, id: UploadId) -> Result<UploadInfo, ApiError> {
    state.uploads.get(id).await?.ok_or_else(ApiError::not_found)
}

/// HEAD on an upload: the committed offset. Never waits for a writer.
pub async fn head(state: Arc<AppState>, id: UploadId, req: Request<Body>) -> Reply {
    require_version(req.headers())?;
    let info = load(&state, id).await?;
    let mut resp = base_response(StatusCode::OK);
    upload_headers(&mut resp, &info);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// PATCH on an upload: append at `Upload-Offset`.
pub async fn patch(state: Arc<AppState>, id: UploadId, req: Request<Body>) -> Reply {
    let headers = req.headers();
    let body_follows = has_body(&req);
    let fail = |e: ApiError| if body_follows { e.closing() } else { e };
    require_version(headers).map_err(fail)?;
    check_content_type(headers).map_err(fail)?;
    let offset = match header_str(headers, tus::UPLOAD_OFFSET).map_err(fail)? {
        Some(v) => tus::parse_upload_offset(v).map_err(|e| fail(e.into()))?,
        None => return Err(fail(ApiError::bad_request("Upload-Offset is required"))),
    };
    let new_length = match header_str(headers, tus::UPLOAD_LENGTH).map_err(fail)? {
        Some(v) => Some(tus::parse_upload_length(v).map_err(|e| fail(e.into()))?),
        None => None,
    };
    if let Some(l) = new_length {
        check_size(&state, l).map_err(fail)?;
    }
    let expected = content_length(&req);
    // Cheap checks against the committed state before disturbing a current writer.
    let info = load(&state, id).await.map_err(fail)?;
    check_patch(&info, offset, new_length, expected).map_err(fail)?;

    // Take the upload over (a current writer commits and lets go), then check again against
    // the state it left.
    let lease = state.uploads.lease(id).await.map_err(|e| fail(e.into()))?;
    let mut info = load(&state, id).await.map_err(fail)?;
    check_patch(&info, offset, new_length, expected).map_err(fail)?;
    if let (Some(l), None) = (new_length, info.length) {
        info = state
            .uploads
            .declare_length(&lease, l)
            .await
            .map_err(|e| fail(ApiError::bad_request(e.to_string())))?;
    }
    let mut resp = base_response(StatusCode::NO_CONTENT);
    if !body_follows {
        set(&mut resp, tus::UPLOAD_OFFSET, info.offset);
        return Ok(resp);
    }
    let received = receive(state.clone(), lease, req.into_body(), expected).await?;
    set(&mut resp, tus::UPLOAD_OFFSET, received.info.offset);
    finish_body_response(resp, received)
}

fn check_patch(
    info: &UploadInfo,
    offset: u64,
    new_length: Option<u64>,
    body_len: Option<u64>,
) -> Result<(), ApiError> {
    if offset != info.offset {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Upload-Offset {offset} does not match the upload's offset {}",
                info.offset
            ),
        )
        .with_header(h(tus::UPLOAD_OFFSET), info.offset));
    }
    let length = match (info.length, new_length) {
        (Some(l), Some(n)) if l != n => {
            return Err(ApiError::bad_request(format!(
                "Upload-Length cannot change (it is {l})"
            )));
        }
        (None, Some(n)) if n < info.offset => {
            return Err(ApiError::bad_request(format!(
                "Upload-Length {n} is below the offset {}",
                info.offset
            )));
        }
        (l, n) => l.or(n),
    };
    if let (Some(length), Some(len)) = (length, body_len)
        && offset.saturating_add(len) > length
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{len} bytes at offset {offset} go past the upload length of {length}"),
        ));
    }
    Ok(())
}

/// DELETE on an upload (termination).
pub async fn delete(state: Arc<AppState>, id: UploadId, req: Request<Body>) -> Reply {
    require_version(req.headers())?;
    state.uploads.delete(id).await?;
    tracing::info!(upload = %id, "terminated");
    Ok(base_response(StatusCode::NO_CONTENT))
}

/// Methods allowed on the collection and on an upload (for 405 answers).
pub const COLLECTION_METHODS: &str = "OPTIONS, POST";
/// Methods allowed on an upload.
pub const UPLOAD_METHODS: &str = "OPTIONS, HEAD, GET, PATCH, DELETE";

/// Resolves `X-HTTP-Method-Override` (honoured on POST, which is what clients behind
/// restrictive proxies send).
pub fn effective_method(req: &Request<Body>) -> Result<Method, ApiError> {
    let Some(v) = req.headers().get(tus::X_HTTP_METHOD_OVERRIDE) else {
        return Ok(req.method().clone());
    };
    if req.method() != Method::POST {
        return Ok(req.method().clone());
    }
    let s = v
        .to_str()
        .map_err(|_| ApiError::bad_request("X-HTTP-Method-Override is not ASCII"))?;
    match s.trim().to_ascii_uppercase().as_str() {
        "PATCH" => Ok(Method::PATCH),
        "DELETE" => Ok(Method::DELETE),
        "HEAD" => Ok(Method::HEAD),
        "GET" => Ok(Method::GET),
        "OPTIONS" => Ok(Method::OPTIONS),
        "POST" => Ok(Method::POST),
        _ => Err(ApiError::bad_request(
            "X-HTTP-Method-Override must be one of PATCH, DELETE, HEAD, GET, OPTIONS, POST",
        )),
    }
}
