//! The engine's behaviour end to end, on a local store in a temporary directory.

use super::*;
use crate::local::LocalDataStore;
use crate::test_support::read_all;
use ferry_proto::checksum::crc64nvme_of;
use ferry_proto::digest::WantDigest;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::Duration;

fn open(dir: &Path) -> Uploads {
    Uploads::open_local(dir, SyncPolicy::Always).unwrap()
}

/// `mib` MiB of bytes that change every `step` positions.
fn pattern(mib: u32, step: u32) -> Vec<u8> {
    (0..(mib << 20)).map(|i| (i / step) as u8).collect()
}

/// A regular upload of `length` (None: deferred).
async fn regular(u: &Uploads, length: Option<u64>) -> UploadInfo {
    u.create(new_upload(length, UploadKind::Regular))
        .await
        .unwrap()
}

async fn write_all(u: &Uploads, id: UploadId, data: &[u8]) -> UploadInfo {
    let lease = u.lease(id).await.unwrap();
    let mut a = u.append(&lease, Some(data.len() as u64)).await.unwrap();
    a.push(data).await.unwrap();
    a.commit().await.unwrap()
}

fn sha(data: &[u8]) -> Vec<u8> {
    digest(ChecksumAlgorithm::Sha256, data)
}

fn b3(data: &[u8]) -> Vec<u8> {
    digest(ChecksumAlgorithm::Blake3, data)
}

/// The digest `info` records for `algorithm`.
fn got(info: &UploadInfo, algorithm: ChecksumAlgorithm) -> Option<Vec<u8>> {
    info.digests.get(algorithm).map(<[u8]>::to_vec)
}

fn new_upload(length: Option<u64>, kind: UploadKind) -> NewUpload {
    NewUpload {
        length,
        kind,
        ..Default::default()
    }
}

#[tokio::test]
async fn append_commit_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
    let info = regular(&u, Some(data.len() as u64)).await;
    let lease = u.lease(info.id).await.unwrap();
    let mut a = u.append(&lease, None).await.unwrap();
    for chunk in data.chunks(70_001) {
        a.push(chunk).await.unwrap();
    }
    assert!(matches!(
        a.push(b"x").await,
        Err(StoreError::ExceedsLength { .. })
    ));
    let done = a.commit().await.unwrap();
    assert!(done.is_complete());
    assert_eq!(
        got(&done, ChecksumAlgorithm::Sha256),
        Some(sha(&data)),
        "small uploads get their digest inline"
    );
    assert_eq!(got(&done, ChecksumAlgorithm::Blake3), Some(b3(&data)));
    assert_eq!(done.digests.crc64nvme(), Some(crc64nvme_of(&data)));
    assert_eq!(
        done.expires_ms, None,
        "finished uploads do not expire by default"
    );
    assert_eq!(read_all(&u, &done).await, data);
}

