//! Upload identifiers.

use std::fmt;
use std::str::FromStr;

use crate::error::ProtoError;

/// Identifies one upload: 128 random bits supplied by the caller (this crate
/// has no randomness), shown as 32 lowercase hex digits.
///
/// [`UploadId::parse`] is the one strict parser for ids taken from URLs, so
/// anything that could be a path trick (`..`, `/`, `%2F`, NUL, uppercase
/// variants aliasing one id) never reaches storage.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId([u8; 16]);

/// Length of the textual form.
const HEX_LEN: usize = 32;
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

impl UploadId {
    /// Wraps 16 bytes, which should come from a cryptographic RNG.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses exactly 32 chars of `[0-9a-f]`; anything else is
    /// [`ProtoError::InvalidId`]. Uppercase is rejected so that every id has
    /// a single spelling.
    pub fn parse(s: &str) -> Result<UploadId, ProtoError> {
        let s = s.as_bytes();
        if s.len() != HEX_LEN {
            return Err(ProtoError::InvalidId);
        }
        let mut out = [0u8; 16];
        for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(UploadId(out))
    }
}

/// A short, one-way name for an upload, for logs: the first 5 bytes of the SHA-256 of the id's
/// text, as 10 hex digits. An id is a capability (whoever knows it may write and delete the
/// upload), so logs kept at info level name uploads by tag; an operator given an id finds its
/// lines with `printf %s ID | sha256sum | cut -c1-10`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdTag([u8; 5]);

impl UploadId {
    /// This id's [`IdTag`].
    pub fn tag(&self) -> IdTag {
        use sha2::Digest;
        let d = sha2::Sha256::digest(self.to_string().as_bytes());
        let mut t = [0u8; 5];
        t.copy_from_slice(&d[..5]);
        IdTag(t)
    }
}

