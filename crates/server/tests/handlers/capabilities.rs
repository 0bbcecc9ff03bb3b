//! What the data store declares it can do decides what the server offers: what it cannot do is
//! not announced, and its routes say why.

use crate::support::*;
use ferry_store::data::DataCapabilities;

fn store_without(f: impl FnOnce(&mut DataCapabilities)) -> Srv {
    let s = Srv::new();
    let mut caps = DataCapabilities::ALL;
    f(&mut caps);
    *s.faults.caps.lock().unwrap() = Some(caps);
    s
}

#[tokio::test]
async fn without_random_access_chunk_sessions_are_501() {
    let s = store_without(|c| c.random_access = false);
    for r in [
        req("OPTIONS", "/chunks/"),
        req("POST", "/chunks/").h("upload-length", "10"),
        req("HEAD", "/chunks/0123456789abcdef0123456789abcdef"),
    ] {
        let r = s.send(r).await;
        assert_eq!(r.status, 501);
        assert!(!r.has("ferry-chunk-sessions"));
        assert!(r.text().contains("tus or the IETF draft"), "{}", r.text());
    }
    // A refused body is never read: the connection closes.
    let r = s
        .send(
            req("PUT", "/chunks/0123456789abcdef0123456789abcdef")
                .h("content-range", "bytes 0-9/10")
                .body(&b"0123456789"[..]),
        )
        .await;
    assert_eq!(r.status, 501);
    assert!(r.closes(), "{r:?}");
    // tus goes on.
    let r = s
        .send(req("POST", "/files/").tus().h("upload-length", "10"))
        .await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn without_concatenation_none_is_announced_and_parts_are_501() {
    let full = Srv::new().send(req("OPTIONS", "/files/").tus()).await;
    assert!(full.h("tus-extension").contains("concatenation"));
    let s = store_without(|c| c.concatenation = false);
    let r = s.send(req("OPTIONS", "/files/").tus()).await;
    assert_eq!(r.status, 204);
    let ext = r.h("tus-extension");
    assert!(!ext.contains("concatenation"), "{ext}");
    assert!(ext.contains("creation-defer-length"), "{ext}");
    let r = s
        .send(
            req("POST", "/files/")
                .tus()
                .h("upload-length", "10")
                .h("upload-concat", "partial"),
        )
        .await;
    assert_eq!(r.status, 501);
    assert!(r.text().contains("cannot concatenate"), "{}", r.text());
}

#[tokio::test]
async fn without_ranged_reads_a_download_is_200_whole() {
    let s = store_without(|c| c.ranged_reads = false);
    let path = s.finished(b"0123456789").await;
    let r = s.send(req("GET", &path).h("range", "bytes=2-4")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("accept-ranges"), "none");
    assert_eq!(r.text(), "0123456789");
}