#[tokio::test]
async fn large_upload_has_its_digest_at_completion_without_rereading() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let data = pattern(12, 7);
    let info = regular(&u, Some(data.len() as u64)).await;
    // Three requests; the running hash carries over between them.
    for part in data.chunks(5 << 20) {
        write_all(&u, info.id, part).await;
    }
    let done = u.get(info.id).await.unwrap().unwrap();
    assert!(done.is_complete());
    assert_eq!(
        done.digests.crc64nvme(),
        Some(crc64nvme_of(&data)),
        "CRC-64/NVME ready at once (> inline limit)"
    );
    assert_eq!(
        (
            got(&done, ChecksumAlgorithm::Blake3),
            got(&done, ChecksumAlgorithm::Sha256)
        ),
        (None, None),
        "cryptographic digests of a large upload wait to be asked for"
    );
    let asked = |key: &str| WantDigest::parse(&format!("{key}=10"));
    let settled = |want: fn(&UploadInfo) -> bool| {
        let u = &u;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let i = u.get(info.id).await.unwrap().unwrap();
                if want(&i) || std::time::Instant::now() > deadline {
                    break i;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // Asking for a CRC (which is there) or BLAKE3 computes no SHA-256.
    u.ensure_digests(&done, WantDigest::parse("crc64nvme=10, sha-256=1"))
        .await;
    u.ensure_digests(&done, asked("blake3")).await;
    let with_b3 = settled(|i| i.digests.has(ChecksumAlgorithm::Blake3)).await;
    assert_eq!(
        got(&with_b3, ChecksumAlgorithm::Blake3),
        Some(b3(&data)),
        "computed on request"
    );
    assert_eq!(got(&with_b3, ChecksumAlgorithm::Sha256), None);
    u.ensure_digests(&with_b3, asked("sha-256")).await;
    let with_sha = settled(|i| i.digests.has(ChecksumAlgorithm::Sha256)).await;
    assert_eq!(
        got(&with_sha, ChecksumAlgorithm::Sha256),
        Some(sha(&data)),
        "computed on request"
    );
    assert_eq!(with_sha.digests.crc64nvme(), Some(crc64nvme_of(&data)));
}

#[tokio::test]
async fn a_digest_asked_for_while_another_is_read_back_is_computed_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let data = vec![9u8; (INLINE_DIGEST_MAX + 1) as usize];
    let info = regular(&u, Some(data.len() as u64)).await;
    let done = write_all(&u, info.id, &data).await;
    // As if a read-back of this upload were running.
    u.digesting.lock().unwrap().insert(info.id);
    u.ensure_digests(&done, WantDigest::parse("sha-256=10"))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        got(
            &u.get(info.id).await.unwrap().unwrap(),
            ChecksumAlgorithm::Sha256
        ),
        None
    );
    u.digesting.lock().unwrap().remove(&info.id);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let got = loop {
        let i = u.get(info.id).await.unwrap().unwrap();
        if i.digests.has(ChecksumAlgorithm::Sha256) || std::time::Instant::now() > deadline {
            break got(&i, ChecksumAlgorithm::Sha256);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        got,
        Some(sha(&data)),
        "the request waited instead of being dropped"
    );
}

#[tokio::test]
async fn declaring_the_length_at_the_offset_completes_with_the_running_crc() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let data = pattern(9, 11);
    let info = regular(&u, None).await;
    write_all(&u, info.id, &data).await;
    let lease = u.lease(info.id).await.unwrap();
    let done = u.declare_length(&lease, data.len() as u64).await.unwrap();
    assert!(done.is_complete());
    assert_eq!(
        done.digests.crc64nvme(),
        Some(crc64nvme_of(&data)),
        "from the running CRC, at once (a read-back of 9 MiB runs in the background)"
    );
    assert!(
        u.running.lock().unwrap().len() == 0,
        "no running entry left"
    );
}

#[tokio::test]
async fn a_cryptographic_digest_asked_for_at_the_start_is_kept_running() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let data = pattern(9, 5);
    let (one, two) = data.split_at(4 << 20);
    for (want, b3_kept, sha_kept) in [
        ("blake3=10, sha-256=3", true, false),
        ("sha-256=10", false, true),
        ("crc64nvme=10, blake3=5", false, false),
    ] {
        let info = regular(&u, Some(data.len() as u64)).await;
        let lease = u.lease(info.id).await.unwrap();
        let mut a = u.append(&lease, None).await.unwrap();
        a.keep_running(WantDigest::parse(want));
        a.push(one).await.unwrap();
        a.commit().await.unwrap();
        // Too late: bytes were already taken.
        a.keep_running(WantDigest::parse("sha-256=10"));
        drop(a);
        drop(lease);
        let done = write_all(&u, info.id, two).await;
        assert!(done.is_complete());
        assert_eq!(
            done.digests.crc64nvme(),
            Some(crc64nvme_of(&data)),
            "{want}"
        );
        assert_eq!(
            got(&done, ChecksumAlgorithm::Blake3),
            b3_kept.then(|| b3(&data)),
            "{want}"
        );
        assert_eq!(
            got(&done, ChecksumAlgorithm::Sha256),
            sha_kept.then(|| sha(&data)),
            "{want}"
        );
    }
}

