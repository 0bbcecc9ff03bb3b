//! Parallel uploads over tus concatenation. The file is cut into segments; each is sent as a
//! partial upload (created when a stream first takes it) over its own HTTP/1.1 connection;
//! when all are done a final upload joins them (on ferry without copying a byte). Chunk
//! sessions take concurrent chunks into one session, so there the segments are ranges of that
//! one session (created first; the first part's record holds its URL) and nothing is joined:
//! the server completes the session when its last byte arrives. The number
//! of streams is fixed (`-j N`) or follows [`ParallelismController`]. Each segment's state is
//! its own (URL, range, done) — never one shared counter.

use super::pump::Target;
use super::{Run, Uploader};
use crate::adapter::{Adapter, Placement};
use crate::chunk::ChunkSizeController;
use crate::error::{ClientError, ErrorKind};
use crate::parallel::{ParallelBounds, ParallelismController};
use crate::progress::human_bytes;
use crate::response::{Digests, RemoteUpload};
use crate::retry::RetryState;
use crate::state::{PartRecord, UploadRecord};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use reqwest::Url;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cuts `len` bytes into segments: about 64 of them, each 8–256 MiB, and at least `streams`.
/// (In automatic mode, unstarted segments are then merged and split as streams take them:
/// [`split_size`].)
pub fn plan(len: u64, streams: Option<usize>) -> Vec<(u64, u64)> {
    let mut size = len.div_ceil(64).clamp(8 << 20, MAX_SEGMENT);
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

/// Automatic mode starts with this many streams. It only goes parallel on a long round trip
/// (see [`AUTO_PARALLEL_RTT`](super::AUTO_PARALLEL_RTT)), where one TCP flow rarely
/// fills the path; and goodput seen from the application is too coarse to steer a short
/// transfer's start (a socket's send buffer takes megabytes at once, then nothing for a
/// second), so growing from one stream would spend its first windows far below what the path
/// carries. More streams than needed cost a little overhead; too few cost most of the rate.
pub const AUTO_INITIAL_STREAMS: usize = 8;

/// Automatic mode never cuts an unstarted segment below this, nor below 1/256 of the file
/// (each segment costs a creation and a final response: about two round trips).
pub const MIN_SPLIT: u64 = 2 << 20;

/// How often the stream count is reconsidered: a few dozen round trips, within 1–4 s, so that
/// a window averages over the bursts in which sockets take data and a stream added at its start
/// (creation, first bytes) has settled for most of it.
pub fn window(rtt: Duration) -> Duration {
    (rtt * 24).clamp(Duration::from_secs(1), Duration::from_secs(4))
}

/// The size a stream should cut off the next unstarted segment in automatic mode, when
/// `remaining` bytes of a `len`-byte file are still to send (unstarted, or unsent in the
/// segments being sent) by `streams` streams: half of an equal share, so that streams starting
/// together get equal segments and finish together (like `-j N`'s), half of the file stays
/// unstarted for streams the controller adds, and the shares shrink toward the end (guided
/// self-scheduling) instead of one stream finishing a large last segment alone. Once half
/// shares would be down to the minimum, what is left is the last round: equal full shares.
/// (Never the whole file: a saved record of one part would read as a plain upload.)
pub fn split_size(remaining: u64, streams: usize, len: u64) -> u64 {
    let min = MIN_SPLIT.max(len / 256);
    let n = streams.max(1) as u64;
    let half = remaining / (2 * n);
    let share = if half <= min { remaining / n } else { half };
    share.min(len / 2).clamp(min, MAX_SEGMENT.max(min))
}

/// Largest segment.
const MAX_SEGMENT: u64 = 256 << 20;

/// The segments of one transfer: the saved record and who works on what. Parts are found by
/// their start (stable while unstarted parts are split).
struct Segments {
    state: Mutex<SegmentState>,
}

struct SegmentState {
    record: UploadRecord,
    /// Starts of the parts a stream is sending.
    busy: BTreeSet<u64>,
    /// Bytes known sent of each busy part (relative), for progress and goodput.
    sent: BTreeMap<u64, u64>,
}

impl Segments {
    fn lock(&self) -> std::sync::MutexGuard<'_, SegmentState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn total_sent(&self) -> u64 {
        let s = self.lock();
        let done: u64 = s
            .record
            .parts
            .iter()
            .filter(|p| p.done)
            .map(|p| p.end - p.start)
            .sum();
        done + s.sent.values().sum::<u64>()
    }

    /// Whether a part is left that no stream has taken.
    fn has_work(&self) -> bool {
        let s = self.lock();
        s.record
            .parts
            .iter()
            .any(|p| !p.done && !s.busy.contains(&p.start))
    }

    /// Takes the first part nobody works on. With `streams` (automatic mode), an unstarted
    /// part larger than its share is split first, the rest staying unstarted.
    fn take(&self, streams: Option<usize>) -> Option<PartRecord> {
        let mut s = self.lock();
        let s = &mut *s;
        let i = s
            .record
            .parts
            .iter()
            .position(|p| !p.done && !s.busy.contains(&p.start))?;
        if let Some(n) = streams
            && s.record.parts[i].url.is_none()
        {
            let remaining: u64 = s
                .record
                .parts
                .iter()
                .filter(|p| !p.done)
                .map(|p| {
                    let sent = s.sent.get(&p.start).copied().unwrap_or(0);
                    (p.end - p.start).saturating_sub(sent)
                })
                .sum();
            let len = s.record.identity.size;
            let want = split_size(remaining, n, len);
            let sliver = MIN_SPLIT.max(len / 256);
            // Unstarted parts are only a plan: join the following ones up to the share (and
            // what would be left of them, too small for a segment)...
            while s.record.parts[i].end - s.record.parts[i].start < want + sliver
                && s.record
                    .parts
                    .get(i + 1)
                    .is_some_and(|p| p.url.is_none() && !p.done && !s.busy.contains(&p.start))
            {
                let next = s.record.parts.remove(i + 1);
                s.record.parts[i].end = next.end;
            }
            // ...and cut it there, leaving no sliver behind.
            let part = &mut s.record.parts[i];
            if part.end - part.start >= want + sliver {
                let rest = PartRecord {
                    url: None,
                    start: part.start + want,
                    end: part.end,
                    done: false,
                };
                part.end = rest.start;
                s.record.parts.insert(i + 1, rest);
            }
        }
        let part = s.record.parts[i].clone();
        s.busy.insert(part.start);
        s.sent.insert(part.start, 0);
        Some(part)
    }

    /// Updates the part starting at `start` and returns the record to save.
    fn update(&self, start: u64, f: impl FnOnce(&mut PartRecord)) -> UploadRecord {
        let mut s = self.lock();
        if let Some(p) = s.record.parts.iter_mut().find(|p| p.start == start) {
            f(p);
        }
        s.record.clone()
    }

    fn set_sent(&self, start: u64, sent: u64) {
        if let Some(v) = self.lock().sent.get_mut(&start) {
            *v = sent;
        }
    }

    fn finish(&self, start: u64) -> UploadRecord {
        let mut s = self.lock();
        s.busy.remove(&start);
        s.sent.remove(&start);
        if let Some(p) = s.record.parts.iter_mut().find(|p| p.start == start) {
            p.done = true;
        }
        s.record.clone()
    }
}

