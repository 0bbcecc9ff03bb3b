//! The manifest of an uploaded directory: `ferry upload DIR` uploads one beside the files, and
//! `ferry download -r MANIFEST_URL` restores the tree from it. A small JSON object listing each
//! file's relative path, size, digest and URL. Paths come from whoever wrote the manifest, so a
//! reader checks each one ([`relative_path`]) before it becomes a local path.

/// Format version of [`Manifest`]; a reader refuses a newer one.
pub const MANIFEST_VERSION: u32 = 1;

/// The name a manifest is uploaded under: `photos` → `photos.ferry-manifest.json`.
pub fn file_name(dir: &str) -> String {
    format!("{dir}.ferry-manifest.json")
}

/// An uploaded directory.
#[cfg(feature = "serde")]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`]; its presence is what marks the object as a manifest.
    pub ferry_manifest: u32,
    /// The directory's own name (the first segment of every path).
    pub name: String,
    /// Every regular file below it, sorted by path.
    pub files: Vec<ManifestFile>,
}

/// One file of a [`Manifest`].
#[cfg(feature = "serde")]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestFile {
    /// `/`-separated, relative, starting with the directory's name.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Where it was uploaded (absolute, or relative to the manifest's URL).
    pub url: String,
    /// CRC-64/NVME of the whole file, lowercase hex (from ferry servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
    /// SHA-256 of the whole file, lowercase hex (from other servers, or `--digest sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// BLAKE3 of the whole file, lowercase hex (`--digest blake3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

/// The segments of a manifest's `path`, or why it cannot be a path below the target
/// directory: relative, `/`-separated, no empty, `.` or `..` segment, no backslash and no
/// control character (NUL, or an escape sequence a terminal would act on when the name is
/// shown).
pub fn relative_path(path: &str) -> Result<Vec<&str>, String> {
    let bad = || format!("the manifest names {path:?}, which is not a plain relative path");
    if path.is_empty() || path.starts_with('/') {
        return Err(bad());
    }
    let segments: Vec<&str> = path.split('/').collect();
    if segments.iter().any(|s| {
        s.is_empty()
            || *s == "."
            || *s == ".."
            || s.contains('\\')
            || s.chars().any(char::is_control)
    }) {
        return Err(bad());
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_taken() {
        assert_eq!(
            relative_path("photos/2024/a b.jpg").unwrap(),
            ["photos", "2024", "a b.jpg"]
        );
        for bad in [
            "",
            "/etc/passwd",
            "photos/../../x",
            "photos//x",
            "photos/./x",
            "..",
            "photos/x/",
            "a\\..\\b",
            "a\0b",
            "a\x1b[2Jb",
            "a\nb",
            "a\u{9b}b",
        ] {
            assert!(relative_path(bad).is_err(), "{bad:?}");
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn a_manifest_reads_back_and_leaves_out_missing_digests() {
        let m = Manifest {
            ferry_manifest: MANIFEST_VERSION,
            name: "photos".into(),
            files: vec![ManifestFile {
                path: "photos/a.jpg".into(),
                size: 3,
                url: "http://h/files/1".into(),
                crc64nvme: Some("00ff".into()),
                sha256: None,
                blake3: None,
            }],
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(!text.contains("sha256"), "{text}");
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
        assert_eq!(file_name("photos"), "photos.ferry-manifest.json");
    }
}
