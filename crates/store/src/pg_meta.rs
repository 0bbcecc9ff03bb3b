//! PostgreSQL metadata store (`ferry serve --meta postgres://…`): one database holds the
//! records of every instance that serves the same data store.
//!
//! - **One transaction per change.** A read-modify-write locks the rows it reads (`SELECT …
//!   FOR UPDATE`, in id order), runs the change on them and writes what changed, at READ
//!   COMMITTED: concurrent changes of one record queue on its row lock and each sees the
//!   other's result. A conflict PostgreSQL reports anyway (a deadlock, a serialization
//!   failure, two transactions creating the same record) rolls back and runs the change again;
//!   changes are written to be re-run ([`crate::meta`]).
//! - **Two round trips per change**: `BEGIN` goes with the locking `SELECT`, the writes with
//!   `COMMIT` (tokio-postgres pipelines requests sent before their answers are awaited). A
//!   read, an insert or a removal is one statement, one round trip.
//! - **Durable on return**: a commit returns once PostgreSQL has flushed its WAL
//!   (`synchronous_commit` on, its default; a startup warning says when it is not).
//! - **Never hangs**: every call (waiting for a pooled connection included) is bounded by the
//!   operation timeout; a database that cannot be reached, a full pool or no answer in time is
//!   [`StoreError::Unavailable`] (503 with `Retry-After`). A connection that broke or timed out
//!   mid-transaction is closed, never pooled again, and new ones are made as the database comes
//!   back: the instance recovers from a PostgreSQL restart by itself.
//! - **Rolling upgrades**: records are JSON read by name; an update replaces the keys this
//!   build knows and keeps the others, so what a newer build added survives an older build's
//!   writes. The schema is versioned ([`schema`]).
//! - **Shared expiry**: [`MetaStore::expired`] claims the records it returns for this
//!   instance for a while (`FOR UPDATE SKIP LOCKED`), so instances sweep different uploads.

mod errors;
mod schema;

pub use lease::{ExclusiveHold, LeaseTiming, PgLocker};
pub use schema::SCHEMA_VERSION;
pub use setup::parse_url;
/// Connection settings, as parsed from a URL by [`parse_url`].
pub use tokio_postgres::Config as PgConfig;

use crate::error::{Result, StoreError};
use crate::meta::Records;
use crate::model::UploadInfo;
use crate::record::{decode, encode};
use deadpool_postgres::{Object, Pool};
use errors::{Class, Failure, classify, conflict_backoff, jitter, pool_error, store_error};
use ferry_proto::UploadId;
use futures_util::future::maybe_done;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_postgres::types::ToSql;

/// How a [`PgMetaStore`] connects and behaves.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// This instance's name: in sweep claims and PostgreSQL's `application_name`.
    pub instance: String,
    /// Most connections held open.
    pub pool_size: usize,
    /// Longest a call may take, waiting for a connection included.
    pub timeout: Duration,
}

impl PgSettings {
    /// Defaults for `instance`: 16 connections, 10 s per call.
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: instance.into(),
            pool_size: 16,
            timeout: Duration::from_secs(10),
        }
    }
}

/// How long an expired record handed to one instance's sweeper stays out of the others'.
const SWEEP_CLAIM: Duration = Duration::from_secs(300);

/// Re-runs of a change that met a conflict before giving up.
const MAX_CONFLICT_RETRIES: u32 = 8;

/// One try of a call: the connection back, and what came of it.
type Attempt<'a, T> = futures_util::future::BoxFuture<'a, (Conn, std::result::Result<T, Failure>)>;

/// Runs `$body` (an async block using `$conn: &mut Conn`) as an [`Attempt`].
macro_rules! attempt {
    (|$conn:ident| $body:expr) => {
        move |mut conn: $crate::pg_meta::Conn| -> $crate::pg_meta::Attempt<'_, _> {
            Box::pin(async move {
                let $conn = &mut conn;
                let outcome = $body.await;
                (conn, outcome)
            })
        }
    };
}

/// A pooled connection that goes back to the pool only when it is known to be outside any
/// transaction; otherwise (an error, a timeout that dropped the call mid-way) it is closed.
struct Conn {
    obj: Option<Object>,
    /// A transaction is open on it.
    in_tx: bool,
    /// The attempt using it ended (rather than being dropped mid-way, with a request perhaps
    /// still waiting for an answer on it).
    settled: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if (self.in_tx || !self.settled)
            && let Some(obj) = self.obj.take()
        {
            drop(Object::take(obj));
        }
    }
}

