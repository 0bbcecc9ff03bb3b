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

/// Parses `Forwarded` (RFC 7239): the first element, the one the proxy nearest the client
/// wrote. Unknown parameters are ignored.
pub fn parse_forwarded(value: &str) -> Forwarded<'_> {
    let first = value.split(',').next().unwrap_or("");
    let mut out = Forwarded::default();
    for pair in first.split(';') {
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

/// Parses `X-Forwarded-Proto` and `X-Forwarded-Host` (first member of each); `None` when
/// neither says anything usable.
pub fn parse_x_forwarded<'a>(proto: Option<&str>, host: Option<&'a str>) -> Option<Forwarded<'a>> {
    let first = |v: &'a str| v.split(',').next().unwrap_or("").trim();
    let out = Forwarded {
        proto: proto.and_then(|p| Scheme::parse(p.split(',').next().unwrap_or(""))),
        host: host.map(first).filter(|h| !h.is_empty()),
    };
    (out.proto.is_some() || out.host.is_some()).then_some(out)
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
    fn forwarded_takes_the_first_element() {
        let f = parse_forwarded(r#"for=1.2.3.4;Proto=HTTPS;host="a.example:8443", proto=http"#);
        assert_eq!(f.proto, Some(Scheme::Https));
        assert_eq!(f.host, Some("a.example:8443"));
        let f = parse_forwarded("proto=ftp;nonsense;host");
        assert_eq!(f, Forwarded::default());
    }

    #[test]
    fn x_forwarded_needs_something_usable() {
        assert_eq!(parse_x_forwarded(None, None), None);
        assert_eq!(parse_x_forwarded(Some("gopher"), Some(" , x")), None);
        let f = parse_x_forwarded(Some("https, http"), Some("a.example, b")).unwrap();
        assert_eq!(f.proto, Some(Scheme::Https));
        assert_eq!(f.host, Some("a.example"));
    }

    #[test]
    fn method_override_names_only_tunnelable_methods() {
        assert_eq!(parse_method_override(" patch "), Some("PATCH"));
        assert_eq!(parse_method_override("PUT"), None);
        assert_eq!(parse_method_override(""), None);
    }
}
