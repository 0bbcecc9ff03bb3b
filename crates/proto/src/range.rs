//! HTTP range requests (RFC 9110 §14): `Range`, `Content-Range`, and the validators used with
//! them (`ETag` lists for `If-Match`/`If-None-Match`, `If-Range`).

use crate::error::{ProtoError, echo};
use crate::http::trim_ows;

/// Sent by `OPTIONS {base}/chunks/`: the endpoint takes Content-Range chunk sessions (ferry's
/// own route family, which neither tus nor the IETF draft announce), so a client told only a
/// URL can pick the protocol before creating anything.
pub const CHUNK_SESSIONS_HEADER: &str = "ferry-chunk-sessions";

/// Most ranges served in one multipart answer; more is treated as no `Range` at all (a full
/// 200), which RFC 9110 allows and which defeats range-amplification abuse.
pub const MAX_RANGES: usize = 64;

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// Ignore the header and send everything (unknown unit, bad syntax, too many ranges).
    Full,
    /// These inclusive byte ranges, sorted and coalesced.
    Ranges(Vec<(u64, u64)>),
    /// Nothing satisfiable: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Interprets a `Range` header value for a representation of `len` bytes.
pub fn parse_range(value: &str, len: u64) -> RangeRequest {
    let v = trim_ows(value);
    let Some(set) = v
        .split_once('=')
        .filter(|(unit, _)| trim_ows(unit).eq_ignore_ascii_case("bytes"))
        .map(|(_, s)| s)
    else {
        return RangeRequest::Full;
    };
    let mut ranges = Vec::new();
    let mut count = 0;
    for spec in set.split(',') {
        let spec = trim_ows(spec);
        if spec.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_RANGES {
            return RangeRequest::Full;
        }
        let Some((a, b)) = spec.split_once('-') else {
            return RangeRequest::Full;
        };
        // RFC 9110 puts no bound on 1*DIGIT: a position too big for u64 is valid syntax and
        // simply past any end (a first-pos: unsatisfiable, 416; a last-pos or suffix: to the
        // end). Saturating keeps that meaning; failing the parse made such a request a 200.
        let num = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
        };
        let (a, b) = (trim_ows(a), trim_ows(b));
        let r = match (a.is_empty(), b.is_empty()) {
            // suffix: last n bytes
            (true, false) => match num(b) {
                None => return RangeRequest::Full,
                Some(0) => None,
                Some(_) if len == 0 => None,
                Some(n) => Some((len.saturating_sub(n), len - 1)),
            },
            (false, true) => match num(a) {
                None => return RangeRequest::Full,
                Some(s) if s >= len => None,
                Some(s) => Some((s, len - 1)),
            },
            (false, false) => match (num(a), num(b)) {
                (Some(s), Some(e)) if s <= e => (s < len).then(|| (s, e.min(len - 1))),
                _ => return RangeRequest::Full,
            },
            (true, true) => return RangeRequest::Full,
        };
        if let Some(r) = r {
            ranges.push(r);
        }
    }
    if count == 0 {
        return RangeRequest::Full;
    }
    if ranges.is_empty() {
        return RangeRequest::Unsatisfiable;
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    RangeRequest::Ranges(merged)
}

/// `bytes start-end/len`.
pub fn format_content_range(start: u64, end: u64, len: u64) -> String {
    format!("bytes {start}-{end}/{len}")
}

/// `bytes */len` (for 416).
pub fn format_unsatisfied(len: u64) -> String {
    format!("bytes */{len}")
}

/// A parsed `Content-Range` of a 206 answer: inclusive range and the total length if given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// Complete length, if known.
    pub len: Option<u64>,
}

/// Parses `Content-Range: bytes a-b/len` (or `/*`).
pub fn parse_content_range(value: &str) -> Result<ContentRange, ProtoError> {
    let bad =
        || ProtoError::InvalidChecksum(format!("Content-Range {:?} is malformed", echo(value)));
    let v = trim_ows(value);
    let rest = v.strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, len) = rest.split_once('/').ok_or_else(bad)?;
    let (a, b) = range.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str| -> Result<u64, ProtoError> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (start, end) = (digits(a)?, digits(b)?);
    let len = if len == "*" { None } else { Some(digits(len)?) };
    if start > end || len.is_some_and(|l| end >= l) {
        return Err(bad());
    }
    Ok(ContentRange { start, end, len })
}

// ---------------------------------------------------------------------------------------------
// Content-Range chunk sessions (request side)

