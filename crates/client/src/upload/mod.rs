//! The upload driver: resolve the resume state, ask the server for the truth, send chunks,
//! retry, verify. One place decides retries (`wait_or_give_up`).
//!
//! The driver ([`Uploader::upload`]) decides with the pure functions of `policy`, then runs
//! one stream (`single`) or several ([`segmented`]); both send through `pump`, which talks to
//! servers only through [`Adapter`]. `record` keeps the resume state, `verify` compares the
//! result with the server's digest.

mod policy;
mod pump;
mod record;
pub mod segmented;
mod single;
mod stream;
mod verify;

use self::policy::{
    Streams, choose_digest, choose_streams, in_creation_request, one_stream_note, recorded_layout,
    want_digest_for,
};
use self::pump::Shared;
use crate::adapter::{Adapter, Protocol};
use crate::chunk::ChunkBounds;
use crate::discovery;
use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::identity::FileIdentity;
use crate::progress::{ProgressSink, RateLimiter, human_bytes};
use crate::response::{Digests, ServerCaps};
use crate::retry::{self, RetryPolicy, RetryState};
use crate::source::{FileSource, SequentialHash};
use crate::state::{Completed, Loaded, StateDir, Transfer, transfer_key};
use ferry_proto::Metadata;
use ferry_proto::checksum::ChecksumAlgorithm;
use reqwest::Url;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub use crate::http::upload_client as http_client;
pub use crate::options::{ChecksumChoice, Parallel, Verification};
pub use record::uploaded_bytes;

/// How uploads behave.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Extra metadata sent with every upload (besides `filename`).
    pub metadata: Vec<(String, Vec<u8>)>,
    /// Chunk-size bounds.
    pub chunk: ChunkBounds,
    /// Per-request checksums.
    pub checksum: ChecksumChoice,
    /// Retry limits.
    pub retry: RetryPolicy,
    /// A request that makes no progress for this long is abandoned and retried.
    pub stall_timeout: Duration,
    /// Shared bandwidth cap.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Compare the server's `Repr-Digest` with the file's digest at the end.
    pub verify: bool,
    /// The whole-file digest to compare (`None`: CRC-64/NVME with ferry servers, SHA-256 with
    /// others). CRC-64/NVME catches any accident; ask for BLAKE3 or SHA-256 where a
    /// cryptographic digest is wanted. Another algorithm (no `Repr-Digest` key) counts as
    /// `None`.
    pub digest: Option<ChecksumAlgorithm>,
    /// How many streams.
    pub parallel: Parallel,
    /// Most streams the automatic choice may use.
    pub max_parallel: usize,
    /// Keep a finished upload's record, marked [`Completed`], instead of deleting it: a run of
    /// several files sets it, so that the same command run again after an interruption skips
    /// the files already done, and drops the records ([`StateDir::remove_many`]) once every
    /// file is done.
    pub keep_completed: bool,
    /// Which protocol to speak.
    pub protocol: Protocol,
    /// Upload anew even a file that the state's index of finished uploads (or an unfinished
    /// run's [`Completed`] mark) says is already there.
    pub again: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            metadata: Vec::new(),
            chunk: ChunkBounds::default(),
            checksum: ChecksumChoice::Auto,
            retry: RetryPolicy::default(),
            stall_timeout: Duration::from_secs(30),
            limiter: None,
            verify: true,
            digest: None,
            parallel: Parallel::Auto,
            max_parallel: 32,
            keep_completed: false,
            protocol: Protocol::Auto,
            again: false,
        }
    }
}

/// Files smaller than this are always sent over one stream.
pub const MIN_PARALLEL_SIZE: u64 = 32 << 20;

/// New uploads up to this size go in their creation request (tus creation-with-upload) when
/// the server offers it: one request per small file instead of two, and no resume state (a
/// run killed mid-request just sends the file again).
pub const SMALL_FILE_MAX: u64 = 2 << 20;

/// Round trips at least this long make the automatic choice try several streams.
pub const AUTO_PARALLEL_RTT: Duration = Duration::from_millis(5);

/// A whole-file digest computed by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// CRC-64/NVME (against ferry servers), BLAKE3 (against older ferry servers) or SHA-256.
    pub algorithm: ChecksumAlgorithm,
    /// The digest.
    pub bytes: Vec<u8>,
}

