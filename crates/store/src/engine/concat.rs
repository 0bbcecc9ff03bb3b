//! Concatenation: a final upload lists its parts (no byte is copied), completes when the last
//! of them does, and is read across them.

use super::{Uploads, random_id};
use crate::data::{ByteStream, DataStore};
use crate::error::{Result, StoreError};
use crate::meta::MetaStore;
use crate::model::{Protocol, UploadInfo, UploadKind, now_ms};
use ferry_proto::checksum::{crc64nvme_combine, crc64nvme_of};
use ferry_proto::digest::Digests;
use ferry_proto::{Metadata, UploadId};
use futures_util::StreamExt;
use std::sync::Arc;

impl Uploads {
    /// Creates a final upload made of `parts` (each a partial upload, in order). No bytes are
    /// copied: the final only lists its parts. Parts may still be unfinished; the final
    /// completes when the last of them does. Each part first records that the final uses it
    /// (so deleting a part can never destroy the final's bytes), then the final is inserted.
    pub async fn create_final(
        &self,
        parts: Vec<UploadId>,
        metadata: Metadata,
        max_size: Option<u64>,
    ) -> Result<UploadInfo> {
        let mut infos = Vec::with_capacity(parts.len());
        for p in &parts {
            let info = self.get(*p).await?.ok_or(StoreError::NotFound(*p))?;
            if info.kind != UploadKind::Partial {
                return Err(StoreError::NotPartial(*p));
            }
            infos.push(info);
        }
        let id = random_id()?;
        let now = now_ms();
        let length = total_length(&infos);
        if let (Some(max), Some(len)) = (max_size, length)
            && len > max
        {
            return Err(StoreError::TooLarge { length: len, max });
        }
        for p in &parts {
            self.meta
                .update(
                    *p,
                    Box::new(move |info| {
                        if info.deleted {
                            return Err(StoreError::NotFound(info.id));
                        }
                        info.finals.push(id);
                        Ok(())
                    }),
                )
                .await?;
        }
        let complete = infos.iter().all(UploadInfo::is_complete);
        let info = UploadInfo {
            id,
            length: if complete { length } else { None },
            offset: if complete { length.unwrap_or(0) } else { 0 },
            metadata,
            protocol: Protocol::Tus,
            kind: UploadKind::Final { parts },
            received: None,
            created_ms: now,
            updated_ms: now,
            expires_ms: self.expiry.expires_at(complete, now),
            digests: Digests::new(),
            finals: Vec::new(),
            deleted: false,
        };
        self.meta.insert(&info).await?;
        if complete {
            self.completed(&info).await;
        } else {
            // A part may have completed after `infos` was read: its commit then either did not
            // list this final yet or found no record of it, and nobody would ever complete it.
            // Both records exist now: check again.
            self.refresh_final(id).await?;
            if let Some(fresh) = self.meta.get(id).await? {
                return Ok(fresh);
            }
        }
        Ok(info)
    }

    /// The CRC-64/NVME of a final upload from its parts' (no byte read), if they all have one.
    pub(crate) async fn combined_crc(&self, info: &UploadInfo) -> Option<u64> {
        let UploadKind::Final { parts } = &info.kind else {
            return None;
        };
        let mut crc = crc64nvme_of(b"");
        for p in parts {
            let part = self.meta.get(*p).await.ok()??;
            if !part.is_complete() {
                return None;
            }
            crc = crc64nvme_combine(crc, part.digests.crc64nvme()?, part.offset);
        }
        Some(crc)
    }

    /// Progress on a part moves the expiry of its unfinished finals too (see
    /// [`ExpiryPolicy::final_kept_alive`](super::policy::ExpiryPolicy::final_kept_alive)).
    pub(crate) async fn keep_finals_alive(&self, part: &UploadInfo) {
        let now = now_ms();
        let expiry = self.expiry;
        if expiry.expires_at(false, now).is_none() {
            return;
        }
        for f in &part.finals {
            let extended = self
                .meta
                .update(
                    *f,
                    Box::new(move |i| {
                        if let Some(until) =
                            expiry.final_kept_alive(i.is_complete(), i.expires_ms, now)
                        {
                            i.expires_ms = Some(until);
                        }
                        Ok(())
                    }),
                )
                .await;
            match extended {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(upload = %f, error = %e, "extending final's expiry failed")
                }
            }
        }
    }

    /// Completes a final upload once all its parts are complete.
    pub(crate) async fn refresh_final(&self, id: UploadId) -> Result<()> {
        let Some(info) = self.meta.get(id).await? else {
            return Ok(());
        };
        let UploadKind::Final { parts } = &info.kind else {
            return Ok(());
        };
        if info.is_complete() {
            return Ok(());
        }
        let mut infos = Vec::with_capacity(parts.len());
        for p in parts {
            match self.meta.get(*p).await? {
                Some(i) if i.is_complete() => infos.push(i),
                _ => return Ok(()),
            }
        }
        let Some(length) = total_length(&infos) else {
            return Ok(());
        };
        let expires = self.expiry.expires_at(true, now_ms());
        let done = self
            .meta
            .update(
                id,
                Box::new(move |i| {
                    i.length = Some(length);
                    i.offset = length;
                    i.expires_ms = expires;
                    i.updated_ms = now_ms();
                    Ok(())
                }),
            )
            .await?;
        Box::pin(self.completed(&done)).await;
        Ok(())
    }
}

/// Sum of the parts' lengths, if all are known.
fn total_length(parts: &[UploadInfo]) -> Option<u64> {
    parts
        .iter()
        .try_fold(0u64, |acc, p| acc.checked_add(p.length?))
}

/// Streams committed bytes `[start, end)` of an upload; a final upload is read across its
/// parts.
pub(crate) async fn read_upload(
    data: &Arc<dyn DataStore>,
    meta: &Arc<dyn MetaStore>,
    info: &UploadInfo,
    start: u64,
    end: u64,
) -> Result<ByteStream> {
    if end > info.offset || start > end {
        return Err(StoreError::Inconsistent(format!(
            "read {start}..{end} past committed offset {}",
            info.offset
        )));
    }
    let UploadKind::Final { parts } = &info.kind else {
        return data.read(info.id, start, end).await;
    };
    // Map [start, end) onto the parts; streams are opened lazily, one after the other.
    let mut pieces = Vec::new();
    let mut base = 0u64;
    for p in parts {
        let part = meta.get(*p).await?.ok_or(StoreError::NotFound(*p))?;
        let len = part.length.unwrap_or(part.offset).min(part.offset);
        let (s, e) = (start.max(base), end.min(base + len));
        if s < e {
            pieces.push((part.id, s - base, e - base));
        }
        base += len;
        if base >= end {
            break;
        }
    }
    let data = data.clone();
    let stream = futures_util::stream::iter(pieces)
        .then(move |(id, s, e)| {
            let data = data.clone();
            async move { data.read(id, s, e).await }
        })
        .map(|r| match r {
            Ok(s) => s,
            Err(e) => Box::pin(futures_util::stream::once(async move {
                Err(std::io::Error::other(e.to_string()))
            })) as ByteStream,
        })
        .flatten();
    Ok(Box::pin(stream))
}
