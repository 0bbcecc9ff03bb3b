//! Which bytes of a chunk session each request may write, within this process.
//!
//! Chunk requests take no lease (many write one session at once), so before each write a
//! request claims the bytes it is about to write. Bytes already recorded are skipped; once the
//! session is complete, nothing is claimed. Bytes another request claims are never written
//! over: a newer request waits until the older one that holds them has ended, and if that takes
//! long (a retry whose first attempt the server is still reading) asks it to let go, as a newer
//! request takes a tus upload over; then it writes them or, if the older one recorded them,
//! skips them. So an answer that a chunk was recorded always covers the whole
//! chunk. A request keeps its claims until it ends (committed, failed or dropped:
//! [`ClaimGuard`]'s drop), so the bytes of a recorded range are only ever written by the
//! request that recorded them, before it did.
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
use tokio::sync::watch;

/// What to do with the next bytes of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// This many bytes are recorded, or the session is complete: skip them.
    Skip(u64),
    /// This many bytes are free: claim and write them.
    Write(u64),
    /// The next byte is claimed by request `owner`: wait until it lets go.
    Wait {
        /// The request holding the byte.
        owner: u64,
    },
}

/// The step for the `n` bytes at hand from `pos`, given the recorded ranges, the ranges other
/// requests claim (`(request, start, end)`; in any order, possibly overlapping), and whether
/// the session is complete.
pub(crate) fn step(
    pos: u64,
    n: u64,
    complete: bool,
    recorded: &[(u64, u64)],
    claimed: &[(u64, u64, u64)],
) -> Step {
    if complete {
        return Step::Skip(n);
    }
    // Recorded ranges may touch one another: skip to the end of the whole run.
    let mut end = pos;
    while let Some(b) = recorded
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
    if let Some(&(owner, _, _)) = claimed.iter().find(|&&(_, a, b)| a <= pos && pos < b) {
        return Step::Wait { owner };
    }
    let next = recorded
        .iter()
        .map(|r| r.0)
        .chain(claimed.iter().map(|c| c.1))
        .filter(|&a| a > pos)
        .min()
        .unwrap_or(u64::MAX);
    Step::Write((next - pos).min(n))
}

/// A request's "let go" signal: a newer request wants bytes it claims. Every waiter sees it
/// (the receive loop and a wait inside a write may both be waiting).
#[derive(Debug)]
pub(crate) struct Takeover(watch::Sender<bool>);

impl Default for Takeover {
    fn default() -> Self {
        Self(watch::channel(false).0)
    }
}

