//! Content-Range chunk sessions: `POST {base}/chunks/` creates a session, then `PUT` (or
//! `POST`) chunks to its URL with `Content-Range: bytes START-END/TOTAL`, in any order and
//! concurrently. `HEAD`, or a `PUT` with `Content-Range: bytes */TOTAL` and no body, reports
//! the ranges received; `GET` downloads the finished file. See docs/protocol.md.
//!
//! Every answer that describes a session carries `Upload-Ranges` (all ranges received,
//! inclusive), `Range: bytes=0-N` (the contiguous prefix, as Google's resumable uploads),
//! `Upload-Length` once known, `Upload-Complete: ?0/?1`, and (except HEAD) a small JSON body.

use crate::error::ApiError;
use crate::headers::{content_length, has_body, header_str, set_repr_digest, upload_metadata};
use crate::lookup::load;
use crate::pipeline::{self, Fate};
use crate::receive::Ending;
use crate::{AppState, Ctx};
use axum::body::Body;
use ferry_proto::range::{
    ChunkRange, UPLOAD_RANGES, format_chunk_status, format_upload_ranges, parse_chunk_range,
};
use ferry_proto::{UploadId, tus};
use ferry_store::{Protocol, StoreError, UploadInfo};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use std::sync::Arc;

/// Methods allowed on the collection.
pub const COLLECTION_METHODS: &str = "OPTIONS, POST";
/// Methods allowed on a session.
pub const SESSION_METHODS: &str = "GET, HEAD, PUT, POST, DELETE";

type Reply = Result<Response<Body>, ApiError>;

/// The ranges header's value for a session.
fn ranges_of(info: &UploadInfo) -> String {
    format_upload_ranges(info.received.as_ref().map_or(&[], |r| r.ranges()))
}

/// Adds the headers that describe a session's state.
fn describe(resp: &mut Response<Body>, info: &UploadInfo) {
    let h = resp.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set(UPLOAD_RANGES, ranges_of(info));
    if info.offset > 0 {
        set("range", format!("bytes=0-{}", info.offset - 1));
    }
    if let Some(l) = info.length {
        set(tus::UPLOAD_LENGTH, l.to_string());
    }
    set(
        "upload-complete",
        if info.is_complete() { "?1" } else { "?0" }.to_string(),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    set_repr_digest(resp, info);
}

/// A session's state: headers, plus the JSON body.
fn status_response(status: StatusCode, info: &UploadInfo) -> Response<Body> {
    let json = format_chunk_status(
        info.received.as_ref().map_or(&[], |r| r.ranges()),
        info.length,
        info.is_complete(),
    );
    let mut resp = Response::new(Body::from(json + "\n"));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    describe(&mut resp, info);
    resp
}

/// An error about a known session also says what the session holds, so a client can resume
/// from any answer.
fn with_state(mut e: ApiError, info: &UploadInfo) -> ApiError {
    e = e.with_header(HeaderName::from_static(UPLOAD_RANGES), ranges_of(info));
    if let Some(l) = info.length {
        e = e.with_header(HeaderName::from_static(tus::UPLOAD_LENGTH), l);
    }
    e
}

fn too_large(needed: u64, max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{needed} bytes exceed the maximum size of {max} bytes"),
    )
}

/// `OPTIONS {base}/chunks/`: says that this is a chunk-session endpoint, and how large a
/// session may be.
pub fn options(state: &AppState) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(COLLECTION_METHODS));
    h.insert(
        ferry_proto::range::CHUNK_SESSIONS_HEADER,
        HeaderValue::from_static("content-range"),
    );
    if let Some(max) = state.config.max_size {
        h.insert(tus::TUS_MAX_SIZE, HeaderValue::from(max));
    }
    r
}

