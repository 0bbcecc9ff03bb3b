//! Whole-upload digests: kept running while bytes are appended in order, or computed by reading
//! an upload back when the chain from byte 0 is broken or a client asks for one (a large
//! upload's on the bounded pool of [`jobs`]).

mod jobs;

pub(crate) use jobs::DigestJobs;

use super::Uploads;
use super::concat::read_upload;
use super::policy::{
    RUNNING_CACHE, Wanted, digests_inline, runs_every_digest, still_missing, wanted,
};
use crate::data::DataStore;
use crate::error::{Result, StoreError};
use crate::meta::MetaStore;
use crate::model::UploadInfo;
use ferry_proto::UploadId;
use ferry_proto::checksum::{ChecksumAlgorithm, Hasher};
use ferry_proto::digest::{Digests, KEPT, WantDigest};
use futures_util::StreamExt;
use jobs::Job;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The whole-upload digests kept up to date while bytes are appended in order: CRC-64/NVME
/// always; the cryptographic ones of [`KEPT`] for uploads small enough to get every digest
/// inline, or when asked for by the request that started the upload
/// ([`Append::keep_running`](super::Append::keep_running)).
#[derive(Clone)]
pub(crate) struct RunningDigest(Vec<Hasher>);

impl RunningDigest {
    /// The digests to run from byte 0 of an upload of `length`.
    pub(crate) fn new(length: Option<u64>) -> Self {
        let every = runs_every_digest(length);
        Self(
            KEPT.into_iter()
                .filter(|a| every || *a == ChecksumAlgorithm::Crc64Nvme)
                .map(Hasher::new)
                .collect(),
        )
    }

    /// Continues the CRC-64/NVME of an upload whose first bytes' CRC is `crc` (from its
    /// record); the cryptographic digests of those bytes are gone.
    pub(crate) fn resumed(crc: u64) -> Self {
        Self(vec![Hasher::crc64nvme_continuing(crc)])
    }

    /// The CRC-64/NVME of the bytes so far.
    pub(crate) fn crc(&self) -> Option<u64> {
        self.0.iter().find_map(Hasher::crc64nvme_so_far)
    }

    /// Whether anything but the CRC (which the record keeps) runs.
    fn has_more_than_crc(&self) -> bool {
        self.0
            .iter()
            .any(|h| h.algorithm() != ChecksumAlgorithm::Crc64Nvme)
    }

    /// Also runs `algorithm` (one of [`KEPT`]), if it is not running yet.
    pub(crate) fn also_run(&mut self, algorithm: ChecksumAlgorithm) {
        if KEPT.contains(&algorithm) && !self.0.iter().any(|h| h.algorithm() == algorithm) {
            self.0.push(Hasher::new(algorithm));
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        for h in &mut self.0 {
            h.update(data);
        }
    }

    /// Every running digest, finished.
    pub(crate) fn finish(self) -> Digests {
        self.0
            .into_iter()
            .map(|h| (h.algorithm(), h.finalize()))
            .collect()
    }
}

/// Records the running digests of an upload that reached its end: the CRC always (it covers
/// every byte), a cryptographic digest only if none is recorded yet.
pub(crate) fn record_running(info: &mut UploadInfo, running: &Digests) {
    for (a, d) in running.iter() {
        if a == ChecksumAlgorithm::Crc64Nvme || !info.digests.has(a) {
            info.digests.set(a, d.to_vec());
        }
    }
}

/// The cryptographic digest states of uploads between two requests, bounded: an upload
/// evicted (or abandoned, or continued after a restart) keeps its CRC in its record and has the
/// rest computed by reading back at completion if anyone wants them.
#[derive(Default)]
pub(crate) struct RunningCache {
    entries: HashMap<UploadId, (u64, RunningDigest, u64)>,
    /// Insertion counter: the oldest entry makes room.
    next: u64,
}

impl RunningCache {
    fn insert(&mut self, id: UploadId, offset: u64, digest: RunningDigest) {
        if self.entries.len() >= RUNNING_CACHE
            && !self.entries.contains_key(&id)
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, _, seq))| *seq)
                .map(|(id, _)| *id)
        {
            self.entries.remove(&oldest);
        }
        self.next += 1;
        self.entries.insert(id, (offset, digest, self.next));
    }

    fn remove(&mut self, id: &UploadId) -> Option<(u64, RunningDigest)> {
        self.entries.remove(id).map(|(o, d, _)| (o, d))
    }

    /// How many uploads have states here.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets every state (as a restart would).
    #[cfg(test)]
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

