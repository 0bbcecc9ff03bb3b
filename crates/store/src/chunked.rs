//! Content-Range chunk sessions: the bytes of one upload arrive as ranges, in any order, over
//! requests that may run at the same time.
//!
//! Unlike an [`Append`](crate::Append), a [`RangeWrite`] takes no lease: concurrent writers are
//! the point. Safety comes from two rules instead:
//! - bytes of a recorded range never change, and a complete session is never written again:
//!   before each write a request claims the bytes it is about to write, skipping those that
//!   are recorded or that another request claims (first claim wins; per process, see
//!   `engine/claims.rs`). A request keeps its claims until it ends, and records at commit
//!   only the ranges it wrote: bytes it skipped for another request stay missing if that one
//!   fails, and the client sees the gap in the ranges;
//! - a range is recorded only by [`RangeWrite::commit`], after its bytes are written and synced
//!   (per [`SyncPolicy`](crate::SyncPolicy)), as a read-modify-write of the record inside
//!   [`MetaStore::update`](crate::meta::MetaStore::update), which is atomic: concurrent commits
//!   never lose each other's ranges.
//!
//! A write that is dropped before `commit` (body cut off, client gone) records nothing; the
//! bytes it left in unrecorded areas of the file are never read and are overwritten by the
//! chunk that eventually covers them.

use crate::data::{DataWriter, Fence, Locator, WriteMode};
use crate::engine::claims::{ClaimGuard, Next, Takeover};
use crate::engine::double_buffer::DoubleBuffer;
use crate::engine::policy::{self, range_buffer_capacity};
use crate::engine::{NewUpload, TAKEOVER_PATIENCE, Uploads};
use crate::error::{Result, StoreError};
use crate::model::{Protocol, RangeSet, UploadInfo, now_ms};
use ferry_proto::{Metadata, UploadId};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Most separate ranges a session may hold. Each commit rewrites the record and each answer
/// lists the ranges in a header, so a client sending scattered tiny chunks must not make
/// either grow without bound (1,000 ranges stay below 40 KB of header).
pub const MAX_SESSION_RANGES: usize = 1000;

impl Uploads {
    /// Creates a chunk session; `length` may be learned later from a chunk's total.
    pub async fn create_session(
        &self,
        length: Option<u64>,
        metadata: Metadata,
    ) -> Result<UploadInfo> {
        self.create(NewUpload {
            length,
            metadata,
            protocol: Protocol::Chunks,
            ..Default::default()
        })
        .await
    }

