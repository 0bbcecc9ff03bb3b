//! Resumable, segmented, verified downloads from any HTTP/1.1 server with Range.
//!
//! Bytes go to `<dest>.ferry-part`, preallocated, written at their offsets by several
//! connections; the file is renamed into place only once complete and verified. The resume
//! state (URL, size, validators, completed ranges) is saved in batches — data fdatasync'd
//! first, beside the streams, every quarter second at most, and at exit — so saving never
//! stops the transfer, and a crash costs at most what arrived since the last batch.
//!
//! Safe resume: every ranged request of a resumed download carries `If-Range` with the strong
//! ETag (or, when there is none, a Last-Modified date at least a second older than the
//! server's Date); a full 200 answer means the file changed, and the download starts over
//! instead of splicing two versions. With no strong validator, a partial file is only kept if
//! a digest is known to check the result.
//!
//! Streams: one, `-j N`, or chosen by measurement; an idle stream takes half of the largest
//! range still being fetched by another (work stealing).
//!
//! `probe` asks the server about the file, `resume` decides (purely) what of a partial file
//! can be kept, `fetch` runs the streams; this module ties them together and verifies.

mod fetch;
mod probe;
mod resume;
mod stream;
pub mod target;
pub mod tree;

use self::fetch::{Fetch, Plan};
use self::resume::{ResumeDecision, Seen, gaps, merge, resume_decision};
use self::target::{Compared, Existing, Found, Target};
use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::options::{Parallel, Verification};
use crate::progress::{ProgressSink, RateLimiter, human_bytes};
use crate::retry::{self, RetryPolicy, RetryState};
use crate::state::{Loaded, STATE_VERSION, StateDir, Transfer, now_ms, transfer_key};
use ferry_proto::checksum::ChecksumAlgorithm;
use ferry_proto::digest::Digests;
use reqwest::Url;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub use self::probe::{filename_from_disposition, safe_name};
pub use crate::http::download_client as http_client;
pub use crate::state::DownloadRecord;

/// How downloads behave.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Streams.
    pub parallel: Parallel,
    /// Most streams the automatic choice may use (no cap of 16).
    pub max_parallel: usize,
    /// Retry limits.
    pub retry: RetryPolicy,
    /// A request with no progress for this long is abandoned and retried.
    pub stall_timeout: Duration,
    /// Shared bandwidth cap.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Expected SHA-256 (from `--checksum sha256=HEX`).
    pub sha256: Option<[u8; 32]>,
    /// Replace an existing file, and write through a symbolic link (`--force`).
    pub force: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            parallel: Parallel::Auto,
            max_parallel: 64,
            retry: RetryPolicy::default(),
            stall_timeout: Duration::from_secs(30),
            limiter: None,
            sha256: None,
            force: false,
        }
    }
}

/// A finished download.
#[derive(Debug, Clone)]
pub struct DownloadOutcome {
    /// Where the file is.
    pub path: PathBuf,
    /// Size.
    pub bytes: u64,
    /// Wall time of this run.
    pub seconds: f64,
    /// Verification result.
    pub verification: Verification,
    /// Bytes already present when this run started.
    pub resumed_from: u64,
}

/// Where a download goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// What `-o` names: a file, `-` (standard output), a device or FIFO, or a directory (see
    /// [`target::plan`]).
    File(PathBuf),
    /// Into this directory, named by the server's Content-Disposition or the URL.
    Dir(PathBuf),
}

/// Downloads files, resuming from the state directory.
#[derive(Clone)]
pub struct Downloader {
    http: reqwest::Client,
    state: StateDir,
    opts: DownloadOptions,
    progress: Arc<dyn ProgressSink>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader").finish_non_exhaustive()
    }
}

fn local(what: &str) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |e| ClientError::local(what, e)
}

fn refused(r: target::Refusal) -> ClientError {
    ClientError::new(ErrorKind::Usage, r.0)
}

