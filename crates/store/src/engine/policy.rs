//! The engine's decisions, as pure functions: when data is synced, when uploads expire, how
//! large an append's buffers are, which digests run while bytes arrive, which are computed
//! by reading an upload back, and whether such a read-back is queued and waited for. The I/O
//! code calls these; none of them touches a store.

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

/// Whether an upload may reach `length` bytes under the size limit `max`: checked wherever
/// an upload's size is learned or grows (a length declared at creation or later, bytes of an
/// upload whose length is still unknown, a chunk's end).
pub(crate) fn within_max_size(length: u64, max: Option<u64>) -> Result<(), StoreError> {
    match max {
        Some(max) if length > max => Err(StoreError::TooLarge { length, max }),
        _ => Ok(()),
    }
}

/// Least time between two counts of the unfinished uploads while creations are refused for
/// being at the limit: a flood at the limit costs one scan of the records per interval.
pub(crate) const RECOUNT_EVERY: Duration = Duration::from_secs(10);

/// What to do with a creation under the limit on unfinished uploads.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Creation {
    /// Below the limit: create (and count one more).
    Admit,
    /// The estimate is unknown or has reached the limit: count the records first.
    Count,
    /// Counted recently and still at the limit.
    Refuse,
}

/// Decides a creation from the `estimate` of unfinished uploads (`None` before the first
/// count). The estimate counts every creation and no completion, so it only errs high: reaching
/// the limit triggers a real count, never a wrong refusal, and the count is repeated at most
/// every [`RECOUNT_EVERY`] (`since_count`: time since the last one).
pub(crate) fn admit_unfinished(
    estimate: Option<u64>,
    max: u64,
    since_count: Option<Duration>,
) -> Creation {
    match estimate {
        Some(n) if n < max => Creation::Admit,
        _ if since_count.is_none_or(|t| t >= RECOUNT_EVERY) => Creation::Count,
        _ => Creation::Refuse,
    }
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

/// Capacity of each of a chunk write's two buffers, for a chunk of `len` bytes while `running`
/// other writers run: as for appends.
pub(crate) fn range_buffer_capacity(len: u64, running: usize) -> usize {
    append_buffer_capacity(running, Some(len))
}

/// Uploads at most this large get every digest (CRC-64/NVME, BLAKE3 and SHA-256) before the
/// completing request is answered. Larger ones get CRC-64/NVME (kept running, so it is ready at
/// completion, and at a tenth of BLAKE3's CPU it does not slow the upload) and a cryptographic
/// digest only when a client asks for one
/// ([`Uploads::ensure_digests`](super::Uploads::ensure_digests)): hashing 200 GiB with SHA-256
/// costs minutes of CPU nobody may need.
pub const INLINE_DIGEST_MAX: u64 = 8 * 1024 * 1024;

/// Uploads whose cryptographic digest states are kept in memory between requests (about
/// 4.5 KB each); past that the oldest's are dropped, and their digests are read back at
/// completion if wanted. The CRC needs no room here: it is in the record.
pub(crate) const RUNNING_CACHE: usize = 256;

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

/// Read-backs for a digest a client asked for run on this many workers: hashing costs about
/// a second of CPU per GB, and finals (tus concatenation) cost nothing to create, so without a
/// bound any client could keep every core hashing.
pub(crate) const DIGEST_WORKERS: usize = 1;

/// At most this many read-backs wait for a worker; a request beyond them is answered with the
/// digests already known (and may ask again later).
pub(crate) const DIGEST_QUEUE: usize = 64;

/// Hash rate assumed (bytes/s) until a read-back has been measured: below SHA-256 on one core
/// without SHA extensions, so a first estimate errs towards answering at once.
pub(crate) const ASSUMED_HASH_RATE: u64 = 256 << 20;

/// Read-backs shorter than this say little about the hash rate (startup, cache effects).
pub(crate) const RATE_SAMPLE_MIN: u64 = 4 << 20;

/// The read-back jobs of one upload, as a request sees them: whether one is running, whether
/// one is queued (at which position), and for each whether it computes a digest the request
/// accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct JobsOf {
    /// A running job, and whether it covers the request.
    pub running: Option<bool>,
    /// A queued job's position, and whether it covers the request.
    pub queued: Option<(usize, bool)>,
}

/// What becomes of a request for a digest that needs reading an upload back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The running job computes it: wait for that one.
    JoinRunning,
    /// The job queued at this position computes it: wait for that one.
    JoinQueued(usize),
    /// Add the algorithms to the job queued at this position (one read computes both).
    Merge(usize),
    /// Queue a new job.
    Queue,
    /// The queue is full: queue nothing, answer with what is known.
    Refuse,
}

