//! The data-store seam: where an upload's bytes live.
//!
//! The contract is small so that a local directory, an S3 multipart upload or anything else can
//! sit behind it without the server changing (docs/architecture.md, "The data-store contract"):
//! - `create` makes an empty object, durably when the store is asked to sync, and returns its
//!   [`Locator`]: the store's own handle, kept in the upload's record;
//! - a [`DataWriter`] writes at a position (appends for tus/IETF, any position for chunk
//!   sessions) under a [`Fence`]; `checkpoint` makes everything written so far durable and
//!   returns the locator to commit with the new offset (an object store's parts, say);
//! - `finish` runs once every byte is recorded, before the upload counts as complete;
//! - `read` streams a byte range of a finished object; bytes past the committed offset are
//!   never read, so a store may keep, overwrite or drop them;
//! - `delete` removes an object (idempotent).
//!
//! Every call names the object by its id and its committed locator, so any instance can carry
//! on from the record alone. Final (concatenated) uploads have no object of their own: the
//! engine reads across parts.

use crate::error::Result;
use async_trait::async_trait;
use bytes::Bytes;
use ferry_proto::UploadId;
use futures_core::Stream;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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

/// Where a store keeps one upload's bytes, in the store's own terms: the file for the local
/// store; the key, multipart upload id, recorded parts and staged pieces for an object store.
/// Opaque to everything but the store that made it. It lives in the upload's record and is
/// committed together with the offset it covers, so whoever continues the upload (after a
/// restart, on another instance) finds the bytes from the record alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Locator(pub serde_json::Value);

impl Locator {
    /// No object: a final upload (read across its parts) or a record not yet placed.
    pub fn none() -> Self {
        Self(serde_json::Value::Null)
    }

    /// Whether this names no object.
    pub fn is_none(&self) -> bool {
        self.0.is_null()
    }
}

/// The reconciler's question to the metadata: who owns `id`'s data ([`Owned`]).
pub type Owner<'a> =
    dyn Fn(UploadId) -> Pin<Box<dyn Future<Output = Result<Owned>> + Send + 'a>> + Send + Sync + 'a;

/// Who owns an upload's data, as the reconciler asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    /// No record (none exists, or it is a final, which has no object of its own).
    Nobody,
    /// The record, with its committed locator.
    Record(Locator),
    /// A request is writing it right now (a chunk session's ranges, staged before their
    /// commit names them): left alone this time.
    Busy,
}

/// What a store really holds of an upload's committed state ([`DataStore::holds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// How far the data reaches: the end of the last byte held (a chunk session's ranges may
    /// leave gaps, as a sparse file does).
    pub bytes: u64,
    /// The locator that covers exactly them: the committed one when nothing is missing.
    pub at: Locator,
}

/// How a writer treats bytes already stored past its start position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Append-only from the committed `offset`. Bytes stored past it were never committed:
    /// the store may overwrite, ignore or drop them, and they are never read.
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
#[derive(Clone)]
pub enum Fence {
    /// The holder of the upload's in-process lease at this epoch
    /// ([`crate::lock::Lease::epoch`]), with one writer open per lease. Once a writer of a
    /// later epoch has opened the upload, every write of an earlier one fails with
    /// [`StoreError::Fenced`](crate::StoreError::Fenced), and so does opening one, then or
    /// later.
    Epoch(u64),
    /// The same, for a lease kept in a database shared by instances: the store also reserves
    /// the numbers it writes under against the lease ([`Reservations`]), since a superseded
    /// writer in another process is beyond its in-process fences.
    Shared(u64, Arc<dyn Reservations>),
    /// A chunk-session writer: many write disjoint ranges at once, each range claimed in the
    /// metadata (a takeover there ends the older claim's request); no epoch applies.
    Claim,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fence::Epoch(e) => write!(f, "Epoch({e})"),
            Fence::Shared(e, r) => write!(f, "Shared({e}, past {})", r.reserved_before()),
            Fence::Claim => f.write_str("Claim"),
        }
    }
}

impl Fence {
    /// The lease epoch, for a writer under a lease.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Fence::Epoch(e) | Fence::Shared(e, _) => Some(*e),
            Fence::Claim => None,
        }
    }
}

