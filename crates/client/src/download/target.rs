//! Where a download's bytes go, decided before a byte is transferred: a stream (`-`, a
//! character device, a FIFO), a directory to save into, or a file saved through a partial file
//! and renamed into place without replacing what is there (unless `--force`).
//!
//! [`plan`] and [`existing_file`] decide; [`inspect`] looks at the path (the only I/O here).

use std::path::{Path, PathBuf};

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing.
    Missing,
    /// A directory (or a link to one).
    Dir,
    /// A regular file of this length.
    File(u64),
    /// A character device or a FIFO (or a link to one), or a link through `/proc/*/fd`
    /// (`/dev/stdout`): written in order, never renamed over.
    Stream,
    /// A symbolic link to a file or to nothing.
    Link {
        /// Where it leads.
        target: PathBuf,
    },
    /// A socket or a block device: nothing to write to.
    Other,
}

/// Where the bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard output.
    Stdout,
    /// A device or FIFO, written in order: no resume across runs.
    Stream(PathBuf),
    /// Saved in this directory under the server's name.
    IntoDir(PathBuf),
    /// Saved as this file.
    File {
        /// The file.
        path: PathBuf,
        /// Whether the final rename may replace a file that is there.
        replace: bool,
    },
}

/// Why a target is refused (the message says what to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Decides where `-o OUTPUT` writes, given what is at OUTPUT.
pub fn plan(output: &Path, found: Found, force: bool) -> Result<Target, Refusal> {
    if output.as_os_str() == "-" {
        return Ok(Target::Stdout);
    }
    let shown = output.display();
    match found {
        Found::Stream => Ok(Target::Stream(output.to_path_buf())),
        Found::Dir => Ok(Target::IntoDir(output.to_path_buf())),
        Found::Missing => Ok(Target::File {
            path: output.to_path_buf(),
            replace: force,
        }),
        // Whether it may be replaced depends on what the server has: see `existing_file`.
        Found::File(_) => Ok(Target::File {
            path: output.to_path_buf(),
            replace: force,
        }),
        Found::Link { target } if force => Ok(Target::File {
            path: target,
            replace: true,
        }),
        Found::Link { target } => Err(Refusal(format!(
            "{shown} is a symbolic link (to {}): not followed; --force writes the file it \
             leads to",
            target.display()
        ))),
        Found::Other => Err(Refusal(format!(
            "{shown} is a socket or a block device: nothing to save a download in"
        ))),
    }
}

/// What an existing local file is, compared with the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compared {
    /// Same size and the same digest.
    Same,
    /// Another size, or the same size and another digest.
    Different,
    /// Same size, and no digest to compare with.
    Unknown,
}

/// What to do about a regular file already at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// It is the server's file already: nothing to transfer (like `wget -nc`).
    AlreadyComplete,
    /// Download and replace it (`--force`).
    Replace,
}

/// Decides about a regular file at `path` that the download would replace.
pub fn existing_file(path: &Path, compared: Compared, force: bool) -> Result<Existing, Refusal> {
    let shown = path.display();
    match (compared, force) {
        (Compared::Same, _) => Ok(Existing::AlreadyComplete),
        (_, true) => Ok(Existing::Replace),
        (Compared::Different, false) => Err(Refusal(format!(
            "{shown} exists and differs from the server's file: not replaced; --force \
             replaces it, or choose another -o"
        ))),
        (Compared::Unknown, false) => Err(Refusal(format!(
            "{shown} exists with the server's size, but the server sends no digest to compare \
             it with: not replaced; --force replaces it, or pass --checksum sha256=HEX"
        ))),
    }
}

/// Looks at `path` without following a final symlink (a link that leads to a directory, a
/// device or a FIFO, or through `/proc/*/fd` like `/dev/stdout`, counts as what it leads to).
pub fn inspect(path: &Path) -> std::io::Result<Found> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(e),
    };
    let kind = |t: std::fs::FileType, len: u64| {
        if t.is_dir() {
            Found::Dir
        } else if t.is_file() {
            Found::File(len)
        } else if t.is_char_device() || t.is_fifo() {
            Found::Stream
        } else {
            Found::Other
        }
    };
    if !meta.file_type().is_symlink() {
        return Ok(kind(meta.file_type(), meta.len()));
    }
    if through_proc_fd(path) {
        return Ok(Found::Stream);
    }
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Ok(kind(m.file_type(), m.len())),
        _ => Ok(Found::Link {
            target: resolved(path)?,
        }),
    }
}

