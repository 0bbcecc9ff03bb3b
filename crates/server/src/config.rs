//! Server settings, already validated (the CLI turns flags, env and file into this).

pub use crate::admission::CreationRate;
pub use crate::conn::ConnLimits;
use std::net::SocketAddr;
use std::time::Duration;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Prefix of every route, normalized: empty or `/a/b` (no trailing slash).
    pub base_path: String,
    /// Largest upload accepted, if limited.
    pub max_size: Option<u64>,
    /// Origin used in `Location` headers (`scheme://host[:port]`, no trailing slash).
    pub public_url: Option<String>,
    /// Longest wait for the next piece of a request body.
    pub body_idle_timeout: Duration,
    /// Honour `Forwarded` / `X-Forwarded-*` for building URLs.
    pub trust_proxy: bool,
    /// A long request body commits its progress every this many bytes, so a server crash loses
    /// at most this much of it.
    pub checkpoint_bytes: u64,
    /// Longest time allowed to read request headers (slow-loris guard).
    pub header_read_timeout: Duration,
    /// The address the listener is bound to (fallback for URLs when a request has no Host).
    pub local_addr: Option<SocketAddr>,
    /// How often expired uploads are swept.
    pub sweep_interval: Duration,
    /// How often the reconciler looks for leftovers: data that no committed state needs.
    pub reconcile_interval: Duration,
    /// How old a leftover must be before the reconciler removes it: longer than any upload's
    /// creation, or a write's staging and commit, can take.
    pub reconcile_grace: Duration,
    /// Which browser origins may call the API (CORS).
    pub cors: Cors,
    /// Longest a request with `Want-Repr-Digest` waits for a digest being computed (a large
    /// upload read back) before it is answered with the digests already known.
    pub digest_wait: Duration,
    /// Largest `Upload-Metadata` value accepted, in bytes.
    pub max_metadata: usize,
    /// Creations allowed per client address, if limited.
    pub creation_rate: Option<CreationRate>,
    /// Most unfinished uploads kept, if limited.
    pub max_unfinished: Option<u64>,
    /// Least bytes per second a request body must average over `body_rate_window`, if any.
    pub min_body_rate: Option<u64>,
    /// The window the minimum body rate is averaged over.
    pub body_rate_window: Duration,
    /// Bytes of body buffers (write buffers and the connection's read buffer) in use at once
    /// across every request; past it bodies wait in their sockets.
    pub buffer_memory: usize,
    /// Connection cap and lingering close.
    pub connections: ConnLimits,
    /// Which `Host` values are answered (the DNS-rebinding guard).
    pub allowed_hosts: HostPolicy,
    /// Whether `/share/` serves and lists names starting with a dot.
    pub share_dotfiles: bool,
}

/// Which `Host` values a server answers to, besides loopback names and its public URL's host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostPolicy {
    /// Bound to a loopback address: no others. Bound elsewhere: any.
    #[default]
    Auto,
    /// These host names (lowercase, no port), on any address.
    Only(Vec<String>),
    /// Any (`*`).
    Any,
}

impl HostPolicy {
    /// Parses `*` or a comma-separated list of host names (ports are ignored: a host is
    /// allowed with any port).
    pub fn parse(s: &str) -> Result<HostPolicy, String> {
        if s.trim() == "*" {
            return Ok(HostPolicy::Any);
        }
        let mut hosts = Vec::new();
        for h in s.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            hosts.push(
                ferry_proto::http::host_name(h)
                    .ok_or_else(|| format!("{h:?} is not a host name"))?,
            );
        }
        Ok(if hosts.is_empty() {
            HostPolicy::Auto
        } else {
            HostPolicy::Only(hosts)
        })
    }
}

/// Cross-origin policy for browsers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cors {
    /// Any origin (no credentials are ever allowed).
    Any,
    /// Only these origins (`scheme://host[:port]`, compared exactly).
    Origins(Vec<String>),
    /// No cross-origin access (the default): no CORS headers, and state-changing requests
    /// from other origins' pages refused.
    #[default]
    Off,
}

