//! Downloading in order into a stream (standard output, a device, a FIFO): nothing is renamed
//! and nothing is saved for a later run, since bytes already written cannot be taken back. A
//! broken connection is continued within the run with a conditional range from the bytes
//! written; the digest is checked at the end as for a file.

use super::probe::Probe;
use super::target::Target;
use super::{DownloadOutcome, Downloader};
use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::options::Verification;
use crate::response::{classify, network};
use crate::retry::RetryState;
use crate::source::{Activity, stalled};
use ferry_proto::checksum::{ChecksumAlgorithm, Hasher};
use ferry_proto::range::parse_content_range;
use futures_util::StreamExt;
use reqwest::header::{CONTENT_RANGE, IF_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// The stream being written and what has gone into it.
pub(super) struct Out {
    pub(super) file: tokio::fs::File,
    pub(super) written: u64,
    pub(super) hasher: Option<Hasher>,
}

impl Out {
    pub(super) fn new(file: std::fs::File, algorithm: Option<ChecksumAlgorithm>) -> Out {
        Out {
            file: tokio::fs::File::from_std(file),
            written: 0,
            hasher: algorithm.map(Hasher::new),
        }
    }
}

impl Downloader {
    /// Downloads into standard output or a device/FIFO (`to`), in order, and checks the digest
    /// of what was written.
    pub(super) async fn download_stream(
        &self,
        url: &Url,
        probe: &Probe,
        size: u64,
        to: Target,
        expected: Option<(ChecksumAlgorithm, Vec<u8>)>,
        retry: &mut RetryState,
    ) -> Result<DownloadOutcome, ClientError> {
        let started = Instant::now();
        let (file, path, shown) = match to {
            Target::Stdout => {
                let fd = std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| ClientError::local("standard output", e))?;
                (
                    std::fs::File::from(fd),
                    PathBuf::from("-"),
                    "standard output".to_string(),
                )
            }
            Target::Stream(p) => {
                let shown = p.display().to_string();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| ClientError::local(&shown, e))?;
                (f, p, shown)
            }
            other => unreachable!("not a stream: {other:?}"),
        };
        self.progress.note(&format!(
            "{shown}: written in order, nothing kept to resume: an interrupted run starts over"
        ));
        self.progress.start(&shown, size, 0);
        let mut out = Out::new(file, expected.as_ref().map(|(a, _)| *a));
        self.fetch_stream(url, probe, size, &mut out, retry).await?;
        self.progress.finish();
        let verification = match (expected, out.hasher.take()) {
            (Some((algorithm, want)), Some(h)) => {
                let got = h.finalize();
                if got != want {
                    return Err(ClientError::new(
                        ErrorKind::Verification,
                        format!(
                            "what was written does not match the expected {} {} (got {})",
                            algorithm.name(),
                            hex::encode(&want),
                            hex::encode(&got)
                        ),
                    ));
                }
                Verification::Verified
            }
            _ => Verification::NotVerified(
                "the server sent no Repr-Digest and no --checksum was given".into(),
            ),
        };
        Ok(DownloadOutcome {
            path,
            bytes: size,
            seconds: started.elapsed().as_secs_f64(),
            verification,
            resumed_from: 0,
        })
    }

    /// Writes the whole file at `url` into `out`, in order.
    pub(super) async fn fetch_stream(
        &self,
        url: &Url,
        probe: &Probe,
        size: u64,
        out: &mut Out,
        retry: &mut RetryState,
    ) -> Result<(), ClientError> {
        let validator = probe
            .etag
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| probe.last_modified.clone());
        while out.written < size || size == 0 {
            match self.stream_once(url, size, validator.as_deref(), out).await {
                Ok(()) => return Ok(()),
                Err(e) if out.written > 0 && !probe.ranges => {
                    return Err(ClientError::new(
                        ErrorKind::Exhausted,
                        format!(
                            "the transfer broke after {} and the server cannot continue it \
                             (no ranges): what was written cannot be taken back; start again \
                             ({})",
                            crate::progress::human_bytes(out.written),
                            e.message()
                        ),
                    ));
                }
                Err(e) => self.backoff(retry, e).await?,
            }
        }
        Ok(())
    }

    async fn stream_once(
        &self,
        url: &Url,
        size: u64,
        validator: Option<&str>,
        out: &mut Out,
    ) -> Result<(), AttemptError> {
        let from = out.written;
        let mut req = self.http.get(url.clone());
        if from > 0 {
            req = req.header(RANGE, format!("bytes={from}-"));
            if let Some(v) = validator {
                req = req.header(IF_RANGE, v);
            }
        }
        let activity = Arc::new(Activity::default());
        activity.touch();
        let fetch = async {
            let resp = req.send().await.map_err(|e| network("GET", e))?;
            match resp.status() {
                StatusCode::OK if from == 0 => {}
                StatusCode::PARTIAL_CONTENT if from > 0 => {
                    let cr = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_content_range(v).ok());
                    if cr.is_none_or(|c| c.start != from || c.len.is_some_and(|l| l != size)) {
                        return Err(AttemptError::Fatal(changed_midway(from)));
                    }
                }
                StatusCode::OK | StatusCode::PRECONDITION_FAILED => {
                    return Err(AttemptError::Fatal(changed_midway(from)));
                }
                _ => return Err(classify(resp, "GET").await),
            }
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| network("GET body", e))?;
                activity.touch();
                let take = (size.saturating_sub(out.written) as usize).min(chunk.len());
                if take == 0 {
                    break;
                }
                if let Some(l) = &self.opts.limiter {
                    l.acquire(take as u64).await;
                }
                out.file.write_all(&chunk[..take]).await.map_err(|e| {
                    AttemptError::Fatal(ClientError::local("writing the output", e))
                })?;
                if let Some(h) = &mut out.hasher {
                    h.update(&chunk[..take]);
                }
                out.written += take as u64;
                self.progress.position(out.written);
            }
            out.file
                .flush()
                .await
                .map_err(|e| AttemptError::Fatal(ClientError::local("writing the output", e)))?;
            if out.written < size {
                return Err(AttemptError::retry("the connection closed early"));
            }
            Ok(())
        };
        let stall = self.opts.stall_timeout;
        tokio::select! {
            r = fetch => r,
            () = stalled(&activity, stall) => Err(AttemptError::retry(format!(
                "no progress for {}s (stalled connection)",
                stall.as_secs()
            ))),
            () = self.cancel.cancelled() => Err(AttemptError::Fatal(ClientError::new(
                ErrorKind::Interrupted,
                "interrupted: a download into a stream does not resume",
            ))),
        }
    }
}

/// The file changed on the server after some of it was written: it cannot be taken back.
fn changed_midway(written: u64) -> ClientError {
    ClientError::new(
        ErrorKind::FileChanged,
        format!(
            "the file changed on the server after {} had been written: the output mixes two \
             versions; start again",
            crate::progress::human_bytes(written)
        ),
    )
}
