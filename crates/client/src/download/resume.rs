//! What of a partial download can be kept: the ranges on disk, and whether they belong to the
//! version of the file the server has now.
//!
//! Safe resume: a partial file is kept only when a strong validator (an ETag, or a
//! Last-Modified at least a second old) is the same as when it was started, or, with no
//! validator at all, when the same digest will check the result.

use crate::state::DownloadRecord;
use ferry_proto::digest::Digests;
use ferry_proto::range_set::RangeSet;

/// Sorted, merged `[start, end)` ranges.
pub(super) fn merge(v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut set = RangeSet::new();
    for (s, e) in v {
        set.insert(s, e);
    }
    set.ranges().to_vec()
}

/// The gaps of `done` within `[0, size)`.
pub(super) fn gaps(done: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(s, e) in done {
        if s > at {
            out.push((at, s.min(size)));
        }
        at = at.max(e);
    }
    if at < size {
        out.push((at, size));
    }
    out
}

/// The file as the server has it now, in the record's terms.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen<'a> {
    /// Its size.
    pub(super) size: u64,
    /// Its strong ETag.
    pub(super) etag: Option<&'a str>,
    /// Its Last-Modified, if strong.
    pub(super) last_modified: Option<&'a str>,
    /// The digest the result must have now (none known: empty).
    pub(super) digest: &'a Digests,
}

/// Whether a partial download can be resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ResumeDecision {
    /// The partial file belongs to the same version: keep its ranges, and send `validator` in
    /// `If-Range` (`None`: no validator, the digest checks the result).
    Resume {
        /// The validator recorded when the download started.
        validator: Option<String>,
    },
    /// Start over, for this reason.
    StartOver(StartOver),
}

/// Why a partial download is not resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartOver {
    /// The file has another size now.
    Size,
    /// No validator, and the digest to go by is another one now.
    AnotherDigest,
    /// Neither a strong validator nor a digest: nothing says the partial file is this version.
    Untrusted,
    /// The validator differs.
    Changed,
}

impl StartOver {
    /// The note for the user about `display` (the destination).
    pub(super) fn note(self, display: &str) -> String {
        match self {
            StartOver::Size => {
                format!("{display}: the file changed on the server (size); starting over")
            }
            StartOver::AnotherDigest => {
                format!("{display}: the file changed on the server (another digest); starting over")
            }
            StartOver::Untrusted => format!(
                "{display}: the server gives no strong validator (an ETag, or a Last-Modified at least a second old) and no digest, so the partial file cannot be trusted; starting over"
            ),
            StartOver::Changed => {
                format!("{display}: the file changed on the server; starting over")
            }
        }
    }
}

