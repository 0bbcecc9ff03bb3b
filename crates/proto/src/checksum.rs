//! Checksums: the tus `Upload-Checksum` header (`<algorithm> <base64 digest>`) and the
//! hashers behind it, shared by the server (verifying) and the client (sending).
//!
//! `crc32` is IEEE CRC-32 as tus means it (not Castagnoli): with carry-less multiply
//! instructions it is about ten times cheaper than BLAKE3, so it is what ferry's client sends
//! per request (catching corruption in transit before a byte is committed), leaving the
//! whole-file check to the digest compared at the end. `crc64nvme` (CRC-64/NVME, the checksum S3
//! uses for whole objects) is that digest between ferry's ends: with vector carry-less multiply
//! it costs a tenth of BLAKE3, and two CRCs combine without the bytes, so parallel parts and
//! concatenated finals need no second pass. `blake3` is there for a cryptographic digest.

use crate::error::{ProtoError, echo};
use crate::http::trim_ows;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest as _;

/// A checksum algorithm ferry knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChecksumAlgorithm {
    /// SHA-1 (tus requires it).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
    /// MD5.
    Md5,
    /// IEEE CRC-32, big-endian digest bytes.
    Crc32,
    /// BLAKE3, 32-byte digest.
    Blake3,
    /// CRC-64/NVME (the CRC AWS S3 uses for whole objects), big-endian digest bytes.
    Crc64Nvme,
}

impl ChecksumAlgorithm {
    /// Every algorithm, fastest first (a client picks the first the server also lists).
    pub const ALL: [ChecksumAlgorithm; 7] = [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc64Nvme,
        ChecksumAlgorithm::Blake3,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Md5,
        ChecksumAlgorithm::Sha256,
        ChecksumAlgorithm::Sha512,
    ];

    /// What an `Upload-Checksum` trailer may name (tus checksum-trailer). The algorithm of a
    /// trailer is known only after the body, and a server does not read a request's bytes back
    /// from its store, so it hashes the body on the way with each of these: the two CRCs, which
    /// cost next to nothing. Every other algorithm goes in a header.
    pub const IN_TRAILERS: [ChecksumAlgorithm; 2] =
        [ChecksumAlgorithm::Crc32, ChecksumAlgorithm::Crc64Nvme];

    /// Whether an `Upload-Checksum` trailer may name this algorithm ([`Self::IN_TRAILERS`]).
    pub fn fits_trailer(self) -> bool {
        Self::IN_TRAILERS.contains(&self)
    }

    fn entry(self) -> &'static Entry {
        TABLE
            .iter()
            .find(|e| e.algorithm == self)
            .expect("every algorithm is in the table")
    }

    /// The name used by tus (`Upload-Checksum`, `Tus-Checksum-Algorithm`) and in ferry's own
    /// records.
    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// Looks up a tus name (case-insensitive).
    pub fn from_name(name: &str) -> Option<ChecksumAlgorithm> {
        TABLE
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(name))
            .map(|e| e.algorithm)
    }

    /// The key in RFC 9530 fields (`Repr-Digest`, `Content-Digest`), if the algorithm has one.
    pub fn digest_key(self) -> Option<&'static str> {
        self.entry().digest_key
    }

    /// Looks up an RFC 9530 key (keys are lowercase).
    pub fn from_digest_key(key: &str) -> Option<ChecksumAlgorithm> {
        TABLE
            .iter()
            .find(|e| e.digest_key == Some(key))
            .map(|e| e.algorithm)
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        self.entry().len
    }

    /// Picks the fastest algorithm named in a `Tus-Checksum-Algorithm` list.
    pub fn best_of(list: &str) -> Option<ChecksumAlgorithm> {
        let offered: Vec<ChecksumAlgorithm> = list
            .split(',')
            .filter_map(|n| ChecksumAlgorithm::from_name(trim_ows(n)))
            .collect();
        Self::ALL.into_iter().find(|a| offered.contains(a))
    }
}

/// The `Tus-Checksum-Algorithm` value ferry's server announces.
pub fn supported_list() -> String {
    TABLE.iter().map(|e| e.name).collect::<Vec<_>>().join(",")
}

