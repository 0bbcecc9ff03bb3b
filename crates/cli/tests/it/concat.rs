//! tus concatenation and concatenation-unfinished: partial and final uploads, refused finals,
//! deletion, races with the last part, and a hostile-input sweep.

use crate::support::tus::*;
use crate::support::*;
use std::time::Duration;

#[test]
fn partial_creation_is_marked_partial() {
    let server = Server::start(&[]);
    let url = create_partial(&server, 10);
    let resp = head(&url);
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(hdr(&resp, "upload-concat").as_deref(), Some("partial"));
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("0"));
    assert_eq!(hdr(&resp, "upload-length").as_deref(), Some("10"));
    // A partial is written like any upload, and stays partial when done.
    assert_eq!(patch(&url, 0, b"0123456789".to_vec()), (204, Some(10)));
    let resp = head(&url);
    assert_eq!(hdr(&resp, "upload-concat").as_deref(), Some("partial"));
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("10"));
    // Creation-with-upload of a partial.
    let resp = tus_post(&server)
        .header("Upload-Length", "3")
        .header("Upload-Concat", "partial")
        .header(OCTET.0, OCTET.1)
        .body(b"xyz".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("3"));
    let loc = location(&resp).unwrap();
    assert_eq!(
        hdr(&head(&loc), "upload-concat").as_deref(),
        Some("partial")
    );
    // A plain upload is not marked.
    let plain = create(&server, 3, None);
    assert_eq!(hdr(&head(&plain), "upload-concat"), None);
}

#[test]
fn final_from_relative_urls_is_byte_exact_and_read_only() {
    let server = Server::start(&[]);
    let parts: Vec<Vec<u8>> = vec![
        random_bytes(5 * 1024, 1),
        random_bytes(1, 2),
        random_bytes(700 * 1024 + 3, 3),
    ];
    let whole: Vec<u8> = parts.concat();
    let urls: Vec<String> = parts.iter().map(|p| partial_with(&server, p)).collect();
    let paths: Vec<String> = urls.iter().map(|u| path_of(u)).collect();
    let resp = tus_post(&server)
        .header("Upload-Concat", format!("final;{}", paths.join(" ")))
        .header("Upload-Metadata", "filename d2hvbGUuYmlu")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text());
    let fin = location(&resp).expect("Location");
    assert!(fin.starts_with(&server.files_url), "{fin}");

    let resp = head(&fin);
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        hdr(&resp, "upload-concat"),
        Some(format!("final;{}", paths.join(" ")))
    );
    let n = whole.len().to_string();
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some(n.as_str()));
    assert_eq!(hdr(&resp, "upload-length").as_deref(), Some(n.as_str()));
    assert_eq!(
        hdr(&resp, "upload-metadata").as_deref(),
        Some("filename d2hvbGUuYmlu"),
        "the final has its own metadata"
    );
    // A final's CRC combines its parts'; its bytes are not read again at completion.
    assert_eq!(hdr(&resp, "repr-digest"), Some(crc64nvme_member(&whole)));
    let (status, digest, body) = get(&fin);
    assert_eq!(status, 200);
    assert!(body == whole, "final differs from the concatenation");
    assert_eq!(digest, Some(crc64nvme_member(&whole)));
    // A cryptographic digest is computed when a client asks for one, and kept.
    let asked = send(
        server.addr,
        "HEAD",
        &path_of(&fin),
        &[TUS, ("Want-Repr-Digest", "sha-256=10")],
        b"",
    );
    let got = header_of(&asked, "Repr-Digest").unwrap_or_default();
    assert!(got.contains(&sha256_member(&whole)), "{asked}");

    // PATCH on a final: 403, nothing changes (neither the final nor its parts).
    for offset in [0, whole.len() as u64] {
        let resp = tus_patch(&fin, offset).body(b"x".to_vec()).send().unwrap();
        assert_eq!(resp.status().as_u16(), 403, "PATCH final at {offset}");
    }
    let resp = tus_patch(&fin, 0).send().unwrap();
    assert_eq!(resp.status().as_u16(), 403, "empty PATCH on final");
    assert_eq!(get(&fin).2, whole);
    for (u, p) in urls.iter().zip(&parts) {
        assert_eq!(&get(u).2, p, "a part changed");
    }
}

