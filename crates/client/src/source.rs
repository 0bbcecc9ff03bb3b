//! Reading the local file: request bodies streamed with reused buffers, the request's checksum
//! computed on the way (sent as a trailer) or in a first pass (sent as a header), and the
//! whole-file digest computed on the way (each byte hashed once, in order, whichever pass reads
//! it first).

use crate::progress::RateLimiter;
use bytes::Bytes;
use ferry_proto::checksum::{Checksum, ChecksumAlgorithm, Hasher};
use ferry_proto::tus;
use http_body::Frame;
use reqwest::header::{HeaderMap, HeaderValue};
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Bytes per read.
pub const BLOCK: usize = 256 * 1024;

/// The digest of the file's bytes `[0, pos)`, advanced only in order.
#[derive(Debug)]
pub struct SequentialHash {
    pos: u64,
    hasher: Option<Hasher>,
}

impl Default for SequentialHash {
    fn default() -> Self {
        Self::new(ChecksumAlgorithm::Sha256)
    }
}

impl SequentialHash {
    /// A hash with `algorithm` (CRC-64/NVME for ferry servers, SHA-256 for the rest).
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        Self {
            pos: 0,
            hasher: Some(Hasher::new(algorithm)),
        }
    }

    /// The algorithm, if enabled.
    pub fn algorithm(&self) -> Option<ChecksumAlgorithm> {
        self.hasher.as_ref().map(Hasher::algorithm)
    }

    /// A hash that is not wanted (`--no-verify`): feeding it costs nothing.
    pub fn disabled() -> Self {
        Self {
            pos: 0,
            hasher: None,
        }
    }

    /// Whether it hashes at all.
    pub fn enabled(&self) -> bool {
        self.hasher.is_some()
    }

    /// How far the hash has got.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Feeds bytes read at `offset`; only the part that extends the hashed prefix counts.
    pub fn feed(&mut self, offset: u64, data: &[u8]) {
        let Some(h) = &mut self.hasher else {
            return;
        };
        let end = offset + data.len() as u64;
        if offset <= self.pos && end > self.pos {
            h.update(&data[(self.pos - offset) as usize..]);
            self.pos = end;
        }
    }

    /// The digest, if enabled and the whole `len` bytes were hashed.
    pub fn finish(self, len: u64) -> Option<Vec<u8>> {
        let h = self.hasher?;
        (self.pos == len).then(|| h.finalize())
    }
}

/// Counters shared by the streams of one transfer.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    /// Milliseconds since `started` of the last byte handed to the network.
    last_ms: AtomicU64,
    /// Bytes handed to the network (by bodies that count them: paced ones).
    bytes: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Counts `n` more bytes handed to the network, and marks progress now.
    pub fn moved(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.touch();
    }

    /// Bytes counted by [`Activity::moved`].
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Marks progress now.
    pub fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last progress.
    pub fn idle(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
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

/// An open source file.
#[derive(Debug, Clone)]
pub struct FileSource {
    file: Arc<File>,
    len: u64,
    /// Block buffers shared by every stream reading this file.
    pool: BlockPool,
}

/// What a body reports to as it goes.
#[derive(Clone)]
pub struct StreamHooks {
    /// Whole-file hash.
    pub sequential: Arc<Mutex<SequentialHash>>,
    /// Stall detection.
    pub activity: Arc<Activity>,
    /// Absolute position reached, for progress.
    pub on_position: Arc<dyn Fn(u64) + Send + Sync>,
    /// Shared rate limit.
    pub limiter: Option<Arc<RateLimiter>>,
}

impl std::fmt::Debug for StreamHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHooks").finish_non_exhaustive()
    }
}

impl FileSource {
    /// Opens `file` of length `len`.
    pub fn new(file: File, len: u64) -> Self {
        Self {
            file: Arc::new(file),
            len,
            pool: BlockPool::default(),
        }
    }

