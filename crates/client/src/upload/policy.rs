//! The upload's decisions, as pure functions: how many streams, which whole-file digest to
//! hash with and ask the server for (and which to fall back on), whether a small file goes in
//! its creation request, and whether a finished upload recorded by an earlier run still
//! stands.

use super::{AUTO_PARALLEL_RTT, FileDigest, MIN_PARALLEL_SIZE, SMALL_FILE_MAX};
use crate::adapter::Adapter;
use crate::options::{Parallel, Verification};
use crate::response::{Digests, RemoteUpload, ServerCaps};
use crate::state::UploadRecord;
use ferry_proto::checksum::ChecksumAlgorithm;
use ferry_proto::digest::KEPT;
use std::time::Duration;

/// Single stream or segments (tus concatenation, or ranges of one chunk session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Streams {
    /// One upload, one stream.
    Single,
    /// Segments over this many streams (`None`: as many as measurement says).
    Segmented(Option<usize>),
}

/// How a saved record lays its upload out: several parts, or a final upload joining them, is a
/// segmented upload (resumed with as many streams as measurement says).
pub(crate) fn recorded_layout(r: &UploadRecord) -> Streams {
    if r.parts.len() > 1 || r.final_url.is_some() {
        Streams::Segmented(None)
    } else {
        Streams::Single
    }
}

/// How many streams an upload uses. A resumed one (`recorded`, see [`recorded_layout`]) keeps
/// its layout. A new one goes parallel only where the protocol can (`can_parallel`) and the
/// file is at least [`MIN_PARALLEL_SIZE`]: with `-j N` (N > 1), or automatically on a round
/// trip of at least [`AUTO_PARALLEL_RTT`] — parallel TCP streams pay where one flow cannot
/// fill the path (long round trips, loss); on a LAN or loopback one stream already does.
pub(crate) fn choose_streams(
    recorded: Option<Streams>,
    parallel: Parallel,
    can_parallel: bool,
    len: u64,
    rtt: Duration,
) -> Streams {
    match (recorded, parallel) {
        (Some(layout), _) => layout,
        (None, _) if !can_parallel || len < MIN_PARALLEL_SIZE => Streams::Single,
        (None, Parallel::Fixed(n)) if n > 1 => Streams::Segmented(Some(n)),
        (None, Parallel::Fixed(_)) => Streams::Single,
        (None, Parallel::Auto) if rtt >= AUTO_PARALLEL_RTT => Streams::Segmented(None),
        (None, Parallel::Auto) => Streams::Single,
    }
}

/// Why `-j N` (N > 1) gets one stream for a new upload, if it does: the run says so once per
/// reason rather than silently ignoring the flag.
pub(crate) fn one_stream_note(
    parallel: Parallel,
    resumed: bool,
    adapter: Adapter,
    can_parallel: bool,
    len: u64,
) -> Option<String> {
    let n = match parallel {
        Parallel::Fixed(n) if n > 1 && !resumed => n,
        _ => return None,
    };
    if adapter == Adapter::Ietf {
        return Some(
            "the IETF resumable-upload draft allows one stream per upload; using one stream".into(),
        );
    }
    if !can_parallel {
        return Some(format!(
            "-j {n}: the server does not offer tus concatenation; using one stream"
        ));
    }
    (len < MIN_PARALLEL_SIZE).then(|| {
        format!(
            "-j {n}: files under {} go over one stream (more would only add requests)",
            crate::progress::human_bytes(MIN_PARALLEL_SIZE)
        )
    })
}

/// Whether a new file goes in its creation request (one request instead of two, no resume
/// state): a single-stream upload of 1 to [`SMALL_FILE_MAX`] bytes, where the protocol can.
pub(crate) fn in_creation_request(
    new: bool,
    streams: Streams,
    len: u64,
    creation_with_body: bool,
) -> bool {
    new && streams == Streams::Single && len > 0 && len <= SMALL_FILE_MAX && creation_with_body
}

