//! `ferry download -o TARGET`, decided by what TARGET is before a byte moves: a stream (`-`, a
//! character device, a FIFO), a directory, a symbolic link (refused unless `--force`), an
//! existing file (already complete, or kept unless `--force`), and a file that appears during
//! the download (never clobbered). Every target sits in a temporary directory: never the real
//! `/dev/null` or `/dev/stdout`.

use crate::support::download::*;
use crate::support::*;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A finished upload of `data` on `server`; its URL (ferry sends its digest).
fn uploaded(server: &Server, data: &[u8]) -> String {
    let url = create(server, data.len() as u64, Some("filename ZmlsZS5iaW4="));
    assert_eq!(patch(&url, 0, data.to_vec()).0, 204);
    url
}

/// Nothing left behind: no partial file in `dir`, no saved record.
fn clean(dir: &Path, state: &Path) {
    let parts: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ferry-part"))
        .collect();
    assert!(parts.is_empty(), "{parts:?}");
    assert!(saved(state).is_empty(), "{:?}", saved(state));
}

/// Runs `mkfifo` or `mknod` (the tests run as root).
fn mk(cmd: &mut Command) {
    let st = cmd.status().expect("mkfifo/mknod runs");
    assert!(st.success(), "{cmd:?}: {st}");
}

fn refused(out: &std::process::Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "stderr:\n{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(needle),
        "stderr:\n{}",
        text(&out.stderr)
    );
}

#[test]
fn a_symlink_is_refused_unless_forced_and_then_its_file_is_written() {
    let server = Server::start(&[]);
    let data = random_bytes(300_000, 1);
    let url = uploaded(&server, &data);
    let t = tempfile::tempdir().unwrap();
    let (state, real, link) = (
        t.path().join("state"),
        t.path().join("real"),
        t.path().join("link"),
    );
    std::fs::write(&real, b"precious").unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = ferry_download(&state, &["-o", link.to_str().unwrap(), &url]);
    refused(&out, "symbolic link");
    assert_eq!(std::fs::read(&real).unwrap(), b"precious");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    clean(t.path(), &state);
    let out = ferry_download(&state, &["--force", "-o", link.to_str().unwrap(), &url]);
    ok(&out, "--force through the link");
    assert!(
        link.symlink_metadata().unwrap().file_type().is_symlink(),
        "the link stays"
    );
    assert_eq!(std::fs::read(&real).unwrap(), data);
    clean(t.path(), &state);
}

#[test]
fn a_fifo_and_a_character_device_are_streamed_to_and_stay_what_they_are() {
    let server = Server::start(&[]);
    let data = random_bytes(3_000_000, 2);
    let url = uploaded(&server, &data);
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let fifo = t.path().join("fifo");
    mk(Command::new("mkfifo").arg(&fifo));
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let out = ferry_download(&state, &["-o", fifo.to_str().unwrap(), &url]);
    ok(&out, "into a FIFO");
    assert_eq!(reader.join().unwrap(), data, "the reader got the file");
    assert!(
        text(&out.stderr).contains("nothing kept to resume"),
        "{}",
        text(&out.stderr)
    );
    assert!(fifo.symlink_metadata().unwrap().file_type().is_fifo());

    // The null device, made here (c 1 3).
    let null = t.path().join("null");
    mk(Command::new("mknod").arg(&null).args(["c", "1", "3"]));
    let out = ferry_download(&state, &["--json", "-o", null.to_str().unwrap(), &url]);
    ok(&out, "into a character device");
    assert_eq!(json_line(&out)["verified"], true);
    assert!(
        null.symlink_metadata()
            .unwrap()
            .file_type()
            .is_char_device()
    );
    clean(t.path(), &state);
}

#[test]
fn dash_is_standard_output_and_no_file_named_dash() {
    let server = Server::start(&[]);
    let data = random_bytes(1_500_000, 3);
    let url = uploaded(&server, &data);
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let out = run(
        Command::new(ferry_bin())
            .current_dir(t.path())
            .args(["download", "--state-dir"])
            .arg(&state)
            .args(["-o", "-", &url])
            .env_remove("FERRY_STATE_DIR")
            .stdin(Stdio::null()),
        Duration::from_secs(60),
    );
    ok(&out, "-o -");
    assert!(
        out.stdout == data,
        "stdout is the file ({} bytes)",
        out.stdout.len()
    );
    assert!(!t.path().join("-").exists());
    clean(t.path(), &state);
}

