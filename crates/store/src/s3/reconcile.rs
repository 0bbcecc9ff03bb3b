//! What the bucket holds under the prefix, upload by upload, and the reconciler that removes
//! what no committed state needs (docs/architecture.md, "S3", "Leftovers").

use super::client::{ListedObject, ListedUpload};
use super::place::Place;
use super::store::S3DataStore;
use crate::data::{Holding, Locator, Owned, Owner};
use crate::error::Result;
use ferry_proto::UploadId;
use std::collections::BTreeMap;

/// Everything the bucket holds of one upload.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// The (complete) object.
    pub(super) object: Option<ListedObject>,
    /// Staged pieces.
    pub(super) staged: Vec<ListedObject>,
    /// Multipart uploads of the key.
    pub(super) uploads: Vec<ListedUpload>,
}

impl Held {
    /// Whether anything of it was last written before `cutoff` (always, without one).
    fn any_older(&self, cutoff: Option<u64>) -> bool {
        self.object
            .iter()
            .chain(&self.staged)
            .any(|o| older(o.modified_ms, cutoff))
            || self.uploads.iter().any(|u| older(u.initiated_ms, cutoff))
    }
}

/// 1 when a removal succeeded; a failure is logged and the pass goes on (one object it may not
/// delete must not stop every later pass at the same place).
fn gone(result: Result<()>, key: &str) -> usize {
    match result {
        Ok(()) => 1,
        Err(e) => {
            tracing::warn!(%key, error = %e, "reconciler: removing a leftover failed");
            0
        }
    }
}

/// Whether something written at `at` is older than `cutoff`. A time the store did not give
/// readably counts as young: it can only go in a pass without a cutoff.
fn older(at: Option<u64>, cutoff: Option<u64>) -> bool {
    match cutoff {
        None => true,
        Some(c) => at.is_some_and(|t| t < c),
    }
}

impl S3DataStore {
    /// Everything under the prefix that belongs to an upload, by upload (two listings, paged).
    pub(super) async fn held(&self) -> Result<BTreeMap<UploadId, Held>> {
        let c = &self.inner.client;
        let prefix = self.inner.prefix.as_str();
        let mut found: BTreeMap<UploadId, Held> = BTreeMap::new();
        for o in c.list_objects(prefix).await? {
            let Some(rest) = o.key.strip_prefix(prefix) else {
                continue;
            };
            match rest.split_once(".staged/") {
                Some((id, _)) => {
                    if let Ok(id) = UploadId::parse(id) {
                        found.entry(id).or_default().staged.push(o);
                    }
                }
                None => {
                    if let Ok(id) = UploadId::parse(rest) {
                        found.entry(id).or_default().object = Some(o);
                    }
                }
            }
        }
        for u in c.list_uploads(prefix).await? {
            let id = u.key.strip_prefix(prefix).map(UploadId::parse);
            if let Some(Ok(id)) = id {
                found.entry(id).or_default().uploads.push(u);
            }
        }
        Ok(found)
    }

    /// One pass of the reconciler (see [`DataStore::reconcile`](crate::data::DataStore)):
    /// of an upload no record owns, whatever is older than `cutoff` goes; of an owned one,
    /// the staged pieces and multipart uploads its committed locator does not name (left by a
    /// writer that died or was taken over between staging and committing, or by a
    /// CreateMultipartUpload retried after its answer was lost).
    pub(super) async fn reconcile_bucket(
        &self,
        owner: &Owner<'_>,
        cutoff: Option<u64>,
    ) -> Result<usize> {
        let c = &self.inner.client;
        let mut removed = 0;
        for (id, held) in self.held().await? {
            // Only uploads with something old ask the metadata.
            if !held.any_older(cutoff) {
                continue;
            }
            let place = match owner(id).await? {
                Owned::Busy => continue,
                Owned::Nobody => None,
                Owned::Record(at) => match Place::of(&at) {
                    Ok(place) => Some(place),
                    Err(e) => {
                        tracing::warn!(upload = %id.tag(), error = %e, "reconciler: a locator it cannot read; left alone");
                        continue;
                    }
                },
            };
            for u in &held.uploads {
                let named = place.as_ref().and_then(|p| p.upload.as_deref()) == Some(&*u.upload_id);
                if !named && older(u.initiated_ms, cutoff) {
                    removed += gone(c.abort(&u.key, &u.upload_id).await, &u.key);
                }
            }
            for o in &held.staged {
                let named = place
                    .as_ref()
                    .is_some_and(|p| p.staged.iter().any(|s| s.key == o.key));
                if !named && older(o.modified_ms, cutoff) {
                    removed += gone(c.delete_object(&o.key).await, &o.key);
                }
            }
            // An owned key's object stays: it may be a finish whose result is not recorded yet.
            if let (None, Some(o)) = (&place, &held.object)
                && older(o.modified_ms, cutoff)
            {
                removed += gone(c.delete_object(&o.key).await, &o.key);
            }
            if place.is_none() {
                self.inner.fences.forget(id);
            }
        }
        Ok(removed)
    }

    /// What the bucket holds of the committed state `at` (see
    /// [`DataStore::holds`](crate::data::DataStore)): the recorded parts in order, as far as
    /// ListParts shows each with its ETag and size, then the staged pieces, as far as each is
    /// there whole; the locator cut to them. A finished upload is its object's size.
    pub(super) async fn holding(&self, at: &Locator) -> Result<Option<Holding>> {
        let c = &self.inner.client;
        let mut place = Place::of(at)?;
        let whole = |size: Option<u64>| {
            size.map(|bytes| Holding {
                bytes,
                at: at.clone(),
            })
        };
        if place.done {
            return Ok(whole(c.head_size(&place.key).await?));
        }
        let upload = place.upload()?.to_string();
        let listed = match c.list_parts(&place.key, &upload).await {
            Ok(listed) => listed,
            // Completed by a finish whose result was not recorded, or gone.
            Err(e) if e.to_string().contains("NoSuchUpload") => {
                return Ok(whole(c.head_size(&place.key).await?));
            }
            Err(e) => return Err(e),
        };
        let kept = place
            .parts
            .iter()
            .take_while(|p| p.listed_in(&listed))
            .count();
        let lost_parts = kept < place.parts.len();
        place.parts.truncate(kept);
        // The pieces, in order, up to the first that is not there whole. (A chunk session's
        // pieces may leave gaps between received ranges: the furthest end counts, as the
        // local store's sparse file length does.)
        let staged: BTreeMap<String, u64> = c
            .list_objects(&format!("{}.staged/", place.key))
            .await?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        let mut bytes = place.parts_end();
        let mut pieces = 0;
        for piece in &place.staged {
            let whole = staged.get(&piece.key).is_some_and(|&s| s == piece.size);
            // A piece after a lost part lies past a gap that is not a session's.
            let after_lost = lost_parts && piece.at > place.parts_end();
            if !whole || after_lost {
                break;
            }
            bytes = bytes.max(piece.at + piece.size);
            pieces += 1;
        }
        place.staged.truncate(pieces);
        Ok(Some(Holding {
            bytes,
            at: place.locator(),
        }))
    }
}
