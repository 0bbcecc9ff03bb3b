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
//! - **Renewal**: one statement per instance every `ttl / 3` extends all its leases; a holder
//!   that could not renew stops writing (its takeover signal fires) `margin` before its lease
//!   can lapse, counted from when its last successful renewal was *sent*.
//! - **Takeover** from a holder on another instance: the newcomer writes its request into the
//!   row and sends a `NOTIFY`; the holder listens on a connection of its own, outside the pool,
//!   commits what it received and lets go. A lost notification costs one renewal at most: the
//!   renewal reads the request from the row, and so does the listener after each reconnect. A
//!   holder that died lets its lease lapse; the newcomer waits for that, up to `ttl` and a bit.

use super::errors::Failure;
use super::{PgMetaStore, setup::tls};
use crate::data::Reservations;
use crate::error::{Result, StoreError};
use crate::lock::{Lease, Locker};
use async_trait::async_trait;
use ferry_proto::UploadId;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
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
const ASK: &str = "
    WITH asked AS (
        UPDATE ferry_leases SET wanted_at = now()
        WHERE id = $1 AND owner IS NOT NULL RETURNING owner)
    SELECT pg_notify($2, $1 || ' ' || owner) FROM asked";
const RENEW: &str = "
    UPDATE ferry_leases SET expires_at = now() + make_interval(secs => $3)
    WHERE owner = $1 AND id = ANY($2)
    RETURNING id, epoch, wanted_at IS NOT NULL";
const RELEASE: &str = "UPDATE ferry_leases SET owner = NULL, wanted_at = NULL \
     WHERE id = $1 AND epoch = $2";
/// A lease of an upload that does not exist (a request for a wrong id) leaves no row behind.
const FORGET: &str = "DELETE FROM ferry_leases WHERE id = $1 AND epoch = $2 \
     AND NOT EXISTS (SELECT 1 FROM ferry_uploads WHERE id = $1)";
const RESERVE: &str = "UPDATE ferry_leases SET mark = greatest(mark, $3) \
     WHERE id = $1 AND epoch = $2 AND expires_at > now()";
const WANTED: &str = "SELECT id FROM ferry_leases WHERE owner = $1 AND wanted_at IS NOT NULL";
const SEEN: &str = "INSERT INTO ferry_instances (name, seen_at) VALUES ($1, now()) \
     ON CONFLICT (name) DO UPDATE SET seen_at = now()";
const GONE: &str = "DELETE FROM ferry_instances WHERE name = $1";
const LIVE: &str = "SELECT name, extract(epoch FROM now() - seen_at)::float8 FROM ferry_instances \
     WHERE seen_at > now() - make_interval(secs => $1) ORDER BY name";
/// What an instance that starts under a name finds still held under it is its former self's.
const ORPHANED: &str = "UPDATE ferry_leases SET owner = NULL, wanted_at = NULL WHERE owner = $1";

