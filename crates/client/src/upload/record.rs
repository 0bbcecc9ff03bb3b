//! The upload's resume record: reading it back (a changed file's or another protocol's is
//! dropped, a finished one is checked with the server), and saving it when an upload or part
//! is created or finishes.

use super::policy::{recorded_verification, want_digest_for};
use super::{FileDigest, Job, UploadOutcome, Uploader, local};
use crate::adapter::Adapter;
use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::retry::RetryState;
use crate::state::{Completed, Loaded, PartRecord, STATE_VERSION, Transfer, UploadRecord, now_ms};
use reqwest::Url;

impl Uploader {
    /// The outcome of an upload of this very file that an earlier run of the same command
    /// finished ([`UploadOptions::keep_completed`]), if the server still has it whole (and, where
    /// it says, with the file's SHA-256). A finished upload the server lost, or whose digest
    /// differs, is forgotten and the file uploaded afresh.
    pub(super) async fn finished_before(
        &self,
        job: &Job,
        retry: &mut RetryState,
    ) -> Result<Option<UploadOutcome>, ClientError> {
        if self.opts.again {
            return Ok(None);
        }
        // This run's own mark first (an interrupted run of several files), then the index of
        // finished uploads.
        let index = self.state.finished().ok();
        let (rec, indexed) = match self.state.load(&job.key) {
            Ok(Loaded::Found(Transfer::Upload(rec))) => (rec, false),
            _ => match index.as_ref().map(|i| i.load(&job.key)) {
                Some(Ok(Loaded::Found(Transfer::Upload(rec)))) => (rec, true),
                _ => return Ok(None),
            },
        };
        let forget_indexed = || {
            if let Some(i) = index.as_ref().filter(|_| indexed) {
                let _ = i.remove(&job.key);
            }
        };
        if rec.identity != job.identity {
            // The file changed since: its earlier upload is another file's now.
            forget_indexed();
            return Ok(None);
        }
        let Some(done) = rec.completed else {
            return Ok(None);
        };
        // Another digest asked for than the one recorded: uploaded again, to report it.
        if let Some(asked) = self.opts.digest
            && done.digest().is_some_and(|(a, _)| a != asked)
        {
            return Ok(None);
        }
        let url =
            Url::parse(&done.url).map_err(|e| ClientError::new(ErrorKind::Local, e.to_string()))?;
        let recorded = done.digest();
        let want = recorded.map(|(a, _)| want_digest_for(a));
        let adapter = Adapter::from_name(&rec.protocol).unwrap_or(Adapter::Tus);
        let remote = loop {
            match adapter.head(&self.http, &url, want).await {
                Ok(r) => break Some(r),
                Err(AttemptError::Gone) => break None,
                Err(e) => self.wait_or_give_up(retry, e).await?,
            }
        };
        let digest = recorded.map(|(algorithm, bytes)| FileDigest {
            algorithm,
            bytes: bytes.to_vec(),
        });
        let verification = recorded_verification(remote.as_ref(), job.len, digest.as_ref());
        let Some(verification) = verification else {
            self.progress.note(&format!(
                "the server's copy of the finished upload of {} is gone or differs; uploading \
                 it again",
                job.display
            ));
            if indexed {
                forget_indexed();
            } else {
                self.state
                    .remove(&job.key)
                    .map_err(local("writing the state"))?;
            }
            return Ok(None);
        };
        self.progress.start(&job.display, job.len, job.len);
        self.progress.finish();
        Ok(Some(UploadOutcome {
            url: done.url,
            bytes: job.len,
            seconds: 0.0,
            digest,
            verification,
            resumed_from: job.len,
            key: job.key.clone(),
            protocol: adapter,
            already_uploaded: indexed,
        }))
    }

    /// Notes a finished upload in the index of finished uploads. A hint: failing to write it
    /// costs a second upload of the file some day, never a wrong answer, so it is only logged.
    pub(super) fn remember_finished(&self, job: &Job, endpoint: &Url, url: &str, d: &FileDigest) {
        let mut rec = self.new_record(job, endpoint, Vec::new());
        rec.completed = Some(Box::new(Completed::new(
            url.to_owned(),
            Some((d.algorithm, d.bytes.clone())),
        )));
        if let Err(e) = self
            .state
            .finished()
            .and_then(|i| i.save_hint(&Transfer::Upload(rec)))
        {
            tracing::warn!(
                "could not note {} in the index of finished uploads: {e}",
                job.display
            );
        }
    }

