//! RFC 9530 integrity fields (`Repr-Digest`, `Content-Digest`): a structured-field dictionary
//! of algorithm → byte sequence, e.g. `sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:`.

use std::collections::BTreeMap;

use crate::checksum::ChecksumAlgorithm;
use crate::error::{ProtoError, echo};
use crate::http::trim_ows;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Formats one `algorithm=:base64:` member.
pub fn format_digest_field(algorithm: &str, digest: &[u8]) -> String {
    format!("{algorithm}=:{}:", STANDARD.encode(digest))
}

/// The whole-content digests ferry keeps for an upload, cheapest first. Their names come from
/// the one table in [`crate::checksum`]; adding an algorithm here is all it takes for the
/// server to compute, store, announce and compare it.
pub const KEPT: [ChecksumAlgorithm; 3] = [
    ChecksumAlgorithm::Crc64Nvme,
    ChecksumAlgorithm::Blake3,
    ChecksumAlgorithm::Sha256,
];

/// Whole-content digests of one representation: algorithm → digest bytes.
///
/// The one place a digest value lives, whatever holds it: an upload's record, a ranged
/// response, a client's resume state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digests(BTreeMap<ChecksumAlgorithm, Vec<u8>>);

impl Digests {
    /// No digest known.
    pub const fn new() -> Self {
        Digests(BTreeMap::new())
    }

    /// The digest for `algorithm`, if known.
    pub fn get(&self, algorithm: ChecksumAlgorithm) -> Option<&[u8]> {
        self.0.get(&algorithm).map(Vec::as_slice)
    }

    /// Whether the digest for `algorithm` is known.
    pub fn has(&self, algorithm: ChecksumAlgorithm) -> bool {
        self.0.contains_key(&algorithm)
    }

    /// Records a digest. A value of the wrong length for its algorithm is refused (`false`).
    pub fn set(&mut self, algorithm: ChecksumAlgorithm, digest: Vec<u8>) -> bool {
        if digest.len() != algorithm.digest_len() {
            return false;
        }
        self.0.insert(algorithm, digest);
        true
    }

    /// Forgets the digest for `algorithm`.
    pub fn remove(&mut self, algorithm: ChecksumAlgorithm) {
        self.0.remove(&algorithm);
    }

    /// Every known digest, in the table's order.
    pub fn iter(&self) -> impl Iterator<Item = (ChecksumAlgorithm, &[u8])> {
        self.0.iter().map(|(a, d)| (*a, d.as_slice()))
    }

    /// Whether no digest is known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// CRC-64/NVME as a number (CRCs combine without the bytes, see [`crate::checksum`]).
    pub fn crc64nvme(&self) -> Option<u64> {
        self.get(ChecksumAlgorithm::Crc64Nvme)
            .and_then(|d| d.try_into().ok())
            .map(u64::from_be_bytes)
    }

    /// Records CRC-64/NVME from its number.
    pub fn set_crc64nvme(&mut self, crc: u64) {
        self.0
            .insert(ChecksumAlgorithm::Crc64Nvme, crc.to_be_bytes().to_vec());
    }

    /// Whether a digest `want` accepts is known.
    pub fn satisfies(&self, want: WantDigest) -> bool {
        self.0.keys().any(|a| want.accepts(*a))
    }

