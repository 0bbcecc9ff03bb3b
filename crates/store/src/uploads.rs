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
use crate::model::{Protocol, RangeSet, UploadInfo, UploadKind, now_ms};
use crate::redb_meta::RedbMetaStore;
use ferry_proto::checksum::{ChecksumAlgorithm, Hasher, crc64nvme_combine, crc64nvme_of, digest};
use ferry_proto::digest::WantDigest;
use ferry_proto::{Metadata, UploadId};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Size of each of an append's two buffers.
pub const BUFFER_SIZE: usize = 512 * 1024;

/// At most this many idle buffers are kept for reuse.
const POOL_LIMIT: usize = 64;

/// Appends beyond this many at once get [`SMALL_BUFFER_SIZE`] buffers: memory stays bounded
/// (about 64 MiB for 1,000 concurrent uploads) instead of growing by 1 MiB per upload, and the
/// many-uploads case is bound by request handling, not by write size.
const FULL_BUFFERS_AT_ONCE: usize = 16;
/// Buffer size for appends past [`FULL_BUFFERS_AT_ONCE`].
const SMALL_BUFFER_SIZE: usize = 32 * 1024;

/// Appends alive right now (see [`FULL_BUFFERS_AT_ONCE`]).
static ACTIVE_APPENDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

pub(crate) fn take_buffer(capacity: usize) -> Vec<u8> {
    if capacity == BUFFER_SIZE
        && let Some(b) = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop()
    {
        return b;
    }
    Vec::with_capacity(capacity)
}

pub(crate) fn give_buffer(mut b: Vec<u8>) {
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
    /// Expiry time for an upload in `info`'s state, changed at `now`.
    pub(crate) fn expires_at(&self, complete: bool, now: u64) -> Option<u64> {
        let after = if complete {
            self.finished
        } else {
            self.unfinished
        };
        after.map(|d| now.saturating_add(d.as_millis() as u64))
    }
}

/// Uploads at most this large get every digest (CRC-64/NVME, BLAKE3 and SHA-256) before the
/// completing request is answered. Larger ones get CRC-64/NVME (kept running, so it is ready at
/// completion, and at a tenth of BLAKE3's CPU it does not slow the upload) and a cryptographic
/// digest only when a client asks for one ([`Uploads::ensure_digests`]): hashing 200 GiB with
/// SHA-256 costs minutes of CPU nobody may need.
pub const INLINE_DIGEST_MAX: u64 = 8 * 1024 * 1024;

/// The whole-upload digests kept up to date while bytes are appended in order.
#[derive(Clone)]
struct RunningDigest {
    crc64nvme: Hasher,
    /// BLAKE3: for uploads small enough to get every digest inline, or asked for by the
    /// request that started the upload ([`Append::keep_running`]).
    blake3: Option<Hasher>,
    /// SHA-256: likewise.
    sha256: Option<Hasher>,
}

/// Digests of a whole upload: CRC-64/NVME, then BLAKE3 and SHA-256 if they were kept running.
type Finished = (u64, Option<[u8; 32]>, Option<[u8; 32]>);

