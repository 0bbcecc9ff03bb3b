//! The data store on S3-compatible object storage (docs/architecture.md, "S3").
//!
//! Each upload is a multipart upload of the object `{prefix}{id}`. Its locator holds the key,
//! the multipart upload id, every recorded part (number, ETag, size) and the staged pieces:
//! write-once objects `{prefix}{id}.staged/{epoch}-{nonce}-{seq}` with the bytes acknowledged
//! after the last part. A writer spools what it receives to a local file; a full part goes to S3 as
//! its bytes arrive, and a checkpoint stages the rest, so that an acknowledged offset is in the
//! bucket. No byte is uploaded more than twice (staged once, then once more in a part), and no
//! object is ever rewritten. `finish` uploads the staged tail as the last part and completes
//! the object from the recorded parts (never from ListParts).
//!
//! Part numbers belong to one writer: a writer starts after every number the store lists or
//! the record holds, and a writer that was taken over in this process is fenced out before each
//! S3 request (it holds the fence's read lock across the request, so the new writer's listing
//! sees anything it sent).

use super::client::S3Client;
use super::place::{Place, Spools, Turns, spool_file, unstage};
use super::plan::equal_part;
use super::writer::{S3Writer, Start};
use crate::data::{
    ByteStream, DataCapabilities, DataStore, DataWriter, Fence, Holding, Locator, Owner, WriteMode,
};
use crate::error::{Result, StoreError};
use crate::fence::Fences;
use async_trait::async_trait;
use bytes::Bytes;
use ferry_proto::UploadId;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) struct Inner {
    pub(super) client: S3Client,
    pub(super) prefix: String,
    /// Where writers spool what they receive.
    pub(super) spool: PathBuf,
    pub(super) fences: Fences,
    /// This store's hold on the spool directory (writers hold it too).
    pub(super) spool_lock: Arc<std::fs::File>,
    /// Finishes under way, by upload.
    finishing: Turns,
    /// Appenders' spools kept for the next writer of their upload.
    spools: Arc<Spools>,
}

