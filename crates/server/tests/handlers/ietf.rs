//! The IETF resumable-uploads draft on `/files/` (requests with
//! `Upload-Draft-Interop-Version`). The 104 interim answer is never sent (hyper cannot), so
//! there is nothing of it to observe.

use crate::support::*;
use std::time::Duration;

const V: u32 = 8;
const NO_SUCH: &str = "/files/00000000000000000000000000000000";
const PARTIAL: &str = "application/partial-upload";
const MISMATCH: &str = "https://iana.org/assignments/http-problem-types#mismatching-upload-offset";
const INCONSISTENT: &str =
    "https://iana.org/assignments/http-problem-types#inconsistent-upload-length";
const COMPLETED: &str = "https://iana.org/assignments/http-problem-types#completed-upload";

fn create(complete: bool) -> Req {
    req("POST", "/files/")
        .ietf(V)
        .h("upload-complete", if complete { "?1" } else { "?0" })
}

fn append(path: &str, offset: u64, complete: bool, data: &[u8]) -> Req {
    req("PATCH", path)
        .ietf(V)
        .h("content-type", PARTIAL)
        .h("upload-offset", &offset.to_string())
        .h("upload-complete", if complete { "?1" } else { "?0" })
        .body(data.to_vec())
}

/// An incomplete draft upload of `length` (if given) bytes; its path.
async fn upload(s: &Srv, length: Option<u64>) -> String {
    let mut r = create(false);
    if let Some(l) = length {
        r = r.h("upload-length", &l.to_string());
    }
    let r = s.send(r).await;
    assert_eq!(r.status, 201, "{r:?}");
    path_of(r.h("location"))
}

async fn count(s: &Srv) -> usize {
    s.state.uploads.meta().list().await.unwrap().len()
}

/// Every draft answer: the interop version echoed, no tus header.
fn draft_answer(r: &Resp, interop: u32) {
    assert_eq!(
        r.h("upload-draft-interop-version"),
        interop.to_string(),
        "{r:?}"
    );
    assert!(!r.has("tus-resumable"), "{r:?}");
}

// Collection.

#[tokio::test]
async fn options_is_204_with_limits() {
    let s = Srv::config(|c| c.max_size = Some(1000));
    let r = s.send(req("OPTIONS", "/files/").ietf(V)).await;
    assert_eq!(r.status, 204);
    draft_answer(&r, V);
    assert_eq!(r.h("accept-patch"), PARTIAL);
    assert!(r.h("upload-limit").contains("max-size=1000"), "{r:?}");
    assert!(r.h("upload-limit").contains("max-age="), "{r:?}");
}

#[tokio::test]
async fn unsupported_interop_version_is_400() {
    let s = Srv::new();
    for v in ["2", "9", "x"] {
        let r = s
            .send(
                req("POST", "/files/")
                    .h("upload-draft-interop-version", v)
                    .h("upload-complete", "?1"),
            )
            .await;
        assert_eq!(r.status, 400, "{v}");
        draft_answer(&r, 8);
    }
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn collection_get_is_405() {
    let s = Srv::new();
    let r = s.send(req("GET", "/files/").ietf(V)).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.h("allow"), "OPTIONS, POST, PUT, PATCH");
    draft_answer(&r, V);
}

#[tokio::test]
async fn create_incomplete_is_201() {
    let s = Srv::config(|c| c.max_size = Some(100));
    let r = s.send(create(false).h("upload-length", "10")).await;
    assert_eq!(r.status, 201);
    draft_answer(&r, V);
    assert!(r.h("location").starts_with("/files/"));
    assert_eq!(r.h("upload-offset"), "0");
    assert_eq!(r.h("upload-complete"), "?0");
    assert_eq!(r.h("upload-length"), "10");
    assert!(r.h("upload-limit").contains("max-size=100"));
}

#[tokio::test]
async fn create_complete_with_content_is_201() {
    let s = Srv::new();
    for m in ["POST", "PUT", "PATCH"] {
        let r = s
            .send(
                req(m, "/files/")
                    .ietf(V)
                    .h("upload-complete", "?1")
                    .body(&b"hello"[..]),
            )
            .await;
        assert_eq!(r.status, 201, "{m}");
        assert_eq!(r.h("upload-offset"), "5");
        assert_eq!(r.h("upload-complete"), "?1");
        assert_eq!(r.h("upload-length"), "5");
        assert!(r.h("repr-digest").contains("sha-256="), "{r:?}");
        let get = s.send(req("GET", &path_of(r.h("location")))).await;
        assert_eq!(&get.body[..], b"hello");
    }
}

