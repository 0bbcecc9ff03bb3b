//! Content-Range chunk sessions: `/chunks/` and `/chunks/{id}`.

use crate::support::*;
use std::time::Duration;

const NO_SUCH: &str = "/chunks/00000000000000000000000000000000";

fn chunk(path: &str, range: &str, data: &[u8]) -> Req {
    req("PUT", path)
        .h("content-range", range)
        .body(data.to_vec())
}

// Collection.

#[tokio::test]
async fn create_is_201_with_location_and_state() {
    let s = Srv::new();
    let r = s
        .send(req("POST", "/chunks/").h("upload-length", "10"))
        .await;
    assert_eq!(r.status, 201);
    assert!(r.h("location").starts_with("/chunks/"), "{r:?}");
    assert_eq!(r.h("upload-ranges"), "");
    assert_eq!(r.h("upload-length"), "10");
    assert_eq!(r.h("upload-complete"), "?0");
    assert_eq!(r.h("content-type"), "application/json");
    assert!(!r.has("range"));
    let r = s.send(req("POST", "/chunks")).await;
    assert_eq!(r.status, 201);
    assert!(!r.has("upload-length"));
}

#[tokio::test]
async fn create_with_a_body_is_400() {
    let s = Srv::new();
    let r = s.send(req("POST", "/chunks/").body(&b"abc"[..])).await;
    assert_eq!(r.status, 400);
    assert!(r.closes());
}

#[tokio::test]
async fn create_header_problems_are_400() {
    let s = Srv::new();
    for r in [
        req("POST", "/chunks/").h("upload-length", "x"),
        req("POST", "/chunks/").h("upload-metadata", "a !!"),
    ] {
        assert_eq!(s.send(r).await.status, 400);
    }
}

#[tokio::test]
async fn create_over_the_max_size_is_413() {
    let s = Srv::config(|c| c.max_size = Some(5));
    let r = s
        .send(req("POST", "/chunks/").h("upload-length", "6"))
        .await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn create_that_cannot_fit_is_507() {
    let s = Srv::new();
    *s.faults.free.lock().unwrap() = Some(1 << 20);
    let r = s
        .send(req("POST", "/chunks/").h("upload-length", "10000000"))
        .await;
    assert_eq!(r.status, 507);
}

#[tokio::test]
async fn create_store_failure_is_500() {
    let s = Srv::new();
    *s.faults.create.lock().unwrap() = Some(std::io::ErrorKind::Other);
    let r = s.send(req("POST", "/chunks/")).await;
    assert_eq!(r.status, 500);
}

#[tokio::test]
async fn collection_other_methods_are_405() {
    let s = Srv::new();
    for m in ["GET", "PUT", "DELETE"] {
        let r = s.send(req(m, "/chunks/")).await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.h("allow"), "OPTIONS, POST");
    }
}

#[tokio::test]
async fn options_is_204_announcing_chunk_sessions() {
    let s = Srv::config(|c| c.max_size = Some(1 << 30));
    let r = s.send(req("OPTIONS", "/chunks/")).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("ferry-chunk-sessions"), "content-range");
    assert_eq!(r.h("allow"), "OPTIONS, POST");
    assert_eq!(r.h("tus-max-size"), (1u64 << 30).to_string());
    // Not a tus or IETF endpoint: nothing that would make a client pick those.
    for h in [
        "tus-version",
        "tus-extension",
        "accept-patch",
        "upload-limit",
    ] {
        assert!(r.headers.get(h).is_none(), "{h}");
    }
}

// Session.

#[tokio::test]
async fn malformed_session_id_is_404() {
    let s = Srv::new();
    let r = s.send(req("HEAD", "/chunks/xyz")).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn session_other_methods_are_405() {
    let s = Srv::new();
    let path = s.session(Some(3)).await;
    for m in ["PATCH", "OPTIONS"] {
        let r = s.send(req(m, &path)).await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.h("allow"), "GET, HEAD, PUT, POST, DELETE");
    }
}

