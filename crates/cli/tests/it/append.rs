//! Appending to an upload and reading its offset: tus HEAD and PATCH (plain and chunked), the IETF
//! draft's appends and its 4xx answers to bad requests.

/// tus 1.0.
mod tus {
    use crate::support::tus::*;
    use crate::support::*;

    #[test]
    fn head_reports_offset_length_metadata_and_no_store() {
        let server = Server::start(&[]);
        // "a.txt" and "text/plain", plus a key without value.
        let md = "filename YS50eHQ=,filetype dGV4dC9wbGFpbg==,flag";
        let url = create(&server, 10, Some(md));
        assert_eq!(patch(&url, 0, b"0123".to_vec()), (204, Some(4)));
        let h = head(&url);
        assert_eq!(h.status().as_u16(), 200);
        assert_eq!(hdr(&h, "upload-offset").as_deref(), Some("4"));
        assert_eq!(hdr(&h, "upload-length").as_deref(), Some("10"));
        assert_eq!(hdr(&h, "upload-metadata").as_deref(), Some(md));
        assert_eq!(hdr(&h, "cache-control").as_deref(), Some("no-store"));
        assert_eq!(hdr(&h, "tus-resumable").as_deref(), Some("1.0.0"));
        assert_eq!(hdr(&h, "upload-defer-length"), None);

        // Without metadata there is no Upload-Metadata header.
        let url = create(&server, 10, None);
        assert_eq!(hdr(&head(&url), "upload-metadata"), None);
    }

    #[test]
    fn patch_appends_and_answers_204_with_the_new_offset() {
        let server = Server::start(&[]);
        let data = random_bytes(100_000, 3);
        let url = create(&server, data.len() as u64, None);
        let mut offset = 0;
        for chunk in data.chunks(30_000) {
            let resp = tus_patch(&url, offset).body(chunk.to_vec()).send().unwrap();
            assert_eq!(resp.status().as_u16(), 204, "PATCH at {offset}");
            offset += chunk.len() as u64;
            assert_eq!(
                hdr(&resp, "upload-offset"),
                Some(offset.to_string()),
                "PATCH to {offset}"
            );
            assert_eq!(hdr(&resp, "tus-resumable").as_deref(), Some("1.0.0"));
            assert_eq!(head_offset(&url), Some(offset));
        }
        assert_eq!(get_sha256(&url), sha256(&data));
    }

    #[test]
    fn patch_at_the_wrong_offset_is_409_and_changes_nothing() {
        let server = Server::start(&[]);
        let data = random_bytes(100, 4);
        let url = create(&server, 100, None);
        assert_eq!(patch(&url, 0, data[..40].to_vec()), (204, Some(40)));
        for wrong in [0u64, 39, 41, 99] {
            let (status, offset) = patch(&url, wrong, vec![0xEE; 10]);
            assert_eq!(status, 409, "Upload-Offset {wrong}");
            assert_eq!(offset, Some(40), "409 carries the real offset ({wrong})");
            assert_eq!(head_offset(&url), Some(40), "after Upload-Offset {wrong}");
        }
        assert_eq!(patch(&url, 40, data[40..].to_vec()), (204, Some(100)));
        assert_eq!(get_sha256(&url), sha256(&data), "no stray bytes");
    }

    #[test]
    fn patch_without_the_tus_content_type_is_415() {
        let server = Server::start(&[]);
        let url = create(&server, 10, None);
        let path = path_of(&url);
        for (what, ct) in [
            ("missing", None),
            ("octet-stream", Some("application/octet-stream")),
            ("text", Some("text/plain")),
            ("suffix", Some("application/offset+octet-stream-x")),
        ] {
            let mut headers = vec![TUS, ("Upload-Offset", "0")];
            if let Some(ct) = ct {
                headers.push(("Content-Type", ct));
            }
            let resp = send(server.addr, "PATCH", &path, &headers, b"abc");
            assert_eq!(status_of(&resp), 415, "Content-Type {what}: {resp}");
            assert_eq!(head_offset(&url), Some(0), "Content-Type {what}");
        }
    }