    /// The saved record for this transfer, if it is still good: the same file (a changed
    /// file's stale uploads are deleted and it starts afresh).
    pub(super) async fn saved_record(
        &self,
        job: &Job,
    ) -> Result<Option<UploadRecord>, ClientError> {
        match self
            .state
            .load(&job.key)
            .map_err(local("reading the state"))?
        {
            Loaded::Found(Transfer::Upload(rec)) if rec.identity == job.identity => Ok(Some(rec)),
            // A finished upload of the file as it was is not stale: leave it on the server.
            Loaded::Found(Transfer::Upload(rec)) if rec.completed.is_some() => {
                self.state
                    .remove(&job.key)
                    .map_err(local("writing the state"))?;
                Ok(None)
            }
            Loaded::Found(Transfer::Upload(rec)) => {
                self.progress.note(&format!(
                    "{} changed since the last run; uploading it afresh",
                    job.display
                ));
                self.drop_record(job, &rec).await?;
                Ok(None)
            }
            Loaded::Unusable(why) => {
                self.progress.note(&format!(
                    "ignoring the saved state for {}: {why}",
                    job.display
                ));
                Ok(None)
            }
            // Keys include the kind, so a download record never sits under an upload's key.
            Loaded::Missing | Loaded::Found(Transfer::Download(_)) => Ok(None),
        }
    }

    /// Deletes a record's server-side uploads (best effort) and the record.
    pub(super) async fn drop_record(
        &self,
        job: &Job,
        rec: &UploadRecord,
    ) -> Result<(), ClientError> {
        if let Some(adapter) = Adapter::from_name(&rec.protocol) {
            for u in rec.urls() {
                if let Ok(u) = Url::parse(u) {
                    let _ = adapter.delete(&self.http, &u).await;
                }
            }
        }
        self.state
            .remove(&job.key)
            .map_err(local("writing the state"))
    }

    /// Saves the transfer's record (when an upload or part is created or finishes).
    pub(crate) fn save(&self, rec: &UploadRecord) -> Result<(), ClientError> {
        self.state
            .save(&Transfer::Upload(rec.clone()))
            .map_err(local("writing the state"))
    }

    /// Saves the record of a single-stream upload of the whole file to `url`.
    pub(super) fn save_single(
        &self,
        job: &Job,
        endpoint: &Url,
        url: &Url,
    ) -> Result<(), ClientError> {
        let parts = vec![PartRecord {
            url: Some(url.to_string()),
            start: 0,
            end: job.len,
            done: false,
        }];
        self.save(&self.new_record(job, endpoint, parts))
    }

    /// A new record for `job` with the given parts.
    pub(crate) fn new_record(
        &self,
        job: &Job,
        endpoint: &Url,
        parts: Vec<PartRecord>,
    ) -> UploadRecord {
        UploadRecord {
            version: STATE_VERSION,
            key: job.key.clone(),
            source: job.abs.clone(),
            identity: job.identity.clone(),
            endpoint: endpoint.to_string(),
            protocol: job.adapter.name().into(),
            created_ms: now_ms(),
            parts,
            final_url: None,
            completed: None,
        }
    }
}

/// How much of the recorded upload the server holds, asked of the server (a HEAD per unfinished
/// part; parts the record marks done count whole). For `ferry status`.
pub async fn uploaded_bytes(
    http: &reqwest::Client,
    rec: &UploadRecord,
) -> Result<u64, ClientError> {
    if rec.completed.is_some() {
        return Ok(rec.identity.size);
    }
    let adapter = Adapter::from_name(&rec.protocol).unwrap_or(Adapter::Tus);
    let parse = |u: &str| {
        Url::parse(u).map_err(|e| ClientError::new(ErrorKind::Local, format!("{u}: {e}")))
    };
    let ask = |url: Url| async move {
        adapter
            .received(http, &url)
            .await
            .or_else(|e| match e {
                AttemptError::Gone => Ok(0),
                e => Err(e),
            })
            .map_err(|e| match e {
                AttemptError::Fatal(e) => e,
                e => ClientError::new(ErrorKind::Unreachable, format!("{url}: {}", e.message())),
            })
    };
    // Chunk sessions: one session holds every segment, and it counts what it has itself.
    if adapter == Adapter::Chunks {
        return match rec.parts.iter().find_map(|p| p.url.as_deref()) {
            Some(u) => Ok(ask(parse(u)?).await?.min(rec.identity.size)),
            None => Ok(0),
        };
    }
    let mut total = 0;
    for p in &rec.parts {
        let len = p.end - p.start;
        total += match (&p.url, p.done) {
            (_, true) => len,
            (Some(u), false) => ask(parse(u)?).await?.min(len),
            (None, false) => 0,
        };
    }
    Ok(total)
}
