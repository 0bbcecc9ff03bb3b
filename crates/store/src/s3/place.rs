//! What the S3 store records of an upload (its locator's content), and the helpers its
//! writers and the store share.

use super::client::{ListedPart, S3Client};
use crate::data::Locator;
use crate::error::{Result, StoreError};
use crate::fence::Fenced;
use ferry_proto::UploadId;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// An upload's place in the bucket: the locator's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Place {
    /// The object key.
    pub(super) key: String,
    /// The multipart upload, until the object is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) upload: Option<String>,
    /// The recorded parts, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) parts: Vec<Part>,
    /// Staged pieces holding the bytes after the parts, in order (a piece may begin before the
    /// parts end: its first bytes went into the last part).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) staged: Vec<Piece>,
    /// The size of every part, when the length was known at creation (else the plan's tiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) part: Option<u64>,
    /// The object is complete at `key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) done: bool,
    /// Part numbers up to this one may be taken by parts no record names: sent by a writer
    /// that was superseded (perhaps still sending), or by one that never committed them.
    /// Parts sent later go past it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) used: u16,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Part {
    pub(super) n: u16,
    pub(super) etag: String,
    pub(super) size: u64,
}

impl Part {
    /// Whether the store lists this part as recorded: its number, size and ETag (quotes
    /// aside: stores differ). `listed` is in number order, as ListParts gives it.
    pub(super) fn listed_in(&self, listed: &[ListedPart]) -> bool {
        fn bare(e: &str) -> &str {
            e.trim_matches('"')
        }
        match listed.binary_search_by_key(&self.n, |l| l.number) {
            Ok(i) => {
                let l = &listed[i];
                l.size == self.size && bare(&l.etag) == bare(&self.etag)
            }
            Err(_) => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Piece {
    pub(super) key: String,
    /// Where its first byte sits in the upload.
    pub(super) at: u64,
    pub(super) size: u64,
}

impl Place {
    pub(super) fn of(at: &Locator) -> Result<Place> {
        serde_json::from_value(at.0.clone())
            .map_err(|e| StoreError::Inconsistent(format!("S3 locator {}: {e}", at.0)))
    }

    pub(super) fn locator(&self) -> Locator {
        Locator(serde_json::to_value(self).expect("a place serializes"))
    }

    /// Bytes held by the parts.
    pub(super) fn parts_end(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// Bytes held by the parts and staged pieces together.
    pub(super) fn end(&self) -> u64 {
        self.staged
            .iter()
            .map(|p| p.at + p.size)
            .fold(self.parts_end(), u64::max)
    }

    /// The size of part `n`.
    pub(super) fn part_size(&self, n: u16) -> u64 {
        self.part.unwrap_or_else(|| super::plan::part_size(n))
    }

    pub(super) fn upload(&self) -> Result<&str> {
        self.upload
            .as_deref()
            .ok_or_else(|| StoreError::Inconsistent(format!("{}: no multipart upload", self.key)))
    }
}

/// A named temporary file in the spool directory (a part is sent from it by path).
pub(super) fn spool_file(dir: &Path) -> Result<Arc<tempfile::NamedTempFile>> {
    Ok(Arc::new(tempfile::NamedTempFile::new_in(dir)?))
}

/// Runs `f` under the fence, if any: refused once a later writer opened the upload, and that
/// writer waits for it.
pub(super) async fn fenced<T>(
    fence: &Option<Fenced>,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    match fence {
        Some(fence) => fence.run(f).await,
        None => f.await,
    }
}

/// One turn at a time per upload: finishes of one upload wait for each other.
#[derive(Default)]
pub(super) struct Turns(Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<()>>>>);

impl Turns {
    /// The lock of `id`'s turns (forgotten once nobody holds or waits for it).
    pub(super) fn turn(&self, id: UploadId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, m| Arc::strong_count(m) > 1);
        map.entry(id).or_default().clone()
    }
}

/// Writes bytes `[from, to)` of the upload, from `place`'s staged pieces, into `file` from
/// offset 0, streamed (a piece is as large as a part). Fails unless the pieces cover them all.
pub(super) async fn unstage(
    c: &S3Client,
    place: &Place,
    from: u64,
    to: u64,
    file: &std::fs::File,
) -> Result<()> {
    let mut covered = Vec::new();
    for piece in &place.staged {
        let (a, b) = (from.max(piece.at), to.min(piece.at + piece.size));
        if a >= b {
            continue;
        }
        let mut s = c.get_range(&piece.key, a - piece.at, b - piece.at).await?;
        let mut at = a - from;
        while let Some(chunk) = s.next().await {
            let chunk = chunk?;
            file.write_all_at(&chunk, at)?;
            at += chunk.len() as u64;
        }
        if at != b - from {
            return Err(StoreError::Inconsistent(format!(
                "{}: {} bytes read of {}",
                piece.key,
                at - (a - from),
                b - a
            )));
        }
        covered.push((a, b));
    }
    covered.sort_unstable();
    let mut end = from;
    for (a, b) in covered {
        if a > end {
            break;
        }
        end = end.max(b);
    }
    if end < to {
        return Err(StoreError::Inconsistent(format!(
            "{}: bytes {end}..{to} are in no staged piece",
            place.key
        )));
    }
    Ok(())
}

/// Spools kept after a checkpoint, most recent last: the next writer of the upload, if it
/// starts from the locator that checkpoint returned, goes on in the same file instead of
/// reading the staged bytes back from the bucket (a client sending 1 MiB PATCHes would
/// otherwise read back each part's staged bytes again and again). A spool's bytes before the
/// checkpoint's end never change (writes only go past it, and a part sent moves the rest to a
/// fresh file), and a writer taken over cannot write any more once its successor opened.
#[derive(Default)]
pub(super) struct Spools(Mutex<std::collections::VecDeque<Kept>>);

struct Kept {
    id: UploadId,
    at: Locator,
    spool: Arc<tempfile::NamedTempFile>,
    bytes: u64,
}

/// At most this many spools are kept, holding at most `SPOOL_BYTES_KEPT` together.
const SPOOLS_KEPT: usize = 64;
const SPOOL_BYTES_KEPT: u64 = 1 << 30;

impl Spools {
    /// Keeps `spool` (holding `bytes` bytes) for the next writer of `id` that starts from `at`.
    pub(super) fn keep(
        &self,
        id: UploadId,
        at: Locator,
        spool: Arc<tempfile::NamedTempFile>,
        bytes: u64,
    ) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|k| k.id != id);
        kept.push_back(Kept {
            id,
            at,
            spool,
            bytes,
        });
        while kept.len() > SPOOLS_KEPT
            || kept.iter().map(|k| k.bytes).sum::<u64>() > SPOOL_BYTES_KEPT
        {
            kept.pop_front();
        }
    }

    /// The spool kept for `id`, if it was kept at `at`; forgotten either way.
    pub(super) fn take(&self, id: UploadId, at: &Locator) -> Option<Arc<tempfile::NamedTempFile>> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let i = kept.iter().position(|k| k.id == id)?;
        let k = kept.remove(i)?;
        (k.at == *at).then_some(k.spool)
    }

    /// Forgets the spool of `id` (deleted).
    pub(super) fn forget(&self, id: UploadId) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|k| k.id != id);
    }
}
