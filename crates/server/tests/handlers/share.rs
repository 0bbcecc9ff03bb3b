//! `--share DIR` under `/share/`.

use crate::support::*;

fn shared() -> Srv {
    let s = Srv::with(Setup {
        share: true,
        ..Setup::default()
    });
    let dir = s.share_dir();
    std::fs::write(dir.join("a.txt"), b"0123456789").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/b <x>.bin"), b"b").unwrap();
    s
}

fn etag_of(r: &Resp) -> String {
    r.h("etag").to_string()
}

#[tokio::test]
async fn without_a_share_is_404() {
    let s = Srv::new();
    assert_eq!(s.send(req("GET", "/share/")).await.status, 404);
    assert_eq!(s.send(req("GET", "/share/a.txt")).await.status, 404);
}

#[tokio::test]
async fn share_without_slash_is_301() {
    let s = shared();
    let r = s.send(req("GET", "/share")).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.h("location"), "/share/");
}

#[tokio::test]
async fn directory_without_slash_is_301() {
    let s = shared();
    let r = s.send(req("GET", "/share/sub")).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.h("location"), "/share/sub/");
}

#[tokio::test]
async fn listing_is_200_html() {
    let s = shared();
    let r = s.send(req("GET", "/share/sub/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("content-type"), "text/html; charset=utf-8");
    assert_eq!(r.h("content-security-policy"), "default-src 'none'");
    let t = r.text();
    assert!(
        t.contains("<a href=\"b%20%3Cx%3E.bin\">b &lt;x&gt;.bin</a> 1"),
        "{t}"
    );
    let head = s.send(req("HEAD", "/share/")).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(s.send(req("GET", "/share/")).await.text().contains("sub/"));
}

#[tokio::test]
async fn listing_for_programs_is_200_json() {
    let s = shared();
    std::fs::write(s.share_dir().join(".hidden"), b"x").unwrap();
    let r = s
        .send(req("GET", "/share/").h("accept", "application/json"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("content-type"), "application/json");
    assert_eq!(r.h("vary"), "Accept");
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"version": 1, "entries": [
            {"name": "a.txt", "type": "file", "size": 10, "href": "a.txt"},
            {"name": "sub", "type": "dir", "href": "sub/"},
        ]})
    );
    let r = s
        .send(req("GET", "/share/sub/").h("accept", "application/json"))
        .await;
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v["entries"][0]["href"], "b%20%3Cx%3E.bin");
    assert_eq!(v["entries"][0]["name"], "b <x>.bin");
    // A browser's Accept gets the page.
    let r = s
        .send(req("GET", "/share/").h("accept", "text/html,application/xhtml+xml,*/*;q=0.8"))
        .await;
    assert_eq!(r.h("content-type"), "text/html; charset=utf-8");
    assert_eq!(r.h("vary"), "Accept");
}

#[tokio::test]
async fn file_is_200() {
    let s = shared();
    let r = s.send(req("GET", "/share/a.txt")).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"0123456789");
    assert_eq!(r.h("accept-ranges"), "bytes");
    assert!(r.h("etag").starts_with("\"s-"));
    assert!(r.h("content-disposition").contains("a.txt"));
    let head = s.send(req("HEAD", "/share/a.txt")).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.h("content-length"), "10");
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn range_is_206() {
    let s = shared();
    let r = s
        .send(req("GET", "/share/a.txt").h("range", "bytes=3-5"))
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.h("content-range"), "bytes 3-5/10");
    assert_eq!(&r.body[..], b"345");
}

#[tokio::test]
async fn unsatisfiable_range_is_416() {
    let s = shared();
    let r = s
        .send(req("GET", "/share/a.txt").h("range", "bytes=10-"))
        .await;
    assert_eq!(r.status, 416);
    assert_eq!(r.h("content-range"), "bytes */10");
}

#[tokio::test]
async fn if_none_match_is_304() {
    let s = shared();
    let tag = etag_of(&s.send(req("HEAD", "/share/a.txt")).await);
    let r = s
        .send(req("GET", "/share/a.txt").h("if-none-match", &tag))
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn if_match_after_a_change_is_412() {
    let s = shared();
    let tag = etag_of(&s.send(req("HEAD", "/share/a.txt")).await);
    // Replaced by a file of the same size: a new inode, so a new tag.
    let dir = s.share_dir();
    std::fs::write(dir.join("new"), b"abcdefghij").unwrap();
    std::fs::rename(dir.join("new"), dir.join("a.txt")).unwrap();
    let r = s.send(req("GET", "/share/a.txt").h("if-match", &tag)).await;
    assert_eq!(r.status, 412);
    let r = s
        .send(
            req("GET", "/share/a.txt")
                .h("range", "bytes=0-1")
                .h("if-range", &tag),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"abcdefghij");
}

#[tokio::test]
async fn missing_and_escaping_paths_are_404() {
    let s = shared();
    std::os::unix::fs::symlink("/etc/passwd", s.share_dir().join("out")).unwrap();
    for p in [
        "/share/nope",
        "/share/a.txt/",
        "/share/../ferry.redb",
        "/share/%2e%2e/ferry.redb",
        "/share/sub//b",
        "/share/out",
    ] {
        let r = s.send(req("GET", p)).await;
        assert_eq!(r.status, 404, "{p}");
    }
}

#[tokio::test]
async fn nul_in_the_path_is_400() {
    let s = shared();
    let r = s.send(req("GET", "/share/a%00b")).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn writes_are_405() {
    let s = shared();
    for m in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = s.send(req(m, "/share/a.txt")).await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.h("allow"), "GET, HEAD");
    }
}