/// `POST {base}/chunks/`: creates a session, optionally with `Upload-Length` (else the first
/// chunk's total sets it) and `Upload-Metadata` (for the download's file name).
pub async fn create(state: Arc<AppState>, ctx: &Ctx, req: Request<Body>) -> Reply {
    let headers = req.headers();
    state
        .admit_creation(ctx, headers)
        .map_err(|e| if has_body(&req) { e.closing() } else { e })?;
    if has_body(&req) {
        return Err(ApiError::bad_request(
            "a chunk session is created without a body: send chunks to the URL in Location",
        )
        .closing());
    }
    let length = match header_str(headers, tus::UPLOAD_LENGTH)? {
        Some(v) => Some(tus::parse_upload_length(v)?),
        None => None,
    };
    if let (Some(max), Some(l)) = (state.config.max_size, length)
        && l > max
    {
        return Err(too_large(l, max));
    }
    let metadata = upload_metadata(headers, state.config.max_metadata)?;
    let info = state.uploads.create_session(length, metadata).await?;
    state.created(ctx, headers, &info);
    tracing::info!(upload = %info.id.tag(), length = ?info.length, "chunk session created");
    let mut resp = status_response(StatusCode::CREATED, &info);
    if let Ok(v) = HeaderValue::from_str(&state.resource_url(headers, "chunks", info.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// A visible, unexpired chunk session (404 for unknown ids and for uploads of other
/// protocols, 410 once expired).
async fn load_session(state: &AppState, id: UploadId) -> Result<UploadInfo, ApiError> {
    let info = load(state, id).await?;
    if info.protocol != Protocol::Chunks {
        return Err(ApiError::not_found());
    }
    Ok(info)
}

/// Requests on `{base}/chunks/{id}`.
pub async fn session(
    state: Arc<AppState>,
    id: UploadId,
    method: Method,
    req: Request<Body>,
) -> Reply {
    match method {
        Method::HEAD => {
            let info = load_session(&state, id).await?;
            let mut resp = status_response(StatusCode::OK, &info);
            *resp.body_mut() = Body::empty();
            Ok(resp)
        }
        Method::GET => {
            let info = load_session(&state, id).await?;
            if !info.is_complete() {
                return Err(with_state(
                    ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "chunk session is not complete: {} of {} bytes received",
                            info.received.as_ref().map_or(0, |r| r.covered()),
                            info.length
                                .map_or_else(|| "an unknown number of".into(), |l| l.to_string())
                        ),
                    ),
                    &info,
                ));
            }
            crate::download::get(state, id, &method, req.headers()).await
        }
        Method::PUT | Method::POST => put(state, id, req).await,
        Method::DELETE => {
            load_session(&state, id).await?;
            state.uploads.delete_session(id).await?;
            tracing::info!(upload = %id.tag(), "chunk session deleted");
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        _ => Err(
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                .with_header(header::ALLOW, SESSION_METHODS),
        ),
    }
}

/// `PUT`/`POST` on a session: a chunk, or a status query (`bytes */TOTAL`, no body).
async fn put(state: Arc<AppState>, id: UploadId, req: Request<Body>) -> Reply {
    let body_follows = has_body(&req);
    // An error answered before the body is read closes the connection (the client would
    // otherwise keep sending into a connection nobody reads).
    let fail = |e: ApiError| if body_follows { e.closing() } else { e };
    let headers = req.headers();
    let Some(value) = header_str(headers, "content-range").map_err(fail)? else {
        return Err(fail(ApiError::bad_request(
            "Content-Range is required: bytes START-END/TOTAL with the chunk, or bytes */TOTAL \
             and no body to ask what has arrived",
        )));
    };
    let range = parse_chunk_range(value).map_err(|e| fail(e.into()))?;
    let info = load_session(&state, id).await.map_err(fail)?;
    if let (Some(length), Some(total)) = (info.length, range.total())
        && length != total
    {
        return Err(fail(with_state(
            ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "Content-Range total {total} differs from the session's length of {length} bytes"
                ),
            ),
            &info,
        )));
    }
    let needed = match range {
        ChunkRange::Bytes { end, total, .. } => total.unwrap_or(end + 1),
        ChunkRange::Query { total } => total.unwrap_or(0),
    };
    if let Some(max) = state.config.max_size
        && needed > max
    {
        return Err(fail(too_large(needed, max)));
    }
    let (start, end, total) = match range {
        ChunkRange::Query { total } => {
            if body_follows {
                return Err(fail(ApiError::bad_request(
                    "a status query (Content-Range: bytes */TOTAL) carries no body",
                )));
            }
            let info = match (info.length, total) {
                (None, Some(t)) => state.uploads.declare_session_length(id, t).await?,
                _ => info,
            };
            state.finished(&info);
            return Ok(status_response(StatusCode::OK, &info));
        }
        ChunkRange::Bytes { start, end, total } => (start, end, total),
    };
    if let Some(length) = info.length
        && end >= length
    {
        return Err(fail(with_state(
            ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!(
                    "Content-Range END {end} is past the session's last byte {} (END is inclusive)",
                    length.saturating_sub(1)
                ),
            ),
            &info,
        )));
    }
    let chunk_len = range.body_len();
    if let Some(cl) = content_length(&req)
        && cl != chunk_len
    {
        return Err(fail(ApiError::bad_request(format!(
            "Content-Length {cl} differs from the {chunk_len} bytes of Content-Range {start}-{end} \
             (END - START + 1)"
        ))));
    }
    let read_buffer = crate::read_buffer_of(&req);
    let body = req.into_body();
    // In its own task: a dropped connection or handler future cannot leave a half-done commit
    // behind (a commit either records the whole range or nothing).
    let st = state.clone();
    let task =
        tokio::spawn(
            async move { receive(&st, id, start, end + 1, total, body, read_buffer).await },
        );
    let info = task
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(&format!("chunk task failed: {e}"))))
        .inspect_err(|e| {
            tracing::info!(upload = %id.tag(), start, end, status = %e.status, reason = %e.message, "chunk not recorded");
        })?;
    tracing::debug!(upload = %id.tag(), start, end, complete = info.is_complete(), "chunk recorded");
    state.finished(&info);
    Ok(status_response(StatusCode::OK, &info))
}

