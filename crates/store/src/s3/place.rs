//! What the S3 store records of an upload (its locator's content), and the helpers its
//! writers and the store share.

use crate::data::Locator;
use crate::error::{Result, StoreError};
use crate::fence::Fenced;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// An upload's place in the bucket: the locator's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Place {
    /// The object key.
    pub(super) key: String,
    /// The multipart upload, until the object is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) upload: Option<String>,
    /// The recorded parts, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) parts: Vec<Part>,
    /// Staged pieces holding the bytes after the parts, in order (a piece may begin before the
    /// parts end: its first bytes went into the last part).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) staged: Vec<Piece>,
    /// The object is complete at `key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Part {
    pub(super) n: u16,
    pub(super) etag: String,
    pub(super) size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Piece {
    pub(super) key: String,
    /// Where its first byte sits in the upload.
    pub(super) at: u64,
    pub(super) size: u64,
}

impl Place {
    pub(super) fn of(at: &Locator) -> Result<Place> {
        serde_json::from_value(at.0.clone())
            .map_err(|e| StoreError::Inconsistent(format!("S3 locator {}: {e}", at.0)))
    }

    pub(super) fn locator(&self) -> Locator {
        Locator(serde_json::to_value(self).expect("a place serializes"))
    }

    /// Bytes held by the parts.
    pub(super) fn parts_end(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// Bytes held by the parts and staged pieces together.
    pub(super) fn end(&self) -> u64 {
        self.staged
            .iter()
            .map(|p| p.at + p.size)
            .fold(self.parts_end(), u64::max)
    }

    pub(super) fn upload(&self) -> Result<&str> {
        self.upload
            .as_deref()
            .ok_or_else(|| StoreError::Inconsistent(format!("{}: no multipart upload", self.key)))
    }
}

/// A named temporary file in the spool directory (a part is sent from it by path).
pub(super) fn spool_file(dir: &Path) -> Result<Arc<tempfile::NamedTempFile>> {
    Ok(Arc::new(tempfile::NamedTempFile::new_in(dir)?))
}

/// Runs `f` under the fence, if any: refused once a later writer opened the upload, and that
/// writer waits for it.
pub(super) async fn fenced<T>(
    fence: &Option<Fenced>,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    match fence {
        Some(fence) => fence.run(f).await,
        None => f.await,
    }
}