    /// The digests another side reported that contradict these: `(algorithm, ours, theirs)`
    /// for each algorithm both know with different values.
    pub fn mismatches<'a>(
        &'a self,
        theirs: &'a Digests,
    ) -> impl Iterator<Item = (ChecksumAlgorithm, &'a [u8], &'a [u8])> {
        self.iter()
            .filter_map(|(a, ours)| theirs.get(a).filter(|t| *t != ours).map(|t| (a, ours, t)))
    }

    /// The RFC 9530 dictionary (`Repr-Digest`), `None` if no digest with a key is known.
    pub fn to_field(&self) -> Option<String> {
        let members: Vec<String> = self
            .iter()
            .filter_map(|(a, d)| a.digest_key().map(|k| format_digest_field(k, d)))
            .collect();
        (!members.is_empty()).then(|| members.join(", "))
    }

    /// The digests of an RFC 9530 dictionary ferry knows; unknown keys and values of the
    /// wrong length are skipped, as RFC 9530 lets receivers do.
    pub fn from_field(value: &str) -> Result<Self, ProtoError> {
        let mut out = Digests::new();
        for (key, bytes) in parse_digest_field(value)? {
            if let Some(a) = ChecksumAlgorithm::from_digest_key(&key) {
                out.set(a, bytes);
            }
        }
        Ok(out)
    }
}

impl FromIterator<(ChecksumAlgorithm, Vec<u8>)> for Digests {
    fn from_iter<T: IntoIterator<Item = (ChecksumAlgorithm, Vec<u8>)>>(iter: T) -> Self {
        let mut d = Digests::new();
        for (a, v) in iter {
            d.set(a, v);
        }
        d
    }
}

/// Stored form: one lowercase-hex string per digest, under the algorithm's name (`sha256`,
/// `blake3`, `crc64nvme`). Flattened into a record (`#[serde(flatten)]`), each digest is a
/// field of its own, as ferry's records have always stored them; the record's keys that name
/// no algorithm are ignored, and a `null` is an unknown digest.
#[cfg(feature = "serde")]
mod stored {
    use super::{ChecksumAlgorithm, Digests};
    use serde::de::{Error as _, IgnoredAny, MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use std::fmt;

    impl serde::Serialize for Digests {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (a, d) in self.iter() {
                m.serialize_entry(a.name(), &hex::encode(d))?;
            }
            m.end()
        }
    }

    impl<'de> serde::Deserialize<'de> for Digests {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Fields;
            impl<'de> Visitor<'de> for Fields {
                type Value = Digests;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("digests as lowercase hex by algorithm name")
                }
                fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Digests, M::Error> {
                    let mut out = Digests::new();
                    while let Some(key) = m.next_key::<String>()? {
                        let Some(a) =
                            ChecksumAlgorithm::from_name(&key).filter(|a| a.name() == key)
                        else {
                            m.next_value::<IgnoredAny>()?;
                            continue;
                        };
                        if let Some(h) = m.next_value::<Option<String>>()? {
                            let bytes = hex::decode(&h)
                                .ok()
                                .filter(|b| b.len() == a.digest_len())
                                .ok_or_else(|| M::Error::custom(format!("bad {key}")))?;
                            out.set(a, bytes);
                        }
                    }
                    Ok(out)
                }
            }
            d.deserialize_map(Fields)
        }
    }
}

/// What a `Want-Repr-Digest` / `Want-Content-Digest` field (RFC 9530 §4) asks for: the kept
/// algorithms ([`KEPT`]) with a preference above 0 (0 means "not acceptable").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WantDigest(u8);

impl WantDigest {
    fn bit(algorithm: ChecksumAlgorithm) -> u8 {
        KEPT.iter()
            .position(|a| *a == algorithm)
            .map_or(0, |i| 1 << i)
    }

    /// Asks for exactly these algorithms (those not in [`KEPT`] are ignored).
    pub fn of(algorithms: &[ChecksumAlgorithm]) -> Self {
        WantDigest(algorithms.iter().fold(0, |m, a| m | Self::bit(*a)))
    }

    /// Whether nothing is asked for.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Also asks for `algorithm` (ignored unless it is in [`KEPT`]).
    pub fn with(self, algorithm: ChecksumAlgorithm) -> Self {
        WantDigest(self.0 | Self::bit(algorithm))
    }

    /// Whether `algorithm` is acceptable.
    pub fn accepts(self, algorithm: ChecksumAlgorithm) -> bool {
        self.0 & Self::bit(algorithm) != 0
    }

