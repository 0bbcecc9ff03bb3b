//! A server state on a temporary store (under /dev/shm when it exists) and requests sent
//! straight to [`ferry_server::dispatch`]: no socket, no process.

use async_trait::async_trait;
use axum::body::Body;
use bytes::Bytes;
use ferry_proto::UploadId;
use ferry_server::{AppState, Ctx, ServerConfig, dispatch};
use ferry_store::data::{
    ByteStream, DataCapabilities, DataStore, DataWriter, Fence, Locator, PendingWrite, WriteMode,
};
use ferry_store::local::LocalDataStore;
use ferry_store::lock::LocalLocker;
use ferry_store::meta::{MetaStore, Records, Transaction, Update};
use ferry_store::redb_meta::RedbMetaStore;
use ferry_store::uploads::ExpiryPolicy;
use ferry_store::{StoreError, SyncPolicy, UploadInfo, Uploads};
use http::{HeaderMap, Method, Request};
use http_body_util::BodyExt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest any one request may take before the test fails.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// The `Tus-Resumable` value.
pub const TUS: &str = "1.0.0";

/// Failures the data store produces on demand (each stays on until cleared).
#[derive(Debug, Default)]
pub struct Faults {
    /// `create` fails with this.
    pub create: Mutex<Option<io::ErrorKind>>,
    /// `open_writer` fails with this.
    pub open: Mutex<Option<io::ErrorKind>>,
    /// Every `write` fails with this.
    pub write: Mutex<Option<io::ErrorKind>>,
    /// `read` fails with this.
    pub read: Mutex<Option<io::ErrorKind>>,
    /// What `free_space` reports (else the real store's answer).
    pub free: Mutex<Option<u64>>,
    /// Every metadata `update` fails (as a broken database would).
    pub meta_update: Mutex<bool>,
    /// While set, `read` waits before it starts (as a slow disk would).
    pub read_stalled: Mutex<bool>,
    /// Records read through `get` so far.
    pub meta_gets: std::sync::atomic::AtomicUsize,
    /// What the data store declares it can do (else the local store's: everything).
    pub caps: Mutex<Option<DataCapabilities>>,
    /// `finish` fails with this (as an object store that is down would).
    pub finish: Mutex<Option<io::ErrorKind>>,
}

impl Faults {
    fn error(slot: &Mutex<Option<io::ErrorKind>>) -> Option<StoreError> {
        let kind = (*slot.lock().unwrap())?;
        // EIO has no kind of its own: an OS error keeps it "other", a 500.
        let e = if kind == io::ErrorKind::Other {
            io::Error::from_raw_os_error(5)
        } else {
            io::Error::from(kind)
        };
        Some(StoreError::from(e))
    }

    /// Every write fails with ENOSPC.
    pub fn disk_full(&self) {
        *self.write.lock().unwrap() = Some(io::ErrorKind::StorageFull);
    }

    /// Every write fails with EIO.
    pub fn write_eio(&self) {
        *self.write.lock().unwrap() = Some(io::ErrorKind::Other);
    }

    /// Every metadata update fails.
    pub fn meta_broken(&self) {
        *self.meta_update.lock().unwrap() = true;
    }

    /// Reads wait until [`resume_reads`](Self::resume_reads).
    pub fn stall_reads(&self) {
        *self.read_stalled.lock().unwrap() = true;
    }

    /// Stalled reads go on.
    pub fn resume_reads(&self) {
        *self.read_stalled.lock().unwrap() = false;
    }
}

/// Text of the injected metadata failure: no answer may carry it.
pub const META_FAILURE: &str = "injected redb failure at page 77";

/// The redb metadata store with [`Faults`] in front of it.
struct FaultyMeta {
    inner: RedbMetaStore,
    faults: Arc<Faults>,
}

#[async_trait]
impl MetaStore for FaultyMeta {
    async fn insert(&self, info: &UploadInfo) -> ferry_store::Result<()> {
        self.inner.insert(info).await
    }

    async fn get(&self, id: UploadId) -> ferry_store::Result<Option<UploadInfo>> {
        self.faults
            .meta_gets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.get(id).await
    }

    async fn update(&self, id: UploadId, update: Update) -> ferry_store::Result<UploadInfo> {
        if *self.faults.meta_update.lock().unwrap() {
            return Err(StoreError::Metadata(META_FAILURE.into()));
        }
        self.inner.update(id, update).await
    }

    async fn remove(&self, id: UploadId) -> ferry_store::Result<()> {
        self.inner.remove(id).await
    }

