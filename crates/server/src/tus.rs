//! tus 1.0 with all nine extensions (creation, creation-with-upload, creation-defer-length,
//! expiration, checksum, checksum-trailer, termination, concatenation,
//! concatenation-unfinished): a thin translation between HTTP and the upload engine.

use crate::error::ApiError;
use crate::headers::{
    content_length, h, has_body, header_str, set, set_repr_digest, upload_metadata, want_digest,
};
use crate::lookup::{has_wanted_digest, load, wait_for_digest};
use crate::pipeline::{self, Dialect, Plan};
use crate::receive::Verify;
use crate::{AppState, Ctx};
use axum::body::Body;
use ferry_proto::checksum::{self, Checksum};
use ferry_proto::concat::{Concat, PartUrls, part_path};
use ferry_proto::digest::WantDigest;
use ferry_proto::http as http_grammar;
use ferry_proto::{Metadata, UploadId, tus};
use ferry_store::data::DataCapabilities;
use ferry_store::{NewUpload, Protocol, UploadInfo, UploadKind};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// The extensions announced by OPTIONS, in that order, for a data store that can do `caps`:
/// concatenation only where the store serves finals from their parts.
pub fn extensions(caps: DataCapabilities) -> String {
    let mut list = vec![
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "checksum-trailer",
        "termination",
    ];
    if caps.concatenation {
        list.extend(["concatenation", "concatenation-unfinished"]);
    }
    list.join(",")
}

/// tus's status for a checksum mismatch.
pub fn checksum_mismatch() -> StatusCode {
    StatusCode::from_u16(460).expect("460 is a valid status code")
}

type Reply = Result<Response<Body>, ApiError>;

fn require_version(headers: &HeaderMap) -> Result<(), ApiError> {
    let v = header_str(headers, tus::TUS_RESUMABLE)?.unwrap_or("");
    tus::check_tus_resumable(v).map_err(ApiError::from)
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

fn set_expires(resp: &mut Response<Body>, info: &UploadInfo) {
    if let Some(ms) = info.expires_ms {
        let when = UNIX_EPOCH + Duration::from_millis(ms);
        set(resp, tus::UPLOAD_EXPIRES, httpdate::fmt_http_date(when));
    }
}

/// After a body completed an upload: the digests the client asked for go into the answer (no
/// HEAD needed to verify), and a SHA-256 still missing starts computing.
async fn answer_digest(
    state: &AppState,
    resp: &mut Response<Body>,
    want: Option<WantDigest>,
    info: &UploadInfo,
) {
    let Some(want) = want else { return };
    if !info.is_complete() {
        return;
    }
    if !has_wanted_digest(info, want) {
        state.uploads.ensure_digests(info, want).await;
    }
    set_repr_digest(resp, info);
}

/// OPTIONS on the collection or an upload: what this server offers.
pub fn options(state: &AppState) -> Response<Body> {
    let mut r = base_response(StatusCode::NO_CONTENT);
    set(&mut r, tus::TUS_VERSION_HEADER, tus::SUPPORTED_VERSIONS);
    set(
        &mut r,
        tus::TUS_EXTENSION,
        extensions(state.uploads.capabilities()),
    );
    set(
        &mut r,
        tus::TUS_CHECKSUM_ALGORITHM,
        checksum::supported_list(),
    );
    if let Some(max) = state.config.max_size {
        set(&mut r, tus::TUS_MAX_SIZE, max);
    }
    // PATCH discovery (RFC 5789): tus appends, and the IETF draft's appends.
    set(
        &mut r,
        "accept-patch",
        format!(
            "{}, {}",
            tus::OFFSET_OCTET_STREAM,
            ferry_proto::ietf::PARTIAL_UPLOAD
        ),
    );
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

/// How the request's bytes are verified: `Upload-Checksum` header (unknown algorithm → 400
/// before any byte is read), or a trailer announced with `Trailer: Upload-Checksum`.
fn verification(headers: &HeaderMap) -> Result<Verify, ApiError> {
    if let Some(v) = header_str(headers, tus::UPLOAD_CHECKSUM)? {
        return Ok(Verify::Header(Checksum::parse(v)?));
    }
    let announced = headers.get_all(header::TRAILER).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| http_grammar::list_contains(s, tus::UPLOAD_CHECKSUM))
    });
    Ok(if announced {
        Verify::Trailer
    } else {
        Verify::None
    })
}

