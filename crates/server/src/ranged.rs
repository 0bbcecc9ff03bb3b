//! Serving a stored representation with HTTP's conditional and range rules (RFC 9110 §13,
//! §14): `ETag`/`Last-Modified`, `If-Match`, `If-None-Match`, `If-Modified-Since`, `Range`
//! (single → 206, several → `multipart/byteranges`), `If-Range`, 416. Used by upload downloads
//! and shared directories alike; bytes stream from the store with bounded memory.

use crate::error::ApiError;
use axum::body::Body;
use bytes::Bytes;
use ferry_proto::digest::Digests;
use ferry_proto::range::{
    ETag, ETagList, IfRange, RangeRequest, format_content_range, format_unsatisfied, parse_range,
};
use ferry_store::StoreError;
use ferry_store::data::{ByteStream, failed_stream};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use std::time::{Duration, SystemTime};

/// What is being served.
#[derive(Debug, Clone)]
pub struct Representation {
    /// Length in bytes.
    pub len: u64,
    /// Strong validator that changes whenever the content does.
    pub etag: ETag,
    /// Modification time, if meaningful.
    pub last_modified: Option<SystemTime>,
    /// Digests of the content known so far (`Repr-Digest`).
    pub digests: Digests,
    /// `Content-Type`.
    pub content_type: HeaderValue,
    /// `Content-Disposition`, if any.
    pub disposition: Option<HeaderValue>,
    /// Byte ranges can be served (the store reads any range); else `Range` is ignored and
    /// `Accept-Ranges: none` says so (RFC 9110 §14.3).
    pub ranges: bool,
}

/// Opens `[start, end)` of the representation as a stream.
pub type Opener =
    Box<dyn Fn(u64, u64) -> BoxFuture<'static, Result<ByteStream, StoreError>> + Send + Sync>;