    async fn transact(&self, ids: Vec<UploadId>, tx: Transaction) -> ferry_store::Result<Records> {
        if *self.faults.meta_update.lock().unwrap() {
            return Err(StoreError::Metadata(META_FAILURE.into()));
        }
        self.inner.transact(ids, tx).await
    }

    async fn expired(
        &self,
        now: u64,
        after: Option<UploadId>,
        limit: usize,
    ) -> ferry_store::Result<Vec<UploadInfo>> {
        self.inner.expired(now, after, limit).await
    }

    async fn count_unfinished(&self) -> ferry_store::Result<u64> {
        self.inner.count_unfinished().await
    }

    async fn list(&self) -> ferry_store::Result<Vec<UploadInfo>> {
        self.inner.list().await
    }
}

/// The local data store with [`Faults`] in front of it.
struct FaultyData {
    inner: LocalDataStore,
    faults: Arc<Faults>,
}

#[async_trait]
impl DataStore for FaultyData {
    fn identity(&self) -> String {
        self.inner.identity()
    }

    fn capabilities(&self) -> DataCapabilities {
        (*self.faults.caps.lock().unwrap()).unwrap_or_else(|| self.inner.capabilities())
    }

    fn free_space(&self) -> Option<u64> {
        (*self.faults.free.lock().unwrap()).or_else(|| self.inner.free_space())
    }

    async fn create(
        &self,
        id: UploadId,
        durable: bool,
        length: Option<u64>,
    ) -> ferry_store::Result<Locator> {
        if let Some(e) = Faults::error(&self.faults.create) {
            return Err(e);
        }
        self.inner.create(id, durable, length).await
    }

    async fn open_writer(
        &self,
        id: UploadId,
        at: &Locator,
        mode: WriteMode,
        fence: Fence,
    ) -> ferry_store::Result<Box<dyn DataWriter>> {
        if let Some(e) = Faults::error(&self.faults.open) {
            return Err(e);
        }
        let inner = self.inner.open_writer(id, at, mode, fence).await?;
        Ok(Box::new(FaultyWriter {
            inner,
            faults: self.faults.clone(),
        }))
    }

    async fn finish(
        &self,
        id: UploadId,
        at: &Locator,
        length: u64,
    ) -> ferry_store::Result<Locator> {
        if let Some(e) = Faults::error(&self.faults.finish) {
            return Err(e);
        }
        self.inner.finish(id, at, length).await
    }

    fn past_reserved(&self, at: &Locator, fence: &Fence) -> ferry_store::Result<Locator> {
        self.inner.past_reserved(at, fence)
    }

    fn merge_locators(
        &self,
        recorded: &Locator,
        written: &Locator,
    ) -> ferry_store::Result<Locator> {
        self.inner.merge_locators(recorded, written)
    }

    async fn read(
        &self,
        id: UploadId,
        at: &Locator,
        start: u64,
        end: u64,
    ) -> ferry_store::Result<ByteStream> {
        if let Some(e) = Faults::error(&self.faults.read) {
            return Err(e);
        }
        while *self.faults.read_stalled.lock().unwrap() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.inner.read(id, at, start, end).await
    }

    async fn delete(&self, id: UploadId, at: &Locator) -> ferry_store::Result<()> {
        self.inner.delete(id, at).await
    }

    fn derived_locator(&self, id: UploadId) -> Option<Locator> {
        self.inner.derived_locator(id)
    }

    async fn inventory(&self) -> ferry_store::Result<Vec<(UploadId, u64)>> {
        self.inner.inventory().await
    }

    async fn holds(
        &self,
        id: UploadId,
        at: &Locator,
    ) -> ferry_store::Result<Option<ferry_store::data::Holding>> {
        self.inner.holds(id, at).await
    }

    async fn reconcile(
        &self,
        owner: &ferry_store::data::Owner<'_>,
        cutoff: Option<u64>,
    ) -> ferry_store::Result<usize> {
        self.inner.reconcile(owner, cutoff).await
    }
}

struct FaultyWriter {
    inner: Box<dyn DataWriter>,
    faults: Arc<Faults>,
}

#[async_trait]
impl DataWriter for FaultyWriter {
    fn position(&self) -> u64 {
        self.inner.position()
    }

    fn write(&mut self, buf: Vec<u8>) -> PendingWrite {
        match Faults::error(&self.faults.write) {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.write(buf),
        }
    }

    async fn checkpoint(&mut self, durable: bool) -> ferry_store::Result<Locator> {
        self.inner.checkpoint(durable).await
    }
}