impl Takeover {
    /// Asks the request to let go.
    pub(crate) fn ask(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once a newer request has asked this one to let go.
    pub(crate) async fn asked(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`, so this only ends when asked.
        let _ = rx.wait_for(|asked| *asked).await;
    }
}

/// One session's writers and what they may no longer write.
#[derive(Debug)]
struct Session {
    /// Requests registered (writing, or about to).
    writers: usize,
    /// Ranges known to be recorded.
    recorded: RangeSet,
    /// Whether the session is complete: nothing more is written.
    complete: bool,
    /// `(request, start, end)`: ranges a request is writing.
    claims: Vec<(u64, u64, u64)>,
    /// Each registered request's "let go" signal.
    takeovers: HashMap<u64, Arc<Takeover>>,
    /// Bumped whenever a request lets its claims go, for requests waiting on them.
    released: watch::Sender<u64>,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            writers: 0,
            recorded: RangeSet::new(),
            complete: false,
            claims: Vec::new(),
            takeovers: HashMap::new(),
            released: watch::channel(0).0,
        }
    }
}

/// Every chunk session's claims in this process (one per [`Uploads`](super::Uploads)).
#[derive(Debug, Default)]
pub(crate) struct Claims {
    sessions: Mutex<HashMap<UploadId, Session>>,
    next_request: AtomicU64,
}

/// What a request does next with the bytes at hand.
#[derive(Debug)]
pub(crate) enum Next {
    /// Skip this many (recorded, or the session is complete).
    Skip(u64),
    /// Write this many (now claimed).
    Write(u64),
    /// Another request holds the next byte: wait for a release, then ask again. `owner` is
    /// the holder's "let go" signal when it is older than the asking request (a newer one is
    /// never asked).
    Wait {
        /// Changes when a request on the session lets claims go.
        released: watch::Receiver<u64>,
        /// The older holder's signal.
        owner: Option<Arc<Takeover>>,
    },
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
        let takeover = Arc::new(Takeover::default());
        let mut map = self.lock();
        let s = map.entry(id).or_default();
        s.writers += 1;
        s.takeovers.insert(request, takeover.clone());
        drop(map);
        ClaimGuard {
            claims: self.clone(),
            id,
            request,
            takeover,
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
    takeover: Arc<Takeover>,
}

impl ClaimGuard {
    /// For the `n` bytes at hand from `pos`: how many to skip, how many to write (then
    /// claimed for this request), or a release to wait for. A request waiting on an older one
    /// may ask it to let go; an older request waiting on a newer one only waits (the newer
    /// one asks if it needs the older one's bytes, so the waits never form a cycle).
    pub(crate) fn next(&self, pos: u64, n: u64) -> Next {
        let mut map = self.claims.lock();
        let Some(s) = map.get_mut(&self.id) else {
            // Registered, so never missing; but without an entry nothing can be ruled out.
            return Next::Skip(n);
        };
        let others: Vec<(u64, u64, u64)> = s
            .claims
            .iter()
            .filter(|c| c.0 != self.request)
            .copied()
            .collect();
        match step(pos, n, s.complete, s.recorded.ranges(), &others) {
            Step::Skip(k) => Next::Skip(k),
            Step::Write(k) => {
                // Extends this request's claim ending here: one entry per run it writes,
                // however its frames interleave with other requests'.
                match s
                    .claims
                    .iter_mut()
                    .find(|c| c.0 == self.request && c.2 == pos)
                {
                    Some(own) => own.2 += k,
                    None => s.claims.push((self.request, pos, pos + k)),
                }
                Next::Write(k)
            }
            Step::Wait { owner } => Next::Wait {
                // Subscribed under the lock: a release after it wakes the waiter.
                released: s.released.subscribe(),
                owner: s
                    .takeovers
                    .get(&owner)
                    .filter(|_| owner < self.request)
                    .cloned(),
            },
        }
    }

    /// This request's "let go" signal.
    pub(crate) fn takeover(&self) -> Arc<Takeover> {
        self.takeover.clone()
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
            s.takeovers.remove(&self.request);
            s.released.send_modify(|v| *v = v.wrapping_add(1));
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
        assert_eq!(step(0, 100, false, &[], &[]), Step::Write(100));
        assert_eq!(step(0, 100, false, &[(40, 50)], &[]), Step::Write(40));
        assert_eq!(
            step(10, 5, false, &[(40, 50)], &[]),
            Step::Write(5),
            "as many as at hand"
        );
        assert_eq!(
            step(50, 100, false, &[(40, 50)], &[]),
            Step::Write(100),
            "half-open"
        );
        assert_eq!(
            step(0, 100, false, &[(70, 80)], &[(9, 30, 40)]),
            Step::Write(30),
            "up to another request's claim"
        );
    }

    #[test]
    fn recorded_bytes_are_skipped_to_the_end_of_their_run() {
        assert_eq!(step(40, 100, false, &[(40, 50)], &[]), Step::Skip(10));
        assert_eq!(
            step(45, 2, false, &[(40, 50)], &[]),
            Step::Skip(2),
            "as many as at hand"
        );
        assert_eq!(
            step(40, 100, false, &[(55, 70), (40, 50), (50, 60)], &[]),
            Step::Skip(30)
        );
    }

    #[test]
    fn claimed_bytes_are_waited_for_not_skipped() {
        assert_eq!(
            step(40, 100, false, &[], &[(3, 40, 50)]),
            Step::Wait { owner: 3 }
        );
        assert_eq!(
            step(45, 1, false, &[(10, 20)], &[(3, 40, 50)]),
            Step::Wait { owner: 3 }
        );
        assert_eq!(
            step(40, 10, false, &[(40, 50)], &[(3, 40, 50)]),
            Step::Skip(10),
            "recorded wins over a claim still held"
        );
    }

    #[test]
    fn a_complete_session_takes_nothing() {
        assert_eq!(step(0, 100, true, &[], &[(1, 0, 100)]), Step::Skip(100));
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
            running_crc: None,
            locator: crate::data::Locator::none(),
            finish_pending: false,
        }
    }

    #[tokio::test]
    async fn a_newer_request_waits_for_the_older_and_may_ask_it_to_let_go() {
        let claims = Arc::new(Claims::default());
        let id = UploadId::from_bytes([7; 16]);
        let old = claims.register(id);
        let new = claims.register(id);
        claims.learn(&info(id, &[(90, 100)], 100));
        assert!(matches!(old.next(0, 10), Next::Write(10)));
        assert!(
            matches!(old.next(10, 10), Next::Write(10)),
            "its own claims do not stop it"
        );
        let Next::Wait {
            mut released,
            owner: Some(owner),
        } = new.next(0, 100)
        else {
            panic!("the older request's bytes are waited for, and it can be asked to let go");
        };
        owner.ask();
        tokio::time::timeout(std::time::Duration::from_secs(1), old.takeover().asked())
            .await
            .expect("the older request is asked to let go");
        assert!(
            matches!(new.next(20, 80), Next::Write(70)),
            "free up to the recorded range"
        );
        let Next::Wait { owner: None, .. } = old.next(20, 10) else {
            panic!("the newer request's bytes are waited for, and it is never asked to let go");
        };
        drop(old);
        released.changed().await.unwrap();
        // What the older request claimed and did not record is free again.
        assert!(matches!(new.next(0, 20), Next::Write(20)));
        claims.learn(&info(id, &[(0, 100)], 100));
        assert!(matches!(new.next(0, 1), Next::Skip(1)), "complete");
        assert!(claims.active(id));
        drop(new);
        assert!(!claims.active(id));
        assert!(
            claims.lock().is_empty(),
            "the entry goes with its last request"
        );
    }

    #[tokio::test]
    async fn every_waiter_sees_a_request_to_let_go() {
        let t = Arc::new(Takeover::default());
        // The receive loop and a wait inside a write both wait on the same request.
        let (a, b) = (t.clone(), t.clone());
        let first = tokio::spawn(async move { a.asked().await });
        let second = tokio::spawn(async move { b.asked().await });
        tokio::task::yield_now().await;
        t.ask();
        let both = async {
            first.await.unwrap();
            second.await.unwrap();
        };
        tokio::time::timeout(std::time::Duration::from_secs(1), both)
            .await
            .expect("both waiters woke");
        tokio::time::timeout(std::time::Duration::from_secs(1), t.asked())
            .await
            .expect("a waiter that comes later sees it too");
    }

    #[test]
    fn an_abandoned_commit_keeps_its_claims_as_recorded() {
        let claims = Arc::new(Claims::default());
        let id = UploadId::from_bytes([8; 16]);
        let a = claims.register(id);
        let b = claims.register(id);
        assert!(matches!(a.next(0, 10), Next::Write(10)));
        a.keep_as_recorded();
        drop(a);
        assert!(matches!(b.next(0, 20), Next::Skip(10)));
    }
}