/// Whether and how a read-back is queued, given the upload's jobs and the queue's length and
/// bound: an upload never has two jobs for the same digests, and never more than one queued
/// (a request for other digests than its running job's queues one job to follow it).
pub(crate) fn admit(jobs: JobsOf, queue_len: usize, queue_max: usize) -> Admission {
    match jobs {
        JobsOf {
            running: Some(true),
            ..
        } => Admission::JoinRunning,
        JobsOf {
            queued: Some((at, true)),
            ..
        } => Admission::JoinQueued(at),
        JobsOf {
            queued: Some((at, false)),
            ..
        } => Admission::Merge(at),
        _ if queue_len < queue_max => Admission::Queue,
        _ => Admission::Refuse,
    }
}

/// Whether a job computing `job` gives a client that accepts `want` a digest it accepts.
pub(crate) fn covers(job: WantDigest, want: WantDigest) -> bool {
    job.algorithms().any(|a| want.accepts(a))
}

/// Whether a request waits for its job, `ahead` bytes of read-back away (the job's own bytes
/// and those of the jobs before it, shared by `workers`), at `rate` bytes/s: only if they can
/// be hashed within `bound`. Otherwise it is answered at once with the digests known.
pub(crate) fn waits_for_digest(ahead: u64, rate: u64, workers: usize, bound: Duration) -> bool {
    let per_second = u128::from(rate).saturating_mul(workers.max(1) as u128);
    u128::from(ahead) * 1000 <= per_second.saturating_mul(bound.as_millis())
}

/// The hash rate to estimate with: the measured one, else [`ASSUMED_HASH_RATE`].
pub(crate) fn hash_rate(measured: Option<u64>) -> u64 {
    measured.filter(|r| *r > 0).unwrap_or(ASSUMED_HASH_RATE)
}

/// The measured hash rate after a read-back of `bytes` took `elapsed`: the mean of the previous
/// measurement and this one (so one slow job moves it only half-way), unless the job was too
/// short to tell.
pub(crate) fn next_hash_rate(previous: Option<u64>, bytes: u64, elapsed: Duration) -> Option<u64> {
    let micros = elapsed.as_micros();
    if bytes < RATE_SAMPLE_MIN || micros == 0 {
        return previous;
    }
    let sample = u64::try_from(u128::from(bytes) * 1_000_000 / micros).unwrap_or(u64::MAX);
    Some(match previous {
        Some(p) => p / 2 + sample / 2,
        None => sample,
    })
}

