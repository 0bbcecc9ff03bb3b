//! Sending one target (a whole file, or a segment) to the server: ask the offset, send chunks
//! sized by the chunk-size controller, and on failure wait and ask again. Every request goes
//! through the [`Adapter`].

use super::{Uploader, interrupted};
use crate::adapter::{Adapter, AppendRequest, Placement};
use crate::chunk::{ChunkSizeController, Outcome};
use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::identity::FileIdentity;
use crate::response::{Digests, RemoteUpload};
use crate::retry::RetryState;
use crate::source::{Activity, FileSource, SequentialHash, StreamHooks, stalled};
use crate::tus::RequestChecksum;
use ferry_proto::Metadata;
use ferry_proto::checksum::{Checksum, ChecksumAlgorithm};
use reqwest::Url;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A server-side upload and the file bytes it carries: `[base, base + len)`.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    pub(crate) url: &'a Url,
    pub(crate) base: u64,
    pub(crate) len: u64,
}

impl Target<'_> {
    /// Where the target sits in the file.
    pub(crate) fn placement(&self, shared: &Shared) -> Placement {
        Placement {
            base: self.base,
            len: self.len,
            total: shared.source.len(),
        }
    }
}

/// What every stream of one transfer shares.
pub(crate) struct Shared {
    /// The protocol.
    pub(crate) adapter: Adapter,
    /// The file as it was when the transfer started.
    pub(crate) identity: FileIdentity,
    pub(crate) source: FileSource,
    pub(crate) algorithm: Option<ChecksumAlgorithm>,
    /// Send the request checksum as a trailer (the server offers checksum-trailer)...
    pub(crate) trailer: bool,
    /// ...unless a refusal showed that trailers do not arrive (a proxy such as nginx drops
    /// them): then, for the rest of the run, the checksum goes in a header.
    pub(crate) trailers_lost: Arc<AtomicBool>,
    /// `Want-Repr-Digest` for the request that completes the file (`None`: not verifying).
    pub(crate) want_digest: Option<&'static str>,
    pub(crate) sequential: Arc<Mutex<SequentialHash>>,
    /// Called with absolute file positions as bytes go out and are acknowledged.
    pub(crate) on_position: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Shared {
    fn use_trailer(&self) -> bool {
        self.trailer && !self.trailers_lost.load(Ordering::Relaxed)
    }

    /// Fails with [`ErrorKind::FileChanged`] if the open file's size or mtime moved.
    pub(crate) fn ensure_unchanged(&self) -> Result<(), ClientError> {
        if self.identity.matches_file(self.source.file()) {
            Ok(())
        } else {
            Err(ClientError::new(
                ErrorKind::FileChanged,
                "the file changed during the upload (its size or modification time moved); \
                 run again to upload it afresh",
            ))
        }
    }

    /// A failed read of the file: the file changed, or a local I/O error.
    pub(crate) fn read_error(&self, e: std::io::Error) -> ClientError {
        match self.ensure_unchanged() {
            Err(changed) => changed,
            Ok(()) => ClientError::local("reading the file", e),
        }
    }
}

impl Uploader {
    /// Creates an upload (retrying) and returns its URL.
    pub(crate) async fn create_upload(
        &self,
        adapter: Adapter,
        endpoint: &Url,
        len: u64,
        metadata: &Metadata,
        concat: Option<&str>,
        retry: &mut RetryState,
    ) -> Result<Url, ClientError> {
        loop {
            match adapter
                .create(&self.http, endpoint, len, metadata, concat)
                .await
            {
                Ok(u) => return Ok(u),
                Err(e) => self.wait_or_give_up(retry, e).await?,
            }
        }
    }

    /// HEAD an earlier upload (retrying); `None` if the server no longer has it or it no
    /// longer matches.
    pub(crate) async fn recheck(
        &self,
        adapter: Adapter,
        url: &Url,
        at: Placement,
        retry: &mut RetryState,
    ) -> Result<Option<RemoteUpload>, ClientError> {
        loop {
            match adapter.head_at(&self.http, url, at, None).await {
                Ok(r) if r.length.is_none_or(|l| l == at.len) => return Ok(Some(r)),
                Ok(_) | Err(AttemptError::Gone) => return Ok(None),
                Err(e) => self.wait_or_give_up(retry, e).await?,
            }
        }
    }