#[tokio::test]
async fn writes_to_share_without_slash_are_405() {
    let s = shared();
    for m in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = s.send(req(m, "/share")).await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.h("allow"), "GET, HEAD");
    }
}

fn shared_with(dotfiles: bool) -> Srv {
    let s = Srv::with(Setup {
        share: true,
        config: ferry_server::config::ServerConfig {
            share_dotfiles: dotfiles,
            ..Default::default()
        },
        ..Setup::default()
    });
    let dir = s.share_dir();
    std::fs::write(dir.join("a.txt"), b"a").unwrap();
    std::fs::create_dir(dir.join(".git")).unwrap();
    std::fs::write(dir.join(".git/config"), b"[remote]").unwrap();
    std::fs::write(dir.join(".env"), b"SECRET=1").unwrap();
    s
}

#[tokio::test]
async fn dotfiles_are_404_and_unlisted() {
    let s = shared_with(false);
    for p in [
        "/share/.git/config",
        "/share/.env",
        "/share/.git/",
        "/share/.git",
        "/share/%2Eenv",
    ] {
        assert_eq!(s.send(req("GET", p)).await.status, 404, "{p}");
    }
    let t = s.send(req("GET", "/share/")).await.text();
    assert!(
        t.contains("a.txt") && !t.contains(".git") && !t.contains(".env"),
        "{t}"
    );
}

#[tokio::test]
async fn links_to_dotfiles_are_404_and_unlisted() {
    for dotfiles in [false, true] {
        let s = shared_with(dotfiles);
        let dir = s.share_dir();
        std::os::unix::fs::symlink(".git/config", dir.join("cfg")).unwrap();
        std::os::unix::fs::symlink(".git", dir.join("repo")).unwrap();
        let want = if dotfiles { 200 } else { 404 };
        for p in ["/share/cfg", "/share/repo/config", "/share/repo/"] {
            assert_eq!(s.send(req("GET", p)).await.status, want, "{p} {dotfiles}");
        }
        let t = s.send(req("GET", "/share/")).await.text();
        assert_eq!(
            t.contains("\"cfg\"") && t.contains("\"repo/\""),
            dotfiles,
            "{t}"
        );
    }
}

#[tokio::test]
async fn share_dotfiles_serves_and_lists_them() {
    let s = shared_with(true);
    let r = s.send(req("GET", "/share/.git/config")).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"[remote]");
    let t = s.send(req("GET", "/share/")).await.text();
    assert!(t.contains(".git/") && t.contains(".env"), "{t}");
}

#[tokio::test]
async fn symlinks_and_special_files_that_cannot_be_served_are_not_listed() {
    let s = shared();
    let dir = s.share_dir();
    let outside = dir.parent().unwrap().join("outside.txt");
    std::fs::write(&outside, b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("escape")).unwrap();
    std::os::unix::fs::symlink("missing", dir.join("broken")).unwrap();
    std::os::unix::fs::symlink("a.txt", dir.join("alias")).unwrap();
    std::os::unix::fs::symlink("sub", dir.join("subalias")).unwrap();
    // A FIFO is never served: not listed either.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    assert_eq!(s.send(req("GET", "/share/pipe")).await.status, 404);
    let t = s.send(req("GET", "/share/")).await.text();
    assert!(
        !t.contains("escape") && !t.contains("broken") && !t.contains("pipe"),
        "{t}"
    );
    assert!(
        t.contains("\"alias\"") && t.contains("\"subalias/\""),
        "{t}"
    );
    assert_eq!(s.send(req("GET", "/share/escape")).await.status, 404);
    assert_eq!(s.send(req("GET", "/share/broken")).await.status, 404);
    assert_eq!(
        &s.send(req("GET", "/share/alias")).await.body[..],
        b"0123456789"
    );
}

#[tokio::test]
async fn shared_files_and_listings_are_cached_privately_and_revalidated() {
    let s = shared();
    for p in ["/share/a.txt", "/share/", "/share/sub/"] {
        let r = s.send(req("GET", p)).await;
        assert_eq!(r.status, 200, "{p}");
        assert_eq!(r.h("cache-control"), "private, no-cache", "{p}");
    }
    let r = s.send(req("GET", "/share/a.txt")).await;
    let again = s
        .send(req("GET", "/share/a.txt").h("if-none-match", &etag_of(&r)))
        .await;
    assert_eq!(again.status, 304);
}
