//! Simulated power loss, for crash tests only (cargo feature `crash-sim`).
//!
//! `kill -9` keeps the kernel's page cache, so it cannot show that bytes which were never
//! fsynced are never acknowledged. [`CrashSimDataStore`] wraps the local data store and
//! records, per upload file, what the real syscalls made durable:
//! - a file created with `durable` (directory fsynced) exists after a power loss; one created
//!   without it may vanish;
//! - `sync` (fdatasync) makes the file's current length durable; cutting a file back (append
//!   mode) lowers what is known durable.
//!
//! [`CrashSim::crash`] then stops every data-store operation, cuts every file back to its
//! durable length (removing files whose directory entry was never fsynced) and SIGKILLs the
//! process: the next start sees what a power loss would have left.
//!
//! The metadata store needs no wrapper: redb commits with `Durability::Immediate` (fsync before
//! the commit returns) under every sync policy, so nothing committed is only in the page cache.
//!
//! Files that exist when the store opens count as durable at their current length (the
//! previous run's crash already cut them).

use crate::data::{
    ByteStream, DataCapabilities, DataStore, DataWriter, Fence, Holding, Locator, Owner,
    PendingWrite, WriteMode,
};
use crate::error::Result;
use crate::local::LocalDataStore;
use async_trait::async_trait;
use ferry_proto::UploadId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::RwLock;

/// Environment variable that turns the simulation on in `ferry serve` (any non-empty value).
pub const ENV: &str = "FERRY_CRASH_SIM";

/// Crashes (see [`CrashSim::crash`]) when the process receives SIGUSR2. Needs a tokio runtime.
pub fn arm(sim: Arc<CrashSim>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handle = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    let _enter = handle.enter();
    let mut usr2 = signal(SignalKind::user_defined2())?;
    handle.spawn(async move {
        if usr2.recv().await.is_some() {
            sim.crash().await;
        }
    });
    tracing::warn!("crash simulation armed: SIGUSR2 drops unsynced writes and kills ferry");
    Ok(())
}

/// What survives a power loss for one file.
#[derive(Debug, Clone, Copy)]
struct Durable {
    /// The directory entry was fsynced.
    entry: bool,
    /// Bytes known to be on stable storage.
    len: u64,
}

/// Shared state of the simulation: the durable map and the gate that stops I/O at a crash.
#[derive(Debug)]
pub struct CrashSim {
    inner: LocalDataStore,
    files: Mutex<HashMap<UploadId, Durable>>,
    /// Every data operation holds a read guard for its duration; the crash takes the write
    /// guard, so it sees no operation half done and none starts after it.
    gate: Arc<RwLock<()>>,
}

impl CrashSim {
    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, Durable>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Durable state of a file first seen now (left by an earlier run): its current length.
    fn known(&self, id: UploadId) -> Durable {
        if let Some(d) = self.files().get(&id) {
            return *d;
        }
        let len = std::fs::metadata(self.inner.path_of(id)).map_or(0, |m| m.len());
        let d = Durable { entry: true, len };
        self.files().insert(id, d);
        d
    }

    /// Simulates a power loss: drops every write that was not made durable, then SIGKILLs this
    /// process. Never returns.
    pub async fn crash(&self) -> ! {
        let _stop = self.gate.write().await;
        let files = self.files().clone();
        let mut cut = 0u64;
        let mut removed = 0usize;
        for (id, d) in files {
            let path = self.inner.path_of(id);
            if !d.entry {
                if std::fs::remove_file(&path).is_ok() {
                    removed += 1;
                }
                continue;
            }
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path)
                && let Ok(m) = f.metadata()
                && m.len() > d.len
            {
                cut += m.len() - d.len;
                let _ = f.set_len(d.len);
            }
        }
        eprintln!("crash-sim: power loss: cut {cut} unsynced bytes, removed {removed} files");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort()
    }
}

/// A [`DataStore`] that records what is durable so that [`CrashSim::crash`] can drop the rest.
#[derive(Debug, Clone)]
pub struct CrashSimDataStore {
    sim: Arc<CrashSim>,
}

impl CrashSimDataStore {
    /// Wraps `inner`; the returned [`CrashSim`] triggers the crash.
    pub fn new(inner: LocalDataStore) -> (Self, Arc<CrashSim>) {
        let sim = Arc::new(CrashSim {
            inner,
            files: Mutex::new(HashMap::new()),
            gate: Arc::new(RwLock::new(())),
        });
        (Self { sim: sim.clone() }, sim)
    }
}

