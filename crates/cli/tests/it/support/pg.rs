//! PostgreSQL for the tests: `FERRY_TEST_POSTGRES` names a server (scripts/test.sh starts one
//! with scripts/postgres.sh), and each `ferry serve` started under `FERRY_TEST_META=postgres`
//! gets a schema of its own there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The test server's URL. Never skipped: a test that needs it fails and says why.
pub fn server_url() -> String {
    std::env::var("FERRY_TEST_POSTGRES").expect(
        "FERRY_TEST_POSTGRES is not set: start PostgreSQL with scripts/postgres.sh start DIR and \
         export the URL it prints (scripts/test.sh does both)",
    )
}

/// Runs `sql` on the server at `url` with psql; its output, trimmed.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `url` (a server's) with PostgreSQL's search path set to `schema`: every table ferry makes
/// goes there.
pub fn in_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

/// A new schema on `url`'s server; returns the URL that works in it.
pub fn fresh_schema(url: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let schema = format!("s_{}_{nanos}_{n}", std::process::id());
    psql(url, &format!("CREATE SCHEMA {schema}"));
    in_schema(url, &schema)
}

static METAS: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// The `--meta` URL for a server on `data_dir` under `FERRY_TEST_META=postgres`: the one a
/// server on this directory had before (a restart sees its records), else a fresh schema.
pub fn meta_for(data_dir: &Path) -> String {
    let mut metas = METAS.lock().unwrap();
    if let Some((_, url)) = metas.iter().find(|(d, _)| d == data_dir) {
        return url.clone();
    }
    let url = fresh_schema(&server_url());
    metas.push((data_dir.to_path_buf(), url.clone()));
    url
}

/// `--meta URL` as a server on `data_dir` had it under `FERRY_TEST_META=postgres` (for `ferry
/// fsck`), or nothing.
pub fn meta_args_of(data_dir: &Path) -> Vec<String> {
    let metas = METAS.lock().unwrap();
    match metas.iter().find(|(d, _)| d == data_dir) {
        Some((_, url)) => vec!["--meta".into(), url.clone()],
        None => Vec::new(),
    }
}

/// Whether the suites run with their records in PostgreSQL.
pub fn under_test() -> bool {
    std::env::var("FERRY_TEST_META").is_ok_and(|v| v == "postgres")
}

/// A psql session that ran `sql` and stays open (holding the locks it took) until dropped.
pub struct Session {
    child: std::process::Child,
}

impl Session {
    /// Runs `sql` in a session of its own and returns once it has run.
    pub fn hold(url: &str, sql: &str) -> Session {
        use std::io::{BufRead, Write};
        let mut child = Command::new("psql")
            .args([url, "-qAtX", "-v", "ON_ERROR_STOP=1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("psql runs");
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "{sql}\n\\echo held").unwrap();
        stdin.flush().unwrap();
        // What the statements print comes first; a statement that blocks fails the test.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let mut line = String::new();
                if out.read_line(&mut line).unwrap_or(0) == 0 {
                    let _ = tx.send(false);
                    return;
                }
                if line.trim() == "held" {
                    let _ = tx.send(true);
                    return;
                }
            }
        });
        let held = rx.recv_timeout(std::time::Duration::from_secs(30));
        let session = Session { child };
        assert_eq!(held, Ok(true), "psql {sql:?}");
        session
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
