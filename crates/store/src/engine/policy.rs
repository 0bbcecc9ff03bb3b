//! The engine's decisions, as pure functions: when data is synced, when uploads expire, how
//! large an append's buffers are, which digests run while bytes arrive and which are computed
//! by reading an upload back. The I/O code calls these; none of them touches a store.

use super::buffers::BUFFER_SIZE;
use crate::error::StoreError;
use crate::model::UploadInfo;
use ferry_proto::UploadId;
use ferry_proto::checksum::ChecksumAlgorithm;
use ferry_proto::digest::{KEPT, WantDigest};
use std::time::Duration;

/// When data reaches stable storage before an offset is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// `fdatasync` data, fsync new directory entries, then commit metadata: an acknowledged
    /// offset survives power loss.
    #[default]
    Always,
    /// Acknowledge once bytes are in the page cache (survives a process crash, not a power
    /// loss). Metadata commits stay durable.
    None,
}

impl SyncPolicy {
    /// Whether data and new directory entries are made durable before a commit counts.
    pub(crate) fn syncs_data(self) -> bool {
        self == SyncPolicy::Always
    }
}

/// When uploads expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryPolicy {
    /// Unfinished uploads expire this long after their last change.
    pub unfinished: Option<Duration>,
    /// Finished uploads expire this long after they finished (none by default).
    pub finished: Option<Duration>,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        Self {
            unfinished: Some(Duration::from_secs(7 * 24 * 3600)),
            finished: None,
        }
    }
}

impl ExpiryPolicy {
    /// Expiry time for an upload that is `complete` (or not), changed at `now`.
    pub(crate) fn expires_at(&self, complete: bool, now: u64) -> Option<u64> {
        let after = if complete {
            self.finished
        } else {
            self.unfinished
        };
        after.map(|d| now.saturating_add(d.as_millis() as u64))
    }

    /// The new expiry of a final upload one of whose parts made progress at `now`, if it
    /// changes. A final created before its parts finished has no activity of its own, so it
    /// would otherwise expire under parts still being uploaded. A final that is complete, has
    /// no expiry, or already expired is left alone (never revived).
    pub(crate) fn final_kept_alive(
        &self,
        final_complete: bool,
        final_expires: Option<u64>,
        now: u64,
    ) -> Option<u64> {
        let until = self.expires_at(false, now)?;
        (!final_complete && final_expires.is_some_and(|e| e > now && e < until)).then_some(until)
    }
}

/// Bounds on concatenation: a final is one metadata transaction over its parts, and each part
/// records every final that uses it, so both counts bound the work one request can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcatLimits {
    /// Most parts one final may list.
    pub max_parts: usize,
    /// Most finals one part may feed.
    pub max_finals_per_part: usize,
}

impl Default for ConcatLimits {
    fn default() -> Self {
        Self {
            max_parts: 10_000,
            max_finals_per_part: 1_000,
        }
    }
}

impl ConcatLimits {
    /// Checks a final's list of parts: within the limit, and each part once (a part listed
    /// twice would be read and recorded twice for nothing).
    pub(crate) fn check_parts(&self, parts: &[UploadId]) -> Result<(), StoreError> {
        if parts.len() > self.max_parts {
            return Err(StoreError::TooManyParts {
                count: parts.len(),
                max: self.max_parts,
            });
        }
        let mut seen = std::collections::HashSet::with_capacity(parts.len());
        match parts.iter().find(|p| !seen.insert(**p)) {
            Some(p) => Err(StoreError::DuplicatePart(*p)),
            None => Ok(()),
        }
    }
}

/// Space kept free beyond an upload's declared length when checking at creation (metadata,
/// file-system overhead, other uploads' last buffers).
pub const SPACE_MARGIN: u64 = 1024 * 1024;

/// Whether an upload of `length` bytes may be created with `available` bytes free: refusing at
/// creation beats running out of space half-way.
pub(crate) fn room_for(length: u64, available: u64) -> bool {
    length.saturating_add(SPACE_MARGIN) <= available
}