    /// The length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The whole file in memory (small files only), read off the async threads.
    pub async fn read_all(&self) -> io::Result<Vec<u8>> {
        let file = self.file.clone();
        let len = self.len as usize;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, 0)?;
            Ok(buf)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Reads `[start, end)` in blocks off the async threads, calling `each(offset, block)`.
    pub async fn scan(
        &self,
        start: u64,
        end: u64,
        mut each: impl FnMut(u64, &[u8]) + Send + 'static,
    ) -> io::Result<()> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; BLOCK];
            let mut at = start;
            while at < end {
                let n = ((end - at) as usize).min(BLOCK);
                file.read_exact_at(&mut buf[..n], at)?;
                each(at, &buf[..n]);
                at += n as u64;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Digest of `[start, end)` with `algorithm`: the first pass for `Upload-Checksum`, read
    /// from the file in 1 MiB blocks (BLAKE3 spreads each block over every core).
    pub async fn checksum(
        &self,
        start: u64,
        end: u64,
        algorithm: ChecksumAlgorithm,
    ) -> io::Result<Vec<u8>> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut at = start;
            let mut b3 = blake3::Hasher::new();
            let mut other = Hasher::new(algorithm);
            while at < end {
                let n = ((end - at) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], at)?;
                if algorithm == ChecksumAlgorithm::Blake3 {
                    b3.update_rayon(&buf[..n]);
                } else {
                    other.update(&buf[..n]);
                }
                at += n as u64;
            }
            Ok(if algorithm == ChecksumAlgorithm::Blake3 {
                b3.finalize().as_bytes().to_vec()
            } else {
                other.finalize()
            })
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Streams `[start, end)` as a request body, hashing each block (whole-file hash, and the
    /// request's checksum when `trailer` names an algorithm) as the network asks for it. With
    /// `trailer`, the body ends with an `Upload-Checksum` trailer: one pass over the bytes
    /// instead of a first pass to put the checksum in a header.
    ///
    /// Blocks already in the page cache are read right on the async thread that sends them
    /// (`RWF_NOWAIT`): no thread hand-off per block, and the bytes are still in the CPU cache
    /// when they are hashed and copied to the socket. A block that would wait for the disk is
    /// read on a blocking thread, which also asks the kernel to read ahead, so a cold file
    /// still overlaps disk and network. Blocks come from a small pool and go back to it when
    /// the network layer drops them: no allocation per block (fresh memory is slow on this
    /// kind of VM) and a fixed footprint per stream.
    pub fn body(
        &self,
        start: u64,
        end: u64,
        hooks: StreamHooks,
        trailer: Option<ChecksumAlgorithm>,
    ) -> FileBody {
        FileBody {
            file: self.file.clone(),
            pool: self.pool.clone(),
            at: start,
            end,
            checksum: trailer.map(Hasher::new),
            pending: None,
            nowait: cfg!(target_os = "linux"),
            advised: 0,
            hooks,
            pos: start,
        }
    }
}

/// A request body read from the file by [`FileSource::body`].
pub struct FileBody {
    file: Arc<File>,
    pool: BlockPool,
    /// Next offset to read.
    at: u64,
    end: u64,
    /// The request's checksum, sent as a trailer; `None` once sent (or when not wanted).
    checksum: Option<Hasher>,
    pending: Option<Pending>,
    /// Whether to try page-cache reads without blocking (turned off where unsupported).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    nowait: bool,
    /// End of the range the kernel was last asked to read ahead.
    advised: u64,
    hooks: StreamHooks,
    /// Offset of the end of the last block handed to the network.
    pos: u64,
}

/// What a body waits for between blocks.
enum Pending {
    /// A block that was not in the page cache, read on a blocking thread.
    Read(tokio::task::JoinHandle<(Vec<u8>, io::Result<usize>)>),
    /// A block read and hashed, held back by the rate limit.
    Paced(Pin<Box<tokio::time::Sleep>>, Bytes),
}

/// Bytes ahead of a cache miss that the blocking read asks the kernel to fetch.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const READ_AHEAD: u64 = 8 << 20;