/// The whole-file digest to hash with and compare. One asked for (`--digest`) wins if it has
/// a `Repr-Digest` key. A server that knows CRC-64/NVME (ferry's) is asked for that: it is
/// ready the moment the upload completes, and costs both ends a tenth of BLAKE3's CPU, which
/// on a fast link is the difference between keeping up with the network or not. Chunk
/// endpoints answer no OPTIONS; ferry's sessions carry CRC-64/NVME (a server with something
/// else costs a second read to hash with that). Older ferry servers have BLAKE3; others
/// SHA-256.
pub(crate) fn choose_digest(
    asked: Option<ChecksumAlgorithm>,
    caps: &ServerCaps,
    adapter: Adapter,
) -> ChecksumAlgorithm {
    match asked {
        Some(a) if a.digest_key().is_some() => a,
        _ if caps.algorithms.contains(&ChecksumAlgorithm::Crc64Nvme)
            || adapter == Adapter::Chunks =>
        {
            ChecksumAlgorithm::Crc64Nvme
        }
        _ if caps.algorithms.contains(&ChecksumAlgorithm::Blake3) => ChecksumAlgorithm::Blake3,
        _ => ChecksumAlgorithm::Sha256,
    }
}

/// `Want-Repr-Digest` for a transfer hashing with `a`: that algorithm first, then what an older
/// ferry server has, then SHA-256 (which every RFC 9530 server knows).
pub(crate) fn want_digest_for(a: ChecksumAlgorithm) -> &'static str {
    match a {
        ChecksumAlgorithm::Crc64Nvme => "crc64nvme=10, blake3=5, sha-256=3",
        ChecksumAlgorithm::Blake3 => "blake3=10, sha-256=3",
        _ => "sha-256=10",
    }
}

/// The digest to compare instead when the server lacks the one the file was hashed with: the
/// first other whole-file digest it has (the file is then hashed again with that). A
/// cryptographic digest asked for (`asked`, `--digest`) is never replaced by the CRC.
pub(crate) fn fallback_digest(
    digests: &Digests,
    asked: Option<ChecksumAlgorithm>,
) -> Option<(&[u8], ChecksumAlgorithm)> {
    KEPT.into_iter()
        .filter(|a| *a != ChecksumAlgorithm::Crc64Nvme || asked.is_none_or(|d| d == *a))
        .find_map(|a| Some((digests.get(a)?, a)))
}

