//! `ferry serve --meta postgres://…` against real PostgreSQL servers: the tests' shared one
//! (`FERRY_TEST_POSTGRES`, started by `scripts/test.sh`) and, for restarts, clusters of the
//! tests' own (scripts/postgres.sh).

use crate::support::pg::*;
use crate::support::s3::CREDS;
use crate::support::s3::ensure_test_bucket;
use crate::support::upload::*;
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A PostgreSQL cluster of one test's own, stopped (immediately) however the test ends.
pub(crate) struct Cluster {
    dir: PathBuf,
    pub(crate) url: String,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    pub(crate) fn start() -> Self {
        // The directory itself (not one inside it): as root, scripts/postgres.sh hands it to
        // the user postgres, who could not enter a private temp directory to reach a child.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut c = Cluster {
            dir,
            url: String::new(),
            _tmp: tmp,
        };
        c.url = c.script("start");
        c
    }

    /// `scripts/postgres.sh CMD DIR` (start, stop, kill) on this cluster.
    pub(crate) fn script(&self, cmd: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let out = Command::new("bash")
            .arg(root.join("scripts/postgres.sh"))
            .args([cmd, self.dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "postgres.sh {cmd}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let _ = Command::new("bash")
            .arg(root.join("scripts/postgres.sh"))
            .args(["kill", self.dir.to_str().unwrap()])
            .status();
    }
}

/// PostgreSQL restarted (an immediate shutdown, as a crash, then 5 s down) in the middle of
/// an upload, on the local store and on S3: ferry answers 503 meanwhile, never 500 and never
/// hangs; it reconnects by itself, and `ferry upload` finishes byte-exact.
#[test]
fn a_postgres_restart_mid_upload_is_waited_out() {
    for s3 in [false, true] {
        let pg = Cluster::start();
        let mut args = vec![
            "--meta".to_string(),
            pg.url.clone(),
            "--sync".into(),
            "none".into(),
        ];
        if s3 {
            ensure_test_bucket(&crate::s3::endpoint());
            args.extend([
                "--store".into(),
                crate::s3::fresh_store(),
                "--s3-endpoint".into(),
                crate::s3::endpoint(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_with_env(&args, &CREDS);
        let env = Env::new();
        let (f, sha) = env.file("f", 24 * MIB + 5, 46);
        let mut run = env.upload(
            &[&f],
            &server.files_url,
            &["--limit-rate", "4M", "--chunk-size", "2M", "-j", "1"],
        );
        wait_committed(&env, 6 * MIB, &mut run);
        pg.script("kill");
        std::thread::sleep(Duration::from_secs(5));
        assert!(!run.exited(), "the client waited: {}", run.stderr());
        // Requests meanwhile end in time with a 503 (the pool gives up within its timeout).
        let t = Instant::now();
        let out = Command::new("curl")
            .args(["-s", "-I", "-m", "30"])
            .arg(format!(
                "{}{}",
                server.files_url, "0123456789abcdef0123456789abcdef"
            ))
            .args(["-H", "Tus-Resumable: 1.0.0"])
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(head.starts_with("http/1.1 503"), "s3={s3}: {head}");
        assert!(head.contains("\r\nretry-after: "), "s3={s3}: {head}");
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        pg.script("start");
        let done = run.wait(3 * RUN_LIMIT).ok();
        assert_uploaded(&env, &done.url(), &sha);
        let log = server.log();
        assert!(log.contains("storage unavailable"), "s3={s3}: {log}");
        assert!(!log.contains("internal error; reference"), "no 500: {log}");
    }
}

/// ferry SIGKILLed in the middle of an upload whose records are in PostgreSQL, on the local
/// store and on S3, and started again on the same port: the upload resumes from the offset the
/// database holds and ends byte-exact.
#[test]
fn a_server_killed_mid_upload_resumes_byte_exact() {
    for s3 in [false, true] {
        let mut args = vec!["--meta".to_string(), fresh_schema(&server_url())];
        if s3 {
            ensure_test_bucket(&crate::s3::endpoint());
            args.extend([
                "--store".into(),
                crate::s3::fresh_store(),
                "--s3-endpoint".into(),
                crate::s3::endpoint(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Server::start_with_env(&args, &CREDS);
        let env = Env::new();
        let (f, sha) = env.file("f", 30 * MIB + 9, 47);
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
}

/// `ferry serve` with `args` on a fresh data directory until it exits: exit code, stderr.
fn serve_fresh_until_exit(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    serve_until_exit(&dir.path().join("data"), args, &[])
}

/// Settings that cannot work exit 2 with one line naming the problem; a database that is not
/// there exits 1 in seconds; a schema contracted past this build is refused with what to do.
#[test]
fn wrong_settings_exit_2_and_an_absent_database_1() {
    let url = server_url();
    let no_db = url.rsplit_once('/').unwrap().0.to_string() + "/no_such_database";
    let (code, err) = serve_fresh_until_exit(&["--meta", &no_db]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("no_such_database") && err.lines().count() == 1,
        "{err}"
    );

    let (code, err) = serve_fresh_until_exit(&["--meta", "mysql://u@h/db"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("only postgres://"), "{err}");

    let t = Instant::now();
    let (code, err) =
        serve_fresh_until_exit(&["--meta", "postgres://postgres@127.0.0.1:1/postgres"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach PostgreSQL"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());

    let meta = fresh_schema(&url);
    let schema = meta.rsplit_once("%3D").unwrap().1.to_string();
    psql(
        &url,
        &format!(
            "CREATE TABLE {schema}.ferry_schema (one boolean PRIMARY KEY DEFAULT true, \
             version integer NOT NULL, readable_from integer NOT NULL); \
             INSERT INTO {schema}.ferry_schema VALUES (true, 1000, 999)"
        ),
    );
    let (code, err) = serve_fresh_until_exit(&["--meta", &meta]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("upgrade ferry"), "{err}");
}

/// Every log line names the instance when records are shared: instances of one cluster log
/// side by side. `--instance-id` chooses the name, else the host name and a random suffix.
#[test]
fn log_lines_name_the_instance() {
    let meta = fresh_schema(&server_url());
    let server = Server::start(&["--meta", &meta, "--instance-id", "web-7"]);
    let url = create(&server, 5, None);
    assert_eq!(head_offset(&url), Some(0));
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for l in &lines {
        assert!(l.ends_with("instance=web-7"), "{l}");
    }
    // The database is bound to the data store it holds records of: another data directory's
    // local files are not its uploads' (one line, exit 2), whether the first instance still
    // serves or not. (Instances share a database through a shared store: tests/it/cluster.rs.)
    let refused = || {
        let (code, err) = serve_fresh_until_exit(&["--meta", &meta]);
        assert_eq!(code, Some(2), "{err}");
        let said: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("ferry serve:"))
            .collect();
        assert!(
            said.len() == 1 && said[0].contains("cannot be used with"),
            "{err}"
        );
    };
    refused();
    drop(server);
    refused();

    let server = Server::start(&["--meta", &fresh_schema(&server_url())]);
    let log = server.log();
    let first = log.lines().next().unwrap();
    let name = first.rsplit_once("instance=").unwrap().1;
    let (host, suffix) = name.rsplit_once('-').unwrap();
    assert!(!host.is_empty() && suffix.len() == 6, "{first}");
}

/// Records never move between stores, so a data directory stays with the one it began with:
/// a directory with `ferry.redb` is refused with `--meta`, and one served with PostgreSQL is
/// refused without it (its files would look orphaned and be swept). Nothing is lost: served
/// as before, the uploads are there.
#[test]
fn a_directory_keeps_its_records_where_they_began() {
    let tmp = tempfile::tempdir().unwrap();
    let (embedded, shared) = (tmp.path().join("embedded"), tmp.path().join("shared"));
    let meta = fresh_schema(&server_url());
    let server = Server::start_in(&embedded, &["--sync", "none"]);
    let url = create(&server, 5, None);
    assert_eq!(patch(&url, 0, b"hello".to_vec()).0, 204);
    drop(server);
    let (code, err) = serve_until_exit(&embedded, &["--meta", &meta], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ferry.redb"), "{err}");

    let args = ["--meta", meta.as_str()];
    let server = Server::start_in(&shared, &args);
    let url2 = create(&server, 5, None);
    assert_eq!(patch(&url2, 0, b"world".to_vec()).0, 204);
    drop(server);
    let (code, err) = serve_until_exit(&shared, &[], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("in PostgreSQL"), "{err}");
    let (code, err) = serve_until_exit(&shared, &["--meta", &fresh_schema(&server_url())], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("another PostgreSQL database"), "{err}");

    let server = Server::start_in(&embedded, &[]);
    assert_eq!(
        head_offset(&server.rebase(&url)),
        Some(5),
        "embedded uploads kept"
    );
    drop(server);
    let server = Server::start_in(&shared, &args);
    assert_eq!(
        head_offset(&server.rebase(&url2)),
        Some(5),
        "PostgreSQL uploads kept"
    );
}
