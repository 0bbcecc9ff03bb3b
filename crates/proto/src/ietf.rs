//! The IETF "Resumable Uploads for HTTP" draft (draft-ietf-httpbis-resumable-upload): header
//! names, the interop-version table, the Structured Field (RFC 9651) items it uses, the
//! `Upload-Limit` dictionary and RFC 9457 problem details.
//!
//! The structured-field parser is small and strict: it knows the bare items (integer, decimal,
//! string, token, byte sequence, boolean) and parameters, which is all these headers can carry.

use crate::error::{ProtoError, echo};

/// `Upload-Draft-Interop-Version`: marks a request as speaking the draft, and which revision.
pub const UPLOAD_DRAFT_INTEROP_VERSION: &str = "upload-draft-interop-version";
/// `Upload-Complete` (interop 4 and later): whether the request carries the end of the data.
pub const UPLOAD_COMPLETE: &str = "upload-complete";
/// `Upload-Incomplete` (interop 3 only): the inverse of `Upload-Complete`.
pub const UPLOAD_INCOMPLETE: &str = "upload-incomplete";
/// `Upload-Offset`: bytes of the representation processed so far.
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// `Upload-Length`: the whole representation's length.
pub const UPLOAD_LENGTH: &str = "upload-length";
/// `Upload-Limit`: the server's limits, a dictionary.
pub const UPLOAD_LIMIT: &str = "upload-limit";
/// Media type of an append (interop 6 and later).
pub const PARTIAL_UPLOAD: &str = "application/partial-upload";
/// RFC 9457 media type.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The interop version of the latest published draft (-11).
pub const CURRENT_INTEROP_VERSION: u32 = 8;
/// Every interop version served, oldest first.
pub const SUPPORTED_INTEROP_VERSIONS: &str = "3, 4, 5, 6, 7, 8";

/// How a revision spells the completeness state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    /// `Upload-Incomplete: ?1` while incomplete (draft -01).
    Incomplete,
    /// `Upload-Complete: ?1` once complete (draft -02 on).
    Complete,
}

/// What the server does differently for one interop version. Everything else (offsets, 409 on
/// a mismatch, DELETE, HEAD) is common to all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draft {
    /// The `Upload-Draft-Interop-Version` value.
    pub interop: u32,
    /// Drafts that use this version, for messages and docs.
    pub drafts: &'static str,
    /// Header carrying the completeness state.
    pub completeness: Completeness,
    /// Whether appends must be `Content-Type: application/partial-upload` (else 415).
    pub partial_upload_type: bool,
    /// Whether `Upload-Limit` exists, and the name of its lifetime member
    /// (`expires` in -04/-05, `max-age` later).
    pub limit_age_key: Option<&'static str>,
    /// Whether the mismatching-upload-offset and completed-upload problem types exist.
    pub offset_problems: bool,
    /// Whether the inconsistent-upload-length problem type exists.
    pub length_problem: bool,
    /// Whether a non-empty append to a completed upload is an inconsistent-length failure
    /// (draft -09 on) rather than a completed-upload one.
    pub append_after_complete_is_length: bool,
}

const TABLE: [Draft; 6] = [
    Draft {
        interop: 3,
        drafts: "-01",
        completeness: Completeness::Incomplete,
        partial_upload_type: false,
        limit_age_key: None,
        offset_problems: false,
        length_problem: false,
        append_after_complete_is_length: false,
    },
    Draft {
        interop: 4,
        drafts: "-02",
        completeness: Completeness::Complete,
        partial_upload_type: false,
        limit_age_key: None,
        offset_problems: false,
        length_problem: false,
        append_after_complete_is_length: false,
    },
    Draft {
        interop: 5,
        drafts: "-03",
        completeness: Completeness::Complete,
        partial_upload_type: false,
        limit_age_key: None,
        offset_problems: false,
        length_problem: false,
        append_after_complete_is_length: false,
    },
    Draft {
        interop: 6,
        drafts: "-04, -05",
        completeness: Completeness::Complete,
        partial_upload_type: true,
        limit_age_key: Some("expires"),
        offset_problems: true,
        length_problem: false,
        append_after_complete_is_length: false,
    },
    Draft {
        interop: 7,
        drafts: "-06 to -08",
        completeness: Completeness::Complete,
        partial_upload_type: true,
        limit_age_key: Some("max-age"),
        offset_problems: true,
        length_problem: true,
        append_after_complete_is_length: false,
    },
    Draft {
        interop: 8,
        drafts: "-09 to -11",
        completeness: Completeness::Complete,
        partial_upload_type: true,
        limit_age_key: Some("max-age"),
        offset_problems: true,
        length_problem: true,
        append_after_complete_is_length: true,
    },
];

