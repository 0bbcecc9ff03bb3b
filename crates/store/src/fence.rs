//! In-process fencing for data stores ([`crate::data::Fence::Epoch`]): the latest lease epoch
//! of each upload written, and the lock that keeps a superseded writer's writes out.
//!
//! A writer holds a read lock on its upload's cell around each write (a `pwrite`, an upload of
//! a part) and checks that the cell still holds its epoch; an opener takes the write lock to
//! raise the epoch before it touches anything. So a write of a superseded epoch either lands
//! before the new writer starts (past the committed offset it starts from, so never read) or
//! not at all. The cell is a tokio lock: an object store's writer keeps it across the await of
//! a part upload, and a blocking thread can read it too.
//!
//! The epoch is remembered after the writers are gone (a holder whose lease lapsed may come
//! back after its successor finished) until the upload is deleted: a few dozen bytes per upload
//! written since the process started, since epochs are per process as the in-process leases
//! are. (A store shared by instances keeps it in the upload's record.)

use crate::error::{Result, StoreError};
use ferry_proto::UploadId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::RwLock;

/// The latest epoch of each upload opened for writing.
#[derive(Debug, Default)]
pub(crate) struct Fences {
    map: Mutex<HashMap<UploadId, Entry>>,
}

#[derive(Debug, Default)]
struct Entry {
    /// The latest epoch that opened the upload.
    epoch: u64,
    /// The lock writers share while any is open.
    cell: Weak<RwLock<u64>>,
}

impl Fences {
    /// A writer's place, with the upload's epoch raised to `epoch` (waiting for a write in
    /// progress); `Fenced` if a later epoch has opened it.
    pub(crate) async fn enter(&self, id: UploadId, epoch: u64) -> Result<Fenced> {
        let cell = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let entry = map.entry(id).or_default();
            match entry.cell.upgrade() {
                Some(c) => c,
                None => {
                    let c = Arc::new(RwLock::new(entry.epoch));
                    entry.cell = Arc::downgrade(&c);
                    c
                }
            }
        };
        {
            let mut current = cell.write().await;
            if *current > epoch {
                return Err(StoreError::Fenced {
                    id,
                    epoch,
                    current: *current,
                });
            }
            *current = epoch;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(id).or_default();
        entry.epoch = entry.epoch.max(epoch);
        Ok(Fenced { id, epoch, cell })
    }

    /// The upload is gone: nothing of it is left to fence.
    pub(crate) fn forget(&self, id: UploadId) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// A writer's place in [`Fences`].
#[derive(Debug, Clone)]
pub(crate) struct Fenced {
    id: UploadId,
    epoch: u64,
    cell: Arc<RwLock<u64>>,
}

impl Fenced {
    /// `Fenced` if a later epoch holds `current`.
    fn check(&self, current: u64) -> Result<()> {
        match current == self.epoch {
            true => Ok(()),
            false => Err(StoreError::Fenced {
                id: self.id,
                epoch: self.epoch,
                current,
            }),
        }
    }

    /// Runs `f` (a write, on a blocking thread) unless a later epoch has opened the upload,
    /// holding that off meanwhile.
    pub(crate) fn run_blocking<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let current = self.cell.blocking_read();
        self.check(*current)?;
        f()
    }

    /// Waits for `write` unless a later epoch has opened the upload, holding that off
    /// meanwhile (an opener waits for it to land).
    pub(crate) async fn run<T>(&self, write: impl Future<Output = Result<T>>) -> Result<T> {
        let current = self.cell.read().await;
        self.check(*current)?;
        write.await
    }
}
