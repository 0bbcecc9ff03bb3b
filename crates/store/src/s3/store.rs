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
use super::plan::{MAX_PARTS, part_size};
use crate::data::{
    ByteStream, DataCapabilities, DataStore, DataWriter, Fence, Locator, PendingWrite, WriteMode,
};
use crate::error::{Result, StoreError};
use crate::fence::{Fenced, Fences};
use async_trait::async_trait;
use bytes::Bytes;
use ferry_proto::UploadId;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Mutex;

/// An upload's place in the bucket: the locator's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Place {
    /// The object key.
    key: String,
    /// The multipart upload, until the object is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload: Option<String>,
    /// The recorded parts, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parts: Vec<Part>,
    /// Staged pieces holding the bytes after the parts, in order (a piece may begin before the
    /// parts end: its first bytes went into the last part).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    staged: Vec<Piece>,
    /// The object is complete at `key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Part {
    n: u16,
    etag: String,
    size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Piece {
    key: String,
    /// Where its first byte sits in the upload.
    at: u64,
    size: u64,
}

impl Place {
    fn of(at: &Locator) -> Result<Place> {
        serde_json::from_value(at.0.clone())
            .map_err(|e| StoreError::Inconsistent(format!("S3 locator {}: {e}", at.0)))
    }

    fn locator(&self) -> Locator {
        Locator(serde_json::to_value(self).expect("a place serializes"))
    }

