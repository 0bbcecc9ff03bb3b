//! Codec for the tus `Upload-Metadata` header.
//!
//! Wire format: comma-separated elements, each either `key` or
//! `key base64value`. The rules applied by [`Metadata::parse`]:
//!
//! - An empty or all-whitespace header is valid and empty (tuspy sends one).
//! - Elements are trimmed of spaces/tabs; an empty element (`a,,b`, a
//!   trailing comma) is an error.
//! - Keys are 1..=128 bytes of visible ASCII (0x21..=0x7E) other than `,`,
//!   and unique within the header.
//! - Key and value are separated by one or more spaces (tabs tolerated).
//! - Values use the standard base64 alphabet; padding is optional (none,
//!   partial or full), but excess padding, an impossible length, or unused
//!   trailing bits that are not zero are rejected.
//! - An element with a key only yields `None`. An empty decoded value is
//!   stored as `None` too, which keeps `parse(format(m)) == m`.
//! - At most 256 entries; each decoded value at most 64 KiB.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::error::{ProtoError, echo};
use crate::http::trim_ows;

/// Most entries a [`Metadata`] may hold.
pub const MAX_ENTRIES: usize = 256;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// Longest decoded value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// Longest base64 text that can decode to [`MAX_VALUE_LEN`] bytes (padded);
/// checked before decoding so a hostile header cannot make us allocate much.
const MAX_ENCODED_LEN: usize = MAX_VALUE_LEN.div_ceil(3) * 4;

/// Standard alphabet, padding optional, trailing bits must be zero.
const DECODER: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parsed `Upload-Metadata`: ordered, unique keys with optional binary values.
///
/// Every instance satisfies the rules in the [module docs](self), whichever
/// constructor built it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    entries: Vec<(String, Option<Vec<u8>>)>,
}

impl Metadata {
    /// An empty set of metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses an `Upload-Metadata` header value.
    pub fn parse(header: &str) -> Result<Metadata, ProtoError> {
        let mut md = Metadata::new();
        if trim_ows(header).is_empty() {
            return Ok(md);
        }
        for element in header.split(',') {
            let element = trim_ows(element);
            if element.is_empty() {
                return Err(bad("empty entry"));
            }
            let (key, value) = match element.find([' ', '\t']) {
                Some(i) => (&element[..i], Some(trim_ows(&element[i..]))),
                None => (element, None),
            };
            validate_key(key)?;
            let value = match value {
                Some(text) => decode_value(key, text)?,
                None => None,
            };
            md.push_new(key.to_owned(), value)?;
        }
        Ok(md)
    }

    /// Builds metadata from stored entries, validating them as
    /// [`parse`](Self::parse) would. `Some(empty)` is normalised to `None`.
    pub fn from_entries(entries: Vec<(String, Option<Vec<u8>>)>) -> Result<Metadata, ProtoError> {
        let mut md = Metadata::new();
        for (key, value) in entries {
            validate_key(&key)?;
            let value = normalise_value(&key, value)?;
            md.push_new(key, value)?;
        }
        Ok(md)
    }

    /// Formats the canonical header value: `key base64,key2` with padded
    /// base64 and no spaces after commas.
    pub fn format(&self) -> String {
        let mut out = String::new();
        for (i, (key, value)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            if let Some(value) = value {
                out.push(' ');
                STANDARD.encode_string(value, &mut out);
            }
        }
        out
    }

    /// The value of `key`; `None` if the key is absent or has no value.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Whether `key` is present, with or without a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    /// All entries, in header order.
    pub fn entries(&self) -> &[(String, Option<Vec<u8>>)] {
        &self.entries
    }

    /// All entries, in header order, by value (e.g. for persisting).
    pub fn into_entries(self) -> Vec<(String, Option<Vec<u8>>)> {
        self.entries
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Sets `key` to `value`, replacing an existing entry in place or
    /// appending a new one. Validates the key and the limits;
    /// `Some(empty)` is normalised to `None`.
    pub fn insert(&mut self, key: String, value: Option<Vec<u8>>) -> Result<(), ProtoError> {
        validate_key(&key)?;
        let value = normalise_value(&key, value)?;
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
            return Ok(());
        }
        self.push_new(key, value)
    }

