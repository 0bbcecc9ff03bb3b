//! tus on an upload `/files/{id}`: OPTIONS, HEAD, PATCH, DELETE (GET is in `download`).

use crate::support::*;
use std::time::Duration;

const NO_SUCH: &str = "/files/00000000000000000000000000000000";

#[tokio::test]
async fn options_is_204() {
    let s = Srv::new();
    let r = s.send(req("OPTIONS", NO_SUCH)).await;
    assert_eq!(r.status, 204);
    assert!(r.h("tus-extension").contains("termination"));
}

#[tokio::test]
async fn other_methods_are_405() {
    let s = Srv::new();
    let path = s.tus_upload(Some(1)).await;
    for m in ["PUT", "POST", "TRACE"] {
        let r = s.send(req(m, &path).tus()).await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.h("allow"), "OPTIONS, HEAD, GET, PATCH, DELETE");
    }
}

#[tokio::test]
async fn malformed_id_is_404() {
    let s = Srv::new();
    for p in [
        "/files/0000000000000000000000000000000",
        "/files/0000000000000000000000000000000G",
        "/files/00000000000000000000000000000000/x",
        "/files/..%2f..%2fetc",
    ] {
        let r = s.send(req("HEAD", p).tus()).await;
        assert_eq!(r.status, 404, "{p}");
    }
}

// HEAD

#[tokio::test]
async fn head_is_200_with_offset_and_length() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    assert_eq!(s.send(patch(&path, 0, b"abc")).await.status, 204);
    let r = s.send(req("HEAD", &path).tus()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("upload-offset"), "3");
    assert_eq!(r.h("upload-length"), "10");
    assert_eq!(r.h("cache-control"), "no-store");
    assert_eq!(r.h("tus-resumable"), TUS);
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn head_wanting_a_digest_not_ready_is_200_within_the_bound_with_the_crc() {
    let bound = Duration::from_millis(300);
    let s = Srv::config(|c| c.digest_wait = bound);
    let data = vec![7u8; 12 << 20];
    let path = s.finished(&data).await;
    // The read-back that computes SHA-256 cannot finish while reads stall.
    s.faults.stall_reads();
    let want = || req("HEAD", &path).tus().h("want-repr-digest", "sha-256=10");
    let started = std::time::Instant::now();
    let r = s.send(want()).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.h("upload-offset"), (12 << 20).to_string());
    assert!(r.h("repr-digest").contains("crc64nvme=:"), "{r:?}");
    assert!(!r.h("repr-digest").contains("sha-256"), "{r:?}");
    assert!(
        took < bound + Duration::from_secs(2),
        "answered after {took:?}"
    );
    // The job went on: once reads resume, the digest is kept and served.
    s.faults.resume_reads();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = s.send(want()).await;
        if r.h("repr-digest").contains("sha-256=:") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn head_unknown_is_404() {
    let s = Srv::new();
    let r = s.send(req("HEAD", NO_SUCH).tus()).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn head_expired_is_410() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    s.expire(&path).await;
    let r = s.send(req("HEAD", &path).tus()).await;
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn head_wrong_version_is_412() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    let r = s.send(req("HEAD", &path).h("tus-resumable", "2.0.0")).await;
    assert_eq!(r.status, 412);
    assert_eq!(r.h("tus-version"), "1.0.0");
}

#[tokio::test]
async fn plain_head_of_an_unfinished_upload_is_409_like_get() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    let r = s.send(req("HEAD", &path)).await;
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.h("upload-offset"), "0");
}

#[tokio::test]
async fn head_with_a_doubled_tus_resumable_is_400() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    let r = s.send(req("HEAD", &path).tus().tus()).await;
    assert_eq!(r.status, 400);
}

// PATCH

#[tokio::test]
async fn patch_is_204_with_the_new_offset() {
    let s = Srv::new();
    let path = s.tus_upload(Some(6)).await;
    let r = s.send(patch(&path, 0, b"abc")).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("upload-offset"), "3");
    assert!(r.has("upload-expires"));
    let r = s.send(patch(&path, 3, b"def")).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("upload-offset"), "6");
    let get = s.send(req("GET", &path)).await;
    assert_eq!(&get.body[..], b"abcdef");
}

