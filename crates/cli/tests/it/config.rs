//! `ferry serve` settings: flag > `FERRY_*` environment > TOML file, size suffixes, invalid
//! values (exit code 2 with a clear message), the data-dir lock and SIGTERM.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Environment variables for one run.
type Env<'a> = &'a [(&'a str, &'a str)];
/// A table row: name, extra arguments, environment, expectation.
type Case<'a, T> = (&'a str, Vec<&'a str>, Env<'a>, T);

/// `Tus-Max-Size` announced by OPTIONS.
fn max_size_of(server: &Server) -> Option<String> {
    let resp = client()
        .request(reqwest::Method::OPTIONS, &server.files_url)
        .send()
        .expect("OPTIONS");
    assert_eq!(resp.status().as_u16(), 204);
    resp.headers()
        .get("tus-max-size")
        .map(|v| v.to_str().unwrap().to_string())
}

fn write_toml(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `ferry <args>` with only `envs` among the `FERRY_*` variables, and waits up to
/// `limit` for it to exit (killing it otherwise). Returns the exit status and stderr.
fn run_to_exit(
    args: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> (Option<ExitStatus>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let err_path = tmp.path().join("stderr");
    let mut cmd = Command::new(ferry_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FERRY_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    let mut child = cmd.spawn().expect("spawn ferry");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------------------------
// Precedence

#[test]
fn max_size_precedence_is_flag_then_env_then_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_toml(tmp.path(), "ferry.toml", "max_size = \"1M\"\n");
    let file = file.to_str().unwrap();
    let env = [("FERRY_MAX_SIZE", "2M")];
    let cases: [Case<&str>; 5] = [
        ("file only", vec!["--config", file], &[], "1048576"),
        ("env over file", vec!["--config", file], &env, "2097152"),
        (
            "flag over env and file",
            vec!["--config", file, "--max-size", "3M"],
            &env,
            "3145728",
        ),
        ("env only", vec![], &env, "2097152"),
        (
            "flag over file",
            vec!["--config", file, "--max-size", "4K"],
            &[],
            "4096",
        ),
    ];
    for (case, args, envs, want) in cases {
        let server = Server::start_with_env(&args, envs);
        assert_eq!(max_size_of(&server).as_deref(), Some(want), "{case}");
    }
    // The config file may also come from FERRY_CONFIG.
    let server = Server::start_with_env(&[], &[("FERRY_CONFIG", file)]);
    assert_eq!(
        max_size_of(&server).as_deref(),
        Some("1048576"),
        "FERRY_CONFIG"
    );
}

#[test]
fn base_path_precedence_is_flag_then_env_then_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_toml(tmp.path(), "ferry.toml", "base_path = \"/from-file\"\n");
    let file = file.to_str().unwrap();
    let env = [("FERRY_BASE_PATH", "/from-env")];
    let cases: [Case<&str>; 4] = [
        ("file only", vec!["--config", file], &[], "/from-file"),
        ("env over file", vec!["--config", file], &env, "/from-env"),
        (
            "flag over env and file",
            vec!["--config", file, "--base-path", "/from-flag"],
            &env,
            "/from-flag",
        ),
        ("env only", vec![], &env, "/from-env"),
    ];
    for (case, args, envs, base) in cases {
        let server = Server::start_with_env(&args, envs);
        let expect = format!("http://{}{base}/files/", server.addr);
        assert_eq!(server.files_url, expect, "{case}");
        // The routes really moved.
        let url = create(&server, 1, None);
        assert!(url.starts_with(&expect), "{case}: Location {url}");
        assert_eq!(head_offset(&url), Some(0), "{case}");
        let unprefixed = format!("http://{}/files/", server.addr);
        let resp = client()
            .post(&unprefixed)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", "1")
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{case}: un-prefixed POST");
    }
}

#[test]
fn trust_proxy_precedence_and_boolean_forms() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_toml(tmp.path(), "ferry.toml", "trust_proxy = true\n");
    let file = file.to_str().unwrap();
    let cases: [Case<bool>; 5] = [
        ("file true", vec!["--config", file], &[], true),
        (
            "env false over file",
            vec!["--config", file],
            &[("FERRY_TRUST_PROXY", "false")],
            false,
        ),
        (
            "flag false over env",
            vec!["--trust-proxy", "false"],
            &[("FERRY_TRUST_PROXY", "true")],
            false,
        ),
        ("bare flag", vec!["--trust-proxy"], &[], true),
        ("default", vec![], &[], false),
    ];
    for (case, args, envs, trusted) in cases {
        let server = Server::start_with_env(&args, envs);
        let req = "POST /files/ HTTP/1.1\r\nHost: localhost\r\nTus-Resumable: 1.0.0\r\n\
             Upload-Length: 1\r\nX-Forwarded-Host: proxy.example\r\nConnection: close\r\n\
             Content-Length: 0\r\n\r\n";
        let resp = raw(server.addr, req.as_bytes(), Duration::from_secs(10));
        assert_eq!(status_of(&resp), 201, "{case}: {resp}");
        let location = header_of(&resp, "Location").unwrap();
        let want = if trusted {
            "http://proxy.example/files/"
        } else {
            "/files/"
        };
        assert!(location.starts_with(want), "{case}: Location {location}");
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes

#[test]
fn sizes_take_suffixes() {
    for (given, want) in [
        ("64M", "67108864"),
        ("1G", "1073741824"),
        ("512k", "524288"),
        ("1.5K", "1536"),
        ("10GB", "10737418240"),
        ("2MiB", "2097152"),
        ("1024", "1024"),
    ] {
        let server = Server::start(&["--max-size", given]);
        assert_eq!(
            max_size_of(&server).as_deref(),
            Some(want),
            "--max-size {given}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    for (toml, want) in [
        ("max_size = 1024", "1024"),
        ("max_size = \"64M\"", "67108864"),
    ] {
        let file = write_toml(tmp.path(), "f.toml", &format!("{toml}\n"));
        let server = Server::start(&["--config", file.to_str().unwrap()]);
        assert_eq!(max_size_of(&server).as_deref(), Some(want), "{toml}");
    }
    // The limit is enforced in bytes, exactly.
    let server = Server::start(&["--max-size", "1K"]);
    let ok = client()
        .post(&server.files_url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1024")
        .send()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 201);
    let over = client()
        .post(&server.files_url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1025")
        .send()
        .unwrap();
    assert_eq!(over.status().as_u16(), 413);
}

// ---------------------------------------------------------------------------------------------
// Invalid settings

#[test]
fn invalid_settings_exit_2_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = |name: &str, text: &str| write_toml(tmp.path(), name, text).display().to_string();
    let unknown_key = toml("unknown.toml", "colour = \"blue\"\n");
    let bad_syntax = toml("syntax.toml", "max_size = \n");
    let bad_type = toml("type.toml", "trust_proxy = \"yes\"\n");
    let bad_size = toml("size.toml", "max_size = \"huge\"\n");
    let bad_digest_wait = toml("wait.toml", "digest_wait = \"a while\"\n");
    let missing = tmp.path().join("missing.toml").display().to_string();
    let cases: Vec<Case<&str>> = vec![
        ("bad size flag", vec!["--max-size", "12Q"], &[], "12Q"),
        ("negative size", vec!["--max-size=-5"], &[], "-5"),
        ("size overflow", vec!["--max-size", "16E"], &[], "16E"),
        (
            "bad size env",
            vec![],
            &[("FERRY_MAX_SIZE", "lots")],
            "lots",
        ),
        ("bad size in file", vec!["--config", &bad_size], &[], "huge"),
        (
            "bad duration",
            vec!["--body-idle-timeout", "5parsecs"],
            &[],
            "body-idle-timeout",
        ),
        (
            "zero idle timeout",
            vec!["--body-idle-timeout", "0s"],
            &[],
            "body-idle-timeout",
        ),
        (
            "bad shutdown timeout",
            vec!["--shutdown-timeout", "soon"],
            &[],
            "shutdown-timeout",
        ),
        (
            "bad duration env",
            vec![],
            &[("FERRY_BODY_IDLE_TIMEOUT", "-1s")],
            "body-idle-timeout",
        ),
        (
            "bad digest wait",
            vec!["--digest-wait", "soon"],
            &[],
            "digest-wait",
        ),
        (
            "bad digest wait env",
            vec![],
            &[("FERRY_DIGEST_WAIT", "-1s")],
            "digest-wait",
        ),
        (
            "bad digest wait in file",
            vec!["--config", &bad_digest_wait],
            &[],
            "digest-wait",
        ),
        (
            "unknown TOML key",
            vec!["--config", &unknown_key],
            &[],
            "colour",
        ),
        (
            "TOML syntax",
            vec!["--config", &bad_syntax],
            &[],
            "config file",
        ),
        ("TOML type", vec!["--config", &bad_type], &[], "config file"),
        (
            "missing config file",
            vec!["--config", &missing],
            &[],
            "missing.toml",
        ),
        (
            "public URL scheme",
            vec!["--public-url", "ftp://x.example"],
            &[],
            "public URL",
        ),
        (
            "public URL no scheme",
            vec!["--public-url", "files.example.com"],
            &[],
            "public URL",
        ),
        (
            "public URL query",
            vec!["--public-url", "https://x.example/?a=1"],
            &[],
            "public URL",
        ),
        (
            "public URL bad IPv6",
            vec!["--public-url", "http://[::1"],
            &[],
            "public URL",
        ),
        (
            "public URL env",
            vec![],
            &[("FERRY_PUBLIC_URL", "gopher://x")],
            "public URL",
        ),
        (
            "base path dots",
            vec!["--base-path", "/a/../b"],
            &[],
            "base path",
        ),
        (
            "base path space",
            vec!["--base-path", "/a b"],
            &[],
            "base path",
        ),
        ("bad sync", vec!["--sync", "sometimes"], &[], "sometimes"),
        (
            "bad bool env",
            vec![],
            &[("FERRY_TRUST_PROXY", "maybe")],
            "maybe",
        ),
        ("unknown flag", vec!["--colour", "blue"], &[], "--colour"),
    ];
    for (case, extra, envs, needle) in cases {
        let data_dir = tmp.path().join(format!("data-{}", case.replace(' ', "-")));
        let dd = data_dir.display().to_string();
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", &dd];
        args.extend(extra);
        let (status, stderr) = run_to_exit(&args, envs, Duration::from_secs(10));
        let status = status.unwrap_or_else(|| panic!("{case}: still running after 10 s"));
        assert_eq!(
            status.code(),
            Some(2),
            "{case}: exit status; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{case}: stderr lacks {needle:?}:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{case}: panic:\n{stderr}");
        assert!(
            !data_dir.exists(),
            "{case}: data dir created before settings were checked"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Process lifecycle

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let first = Server::start_in(&dir, &[]);
    let url = create(&first, 5, None);
    assert_eq!(patch(&url, 0, b"ab".to_vec()), (204, Some(2)));
    let dd = dir.display().to_string();
    let (status, stderr) = run_to_exit(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", &dd],
        &[],
        Duration::from_secs(15),
    );
    let status = status.expect("second server still running after 15 s");
    assert!(!status.success(), "second server exited with {status}");
    assert!(
        stderr.contains("another ferry"),
        "message should name the other ferry:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The first is unaffected.
    assert_eq!(head_offset(&url), Some(2));
    assert_eq!(patch(&url, 2, b"cde".to_vec()), (204, Some(5)));
    assert_eq!(get_sha256(&url), sha256(b"abcde"));
}

#[test]
fn sigterm_on_an_idle_server_exits_0_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start_in(&dir, &[]);
    let url = create(&server, 3, None);
    assert_eq!(patch(&url, 0, b"xyz".to_vec()), (204, Some(3)));
    let started = Instant::now();
    let status = server
        .terminate(Duration::from_secs(5))
        .expect("no exit within 5 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The lock was released and the data kept: a new server opens the same dir.
    let again = Server::start_in(&dir, &[]);
    let url = again.rebase(&url);
    assert_eq!(get_sha256(&url), sha256(b"xyz"));
}

#[test]
fn a_share_holding_or_inside_the_data_dir_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ferry-data");
    std::fs::create_dir_all(data.join("uploads")).unwrap();
    // A link to a directory that holds the data directory is the same directory.
    std::os::unix::fs::symlink(tmp.path(), tmp.path().join("link")).unwrap();
    let d = data.display().to_string();
    for (share, needle) in [
        (tmp.path().to_path_buf(), "contains the data directory"),
        (tmp.path().join("link"), "contains the data directory"),
        (data.clone(), "contains the data directory"),
        (data.join("uploads"), "inside the data directory"),
    ] {
        let s = share.display().to_string();
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &d,
            "--share",
            &s,
        ];
        let (status, stderr) = run_to_exit(&args, &[], Duration::from_secs(10));
        let status = status.unwrap_or_else(|| panic!("{s}: still running after 10 s"));
        assert_eq!(status.code(), Some(2), "{s}: stderr:\n{stderr}");
        assert!(
            stderr.contains(needle),
            "{s}: stderr lacks {needle:?}:\n{stderr}"
        );
    }
    // A directory beside the data directory is fine.
    let public = tmp.path().join("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::write(public.join("a.txt"), b"a").unwrap();
    let server = Server::start_in(&data, &["--share", public.to_str().unwrap()]);
    let url = server.files_url.replace("/files/", "/share/a.txt");
    assert_eq!(tus::get(&url).2, b"a");
}
