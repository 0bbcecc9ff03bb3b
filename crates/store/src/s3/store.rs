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

use super::client::{Body, S3Client};
use super::place::{Place, spool_file};
use super::plan::MAX_PARTS;
use super::writer::{S3Writer, Start};
use crate::data::{ByteStream, DataCapabilities, DataStore, DataWriter, Fence, Locator, WriteMode};
use crate::error::{Result, StoreError};
use crate::fence::Fences;
use async_trait::async_trait;
use bytes::Bytes;
use ferry_proto::UploadId;
use futures_util::StreamExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) struct Inner {
    pub(super) client: S3Client,
    prefix: String,
    /// Where writers spool what they receive.
    pub(super) spool: PathBuf,
    fences: Fences,
    /// This store's hold on the spool directory (writers hold it too).
    pub(super) spool_lock: Arc<std::fs::File>,
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

    fn key(&self, id: UploadId) -> String {
        format!("{}{id}", self.inner.prefix)
    }
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

/// Writes the bytes of `place`'s staged pieces that lie past its parts into `file`, from
/// offset 0, streamed (a piece is as large as a part). Returns how many.
async fn unstage(c: &S3Client, place: &Place, file: &std::fs::File) -> Result<u64> {
    let parts_end = place.parts_end();
    let mut written = 0;
    for piece in &place.staged {
        let from = parts_end.max(piece.at);
        let mut s = c.get_range(&piece.key, from - piece.at, piece.size).await?;
        let mut at = from - parts_end;
        while let Some(chunk) = s.next().await {
            let chunk = chunk?;
            file.write_all_at(&chunk, at)?;
            at += chunk.len() as u64;
        }
        written = written.max(at);
    }
    Ok(written)
}

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
            // Ranges in any order need pieces composed at completion: not yet.
            random_access: false,
            concatenation: true,
            ranged_reads: true,
        }
    }

    async fn create(&self, id: UploadId, _durable: bool) -> Result<Locator> {
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
        let place = Place::of(at)?;
        let WriteMode::Append { offset } = mode else {
            return Err(StoreError::Inconsistent(
                "the S3 store takes appends only".into(),
            ));
        };
        // Appends run under a lease; a chunk session's claims are another store's business.
        let Fence::Epoch(epoch) = fence else {
            return Err(StoreError::Inconsistent(
                "the S3 store writes under a lease only".into(),
            ));
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
        let end = place.end();
        if offset != end {
            return Err(StoreError::Inconsistent(format!(
                "upload {id}: {offset} bytes committed but the store holds {end}"
            )));
        }
        let next = listed
            .iter()
            .map(|p| p.number)
            .chain(place.parts.iter().map(|p| p.n))
            .max()
            .unwrap_or(0)
            + 1;
        // The bytes after the last part, from the staged pieces, into a fresh spool.
        let spool = spool_file(&self.inner.spool)?;
        unstage(c, &place, spool.as_file()).await?;
        // Staged keys are unique to this writer: epochs start again with the process, and
        // a key written twice would change a piece a record may name.
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        Ok(Box::new(S3Writer::new(Start {
            client: self.inner.client.clone(),
            spool_dir: self.inner.spool.clone(),
            spool_lock: self.inner.spool_lock.clone(),
            id,
            writer: format!("{epoch:016x}-{:016x}", u64::from_le_bytes(nonce)),
            place,
            upload,
            next,
            spool,
            fenced,
        })))
    }

    async fn finish(&self, id: UploadId, at: &Locator, length: u64) -> Result<Locator> {
        let mut place = Place::of(at)?;
        let c = &self.inner.client;
        if place.done {
            return Ok(at.clone());
        }
        let upload = place.upload()?.to_string();
        let parts_end = place.parts_end();
        let tail_len = length.checked_sub(parts_end).ok_or_else(|| {
            StoreError::Inconsistent(format!("upload {id}: parts hold more than {length} bytes"))
        })?;
        let already = |size: Option<u64>| size == Some(length);
        let mut parts: Vec<(u16, String)> =
            place.parts.iter().map(|p| (p.n, p.etag.clone())).collect();
        let listed = match c.list_parts(&place.key, &upload).await {
            Ok(l) => l,
            // Completed by an earlier run whose result was not recorded.
            Err(e) if e.to_string().contains("NoSuchUpload") => {
                if already(c.head_size(&place.key).await?) {
                    return Ok(finished(&mut place, c).await);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if parts.is_empty() && tail_len == 0 {
            // Empty: no multipart upload completes without a part. The object first, so that a
            // crash in between leaves it for the rerun to find.
            c.put_object(&place.key, Bytes::new()).await?;
            c.abort(&place.key, &upload).await?;
            return Ok(finished(&mut place, c).await);
        }
        if tail_len > 0 {
            // The staged tail, as the last part, sent from a file.
            let tail = spool_file(&self.inner.spool)?;
            let have = unstage(c, &place, tail.as_file()).await?;
            if have < tail_len {
                return Err(StoreError::Inconsistent(format!(
                    "upload {id}: {have} of its last {tail_len} bytes are staged"
                )));
            }
            let n = listed
                .iter()
                .map(|p| p.number)
                .chain(parts.iter().map(|p| p.0))
                .max()
                .unwrap_or(0)
                + 1;
            if n > MAX_PARTS {
                return Err(StoreError::Inconsistent(format!(
                    "upload {id}: no part number left"
                )));
            }
            let body = Body::File {
                path: tail.path().to_path_buf(),
                start: 0,
                len: tail_len,
            };
            let etag = c.upload_part(&place.key, &upload, n, body).await?;
            parts.push((n, etag));
        }
        match c.complete(&place.key, &upload, &parts).await {
            Ok(()) => {}
            Err(e) if e.to_string().contains("NoSuchUpload") => {
                if !already(c.head_size(&place.key).await?) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        Ok(finished(&mut place, c).await)
    }

    fn merge_locators(&self, _recorded: &Locator, _written: &Locator) -> Result<Locator> {
        Err(StoreError::Inconsistent(
            "the S3 store has no random-access writers".into(),
        ))
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
        for (key, _) in c.list_objects(&format!("{}.staged/", place.key)).await? {
            c.delete_object(&key).await?;
        }
        c.delete_object(&place.key).await?;
        self.inner.fences.forget(id);
        Ok(())
    }

    /// Every upload the bucket holds anything of under the prefix: its object (with its size),
    /// staged pieces or multipart uploads (size 0 when there is no object). What no record
    /// owns is deleted at startup (`Uploads::remove_orphaned_data`): the leftovers of a crash
    /// between CreateMultipartUpload and the record's commit, of a deletion cut short, or of a
    /// creation whose answer was lost.
    async fn inventory(&self) -> Result<Vec<(UploadId, u64)>> {
        let prefix = &self.inner.prefix;
        let c = &self.inner.client;
        let id_of = |key: &str| -> Option<UploadId> {
            let rest = key.strip_prefix(prefix.as_str())?;
            let name = rest.split_once(".staged/").map_or(rest, |(id, _)| id);
            UploadId::parse(name).ok()
        };
        let mut found = std::collections::BTreeMap::new();
        for (key, size) in c.list_objects(prefix).await? {
            if let Some(id) = id_of(&key) {
                let staged = key.contains(".staged/");
                let entry = found.entry(id).or_insert(0);
                if !staged {
                    *entry = size;
                }
            }
        }
        for u in c.list_uploads(prefix).await? {
            if let Some(id) = id_of(&u.key) {
                found.entry(id).or_insert(0);
            }
        }
        Ok(found.into_iter().collect())
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
            for (key, _) in pieces {
                if let Err(e) = c.delete_object(&key).await {
                    tracing::warn!(%key, error = %e, "deleting a staged piece failed");
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
