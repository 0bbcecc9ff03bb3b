//! Helpers the store's unit tests share.

use crate::engine::Uploads;
use crate::model::UploadInfo;
use futures_util::StreamExt;

/// Every committed byte of `info`.
pub(crate) async fn read_all(u: &Uploads, info: &UploadInfo) -> Vec<u8> {
    let mut s = u.read(info, 0, info.offset).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

/// A temporary directory in memory (`/dev/shm`) when there is one: race tests fsync a lot.
pub(crate) fn shm_tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}
