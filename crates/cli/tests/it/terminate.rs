//! Terminating an upload: tus DELETE and the IETF draft's cancellation.

/// tus 1.0.
mod tus {
    use crate::support::tus::*;
    use crate::support::*;

    #[test]
    fn delete_is_204_then_the_upload_is_gone() {
        let server = Server::start(&[]);
        let url = create(&server, 10, None);
        assert_eq!(patch(&url, 0, b"01234".to_vec()), (204, Some(5)));
        let resp = client().delete(&url).header(TUS.0, TUS.1).send().unwrap();
        assert_eq!(resp.status().as_u16(), 204);
        assert_eq!(hdr(&resp, "tus-resumable").as_deref(), Some("1.0.0"));
        assert_eq!(head(&url).status().as_u16(), 404, "HEAD after DELETE");
        let (status, _) = patch(&url, 5, b"56789".to_vec());
        assert_eq!(status, 404, "PATCH after DELETE");
        assert_eq!(client().get(&url).send().unwrap().status().as_u16(), 404);
        let resp = client().delete(&url).header(TUS.0, TUS.1).send().unwrap();
        assert_eq!(resp.status().as_u16(), 404, "second DELETE");
        // Deleting one upload leaves others alone.
        let keep = create(&server, 3, None);
        let gone = create(&server, 3, None);
        client().delete(&gone).header(TUS.0, TUS.1).send().unwrap();
        assert_eq!(head_offset(&keep), Some(0));
    }
}

/// The IETF draft (`Upload-Draft-Interop-Version`).
mod ietf {
    use crate::support::ietf::{create, head, *};
    use crate::support::*;

    #[test]
    fn delete_cancels_the_upload() {
        let server = Server::start(&[]);
        let a = server.addr;
        let (_, path) = create(a, "8", &[("Upload-Complete", "?0")], b"abc");
        let r = send(a, "DELETE", &path, &[v("8")], b"");
        assert_eq!(status_of(&r), 204, "{r}");
        assert_eq!(status_of(&head(a, "8", &path)), 404);
        let r = append(a, &path, 3, true, b"d");
        assert_eq!(status_of(&r), 404, "{r}");
    }
}
