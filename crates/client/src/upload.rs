//! The upload driver: resolve the resume state, ask the server for the truth, send chunks,
//! retry, verify. One place decides retries (`wait_or_give_up`).

use crate::adapter::{Adapter, Placement, Protocol};
use crate::chunk::{ChunkBounds, ChunkSizeController, Outcome};
use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::identity::FileIdentity;
use crate::progress::{ProgressSink, RateLimiter};
use crate::retry::{RetryPolicy, RetryState};
use crate::source::{Activity, FileSource, SequentialHash, StreamHooks};
use crate::state::{
    Completed, Loaded, PartRecord, STATE_VERSION, StateDir, Transfer, UploadRecord, transfer_key,
};
use crate::tus;
use ferry_proto::Metadata;
use ferry_proto::checksum::{Checksum, ChecksumAlgorithm};
use reqwest::Url;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Which checksum to put on each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumChoice {
    /// The fastest algorithm the server lists, none if it lists none.
    #[default]
    Auto,
    /// No per-request checksum.
    Off,
    /// This algorithm (the server must support it).
    Use(ChecksumAlgorithm),
}

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
}

/// How many streams to use for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parallel {
    /// Chosen by measurement (one stream on short round trips).
    #[default]
    Auto,
    /// Exactly this many (1 = a single upload).
    Fixed(usize),
}

/// Files smaller than this are always sent over one stream.
pub const MIN_PARALLEL_SIZE: u64 = 32 << 20;

/// New uploads up to this size go in their creation request (tus creation-with-upload) when
/// the server offers it: one request per small file instead of two, and no resume state (a
/// run killed mid-request just sends the file again).
pub const SMALL_FILE_MAX: u64 = 2 << 20;

/// A whole-file digest computed by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// CRC-64/NVME (against ferry servers), BLAKE3 (against older ferry servers) or SHA-256.
    pub algorithm: ChecksumAlgorithm,
    /// The digest.
    pub bytes: Vec<u8>,
}

impl FileDigest {
    /// The RFC 9530 key (`crc64nvme`, `blake3`, `sha-256`).
    pub fn key(&self) -> &'static str {
        digest_key(self.algorithm)
    }

    /// The digest in lowercase hex.
    pub fn hex(&self) -> String {
        hex(&self.bytes)
    }
}

fn digest_key(a: ChecksumAlgorithm) -> &'static str {
    ferry_proto::digest::key_of(a).unwrap_or(ferry_proto::digest::SHA256_KEY)
}

/// `Want-Repr-Digest` for a transfer hashing with `a`: that algorithm first, then what an older
/// ferry server has, then SHA-256 (which every RFC 9530 server knows).
fn want_digest_for(a: ChecksumAlgorithm) -> &'static str {
    match a {
        ChecksumAlgorithm::Crc64Nvme => "crc64nvme=10, blake3=5, sha-256=3",
        ChecksumAlgorithm::Blake3 => "blake3=10, sha-256=3",
        _ => "sha-256=10",
    }
}

/// Round trips at least this long make the automatic choice try several streams.
pub const AUTO_PARALLEL_RTT: Duration = Duration::from_millis(5);

/// Single stream or segments (tus concatenation, or ranges of one chunk session) (`None`: as many as measurement says).
enum Streams {
    Single,
    Segmented(Option<usize>),
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
        }
    }
}

/// Whether the result was checked against the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The server's digest of the upload equals the file's.
    Verified,
    /// Not checked, and why.
    NotVerified(String),
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
}

/// Builds the HTTP client ferry uses: HTTP/1.1 (one TCP connection per stream) with a connect
/// timeout, and `stall_timeout` as the limit on the small requests (OPTIONS, HEAD, POST,
/// DELETE: no body, a short answer). PATCH lifts that limit ([`tus::patch`]): its body may take
/// as long as it needs, and the driver abandons it only when no bytes move for the stall
/// timeout. (reqwest's `read_timeout` is not used: it runs from the start of a request until
/// the response headers, so it cut off every PATCH whose body took longer to send.)
pub fn http_client(
    connect_timeout: Duration,
    stall_timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    build_client(client_builder(connect_timeout).timeout(stall_timeout))
}

/// What every ferry HTTP client has: HTTP/1.1 (one TCP connection per stream, never streams
/// multiplexed onto one flow), a connect timeout, no Nagle delay, ferry's User-Agent.
pub(crate) fn client_builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    // The TLS stack needs a process-wide crypto provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .http1_only()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
}

/// Builds a client, mapping failure to a local error.
pub(crate) fn build_client(
    builder: reqwest::ClientBuilder,
) -> Result<reqwest::Client, ClientError> {
    builder
        .build()
        .map_err(|e| ClientError::new(ErrorKind::Local, format!("cannot build HTTP client: {e}")))
}

