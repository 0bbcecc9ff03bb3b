//! A writer of the S3 store: spools what it receives, sends each full part as it arrives,
//! stages the rest at a checkpoint (see `store.rs` for the layout).

use super::client::{Body, S3Client};
use super::place::{Part, Piece, Place, Spools, fenced, spool_file};
use super::plan::MAX_PARTS;
use crate::data::Reservations;
use crate::data::{DataWriter, Locator, PendingWrite};
use crate::error::{Result, StoreError};
use crate::fence::Fenced;
use async_trait::async_trait;
use ferry_proto::UploadId;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::sync::Mutex;

/// The largest staged piece: a single PUT takes up to 5 GiB.
const MAX_PIECE: u64 = 4 << 30;

/// Parts one writer sends at once. A store takes one stream at its own pace (one SeaweedFS
/// stream here is far slower than loopback) and more of them in parallel, as `aws s3 cp` does
/// with 10 threads; each part waits in a spool file of its own, so memory stays flat, and
/// together they hold at most `BYTES_IN_FLIGHT` of disk (one at a time past that).
const PARTS_IN_FLIGHT: usize = 4;
const BYTES_IN_FLIGHT: u64 = 256 << 20;

/// How many parts of `size` one writer sends at once.
fn parts_in_flight(size: u64) -> usize {
    usize::try_from(BYTES_IN_FLIGHT / size.max(1))
        .unwrap_or(PARTS_IN_FLIGHT)
        .clamp(1, PARTS_IN_FLIGHT)
}

/// A part being sent.
struct InFlight {
    n: u16,
    size: u64,
    task: tokio::task::JoinHandle<Result<String>>,
}

/// A writer's state, behind a lock its writes take in order.
struct State {
    client: S3Client,
    spool_dir: std::path::PathBuf,
    /// Keeps the spool directory locked while this writer's files are in use.
    _spool_lock: Arc<std::fs::File>,
    /// Where an appender's spool is kept after each checkpoint.
    spools: Arc<Spools>,
    id: UploadId,
    /// `{epoch}-{nonce}`: names this writer's staged pieces.
    writer: String,
    /// What is in the bucket: the committed place, plus the parts and pieces this writer sent.
    place: Place,
    upload: String,
    /// The next part number this writer may use.
    next: u16,
    /// The next staged piece's sequence number.
    seq: u32,
    /// The bytes from `origin` on (named: a part is sent from it by path).
    spool: Arc<tempfile::NamedTempFile>,
    /// Where the spool's first byte sits in the upload: the parts' end for an appender, the
    /// start of its range for a range writer.
    origin: u64,
    /// An appender sends each full part as it arrives; a range writer (chunk sessions) only
    /// stages its bytes, which `finish` assembles into parts.
    appends: bool,
    /// Bytes up to here are in recorded parts or staged pieces.
    staged_to: u64,
    /// Parts being sent, oldest first: the bytes from the recorded parts' end to `origin`.
    inflight: std::collections::VecDeque<InFlight>,
    /// Bytes up to here were written (spooled or sent) by writes that succeeded.
    written: u64,
    /// A write failed: later writes fail too (the engine sends none), and a checkpoint still
    /// stages what the writes before it wrote, unless a part took some of the failed write's
    /// bytes (then nothing more can be committed by this writer).
    failed: Option<Failure>,
    fenced: Option<Fenced>,
    /// The lease's reservations of part numbers, when it is kept in a shared database.
    reservations: Option<Arc<dyn Reservations>>,
}

/// Why a writer stopped.
#[derive(Debug, Clone)]
enum Failure {
    /// Taken over: the error to give again.
    Fenced { epoch: u64, current: u64 },
    /// Anything else, as text; `poisoned` when a checkpoint can no longer be consistent.
    Other { why: String, poisoned: bool },
}

impl Failure {
    fn error(&self, id: UploadId) -> StoreError {
        match self {
            Failure::Fenced { epoch, current } => StoreError::Fenced {
                id,
                epoch: *epoch,
                current: *current,
            },
            Failure::Other { why, .. } => StoreError::Io(std::io::Error::other(why.clone())),
        }
    }
}

impl State {
    /// Spools `buf`, then sends every full part the spool holds; hands `buf` back. On a
    /// failure, `written` stays where the writes before it left it.
    async fn write(&mut self, buf: Vec<u8>) -> Result<Vec<u8>> {
        if let Some(f) = &self.failed {
            return Err(f.error(self.id));
        }
        let before = self.written;
        let result = self.write_inner(buf).await;
        if let Err(e) = &result {
            self.drop_inflight();
            let failure = match e {
                StoreError::Fenced { epoch, current, .. } => Failure::Fenced {
                    epoch: *epoch,
                    current: *current,
                },
                other => Failure::Other {
                    why: other.to_string(),
                    // Bytes that went into parts not recorded (sent, failed or dropped) are
                    // in no staged piece and no spool any more; and a part may hold bytes of
                    // this write, which can be neither committed (the engine counts the write
                    // as failed) nor taken back.
                    poisoned: self.origin > self.staged_to,
                },
            };
            self.written = before;
            self.failed = Some(failure);
        }
        result
    }

