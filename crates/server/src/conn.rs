//! Connections: how many are served at once, what happens past that, backoff when accepting
//! fails, and the lingering close that lets a client read an answer sent before its body was
//! read.
//!
//! - **Cap.** Each connection holds a permit of [`ConnLimits::max_connections`]. Past the cap a
//!   few more are accepted on a shedding tier that answers `/healthz` and gives everything else
//!   a 503 with `Retry-After`, so a monitor still sees the server alive; when that tier is
//!   full, its oldest connection makes room ([`Shedder`]). The default cap leaves file descriptors for the data files
//!   of the uploads being written and for that tier ([`default_max_connections`]).
//! - **Accept errors** (EMFILE and friends) back off exponentially instead of spinning.
//! - **Lingering close.** When the server closes a connection whose request body it did not
//!   read (an early 409, 413, 415, ...), closing at once would make the kernel answer the
//!   unread bytes with a reset, and a client that sends its whole body before reading (Python's
//!   http.client, many embedded stacks) would see the reset instead of the answer. So the write
//!   side is shut down (FIN after the answer) and what the client still sends is read and
//!   discarded for a bounded time, as nginx's `lingering_time` / `lingering_timeout` do. This
//!   happens below HTTP: hyper never polls the unread body, so it never sends a
//!   `100 Continue` the server did not mean.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

/// Bounds on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest a closing connection keeps reading (and discarding) what its client sends.
    pub lingering_time: Duration,
    /// Longest wait for the next bytes while lingering: a client that has stopped sending is
    /// closed sooner.
    pub lingering_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(open_files_limit()),
            lingering_time: Duration::from_secs(30),
            lingering_timeout: Duration::from_secs(5),
        }
    }
}

/// Connections accepted past the cap to answer `/healthz` and tell the rest to retry.
pub const SHED_CONNECTIONS: usize = 32;

/// File descriptors kept for everything but connections: the metadata database, logs, the
/// listener, digest read-backs, the shedding tier.
const RESERVED_FDS: u64 = 64 + SHED_CONNECTIONS as u64;

/// The most connections the default allows, whatever the file limit: each one may cost a
/// read buffer and a task, and no single machine serves more useful uploads at once.
const MAX_DEFAULT_CONNECTIONS: u64 = 16_384;

/// The default cap for a process allowed `open_files` descriptors: each connection may hold
/// its socket and the data file of the upload it writes.
pub fn default_max_connections(open_files: u64) -> usize {
    let cap = open_files.saturating_sub(RESERVED_FDS) / 2;
    cap.clamp(1, MAX_DEFAULT_CONNECTIONS) as usize
}

/// The soft limit on open files.
pub fn open_files_limit() -> u64 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit
        .current
        .unwrap_or(MAX_DEFAULT_CONNECTIONS * 2 + RESERVED_FDS)
}

/// Raises the soft limit on open files to the hard limit (the default soft limit, 1,024, is
/// too few for 1,000 uploads at once). Returns the soft limit now in force.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "cannot raise the open-files limit");
        }
    }
    open_files_limit()
}

/// `now + d`, or a day from now when that overflows (a huge configured duration).
pub(crate) fn far(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400))
}

/// Delay after the `failures`-th accept error in a row: 5 ms doubling to 1 s.
pub fn accept_backoff(failures: u32) -> Duration {
    let ms = 5u64.saturating_mul(1 << failures.min(8));
    Duration::from_millis(ms.min(1000))
}

