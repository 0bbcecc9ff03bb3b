//! Integrity on the server: tus checksum (every algorithm) and checksum-trailer (the two CRCs),
//! computed with the reference crates sha1, sha2, md-5, crc32fast, blake3, never with ferry's
//! own code; `Repr-Digest`, the IETF draft's `Content-Digest`, and a hostile-input sweep.

/// tus 1.0.
mod tus {
    use crate::support::tus::*;
    use crate::support::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::time::{Duration, Instant};

    #[test]
    fn checksum_every_algorithm_accepts_a_correct_digest_and_refuses_a_wrong_one() {
        let server = Server::start(&[]);
        for (i, algo) in ALGOS.into_iter().enumerate() {
            let data = random_bytes(2000, 100 + i as u64);
            let (a, b) = data.split_at(1000);
            let url = create(&server, 2000, None);
            // Sanity: the digest really has the algorithm's length (catches a wrong crate).
            let len = algo.digest(b"").len();
            assert_eq!(len, [20, 32, 64, 16, 4, 8, 32][i], "{algo:?} digest length");

            // A digest of other bytes: 460, nothing kept, the 460 carries the unchanged offset.
            let wrong = algo.header(b);
            assert_eq!(
                patch_checked(&url, 0, a, &wrong),
                (460, Some(0)),
                "{algo:?} wrong digest"
            );
            assert_eq!(head_offset(&url), Some(0), "{algo:?}: offset after 460");

            assert_eq!(
                patch_checked(&url, 0, a, &algo.header(a)),
                (204, Some(1000)),
                "{algo:?} correct digest"
            );
            // Flip one bit of the real digest: still a mismatch.
            let mut d = algo.digest(b);
            d[0] ^= 1;
            let flipped = format!("{} {}", algo.name(), STANDARD.encode(&d));
            assert_eq!(
                patch_checked(&url, 1000, b, &flipped),
                (460, Some(1000)),
                "{algo:?} one bit off"
            );
            assert_eq!(head_offset(&url), Some(1000), "{algo:?}: offset after 460");
            assert_eq!(
                patch_checked(&url, 1000, b, &algo.header(b)),
                (204, Some(2000)),
                "{algo:?} second chunk"
            );
            let (status, _, body) = get(&url);
            assert_eq!(status, 200);
            assert!(
                body == data,
                "{algo:?}: stored bytes differ from the source"
            );
        }
        assert_healthy(&server, "all algorithms");
    }

    /// A mismatching chunk far larger than the server's write buffers reaches the disk before the
    /// digest is known; it must still count for nothing, and the next chunk must overwrite it.
    #[test]
    fn checksum_mismatch_on_a_large_chunk_keeps_nothing() {
        let server = Server::start(&[]);
        let data = random_bytes(3 * MIB + 4097, 7);
        let total = data.len() as u64;
        let url = create(&server, total, None);
        assert_eq!(
            patch_checked(&url, 0, &data[..100], &Algo::Sha256.header(&data[..100])),
            (204, Some(100))
        );
        let rest = &data[100..];
        let mut garbled = rest.to_vec();
        garbled[rest.len() / 2] ^= 0xff;
        // The body is garbled in transit (digest of the real bytes).
        assert_eq!(
            patch_checked(&url, 100, &garbled, &Algo::Sha256.header(rest)),
            (460, Some(100))
        );
        assert_eq!(head_offset(&url), Some(100));
        assert_eq!(
            patch_checked(&url, 100, rest, &Algo::Sha256.header(rest)),
            (204, Some(total))
        );
        assert_eq!(get_sha256(&url), sha256(&data), "GET after the retry");
        assert_eq!(
            stored(&server, &url),
            Some(total),
            "the store holds exactly the upload"
        );
    }

