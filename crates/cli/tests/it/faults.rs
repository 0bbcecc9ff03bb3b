//! Network faults, end to end: `ferry upload` (tus) and `ferry download` through the
//! fault-injecting proxy ([`crate::support::proxy`]), one fault kind per test and direction.
//!
//! Every transfer must complete byte-exact (SHA-256 of the stored upload read straight from
//! the server, or of the downloaded file, against the source). Faults that leave a connection
//! open and silent (stalls, half-open connections) must be noticed by the client's stall
//! timeout (`--stall-timeout 2s`) and retried, well inside a bound, never hang. Each client
//! run is bounded and killed on overrun; servers and proxies are dropped with the test.
//!
//! The last test runs the server in a network namespace (tbf bandwidth, nftables dropping 1 %
//! of packets) behind the proxy adding latency; it needs root and fails, never skips, without.

use crate::support::netns::BadLink;
use crate::support::proxy::{Faults, Proxy};
use crate::support::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// Size of every transfer: several proxy reads and, with the byte faults at 2 MiB, several
/// connections.
const LEN: u64 = 6 * MIB;
/// Where the per-connection byte faults fire.
const AFTER: u64 = 2 * MIB;
/// Bound on any one client run.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// Bound on runs whose faults the stall timeout must catch (each costs ~2 s + backoff).
const STALL_BOUND: Duration = Duration::from_secs(60);
/// Streams per download (the floors below divide by it).
const STREAMS: u32 = 2;

/// What a fault kind must show besides a byte-exact result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// The run took at least this long: the fault was in the path.
    AtLeast(Duration),
    /// Connections were lost and the client said it was retrying.
    Retried,
    /// The client's stall timeout caught a silent connection, then it retried.
    StallCaught,
}

/// One fault kind: its proxy settings (for the given direction) and what it must prove.
fn kind(name: &str, downstream: bool) -> (Faults, Proof) {
    let reads = LEN.div_ceil(64 * 1024) as u32;
    let streams = if downstream { STREAMS } else { 1 };
    let base = Faults {
        downstream,
        seed: 0x5EED,
        ..Faults::default()
    };
    match name {
        // Every forwarded read (at most 64 KiB) waits `delay`: at least `reads` waits.
        "latency" => {
            let delay = Duration::from_millis(15);
            (
                Faults { delay, ..base },
                Proof::AtLeast(delay * reads / streams),
            )
        }
        // Uniform in [0, 30 ms) per read from a seeded generator: mean 15 ms; a quarter of
        // the mean over ~100 reads is certain.
        "jitter" => {
            let jitter = Duration::from_millis(30);
            (
                Faults { jitter, ..base },
                Proof::AtLeast(jitter * reads / 8 / streams),
            )
        }
        "bandwidth" => {
            let rate = 3_000_000;
            let floor =
                Duration::from_secs_f64(LEN as f64 / rate as f64 * 0.9 / f64::from(streams));
            (
                Faults {
                    rate: Some(rate),
                    ..base
                },
                Proof::AtLeast(floor),
            )
        }
        "cut" => (
            Faults {
                cut_after: Some(AFTER),
                ..base
            },
            Proof::Retried,
        ),
        "reset" => (
            Faults {
                reset_after: Some(AFTER),
                ..base
            },
            Proof::Retried,
        ),
        "stall" => (
            Faults {
                stall_after: Some(AFTER),
                ..base
            },
            Proof::StallCaught,
        ),
        "half_open" => (
            Faults {
                half_open_after: Some(AFTER),
                ..base
            },
            Proof::StallCaught,
        ),
        _ => unreachable!("{name}"),
    }
}

fn check(name: &str, ran: &Ran, proof: Proof, proxy: &Proxy) {
    assert_eq!(ran.code, Some(0), "{name}: {ran:#?}");
    let conns = proxy.connections.load(Ordering::Relaxed);
    match proof {
        Proof::AtLeast(floor) => {
            assert!(
                ran.elapsed >= floor,
                "{name}: {:?} < {floor:?}: the fault was not in the path",
                ran.elapsed
            );
        }
        Proof::Retried => {
            assert!(
                conns >= 3,
                "{name}: {conns} connections for {LEN} bytes cut at {AFTER}"
            );
            assert!(ran.stderr.contains("retrying"), "{name}: {}", ran.stderr);
        }
        Proof::StallCaught => {
            assert!(conns >= 2, "{name}: {conns} connections");
            assert!(
                ran.stderr
                    .contains("no progress for 2s (stalled connection)"),
                "{name}: the stall timeout did not fire: {}",
                ran.stderr
            );
            assert!(ran.stderr.contains("retrying"), "{name}: {}", ran.stderr);
            assert!(ran.elapsed < STALL_BOUND, "{name}: took {:?}", ran.elapsed);
        }
    }
}

