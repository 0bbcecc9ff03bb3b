//! Instances of one database: names held by one live process each, the exclusive hold a
//! repair takes, and what tools ask about who serves.

use super::*;

/// The database's advisory lock key: its id's first 15 hex digits (a positive `bigint`), the
/// same in every build.
pub(crate) fn lock_key(database_id: &str) -> Result<i64> {
    database_id
        .get(..15)
        .and_then(|h| i64::from_str_radix(h, 16).ok())
        .ok_or_else(|| StoreError::Metadata(format!("database_id {database_id:?}")))
}

/// The database held exclusively ([`PgMetaStore::hold_exclusive`]) until dropped.
pub struct ExclusiveHold {
    _client: deadpool_postgres::ClientWrapper,
}

impl std::fmt::Debug for ExclusiveHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExclusiveHold")
    }
}

/// Refuses a name another live process serves under (two processes sharing one name would
/// renew, and on start free, each other's leases). A name seen within a ttl may be a former
/// process of this one that was killed: waiting out one renewal interval tells them apart, as
/// a live one says it serves again meanwhile.
pub(super) async fn one_of_its_name(meta: &PgMetaStore, timing: LeaseTiming) -> Result<()> {
    let last = || async {
        let rows = query(meta, "instance", LAST_SEEN, &[&meta.instance]).await?;
        Ok::<_, StoreError>(rows.first().map(|r| {
            (
                r.get::<_, std::time::SystemTime>(0),
                Duration::try_from_secs_f64(r.get::<_, f64>(1)).unwrap_or_default(),
            )
        }))
    };
    let Some((seen, ago)) = last().await? else {
        return Ok(());
    };
    if ago >= timing.ttl {
        return Ok(());
    }
    tracing::info!(
        instance = %meta.instance,
        "an instance of this name served {:.1} s ago: waiting to see whether it still does",
        ago.as_secs_f64()
    );
    tokio::time::sleep(timing.renew_every() + Duration::from_secs(1)).await;
    match last().await? {
        Some((again, _)) if again > seen => Err(StoreError::WrongStore(format!(
            "another instance named {:?} is serving this database: give each instance its own \
             --instance-id",
            meta.instance
        ))),
        _ => Ok(()),
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

    /// Holds the database exclusively for as long as the returned guard lives (a session
    /// advisory lock on a connection of its own): instances refuse to start meanwhile. For
    /// `ferry fsck --repair`, which must not race an instance's writes. `None`: something
    /// else holds it (an instance starting, an older build serving, another repair).
    pub async fn hold_exclusive(&self) -> Result<Option<ExclusiveHold>> {
        let key = lock_key(&self.database_id().await?)?;
        let obj = self
            .pool
            .get()
            .await
            .map_err(|e| crate::pg_meta::errors::pool_error(e, self.timeout))?;
        // Out of the pool: the lock lives with this connection.
        let client = deadpool_postgres::Object::take(obj);
        self.trip();
        let got: bool = tokio::time::timeout(
            self.timeout,
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]),
        )
        .await
        .map_err(|_| StoreError::Unavailable("PostgreSQL did not answer (lock)".into()))?
        .map_err(|e| {
            crate::pg_meta::errors::store_error(crate::pg_meta::errors::classify(e.code()), &e)
        })?
        .get(0);
        Ok(got.then_some(ExclusiveHold { _client: client }))
    }

    /// The instances that said they were serving within `within`, with how many seconds ago.
    pub async fn live_instances(&self, within: Duration) -> Result<Vec<(String, f64)>> {
        let rows = query(self, "instances", LIVE, &[&within.as_secs_f64()]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
