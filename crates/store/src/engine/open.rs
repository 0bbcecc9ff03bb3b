//! Opening the embedded local store: take the directory lock, open the data and metadata
//! stores under it.

use super::Uploads;
use super::policy::SyncPolicy;
use crate::data::DataStore;
use crate::error::{Result, StoreError};
use crate::local::LocalDataStore;
use crate::lock::LocalLocker;
use crate::meta::MetaStore;
use crate::redb_meta::RedbMetaStore;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long a new request waits for the current holder of an upload to let go.
pub const TAKEOVER_PATIENCE: Duration = Duration::from_secs(10);

impl Uploads {
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
        let lock = lock_dir(dir)?;
        let data = LocalDataStore::open(dir)?;
        Self::open_dir(dir, sync, lock, wrap(data))
    }

    /// `data` for the bytes, with the metadata in `dir/ferry.redb` and leases in process,
    /// under the directory lock: the S3 store's setup (its metadata stays on local disk, one
    /// instance per directory).
    pub fn open_with_data(dir: &Path, sync: SyncPolicy, data: Arc<dyn DataStore>) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        Self::open_dir(dir, sync, lock, data)
    }

    /// Records in `meta`, a store shared with other instances (PostgreSQL) and already bound to
    /// the data store; the bytes in `data`, or in files under `dir` when `None`; leases from
    /// `locker` (shared by the same instances). `dir` (the local data, or the S3 store's
    /// spool) is locked for this process.
    pub fn open_with_meta(
        dir: &Path,
        sync: SyncPolicy,
        data: Option<Arc<dyn DataStore>>,
        meta: Arc<dyn MetaStore>,
        locker: Arc<dyn crate::lock::Locker>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let data = match data {
            Some(d) => d,
            None => Arc::new(LocalDataStore::open(dir)?),
        };
        if sync.syncs_data() {
            crate::local::sync_dir(dir)?;
        }
        let mut me = Self::new(data, meta, locker, sync);
        me._dir_lock = Some(lock);
        Ok(me)
    }

    fn open_dir(
        dir: &Path,
        sync: SyncPolicy,
        lock: File,
        data: Arc<dyn DataStore>,
    ) -> Result<Self> {
        // A layout-1 directory (before locators were recorded) migrates here, where both
        // stores are known: its files are where the local store derives them.
        // Layout 1 knew only the local store: another store cannot place its records.
        let identity = data.identity();
        let local = identity == "local";
        let meta = RedbMetaStore::open_migrating(&dir.join("ferry.redb"), &|id| {
            local.then(|| data.derived_locator(id)).flatten()
        })?;
        meta.bind_store(&identity)?;
        if sync.syncs_data() {
            crate::local::sync_dir(dir)?;
        }
        let mut me = Self::new(
            data,
            Arc::new(meta),
            Arc::new(LocalLocker::new(TAKEOVER_PATIENCE)),
            sync,
        );
        me._dir_lock = Some(lock);
        Ok(me)
    }
}

/// Takes the exclusive lock on `dir/ferry.lock`, held for as long as the file stays open: two
/// processes serving one directory would each think they own its leases.
fn lock_dir(dir: &Path) -> Result<File> {
    let lock_path = dir.join("ferry.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Metadata(format!(
            "another ferry process is already using {} (lock held on {})",
            dir.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}