/// Caches may keep a copy for one user only, and must ask again before every use: the strong
/// `ETag` makes that a 304, and a deleted upload or a changed file shows at once.
pub const CACHE_CONTROL: &str = "private, no-cache";

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn base(rep: &Representation, status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::ACCEPT_RANGES,
        HeaderValue::from_static(if rep.ranges { "bytes" } else { "none" }),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if let Ok(v) = HeaderValue::from_str(&rep.etag.to_string()) {
        h.insert(header::ETAG, v);
    }
    if let Some(lm) = rep.last_modified
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(lm))
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Some(d) = rep.digests.to_field()
        && let Ok(v) = HeaderValue::from_str(&d)
    {
        h.insert("repr-digest", v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(d) = &rep.disposition {
        h.insert(header::CONTENT_DISPOSITION, d.clone());
    }
    r
}

/// A date validator is strong only if the content was last changed at least a second before
/// now (RFC 9110 §8.8.2.2): within the same second a change could go unseen.
fn date_is_strong(lm: SystemTime) -> bool {
    SystemTime::now()
        .duration_since(lm)
        .is_ok_and(|d| d >= Duration::from_secs(1))
}

/// Whether `last_modified` is later than `date`, at the one-second resolution of HTTP dates.
fn modified_after(last_modified: SystemTime, date: SystemTime) -> bool {
    let secs = |t: SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    secs(last_modified) > secs(date)
}

/// Answers GET or HEAD for `rep`.
pub async fn respond(
    headers: &HeaderMap,
    method: &Method,
    rep: Representation,
    open: Opener,
) -> Result<Response<Body>, ApiError> {
    let lm_text = rep.last_modified.map(httpdate::fmt_http_date);
    // Preconditions, in RFC 9110 §13.2.2 order.
    let failed = match header_str(headers, header::IF_MATCH) {
        Some(v) => Some("If-Match").filter(|_| !ETagList::parse(v).matches_strong(Some(&rep.etag))),
        // RFC 9110 §13.1.4: evaluated only without If-Match; an invalid date is ignored.
        None => header_str(headers, header::IF_UNMODIFIED_SINCE)
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .filter(|date| {
                rep.last_modified
                    .is_some_and(|lm| modified_after(lm, *date))
            })
            .map(|_| "If-Unmodified-Since"),
    };
    if let Some(which) = failed {
        let mut r = base(&rep, StatusCode::PRECONDITION_FAILED);
        *r.body_mut() = Body::from(format!("the representation changed ({which} failed)\n"));
        return Ok(r);
    }
    let not_modified = match header_str(headers, header::IF_NONE_MATCH) {
        Some(v) => ETagList::parse(v).matches_weak(Some(&rep.etag)),
        None => match (
            header_str(headers, header::IF_MODIFIED_SINCE),
            rep.last_modified,
        ) {
            (Some(ims), Some(lm)) => {
                httpdate::parse_http_date(ims).is_ok_and(|date| !modified_after(lm, date))
            }
            _ => false,
        },
    };
    if not_modified {
        return Ok(base(&rep, StatusCode::NOT_MODIFIED));
    }

    let mut ranges = match header_str(headers, header::RANGE) {
        Some(v) if method == Method::GET && rep.ranges => parse_range(v, rep.len),
        _ => RangeRequest::Full,
    };
    // If-Range: ranges only if the client's validator still matches, else the whole thing.
    if let Some(v) = header_str(headers, header::IF_RANGE) {
        let still = match IfRange::parse(v) {
            Some(IfRange::Tag(t)) => t.strong_eq(&rep.etag),
            Some(IfRange::Date(d)) => {
                lm_text.as_deref() == Some(d.as_str())
                    && rep.last_modified.is_some_and(date_is_strong)
            }
            None => false,
        };
        if !still {
            ranges = RangeRequest::Full;
        }
    }
    match ranges {
        RangeRequest::Unsatisfiable => {
            let mut r = base(&rep, StatusCode::RANGE_NOT_SATISFIABLE);
            if let Ok(v) = HeaderValue::from_str(&format_unsatisfied(rep.len)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            *r.body_mut() = Body::from("range not satisfiable\n");
            Ok(r)
        }
        RangeRequest::Full => {
            let mut r = base(&rep, StatusCode::OK);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, rep.content_type.clone());
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(rep.len));
            if method == Method::GET && rep.len > 0 {
                *r.body_mut() = Body::from_stream(open(0, rep.len).await?);
            }
            Ok(r)
        }
        RangeRequest::Ranges(rs) if rs.len() == 1 => {
            let (s, e) = rs[0];
            let mut r = base(&rep, StatusCode::PARTIAL_CONTENT);
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, rep.content_type.clone());
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(e - s + 1));
            if let Ok(v) = HeaderValue::from_str(&format_content_range(s, e, rep.len)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            *r.body_mut() = Body::from_stream(open(s, e + 1).await?);
            Ok(r)
        }
        RangeRequest::Ranges(rs) => Ok(multipart(&rep, rs, open)),
    }
}

/// `multipart/byteranges` with an exact Content-Length; parts are opened one after another.
fn multipart(rep: &Representation, ranges: Vec<(u64, u64)>, open: Opener) -> Response<Body> {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    let boundary: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let ctype = rep
        .content_type
        .to_str()
        .unwrap_or("application/octet-stream")
        .to_string();
    let heads: Vec<Bytes> = ranges
        .iter()
        .map(|&(s, e)| {
            Bytes::from(format!(
                "\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: {}\r\n\r\n",
                format_content_range(s, e, rep.len)
            ))
        })
        .collect();
    let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    let total: u64 = heads.iter().map(|h| h.len() as u64).sum::<u64>()
        + ranges.iter().map(|(s, e)| e - s + 1).sum::<u64>()
        + tail.len() as u64;
    let open = std::sync::Arc::new(open);
    let parts = futures_util::stream::iter(ranges.into_iter().zip(heads)).flat_map(
        move |((s, e), head)| {
            let open = open.clone();
            let data = futures_util::stream::once(async move { open(s, e + 1).await })
                .map(|r| r.unwrap_or_else(failed_stream))
                .flatten();
            futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(head) }).chain(data)
        },
    );
    let body = parts.chain(futures_util::stream::once(async move { Ok(tail) }));
    let mut r = base(rep, StatusCode::PARTIAL_CONTENT);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}")) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    *r.body_mut() = Body::from_stream(body);
    r
}
