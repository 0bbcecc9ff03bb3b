//! Embedded metadata store on redb.
//!
//! Reads go straight to a read transaction and never wait for writers. Writes go through one
//! writer thread that takes every queued change, applies them in a single transaction and
//! commits once with fsync (group commit): many concurrent uploads share one fsync instead of
//! queueing behind each other's. A caller's change is acknowledged only after that commit.

use crate::data::Locator;
use crate::error::{Result, StoreError};
use crate::meta::{MetaStore, Records, Transaction, Update};
use crate::model::{UploadInfo, UploadKind};
pub(crate) use crate::record::{Expiry, Progress, decode, encode};
use async_trait::async_trait;
use ferry_proto::UploadId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The on-disk layout this build writes. Bump it (and add a migration) when `Record` or the
/// tables change incompatibly; a newer layout is refused rather than misread.
///
/// - 1: the first.
/// - 2: each record carries its data store's locator, and `finish_pending`; a build that
///   knew neither would read an upload whose finish step is pending as complete. Layout 1
///   migrates when opened with its data store ([`RedbMetaStore::open_migrating`]).
pub const LAYOUT_VERSION: u64 = 2;

/// Records read at a time by the migration, so that it never holds every record decoded at
/// once (the write transaction itself keeps its dirty pages until it commits).
const MIGRATION_PAGE: usize = 1024;

const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
const INFO: TableDefinition<&str, u64> = TableDefinition::new("ferry");
/// Which data store the records' locators belong to (`store` → `local`, `s3://…`).
const BINDING: TableDefinition<&str, &str> = TableDefinition::new("binding");
const STORE_KEY: &str = "store";
const LAYOUT_KEY: &str = "layout_version";

/// Most changes committed in one transaction.
const MAX_BATCH: usize = 512;

fn db_err(e: impl std::fmt::Display) -> StoreError {
    let text = e.to_string();
    // redb wraps the io::Error in several error types (and the batch outcome is shared as
    // text); its rendering keeps "(os error N)". A full disk must stay a 507, not a 500.
    if text.contains("(os error 28)") || text.contains("(os error 122)") {
        return StoreError::StorageFull;
    }
    StoreError::Metadata(text)
}

enum Op {
    Insert(Box<UploadInfo>, oneshot::Sender<Result<()>>),
    Update(UploadId, Update, oneshot::Sender<Result<UploadInfo>>),
    Remove(UploadId, oneshot::Sender<Result<()>>),
    Transact(Vec<UploadId>, Transaction, oneshot::Sender<Result<Records>>),
}

/// redb-backed [`MetaStore`].
pub struct RedbMetaStore {
    db: Arc<Database>,
    ops: Option<mpsc::UnboundedSender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RedbMetaStore {
    /// Closes the queue and waits for the writer to finish its last commit, so the database
    /// file is released when the store is gone (a restart in the same process can reopen it).
    fn drop(&mut self) {
        self.ops.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for RedbMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbMetaStore").finish_non_exhaustive()
    }
}

impl RedbMetaStore {
    /// Opens (or creates) the database at `path`. Fails clearly if another process has it open,
    /// if it was written by a newer ferry, or if it has an older layout (which needs
    /// [`open_migrating`](Self::open_migrating)).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_migrating(path, &|_| None)
    }

