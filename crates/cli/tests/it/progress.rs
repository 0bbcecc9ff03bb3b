//! What a run shows: JSON Lines events for programs (`--json`), plain progress lines when stderr
//! is a log, redrawn lines that fit an 80-column terminal, `--quiet` and `-v`.

use crate::support::download::text;
use crate::support::proxy::{Faults, Proxy};
use crate::support::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// Every line is an event with a version; the summary comes last, with the exit code.
fn check_stream(stdout: &str, code: i32) -> Vec<Value> {
    let events = events(stdout);
    assert_eq!(events.len(), stdout.lines().count(), "{stdout}");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "summary", "{stdout}");
    assert_eq!(last["exit_code"], code, "{stdout}");
    assert_eq!(of(&events, "summary").len(), 1);
    events
}

/// The rate in `progress` events never shows more than the cap: the first second, when socket
/// buffers fill at memory speed, is not measured.
fn check_progress(events: &[Value], cap: f64) {
    let progress = of(events, "progress");
    assert!(progress.len() >= 2, "{events:?}");
    for p in &progress {
        if let Some(rate) = p["rate"].as_f64() {
            assert!(rate < cap * 1.3, "rate {rate} above the cap {cap}: {p}");
        }
        // Several downloads: the total is not known before each one starts.
        let remaining = p["bytes_total"]
            .as_u64()
            .map_or(1, |t| t - p["bytes_done"].as_u64().unwrap());
        if p["stalled"] == true {
            assert!(p["eta_seconds"].is_null(), "{p}");
        } else if let Some(eta) = p["eta_seconds"].as_u64()
            && remaining > 0
        {
            assert!(eta > 0, "eta 0 with {remaining} bytes left: {p}");
        }
        assert!(p["active"].is_array(), "{p}");
    }
}

#[test]
fn json_events_for_uploads_and_downloads_share_their_fields() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let (a, a_sha) = random_file(t.path(), "a.bin", 6 * MIB, 1);
    let (b, _) = random_file(t.path(), "b.bin", 100_000, 2);
    let missing = t.path().join("missing.bin");
    let up = run_ferry(
        &[
            "upload",
            "--json",
            "--progress-interval",
            "200ms",
            "--limit-rate",
            "3M",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            missing.to_str().unwrap(),
            &server.files_url,
        ],
        &t.path().join("state"),
        Duration::from_secs(60),
    );
    let events = check_stream(&up.stdout, 2);
    check_progress(&events, 3.0 * MIB as f64);
    let started = of(&events, "started");
    assert_eq!(started.len(), 2, "{}", up.stdout);
    let done = of(&events, "file_done");
    assert_eq!(done.len(), 2, "{}", up.stdout);
    for d in &done {
        for k in [
            "url",
            "file",
            "bytes",
            "seconds",
            "verified",
            "resumed_from",
        ] {
            assert!(!d[k].is_null(), "{k} in {d}");
        }
        assert_eq!(d["op"], "upload");
        assert_eq!(d["verified"], true);
    }
    let errors = of(&events, "error");
    assert_eq!(errors.len(), 1, "{}", up.stdout);
    assert_eq!(errors[0]["file"], missing.to_str().unwrap());
    assert_eq!(errors[0]["exit_code"], 2);
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("no such file")
    );
    let summary = events.last().unwrap();
    assert_eq!(summary["files_done"], 2);
    assert_eq!(summary["files_skipped"], 1);

    // Download both back, and a URL that is not there.
    let a_url = done
        .iter()
        .find(|d| d["file"] == a.to_str().unwrap())
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let gone = format!("{}0123456789abcdef0123456789abcdef", server.files_url);
    let out_dir = t.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let down = run_ferry(
        &[
            "download",
            "--json",
            "--progress-interval",
            "200ms",
            "--limit-rate",
            "3M",
            "-d",
            out_dir.to_str().unwrap(),
            &a_url,
            &gone,
        ],
        &t.path().join("state2"),
        Duration::from_secs(60),
    );
    let devents = check_stream(&down.stdout, 3);
    check_progress(&devents, 3.0 * MIB as f64);
    let dd = of(&devents, "file_done");
    assert_eq!(dd.len(), 1, "{}", down.stdout);
    assert_eq!(dd[0]["op"], "download");
    assert_eq!(dd[0]["verified"], true);
    assert_eq!(
        sha256_file(Path::new(dd[0]["file"].as_str().unwrap())),
        a_sha
    );
    let derr = of(&devents, "error");
    assert_eq!(derr.len(), 1, "{}", down.stdout);
    assert_eq!(derr[0]["url"], gone.as_str());
    assert_eq!(derr[0]["exit_code"], 3);
    assert!(
        derr[0]["message"].as_str().unwrap().contains("404"),
        "{}",
        derr[0]
    );

    // The same fields on both sides.
    for kind in ["started", "progress", "error", "summary"] {
        let (u, d) = (of(&events, kind)[0], of(&devents, kind)[0]);
        let (ku, kd) = (keys(u), keys(d));
        let only_upload: Vec<_> = ku.difference(&kd).collect();
        assert!(
            only_upload.is_empty() || (kind == "summary" && only_upload == ["files_skipped"]),
            "{kind}: {only_upload:?} only in uploads"
        );
        assert!(kd.is_subset(&ku), "{kind}: {:?}", kd.difference(&ku));
    }
    let common = keys(done[0])
        .intersection(&keys(dd[0]))
        .cloned()
        .collect::<BTreeSet<_>>();
    for k in [
        "version",
        "event",
        "op",
        "file",
        "url",
        "bytes",
        "seconds",
        "verified",
        "resumed_from",
    ] {
        assert!(common.contains(k), "{k} missing from one side");
    }
}