    /// tus: an unsupported algorithm is 400, answered from the headers alone: the client need not
    /// send (and the server does not wait for) the body.
    #[test]
    fn unknown_checksum_algorithm_is_400_before_the_body() {
        let server = Server::start(&[]);
        let url = create(&server, 1_000_000, None);
        assert_eq!(patch(&url, 0, vec![1; 10]), (204, Some(10)));
        let files = stored_files(&server.data_dir);
        for (method, path, extra) in [
            ("PATCH", path_of(&url), vec![("Upload-Offset", "10")]),
            (
                "POST",
                "/files/".to_string(),
                vec![("Upload-Length", "1000000")],
            ),
        ] {
            let mut h: Vec<(&str, &str)> = vec![
                TUS,
                OCTET,
                ("Upload-Checksum", "whirlpool AAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                ("Content-Length", "999990"),
            ];
            h.extend(extra);
            let hb: Vec<(&str, &[u8])> = h.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
            // Headers only: the declared body never comes.
            let req = request(method, &path, server.addr, &hb, b"");
            let started = Instant::now();
            let resp = raw(server.addr, &req, Duration::from_secs(5));
            assert_error(&resp, 400, &format!("{method} with an unknown algorithm"));
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{method}: the 400 waited for the body"
            );
            assert!(
                body_of(&resp).contains("sha1"),
                "{method}: the 400 names the supported algorithms: {resp}"
            );
        }
        assert_eq!(head_offset(&url), Some(10));
        assert_eq!(
            stored_files(&server.data_dir),
            files,
            "refused creation left no upload"
        );
    }

    #[test]
    fn malformed_checksum_headers_are_400_and_change_nothing() {
        let server = Server::start(&[]);
        let data = random_bytes(64, 3);
        let url = create(&server, 64, None);
        let sha1_of_16 = format!("sha1 {}", STANDARD.encode([7u8; 16]));
        let sha256_with_sha1_digest =
            format!("sha256 {}", STANDARD.encode(Algo::Sha1.digest(&data)));
        let cases: Vec<(&str, String)> = vec![
            ("bad base64", "sha1 !!!!not*base64!!!!".into()),
            (
                "base64 with a hole",
                "sha1 Kq5sNclPz7QV 2+lfQIuc6R7oRu0=".into(),
            ),
            ("digest too short", sha1_of_16),
            ("digest of another algorithm", sha256_with_sha1_digest),
            ("missing digest", "sha1".into()),
            ("empty digest", "sha1 ".into()),
            ("empty value", String::new()),
            ("only a digest", STANDARD.encode(Algo::Sha1.digest(&data))),
        ];
        for (case, value) in &cases {
            let (status, _) = patch_checked(&url, 0, &data, value);
            assert_eq!(status, 400, "{case}: {value:?}");
            assert_eq!(head_offset(&url), Some(0), "{case}: offset");
        }
        assert_eq!(
            patch_checked(&url, 0, &data, &Algo::Sha1.header(&data)),
            (204, Some(64))
        );
        assert_eq!(get(&url).2, data);
    }

