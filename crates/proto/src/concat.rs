//! The tus `Upload-Concat` header: `partial`, or `final;<url> <url> ...`.

use crate::error::{ProtoError, echo};
use crate::http::trim_ows;

/// Most parts a final upload may name.
pub const MAX_PARTS: usize = 10_000;

/// A parsed `Upload-Concat` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concat {
    /// This upload is a part of a future final upload.
    Partial,
    /// This upload is the concatenation of the listed uploads (relative or absolute URLs), in
    /// order.
    Final(Vec<String>),
}

impl Concat {
    /// Parses the header value.
    pub fn parse(value: &str) -> Result<Concat, ProtoError> {
        let v = trim_ows(value);
        if v == "partial" {
            return Ok(Concat::Partial);
        }
        let Some(list) = v.strip_prefix("final;") else {
            return Err(ProtoError::InvalidConcat(format!(
                "expected \"partial\" or \"final;<urls>\", got {:?}",
                echo(v)
            )));
        };
        let urls: Vec<String> = list
            .split([' ', '\t'])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if urls.is_empty() {
            return Err(ProtoError::InvalidConcat("final lists no uploads".into()));
        }
        if urls.len() > MAX_PARTS {
            return Err(ProtoError::InvalidConcat(format!(
                "at most {MAX_PARTS} parts"
            )));
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !u.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ProtoError::InvalidConcat(format!(
                "{:?} is not a URL",
                echo(bad)
            )));
        }
        Ok(Concat::Final(urls))
    }

    /// Formats the header value.
    pub fn format(&self) -> String {
        match self {
            Concat::Partial => "partial".into(),
            Concat::Final(urls) => format!("final;{}", urls.join(" ")),
        }
    }
}

/// Takes the path out of a relative (`/files/x`) or absolute (`http://h/files/x`) URL.
/// Returns `(authority, path)`; authority is `None` for a relative URL.
pub fn split_url(url: &str) -> Option<(Option<&str>, &str)> {
    if url.starts_with('/') {
        return Some((None, url.split(['?', '#']).next()?));
    }
    // Schemes are case-insensitive (RFC 3986 §3.1).
    let (scheme, rest) = url.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let slash = rest.find('/')?;
    let (authority, path) = rest.split_at(slash);
    // Userinfo never names an upload of a server (RFC 9110 §4.2.4 deprecates it in http URLs).
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some((Some(authority), path.split(['?', '#']).next()?))
}

/// How the server that resolves part URLs is reached.
#[derive(Debug, Clone, Copy)]
pub struct PartUrls<'a> {
    /// The path of the upload collection, `{base}/files/`.
    pub files: &'a str,
    /// `--public-url`, if configured (`scheme://host[:port][/prefix]`).
    pub public_url: Option<&'a str>,
    /// Authorities (`host[:port]`) the request itself names: its `Host`, and what a trusted
    /// proxy forwarded.
    pub own: &'a [String],
}

/// What a part URL of `Upload-Concat: final` names, or `None` if not an upload of this server.
/// Accepted: a path `{files}{id}`; `{public_url}{files}{id}`; an absolute URL with the
/// request's own authority and that path; and, when no public URL is configured, that path
/// under any authority: behind a proxy the server cannot know the name clients use, and
/// naming an upload requires its 128-bit id, which is what entitles a client to it.
/// The id itself is not checked here.
pub fn part_path<'u>(url: &'u str, at: PartUrls<'_>) -> Option<&'u str> {
    if let Some(public) = at.public_url {
        let prefix_len = public.len() + at.files.len();
        if url.len() > prefix_len
            && url.is_char_boundary(public.len())
            && url[..public.len()].eq_ignore_ascii_case(public)
            && url[public.len()..].starts_with(at.files)
        {
            return Some(&url[prefix_len..]).filter(|id| !id.contains(['?', '#']));
        }
    }
    let (authority, path) = split_url(url)?;
    let ours = match authority {
        None => true,
        Some(a) => at.public_url.is_none() || at.own.iter().any(|o| o.eq_ignore_ascii_case(a)),
    };
    ours.then(|| path.strip_prefix(at.files)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn part_urls_behind_proxies() {
        let own = ["127.0.0.1:1080".to_string()];
        let direct = PartUrls {
            files: "/files/",
            public_url: None,
            own: &own,
        };
        let public = PartUrls {
            public_url: Some("https://up.example/u"),
            ..direct
        };
        // A path, the request's own authority, and (without a public URL) any authority.
        for url in [
            "/files/x",
            "http://127.0.0.1:1080/files/x",
            "https://proxy.example/files/x",
        ] {
            assert_eq!(part_path(url, direct), Some("x"), "{url}");
        }
        assert_eq!(part_path("https://UP.example/u/files/x", public), Some("x"));
        assert_eq!(
            part_path("HTTP://127.0.0.1:1080/files/x", public),
            Some("x")
        );
        assert_eq!(
            part_path("http://127.0.0.1:1080/files/x", public),
            Some("x")
        );
        assert_eq!(part_path("/files/x", public), Some("x"));
        for url in [
            "https://other.example/files/x",
            "https://up.example/files/x",
            "https://up.example/u/files/",
            "https://up.example/u/files/x?y",
        ] {
            assert_eq!(part_path(url, public), None, "{url}");
        }
        for url in [
            "/other/x",
            "x",
            "ftp://h/files/x",
            "https:///files/x",
            "http://u@h/files/x",
        ] {
            assert_eq!(part_path(url, direct), None, "{url}");
        }
    }

    #[test]
    fn parses() {
        assert_eq!(Concat::parse("partial").unwrap(), Concat::Partial);
        assert_eq!(
            Concat::parse("final;/files/a http://h:1/files/b").unwrap(),
            Concat::Final(vec!["/files/a".into(), "http://h:1/files/b".into()])
        );
        for bad in [
            "",
            "final;",
            "final; ",
            "Partial",
            "final /a",
            "final;/a\u{1}",
        ] {
            assert!(Concat::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn splits_urls() {
        assert_eq!(split_url("/files/a"), Some((None, "/files/a")));
        assert_eq!(
            split_url("https://[::1]:8/files/a?x"),
            Some((Some("[::1]:8"), "/files/a"))
        );
        assert_eq!(split_url("ftp://h/files/a"), None);
        assert_eq!(split_url("http:///files/a"), None);
        assert_eq!(split_url("files/a"), None);
    }

    proptest! {
        #[test]
        fn round_trip(urls in proptest::collection::vec("/[a-z0-9/]{1,20}", 1..5)) {
            let c = Concat::Final(urls);
            prop_assert_eq!(Concat::parse(&c.format()).unwrap(), c);
        }

        #[test]
        fn never_panics(s in ".*") {
            let _ = Concat::parse(&s);
            let _ = split_url(&s);
        }
    }
}
