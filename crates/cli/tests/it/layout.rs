//! A data directory written by the previous release opens and serves its uploads: the fixture
//! `tests/fixtures/layout1-data.tar.gz` was written by ferry at e1f6fec (metadata layout 1,
//! before records held their data store's locator) with `tests/fixtures/make-layout1.sh`. It
//! holds a finished upload, an unfinished one, one of deferred length, two finished partials
//! and their final, an unfinished partial, and a chunk session with two ranges out of order.

use crate::support::tus::*;
use crate::support::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// The fixture's bytes: `(i * seed + 13) % 251` for `i` in `start..end` (the script's pattern).
fn pattern(seed: u64, start: u64, end: u64) -> Vec<u8> {
    (start..end)
        .map(|i| ((i * seed + 13) % 251) as u8)
        .collect()
}

fn unpack(dir: &Path) -> HashMap<String, String> {
    std::fs::create_dir_all(dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layout1-data.tar.gz");
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("tar runs");
    assert!(st.success(), "unpacking {}", fixture.display());
    std::fs::read_to_string(dir.join("uploads.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let (role, path) = l.split_once(' ').unwrap();
            (role.to_string(), path.to_string())
        })
        .collect()
}

fn patch_ok(url: &str, offset: u64, body: Vec<u8>, length: Option<u64>) {
    let mut r = tus_patch(url, offset);
    if let Some(l) = length {
        r = r.header("Upload-Length", l.to_string());
    }
    let resp = r.body(body).send().expect("PATCH");
    assert_eq!(resp.status().as_u16(), 204, "{url}: {:?}", resp.text());
}

#[test]
fn a_layout_1_data_directory_migrates_and_serves_every_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let role = unpack(&dir);
    let mut server = Server::start_in(&dir, &[]);
    assert!(
        server
            .log()
            .contains("metadata layout 1 migrated to layout 2"),
        "{}",
        server.log()
    );
    let base = format!("http://{}", server.addr);
    let url = |r: &str| format!("{base}{}", role[r]);

    // Finished: served whole, with its name.
    let resp = client().get(url("finished")).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let disposition = hdr(&resp, "content-disposition").unwrap_or_default();
    assert!(disposition.contains("finished.bin"), "{disposition}");
    assert_eq!(resp.bytes().unwrap().to_vec(), pattern(7, 0, 100_000));

    // Unfinished: resumes at its offset and completes byte-exact.
    assert_eq!(head_offset(&url("unfinished")), Some(40_000));
    patch_ok(
        &url("unfinished"),
        40_000,
        pattern(11, 40_000, 100_000),
        None,
    );
    assert_eq!(get(&url("unfinished")).2, pattern(11, 0, 100_000));

    // Deferred length: declared with the last bytes.
    assert_eq!(head_offset(&url("deferred")), Some(10_000));
    patch_ok(
        &url("deferred"),
        10_000,
        pattern(17, 10_000, 15_000),
        Some(15_000),
    );
    assert_eq!(get(&url("deferred")).2, pattern(17, 0, 15_000));

    // The final made of two partials reads across them.
    let mut ab = pattern(19, 0, 50_000);
    ab.extend(pattern(23, 0, 30_000));
    assert_eq!(get(&url("final")).2, ab);

    // An unfinished partial completes and joins a new final.
    assert_eq!(head_offset(&url("part_open")), Some(5_000));
    patch_ok(&url("part_open"), 5_000, pattern(29, 5_000, 20_000), None);
    let resp = post_final(
        &server,
        &format!("final;{} {}", role["part_a"], role["part_open"]),
    );
    assert_eq!(resp.status().as_u16(), 201);
    let fresh = location(&resp).unwrap();
    let mut a_open = pattern(19, 0, 50_000);
    a_open.extend(pattern(29, 0, 20_000));
    assert_eq!(get(&fresh).2, a_open);

    // The chunk session keeps its two ranges; the gap completes it.
    let resp = client()
        .put(url("chunks"))
        .header("Content-Range", "bytes 10000-39999/60000")
        .body(pattern(31, 10_000, 40_000))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(hdr(&resp, "upload-complete").as_deref(), Some("?1"));
    assert_eq!(get(&url("chunks")).2, pattern(31, 0, 60_000));

    // Layout 2 opens again as it is, and the directory checks clean.
    server.terminate(std::time::Duration::from_secs(10));
    let server = Server::start_in(&dir, &[]);
    assert!(!server.log().contains("migrated"), "{}", server.log());
    assert_eq!(
        get(&url_on(&server, &role["finished"])).2,
        pattern(7, 0, 100_000)
    );
    drop(server);
    assert_fsck_clean(&dir);
}

fn url_on(server: &Server, path: &str) -> String {
    format!("http://{}{path}", server.addr)
}