#[tokio::test]
async fn large_final_combines_its_parts_crcs_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let data = pattern(10, 3);
    let (one, two) = data.split_at(6 << 20);
    let mut parts = Vec::new();
    for bytes in [one, two] {
        let p = u
            .create(new_upload(Some(bytes.len() as u64), UploadKind::Partial))
            .await
            .unwrap();
        let done = write_all(&u, p.id, bytes).await;
        assert_eq!(done.digests.crc64nvme(), Some(crc64nvme_of(bytes)));
        parts.push(p.id);
    }
    // Change a stored byte behind the store's back: a CRC computed by reading the final
    // back would show it; one combined from the parts' recorded CRCs does not.
    let first = LocalDataStore::open(dir.path()).unwrap().path_of(parts[0]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .write_all_at(&[data[0] ^ 0xff], 0)
        .unwrap();
    let f = u.create_final(parts, Metadata::default()).await.unwrap();
    let f = u.get(f.id).await.unwrap().unwrap();
    assert!(f.is_complete());
    assert_eq!(
        f.digests.crc64nvme(),
        Some(crc64nvme_of(&data)),
        "combined from the parts, nothing read back"
    );
    assert_ne!(read_all(&u, &f).await, data, "the byte did change");
}

#[tokio::test]
async fn broken_hash_chain_falls_back_to_reading() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let data = vec![42u8; 1 << 20];
    let info = regular(&u, Some(data.len() as u64)).await;
    write_all(&u, info.id, &data[..1000]).await;
    {
        // Hashed but never committed: the running hash must not keep these bytes.
        let lease = u.lease(info.id).await.unwrap();
        let mut a = u.append(&lease, None).await.unwrap();
        a.push(&[0u8; 600_000]).await.unwrap();
        a.commit().await.unwrap();
        a.push(&[1u8; 300_000]).await.unwrap();
    }
    u.running.lock().unwrap().clear();
    let lease = u.lease(info.id).await.unwrap();
    let mut a = u.append(&lease, None).await.unwrap();
    assert_eq!(
        a.hasher.as_ref().map(|h| h.crc()),
        Some(Some(crc64nvme_of(
            &[&data[..1000], &[0u8; 600_000][..]].concat()
        ))),
        "the CRC continues from the record after the cache is lost; nothing else does"
    );
    let at = a.info().offset as usize;
    let mut expect = data[..1000].to_vec();
    expect.extend_from_slice(&[0u8; 600_000]);
    expect.extend_from_slice(&data[at..]);
    a.push(&data[at..]).await.unwrap();
    let done = a.commit().await.unwrap();
    assert_eq!(
        got(&done, ChecksumAlgorithm::Sha256),
        Some(sha(&expect)),
        "digest by reading back"
    );
    assert_eq!(done.digests.crc64nvme(), Some(crc64nvme_of(&expect)));
}

#[tokio::test]
async fn uncommitted_bytes_do_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let info = regular(&u, Some(10)).await;
    {
        let lease = u.lease(info.id).await.unwrap();
        let mut a = u.append(&lease, None).await.unwrap();
        a.push(b"abc").await.unwrap();
        a.commit().await.unwrap();
        a.push(b"zzzz").await.unwrap();
        // dropped without commit
    }
    assert_eq!(u.get(info.id).await.unwrap().unwrap().offset, 3);
    let done = write_all(&u, info.id, b"defghij").await;
    assert_eq!(read_all(&u, &done).await, b"abcdefghij");
}

