//! Removing uploads: on request, and sweeping the expired ones. A partial that a final still
//! uses is only hidden; its bytes go when the last such final goes.
//!
//! Every removal is one metadata transaction over the upload and, for a final, its parts, so
//! it cannot interleave with the creation of a final that uses a part (which is one
//! transaction over the parts and the new final). Data objects are deleted after the
//! transaction that dropped their record: a crash in between leaves an orphaned object, which
//! `ferry fsck` finds, never a record without its bytes.

use super::Uploads;
use crate::data::Locator;
use crate::error::{Result, StoreError};
use crate::lock::Lease;
use crate::meta::Records;
use crate::model::UploadKind;
use ferry_proto::UploadId;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Records read per page by the expiry sweep: memory stays bounded however many uploads exist.
const SWEEP_PAGE: usize = 256;

impl Uploads {
    /// Deletes an upload: takes it over from any writer, then removes it. A partial that a
    /// final still uses is only hidden; its bytes go when the last such final goes. Deleting a
    /// final releases its parts.
    pub async fn delete(&self, id: UploadId) -> Result<()> {
        let _lease = self.lease(id).await?;
        // The record as it is: an upload whose finish step is pending goes without it.
        self.meta
            .get(id)
            .await?
            .filter(|i| !i.deleted)
            .ok_or(StoreError::NotFound(id))?;
        self.forget(id, None).await.map(|_| ())
    }

    /// Deletes a chunk session, unless chunk requests are writing it right now (they take no
    /// lease to be taken over from): [`StoreError::Busy`] then, and the client tries again.
    pub async fn delete_session(&self, id: UploadId) -> Result<()> {
        if self.chunk_writes_active(id) {
            return Err(StoreError::Busy(id));
        }
        self.delete(id).await
    }

    /// Deletes every upload that expired before `now` (ms since the epoch), skipping uploads
    /// a request is writing right now. Returns the ids deleted.
    pub async fn sweep_expired(&self, now: u64) -> Result<Vec<UploadId>> {
        let mut gone = Vec::new();
        let mut after = None;
        loop {
            let page = self.meta.expired(now, after, SWEEP_PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(gone);
            };
            after = Some(last.id);
            for info in page {
                if self.chunk_writes_active(info.id) {
                    continue;
                }
                let Ok(_lease) = self.try_lease(info.id).await else {
                    continue;
                };
                // Expired as the transaction sees it: a write may have just extended it.
                match self.forget(info.id, Some(now)).await {
                    Ok(true) => gone.push(info.id),
                    Ok(false) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Whether chunk requests are writing session `id` right now. Chunk writes take no lease
    /// (several run at once), so the sweeper asks here before deleting an expired session.
    pub(crate) fn chunk_writes_active(&self, id: UploadId) -> bool {
        self.chunk_claims.active(id)
    }

    /// Takes a lease only if nobody holds it ([`StoreError::Busy`] otherwise): the sweeper never
    /// interrupts a writer, and a request that finds no writer has nobody to disturb.
    pub async fn try_lease(&self, id: UploadId) -> Result<Lease> {
        self.locker.try_acquire(id).await
    }

    /// Removes upload `id` in one transaction (only if it expired by `expired_by`, when
    /// given), then deletes the data of every record the transaction dropped. Whether it was
    /// removed.
    pub(crate) async fn forget(&self, id: UploadId, expired_by: Option<u64>) -> Result<bool> {
        self.take_running(id);
        // A final's parts never change, so they can be read before the transaction.
        let mut ids = vec![id];
        if let Some(info) = self.meta.get(id).await?
            && let UploadKind::Final { parts } = info.kind
        {
            ids.extend(parts);
        }
        // Each record's locator as the committing run saw it: how to delete what it removes.
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let saw = seen.clone();
        let records = self
            .meta
            .transact(
                ids.clone(),
                Box::new(move |recs| {
                    *saw.lock().unwrap_or_else(|p| p.into_inner()) = locators(recs);
                    let info = match recs.get(&id) {
                        Some(Some(i)) if !i.deleted => i,
                        _ => return Err(StoreError::NotFound(id)),
                    };
                    if expired_by.is_some_and(|now| !info.is_expired(now)) {
                        return Ok(());
                    }
                    forget(recs, id);
                    Ok(())
                }),
            )
            .await?;
        let removed = !matches!(records.get(&id), Some(Some(i)) if !i.deleted);
        let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        for (gone, at) in gone_objects(&records, seen) {
            // The records are gone either way: data left behind is an orphan, which the next
            // start (or `ferry fsck --repair`) deletes.
            if let Err(e) = self.data.delete(gone, &at).await {
                tracing::warn!(upload = %gone.tag(), error = %e, "deleting data failed; left as an orphan");
            }
        }
        Ok(removed)
    }
}

/// The locator of every record in `recs` that has an object (a final has none).
pub(crate) fn locators(recs: &Records) -> BTreeMap<UploadId, Locator> {
    recs.iter()
        .filter_map(|(id, r)| r.as_ref().map(|i| (*id, i.locator.clone())))
        .filter(|(_, at)| !at.is_none())
        .collect()
}

/// The objects of the records a transaction removed (`None` in `after`), from the locators
/// its committing run saw.
pub(crate) fn gone_objects(
    after: &Records,
    mut seen: BTreeMap<UploadId, Locator>,
) -> Vec<(UploadId, Locator)> {
    after
        .iter()
        .filter(|(_, r)| r.is_none())
        .filter_map(|(id, _)| seen.remove(id).map(|at| (*id, at)))
        .collect()
}

/// Removes upload `id` from `recs` (which holds it and, for a final, its parts): a final goes
/// and releases its parts, purging those deleted earlier that no final uses any more; a part
/// that finals still use is only hidden; anything else goes. Pure, so a transaction may run it
/// again.
pub(crate) fn forget(recs: &mut Records, id: UploadId) {
    let Some(Some(info)) = recs.get(&id).cloned() else {
        return;
    };
    match &info.kind {
        UploadKind::Final { parts } => {
            recs.insert(id, None);
            for p in parts {
                let purge = match recs.get_mut(p) {
                    Some(Some(part)) => {
                        part.finals.retain(|f| *f != id);
                        part.deleted && part.finals.is_empty()
                    }
                    _ => false,
                };
                if purge {
                    recs.insert(*p, None);
                }
            }
        }
        _ if !info.finals.is_empty() => {
            if let Some(Some(part)) = recs.get_mut(&id) {
                part.deleted = true;
            }
        }
        _ => {
            recs.insert(id, None);
        }
    }
}
