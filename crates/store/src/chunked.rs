//! Content-Range chunk sessions: the bytes of one upload arrive as ranges, in any order, over
//! requests that may run at the same time.
//!
//! Unlike an [`Append`](crate::Append), a [`RangeWrite`] takes no lease: concurrent writers are
//! the point. Safety comes from two rules instead:
//! - a write never touches bytes that were already recorded as received when it started (they
//!   are durable and acknowledged; first write wins), so a retry — or a stray overlapping chunk
//!   — cannot change what a client was told has arrived, and a finished session is never
//!   written again;
//! - a range is recorded only by [`RangeWrite::commit`], after its bytes are written and synced
//!   (per [`SyncPolicy`](crate::SyncPolicy)), as a read-modify-write of the record inside
//!   [`MetaStore::update`](crate::meta::MetaStore::update), which is atomic: concurrent commits
//!   never lose each other's ranges.
//!
//! A write that is dropped before `commit` (body cut off, client gone) records nothing; the
//! bytes it left in unrecorded areas of the file are never read and are overwritten by the
//! chunk that eventually covers them.

use crate::data::{DataWriter, WriteMode};
use crate::engine::double_buffer::DoubleBuffer;
use crate::engine::policy::range_buffer_capacity;
use crate::engine::{ChunkWriteActive, NewUpload, Uploads};
use crate::error::{Result, StoreError};
use crate::model::{Protocol, RangeSet, UploadInfo, now_ms};
use ferry_proto::{Metadata, UploadId};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        let info = self.get(id).await?.ok_or(StoreError::NotFound(id))?;
        check_range(&info, start, end, total)?;
        let skip: Vec<(u64, u64)> = info
            .received
            .as_ref()
            .map(|r| {
                r.ranges()
                    .iter()
                    .filter(|(a, b)| *a < end && *b > start)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        Ok(RangeWrite {
            uploads: self,
            id,
            start,
            end,
            total,
            skip,
            pos: start,
            writer: None,
            done: Vec::new(),
            buffers: DoubleBuffer::new(&self.buffer_pool, range_buffer_capacity(end - start)),
            _active: self.chunk_write_started(id),
        })
    }

    /// Declares a session's total length without sending bytes (a status query carrying a
    /// total): completes a session whose bytes have all arrived, e.g. an empty file.
    pub async fn declare_session_length(&self, id: UploadId, total: u64) -> Result<UploadInfo> {
        let info = self.get(id).await?.ok_or(StoreError::NotFound(id))?;
        check_range(&info, 0, 0, Some(total))?;
        self.record_range(id, 0, 0, Some(total)).await
    }

    /// Records `[start, end)` as received (atomically, re-checking the length rules against
    /// the record as it is now) and runs the completion work if this made the session whole.
    async fn record_range(
        &self,
        id: UploadId,
        start: u64,
        end: u64,
        total: Option<u64>,
    ) -> Result<UploadInfo> {
        let expiry = self.expiry;
        let completed_now = Arc::new(AtomicBool::new(false));
        let flag = completed_now.clone();
        let info = self
            .meta
            .update(
                id,
                Box::new(move |info| {
                    check_range(info, start, end, total)?;
                    let was_complete = info.is_complete();
                    if was_complete {
                        // Nothing can change any more (and nothing was written: every byte was
                        // already recorded when the write started).
                        return Ok(());
                    }
                    if info.length.is_none() {
                        info.length = total;
                    }
                    let received = info.received.get_or_insert_with(RangeSet::new);
                    received.insert(start, end);
                    if received.ranges().len() > MAX_SESSION_RANGES {
                        return Err(StoreError::TooFragmented {
                            limit: MAX_SESSION_RANGES,
                        });
                    }
                    let prefix = received.contiguous_prefix();
                    info.offset = info.length.map_or(prefix, |l| prefix.min(l));
                    let now = now_ms();
                    info.updated_ms = now;
                    info.expires_ms = expiry.expires_at(info.is_complete(), now);
                    flag.store(info.is_complete(), Ordering::SeqCst);
                    Ok(())
                }),
            )
            .await?;
        if completed_now.load(Ordering::SeqCst) {
            self.completed(&info).await;
            if let Some(fresh) = self.meta.get(id).await? {
                return Ok(fresh);
            }
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
    start: u64,
    end: u64,
    total: Option<u64>,
    /// Ranges inside `[start, end)` already recorded when this write began: their bytes are
    /// skipped, never rewritten.
    skip: Vec<(u64, u64)>,
    /// Position of the next byte of the body.
    pos: u64,
    /// Writer for the gap being filled.
    writer: Option<Box<dyn DataWriter>>,
    /// Writers of earlier gaps, their writes settled, waiting for the sync.
    done: Vec<Box<dyn DataWriter>>,
    buffers: DoubleBuffer<'a>,
    _active: ChunkWriteActive<'a>,
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
            // Inside a range recorded before: skip it.
            if let Some(&(_, b)) = self.skip.iter().find(|(a, b)| *a <= pos && pos < *b) {
                let n = (b - pos).min(data.len() as u64) as usize;
                data = &data[n..];
                self.pos += n as u64;
                continue;
            }
            let gap_end = self
                .skip
                .iter()
                .map(|r| r.0)
                .filter(|a| *a > pos)
                .min()
                .unwrap_or(self.end);
            let n = (gap_end - pos).min(data.len() as u64) as usize;
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
            self.buffers.push(&data[..n], writer).await?;
            data = &data[n..];
            self.pos += n as u64;
        }
        Ok(())
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
            .open_writer(self.id, WriteMode::At { offset: pos })
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
        if self.uploads.sync.syncs_data() {
            for w in &mut self.done {
                w.sync().await?;
            }
        }
        self.uploads
            .record_range(self.id, self.start, self.end, self.total)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ExpiryPolicy, SyncPolicy};
    use futures_util::StreamExt;
    use std::path::Path;
    use std::time::Duration;

    fn open(dir: &Path) -> Uploads {
        Uploads::open_local(dir, SyncPolicy::Always).unwrap()
    }

    async fn put(
        u: &Uploads,
        id: UploadId,
        at: u64,
        bytes: &[u8],
        total: Option<u64>,
    ) -> Result<UploadInfo> {
        let mut w = u
            .write_range(id, at, at + bytes.len() as u64, total)
            .await?;
        for piece in bytes.chunks(7_777) {
            w.push(piece).await?;
        }
        w.commit().await
    }

    async fn read_all(u: &Uploads, info: &UploadInfo) -> Vec<u8> {
        let mut s = u.read(info, 0, info.offset).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 / 7) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_order_overlapping_and_concurrent_chunks_complete_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        let u = Arc::new(open(dir.path()));
        let d = data(2_500_000);
        let len = d.len() as u64;
        let s = u
            .create_session(Some(len), Metadata::default())
            .await
            .unwrap();
        assert_eq!(s.received, Some(RangeSet::new()));
        // Last chunk first, then an overlapping one.
        let i = put(&u, s.id, 2_000_000, &d[2_000_000..], Some(len))
            .await
            .unwrap();
        assert_eq!(i.offset, 0);
        assert_eq!(i.received.as_ref().unwrap().ranges(), &[(2_000_000, len)]);
        put(&u, s.id, 1_500_000, &d[1_500_000..2_200_000], Some(len))
            .await
            .unwrap();
        // The rest concurrently, in 100 kB pieces, in reverse.
        let mut tasks = Vec::new();
        for start in (0..15u64).rev().map(|i| i * 100_000) {
            let (u, d) = (u.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                let e = (start + 100_000) as usize;
                put(&u, s.id, start, &d[start as usize..e], Some(len))
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let done = u.get(s.id).await.unwrap().unwrap();
        assert!(done.is_complete(), "{:?}", done.received);
        assert_eq!(read_all(&u, &done).await, d);
        let sha256 = ferry_proto::checksum::ChecksumAlgorithm::Sha256;
        let want = ferry_proto::checksum::digest(sha256, &d);
        assert_eq!(
            done.digests.get(sha256),
            Some(&want[..]),
            "digest by reading back"
        );
        // A retry after completion changes nothing.
        let again = put(&u, s.id, 0, &vec![0xff; 1000], Some(len))
            .await
            .unwrap();
        assert_eq!(again.digests.get(sha256), Some(&want[..]));
        assert_eq!(
            read_all(&u, &again).await,
            d,
            "recorded bytes are never rewritten"
        );
    }

    #[tokio::test]
    async fn dropped_or_short_chunks_record_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let s = u
            .create_session(Some(100), Metadata::default())
            .await
            .unwrap();
        let mut w = u.write_range(s.id, 0, 50, Some(100)).await.unwrap();
        w.push(&[1; 30]).await.unwrap();
        assert!(matches!(
            w.push(&[1; 21]).await,
            Err(StoreError::ExceedsLength { length: 50 })
        ));
        assert!(w.commit().await.is_err(), "short chunk");
        {
            let mut w = u.write_range(s.id, 50, 100, None).await.unwrap();
            w.push(&[2; 50]).await.unwrap();
            // dropped without commit
        }
        let i = u.get(s.id).await.unwrap().unwrap();
        assert_eq!(i.received, Some(RangeSet::new()));
        assert!(!u.chunk_writes_active(s.id));
    }

    #[tokio::test]
    async fn length_rules_hold_at_start_and_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let s = u.create_session(None, Metadata::default()).await.unwrap();
        // Unknown length: a `*` total, then the first numeric total fixes it.
        put(&u, s.id, 10, &[1; 10], None).await.unwrap();
        assert!(matches!(
            u.write_range(s.id, 0, 5, Some(15)).await,
            Err(StoreError::LengthMismatch { .. })
        ));
        // Two writers with different totals: whichever commits second loses.
        let mut a = u.write_range(s.id, 0, 5, Some(30)).await.unwrap();
        let mut b = u.write_range(s.id, 5, 10, Some(40)).await.unwrap();
        a.push(&[3; 5]).await.unwrap();
        b.push(&[4; 5]).await.unwrap();
        assert_eq!(a.commit().await.unwrap().length, Some(30));
        assert!(matches!(
            b.commit().await,
            Err(StoreError::LengthMismatch {
                length: 30,
                declared: 40
            })
        ));
        assert!(matches!(
            u.write_range(s.id, 25, 31, None).await,
            Err(StoreError::OutOfRange { length: 30 })
        ));
        let i = u.get(s.id).await.unwrap().unwrap();
        assert_eq!(i.received.unwrap().ranges(), &[(0, 5), (10, 20)]);
        // An empty session completes when its length is declared.
        let e = u.create_session(None, Metadata::default()).await.unwrap();
        let e = u.declare_session_length(e.id, 0).await.unwrap();
        assert!(e.is_complete());
        assert!(
            e.digests
                .has(ferry_proto::checksum::ChecksumAlgorithm::Sha256)
        );
    }

    #[tokio::test]
    async fn fragments_are_bounded_and_tus_appends_refused() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let n = (MAX_SESSION_RANGES as u64 + 1) * 2;
        let s = u
            .create_session(Some(n), Metadata::default())
            .await
            .unwrap();
        for i in 0..MAX_SESSION_RANGES as u64 {
            u.record_range(s.id, i * 2, i * 2 + 1, Some(n))
                .await
                .unwrap();
        }
        assert!(matches!(
            put(&u, s.id, n - 1, &[0], Some(n)).await,
            Err(StoreError::TooFragmented { .. })
        ));
        // Filling a gap is still fine.
        put(&u, s.id, 1, &[0], Some(n)).await.unwrap();
        let lease = u.lease(s.id).await.unwrap();
        assert!(matches!(
            u.append(&lease, None).await,
            Err(StoreError::WrongProtocol(_))
        ));
    }

    #[tokio::test]
    async fn sweeper_skips_sessions_being_written_and_received_ranges_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let u = open(dir.path()).with_expiry(ExpiryPolicy {
                unfinished: Some(Duration::from_secs(60)),
                finished: None,
            });
            let s = u
                .create_session(Some(100), Metadata::default())
                .await
                .unwrap();
            id = s.id;
            put(&u, id, 40, &[9; 20], Some(100)).await.unwrap();
            let later = now_ms() + 61_000;
            let w = u.write_range(id, 0, 10, Some(100)).await.unwrap();
            assert!(u.sweep_expired(later).await.unwrap().is_empty());
            drop(w);
        }
        let u = open(dir.path());
        let i = u.get(id).await.unwrap().unwrap();
        assert_eq!(i.received.unwrap().ranges(), &[(40, 60)]);
        assert_eq!(
            u.sweep_expired(now_ms() + 8 * 24 * 3600 * 1000)
                .await
                .unwrap(),
            vec![id]
        );
    }
}
