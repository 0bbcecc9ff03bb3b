//! Local-disk data store: one file per upload under `<root>/uploads/<2 hex>/<id>`.
//!
//! The locator is that file, relative to `uploads/` (`{"file":"6f/6f18…"}`): derived from the
//! id, and checked against it, so a record can only ever name its own upload's file.
//!
//! This is where bytes hit the disk. Writes are positional (`pwrite`) on a std `File` inside
//! `spawn_blocking`, with the caller's buffer moved in and handed back (no copy, no per-write
//! allocation); a durable `checkpoint` is `fdatasync`. New files are made durable by fsyncing
//! their directory.

use crate::data::{
    ByteStream, DataCapabilities, DataStore, DataWriter, Fence, Holding, Locator, Owned, Owner,
    PendingWrite, WriteMode,
};
use crate::error::{Result, StoreError};
use crate::fence::{Fenced, Fences};
use async_trait::async_trait;
use bytes::BytesMut;
use ferry_proto::UploadId;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Size of each read when streaming a file out.
const READ_CHUNK: usize = 256 * 1024;

/// Free space that data writes leave for the metadata store: once the disk is full, the
/// offset of the bytes written so far must still be committable (redb grows its file on
/// commit), or a full disk would lose them.
pub const METADATA_RESERVE: u64 = 4 * 1024 * 1024;

/// Bytes an unprivileged writer may still use on the file system holding `dir` (f_bavail; the
/// root reserve is not ours).
fn free_bytes(dir: &Path) -> Option<u64> {
    rustix::fs::statvfs(dir)
        .ok()
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
}

fn is_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalDataStore {
    root: PathBuf,
    fences: Arc<Fences>,
}

impl LocalDataStore {
    /// Uses `<dir>/uploads` for data, creating it if needed.
    pub fn open(dir: &Path) -> Result<Self> {
        let root = dir.join("uploads");
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            fences: Arc::default(),
        })
    }

    /// Path of an upload's file. `UploadId` only ever renders as 32 hex chars, so no path trick
    /// can reach here.
    pub fn path_of(&self, id: UploadId) -> PathBuf {
        let hex = id.to_string();
        self.root.join(&hex[..2]).join(hex)
    }

    /// The locator of an upload's file.
    pub fn locator_of(id: UploadId) -> Locator {
        let hex = id.to_string();
        Locator(serde_json::json!({ "file": format!("{}/{hex}", &hex[..2]) }))
    }

    /// The file `at` names, which must be `id`'s own.
    fn path_at(&self, id: UploadId, at: &Locator) -> Result<PathBuf> {
        if *at != Self::locator_of(id) {
            return Err(StoreError::Inconsistent(format!(
                "upload {id}: its recorded locator {} is not its file",
                at.0
            )));
        }
        Ok(self.path_of(id))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(StoreError::from),
        Err(e) => Err(StoreError::Io(io::Error::other(e))),
    }
}

/// fsync a directory so that entries created in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait]
impl DataStore for LocalDataStore {
    fn identity(&self) -> String {
        "local".into()
    }

    fn capabilities(&self) -> DataCapabilities {
        DataCapabilities::ALL
    }

    fn free_space(&self) -> Option<u64> {
        free_bytes(&self.root).map(|n| n.saturating_sub(METADATA_RESERVE))
    }