    /// The uploader's file name: the `filename` value, else the `name` value
    /// (tus clients disagree on the key). Untrusted: see
    /// [`crate::disposition::attachment`].
    pub fn filename(&self) -> Option<&[u8]> {
        self.get("filename").or_else(|| self.get("name"))
    }

    /// Appends an entry whose key and value are already validated, enforcing
    /// uniqueness and the entry limit.
    fn push_new(&mut self, key: String, value: Option<Vec<u8>>) -> Result<(), ProtoError> {
        if self.contains_key(&key) {
            return Err(bad(format!("duplicate key {}", quote(&key))));
        }
        if self.entries.len() >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        self.entries.push((key, value));
        Ok(())
    }
}

fn bad(msg: impl Into<String>) -> ProtoError {
    ProtoError::InvalidMetadata(msg.into())
}

/// Quotes untrusted text for an error message: truncated and ASCII-escaped.
fn quote(s: &str) -> String {
    format!("\"{}\"", echo(s).escape_default())
}

fn validate_key(key: &str) -> Result<(), ProtoError> {
    if key.is_empty() {
        return Err(bad("empty key"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(bad(format!(
            "key {} longer than {MAX_KEY_LEN} bytes",
            quote(key)
        )));
    }
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
        return Err(bad(format!("invalid key {}", quote(key))));
    }
    Ok(())
}

fn decode_value(key: &str, text: &str) -> Result<Option<Vec<u8>>, ProtoError> {
    if text.len() > MAX_ENCODED_LEN {
        return Err(too_long(key));
    }
    let bytes = DECODER
        .decode(text)
        .map_err(|_| bad(format!("invalid base64 value for key {}", quote(key))))?;
    normalise_value(key, Some(bytes))
}

fn normalise_value(key: &str, value: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, ProtoError> {
    match value {
        Some(v) if v.len() > MAX_VALUE_LEN => Err(too_long(key)),
        Some(v) if v.is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn too_long(key: &str) -> ProtoError {
    bad(format!(
        "value of key {} longer than {MAX_VALUE_LEN} bytes",
        quote(key)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(msg: &str) -> Result<Metadata, ProtoError> {
        Err(ProtoError::InvalidMetadata(msg.into()))
    }

    fn md(entries: &[(&str, Option<&[u8]>)]) -> Metadata {
        Metadata::from_entries(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn empty_headers_are_empty() {
        for h in ["", " ", "\t", "  \t "] {
            let m = Metadata::parse(h).unwrap();
            assert!(m.is_empty());
            assert_eq!(m.len(), 0);
            assert_eq!(m.format(), "");
        }
    }

    #[test]
    fn parses_tus_js_client_style() {
        let m = Metadata::parse("filename dGVzdC50eHQ=,filetype dGV4dC9wbGFpbg==").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("filename"), Some(&b"test.txt"[..]));
        assert_eq!(m.get("filetype"), Some(&b"text/plain"[..]));
        assert_eq!(m.filename(), Some(&b"test.txt"[..]));
        assert_eq!(
            m.format(),
            "filename dGVzdC50eHQ=,filetype dGV4dC9wbGFpbg=="
        );
    }

    #[test]
    fn key_only_entries() {
        let m = Metadata::parse("is_confidential,name Zm9v").unwrap();
        assert!(m.contains_key("is_confidential"));
        assert_eq!(m.get("is_confidential"), None);
        assert_eq!(m.get("name"), Some(&b"foo"[..]));
        assert!(!m.contains_key("absent"));
        assert_eq!(m.format(), "is_confidential,name Zm9v");
        // A trailing space is trimmed away: still key-only.
        let m = Metadata::parse("flag ").unwrap();
        assert_eq!(m.entries(), &[("flag".to_string(), None)]);
    }

    #[test]
    fn whitespace_tolerance() {
        let m = Metadata::parse(" a   YQ== ,\tb\tYg , c ").unwrap();
        assert_eq!(m, md(&[("a", Some(b"a")), ("b", Some(b"b")), ("c", None)]));
        assert_eq!(m.format(), "a YQ==,b Yg==,c");
    }

    #[test]
    fn padding_is_optional() {
        assert_eq!(Metadata::parse("a YQ").unwrap().get("a"), Some(&b"a"[..]));
        assert_eq!(Metadata::parse("a YQ==").unwrap().get("a"), Some(&b"a"[..]));
        assert_eq!(Metadata::parse("a YQ=").unwrap().get("a"), Some(&b"a"[..]));
        assert_eq!(Metadata::parse("a YWI").unwrap().get("a"), Some(&b"ab"[..]));
        assert_eq!(
            Metadata::parse("a YWI=").unwrap().get("a"),
            Some(&b"ab"[..])
        );
    }

    #[test]
    fn rejects_bad_base64() {
        let e = err("invalid base64 value for key \"a\"");
        for h in [
            "a !!!!",
            "a Y",    // impossible length
            "a YR==", // non-zero trailing bits
            "a YQ==YQ==",
            "a YWI==", // excess padding
            "a YQ===",
            "a =",
            "a Y Q==",  // space inside the value
            "a Zm9v-_", // URL-safe alphabet
            "a ✓",
        ] {
            assert_eq!(Metadata::parse(h), e, "{h:?}");
        }
    }

    #[test]
    fn rejects_empty_elements() {
        for h in ["a,", ",a", "a,,b", ",", " , ", "a YQ==, ,b"] {
            assert_eq!(Metadata::parse(h), err("empty entry"), "{h:?}");
        }
    }

    #[test]
    fn rejects_duplicates() {
        assert_eq!(
            Metadata::parse("name YQ==,name Yg=="),
            err("duplicate key \"name\"")
        );
        assert_eq!(Metadata::parse("a,a"), err("duplicate key \"a\""));
        assert_eq!(
            Metadata::parse("name YQ==,other,name"),
            err("duplicate key \"name\"")
        );
        // Keys are case-sensitive.
        assert_eq!(Metadata::parse("a,A").unwrap().len(), 2);
    }

    #[test]
    fn rejects_bad_keys() {
        // "my key" splits into key "my" and a value that is not base64.
        assert_eq!(
            Metadata::parse("my key dGVzdA=="),
            err("invalid base64 value for key \"my\"")
        );
        assert_eq!(
            Metadata::parse("naïve YQ=="),
            err("invalid key \"na\\u{ef}ve\"")
        );
        assert_eq!(Metadata::parse("a\u{0}b"), err("invalid key \"a\\u{0}b\""));
        assert_eq!(Metadata::parse("a\rb"), err("invalid key \"a\\rb\""));
        assert_eq!(Metadata::parse("\u{7f}"), err("invalid key \"\\u{7f}\""));
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(Metadata::parse(&long).is_err());
        assert!(Metadata::parse(&"k".repeat(MAX_KEY_LEN)).is_ok());
    }

    #[test]
    fn entry_limit() {
        let ok: Vec<String> = (0..MAX_ENTRIES).map(|i| format!("k{i}")).collect();
        assert_eq!(Metadata::parse(&ok.join(",")).unwrap().len(), MAX_ENTRIES);
        let too_many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("k{i}")).collect();
        assert_eq!(
            Metadata::parse(&too_many.join(",")),
            err("more than 256 entries")
        );
    }

    #[test]
    fn value_limit() {
        let max = STANDARD.encode(vec![7u8; MAX_VALUE_LEN]);
        let m = Metadata::parse(&format!("v {max}")).unwrap();
        assert_eq!(m.get("v").map(<[u8]>::len), Some(MAX_VALUE_LEN));
        let over = STANDARD.encode(vec![7u8; MAX_VALUE_LEN + 1]);
        assert_eq!(
            Metadata::parse(&format!("v {over}")),
            err("value of key \"v\" longer than 65536 bytes")
        );
        let huge = "A".repeat(10 * MAX_VALUE_LEN);
        assert!(Metadata::parse(&format!("v {huge}")).is_err());
    }

    #[test]
    fn from_entries_validates() {
        assert!(Metadata::from_entries(vec![("".into(), None)]).is_err());
        assert!(Metadata::from_entries(vec![("a b".into(), None)]).is_err());
        assert!(Metadata::from_entries(vec![("a,b".into(), None)]).is_err());
        assert_eq!(
            Metadata::from_entries(vec![("a".into(), None), ("a".into(), None)]),
            err("duplicate key \"a\"")
        );
        assert!(
            Metadata::from_entries(vec![("a".into(), Some(vec![0; MAX_VALUE_LEN + 1]))]).is_err()
        );
        let m = Metadata::from_entries(vec![("a".into(), Some(vec![]))]).unwrap();
        assert_eq!(m.entries(), &[("a".to_string(), None)]);
        assert_eq!(m.clone().into_entries(), vec![("a".to_string(), None)]);
    }

    #[test]
    fn insert_replaces_in_place() {
        let mut m = Metadata::parse("a YQ==,b").unwrap();
        m.insert("a".into(), Some(b"z".to_vec())).unwrap();
        m.insert("c".into(), None).unwrap();
        m.insert("b".into(), Some(vec![])).unwrap();
        assert_eq!(m, md(&[("a", Some(b"z")), ("b", None), ("c", None)]));
        assert!(m.insert("bad key".into(), None).is_err());
        assert!(m.insert("é".into(), None).is_err());
        assert_eq!(m.len(), 3);

        let mut full = Metadata::new();
        for i in 0..MAX_ENTRIES {
            full.insert(format!("k{i}"), None).unwrap();
        }
        assert!(full.insert("one-more".into(), None).is_err());
        // Replacing is still allowed when full.
        full.insert("k0".into(), Some(b"x".to_vec())).unwrap();
    }

    #[test]
    fn filename_prefers_filename_over_name() {
        assert_eq!(
            md(&[("name", Some(b"n")), ("filename", Some(b"f"))]).filename(),
            Some(&b"f"[..])
        );
        assert_eq!(md(&[("name", Some(b"n"))]).filename(), Some(&b"n"[..]));
        assert_eq!(
            md(&[("filename", None), ("name", Some(b"n"))]).filename(),
            Some(&b"n"[..])
        );
        assert_eq!(md(&[("other", Some(b"x"))]).filename(), None);
    }

    #[test]
    fn binary_values_round_trip() {
        let m = md(&[("bin", Some(&[0, 255, 10, 13, 44, 32]))]);
        assert_eq!(Metadata::parse(&m.format()).unwrap(), m);
    }

    fn arb_metadata() -> impl Strategy<Value = Metadata> {
        let key = "[\\x21-\\x2b\\x2d-\\x7e]{1,12}";
        let value = prop::option::of(prop::collection::vec(any::<u8>(), 0..40));
        prop::collection::vec((key, value), 0..12).prop_map(|entries| {
            let mut seen = std::collections::HashSet::new();
            let unique = entries
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .collect();
            Metadata::from_entries(unique).unwrap()
        })
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(m in arb_metadata()) {
            let text = m.format();
            prop_assert!(!text.contains(", "));
            prop_assert_eq!(Metadata::parse(&text), Ok(m));
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            if let Ok(m) = Metadata::parse(&s) {
                // Whatever parses is canonicalised stably.
                prop_assert_eq!(Metadata::parse(&m.format()), Ok(m));
            }
        }

        #[test]
        fn parse_never_panics_on_plausible_input(s in "[a-zA-Z0-9+/= ,\t]{0,60}") {
            if let Ok(m) = Metadata::parse(&s) {
                prop_assert_eq!(Metadata::parse(&m.format()), Ok(m));
            }
        }

        #[test]
        fn from_entries_never_panics(
            entries in prop::collection::vec(
                (any::<String>(), prop::option::of(prop::collection::vec(any::<u8>(), 0..8))),
                0..6,
            )
        ) {
            let _ = Metadata::from_entries(entries);
        }
    }
}