/// What ferry knows of one algorithm.
struct Entry {
    algorithm: ChecksumAlgorithm,
    /// tus name.
    name: &'static str,
    /// RFC 9530 key. `blake3` and `crc64nvme` are not in the IANA registry, so other
    /// implementations ignore them, as RFC 9530 requires for unknown keys.
    digest_key: Option<&'static str>,
    /// Digest length in bytes.
    len: usize,
}

/// The one name table: every algorithm, in the order the server announces them.
const TABLE: [Entry; 7] = [
    Entry {
        algorithm: ChecksumAlgorithm::Sha1,
        name: "sha1",
        // RFC 9530 deprecates `sha` and `md5`: neither is sent or accepted there.
        digest_key: None,
        len: 20,
    },
    Entry {
        algorithm: ChecksumAlgorithm::Sha256,
        name: "sha256",
        digest_key: Some("sha-256"),
        len: 32,
    },
    Entry {
        algorithm: ChecksumAlgorithm::Sha512,
        name: "sha512",
        digest_key: Some("sha-512"),
        len: 64,
    },
    Entry {
        algorithm: ChecksumAlgorithm::Md5,
        name: "md5",
        digest_key: None,
        len: 16,
    },
    Entry {
        algorithm: ChecksumAlgorithm::Crc32,
        name: "crc32",
        digest_key: None,
        len: 4,
    },
    Entry {
        algorithm: ChecksumAlgorithm::Crc64Nvme,
        name: "crc64nvme",
        digest_key: Some("crc64nvme"),
        len: 8,
    },
    Entry {
        algorithm: ChecksumAlgorithm::Blake3,
        name: "blake3",
        digest_key: Some("blake3"),
        len: 32,
    },
];

/// An algorithm and the digest a sender claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub algorithm: ChecksumAlgorithm,
    /// The raw digest bytes.
    pub digest: Vec<u8>,
}

impl Checksum {
    /// Parses `Upload-Checksum: <algorithm> <base64>`. An unknown algorithm is its own error
    /// (tus answers it with 400 before reading the body).
    pub fn parse(value: &str) -> Result<Checksum, ProtoError> {
        let v = trim_ows(value);
        let (name, b64) = v.split_once([' ', '\t']).ok_or_else(|| {
            ProtoError::InvalidChecksum(format!(
                "Upload-Checksum must be \"<algorithm> <base64 digest>\", got {:?}",
                echo(v)
            ))
        })?;
        let algorithm = ChecksumAlgorithm::from_name(name)
            .ok_or_else(|| ProtoError::UnknownChecksumAlgorithm(echo(name)))?;
        let b64 = trim_ows(b64);
        let digest = STANDARD.decode(b64).map_err(|_| {
            ProtoError::InvalidChecksum("Upload-Checksum: digest is not valid base64".into())
        })?;
        if digest.len() != algorithm.digest_len() {
            return Err(ProtoError::InvalidChecksum(format!(
                "Upload-Checksum: a {} digest has {} bytes, got {}",
                algorithm.name(),
                algorithm.digest_len(),
                digest.len()
            )));
        }
        Ok(Checksum { algorithm, digest })
    }

    /// Formats as an `Upload-Checksum` value.
    pub fn format(&self) -> String {
        format!(
            "{} {}",
            self.algorithm.name(),
            STANDARD.encode(&self.digest)
        )
    }
}

/// Incremental hashing with any [`ChecksumAlgorithm`].
#[derive(Clone)]
pub struct Hasher(Inner);