impl RunningDigest {
    fn new(length: Option<u64>) -> Self {
        let small = length.is_some_and(|l| l <= INLINE_DIGEST_MAX);
        Self {
            crc64nvme: Hasher::new(ChecksumAlgorithm::Crc64Nvme),
            blake3: small.then(|| Hasher::new(ChecksumAlgorithm::Blake3)),
            sha256: small.then(|| Hasher::new(ChecksumAlgorithm::Sha256)),
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.crc64nvme.update(data);
        for h in [&mut self.blake3, &mut self.sha256].into_iter().flatten() {
            h.update(data);
        }
    }

    fn finish(self) -> Finished {
        (
            to_u64(self.crc64nvme.finalize()),
            self.blake3.map(|h| to32(h.finalize())),
            self.sha256.map(|h| to32(h.finalize())),
        )
    }
}

fn to_u64(v: Vec<u8>) -> u64 {
    u64::from_be_bytes(v.try_into().expect("8-byte digest"))
}

fn to32(v: Vec<u8>) -> [u8; 32] {
    v.try_into().expect("32-byte digest")
}

/// Data store + metadata store + locker, bound by a sync policy.
pub struct Uploads {
    pub(crate) data: Arc<dyn DataStore>,
    pub(crate) meta: Arc<dyn MetaStore>,
    locker: Arc<dyn Locker>,
    pub(crate) sync: SyncPolicy,
    pub(crate) expiry: ExpiryPolicy,
    /// Digest state of uploads being appended in order, keyed by id, at their committed
    /// offset: the whole-upload digest is then ready the moment the last byte commits, with no
    /// second read. Lost on restart (the digest is then computed by reading the data back).
    running: Mutex<HashMap<UploadId, (u64, RunningDigest)>>,
    /// Uploads whose digest is being computed by reading back (so it runs once).
    digesting: Arc<Mutex<std::collections::HashSet<UploadId>>>,
    /// Chunk requests in flight per session. Chunk writes take no lease (several run at once),
    /// so the sweeper asks here instead before deleting an expired session.
    pub(crate) chunk_writers: Mutex<HashMap<UploadId, usize>>,
    _dir_lock: Option<File>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

/// Space kept free beyond an upload's declared length when checking at creation (metadata,
/// file-system overhead, other uploads' last buffers).
pub const SPACE_MARGIN: u64 = 1024 * 1024;

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
            expiry: ExpiryPolicy::default(),
            running: Mutex::new(HashMap::new()),
            digesting: Arc::default(),
            chunk_writers: Mutex::new(HashMap::new()),
            _dir_lock: None,
        }
    }

    /// Sets when uploads expire.
    pub fn with_expiry(mut self, expiry: ExpiryPolicy) -> Self {
        self.expiry = expiry;
        self
    }

    /// The expiry policy in force.
    pub fn expiry(&self) -> ExpiryPolicy {
        self.expiry
    }

    /// The embedded default: files under `dir/uploads`, metadata in `dir/ferry.redb`, leases in
    /// process. Refuses clearly if another process serves the same directory.
    pub fn open_local(dir: &Path, sync: SyncPolicy) -> Result<Self> {
        Self::open_local_with(dir, sync, |d| Arc::new(d))
    }

    /// Opens the local store as `ferry serve` does. Built with the `crash-sim` feature and run
    /// with `FERRY_CRASH_SIM` set, the data store runs under the power-loss simulation and
    /// SIGUSR2 triggers the simulated crash (needs a tokio runtime); otherwise this is
    /// [`open_local`](Self::open_local).
    pub fn open_served(dir: &Path, sync: SyncPolicy) -> Result<Self> {
        #[cfg(feature = "crash-sim")]
        if std::env::var_os(crate::crash_sim::ENV).is_some_and(|v| !v.is_empty()) {
            let (me, sim) = Self::open_local_crash_sim(dir, sync)?;
            crate::crash_sim::arm(sim)?;
            return Ok(me);
        }
        Self::open_local(dir, sync)
    }

    /// [`open_local`](Self::open_local) with the data store wrapped in the power-loss
    /// simulation; the returned handle triggers the crash.
    #[cfg(feature = "crash-sim")]
    pub fn open_local_crash_sim(
        dir: &Path,
        sync: SyncPolicy,
    ) -> Result<(Self, Arc<crate::crash_sim::CrashSim>)> {
        let mut sim = None;
        let me = Self::open_local_with(dir, sync, |d| {
            let (store, handle) = crate::crash_sim::CrashSimDataStore::new(d);
            sim = Some(handle);
            Arc::new(store)
        })?;
        let sim = sim.ok_or_else(|| StoreError::Metadata("crash-sim not set up".into()))?;
        Ok((me, sim))
    }

    fn open_local_with(
        dir: &Path,
        sync: SyncPolicy,
        wrap: impl FnOnce(LocalDataStore) -> Arc<dyn DataStore>,
    ) -> Result<Self> {
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
            wrap(data),
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
    /// the record, so a record never points at missing data. For a final upload use
    /// [`create_final`](Self::create_final).
    pub async fn create(&self, new: NewUpload) -> Result<UploadInfo> {
        if let (Some(length), Some(available)) = (new.length, self.data.free_space())
            && length.saturating_add(SPACE_MARGIN) > available
        {
            return Err(StoreError::NoSpaceFor { length, available });
        }
        let id = random_id()?;
        let now = now_ms();
        let complete = new.length == Some(0);
        let info = UploadInfo {
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
            sha256: complete.then(|| to32(digest(ChecksumAlgorithm::Sha256, b""))),
            blake3: complete.then(|| to32(digest(ChecksumAlgorithm::Blake3, b""))),
            crc64nvme: complete.then(|| crc64nvme_of(b"")),
            finals: Vec::new(),
            deleted: false,
        };
        self.data
            .create(id, self.sync == SyncPolicy::Always)
            .await?;
        self.meta.insert(&info).await?;
        Ok(info)
    }

    /// Creates a final upload made of `parts` (each a partial upload, in order). No bytes are
    /// copied: the final only lists its parts. Parts may still be unfinished; the final
    /// completes when the last of them does. Each part first records that the final uses it
    /// (so deleting a part can never destroy the final's bytes), then the final is inserted.
    pub async fn create_final(
        &self,
        parts: Vec<UploadId>,
        metadata: Metadata,
        max_size: Option<u64>,
    ) -> Result<UploadInfo> {
        let mut infos = Vec::with_capacity(parts.len());
        for p in &parts {
            let info = self.get(*p).await?.ok_or(StoreError::NotFound(*p))?;
            if info.kind != UploadKind::Partial {
                return Err(StoreError::NotPartial(*p));
            }
            infos.push(info);
        }
        let id = random_id()?;
        let now = now_ms();
        let length = total_length(&infos);
        if let (Some(max), Some(len)) = (max_size, length)
            && len > max
        {
            return Err(StoreError::TooLarge { length: len, max });
        }
        for p in &parts {
            self.meta
                .update(
                    *p,
                    Box::new(move |info| {
                        if info.deleted {
                            return Err(StoreError::NotFound(info.id));
                        }
                        info.finals.push(id);
                        Ok(())
                    }),
                )
                .await?;
        }
        let complete = infos.iter().all(UploadInfo::is_complete);
        let info = UploadInfo {
            id,
            length: if complete { length } else { None },
            offset: if complete { length.unwrap_or(0) } else { 0 },
            metadata,
            protocol: Protocol::Tus,
            kind: UploadKind::Final { parts },
            received: None,
            created_ms: now,
            updated_ms: now,
            expires_ms: self.expiry.expires_at(complete, now),
            sha256: None,
            blake3: None,
            crc64nvme: None,
            finals: Vec::new(),
            deleted: false,
        };
        self.meta.insert(&info).await?;
        if complete {
            self.completed(&info).await;
        } else {
            // A part may have completed after `infos` was read: its commit then either did not
            // list this final yet or found no record of it, and nobody would ever complete it
            // (seen under concurrent creation and last PATCH). Both records exist now: check
            // again.
            self.refresh_final(id).await?;
            if let Some(fresh) = self.meta.get(id).await? {
                return Ok(fresh);
            }
        }
        Ok(info)
    }

    /// The committed record. Never waits for a writer.
    pub async fn get(&self, id: UploadId) -> Result<Option<UploadInfo>> {
        Ok(self.meta.get(id).await?.filter(|i| !i.deleted))
    }

    /// Takes the upload's lease (asking a current writer to commit and let go).
    pub async fn lease(&self, id: UploadId) -> Result<Lease> {
        self.locker.acquire(id).await
    }

    /// Starts appending at the committed offset. `expected_bytes` sizes the buffers.
    pub async fn append(&self, lease: &Lease, expected_bytes: Option<u64>) -> Result<Append<'_>> {
        let id = lease.id();
        let info = self.get(id).await?.ok_or(StoreError::NotFound(id))?;
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
                WriteMode::Append {
                    offset: info.offset,
                },
            )
            .await?;
        let busy = ACTIVE_APPENDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cap = if busy >= FULL_BUFFERS_AT_ONCE {
            SMALL_BUFFER_SIZE
        } else {
            BUFFER_SIZE
        };
        let capacity = expected_bytes
            .map_or(cap, |n| n.min(cap as u64) as usize)
            .max(1);
        let hasher = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match running.remove(&id) {
                Some((pos, h)) if pos == info.offset => Some(h),
                _ if info.offset == 0 => Some(RunningDigest::new(info.length)),
                _ => None,
            }
        };
        Ok(Append {
            hasher,
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
        let info = self
            .meta
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
            .await?;
        if !info.is_complete() {
            return Ok(info);
        }
        // Declared at the offset reached: complete now, with no byte to commit. The running
        // digests (if the chain is whole) are final, and the completion work follows.
        let id = info.id;
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .filter(|(pos, _)| *pos == info.offset);
        let expiry = self.expiry;
        let digests = running.map(|(_, h)| h.finish());
        let info = self
            .meta
            .update(
                id,
                Box::new(move |i| {
                    if let Some((crc, b3, sha)) = digests {
                        i.crc64nvme = Some(crc);
                        i.blake3 = i.blake3.or(b3);
                        i.sha256 = i.sha256.or(sha);
                    }
                    i.expires_ms = expiry.expires_at(true, now_ms());
                    Ok(())
                }),
            )
            .await?;
        self.completed(&info).await;
        Ok(self.meta.get(id).await?.unwrap_or(info))
    }

    /// Deletes an upload: takes it over from any writer, then removes it. A partial that a
    /// final still uses is only hidden; its bytes go when the last such final goes. Deleting a
    /// final releases its parts.
    pub async fn delete(&self, id: UploadId) -> Result<()> {
        let _lease = self.lease(id).await?;
        let info = self.get(id).await?.ok_or(StoreError::NotFound(id))?;
        self.remove(info).await
    }

    async fn remove(&self, info: UploadInfo) -> Result<()> {
        let id = info.id;
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if !info.finals.is_empty() {
            let hidden = self
                .meta
                .update(
                    id,
                    Box::new(|i| {
                        i.deleted = true;
                        Ok(())
                    }),
                )
                .await?;
            // A final may have let go in the meantime.
            if hidden.finals.is_empty() {
                self.purge(id).await?;
            }
            return Ok(());
        }
        self.meta.remove(id).await?;
        match info.kind {
            UploadKind::Final { parts } => {
                for p in parts {
                    self.release_part(p, id).await?;
                }
            }
            _ => self.data.delete(id).await?,
        }
        Ok(())
    }

    /// Drops `final_id` from a part's users; purges the part if it was deleted and no final
    /// uses it any more.
    async fn release_part(&self, part: UploadId, final_id: UploadId) -> Result<()> {
        let updated = self
            .meta
            .update(
                part,
                Box::new(move |i| {
                    i.finals.retain(|f| *f != final_id);
                    Ok(())
                }),
            )
            .await;
        match updated {
            Ok(p) if p.deleted && p.finals.is_empty() => self.purge(part).await,
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn purge(&self, id: UploadId) -> Result<()> {
        self.meta.remove(id).await?;
        self.data.delete(id).await
    }

    /// Deletes every upload that expired before `now` (ms since the epoch), skipping uploads
    /// a request is writing right now. Returns the ids deleted.
    pub async fn sweep_expired(&self, now: u64) -> Result<Vec<UploadId>> {
        let mut gone = Vec::new();
        for info in self.meta.list().await? {
            if info.deleted || !info.is_expired(now) || self.chunk_writes_active(info.id) {
                continue;
            }
            let Ok(_lease) = self.try_lease(info.id).await else {
                continue;
            };
            // Re-read under the lease: a write may have just extended it.
            match self.get(info.id).await? {
                Some(fresh) if fresh.is_expired(now) => {
                    self.remove(fresh).await?;
                    gone.push(info.id);
                }
                _ => {}
            }
        }
        Ok(gone)
    }

    /// Takes a lease only if nobody holds it (the sweeper never interrupts a writer).
    async fn try_lease(&self, id: UploadId) -> Result<Lease> {
        self.locker.try_acquire(id).await
    }

    /// Work that follows an upload's completion: its digests (unless the commit already
    /// stored them from the running hash, or a final's parts have theirs) and completing finals
    /// that were waiting for it.
    pub(crate) async fn completed(&self, info: &UploadInfo) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&info.id);
        let mut info = std::borrow::Cow::Borrowed(info);
        if info.crc64nvme.is_none()
            && let Some(crc) = self.combined_crc(&info).await
        {
            match self
                .meta
                .update(
                    info.id,
                    Box::new(move |i| {
                        i.crc64nvme = Some(crc);
                        Ok(())
                    }),
                )
                .await
            {
                Ok(i) => info = std::borrow::Cow::Owned(i),
                Err(e) => tracing::warn!(upload = %info.id, error = %e, "storing digest failed"),
            }
        }
        if info.crc64nvme.is_none() || info.length.unwrap_or(0) <= INLINE_DIGEST_MAX {
            self.digest_by_reading(&info, WantDigest::default()).await;
        }
        for f in &info.finals {
            if let Err(e) = self.refresh_final(*f).await {
                tracing::warn!(upload = %f, error = %e, "completing final failed");
            }
        }
    }

    /// The CRC-64/NVME of a final upload from its parts' (no byte read), if they all have one.
    async fn combined_crc(&self, info: &UploadInfo) -> Option<u64> {
        let UploadKind::Final { parts } = &info.kind else {
            return None;
        };
        let mut crc = crc64nvme_of(b"");
        for p in parts {
            let part = self.meta.get(*p).await.ok()??;
            if !part.is_complete() {
                return None;
            }
            crc = crc64nvme_combine(crc, part.crc64nvme?, part.offset);
        }
        Some(crc)
    }

    /// Computes missing digests by reading the data back (after a restart, a takeover that
    /// broke the hash chain, for finals whose parts lack one, or a cryptographic digest on
    /// request): inline when small (every digest), else in the background (CRC-64/NVME, and
    /// the cheapest cryptographic digest `want` accepts if it accepts no CRC). Runs at most
    /// once at a time per upload.
    async fn digest_by_reading(&self, info: &UploadInfo, want: WantDigest) {
        let small = info.length.unwrap_or(0) <= INLINE_DIGEST_MAX;
        if wanted(info, want, small).is_none() {
            return;
        }
        let data = self.data.clone();
        let meta = self.meta.clone();
        let digesting = self.digesting.clone();
        let id = info.id;
        let job = async move {
            // One read-back at a time per upload: a request for another digest that comes
            // while one runs waits for it, then computes what the record still lacks (it
            // used to be dropped, and its HEAD waited in vain).
            while !digesting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Leaves the set however the job ends (a request running it inline may be
            // cancelled mid-way; a stale entry would make every later request wait forever).
            let _running = Digesting(&digesting, id);
            let result = match meta.get(id).await {
                Ok(Some(fresh)) => match wanted(&fresh, want, small) {
                    Some(w) => compute_digest(&data, &meta, &fresh, w).await,
                    None => Ok(()),
                },
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(upload = %id, error = %e, "digest failed");
            }
        };
        if small {
            job.await;
        } else {
            tokio::spawn(job);
        }
    }

    /// A client asked for a digest of a finished upload (`want`, from `Want-Repr-Digest`):
    /// computes what is missing, in the background when large, once. The record shows the
    /// digests when done.
    pub async fn ensure_digests(&self, info: &UploadInfo, want: WantDigest) {
        if info.is_complete() {
            self.digest_by_reading(info, want).await;
        }
    }

    /// A final created before its parts finished (concatenation-unfinished) has no activity of
    /// its own: progress on a part moves the final's expiry too, or the final would expire
    /// (and be swept) under parts still being uploaded.
    async fn keep_finals_alive(&self, part: &UploadInfo) {
        let now = now_ms();
        let Some(until) = self.expiry.expires_at(false, now) else {
            return;
        };
        for f in &part.finals {
            let extended = self
                .meta
                .update(
                    *f,
                    Box::new(move |i| {
                        // Never revive a final that already expired.
                        if !i.is_complete() && i.expires_ms.is_some_and(|e| e > now && e < until) {
                            i.expires_ms = Some(until);
                        }
                        Ok(())
                    }),
                )
                .await;
            match extended {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(upload = %f, error = %e, "extending final's expiry failed")
                }
            }
        }
    }

    /// Completes a final upload once all its parts are complete.
    async fn refresh_final(&self, id: UploadId) -> Result<()> {
        let Some(info) = self.meta.get(id).await? else {
            return Ok(());
        };
        let UploadKind::Final { parts } = &info.kind else {
            return Ok(());
        };
        if info.is_complete() {
            return Ok(());
        }
        let mut infos = Vec::with_capacity(parts.len());
        for p in parts {
            match self.meta.get(*p).await? {
                Some(i) if i.is_complete() => infos.push(i),
                _ => return Ok(()),
            }
        }
        let Some(length) = total_length(&infos) else {
            return Ok(());
        };
        let expires = self.expiry.expires_at(true, now_ms());
        let done = self
            .meta
            .update(
                id,
                Box::new(move |i| {
                    i.length = Some(length);
                    i.offset = length;
                    i.expires_ms = expires;
                    i.updated_ms = now_ms();
                    Ok(())
                }),
            )
            .await?;
        Box::pin(self.completed(&done)).await;
        Ok(())
    }

    /// Streams committed bytes `[start, end)` of an upload; a final upload is read across its
    /// parts.
    pub async fn read(&self, info: &UploadInfo, start: u64, end: u64) -> Result<ByteStream> {
        read_upload(&self.data, &self.meta, info, start, end).await
    }
}