/// POST on the collection: creation (with upload, deferred length, partial or final).
pub async fn create(state: Arc<AppState>, ctx: &Ctx, req: Request<Body>) -> Reply {
    let headers = req.headers();
    let body_follows = has_body(&req);
    let fail = |e: ApiError| if body_follows { e.closing() } else { e };
    require_version(headers).map_err(fail)?;
    // Not announced, and refused rather than ignored (a part taken for a regular upload would
    // never become a final), before it counts against the client's creation rate.
    if headers.contains_key(tus::UPLOAD_CONCAT) && !state.uploads.capabilities().concatenation {
        return Err(fail(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this server's storage cannot concatenate uploads (no concatenation extension)",
        )));
    }
    state.admit_creation(ctx, headers).map_err(fail)?;
    let concat = match header_str(headers, tus::UPLOAD_CONCAT).map_err(fail)? {
        Some(v) => Some(Concat::parse(v).map_err(|e| fail(e.into()))?),
        None => None,
    };
    let metadata = upload_metadata(headers, state.config.max_metadata).map_err(fail)?;
    if let Some(Concat::Final(urls)) = concat {
        if body_follows {
            return Err(fail(ApiError::new(
                StatusCode::FORBIDDEN,
                "a final upload takes no body: its bytes are its parts'",
            )));
        }
        if headers.contains_key(tus::UPLOAD_LENGTH)
            || headers.contains_key(tus::UPLOAD_DEFER_LENGTH)
        {
            return Err(ApiError::bad_request(
                "a final upload takes no Upload-Length: it is the sum of its parts",
            ));
        }
        return create_final(state, ctx, headers, &urls, metadata).await;
    }
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
    let verify = if body_follows {
        check_content_type(headers).map_err(fail)?;
        if let (Some(cl), Some(l)) = (content_length(&req), length)
            && cl > l
        {
            return Err(fail(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body of {cl} bytes is longer than Upload-Length {l}"),
            )));
        }
        verification(headers).map_err(fail)?
    } else {
        Verify::None
    };
    let kind = match concat {
        Some(Concat::Partial) => UploadKind::Partial,
        _ => UploadKind::Regular,
    };
    let info = state
        .uploads
        .create(NewUpload {
            length,
            metadata,
            protocol: Protocol::Tus,
            kind,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(e.into()))?;
    state.created(ctx, headers, &info);
    let location = state.upload_url(headers, info.id);
    tracing::info!(upload = %info.id.tag(), length = ?info.length, "created");
    let mut resp = base_response(StatusCode::CREATED);
    set(&mut resp, "location", &location);
    set_expires(&mut resp, &info);
    if !body_follows {
        return Ok(resp);
    }
    // creation-with-upload: the body holds the first bytes.
    let plan = Plan {
        expected: content_length(&req),
        verify,
        ..Plan::default()
    };
    let written = pipeline::first_body(&state, &Tus::Creation, info, req, plan, &location).await?;
    set(&mut resp, tus::UPLOAD_OFFSET, written.info.offset);
    set_expires(&mut resp, &written.info);
    answer_digest(&state, &mut resp, written.want, &written.info).await;
    Ok(resp)
}

