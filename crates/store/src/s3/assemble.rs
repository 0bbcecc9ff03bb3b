//! The S3 store's finish: the staged bytes after the recorded parts (an appender's tail, or
//! every range of a chunk session) assembled into parts, then the multipart upload completed
//! from the recorded parts and those (never from ListParts).

use super::client::Body;
use super::place::{Place, spool_file, unstage};
use super::plan::{MAX_PARTS, equal_part};
use super::store::S3DataStore;
use crate::error::{Result, StoreError};
use bytes::Bytes;
use ferry_proto::UploadId;

/// The number the parts `finish` sends come after: the last recorded one's, or the last the
/// writers found taken.
pub(super) fn numbered_after(place: &Place) -> u16 {
    place
        .parts
        .iter()
        .map(|p| p.n)
        .max()
        .unwrap_or(0)
        .max(place.used)
}

impl S3DataStore {
    /// Sends what is staged after `place`'s parts as parts, through a spool file one part at a
    /// time, and completes the object of `length` bytes. An empty upload becomes an empty
    /// object (no multipart upload completes without a part).
    pub(super) async fn assemble(&self, id: UploadId, place: &Place, length: u64) -> Result<()> {
        let c = &self.inner.client;
        let upload = place.upload()?.to_string();
        let parts_end = place.parts_end();
        if parts_end > length {
            return Err(StoreError::Inconsistent(format!(
                "upload {id}: parts hold more than {length} bytes"
            )));
        }
        if length == 0 {
            // The object first, so that a crash in between leaves it for the rerun to find.
            c.put_object(&place.key, Bytes::new()).await?;
            return c.abort(&place.key, &upload).await;
        }
        // Numbered on from the last recorded part or past the numbers the last writer found
        // taken, the same on every run: a run that failed half-way left parts that the next
        // run sends again under the same numbers (a part sent again replaces the one before),
        // so reruns use up no numbers. A superseded writer's late part, sent under a number
        // at most `used`, lands on none of these; Complete names only these.
        let mut parts: Vec<(u16, String)> =
            place.parts.iter().map(|p| (p.n, p.etag.clone())).collect();
        let mut n = numbered_after(place);
        // A chunk session (nothing sent as parts yet) knows its length now: equal parts.
        let equal = match (place.part, parts.is_empty()) {
            (Some(size), _) => Some(size),
            (None, true) => equal_part(length),
            (None, false) => None,
        };
        let mut at = parts_end;
        while at < length {
            n += 1;
            if n > MAX_PARTS {
                return Err(StoreError::Inconsistent(format!(
                    "upload {id}: no part number left"
                )));
            }
            let size = equal.unwrap_or_else(|| place.part_size(n)).min(length - at);
            let spool = spool_file(&self.inner.spool)?;
            unstage(c, place, at, at + size, spool.as_file()).await?;
            let body = Body::File {
                path: spool.path().to_path_buf(),
                start: 0,
                len: size,
            };
            parts.push((n, c.upload_part(&place.key, &upload, n, body).await?));
            at += size;
        }
        c.complete(&place.key, &upload, &parts).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::place::Part;
    use super::*;

    #[test]
    fn parts_are_numbered_past_the_recorded_ones_and_the_taken_ones() {
        let part = |n| Part {
            n,
            etag: String::new(),
            size: 1,
        };
        let mut place = Place::default();
        assert_eq!(numbered_after(&place), 0);
        place.parts = vec![part(1), part(2)];
        assert_eq!(numbered_after(&place), 2);
        // A superseded writer reserved up to 5: its late part never meets ours.
        place.used = 5;
        assert_eq!(numbered_after(&place), 5);
        place.parts.push(part(7));
        assert_eq!(numbered_after(&place), 7);
    }
}