#[derive(Clone)]
enum Inner {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    Md5(md5::Md5),
    Crc32(crc32fast::Hasher),
    Blake3(Box<blake3::Hasher>),
    Crc64Nvme(crc_fast::Digest),
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hasher").field(&self.algorithm()).finish()
    }
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: ChecksumAlgorithm) -> Hasher {
        Hasher(match algorithm {
            ChecksumAlgorithm::Sha1 => Inner::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Sha256 => Inner::Sha256(sha2::Sha256::new()),
            ChecksumAlgorithm::Sha512 => Inner::Sha512(sha2::Sha512::new()),
            ChecksumAlgorithm::Md5 => Inner::Md5(md5::Md5::new()),
            ChecksumAlgorithm::Crc32 => Inner::Crc32(crc32fast::Hasher::new()),
            ChecksumAlgorithm::Blake3 => Inner::Blake3(Box::new(blake3::Hasher::new())),
            ChecksumAlgorithm::Crc64Nvme => Inner::Crc64Nvme(crc64nvme()),
        })
    }

    /// A CRC-64/NVME hasher that continues from `crc`, the CRC-64/NVME of the bytes before:
    /// a whole-upload CRC resumes from the 8 bytes kept in the upload's record.
    pub fn crc64nvme_continuing(crc: u64) -> Hasher {
        // The algorithm's state is its final value before the final XOR with all ones.
        Hasher(Inner::Crc64Nvme(crc_fast::Digest::new_with_init_state(
            crc_fast::CrcAlgorithm::Crc64Nvme,
            !crc,
        )))
    }

    /// The CRC-64/NVME of the bytes so far, without finishing (`None` for other algorithms).
    pub fn crc64nvme_so_far(&self) -> Option<u64> {
        match &self.0 {
            Inner::Crc64Nvme(h) => Some(h.finalize()),
            _ => None,
        }
    }

    /// Which algorithm this is.
    pub fn algorithm(&self) -> ChecksumAlgorithm {
        match &self.0 {
            Inner::Sha1(_) => ChecksumAlgorithm::Sha1,
            Inner::Sha256(_) => ChecksumAlgorithm::Sha256,
            Inner::Sha512(_) => ChecksumAlgorithm::Sha512,
            Inner::Md5(_) => ChecksumAlgorithm::Md5,
            Inner::Crc32(_) => ChecksumAlgorithm::Crc32,
            Inner::Blake3(_) => ChecksumAlgorithm::Blake3,
            Inner::Crc64Nvme(_) => ChecksumAlgorithm::Crc64Nvme,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Inner::Sha1(h) => h.update(data),
            Inner::Sha256(h) => h.update(data),
            Inner::Sha512(h) => h.update(data),
            Inner::Md5(h) => h.update(data),
            Inner::Crc32(h) => h.update(data),
            Inner::Blake3(h) => {
                h.update(data);
            }
            Inner::Crc64Nvme(h) => h.update(data),
        }
    }

    /// The digest.
    pub fn finalize(self) -> Vec<u8> {
        match self.0 {
            Inner::Sha1(h) => h.finalize().to_vec(),
            Inner::Sha256(h) => h.finalize().to_vec(),
            Inner::Sha512(h) => h.finalize().to_vec(),
            Inner::Md5(h) => h.finalize().to_vec(),
            Inner::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            Inner::Blake3(h) => h.finalize().as_bytes().to_vec(),
            Inner::Crc64Nvme(h) => h.finalize().to_be_bytes().to_vec(),
        }
    }
}

fn crc64nvme() -> crc_fast::Digest {
    crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme)
}

/// CRC-64/NVME of `data` as a number.
pub fn crc64nvme_of(data: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data)
}

/// The CRC-64/NVME of `a` followed by `b`, from their CRCs and `b`'s length alone: how a
/// concatenation gets its digest without reading its parts again.
pub fn crc64nvme_combine(a: u64, b: u64, b_len: u64) -> u64 {
    crc_fast::checksum_combine(crc_fast::CrcAlgorithm::Crc64Nvme, a, b, b_len)
}