/// Response header listing the byte ranges a chunk session has received, as inclusive
/// `start-end` pairs separated by commas (`0-1048575,2097152-3145727`); empty when none.
pub const UPLOAD_RANGES: &str = "upload-ranges";

/// What a `Content-Range` request header says about a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRange {
    /// `bytes START-END/TOTAL`: the body is bytes `START..=END`; `TOTAL` is `None` for `*`.
    Bytes {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
        /// The whole file's length, if the client knows it.
        total: Option<u64>,
    },
    /// `bytes */TOTAL` (or `bytes */*`): no bytes, a status query (as Google's resumable
    /// uploads).
    Query {
        /// The whole file's length, if given.
        total: Option<u64>,
    },
}

impl ChunkRange {
    /// Number of bytes the body must carry.
    pub fn body_len(&self) -> u64 {
        match *self {
            ChunkRange::Bytes { start, end, .. } => end - start + 1,
            ChunkRange::Query { .. } => 0,
        }
    }

    /// The declared total, if numeric.
    pub fn total(&self) -> Option<u64> {
        match *self {
            ChunkRange::Bytes { total, .. } | ChunkRange::Query { total } => total,
        }
    }
}

/// Parses the `Content-Range` of a chunk request. Syntax errors are
/// [`ProtoError::InvalidRange`] (400); a well-formed range with START > END or END >= TOTAL
/// (the classic off-by-one of a last chunk: END is inclusive) is
/// [`ProtoError::UnsatisfiableRange`] (416). Numbers above [`crate::http::MAX_NUMBER`] are
/// malformed, so `END + 1` never overflows.
pub fn parse_chunk_range(value: &str) -> Result<ChunkRange, ProtoError> {
    let shown = echo(value);
    let bad = |why: &str| {
        ProtoError::InvalidRange(format!(
            "Content-Range {shown:?} is malformed: {why} (expected bytes START-END/TOTAL)"
        ))
    };
    let v = trim_ows(value);
    let (unit, rest) = v.split_once(' ').ok_or_else(|| bad("no unit"))?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return Err(bad("the unit must be bytes"));
    }
    let rest = trim_ows(rest);
    let (range, total) = rest.split_once('/').ok_or_else(|| bad("no /TOTAL"))?;
    let number = |s: &str, what: &str| -> Result<u64, ProtoError> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad(&format!("{what} is not a decimal number")));
        }
        s.parse::<u64>()
            .ok()
            .filter(|n| *n <= crate::http::MAX_NUMBER)
            .ok_or_else(|| bad(&format!("{what} is too large")))
    };
    let total = match total {
        "*" => None,
        t => Some(number(t, "TOTAL")?),
    };
    if range == "*" {
        return Ok(ChunkRange::Query { total });
    }
    let (a, b) = range.split_once('-').ok_or_else(|| bad("no START-END"))?;
    let (start, end) = (number(a, "START")?, number(b, "END")?);
    if start > end {
        return Err(ProtoError::UnsatisfiableRange(format!(
            "Content-Range {shown:?}: START {start} is after END {end}"
        )));
    }
    if let Some(t) = total
        && end >= t
    {
        return Err(ProtoError::UnsatisfiableRange(format!(
            "Content-Range {shown:?}: END {end} must be below TOTAL {t} (END is inclusive: \
             the last byte of a {t}-byte file is {})",
            t.saturating_sub(1)
        )));
    }
    Ok(ChunkRange::Bytes { start, end, total })
}

/// Formats half-open `[start, end)` ranges as the [`UPLOAD_RANGES`] value (inclusive pairs).
pub fn format_upload_ranges(ranges: &[(u64, u64)]) -> String {
    let mut out = String::new();
    for &(a, b) in ranges.iter().filter(|(a, b)| a < b) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&format!("{a}-{}", b - 1));
    }
    out
}

/// Parses an [`UPLOAD_RANGES`] value back into half-open `[start, end)` ranges.
pub fn parse_upload_ranges(value: &str) -> Result<Vec<(u64, u64)>, ProtoError> {
    let bad = || ProtoError::InvalidRange(format!("Upload-Ranges {:?} is malformed", echo(value)));
    let v = trim_ows(value);
    if v.is_empty() {
        return Ok(Vec::new());
    }
    v.split(',')
        .map(|pair| {
            let (a, b) = trim_ows(pair).split_once('-').ok_or_else(bad)?;
            let num = |s: &str| {
                (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                    .then(|| s.parse::<u64>().ok())
                    .flatten()
                    .filter(|n| *n <= crate::http::MAX_NUMBER)
                    .ok_or_else(bad)
            };
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(bad());
            }
            Ok((a, b + 1))
        })
        .collect()
}