    /// Brings the upload at `target.url` to completion from whatever offset the server
    /// reports: HEAD, send, and on failure wait and ask again. Used for whole files and for the
    /// segments of a parallel upload.
    pub(crate) async fn pump_range(
        &self,
        target: &Target<'_>,
        mut known: Option<RemoteUpload>,
        shared: &Shared,
        controller: &mut ChunkSizeController,
        retry: &mut RetryState,
    ) -> Result<Digests, ClientError> {
        let mut acked = 0u64;
        loop {
            if self.cancel.is_cancelled() {
                return Err(interrupted());
            }
            let r = match known.take() {
                Some(r) => r,
                None => match shared
                    .adapter
                    .head_at(&self.http, target.url, target.placement(shared), None)
                    .await
                {
                    Ok(r) => r,
                    Err(AttemptError::Gone) => {
                        return Err(ClientError::new(
                            ErrorKind::Refused,
                            "the server dropped the upload (expired or deleted); run again to start over",
                        ));
                    }
                    Err(e) => {
                        self.wait_or_give_up(retry, e).await?;
                        continue;
                    }
                },
            };
            if r.offset > acked {
                retry.progress(Instant::now());
                acked = r.offset;
            }
            (shared.on_position)(target.base + r.offset);
            if r.offset >= target.len && r.complete == Some(false) {
                // All bytes are there but the request that said so was lost (IETF: the
                // upload stays open until an append with `Upload-Complete: ?1`).
                match self.complete_empty(target, r.offset, shared).await {
                    Ok(digests) => return Ok(digests),
                    Err(e) => {
                        self.wait_or_give_up(retry, e).await?;
                        continue;
                    }
                }
            }
            if r.offset >= target.len {
                return Ok(r.digests);
            }
            // Bring the whole-file hash up to where sending resumes, so every byte is hashed
            // once, in order.
            let caught_up = shared
                .sequential
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .position();
            let resume_at = target.base + r.offset;
            if (target.base..resume_at).contains(&caught_up) {
                let seq = shared.sequential.clone();
                shared
                    .source
                    .scan(caught_up, resume_at, move |at, b| {
                        seq.lock().unwrap_or_else(|p| p.into_inner()).feed(at, b);
                    })
                    .await
                    .map_err(|e| shared.read_error(e))?;
            }
            match self
                .send_range(target, r.offset, shared, controller, retry, &mut acked)
                .await
            {
                Ok(digests) => return Ok(digests),
                Err(AttemptError::TooLarge { size }) => {
                    controller.record(Outcome::TooLarge { bytes: size });
                    if size <= self.opts.chunk.min {
                        return Err(ClientError::new(
                            ErrorKind::Refused,
                            format!("the server refuses even {size}-byte requests (413)"),
                        ));
                    }
                }
                Err(e) => {
                    controller.record(Outcome::Failed);
                    // A file that shrank fails the body stream, which looks like a network
                    // error from here (or the checksum read, a local one): no retry can help.
                    shared.ensure_unchanged()?;
                    self.wait_or_give_up(retry, e).await?;
                }
            }
        }
    }

    /// An empty append that completes an upload whose bytes have all arrived.
    async fn complete_empty(
        &self,
        target: &Target<'_>,
        offset: u64,
        shared: &Shared,
    ) -> Result<Digests, AttemptError> {
        let want = shared
            .want_digest
            .filter(|_| target.base == 0 && target.len == shared.source.len());
        let req = shared.adapter.append(
            &self.http,
            AppendRequest {
                url: target.url,
                at: target.placement(shared),
                offset,
                len: 0,
                body: reqwest::Body::from(Vec::new()),
                last: true,
                checksum: RequestChecksum::None,
                probe: false,
                want_digest: want,
            },
        );
        let stall = self.opts.stall_timeout;
        let sent = tokio::select! {
            r = req => r?,
            () = tokio::time::sleep(stall) => return Err(AttemptError::retry(format!(
                "no answer for {}s (stalled connection)", stall.as_secs()
            ))),
            () = self.cancel.cancelled() => return Err(AttemptError::Fatal(interrupted())),
        };
        Ok(sent.digests)
    }