    /// Opens the database at `path` as [`open`](Self::open) does, first migrating an older
    /// layout in one transaction (all or nothing). `locate` gives the data store's locator of
    /// an upload recorded before locators were (layout 1).
    pub fn open_migrating(
        path: &Path,
        locate: &dyn Fn(UploadId) -> Option<Locator>,
    ) -> Result<Self> {
        let db = Database::builder()
            // redb's default cache is 1 GiB; upload records are tiny.
            .set_cache_size(16 * 1024 * 1024)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Metadata(format!(
                    "{} is already open in another process (is another ferry serving this data dir?)",
                    path.display()
                )),
                other => db_err(other),
            })?;
        check_layout(&db, locate)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("ferry-meta-writer".into())
            .spawn(move || writer_loop(&writer_db, rx))
            .map_err(StoreError::Io)?;
        Ok(Self {
            db,
            ops: Some(tx),
            writer: Some(writer),
        })
    }

    /// Binds this database to the data store `identity`, and refuses another store while it
    /// has records (with none, nothing can be lost: it is bound again). Records made before
    /// bindings tell their store by their locators: a file is the local store's.
    pub fn bind_store(&self, identity: &str) -> Result<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut binding = txn.open_table(BINDING).map_err(db_err)?;
            let uploads = txn.open_table(UPLOADS).map_err(db_err)?;
            if uploads.first().map_err(db_err)?.is_some() {
                let bound = match binding.get(STORE_KEY).map_err(db_err)? {
                    Some(v) => v.value().to_string(),
                    None => legacy_store(&uploads)?,
                };
                let same = bound == identity || (bound == "s3" && identity.starts_with("s3://"));
                if !same {
                    return Err(StoreError::WrongStore(format!(
                        "this data directory's uploads are in {bound}; it cannot be used with \
                         {identity} (another --data-dir, or its own store)"
                    )));
                }
            }
            binding.insert(STORE_KEY, identity).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    fn send(&self, op: Op) -> Result<()> {
        self.ops
            .as_ref()
            .ok_or_else(|| StoreError::Metadata("metadata store closed".into()))?
            .send(op)
            .map_err(|_| StoreError::Metadata("metadata writer stopped".into()))
    }
}

/// The store of a database with records but no binding (made before bindings): the first
/// record with a locator names it (`file`: local; `key`: an S3 store, bucket unknown), and
/// records without any (layout 1, finals) are the local store's.
fn legacy_store(uploads: &redb::Table<&str, &[u8]>) -> Result<String> {
    for row in uploads.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        let id = UploadId::parse(k.value())
            .map_err(|e| StoreError::Metadata(format!("record key {:?}: {e}", k.value())))?;
        let info = decode(id, v.value())?;
        if info.locator.0.get("key").is_some() {
            return Ok("s3".into());
        }
        if !info.locator.is_none() {
            return Ok("local".into());
        }
    }
    Ok("local".into())
}

fn check_layout(db: &Database, locate: &dyn Fn(UploadId) -> Option<Locator>) -> Result<()> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut info = txn.open_table(INFO).map_err(db_err)?;
        let found = info.get(LAYOUT_KEY).map_err(db_err)?.map(|v| v.value());
        match found {
            None => {
                info.insert(LAYOUT_KEY, LAYOUT_VERSION).map_err(db_err)?;
            }
            Some(v) if v == LAYOUT_VERSION => {}
            Some(1) => {
                let n = migrate_1_to_2(&txn, locate)?;
                info.insert(LAYOUT_KEY, LAYOUT_VERSION).map_err(db_err)?;
                tracing::info!(records = n, "metadata layout 1 migrated to layout 2");
            }
            Some(v) if v > LAYOUT_VERSION => {
                return Err(StoreError::Metadata(format!(
                    "metadata layout {v} was written by a newer ferry; this build reads up to {LAYOUT_VERSION}"
                )));
            }
            Some(v) => {
                return Err(StoreError::Metadata(format!(
                    "metadata layout {v} is unknown (this build reads {LAYOUT_VERSION})"
                )));
            }
        }
        txn.open_table(UPLOADS).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)
}

