//! Which bytes of a chunk session each request may write, within this process.
//!
//! Chunk requests take no lease (many write one session at once), so before each write a
//! request claims the bytes it is about to write, skipping those that are recorded or that
//! another request claims; once the session is complete, nothing is claimed. A request keeps
//! its claims until it ends (committed, failed or dropped: [`ClaimGuard`]'s drop), so the bytes
//! of a recorded range are only ever written by the request that recorded them, before it did.
//!
//! Each session's entry lives while requests write it. A request registers before it reads the
//! session's record and adds that record's ranges; every commit adds its record's ranges before
//! its claims go. So between them, the recorded ranges and the live claims cover every range
//! the metadata store holds, whichever request wrote it.

use crate::model::{RangeSet, UploadInfo};
use ferry_proto::UploadId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What to do with the next bytes of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// This many bytes are taken (recorded, claimed by another request, or the session is
    /// complete): skip them.
    Skip(u64),
    /// This many bytes are free: claim and write them.
    Write(u64),
}

/// The step for the `n` bytes at hand from `pos`, given the ranges taken by others (recorded
/// or claimed; in any order, possibly overlapping) and whether the session is complete.
pub(crate) fn step(pos: u64, n: u64, complete: bool, taken: &[(u64, u64)]) -> Step {
    if complete {
        return Step::Skip(n);
    }
    // Taken ranges may touch one another: skip to the end of the whole run.
    let mut end = pos;
    while let Some(b) = taken
        .iter()
        .filter(|&&(a, b)| a <= end && end < b)
        .map(|r| r.1)
        .max()
    {
        end = b;
    }
    if end > pos {
        return Step::Skip((end - pos).min(n));
    }
    let next = taken
        .iter()
        .map(|r| r.0)
        .filter(|&a| a > pos)
        .min()
        .unwrap_or(u64::MAX);
    Step::Write((next - pos).min(n))
}

/// One session's writers and what they may no longer write.
#[derive(Debug, Default)]
struct Session {
    /// Requests registered (writing, or about to).
    writers: usize,
    /// Ranges known to be recorded.
    recorded: RangeSet,
    /// Whether the session is complete: nothing more is written.
    complete: bool,
    /// `(request, start, end)`: ranges a request is writing.
    claims: Vec<(u64, u64, u64)>,
}

/// Every chunk session's claims in this process (one per [`Uploads`](super::Uploads)).
#[derive(Debug, Default)]
pub(crate) struct Claims {
    sessions: Mutex<HashMap<UploadId, Session>>,
    next_request: AtomicU64,
}

impl Claims {
    fn lock(&self) -> MutexGuard<'_, HashMap<UploadId, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether requests are writing session `id` right now.
    pub(crate) fn active(&self, id: UploadId) -> bool {
        self.lock().get(&id).is_some_and(|s| s.writers > 0)
    }

    /// Registers a request on session `id`, until the returned guard drops. Register before
    /// reading the record (then [`learn`](Self::learn) it): a commit that lands in between
    /// adds its ranges to this entry.
    pub(crate) fn register(self: &Arc<Self>, id: UploadId) -> ClaimGuard {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(id).or_default().writers += 1;
        ClaimGuard {
            claims: self.clone(),
            id,
            request,
        }
    }

    /// Adds what a session's record says (recorded ranges, completeness), if requests are
    /// writing it; with none, the next one reads the record itself.
    pub(crate) fn learn(&self, info: &UploadInfo) {
        if let Some(s) = self.lock().get_mut(&info.id) {
            for &(a, b) in info.received.as_ref().map_or(&[][..], |r| r.ranges()) {
                s.recorded.insert(a, b);
            }
            s.complete |= info.is_complete();
        }
    }
}

/// One request's registration and claims on a session; dropping it lets them go.
#[derive(Debug)]
pub(crate) struct ClaimGuard {
    claims: Arc<Claims>,
    id: UploadId,
    request: u64,
}

impl ClaimGuard {
    /// For the `n` bytes at hand from `pos`: how many to skip, or how many to write (then
    /// claimed for this request).
    pub(crate) fn next(&self, pos: u64, n: u64) -> Step {
        let mut map = self.claims.lock();
        let Some(s) = map.get_mut(&self.id) else {
            // Registered, so never missing; but without an entry nothing can be ruled out.
            return Step::Skip(n);
        };
        let taken: Vec<(u64, u64)> = s
            .recorded
            .ranges()
            .iter()
            .copied()
            .chain(
                s.claims
                    .iter()
                    .filter(|c| c.0 != self.request)
                    .map(|c| (c.1, c.2)),
            )
            .collect();
        let next = step(pos, n, s.complete, &taken);
        if let Step::Write(k) = next {
            match s.claims.last_mut() {
                Some(last) if last.0 == self.request && last.2 == pos => last.2 += k,
                _ => s.claims.push((self.request, pos, pos + k)),
            }
        }
        next
    }

