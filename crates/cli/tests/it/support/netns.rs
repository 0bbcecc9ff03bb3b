//! A simulated bad link for tests: `ferry serve` in a network namespace of its own, behind a
//! veth pair shaped by tbf (bandwidth) with nftables dropping a share of the packets. Needs root
//! (CAP_NET_ADMIN): the tests using it fail, never skip, without it. Used by `parallel.rs` and
//! `faults.rs`.

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs a command; `Err(stderr)` when it fails.
pub fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a command that must succeed.
pub fn must(args: &[&str]) {
    if let Err(e) = sh(args) {
        panic!("setting up the bad link: {e}");
    }
}

/// Prefix of the namespaces (and, shortened, the veth names) made here; the test process id
/// follows.
pub const NS_PREFIX: &str = "ferry-bl-";

/// A network namespace joined to the host by a veth pair on a private /30, with tbf on the
/// host side (the upload direction) and nftables dropping a share of the packets inside.
/// Deleted on drop: the namespace takes its end of the pair, its rules and the peer with it.
pub struct BadLink {
    pub ns: String,
    pub host_if: String,
    /// The namespace side's address.
    pub ns_ip: String,
}

impl BadLink {
    pub fn create(rate_mbit: u32, drop_percent: u32) -> BadLink {
        Self::sweep_stale();
        let pid = std::process::id();
        let ns = format!("{NS_PREFIX}{pid}");
        let host_if = format!("fbl{pid}h");
        let ns_if = format!("fbl{pid}n");
        // 10.231.A.B/30 from the pid: a private range, used only between the two ends of this
        // pair; no traffic leaves the machine.
        let third = (pid >> 6) % 256;
        let fourth = (pid % 64) * 4;
        let host_ip = format!("10.231.{third}.{}", fourth + 1);
        let ns_ip = format!("10.231.{third}.{}", fourth + 2);
        if let Err(e) = sh(&["ip", "netns", "add", &ns]) {
            panic!(
                "the bad-link test needs root (CAP_NET_ADMIN) and iproute2 to create a network \
                 namespace, and could not: {e}"
            );
        }
        // From here on, the guard cleans up whatever was made.
        let link = BadLink {
            ns: ns.clone(),
            host_if: host_if.clone(),
            ns_ip: ns_ip.clone(),
        };
        must(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        must(&["ip", "link", "set", &ns_if, "netns", &ns]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]);
        must(&["ip", "link", "set", &host_if, "up"]);
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        must(&["ip", "-n", &ns, "link", "set", &ns_if, "up"]);
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        // Bandwidth of the upload direction (host → namespace).
        must(&[
            "tc",
            "qdisc",
            "add",
            "dev",
            &host_if,
            "root",
            "tbf",
            "rate",
            &format!("{rate_mbit}mbit"),
            "burst",
            "256kb",
            "latency",
            "100ms",
        ]);
        // Loss, both directions, inside the namespace.
        let rules = format!(
            "table inet ferry_badlink {{\n\
               chain input {{ type filter hook input priority 0; policy accept; \
                 numgen random mod 100 < {drop_percent} drop; }}\n\
               chain output {{ type filter hook output priority 0; policy accept; \
                 numgen random mod 100 < {drop_percent} drop; }}\n\
             }}\n"
        );
        let rules_file = std::env::temp_dir().join(format!("ferry-badlink-{pid}.nft"));
        std::fs::write(&rules_file, rules).unwrap();
        let loaded = sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "nft",
            "-f",
            rules_file.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&rules_file);
        if let Err(e) = loaded {
            panic!("setting up the bad link (nftables): {e}");
        }
        link
    }

    /// Deletes namespaces (and their host-side veth) left by test processes that no longer
    /// exist (a SIGKILLed test skips Drop).
    pub fn sweep_stale() {
        let Ok(list) = sh(&["ip", "netns", "list"]) else {
            return;
        };
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(pid) = name
                .strip_prefix(NS_PREFIX)
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let _ = sh(&["ip", "netns", "del", name]);
            let _ = sh(&["ip", "link", "del", &format!("fbl{pid}h")]);
        }
    }

    /// `ip netns exec NS` as a wrapper for [`Server::start_wrapped`].
    pub fn exec_prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.ns]
    }
}

impl Drop for BadLink {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.ns]);
        // Gone with the namespace's end already; this covers a half-made pair.
        let _ = sh(&["ip", "link", "del", &self.host_if]);
    }
}
