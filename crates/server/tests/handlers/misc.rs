use crate::support::*;
use ferry_server::config::Cors;

#[tokio::test]
async fn preflight_is_204_with_cors_headers() {
    let s = Srv::config(|c| c.cors = Cors::Any);
    let r = s
        .send(
            req("OPTIONS", "/files/")
                .h("origin", "https://app.example")
                .h("access-control-request-method", "PATCH"),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("access-control-allow-origin"), "*");
    assert!(r.h("access-control-allow-methods").contains("PATCH"));
    assert!(
        r.h("access-control-allow-headers")
            .contains("Upload-Offset")
    );
    assert_eq!(r.h("access-control-max-age"), "86400");
}

#[tokio::test]
async fn preflight_from_an_unlisted_origin_is_204_without_cors_headers() {
    let s = Srv::config(|c| c.cors = Cors::Origins(vec!["https://ok.example".into()]));
    let r = s
        .send(
            req("OPTIONS", "/files/")
                .h("origin", "https://evil.example")
                .h("access-control-request-method", "PATCH"),
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(!r.has("access-control-allow-origin"));
}

#[tokio::test]
async fn simple_request_exposes_headers() {
    let s = Srv::config(|c| c.cors = Cors::Any);
    let r = s
        .send(
            req("OPTIONS", "/files/")
                .tus()
                .h("origin", "https://a.example"),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("access-control-allow-origin"), "*");
    assert!(
        r.h("access-control-expose-headers")
            .contains("Upload-Offset")
    );
    assert_eq!(r.h("x-content-type-options"), "nosniff");
}

#[tokio::test]
async fn unknown_route_is_404() {
    let s = Srv::new();
    for path in [
        "/",
        "/nope",
        "/filesx",
        "/chunksx",
        "/files/abc",
        "/files/abc/def",
    ] {
        let r = s.send(req("GET", path)).await;
        assert_eq!(r.status, 404, "{path}");
    }
}

#[tokio::test]
async fn outside_the_base_path_is_404() {
    let s = Srv::config(|c| c.base_path = "/api".into());
    let r = s
        .send(req("POST", "/files/").tus().h("upload-length", "1"))
        .await;
    assert_eq!(r.status, 404);
    let r = s
        .send(req("POST", "/api/files/").tus().h("upload-length", "1"))
        .await;
    assert_eq!(r.status, 201);
    assert!(path_of(r.h("location")).starts_with("/api/files/"));
}

#[tokio::test]
async fn healthz_get_and_head_are_200() {
    let s = Srv::new();
    let r = s.send(req("GET", "/healthz")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok\n");
    let r = s.send(req("HEAD", "/healthz")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn healthz_other_methods_are_405() {
    let s = Srv::new();
    let r = s.send(req("POST", "/healthz")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.h("allow"), "GET, HEAD");
}

#[tokio::test]
async fn bad_method_override_is_400() {
    let s = Srv::new();
    let r = s
        .send(
            req("POST", "/files/")
                .tus()
                .h("x-http-method-override", "TRACE"),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.h("tus-resumable"), TUS);
}

#[tokio::test]
async fn method_override_turns_post_into_patch() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let r = s
        .send(
            req("POST", &path)
                .tus()
                .h("x-http-method-override", "PATCH")
                .h("content-type", "application/offset+octet-stream")
                .h("upload-offset", "0")
                .body(&b"abc"[..]),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.h("upload-offset"), "3");
}

#[tokio::test]
async fn method_override_is_ignored_on_other_methods() {
    let s = Srv::new();
    let path = s.finished(b"abc").await;
    // A GET that says DELETE stays a GET.
    let r = s
        .send(req("GET", &path).h("x-http-method-override", "DELETE"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"abc");
}