/// Uploads files over tus, the IETF draft or chunk sessions, resuming from the state directory. Cheap to
/// clone; clones share the connection pool.
#[derive(Clone)]
pub struct Uploader {
    pub(crate) http: reqwest::Client,
    /// What each endpoint offers and its round trip, asked once per run (OPTIONS).
    caps: Arc<Mutex<std::collections::HashMap<String, (tus::ServerCaps, Duration)>>>,
    state: StateDir,
    pub(crate) opts: UploadOptions,
    pub(crate) progress: Arc<dyn ProgressSink>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("state", &self.state)
            .finish_non_exhaustive()
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

    /// Waits out a retryable failure, or ends the transfer (see [`crate::retry::wait_or_give_up`]).
    pub(crate) async fn wait_or_give_up(
        &self,
        retry: &mut RetryState,
        err: AttemptError,
    ) -> Result<(), ClientError> {
        crate::retry::wait_or_give_up(retry, err, &*self.progress, &self.cancel).await
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
        if let Some(done) = self.finished_before(&job, &mut retry).await? {
            return Ok(UploadOutcome {
                seconds: started.elapsed().as_secs_f64(),
                ..done
            });
        }

        let (caps, rtt) = self.server_caps(endpoint, &mut retry).await?;
        if let Some(max) = caps.max_size
            && len > max
        {
            return Err(ClientError::new(
                ErrorKind::Refused,
                format!(
                    "{} is {len} bytes; the server accepts at most {max}",
                    job.display
                ),
            ));
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
        if job.adapter == Adapter::Ietf && matches!(self.opts.parallel, Parallel::Fixed(n) if n > 1)
        {
            self.progress.note(
                "the IETF resumable-upload draft allows one stream per upload; using one stream",
            );
        }
        let streams = match (&record, self.opts.parallel) {
            (Some(r), _) if r.parts.len() > 1 || r.final_url.is_some() => Streams::Segmented(None),
            (Some(_), _) => Streams::Single,
            (None, _) if !job.adapter.parallel(&caps) || len < MIN_PARALLEL_SIZE => Streams::Single,
            (None, Parallel::Fixed(n)) if n > 1 => Streams::Segmented(Some(n)),
            (None, Parallel::Fixed(_)) => Streams::Single,
            // Parallel TCP streams pay where one flow cannot fill the path (long round
            // trips, loss); on a LAN or loopback one stream already does.
            (None, Parallel::Auto) if rtt >= AUTO_PARALLEL_RTT => Streams::Segmented(None),
            (None, Parallel::Auto) => Streams::Single,
        };
        // Without verification nobody needs the whole-file hash: don't spend a core on it.
        // A server that knows CRC-64/NVME (ferry's) is asked for that Repr-Digest: it is ready
        // the moment the upload completes, and costs both ends a tenth of BLAKE3's CPU, which
        // on a fast link is the difference between keeping up with the network or not. Older
        // ferry servers have BLAKE3; others SHA-256.
        // Chunk endpoints answer no OPTIONS; ferry's sessions carry CRC-64/NVME (a server with
        // something else costs a second read to hash with that).
        let digest_algorithm = match self.opts.digest {
            Some(a) if ferry_proto::digest::key_of(a).is_some() => a,
            _ if caps.algorithms.contains(&ChecksumAlgorithm::Crc64Nvme)
                || job.adapter == Adapter::Chunks =>
            {
                ChecksumAlgorithm::Crc64Nvme
            }
            _ if caps.algorithms.contains(&ChecksumAlgorithm::Blake3) => ChecksumAlgorithm::Blake3,
            _ => ChecksumAlgorithm::Sha256,
        };
        let sequential = Arc::new(Mutex::new(if self.opts.verify {
            SequentialHash::new(digest_algorithm)
        } else {
            SequentialHash::disabled()
        }));
        let want_digest = self.opts.verify.then(|| want_digest_for(digest_algorithm));
        let trailer = algorithm.is_some() && job.adapter.trailer(&caps);
        let adapter = job.adapter;
        let shared_for = |on_position: Arc<dyn Fn(u64) + Send + Sync>| Shared {
            adapter,
            identity: job.identity.clone(),
            source: job.source.clone(),
            algorithm,
            trailer,
            want_digest,
            sequential: sequential.clone(),
            on_position,
        };
        let small = record.is_none()
            && matches!(streams, Streams::Single)
            && len > 0
            && len <= SMALL_FILE_MAX
            && job.adapter.creation_with_body(&caps);
        let (url, resumed_from, early) = match streams {
            Streams::Single if small => {
                self.run_small(&job, endpoint, &shared_for, &mut retry)
                    .await?
            }
            Streams::Single => {
                self.run_single(&job, endpoint, record, &shared_for, &mut retry)
                    .await?
            }
            Streams::Segmented(fixed) => {
                let (u, r) = self
                    .run_segmented(&job, endpoint, record, fixed, rtt, &shared_for, &mut retry)
                    .await?;
                (u, r, tus::Digests::default())
            }
        };

        // The file must not have changed underneath us.
        let now = FileIdentity::of(&job.abs).map_err(local("re-reading the file"))?;
        if !now.same_size_and_mtime(&job.identity) {
            return Err(ClientError::new(
                ErrorKind::FileChanged,
                format!(
                    "{} changed during the upload, so the server's copy may mix old and new bytes; run again to upload it afresh",
                    job.display
                ),
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
                digest.as_ref().map(|d| (d.key(), d.hex())),
            )));
            self.state
                .save_hint(&Transfer::Upload(rec))
                .map_err(local("writing the state"))?;
        } else {
            self.state
                .remove(&job.key)
                .map_err(local("writing the state"))?;
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
        })
    }

    /// The outcome of an upload of this very file that an earlier run of the same command
    /// finished ([`UploadOptions::keep_completed`]), if the server still has it whole (and, where
    /// it says, with the file's SHA-256). A finished upload the server lost, or whose digest
    /// differs, is forgotten and the file uploaded afresh.
    async fn finished_before(
        &self,
        job: &Job,
        retry: &mut RetryState,
    ) -> Result<Option<UploadOutcome>, ClientError> {
        let Ok(Loaded::Found(Transfer::Upload(rec))) = self.state.load(&job.key) else {
            return Ok(None);
        };
        let Some(done) = rec.completed.filter(|_| rec.identity == job.identity) else {
            return Ok(None);
        };
        let url =
            Url::parse(&done.url).map_err(|e| ClientError::new(ErrorKind::Local, e.to_string()))?;
        let recorded = done.digest();
        let recorded_algorithm =
            |k: &str| ferry_proto::digest::algorithm_of(k).unwrap_or(ChecksumAlgorithm::Sha256);
        let want = recorded
            .as_ref()
            .map(|(k, _)| want_digest_for(recorded_algorithm(k)));
        let adapter = Adapter::from_name(&rec.protocol).unwrap_or(Adapter::Tus);
        let remote = loop {
            match adapter.head(&self.http, &url, want).await {
                Ok(r) => break Some(r),
                Err(AttemptError::Gone) => break None,
                Err(e) => self.wait_or_give_up(retry, e).await?,
            }
        };
        let digest = recorded.as_ref().and_then(|(k, h)| {
            let algorithm = recorded_algorithm(k);
            Some(FileDigest {
                algorithm,
                bytes: unhex(h, algorithm.digest_len())?,
            })
        });
        let verification = match &remote {
            Some(r) if r.offset == job.len && r.length.is_none_or(|l| l == job.len) => {
                match (
                    &digest,
                    r.digests.get(digest.as_ref().map_or("", |d| d.key())),
                ) {
                    (Some(local), Some(theirs)) if local.bytes.as_slice() == theirs => {
                        Some(Verification::Verified)
                    }
                    (Some(_), Some(_)) => None,
                    (None, _) => Some(Verification::NotVerified(
                        "verification was turned off when it was uploaded".into(),
                    )),
                    (Some(_), None) => Some(Verification::NotVerified(
                        "the server exposes no Repr-Digest, so the result was not verified".into(),
                    )),
                }
            }
            _ => None,
        };
        let Some(verification) = verification else {
            self.progress.note(&format!(
                "the server's copy of the finished upload of {} is gone or differs; uploading \
                 it again",
                job.display
            ));
            self.state
                .remove(&job.key)
                .map_err(local("writing the state"))?;
            return Ok(None);
        };
        self.progress.start(&job.display, job.len, job.len);
        self.progress.finish();
        Ok(Some(UploadOutcome {
            url: done.url,
            bytes: job.len,
            seconds: 0.0,
            digest,
            verification,
            resumed_from: job.len,
            key: job.key.clone(),
            protocol: adapter,
        }))
    }

    /// Opens the file and works out everything about it that does not need the server.
    async fn prepare(
        &self,
        path: &Path,
        endpoint: &Url,
        relative: Option<&str>,
    ) -> Result<Job, ClientError> {
        let abs: PathBuf =
            std::fs::canonicalize(path).map_err(local(&path.display().to_string()))?;
        let file = std::fs::File::open(&abs).map_err(local(&path.display().to_string()))?;
        if !file.metadata().map_err(local("stat"))?.is_file() {
            return Err(ClientError::new(
                ErrorKind::Usage,
                format!("{} is not a regular file", path.display()),
            ));
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

    /// The saved record for this transfer, if it is still good: the same file (a changed
    /// file's stale uploads are deleted and it starts afresh).
    async fn saved_record(&self, job: &Job) -> Result<Option<UploadRecord>, ClientError> {
        match self
            .state
            .load(&job.key)
            .map_err(local("reading the state"))?
        {
            Loaded::Found(Transfer::Upload(rec)) if rec.identity == job.identity => Ok(Some(rec)),
            // A finished upload of the file as it was is not stale: leave it on the server.
            Loaded::Found(Transfer::Upload(rec)) if rec.completed.is_some() => {
                self.state
                    .remove(&job.key)
                    .map_err(local("writing the state"))?;
                Ok(None)
            }
            Loaded::Found(Transfer::Upload(rec)) => {
                self.progress.note(&format!(
                    "{} changed since the last run; uploading it afresh",
                    job.display
                ));
                self.drop_record(job, &rec).await?;
                Ok(None)
            }
            Loaded::Unusable(why) => {
                self.progress.note(&format!(
                    "ignoring the saved state for {}: {why}",
                    job.display
                ));
                Ok(None)
            }
            // Keys include the kind, so a download record never sits under an upload's key.
            Loaded::Missing | Loaded::Found(Transfer::Download(_)) => Ok(None),
        }
    }

    /// Deletes a record's server-side uploads (best effort) and the record.
    async fn drop_record(&self, job: &Job, rec: &UploadRecord) -> Result<(), ClientError> {
        if let Some(adapter) = Adapter::from_name(&rec.protocol) {
            for u in rec.urls() {
                if let Ok(u) = Url::parse(u) {
                    let _ = adapter.delete(&self.http, &u).await;
                }
            }
        }
        self.state
            .remove(&job.key)
            .map_err(local("writing the state"))
    }

    /// Saves the transfer's record (when an upload or part is created or finishes).
    pub(crate) fn save(&self, rec: &UploadRecord) -> Result<(), ClientError> {
        self.state
            .save(&Transfer::Upload(rec.clone()))
            .map_err(local("writing the state"))
    }

    /// Saves the record of a single-stream upload of the whole file to `url`.
    fn save_single(&self, job: &Job, endpoint: &Url, url: &Url) -> Result<(), ClientError> {
        let parts = vec![PartRecord {
            url: Some(url.to_string()),
            start: 0,
            end: job.len,
            done: false,
        }];
        self.save(&self.new_record(job, endpoint, parts))
    }

    /// A new record for `job` with the given parts.
    pub(crate) fn new_record(
        &self,
        job: &Job,
        endpoint: &Url,
        parts: Vec<PartRecord>,
    ) -> UploadRecord {
        UploadRecord {
            version: STATE_VERSION,
            key: job.key.clone(),
            source: job.abs.clone(),
            identity: job.identity.clone(),
            endpoint: endpoint.to_string(),
            protocol: job.adapter.name().into(),
            created_ms: now_ms(),
            parts,
            final_url: None,
            completed: None,
        }
    }

    /// Creates an upload (retrying) and returns its URL.
    pub(crate) async fn create_upload(
        &self,
        adapter: Adapter,
        endpoint: &Url,
        len: u64,
        metadata: &Metadata,
        concat: Option<&str>,
        retry: &mut RetryState,
    ) -> Result<Url, ClientError> {
        loop {
            match adapter
                .create(&self.http, endpoint, len, metadata, concat)
                .await
            {
                Ok(u) => return Ok(u),
                Err(e) => self.wait_or_give_up(retry, e).await?,
            }
        }
    }

    /// HEAD an earlier upload (retrying); `None` if the server no longer has it or it no
    /// longer matches.
    pub(crate) async fn recheck(
        &self,
        adapter: Adapter,
        url: &Url,
        at: Placement,
        retry: &mut RetryState,
    ) -> Result<Option<tus::RemoteUpload>, ClientError> {
        loop {
            match adapter.head_at(&self.http, url, at, None).await {
                Ok(r) if r.length.is_none_or(|l| l == at.len) => return Ok(Some(r)),
                Ok(_) | Err(AttemptError::Gone) => return Ok(None),
                Err(e) => self.wait_or_give_up(retry, e).await?,
            }
        }
    }

    /// One stream, one upload.
    async fn run_single(
        &self,
        job: &Job,
        endpoint: &Url,
        record: Option<UploadRecord>,
        shared_for: &dyn Fn(Arc<dyn Fn(u64) + Send + Sync>) -> Shared,
        retry: &mut RetryState,
    ) -> Result<(Url, u64, tus::Digests), ClientError> {
        let len = job.len;
        let mut resumed = None;
        if let Some(u) = record
            .as_ref()
            .and_then(|r| r.parts.first())
            .and_then(|p| p.url.as_deref())
        {
            let u = Url::parse(u).map_err(|e| ClientError::new(ErrorKind::Local, e.to_string()))?;
            let whole = Placement {
                base: 0,
                len,
                total: len,
            };
            match self.recheck(job.adapter, &u, whole, retry).await? {
                Some(r) => resumed = Some((u, r)),
                None => self
                    .progress
                    .note("the server no longer has the earlier upload; starting over"),
            }
        }
        let (url, remote) = match resumed {
            Some((u, r)) => (u, Some(r)),
            None => {
                let u = self
                    .create_upload(job.adapter, endpoint, len, &job.metadata, None, retry)
                    .await?;
                self.save_single(job, endpoint, &u)?;
                (u, None)
            }
        };
        let resumed_from = remote.as_ref().map_or(0, |r| r.offset);
        self.progress.start(&job.display, len, resumed_from);
        if resumed_from > 0 {
            self.progress
                .note(&format!("resuming {} at byte {resumed_from}", job.display));
        }
        let progress = self.progress.clone();
        let shared = shared_for(Arc::new(move |p| progress.position(p)));
        let digests = self.pump_whole(&url, remote, &shared, retry).await?;
        Ok((url, resumed_from, digests))
    }

    /// Brings a single-stream upload of the whole file to completion.
    async fn pump_whole(
        &self,
        url: &Url,
        known: Option<tus::RemoteUpload>,
        shared: &Shared,
        retry: &mut RetryState,
    ) -> Result<tus::Digests, ClientError> {
        let mut controller = ChunkSizeController::new(self.opts.chunk);
        let target = Target {
            url,
            base: 0,
            len: shared.source.len(),
        };
        self.pump_range(&target, known, shared, &mut controller, retry)
            .await
    }

    /// A small new file in one request: creation with the whole file as body. Nothing is
    /// saved unless the server takes only part of it (then it goes on like any upload).
    async fn run_small(
        &self,
        job: &Job,
        endpoint: &Url,
        shared_for: &dyn Fn(Arc<dyn Fn(u64) + Send + Sync>) -> Shared,
        retry: &mut RetryState,
    ) -> Result<(Url, u64, tus::Digests), ClientError> {
        let len = job.len;
        self.progress.start(&job.display, len, 0);
        let progress = self.progress.clone();
        let shared = shared_for(Arc::new(move |p| progress.position(p)));
        let data = shared
            .source
            .read_all()
            .await
            .map_err(|e| shared.read_error(e))?;
        shared
            .sequential
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .feed(0, &data);
        let checksum = shared.algorithm.map(|a| Checksum {
            algorithm: a,
            digest: ferry_proto::checksum::digest(a, &data),
        });
        let data = bytes::Bytes::from(data);
        loop {
            if self.cancel.is_cancelled() {
                return Err(interrupted());
            }
            let sent = job
                .adapter
                .create_with_body(
                    &self.http,
                    endpoint,
                    &job.metadata,
                    data.clone(),
                    checksum.as_ref(),
                    shared.want_digest,
                )
                .await;
            match sent {
                Ok((url, sent)) if sent.offset >= len => {
                    (shared.on_position)(len);
                    return Ok((url, 0, sent.digests));
                }
                Ok((url, sent)) => {
                    // Only part of it was taken: from here on, a resumable upload.
                    self.save_single(job, endpoint, &url)?;
                    let known = tus::RemoteUpload {
                        offset: sent.offset,
                        length: Some(len),
                        complete: None,
                        digests: tus::Digests::default(),
                    };
                    let digests = self.pump_whole(&url, Some(known), &shared, retry).await?;
                    return Ok((url, 0, digests));
                }
                Err(e) => {
                    shared.ensure_unchanged()?;
                    self.wait_or_give_up(retry, e).await?;
                }
            }
        }
    }

    /// What the endpoint offers and about how long a round trip takes: asked once per run and
    /// endpoint (every file of a directory shares the answer).
    async fn server_caps(
        &self,
        endpoint: &Url,
        retry: &mut RetryState,
    ) -> Result<(tus::ServerCaps, Duration), ClientError> {
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
            match tus::options(&self.http, endpoint).await {
                Ok(c) => break c,
                // Some servers answer OPTIONS poorly; the upload can still go ahead.
                Err(AttemptError::Gone | AttemptError::Fatal(_)) => {
                    break tus::ServerCaps::default();
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
            if tus::options(&self.http, endpoint).await.is_ok() {
                rtt = rtt.min(t1.elapsed());
            }
        }
        self.caps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(endpoint.to_string(), (caps.clone(), rtt));
        Ok((caps, rtt))
    }

    /// Compares the file's digest with the server's: from the response that completed the
    /// upload when it carried one, else from a HEAD asking for it. A server that only has
    /// another digest than the file was hashed with costs a second read of it (but a
    /// cryptographic digest asked for with `--digest` is never replaced by the CRC).
    async fn verify(
        &self,
        adapter: Adapter,
        url: &Url,
        ours: &FileDigest,
        early: tus::Digests,
        source: &FileSource,
        retry: &mut RetryState,
    ) -> Result<Verification, ClientError> {
        let digests = if early.get(ours.key()).is_some() {
            early
        } else {
            // A chunk session computes its SHA-256 after the last chunk (in the background for
            // large files) and ignores Want-Repr-Digest: wait a bounded while for it.
            // (A server that never sends one costs at most a minute.)
            let patience = match adapter {
                Adapter::Chunks => Duration::from_secs((5 + source.len() / (8 << 20)).min(60)),
                _ => Duration::ZERO,
            };
            let until = Instant::now() + patience;
            let mut pause = Duration::from_millis(50);
            loop {
                match adapter
                    .head(&self.http, url, Some(want_digest_for(ours.algorithm)))
                    .await
                {
                    Ok(r) if r.digests.0.is_empty() && Instant::now() < until => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                    Ok(r) => break r.digests,
                    Err(e) => self.wait_or_give_up(retry, e).await?,
                }
            }
        };
        let (ours, theirs) = match digests.get(ours.key()) {
            Some(d) => (ours.clone(), d.to_vec()),
            // Another digest the server has, hashed locally again; a cryptographic digest
            // asked for (--digest) is never replaced by the CRC.
            None => match ferry_proto::digest::WHOLE_DIGESTS
                .into_iter()
                .filter(|(_, a)| {
                    *a != ChecksumAlgorithm::Crc64Nvme || self.opts.digest.is_none_or(|d| d == *a)
                })
                .find_map(|(k, a)| Some((digests.get(k)?, a)))
            {
                Some((d, algorithm)) => {
                    let len = source.len();
                    let s = Arc::new(Mutex::new(SequentialHash::new(algorithm)));
                    let s2 = s.clone();
                    source
                        .scan(0, len, move |at, b| {
                            s2.lock().unwrap_or_else(|p| p.into_inner()).feed(at, b);
                        })
                        .await
                        .map_err(local("reading the file"))?;
                    let bytes = std::mem::take(&mut *s.lock().unwrap_or_else(|p| p.into_inner()))
                        .finish(len)
                        .ok_or_else(|| {
                            ClientError::new(ErrorKind::Local, "file hash incomplete")
                        })?;
                    let sha = FileDigest { algorithm, bytes };
                    (sha, d.to_vec())
                }
                None if self.opts.digest.is_some() && !digests.0.is_empty() => {
                    return Ok(Verification::NotVerified(format!(
                        "the server did not give the {} digest asked for (--digest), so the result was not verified",
                        ours.key()
                    )));
                }
                None => {
                    return Ok(Verification::NotVerified(
                        "the server exposes no Repr-Digest, so the result was not verified".into(),
                    ));
                }
            },
        };
        if ours.bytes.as_slice() == theirs {
            Ok(Verification::Verified)
        } else {
            Err(ClientError::new(
                ErrorKind::Verification,
                format!(
                    "the server's copy differs from the file: server {} {}, local {}",
                    ours.key(),
                    hex(&theirs),
                    ours.hex()
                ),
            ))
        }
    }

    /// Brings the upload at `target.url` to completion from whatever offset the server
    /// reports: HEAD, send, and on failure wait and ask again. Used for whole files and for the
    /// segments of a parallel upload.
    pub(crate) async fn pump_range(
        &self,
        target: &Target<'_>,
        mut known: Option<tus::RemoteUpload>,
        shared: &Shared,
        controller: &mut ChunkSizeController,
        retry: &mut RetryState,
    ) -> Result<tus::Digests, ClientError> {
        let mut acked = 0u64;
        loop {
            if self.cancel.is_cancelled() {
                return Err(interrupted());
            }
            let r = match known.take() {
                Some(r) => r,
                None => match shared
                    .adapter
                    .head_at(&self.http, target.url, target.placement(shared), None)
                    .await
                {
                    Ok(r) => r,
                    Err(AttemptError::Gone) => {
                        return Err(ClientError::new(
                            ErrorKind::Refused,
                            "the server dropped the upload (expired or deleted); run again to start over",
                        ));
                    }
                    Err(e) => {
                        self.wait_or_give_up(retry, e).await?;
                        continue;
                    }
                },
            };
            if r.offset > acked {
                retry.progress(Instant::now());
                acked = r.offset;
            }
            (shared.on_position)(target.base + r.offset);
            if r.offset >= target.len && r.complete == Some(false) {
                // All bytes are there but the request that said so was lost (IETF: the
                // upload stays open until an append with `Upload-Complete: ?1`).
                match self.complete_empty(target, r.offset, shared).await {
                    Ok(digests) => return Ok(digests),
                    Err(e) => {
                        self.wait_or_give_up(retry, e).await?;
                        continue;
                    }
                }
            }
            if r.offset >= target.len {
                return Ok(r.digests);
            }
            // Bring the whole-file hash up to where sending resumes, so every byte is hashed
            // once, in order.
            let caught_up = shared
                .sequential
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .position();
            let resume_at = target.base + r.offset;
            if (target.base..resume_at).contains(&caught_up) {
                let seq = shared.sequential.clone();
                shared
                    .source
                    .scan(caught_up, resume_at, move |at, b| {
                        seq.lock().unwrap_or_else(|p| p.into_inner()).feed(at, b);
                    })
                    .await
                    .map_err(|e| shared.read_error(e))?;
            }
            match self
                .send_range(target, r.offset, shared, controller, retry, &mut acked)
                .await
            {
                Ok(digests) => return Ok(digests),
                Err(AttemptError::TooLarge { size }) => {
                    controller.record(Outcome::TooLarge { bytes: size });
                    if size <= self.opts.chunk.min {
                        return Err(ClientError::new(
                            ErrorKind::Refused,
                            format!("the server refuses even {size}-byte requests (413)"),
                        ));
                    }
                }
                Err(e) => {
                    controller.record(Outcome::Failed);
                    // A file that shrank fails the body stream, which looks like a network
                    // error from here (or the checksum read, a local one): no retry can help.
                    shared.ensure_unchanged()?;
                    self.wait_or_give_up(retry, e).await?;
                }
            }
        }
    }

    /// An empty append that completes an upload whose bytes have all arrived.
    async fn complete_empty(
        &self,
        target: &Target<'_>,
        offset: u64,
        shared: &Shared,
    ) -> Result<tus::Digests, AttemptError> {
        let want = shared
            .want_digest
            .filter(|_| target.base == 0 && target.len == shared.source.len());
        let req = shared.adapter.append(
            &self.http,
            target.url,
            target.placement(shared),
            offset,
            0,
            reqwest::Body::from(Vec::new()),
            true,
            tus::RequestChecksum::None,
            false,
            want,
        );
        let stall = self.opts.stall_timeout;
        let sent = tokio::select! {
            r = req => r?,
            () = tokio::time::sleep(stall) => return Err(AttemptError::retry(format!(
                "no answer for {}s (stalled connection)", stall.as_secs()
            ))),
            () = self.cancel.cancelled() => return Err(AttemptError::Fatal(interrupted())),
        };
        Ok(sent.digests)
    }

    /// Sends chunks from `offset` (relative to the target) until its end or the first failure;
    /// returns the digests the last answer carried.
    async fn send_range(
        &self,
        target: &Target<'_>,
        mut offset: u64,
        shared: &Shared,
        controller: &mut ChunkSizeController,
        retry: &mut RetryState,
        acked: &mut u64,
    ) -> Result<tus::Digests, AttemptError> {
        let len = target.len;
        let mut digests = tus::Digests::default();
        while offset < len {
            let size = controller.next_size().min(len - offset);
            let (start, end) = (target.base + offset, target.base + offset + size);
            let checksum = match shared.algorithm {
                Some(_) if shared.trailer => None,
                Some(a) => Some(Checksum {
                    algorithm: a,
                    digest: shared.source.checksum(start, end, a).await.map_err(|e| {
                        AttemptError::Fatal(ClientError::local("reading the file", e))
                    })?,
                }),
                None => None,
            };
            let activity = Arc::new(Activity::default());
            activity.touch();
            let hooks = StreamHooks {
                sequential: shared.sequential.clone(),
                activity: activity.clone(),
                on_position: shared.on_position.clone(),
                limiter: self.opts.limiter.clone(),
            };
            let trailer = shared.algorithm.filter(|_| shared.trailer);
            let body = reqwest::Body::wrap(shared.source.body(start, end, hooks, trailer));
            let request_checksum = match (&checksum, trailer) {
                (Some(c), _) => tus::RequestChecksum::Header(c),
                (None, Some(_)) => tus::RequestChecksum::Trailer,
                (None, None) => tus::RequestChecksum::None,
            };
            let last = offset + size == len;
            // The request that completes the whole file asks for its digest, and so does the
            // one that starts it: ferry's server then keeps a cryptographic digest (--digest)
            // running instead of reading the upload back at the end.
            let want = shared.want_digest.filter(|_| {
                target.base == 0 && (last || offset == 0) && target.len == shared.source.len()
            });
            let t0 = Instant::now();
            let stall = self.opts.stall_timeout;
            let probe = size > controller.accepted();
            let sent = tokio::select! {
                r = shared.adapter.append(
                    &self.http, target.url, target.placement(shared), offset, size, body, last, request_checksum, probe, want,
                ) => r,
                () = stalled(&activity, stall) => Err(AttemptError::retry(format!(
                    "no progress for {}s (stalled connection)", stall.as_secs()
                ))),
                () = self.cancel.cancelled() => Err(AttemptError::Fatal(interrupted())),
            };
            let sent = sent?;
            let new = sent.offset;
            digests = sent.digests;
            if new <= offset {
                return Err(AttemptError::retry("the server accepted no bytes"));
            }
            controller.record(Outcome::Ok {
                bytes: new - offset,
                took: t0.elapsed(),
            });
            retry.progress(Instant::now());
            *acked = new;
            offset = new;
            (shared.on_position)(target.base + offset);
        }
        Ok(digests)
    }
}

/// A server-side upload and the file bytes it carries: `[base, base + len)`.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    pub(crate) url: &'a Url,
    pub(crate) base: u64,
    pub(crate) len: u64,
}

impl Target<'_> {
    /// Where the target sits in the file.
    pub(crate) fn placement(&self, shared: &Shared) -> Placement {
        Placement {
            base: self.base,
            len: self.len,
            total: shared.source.len(),
        }
    }
}