#[tokio::test]
async fn chunks_in_any_order_are_200_and_complete_the_session() {
    let s = Srv::new();
    let path = s.session(None).await;
    let r = s.send(chunk(&path, "bytes 5-9/10", b"56789")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("upload-ranges"), "5-9");
    assert_eq!(r.h("upload-length"), "10");
    assert_eq!(r.h("upload-complete"), "?0");
    assert!(!r.has("range"));
    assert!(r.text().contains("\"complete\":false"), "{}", r.text());
    // POST works as PUT does.
    let r = s
        .send(
            req("POST", &path)
                .h("content-range", "bytes 0-4/10")
                .body(&b"01234"[..]),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("upload-ranges"), "0-9");
    assert_eq!(r.h("range"), "bytes=0-9");
    assert_eq!(r.h("upload-complete"), "?1");
    let get = s.send(req("GET", &path)).await;
    assert_eq!(get.status, 200);
    assert_eq!(&get.body[..], b"0123456789");
}

#[tokio::test]
async fn head_is_200_without_a_body() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    assert_eq!(
        s.send(chunk(&path, "bytes 0-2/10", b"012")).await.status,
        200
    );
    let r = s.send(req("HEAD", &path)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("upload-ranges"), "0-2");
    assert_eq!(r.h("range"), "bytes=0-2");
    assert_eq!(r.h("cache-control"), "no-store");
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn unknown_session_is_404() {
    let s = Srv::new();
    assert_eq!(s.send(req("HEAD", NO_SUCH)).await.status, 404);
    assert_eq!(s.send(req("GET", NO_SUCH)).await.status, 404);
    let r = s.send(chunk(NO_SUCH, "bytes 0-2/3", b"abc")).await;
    assert_eq!(r.status, 404);
    assert!(r.closes());
}

#[tokio::test]
async fn tus_upload_is_not_a_session_404() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await.replace("/files/", "/chunks/");
    assert_eq!(s.send(req("HEAD", &path)).await.status, 404);
    assert_eq!(
        s.send(chunk(&path, "bytes 0-2/3", b"abc")).await.status,
        404
    );
}

#[tokio::test]
async fn expired_session_is_410() {
    let s = Srv::new();
    let path = s.session(Some(3)).await;
    s.expire(&path).await;
    assert_eq!(s.send(req("HEAD", &path)).await.status, 410);
    assert_eq!(s.send(req("GET", &path)).await.status, 410);
    assert_eq!(
        s.send(chunk(&path, "bytes 0-2/3", b"abc")).await.status,
        410
    );
}

#[tokio::test]
async fn get_incomplete_is_409_with_ranges() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    assert_eq!(
        s.send(chunk(&path, "bytes 2-3/10", b"23")).await.status,
        200
    );
    let r = s.send(req("GET", &path)).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.h("upload-ranges"), "2-3");
    assert_eq!(r.h("upload-length"), "10");
}

#[tokio::test]
async fn get_complete_with_range_is_206() {
    let s = Srv::new();
    let path = s.session(Some(4)).await;
    assert_eq!(
        s.send(chunk(&path, "bytes 0-3/4", b"abcd")).await.status,
        200
    );
    let r = s.send(req("GET", &path).h("range", "bytes=1-2")).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.h("content-range"), "bytes 1-2/4");
    assert_eq!(&r.body[..], b"bc");
}

#[tokio::test]
async fn content_range_problems_are_400() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    let cases: Vec<(&str, Req)> = vec![
        ("missing", req("PUT", &path).body(&b"abc"[..])),
        ("no unit", chunk(&path, "0-2/10", b"abc")),
        ("items", chunk(&path, "items 0-2/10", b"abc")),
        ("no total", chunk(&path, "bytes 0-2", b"abc")),
        ("length differs", chunk(&path, "bytes 0-3/10", b"abc")),
        ("query with a body", chunk(&path, "bytes */10", b"abc")),
    ];
    for (case, r) in cases {
        let r = s.send(r).await;
        assert_eq!(r.status, 400, "{case}");
        assert!(r.closes(), "{case}");
    }
    let r = s.send(req("HEAD", &path)).await;
    assert_eq!(r.h("upload-ranges"), "");
}

#[tokio::test]
async fn unsatisfiable_content_range_is_416() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    for range in ["bytes 5-4/10", "bytes 8-10/10"] {
        let r = s.send(chunk(&path, range, b"ab")).await;
        assert_eq!(r.status, 416, "{range}");
    }
    // END past the session's length with an unknown total.
    let r = s.send(chunk(&path, "bytes 9-10/*", b"ab")).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.h("upload-length"), "10");
}