/// A lease this instance holds.
struct Held {
    epoch: u64,
    takeover: CancellationToken,
    /// Until when it may write (its last renewal's sending time + ttl − margin).
    valid_until: Instant,
    released: watch::Sender<bool>,
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
    /// Starts the locker of this instance (`meta`'s instance name): frees what a former
    /// process under the same name left held, then renews and listens in the background until
    /// the locker is dropped.
    pub async fn start(meta: Arc<PgMetaStore>, timing: LeaseTiming) -> Result<Self> {
        let timing = timing.checked().map_err(StoreError::WrongStore)?;
        let id = meta.database_id().await?;
        let channel = format!("ferry_leases_{}", id.get(..16).unwrap_or(&id));
        let instance = meta.instance.clone();
        exec(&meta, "lease cleanup", ORPHANED, &[&instance]).await?;
        exec(&meta, "instance", SEEN, &[&instance]).await?;
        let inner = Arc::new(Inner {
            meta,
            timing,
            channel,
            held: Mutex::default(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(keep(Arc::downgrade(&inner), inner.stop.clone()));
        tokio::spawn(listen(Arc::downgrade(&inner), inner.stop.clone()));
        Ok(Self { inner })
    }

    /// How many leases this instance holds.
    pub fn held(&self) -> usize {
        self.inner.held().len()
    }
}

impl PgMetaStore {
    /// Says this instance is gone, its requests ended (a clean shutdown): its leases are
    /// free at once rather than when they lapse, and tools need not wait for it to be
    /// forgotten.
    pub async fn leave(&self) -> Result<()> {
        exec(self, "lease cleanup", ORPHANED, &[&self.instance]).await?;
        exec(self, "instance", GONE, &[&self.instance]).await
    }

    /// The instances that said they were serving within `within`, with how many seconds ago.
    pub async fn live_instances(&self, within: Duration) -> Result<Vec<(String, f64)>> {
        let secs = &within.as_secs_f64();
        let rows = self
            .run(
                "instances",
                attempt!(|conn| async {
                    let me = self;
                    let stmt = me.prepare(conn, LIVE).await?;
                    me.trip();
                    conn.client()
                        .query(&stmt, &[secs])
                        .await
                        .map_err(|err| Failure::Pg {
                            err,
                            retry_safe: true,
                        })
                }),
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
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
        let (released, _) = watch::channel(false);
        self.held().insert(
            id,
            Held {
                epoch,
                takeover: takeover.clone(),
                valid_until: sent + self.timing.ttl - self.timing.margin,
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
        let expires = SystemTime::now() + self.timing.ttl;
        Ok(Some(
            Lease::new(id, epoch, Some(expires), takeover, Box::new(release))
                .with_reservations(Arc::new(reservations)),
        ))
    }

    /// Writes a takeover request into the lease's row and wakes its holder.
    async fn ask(&self, id: UploadId) -> Result<()> {
        let (key, channel) = (id.to_string(), self.channel.clone());
        exec(&self.meta, "lease takeover", ASK, &[&key, &channel]).await
    }

    /// Signals the holders of `ids` here (a takeover was asked for, or the lease is lost).
    fn signal(&self, ids: impl IntoIterator<Item = UploadId>) {
        let held = self.held();
        for id in ids {
            if let Some(h) = held.get(&id) {
                h.takeover.cancel();
            }
        }
    }

    /// Extends every lease held here; signals those lost or wanted elsewhere.
    async fn renew(&self) -> Result<()> {
        let snapshot: Vec<(UploadId, u64)> =
            self.held().iter().map(|(id, h)| (*id, h.epoch)).collect();
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
            let Some(h) = held.get_mut(&id).filter(|h| h.epoch == epoch) else {
                continue;
            };
            match renewed.get(&id.to_string()) {
                Some((e, wanted)) if *e == epoch => {
                    h.valid_until = sent + self.timing.ttl - self.timing.margin;
                    if *wanted {
                        h.takeover.cancel();
                    }
                }
                // Lapsed and granted to another: stop now.
                _ => {
                    tracing::warn!(upload = %id.tag(), epoch, "lease lost");
                    h.takeover.cancel();
                }
            }
        }
        Ok(())
    }

    /// Signals holders whose lease may lapse before they could renew it.
    fn expire(&self, now: Instant) {
        for (id, h) in self.held().iter() {
            if h.valid_until <= now && !h.takeover.is_cancelled() {
                tracing::warn!(upload = %id.tag(), "lease not renewed in time: stopping its writer");
                h.takeover.cancel();
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
    meta.run(
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

/// A statement that changes rows: with no answer it may have been applied.
fn unanswered(err: tokio_postgres::Error) -> Failure {
    Failure::Pg {
        retry_safe: err.as_db_error().is_some(),
        err,
    }
}

/// Renews and enforces the margin until `stop`.
async fn keep(inner: Weak<Inner>, stop: CancellationToken) {
    let tick = Duration::from_millis(100);
    let mut next_renewal = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        inner.expire(now);
        if now < next_renewal {
            continue;
        }
        // A renewal that fails is tried again soon; the margin check above runs meanwhile
        // (renewals run off this loop's tick only while one is in flight).
        let instance: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&inner.meta.instance];
        let seen = exec(&inner.meta, "instance", SEEN, &instance);
        let (seen, renewed) = futures_util::future::join(seen, inner.renew()).await;
        if let Err(e) = seen {
            tracing::debug!(error = %e, "saying this instance serves failed");
        }
        next_renewal = match renewed {
            Ok(()) => now + inner.timing.renew_every(),
            Err(e) => {
                tracing::warn!(error = %e, "renewing leases failed");
                now + Duration::from_millis(500)
            }
        };
        inner.expire(Instant::now());
    }
}

/// Listens for takeover requests on a connection of its own until `stop`, reconnecting (and
/// reading the requests it may have missed) whenever it breaks.
async fn listen(inner: Weak<Inner>, stop: CancellationToken) {
    let mut pause = Duration::from_millis(200);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let config = strong.meta.config.clone();
        let channel = strong.channel.clone();
        drop(strong);
        let session = listen_once(&inner, config, &channel);
        tokio::select! {
            () = stop.cancelled() => return,
            outcome = session => {
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "lease listener disconnected; reconnecting");
                } else {
                    pause = Duration::from_millis(200);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One listening session: connect, `LISTEN`, read the requests already in the rows, then
/// handle notifications until the connection ends.
async fn listen_once(
    inner: &Weak<Inner>,
    config: tokio_postgres::Config,
    channel: &str,
) -> Result<()> {
    let unavailable = |e: tokio_postgres::Error| StoreError::Unavailable(format!("listen: {e}"));
    let (client, mut connection) = config.connect(tls(&config)?).await.map_err(unavailable)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let _driver = AbortOnDrop(driver);
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(unavailable)?;
    {
        let Some(strong) = inner.upgrade() else {
            return Ok(());
        };
        let instance = strong.meta.instance.clone();
        let rows = client
            .query(WANTED, &[&instance])
            .await
            .map_err(unavailable)?;
        strong.signal(
            rows.iter()
                .filter_map(|r| UploadId::parse(&r.get::<_, String>(0)).ok()),
        );
    }
    while let Some(payload) = rx.recv().await {
        let Some(strong) = inner.upgrade() else {
            return Ok(());
        };
        if let Some((id, owner)) = payload.split_once(' ')
            && owner == strong.meta.instance
            && let Ok(id) = UploadId::parse(id)
        {
            strong.signal([id]);
        }
    }
    Err(StoreError::Unavailable(
        "the listening connection closed".into(),
    ))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lets go of a lease when dropped: at once here, then in the database.
struct Release {
    inner: Weak<Inner>,
    id: UploadId,
    epoch: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        {
            let mut held = inner.held();
            if held.get(&self.id).is_some_and(|h| h.epoch == self.epoch)
                && let Some(h) = held.remove(&self.id)
            {
                h.released.send_replace(true);
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (id, epoch) = (self.id, self.epoch);
        runtime.spawn(async move {
            let key = id.to_string();
            let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
            let forgot = exec(&inner.meta, "lease release", FORGET, &[&key, &epoch]).await;
            let released = exec(&inner.meta, "lease release", RELEASE, &[&key, &epoch]).await;
            if let Err(e) = forgot.and(released) {
                // It lapses by itself within a ttl.
                tracing::warn!(upload = %id.tag(), error = %e, "releasing a lease failed");
            }
        });
    }
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
        let changed = me
            .run(
                "part reservation",
                attempt!(|conn| async {
                    let stmt = me.prepare(conn, RESERVE).await?;
                    me.trip();
                    conn.client()
                        .execute(&stmt, &[key, epoch, n])
                        .await
                        .map_err(unanswered)
                }),
            )
            .await?;
        match changed {
            1 => Ok(()),
            _ => Err(StoreError::Fenced {
                id: self.id,
                epoch: self.epoch,
                current: self.epoch + 1,
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

#[cfg(test)]
mod tests;