    /// Sends chunks from `offset` (relative to the target) until its end or the first failure;
    /// returns the digests the last answer carried.
    async fn send_range(
        &self,
        target: &Target<'_>,
        mut offset: u64,
        shared: &Shared,
        controller: &mut ChunkSizeController,
        retry: &mut RetryState,
        acked: &mut u64,
    ) -> Result<Digests, AttemptError> {
        let len = target.len;
        let mut digests = Digests::default();
        while offset < len {
            let size = controller.next_size().min(len - offset);
            let (start, end) = (target.base + offset, target.base + offset + size);
            let use_trailer = shared.use_trailer();
            let checksum = match shared.algorithm {
                Some(_) if use_trailer => None,
                Some(a) => Some(Checksum {
                    algorithm: a,
                    digest: shared.source.checksum(start, end, a).await.map_err(|e| {
                        AttemptError::Fatal(ClientError::local("reading the file", e))
                    })?,
                }),
                None => None,
            };
            let activity = Arc::new(Activity::default());
            activity.touch();
            let hooks = StreamHooks {
                sequential: shared.sequential.clone(),
                activity: activity.clone(),
                on_position: shared.on_position.clone(),
                limiter: self.opts.limiter.clone(),
            };
            let trailer = shared.algorithm.filter(|_| use_trailer);
            let body = reqwest::Body::wrap(shared.source.body(start, end, hooks, trailer));
            let request_checksum = match (&checksum, trailer) {
                (Some(c), _) => RequestChecksum::Header(c),
                (None, Some(_)) => RequestChecksum::Trailer,
                (None, None) => RequestChecksum::None,
            };
            let last = offset + size == len;
            // The request that completes the whole file asks for its digest, and so does the
            // one that starts it: ferry's server then keeps a cryptographic digest (--digest)
            // running instead of reading the upload back at the end.
            let want = shared.want_digest.filter(|_| {
                target.base == 0 && (last || offset == 0) && target.len == shared.source.len()
            });
            let t0 = Instant::now();
            let stall = self.opts.stall_timeout;
            let probe = size > controller.accepted();
            let request = AppendRequest {
                url: target.url,
                at: target.placement(shared),
                offset,
                len: size,
                body,
                last,
                checksum: request_checksum,
                probe,
                want_digest: want,
            };
            let sent = tokio::select! {
                r = shared.adapter.append(&self.http, request) => r,
                () = stalled(&activity, stall) => Err(AttemptError::retry(format!(
                    "no progress for {}s (stalled connection)", stall.as_secs()
                ))),
                () = self.cancel.cancelled() => Err(AttemptError::Fatal(interrupted())),
            };
            let sent = match sent {
                // Sent again once with the checksum in a header: if trailers were not the
                // cause, the same refusal comes back and ends the upload.
                // 400 is how a server answers a trailer it never got; nothing else is taken
                // for that.
                Err(AttemptError::Fatal(e)) if trailer.is_some() && e.status == Some(400) => {
                    shared.trailers_lost.store(true, Ordering::Relaxed);
                    self.note_once(
                        "the server did not receive a checksum trailer (a proxy may drop \
                         trailers); sending checksums in a header",
                    );
                    return Err(AttemptError::Retry {
                        why: e.message,
                        retry_after: Some(Duration::ZERO),
                        answered: true,
                    });
                }
                other => other?,
            };
            let new = sent.offset;
            digests = sent.digests;
            if new <= offset {
                return Err(AttemptError::retry("the server accepted no bytes"));
            }
            controller.record(Outcome::Ok {
                bytes: new - offset,
                took: t0.elapsed(),
            });
            retry.progress(Instant::now());
            *acked = new;
            offset = new;
            (shared.on_position)(target.base + offset);
        }
        Ok(digests)
    }
}

#[cfg(test)]
mod tests;