#[tokio::test]
async fn other_total_is_409() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    let r = s.send(chunk(&path, "bytes 0-2/11", b"abc")).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.h("upload-length"), "10");
    assert_eq!(r.h("upload-ranges"), "");
}

#[tokio::test]
async fn total_below_what_arrived_is_409() {
    let s = Srv::new();
    let path = s.session(None).await;
    assert_eq!(
        s.send(chunk(&path, "bytes 0-9/*", b"0123456789"))
            .await
            .status,
        200
    );
    let r = s
        .send(req("PUT", &path).h("content-range", "bytes */5"))
        .await;
    assert_eq!(r.status, 409);
}

#[tokio::test]
async fn over_the_max_size_is_413() {
    let s = Srv::config(|c| c.max_size = Some(5));
    let path = s.session(None).await;
    let r = s.send(chunk(&path, "bytes 0-1/6", b"ab")).await;
    assert_eq!(r.status, 413);
    let r = s.send(chunk(&path, "bytes 5-6/*", b"ab")).await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn status_query_is_200() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    assert_eq!(
        s.send(chunk(&path, "bytes 0-2/10", b"abc")).await.status,
        200
    );
    let r = s
        .send(req("PUT", &path).h("content-range", "bytes */10"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("upload-ranges"), "0-2");
    assert_eq!(r.h("range"), "bytes=0-2");
    // A total declared by a query completes an empty file.
    let empty = s.session(None).await;
    let r = s
        .send(req("PUT", &empty).h("content-range", "bytes */0"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("upload-complete"), "?1");
    assert_eq!(s.send(req("GET", &empty)).await.status, 200);
}

#[tokio::test]
async fn chunked_body_of_the_wrong_length_is_400_and_not_recorded() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    for (case, data) in [("short", &b"ab"[..]), ("long", b"abcd")] {
        let r = s
            .send(
                req("PUT", &path)
                    .h("content-range", "bytes 0-2/10")
                    .chunked(data),
            )
            .await;
        assert_eq!(r.status, 400, "{case}");
        assert!(r.closes());
    }
    assert_eq!(s.send(req("HEAD", &path)).await.h("upload-ranges"), "");
}

#[tokio::test]
async fn body_cut_off_is_400_and_not_recorded() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PUT", &path)
                .h("content-range", "bytes 0-4/10")
                .raw_body(body),
        ),
    );
    feed.send(b"ab").await;
    feed.fail().await;
    let r = answer.await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(s.send(req("HEAD", &path)).await.h("upload-ranges"), "");
}

#[tokio::test]
async fn stalled_chunk_is_408() {
    let s = Srv::config(|c| c.body_idle_timeout = Duration::from_millis(50));
    let path = s.session(Some(10)).await;
    let (feed, body) = fed_body();
    let r = s
        .send(
            req("PUT", &path)
                .h("content-range", "bytes 0-4/10")
                .raw_body(body),
        )
        .await;
    drop(feed);
    assert_eq!(r.status, 408);
    assert!(r.closes());
}

#[tokio::test]
async fn chunk_during_shutdown_is_503() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PUT", &path)
                .h("content-range", "bytes 0-4/10")
                .raw_body(body),
        ),
    );
    feed.send(b"ab").await;
    s.state.shutdown.cancel();
    let r = answer.await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(s.send(req("HEAD", &path)).await.h("upload-ranges"), "");
}

