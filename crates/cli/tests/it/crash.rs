//! Crash harness, CI-sized: `scripts/crash_driver.py` (the logic lives there, once) run against
//! this test build's `ferry`, which has the `crash-sim` feature through the dev-dependency on
//! `ferry-store` (see crates/cli/Cargo.toml). The long run is `scripts/crash-harness.sh --long`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::ferry_bin;

/// The driver's process group, killed on drop (a timeout or a failed assertion must not leave
/// servers or `ferry upload` clients behind).
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs the driver with `args`; returns its exit code and JSON summary.
fn drive(args: &[&str], limit: Duration) -> (i32, serde_json::Value) {
    use std::os::unix::process::CommandExt;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/crash_driver.py");
    let work = tempfile::tempdir().expect("tempdir");
    let out_path = work.path().join("summary.json");
    let out = std::fs::File::create(&out_path).expect("summary file");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg("--ferry")
        .arg(ferry_bin())
        .arg("--workdir")
        .arg(work.path())
        .args(args)
        .stdout(out)
        .process_group(0)
        .spawn()
        .expect("python3 runs the crash driver");
    let group = Group(child.id());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < limit,
            "crash driver ran past {limit:?} (args {args:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(group);
    let text = std::fs::read_to_string(&out_path).expect("summary");
    let summary = serde_json::from_str(text.lines().last().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("driver printed no summary ({e}): {text:?}"));
    (status.code().unwrap_or(-1), summary)
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// The short run: SIGKILLs and simulated power losses in turn under `--sync always`, with tus,
/// IETF and `ferry upload` clients (some SIGKILLed and re-run) and ranged downloads; every
/// acknowledged offset survives, every upload completes byte-exact.
#[test]
fn short_run_survives_sigkill_and_power_loss() {
    let (code, s) = drive(
        &[
            "--seed",
            "11",
            "--server-kills",
            "8",
            "--client-kills",
            "4",
            "--budget",
            "60",
        ],
        Duration::from_secs(150),
    );
    assert_eq!(code, 0, "violations: {s}");
    assert_eq!(n(&s, "violations"), 0, "{s}");
    assert_eq!(n(&s, "server_kills"), 8, "{s}");
    assert_eq!(n(&s, "power_losses"), 4, "{s}");
    assert_eq!(n(&s, "sigkills"), 4, "{s}");
    assert!(n(&s, "client_kills") >= 4, "{s}");
    assert!(n(&s, "uploads_completed") >= 10, "{s}");
    assert!(n(&s, "acks") > 0 && n(&s, "ranged_gets") > 0, "{s}");
}

/// The power-loss mode really loses what was not synced: under `--sync none` acknowledged
/// bytes vanish (the harness fails, as it must), under `--sync always` they never do.
#[test]
fn power_loss_loses_acknowledged_bytes_only_without_sync() {
    let (code, s) = drive(
        &[
            "--seed",
            "12",
            "--sync",
            "none",
            "--kinds",
            "powerloss",
            "--server-kills",
            "3",
            "--client-kills",
            "0",
            "--upload-timeout",
            "20",
            "--expect-violation",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "expected a violation under --sync none: {s}");
    assert!(n(&s, "violations") > 0, "{s}");
    let first = s["first_violations"].to_string();
    assert!(first.contains("acknowledged"), "{first}");

    let (code, s) = drive(
        &[
            "--seed",
            "12",
            "--sync",
            "always",
            "--kinds",
            "powerloss",
            "--server-kills",
            "3",
            "--client-kills",
            "0",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "violations under --sync always: {s}");
    assert_eq!(n(&s, "power_losses"), 3, "{s}");
    assert!(n(&s, "acks") > 0, "{s}");
}
