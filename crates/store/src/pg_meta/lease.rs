//! Leases shared by the instances of one database ([`PgLocker`]): one writer per upload across
//! all of them, fenced by an epoch.
//!
//! A lease is a row of `ferry_leases`: the owner instance, an epoch that grows with every
//! grant, and an expiry set by the **database clock** (instances' clocks need not agree).
//! - **Grant**: one statement takes a free or lapsed row, raising its epoch.
//! - **Fencing**: every commit under a lease is conditional on its epoch, checked in the
//!   commit's transaction with the lease row locked against grants
//!   ([`MetaStore::update_fenced`](crate::meta::MetaStore::update_fenced)); an object store
//!   reserves its part numbers against it ([`Reservations`]).
//! - **Renewal**: one statement per instance every `ttl / 3` extends all its leases that have
//!   not lapsed; a holder that could not renew stops writing (its takeover signal fires, the
//!   lease marked lost) `margin` before its lease can lapse, counted from when its last
//!   successful renewal was *sent*. That check runs on its own timer, so a renewal that hangs
//!   does not delay it. A lapsed lease is never revived, and commits and reservations under
//!   it are refused even while nobody has taken it.
//! - **Takeover** from a holder on another instance: the newcomer writes its request into the
//!   row and sends a `NOTIFY`; the holder listens on a connection of its own, outside the pool,
//!   commits what it received and lets go. A lost notification costs one renewal at most: the
//!   renewal reads the request from the row, and so does the listener after each reconnect. A
//!   holder that died lets its lease lapse; the newcomer waits for that, up to `ttl` and a bit.
//!   A request names the epoch it wants ended, so that a late one never ends a newer lease.
//! - **Instances** say they serve with every renewal (`ferry_instances`): a name is one
//!   process's at a time, and `ferry fsck --repair` waits until none serves. A build from
//!   before these leases (it held an exclusive advisory lock for as long as it served) and a
//!   running repair (which holds the same lock) keep instances from starting.

use super::errors::Failure;
use super::{PgMetaStore, setup::tls};
use crate::data::Reservations;
use crate::error::{Result, StoreError};
use crate::lock::{Lease, Locker};
use async_trait::async_trait;
use ferry_proto::UploadId;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long leases last and how early a holder stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease lasts unless renewed (by the database clock); renewed every third of
    /// it, so two renewals in a row may fail before it is in danger.
    pub ttl: Duration,
    /// How long before its lease could lapse a holder that cannot renew stops writing: room
    /// for the commit it makes on the way out, and for the clocks' rates to differ.
    pub margin: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            margin: Duration::from_secs(2),
        }
    }
}