    /// Starts receiving bytes `[start, end)` of chunk session `id`; `total` is the whole
    /// length the client declared, if any. Checks against the committed record are repeated
    /// atomically at commit time, since other chunks may commit meanwhile.
    pub async fn write_range(
        &self,
        id: UploadId,
        start: u64,
        end: u64,
        total: Option<u64>,
    ) -> Result<RangeWrite<'_>> {
        // Registered before the record is read: a commit landing in between is learned too.
        let claim = self.chunk_claims.register(id);
        let info = self.get(id).await?.ok_or(StoreError::NotFound(id))?;
        check_range(&info, start, end, total)?;
        let (running, before) = self.buffer_pool.start_append();
        match (info.length, total) {
            // The first total learned: checked as a length declared at creation would be.
            (None, Some(total)) => {
                self.check_room(total, info.received.as_ref().map_or(0, RangeSet::covered))?;
            }
            _ => policy::within_max_size(end, self.max_size)?,
        }
        self.chunk_claims.learn(&info);
        Ok(RangeWrite {
            uploads: self,
            id,
            locator: info.locator,
            start,
            end,
            total,
            pos: start,
            wrote: RangeSet::new(),
            writer: None,
            done: Vec::new(),
            buffers: DoubleBuffer::new(
                &self.buffer_pool,
                range_buffer_capacity(end - start, before),
            ),
            _running: running,
            recording: false,
            claim: Some(claim),
            waiting: None,
        })
    }

    /// Declares a session's total length without sending bytes (a status query carrying a
    /// total): completes a session whose bytes have all arrived, e.g. an empty file.
    pub async fn declare_session_length(&self, id: UploadId, total: u64) -> Result<UploadInfo> {
        let info = self.get(id).await?.ok_or(StoreError::NotFound(id))?;
        check_range(&info, 0, 0, Some(total))?;
        if info.length.is_none() {
            self.check_room(total, info.received.as_ref().map_or(0, RangeSet::covered))?;
        }
        self.record_range(id, (0, 0), Vec::new(), Vec::new(), Some(total))
            .await
    }

    /// Records the ranges `wrote` of chunk `span` as received (atomically, re-checking the
    /// length rules for the chunk against the record as it is now), tells the claims, and runs
    /// the completion work if this made the session whole.
    async fn record_range(
        &self,
        id: UploadId,
        span: (u64, u64),
        wrote: Vec<(u64, u64)>,
        written: Vec<Locator>,
        total: Option<u64>,
    ) -> Result<UploadInfo> {
        let (start, end) = span;
        let expiry = self.expiry;
        let data = self.data.clone();
        let completed_now = Arc::new(AtomicBool::new(false));
        let flag = completed_now.clone();
        let info = self
            .meta
            .update(
                id,
                Box::new(move |info| {
                    // A store may run this again: only the last run's outcome counts.
                    flag.store(false, Ordering::SeqCst);
                    check_range(info, start, end, total)?;
                    let was_complete = info.is_complete();
                    if was_complete {
                        // Nothing can change any more (and nothing was written: a complete
                        // session's bytes are all recorded, so every write skipped them).
                        return Ok(());
                    }
                    if info.length.is_none() {
                        info.length = total;
                    }
                    let received = info.received.get_or_insert_with(RangeSet::new);
                    for &(a, b) in &wrote {
                        received.insert(a, b);
                    }
                    if received.ranges().len() > MAX_SESSION_RANGES {
                        return Err(StoreError::TooFragmented {
                            limit: MAX_SESSION_RANGES,
                        });
                    }
                    // The store's handle on the bytes, with this chunk's, in the same commit.
                    for at in &written {
                        info.locator = data.merge_locators(&info.locator, at)?;
                    }
                    let prefix = received.contiguous_prefix();
                    info.offset = info.length.map_or(prefix, |l| prefix.min(l));
                    let now = now_ms();
                    info.updated_ms = now;
                    info.expires_ms = expiry.expires_at(info.is_complete(), now);
                    // Whole now: recorded first, then the store finishes (recovered by `get`
                    // if this process dies in between).
                    info.finish_pending = info.is_complete();
                    flag.store(info.is_complete(), Ordering::SeqCst);
                    Ok(())
                }),
            )
            .await?;
        // Before the committing request's claims go: no other request may write these bytes
        // in between.
        self.chunk_claims.learn(&info);
        if completed_now.load(Ordering::SeqCst) {
            let info = self.finish_recorded(info).await?;
            self.completed(&info).await;
            return Ok(self.meta.get(id).await?.unwrap_or(info));
        }
        Ok(info)
    }
}

/// The rules a chunk must satisfy against a session's record.
fn check_range(info: &UploadInfo, start: u64, end: u64, total: Option<u64>) -> Result<()> {
    if info.deleted {
        return Err(StoreError::NotFound(info.id));
    }
    if info.protocol != Protocol::Chunks {
        return Err(StoreError::WrongProtocol(info.id));
    }
    let highest = info
        .received
        .as_ref()
        .and_then(|r| r.ranges().last().map(|r| r.1))
        .unwrap_or(0);
    match (info.length, total) {
        (Some(length), Some(declared)) if length != declared => {
            return Err(StoreError::LengthMismatch { length, declared });
        }
        // A total declared now must hold the bytes that arrived with `*` totals before.
        (None, Some(declared)) if highest > declared => {
            return Err(StoreError::LengthMismatch {
                length: highest,
                declared,
            });
        }
        _ => {}
    }
    if let Some(length) = info.length.or(total)
        && (end > length || start > end)
    {
        return Err(StoreError::OutOfRange { length });
    }
    Ok(())
}

