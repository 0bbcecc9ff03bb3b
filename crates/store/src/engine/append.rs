//! Appends: bytes of a tus or IETF upload, in order, under the upload's lease. They count only
//! once [`Append::commit`] has made them durable and recorded the new offset.

use super::Uploads;
use super::buffers::AppendRunning;
use super::digests::{RunningDigest, record_running};
use super::double_buffer::DoubleBuffer;
use super::policy::{self, append_buffer_capacity, kept_running};
use crate::data::{DataWriter, WriteMode};
use crate::error::{Result, StoreError};
use crate::lock::Lease;
use crate::model::{Protocol, UploadInfo, UploadKind, now_ms};
use ferry_proto::digest::WantDigest;

impl Uploads {
    /// Starts appending at the committed offset. `expected_bytes` sizes the buffers.
    pub async fn append(&self, lease: &Lease, expected_bytes: Option<u64>) -> Result<Append<'_>> {
        let id = lease.id();
        let info = self.get(id).await?.ok_or(StoreError::NotFound(id))?;
        self.append_to(lease, info, expected_bytes).await
    }

    /// [`append`](Self::append) to `info`, the record as read (by [`get`](Self::get)) under
    /// `lease`: a caller that has just read it saves a metadata round trip. Only the lease
    /// holder moves the offset and the locator, so they are still as read.
    pub async fn append_to(
        &self,
        lease: &Lease,
        info: UploadInfo,
        expected_bytes: Option<u64>,
    ) -> Result<Append<'_>> {
        let id = lease.id();
        if info.id != id {
            return Err(StoreError::Inconsistent(format!(
                "an append under the lease of {id} was given the record of {}",
                info.id
            )));
        }
        if matches!(info.kind, UploadKind::Final { .. }) {
            return Err(StoreError::IsFinal(id));
        }
        if info.protocol == Protocol::Chunks {
            // An append would cut away every byte past the contiguous prefix: chunks received
            // out of order.
            return Err(StoreError::WrongProtocol(id));
        }
        let writer = self
            .data
            .open_writer(
                id,
                &info.locator,
                WriteMode::Append {
                    offset: info.offset,
                },
                lease.fence(),
            )
            .await?;
        let (running, before) = self.buffer_pool.start_append();
        let capacity = append_buffer_capacity(before, expected_bytes);
        let hasher = self.resume_running(&info);
        Ok(Append {
            epoch: lease.epoch(),
            hasher,
            uploads: self,
            start: info.offset,
            info,
            writer,
            buffers: DoubleBuffer::new(&self.buffer_pool, capacity),
            _running: running,
        })
    }
}

/// An append in progress, under a lease. Bytes pushed here count only after
/// [`commit`](Append::commit); dropping an `Append` without committing discards them (they sit
/// past the committed offset and are cut away by the next writer).
pub struct Append<'a> {
    uploads: &'a Uploads,
    /// The lease's epoch: commits are fenced by it.
    epoch: u64,
    info: UploadInfo,
    writer: Box<dyn DataWriter>,
    buffers: DoubleBuffer<'a>,
    /// The offset the writer started at.
    start: u64,
    /// Running digests of everything pushed in order, if the chain from byte 0 is unbroken.
    /// Fed as bytes arrive, while they are still in the cache, so that the write of a buffer
    /// is the only work between a full buffer and the next (one hand-off, not two).
    pub(super) hasher: Option<RunningDigest>,
    _running: AppendRunning<'a>,
}

impl std::fmt::Debug for Append<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append")
            .field("id", &self.info.id)
            .field("committed", &self.info.offset)
            .field("received", &self.received())
            .finish_non_exhaustive()
    }
}

