//! ferry's HTTP server.
//!
//! Requests are routed by hand (see [`dispatch`]) so that ids go through the one strict id
//! parser before anything else, the tus method override applies before routing, and every
//! route shares one error mapping ([`error::ApiError`]). tus and the IETF draft share `/files/`
//! (a request with `Upload-Draft-Interop-Version` goes to [`ietf`]). Protocol modules translate HTTP into
//! calls on [`ferry_store::Uploads`], which owns storage and durability.

pub mod admission;
pub mod chunks;
pub mod config;
pub mod conn;
pub mod download;
pub mod edge;
pub mod error;
mod headers;
pub mod ietf;
mod lookup;
pub(crate) mod pipeline;
pub mod ranged;
pub mod receive;
pub mod share;
pub mod tus;

pub use config::ServerConfig;

use axum::body::Body;
use error::ApiError;
use ferry_proto::UploadId;
use ferry_proto::http as http_grammar;
use ferry_store::Uploads;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Shared by every request.
#[derive(Debug)]
pub struct AppState {
    /// The upload engine.
    pub uploads: Uploads,
    /// Settings.
    pub config: ServerConfig,
    /// Cancelled when the server shuts down: bodies in flight commit and answer.
    pub shutdown: CancellationToken,
    /// The directory published under `/share/`, if any.
    pub share: Option<share::Share>,
    /// Wakes the expiry sweeper at once (the CLI wires SIGUSR1 to it; tests use it instead
    /// of waiting for expiry in real time).
    pub sweep_now: tokio::sync::Notify,
    /// Creations per client address, if limited.
    pub creations: Option<admission::CreationLimiter>,
    /// The host of `--public-url` (lowercase), which the host check always allows.
    public_host: Option<String>,
}

impl AppState {
    /// Binds the engine and settings.
    pub fn new(uploads: Uploads, config: ServerConfig, shutdown: CancellationToken) -> Self {
        Self {
            // The store enforces the size limit where bytes are counted, on every protocol, and
            // counts unfinished uploads.
            uploads: uploads
                .with_max_size(config.max_size)
                .with_max_unfinished(config.max_unfinished)
                .with_buffer_budget(config.buffer_memory),
            creations: config.creation_rate.map(admission::CreationLimiter::new),
            public_host: config
                .public_url
                .as_deref()
                .and_then(|u| u.parse::<http::Uri>().ok())
                .and_then(|u| {
                    u.authority()
                        .and_then(|a| http_grammar::host_name(a.as_str()))
                }),
            config,
            shutdown,
            share: None,
            sweep_now: tokio::sync::Notify::new(),
        }
    }
}

/// Deletes expired uploads every `sweep_interval`, or at once when `sweep_now` is notified,
/// until shutdown.
pub async fn run_sweeper(state: Arc<AppState>) {
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = tokio::time::sleep(state.config.sweep_interval) => {}
            () = state.sweep_now.notified() => {}
        }
        match state
            .uploads
            .sweep_expired(ferry_store::model::now_ms())
            .await
        {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(count = gone.len(), "expired uploads deleted");
            }
            Ok(_) => tracing::debug!("sweep: nothing expired"),
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
        if let Some(c) = &state.creations {
            c.forget_idle();
        }
    }
}

/// Removes leftovers older than `reconcile_grace` every `reconcile_interval`, until shutdown
/// (the startup pass, before serving, removes them whatever their age).
pub async fn run_reconciler(state: Arc<AppState>) {
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = tokio::time::sleep(state.config.reconcile_interval) => {}
        }
        let grace = u64::try_from(state.config.reconcile_grace.as_millis()).unwrap_or(u64::MAX);
        let cutoff = ferry_store::model::now_ms().saturating_sub(grace);
        match state.uploads.reconcile(Some(cutoff)).await {
            Ok(0) => tracing::debug!("reconciler: no leftovers"),
            Ok(n) => tracing::info!(count = n, "leftovers removed"),
            Err(e) => tracing::warn!(error = %e, "reconciler failed"),
        }
    }
}

impl AppState {
    /// Takes one creation from the client's budget (429 with `Retry-After` when spent).
    pub(crate) fn admit_creation(&self, ctx: &Ctx, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.creations {
            Some(limiter) => limiter.check(self.client(ctx, headers)),
            None => Ok(()),
        }
    }

