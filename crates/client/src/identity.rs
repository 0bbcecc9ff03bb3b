//! A file's identity: cheap to compute (never a full hash of a 200 GiB file before starting)
//! and sure to change when the content is replaced or edited in place.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Bytes read per sample.
const SAMPLE: u64 = 64 * 1024;
/// Samples taken (first and last block included), so at most 1 MiB is read.
const SAMPLES: u64 = 16;

/// Size, modification time, device/inode and a sampled content fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Length in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Device id.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// BLAKE3 (hex) of the size and up to 16 evenly spaced 64 KiB samples.
    pub fingerprint: String,
}

impl FileIdentity {
    /// Reads the identity of `path` (blocking).
    pub fn of(path: &Path) -> io::Result<FileIdentity> {
        let file = File::open(path)?;
        Self::of_file(&file)
    }

    /// Reads the identity of an open file (blocking).
    pub fn of_file(file: &File) -> io::Result<FileIdentity> {
        let meta = file.metadata()?;
        let size = meta.len();
        Ok(FileIdentity {
            size,
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
            fingerprint: fingerprint(file, size)?,
        })
    }

    /// Whether the open `file` still has this size and mtime (one fstat; an error counts as a
    /// change).
    pub fn matches_file(&self, file: &File) -> bool {
        file.metadata().is_ok_and(|m| {
            m.len() == self.size
                && m.mtime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(m.mtime_nsec())
                    == self.mtime_ns
        })
    }

    /// Whether size and mtime still match (the quick check at the end of an upload).
    pub fn same_size_and_mtime(&self, other: &FileIdentity) -> bool {
        self.size == other.size && self.mtime_ns == other.mtime_ns
    }
}

fn fingerprint(file: &File, size: u64) -> io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(&size.to_le_bytes());
    let mut buf = vec![0u8; SAMPLE as usize];
    let last_start = size.saturating_sub(SAMPLE);
    let n = if size <= SAMPLE * SAMPLES {
        size.div_ceil(SAMPLE)
    } else {
        SAMPLES
    };
    for i in 0..n {
        let at = if n <= 1 { 0 } else { last_start * i / (n - 1) };
        let len = SAMPLE.min(size - at) as usize;
        file.read_exact_at(&mut buf[..len], at)?;
        h.update(&at.to_le_bytes());
        h.update(&buf[..len]);
    }
    Ok(h.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn changes_with_content_even_at_same_size_and_mtime_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![1u8; 3_000_000]).unwrap();
        let a = FileIdentity::of(&p).unwrap();
        assert_eq!(a, FileIdentity::of(&p).unwrap(), "stable");
        // Same size, first byte changed: the first sample sees it.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[2], 0).unwrap();
        let b = FileIdentity::of(&p).unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(a.size, b.size);
        assert!(b.matches_file(&f));
        f.set_len(10).unwrap();
        assert!(!b.matches_file(&f), "a shrunk file no longer matches");
    }

    #[test]
    fn small_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e");
        std::fs::File::create(&p).unwrap();
        let e = FileIdentity::of(&p).unwrap();
        assert_eq!(e.size, 0);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"x").unwrap();
        assert_ne!(FileIdentity::of(&p).unwrap().fingerprint, e.fingerprint);
    }
}