    /// A chunk with a checksum is all or nothing: when its body is cut off, none of it counts
    /// (without a checksum the server keeps what arrived; see `resume::tus`).
    #[test]
    fn a_cut_off_body_with_a_checksum_keeps_nothing() {
        let server = Server::start(&[]);
        let data = random_bytes(200_000, 5);
        let url = create(&server, 200_000, None);
        let checksum = Algo::Sha1.header(&data);
        let head_bytes = request(
            "PATCH",
            &path_of(&url),
            server.addr,
            &[
                (TUS.0, TUS.1.as_bytes()),
                (OCTET.0, OCTET.1.as_bytes()),
                ("Upload-Offset", b"0"),
                ("Upload-Checksum", checksum.as_bytes()),
                ("Content-Length", b"200000"),
            ],
            b"",
        );
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(&head_bytes).unwrap();
        s.write_all(&data[..120_000]).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        s.shutdown(Shutdown::Write).unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp);
        // The server may or may not get its answer out before the socket goes; if it does, it
        // is a 400.
        assert!(
            matches!(status_of(&resp), 0 | 400),
            "cut-off checksummed PATCH: {resp}"
        );
        drop(s);
        // Whatever the timing, a PATCH at offset 0 must now be accepted: had any of the 120,000
        // bytes been kept, it would be 409 (a new PATCH takes the upload over, so the cut request
        // has finished by the time this one is checked).
        assert_eq!(
            patch_checked(&url, 0, &data[..1000], &Algo::Sha1.header(&data[..1000])),
            (204, Some(1000)),
            "bytes of the cut-off chunk were kept"
        );
        assert_eq!(
            patch(&url, 1000, data[1000..].to_vec()),
            (204, Some(200_000))
        );
        assert_eq!(get(&url).2, data);
    }

    #[test]
    fn checksum_on_creation_with_upload() {
        let server = Server::start(&[]);
        let data = random_bytes(5000, 11);
        let first = &data[..3000];

        // Correct: 201 with Location and the new offset.
        let resp = tus_post(&server)
            .header("Upload-Length", "5000")
            .header(OCTET.0, OCTET.1)
            .header("Upload-Checksum", Algo::Blake3.header(first))
            .body(first.to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("3000"));
        let url = location(&resp).expect("Location");
        assert_eq!(head_offset(&url), Some(3000));
        assert_eq!(
            patch_checked(&url, 3000, &data[3000..], &Algo::Md5.header(&data[3000..])),
            (204, Some(5000))
        );
        assert_eq!(get(&url).2, data);

        // Wrong: 460, and nothing of the request is left behind (no unreachable empty upload).
        let files = stored_files(&server.data_dir);
        let resp = tus_post(&server)
            .header("Upload-Length", "5000")
            .header(OCTET.0, OCTET.1)
            .header("Upload-Checksum", Algo::Sha1.header(&data[1..3001]))
            .body(first.to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 460);
        if let Some(loc) = location(&resp) {
            // If the server does keep the upload, the client must be able to find it and it
            // must be empty.
            assert_eq!(head_offset(&loc), Some(0), "upload behind a 460");
        } else {
            assert_eq!(
                stored_files(&server.data_dir),
                files,
                "a 460 on creation left an upload nobody can reach"
            );
        }

        // Malformed: 400, no upload created.
        for value in ["sha1 ***", "sha1", "crc32 AAAAAAAA", "rot13 AAAA"] {
            let resp = tus_post(&server)
                .header("Upload-Length", "5000")
                .header(OCTET.0, OCTET.1)
                .header("Upload-Checksum", value)
                .body(first.to_vec())
                .send()
                .unwrap();
            assert_eq!(resp.status().as_u16(), 400, "{value:?}");
            assert_eq!(location(&resp), None, "{value:?}");
        }
        assert_eq!(stored_files(&server.data_dir), files);
    }

    #[test]
    fn checksum_trailer_correct_wrong_missing_and_doubled() {
        let server = Server::start(&[]);
        let data = random_bytes(300, 21);
        let url = create(&server, 300, None);
        let path = path_of(&url);
        let hdrs = |offset: &'static str| vec![TUS, OCTET, ("Upload-Offset", offset)];
        let announced = |offset: &'static str| {
            let mut h = hdrs(offset);
            h.push(("Trailer", "Upload-Checksum"));
            h
        };
        let (a, b) = (&data[..100], &data[100..200]);

        // Correct trailer, body in two chunks: 204 with the new offset.
        let resp = send_chunked(
            server.addr,
            "PATCH",
            &path,
            &announced("0"),
            &[&a[..40], &a[40..]],
            &[("Upload-Checksum", &Algo::Crc32.header(a))],
        );
        assert_eq!(status_of(&resp), 204, "correct trailer: {resp}");
        assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("100"));

        // Wrong trailer: 460, offset unchanged.
        let resp = send_chunked(
            server.addr,
            "PATCH",
            &path,
            &announced("100"),
            &[b],
            &[("Upload-Checksum", &Algo::Crc32.header(a))],
        );
        assert_error(&resp, 460, "wrong trailer");
        assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("100"));
        assert_eq!(head_offset(&url), Some(100));

        // Announced but never sent: 400, nothing kept.
        let resp = send_chunked(server.addr, "PATCH", &path, &announced("100"), &[b], &[]);
        assert_error(&resp, 400, "announced, missing trailer");
        assert_eq!(head_offset(&url), Some(100));

        // Announced on a body with Content-Length (which cannot carry trailers): 400, nothing kept.
        let resp = send(server.addr, "PATCH", &path, &announced("100"), b);
        assert_error(&resp, 400, "announced trailer on a Content-Length body");
        assert_eq!(head_offset(&url), Some(100));

        // Header and trailer both (both correct): ambiguous, 400, nothing kept.
        let mut both = announced("100");
        let header_value = Algo::Crc32.header(b);
        both.push(("Upload-Checksum", &header_value));
        let resp = send_chunked(
            server.addr,
            "PATCH",
            &path,
            &both,
            &[b],
            &[("Upload-Checksum", &Algo::Crc32.header(b))],
        );
        assert_error(&resp, 400, "header and trailer");
        assert_eq!(head_offset(&url), Some(100));

        // An algorithm the server did not hash on the way (it never reads a request back):
        // 400 naming what fits, nothing kept.
        for algo in [Algo::Sha1, Algo::Blake3, Algo::Sha256] {
            let resp = send_chunked(
                server.addr,
                "PATCH",
                &path,
                &announced("100"),
                &[b],
                &[("Upload-Checksum", &algo.header(b))],
            );
            assert_error(&resp, 400, "a trailer the server cannot check");
            assert!(resp.contains("crc32 or crc64nvme"), "{resp}");
            assert_eq!(head_offset(&url), Some(100));
        }

        // CRC-64/NVME works as a trailer too.
        let resp = send_chunked(
            server.addr,
            "PATCH",
            &path,
            &announced("100"),
            &[&b[..1], &b[1..]],
            &[("Upload-Checksum", &Algo::Crc64nvme.header(b))],
        );
        assert_eq!(status_of(&resp), 204, "crc64nvme trailer: {resp}");
        assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("200"));
        let c = &data[200..];
        let resp = send_chunked(
            server.addr,
            "PATCH",
            &path,
            &announced("200"),
            &[c],
            &[("Upload-Checksum", &Algo::Crc32.header(c))],
        );
        assert_eq!(status_of(&resp), 204, "crc32 trailer: {resp}");
        assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("300"));
        assert_eq!(get(&url).2, data, "stored bytes");
    }

    /// A large upload whose first PATCH asks for BLAKE3 (`Want-Repr-Digest`, as `ferry upload
    /// --digest blake3` sends) has it when the last PATCH is answered: kept running, not read back
    /// (which would only start then, in the background). One that accepts the CRC gets just that.
    #[test]
    fn want_repr_digest_on_the_first_patch_keeps_blake3_running() {
        let server = Server::start(&[]);
        let large = random_bytes(9 * MIB + 3, 63);
        let half = large.len() / 2;
        for (want, expect) in [
            (
                "blake3=10, sha-256=3",
                format!("{}, {}", blake3_member(&large), crc64nvme_member(&large)),
            ),
            ("crc64nvme=10, blake3=5", crc64nvme_member(&large)),
        ] {
            let url = create(&server, large.len() as u64, None);
            let send = |offset: usize, bytes: &[u8]| {
                client()
                    .patch(&url)
                    .header(TUS.0, TUS.1)
                    .header("Upload-Offset", offset.to_string())
                    .header("Content-Type", "application/offset+octet-stream")
                    .header("Want-Repr-Digest", want)
                    .body(bytes.to_vec())
                    .send()
                    .unwrap()
            };
            let first = send(0, &large[..half]);
            assert_eq!(first.status().as_u16(), 204);
            assert_eq!(hdr(&first, "repr-digest"), None, "{want}: not finished yet");
            let last = send(half, &large[half..]);
            assert_eq!(last.status().as_u16(), 204);
            assert_eq!(hdr(&last, "repr-digest"), Some(expect), "{want}");
        }
    }

    #[test]
    fn repr_digest_on_finished_uploads_only() {
        let server = Server::start(&[]);
        // Small: computed before the completing PATCH is answered.
        let small = random_bytes(MIB, 61);
        let url = create(&server, small.len() as u64, None);
        assert_eq!(patch(&url, 0, small[..1000].to_vec()), (204, Some(1000)));
        assert_eq!(hdr(&head(&url), "repr-digest"), None, "unfinished upload");
        assert_eq!(get(&url).0, 409);
        assert_eq!(
            patch(&url, 1000, small[1000..].to_vec()),
            (204, Some(MIB as u64))
        );
        let want = repr_digest(&small);
        assert_eq!(hdr(&head(&url), "repr-digest"), Some(want.clone()), "HEAD");
        let (status, digest, body) = get(&url);
        assert_eq!(status, 200);
        assert_eq!(digest, Some(want), "GET");
        assert!(body == small);

        // Large (> 8 MiB): CRC-64/NVME (kept running) at once; BLAKE3 or SHA-256 only once a
        // client asks for it (Want-Repr-Digest), computed then.
        let large = random_bytes(9 * MIB + 1, 62);
        let url = create(&server, large.len() as u64, None);
        assert_eq!(
            patch(&url, 0, large.clone()),
            (204, Some(large.len() as u64))
        );
        let crc_only = crc64nvme_member(&large);
        assert_eq!(
            hdr(&head(&url), "repr-digest"),
            Some(crc_only.clone()),
            "HEAD"
        );
        assert_eq!(get(&url).1, Some(crc_only.clone()), "GET");
        let asking = |want: &str| {
            let resp = client()
                .head(&url)
                .header(TUS.0, TUS.1)
                .header("want-repr-digest", want)
                .send()
                .unwrap();
            hdr(&resp, "repr-digest")
        };
        assert_eq!(
            asking("crc64nvme=5, sha-256=1"),
            Some(crc_only.clone()),
            "CRC-64/NVME accepted: nothing computed"
        );
        let b3 = format!("{}, {crc_only}", blake3_member(&large));
        assert_eq!(
            asking("blake3=5, sha-256=1"),
            Some(b3),
            "BLAKE3 accepted: HEAD waits for it, no SHA-256 computed"
        );
        let want = format!(
            "{}, {}, {crc_only}",
            sha256_member(&large),
            blake3_member(&large)
        );
        assert_eq!(
            asking("sha-256=10"),
            Some(want.clone()),
            "HEAD waits for SHA-256"
        );
        let (status, digest, body) = get(&url);
        assert_eq!(status, 200);
        assert_eq!(digest, Some(want), "GET");
        assert!(body == large);

        // Zero-length: complete at once, digest of nothing.
        let url = create(&server, 0, None);
        assert_eq!(hdr(&head(&url), "repr-digest"), Some(repr_digest(b"")));
    }

    #[test]
    fn hostile_checksums_and_trailers() {
        let t = target(&[]);
        let chunk = &t.data[10..30];
        let good = Algo::Sha1.header(chunk);
        // Under the 32 KiB request head limit (past it hyper answers 431 before any handler).
        let long_value = format!("sha1 {}", "A".repeat(24_000));
        let base: Vec<(&str, &[u8])> = vec![
            (TUS.0, TUS.1.as_bytes()),
            (OCTET.0, OCTET.1.as_bytes()),
            ("Upload-Offset", b"10"),
        ];
        let with = |extra: &[(&'static str, &'static [u8])]| {
            let mut h = base.clone();
            h.extend_from_slice(extra);
            h
        };
        let leak = |s: String| -> &'static [u8] { Box::leak(s.into_bytes().into_boxed_slice()) };
        fn b(s: &'static [u8]) -> &'static [u8] {
            s
        }
        // Header cases: (name, headers, body, expected status).
        let cases: Vec<(&str, RawHeaders, Vec<u8>, u16)> = vec![
            (
                "unknown algorithm",
                with(&[("Upload-Checksum", b(b"whirlpool AAAA"))]),
                chunk.to_vec(),
                400,
            ),
            (
                "upper-case garbage algorithm",
                with(&[("Upload-Checksum", b(b"SHA-1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="))]),
                chunk.to_vec(),
                400,
            ),
            (
                "checksum sent twice",
                with(&[
                    ("Upload-Checksum", leak(good.clone())),
                    ("Upload-Checksum", leak(good.clone())),
                ]),
                chunk.to_vec(),
                400,
            ),
            (
                "non-ASCII value",
                with(&[("Upload-Checksum", b(b"sha1 \xff\xfe\xfd="))]),
                chunk.to_vec(),
                400,
            ),
            (
                "24 KB digest",
                with(&[("Upload-Checksum", leak(long_value))]),
                chunk.to_vec(),
                400,
            ),
            (
                "crc32 with 8 bytes",
                with(&[("Upload-Checksum", b(b"crc32 AAAAAAAAAAA="))]),
                chunk.to_vec(),
                400,
            ),
            (
                "url-safe base64",
                with(&[(
                    "Upload-Checksum",
                    leak(format!(
                        "sha256 {}",
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfbu8; 32])
                    )),
                )]),
                chunk.to_vec(),
                400,
            ),
            (
                "right digest, body one byte longer",
                with(&[("Upload-Checksum", leak(good.clone()))]),
                t.data[10..31].to_vec(),
                460,
            ),
            (
                "right digest, empty body",
                with(&[("Upload-Checksum", leak(good.clone()))]),
                Vec::new(),
                // An empty PATCH changes nothing whatever it claims.
                204,
            ),
            (
                "checksum on a body past the length",
                with(&[("Upload-Checksum", leak(Algo::Sha1.header(&[0u8; 91])))]),
                vec![0u8; 91],
                413,
            ),
            (
                "trailer announced on a Content-Length body",
                with(&[("Trailer", b(b"Upload-Checksum"))]),
                chunk.to_vec(),
                400,
            ),
        ];
        for (case, headers, body, want) in &cases {
            let resp = raw(
                t.server.addr,
                &request("PATCH", &t.path, t.server.addr, headers, body),
                LIMIT,
            );
            if *want == 204 {
                // An empty body appends nothing; whether its checksum is then checked (460) or
                // ignored (204), nothing may change.
                assert!(matches!(status_of(&resp), 204 | 460), "{case}: {resp}");
            } else {
                assert_error(&resp, *want, case);
            }
            t.assert_intact(case);
        }

        // A control byte in a header value is invalid HTTP: hyper's parser answers 400 (with no
        // body of ours) before ferry sees the request.
        let req = request(
            "PATCH",
            &t.path,
            t.server.addr,
            &with(&[(
                "Upload-Checksum",
                b(b"sha1 Kq5sNclPz7QV2+lf\x01QIuc6R7oRu0="),
            )]),
            chunk,
        );
        let resp = raw(t.server.addr, &req, LIMIT);
        assert_eq!(status_of(&resp), 400, "control character: {resp}");
        t.assert_intact("control character");

        // Trailer cases (chunked).
        let hdrs = vec![
            TUS,
            OCTET,
            ("Upload-Offset", "10"),
            ("Trailer", "Upload-Checksum"),
        ];
        let mut with_header = hdrs.clone();
        with_header.push(("Upload-Checksum", &good));
        let bad_len = format!("sha1 {}", STANDARD.encode([1u8; 19]));
        let trailer_cases: Vec<(&str, &Headers, Headers, u16)> = vec![
            (
                "trailer: unknown algorithm",
                &hdrs,
                vec![("Upload-Checksum", "whirlpool AAAA")],
                400,
            ),
            (
                "trailer: bad base64",
                &hdrs,
                vec![("Upload-Checksum", "sha1 ***")],
                400,
            ),
            (
                "trailer: wrong length",
                &hdrs,
                vec![("Upload-Checksum", bad_len.as_str())],
                400,
            ),
            ("trailer: empty", &hdrs, vec![("Upload-Checksum", "")], 400),
            (
                "trailer: digest of other bytes",
                &hdrs,
                vec![("Upload-Checksum", "crc32 AAAAAA==")],
                460,
            ),
            (
                "trailer: an algorithm not hashed on the way",
                &hdrs,
                vec![("Upload-Checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")],
                400,
            ),
            (
                "trailer: only another trailer",
                &hdrs,
                vec![("X-Other", "1")],
                400,
            ),
            (
                "trailer: header and trailer",
                &with_header,
                vec![("Upload-Checksum", good.as_str())],
                400,
            ),
            ("trailer: announced, none sent", &hdrs, vec![], 400),
        ];
        for (case, headers, trailers, want) in &trailer_cases {
            let resp = send_chunked(
                t.server.addr,
                "PATCH",
                &t.path,
                headers,
                &[&chunk[..7], &chunk[7..]],
                trailers,
            );
            assert_error(&resp, *want, case);
            t.assert_intact(case);
        }
        t.finish_and_verify();
    }
}

