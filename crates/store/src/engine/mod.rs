//! The upload engine: the one place that orders durability.
//!
//! Every protocol (tus, IETF, chunk sessions) goes through [`Uploads`]. An append streams bytes
//! through two fixed, reused buffers (one filling while the other is written), and
//! [`Append::commit`] makes them count, in this order: wait for the writes, `fdatasync` the data
//! (under [`SyncPolicy::Always`]), commit the new offset to the metadata store (fsynced), and
//! only then return the offset the caller may acknowledge.
//!
//! One module per job:
//! - [`policy`]: the decisions (sync, expiry, buffer sizes, which digests), as pure functions;
//! - [`buffers`]: the pool of write buffers; [`double_buffer`]: the filling/writing pair;
//! - [`append`]: in-order appends and their commit;
//! - [`claims`]: which bytes of a chunk session each request may write;
//! - [`digests`]: running digests and read-back;
//! - [`concat`](mod@concat): final uploads made of parts;
//! - [`sweep`]: deletion and the expiry sweep;
//! - [`open`]: opening the local store under its directory lock.

mod admission;
mod append;
pub(crate) mod buffers;
pub(crate) mod claims;
mod concat;
mod digests;
pub(crate) mod double_buffer;
mod open;
pub(crate) mod policy;
#[cfg(test)]
mod race_tests;
mod sweep;
#[cfg(test)]
mod tests;

pub use append::Append;
pub use buffers::{BUDGET_BYTES, BUFFER_SIZE};
pub use concat::Pieces;
pub use open::TAKEOVER_PATIENCE;
pub use policy::{ConcatLimits, ExpiryPolicy, INLINE_DIGEST_MAX, SPACE_MARGIN, SyncPolicy};
pub(crate) use sweep::{forget, gone_objects, locators};

use crate::data::{ByteStream, DataStore, Locator};
use crate::error::{Result, StoreError};
use crate::lock::{Lease, Locker};
use crate::meta::MetaStore;
use crate::model::{Protocol, RangeSet, UploadInfo, UploadKind, now_ms};
use buffers::BufferPool;
use digests::record_running;
use ferry_proto::checksum::{ChecksumAlgorithm, digest};
use ferry_proto::digest::{Digests, KEPT};
use ferry_proto::{Metadata, UploadId};
use std::collections::HashSet;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What a new upload starts with.
#[derive(Debug, Clone, Default)]
pub struct NewUpload {
    /// Total length, or `None` when deferred.
    pub length: Option<u64>,
    /// Client metadata.
    pub metadata: Metadata,
    /// Creating protocol.
    pub protocol: Protocol,
    /// Concatenation role.
    pub kind: UploadKind,
    /// Expiry time in ms since the epoch, if any.
    pub expires_ms: Option<u64>,
}

/// Data store + metadata store + locker, bound by a sync policy.
pub struct Uploads {
    pub(crate) data: Arc<dyn DataStore>,
    pub(crate) meta: Arc<dyn MetaStore>,
    locker: Arc<dyn Locker>,
    pub(crate) sync: SyncPolicy,
    pub(crate) expiry: ExpiryPolicy,
    pub(crate) concat: ConcatLimits,
    /// Largest size an upload may reach, if limited (`--max-size`).
    pub(crate) max_size: Option<u64>,
    /// Most unfinished uploads kept, if limited (`--max-unfinished-uploads`).
    pub(crate) max_unfinished: Option<u64>,
    unfinished: admission::Unfinished,
    /// Write buffers shared by this engine's appends and chunk writes.
    pub(crate) buffer_pool: BufferPool,
    /// Cryptographic digest states of uploads being appended in order, at their committed
    /// offset, bounded: the whole-upload digests are then ready the moment the last byte
    /// commits, with no second read. The CRC-64/NVME needs none: it is in the record.
    running: Mutex<digests::RunningCache>,
    /// Uploads whose digest is being computed by reading back (so it runs once).
    digesting: Arc<Mutex<HashSet<UploadId>>>,
    /// Read-backs clients asked for, on a bounded pool (so their CPU is bounded too).
    digest_jobs: Arc<digests::DigestJobs>,
    /// Chunk requests in flight per session and the bytes each may write. Chunk writes take no
    /// lease (several run at once): they claim bytes here before writing them, and the sweeper
    /// asks here before deleting an expired session.
    pub(crate) chunk_claims: Arc<claims::Claims>,
    _dir_lock: Option<File>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

impl Uploads {
    /// What the data store can do (the server offers no more).
    pub fn capabilities(&self) -> crate::data::DataCapabilities {
        self.data.capabilities()
    }