/// Resolves the URLs of `Upload-Concat: final;...` to ids of this server's uploads.
fn part_ids(
    state: &AppState,
    headers: &HeaderMap,
    urls: &[String],
) -> Result<Vec<UploadId>, ApiError> {
    let files = format!("{}/files/", state.config.base_path);
    let own = state.own_authorities(headers);
    let at = PartUrls {
        files: &files,
        public_url: state.config.public_url.as_deref(),
        own: &own,
    };
    urls.iter()
        .map(|u| {
            let id = part_path(u, at).ok_or_else(|| {
                ApiError::bad_request(format!("{u:?} is not an upload of this server"))
            })?;
            UploadId::parse(id)
                .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no such upload {u:?}")))
        })
        .collect()
}

async fn create_final(
    state: Arc<AppState>,
    ctx: &Ctx,
    headers: &HeaderMap,
    urls: &[String],
    metadata: Metadata,
) -> Reply {
    let parts = part_ids(&state, headers, urls)?;
    let info = state.uploads.create_final(parts, metadata).await?;
    state.created(ctx, headers, &info);
    tracing::info!(upload = %info.id.tag(), parts = urls.len(), complete = info.is_complete(), "final created");
    let mut resp = base_response(StatusCode::CREATED);
    set(&mut resp, "location", state.upload_url(headers, info.id));
    set_expires(&mut resp, &info);
    Ok(resp)
}

/// The relative URL of an upload (what `Upload-Concat` echoes).
fn relative_url(state: &AppState, id: UploadId) -> String {
    format!("{}/files/{id}", state.config.base_path)
}

fn upload_headers(state: &AppState, resp: &mut Response<Body>, info: &UploadInfo) {
    let final_parts = match &info.kind {
        UploadKind::Final { parts } => Some(parts),
        _ => None,
    };
    // concatenation-unfinished: a final's offset means nothing until all parts are done.
    if final_parts.is_none() || info.is_complete() {
        set(resp, tus::UPLOAD_OFFSET, info.offset);
    }
    match (info.length, final_parts) {
        (Some(l), _) => set(resp, tus::UPLOAD_LENGTH, l),
        (None, None) => set(resp, tus::UPLOAD_DEFER_LENGTH, 1),
        (None, Some(_)) => {}
    }
    match final_parts {
        Some(parts) => {
            let urls: Vec<String> = parts.iter().map(|p| relative_url(state, *p)).collect();
            set(resp, tus::UPLOAD_CONCAT, Concat::Final(urls).format());
        }
        None if info.kind == UploadKind::Partial => set(resp, tus::UPLOAD_CONCAT, "partial"),
        None => {}
    }
    if !info.metadata.is_empty() {
        set(resp, tus::UPLOAD_METADATA, info.metadata.format());
    }
    set_expires(resp, info);
    set_repr_digest(resp, info);
}