/// Streams the body into `[start, end)` and commits it; any way the body can end short
/// records nothing. How it ended is answered as on every other protocol
/// ([`pipeline::ending_error`]).
async fn receive(
    state: &AppState,
    id: UploadId,
    start: u64,
    end: u64,
    total: Option<u64>,
    mut body: Body,
    read_buffer: usize,
) -> Result<UploadInfo, ApiError> {
    let len = end - start;
    let cut = |ending: Ending| {
        pipeline::ending_error(
            ending,
            Fate::Discarded,
            (StatusCode::BAD_REQUEST, "a checksum"),
        )
        .closing()
    };
    let mut w = state
        .uploads
        .write_range(id, start, end, total)
        .await
        .map_err(|e| ApiError::from(e).closing())?;
    let mut pace = crate::receive::Pace::new(&state.config);
    // A newer request for bytes this one claims (a client's retry, typically) takes over.
    let taken_over = w.taken_over();
    tokio::pin!(taken_over);
    // As for appends (see `receive`): no byte is read until the buffers fit in the budget.
    tokio::select! {
        biased;
        () = &mut taken_over => return Err(cut(Ending::TakenOver)),
        () = state.shutdown.cancelled() => return Err(cut(Ending::Shutdown)),
        () = w.reserve(read_buffer) => {}
        () = tokio::time::sleep_until(crate::conn::far(state.config.body_idle_timeout)) => {
            return Err(cut(Ending::NoMemory));
        }
    }
    loop {
        let frame = tokio::select! {
            biased;
            () = &mut taken_over => return Err(cut(Ending::TakenOver)),
            () = state.shutdown.cancelled() => return Err(cut(Ending::Shutdown)),
            f = pace.frame(&mut body) => f,
        };
        let frame = match frame {
            Err(ending) => return Err(cut(ending)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(cut(Ending::ClientGone(e.to_string()))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers mean nothing here
        };
        match w.push(&data).await {
            Ok(()) => {}
            Err(StoreError::ExceedsLength { .. }) => {
                return Err(cut(Ending::ClientGone(format!(
                    "body is longer than the {len} bytes of Content-Range {start}-{}",
                    end - 1
                ))));
            }
            Err(e) => return Err(ApiError::from(e).closing()),
        }
    }
    if w.remaining() > 0 {
        return Err(cut(Ending::ClientGone(format!(
            "body ended after {} of the {len} bytes of Content-Range {start}-{}",
            w.received(),
            end - 1
        ))));
    }
    Ok(w.commit().await?)
}
