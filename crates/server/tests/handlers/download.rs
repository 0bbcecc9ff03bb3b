//! Downloads: GET (and plain HEAD, without `Tus-Resumable`) of `/files/{id}`.

use crate::support::*;

const DATA: &[u8] = b"0123456789";

async fn ten(s: &Srv) -> String {
    s.finished(DATA).await
}

fn etag(path: &str) -> String {
    format!("\"u-{}\"", id_of(path))
}

#[tokio::test]
async fn get_is_200_with_the_bytes_and_validators() {
    let s = Srv::new();
    let path = ten(&s).await;
    let r = s.send(req("GET", &path)).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], DATA);
    assert_eq!(r.h("content-length"), "10");
    assert_eq!(r.h("content-type"), "application/octet-stream");
    assert_eq!(r.h("accept-ranges"), "bytes");
    assert_eq!(r.h("etag"), etag(&path));
    assert!(r.has("last-modified"));
    assert!(r.h("repr-digest").contains("sha-256=:"), "{r:?}");
    assert_eq!(
        r.h("content-security-policy"),
        "default-src 'none'; sandbox"
    );
    assert!(r.h("content-disposition").starts_with("attachment"));
    assert!(!r.has("tus-resumable"));
}

#[tokio::test]
async fn get_of_an_empty_upload_is_200() {
    let s = Srv::new();
    let path = s.finished(b"").await;
    let r = s.send(req("GET", &path)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("content-length"), "0");
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn get_names_the_file_from_metadata() {
    let s = Srv::new();
    // filename "a.txt"
    let r = s
        .send(
            req("POST", "/files/")
                .tus()
                .h("upload-length", "1")
                .h("upload-metadata", "filename YS50eHQ="),
        )
        .await;
    let path = path_of(r.h("location"));
    assert_eq!(s.send(patch(&path, 0, b"x")).await.status, 204);
    let r = s.send(req("GET", &path)).await;
    assert_eq!(r.status, 200);
    assert!(r.h("content-disposition").contains("a.txt"), "{r:?}");
}

#[tokio::test]
async fn range_is_206_with_content_range() {
    let s = Srv::new();
    let path = ten(&s).await;
    for (range, cr, body) in [
        ("bytes=2-4", "bytes 2-4/10", &b"234"[..]),
        ("bytes=7-", "bytes 7-9/10", b"789"),
        ("bytes=-2", "bytes 8-9/10", b"89"),
        ("bytes=5-100", "bytes 5-9/10", b"56789"),
    ] {
        let r = s.send(req("GET", &path).h("range", range)).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.h("content-range"), cr, "{range}");
        assert_eq!(&r.body[..], body, "{range}");
        assert_eq!(r.h("content-length"), body.len().to_string());
    }
}

#[tokio::test]
async fn several_ranges_are_206_multipart() {
    let s = Srv::new();
    let path = ten(&s).await;
    let r = s.send(req("GET", &path).h("range", "bytes=0-1,5-6")).await;
    assert_eq!(r.status, 206);
    assert!(
        r.h("content-type")
            .starts_with("multipart/byteranges; boundary=")
    );
    assert_eq!(r.h("content-length"), r.body.len().to_string());
    let text = r.text();
    assert!(
        text.contains("Content-Range: bytes 0-1/10\r\n\r\n01\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Content-Range: bytes 5-6/10\r\n\r\n56\r\n"),
        "{text}"
    );
}

#[tokio::test]
async fn unsatisfiable_range_is_416() {
    let s = Srv::new();
    let path = ten(&s).await;
    for range in ["bytes=10-", "bytes=20-30", "bytes=-0"] {
        let r = s.send(req("GET", &path).h("range", range)).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.h("content-range"), "bytes */10", "{range}");
    }
}

#[tokio::test]
async fn unusable_range_is_200() {
    let s = Srv::new();
    let path = ten(&s).await;
    let many: Vec<String> = (0..65).map(|i| format!("{i}-{i}")).collect();
    for range in [
        "items=0-1".to_string(),
        "bytes=5-2".into(),
        format!("bytes={}", many.join(",")),
    ] {
        let r = s.send(req("GET", &path).h("range", &range)).await;
        assert_eq!(r.status, 200, "{range}");
        assert_eq!(&r.body[..], DATA);
    }
}

#[tokio::test]
async fn if_range_with_a_stale_tag_is_200() {
    let s = Srv::new();
    let path = ten(&s).await;
    let r = s
        .send(
            req("GET", &path)
                .h("range", "bytes=0-1")
                .h("if-range", "\"other\""),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], DATA);
    let r = s
        .send(
            req("GET", &path)
                .h("range", "bytes=0-1")
                .h("if-range", &etag(&path)),
        )
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(&r.body[..], b"01");
}