/// How a test server is set up.
pub struct Setup {
    /// Server settings.
    pub config: ServerConfig,
    /// How long a request waits for the current holder of an upload.
    pub patience: Duration,
    /// When uploads expire.
    pub expiry: ExpiryPolicy,
    /// Publish a directory under `/share/` (filled by the test through [`Srv::share_dir`]).
    pub share: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            config: ServerConfig::default(),
            patience: Duration::from_secs(10),
            expiry: ExpiryPolicy::default(),
            share: false,
        }
    }
}

/// One in-process server.
pub struct Srv {
    /// What every request sees.
    pub state: Arc<AppState>,
    /// Failures to switch on.
    pub faults: Arc<Faults>,
    dir: tempfile::TempDir,
}

fn tempdir() -> tempfile::TempDir {
    let b = tempfile::Builder::new()
        .prefix("ferry-handlers-")
        .tempdir_in("/dev/shm");
    b.or_else(|_| tempfile::tempdir())
        .expect("temporary directory")
}

impl Srv {
    /// Default settings.
    pub fn new() -> Srv {
        Srv::with(Setup::default())
    }

    /// Default settings changed by `f`.
    pub fn config(f: impl FnOnce(&mut ServerConfig)) -> Srv {
        let mut s = Setup::default();
        f(&mut s.config);
        Srv::with(s)
    }

    /// These settings.
    pub fn with(setup: Setup) -> Srv {
        let dir = tempdir();
        let faults = Arc::new(Faults::default());
        let data = FaultyData {
            inner: LocalDataStore::open(dir.path()).unwrap(),
            faults: faults.clone(),
        };
        let meta = FaultyMeta {
            inner: RedbMetaStore::open(&dir.path().join("ferry.redb")).unwrap(),
            faults: faults.clone(),
        };
        let uploads = Uploads::new(
            Arc::new(data),
            Arc::new(meta),
            Arc::new(LocalLocker::new(setup.patience)),
            SyncPolicy::Always,
        )
        .with_expiry(setup.expiry);
        let mut state = AppState::new(uploads, setup.config, CancellationToken::new());
        if setup.share {
            let share = dir.path().join("share");
            std::fs::create_dir_all(&share).unwrap();
            state.share = Some(ferry_server::share::Share::open(&share).unwrap());
        }
        Srv {
            state: Arc::new(state),
            faults,
            dir,
        }
    }

    /// The published directory (with `Setup::share`).
    pub fn share_dir(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    /// Sends `r` through the router and reads the whole answer.
    pub async fn send(&self, r: Req) -> Resp {
        let fut = self.start(r);
        fut.await
    }

    /// Sends `r`; the returned future answers when awaited (for requests that run while the
    /// test does something else).
    pub fn start(&self, r: Req) -> impl std::future::Future<Output = Resp> + Send + 'static {
        let state = self.state.clone();
        let mut b = Request::builder().method(r.method).uri(r.uri);
        for (k, v) in r.headers {
            b = b.header(k, v);
        }
        let req = b.body(r.body).expect("request");
        let ctx = Ctx {
            peer: "127.0.0.1:40000".parse().unwrap(),
        };
        async move {
            let answer = async {
                let resp = dispatch(state, ctx, req).await;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.map(|c| c.to_bytes());
                Resp {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body: body.unwrap_or_else(|e| panic!("response body failed: {e}")),
                }
            };
            tokio::time::timeout(REQUEST_LIMIT, answer)
                .await
                .expect("request took too long")
        }
    }

    /// Sets an upload's expiry in the past (as if its time ran out).
    pub async fn expire(&self, path: &str) {
        let id = id_of(path);
        self.state
            .uploads
            .meta()
            .update(
                id,
                Box::new(|i| {
                    i.expires_ms = Some(1);
                    Ok(())
                }),
            )
            .await
            .unwrap();
    }

    /// A tus upload of `length` bytes (deferred when `None`); its path.
    pub async fn tus_upload(&self, length: Option<u64>) -> String {
        let r = req("POST", "/files/").tus();
        let r = match length {
            Some(l) => r.h("upload-length", &l.to_string()),
            None => r.h("upload-defer-length", "1"),
        };
        let resp = self.send(r).await;
        assert_eq!(resp.status, 201, "{resp:?}");
        path_of(resp.h("location"))
    }

