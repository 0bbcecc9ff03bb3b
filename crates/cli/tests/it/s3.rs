//! `ferry serve --store s3://…` on a real S3-compatible store: SeaweedFS, started by
//! `scripts/test.sh` (`FERRY_TEST_S3_ENDPOINT`; by hand: `scripts/seaweedfs.sh start DIR`).

use crate::support::s3::*;
use crate::support::upload::*;
use crate::support::*;
use std::time::Duration;

pub(crate) fn endpoint() -> String {
    std::env::var("FERRY_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "FERRY_TEST_S3_ENDPOINT is not set: run the tests with scripts/test.sh, or start \
             SeaweedFS with `scripts/seaweedfs.sh start DIR` and export the URL it prints"
        )
    })
}

/// A prefix of this test's own in the tests' bucket (which the store tests create too).
pub(crate) fn fresh_store() -> String {
    // Unique enough: the process id and the time, in one bucket shared by the tests.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://ferry-tests/it-{}-{nanos}", std::process::id())
}

/// `ferry serve` on `store`, or the run's end when it does not start.
pub(crate) fn serve_s3(store: &str) -> Server {
    let e = endpoint();
    let args = ["--store", store, "--s3-endpoint", &e, "--sync", "none"];
    Server::start_with_env(&args, &CREDS)
}

/// Makes the tests' bucket if no test has yet (the store's own tests create it too).
pub(crate) fn ensure_bucket() {
    ensure_test_bucket(&endpoint());
}

#[test]
fn uploads_go_to_the_bucket_and_come_back_byte_exact() {
    ensure_bucket();
    let server = serve_s3(&fresh_store());
    let env = Env::new();
    // Several 8 MiB parts, PATCHes of 4 MiB (staged between parts), a last part under 5 MiB.
    let (f, sha) = env.file("big", 21 * MIB + 7, 41);
    let done = env
        .upload(&[&f], &server.files_url, &["--chunk-size", "4M", "-j", "1"])
        .wait(RUN_LIMIT)
        .ok();
    assert_uploaded(&env, &done.url(), &sha);
    // Parallel streams: partials and a final read across their objects.
    let (g, g_sha) = env.file("parallel", 19 * MIB + 3, 42);
    let done = env
        .upload(&[&g], &server.files_url, &["-j", "4"])
        .wait(RUN_LIMIT)
        .ok();
    assert_uploaded(&env, &done.url(), &g_sha);
    // An empty file is an empty object.
    let (h, h_sha) = env.file("empty", 0, 43);
    let done = env
        .upload(&[&h], &server.files_url, &[])
        .wait(RUN_LIMIT)
        .ok();
    assert_uploaded(&env, &done.url(), &h_sha);
}

#[test]
fn a_store_that_is_not_there_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = endpoint();
    let run = |store: &str, envs: &[(&str, &str)]| {
        serve_until_exit(dir.path(), &["--store", store, "--s3-endpoint", &e], envs)
    };
    let (code, err) = run("s3://ferry-none-such-bucket", &CREDS);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("ferry-none-such-bucket does not exist"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let (code, err) = run("s3://ferry-tests", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    ensure_bucket();
    let wrong = [CREDS[0], ("AWS_SECRET_ACCESS_KEY", "not-the-secret")];
    let (code, err) = run("s3://ferry-tests", &wrong);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("access denied"), "{err}");
}

/// SeaweedFS (one of this test's own) stopped for 10 s in the middle of an upload: ferry
/// answers 503 with the committed offset meanwhile, never 500, and `ferry upload` finishes
/// byte-exact once the store is back on the same ports.
#[test]
fn a_store_down_for_10_s_is_waited_out() {
    let sw = Weed::new();
    let url = sw.run(&["start"]);
    ensure_test_bucket(&url);
    let server = Server::start_with_env(
        &[
            "--store",
            "s3://ferry-tests/down",
            "--s3-endpoint",
            &url,
            "--sync",
            "none",
            // The S3 client's retries are logged at debug: none may show a presigned URL.
            "--log",
            "info,ferry_store=debug",
        ],
        &CREDS,
    );
    let env = Env::new();
    let (f, sha) = env.file("f", 24 * MIB + 5, 44);
    let mut run = env.upload(
        &[&f],
        &server.files_url,
        &["--limit-rate", "4M", "--chunk-size", "2M", "-j", "1"],
    );
    wait_committed(&env, 6 * MIB, &mut run);
    sw.run(&["stop"]);
    std::thread::sleep(Duration::from_secs(10));
    assert!(!run.exited(), "the client waited: {}", run.stderr());
    sw.run(&["start"]);
    let done = run.wait(3 * RUN_LIMIT).ok();
    assert_uploaded(&env, &done.url(), &sha);
    let log = server.log();
    assert!(log.contains("storage unavailable"), "{log}");
    assert!(!log.contains("internal error; reference"), "no 500: {log}");
    assert!(
        log.contains("S3 request tried again"),
        "retries are logged: {log}"
    );
    assert!(
        !log.contains("X-Amz-Signature"),
        "no presigned URL in the log: {log}"
    );
}

