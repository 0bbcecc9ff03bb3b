//! `ferry upload - URL`: standard input through a pipe, its length deferred until its end; cut
//! connections are resumed from the chunk kept in memory; a server that cannot take an unknown
//! length is named.

use crate::support::download::{run, text};
use crate::support::proxy::{Faults, Proxy};
use crate::support::*;
use std::process::Command;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// `cat FILE | ferry upload ARGS`, to the end.
fn piped(file: &std::path::Path, args: &[&str], state: &std::path::Path) -> std::process::Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    run(
        Command::new("bash").arg("-c").arg(format!(
            "set -o pipefail; cat '{}' | '{}' upload --state-dir '{}' {}",
            file.display(),
            ferry_bin().display(),
            state.display(),
            quoted.join(" ")
        )),
        Duration::from_secs(60),
    )
}

#[test]
fn standard_input_survives_cut_connections_byte_exact() {
    let server = Server::start(&[]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            cut_schedule: vec![3 * MIB as u64, 0, 5 * MIB as u64],
            ..Faults::default()
        },
    );
    let t = tempfile::tempdir().unwrap();
    let (f, sha) = random_file(t.path(), "data", 20 * MIB + 11, 1);
    let out = piped(
        &f,
        &[
            "--json",
            "--chunk-size",
            "4M",
            "--name",
            "backup.tar",
            "-",
            &proxy.url("/files/"),
        ],
        &t.path().join("state"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let done = files_done(&text(&out.stdout));
    assert_eq!(done[0]["file"], "-");
    assert_eq!(done[0]["bytes"], (20 * MIB + 11) as u64);
    assert_eq!(done[0]["verified"], true);
    let url = done[0]["url"].as_str().unwrap();
    assert_eq!(get_sha256(url), sha);
    let head = client().head(url).send().unwrap();
    let disposition = head.headers()["content-disposition"].to_str().unwrap();
    assert!(disposition.contains("backup.tar"), "{disposition}");
    assert!(
        text(&out.stderr).contains("retrying"),
        "{}",
        text(&out.stderr)
    );

    // Cut in the last request, the one that carries Upload-Length (counted over the whole
    // stream: the client may send it on a connection of its own).
    let proxy = Proxy::start(
        server.addr,
        Faults {
            cut_at_total: Some(4 * MIB as u64 + MIB as u64 / 2),
            ..Faults::default()
        },
    );
    let (g, g_sha) = random_file(t.path(), "g", 5 * MIB + 3, 3);
    let out = piped(
        &g,
        &["--chunk-size", "4M", "-", &proxy.url("/files/")],
        &t.path().join("state"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("retrying"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(get_sha256(text(&out.stdout).trim()), g_sha);

    // Empty input is an empty upload.
    let empty = t.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let out = piped(&empty, &["-", &server.files_url], &t.path().join("state"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let url = text(&out.stdout).trim().to_owned();
    assert_eq!(get_sha256(&url), sha256(b""));
}

#[test]
fn standard_input_needs_a_deferred_length_and_goes_alone() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let (f, _) = random_file(t.path(), "data", 1000, 2);
    let chunks = format!("http://{}/chunks/", server.addr);
    let out = piped(&f, &["-", &chunks], &t.path().join("state"));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot take an upload of unknown length"),
        "{}",
        text(&out.stderr)
    );
    let out = piped(
        &f,
        &["-", f.to_str().unwrap(), &server.files_url],
        &t.path().join("state"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("on its own"),
        "{}",
        text(&out.stderr)
    );
}
