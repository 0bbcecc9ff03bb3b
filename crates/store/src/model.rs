//! The facts kept about an upload, independent of any protocol or backend.

use crate::data::Locator;
use ferry_proto::digest::Digests;
use ferry_proto::{Metadata, UploadId};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Which wire protocol created an upload. Uploads are readable through any of them, but some
/// rules (e.g. out-of-order writes) belong to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// tus 1.0.
    #[default]
    Tus,
    /// IETF "Resumable Uploads for HTTP".
    Ietf,
    /// Content-Range chunk sessions (writes in any order).
    Chunks,
}

/// How an upload relates to others (tus concatenation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum UploadKind {
    /// A stand-alone upload.
    #[default]
    Regular,
    /// A part meant to be concatenated into a final upload.
    Partial,
    /// An upload made of other uploads' bytes, in order; it has no data of its own.
    Final {
        /// The parts, in order.
        #[serde(with = "id_list")]
        parts: Vec<UploadId>,
    },
}

/// Serializes ids as their canonical hex strings (serde stays out of the proto crate).
mod id_list {
    use ferry_proto::UploadId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(ids: &[UploadId], s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<String> = ids.iter().map(ToString::to_string).collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<UploadId>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| UploadId::parse(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

pub use ferry_proto::range_set::RangeSet;

/// Everything ferry knows about one upload. The committed `offset` is the truth: bytes past it
/// in the data store are never read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// Its id.
    pub id: UploadId,
    /// Total length, `None` while deferred.
    pub length: Option<u64>,
    /// Committed (durable under the sync policy) number of contiguous bytes from the start.
    pub offset: u64,
    /// Client-supplied metadata (untrusted).
    pub metadata: Metadata,
    /// Which protocol created it.
    pub protocol: Protocol,
    /// Concatenation role.
    pub kind: UploadKind,
    /// For out-of-order writers: which ranges have arrived. `None` for append-only uploads.
    pub received: Option<RangeSet>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Last committed change, milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// When an unfinished upload expires, milliseconds since the Unix epoch.
    pub expires_ms: Option<u64>,
    /// Whole-content digests known so far ([`ferry_proto::digest::KEPT`]). CRC-64/NVME is kept
    /// running while bytes arrive in order, so it is ready when the last byte commits (a
    /// final's combines its parts'); the cryptographic ones of a large upload are computed
    /// only when a client asks (see [`crate::Uploads::ensure_digests`]).
    pub digests: Digests,
    /// Final uploads built from this one (a partial). While any exist, deleting or expiring
    /// this upload only hides it: its bytes stay for the finals.
    pub finals: Vec<UploadId>,
    /// Deleted or expired but kept for the finals that use it; invisible to clients.
    pub deleted: bool,
    /// CRC-64/NVME of bytes `[0, offset)` of an unfinished upload appended in order, committed
    /// with the offset: whoever appends next (after a restart, a takeover, on any instance)
    /// continues the whole-upload CRC from it instead of reading the bytes back, and no
    /// hash state waits in memory between requests. `None` once finished (the CRC is then in
    /// `digests`) or when the chain from byte 0 is broken.
    pub running_crc: Option<u64>,
    /// Where the data store keeps the bytes, committed with the offset it covers (none for a
    /// final upload, which reads its parts'). Opaque here: only the store reads it.
    pub locator: Locator,
    /// Every byte is recorded but the data store's finish step has not been recorded yet (a
    /// crash came in between). The engine finishes it before the upload is read
    /// ([`crate::Uploads::get`]).
    pub finish_pending: bool,
}

impl UploadInfo {
    /// Whether every byte has arrived.
    pub fn is_complete(&self) -> bool {
        self.length == Some(self.offset)
    }

    /// Whether it expired before `now_ms` (finished uploads carry no expiry unless configured).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