#[tokio::test]
async fn final_reads_across_parts_and_survives_part_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let a = u
        .create(new_upload(Some(5), UploadKind::Partial))
        .await
        .unwrap();
    let b = u
        .create(new_upload(Some(7), UploadKind::Partial))
        .await
        .unwrap();
    write_all(&u, a.id, b"hello").await;
    // Final created before part b finishes (concatenation-unfinished).
    let f = u
        .create_final(vec![a.id, b.id], Metadata::default())
        .await
        .unwrap();
    assert_eq!(f.length, None);
    write_all(&u, b.id, b", world").await;
    let f = u.get(f.id).await.unwrap().unwrap();
    assert!(f.is_complete(), "final completes with its last part");
    assert_eq!(read_all(&u, &f).await, b"hello, world");
    assert_eq!(
        got(&f, ChecksumAlgorithm::Sha256),
        None,
        "a final is not read back at completion, however small"
    );
    assert_eq!(
        f.digests.crc64nvme(),
        Some(crc64nvme_of(b"hello, world")),
        "combined from the parts'"
    );
    // Deleting a part hides it but keeps its bytes for the final.
    u.delete(a.id).await.unwrap();
    assert!(u.get(a.id).await.unwrap().is_none());
    assert_eq!(read_all(&u, &f).await, b"hello, world");
    // Deleting the final releases the hidden part for good.
    u.delete(f.id).await.unwrap();
    assert!(
        u.meta.get(a.id).await.unwrap().is_none(),
        "hidden part purged"
    );
    assert!(u.get(b.id).await.unwrap().is_some(), "visible part kept");
}

#[tokio::test]
async fn final_rejects_non_partials_and_missing_parts() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path()).with_max_size(Some(15));
    let r = regular(&u, Some(1)).await;
    assert!(matches!(
        u.create_final(vec![r.id], Metadata::default()).await,
        Err(StoreError::NotPartial(_))
    ));
    let missing = UploadId::from_bytes([9; 16]);
    assert!(matches!(
        u.create_final(vec![missing], Metadata::default()).await,
        Err(StoreError::NotFound(_))
    ));
    let p = u
        .create(new_upload(Some(10), UploadKind::Partial))
        .await
        .unwrap();
    write_all(&u, p.id, b"0123456789").await;
    let q = u
        .create(new_upload(Some(10), UploadKind::Partial))
        .await
        .unwrap();
    assert!(matches!(
        u.create_final(vec![p.id, q.id], Metadata::default()).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert!(matches!(
        u.create_final(vec![p.id, q.id, p.id], Metadata::default())
            .await,
        Err(StoreError::DuplicatePart(id)) if id == p.id
    ));
    let u = u.with_concat_limits(ConcatLimits {
        max_parts: 1,
        max_finals_per_part: 2,
    });
    assert!(matches!(
        u.create_final(vec![p.id, q.id], Metadata::default()).await,
        Err(StoreError::TooManyParts { count: 2, max: 1 })
    ));
    for _ in 0..2 {
        u.create_final(vec![p.id], Metadata::default())
            .await
            .unwrap();
    }
    assert!(matches!(
        u.create_final(vec![p.id], Metadata::default()).await,
        Err(StoreError::TooManyFinals { part, max: 2 }) if part == p.id
    ));
    let r = u.get(p.id).await.unwrap().unwrap();
    assert_eq!(
        r.finals.len(),
        2,
        "a refused final leaves no trace in its parts"
    );
}

#[tokio::test]
async fn sweeper_deletes_expired_unfinished_uploads_only() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path()).with_expiry(ExpiryPolicy {
        unfinished: Some(Duration::from_secs(60)),
        finished: None,
    });
    let stale = regular(&u, Some(10)).await;
    let done = regular(&u, Some(2)).await;
    write_all(&u, done.id, b"ok").await;
    let busy = regular(&u, Some(10)).await;
    let held = u.lease(busy.id).await.unwrap();
    let later = now_ms() + 61_000;
    assert!(u.get(stale.id).await.unwrap().unwrap().is_expired(later));
    let gone = u.sweep_expired(later).await.unwrap();
    assert_eq!(gone, vec![stale.id]);
    assert!(u.get(stale.id).await.unwrap().is_none());
    assert!(u.get(done.id).await.unwrap().is_some());
    assert!(
        !held.is_taken_over(),
        "the sweeper never interrupts a writer"
    );
    drop(held);
    assert_eq!(u.sweep_expired(later).await.unwrap(), vec![busy.id]);
}