/// One chunk being received. Bytes pushed here count only after [`commit`](Self::commit);
/// dropping it records nothing.
pub struct RangeWrite<'a> {
    uploads: &'a Uploads,
    id: UploadId,
    /// The session's locator as read when the request began (writers open on it).
    locator: Locator,
    start: u64,
    end: u64,
    total: Option<u64>,
    /// Position of the next byte of the body.
    pos: u64,
    /// Ranges this request claimed and wrote (or buffered): what its commit records.
    wrote: RangeSet,
    /// Writer for the gap being filled.
    writer: Option<Box<dyn DataWriter>>,
    /// Writers of earlier gaps, their writes settled, waiting for the checkpoint.
    done: Vec<Box<dyn DataWriter>>,
    buffers: DoubleBuffer<'a>,
    /// The commit is recording: if it is abandoned now, its record may still land.
    recording: bool,
    /// This request's claims (`None` once handed to the drop).
    claim: Option<ClaimGuard>,
    /// Waiting for another request's claim at this byte: when to ask it to let go, and when
    /// to give up.
    waiting: Option<(u64, tokio::time::Instant, tokio::time::Instant)>,
    /// Counted with the appends: buffer sizes shrink when many writers run.
    _running: crate::engine::buffers::AppendRunning<'a>,
}

impl std::fmt::Debug for RangeWrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeWrite")
            .field("id", &self.id)
            .field("range", &(self.start..self.end))
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl RangeWrite<'_> {
    /// As [`Append::reserve`](crate::engine::Append::reserve): waits until the write's buffers
    /// and `extra` bytes fit in the engine's budget of buffer memory.
    pub async fn reserve(&mut self, extra: usize) {
        self.buffers.reserve(extra).await;
    }

    /// Bytes of the chunk received so far.
    pub fn received(&self) -> u64 {
        self.pos - self.start
    }

    /// Bytes the chunk still needs.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// Accepts the next bytes of the chunk. More bytes than the range holds are refused
    /// (`ExceedsLength` with the chunk's length), taking none.
    pub async fn push(&mut self, mut data: &[u8]) -> Result<()> {
        if data.len() as u64 > self.remaining() {
            return Err(StoreError::ExceedsLength {
                length: self.end - self.start,
            });
        }
        while !data.is_empty() {
            let pos = self.pos;
            let next = match &self.claim {
                Some(c) => c.next(pos, data.len() as u64),
                None => Next::Skip(data.len() as u64),
            };
            let n = match next {
                // Recorded, or the session is complete.
                Next::Skip(n) => {
                    self.waiting = None;
                    data = &data[n as usize..];
                    self.pos += n;
                    continue;
                }
                Next::Write(n) => {
                    self.waiting = None;
                    n as usize
                }
                Next::Wait { released, owner } => {
                    // Deadlines run from the first wait at this byte: releases of other claims
                    // wake the loop without restarting them.
                    let now = tokio::time::Instant::now();
                    let deadlines = match self.waiting {
                        Some((at, grace, patience)) if at == pos => (grace, patience),
                        _ => (now + CLAIM_GRACE, now + TAKEOVER_PATIENCE),
                    };
                    self.waiting = Some((pos, deadlines.0, deadlines.1));
                    wait_for_release(self.id, released, owner, deadlines, self.taken_over())
                        .await?;
                    continue;
                }
            };
            let at = self
                .writer
                .as_ref()
                .map(|w| w.position() + self.buffers.buffered());
            if at != Some(pos) {
                self.switch_writer(pos).await?;
            }
            let writer = self
                .writer
                .as_deref_mut()
                .ok_or_else(|| StoreError::Inconsistent("chunk write without a writer".into()))?;
            self.wrote.insert(pos, pos + n as u64);
            self.buffers.push(&data[..n], writer).await?;
            data = &data[n..];
            self.pos += n as u64;
        }
        Ok(())
    }

    /// Resolves once a newer request asks this one to let go of bytes it claims: the caller
    /// ends the request (what it wrote is not recorded) so the newer one can write them.
    pub fn taken_over(&self) -> impl Future<Output = ()> + Send + 'static {
        let takeover = self.claim.as_ref().map(|c| c.takeover());
        async move {
            match takeover {
                Some(t) => t.asked().await,
                None => std::future::pending().await,
            }
        }
    }

    /// Finishes the current gap's writer and opens one at `pos`.
    async fn switch_writer(&mut self, pos: u64) -> Result<()> {
        self.flush().await?;
        if let Some(w) = self.writer.take() {
            self.done.push(w);
        }
        let w = self
            .uploads
            .data
            .open_writer(
                self.id,
                &self.locator,
                WriteMode::At { offset: pos },
                Fence::Claim,
            )
            .await?;
        self.writer = Some(w);
        Ok(())
    }

    /// Hands what is buffered to the current gap's writer and waits for every write.
    async fn flush(&mut self) -> Result<()> {
        match self.writer.as_deref_mut() {
            Some(w) => self.buffers.flush(w).await,
            None => Ok(()),
        }
    }

    /// Makes the chunk count: waits for the writes, syncs the data (under
    /// [`SyncPolicy::Always`](crate::SyncPolicy::Always)), then records the range in the
    /// metadata store. Only then may the range be reported as received. Fails (recording
    /// nothing) if the chunk is not whole.
    pub async fn commit(mut self) -> Result<UploadInfo> {
        if self.pos != self.end {
            return Err(StoreError::Inconsistent(format!(
                "chunk {}..{} is incomplete: {} bytes missing",
                self.start,
                self.end,
                self.remaining()
            )));
        }
        self.flush().await?;
        if let Some(w) = self.writer.take() {
            self.done.push(w);
        }
        let durable = self.uploads.sync.syncs_data();
        let mut written = Vec::with_capacity(self.done.len());
        for w in &mut self.done {
            written.push(w.checkpoint(durable).await?);
        }
        let wrote = self.wrote.ranges().to_vec();
        self.recording = true;
        let recorded = self
            .uploads
            .record_range(self.id, (self.start, self.end), wrote, written, self.total)
            .await;
        self.recording = false;
        recorded
    }
}