impl Draft {
    /// The row for `Upload-Draft-Interop-Version: value`, or why there is none.
    pub fn from_header(value: &str) -> Result<Draft, ProtoError> {
        let bad = || {
            ProtoError::InvalidIetf(format!(
                "Upload-Draft-Interop-Version {:?} is not supported (supported: {})",
                echo(value),
                SUPPORTED_INTEROP_VERSIONS
            ))
        };
        let v = parse_integer(value).map_err(|_| bad())?;
        TABLE
            .iter()
            .find(|d| i64::from(d.interop) == v)
            .copied()
            .ok_or_else(bad)
    }

    /// The row of an interop version, if served.
    pub fn of(interop: u32) -> Option<Draft> {
        TABLE.iter().find(|d| d.interop == interop).copied()
    }

    /// Name of the completeness header.
    pub fn completeness_header(&self) -> &'static str {
        match self.completeness {
            Completeness::Incomplete => UPLOAD_INCOMPLETE,
            Completeness::Complete => UPLOAD_COMPLETE,
        }
    }

    /// The completeness header as the draft spells it, for messages.
    pub fn completeness_title(&self) -> &'static str {
        title(self.completeness_header())
    }

    /// Reads the completeness header value as "is complete".
    pub fn parse_complete(&self, value: &str) -> Result<bool, ProtoError> {
        let b = parse_boolean(value).map_err(|e| {
            ProtoError::InvalidIetf(format!("{}: {e}", title(self.completeness_header())))
        })?;
        Ok(match self.completeness {
            Completeness::Incomplete => !b,
            Completeness::Complete => b,
        })
    }

    /// The completeness header value for "is complete" = `complete`.
    pub fn format_complete(&self, complete: bool) -> &'static str {
        let b = match self.completeness {
            Completeness::Incomplete => !complete,
            Completeness::Complete => complete,
        };
        if b { "?1" } else { "?0" }
    }
}

fn title(name: &str) -> &'static str {
    match name {
        UPLOAD_INCOMPLETE => "Upload-Incomplete",
        UPLOAD_COMPLETE => "Upload-Complete",
        UPLOAD_OFFSET => "Upload-Offset",
        UPLOAD_LENGTH => "Upload-Length",
        _ => "header",
    }
}

/// Parses `Upload-Offset` or `Upload-Length`: a non-negative sf-integer (parameters allowed and
/// ignored). `name` is one of the constants above.
pub fn parse_size(name: &str, value: &str) -> Result<u64, ProtoError> {
    let v = parse_integer(value)
        .map_err(|e| ProtoError::InvalidIetf(format!("{}: {e}", title(name))))?;
    u64::try_from(v)
        .map_err(|_| ProtoError::InvalidIetf(format!("{} must not be negative", title(name))))
}

/// A structured-field item holding an integer (RFC 9651 §3.3.1: at most 15 digits).
pub fn parse_integer(value: &str) -> Result<i64, String> {
    parse_item(value, |b| match b {
        Bare::Integer(i) => Ok(i),
        _ => Err("must be an integer".into()),
    })
}

/// A structured-field item holding a boolean (`?0` or `?1`).
pub fn parse_boolean(value: &str) -> Result<bool, String> {
    parse_item(value, |b| match b {
        Bare::Boolean(v) => Ok(v),
        _ => Err("must be a boolean (?0 or ?1)".into()),
    })
}

/// One structured-field item: its bare item (through `want`), parameters ignored, then the end.
fn parse_item<T>(value: &str, want: impl FnOnce(Bare) -> Result<T, String>) -> Result<T, String> {
    let mut p = Parser::new(value);
    p.skip_sp();
    let v = want(p.bare_item()?)?;
    p.parameters()?;
    p.end()?;
    Ok(v)
}

/// A bare item's kind and, for the ones this crate uses, value.
#[derive(Debug, Clone, PartialEq)]
enum Bare {
    Integer(i64),
    Boolean(bool),
    Other,
}

