//! The upload engine: the one place that orders durability.
//!
//! Every protocol (tus, IETF, chunk sessions) goes through [`Uploads`]. An append streams bytes
//! through two fixed, reused buffers (one filling while the other is written), and
//! [`Append::commit`] makes them count, in this order: wait for the writes, `fdatasync` the data
//! (under [`SyncPolicy::Always`]), commit the new offset to the metadata store (fsynced), and
//! only then return the offset the caller may acknowledge.

use crate::data::{ByteStream, DataStore, DataWriter, PendingWrite, WriteMode};
use crate::error::{Result, StoreError};
use crate::local::LocalDataStore;
use crate::lock::{Lease, LocalLocker, Locker};
use crate::meta::MetaStore;
use crate::model::{Protocol, UploadInfo, UploadKind, now_ms};
use crate::redb_meta::RedbMetaStore;
use ferry_proto::{Metadata, UploadId};
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Size of each of an append's two buffers.
pub const BUFFER_SIZE: usize = 512 * 1024;

/// At most this many idle buffers are kept for reuse.
const POOL_LIMIT: usize = 64;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn take_buffer(capacity: usize) -> Vec<u8> {
    if capacity == BUFFER_SIZE
        && let Some(b) = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop()
    {
        return b;
    }
    Vec::with_capacity(capacity)
}

fn give_buffer(mut b: Vec<u8>) {
    if b.capacity() == BUFFER_SIZE {
        b.clear();
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_LIMIT {
            pool.push(b);
        }
    }
}

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
    data: Arc<dyn DataStore>,
    meta: Arc<dyn MetaStore>,
    locker: Arc<dyn Locker>,
    sync: SyncPolicy,
    _dir_lock: Option<File>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

/// How long a new request waits for the current holder of an upload to let go.
pub const TAKEOVER_PATIENCE: Duration = Duration::from_secs(10);

impl Uploads {
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
            _dir_lock: None,
        }
    }

    /// The embedded default: files under `dir/uploads`, metadata in `dir/ferry.redb`, leases in
    /// process. Refuses clearly if another process serves the same directory.
    pub fn open_local(dir: &Path, sync: SyncPolicy) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock_path = dir.join("ferry.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Metadata(format!(
                    "another ferry process is already using {} (lock held on {})",
                    dir.display(),
                    lock_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let data = LocalDataStore::open(dir)?;
        let meta = RedbMetaStore::open(&dir.join("ferry.redb"))?;
        if sync == SyncPolicy::Always {
            crate::local::sync_dir(dir)?;
        }
        let mut me = Self::new(
            Arc::new(data),
            Arc::new(meta),
            Arc::new(LocalLocker::new(TAKEOVER_PATIENCE)),
            sync,
        );
        me._dir_lock = Some(lock);
        Ok(me)
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
    /// the record, so a record never points at missing data.
    pub async fn create(&self, new: NewUpload) -> Result<UploadInfo> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        let id = UploadId::from_bytes(bytes);
        let now = now_ms();
        let info = UploadInfo {
            id,
            length: new.length,
            offset: 0,
            metadata: new.metadata,
            protocol: new.protocol,
            kind: new.kind,
            received: None,
            created_ms: now,
            updated_ms: now,
            expires_ms: new.expires_ms,
            sha256: None,
        };
        if !matches!(info.kind, UploadKind::Final { .. }) {
            self.data
                .create(id, self.sync == SyncPolicy::Always)
                .await?;
        }
        self.meta.insert(&info).await?;
        Ok(info)
    }

    /// The committed record. Never waits for a writer.
    pub async fn get(&self, id: UploadId) -> Result<Option<UploadInfo>> {
        self.meta.get(id).await
    }

    /// Takes the upload's lease (asking a current writer to commit and let go).
    pub async fn lease(&self, id: UploadId) -> Result<Lease> {
        self.locker.acquire(id).await
    }

    /// Starts appending at the committed offset. `expected_bytes` sizes the buffers.
    pub async fn append(&self, lease: &Lease, expected_bytes: Option<u64>) -> Result<Append<'_>> {
        let id = lease.id();
        let info = self.meta.get(id).await?.ok_or(StoreError::NotFound(id))?;
        let writer = self
            .data
            .open_writer(
                id,
                WriteMode::Append {
                    offset: info.offset,
                },
            )
            .await?;
        let capacity = expected_bytes
            .map_or(BUFFER_SIZE, |n| n.min(BUFFER_SIZE as u64) as usize)
            .max(1);
        Ok(Append {
            uploads: self,
            written: info.offset,
            info,
            writer,
            buf: take_buffer(capacity),
            spare: None,
            inflight: None,
            failed: None,
        })
    }

    /// Sets the length of an upload whose length was deferred (once).
    pub async fn declare_length(&self, lease: &Lease, length: u64) -> Result<UploadInfo> {
        self.meta
            .update(
                lease.id(),
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
                    info.length = Some(length);
                    info.updated_ms = now_ms();
                    Ok(())
                }),
            )
            .await
    }

    /// Deletes an upload: takes it over from any writer, removes the record, then the data.
    pub async fn delete(&self, id: UploadId) -> Result<()> {
        let _lease = self.lease(id).await?;
        let info = self.meta.get(id).await?.ok_or(StoreError::NotFound(id))?;
        self.meta.remove(id).await?;
        if !matches!(info.kind, UploadKind::Final { .. }) {
            self.data.delete(id).await?;
        }
        Ok(())
    }

    /// Streams committed bytes `[start, end)` of an upload.
    pub async fn read(&self, info: &UploadInfo, start: u64, end: u64) -> Result<ByteStream> {
        if end > info.offset || start > end {
            return Err(StoreError::Inconsistent(format!(
                "read {start}..{end} past committed offset {}",
                info.offset
            )));
        }
        self.data.read(info.id, start, end).await
    }
}

