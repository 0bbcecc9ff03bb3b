//! The upload driver: resolve the resume state, ask the server for the truth, send chunks,
//! retry, verify. One place decides retries (`wait_or_give_up`).

use crate::chunk::{ChunkBounds, ChunkSizeController, Outcome};
use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::identity::FileIdentity;
use crate::progress::{ProgressSink, RateLimiter};
use crate::retry::{RetryPolicy, RetryState};
use crate::source::{Activity, FileSource, SequentialHash, StreamHooks};
use crate::state::{
    Loaded, PartRecord, STATE_VERSION, StateDir, Transfer, UploadRecord, transfer_key,
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
    /// Compare the server's `Repr-Digest` with the file's SHA-256 at the end.
    pub verify: bool,
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
        }
    }
}

/// Whether the result was checked against the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The server's SHA-256 of the upload equals the file's.
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
    /// SHA-256 of the file.
    pub sha256: [u8; 32],
    /// Verification result.
    pub verification: Verification,
    /// Where this run started (0 unless resumed).
    pub resumed_from: u64,
}

/// Builds the HTTP client ferry uses: HTTP/1.1 (one TCP connection per stream), connect and
/// per-read timeouts rather than a whole-request limit.
pub fn http_client(
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    // The TLS stack needs a process-wide crypto provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .http1_only()
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::new(ErrorKind::Local, format!("cannot build HTTP client: {e}")))
}