/// Byte-level structured-field parser (RFC 9651 §4.2), for the subset this crate needs.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        // Field values arrive with surrounding OWS already part of the raw header; tolerate tabs
        // at the edges too (HTTP allows them there), but nowhere else.
        Parser {
            s: s.trim_matches([' ', '\t']).as_bytes(),
            i: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn end(&mut self) -> Result<(), String> {
        self.skip_sp();
        if self.i == self.s.len() {
            Ok(())
        } else {
            Err("unexpected characters after the value".into())
        }
    }

    fn bare_item(&mut self) -> Result<Bare, String> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string().map(|()| Bare::Other),
            Some(b':') => self.bytes().map(|()| Bare::Other),
            Some(b'?') => {
                self.i += 1;
                let b = match self.peek() {
                    Some(b'0') => false,
                    Some(b'1') => true,
                    _ => return Err("a boolean is ?0 or ?1".into()),
                };
                self.i += 1;
                Ok(Bare::Boolean(b))
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => {
                self.i += 1;
                while let Some(c) = self.peek() {
                    if is_tchar(c) || c == b':' || c == b'/' {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                Ok(Bare::Other)
            }
            Some(b'@' | b'%') => Err("dates and display strings are not expected here".into()),
            _ => Err("empty or malformed value".into()),
        }
    }

    fn number(&mut self) -> Result<Bare, String> {
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let int_digits = self.i - start;
        if int_digits == 0 {
            return Err("a number needs digits".into());
        }
        if self.peek() == Some(b'.') {
            if int_digits > 12 {
                return Err("decimal has too many digits".into());
            }
            self.i += 1;
            let f = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            if !(1..=3).contains(&(self.i - f)) {
                return Err("decimal needs 1 to 3 fraction digits".into());
            }
            return Ok(Bare::Other);
        }
        if int_digits > 15 {
            return Err("integer has more than 15 digits".into());
        }
        // At most 15 ASCII digits: always fits in i64.
        let digits = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
        let v: i64 = digits.parse().map_err(|_| "bad integer".to_string())?;
        Ok(Bare::Integer(if neg { -v } else { v }))
    }

    fn string(&mut self) -> Result<(), String> {
        self.i += 1;
        loop {
            match self.peek() {
                None => return Err("unterminated string".into()),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\') => self.i += 1,
                        _ => return Err("bad escape in string".into()),
                    }
                }
                Some(0x20..=0x7e) => self.i += 1,
                Some(_) => return Err("string holds a non-printable character".into()),
            }
        }
    }

    fn bytes(&mut self) -> Result<(), String> {
        self.i += 1;
        loop {
            match self.peek() {
                None => return Err("unterminated byte sequence".into()),
                Some(b':') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=') => {
                    self.i += 1
                }
                Some(_) => return Err("bad byte sequence".into()),
            }
        }
    }

    fn key(&mut self) -> Result<String, String> {
        let start = self.i;
        match self.peek() {
            Some(b'a'..=b'z' | b'*') => self.i += 1,
            _ => return Err("a key starts with a lowercase letter or *".into()),
        }
        while let Some(c) = self.peek() {
            if matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*') {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn parameters(&mut self) -> Result<(), String> {
        while self.peek() == Some(b';') {
            self.i += 1;
            self.skip_sp();
            self.key()?;
            if self.peek() == Some(b'=') {
                self.i += 1;
                self.bare_item()?;
            }
        }
        Ok(())
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Largest sf-integer (15 digits).
pub const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// The server's limits (`Upload-Limit`), in bytes and seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UploadLimit {
    /// Largest representation accepted.
    pub max_size: Option<u64>,
    /// Smallest representation accepted.
    pub min_size: Option<u64>,
    /// Largest request content per creation or append.
    pub max_append_size: Option<u64>,
    /// Smallest request content per creation or append (the completing one excepted).
    pub min_append_size: Option<u64>,
    /// Remaining lifetime of the upload resource.
    pub max_age: Option<u64>,
}

impl UploadLimit {
    /// Whether there is nothing to announce.
    pub fn is_empty(&self) -> bool {
        *self == UploadLimit::default()
    }

    /// Formats the dictionary; `age_key` is the lifetime member's name for the interop
    /// version (see [`Draft::limit_age_key`]).
    pub fn format(&self, age_key: &str) -> String {
        let members = [
            ("max-size", self.max_size),
            ("min-size", self.min_size),
            ("max-append-size", self.max_append_size),
            ("min-append-size", self.min_append_size),
            (age_key, self.max_age),
        ];
        members
            .iter()
            // sf-integers have at most 15 digits; a larger limit is as good as none.
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", v.min(SF_INTEGER_MAX))))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Parses the dictionary (RFC 9651 §4.2.2). Unknown members are ignored; a known member
    /// whose value is not a non-negative integer makes the whole field invalid, as the draft
    /// asks. Both `max-age` and `expires` are read as the lifetime.
    pub fn parse(value: &str) -> Result<UploadLimit, ProtoError> {
        let bad = |why: String| ProtoError::InvalidIetf(format!("Upload-Limit: {why}"));
        let mut out = UploadLimit::default();
        let mut p = Parser::new(value);
        p.skip_sp();
        if p.i == p.s.len() {
            return Ok(out);
        }
        loop {
            let key = p.key().map_err(bad)?;
            let item = if p.peek() == Some(b'=') {
                p.i += 1;
                p.bare_item().map_err(bad)?
            } else {
                Bare::Boolean(true)
            };
            p.parameters().map_err(bad)?;
            let slot = match key.as_str() {
                "max-size" => Some(&mut out.max_size),
                "min-size" => Some(&mut out.min_size),
                "max-append-size" => Some(&mut out.max_append_size),
                "min-append-size" => Some(&mut out.min_append_size),
                "max-age" | "expires" => Some(&mut out.max_age),
                _ => None,
            };
            if let Some(slot) = slot {
                match item {
                    Bare::Integer(i) if i >= 0 => *slot = Some(i as u64),
                    _ => return Err(bad(format!("{key} must be a non-negative integer"))),
                }
            }
            p.skip_ows();
            if p.i == p.s.len() {
                return Ok(out);
            }
            if p.peek() != Some(b',') {
                return Err(bad("members are separated by commas".into()));
            }
            p.i += 1;
            p.skip_ows();
            if p.i == p.s.len() {
                return Err(bad("trailing comma".into()));
            }
        }
    }
}

/// The draft's RFC 9457 problem types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// `Upload-Offset` did not match the resource's offset (409).
    MismatchingOffset {
        /// The upload's offset.
        expected: u64,
        /// The request's `Upload-Offset`.
        provided: u64,
    },
    /// The upload is complete and takes no more data (400).
    CompletedUpload,
    /// Length indicators disagree, or data goes past the length (400).
    InconsistentLength,
}

impl Problem {
    /// The type URI registered by the draft.
    pub fn type_uri(&self) -> &'static str {
        match self {
            Problem::MismatchingOffset { .. } => {
                "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"
            }
            Problem::CompletedUpload => {
                "https://iana.org/assignments/http-problem-types#completed-upload"
            }
            Problem::InconsistentLength => {
                "https://iana.org/assignments/http-problem-types#inconsistent-upload-length"
            }
        }
    }

    /// The registered title.
    pub fn title(&self) -> &'static str {
        match self {
            Problem::MismatchingOffset { .. } => "Mismatching Upload Offset",
            Problem::CompletedUpload => "Upload Is Completed",
            Problem::InconsistentLength => "Inconsistent Upload Length Values",
        }
    }

    /// The recommended status code.
    pub fn status(&self) -> u16 {
        match self {
            Problem::MismatchingOffset { .. } => 409,
            _ => 400,
        }
    }

    /// The `application/problem+json` body, with `detail` (a human-readable sentence).
    pub fn to_json(&self, detail: &str) -> String {
        let mut s = format!(
            "{{\"type\":{},\"title\":{},\"status\":{},\"detail\":{}",
            json_string(self.type_uri()),
            json_string(self.title()),
            self.status(),
            json_string(detail)
        );
        if let Problem::MismatchingOffset { expected, provided } = self {
            s.push_str(&format!(
                ",\"expected-offset\":{expected},\"provided-offset\":{provided}"
            ));
        }
        s.push('}');
        s
    }
}

