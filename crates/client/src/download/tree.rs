//! `ferry download -r`: the files below a shared directory (`ferry serve --share`), from its
//! JSON listings (`ferry_proto::listing`), or those of an uploaded directory's manifest
//! (`ferry_proto::manifest`), each with the local path it goes to. What the server
//! names is checked before it becomes a path: one plain segment per entry, never `..`, `/` or
//! a NUL, so a hostile listing cannot write outside the target directory.

use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::response::{classify, network};
use ferry_proto::listing::{EntryKind, LISTING_TYPE, LISTING_VERSION, Listing};
use ferry_proto::manifest::{MANIFEST_VERSION, Manifest, relative_path};
use reqwest::Url;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// Deepest directory level followed (a link to a parent directory would otherwise never end).
pub const MAX_DEPTH: usize = 32;
/// Most files one walk lists.
pub const MAX_FILES: usize = 100_000;
/// Largest listing read, in bytes.
const MAX_LISTING: usize = 64 << 20;

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Its URL.
    pub url: Url,
    /// Where it goes, relative to the target directory.
    pub path: PathBuf,
    /// Its size, as listed.
    pub size: Option<u64>,
}

/// The local name for an entry's `href` (relative, percent-encoded, a directory's ending in
/// `/`), or why it is refused.
pub fn segment(href: &str, kind: EntryKind) -> Result<OsString, String> {
    let raw = match kind {
        EntryKind::Dir => href
            .strip_suffix('/')
            .ok_or_else(|| format!("directory entry {href:?} does not end in /"))?,
        EntryKind::File => href,
    };
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    // No control character either: a name is shown on terminals.
    if bytes.is_empty()
        || bytes == b"."
        || bytes == b".."
        || bytes.contains(&b'/')
        || String::from_utf8_lossy(&bytes)
            .chars()
            .any(char::is_control)
        || raw.contains('?')
        || raw.contains('#')
    {
        return Err(format!(
            "the listing names {href:?}, which is not a plain name"
        ));
    }
    Ok(OsString::from_vec(bytes))
}

/// The top directory's own name (the last segment of `url`'s path), if it has one: the tree is
/// restored under it, as `ferry upload DIR` names uploads `DIR/...`.
pub fn top_name(url: &Url) -> Option<OsString> {
    let last = url.path().trim_end_matches('/').rsplit('/').next()?;
    segment(&format!("{last}/"), EntryKind::Dir).ok()
}