impl FileDigest {
    /// The RFC 9530 key (`crc64nvme`, `blake3`, `sha-256`; empty for an algorithm without
    /// one, which a whole-file digest never is).
    pub fn key(&self) -> &'static str {
        self.algorithm.digest_key().unwrap_or_default()
    }

    /// The digest in lowercase hex.
    pub fn hex(&self) -> String {
        hex::encode(&self.bytes)
    }
}

/// One file being uploaded.
pub(crate) struct Job {
    pub(crate) key: String,
    pub(crate) display: String,
    pub(crate) abs: PathBuf,
    pub(crate) len: u64,
    pub(crate) source: FileSource,
    pub(crate) identity: FileIdentity,
    pub(crate) metadata: Metadata,
    /// The protocol, once decided (tus until then).
    pub(crate) adapter: Adapter,
}

/// A finished upload.
#[derive(Debug, Clone)]
pub struct UploadOutcome {
    /// The upload's URL.
    pub url: String,
    /// Its size.
    pub bytes: u64,
    /// Wall time of this run.
    pub seconds: f64,
    /// The file's digest (not computed with verification turned off).
    pub digest: Option<FileDigest>,
    /// Verification result.
    pub verification: Verification,
    /// Where this run started (0 unless resumed; the whole size for a file an earlier run of
    /// the same command had finished).
    pub resumed_from: u64,
    /// The transfer's key in the state directory.
    pub key: String,
    /// The protocol it spoke.
    pub protocol: Adapter,
    /// Nothing was sent: the state's index of finished uploads had this file there already
    /// (unchanged since, and the server still has it whole).
    pub already_uploaded: bool,
}

/// One file's transfer, as the stream runners see it.
#[derive(Clone, Copy)]
pub(crate) struct Run<'a> {
    pub(crate) job: &'a Job,
    pub(crate) endpoint: &'a Url,
    /// What every stream shares, given where the stream reports its positions.
    pub(crate) shared_for: &'a dyn Fn(Arc<dyn Fn(u64) + Send + Sync>) -> Shared,
}

/// Uploads files over tus, the IETF draft or chunk sessions, resuming from the state directory. Cheap to
/// clone; clones share the connection pool.
#[derive(Clone)]
pub struct Uploader {
    http: reqwest::Client,
    /// What each endpoint offers and its round trip, asked once per run (OPTIONS).
    caps: Arc<Mutex<std::collections::HashMap<String, (ServerCaps, Duration)>>>,
    /// Notes said once per run (not once per file).
    noted: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Checksum trailers do not reach the server (see `Shared::trailers_lost`).
    trailers_lost: Arc<AtomicBool>,
    state: StateDir,
    opts: UploadOptions,
    progress: Arc<dyn ProgressSink>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Uploader {
    /// A note said once per run, however many files or streams meet its cause.
    fn note_once(&self, note: &str) {
        if self
            .noted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(note.to_owned())
        {
            self.progress.note(note);
        }
    }
}

fn interrupted() -> ClientError {
    ClientError::new(
        ErrorKind::Interrupted,
        "interrupted; run the same command again to resume",
    )
}

fn local(what: &str) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |e| ClientError::local(what, e)
}

