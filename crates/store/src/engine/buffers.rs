//! The engine's pool of write buffers: full-size buffers are reused rather than allocated per
//! request, the number of appends running picks how large a new append's buffers are, and
//! every buffer in use counts against one budget. A writer whose buffers do not fit waits
//! before it takes a byte of its body, which leaves the bytes in the socket: the client is
//! slowed by TCP flow control, and the server's memory does not grow with the number of
//! uploads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Size of each of an append's two buffers.
pub const BUFFER_SIZE: usize = 512 * 1024;

/// At most this many idle buffers are kept for reuse.
const POOL_LIMIT: usize = 64;

/// Default bytes of buffers in use at once, across every writer: a writer's two write buffers
/// plus what its caller declares it holds while feeding them (the server: the connection's
/// read buffer). 14 writers at their full 2 × 512 KiB + 128 KiB, or about 170 at 2 × 32 KiB +
/// 32 KiB; the others wait, their bodies in their sockets. At 1,000 uploads at once the whole
/// server peaked at 92–103 MiB with 16 MiB, 91–123 MiB with 32 MiB (see docs/benchmarks.md).
pub const BUDGET_BYTES: usize = 16 * 1024 * 1024;

/// The budget is counted in units of this many bytes (a semaphore counts in `u32`).
const UNIT: usize = 1024;

/// Idle buffers of [`BUFFER_SIZE`], the count of appends alive, and the budget of buffer bytes
/// in use. One per [`Uploads`](super::Uploads).
#[derive(Debug)]
pub(crate) struct BufferPool {
    idle: Mutex<Vec<Vec<u8>>>,
    appends: AtomicUsize,
    budget: Semaphore,
    budget_units: usize,
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::with_budget(BUDGET_BYTES)
    }
}

impl BufferPool {
    /// A pool whose buffers in use may hold `bytes` at most.
    pub(crate) fn with_budget(bytes: usize) -> Self {
        let units = bytes.div_ceil(UNIT).max(1);
        Self {
            idle: Mutex::default(),
            appends: AtomicUsize::new(0),
            budget: Semaphore::new(units),
            budget_units: units,
        }
    }

    /// Waits until `bytes` of buffers fit in the budget and reserves them until the returned
    /// permit drops. A reservation larger than the whole budget is cut to the budget (it
    /// then waits for every other writer).
    pub(crate) async fn reserve(&self, bytes: usize) -> SemaphorePermit<'_> {
        let units = bytes.div_ceil(UNIT).clamp(1, self.budget_units);
        // The semaphore is never closed, so acquiring cannot fail; u32 holds 4 TiB of units.
        self.budget
            .acquire_many(units as u32)
            .await
            .expect("the buffer budget is never closed")
    }

    /// An empty buffer of `capacity`: a pooled one when a full-size buffer is asked for and
    /// one is idle.
    pub(crate) fn take(&self, capacity: usize) -> Vec<u8> {
        if capacity == BUFFER_SIZE
            && let Some(b) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
        {
            return b;
        }
        Vec::with_capacity(capacity)
    }

    /// Returns a buffer; only full-size ones are kept, up to [`POOL_LIMIT`].
    pub(crate) fn give(&self, mut b: Vec<u8>) {
        if b.capacity() == BUFFER_SIZE {
            b.clear();
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < POOL_LIMIT {
                idle.push(b);
            }
        }
    }

    /// Counts an append as alive until the returned guard drops; also returns how many were
    /// alive before it.
    pub(crate) fn start_append(&self) -> (AppendRunning<'_>, usize) {
        let before = self.appends.fetch_add(1, Ordering::Relaxed);
        (AppendRunning(&self.appends), before)
    }
}

/// One append counted in [`BufferPool`] for as long as it lives.
#[derive(Debug)]
pub(crate) struct AppendRunning<'a>(&'a AtomicUsize);

impl Drop for AppendRunning<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_size_buffers_are_reused_up_to_the_limit() {
        let pool = BufferPool::default();
        let mut b = pool.take(BUFFER_SIZE);
        b.push(1);
        let at = b.as_ptr();
        pool.give(b);
        let again = pool.take(BUFFER_SIZE);
        assert_eq!(again.as_ptr(), at, "reused");
        assert!(again.is_empty(), "cleared");
        pool.give(Vec::with_capacity(10));
        assert_eq!(pool.take(10).capacity(), 10, "odd sizes are not pooled");
        for _ in 0..POOL_LIMIT + 5 {
            pool.give(Vec::with_capacity(BUFFER_SIZE));
        }
        assert_eq!(pool.idle.lock().unwrap().len(), POOL_LIMIT);
    }

    #[tokio::test]
    async fn buffers_past_the_budget_wait_for_others_to_finish() {
        let pool = BufferPool::with_budget(100 * UNIT);
        let a = pool.reserve(60 * UNIT).await;
        let waiting = pool.reserve(60 * UNIT);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "does not fit while the first holds its buffers"
        );
        drop(a);
        let _b = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("fits once they are given back");
        // Larger than the whole budget: waits for everyone, never for ever.
        drop(_b);
        let _all = pool.reserve(1000 * UNIT).await;
    }

    #[test]
    fn appends_are_counted_while_alive() {
        let pool = BufferPool::default();
        let (a, before) = pool.start_append();
        assert_eq!(before, 0);
        let (b, before) = pool.start_append();
        assert_eq!(before, 1);
        drop(a);
        drop(b);
        assert_eq!(pool.start_append().1, 0);
    }
}