    /// Records who created `info`, so that its token comes back if it finishes soon.
    pub(crate) fn created(&self, ctx: &Ctx, headers: &HeaderMap, info: &ferry_store::UploadInfo) {
        // The one line that ties a tag to its id: info-level lines show only the tag.
        tracing::debug!(upload = %info.id.tag(), id = %info.id, "upload created");
        if let Some(limiter) = &self.creations {
            limiter.created(self.client(ctx, headers), info.id);
            self.finished(info);
        }
    }

    /// Called with an upload's state after a request wrote it: a finished upload that holds
    /// bytes gives its creation token back (an empty one is a free record: it does not).
    pub(crate) fn finished(&self, info: &ferry_store::UploadInfo) {
        if let Some(limiter) = &self.creations
            && info.is_complete()
            && info.offset > 0
        {
            limiter.finished(info.id);
        }
    }

    fn client(&self, ctx: &Ctx, headers: &HeaderMap) -> std::net::IpAddr {
        admission::client_of(ctx.peer.ip(), headers, self.config.trust_proxy)
    }
}

/// Per-connection facts a handler may need.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// The client's address.
    pub peer: SocketAddr,
}

impl AppState {
    /// The URL of an upload for `Location`: see [`resource_url`](Self::resource_url).
    pub fn upload_url(&self, headers: &HeaderMap, id: UploadId) -> String {
        self.resource_url(headers, "files", id)
    }

    /// The URL of `{base}/{collection}/{id}` for `Location`: absolute under `--public-url`, or
    /// from the host and scheme the trusted proxy appended under `--trust-proxy`; else a path,
    /// which clients resolve against the URL they asked (RFC 9110 §10.2.2). Never built from
    /// `Host`: a client chooses that, and a URL naming its choice would send the bytes of
    /// whoever follows the URL there.
    pub fn resource_url(&self, headers: &HeaderMap, collection: &str, id: UploadId) -> String {
        let path = format!("{}/{collection}/{id}", self.config.base_path);
        if let Some(origin) = &self.config.public_url {
            return format!("{origin}{path}");
        }
        if self.config.trust_proxy
            && let Some((proto, Some(host))) = forwarded(headers)
        {
            let scheme = proto.as_deref().unwrap_or("http");
            return format!("{scheme}://{host}{path}");
        }
        path
    }

    /// The origins (`host[:port]`) an absolute URL of this server may name besides
    /// `--public-url`: the request's own `Host`, and what the trusted proxy forwarded.
    pub(crate) fn own_authorities(&self, headers: &HeaderMap) -> Vec<String> {
        let mut out: Vec<String> = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(valid_authority)
            .into_iter()
            .collect();
        if self.config.trust_proxy
            && let Some((_, Some(host))) = forwarded(headers)
        {
            out.push(host);
        }
        out
    }
}

/// A Host-like value, accepted only if it parses as a URI authority without userinfo.
fn valid_authority(s: &str) -> Option<String> {
    let a: http::uri::Authority = s.trim().parse().ok()?;
    if a.as_str().contains('@') {
        return None;
    }
    Some(a.as_str().to_string())
}

/// The last field line of `name`: a proxy that adds a line rather than appending to the
/// client's puts its own last (RFC 9110 §5.3: the lines form one list, in order).
pub(crate) fn last_field<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(name)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
}

/// Proto and host from `Forwarded` (RFC 7239) or `X-Forwarded-Proto/Host`: what the proxy
/// nearest this server appended (the last element).
fn forwarded(headers: &HeaderMap) -> Option<(Option<String>, Option<String>)> {
    let text = |name: &str| last_field(headers, name);
    let f = match text("forwarded") {
        Some(v) => http_grammar::parse_forwarded(v),
        None => {
            http_grammar::parse_x_forwarded(text("x-forwarded-proto"), text("x-forwarded-host"))?
        }
    };
    Some((
        f.proto.map(|p| p.as_str().to_string()),
        f.host.and_then(valid_authority),
    ))
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        .with_header(header::ALLOW, allow)
}