#[tokio::test]
async fn create_complete_and_empty_is_201() {
    let s = Srv::new();
    let r = s.send(create(true)).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.h("upload-offset"), "0");
    assert_eq!(r.h("upload-complete"), "?1");
    assert_eq!(r.h("upload-length"), "0");
}

#[tokio::test]
async fn create_with_interop_3_is_201_with_upload_incomplete() {
    let s = Srv::new();
    let r = s
        .send(
            req("POST", "/files/")
                .ietf(3)
                .h("upload-incomplete", "?1")
                .body(&b"ab"[..]),
        )
        .await;
    assert_eq!(r.status, 201);
    draft_answer(&r, 3);
    assert_eq!(r.h("upload-incomplete"), "?1");
    assert_eq!(r.h("upload-offset"), "2");
    assert!(!r.has("upload-limit"));
}

#[tokio::test]
async fn create_header_problems_are_400() {
    let s = Srv::new();
    let cases: Vec<(&str, Req)> = vec![
        ("no completeness", req("POST", "/files/").ietf(V)),
        (
            "bad boolean",
            req("POST", "/files/").ietf(V).h("upload-complete", "yes"),
        ),
        ("bad length", create(false).h("upload-length", "-1")),
        ("bad metadata", create(false).h("upload-metadata", "a !!")),
        (
            "bad digest",
            create(true).h("content-digest", "sha-256=:!!:"),
        ),
        (
            "short digest",
            create(true).h("content-digest", "sha-256=:AAAA:"),
        ),
    ];
    for (case, r) in cases {
        let r = s.send(r.body(&b"abc"[..])).await;
        assert_eq!(r.status, 400, "{case}");
        draft_answer(&r, V);
        assert!(r.closes(), "{case}");
    }
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn create_inconsistent_length_is_400_problem() {
    let s = Srv::new();
    for (case, r) in [
        (
            "complete content != length",
            create(true).h("upload-length", "5").body(&b"abc"[..]),
        ),
        (
            "content > length",
            create(false).h("upload-length", "2").body(&b"abc"[..]),
        ),
    ] {
        let r = s.send(r).await;
        assert_eq!(r.status, 400, "{case}");
        assert_eq!(r.h("content-type"), "application/problem+json");
        assert!(r.text().contains(INCONSISTENT), "{case}: {}", r.text());
    }
    // Interop 5 has no such problem type: the same status with a text line.
    let r = s
        .send(
            req("POST", "/files/")
                .ietf(5)
                .h("upload-complete", "?1")
                .h("upload-length", "5")
                .body(&b"abc"[..]),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.h("content-type").starts_with("text/plain"));
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn create_over_the_max_size_is_413_with_limits() {
    let s = Srv::config(|c| c.max_size = Some(4));
    let r = s.send(create(true).body(&b"hello"[..])).await;
    assert_eq!(r.status, 413);
    draft_answer(&r, V);
    assert!(r.h("upload-limit").contains("max-size=4"), "{r:?}");
    assert!(r.closes());
}

#[tokio::test]
async fn create_with_content_encoding_is_415() {
    let s = Srv::new();
    let r = s
        .send(create(true).h("content-encoding", "gzip").body(&b"abc"[..]))
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(r.h("accept-encoding"), "identity");
    assert!(!r.has("tus-resumable"));
    assert!(r.closes());
}

#[tokio::test]
async fn create_digest_mismatch_is_400_with_location() {
    let s = Srv::new();
    // sha-256 of "hello", sent with "jello".
    let r = s
        .send(
            create(true)
                .h(
                    "content-digest",
                    "sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:",
                )
                .body(&b"jello"[..]),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.h("upload-offset"), "0");
    let head = s.send(req("HEAD", &path_of(r.h("location"))).ietf(V)).await;
    assert_eq!(head.h("upload-offset"), "0");
}

#[tokio::test]
async fn create_content_cut_off_is_400_with_location() {
    let s = Srv::new();
    let (feed, body) = fed_body();
    let answer = tokio::spawn(s.start(create(false).raw_body(body)));
    feed.send(b"abc").await;
    feed.fail().await;
    let r = answer.await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.h("upload-offset"), "3");
    assert!(r.has("location"));
    draft_answer(&r, V);
}

#[tokio::test]
async fn create_chunked_content_past_the_length_is_400_and_discarded() {
    let s = Srv::new();
    let r = s
        .send(create(false).h("upload-length", "2").chunked(&b"abc"[..]))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains(INCONSISTENT), "{}", r.text());
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn create_taken_over_is_409() {
    let s = Srv::new();
    let (feed, body) = fed_body();
    let answer = tokio::spawn(s.start(create(false).raw_body(body)));
    feed.send(b"abc").await;
    let id = s.state.uploads.meta().list().await.unwrap()[0].id;
    let resumed = s.send(append(&format!("/files/{id}"), 0, false, b"")).await;
    let r = answer.await.unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.h("upload-offset"), "3");
    assert!(r.has("location"));
    assert_eq!(resumed.status, 409);
    assert_eq!(resumed.h("upload-offset"), "3");
}