#[tokio::test]
async fn expiring_a_partial_keeps_a_finished_final() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path()).with_expiry(ExpiryPolicy {
        unfinished: Some(Duration::from_secs(60)),
        finished: Some(Duration::from_secs(3600)),
    });
    let p = u
        .create(new_upload(Some(3), UploadKind::Partial))
        .await
        .unwrap();
    write_all(&u, p.id, b"abc").await;
    let f = u
        .create_final(vec![p.id], Metadata::default())
        .await
        .unwrap();
    assert!(f.is_complete());
    // The part's finished-upload expiry is due well before the final's would be read.
    u.meta
        .update(
            p.id,
            Box::new(|i| {
                i.expires_ms = Some(1);
                Ok(())
            }),
        )
        .await
        .unwrap();
    let gone = u.sweep_expired(now_ms()).await.unwrap();
    assert_eq!(gone, vec![p.id]);
    let f = u.get(f.id).await.unwrap().unwrap();
    assert_eq!(read_all(&u, &f).await, b"abc", "final still readable");
}

#[tokio::test]
async fn unfinished_final_and_parts_expire_together() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let p = u
        .create(new_upload(Some(3), UploadKind::Partial))
        .await
        .unwrap();
    let q = u
        .create(new_upload(Some(3), UploadKind::Partial))
        .await
        .unwrap();
    write_all(&u, p.id, b"abc").await;
    let f = u
        .create_final(vec![p.id, q.id], Metadata::default())
        .await
        .unwrap();
    // q never finishes and expires; p is finished and does not.
    let later = now_ms() + 8 * 24 * 3600 * 1000;
    let gone = u.sweep_expired(later).await.unwrap();
    assert!(gone.contains(&q.id) && gone.contains(&f.id), "{gone:?}");
    assert!(u.get(q.id).await.unwrap().is_none());
    assert!(
        u.get(f.id).await.unwrap().is_none(),
        "the unfinished final expired too"
    );
    assert!(
        u.meta.get(q.id).await.unwrap().is_none(),
        "no final holds q any more"
    );
    assert!(u.get(p.id).await.unwrap().is_some(), "finished part kept");
}

#[tokio::test(start_paused = true)]
async fn creations_past_the_unfinished_limit_are_refused_until_some_finish() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path()).with_max_unfinished(Some(2));
    let a = regular(&u, Some(2)).await;
    regular(&u, None).await;
    assert!(matches!(
        u.create(new_upload(Some(1), UploadKind::Regular)).await,
        Err(StoreError::TooManyUploads { max: 2 })
    ));
    // A final counts too.
    assert!(matches!(
        u.create_final(vec![a.id], Metadata::default()).await,
        Err(StoreError::TooManyUploads { max: 2 })
    ));
    write_all(&u, a.id, b"ok").await;
    // Counted again only after a while: a flood at the limit costs one scan per interval.
    tokio::time::advance(policy::RECOUNT_EVERY).await;
    regular(&u, Some(1)).await;
    assert!(matches!(
        u.create(new_upload(Some(1), UploadKind::Regular)).await,
        Err(StoreError::TooManyUploads { max: 2 })
    ));
}

#[tokio::test]
async fn an_unfinished_count_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let u = open(dir.path());
        regular(&u, Some(5)).await;
        regular(&u, None).await;
    }
    let u = open(dir.path()).with_max_unfinished(Some(2));
    assert!(
        matches!(
            u.create(new_upload(Some(1), UploadKind::Regular)).await,
            Err(StoreError::TooManyUploads { max: 2 })
        ),
        "the first creation after opening counts what is stored"
    );
}