#[test]
fn a_run_that_cannot_start_says_so_in_json_too() {
    let t = tempfile::tempdir().unwrap();
    let (f, _) = random_file(t.path(), "f.bin", 1000, 1);
    let r = run_ferry(
        &[
            "upload",
            "--json",
            "--chunk-size",
            "0",
            f.to_str().unwrap(),
            "http://127.0.0.1:9/files/",
        ],
        &t.path().join("state"),
        Duration::from_secs(20),
    );
    assert_eq!(r.code, Some(2));
    let events = check_stream(&r.stdout, 2);
    assert_eq!(of(&events, "error")[0]["exit_code"], 2);
    assert!(
        of(&events, "error")[0]["message"]
            .as_str()
            .unwrap()
            .contains("--chunk-size")
    );
}

#[test]
fn a_stalled_transfer_says_stalled_and_gives_no_eta() {
    let server = Server::start(&[]);
    let proxy = Proxy::start(
        server.addr,
        Faults {
            stall_after: Some(2 * MIB as u64),
            ..Faults::default()
        },
    );
    let t = tempfile::tempdir().unwrap();
    let (f, sha) = random_file(t.path(), "f.bin", 8 * MIB, 3);
    let mut kid = KillOnDrop(
        Command::new(ferry_bin())
            .args([
                "upload",
                "--json",
                "--progress-interval",
                "250ms",
                "-j",
                "1",
            ])
            .args(["--stall-timeout", "6s", "--state-dir"])
            .arg(t.path().join("state"))
            .arg(&f)
            .arg(proxy.url("/files/"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = kid.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut stalled = None;
    while started.elapsed() < Duration::from_secs(60) {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        let v: Value = serde_json::from_str(&line).unwrap();
        lines.push(line);
        if v["event"] == "progress" && v["stalled"] == true && stalled.is_none() {
            assert!(v["eta_seconds"].is_null(), "{v}");
            stalled = Some(v.clone());
            // The link comes back: new connections pass.
            proxy.set(Faults::default());
        }
        if v["event"] == "summary" {
            break;
        }
    }
    let all = lines.join("\n");
    assert!(stalled.is_some(), "never shown stalled: {all}");
    let events = check_stream(&all, 0);
    check_progress(&events, f64::INFINITY);
    let done = of(&events, "file_done");
    assert_eq!(get_sha256(done[0]["url"].as_str().unwrap()), sha);
}

#[test]
fn plain_lines_on_a_log_quiet_and_verbose() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let (f, _) = random_file(t.path(), "f.bin", 12 * MIB, 4);
    let run = |extra: &[&str], state: &str| {
        let mut args = vec!["upload", "--again", "--limit-rate", "4M", "-j", "1"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[f.to_str().unwrap(), &server.files_url]);
        run_ferry(&args, &t.path().join(state), Duration::from_secs(60))
    };
    // stderr is a file here: a plain line every interval, each naming the file.
    let r = run(&["--progress-interval", "500ms"], "s1");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("ferry: ") && l.contains("f.bin ") && l.contains('%'))
        .collect();
    assert!(lines.len() >= 3, "{}", r.stderr);
    assert!(lines.iter().any(|l| l.contains("MiB/s")), "{}", r.stderr);
    assert!(lines.iter().all(|l| l.contains("1 stream")), "{}", r.stderr);
    assert!(
        !r.stderr.contains('\r') && !r.stderr.contains('\x1b'),
        "{:?}",
        r.stderr
    );
    assert_eq!(r.stdout.lines().count(), 1);

    let r = run(&["--quiet"], "s2");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stderr, "", "--quiet prints only the result");
    assert!(r.stdout.trim().starts_with("http://"), "{}", r.stdout);

    let r = run(&["-v", "--progress-interval", "1h"], "s3");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("f.bin: 12.0 MiB in") && r.stderr.contains("verified (crc64nvme)"),
        "{}",
        r.stderr
    );
}