#[tokio::test]
async fn create_during_shutdown_is_503() {
    let s = Srv::new();
    let (feed, body) = fed_body();
    let answer = tokio::spawn(s.start(create(false).raw_body(body)));
    feed.send(b"ab").await;
    s.state.shutdown.cancel();
    let r = answer.await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.h("upload-offset"), "2");
    draft_answer(&r, V);
}

#[tokio::test]
async fn create_stalled_is_408() {
    let s = Srv::config(|c| c.body_idle_timeout = Duration::from_millis(50));
    let (feed, body) = fed_body();
    let r = s.send(create(false).raw_body(body)).await;
    drop(feed);
    assert_eq!(r.status, 408);
    assert_eq!(r.h("upload-offset"), "0");
}

#[tokio::test]
async fn create_that_cannot_fit_is_507() {
    let s = Srv::new();
    *s.faults.free.lock().unwrap() = Some(1 << 20);
    let r = s.send(create(false).h("upload-length", "10000000")).await;
    assert_eq!(r.status, 507);
    draft_answer(&r, V);
}

#[tokio::test]
async fn create_on_a_full_disk_is_507_with_location() {
    let s = Srv::new();
    s.faults.disk_full();
    let r = s.send(create(true).body(&b"abc"[..])).await;
    assert_eq!(r.status, 507);
    assert_eq!(r.h("upload-offset"), "0");
    assert!(r.has("location"));
}

#[tokio::test]
async fn create_store_failure_is_500() {
    let s = Srv::new();
    *s.faults.create.lock().unwrap() = Some(std::io::ErrorKind::Other);
    let r = s.send(create(false)).await;
    assert_eq!(r.status, 500);
    draft_answer(&r, V);
}

// Upload resource.

#[tokio::test]
async fn resource_options_is_204() {
    let s = Srv::new();
    let r = s.send(req("OPTIONS", NO_SUCH).ietf(V)).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("accept-patch"), PARTIAL);
}

#[tokio::test]
async fn resource_bad_interop_version_is_400() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let r = s
        .send(req("HEAD", &path).h("upload-draft-interop-version", "1"))
        .await;
    assert_eq!(r.status, 400);
    draft_answer(&r, 8);
}

#[tokio::test]
async fn resource_other_methods_are_405() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    for m in ["PUT", "POST"] {
        let r = s.send(req(m, &path).ietf(V)).await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.h("allow"), "OPTIONS, HEAD, GET, PATCH, DELETE");
    }
}

#[tokio::test]
async fn head_is_204_with_state() {
    let s = Srv::new();
    let path = upload(&s, Some(10)).await;
    assert_eq!(s.send(append(&path, 0, false, b"abc")).await.status, 204);
    let r = s.send(req("HEAD", &path).ietf(V)).await;
    assert_eq!(r.status, 204);
    draft_answer(&r, V);
    assert_eq!(r.h("upload-offset"), "3");
    assert_eq!(r.h("upload-complete"), "?0");
    assert_eq!(r.h("upload-length"), "10");
    assert_eq!(r.h("cache-control"), "no-store");
}

