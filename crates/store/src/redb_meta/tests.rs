//! The redb metadata store: its conformance, layouts and their migration, bindings.

use super::*;
use crate::model::Protocol;
use ferry_proto::Metadata;
use ferry_proto::checksum::ChecksumAlgorithm;
use ferry_proto::digest::Digests;

#[tokio::test]
async fn conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbMetaStore::open(&dir.path().join("m.redb")).unwrap();
    crate::conformance::meta_store(Arc::new(store)).await;
}

#[test]
fn newer_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    drop(RedbMetaStore::open(&path).unwrap());
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(INFO)
            .unwrap()
            .insert(LAYOUT_KEY, LAYOUT_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = RedbMetaStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("newer ferry"), "{err}");
}

#[test]
fn reopen_keeps_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = UploadId::from_bytes([5; 16]);
    let info = UploadInfo {
        offset: 7,
        ..record(5, serde_json::Value::Null)
    };
    rt.block_on(async {
        let s = RedbMetaStore::open(&path).unwrap();
        s.insert(&info).await.unwrap();
    });
    // Dropping the store joined its writer, so the file is free again.
    let s = RedbMetaStore::open(&path).expect("reopen");
    assert_eq!(rt.block_on(s.get(id)).unwrap(), Some(info));
}

#[test]
fn digests_are_stored_as_lowercase_hex() {
    let mut sha = [0u8; 32];
    sha[0] = 0xab;
    sha[31] = 0x0f;
    let info = UploadInfo {
        id: UploadId::from_bytes([6; 16]),
        length: Some(3),
        offset: 3,
        metadata: Metadata::default(),
        protocol: Protocol::Tus,
        kind: UploadKind::Regular,
        received: None,
        created_ms: 1,
        updated_ms: 2,
        expires_ms: None,
        digests: [
            (ChecksumAlgorithm::Sha256, sha.to_vec()),
            (ChecksumAlgorithm::Blake3, vec![0xff; 32]),
            (
                ChecksumAlgorithm::Crc64Nvme,
                0x00c0_ffee_0000_0001u64.to_be_bytes().to_vec(),
            ),
        ]
        .into_iter()
        .collect(),
        finals: Vec::new(),
        deleted: false,
        running_crc: None,
        locator: crate::data::Locator::none(),
        finish_pending: false,
    };
    let bytes = encode(&info);
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        json["sha256"],
        format!("ab{}0f", "0".repeat(60)),
        "the stored format"
    );
    assert_eq!(json["blake3"], "f".repeat(64));
    assert_eq!(json["crc64nvme"], "00c0ffee00000001");
    assert_eq!(decode(info.id, &bytes).unwrap(), info);
    let mut upper = json.clone();
    upper["crc64nvme"] = "00C0FFEE00000001".into();
    let upper = serde_json::to_vec(&upper).unwrap();
    assert_eq!(decode(info.id, &upper).unwrap().digests, info.digests);
    for bad in [
        "c0ffee".into(),
        "00c0ffee0000000g".into(),
        "00c0ffee000000011".into(),
        serde_json::json!(7),
    ] {
        let mut broken = json.clone();
        broken["crc64nvme"] = bad.clone();
        let broken = serde_json::to_vec(&broken).unwrap();
        assert!(decode(info.id, &broken).is_err(), "{bad}");
    }
}

fn record(id: u8, locator: serde_json::Value) -> UploadInfo {
    UploadInfo {
        id: UploadId::from_bytes([id; 16]),
        length: None,
        offset: 0,
        metadata: Metadata::default(),
        protocol: Protocol::Tus,
        kind: UploadKind::Regular,
        received: None,
        created_ms: 1,
        updated_ms: 1,
        expires_ms: None,
        digests: Digests::new(),
        finals: Vec::new(),
        deleted: false,
        running_crc: None,
        locator: crate::data::Locator(locator),
        finish_pending: false,
    }
}