/// An append in progress, under a lease. Bytes pushed here count only after
/// [`commit`](Append::commit); dropping an `Append` without committing discards them (they sit
/// past the committed offset and are cut away by the next writer).
pub struct Append<'a> {
    uploads: &'a Uploads,
    info: UploadInfo,
    writer: Box<dyn DataWriter>,
    /// The buffer being filled.
    buf: Vec<u8>,
    /// The other buffer, back from its write.
    spare: Option<Vec<u8>>,
    inflight: Option<PendingWrite>,
    /// Position up to which writes have completed successfully.
    written: u64,
    failed: Option<String>,
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
        self.writer.position() + self.buf.len() as u64
    }

    /// Bytes received since the last commit.
    pub fn uncommitted(&self) -> u64 {
        self.received() - self.info.offset
    }

    /// Accepts bytes. Refuses (without taking any) bytes that would go past the length.
    pub async fn push(&mut self, mut data: &[u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(StoreError::Io(std::io::Error::other(e.clone())));
        }
        if let Some(length) = self.info.length
            && self.received() + data.len() as u64 > length
        {
            return Err(StoreError::ExceedsLength { length });
        }
        while !data.is_empty() {
            let room = self.buf.capacity() - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == self.buf.capacity() {
                self.submit().await?;
            }
        }
        Ok(())
    }

    /// Waits for the write in flight, if any.
    async fn settle(&mut self) -> Result<()> {
        if let Some(w) = self.inflight.take() {
            match w.await {
                Ok(buf) => {
                    self.written += buf.len() as u64;
                    self.spare = Some(buf);
                }
                Err(e) => {
                    self.failed = Some(e.to_string());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Hands the filled buffer to the writer and continues in the other one.
    async fn submit(&mut self) -> Result<()> {
        self.settle().await?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let capacity = self.buf.capacity();
        let next = match self.spare.take() {
            Some(mut b) => {
                b.clear();
                b
            }
            None => take_buffer(capacity),
        };
        let full = std::mem::replace(&mut self.buf, next);
        self.inflight = Some(self.writer.write(full));
        Ok(())
    }

    /// Makes every byte received so far durable (per the sync policy) and commits the new
    /// offset. If a write failed, commits what was written before the failure and returns the
    /// error; [`info`](Self::info) then shows the committed state.
    pub async fn commit(&mut self) -> Result<UploadInfo> {
        let flushed = async {
            self.submit().await?;
            self.settle().await
        }
        .await;
        let target = self.written;
        if target == self.info.offset {
            return flushed.map(|()| self.info.clone());
        }
        if self.uploads.sync == SyncPolicy::Always {
            self.writer.sync().await?;
        }
        let previous = self.info.offset;
        let id = self.info.id;
        let committed = self
            .uploads
            .meta
            .update(
                id,
                Box::new(move |info| {
                    if info.offset != previous {
                        return Err(StoreError::Conflict(id));
                    }
                    info.offset = target;
                    info.updated_ms = now_ms();
                    Ok(())
                }),
            )
            .await?;
        self.info = committed;
        flushed.map(|()| self.info.clone())
    }
}

impl Drop for Append<'_> {
    fn drop(&mut self) {
        give_buffer(std::mem::take(&mut self.buf));
        if let Some(b) = self.spare.take() {
            give_buffer(b);
        }
    }
}