/// What the streams of one segmented upload share.
#[derive(Clone, Copy)]
struct Crew<'a> {
    run: &'a Run<'a>,
    /// The one chunk session every segment writes to (chunk sessions only).
    session: Option<&'a Url>,
    /// How many streams should run.
    target: &'a AtomicUsize,
    /// Automatic mode: unstarted segments are cut to a stream's share.
    split: bool,
    segs: &'a Arc<Segments>,
}

impl Uploader {
    /// Runs a segmented upload to completion and returns the final upload's URL. `rtt` is the
    /// round trip measured at the start (it paces the automatic stream count).
    pub(super) async fn run_segmented(
        &self,
        run: &Run<'_>,
        record: Option<UploadRecord>,
        fixed: Option<usize>,
        rtt: Duration,
        retry: &mut RetryState,
    ) -> Result<(Url, u64), ClientError> {
        let Run {
            job,
            endpoint,
            shared_for,
        } = *run;
        let len = job.len;
        let chunks = job.adapter == Adapter::Chunks;
        let resuming = record.is_some();
        let record = match record {
            Some(r) => r,
            None => {
                let mut parts: Vec<PartRecord> = plan(len, fixed)
                    .into_iter()
                    .map(|(start, end)| PartRecord {
                        url: None,
                        start,
                        end,
                        done: false,
                    })
                    .collect();
                if chunks {
                    let u = self
                        .create_upload(job.adapter, endpoint, len, &job.metadata, None, retry)
                        .await?;
                    if let Some(p) = parts.first_mut() {
                        p.url = Some(u.to_string());
                    }
                }
                let r = self.new_record(job, endpoint, parts);
                self.save(&r)?;
                r
            }
        };
        // The one chunk session every segment writes to.
        let session = if chunks {
            let u = record
                .parts
                .iter()
                .find_map(|p| p.url.as_deref())
                .ok_or_else(|| ClientError::new(ErrorKind::Local, "no chunk session recorded"))?;
            Some(Url::parse(u).map_err(|e| ClientError::new(ErrorKind::Local, e.to_string()))?)
        } else {
            None
        };
        let mut resumed_from: u64 = record
            .parts
            .iter()
            .filter(|p| p.done)
            .map(|p| p.end - p.start)
            .sum();
        // A resumed chunk session says itself what it has (also of unfinished segments).
        if let Some(s) = &session
            && resuming
        {
            let had = loop {
                match job.adapter.received(&self.http, s).await {
                    Ok(had) => break had,
                    Err(e) => self.wait_or_give_up(retry, e).await?,
                }
            };
            resumed_from = resumed_from.max(had.min(len));
        }
        self.progress.start(&job.display, len, resumed_from);
        if resumed_from > 0 {
            self.progress.note(&format!(
                "resuming {}: {} already uploaded",
                job.display,
                human_bytes(resumed_from)
            ));
        }
        if let Some(f) = &record.final_url {
            let url =
                Url::parse(f).map_err(|e| ClientError::new(ErrorKind::Local, e.to_string()))?;
            return Ok((url, len));
        }

        let segs = Arc::new(Segments {
            state: Mutex::new(SegmentState {
                record,
                busy: BTreeSet::new(),
                sent: BTreeMap::new(),
            }),
        });
        // The whole-file hash cannot follow streams that run side by side: a reader hashes
        // the file in order meanwhile (streams that happen to be in order help it along).
        let hashing = {
            let shared = shared_for(Arc::new(|_| {}));
            let (source, seq) = (shared.source.clone(), shared.sequential.clone());
            tokio::spawn(async move {
                // Without verification there is no hash to bring up to date (and its position
                // never moves: looping on it would re-read the file forever).
                if !seq.lock().unwrap_or_else(|p| p.into_inner()).enabled() {
                    return Ok::<(), std::io::Error>(());
                }
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
            initial: fixed.unwrap_or(AUTO_INITIAL_STREAMS),
            ..ParallelBounds::default()
        });
        let target = Arc::new(AtomicUsize::new(controller.streams()));
        let crew = Crew {
            run,
            session: session.as_ref(),
            target: &target,
            split: fixed.is_none(),
            segs: &segs,
        };
        let mut workers = FuturesUnordered::new();
        let mut next_worker = 0usize;
        let mut tick = tokio::time::interval(window(rtt));
        tick.tick().await;
        let mut last = (Instant::now(), segs.total_sent());
        let mut settling = true;
        let result: Result<(), ClientError> = loop {
            let want = target.load(Ordering::Relaxed);
            while workers.len() < want && segs.has_work() {
                workers.push(self.segment_worker(&crew, next_worker));
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
                    // A window in which streams started is not measured: it holds their
                    // creation round trips and the megabytes their sockets take at once.
                    if fixed.is_none() && !std::mem::take(&mut settling) {
                        let n = controller.record(goodput);
                        // The target users filter on (`--log ferry_client::segmented=debug`).
                        tracing::debug!(target: "ferry_client::segmented", streams = n, goodput, "parallelism");
                        settling = n != target.swap(n, Ordering::Relaxed);
                    }
                    self.progress.position(now.1);
                    self.progress.streams(workers.len());
                }
            }
        };
        drop(workers);
        if let Err(e) = result {
            hashing.abort();
            return Err(e);
        }
        let _ = hashing.await;

        let mut rec = segs.lock().record.clone();
        if let Some(session) = session {
            // Every segment's bytes are in the session, which is then complete.
            if !rec.parts.iter().all(|p| p.done) {
                return Err(ClientError::new(
                    ErrorKind::Local,
                    "segments incomplete after upload",
                ));
            }
            rec.final_url = Some(session.to_string());
            self.save(&rec)?;
            self.progress.position(len);
            return Ok((session, resumed_from));
        }
        // Every segment is done: join them. Absolute URLs, in order.
        let urls: Vec<&str> = rec.parts.iter().filter_map(|p| p.url.as_deref()).collect();
        let contiguous = rec.parts.first().is_some_and(|p| p.start == 0)
            && rec.parts.last().is_some_and(|p| p.end == len)
            && rec.parts.windows(2).all(|w| w[0].end == w[1].start);
        if urls.len() != rec.parts.len() || !rec.parts.iter().all(|p| p.done) || !contiguous {
            return Err(ClientError::new(
                ErrorKind::Local,
                "segments incomplete after upload",
            ));
        }
        let concat = format!("final;{}", urls.join(" "));
        let final_url = self
            .create_upload(
                job.adapter,
                endpoint,
                len,
                &job.metadata,
                Some(&concat),
                retry,
            )
            .await?;
        rec.final_url = Some(final_url.to_string());
        self.save(&rec)?;
        self.progress.position(len);
        Ok((final_url, resumed_from))
    }

