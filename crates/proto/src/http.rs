//! RFC 9110 grammar shared by every protocol, and the general HTTP headers ferry reads:
//! `Forwarded` (RFC 7239) and its `X-Forwarded-*` forerunners, `Content-Encoding`, `Trailer`,
//! and `X-HTTP-Method-Override`.
//!
//! Nothing here fails with an error: a value that does not parse is `None`, and the caller
//! decides what that means. That keeps this module below [`crate::error`].

/// Largest accepted length or offset. Other tus implementations store these as signed 64-bit
/// integers, so larger values could not interoperate.
pub const MAX_NUMBER: u64 = i64::MAX as u64;

/// Strips HTTP optional whitespace (spaces and tabs) from both ends.
pub fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// The members of a comma-separated list field (RFC 9110 §5.6.1), trimmed, empty ones
/// dropped.
pub fn list_members(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(trim_ows).filter(|m| !m.is_empty())
}

/// Tells whether a list field such as `Trailer` names `token` (case-insensitive).
pub fn list_contains(value: &str, token: &str) -> bool {
    list_members(value).any(|m| m.eq_ignore_ascii_case(token))
}

/// The content coding a `Content-Encoding` value applies, or `None` when the body is sent as
/// is (`identity` or an empty value).
pub fn content_coding(value: &str) -> Option<&str> {
    let coding = value.trim();
    (!coding.is_empty() && !coding.eq_ignore_ascii_case("identity")).then_some(coding)
}

/// A scheme a proxy may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// Parses a scheme, quoted or not, in any case; other schemes are `None`.
    pub fn parse(s: &str) -> Option<Scheme> {
        let s = s.trim().trim_matches('"');
        if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

/// What a proxy said about the original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forwarded<'a> {
    /// The scheme the client used.
    pub proto: Option<Scheme>,
    /// The `Host` the client sent, unquoted and not yet validated as an authority.
    pub host: Option<&'a str>,
}

/// Parses `Forwarded` (RFC 7239): the last element, the one the proxy nearest this server
/// appended. Earlier elements come from the client or from proxies further out, and a client
/// can forge them. Unknown parameters are ignored.
pub fn parse_forwarded(value: &str) -> Forwarded<'_> {
    let last = value.rsplit(',').next().unwrap_or("");
    let mut out = Forwarded::default();
    for pair in last.split(';') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let k = k.trim();
        if k.eq_ignore_ascii_case("proto") {
            out.proto = Scheme::parse(v);
        } else if k.eq_ignore_ascii_case("host") {
            out.host = Some(v.trim().trim_matches('"'));
        }
    }
    out
}

/// Parses `X-Forwarded-Proto` and `X-Forwarded-Host` (the last member of each, as for
/// [`parse_forwarded`]); `None` when neither says anything usable.
pub fn parse_x_forwarded<'a>(proto: Option<&str>, host: Option<&'a str>) -> Option<Forwarded<'a>> {
    let last = |v: &'a str| v.rsplit(',').next().unwrap_or("").trim();
    let out = Forwarded {
        proto: proto.and_then(|p| Scheme::parse(p.rsplit(',').next().unwrap_or(""))),
        host: host.map(last).filter(|h| !h.is_empty()),
    };
    (out.proto.is_some() || out.host.is_some()).then_some(out)
}