/// Appends beyond this many at once get [`SMALL_BUFFER_SIZE`] buffers: memory stays bounded
/// (about 64 MiB for 1,000 concurrent uploads) instead of growing by 1 MiB per upload, and the
/// many-uploads case is bound by request handling, not by write size.
pub(crate) const FULL_BUFFERS_AT_ONCE: usize = 16;

/// Buffer size for appends past [`FULL_BUFFERS_AT_ONCE`].
pub(crate) const SMALL_BUFFER_SIZE: usize = 32 * 1024;

/// Capacity of each of an append's two buffers, given how many appends were already running
/// and how many bytes the request is expected to bring (no point in a larger buffer).
pub(crate) fn append_buffer_capacity(running: usize, expected_bytes: Option<u64>) -> usize {
    let cap = if running >= FULL_BUFFERS_AT_ONCE {
        SMALL_BUFFER_SIZE
    } else {
        BUFFER_SIZE
    };
    expected_bytes
        .map_or(cap, |n| n.min(cap as u64) as usize)
        .max(1)
}

/// Capacity of each of a chunk write's two buffers, for a chunk of `len` bytes.
pub(crate) fn range_buffer_capacity(len: u64) -> usize {
    (len.min(BUFFER_SIZE as u64) as usize).max(1)
}

/// Uploads at most this large get every digest (CRC-64/NVME, BLAKE3 and SHA-256) before the
/// completing request is answered. Larger ones get CRC-64/NVME (kept running, so it is ready at
/// completion, and at a tenth of BLAKE3's CPU it does not slow the upload) and a cryptographic
/// digest only when a client asks for one
/// ([`Uploads::ensure_digests`](super::Uploads::ensure_digests)): hashing 200 GiB with SHA-256
/// costs minutes of CPU nobody may need.
pub const INLINE_DIGEST_MAX: u64 = 8 * 1024 * 1024;

/// Whether an upload of `length` bytes gets every digest inline.
pub(crate) fn digests_inline(length: u64) -> bool {
    length <= INLINE_DIGEST_MAX
}

/// Whether the cryptographic digests run alongside the CRC from byte 0 of an upload whose
/// length is `length` (unknown: no).
pub(crate) fn runs_every_digest(length: Option<u64>) -> bool {
    length.is_some_and(digests_inline)
}

/// The cryptographic digest to keep running for a client that asked for `want` at the start
/// of an upload: none when the client accepts the CRC-64/NVME that always runs, else the
/// cheaper one it names.
pub(crate) fn kept_running(want: WantDigest) -> Option<ChecksumAlgorithm> {
    // KEPT is cheapest first, and the CRC is the cheapest.
    want.algorithms()
        .next()
        .filter(|a| *a != ChecksumAlgorithm::Crc64Nvme)
}

/// Whether a just-completed upload needs reading back: it has no CRC yet, or it is small
/// enough for every digest before the completing request is answered.
pub(crate) fn needs_read_back(info: &UploadInfo) -> bool {
    // A final's CRC combines its parts' and its bytes are theirs: reading them again at
    // completion would let one request (a final is free to create) cost a full read.
    if matches!(info.kind, crate::model::UploadKind::Final { .. }) {
        return false;
    }
    !info.digests.has(ChecksumAlgorithm::Crc64Nvme) || digests_inline(info.length.unwrap_or(0))
}

/// Which digests to compute by reading back.
pub(crate) type Wanted = WantDigest;

