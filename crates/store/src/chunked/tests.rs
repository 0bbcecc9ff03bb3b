//! Chunk sessions: byte-exactness, length rules, bounds, the sweeper.

use super::*;
use crate::engine::{ExpiryPolicy, SyncPolicy};
use crate::test_support::{read_all, shm_tempdir};
use std::path::Path;
use std::time::Duration;

fn open(dir: &Path) -> Uploads {
    Uploads::open_local(dir, SyncPolicy::Always).unwrap()
}

async fn put(
    u: &Uploads,
    id: UploadId,
    at: u64,
    bytes: &[u8],
    total: Option<u64>,
) -> Result<UploadInfo> {
    let mut w = u
        .write_range(id, at, at + bytes.len() as u64, total)
        .await?;
    for piece in bytes.chunks(7_777) {
        w.push(piece).await?;
    }
    w.commit().await
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 / 7) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_overlapping_and_concurrent_chunks_complete_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let u = Arc::new(open(dir.path()));
    let d = data(2_500_000);
    let len = d.len() as u64;
    let s = u
        .create_session(Some(len), Metadata::default())
        .await
        .unwrap();
    assert_eq!(s.received, Some(RangeSet::new()));
    // Last chunk first, then an overlapping one.
    let i = put(&u, s.id, 2_000_000, &d[2_000_000..], Some(len))
        .await
        .unwrap();
    assert_eq!(i.offset, 0);
    assert_eq!(i.received.as_ref().unwrap().ranges(), &[(2_000_000, len)]);
    put(&u, s.id, 1_500_000, &d[1_500_000..2_200_000], Some(len))
        .await
        .unwrap();
    // The rest concurrently, in 100 kB pieces, in reverse.
    let mut tasks = Vec::new();
    for start in (0..15u64).rev().map(|i| i * 100_000) {
        let (u, d) = (u.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            let e = (start + 100_000) as usize;
            put(&u, s.id, start, &d[start as usize..e], Some(len))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let done = u.get(s.id).await.unwrap().unwrap();
    assert!(done.is_complete(), "{:?}", done.received);
    assert_eq!(read_all(&u, &done).await, d);
    let sha256 = ferry_proto::checksum::ChecksumAlgorithm::Sha256;
    let want = ferry_proto::checksum::digest(sha256, &d);
    assert_eq!(
        done.digests.get(sha256),
        Some(&want[..]),
        "digest by reading back"
    );
    // A retry after completion changes nothing.
    let again = put(&u, s.id, 0, &vec![0xff; 1000], Some(len))
        .await
        .unwrap();
    assert_eq!(again.digests.get(sha256), Some(&want[..]));
    assert_eq!(
        read_all(&u, &again).await,
        d,
        "recorded bytes are never rewritten"
    );
}

#[tokio::test]
async fn dropped_or_short_chunks_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let s = u
        .create_session(Some(100), Metadata::default())
        .await
        .unwrap();
    let mut w = u.write_range(s.id, 0, 50, Some(100)).await.unwrap();
    w.push(&[1; 30]).await.unwrap();
    assert!(matches!(
        w.push(&[1; 21]).await,
        Err(StoreError::ExceedsLength { length: 50 })
    ));
    assert!(w.commit().await.is_err(), "short chunk");
    {
        let mut w = u.write_range(s.id, 50, 100, None).await.unwrap();
        w.push(&[2; 50]).await.unwrap();
        // dropped without commit, its write in flight
    }
    assert!(
        u.chunk_writes_active(s.id),
        "claims are held until the write in flight lands"
    );
    for _ in 0..1000 {
        if !u.chunk_writes_active(s.id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!u.chunk_writes_active(s.id));
    let i = u.get(s.id).await.unwrap().unwrap();
    assert_eq!(i.received, Some(RangeSet::new()));
}

#[tokio::test]
async fn length_rules_hold_at_start_and_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let s = u.create_session(None, Metadata::default()).await.unwrap();
    // Unknown length: a `*` total, then the first numeric total fixes it.
    put(&u, s.id, 10, &[1; 10], None).await.unwrap();
    assert!(matches!(
        u.write_range(s.id, 0, 5, Some(15)).await,
        Err(StoreError::LengthMismatch { .. })
    ));
    // Two writers with different totals: whichever commits second loses.
    let mut a = u.write_range(s.id, 0, 5, Some(30)).await.unwrap();
    let mut b = u.write_range(s.id, 5, 10, Some(40)).await.unwrap();
    a.push(&[3; 5]).await.unwrap();
    b.push(&[4; 5]).await.unwrap();
    assert_eq!(a.commit().await.unwrap().length, Some(30));
    assert!(matches!(
        b.commit().await,
        Err(StoreError::LengthMismatch {
            length: 30,
            declared: 40
        })
    ));
    assert!(matches!(
        u.write_range(s.id, 25, 31, None).await,
        Err(StoreError::OutOfRange { length: 30 })
    ));
    let i = u.get(s.id).await.unwrap().unwrap();
    assert_eq!(i.received.unwrap().ranges(), &[(0, 5), (10, 20)]);
    // An empty session completes when its length is declared.
    let e = u.create_session(None, Metadata::default()).await.unwrap();
    let e = u.declare_session_length(e.id, 0).await.unwrap();
    assert!(e.is_complete());
    assert!(
        e.digests
            .has(ferry_proto::checksum::ChecksumAlgorithm::Sha256)
    );
}