/// tus-js-client names the parts by the absolute URLs it got in `Location`.
#[test]
fn final_from_absolute_urls_and_repeated_parts() {
    let server = Server::start(&[]);
    let a = random_bytes(1000, 31);
    let b = random_bytes(2000, 32);
    let ua = partial_with(&server, &a);
    let ub = partial_with(&server, &b);
    assert!(ua.starts_with("http://"), "{ua}");
    let resp = post_final(&server, &format!("final;{ua} {ub}"));
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text());
    let fin = location(&resp).unwrap();
    assert_eq!(get(&fin).2, [a.clone(), b.clone()].concat());

    // Mixed absolute and relative, extra spaces.
    let resp = post_final(&server, &format!("final; {}  {ua}", path_of(&ub)));
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text());
    let fin2 = location(&resp).unwrap();
    assert_eq!(get(&fin2).2, [b.clone(), a.clone()].concat());

    // tus lets the same partial appear several times in one final; ferry refuses it (each
    // listing would cost a read and a record write for nothing), with a message. A partial
    // may still feed several finals.
    let resp = post_final(&server, &format!("final;{ua} {ub} {ua}"));
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().unwrap().contains("listed twice"));
    assert_eq!(get(&fin2).2, [b.clone(), a.clone()].concat());
    // The Host the client used is what counts: an absolute URL built from `localhost` on
    // the same port names the same upload when the request also came with that Host.
    let port = server.addr.port();
    let resp = send_host(
        &server,
        &format!("localhost:{port}"),
        &format!("final;http://localhost:{port}{}", path_of(&ua)),
    );
    assert_eq!(status_of(&resp), 201, "{resp}");
}

/// A raw final POST with a chosen Host header.
fn send_host(server: &Server, host: &str, concat: &str) -> String {
    let req = format!(
        "POST /files/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Concat: {concat}\r\nContent-Length: 0\r\n\r\n"
    );
    raw(server.addr, req.as_bytes(), LIMIT)
}

#[test]
fn final_created_before_its_parts_finish_completes_with_the_last_one() {
    let server = Server::start(&[]);
    let a = random_bytes(100_000, 41);
    let b = random_bytes(50_000, 42);
    let ua = create_partial(&server, a.len());
    let ub = create_partial(&server, b.len());
    assert_eq!(patch(&ua, 0, a[..60_000].to_vec()), (204, Some(60_000)));
    let resp = post_final(&server, &format!("final;{ua} {ub}"));
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text());
    let fin = location(&resp).unwrap();
    let total = (a.len() + b.len()).to_string();

    let check_unfinished = |when: &str| {
        let resp = head(&fin);
        assert_eq!(resp.status().as_u16(), 200, "{when}");
        assert_eq!(
            hdr(&resp, "upload-offset"),
            None,
            "{when}: a final has no offset until all parts are done"
        );
        // tus: "The Upload-Length header MUST be included if the length of the final
        // resource can be calculated at the time of the request."
        assert_eq!(
            hdr(&resp, "upload-length").as_deref(),
            Some(total.as_str()),
            "{when}: the parts' lengths are known"
        );
        assert_eq!(
            hdr(&resp, "upload-concat"),
            Some(format!("final;{} {}", path_of(&ua), path_of(&ub))),
            "{when}"
        );
        assert_eq!(hdr(&resp, "repr-digest"), None, "{when}");
        let (status, _, _) = get(&fin);
        assert_eq!(status, 409, "{when}: GET of an unfinished final");
        let resp = tus_patch(&fin, 0).body(b"x".to_vec()).send().unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{when}: PATCH on a final");
    };
    check_unfinished("no part done");
    assert_eq!(
        patch(&ua, 60_000, a[60_000..].to_vec()),
        (204, Some(100_000))
    );
    check_unfinished("one part done");
    assert_eq!(patch(&ub, 0, b.to_vec()), (204, Some(50_000)));
    // Completed by the time the last part's 204 arrived: no polling.
    let resp = head(&fin);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some(total.as_str()));
    assert_eq!(hdr(&resp, "upload-length").as_deref(), Some(total.as_str()));
    let whole = [a, b].concat();
    assert_eq!(hdr(&resp, "repr-digest"), Some(crc64nvme_member(&whole)));
    assert!(get(&fin).2 == whole);
}