impl Uploads {
    /// Takes the running digests of `id` out, with the offset they reached.
    pub(crate) fn take_running(&self, id: UploadId) -> Option<(u64, RunningDigest)> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }

    /// The running digests to continue an append of `info` at its committed offset with:
    /// those kept in memory that reached exactly that offset, fresh ones at 0, else the CRC
    /// continued from the record (the cryptographic chain is broken; completion reads those
    /// back if wanted), else none.
    pub(crate) fn resume_running(&self, info: &UploadInfo) -> Option<RunningDigest> {
        match self.take_running(info.id) {
            Some((pos, h)) if pos == info.offset => Some(h),
            _ if info.offset == 0 => Some(RunningDigest::new(info.length)),
            _ => info.running_crc.map(RunningDigest::resumed),
        }
    }

    /// Keeps `digest`, covering bytes up to `offset` of `id`, for the next append, if it
    /// holds more than the CRC that the record keeps anyway.
    pub(crate) fn save_running(&self, id: UploadId, offset: u64, digest: RunningDigest) {
        if digest.has_more_than_crc() {
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, offset, digest);
        }
    }

    /// Computes missing digests by reading the data back (after a restart, a takeover that
    /// broke the hash chain, or for finals whose parts lack one): inline when small (every
    /// digest), else in the background (CRC-64/NVME, and the cheapest cryptographic digest
    /// `want` accepts if it accepts no CRC). Runs at most once at a time per upload.
    pub(crate) async fn digest_by_reading(&self, info: &UploadInfo, want: WantDigest) {
        let small = digests_inline(info.length.unwrap_or(0));
        if wanted(info, want, small).is_none() {
            return;
        }
        let reader = self.reader();
        let id = info.id;
        let job = async move {
            reader
                .read_back(id, |fresh| wanted(fresh, want, small), None)
                .await;
        };
        if small {
            job.await;
        } else {
            tokio::spawn(job);
        }
    }

    /// A client asked for a digest of a finished upload (`want`, from `Want-Repr-Digest`):
    /// computes what is missing and waits for it at most `bound`. A small upload's are computed
    /// at once; a large one's by a read-back job on the bounded pool, queued once per upload
    /// (or not at all when the queue is full), and waited for only while it can be done within
    /// `bound` at the measured hash rate. The record shows the digests when done; a caller that
    /// stopped waiting answers with those it has.
    pub async fn wait_for_digests(&self, info: &UploadInfo, want: WantDigest, bound: Duration) {
        if !info.is_complete() {
            return;
        }
        let length = info.length.unwrap_or(0);
        if digests_inline(length) {
            self.digest_by_reading(info, want).await;
            return;
        }
        let Some(algorithms) = wanted(info, want, false) else {
            return;
        };
        let started = tokio::time::Instant::now();
        let reader = self.reader();
        let run = move |job: Job, hashed: Arc<AtomicU64>| {
            let reader = reader.clone();
            async move {
                let pick = |fresh: &UploadInfo| still_missing(fresh, job.algorithms);
                reader.read_back(job.id, pick, Some(&hashed)).await;
            }
        };
        let job = Job {
            id: info.id,
            algorithms,
            length,
        };
        if let Some(mut done) = self.digest_jobs.submit(job, want, bound, run) {
            let left = bound.saturating_sub(started.elapsed());
            // Ends when the job does (stored or failed), or at the bound.
            let _ = tokio::time::timeout(left, done.changed()).await;
        }
    }

    /// [`wait_for_digests`](Self::wait_for_digests) without waiting: the job starts or is
    /// queued, and the record shows the digests when done.
    pub async fn ensure_digests(&self, info: &UploadInfo, want: WantDigest) {
        self.wait_for_digests(info, want, Duration::ZERO).await;
    }

    /// Read-backs of large uploads for clients on a pool of `workers` and a queue of `queue`.
    #[cfg(test)]
    pub(crate) fn with_digest_jobs(mut self, workers: usize, queue: usize) -> Self {
        self.digest_jobs = Arc::new(DigestJobs::new(workers, queue));
        self
    }

    fn reader(&self) -> Reader {
        Reader {
            data: self.data.clone(),
            meta: self.meta.clone(),
            digesting: self.digesting.clone(),
        }
    }
}

