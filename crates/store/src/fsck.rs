//! `ferry fsck`: do the records and the data agree? Finds data no record owns, records whose
//! bytes are missing, and parts and finals whose references disagree; repairs them on request.
//!
//! Run it on a store nobody is serving (opening `Uploads` takes the directory lock): the check
//! reads every record and the data store's inventory as one picture. The reconciler's pass
//! and the check `ferry serve` runs at startup are here too.

use crate::data::Owned;
use crate::engine::{Uploads, gone_objects, locators};
use crate::error::{Result, StoreError};
use crate::meta::Records;
use crate::model::{UploadInfo, UploadKind};
use ferry_proto::UploadId;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// One disagreement between records and data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// A data object that no record owns (a crash between a record's removal and its data's,
    /// or between creating the data and inserting the record). Repair: delete it.
    OrphanData {
        /// The object.
        id: UploadId,
        /// Its size.
        bytes: u64,
    },
    /// A record whose data object is missing or shorter than the bytes it says were received.
    /// Repair: an unfinished upload whose data is short resumes from what its data holds;
    /// otherwise the record goes (and, through the next problem, finals made of it).
    MissingData {
        /// The upload.
        id: UploadId,
        /// The object's size, if it exists.
        have: Option<u64>,
        /// Bytes the record needs.
        need: u64,
    },
    /// A final lists a part that has no record. Repair: remove the final, releasing its other
    /// parts.
    MissingPart {
        /// The final.
        final_id: UploadId,
        /// The part it lists.
        part: UploadId,
    },
    /// A part says a final uses it, but that final does not exist or does not list it. Repair:
    /// drop the reference (and purge the part if it was deleted and nothing else uses it).
    StaleFinal {
        /// The part.
        part: UploadId,
        /// The final it names.
        final_id: UploadId,
    },
    /// A final lists a part that does not record the final, so deleting the part would destroy
    /// the final's bytes. Repair: record the final in the part.
    UnrecordedUse {
        /// The final.
        final_id: UploadId,
        /// The part.
        part: UploadId,
    },
    /// A part that was deleted and is kept only for finals, though no final uses it any more.
    /// Repair: remove it and its data.
    UnusedHiddenPart {
        /// The part.
        id: UploadId,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::OrphanData { id, bytes } => {
                write!(f, "data {id} ({bytes} bytes) belongs to no upload")
            }
            Problem::MissingData { id, have, need } => match have {
                Some(have) => write!(f, "upload {id} needs {need} bytes, its data has {have}"),
                None => write!(f, "upload {id} needs {need} bytes, its data is missing"),
            },
            Problem::MissingPart { final_id, part } => {
                write!(
                    f,
                    "final {final_id} lists part {part}, which does not exist"
                )
            }
            Problem::StaleFinal { part, final_id } => write!(
                f,
                "part {part} names final {final_id}, which does not exist or does not list it"
            ),
            Problem::UnrecordedUse { final_id, part } => write!(
                f,
                "final {final_id} lists part {part}, which does not record the final"
            ),
            Problem::UnusedHiddenPart { id } => {
                write!(f, "deleted part {id} is kept though no final uses it")
            }
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Records read.
    pub records: usize,
    /// Data objects found.
    pub objects: usize,
    /// Disagreements, sorted.
    pub problems: Vec<Problem>,
    /// With repair: what a check after the repairs still found (empty when all were fixed).
    pub remaining: Vec<Problem>,
}

/// Bytes of data a record needs: its committed offset, or for a chunk session the end of the
/// furthest range received. A final has no data of its own.
fn needed(info: &UploadInfo) -> Option<u64> {
    if matches!(info.kind, UploadKind::Final { .. }) {
        return None;
    }
    let received = info
        .received
        .as_ref()
        .and_then(|r| r.ranges().last().map(|r| r.1))
        .unwrap_or(0);
    Some(info.offset.max(received))
}

