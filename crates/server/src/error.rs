//! The one place where failures become HTTP responses.

use axum::body::Body;
use ferry_proto::{ProtoError, tus};
use ferry_store::StoreError;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

/// A request that ends in an error: a status, a one-line message for the body, and headers.
#[derive(Debug)]
pub struct ApiError {
    /// The status code.
    pub status: StatusCode,
    /// A short, human-readable reason.
    pub message: String,
    /// Extra headers (e.g. `Upload-Offset` on 409).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Close the connection after answering (the request body was not read).
    pub close: bool,
    /// An RFC 9457 problem-details body (`application/problem+json`) instead of the text line.
    pub problem: Option<String>,
    /// Send `Tus-Resumable` (off for answers to the IETF draft, which has no such header).
    pub tus: bool,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            headers: Vec::new(),
            close: false,
            problem: None,
            tus: true,
        }
    }

    /// Answers with a problem-details JSON body (already formatted) instead of the text line.
    pub fn with_problem(mut self, json: String) -> Self {
        self.problem = Some(json);
        self
    }

    /// Leaves out `Tus-Resumable` (the request spoke another protocol).
    pub fn without_tus(mut self) -> Self {
        self.tus = false;
        self
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 415 for a request body with a content coding (`Content-Encoding: gzip`, ...): upload
    /// bodies are stored byte for byte, so a coded body would be stored coded and its offsets
    /// would count coded bytes. RFC 9110 §15.5.16 / §12.5.3: answer 415 with
    /// `Accept-Encoding: identity`. The body is not read, so the connection closes.
    pub fn unsupported_encoding(coding: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content coding {coding:?} not supported; send the bytes as they are"),
        )
        .with_header(header::ACCEPT_ENCODING, "identity")
        .closing()
    }

    /// 500 for a failure the client can do nothing about. The cause may name files, databases
    /// or internals, so it goes to the log under a random reference, and the answer carries
    /// only the reference (for the operator to find it).
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        let reference = reference();
        tracing::error!(%reference, error = %ferry_proto::id::redact_ids(&cause.to_string()), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error; reference {reference} in the server's log"),
        )
    }

    /// 404 Not Found.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "no such upload")
    }

    /// Adds a header.
    pub fn with_header(mut self, name: HeaderName, value: impl ToString) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, v));
        }
        self
    }

    /// A 429 with `Retry-After`.
    pub fn too_many(message: &str, retry_after_secs: u64) -> Self {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
            .with_header(header::RETRY_AFTER, retry_after_secs)
    }

    /// Marks the connection for closing (used when a request body is left unread, so the
    /// client does not keep sending into a connection nobody reads).
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Renders the response.
    pub fn into_response(self) -> Response<Body> {
        let (body, content_type) = match self.problem {
            Some(json) => (json, ferry_proto::ietf::PROBLEM_JSON),
            None => (format!("{}\n", self.message), "text/plain; charset=utf-8"),
        };
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if self.tus {
            h.insert(
                HeaderName::from_static(tus::TUS_RESUMABLE),
                HeaderValue::from_static(tus::TUS_VERSION),
            );
        }
        for (k, v) in self.headers {
            h.insert(k, v);
        }
        if self.close {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<ProtoError> for ApiError {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::UnsupportedVersion(_) => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                format!("{e}; this server speaks tus {}", tus::SUPPORTED_VERSIONS),
            )
            .with_header(
                HeaderName::from_static(tus::TUS_VERSION_HEADER),
                tus::SUPPORTED_VERSIONS,
            ),
            ProtoError::InvalidId => ApiError::not_found(),
            ProtoError::UnsatisfiableRange(why) => {
                ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, why)
            }
            ProtoError::UnknownChecksumAlgorithm(_) => ApiError::bad_request(format!(
                "{e}; supported: {}",
                ferry_proto::checksum::supported_list()
            )),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("upload {id} does not exist"))
            }
            StoreError::Busy(_) => ApiError::new(
                StatusCode::LOCKED,
                "upload is busy: another request is writing it; retry",
            )
            .with_header(header::RETRY_AFTER, 1),
            // ENOSPC/EDQUOT: the store turns them into `StorageFull`; an `Io` that still
            // carries the kind (wrapped elsewhere) is the same condition.
            StoreError::StorageFull => storage_full(),
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %ferry_proto::id::redact_ids(&why), "storage unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the storage service is unavailable: the bytes committed so far are kept \
                     (see Upload-Offset); try again",
                )
                .with_header(header::RETRY_AFTER, 5)
            }
            StoreError::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                storage_full()
            }
            StoreError::TooManyUploads { max } => ApiError::too_many(
                &format!(
                    "the server holds {max} unfinished uploads, the most it keeps; finish or \
                     delete some, or retry later"
                ),
                UNFINISHED_RETRY_AFTER,
            ),
            // How much is free is the operator's business, not every client's.
            StoreError::NoSpaceFor { length, available } => {
                tracing::warn!(length, available, "refused an upload that does not fit");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!("an upload of {length} bytes does not fit in the server's storage"),
                )
            }
            StoreError::ExceedsLength { length } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body goes past the upload length of {length} bytes"),
            ),
            StoreError::TakenOver(_) | StoreError::Fenced { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "a newer request took over the bytes this one was writing; they were not recorded",
            ),
            StoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "upload changed underneath this request",
            ),
            StoreError::IsFinal(_) => ApiError::new(
                StatusCode::FORBIDDEN,
                "a final upload cannot be written: its bytes are its parts'",
            ),
            StoreError::NotPartial(id) => ApiError::bad_request(format!(
                "upload {id} was not created with Upload-Concat: partial"
            )),
            StoreError::WrongProtocol(id) => ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "upload {id} is a Content-Range chunk session: send its chunks with PUT and \
                     Content-Range to /chunks/{id}"
                ),
            ),
            StoreError::LengthMismatch { length, declared } => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "total length {declared} differs from the session's length of {length} bytes"
                ),
            ),
            e @ (StoreError::TooFragmented { .. }
            | StoreError::TooManyChunks { .. }
            | StoreError::DuplicatePart(_)
            | StoreError::TooManyParts { .. }
            | StoreError::TooManyFinals { .. }) => ApiError::bad_request(e.to_string()),
            StoreError::TooLarge { length, max } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{length} bytes exceed the maximum size of {max} bytes"),
            ),
            StoreError::OutOfRange { length } => ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the range goes past the upload's length of {length} bytes"),
            ),
            other @ (StoreError::AlreadyExists(_)
            | StoreError::Inconsistent(_)
            | StoreError::Metadata(_)
            | StoreError::WrongStore(_)
            | StoreError::Io(_)) => ApiError::internal(&other),
        }
    }
}

/// Seconds a client refused for the limit on unfinished uploads waits: the store counts them
/// again at most this often while at the limit.
const UNFINISHED_RETRY_AFTER: u64 = 10;

/// A random reference for one internal error (48 bits: unique enough to grep a log for).
fn reference() -> String {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: the time still tells errors apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 507 for a full disk (ENOSPC/EDQUOT) during a write or commit.
fn storage_full() -> ApiError {
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        "the server's storage is full: the bytes committed so far are kept (see \
         Upload-Offset); resume when space is freed",
    )
}