#[test]
fn a_directory_gets_the_file_under_the_servers_name() {
    let server = Server::start(&[]);
    let data = random_bytes(100_000, 4);
    let url = uploaded(&server, &data);
    let t = tempfile::tempdir().unwrap();
    let (state, dir) = (t.path().join("state"), t.path().join("into"));
    std::fs::create_dir(&dir).unwrap();
    let out = ferry_download(&state, &["-o", dir.to_str().unwrap(), &url]);
    ok(&out, "into a directory");
    assert_eq!(std::fs::read(dir.join("file.bin")).unwrap(), data);
    clean(&dir, &state);
}

#[test]
fn an_existing_file_is_already_complete_or_kept_unless_forced() {
    let server = Server::start(&[]);
    let data = random_bytes(200_000, 5);
    let url = uploaded(&server, &data);
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    // The README's example: the uploaded source itself, downloaded onto.
    let source = t.path().join("big.iso");
    std::fs::write(&source, &data).unwrap();
    set_mtime(&source, an_hour_ago());
    let before = std::fs::metadata(&source).unwrap();
    let out = ferry_download(&state, &["-o", source.to_str().unwrap(), &url]);
    ok(&out, "onto the same file");
    assert!(
        text(&out.stderr).contains("already complete"),
        "{}",
        text(&out.stderr)
    );
    let after = std::fs::metadata(&source).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (after.ino(), after.modified().unwrap()),
        (before.ino(), before.modified().unwrap()),
        "the file was not rewritten"
    );

    // Another file of the same size, and one of another size: kept.
    let mut other = data.clone();
    other[100] ^= 1;
    for content in [other, b"short".to_vec()] {
        std::fs::write(&source, &content).unwrap();
        let out = ferry_download(&state, &["-o", source.to_str().unwrap(), &url]);
        refused(&out, "differs from the server's file");
        assert_eq!(std::fs::read(&source).unwrap(), content);
        clean(t.path(), &state);
    }
    let out = ferry_download(&state, &["--force", "-o", source.to_str().unwrap(), &url]);
    ok(&out, "--force");
    assert_eq!(std::fs::read(&source).unwrap(), data);

    // A server that sends no digest: the same size proves nothing.
    let (share, dir) = share_server();
    publish(dir.path(), "a.bin", &data);
    let target = t.path().join("a.bin");
    std::fs::write(&target, vec![0u8; data.len()]).unwrap();
    let out = ferry_download(
        &state,
        &[
            "-o",
            target.to_str().unwrap(),
            &share_url(share.addr, "a.bin"),
        ],
    );
    refused(&out, "no digest");
    assert_eq!(std::fs::read(&target).unwrap(), vec![0u8; data.len()]);
    clean(t.path(), &state);
}

#[test]
fn a_file_that_appears_during_the_download_is_not_clobbered() {
    let server = Server::start(&[]);
    let data = random_bytes(3 << 20, 6);
    let url = uploaded(&server, &data);
    let t = tempfile::tempdir().unwrap();
    let (state, dest) = (t.path().join("state"), t.path().join("out.bin"));
    let log = t.path().join("log");
    // 3 MiB at 1 MiB/s: the file appears once the download has saved progress (so it decided
    // on its target before), well before it ends.
    let mut kid = spawn_download(
        &state,
        &["--limit-rate", "1M", "-o", dest.to_str().unwrap(), &url],
        &log,
    );
    crate::support::download::wait_saved(&state, 1, Duration::from_secs(20));
    std::fs::write(&dest, b"someone else's").unwrap();
    let status = kid
        .wait_for(Duration::from_secs(30))
        .expect("download ends");
    let err = std::fs::read_to_string(log.with_extension("err")).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("appeared during the download"), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"someone else's");
    // The download is kept: with --force it is moved into place without another transfer.
    let out = ferry_download(
        &state,
        &["--force", "--json", "-o", dest.to_str().unwrap(), &url],
    );
    ok(&out, "--force after the clash");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(json_line(&out)["resumed_from"], data.len() as u64);
}