/// The IETF draft (`Upload-Draft-Interop-Version`).
mod ietf {
    use crate::support::ietf::{create, *};
    use crate::support::*;

    #[test]
    fn content_digest_is_verified() {
        let server = Server::start(&[]);
        let a = server.addr;
        let (_, path) = create(a, "8", &[("Upload-Complete", "?0")], b"");
        let good = |data: &[u8]| {
            use base64::Engine as _;
            use sha2::Digest as _;
            format!(
                "sha-256=:{}:",
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
            )
        };
        let digest = good(b"hello");
        let r = send(
            a,
            "PATCH",
            &path,
            &[
                v("8"),
                PARTIAL,
                ("Upload-Offset", "0"),
                ("Upload-Complete", "?0"),
                ("Content-Digest", &digest),
            ],
            b"hello",
        );
        assert_eq!(status_of(&r), 204, "{r}");
        assert_eq!(head_offset_of(a, "8", &path), 5);
        let wrong = good(b"other");
        let r = send(
            a,
            "PATCH",
            &path,
            &[
                v("8"),
                PARTIAL,
                ("Upload-Offset", "5"),
                ("Upload-Complete", "?1"),
                ("Content-Digest", &wrong),
            ],
            b"world",
        );
        assert_eq!(status_of(&r), 400, "{r}");
        assert!(body_of(&r).contains("Content-Digest"), "{r}");
        assert_eq!(
            head_offset_of(a, "8", &path),
            5,
            "mismatching content discarded"
        );
        // Unknown algorithms only are ignored (RFC 9530).
        let r = send(
            a,
            "PATCH",
            &path,
            &[
                v("8"),
                PARTIAL,
                ("Upload-Offset", "5"),
                ("Upload-Complete", "?1"),
                ("Content-Digest", "unixsum=12"),
            ],
            b"world",
        );
        assert_eq!(status_of(&r), 204, "{r}");
        // HEAD with Want-Repr-Digest gets the whole upload's digest.
        let h = send(
            a,
            "HEAD",
            &path,
            &[v("8"), ("Want-Repr-Digest", "sha-256=10")],
            b"",
        );
        // (Small uploads carry SHA-256 and ferry's BLAKE3 and CRC-64/NVME.)
        let b3 = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(blake3::hash(b"helloworld").as_bytes())
        };
        assert_eq!(
            header_of(&h, "repr-digest"),
            Some(format!(
                "{}, blake3=:{b3}:, {}",
                good(b"helloworld"),
                crc64nvme_member(b"helloworld")
            ))
        );
    }
}
