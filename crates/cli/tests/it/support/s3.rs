//! The tests' S3 store: SeaweedFS on `FERRY_TEST_S3_ENDPOINT`, bucket `ferry-tests`.

/// The credentials `scripts/seaweedfs.sh` sets up.
pub const CREDS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "ferry"),
    ("AWS_SECRET_ACCESS_KEY", "ferry-secret"),
];

/// A client of the tests' bucket on the store at `url`.
pub fn s3_client(url: &str) -> ferry_store::s3::S3Client {
    use ferry_store::s3::{S3Client, S3Config};
    S3Client::new(&S3Config {
        endpoint: url.parse().unwrap(),
        bucket: "ferry-tests".into(),
        region: "us-east-1".into(),
        path_style: true,
        key: CREDS[0].1.into(),
        secret: CREDS[1].1.into(),
        token: None,
    })
    .unwrap()
}

/// Makes the tests' bucket on the store at `url` unless it is there.
pub fn ensure_test_bucket(url: &str) {
    let c = s3_client(url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        if c.head_bucket().await.is_err() {
            let _ = c.create_bucket().await;
        }
    });
}

type Remembered = std::sync::Mutex<Vec<(std::path::PathBuf, Vec<String>)>>;

/// The store arguments of servers started on an S3 prefix under `FERRY_TEST_STORE=s3`, by data
/// directory: `ferry fsck` on that directory needs them.
static STORES: Remembered = std::sync::Mutex::new(Vec::new());

pub fn remember(data_dir: &std::path::Path, args: &[String]) {
    STORES
        .lock()
        .unwrap()
        .push((data_dir.to_path_buf(), args.to_vec()));
}

/// The store arguments a server on `data_dir` was started with under `FERRY_TEST_STORE=s3`.
pub fn store_of(data_dir: &std::path::Path) -> Option<Vec<String>> {
    let stores = STORES.lock().unwrap();
    stores
        .iter()
        .rev()
        .find(|(d, _)| d == data_dir)
        .map(|(_, a)| a.clone())
}

/// Bytes the store `s3://ferry-tests/PREFIX` on `endpoint` holds of upload `id`: its object's
/// size, or 0 while only a multipart upload or staged pieces exist; `None` when nothing is left.
pub fn held(store: &str, endpoint: &str, id: &str) -> Option<u64> {
    let prefix = store
        .trim_start_matches("s3://ferry-tests/")
        .trim_end_matches('/');
    let key = format!("{prefix}/{id}");
    let c = s3_client(endpoint);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let objects = c.list_objects(&key).await.unwrap();
        if let Some(o) = objects.iter().find(|o| o.key == key) {
            return Some(o.size);
        }
        let uploads = c.list_uploads(&key).await.unwrap();
        (!objects.is_empty() || uploads.iter().any(|u| u.key == key)).then_some(0)
    })
}

/// A SeaweedFS of one test's own (`scripts/seaweedfs.sh` on a temp directory): single or a
/// cluster, stopped however the test ends.
pub struct Weed {
    dir: tempfile::TempDir,
}

impl Weed {
    pub fn new() -> Self {
        Weed {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `scripts/seaweedfs.sh CMD DIR REST...`: its standard output, trimmed; fails the test
    /// when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.script(args).output().unwrap();
        assert!(out.status.success(), "seaweedfs.sh {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn script(&self, args: &[&str]) -> std::process::Command {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut c = std::process::Command::new("bash");
        c.arg(root.join("scripts/seaweedfs.sh"))
            .arg(args[0])
            .arg(self.dir.path().join("weed"))
            .args(&args[1..]);
        c
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]).status();
    }
}
