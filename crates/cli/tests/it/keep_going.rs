//! A directory upload with an unreadable file and subdirectory, plus a missing argument: each
//! is reported and skipped, everything else is sent, and the run ends nonzero with a summary
//! (it stopped before sending anything). The client runs as `nobody` so that permissions bind
//! even when the tests run as root.

use crate::support::download::{run, text};
use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn mode(p: &std::path::Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

#[test]
fn unreadable_and_missing_files_are_skipped_and_the_rest_is_sent() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    mode(t.path(), 0o755);
    let d = t.path().join("d");
    std::fs::create_dir_all(d.join("locked")).unwrap();
    let (_, a) = random_file(&d, "a.bin", 3000, 1);
    let (_, z) = random_file(&d, "z.bin", 3 << 20, 2);
    random_file(&d, "secret.bin", 100, 3);
    random_file(&d.join("locked"), "x.bin", 100, 4);
    let (other, o) = random_file(t.path(), "other.bin", 5000, 5);
    mode(&d, 0o755);
    mode(&d.join("secret.bin"), 0o000);
    mode(&d.join("locked"), 0o000);
    mode(&other, 0o644);
    for f in ["a.bin", "z.bin"] {
        mode(&d.join(f), 0o644);
    }
    let state = t.path().join("state");
    std::fs::create_dir(&state).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    }
    let missing = t.path().join("missing.bin");

    let mut cmd = Command::new("setpriv");
    // Not root when the tests are not: then the permissions bind anyway.
    if is_root() {
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    } else {
        cmd.arg("--");
    }
    cmd.arg(ferry_bin())
        .args(["upload", "--json", "--state-dir"])
        .arg(&state)
        .arg(&d)
        .arg(&missing)
        .arg(&other)
        .arg(&server.files_url)
        .env_remove("FERRY_STATE_DIR")
        .env("HOME", t.path())
        .stdin(Stdio::null());
    let out = run(&mut cmd, Duration::from_secs(60));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let sent = files_done(&stdout);
    // In argument order.
    let by_file: Vec<(String, String)> = sent
        .iter()
        .map(|v| {
            (
                v["file"].as_str().unwrap().to_owned(),
                v["url"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let names: Vec<&str> = by_file.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        names,
        ["d/a.bin", "d/z.bin", other.to_str().unwrap()],
        "{stderr}"
    );
    for ((_, url), sha) in by_file.iter().zip([&a, &z, &o]) {
        assert_eq!(&get_sha256(url), sha);
    }
    for said in [
        "locked: permission denied; skipped",
        "missing.bin: no such file or directory; skipped",
        "d/secret.bin: ",
        "3 uploaded, 1 failed, 2 skipped",
    ] {
        assert!(stderr.contains(said), "wanted {said:?} in {stderr}");
    }
    assert!(!stderr.contains("os error"), "{stderr}");

    // Downloads too: a missing URL among several.
    let back = t.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let gone = format!("{}{}", server.files_url, "0".repeat(32));
    let out = crate::support::download::ferry_download(
        &t.path().join("dstate"),
        &["-d", back.to_str().unwrap(), &gone, &by_file[0].1],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("1 downloaded, 1 failed"), "{err}");
    assert_eq!(std::fs::read_dir(&back).unwrap().count(), 1, "{err}");
}
