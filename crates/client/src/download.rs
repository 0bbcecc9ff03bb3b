//! Resumable, segmented, verified downloads from any HTTP/1.1 server with Range.
//!
//! Bytes go to `<dest>.ferry-part`, preallocated, written at their offsets by several
//! connections; the file is renamed into place only once complete and verified. The resume
//! state (URL, size, validators, completed ranges) is saved in batches — data fdatasync'd
//! first, beside the streams, every [`SAVE_EVERY`] at most, and at exit — so saving never
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

use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::parallel::{ParallelBounds, ParallelismController};
use crate::progress::{ProgressSink, RateLimiter};
use crate::retry::{RetryPolicy, RetryState};
use crate::state::{Loaded, STATE_VERSION, StateDir, Transfer, transfer_key};
use crate::tus::{classify, network};
use crate::upload::{Parallel, Verification};
use ferry_proto::checksum::ChecksumAlgorithm;
use ferry_proto::digest::parse_digest_field;
use ferry_proto::range::{ETag, parse_content_range};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use reqwest::header::{
    CONTENT_DISPOSITION, CONTENT_RANGE, DATE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE,
};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the stream count is reconsidered (`-j auto`) and progress shown.
const WINDOW: Duration = Duration::from_millis(250);

/// `-j auto` starts a large file with this many streams (a small one with one per
/// [`AUTO_BYTES_PER_STREAM`]), then the controller adds or takes back streams by goodput.
/// Growing from one stream, a fast transfer was over before the controller had seen enough
/// windows to add any: on loopback (2 cores) one stream made ~0.7 GB/s, four ~0.9–1 GB/s.
const AUTO_INITIAL_STREAMS: usize = 4;

/// See [`AUTO_INITIAL_STREAMS`].
const AUTO_BYTES_PER_STREAM: u64 = 16 << 20;

/// Bytes a stream gathers before writing them in one go.
const WRITE_BATCH: u64 = 512 * 1024;

/// Longest a gathered chunk waits before it is written.
const BATCH_AGE: Duration = Duration::from_millis(50);

/// How often the resume state is saved (data synced first; a save waits for the previous one
/// to finish). Frequent syncs also keep the disk writing while data arrives, instead of
/// leaving a second of it for the final fdatasync before the rename.
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// A resumable download's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRecord {
    /// Record format version.
    pub version: u32,
    /// The key.
    pub key: String,
    /// Source URL.
    pub url: String,
    /// Final path.
    pub dest: PathBuf,
    /// Where bytes go until complete.
    pub partial: PathBuf,
    /// Total size.
    pub size: u64,
    /// Strong ETag when the download started.
    pub etag: Option<String>,
    /// Last-Modified when the download started.
    pub last_modified: Option<String>,
    /// SHA-256 (hex) the result must have, if known (Repr-Digest or --checksum).
    pub sha256: Option<String>,
    /// BLAKE3 (hex) the result must have, if that is the digest the server sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// CRC-64/NVME (hex) the result must have, if that is the digest the server sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
    /// Byte ranges `[start, end)` on disk and synced.
    pub done: Vec<(u64, u64)>,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
}

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
    /// Exactly this file.
    File(PathBuf),
    /// Into this directory, named by the server's Content-Disposition or the URL.
    Dir(PathBuf),
}

/// What the server says about the resource.
#[derive(Debug, Clone)]
struct Probe {
    size: Option<u64>,
    ranges: bool,
    etag: Option<ETag>,
    last_modified: Option<String>,
    /// From `Repr-Digest`: the cheapest to check of CRC-64/NVME, BLAKE3 and SHA-256.
    digest: Option<(ChecksumAlgorithm, Vec<u8>)>,
    filename: Option<String>,
}

/// The digest a download must have, as the record's (sha256, blake3, crc64nvme) hex fields.
type DigestFields = (Option<String>, Option<String>, Option<String>);

