//! `ferry completions SHELL` and `ferry man`, generated from the commands' own definitions.

use crate::support::download::{run, text};
use crate::support::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn ferry(args: &[&str]) -> std::process::Output {
    run(
        Command::new(ferry_bin()).args(args).stdin(Stdio::null()),
        Duration::from_secs(20),
    )
}

#[test]
fn completions_for_every_shell_know_the_flags() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = ferry(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for flag in ["upload", "download", "limit-rate", "header"] {
            assert!(script.contains(flag), "{shell} lacks {flag}");
        }
    }
    // The bash script parses.
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("ferry.bash");
    std::fs::write(&path, ferry(&["completions", "bash"]).stdout).unwrap();
    let check = run(
        Command::new("bash").arg("-n").arg(&path),
        Duration::from_secs(20),
    );
    assert!(check.status.success(), "{}", text(&check.stderr));
    let out = ferry(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_pages_cover_every_command() {
    let out = ferry(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.contains(".TH ferry 1"), "{page}");
    for command in ["upload", "download", "serve", "forget"] {
        assert!(page.contains(command), "ferry.1 lacks {command}");
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("man1");
    let out = ferry(&["man", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let upload = std::fs::read_to_string(dir.join("ferry-upload.1")).unwrap();
    assert!(upload.contains(r"\-\-limit\-rate"), "{upload}");
    assert!(dir.join("ferry-serve.1").exists());
    // groff renders it without complaint.
    let rendered = run(
        Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-P", "-cbou"])
            .arg(dir.join("ferry-upload.1")),
        Duration::from_secs(20),
    );
    assert!(rendered.status.success(), "{}", text(&rendered.stderr));
    assert!(text(&rendered.stdout).contains("limit"));
}