#[tokio::test]
async fn patch_without_body_is_204() {
    let s = Srv::new();
    let path = s.tus_upload(Some(6)).await;
    let r = s.send(patch(&path, 0, b"")).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("upload-offset"), "0");
}

#[tokio::test]
async fn patch_declaring_a_deferred_length_is_204() {
    let s = Srv::new();
    let path = s.tus_upload(None).await;
    let r = s
        .send(patch(&path, 0, b"abc").h("upload-length", "3"))
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("upload-offset"), "3");
    let head = s.send(req("HEAD", &path).tus()).await;
    assert_eq!(head.h("upload-length"), "3");
}

/// A PATCH of `abc` whose `Upload-Checksum` follows the body as a trailer.
async fn patch_with_trailer(s: &Srv, path: &str, checksum: &str) -> Resp {
    use http_body::Frame;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("upload-checksum", checksum.parse().unwrap());
    let frames = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(Frame::data(bytes::Bytes::from_static(b"abc"))),
        Ok(Frame::trailers(trailers)),
    ]);
    let body = axum::body::Body::new(http_body_util::StreamBody::new(frames));
    s.send(
        req("PATCH", path)
            .tus()
            .h("content-type", "application/offset+octet-stream")
            .h("upload-offset", "0")
            .h("trailer", "Upload-Checksum")
            .raw_body(body),
    )
    .await
}

#[tokio::test]
async fn patch_with_checksum_trailer_is_204() {
    use ferry_proto::checksum::{Checksum, ChecksumAlgorithm, digest};
    // Both algorithms a trailer may name are hashed on the way.
    for algorithm in ChecksumAlgorithm::IN_TRAILERS {
        let s = Srv::new();
        let path = s.tus_upload(Some(3)).await;
        let claim = Checksum {
            algorithm,
            digest: digest(algorithm, b"abc"),
        };
        let r = patch_with_trailer(&s, &path, &claim.format()).await;
        assert_eq!(r.status, 204, "{algorithm:?}: {r:?}");
        assert_eq!(r.h("upload-offset"), "3");
    }
}

#[tokio::test]
async fn patch_with_wrong_checksum_trailer_is_460() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    // CRC-32 of "abd".
    let r = patch_with_trailer(&s, &path, "crc32 q0DUYQ==").await;
    assert_eq!(r.status, 460, "{r:?}");
    let head = s.send(req("HEAD", &path).tus()).await;
    assert_eq!(head.h("upload-offset"), "0", "nothing of the body counts");
}

/// The algorithm of a trailer is known only after the body, and the server never reads a
/// request back from its store: algorithms it did not hash on the way go in a header.
#[tokio::test]
async fn patch_with_a_sha1_trailer_is_400_and_names_what_fits() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let r = patch_with_trailer(&s, &path, "sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0=").await;
    assert_eq!(r.status, 400, "{r:?}");
    let text = r.text();
    assert!(
        text.contains("crc32 or crc64nvme") && text.contains("sha1 in a header"),
        "{text}"
    );
    let head = s.send(req("HEAD", &path).tus()).await;
    assert_eq!(head.h("upload-offset"), "0", "nothing of the body counts");
    // The same checksum in a header is fine.
    let r = s
        .send(patch(&path, 0, b"abc").h("upload-checksum", "sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0="))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
}

#[tokio::test]
async fn patch_wrong_version_is_412() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let r = s
        .send(
            req("PATCH", &path)
                .h("content-type", "application/offset+octet-stream")
                .h("upload-offset", "0")
                .body(&b"abc"[..]),
        )
        .await;
    assert_eq!(r.status, 412);
    assert!(r.closes());
}