#[tokio::test]
async fn head_wanting_a_digest_not_ready_is_204_within_the_bound_with_the_crc() {
    let bound = Duration::from_millis(300);
    let s = Srv::config(|c| c.digest_wait = bound);
    let r = s.send(create(true).body(vec![3u8; 12 << 20])).await;
    assert_eq!(r.status, 201, "{r:?}");
    let path = path_of(r.h("location"));
    s.faults.stall_reads();
    let started = std::time::Instant::now();
    let r = s
        .send(
            req("HEAD", &path)
                .ietf(V)
                .h("want-repr-digest", "sha-256=10"),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, 204);
    assert_eq!(r.h("upload-complete"), "?1");
    assert!(r.h("repr-digest").contains("crc64nvme=:"), "{r:?}");
    assert!(!r.h("repr-digest").contains("sha-256"), "{r:?}");
    assert!(
        took < bound + Duration::from_secs(2),
        "answered after {took:?}"
    );
    s.faults.resume_reads();
}

#[tokio::test]
async fn head_unknown_is_404() {
    let s = Srv::new();
    let r = s.send(req("HEAD", NO_SUCH).ietf(V)).await;
    assert_eq!(r.status, 404);
    draft_answer(&r, V);
}

#[tokio::test]
async fn head_expired_is_410() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    s.expire(&path).await;
    let r = s.send(req("HEAD", &path).ietf(V)).await;
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn append_is_204() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let r = s.send(append(&path, 0, false, b"abc")).await;
    assert_eq!(r.status, 204);
    draft_answer(&r, V);
    assert_eq!(r.h("upload-offset"), "3");
    assert_eq!(r.h("upload-complete"), "?0");
    let r = s.send(append(&path, 3, true, b"de")).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("upload-offset"), "5");
    assert_eq!(r.h("upload-complete"), "?1");
    assert_eq!(r.h("upload-length"), "5");
    // Completing again without content (a lost answer retried) is still a success.
    let r = s.send(append(&path, 5, true, b"")).await;
    assert_eq!(r.status, 204);
    let get = s.send(req("GET", &path).ietf(V)).await;
    assert_eq!(get.status, 200);
    assert_eq!(&get.body[..], b"abcde");
}

#[tokio::test]
async fn append_without_partial_upload_type_is_415() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let r = s
        .send(
            req("PATCH", &path)
                .ietf(V)
                .h("content-type", "application/offset+octet-stream")
                .h("upload-offset", "0")
                .h("upload-complete", "?0")
                .body(&b"abc"[..]),
        )
        .await;
    assert_eq!(r.status, 415);
    draft_answer(&r, V);
    assert!(r.closes());
    // Interop 5 predates the media type.
    let r = s
        .send(
            req("PATCH", &path)
                .ietf(5)
                .h("upload-offset", "0")
                .h("upload-complete", "?0")
                .body(&b"abc"[..]),
        )
        .await;
    assert_eq!(r.status, 204);
}

#[tokio::test]
async fn append_header_problems_are_400() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let base = || req("PATCH", &path).ietf(V).h("content-type", PARTIAL);
    let cases: Vec<(&str, Req)> = vec![
        ("no completeness", base().h("upload-offset", "0")),
        ("no offset", base().h("upload-complete", "?0")),
        (
            "bad offset",
            base().h("upload-complete", "?0").h("upload-offset", "1.5"),
        ),
        (
            "bad digest",
            base()
                .h("upload-complete", "?0")
                .h("upload-offset", "0")
                .h("content-digest", "sha-512=:AA==:"),
        ),
    ];
    for (case, r) in cases {
        let r = s.send(r.body(&b"abc"[..])).await;
        assert_eq!(r.status, 400, "{case}");
        assert!(r.closes(), "{case}");
    }
}

#[tokio::test]
async fn append_unknown_is_404() {
    let s = Srv::new();
    let r = s.send(append(NO_SUCH, 0, false, b"abc")).await;
    assert_eq!(r.status, 404);
    draft_answer(&r, V);
}

#[tokio::test]
async fn append_expired_is_410() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    s.expire(&path).await;
    let r = s.send(append(&path, 0, false, b"abc")).await;
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn append_to_a_final_is_403() {
    let s = Srv::new();
    let a = s.partial(b"abc").await;
    let r = s
        .send(
            req("POST", "/files/")
                .tus()
                .h("upload-concat", &format!("final;{a}")),
        )
        .await;
    let f = path_of(r.h("location"));
    let r = s.send(append(&f, 3, false, b"x")).await;
    assert_eq!(r.status, 403);
    draft_answer(&r, V);
}