impl Conn {
    fn client(&self) -> &Object {
        self.obj.as_ref().expect("connection present until dropped")
    }
}

/// Parameters of a record's row: id, record JSON, `expires_ms`, `deleted`, `unfinished`.
struct RowValues {
    id: String,
    json: String,
    expires: Option<i64>,
    deleted: bool,
    unfinished: bool,
}

impl RowValues {
    fn of(info: &UploadInfo) -> Result<Self> {
        let json = String::from_utf8(encode(info))
            .map_err(|e| StoreError::Metadata(format!("record {}: {e}", info.id)))?;
        Ok(Self {
            id: info.id.to_string(),
            json,
            expires: info
                .expires_ms
                .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX)),
            deleted: info.deleted,
            unfinished: !info.deleted && !info.is_complete(),
        })
    }
}

const GET: &str = "SELECT record::text FROM ferry_uploads WHERE id = $1";
/// The lease a fenced change is made under, locked against a grant until the change commits.
/// The lease's epoch now, and whether the committing instance still holds it unlapsed
/// (locked against grants until the commit ends).
const LEASE_EPOCH: &str = "SELECT epoch, coalesce(owner = $2 AND expires_at > now(), false) \
     FROM ferry_leases WHERE id = $1 FOR SHARE";
const LOCK: &str =
    "SELECT id, record::text FROM ferry_uploads WHERE id = ANY($1) ORDER BY id FOR UPDATE";
const INSERT_NEW: &str = "INSERT INTO ferry_uploads (id, record, expires_ms, deleted, unfinished) \
     VALUES ($1, $2::text::jsonb, $3, $4, $5) ON CONFLICT (id) DO NOTHING";
const INSERT: &str = "INSERT INTO ferry_uploads (id, record, expires_ms, deleted, unfinished) \
     VALUES ($1, $2::text::jsonb, $3, $4, $5)";
/// Replaces the keys this build writes ($6) and keeps the others.
const REWRITE: &str = "UPDATE ferry_uploads SET record = (record - $6::text[]) || $2::text::jsonb, \
     expires_ms = $3, deleted = $4, unfinished = $5 WHERE id = $1";
const DELETE: &str = "DELETE FROM ferry_uploads WHERE id = $1";
const CLAIM_EXPIRED: &str = "
    WITH picked AS (
        SELECT id FROM ferry_uploads
        WHERE NOT deleted AND expires_ms <= $1 AND id > $2
          AND (sweep_until IS NULL OR sweep_until < now() OR sweep_owner = $3)
        ORDER BY id LIMIT $4
        FOR UPDATE SKIP LOCKED)
    UPDATE ferry_uploads u
    SET sweep_owner = $3, sweep_until = now() + make_interval(secs => $5)
    FROM picked WHERE u.id = picked.id
    RETURNING u.id, u.record::text";
const COUNT_UNFINISHED: &str = "SELECT count(*) FROM ferry_uploads WHERE unfinished";
const LIST: &str = "SELECT id, record::text FROM ferry_uploads ORDER BY id";

// After the macro: its users.
mod lease;
mod setup;
mod store;

/// PostgreSQL-backed [`MetaStore`].
pub struct PgMetaStore {
    pool: Pool,
    instance: String,
    timeout: Duration,
    /// The record keys this build replaces on update (the rest are kept).
    known: Vec<String>,
    round_trips: AtomicU64,
    /// How its connections are made (a locker's listening connection is made the same way).
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for PgMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgMetaStore")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl PgMetaStore {
    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Network round trips to PostgreSQL made so far (for benchmarks and logs).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    async fn conn(&self) -> Result<Conn> {
        let obj = self
            .pool
            .get()
            .await
            .map_err(|e| pool_error(e, self.timeout))?;
        Ok(Conn {
            obj: Some(obj),
            in_tx: false,
            settled: false,
        })
    }

    /// Runs `attempt` on a pooled connection until it succeeds, meets an answer of its own, or
    /// fails in a way that running it again cannot mend; all within the operation timeout.
    /// `attempt` takes the connection and gives it back with its outcome.
    async fn run<'a, T: Send + 'a>(
        &'a self,
        what: &str,
        attempt: impl FnMut(Conn) -> Attempt<'a, T> + Send + 'a,
    ) -> Result<T> {
        self.run_for(self.timeout, what, attempt).await
    }