    /// Binds the three stores.
    pub fn new(
        data: Arc<dyn DataStore>,
        meta: Arc<dyn MetaStore>,
        locker: Arc<dyn Locker>,
        sync: SyncPolicy,
    ) -> Self {
        Self {
            data,
            meta,
            locker,
            sync,
            expiry: ExpiryPolicy::default(),
            concat: ConcatLimits::default(),
            max_size: None,
            max_unfinished: None,
            unfinished: Default::default(),
            buffer_pool: BufferPool::default(),
            running: Mutex::default(),
            digesting: Arc::default(),
            digest_jobs: Arc::default(),
            chunk_claims: Arc::default(),
            _dir_lock: None,
        }
    }

    /// Sets when uploads expire.
    pub fn with_expiry(mut self, expiry: ExpiryPolicy) -> Self {
        self.expiry = expiry;
        self
    }

    /// Sets the bounds on concatenation.
    pub fn with_concat_limits(mut self, limits: ConcatLimits) -> Self {
        self.concat = limits;
        self
    }

    /// Sets the largest size an upload may reach, enforced wherever one grows or learns its
    /// length.
    pub fn with_max_size(mut self, max_size: Option<u64>) -> Self {
        self.max_size = max_size;
        self
    }

    /// Sets the bytes of write buffers in use at once across every writer (see
    /// [`BUDGET_BYTES`]): past it, a writer waits before it takes a byte of its body.
    pub fn with_buffer_budget(mut self, bytes: usize) -> Self {
        self.buffer_pool = BufferPool::with_budget(bytes);
        self
    }

    /// Sets the most unfinished uploads kept; creations past it are refused.
    pub fn with_max_unfinished(mut self, max: Option<u64>) -> Self {
        self.max_unfinished = max;
        self
    }

    /// The size limit in force.
    pub fn max_size(&self) -> Option<u64> {
        self.max_size
    }

    /// The expiry policy in force.
    pub fn expiry(&self) -> ExpiryPolicy {
        self.expiry
    }

    /// The sync policy in force.
    pub fn sync_policy(&self) -> SyncPolicy {
        self.sync
    }

    /// The metadata store (for sweepers and tools).
    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.meta
    }