impl Uploader {
    /// An uploader.
    pub fn new(
        http: reqwest::Client,
        state: StateDir,
        opts: UploadOptions,
        progress: Arc<dyn ProgressSink>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            http,
            caps: Arc::default(),
            noted: Arc::default(),
            trailers_lost: Arc::default(),
            state,
            opts,
            progress,
            cancel,
        }
    }

    /// The same uploader reporting to another progress sink (one per file).
    pub fn with_progress(&self, progress: Arc<dyn ProgressSink>) -> Uploader {
        Uploader {
            progress,
            ..self.clone()
        }
    }

    /// Waits out a retryable failure, or ends the transfer (see [`retry::wait_or_give_up`]).
    async fn wait_or_give_up(
        &self,
        retry: &mut RetryState,
        err: AttemptError,
    ) -> Result<(), ClientError> {
        retry::wait_or_give_up(retry, err, &*self.progress, &self.cancel).await
    }

    /// Uploads `path` to the endpoint (tus, IETF draft or chunk session, see [`UploadOptions::protocol`]),
    /// resuming an earlier run of the same transfer.
    /// `relative` names the file inside an uploaded directory (sent as `relativePath`
    /// metadata, `/`-separated).
    pub async fn upload(
        &self,
        path: &Path,
        endpoint: &Url,
        relative: Option<&str>,
    ) -> Result<UploadOutcome, ClientError> {
        // Cancellation ends the upload wherever it waits, not only between chunks: a request to
        // a server that does not answer would otherwise hold Ctrl-C up for the stall timeout.
        // Dropping the work mid-way is safe: the state is only written synchronously between
        // awaits, and the server keeps what it committed.
        tokio::select! {
            r = self.upload_inner(path, endpoint, relative) => r,
            () = self.cancel.cancelled() => Err(interrupted()),
        }
    }

    async fn upload_inner(
        &self,
        path: &Path,
        endpoint: &Url,
        relative: Option<&str>,
    ) -> Result<UploadOutcome, ClientError> {
        let started = Instant::now();
        let mut job = self.prepare(path, endpoint, relative).await?;
        let len = job.len;
        let mut retry = RetryState::new(self.opts.retry, Instant::now());
        // An earlier run's record: the transfer began then, so an unreachable server is one
        // restarting.
        if matches!(self.state.load(&job.key), Ok(Loaded::Found(_))) {
            retry.begin();
        }
        let (caps, rtt) = self.server_caps(endpoint, &mut retry).await?;
        // The server answered (now or earlier in this run).
        retry.begin();
        if let Some(max) = caps.max_size
            && len > max
        {
            return Err(ClientError::new(
                ErrorKind::Refused,
                format!(
                    "{} is more than the server accepts ({})",
                    human_bytes(len),
                    human_bytes(max)
                ),
            ));
        }
        // Settings that cannot work with this server are refused before anything, even for a
        // file found already uploaded.
        if self.opts.protocol != Protocol::Auto {
            Adapter::choose(self.opts.protocol, &caps, None)?
                .request_checksum(self.opts.checksum, &caps)?;
        }
        if let Some(done) = self.finished_before(&job, &mut retry).await? {
            return Ok(UploadOutcome {
                seconds: started.elapsed().as_secs_f64(),
                ..done
            });
        }
        let mut record = self.saved_record(&job).await?;
        let recorded = record
            .as_ref()
            .and_then(|r| Adapter::from_name(&r.protocol));
        job.adapter = Adapter::choose(self.opts.protocol, &caps, recorded)?;
        if let Some(r) = record.take_if(|r| r.protocol != job.adapter.name()) {
            // Another protocol's upload (e.g. an earlier run with --protocol tus): an upload is
            // resumed only through the protocol that created it, so start afresh.
            self.progress.note(&format!(
                "the earlier upload of {} used {}; starting over with {}",
                job.display,
                r.protocol,
                job.adapter.name()
            ));
            self.drop_record(&job, &r).await?;
        }
        let algorithm = job.adapter.request_checksum(self.opts.checksum, &caps)?;
        if let Some(note) = one_stream_note(
            self.opts.parallel,
            record.is_some(),
            job.adapter,
            job.adapter.parallel(&caps),
            len,
        ) {
            self.note_once(&note);
        }
        let streams = choose_streams(
            record.as_ref().map(recorded_layout),
            self.opts.parallel,
            job.adapter.parallel(&caps),
            len,
            rtt,
        );
        let digest_algorithm = choose_digest(self.opts.digest, &caps, job.adapter);
        // Without verification nobody needs the whole-file hash: don't spend a core on it.
        let sequential = Arc::new(Mutex::new(if self.opts.verify {
            SequentialHash::new(digest_algorithm)
        } else {
            SequentialHash::disabled()
        }));
        let want_digest = self.opts.verify.then(|| want_digest_for(digest_algorithm));
        // Other algorithms are hashed in a first pass and sent in a header (a server does not
        // read a request back to check a trailer it could not hash on the way).
        let trailer =
            algorithm.is_some_and(ChecksumAlgorithm::fits_trailer) && job.adapter.trailer(&caps);
        let adapter = job.adapter;
        let shared_for = |on_position: Arc<dyn Fn(u64) + Send + Sync>| Shared {
            adapter,
            identity: job.identity.clone(),
            source: job.source.clone(),
            algorithm,
            trailer,
            trailers_lost: self.trailers_lost.clone(),
            want_digest,
            sequential: sequential.clone(),
            on_position,
        };
        let small = in_creation_request(
            record.is_none(),
            streams,
            len,
            job.adapter.creation_with_body(&caps),
        );
        let run = Run {
            job: &job,
            endpoint,
            shared_for: &shared_for,
        };
        let (url, resumed_from, early) = match streams {
            Streams::Single if small => self.run_small(&run, &mut retry).await?,
            Streams::Single => self.run_single(&run, record, &mut retry).await?,
            Streams::Segmented(fixed) => {
                let (u, r) = self
                    .run_segmented(&run, record, fixed, rtt, &mut retry)
                    .await?;
                (u, r, Digests::default())
            }
        };
        // The file must not have changed underneath us.
        let now = FileIdentity::of(&job.abs).map_err(local("re-reading the file"))?;
        if !now.same_size_and_mtime(&job.identity) {
            return Err(ClientError::new(
                ErrorKind::FileChanged,
                "the file changed during the upload, so the server's copy may mix old and new \
                 bytes; run again to upload it afresh",
            ));
        }
        let (caught_up, hashing) = {
            let seq = sequential.lock().unwrap_or_else(|p| p.into_inner());
            (seq.position(), seq.enabled())
        };
        if hashing && caught_up < len {
            let seq = sequential.clone();
            job.source
                .scan(caught_up, len, move |at, b| {
                    seq.lock().unwrap_or_else(|p| p.into_inner()).feed(at, b);
                })
                .await
                .map_err(local("reading the file"))?;
        }
        // Taken out rather than unwrapped from the Arc: the body stream of a request that
        // failed (e.g. the server died mid-PATCH) can still be owned by the HTTP connection's
        // task for a moment, and it holds a clone. (Anything it feeds now goes to the empty
        // default left behind.)
        let digest = std::mem::take(&mut *sequential.lock().unwrap_or_else(|p| p.into_inner()))
            .finish(len)
            .map(|bytes| FileDigest {
                algorithm: digest_algorithm,
                bytes,
            });
        let verification = match &digest {
            Some(d) => {
                self.verify(job.adapter, &url, d, early, &job.source, &mut retry)
                    .await?
            }
            None if hashing => {
                return Err(ClientError::new(ErrorKind::Local, "file hash incomplete"));
            }
            None => Verification::NotVerified("verification was turned off".into()),
        };
        if self.opts.keep_completed {
            // A small file sent in one request has no record yet: the mark needs one.
            let mut rec = match self.state.load(&job.key) {
                Ok(Loaded::Found(Transfer::Upload(rec))) => rec,
                _ => self.new_record(&job, endpoint, Vec::new()),
            };
            rec.completed = Some(Box::new(Completed::new(
                url.to_string(),
                digest.as_ref().map(|d| (d.algorithm, d.bytes.clone())),
            )));
            self.state
                .save_hint(&Transfer::Upload(rec))
                .map_err(local("writing the state"))?;
        } else {
            self.state
                .remove(&job.key)
                .map_err(local("writing the state"))?;
        }
        if let Some(d) = &digest {
            self.remember_finished(&job, endpoint, url.as_str(), d);
        }
        self.progress.finish();
        Ok(UploadOutcome {
            url: url.to_string(),
            bytes: len,
            seconds: started.elapsed().as_secs_f64(),
            digest,
            verification,
            resumed_from,
            key: job.key.clone(),
            protocol: job.adapter,
            already_uploaded: false,
        })
    }

    /// Opens the file and works out everything about it that does not need the server.
    async fn prepare(
        &self,
        path: &Path,
        endpoint: &Url,
        relative: Option<&str>,
    ) -> Result<Job, ClientError> {
        // Messages leave the file's name to the caller, who shows it once.
        let abs: PathBuf = std::fs::canonicalize(path).map_err(local("finding the file"))?;
        let file = std::fs::File::open(&abs).map_err(local("opening the file"))?;
        if !file.metadata().map_err(local("stat"))?.is_file() {
            return Err(ClientError::new(ErrorKind::Usage, "not a regular file"));
        }
        let (file, identity) = tokio::task::spawn_blocking(move || {
            let id = FileIdentity::of_file(&file);
            (file, id)
        })
        .await
        .map_err(|e| ClientError::new(ErrorKind::Local, e.to_string()))?;
        let identity = identity.map_err(local("reading the file"))?;
        let mut metadata = Metadata::default();
        let usage = |e: ferry_proto::ProtoError| ClientError::new(ErrorKind::Usage, e.to_string());
        if let Some(fname) = abs.file_name() {
            let name = fname.to_string_lossy().into_owned();
            metadata
                .insert("filename".into(), Some(name.into_bytes()))
                .map_err(usage)?;
        }
        if let Some(rel) = relative {
            metadata
                .insert("relativePath".into(), Some(rel.as_bytes().to_vec()))
                .map_err(usage)?;
        }
        for (k, v) in &self.opts.metadata {
            metadata.insert(k.clone(), Some(v.clone())).map_err(usage)?;
        }
        Ok(Job {
            key: transfer_key("upload", endpoint.as_str(), &abs),
            display: relative.map_or_else(|| path.display().to_string(), str::to_string),
            len: identity.size,
            source: FileSource::new(file, identity.size),
            identity,
            abs,
            metadata,
            adapter: Adapter::Tus,
        })
    }

    /// What the endpoint offers and about how long a round trip takes: asked once per run and
    /// endpoint (every file of a directory shares the answer).
    async fn server_caps(
        &self,
        endpoint: &Url,
        retry: &mut RetryState,
    ) -> Result<(ServerCaps, Duration), ClientError> {
        if let Some(c) = self
            .caps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint.as_str())
        {
            return Ok(c.clone());
        }
        let t0 = Instant::now();
        let caps = loop {
            match discovery::options(&self.http, endpoint).await {
                Ok(c) => break c,
                // Some servers answer OPTIONS poorly; the upload can still go ahead.
                Err(AttemptError::Gone | AttemptError::Fatal(_)) => {
                    break ServerCaps::default();
                }
                Err(e) => self.wait_or_give_up(retry, e).await?,
            }
        };
        // A fresh connection plus one request: about two round trips.
        let mut rtt = t0.elapsed() / 2;
        if rtt >= AUTO_PARALLEL_RTT && caps.answered {
            // One slow answer (a busy server, a loaded machine) must not pass for a long
            // path: a second request on the now-open connection is one round trip; the
            // smaller estimate wins.
            let t1 = Instant::now();
            if discovery::options(&self.http, endpoint).await.is_ok() {
                rtt = rtt.min(t1.elapsed());
            }
        }
        self.caps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(endpoint.to_string(), (caps.clone(), rtt));
        Ok((caps, rtt))
    }
}