    /// [`run`](Self::run) within `timeout`.
    async fn run_for<'a, T: Send + 'a>(
        &'a self,
        timeout: Duration,
        what: &str,
        mut attempt: impl FnMut(Conn) -> Attempt<'a, T> + Send + 'a,
    ) -> Result<T> {
        let work = async {
            let mut conflicts = 0;
            let mut reconnects = 0;
            let mut again = 0;
            loop {
                let conn = self.conn().await?;
                let (mut conn, outcome) = attempt(conn).await;
                conn.settled = true;
                let err = match outcome {
                    Ok(v) => return Ok(v),
                    Err(Failure::Store(e)) => return Err(e),
                    Err(Failure::Again) if again < MAX_CONFLICT_RETRIES => {
                        again += 1;
                        continue;
                    }
                    Err(Failure::Again) => {
                        return Err(StoreError::Inconsistent(
                            "a transaction kept adding records it had not named".into(),
                        ));
                    }
                    Err(Failure::Pg { err, retry_safe }) => (err, retry_safe),
                };
                drop(conn);
                let (err, retry_safe) = err;
                let class = classify(err.code());
                match class {
                    Class::Conflict if conflicts < MAX_CONFLICT_RETRIES => {
                        conflicts += 1;
                        tokio::time::sleep(conflict_backoff(conflicts, jitter())).await;
                    }
                    // A pooled connection that died with the server (a restart): once more on a
                    // new one, when nothing can have been committed.
                    Class::Unavailable if retry_safe && reconnects < 1 => reconnects += 1,
                    _ => {
                        let e = store_error(class, &err);
                        tracing::debug!(what, error = %e, "PostgreSQL call failed");
                        return Err(e);
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "PostgreSQL did not answer within {timeout:?} ({what})"
            ))),
        }
    }

    async fn prepare(
        &self,
        conn: &Conn,
        sql: &str,
    ) -> std::result::Result<tokio_postgres::Statement, Failure> {
        // Cached per connection: prepared once, then no round trip.
        conn.client()
            .prepare_cached(sql)
            .await
            .map_err(|err| Failure::Pg {
                err,
                retry_safe: !conn.in_tx,
            })
    }

    /// Opens a transaction and locks the records `ids` (absent ones `None`): `BEGIN` and the
    /// locking `SELECT` in one round trip.
    async fn begin_locked(
        &self,
        conn: &mut Conn,
        ids: &[UploadId],
    ) -> std::result::Result<Records, Failure> {
        self.begin_locked_fenced(conn, ids, None).await
    }