/// What every stream of one transfer shares.
pub(crate) struct Shared {
    /// The protocol.
    pub(crate) adapter: Adapter,
    /// The file as it was when the transfer started.
    pub(crate) identity: FileIdentity,
    pub(crate) source: FileSource,
    pub(crate) algorithm: Option<ChecksumAlgorithm>,
    /// Send the request checksum as a trailer (the server offers checksum-trailer).
    pub(crate) trailer: bool,
    /// `Want-Repr-Digest` for the request that completes the file (`None`: not verifying).
    pub(crate) want_digest: Option<&'static str>,
    pub(crate) sequential: Arc<Mutex<SequentialHash>>,
    /// Called with absolute file positions as bytes go out and are acknowledged.
    pub(crate) on_position: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Shared {
    /// Fails with [`ErrorKind::FileChanged`] if the open file's size or mtime moved.
    pub(crate) fn ensure_unchanged(&self) -> Result<(), ClientError> {
        if self.identity.matches_file(self.source.file()) {
            Ok(())
        } else {
            Err(ClientError::new(
                ErrorKind::FileChanged,
                "the file changed during the upload (its size or modification time moved); \
                 run again to upload it afresh",
            ))
        }
    }

    /// A failed read of the file: the file changed, or a local I/O error.
    pub(crate) fn read_error(&self, e: std::io::Error) -> ClientError {
        match self.ensure_unchanged() {
            Err(changed) => changed,
            Ok(()) => ClientError::local("reading the file", e),
        }
    }
}

/// Resolves once `activity` has been idle for `limit`.
pub(crate) async fn stalled(activity: &Activity, limit: Duration) {
    let tick = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        if activity.idle() >= limit {
            return;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str, len: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; len];
    if s.len() != 2 * len {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Drops a saved transfer and deletes its server-side uploads (best effort).
pub async fn forget(
    http: &reqwest::Client,
    state: &StateDir,
    key: &str,
) -> Result<Vec<String>, ClientError> {
    let mut deleted = Vec::new();
    // A finished upload (kept until its run is done) stays on the server.
    if let Loaded::Found(Transfer::Upload(rec)) =
        state.load(key).map_err(local("reading the state"))?
        && rec.completed.is_none()
    {
        let adapter = Adapter::from_name(&rec.protocol).unwrap_or(Adapter::Tus);
        for u in rec.urls().map(str::to_string).collect::<Vec<_>>() {
            if let Ok(parsed) = Url::parse(&u) {
                match adapter.delete(http, &parsed).await {
                    Ok(()) => deleted.push(u),
                    Err(e) => tracing::warn!(url = %u, error = ?e, "could not delete"),
                }
            }
        }
    }
    state.remove(key).map_err(local("writing the state"))?;
    Ok(deleted)
}
