//! Whole-upload digests: kept running while bytes are appended in order, or computed by reading
//! an upload back when the chain from byte 0 is broken or a client asks for one.

use super::Uploads;
use super::concat::read_upload;
use super::policy::{Wanted, digests_inline, runs_every_digest, wanted};
use crate::data::DataStore;
use crate::error::{Result, StoreError};
use crate::meta::MetaStore;
use crate::model::UploadInfo;
use ferry_proto::UploadId;
use ferry_proto::checksum::{ChecksumAlgorithm, Hasher};
use ferry_proto::digest::WantDigest;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The whole-upload digests kept up to date while bytes are appended in order.
#[derive(Clone)]
pub(crate) struct RunningDigest {
    crc64nvme: Hasher,
    /// BLAKE3: for uploads small enough to get every digest inline, or asked for by the
    /// request that started the upload ([`Append::keep_running`](super::Append::keep_running)).
    blake3: Option<Hasher>,
    /// SHA-256: likewise.
    sha256: Option<Hasher>,
}

/// Digests of a whole upload: CRC-64/NVME, then BLAKE3 and SHA-256 if they were kept running.
pub(crate) type Finished = (u64, Option<[u8; 32]>, Option<[u8; 32]>);

impl RunningDigest {
    /// The digests to run from byte 0 of an upload of `length`.
    pub(crate) fn new(length: Option<u64>) -> Self {
        let every = runs_every_digest(length);
        Self {
            crc64nvme: Hasher::new(ChecksumAlgorithm::Crc64Nvme),
            blake3: every.then(|| Hasher::new(ChecksumAlgorithm::Blake3)),
            sha256: every.then(|| Hasher::new(ChecksumAlgorithm::Sha256)),
        }
    }

    /// Also runs `algorithm` (BLAKE3 or SHA-256), if it is not running yet.
    pub(crate) fn also_run(&mut self, algorithm: ChecksumAlgorithm) {
        let slot = match algorithm {
            ChecksumAlgorithm::Blake3 => &mut self.blake3,
            ChecksumAlgorithm::Sha256 => &mut self.sha256,
            _ => return,
        };
        slot.get_or_insert_with(|| Hasher::new(algorithm));
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.crc64nvme.update(data);
        for h in [&mut self.blake3, &mut self.sha256].into_iter().flatten() {
            h.update(data);
        }
    }

    pub(crate) fn finish(self) -> Finished {
        (
            to_u64(self.crc64nvme.finalize()),
            self.blake3.map(|h| to32(h.finalize())),
            self.sha256.map(|h| to32(h.finalize())),
        )
    }
}

fn to_u64(v: Vec<u8>) -> u64 {
    u64::from_be_bytes(v.try_into().expect("8-byte digest"))
}

pub(crate) fn to32(v: Vec<u8>) -> [u8; 32] {
    v.try_into().expect("32-byte digest")
}

impl Uploads {
    /// Takes the running digests of `id` out, with the offset they reached.
    pub(crate) fn take_running(&self, id: UploadId) -> Option<(u64, RunningDigest)> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }

    /// The running digests to continue an append of `id` at the committed `offset` with:
    /// those that reached exactly `offset`, fresh ones at 0, else none (the chain is broken and
    /// completion reads the upload back).
    pub(crate) fn resume_running(
        &self,
        id: UploadId,
        offset: u64,
        length: Option<u64>,
    ) -> Option<RunningDigest> {
        match self.take_running(id) {
            Some((pos, h)) if pos == offset => Some(h),
            _ if offset == 0 => Some(RunningDigest::new(length)),
            _ => None,
        }
    }

    /// Keeps `digest`, covering bytes up to `offset` of `id`, for the next append.
    pub(crate) fn save_running(&self, id: UploadId, offset: u64, digest: RunningDigest) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (offset, digest));
    }

    /// Computes missing digests by reading the data back (after a restart, a takeover that
    /// broke the hash chain, for finals whose parts lack one, or a cryptographic digest on
    /// request): inline when small (every digest), else in the background (CRC-64/NVME, and
    /// the cheapest cryptographic digest `want` accepts if it accepts no CRC). Runs at most
    /// once at a time per upload.
    pub(crate) async fn digest_by_reading(&self, info: &UploadInfo, want: WantDigest) {
        let small = digests_inline(info.length.unwrap_or(0));
        if wanted(info, want, small).is_none() {
            return;
        }
        let data = self.data.clone();
        let meta = self.meta.clone();
        let digesting = self.digesting.clone();
        let id = info.id;
        let job = async move {
            // One read-back at a time per upload: a request for another digest that comes
            // while one runs waits for it, then computes what the record still lacks.
            while !digesting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Leaves the set however the job ends (a request running it inline may be
            // cancelled mid-way; a stale entry would make every later request wait forever).
            let _running = Digesting(&digesting, id);
            let result = match meta.get(id).await {
                Ok(Some(fresh)) => match wanted(&fresh, want, small) {
                    Some(w) => compute_digest(&data, &meta, &fresh, w).await,
                    None => Ok(()),
                },
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(upload = %id, error = %e, "digest failed");
            }
        };
        if small {
            job.await;
        } else {
            tokio::spawn(job);
        }
    }

    /// A client asked for a digest of a finished upload (`want`, from `Want-Repr-Digest`):
    /// computes what is missing, in the background when large, once. The record shows the
    /// digests when done.
    pub async fn ensure_digests(&self, info: &UploadInfo, want: WantDigest) {
        if info.is_complete() {
            self.digest_by_reading(info, want).await;
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

/// Hashes the whole upload with the wanted algorithms (one read) and stores the digests.
async fn compute_digest(
    data: &Arc<dyn DataStore>,
    meta: &Arc<dyn MetaStore>,
    info: &UploadInfo,
    want: Wanted,
) -> Result<()> {
    let length = info.length.unwrap_or(0);
    let mut stream = read_upload(data, meta, info, 0, length).await?;
    let mut crc = want
        .crc64nvme
        .then(|| Hasher::new(ChecksumAlgorithm::Crc64Nvme));
    let mut b3 = want.blake3.then(|| Hasher::new(ChecksumAlgorithm::Blake3));
    let mut sha = want.sha256.then(|| Hasher::new(ChecksumAlgorithm::Sha256));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        // Off the async threads: hashing a GiB takes a while.
        let (c, b, s) = tokio::task::spawn_blocking(move || {
            for h in [&mut crc, &mut b3, &mut sha].into_iter().flatten() {
                h.update(&chunk);
            }
            (crc, b3, sha)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        (crc, b3, sha) = (c, b, s);
    }
    let crc = crc.map(|h| to_u64(h.finalize()));
    let b3 = b3.map(|h| to32(h.finalize()));
    let sha = sha.map(|h| to32(h.finalize()));
    meta.update(
        info.id,
        Box::new(move |i| {
            if crc.is_some() {
                i.crc64nvme = crc;
            }
            if b3.is_some() {
                i.blake3 = b3;
            }
            if sha.is_some() {
                i.sha256 = sha;
            }
            Ok(())
        }),
    )
    .await?;
    Ok(())
}