/// Takes the spool directory (an exclusive lock on `.lock` in it): another live store on the
/// same directory is refused. Writers hold the lock too, so it outlives none of their files.
fn claim_spool(spool: &Path) -> Result<Arc<std::fs::File>> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(spool.join(".lock"))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StoreError::Metadata(format!(
                "another ferry process is using {}",
                spool.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    Ok(Arc::new(lock))
}

/// Uploads in an S3 bucket.
#[derive(Clone)]
pub struct S3DataStore {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for S3DataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3DataStore")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl S3DataStore {
    /// Uploads under `prefix` (`""` or ending in `/`) of `client`'s bucket, spooling in
    /// `spool` (created if needed).
    pub fn new(client: S3Client, prefix: &str, spool: &Path) -> Result<Self> {
        std::fs::create_dir_all(spool)?;
        let lock = claim_spool(spool)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                prefix: prefix.to_string(),
                spool: spool.to_path_buf(),
                fences: Fences::default(),
                spool_lock: lock,
                finishing: Turns::default(),
                spools: Arc::default(),
            }),
        })
    }

    /// Empties the spool of what a process that died left there (spool files are temporary,
    /// and one can be as large as a part). Run before any writer starts, under the data
    /// directory's lock.
    pub fn empty_spool(&self) -> Result<()> {
        for entry in std::fs::read_dir(&self.inner.spool)? {
            let entry = entry?;
            if entry.file_name() != ".lock" && entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Checks that the bucket is there and that ferry may write, list multipart uploads and
    /// delete in it (with an object of its own under the prefix). The error is one line
    /// naming the bucket and what is missing; `Setup` when a setting or a permission is wrong,
    /// `Unavailable` when the store could not be reached (try again later).
    pub async fn check_access(&self) -> std::result::Result<(), AccessError> {
        let c = &self.inner.client;
        let bucket = c.bucket_name();
        let setup = |why: String| AccessError::Setup(why);
        let fail = |e: StoreError, why: String| match e {
            StoreError::Unavailable(_) => AccessError::Unavailable(format!("{why}: {e}")),
            e => AccessError::Setup(format!("{why}: {e}")),
        };
        if let Err(e) = c.head_bucket().await {
            let text = e.to_string();
            return Err(if text.contains(": 404 ") {
                setup(format!("S3 bucket {bucket} does not exist (--store)"))
            } else if text.contains(": 403 ") {
                setup(format!(
                    "S3 bucket {bucket}: access denied (check AWS_ACCESS_KEY_ID, \
                     AWS_SECRET_ACCESS_KEY and --s3-region)"
                ))
            } else {
                fail(
                    e,
                    format!("S3 bucket {bucket} cannot be reached (--s3-endpoint?)"),
                )
            });
        }
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        let probe = format!(
            "{}.ferry-access-check-{:016x}",
            self.inner.prefix,
            u64::from_le_bytes(b)
        );
        c.put_object(&probe, Bytes::from_static(b"ferry"))
            .await
            .map_err(|e| {
                fail(
                    e,
                    format!("S3 bucket {bucket}: cannot write (s3:PutObject)"),
                )
            })?;
        let listed = c.list_uploads(&self.inner.prefix).await.map_err(|e| {
            fail(
                e,
                format!(
                    "S3 bucket {bucket}: cannot list multipart uploads \
                     (s3:ListBucketMultipartUploads)"
                ),
            )
        });
        let deleted = c.delete_object(&probe).await.map_err(|e| {
            fail(
                e,
                format!("S3 bucket {bucket}: cannot delete (s3:DeleteObject)"),
            )
        });
        listed.and(deleted).map(|_| ())
    }

    /// Claims the prefix for the data directory `owner` names (an object
    /// `{prefix}.ferry-owner` holding it): a prefix written by another data directory would
    /// look, to this one's records, like data nobody owns, and be swept away.
    pub async fn claim(&self, owner: &str) -> std::result::Result<(), AccessError> {
        let c = &self.inner.client;
        let key = format!("{}.ferry-owner", self.inner.prefix);
        let bucket = c.bucket_name();
        let fail = |e: StoreError, what: &str| match e {
            StoreError::Unavailable(_) => AccessError::Unavailable(format!("{what}: {e}")),
            e => AccessError::Setup(format!("S3 bucket {bucket}: {what}: {e}")),
        };
        let read = || async {
            c.get_object(&key)
                .await
                .map_err(|e| fail(e, "cannot read its owner marker (s3:GetObject)"))
        };
        // Read first, so that a store that ignores If-None-Match never has a marker replaced;
        // written only where there is none (If-None-Match), so two directories starting at
        // once cannot both claim the prefix; then read back whatever is there.
        let mut found = read().await?;
        if found.is_none() {
            c.put_if_absent(&key, owner.as_bytes().to_vec())
                .await
                .map_err(|e| fail(e, "cannot write its owner marker (s3:PutObject)"))?;
            found = read().await?;
        }
        match found {
            Some(found) if found == owner.as_bytes() => Ok(()),
            Some(found) => Err(AccessError::Setup(format!(
                "{} belongs to another ferry data directory ({key} names {}, this directory's \
                 s3-owner is {owner}): give each data directory a prefix of its own",
                self.identity(),
                String::from_utf8_lossy(&found[..found.len().min(64)])
            ))),
            None => Err(AccessError::Setup(format!(
                "S3 bucket {bucket}: the owner marker {key} was written but cannot be read back"
            ))),
        }
    }

    /// The data directory the prefix belongs to: its owner marker's content, if any.
    pub async fn owner(&self) -> Result<Option<String>> {
        let key = format!("{}.ferry-owner", self.inner.prefix);
        let found = self.inner.client.get_object(&key).await?;
        Ok(found.map(|b| String::from_utf8_lossy(&b).trim().to_string()))
    }

    fn key(&self, id: UploadId) -> String {
        format!("{}{id}", self.inner.prefix)
    }
}

/// The most staged pieces an upload's record holds (a chunk session's chunks, each staged on
/// its own until the finish): 10,000 pieces make a record of about 1 MB.
const MAX_PIECES: usize = 10_000;

/// A random number naming a writer's staged pieces.
fn nonce() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
    Ok(u64::from_le_bytes(b))
}

