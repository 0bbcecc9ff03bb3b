//! The resume state: one directory for all of ferry's transfers, one small JSON file per
//! transfer, written crash-safely (temp file, fsync, rename, directory fsync) and only when an
//! upload or part is created or finishes — never per chunk: offsets come from the server.
//! A download's record holds its completed ranges, saved in batches as data is synced.

use crate::identity::FileIdentity;
use ferry_proto::checksum::ChecksumAlgorithm;
use ferry_proto::digest::{Digests, KEPT};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Version of the record format written by this build. Newer records are left alone (and
/// reported); older ones are read if compatible.
pub const STATE_VERSION: u32 = 1;

/// Where state lives: `$XDG_STATE_HOME/ferry`, else `~/.local/state/ferry` (the home directory
/// from `HOME`, else the user's entry in the password database). `None` when neither gives an
/// absolute path: state under the current directory would be lost by the next run from
/// elsewhere.
pub fn default_state_dir() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    // The XDG spec: a relative value is invalid and ignored.
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").and_then(absolute) {
        return Some(x.join("ferry"));
    }
    let home = std::env::home_dir().filter(|p| p.is_absolute())?;
    Some(home.join(".local").join("state").join("ferry"))
}

/// One server-side upload that is part of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// The upload URL, once created (parts of a parallel upload are created when first sent).
    pub url: Option<String>,
    /// First byte of the file this part carries.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
    /// Whether the server has all of it.
    pub done: bool,
}

/// A resumable upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Record format version.
    pub version: u32,
    /// The transfer's key (file name of the record).
    pub key: String,
    /// Absolute path of the source file.
    pub source: PathBuf,
    /// The source's identity when the upload was created.
    pub identity: FileIdentity,
    /// The endpoint it was created at.
    pub endpoint: String,
    /// Protocol used (`tus`).
    pub protocol: String,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Server-side uploads (one, or several parts of a parallel upload).
    pub parts: Vec<PartRecord>,
    /// The final (concatenated) upload, once created.
    #[serde(default)]
    pub final_url: Option<String>,
    /// Set when the upload has finished but its run (a directory, several files) has not: the
    /// same command run again skips the file and reports this upload. The run drops it with
    /// the others when every file is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Box<Completed>>,
}

/// A finished upload whose record is kept until the rest of its run is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completed {
    /// The upload's URL (the final upload of a parallel one).
    pub url: String,
    /// The file's whole digest, when the run hashed it (none when verification was off):
    /// stored as `sha256`, `blake3` or `crc64nvme`, lowercase hex.
    #[serde(flatten)]
    pub digests: Digests,
}

impl Completed {
    /// A finished upload at `url` whose file had `digest`.
    pub fn new(url: String, digest: Option<(ChecksumAlgorithm, Vec<u8>)>) -> Self {
        Completed {
            url,
            digests: digest.into_iter().collect(),
        }
    }

    /// The recorded digest (the cheapest, should a record hold several).
    pub fn digest(&self) -> Option<(ChecksumAlgorithm, &[u8])> {
        KEPT.into_iter()
            .find_map(|a| self.digests.get(a).map(|d| (a, d)))
    }
}

impl UploadRecord {
    /// Every server-side URL of this transfer (parts, then the final).
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.parts
            .iter()
            .filter_map(|p| p.url.as_deref())
            .chain(self.final_url.as_deref())
    }
}

/// A resumable download's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRecord {
    /// Record format version.
    pub version: u32,
    /// The key.
    pub key: String,
    /// Source URL.
    pub url: String,
    /// Final path.
    pub dest: PathBuf,
    /// Where bytes go until complete.
    pub partial: PathBuf,
    /// Total size.
    pub size: u64,
    /// Strong ETag when the download started.
    pub etag: Option<String>,
    /// Last-Modified when the download started.
    pub last_modified: Option<String>,
    /// The digest the result must have, if known (Repr-Digest or --checksum): stored as
    /// `sha256`, `blake3` or `crc64nvme`, lowercase hex.
    #[serde(flatten)]
    pub digests: Digests,
    /// Byte ranges `[start, end)` on disk and synced.
    pub done: Vec<(u64, u64)>,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
}

/// Any transfer ferry can resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Transfer {
    /// An upload.
    Upload(UploadRecord),
    /// A download.
    Download(DownloadRecord),
}

impl Transfer {
    /// The key.
    pub fn key(&self) -> &str {
        match self {
            Transfer::Upload(u) => &u.key,
            Transfer::Download(d) => &d.key,
        }
    }
}

/// Now, in ms since the epoch (a record's `created_ms`).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stable key for a transfer of `local` to or from `remote`.
pub fn transfer_key(kind: &str, remote: &str, local: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update(kind.as_bytes());
    h.update(&[0]);
    h.update(remote.as_bytes());
    h.update(&[0]);
    h.update(local.as_os_str().as_encoded_bytes());
    h.finalize().to_hex()[..32].to_string()
}