/// Request headers a browser may send (CORS preflight answer).
const CORS_ALLOW_HEADERS: &str = "Authorization, Content-Type, Origin, X-Requested-With, \
X-HTTP-Method-Override, Tus-Resumable, Upload-Length, Upload-Offset, Upload-Metadata, \
Upload-Defer-Length, Upload-Concat, Upload-Checksum, Upload-Complete, Upload-Incomplete, \
Upload-Draft-Interop-Version, Content-Range, Range, If-Range, If-Match, If-None-Match, \
Want-Repr-Digest, Repr-Digest, Content-Digest, Content-Disposition";

/// Response headers a browser script may read.
const CORS_EXPOSE_HEADERS: &str = "Location, Upload-Offset, Upload-Length, Upload-Metadata, \
Upload-Defer-Length, Upload-Concat, Upload-Expires, Upload-Checksum, Tus-Resumable, \
Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, Upload-Complete, \
Upload-Incomplete, Upload-Limit, Accept-Patch, Upload-Draft-Interop-Version, Repr-Digest, \
Content-Range, Accept-Ranges, ETag, Last-Modified, Content-Disposition, Retry-After, \
Upload-Ranges, Range";

/// Methods a browser may use.
const CORS_ALLOW_METHODS: &str = "POST, HEAD, PATCH, OPTIONS, GET, DELETE, PUT";

/// Routes one request.
pub async fn dispatch(state: Arc<AppState>, ctx: Ctx, req: Request<Body>) -> Response<Body> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let preflight = req.method() == Method::OPTIONS
        && origin.is_some()
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let rules = edge::HostRules {
        bound: state.config.local_addr.map(|a| a.ip()),
        public_host: state.public_host.as_deref(),
        policy: &state.config.allowed_hosts,
    };
    if let Err(e) = edge::check(&req, rules, &state.config.cors) {
        let mut r = e.into_response();
        r.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if matches!(state.config.cors, config::Cors::Origins(_)) {
            r.headers_mut()
                .append(header::VARY, HeaderValue::from_static("Origin"));
        }
        return r;
    }
    let mut resp = if preflight {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    } else {
        route(state.clone(), ctx, req)
            .await
            .unwrap_or_else(ApiError::into_response)
    };
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The answer depends on Origin under a list: caches must know.
    if matches!(state.config.cors, config::Cors::Origins(_)) {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if let Some(allowed) = origin.and_then(|o| state.config.cors.allow(&o))
        && let Ok(v) = HeaderValue::from_str(&allowed)
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(CORS_ALLOW_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(CORS_ALLOW_HEADERS),
            );
            // Browsers cap this (Chrome: 2 h); a day costs nothing.
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
        } else {
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(CORS_EXPOSE_HEADERS),
            );
        }
    }
    resp
}