/// What to compute by reading `info` back for a client that accepts `want`, if anything:
/// every missing digest when `small`, else the CRC if missing and the cheapest cryptographic
/// digest `want` names if it does not accept the CRC.
pub(crate) fn wanted(info: &UploadInfo, want: WantDigest, small: bool) -> Option<Wanted> {
    let cheapest = kept_running(want);
    let w = KEPT
        .into_iter()
        .filter(|a| !info.digests.has(*a))
        .filter(|a| *a == ChecksumAlgorithm::Crc64Nvme || small || Some(*a) == cheapest)
        .fold(WantDigest::default(), WantDigest::with);
    (!w.is_empty()).then_some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn policy(unfinished: Option<u64>, finished: Option<u64>) -> ExpiryPolicy {
        ExpiryPolicy {
            unfinished: unfinished.map(Duration::from_millis),
            finished: finished.map(Duration::from_millis),
        }
    }

    fn info(crc: bool, b3: bool, sha: bool, length: Option<u64>) -> UploadInfo {
        UploadInfo {
            id: UploadId::from_bytes([1; 16]),
            length,
            offset: 0,
            metadata: Default::default(),
            protocol: Default::default(),
            kind: Default::default(),
            received: None,
            created_ms: 0,
            updated_ms: 0,
            expires_ms: None,
            digests: [
                (ChecksumAlgorithm::Sha256, sha.then_some(vec![3; 32])),
                (ChecksumAlgorithm::Blake3, b3.then_some(vec![2; 32])),
                (ChecksumAlgorithm::Crc64Nvme, crc.then_some(vec![1; 8])),
            ]
            .into_iter()
            .filter_map(|(a, d)| Some((a, d?)))
            .collect(),
            finals: Vec::new(),
            deleted: false,
        }
    }

    #[test]
    fn only_always_syncs_data() {
        assert!(SyncPolicy::Always.syncs_data());
        assert!(!SyncPolicy::None.syncs_data());
        assert_eq!(SyncPolicy::default(), SyncPolicy::Always);
    }

    #[test]
    fn expiry_follows_the_state_and_saturates() {
        let p = policy(Some(MIN), Some(10 * MIN));
        assert_eq!(p.expires_at(false, 1_000), Some(1_000 + MIN));
        assert_eq!(p.expires_at(true, 1_000), Some(1_000 + 10 * MIN));
        assert_eq!(p.expires_at(false, u64::MAX), Some(u64::MAX));
        let never = policy(None, None);
        assert_eq!(never.expires_at(false, 1), None);
        assert_eq!(never.expires_at(true, 1), None);
        let default = ExpiryPolicy::default();
        assert_eq!(default.expires_at(false, 0), Some(7 * 24 * 3600 * 1000));
        assert_eq!(default.expires_at(true, 0), None, "finished uploads stay");
    }

    #[test]
    fn a_part_moves_its_unfinished_final_forward_only() {
        let p = policy(Some(MIN), None);
        let now = 10 * MIN;
        let until = now + MIN;
        assert_eq!(p.final_kept_alive(false, Some(now + 1), now), Some(until));
        assert_eq!(
            p.final_kept_alive(true, Some(now + 1), now),
            None,
            "finished"
        );
        assert_eq!(
            p.final_kept_alive(false, Some(now), now),
            None,
            "expired: not revived"
        );
        assert_eq!(p.final_kept_alive(false, None, now), None, "never expires");
        assert_eq!(
            p.final_kept_alive(false, Some(until), now),
            None,
            "not earlier"
        );
        assert_eq!(
            policy(None, None).final_kept_alive(false, Some(now + 1), now),
            None
        );
    }

    #[test]
    fn creation_keeps_a_margin_free() {
        assert!(room_for(0, SPACE_MARGIN));
        assert!(room_for(10, SPACE_MARGIN + 10));
        assert!(!room_for(11, SPACE_MARGIN + 10));
        assert!(!room_for(u64::MAX, u64::MAX - 1));
        assert!(room_for(u64::MAX - SPACE_MARGIN, u64::MAX));
    }

    #[test]
    fn buffers_shrink_when_many_appends_run() {
        assert_eq!(append_buffer_capacity(0, None), BUFFER_SIZE);
        assert_eq!(
            append_buffer_capacity(FULL_BUFFERS_AT_ONCE - 1, None),
            BUFFER_SIZE
        );
        assert_eq!(
            append_buffer_capacity(FULL_BUFFERS_AT_ONCE, None),
            SMALL_BUFFER_SIZE
        );
        assert_eq!(append_buffer_capacity(0, Some(100)), 100);
        assert_eq!(append_buffer_capacity(0, Some(0)), 1);
        assert_eq!(append_buffer_capacity(0, Some(u64::MAX)), BUFFER_SIZE);
        assert_eq!(append_buffer_capacity(99, Some(1 << 20)), SMALL_BUFFER_SIZE);
        assert_eq!(range_buffer_capacity(0), 1);
        assert_eq!(range_buffer_capacity(10), 10);
        assert_eq!(range_buffer_capacity(u64::MAX), BUFFER_SIZE);
    }

    #[test]
    fn small_uploads_run_every_digest() {
        assert!(digests_inline(INLINE_DIGEST_MAX));
        assert!(!digests_inline(INLINE_DIGEST_MAX + 1));
        assert!(runs_every_digest(Some(0)));
        assert!(!runs_every_digest(Some(INLINE_DIGEST_MAX + 1)));
        assert!(!runs_every_digest(None), "deferred length");
    }

    #[test]
    fn the_cheapest_requested_cryptographic_digest_is_kept_running() {
        let k = |s: &str| kept_running(WantDigest::parse(s));
        assert_eq!(k("blake3=10, sha-256=3"), Some(ChecksumAlgorithm::Blake3));
        assert_eq!(k("sha-256=10"), Some(ChecksumAlgorithm::Sha256));
        assert_eq!(k("crc64nvme=1, blake3=5"), None, "the CRC will do");
        assert_eq!(kept_running(WantDigest::default()), None);
    }

    #[test]
    fn read_back_when_the_crc_is_missing_or_the_upload_is_small() {
        let big = Some(INLINE_DIGEST_MAX + 1);
        assert!(needs_read_back(&info(false, true, true, big)));
        assert!(!needs_read_back(&info(true, false, false, big)));
        assert!(needs_read_back(&info(true, true, true, Some(1))));
        let mut fin = info(false, false, false, Some(1));
        fin.kind = crate::model::UploadKind::Final { parts: vec![] };
        assert!(
            !needs_read_back(&fin),
            "a final is never read back at completion"
        );
    }

    #[test]
    fn read_back_computes_what_is_missing_and_wanted() {
        let none = WantDigest::default();
        let w = |crc: bool, blake3: bool, sha256: bool| {
            let pick = [
                (crc, ChecksumAlgorithm::Crc64Nvme),
                (blake3, ChecksumAlgorithm::Blake3),
                (sha256, ChecksumAlgorithm::Sha256),
            ];
            Some(
                pick.into_iter()
                    .filter(|(on, _)| *on)
                    .fold(WantDigest::default(), |w, (_, a)| w.with(a)),
            )
        };
        // Small: every missing digest.
        assert_eq!(
            wanted(&info(false, false, false, Some(1)), none, true),
            w(true, true, true)
        );
        assert_eq!(wanted(&info(true, true, true, Some(1)), none, true), None);
        assert_eq!(
            wanted(&info(true, false, true, Some(1)), none, true),
            w(false, true, false)
        );
        // Large: the CRC, and a cryptographic digest only when asked for and the CRC won't do.
        let big = info(false, false, false, None);
        assert_eq!(wanted(&big, none, false), w(true, false, false));
        let p = WantDigest::parse;
        assert_eq!(wanted(&big, p("sha-256=1"), false), w(true, false, true));
        assert_eq!(
            wanted(&big, p("sha-256=1, blake3=1"), false),
            w(true, true, false)
        );
        assert_eq!(
            wanted(&big, p("crc64nvme=1, blake3=9"), false),
            w(true, false, false)
        );
        let has_crc = info(true, false, false, None);
        assert_eq!(wanted(&has_crc, p("crc64nvme=1, sha-256=9"), false), None);
        assert_eq!(
            wanted(&has_crc, p("blake3=1"), false),
            w(false, true, false)
        );
        assert_eq!(
            wanted(&info(true, true, false, None), p("blake3=1"), false),
            None
        );
    }

    #[test]
    fn a_final_lists_each_part_once_and_within_the_limit() {
        let id = |b: u8| UploadId::from_bytes([b; 16]);
        let limits = ConcatLimits {
            max_parts: 3,
            max_finals_per_part: 1,
        };
        assert!(limits.check_parts(&[id(1), id(2), id(3)]).is_ok());
        assert!(limits.check_parts(&[]).is_ok());
        assert!(matches!(
            limits.check_parts(&[id(1), id(2), id(1)]),
            Err(StoreError::DuplicatePart(p)) if p == id(1)
        ));
        assert!(matches!(
            limits.check_parts(&[id(1), id(2), id(3), id(4)]),
            Err(StoreError::TooManyParts { count: 4, max: 3 })
        ));
    }
}
