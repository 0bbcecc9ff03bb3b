//! The bounded pool that reads large uploads back for a digest a client asked for: a fixed
//! number of workers, a bounded queue, never two jobs of one upload for the same digests, and
//! an estimate of when a job will be done, so that a request waits only when its answer can
//! come within its bound. The decisions are [`policy`]'s.

use super::super::policy::{self, Admission, JobsOf};
use ferry_proto::UploadId;
use ferry_proto::digest::WantDigest;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One read-back: which upload, which digests, how many bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Job {
    pub id: UploadId,
    pub algorithms: WantDigest,
    pub length: u64,
}

/// A job's end as its waiters see it: the sender is dropped when the job ends, however it ends
/// (stored, failed, or its worker gone), which wakes every receiver.
type Done = watch::Sender<()>;

struct Queued {
    job: Job,
    done: Done,
}

struct Running {
    algorithms: WantDigest,
    length: u64,
    /// Bytes hashed so far, for estimates.
    read: Arc<AtomicU64>,
    done: Done,
}

impl Running {
    fn left(&self) -> u64 {
        self.length
            .saturating_sub(self.read.load(Ordering::Relaxed))
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    running: HashMap<UploadId, Running>,
    /// Worker tasks alive.
    workers: usize,
    /// Measured hash rate (bytes/s), once a job was long enough to tell.
    rate: Option<u64>,
    #[cfg(test)]
    most_queued: usize,
}

impl State {
    /// Marks `job` as running; its progress counter, for the worker.
    fn start(&mut self, job: &Job, done: Done) -> Arc<AtomicU64> {
        let read = Arc::new(AtomicU64::new(0));
        self.running.insert(
            job.id,
            Running {
                algorithms: job.algorithms,
                length: job.length,
                read: read.clone(),
                done,
            },
        );
        read
    }
}

/// Read-back jobs and their workers (one pool per [`Uploads`](super::super::Uploads)).
pub(crate) struct DigestJobs {
    workers: usize,
    queue_max: usize,
    state: Mutex<State>,
}

impl Default for DigestJobs {
    fn default() -> Self {
        Self::new(policy::DIGEST_WORKERS, policy::DIGEST_QUEUE)
    }
}

impl DigestJobs {
    /// A pool of `workers` (at least one) and a queue of at most `queue_max` jobs.
    pub(crate) fn new(workers: usize, queue_max: usize) -> Self {
        Self {
            workers: workers.max(1),
            queue_max,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client that accepts `accepts` and waits at most `bound` needs `job`: it joins the
    /// upload's job that computes what it accepts, or adds to the upload's queued job, or
    /// queues one (started at once when a worker is free), or nothing is queued when the queue
    /// is full. Returns what to wait on, if the job can be done within `bound`; `run` does a
    /// job (given a counter of the bytes it hashed).
    pub(crate) fn submit<R, F>(
        self: &Arc<Self>,
        job: Job,
        accepts: WantDigest,
        bound: Duration,
        run: R,
    ) -> Option<watch::Receiver<()>>
    where
        R: Fn(Job, Arc<AtomicU64>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let mut guard = self.state();
        let st = &mut *guard;
        let queued = st.queue.iter().position(|q| q.job.id == job.id);
        let jobs = JobsOf {
            running: st
                .running
                .get(&job.id)
                .map(|r| policy::covers(r.algorithms, accepts)),
            queued: queued.map(|at| (at, policy::covers(st.queue[at].job.algorithms, accepts))),
        };
        let running_left = st
            .running
            .values()
            .fold(0u64, |sum, r| sum.saturating_add(r.left()));
        // Bytes of the queue up to and including position `at`.
        let queued_through = |queue: &VecDeque<Queued>, at: usize| {
            queue
                .iter()
                .take(at.saturating_add(1))
                .fold(0u64, |sum, q| sum.saturating_add(q.job.length))
        };
        let (done, ahead) = match policy::admit(jobs, st.queue.len(), self.queue_max) {
            Admission::JoinRunning => {
                let r = st.running.get(&job.id)?;
                (r.done.subscribe(), r.left())
            }
            Admission::JoinQueued(at) => {
                let ahead = running_left.saturating_add(queued_through(&st.queue, at));
                (st.queue.get(at)?.done.subscribe(), ahead)
            }
            Admission::Merge(at) => {
                let ahead = running_left.saturating_add(queued_through(&st.queue, at));
                let q = st.queue.get_mut(at)?;
                q.job.algorithms = job
                    .algorithms
                    .algorithms()
                    .fold(q.job.algorithms, WantDigest::with);
                (q.done.subscribe(), ahead)
            }
            Admission::Queue if st.workers < self.workers && !st.running.contains_key(&job.id) => {
                // A worker is free: the job starts now, never taking a place in the queue.
                let (done, waiting) = watch::channel(());
                let read = st.start(&job, done);
                st.workers += 1;
                tokio::spawn(work(self.clone(), job, read, run));
                (waiting, job.length)
            }
            Admission::Queue => {
                let (done, waiting) = watch::channel(());
                st.queue.push_back(Queued { job, done });
                #[cfg(test)]
                {
                    st.most_queued = st.most_queued.max(st.queue.len());
                }
                let ahead = running_left.saturating_add(queued_through(&st.queue, usize::MAX));
                (waiting, ahead)
            }
            Admission::Refuse => {
                tracing::debug!(upload = %job.id, "digest queue full: answering with the digests known");
                return None;
            }
        };
        let rate = policy::hash_rate(st.rate);
        policy::waits_for_digest(ahead, rate, self.workers, bound).then_some(done)
    }

    /// Ends the running job of `id` (waking its waiters), measures the hash rate, and hands the
    /// worker the next job whose upload is not being read already, if any.
    fn finish(&self, id: UploadId, hashed: u64, took: Duration) -> Option<(Job, Arc<AtomicU64>)> {
        let mut guard = self.state();
        let st = &mut *guard;
        st.running.remove(&id);
        st.rate = policy::next_hash_rate(st.rate, hashed, took);
        let next = st
            .queue
            .iter()
            .position(|q| !st.running.contains_key(&q.job.id))
            .and_then(|at| st.queue.remove(at));
        let Some(Queued { job, done }) = next else {
            st.workers = st.workers.saturating_sub(1);
            return None;
        };
        let read = st.start(&job, done);
        Some((job, read))
    }

    /// A worker ended in the middle of the job of `id` (its task was dropped): the job ends
    /// and the worker's place frees up.
    fn abandon(&self, id: UploadId) {
        let mut st = self.state();
        st.running.remove(&id);
        st.workers = st.workers.saturating_sub(1);
    }

    /// Jobs waiting for a worker.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.state().queue.len()
    }

    /// Most jobs ever waiting at once.
    #[cfg(test)]
    pub(crate) fn most_queued(&self) -> usize {
        self.state().most_queued
    }
}

/// A worker: runs `first`, then queued jobs until none is left.
async fn work<R, F>(pool: Arc<DigestJobs>, first: Job, read: Arc<AtomicU64>, run: R)
where
    R: Fn(Job, Arc<AtomicU64>) -> F,
    F: Future<Output = ()>,
{
    let mut shift = Shift {
        pool: &pool,
        job: Some(first.id),
    };
    let mut next = Some((first, read));
    while let Some((job, read)) = next {
        let started = Instant::now();
        run(job, read.clone()).await;
        next = pool.finish(job.id, read.load(Ordering::Relaxed), started.elapsed());
        shift.job = next.as_ref().map(|(j, _)| j.id);
    }
}

/// The job a worker is in the middle of, abandoned if the worker is dropped (runtime shutdown):
/// a job left marked as running would hold its waiters and its upload forever.
struct Shift<'a> {
    pool: &'a DigestJobs,
    job: Option<UploadId>,
}

impl Drop for Shift<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.job {
            self.pool.abandon(id);
        }
    }
}