#[async_trait]
impl DataStore for CrashSimDataStore {
    fn identity(&self) -> String {
        self.sim.inner.identity()
    }

    fn capabilities(&self) -> DataCapabilities {
        self.sim.inner.capabilities()
    }

    fn free_space(&self) -> Option<u64> {
        self.sim.inner.free_space()
    }

    async fn create(&self, id: UploadId, durable: bool, length: Option<u64>) -> Result<Locator> {
        let _g = self.sim.gate.read().await;
        let at = self.sim.inner.create(id, durable, length).await?;
        self.sim.files().insert(
            id,
            Durable {
                entry: durable,
                len: 0,
            },
        );
        Ok(at)
    }

    async fn open_writer(
        &self,
        id: UploadId,
        at: &Locator,
        mode: WriteMode,
        fence: Fence,
    ) -> Result<Box<dyn DataWriter>> {
        let _g = self.sim.gate.read().await;
        let before = self.sim.known(id);
        let writer = self.sim.inner.open_writer(id, at, mode, fence).await?;
        if let WriteMode::Append { offset } = mode
            && before.len > offset
        {
            // The cut is not fsynced and new bytes will overwrite what was there: count only
            // the bytes before the cut as durable.
            self.sim.files().insert(
                id,
                Durable {
                    entry: before.entry,
                    len: offset,
                },
            );
        }
        Ok(Box::new(CrashSimWriter {
            id,
            sim: self.sim.clone(),
            inner: writer,
        }))
    }

    async fn finish(&self, id: UploadId, at: &Locator, length: u64) -> Result<Locator> {
        let _g = self.sim.gate.read().await;
        self.sim.inner.finish(id, at, length).await
    }

    fn past_reserved(&self, at: &Locator, fence: &Fence) -> Result<Locator> {
        self.sim.inner.past_reserved(at, fence)
    }

    fn merge_locators(&self, recorded: &Locator, written: &Locator) -> Result<Locator> {
        self.sim.inner.merge_locators(recorded, written)
    }

    async fn read(&self, id: UploadId, at: &Locator, start: u64, end: u64) -> Result<ByteStream> {
        self.sim.inner.read(id, at, start, end).await
    }

    async fn inventory(&self) -> Result<Vec<(UploadId, u64)>> {
        self.sim.inner.inventory().await
    }

    async fn holds(&self, id: UploadId, at: &Locator) -> Result<Option<Holding>> {
        self.sim.inner.holds(id, at).await
    }

    async fn reconcile(&self, owner: &Owner<'_>, cutoff: Option<u64>) -> Result<usize> {
        self.sim.inner.reconcile(owner, cutoff).await
    }

    fn derived_locator(&self, id: UploadId) -> Option<Locator> {
        self.sim.inner.derived_locator(id)
    }

    async fn delete(&self, id: UploadId, at: &Locator) -> Result<()> {
        let _g = self.sim.gate.read().await;
        self.sim.inner.delete(id, at).await?;
        self.sim.files().remove(&id);
        Ok(())
    }
}

struct CrashSimWriter {
    id: UploadId,
    sim: Arc<CrashSim>,
    inner: Box<dyn DataWriter>,
}

#[async_trait]
impl DataWriter for CrashSimWriter {
    fn position(&self) -> u64 {
        self.inner.position()
    }

    fn write(&mut self, buf: Vec<u8>) -> PendingWrite {
        match self.sim.gate.clone().try_read_owned() {
            Ok(guard) => {
                let write = self.inner.write(buf);
                Box::pin(async move {
                    let r = write.await;
                    drop(guard);
                    r
                })
            }
            // A crash is under way: this write never happens (the process is about to die).
            Err(_) => Box::pin(std::future::pending()),
        }
    }

    async fn checkpoint(&mut self, durable: bool) -> Result<Locator> {
        let _g = self.sim.gate.read().await;
        let at = self.inner.checkpoint(durable).await?;
        if !durable {
            return Ok(at);
        }
        let path = self.sim.inner.path_of(self.id);
        let len = std::fs::metadata(path)
            .map_err(crate::StoreError::from)?
            .len();
        let mut files = self.sim.files();
        let entry = files.get(&self.id).is_none_or(|d| d.entry);
        files.insert(self.id, Durable { entry, len });
        Ok(at)
    }
}