#[tokio::test]
async fn patch_wrong_content_type_is_415() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    for ct in [None, Some("application/octet-stream")] {
        let mut r = req("PATCH", &path).tus().h("upload-offset", "0");
        if let Some(ct) = ct {
            r = r.h("content-type", ct);
        }
        let r = s.send(r.body(&b"abc"[..])).await;
        assert_eq!(r.status, 415, "{ct:?}");
        assert!(r.closes());
    }
}

#[tokio::test]
async fn patch_content_encoding_is_415() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let r = s
        .send(patch(&path, 0, b"abc").h("content-encoding", "br"))
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(r.h("accept-encoding"), "identity");
    assert!(r.closes());
}

#[tokio::test]
async fn patch_header_problems_are_400() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let base = || {
        req("PATCH", &path)
            .tus()
            .h("content-type", "application/offset+octet-stream")
    };
    let cases: Vec<(&str, Req)> = vec![
        ("no offset", base()),
        ("bad offset", base().h("upload-offset", "x")),
        ("negative offset", base().h("upload-offset", "-1")),
        (
            "offset twice",
            base().h("upload-offset", "0").h("upload-offset", "0"),
        ),
        (
            "bad length",
            base().h("upload-offset", "0").h("upload-length", "x"),
        ),
        (
            "changed length",
            base().h("upload-offset", "0").h("upload-length", "4"),
        ),
        (
            "unknown checksum",
            base()
                .h("upload-offset", "0")
                .h("upload-checksum", "crc7 AA=="),
        ),
        (
            "malformed checksum",
            base().h("upload-offset", "0").h("upload-checksum", "sha1"),
        ),
    ];
    for (case, r) in cases {
        let r = s.send(r.body(&b"a"[..])).await;
        assert_eq!(r.status, 400, "{case}");
        assert!(r.closes(), "{case}");
    }
    let head = s.send(req("HEAD", &path).tus()).await;
    assert_eq!(head.h("upload-offset"), "0");
}

#[tokio::test]
async fn patch_deferred_length_below_offset_is_400() {
    let s = Srv::new();
    let path = s.tus_upload(None).await;
    assert_eq!(s.send(patch(&path, 0, b"abc")).await.status, 204);
    let r = s.send(patch(&path, 3, b"").h("upload-length", "2")).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn patch_unknown_is_404() {
    let s = Srv::new();
    let r = s.send(patch(NO_SUCH, 0, b"abc")).await;
    assert_eq!(r.status, 404);
    assert!(r.closes());
}

#[tokio::test]
async fn patch_expired_is_410() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    s.expire(&path).await;
    let r = s.send(patch(&path, 0, b"abc")).await;
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn patch_on_a_final_is_403() {
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
    let r = s.send(patch(&f, 3, b"x")).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn patch_on_a_chunk_session_is_403() {
    let s = Srv::new();
    let session = s.session(Some(3)).await;
    let path = session.replace("/chunks/", "/files/");
    let r = s.send(patch(&path, 0, b"abc")).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn patch_wrong_offset_is_409() {
    let s = Srv::new();
    let path = s.tus_upload(Some(6)).await;
    assert_eq!(s.send(patch(&path, 0, b"abc")).await.status, 204);
    for offset in [0, 2, 4] {
        let r = s.send(patch(&path, offset, b"def")).await;
        assert_eq!(r.status, 409, "{offset}");
        assert_eq!(r.h("upload-offset"), "3");
        assert!(r.closes());
    }
}

#[tokio::test]
async fn patch_past_the_length_is_413() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let r = s.send(patch(&path, 0, b"abcd")).await;
    assert_eq!(r.status, 413);
    assert!(r.closes());
    let head = s.send(req("HEAD", &path).tus()).await;
    assert_eq!(head.h("upload-offset"), "0");
}

#[tokio::test]
async fn chunked_patch_past_the_length_is_413_and_keeps_nothing() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let r = s
        .send(
            req("PATCH", &path)
                .tus()
                .h("content-type", "application/offset+octet-stream")
                .h("upload-offset", "0")
                .chunked(&b"abcd"[..]),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.h("upload-offset"), "0");
    assert!(r.closes());
}

#[tokio::test]
async fn patch_declaring_a_length_over_the_max_is_413() {
    let s = Srv::config(|c| c.max_size = Some(10));
    let path = s.tus_upload(None).await;
    let r = s.send(patch(&path, 0, b"").h("upload-length", "11")).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.h("tus-max-size"), "10");
}

