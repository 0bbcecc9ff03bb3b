//! tus on the collection `/files/`: OPTIONS, creation, creation-with-upload, deferred length,
//! concatenation.

use crate::support::*;

fn create() -> Req {
    req("POST", "/files/").tus()
}

fn with_upload(length: u64, data: &[u8]) -> Req {
    create()
        .h("upload-length", &length.to_string())
        .h("content-type", "application/offset+octet-stream")
        .body(data.to_vec())
}

/// The one upload the store holds (for requests whose answer has not come yet).
async fn only_upload(s: &Srv) -> String {
    let all = s.state.uploads.meta().list().await.unwrap();
    assert_eq!(all.len(), 1);
    format!("/files/{}", all[0].id)
}

async fn count(s: &Srv) -> usize {
    s.state.uploads.meta().list().await.unwrap().len()
}

#[tokio::test]
async fn options_is_204_with_capabilities() {
    let s = Srv::config(|c| c.max_size = Some(1000));
    let r = s.send(req("OPTIONS", "/files/")).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("tus-version"), "1.0.0");
    assert!(r.h("tus-extension").contains("creation-with-upload"));
    assert!(r.h("tus-extension").contains("concatenation-unfinished"));
    assert!(r.h("tus-checksum-algorithm").contains("sha1"));
    assert_eq!(r.h("tus-max-size"), "1000");
}

#[tokio::test]
async fn other_methods_are_405() {
    let s = Srv::new();
    for m in ["GET", "PUT", "DELETE", "PATCH"] {
        let r = s.send(req(m, "/files/").tus()).await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.h("allow"), "OPTIONS, POST");
    }
}

#[tokio::test]
async fn post_is_201_with_location() {
    let s = Srv::new();
    let r = s
        .send(
            create()
                .h("upload-length", "10")
                .h("host", "ferry.example:8080"),
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(r.h("location").starts_with("/files/"), "{r:?}");
    assert_eq!(r.h("tus-resumable"), TUS);
    assert!(r.has("upload-expires"));
    let head = s.send(req("HEAD", &path_of(r.h("location"))).tus()).await;
    assert_eq!(head.h("upload-offset"), "0");
    assert_eq!(head.h("upload-length"), "10");
}

#[tokio::test]
async fn post_with_deferred_length_is_201() {
    let s = Srv::new();
    let r = s.send(create().h("upload-defer-length", "1")).await;
    assert_eq!(r.status, 201);
    let head = s.send(req("HEAD", &path_of(r.h("location"))).tus()).await;
    assert_eq!(head.h("upload-defer-length"), "1");
    assert!(!head.has("upload-length"));
}

#[tokio::test]
async fn post_uses_public_url() {
    let s = Srv::config(|c| c.public_url = Some("https://up.example".into()));
    let r = s
        .send(create().h("upload-length", "1").h("host", "internal:1"))
        .await;
    assert_eq!(r.status, 201);
    assert!(r.h("location").starts_with("https://up.example/files/"));
}

#[tokio::test]
async fn creation_with_upload_is_201_with_offset() {
    let s = Srv::new();
    let r = s.send(with_upload(10, b"hello")).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.h("upload-offset"), "5");
    let head = s.send(req("HEAD", &path_of(r.h("location"))).tus()).await;
    assert_eq!(head.h("upload-offset"), "5");
}

#[tokio::test]
async fn creation_with_whole_upload_and_digest_is_201() {
    let s = Srv::new();
    let r = s
        .send(with_upload(5, b"hello").h("want-repr-digest", "sha-256=1"))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.h("upload-offset"), "5");
    assert!(
        r.h("repr-digest")
            .contains("sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:"),
        "{r:?}"
    );
}

#[tokio::test]
async fn missing_tus_resumable_is_412() {
    let s = Srv::new();
    let r = s.send(req("POST", "/files/").h("upload-length", "1")).await;
    assert_eq!(r.status, 412);
    assert_eq!(r.h("tus-version"), "1.0.0");
}