/// Why the store cannot be used.
#[derive(Debug)]
pub enum AccessError {
    /// A setting or permission is wrong: fix it and start again.
    Setup(String),
    /// The store cannot be reached now.
    Unavailable(String),
}

impl std::fmt::Display for AccessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessError::Setup(why) | AccessError::Unavailable(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for AccessError {}

#[async_trait]
impl DataStore for S3DataStore {
    fn identity(&self) -> String {
        format!(
            "s3://{}/{}",
            self.inner.client.bucket_name(),
            self.inner.prefix
        )
    }

    fn capabilities(&self) -> DataCapabilities {
        DataCapabilities {
            // Each range is staged on its own and assembled into parts by `finish`.
            random_access: true,
            concatenation: true,
            ranged_reads: true,
        }
    }

    async fn create(&self, id: UploadId, _durable: bool, length: Option<u64>) -> Result<Locator> {
        let key = self.key(id);
        let c = &self.inner.client;
        // Ids are random: a clash is a bug or a replay, and must not share an object.
        if c.head_size(&key).await?.is_some()
            || c.list_uploads(&key).await?.iter().any(|u| u.key == key)
        {
            return Err(StoreError::AlreadyExists(id));
        }
        let upload = c.create_multipart(&key).await?;
        Ok(Place {
            key,
            upload: Some(upload),
            part: length.and_then(equal_part),
            ..Place::default()
        }
        .locator())
    }

    async fn open_writer(
        &self,
        id: UploadId,
        at: &Locator,
        mode: WriteMode,
        fence: Fence,
    ) -> Result<Box<dyn DataWriter>> {
        let mut place = Place::of(at)?;
        let (offset, epoch, reservations) = match (mode, fence) {
            (WriteMode::Append { offset }, Fence::Epoch(epoch)) => (offset, epoch, None),
            (WriteMode::Append { offset }, Fence::Shared(epoch, r)) => (offset, epoch, Some(r)),
            // A chunk session's range: staged on its own at each checkpoint; the claims in
            // the metadata keep writers to disjoint ranges.
            (WriteMode::At { offset }, Fence::Claim) => {
                let upload = place.upload()?.to_string();
                return Ok(Box::new(S3Writer::new(Start {
                    client: self.inner.client.clone(),
                    spool_dir: self.inner.spool.clone(),
                    spool_lock: self.inner.spool_lock.clone(),
                    spools: self.inner.spools.clone(),
                    id,
                    writer: format!("r{offset:016x}-{:016x}", nonce()?),
                    place: Place {
                        key: place.key,
                        upload: Some(upload.clone()),
                        part: place.part,
                        ..Place::default()
                    },
                    upload,
                    next: 1,
                    spool: spool_file(&self.inner.spool)?,
                    at: offset,
                    appends: false,
                    fenced: None,
                    reservations: None,
                })));
            }
            _ => {
                return Err(StoreError::Inconsistent(
                    "the S3 store appends under a lease and writes ranges under claims".into(),
                ));
            }
        };
        let fenced = Some(self.inner.fences.enter(id, epoch).await?);
        let c = &self.inner.client;
        if place.done {
            return match c.head_size(&place.key).await? {
                Some(_) => Err(StoreError::Inconsistent(format!("upload {id} is complete"))),
                None => Err(StoreError::NotFound(id)),
            };
        }
        let upload = place.upload()?.to_string();
        // Every number already used, recorded or not (a writer taken over may have sent parts
        // it never recorded), is skipped. A missing upload is a deleted object.
        let listed = match c.list_parts(&place.key, &upload).await {
            Ok(l) => l,
            Err(e) if e.to_string().contains("NoSuchUpload") => {
                return Err(StoreError::NotFound(id));
            }
            Err(e) => return Err(e),
        };
        // The record is the truth: a recorded part the store does not list as recorded is
        // lost data, for `ferry fsck --repair` to cut the upload back to what is there.
        if let Some(p) = place.parts.iter().find(|p| !p.listed_in(&listed)) {
            return Err(StoreError::Inconsistent(format!(
                "upload {id}: its recorded part {} is not in the store as recorded",
                p.n
            )));
        }
        let end = place.end();
        if offset != end {
            return Err(StoreError::Inconsistent(format!(
                "upload {id}: {offset} bytes committed but the store holds {end}"
            )));
        }
        // And past every number a holder on another instance reserved: one that was
        // superseded mid-part may still be sending it.
        let reserved = reservations.as_ref().map_or(0, |r| r.reserved_before());
        let next = listed
            .iter()
            .map(|p| p.number)
            .chain(place.parts.iter().map(|p| p.n))
            .max()
            .unwrap_or(0)
            .max(u16::try_from(reserved).unwrap_or(u16::MAX))
            .max(place.used)
            .saturating_add(1);
        // Recorded with this writer's commits, for `finish` to number on past them too.
        place.used = next - 1;
        // The bytes after the last part: in the spool the last writer kept at this locator,
        // or from the staged pieces into a fresh one.
        let spool = match self.inner.spools.take(id, at) {
            Some(spool) => spool,
            None => {
                let spool = spool_file(&self.inner.spool)?;
                unstage(c, &place, place.parts_end(), end, spool.as_file()).await?;
                spool
            }
        };
        Ok(Box::new(S3Writer::new(Start {
            client: self.inner.client.clone(),
            spool_dir: self.inner.spool.clone(),
            spool_lock: self.inner.spool_lock.clone(),
            spools: self.inner.spools.clone(),
            id,
            // Staged keys are unique to this writer: epochs start again with the process, and
            // a key written twice would change a piece a record may name.
            writer: format!("{epoch:016x}-{:016x}", nonce()?),
            place,
            upload,
            next,
            spool,
            at: end,
            appends: true,
            fenced,
            reservations,
        })))
    }

    async fn finish(&self, id: UploadId, at: &Locator, length: u64) -> Result<Locator> {
        let mut place = Place::of(at)?;
        if place.done {
            return Ok(at.clone());
        }
        let c = &self.inner.client;
        // One finish of an upload at a time here (requests that read a record with its finish
        // pending run it too); one of another instance, or of a process that died, may have
        // completed the object already: then its size says so.
        let turn = self.inner.finishing.turn(id);
        let _turn = turn.lock().await;
        let complete = |size: Option<u64>| size == Some(length);
        if !complete(c.head_size(&place.key).await?) {
            let assembled = self.assemble(id, &place, length).await;
            // What the store completed, whatever the answer said: never an object of another
            // length recorded as this upload.
            match c.head_size(&place.key).await? {
                Some(size) if size == length => {}
                Some(size) if assembled.is_ok() => {
                    return Err(StoreError::Inconsistent(format!(
                        "upload {id}: completed as {size} bytes, not {length}"
                    )));
                }
                _ => {
                    return assembled.and(Err(StoreError::Inconsistent(format!(
                        "upload {id}: completed but not in the store"
                    ))));
                }
            }
        }
        self.inner.spools.forget(id);
        Ok(finished(&mut place, c).await)
    }

    fn past_reserved(&self, at: &Locator, fence: &Fence) -> Result<Locator> {
        // A final's bytes are its parts' (no locator of its own).
        let (Fence::Shared(_, r), false) = (fence, at.is_none()) else {
            return Ok(at.clone());
        };
        let mut place = Place::of(at)?;
        let reserved = u16::try_from(r.reserved_before()).unwrap_or(u16::MAX);
        if place.done || place.used >= reserved {
            return Ok(at.clone());
        }
        place.used = reserved;
        Ok(place.locator())
    }

    /// The recorded place with the range writer's staged pieces added (once each), in order.
    fn merge_locators(&self, recorded: &Locator, written: &Locator) -> Result<Locator> {
        let mut place = Place::of(recorded)?;
        let written = Place::of(written)?;
        if written.key != place.key {
            return Err(StoreError::Inconsistent(format!(
                "pieces of {} merged into {}",
                written.key, place.key
            )));
        }
        let known: std::collections::HashSet<String> =
            place.staged.iter().map(|p| p.key.clone()).collect();
        place.staged.extend(
            written
                .staged
                .into_iter()
                .filter(|p| !known.contains(&p.key)),
        );
        // The record holds every piece and is rewritten at each commit: bounded.
        if place.staged.len() > MAX_PIECES {
            return Err(StoreError::TooManyChunks { limit: MAX_PIECES });
        }
        place
            .staged
            .sort_by(|a, b| (a.at, &a.key).cmp(&(b.at, &b.key)));
        Ok(place.locator())
    }

    async fn read(&self, id: UploadId, at: &Locator, start: u64, end: u64) -> Result<ByteStream> {
        let place = Place::of(at)?;
        if !place.done {
            return Err(StoreError::Inconsistent(format!(
                "upload {id} is read before it is finished"
            )));
        }
        match self.inner.client.get_range(&place.key, start, end).await {
            Err(e) if e.to_string().contains(": 404") => Err(StoreError::NotFound(id)),
            other => other,
        }
    }

    async fn delete(&self, id: UploadId, at: &Locator) -> Result<()> {
        let place = Place::of(at)?;
        let c = &self.inner.client;
        // Every multipart upload of the key: a CreateMultipartUpload answered after its
        // request was retried leaves a second one.
        for u in c.list_uploads(&place.key).await? {
            if u.key == place.key {
                c.abort(&place.key, &u.upload_id).await?;
            }
        }
        if let Some(upload) = &place.upload {
            c.abort(&place.key, upload).await?;
        }
        // Every staged piece, recorded or not.
        for piece in c.list_objects(&format!("{}.staged/", place.key)).await? {
            c.delete_object(&piece.key).await?;
        }
        c.delete_object(&place.key).await?;
        self.inner.fences.forget(id);
        self.inner.spools.forget(id);
        Ok(())
    }

    /// Every upload the bucket holds anything of under the prefix: its object (with its size),
    /// staged pieces or multipart uploads (size 0 when there is no object).
    async fn inventory(&self) -> Result<Vec<(UploadId, u64)>> {
        Ok(self
            .held()
            .await?
            .into_iter()
            .map(|(id, h)| (id, h.object.map_or(0, |o| o.size)))
            .collect())
    }

    async fn holds(&self, _id: UploadId, at: &Locator) -> Result<Option<Holding>> {
        self.holding(at).await
    }

    async fn reconcile(&self, owner: &Owner<'_>, cutoff: Option<u64>) -> Result<usize> {
        self.reconcile_bucket(owner, cutoff).await
    }

    fn derived_locator(&self, id: UploadId) -> Option<Locator> {
        // No upload id: `delete` aborts every multipart upload of the key it lists.
        Some(
            Place {
                key: self.key(id),
                ..Place::default()
            }
            .locator(),
        )
    }
}

/// The place of a completed object: every staged piece of it deleted (best effort: a piece
/// left behind is an orphan the reconciler removes), nothing but the key kept.
async fn finished(place: &mut Place, c: &S3Client) -> Locator {
    // A CreateMultipartUpload answered after its request was retried leaves a second upload.
    match c.list_uploads(&place.key).await {
        Ok(uploads) => {
            for u in uploads.iter().filter(|u| u.key == place.key) {
                if let Err(e) = c.abort(&place.key, &u.upload_id).await {
                    tracing::warn!(key = %place.key, error = %e, "aborting a spare multipart upload failed");
                }
            }
        }
        Err(e) => tracing::warn!(key = %place.key, error = %e, "listing multipart uploads failed"),
    }
    match c.list_objects(&format!("{}.staged/", place.key)).await {
        Ok(pieces) => {
            for piece in pieces {
                if let Err(e) = c.delete_object(&piece.key).await {
                    tracing::warn!(key = %piece.key, error = %e, "deleting a staged piece failed");
                }
            }
        }
        Err(e) => tracing::warn!(key = %place.key, error = %e, "listing staged pieces failed"),
    }
    Place {
        key: place.key.clone(),
        done: true,
        ..Place::default()
    }
    .locator()
}