#[tokio::test]
async fn append_at_the_wrong_offset_is_409_problem() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    assert_eq!(s.send(append(&path, 0, false, b"abc")).await.status, 204);
    let r = s.send(append(&path, 1, false, b"x")).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.h("upload-offset"), "3");
    assert_eq!(r.h("content-type"), "application/problem+json");
    let t = r.text();
    assert!(t.contains(MISMATCH), "{t}");
    assert!(
        t.contains("\"expected-offset\":3,\"provided-offset\":1"),
        "{t}"
    );
}

#[tokio::test]
async fn append_to_a_completed_upload_is_400() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    assert_eq!(s.send(append(&path, 0, true, b"abc")).await.status, 204);
    // Interop 8: appending content is an inconsistent length.
    let r = s.send(append(&path, 3, false, b"d")).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains(INCONSISTENT), "{}", r.text());
    // Interop 7: the completed-upload problem.
    let r = s
        .send(
            req("PATCH", &path)
                .ietf(7)
                .h("content-type", PARTIAL)
                .h("upload-offset", "3")
                .h("upload-complete", "?0")
                .body(&b"d"[..]),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains(COMPLETED), "{}", r.text());
}

#[tokio::test]
async fn append_inconsistent_length_is_400() {
    let s = Srv::new();
    let path = upload(&s, Some(5)).await;
    for (case, r) in [
        (
            "other length",
            append(&path, 0, false, b"ab").h("upload-length", "6"),
        ),
        ("complete short", append(&path, 0, true, b"ab")),
        ("past the length", append(&path, 0, false, b"abcdef")),
    ] {
        let r = s.send(r).await;
        assert_eq!(r.status, 400, "{case}");
        assert!(r.text().contains(INCONSISTENT), "{case}: {}", r.text());
    }
    let r = s.send(req("HEAD", &path).ietf(V)).await;
    assert_eq!(r.h("upload-offset"), "0");
}

#[tokio::test]
async fn append_declaring_a_length_over_the_max_is_413() {
    let s = Srv::config(|c| c.max_size = Some(4));
    let path = upload(&s, None).await;
    let r = s
        .send(append(&path, 0, false, b"ab").h("upload-length", "5"))
        .await;
    assert_eq!(r.status, 413);
    assert!(r.h("upload-limit").contains("max-size=4"));
    let r = s.send(append(&path, 0, true, b"abcde")).await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn append_while_the_holder_does_not_let_go_is_423() {
    let s = Srv::with(Setup {
        patience: Duration::from_millis(50),
        ..Setup::default()
    });
    let path = upload(&s, None).await;
    let _lease = s.state.uploads.lease(id_of(&path)).await.unwrap();
    let r = s.send(append(&path, 0, false, b"abc")).await;
    assert_eq!(r.status, 423);
    draft_answer(&r, V);
}

#[tokio::test]
async fn append_digest_mismatch_is_400_and_keeps_nothing() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let r = s
        .send(append(&path, 0, true, b"jello").h(
            "content-digest",
            "sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:",
        ))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.h("upload-offset"), "0");
    let r = s
        .send(append(&path, 0, true, b"hello").h(
            "content-digest",
            "sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:",
        ))
        .await;
    assert_eq!(r.status, 204);
}

#[tokio::test]
async fn append_chunked_past_the_length_is_400_and_discards_the_upload() {
    let s = Srv::new();
    let path = upload(&s, Some(2)).await;
    let r = s
        .send(
            req("PATCH", &path)
                .ietf(V)
                .h("content-type", PARTIAL)
                .h("upload-offset", "0")
                .h("upload-complete", "?0")
                .chunked(&b"abc"[..]),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains(INCONSISTENT));
    assert_eq!(s.send(req("HEAD", &path).ietf(V)).await.status, 404);
}

#[tokio::test]
async fn append_cut_off_is_400_with_the_offset_kept() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PATCH", &path)
                .ietf(V)
                .h("content-type", PARTIAL)
                .h("upload-offset", "0")
                .h("upload-complete", "?0")
                .raw_body(body),
        ),
    );
    feed.send(b"abcd").await;
    feed.fail().await;
    let r = answer.await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.h("upload-offset"), "4");
}

