//! The single error type of this crate.

/// Why a wire value was rejected.
///
/// The messages are short one-liners naming the offending header, suitable
/// for a `400 Bad Request` body. Values echoed back are truncated and escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A numeric header was not a plain non-negative decimal integer.
    #[error("{} must be a non-negative decimal integer", header_title(header))]
    InvalidNumber {
        /// Name of the header (any case; displayed in canonical case).
        header: &'static str,
    },
    /// A numeric header exceeded [`crate::http::MAX_NUMBER`].
    #[error("{} must not exceed {}", header_title(header), crate::http::MAX_NUMBER)]
    NumberTooLarge {
        /// Name of the header (any case; displayed in canonical case).
        header: &'static str,
    },
    /// `Upload-Defer-Length` had a value other than `1`.
    #[error("Upload-Defer-Length must be 1")]
    InvalidDeferLength,
    /// `Upload-Metadata` was malformed; the string says how.
    #[error("Upload-Metadata: {0}")]
    InvalidMetadata(String),
    /// An upload id was not 32 lowercase hexadecimal characters.
    #[error("invalid upload id")]
    InvalidId,
    /// A human-readable size could not be parsed; holds the (truncated) input.
    #[error("invalid size {0:?}")]
    InvalidSize(String),
    /// `Tus-Resumable` named a version other than 1.0.0; holds the (truncated)
    /// value as received.
    #[error("Tus-Resumable: unsupported version {0:?}")]
    UnsupportedVersion(String),
    /// `Upload-Checksum` named an algorithm this build does not know (tus: 400).
    #[error("Upload-Checksum: unsupported algorithm {0:?}")]
    UnknownChecksumAlgorithm(String),
    /// `Upload-Checksum` (or a digest field) was malformed; the string says how.
    #[error("{0}")]
    InvalidChecksum(String),
    /// A range header was malformed; the string says how.
    #[error("{0}")]
    InvalidRange(String),
    /// A header of the IETF resumable-upload draft was malformed or unsupported; the string
    /// says how.
    #[error("{0}")]
    InvalidIetf(String),
    /// A well-formed range that no representation can satisfy (a chunk's `Content-Range`
    /// with START > END or END >= TOTAL); the string says how (HTTP 416).
    #[error("{0}")]
    UnsatisfiableRange(String),
    /// `Upload-Concat` was malformed; the string says how.
    #[error("Upload-Concat: {0}")]
    InvalidConcat(String),
}

/// Longest prefix, in chars, of untrusted input kept inside an error.
pub(crate) const ECHO_LIMIT: usize = 40;

/// Keeps at most [`ECHO_LIMIT`] chars of untrusted input, so an error can be
/// echoed without amplifying a hostile header.
pub(crate) fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_LIMIT) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// "upload-offset" -> "Upload-Offset": callers pass the lowercase constants of
/// [`crate::tus`], but messages read better in the spec's spelling.
fn header_title(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut start = true;
    for c in name.chars() {
        if start {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c.to_ascii_lowercase());
        }
        start = c == '-';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_header() {
        assert_eq!(
            ProtoError::InvalidNumber {
                header: "upload-offset"
            }
            .to_string(),
            "Upload-Offset must be a non-negative decimal integer"
        );
        assert_eq!(
            ProtoError::NumberTooLarge {
                header: "Upload-Length"
            }
            .to_string(),
            "Upload-Length must not exceed 9223372036854775807"
        );
        assert_eq!(
            ProtoError::InvalidMetadata("duplicate key \"name\"".into()).to_string(),
            "Upload-Metadata: duplicate key \"name\""
        );
        assert_eq!(
            ProtoError::UnsupportedVersion("0.2.2".into()).to_string(),
            "Tus-Resumable: unsupported version \"0.2.2\""
        );
        assert_eq!(
            ProtoError::InvalidDeferLength.to_string(),
            "Upload-Defer-Length must be 1"
        );
    }

    #[test]
    fn messages_are_one_line() {
        let e = ProtoError::InvalidSize("a\r\nb".into()).to_string();
        assert!(!e.contains('\n') && !e.contains('\r'), "{e}");
    }

    #[test]
    fn echo_truncates_on_char_boundary() {
        assert_eq!(echo("short"), "short");
        let long = "é".repeat(100);
        let e = echo(&long);
        assert_eq!(e, format!("{}...", "é".repeat(ECHO_LIMIT)));
    }

    #[test]
    fn header_title_cases() {
        assert_eq!(header_title("tus-max-size"), "Tus-Max-Size");
        assert_eq!(header_title("UPLOAD-LENGTH"), "Upload-Length");
        assert_eq!(header_title(""), "");
    }
}
