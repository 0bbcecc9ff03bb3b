//! Against a real S3-compatible store: SeaweedFS, started by `scripts/test.sh`
//! (`FERRY_TEST_S3_ENDPOINT`; by hand: `scripts/seaweedfs.sh start DIR`). It is as strict as AWS
//! where peers were caught out (parts under 5 MiB refused at Complete).

use super::*;
use bytes::Bytes;
use futures_util::StreamExt;

const MIB: usize = 1 << 20;

fn endpoint() -> reqwest::Url {
    let url = std::env::var("FERRY_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "FERRY_TEST_S3_ENDPOINT is not set: run the tests with scripts/test.sh, or start \
             SeaweedFS with `scripts/seaweedfs.sh start DIR` and export the URL it prints"
        )
    });
    url.parse().expect("FERRY_TEST_S3_ENDPOINT is a URL")
}

fn config(bucket: &str, endpoint: reqwest::Url) -> S3Config {
    S3Config {
        endpoint,
        bucket: bucket.into(),
        region: "us-east-1".into(),
        path_style: true,
        key: "ferry".into(),
        secret: "ferry-secret".into(),
        token: None,
    }
}

/// A client on the tests' bucket (created by the first test that needs it) and a key prefix
/// of this test's own.
async fn fresh_bucket() -> (S3Client, String) {
    let c = S3Client::new(&config("ferry-tests", endpoint())).unwrap();
    if c.head_bucket().await.is_err() {
        // Another test process may create it at the same moment: either way it is there.
        let _ = c.create_bucket().await;
        c.head_bucket().await.expect("the tests' bucket");
    }
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    (c, format!("t-{}/", hex(&b)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

async fn read(s: crate::data::ByteStream) -> Vec<u8> {
    let mut s = s;
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.expect("read"));
    }
    out
}

#[tokio::test]
async fn multipart_with_part_numbers_apart_lists_in_pages_completes_and_reads_ranges() {
    let (c, p) = fresh_bucket().await;
    let key = &format!("{p}up/one");
    let id = c.create_multipart(key).await.expect("create multipart");
    let parts = [
        (1u16, pattern(5 * MIB, 1)),
        (3, pattern(5 * MIB, 2)),
        (7, pattern(1234, 3)),
    ];
    let mut done = Vec::new();
    for (n, body) in &parts {
        let etag = c
            .upload_part(key, &id, *n, Bytes::from(body.clone()))
            .await
            .expect("upload part");
        assert!(!etag.is_empty(), "an ETag comes back");
        done.push((*n, etag));
    }
    let listed = c.list_parts_paged(key, &id, 1).await.expect("list parts");
    let got: Vec<_> = listed
        .iter()
        .map(|p| (p.number, p.etag.clone(), p.size))
        .collect();
    let want: Vec<_> = parts
        .iter()
        .zip(&done)
        .map(|((n, body), (_, e))| (*n, e.clone(), body.len() as u64))
        .collect();
    assert_eq!(got, want, "every part, over pages of one");
    let uploads = c.list_uploads(&p).await.expect("list uploads");
    assert!(
        uploads.iter().any(|u| u.key == *key && u.upload_id == id),
        "{uploads:?}"
    );
    c.complete(key, &id, &done).await.expect("complete");
    let whole: Vec<u8> = parts.iter().flat_map(|(_, b)| b.clone()).collect();
    let (a, b) = (5 * MIB as u64 - 10, 10 * MIB as u64 + 100);
    let got = read(c.get_range(key, a, b).await.expect("get")).await;
    assert_eq!(got, whole[a as usize..b as usize], "a range across parts");
    assert!(read(c.get_range(key, 5, 5).await.unwrap()).await.is_empty());
    let uploads = c.list_uploads(&p).await.expect("list uploads");
    assert!(uploads.iter().all(|u| u.upload_id != id), "completed: gone");
    c.delete_object(key).await.expect("delete");
    c.delete_object(key).await.expect("delete again");
}

#[tokio::test]
async fn small_parts_are_refused_at_complete_and_an_abort_leaves_nothing() {
    let (c, p) = fresh_bucket().await;
    let key = &format!("{p}up/small");
    let id = c.create_multipart(key).await.unwrap();
    let mut done = Vec::new();
    for n in 1..=2u16 {
        let etag = c
            .upload_part(key, &id, n, Bytes::from(pattern(MIB, n as u8)))
            .await
            .unwrap();
        done.push((n, etag));
    }
    let err = c.complete(key, &id, &done).await.unwrap_err().to_string();
    assert!(err.contains("EntityTooSmall"), "{err}");
    c.abort(key, &id).await.expect("abort");
    c.abort(key, &id).await.expect("abort again");
    assert!(c.list_uploads(&p).await.unwrap().is_empty());
}

#[tokio::test]
async fn whole_objects_and_a_missing_bucket() {
    let (c, p) = fresh_bucket().await;
    let key = &format!("{p}stage/a");
    let body = pattern(300_000, 9);
    c.put_object(key, Bytes::from(body.clone())).await.unwrap();
    let got = read(c.get_range(key, 0, body.len() as u64).await.unwrap()).await;
    assert_eq!(got, body);
    c.delete_object(key).await.unwrap();
    assert!(c.get_range(key, 0, 1).await.is_err(), "deleted");
    let missing = S3Client::new(&config("ferry-test-none-such", endpoint())).unwrap();
    let err = missing.head_bucket().await.unwrap_err().to_string();
    assert!(err.contains("404"), "{err}");
}

/// A store that answers 503 to everything is asked `ATTEMPTS` times, then the error comes.
#[tokio::test]
async fn a_busy_store_is_tried_again_with_backoff_then_an_error() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = asked.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = conn.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let c = S3Client::new(&config("ferry-test-x", url)).unwrap();
    let err = c.head_bucket().await.unwrap_err().to_string();
    assert!(err.contains("503"), "{err}");
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        retry::ATTEMPTS,
        "every attempt reached the store"
    );
}

