//! `--share DIR`: a directory tree published read-only under `{base}/share/`, with listings,
//! ranges and validators.
//!
//! Nothing escapes the directory: the request path is percent-decoded once, `.`/`..`/empty
//! segments and NUL are refused, and the file is opened relative to the shared directory with
//! `openat2(RESOLVE_BENEATH)`, so the kernel itself refuses any path — through `..` or a
//! symlink — that would leave it.
//!
//! Names starting with a dot (`.git`, `.env`, `.ssh`) are neither served nor listed unless
//! `--share-dotfiles`: a directory shared as is often holds them, and they are rarely meant
//! for the world. A listing leaves out symbolic links that could not be served.
//!
//! The strong `ETag` is a version id: a hash of device, inode, size and the nanosecond
//! modification and change times. Replacing a file (rename) changes the inode; rewriting it
//! changes the change time; so a same-size replacement within the same second — which
//! nginx's mtime-seconds+size tag cannot see — changes the tag too.

use crate::AppState;
use crate::error::ApiError;
use crate::ranged::{Representation, respond};
use axum::body::Body;
use ferry_proto::digest::Digests;
use ferry_proto::disposition;
use ferry_proto::range::ETag;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// A published directory.
#[derive(Debug)]
pub struct Share {
    root: File,
    path: PathBuf,
}

impl Share {
    /// Opens the directory to publish.
    pub fn open(path: &std::path::Path) -> std::io::Result<Share> {
        let root = File::open(path)?;
        if !root.metadata()?.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                path.display()
            )));
        }
        Ok(Share {
            root,
            path: path.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// Characters escaped in listing links (everything but unreserved path characters).
const LINK: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not found")
}

/// Turns the raw path after `/share/` into a relative path, or refuses it (a dotfile is
/// "not found" unless `dotfiles`).
fn relative(raw: &str, dotfiles: bool) -> Result<(Vec<u8>, bool), ApiError> {
    let decoded: Vec<u8> = percent_decode_str(raw).collect();
    if decoded.contains(&0) {
        return Err(ApiError::bad_request("NUL in path"));
    }
    let is_dir = decoded.is_empty() || decoded.ends_with(b"/");
    let trimmed = decoded.strip_suffix(b"/").unwrap_or(&decoded);
    if trimmed.is_empty() {
        return Ok((b".".to_vec(), true));
    }
    for seg in trimmed.split(|b| *b == b'/') {
        if seg.is_empty() || seg == b"." || seg == b".." || (!dotfiles && seg.starts_with(b".")) {
            return Err(not_found());
        }
    }
    Ok((trimmed.to_vec(), is_dir))
}

/// Serves GET/HEAD under `/share/`.
pub async fn serve(
    state: Arc<AppState>,
    raw: &str,
    method: &Method,
    headers: &HeaderMap,
    request_path: &str,
) -> Result<Response<Body>, ApiError> {
    let Some(share) = state.share.as_ref() else {
        return Err(not_found());
    };
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "read-only")
            .with_header(header::ALLOW, "GET, HEAD"));
    }
    let dotfiles = state.config.share_dotfiles;
    let (rel, wants_dir) = relative(raw, dotfiles)?;
    let root = share
        .root
        .try_clone()
        .map_err(|e| ApiError::from(ferry_store::StoreError::from(e)))?;
    let opened = {
        let (root, rel) = (root.try_clone(), rel.clone());
        tokio::task::spawn_blocking(move || open_beneath(&root?, &rel, dotfiles))
            .await
            .map_err(|e| ApiError::internal(&e))?
    };
    let (file, meta) = match opened {
        Ok(x) => x,
        // ENOENT, EXDEV (escape attempt refused by the kernel), ELOOP, EACCES: all look the same.
        Err(_) => return Err(not_found()),
    };
    if meta.is_dir() {
        if !wants_dir {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
            if let Ok(v) = HeaderValue::from_str(&format!("{request_path}/")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Ok(r);
        }
        let json = ferry_proto::listing::wants_json(
            headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
        );
        return listing(
            Listed {
                root,
                rel,
                dir: file,
                dotfiles,
            },
            request_path,
            method,
            json,
        )
        .await;
    }
    if !meta.is_file() || wants_dir {
        return Err(not_found());
    }
    let mut h = blake3::Hasher::new();
    for n in [meta.dev(), meta.ino(), meta.size()] {
        h.update(&n.to_le_bytes());
    }
    for n in [
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    ] {
        h.update(&n.to_le_bytes());
    }
    let etag = ETag::strong(format!("s-{}", &h.finalize().to_hex()[..32]));
    let name = request_path
        .rsplit('/')
        .next()
        .map(|n| percent_decode_str(n).collect::<Vec<u8>>());
    let rep = Representation {
        len: meta.size(),
        etag,
        last_modified: Some(
            UNIX_EPOCH
                + Duration::from_secs(meta.mtime().max(0) as u64)
                + Duration::from_nanos(meta.mtime_nsec().max(0) as u64),
        ),
        digests: Digests::new(),
        content_type: HeaderValue::from_static("application/octet-stream"),
        disposition: HeaderValue::from_str(&disposition::attachment(name.as_deref())).ok(),
        // A shared file is read from the disk itself.
        ranges: true,
    };
    let file = Arc::new(file);
    let opener = Box::new(move |s: u64, e: u64| {
        let f = file.clone();
        Box::pin(async move { Ok(ferry_store::local::read_stream(f, s, e)) }) as _
    });
    respond(headers, method, rep, opener).await
}

