//! The [`MetaStore`] contract on PostgreSQL: one statement per read, insert and removal; two
//! round trips per change.

use super::errors::Failure;
use super::{
    CLAIM_EXPIRED, COUNT_UNFINISHED, DELETE, GET, INSERT_NEW, LIST, PgMetaStore, RowValues,
    SWEEP_CLAIM,
};
use crate::error::{Result, StoreError};
use crate::meta::{MetaStore, Records, Transaction, Update};
use crate::model::UploadInfo;
use crate::record::decode;
use async_trait::async_trait;
use ferry_proto::UploadId;
use tokio_postgres::types::ToSql;

fn row_record(row: &tokio_postgres::Row) -> Result<UploadInfo> {
    let key: String = row.get(0);
    let json: String = row.get(1);
    let id = UploadId::parse(&key)
        .map_err(|e| StoreError::Metadata(format!("record key {key:?}: {e}")))?;
    decode(id, json.as_bytes())
}

fn read_failure(err: tokio_postgres::Error) -> Failure {
    Failure::Pg {
        err,
        retry_safe: true,
    }
}

impl PgMetaStore {
    /// One record's change, under the lease at `epoch` when given.
    async fn change(&self, id: UploadId, epoch: Option<u64>, update: Update) -> Result<UploadInfo> {
        let update = &update;
        self.run(
            "update",
            attempt!(|conn| async {
                let me = self;
                let fence = epoch.map(|e| (id, e));
                let mut records = me.begin_locked_fenced(conn, &[id], fence).await?;
                let Some(Some(mut info)) = records.remove(&id) else {
                    me.rollback(conn).await;
                    return Err(StoreError::NotFound(id).into());
                };
                if let Err(e) = update(&mut info) {
                    me.rollback(conn).await;
                    return Err(e.into());
                }
                me.write_and_commit(conn, &[(id, Some(&info), true)])
                    .await?;
                Ok(info)
            }),
        )
        .await
    }
}

#[async_trait]
impl MetaStore for PgMetaStore {
    async fn insert(&self, info: &UploadInfo) -> Result<()> {
        let row = &RowValues::of(info)?;
        self.run(
            "insert",
            attempt!(|conn| async {
                let me = self;
                let stmt = me.prepare(conn, INSERT_NEW).await?;
                me.trip();
                let n = conn
                    .client()
                    .execute(
                        &stmt,
                        &[
                            &row.id,
                            &row.json,
                            &row.expires,
                            &row.deleted,
                            &row.unfinished,
                        ],
                    )
                    .await
                    // Autocommitted: with no answer it may have been applied.
                    .map_err(|err| Failure::Pg {
                        err,
                        retry_safe: false,
                    })?;
                if n == 0 {
                    return Err(StoreError::AlreadyExists(info.id).into());
                }
                Ok(())
            }),
        )
        .await
    }

    async fn get(&self, id: UploadId) -> Result<Option<UploadInfo>> {
        let key = &id.to_string();
        self.run(
            "get",
            attempt!(|conn| async {
                let me = self;
                let stmt = me.prepare(conn, GET).await?;
                me.trip();
                let row = conn
                    .client()
                    .query_opt(&stmt, &[&key])
                    .await
                    .map_err(read_failure)?;
                match row {
                    Some(r) => Ok(Some(decode(id, r.get::<_, String>(0).as_bytes())?)),
                    None => Ok(None),
                }
            }),
        )
        .await
    }

    async fn update(&self, id: UploadId, update: Update) -> Result<UploadInfo> {
        self.change(id, None, update).await
    }

    async fn update_fenced(&self, id: UploadId, epoch: u64, update: Update) -> Result<UploadInfo> {
        self.change(id, Some(epoch), update).await
    }

    async fn remove(&self, id: UploadId) -> Result<()> {
        let key = &id.to_string();
        self.run(
            "remove",
            attempt!(|conn| async {
                let me = self;
                let stmt = me.prepare(conn, DELETE).await?;
                me.trip();
                // Removing twice is no error: safe to run again.
                conn.client()
                    .execute(&stmt, &[&key])
                    .await
                    .map_err(read_failure)?;
                Ok(())
            }),
        )
        .await
    }