    #[test]
    fn unknown_upload_is_404_without_offset() {
        let server = Server::start(&[]);
        let url = format!("{}0123456789abcdef0123456789abcdef", server.files_url);
        let h = head(&url);
        assert_eq!(h.status().as_u16(), 404);
        assert_eq!(hdr(&h, "upload-offset"), None);
        let resp = tus_patch(&url, 0).body(b"abc".to_vec()).send().unwrap();
        assert_eq!(resp.status().as_u16(), 404, "PATCH");
        let resp = client().delete(&url).header(TUS.0, TUS.1).send().unwrap();
        assert_eq!(resp.status().as_u16(), 404, "DELETE");
        let resp = client().get(&url).send().unwrap();
        assert_eq!(resp.status().as_u16(), 404, "GET");
    }

    #[test]
    fn a_chunked_patch_works() {
        let server = Server::start(&[]);
        let data = random_bytes(50_000, 7);
        let url = create(&server, data.len() as u64, None);
        let path = path_of(&url);
        let mut req = format!(
            "PATCH {path} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            server.addr
        )
        .into_bytes();
        for chunk in data[..40_000].chunks(7_000) {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let resp = raw(server.addr, &req, LIMIT);
        assert_eq!(status_of(&resp), 204, "{resp}");
        assert_eq!(header_of(&resp, "Upload-Offset").as_deref(), Some("40000"));
        assert_eq!(head_offset(&url), Some(40_000));
        assert_eq!(
            patch(&url, 40_000, data[40_000..].to_vec()),
            (204, Some(50_000))
        );
        assert_eq!(get_sha256(&url), sha256(&data));
        assert_eq!(healthz(&server), 200);
    }
}

/// The IETF draft (`Upload-Draft-Interop-Version`).
mod ietf {
    use crate::support::ietf::{create, head, *};
    use crate::support::*;

    #[test]
    fn create_append_complete_and_download_v8() {
        let server = Server::start(&[]);
        let a = server.addr;
        let data = random_bytes(10_000, 1);
        let (resp, path) = create(
            a,
            "8",
            &[("Upload-Complete", "?0"), ("Upload-Length", "10000")],
            b"",
        );
        assert_eq!(header_of(&resp, "upload-offset").as_deref(), Some("0"));
        assert_eq!(header_of(&resp, "upload-complete").as_deref(), Some("?0"));
        assert!(
            header_of(&resp, "upload-limit").is_some_and(|l| l.contains("max-age=")),
            "{resp}"
        );

        let h = head(a, "8", &path);
        assert_eq!(status_of(&h), 204, "{h}");
        assert_eq!(header_of(&h, "upload-offset").as_deref(), Some("0"));
        assert_eq!(header_of(&h, "upload-complete").as_deref(), Some("?0"));
        assert_eq!(header_of(&h, "upload-length").as_deref(), Some("10000"));
        assert_eq!(header_of(&h, "cache-control").as_deref(), Some("no-store"));
        assert!(header_of(&h, "upload-limit").is_some(), "{h}");

        let r = append(a, &path, 0, false, &data[..4000]);
        assert_eq!(status_of(&r), 204, "{r}");
        assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("4000"));
        assert_eq!(header_of(&r, "upload-complete").as_deref(), Some("?0"));

        // Wrong offset: 409 with the right Upload-Offset and a mismatching-upload-offset problem.
        let r = append(a, &path, 2000, false, &data[2000..3000]);
        assert_problem(&r, 409, "mismatching-upload-offset");
        assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("4000"));
        let json: serde_json::Value = serde_json::from_str(body_of(&r)).unwrap();
        assert_eq!(json["expected-offset"], 4000);
        assert_eq!(json["provided-offset"], 2000);
        assert_eq!(head_offset_of(a, "8", &path), 4000, "offset unchanged");