#[tokio::test]
async fn append_taken_over_is_409_with_the_offset_kept() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PATCH", &path)
                .ietf(V)
                .h("content-type", PARTIAL)
                .h("upload-offset", "0")
                .h("upload-complete", "?0")
                .raw_body(body),
        ),
    );
    feed.send(b"abcd").await;
    let resumed = s.send(append(&path, 0, false, b"")).await;
    let r = answer.await.unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.h("upload-offset"), "4");
    assert_eq!(resumed.status, 409);
    assert!(resumed.text().contains(MISMATCH));
}

#[tokio::test]
async fn append_during_shutdown_is_503() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PATCH", &path)
                .ietf(V)
                .h("content-type", PARTIAL)
                .h("upload-offset", "0")
                .h("upload-complete", "?0")
                .raw_body(body),
        ),
    );
    feed.send(b"ab").await;
    s.state.shutdown.cancel();
    let r = answer.await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.h("upload-offset"), "2");
}

#[tokio::test]
async fn append_stalled_is_408() {
    let s = Srv::config(|c| c.body_idle_timeout = Duration::from_millis(50));
    let path = upload(&s, None).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PATCH", &path)
                .ietf(V)
                .h("content-type", PARTIAL)
                .h("upload-offset", "0")
                .h("upload-complete", "?0")
                .raw_body(body),
        ),
    );
    feed.send(b"ab").await;
    let r = answer.await.unwrap();
    drop(feed);
    assert_eq!(r.status, 408);
    assert_eq!(r.h("upload-offset"), "2");
}

#[tokio::test]
async fn append_on_a_full_disk_is_507() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    s.faults.disk_full();
    let r = s.send(append(&path, 0, false, b"abc")).await;
    assert_eq!(r.status, 507);
    assert_eq!(r.h("upload-offset"), "0");
    draft_answer(&r, V);
}

#[tokio::test]
async fn append_io_error_is_500() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    s.faults.write_eio();
    let r = s.send(append(&path, 0, false, b"abc")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.h("upload-offset"), "0");
}

#[tokio::test]
async fn delete_is_204() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let r = s.send(req("DELETE", &path).ietf(V)).await;
    assert_eq!(r.status, 204);
    draft_answer(&r, V);
    assert_eq!(s.send(req("HEAD", &path).ietf(V)).await.status, 404);
}

#[tokio::test]
async fn delete_unknown_is_404() {
    let s = Srv::new();
    let r = s.send(req("DELETE", NO_SUCH).ietf(V)).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn delete_expired_is_410() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    s.expire(&path).await;
    let r = s.send(req("DELETE", &path).ietf(V)).await;
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn get_unfinished_is_409() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let r = s.send(req("GET", &path).ietf(V)).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.h("upload-offset"), "0");
    draft_answer(&r, V);
}

#[tokio::test]
async fn get_complete_honours_validators_and_ranges() {
    let s = Srv::new();
    let r = s.send(create(true).body(&b"abcd"[..])).await;
    let path = path_of(r.h("location"));
    let full = s.send(req("GET", &path).ietf(V)).await;
    assert_eq!(full.status, 200);
    assert_eq!(&full.body[..], b"abcd");
    let tag = full.h("etag").to_string();
    let r = s
        .send(req("GET", &path).ietf(V).h("range", "bytes=1-2"))
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.h("content-range"), "bytes 1-2/4");
    let r = s
        .send(req("GET", &path).ietf(V).h("if-none-match", &tag))
        .await;
    assert_eq!(r.status, 304);
    let r = s
        .send(req("GET", &path).ietf(V).h("if-match", "\"x\""))
        .await;
    assert_eq!(r.status, 412);
    let r = s
        .send(req("GET", &path).ietf(V).h("range", "bytes=9-"))
        .await;
    assert_eq!(r.status, 416);
    *s.faults.read.lock().unwrap() = Some(std::io::ErrorKind::Other);
    let r = s.send(req("GET", &path).ietf(V)).await;
    assert_eq!(r.status, 500);
    draft_answer(&r, V);
}