/// The JSON body of a chunk-session answer:
/// `{"received":[[start,end],...],"length":N|null,"complete":bool}` with inclusive pairs
/// (half-open `ranges` in).
pub fn format_chunk_status(ranges: &[(u64, u64)], length: Option<u64>, complete: bool) -> String {
    let pairs: Vec<String> = ranges
        .iter()
        .filter(|(a, b)| a < b)
        .map(|&(a, b)| format!("[{a},{}]", b - 1))
        .collect();
    let length = length.map_or_else(|| "null".to_string(), |l| l.to_string());
    format!(
        "{{\"received\":[{}],\"length\":{length},\"complete\":{complete}}}",
        pairs.join(",")
    )
}

/// An entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETag {
    /// `W/` prefix.
    pub weak: bool,
    /// The opaque tag, without quotes.
    pub tag: String,
}

impl ETag {
    /// A strong tag (`tag` must be visible ASCII without `"`).
    pub fn strong(tag: impl Into<String>) -> Self {
        Self {
            weak: false,
            tag: tag.into(),
        }
    }

    /// Parses one entity tag (`"x"` or `W/"x"`).
    pub fn parse(value: &str) -> Option<ETag> {
        let v = trim_ows(value);
        let (weak, rest) = match v.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, v),
        };
        let tag = rest.strip_prefix('"')?.strip_suffix('"')?;
        tag.bytes()
            .all(|c| c == 0x21 || (0x23..=0x7e).contains(&c) || c >= 0x80)
            .then(|| ETag {
                weak,
                tag: tag.to_string(),
            })
    }

    /// Strong comparison: both strong and equal.
    pub fn strong_eq(&self, other: &ETag) -> bool {
        !self.weak && !other.weak && self.tag == other.tag
    }

    /// Weak comparison: equal tags, weakness ignored.
    pub fn weak_eq(&self, other: &ETag) -> bool {
        self.tag == other.tag
    }
}

impl std::fmt::Display for ETag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.weak {
            f.write_str("W/")?;
        }
        write!(f, "\"{}\"", self.tag)
    }
}

/// An `If-Match` / `If-None-Match` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ETagList {
    /// `*`.
    Any,
    /// A list of tags (unparseable members dropped).
    Tags(Vec<ETag>),
}

impl ETagList {
    /// Parses a list value.
    pub fn parse(value: &str) -> ETagList {
        if trim_ows(value) == "*" {
            return ETagList::Any;
        }
        ETagList::Tags(split_tags(value).filter_map(ETag::parse).collect())
    }

    /// `If-Match` semantics: strong comparison against the current tag (or `*` if any exists).
    pub fn matches_strong(&self, current: Option<&ETag>) -> bool {
        match (self, current) {
            (ETagList::Any, Some(_)) => true,
            (ETagList::Tags(tags), Some(c)) => tags.iter().any(|t| t.strong_eq(c)),
            (_, None) => false,
        }
    }

    /// `If-None-Match` semantics: weak comparison.
    pub fn matches_weak(&self, current: Option<&ETag>) -> bool {
        match (self, current) {
            (ETagList::Any, Some(_)) => true,
            (ETagList::Tags(tags), Some(c)) => tags.iter().any(|t| t.weak_eq(c)),
            (_, None) => false,
        }
    }
}

/// Splits a list of entity tags on commas outside quotes.
fn split_tags(v: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in v.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&v[start..]);
    parts.into_iter()
}

/// An `If-Range` value: an entity tag or an HTTP date (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfRange {
    /// An entity tag (must match strongly).
    Tag(ETag),
    /// A date (must equal Last-Modified exactly, and be strong).
    Date(String),
}