#[tokio::test]
async fn too_many_separate_ranges_is_400() {
    let s = Srv::new();
    let n = ferry_store::MAX_SESSION_RANGES as u64;
    let path = s.session(Some(2 * n + 2)).await;
    // The ranges a client scattering 1-byte chunks would have left (one chunk at a time takes
    // seconds): recorded straight in the store.
    s.state
        .uploads
        .meta()
        .update(
            id_of(&path),
            Box::new(move |i| {
                let r = i.received.get_or_insert_with(ferry_store::RangeSet::new);
                for k in 0..n - 1 {
                    r.insert(2 * k, 2 * k + 1);
                }
                Ok(())
            }),
        )
        .await
        .unwrap();
    let at = 2 * (n - 1);
    let r = s
        .send(chunk(&path, &format!("bytes {at}-{at}/*"), b"x"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let at = 2 * n;
    let r = s
        .send(chunk(&path, &format!("bytes {at}-{at}/*"), b"x"))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("separate byte ranges"), "{}", r.text());
}

#[tokio::test]
async fn disk_full_is_507() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    s.faults.disk_full();
    let r = s.send(chunk(&path, "bytes 0-2/10", b"abc")).await;
    assert_eq!(r.status, 507);
    assert_eq!(s.send(req("HEAD", &path)).await.h("upload-ranges"), "");
}

#[tokio::test]
async fn io_error_is_500() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    s.faults.write_eio();
    let r = s.send(chunk(&path, "bytes 0-2/10", b"abc")).await;
    assert_eq!(r.status, 500);
}

#[tokio::test]
async fn get_complete_honours_validators_and_ranges() {
    let s = Srv::new();
    let path = s.session(Some(4)).await;
    assert_eq!(
        s.send(chunk(&path, "bytes 0-3/4", b"abcd")).await.status,
        200
    );
    let full = s.send(req("GET", &path)).await;
    assert_eq!(full.status, 200);
    let tag = full.h("etag").to_string();
    let r = s.send(req("GET", &path).h("if-none-match", &tag)).await;
    assert_eq!(r.status, 304);
    let r = s.send(req("GET", &path).h("if-match", "\"x\"")).await;
    assert_eq!(r.status, 412);
    let r = s.send(req("GET", &path).h("range", "bytes=4-")).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.h("content-range"), "bytes */4");
    *s.faults.read.lock().unwrap() = Some(std::io::ErrorKind::Other);
    assert_eq!(s.send(req("GET", &path)).await.status, 500);
}

#[tokio::test]
async fn content_encoding_is_415_and_not_recorded() {
    let s = Srv::new();
    let path = s.session(Some(3)).await;
    let r = s
        .send(chunk(&path, "bytes 0-2/3", b"abc").h("content-encoding", "gzip"))
        .await;
    assert_eq!(r.status, 415, "{r:?}");
    assert_eq!(r.h("accept-encoding"), "identity");
    assert!(r.closes());
    let r = s.send(req("HEAD", &path)).await;
    assert_eq!(r.h("upload-complete"), "?0");
}

/// The `Repr-Digest` of a complete session holding `data` (every kept digest).
fn repr_digest(data: &[u8]) -> String {
    use ferry_proto::checksum::digest;
    use ferry_proto::digest::{Digests, KEPT};
    KEPT.into_iter()
        .map(|a| (a, digest(a, data)))
        .collect::<Digests>()
        .to_field()
        .unwrap()
}

/// Issue 15: a finished session is immutable. A PUT that began before another completed the
/// session writes none of its bytes: the download, its strong ETag and its `Repr-Digest` stay
/// as they were.
#[tokio::test]
async fn put_still_streaming_when_another_completes_the_session_changes_nothing() {
    let s = Srv::new();
    let path = s.session(Some(8)).await;
    let (feed, body) = fed_body();
    let slow = tokio::spawn(
        s.start(
            req("PUT", &path)
                .h("content-range", "bytes 0-7/8")
                .raw_body(body),
        ),
    );
    // Taken means the server is reading the body: the slow write has begun.
    feed.send(b"").await;
    let r = s.send(chunk(&path, "bytes 0-7/8", b"ABCDEFGH")).await;
    assert_eq!((r.status, r.h("upload-complete")), (200, "?1"), "{r:?}");
    let before = s.send(req("GET", &path)).await;
    assert_eq!(&before.body[..], b"ABCDEFGH");
    assert_eq!(before.h("repr-digest"), repr_digest(b"ABCDEFGH"));
    feed.send(b"abcd").await;
    feed.send(b"efgh").await;
    drop(feed);
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.h("upload-ranges"), "0-7");
    assert_eq!(r.h("upload-complete"), "?1");
    let after = s.send(req("GET", &path)).await;
    assert_eq!(&after.body[..], b"ABCDEFGH", "the served bytes changed");
    assert_eq!(after.h("etag"), before.h("etag"));
    assert_eq!(after.h("repr-digest"), before.h("repr-digest"));
}