fn random_id() -> Result<UploadId> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
    Ok(UploadId::from_bytes(bytes))
}

/// Sum of the parts' lengths, if all are known.
fn total_length(parts: &[UploadInfo]) -> Option<u64> {
    parts
        .iter()
        .try_fold(0u64, |acc, p| acc.checked_add(p.length?))
}

async fn read_upload(
    data: &Arc<dyn DataStore>,
    meta: &Arc<dyn MetaStore>,
    info: &UploadInfo,
    start: u64,
    end: u64,
) -> Result<ByteStream> {
    if end > info.offset || start > end {
        return Err(StoreError::Inconsistent(format!(
            "read {start}..{end} past committed offset {}",
            info.offset
        )));
    }
    let UploadKind::Final { parts } = &info.kind else {
        return data.read(info.id, start, end).await;
    };
    // Map [start, end) onto the parts; streams are opened lazily, one after the other.
    let mut pieces = Vec::new();
    let mut base = 0u64;
    for p in parts {
        let part = meta.get(*p).await?.ok_or(StoreError::NotFound(*p))?;
        let len = part.length.unwrap_or(part.offset).min(part.offset);
        let (s, e) = (start.max(base), end.min(base + len));
        if s < e {
            pieces.push((part.id, s - base, e - base));
        }
        base += len;
        if base >= end {
            break;
        }
    }
    let data = data.clone();
    let stream = futures_util::stream::iter(pieces)
        .then(move |(id, s, e)| {
            let data = data.clone();
            async move { data.read(id, s, e).await }
        })
        .map(|r| match r {
            Ok(s) => s,
            Err(e) => Box::pin(futures_util::stream::once(async move {
                Err(std::io::Error::other(e.to_string()))
            })) as ByteStream,
        })
        .flatten();
    Ok(Box::pin(stream))
}

