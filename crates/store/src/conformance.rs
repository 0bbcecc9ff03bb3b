//! The storage contract as executable checks. Every [`DataStore`] and [`MetaStore`]
//! implementation calls these from its tests (enable the `conformance` feature from other
//! crates). Each check panics with a message naming the broken rule.

use crate::data::{DataStore, Fence, WriteMode};
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

async fn read_all(store: &dyn DataStore, id: UploadId, start: u64, end: u64) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut s = store.read(id, start, end).await.expect("read");
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("read chunk"));
    }
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Runs every data-store check.
pub async fn data_store(store: &dyn DataStore) {
    // Write, sync, read back; pipelined writes land in order.
    let id = fresh_id(1);
    store.create(id, true).await.expect("create");
    let mut w = store
        .open_writer(id, WriteMode::Append { offset: 0 }, Fence::Epoch(1))
        .await
        .expect("open writer");
    let a = pattern(300_000, 1);
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
    w.sync().await.expect("sync");
    let mut both = a.clone();
    both.extend_from_slice(&b);
    assert_eq!(
        read_all(store, id, 0, both.len() as u64).await,
        both,
        "read back"
    );
    assert_eq!(
        read_all(store, id, 1000, 1010).await,
        both[1000..1010],
        "ranged read"
    );
    assert!(read_all(store, id, 5, 5).await.is_empty(), "empty range");

    // Append mode cuts away bytes past the committed offset.
    let mut w = store
        .open_writer(id, WriteMode::Append { offset: 50 }, Fence::Epoch(1))
        .await
        .expect("reopen at 50");
    w.write(vec![9u8; 10]).await.expect("write");
    w.sync().await.expect("sync");
    let mut expect = both[..50].to_vec();
    expect.extend_from_slice(&[9u8; 10]);
    assert_eq!(
        read_all(store, id, 0, 60).await,
        expect,
        "append continues at offset"
    );
    assert!(
        store.read(id, 0, 61).await.is_err() || {
            // A store may fail lazily, on the stream; either way no bytes past 60 exist.
            use futures_util::StreamExt;
            let mut s = store.read(id, 0, 61).await.expect("stream");
            let mut ok = true;
            while let Some(c) = s.next().await {
                if c.is_err() {
                    ok = false;
                }
            }
            !ok
        },
        "bytes past the committed offset were cut away"
    );

    // Append from an offset beyond the stored bytes is inconsistent, not silently zero-filled.
    match store
        .open_writer(id, WriteMode::Append { offset: 1_000_000 }, Fence::Epoch(1))
        .await
    {
        Err(StoreError::Inconsistent(_)) => {}
        Err(e) => panic!("append past the end: want Inconsistent, got {e}"),
        Ok(_) => panic!("append past the end must fail"),
    }

    // Random access, if offered: out-of-order writes land where they belong.
    if store.capabilities().random_access {
        let id = fresh_id(2);
        store.create(id, false).await.expect("create");
        let data = pattern(4096, 7);
        let mut w = store
            .open_writer(id, WriteMode::At { offset: 2048 }, Fence::Claim)
            .await
            .expect("open at");
        w.write(data[2048..].to_vec()).await.expect("write tail");
        let mut w = store
            .open_writer(id, WriteMode::At { offset: 0 }, Fence::Claim)
            .await
            .expect("open at 0");
        w.write(data[..2048].to_vec()).await.expect("write head");
        w.sync().await.expect("sync");
        assert_eq!(read_all(store, id, 0, 4096).await, data, "random access");
        store.delete(id).await.expect("delete");
    }

    fencing(store).await;

    // Double create, missing objects, idempotent delete.
    assert!(
        matches!(
            store.create(id, false).await,
            Err(StoreError::AlreadyExists(_))
        ),
        "double create must fail with AlreadyExists"
    );
    store.delete(id).await.expect("delete");
    store
        .delete(id)
        .await
        .expect("delete of a missing object is fine");
    assert!(
        matches!(
            store
                .open_writer(id, WriteMode::Append { offset: 0 }, Fence::Epoch(1))
                .await,
            Err(StoreError::NotFound(_))
        ),
        "writer on a deleted object: NotFound"
    );
    assert!(
        matches!(store.read(id, 0, 1).await, Err(StoreError::NotFound(_))),
        "read of a deleted object: NotFound"
    );
}

/// Writes carry their lease's epoch: once a writer of a later epoch has opened the upload, an
/// earlier one can neither write nor open again, so a holder that lost its upload cannot change
/// what its successor writes and commits.
async fn fencing(store: &dyn DataStore) {
    let id = fresh_id(3);
    store.create(id, true).await.expect("create");
    let first = pattern(10_000, 3);
    let mut old = store
        .open_writer(id, WriteMode::Append { offset: 0 }, Fence::Epoch(5))
        .await
        .expect("open at epoch 5");
    old.write(first.clone()).await.expect("write at epoch 5");
    old.sync().await.expect("sync");
    // The successor continues from what was committed (all of it, here).
    let mut new = store
        .open_writer(
            id,
            WriteMode::Append {
                offset: first.len() as u64,
            },
            Fence::Epoch(6),
        )
        .await
        .expect("open at epoch 6");
    let second = pattern(5_000, 4);
    new.write(second.clone()).await.expect("write at epoch 6");
    new.sync().await.expect("sync");
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
        .open_writer(id, WriteMode::Append { offset: 0 }, Fence::Epoch(5))
        .await
    {
        Err(StoreError::Fenced { .. }) => {}
        Err(e) => panic!("opening at a superseded epoch: want Fenced, got {e}"),
        Ok(_) => panic!("opening at a superseded epoch must fail (it would cut the data)"),
    }
    let mut both = first;
    both.extend_from_slice(&second);
    assert_eq!(
        read_all(store, id, 0, both.len() as u64).await,
        both,
        "the successor's bytes are intact"
    );
    // The successor writes on.
    new.write(pattern(100, 5))
        .await
        .expect("write on at epoch 6");
    // Once every writer is gone, the superseded holder (its lease lapsed while it stalled)
    // still cannot come back and cut what its successor committed.
    drop((old, new));
    match store
        .open_writer(id, WriteMode::Append { offset: 0 }, Fence::Epoch(5))
        .await
    {
        Err(StoreError::Fenced { .. }) => {}
        Err(e) => panic!("reopening at a superseded epoch later: want Fenced, got {e}"),
        Ok(_) => panic!("reopening at a superseded epoch later must fail"),
    }
    store.delete(id).await.expect("delete");
}

fn sample(id: UploadId) -> UploadInfo {
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
    }
}

/// Runs every metadata-store check.
pub async fn meta_store(store: Arc<dyn MetaStore>) {
    count_unfinished(&store).await;
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