    /// Creates an upload with a fresh unguessable id (128 random bits): data object first, then
    /// the record, so a record never points at missing data. For a final upload use
    /// [`create_final`](Self::create_final).
    pub async fn create(&self, new: NewUpload) -> Result<UploadInfo> {
        if let Some(length) = new.length {
            self.check_room(length, 0)?;
        }
        // An empty upload is finished at once: it never counts as unfinished.
        let _admitted = match new.length {
            Some(0) => None,
            _ => Some(self.admit_creation().await?),
        };
        let id = random_id()?;
        let now = now_ms();
        let complete = new.length == Some(0);
        let mut info = UploadInfo {
            id,
            length: new.length,
            offset: 0,
            metadata: new.metadata,
            protocol: new.protocol,
            kind: new.kind,
            // Out-of-order writers record which bytes arrived.
            received: (new.protocol == Protocol::Chunks).then(RangeSet::new),
            created_ms: now,
            updated_ms: now,
            expires_ms: self.expiry.expires_at(complete, now),
            // Empty and complete: every digest is known without reading.
            digests: if complete {
                KEPT.into_iter().map(|a| (a, digest(a, b""))).collect()
            } else {
                Digests::new()
            },
            finals: Vec::new(),
            deleted: false,
            running_crc: None,
            locator: Locator::none(),
            finish_pending: false,
        };
        info.locator = self
            .data
            .create(id, self.sync.syncs_data(), info.length)
            .await?;
        let placed = match complete {
            // Empty: finished before anyone can see it.
            true => self.data.finish(id, &info.locator, 0).await,
            false => Ok(info.locator.clone()),
        };
        let inserted = match placed {
            Ok(at) => {
                info.locator = at;
                self.meta.insert(&info).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = inserted {
            // Nobody can address the object without its record.
            if let Err(d) = self.data.delete(id, &info.locator).await {
                tracing::warn!(upload = %id.tag(), error = %d, "deleting data of a failed creation failed");
            }
            return Err(e);
        }
        Ok(info)
    }

    /// The committed record. Never waits for a writer. An upload whose every byte is recorded
    /// but whose finish step was cut short (a crash between the two) is finished first.
    pub async fn get(&self, id: UploadId) -> Result<Option<UploadInfo>> {
        match self.meta.get(id).await?.filter(|i| !i.deleted) {
            Some(info) if info.finish_pending => self.finish_late(info).await.map(Some),
            other => Ok(other),
        }
    }

    /// Runs the data store's finish step on an upload whose every byte is recorded
    /// (`finish_pending`), records its result, and returns the record.
    pub(crate) async fn finish_recorded(&self, info: UploadInfo) -> Result<UploadInfo> {
        Ok(finish_recorded(&self.data, &self.meta, info).await?.0)
    }

    /// Finishes an upload whose finish step was cut short, then runs the completion work that
    /// waited for it (digests, finals that use it as a part), once: by whoever recorded the
    /// finish.
    async fn finish_late(&self, info: UploadInfo) -> Result<UploadInfo> {
        let id = info.id;
        let (info, finished_here) = finish_recorded(&self.data, &self.meta, info).await?;
        if !finished_here {
            return Ok(info);
        }
        Box::pin(self.completed(&info)).await;
        Ok(self.meta.get(id).await?.unwrap_or(info))
    }

    /// Takes the upload's lease (asking a current writer to commit and let go).
    pub async fn lease(&self, id: UploadId) -> Result<Lease> {
        self.locker.acquire(id).await
    }

    /// Whether an upload of `length` bytes, `offset` of them already stored, is allowed and
    /// fits: the same checks for a length declared at creation and one declared later.
    pub(crate) fn check_room(&self, length: u64, offset: u64) -> Result<()> {
        policy::within_max_size(length, self.max_size)?;
        let missing = length.saturating_sub(offset);
        if let Some(available) = self.data.free_space()
            && !policy::room_for(missing, available)
        {
            return Err(StoreError::NoSpaceFor {
                length: missing,
                available,
            });
        }
        Ok(())
    }

    /// Sets the length of an upload whose length was deferred (once).
    pub async fn declare_length(&self, lease: &Lease, length: u64) -> Result<UploadInfo> {
        let id = lease.id();
        let mut completes = false;
        if let Some(info) = self.get(id).await?.filter(|i| i.length.is_none()) {
            self.check_room(length, info.offset)?;
            completes = info.offset == length;
        }
        // Declared at the offset reached: complete now, with no byte to commit. The running
        // digests (if the chain is whole) are final and go into the same commit.
        let digests = match completes {
            true => self
                .take_running(id)
                .filter(|(pos, _)| *pos == length)
                .map(|(_, h)| h.finish()),
            false => None,
        };
        let expiry = self.expiry;
        let data = self.data.clone();
        let fence = lease.fence();
        let info = self
            .meta
            .update_fenced(
                id,
                lease.epoch(),
                Box::new(move |info| {
                    if let Some(l) = info.length {
                        if l != length {
                            return Err(StoreError::Inconsistent(format!("length is already {l}")));
                        }
                    } else if length < info.offset {
                        return Err(StoreError::Inconsistent(format!(
                            "length {length} is below the offset {}",
                            info.offset
                        )));
                    }
                    let declared_now = info.length.is_none();
                    let now = now_ms();
                    info.length = Some(length);
                    info.updated_ms = now;
                    if declared_now && info.is_complete() {
                        if let Some(running) = &digests {
                            record_running(info, running);
                        } else if let Some(crc) = info.running_crc {
                            info.digests.set_crc64nvme(crc);
                        }
                        info.running_crc = None;
                        info.expires_ms = expiry.expires_at(true, now);
                        // Every byte is in: the store finishes next, past what a superseded
                        // holder may still be writing.
                        info.locator = data.past_reserved(&info.locator, &fence)?;
                        info.finish_pending = true;
                    }
                    Ok(())
                }),
            )
            .await?;
        if !info.finish_pending {
            return Ok(info);
        }
        let info = self.finish_recorded(info).await?;
        self.completed(&info).await;
        Ok(self.meta.get(id).await?.unwrap_or(info))
    }

    /// Work that follows an upload's completion: its digests (unless the commit already
    /// stored them from the running hash, or a final's parts have theirs) and completing finals
    /// that were waiting for it.
    pub(crate) async fn completed(&self, info: &UploadInfo) {
        self.take_running(info.id);
        let mut info = std::borrow::Cow::Borrowed(info);
        if !info.digests.has(ChecksumAlgorithm::Crc64Nvme)
            && let Some(crc) = self.combined_crc(&info).await
        {
            match self
                .meta
                .update(
                    info.id,
                    Box::new(move |i| {
                        i.digests.set_crc64nvme(crc);
                        Ok(())
                    }),
                )
                .await
            {
                Ok(i) => info = std::borrow::Cow::Owned(i),
                Err(e) => {
                    tracing::warn!(upload = %info.id.tag(), error = %e, "storing digest failed")
                }
            }
        }
        if policy::needs_read_back(&info) {
            self.digest_by_reading(&info, Default::default()).await;
        }
        for f in &info.finals {
            if let Err(e) = self.refresh_final(*f).await {
                tracing::warn!(upload = %f.tag(), error = %e, "completing final failed");
            }
        }
    }

    /// Streams committed bytes `[start, end)` of an upload; a final upload is read across its
    /// parts.
    pub async fn read(&self, info: &UploadInfo, start: u64, end: u64) -> Result<ByteStream> {
        concat::read_upload(&self.data, &self.meta, info, start, end).await
    }
}

/// Runs the data store's finish step on an upload whose every byte is recorded
/// (`finish_pending`), records its result, and returns the record (as it is, if nothing is
/// pending) and whether this call recorded the finish. Safe to run twice at once: the step is
/// re-runnable, and only the first record of its result counts.
pub(crate) async fn finish_recorded(
    data: &Arc<dyn DataStore>,
    meta: &Arc<dyn MetaStore>,
    info: UploadInfo,
) -> Result<(UploadInfo, bool)> {
    if !info.finish_pending {
        return Ok((info, false));
    }
    let (id, before) = (info.id, info.locator.clone());
    let length = info.length.unwrap_or(info.offset);
    let at = data.finish(id, &before, length).await?;
    let recorded = Arc::new(AtomicBool::new(false));
    let flag = recorded.clone();
    let info = meta
        .update(
            id,
            Box::new(move |i| {
                // A store may run this again: only the last run's outcome counts.
                let pending = i.finish_pending && i.locator == before;
                flag.store(pending, Ordering::SeqCst);
                if pending {
                    i.locator = at.clone();
                    i.finish_pending = false;
                }
                Ok(())
            }),
        )
        .await?;
    Ok((info, recorded.load(Ordering::SeqCst)))
}

/// A fresh unguessable upload id (128 random bits).
fn random_id() -> Result<UploadId> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
    Ok(UploadId::from_bytes(bytes))
}