/// Whether the partial download `rec` describes can be resumed against the file as the server
/// has it `now`.
pub(super) fn resume_decision(rec: &DownloadRecord, now: &Seen<'_>) -> ResumeDecision {
    let same_tag = rec.etag.is_some() && rec.etag.as_deref() == now.etag;
    let same_date = rec.etag.is_none()
        && rec.last_modified.is_some()
        && rec.last_modified.as_deref() == now.last_modified;
    let has_digest = !rec.digests.is_empty();
    let digest_known = has_digest && &rec.digests == now.digest;
    let expected = !now.digest.is_empty();
    let no_validator = rec.etag.is_none() && rec.last_modified.is_none();
    if rec.size != now.size {
        ResumeDecision::StartOver(StartOver::Size)
    } else if same_tag || same_date {
        ResumeDecision::Resume {
            validator: rec.etag.clone().or(rec.last_modified.clone()),
        }
    } else if no_validator && digest_known {
        ResumeDecision::Resume { validator: None }
    } else if no_validator && has_digest && expected {
        ResumeDecision::StartOver(StartOver::AnotherDigest)
    } else if no_validator {
        ResumeDecision::StartOver(StartOver::Untrusted)
    } else {
        ResumeDecision::StartOver(StartOver::Changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::STATE_VERSION;
    use ferry_proto::checksum::ChecksumAlgorithm;

    #[test]
    fn gaps_and_merge() {
        let d = merge(vec![(10, 20), (0, 5), (5, 8), (18, 30)]);
        assert_eq!(d, vec![(0, 8), (10, 30)]);
        assert_eq!(gaps(&d, 40), vec![(8, 10), (30, 40)]);
        assert_eq!(gaps(&[], 5), vec![(0, 5)]);
        assert_eq!(gaps(&[(0, 5)], 5), vec![]);
    }

    const TAG: &str = "\"v1\"";
    const DATE: &str = "Tue, 01 Dec 2026 10:00:00 GMT";
    const NO_DIGEST: Digests = Digests::new();

    fn sha(byte: u8) -> Digests {
        [(ChecksumAlgorithm::Sha256, vec![byte; 32])]
            .into_iter()
            .collect()
    }

    fn record(etag: Option<&str>, last_modified: Option<&str>, digest: Digests) -> DownloadRecord {
        DownloadRecord {
            version: STATE_VERSION,
            key: "k".into(),
            url: "http://h/f".into(),
            dest: "/d/f".into(),
            partial: "/d/f.ferry-part".into(),
            size: 100,
            etag: etag.map(str::to_string),
            last_modified: last_modified.map(str::to_string),
            digests: digest,
            done: vec![(0, 10)],
            created_ms: 0,
        }
    }

    fn seen<'a>(
        size: u64,
        etag: Option<&'a str>,
        last_modified: Option<&'a str>,
        digest: &'a Digests,
    ) -> Seen<'a> {
        Seen {
            size,
            etag,
            last_modified,
            digest,
        }
    }

    #[test]
    fn another_size_starts_over_whatever_the_validators() {
        let rec = record(Some(TAG), None, NO_DIGEST);
        assert_eq!(
            resume_decision(&rec, &seen(101, Some(TAG), None, &NO_DIGEST)),
            ResumeDecision::StartOver(StartOver::Size)
        );
    }

    #[test]
    fn the_same_strong_validator_resumes_with_it() {
        let rec = record(Some(TAG), Some(DATE), NO_DIGEST);
        assert_eq!(
            resume_decision(&rec, &seen(100, Some(TAG), None, &NO_DIGEST)),
            ResumeDecision::Resume {
                validator: Some(TAG.into())
            }
        );
        // Without an ETag, the same (strong) Last-Modified.
        let rec = record(None, Some(DATE), NO_DIGEST);
        assert_eq!(
            resume_decision(&rec, &seen(100, None, Some(DATE), &NO_DIGEST)),
            ResumeDecision::Resume {
                validator: Some(DATE.into())
            }
        );
    }

    #[test]
    fn no_validator_but_the_same_digest_resumes_without_if_range() {
        let rec = record(None, None, sha(0xab));
        assert_eq!(
            resume_decision(&rec, &seen(100, None, None, &sha(0xab))),
            ResumeDecision::Resume { validator: None }
        );
    }

    #[test]
    fn no_validator_and_another_digest_starts_over() {
        let rec = record(None, None, sha(0xab));
        assert_eq!(
            resume_decision(&rec, &seen(100, None, None, &sha(0xcd))),
            ResumeDecision::StartOver(StartOver::AnotherDigest)
        );
    }

    #[test]
    fn no_validator_and_no_digest_to_compare_is_untrusted() {
        let rec = record(None, None, NO_DIGEST);
        assert_eq!(
            resume_decision(&rec, &seen(100, None, None, &NO_DIGEST)),
            ResumeDecision::StartOver(StartOver::Untrusted)
        );
        // A recorded digest the server no longer sends: nothing to compare.
        let rec = record(None, None, sha(0xab));
        assert_eq!(
            resume_decision(&rec, &seen(100, None, None, &NO_DIGEST)),
            ResumeDecision::StartOver(StartOver::Untrusted)
        );
    }

    #[test]
    fn another_validator_starts_over() {
        let rec = record(Some(TAG), None, sha(0xab));
        assert_eq!(
            resume_decision(&rec, &seen(100, Some("\"v2\""), None, &sha(0xab))),
            ResumeDecision::StartOver(StartOver::Changed)
        );
        // A record with an ETag is not resumed on a Last-Modified alone.
        let rec = record(Some(TAG), Some(DATE), NO_DIGEST);
        assert_eq!(
            resume_decision(&rec, &seen(100, None, Some(DATE), &NO_DIGEST)),
            ResumeDecision::StartOver(StartOver::Changed)
        );
        assert!(
            StartOver::Changed
                .note("f")
                .starts_with("f: the file changed")
        );
    }
}