#[tokio::test]
async fn patch_checksum_mismatch_is_460_and_keeps_nothing() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let r = s
        .send(patch(&path, 0, b"abd").h("upload-checksum", "sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0="))
        .await;
    assert_eq!(r.status, 460);
    assert_eq!(r.h("upload-offset"), "0");
    assert!(r.closes());
}

#[tokio::test]
async fn patch_body_cut_off_is_400_with_the_offset_kept() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PATCH", &path)
                .tus()
                .h("content-type", "application/offset+octet-stream")
                .h("upload-offset", "0")
                .raw_body(body),
        ),
    );
    feed.send(b"abcd").await;
    feed.fail().await;
    let r = answer.await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.h("upload-offset"), "4");
    assert!(r.closes());
}

#[tokio::test]
async fn patch_taken_over_is_409_with_the_offset_kept() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PATCH", &path)
                .tus()
                .h("content-type", "application/offset+octet-stream")
                .h("upload-offset", "0")
                .raw_body(body),
        ),
    );
    feed.send(b"abcd").await;
    // The client resumes on a new connection; the old request commits and lets go.
    let head = s.send(req("HEAD", &path).tus()).await;
    assert_eq!(
        head.h("upload-offset"),
        "0",
        "HEAD does not wait for the writer"
    );
    let resumed = s.send(patch(&path, 0, b"")).await;
    let r = answer.await.unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.h("upload-offset"), "4");
    assert_eq!(resumed.status, 409);
    assert_eq!(resumed.h("upload-offset"), "4");
    assert_eq!(s.send(patch(&path, 4, b"efghij")).await.status, 204);
}

#[tokio::test]
async fn patch_while_the_holder_does_not_let_go_is_423() {
    let s = Srv::with(Setup {
        patience: Duration::from_millis(50),
        ..Setup::default()
    });
    let path = s.tus_upload(Some(3)).await;
    let lease = s.state.uploads.lease(id_of(&path)).await.unwrap();
    let r = s.send(patch(&path, 0, b"abc")).await;
    assert_eq!(r.status, 423);
    assert_eq!(r.h("retry-after"), "1");
    assert!(r.closes());
    drop(lease);
    assert_eq!(s.send(patch(&path, 0, b"abc")).await.status, 204);
}

#[tokio::test]
async fn patch_during_shutdown_is_503_with_the_offset_kept() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PATCH", &path)
                .tus()
                .h("content-type", "application/offset+octet-stream")
                .h("upload-offset", "0")
                .raw_body(body),
        ),
    );
    feed.send(b"abcde").await;
    s.state.shutdown.cancel();
    let r = answer.await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.h("upload-offset"), "5");
}

#[tokio::test]
async fn patch_stalled_is_408_with_the_offset_kept() {
    let mut setup = Setup::default();
    setup.config.body_idle_timeout = Duration::from_millis(50);
    let s = Srv::with(setup);
    let path = s.tus_upload(Some(10)).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PATCH", &path)
                .tus()
                .h("content-type", "application/offset+octet-stream")
                .h("upload-offset", "0")
                .raw_body(body),
        ),
    );
    feed.send(b"ab").await;
    let r = answer.await.unwrap();
    drop(feed);
    assert_eq!(r.status, 408);
    assert_eq!(r.h("upload-offset"), "2");
    assert!(r.closes());
}

#[tokio::test]
async fn patch_disk_full_is_507_with_the_offset_kept() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    assert_eq!(s.send(patch(&path, 0, b"abc")).await.status, 204);
    s.faults.disk_full();
    let r = s.send(patch(&path, 3, b"defg")).await;
    assert_eq!(r.status, 507);
    assert_eq!(r.h("upload-offset"), "3");
    assert!(r.closes());
    *s.faults.write.lock().unwrap() = None;
    let r = s.send(patch(&path, 3, b"defg")).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("upload-offset"), "7");
}