/// Uploads files to tus servers, resuming from the state directory.
pub struct Uploader {
    http: reqwest::Client,
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
            state,
            opts,
            progress,
            cancel,
        }
    }

    /// Waits out a retryable failure, or ends the transfer: the one place retries are decided.
    async fn wait_or_give_up(
        &self,
        retry: &mut RetryState,
        err: AttemptError,
    ) -> Result<(), ClientError> {
        let (why, retry_after) = match err {
            AttemptError::Retry { why, retry_after } => (why, retry_after),
            AttemptError::Fatal(e) => return Err(e),
            AttemptError::Gone => {
                return Err(ClientError::new(
                    ErrorKind::Refused,
                    "the upload is gone on the server",
                ));
            }
            AttemptError::TooLarge { size } => {
                (format!("server refused a {size}-byte request"), None)
            }
        };
        let Some(delay) = retry.next_delay(Instant::now(), retry_after) else {
            return Err(ClientError::new(
                ErrorKind::Exhausted,
                format!(
                    "giving up after {} failed attempts without progress (last: {why}); \
                     run the same command again to resume",
                    retry.failures().saturating_sub(1)
                ),
            ));
        };
        self.progress
            .note(&format!("{why}; retrying in {:.1}s", delay.as_secs_f64()));
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = self.cancel.cancelled() => Err(interrupted()),
        }
    }

    /// Uploads `path` to the tus endpoint, resuming an earlier run of the same transfer.
    pub async fn upload(
        &self,
        path: &Path,
        endpoint: &Url,
        name: Option<&str>,
    ) -> Result<UploadOutcome, ClientError> {
        let started = Instant::now();
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
        let len = identity.size;
        let source = FileSource::new(file, len);
        let key = transfer_key("upload", endpoint.as_str(), &abs);
        let display = name.map_or_else(|| abs.display().to_string(), str::to_string);
        let mut retry = RetryState::new(self.opts.retry, Instant::now());

        let caps = loop {
            match tus::options(&self.http, endpoint).await {
                Ok(c) => break c,
                // Some servers answer OPTIONS poorly; the upload can still go ahead.
                Err(AttemptError::Gone | AttemptError::Fatal(_)) => {
                    break tus::ServerCaps::default();
                }
                Err(e) => self.wait_or_give_up(&mut retry, e).await?,
            }
        };
        if let Some(max) = caps.max_size
            && len > max
        {
            return Err(ClientError::new(
                ErrorKind::Refused,
                format!("{display} is {len} bytes; the server accepts at most {max}"),
            ));
        }
        let algorithm = match self.opts.checksum {
            ChecksumChoice::Auto => caps.checksum,
            ChecksumChoice::Off => None,
            ChecksumChoice::Use(a) => Some(a),
        };

        // Resume state: the same file to the same endpoint continues; a changed file starts over.
        let mut url = None;
        match self.state.load(&key).map_err(local("reading the state"))? {
            Loaded::Found(Transfer::Upload(rec)) if rec.identity == identity => {
                if let Some(p) = rec.parts.first() {
                    url = Url::parse(&p.url).ok();
                }
            }
            Loaded::Found(Transfer::Upload(rec)) => {
                self.progress.note(&format!(
                    "{display} changed since the last run; uploading it afresh"
                ));
                for p in &rec.parts {
                    if let Ok(u) = Url::parse(&p.url) {
                        let _ = tus::delete(&self.http, &u).await;
                    }
                }
                self.state
                    .remove(&key)
                    .map_err(local("writing the state"))?;
            }
            Loaded::Unusable(why) => {
                self.progress
                    .note(&format!("ignoring the saved state for {display}: {why}"));
            }
            Loaded::Missing => {}
        }

        let mut remote = None;
        if let Some(u) = &url {
            loop {
                match tus::head(&self.http, u, false).await {
                    Ok(r) if r.length.is_none_or(|l| l == len) => {
                        remote = Some(r);
                        break;
                    }
                    Ok(_) | Err(AttemptError::Gone) => {
                        self.progress
                            .note("the server no longer has the earlier upload; starting over");
                        url = None;
                        break;
                    }
                    Err(e) => self.wait_or_give_up(&mut retry, e).await?,
                }
            }
        }
        let url = match url {
            Some(u) => u,
            None => {
                let mut md = Metadata::default();
                if let Some(fname) = abs.file_name() {
                    let n =
                        name.map_or_else(|| fname.to_string_lossy().into_owned(), str::to_string);
                    md.insert("filename".into(), Some(n.into_bytes()))
                        .map_err(|e| ClientError::new(ErrorKind::Usage, e.to_string()))?;
                }
                for (k, v) in &self.opts.metadata {
                    md.insert(k.clone(), Some(v.clone()))
                        .map_err(|e| ClientError::new(ErrorKind::Usage, e.to_string()))?;
                }
                let u = loop {
                    match tus::create(&self.http, endpoint, len, &md, None).await {
                        Ok(u) => break u,
                        Err(e) => self.wait_or_give_up(&mut retry, e).await?,
                    }
                };
                let rec = UploadRecord {
                    version: STATE_VERSION,
                    key: key.clone(),
                    source: abs.clone(),
                    identity: identity.clone(),
                    endpoint: endpoint.to_string(),
                    protocol: "tus".into(),
                    created_ms: now_ms(),
                    parts: vec![PartRecord {
                        url: u.to_string(),
                        start: 0,
                        end: len,
                        done: false,
                    }],
                    final_url: None,
                };
                self.state
                    .save(&Transfer::Upload(rec))
                    .map_err(local("writing the state"))?;
                u
            }
        };
        let resumed_from = remote.as_ref().map_or(0, |r| r.offset);
        self.progress.start(&display, len, resumed_from);
        if resumed_from > 0 {
            self.progress
                .note(&format!("resuming {display} at byte {resumed_from}"));
        }

        let sequential = Arc::new(Mutex::new(SequentialHash::default()));
        let mut controller = ChunkSizeController::new(self.opts.chunk);
        let mut acked = 0u64;
        let mut known = remote;
        loop {
            if self.cancel.is_cancelled() {
                return Err(interrupted());
            }
            let r = match known.take() {
                Some(r) => r,
                None => match tus::head(&self.http, &url, false).await {
                    Ok(r) => r,
                    Err(AttemptError::Gone) => {
                        let _ = self.state.remove(&key);
                        return Err(ClientError::new(
                            ErrorKind::Refused,
                            format!(
                                "the server dropped the upload of {display} (expired or deleted); run again to start over"
                            ),
                        ));
                    }
                    Err(e) => {
                        self.wait_or_give_up(&mut retry, e).await?;
                        continue;
                    }
                },
            };
            if r.offset > acked {
                retry.progress(Instant::now());
                acked = r.offset;
            }
            self.progress.position(r.offset);
            if r.offset >= len {
                break;
            }
            let caught_up = sequential
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .position();
            if caught_up < r.offset {
                let seq = sequential.clone();
                source
                    .scan(caught_up, r.offset, move |at, b| {
                        seq.lock().unwrap_or_else(|p| p.into_inner()).feed(at, b);
                    })
                    .await
                    .map_err(local("reading the file"))?;
            }
            match self
                .send_from(
                    &url,
                    r.offset,
                    &source,
                    algorithm,
                    &sequential,
                    &mut controller,
                    &mut retry,
                    &mut acked,
                )
                .await
            {
                Ok(()) => {}
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
                    self.wait_or_give_up(&mut retry, e).await?;
                }
            }
        }

        // The file must not have changed underneath us.
        let now = FileIdentity::of(&abs).map_err(local("re-reading the file"))?;
        if !now.same_size_and_mtime(&identity) {
            return Err(ClientError::new(
                ErrorKind::FileChanged,
                format!(
                    "{display} changed during the upload, so the server's copy may mix old and new bytes; run again to upload it afresh"
                ),
            ));
        }
        let caught_up = sequential
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .position();
        if caught_up < len {
            let seq = sequential.clone();
            source
                .scan(caught_up, len, move |at, b| {
                    seq.lock().unwrap_or_else(|p| p.into_inner()).feed(at, b);
                })
                .await
                .map_err(local("reading the file"))?;
        }
        let sha256 = Arc::try_unwrap(sequential)
            .map_err(|_| ClientError::new(ErrorKind::Local, "hash still in use"))?
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .finish(len)
            .ok_or_else(|| ClientError::new(ErrorKind::Local, "file hash incomplete"))?;

        let verification = if self.opts.verify {
            self.verify(&url, &sha256, &mut retry).await?
        } else {
            Verification::NotVerified("verification was turned off".into())
        };
        self.state
            .remove(&key)
            .map_err(local("writing the state"))?;
        self.progress.finish();
        Ok(UploadOutcome {
            url: url.to_string(),
            bytes: len,
            seconds: started.elapsed().as_secs_f64(),
            sha256,
            verification,
            resumed_from,
        })
    }

    async fn verify(
        &self,
        url: &Url,
        sha256: &[u8; 32],
        retry: &mut RetryState,
    ) -> Result<Verification, ClientError> {
        let remote = loop {
            match tus::head(&self.http, url, true).await {
                Ok(r) => break r,
                Err(e) => self.wait_or_give_up(retry, e).await?,
            }
        };
        match remote.sha256 {
            Some(d) if d.as_slice() == sha256 => Ok(Verification::Verified),
            Some(d) => Err(ClientError::new(
                ErrorKind::Verification,
                format!(
                    "the server's copy differs from the file: server sha-256 {}, local {}",
                    hex(&d),
                    hex(sha256)
                ),
            )),
            None => Ok(Verification::NotVerified(
                "the server exposes no Repr-Digest, so the result was not verified".into(),
            )),
        }
    }

    /// Sends chunks from `offset` until the end or the first failure.
    #[allow(clippy::too_many_arguments)]
    async fn send_from(
        &self,
        url: &Url,
        mut offset: u64,
        source: &FileSource,
        algorithm: Option<ChecksumAlgorithm>,
        sequential: &Arc<Mutex<SequentialHash>>,
        controller: &mut ChunkSizeController,
        retry: &mut RetryState,
        acked: &mut u64,
    ) -> Result<(), AttemptError> {
        let len = source.len();
        while offset < len {
            let size = controller.next_size().min(len - offset);
            let end = offset + size;
            let checksum = match algorithm {
                Some(a) => Some(Checksum {
                    algorithm: a,
                    digest: source
                        .checksum(offset, end, a, sequential.clone())
                        .await
                        .map_err(|e| {
                            AttemptError::Fatal(ClientError::local("reading the file", e))
                        })?,
                }),
                None => None,
            };
            let activity = Arc::new(Activity::default());
            activity.touch();
            let progress = self.progress.clone();
            let hooks = StreamHooks {
                sequential: sequential.clone(),
                activity: activity.clone(),
                on_position: Arc::new(move |p| progress.position(p)),
                limiter: self.opts.limiter.clone(),
            };
            let body = reqwest::Body::wrap_stream(source.body(offset, end, hooks));
            let t0 = Instant::now();
            let stall = self.opts.stall_timeout;
            let sent = tokio::select! {
                r = tus::patch(&self.http, url, offset, size, body, checksum.as_ref()) => r,
                () = stalled(&activity, stall) => Err(AttemptError::retry(format!(
                    "no progress for {}s (stalled connection)", stall.as_secs()
                ))),
                () = self.cancel.cancelled() => Err(AttemptError::Fatal(interrupted())),
            };
            let new = sent?;
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
            self.progress.position(offset);
        }
        Ok(())
    }
}

/// Resolves once `activity` has been idle for `limit`.
async fn stalled(activity: &Activity, limit: Duration) {
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
    if let Loaded::Found(Transfer::Upload(rec)) =
        state.load(key).map_err(local("reading the state"))?
    {
        for u in rec
            .parts
            .iter()
            .map(|p| p.url.clone())
            .chain(rec.final_url.clone())
        {
            if let Ok(parsed) = Url::parse(&u) {
                match tus::delete(http, &parsed).await {
                    Ok(()) => deleted.push(u),
                    Err(e) => tracing::warn!(url = %u, error = ?e, "could not delete"),
                }
            }
        }
    }
    state.remove(key).map_err(local("writing the state"))?;
    Ok(deleted)
}
