//! Discovery and routing on `/files/`: OPTIONS, protocol versions (`Tus-Resumable`, IETF
//! interop versions), method override, `/healthz`, other methods, base path, public URL, `Host`
//! and forwarded headers.

/// tus 1.0.
mod tus {
    use crate::support::tus::*;
    use crate::support::*;

    #[test]
    fn options_announces_version_all_nine_extensions_and_checksums() {
        let server = Server::start(&[]);
        // No Tus-Resumable on purpose: OPTIONS must not require it; a foreign version is ignored too.
        for (what, extra) in [("none", None), ("foreign", Some("0.2.2"))] {
            let mut req = client().request(reqwest::Method::OPTIONS, &server.files_url);
            if let Some(v) = extra {
                req = req.header("Tus-Resumable", v);
            }
            let resp = req.send().expect("OPTIONS");
            assert_eq!(resp.status().as_u16(), 204, "Tus-Resumable {what}");
            assert_eq!(hdr(&resp, "tus-version").as_deref(), Some("1.0.0"));
            let mut ext: Vec<String> = hdr(&resp, "tus-extension")
                .expect("Tus-Extension")
                .split(',')
                .map(|s| s.trim().to_string())
                .collect();
            ext.sort();
            assert_eq!(
                ext,
                [
                    "checksum",
                    "checksum-trailer",
                    "concatenation",
                    "concatenation-unfinished",
                    "creation",
                    "creation-defer-length",
                    "creation-with-upload",
                    "expiration",
                    "termination",
                ],
                "Tus-Extension"
            );
            let mut algos: Vec<String> = hdr(&resp, "tus-checksum-algorithm")
                .expect("Tus-Checksum-Algorithm")
                .split(',')
                .map(|s| s.trim().to_string())
                .collect();
            algos.sort();
            assert_eq!(
                algos,
                [
                    "blake3",
                    "crc32",
                    "crc64nvme",
                    "md5",
                    "sha1",
                    "sha256",
                    "sha512"
                ]
            );
            assert_eq!(
                hdr(&resp, "tus-max-size"),
                None,
                "no --max-size, no Tus-Max-Size"
            );
        }
        // Also on an upload URL.
        let url = create(&server, 3, None);
        let resp = client()
            .request(reqwest::Method::OPTIONS, &url)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204);
        assert_eq!(hdr(&resp, "tus-version").as_deref(), Some("1.0.0"));
    }

    #[test]
    fn options_announces_max_size_when_set() {
        let server = Server::start(&["--max-size", "1M"]);
        let resp = client()
            .request(reqwest::Method::OPTIONS, &server.files_url)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204);
        assert_eq!(hdr(&resp, "tus-max-size").as_deref(), Some("1048576"));
    }

    #[test]
    fn missing_or_wrong_tus_resumable_is_412_with_tus_version() {
        let server = Server::start(&[]);
        let url = create(&server, 10, None);
        let path = path_of(&url);
        for version in [None, Some("0.2.2"), Some("1.0"), Some("2.0.0")] {
            let v = version.unwrap_or("missing");
            let tus: Vec<(&str, &str)> =
                version.map(|v| ("Tus-Resumable", v)).into_iter().collect();
            let cases: [(&str, &str, Headers, &[u8]); 4] = [
                ("POST", "/files/", vec![("Upload-Length", "5")], b""),
                ("HEAD", path.as_str(), vec![], b""),
                (
                    "PATCH",
                    path.as_str(),
                    vec![OCTET, ("Upload-Offset", "0")],
                    b"abc",
                ),
                ("DELETE", path.as_str(), vec![], b""),
            ];
            for (method, p, mut headers, body) in cases {
                if method == "HEAD" && version.is_none() {
                    // A plain HEAD is answered as GET would be: this upload is unfinished.
                    let resp = send(server.addr, method, p, &headers, body);
                    assert_eq!(status_of(&resp), 409, "plain HEAD: {resp}");
                    assert_eq!(header_of(&resp, "Upload-Offset").as_deref(), Some("0"));
                    continue;
                }
                headers.extend(tus.iter().copied());
                let resp = send(server.addr, method, p, &headers, body);
                assert_eq!(
                    status_of(&resp),
                    412,
                    "{method} with Tus-Resumable {v}: {resp}"
                );
                assert_eq!(
                    header_of(&resp, "Tus-Version").as_deref(),
                    Some("1.0.0"),
                    "{method} with Tus-Resumable {v}"
                );
                assert_eq!(header_of(&resp, "Location"), None, "{method} {v}");
            }
            assert_eq!(
                head_offset(&url),
                Some(0),
                "Tus-Resumable {v}: PATCH was not processed"
            );
        }
        // DELETE was not processed either.
        assert_eq!(head(&url).status().as_u16(), 200);
    }

    #[test]
    fn method_override_tunnels_patch_head_and_delete_through_post() {
        let server = Server::start(&[]);
        let url = create(&server, 6, None);
        let resp = client()
            .post(&url)
            .header(TUS.0, TUS.1)
            .header("X-HTTP-Method-Override", "PATCH")
            .header(OCTET.0, OCTET.1)
            .header("Upload-Offset", "0")
            .body(b"abc".to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204, "override PATCH");
        assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("3"));

        let resp = client()
            .post(&url)
            .header(TUS.0, TUS.1)
            .header("X-HTTP-Method-Override", "HEAD")
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "override HEAD");
        assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("3"));
        assert_eq!(hdr(&resp, "upload-length").as_deref(), Some("6"));

        // Lowercase works too.
        let resp = client()
            .post(&url)
            .header(TUS.0, TUS.1)
            .header("X-HTTP-Method-Override", "patch")
            .header(OCTET.0, OCTET.1)
            .header("Upload-Offset", "3")
            .body(b"def".to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204, "override patch");
        assert_eq!(get_sha256(&url), sha256(b"abcdef"));

        let resp = client()
            .post(&url)
            .header(TUS.0, TUS.1)
            .header("X-HTTP-Method-Override", "DELETE")
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204, "override DELETE");
        assert_eq!(head(&url).status().as_u16(), 404);
    }

    #[test]
    fn healthz_answers_200() {
        let server = Server::start(&[]);
        let resp = send(server.addr, "GET", "/healthz", &[], b"");
        assert_eq!(status_of(&resp), 200, "{resp}");
        assert_eq!(body_of(&resp), "ok\n");
        let resp = send(server.addr, "HEAD", "/healthz", &[], b"");
        assert_eq!(status_of(&resp), 200, "{resp}");
        let resp = send(server.addr, "POST", "/healthz", &[], b"");
        assert_eq!(status_of(&resp), 405, "{resp}");
        assert_eq!(header_of(&resp, "Allow").as_deref(), Some("GET, HEAD"));
    }

    #[test]
    fn other_methods_are_405_with_allow() {
        let server = Server::start(&[]);
        let url = create(&server, 3, None);
        let path = path_of(&url);
        let cases = [
            ("GET", "/files/", "OPTIONS, POST"),
            ("PUT", "/files/", "OPTIONS, POST"),
            ("DELETE", "/files", "OPTIONS, POST"),
            ("PATCH", "/files/", "OPTIONS, POST"),
            ("PUT", path.as_str(), "OPTIONS, HEAD, GET, PATCH, DELETE"),
            ("POST", path.as_str(), "OPTIONS, HEAD, GET, PATCH, DELETE"),
            ("TRACE", path.as_str(), "OPTIONS, HEAD, GET, PATCH, DELETE"),
        ];
        for (method, p, allow) in cases {
            let resp = send(server.addr, method, p, &[TUS], b"");
            assert_eq!(status_of(&resp), 405, "{method} {p}: {resp}");
            assert_eq!(
                header_of(&resp, "Allow").as_deref(),
                Some(allow),
                "{method} {p}"
            );
        }
        assert_eq!(head_offset(&url), Some(0));
    }

    #[test]
    fn base_path_prefixes_every_route() {
        let server = Server::start(&["--base-path", "/api/v1/"]);
        let base = format!("http://{}/api/v1/files/", server.addr);
        assert_eq!(server.files_url, base);
        let url = create(&server, 3, None);
        assert_upload_url(&url, &base);
        assert_eq!(patch(&url, 0, b"abc".to_vec()), (204, Some(3)));
        assert_eq!(get_sha256(&url), sha256(b"abc"));
        let id = url.rsplit('/').next().unwrap();

        assert_eq!(
            status_of(&send(server.addr, "GET", "/api/v1/healthz", &[], b"")),
            200
        );
        let resp = send(server.addr, "OPTIONS", "/api/v1/files/", &[], b"");
        assert_eq!(status_of(&resp), 204);
        // Without the prefix nothing is there.
        for (method, p) in [
            ("GET", "/healthz".to_string()),
            ("OPTIONS", "/files/".to_string()),
            ("POST", "/files/".to_string()),
            ("HEAD", format!("/files/{id}")),
            ("GET", format!("/files/{id}")),
            ("GET", format!("/api/files/{id}")),
            ("GET", format!("/api/v1x/files/{id}")),
        ] {
            let resp = send(server.addr, method, &p, &[TUS, ("Upload-Length", "3")], b"");
            assert_eq!(status_of(&resp), 404, "{method} {p}: {resp}");
        }
    }

    #[test]
    fn public_url_is_used_in_location() {
        for (public, base, expect) in [
            (
                "https://files.example.com",
                None,
                "https://files.example.com/files/",
            ),
            (
                "https://files.example.com/",
                None,
                "https://files.example.com/files/",
            ),
            ("http://[::1]:9999", None, "http://[::1]:9999/files/"),
            (
                "https://x.example:8443",
                Some("/up"),
                "https://x.example:8443/up/files/",
            ),
        ] {
            let mut args = vec!["--public-url", public, "--allowed-hosts", "other.example"];
            if let Some(b) = base {
                args.extend(["--base-path", b]);
            }
            let server = Server::start(&args);
            // The Host header and forwarded headers lose to --public-url.
            let path = format!("{}/files/", base.unwrap_or(""));
            let resp = send_with_host(
                server.addr,
                "other.example",
                "POST",
                &path,
                &[
                    TUS,
                    ("Upload-Length", "1"),
                    ("X-Forwarded-Host", "proxy.example"),
                ],
            );
            assert_eq!(status_of(&resp), 201, "{public}: {resp}");
            let location = header_of(&resp, "Location").unwrap();
            assert_upload_url(&location, expect);
            // The URL works when mapped back to the real address.
            let id = location.rsplit('/').next().unwrap();
            assert_eq!(head_offset(&format!("{}{id}", server.files_url)), Some(0));
        }
    }

    #[test]
    fn location_is_a_path_whatever_the_host() {
        let server = Server::start(&["--allowed-hosts", "*"]);
        for host in ["uploads.example:8443", "uploads.example", "[::1]:1234"] {
            let resp = send_with_host(
                server.addr,
                host,
                "POST",
                "/files/",
                &[TUS, ("Upload-Length", "1")],
            );
            assert_eq!(status_of(&resp), 201, "Host {host}: {resp}");
            let location = header_of(&resp, "Location").unwrap();
            assert_upload_url(&location, "/files/");
        }
    }

    #[test]
    fn forwarded_headers_count_only_with_trust_proxy() {
        let xfwd: &[(&str, &str)] = &[
            TUS,
            ("Upload-Length", "1"),
            ("X-Forwarded-Host", "proxy.example"),
            ("X-Forwarded-Proto", "https"),
        ];
        let fwd: &[(&str, &str)] = &[
            TUS,
            ("Upload-Length", "1"),
            (
                "Forwarded",
                "for=192.0.2.1;proto=https;host=\"fwd.example:8443\"",
            ),
            ("X-Forwarded-Host", "ignored.example"),
        ];
        let untrusting = Server::start(&["--allowed-hosts", "direct.example"]);
        for (what, headers) in [("X-Forwarded", xfwd), ("Forwarded", fwd)] {
            let resp = send_with_host(
                untrusting.addr,
                "direct.example",
                "POST",
                "/files/",
                headers,
            );
            assert_eq!(status_of(&resp), 201, "{what}: {resp}");
            assert_upload_url(&header_of(&resp, "Location").unwrap(), "/files/");
        }
        let trusting = Server::start(&["--trust-proxy", "--allowed-hosts", "direct.example"]);
        for (what, headers, expect) in [
            ("X-Forwarded", xfwd, "https://proxy.example/files/"),
            ("Forwarded", fwd, "https://fwd.example:8443/files/"),
        ] {
            let resp = send_with_host(trusting.addr, "direct.example", "POST", "/files/", headers);
            assert_eq!(status_of(&resp), 201, "{what}: {resp}");
            assert_upload_url(&header_of(&resp, "Location").unwrap(), expect);
        }
        // Only the proto forwarded: no host to build a URL with, and never from Host.
        let resp = send_with_host(
            trusting.addr,
            "direct.example",
            "POST",
            "/files/",
            &[TUS, ("Upload-Length", "1"), ("X-Forwarded-Proto", "https")],
        );
        assert_upload_url(&header_of(&resp, "Location").unwrap(), "/files/");
        // The proxy appends to what the client sent: the last value is the proxy's.
        let resp = send_with_host(
            trusting.addr,
            "direct.example",
            "POST",
            "/files/",
            &[
                TUS,
                ("Upload-Length", "1"),
                ("X-Forwarded-Host", "evil.example, proxy.example"),
                ("X-Forwarded-Proto", "http, https"),
            ],
        );
        assert_upload_url(
            &header_of(&resp, "Location").unwrap(),
            "https://proxy.example/files/",
        );
    }
}