#[tokio::test]
async fn fragments_are_bounded_and_tus_appends_refused() {
    let dir = tempfile::tempdir().unwrap();
    let u = open(dir.path());
    let n = (MAX_SESSION_RANGES as u64 + 1) * 2;
    let s = u
        .create_session(Some(n), Metadata::default())
        .await
        .unwrap();
    for i in 0..MAX_SESSION_RANGES as u64 {
        u.record_range(
            s.id,
            (i * 2, i * 2 + 1),
            vec![(i * 2, i * 2 + 1)],
            vec![],
            Some(n),
        )
        .await
        .unwrap();
    }
    assert!(matches!(
        put(&u, s.id, n - 1, &[0], Some(n)).await,
        Err(StoreError::TooFragmented { .. })
    ));
    // Filling a gap is still fine.
    put(&u, s.id, 1, &[0], Some(n)).await.unwrap();
    let lease = u.lease(s.id).await.unwrap();
    assert!(matches!(
        u.append(&lease, None).await,
        Err(StoreError::WrongProtocol(_))
    ));
}

#[tokio::test]
async fn sweeper_skips_sessions_being_written_and_received_ranges_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let u = open(dir.path()).with_expiry(ExpiryPolicy {
            unfinished: Some(Duration::from_secs(60)),
            finished: None,
        });
        let s = u
            .create_session(Some(100), Metadata::default())
            .await
            .unwrap();
        id = s.id;
        put(&u, id, 40, &[9; 20], Some(100)).await.unwrap();
        let later = now_ms() + 61_000;
        let w = u.write_range(id, 0, 10, Some(100)).await.unwrap();
        assert!(u.sweep_expired(later).await.unwrap().is_empty());
        drop(w);
    }
    let u = open(dir.path());
    let i = u.get(id).await.unwrap().unwrap();
    assert_eq!(i.received.unwrap().ranges(), &[(40, 60)]);
    assert_eq!(
        u.sweep_expired(now_ms() + 8 * 24 * 3600 * 1000)
            .await
            .unwrap(),
        vec![id]
    );
}

/// A temporary directory in memory when the system has one (the race test makes hundreds of
/// sessions).
/// xorshift64: timings that differ from one iteration to the next, reproducibly.
fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// Writes all of `[0, data.len())` in pieces of `piece` bytes, pausing `pause` µs (a yield when
/// 0) between pieces; reads the session back at once if this commit completed it.
async fn slow_put(
    u: &Uploads,
    id: UploadId,
    data: &[u8],
    piece: usize,
    pause: u64,
    started: Option<tokio::sync::oneshot::Sender<()>>,
) -> (Result<UploadInfo>, Option<Vec<u8>>) {
    let len = data.len() as u64;
    let mut w = match u.write_range(id, 0, len, Some(len)).await {
        Ok(w) => w,
        Err(e) => return (Err(e), None),
    };
    let mut started = started;
    for p in data.chunks(piece) {
        if let Err(e) = w.push(p).await {
            return (Err(e), None);
        }
        if let Some(tx) = started.take() {
            let _ = tx.send(());
        }
        if pause == 0 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_micros(pause)).await;
        }
    }
    let info = w.commit().await;
    let read = match &info {
        Ok(i) if i.is_complete() => Some(read_all(u, i).await),
        _ => None,
    };
    (info, read)
}

