//! Parallel uploads over tus concatenation. The file is cut into segments; each is sent as a
//! partial upload (created when a stream first takes it) over its own HTTP/1.1 connection;
//! when all are done a final upload joins them (on ferry without copying a byte). The number
//! of streams is fixed (`-j N`) or follows [`ParallelismController`]. Each segment's state is
//! its own (URL, range, done) — never one shared counter.

use crate::chunk::ChunkSizeController;
use crate::error::{ClientError, ErrorKind};
use crate::parallel::{ParallelBounds, ParallelismController};
use crate::retry::RetryState;
use crate::state::{PartRecord, UploadRecord};
use crate::upload::{Job, Shared, Target, Uploader};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use reqwest::Url;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cuts `len` bytes into segments: about 64 of them, each 8–256 MiB, and at least `streams`.
pub fn plan(len: u64, streams: Option<usize>) -> Vec<(u64, u64)> {
    let mut size = len.div_ceil(64).clamp(8 << 20, 256 << 20);
    if let Some(n) = streams {
        size = size.min(len.div_ceil(n.max(1) as u64)).max(1);
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        let end = (at + size).min(len);
        out.push((at, end));
        at = end;
    }
    out
}

/// How often the stream count is reconsidered.
const WINDOW: Duration = Duration::from_millis(1500);

struct Segments {
    record: Mutex<UploadRecord>,
    queue: Mutex<VecDeque<usize>>,
    /// Bytes of each segment known sent (relative), for progress and goodput.
    sent: Vec<AtomicU64>,
}

