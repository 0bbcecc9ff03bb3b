//! The storage contract as executable checks. Every [`DataStore`] and [`MetaStore`]
//! implementation calls these from its tests (enable the `conformance` feature from other
//! crates). Each check panics with a message naming the broken rule.

use crate::data::{DataStore, Fence, Locator, WriteMode};
use crate::error::StoreError;
use ferry_proto::UploadId;

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

mod meta;
pub use meta::meta_store;
#[cfg(test)]
pub(crate) use meta::sample;