    /// Counts this request's claims as recorded from now on: its record may have landed
    /// without anyone learning it (the commit was abandoned half-way).
    pub(crate) fn keep_as_recorded(&self) {
        let mut map = self.claims.lock();
        if let Some(s) = map.get_mut(&self.id) {
            for &(_, a, b) in s.claims.iter().filter(|c| c.0 == self.request) {
                s.recorded.insert(a, b);
            }
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let mut map = self.claims.lock();
        if let Some(s) = map.get_mut(&self.id) {
            s.claims.retain(|c| c.0 != self.request);
            s.writers = s.writers.saturating_sub(1);
            if s.writers == 0 {
                map.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    #[test]
    fn free_bytes_are_written_up_to_the_next_taken_range() {
        assert_eq!(step(0, 100, false, &[]), Step::Write(100));
        assert_eq!(step(0, 100, false, &[(40, 50)]), Step::Write(40));
        assert_eq!(
            step(10, 5, false, &[(40, 50)]),
            Step::Write(5),
            "as many as at hand"
        );
        assert_eq!(
            step(50, 100, false, &[(40, 50)]),
            Step::Write(100),
            "half-open"
        );
        assert_eq!(step(0, 100, false, &[(70, 80), (30, 40)]), Step::Write(30));
    }

    #[test]
    fn taken_bytes_are_skipped_to_the_end_of_their_run() {
        assert_eq!(step(40, 100, false, &[(40, 50)]), Step::Skip(10));
        assert_eq!(
            step(45, 2, false, &[(40, 50)]),
            Step::Skip(2),
            "as many as at hand"
        );
        // Recorded then claimed, touching or overlapping: one run.
        assert_eq!(
            step(40, 100, false, &[(55, 70), (40, 50), (50, 60)]),
            Step::Skip(30)
        );
    }

    #[test]
    fn a_complete_session_takes_nothing() {
        assert_eq!(step(0, 100, true, &[]), Step::Skip(100));
    }

    fn info(id: UploadId, received: &[(u64, u64)], length: u64) -> UploadInfo {
        let mut r = RangeSet::new();
        for &(a, b) in received {
            r.insert(a, b);
        }
        UploadInfo {
            id,
            length: Some(length),
            offset: r.contiguous_prefix().min(length),
            metadata: Default::default(),
            protocol: Protocol::Chunks,
            kind: Default::default(),
            received: Some(r),
            created_ms: 0,
            updated_ms: 0,
            expires_ms: None,
            digests: Default::default(),
            finals: Vec::new(),
            deleted: false,
        }
    }

    #[test]
    fn requests_skip_each_others_claims_until_they_end() {
        let claims = Arc::new(Claims::default());
        let id = UploadId::from_bytes([7; 16]);
        let a = claims.register(id);
        let b = claims.register(id);
        claims.learn(&info(id, &[(90, 100)], 100));
        assert_eq!(a.next(0, 10), Step::Write(10));
        assert_eq!(
            a.next(10, 10),
            Step::Write(10),
            "its own claims do not stop it"
        );
        assert_eq!(b.next(0, 100), Step::Skip(20), "a's");
        assert_eq!(b.next(20, 80), Step::Write(70), "up to the recorded range");
        assert_eq!(a.next(20, 10), Step::Skip(10), "b's");
        drop(a);
        // What a claimed and did not record is free again.
        assert_eq!(b.next(0, 20), Step::Write(20));
        claims.learn(&info(id, &[(0, 100)], 100));
        assert_eq!(b.next(0, 1), Step::Skip(1), "complete");
        assert!(claims.active(id));
        drop(b);
        assert!(!claims.active(id));
        assert!(
            claims.lock().is_empty(),
            "the entry goes with its last request"
        );
    }

    #[test]
    fn an_abandoned_commit_keeps_its_claims_as_recorded() {
        let claims = Arc::new(Claims::default());
        let id = UploadId::from_bytes([8; 16]);
        let a = claims.register(id);
        let b = claims.register(id);
        assert_eq!(a.next(0, 10), Step::Write(10));
        a.keep_as_recorded();
        drop(a);
        assert_eq!(b.next(0, 20), Step::Skip(10));
    }
}