        let r = append(a, &path, 4000, true, &data[4000..]);
        assert_eq!(status_of(&r), 204, "{r}");
        assert_eq!(header_of(&r, "upload-complete").as_deref(), Some("?1"));
        assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("10000"));
        assert!(
            header_of(&r, "repr-digest").is_some_and(|d| d.starts_with("sha-256=:")),
            "{r}"
        );
        let h = head(a, "8", &path);
        assert_eq!(header_of(&h, "upload-complete").as_deref(), Some("?1"));
        assert_eq!(get_body_sha(a, &path), sha256(&data));

        // Appending to a completed upload: content is an inconsistent length (draft -09 on);
        // an empty non-completing append is a completed-upload problem. Nothing changes.
        let r = append(a, &path, 10_000, false, b"more");
        assert_problem(&r, 400, "inconsistent-upload-length");
        let r = append(a, &path, 10_000, false, b"");
        assert_problem(&r, 400, "completed-upload");
        // Repeating the completing empty append is harmless.
        let r = append(a, &path, 10_000, true, b"");
        assert_eq!(status_of(&r), 204, "{r}");
        assert_eq!(head_offset_of(a, "8", &path), 10_000);
        assert_eq!(get_body_sha(a, &path), sha256(&data));
    }

    /// Request headers, expected status, a phrase of the message.
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);

    #[test]
    fn bad_requests_get_clear_4xx() {
        let server = Server::start(&["--max-size", "1000"]);
        let a = server.addr;
        let cases: Vec<Case> = vec![
            (vec![v("8")], 400, "Upload-Complete is required"),
            (vec![v("8"), ("Upload-Complete", "yes")], 400, "boolean"),
            (
                vec![v("9"), ("Upload-Complete", "?0")],
                400,
                "not supported",
            ),
            (
                vec![v("eight"), ("Upload-Complete", "?0")],
                400,
                "not supported",
            ),
            (
                vec![v("8"), ("Upload-Complete", "?0"), ("Upload-Length", "-1")],
                400,
                "negative",
            ),
            (
                vec![v("8"), ("Upload-Complete", "?0"), ("Upload-Length", "1x")],
                400,
                "Upload-Length",
            ),
            (
                vec![v("8"), ("Upload-Complete", "?0"), ("Upload-Length", "2000")],
                413,
                "maximum",
            ),
        ];
        for (hs, status, msg) in cases {
            let r = send(a, "POST", "/files/", &hs, b"");
            assert_eq!(status_of(&r), status, "{hs:?}: {r}");
            assert!(body_of(&r).contains(msg), "{hs:?}: {r}");
        }
        // 413 from a limit carries the limits.
        let r = send(
            a,
            "POST",
            "/files/",
            &[v("8"), ("Upload-Complete", "?0"), ("Upload-Length", "2000")],
            b"",
        );
        assert!(
            header_of(&r, "upload-limit").is_some_and(|l| l.contains("max-size=1000")),
            "{r}"
        );

        let (_, path) = create(a, "8", &[("Upload-Complete", "?0")], b"");
        // Appends need the media type (interop 6 on), Upload-Offset and Upload-Complete.
        let r = send(
            a,
            "PATCH",
            &path,
            &[
                v("8"),
                ("Content-Type", "application/offset+octet-stream"),
                ("Upload-Offset", "0"),
                ("Upload-Complete", "?0"),
            ],
            b"x",
        );
        assert_eq!(status_of(&r), 415, "{r}");
        let r = send(
            a,
            "PATCH",
            &path,
            &[v("8"), PARTIAL, ("Upload-Complete", "?0")],
            b"x",
        );
        assert_eq!(status_of(&r), 400, "{r}");
        assert!(body_of(&r).contains("Upload-Offset"), "{r}");
        let r = send(
            a,
            "PATCH",
            &path,
            &[v("8"), PARTIAL, ("Upload-Offset", "0")],
            b"x",
        );
        assert_eq!(status_of(&r), 400, "{r}");
        // Unknown upload.
        let r = head(a, "8", "/files/00000000000000000000000000000000");
        assert_eq!(status_of(&r), 404, "{r}");
        assert_eq!(head_offset_of(a, "8", &path), 0);
    }
}
