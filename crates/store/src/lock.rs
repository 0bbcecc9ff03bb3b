//! Per-upload leases with takeover: the one concurrency rule for every protocol.
//!
//! At most one request writes an upload at a time. A new request for a busy upload does not
//! queue behind the holder: it asks the holder to let go (the holder's lease is signalled), the
//! holder commits what it has received and ends, and the newcomer gets the lease. This frees a
//! client whose previous connection went half-open, as the IETF draft recommends. Readers (HEAD,
//! GET) never take a lease.

use crate::data::Reservations;
use crate::error::{Result, StoreError};
use async_trait::async_trait;
use ferry_proto::UploadId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Exclusive right to write one upload. Dropping it releases the upload.
pub struct Lease {
    id: UploadId,
    epoch: u64,
    takeover: CancellationToken,
    /// Set (before `takeover` fires) when the lease is lost rather than wanted.
    lost: Arc<AtomicBool>,
    shared: Option<Arc<dyn Reservations>>,
    _release: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("epoch", &self.epoch)
            .field("taken_over", &self.is_taken_over())
            .finish()
    }
}

impl Lease {
    /// Builds a lease at `epoch` (greater than any earlier lease of the same upload);
    /// `release` runs its `Drop` when the lease is dropped.
    pub fn new(
        id: UploadId,
        epoch: u64,
        takeover: CancellationToken,
        release: Box<dyn Send + Sync>,
    ) -> Self {
        Self {
            id,
            epoch,
            takeover,
            lost: Arc::default(),
            shared: None,
            _release: release,
        }
    }

    /// This lease as kept in a shared database, with its reservations; `lost` is set before
    /// the takeover signal fires when the lease could not be kept (not renewed in time, or
    /// lapsed) rather than asked for.
    pub fn with_reservations(
        mut self,
        shared: Arc<dyn Reservations>,
        lost: Arc<AtomicBool>,
    ) -> Self {
        self.shared = Some(shared);
        self.lost = lost;
        self
    }

    /// The fence a writer under this lease carries.
    pub fn fence(&self) -> crate::data::Fence {
        match &self.shared {
            Some(r) => crate::data::Fence::Shared(self.epoch, r.clone()),
            None => crate::data::Fence::Epoch(self.epoch),
        }
    }

    /// The upload this lease is for.
    pub fn id(&self) -> UploadId {
        self.id
    }

    /// Grows with every lease of the upload: the fence its writes carry
    /// ([`crate::data::Fence::Epoch`]), so a store refuses a superseded holder.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Resolves when another request wants this upload: commit and let go promptly.
    pub fn taken_over(&self) -> WaitForCancellationFuture<'_> {
        self.takeover.cancelled()
    }

    /// Whether another request has asked for this upload (or the lease is lost).
    pub fn is_taken_over(&self) -> bool {
        self.takeover.is_cancelled()
    }

    /// Whether the takeover signal means the lease was lost (its database could not renew
    /// it in time) rather than wanted by another request: a failure of this server, not the
    /// client's conflict.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

/// Hands out [`Lease`]s: [`LocalLocker`] within one process, `PgLocker` across the instances
/// sharing a PostgreSQL database.
#[async_trait]
pub trait Locker: Send + Sync + 'static {
    /// Takes the upload's lease, asking a current holder to let go first. Fails with `Busy` if
    /// the holder does not let go within the locker's patience.
    async fn acquire(&self, id: UploadId) -> Result<Lease>;

    /// Takes the lease only if nobody holds it; `Busy` otherwise (the holder is not disturbed).
    async fn try_acquire(&self, id: UploadId) -> Result<Lease>;
}

struct Slot {
    generation: u64,
    takeover: CancellationToken,
    released: watch::Sender<bool>,
}

#[derive(Default)]
struct Slots {
    next_generation: u64,
    map: HashMap<UploadId, Slot>,
}

/// Leases within one process.
#[derive(Clone)]
pub struct LocalLocker {
    slots: Arc<Mutex<Slots>>,
    patience: Duration,
}

impl std::fmt::Debug for LocalLocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLocker")
            .field("patience", &self.patience)
            .finish_non_exhaustive()
    }
}