impl Segments {
    fn total_sent(&self) -> u64 {
        self.sent.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

impl Uploader {
    /// Runs a segmented upload to completion and returns the final upload's URL.
    pub(crate) async fn run_segmented(
        &self,
        job: &Job,
        endpoint: &Url,
        record: Option<UploadRecord>,
        fixed: Option<usize>,
        shared_for: &dyn Fn(Arc<dyn Fn(u64) + Send + Sync>) -> Shared,
        retry: &mut RetryState,
    ) -> Result<(Url, u64), ClientError> {
        let len = job.len;
        let record = match record {
            Some(r) => r,
            None => {
                let parts = plan(len, fixed)
                    .into_iter()
                    .map(|(start, end)| PartRecord {
                        url: None,
                        start,
                        end,
                        done: false,
                    })
                    .collect();
                let r = self.new_record(job, endpoint, parts);
                self.save(&r)?;
                r
            }
        };
        let resumed_from: u64 = record
            .parts
            .iter()
            .filter(|p| p.done)
            .map(|p| p.end - p.start)
            .sum();
        self.progress.start(&job.display, len, resumed_from);
        if resumed_from > 0 {
            self.progress.note(&format!(
                "resuming {}: {resumed_from} bytes already uploaded",
                job.display
            ));
        }
        if let Some(f) = &record.final_url {
            let url =
                Url::parse(f).map_err(|e| ClientError::new(ErrorKind::Local, e.to_string()))?;
            return Ok((url, len));
        }

        let segs = Arc::new(Segments {
            queue: Mutex::new(
                record
                    .parts
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.done)
                    .map(|(i, _)| i)
                    .collect(),
            ),
            sent: record
                .parts
                .iter()
                .map(|p| AtomicU64::new(if p.done { p.end - p.start } else { 0 }))
                .collect(),
            record: Mutex::new(record),
        });
        // The whole-file hash cannot follow streams that run side by side: a reader hashes
        // the file in order meanwhile (streams that happen to be in order help it along).
        let hashing = {
            let shared = shared_for(Arc::new(|_| {}));
            let (source, seq) = (shared.source.clone(), shared.sequential.clone());
            tokio::spawn(async move {
                loop {
                    let pos = seq.lock().unwrap_or_else(|p| p.into_inner()).position();
                    if pos >= source.len() {
                        return Ok::<(), std::io::Error>(());
                    }
                    let end = (pos + (8 << 20)).min(source.len());
                    let s2 = seq.clone();
                    source
                        .scan(pos, end, move |at, b| {
                            s2.lock().unwrap_or_else(|p| p.into_inner()).feed(at, b);
                        })
                        .await?;
                }
            })
        };

        let mut controller = ParallelismController::new(ParallelBounds {
            max: fixed.unwrap_or(self.opts.max_parallel).max(1),
            ..ParallelBounds::default()
        });
        let target = Arc::new(AtomicUsize::new(fixed.unwrap_or(1).max(1)));
        let mut workers = FuturesUnordered::new();
        let mut next_worker = 0usize;
        let mut tick = tokio::time::interval(WINDOW);
        tick.tick().await;
        let mut last = (Instant::now(), segs.total_sent());
        let result: Result<(), ClientError> = loop {
            let want = target.load(Ordering::Relaxed);
            while workers.len() < want
                && !segs
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
            {
                workers.push(self.segment_worker(
                    job,
                    endpoint,
                    next_worker,
                    &target,
                    &segs,
                    shared_for,
                ));
                next_worker += 1;
            }
            if workers.is_empty() {
                break Ok(());
            }
            tokio::select! {
                done = workers.next() => match done {
                    Some(Ok(())) => {}
                    Some(Err(e)) => break Err(e),
                    None => {}
                },
                _ = tick.tick() => {
                    let now = (Instant::now(), segs.total_sent());
                    let secs = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
                    let goodput = now.1.saturating_sub(last.1) as f64 / secs;
                    last = now;
                    if fixed.is_none() {
                        let n = controller.record(goodput);
                        if n != want {
                            tracing::debug!(streams = n, goodput, "parallelism");
                        }
                        target.store(n, Ordering::Relaxed);
                    }
                    self.progress.position(segs.total_sent());
                }
            }
        };
        drop(workers);
        if let Err(e) = result {
            hashing.abort();
            return Err(e);
        }
        let _ = hashing.await;

        // Every segment is done: join them. Absolute URLs, in order.
        let mut rec = segs
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let urls: Vec<&str> = rec.parts.iter().filter_map(|p| p.url.as_deref()).collect();
        if urls.len() != rec.parts.len() || !rec.parts.iter().all(|p| p.done) {
            return Err(ClientError::new(
                ErrorKind::Local,
                "segments incomplete after upload",
            ));
        }
        let concat = format!("final;{}", urls.join(" "));
        let final_url = self
            .create_upload(endpoint, len, &job.metadata, Some(&concat), retry)
            .await?;
        rec.final_url = Some(final_url.to_string());
        self.save(&rec)?;
        self.progress.position(len);
        Ok((final_url, resumed_from))
    }

    /// One stream: takes segments from the queue while its index is below the target.
    async fn segment_worker(
        &self,
        job: &Job,
        endpoint: &Url,
        index: usize,
        target: &AtomicUsize,
        segs: &Arc<Segments>,
        shared_for: &dyn Fn(Arc<dyn Fn(u64) + Send + Sync>) -> Shared,
    ) -> Result<(), ClientError> {
        let mut retry = RetryState::new(self.opts.retry, Instant::now());
        let mut chunks = ChunkSizeController::new(self.opts.chunk);
        loop {
            // Streams above the target retire between segments.
            if index >= target.load(Ordering::Relaxed).max(1) && index > 0 {
                return Ok(());
            }
            let Some(i) = segs
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            else {
                return Ok(());
            };
            let part = segs.record.lock().unwrap_or_else(|p| p.into_inner()).parts[i].clone();
            let len = part.end - part.start;
            let mut known = None;
            let mut url = part.url.as_deref().and_then(|u| Url::parse(u).ok());
            if let Some(u) = &url {
                known = self.recheck(u, len, &mut retry).await?;
                if known.is_none() {
                    url = None;
                }
            }
            let url = match url {
                Some(u) => u,
                None => {
                    let u = self
                        .create_upload(endpoint, len, &job.metadata, Some("partial"), &mut retry)
                        .await?;
                    let rec = {
                        let mut r = segs.record.lock().unwrap_or_else(|p| p.into_inner());
                        r.parts[i].url = Some(u.to_string());
                        r.clone()
                    };
                    self.save(&rec)?;
                    u
                }
            };
            let s2 = segs.clone();
            let base = part.start;
            let shared = shared_for(Arc::new(move |abs| {
                s2.sent[i].store(abs.saturating_sub(base), Ordering::Relaxed);
            }));
            let t = Target {
                url: &url,
                base,
                len,
            };
            self.pump_range(&t, known, &shared, &mut chunks, &mut retry)
                .await?;
            let rec = {
                let mut r = segs.record.lock().unwrap_or_else(|p| p.into_inner());
                r.parts[i].done = true;
                r.clone()
            };
            segs.sent[i].store(len, Ordering::Relaxed);
            self.save(&rec)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_the_file_exactly() {
        for (len, n) in [
            (1u64 << 30, None),
            (100 << 20, Some(4)),
            (33 << 20, Some(8)),
            (5, Some(3)),
        ] {
            let p = plan(len, n);
            assert_eq!(p.first().map(|r| r.0), Some(0));
            assert_eq!(p.last().map(|r| r.1), Some(len));
            for w in p.windows(2) {
                assert_eq!(w[0].1, w[1].0, "contiguous");
            }
            if let Some(n) = n {
                assert!(p.len() >= n.min(len as usize), "{len} {n}: {}", p.len());
            }
        }
        assert_eq!(plan(1 << 30, None).len(), 64);
    }
}