    async fn write_inner(&mut self, buf: Vec<u8>) -> Result<Vec<u8>> {
        let at = self.written - self.origin;
        let spool = self.spool.clone();
        let len = buf.len() as u64;
        // Refused at once when the writer was taken over, even before anything is sent.
        let buf = fenced(&self.fenced, async {
            tokio::task::spawn_blocking(move || {
                spool.as_file().write_all_at(&buf, at).map(|()| buf)
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .map_err(StoreError::from)
        })
        .await?;
        self.written += len;
        while self.appends && self.written - self.origin >= self.place.part_size(self.next) {
            self.send_part().await?;
        }
        Ok(buf)
    }

    /// Starts sending the spool's first `part_size(next)` bytes as part `next` from that file
    /// (the rest moves to the front of a fresh spool), once fewer than `PARTS_IN_FLIGHT` parts
    /// are under way.
    async fn send_part(&mut self) -> Result<()> {
        let n = self.next;
        while self.inflight.len() >= parts_in_flight(self.place.part_size(n)) {
            self.settle_one().await?;
        }
        if n > MAX_PARTS {
            return Err(StoreError::Inconsistent(format!(
                "upload {}: no part number left",
                self.id
            )));
        }
        // Before the number goes out: a successor on another instance starts past it, so
        // should this writer be superseded while the part is on its way, the part lands
        // where no record points.
        if let Some(r) = &self.reservations {
            r.reserve(u32::from(n)).await?;
        }
        let size = self.place.part_size(n);
        let rest_len = self.written - self.origin - size;
        let old = self.spool.clone();
        let fresh = spool_file(&self.spool_dir)?;
        let new = fresh.clone();
        let from = old.clone();
        fenced(&self.fenced, async {
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let mut buf = vec![0; rest_len as usize];
                from.as_file().read_exact_at(&mut buf, size)?;
                new.as_file().write_all_at(&buf, 0)
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .map_err(StoreError::from)
        })
        .await?;
        self.spool = fresh;
        // The spool kept at the last checkpoint is a part behind now: not worth its disk.
        self.spools.forget(self.id);
        self.origin += size;
        self.next = n + 1;
        let (c, key, upload, fence) = (
            self.client.clone(),
            self.place.key.clone(),
            self.upload.clone(),
            self.fenced.clone(),
        );
        let task = tokio::spawn(async move {
            let body = Body::File {
                path: old.path().to_path_buf(),
                start: 0,
                len: size,
            };
            // The file lives until its part is sent (`old` is held to here).
            let etag = fenced(&fence, c.upload_part(&key, &upload, n, body)).await;
            drop(old);
            etag
        });
        self.inflight.push_back(InFlight { n, size, task });
        Ok(())
    }

    /// Waits for the oldest part under way and records it.
    async fn settle_one(&mut self) -> Result<()> {
        let Some(p) = self.inflight.pop_front() else {
            return Ok(());
        };
        let etag = p
            .task
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        let parts_end = self.place.parts_end() + p.size;
        self.place.parts.push(Part {
            n: p.n,
            etag,
            size: p.size,
        });
        self.place.staged.retain(|s| s.at + s.size > parts_end);
        self.staged_to = self.staged_to.max(parts_end);
        Ok(())
    }

    /// Forgets the parts under way: after one fails, none after it may be recorded (the parts
    /// would leave a gap), and their numbers are never used again. They are left to end, not
    /// aborted: a request cut off on our side may still land at the store, and each holds the
    /// fence until it has ended, so that a newer writer lists every part sent before it starts.
    /// (Dropping a writer leaves its parts under way to end the same way.)
    fn drop_inflight(&mut self) {
        self.inflight.clear();
    }

    /// Stages what is not in the bucket yet (sent from the spool file), and returns the place
    /// that covers every byte written.
    async fn checkpoint(&mut self) -> Result<Locator> {
        match &self.failed {
            Some(f @ Failure::Fenced { .. }) | Some(f @ Failure::Other { poisoned: true, .. }) => {
                return Err(f.error(self.id));
            }
            _ => {}
        }
        // Every part under way recorded first: the locator names only parts that are there.
        while !self.inflight.is_empty() {
            if let Err(e) = self.settle_one().await {
                self.drop_inflight();
                let failure = match &e {
                    StoreError::Fenced { epoch, current, .. } => Failure::Fenced {
                        epoch: *epoch,
                        current: *current,
                    },
                    other => Failure::Other {
                        why: other.to_string(),
                        poisoned: true,
                    },
                };
                self.failed = Some(failure);
                return Err(e);
            }
        }
        // In pieces a single PUT can take.
        while self.written > self.staged_to {
            let len = (self.written - self.staged_to).min(MAX_PIECE);
            let body = Body::File {
                path: self.spool.path().to_path_buf(),
                start: self.staged_to - self.origin,
                len,
            };
            let key = format!("{}.staged/{}-{:08x}", self.place.key, self.writer, self.seq);
            self.seq += 1;
            let c = self.client.clone();
            fenced(&self.fenced, c.put_object(&key, body)).await?;
            self.place.staged.push(Piece {
                key,
                at: self.staged_to,
                size: len,
            });
            self.staged_to += len;
        }
        let at = self.place.locator();
        if self.appends {
            // Kept only while this writer is the upload's (a writer taken over keeps nothing).
            let bytes = self.written - self.origin;
            let keep = async {
                self.spools
                    .keep(self.id, at.clone(), self.spool.clone(), bytes);
                Ok(())
            };
            let _ = fenced(&self.fenced, keep).await;
        }
        Ok(at)
    }
}

/// What a writer starts from.
pub(super) struct Start {
    pub(super) client: S3Client,
    /// Where the spool files go.
    pub(super) spool_dir: std::path::PathBuf,
    /// The store's lock on that directory, held while the writer lives.
    pub(super) spool_lock: Arc<std::fs::File>,
    /// Where an appender's spool is kept for the next writer.
    pub(super) spools: Arc<Spools>,
    pub(super) id: UploadId,
    /// `{epoch}-{nonce}`.
    pub(super) writer: String,
    /// The committed place.
    pub(super) place: Place,
    pub(super) upload: String,
    /// The first part number it may use.
    pub(super) next: u16,
    /// The bytes from `at` on, spooled (an appender's staged bytes after the last part).
    pub(super) spool: Arc<tempfile::NamedTempFile>,
    /// Where it starts writing: the end of the committed place for an appender, the start of
    /// its range for a range writer.
    pub(super) at: u64,
    /// An appender (else a range writer).
    pub(super) appends: bool,
    pub(super) fenced: Option<Fenced>,
    pub(super) reservations: Option<Arc<dyn Reservations>>,
}

impl S3Writer {
    pub(super) fn new(start: Start) -> S3Writer {
        let origin = match start.appends {
            true => start.place.parts_end(),
            false => start.at,
        };
        let end = start.at;
        let state = State {
            client: start.client,
            spool_dir: start.spool_dir,
            _spool_lock: start.spool_lock,
            spools: start.spools,
            id: start.id,
            writer: start.writer,
            place: start.place,
            upload: start.upload,
            next: start.next,
            seq: 0,
            spool: start.spool,
            origin,
            appends: start.appends,
            staged_to: end,
            inflight: std::collections::VecDeque::new(),
            written: end,
            failed: None,
            fenced: start.fenced,
            reservations: start.reservations,
        };
        S3Writer {
            position: end,
            state: Arc::new(Mutex::new(state)),
            last: None,
        }
    }
}

pub(super) struct S3Writer {
    position: u64,
    state: Arc<Mutex<State>>,
    /// Resolves when the last write made has taken its turn: the next one waits for it, so
    /// writes reach the state in the order they were made.
    last: Option<tokio::sync::oneshot::Receiver<()>>,
}

#[async_trait]
impl DataWriter for S3Writer {
    fn position(&self) -> u64 {
        self.position
    }

    fn write(&mut self, buf: Vec<u8>) -> PendingWrite {
        self.position += buf.len() as u64;
        let state = self.state.clone();
        let (turn_done, turn) = tokio::sync::oneshot::channel();
        let previous = self.last.replace(turn);
        // Spawned now, so that it proceeds while the caller fills its next buffer, after the
        // write before it.
        let task = tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let mut st = state.lock_owned().await;
            let _ = turn_done.send(());
            st.write(buf).await
        });
        Box::pin(async move {
            task.await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
        })
    }

    async fn checkpoint(&mut self, _durable: bool) -> Result<Locator> {
        self.state.lock().await.checkpoint().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_in_flight_hold_at_most_256_mib_of_disk() {
        assert_eq!(parts_in_flight(8 << 20), 4);
        assert_eq!(parts_in_flight(64 << 20), 4);
        assert_eq!(parts_in_flight(128 << 20), 2);
        assert_eq!(parts_in_flight(256 << 20), 1);
        assert_eq!(parts_in_flight(4 << 30), 1);
    }
}