impl Downloader {
    /// A downloader.
    pub fn new(
        http: reqwest::Client,
        state: StateDir,
        opts: DownloadOptions,
        progress: Arc<dyn ProgressSink>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            http,
            state,
            opts,
            progress,
            cancel,
        }
    }

    /// The same downloader reporting to another sink.
    pub fn with_progress(&self, progress: Arc<dyn ProgressSink>) -> Downloader {
        Downloader {
            progress,
            ..self.clone()
        }
    }

    async fn backoff(&self, retry: &mut RetryState, err: AttemptError) -> Result<(), ClientError> {
        retry::wait_or_give_up(retry, err, &*self.progress, &self.cancel).await
    }

    /// Downloads `url` to `dest`, resuming an earlier run.
    ///
    /// A file that changes on the server during the download (a 200 or 412 answer to a
    /// conditional range) is started over from scratch, never spliced; one that keeps
    /// changing is reported after a few restarts.
    pub async fn download(
        &self,
        url: &Url,
        dest: &Destination,
    ) -> Result<DownloadOutcome, ClientError> {
        const RESTARTS: u32 = 3;
        let mut restarts = 0;
        loop {
            match self.download_once(url, dest).await {
                Err(e) if e.kind == ErrorKind::FileChanged && restarts < RESTARTS => {
                    restarts += 1;
                    self.progress.finish();
                    self.progress.note(&format!(
                        "{url}: the file changed on the server while downloading; starting over"
                    ));
                }
                Err(e) if e.kind == ErrorKind::FileChanged => {
                    return Err(ClientError::new(
                        ErrorKind::FileChanged,
                        format!(
                            "the file kept changing on the server while downloading \
                             ({restarts} restarts); try again later"
                        ),
                    ));
                }
                r => return r,
            }
        }
    }

    /// Whether an earlier run left a record of downloading `url` to `first`: into a file, that
    /// file's record; into a directory (the name comes from the server), any record of `url`
    /// there.
    fn earlier_run_of(&self, url: &Url, first: &Target) -> bool {
        let Ok(cwd) = std::env::current_dir() else {
            return false;
        };
        match first {
            Target::File { path, .. } => matches!(
                self.state
                    .load(&transfer_key("download", url.as_str(), &cwd.join(path))),
                Ok(Loaded::Found(_))
            ),
            Target::IntoDir(dir) => {
                let dir = cwd.join(dir);
                self.state.list().unwrap_or_default().iter().any(|(_, l)| {
                    matches!(l, Loaded::Found(Transfer::Download(d))
                        if d.url == url.as_str() && d.dest.parent() == Some(dir.as_path()))
                })
            }
            _ => false,
        }
    }

    async fn download_once(
        &self,
        url: &Url,
        dest: &Destination,
    ) -> Result<DownloadOutcome, ClientError> {
        let started = Instant::now();
        // Where the bytes go is decided before any is transferred.
        let first = match dest {
            Destination::File(p) => {
                let found = target::inspect(p).map_err(local(&p.display().to_string()))?;
                target::plan(p, found, self.opts.force).map_err(refused)?
            }
            Destination::Dir(d) => Target::IntoDir(d.clone()),
        };
        let mut retry = RetryState::new(self.opts.retry, Instant::now());
        // An earlier run's record: the transfer began then, so an unreachable server is one
        // restarting.
        if self.earlier_run_of(url, &first) {
            retry.begin();
        }
        let probe = self.probe(url, &mut retry).await?;
        retry.begin();
        let Some(size) = probe.size else {
            return Err(ClientError::new(
                ErrorKind::Refused,
                "the server does not say how large the file is",
            ));
        };
        let expected = self
            .opts
            .sha256
            .map(|d| (ChecksumAlgorithm::Sha256, d.to_vec()))
            .or_else(|| probe.digest.clone());
        let (dest, replace) = match first {
            Target::File { path, replace } => (path, replace),
            Target::IntoDir(d) => {
                let path = d.join(name_for(url, &probe));
                let found = target::inspect(&path).map_err(local(&path.display().to_string()))?;
                match target::plan(&path, found, self.opts.force).map_err(refused)? {
                    Target::File { path, replace } => (path, replace),
                    Target::IntoDir(_) => {
                        return Err(ClientError::new(
                            ErrorKind::Usage,
                            format!("{} is a directory: not replaced", path.display()),
                        ));
                    }
                    to => {
                        return self
                            .download_stream(url, &probe, size, to, expected, &mut retry)
                            .await;
                    }
                }
            }
            to => {
                return self
                    .download_stream(url, &probe, size, to, expected, &mut retry)
                    .await;
            }
        };
        let dest = if dest.is_absolute() {
            dest
        } else {
            std::env::current_dir().map_err(local("cwd"))?.join(dest)
        };
        // A file already there is the server's (nothing to do) or is replaced only if forced.
        if let Found::File(len) =
            target::inspect(&dest).map_err(local(&dest.display().to_string()))?
        {
            let compared = compare(&dest, len, size, expected.as_ref())
                .await
                .map_err(local(&dest.display().to_string()))?;
            if target::existing_file(&dest, compared, self.opts.force).map_err(refused)?
                == Existing::AlreadyComplete
            {
                let key = transfer_key("download", url.as_str(), &dest);
                let _ = forget_download(&self.state, &key);
                self.progress
                    .note(&format!("{}: already complete", dest.display()));
                self.progress.start(&dest.display().to_string(), size, size);
                self.progress.finish();
                return Ok(DownloadOutcome {
                    path: dest,
                    bytes: size,
                    seconds: started.elapsed().as_secs_f64(),
                    verification: Verification::Verified,
                    resumed_from: size,
                });
            }
        }
        let partial = PathBuf::from(format!("{}.ferry-part", dest.display()));
        let key = transfer_key("download", url.as_str(), &dest);
        let display = dest.display().to_string();
        let expected_digests: Digests = expected.iter().cloned().collect();

        // Resume only what provably belongs to the same version of the file.
        let etag = probe.etag.as_ref().map(ToString::to_string);
        let mut done = Vec::new();
        let mut validator = etag.clone().or_else(|| probe.last_modified.clone());
        if let Loaded::Found(Transfer::Download(rec)) =
            self.state.load(&key).map_err(local("reading the state"))?
            && partial.exists()
        {
            let now = Seen {
                size,
                etag: etag.as_deref(),
                last_modified: probe.last_modified.as_deref(),
                digest: &expected_digests,
            };
            match resume_decision(&rec, &now) {
                ResumeDecision::Resume { validator: v } => {
                    done = rec.done;
                    validator = v;
                }
                ResumeDecision::StartOver(why) => self.progress.note(&why.note(&display)),
            }
        }
        if !probe.ranges {
            self.progress.note(&format!(
                "{display}: the server does not support ranges: one stream, no resume"
            ));
            done.clear();
        }
        let resumed_from: u64 = done.iter().map(|(s, e)| e - s).sum();
        if let Some(parent) = partial.parent() {
            std::fs::create_dir_all(parent).map_err(local("creating the directory"))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(done.is_empty())
            .open(&partial)
            .map_err(local(&partial.display().to_string()))?;
        if done.is_empty() && size > 0 {
            // Reserve the space now: a full disk shows up before the transfer, not in it.
            if rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size).is_err() {
                file.set_len(size).map_err(local("preallocating"))?;
            }
        }
        let file = Arc::new(file);
        let mut rec = DownloadRecord {
            version: STATE_VERSION,
            key: key.clone(),
            url: url.to_string(),
            dest: dest.clone(),
            partial: partial.clone(),
            size,
            etag,
            last_modified: probe.last_modified.clone(),
            digests: expected_digests,
            done: done.clone(),
            created_ms: now_ms(),
        };
        if probe.ranges {
            self.save(&rec)?;
        }
        self.progress.start(&display, size, resumed_from);
        if resumed_from > 0 {
            self.progress.note(&format!(
                "resuming {display} at {} of {}",
                human_bytes(resumed_from),
                human_bytes(size)
            ));
        }

        let plan = Arc::new(Plan::new(size, done.clone()));
        let todo = gaps(&merge(done), size);
        let fetch = Fetch {
            url,
            file: &file,
            plan: &plan,
            validator: validator.as_deref(),
        };
        let result = if !probe.ranges {
            self.fetch_whole(&fetch, &mut retry).await
        } else {
            self.fetch_segments(&fetch, todo, &rec).await
        };
        // Whatever happened, record what is safely on disk (noted before the sync) — unless
        // the file changed: then nothing on disk belongs to the current version.
        if matches!(&result, Err(e) if e.kind == ErrorKind::FileChanged) {
            let _ = self.state.remove(&key);
        } else if probe.ranges {
            let done = plan.completed();
            file.sync_data().map_err(local("syncing"))?;
            rec.done = done;
            self.save(&rec)?;
        }
        result?;

        // Verify, then move into place.
        let verification = match &expected {
            Some((algorithm, want)) => {
                let got = digest_file(&file, size, *algorithm)
                    .await
                    .map_err(local("reading back"))?;
                if got.as_slice() != want.as_slice() {
                    let _ = std::fs::remove_file(&partial);
                    let _ = self.state.remove(&key);
                    return Err(ClientError::new(
                        ErrorKind::Verification,
                        format!(
                            "the download does not match the expected {} {} (got {}); nothing \
                             was kept",
                            algorithm.name(),
                            hex::encode(want),
                            hex::encode(&got)
                        ),
                    ));
                }
                Verification::Verified
            }
            None => Verification::NotVerified(
                "the server sent no Repr-Digest and no --checksum was given".into(),
            ),
        };
        file.sync_data().map_err(local("syncing"))?;
        rename_into_place(&partial, &dest, replace)?;
        if let Some(parent) = dest.parent()
            && let Ok(d) = File::open(parent)
        {
            let _ = d.sync_all();
        }
        self.state
            .remove(&key)
            .map_err(local("writing the state"))?;
        self.progress.finish();
        Ok(DownloadOutcome {
            path: dest,
            bytes: size,
            seconds: started.elapsed().as_secs_f64(),
            verification,
            resumed_from,
        })
    }

    fn save(&self, rec: &DownloadRecord) -> Result<(), ClientError> {
        self.state
            .save(&Transfer::Download(rec.clone()))
            .map_err(local("writing the state"))
    }
}