/// The host part of a `Host` value or URI authority (`name`, `name:port`, `[v6]:port`),
/// lowercased, brackets and a trailing root dot removed. `None` if it is not one.
pub fn host_name(authority: &str) -> Option<String> {
    let a = authority.trim();
    if a.is_empty() || a.contains(['@', '/', ' ', '\t', '?', '#']) {
        return None;
    }
    let host = if let Some(rest) = a.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        v6
    } else {
        let (name, port) = match a.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (a, None),
        };
        // RFC 3986 reg-name, less the sub-delims no DNS name holds.
        let name_byte =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%');
        if port.is_some_and(|p| !is_port(p)) || name.is_empty() || !name.bytes().all(name_byte) {
            return None;
        }
        name
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a host (as [`host_name`] returns it) names this machine's loopback interface
/// wherever it is resolved: `localhost` and its subdomains (RFC 6761: resolvers and browsers
/// answer them with loopback without asking DNS), `127.0.0.0/8`, `::1`. A name that DNS
/// answers is not, even if it answers 127.0.0.1 today: that is what DNS rebinding exploits.
pub fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// What `Sec-Fetch-Site` and `Origin` say about who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// Not from a browser page of another origin: the same origin, a user navigating, or a
    /// client that is not a browser.
    Same,
    /// From a page of another origin.
    Cross,
}

/// Whether a request comes from a page of another origin, as Go's `CrossOriginProtection`
/// decides: `Sec-Fetch-Site` when the browser sends it (all current ones do), else an `Origin`
/// whose host differs from `Host`; no `Origin` at all is not a browser's cross-origin request.
pub fn request_site(
    sec_fetch_site: Option<&str>,
    origin: Option<&str>,
    host: Option<&str>,
) -> Site {
    match sec_fetch_site.map(str::trim) {
        Some(s) if s.eq_ignore_ascii_case("same-origin") || s.eq_ignore_ascii_case("none") => {
            Site::Same
        }
        Some(_) => Site::Cross,
        None => match origin {
            None => Site::Same,
            Some(o) => {
                let origin_host = o.split_once("://").map(|(_, a)| a);
                if origin_host
                    .is_some_and(|a| host.is_some_and(|h| a.eq_ignore_ascii_case(h.trim())))
                {
                    Site::Same
                } else {
                    Site::Cross
                }
            }
        },
    }
}