/// What was found under a key.
#[derive(Debug)]
// Returned once per lookup and consumed at once, never stored in bulk: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Loaded {
    /// Nothing.
    Missing,
    /// A record.
    Found(Transfer),
    /// A record written by a newer ferry, or unreadable: left alone, with the reason.
    Unusable(String),
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// `transfers` (unfinished ones) or `finished` (the index of finished uploads).
    sub: &'static str,
}

impl StateDir {
    /// Opens (creating) the directory.
    pub fn open(root: &Path) -> io::Result<StateDir> {
        fs::create_dir_all(root.join("transfers"))?;
        Ok(StateDir {
            root: root.to_path_buf(),
            sub: "transfers",
        })
    }

    /// The index of finished uploads, under the same keys: each a record with its
    /// [`Completed`] mark, kept after its run so that uploading the same file again can say
    /// where it already is. Entries are hints (see [`StateDir::save_hint`]).
    pub fn finished(&self) -> io::Result<StateDir> {
        fs::create_dir_all(self.root.join("finished"))?;
        Ok(StateDir {
            root: self.root.clone(),
            sub: "finished",
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self) -> PathBuf {
        self.root.join(self.sub)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir().join(format!("{key}.json"))
    }

    /// Reads a record. Leftover temp files from a crash mid-write are never read: a record is
    /// either the previous complete version or the new one.
    pub fn load(&self, key: &str) -> io::Result<Loaded> {
        let text = match fs::read(self.path(key)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(e) => return Err(e),
        };
        Ok(parse_record(&text))
    }

    /// Writes a record crash-safely.
    pub fn save(&self, t: &Transfer) -> io::Result<()> {
        self.write(t, true)
    }

    /// Writes a record that is only a hint (a finished upload's [`Completed`] mark, losing which
    /// costs a second upload of the file, never a wrong one): atomically replaced like any
    /// record, so it survives the process being killed, but not synced to the disk. For a run
    /// of many small files this halves the syncs.
    pub fn save_hint(&self, t: &Transfer) -> io::Result<()> {
        self.write(t, false)
    }

    fn write(&self, t: &Transfer, sync: bool) -> io::Result<()> {
        let dir = self.dir();
        let tmp = dir.join(format!(".{}.{}.tmp", t.key(), std::process::id()));
        let bytes = serde_json::to_vec_pretty(t).map_err(io::Error::other)?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            if sync {
                f.sync_all()?;
            }
        }
        fs::rename(&tmp, self.path(t.key()))?;
        if sync {
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Deletes a record (missing is fine, and costs no sync).
    pub fn remove(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)) {
            Ok(()) => File::open(self.dir())?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes several records (missing ones are fine), syncing the directory once.
    pub fn remove_many<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
        for key in keys {
            match fs::remove_file(self.path(key)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        File::open(self.dir())?.sync_all()
    }

    /// Every record, with unusable ones reported by key.
    pub fn list(&self) -> io::Result<Vec<(String, Loaded)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let loaded = match fs::read(entry.path()) {
                Ok(t) => parse_record(&t),
                Err(e) => Loaded::Unusable(e.to_string()),
            };
            out.push((key.to_string(), loaded));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn parse_record(text: &[u8]) -> Loaded {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    // Records are tagged by kind; the version sits inside.
    let version = serde_json::from_slice::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::from_value::<Versioned>(v).ok());
    match version {
        None => Loaded::Unusable("not a ferry state record (damaged?)".into()),
        Some(v) if v.version > STATE_VERSION => Loaded::Unusable(format!(
            "written by a newer ferry (state version {}; this one reads {STATE_VERSION})",
            v.version
        )),
        Some(_) => match serde_json::from_slice::<Transfer>(text) {
            Ok(t) => Loaded::Found(t),
            Err(e) => Loaded::Unusable(format!("unreadable record: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str) -> Transfer {
        Transfer::Upload(UploadRecord {
            version: STATE_VERSION,
            key: key.into(),
            source: "/tmp/x".into(),
            identity: FileIdentity {
                size: 10,
                mtime_ns: 1,
                dev: 2,
                ino: 3,
                fingerprint: "ab".into(),
            },
            endpoint: "http://127.0.0.1:1/files/".into(),
            protocol: "tus".into(),
            created_ms: 5,
            parts: vec![PartRecord {
                url: Some("http://127.0.0.1:1/files/a".into()),
                start: 0,
                end: 10,
                done: false,
            }],
            final_url: None,
            completed: None,
        })
    }

    #[test]
    fn save_load_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert!(matches!(s.load("k1").unwrap(), Loaded::Missing));
        s.save(&record("k1")).unwrap();
        match s.load("k1").unwrap() {
            Loaded::Found(t) => assert_eq!(t, record("k1")),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.list().unwrap().len(), 1);
        s.remove("k1").unwrap();
        s.remove("k1").unwrap();
        assert!(matches!(s.load("k1").unwrap(), Loaded::Missing));
    }

    #[test]
    fn torn_write_leaves_the_previous_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        s.save(&record("k")).unwrap();
        // A crash mid-save leaves a temp file beside the record; it is never read.
        std::fs::write(dir.path().join("transfers/.k.999.tmp"), b"{\"kind\":\"upl").unwrap();
        assert!(matches!(s.load("k").unwrap(), Loaded::Found(_)));
        assert_eq!(s.list().unwrap().len(), 1, "temp files are not records");
    }

    #[test]
    fn damaged_and_future_records_are_unusable_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("transfers/bad.json"), b"{\"kind\":\"upl").unwrap();
        assert!(matches!(s.load("bad").unwrap(), Loaded::Unusable(_)));
        let mut future = serde_json::to_value(record("fut")).unwrap();
        future["version"] = serde_json::json!(STATE_VERSION + 1);
        std::fs::write(
            dir.path().join("transfers/fut.json"),
            serde_json::to_vec(&future).unwrap(),
        )
        .unwrap();
        match s.load("fut").unwrap() {
            Loaded::Unusable(why) => assert!(why.contains("newer ferry"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn older_compatible_record_reads_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let mut old = serde_json::to_value(record("old")).unwrap();
        old.as_object_mut().unwrap().remove("final_url");
        std::fs::write(
            dir.path().join("transfers/old.json"),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        assert!(matches!(s.load("old").unwrap(), Loaded::Found(_)));
    }

    #[test]
    fn completed_marks_round_trip_and_remove_many() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let Transfer::Upload(mut rec) = record("done") else {
            unreachable!()
        };
        rec.completed = Some(Box::new(Completed::new(
            "http://127.0.0.1:1/files/a".into(),
            Some((ChecksumAlgorithm::Crc64Nvme, vec![0xab; 8])),
        )));
        s.save_hint(&Transfer::Upload(rec.clone())).unwrap();
        s.save(&record("other")).unwrap();
        match s.load("done").unwrap() {
            Loaded::Found(Transfer::Upload(r)) => assert_eq!(r, rec),
            other => panic!("{other:?}"),
        }
        // Records without the mark do not carry the field at all.
        let text = std::fs::read_to_string(dir.path().join("transfers/other.json")).unwrap();
        assert!(!text.contains("completed"), "{text}");
        s.remove_many(["done", "other", "never"]).unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    /// Records as the released format has them: both kinds read, and write back the same
    /// (an unknown digest, stored as `null` before, is left out).
    #[test]
    fn released_record_format_reads_and_round_trips() {
        let upload = serde_json::json!({
            "kind": "upload", "version": 1, "key": "u", "source": "/tmp/x",
            "identity": {"size": 10, "mtime_ns": 1, "dev": 2, "ino": 3, "fingerprint": "ab"},
            "endpoint": "http://127.0.0.1:1/files/", "protocol": "tus", "created_ms": 5,
            "parts": [{"url": "http://127.0.0.1:1/files/a", "start": 0, "end": 10, "done": false}],
            "final_url": null,
            "completed": {"url": "http://127.0.0.1:1/files/a", "sha256": null, "crc64nvme": "00c0ffee00000001"},
        });
        let download = serde_json::json!({
            "kind": "download", "version": 1, "key": "d", "url": "http://h/f",
            "dest": "/d/f", "partial": "/d/f.ferry-part", "size": 100,
            "etag": "\"v1\"", "last_modified": null, "sha256": null, "blake3": "cd".repeat(32),
            "done": [[0, 10], [20, 30]], "created_ms": 7,
        });
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        for (key, value) in [("u", upload), ("d", download)] {
            let path = dir.path().join(format!("transfers/{key}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
            let Loaded::Found(t) = s.load(key).unwrap() else {
                panic!("{key} unreadable");
            };
            let mut want = value.clone();
            let record = match key {
                "u" => &mut want["completed"],
                _ => &mut want,
            };
            record.as_object_mut().unwrap().remove("sha256");
            assert_eq!(serde_json::to_value(&t).unwrap(), want, "{key}");
        }
    }

    #[test]
    fn digests_read_back_as_the_algorithms_they_name() {
        let rec: DownloadRecord = serde_json::from_value(serde_json::json!({
            "version": 1, "key": "d", "url": "http://h/f", "dest": "/d/f",
            "partial": "/d/f.ferry-part", "size": 100, "etag": null, "last_modified": null,
            "sha256": "ab".repeat(32), "done": [], "created_ms": 7,
        }))
        .unwrap();
        assert_eq!(
            rec.digests.get(ChecksumAlgorithm::Sha256),
            Some(&[0xab; 32][..])
        );
        let bad = serde_json::json!({
            "version": 1, "key": "d", "url": "http://h/f", "dest": "/d/f",
            "partial": "/d/f.ferry-part", "size": 100, "etag": null, "last_modified": null,
            "sha256": "abc", "done": [], "created_ms": 7,
        });
        assert!(serde_json::from_value::<DownloadRecord>(bad).is_err());
    }

    #[test]
    fn keys_differ_by_kind_remote_and_path() {
        let a = transfer_key("upload", "http://h/files/", Path::new("/a"));
        assert_eq!(a.len(), 32);
        assert_ne!(
            a,
            transfer_key("upload", "http://h/files/", Path::new("/b"))
        );
        assert_ne!(
            a,
            transfer_key("upload", "http://g/files/", Path::new("/a"))
        );
        assert_ne!(
            a,
            transfer_key("download", "http://h/files/", Path::new("/a"))
        );
    }
}