impl Append<'_> {
    /// The last committed record.
    pub fn info(&self) -> &UploadInfo {
        &self.info
    }

    /// Offset including bytes received but not yet committed.
    pub fn received(&self) -> u64 {
        self.writer.position() + self.buffers.buffered()
    }

    /// Bytes received since the last commit.
    pub fn uncommitted(&self) -> u64 {
        self.received() - self.info.offset
    }

    /// Position up to which writes have completed successfully.
    fn written(&self) -> u64 {
        self.start + self.buffers.written()
    }

    /// Also keeps the cryptographic digest a client asked for (`want`, from the
    /// `Want-Repr-Digest` of the request that starts the upload) running, so that it is ready at
    /// completion instead of computed by reading a large upload back. Only from byte 0, and
    /// not when the client accepts the CRC-64/NVME that always runs.
    pub fn keep_running(&mut self, want: WantDigest) {
        if self.received() != 0 {
            return;
        }
        if let (Some(h), Some(algorithm)) = (&mut self.hasher, kept_running(want)) {
            h.also_run(algorithm);
        }
    }

    /// Waits until this append's buffers, and `extra` bytes the caller will hold while it
    /// feeds them (say, the connection's read buffer), fit in the engine's budget of buffer
    /// memory, and reserves them until the append is dropped. A caller that reserves before
    /// reading its body leaves the body in the socket while the server is at its budget.
    /// Without it, the first [`push`](Self::push) reserves the buffers alone.
    pub async fn reserve(&mut self, extra: usize) {
        self.buffers.reserve(extra).await;
    }

    /// Accepts bytes. Refuses (without taking any) bytes that would go past the length
    /// (`ExceedsLength`), or, while the length is unknown, past the size limit (`TooLarge`).
    pub async fn push(&mut self, data: &[u8]) -> Result<()> {
        self.buffers.check_failed()?;
        let reach = self.received() + data.len() as u64;
        match self.info.length {
            Some(length) if reach > length => return Err(StoreError::ExceedsLength { length }),
            // Length still unknown: the size limit is the only bound.
            None => policy::within_max_size(reach, self.uploads.max_size)?,
            Some(_) => {}
        }
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        let pushed = self.buffers.push(data, &mut *self.writer).await;
        self.drop_hash_if_failed();
        pushed
    }

    /// Hands what is buffered to the writer and waits for every write.
    async fn flush(&mut self) -> Result<()> {
        let flushed = self.buffers.flush(&mut *self.writer).await;
        self.drop_hash_if_failed();
        flushed
    }

    /// After a failed write the running hash may hold bytes that were never written.
    fn drop_hash_if_failed(&mut self) {
        if self.buffers.has_failed() {
            self.hasher = None;
        }
    }

    /// Makes every byte received so far durable (per the sync policy) and commits the new
    /// offset. If a write failed, commits what was written before the failure and returns the
    /// error; [`info`](Self::info) then shows the committed state.
    pub async fn commit(&mut self) -> Result<UploadInfo> {
        let flushed = self.flush().await;
        let target = self.written();
        if target == self.info.offset {
            return flushed.map(|()| self.info.clone());
        }
        let at = self
            .writer
            .checkpoint(self.uploads.sync.syncs_data())
            .await?;
        let previous = self.info.offset;
        let id = self.info.id;
        let expiry = self.uploads.expiry;
        // The last byte: the digests go into the same commit as the offset.
        let digests = match &self.hasher {
            Some(h) if self.info.length == Some(target) => Some(h.clone().finish()),
            _ => None,
        };
        let finished = digests.is_some();
        // Unfinished: the CRC so far is committed with the offset (finished: it is in the
        // digests).
        let running_crc = match &self.hasher {
            Some(h) if !finished => h.crc(),
            _ => None,
        };
        let committed = self
            .uploads
            .meta
            .update_fenced(
                id,
                self.epoch,
                Box::new(move |info| {
                    if info.offset != previous {
                        return Err(StoreError::Conflict(id));
                    }
                    let now = now_ms();
                    info.offset = target;
                    info.locator = at.clone();
                    // Every byte in: recorded first, then the store finishes (recovered by
                    // `Uploads::get` if this process dies in between).
                    info.finish_pending = info.is_complete();
                    info.updated_ms = now;
                    info.running_crc = running_crc;
                    if let Some(running) = &digests {
                        record_running(info, running);
                    }
                    // Activity keeps an unfinished upload alive; finishing applies the
                    // finished-upload policy.
                    info.expires_ms = expiry.expires_at(info.is_complete(), now);
                    Ok(())
                }),
            )
            .await?;
        self.info = committed;
        self.uploads.keep_finals_alive(&self.info).await;
        if let Some(h) = self.hasher.as_ref().filter(|_| !finished) {
            // Snapshot: bytes hashed after this point are not committed yet.
            self.uploads.save_running(id, target, h.clone());
        }
        if self.info.is_complete() {
            self.info = self.uploads.finish_recorded(self.info.clone()).await?;
            self.uploads.completed(&self.info).await;
            // With the digests completion added (a CRC combined or read back, those of a
            // small upload read back after its chain broke).
            if let Some(fresh) = self.uploads.meta.get(id).await? {
                self.info = fresh;
            }
        }
        flushed.map(|()| self.info.clone())
    }
}
