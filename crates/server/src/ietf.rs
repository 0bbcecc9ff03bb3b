//! The IETF "Resumable Uploads for HTTP" draft (interop versions 3 to 8) on the same
//! `/files/` endpoint as tus: a request carrying `Upload-Draft-Interop-Version` lands here.
//!
//! Like the tus module this is only a translation: uploads live in the same
//! [`ferry_store::Uploads`] engine (created with [`Protocol::Ietf`]), bodies go through the same
//! [`receive`] loop (checkpoints, commit on every way a body can end), a new request takes a busy
//! upload over through the same lease, and every offset in a response has been committed under
//! the `--sync` policy. What differs between interop versions (header names, media type,
//! problem types, `Upload-Limit` spelling) comes from [`Draft`].
//!
//! No `104 (Upload Resumption Supported)` interim response is sent: hyper 1.x's server has no
//! way to send 1xx responses (other than its own `100 Continue`). Clients learn the upload's
//! URL from the final `201`, which the draft allows (its "careful" creation).

use crate::error::ApiError;
use crate::headers::{
    content_length, h, has_body, header_str, set, set_repr_digest, upload_metadata, want_digest,
};
use crate::lookup::{load, wait_for_digest};
use crate::pipeline::{self, Dialect, Plan};
use crate::receive::Verify;
use crate::{AppState, Ctx};
use axum::body::Body;
use ferry_proto::UploadId;
use ferry_proto::checksum::{Checksum, ChecksumAlgorithm};
use ferry_proto::digest::parse_digest_field;
use ferry_proto::ietf::{self, Draft, Problem, UploadLimit};
use ferry_store::{NewUpload, Protocol, UploadInfo, UploadKind};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use std::sync::Arc;

type Reply = Result<Response<Body>, ApiError>;

/// Methods allowed on the collection for draft requests.
pub const COLLECTION_METHODS: &str = "OPTIONS, POST, PUT, PATCH";
/// Methods allowed on an upload for draft requests.
pub const UPLOAD_METHODS: &str = "OPTIONS, HEAD, GET, PATCH, DELETE";

/// Whether the request speaks the draft.
pub fn is_ietf(headers: &HeaderMap) -> bool {
    headers.contains_key(ietf::UPLOAD_DRAFT_INTEROP_VERSION)
}

/// Every draft answer echoes the interop version and carries no tus header.
fn decorate(draft: Option<Draft>, e: ApiError) -> ApiError {
    let e = e.without_tus();
    match draft {
        Some(d) => e.with_header(h(ietf::UPLOAD_DRAFT_INTEROP_VERSION), d.interop),
        None => e.with_header(
            h(ietf::UPLOAD_DRAFT_INTEROP_VERSION),
            ietf::CURRENT_INTEROP_VERSION,
        ),
    }
}

fn response(draft: Draft, status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    set(&mut r, ietf::UPLOAD_DRAFT_INTEROP_VERSION, draft.interop);
    r
}