/// ferry SIGKILLed in the middle of an upload to S3 and started again on the same port: the
/// upload resumes from what was acknowledged (parts and staged pieces in the record) and ends
/// byte-exact.
#[test]
fn a_server_killed_mid_upload_resumes_byte_exact() {
    ensure_bucket();
    let mut server = serve_s3(&fresh_store());
    let env = Env::new();
    let (f, sha) = env.file("f", 30 * MIB + 9, 45);
    let mut run = env.upload(
        &[&f],
        &server.files_url,
        &["--limit-rate", "6M", "--chunk-size", "3M", "-j", "1"],
    );
    wait_committed(&env, 11 * MIB, &mut run);
    server.restart_same_port_after_kill();
    let done = run.wait(2 * RUN_LIMIT).ok();
    assert_uploaded(&env, &done.url(), &sha);
}

/// A prefix belongs to the data directory that first used it (its records are the truth about
/// what the prefix holds), and a data directory with uploads to the store it was made with: a
/// second data directory on the same prefix is refused with one line (exit 2), and so is a
/// data directory of local uploads opened with `--store s3://…`, which claims nothing.
#[test]
fn a_prefix_has_one_data_directory_and_a_directory_one_store() {
    ensure_bucket();
    let store = fresh_store();
    let e = endpoint();
    let args = ["--store", store.as_str(), "--s3-endpoint", &e];
    let first = serve_s3(&store);
    let other = tempfile::tempdir().unwrap();
    let (code, err) = serve_until_exit(other.path(), &args, &CREDS);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("belongs to another ferry data directory"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    drop(first);
    // A data directory with local uploads keeps them local.
    let mine = tempfile::tempdir().unwrap();
    let dir = mine.path().join("data");
    let local = Server::start_in(&dir, &[]);
    let resp = client()
        .post(&local.files_url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "10")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    drop(local);
    let elsewhere = fresh_store();
    let s3_args = ["--store", elsewhere.as_str(), "--s3-endpoint", &e];
    let (code, err) = serve_until_exit(&dir, &s3_args, &CREDS);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("uploads are in local"), "{err}");
    // Refused before it claimed anything: the prefix is still free for a directory of its own.
    let fresh = tempfile::tempdir().unwrap();
    let ok = Server::start_in_with_env(fresh.path(), &s3_args, &CREDS);
    drop(ok);
}

/// Distributed storage: SeaweedFS as a small cluster of this test's own (one master, three
/// volume servers, every volume on two of them; `scripts/seaweedfs.sh cluster`). One volume
/// server is SIGKILLed in the middle of an upload: the upload completes, and the download is
/// byte-exact while that server is still down.
#[test]
fn a_volume_server_killed_mid_upload_loses_nothing() {
    let sw = Weed::new();
    let url = sw.run(&["cluster"]);
    sw.run(&["bucket", "ferry-tests"]);
    let server = Server::start_with_env(
        &["--store", "s3://ferry-tests/cluster", "--s3-endpoint", &url],
        &CREDS,
    );
    let env = Env::new();
    let (f, sha) = env.file("f", 40 * MIB + 7, 48);
    let mut run = env.upload(
        &[&f],
        &server.files_url,
        &["--limit-rate", "8M", "--chunk-size", "4M", "-j", "1"],
    );
    wait_committed(&env, 12 * MIB, &mut run);
    sw.run(&["kill-volume", "2"]);
    let done = run.wait(3 * RUN_LIMIT).ok();
    assert_uploaded(&env, &done.url(), &sha);
    let log = server.log();
    assert!(!log.contains("internal error; reference"), "no 500: {log}");
}