impl LeaseTiming {
    /// Checks that the margin leaves time to write: at least a second of it, below the ttl.
    pub fn checked(self) -> std::result::Result<Self, String> {
        if self.margin < Duration::from_secs(1) || self.ttl < self.margin * 2 {
            return Err(format!(
                "the lease ttl ({:?}) must be at least twice its margin ({:?}), which must be at \
                 least 1 s",
                self.ttl, self.margin
            ));
        }
        Ok(self)
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// How long a newcomer waits for a holder: one that died lets its lease lapse within a
    /// ttl.
    fn patience(&self) -> Duration {
        self.ttl + Duration::from_secs(2)
    }
}

const GRANT: &str = "
    INSERT INTO ferry_leases AS l (id, owner, epoch, expires_at, wanted_at, mark)
    VALUES ($1, $2, 1, now() + make_interval(secs => $3), NULL, 0)
    ON CONFLICT (id) DO UPDATE
        SET owner = $2, epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at, wanted_at = NULL
        WHERE l.owner IS NULL OR l.expires_at <= now()
    RETURNING epoch, mark";
/// The notification says which epoch is asked to end: `id epoch owner`.
const ASK: &str = "
    WITH asked AS (
        UPDATE ferry_leases SET wanted_at = now()
        WHERE id = $1 AND owner IS NOT NULL RETURNING owner, epoch)
    SELECT pg_notify($2, $1 || ' ' || epoch || ' ' || owner) FROM asked";
/// Only leases that have not lapsed: one that did may be granted to another any moment. By
/// the clock when it runs (`now()` is when its statement began: it may have waited on a lock).
const RENEW: &str = "
    UPDATE ferry_leases SET expires_at = clock_timestamp() + make_interval(secs => $3)
    WHERE owner = $1 AND id = ANY($2) AND expires_at > clock_timestamp()
    RETURNING id, epoch, wanted_at IS NOT NULL";
const RELEASE: &str = "UPDATE ferry_leases SET owner = NULL, wanted_at = NULL \
     WHERE id = $1 AND epoch = $2";
/// A lease of an upload that does not exist (a request for a wrong id) leaves no row behind.
const FORGET: &str = "DELETE FROM ferry_leases WHERE id = $1 AND epoch = $2 \
     AND NOT EXISTS (SELECT 1 FROM ferry_uploads WHERE id = $1)";
/// Reserves under a lease that is still this holder's and has not lapsed; says whether it
/// did, and the lease's epoch now.
const RESERVE: &str = "
    WITH r AS (
        UPDATE ferry_leases SET mark = greatest(mark, $3)
        WHERE id = $1 AND epoch = $2 AND owner = $4 AND expires_at > clock_timestamp()
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM r), (SELECT epoch FROM ferry_leases WHERE id = $1)";
const EPOCH: &str = "SELECT epoch FROM ferry_leases WHERE id = $1";
const WANTED: &str =
    "SELECT id, epoch FROM ferry_leases WHERE owner = $1 AND wanted_at IS NOT NULL";
const SEEN: &str = "INSERT INTO ferry_instances (name, seen_at) VALUES ($1, now()) \
     ON CONFLICT (name) DO UPDATE SET seen_at = now()";
/// How long ago an instance of this name said it served (none: never, or it left).
const LAST_SEEN: &str = "SELECT seen_at, extract(epoch FROM now() - seen_at)::float8 \
     FROM ferry_instances WHERE name = $1";
/// Whether an exclusive holder of the database's lock is absent: a build from before
/// these leases while it serves, or `ferry fsck --repair` while it runs.
const NO_EXCLUSIVE: &str = "SELECT CASE WHEN pg_try_advisory_lock_shared($1) \
     THEN pg_advisory_unlock_shared($1) ELSE false END";
/// Rows no upload needs any more: free or long lapsed leases of uploads that are gone (a
/// release that never ran), instances not seen for a day.
const TIDY_LEASES: &str = "DELETE FROM ferry_leases l \
     WHERE (l.owner IS NULL OR l.expires_at < now() - interval '1 hour') \
     AND NOT EXISTS (SELECT 1 FROM ferry_uploads u WHERE u.id = l.id)";
const TIDY_INSTANCES: &str = "DELETE FROM ferry_instances WHERE seen_at < now() - interval '1 day'";
const GONE: &str = "DELETE FROM ferry_instances WHERE name = $1";
const LIVE: &str = "SELECT name, extract(epoch FROM now() - seen_at)::float8 FROM ferry_instances \
     WHERE seen_at > now() - make_interval(secs => $1) ORDER BY name";
/// What an instance that starts under a name finds still held under it is its former self's.
const ORPHANED: &str = "UPDATE ferry_leases SET owner = NULL, wanted_at = NULL WHERE owner = $1";

/// A lease this instance holds.
struct Held {
    epoch: u64,
    takeover: CancellationToken,
    /// Set before `takeover` fires when the lease could not be kept.
    lost: Arc<AtomicBool>,
    /// Until when it may write (its last renewal's sending time + ttl − margin).
    valid_until: Instant,
    /// Its lease was dropped; the row is being released (then this entry goes).
    releasing: bool,
    released: watch::Sender<bool>,
}

impl Held {
    fn lose(&self, id: UploadId, why: &str) {
        if !self.takeover.is_cancelled() {
            tracing::warn!(upload = %id.tag(), epoch = self.epoch, "{why}: stopping its writer");
        }
        self.lost.store(true, Ordering::Release);
        self.takeover.cancel();
    }
}

struct Inner {
    meta: Arc<PgMetaStore>,
    timing: LeaseTiming,
    /// The notification channel: one per schema (a database may hold several).
    channel: String,
    held: Mutex<HashMap<UploadId, Held>>,
    stop: CancellationToken,
}

/// [`Locker`] over `ferry_leases`, for the instances sharing a PostgreSQL database.
#[derive(Clone)]
pub struct PgLocker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgLocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLocker")
            .field("instance", &self.inner.meta.instance)
            .field("timing", &self.inner.timing)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PgLocker {
    /// Starts the locker of this instance (`meta`'s instance name): refuses to start beside
    /// an exclusive holder of the database (an older build, a repair) or another live
    /// instance of the same name, frees what a former process under the name left held, then
    /// renews and listens in the background until the locker is dropped.
    pub async fn start(meta: Arc<PgMetaStore>, timing: LeaseTiming) -> Result<Self> {
        let timing = timing.checked().map_err(StoreError::WrongStore)?;
        let id = meta.database_id().await?;
        let channel = format!("ferry_leases_{}", id.get(..16).unwrap_or(&id));
        let instance = meta.instance.clone();
        one_of_its_name(&meta, timing).await?;
        // Said before the check: a repair that takes the lock after it sees this instance.
        exec(&meta, "instance", SEEN, &[&instance]).await?;
        // Refused, its row stays until it ages out: deleting it could delete a live
        // namesake's (one whose renewals stalled), which a repair must see.
        if !ask_bool(&meta, NO_EXCLUSIVE, &[&lock_key(&id)?]).await? {
            return Err(StoreError::WrongStore(
                concat!(
                    "this PostgreSQL database is held exclusively: by `ferry fsck --repair`, ",
                    "or by a ferry build from before cluster leases, which must not serve ",
                    "beside this one; wait for the repair or stop that build"
                )
                .into(),
            ));
        }
        exec(&meta, "lease cleanup", ORPHANED, &[&instance]).await?;
        let inner = Arc::new(Inner {
            meta,
            timing,
            channel,
            held: Mutex::default(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(keep(Arc::downgrade(&inner), inner.stop.clone()));
        tokio::spawn(enforce(Arc::downgrade(&inner), inner.stop.clone()));
        tokio::spawn(listen(Arc::downgrade(&inner), inner.stop.clone()));
        Ok(Self { inner })
    }

    /// How many leases this instance holds.
    pub fn held(&self) -> usize {
        self.inner.held().len()
    }
}

impl Inner {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks a holder in this process to let go; its release, to wait for.
    fn ask_here(&self, id: UploadId) -> Option<watch::Receiver<bool>> {
        let held = self.held();
        let h = held.get(&id)?;
        h.takeover.cancel();
        Some(h.released.subscribe())
    }

    /// Takes the lease in the database if it is free or lapsed.
    async fn grant(self: &Arc<Self>, id: UploadId) -> Result<Option<Lease>> {
        let (key, secs) = (&id.to_string(), &self.timing.ttl.as_secs_f64());
        let sent = Instant::now();
        let me = &self.meta;
        let row = me
            .run(
                "lease",
                attempt!(|conn| async {
                    let stmt = me.prepare(conn, GRANT).await?;
                    me.trip();
                    conn.client()
                        .query_opt(&stmt, &[key, &me.instance, secs])
                        .await
                        .map_err(unanswered)
                }),
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let epoch = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let mark = u32::try_from(row.get::<_, i32>(1)).unwrap_or(0);
        let takeover = CancellationToken::new();
        let lost = Arc::new(AtomicBool::new(false));
        let (released, _) = watch::channel(false);
        self.held().insert(
            id,
            Held {
                epoch,
                takeover: takeover.clone(),
                lost: lost.clone(),
                valid_until: sent + self.timing.ttl - self.timing.margin,
                releasing: false,
                released,
            },
        );
        let release = Release {
            inner: Arc::downgrade(self),
            id,
            epoch,
        };
        let reservations = PgReservations {
            meta: self.meta.clone(),
            id,
            epoch,
            before: mark,
        };
        Ok(Some(
            Lease::new(id, epoch, takeover, Box::new(release))
                .with_reservations(Arc::new(reservations), lost),
        ))
    }

    /// Writes a takeover request into the lease's row and wakes its holder.
    async fn ask(&self, id: UploadId) -> Result<()> {
        let (key, channel) = (id.to_string(), self.channel.clone());
        exec(&self.meta, "lease takeover", ASK, &[&key, &channel]).await
    }

    /// Signals the holders of `asked` here (a takeover was asked for): each lease by its
    /// epoch, so that a request meant for an earlier lease of the upload ends no later one.
    fn signal(&self, asked: impl IntoIterator<Item = (UploadId, u64)>) {
        let held = self.held();
        for (id, epoch) in asked {
            if let Some(h) = held.get(&id).filter(|h| h.epoch == epoch) {
                h.takeover.cancel();
            }
        }
    }

    /// Extends every lease held here; signals those lost or wanted elsewhere.
    async fn renew(&self) -> Result<()> {
        let snapshot: Vec<(UploadId, u64)> = self
            .held()
            .iter()
            .filter(|(_, h)| !h.releasing)
            .map(|(id, h)| (*id, h.epoch))
            .collect();
        if snapshot.is_empty() {
            return Ok(());
        }
        let keys = &snapshot
            .iter()
            .map(|(id, _)| id.to_string())
            .collect::<Vec<_>>();
        let secs = &self.timing.ttl.as_secs_f64();
        let sent = Instant::now();
        let me = &self.meta;
        let rows = me
            .run_for(
                self.timing.renew_every(),
                "lease renewal",
                attempt!(|conn| async {
                    let stmt = me.prepare(conn, RENEW).await?;
                    me.trip();
                    conn.client()
                        .query(&stmt, &[&me.instance, keys, secs])
                        .await
                        .map_err(unanswered)
                }),
            )
            .await?;
        let renewed: HashMap<String, (u64, bool)> = rows
            .iter()
            .map(|r| {
                let epoch = u64::try_from(r.get::<_, i64>(1)).unwrap_or(0);
                (r.get::<_, String>(0), (epoch, r.get::<_, bool>(2)))
            })
            .collect();
        let mut held = self.held();
        for (id, epoch) in snapshot {
            let Some(h) = held
                .get_mut(&id)
                .filter(|h| h.epoch == epoch && !h.releasing)
            else {
                continue;
            };
            match renewed.get(&id.to_string()) {
                Some((e, wanted)) if *e == epoch => {
                    h.valid_until = sent + self.timing.ttl - self.timing.margin;
                    if *wanted {
                        h.takeover.cancel();
                    }
                }
                // Lapsed (perhaps granted to another already): stop now.
                _ => h.lose(id, "lease lapsed"),
            }
        }
        Ok(())
    }

    /// Stops holders whose lease may lapse before they could renew it.
    fn expire(&self, now: Instant) {
        for (id, h) in self.held().iter() {
            if h.valid_until <= now && !h.releasing {
                h.lose(*id, "lease not renewed in time");
            }
        }
    }
}

/// Runs `sql` once (its answer lost: not again, it may have been applied).
async fn exec(
    meta: &PgMetaStore,
    what: &str,
    sql: &'static str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<()> {
    exec_for(meta, meta.timeout, what, sql, params).await
}

/// [`exec`] within `timeout`.
async fn exec_for(
    meta: &PgMetaStore,
    timeout: Duration,
    what: &str,
    sql: &'static str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<()> {
    meta.run_for(
        timeout,
        what,
        attempt!(|conn| async {
            let stmt = meta.prepare(conn, sql).await?;
            meta.trip();
            conn.client()
                .execute(&stmt, params)
                .await
                .map(drop)
                .map_err(unanswered)
        }),
    )
    .await
}

/// Runs a statement that changes nothing and returns its rows.
async fn query(
    meta: &PgMetaStore,
    what: &str,
    sql: &'static str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>> {
    meta.run(
        what,
        attempt!(|conn| async {
            let stmt = meta.prepare(conn, sql).await?;
            meta.trip();
            conn.client()
                .query(&stmt, params)
                .await
                .map_err(|err| Failure::Pg {
                    err,
                    retry_safe: true,
                })
        }),
    )
    .await
}

/// The one boolean a statement answers.
async fn ask_bool(
    meta: &PgMetaStore,
    sql: &'static str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<bool> {
    let rows = query(meta, "lock check", sql, params).await?;
    Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
}

/// A statement that changes rows: with no answer it may have been applied.
fn unanswered(err: tokio_postgres::Error) -> Failure {
    Failure::Pg {
        retry_safe: err.as_db_error().is_some(),
        err,
    }
}

/// Lets go of a lease when dropped: in the database, then here. Until the row is free, a
/// newcomer in this process waits for the release (it would otherwise ask its own instance
/// to let go of a lease nobody holds any more).
struct Release {
    inner: Weak<Inner>,
    id: UploadId,
    epoch: u64,
}

impl Inner {
    /// Forgets a lease here once its row is released, waking those waiting for it.
    fn forget(&self, id: UploadId, epoch: u64) {
        let mut held = self.held();
        if held.get(&id).is_some_and(|h| h.epoch == epoch)
            && let Some(h) = held.remove(&id)
        {
            h.released.send_replace(true);
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let (id, epoch) = (self.id, self.epoch);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to release it with: it lapses by itself within a ttl.
            inner.forget(id, epoch);
            return;
        };
        if let Some(h) = inner.held().get_mut(&id).filter(|h| h.epoch == epoch) {
            h.releasing = true;
        }
        runtime.spawn(async move {
            let key = id.to_string();
            let e = i64::try_from(epoch).unwrap_or(i64::MAX);
            let forgot = exec(&inner.meta, "lease release", FORGET, &[&key, &e]).await;
            let released = exec(&inner.meta, "lease release", RELEASE, &[&key, &e]).await;
            if let Err(e) = forgot.and(released) {
                // It lapses by itself within a ttl.
                tracing::warn!(upload = %id.tag(), error = %e, "releasing a lease failed");
            }
            inner.forget(id, epoch);
        });
    }
}

/// A lease that is still the upload's latest but lapsed (or was freed): this holder may
/// write no more, and nobody else has yet.
pub(crate) fn lapsed(id: UploadId) -> StoreError {
    StoreError::Unavailable(format!(
        "this server's lease on upload {} lapsed before it could write: resume the upload",
        id.tag()
    ))
}

/// Part numbers reserved against a lease's epoch.
struct PgReservations {
    meta: Arc<PgMetaStore>,
    id: UploadId,
    epoch: u64,
    before: u32,
}

#[async_trait]
impl Reservations for PgReservations {
    async fn reserve(&self, n: u32) -> Result<()> {
        let key = &self.id.to_string();
        let epoch = &i64::try_from(self.epoch).unwrap_or(i64::MAX);
        let n = &i32::try_from(n).unwrap_or(i32::MAX);
        let me = &self.meta;
        let row = me
            .run(
                "part reservation",
                attempt!(|conn| async {
                    let stmt = me.prepare(conn, RESERVE).await?;
                    me.trip();
                    conn.client()
                        .query_one(&stmt, &[key, epoch, n, &me.instance])
                        .await
                        .map_err(unanswered)
                }),
            )
            .await?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        // The epoch the statement read is from when it began: one that waited behind a grant
        // read the epoch before it. Read again to tell taken (409) from lapsed (503).
        let again = query(me, "part reservation", EPOCH, &[key]).await?;
        let current = again
            .first()
            .and_then(|r| u64::try_from(r.get::<_, i64>(0)).ok())
            .or_else(|| u64::try_from(row.get::<_, Option<i64>>(1)?).ok())
            .unwrap_or(0);
        match current == self.epoch {
            true => Err(lapsed(self.id)),
            false => Err(StoreError::Fenced {
                id: self.id,
                epoch: self.epoch,
                current,
            }),
        }
    }

    fn reserved_before(&self) -> u32 {
        self.before
    }
}

#[async_trait]
impl Locker for PgLocker {
    async fn try_acquire(&self, id: UploadId) -> Result<Lease> {
        if self.inner.held().contains_key(&id) {
            return Err(StoreError::Busy(id));
        }
        self.inner.grant(id).await?.ok_or(StoreError::Busy(id))
    }

    async fn acquire(&self, id: UploadId) -> Result<Lease> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.timing.patience();
        let mut asked: Option<Instant> = None;
        let mut pause = Duration::from_millis(10);
        loop {
            // A holder in this process is asked directly, and its release awaited.
            if let Some(mut released) = inner.ask_here(id) {
                let wait = released.wait_for(|r| *r);
                if tokio::time::timeout_at(deadline, wait).await.is_err() {
                    return Err(StoreError::Busy(id));
                }
                continue;
            }
            if let Some(lease) = inner.grant(id).await? {
                return Ok(lease);
            }
            // Asked again now and then: a holder whose listener was reconnecting reads the
            // row at its next renewal anyway.
            if asked.is_none_or(|t| t.elapsed() >= inner.timing.renew_every()) {
                inner.ask(id).await?;
                asked = Some(Instant::now());
            }
            if Instant::now() + pause >= deadline {
                return Err(StoreError::Busy(id));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

mod background;
mod instances;
use background::{enforce, keep, listen};
pub use instances::ExclusiveHold;
use instances::{lock_key, one_of_its_name};
#[cfg(test)]
mod tests;
