//! What the state dir remembers and what a run prints for many files: the index of finished
//! uploads (found again, checked with the server, `--again`, `ferry forget`), `ferry status`
//! progress for uploads and downloads, file-and-URL pairs, and directory manifests restored by
//! `ferry download -r`.

use crate::support::download::{spawn_download, wait_saved};
use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: usize = 1 << 20;

fn ferry(args: &[&str], state: &Path) -> Ran {
    run_ferry(args, state, Duration::from_secs(60))
}

fn ok(r: &Ran) -> &Ran {
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    r
}

fn delete(url: &str) {
    let r = client()
        .delete(url)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "DELETE {url}");
}

#[test]
fn a_finished_upload_is_found_again_until_it_changes_is_gone_again_or_forgotten() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let (f, sha) = random_file(t.path(), "f.bin", 3 * MIB, 1);
    let fs = f.to_str().unwrap();
    let up = |extra: &[&str]| {
        let mut args = vec!["upload"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[fs, &server.files_url]);
        ferry(&args, &state)
    };
    let first = ok(&up(&[])).stdout.trim().to_owned();
    assert_eq!(get_sha256(&first), sha);

    // The same file again: its URL, nothing sent.
    let again = up(&["--json"]);
    let done = &files_done(&ok(&again).stdout)[0];
    assert_eq!(done["url"], first.as_str());
    assert_eq!(done["already_uploaded"], true);
    assert_eq!(done["resumed_from"], 3 * MIB as u64);
    let plain = up(&[]);
    assert_eq!(ok(&plain).stdout.trim(), first);
    assert!(
        plain.stderr.contains("already uploaded, unchanged since"),
        "{}",
        plain.stderr
    );

    // --again: a new upload.
    let second = ok(&up(&["--again"])).stdout.trim().to_owned();
    assert_ne!(second, first);
    assert_eq!(get_sha256(&second), sha);

    // The server lost it: uploaded anew, and said so.
    delete(&second);
    let r = up(&[]);
    let third = ok(&r).stdout.trim().to_owned();
    assert!(r.stderr.contains("gone or differs"), "{}", r.stderr);
    assert_ne!(third, second);
    assert_eq!(get_sha256(&third), sha);

    // `status --finished` lists it; `forget` drops the entry and leaves the upload.
    let listed = ok(&ferry(&["status", "--finished", "--json"], &state))
        .stdout
        .clone();
    let entry: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(entry["url"], third.as_str());
    assert_eq!(
        entry["file"],
        std::fs::canonicalize(&f).unwrap().to_str().unwrap()
    );
    assert!(entry["crc64nvme"].is_string(), "{entry}");
    let r = ferry(&["forget", fs], &state);
    assert!(r.stderr.contains("it stays on the server"), "{}", r.stderr);
    ok(&r);
    assert_eq!(get_sha256(&third), sha, "forget leaves a finished upload");
    assert_eq!(
        ok(&ferry(&["status", "--finished", "--json"], &state)).stdout,
        ""
    );
    let fourth = ok(&up(&[])).stdout.trim().to_owned();
    assert_ne!(fourth, third);

    // A changed file is another file.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .map(|mut h| std::io::Write::write_all(&mut h, b"more"))
        .unwrap()
        .unwrap();
    let fifth = ok(&up(&[])).stdout.trim().to_owned();
    assert_ne!(fifth, fourth);
    assert_eq!(get_sha256(&fifth), sha256_file(&f));
}