impl Cors {
    /// Parses `*`, `none`, or a comma-separated list of origins.
    pub fn parse(s: &str) -> Result<Cors, String> {
        let s = s.trim();
        match s {
            "*" => return Ok(Cors::Any),
            "" | "none" | "off" => return Ok(Cors::Off),
            _ => {}
        }
        let origins: Vec<String> = s
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();
        for o in &origins {
            normalize_public_url(o)
                .map_err(|_| format!("CORS origin {o:?} must look like https://host[:port]"))?;
        }
        Ok(Cors::Origins(origins))
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if allowed.
    pub fn allow(&self, origin: &str) -> Option<String> {
        match self {
            Cors::Any => Some("*".into()),
            Cors::Origins(list) => list
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
                .then(|| origin.to_string()),
            Cors::Off => None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            base_path: String::new(),
            max_size: None,
            public_url: None,
            body_idle_timeout: Duration::from_secs(60),
            trust_proxy: false,
            checkpoint_bytes: 64 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(30),
            local_addr: None,
            sweep_interval: Duration::from_secs(60),
            reconcile_interval: Duration::from_secs(3600),
            reconcile_grace: Duration::from_secs(3600),
            cors: Cors::Off,
            digest_wait: Duration::from_secs(5),
            max_metadata: MAX_METADATA,
            creation_rate: Some(CreationRate::DEFAULT),
            max_unfinished: Some(MAX_UNFINISHED),
            min_body_rate: Some(MIN_BODY_RATE),
            body_rate_window: Duration::from_secs(60),
            buffer_memory: ferry_store::uploads::BUDGET_BYTES,
            connections: ConnLimits::default(),
            allowed_hosts: HostPolicy::Auto,
            share_dotfiles: false,
        }
    }
}

/// Default minimum body rate, in bytes per second (averaged over a minute): far below what a
/// real client sends, even `ferry upload --limit-rate 1M` spread over 32 files (about 32 KB/s
/// each) or a phone on a 2G link, and far above a body dripping a byte at a time.
pub const MIN_BODY_RATE: u64 = 1024;

/// Default bound on unfinished uploads: far above what a busy server keeps (each costs a record
/// of a few hundred bytes and a file), far below what fills a disk with inodes or makes the
/// sweep slow.
pub const MAX_UNFINISHED: u64 = 100_000;

/// Default bound on `Upload-Metadata`: every record carries it and is rewritten at each commit,
/// so its size is paid on every write and in memory per upload. 16 KiB holds a 10 KB file name
/// (about 14 KB of base64) with room to spare.
pub const MAX_METADATA: usize = 16 * 1024;

/// Normalizes a base path: `""`, `"/"` → `""`; `"api/"` → `"/api"`. Rejects characters that
/// need escaping in a URL path.
pub fn normalize_base_path(p: &str) -> Result<String, String> {
    let trimmed = p.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let ok = trimmed
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'))
        && !trimmed
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if !ok {
        return Err(format!(
            "base path {p:?} must be plain path segments of letters, digits, '-', '_', '.', '~'"
        ));
    }
    Ok(format!("/{trimmed}"))
}

/// Validates a public URL (`http(s)://host[:port]`, IPv6 literals in brackets) and drops a
/// trailing slash.
pub fn normalize_public_url(u: &str) -> Result<String, String> {
    let uri: http::Uri = u
        .parse()
        .map_err(|e| format!("public URL {u:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "public URL {u:?} must start with http:// or https://"
            ));
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("public URL {u:?} has no host"))?;
    let host = authority.host();
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!("public URL {u:?}: put IPv6 addresses in brackets"));
    }
    if uri.query().is_some() {
        return Err(format!("public URL {u:?} must not have a query"));
    }
    Ok(u.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_paths() {
        assert_eq!(normalize_base_path("").unwrap(), "");
        assert_eq!(normalize_base_path("/").unwrap(), "");
        assert_eq!(normalize_base_path("api/").unwrap(), "/api");
        assert_eq!(normalize_base_path("/a/b/").unwrap(), "/a/b");
        assert!(normalize_base_path("/a/../b").is_err());
        assert!(normalize_base_path("/a b").is_err());
        assert!(normalize_base_path("/a//b").is_err());
        assert!(normalize_base_path("/%2e").is_err());
    }

    #[test]
    fn cors_policies() {
        assert_eq!(Cors::parse("*").unwrap(), Cors::Any);
        assert_eq!(Cors::parse("none").unwrap(), Cors::Off);
        let c = Cors::parse("https://a.example, http://b.example:8080/").unwrap();
        assert_eq!(
            c.allow("https://a.example").as_deref(),
            Some("https://a.example")
        );
        assert_eq!(
            c.allow("http://b.example:8080").as_deref(),
            Some("http://b.example:8080")
        );
        assert_eq!(c.allow("https://evil.example"), None);
        assert!(Cors::parse("a.example").is_err());
        assert_eq!(Cors::Any.allow("null").as_deref(), Some("*"));
        assert_eq!(Cors::Off.allow("https://a.example"), None);
    }

    #[test]
    fn host_policies() {
        assert_eq!(HostPolicy::parse("*").unwrap(), HostPolicy::Any);
        assert_eq!(HostPolicy::parse(" ").unwrap(), HostPolicy::Auto);
        assert_eq!(
            HostPolicy::parse("Files.Example:443, [::1]").unwrap(),
            HostPolicy::Only(vec!["files.example".into(), "::1".into()])
        );
        assert!(HostPolicy::parse("a b").is_err());
        assert!(HostPolicy::parse("https://a.example").is_err());
    }

    #[test]
    fn public_urls() {
        assert_eq!(
            normalize_public_url("https://x.example/").unwrap(),
            "https://x.example"
        );
        assert_eq!(
            normalize_public_url("http://[::1]:8080").unwrap(),
            "http://[::1]:8080"
        );
        assert!(normalize_public_url("ftp://x").is_err());
        assert!(normalize_public_url("x.example").is_err());
        assert!(normalize_public_url("http://x.example/?q=1").is_err());
    }
}