#[tokio::test]
async fn patch_io_error_is_500_with_the_offset_kept() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    assert_eq!(s.send(patch(&path, 0, b"abc")).await.status, 204);
    s.faults.write_eio();
    let r = s.send(patch(&path, 3, b"defg")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.h("upload-offset"), "3");
}

// DELETE

#[tokio::test]
async fn delete_is_204_and_the_upload_is_gone() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let r = s.send(req("DELETE", &path).tus()).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("tus-resumable"), TUS);
    assert_eq!(s.send(req("HEAD", &path).tus()).await.status, 404);
}

#[tokio::test]
async fn delete_of_a_part_keeps_the_final() {
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
    assert_eq!(s.send(req("DELETE", &a).tus()).await.status, 204);
    assert_eq!(s.send(req("HEAD", &a).tus()).await.status, 404);
    assert_eq!(&s.send(req("GET", &f)).await.body[..], b"abc");
}

#[tokio::test]
async fn delete_unknown_is_404() {
    let s = Srv::new();
    let r = s.send(req("DELETE", NO_SUCH).tus()).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn delete_expired_is_410() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    s.expire(&path).await;
    let r = s.send(req("DELETE", &path).tus()).await;
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn delete_without_tus_resumable_is_412() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let r = s.send(req("DELETE", &path)).await;
    assert_eq!(r.status, 412);
    assert_eq!(s.send(req("HEAD", &path).tus()).await.status, 200);
}

#[tokio::test]
async fn delete_while_the_holder_does_not_let_go_is_423() {
    let s = Srv::with(Setup {
        patience: Duration::from_millis(50),
        ..Setup::default()
    });
    let path = s.tus_upload(Some(3)).await;
    let _lease = s.state.uploads.lease(id_of(&path)).await.unwrap();
    let r = s.send(req("DELETE", &path).tus()).await;
    assert_eq!(r.status, 423);
}

#[tokio::test]
async fn delete_by_method_override_is_204() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let r = s
        .send(
            req("POST", &path)
                .tus()
                .h("x-http-method-override", "DELETE"),
        )
        .await;
    assert_eq!(r.status, 204);
}

// A cut-off body that carries a checksum: the chunk is discarded (all or nothing), and the
// answer names the real cause, as without a checksum.

fn checked_patch(path: &str, body: axum::body::Body) -> Req {
    req("PATCH", path)
        .tus()
        .h("content-type", "application/offset+octet-stream")
        .h("upload-offset", "0")
        .h("upload-checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")
        .raw_body(body)
}

#[tokio::test]
async fn patch_with_checksum_cut_by_shutdown_is_503_with_retry_after() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(s.start(checked_patch(&path, body)));
    feed.send(b"abcde").await;
    s.state.shutdown.cancel();
    let r = answer.await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.has("retry-after"), "{r:?}");
    assert_eq!(r.h("upload-offset"), "0", "the chunk is all or nothing");
    assert!(r.closes());
}

#[tokio::test]
async fn patch_with_trailer_checksum_cut_by_shutdown_is_503() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PATCH", &path)
                .tus()
                .h("content-type", "application/offset+octet-stream")
                .h("upload-offset", "0")
                .h("trailer", "Upload-Checksum")
                .raw_body(body),
        ),
    );
    feed.send(b"abcde").await;
    s.state.shutdown.cancel();
    let r = answer.await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.h("upload-offset"), "0");
}

#[tokio::test]
async fn patch_with_checksum_taken_over_is_409() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    let (feed, body) = fed_body();
    let answer = tokio::spawn(s.start(checked_patch(&path, body)));
    feed.send(b"abcd").await;
    let resumed = s.send(patch(&path, 0, b"")).await;
    let r = answer.await.unwrap();
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.h("upload-offset"), "0");
    assert_eq!(resumed.status, 204, "{resumed:?}");
}

