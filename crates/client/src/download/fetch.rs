//! Fetching the missing ranges into the partial file: one stream, `-j N`, or as many as the
//! parallelism controller says; an idle stream takes half of the largest range still being
//! fetched by another (work stealing). The resume state is saved in batches beside the
//! streams.

use super::resume::merge;
use super::{Downloader, local};
use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::options::Parallel;
use crate::parallel::{ParallelBounds, ParallelismController};
use crate::response::{classify, network};
use crate::retry::RetryState;
use crate::source::{Activity, stalled};
use crate::state::{DownloadRecord, Transfer};
use ferry_proto::range::parse_content_range;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use reqwest::header::{CONTENT_RANGE, IF_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the stream count is reconsidered (`-j auto`) and progress shown.
const WINDOW: Duration = Duration::from_millis(250);

/// `-j auto` starts a large file with this many streams (a small one with one per
/// [`AUTO_BYTES_PER_STREAM`]), then the controller adds or takes back streams by goodput.
/// Growing from one stream, a fast transfer is over before the controller has seen enough
/// windows to add any (on loopback, 2 cores: one stream ~0.7 GB/s, four ~0.9–1 GB/s).
const AUTO_INITIAL_STREAMS: usize = 4;

/// See [`AUTO_INITIAL_STREAMS`].
const AUTO_BYTES_PER_STREAM: u64 = 16 << 20;

/// Bytes a stream gathers before writing them in one go.
const WRITE_BATCH: u64 = 512 * 1024;

/// Longest a gathered chunk waits before it is written.
const BATCH_AGE: Duration = Duration::from_millis(50);

/// How often the resume state is saved (data synced first; a save waits for the previous one
/// to finish). Frequent syncs also keep the disk writing while data arrives, instead of
/// leaving a second of it for the final fdatasync before the rename.
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// A range one stream is fetching: it writes from `pos` up to `end`; a thief may lower `end`.
struct Slot {
    start: u64,
    pos: AtomicU64,
    end: AtomicU64,
}

pub(super) struct Plan {
    /// The file's size.
    size: u64,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Ranges nobody has taken yet.
    queue: Mutex<Vec<(u64, u64)>>,
    done_before: Vec<(u64, u64)>,
}

impl Plan {
    /// A plan for a `size`-byte file of which `done_before` is on disk already.
    pub(super) fn new(size: u64, done_before: Vec<(u64, u64)>) -> Plan {
        Plan {
            size,
            slots: Mutex::new(Vec::new()),
            queue: Mutex::new(Vec::new()),
            done_before,
        }
    }

    /// Next range for an idle stream: an untaken gap, or half of the largest range in flight.
    fn take(&self, min_steal: u64) -> Option<Arc<Slot>> {
        if let Some((s, e)) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Some(self.add(s, e));
        }
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let victim = slots
            .iter()
            .max_by_key(|s| {
                s.end
                    .load(Ordering::Acquire)
                    .saturating_sub(s.pos.load(Ordering::Acquire))
            })?
            .clone();
        drop(slots);
        let pos = victim.pos.load(Ordering::Acquire);
        let end = victim.end.load(Ordering::Acquire);
        if end.saturating_sub(pos) < 2 * min_steal {
            return None;
        }
        let mid = pos + (end - pos) / 2;
        if victim
            .end
            .compare_exchange(end, mid, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        // The victim now stops at `mid`, or after the write it has in hand if that already
        // crossed it; from here on `[mid, end)` is the thief's alone, so it must be taken even
        // then (giving up here would leave it to nobody: a hole in a "complete" file).
        // Bytes below the victim's `pos` are on disk already and need not be fetched again.
        let from = victim.pos.load(Ordering::Acquire).clamp(mid, end);
        Some(self.add(from, end))
    }

    fn add(&self, s: u64, e: u64) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            start: s,
            pos: AtomicU64::new(s),
            end: AtomicU64::new(e),
        });
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot.clone());
        slot
    }

    /// Everything on disk: earlier runs plus what every stream has written.
    pub(super) fn completed(&self) -> Vec<(u64, u64)> {
        let mut v = self.done_before.clone();
        for s in self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            v.push((s.start, s.pos.load(Ordering::Acquire)));
        }
        merge(v)
    }

    fn total(&self) -> u64 {
        self.completed().iter().map(|(s, e)| e - s).sum()
    }
}

