//! Storage for ferry: where the bytes and the facts about uploads live.
//!
//! - [`data::DataStore`] stores bytes (local files now; S3 multipart later);
//! - [`meta::MetaStore`] stores [`model::UploadInfo`] records (redb embedded, or PostgreSQL
//!   shared by instances);
//! - [`lock::Locker`] hands out per-upload leases with takeover;
//! - [`uploads::Uploads`] binds them and owns the durability order.
//!
//! [`conformance`] holds the checks every implementation must pass.

pub mod chunked;
pub mod data;
mod engine;
pub mod error;
mod fence;
pub mod fsck;
pub mod local;
pub mod lock;
pub mod meta;
pub mod model;
pub mod pg_meta;
mod record;
pub mod redb_meta;
pub mod s3;
pub mod uploads;

#[cfg(test)]
mod test_support;

#[cfg(feature = "crash-sim")]
pub mod crash_sim;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use chunked::{MAX_SESSION_RANGES, RangeWrite};
pub use error::{Result, StoreError};
pub use lock::Lease;
pub use model::{Protocol, RangeSet, UploadInfo, UploadKind};
pub use uploads::{Append, NewUpload, SyncPolicy, Uploads};