/// Layout 1 → 2: every record with data gets its locator from the data store. Runs inside the
/// transaction that records the new layout, a page of records at a time.
fn migrate_1_to_2(
    txn: &redb::WriteTransaction,
    locate: &dyn Fn(UploadId) -> Option<Locator>,
) -> Result<u64> {
    let mut table = txn.open_table(UPLOADS).map_err(db_err)?;
    let mut after: Option<String> = None;
    let mut migrated = 0;
    loop {
        let mut page = Vec::with_capacity(MIGRATION_PAGE);
        {
            let rows = match &after {
                Some(a) => table.range::<&str>((
                    std::ops::Bound::Excluded(a.as_str()),
                    std::ops::Bound::Unbounded,
                )),
                None => table.range::<&str>(..),
            }
            .map_err(db_err)?;
            for row in rows.take(MIGRATION_PAGE) {
                let (k, v) = row.map_err(db_err)?;
                page.push((k.value().to_owned(), v.value().to_vec()));
            }
        }
        let Some((last, _)) = page.last() else {
            return Ok(migrated);
        };
        after = Some(last.clone());
        for (key, bytes) in page {
            let id = UploadId::parse(&key)
                .map_err(|e| StoreError::Metadata(format!("record key {key:?}: {e}")))?;
            let mut info = decode(id, &bytes)?;
            if info.locator.is_none() && !matches!(info.kind, UploadKind::Final { .. }) {
                info.locator = locate(id).ok_or_else(|| {
                    StoreError::Metadata(format!(
                        "metadata layout 1 holds local uploads (upload {id}): serve it once \
                         without --store, which migrates it"
                    ))
                })?;
            }
            table
                .insert(key.as_str(), encode(&info).as_slice())
                .map_err(db_err)?;
            migrated += 1;
        }
    }
}

enum Reply {
    Unit(oneshot::Sender<Result<()>>, Result<()>),
    // Boxed: a record is several times the size of the other variant.
    Info(oneshot::Sender<Result<UploadInfo>>, Box<Result<UploadInfo>>),
    Records(oneshot::Sender<Result<Records>>, Result<Records>),
}

fn writer_loop(db: &Database, mut rx: mpsc::UnboundedReceiver<Op>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let outcome = apply_batch(db, batch, &mut replies);
        for reply in replies {
            match (reply, &outcome) {
                (Reply::Unit(tx, r), Ok(())) => drop(tx.send(r)),
                (Reply::Info(tx, r), Ok(())) => drop(tx.send(*r)),
                (Reply::Records(tx, r), Ok(())) => drop(tx.send(r)),
                (Reply::Unit(tx, _), Err(e)) => drop(tx.send(Err(db_err(e)))),
                (Reply::Info(tx, _), Err(e)) => drop(tx.send(Err(db_err(e)))),
                (Reply::Records(tx, _), Err(e)) => drop(tx.send(Err(db_err(e)))),
            }
        }
    }
}

fn apply_batch(db: &Database, batch: Vec<Op>, replies: &mut Vec<Reply>) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(UPLOADS).map_err(|e| e.to_string())?;
        for op in batch {
            match op {
                Op::Insert(info, tx) => {
                    let key = info.id.to_string();
                    let exists = table.get(key.as_str()).map(|v| v.is_some());
                    let r = match exists {
                        Ok(true) => Err(StoreError::AlreadyExists(info.id)),
                        Ok(false) => table
                            .insert(key.as_str(), encode(&info).as_slice())
                            .map(|_| ())
                            .map_err(db_err),
                        Err(e) => Err(db_err(e)),
                    };
                    replies.push(Reply::Unit(tx, r));
                }
                Op::Update(id, update, tx) => {
                    let key = id.to_string();
                    let current = match table.get(key.as_str()) {
                        Ok(Some(v)) => decode(id, v.value()),
                        Ok(None) => Err(StoreError::NotFound(id)),
                        Err(e) => Err(db_err(e)),
                    };
                    // (the guard above is dropped here, so the table can be written)
                    let r = current.and_then(|mut info| {
                        update(&mut info)?;
                        table
                            .insert(key.as_str(), encode(&info).as_slice())
                            .map_err(db_err)?;
                        Ok(info)
                    });
                    replies.push(Reply::Info(tx, Box::new(r)));
                }
                Op::Remove(id, tx) => {
                    let r = table
                        .remove(id.to_string().as_str())
                        .map(|_| ())
                        .map_err(db_err);
                    replies.push(Reply::Unit(tx, r));
                }
                Op::Transact(ids, change, tx) => {
                    let r = transact(&mut table, &ids, &change);
                    replies.push(Reply::Records(tx, r));
                }
            }
        }
    }
    // Durability::Immediate (the default): the commit is on stable storage when this returns.
    txn.commit().map_err(|e| e.to_string())
}