/// The IETF draft (`Upload-Draft-Interop-Version`).
mod ietf {
    use crate::support::ietf::{create, head, *};
    use crate::support::*;

    #[test]
    fn options_announces_partial_upload_and_limits() {
        let server = Server::start(&["--max-size", "1MiB", "--expire-after", "1h"]);
        let r = send(server.addr, "OPTIONS", "/files/", &[v("8")], b"");
        assert!(matches!(status_of(&r), 200 | 204), "{r}");
        assert!(
            header_of(&r, "accept-patch").is_some_and(|a| a.contains("application/partial-upload")),
            "{r}"
        );
        assert_eq!(
            header_of(&r, "upload-limit").as_deref(),
            Some("max-size=1048576, max-age=3600")
        );
        assert_eq!(
            header_of(&r, "upload-draft-interop-version").as_deref(),
            Some("8")
        );
        assert_eq!(header_of(&r, "tus-resumable"), None, "{r}");
        // -04/-05 (interop 6) called the lifetime `expires`; before that there was no Upload-Limit.
        let r6 = send(server.addr, "OPTIONS", "/files/", &[v("6")], b"");
        assert_eq!(
            header_of(&r6, "upload-limit").as_deref(),
            Some("max-size=1048576, expires=3600")
        );
        let r5 = send(server.addr, "OPTIONS", "/files/", &[v("5")], b"");
        assert_eq!(header_of(&r5, "upload-limit"), None, "{r5}");
        // Plain tus OPTIONS still answers as tus.
        let t = send(server.addr, "OPTIONS", "/files/", &[], b"");
        assert!(header_of(&t, "tus-version").is_some(), "{t}");
    }

