//! `ferry download -r`: a shared directory's tree, fetched from its JSON listings into
//! DIR/NAME/..., byte-exact, each file resumed on its own after an interruption.

use crate::support::download::{ferry_download, share_server, spawn_download, text, wait_saved};
use crate::support::*;
use std::time::Duration;

#[test]
fn a_shared_tree_is_restored_and_resumed_per_file() {
    let (server, share) = share_server();
    let root = share.path().join("tree");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    let (_, big) = random_file(&root, "a.bin", 3 << 20, 1);
    let (_, b) = random_file(&root.join("sub"), "b c.bin", 5000, 2);
    let (_, d) = random_file(&root.join("sub/deeper"), "d.bin", 70_000, 3);
    std::fs::write(root.join(".hidden"), b"not shared").unwrap();
    let t = tempfile::tempdir().unwrap();
    let (state, out) = (t.path().join("state"), t.path().join("out"));
    let url = format!("http://{}/share/tree/", server.addr);
    let o = out.to_str().unwrap();

    // Interrupted in the large file (paced), then run again.
    let mut first = spawn_download(
        &state,
        &["-r", "--limit-rate", "1M", "-d", o, &url],
        &t.path().join("first.log"),
    );
    wait_saved(&state, 1, Duration::from_secs(20));
    first.kill9();
    let again = ferry_download(&state, &["-r", "-d", o, &url]);
    let err = text(&again.stderr);
    assert_eq!(again.status.code(), Some(0), "{err}");
    assert!(err.contains("resuming"), "{err}");
    for (rel, sha) in [
        ("tree/a.bin", &big),
        ("tree/sub/b c.bin", &b),
        ("tree/sub/deeper/d.bin", &d),
    ] {
        assert_eq!(&sha256_file(&out.join(rel)), sha, "{rel}");
    }
    assert!(!out.join("tree/.hidden").exists());
    // No digest from a share: said once for the tree, not per file.
    assert!(err.matches("not verified").count() <= 1, "{err}");

    // -r takes a directory URL, or a manifest: a plain file is neither.
    let file = ferry_download(&state, &["-r", "-d", o, &format!("{url}a.bin")]);
    assert_eq!(file.status.code(), Some(3), "{}", text(&file.stderr));
    assert!(
        text(&file.stderr).contains("not a manifest"),
        "{}",
        text(&file.stderr)
    );
}
