//! Concatenation: a final upload lists its parts (no byte is copied), completes when the last
//! of them does, and is read across them.

use super::{Uploads, random_id};
use crate::data::{ByteStream, DataStore, Locator, failed_stream};
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
    /// completes when the last of them does. One transaction checks the parts, records the
    /// final in each (so deleting a part can never destroy the final's bytes) and inserts the
    /// final: a deletion or expiry of a part happens wholly before it or wholly after.
    pub async fn create_final(
        &self,
        parts: Vec<UploadId>,
        metadata: Metadata,
    ) -> Result<UploadInfo> {
        self.concat.check_parts(&parts)?;
        let _admitted = self.admit_creation().await?;
        let max_size = self.max_size;
        let id = random_id()?;
        let now = now_ms();
        let expiry = self.expiry;
        let max_finals = self.concat.max_finals_per_part;
        let listed = parts.clone();
        // The new final is named too: a shared store then locks it with the parts instead of
        // running the transaction again once it sees a record it was not told of.
        let named = parts.iter().copied().chain([id]).collect();
        let records = self
            .meta
            .transact(
                named,
                Box::new(move |recs| {
                    let mut infos = Vec::with_capacity(listed.len());
                    for p in &listed {
                        let info = match recs.get(p) {
                            Some(Some(i)) if !i.deleted => i,
                            _ => return Err(StoreError::NotFound(*p)),
                        };
                        if info.kind != UploadKind::Partial {
                            return Err(StoreError::NotPartial(*p));
                        }
                        if info.finals.len() >= max_finals {
                            return Err(StoreError::TooManyFinals {
                                part: *p,
                                max: max_finals,
                            });
                        }
                        infos.push(info);
                    }
                    let length = total_length(infos.iter().copied());
                    if let (Some(max), Some(len)) = (max_size, length)
                        && len > max
                    {
                        return Err(StoreError::TooLarge { length: len, max });
                    }
                    let complete = infos.iter().all(|i| i.is_complete());
                    let info = UploadInfo {
                        id,
                        length: if complete { length } else { None },
                        offset: if complete { length.unwrap_or(0) } else { 0 },
                        metadata: metadata.clone(),
                        protocol: Protocol::Tus,
                        kind: UploadKind::Final {
                            parts: listed.clone(),
                        },
                        received: None,
                        created_ms: now,
                        updated_ms: now,
                        expires_ms: expiry.expires_at(complete, now),
                        digests: Digests::new(),
                        finals: Vec::new(),
                        deleted: false,
                        running_crc: None,
                        locator: Locator::none(),
                        finish_pending: false,
                    };
                    for p in &listed {
                        if let Some(Some(part)) = recs.get_mut(p) {
                            part.finals.push(id);
                        }
                    }
                    recs.insert(id, Some(info));
                    Ok(())
                }),
            )
            .await?;
        let info = records
            .get(&id)
            .cloned()
            .flatten()
            .ok_or_else(|| StoreError::Inconsistent(format!("final {id} was not inserted")))?;
        if info.is_complete() {
            self.completed(&info).await;
            return Ok(self.meta.get(id).await?.unwrap_or(info));
        }
        Ok(info)
    }

    /// The CRC-64/NVME of a final upload from its parts' (no byte read), if they all have one.
    pub(crate) async fn combined_crc(&self, info: &UploadInfo) -> Option<u64> {
        crc_from_parts(&self.meta, info).await
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
                    tracing::warn!(upload = %f.tag(), error = %e, "extending final's expiry failed")
                }
            }
        }
    }

    /// Completes a final upload once all its parts are complete, in one transaction over the
    /// final and its parts.
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
        // Checked first with plain reads (which never wait for the metadata writer): a final
        // with an unfinished part costs the writer nothing.
        for p in parts {
            match self.meta.get(*p).await? {
                Some(part) if part.is_complete() => {}
                _ => return Ok(()),
            }
        }
        let expiry = self.expiry;
        let mut ids = vec![id];
        ids.extend(parts.iter().copied());
        let records = self
            .meta
            .transact(
                ids,
                Box::new(move |recs| {
                    let Some(Some(fin)) = recs.get(&id) else {
                        return Ok(());
                    };
                    let UploadKind::Final { parts } = &fin.kind else {
                        return Ok(());
                    };
                    if fin.is_complete() {
                        return Ok(());
                    }
                    let mut infos = Vec::with_capacity(parts.len());
                    for p in parts {
                        match recs.get(p) {
                            Some(Some(i)) if i.is_complete() => infos.push(i),
                            _ => return Ok(()),
                        }
                    }
                    let Some(length) = total_length(infos.into_iter()) else {
                        return Ok(());
                    };
                    let now = now_ms();
                    if let Some(Some(fin)) = recs.get_mut(&id) {
                        fin.length = Some(length);
                        fin.offset = length;
                        fin.expires_ms = expiry.expires_at(true, now);
                        fin.updated_ms = now;
                    }
                    Ok(())
                }),
            )
            .await?;
        if let Some(Some(done)) = records.get(&id)
            && done.is_complete()
        {
            Box::pin(self.completed(done)).await;
        }
        Ok(())
    }

    /// Where the bytes of `info` live, read once: each part's committed length for a final,
    /// the upload itself otherwise. Reads through it never load a part's record again.
    pub async fn pieces(&self, info: &UploadInfo) -> Result<Pieces> {
        pieces_of(&self.data, &self.meta, info).await
    }
}