    /// The acceptable algorithms, cheapest first.
    pub fn algorithms(self) -> impl Iterator<Item = ChecksumAlgorithm> {
        KEPT.into_iter().filter(move |a| self.accepts(*a))
    }

    /// Parses the field leniently: malformed members are skipped. A field that names nothing
    /// ferry keeps asks for SHA-256, the algorithm every RFC 9530 peer understands.
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
            if acceptable && let Some(a) = ChecksumAlgorithm::from_digest_key(&key) {
                w.0 |= Self::bit(a);
            }
        }
        if w.0 == 0 {
            w = WantDigest::of(&[ChecksumAlgorithm::Sha256]);
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
        use ChecksumAlgorithm::*;
        let w = WantDigest::parse("blake3=10, sha-256=3");
        assert_eq!(w, WantDigest::of(&[Sha256, Blake3]));
        let w = WantDigest::parse("crc64nvme=10, blake3=5, sha-256=0");
        assert!(w.accepts(Crc64Nvme) && w.accepts(Blake3) && !w.accepts(Sha256));
        assert_eq!(w.algorithms().collect::<Vec<_>>(), [Crc64Nvme, Blake3]);
        let w = WantDigest::parse("sha-256=0, blake3=1");
        assert!(!w.accepts(Sha256) && w.accepts(Blake3));
        // Nothing known (or everything refused): SHA-256. sha-512 is known but not kept.
        assert!(WantDigest::parse("md5=5").accepts(Sha256));
        assert!(WantDigest::parse("garbage").accepts(Sha256));
        assert_eq!(WantDigest::parse("sha-512=1"), WantDigest::of(&[Sha256]));
        assert!(!WantDigest::of(&[Sha512]).accepts(Sha512));
    }

    #[test]
    fn digests_format_in_table_order() {
        use ChecksumAlgorithm::*;
        let mut d = Digests::new();
        assert_eq!(d.to_field(), None);
        d.set_crc64nvme(0xae8b_1486_0a79_9888);
        assert_eq!(d.to_field().unwrap(), "crc64nvme=:rosUhgp5mIg=:");
        assert_eq!(d.crc64nvme(), Some(0xae8b_1486_0a79_9888));
        assert!(d.set(Blake3, vec![4; 32]));
        assert!(d.set(Sha256, vec![1; 32]));
        assert!(!d.set(Sha256, vec![1, 2, 3]), "wrong length is refused");
        let f = d.to_field().unwrap();
        assert!(
            f.starts_with("sha-256=:") && f.contains(", blake3=:"),
            "{f}"
        );
        assert!(f.ends_with(", crc64nvme=:rosUhgp5mIg=:"), "{f}");
        assert_eq!(Digests::from_field(&f).unwrap(), d);
        assert!(d.satisfies(WantDigest::of(&[Blake3])));
        assert!(!Digests::new().satisfies(WantDigest::of(&[Blake3])));
    }

    #[test]
    fn from_field_skips_unknown_and_misfit_members() {
        let d =
            Digests::from_field("md5=:AAAA:, sha-256=:AQID:, unixsum=42, sha-512=:AA==:").unwrap();
        assert!(d.is_empty(), "{d:?}");
        assert!(Digests::from_field("sha-256=:!!:").is_err());
    }

    #[test]
    fn mismatches_compare_only_what_both_know() {
        use ChecksumAlgorithm::*;
        let a: Digests = [(Sha256, vec![1; 32]), (Crc64Nvme, vec![2; 8])]
            .into_iter()
            .collect();
        let b: Digests = [(Sha256, vec![1; 32]), (Blake3, vec![3; 32])]
            .into_iter()
            .collect();
        assert_eq!(a.mismatches(&b).count(), 0);
        let c: Digests = [(Crc64Nvme, vec![9; 8])].into_iter().collect();
        let m: Vec<_> = a.mismatches(&c).collect();
        assert_eq!(m, [(Crc64Nvme, &[2u8; 8][..], &[9u8; 8][..])]);
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
