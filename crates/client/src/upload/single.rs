//! One stream, one upload: a new or resumed upload of the whole file, or a small file sent in
//! its creation request.

use super::pump::{Shared, Target};
use super::{Run, Uploader, interrupted};
use crate::adapter::Placement;
use crate::chunk::ChunkSizeController;
use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::progress::human_bytes;
use crate::response::{Digests, RemoteUpload};
use crate::retry::RetryState;
use crate::source::{Activity, stalled};
use crate::state::UploadRecord;
use crate::tus::{CreateWithBody, Pace};
use ferry_proto::checksum::Checksum;
use reqwest::Url;
use std::sync::Arc;

impl Uploader {
    /// One stream, one upload.
    pub(super) async fn run_single(
        &self,
        run: &Run<'_>,
        record: Option<UploadRecord>,
        retry: &mut RetryState,
    ) -> Result<(Url, u64, Digests), ClientError> {
        let Run {
            job,
            endpoint,
            shared_for,
        } = *run;
        let len = job.len;
        let mut resumed = None;
        if let Some(u) = record
            .as_ref()
            .and_then(|r| r.parts.first())
            .and_then(|p| p.url.as_deref())
        {
            let u = Url::parse(u).map_err(|e| ClientError::new(ErrorKind::Local, e.to_string()))?;
            let whole = Placement {
                base: 0,
                len,
                total: len,
            };
            match self.recheck(job.adapter, &u, whole, retry).await? {
                Some(r) => resumed = Some((u, r)),
                None => self
                    .progress
                    .note("the server no longer has the earlier upload; starting over"),
            }
        }
        let (url, remote) = match resumed {
            Some((u, r)) => (u, Some(r)),
            None => {
                let u = self
                    .create_upload(job.adapter, endpoint, len, &job.metadata, None, retry)
                    .await?;
                self.save_single(job, endpoint, &u)?;
                (u, None)
            }
        };
        let resumed_from = remote.as_ref().map_or(0, |r| r.offset);
        self.progress.start(&job.display, len, resumed_from);
        if resumed_from > 0 {
            self.progress.note(&format!(
                "resuming {} at {}",
                job.display,
                human_bytes(resumed_from)
            ));
        }
        let progress = self.progress.clone();
        let shared = shared_for(Arc::new(move |p| progress.position(p)));
        let digests = self.pump_whole(&url, remote, &shared, retry).await?;
        Ok((url, resumed_from, digests))
    }

    /// Brings a single-stream upload of the whole file to completion.
    async fn pump_whole(
        &self,
        url: &Url,
        known: Option<RemoteUpload>,
        shared: &Shared,
        retry: &mut RetryState,
    ) -> Result<Digests, ClientError> {
        let mut controller = ChunkSizeController::new(self.opts.chunk);
        let target = Target {
            url,
            base: 0,
            len: shared.source.len(),
        };
        self.pump_range(&target, known, shared, &mut controller, retry)
            .await
    }

    /// A small new file in one request: creation with the whole file as body. Nothing is
    /// saved unless the server takes only part of it (then it goes on like any upload).
    pub(super) async fn run_small(
        &self,
        run: &Run<'_>,
        retry: &mut RetryState,
    ) -> Result<(Url, u64, Digests), ClientError> {
        let Run {
            job,
            endpoint,
            shared_for,
        } = *run;
        let len = job.len;
        self.progress.start(&job.display, len, 0);
        let progress = self.progress.clone();
        let shared = shared_for(Arc::new(move |p| progress.position(p)));
        let data = shared
            .source
            .read_all()
            .await
            .map_err(|e| shared.read_error(e))?;
        shared
            .sequential
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .feed(0, &data);
        let checksum = shared.algorithm.map(|a| Checksum {
            algorithm: a,
            digest: ferry_proto::checksum::digest(a, &data),
        });
        let data = bytes::Bytes::from(data);
        loop {
            if self.cancel.is_cancelled() {
                return Err(interrupted());
            }
            // A paced body may take longer than any fixed deadline: it is given up on only
            // when no block moved for the stall timeout.
            let activity = Arc::new(Activity::default());
            activity.touch();
            let request = CreateWithBody {
                endpoint,
                metadata: &job.metadata,
                data: data.clone(),
                pace: self.opts.limiter.clone().map(|limiter| Pace {
                    limiter,
                    activity: activity.clone(),
                }),
                checksum: checksum.as_ref(),
                want_digest: shared.want_digest,
            };
            let stall = self.opts.stall_timeout;
            let creation = job.adapter.create_with_body(&self.http, request);
            let stall_seen = stalled(&activity, stall);
            tokio::pin!(creation, stall_seen);
            // A paced body counts its blocks: shown as they go, not all at the end.
            let mut shown = tokio::time::interval(std::time::Duration::from_millis(200));
            let sent = loop {
                tokio::select! {
                    r = &mut creation => break r,
                    () = &mut stall_seen => break Err(AttemptError::retry(format!(
                        "no progress for {}s (stalled connection)", stall.as_secs()
                    ))),
                    _ = shown.tick() => (shared.on_position)(activity.bytes().min(len)),
                }
            };
            match sent {
                Ok((url, sent)) if sent.offset >= len => {
                    (shared.on_position)(len);
                    return Ok((url, 0, sent.digests));
                }
                Ok((url, sent)) => {
                    // Only part of it was taken: from here on, a resumable upload.
                    self.save_single(job, endpoint, &url)?;
                    let known = RemoteUpload {
                        offset: sent.offset,
                        length: Some(len),
                        complete: None,
                        digests: Digests::default(),
                    };
                    let digests = self.pump_whole(&url, Some(known), &shared, retry).await?;
                    return Ok((url, 0, digests));
                }
                Err(e) => {
                    shared.ensure_unchanged()?;
                    self.wait_or_give_up(retry, e).await?;
                }
            }
        }
    }
}