async fn pieces_of(
    data: &Arc<dyn DataStore>,
    meta: &Arc<dyn MetaStore>,
    info: &UploadInfo,
) -> Result<Pieces> {
    let UploadKind::Final { parts } = &info.kind else {
        // Finished before it is read, if its finish step was cut short (a read-back may hold a
        // record from before).
        let at = match info.finish_pending {
            true => {
                super::finish_recorded(data, meta, info.clone())
                    .await?
                    .0
                    .locator
            }
            false => info.locator.clone(),
        };
        return Ok(Pieces {
            data: data.clone(),
            committed: info.offset,
            map: vec![(info.id, at, info.offset)],
        });
    };
    let mut map = Vec::with_capacity(parts.len());
    for p in parts {
        let part = meta.get(*p).await?.ok_or(StoreError::NotFound(*p))?;
        // A part whose finish step was cut short is finished before it is read.
        let (part, _) = super::finish_recorded(data, meta, part).await?;
        let len = part.length.unwrap_or(part.offset).min(part.offset);
        map.push((part.id, part.locator, len));
    }
    Ok(Pieces {
        data: data.clone(),
        committed: info.offset,
        map,
    })
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
    pieces_of(data, meta, info).await?.read(start, end).await
}

/// The objects holding an upload's bytes, in order, with their lengths.
pub struct Pieces {
    data: Arc<dyn DataStore>,
    committed: u64,
    /// Each object with its locator and the length read from it.
    map: Vec<(UploadId, Locator, u64)>,
}

impl std::fmt::Debug for Pieces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pieces")
            .field("committed", &self.committed)
            .field("pieces", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl Pieces {
    /// Streams committed bytes `[start, end)`. The first object is opened now, so a failure to
    /// open it is an error here rather than a broken stream; the others open as the stream
    /// reaches them.
    pub async fn read(&self, start: u64, end: u64) -> Result<ByteStream> {
        if end > self.committed || start > end {
            return Err(StoreError::Inconsistent(format!(
                "read {start}..{end} past committed offset {}",
                self.committed
            )));
        }
        // Map [start, end) onto the pieces; streams are opened lazily, one after the other.
        let mut pieces = Vec::new();
        let mut base = 0u64;
        for (id, at, len) in &self.map {
            let (id, len) = (*id, *len);
            let (s, e) = (start.max(base), end.min(base + len));
            if s < e {
                pieces.push((id, at.clone(), s - base, e - base));
            }
            base += len;
            if base >= end {
                break;
            }
        }
        let mut pieces = pieces.into_iter();
        let first = match pieces.next() {
            Some((id, at, s, e)) => self.data.read(id, &at, s, e).await?,
            None => return Ok(Box::pin(futures_util::stream::empty())),
        };
        let data = self.data.clone();
        let rest = futures_util::stream::iter(pieces)
            .then(move |(id, at, s, e)| {
                let data = data.clone();
                async move { data.read(id, &at, s, e).await }
            })
            .map(|r| r.unwrap_or_else(failed_stream))
            .flatten();
        Ok(Box::pin(first.chain(rest)))
    }
}

/// The CRC-64/NVME of final `info` from its parts' (no byte read), if they all have one.
async fn crc_from_parts(meta: &Arc<dyn MetaStore>, info: &UploadInfo) -> Option<u64> {
    let UploadKind::Final { parts } = &info.kind else {
        return None;
    };
    let mut crc = crc64nvme_of(b"");
    for p in parts {
        let part = meta.get(*p).await.ok()??;
        if !part.is_complete() {
            return None;
        }
        crc = crc64nvme_combine(crc, part.digests.crc64nvme()?, part.offset);
    }
    Some(crc)
}

/// Stores the CRC of complete final `id` from its parts' if it has none yet and they all have
/// theirs (a part's CRC may be read back after the final completed).
pub(crate) async fn combine_final_crc(meta: &Arc<dyn MetaStore>, id: UploadId) -> Result<()> {
    let Some(info) = meta.get(id).await? else {
        return Ok(());
    };
    if !info.is_complete() || info.digests.crc64nvme().is_some() {
        return Ok(());
    }
    if let Some(crc) = crc_from_parts(meta, &info).await {
        meta.update(
            id,
            Box::new(move |i| {
                i.digests.set_crc64nvme(crc);
                Ok(())
            }),
        )
        .await?;
    }
    Ok(())
}

/// Sum of the parts' lengths, if all are known.
fn total_length<'a>(mut parts: impl Iterator<Item = &'a UploadInfo>) -> Option<u64> {
    parts.try_fold(0u64, |acc, p| acc.checked_add(p.length?))
}