/// HEAD on an upload: the committed offset. Never waits for a writer.
pub async fn head(state: Arc<AppState>, id: UploadId, req: Request<Body>) -> Reply {
    require_version(req.headers())?;
    let mut info = load(&state, id).await?;
    if let Some(want) = want_digest(req.headers()) {
        info = wait_for_digest(&state, info, want).await?;
    }
    let mut resp = base_response(StatusCode::OK);
    upload_headers(&state, &mut resp, &info);
    // concatenation: "The Upload-Length header MUST be included if the length of the final
    // resource can be calculated at the time of the request". A final whose parts are still
    // being uploaded has no length of its own yet; the parts' declared lengths give it.
    if let UploadKind::Final { parts } = &info.kind
        && info.length.is_none()
        && let Some(length) = parts_length(&state, parts).await?
    {
        set(&mut resp, tus::UPLOAD_LENGTH, length);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Sum of the parts' lengths, if every part's length is known (parts deleted by their client
/// but kept for this final count too).
async fn parts_length(state: &AppState, parts: &[UploadId]) -> Result<Option<u64>, ApiError> {
    let mut total = 0u64;
    for p in parts {
        let Some(length) = state.uploads.meta().get(*p).await?.and_then(|i| i.length) else {
            return Ok(None);
        };
        let Some(sum) = total.checked_add(length) else {
            return Ok(None);
        };
        total = sum;
    }
    Ok(Some(total))
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
    let plan = Plan {
        expected: content_length(&req),
        verify: verification(headers).map_err(fail)?,
        declare: new_length,
        completes: false,
    };
    let dialect = Tus::Patch {
        offset,
        new_length,
        body_len: plan.expected,
    };
    let written = pipeline::append(&state, &dialect, id, req, plan).await?;
    let mut resp = base_response(StatusCode::NO_CONTENT);
    set(&mut resp, tus::UPLOAD_OFFSET, written.info.offset);
    set_expires(&mut resp, &written.info);
    answer_digest(&state, &mut resp, written.want, &written.info).await;
    Ok(resp)
}

/// What tus makes of the steps of the pipeline.
enum Tus {
    /// creation-with-upload: the upload is new, nothing to check.
    Creation,
    /// A PATCH and what it claims.
    Patch {
        offset: u64,
        new_length: Option<u64>,
        body_len: Option<u64>,
    },
}

impl Dialect for Tus {
    fn check(&self, info: &UploadInfo) -> Result<(), ApiError> {
        match *self {
            Tus::Creation => Ok(()),
            Tus::Patch {
                offset,
                new_length,
                body_len,
            } => check_patch(info, offset, new_length, body_len),
        }
    }

    fn mismatch(&self) -> (StatusCode, &'static str) {
        (checksum_mismatch(), "Upload-Checksum")
    }

    fn overrun_ends_upload(&self, _length: u64) -> Option<ApiError> {
        None
    }

    fn inconsistent(&self, detail: String) -> ApiError {
        ApiError::bad_request(detail)
    }

    fn resumes_failed_creation(&self) -> bool {
        // tus clients read Location from a 201 only.
        false
    }
}

fn check_patch(
    info: &UploadInfo,
    offset: u64,
    new_length: Option<u64>,
    body_len: Option<u64>,
) -> Result<(), ApiError> {
    if matches!(info.kind, UploadKind::Final { .. }) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a final upload cannot be patched: its bytes are its parts'",
        ));
    }
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

/// DELETE on an upload (termination). Deleting a part that a final uses hides it; the final
/// keeps its bytes.
pub async fn delete(state: Arc<AppState>, id: UploadId, req: Request<Body>) -> Reply {
    require_version(req.headers())?;
    // An expired upload is gone for every request (HEAD, PATCH and GET answer 410): DELETE
    // agrees instead of pretending to terminate it. The sweeper frees it.
    load(&state, id).await?;
    state.uploads.delete(id).await?;
    tracing::info!(upload = %id.tag(), "terminated");
    Ok(base_response(StatusCode::NO_CONTENT))
}

/// Methods allowed on the collection.
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
    match http_grammar::parse_method_override(s) {
        Some("PATCH") => Ok(Method::PATCH),
        Some("DELETE") => Ok(Method::DELETE),
        Some("HEAD") => Ok(Method::HEAD),
        Some("GET") => Ok(Method::GET),
        Some("OPTIONS") => Ok(Method::OPTIONS),
        Some("POST") => Ok(Method::POST),
        _ => Err(ApiError::bad_request(
            "X-HTTP-Method-Override must be one of PATCH, DELETE, HEAD, GET, OPTIONS, POST",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_follow_what_the_store_can_do() {
        let all = extensions(DataCapabilities::ALL);
        assert_eq!(
            all,
            "creation,creation-with-upload,creation-defer-length,expiration,checksum,\
             checksum-trailer,termination,concatenation,concatenation-unfinished"
        );
        let none = extensions(DataCapabilities {
            concatenation: false,
            ..DataCapabilities::ALL
        });
        assert!(!none.contains("concatenation"), "{none}");
        assert!(none.ends_with("termination"), "{none}");
    }
}