impl std::fmt::Debug for FileBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBody")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl FileBody {
    /// Reads at `at` without waiting for the disk: `Ok(None)` when that would block.
    #[cfg(target_os = "linux")]
    fn read_cached(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        use rustix::io::{Errno, ReadWriteFlags, preadv2};
        if !self.nowait {
            return Ok(None);
        }
        match preadv2(
            &*self.file,
            &mut [io::IoSliceMut::new(buf)],
            self.at,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) => Ok(Some(n)),
            Err(Errno::AGAIN) => Ok(None),
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                self.nowait = false;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn read_cached(&mut self, _buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(None)
    }

    /// Reads at `at` on a blocking thread. Past the half of what was last asked for, it first
    /// asks the kernel to read ahead (once per half window, not per block).
    fn read_blocking(&mut self, mut buf: Vec<u8>) -> Pending {
        let (file, at) = (self.file.clone(), self.at);
        let advise = at >= self.advised.saturating_sub(READ_AHEAD / 2);
        if advise {
            self.advised = at + READ_AHEAD;
        }
        Pending::Read(tokio::task::spawn_blocking(move || {
            #[cfg(target_os = "linux")]
            if advise {
                let _ = rustix::fs::fadvise(
                    &*file,
                    at,
                    std::num::NonZeroU64::new(READ_AHEAD),
                    rustix::fs::Advice::WillNeed,
                );
            }
            let r = loop {
                match file.read_at(&mut buf, at) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            (buf, r)
        }))
    }

    /// Takes `n` freshly read bytes of `buf` as the next block: hashes them and moves on.
    fn filled(&mut self, mut buf: Vec<u8>, n: usize) -> io::Result<Bytes> {
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than when the upload started",
            ));
        }
        buf.truncate(n);
        if let Some(h) = &mut self.checksum {
            h.update(&buf);
        }
        self.hooks
            .sequential
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .feed(self.at, &buf);
        self.at += n as u64;
        Ok(self.pool.bytes(buf))
    }

    /// Hands a block to the network, now or once the rate limit allows.
    fn send(
        &mut self,
        block: Bytes,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if let Some(l) = &self.hooks.limiter {
            let wait = l.reserve(block.len() as u64);
            if !wait.is_zero() {
                let mut sleep = Box::pin(tokio::time::sleep(wait));
                if sleep.as_mut().poll(cx).is_pending() {
                    self.pending = Some(Pending::Paced(sleep, block));
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Some(Ok(self.emit(block))))
    }

    fn emit(&mut self, block: Bytes) -> Frame<Bytes> {
        self.pos += block.len() as u64;
        self.hooks.activity.touch();
        (self.hooks.on_position)(self.pos);
        Frame::data(block)
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match this.pending.take() {
            Some(Pending::Read(mut read)) => match Pin::new(&mut read).poll(cx) {
                Poll::Pending => {
                    this.pending = Some(Pending::Read(read));
                    return Poll::Pending;
                }
                Poll::Ready(Ok((buf, Ok(n)))) => {
                    return match this.filled(buf, n) {
                        Ok(block) => this.send(block, cx),
                        Err(e) => Poll::Ready(Some(Err(e))),
                    };
                }
                Poll::Ready(Ok((_, Err(e)))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(io::Error::other(e)))),
            },
            Some(Pending::Paced(mut wait, block)) => {
                if wait.as_mut().poll(cx).is_pending() {
                    this.pending = Some(Pending::Paced(wait, block));
                    return Poll::Pending;
                }
                return Poll::Ready(Some(Ok(this.emit(block))));
            }
            None => {}
        }
        if this.at >= this.end {
            let Some(h) = this.checksum.take() else {
                return Poll::Ready(None);
            };
            let c = Checksum {
                algorithm: h.algorithm(),
                digest: h.finalize(),
            };
            let mut trailers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&c.format()) {
                trailers.insert(tus::UPLOAD_CHECKSUM, v);
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let n = ((this.end - this.at) as usize).min(BLOCK);
        let mut buf = this.pool.take();
        // Zero-fills only what a pooled buffer lacks (all of it the first time).
        buf.resize(n, 0);
        match this.read_cached(&mut buf) {
            Ok(Some(got)) if got > 0 => match this.filled(buf, got) {
                Ok(block) => this.send(block, cx),
                Err(e) => Poll::Ready(Some(Err(e))),
            },
            // Not cached (or nothing read: only the blocking read says the file shrank).
            Ok(_) => {
                this.pending = Some(this.read_blocking(buf));
                // Polls the read once so its completion wakes this task.
                Pin::new(this).poll_frame(cx)
            }
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.at >= self.end && self.checksum.is_none() && self.pending.is_none()
    }
}

/// Idle blocks kept for reuse per file (8 MiB).
const POOL_LIMIT: usize = 32;

/// Buffers for one body stream, returned by the network layer when it drops a block.
#[derive(Clone, Default, Debug)]
struct BlockPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BlockPool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BLOCK))
    }

    /// Wraps a filled buffer as `Bytes` that hands the buffer back when dropped.
    fn bytes(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: BlockPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut pool = self.pool.0.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_LIMIT {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Hooks feeding `sequential`, without progress or rate limit.
    fn quiet_hooks(sequential: Arc<Mutex<SequentialHash>>) -> StreamHooks {
        StreamHooks {
            sequential,
            activity: Arc::default(),
            on_position: Arc::new(|_| {}),
            limiter: None,
        }
    }

    /// Asserts that `seq` hashed exactly `data` (SHA-256, the default).
    fn assert_hashed(seq: &Mutex<SequentialHash>, data: &[u8]) {
        let seq = std::mem::take(&mut *seq.lock().unwrap());
        let want = ferry_proto::checksum::digest(ChecksumAlgorithm::Sha256, data);
        assert_eq!(seq.finish(data.len() as u64), Some(want));
    }

    #[test]
    fn sequential_hash_counts_each_byte_once_in_order() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut s = SequentialHash::default();
        s.feed(0, &data[..300]);
        s.feed(100, &data[100..500]); // overlap: only 300..500 counts
        s.feed(700, &data[700..]); // gap: ignored
        s.feed(500, &data[500..700]);
        s.feed(700, &data[700..]);
        let want = ferry_proto::checksum::digest(ChecksumAlgorithm::Sha256, &data);
        assert_eq!(s.finish(1000), Some(want));
    }

    #[tokio::test]
    async fn body_streams_the_range_and_feeds_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let src = FileSource::new(File::open(&p).unwrap(), data.len() as u64);
        let seq = Arc::new(Mutex::new(SequentialHash::default()));
        let last = Arc::new(AtomicU64::new(0));
        let l2 = last.clone();
        let hooks = StreamHooks {
            sequential: seq.clone(),
            activity: Arc::default(),
            on_position: Arc::new(move |p| l2.store(p, Ordering::Relaxed)),
            limiter: None,
        };
        let ck = src
            .checksum(0, 100_000, ChecksumAlgorithm::Crc32)
            .await
            .unwrap();
        let b3 = src
            .checksum(
                0,
                3_000_000.min(data.len() as u64),
                ChecksumAlgorithm::Blake3,
            )
            .await
            .unwrap();
        assert_eq!(
            b3,
            ferry_proto::checksum::digest(ChecksumAlgorithm::Blake3, &data[..])
        );
        assert_eq!(
            ck,
            ferry_proto::checksum::digest(ChecksumAlgorithm::Crc32, &data[..100_000])
        );
        let mut out = Vec::new();
        let mut trailers = None;
        let mut s = src.body(0, data.len() as u64, hooks, Some(ChecksumAlgorithm::Blake3));
        while let Some(f) = s.frame().await {
            match f.unwrap().into_data() {
                Ok(b) => out.extend_from_slice(&b),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert_eq!(out, data);
        let t = trailers.expect("a trailer follows the data");
        let c = Checksum::parse(t[tus::UPLOAD_CHECKSUM].to_str().unwrap()).unwrap();
        assert_eq!(c.algorithm, ChecksumAlgorithm::Blake3);
        assert_eq!(c.digest, b3, "trailer checksum of the whole range");
        assert_eq!(last.load(Ordering::Relaxed), data.len() as u64);
        assert_hashed(&seq, &data);
    }

    /// A file that is not in the page cache goes through the blocking read (and the kernel's
    /// read-ahead) and still streams byte-exact, whole-file hash included.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn body_reads_a_file_that_is_not_cached() {
        use rustix::fs::{Advice, fadvise};
        use rustix::io::{Errno, ReadWriteFlags, preadv2};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cold");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let file = File::open(&p).unwrap();
        file.sync_all().unwrap();
        // Clean pages can be dropped: after this the first block is a cache miss. The kernel
        // skips pages it is busy with at that moment (seen once in CI), so ask again a while.
        let mut probe = [0u8; 4096];
        let mut cold = false;
        for _ in 0..100 {
            fadvise(&file, 0, None, Advice::DontNeed).unwrap();
            let r = preadv2(
                &file,
                &mut [io::IoSliceMut::new(&mut probe)],
                0,
                ReadWriteFlags::NOWAIT,
            );
            if r == Err(Errno::AGAIN) {
                cold = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(cold, "the file stayed in the page cache for 2 s");
        let src = FileSource::new(file, data.len() as u64);
        let seq = Arc::new(Mutex::new(SequentialHash::default()));
        let mut out = Vec::new();
        let mut s = src.body(0, data.len() as u64, quiet_hooks(seq.clone()), None);
        while let Some(f) = s.frame().await {
            out.extend_from_slice(&f.unwrap().into_data().unwrap());
        }
        assert_eq!(out.len(), data.len());
        assert!(out == data, "streamed bytes differ from the file");
        assert_hashed(&seq, &data);
    }

    /// A file cut short while it is being sent is an error, not a short body.
    #[tokio::test]
    async fn body_fails_when_the_file_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 1_000_000]).unwrap();
        let src = FileSource::new(File::open(&p).unwrap(), 1_000_000);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(300_000)
            .unwrap();
        let mut s = src.body(0, 1_000_000, quiet_hooks(Arc::default()), None);
        let mut got = 0;
        let err = loop {
            match s.frame().await {
                Some(Ok(f)) => got += f.into_data().unwrap().len(),
                Some(Err(e)) => break e,
                None => panic!("the body ended without an error after {got} bytes"),
            }
        };
        assert_eq!(got, 300_000);
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
