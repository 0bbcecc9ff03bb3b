//! A real browser (Debian's Chromium, driven by playwright-core through
//! tests/interop/browser.mjs) against `ferry serve`: Uppy's tus plugin on a page of another
//! origin uploads only when `--cors-origins` names that origin, and a page on a rebinding
//! domain cannot reach a server on loopback.

use crate::support::download::{require, run, text};
use crate::support::tus::stored_files;
use crate::support::*;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Longer than the script's own limit (60 s), so that its timeout reports first.
const LIMIT: Duration = Duration::from_secs(90);

fn script() -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop");
    assert!(
        dir.join("node_modules/playwright-core").is_dir() && dir.join("node_modules/uppy").is_dir(),
        "playwright-core or uppy missing in {}: run `bash scripts/setup-test-deps.sh`",
        dir.display()
    );
    require("chromium");
    dir.join("browser.mjs")
}

/// Runs the driver with `args`; its one JSON line.
fn drive(args: &[&str]) -> serde_json::Value {
    let out = run(Command::new("node").arg(script()).args(args), LIMIT);
    assert!(
        out.status.success(),
        "browser.mjs {args:?}: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "browser.mjs {args:?}: {e}: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn uppy_on_an_allowed_origin_uploads_byte_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(tmp.path(), "photo.bin", 1_000_003, 0x5001);
    let file = file.to_str().unwrap();
    let port = free_port().to_string();
    let origin = format!("http://app.test:{port}");
    let server = Server::start(&["--cors-origins", &origin]);
    let result = drive(&["uppy", &server.files_url, file, "--app-port", &port]);
    assert_eq!(result["ok"], true, "{result}\n{}", server.log());
    // tus-js-client resolved the server's relative Location against its endpoint.
    let url = result["uploadURL"].as_str().unwrap();
    assert!(url.starts_with(&server.files_url), "{url}");
    assert_eq!(get_sha256(url), sha);

    // The default allows no origin: the browser stops at the preflight, nothing is stored.
    let closed = Server::start(&[]);
    let result = drive(&["uppy", &closed.files_url, file, "--app-port", &port]);
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(stored_files(&closed.data_dir), 0);
}

#[test]
fn a_page_on_a_rebinding_domain_gets_421() {
    let server = Server::start(&[]);
    let result = drive(&["rebind", &server.addr.port().to_string()]);
    // The page's origin is the server's own (what rebinding achieves): Host names the domain.
    assert_eq!(
        result["origin"],
        format!("http://rebind.test:{}", server.addr.port())
    );
    assert_eq!(result["navigation"], 421, "{result}");
    assert_eq!(result["post"], 421, "{result}");
    assert!(
        result["body"].as_str().unwrap().contains("DNS rebinding"),
        "{result}"
    );
    assert_eq!(stored_files(&server.data_dir), 0);
}