/// What a read-back needs of the engine, owned (it may run in a task of its own).
#[derive(Clone)]
struct Reader {
    data: Arc<dyn DataStore>,
    meta: Arc<dyn MetaStore>,
    digesting: Arc<Mutex<HashSet<UploadId>>>,
}

impl Reader {
    /// Reads `id` back and stores what `pick` says its fresh record still lacks, once no other
    /// read-back of it runs (one that comes while another runs waits for it, then computes
    /// what the record still lacks), counting the bytes hashed in `hashed`.
    async fn read_back(
        &self,
        id: UploadId,
        pick: impl FnOnce(&UploadInfo) -> Option<Wanted>,
        hashed: Option<&AtomicU64>,
    ) {
        while !self
            .digesting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Leaves the set however the job ends (a request running it inline may be cancelled
        // mid-way; a stale entry would make every later request wait forever).
        let _running = Digesting(&self.digesting, id);
        let result = match self.meta.get(id).await {
            Ok(Some(fresh)) => match pick(&fresh) {
                Some(w) => compute_digest(&self.data, &self.meta, &fresh, w, hashed).await,
                None => Ok(()),
            },
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(upload = %id.tag(), error = %e, "digest failed");
        }
    }
}

/// Marks an upload's read-back as running for as long as it lives.
struct Digesting<'a>(&'a Mutex<HashSet<UploadId>>, UploadId);

impl Drop for Digesting<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// Hashes the whole upload with the wanted algorithms (one read), counting bytes in `hashed`,
/// and stores the digests.
async fn compute_digest(
    data: &Arc<dyn DataStore>,
    meta: &Arc<dyn MetaStore>,
    info: &UploadInfo,
    want: Wanted,
    hashed: Option<&AtomicU64>,
) -> Result<()> {
    let length = info.length.unwrap_or(0);
    let mut stream = read_upload(data, meta, info, 0, length).await?;
    let mut hashers: Vec<Hasher> = want.algorithms().map(Hasher::new).collect();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if let Some(h) = hashed {
            h.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        // Off the async threads: hashing a GiB takes a while.
        hashers = tokio::task::spawn_blocking(move || {
            for h in &mut hashers {
                h.update(&chunk);
            }
            hashers
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
    }
    let found: Digests = hashers
        .into_iter()
        .map(|h| (h.algorithm(), h.finalize()))
        .collect();
    let updated = meta
        .update(
            info.id,
            Box::new(move |i| {
                for (a, d) in found.iter() {
                    i.digests.set(a, d.to_vec());
                }
                Ok(())
            }),
        )
        .await?;
    // A final that completed before this part had its CRC got none: combine it now.
    if updated.digests.has(ChecksumAlgorithm::Crc64Nvme) {
        for f in &updated.finals {
            if let Err(e) = super::concat::combine_final_crc(meta, *f).await {
                tracing::warn!(upload = %f.tag(), error = %e, "combining a final's CRC failed");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