#[tokio::test]
async fn if_none_match_is_304() {
    let s = Srv::new();
    let path = ten(&s).await;
    for inm in [etag(&path), "*".into(), format!("W/{}", etag(&path))] {
        let r = s.send(req("GET", &path).h("if-none-match", &inm)).await;
        assert_eq!(r.status, 304, "{inm}");
        assert_eq!(r.h("etag"), etag(&path));
        assert!(r.body.is_empty());
    }
    let r = s.send(req("GET", &path).h("if-none-match", "\"x\"")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn if_modified_since_is_304() {
    let s = Srv::new();
    let path = ten(&s).await;
    let r = s
        .send(req("GET", &path).h("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT"))
        .await;
    assert_eq!(r.status, 304);
    let r = s
        .send(req("GET", &path).h("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT"))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn if_match_failure_is_412() {
    let s = Srv::new();
    let path = ten(&s).await;
    let r = s.send(req("GET", &path).h("if-match", "\"other\"")).await;
    assert_eq!(r.status, 412);
    assert_eq!(r.h("etag"), etag(&path));
    let r = s.send(req("GET", &path).h("if-match", &etag(&path))).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn unfinished_is_409_with_the_offset() {
    let s = Srv::new();
    let path = s.tus_upload(Some(10)).await;
    assert_eq!(s.send(patch(&path, 0, b"abc")).await.status, 204);
    let r = s.send(req("GET", &path)).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.h("upload-offset"), "3");
    let path = s.tus_upload(None).await;
    let r = s.send(req("GET", &path)).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.h("upload-offset"), "0");
}

#[tokio::test]
async fn unknown_is_404() {
    let s = Srv::new();
    let r = s
        .send(req("GET", "/files/00000000000000000000000000000000"))
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn expired_is_410() {
    let s = Srv::new();
    let path = ten(&s).await;
    s.expire(&path).await;
    let r = s.send(req("GET", &path)).await;
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn read_failure_is_500() {
    let s = Srv::new();
    let path = ten(&s).await;
    *s.faults.read.lock().unwrap() = Some(std::io::ErrorKind::Other);
    let r = s.send(req("GET", &path)).await;
    assert_eq!(r.status, 500);
}

// Plain HEAD (no Tus-Resumable).

#[tokio::test]
async fn head_is_200_like_get_without_a_body() {
    let s = Srv::new();
    let path = ten(&s).await;
    let r = s.send(req("HEAD", &path).h("range", "bytes=0-1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("content-length"), "10");
    assert_eq!(r.h("etag"), etag(&path));
    assert_eq!(r.h("accept-ranges"), "bytes");
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn head_if_none_match_is_304() {
    let s = Srv::new();
    let path = ten(&s).await;
    let r = s
        .send(req("HEAD", &path).h("if-none-match", &etag(&path)))
        .await;
    assert_eq!(r.status, 304);
}

#[tokio::test]
async fn head_if_match_failure_is_412() {
    let s = Srv::new();
    let path = ten(&s).await;
    let r = s.send(req("HEAD", &path).h("if-match", "\"other\"")).await;
    assert_eq!(r.status, 412);
    assert_eq!(r.h("etag"), etag(&path));
}

#[tokio::test]
async fn plain_head_answers_as_get_would() {
    let s = Srv::new();
    let unknown = "/files/00000000000000000000000000000000";
    assert_eq!(s.send(req("HEAD", unknown)).await.status, 404);
    assert_eq!(s.send(req("GET", unknown)).await.status, 404);
    let unfinished = s.tus_upload(Some(10)).await;
    let r = s.send(req("HEAD", &unfinished)).await;
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.h("upload-offset"), "0");
    let expired = ten(&s).await;
    s.expire(&expired).await;
    assert_eq!(s.send(req("HEAD", &expired)).await.status, 410);
}

#[tokio::test]
async fn if_unmodified_since_before_the_change_is_412() {
    let s = Srv::new();
    let path = ten(&s).await;
    let r = s
        .send(req("GET", &path).h("if-unmodified-since", "Thu, 01 Jan 1970 00:00:00 GMT"))
        .await;
    assert_eq!(r.status, 412, "{r:?}");
    let later =
        httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(60));
    let r = s
        .send(req("GET", &path).h("if-unmodified-since", &later))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // If-Match wins over it (RFC 9110 §13.1.4).
    let r = s
        .send(
            req("GET", &path)
                .h("if-match", "*")
                .h("if-unmodified-since", "Thu, 01 Jan 1970 00:00:00 GMT"),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn a_ranged_get_of_a_final_reads_each_part_record_once() {
    use std::sync::atomic::Ordering;
    let s = Srv::new();
    let parts = [
        s.partial(b"abc").await,
        s.partial(b"def").await,
        s.partial(b"ghi").await,
    ];
    let r = s
        .send(
            req("POST", "/files/")
                .tus()
                .h("upload-concat", &format!("final;{}", parts.join(" "))),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let fin = path_of(r.h("location"));
    s.faults.meta_gets.store(0, Ordering::SeqCst);
    let r = s
        .send(req("GET", &fin).h("range", "bytes=0-0,4-4,8-8"))
        .await;
    assert_eq!(r.status, 206, "{r:?}");
    for piece in ["a", "e", "i"] {
        assert!(r.text().contains(&format!("\r\n\r\n{piece}\r\n")), "{r:?}");
    }
    assert_eq!(
        s.faults.meta_gets.load(Ordering::SeqCst),
        1 + parts.len(),
        "the final's record, then each part's once"
    );
}
