//! The data-store seam: where an upload's bytes live.
//!
//! The contract is small so that a local directory, an S3 multipart upload or anything else can
//! sit behind it without the server changing:
//! - `create` makes an empty object, durably when the store is asked to sync;
//! - a [`DataWriter`] writes at a position (appends for tus/IETF, any position for chunk
//!   sessions) and makes everything written so far durable on `sync`;
//! - `read` streams a byte range of one object;
//! - `delete` removes an object (idempotent).
//!
//! Final (concatenated) uploads have no object of their own: the engine reads across parts.

use crate::error::Result;
use async_trait::async_trait;
use bytes::Bytes;
use ferry_proto::UploadId;
use futures_core::Stream;
use std::future::Future;
use std::pin::Pin;

/// A stream of bytes read from a store.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A write in flight; resolves to the buffer, handed back for reuse.
pub type PendingWrite = Pin<Box<dyn Future<Output = Result<Vec<u8>>> + Send>>;

/// A stream that fails at once with `e`: a read that could not be opened, where a stream is
/// expected.
pub fn failed_stream(e: impl std::fmt::Display) -> ByteStream {
    let e = std::io::Error::other(e.to_string());
    Box::pin(futures_util::stream::once(async move { Err(e) }))
}

/// How a writer treats bytes already stored past its start position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Append-only: bytes stored past `offset` were never committed and are cut away.
    Append {
        /// The committed offset to continue from.
        offset: u64,
    },
    /// Random access (chunk sessions): keep everything, write starting at `offset`.
    At {
        /// Where the first byte goes.
        offset: u64,
    },
}

/// Who writes: a store refuses a writer whose lease has been superseded, so that a request that
/// lost its upload (taken over, its lease expired) cannot change bytes its successor wrote and
/// committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The holder of the upload's lease at this epoch ([`crate::lock::Lease::epoch`]), with one
    /// writer open per lease. Once a writer of a later epoch has opened the upload, every write
    /// of an earlier one fails with [`StoreError::Fenced`](crate::StoreError::Fenced), and so
    /// does opening one, then or later.
    Epoch(u64),
    /// A chunk-session writer: many write disjoint ranges at once, each range claimed in the
    /// metadata (a takeover there ends the older claim's request); no epoch applies.
    Claim,
}

/// What a data store can do. The server derives what it offers from this (docs/architecture.md,
/// "Capabilities"): what a store cannot do is not announced, and its routes say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataCapabilities {
    /// Writes at arbitrary positions: Content-Range chunk sessions.
    pub random_access: bool,
    /// Final uploads served from their parts' bytes in order: tus concatenation.
    pub concatenation: bool,
    /// Reads of any byte range: `Range` on downloads (else whole representations only).
    pub ranged_reads: bool,
}

impl DataCapabilities {
    /// Everything (the local store).
    pub const ALL: DataCapabilities = DataCapabilities {
        random_access: true,
        concatenation: true,
        ranged_reads: true,
    };
}

/// Stores the bytes of uploads.
#[async_trait]
pub trait DataStore: Send + Sync + 'static {
    /// What this store supports.
    fn capabilities(&self) -> DataCapabilities;

    /// Bytes free for new data, if the store can tell (local disks can; object stores
    /// cannot). Checked when an upload declares its length, so it is refused at creation
    /// rather than running out of space half-way.
    fn free_space(&self) -> Option<u64> {
        None
    }

    /// Creates an empty object for `id`. With `durable`, the object survives a crash once this
    /// returns.
    async fn create(&self, id: UploadId, durable: bool) -> Result<()>;

    /// Opens a writer positioned per `mode`, writing under `fence`.
    async fn open_writer(
        &self,
        id: UploadId,
        mode: WriteMode,
        fence: Fence,
    ) -> Result<Box<dyn DataWriter>>;

    /// Streams bytes `[start, end)` of the object. The caller guarantees the range was committed.
    async fn read(&self, id: UploadId, start: u64, end: u64) -> Result<ByteStream>;

    /// Removes the object. Removing a missing object is not an error.
    async fn delete(&self, id: UploadId) -> Result<()>;

    /// Every stored object with its size in bytes (for `ferry fsck`; not on a request path).
    async fn inventory(&self) -> Result<Vec<(UploadId, u64)>>;
}

/// Writes one object. Obtained under the upload's lease, so there is one writer per upload.
#[async_trait]
pub trait DataWriter: Send {
    /// Position of the next byte.
    fn position(&self) -> u64;

    /// Starts writing `buf` at [`position`](Self::position) and advances the position at once.
    /// The write proceeds in the background: the returned future may be awaited later (the
    /// caller fills its next buffer meanwhile) and yields `buf` back for reuse. Writes must be
    /// awaited in order before [`sync`](Self::sync).
    fn write(&mut self, buf: Vec<u8>) -> PendingWrite;

    /// Makes every completed write durable (fdatasync for files).
    async fn sync(&mut self) -> Result<()>;
}