    async fn transact(&self, ids: Vec<UploadId>, tx: Transaction) -> Result<Records> {
        let mut ids = ids;
        ids.sort();
        ids.dedup();
        // The rows to lock: the ids named, and any the change adds (it then runs again with
        // those locked too, so that a record it creates or removes is one it has seen).
        let ids = &std::sync::Mutex::new(ids);
        let tx = &tx;
        self.run(
            "transact",
            attempt!(|conn| async {
                let me = self;
                let locked = ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let before = me.begin_locked(conn, &locked).await?;
                let mut records = before.clone();
                if let Err(e) = tx(&mut records) {
                    me.rollback(conn).await;
                    return Err(e.into());
                }
                let added: Vec<UploadId> = records
                    .keys()
                    .filter(|id| !before.contains_key(id))
                    .copied()
                    .collect();
                if !added.is_empty() {
                    me.rollback(conn).await;
                    let mut ids = ids.lock().unwrap_or_else(|p| p.into_inner());
                    ids.extend(added);
                    ids.sort();
                    ids.dedup();
                    return Err(Failure::Again);
                }
                if let Some((id, _)) = records
                    .iter()
                    .find(|(id, r)| r.as_ref().is_some_and(|i| i.id != **id))
                {
                    me.rollback(conn).await;
                    return Err(StoreError::Inconsistent(format!(
                        "a transaction filed another upload's record under {id}"
                    ))
                    .into());
                }
                let changes: Vec<_> = records
                    .iter()
                    .filter(|(id, r)| before.get(id) != Some(r))
                    .map(|(id, r)| {
                        let existed = matches!(before.get(id), Some(Some(_)));
                        (*id, r.as_ref(), existed)
                    })
                    // Removing what was never there writes nothing.
                    .filter(|(_, r, existed)| r.is_some() || *existed)
                    .collect();
                me.write_and_commit(conn, &changes).await?;
                Ok(records.clone())
            }),
        )
        .await
    }

    async fn expired(
        &self,
        now: u64,
        after: Option<UploadId>,
        limit: usize,
    ) -> Result<Vec<UploadInfo>> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let claim = SWEEP_CLAIM.as_secs_f64();
        let (now, after, limit, claim) = (&now, &after, &limit, &claim);
        self.run(
            "expired",
            attempt!(|conn| async {
                let me = self;
                let stmt = me.prepare(conn, CLAIM_EXPIRED).await?;
                me.trip();
                let params: [&(dyn ToSql + Sync); 5] = [now, after, &me.instance, limit, claim];
                // Claims only: running it again hands out the same records to the same instance.
                let rows = conn
                    .client()
                    .query(&stmt, &params)
                    .await
                    .map_err(read_failure)?;
                let mut out = rows.iter().map(row_record).collect::<Result<Vec<_>>>()?;
                out.sort_by_key(|i| i.id);
                Ok(out)
            }),
        )
        .await
    }

    async fn count_unfinished(&self) -> Result<u64> {
        self.run(
            "count",
            attempt!(|conn| async {
                let me = self;
                let stmt = me.prepare(conn, COUNT_UNFINISHED).await?;
                me.trip();
                let n: i64 = conn
                    .client()
                    .query_one(&stmt, &[])
                    .await
                    .map_err(read_failure)?
                    .get(0);
                Ok(n.max(0) as u64)
            }),
        )
        .await
    }

    async fn list(&self) -> Result<Vec<UploadInfo>> {
        self.run(
            "list",
            attempt!(|conn| async {
                let me = self;
                let stmt = me.prepare(conn, LIST).await?;
                me.trip();
                let rows = conn
                    .client()
                    .query(&stmt, &[])
                    .await
                    .map_err(read_failure)?;
                Ok(rows.iter().map(row_record).collect::<Result<Vec<_>>>()?)
            }),
        )
        .await
    }
}