/// What [`forget`] did, URL by URL: nothing is claimed that did not happen.
#[derive(Debug, Default)]
pub struct ForgetReport {
    /// Server-side uploads deleted now.
    pub deleted: Vec<String>,
    /// Server-side uploads the server no longer had (404, 410).
    pub already_gone: Vec<String>,
    /// Server-side uploads that could not be deleted, and why.
    pub failed: Vec<(String, ClientError)>,
    /// Whether the record was dropped: only when nothing failed, or with `remote` off.
    pub forgotten: bool,
}

/// Drops a saved upload's record after deleting its unfinished server-side uploads (with
/// `remote`; a finished one stays). If a deletion fails the record is kept, so that running
/// `forget` again can finish the job; without `remote` only the record goes.
pub async fn forget(
    http: &reqwest::Client,
    state: &StateDir,
    key: &str,
    remote: bool,
) -> Result<ForgetReport, ClientError> {
    let mut report = ForgetReport::default();
    if let Loaded::Found(Transfer::Upload(rec)) =
        state.load(key).map_err(local("reading the state"))?
        && rec.completed.is_none()
        && remote
    {
        let adapter = Adapter::from_name(&rec.protocol).unwrap_or(Adapter::Tus);
        for u in rec.urls().map(str::to_string).collect::<Vec<_>>() {
            let Ok(parsed) = Url::parse(&u) else {
                continue;
            };
            // A busy upload (423) or a passing 5xx: a few tries, as the server asks.
            let mut tries = 0;
            let deleted = loop {
                match adapter.delete(http, &parsed).await {
                    Err(AttemptError::Retry { retry_after, .. }) if tries < 3 => {
                        tries += 1;
                        let wait = retry_after.unwrap_or(Duration::from_millis(500));
                        tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                    }
                    other => break other,
                }
            };
            match deleted {
                Ok(()) => report.deleted.push(u),
                Err(AttemptError::Gone) => report.already_gone.push(u),
                Err(AttemptError::Fatal(e)) => report.failed.push((u, e)),
                Err(AttemptError::Unreachable(why)) => report
                    .failed
                    .push((u, ClientError::new(ErrorKind::Unreachable, why))),
                Err(e) => report
                    .failed
                    .push((u, ClientError::new(ErrorKind::Exhausted, e.message()))),
            }
        }
    }
    if report.failed.is_empty() {
        state.remove(key).map_err(local("writing the state"))?;
        report.forgotten = true;
    }
    Ok(report)
}
