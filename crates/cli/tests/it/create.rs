//! Creating uploads: tus creation, creation-with-upload and creation-defer-length, and the IETF
//! draft's creation with a whole or partial body and an unknown length.

/// tus 1.0.
mod tus {
    use crate::support::tus::*;
    use crate::support::*;

    #[test]
    fn post_creates_with_absolute_location_under_files_url() {
        let server = Server::start(&[]);
        let resp = tus_post(&server)
            .header("Upload-Length", "42")
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        assert_eq!(hdr(&resp, "tus-resumable").as_deref(), Some("1.0.0"));
        assert_eq!(
            hdr(&resp, "upload-offset"),
            None,
            "no body, no Upload-Offset"
        );
        let location = location(&resp).expect("Location");
        assert_upload_url(&location, &server.files_url);
        let h = head(&location);
        assert_eq!(h.status().as_u16(), 200);
        assert_eq!(hdr(&h, "upload-offset").as_deref(), Some("0"));
        assert_eq!(hdr(&h, "upload-length").as_deref(), Some("42"));
        // Two creations never share an id.
        let other = create(&server, 42, None);
        assert_ne!(other, location);
    }

    #[test]
    fn zero_length_upload_is_complete_at_once() {
        let server = Server::start(&[]);
        let url = create(&server, 0, None);
        let h = head(&url);
        assert_eq!(h.status().as_u16(), 200);
        assert_eq!(hdr(&h, "upload-offset").as_deref(), Some("0"));
        assert_eq!(hdr(&h, "upload-length").as_deref(), Some("0"));
        let resp = client().get(&url).send().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(hdr(&resp, "content-length").as_deref(), Some("0"));
        assert!(resp.bytes().unwrap().is_empty());
    }

    #[test]
    fn creation_with_upload_answers_the_new_offset() {
        let server = Server::start(&[]);
        let data = random_bytes(5000, 1);
        // Part of the upload in the POST.
        let resp = tus_post(&server)
            .header("Upload-Length", "5000")
            .header(OCTET.0, OCTET.1)
            .body(data[..1200].to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("1200"));
        let url = location(&resp).unwrap();
        assert_upload_url(&url, &server.files_url);
        assert_eq!(head_offset(&url), Some(1200));
        assert_eq!(patch(&url, 1200, data[1200..].to_vec()), (204, Some(5000)));
        assert_eq!(get_sha256(&url), sha256(&data));

        // The whole upload in the POST.
        let resp = tus_post(&server)
            .header("Upload-Length", "5000")
            .header(OCTET.0, OCTET.1)
            .body(data.clone())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("5000"));
        assert_eq!(get_sha256(&location(&resp).unwrap()), sha256(&data));
    }

    #[test]
    fn creation_with_upload_needs_the_tus_content_type() {
        let server = Server::start(&[]);
        let resp = tus_post(&server)
            .header("Upload-Length", "10")
            .header("Content-Type", "application/octet-stream")
            .body(vec![1u8; 10])
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 415);
        assert_eq!(location(&resp), None);
    }

    #[test]
    fn defer_length_then_declare_on_patch_then_never_change() {
        let server = Server::start(&[]);
        let data = random_bytes(3000, 2);
        let resp = tus_post(&server)
            .header("Upload-Defer-Length", "1")
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let url = location(&resp).unwrap();

        let h = head(&url);
        assert_eq!(h.status().as_u16(), 200);
        assert_eq!(hdr(&h, "upload-defer-length").as_deref(), Some("1"));
        assert_eq!(hdr(&h, "upload-length"), None);
        assert_eq!(hdr(&h, "upload-offset").as_deref(), Some("0"));

        // Bytes before the length is known.
        assert_eq!(patch(&url, 0, data[..1000].to_vec()), (204, Some(1000)));
        let h = head(&url);
        assert_eq!(hdr(&h, "upload-defer-length").as_deref(), Some("1"));
        assert_eq!(hdr(&h, "upload-length"), None);

        // The length arrives with the next PATCH.
        let resp = tus_patch(&url, 1000)
            .header("Upload-Length", "3000")
            .body(data[1000..2000].to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204);
        assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("2000"));
        let h = head(&url);
        assert_eq!(hdr(&h, "upload-length").as_deref(), Some("3000"));
        assert_eq!(hdr(&h, "upload-defer-length"), None);

        // Once set it cannot change; nothing is written.
        let resp = tus_patch(&url, 2000)
            .header("Upload-Length", "4000")
            .body(data[2000..].to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let h = head(&url);
        assert_eq!(hdr(&h, "upload-length").as_deref(), Some("3000"));
        assert_eq!(hdr(&h, "upload-offset").as_deref(), Some("2000"));

        // Repeating the same length is harmless.
        let resp = tus_patch(&url, 2000)
            .header("Upload-Length", "3000")
            .body(data[2000..].to_vec())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204);
        assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("3000"));
        assert_eq!(get_sha256(&url), sha256(&data));
    }

    #[test]
    fn defer_length_declared_by_an_empty_patch() {
        let server = Server::start(&[]);
        let resp = tus_post(&server)
            .header("Upload-Defer-Length", "1")
            .send()
            .unwrap();
        let url = location(&resp).unwrap();
        let resp = tus_patch(&url, 0)
            .header("Upload-Length", "4")
            .body(Vec::new())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204);
        assert_eq!(hdr(&resp, "upload-offset").as_deref(), Some("0"));
        assert_eq!(hdr(&head(&url), "upload-length").as_deref(), Some("4"));
        assert_eq!(patch(&url, 0, b"abcd".to_vec()), (204, Some(4)));
        assert_eq!(get_sha256(&url), sha256(b"abcd"));
    }

    #[test]
    fn empty_upload_metadata_header_is_accepted() {
        // tuspy sends "Upload-Metadata: " when there is no metadata.
        let server = Server::start(&[]);
        for value in ["", " "] {
            let resp = send(
                server.addr,
                "POST",
                "/files/",
                &[TUS, ("Upload-Length", "3"), ("Upload-Metadata", value)],
                b"",
            );
            assert_eq!(status_of(&resp), 201, "Upload-Metadata {value:?}: {resp}");
            let url = url_at(server.addr, &header_of(&resp, "Location").unwrap());
            let h = head(&url);
            assert_eq!(h.status().as_u16(), 200);
            assert_eq!(hdr(&h, "upload-metadata"), None);
        }
    }
}