    /// Bytes held by the parts.
    fn parts_end(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// Bytes held by the parts and staged pieces together.
    fn end(&self) -> u64 {
        self.staged
            .iter()
            .map(|p| p.at + p.size)
            .fold(self.parts_end(), u64::max)
    }

    fn upload(&self) -> Result<&str> {
        self.upload
            .as_deref()
            .ok_or_else(|| StoreError::Inconsistent(format!("{}: no multipart upload", self.key)))
    }
}

struct Inner {
    client: S3Client,
    prefix: String,
    /// Where writers spool what they receive.
    spool: PathBuf,
    fences: Fences,
    /// This store's hold on the spool directory, for as long as it lives.
    _spool_lock: std::fs::File,
}

/// Takes the spool directory (an exclusive lock on `.lock` in it) and empties it of what a
/// process that died left there: spool files are temporary, and one can be as large as a part.
/// Another live store on the same directory is refused.
fn claim_spool(spool: &Path) -> Result<std::fs::File> {
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
    for entry in std::fs::read_dir(spool)? {
        let entry = entry?;
        if entry.file_name() != ".lock" && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(lock)
}

/// Uploads in an S3 bucket.
#[derive(Clone)]
pub struct S3DataStore {
    inner: Arc<Inner>,
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
                _spool_lock: lock,
            }),
        })
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
        let unavailable = |e: StoreError| AccessError::Unavailable(e.to_string());
        match c.head_size(&key).await.map_err(unavailable)? {
            None => {
                c.put_object(&key, owner.as_bytes().to_vec())
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }
            Some(size) => {
                let mut s = c.get_range(&key, 0, size).await.map_err(unavailable)?;
                let mut found = Vec::new();
                while let Some(chunk) = s.next().await {
                    found.extend_from_slice(&chunk.map_err(|e| unavailable(e.into()))?);
                }
                if found == owner.as_bytes() {
                    return Ok(());
                }
                Err(AccessError::Setup(format!(
                    "{} belongs to another ferry data directory ({key} names it): give each \
                     data directory a prefix of its own, or delete {key} if that directory is gone \
                     for good",
                    self.identity()
                )))
            }
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

/// A named temporary file in the spool directory (a part is sent from it by path).
fn spool_file(dir: &Path) -> Result<Arc<tempfile::NamedTempFile>> {
    Ok(Arc::new(tempfile::NamedTempFile::new_in(dir)?))
}

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

/// Runs `f` under the fence, if any: refused once a later writer opened the upload, and that
/// writer waits for it.
async fn fenced<T>(fence: &Option<Fenced>, f: impl Future<Output = Result<T>>) -> Result<T> {
    match fence {
        Some(fence) => fence.run(f).await,
        None => f.await,
    }
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
        let state = State {
            store: self.clone(),
            id,
            writer: format!("{epoch:016x}-{:016x}", u64::from_le_bytes(nonce)),
            place,
            upload,
            next,
            seq: 0,
            spool,
            staged_to: end,
            written: end,
            failed: None,
            fenced,
        };
        Ok(Box::new(S3Writer {
            position: end,
            state: Arc::new(Mutex::new(state)),
            last: None,
        }))
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

/// A writer's state, behind a lock its writes take in order.
struct State {
    store: S3DataStore,
    id: UploadId,
    /// `{epoch}-{nonce}`: names this writer's staged pieces.
    writer: String,
    /// What is in the bucket: the committed place, plus the parts and pieces this writer sent.
    place: Place,
    upload: String,
    /// The next part number this writer may use.
    next: u16,
    /// The next staged piece's sequence number.
    seq: u32,
    /// The bytes after the last part, at their offset from the parts' end (named: a part is
    /// sent from it by path).
    spool: Arc<tempfile::NamedTempFile>,
    /// Bytes up to here are in parts or staged pieces.
    staged_to: u64,
    /// Bytes up to here were written (spooled or sent) by writes that succeeded.
    written: u64,
    /// A write failed: later writes fail too (the engine sends none), and a checkpoint still
    /// stages what the writes before it wrote, unless a part took some of the failed write's
    /// bytes (then nothing more can be committed by this writer).
    failed: Option<Failure>,
    fenced: Option<Fenced>,
}

/// Why a writer stopped.
#[derive(Debug, Clone)]
enum Failure {
    /// Taken over: the error to give again.
    Fenced { epoch: u64, current: u64 },
    /// Anything else, as text; `poisoned` when a checkpoint can no longer be consistent.
    Other { why: String, poisoned: bool },
}

impl Failure {
    fn error(&self, id: UploadId) -> StoreError {
        match self {
            Failure::Fenced { epoch, current } => StoreError::Fenced {
                id,
                epoch: *epoch,
                current: *current,
            },
            Failure::Other { why, .. } => StoreError::Io(std::io::Error::other(why.clone())),
        }
    }
}

impl State {
    /// Spools `buf`, then sends every full part the spool holds; hands `buf` back. On a
    /// failure, `written` stays where the writes before it left it.
    async fn write(&mut self, buf: Vec<u8>) -> Result<Vec<u8>> {
        if let Some(f) = &self.failed {
            return Err(f.error(self.id));
        }
        let before = self.written;
        let result = self.write_inner(buf).await;
        if let Err(e) = &result {
            let failure = match e {
                StoreError::Fenced { epoch, current, .. } => Failure::Fenced {
                    epoch: *epoch,
                    current: *current,
                },
                other => Failure::Other {
                    why: other.to_string(),
                    // A part already holds bytes of this write: they can be neither
                    // committed (the engine counts the write as failed) nor taken back.
                    poisoned: self.place.parts_end() > before,
                },
            };
            self.written = before;
            self.failed = Some(failure);
        }
        result
    }

    async fn write_inner(&mut self, buf: Vec<u8>) -> Result<Vec<u8>> {
        let at = self.written - self.place.parts_end();
        let spool = self.spool.clone();
        let len = buf.len() as u64;
        // Refused at once when the writer was taken over, even before anything is sent.
        let buf = fenced(&self.fenced, async {
            tokio::task::spawn_blocking(move || {
                spool.as_file().write_all_at(&buf, at).map(|()| buf)
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .map_err(StoreError::from)
        })
        .await?;
        self.written += len;
        while self.written - self.place.parts_end() >= part_size(self.next) {
            self.send_part().await?;
        }
        Ok(buf)
    }

    /// Sends the spool's first `part_size(next)` bytes as part `next`, and keeps the rest.
    async fn send_part(&mut self) -> Result<()> {
        let n = self.next;
        if n > MAX_PARTS {
            return Err(StoreError::Inconsistent(format!(
                "upload {}: no part number left",
                self.id
            )));
        }
        let size = part_size(n);
        let key = self.place.key.clone();
        let c = self.store.inner.client.clone();
        let upload = self.upload.clone();
        let body = Body::File {
            path: self.spool.path().to_path_buf(),
            start: 0,
            len: size,
        };
        let etag = fenced(&self.fenced, c.upload_part(&key, &upload, n, body)).await?;
        let parts_end = self.place.parts_end() + size;
        self.place.parts.push(Part { n, etag, size });
        self.place.staged.retain(|p| p.at + p.size > parts_end);
        self.next = n + 1;
        // The rest (less than a write) moves to the front of a fresh spool.
        let rest_len = self.written - parts_end;
        let old = self.spool.clone();
        let fresh = spool_file(&self.store.inner.spool)?;
        let new = fresh.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut buf = vec![0; rest_len as usize];
            old.as_file().read_exact_at(&mut buf, size)?;
            new.as_file().write_all_at(&buf, 0)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        self.spool = fresh;
        self.staged_to = self.staged_to.max(parts_end);
        Ok(())
    }

    /// Stages what is not in the bucket yet (sent from the spool file), and returns the place
    /// that covers every byte written.
    async fn checkpoint(&mut self) -> Result<Locator> {
        match &self.failed {
            Some(f @ Failure::Fenced { .. }) | Some(f @ Failure::Other { poisoned: true, .. }) => {
                return Err(f.error(self.id));
            }
            _ => {}
        }
        if self.written > self.staged_to {
            let len = self.written - self.staged_to;
            let body = Body::File {
                path: self.spool.path().to_path_buf(),
                start: self.staged_to - self.place.parts_end(),
                len,
            };
            let key = format!("{}.staged/{}-{:08x}", self.place.key, self.writer, self.seq);
            self.seq += 1;
            let c = self.store.inner.client.clone();
            fenced(&self.fenced, c.put_object(&key, body)).await?;
            self.place.staged.push(Piece {
                key,
                at: self.staged_to,
                size: len,
            });
            self.staged_to = self.written;
        }
        Ok(self.place.locator())
    }
}

struct S3Writer {
    position: u64,
    state: Arc<Mutex<State>>,
    /// Resolves when the last write made has taken its turn: the next one waits for it, so
    /// writes reach the state in the order they were made.
    last: Option<tokio::sync::oneshot::Receiver<()>>,
}

#[async_trait]
impl DataWriter for S3Writer {
    fn position(&self) -> u64 {
        self.position
    }

    fn write(&mut self, buf: Vec<u8>) -> PendingWrite {
        self.position += buf.len() as u64;
        let state = self.state.clone();
        let (turn_done, turn) = tokio::sync::oneshot::channel();
        let previous = self.last.replace(turn);
        // Spawned now, so that it proceeds while the caller fills its next buffer, after the
        // write before it.
        let task = tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let mut st = state.lock_owned().await;
            let _ = turn_done.send(());
            st.write(buf).await
        });
        Box::pin(async move {
            task.await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
        })
    }

    async fn checkpoint(&mut self, _durable: bool) -> Result<Locator> {
        self.state.lock().await.checkpoint().await
    }
}