#[tokio::test]
async fn an_unreachable_store_is_tried_a_few_times_then_an_error() {
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(free);
    let c = S3Client::new(&config("ferry-test-x", url)).unwrap();
    let started = std::time::Instant::now();
    let err = c.head_bucket().await.unwrap_err().to_string();
    assert!(err.contains("HeadBucket"), "{err}");
    // Four backoffs of at most 0.1 + 0.2 + 0.4 + 0.8 s.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// The data-store contract, the same cases as the local store's.
#[tokio::test]
async fn the_s3_store_conforms() {
    let (c, prefix) = fresh_bucket().await;
    let spool = tempfile::tempdir().unwrap();
    let store = S3DataStore::new(c.clone(), &prefix, spool.path()).unwrap();
    crate::conformance::data_store(&store).await;
    // Nothing is left behind: no object, no staged piece, no multipart upload.
    assert_eq!(c.list_objects(&prefix).await.unwrap(), Vec::new());
    assert_eq!(c.list_uploads(&prefix).await.unwrap(), Vec::new());
}

/// A writer that sent a part it never got to record (its request ended, its lease was taken
/// over) leaves that part number to itself: the next writer, writing other bytes from the
/// committed offset, takes a number past it, and the object holds only the committed bytes.
#[tokio::test]
async fn a_part_sent_but_never_recorded_is_never_part_of_the_object() {
    use crate::data::{DataStore, Fence, WriteMode};
    let (c, prefix) = fresh_bucket().await;
    let spool = tempfile::tempdir().unwrap();
    let store = S3DataStore::new(c.clone(), &prefix, spool.path()).unwrap();
    let id = ferry_proto::UploadId::from_bytes([0x5a; 16]);
    let created = store.create(id, true, None).await.unwrap();
    let mut lost = store
        .open_writer(
            id,
            &created,
            WriteMode::Append { offset: 0 },
            Fence::Epoch(1),
        )
        .await
        .unwrap();
    // A whole part (8 MiB) goes out as it arrives; nothing is committed.
    for piece in pattern(9 * MIB, 1).chunks(512 * 1024) {
        lost.write(piece.to_vec()).await.unwrap();
    }
    drop(lost);
    let mut next = store
        .open_writer(
            id,
            &created,
            WriteMode::Append { offset: 0 },
            Fence::Epoch(2),
        )
        .await
        .unwrap();
    let kept = pattern(9 * MIB + 5, 2);
    for piece in kept.chunks(512 * 1024) {
        next.write(piece.to_vec()).await.unwrap();
    }
    let at = next.checkpoint(true).await.unwrap();
    // Part 1 stays the lost writer's: the next one took 2, so a late arrival of the lost part
    // could never replace a recorded one.
    let key = format!("{prefix}{id}");
    let upload = created.0["upload"].as_str().unwrap();
    let numbers: Vec<u16> = c
        .list_parts(&key, upload)
        .await
        .unwrap()
        .iter()
        .map(|p| p.number)
        .collect();
    assert_eq!(numbers, [1, 2]);
    let at = store.finish(id, &at, kept.len() as u64).await.unwrap();
    let got = read(store.read(id, &at, 0, kept.len() as u64).await.unwrap()).await;
    assert!(got == kept, "the object is the second writer's bytes only");
    store.delete(id, &at).await.unwrap();
    assert_eq!(c.list_objects(&prefix).await.unwrap(), Vec::new());
}

/// A length that is a whole number of parts: nothing is staged at the end, and the object is
/// completed from the parts alone; then a writer that resumes after a staged checkpoint.
#[tokio::test]
async fn whole_parts_only_and_a_resume_after_a_staged_checkpoint() {
    use crate::data::{DataStore, Fence, WriteMode};
    let part = super::plan::part_size(1) as usize;
    let (c, prefix) = fresh_bucket().await;
    let spool = tempfile::tempdir().unwrap();
    let store = S3DataStore::new(c.clone(), &prefix, spool.path()).unwrap();
    let id = ferry_proto::UploadId::from_bytes([0x3c; 16]);
    let data = pattern(2 * part, 6);
    let created = store.create(id, true, None).await.unwrap();
    // Half a part, committed (staged); then a new writer, as after a restart, does the rest.
    let mut w = store
        .open_writer(
            id,
            &created,
            WriteMode::Append { offset: 0 },
            Fence::Epoch(1),
        )
        .await
        .unwrap();
    w.write(data[..part / 2].to_vec()).await.unwrap();
    let at = w.checkpoint(true).await.unwrap();
    drop(w);
    // A restarted process: nothing kept in memory, the staged bytes read back from the bucket.
    drop(store);
    let spool = tempfile::tempdir().unwrap();
    let store = S3DataStore::new(c.clone(), &prefix, spool.path()).unwrap();
    let mut w = store
        .open_writer(
            id,
            &at,
            WriteMode::Append {
                offset: (part / 2) as u64,
            },
            Fence::Epoch(2),
        )
        .await
        .unwrap();
    for piece in data[part / 2..].chunks(512 * 1024) {
        w.write(piece.to_vec()).await.unwrap();
    }
    let at = w.checkpoint(true).await.unwrap();
    let place: serde_json::Value = at.0.clone();
    assert_eq!(place["parts"].as_array().map(Vec::len), Some(2), "{place}");
    assert!(
        place.get("staged").is_none(),
        "nothing left to stage: {place}"
    );
    let at = store.finish(id, &at, data.len() as u64).await.unwrap();
    let got = read(store.read(id, &at, 0, data.len() as u64).await.unwrap()).await;
    assert!(got == data, "byte-exact");
    // The staged piece of the first writer went with the finish.
    assert_eq!(
        c.list_objects(&format!("{prefix}{id}.staged/"))
            .await
            .unwrap(),
        Vec::new()
    );
    store.delete(id, &at).await.unwrap();
}

/// The next writer of an upload in the same process goes on in the spool its predecessor kept
/// at the committed locator, without reading the staged bytes back (shown by deleting them
/// from the bucket first: the bytes still arrive whole, from the kept spool, in a part); a
/// writer that starts from another locator does not get that spool.
#[tokio::test]
async fn a_writer_goes_on_in_the_spool_its_predecessor_kept() {
    use crate::data::{DataStore, Fence, WriteMode};
    let part = super::plan::part_size(1) as usize;
    let (c, prefix) = fresh_bucket().await;
    let spool = tempfile::tempdir().unwrap();
    let store = S3DataStore::new(c.clone(), &prefix, spool.path()).unwrap();
    let id = ferry_proto::UploadId::from_bytes([0x4d; 16]);
    let data = pattern(part + 1000, 9);
    let created = store.create(id, true, None).await.unwrap();
    let append = |offset: usize| WriteMode::Append {
        offset: offset as u64,
    };
    let mut w = store
        .open_writer(id, &created, append(0), Fence::Epoch(1))
        .await
        .unwrap();
    w.write(data[..1000].to_vec()).await.unwrap();
    let first = w.checkpoint(true).await.unwrap();
    w.write(data[1000..3000].to_vec()).await.unwrap();
    let second = w.checkpoint(true).await.unwrap();
    drop(w);
    // Committed up to 1000 only (the commit of the second checkpoint failed, say): that spool
    // is not taken, and the first piece is read back.
    let mut w = store
        .open_writer(id, &first, append(1000), Fence::Epoch(2))
        .await
        .unwrap();
    w.write(data[1000..3000].to_vec()).await.unwrap();
    let third = w.checkpoint(true).await.unwrap();
    drop(w);
    assert_ne!(third, second);
    for o in c
        .list_objects(&format!("{prefix}{id}.staged/"))
        .await
        .unwrap()
    {
        c.delete_object(&o.key).await.unwrap();
    }
    let mut w = store
        .open_writer(id, &third, append(3000), Fence::Epoch(3))
        .await
        .expect("kept spool: nothing read back");
    w.write(data[3000..].to_vec()).await.unwrap();
    let at = w.checkpoint(true).await.unwrap();
    let place: serde_json::Value = at.0.clone();
    assert_eq!(place["parts"].as_array().map(Vec::len), Some(1), "{place}");
    let at = store.finish(id, &at, data.len() as u64).await.unwrap();
    let got = read(store.read(id, &at, 0, data.len() as u64).await.unwrap()).await;
    assert!(got == data, "byte-exact");
    store.delete(id, &at).await.unwrap();
}

/// What a dead process left in the spool goes when the store empties it (at start); a second
/// live store on the same spool is refused.
#[test]
fn the_spool_is_emptied_when_taken_and_taken_once() {
    let spool = tempfile::tempdir().unwrap();
    std::fs::write(spool.path().join("tmp.left-by-a-crash"), b"x").unwrap();
    let c = S3Client::new(&config(
        "ferry-tests",
        "http://127.0.0.1:9".parse().unwrap(),
    ))
    .unwrap();
    let store = S3DataStore::new(c.clone(), "p/", spool.path()).unwrap();
    store.empty_spool().unwrap();
    assert!(!spool.path().join("tmp.left-by-a-crash").exists());
    let err = S3DataStore::new(c, "p/", spool.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("another ferry process"), "{err}");
    drop(store);
}

/// Numbers a holder on another instance reserved (`Fence::Shared`) are skipped by the next
/// writer and, through its record, by `finish`: a superseded holder's late part, sent under
/// one of them, lands on no part the object is made of, even when the rest of the upload was
/// only staged.
#[tokio::test]
async fn numbers_reserved_by_a_superseded_holder_are_skipped_to_the_end() {
    use crate::data::{DataStore, Fence, Reservations, WriteMode};
    struct Reserved(u32);
    #[async_trait::async_trait]
    impl Reservations for Reserved {
        async fn reserve(&self, _: u32) -> crate::error::Result<()> {
            Ok(())
        }
        fn reserved_before(&self) -> u32 {
            self.0
        }
    }
    let (c, prefix) = fresh_bucket().await;
    let spool = tempfile::tempdir().unwrap();
    let store = S3DataStore::new(c.clone(), &prefix, spool.path()).unwrap();
    let id = ferry_proto::UploadId::from_bytes([0x6b; 16]);
    let created = store.create(id, true, None).await.unwrap();
    // Less than a part: staged only, no part sent by this writer.
    let kept = pattern(3 * MIB + 11, 4);
    let mut w = store
        .open_writer(
            id,
            &created,
            WriteMode::Append { offset: 0 },
            Fence::Shared(2, std::sync::Arc::new(Reserved(3))),
        )
        .await
        .unwrap();
    w.write(kept.clone()).await.unwrap();
    let at = w.checkpoint(true).await.unwrap();
    assert_eq!(at.0["used"], 3, "{}", at.0);
    assert_eq!(
        super::assemble::numbered_after(&super::place::Place::of(&at).unwrap()),
        3
    );
    // The superseded holder's part 3 arrives late, before the finish.
    let key = format!("{prefix}{id}");
    let upload = created.0["upload"].as_str().unwrap();
    c.upload_part(
        &key,
        upload,
        3,
        super::client::Body::Bytes(Bytes::from(pattern(5 * MIB, 9))),
    )
    .await
    .unwrap();
    // A later lease that completes it with no writer of its own (a length declared at the
    // offset) raises the mark to what was reserved before it; never lowers it.
    let later = |n| Fence::Shared(3, std::sync::Arc::new(Reserved(n)));
    let raised = store.past_reserved(&at, &later(6)).unwrap();
    assert_eq!(raised.0["used"], 6, "{}", raised.0);
    assert_eq!(store.past_reserved(&at, &later(2)).unwrap(), at);
    let at = store.finish(id, &raised, kept.len() as u64).await.unwrap();
    let got = read(store.read(id, &at, 0, kept.len() as u64).await.unwrap()).await;
    assert!(got == kept, "the object is the live writer's bytes only");
    store.delete(id, &at).await.unwrap();
}