#[tokio::test]
async fn the_crc_survives_a_restart_in_the_record_and_nothing_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(10, 3);
    let half = data.len() / 2;
    let id = {
        let u = open(dir.path());
        let info = regular(&u, Some(data.len() as u64)).await;
        let done = write_all(&u, info.id, &data[..half]).await;
        assert_eq!(done.running_crc, Some(crc64nvme_of(&data[..half])));
        assert_eq!(
            u.running.lock().unwrap().len(),
            0,
            "a large upload keeps no hash state in memory between requests"
        );
        info.id
    };
    // Change a committed byte behind the server's back: a read-back would see it.
    let file = LocalDataStore::open(dir.path()).unwrap().path_of(id);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .write_at(&[data[0] ^ 1], 0)
        .unwrap();
    let u = open(dir.path());
    let done = write_all(&u, id, &data[half..]).await;
    assert!(done.is_complete());
    assert_eq!(done.digests.crc64nvme(), Some(crc64nvme_of(&data)));
    assert_eq!(
        done.running_crc, None,
        "finished: the CRC is in the digests"
    );
}

#[tokio::test]
async fn hash_states_kept_between_requests_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    // Small uploads run every digest; abandoned half-way, each would keep its states.
    for _ in 0..policy::RUNNING_CACHE + 50 {
        let info = regular(&u, Some(10)).await;
        write_all(&u, info.id, b"abcde").await;
    }
    assert_eq!(u.running.lock().unwrap().len(), policy::RUNNING_CACHE);
}

/// A metadata store that counts how the sweeper reads it.
struct Counting {
    inner: crate::redb_meta::RedbMetaStore,
    pages: std::sync::Mutex<Vec<usize>>,
    lists: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl MetaStore for Counting {
    async fn insert(&self, info: &UploadInfo) -> Result<()> {
        self.inner.insert(info).await
    }
    async fn get(&self, id: UploadId) -> Result<Option<UploadInfo>> {
        self.inner.get(id).await
    }
    async fn update(&self, id: UploadId, update: crate::meta::Update) -> Result<UploadInfo> {
        self.inner.update(id, update).await
    }
    async fn remove(&self, id: UploadId) -> Result<()> {
        self.inner.remove(id).await
    }
    async fn transact(
        &self,
        ids: Vec<UploadId>,
        tx: crate::meta::Transaction,
    ) -> Result<crate::meta::Records> {
        self.inner.transact(ids, tx).await
    }
    async fn expired(
        &self,
        now: u64,
        after: Option<UploadId>,
        limit: usize,
    ) -> Result<Vec<UploadInfo>> {
        let page = self.inner.expired(now, after, limit).await?;
        self.pages.lock().unwrap().push(page.len());
        Ok(page)
    }
    async fn count_unfinished(&self) -> Result<u64> {
        self.inner.count_unfinished().await
    }
    async fn list(&self) -> Result<Vec<UploadInfo>> {
        self.lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.list().await
    }
}

#[tokio::test]
async fn the_sweeper_reads_records_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(Counting {
        inner: crate::redb_meta::RedbMetaStore::open(&dir.path().join("ferry.redb")).unwrap(),
        pages: Default::default(),
        lists: Default::default(),
    });
    let u = Uploads::new(
        Arc::new(LocalDataStore::open(dir.path()).unwrap()),
        meta.clone(),
        Arc::new(crate::lock::LocalLocker::new(Duration::from_secs(1))),
        SyncPolicy::None,
    )
    .with_expiry(ExpiryPolicy {
        unfinished: Some(Duration::from_secs(60)),
        finished: None,
    });
    for _ in 0..600 {
        regular(&u, Some(10)).await;
    }
    let gone = u.sweep_expired(now_ms() + 61_000).await.unwrap();
    assert_eq!(gone.len(), 600);
    let pages = meta.pages.lock().unwrap().clone();
    assert!(
        pages.iter().all(|&n| n <= 256) && pages.len() >= 3,
        "memory follows the page, not the records: {pages:?}"
    );
    assert_eq!(
        meta.lists.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "never every record at once"
    );
}