async fn route(
    state: Arc<AppState>,
    ctx: Ctx,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let method = tus::effective_method(&req)?;
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix(state.config.base_path.as_str()) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not found"));
    };
    // Upload bodies are stored as sent: a coded one (gzip, ...) would be stored coded, with
    // offsets counting coded bytes. Refused before any protocol handler reads it. (Reads carry
    // no content, so the header means nothing on them.)
    if (rest.starts_with("/files") || rest.starts_with("/chunks"))
        && matches!(*req.method(), Method::POST | Method::PATCH | Method::PUT)
        && let Some(value) = req.headers().get(header::CONTENT_ENCODING)
    {
        let value = String::from_utf8_lossy(value.as_bytes());
        if let Some(coding) = http_grammar::content_coding(&value) {
            let err = ApiError::unsupported_encoding(coding);
            return Err(if ietf::is_ietf(req.headers()) {
                err.without_tus()
            } else {
                err
            });
        }
    }
    match rest {
        "/healthz" => {
            if method != Method::GET && method != Method::HEAD {
                return Err(method_not_allowed("GET, HEAD"));
            }
            Ok(Response::new(Body::from("ok\n")))
        }
        // Redirected only for reading: a client following a 301 may turn a POST into a GET.
        "/share" if method != Method::GET && method != Method::HEAD => {
            Err(method_not_allowed("GET, HEAD"))
        }
        "/share" => Err(ApiError::new(StatusCode::MOVED_PERMANENTLY, "see /share/")
            .with_header(header::LOCATION, format!("{path}/"))),
        s if s.starts_with("/share/") => {
            share::serve(
                state.clone(),
                &s["/share/".len()..],
                &method,
                req.headers(),
                &path,
            )
            .await
        }
        // The IETF draft shares the endpoint; its requests say so with their interop version.
        "/files" | "/files/" if ietf::is_ietf(req.headers()) => {
            ietf::collection(state, &ctx, &method, req).await
        }
        // Chunk sessions write anywhere in an upload: only on a store that can.
        s if (s == "/chunks" || s.starts_with("/chunks/"))
            && !state.uploads.capabilities().random_access =>
        {
            let e = ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "this server's storage cannot write at arbitrary positions, so Content-Range \
                 chunk sessions are off: upload with tus or the IETF draft at /files/",
            );
            // Its body is never read: the connection cannot carry another request.
            Err(if headers::has_body(&req) {
                e.closing()
            } else {
                e
            })
        }
        // Content-Range chunk sessions: their own route family, announced nowhere in tus.
        "/chunks" | "/chunks/" => match method {
            Method::OPTIONS => Ok(chunks::options(&state)),
            Method::POST => chunks::create(state, &ctx, req).await,
            _ => Err(method_not_allowed(chunks::COLLECTION_METHODS)),
        },
        s if s.starts_with("/chunks/") => {
            let id = UploadId::parse(&s["/chunks/".len()..]).map_err(|_| ApiError::not_found())?;
            chunks::session(state, id, method, req).await
        }
        "/files" | "/files/" => match method {
            Method::OPTIONS => Ok(tus::options(&state)),
            Method::POST => tus::create(state, &ctx, req).await,
            _ => Err(method_not_allowed(tus::COLLECTION_METHODS)),
        },
        _ => {
            let Some(raw_id) = rest.strip_prefix("/files/") else {
                return Err(ApiError::new(StatusCode::NOT_FOUND, "not found"));
            };
            // The one strict id parser: anything but 32 lowercase hex chars is unknown.
            let id = UploadId::parse(raw_id).map_err(|_| ApiError::not_found())?;
            if ietf::is_ietf(req.headers()) {
                return ietf::resource(state, id, &method, req).await;
            }
            match method {
                Method::OPTIONS => Ok(tus::options(&state)),
                // A plain HTTP HEAD (no Tus-Resumable: curl -I, download clients) is answered
                // as GET would be (RFC 9110 §9.3.2): the download's headers, or its 404, 409
                // (with Upload-Offset) or 410.
                Method::HEAD if !req.headers().contains_key(ferry_proto::tus::TUS_RESUMABLE) => {
                    download::get(state, id, &method, req.headers()).await
                }
                Method::HEAD => tus::head(state, id, req).await,
                Method::PATCH => tus::patch(state, id, req).await,
                Method::DELETE => tus::delete(state, id, req).await,
                Method::GET => download::get(state, id, &method, req.headers()).await,
                _ => Err(method_not_allowed(tus::UPLOAD_METHODS)),
            }
        }
    }
}

/// Largest request head (request line and headers) accepted when `Upload-Metadata` may be up
/// to `max_metadata` bytes; larger heads get 431 and the connection is closed. Without a bound
/// hyper stops only at its read buffer, so one request could make the server buffer and parse
/// hundreds of KB of headers. The metadata plus 16 KiB for every other header, and at least
/// 32 KiB: with the default 16 KiB of metadata (a 10 KB file name is ~14 KB of base64), 32 KiB.
pub fn max_head_bytes(max_metadata: usize) -> usize {
    (max_metadata + 16 * 1024).max(32 * 1024)
}

/// Most a connection's read buffer grows to while few connections are open (hyper's default is
/// ~400 KiB): one upload's throughput is the same as at 400 KiB (server CPU for 1 GiB:
/// 1.13–1.23 s at 128 KiB, 1.14–1.16 s at 400 KiB), and 32 KiB costs it about 15 % more
/// server CPU (`scripts/bench-ab.sh`, 6 rounds: 1.36–1.66 s against 1.16–1.40 s).
pub(crate) const READ_BUFFER_BYTES: usize = 128 * 1024;