/// One [`MetaStore::transact`] inside the batch's write transaction: every record it leaves
/// changed is written, or (if the change fails) none.
fn transact(
    table: &mut redb::Table<&str, &[u8]>,
    ids: &[UploadId],
    change: &Transaction,
) -> Result<Records> {
    let mut records = Records::new();
    for id in ids {
        let current = match table.get(id.to_string().as_str()).map_err(db_err)? {
            Some(v) => Some(decode(*id, v.value())?),
            None => None,
        };
        records.insert(*id, current);
    }
    let before = records.clone();
    change(&mut records)?;
    if let Some((id, _)) = records
        .iter()
        .find(|(id, r)| r.as_ref().is_some_and(|i| i.id != **id))
    {
        return Err(StoreError::Inconsistent(format!(
            "a transaction filed another upload's record under {id}"
        )));
    }
    for (id, record) in &records {
        if before.get(id) == Some(record) {
            continue;
        }
        let key = id.to_string();
        match record {
            Some(info) => {
                table
                    .insert(key.as_str(), encode(info).as_slice())
                    .map_err(db_err)?;
            }
            None => {
                table.remove(key.as_str()).map_err(db_err)?;
            }
        }
    }
    Ok(records)
}

async fn recv<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.await
        .unwrap_or_else(|_| Err(StoreError::Metadata("metadata writer stopped".into())))
}

#[async_trait]
impl MetaStore for RedbMetaStore {
    async fn insert(&self, info: &UploadInfo) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Insert(Box::new(info.clone()), tx))?;
        recv(rx).await
    }

    async fn get(&self, id: UploadId) -> Result<Option<UploadInfo>> {
        // A read transaction sees the last commit and never blocks on the writer.
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(UPLOADS).map_err(db_err)?;
        match table.get(id.to_string().as_str()).map_err(db_err)? {
            Some(v) => decode(id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    async fn update(&self, id: UploadId, update: Update) -> Result<UploadInfo> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Update(id, update, tx))?;
        recv(rx).await
    }

    async fn remove(&self, id: UploadId) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Remove(id, tx))?;
        recv(rx).await
    }

    async fn transact(&self, ids: Vec<UploadId>, tx: Transaction) -> Result<Records> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Transact(ids, tx, reply))?;
        recv(rx).await
    }

    async fn expired(
        &self,
        now: u64,
        after: Option<UploadId>,
        limit: usize,
    ) -> Result<Vec<UploadInfo>> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<UploadInfo>> {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(UPLOADS).map_err(db_err)?;
            let start = after.map(|a| a.to_string());
            let rows = match &start {
                Some(a) => table.range::<&str>((
                    std::ops::Bound::Excluded(a.as_str()),
                    std::ops::Bound::Unbounded,
                )),
                None => table.range::<&str>(..),
            }
            .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = row.map_err(db_err)?;
                let key = k.value();
                let id = UploadId::parse(key).map_err(|e| db_err(format!("key {key:?}: {e}")))?;
                let e: Expiry = serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Metadata(format!("record {id}: {e}")))?;
                if !e.deleted && e.expires_ms.is_some_and(|at| at <= now) {
                    out.push(decode(id, v.value())?);
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    async fn count_unfinished(&self) -> Result<u64> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(UPLOADS).map_err(db_err)?;
            let mut count = 0;
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let p: Progress = serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Metadata(format!("record {}: {e}", k.value())))?;
                if !p.deleted && p.length != Some(p.offset) {
                    count += 1;
                }
            }
            Ok(count)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    async fn list(&self) -> Result<Vec<UploadInfo>> {
        let db = self.db.clone();
        let rows = tokio::task::spawn_blocking(move || -> Result<Vec<(String, Vec<u8>)>> {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(UPLOADS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        rows.into_iter()
            .map(|(k, v)| {
                let id = UploadId::parse(&k).map_err(|e| db_err(format!("key {k:?}: {e}")))?;
                decode(id, &v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
