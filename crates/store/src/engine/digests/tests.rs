//! Read-backs for digests clients ask for: once per upload, on a bounded pool.

use super::super::*;
use crate::data::{DataCapabilities, DataWriter, Fence, Holding, Locator, Owner, WriteMode};
use crate::local::LocalDataStore;
use crate::lock::LocalLocker;
use crate::redb_meta::RedbMetaStore;
use async_trait::async_trait;
use ferry_proto::checksum::crc64nvme_of;
use ferry_proto::digest::WantDigest;
use futures_util::StreamExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What the data store saw of reads.
#[derive(Default)]
struct Reads {
    /// Bytes streamed out.
    bytes: AtomicU64,
    /// Reads asked for and not finished (waiting at the gate or streaming).
    open: AtomicUsize,
    /// Most reads open at once.
    peak: AtomicUsize,
    /// While set, reads wait before they start (as a slow disk would).
    stalled: AtomicBool,
}

/// Leaves `open` when the read ends (however it ends).
struct OpenRead(Arc<Reads>);

impl Drop for OpenRead {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The local data store, counting what is read.
struct Counting {
    inner: LocalDataStore,
    reads: Arc<Reads>,
}

#[async_trait]
impl DataStore for Counting {
    fn identity(&self) -> String {
        self.inner.identity()
    }

    fn capabilities(&self) -> DataCapabilities {
        self.inner.capabilities()
    }

    async fn create(&self, id: UploadId, durable: bool, length: Option<u64>) -> Result<Locator> {
        self.inner.create(id, durable, length).await
    }

    async fn open_writer(
        &self,
        id: UploadId,
        at: &Locator,
        mode: WriteMode,
        fence: Fence,
    ) -> Result<Box<dyn DataWriter>> {
        self.inner.open_writer(id, at, mode, fence).await
    }

    async fn finish(&self, id: UploadId, at: &Locator, length: u64) -> Result<Locator> {
        self.inner.finish(id, at, length).await
    }

    fn past_reserved(&self, at: &Locator, fence: &Fence) -> Result<Locator> {
        self.inner.past_reserved(at, fence)
    }

    fn merge_locators(&self, recorded: &Locator, written: &Locator) -> Result<Locator> {
        self.inner.merge_locators(recorded, written)
    }

    async fn read(&self, id: UploadId, at: &Locator, start: u64, end: u64) -> Result<ByteStream> {
        let reads = self.reads.clone();
        let now = reads.open.fetch_add(1, Ordering::SeqCst) + 1;
        reads.peak.fetch_max(now, Ordering::SeqCst);
        let open = OpenRead(reads.clone());
        while reads.stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stream = self.inner.read(id, at, start, end).await?;
        Ok(Box::pin(stream.map(move |chunk| {
            if let Ok(c) = &chunk {
                open.0.bytes.fetch_add(c.len() as u64, Ordering::SeqCst);
            }
            chunk
        })))
    }

    async fn delete(&self, id: UploadId, at: &Locator) -> Result<()> {
        self.inner.delete(id, at).await
    }

    fn derived_locator(&self, id: UploadId) -> Option<Locator> {
        self.inner.derived_locator(id)
    }

    async fn inventory(&self) -> Result<Vec<(UploadId, u64)>> {
        self.inner.inventory().await
    }

    async fn holds(&self, id: UploadId, at: &Locator) -> Result<Option<Holding>> {
        self.inner.holds(id, at).await
    }