/// A body big enough that the store writes during it (not only at the commit), with its
/// checksum in tus form.
pub fn big_checked_body() -> (Vec<u8>, String) {
    use ferry_proto::checksum::{Checksum, ChecksumAlgorithm, digest};
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let sum = Checksum {
        algorithm: ChecksumAlgorithm::Sha1,
        digest: digest(ChecksumAlgorithm::Sha1, &data),
    };
    (data, sum.format())
}

#[tokio::test]
async fn patch_with_checksum_on_a_full_disk_is_507() {
    let s = Srv::new();
    let (data, sum) = big_checked_body();
    let path = s.tus_upload(Some(data.len() as u64)).await;
    s.faults.disk_full();
    let r = s
        .send(patch(&path, 0, &data).h("upload-checksum", &sum))
        .await;
    assert_eq!(r.status, 507, "{r:?}");
    assert_eq!(r.h("upload-offset"), "0");
    assert!(r.closes());
}

#[tokio::test]
async fn metadata_failure_declaring_the_length_is_500_with_a_reference() {
    let s = Srv::new();
    let path = s.tus_upload(None).await;
    s.faults.meta_broken();
    let r = s
        .send(patch(&path, 0, b"abc").h("upload-length", "3"))
        .await;
    assert_eq!(r.status, 500, "{r:?}");
    assert!(!r.text().contains(META_FAILURE), "{r:?}");
    assert!(r.text().contains("reference"), "{r:?}");
    assert!(r.closes(), "the body was not read");
}

#[tokio::test]
async fn eio_opening_the_data_before_the_body_is_500_and_closes() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    assert_eq!(s.send(patch(&path, 0, b"abc")).await.status, 204);
    *s.faults.open.lock().unwrap() = Some(std::io::ErrorKind::Other);
    let r = s.send(patch(&path, 3, b"defg")).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(r.h("upload-offset"), "3");
    assert!(r.closes(), "the body was not read");
    assert!(r.text().contains("reference"), "{r:?}");
}

#[tokio::test]
async fn patch_past_the_max_size_with_a_deferred_length_is_413() {
    let s = Srv::config(|c| c.max_size = Some(1024));
    let path = s.tus_upload(None).await;
    let r = s.send(patch(&path, 0, &[7u8; 1000])).await;
    assert_eq!(r.status, 204, "{r:?}");
    // Still no length: the limit is the only bound, and the request's bytes past it are
    // refused (the upload keeps what it had).
    let r = s.send(patch(&path, 1000, &[7u8; 64 * 1024])).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.text().contains("maximum size of 1024"), "{}", r.text());
    let head = s.send(req("HEAD", &path).tus()).await;
    assert_eq!(head.h("upload-offset"), "1000");
    // Declaring a length past the limit later is refused too.
    let r = s
        .send(patch(&path, 1000, b"").h("upload-length", "2048"))
        .await;
    assert_eq!(r.status, 413, "{r:?}");
    let r = s
        .send(patch(&path, 1000, &[7u8; 24]).h("upload-length", "1024"))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.h("upload-offset"), "1024");
}

#[tokio::test]
async fn patch_declaring_a_length_that_cannot_fit_is_507() {
    let s = Srv::new();
    let path = s.tus_upload(None).await;
    let r = s
        .send(patch(&path, 0, b"").h("upload-length", "9200000000000000000"))
        .await;
    assert_eq!(r.status, 507, "{r:?}");
    let head = s.send(req("HEAD", &path).tus()).await;
    assert!(!head.has("upload-length"), "{head:?}");
}

/// A PATCH at offset 0 of `path` whose body the test feeds; the answer arrives on the handle.
fn fed_patch(s: &Srv, path: &str) -> (Feed, tokio::task::JoinHandle<Resp>) {
    let (feed, body) = fed_body();
    let answer = tokio::spawn(
        s.start(
            req("PATCH", path)
                .tus()
                .h("content-type", "application/offset+octet-stream")
                .h("upload-offset", "0")
                .raw_body(body),
        ),
    );
    (feed, answer)
}