/// The name a download saved into a directory gets: the server's (Content-Disposition), else
/// the URL's last segment, else `download`.
fn name_for(url: &Url, probe: &probe::Probe) -> String {
    let from_url = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .map(|n| {
            String::from_utf8_lossy(&percent_encoding::percent_decode_str(n).collect::<Vec<u8>>())
                .into_owned()
        })
        .and_then(|n| safe_name(&n));
    probe
        .filename
        .clone()
        .or(from_url)
        .unwrap_or_else(|| "download".into())
}

/// Moves the verified partial file to `dest`, never over a file that appeared meanwhile unless
/// `replace` (`renameat2(RENAME_NOREPLACE)`).
fn rename_into_place(partial: &Path, dest: &Path, replace: bool) -> Result<(), ClientError> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    let flags = if replace {
        RenameFlags::empty()
    } else {
        RenameFlags::NOREPLACE
    };
    let moved = match renameat_with(CWD, partial, CWD, dest, flags) {
        // Filesystems without RENAME_NOREPLACE (NFS, some FUSE): link() also fails with
        // EEXIST rather than replace, and then the partial name goes.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if !replace => {
            rustix::fs::link(partial, dest).and_then(|()| rustix::fs::unlink(partial))
        }
        other => other,
    };
    match moved {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => Err(ClientError::new(
            ErrorKind::Usage,
            format!(
                "{} appeared during the download: not replaced; the download is kept as {} \
                 (run again with --force to replace it)",
                dest.display(),
                partial.display()
            ),
        )),
        Err(e) => Err(ClientError::local("renaming into place", e.into())),
    }
}