#[test]
fn final_naming_unknown_foreign_or_non_partial_uploads_is_refused() {
    let server = Server::start(&[]);
    let part = partial_with(&server, b"abc");
    let regular = create(&server, 3, None);
    assert_eq!(patch(&regular, 0, b"xyz".to_vec()), (204, Some(3)));
    let files = stored_files(&server.data_dir);
    let unknown = "0123456789abcdef0123456789abcdef";
    let p = path_of(&part);
    let id = id_of(&part);
    let addr = server.addr;
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("final;/files/{unknown}"), 404, "unknown id"),
        (format!("final;{p} /files/{unknown}"), 404, "one unknown id"),
        (
            format!("final;http://{addr}/files/{unknown}"),
            404,
            "unknown id, absolute",
        ),
        (format!("final;/uploads/{id}"), 400, "path outside /files/"),
        (format!("final;/{id}"), 400, "bare id path"),
        (format!("final;files/{id}"), 400, "not a URL"),
        (
            format!("final;ftp://{addr}/files/{id}"),
            400,
            "other scheme",
        ),
        (
            format!("final;{}", path_of(&regular)),
            400,
            "regular upload",
        ),
        (
            format!("final;{p} {}", path_of(&regular)),
            400,
            "one regular",
        ),
    ];
    for (value, want, case) in &cases {
        let resp = post_final(&server, value);
        assert_eq!(resp.status().as_u16(), *want, "{case}: {value}");
        assert_eq!(location(&resp), None, "{case}");
    }
    // Under another authority: refused by a server that knows its public URL. (Without one,
    // behind a proxy, any authority may name this server: a part is found by its id, which
    // is what entitles a client to it; see `edge::absolute_part_urls_name_this_server`.)
    let public = Server::start(&["--public-url", "https://files.example"]);
    let id = id_of(&partial_with(&public, b"abc"));
    let addr = public.addr;
    for (value, case) in [
        (
            format!("final;http://other.example/files/{id}"),
            "other host",
        ),
        (
            format!("final;http://127.0.0.2:{}/files/{id}", addr.port()),
            "other address",
        ),
        (
            format!("final;http://{}:1/files/{id}", addr.ip()),
            "other port",
        ),
        (
            format!("final;https://files.example:444/files/{id}"),
            "public host, other port",
        ),
    ] {
        let resp = post_final(&public, &value);
        assert_eq!(resp.status().as_u16(), 400, "{case}: {value}");
    }
    for value in [
        format!("final;https://files.example/files/{id}"),
        format!("final;http://{addr}/files/{id}"),
    ] {
        let resp = post_final(&public, &value);
        assert_eq!(resp.status().as_u16(), 201, "{value}");
    }

    // Upload-Length (or a deferred length) with a final: 400; a body: 403.
    let concat = format!("final;{p}");
    for (k, v) in [("Upload-Length", "3"), ("Upload-Defer-Length", "1")] {
        let resp = tus_post(&server)
            .header("Upload-Concat", &concat)
            .header(k, v)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "final with {k}");
    }
    let resp = tus_post(&server)
        .header("Upload-Concat", &concat)
        .header(OCTET.0, OCTET.1)
        .body(b"abc".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403, "final with a body");

    // A final of a final.
    let resp = post_final(&server, &concat);
    assert_eq!(resp.status().as_u16(), 201);
    let fin = location(&resp).unwrap();
    let resp = post_final(&server, &format!("final;{}", path_of(&fin)));
    assert_eq!(resp.status().as_u16(), 400, "final of a final");
    assert_eq!(
        stored_files(&server.data_dir),
        files,
        "refused finals stored nothing (and a final has no data of its own)"
    );
    assert_eq!(get(&part).2, b"abc");
    assert_eq!(get(&fin).2, b"abc");
}

