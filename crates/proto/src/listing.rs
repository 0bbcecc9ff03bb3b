//! The machine-readable listing of a shared directory (`GET /share/dir/` with
//! `Accept: application/json`), which `ferry download -r` walks; and the content negotiation
//! that picks it over the HTML page.

/// Format version of [`Listing`]; a reader refuses a newer one.
pub const LISTING_VERSION: u32 = 1;

/// Media type of a [`Listing`].
pub const LISTING_TYPE: &str = "application/json";

/// One directory's entries, sorted by name.
#[cfg(feature = "serde")]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listing {
    /// [`LISTING_VERSION`].
    pub version: u32,
    /// What the directory holds that a request could fetch (no dotfiles unless shared, no
    /// link that leads out of the share or nowhere, no special files).
    pub entries: Vec<Entry>,
}

/// A file or subdirectory.
#[cfg(feature = "serde")]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The name as text (a name that is not UTF-8 is shown with replacement characters;
    /// `href` is exact).
    pub name: String,
    /// `file` or `dir`.
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Bytes, for a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The entry's URL relative to the listing's (percent-encoded; a directory's ends in `/`).
    pub href: String,
}

/// What an [`Entry`] is.
#[cfg(feature = "serde")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// Whether an `Accept` field asks for JSON rather than a page: `application/json` acceptable
/// (q > 0), and HTML not preferred to it. Browsers send `text/html` first; scripts and
/// `ferry download -r` send `application/json`.
pub fn wants_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let (mut json, mut html) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/json" => json = json.max(q),
            "text/html" => html = html.max(q),
            _ => {}
        }
    }
    json > 0.0 && json >= html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_only_when_asked_for_and_not_outranked_by_html() {
        assert!(!wants_json(None));
        assert!(wants_json(Some("application/json")));
        assert!(wants_json(Some("application/json, */*;q=0.1")));
        assert!(wants_json(Some("text/html;q=0.5, Application/JSON")));
        assert!(!wants_json(Some(
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )));
        assert!(!wants_json(Some("text/html, application/json;q=0.9")));
        assert!(!wants_json(Some("application/json;q=0")));
        assert!(!wants_json(Some("*/*")));
    }

    #[cfg(feature = "serde")]
    #[test]
    fn the_wire_form() {
        let l = Listing {
            version: LISTING_VERSION,
            entries: vec![
                Entry {
                    name: "a b.bin".into(),
                    kind: EntryKind::File,
                    size: Some(3),
                    href: "a%20b.bin".into(),
                },
                Entry {
                    name: "sub".into(),
                    kind: EntryKind::Dir,
                    size: None,
                    href: "sub/".into(),
                },
            ],
        };
        let text = serde_json::to_string(&l).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"entries":[{"name":"a b.bin","type":"file","size":3,"href":"a%20b.bin"},{"name":"sub","type":"dir","href":"sub/"}]}"#
        );
        assert_eq!(serde_json::from_str::<Listing>(&text).unwrap(), l);
    }
}
