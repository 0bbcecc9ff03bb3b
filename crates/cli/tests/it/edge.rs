//! The server's edges as a process: the host check on a loopback listener, and logs that name
//! uploads by tag at info level (docs/security.md).

use crate::support::tus::*;
use crate::support::*;
use std::time::{Duration, Instant};

#[test]
fn a_loopback_server_answers_a_rebinding_host_with_421() {
    let server = Server::start(&[]);
    let port = server.addr.port();
    let rebound = format!("rebind.example:{port}");
    let resp = send_with_host(
        server.addr,
        &rebound,
        "POST",
        "/files/",
        &[TUS, ("Upload-Length", "1")],
    );
    assert_eq!(status_of(&resp), 421, "{resp}");
    assert!(
        body_of(&resp).contains("--allowed-hosts rebind.example"),
        "{resp}"
    );
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let resp = send_with_host(
            server.addr,
            &host,
            "POST",
            "/files/",
            &[TUS, ("Upload-Length", "1")],
        );
        assert_eq!(status_of(&resp), 201, "{resp}");
    }
    let server = Server::start(&["--allowed-hosts", "rebind.example"]);
    let resp = send_with_host(
        server.addr,
        &rebound,
        "POST",
        "/files/",
        &[TUS, ("Upload-Length", "1")],
    );
    assert_eq!(status_of(&resp), 201, "{resp}");
}

/// The tag of an id as docs/security.md tells operators to compute it.
fn tag_of(id: &str) -> String {
    sha256(id.as_bytes())[..10].to_string()
}

#[test]
fn info_logs_name_uploads_by_tag_and_debug_logs_by_id() {
    for (filter, shows_id) in [("info", false), ("debug", true)] {
        let server = Server::start(&["--log", filter]);
        let url = create(&server, 3, None);
        let id = url.rsplit('/').next().unwrap().to_string();
        let resp = client().delete(&url).header(TUS.0, TUS.1).send().unwrap();
        assert_eq!(resp.status().as_u16(), 204);
        let tag = tag_of(&id);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !server.log().contains("terminated") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = server.log();
        assert!(
            log.contains(&format!("upload={tag}")),
            "{filter}: no tag {tag}:\n{log}"
        );
        assert_eq!(log.contains(&id), shows_id, "{filter}: id {id}:\n{log}");
    }
}