/// `ferry upload` of LEN bytes through the proxy; the stored upload is read back straight
/// from the server.
fn upload_with(name: &str) {
    let (faults, proof) = kind(name, false);
    let server = Server::start(&[]);
    let proxy = Proxy::start(server.addr, faults);
    let tmp = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(tmp.path(), "f.bin", LEN as usize, 11);
    let ran = run_ferry(
        &[
            "upload",
            file.to_str().unwrap(),
            &proxy.url("/files/"),
            "--stall-timeout",
            "2s",
        ],
        &tmp.path().join("state"),
        RUN_LIMIT,
    );
    check(name, &ran, proof, &proxy);
    let url = ran.stdout.lines().next().unwrap_or_default();
    assert!(url.starts_with(&proxy.url("/files/")), "{name}: {ran:#?}");
    assert_eq!(
        get_sha256(&server.rebase(url)),
        sha,
        "{name}: stored bytes differ"
    );
    assert!(proxy.forwarded.load(Ordering::Relaxed) >= LEN);
}

/// `ferry download` of a finished LEN-byte upload through the proxy, faults on the
/// server→client direction.
fn download_with(name: &str) {
    let (faults, proof) = kind(name, true);
    let server = Server::start(&["--sync", "none"]);
    let data = random_bytes(LEN as usize, 12);
    let url = create(&server, LEN, Some("filename Zi5iaW4="));
    assert_eq!(patch(&url, 0, data.clone()), (204, Some(LEN)));
    let proxy = Proxy::start(server.addr, faults);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out.bin");
    let id = url.rsplit('/').next().unwrap();
    let ran = run_ferry(
        &[
            "download",
            "-j",
            &STREAMS.to_string(),
            "--stall-timeout",
            "2s",
            "-o",
            dest.to_str().unwrap(),
            &proxy.url(&format!("/files/{id}")),
        ],
        &tmp.path().join("state"),
        RUN_LIMIT,
    );
    check(name, &ran, proof, &proxy);
    assert_eq!(
        sha256_file(&dest),
        sha256(&data),
        "{name}: downloaded bytes differ"
    );
}

macro_rules! fault_tests {
    ($($kind:ident),*) => {
        mod upload {
            $(#[test] fn $kind() { super::upload_with(stringify!($kind)); })*
        }
        mod download {
            $(#[test] fn $kind() { super::download_with(stringify!($kind)); })*
        }
    };
}

fault_tests!(latency, jitter, bandwidth, cut, reset, stall, half_open);

/// A bad link: the server in its own network namespace behind tbf (40 Mbit/s towards it) and
/// nftables dropping 1 % of packets both ways, reached through the proxy adding 10 ms per read.
/// An upload and a download of the same 16 MiB complete byte-exact.
#[test]
fn bad_link_in_a_namespace_upload_and_download_are_exact() {
    let link = BadLink::create(40, 1);
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let listen = format!("{}:0", link.ns_ip);
    let server = Server::start_wrapped(&data_dir, &["--listen", &listen], &link.exec_prefix());
    let proxy = Proxy::start(
        server.addr,
        Faults {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(10),
            seed: 7,
            ..Faults::default()
        },
    );
    let len = 16 * MIB as usize;
    let (file, sha) = random_file(tmp.path(), "f.bin", len, 13);
    let up = run_ferry(
        &[
            "upload",
            file.to_str().unwrap(),
            &proxy.url("/files/"),
            "--stall-timeout",
            "5s",
        ],
        &tmp.path().join("state-up"),
        RUN_LIMIT,
    );
    assert_eq!(up.code, Some(0), "{up:#?}");
    let url = up.stdout.lines().next().unwrap_or_default().to_string();
    assert_eq!(get_sha256(&server.rebase(&url)), sha, "stored bytes differ");
    let dest = tmp.path().join("back.bin");
    let down = run_ferry(
        &[
            "download",
            "--stall-timeout",
            "5s",
            "-o",
            dest.to_str().unwrap(),
            &url,
        ],
        &tmp.path().join("state-down"),
        RUN_LIMIT,
    );
    assert_eq!(down.code, Some(0), "{down:#?}");
    assert_eq!(sha256_file(&dest), sha, "downloaded bytes differ");
}