#[test]
fn a_database_with_records_is_bound_to_one_data_store() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = RedbMetaStore::open(&dir.path().join("m.redb")).unwrap();
    // No records: bound again at will (nothing can be lost).
    store.bind_store("s3://b/p/").unwrap();
    store.bind_store("local").unwrap();
    store.bind_store("s3://b/p/").unwrap();
    rt.block_on(store.insert(&record(1, serde_json::json!({"key": "p/x"}))))
        .unwrap();
    store.bind_store("s3://b/p/").expect("the same store again");
    let err = store.bind_store("local").unwrap_err().to_string();
    assert!(err.contains("uploads are in s3://b/p/"), "{err}");
    let err = store.bind_store("s3://b/other/").unwrap_err().to_string();
    assert!(err.contains("cannot be used with s3://b/other/"), "{err}");
    // Records but no binding: made before bindings; their locators tell the store.
    for (name, locator, store_of) in [
        ("file.redb", serde_json::json!({"file": "01/0101"}), "local"),
        ("none.redb", serde_json::Value::Null, "local"),
        (
            "s3.redb",
            serde_json::json!({"key": "p/x", "upload": "u"}),
            "s3",
        ),
    ] {
        let old = RedbMetaStore::open(&dir.path().join(name)).unwrap();
        rt.block_on(old.insert(&record(4, locator))).unwrap();
        let other = if store_of == "local" {
            "s3://b/p/"
        } else {
            "local"
        };
        let err = old.bind_store(other).unwrap_err().to_string();
        assert!(
            err.contains(&format!("uploads are in {store_of}")),
            "{name}: {err}"
        );
        let own = if store_of == "local" {
            "local"
        } else {
            "s3://b/p/"
        };
        old.bind_store(own).unwrap();
    }
}

/// A layout-1 database with a regular upload and a final: opened without its data store
/// it is refused (and left as it was); opened with it, the regular upload gets its
/// locator, the final (no data of its own) none, and the layout becomes 2 at once.
#[test]
fn layout_1_migrates_only_with_its_data_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let (regular, fin) = (UploadId::from_bytes([1; 16]), UploadId::from_bytes([2; 16]));
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(INFO).unwrap().insert(LAYOUT_KEY, 1).unwrap();
        let mut t = txn.open_table(UPLOADS).unwrap();
        let r = br#"{"length":5,"offset":2,"created_ms":1,"updated_ms":2}"#;
        t.insert(regular.to_string().as_str(), &r[..]).unwrap();
        let f = format!(
            r#"{{"length":null,"offset":0,"created_ms":1,"updated_ms":2,"kind":{{"type":"final","parts":["{regular}"]}}}}"#
        );
        t.insert(fin.to_string().as_str(), f.as_bytes()).unwrap();
        // More than two pages of others, so the migration pages past its first read.
        for n in 0..(2 * MIGRATION_PAGE as u32 + 7) {
            let mut b = [9u8; 16];
            b[..4].copy_from_slice(&n.to_be_bytes());
            t.insert(UploadId::from_bytes(b).to_string().as_str(), &r[..])
                .unwrap();
        }
        drop(t);
        txn.commit().unwrap();
    }
    let err = RedbMetaStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("holds local uploads"), "{err}");
    let here = Locator(serde_json::json!({ "file": "here" }));
    let elsewhere = Locator(serde_json::json!({ "file": "elsewhere" }));
    let locate = |id: UploadId| match id {
        id if id == regular => Some(here.clone()),
        id if id == fin => None,
        _ => Some(elsewhere.clone()),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    {
        let store = RedbMetaStore::open_migrating(&path, &locate).unwrap();
        let got = rt.block_on(store.get(regular)).unwrap().unwrap();
        assert_eq!((got.offset, &got.locator), (2, &here));
        let got = rt.block_on(store.get(fin)).unwrap().unwrap();
        assert!(got.locator.is_none(), "a final has no object");
        let all = rt.block_on(store.list()).unwrap();
        assert_eq!(all.len(), 2 * MIGRATION_PAGE + 9, "every record kept");
        let placed = all.iter().filter(|i| i.locator == elsewhere).count();
        assert_eq!(placed, 2 * MIGRATION_PAGE + 7, "every page migrated");
    }
    // Layout 2 now: the plain open takes it as it is.
    let store = RedbMetaStore::open(&path).unwrap();
    let got = rt.block_on(store.get(regular)).unwrap().unwrap();
    assert_eq!(got.locator, here);
}

/// A record exactly as the first release wrote it (layout 1, `sha256` always present,
/// null when unknown) still reads, and unknown fields are ignored.
#[test]
fn layout_1_records_of_the_first_release_read() {
    let old = br#"{"length":5,"offset":5,"metadata":"filename YS50eHQ=","protocol":"tus","kind":{"type":"regular"},"received":null,"created_ms":1,"updated_ms":2,"expires_ms":null,"sha256":null,"blake3":"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff","crc64nvme":"00c0ffee00000001","a_future_field":{"x":[1,2]}}"#;
    let info = decode(UploadId::from_bytes([7; 16]), old).expect("reads");
    assert_eq!(info.offset, 5);
    assert_eq!(info.digests.get(ChecksumAlgorithm::Sha256), None);
    assert_eq!(
        info.digests.get(ChecksumAlgorithm::Blake3),
        Some(&[0xff; 32][..])
    );
    assert_eq!(info.digests.crc64nvme(), Some(0x00c0_ffee_0000_0001));
    let again = decode(info.id, &encode(&info)).unwrap();
    assert_eq!(again, info);
}