#[test]
fn status_shows_how_far_uploads_and_downloads_got() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let (f, _) = random_file(t.path(), "f.bin", 8 * MIB, 2);
    // An upload cut after about 3 MiB.
    {
        let mut kid = KillOnDrop(
            Command::new(ferry_bin())
                .args([
                    "upload",
                    "-j",
                    "1",
                    "--limit-rate",
                    "2M",
                    "--chunk-size",
                    "512K",
                ])
                .args(["--max-chunk", "512K", "--state-dir"])
                .arg(&state)
                .arg(&f)
                .arg(&server.files_url)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(1500));
        assert!(kid.0.try_wait().unwrap().is_none());
    }
    // A download cut after 1 MiB.
    let (share, dir) = crate::support::download::share_server();
    let (_, _) = random_file(dir.path(), "s.bin", 8 * MIB, 3);
    let url = crate::support::download::share_url(share.addr, "s.bin");
    let dest = t.path().join("s.bin");
    {
        let _kid = spawn_download(
            &state,
            &["--limit-rate", "2M", "-o", dest.to_str().unwrap(), &url],
            &t.path().join("dl.log"),
        );
        wait_saved(&state, MIB as u64, Duration::from_secs(30));
    }
    let r = ferry(&["status", "--json"], &state);
    let lines: Vec<Value> = ok(&r)
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    for op in ["upload", "download"] {
        let l = lines.iter().find(|l| l["op"] == op).unwrap();
        let (done, total) = (
            l["bytes_done"].as_u64().unwrap(),
            l["bytes_total"].as_u64().unwrap(),
        );
        assert_eq!(total, 8 * MIB as u64, "{l}");
        assert!(done >= MIB as u64 && done < total, "{l}");
        let pct = l["percent"].as_f64().unwrap();
        assert!(
            (pct - done as f64 * 100.0 / total as f64).abs() < 0.2,
            "{l}"
        );
        assert!(l["file"].is_string() && l["url"].is_string(), "{l}");
    }
    let plain = ok(&ferry(&["status"], &state)).stdout.clone();
    for op in ["upload", "download"] {
        let line = plain.lines().find(|l| l.contains(op)).unwrap();
        assert!(
            line.contains('%') && line.contains(&format!("/{} bytes", 8 * MIB)),
            "{line}"
        );
    }
    // Offline, an upload's progress is unknown; a download's is on disk.
    let off = ok(&ferry(&["status", "--offline", "--json"], &state))
        .stdout
        .clone();
    let up: Value = off
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["op"] == "upload")
        .unwrap();
    assert!(up["bytes_done"].is_null(), "{up}");
}

#[test]
fn several_files_are_printed_beside_their_urls() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let (a, a_sha) = random_file(t.path(), "a b.bin", 200_000, 4);
    let (b, b_sha) = random_file(t.path(), "c.bin", 300_000, 5);
    let r = ferry(
        &[
            "upload",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            &server.files_url,
        ],
        &state,
    );
    let pairs: Vec<(String, String)> = ok(&r)
        .stdout
        .lines()
        .map(|l| {
            let (f, u) = l.split_once('\t').unwrap_or_else(|| panic!("{l:?}"));
            (f.to_owned(), u.to_owned())
        })
        .collect();
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[0].0, a.to_str().unwrap());
    assert_eq!(get_sha256(&pairs[0].1), a_sha);
    assert_eq!(pairs[1].0, b.to_str().unwrap());
    assert_eq!(get_sha256(&pairs[1].1), b_sha);
    // Downloads too.
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let r = ferry(
        &[
            "download",
            "-d",
            out.to_str().unwrap(),
            &pairs[0].1,
            &pairs[1].1,
        ],
        &t.path().join("state2"),
    );
    for (line, (_, url)) in ok(&r).stdout.lines().zip(&pairs) {
        let (file, u) = line.split_once('\t').unwrap();
        assert_eq!(u, url);
        assert!(Path::new(file).starts_with(&out), "{line}");
    }
}