/// One-shot digest of `data`.
pub fn digest(algorithm: ChecksumAlgorithm, data: &[u8]) -> Vec<u8> {
    let mut h = Hasher::new(algorithm);
    h.update(data);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crc64nvme_continues_from_the_crc_of_the_bytes_before() {
        let mut h = Hasher::crc64nvme_continuing(crc64nvme_of(b"1234"));
        h.update(b"56789");
        assert_eq!(h.crc64nvme_so_far(), Some(crc64nvme_of(b"123456789")));
        let mut h = Hasher::crc64nvme_continuing(crc64nvme_of(b""));
        h.update(b"123456789");
        assert_eq!(
            h.finalize(),
            crc64nvme_of(b"123456789").to_be_bytes().to_vec()
        );
        assert_eq!(
            Hasher::new(ChecksumAlgorithm::Sha256).crc64nvme_so_far(),
            None
        );
    }
    use proptest::prelude::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn known_vectors() {
        let d = |a| hex(&digest(a, b"hello"));
        assert_eq!(
            d(ChecksumAlgorithm::Sha1),
            "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
        );
        assert_eq!(
            d(ChecksumAlgorithm::Sha256),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            d(ChecksumAlgorithm::Md5),
            "5d41402abc4b2a76b9719d911017c592"
        );
        // IEEE CRC-32 of "hello" (Castagnoli would be 9a71bb4c).
        assert_eq!(d(ChecksumAlgorithm::Crc32), "3610a686");
        assert_eq!(
            d(ChecksumAlgorithm::Blake3),
            "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
        assert_eq!(digest(ChecksumAlgorithm::Sha512, b"").len(), 64);
        // The catalogue's check value for CRC-64/NVME.
        assert_eq!(
            hex(&digest(ChecksumAlgorithm::Crc64Nvme, b"123456789")),
            "ae8b14860a799888"
        );
    }

    #[test]
    fn crc64nvme_combines_without_the_bytes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for cut in [0, 1, 4095, 65_536, data.len()] {
            let (a, b) = data.split_at(cut);
            assert_eq!(
                crc64nvme_combine(crc64nvme_of(a), crc64nvme_of(b), b.len() as u64),
                crc64nvme_of(&data),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn parses_tus_examples() {
        let c = Checksum::parse("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").unwrap();
        assert_eq!(c.algorithm, ChecksumAlgorithm::Sha1);
        assert_eq!(c.digest.len(), 20);
        assert_eq!(c.format(), "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=");
        assert_eq!(
            Checksum::parse("SHA256 LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=")
                .unwrap()
                .algorithm,
            ChecksumAlgorithm::Sha256
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(matches!(
            Checksum::parse("whirlpool AAAA"),
            Err(ProtoError::UnknownChecksumAlgorithm(_))
        ));
        for bad in [
            "",
            "sha1",
            "sha1 !!!",
            "sha1 AAAA",
            "crc32 AAAAAAAA",
            "md5  ",
        ] {
            assert!(
                matches!(Checksum::parse(bad), Err(ProtoError::InvalidChecksum(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn best_of_prefers_fast_algorithms() {
        assert_eq!(
            ChecksumAlgorithm::best_of("sha1, md5,crc32"),
            Some(ChecksumAlgorithm::Crc32)
        );
        assert_eq!(
            ChecksumAlgorithm::best_of(&supported_list()),
            Some(ChecksumAlgorithm::Crc32)
        );
        assert_eq!(
            ChecksumAlgorithm::best_of("sha1,blake3"),
            Some(ChecksumAlgorithm::Blake3)
        );
        assert_eq!(ChecksumAlgorithm::best_of("whirlpool"), None);
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..300), i in 0usize..7) {
            let algorithm = ChecksumAlgorithm::ALL[i];
            let c = Checksum { algorithm, digest: digest(algorithm, &data) };
            prop_assert_eq!(Checksum::parse(&c.format()).unwrap(), c);
        }

        #[test]
        fn incremental_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..500), cut in 0usize..500, i in 0usize..7) {
            let algorithm = ChecksumAlgorithm::ALL[i];
            let cut = cut.min(data.len());
            let mut h = Hasher::new(algorithm);
            h.update(&data[..cut]);
            h.update(&data[cut..]);
            prop_assert_eq!(h.finalize(), digest(algorithm, &data));
        }

        #[test]
        fn never_panics(s in ".*") {
            let _ = Checksum::parse(&s);
            let _ = ChecksumAlgorithm::best_of(&s);
        }
    }
}