/// The IETF draft (`Upload-Draft-Interop-Version`).
mod ietf {
    use crate::support::ietf::{create, head, *};
    use crate::support::*;

    #[test]
    fn creation_with_whole_body_by_post_put_and_patch() {
        let server = Server::start(&[]);
        let a = server.addr;
        for (i, method) in ["POST", "PUT", "PATCH"].into_iter().enumerate() {
            let data = random_bytes(50_000, 10 + i as u64);
            let resp = send(
                a,
                method,
                "/files/",
                &[v("8"), ("Upload-Complete", "?1")],
                &data,
            );
            assert_eq!(status_of(&resp), 201, "{method}: {resp}");
            assert_eq!(header_of(&resp, "upload-complete").as_deref(), Some("?1"));
            assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("50000"));
            assert_eq!(header_of(&resp, "upload-length").as_deref(), Some("50000"));
            let path = path_of(&header_of(&resp, "location").unwrap());
            assert_eq!(get_body_sha(a, &path), sha256(&data), "{method}");
        }
        // An empty complete creation is an empty upload.
        let (resp, path) = create(a, "8", &[("Upload-Complete", "?1")], b"");
        assert_eq!(header_of(&resp, "upload-complete").as_deref(), Some("?1"));
        assert_eq!(get_body_sha(a, &path), sha256(b""));
    }

    #[test]
    fn unknown_length_is_fixed_by_the_completing_request() {
        let server = Server::start(&[]);
        let a = server.addr;
        let data = random_bytes(3000, 2);
        let (resp, path) = create(a, "8", &[("Upload-Complete", "?0")], &data[..1000]);
        assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("1000"));
        assert_eq!(header_of(&resp, "upload-length"), None, "{resp}");
        // A chunked append (no Content-Length).
        let r = send_chunked(
            a,
            "PATCH",
            &path,
            &[
                v("8"),
                PARTIAL,
                ("Upload-Offset", "1000"),
                ("Upload-Complete", "?0"),
            ],
            &[&data[1000..1500], &data[1500..3000]],
            &[],
        );
        assert_eq!(status_of(&r), 204, "{r}");
        assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("3000"));
        assert_eq!(head_offset_of(a, "8", &path), 3000);
        // An empty completing append: the length is the offset.
        let r = append(a, &path, 3000, true, b"");
        assert_eq!(status_of(&r), 204, "{r}");
        assert_eq!(header_of(&r, "upload-complete").as_deref(), Some("?1"));
        let h = head(a, "8", &path);
        assert_eq!(header_of(&h, "upload-length").as_deref(), Some("3000"));
        assert_eq!(get_body_sha(a, &path), sha256(&data));
    }

    #[test]
    fn inconsistent_lengths_are_refused() {
        let server = Server::start(&[]);
        let a = server.addr;
        // Upload-Length and a complete body of another size.
        let r = send(
            a,
            "POST",
            "/files/",
            &[v("8"), ("Upload-Complete", "?1"), ("Upload-Length", "5")],
            b"abc",
        );
        assert_problem(&r, 400, "inconsistent-upload-length");

        let (_, path) = create(
            a,
            "8",
            &[("Upload-Complete", "?0"), ("Upload-Length", "10")],
            b"12345",
        );
        // Past the known length (Content-Length says so): refused before reading, upload kept.
        let r = append(a, &path, 5, false, b"6789012345");
        assert_problem(&r, 400, "inconsistent-upload-length");
        assert_eq!(head_offset_of(a, "8", &path), 5);
        // Completing short of the length.
        let r = append(a, &path, 5, true, b"678");
        assert_problem(&r, 400, "inconsistent-upload-length");
        // Another Upload-Length.
        let r = send(
            a,
            "PATCH",
            &path,
            &[
                v("8"),
                PARTIAL,
                ("Upload-Offset", "5"),
                ("Upload-Complete", "?0"),
                ("Upload-Length", "11"),
            ],
            b"6",
        );
        assert_problem(&r, 400, "inconsistent-upload-length");
        assert_eq!(head_offset_of(a, "8", &path), 5);
        // A chunked body that runs past the length: the upload is deactivated.
        let r = send_chunked(
            a,
            "PATCH",
            &path,
            &[
                v("8"),
                PARTIAL,
                ("Upload-Offset", "5"),
                ("Upload-Complete", "?0"),
            ],
            &[b"678901234567"],
            &[],
        );
        assert_problem(&r, 400, "inconsistent-upload-length");
        assert_eq!(status_of(&head(a, "8", &path)), 404);
    }
}