    async fn create(&self, id: UploadId, durable: bool, _length: Option<u64>) -> Result<Locator> {
        let path = self.path_of(id);
        let root = self.root.clone();
        blocking(move || {
            let shard = path.parent().expect("shard dir");
            let new_shard = !shard.exists();
            if new_shard {
                std::fs::create_dir_all(shard)?;
            }
            let f = OpenOptions::new().write(true).create_new(true).open(&path);
            match f {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
                }
                Err(e) => return Err(e),
            }
            if durable {
                sync_dir(shard)?;
                if new_shard {
                    sync_dir(&root)?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| match e {
            StoreError::Io(io) if io.kind() == io::ErrorKind::AlreadyExists => {
                StoreError::AlreadyExists(id)
            }
            other => other,
        })?;
        Ok(Self::locator_of(id))
    }

    async fn open_writer(
        &self,
        id: UploadId,
        at: &Locator,
        mode: WriteMode,
        fence: Fence,
    ) -> Result<Box<dyn DataWriter>> {
        let path = self.path_at(id, at)?;
        // Raised before the file is touched: a superseded opener cuts nothing.
        // (A directory serves one instance: its fences are all there is to a shared lease.)
        let fenced = match fence.epoch() {
            // Raising the epoch waits for a write in progress.
            Some(epoch) => Some(self.fences.enter(id, epoch).await?),
            None => None,
        };
        let file = blocking(move || {
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(io::Error::new(io::ErrorKind::NotFound, "data file missing"));
                }
                Err(e) => return Err(e),
            };
            if let WriteMode::Append { offset } = mode {
                let len = file.metadata()?.len();
                if len > offset {
                    // Bytes past the committed offset were never acknowledged: dropped here
                    // (the space comes back, and a full disk gave back nothing it needs).
                    file.set_len(offset)?;
                } else if len < offset {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("data file has {len} bytes but {offset} were committed"),
                    ));
                }
            }
            Ok(file)
        })
        .await
        .map_err(|e| match e {
            StoreError::Io(io) if io.kind() == io::ErrorKind::NotFound => StoreError::NotFound(id),
            StoreError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
                StoreError::Inconsistent(io.to_string())
            }
            other => other,
        })?;
        let position = match mode {
            WriteMode::Append { offset } | WriteMode::At { offset } => offset,
        };
        Ok(Box::new(LocalWriter {
            root: Arc::from(self.root.as_path()),
            file: Arc::new(file),
            locator: at.clone(),
            position,
            append: matches!(mode, WriteMode::Append { .. }),
            fenced,
        }))
    }

    async fn finish(&self, id: UploadId, at: &Locator, length: u64) -> Result<Locator> {
        // The bytes are in place and synced per the policy as they were committed: nothing to
        // assemble. Only check that they are all there.
        let path = self.path_at(id, at)?;
        let len = blocking(move || Ok(std::fs::metadata(path)?.len()))
            .await
            .map_err(|e| match e {
                StoreError::Io(io) if io.kind() == io::ErrorKind::NotFound => {
                    StoreError::NotFound(id)
                }
                other => other,
            })?;
        if len < length {
            return Err(StoreError::Inconsistent(format!(
                "upload {id}: its file has {len} of its {length} bytes"
            )));
        }
        Ok(at.clone())
    }

    fn merge_locators(&self, recorded: &Locator, written: &Locator) -> Result<Locator> {
        // One file per upload: both name it, or one of them is not this upload's.
        if recorded != written {
            return Err(StoreError::Inconsistent(format!(
                "a chunk written to {} cannot be recorded for {}",
                written.0, recorded.0
            )));
        }
        Ok(recorded.clone())
    }

    async fn read(&self, id: UploadId, at: &Locator, start: u64, end: u64) -> Result<ByteStream> {
        let path = self.path_at(id, at)?;
        let file = blocking(move || File::open(path))
            .await
            .map_err(|e| match e {
                StoreError::Io(io) if io.kind() == io::ErrorKind::NotFound => {
                    StoreError::NotFound(id)
                }
                other => other,
            })?;
        Ok(read_stream(Arc::new(file), start, end))
    }

    async fn delete(&self, id: UploadId, at: &Locator) -> Result<()> {
        let path = self.path_at(id, at)?;
        blocking(move || match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await?;
        self.fences.forget(id);
        Ok(())
    }

    async fn inventory(&self) -> Result<Vec<(UploadId, u64)>> {
        Ok(self
            .files()
            .await?
            .into_iter()
            .map(|(id, len, _)| (id, len))
            .collect())
    }

    async fn holds(&self, id: UploadId, at: &Locator) -> Result<Option<Holding>> {
        let path = self.path_at(id, at)?;
        match blocking(move || std::fs::metadata(path)).await {
            Ok(meta) => Ok(Some(Holding {
                bytes: meta.len(),
                at: at.clone(),
            })),
            Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A file no record owns goes once it is older than `cutoff` (its modification time): an
    /// upload being created has its file before its record.
    async fn reconcile(&self, owner: &Owner<'_>, cutoff: Option<u64>) -> Result<usize> {
        let mut removed = 0;
        for (id, _, modified) in self.files().await? {
            let old = cutoff.is_none_or(|c| modified < c);
            if old && owner(id).await? == Owned::Nobody {
                match self.delete(id, &Self::locator_of(id)).await {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(upload = %id.tag(), error = %e, "reconciler: removing a leftover failed");
                    }
                }
            }
        }
        Ok(removed)
    }

    fn derived_locator(&self, id: UploadId) -> Option<Locator> {
        Some(Self::locator_of(id))
    }
}

impl LocalDataStore {
    /// Every upload file: its id, size and modification time (ms since the epoch).
    async fn files(&self) -> Result<Vec<(UploadId, u64, u64)>> {
        let root = self.root.clone();
        blocking(move || {
            let mut out = Vec::new();
            for shard in std::fs::read_dir(&root)? {
                let shard = shard?;
                if !shard.file_type()?.is_dir() {
                    continue;
                }
                for file in std::fs::read_dir(shard.path())? {
                    let file = file?;
                    // Only names this store writes: anything else is not an upload's data.
                    let name = file.file_name();
                    let Some(id) = name.to_str().and_then(|n| UploadId::parse(n).ok()) else {
                        continue;
                    };
                    if file.file_type()?.is_file() {
                        let meta = file.metadata()?;
                        let modified = meta
                            .modified()?
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        out.push((id, meta.len(), modified));
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

/// Streams `[start, end)` of `file` in `READ_CHUNK` pieces. The `BytesMut` is reused: once the
/// consumer drops the previous piece, `reserve` reclaims its memory instead of allocating.
pub fn read_stream(file: Arc<File>, start: u64, end: u64) -> ByteStream {
    struct State {
        file: Arc<File>,
        pos: u64,
        end: u64,
        buf: BytesMut,
    }
    let state = State {
        file,
        pos: start,
        end,
        buf: BytesMut::new(),
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.pos >= st.end {
            return None;
        }
        let want = ((st.end - st.pos) as usize).min(READ_CHUNK);
        let file = st.file.clone();
        let pos = st.pos;
        let mut buf = std::mem::take(&mut st.buf);
        buf.clear();
        buf.reserve(want);
        let res = tokio::task::spawn_blocking(move || {
            buf.resize(want, 0);
            let r = file.read_exact_at(&mut buf[..], pos);
            (buf, r)
        })
        .await;
        match res {
            Ok((mut buf, Ok(()))) => {
                let chunk = buf.split().freeze();
                st.buf = buf;
                st.pos += want as u64;
                Some((Ok(chunk), st))
            }
            Ok((_, Err(e))) => {
                st.pos = st.end;
                Some((Err(e), st))
            }
            Err(e) => {
                st.pos = st.end;
                Some((Err(io::Error::other(e)), st))
            }
        }
    }))
}

/// `pwrite`s all of `buf` at `at`, handing `buf` back.
fn write_at(file: &File, buf: Vec<u8>, at: u64, append: bool) -> io::Result<Vec<u8>> {
    match file.write_all_at(&buf, at) {
        Ok(()) => Ok(buf),
        Err(e) => {
            if append && is_full(&e) {
                // Give back the part of this write that landed (it is never committed), so
                // that the metadata commit of the bytes before it finds room.
                let _ = file.set_len(at);
            }
            Err(e)
        }
    }
}

struct LocalWriter {
    /// The store's root, for the free-space check before each write.
    root: Arc<Path>,
    file: Arc<File>,
    /// The file's locator (it never changes as the file grows).
    locator: Locator,
    position: u64,
    /// Nothing past the write position is kept (append mode).
    append: bool,
    /// Its lease epoch, for writers under a lease.
    fenced: Option<Fenced>,
}

#[async_trait]
impl DataWriter for LocalWriter {
    fn position(&self) -> u64 {
        self.position
    }

    fn write(&mut self, buf: Vec<u8>) -> PendingWrite {
        let file = self.file.clone();
        let at = self.position;
        self.position += buf.len() as u64;
        let append = self.append;
        let root = self.root.clone();
        let fenced = self.fenced.clone();
        let task = tokio::task::spawn_blocking(move || {
            if free_bytes(&root).is_some_and(|n| n < buf.len() as u64 + METADATA_RESERVE) {
                // Full as far as data goes: the rest is kept for metadata commits.
                return Err(StoreError::from(io::Error::from(
                    io::ErrorKind::StorageFull,
                )));
            }
            let write = || write_at(&file, buf, at, append).map_err(StoreError::from);
            match &fenced {
                Some(f) => f.run_blocking(write),
                None => write(),
            }
        });
        Box::pin(async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(StoreError::Io(io::Error::other(e))),
            }
        })
    }

    async fn checkpoint(&mut self, durable: bool) -> Result<Locator> {
        if durable {
            let file = self.file.clone();
            blocking(move || file.sync_data()).await?;
        }
        Ok(self.locator.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDataStore::open(dir.path()).unwrap();
        crate::conformance::data_store(&store).await;
    }
}
