//! The metadata-store contract as executable checks: every field kept, updates, transactions
//! over several records, concurrency, counting and the paged expiry query.

use super::fresh_id;
use crate::data::Locator;
use crate::error::StoreError;
use crate::meta::MetaStore;
use crate::model::{Protocol, RangeSet, UploadInfo, UploadKind};
use ferry_proto::checksum::ChecksumAlgorithm;
use ferry_proto::{Metadata, UploadId};
use std::sync::Arc;

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

    // Records the change adds without naming them: inserted, overwritten or removed as the
    // change leaves them, as if they had been named.
    let (x, y, z) = (fresh_id(34), fresh_id(35), fresh_id(36));
    store.insert(&plain(x, None)).await.unwrap();
    store.insert(&plain(z, None)).await.unwrap();
    store
        .transact(
            vec![a],
            Box::new(move |r| {
                let mut i = plain(x, None);
                i.offset = 9;
                r.insert(x, Some(i));
                r.insert(y, Some(plain(y, None)));
                r.insert(z, None);
                Ok(())
            }),
        )
        .await
        .expect("unnamed records");
    assert_eq!(
        store.get(x).await.unwrap().map(|i| i.offset),
        Some(9),
        "unnamed record overwritten"
    );
    assert!(
        store.get(y).await.unwrap().is_some(),
        "unnamed record inserted"
    );
    assert!(
        store.get(z).await.unwrap().is_none(),
        "unnamed record removed"
    );

    // Many records in one transaction (a final of many parts): all or nothing, in one commit.
    let many: Vec<UploadId> = (0..40).map(|_| fresh_id(37)).collect();
    let all = many.clone();
    store
        .transact(
            many.clone(),
            Box::new(move |r| {
                for id in &all {
                    r.insert(*id, Some(plain(*id, None)));
                }
                Ok(())
            }),
        )
        .await
        .expect("40 records");
    for id in &many {
        assert!(
            store.get(*id).await.unwrap().is_some(),
            "each of 40 records written"
        );
    }
    store
        .transact(
            many.clone(),
            Box::new(|r| {
                for v in r.values_mut() {
                    *v = None;
                }
                Ok(())
            }),
        )
        .await
        .expect("40 removed");
    for id in [x, y] {
        store.remove(id).await.unwrap();
    }

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