#[test]
fn deleting_a_used_partial_keeps_the_final_and_deleting_the_final_purges_it() {
    let server = Server::start(&[]);
    let a = random_bytes(10_000, 51);
    let b = random_bytes(20_000, 52);
    let ua = partial_with(&server, &a);
    let ub = partial_with(&server, &b);
    let resp = post_final(&server, &format!("final;{ua} {ub}"));
    assert_eq!(resp.status().as_u16(), 201);
    let fin = location(&resp).unwrap();
    let whole = [a.clone(), b.clone()].concat();

    assert_eq!(delete(&ua), 204);
    assert_eq!(head(&ua).status().as_u16(), 404, "deleted partial");
    assert_eq!(get(&ua).0, 404);
    assert_eq!(delete(&ua), 404, "deleted twice");
    let (status, digest, body) = get(&fin);
    assert_eq!(status, 200, "final after its part was deleted");
    assert!(body == whole, "final changed when its part was deleted");
    assert_eq!(digest, Some(crc64nvme_member(&whole)));
    assert!(
        stored(&server, &ua).is_some(),
        "the hidden part's bytes are still needed"
    );
    // The hidden part cannot be used again.
    let resp = post_final(&server, &format!("final;{ua}"));
    assert_eq!(resp.status().as_u16(), 404, "final naming a deleted part");

    assert_eq!(delete(&fin), 204);
    assert_eq!(head(&fin).status().as_u16(), 404);
    assert!(
        eventually(Duration::from_secs(5), || stored(&server, &ua).is_none()),
        "the hidden part's data outlived the final"
    );
    // The part that was not deleted is untouched.
    assert_eq!(head(&ub).status().as_u16(), 200);
    assert_eq!(stored(&server, &ub), Some(b.len() as u64));
    assert_eq!(get(&ub).2, b);
}

/// Creating a final while its last part is finishing must never leave the final waiting
/// forever (the part's completion and the final's creation race).
#[test]
fn final_created_while_the_last_part_finishes_always_completes() {
    let server = Server::start(&[]);
    let head_part = partial_with(&server, b"0123456789");
    let mut stuck = Vec::new();
    for i in 0..25u64 {
        let data = random_bytes(64 * 1024, 600 + i);
        let last = create_partial(&server, data.len());
        assert_eq!(patch(&last, 0, data[..60_000].to_vec()).0, 204);
        let concat = format!("final;{} {}", path_of(&head_part), path_of(&last));
        let tail = data[60_000..].to_vec();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (b2, last2) = (barrier.clone(), last.clone());
        let t = std::thread::spawn(move || {
            b2.wait();
            // Stagger a little so the PATCH lands anywhere inside the final's creation.
            std::thread::sleep(Duration::from_micros((i % 5) * 700));
            patch(&last2, 60_000, tail)
        });
        barrier.wait();
        let resp = post_final(&server, &concat);
        assert_eq!(resp.status().as_u16(), 201);
        let fin = location(&resp).unwrap();
        assert_eq!(t.join().unwrap(), (204, Some(64 * 1024)));
        let done = eventually(Duration::from_secs(3), || {
            hdr(&head(&fin), "upload-offset").is_some()
        });
        if !done {
            stuck.push(i);
        }
    }
    assert!(
        stuck.is_empty(),
        "finals never completed in rounds {stuck:?}"
    );
    let mut server = server;
    assert!(server.terminate(Duration::from_secs(10)).is_some());
    assert_fsck_clean(&server.data_dir);
}

/// A DELETE of a part racing the creation of a final that lists it, 100 times over HTTP: a
/// final answered 201 serves its bytes, and once everything is deleted `ferry fsck` finds
/// nothing (before concatenation became one transaction, finals answered 201 then 404 for
/// ever, and parts' data stayed on disk).
#[test]
fn deleting_a_part_while_a_final_is_created_leaves_nothing_inconsistent() {
    let mut server = Server::start(&[]);
    let (mut created, mut refused) = (0, 0);
    for i in 0..100u64 {
        let data = random_bytes(1000, 700 + i);
        let (a, b) = (partial_with(&server, &data), partial_with(&server, b"tail"));
        let concat = format!("final;{} {}", path_of(&a), path_of(&b));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (b2, gone) = (barrier.clone(), b.clone());
        let t = std::thread::spawn(move || {
            b2.wait();
            delete(&gone)
        });
        barrier.wait();
        let resp = post_final(&server, &concat);
        assert_eq!(t.join().unwrap(), 204);
        match resp.status().as_u16() {
            201 => {
                created += 1;
                let fin = location(&resp).unwrap();
                let (status, _, body) = get(&fin);
                assert_eq!(status, 200, "round {i}: a final answered 201");
                assert!(body == [data.as_slice(), b"tail"].concat(), "round {i}");
                assert_eq!(delete(&fin), 204);
            }
            404 => refused += 1,
            other => panic!("round {i}: {other}"),
        }
        assert_eq!(delete(&a), 204);
    }
    eprintln!("{created} finals created, {refused} refused");
    assert!(server.terminate(Duration::from_secs(10)).is_some());
    assert_eq!(stored_files(&server.data_dir), 0, "no data left");
    assert_fsck_clean(&server.data_dir);
}