/// Opens `rel` under `root`, refusing (in the kernel) any path that leaves it, and (unless
/// `dotfiles`) a file that a link leads to through a dot name (`cfg -> .git/config`).
fn open_beneath(
    root: &File,
    rel: &[u8],
    dotfiles: bool,
) -> std::io::Result<(File, std::fs::Metadata)> {
    let fd = rustix::fs::openat2(
        root,
        std::ffi::OsStr::from_bytes(rel),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )?;
    let file = File::from(fd);
    if !dotfiles && reached_through_a_dot_name(root, &file) {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// Whether the path the kernel resolved for `file`, below `root`, has a segment starting with
/// a dot. Fails closed: a path that cannot be read counts as one.
fn reached_through_a_dot_name(root: &File, file: &File) -> bool {
    use std::os::fd::AsRawFd;
    let path = |f: &File| std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()));
    let (Ok(root), Ok(file)) = (path(root), path(file)) else {
        return true;
    };
    file.strip_prefix(&root).map_or(true, |rel| {
        rel.components()
            .any(|c| c.as_os_str().as_bytes().starts_with(b"."))
    })
}

/// A directory to list, and where it is in the share.
struct Listed {
    root: File,
    rel: Vec<u8>,
    dir: File,
    dotfiles: bool,
}