/// Whether following `path`'s links passes through a process's descriptor table
/// (`/dev/stdout -> /proc/self/fd/1`): that names an open descriptor, whatever it holds.
fn through_proc_fd(path: &Path) -> bool {
    let mut at = path.to_path_buf();
    for _ in 0..16 {
        let Ok(next) = std::fs::read_link(&at) else {
            return false;
        };
        let next = match at.parent() {
            Some(dir) if next.is_relative() => dir.join(next),
            _ => next,
        };
        let s = next.to_string_lossy();
        if s.starts_with("/proc/") || s.starts_with("/dev/fd/") {
            return true;
        }
        at = next;
    }
    false
}

/// Where a link to a file (or to nothing) leads: its directory resolved, the last name kept.
fn resolved(link: &Path) -> std::io::Result<PathBuf> {
    let mut at = link.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&at) {
            Ok(next) => {
                at = match at.parent() {
                    Some(dir) if next.is_relative() => dir.join(next),
                    _ => next,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn targets_by_what_is_there() {
        assert_eq!(plan(&p("-"), Found::Missing, false), Ok(Target::Stdout));
        assert_eq!(
            plan(&p("/x/null"), Found::Stream, false),
            Ok(Target::Stream(p("/x/null")))
        );
        assert_eq!(
            plan(&p("d"), Found::Dir, false),
            Ok(Target::IntoDir(p("d")))
        );
        for force in [false, true] {
            assert_eq!(
                plan(&p("f"), Found::Missing, force),
                Ok(Target::File {
                    path: p("f"),
                    replace: force
                })
            );
        }
        let link = Found::Link {
            target: p("/real/f"),
        };
        assert!(
            plan(&p("l"), link.clone(), false)
                .unwrap_err()
                .0
                .contains("--force")
        );
        assert_eq!(
            plan(&p("l"), link, true),
            Ok(Target::File {
                path: p("/real/f"),
                replace: true
            })
        );
        assert!(plan(&p("s"), Found::Other, true).is_err());
    }

    #[test]
    fn an_existing_file_is_kept_unless_forced() {
        let f = p("big.iso");
        for force in [false, true] {
            assert_eq!(
                existing_file(&f, Compared::Same, force),
                Ok(Existing::AlreadyComplete)
            );
        }
        assert!(existing_file(&f, Compared::Different, false).is_err());
        assert!(
            existing_file(&f, Compared::Unknown, false)
                .unwrap_err()
                .0
                .contains("--checksum")
        );
        assert_eq!(
            existing_file(&f, Compared::Different, true),
            Ok(Existing::Replace)
        );
    }

    #[test]
    fn inspection_sees_through_links_to_devices_and_directories() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("f"), b"abc").unwrap();
        std::fs::create_dir(d.join("dir")).unwrap();
        symlink("f", d.join("to-file")).unwrap();
        symlink("dir", d.join("to-dir")).unwrap();
        symlink("nowhere", d.join("dangling")).unwrap();
        symlink("/proc/self/fd/1", d.join("stdout")).unwrap();
        assert_eq!(inspect(&d.join("missing")).unwrap(), Found::Missing);
        assert_eq!(inspect(&d.join("f")).unwrap(), Found::File(3));
        assert_eq!(inspect(&d.join("dir")).unwrap(), Found::Dir);
        assert_eq!(inspect(&d.join("to-dir")).unwrap(), Found::Dir);
        assert_eq!(inspect(&d.join("stdout")).unwrap(), Found::Stream);
        assert_eq!(
            inspect(&d.join("to-file")).unwrap(),
            Found::Link {
                target: d.join("f")
            }
        );
        assert_eq!(
            inspect(&d.join("dangling")).unwrap(),
            Found::Link {
                target: d.join("nowhere")
            }
        );
    }
}
