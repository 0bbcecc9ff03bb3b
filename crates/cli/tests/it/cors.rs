//! CORS: closed by default; preflights and exposed headers under `--cors-origins '*'`, and an
//! allow list of origins.

use crate::support::tus::*;
use crate::support::*;

fn preflight(url: &str, origin: &str) -> reqwest::blocking::Response {
    client()
        .request(reqwest::Method::OPTIONS, url)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "PATCH")
        .header(
            "Access-Control-Request-Headers",
            "tus-resumable,upload-offset,upload-checksum,content-type",
        )
        .send()
        .expect("preflight")
}

fn list_has(list: &Option<String>, item: &str) -> bool {
    list.as_deref()
        .is_some_and(|l| l.split(',').any(|x| x.trim().eq_ignore_ascii_case(item)))
}

fn cors_headers(resp: &reqwest::blocking::Response) -> Vec<String> {
    resp.headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[test]
fn cors_preflight_and_exposed_headers() {
    let server = Server::start(&["--cors-origins", "*"]);
    let origin = "https://app.example";
    let url = create(&server, 10, None);
    for target in [server.files_url.as_str(), url.as_str()] {
        let resp = preflight(target, origin);
        assert_eq!(resp.status().as_u16(), 204, "preflight {target}");
        assert_eq!(
            hdr(&resp, "access-control-allow-origin").as_deref(),
            Some("*")
        );
        let methods = hdr(&resp, "access-control-allow-methods");
        for m in ["POST", "PATCH", "HEAD", "DELETE", "GET", "OPTIONS"] {
            assert!(list_has(&methods, m), "Allow-Methods {methods:?} lacks {m}");
        }
        let allowed = hdr(&resp, "access-control-allow-headers");
        for h in [
            "Upload-Offset",
            "Tus-Resumable",
            "Upload-Checksum",
            "Upload-Length",
            "Upload-Metadata",
            "Upload-Concat",
            "Upload-Defer-Length",
            "Content-Type",
            "X-HTTP-Method-Override",
        ] {
            assert!(list_has(&allowed, h), "Allow-Headers {allowed:?} lacks {h}");
        }
        let max_age: u64 = hdr(&resp, "access-control-max-age")
            .expect("Max-Age")
            .parse()
            .expect("Max-Age is a number");
        assert!(max_age > 0);
    }

    // Normal responses expose what a browser script must read.
    let resp = tus_post(&server)
        .header("Origin", origin)
        .header("Upload-Length", "5")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(
        hdr(&resp, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let exposed = hdr(&resp, "access-control-expose-headers");
    for h in [
        "Location",
        "Upload-Offset",
        "Upload-Length",
        "Upload-Expires",
        "Tus-Resumable",
        "Upload-Concat",
        "Repr-Digest",
    ] {
        assert!(
            list_has(&exposed, h),
            "Expose-Headers {exposed:?} lacks {h}"
        );
    }
    let loc = location(&resp).unwrap();
    let resp = client()
        .patch(&loc)
        .header(TUS.0, TUS.1)
        .header(OCTET.0, OCTET.1)
        .header("Upload-Offset", "0")
        .header("Origin", origin)
        .body(b"hello".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(list_has(
        &hdr(&resp, "access-control-expose-headers"),
        "Upload-Offset"
    ));
    // Errors too (a browser must be able to read a 409's Upload-Offset).
    let resp = client()
        .patch(&loc)
        .header(TUS.0, TUS.1)
        .header(OCTET.0, OCTET.1)
        .header("Upload-Offset", "3")
        .header("Origin", origin)
        .body(b"x".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    assert_eq!(
        hdr(&resp, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert!(list_has(
        &hdr(&resp, "access-control-expose-headers"),
        "Upload-Offset"
    ));
    // No Origin, no CORS headers.
    let resp = head(&loc);
    assert!(cors_headers(&resp).is_empty(), "{:?}", cors_headers(&resp));
}

#[test]
fn cors_allow_list_answers_only_listed_origins() {
    let server = Server::start(&["--cors-origins", "https://a.example"]);
    let resp = preflight(&server.files_url, "https://a.example");
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(
        hdr(&resp, "access-control-allow-origin").as_deref(),
        Some("https://a.example")
    );
    assert!(list_has(&hdr(&resp, "vary"), "Origin"), "Vary: Origin");
    assert!(hdr(&resp, "access-control-allow-headers").is_some());
    for other in [
        "https://b.example",
        "http://a.example",
        "https://a.example:444",
        "https://a.example.evil.example",
        "null",
    ] {
        let resp = preflight(&server.files_url, other);
        assert!(
            cors_headers(&resp).is_empty(),
            "preflight from {other}: {:?}",
            cors_headers(&resp)
        );
        // A page of another origin changes nothing (browsers send some requests unasked).
        let resp = tus_post(&server)
            .header("Origin", other)
            .header("Upload-Length", "1")
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403);
        assert!(
            cors_headers(&resp).is_empty(),
            "POST from {other}: {:?}",
            cors_headers(&resp)
        );
    }
    let resp = tus_post(&server)
        .header("Origin", "https://a.example")
        .header("Upload-Length", "1")
        .send()
        .unwrap();
    assert_eq!(
        hdr(&resp, "access-control-allow-origin").as_deref(),
        Some("https://a.example")
    );
    assert!(list_has(
        &hdr(&resp, "access-control-expose-headers"),
        "Location"
    ));
}

#[test]
fn cors_is_closed_by_default() {
    for flags in [&[][..], &["--cors-origins", "none"][..]] {
        let server = Server::start(flags);
        let url = create(&server, 1, None);
        let resp = preflight(&server.files_url, "https://a.example");
        assert_eq!(resp.status().as_u16(), 204);
        assert!(
            cors_headers(&resp).is_empty(),
            "{flags:?}: {:?}",
            cors_headers(&resp)
        );
        let resp = client()
            .get(server.files_url.replace("/files/", "/healthz"))
            .header("Origin", "https://a.example")
            .send()
            .unwrap();
        assert!(
            cors_headers(&resp).is_empty(),
            "{flags:?}: {:?}",
            cors_headers(&resp)
        );
        // A page's form or fetch without preflight: refused, nothing changes.
        for (method, target) in [
            ("POST", server.files_url.as_str()),
            ("DELETE", url.as_str()),
        ] {
            let resp = client()
                .request(method.parse().unwrap(), target)
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Length", "1")
                .header("Origin", "https://a.example")
                .header("Sec-Fetch-Site", "cross-site")
                .send()
                .unwrap();
            assert_eq!(resp.status().as_u16(), 403, "{flags:?} {method}");
            assert!(cors_headers(&resp).is_empty());
        }
        assert_eq!(head(&url).status().as_u16(), 200);
        // Clients that are not browsers send no Origin: unaffected.
        assert_eq!(
            tus_post(&server)
                .header("Upload-Length", "1")
                .send()
                .unwrap()
                .status()
                .as_u16(),
            201
        );
    }
}