/// What every stream of one download shares.
pub(super) struct Fetch<'a> {
    pub(super) url: &'a Url,
    pub(super) file: &'a Arc<File>,
    pub(super) plan: &'a Arc<Plan>,
    /// `If-Range` for the ranged requests of a resumed download.
    pub(super) validator: Option<&'a str>,
}

impl Downloader {
    /// No range support: one plain GET, start to end.
    pub(super) async fn fetch_whole(
        &self,
        f: &Fetch<'_>,
        retry: &mut RetryState,
    ) -> Result<(), ClientError> {
        let slot = f.plan.add(0, f.plan.size);
        loop {
            slot.pos.store(0, Ordering::Release);
            match self.stream_into(f, &slot, false).await {
                Ok(()) => return Ok(()),
                Err(e) => self.backoff(retry, e).await?,
            }
        }
    }

    /// Ranged requests for the gaps `todo`, over as many streams as wanted.
    pub(super) async fn fetch_segments(
        &self,
        f: &Fetch<'_>,
        todo: Vec<(u64, u64)>,
        rec: &DownloadRecord,
    ) -> Result<(), ClientError> {
        let (file, plan, size) = (f.file, f.plan, f.plan.size);
        let fixed = match self.opts.parallel {
            Parallel::Fixed(n) => Some(n.max(1)),
            Parallel::Auto => None,
        };
        // Initial split: the gaps, cut so that each starting stream has one.
        let max = fixed.unwrap_or(self.opts.max_parallel).max(1);
        let start_streams = fixed
            .unwrap_or_else(|| {
                (size / AUTO_BYTES_PER_STREAM).clamp(1, AUTO_INITIAL_STREAMS as u64) as usize
            })
            .min(max);
        let mut queue = Vec::new();
        let total_todo: u64 = todo.iter().map(|(s, e)| e - s).sum();
        let piece = total_todo.div_ceil(start_streams as u64).max(1);
        for (s, e) in todo {
            let mut at = s;
            while at < e {
                let end = (at + piece).min(e);
                queue.push((at, end));
                at = end;
            }
        }
        queue.reverse();
        *plan.queue.lock().unwrap_or_else(|p| p.into_inner()) = queue;
        let min_steal = (size / 1024).clamp(256 << 10, 8 << 20);
        let mut controller = ParallelismController::new(ParallelBounds {
            max,
            initial: start_streams,
            ..ParallelBounds::default()
        });
        let target = AtomicUsize::new(start_streams);
        let mut workers = FuturesUnordered::new();
        let mut next = 0usize;
        // The controller measures over short windows: on a fast link a whole file can take
        // a second, and with one-second windows `-j auto` would stay on one stream for all
        // of it.
        let mut tick = tokio::time::interval(WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last = (Instant::now(), plan.total());
        let mut last_save = Instant::now();
        let mut saving: Option<tokio::task::JoinHandle<Result<(), ClientError>>> = None;
        let result = loop {
            let want = target.load(Ordering::Relaxed);
            while workers.len() < want {
                let Some(slot) = plan.take(min_steal) else {
                    break;
                };
                workers.push(self.segment_worker(f, slot, min_steal, next, &target));
                next += 1;
            }
            if workers.is_empty() {
                break Ok(());
            }
            tokio::select! {
                r = workers.next() => {
                    if let Some(Err(e)) = r {
                        break Err(e);
                    }
                }
                _ = tick.tick() => {
                    let now = (Instant::now(), plan.total());
                    let secs = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
                    let goodput = now.1.saturating_sub(last.1) as f64 / secs;
                    last = now;
                    self.progress.position(now.1);
                    self.progress.streams(workers.len());
                    if fixed.is_none() {
                        let n = controller.record(goodput);
                        tracing::debug!(streams = n, goodput_mb_s = goodput / 1e6, "download window");
                        target.store(n, Ordering::Relaxed);
                    }
                    // Batch the state every SAVE_EVERY: what is on disk is noted *before* the
                    // data is synced, so the record never claims bytes written after the sync
                    // began. The sync and save run beside the streams: awaited here, they would
                    // stop every stream for as long as the disk takes to write the data. Half a
                    // window of slack keeps a tick that comes just short of SAVE_EVERY from
                    // skipping a save.
                    if last_save.elapsed() + WINDOW / 2 >= SAVE_EVERY
                        && saving.as_ref().is_none_or(|h| h.is_finished())
                    {
                        if let Some(h) = saving.take()
                            && let Err(e) = join_save(h).await
                        {
                            break Err(e);
                        }
                        let mut rec = rec.clone();
                        rec.done = plan.completed();
                        let (f, state) = (file.clone(), self.state.clone());
                        saving = Some(tokio::task::spawn_blocking(move || {
                            let _ = f.sync_data();
                            state
                                .save(&Transfer::Download(rec))
                                .map_err(local("writing the state"))
                        }));
                        last_save = Instant::now();
                    }
                }
            }
        };
        // An older batch must not land after the caller's final save.
        let saved = match saving.take() {
            Some(h) => join_save(h).await,
            None => Ok(()),
        };
        result.and(saved)
    }

    /// One stream: fetches its slot, then takes more work while its index is in the target.
    async fn segment_worker(
        &self,
        f: &Fetch<'_>,
        mut slot: Arc<Slot>,
        min_steal: u64,
        index: usize,
        target: &AtomicUsize,
    ) -> Result<(), ClientError> {
        let plan = f.plan;
        let mut retry = RetryState::new(self.opts.retry, Instant::now());
        retry.begin();
        loop {
            let before = slot.pos.load(Ordering::Acquire);
            let result = self.stream_into(f, &slot, true).await;
            // Bytes written count as progress even when the attempt then failed (a cut or
            // stalled connection): the retry budget is for failures *without* progress, so
            // a link that breaks every few MB still finishes.
            if slot.pos.load(Ordering::Acquire) > before {
                retry.progress(Instant::now());
            }
            match result {
                Ok(()) => {
                    if index >= target.load(Ordering::Relaxed) && index > 0 {
                        return Ok(());
                    }
                    match plan.take(min_steal) {
                        Some(s) => slot = s,
                        None => return Ok(()),
                    }
                }
                Err(e) => self.backoff(&mut retry, e).await?,
            }
        }
    }

    /// Streams `[slot.pos, slot.end)` into the file. With `ranged`, sends Range (and If-Range
    /// when resuming against a validator); a 200 to a conditional range means the file changed.
    async fn stream_into(
        &self,
        f: &Fetch<'_>,
        slot: &Slot,
        ranged: bool,
    ) -> Result<(), AttemptError> {
        let (url, file, size) = (f.url, f.file, f.plan.size);
        let pos = slot.pos.load(Ordering::Acquire);
        let end = slot.end.load(Ordering::Acquire);
        if pos >= end {
            return Ok(());
        }
        let mut req = self.http.get(url.clone());
        if ranged {
            req = req.header(RANGE, format!("bytes={pos}-{}", end - 1));
            if let Some(v) = f.validator {
                req = req.header(IF_RANGE, v);
            }
        }
        let activity = Arc::new(Activity::default());
        activity.touch();
        let fetch = async {
            let resp = req.send().await.map_err(|e| network("GET", e))?;
            match resp.status() {
                StatusCode::PARTIAL_CONTENT if ranged => {
                    let cr = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_content_range(v).ok());
                    // A different total length is another version of the file, whatever the
                    // validators say (a server without any cannot say otherwise).
                    if let Some(l) = cr.and_then(|c| c.len)
                        && l != size
                    {
                        return Err(AttemptError::Fatal(changed()));
                    }
                    if cr.is_none_or(|c| c.start != pos) {
                        return Err(AttemptError::retry("the server answered a different range"));
                    }
                }
                StatusCode::OK if !ranged => {}
                StatusCode::OK | StatusCode::PRECONDITION_FAILED => {
                    return Err(AttemptError::Fatal(changed()));
                }
                _ => return Err(classify(resp, "GET").await),
            }
            // Chunks are gathered and written together, WRITE_BATCH at a time: one trip to
            // the blocking pool per network chunk (tens of KB) cost more context switches
            // than the copy itself.
            let mut body = resp.bytes_stream();
            let mut at = pos;
            let mut batch: Vec<bytes::Bytes> = Vec::new();
            let mut batched = 0u64;
            // A batch is also written once it is BATCH_AGE old, chunks or not: on a slow
            // stream it would otherwise sit unwritten (and unsaved) for seconds.
            let mut flush_at: Option<tokio::time::Instant> = None;
            loop {
                let next = match flush_at {
                    Some(t) => tokio::select! {
                        c = body.next() => Some(c),
                        () = tokio::time::sleep_until(t) => None,
                    },
                    None => Some(body.next().await),
                };
                let Some(next) = next else {
                    write_batch(file, &mut batch, &mut at, &mut batched, slot).await?;
                    flush_at = None;
                    continue;
                };
                let chunk = match next {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        // Keep what arrived before the failure.
                        write_batch(file, &mut batch, &mut at, &mut batched, slot).await?;
                        return Err(network("GET body", e));
                    }
                    None => break,
                };
                activity.touch();
                let limit = slot.end.load(Ordering::Acquire);
                let take = (limit.saturating_sub(at + batched) as usize).min(chunk.len());
                if take > 0 {
                    if let Some(l) = &self.opts.limiter {
                        l.acquire(take as u64).await;
                    }
                    batch.push(chunk.slice(..take));
                    batched += take as u64;
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + BATCH_AGE);
                }
                if batched >= WRITE_BATCH || at + batched >= limit {
                    write_batch(file, &mut batch, &mut at, &mut batched, slot).await?;
                    flush_at = None;
                }
                if at >= slot.end.load(Ordering::Acquire) {
                    // Done, or a thief took the rest: drop the connection's remaining bytes.
                    return Ok(());
                }
            }
            write_batch(file, &mut batch, &mut at, &mut batched, slot).await?;
            if at < slot.end.load(Ordering::Acquire) {
                return Err(AttemptError::retry("the connection closed early"));
            }
            Ok(())
        };
        let stall = self.opts.stall_timeout;
        tokio::select! {
            r = fetch => r,
            () = stalled(&activity, stall) => Err(AttemptError::retry(format!("no progress for {}s (stalled connection)", stall.as_secs()))),
            () = self.cancel.cancelled() => Err(AttemptError::Fatal(ClientError::new(ErrorKind::Interrupted, "interrupted; run the same command again to resume"))),
        }
    }
}