/// A PATCH whose body the test feeds: `piece` every `every`, `pieces` times (then the body
/// ends), or until the answer comes.
async fn dripped_patch(
    s: &Srv,
    path: &str,
    piece: &'static [u8],
    every: Duration,
    pieces: usize,
) -> Resp {
    let (feed, answer) = fed_patch(s, path);
    let dripping = feed.drip(piece, every, pieces);
    let r = answer.await.unwrap();
    dripping.abort();
    r
}

#[tokio::test]
async fn patch_dripping_below_the_minimum_rate_is_408_with_the_offset_kept() {
    let mut setup = Setup::default();
    setup.config.min_body_rate = Some(1000);
    setup.config.body_rate_window = Duration::from_millis(300);
    let s = Srv::with(setup);
    let path = s.tus_upload(Some(1 << 20)).await;
    // A byte every 20 ms: well inside the idle timeout, far below 1,000 bytes/s.
    let r = dripped_patch(&s, &path, b"x", Duration::from_millis(20), usize::MAX).await;
    assert_eq!(r.status, 408, "{r:?}");
    assert!(
        r.text().contains("slower than 1000 bytes/s"),
        "{}",
        r.text()
    );
    let kept: u64 = r.h("upload-offset").parse().unwrap();
    assert!((1..=20).contains(&kept), "{kept}");
    assert!(r.closes());
}

#[tokio::test]
async fn patch_above_the_minimum_rate_is_not_cut() {
    let mut setup = Setup::default();
    setup.config.min_body_rate = Some(1000);
    setup.config.body_rate_window = Duration::from_millis(100);
    let s = Srv::with(setup);
    let path = s.tus_upload(Some(4000)).await;
    // 100 bytes every 20 ms (about 5,000 bytes/s) across many windows.
    let r = dripped_patch(&s, &path, &[7u8; 100], Duration::from_millis(20), 40).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.h("upload-offset"), "4000");
}

#[tokio::test]
async fn a_body_waits_in_its_socket_while_the_buffer_memory_is_spent() {
    let mut setup = Setup::default();
    // Room for one body at a time: its two write buffers and its read buffer.
    setup.config.buffer_memory = 700 * 1024;
    let s = Srv::with(setup);
    let first = s.tus_upload(Some(4)).await;
    let second = s.tus_upload(Some(4)).await;
    let (feed_a, answer_a) = fed_patch(&s, &first);
    feed_a.send(b"ab").await;
    let (feed_b, answer_b) = fed_patch(&s, &second);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), feed_b.send(b"cd"))
            .await
            .is_err(),
        "the second body is not read while the first holds the memory"
    );
    feed_a.send(b"cd").await;
    drop(feed_a);
    assert_eq!(answer_a.await.unwrap().status, 204);
    tokio::time::timeout(Duration::from_secs(5), feed_b.send(b"ef"))
        .await
        .expect("read once the first is done");
    drop(feed_b);
    let r = answer_b.await.unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.h("upload-offset"), "4");
}

#[tokio::test]
async fn a_body_that_waits_for_buffer_memory_past_the_idle_timeout_is_503() {
    let mut setup = Setup::default();
    setup.config.buffer_memory = 700 * 1024;
    setup.config.body_idle_timeout = Duration::from_millis(200);
    let s = Srv::with(setup);
    let first = s.tus_upload(Some(4)).await;
    let second = s.tus_upload(Some(4)).await;
    let (feed, holder) = fed_patch(&s, &first);
    feed.send(b"ab").await;
    // The holder keeps sending, so it is never idle; the waiter never gets memory.
    let keep = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            feed.send(b"").await;
        }
        feed.send(b"cd").await;
    });
    let r = s.send(patch(&second, 0, b"wxyz")).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.h("retry-after"), "1");
    assert_eq!(r.h("upload-offset"), "0");
    assert!(r.closes());
    keep.await.unwrap();
    assert_eq!(holder.await.unwrap().status, 204);
}
