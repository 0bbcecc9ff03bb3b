//! The server's edges: the URLs it builds, the host check against DNS rebinding, cross-origin
//! access, and what error bodies reveal (docs/security.md).

use crate::support::*;
use ferry_server::config::{Cors, HostPolicy, ServerConfig};

const EVIL: &str = "evil.example";

fn tus_create() -> Req {
    req("POST", "/files/").tus().h("upload-length", "1")
}

/// The three ways to create an upload, each with `host`.
fn creations(host: &str) -> [Req; 3] {
    [
        tus_create().h("host", host),
        req("POST", "/files/")
            .ietf(8)
            .h("upload-complete", "?0")
            .h("host", host),
        req("POST", "/chunks/").h("host", host),
    ]
}

fn loopback(c: &mut ServerConfig) {
    c.local_addr = Some("127.0.0.1:1080".parse().unwrap());
}

#[tokio::test]
async fn location_is_a_path_whatever_the_host() {
    let s = Srv::new();
    for (r, collection) in creations(EVIL)
        .into_iter()
        .zip(["/files/", "/files/", "/chunks/"])
    {
        let r = s.send(r).await;
        assert_eq!(r.status, 201, "{r:?}");
        assert!(r.h("location").starts_with(collection), "{r:?}");
    }
}

#[tokio::test]
async fn location_under_a_public_url_is_absolute() {
    let s = Srv::config(|c| c.public_url = Some("https://files.example".into()));
    for r in creations(EVIL) {
        let r = s.send(r).await;
        assert_eq!(r.status, 201, "{r:?}");
        assert!(
            r.h("location").starts_with("https://files.example/"),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn location_behind_a_trusted_proxy_is_what_it_appended() {
    let s = Srv::config(|c| c.trust_proxy = true);
    // The client sent the first element; the proxy appended the last.
    let r = s
        .send(tus_create().h(
            "forwarded",
            "host=evil.example;proto=http, host=files.example;proto=https",
        ))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(
        r.h("location").starts_with("https://files.example/files/"),
        "{r:?}"
    );
    let r = s
        .send(
            tus_create()
                .h("x-forwarded-host", "evil.example, files.example")
                .h("x-forwarded-proto", "http, https"),
        )
        .await;
    assert!(
        r.h("location").starts_with("https://files.example/files/"),
        "{r:?}"
    );
    // A proxy that adds a line of its own instead of appending: the last line is its.
    let r = s
        .send(
            tus_create()
                .h("forwarded", "host=evil.example;proto=http")
                .h("forwarded", "host=files.example;proto=https"),
        )
        .await;
    assert!(
        r.h("location").starts_with("https://files.example/files/"),
        "{r:?}"
    );
    // Without --trust-proxy, forwarded headers are the client's word: ignored.
    let s = Srv::new();
    let r = s.send(tus_create().h("x-forwarded-host", EVIL)).await;
    assert!(r.h("location").starts_with("/files/"), "{r:?}");
}

#[tokio::test]
async fn two_host_headers_are_400() {
    let s = Srv::new();
    let r = s
        .send(tus_create().h("host", "localhost").h("host", EVIL))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.text().contains("one Host"), "{r:?}");
    assert!(r.closes());
    let r = s.send(tus_create().h("host", "a b")).await;
    assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test]
async fn a_loopback_server_answers_a_foreign_host_with_421() {
    let s = Srv::config(loopback);
    let path = s.tus_upload(Some(1)).await;
    for r in [
        tus_create().h("host", "evil.example:1080"),
        req("HEAD", &path).tus().h("host", EVIL),
        req("GET", &path).h("host", "192.168.1.5:1080"),
        req("OPTIONS", "/files/")
            .h("host", EVIL)
            .h("origin", "http://evil.example:1080")
            .h("access-control-request-method", "POST"),
        // An absolute-form target names the host too.
        req("GET", "http://evil.example:1080/healthz"),
    ] {
        let r = s.send(r).await;
        assert_eq!(r.status, 421, "{r:?}");
        assert!(
            r.text().contains("--allowed-hosts evil.example") || r.text().contains("192.168.1.5")
        );
        assert!(!r.has("access-control-allow-origin"));
    }
    for host in [
        "localhost:1080",
        "127.0.0.1:1080",
        "[::1]:1080",
        "LocalHost.",
        "app.localhost",
    ] {
        let r = s.send(tus_create().h("host", host)).await;
        assert_eq!(r.status, 201, "{host}: {r:?}");
    }
}

#[tokio::test]
async fn a_loopback_server_answers_its_public_url_and_allowed_hosts() {
    let s = Srv::config(|c| {
        loopback(c);
        c.public_url = Some("https://files.example".into());
    });
    assert_eq!(
        s.send(tus_create().h("host", "files.example")).await.status,
        201
    );
    assert_eq!(s.send(tus_create().h("host", EVIL)).await.status, 421);
    let s = Srv::config(|c| {
        loopback(c);
        c.allowed_hosts = HostPolicy::Only(vec!["dev.example".into()]);
    });
    assert_eq!(
        s.send(tus_create().h("host", "dev.example:1080"))
            .await
            .status,
        201
    );
    assert_eq!(s.send(tus_create().h("host", EVIL)).await.status, 421);
    let s = Srv::config(|c| {
        loopback(c);
        c.allowed_hosts = HostPolicy::Any;
    });
    assert_eq!(s.send(tus_create().h("host", EVIL)).await.status, 201);
}

#[tokio::test]
async fn a_server_bound_to_every_address_answers_any_host_unless_listed() {
    let s = Srv::config(|c| c.local_addr = Some("0.0.0.0:1080".parse().unwrap()));
    assert_eq!(s.send(tus_create().h("host", EVIL)).await.status, 201);
    let s = Srv::config(|c| {
        c.local_addr = Some("0.0.0.0:1080".parse().unwrap());
        c.allowed_hosts = HostPolicy::Only(vec!["files.example".into()]);
    });
    assert_eq!(s.send(tus_create().h("host", EVIL)).await.status, 421);
    assert_eq!(
        s.send(tus_create().h("host", "files.example")).await.status,
        201
    );
    // Listed hosts say which names it has: others are refused, IP literals (health checks) not.
    assert_eq!(
        s.send(tus_create().h("host", "10.0.0.5:1080")).await.status,
        201
    );
}

#[tokio::test]
async fn by_default_no_origin_has_cross_origin_access() {
    let s = Srv::new();
    let path = s.finished(b"x").await;
    let preflight = s
        .send(
            req("OPTIONS", "/files/")
                .h("origin", "https://app.example")
                .h("access-control-request-method", "POST"),
        )
        .await;
    assert_eq!(preflight.status, 204);
    for r in [
        preflight,
        s.send(req("GET", &path).h("origin", "https://app.example"))
            .await,
        s.send(req("HEAD", &path).tus().h("origin", "https://app.example"))
            .await,
    ] {
        assert!(
            r.headers
                .keys()
                .all(|k| !k.as_str().starts_with("access-control-")),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn a_state_change_from_another_origins_page_is_403() {
    let s = Srv::new();
    let path = s.tus_upload(Some(3)).await;
    let cross = |r: Req| {
        r.h("host", "localhost:1080")
            .h("origin", "https://evil.example")
    };
    for r in [
        cross(tus_create()).h("sec-fetch-site", "cross-site"),
        // Browsers that send no Sec-Fetch-Site: the Origin differs from the Host.
        cross(tus_create()),
        cross(patch(&path, 0, b"abc")),
        cross(req("DELETE", &path).tus()).h("sec-fetch-site", "same-site"),
        // A form's POST with the method overridden.
        cross(req("POST", &path).h("x-http-method-override", "DELETE")),
    ] {
        let r = s.send(r).await;
        assert_eq!(r.status, 403, "{r:?}");
        assert!(r.text().contains("--cors-origins"), "{r:?}");
    }
    let head = s.send(req("HEAD", &path).tus()).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.h("upload-offset"), "0");
    // The same origin, a navigation, and clients that are not browsers.
    for r in [
        tus_create()
            .h("origin", "http://localhost:1080")
            .h("host", "localhost:1080"),
        tus_create()
            .h("sec-fetch-site", "same-origin")
            .h("origin", "http://x.example"),
        tus_create().h("sec-fetch-site", "none"),
        tus_create(),
    ] {
        assert_eq!(s.send(r).await.status, 201);
    }
}

#[tokio::test]
async fn an_allowed_origin_may_change_state() {
    let s = Srv::config(|c| c.cors = Cors::Origins(vec!["https://app.example".into()]));
    let from = |origin: &str| {
        tus_create()
            .h("origin", origin)
            .h("sec-fetch-site", "cross-site")
    };
    let r = s.send(from("https://app.example")).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.h("access-control-allow-origin"), "https://app.example");
    assert!(r.h("access-control-expose-headers").contains("Location"));
    let refused = s.send(from("https://evil.example")).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.h("vary"), "Origin");
    let s = Srv::config(|c| c.cors = Cors::Any);
    let r = s.send(from("https://evil.example")).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.h("access-control-allow-origin"), "*");
}

#[tokio::test]
async fn absolute_part_urls_name_this_server() {
    // Behind a proxy that rewrites Host, the parts' URLs name the proxy: without a public
    // URL the server cannot know its names, and a part is found by its id alone.
    let s = Srv::new();
    let a = s.partial(b"ab").await;
    let r = s
        .send(
            req("POST", "/files/")
                .tus()
                .h("host", "127.0.0.1:1080")
                .h("upload-concat", &format!("final;https://proxy.example{a}")),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    // With one, a part's URL names it (or the request's own host).
    let s = Srv::config(|c| c.public_url = Some("https://files.example".into()));
    let a = s.partial(b"ab").await;
    let concat = |url: String| {
        req("POST", "/files/")
            .tus()
            .h("host", "127.0.0.1:1080")
            .h("upload-concat", &format!("final;{url}"))
    };
    let r = s.send(concat(format!("https://files.example{a}"))).await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = s.send(concat(format!("http://127.0.0.1:1080{a}"))).await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = s.send(concat(format!("https://evil.example{a}"))).await;
    assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test]
async fn a_507_does_not_say_how_much_space_is_free() {
    let s = Srv::new();
    let r = s
        .send(
            req("POST", "/files/")
                .tus()
                .h("upload-length", "9200000000000000000"),
        )
        .await;
    assert_eq!(r.status, 507, "{r:?}");
    let t = r.text();
    assert!(t.contains("does not fit"), "{t}");
    assert!(!t.contains("free"), "{t}");
    let digits: Vec<&str> = t
        .split(|c: char| !c.is_ascii_digit())
        .filter(|d| !d.is_empty())
        .collect();
    assert_eq!(digits, ["9200000000000000000"], "{t}");
}

#[tokio::test]
async fn a_finished_upload_is_cached_privately_and_revalidated() {
    let s = Srv::new();
    let path = s.finished(b"abc").await;
    for m in ["GET", "HEAD"] {
        let r = s.send(req(m, &path)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.h("cache-control"), "private, no-cache", "{m}");
        assert!(r.h("etag").starts_with('"'), "{r:?}");
    }
    let r = s.send(req("GET", &path).h("range", "bytes=1-")).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.h("cache-control"), "private, no-cache");
}
