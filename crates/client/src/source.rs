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
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    /// A hash with `algorithm` (BLAKE3 for ferry servers, SHA-256 for the rest).
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
    pub fn finish(self, len: u64) -> Option<[u8; 32]> {
        let h = self.hasher?;
        (self.pos == len).then(|| h.finalize().try_into().expect("32 bytes"))
    }
}

/// Counters shared by the streams of one transfer.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    /// Milliseconds since `started` of the last byte handed to the network.
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
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

    /// Streams `[start, end)` as a request body. A reader task stays a few blocks ahead of
    /// the network, reading (and feeding the whole-file hash, and the request's checksum when
    /// `trailer` names an algorithm) off the async threads, so disk, hashing and sending overlap.
    /// With `trailer`, the body ends with an `Upload-Checksum` trailer: one pass over the bytes
    /// instead of a first pass to put the checksum in a header. Blocks come from a small pool
    /// and go back to it when the network layer drops them: no allocation per block (fresh
    /// memory is slow on this kind of VM) and a fixed footprint per stream.
    pub fn body(
        &self,
        start: u64,
        end: u64,
        hooks: StreamHooks,
        trailer: Option<ChecksumAlgorithm>,
    ) -> FileBody {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Frame<Bytes>>>(READ_AHEAD);
        let file = self.file.clone();
        let sequential = hooks.sequential.clone();
        let limiter = hooks.limiter.clone();
        let pool = self.pool.clone();
        let reader = tokio::spawn(async move {
            let mut at = start;
            let mut checksum = trailer.map(Hasher::new);
            while at < end {
                let n = ((end - at) as usize).min(BLOCK);
                let mut buf = pool.take();
                let (f, seq) = (file.clone(), sequential.clone());
                let mut ck = checksum.take();
                let read = tokio::task::spawn_blocking(move || {
                    // Only grows (and zero-fills) the first time a pooled buffer is used.
                    buf.resize(n, 0);
                    let r = f.read_exact_at(&mut buf[..n], at);
                    if r.is_ok() {
                        if let Some(h) = &mut ck {
                            h.update(&buf[..n]);
                        }
                        seq.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .feed(at, &buf[..n]);
                    }
                    (buf, r, ck)
                })
                .await;
                let block = match read {
                    Ok((buf, Ok(()), ck)) => {
                        checksum = ck;
                        Ok(pool.bytes(buf))
                    }
                    Ok((_, Err(e), _)) => Err(e),
                    Err(e) => Err(io::Error::other(e)),
                };
                let failed = block.is_err();
                if let (Ok(b), Some(l)) = (&block, &limiter) {
                    l.acquire(b.len() as u64).await;
                }
                if tx.send(block.map(Frame::data)).await.is_err() || failed {
                    return;
                }
                at += n as u64;
            }
            if let Some(h) = checksum {
                let c = Checksum {
                    algorithm: h.algorithm(),
                    digest: h.finalize(),
                };
                let mut trailers = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&c.format()) {
                    trailers.insert(tus::UPLOAD_CHECKSUM, v);
                }
                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
            }
        });
        FileBody {
            rx,
            hooks,
            _guard: AbortOnDrop(reader.abort_handle()),
            pos: start,
        }
    }
}

/// A request body read from the file by [`FileSource::body`].
pub struct FileBody {
    rx: tokio::sync::mpsc::Receiver<io::Result<Frame<Bytes>>>,
    hooks: StreamHooks,
    _guard: AbortOnDrop,
    pos: u64,
}

impl std::fmt::Debug for FileBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBody")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            self.pos += n;
            self.hooks.activity.touch();
            (self.hooks.on_position)(self.pos);
        }
        polled
    }
}

/// Blocks read ahead of the network per stream.
const READ_AHEAD: usize = 4;
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

/// Stops the reader task when the body is dropped (request abandoned or finished).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn sequential_hash_counts_each_byte_once_in_order() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut s = SequentialHash::default();
        s.feed(0, &data[..300]);
        s.feed(100, &data[100..500]); // overlap: only 300..500 counts
        s.feed(700, &data[700..]); // gap: ignored
        s.feed(500, &data[500..700]);
        s.feed(700, &data[700..]);
        let want: [u8; 32] = ferry_proto::checksum::digest(ChecksumAlgorithm::Sha256, &data)
            .try_into()
            .unwrap();
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
        // (The reader task may still hold its clone for a moment.)
        let seq = std::mem::take(&mut *seq.lock().unwrap());
        let want: [u8; 32] = ferry_proto::checksum::digest(ChecksumAlgorithm::Sha256, &data)
            .try_into()
            .unwrap();
        assert_eq!(seq.finish(data.len() as u64), Some(want));
    }
}