impl Listed {
    /// Name, is-directory and size of each entry a visitor could open; `None` for one it
    /// could not (a dotfile, a link leading out of the share or nowhere).
    fn entry(&self, name: &[u8]) -> Option<(bool, u64)> {
        if !self.dotfiles && name.starts_with(b".") {
            return None;
        }
        let st = rustix::fs::statat(
            &self.dir,
            std::ffi::OsStr::from_bytes(name),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .ok()?;
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        match kind {
            rustix::fs::FileType::Directory => return Some((true, st.st_size as u64)),
            rustix::fs::FileType::RegularFile => return Some((false, st.st_size as u64)),
            rustix::fs::FileType::Symlink => {}
            // FIFOs, sockets, devices: never served.
            _ => return None,
        }
        // A link is listed as what it leads to, if a request for it would be served.
        let mut path = self.rel.clone();
        if path != b"." {
            path.push(b'/');
        } else {
            path.clear();
        }
        path.extend_from_slice(name);
        let (_, meta) = open_beneath(&self.root, &path, self.dotfiles).ok()?;
        (meta.is_dir() || meta.is_file()).then(|| (meta.is_dir(), meta.len()))
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

async fn listing(
    listed: Listed,
    request_path: &str,
    method: &Method,
    json: bool,
) -> Result<Response<Body>, ApiError> {
    let entries =
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<(Vec<u8>, bool, u64)>> {
            let mut out = Vec::new();
            for entry in rustix::fs::Dir::read_from(&listed.dir)? {
                let entry = entry?;
                let name = entry.file_name().to_bytes().to_vec();
                if name == b"." || name == b".." {
                    continue;
                }
                if let Some((is_dir, size)) = listed.entry(&name) {
                    out.push((name, is_dir, size));
                }
            }
            out.sort();
            Ok(out)
        })
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::from(ferry_store::StoreError::from(e)))?;
    let (body, content_type) = if json {
        (listing_json(entries), ferry_proto::listing::LISTING_TYPE)
    } else {
        (
            listing_html(entries, request_path),
            "text/html; charset=utf-8",
        )
    };
    let len = body.len();
    let mut r = Response::new(if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    });
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // One URL, two representations: caches must tell them apart.
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(crate::ranged::CACHE_CONTROL),
    );
    Ok(r)
}

/// The listing for programs (`ferry_proto::listing::Listing`).
fn listing_json(entries: Vec<(Vec<u8>, bool, u64)>) -> String {
    use ferry_proto::listing::{Entry, EntryKind, LISTING_VERSION, Listing};
    let entries = entries
        .into_iter()
        .map(|(name, is_dir, size)| {
            let mut href: String = percent_encoding::percent_encode(&name, LINK).to_string();
            if is_dir {
                href.push('/');
            }
            Entry {
                name: String::from_utf8_lossy(&name).into_owned(),
                kind: if is_dir {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                },
                size: (!is_dir).then_some(size),
                href,
            }
        })
        .collect();
    let listing = Listing {
        version: LISTING_VERSION,
        entries,
    };
    serde_json::to_string(&listing).unwrap_or_default()
}

/// The listing for people.
fn listing_html(entries: Vec<(Vec<u8>, bool, u64)>, request_path: &str) -> String {
    let title = html_escape(&String::from_utf8_lossy(
        &percent_decode_str(request_path).collect::<Vec<u8>>(),
    ));
    let mut html = format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<h1>{title}</h1>\n<ul>\n"
    );
    for (name, is_dir, size) in entries {
        let shown = String::from_utf8_lossy(&name).into_owned();
        let mut link: String = percent_encoding::percent_encode(&name, LINK).to_string();
        let mut label = html_escape(&shown);
        if is_dir {
            link.push('/');
            label.push('/');
            html.push_str(&format!("<li><a href=\"{link}\">{label}</a></li>\n"));
        } else {
            html.push_str(&format!("<li><a href=\"{link}\">{label}</a> {size}</li>\n"));
        }
    }
    html.push_str("</ul>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        assert_eq!(relative("", false).unwrap(), (b".".to_vec(), true));
        assert_eq!(
            relative("a/b.txt", false).unwrap(),
            (b"a/b.txt".to_vec(), false)
        );
        assert_eq!(relative("a/", false).unwrap(), (b"a".to_vec(), true));
        assert_eq!(relative("a%20b", false).unwrap().0, b"a b".to_vec());
        assert_eq!(
            relative("a/.git/config", true).unwrap().0,
            b"a/.git/config".to_vec()
        );
        for hidden in [".git/config", "a/.env", "%2Essh/id", "a/.b/"] {
            assert!(relative(hidden, false).is_err(), "{hidden:?}");
        }
        for bad in [
            "..",
            "a/../b",
            "%2e%2e/x",
            "a//b",
            "./a",
            "a/%2E",
            "%00",
            "a%2f..%2fb",
        ] {
            assert!(relative(bad, true).is_err(), "{bad:?}");
        }
    }
}