impl fmt::Display for IdTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for IdTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `text` with every upload id in it (a run of exactly 32 lowercase hex digits) replaced by its
/// [`IdTag`]: for log lines whose text comes from elsewhere (error messages, paths, URLs).
pub fn redact_ids(text: &str) -> std::borrow::Cow<'_, str> {
    let b = text.as_bytes();
    let is_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    let mut out = String::new();
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        if !is_hex(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_hex(b[i]) {
            i += 1;
        }
        // Only a whole run: a longer one (with uppercase hex too) is a digest, not an id. Any
        // other neighbour may touch it: `id=`, a path, a terminal's colour code (`\x1b[0m`).
        let bounded = |j: usize| j >= b.len() || !b[j].is_ascii_hexdigit();
        let before_ok = start == 0 || !b[start - 1].is_ascii_hexdigit();
        if i - start == HEX_LEN
            && before_ok
            && bounded(i)
            && let Ok(id) = UploadId::parse(&text[start..i])
        {
            out.push_str(&text[copied..start]);
            out.push_str(&id.tag().to_string());
            copied = i;
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

fn nibble(c: u8) -> Result<u8, ProtoError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(ProtoError::InvalidId),
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; HEX_LEN];
        for (pair, byte) in buf.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX_DIGITS[usize::from(byte >> 4)];
            pair[1] = HEX_DIGITS[usize::from(byte & 0x0f)];
        }
        // Only ASCII hex digits were written.
        let s = std::str::from_utf8(&buf).map_err(|_| fmt::Error)?;
        f.pad(s)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for UploadId {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UploadId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn display_and_parse() {
        let bytes = [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ];
        let id = UploadId::from_bytes(bytes);
        assert_eq!(id.to_string(), SAMPLE);
        assert_eq!(format!("{id:?}"), SAMPLE);
        assert_eq!(id.as_bytes(), &bytes);
        assert_eq!(UploadId::parse(SAMPLE), Ok(id));
        assert_eq!(SAMPLE.parse::<UploadId>(), Ok(id));
        assert_eq!(UploadId::from_bytes([0; 16]).to_string(), "0".repeat(32));
        assert_eq!(UploadId::from_bytes([0xff; 16]).to_string(), "f".repeat(32));
    }

    #[test]
    fn tags_are_short_one_way_names() {
        let id = UploadId::parse(SAMPLE).unwrap();
        // printf %s 00112233445566778899aabbccddeeff | sha256sum | cut -c1-10
        assert_eq!(id.tag().to_string(), "5947d7c33d");
        assert_ne!(UploadId::from_bytes([0; 16]).tag(), id.tag());
    }

    #[test]
    fn redaction_replaces_whole_ids_only() {
        let tag = UploadId::parse(SAMPLE).unwrap().tag().to_string();
        assert_eq!(
            redact_ids(&format!("upload {SAMPLE} at /files/{SAMPLE}?x")),
            format!("upload {tag} at /files/{tag}?x")
        );
        // A terminal's colour codes around a field's value, a name run into it.
        assert_eq!(
            redact_ids(&format!(
                "\x1b[3mid\x1b[0m\x1b[2m=\x1b[0m{SAMPLE} up{SAMPLE}x"
            )),
            format!("\x1b[3mid\x1b[0m\x1b[2m=\x1b[0m{tag} up{tag}x")
        );
        for kept in [
            "no ids here".to_string(),
            format!("{SAMPLE}0"),
            format!("A{SAMPLE}"),
            SAMPLE.to_uppercase(),
            format!("sha256 {SAMPLE}{SAMPLE}"),
        ] {
            assert!(
                matches!(redact_ids(&kept), std::borrow::Cow::Borrowed(_)),
                "{kept}"
            );
        }
    }

    #[test]
    fn ordering_follows_bytes() {
        let a = UploadId::from_bytes([0; 16]);
        let mut b = [0; 16];
        b[15] = 1;
        assert!(a < UploadId::from_bytes(b));
    }

    #[test]
    fn rejects_every_trick() {
        let bad = [
            "",
            "0",
            &SAMPLE[..31],
            &format!("{SAMPLE}0"),
            &format!("{SAMPLE}/"),
            &format!("/{}", &SAMPLE[1..]),
            "00112233445566778899AABBCCDDEEFF",
            "00112233445566778899aabbccddeefF",
            "..112233445566778899aabbccddeeff",
            "../../../../../../../etc/passwd0",
            "%2F112233445566778899aabbccddeeff",
            "%2f%2f2233445566778899aabbccddee",
            "00112233445566778899aabbccddee/f",
            "00112233445566778899aabbccddee\\f",
            "00112233445566778899aabbccddee\0f",
            "00112233445566778899aabbccddee\0",
            " 0112233445566778899aabbccddeeff",
            "0112233445566778899aabbccddeeff ",
            "00112233445566778899aabbccddeefg",
            "0x112233445566778899aabbccddeeff",
            "+0112233445566778899aabbccddeeff",
            "-0112233445566778899aabbccddeeff",
            // 32 bytes but not 32 ASCII chars.
            "é0112233445566778899aabbccddeef",
            "００112233445566778899aabbccddee",
            "\u{0660}112233445566778899aabbccddeeff",
        ];
        for s in bad {
            assert_eq!(UploadId::parse(s), Err(ProtoError::InvalidId), "{s:?}");
            assert!(s.parse::<UploadId>().is_err());
        }
    }

    #[test]
    fn display_respects_padding() {
        let id = UploadId::from_bytes([1; 16]);
        assert_eq!(format!("{id:>34}"), format!("  {id}"));
    }

    proptest! {
        #[test]
        fn round_trip(bytes in any::<[u8; 16]>()) {
            let id = UploadId::from_bytes(bytes);
            let s = id.to_string();
            prop_assert_eq!(s.len(), 32);
            prop_assert!(s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            prop_assert_eq!(UploadId::parse(&s), Ok(id));
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            if let Ok(id) = UploadId::parse(&s) {
                prop_assert_eq!(id.to_string(), s);
            }
        }

        #[test]
        fn parse_hexish_is_canonical(s in "[0-9a-fA-F./%]{30,34}") {
            if let Ok(id) = UploadId::parse(&s) {
                prop_assert_eq!(id.to_string(), s);
            }
        }
    }
}
