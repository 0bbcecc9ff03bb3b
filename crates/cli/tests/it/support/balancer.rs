//! A round-robin load balancer for cluster tests that routes **every HTTP request** to the next
//! instance, not every connection: a client's keep-alive connection would otherwise pin an
//! upload to one instance. The next instance is never the one that served the same upload's
//! previous request (known by the id in the path, or the `Location` of its creation), so
//! every upload of two requests or more moves. Each request goes over a fresh connection to
//! its instance; bodies stream both ways. An instance that refuses connections (killed) is skipped for the
//! request, as nginx's `proxy_next_upstream error` does; one set aside by the test (paused)
//! gets nothing. Every routed request is logged, so a test can tell which instances an
//! upload touched.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One routed request.
#[derive(Debug, Clone)]
pub struct Routed {
    pub method: String,
    pub path: String,
    /// The instance (index into the backends) it went to.
    pub instance: usize,
    /// The answer's status; 0 while the instance has not answered.
    pub status: u16,
}

struct Shared {
    backends: Mutex<Vec<SocketAddr>>,
    /// Instances the test set aside (a paused process still accepts connections).
    aside: Mutex<BTreeSet<usize>>,
    next: AtomicUsize,
    log: Mutex<Vec<Routed>>,
    /// The instance that served each upload's latest request.
    last: Mutex<std::collections::HashMap<String, usize>>,
}

/// The upload id in a path or URL under `/files/` (tus, IETF) or `/chunks/` (chunk
/// sessions), if any.
fn upload_of(path: &str) -> Option<String> {
    let at = path.rfind("/files/").map(|i| i + 7);
    let at = at.or_else(|| path.rfind("/chunks/").map(|i| i + 8))?;
    let rest = &path[at..];
    let id = rest.split(['/', '?']).next()?;
    (!id.is_empty()).then(|| id.to_string())
}

pub struct Balancer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

impl Balancer {
    pub fn start(backends: Vec<SocketAddr>) -> Balancer {
        let shared = Arc::new(Shared {
            backends: Mutex::new(backends),
            aside: Mutex::default(),
            next: AtomicUsize::new(0),
            log: Mutex::default(),
            last: Mutex::default(),
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((conn, _)) = listener.accept().await else {
                            continue;
                        };
                        let s = s.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let s = s.clone();
                                async move { Ok::<_, std::convert::Infallible>(route(&s, req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
        });
        Balancer {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends nothing to instance `i` until [`restore`](Self::restore)d.
    pub fn set_aside(&self, i: usize) {
        self.shared.aside.lock().unwrap().insert(i);
    }

    pub fn restore(&self, i: usize) {
        self.shared.aside.lock().unwrap().remove(&i);
    }

    /// Instance `i` now listens at `addr` (restarted).
    pub fn replace(&self, i: usize, addr: SocketAddr) {
        self.shared.backends.lock().unwrap()[i] = addr;
    }

    /// The instance a `method` request is waiting on now (the latest such), if any.
    pub fn serving(&self, method: &str) -> Option<usize> {
        self.log()
            .iter()
            .rev()
            .find(|r| r.method == method && r.status == 0)
            .map(|r| r.instance)
    }

    /// Every request routed so far.
    pub fn log(&self) -> Vec<Routed> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The instances that served requests for upload `id` (its creation included).
    pub fn instances_for(&self, id: &str) -> BTreeSet<usize> {
        self.log()
            .iter()
            .filter(|r| r.path.contains(id))
            .map(|r| r.instance)
            .collect()
    }

    /// Asserts that every upload (a path under `/files/` or `/chunks/` with an id) touched
    /// two instances or more, and that there was at least one.
    pub fn assert_uploads_spread(&self) {
        let mut ids = BTreeSet::new();
        for r in self.log() {
            ids.extend(upload_of(&r.path));
        }
        assert!(!ids.is_empty(), "no upload went through the balancer");
        for id in ids {
            let touched = self.instances_for(&id);
            let requests: Vec<_> = self
                .log()
                .into_iter()
                .filter(|r| r.path.contains(&id))
                .collect();
            assert!(
                touched.len() >= 2,
                "upload {id} touched only instances {touched:?}: {requests:?}"
            );
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn plain(status: u16, text: &str) -> Response<Body> {
    let body = http_body_util::Full::new(bytes::Bytes::from(text.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

/// Sends `req` to the next instance that takes the connection.
async fn route(s: &Shared, req: Request<Incoming>) -> Response<Body> {
    let (method, path) = (req.method().to_string(), req.uri().to_string());
    let backends = s.backends.lock().unwrap().clone();
    let n = backends.len();
    let upload = upload_of(&path);
    let previous = upload
        .as_ref()
        .and_then(|u| s.last.lock().unwrap().get(u).copied());
    for attempt in 0..2 * n {
        let i = s.next.fetch_add(1, Ordering::Relaxed) % n;
        // The same upload's previous instance only when no other takes connections.
        if s.aside.lock().unwrap().contains(&i) || (attempt < n && Some(i) == previous) {
            continue;
        }
        let Ok(conn) = tokio::net::TcpStream::connect(backends[i]).await else {
            continue;
        };
        let io = hyper_util::rt::TokioIo::new(conn);
        let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(io).await else {
            continue;
        };
        tokio::spawn(connection);
        let entry = {
            let mut log = s.log.lock().unwrap();
            log.push(Routed {
                method,
                path,
                instance: i,
                status: 0,
            });
            log.len() - 1
        };
        let (status, resp) = match sender.send_request(req).await {
            Ok(resp) => (resp.status().as_u16(), resp.map(BodyExt::boxed)),
            // The instance died with the request on it.
            Err(_) => (502, plain(502, "the instance went away")),
        };
        // A creation is known by the Location it answers with: logged under its id too.
        let created = resp
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(upload_of);
        {
            let mut log = s.log.lock().unwrap();
            log[entry].status = status;
            if let Some(id) = &created {
                log[entry].path = format!("{} -> /files/{id}", log[entry].path);
            }
        }
        if let Some(id) = created.or(upload) {
            s.last.lock().unwrap().insert(id, i);
        }
        return resp;
    }
    plain(503, "no instance takes connections")
}
