//! The stored form of an upload record, shared by the metadata stores: JSON, read by name,
//! so that a field added later needs no migration (a reader ignores what it does not know and
//! defaults what is missing). redb keeps these bytes; PostgreSQL keeps them as `jsonb`.

use crate::data::Locator;
use crate::error::{Result, StoreError};
use crate::model::{Protocol, RangeSet, UploadInfo, UploadKind};
use ferry_proto::digest::Digests;
use ferry_proto::{Metadata, UploadId};
use serde::{Deserialize, Serialize};

/// The stored form of an [`UploadInfo`]. Unknown fields are ignored and missing ones defaulted,
/// so additive changes need no layout bump.
#[derive(Serialize, Deserialize)]
pub(crate) struct Record {
    length: Option<u64>,
    offset: u64,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    kind: UploadKind,
    #[serde(default)]
    received: Option<RangeSet>,
    created_ms: u64,
    updated_ms: u64,
    #[serde(default)]
    expires_ms: Option<u64>,
    /// Whole-content digests: lowercase hex under the algorithm's name (`sha256`, `blake3`,
    /// `crc64nvme`, big-endian). Flattened so each is a field of its own, as layout 1 has
    /// always stored them; keys this build does not know land here too and are ignored.
    #[serde(flatten)]
    digests: Digests,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    finals: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    running_crc: Option<u64>,
    #[serde(default, skip_serializing_if = "Locator::is_none")]
    locator: Locator,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    finish_pending: bool,
}

pub(crate) fn encode(info: &UploadInfo) -> Vec<u8> {
    let rec = Record {
        length: info.length,
        offset: info.offset,
        metadata: info.metadata.format(),
        protocol: info.protocol,
        kind: info.kind.clone(),
        received: info.received.clone(),
        created_ms: info.created_ms,
        updated_ms: info.updated_ms,
        expires_ms: info.expires_ms,
        digests: info.digests.clone(),
        finals: info.finals.iter().map(ToString::to_string).collect(),
        deleted: info.deleted,
        running_crc: info.running_crc,
        locator: info.locator.clone(),
        finish_pending: info.finish_pending,
    };
    serde_json::to_vec(&rec).expect("record serializes")
}

pub(crate) fn decode(id: UploadId, bytes: &[u8]) -> Result<UploadInfo> {
    let bad = |what: String| StoreError::Metadata(format!("record {id}: {what}"));
    let rec: Record = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let metadata = Metadata::parse(&rec.metadata).map_err(|e| bad(e.to_string()))?;
    let finals = rec
        .finals
        .iter()
        .map(|f| UploadId::parse(f).map_err(|e| bad(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    Ok(UploadInfo {
        id,
        finals,
        deleted: rec.deleted,
        running_crc: rec.running_crc,
        locator: rec.locator,
        finish_pending: rec.finish_pending,
        length: rec.length,
        offset: rec.offset,
        metadata,
        protocol: rec.protocol,
        kind: rec.kind,
        received: rec.received,
        created_ms: rec.created_ms,
        updated_ms: rec.updated_ms,
        expires_ms: rec.expires_ms,
        digests: rec.digests,
    })
}

/// What a sweeper needs to know of a record, read without decoding the rest (metadata can be
/// large).
#[derive(Deserialize)]
pub(crate) struct Expiry {
    #[serde(default)]
    pub(crate) expires_ms: Option<u64>,
    #[serde(default)]
    pub(crate) deleted: bool,
}

/// What counting unfinished uploads needs to know of a record.
#[derive(Deserialize)]
pub(crate) struct Progress {
    #[serde(default)]
    pub(crate) length: Option<u64>,
    #[serde(default)]
    pub(crate) offset: u64,
    #[serde(default)]
    pub(crate) deleted: bool,
}

/// The record fields this build writes (besides digests, which go under their algorithm's
/// name). A store shared by instances of different builds replaces exactly these keys of a
/// stored record and keeps the rest: a field a newer build added survives an older build's
/// update during a rolling upgrade.
const FIELDS: [&str; 14] = [
    "length",
    "offset",
    "metadata",
    "protocol",
    "kind",
    "received",
    "created_ms",
    "updated_ms",
    "expires_ms",
    "finals",
    "deleted",
    "running_crc",
    "locator",
    "finish_pending",
];

/// Every top-level key this build writes or means by its absence: [`FIELDS`] and the digest
/// algorithms' names.
pub(crate) fn known_keys() -> Vec<&'static str> {
    let digests = ferry_proto::checksum::ChecksumAlgorithm::ALL.map(|a| a.name());
    FIELDS.iter().copied().chain(digests).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_a_full_record_writes_is_known() {
        let info = crate::conformance::sample(UploadId::from_bytes([1; 16]));
        let v: serde_json::Value = serde_json::from_slice(&encode(&info)).unwrap();
        let known = known_keys();
        for k in v.as_object().unwrap().keys() {
            assert!(
                known.contains(&k.as_str()),
                "{k} is written but not in FIELDS"
            );
        }
        for f in FIELDS {
            assert!(
                v.get(f).is_some(),
                "{f} is in FIELDS but a full record lacks it"
            );
        }
    }
}