/// What a lease kept in a database shared by instances adds to an in-process one: numbers a
/// store writes under (an object store's part numbers) reserved against the lease's epoch.
/// A holder that was paused (or cut off) may still finish a write it had started when its
/// successor begins; the successor starts past every number its predecessors reserved, so
/// such a late write lands where no record points. Within one process the store's own fences
/// do this (`crate::fence`).
#[async_trait]
pub trait Reservations: Send + Sync + 'static {
    /// Reserves numbers up to `n` for this holder, if its lease is still the upload's latest
    /// and has not lapsed; [`StoreError::Fenced`](crate::StoreError::Fenced) (or
    /// `Unavailable`) otherwise: the write must not start.
    async fn reserve(&self, n: u32) -> Result<()>;

    /// The highest number reserved before this lease was granted (0: none).
    fn reserved_before(&self) -> u32;
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

    /// Which store this is (`local`, `s3://BUCKET/PREFIX`). A data directory's metadata is
    /// bound to the store its records' locators belong to, and refuses another: records of
    /// S3 uploads read with the local store (or the other way round) would look like lost data
    /// and be repaired or swept away.
    fn identity(&self) -> String;

    /// Bytes free for new data, if the store can tell (local disks can; object stores
    /// cannot). Checked when an upload declares its length, so it is refused at creation
    /// rather than running out of space half-way.
    fn free_space(&self) -> Option<u64> {
        None
    }

    /// Creates an empty object for `id` and returns its locator, to be stored in the upload's
    /// record. With `durable`, the object survives a crash once this returns. `length` is the
    /// upload's length when it is declared at creation: an object store sizes its parts by it.
    async fn create(&self, id: UploadId, durable: bool, length: Option<u64>) -> Result<Locator>;

    /// Opens a writer on the object `at` (the committed locator), positioned per `mode`,
    /// writing under `fence`.
    async fn open_writer(
        &self,
        id: UploadId,
        at: &Locator,
        mode: WriteMode,
        fence: Fence,
    ) -> Result<Box<dyn DataWriter>>;

    /// Makes a fully written object whole (an object store completes its multipart upload from
    /// the recorded parts) and returns the locator to record. The engine calls it once all
    /// `length` bytes are committed with `at`, and records the result before the upload counts
    /// as complete. It must be safe to run again with the same `at` (a crash may come between
    /// it and that record) and on its own result.
    async fn finish(&self, id: UploadId, at: &Locator, length: u64) -> Result<Locator>;

    /// `at` marked so that `finish` writes under no number reserved before the lease `fence`
    /// carries (`Fence::Shared`): for a commit that completes an upload with no writer opened
    /// under that lease (a length declared at the offset reached), while a superseded holder's
    /// write may still land. Stores that number nothing return `at` unchanged.
    fn past_reserved(&self, at: &Locator, fence: &Fence) -> Result<Locator> {
        let _ = fence;
        Ok(at.clone())
    }

    /// The locator to record when a random-access writer ([`Fence::Claim`]) commits: its
    /// checkpoint covers only its own writes, and other writers commit theirs into the same
    /// record meanwhile, so the engine merges `written` into the `recorded` locator inside the
    /// record's atomic update (possibly more than once). The local store's locator never
    /// changes; an object store adds the staged pieces.
    fn merge_locators(&self, recorded: &Locator, written: &Locator) -> Result<Locator>;

    /// Streams bytes `[start, end)` of a finished object: `at` is what [`finish`](Self::finish)
    /// returned (an object store cannot read a multipart upload's parts before it is
    /// complete), and the range lies within the finished length.
    async fn read(&self, id: UploadId, at: &Locator, start: u64, end: u64) -> Result<ByteStream>;

    /// Removes the object. Removing a missing object is not an error.
    async fn delete(&self, id: UploadId, at: &Locator) -> Result<()>;

    /// Every stored object with its size in bytes (for `ferry fsck`; not on a request path).
    async fn inventory(&self) -> Result<Vec<(UploadId, u64)>>;

    /// How much of the committed state `at` the store really holds, checked against the
    /// store itself (an object store lists the recorded parts, with their ETags and sizes, and
    /// the staged pieces), or `None` when the object is gone. For `ferry fsck` and the check
    /// `ferry serve` runs in the background at startup; not on a request path.
    async fn holds(&self, id: UploadId, at: &Locator) -> Result<Option<Holding>>;

    /// One pass of the reconciler: removes what the store holds that no committed state needs
    /// and that was last written before `cutoff` (ms since the epoch; `None`: whatever its
    /// age, for when nothing can be writing). Everything of an id that `owner` says no record
    /// owns goes; of an owned one, an object store removes the staged pieces and multipart
    /// uploads its committed locator does not name. The store is listed before any owner is
    /// asked, so whatever a commit names meanwhile is in the answer or too young to go.
    /// Returns how many things were removed.
    async fn reconcile(&self, owner: &Owner<'_>, cutoff: Option<u64>) -> Result<usize>;

    /// The locator of an object this store holds for `id` without one recorded: data written
    /// before locators were recorded (metadata layout 1), and stray objects `ferry fsck`
    /// removes. `None` if the store cannot derive it.
    fn derived_locator(&self, id: UploadId) -> Option<Locator> {
        let _ = id;
        None
    }
}

/// Writes one object. Obtained under the upload's lease, so there is one writer per upload.
#[async_trait]
pub trait DataWriter: Send {
    /// Position of the next byte.
    fn position(&self) -> u64;

    /// Starts writing `buf` at [`position`](Self::position) and advances the position at once.
    /// The write proceeds in the background: the returned future may be awaited later (the
    /// caller fills its next buffer meanwhile) and yields `buf` back for reuse. Writes must be
    /// awaited in order before [`checkpoint`](Self::checkpoint).
    fn write(&mut self, buf: Vec<u8>) -> PendingWrite;

    /// Makes every completed write durable (with `durable`; fdatasync for files; an object
    /// store has its bytes in the bucket either way) and returns the locator that covers them,
    /// to be committed with the new offset.
    async fn checkpoint(&mut self, durable: bool) -> Result<Locator>;
}