/// A PUT for bytes another PUT is still writing (a client's retry over a connection the
/// server has not seen die) takes them over: the older one ends with 409 and records nothing
/// of them, the newer one writes and records its whole chunk, so a 200 always covers the
/// chunk it answers.
#[tokio::test]
async fn put_overlapping_one_in_flight_takes_it_over() {
    let s = Srv::new();
    let path = s.session(Some(8)).await;
    let (feed, body) = fed_body();
    let first = tokio::spawn(
        s.start(
            req("PUT", &path)
                .h("content-range", "bytes 0-3/8")
                .raw_body(body),
        ),
    );
    feed.send(b"ab").await;
    let r = s.send(chunk(&path, "bytes 0-7/8", b"ABCDEFGH")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.h("upload-ranges"), "0-7", "the whole chunk");
    assert_eq!(r.h("upload-complete"), "?1");
    let r = first.await.unwrap();
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.closes());
    let get = s.send(req("GET", &path)).await;
    assert_eq!(&get.body[..], b"ABCDEFGH");
    assert_eq!(get.h("repr-digest"), repr_digest(b"ABCDEFGH"));
    drop(feed);
}

#[tokio::test]
async fn create_with_metadata_over_the_limit_is_400() {
    let s = Srv::config(|c| c.max_metadata = 100);
    let meta = format!("filename {}", "A".repeat(100));
    let r = s
        .send(
            req("POST", "/chunks/")
                .h("upload-length", "3")
                .h("upload-metadata", &meta),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test]
async fn a_total_learned_late_that_cannot_fit_is_507() {
    let s = Srv::new();
    let path = s.session(None).await;
    let r = s
        .send(chunk(&path, "bytes 0-1/9200000000000000000", b"ab"))
        .await;
    assert_eq!(r.status, 507, "{r:?}");
    let r = s
        .send(req("PUT", &path).h("content-range", "bytes */9200000000000000000"))
        .await;
    assert_eq!(r.status, 507, "{r:?}");
}

#[tokio::test]
async fn a_chunk_dripping_below_the_minimum_rate_is_408() {
    let mut setup = Setup::default();
    setup.config.min_body_rate = Some(1000);
    setup.config.body_rate_window = Duration::from_millis(300);
    let s = Srv::with(setup);
    let path = s.session(Some(1 << 20)).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PUT", &path)
                .h(
                    "content-range",
                    &format!("bytes 0-{}/{}", (1 << 20) - 1, 1 << 20),
                )
                .raw_body(body),
        ),
    );
    let dripping = feed.drip(b"x", Duration::from_millis(20), usize::MAX);
    let r = answer.await.unwrap();
    dripping.abort();
    assert_eq!(r.status, 408, "{r:?}");
    assert!(r.text().contains("slower than"), "{}", r.text());
}

#[tokio::test]
async fn delete_is_204_and_the_session_is_gone() {
    let s = Srv::new();
    let path = s.session(Some(10)).await;
    let r = s.send(chunk(&path, "bytes 0-4/10", b"hello")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = s.send(req("DELETE", &path)).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(s.send(req("HEAD", &path)).await.status, 404);
    assert_eq!(s.send(req("DELETE", &path)).await.status, 404);
}

#[tokio::test]
async fn delete_while_a_chunk_is_being_written_is_423_and_changes_nothing() {
    let s = Srv::new();
    let path = s.session(Some(1 << 20)).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PUT", &path)
                .h(
                    "content-range",
                    &format!("bytes 0-{}/{}", (1 << 20) - 1, 1 << 20),
                )
                .raw_body(body),
        ),
    );
    // The channel holds one piece: the second is taken only once the handler read the first.
    feed.send(b"x").await;
    feed.send(b"y").await;
    let r = s.send(req("DELETE", &path)).await;
    assert_eq!(r.status, 423, "{r:?}");
    assert_eq!(r.h("retry-after"), "1");
    assert_eq!(s.send(req("HEAD", &path)).await.status, 200);
    drop(feed);
    let _ = answer.await;
}