/// A draft problem (RFC 9457 body when the interop version defines the type; the same status
/// and a text line otherwise).
fn problem(draft: Draft, p: Problem, detail: String) -> ApiError {
    let status = StatusCode::from_u16(p.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let known = match p {
        Problem::MismatchingOffset { .. } | Problem::CompletedUpload => draft.offset_problems,
        Problem::InconsistentLength => draft.length_problem,
    };
    let json = p.to_json(&detail);
    let mut e = ApiError::new(status, detail);
    if known {
        e = e.with_problem(json);
    }
    if let Problem::MismatchingOffset { expected, .. } = p {
        e = e.with_header(h(ietf::UPLOAD_OFFSET), expected);
    }
    e
}

fn inconsistent(draft: Draft, detail: String) -> ApiError {
    problem(draft, Problem::InconsistentLength, detail)
}

/// The limits that apply to `info` (or, without one, to a new upload).
fn limits(state: &AppState, info: Option<&UploadInfo>) -> UploadLimit {
    let max_age = match info {
        Some(i) => i
            .expires_ms
            .map(|e| e.saturating_sub(ferry_store::model::now_ms()) / 1000),
        None => state.uploads.expiry().unfinished.map(|d| d.as_secs()),
    };
    UploadLimit {
        max_size: state.config.max_size,
        max_age,
        ..UploadLimit::default()
    }
}

fn set_limits(resp: &mut Response<Body>, draft: Draft, limit: UploadLimit) {
    if let Some(key) = draft.limit_age_key
        && !limit.is_empty()
    {
        set(resp, ietf::UPLOAD_LIMIT, limit.format(key));
    }
}

/// `Upload-Offset`, completeness, `Upload-Length` when known, `Repr-Digest` once complete.
fn state_headers(resp: &mut Response<Body>, draft: Draft, info: &UploadInfo) {
    set(resp, ietf::UPLOAD_OFFSET, info.offset);
    set(
        resp,
        draft.completeness_header(),
        draft.format_complete(info.is_complete()),
    );
    if let Some(l) = info.length {
        set(resp, ietf::UPLOAD_LENGTH, l);
    }
    set_repr_digest(resp, info);
}

/// The request's interop version (400 when unsupported or malformed).
fn draft_of(headers: &HeaderMap) -> Result<Draft, ApiError> {
    let v = header_str(headers, ietf::UPLOAD_DRAFT_INTEROP_VERSION)?.unwrap_or("");
    Draft::from_header(v).map_err(ApiError::from)
}

/// The completeness header as "is complete"; `None` when absent.
fn complete_of(draft: Draft, headers: &HeaderMap) -> Result<Option<bool>, ApiError> {
    match header_str(headers, draft.completeness_header())? {
        Some(v) => Ok(Some(draft.parse_complete(v)?)),
        None => Ok(None),
    }
}

fn size_of(headers: &HeaderMap, name: &'static str) -> Result<Option<u64>, ApiError> {
    match header_str(headers, name)? {
        Some(v) => Ok(Some(ietf::parse_size(name, v)?)),
        None => Ok(None),
    }
}

/// `Content-Digest` (RFC 9530): the first member with an algorithm ferry computes. A field
/// naming none of them is ignored, as RFC 9530 allows.
fn content_digest(headers: &HeaderMap) -> Result<Verify, ApiError> {
    let Some(v) = header_str(headers, "content-digest")? else {
        return Ok(Verify::None);
    };
    for (name, digest) in parse_digest_field(v)? {
        let Some(algorithm) = ChecksumAlgorithm::from_digest_key(&name) else {
            continue;
        };
        if digest.len() != algorithm.digest_len() {
            return Err(ApiError::bad_request(format!(
                "Content-Digest: a {name} digest has {} bytes, got {}",
                algorithm.digest_len(),
                digest.len()
            )));
        }
        return Ok(Verify::Header(Checksum { algorithm, digest }));
    }
    Ok(Verify::None)
}

fn check_max_size(state: &AppState, draft: Draft, length: u64) -> Result<(), ApiError> {
    match state.config.max_size {
        Some(max) if length > max => {
            let mut e = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("length {length} exceeds the maximum size of {max} bytes"),
            );
            // A 413 caused by the limits must carry them.
            if let Some(key) = draft.limit_age_key {
                e = e.with_header(h(ietf::UPLOAD_LIMIT), limits(state, None).format(key));
            }
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Requests on the collection (`/files/`): OPTIONS, or creation by POST, PUT or PATCH.
pub async fn collection(
    state: Arc<AppState>,
    ctx: &Ctx,
    method: &Method,
    req: Request<Body>,
) -> Reply {
    let draft = draft_of(req.headers()).map_err(|e| decorate(None, e))?;
    let result = match *method {
        Method::OPTIONS => Ok(options(&state, draft)),
        Method::POST | Method::PUT | Method::PATCH => create(state, ctx, draft, req).await,
        _ => Err(crate::method_not_allowed(COLLECTION_METHODS)),
    };
    result.map_err(|e| decorate(Some(draft), e))
}

/// Requests on an upload resource.
pub async fn resource(
    state: Arc<AppState>,
    id: UploadId,
    method: &Method,
    req: Request<Body>,
) -> Reply {
    let draft = draft_of(req.headers()).map_err(|e| decorate(None, e))?;
    let result = match *method {
        Method::OPTIONS => Ok(options(&state, draft)),
        Method::HEAD => head(&state, draft, id, req.headers()).await,
        Method::PATCH => append(state, draft, id, req).await,
        Method::DELETE => delete(&state, draft, id).await,
        Method::GET => crate::download::get(state, id, method, req.headers()).await,
        _ => Err(crate::method_not_allowed(UPLOAD_METHODS)),
    };
    result.map_err(|e| decorate(Some(draft), e))
}

/// OPTIONS: `Accept-Patch` with the draft's media type, and the limits.
fn options(state: &AppState, draft: Draft) -> Response<Body> {
    let mut r = response(draft, StatusCode::NO_CONTENT);
    set(&mut r, "accept-patch", ietf::PARTIAL_UPLOAD);
    set_limits(&mut r, draft, limits(state, None));
    r
}

/// Creation: any of POST/PUT/PATCH on the collection with the completeness header; the body (if
/// any) is the start of the data and is streamed to disk before the 201 is sent.
async fn create(state: Arc<AppState>, ctx: &Ctx, draft: Draft, req: Request<Body>) -> Reply {
    let headers = req.headers();
    let body_follows = has_body(&req);
    let fail = |e: ApiError| if body_follows { e.closing() } else { e };
    state.admit_creation(ctx, headers).map_err(fail)?;
    let complete = complete_of(draft, headers).map_err(fail)?.ok_or_else(|| {
        fail(ApiError::bad_request(format!(
            "{} is required to create a resumable upload",
            draft.completeness_title()
        )))
    })?;
    let upload_length = size_of(headers, ietf::UPLOAD_LENGTH).map_err(fail)?;
    let content_len = content_length(&req);
    // The draft's two length indicators: Upload-Length, and Content-Length with ?1.
    let implied = if complete { content_len } else { None };
    if let (Some(a), Some(b)) = (upload_length, implied)
        && a != b
    {
        return Err(fail(inconsistent(
            draft,
            format!("Upload-Length {a} but the complete content is {b} bytes"),
        )));
    }
    let length = upload_length.or(implied);
    if let (Some(l), Some(cl)) = (length, content_len)
        && cl > l
    {
        return Err(fail(inconsistent(
            draft,
            format!("content of {cl} bytes is longer than the upload length {l}"),
        )));
    }
    if let Some(l) = length {
        check_max_size(&state, draft, l).map_err(fail)?;
    }
    let verify = content_digest(headers).map_err(fail)?;
    // tus-js-client sends its tus metadata in IETF mode too: keep it (file name for GET).
    let metadata = upload_metadata(headers, state.config.max_metadata).map_err(fail)?;
    let info = state
        .uploads
        .create(NewUpload {
            length,
            metadata,
            protocol: Protocol::Ietf,
            kind: UploadKind::Regular,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(e.into()))?;
    state.created(ctx, headers, &info);
    let location = state.upload_url(headers, info.id);
    tracing::info!(upload = %info.id.tag(), length = ?info.length, interop = draft.interop, "created (ietf)");
    let mut resp = response(draft, StatusCode::CREATED);
    set(&mut resp, "location", &location);
    if !body_follows {
        let info = if complete {
            let plan = Plan {
                completes: true,
                ..Plan::default()
            };
            pipeline::append(&state, &Ietf::Creation(draft), info.id, req, plan)
                .await
                .map_err(|e| e.with_header(header::LOCATION, &location))?
                .info
        } else {
            info
        };
        state_headers(&mut resp, draft, &info);
        set_limits(&mut resp, draft, limits(&state, Some(&info)));
        return Ok(resp);
    }
    let plan = Plan {
        expected: content_len,
        verify,
        declare: None,
        completes: complete,
    };
    let written =
        pipeline::first_body(&state, &Ietf::Creation(draft), info, req, plan, &location).await?;
    state_headers(&mut resp, draft, &written.info);
    set_limits(&mut resp, draft, limits(&state, Some(&written.info)));
    Ok(resp)
}

/// HEAD: the committed state. Never waits for a writer (unless `Want-Repr-Digest` asks for the
/// digest of a finished upload, bounded).
async fn head(state: &AppState, draft: Draft, id: UploadId, headers: &HeaderMap) -> Reply {
    let mut info = load(state, id).await?;
    if let Some(want) = want_digest(headers) {
        info = wait_for_digest(state, info, want).await?;
    }
    let mut resp = response(draft, StatusCode::NO_CONTENT);
    state_headers(&mut resp, draft, &info);
    set_limits(&mut resp, draft, limits(state, Some(&info)));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// What an append asks for, checked against the committed state.
struct AppendRequest {
    offset: u64,
    complete: bool,
    upload_length: Option<u64>,
    content_len: Option<u64>,
}

fn check_append(draft: Draft, info: &UploadInfo, r: &AppendRequest) -> Result<(), ApiError> {
    if matches!(info.kind, UploadKind::Final { .. }) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a final (concatenated) upload cannot be appended to",
        ));
    }
    let empty = r.content_len == Some(0);
    if info.is_complete() {
        // Finishing again with no content at the same offset changes nothing: answered as
        // success, so a client whose last response was lost can still complete.
        if empty && r.complete && r.offset == info.offset {
            return Ok(());
        }
        let detail = format!("the upload is complete at {} bytes", info.offset);
        return Err(if draft.append_after_complete_is_length && !empty {
            inconsistent(draft, detail)
        } else {
            problem(draft, Problem::CompletedUpload, detail)
        });
    }
    if r.offset != info.offset {
        return Err(problem(
            draft,
            Problem::MismatchingOffset {
                expected: info.offset,
                provided: r.offset,
            },
            format!(
                "Upload-Offset {} does not match the upload's offset {}",
                r.offset, info.offset
            ),
        ));
    }
    let implied = match (r.complete, r.content_len) {
        (true, Some(cl)) => Some(r.offset.saturating_add(cl)),
        _ => None,
    };
    let mut known = info.length;
    for indicated in [r.upload_length, implied].into_iter().flatten() {
        match known {
            Some(l) if l != indicated => {
                return Err(inconsistent(
                    draft,
                    format!("length {indicated} contradicts the upload length {l}"),
                ));
            }
            _ => known = Some(indicated),
        }
    }
    if let Some(l) = known {
        if l < info.offset {
            return Err(inconsistent(
                draft,
                format!("length {l} is below the offset {}", info.offset),
            ));
        }
        if let Some(cl) = r.content_len
            && r.offset.saturating_add(cl) > l
        {
            return Err(inconsistent(
                draft,
                format!(
                    "{cl} bytes at offset {} go past the upload length {l}",
                    r.offset
                ),
            ));
        }
    }
    Ok(())
}

/// PATCH on an upload resource: append at `Upload-Offset`.
async fn append(state: Arc<AppState>, draft: Draft, id: UploadId, req: Request<Body>) -> Reply {
    let headers = req.headers();
    let body_follows = has_body(&req);
    let fail = |e: ApiError| if body_follows { e.closing() } else { e };
    if draft.partial_upload_type {
        let ct = header_str(headers, header::CONTENT_TYPE.as_str())
            .map_err(fail)?
            .unwrap_or("");
        if !ferry_proto::tus::media_type_is(ct, ietf::PARTIAL_UPLOAD) {
            return Err(fail(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type must be {}", ietf::PARTIAL_UPLOAD),
            )));
        }
    }
    let complete = complete_of(draft, headers).map_err(fail)?.ok_or_else(|| {
        fail(ApiError::bad_request(format!(
            "{} is required",
            draft.completeness_title()
        )))
    })?;
    let offset = size_of(headers, ietf::UPLOAD_OFFSET)
        .map_err(fail)?
        .ok_or_else(|| fail(ApiError::bad_request("Upload-Offset is required")))?;
    let r = AppendRequest {
        offset,
        complete,
        upload_length: size_of(headers, ietf::UPLOAD_LENGTH).map_err(fail)?,
        content_len: content_length(&req),
    };
    if let Some(l) = r.upload_length {
        check_max_size(&state, draft, l).map_err(fail)?;
    }
    let verify = content_digest(headers).map_err(fail)?;
    let implied = match (r.complete, r.content_len) {
        (true, Some(cl)) => Some(offset.saturating_add(cl)),
        _ => None,
    };
    let declare = r.upload_length.or(implied);
    if let Some(l) = declare {
        check_max_size(&state, draft, l).map_err(fail)?;
    }
    let plan = Plan {
        expected: r.content_len,
        verify,
        declare,
        completes: complete,
    };
    let written = pipeline::append(&state, &Ietf::Append(draft, r), id, req, plan).await?;
    let mut resp = response(draft, StatusCode::NO_CONTENT);
    state_headers(&mut resp, draft, &written.info);
    set_limits(&mut resp, draft, limits(&state, Some(&written.info)));
    Ok(resp)
}

/// What the draft makes of the steps of the pipeline.
enum Ietf {
    /// The creating request: nothing to check.
    Creation(Draft),
    /// An append and what it claims.
    Append(Draft, AppendRequest),
}

impl Ietf {
    fn draft(&self) -> Draft {
        match self {
            Ietf::Creation(d) | Ietf::Append(d, _) => *d,
        }
    }
}

impl Dialect for Ietf {
    fn check(&self, info: &UploadInfo) -> Result<(), ApiError> {
        match self {
            Ietf::Creation(_) => Ok(()),
            Ietf::Append(draft, r) => check_append(*draft, info, r),
        }
    }

    fn mismatch(&self) -> (StatusCode, &'static str) {
        // RFC 9530 names no status; the draft's problems are 400s.
        (StatusCode::BAD_REQUEST, "Content-Digest")
    }

    fn overrun_ends_upload(&self, length: u64) -> Option<ApiError> {
        // The draft: once the offset would pass the length, the upload resource is invalid
        // and every further interaction is refused.
        Some(inconsistent(
            self.draft(),
            format!("content goes past the upload length {length}; the upload was discarded"),
        ))
    }

    fn inconsistent(&self, detail: String) -> ApiError {
        inconsistent(self.draft(), detail)
    }

    fn resumes_failed_creation(&self) -> bool {
        true
    }
}

/// DELETE: cancels the upload (an in-flight request for it is taken over first).
async fn delete(state: &AppState, draft: Draft, id: UploadId) -> Reply {
    load(state, id).await?;
    state.uploads.delete(id).await?;
    tracing::info!(upload = %id.tag(), "cancelled (ietf)");
    Ok(response(draft, StatusCode::NO_CONTENT))
}