fn tree_files(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.path().strip_prefix(root).unwrap().to_path_buf(),
                    sha256_file(&e.path()),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_uploaded_directory_comes_back_from_its_manifest() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let tree = src.join("photos");
    std::fs::create_dir_all(tree.join("2024/june")).unwrap();
    random_file(&tree, "top.bin", 6 * MIB, 6);
    random_file(&tree.join("2024"), "a b.jpg", 300_000, 7);
    random_file(&tree.join("2024/june"), "c.jpg", 2 * MIB + 1, 8);
    std::fs::write(tree.join("2024/empty"), b"").unwrap();
    let state = t.path().join("state");
    let r = ferry(
        &[
            "upload",
            "--json",
            tree.to_str().unwrap(),
            &server.files_url,
        ],
        &state,
    );
    let events = crate::support::events(&ok(&r).stdout);
    let m: Vec<&Value> = events.iter().filter(|e| e["event"] == "manifest").collect();
    assert_eq!(m.len(), 1, "{}", r.stdout);
    assert_eq!(m[0]["files"], 4);
    let manifest_url = m[0]["url"].as_str().unwrap().to_owned();

    // The plain run prints the manifest beside the directory (everything already there).
    let r = ferry(
        &["upload", tree.to_str().unwrap(), &server.files_url],
        &state,
    );
    let line = ok(&r).stdout.lines().last().unwrap().to_owned();
    assert_eq!(line, format!("photos/\t{manifest_url}"), "{}", r.stdout);
    assert!(
        r.stderr.contains("4 files were already uploaded"),
        "{}",
        r.stderr
    );

    // Restored, cut once and resumed per file.
    let out = t.path().join("out");
    let dstate = t.path().join("dstate");
    {
        let _kid = spawn_download(
            &dstate,
            &[
                "-r",
                "--limit-rate",
                "2M",
                "-d",
                out.to_str().unwrap(),
                &manifest_url,
            ],
            &t.path().join("dl.log"),
        );
        wait_saved(&dstate, MIB as u64, Duration::from_secs(30));
    }
    let r = crate::support::download::ferry_download(
        &dstate,
        &["-r", "--json", "-d", out.to_str().unwrap(), &manifest_url],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let done = files_done(&String::from_utf8_lossy(&r.stdout));
    assert_eq!(done.len(), 4);
    assert!(done.iter().all(|d| d["verified"] == true), "{done:?}");
    assert!(
        done.iter().any(|d| d["resumed_from"].as_u64().unwrap() > 0),
        "{done:?}"
    );
    assert_eq!(tree_files(&out.join("photos")), tree_files(&tree));
}

#[test]
fn a_manifest_cannot_write_outside_the_target() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let (payload, _) = random_file(t.path(), "payload", 1000, 9);
    let url = ok(&ferry(
        &["upload", payload.to_str().unwrap(), &server.files_url],
        &state,
    ))
    .stdout
    .trim()
    .to_owned();
    let elsewhere = "http://192.0.2.1/files/x".to_owned();
    for (path, file_url, why) in [
        ("../escaped", &url, "not a plain relative path"),
        ("/tmp/escaped", &url, "not a plain relative path"),
        ("x/../../escaped", &url, "not a plain relative path"),
        ("x//y", &url, "not a plain relative path"),
        ("x/\u{1b}[2Jy", &url, "not a plain relative path"),
        ("other/y", &url, "not below the manifest's directory"),
        // Another server would get the run's -H headers.
        ("x/y", &elsewhere, "not on the manifest's server"),
    ] {
        let evil = t.path().join("evil.json");
        std::fs::write(
            &evil,
            serde_json::json!({
                "ferry_manifest": 1, "name": "x",
                "files": [{"path": path, "size": 1000, "url": file_url}],
            })
            .to_string(),
        )
        .unwrap();
        let murl = ok(&ferry(
            &[
                "upload",
                "--again",
                evil.to_str().unwrap(),
                &server.files_url,
            ],
            &state,
        ))
        .stdout
        .trim()
        .to_owned();
        let out = t.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let r = ferry(
            &["download", "-r", "-d", out.to_str().unwrap(), &murl],
            &t.path().join("dstate"),
        );
        assert_eq!(r.code, Some(3), "{path}: {}", r.stderr);
        assert!(r.stderr.contains(why), "{path}: {}", r.stderr);
        assert!(!t.path().join("escaped").exists());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }
}
