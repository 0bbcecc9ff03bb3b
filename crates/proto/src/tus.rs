//! Constants and header parsers of the tus 1.0 resumable upload protocol.
//!
//! Header names are lowercase because HTTP libraries normalise them so.

use crate::error::{ProtoError, echo};
use crate::http::trim_ows;

/// The protocol version this crate speaks, sent in `Tus-Resumable`.
pub const TUS_VERSION: &str = "1.0.0";
/// Value of the `Tus-Version` header: every version the server accepts.
pub const SUPPORTED_VERSIONS: &str = "1.0.0";

/// `Tus-Resumable`: protocol version of a request or response.
pub const TUS_RESUMABLE: &str = "tus-resumable";
/// `Tus-Version`: versions supported by the server.
pub const TUS_VERSION_HEADER: &str = "tus-version";
/// `Tus-Extension`: extensions supported by the server.
pub const TUS_EXTENSION: &str = "tus-extension";
/// `Tus-Max-Size`: largest upload the server accepts, in bytes.
pub const TUS_MAX_SIZE: &str = "tus-max-size";
/// `Upload-Offset`: bytes already received.
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// `Upload-Length`: total size of the upload in bytes.
pub const UPLOAD_LENGTH: &str = "upload-length";
/// `Upload-Defer-Length`: the length will be sent later.
pub const UPLOAD_DEFER_LENGTH: &str = "upload-defer-length";
/// `Upload-Metadata`: key/value pairs, see [`crate::metadata`].
pub const UPLOAD_METADATA: &str = "upload-metadata";
/// `Upload-Expires`: when an unfinished upload will be discarded.
pub const UPLOAD_EXPIRES: &str = "upload-expires";
/// `Upload-Concat`: concatenation extension.
pub const UPLOAD_CONCAT: &str = "upload-concat";
/// `Upload-Checksum`: checksum of a PATCH body.
pub const UPLOAD_CHECKSUM: &str = "upload-checksum";
/// `Tus-Checksum-Algorithm`: checksum algorithms supported by the server.
pub const TUS_CHECKSUM_ALGORITHM: &str = "tus-checksum-algorithm";
/// `X-HTTP-Method-Override`: lets clients tunnel PATCH/DELETE through POST.
pub const X_HTTP_METHOD_OVERRIDE: &str = "x-http-method-override";

/// Content type required on PATCH requests.
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

pub use crate::http::MAX_NUMBER;

/// Parses a non-negative decimal integer header such as `Upload-Offset`.
///
/// Strict: after trimming surrounding spaces/tabs, the value must be one or
/// more ASCII digits (leading zeros allowed). Signs, inner whitespace, `0x`
/// and the empty string give [`ProtoError::InvalidNumber`]; values above
/// [`MAX_NUMBER`] give [`ProtoError::NumberTooLarge`].
pub fn parse_number(header: &'static str, value: &str) -> Result<u64, ProtoError> {
    let digits = trim_ows(value);
    // Validate the whole string first, so "999...9x" is reported as
    // malformed rather than too large.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtoError::InvalidNumber { header });
    }
    let mut n: u64 = 0;
    for b in digits.bytes() {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .filter(|&n| n <= MAX_NUMBER)
            .ok_or(ProtoError::NumberTooLarge { header })?;
    }
    Ok(n)
}

/// Parses `Upload-Offset`; see [`parse_number`].
pub fn parse_upload_offset(v: &str) -> Result<u64, ProtoError> {
    parse_number(UPLOAD_OFFSET, v)
}

/// Parses `Upload-Length`; see [`parse_number`].
pub fn parse_upload_length(v: &str) -> Result<u64, ProtoError> {
    parse_number(UPLOAD_LENGTH, v)
}

/// Parses `Upload-Defer-Length`, whose only valid value is `1`.
pub fn parse_defer_length(v: &str) -> Result<(), ProtoError> {
    if trim_ows(v) == "1" {
        Ok(())
    } else {
        Err(ProtoError::InvalidDeferLength)
    }
}

/// Checks `Tus-Resumable`: only exactly `1.0.0` (surrounding spaces/tabs
/// ignored) is accepted. Otherwise returns [`ProtoError::UnsupportedVersion`]
/// holding the value as received, truncated to 40 chars.
pub fn check_tus_resumable(v: &str) -> Result<(), ProtoError> {
    if trim_ows(v) == TUS_VERSION {
        Ok(())
    } else {
        Err(ProtoError::UnsupportedVersion(echo(v)))
    }
}