impl IfRange {
    /// Parses the header: a value starting with `"` or `W/` is a tag, anything else a date.
    pub fn parse(value: &str) -> Option<IfRange> {
        let v = trim_ows(value);
        if v.starts_with('"') || v.starts_with("W/") {
            ETag::parse(v).map(IfRange::Tag)
        } else if v.is_empty() {
            None
        } else {
            Some(IfRange::Date(v.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(v: &str, len: u64) -> RangeRequest {
        parse_range(v, len)
    }

    #[test]
    fn single_open_suffix_and_multi() {
        assert_eq!(r("bytes=0-9", 100), RangeRequest::Ranges(vec![(0, 9)]));
        assert_eq!(r("bytes=90-", 100), RangeRequest::Ranges(vec![(90, 99)]));
        assert_eq!(r("bytes=-10", 100), RangeRequest::Ranges(vec![(90, 99)]));
        assert_eq!(
            r("bytes=-1000", 100),
            RangeRequest::Ranges(vec![(0, 99)]),
            "suffix longer than the file"
        );
        assert_eq!(
            r("bytes=99-99", 100),
            RangeRequest::Ranges(vec![(99, 99)]),
            "last byte"
        );
        assert_eq!(
            r("bytes=50-1000", 100),
            RangeRequest::Ranges(vec![(50, 99)])
        );
        assert_eq!(
            r("bytes=0-1, 5-9,3-6 ,20-", 30),
            RangeRequest::Ranges(vec![(0, 1), (3, 9), (20, 29)]),
            "sorted and coalesced"
        );
        assert_eq!(
            r("bytes=0-4,5-9", 30),
            RangeRequest::Ranges(vec![(0, 9)]),
            "adjacent merge"
        );
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        assert_eq!(r("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=100-200", 100), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), RangeRequest::Unsatisfiable, "empty file");
        assert_eq!(r("bytes=-5", 0), RangeRequest::Unsatisfiable);
        assert_eq!(
            r("bytes=200-300,0-0", 100),
            RangeRequest::Ranges(vec![(0, 0)])
        );
        for bad in [
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "bytes=",
            "0-1",
            "bytes=+1-2",
            "bytes=0x1-2",
        ] {
            assert_eq!(r(bad, 100), RangeRequest::Full, "{bad:?}");
        }
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range("bytes=2-99999999999999999999999", 10),
            RangeRequest::Ranges(vec![(2, 9)])
        );
        assert_eq!(
            parse_range("bytes=-99999999999999999999999", 10),
            RangeRequest::Ranges(vec![(0, 9)])
        );
        let many: Vec<String> = (0..=MAX_RANGES).map(|i| format!("{i}-{i}")).collect();
        assert_eq!(
            r(&format!("bytes={}", many.join(",")), 1000),
            RangeRequest::Full
        );
    }

    #[test]
    fn content_range_round_trip_and_errors() {
        let c = parse_content_range(&format_content_range(5, 9, 10)).unwrap();
        assert_eq!(
            c,
            ContentRange {
                start: 5,
                end: 9,
                len: Some(10)
            }
        );
        assert_eq!(parse_content_range("bytes 0-0/*").unwrap().len, None);
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes */10",
            "0-1/2",
            "bytes 0-1",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_unsatisfied(7), "bytes */7");
    }

    #[test]
    fn etags_and_lists() {
        let a = ETag::parse("\"abc\"").unwrap();
        let w = ETag::parse("W/\"abc\"").unwrap();
        assert!(a.strong_eq(&a) && !a.strong_eq(&w) && a.weak_eq(&w));
        assert_eq!(w.to_string(), "W/\"abc\"");
        assert!(ETag::parse("abc").is_none());
        assert!(ETag::parse("\"a\"b\"").is_none());
        let l = ETagList::parse("\"x\", W/\"abc\", \"a,b\"");
        assert!(l.matches_weak(Some(&a)) && !l.matches_strong(Some(&a)));
        assert!(ETagList::parse("\"a,b\"").matches_strong(Some(&ETag::strong("a,b"))));
        assert!(ETagList::parse("*").matches_strong(Some(&a)));
        assert!(!ETagList::parse("*").matches_strong(None));
        assert_eq!(IfRange::parse("\"abc\""), Some(IfRange::Tag(a)));
        assert!(matches!(
            IfRange::parse("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(IfRange::Date(_))
        ));
    }

    #[test]
    fn chunk_ranges_parse() {
        assert_eq!(
            parse_chunk_range("bytes 0-1048575/3000000"),
            Ok(ChunkRange::Bytes {
                start: 0,
                end: 1048575,
                total: Some(3000000)
            })
        );
        assert_eq!(
            parse_chunk_range(" bytes 5-5/* "),
            Ok(ChunkRange::Bytes {
                start: 5,
                end: 5,
                total: None
            })
        );
        assert_eq!(
            parse_chunk_range("bytes */10"),
            Ok(ChunkRange::Query { total: Some(10) })
        );
        assert_eq!(
            parse_chunk_range("bytes */*"),
            Ok(ChunkRange::Query { total: None })
        );
        assert_eq!(parse_chunk_range("bytes 9-9/10").unwrap().body_len(), 1);
        assert_eq!(parse_chunk_range("bytes */0").unwrap().total(), Some(0));
    }

    #[test]
    fn chunk_ranges_refuse_with_the_right_error() {
        // The article's last-chunk bug: END = (i+1)*chunk-1 past the end of the file.
        let e = parse_chunk_range("bytes 2097152-3145727/3000000").unwrap_err();
        assert!(matches!(e, ProtoError::UnsatisfiableRange(_)), "{e:?}");
        assert!(e.to_string().contains("below TOTAL"), "{e}");
        assert!(matches!(
            parse_chunk_range("bytes 0-10/10"),
            Err(ProtoError::UnsatisfiableRange(_))
        ));
        assert!(matches!(
            parse_chunk_range("bytes 7-6/10"),
            Err(ProtoError::UnsatisfiableRange(_))
        ));
        assert!(matches!(
            parse_chunk_range("bytes 0-0/0"),
            Err(ProtoError::UnsatisfiableRange(_))
        ));
        for bad in [
            "",
            "bytes",
            "bytes 0-1",
            "items 0-1/2",
            "bytes=0-1/2",
            "bytes 0-/2",
            "bytes -1/2",
            "bytes +0-1/2",
            "bytes 0-1/-2",
            "bytes 0-1/2/3",
            "bytes 0 - 1/2",
            "bytes 0-99999999999999999999/*",
            "bytes 0-9223372036854775808/*",
            "bytes */",
            "bytes 0x1-2/3",
        ] {
            assert!(
                matches!(parse_chunk_range(bad), Err(ProtoError::InvalidRange(_))),
                "{bad:?}: {:?}",
                parse_chunk_range(bad)
            );
        }
    }

    #[test]
    fn upload_ranges_round_trip_and_json() {
        let rs = [(0u64, 1048576u64), (2097152, 3145728)];
        let v = format_upload_ranges(&rs);
        assert_eq!(v, "0-1048575,2097152-3145727");
        assert_eq!(parse_upload_ranges(&v).unwrap(), rs.to_vec());
        assert_eq!(format_upload_ranges(&[]), "");
        assert_eq!(parse_upload_ranges("").unwrap(), vec![]);
        assert!(parse_upload_ranges("5-4").is_err());
        assert!(parse_upload_ranges("a-b").is_err());
        assert_eq!(
            format_chunk_status(&rs, Some(3145728), false),
            r#"{"received":[[0,1048575],[2097152,3145727]],"length":3145728,"complete":false}"#
        );
        assert_eq!(
            format_chunk_status(&[], None, false),
            r#"{"received":[],"length":null,"complete":false}"#
        );
    }

    proptest! {
        #[test]
        fn ranges_stay_inside_the_file(s in 0u64..500, e in 0u64..500, len in 0u64..400) {
            if let RangeRequest::Ranges(rs) = parse_range(&format!("bytes={s}-{e}"), len) {
                for (a, b) in rs {
                    prop_assert!(a <= b && b < len);
                }
            }
        }

        #[test]
        fn never_panics(v in ".*", len in any::<u64>()) {
            let _ = parse_range(&v, len);
            let _ = parse_content_range(&v);
            let _ = ETagList::parse(&v);
            let _ = IfRange::parse(&v);
            let _ = parse_chunk_range(&v);
            let _ = parse_upload_ranges(&v);
        }

        #[test]
        fn chunk_range_never_panics_on_near_misses(
            a in any::<u64>(), b in any::<u64>(), t in any::<u64>(),
            sep in prop::sample::select(vec!["-", "/", " ", "*", ""]),
        ) {
            for v in [
                format!("bytes {a}-{b}/{t}"),
                format!("bytes {a}{sep}{b}/{t}"),
                format!("bytes {a}-{b}{sep}{t}"),
                format!("bytes */{t}{sep}"),
            ] {
                if let Ok(ChunkRange::Bytes { start, end, total }) = parse_chunk_range(&v) {
                    prop_assert!(start <= end);
                    prop_assert!(total.is_none_or(|t| end < t));
                    prop_assert!(end < u64::MAX);
                }
            }
        }

        #[test]
        fn upload_ranges_round_trip(mut v in proptest::collection::vec((0u64..1_000_000, 1u64..1000), 0..20)) {
            v.sort_unstable();
            let ranges: Vec<(u64, u64)> = v.iter().map(|&(a, l)| (a, a + l)).collect();
            let text = format_upload_ranges(&ranges);
            prop_assert_eq!(parse_upload_ranges(&text).unwrap(), ranges);
        }
    }
}
