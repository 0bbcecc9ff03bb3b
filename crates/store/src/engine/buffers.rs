//! The engine's pool of write buffers: full-size buffers are reused rather than allocated per
//! request, and the number of appends running picks how large a new append's buffers are.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Size of each of an append's two buffers.
pub const BUFFER_SIZE: usize = 512 * 1024;

/// At most this many idle buffers are kept for reuse.
const POOL_LIMIT: usize = 64;

/// Idle buffers of [`BUFFER_SIZE`], and the count of appends alive. One per
/// [`Uploads`](super::Uploads).
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    idle: Mutex<Vec<Vec<u8>>>,
    appends: AtomicUsize,
}

impl BufferPool {
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