    async fn reconcile(&self, owner: &Owner<'_>, cutoff: Option<u64>) -> Result<usize> {
        self.inner.reconcile(owner, cutoff).await
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferry-digests-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

/// An engine over a counting data store, reading back on `workers` with a queue of `queue`.
fn counted(dir: &Path, workers: usize, queue: usize) -> (Arc<Uploads>, Arc<Reads>) {
    let reads = Arc::new(Reads::default());
    let data = Counting {
        inner: LocalDataStore::open(dir).unwrap(),
        reads: reads.clone(),
    };
    let meta = RedbMetaStore::open(&dir.join("ferry.redb")).unwrap();
    let u = Uploads::new(
        Arc::new(data),
        Arc::new(meta),
        Arc::new(LocalLocker::new(Duration::from_secs(5))),
        SyncPolicy::None,
    )
    .with_digest_jobs(workers, queue);
    (Arc::new(u), reads)
}

/// A finished upload holding `data` (written in order: its CRC is ready, nothing read back).
async fn finished(u: &Uploads, data: &[u8]) -> UploadInfo {
    let info = u
        .create(NewUpload {
            length: Some(data.len() as u64),
            ..Default::default()
        })
        .await
        .unwrap();
    let lease = u.lease(info.id).await.unwrap();
    let mut a = u.append(&lease, None).await.unwrap();
    a.push(data).await.unwrap();
    let done = a.commit().await.unwrap();
    assert!(done.digests.has(ChecksumAlgorithm::Crc64Nvme));
    done
}

/// A client asks for `want` of `info` and waits at most `bound`; what the record then holds.
async fn ask(u: &Uploads, info: &UploadInfo, want: WantDigest, bound: Duration) -> UploadInfo {
    u.wait_for_digests(info, want, bound).await;
    u.get(info.id).await.unwrap().unwrap()
}

/// Polls until `id` has `algorithm` (or 60 s pass).
async fn settled(u: &Uploads, id: UploadId, algorithm: ChecksumAlgorithm) -> UploadInfo {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let i = u.get(id).await.unwrap().unwrap();
        if i.digests.has(algorithm) || Instant::now() > deadline {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sha256() -> WantDigest {
    WantDigest::parse("sha-256=10")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_digest_read_the_upload_once() {
    let dir = tempdir();
    let (u, reads) = counted(dir.path(), 1, 64);
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i / 13) as u8).collect();
    let done = finished(&u, &data).await;
    let asks: Vec<_> = (0..8)
        .map(|_| {
            let (u, done) = (u.clone(), done.clone());
            tokio::spawn(async move { ask(&u, &done, sha256(), Duration::from_secs(60)).await })
        })
        .collect();
    let want = digest(ChecksumAlgorithm::Sha256, &data);
    for a in asks {
        let i = a.await.unwrap();
        assert_eq!(i.digests.get(ChecksumAlgorithm::Sha256), Some(&want[..]));
    }
    // Any job still queued behind the first would read now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reads.bytes.load(Ordering::SeqCst),
        data.len() as u64,
        "exactly one read-back"
    );
    assert_eq!(reads.peak.load(Ordering::SeqCst), 1);
    // Asked again later: kept in the record, nothing read.
    let again = ask(&u, &done, sha256(), Duration::from_secs(5)).await;
    assert!(again.digests.has(ChecksumAlgorithm::Sha256));
    assert_eq!(reads.bytes.load(Ordering::SeqCst), data.len() as u64);

    // While the worker is busy with another upload, eight requests for one upload queue one
    // job, which runs after it.
    let len = INLINE_DIGEST_MAX as usize + (1 << 20);
    let busy = finished(&u, &vec![1; len]).await;
    let queued = finished(&u, &vec![2; len]).await;
    reads.peak.store(0, Ordering::SeqCst);
    reads.stalled.store(true, Ordering::SeqCst);
    u.ensure_digests(&busy, sha256()).await;
    let asks: Vec<_> = (0..8)
        .map(|_| {
            let (u, queued) = (u.clone(), queued.clone());
            tokio::spawn(async move { u.ensure_digests(&queued, sha256()).await })
        })
        .collect();
    for a in asks {
        a.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reads.peak.load(Ordering::SeqCst),
        1,
        "the queued upload waits for the worker"
    );
    assert_eq!(u.digest_jobs.queued(), 1, "queued once");
    reads.stalled.store(false, Ordering::SeqCst);
    for info in [&busy, &queued] {
        let i = settled(&u, info.id, ChecksumAlgorithm::Sha256).await;
        assert!(i.digests.has(ChecksumAlgorithm::Sha256));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reads.bytes.load(Ordering::SeqCst),
        (data.len() + 2 * len) as u64,
        "one read-back each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_backs_of_many_uploads_run_on_a_bounded_pool() {
    let dir = tempdir();
    let (u, reads) = counted(dir.path(), 1, 2);
    let len = INLINE_DIGEST_MAX as usize + (1 << 20);
    let mut uploads = Vec::new();
    for n in 0..6u8 {
        uploads.push(finished(&u, &vec![n; len]).await);
    }
    reads.stalled.store(true, Ordering::SeqCst);
    for info in &uploads {
        u.ensure_digests(info, sha256()).await;
    }
    // Let whatever was started reach the data store.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reads.peak.load(Ordering::SeqCst),
        1,
        "one worker reads back at a time"
    );
    assert_eq!(u.digest_jobs.queued(), 2);
    // A request beyond the queue is answered at once with what the record has.
    let started = Instant::now();
    let refused = ask(&u, &uploads[5], sha256(), Duration::from_secs(30)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!refused.digests.has(ChecksumAlgorithm::Sha256));
    assert!(refused.digests.has(ChecksumAlgorithm::Crc64Nvme));
    // So is one queued behind more than can be hashed within its bound.
    let started = Instant::now();
    let late = ask(&u, &uploads[2], sha256(), Duration::from_millis(1)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!late.digests.has(ChecksumAlgorithm::Sha256));
    reads.stalled.store(false, Ordering::SeqCst);
    for info in &uploads[..3] {
        let i = settled(&u, info.id, ChecksumAlgorithm::Sha256).await;
        assert!(i.digests.has(ChecksumAlgorithm::Sha256));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (n, info) in uploads.iter().enumerate().skip(3) {
        let i = u.get(info.id).await.unwrap().unwrap();
        assert!(!i.digests.has(ChecksumAlgorithm::Sha256), "never queued");
        assert_eq!(
            i.digests.crc64nvme(),
            Some(crc64nvme_of(&vec![n as u8; len]))
        );
    }
    assert_eq!(reads.bytes.load(Ordering::SeqCst), 3 * len as u64);
    assert_eq!(
        u.digest_jobs.most_queued(),
        2,
        "the queue never grew past its bound"
    );
    // Refused is not forgotten: asked again once there is room, it is computed (and waited
    // for, now that the rate is measured).
    let again = ask(&u, &uploads[5], sha256(), Duration::from_secs(60)).await;
    assert_eq!(
        again.digests.get(ChecksumAlgorithm::Sha256),
        Some(&digest(ChecksumAlgorithm::Sha256, &vec![5; len])[..])
    );
}
