//! tus expiration: `Upload-Expires`, expiry pushed forward by PATCHes, sweeping on SIGUSR1, and a
//! hostile-input sweep on expired uploads.

use crate::support::tus::*;
use crate::support::*;
use std::time::{Duration, Instant};

#[test]
fn post_patch_and_head_carry_upload_expires_about_expire_after_ahead() {
    let server = Server::start(&["--expire-after", "1h", "--expire-finished-after", "2h"]);
    let near = |v: Option<String>, secs: f64, what: &str| {
        let v = v.unwrap_or_else(|| panic!("{what}: no Upload-Expires"));
        let ahead = secs_from_now(http_date(&v));
        assert!(
            (ahead - secs).abs() < 5.0,
            "{what}: Upload-Expires {v:?} is {ahead:.0}s ahead, want about {secs}s"
        );
    };
    let resp = tus_post(&server)
        .header("Upload-Length", "10")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    near(hdr(&resp, "upload-expires"), 3600.0, "POST");
    let url = location(&resp).unwrap();

    // creation-with-upload too.
    let resp = tus_post(&server)
        .header("Upload-Length", "10")
        .header(OCTET.0, OCTET.1)
        .body(vec![0u8; 4])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    near(hdr(&resp, "upload-expires"), 3600.0, "POST with upload");

    let resp = tus_patch(&url, 0).body(vec![1u8; 4]).send().unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    near(hdr(&resp, "upload-expires"), 3600.0, "PATCH");
    near(hdr(&head(&url), "upload-expires"), 3600.0, "HEAD");

    // The completing PATCH switches to the finished-upload policy.
    let resp = tus_patch(&url, 4).body(vec![2u8; 6]).send().unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    near(hdr(&resp, "upload-expires"), 7200.0, "completing PATCH");

    // Default policy: finished uploads never expire, so they carry no Upload-Expires.
    let server = Server::start(&["--expire-after", "1h"]);
    let url = create(&server, 3, None);
    let resp = tus_patch(&url, 0).body(b"abc".to_vec()).send().unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(
        hdr(&resp, "upload-expires"),
        None,
        "finished, never expires"
    );
    assert_eq!(hdr(&head(&url), "upload-expires"), None);
}

#[test]
fn expired_upload_is_gone_then_swept_on_sigusr1() {
    // A long sweep interval: only SIGUSR1 sweeps during this test.
    let server = Server::start(&["--expire-after", "2s", "--sweep-interval", "1h"]);
    // Each made in one request, so neither can expire half-made.
    let make = |body: &[u8], length: u64| {
        let resp = tus_post(&server)
            .header("Upload-Length", length.to_string())
            .header(OCTET.0, OCTET.1)
            .body(body.to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        location(&resp).unwrap()
    };
    let stale = make(b"abc", 10);
    let done = make(b"finished", 8);
    assert!(stored(&server, &stale).is_some());

    assert!(
        eventually(Duration::from_secs(6), || head(&stale).status().as_u16()
            == 410),
        "unfinished upload never expired"
    );
    let resp = head(&stale);
    assert_eq!(hdr(&resp, "upload-offset"), None, "410 carries no offset");
    let resp = tus_patch(&stale, 3).body(b"defg".to_vec()).send().unwrap();
    assert_eq!(resp.status().as_u16(), 410, "PATCH on expired");
    assert_eq!(get(&stale).0, 410, "GET on expired");
    assert_eq!(
        head(&done).status().as_u16(),
        200,
        "finished upload expired"
    );
    assert!(
        stored(&server, &stale).is_some(),
        "expired but not yet swept"
    );

    sigusr1(&server);
    assert!(
        eventually(Duration::from_secs(10), || head(&stale).status().as_u16()
            == 404),
        "SIGUSR1 did not sweep the expired upload; log:\n{}",
        server.log()
    );
    assert!(
        eventually(Duration::from_secs(5), || stored(&server, &stale).is_none()),
        "the swept upload's data is still there"
    );
    let resp = head(&done);
    assert_eq!(resp.status().as_u16(), 200, "finished upload swept");
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("8"));
    assert_eq!(get(&done).2, b"finished");
    assert_eq!(stored(&server, &done), Some(8));
}

#[test]
fn patches_push_the_expiry_forward() {
    let server = Server::start(&["--expire-after", "3s", "--sweep-interval", "1h"]);
    let active = create(&server, 100, None);
    let idle = create(&server, 100, None);
    let first = http_date(&hdr(&head(&active), "upload-expires").unwrap());
    let started = Instant::now();
    let mut offset = 0;
    let mut last = first;
    // 4.5 s of activity, a PATCH every 0.5 s: longer than the expiry, never idle for long.
    while started.elapsed() < Duration::from_millis(4500) {
        let resp = tus_patch(&active, offset).body(vec![9u8]).send().unwrap();
        assert_eq!(
            resp.status().as_u16(),
            204,
            "PATCH after {:?}",
            started.elapsed()
        );
        offset += 1;
        let exp = http_date(&hdr(&resp, "upload-expires").expect("Upload-Expires on PATCH"));
        assert!(exp >= last, "Upload-Expires went backwards");
        last = exp;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        last.duration_since(first).unwrap() >= Duration::from_secs(3),
        "expiry was not pushed forward: {first:?} -> {last:?}"
    );
    let resp = head(&active);
    assert_eq!(resp.status().as_u16(), 200, "active upload expired");
    assert_eq!(hdr(&resp, "upload-offset"), Some(offset.to_string()));
    assert_eq!(
        head(&idle).status().as_u16(),
        410,
        "idle upload did not expire"
    );
}