/// The client address a trusted proxy recorded: the last `for=` of `Forwarded`, else the last
/// member of `X-Forwarded-For`. The last one is the one the proxy nearest this server appended
/// (earlier ones come from the client and may be forged). `None` if it is not an IP address
/// (`unknown`, an obfuscated `_name`).
pub fn forwarded_client(
    forwarded: Option<&str>,
    x_forwarded_for: Option<&str>,
) -> Option<std::net::IpAddr> {
    let node = match forwarded {
        Some(f) => f.split(',').next_back()?.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v)
        })?,
        None => x_forwarded_for?.split(',').next_back()?,
    };
    let node = node.trim().trim_matches('"');
    // "[2001:db8::1]:4711", "192.0.2.43:47011", "2001:db8::1", "192.0.2.43".
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    node.parse()
        .ok()
        .or_else(|| node.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// The methods `X-HTTP-Method-Override` may name.
pub const OVERRIDABLE_METHODS: [&str; 6] = ["PATCH", "DELETE", "HEAD", "GET", "OPTIONS", "POST"];

/// Parses `X-HTTP-Method-Override` (any case, surrounding whitespace ignored): the method's
/// canonical name, or `None` for a method clients may not tunnel.
pub fn parse_method_override(value: &str) -> Option<&'static str> {
    let v = value.trim();
    OVERRIDABLE_METHODS
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarded_client_is_the_last_address_a_proxy_appended() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        assert_eq!(
            forwarded_client(
                Some("for=1.1.1.1, for=\"[2001:db8::1]:4711\";proto=https"),
                None
            ),
            ip("2001:db8::1")
        );
        assert_eq!(
            forwarded_client(Some("for=9.9.9.9;by=x, for=192.0.2.43:47011"), None),
            ip("192.0.2.43")
        );
        assert_eq!(forwarded_client(Some("for=unknown"), None), None);
        assert_eq!(forwarded_client(Some("proto=https"), None), None);
        assert_eq!(
            forwarded_client(None, Some("6.6.6.6, 10.0.0.7 ")),
            ip("10.0.0.7")
        );
        assert_eq!(forwarded_client(None, Some("::1")), ip("::1"));
        assert_eq!(forwarded_client(None, Some("bogus")), None);
        assert_eq!(forwarded_client(None, None), None);
    }

    #[test]
    fn ows_is_spaces_and_tabs_only() {
        assert_eq!(trim_ows(" \t42\t "), "42");
        assert_eq!(trim_ows("\n42"), "\n42");
    }

    #[test]
    fn list_membership_ignores_case_spaces_and_empty_members() {
        assert!(list_contains(
            "Expires, , upload-checksum ",
            "Upload-Checksum"
        ));
        assert!(!list_contains("Upload-Checksums", "Upload-Checksum"));
        assert_eq!(list_members(" a,,b , ").collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn identity_and_empty_codings_are_no_coding() {
        assert_eq!(content_coding(""), None);
        assert_eq!(content_coding(" Identity "), None);
        assert_eq!(content_coding(" gzip"), Some("gzip"));
        assert_eq!(content_coding("gzip, identity"), Some("gzip, identity"));
    }

    #[test]
    fn forwarded_takes_the_element_the_nearest_proxy_appended() {
        let f = parse_forwarded(
            r#"proto=http;host=forged.example, for=1.2.3.4;Proto=HTTPS;host="a.example:8443""#,
        );
        assert_eq!(f.proto, Some(Scheme::Https));
        assert_eq!(f.host, Some("a.example:8443"));
        let f = parse_forwarded("proto=ftp;nonsense;host");
        assert_eq!(f, Forwarded::default());
        // What the client sent first says nothing when the proxy's own element lacks it.
        let f = parse_forwarded("host=forged.example, for=1.2.3.4");
        assert_eq!(f, Forwarded::default());
    }

    #[test]
    fn x_forwarded_needs_something_usable() {
        assert_eq!(parse_x_forwarded(None, None), None);
        assert_eq!(parse_x_forwarded(Some("gopher"), Some("x , ")), None);
        let f = parse_x_forwarded(Some("http, https"), Some("forged.example, a.example")).unwrap();
        assert_eq!(f.proto, Some(Scheme::Https));
        assert_eq!(f.host, Some("a.example"));
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("LocalHost:1080").as_deref(), Some("localhost"));
        assert_eq!(host_name("localhost.").as_deref(), Some("localhost"));
        assert_eq!(host_name("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(host_name("[::1]").as_deref(), Some("::1"));
        assert_eq!(host_name("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_name("a.example:8080").as_deref(), Some("a.example"));
        for bad in [
            "", ":80", "a:b", "a:123456", "u@a", "[::1", "[x]:1", "::1", "a b", "[::1]x", "\"q\"",
            "a,b", "a<b",
        ] {
            assert_eq!(host_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn loopback_hosts_are_names_no_dns_answers() {
        for h in [
            "localhost",
            "app.localhost",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "rebind.example",
            "localhost.example",
            "0.0.0.0",
            "10.0.0.1",
            "::",
            "mylocalhost",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn cross_origin_requests_are_told_by_fetch_metadata_else_by_origin() {
        use Site::*;
        assert_eq!(
            request_site(Some("same-origin"), Some("https://x"), None),
            Same
        );
        assert_eq!(request_site(Some("none"), None, None), Same);
        assert_eq!(request_site(Some("cross-site"), None, Some("a")), Cross);
        assert_eq!(
            request_site(Some("same-site"), Some("https://a"), Some("a")),
            Cross
        );
        assert_eq!(request_site(None, None, Some("a")), Same);
        assert_eq!(request_site(None, Some("http://a:1"), Some("A:1")), Same);
        assert_eq!(request_site(None, Some("http://a:1"), Some("a:2")), Cross);
        assert_eq!(request_site(None, Some("null"), Some("a")), Cross);
    }

    #[test]
    fn method_override_names_only_tunnelable_methods() {
        assert_eq!(parse_method_override(" patch "), Some("PATCH"));
        assert_eq!(parse_method_override("PUT"), None);
        assert_eq!(parse_method_override(""), None);
    }
}
