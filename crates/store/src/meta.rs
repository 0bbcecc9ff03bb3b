//! The metadata-store seam: where the facts about uploads live.
//!
//! Implementations: redb (embedded, default); later PostgreSQL and Redis for several servers.
//! Every mutating call is durable when it returns (the store commits with fsync), so an offset
//! committed here may be acknowledged to a client.

use crate::error::Result;
use crate::model::UploadInfo;
use async_trait::async_trait;
use ferry_proto::UploadId;

/// A change applied atomically to one stored record.
pub type Update = Box<dyn FnOnce(&mut UploadInfo) -> Result<()> + Send>;

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

    /// Removes a record; removing a missing one is not an error.
    async fn remove(&self, id: UploadId) -> Result<()>;

    /// Every record (for sweepers and tools; not on a request path).
    async fn list(&self) -> Result<Vec<UploadInfo>>;
}