/// With concatenation-unfinished a final exists while its parts are still being uploaded; as
/// long as they are, the final must not expire under them.
#[test]
fn an_unfinished_final_lives_as_long_as_its_parts_are_active() {
    let server = Server::start(&["--expire-after", "3s", "--sweep-interval", "1h"]);
    let data = random_bytes(20, 8);
    let part = create_partial(&server, 20);
    let resp = post_final(&server, &format!("final;{}", path_of(&part)));
    assert_eq!(resp.status().as_u16(), 201);
    let fin = location(&resp).unwrap();
    let started = Instant::now();
    let mut offset = 0;
    while started.elapsed() < Duration::from_millis(4500) {
        assert_eq!(
            patch(
                &part,
                offset,
                data[offset as usize..offset as usize + 1].to_vec()
            )
            .0,
            204
        );
        offset += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        head(&fin).status().as_u16(),
        200,
        "the final expired while its part was being uploaded"
    );
    assert_eq!(
        patch(&part, offset, data[offset as usize..].to_vec()),
        (204, Some(20))
    );
    let resp = head(&fin);
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("20"));
    assert_eq!(get(&fin).2, data);
}

#[test]
fn hostile_requests_on_expired_uploads() {
    let server = Server::start(&["--expire-after", "2s", "--sweep-interval", "1h"]);
    // A finished upload (never expires) that must come through unchanged.
    let keep = create(&server, 5, None);
    assert_eq!(patch(&keep, 0, b"12345".to_vec()), (204, Some(5)));
    let resp = tus_post(&server)
        .header("Upload-Length", "100")
        .header(OCTET.0, OCTET.1)
        .body(vec![7u8; 10])
        .send()
        .unwrap();
    let expired = location(&resp).unwrap();
    let kept_before = state(&keep);
    assert!(
        eventually(Duration::from_secs(6), || head(&expired).status().as_u16()
            == 410),
        "upload did not expire"
    );
    let expired_before = state(&expired);
    assert_eq!(expired_before.status, 410);
    let p = path_of(&expired);
    let addr = server.addr;
    let good = Algo::Sha1.header(&[7u8; 10]);
    let fin_p = format!("final;{p}");
    let cases: Vec<(&str, &str, Headers, Vec<u8>, u16)> = vec![
        ("HEAD", "HEAD", vec![TUS], vec![], 410),
        ("GET", "GET", vec![], vec![], 410),
        (
            "PATCH at its offset",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "10")],
            vec![1; 10],
            410,
        ),
        (
            "PATCH at 0",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "0")],
            vec![1; 10],
            410,
        ),
        (
            "empty PATCH",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "10")],
            vec![],
            410,
        ),
        (
            "PATCH with a checksum",
            "PATCH",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "10"),
                ("Upload-Checksum", good.as_str()),
            ],
            vec![7; 10],
            410,
        ),
        (
            "PATCH with Upload-Length",
            "PATCH",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "10"),
                ("Upload-Length", "100"),
            ],
            vec![],
            410,
        ),
        (
            "PATCH tunnelled through POST",
            "POST",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "10"),
                ("X-HTTP-Method-Override", "PATCH"),
            ],
            vec![1; 5],
            410,
        ),
        ("DELETE", "DELETE", vec![TUS], vec![], 410),
        (
            "DELETE tunnelled through POST",
            "POST",
            vec![TUS, ("X-HTTP-Method-Override", "DELETE")],
            vec![],
            410,
        ),
        (
            "PATCH with a garbage Upload-Expires",
            "PATCH",
            vec![
                TUS,
                OCTET,
                ("Upload-Offset", "10"),
                ("Upload-Expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
            ],
            vec![1; 5],
            410,
        ),
        (
            "PATCH with a garbage offset",
            "PATCH",
            vec![TUS, OCTET, ("Upload-Offset", "-1")],
            vec![1; 5],
            400,
        ),
        (
            "final naming it",
            "POST",
            vec![TUS, ("Upload-Concat", fin_p.as_str())],
            vec![],
            400,
        ),
    ];
    for (case, method, headers, body, want) in &cases {
        let path = if *method == "POST" && !case.contains("tunnelled") {
            "/files/"
        } else {
            p.as_str()
        };
        let resp = send(addr, method, path, headers, body);
        if *method == "HEAD" {
            assert_eq!(status_of(&resp), *want, "{case}: {resp}");
        } else {
            assert_error(&resp, *want, case);
        }
        assert_eq!(
            state(&expired),
            expired_before,
            "expired upload changed by {case}"
        );
        assert_eq!(
            state(&keep),
            kept_before,
            "finished upload changed by {case}"
        );
        assert_healthy(&server, case);
    }

    // Garbage the server must ignore: a client cannot choose the expiry.
    for (case, value) in [
        ("far future", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ("past", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ("not a date", "tomorrow-ish"),
        ("number", "99999999999"),
    ] {
        let resp = tus_post(&server)
            .header("Upload-Length", "10")
            .header("Upload-Expires", value)
            .send()
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            201,
            "POST with Upload-Expires {case}"
        );
        let exp = http_date(&hdr(&resp, "upload-expires").unwrap());
        let ahead = secs_from_now(exp);
        assert!(
            (0.0..=4.0).contains(&ahead),
            "Upload-Expires {case}: the server's own expiry must win ({ahead:.1}s ahead)"
        );
    }
    assert_eq!(state(&keep), kept_before);

    // Finally the sweep removes it for good.
    sigusr1(&server);
    assert!(
        eventually(Duration::from_secs(10), || head(&expired).status().as_u16()
            == 404),
        "not swept"
    );
    assert_eq!(get(&keep).2, b"12345");
}