/// How long a request waits for an older one holding bytes it needs before asking it to let
/// go: long enough for a duplicate chunk sent at the same time to finish (both then succeed),
/// short enough that a retry is not held up by a first attempt on a connection that died
/// without the server seeing it.
const CLAIM_GRACE: Duration = Duration::from_secs(2);

/// Waits until another request lets claimed bytes of upload `id` go, asking `owner` (an older
/// holder) to let go once `grace` passes. Fails if this request is asked to let go itself
/// meanwhile (`asked`: a newer request wants its bytes), or if the holder neither ends nor
/// lets go within the takeover patience.
async fn wait_for_release(
    id: UploadId,
    mut released: watch::Receiver<u64>,
    owner: Option<Arc<Takeover>>,
    (grace, patience): (tokio::time::Instant, tokio::time::Instant),
    asked: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(asked);
    let grace = tokio::time::sleep_until(grace);
    let patience = tokio::time::sleep_until(patience);
    tokio::pin!(grace, patience);
    let mut owner = owner;
    loop {
        tokio::select! {
            r = released.changed() => return r.map_err(|_| StoreError::Busy(id)),
            () = &mut asked => return Err(StoreError::TakenOver(id)),
            () = &mut grace, if owner.is_some() => {
                if let Some(o) = owner.take() {
                    o.ask();
                }
            }
            () = &mut patience => return Err(StoreError::Busy(id)),
        }
    }
}

impl Drop for RangeWrite<'_> {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        if self.recording {
            claim.keep_as_recorded();
        }
        // A write still in flight lands after this request ends: its bytes stay claimed until
        // then, or another request could record them first and see them overwritten.
        match (
            self.buffers.take_inflight(),
            tokio::runtime::Handle::try_current(),
        ) {
            (Some(write), Ok(rt)) => {
                rt.spawn(async move {
                    let _ = write.await;
                    drop(claim);
                });
            }
            // No write pending, or no runtime left to finish one.
            _ => drop(claim),
        }
    }
}

#[cfg(test)]
mod tests;