/// Writes the gathered chunks at `*at` (off the async threads), then advances `*at` and the
/// slot's position past them.
async fn write_batch(
    file: &Arc<File>,
    batch: &mut Vec<bytes::Bytes>,
    at: &mut u64,
    batched: &mut u64,
    slot: &Slot,
) -> Result<(), AttemptError> {
    if batch.is_empty() {
        return Ok(());
    }
    let (f, chunks, offset) = (file.clone(), std::mem::take(batch), *at);
    tokio::task::spawn_blocking(move || {
        let mut off = offset;
        for c in &chunks {
            f.write_all_at(c, off)?;
            off += c.len() as u64;
        }
        Ok::<(), std::io::Error>(())
    })
    .await
    .map_err(|e| AttemptError::Fatal(ClientError::new(ErrorKind::Local, e.to_string())))?
    .map_err(|e| AttemptError::Fatal(ClientError::local("writing the file", e)))?;
    *at += *batched;
    *batched = 0;
    slot.pos.store(*at, Ordering::Release);
    Ok(())
}

/// Waits for a background state save.
async fn join_save(h: tokio::task::JoinHandle<Result<(), ClientError>>) -> Result<(), ClientError> {
    h.await
        .map_err(|e| ClientError::new(ErrorKind::Local, format!("saving the state: {e}")))?
}