fn digest_fields(d: Option<&(ChecksumAlgorithm, Vec<u8>)>) -> DigestFields {
    match d {
        Some((ChecksumAlgorithm::Crc64Nvme, b)) => (None, None, Some(hex(b))),
        Some((ChecksumAlgorithm::Blake3, b)) => (None, Some(hex(b)), None),
        Some((_, b)) => (Some(hex(b)), None, None),
        None => (None, None, None),
    }
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

/// The HTTP client for downloads.
///
/// Unlike the upload client it has no whole-request timeout: reqwest's `timeout` is a deadline
/// for the request *and its body*, so with it every ranged GET that streams for longer than
/// `--stall-timeout` (any large segment, or any segment under `--limit-rate`) was cut and
/// retried although data kept flowing. Stalls are detected per request from the last byte
/// received (see `stream_into`); the read timeout, a little longer, is only a backstop.
pub fn http_client(
    connect_timeout: Duration,
    stall_timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    crate::upload::build_client(
        crate::upload::client_builder(connect_timeout)
            .read_timeout(stall_timeout.saturating_mul(2)),
    )
}

fn local(what: &str) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |e| ClientError::local(what, e)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sorted, merged `[start, end)` ranges.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|(s, e)| s < e);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The gaps of `done` within `[0, size)`.
fn gaps(done: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(s, e) in done {
        if s > at {
            out.push((at, s.min(size)));
        }
        at = at.max(e);
    }
    if at < size {
        out.push((at, size));
    }
    out
}

/// A range one stream is fetching: it writes from `pos` up to `end`; a thief may lower `end`.
struct Slot {
    start: u64,
    pos: AtomicU64,
    end: AtomicU64,
}

struct Plan {
    /// The file's size.
    size: u64,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Ranges nobody has taken yet.
    queue: Mutex<Vec<(u64, u64)>>,
    done_before: Vec<(u64, u64)>,
}

impl Plan {
    /// Next range for an idle stream: an untaken gap, or half of the largest range in flight.
    fn take(&self, min_steal: u64) -> Option<Arc<Slot>> {
        if let Some((s, e)) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Some(self.add(s, e));
        }
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let victim = slots
            .iter()
            .max_by_key(|s| {
                s.end
                    .load(Ordering::Acquire)
                    .saturating_sub(s.pos.load(Ordering::Acquire))
            })?
            .clone();
        drop(slots);
        let pos = victim.pos.load(Ordering::Acquire);
        let end = victim.end.load(Ordering::Acquire);
        if end.saturating_sub(pos) < 2 * min_steal {
            return None;
        }
        let mid = pos + (end - pos) / 2;
        if victim
            .end
            .compare_exchange(end, mid, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        // The victim now stops at `mid`, or after the write it has in hand if that already
        // crossed it; from here on `[mid, end)` is the thief's alone, so it must be taken even
        // then (giving up here used to leave it to nobody: a hole in a "complete" file).
        // Bytes below the victim's `pos` are on disk already and need not be fetched again.
        let from = victim.pos.load(Ordering::Acquire).clamp(mid, end);
        Some(self.add(from, end))
    }

