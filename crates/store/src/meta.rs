//! The metadata-store seam: where the facts about uploads live.
//!
//! Implementations: redb (embedded, default); later PostgreSQL for several servers. Every
//! mutating call is durable when it returns (the store commits with fsync), so an offset
//! committed here may be acknowledged to a client.
//!
//! Changes are closures over the records as they are when the store applies them. A store may
//! run one more than once (an optimistic store retries it on a serialization conflict), so a
//! change must depend only on the records it is given.

use crate::error::Result;
use crate::model::UploadInfo;
use async_trait::async_trait;
use ferry_proto::UploadId;
use std::collections::BTreeMap;

/// A change applied atomically to one stored record; may run more than once.
pub type Update = Box<dyn Fn(&mut UploadInfo) -> Result<()> + Send + Sync>;

/// The records a [`Transaction`] sees, by id: `None` for a record that does not exist. Setting
/// an entry to `None` removes the record; adding an entry inserts one.
pub type Records = BTreeMap<UploadId, Option<UploadInfo>>;

/// A change to several records, committed all together or not at all; may run more than once.
pub type Transaction = Box<dyn Fn(&mut Records) -> Result<()> + Send + Sync>;

/// Stores [`UploadInfo`] records.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Inserts a new record; fails with `AlreadyExists` if the id is taken.
    async fn insert(&self, info: &UploadInfo) -> Result<()>;

    /// Reads the committed record. Never waits for writers.
    async fn get(&self, id: UploadId) -> Result<Option<UploadInfo>>;

    /// Applies `update` to the stored record atomically and durably, returning the new record.
    /// `NotFound` if there is none; if `update` fails nothing changes.
    async fn update(&self, id: UploadId, update: Update) -> Result<UploadInfo>;

    /// [`update`](Self::update) by the holder of the upload's lease at `epoch`: applied only
    /// while that lease is still the upload's latest ([`StoreError::Fenced`] otherwise), and
    /// ordered against grants of the lease, so that a successor reads either this change or
    /// none. A store whose leases are in-process (redb: one process, whose locker never grants
    /// a lease while another is held) applies it as [`update`](Self::update).
    ///
    /// [`StoreError::Fenced`]: crate::StoreError::Fenced
    async fn update_fenced(&self, id: UploadId, epoch: u64, update: Update) -> Result<UploadInfo> {
        let _ = epoch;
        self.update(id, update).await
    }

    /// Removes a record; removing a missing one is not an error.
    async fn remove(&self, id: UploadId) -> Result<()>;

    /// Reads the records `ids` (absent ones as `None`), applies `tx`, and commits every entry
    /// of the map it leaves (changed, added or set to `None`) in one durable transaction. If
    /// `tx` fails nothing changes. Returns the records as committed.
    async fn transact(&self, ids: Vec<UploadId>, tx: Transaction) -> Result<Records>;

    /// Up to `limit` records that expired at or before `now` (ms since the epoch), in id order,
    /// starting after `after`: a sweeper pages through them in bounded memory by passing the
    /// last id of one page to get the next. An empty page is the end.
    async fn expired(
        &self,
        now: u64,
        after: Option<UploadId>,
        limit: usize,
    ) -> Result<Vec<UploadInfo>>;

    /// How many records are unfinished (not deleted, offset short of the length or length
    /// unknown). Not on every request path: the engine keeps an estimate and counts again
    /// only when the estimate reaches the limit on unfinished uploads.
    async fn count_unfinished(&self) -> Result<u64>;

    /// Every record (for tools such as `ferry fsck`; not on a request path).
    async fn list(&self) -> Result<Vec<UploadInfo>>;
}