    /// What differs between interop versions: the completeness header (3), the append media type
    /// (6 on), the problem types (6 on; inconsistent length 7 on).
    #[test]
    fn older_interop_versions_differ_as_tabled() {
        let server = Server::start(&[]);
        let a = server.addr;

        // 3: Upload-Incomplete, no media type on appends, plain-text errors.
        let (resp, path) = create(a, "3", &[("Upload-Incomplete", "?1")], b"ab");
        assert_eq!(header_of(&resp, "upload-incomplete").as_deref(), Some("?1"));
        assert_eq!(header_of(&resp, "upload-complete"), None);
        assert_eq!(
            header_of(&resp, "upload-draft-interop-version").as_deref(),
            Some("3")
        );
        let r = send(
            a,
            "PATCH",
            &path,
            &[v("3"), ("Upload-Offset", "0"), ("Upload-Incomplete", "?0")],
            b"cd",
        );
        assert_eq!(status_of(&r), 409, "{r}");
        assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("2"));
        assert_ne!(
            header_of(&r, "content-type").as_deref(),
            Some("application/problem+json")
        );
        let r = send(
            a,
            "PATCH",
            &path,
            &[v("3"), ("Upload-Offset", "2"), ("Upload-Incomplete", "?0")],
            b"cd",
        );
        assert_eq!(status_of(&r), 204, "{r}");
        assert_eq!(header_of(&r, "upload-incomplete").as_deref(), Some("?0"));
        // Upload-Complete means nothing to interop 3.
        let r = send(
            a,
            "POST",
            "/files/",
            &[v("3"), ("Upload-Complete", "?1")],
            b"",
        );
        assert_eq!(status_of(&r), 400, "{r}");
        assert_eq!(get_body_sha(a, &path), sha256(b"abcd"));