/// Tells whether a `Content-Type` value has the media type `expected`.
///
/// Only the part before any `;` parameters is compared, case-insensitively,
/// with surrounding spaces/tabs ignored:
/// `"Application/Offset+Octet-Stream; charset=x"` matches
/// [`OFFSET_OCTET_STREAM`].
pub fn media_type_is(content_type: &str, expected: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or("");
    trim_ows(media_type).eq_ignore_ascii_case(trim_ows(expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn invalid(header: &'static str) -> Result<u64, ProtoError> {
        Err(ProtoError::InvalidNumber { header })
    }

    fn too_large(header: &'static str) -> Result<u64, ProtoError> {
        Err(ProtoError::NumberTooLarge { header })
    }

    #[test]
    fn number_accepts_plain_digits() {
        assert_eq!(parse_number(UPLOAD_OFFSET, "0"), Ok(0));
        assert_eq!(parse_number(UPLOAD_OFFSET, "12"), Ok(12));
        assert_eq!(parse_number(UPLOAD_OFFSET, " 12 "), Ok(12));
        assert_eq!(parse_number(UPLOAD_OFFSET, "\t12\t"), Ok(12));
        assert_eq!(parse_number(UPLOAD_OFFSET, "007"), Ok(7));
        assert_eq!(
            parse_number(UPLOAD_OFFSET, "00000000000000000000000000000000001"),
            Ok(1)
        );
    }

    #[test]
    fn number_limits() {
        assert_eq!(
            parse_number(UPLOAD_LENGTH, "9223372036854775807"),
            Ok(MAX_NUMBER)
        );
        assert_eq!(
            parse_number(UPLOAD_LENGTH, "9223372036854775808"),
            too_large(UPLOAD_LENGTH)
        );
        assert_eq!(
            parse_number(UPLOAD_LENGTH, "18446744073709551615"),
            too_large(UPLOAD_LENGTH)
        );
        assert_eq!(
            parse_number(UPLOAD_LENGTH, "18446744073709551616"),
            too_large(UPLOAD_LENGTH)
        );
        assert_eq!(
            parse_number(UPLOAD_LENGTH, &"9".repeat(1000)),
            too_large(UPLOAD_LENGTH)
        );
    }

    #[test]
    fn number_rejects_garbage() {
        for bad in [
            "", " ", "\t", "-1", "+1", "1 2", "0x10", "1.0", "1e3", "abc", "12a", "٣", "１", "1\n",
            "\n1", "1\r\n", "1\0", " - 1",
        ] {
            assert_eq!(
                parse_number(UPLOAD_OFFSET, bad),
                invalid(UPLOAD_OFFSET),
                "{bad:?}"
            );
        }
        // Malformed wins over too large.
        let s = format!("{}x", "9".repeat(30));
        assert_eq!(parse_number(UPLOAD_OFFSET, &s), invalid(UPLOAD_OFFSET));
    }

    #[test]
    fn wrappers_name_their_header() {
        assert_eq!(parse_upload_offset("5"), Ok(5));
        assert_eq!(parse_upload_length("6"), Ok(6));
        assert_eq!(parse_upload_offset("x"), invalid(UPLOAD_OFFSET));
        assert_eq!(parse_upload_length("x"), invalid(UPLOAD_LENGTH));
        assert_eq!(
            parse_upload_length("x").unwrap_err().to_string(),
            "Upload-Length must be a non-negative decimal integer"
        );
    }

    #[test]
    fn defer_length() {
        assert_eq!(parse_defer_length("1"), Ok(()));
        assert_eq!(parse_defer_length(" 1\t"), Ok(()));
        for bad in ["", "0", "01", "2", "true", "1 1", "+1"] {
            assert_eq!(
                parse_defer_length(bad),
                Err(ProtoError::InvalidDeferLength),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tus_resumable() {
        assert_eq!(check_tus_resumable("1.0.0"), Ok(()));
        assert_eq!(check_tus_resumable(" 1.0.0 "), Ok(()));
        for bad in ["", "1.0", "0.2.2", "1.0.0,0.2.2", "1.0.00", "v1.0.0"] {
            assert_eq!(
                check_tus_resumable(bad),
                Err(ProtoError::UnsupportedVersion(bad.into())),
                "{bad:?}"
            );
        }
        let long = "1".repeat(1000);
        assert_eq!(
            check_tus_resumable(&long),
            Err(ProtoError::UnsupportedVersion(format!(
                "{}...",
                "1".repeat(40)
            )))
        );
    }

    #[test]
    fn media_type() {
        assert!(media_type_is(OFFSET_OCTET_STREAM, OFFSET_OCTET_STREAM));
        assert!(media_type_is(
            "application/offset+octet-stream; charset=x",
            OFFSET_OCTET_STREAM
        ));
        assert!(media_type_is(
            " Application/Offset+Octet-Stream ;x=y",
            OFFSET_OCTET_STREAM
        ));
        assert!(!media_type_is(
            "application/octet-stream",
            OFFSET_OCTET_STREAM
        ));
        assert!(!media_type_is("", OFFSET_OCTET_STREAM));
        assert!(!media_type_is(
            "application/offset+octet-stream-x",
            OFFSET_OCTET_STREAM
        ));
        assert!(!media_type_is(
            "text/plain; application/offset+octet-stream",
            OFFSET_OCTET_STREAM
        ));
    }

    proptest! {
        #[test]
        fn number_round_trips(n in 0..=MAX_NUMBER) {
            prop_assert_eq!(parse_number(UPLOAD_OFFSET, &n.to_string()), Ok(n));
        }

        #[test]
        fn number_above_max_is_too_large(n in (MAX_NUMBER + 1)..=u64::MAX) {
            prop_assert_eq!(
                parse_number(UPLOAD_OFFSET, &n.to_string()),
                too_large(UPLOAD_OFFSET)
            );
        }

        #[test]
        fn parsers_never_panic(s in any::<String>()) {
            let _ = parse_number(UPLOAD_OFFSET, &s);
            let _ = parse_upload_offset(&s);
            let _ = parse_upload_length(&s);
            let _ = parse_defer_length(&s);
            let _ = check_tus_resumable(&s);
            let _ = media_type_is(&s, OFFSET_OCTET_STREAM);
            let _ = media_type_is(OFFSET_OCTET_STREAM, &s);
        }

        #[test]
        fn digit_strings_never_panic(s in "[0-9 \t]{0,40}") {
            let _ = parse_number(UPLOAD_OFFSET, &s);
        }
    }
}