/// Marks an upload's read-back as running for as long as it lives.
struct Digesting<'a>(&'a Mutex<std::collections::HashSet<UploadId>>, UploadId);

impl Drop for Digesting<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// What to compute by reading `info` back for a client that accepts `want`, if anything:
/// every missing digest when `small`, else the CRC if missing and the cheapest cryptographic
/// digest `want` names if it does not accept the CRC.
fn wanted(info: &UploadInfo, want: WantDigest, small: bool) -> Option<Wanted> {
    let crc_will_do = want.crc64nvme;
    let w = Wanted {
        crc64nvme: info.crc64nvme.is_none(),
        blake3: info.blake3.is_none() && (small || (want.blake3 && !crc_will_do)),
        sha256: info.sha256.is_none() && (small || (want.sha256 && !want.blake3 && !crc_will_do)),
    };
    (w.crc64nvme || w.blake3 || w.sha256).then_some(w)
}

/// Which digests to compute by reading back.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    crc64nvme: bool,
    blake3: bool,
    sha256: bool,
}

/// Hashes the whole upload with the wanted algorithms (one read) and stores the digests.
async fn compute_digest(
    data: &Arc<dyn DataStore>,
    meta: &Arc<dyn MetaStore>,
    info: &UploadInfo,
    want: Wanted,
) -> Result<()> {
    let length = info.length.unwrap_or(0);
    let mut stream = read_upload(data, meta, info, 0, length).await?;
    let mut crc = want
        .crc64nvme
        .then(|| Hasher::new(ChecksumAlgorithm::Crc64Nvme));
    let mut b3 = want.blake3.then(|| Hasher::new(ChecksumAlgorithm::Blake3));
    let mut sha = want.sha256.then(|| Hasher::new(ChecksumAlgorithm::Sha256));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        // Off the async threads: hashing a GiB takes a while.
        let (c, b, s) = tokio::task::spawn_blocking(move || {
            for h in [&mut crc, &mut b3, &mut sha].into_iter().flatten() {
                h.update(&chunk);
            }
            (crc, b3, sha)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        (crc, b3, sha) = (c, b, s);
    }
    let crc = crc.map(|h| to_u64(h.finalize()));
    let b3 = b3.map(|h| to32(h.finalize()));
    let sha = sha.map(|h| to32(h.finalize()));
    meta.update(
        info.id,
        Box::new(move |i| {
            if crc.is_some() {
                i.crc64nvme = crc;
            }
            if b3.is_some() {
                i.blake3 = b3;
            }
            if sha.is_some() {
                i.sha256 = sha;
            }
            Ok(())
        }),
    )
    .await?;
    Ok(())
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
    /// The first write failure, and whether it was "storage full".
    failed: Option<(String, bool)>,
    /// Running digests of everything pushed in order, if the chain from byte 0 is unbroken.
    /// Fed as bytes arrive, while they are still in the cache, so that the write of a buffer
    /// is the only work between a full buffer and the next (one hand-off, not two).
    hasher: Option<RunningDigest>,
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

    /// Also keeps the cryptographic digest a client asked for (`want`, from the
    /// `Want-Repr-Digest` of the request that starts the upload) running, so that it is ready at
    /// completion instead of computed by reading a large upload back. Only from byte 0, and
    /// not when the client accepts the CRC-64/NVME that always runs.
    pub fn keep_running(&mut self, want: WantDigest) {
        if want.crc64nvme || self.received() != 0 {
            return;
        }
        if let Some(h) = &mut self.hasher {
            if want.blake3 {
                h.blake3
                    .get_or_insert_with(|| Hasher::new(ChecksumAlgorithm::Blake3));
            } else if want.sha256 {
                h.sha256
                    .get_or_insert_with(|| Hasher::new(ChecksumAlgorithm::Sha256));
            }
        }
    }

    /// Accepts bytes. Refuses (without taking any) bytes that would go past the length.
    pub async fn push(&mut self, mut data: &[u8]) -> Result<()> {
        self.check_failed()?;
        if let Some(length) = self.info.length
            && self.received() + data.len() as u64 > length
        {
            return Err(StoreError::ExceedsLength { length });
        }
        if let Some(h) = &mut self.hasher {
            h.update(data);
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

    /// After a failed write nothing more may be written: the writer's position is past the
    /// lost buffer, so a later write would leave a hole counted as data. Keeps "storage full"
    /// recognisable (507, not 500).
    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some((_, true)) => Err(StoreError::StorageFull),
            Some((e, false)) => Err(StoreError::Io(std::io::Error::other(e.clone()))),
        }
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
                    self.failed = Some((e.to_string(), matches!(e, StoreError::StorageFull)));
                    // The running hash may now lack bytes: give it up.
                    self.hasher = None;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Hands the filled buffer to the writer and continues in the other one.
    async fn submit(&mut self) -> Result<()> {
        self.settle().await?;
        self.check_failed()?;
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

    /// Digest of the bytes received since the last commit (written out and read back), for
    /// checksums whose algorithm is known only after the body (checksum trailers).
    pub async fn digest_uncommitted(&mut self, algorithm: ChecksumAlgorithm) -> Result<Vec<u8>> {
        self.submit().await?;
        self.settle().await?;
        let mut stream = self
            .uploads
            .data
            .read(self.info.id, self.info.offset, self.written)
            .await?;
        let mut hasher = ferry_proto::checksum::Hasher::new(algorithm);
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk?);
        }
        Ok(hasher.finalize())
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
        let expiry = self.uploads.expiry;
        // The last byte: the digests go into the same commit as the offset.
        let digests = match &self.hasher {
            Some(h) if self.info.length == Some(target) => Some(h.clone().finish()),
            _ => None,
        };
        let committed = self
            .uploads
            .meta
            .update(
                id,
                Box::new(move |info| {
                    if info.offset != previous {
                        return Err(StoreError::Conflict(id));
                    }
                    let now = now_ms();
                    info.offset = target;
                    info.updated_ms = now;
                    if let Some((crc, b3, sha)) = digests {
                        info.crc64nvme = Some(crc);
                        info.blake3 = info.blake3.or(b3);
                        info.sha256 = info.sha256.or(sha);
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
        if let Some(h) = self.hasher.as_ref().filter(|_| digests.is_none()) {
            // Snapshot: bytes hashed after this point are not committed yet.
            let snapshot = h.clone();
            self.uploads
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, (target, snapshot));
        }
        if self.info.is_complete() {
            let had_digest = self.info.crc64nvme.is_some();
            self.uploads.completed(&self.info).await;
            if !had_digest && let Some(fresh) = self.uploads.meta.get(id).await? {
                self.info = fresh;
            }
        }
        flushed.map(|()| self.info.clone())
    }
}

impl Drop for Append<'_> {
    fn drop(&mut self) {
        ACTIVE_APPENDS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        give_buffer(std::mem::take(&mut self.buf));
        if let Some(b) = self.spare.take() {
            give_buffer(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt as _;

    fn open(dir: &Path) -> Uploads {
        Uploads::open_local(dir, SyncPolicy::Always).unwrap()
    }

    /// `mib` MiB of bytes that change every `step` positions.
    fn pattern(mib: u32, step: u32) -> Vec<u8> {
        (0..(mib << 20)).map(|i| (i / step) as u8).collect()
    }

    /// A regular upload of `length` (None: deferred).
    async fn regular(u: &Uploads, length: Option<u64>) -> UploadInfo {
        u.create(new_upload(length, UploadKind::Regular))
            .await
            .unwrap()
    }

    async fn write_all(u: &Uploads, id: UploadId, data: &[u8]) -> UploadInfo {
        let lease = u.lease(id).await.unwrap();
        let mut a = u.append(&lease, Some(data.len() as u64)).await.unwrap();
        a.push(data).await.unwrap();
        a.commit().await.unwrap()
    }

    async fn read_all(u: &Uploads, info: &UploadInfo) -> Vec<u8> {
        let mut s = u.read(info, 0, info.offset).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    fn sha(data: &[u8]) -> [u8; 32] {
        ferry_proto::checksum::digest(ChecksumAlgorithm::Sha256, data)
            .try_into()
            .unwrap()
    }

    fn b3(data: &[u8]) -> [u8; 32] {
        to32(digest(ChecksumAlgorithm::Blake3, data))
    }

    fn new_upload(length: Option<u64>, kind: UploadKind) -> NewUpload {
        NewUpload {
            length,
            kind,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn append_commit_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let info = regular(&u, Some(data.len() as u64)).await;
        let lease = u.lease(info.id).await.unwrap();
        let mut a = u.append(&lease, None).await.unwrap();
        for chunk in data.chunks(70_001) {
            a.push(chunk).await.unwrap();
        }
        assert!(matches!(
            a.push(b"x").await,
            Err(StoreError::ExceedsLength { .. })
        ));
        let done = a.commit().await.unwrap();
        assert!(done.is_complete());
        assert_eq!(
            done.sha256,
            Some(sha(&data)),
            "small uploads get their digest inline"
        );
        assert_eq!(done.blake3, Some(b3(&data)));
        assert_eq!(done.crc64nvme, Some(crc64nvme_of(&data)));
        assert_eq!(
            done.expires_ms, None,
            "finished uploads do not expire by default"
        );
        assert_eq!(read_all(&u, &done).await, data);
    }

    #[tokio::test]
    async fn large_upload_has_its_digest_at_completion_without_rereading() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let data = pattern(12, 7);
        let info = regular(&u, Some(data.len() as u64)).await;
        // Three requests; the running hash carries over between them.
        for part in data.chunks(5 << 20) {
            write_all(&u, info.id, part).await;
        }
        let done = u.get(info.id).await.unwrap().unwrap();
        assert!(done.is_complete());
        assert_eq!(
            done.crc64nvme,
            Some(crc64nvme_of(&data)),
            "CRC-64/NVME ready at once (> inline limit)"
        );
        assert_eq!(
            (done.blake3, done.sha256),
            (None, None),
            "cryptographic digests of a large upload wait to be asked for"
        );
        let asked = |key: &str| WantDigest::parse(&format!("{key}=10"));
        let settled = |want: fn(&UploadInfo) -> bool| {
            let u = &u;
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                loop {
                    let i = u.get(info.id).await.unwrap().unwrap();
                    if want(&i) || std::time::Instant::now() > deadline {
                        break i;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        // Asking for a CRC (which is there) or BLAKE3 computes no SHA-256.
        u.ensure_digests(&done, WantDigest::parse("crc64nvme=10, sha-256=1"))
            .await;
        u.ensure_digests(&done, asked("blake3")).await;
        let with_b3 = settled(|i| i.blake3.is_some()).await;
        assert_eq!(with_b3.blake3, Some(b3(&data)), "computed on request");
        assert_eq!(with_b3.sha256, None);
        u.ensure_digests(&with_b3, asked("sha-256")).await;
        let with_sha = settled(|i| i.sha256.is_some()).await;
        assert_eq!(with_sha.sha256, Some(sha(&data)), "computed on request");
        assert_eq!(with_sha.crc64nvme, Some(crc64nvme_of(&data)));
    }

    #[tokio::test]
    async fn a_digest_asked_for_while_another_is_read_back_is_computed_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let data = vec![9u8; (INLINE_DIGEST_MAX + 1) as usize];
        let info = regular(&u, Some(data.len() as u64)).await;
        let done = write_all(&u, info.id, &data).await;
        // As if a read-back of this upload were running.
        u.digesting.lock().unwrap().insert(info.id);
        u.ensure_digests(&done, WantDigest::parse("sha-256=10"))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(u.get(info.id).await.unwrap().unwrap().sha256, None);
        u.digesting.lock().unwrap().remove(&info.id);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let got = loop {
            let i = u.get(info.id).await.unwrap().unwrap();
            if i.sha256.is_some() || std::time::Instant::now() > deadline {
                break i.sha256;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            got,
            Some(sha(&data)),
            "the request waited instead of being dropped"
        );
    }

    #[tokio::test]
    async fn declaring_the_length_at_the_offset_completes_with_the_running_crc() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let data = pattern(9, 11);
        let info = regular(&u, None).await;
        write_all(&u, info.id, &data).await;
        let lease = u.lease(info.id).await.unwrap();
        let done = u.declare_length(&lease, data.len() as u64).await.unwrap();
        assert!(done.is_complete());
        assert_eq!(
            done.crc64nvme,
            Some(crc64nvme_of(&data)),
            "from the running CRC, at once (a read-back of 9 MiB runs in the background)"
        );
        assert!(
            u.running.lock().unwrap().is_empty(),
            "no running entry left"
        );
    }

    #[tokio::test]
    async fn a_cryptographic_digest_asked_for_at_the_start_is_kept_running() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let data = pattern(9, 5);
        let (one, two) = data.split_at(4 << 20);
        for (want, b3_kept, sha_kept) in [
            ("blake3=10, sha-256=3", true, false),
            ("sha-256=10", false, true),
            ("crc64nvme=10, blake3=5", false, false),
        ] {
            let info = regular(&u, Some(data.len() as u64)).await;
            let lease = u.lease(info.id).await.unwrap();
            let mut a = u.append(&lease, None).await.unwrap();
            a.keep_running(WantDigest::parse(want));
            a.push(one).await.unwrap();
            a.commit().await.unwrap();
            // Too late: bytes were already taken.
            a.keep_running(WantDigest::parse("sha-256=10"));
            drop(a);
            drop(lease);
            let done = write_all(&u, info.id, two).await;
            assert!(done.is_complete());
            assert_eq!(done.crc64nvme, Some(crc64nvme_of(&data)), "{want}");
            assert_eq!(done.blake3, b3_kept.then(|| b3(&data)), "{want}");
            assert_eq!(done.sha256, sha_kept.then(|| sha(&data)), "{want}");
        }
    }

    #[tokio::test]
    async fn large_final_combines_its_parts_crcs_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let data = pattern(10, 3);
        let (one, two) = data.split_at(6 << 20);
        let mut parts = Vec::new();
        for bytes in [one, two] {
            let p = u
                .create(new_upload(Some(bytes.len() as u64), UploadKind::Partial))
                .await
                .unwrap();
            let done = write_all(&u, p.id, bytes).await;
            assert_eq!(done.crc64nvme, Some(crc64nvme_of(bytes)));
            parts.push(p.id);
        }
        // Change a stored byte behind the store's back: a CRC computed by reading the final
        // back would show it; one combined from the parts' recorded CRCs does not.
        let first = LocalDataStore::open(dir.path()).unwrap().path_of(parts[0]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .write_all_at(&[data[0] ^ 0xff], 0)
            .unwrap();
        let f = u
            .create_final(parts, Metadata::default(), None)
            .await
            .unwrap();
        let f = u.get(f.id).await.unwrap().unwrap();
        assert!(f.is_complete());
        assert_eq!(
            f.crc64nvme,
            Some(crc64nvme_of(&data)),
            "combined from the parts, nothing read back"
        );
        assert_ne!(read_all(&u, &f).await, data, "the byte did change");
    }

    #[tokio::test]
    async fn broken_hash_chain_falls_back_to_reading() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let data = vec![42u8; 1 << 20];
        let info = regular(&u, Some(data.len() as u64)).await;
        write_all(&u, info.id, &data[..1000]).await;
        {
            // Hashed but never committed: the running hash must not keep these bytes.
            let lease = u.lease(info.id).await.unwrap();
            let mut a = u.append(&lease, None).await.unwrap();
            a.push(&[0u8; 600_000]).await.unwrap();
            a.commit().await.unwrap();
            a.push(&[1u8; 300_000]).await.unwrap();
        }
        u.running.lock().unwrap().clear();
        let lease = u.lease(info.id).await.unwrap();
        let mut a = u.append(&lease, None).await.unwrap();
        assert!(
            a.hasher.is_none(),
            "no chain to continue after the cache is lost"
        );
        let at = a.info().offset as usize;
        let mut expect = data[..1000].to_vec();
        expect.extend_from_slice(&[0u8; 600_000]);
        expect.extend_from_slice(&data[at..]);
        a.push(&data[at..]).await.unwrap();
        let done = a.commit().await.unwrap();
        assert_eq!(done.sha256, Some(sha(&expect)), "digest by reading back");
        assert_eq!(done.crc64nvme, Some(crc64nvme_of(&expect)));
    }

    #[tokio::test]
    async fn uncommitted_bytes_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let info = regular(&u, Some(10)).await;
        {
            let lease = u.lease(info.id).await.unwrap();
            let mut a = u.append(&lease, None).await.unwrap();
            a.push(b"abc").await.unwrap();
            a.commit().await.unwrap();
            a.push(b"zzzz").await.unwrap();
            // dropped without commit
        }
        assert_eq!(u.get(info.id).await.unwrap().unwrap().offset, 3);
        let done = write_all(&u, info.id, b"defghij").await;
        assert_eq!(read_all(&u, &done).await, b"abcdefghij");
    }

    #[tokio::test]
    async fn final_reads_across_parts_and_survives_part_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let a = u
            .create(new_upload(Some(5), UploadKind::Partial))
            .await
            .unwrap();
        let b = u
            .create(new_upload(Some(7), UploadKind::Partial))
            .await
            .unwrap();
        write_all(&u, a.id, b"hello").await;
        // Final created before part b finishes (concatenation-unfinished).
        let f = u
            .create_final(vec![a.id, b.id], Metadata::default(), None)
            .await
            .unwrap();
        assert_eq!(f.length, None);
        write_all(&u, b.id, b", world").await;
        let f = u.get(f.id).await.unwrap().unwrap();
        assert!(f.is_complete(), "final completes with its last part");
        assert_eq!(read_all(&u, &f).await, b"hello, world");
        assert_eq!(f.sha256, Some(sha(b"hello, world")));
        assert_eq!(f.crc64nvme, Some(crc64nvme_of(b"hello, world")));
        // Deleting a part hides it but keeps its bytes for the final.
        u.delete(a.id).await.unwrap();
        assert!(u.get(a.id).await.unwrap().is_none());
        assert_eq!(read_all(&u, &f).await, b"hello, world");
        // Deleting the final releases the hidden part for good.
        u.delete(f.id).await.unwrap();
        assert!(
            u.meta.get(a.id).await.unwrap().is_none(),
            "hidden part purged"
        );
        assert!(u.get(b.id).await.unwrap().is_some(), "visible part kept");
    }

    #[tokio::test]
    async fn final_rejects_non_partials_and_missing_parts() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let r = regular(&u, Some(1)).await;
        assert!(matches!(
            u.create_final(vec![r.id], Metadata::default(), None).await,
            Err(StoreError::NotPartial(_))
        ));
        let missing = UploadId::from_bytes([9; 16]);
        assert!(matches!(
            u.create_final(vec![missing], Metadata::default(), None)
                .await,
            Err(StoreError::NotFound(_))
        ));
        let p = u
            .create(new_upload(Some(10), UploadKind::Partial))
            .await
            .unwrap();
        write_all(&u, p.id, b"0123456789").await;
        assert!(matches!(
            u.create_final(vec![p.id, p.id], Metadata::default(), Some(15))
                .await,
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn sweeper_deletes_expired_unfinished_uploads_only() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path()).with_expiry(ExpiryPolicy {
            unfinished: Some(Duration::from_secs(60)),
            finished: None,
        });
        let stale = regular(&u, Some(10)).await;
        let done = regular(&u, Some(2)).await;
        write_all(&u, done.id, b"ok").await;
        let busy = regular(&u, Some(10)).await;
        let held = u.lease(busy.id).await.unwrap();
        let later = now_ms() + 61_000;
        assert!(u.get(stale.id).await.unwrap().unwrap().is_expired(later));
        let gone = u.sweep_expired(later).await.unwrap();
        assert_eq!(gone, vec![stale.id]);
        assert!(u.get(stale.id).await.unwrap().is_none());
        assert!(u.get(done.id).await.unwrap().is_some());
        assert!(
            !held.is_taken_over(),
            "the sweeper never interrupts a writer"
        );
        drop(held);
        assert_eq!(u.sweep_expired(later).await.unwrap(), vec![busy.id]);
    }

    #[tokio::test]
    async fn expiring_a_partial_keeps_a_finished_final() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path()).with_expiry(ExpiryPolicy {
            unfinished: Some(Duration::from_secs(60)),
            finished: Some(Duration::from_secs(3600)),
        });
        let p = u
            .create(new_upload(Some(3), UploadKind::Partial))
            .await
            .unwrap();
        write_all(&u, p.id, b"abc").await;
        let f = u
            .create_final(vec![p.id], Metadata::default(), None)
            .await
            .unwrap();
        assert!(f.is_complete());
        // The part's finished-upload expiry is due well before the final's would be read.
        u.meta
            .update(
                p.id,
                Box::new(|i| {
                    i.expires_ms = Some(1);
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let gone = u.sweep_expired(now_ms()).await.unwrap();
        assert_eq!(gone, vec![p.id]);
        let f = u.get(f.id).await.unwrap().unwrap();
        assert_eq!(read_all(&u, &f).await, b"abc", "final still readable");
    }

    #[tokio::test]
    async fn unfinished_final_and_parts_expire_together() {
        let dir = tempfile::tempdir().unwrap();
        let u = open(dir.path());
        let p = u
            .create(new_upload(Some(3), UploadKind::Partial))
            .await
            .unwrap();
        let q = u
            .create(new_upload(Some(3), UploadKind::Partial))
            .await
            .unwrap();
        write_all(&u, p.id, b"abc").await;
        let f = u
            .create_final(vec![p.id, q.id], Metadata::default(), None)
            .await
            .unwrap();
        // q never finishes and expires; p is finished and does not.
        let later = now_ms() + 8 * 24 * 3600 * 1000;
        let gone = u.sweep_expired(later).await.unwrap();
        assert!(gone.contains(&q.id) && gone.contains(&f.id), "{gone:?}");
        assert!(u.get(q.id).await.unwrap().is_none());
        assert!(
            u.get(f.id).await.unwrap().is_none(),
            "the unfinished final expired too"
        );
        assert!(
            u.meta.get(q.id).await.unwrap().is_none(),
            "no final holds q any more"
        );
        assert!(u.get(p.id).await.unwrap().is_some(), "finished part kept");
    }
}