/// The shedding tier: at most [`SHED_CONNECTIONS`] places. A new connection always gets one;
/// when all are taken, the oldest holder is closed. Idle sockets that filled the tier are thus
/// pushed out by newer arrivals, and a health probe, which sends its request at once, is
/// answered unless connections arrive faster than it can send a request line.
#[derive(Debug, Default)]
pub struct Shedder {
    places: std::sync::Mutex<std::collections::VecDeque<(u64, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

/// A place on the shedding tier: [`evicted`](ShedPlace::evicted) resolves when a newer
/// connection takes it. Given back on drop.
#[derive(Debug)]
pub struct ShedPlace {
    shedder: Arc<Shedder>,
    id: u64,
    token: CancellationToken,
}

impl Shedder {
    /// A place for a new connection, closing the oldest holder if the tier is full.
    pub fn take(self: &Arc<Self>) -> ShedPlace {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        places.push_back((id, token.clone()));
        while places.len() > SHED_CONNECTIONS {
            if let Some((_, oldest)) = places.pop_front() {
                oldest.cancel();
            }
        }
        ShedPlace {
            shedder: self.clone(),
            id,
            token,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.places.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl ShedPlace {
    /// Resolves when a newer connection took this place.
    pub async fn evicted(&self) {
        self.token.cancelled().await;
    }
}

impl Drop for ShedPlace {
    fn drop(&mut self) {
        let mut places = self
            .shedder
            .places
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        places.retain(|(id, _)| *id != self.id);
    }
}

/// Set when an answer was sent with its request body unread (`Connection: close` from a
/// handler): only then does the connection linger when it closes.
#[derive(Debug, Clone, Default)]
pub struct LingerFlag(Arc<std::sync::atomic::AtomicBool>);

impl LingerFlag {
    /// The connection is to linger when it closes.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A TCP stream that lingers when the server closes it after an early answer: see the module
/// docs. Any other close (the client's, an idle keep-alive connection, a head hyper refused) is
/// immediate.
#[derive(Debug)]
pub struct Lingering {
    stream: Option<TcpStream>,
    limits: ConnLimits,
    permit: Option<OwnedSemaphorePermit>,
    flag: LingerFlag,
}

impl Lingering {
    /// Wraps `stream`; `permit` is held until the connection is fully closed. The flag
    /// returned asks for a lingering close.
    pub fn new(
        stream: TcpStream,
        limits: ConnLimits,
        permit: OwnedSemaphorePermit,
    ) -> (Self, LingerFlag) {
        let flag = LingerFlag::default();
        let me = Self {
            stream: Some(stream),
            limits,
            permit: Some(permit),
            flag: flag.clone(),
        };
        (me, flag)
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Half-closes: the answer is followed by a FIN, and reading goes on (see `Drop`).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(stream), Some(permit)) = (self.stream.take(), self.permit.take()) else {
            return;
        };
        if !self.flag.is_set() {
            return;
        }
        let limits = self.limits;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(linger(stream, limits, permit));
        }
    }
}

/// Reads and discards what the client still sends until it closes, stops sending for
/// `lingering_timeout`, or `lingering_time` is over; then closes (a reset, if it is still
/// sending).
async fn linger(mut stream: TcpStream, limits: ConnLimits, _permit: OwnedSemaphorePermit) {
    // The answer must be on its way before the wait: a FIN after it tells the client no more
    // is coming (a connection hyper dropped without shutting down gets it here).
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
    let deadline = far(limits.lingering_time);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let next = far(limits.lingering_timeout).min(deadline);
        match tokio::time::timeout_at(next, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
    }
    if tokio::time::Instant::now() >= deadline {
        // Still sending after the bound: cut it off now rather than let close() wait.
        let _ = stream.set_zero_linger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_data_files_and_the_shedding_tier() {
        assert_eq!(default_max_connections(256), 80);
        assert_eq!(default_max_connections(1024), 464);
        assert_eq!(default_max_connections(1 << 20), 16_384);
        assert_eq!(default_max_connections(10), 1, "never zero");
    }

    #[test]
    fn accept_backoff_doubles_to_a_second() {
        assert_eq!(accept_backoff(0), Duration::from_millis(5));
        assert_eq!(accept_backoff(1), Duration::from_millis(10));
        assert_eq!(accept_backoff(7), Duration::from_millis(640));
        assert_eq!(accept_backoff(8), Duration::from_secs(1));
        assert_eq!(accept_backoff(u32::MAX), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn the_shedding_tier_is_bounded_and_the_oldest_makes_room() {
        let shedder = Arc::new(Shedder::default());
        let places: Vec<_> = (0..SHED_CONNECTIONS).map(|_| shedder.take()).collect();
        assert_eq!(shedder.len(), SHED_CONNECTIONS);
        let newest = shedder.take();
        assert_eq!(shedder.len(), SHED_CONNECTIONS);
        tokio::time::timeout(Duration::from_secs(1), places[0].evicted())
            .await
            .expect("the oldest is closed");
        assert!(!places[1].token.is_cancelled());
        drop(places);
        assert_eq!(shedder.len(), 1);
        assert!(!newest.token.is_cancelled());
    }
}