#[tokio::test]
async fn wrong_tus_version_is_412() {
    let s = Srv::new();
    let r = s
        .send(
            req("POST", "/files/")
                .h("tus-resumable", "0.2.2")
                .h("upload-length", "1"),
        )
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(r.h("tus-version"), "1.0.0");
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn length_header_problems_are_400() {
    let s = Srv::new();
    let cases: Vec<(&str, Req)> = vec![
        ("neither", create()),
        (
            "both",
            create()
                .h("upload-length", "1")
                .h("upload-defer-length", "1"),
        ),
        ("negative", create().h("upload-length", "-1")),
        ("not a number", create().h("upload-length", "ten")),
        (
            "too large",
            create().h("upload-length", "99999999999999999999"),
        ),
        ("defer 0", create().h("upload-defer-length", "0")),
        (
            "twice",
            create().h("upload-length", "1").h("upload-length", "1"),
        ),
    ];
    for (case, r) in cases {
        let r = s.send(r).await;
        assert_eq!(r.status, 400, "{case}");
        assert_eq!(r.h("tus-resumable"), TUS, "{case}");
    }
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn malformed_metadata_is_400() {
    let s = Srv::new();
    for m in ["name !!!", "a b c", "a,a"] {
        let r = s
            .send(create().h("upload-length", "1").h("upload-metadata", m))
            .await;
        assert_eq!(r.status, 400, "{m}");
    }
}

#[tokio::test]
async fn malformed_concat_is_400() {
    let s = Srv::new();
    for c in ["whole", "final;", "final"] {
        let r = s
            .send(create().h("upload-length", "1").h("upload-concat", c))
            .await;
        assert_eq!(r.status, 400, "{c}");
    }
}

#[tokio::test]
async fn unknown_checksum_algorithm_is_400_and_closes() {
    let s = Srv::new();
    let r = s
        .send(with_upload(3, b"abc").h("upload-checksum", "whirlpool AAAA"))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.closes());
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn max_size_is_413() {
    let s = Srv::config(|c| c.max_size = Some(100));
    let r = s.send(create().h("upload-length", "101")).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.h("tus-max-size"), "100");
    let r = s.send(create().h("upload-length", "100")).await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn body_longer_than_length_is_413() {
    let s = Srv::new();
    let r = s.send(with_upload(2, b"abc")).await;
    assert_eq!(r.status, 413);
    assert!(r.closes());
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn chunked_body_longer_than_length_is_413_and_leaves_nothing() {
    let s = Srv::new();
    let r = s
        .send(
            create()
                .h("upload-length", "2")
                .h("content-type", "application/offset+octet-stream")
                .chunked(&b"abc"[..]),
        )
        .await;
    assert_eq!(r.status, 413);
    assert!(r.closes());
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn body_with_wrong_content_type_is_415() {
    let s = Srv::new();
    let r = s
        .send(
            create()
                .h("upload-length", "3")
                .h("content-type", "text/plain")
                .body(&b"abc"[..]),
        )
        .await;
    assert_eq!(r.status, 415);
    assert!(r.closes());
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn content_encoding_is_415() {
    let s = Srv::new();
    let r = s
        .send(with_upload(3, b"abc").h("content-encoding", "gzip"))
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(r.h("accept-encoding"), "identity");
    assert_eq!(r.h("tus-resumable"), TUS);
    assert!(r.closes());
    assert_eq!(count(&s).await, 0);
    let r = s
        .send(with_upload(3, b"abc").h("content-encoding", "identity"))
        .await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn checksum_mismatch_is_460_and_leaves_nothing() {
    let s = Srv::new();
    // sha1 of "xyz", not of "abc".
    let r = s
        .send(with_upload(3, b"abc").h("upload-checksum", "sha1 Zm9vYmFyZm9vYmFyZm9vYmFyZm8="))
        .await;
    assert_eq!(r.status, 460);
    assert_eq!(r.h("upload-offset"), "0");
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn checksum_match_is_201() {
    let s = Srv::new();
    // sha1("abc")
    let r = s
        .send(with_upload(3, b"abc").h("upload-checksum", "sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0="))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.h("upload-offset"), "3");
}

#[tokio::test]
async fn announced_trailer_never_sent_is_400() {
    let s = Srv::new();
    let r = s
        .send(
            create()
                .h("upload-length", "3")
                .h("content-type", "application/offset+octet-stream")
                .h("trailer", "Upload-Checksum")
                .chunked(&b"abc"[..]),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.h("upload-offset"), "0");
    assert!(r.closes());
}

#[tokio::test]
async fn body_cut_off_is_400_with_the_offset_kept() {
    let s = Srv::new();
    let (feed, body) = fed_body();
    let pending = s.start(
        create()
            .h("upload-length", "10")
            .h("content-type", "application/offset+octet-stream")
            .raw_body(body),
    );
    let answer = tokio::spawn(pending);
    feed.send(b"abcd").await;
    feed.fail().await;
    let r = answer.await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.h("upload-offset"), "4");
    assert!(r.closes());
    // No Location on an error: the upload is found through the store here.
    let head = s.send(req("HEAD", &only_upload(&s).await).tus()).await;
    assert_eq!(head.h("upload-offset"), "4");
}

#[tokio::test]
async fn takeover_during_creation_with_upload_is_409() {
    let s = Srv::new();
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            create()
                .h("upload-length", "10")
                .h("content-type", "application/offset+octet-stream")
                .raw_body(body),
        ),
    );
    feed.send(b"abc").await;
    let path = only_upload(&s).await;
    // A newer request (a resuming client) takes the upload over.
    let head = s.send(patch(&path, 0, b"")).await;
    let r = answer.await.unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.h("upload-offset"), "3");
    assert_eq!(head.status, 409, "{head:?}");
    assert_eq!(head.h("upload-offset"), "3");
}

#[tokio::test]
async fn shutdown_during_creation_with_upload_is_503() {
    let s = Srv::new();
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            create()
                .h("upload-length", "10")
                .h("content-type", "application/offset+octet-stream")
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
async fn stalled_body_is_408() {
    let s = Srv::config(|c| c.body_idle_timeout = std::time::Duration::from_millis(50));
    let (feed, body) = fed_body();
    let r = s
        .send(
            create()
                .h("upload-length", "10")
                .h("content-type", "application/offset+octet-stream")
                .raw_body(body),
        )
        .await;
    drop(feed);
    assert_eq!(r.status, 408);
    assert_eq!(r.h("upload-offset"), "0");
}

#[tokio::test]
async fn length_that_cannot_fit_is_507() {
    let s = Srv::new();
    *s.faults.free.lock().unwrap() = Some(10 * 1024 * 1024);
    let r = s
        .send(create().h("upload-length", &(20u64 << 20).to_string()))
        .await;
    assert_eq!(r.status, 507);
    assert_eq!(count(&s).await, 0);
    // A deferred length is not checked up front.
    let r = s.send(create().h("upload-defer-length", "1")).await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn disk_full_during_creation_with_upload_is_507_with_offset() {
    let s = Srv::new();
    s.faults.disk_full();
    let r = s.send(with_upload(10, b"abc")).await;
    assert_eq!(r.status, 507);
    assert_eq!(r.h("upload-offset"), "0");
    assert!(r.closes());
}

#[tokio::test]
async fn data_store_failure_at_creation_is_500() {
    let s = Srv::new();
    *s.faults.create.lock().unwrap() = Some(std::io::ErrorKind::Other);
    let r = s.send(create().h("upload-length", "1")).await;
    assert_eq!(r.status, 500);
    assert_eq!(count(&s).await, 0);
}

#[tokio::test]
async fn io_error_during_creation_with_upload_is_500_with_offset() {
    let s = Srv::new();
    s.faults.write_eio();
    let r = s.send(with_upload(10, b"abc")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.h("upload-offset"), "0");
}

// Concatenation.

#[tokio::test]
async fn partial_is_201() {
    let s = Srv::new();
    let r = s
        .send(
            create()
                .h("upload-length", "3")
                .h("upload-concat", "partial"),
        )
        .await;
    assert_eq!(r.status, 201);
    let head = s.send(req("HEAD", &path_of(r.h("location"))).tus()).await;
    assert_eq!(head.h("upload-concat"), "partial");
}

#[tokio::test]
async fn final_of_finished_parts_is_201_and_complete() {
    let s = Srv::new();
    let a = s.partial(b"abc").await;
    let b = s.partial(b"de").await;
    let r = s
        .send(create().h("upload-concat", &format!("final;{a} http://localhost{b}")))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let f = path_of(r.h("location"));
    let head = s.send(req("HEAD", &f).tus()).await;
    assert_eq!(head.h("upload-offset"), "5");
    assert_eq!(head.h("upload-length"), "5");
    assert_eq!(head.h("upload-concat"), format!("final;{a} {b}"));
    let get = s.send(req("GET", &f)).await;
    assert_eq!(&get.body[..], b"abcde");
}

#[tokio::test]
async fn final_of_unfinished_parts_is_201() {
    let s = Srv::new();
    let a = s.partial(b"abc").await;
    let r = s
        .send(
            create()
                .h("upload-concat", "partial")
                .h("upload-length", "2"),
        )
        .await;
    let b = path_of(r.h("location"));
    let r = s
        .send(create().h("upload-concat", &format!("final;{a} {b}")))
        .await;
    assert_eq!(r.status, 201);
    let f = path_of(r.h("location"));
    let head = s.send(req("HEAD", &f).tus()).await;
    assert!(!head.has("upload-offset"), "{head:?}");
    assert_eq!(head.h("upload-length"), "5");
    assert_eq!(s.send(patch(&b, 0, b"de")).await.status, 204);
    let head = s.send(req("HEAD", &f).tus()).await;
    assert_eq!(head.h("upload-offset"), "5");
}

#[tokio::test]
async fn final_with_a_body_is_403() {
    let s = Srv::new();
    let a = s.partial(b"abc").await;
    let r = s
        .send(
            create()
                .h("upload-concat", &format!("final;{a}"))
                .h("content-type", "application/offset+octet-stream")
                .body(&b"x"[..]),
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.closes());
}

#[tokio::test]
async fn final_with_a_length_is_400() {
    let s = Srv::new();
    let a = s.partial(b"abc").await;
    let r = s
        .send(
            create()
                .h("upload-concat", &format!("final;{a}"))
                .h("upload-length", "3"),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn final_naming_a_foreign_or_regular_upload_is_400() {
    // With a public URL the server knows its names (without one, see
    // `edge::absolute_part_urls_name_this_server`).
    let s = Srv::config(|c| c.public_url = Some("https://files.example".into()));
    let regular = s.finished(b"abc").await;
    let a = s.partial(b"abc").await;
    for concat in [
        format!("final;https://elsewhere.example{a}"),
        "final;/other/path".into(),
        format!("final;{regular}"),
    ] {
        let r = s.send(create().h("upload-concat", &concat)).await;
        assert_eq!(r.status, 400, "{concat}");
    }
}

#[tokio::test]
async fn final_naming_an_unknown_part_is_404() {
    let s = Srv::new();
    let a = s.partial(b"abc").await;
    for concat in [
        format!("final;{a} /files/00000000000000000000000000000000"),
        format!("final;{a} /files/not-an-id"),
    ] {
        let r = s.send(create().h("upload-concat", &concat)).await;
        assert_eq!(r.status, 404, "{concat}");
    }
}

#[tokio::test]
async fn final_over_the_max_size_is_413() {
    let s = Srv::config(|c| c.max_size = Some(4));
    let a = s.partial(b"abc").await;
    let b = s.partial(b"de").await;
    let r = s
        .send(create().h("upload-concat", &format!("final;{a} {b}")))
        .await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn shutdown_during_creation_with_upload_and_checksum_is_503() {
    let s = Srv::new();
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            create()
                .h("upload-length", "10")
                .h("content-type", "application/offset+octet-stream")
                .h("upload-checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")
                .raw_body(body),
        ),
    );
    feed.send(b"ab").await;
    s.state.shutdown.cancel();
    let r = answer.await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.has("retry-after"), "{r:?}");
}

/// `Upload-Metadata` of `bytes` bytes (a multiple of 4): one key and valid base64.
pub fn metadata_of(bytes: usize) -> String {
    format!("abc {}", "A".repeat(bytes - 4))
}

#[tokio::test]
async fn metadata_over_the_limit_is_400() {
    let s = Srv::new();
    let r = s
        .send(
            create()
                .h("upload-length", "1")
                .h("upload-metadata", &metadata_of(16 * 1024 + 4)),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.text().contains("Upload-Metadata"), "{r:?}");
    assert_eq!(count(&s).await, 0);
    let r = s
        .send(
            create()
                .h("upload-length", "1")
                .h("upload-metadata", &metadata_of(16 * 1024)),
        )
        .await;
    assert_eq!(r.status, 201, "at the limit: {r:?}");
    let small = Srv::config(|c| c.max_metadata = 100);
    let r = small
        .send(
            create()
                .h("upload-length", "1")
                .h("upload-metadata", &metadata_of(104)),
        )
        .await;
    assert_eq!(r.status, 400, "configurable: {r:?}");
}

#[tokio::test]
async fn creations_past_the_rate_of_one_address_are_429_on_every_protocol() {
    use std::num::NonZeroU32;
    let s = Srv::config(|c| {
        c.creation_rate = Some(ferry_server::config::CreationRate {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        })
    });
    // Uploads that finish give their token back: a folder of small files is never slowed.
    for _ in 0..10 {
        s.finished(b"small file").await;
        let r = s
            .send(
                req("POST", "/files/")
                    .tus()
                    .h("upload-length", "3")
                    .h("content-type", "application/offset+octet-stream")
                    .body(&b"abc"[..]),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    // Unfinished ones keep it. One budget for tus, the IETF draft and chunk sessions.
    let path = s.tus_upload(Some(1)).await;
    s.session(None).await;
    let r = s
        .send(req("POST", "/files/").ietf(8).h("upload-complete", "?0"))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    for r in [
        req("POST", "/files/").tus().h("upload-length", "1"),
        req("POST", "/chunks/"),
        req("POST", "/files/").ietf(8).h("upload-complete", "?0"),
    ] {
        let r = s.send(r).await;
        assert_eq!(r.status, 429, "{r:?}");
        let retry: u64 = r.h("retry-after").parse().unwrap();
        assert!((1..=2).contains(&retry), "{retry}");
    }
    // Uploads already made go on.
    let r = s.send(patch(&path, 0, b"x")).await;
    assert_eq!(r.status, 204, "{r:?}");
}

#[tokio::test]
async fn creations_past_the_unfinished_limit_are_429() {
    let s = Srv::config(|c| c.max_unfinished = Some(2));
    s.tus_upload(Some(5)).await;
    s.session(None).await;
    let r = s
        .send(req("POST", "/files/").tus().h("upload-length", "1"))
        .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.h("retry-after"), "10");
    assert!(r.text().contains("unfinished"), "{}", r.text());
}
