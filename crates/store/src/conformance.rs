//! The storage contract as executable checks. Every [`DataStore`] and [`MetaStore`]
//! implementation calls these from its tests (enable the `conformance` feature from other
//! crates). Each check panics with a message naming the broken rule.

use crate::data::{DataStore, Fence, Locator, WriteMode};
use crate::error::StoreError;
use crate::meta::MetaStore;
use crate::model::{Protocol, RangeSet, UploadInfo, UploadKind};
use ferry_proto::checksum::ChecksumAlgorithm;
use ferry_proto::{Metadata, UploadId};
use std::sync::Arc;

fn fresh_id(tag: u8) -> UploadId {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("random");
    b[0] = tag;
    UploadId::from_bytes(b)
}

async fn read_all(
    store: &dyn DataStore,
    id: UploadId,
    at: &Locator,
    start: u64,
    end: u64,
) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut s = store.read(id, at, start, end).await.expect("read");
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("read chunk"));
    }
    out
}

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn joined(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Runs every data-store check: the rules of docs/architecture.md ("The data-store
/// contract").
pub async fn data_store(store: &dyn DataStore) {
    let (id, at) = appends(store).await;
    fencing(store).await;
    if store.capabilities().random_access {
        random_access(store).await;
    }

    // Double create, missing objects, idempotent delete.
    assert!(
        matches!(
            store.create(id, false, None).await,
            Err(StoreError::AlreadyExists(_))
        ),
        "double create must fail with AlreadyExists"
    );
    store.delete(id, &at).await.expect("delete");
    store
        .delete(id, &at)
        .await
        .expect("delete of a missing object is fine");
    assert!(
        matches!(
            store
                .open_writer(id, &at, WriteMode::Append { offset: 0 }, Fence::Epoch(9))
                .await,
            Err(StoreError::NotFound(_))
        ),
        "writer on a deleted object: NotFound"
    );
    assert!(
        matches!(
            store.read(id, &at, 0, 1).await,
            Err(StoreError::NotFound(_))
        ),
        "read of a deleted object: NotFound"
    );
}

/// Appends, as the engine makes them: each checkpoint's locator is what gets committed with the
/// offset, writers continue from a committed (offset, locator) alone, bytes past the committed
/// offset are never read, and the finish step can run again. Returns the finished object.
async fn appends(store: &dyn DataStore) -> (UploadId, Locator) {
    let id = fresh_id(1);
    let created = store.create(id, true, Some(1 << 20)).await.expect("create");
    assert!(!created.is_none(), "create returns the object's locator");
    let mut w = store
        .open_writer(
            id,
            &created,
            WriteMode::Append { offset: 0 },
            Fence::Epoch(1),
        )
        .await
        .expect("open writer");
    // Larger than a part of the S3 store (8 MiB), so that a part is cut at once, with the rest
    // staged at the checkpoint.
    let a = pattern(8 * MIB + 300_000, 1);
    let b = pattern(123_457, 2);
    let pa = w.write(a.clone());
    let pb = w.write(b.clone());
    assert_eq!(
        w.position(),
        (a.len() + b.len()) as u64,
        "position advances at write()"
    );
    assert_eq!(pa.await.expect("write a"), a, "buffer handed back");
    assert_eq!(pb.await.expect("write b"), b, "buffer handed back");
    let at_ab = w.checkpoint(true).await.expect("checkpoint");
    let ab = joined(&[&a, &b]);
    let end = ab.len() as u64;

    // Bytes written (even checkpointed) but never committed are past the committed offset:
    // the next writer continues from the committed offset and locator alone, and reads of
    // what is committed never see them.
    let stray = pattern(70_000, 3);
    w.write(stray).await.expect("write never committed");
    w.checkpoint(true)
        .await
        .expect("checkpoint never committed");
    drop(w);
    let mut w = store
        .open_writer(
            id,
            &at_ab,
            WriteMode::Append { offset: end },
            Fence::Epoch(2),
        )
        .await
        .expect("reopen at the committed offset");
    // In pieces of the engine's buffer size, as appends come.
    let c = pattern(8 * MIB + 40_000, 4);
    for piece in c.chunks(512 * 1024) {
        w.write(piece.to_vec()).await.expect("write c");
    }
    let at_abc = w.checkpoint(true).await.expect("checkpoint");
    drop(w);
    let abc = joined(&[&ab, &c]);
    let len = abc.len() as u64;

    // An offset beyond what the locator holds is inconsistent, not silently zero-filled.
    match store
        .open_writer(
            id,
            &at_abc,
            WriteMode::Append {
                offset: len + 1_000_000,
            },
            Fence::Epoch(3),
        )
        .await
    {
        Err(StoreError::Inconsistent(_)) => {}
        Err(e) => panic!("append past the end: want Inconsistent, got {e}"),
        Ok(_) => panic!("append past the end must fail"),
    }

    // Finish: the whole object reads back (reads are of finished objects: an object store's
    // parts cannot be read before), and ranges of it; running it again (a crash came before
    // its result was recorded) and on its own result both work.
    let finished = store.finish(id, &at_abc, len).await.expect("finish");
    assert_eq!(
        read_all(store, id, &finished, 0, len).await,
        abc,
        "an append continues at the committed offset; bytes past it are never read"
    );
    for (s, e) in [(1000, 1010), (end - 7, end + 9), (len - 3, len), (5, 5)] {
        assert_eq!(
            read_all(store, id, &finished, s, e).await,
            abc[s as usize..e as usize],
            "ranged read {s}..{e}"
        );
    }
    let again = store.finish(id, &at_abc, len).await.expect("finish again");
    assert_eq!(
        read_all(store, id, &again, 0, len).await,
        abc,
        "finished twice"
    );
    let twice = store
        .finish(id, &finished, len)
        .await
        .expect("finish a finished object");
    assert_eq!(
        read_all(store, id, &twice, 0, len).await,
        abc,
        "finish on its result"
    );
    // An empty object finishes too (an empty upload is complete at creation).
    let empty = fresh_id(4);
    let at = store
        .create(empty, true, Some(0))
        .await
        .expect("create empty");
    let at = store.finish(empty, &at, 0).await.expect("finish empty");
    assert!(
        read_all(store, empty, &at, 0, 0).await.is_empty(),
        "empty object"
    );
    store.delete(empty, &at).await.expect("delete empty");
    (id, twice)
}

/// Random-access writers (chunk sessions): each checkpoint covers its own writes, merged into
/// the recorded locator in any order.
async fn random_access(store: &dyn DataStore) {
    let id = fresh_id(2);
    let created = store.create(id, false, None).await.expect("create");
    let data = pattern(4096, 7);
    let mut tail = store
        .open_writer(id, &created, WriteMode::At { offset: 2048 }, Fence::Claim)
        .await
        .expect("open at");
    let mut head = store
        .open_writer(id, &created, WriteMode::At { offset: 0 }, Fence::Claim)
        .await
        .expect("open at 0");
    tail.write(data[2048..].to_vec()).await.expect("write tail");
    head.write(data[..2048].to_vec()).await.expect("write head");
    // The head commits first, then the tail: each merges into what is recorded by then.
    let at_head = head.checkpoint(true).await.expect("checkpoint head");
    let at_tail = tail.checkpoint(true).await.expect("checkpoint tail");
    let recorded = store
        .merge_locators(&created, &at_head)
        .expect("merge head");
    let recorded = store
        .merge_locators(&recorded, &at_tail)
        .expect("merge tail");
    assert_eq!(
        store
            .merge_locators(&recorded, &at_tail)
            .expect("merge again"),
        recorded,
        "merging a checkpoint again changes nothing (a metadata store may rerun an update)"
    );
    // Committed the other way round: the same locator (reads wait for the finish).
    let other = store
        .merge_locators(&created, &at_tail)
        .expect("merge tail first");
    let other = store
        .merge_locators(&other, &at_head)
        .expect("merge head second");
    assert_eq!(other, recorded, "checkpoints merge in any order");
    let finished = store.finish(id, &recorded, 4096).await.expect("finish");
    assert_eq!(
        read_all(store, id, &finished, 0, 4096).await,
        data,
        "finished"
    );
    store.delete(id, &finished).await.expect("delete");
}

/// Writes carry their lease's epoch: once a writer of a later epoch has opened the upload, an
/// earlier one can neither write nor open again, so a holder that lost its upload cannot change
/// what its successor writes and commits.
async fn fencing(store: &dyn DataStore) {
    let id = fresh_id(3);
    let created = store.create(id, true, Some(1 << 20)).await.expect("create");
    let first = pattern(10_000, 3);
    let mut old = store
        .open_writer(
            id,
            &created,
            WriteMode::Append { offset: 0 },
            Fence::Epoch(5),
        )
        .await
        .expect("open at epoch 5");
    old.write(first.clone()).await.expect("write at epoch 5");
    let committed = old.checkpoint(true).await.expect("checkpoint");
    // The successor continues from what was committed (all of it, here).
    let mut new = store
        .open_writer(
            id,
            &committed,
            WriteMode::Append {
                offset: first.len() as u64,
            },
            Fence::Epoch(6),
        )
        .await
        .expect("open at epoch 6");
    let second = pattern(5_000, 4);
    new.write(second.clone()).await.expect("write at epoch 6");
    new.checkpoint(true).await.expect("checkpoint");
    // The superseded writer is still positioned at 10 000: its write would land on the
    // successor's bytes.
    match old.write(pattern(5_000, 9)).await {
        Err(StoreError::Fenced {
            epoch: 5,
            current: 6,
            ..
        }) => {}
        Err(e) => panic!("a write of a superseded epoch: want Fenced, got {e}"),
        Ok(_) => panic!("a write of a superseded epoch must fail"),
    }
    match store
        .open_writer(
            id,
            &created,
            WriteMode::Append { offset: 0 },
            Fence::Epoch(5),
        )
        .await
    {
        Err(StoreError::Fenced { .. }) => {}
        Err(e) => panic!("opening at a superseded epoch: want Fenced, got {e}"),
        Ok(_) => panic!("opening at a superseded epoch must fail (it would cut the data)"),
    }
    // The successor writes on, and finishes.
    let third = pattern(100, 5);
    new.write(third.clone()).await.expect("write on at epoch 6");
    let at = new.checkpoint(true).await.expect("checkpoint");
    let all = joined(&[&first, &second, &third]);
    let at = store
        .finish(id, &at, all.len() as u64)
        .await
        .expect("finish");
    assert_eq!(
        read_all(store, id, &at, 0, all.len() as u64).await,
        all,
        "the successor's bytes are intact"
    );
    // Once every writer is gone, the superseded holder (its lease lapsed while it stalled)
    // still cannot come back and cut what its successor committed.
    drop((old, new));
    match store
        .open_writer(
            id,
            &created,
            WriteMode::Append { offset: 0 },
            Fence::Epoch(5),
        )
        .await
    {
        Err(StoreError::Fenced { .. }) => {}
        Err(e) => panic!("reopening at a superseded epoch later: want Fenced, got {e}"),
        Ok(_) => panic!("reopening at a superseded epoch later must fail"),
    }
    store.delete(id, &at).await.expect("delete");
}

/// A record with every field set (none at its default).
pub(crate) fn sample(id: UploadId) -> UploadInfo {
    let mut metadata = Metadata::default();
    metadata
        .insert(
            "filename".into(),
            Some("ré sumé,\"x\".bin".as_bytes().to_vec()),
        )
        .expect("key");
    metadata.insert("flag".into(), None).expect("key");
    metadata
        .insert("bin".into(), Some(vec![0, 255, 10, 13]))
        .expect("key");
    let mut received = RangeSet::new();
    received.insert(0, 10);
    received.insert(20, 30);
    UploadInfo {
        id,
        length: Some(1 << 40),
        offset: 12345,
        metadata,
        protocol: Protocol::Chunks,
        kind: UploadKind::Final {
            parts: vec![fresh_id(9), fresh_id(8)],
        },
        received: Some(received),
        created_ms: 1,
        updated_ms: 2,
        expires_ms: Some(3),
        digests: [
            (ChecksumAlgorithm::Sha256, vec![7u8; 32]),
            (ChecksumAlgorithm::Blake3, vec![6u8; 32]),
            (
                ChecksumAlgorithm::Crc64Nvme,
                vec![0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
            ),
        ]
        .into_iter()
        .collect(),
        finals: vec![fresh_id(7)],
        deleted: true,
        running_crc: Some(0x0123_4567_89ab_cdef),
        // A store-owned locator as an object store's would be, kept exactly.
        locator: Locator(serde_json::json!({
            "key": "uploads/ré\"x",
            "upload_id": "abc",
            "parts": [{ "n": 1, "etag": "\"e1\"", "size": 5_242_880 }],
        })),
        finish_pending: true,
    }
}

/// Runs every metadata-store check.
pub async fn meta_store(store: Arc<dyn MetaStore>) {
    count_unfinished(&store).await;
    transactions(&store).await;
    expiry(&store).await;
    let id = fresh_id(3);
    let info = sample(id);
    store.insert(&info).await.expect("insert");
    assert_eq!(
        store.get(id).await.expect("get"),
        Some(info.clone()),
        "round trip keeps every field"
    );
    assert!(
        matches!(store.insert(&info).await, Err(StoreError::AlreadyExists(_))),
        "duplicate insert: AlreadyExists"
    );

    let updated = store
        .update(
            id,
            Box::new(|i| {
                i.offset = 99;
                Ok(())
            }),
        )
        .await
        .expect("update");
    assert_eq!(updated.offset, 99, "update returns the new record");
    assert_eq!(
        store.get(id).await.unwrap().unwrap().offset,
        99,
        "update persisted"
    );

    let failed = store
        .update(
            id,
            Box::new(|i| {
                i.offset = 5;
                Err(StoreError::Conflict(i.id))
            }),
        )
        .await;
    assert!(
        matches!(failed, Err(StoreError::Conflict(_))),
        "update error passes through"
    );
    assert_eq!(
        store.get(id).await.unwrap().unwrap().offset,
        99,
        "failed update changes nothing"
    );

    let missing = fresh_id(4);
    assert!(
        matches!(
            store.update(missing, Box::new(|_| Ok(()))).await,
            Err(StoreError::NotFound(_))
        ),
        "update of a missing record: NotFound"
    );
    assert_eq!(
        store.get(missing).await.unwrap(),
        None,
        "get of a missing record: None"
    );

    // Concurrent read-modify-write updates are atomic: none is lost.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.update(
                id,
                Box::new(|i| {
                    i.offset += 1;
                    Ok(())
                }),
            )
            .await
            .expect("concurrent update")
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(
        store.get(id).await.unwrap().unwrap().offset,
        199,
        "no lost updates"
    );

    assert!(
        store.list().await.expect("list").iter().any(|i| i.id == id),
        "list includes the record"
    );
    store.remove(id).await.expect("remove");
    assert_eq!(store.get(id).await.unwrap(), None, "removed");
    store
        .remove(id)
        .await
        .expect("removing a missing record is fine");
}

/// Counting unfinished records: not deleted, and short of their length (or without one).
async fn count_unfinished(store: &Arc<dyn MetaStore>) {
    let before = store.count_unfinished().await.expect("count");
    let record = |tag: u8, length: Option<u64>, offset: u64, deleted: bool| UploadInfo {
        id: fresh_id(tag),
        length,
        offset,
        deleted,
        ..sample(fresh_id(tag))
    };
    let records = [
        record(20, Some(10), 3, false),
        record(21, None, 3, false),
        record(22, Some(10), 10, false),
        record(23, Some(10), 3, true),
    ];
    for r in &records {
        store.insert(r).await.expect("insert");
    }
    assert_eq!(
        store.count_unfinished().await.expect("count"),
        before + 2,
        "short of the length, or no length yet: unfinished"
    );
    for r in &records {
        store.remove(r.id).await.expect("remove");
    }
    assert_eq!(store.count_unfinished().await.expect("count"), before);
}

/// A plain unfinished record, expiring at `expires_ms`.
fn plain(id: UploadId, expires_ms: Option<u64>) -> UploadInfo {
    UploadInfo {
        id,
        length: Some(100),
        offset: 0,
        metadata: Metadata::default(),
        protocol: Protocol::Tus,
        kind: UploadKind::Partial,
        received: None,
        created_ms: 1,
        updated_ms: 1,
        expires_ms,
        digests: Default::default(),
        finals: Vec::new(),
        deleted: false,
        running_crc: Some(0),
        locator: Locator::none(),
        finish_pending: false,
    }
}

/// Transactions over several records, as concatenation makes them: a final created together
/// with its parts' back references, all or nothing; re-run under contention without losing a
/// change.
async fn transactions(store: &Arc<dyn MetaStore>) {
    let (a, b, fin) = (fresh_id(30), fresh_id(31), fresh_id(32));
    store.insert(&plain(a, None)).await.expect("insert a");
    store.insert(&plain(b, None)).await.expect("insert b");

    // A failing transaction changes nothing, whatever it did to the map first.
    let failed = store
        .transact(
            vec![a, b, fin],
            Box::new(move |r| {
                r.insert(a, None);
                if let Some(Some(i)) = r.get_mut(&b) {
                    i.offset = 50;
                }
                Err(StoreError::Conflict(a))
            }),
        )
        .await;
    assert!(
        matches!(failed, Err(StoreError::Conflict(_))),
        "transaction error passes through"
    );
    assert!(
        store.get(a).await.unwrap().is_some(),
        "failed transaction removed nothing"
    );
    assert_eq!(
        store.get(b).await.unwrap().unwrap().offset,
        0,
        "failed transaction changed nothing"
    );

    // A final and its parts' back references, together.
    let committed = store
        .transact(
            vec![a, b, fin],
            Box::new(move |r| {
                assert_eq!(r.get(&fin), Some(&None), "an absent record is seen as None");
                for p in [a, b] {
                    let Some(Some(i)) = r.get_mut(&p) else {
                        return Err(StoreError::NotFound(p));
                    };
                    i.finals.push(fin);
                }
                let mut f = plain(fin, None);
                f.kind = UploadKind::Final { parts: vec![a, b] };
                f.locator = Locator::none();
                r.insert(fin, Some(f));
                Ok(())
            }),
        )
        .await
        .expect("transact");
    assert_eq!(
        committed.get(&fin).and_then(|r| r.as_ref()).map(|i| i.id),
        Some(fin),
        "transact returns the records as committed"
    );
    for p in [a, b] {
        assert_eq!(
            store.get(p).await.unwrap().unwrap().finals,
            vec![fin],
            "part updated"
        );
    }
    assert!(
        matches!(
            store.get(fin).await.unwrap().unwrap().kind,
            UploadKind::Final { .. }
        ),
        "final inserted"
    );

    // Filing a record under another id is refused.
    let misfiled = store
        .transact(
            vec![fin],
            Box::new(move |r| {
                let mut other = plain(a, None);
                other.offset = 1;
                r.insert(fin, Some(other));
                Ok(())
            }),
        )
        .await;
    assert!(
        misfiled.is_err(),
        "a record filed under another id is refused"
    );

    // Concurrent transactions over the same records: every one applied, none lost.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.transact(
                vec![b, a],
                Box::new(move |r| {
                    for p in [a, b] {
                        if let Some(Some(i)) = r.get_mut(&p) {
                            i.offset += 1;
                        }
                    }
                    Ok(())
                }),
            )
            .await
            .expect("concurrent transact")
        }));
    }
    // And concurrent creations of one record: one inserts it, the others (re-run once it
    // exists) update it.
    let made = fresh_id(33);
    for _ in 0..20 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.transact(
                vec![made],
                Box::new(move |r| {
                    match r.get_mut(&made) {
                        Some(Some(i)) => i.offset += 1,
                        _ => {
                            let mut i = plain(made, None);
                            i.offset = 1;
                            r.insert(made, Some(i));
                        }
                    }
                    Ok(())
                }),
            )
            .await
            .expect("concurrent creation")
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    for p in [a, b] {
        assert_eq!(
            store.get(p).await.unwrap().unwrap().offset,
            40,
            "no lost transaction"
        );
    }
    assert_eq!(
        store.get(made).await.unwrap().unwrap().offset,
        20,
        "concurrent creations: one insert, the rest updates"
    );

    // Removal through a transaction.
    store
        .transact(
            vec![fin, a, b, made],
            Box::new(|r| {
                for v in r.values_mut() {
                    *v = None;
                }
                Ok(())
            }),
        )
        .await
        .expect("remove all");
    for id in [a, b, fin, made] {
        assert_eq!(store.get(id).await.unwrap(), None, "removed by transaction");
    }
}