#[tokio::test]
async fn delete_while_the_holder_does_not_let_go_is_423() {
    let s = Srv::with(Setup {
        patience: Duration::from_millis(50),
        ..Setup::default()
    });
    let path = upload(&s, None).await;
    let _lease = s.state.uploads.lease(id_of(&path)).await.unwrap();
    let r = s.send(req("DELETE", &path).ietf(V)).await;
    assert_eq!(r.status, 423);
    draft_answer(&r, V);
}

#[tokio::test]
async fn get_unknown_is_404_and_expired_is_410() {
    let s = Srv::new();
    let r = s.send(req("GET", NO_SUCH).ietf(V)).await;
    assert_eq!(r.status, 404);
    draft_answer(&r, V);
    let r = s.send(create(true).body(&b"ab"[..])).await;
    let path = path_of(r.h("location"));
    s.expire(&path).await;
    let r = s.send(req("GET", &path).ietf(V)).await;
    assert_eq!(r.status, 410);
}

// A cut-off body that carries a Content-Digest: discarded whole, answered with the real cause.

fn checked_append(path: &str, body: axum::body::Body) -> Req {
    req("PATCH", path)
        .ietf(V)
        .h("content-type", PARTIAL)
        .h("upload-offset", "0")
        .h("upload-complete", "?0")
        .h(
            "content-digest",
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
        )
        .raw_body(body)
}

#[tokio::test]
async fn append_with_content_digest_cut_by_shutdown_is_503_with_retry_after() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(s.start(checked_append(&path, body)));
    feed.send(b"ab").await;
    s.state.shutdown.cancel();
    let r = answer.await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.has("retry-after"), "{r:?}");
    assert_eq!(r.h("upload-offset"), "0");
    draft_answer(&r, V);
}

#[tokio::test]
async fn append_with_content_digest_taken_over_is_409() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(s.start(checked_append(&path, body)));
    feed.send(b"abcd").await;
    let resumed = s.send(append(&path, 0, false, b"")).await;
    let r = answer.await.unwrap();
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.h("upload-offset"), "0");
    assert_eq!(resumed.status, 204, "{resumed:?}");
}

#[tokio::test]
async fn append_with_content_digest_on_a_full_disk_is_507() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    s.faults.disk_full();
    // Big enough that the store writes during the body, not only at the commit.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let sha =
        ferry_proto::checksum::digest(ferry_proto::checksum::ChecksumAlgorithm::Sha256, &data);
    let field = ferry_proto::digest::format_digest_field("sha-256", &sha);
    let r = s
        .send(append(&path, 0, false, &data).h("content-digest", &field))
        .await;
    assert_eq!(r.status, 507, "{r:?}");
    assert_eq!(r.h("upload-offset"), "0");
    draft_answer(&r, V);
}

#[tokio::test]
async fn metadata_failure_declaring_the_length_is_500_with_a_reference() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    s.faults.meta_broken();
    let r = s.send(append(&path, 0, true, b"abc")).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert!(!r.text().contains(META_FAILURE), "{r:?}");
    assert!(r.text().contains("reference"), "{r:?}");
    draft_answer(&r, V);
}

#[tokio::test]
async fn create_with_metadata_over_the_limit_is_400() {
    let s = Srv::config(|c| c.max_metadata = 100);
    let meta = format!("filename {}", "A".repeat(100));
    let r = s.send(create(false).h("upload-metadata", &meta)).await;
    assert_eq!(r.status, 400, "{r:?}");
    draft_answer(&r, V);
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn create_complete_chunked_past_the_max_size_is_413() {
    let s = Srv::config(|c| c.max_size = Some(1024));
    // No length anywhere: only the bytes counted can hit the limit.
    let r = s.send(create(true).chunked(vec![7u8; 64 * 1024])).await;
    assert_eq!(r.status, 413, "{r:?}");
    let r = s.send(create(true).chunked(vec![7u8; 1024])).await;
    assert_eq!(r.status, 201, "{r:?}");
}

#[tokio::test]
async fn append_declaring_a_length_that_cannot_fit_is_507() {
    let s = Srv::new();
    let path = upload(&s, None).await;
    let r = s
        // The largest Structured Fields integer: about 1 PB.
        .send(append(&path, 0, false, b"ab").h("upload-length", "999999999999999"))
        .await;
    assert_eq!(r.status, 507, "{r:?}");
}
