//! Reading request headers and writing response headers: the helpers every handler shares.
//! What a header *means* is parsed in `ferry_proto`; this module only moves values between
//! `http` types and those parsers.

use crate::error::ApiError;
use axum::body::Body;
use ferry_proto::digest::WantDigest;
use ferry_store::UploadInfo;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};

pub(crate) fn h(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

pub(crate) fn set(resp: &mut Response<Body>, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        resp.headers_mut().insert(h(name), v);
    }
}

/// `Upload-Expires` (an HTTP date) when the upload has an expiry.
/// One header as text. A header sent twice is refused: two values for one fact is a lie
/// about the request, not something to pick from.
pub(crate) fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    let mut all = headers.get_all(name).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::bad_request(format!("{name} must be sent once")));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("{name} must be visible ASCII")))
}

/// Whether the request carries a body (declared length > 0, or chunked).
pub(crate) fn has_body(req: &Request<Body>) -> bool {
    use http_body::Body as _;
    req.body().size_hint().exact() != Some(0)
}

pub(crate) fn content_length(req: &Request<Body>) -> Option<u64> {
    use http_body::Body as _;
    req.body().size_hint().exact()
}

/// `Repr-Digest` (RFC 9530) with every whole-upload digest known so far.
pub(crate) fn set_repr_digest(resp: &mut Response<Body>, info: &UploadInfo) {
    if let Some(v) = info.digests.to_field() {
        set(resp, "repr-digest", v);
    }
}

/// What `Want-Repr-Digest` asks for, if sent.
pub(crate) fn want_digest(headers: &HeaderMap) -> Option<WantDigest> {
    let values: Vec<&str> = headers
        .get_all("want-repr-digest")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| WantDigest::parse(&values.join(",")))
}

/// The request's `Upload-Metadata` (tus syntax, also accepted on IETF creations and chunk
/// sessions), refused with 400 when larger than `max` bytes.
pub(crate) fn upload_metadata(
    headers: &HeaderMap,
    max: usize,
) -> Result<ferry_proto::Metadata, ApiError> {
    match header_str(headers, ferry_proto::tus::UPLOAD_METADATA)? {
        Some(m) if m.len() > max => Err(ApiError::bad_request(format!(
            "Upload-Metadata is {} bytes; this server accepts at most {max}",
            m.len()
        ))),
        Some(m) => Ok(ferry_proto::Metadata::parse(m)?),
        None => Ok(ferry_proto::Metadata::default()),
    }
}