/// Every file below the directory at `url` (which ends in `/`), in listing order, depth first.
pub async fn walk(http: &reqwest::Client, url: &Url) -> Result<Vec<TreeFile>, ClientError> {
    if !url.path().ends_with('/') {
        return Err(ClientError::new(
            ErrorKind::Usage,
            "-r takes the URL of a shared directory, ending in /, or of a manifest",
        ));
    }
    let root = top_name(url).map(PathBuf::from).unwrap_or_default();
    let mut out = Vec::new();
    let mut stack = vec![(url.clone(), root, 0usize)];
    while let Some((dir, at, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(ClientError::new(
                ErrorKind::Refused,
                format!("{dir}: more than {MAX_DEPTH} levels deep (a link loop?)"),
            ));
        }
        let listing = list(http, &dir).await?;
        let mut subdirs = Vec::new();
        for e in listing.entries {
            let name = segment(&e.href, e.kind)
                .map_err(|why| ClientError::new(ErrorKind::Refused, format!("{dir}: {why}")))?;
            // Only below the listing: `a:b` would otherwise parse as a URL of its own.
            let target = dir
                .join(&e.href)
                .ok()
                .filter(|t| t.as_str().starts_with(dir.as_str()))
                .ok_or_else(|| {
                    ClientError::new(
                        ErrorKind::Refused,
                        format!(
                            "{dir}: the listing names {:?}, which is not below it",
                            e.href
                        ),
                    )
                })?;
            match e.kind {
                EntryKind::File => {
                    out.push(TreeFile {
                        url: target,
                        path: at.join(name),
                        size: e.size,
                    });
                    if out.len() > MAX_FILES {
                        return Err(ClientError::new(
                            ErrorKind::Refused,
                            format!("more than {MAX_FILES} files below {url}"),
                        ));
                    }
                }
                EntryKind::Dir => subdirs.push((target, at.join(name), depth + 1)),
            }
        }
        // Depth first, in listing order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// The files of the uploaded directory whose manifest (`ferry upload DIR`) is at `url`, each
/// with the path it goes to (checked: relative, below the target).
pub async fn manifest(http: &reqwest::Client, url: &Url) -> Result<Vec<TreeFile>, ClientError> {
    let refused = |why: String| ClientError::new(ErrorKind::Refused, format!("{url}: {why}"));
    let resp = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| fatal(network("GET", e)))?;
    if !resp.status().is_success() {
        return Err(fatal(classify(resp, "manifest").await));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_LISTING as u64)
    {
        return Err(refused("too large for a manifest".into()));
    }
    let body = read_at_most(resp, MAX_LISTING)
        .await?
        .ok_or_else(|| refused("too large for a manifest".into()))?;
    let m: Manifest = serde_json::from_slice(&body).map_err(|e| {
        refused(format!(
            "not a manifest of `ferry upload DIR` ({e}); -r takes one, or a shared directory's \
             URL ending in /"
        ))
    })?;
    if m.ferry_manifest > MANIFEST_VERSION {
        return Err(refused(format!(
            "manifest version {} is newer than this ferry knows",
            m.ferry_manifest
        )));
    }
    if m.files.len() > MAX_FILES {
        return Err(refused(format!("more than {MAX_FILES} files")));
    }
    if relative_path(&m.name).map_err(refused)?.len() != 1 {
        return Err(refused(format!(
            "the directory name {:?} is not one plain name",
            m.name
        )));
    }
    m.files
        .iter()
        .map(|f| {
            let segments = relative_path(&f.path).map_err(refused)?;
            if segments.len() < 2 || segments[0] != m.name {
                return Err(refused(format!(
                    "{:?} is not below the manifest's directory {:?}",
                    f.path, m.name
                )));
            }
            let path: PathBuf = segments.iter().collect();
            // Only where the manifest itself is: a manifest must not send the run's -H
            // headers (a token) to another host, or make the run fetch from one.
            let file_url = url
                .join(&f.url)
                .ok()
                .filter(|u| u.origin() == url.origin())
                .ok_or_else(|| refused(format!("{:?} is not on the manifest's server", f.url)))?;
            Ok(TreeFile {
                url: file_url,
                path,
                size: Some(f.size),
            })
        })
        .collect()
}

/// The body, unless it is longer than `max` (then `None`, having read no more than that).
async fn read_at_most(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, ClientError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fatal(network("GET", e)))? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn fatal(e: AttemptError) -> ClientError {
    match e {
        AttemptError::Fatal(e) => e,
        AttemptError::Unreachable(why) => ClientError::new(ErrorKind::Unreachable, why),
        AttemptError::Gone => ClientError::new(ErrorKind::Refused, "not found (404)"),
        e => ClientError::new(ErrorKind::Exhausted, e.message()),
    }
}

/// One directory's listing.
async fn list(http: &reqwest::Client, dir: &Url) -> Result<Listing, ClientError> {
    let resp = http
        .get(dir.clone())
        .header(reqwest::header::ACCEPT, LISTING_TYPE)
        .send()
        .await
        .map_err(|e| fatal(network("GET", e)))?;
    if !resp.status().is_success() {
        return Err(fatal(classify(resp, "listing").await));
    }
    let is_json = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with(LISTING_TYPE));
    if !is_json {
        return Err(ClientError::new(
            ErrorKind::Refused,
            format!("{dir} sends no JSON listing: -r needs a `ferry serve --share` directory"),
        ));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_LISTING as u64)
    {
        return Err(ClientError::new(
            ErrorKind::Refused,
            format!("{dir}: listing too large"),
        ));
    }
    let body = read_at_most(resp, MAX_LISTING)
        .await?
        .ok_or_else(|| ClientError::new(ErrorKind::Refused, format!("{dir}: listing too large")))?;
    let listing: Listing = serde_json::from_slice(&body)
        .map_err(|e| ClientError::new(ErrorKind::Refused, format!("{dir}: bad listing: {e}")))?;
    if listing.version > LISTING_VERSION {
        return Err(ClientError::new(
            ErrorKind::Refused,
            format!(
                "{dir}: listing version {} is newer than this ferry knows",
                listing.version
            ),
        ));
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_names_become_one_plain_segment_or_are_refused() {
        assert_eq!(segment("a%20b.bin", EntryKind::File).unwrap(), "a b.bin");
        assert_eq!(segment("sub/", EntryKind::Dir).unwrap(), "sub");
        assert_eq!(
            segment("%FF.bin", EntryKind::File).unwrap(),
            OsString::from_vec(vec![0xff, b'.', b'b', b'i', b'n'])
        );
        for bad in [
            "..",
            "%2e%2e",
            ".",
            "",
            "a%2Fb",
            "a/b",
            "%00",
            "a%1B%5B2Jb",
            "a%0Ab",
            "a%C2%9Bb",
            "x?y",
            "/etc/passwd",
        ] {
            assert!(segment(bad, EntryKind::File).is_err(), "{bad:?}");
        }
        assert!(
            segment("sub", EntryKind::Dir).is_err(),
            "a directory ends in /"
        );
        assert!(segment("../", EntryKind::Dir).is_err());
    }

    #[test]
    fn the_tree_goes_under_the_directorys_own_name() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(top_name(&u("http://h/share/photos/")).unwrap(), "photos");
        assert_eq!(top_name(&u("http://h/share/a%20b/")).unwrap(), "a b");
        assert_eq!(top_name(&u("http://h/")), None);
    }
}
