//! RFC 9530 integrity fields (`Repr-Digest`, `Content-Digest`): a structured-field dictionary
//! of algorithm → byte sequence, e.g. `sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:`.

use crate::error::{ProtoError, echo};
use crate::tus::trim_ows;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Formats one `algorithm=:base64:` member.
pub fn format_digest_field(algorithm: &str, digest: &[u8]) -> String {
    format!("{algorithm}=:{}:", STANDARD.encode(digest))
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

    proptest! {
        #[test]
        fn round_trip(d in proptest::collection::vec(any::<u8>(), 0..64)) {
            let f = format_digest_field("sha-256", &d);
            prop_assert_eq!(parse_digest_field(&f).unwrap(), vec![("sha-256".to_string(), d)]);
        }

        #[test]
        fn never_panics(s in ".*") {
            let _ = parse_digest_field(&s);
        }
    }
}