    /// A tus partial upload holding `data`, finished; its path.
    pub async fn partial(&self, data: &[u8]) -> String {
        let resp = self
            .send(
                req("POST", "/files/")
                    .tus()
                    .h("upload-concat", "partial")
                    .h("upload-length", &data.len().to_string()),
            )
            .await;
        assert_eq!(resp.status, 201, "{resp:?}");
        let path = path_of(resp.h("location"));
        if !data.is_empty() {
            let resp = self.send(patch(&path, 0, data)).await;
            assert_eq!(resp.status, 204, "{resp:?}");
        }
        path
    }

    /// A finished tus upload holding `data`; its path.
    pub async fn finished(&self, data: &[u8]) -> String {
        let path = self.tus_upload(Some(data.len() as u64)).await;
        if !data.is_empty() {
            let resp = self.send(patch(&path, 0, data)).await;
            assert_eq!(resp.status, 204, "{resp:?}");
        }
        path
    }

    /// A chunk session (length given or not); its path.
    pub async fn session(&self, length: Option<u64>) -> String {
        let mut r = req("POST", "/chunks/");
        if let Some(l) = length {
            r = r.h("upload-length", &l.to_string());
        }
        let resp = self.send(r).await;
        assert_eq!(resp.status, 201, "{resp:?}");
        path_of(resp.h("location"))
    }
}

/// A tus PATCH of `data` at `offset`.
pub fn patch(path: &str, offset: u64, data: &[u8]) -> Req {
    req("PATCH", path)
        .tus()
        .h("content-type", "application/offset+octet-stream")
        .h("upload-offset", &offset.to_string())
        .body(data.to_vec())
}

/// The id in an upload's path.
pub fn id_of(path: &str) -> UploadId {
    UploadId::parse(path.rsplit('/').next().unwrap()).unwrap()
}

/// The path of an absolute URL.
pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..].to_string(),
        None => "/".into(),
    }
}

/// A request to build.
pub struct Req {
    method: Method,
    uri: String,
    headers: Vec<(String, String)>,
    body: Body,
}

/// A request with no headers and no body.
pub fn req(method: &str, uri: &str) -> Req {
    Req {
        method: Method::from_bytes(method.as_bytes()).unwrap(),
        uri: uri.into(),
        headers: Vec::new(),
        body: Body::empty(),
    }
}

impl Req {
    /// Adds a header (again if already there).
    pub fn h(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds `Tus-Resumable: 1.0.0`.
    pub fn tus(self) -> Req {
        self.h("tus-resumable", TUS)
    }

    /// Adds `Upload-Draft-Interop-Version`.
    pub fn ietf(self, interop: u32) -> Req {
        self.h("upload-draft-interop-version", &interop.to_string())
    }

    /// A body of known length.
    pub fn body(mut self, data: impl Into<Bytes>) -> Req {
        self.body = Body::from(data.into());
        self
    }

    /// A body of unknown length (as with chunked transfer coding).
    pub fn chunked(mut self, data: impl Into<Bytes>) -> Req {
        let data: Bytes = data.into();
        self.body = Body::from_stream(futures_util::stream::once(async move {
            Ok::<_, io::Error>(data)
        }));
        self
    }

    /// Any body.
    pub fn raw_body(mut self, body: Body) -> Req {
        self.body = body;
        self
    }
}

/// A body the test feeds piece by piece: [`Feed::send`] returns once the server has taken the
/// piece (the channel holds one piece at most, so a second `reserve` waits for the first to go).
pub struct Feed {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
}

/// A body fed by the test, of unknown length.
pub fn fed_body() -> (Feed, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (Feed { tx }, Body::from_stream(stream))
}

impl Feed {
    /// Hands `data` to the server and waits until the server has taken it.
    pub async fn send(&self, data: &[u8]) {
        self.tx
            .send(Ok(Bytes::copy_from_slice(data)))
            .await
            .expect("body dropped");
        // The channel holds one piece: room again means the server took it.
        drop(self.tx.reserve().await.expect("body dropped"));
    }

    /// Sends `piece` every `every`, `pieces` times, then ends the body (drops the feed).
    pub fn drip(
        self,
        piece: &'static [u8],
        every: Duration,
        pieces: usize,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for _ in 0..pieces {
                self.send(piece).await;
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Breaks the body (as a connection reset would).
    pub async fn fail(&self) {
        let _ = self
            .tx
            .send(Err(io::Error::other("connection reset")))
            .await;
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Resp {
    /// A header's value ("" when absent).
    pub fn h(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// Whether the header is present.
    pub fn has(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the connection is to be closed after this answer.
    pub fn closes(&self) -> bool {
        self.h("connection").eq_ignore_ascii_case("close")
    }
}