/// What a queued job asked to compute `algorithms` still has to compute of `info` when it
/// runs: the record may have gained some meanwhile (the CRC, or a digest another job added).
pub(crate) fn still_missing(info: &UploadInfo, algorithms: WantDigest) -> Option<Wanted> {
    let w = algorithms
        .algorithms()
        .filter(|a| !info.digests.has(*a))
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
            running_crc: None,
            locator: crate::data::Locator::none(),
            finish_pending: false,
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
    fn unfinished_uploads_are_counted_only_when_the_estimate_reaches_the_limit() {
        use Creation::*;
        let recent = Some(Duration::from_secs(1));
        assert_eq!(admit_unfinished(None, 10, None), Count, "unknown at start");
        assert_eq!(admit_unfinished(Some(9), 10, None), Admit);
        assert_eq!(admit_unfinished(Some(9), 10, recent), Admit);
        assert_eq!(admit_unfinished(Some(10), 10, None), Count);
        assert_eq!(admit_unfinished(Some(10), 10, recent), Refuse);
        assert_eq!(admit_unfinished(Some(10), 10, Some(RECOUNT_EVERY)), Count);
        assert_eq!(admit_unfinished(Some(0), 0, recent), Refuse, "a limit of 0");
    }

    #[test]
    fn the_size_limit_allows_exactly_the_maximum() {
        assert!(within_max_size(u64::MAX, None).is_ok());
        assert!(within_max_size(1024, Some(1024)).is_ok());
        assert!(matches!(
            within_max_size(1025, Some(1024)),
            Err(StoreError::TooLarge {
                length: 1025,
                max: 1024
            })
        ));
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
        assert_eq!(range_buffer_capacity(0, 0), 1);
        assert_eq!(range_buffer_capacity(10, 0), 10);
        assert_eq!(range_buffer_capacity(u64::MAX, 0), BUFFER_SIZE);
        assert_eq!(
            range_buffer_capacity(u64::MAX, FULL_BUFFERS_AT_ONCE),
            SMALL_BUFFER_SIZE
        );
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

    #[test]
    fn a_read_back_is_joined_merged_queued_or_refused() {
        let none = JobsOf::default();
        assert_eq!(admit(none, 0, 2), Admission::Queue);
        assert_eq!(admit(none, 1, 2), Admission::Queue);
        assert_eq!(admit(none, 2, 2), Admission::Refuse, "queue full");
        assert_eq!(admit(none, 0, 0), Admission::Refuse);
        let running = |covers| JobsOf {
            running: Some(covers),
            queued: None,
        };
        assert_eq!(admit(running(true), 2, 2), Admission::JoinRunning);
        assert_eq!(
            admit(running(false), 0, 2),
            Admission::Queue,
            "other digests follow the running job"
        );
        assert_eq!(admit(running(false), 2, 2), Admission::Refuse);
        let queued = |at, covers| JobsOf {
            running: None,
            queued: Some((at, covers)),
        };
        assert_eq!(admit(queued(3, true), 9, 9), Admission::JoinQueued(3));
        assert_eq!(
            admit(queued(3, false), 9, 9),
            Admission::Merge(3),
            "merging takes no place in the queue"
        );
        let both = |r, q| JobsOf {
            running: Some(r),
            queued: Some((0, q)),
        };
        assert_eq!(admit(both(true, false), 1, 1), Admission::JoinRunning);
        assert_eq!(admit(both(false, true), 1, 1), Admission::JoinQueued(0));
        assert_eq!(
            admit(both(false, false), 1, 1),
            Admission::Merge(0),
            "never a second queued job for one upload"
        );
    }

    #[test]
    fn a_job_covers_a_request_that_accepts_one_of_its_digests() {
        let p = WantDigest::parse;
        assert!(covers(p("sha-256"), p("sha-256")));
        assert!(covers(p("crc64nvme, sha-256"), p("sha-256")));
        assert!(covers(p("sha-256"), p("blake3, sha-256")));
        assert!(!covers(p("blake3"), p("sha-256")));
        assert!(!covers(WantDigest::default(), p("sha-256")));
    }

    #[test]
    fn a_request_waits_only_for_what_can_be_hashed_within_the_bound() {
        let mib = 1u64 << 20;
        let s = Duration::from_secs;
        assert!(waits_for_digest(100 * mib, 100 * mib, 1, s(1)));
        assert!(!waits_for_digest(100 * mib + 1, 100 * mib, 1, s(1)));
        assert!(
            waits_for_digest(200 * mib, 100 * mib, 2, s(1)),
            "two workers"
        );
        assert!(waits_for_digest(0, 0, 1, Duration::ZERO), "nothing to hash");
        assert!(!waits_for_digest(1, ASSUMED_HASH_RATE, 1, Duration::ZERO));
        assert!(!waits_for_digest(u64::MAX, 1, 1, s(1)));
        assert!(waits_for_digest(
            u64::MAX,
            u64::MAX,
            usize::MAX,
            s(u64::MAX)
        ));
    }

    #[test]
    fn the_hash_rate_is_measured_from_long_enough_jobs() {
        assert_eq!(hash_rate(None), ASSUMED_HASH_RATE);
        assert_eq!(hash_rate(Some(0)), ASSUMED_HASH_RATE);
        assert_eq!(hash_rate(Some(5)), 5);
        let s = Duration::from_secs;
        let big = 100 * RATE_SAMPLE_MIN;
        assert_eq!(next_hash_rate(None, big, s(2)), Some(big / 2));
        assert_eq!(
            next_hash_rate(Some(big), big, s(2)),
            Some(big / 2 + big / 4),
            "half-way"
        );
        assert_eq!(next_hash_rate(Some(7), RATE_SAMPLE_MIN - 1, s(1)), Some(7));
        assert_eq!(next_hash_rate(None, big, Duration::ZERO), None);
        assert_eq!(
            next_hash_rate(None, u64::MAX, Duration::from_micros(1)),
            Some(u64::MAX)
        );
    }

    #[test]
    fn a_queued_job_computes_only_what_is_still_missing() {
        let both = WantDigest::parse("crc64nvme, sha-256");
        assert_eq!(
            still_missing(&info(false, false, false, None), both),
            Some(both)
        );
        assert_eq!(
            still_missing(&info(true, false, false, None), both),
            Some(WantDigest::parse("sha-256"))
        );
        assert_eq!(still_missing(&info(true, false, true, None), both), None);
        assert_eq!(
            still_missing(&info(false, false, false, None), WantDigest::default()),
            None
        );
    }
}