/// The server's file is another version than the one being downloaded (a 200 or 412 answer to
/// a conditional range, or another length): never spliced; [`Downloader::download`] starts
/// over.
fn changed() -> ClientError {
    ClientError::new(
        ErrorKind::FileChanged,
        "the file changed on the server while downloading",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stealing_takes_half_of_the_largest_range() {
        let plan = Plan {
            size: 1000,
            slots: Mutex::new(Vec::new()),
            queue: Mutex::new(vec![(0, 1000)]),
            done_before: vec![],
        };
        let a = plan.take(10).unwrap();
        assert_eq!((a.start, a.end.load(Ordering::Relaxed)), (0, 1000));
        a.pos.store(200, Ordering::Relaxed);
        let b = plan.take(10).unwrap();
        assert_eq!(
            a.end.load(Ordering::Relaxed),
            600,
            "victim keeps the first half"
        );
        assert_eq!((b.start, b.end.load(Ordering::Relaxed)), (600, 1000));
        a.pos.store(595, Ordering::Relaxed);
        assert!(plan.take(10).is_some(), "b's range is now the largest");
        assert_eq!(
            plan.completed(),
            vec![(0, 595), (600, 600), (800, 800)]
                .into_iter()
                .filter(|(s, e)| s < e)
                .collect::<Vec<_>>()
        );
    }
}
