//! Resumption after an interruption at the protocol level: bodies cut off mid-request, a new
//! request taking over a busy upload, and a SIGKILLed server restarting with a truthful offset.

/// tus 1.0.
mod tus {
    use crate::support::tus::*;
    use crate::support::*;
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    #[test]
    fn a_cut_off_body_keeps_the_bytes_that_arrived() {
        let server = Server::start(&[]);
        let data = random_bytes(100_000, 6);
        let url = create(&server, data.len() as u64, None);
        let path = path_of(&url);
        {
            let mut s = TcpStream::connect(server.addr).unwrap();
            let head = format!(
                "PATCH {path} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\n\
             Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n\
             Content-Length: 100000\r\n\r\n",
                server.addr
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&data[..30_000]).unwrap();
            s.flush().unwrap();
            // Dropping the stream closes the connection mid-body.
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut offset = head_offset(&url);
        while offset != Some(30_000) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
            offset = head_offset(&url);
        }
        assert_eq!(offset, Some(30_000), "bytes that arrived are kept");
        assert_eq!(
            patch(&url, 30_000, data[30_000..].to_vec()),
            (204, Some(100_000))
        );
        assert_eq!(get_sha256(&url), sha256(&data));
    }
}

/// The IETF draft (`Upload-Draft-Interop-Version`).
mod ietf {
    use crate::support::ietf::{create, head, *};
    use crate::support::*;
    use std::io::Write;
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    /// A request that stays open with part of its body sent.
    fn open_partial_patch(
        addr: SocketAddr,
        path: &str,
        offset: u64,
        total: usize,
        sent: &[u8],
    ) -> TcpStream {
        let mut s = TcpStream::connect(addr).unwrap();
        let head = format!(
            "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nUpload-Draft-Interop-Version: 8\r\n\
         Content-Type: application/partial-upload\r\nUpload-Offset: {offset}\r\n\
         Upload-Complete: ?1\r\nContent-Length: {total}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(sent).unwrap();
        s.flush().unwrap();
        s
    }

    /// Waits (bounded) until HEAD reports at least `at_least`.
    fn wait_offset(addr: SocketAddr, path: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let o = head_offset_of(addr, "8", path);
            if o >= at_least || Instant::now() > deadline {
                return o;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn new_request_takes_over_a_busy_upload() {
        let server = Server::start(&[]);
        let a = server.addr;
        let data = random_bytes(100, 3);
        let (_, path) = create(
            a,
            "8",
            &[("Upload-Complete", "?0"), ("Upload-Length", "100")],
            b"",
        );
        let old = open_partial_patch(a, &path, 0, 100, &data[..40]);
        std::thread::sleep(Duration::from_millis(300));
        // HEAD never waits for the writer: the committed offset is still 0.
        assert_eq!(head_offset_of(a, "8", &path), 0);
        // A new append at 0 takes over: the old request commits its 40 bytes, so the new one is
        // told the true offset.
        let r = append(a, &path, 0, false, b"");
        assert_problem(&r, 409, "mismatching-upload-offset");
        assert_eq!(header_of(&r, "upload-offset").as_deref(), Some("40"));
        drop(old);
        let r = append(a, &path, 40, true, &data[40..]);
        assert_eq!(status_of(&r), 204, "{r}");
        assert_eq!(get_body_sha(a, &path), sha256(&data));
    }

    /// The upload id of the newest creation, from the server's debug log (without a 104 the
    /// client of a cut creation never saw its Location; the log is the server's own record, and
    /// only its debug lines show ids).
    fn created_path_from_log(server: &Server) -> String {
        let log = server.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("upload created"))
            .unwrap_or_else(|| panic!("no creation in the log:\n{log}"));
        let id = line
            .split(" id=")
            .nth(1)
            .and_then(|r| r.get(..32))
            .unwrap_or_else(|| panic!("no id in {line:?}"));
        format!("/files/{id}")
    }

    #[test]
    fn creation_cut_half_way_keeps_what_arrived_and_resumes() {
        let server = Server::start(&["--log", "info,ferry_server=debug"]);
        let a = server.addr;
        let data = random_bytes(2 * MIB, 4);
        let half = MIB;
        {
            let mut s = TcpStream::connect(a).unwrap();
            let head = format!(
                "POST /files/ HTTP/1.1\r\nHost: {a}\r\nUpload-Draft-Interop-Version: 8\r\n\
             Upload-Complete: ?1\r\nContent-Length: {}\r\n\r\n",
                data.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&data[..half]).unwrap();
            s.flush().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let path = loop {
            if server.log().contains("upload created") {
                break created_path_from_log(&server);
            }
            assert!(Instant::now() < deadline, "no creation logged");
            std::thread::sleep(Duration::from_millis(20));
        };
        let offset = wait_offset(a, &path, half as u64);
        assert_eq!(offset, half as u64, "HEAD shows exactly what arrived");
        let h = head(a, "8", &path);
        assert_eq!(header_of(&h, "upload-complete").as_deref(), Some("?0"));
        assert_eq!(
            header_of(&h, "upload-length").as_deref(),
            Some(data.len().to_string().as_str())
        );
        let r = append(a, &path, offset, true, &data[half..]);
        assert_eq!(status_of(&r), 204, "{r}");
        assert_eq!(header_of(&r, "upload-complete").as_deref(), Some("?1"));
        assert_eq!(get_body_sha(a, &path), sha256(&data));
    }

    /// SIGKILL while a body is in flight: after a restart HEAD reports exactly what was committed
    /// (the 64 MiB checkpoint), never less than a HEAD before the kill, and the upload completes.
    #[test]
    fn server_killed_mid_upload_restarts_with_truthful_offset() {
        let mut server = Server::start(&[]);
        let a = server.addr;
        let total = 80 * MIB;
        let data = random_bytes(total, 5);
        let len = total.to_string();
        let (_, path) = create(
            a,
            "8",
            &[("Upload-Complete", "?0"), ("Upload-Length", &len)],
            b"",
        );
        let mut s = open_partial_patch(a, &path, 0, total, &[]);
        s.write_all(&data[..70 * MIB]).unwrap();
        s.flush().unwrap();
        let before = wait_offset(a, &path, 64 * MIB as u64);
        assert!(before >= 64 * MIB as u64, "checkpoint committed: {before}");
        server.restart_same_port_after_kill();
        drop(s);
        let after = head_offset_of(a, "8", &path);
        assert!(
            after >= before && after <= 70 * MIB as u64,
            "offset after restart {after}, before kill {before}"
        );
        let r = append(a, &path, after, true, &data[after as usize..]);
        assert_eq!(status_of(&r), 204, "{r}");
        assert_eq!(get_body_sha(a, &path), sha256(&data));
    }
}