/// How the file at `path` (`len` bytes) compares with the server's (`size` bytes, `expected`
/// digest).
async fn compare(
    path: &Path,
    len: u64,
    size: u64,
    expected: Option<&(ChecksumAlgorithm, Vec<u8>)>,
) -> std::io::Result<Compared> {
    if len != size {
        return Ok(Compared::Different);
    }
    // Two empty files are the same file (and an empty one has no range to probe its digest
    // with: the server answers 416).
    if size == 0 {
        return Ok(Compared::Same);
    }
    let Some((algorithm, want)) = expected else {
        return Ok(Compared::Unknown);
    };
    let file = Arc::new(File::open(path)?);
    let got = digest_file(&file, size, *algorithm).await?;
    Ok(if got == *want {
        Compared::Same
    } else {
        Compared::Different
    })
}

async fn digest_file(
    file: &Arc<File>,
    size: u64,
    algorithm: ChecksumAlgorithm,
) -> std::io::Result<Vec<u8>> {
    let f = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut h = ferry_proto::checksum::Hasher::new(algorithm);
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < size {
            let n = ((size - at) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], at)?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        Ok(h.finalize())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Drops a saved download and its partial file.
pub fn forget_download(state: &StateDir, key: &str) -> Result<(), ClientError> {
    if let Loaded::Found(Transfer::Download(rec)) =
        state.load(key).map_err(local("reading the state"))?
    {
        let _ = std::fs::remove_file(&rec.partial);
    }
    state.remove(key).map_err(local("writing the state"))
}
