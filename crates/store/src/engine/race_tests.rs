//! Concatenation racing deletion and expiry of its parts, run many times: a final that was
//! created stays readable, and once everything is deleted no record and no data is left.

use super::*;
use crate::test_support::{read_all, shm_tempdir};
use std::path::Path;

const ROUNDS: usize = 100;

/// A finished partial upload holding `data`.
async fn partial(u: &Uploads, data: &[u8]) -> UploadInfo {
    let info = u
        .create(NewUpload {
            length: Some(data.len() as u64),
            kind: UploadKind::Partial,
            ..Default::default()
        })
        .await
        .unwrap();
    let lease = u.lease(info.id).await.unwrap();
    let mut a = u.append(&lease, Some(data.len() as u64)).await.unwrap();
    a.push(data).await.unwrap();
    a.commit().await.unwrap()
}

/// Data files left under the store's directory.
fn data_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir.join("uploads")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// A created final must be readable with its parts' bytes.
async fn check_final(u: &Uploads, created: Result<UploadInfo>, data: &[u8]) -> Option<UploadId> {
    match created {
        Ok(fin) => {
            let fresh = u
                .get(fin.id)
                .await
                .unwrap()
                .expect("a final answered as created exists");
            assert!(fresh.is_complete(), "{fresh:?}");
            assert_eq!(read_all(u, &fresh).await, data, "the final's bytes");
            Some(fin.id)
        }
        Err(StoreError::NotFound(_)) => None,
        Err(e) => panic!("create_final: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_part_while_a_final_is_created_never_breaks_the_final_or_leaks_data() {
    let dir = shm_tempdir("ferry-race-");
    let u = Arc::new(Uploads::open_local(dir.path(), SyncPolicy::None).unwrap());
    let data = b"some bytes of a part";
    let (mut made, mut refused) = (0, 0);
    for _ in 0..ROUNDS {
        let part = partial(&u, data).await;
        let (d, f) = (u.clone(), u.clone());
        let delete = tokio::spawn(async move { d.delete(part.id).await });
        let create =
            tokio::spawn(async move { f.create_final(vec![part.id], Metadata::default()).await });
        delete.await.unwrap().unwrap();
        match check_final(&u, create.await.unwrap(), data).await {
            Some(fin) => {
                made += 1;
                u.delete(fin).await.unwrap();
            }
            None => refused += 1,
        }
    }
    assert_eq!(u.meta().list().await.unwrap(), vec![], "no record left");
    assert_eq!(data_files(dir.path()), Vec::<String>::new(), "no data left");
    let report = u.fsck(false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    eprintln!("{made} finals created, {refused} refused (part already deleted)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiring_a_part_while_a_final_is_created_never_breaks_the_final_or_leaks_data() {
    let dir = shm_tempdir("ferry-race-");
    let u = Arc::new(Uploads::open_local(dir.path(), SyncPolicy::None).unwrap());
    let data = b"bytes of an expiring part";
    let (mut made, mut refused) = (0, 0);
    for _ in 0..ROUNDS {
        let part = partial(&u, data).await;
        u.meta()
            .update(
                part.id,
                Box::new(|i| {
                    i.expires_ms = Some(1);
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let (d, f) = (u.clone(), u.clone());
        let sweep = tokio::spawn(async move { d.sweep_expired(now_ms()).await });
        let create =
            tokio::spawn(async move { f.create_final(vec![part.id], Metadata::default()).await });
        sweep.await.unwrap().unwrap();
        match check_final(&u, create.await.unwrap(), data).await {
            Some(fin) => {
                made += 1;
                u.delete(fin).await.unwrap();
            }
            None => refused += 1,
        }
        // The part is gone (expired) or hidden behind the final, which is now deleted too.
        u.sweep_expired(now_ms()).await.unwrap();
    }
    assert_eq!(u.meta().list().await.unwrap(), vec![], "no record left");
    assert_eq!(data_files(dir.path()), Vec::<String>::new(), "no data left");
    let report = u.fsck(false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    eprintln!("{made} finals created, {refused} refused (part already expired)");
}