/// A JSON string literal (RFC 8259 escaping).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn booleans() {
        assert_eq!(parse_boolean("?1"), Ok(true));
        assert_eq!(parse_boolean(" ?0 "), Ok(false));
        assert_eq!(parse_boolean("?1;a=2;b"), Ok(true));
        for bad in [
            "", "?", "?2", "1", "true", "?1 ?0", "?1,?0", "?01", "\"?1\"",
        ] {
            assert!(parse_boolean(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn integers() {
        assert_eq!(parse_integer("0"), Ok(0));
        assert_eq!(parse_integer("42;x=\"y\""), Ok(42));
        assert_eq!(parse_integer("-5"), Ok(-5));
        assert_eq!(parse_integer("999999999999999"), Ok(999_999_999_999_999));
        for bad in [
            "",
            "1.5",
            "1e3",
            "0x10",
            "9999999999999999",
            "+1",
            "1 2",
            "abc",
            "?1",
        ] {
            assert!(parse_integer(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size(UPLOAD_OFFSET, "-1").is_err());
        assert_eq!(parse_size(UPLOAD_LENGTH, "100"), Ok(100));
    }

    #[test]
    fn version_table() {
        for v in 3..=8 {
            let d = Draft::from_header(&v.to_string()).unwrap();
            assert_eq!(d.interop, v);
            assert_eq!(Draft::of(v), Some(d));
        }
        assert!(Draft::from_header("2").is_err());
        assert!(Draft::from_header("9").is_err());
        assert!(Draft::from_header("x").is_err());
        let v3 = Draft::of(3).unwrap();
        assert_eq!(v3.completeness_header(), UPLOAD_INCOMPLETE);
        assert_eq!(v3.parse_complete("?1"), Ok(false));
        assert_eq!(v3.format_complete(true), "?0");
        let v8 = Draft::of(CURRENT_INTEROP_VERSION).unwrap();
        assert_eq!(v8.completeness_header(), UPLOAD_COMPLETE);
        assert_eq!(v8.parse_complete("?1"), Ok(true));
        assert!(v8.partial_upload_type && !Draft::of(5).unwrap().partial_upload_type);
        assert_eq!(Draft::of(6).unwrap().limit_age_key, Some("expires"));
    }

    #[test]
    fn limits() {
        let l = UploadLimit {
            max_size: Some(1000),
            max_age: Some(60),
            ..Default::default()
        };
        assert_eq!(l.format("max-age"), "max-size=1000, max-age=60");
        assert_eq!(UploadLimit::parse(&l.format("max-age")), Ok(l));
        assert_eq!(UploadLimit::parse(&l.format("expires")), Ok(l));
        assert_eq!(
            UploadLimit::parse("unknown=\"x\", max-size=5;p=1, flag").unwrap(),
            UploadLimit {
                max_size: Some(5),
                ..Default::default()
            }
        );
        assert!(UploadLimit::parse("max-size=\"5\"").is_err());
        assert!(UploadLimit::parse("max-size").is_err());
        assert!(UploadLimit::parse("max-size=-1").is_err());
        assert!(UploadLimit::parse("max-size=1,").is_err());
        assert!(UploadLimit::parse("Max-Size=1").is_err());
        assert_eq!(UploadLimit::parse(""), Ok(UploadLimit::default()));
        assert!(UploadLimit::default().is_empty());
    }

    #[test]
    fn problems() {
        let p = Problem::MismatchingOffset {
            expected: 5,
            provided: 7,
        };
        assert_eq!(p.status(), 409);
        assert_eq!(
            p.to_json("x \"y\"\n"),
            "{\"type\":\"https://iana.org/assignments/http-problem-types#mismatching-upload-offset\",\
             \"title\":\"Mismatching Upload Offset\",\"status\":409,\"detail\":\"x \\\"y\\\"\\n\",\
             \"expected-offset\":5,\"provided-offset\":7}"
        );
        assert_eq!(Problem::CompletedUpload.status(), 400);
        assert!(
            Problem::InconsistentLength
                .to_json("")
                .contains("#inconsistent-upload-length")
        );
        assert_eq!(json_string("\u{1}é"), "\"\\u0001é\"");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_integer(&s);
            let _ = parse_boolean(&s);
            let _ = UploadLimit::parse(&s);
            let _ = Draft::from_header(&s);
            let _ = parse_size(UPLOAD_OFFSET, &s);
            for v in 0..=9 {
                if let Some(d) = Draft::of(v) {
                    let _ = d.parse_complete(&s);
                }
            }
        }

        #[test]
        fn sf_shaped_inputs_never_panic(s in "[-?:\";=, a-z0-9.*/\\\\]{0,40}") {
            let _ = parse_integer(&s);
            let _ = parse_boolean(&s);
            let _ = UploadLimit::parse(&s);
        }

        #[test]
        fn integers_round_trip(v in 0u64..=999_999_999_999_999) {
            prop_assert_eq!(parse_size(UPLOAD_LENGTH, &v.to_string()), Ok(v));
        }

        #[test]
        fn limits_round_trip(a in proptest::option::of(0u64..=999_999_999_999_999),
                             b in proptest::option::of(0u64..=999_999_999_999_999)) {
            let l = UploadLimit { max_size: a, max_age: b, ..Default::default() };
            prop_assert_eq!(UploadLimit::parse(&l.format("max-age")), Ok(l));
        }
    }
}
