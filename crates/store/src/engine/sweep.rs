//! Removing uploads: on request, and sweeping the expired ones. A partial that a final still
//! uses is only hidden; its bytes go when the last such final goes.

use super::Uploads;
use crate::error::{Result, StoreError};
use crate::lock::Lease;
use crate::model::{UploadInfo, UploadKind};
use ferry_proto::UploadId;

impl Uploads {
    /// Deletes an upload: takes it over from any writer, then removes it. A partial that a
    /// final still uses is only hidden; its bytes go when the last such final goes. Deleting a
    /// final releases its parts.
    pub async fn delete(&self, id: UploadId) -> Result<()> {
        let _lease = self.lease(id).await?;
        let info = self.get(id).await?.ok_or(StoreError::NotFound(id))?;
        self.remove(info).await
    }

    /// Deletes every upload that expired before `now` (ms since the epoch), skipping uploads
    /// a request is writing right now. Returns the ids deleted.
    pub async fn sweep_expired(&self, now: u64) -> Result<Vec<UploadId>> {
        let mut gone = Vec::new();
        for info in self.meta.list().await? {
            if info.deleted || !info.is_expired(now) || self.chunk_writes_active(info.id) {
                continue;
            }
            let Ok(_lease) = self.try_lease(info.id).await else {
                continue;
            };
            // Re-read under the lease: a write may have just extended it.
            match self.get(info.id).await? {
                Some(fresh) if fresh.is_expired(now) => {
                    self.remove(fresh).await?;
                    gone.push(info.id);
                }
                _ => {}
            }
        }
        Ok(gone)
    }

    /// Whether chunk requests are writing session `id` right now. Chunk writes take no lease
    /// (several run at once), so the sweeper asks here before deleting an expired session.
    pub(crate) fn chunk_writes_active(&self, id: UploadId) -> bool {
        self.chunk_claims.active(id)
    }

    /// Takes a lease only if nobody holds it (the sweeper never interrupts a writer).
    async fn try_lease(&self, id: UploadId) -> Result<Lease> {
        self.locker.try_acquire(id).await
    }

    async fn remove(&self, info: UploadInfo) -> Result<()> {
        let id = info.id;
        self.take_running(id);
        if !info.finals.is_empty() {
            let hidden = self
                .meta
                .update(
                    id,
                    Box::new(|i| {
                        i.deleted = true;
                        Ok(())
                    }),
                )
                .await?;
            // A final may have let go in the meantime.
            if hidden.finals.is_empty() {
                self.purge(id).await?;
            }
            return Ok(());
        }
        self.meta.remove(id).await?;
        match info.kind {
            UploadKind::Final { parts } => {
                for p in parts {
                    self.release_part(p, id).await?;
                }
            }
            _ => self.data.delete(id).await?,
        }
        Ok(())
    }

    /// Drops `final_id` from a part's users; purges the part if it was deleted and no final
    /// uses it any more.
    async fn release_part(&self, part: UploadId, final_id: UploadId) -> Result<()> {
        let updated = self
            .meta
            .update(
                part,
                Box::new(move |i| {
                    i.finals.retain(|f| *f != final_id);
                    Ok(())
                }),
            )
            .await;
        match updated {
            Ok(p) if p.deleted && p.finals.is_empty() => self.purge(part).await,
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn purge(&self, id: UploadId) -> Result<()> {
        self.meta.remove(id).await?;
        self.data.delete(id).await
    }
}