    fn add(&self, s: u64, e: u64) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            start: s,
            pos: AtomicU64::new(s),
            end: AtomicU64::new(e),
        });
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot.clone());
        slot
    }

    /// Everything on disk: earlier runs plus what every stream has written.
    fn completed(&self) -> Vec<(u64, u64)> {
        let mut v = self.done_before.clone();
        for s in self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            v.push((s.start, s.pos.load(Ordering::Acquire)));
        }
        merge(v)
    }

    fn total(&self) -> u64 {
        self.completed().iter().map(|(s, e)| e - s).sum()
    }
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
        crate::retry::wait_or_give_up(retry, err, &*self.progress, &self.cancel).await
    }

    async fn probe(&self, url: &Url, retry: &mut RetryState) -> Result<Probe, ClientError> {
        loop {
            let sent = self
                .http
                .get(url.clone())
                .header(RANGE, "bytes=0-0")
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.backoff(retry, network("GET", e)).await?;
                    continue;
                }
            };
            let status = resp.status();
            if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
                if status == StatusCode::RANGE_NOT_SATISFIABLE {
                    // An empty file.
                    return Ok(Probe {
                        size: Some(0),
                        ranges: true,
                        etag: None,
                        last_modified: None,
                        digest: None,
                        filename: None,
                    });
                }
                match classify(resp, "GET").await {
                    AttemptError::Gone => {
                        return Err(ClientError::new(
                            ErrorKind::Refused,
                            format!("{url}: not found (404)"),
                        ));
                    }
                    e => {
                        self.backoff(retry, e).await?;
                        continue;
                    }
                }
            }
            let h = resp.headers();
            let text = |n| {
                h.get(n)
                    .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            };
            let etag = text(ETAG).and_then(ETag::parse).filter(|t| !t.weak);
            // A Last-Modified is a validator only when strong (RFC 9110 §8.8.2.2): at least a
            // second older than the response's Date. A more recent one may be shared by two
            // versions written within the same second, and resuming with it in If-Range
            // could splice them, so it is treated as no validator at all.
            let date = text(DATE).and_then(|d| httpdate::parse_http_date(d).ok());
            let last_modified = text(LAST_MODIFIED)
                .filter(|lm| {
                    httpdate::parse_http_date(lm).is_ok_and(|lm| {
                        date.and_then(|d| d.duration_since(lm).ok())
                            .is_some_and(|age| age >= Duration::from_secs(1))
                    })
                })
                .map(str::to_string);
            let fields = text(reqwest::header::HeaderName::from_static("repr-digest"))
                .and_then(|v| parse_digest_field(v).ok())
                .unwrap_or_default();
            let find = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, d)| d.clone())
            };
            let digest = ferry_proto::digest::WHOLE_DIGESTS
                .into_iter()
                .find_map(|(k, a)| {
                    find(k)
                        .filter(|d| d.len() == a.digest_len())
                        .map(|d| (a, d))
                });
            let filename = text(CONTENT_DISPOSITION).and_then(filename_from_disposition);
            let (size, ranges) = if status == StatusCode::PARTIAL_CONTENT {
                let cr = text(CONTENT_RANGE).and_then(|v| parse_content_range(v).ok());
                (cr.and_then(|c| c.len), true)
            } else {
                (resp.content_length(), false)
            };
            return Ok(Probe {
                size,
                ranges,
                etag,
                last_modified,
                digest,
                filename,
            });
        }
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
                            "{url}: the file kept changing on the server while downloading \
                             ({restarts} restarts); try again later"
                        ),
                    ));
                }
                r => return r,
            }
        }
    }

    async fn download_once(
        &self,
        url: &Url,
        dest: &Destination,
    ) -> Result<DownloadOutcome, ClientError> {
        let started = Instant::now();
        let mut retry = RetryState::new(self.opts.retry, Instant::now());
        let probe = self.probe(url, &mut retry).await?;
        let Some(size) = probe.size else {
            return Err(ClientError::new(
                ErrorKind::Refused,
                format!("{url}: the server does not say how large the file is"),
            ));
        };
        let dest = match dest {
            Destination::File(p) => p.clone(),
            Destination::Dir(d) => {
                let from_url = url
                    .path_segments()
                    .and_then(|mut s| s.next_back())
                    .map(|n| {
                        String::from_utf8_lossy(
                            &percent_encoding::percent_decode_str(n).collect::<Vec<u8>>(),
                        )
                        .into_owned()
                    })
                    .and_then(|n| safe_name(&n));
                d.join(
                    probe
                        .filename
                        .clone()
                        .or(from_url)
                        .unwrap_or_else(|| "download".into()),
                )
            }
        };
        let dest = if dest.is_absolute() {
            dest
        } else {
            std::env::current_dir().map_err(local("cwd"))?.join(dest)
        };
        let partial = PathBuf::from(format!("{}.ferry-part", dest.display()));
        let key = transfer_key("download", url.as_str(), &dest);
        let display = dest.display().to_string();
        let expected = self
            .opts
            .sha256
            .map(|d| (ChecksumAlgorithm::Sha256, d.to_vec()))
            .or_else(|| probe.digest.clone());
        let expected_fields = digest_fields(expected.as_ref());

        // Resume only what provably belongs to the same version of the file.
        let mut done = Vec::new();
        let mut validator: Option<String> = probe
            .etag
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| probe.last_modified.clone());
        match self.state.load(&key).map_err(local("reading the state"))? {
            Loaded::Found(Transfer::Download(rec)) if partial.exists() => {
                let same_tag =
                    rec.etag.is_some() && rec.etag == probe.etag.as_ref().map(ToString::to_string);
                let same_date = rec.etag.is_none()
                    && rec.last_modified.is_some()
                    && rec.last_modified == probe.last_modified;
                let recorded = (
                    rec.sha256.clone(),
                    rec.blake3.clone(),
                    rec.crc64nvme.clone(),
                );
                let has_digest =
                    rec.sha256.is_some() || rec.blake3.is_some() || rec.crc64nvme.is_some();
                let digest_known = has_digest && recorded == expected_fields;
                if rec.size != size {
                    self.progress.note(&format!(
                        "{display}: the file changed on the server (size); starting over"
                    ));
                } else if same_tag || same_date {
                    done = rec.done.clone();
                    validator = rec.etag.clone().or(rec.last_modified.clone());
                } else if rec.etag.is_none() && rec.last_modified.is_none() && digest_known {
                    // No validator, but the digest will catch a changed file.
                    done = rec.done.clone();
                    validator = None;
                } else if rec.etag.is_none()
                    && rec.last_modified.is_none()
                    && has_digest
                    && expected.is_some()
                {
                    // Only a digest to go by, and it is another one now (this used to be
                    // reported as "no validator and no digest").
                    self.progress.note(&format!(
                        "{display}: the file changed on the server (another digest); starting over"
                    ));
                } else if rec.etag.is_none() && rec.last_modified.is_none() {
                    self.progress.note(&format!(
                        "{display}: the server gives no strong validator (an ETag, or a Last-Modified at least a second old) and no digest, so the partial file cannot be trusted; starting over"
                    ));
                } else {
                    self.progress.note(&format!(
                        "{display}: the file changed on the server; starting over"
                    ));
                }
            }
            _ => {}
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
            etag: probe.etag.as_ref().map(ToString::to_string),
            last_modified: probe.last_modified.clone(),
            sha256: expected_fields.0.clone(),
            blake3: expected_fields.1.clone(),
            crc64nvme: expected_fields.2.clone(),
            done: done.clone(),
            created_ms: now_ms(),
        };
        if probe.ranges {
            self.save(&rec)?;
        }
        self.progress.start(&display, size, resumed_from);
        if resumed_from > 0 {
            self.progress.note(&format!(
                "resuming {display} at {resumed_from} of {size} bytes"
            ));
        }

        let plan = Arc::new(Plan {
            size,
            slots: Mutex::new(Vec::new()),
            queue: Mutex::new(Vec::new()),
            done_before: done.clone(),
        });
        let todo = gaps(&merge(done), size);
        let result = if !probe.ranges {
            self.fetch_whole(url, &file, size, &plan, &mut retry).await
        } else {
            self.fetch_segments(url, &file, size, todo, &plan, validator.as_deref(), &rec)
                .await
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
                            "{display}: the download does not match the expected {} {} (got {}); nothing was kept",
                            algorithm.name(),
                            hex(want),
                            hex(&got)
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
        std::fs::rename(&partial, &dest).map_err(local("renaming into place"))?;
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

    /// No range support: one plain GET, start to end.
    async fn fetch_whole(
        &self,
        url: &Url,
        file: &Arc<File>,
        size: u64,
        plan: &Plan,
        retry: &mut RetryState,
    ) -> Result<(), ClientError> {
        let slot = plan.add(0, size);
        loop {
            slot.pos.store(0, Ordering::Release);
            match self.stream_into(url, file, &slot, size, None, false).await {
                Ok(()) => return Ok(()),
                Err(e) => self.backoff(retry, e).await?,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_segments(
        &self,
        url: &Url,
        file: &Arc<File>,
        size: u64,
        todo: Vec<(u64, u64)>,
        plan: &Arc<Plan>,
        validator: Option<&str>,
        rec: &DownloadRecord,
    ) -> Result<(), ClientError> {
        let fixed = match self.opts.parallel {
            Parallel::Fixed(n) => Some(n.max(1)),
            Parallel::Auto => None,
        };
        // Initial split: the gaps, cut so that each starting stream has one.
        let max = fixed.unwrap_or(self.opts.max_parallel).max(1);
        let start_streams = fixed
            .unwrap_or_else(|| {
                (size / AUTO_BYTES_PER_STREAM).clamp(1, AUTO_INITIAL_STREAMS as u64) as usize
            })
            .min(max);
        let mut queue = Vec::new();
        let total_todo: u64 = todo.iter().map(|(s, e)| e - s).sum();
        let piece = total_todo.div_ceil(start_streams as u64).max(1);
        for (s, e) in todo {
            let mut at = s;
            while at < e {
                let end = (at + piece).min(e);
                queue.push((at, end));
                at = end;
            }
        }
        queue.reverse();
        *plan.queue.lock().unwrap_or_else(|p| p.into_inner()) = queue;
        let min_steal = (size / 1024).clamp(256 << 10, 8 << 20);
        let mut controller = ParallelismController::new(ParallelBounds {
            max,
            initial: start_streams,
            ..ParallelBounds::default()
        });
        let target = AtomicUsize::new(start_streams);
        let mut workers = FuturesUnordered::new();
        let mut next = 0usize;
        // The controller measures over short windows: on a fast link a whole file can take
        // a second, and one-second windows left `-j auto` on a single stream for all of it.
        let mut tick = tokio::time::interval(WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last = (Instant::now(), plan.total());
        let mut last_save = Instant::now();
        let mut saving: Option<tokio::task::JoinHandle<Result<(), ClientError>>> = None;
        let result = loop {
            let want = target.load(Ordering::Relaxed);
            while workers.len() < want {
                let Some(slot) = plan.take(min_steal) else {
                    break;
                };
                workers.push(
                    self.segment_worker(url, file, slot, plan, validator, min_steal, next, &target),
                );
                next += 1;
            }
            if workers.is_empty() {
                break Ok(());
            }
            tokio::select! {
                r = workers.next() => {
                    if let Some(Err(e)) = r {
                        break Err(e);
                    }
                }
                _ = tick.tick() => {
                    let now = (Instant::now(), plan.total());
                    let secs = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
                    let goodput = now.1.saturating_sub(last.1) as f64 / secs;
                    last = now;
                    self.progress.position(now.1);
                    if fixed.is_none() {
                        let n = controller.record(goodput);
                        tracing::debug!(streams = n, goodput_mb_s = goodput / 1e6, "download window");
                        target.store(n, Ordering::Relaxed);
                    }
                    // Batch the state about once a second: what is on disk is noted *before*
                    // the data is synced, so the record never claims bytes written after the
                    // sync began. The sync and save run beside the streams: awaited here, they
                    // stopped every stream for as long as the disk took to write a second of
                    // data. (The save also used to need a full second since the previous one,
                    // which the next tick just missed: one save every two seconds.)
                    if last_save.elapsed() + WINDOW / 2 >= SAVE_EVERY
                        && saving.as_ref().is_none_or(|h| h.is_finished())
                    {
                        if let Some(h) = saving.take()
                            && let Err(e) = join_save(h).await
                        {
                            break Err(e);
                        }
                        let mut rec = rec.clone();
                        rec.done = plan.completed();
                        let (f, state) = (file.clone(), self.state.clone());
                        saving = Some(tokio::task::spawn_blocking(move || {
                            let _ = f.sync_data();
                            state
                                .save(&Transfer::Download(rec))
                                .map_err(local("writing the state"))
                        }));
                        last_save = Instant::now();
                    }
                }
            }
        };
        // An older batch must not land after the caller's final save.
        let saved = match saving.take() {
            Some(h) => join_save(h).await,
            None => Ok(()),
        };
        result.and(saved)
    }

    /// One stream: fetches its slot, then takes more work while its index is in the target.
    #[allow(clippy::too_many_arguments)]
    async fn segment_worker(
        &self,
        url: &Url,
        file: &Arc<File>,
        mut slot: Arc<Slot>,
        plan: &Arc<Plan>,
        validator: Option<&str>,
        min_steal: u64,
        index: usize,
        target: &AtomicUsize,
    ) -> Result<(), ClientError> {
        let mut retry = RetryState::new(self.opts.retry, Instant::now());
        loop {
            let before = slot.pos.load(Ordering::Acquire);
            let result = self
                .stream_into(url, file, &slot, plan.size, validator, true)
                .await;
            // Bytes written count as progress even when the attempt then failed (a cut or
            // stalled connection): the retry budget is for failures *without* progress, so
            // a link that breaks every few MB still finishes.
            if slot.pos.load(Ordering::Acquire) > before {
                retry.progress(Instant::now());
            }
            match result {
                Ok(()) => {
                    if index >= target.load(Ordering::Relaxed) && index > 0 {
                        return Ok(());
                    }
                    match plan.take(min_steal) {
                        Some(s) => slot = s,
                        None => return Ok(()),
                    }
                }
                Err(e) => self.backoff(&mut retry, e).await?,
            }
        }
    }

    /// Streams `[slot.pos, slot.end)` into the file. With `ranged`, sends Range (and If-Range
    /// when resuming against a validator); a 200 to a conditional range means the file changed.
    async fn stream_into(
        &self,
        url: &Url,
        file: &Arc<File>,
        slot: &Slot,
        size: u64,
        validator: Option<&str>,
        ranged: bool,
    ) -> Result<(), AttemptError> {
        let pos = slot.pos.load(Ordering::Acquire);
        let end = slot.end.load(Ordering::Acquire);
        if pos >= end {
            return Ok(());
        }
        let mut req = self.http.get(url.clone());
        if ranged {
            req = req.header(RANGE, format!("bytes={pos}-{}", end - 1));
            if let Some(v) = validator {
                req = req.header(IF_RANGE, v);
            }
        }
        let activity = Arc::new(crate::source::Activity::default());
        activity.touch();
        let fetch = async {
            let resp = req.send().await.map_err(|e| network("GET", e))?;
            match resp.status() {
                StatusCode::PARTIAL_CONTENT if ranged => {
                    let cr = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_content_range(v).ok());
                    // A different total length is another version of the file, whatever the
                    // validators say (a server without any cannot say otherwise).
                    if let Some(l) = cr.and_then(|c| c.len)
                        && l != size
                    {
                        return Err(AttemptError::Fatal(changed()));
                    }
                    if cr.is_none_or(|c| c.start != pos) {
                        return Err(AttemptError::retry("the server answered a different range"));
                    }
                }
                StatusCode::OK if !ranged => {}
                StatusCode::OK | StatusCode::PRECONDITION_FAILED => {
                    return Err(AttemptError::Fatal(changed()));
                }
                _ => return Err(classify(resp, "GET").await),
            }
            // Chunks are gathered and written together, WRITE_BATCH at a time: one trip to
            // the blocking pool per network chunk (tens of KB) cost more context switches
            // than the copy itself.
            let mut body = resp.bytes_stream();
            let mut at = pos;
            let mut batch: Vec<bytes::Bytes> = Vec::new();
            let mut batched = 0u64;
            // A batch is also written once it is BATCH_AGE old, chunks or not: on a slow
            // stream it would otherwise sit unwritten (and unsaved) for seconds.
            let mut flush_at: Option<tokio::time::Instant> = None;
            loop {
                let next = match flush_at {
                    Some(t) => tokio::select! {
                        c = body.next() => Some(c),
                        () = tokio::time::sleep_until(t) => None,
                    },
                    None => Some(body.next().await),
                };
                let Some(next) = next else {
                    write_batch(file, &mut batch, &mut at, &mut batched, slot).await?;
                    flush_at = None;
                    continue;
                };
                let chunk = match next {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        // Keep what arrived before the failure.
                        write_batch(file, &mut batch, &mut at, &mut batched, slot).await?;
                        return Err(network("GET body", e));
                    }
                    None => break,
                };
                activity.touch();
                let limit = slot.end.load(Ordering::Acquire);
                let take = (limit.saturating_sub(at + batched) as usize).min(chunk.len());
                if take > 0 {
                    if let Some(l) = &self.opts.limiter {
                        l.acquire(take as u64).await;
                    }
                    batch.push(chunk.slice(..take));
                    batched += take as u64;
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + BATCH_AGE);
                }
                if batched >= WRITE_BATCH || at + batched >= limit {
                    write_batch(file, &mut batch, &mut at, &mut batched, slot).await?;
                    flush_at = None;
                }
                if at >= slot.end.load(Ordering::Acquire) {
                    // Done, or a thief took the rest: drop the connection's remaining bytes.
                    return Ok(());
                }
            }
            write_batch(file, &mut batch, &mut at, &mut batched, slot).await?;
            if at < slot.end.load(Ordering::Acquire) {
                return Err(AttemptError::retry("the connection closed early"));
            }
            Ok(())
        };
        let stall = self.opts.stall_timeout;
        tokio::select! {
            r = fetch => r,
            () = crate::upload::stalled(&activity, stall) => Err(AttemptError::retry(format!("no progress for {}s (stalled connection)", stall.as_secs()))),
            () = self.cancel.cancelled() => Err(AttemptError::Fatal(ClientError::new(ErrorKind::Interrupted, "interrupted; run the same command again to resume"))),
        }
    }
}

/// Writes the gathered chunks at `*at` (off the async threads), then advances `*at` and the
/// slot's position past them.
async fn write_batch(
    file: &Arc<File>,
    batch: &mut Vec<bytes::Bytes>,
    at: &mut u64,
    batched: &mut u64,
    slot: &Slot,
) -> Result<(), AttemptError> {
    if batch.is_empty() {
        return Ok(());
    }
    let (f, chunks, offset) = (file.clone(), std::mem::take(batch), *at);
    tokio::task::spawn_blocking(move || {
        let mut off = offset;
        for c in &chunks {
            f.write_all_at(c, off)?;
            off += c.len() as u64;
        }
        Ok::<(), std::io::Error>(())
    })
    .await
    .map_err(|e| AttemptError::Fatal(ClientError::new(ErrorKind::Local, e.to_string())))?
    .map_err(|e| AttemptError::Fatal(ClientError::local("writing the file", e)))?;
    *at += *batched;
    *batched = 0;
    slot.pos.store(*at, Ordering::Release);
    Ok(())
}

/// Waits for a background state save.
async fn join_save(h: tokio::task::JoinHandle<Result<(), ClientError>>) -> Result<(), ClientError> {
    h.await
        .map_err(|e| ClientError::new(ErrorKind::Local, format!("saving the state: {e}")))?
}

/// The server's file is another version than the one being downloaded (a 200 or 412 answer to
/// a conditional range, or another length): never spliced; [`Downloader::download`] starts
/// over.
fn changed() -> ClientError {
    ClientError::new(
        ErrorKind::FileChanged,
        "the file changed on the server while downloading",
    )
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

/// The `filename*` or `filename` of a Content-Disposition, reduced to a safe base name.
pub fn filename_from_disposition(v: &str) -> Option<String> {
    let mut plain = None;
    for part in v.split(';') {
        let part = part.trim();
        if let Some(ext) = part.strip_prefix("filename*=") {
            let value = ext.split_once("''").map_or(ext, |(_, v)| v);
            let decoded: Vec<u8> = percent_encoding::percent_decode_str(value).collect();
            return safe_name(&String::from_utf8_lossy(&decoded));
        }
        if let Some(p) = part.strip_prefix("filename=") {
            plain = safe_name(p.trim_matches('"'));
        }
    }
    plain
}

/// A base name that cannot leave the target directory or hide itself.
pub fn safe_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    (!cleaned.is_empty()).then_some(cleaned)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_merge() {
        let d = merge(vec![(10, 20), (0, 5), (5, 8), (18, 30)]);
        assert_eq!(d, vec![(0, 8), (10, 30)]);
        assert_eq!(gaps(&d, 40), vec![(8, 10), (30, 40)]);
        assert_eq!(gaps(&[], 5), vec![(0, 5)]);
        assert_eq!(gaps(&[(0, 5)], 5), vec![]);
    }

    #[test]
    fn stealing_takes_half_of_the_largest_range() {
        let plan = Plan {
            size: 1000,
            slots: Mutex::new(Vec::new()),
            queue: Mutex::new(vec![(0, 1000)]),
            done_before: vec![],
        };
        let a = plan.take(10).unwrap();
        assert_eq!((a.start, a.end.load(Ordering::Relaxed)), (0, 1000));
        a.pos.store(200, Ordering::Relaxed);
        let b = plan.take(10).unwrap();
        assert_eq!(
            a.end.load(Ordering::Relaxed),
            600,
            "victim keeps the first half"
        );
        assert_eq!((b.start, b.end.load(Ordering::Relaxed)), (600, 1000));
        a.pos.store(595, Ordering::Relaxed);
        assert!(plan.take(10).is_some(), "b's range is now the largest");
        assert_eq!(
            plan.completed(),
            vec![(0, 595), (600, 600), (800, 800)]
                .into_iter()
                .filter(|(s, e)| s < e)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn disposition_names_are_made_safe() {
        assert_eq!(
            filename_from_disposition("attachment; filename=\"a.txt\""),
            Some("a.txt".into())
        );
        assert_eq!(
            filename_from_disposition(
                "attachment; filename=\"x\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
            ),
            Some("résumé.pdf".into())
        );
        assert_eq!(safe_name("../../etc/passwd"), Some("passwd".into()));
        assert_eq!(safe_name("..\\..\\x"), Some("x".into()));
        assert_eq!(safe_name(".."), None);
        assert_eq!(safe_name(".hidden"), Some("hidden".into()));
        assert_eq!(safe_name("a\nb"), Some("ab".into()));
    }
}