impl LocalLocker {
    /// A locker that waits up to `patience` for a holder to let go.
    pub fn new(patience: Duration) -> Self {
        Self {
            slots: Arc::default(),
            patience,
        }
    }
}

struct Release {
    slots: Arc<Mutex<Slots>>,
    id: UploadId,
    generation: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots
            .map
            .get(&self.id)
            .is_some_and(|s| s.generation == self.generation)
            && let Some(slot) = slots.map.remove(&self.id)
        {
            slot.released.send_replace(true);
        }
    }
}

impl LocalLocker {
    fn grant(&self, slots: &mut Slots, id: UploadId) -> Lease {
        slots.next_generation += 1;
        let generation = slots.next_generation;
        let takeover = CancellationToken::new();
        let (tx, _) = watch::channel(false);
        slots.map.insert(
            id,
            Slot {
                generation,
                takeover: takeover.clone(),
                released: tx,
            },
        );
        let release = Release {
            slots: self.slots.clone(),
            id,
            generation,
        };
        // The generation only grows (per process, and data stores keep epochs no longer than
        // the process): a later lease of the same upload always has a later epoch.
        Lease::new(id, generation, takeover, Box::new(release))
    }
}

#[async_trait]
impl Locker for LocalLocker {
    async fn try_acquire(&self, id: UploadId) -> Result<Lease> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.map.contains_key(&id) {
            return Err(StoreError::Busy(id));
        }
        Ok(self.grant(&mut slots, id))
    }

    async fn acquire(&self, id: UploadId) -> Result<Lease> {
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            let mut released = {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                match slots.map.get(&id) {
                    None => return Ok(self.grant(&mut slots, id)),
                    Some(slot) => {
                        slot.takeover.cancel();
                        slot.released.subscribe()
                    }
                }
            };
            // Woken when the holder releases (or its slot disappears); then race for the slot.
            let wait = released.wait_for(|r| *r);
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                return Err(StoreError::Busy(id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> UploadId {
        UploadId::from_bytes([n; 16])
    }

    #[tokio::test]
    async fn newcomer_takes_over_and_holder_is_signalled() {
        let locker = LocalLocker::new(Duration::from_secs(5));
        let first = locker.acquire(id(1)).await.unwrap();
        assert!(!first.is_taken_over());
        let l2 = locker.clone();
        let second = tokio::spawn(async move { l2.acquire(id(1)).await });
        // The holder is told to let go, then lets go.
        tokio::time::timeout(Duration::from_secs(5), first.taken_over())
            .await
            .expect("holder signalled");
        let first_epoch = first.epoch();
        drop(first);
        let second = second.await.unwrap().unwrap();
        assert!(!second.is_taken_over());
        // The fence its writes carry: the successor's is later.
        assert!(second.epoch() > first_epoch);
        assert!(!second.is_lost(), "in-process leases last until released");
    }

    #[tokio::test]
    async fn independent_uploads_do_not_interfere() {
        let locker = LocalLocker::new(Duration::from_secs(5));
        let a = locker.acquire(id(1)).await.unwrap();
        let b = locker.acquire(id(2)).await.unwrap();
        assert!(!a.is_taken_over() && !b.is_taken_over());
    }

    #[tokio::test(start_paused = true)]
    async fn stubborn_holder_gives_busy() {
        let locker = LocalLocker::new(Duration::from_millis(200));
        let _held = locker.acquire(id(1)).await.unwrap();
        let err = locker.acquire(id(1)).await.unwrap_err();
        assert!(matches!(err, StoreError::Busy(_)));
    }

    #[tokio::test]
    async fn try_acquire_never_disturbs_a_holder() {
        let locker = LocalLocker::new(Duration::from_secs(1));
        let held = locker.acquire(id(4)).await.unwrap();
        assert!(matches!(
            locker.try_acquire(id(4)).await,
            Err(StoreError::Busy(_))
        ));
        assert!(!held.is_taken_over());
        drop(held);
        assert!(locker.try_acquire(id(4)).await.is_ok());
    }

    #[tokio::test]
    async fn released_lease_can_be_retaken() {
        let locker = LocalLocker::new(Duration::from_secs(1));
        drop(locker.acquire(id(3)).await.unwrap());
        let again = locker.acquire(id(3)).await.unwrap();
        assert!(!again.is_taken_over());
    }
}
