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
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let slash = rest.find('/')?;
    let (authority, path) = rest.split_at(slash);
    if authority.is_empty() {
        return None;
    }
    Some((Some(authority), path.split(['?', '#']).next()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
