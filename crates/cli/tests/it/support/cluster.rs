//! Several `ferry serve` instances sharing one PostgreSQL schema and one S3 prefix, behind the
//! per-request [`Balancer`]: a cluster as a load balancer sees it.

use super::balancer::Balancer;
use super::s3::CREDS;
use super::*;

/// Lease timing of the tests' instances: short, so that a dead instance's uploads are free
/// again within seconds (the default is 10 s / 2 s).
pub const TEST_LEASE: [&str; 4] = ["--lease-ttl", "4s", "--lease-margin", "1s"];

/// Instances sharing records and data, and the balancer in front of them.
pub struct Nodes {
    pub servers: Vec<Server>,
    pub lb: Balancer,
    /// `--meta` of every instance.
    pub meta: String,
    /// `--store` of every instance.
    pub store: String,
    /// `--s3-endpoint` of each instance (one may reach the store through a proxy).
    pub endpoints: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Nodes {
    /// `n` instances on a fresh schema of `pg_url`'s server and a fresh prefix on
    /// `endpoint`, each with `extra` arguments.
    pub fn start(n: usize, pg_url: &str, endpoint: &str, extra: &[&str]) -> Nodes {
        Self::start_with(pg_url, &vec![endpoint.to_string(); n], extra)
    }

    /// One instance per entry of `endpoints`, each reaching the store there.
    pub fn start_with(pg_url: &str, endpoints: &[String], extra: &[&str]) -> Nodes {
        s3::ensure_test_bucket(&endpoints[0]);
        let meta = pg::fresh_schema(pg_url);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let store = format!("s3://ferry-tests/cluster-{}-{nanos}", std::process::id());
        let tmp = tempfile::tempdir().unwrap();
        let mut servers = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            let dir = tmp.path().join(format!("node-{i}"));
            let args = Self::args(i, &meta, &store, endpoint, extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            servers.push(Server::start_in_with_env(&dir, &args, &CREDS));
        }
        let lb = Balancer::start(servers.iter().map(|s| s.addr).collect());
        Nodes {
            servers,
            lb,
            meta,
            store,
            endpoints: endpoints.to_vec(),
            _tmp: tmp,
        }
    }

    /// Instance `i`'s arguments.
    pub fn args(i: usize, meta: &str, store: &str, endpoint: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--meta",
            meta,
            "--instance-id",
            &format!("node-{i}"),
            "--sync",
            "none",
            "--store",
            store,
            "--s3-endpoint",
            endpoint,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(TEST_LEASE.iter().map(|s| s.to_string()));
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// The balancer's tus endpoint.
    pub fn files_url(&self) -> String {
        self.lb.url("/files/")
    }

    /// SIGKILLs instance `i` and starts it again (new port, same data directory and
    /// settings); the balancer routes to the new one.
    pub fn restart_after_kill(&mut self, i: usize) {
        self.servers[i].restart_after_kill();
        self.lb.replace(i, self.servers[i].addr);
    }

    /// Every instance's log, for failure messages.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("--- node-{i}:\n{}", s.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `ferry fsck` of the shared records and store (from instance 0's directory), with every
    /// instance stopped: fails unless it finds nothing.
    pub fn assert_fsck_clean(&mut self) {
        for s in &mut self.servers {
            s.terminate(Duration::from_secs(20));
        }
        let out = Command::new(ferry_bin())
            .args(["fsck", "--data-dir"])
            .arg(&self.servers[0].data_dir)
            .args(["--store", &self.store, "--s3-endpoint", &self.endpoints[0]])
            .args(["--meta", &self.meta])
            .envs(CREDS)
            .output()
            .expect("ferry fsck runs");
        assert!(
            out.status.success(),
            "fsck: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// SIGSTOP or SIGCONT `pid`.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}
