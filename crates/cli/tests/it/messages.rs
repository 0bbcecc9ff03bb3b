//! Messages people read: one line, sizes in human units, each name once, no `(os error N)`;
//! invalid server settings exit 2 (a missing `--share` too); boolean variables take `1`, and a
//! rejected value names the variable; the startup lines say where `/share/` is.

use crate::support::download::{run, text};
use crate::support::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn serve(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let t = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(ferry_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(t.path().join("data"))
        .args(args)
        .env_remove("FERRY_LOG")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run(&mut cmd, Duration::from_secs(20))
}

#[test]
fn invalid_server_settings_exit_2_naming_what_to_fix() {
    let out = serve(&["--share", "/nonexistent-ferry-share"], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--share /nonexistent-ferry-share: no such file or directory"),
        "{err}"
    );
    assert!(!err.contains("os error"), "{err}");

    let out = serve(&[], &[("FERRY_TRUST_PROXY", "maybe")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("FERRY_TRUST_PROXY"), "{err}");
    // Typed on the command line, the flag is what the message names.
    let out = serve(&["--trust-proxy=maybe"], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("FERRY_TRUST_PROXY"), "{err}");
}

#[test]
fn boolean_variables_take_1_and_the_share_is_announced() {
    let share = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        &["--share", share.path().to_str().unwrap()],
        &[("FERRY_TRUST_PROXY", "1"), ("FERRY_SHARE_DOTFILES", "0")],
    );
    // The proxy's forwarded host is used, so FERRY_TRUST_PROXY=1 took effect.
    let r = client()
        .post(&server.files_url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1")
        .header("X-Forwarded-Host", "files.example")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(location.contains("files.example"), "{location}");
    drop(server);

    // The startup lines: the tus endpoint first, then the share.
    let t = tempfile::tempdir().unwrap();
    let mut child = Command::new(ferry_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(t.path().join("data"))
        .arg("--share")
        .arg(share.path())
        .env_remove("FERRY_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.starts_with("ferry listening on http://127.0.0.1:"),
        "{first}"
    );
    assert!(first.ends_with("/files/"), "{first}");
    assert!(second.contains("/share/"), "{second}");
    assert!(second.contains(share.path().to_str().unwrap()), "{second}");
}

#[test]
fn a_file_over_the_servers_maximum_is_said_in_human_units_once() {
    let server = Server::start(&["--max-size", "1M"]);
    let t = tempfile::tempdir().unwrap();
    let (file, _) = random_file(t.path(), "big.bin", 3 << 20, 1);
    let r = run_ferry(
        &["upload", file.to_str().unwrap(), &server.files_url],
        &t.path().join("state"),
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("3.0 MiB is more than the server accepts (1.0 MiB)"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.matches("big.bin").count(), 1, "{}", r.stderr);
}