    /// One stream: takes segments while its index is below the target (in automatic mode,
    /// `split`, cutting unstarted ones to its share).
    async fn segment_worker(&self, crew: &Crew<'_>, index: usize) -> Result<(), ClientError> {
        let Crew {
            run,
            session,
            target,
            split,
            segs,
        } = *crew;
        let Run {
            job,
            endpoint,
            shared_for,
        } = *run;
        let mut retry = RetryState::new(self.opts.retry, Instant::now());
        retry.begin();
        let mut chunks = ChunkSizeController::new(self.opts.chunk);
        loop {
            // Streams above the target retire between segments.
            let streams = target.load(Ordering::Relaxed).max(1);
            if index >= streams && index > 0 {
                return Ok(());
            }
            let Some(part) = segs.take(split.then_some(streams)) else {
                return Ok(());
            };
            let len = part.end - part.start;
            let mut known = None;
            let mut url = part.url.as_deref().and_then(|u| Url::parse(u).ok());
            if let Some(u) = &url {
                let at = Placement {
                    base: part.start,
                    len,
                    total: job.len,
                };
                known = self.recheck(job.adapter, u, at, &mut retry).await?;
                if known.is_none() {
                    if session.is_some() {
                        return Err(ClientError::new(
                            ErrorKind::Refused,
                            "the server dropped the chunk session (expired or deleted); run \
                             again to start over",
                        ));
                    }
                    url = None;
                }
            }
            let url = match url {
                Some(u) => u,
                // A segment of a chunk session: nothing to create.
                None if let Some(s) = session => {
                    let rec = segs.update(part.start, |p| p.url = Some(s.to_string()));
                    self.save(&rec)?;
                    s.clone()
                }
                None => {
                    let u = self
                        .create_upload(
                            job.adapter,
                            endpoint,
                            len,
                            &job.metadata,
                            Some("partial"),
                            &mut retry,
                        )
                        .await?;
                    let rec = segs.update(part.start, |p| p.url = Some(u.to_string()));
                    self.save(&rec)?;
                    // Just created: nothing to ask the server about.
                    known = Some(RemoteUpload {
                        offset: 0,
                        length: Some(len),
                        complete: None,
                        digests: Digests::default(),
                    });
                    u
                }
            };
            let s2 = segs.clone();
            let base = part.start;
            let shared = shared_for(Arc::new(move |abs| {
                s2.set_sent(base, abs.saturating_sub(base));
            }));
            let t = Target {
                url: &url,
                base,
                len,
            };
            self.pump_range(&t, known, &shared, &mut chunks, &mut retry)
                .await?;
            let rec = segs.finish(base);
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

    fn segments(len: u64) -> Segments {
        let parts = plan(len, None)
            .into_iter()
            .map(|(start, end)| PartRecord {
                url: None,
                start,
                end,
                done: false,
            })
            .collect();
        Segments {
            state: Mutex::new(SegmentState {
                record: UploadRecord {
                    version: crate::state::STATE_VERSION,
                    key: "k".into(),
                    source: "/f".into(),
                    identity: crate::identity::FileIdentity {
                        size: len,
                        mtime_ns: 0,
                        dev: 0,
                        ino: 0,
                        fingerprint: String::new(),
                    },
                    endpoint: "http://h/files/".into(),
                    protocol: "tus".into(),
                    created_ms: 0,
                    parts,
                    final_url: None,
                    completed: None,
                },
                busy: BTreeSet::new(),
                sent: BTreeMap::new(),
            }),
        }
    }

    /// Takes `n` segments at once (streams starting together), then finishes them.
    fn wave(segs: &Segments, n: usize) -> Vec<u64> {
        let taken: Vec<PartRecord> = (0..n).map_while(|_| segs.take(Some(n))).collect();
        for p in &taken {
            segs.update(p.start, |p| p.url = Some("u".into()));
            segs.finish(p.start);
        }
        taken.iter().map(|p| p.end - p.start).collect()
    }

    fn assert_covered(segs: &Segments, len: u64) {
        let rec = segs.lock().record.clone();
        assert_eq!(rec.parts.first().unwrap().start, 0);
        assert_eq!(rec.parts.last().unwrap().end, len);
        assert!(rec.parts.windows(2).all(|w| w[0].end == w[1].start));
        assert!(rec.parts.iter().all(|p| p.done));
    }

    #[test]
    fn automatic_segments_come_in_equal_rounds() {
        const M: u64 = 1 << 20;
        // Eight streams starting together get equal halves of their shares; once halves
        // would be minimal, the rest goes out as one last round of equal shares.
        let segs = segments(48 * M);
        assert_eq!(wave(&segs, 8), vec![3 * M; 8]);
        assert_eq!(wave(&segs, 8), vec![3 * M; 8]);
        assert!(wave(&segs, 8).is_empty());
        assert_covered(&segs, 48 * M);
        let segs = segments(32 * M);
        assert_eq!(wave(&segs, 8), vec![4 * M; 8], "halves would be minimal");
        assert_covered(&segs, 32 * M);
        let segs = segments(256 * M);
        assert_eq!(wave(&segs, 8), vec![16 * M; 8]);
        assert_eq!(wave(&segs, 8), vec![8 * M; 8]);
        assert_eq!(wave(&segs, 8), vec![4 * M; 8]);
        assert_eq!(wave(&segs, 8), vec![4 * M; 8]);
        assert!(wave(&segs, 8).is_empty());
        assert_covered(&segs, 256 * M);
    }

    #[test]
    fn automatic_segments_shrink_and_cover_the_file_as_streams_come_back() {
        let len = 48u64 << 20;
        let segs = segments(len);
        // Streams coming back one at a time.
        let mut taken = Vec::new();
        while let Some(p) = segs.take(Some(8)) {
            assert!(p.url.is_none());
            taken.push(p.end - p.start);
            segs.update(p.start, |p| p.url = Some("u".into()));
            segs.finish(p.start);
        }
        assert_covered(&segs, len);
        assert_eq!(taken.iter().sum::<u64>(), len);
        assert_eq!(taken[0], 3 << 20);
        assert!(taken.iter().all(|&t| t >= MIN_SPLIT), "{taken:?}");
        assert!(taken[..6].windows(2).all(|w| w[1] < w[0]), "{taken:?}");
        assert!(taken.len() <= 24, "{} segments: {taken:?}", taken.len());
        // A large file: shares capped, and never below 1/256 of it.
        assert_eq!(split_size(1 << 40, 8, 1 << 40), 4 << 30);
        assert_eq!(split_size(1 << 30, 8, 1 << 30), 64 << 20);
        assert_eq!(split_size(1 << 20, 8, 1 << 30), 4 << 20);
        // Never the whole file.
        assert_eq!(split_size(40 << 20, 1, 40 << 20), 20 << 20);
    }

    #[test]
    fn started_parts_are_never_split_and_fixed_mode_never_splits() {
        let len = 64u64 << 20;
        let segs = segments(len);
        segs.update(0, |p| p.url = Some("u".into()));
        // A part with an upload on the server keeps its length.
        let first = segs.take(Some(32)).unwrap();
        assert_eq!((first.start, first.end), (0, 8 << 20));
        // Busy parts are not handed out twice.
        let second = segs.take(None).unwrap();
        assert_eq!((second.start, second.end), (8 << 20, 16 << 20));
        assert!(segs.has_work());
        assert_eq!(segs.lock().record.parts.len(), 8);
    }
}