/// Whether a finished upload of `len` bytes that an earlier run recorded (with the file's
/// `digest`, if it was hashed) still stands, given what the server says of it (`None`: gone):
/// its verification if so, `None` if it is gone, incomplete, or has another digest.
pub(crate) fn recorded_verification(
    remote: Option<&RemoteUpload>,
    len: u64,
    digest: Option<&FileDigest>,
) -> Option<Verification> {
    let r = remote.filter(|r| r.offset == len && r.length.is_none_or(|l| l == len))?;
    match (digest, digest.and_then(|d| r.digests.get(d.algorithm))) {
        (Some(local), Some(theirs)) if local.bytes.as_slice() == theirs => {
            Some(Verification::Verified)
        }
        (Some(_), Some(_)) => None,
        (None, _) => Some(Verification::NotVerified(
            "verification was turned off when it was uploaded".into(),
        )),
        (Some(_), None) => Some(Verification::NotVerified(
            "the server exposes no Repr-Digest, so the result was not verified".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: u64 = MIN_PARALLEL_SIZE;
    const FAR: Duration = AUTO_PARALLEL_RTT;
    const NEAR: Duration = Duration::from_millis(1);

    #[test]
    fn a_resumed_upload_keeps_its_layout() {
        for parallel in [Parallel::Auto, Parallel::Fixed(4), Parallel::Fixed(1)] {
            for layout in [Streams::Single, Streams::Segmented(None)] {
                assert_eq!(
                    choose_streams(Some(layout), parallel, true, BIG, FAR),
                    layout
                );
            }
        }
    }

    #[test]
    fn new_uploads_go_parallel_only_when_possible_large_and_asked_or_far() {
        let c = |parallel, can, len, rtt| choose_streams(None, parallel, can, len, rtt);
        use Streams::{Segmented, Single};
        assert_eq!(c(Parallel::Fixed(4), false, BIG, FAR), Single, "protocol");
        assert_eq!(c(Parallel::Fixed(4), true, BIG - 1, FAR), Single, "small");
        assert_eq!(c(Parallel::Fixed(4), true, BIG, NEAR), Segmented(Some(4)));
        assert_eq!(c(Parallel::Fixed(1), true, BIG, FAR), Single);
        assert_eq!(c(Parallel::Auto, true, BIG, FAR), Segmented(None));
        assert_eq!(c(Parallel::Auto, true, BIG, NEAR), Single);
    }

    #[test]
    fn one_stream_is_explained_when_more_were_asked_for() {
        let note = |parallel, resumed, adapter, can, len| {
            one_stream_note(parallel, resumed, adapter, can, len)
        };
        let four = Parallel::Fixed(4);
        assert!(
            note(four, false, Adapter::Ietf, false, BIG)
                .unwrap()
                .contains("IETF")
        );
        assert!(
            note(four, false, Adapter::Tus, false, BIG)
                .unwrap()
                .contains("concatenation")
        );
        assert!(
            note(four, false, Adapter::Tus, true, BIG - 1)
                .unwrap()
                .contains("32.0 MiB")
        );
        assert_eq!(note(four, false, Adapter::Tus, true, BIG), None);
        assert_eq!(note(four, true, Adapter::Tus, true, 1), None, "resumed");
        assert_eq!(note(Parallel::Fixed(1), false, Adapter::Tus, true, 1), None);
        assert_eq!(note(Parallel::Auto, false, Adapter::Tus, true, 1), None);
    }

    #[test]
    fn record_layouts() {
        let rec = |parts: usize, final_url: Option<&str>| {
            let mut r: UploadRecord = serde_json::from_value(serde_json::json!({
                "version": 1, "key": "k", "source": "/f",
                "identity": {"size": 1, "mtime_ns": 0, "dev": 0, "ino": 0, "fingerprint": ""},
                "endpoint": "http://h/files/", "protocol": "tus", "created_ms": 0, "parts": [],
            }))
            .unwrap();
            r.parts = (0..parts)
                .map(|i| crate::state::PartRecord {
                    url: None,
                    start: i as u64,
                    end: i as u64 + 1,
                    done: false,
                })
                .collect();
            r.final_url = final_url.map(str::to_string);
            r
        };
        assert_eq!(recorded_layout(&rec(1, None)), Streams::Single);
        assert_eq!(recorded_layout(&rec(2, None)), Streams::Segmented(None));
        assert_eq!(
            recorded_layout(&rec(1, Some("u"))),
            Streams::Segmented(None)
        );
    }

    #[test]
    fn small_new_single_files_go_in_the_creation_request() {
        assert!(in_creation_request(true, Streams::Single, 1, true));
        assert!(in_creation_request(
            true,
            Streams::Single,
            SMALL_FILE_MAX,
            true
        ));
        assert!(!in_creation_request(
            true,
            Streams::Single,
            SMALL_FILE_MAX + 1,
            true
        ));
        assert!(
            !in_creation_request(true, Streams::Single, 0, true),
            "empty"
        );
        assert!(
            !in_creation_request(false, Streams::Single, 1, true),
            "resumed"
        );
        assert!(!in_creation_request(
            true,
            Streams::Segmented(None),
            1,
            true
        ));
        assert!(!in_creation_request(true, Streams::Single, 1, false));
    }

    #[test]
    fn digest_choice() {
        use ChecksumAlgorithm::{Blake3, Crc32, Crc64Nvme, Sha256};
        let caps = |algorithms: Vec<ChecksumAlgorithm>| ServerCaps {
            algorithms,
            ..ServerCaps::default()
        };
        let all = caps(vec![Crc64Nvme, Blake3, Sha256]);
        assert_eq!(choose_digest(Some(Sha256), &all, Adapter::Tus), Sha256);
        assert_eq!(choose_digest(Some(Blake3), &all, Adapter::Tus), Blake3);
        // No Repr-Digest key: as if none was asked for.
        assert_eq!(choose_digest(Some(Crc32), &all, Adapter::Tus), Crc64Nvme);
        assert_eq!(choose_digest(None, &all, Adapter::Tus), Crc64Nvme);
        assert_eq!(
            choose_digest(None, &caps(vec![Blake3]), Adapter::Tus),
            Blake3
        );
        assert_eq!(choose_digest(None, &caps(vec![]), Adapter::Ietf), Sha256);
        assert_eq!(
            choose_digest(None, &caps(vec![]), Adapter::Chunks),
            Crc64Nvme
        );
        assert_eq!(
            want_digest_for(Crc64Nvme),
            "crc64nvme=10, blake3=5, sha-256=3"
        );
        assert_eq!(want_digest_for(Blake3), "blake3=10, sha-256=3");
        assert_eq!(want_digest_for(Sha256), "sha-256=10");
    }

    #[test]
    fn fallback_digests_never_put_the_crc_in_place_of_one_asked_for() {
        use ChecksumAlgorithm::{Blake3, Crc64Nvme, Sha256};
        let d = |algorithms: &[ChecksumAlgorithm]| -> Digests {
            algorithms
                .iter()
                .map(|a| (*a, vec![7; a.digest_len()]))
                .collect()
        };
        let crc_and_sha = d(&[Crc64Nvme, Sha256]);
        let alg = |ds: &Digests, asked| fallback_digest(ds, asked).map(|(_, a)| a);
        assert_eq!(alg(&d(&[Crc64Nvme]), None), Some(Crc64Nvme));
        assert_eq!(alg(&d(&[Crc64Nvme]), Some(Crc64Nvme)), Some(Crc64Nvme));
        assert_eq!(alg(&d(&[Crc64Nvme]), Some(Blake3)), None);
        assert_eq!(alg(&crc_and_sha, Some(Blake3)), Some(Sha256));
        assert_eq!(alg(&d(&[]), None), None);
        assert_eq!(
            fallback_digest(&crc_and_sha, None).map(|(b, _)| b),
            Some(&[7u8; 8][..])
        );
    }

    #[test]
    fn a_recorded_finished_upload_stands_only_whole_and_with_the_same_digest() {
        let ours = FileDigest {
            algorithm: ChecksumAlgorithm::Sha256,
            bytes: vec![1; 32],
        };
        let remote = |offset, digest: Option<Vec<u8>>| RemoteUpload {
            offset,
            length: Some(10),
            complete: None,
            digests: digest
                .map(|d| (ChecksumAlgorithm::Sha256, d))
                .into_iter()
                .collect(),
        };
        let v = |r: Option<&RemoteUpload>, d| recorded_verification(r, 10, d);
        assert_eq!(v(None, Some(&ours)), None, "gone");
        assert_eq!(v(Some(&remote(9, Some(vec![1; 32]))), Some(&ours)), None);
        assert_eq!(
            v(Some(&remote(10, Some(vec![1; 32]))), Some(&ours)),
            Some(Verification::Verified)
        );
        assert_eq!(v(Some(&remote(10, Some(vec![2; 32]))), Some(&ours)), None);
        assert!(matches!(
            v(Some(&remote(10, None)), Some(&ours)),
            Some(Verification::NotVerified(_))
        ));
        assert!(matches!(
            v(Some(&remote(10, Some(vec![2; 32]))), None),
            Some(Verification::NotVerified(_))
        ));
        let mut longer = remote(10, None);
        longer.length = Some(11);
        assert_eq!(v(Some(&longer), Some(&ours)), None);
    }
}
