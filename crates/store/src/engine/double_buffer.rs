//! Two buffers per writer: one fills while the other is being written, so receiving bytes and
//! writing them overlap. Shared by appends and chunk writes. Both count against the pool's
//! budget from the first byte pushed until the writer is dropped.

use super::buffers::BufferPool;
use crate::data::{DataWriter, PendingWrite};
use crate::error::{Result, StoreError};
use tokio::sync::SemaphorePermit;

/// A filling buffer, the spare back from its write, and the write in flight.
pub(crate) struct DoubleBuffer<'a> {
    pool: &'a BufferPool,
    /// Size of each buffer.
    capacity: usize,
    /// Both buffers' share of the budget, taken at the first push.
    reserved: Option<SemaphorePermit<'a>>,
    /// The buffer being filled.
    buf: Vec<u8>,
    /// The other buffer, back from its write.
    spare: Option<Vec<u8>>,
    inflight: Option<PendingWrite>,
    /// Bytes whose writes completed successfully.
    written: u64,
    /// The first write failure, and whether it was "storage full".
    failed: Option<(String, bool)>,
}

impl<'a> DoubleBuffer<'a> {
    /// Buffers of `capacity` bytes, taken from (and given back to) `pool` once bytes arrive.
    pub(crate) fn new(pool: &'a BufferPool, capacity: usize) -> Self {
        Self {
            pool,
            capacity,
            reserved: None,
            buf: Vec::new(),
            spare: None,
            inflight: None,
            written: 0,
            failed: None,
        }
    }

    /// Reserves both buffers' share of the budget, plus `extra` bytes the caller holds while it
    /// writes (the connection's read buffer), unless already reserved. Waits while the budget
    /// is spent.
    pub(crate) async fn reserve(&mut self, extra: usize) {
        if self.reserved.is_none() {
            self.reserved = Some(self.pool.reserve(2 * self.capacity + extra).await);
            self.buf = self.pool.take(self.capacity);
        }
    }

    /// Bytes waiting in the filling buffer (not yet handed to a writer).
    pub(crate) fn buffered(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Bytes whose writes completed successfully.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Whether a write failed.
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// After a failed write nothing more may be written: the writer's position is past the
    /// lost buffer, so a later write would leave a hole counted as data. Keeps "storage full"
    /// recognisable (507, not 500).
    pub(crate) fn check_failed(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some((_, true)) => Err(StoreError::StorageFull),
            Some((e, false)) => Err(StoreError::Io(std::io::Error::other(e.clone()))),
        }
    }

    /// Buffers `data`, handing each full buffer to `writer`.
    pub(crate) async fn push(
        &mut self,
        mut data: &[u8],
        writer: &mut dyn DataWriter,
    ) -> Result<()> {
        if !data.is_empty() {
            self.reserve(0).await;
        }
        while !data.is_empty() {
            let room = self.buf.capacity() - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == self.buf.capacity() {
                self.submit(writer).await?;
            }
        }
        Ok(())
    }

    /// Hands what is buffered to `writer` and waits until every write has completed.
    pub(crate) async fn flush(&mut self, writer: &mut dyn DataWriter) -> Result<()> {
        self.submit(writer).await?;
        self.settle().await
    }

    /// The write in flight, if any, for a caller that must know when it has landed (the
    /// writer is going away without waiting for it).
    pub(crate) fn take_inflight(&mut self) -> Option<PendingWrite> {
        self.inflight.take()
    }

    /// Waits for the write in flight, if any. It stays in `inflight` until it has landed, so
    /// a caller abandoning the wait can still learn when it does
    /// ([`take_inflight`](Self::take_inflight)).
    async fn settle(&mut self) -> Result<()> {
        if let Some(w) = self.inflight.as_mut() {
            let landed = w.await;
            self.inflight = None;
            match landed {
                Ok(buf) => {
                    self.written += buf.len() as u64;
                    self.spare = Some(buf);
                }
                Err(e) => {
                    self.failed = Some((e.to_string(), matches!(e, StoreError::StorageFull)));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Hands the filled buffer to the writer and continues in the other one.
    async fn submit(&mut self, writer: &mut dyn DataWriter) -> Result<()> {
        self.settle().await?;
        self.check_failed()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = match self.spare.take() {
            Some(mut b) => {
                b.clear();
                b
            }
            None => self.pool.take(self.buf.capacity()),
        };
        let full = std::mem::replace(&mut self.buf, next);
        self.inflight = Some(writer.write(full));
        Ok(())
    }
}

impl Drop for DoubleBuffer<'_> {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
        if let Some(b) = self.spare.take() {
            self.pool.give(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    /// Records what was written; fails every write from the `fail_at`-th on.
    struct Recorder {
        pos: u64,
        out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        writes: usize,
        fail_at: usize,
    }

    #[async_trait]
    impl DataWriter for Recorder {
        fn position(&self) -> u64 {
            self.pos
        }

        fn write(&mut self, buf: Vec<u8>) -> PendingWrite {
            self.pos += buf.len() as u64;
            self.writes += 1;
            let fail = self.writes >= self.fail_at;
            let out = self.out.clone();
            Box::pin(async move {
                if fail {
                    return Err(StoreError::StorageFull);
                }
                out.lock().unwrap().extend_from_slice(&buf);
                Ok(buf)
            })
        }

        async fn checkpoint(&mut self, _durable: bool) -> Result<crate::data::Locator> {
            Ok(crate::data::Locator::none())
        }
    }

    fn recorder(fail_at: usize) -> Recorder {
        Recorder {
            pos: 0,
            out: Default::default(),
            writes: 0,
            fail_at,
        }
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_through_two_buffers() {
        let pool = BufferPool::default();
        let mut w = recorder(usize::MAX);
        let mut b = DoubleBuffer::new(&pool, 10);
        let data: Vec<u8> = (0..95).collect();
        for piece in data.chunks(7) {
            b.push(piece, &mut w).await.unwrap();
        }
        assert_eq!(b.buffered(), 5);
        assert!(b.written() <= 90);
        b.flush(&mut w).await.unwrap();
        assert_eq!((b.buffered(), b.written()), (0, 95));
        assert_eq!(*w.out.lock().unwrap(), data);
        assert_eq!(w.writes, 10);
    }

    #[tokio::test]
    async fn a_failed_write_stops_every_later_one() {
        let pool = BufferPool::default();
        let mut w = recorder(2);
        let mut b = DoubleBuffer::new(&pool, 4);
        b.push(&[1; 8], &mut w).await.unwrap();
        assert!(!b.has_failed());
        assert!(matches!(
            b.flush(&mut w).await,
            Err(StoreError::StorageFull)
        ));
        assert!(b.has_failed());
        assert_eq!(b.written(), 4, "only the write before the failure counts");
        assert!(matches!(
            b.push(&[2; 4], &mut w).await,
            Err(StoreError::StorageFull)
        ));
        assert_eq!(w.writes, 2, "nothing written after the failure");
    }
}