/// Issue 15: a finished session is immutable. A slow writer, a fast writer of the same bytes
/// (other values) and the completion race; once complete, the bytes read back are the
/// recorded writer's, never change, and match the recorded digest.
/// - even iterations: the fast writer holds every byte before the slow one starts, so every
///   byte must be the fast writer's;
/// - odd iterations: the slow writer holds its first piece before the fast one starts, so
///   the bytes are the slow writer's up to some point and the fast one's after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_session_never_changes_under_slow_and_racing_writers() {
    const N: usize = 8 * 1024;
    const ITERATIONS: u64 = 128;
    let dir = shm_tempdir("ferry-chunked-");
    let u = Arc::new(open(dir.path()));
    let fast = Arc::new(data(N));
    let slow: Arc<Vec<u8>> = Arc::new(fast.iter().map(|b| !b).collect());
    let sha256 = ferry_proto::checksum::ChecksumAlgorithm::Sha256;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..ITERATIONS {
        let id = u
            .create_session(Some(N as u64), Metadata::default())
            .await
            .unwrap()
            .id;
        let piece = 512 + (next(&mut rng) % 2048) as usize;
        let pause = [0, 0, 0, 200][(next(&mut rng) % 4) as usize];
        let fast_pause = next(&mut rng) % 4;
        let slow_first = i % 2 == 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The fast writer: every byte pushed at once (claimed, under the rule), committed later.
        let fast_write = || async {
            let mut w = u
                .write_range(id, 0, N as u64, Some(N as u64))
                .await
                .unwrap();
            w.push(&fast).await.unwrap();
            w
        };
        let mut f = None;
        if !slow_first {
            f = Some(fast_write().await);
        }
        let slow_task = tokio::spawn({
            let (u, slow) = (u.clone(), slow.clone());
            async move { slow_put(&u, id, &slow, piece, pause, Some(tx)).await }
        });
        if slow_first {
            rx.await.unwrap();
            f = Some(fast_write().await);
        }
        for _ in 0..fast_pause {
            tokio::task::yield_now().await;
        }
        let fast_info = f.unwrap().commit().await.unwrap();
        let fast_read = if fast_info.is_complete() {
            Some(read_all(&u, &fast_info).await)
        } else {
            None
        };
        let (slow_info, slow_read) = slow_task.await.unwrap();
        let slow_info = slow_info.unwrap();
        let info = u.get(id).await.unwrap().unwrap();
        assert!(info.is_complete(), "iteration {i}: {:?}", info.received);
        let bytes = read_all(&u, &info).await;
        // Read right after the completing commit: the same bytes.
        let at_completion = fast_read.or(slow_read);
        assert_eq!(
            at_completion.as_deref(),
            Some(&bytes[..]),
            "iteration {i}: the bytes changed after completion"
        );
        assert!(
            fast_info.is_complete() || slow_info.is_complete(),
            "iteration {i}"
        );
        let k = bytes
            .iter()
            .zip(slow.iter())
            .take_while(|(a, b)| a == b)
            .count();
        if slow_first {
            assert!(
                k >= piece.min(N),
                "iteration {i}: slow prefix {k} < {piece}"
            );
        } else {
            assert_eq!(
                k, 0,
                "iteration {i}: the slow writer wrote a reserved range"
            );
        }
        assert!(
            bytes[..k] == slow[..k] && bytes[k..] == fast[k..],
            "iteration {i}: bytes are neither writer's (slow prefix {k})"
        );
        let want = ferry_proto::checksum::digest(sha256, &bytes);
        assert_eq!(
            info.digests.get(sha256),
            Some(&want[..]),
            "iteration {i}: the recorded digest is not the bytes'"
        );
    }
    let report = u.fsck(false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