/// Read buffer of connections accepted while [`FULL_READ_BUFFERS_AT_ONCE`] or more are open:
/// hyper reads a little of each body before the handler asks for it, growing the buffer up
/// to its limit, so at 1,000 uploads at once 128 KiB each is ~125 MiB alone; 32 KiB keeps
/// the whole server under 100 MiB.
const SMALL_READ_BUFFER_BYTES: usize = 32 * 1024;

/// Open connections from which new ones get the small read buffer.
const FULL_READ_BUFFERS_AT_ONCE: usize = 16;

/// The read buffer of a request's connection, as a request extension: a body's reader counts
/// it against the server's buffer budget.
#[derive(Debug, Clone, Copy)]
pub struct ReadBuffer(pub usize);

/// The read buffer of `req`'s connection ([`READ_BUFFER_BYTES`] if unknown).
pub(crate) fn read_buffer_of<B>(req: &Request<B>) -> usize {
    req.extensions()
        .get::<ReadBuffer>()
        .map_or(READ_BUFFER_BYTES, |r| r.0)
}

/// Accepts connections until `state.shutdown` is cancelled, then stops accepting and waits
/// for open connections to finish (bodies in flight commit and answer as they see the same
/// token). The caller bounds that wait. Connections past the cap are shed (see [`conn`]).
pub async fn serve(listener: TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let head = max_head_bytes(state.config.max_metadata);
    let builder = |read_buffer: usize, timeout: std::time::Duration, keep_alive: bool| {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .max_headers(100)
            .max_header_size(head)
            .max_buf_size(read_buffer.max(head))
            .keep_alive(keep_alive);
        (b, read_buffer.max(head))
    };
    let timeout = state.config.header_read_timeout;
    let full = builder(READ_BUFFER_BYTES, timeout, true);
    let small = builder(SMALL_READ_BUFFER_BYTES, timeout, true);
    let (shed_http, _) = builder(SMALL_READ_BUFFER_BYTES, SHED_HEADER_TIMEOUT, false);
    let limits = state.config.connections;
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let shed = Arc::new(conn::Shedder::default());
    let mut failures = 0u32;
    loop {
        let accepted = tokio::select! {
            biased;
            () = state.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                failures = 0;
                x
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning (and logging) in a loop.
                let wait = conn::accept_backoff(failures);
                if failures == 0 {
                    tracing::warn!(error = %e, "accept failed; backing off");
                }
                failures = failures.saturating_add(1);
                tokio::select! {
                    () = state.shutdown.cancelled() => break,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = Ctx { peer };
        let open = limits.max_connections - permits.available_permits();
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            let (io, linger) = conn::Lingering::new(stream, limits, permit);
            let st = state.clone();
            let (http, read_buffer) = if open < FULL_READ_BUFFERS_AT_ONCE {
                &full
            } else {
                &small
            };
            let read_buffer = ReadBuffer(*read_buffer);
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let st = st.clone();
                let linger = linger.clone();
                req.extensions_mut().insert(read_buffer);
                async move {
                    let resp = dispatch(st, ctx, req.map(Body::new)).await;
                    // An answer that closes the connection may leave the body unread.
                    if resp
                        .headers()
                        .get(header::CONNECTION)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
                    {
                        linger.set();
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = graceful.watch(http.serve_connection(TokioIo::new(io), svc));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
            });
        } else {
            let place = shed.take();
            let base = state.config.base_path.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let healthz = req.uri().path().strip_prefix(base.as_str()) == Some("/healthz");
                async move { Ok::<_, Infallible>(shed_response(healthz)) }
            });
            let conn = shed_http.serve_connection(TokioIo::new(stream), svc);
            tokio::spawn(async move {
                tokio::select! {
                    _ = conn => {}
                    () = place.evicted() => {}
                }
            });
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// How long a shed connection may take to send its request line and headers.
const SHED_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The answer on the shedding tier: alive for `/healthz`, "retry" for everything else.
fn shed_response(healthz: bool) -> Response<Body> {
    if healthz {
        return Response::new(Body::from("ok\n"));
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is at its connection limit; retry",
    )
    .with_header(header::RETRY_AFTER, 1)
    .closing()
    .into_response()
}
