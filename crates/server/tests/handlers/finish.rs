//! The data store's finish step runs after an upload's last byte is recorded and before it
//! counts as finished. When it fails (an object store that is down), the bytes stay recorded,
//! and the next request that reads the upload finishes it.

use crate::support::*;
use std::io;

fn id_of(path: &str) -> ferry_proto::UploadId {
    ferry_proto::UploadId::parse(path.rsplit('/').next().unwrap()).unwrap()
}

/// The record as stored, finish step pending or not.
async fn pending(s: &Srv, path: &str) -> bool {
    let info = s
        .state
        .uploads
        .meta()
        .get(id_of(path))
        .await
        .unwrap()
        .unwrap();
    info.finish_pending
}

#[tokio::test]
async fn a_finish_that_failed_is_run_by_the_next_request() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    *s.faults.finish.lock().unwrap() = Some(io::ErrorKind::Other);
    let r = s.send(patch(&path, 0, b"abc")).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        pending(&s, &path).await,
        "every byte recorded, the finish pending"
    );
    // Still failing: a read of the upload says so rather than serve unfinished bytes.
    let r = s.send(req("GET", &path)).await;
    assert_eq!(r.status, 500, "{r:?}");
    // The store is back: the next request finishes the upload and goes on.
    *s.faults.finish.lock().unwrap() = None;
    let head = s.send(req("HEAD", &path).tus()).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.h("upload-offset"), "3");
    assert!(!pending(&s, &path).await, "the finish is recorded");
    let r = s.send(req("GET", &path)).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"abc"[..]));
}

#[tokio::test]
async fn a_chunk_session_whose_finish_failed_is_finished_by_a_status_query() {
    let s = Srv::new();
    let path = s.session(Some(6)).await;
    let put =
        |range: &str, body: &'static [u8]| req("PUT", &path).h("content-range", range).body(body);
    assert_eq!(s.send(put("bytes 3-5/6", b"def")).await.status, 200);
    *s.faults.finish.lock().unwrap() = Some(io::ErrorKind::Other);
    let r = s.send(put("bytes 0-2/6", b"abc")).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert!(pending(&s, &path).await);
    *s.faults.finish.lock().unwrap() = None;
    let r = s
        .send(req("PUT", &path).h("content-range", "bytes */6"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.h("upload-complete"), "?1");
    assert!(!pending(&s, &path).await);
    let r = s.send(req("GET", &path)).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"abcdef"[..]));
}

#[tokio::test]
async fn a_final_finishes_a_part_whose_finish_failed_before_reading_it() {
    let s = Srv::new();
    let part = |n: u64| {
        req("POST", "/files/")
            .tus()
            .h("upload-length", &n.to_string())
            .h("upload-concat", "partial")
    };
    let a = s.send(part(2)).await.h("location").to_string();
    let b = s.send(part(2)).await.h("location").to_string();
    assert_eq!(s.send(patch(&a, 0, b"ab")).await.status, 204);
    *s.faults.finish.lock().unwrap() = Some(io::ErrorKind::Other);
    assert_eq!(s.send(patch(&b, 0, b"cd")).await.status, 500);
    assert!(pending(&s, &b).await);
    *s.faults.finish.lock().unwrap() = None;
    let r = s
        .send(
            req("POST", "/files/")
                .tus()
                .h("upload-concat", &format!("final;{a} {b}")),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let fin = r.h("location").to_string();
    let r = s.send(req("GET", &fin)).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"abcd"[..]));
    assert!(!pending(&s, &b).await, "the part was finished to be read");
}

/// A final created before its part was whole (concatenation-unfinished) completes once the
/// part's late finish runs: the completion work that waited for the finish runs with it.
#[tokio::test]
async fn a_late_finish_completes_the_finals_waiting_for_the_part() {
    let s = Srv::new();
    let part = req("POST", "/files/")
        .tus()
        .h("upload-length", "3")
        .h("upload-concat", "partial");
    let p = s.send(part).await.h("location").to_string();
    let r = s
        .send(
            req("POST", "/files/")
                .tus()
                .h("upload-concat", &format!("final;{p}")),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let fin = r.h("location").to_string();
    *s.faults.finish.lock().unwrap() = Some(io::ErrorKind::Other);
    assert_eq!(s.send(patch(&p, 0, b"xyz")).await.status, 500);
    let head = s.send(req("HEAD", &fin).tus()).await;
    assert!(!head.has("upload-offset"), "the final waits: {head:?}");
    *s.faults.finish.lock().unwrap() = None;
    assert_eq!(s.send(req("HEAD", &p).tus()).await.status, 200);
    let head = s.send(req("HEAD", &fin).tus()).await;
    assert_eq!(head.h("upload-offset"), "3", "{head:?}");
    let r = s.send(req("GET", &fin)).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"xyz"[..]));
}