        // 5 (tus-js-client ietf-draft-03): Upload-Complete, any media type, no problem types.
        let (_, path) = create(a, "5", &[("Upload-Complete", "?0")], b"");
        let r = send(
            a,
            "PATCH",
            &path,
            &[
                v("5"),
                ("Content-Type", "application/offset+octet-stream"),
                ("Upload-Offset", "0"),
                ("Upload-Complete", "?0"),
            ],
            b"xy",
        );
        assert_eq!(status_of(&r), 204, "{r}");
        let r = send(
            a,
            "PATCH",
            &path,
            &[v("5"), ("Upload-Offset", "1"), ("Upload-Complete", "?1")],
            b"z",
        );
        assert_eq!(status_of(&r), 409, "{r}");
        assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("2"));
        assert!(body_of(&r).starts_with("Upload-Offset"), "{r}");
        let h = head(a, "5", &path);
        assert_eq!(header_of(&h, "upload-limit"), None, "{h}");

        // 6: partial-upload required, offset problems yes, inconsistent-length problem not yet.
        let (_, path) = create(
            a,
            "6",
            &[("Upload-Complete", "?0"), ("Upload-Length", "4")],
            b"",
        );
        let r = send(
            a,
            "PATCH",
            &path,
            &[v("6"), ("Upload-Offset", "0"), ("Upload-Complete", "?0")],
            b"xy",
        );
        assert_eq!(status_of(&r), 415, "{r}");
        let r = send(
            a,
            "PATCH",
            &path,
            &[
                v("6"),
                PARTIAL,
                ("Upload-Offset", "3"),
                ("Upload-Complete", "?0"),
            ],
            b"xy",
        );
        assert_problem(&r, 409, "mismatching-upload-offset");
        let r = send(
            a,
            "PATCH",
            &path,
            &[
                v("6"),
                PARTIAL,
                ("Upload-Offset", "0"),
                ("Upload-Complete", "?0"),
            ],
            b"xyzzy",
        );
        assert_eq!(status_of(&r), 400, "{r}");
        assert_ne!(
            header_of(&r, "content-type").as_deref(),
            Some("application/problem+json")
        );
        assert!(
            header_of(&head(a, "6", &path), "upload-limit").is_some_and(|l| l.contains("expires=")),
            "interop 6 spells the lifetime `expires`"
        );
        // 7: inconsistent-upload-length exists.
        let r = send(
            a,
            "PATCH",
            &path,
            &[
                v("7"),
                PARTIAL,
                ("Upload-Offset", "0"),
                ("Upload-Complete", "?0"),
            ],
            b"xyzzy",
        );
        assert_problem(&r, 400, "inconsistent-upload-length");
        // Before -09, content sent to a completed upload is a completed-upload problem.
        let r = send(
            a,
            "PATCH",
            &path,
            &[
                v("7"),
                PARTIAL,
                ("Upload-Offset", "0"),
                ("Upload-Complete", "?1"),
            ],
            b"wxyz",
        );
        assert_eq!(status_of(&r), 204, "{r}");
        let r = send(
            a,
            "PATCH",
            &path,
            &[
                v("7"),
                PARTIAL,
                ("Upload-Offset", "4"),
                ("Upload-Complete", "?1"),
            ],
            b"!",
        );
        assert_problem(&r, 400, "completed-upload");
    }
}