/// Every disagreement between `records`, the data store's `objects` (id, size) and `held`:
/// the bytes the store really holds of each record's committed state (absent when its data
/// is gone). Pure.
pub fn find_problems(
    records: &[UploadInfo],
    objects: &[(UploadId, u64)],
    held: &BTreeMap<UploadId, u64>,
) -> Vec<Problem> {
    let by_id: BTreeMap<UploadId, &UploadInfo> = records.iter().map(|r| (r.id, r)).collect();
    let mut problems = BTreeSet::new();
    for &(id, bytes) in objects {
        let owned = by_id
            .get(&id)
            .is_some_and(|r| !matches!(r.kind, UploadKind::Final { .. }));
        if !owned {
            problems.insert(Problem::OrphanData { id, bytes });
        }
    }
    for info in records {
        if let Some(need) = needed(info) {
            let have = held.get(&info.id).copied();
            if have.is_none_or(|h| h < need) {
                problems.insert(Problem::MissingData {
                    id: info.id,
                    have,
                    need,
                });
            }
        }
        if let UploadKind::Final { parts } = &info.kind {
            for p in parts {
                match by_id.get(p) {
                    None => {
                        problems.insert(Problem::MissingPart {
                            final_id: info.id,
                            part: *p,
                        });
                    }
                    Some(part) if !part.finals.contains(&info.id) => {
                        problems.insert(Problem::UnrecordedUse {
                            final_id: info.id,
                            part: *p,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        for f in &info.finals {
            let listed = by_id.get(f).is_some_and(
                |fin| matches!(&fin.kind, UploadKind::Final { parts } if parts.contains(&info.id)),
            );
            if !listed {
                problems.insert(Problem::StaleFinal {
                    part: info.id,
                    final_id: *f,
                });
            }
        }
        if info.deleted && info.finals.is_empty() {
            problems.insert(Problem::UnusedHiddenPart { id: info.id });
        }
    }
    problems.into_iter().collect()
}

/// Cuts an unfinished upload's record down to the `have` bytes its data holds.
fn cut_to(info: &mut UploadInfo, have: u64) {
    if let Some(received) = &info.received {
        let mut kept = crate::model::RangeSet::new();
        for &(a, b) in received.ranges() {
            if a < have {
                kept.insert(a, b.min(have));
            }
        }
        info.offset = kept.contiguous_prefix();
        info.received = Some(kept);
    } else {
        info.offset = info.offset.min(have);
    }
    // Whatever was known of the whole upload's digests (and the running CRC of the longer
    // prefix) no longer describes it.
    info.digests = Default::default();
    info.running_crc = None;
}

/// Most rounds of repair: a repair can uncover another problem (a record removed for missing
/// data leaves its finals without a part), which the next round fixes.
const REPAIR_ROUNDS: usize = 4;

impl Uploads {
    /// Checks that records and data agree; with `repair`, fixes what it finds (see
    /// [`Problem`] for what each repair does) and checks again.
    pub async fn fsck(&self, repair: bool) -> Result<Report> {
        let (records, objects) = (self.meta.list().await?, self.data.inventory().await?);
        let held = self.held(&records).await?;
        let mut report = Report {
            records: records.len(),
            objects: objects.len(),
            problems: find_problems(&records, &objects, &held),
            remaining: Vec::new(),
        };
        if !repair {
            return Ok(report);
        }
        let mut problems = report.problems.clone();
        for _ in 0..REPAIR_ROUNDS {
            if problems.is_empty() {
                break;
            }
            for p in &problems {
                self.repair(p).await?;
            }
            let (records, objects) = (self.meta.list().await?, self.data.inventory().await?);
            let held = self.held(&records).await?;
            problems = find_problems(&records, &objects, &held);
        }
        report.remaining = problems;
        Ok(report)
    }

    /// Checks every unfinished upload's committed state against the data store (an object
    /// store's recorded parts against ListParts, its staged pieces against the bucket): the
    /// uploads whose data is short of what their record says, for `ferry serve` to report at
    /// startup. Nothing is changed: the record stays the truth, its upload refuses to go on,
    /// and `ferry fsck --repair` cuts it back to what is there.
    pub async fn short_uploads(&self) -> Result<Vec<Problem>> {
        let records: Vec<UploadInfo> = self
            .meta
            .list()
            .await?
            .into_iter()
            .filter(|i| !i.is_complete() && !i.deleted)
            .collect();
        let held = self.held(&records).await?;
        Ok(find_problems(&records, &[], &held)
            .into_iter()
            .filter(|p| matches!(p, Problem::MissingData { .. }))
            .collect())
    }

    /// The bytes the data store really holds of each record that needs data.
    async fn held(&self, records: &[UploadInfo]) -> Result<BTreeMap<UploadId, u64>> {
        let mut held = BTreeMap::new();
        for info in records.iter().filter(|i| needed(i).is_some()) {
            if let Some(h) = self.data.holds(info.id, &info.locator).await? {
                held.insert(info.id, h.bytes);
            }
        }
        Ok(held)
    }

    /// One pass of the reconciler: removes what the data store holds that no committed state
    /// needs and that was last written before `cutoff` (ms since the epoch). What a crash
    /// left between writing data and committing its record (creation writes the data first,
    /// removal drops the record first), or between staging bytes and committing them. `None`
    /// removes whatever its age: only at startup, under the directory lock, before any
    /// request, when nothing can be writing. Returns how many things were removed.
    pub async fn reconcile(&self, cutoff: Option<u64>) -> Result<usize> {
        let owner = |id| self.owner_of(id);
        self.data.reconcile(&owner, cutoff).await
    }

    /// Who owns `id`'s data: a chunk session being written is busy (its ranges are staged
    /// before their commit names them); else the record, unless it is a final.
    fn owner_of(&self, id: UploadId) -> Pin<Box<dyn Future<Output = Result<Owned>> + Send + '_>> {
        Box::pin(async move {
            if self.chunk_writes_active(id) {
                return Ok(Owned::Busy);
            }
            Ok(match self.meta.get(id).await? {
                Some(i) if !matches!(i.kind, UploadKind::Final { .. }) => Owned::Record(i.locator),
                _ => Owned::Nobody,
            })
        })
    }

    async fn repair(&self, problem: &Problem) -> Result<()> {
        match *problem {
            Problem::OrphanData { id, .. } => match self.data.derived_locator(id) {
                Some(at) => self.data.delete(id, &at).await,
                None => Err(StoreError::Inconsistent(format!(
                    "the data store cannot name stray object {id}"
                ))),
            },
            Problem::MissingData { id, have, .. } => {
                let unfinished = self.meta.get(id).await?.is_some_and(|i| !i.is_complete());
                match have {
                    // Bytes lost past what the data holds (`--sync none` and a power loss):
                    // an unfinished upload resumes from what is there.
                    Some(have) if unfinished => {
                        // The locator cut to what the store holds (an object store's parts
                        // and pieces up to the first one missing).
                        let Some(info) = self.meta.get(id).await? else {
                            return Ok(());
                        };
                        let at = match self.data.holds(id, &info.locator).await? {
                            Some(h) if h.bytes == have => h.at,
                            _ => return Ok(()),
                        };
                        self.meta
                            .transact(
                                vec![id],
                                Box::new(move |recs| {
                                    if let Some(Some(info)) = recs.get_mut(&id) {
                                        cut_to(info, have);
                                        info.locator = at.clone();
                                    }
                                    Ok(())
                                }),
                            )
                            .await?;
                        Ok(())
                    }
                    _ => self.meta.remove(id).await,
                }
            }
            Problem::MissingPart { final_id, .. } => {
                let Some(fin) = self.meta.get(final_id).await? else {
                    return Ok(());
                };
                let mut ids = vec![final_id];
                if let UploadKind::Final { parts } = &fin.kind {
                    ids.extend(parts.iter().copied());
                }
                self.drop_records(ids.clone(), move |recs| {
                    crate::engine::forget(recs, final_id)
                })
                .await
            }
            Problem::StaleFinal { part, final_id } => {
                self.drop_records(vec![part], move |recs| {
                    let purge = match recs.get_mut(&part) {
                        Some(Some(p)) => {
                            p.finals.retain(|f| *f != final_id);
                            p.deleted && p.finals.is_empty()
                        }
                        _ => false,
                    };
                    if purge {
                        recs.insert(part, None);
                    }
                })
                .await
            }
            Problem::UnrecordedUse { final_id, part } => {
                self.meta
                    .transact(
                        vec![part],
                        Box::new(move |recs| {
                            if let Some(Some(p)) = recs.get_mut(&part)
                                && !p.finals.contains(&final_id)
                            {
                                p.finals.push(final_id);
                            }
                            Ok(())
                        }),
                    )
                    .await?;
                Ok(())
            }
            Problem::UnusedHiddenPart { id } => {
                self.drop_records(vec![id], move |recs| {
                    if matches!(recs.get(&id), Some(Some(p)) if p.deleted && p.finals.is_empty()) {
                        recs.insert(id, None);
                    }
                })
                .await
            }
        }
    }

    /// Applies `change` to `ids` in one transaction, then deletes the data of every record it
    /// removed.
    async fn drop_records(
        &self,
        ids: Vec<UploadId>,
        change: impl Fn(&mut Records) + Send + Sync + 'static,
    ) -> Result<()> {
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let saw = seen.clone();
        let records = self
            .meta
            .transact(
                ids,
                Box::new(move |recs| {
                    *saw.lock().unwrap_or_else(|p| p.into_inner()) = locators(recs);
                    change(recs);
                    Ok(())
                }),
            )
            .await?;
        let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        for (id, at) in gone_objects(&records, seen) {
            self.data.delete(id, &at).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use ferry_proto::Metadata;
    use ferry_proto::digest::Digests;

    fn id(b: u8) -> UploadId {
        UploadId::from_bytes([b; 16])
    }

    fn rec(b: u8, kind: UploadKind, offset: u64, finals: &[u8]) -> UploadInfo {
        UploadInfo {
            id: id(b),
            length: Some(offset),
            offset,
            metadata: Metadata::default(),
            protocol: Protocol::Tus,
            kind,
            received: None,
            created_ms: 1,
            updated_ms: 1,
            expires_ms: None,
            digests: Digests::new(),
            finals: finals.iter().map(|f| id(*f)).collect(),
            deleted: false,
            running_crc: None,
            locator: crate::data::Locator::none(),
            finish_pending: false,
        }
    }

    /// `find_problems` with what the local store holds: each object's size.
    fn check(records: &[UploadInfo], objects: &[(UploadId, u64)]) -> Vec<Problem> {
        find_problems(records, objects, &objects.iter().copied().collect())
    }

    fn fin(b: u8, parts: &[u8]) -> UploadInfo {
        let parts = parts.iter().map(|p| id(*p)).collect();
        rec(b, UploadKind::Final { parts }, 0, &[])
    }

    #[test]
    fn agreeing_records_and_data_have_no_problem() {
        let records = [
            rec(1, UploadKind::Partial, 5, &[3]),
            rec(2, UploadKind::Partial, 7, &[3]),
            fin(3, &[1, 2]),
            rec(4, UploadKind::Regular, 0, &[]),
        ];
        let objects = [(id(1), 5), (id(2), 9), (id(4), 0)];
        assert_eq!(check(&records, &objects), vec![]);
    }

    #[test]
    fn each_disagreement_is_found() {
        let mut hidden = rec(6, UploadKind::Partial, 1, &[]);
        hidden.deleted = true;
        let records = [
            rec(1, UploadKind::Partial, 5, &[]),  // does not record final 3
            rec(2, UploadKind::Partial, 7, &[9]), // names a final that does not exist
            fin(3, &[1, 5]),                      // part 5 does not exist
            rec(4, UploadKind::Regular, 10, &[]), // data too short
            hidden,
        ];
        let objects = [(id(1), 5), (id(2), 7), (id(4), 3), (id(6), 1), (id(8), 4)];
        assert_eq!(
            check(&records, &objects),
            vec![
                Problem::OrphanData {
                    id: id(8),
                    bytes: 4
                },
                Problem::MissingData {
                    id: id(4),
                    have: Some(3),
                    need: 10
                },
                Problem::MissingPart {
                    final_id: id(3),
                    part: id(5)
                },
                Problem::StaleFinal {
                    part: id(2),
                    final_id: id(9)
                },
                Problem::UnrecordedUse {
                    final_id: id(3),
                    part: id(1)
                },
                Problem::UnusedHiddenPart { id: id(6) },
            ]
        );
    }

    #[test]
    fn a_final_owns_no_data_and_a_missing_object_is_missing_data() {
        let records = [fin(3, &[]), rec(1, UploadKind::Regular, 0, &[])];
        let objects = [(id(3), 0)];
        assert_eq!(
            check(&records, &objects),
            vec![
                Problem::OrphanData {
                    id: id(3),
                    bytes: 0
                },
                Problem::MissingData {
                    id: id(1),
                    have: None,
                    need: 0
                },
            ]
        );
    }

    #[test]
    fn a_short_unfinished_upload_is_cut_to_what_its_data_holds() {
        let mut r = rec(1, UploadKind::Regular, 10, &[]);
        r.length = Some(20);
        r.running_crc = Some(77);
        cut_to(&mut r, 4);
        assert_eq!(r.offset, 4);
        assert_eq!(r.running_crc, None, "the CRC of the longer prefix is gone");
        let mut c = rec(2, UploadKind::Regular, 5, &[]);
        let mut got = crate::model::RangeSet::new();
        got.insert(0, 5);
        got.insert(8, 12);
        c.received = Some(got);
        cut_to(&mut c, 10);
        assert_eq!(c.received.as_ref().unwrap().ranges(), &[(0, 5), (8, 10)]);
        assert_eq!(c.offset, 5);
        assert_eq!(check(&[c], &[(id(2), 10)]), vec![]);
    }
}