#[test]
fn hostile_concatenation_requests() {
    let server = Server::start(&[]);
    let a = random_bytes(1000, 91);
    let ua = partial_with(&server, &a);
    let ub = create_partial(&server, 500);
    assert_eq!(patch(&ub, 0, vec![3u8; 200]), (204, Some(200)));
    let regular = create(&server, 4, None);
    assert_eq!(patch(&regular, 0, b"reg!".to_vec()), (204, Some(4)));
    let resp = post_final(&server, &format!("final;{}", path_of(&ua)));
    assert_eq!(resp.status().as_u16(), 201);
    let fin = location(&resp).unwrap();
    let watched = [ua.clone(), ub.clone(), regular.clone(), fin.clone()];
    let before: Vec<State> = watched.iter().map(|u| state(u)).collect();
    let files = stored_files(&server.data_dir);
    let pa = path_of(&ua);
    let ida = id_of(&ua);
    let addr = server.addr;

    let many_parts = format!("final;{}", vec![pa.as_str(); 10_001].join(" "));
    let huge = format!("final;{}", "/".repeat(70_000));
    const E400: &[u16] = &[400];
    // Paths that cannot name an upload: refused as foreign (400) or unknown (404).
    const E400_404: &[u16] = &[400, 404];
    // Larger than the request head limit (32 KiB by default): 431 from the HTTP layer.
    const E400_431: &[u16] = &[400, 431];
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("empty", b"".to_vec(), E400),
        ("whitespace", b"   ".to_vec(), E400),
        ("Partial (case)", b"Partial".to_vec(), E400),
        ("partial;", b"partial;".to_vec(), E400),
        ("final without list", b"final".to_vec(), E400),
        ("final; empty list", b"final;".to_vec(), E400),
        ("final; spaces only", b"final;   ".to_vec(), E400),
        ("final with space", format!("final {pa}").into_bytes(), E400),
        ("finale", format!("finale;{pa}").into_bytes(), E400),
        (
            "comma list",
            format!("final;{pa},{pa}").into_bytes(),
            E400_404,
        ),
        (
            "non-ASCII URL",
            [b"final;/files/\xff".as_slice(), ida.as_bytes()].concat(),
            E400,
        ),
        (
            "control character",
            format!("final;{pa}\x01").into_bytes(),
            E400,
        ),
        ("10,001 parts", many_parts.into_bytes(), E400_431),
        ("70 KB value", huge.into_bytes(), E400_431),
        (
            "dot segments",
            format!("final;/files/../files/{ida}").into_bytes(),
            E400_404,
        ),
        (
            "dot segments outside",
            format!("final;/x/../files/{ida}").into_bytes(),
            E400_404,
        ),
        (
            "encoded slash",
            format!("final;/files%2F{ida}").into_bytes(),
            E400_404,
        ),
        (
            "encoded id slash",
            format!("final;/files/%2F{ida}").into_bytes(),
            E400_404,
        ),
        (
            "encoded dots",
            format!("final;/files/%2e%2e/{ida}").into_bytes(),
            E400_404,
        ),
        (
            "id in the query",
            format!("final;/files/?id={ida}").into_bytes(),
            E400_404,
        ),
        (
            "id in a foreign URL's query",
            format!("final;http://evil.example/?u=http://{addr}/files/{ida}").into_bytes(),
            E400,
        ),
        (
            "id with a trailing slash",
            format!("final;{pa}/").into_bytes(),
            E400_404,
        ),
        (
            "upper-case id",
            format!("final;/files/{}", ida.to_uppercase()).into_bytes(),
            E400_404,
        ),
        ("the collection", b"final;/files/".to_vec(), E400_404),
        (
            "final of a final",
            format!("final;{}", path_of(&fin)).into_bytes(),
            E400,
        ),
        (
            "a part and a final",
            format!("final;{pa} {}", path_of(&fin)).into_bytes(),
            E400,
        ),
        (
            "regular upload",
            format!("final;{}", path_of(&regular)).into_bytes(),
            E400,
        ),
        (
            "userinfo",
            format!("final;http://user@{addr}/files/{ida}").into_bytes(),
            E400,
        ),
        (
            "javascript URL",
            format!("final;javascript:alert(1)//{ida}").into_bytes(),
            E400,
        ),
    ];
    let check = |case: &str| {
        for (u, b) in watched.iter().zip(&before) {
            assert_eq!(&state(u), b, "{u} changed by {case}");
        }
        assert_eq!(
            stored_files(&server.data_dir),
            files,
            "{case} stored something"
        );
        assert_healthy(&server, case);
    };
    for (case, value, want) in &cases {
        let req = request(
            "POST",
            "/files/",
            addr,
            &[
                (TUS.0, TUS.1.as_bytes()),
                ("Upload-Concat", value.as_slice()),
            ],
            b"",
        );
        let resp = raw(addr, &req, LIMIT);
        let status = status_of(&resp);
        assert!(
            want.contains(&status),
            "{case}: got {status}, want one of {want:?}: {resp}"
        );
        assert_eq!(header_of(&resp, "location"), None, "{case}");
        check(case);
    }

    // The same with a sent-twice header, a length, and a body.
    let two = send(
        addr,
        "POST",
        "/files/",
        &[
            TUS,
            ("Upload-Concat", "partial"),
            ("Upload-Concat", "partial"),
            ("Upload-Length", "1"),
        ],
        b"",
    );
    assert_error(&two, 400, "Upload-Concat twice");
    check("Upload-Concat twice");
    let fin_a = format!("final;{pa}");
    for (case, headers, body, want) in [
        (
            "final with Upload-Length",
            vec![
                TUS,
                ("Upload-Concat", fin_a.as_str()),
                ("Upload-Length", "1000"),
            ],
            vec![],
            400,
        ),
        (
            "final with a huge Upload-Length",
            vec![
                TUS,
                ("Upload-Concat", fin_a.as_str()),
                ("Upload-Length", "99999999999999999999"),
            ],
            vec![],
            400,
        ),
        (
            "final with Upload-Defer-Length",
            vec![
                TUS,
                ("Upload-Concat", fin_a.as_str()),
                ("Upload-Defer-Length", "1"),
            ],
            vec![],
            400,
        ),
        (
            "final with a body",
            vec![TUS, OCTET, ("Upload-Concat", fin_a.as_str())],
            a[..10].to_vec(),
            403,
        ),
        (
            "final with a checksummed body",
            vec![
                TUS,
                OCTET,
                ("Upload-Concat", fin_a.as_str()),
                ("Upload-Checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="),
            ],
            a[..10].to_vec(),
            403,
        ),
    ] {
        let resp = send(addr, "POST", "/files/", &headers, &body);
        assert_error(&resp, want, case);
        check(case);
    }
    // PATCH and method tricks on the final itself.
    let pf = path_of(&fin);
    for (case, method, headers) in [
        (
            "PATCH final",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "1000")],
        ),
        (
            "PATCH final at 0",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "0")],
        ),
        (
            "PATCH final with a length",
            "PATCH",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "1000"),
                ("Upload-Length", "1001"),
            ],
        ),
        (
            "PATCH final via override",
            "POST",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "1000"),
                ("X-HTTP-Method-Override", "PATCH"),
            ],
        ),
    ] {
        let resp = send(addr, method, &pf, &headers, b"z");
        assert_error(&resp, 403, case);
        check(case);
    }
    // Repeating a part (1,600 times cost 5 s of CPU each) is refused and leaves the rest alone
    // (as many times as fit in the 32 KiB request head).
    let many = vec![pa.as_str(); 28_000 / (pa.len() + 1)].join(" ");
    for list in [format!("final;{pa} {pa}"), format!("final;{many}")] {
        let resp = post_final(&server, &list);
        assert_eq!(resp.status().as_u16(), 400);
        assert!(resp.text().unwrap().contains("listed twice"));
    }
    for (u, b) in watched.iter().zip(&before) {
        assert_eq!(&state(u), b, "{u} changed by a repeated-part final");
    }
    assert_eq!(get(&fin).2, a);
}