    /// [`begin_locked`](Self::begin_locked), and with `fence` (an upload and its holder's
    /// epoch) the upload's lease row locked against grants too, in the same round trip:
    /// `Fenced` if a later lease was granted (or none is held).
    async fn begin_locked_fenced(
        &self,
        conn: &mut Conn,
        ids: &[UploadId],
        fence: Option<(UploadId, u64)>,
    ) -> std::result::Result<Records, Failure> {
        let lock = self.prepare(conn, LOCK).await?;
        let lease = match fence {
            Some(_) => Some(self.prepare(conn, LEASE_EPOCH).await?),
            None => None,
        };
        let keys: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let fence_key = fence.map(|(id, _)| id.to_string());
        conn.in_tx = true;
        self.trip();
        let client = conn.client();
        let epoch = async {
            match (&lease, &fence_key) {
                (Some(stmt), Some(key)) => client
                    .query_opt(stmt, &[key, &self.instance])
                    .await
                    .map(Some),
                _ => Ok(None),
            }
        };
        let (begun, rows, epoch) = futures_util::future::join3(
            client.batch_execute("BEGIN"),
            client.query(&lock, &[&keys]),
            epoch,
        )
        .await;
        let pg = |err| Failure::Pg {
            err,
            retry_safe: true,
        };
        begun.map_err(pg)?;
        let rows = rows.map_err(pg)?;
        if let (Some((id, mine)), Some(row)) = (fence, epoch.map_err(pg)?) {
            let (current, valid) = row.map_or((0, false), |r| {
                (u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), r.get(1))
            });
            if current != mine {
                self.rollback(conn).await;
                return Err(StoreError::Fenced {
                    id,
                    epoch: mine,
                    current,
                }
                .into());
            }
            if !valid {
                self.rollback(conn).await;
                return Err(lease::lapsed(id).into());
            }
        }
        let mut records: Records = ids.iter().map(|id| (*id, None)).collect();
        for row in rows {
            let key: String = row.get(0);
            let json: String = row.get(1);
            let id = UploadId::parse(&key)
                .map_err(|e| StoreError::Metadata(format!("record key {key:?}: {e}")))?;
            records.insert(id, Some(decode(id, json.as_bytes())?));
        }
        Ok(records)
    }

    /// Commits the open transaction. A COMMIT with no answer may or may not have been
    /// applied: never run again.
    async fn commit(&self, conn: &mut Conn) -> std::result::Result<(), Failure> {
        self.trip();
        conn.client()
            .batch_execute("COMMIT")
            .await
            .map_err(|err| Failure::Pg {
                err,
                retry_safe: false,
            })?;
        conn.in_tx = false;
        Ok(())
    }

    /// Ends a transaction that changes nothing.
    async fn rollback(&self, conn: &mut Conn) {
        self.trip();
        if conn.client().batch_execute("ROLLBACK").await.is_ok() {
            conn.in_tx = false;
        }
    }

    /// Writes `changes` (record, and whether it existed when locked; `None`: removed) and
    /// commits, in one round trip.
    async fn write_and_commit(
        &self,
        conn: &mut Conn,
        changes: &[(UploadId, Option<&UploadInfo>, bool)],
    ) -> std::result::Result<(), Failure> {
        let (insert, rewrite, delete) = (
            self.prepare(conn, INSERT).await?,
            self.prepare(conn, REWRITE).await?,
            self.prepare(conn, DELETE).await?,
        );
        let mut rows = Vec::with_capacity(changes.len());
        for (id, info, existed) in changes {
            rows.push((
                id.to_string(),
                info.map(RowValues::of).transpose()?,
                *existed,
            ));
        }
        let known = &self.known;
        let params: Vec<(&tokio_postgres::Statement, Vec<&(dyn ToSql + Sync)>)> = rows
            .iter()
            .map(|(key, row, existed)| match row {
                None => (&delete, vec![key as &(dyn ToSql + Sync)]),
                Some(r) if *existed => (
                    &rewrite,
                    vec![
                        &r.id as &(dyn ToSql + Sync),
                        &r.json,
                        &r.expires,
                        &r.deleted,
                        &r.unfinished,
                        known,
                    ],
                ),
                Some(r) => (
                    &insert,
                    vec![
                        &r.id as &(dyn ToSql + Sync),
                        &r.json,
                        &r.expires,
                        &r.deleted,
                        &r.unfinished,
                    ],
                ),
            })
            .collect();
        let client = conn.client();
        let mut writes: Vec<_> = params
            .iter()
            .map(|(stmt, p)| Box::pin(maybe_done(client.execute(*stmt, p.as_slice()))))
            .collect();
        self.trip();
        // A request goes out on its first poll: the writes in order, then COMMIT, all before
        // any answer is awaited.
        for w in &mut writes {
            let _ = futures_util::poll!(w.as_mut());
        }
        // A write that failed before it was sent (nothing reached the server) must not be
        // followed by a COMMIT of the others.
        let unsent = writes
            .iter_mut()
            .any(|w| matches!(w.as_mut().output_mut(), Some(Err(e)) if e.as_db_error().is_none()));
        let end = if unsent { "ROLLBACK" } else { "COMMIT" };
        let mut commit = Box::pin(maybe_done(client.batch_execute(end)));
        let _ = futures_util::poll!(commit.as_mut());
        for w in &mut writes {
            w.as_mut().await;
        }
        commit.as_mut().await;
        let committed = commit.as_mut().take_output().expect("awaited");
        let written: Vec<_> = writes
            .iter_mut()
            .map(|w| w.as_mut().take_output().expect("awaited"))
            .collect();
        drop((writes, commit));
        // Answered (a COMMIT, or the rollback PostgreSQL makes of a COMMIT after a failed
        // write): the connection is outside any transaction again.
        if committed.is_ok() {
            conn.in_tx = false;
        }
        for w in written {
            // A write the server refused aborted the transaction: nothing was committed, so the
            // change may run again (a conflict). One with no answer from the server may have
            // been committed with the rest: never run again.
            w.map_err(|err| Failure::Pg {
                retry_safe: err.as_db_error().is_some(),
                err,
            })?;
        }
        // A COMMIT with no answer may or may not have been applied: not run again.
        committed.map_err(|err| Failure::Pg {
            err,
            retry_safe: false,
        })?;
        // (An unsent write returned its own error above: the ROLLBACK leaves nothing behind.)
        Ok(())
    }
}

#[cfg(test)]
mod tests;
