//! RFC 9530 integrity fields (`Repr-Digest`, `Content-Digest`): a structured-field dictionary
//! of algorithm → byte sequence, e.g. `sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:`.

use crate::checksum::ChecksumAlgorithm;
use crate::error::{ProtoError, echo};
use crate::http::trim_ows;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Formats one `algorithm=:base64:` member.
pub fn format_digest_field(algorithm: &str, digest: &[u8]) -> String {
    format!("{algorithm}=:{}:", STANDARD.encode(digest))
}

/// The key ferry uses for BLAKE3 digests. It is not in the IANA registry of RFC 9530, so
/// other implementations ignore it (as RFC 9530 requires for unknown keys); it is the
/// cryptographic digest ferry prefers, four times cheaper to compute than SHA-256.
pub const BLAKE3_KEY: &str = "blake3";
/// The RFC 9530 key for SHA-256.
pub const SHA256_KEY: &str = "sha-256";
/// The key ferry uses for CRC-64/NVME (8 bytes, big-endian), the digest ferry's client and
/// server compare by default: not in the IANA registry either, and far cheaper than any
/// cryptographic hash (see [`crate::checksum`]).
pub const CRC64NVME_KEY: &str = "crc64nvme";

/// The whole-content digests ferry computes, by RFC 9530 key, cheapest first.
pub const WHOLE_DIGESTS: [(&str, ChecksumAlgorithm); 3] = [
    (CRC64NVME_KEY, ChecksumAlgorithm::Crc64Nvme),
    (BLAKE3_KEY, ChecksumAlgorithm::Blake3),
    (SHA256_KEY, ChecksumAlgorithm::Sha256),
];

/// The RFC 9530 key of a whole-content digest algorithm ferry computes.
pub fn key_of(algorithm: ChecksumAlgorithm) -> Option<&'static str> {
    WHOLE_DIGESTS
        .iter()
        .find(|(_, a)| *a == algorithm)
        .map(|(k, _)| *k)
}

/// The algorithm behind an RFC 9530 key ferry computes.
pub fn algorithm_of(key: &str) -> Option<ChecksumAlgorithm> {
    WHOLE_DIGESTS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, a)| *a)
}

/// Formats a digest dictionary from the digests that are known, `None` if none is.
pub fn format_digests(
    sha256: Option<&[u8]>,
    blake3: Option<&[u8]>,
    crc64nvme: Option<u64>,
) -> Option<String> {
    let crc = crc64nvme.map(u64::to_be_bytes);
    let members: Vec<String> = [
        (SHA256_KEY, sha256),
        (BLAKE3_KEY, blake3),
        (CRC64NVME_KEY, crc.as_ref().map(|c| &c[..])),
    ]
    .into_iter()
    .filter_map(|(k, d)| d.map(|d| format_digest_field(k, d)))
    .collect();
    (!members.is_empty()).then(|| members.join(", "))
}

/// What a `Want-Repr-Digest` / `Want-Content-Digest` field (RFC 9530 §4) asks for: the
/// algorithms ferry knows with a preference above 0 (0 means "not acceptable").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WantDigest {
    /// SHA-256 is acceptable.
    pub sha256: bool,
    /// BLAKE3 is acceptable.
    pub blake3: bool,
    /// CRC-64/NVME is acceptable.
    pub crc64nvme: bool,
}

impl WantDigest {
    /// Parses the field leniently: malformed members are skipped. A field that names nothing
    /// ferry knows asks for SHA-256, the algorithm every RFC 9530 peer understands.
    pub fn parse(value: &str) -> Self {
        let mut w = WantDigest::default();
        for member in value.split(',') {
            let member = trim_ows(member);
            let (key, pref) = member.split_once('=').unwrap_or((member, "1"));
            let key = key.trim().to_ascii_lowercase();
            let acceptable = pref
                .split(';')
                .next()
                .and_then(|p| p.trim().parse::<u8>().ok())
                .is_some_and(|p| p > 0);
            match key.as_str() {
                SHA256_KEY => w.sha256 |= acceptable,
                BLAKE3_KEY => w.blake3 |= acceptable,
                CRC64NVME_KEY => w.crc64nvme |= acceptable,
                _ => {}
            }
        }
        if !w.sha256 && !w.blake3 && !w.crc64nvme {
            w.sha256 = true;
        }
        w
    }
}

/// Parses a digest dictionary into `(algorithm, bytes)` pairs, in order. Members whose value is
/// not a byte sequence are skipped (RFC 9530 lets receivers ignore what they don't know).
pub fn parse_digest_field(value: &str) -> Result<Vec<(String, Vec<u8>)>, ProtoError> {
    let mut out = Vec::new();
    for member in value.split(',') {
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        let (key, val) = member.split_once('=').ok_or_else(|| {
            ProtoError::InvalidChecksum(format!("digest member {:?} has no value", echo(member)))
        })?;
        let key = key.trim().to_ascii_lowercase();
        let val = val.split(';').next().unwrap_or("").trim();
        let Some(b64) = val.strip_prefix(':').and_then(|v| v.strip_suffix(':')) else {
            continue;
        };
        let bytes = STANDARD.decode(b64).map_err(|_| {
            ProtoError::InvalidChecksum(format!("digest for {:?} is not valid base64", echo(&key)))
        })?;
        out.push((key, bytes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_example() {
        let v = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
        let parsed = parse_digest_field(v).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, "sha-256");
        assert_eq!(format_digest_field("sha-256", &parsed[0].1), v);
        let two = parse_digest_field("sha-512=:AAAA:, sha-256=:AQID:;x=1, unixsum=42").unwrap();
        assert_eq!(
            two,
            vec![
                ("sha-512".into(), vec![0, 0, 0]),
                ("sha-256".into(), vec![1, 2, 3])
            ]
        );
        assert!(parse_digest_field("sha-256=:!!:").is_err());
    }

    #[test]
    fn want_digest_preferences() {
        let w = WantDigest::parse("blake3=10, sha-256=3");
        assert_eq!(
            w,
            WantDigest {
                sha256: true,
                blake3: true,
                crc64nvme: false
            }
        );
        let w = WantDigest::parse("crc64nvme=10, blake3=5, sha-256=0");
        assert!(w.crc64nvme && w.blake3 && !w.sha256);
        let w = WantDigest::parse("sha-256=0, blake3=1");
        assert!(!w.sha256 && w.blake3);
        // Nothing known (or everything refused): SHA-256.
        assert!(WantDigest::parse("md5=5").sha256);
        assert!(WantDigest::parse("garbage").sha256);
        assert_eq!(
            format_digests(Some(&[1, 2, 3]), Some(&[4]), None).unwrap(),
            "sha-256=:AQID:, blake3=:BA==:"
        );
        assert_eq!(
            format_digests(None, None, Some(0xae8b_1486_0a79_9888)).unwrap(),
            "crc64nvme=:rosUhgp5mIg=:"
        );
        assert_eq!(format_digests(None, None, None), None);
    }

    proptest! {
        #[test]
        fn round_trip(d in proptest::collection::vec(any::<u8>(), 0..64)) {
            let f = format_digest_field("sha-256", &d);
            prop_assert_eq!(parse_digest_field(&f).unwrap(), vec![("sha-256".to_string(), d)]);
        }

        #[test]
        fn never_panics(s in ".*") {
            let _ = parse_digest_field(&s);
            let _ = WantDigest::parse(&s);
        }

        #[test]
        fn want_digest_shaped_inputs_never_panic(s in "[a-z0-9=;,. -]{0,40}") {
            let _ = WantDigest::parse(&s);
        }
    }
}