/// The text a terminal would show: escape sequences dropped, split where the cursor returns.
fn drawn_segments(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// `ferry ARGS` in an 80×24 pseudo-terminal (util-linux `script`): what it drew.
fn in_a_terminal(args: &[String], limit: Duration) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let cmd = format!(
        "stty cols 80 rows 24; exec '{}' {}",
        ferry_bin().display(),
        quoted.join(" ")
    );
    let out = crate::support::download::run(
        Command::new("script").args(["-q", "-f", "-e", "-c", &cmd, "/dev/null"]),
        limit,
    );
    assert!(out.status.success(), "{}", text(&out.stdout));
    text(&out.stdout)
}

fn assert_fits(drawn: &str, want: &[&str]) {
    // indicatif pads each line with spaces to the terminal's width and lets the terminal wrap
    // to the next row: cut the text into 80-column rows as the terminal does. A line that
    // fits leaves the last column of its row blank; a longer one fills it and spills over.
    // Notes and results are text that may wrap like any; progress lines must not.
    let segments: Vec<String> = drawn_segments(drawn)
        .iter()
        .filter(|s| !s.starts_with("ferry: ") && !s.contains("http://"))
        .flat_map(|s| {
            let chars: Vec<char> = s.chars().collect();
            chars
                .chunks(80)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
        })
        .collect();
    for s in &segments {
        let width = s.trim_end().chars().count();
        assert!(width < 80, "{width} columns: {s:?}");
    }
    for w in want {
        assert!(
            segments.iter().any(|s| s.contains(w)),
            "nothing drawn with {w:?}: {drawn:?}"
        );
    }
    assert!(
        !segments
            .iter()
            .any(|s| s.contains("eta 0s") && !s.contains("100%")),
        "eta 0s with bytes left: {drawn:?}"
    );
}

#[test]
fn terminal_lines_fit_80_columns() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let long = "a-file-name-long-enough-to-need-shortening-on-an-eighty-column-terminal.bin";
    let (big, _) = random_file(t.path(), long, 40 * MIB, 5);
    let dir = t.path().join("tree");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..300 {
        random_file(
            &dir,
            &format!("file-{i:03}.dat"),
            20_000 + i * 100,
            i as u64,
        );
    }
    let s = |v: &str| v.to_string();
    let state = t.path().join("state").display().to_string();
    // One file over four streams.
    let drawn = in_a_terminal(
        &[
            s("upload"),
            s("--state-dir"),
            state.clone(),
            s("--limit-rate"),
            s("16M"),
            s("-j"),
            s("4"),
            big.display().to_string(),
            server.files_url.clone(),
        ],
        Duration::from_secs(60),
    );
    assert_fits(&drawn, &["%", "MiB/s", "4 streams", "…"]);
    // 300 files.
    let drawn = in_a_terminal(
        &[
            s("upload"),
            s("--state-dir"),
            state.clone(),
            s("--limit-rate"),
            s("2M"),
            dir.display().to_string(),
            server.files_url.clone(),
        ],
        Duration::from_secs(60),
    );
    assert_fits(&drawn, &["Total ", "/300 files", "tree/file-"]);
    // Several downloads: a total line.
    let urls: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .take(3)
        .map(|e| e.unwrap().path())
        .chain([big.clone()])
        .map(|p| {
            let f = run_ferry(
                &["upload", "--quiet", p.to_str().unwrap(), &server.files_url],
                &t.path().join("state-up"),
                Duration::from_secs(60),
            );
            f.stdout.trim().to_owned()
        })
        .collect();
    let out = t.path().join("down");
    std::fs::create_dir(&out).unwrap();
    let mut args = vec![
        s("download"),
        s("--state-dir"),
        state,
        s("--limit-rate"),
        s("16M"),
        s("-d"),
        out.display().to_string(),
    ];
    args.extend(urls);
    let drawn = in_a_terminal(&args, Duration::from_secs(60));
    assert_fits(&drawn, &["Total ", "/4 files", "MiB/s"]);
}