/// The paged expiry query: records expired at `now`, not deleted, in id order, a page at a
/// time; the same caller asking again is handed the same records.
async fn expiry(store: &Arc<dyn MetaStore>) {
    // Far in the future, so no other record of the store is past it.
    let t = 4_000_000_000_000u64;
    let mut due = Vec::new();
    for n in 0..5 {
        let id = fresh_id(40 + n);
        store
            .insert(&plain(id, Some(t - 10 + u64::from(n))))
            .await
            .unwrap();
        due.push(id);
    }
    let later = fresh_id(50);
    store.insert(&plain(later, Some(t + 1000))).await.unwrap();
    let never = fresh_id(51);
    store.insert(&plain(never, None)).await.unwrap();
    let gone = fresh_id(52);
    store
        .insert(&UploadInfo {
            deleted: true,
            ..plain(gone, Some(t - 100))
        })
        .await
        .unwrap();
    due.sort();
    for _pass in 0..2 {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.expired(t, after, 2).await.expect("expired");
            assert!(page.len() <= 2, "a page holds at most the limit");
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            seen.extend(page.iter().map(|i| i.id));
        }
        let ours: Vec<_> = seen
            .iter()
            .copied()
            .filter(|id| due.contains(id) || [later, never, gone].contains(id))
            .collect();
        assert_eq!(
            ours, due,
            "expired records, each once, in id order; not the later, the never or the deleted"
        );
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "pages are in id order"
        );
    }
    for id in due.into_iter().chain([later, never, gone]) {
        store.remove(id).await.unwrap();
    }
}
