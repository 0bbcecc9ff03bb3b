//! Comparing the uploaded file with the server's copy, by whole-file digest.

use super::policy::{fallback_digest, want_digest_for};
use super::{FileDigest, Uploader, local};
use crate::adapter::Adapter;
use crate::error::{ClientError, ErrorKind};
use crate::options::Verification;
use crate::response::Digests;
use crate::retry::RetryState;
use crate::source::{FileSource, SequentialHash};
use reqwest::Url;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

impl Uploader {
    /// Compares the file's digest with the server's: from the response that completed the
    /// upload when it carried one, else from a HEAD asking for it. A server that only has
    /// another digest than the file was hashed with costs a second read of it (but a
    /// cryptographic digest asked for with `--digest` is never replaced by the CRC).
    pub(super) async fn verify(
        &self,
        adapter: Adapter,
        url: &Url,
        ours: &FileDigest,
        early: Digests,
        source: &FileSource,
        retry: &mut RetryState,
    ) -> Result<Verification, ClientError> {
        let digests = if early.has(ours.algorithm) {
            early
        } else {
            // A chunk session computes its SHA-256 after the last chunk (in the background for
            // large files) and ignores Want-Repr-Digest: wait a bounded while for it.
            // (A server that never sends one costs at most a minute.)
            let patience = match adapter {
                Adapter::Chunks => Duration::from_secs((5 + source.len() / (8 << 20)).min(60)),
                _ => Duration::ZERO,
            };
            let until = Instant::now() + patience;
            let mut pause = Duration::from_millis(50);
            loop {
                match adapter
                    .head(&self.http, url, Some(want_digest_for(ours.algorithm)))
                    .await
                {
                    Ok(r) if r.digests.is_empty() && Instant::now() < until => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                    Ok(r) => break r.digests,
                    Err(e) => self.wait_or_give_up(retry, e).await?,
                }
            }
        };
        let (ours, theirs) = match digests.get(ours.algorithm) {
            Some(d) => (ours.clone(), d.to_vec()),
            // Another digest the server has, hashed locally again.
            None => match fallback_digest(&digests, self.opts.digest) {
                Some((d, algorithm)) => {
                    let len = source.len();
                    let s = Arc::new(Mutex::new(SequentialHash::new(algorithm)));
                    let s2 = s.clone();
                    source
                        .scan(0, len, move |at, b| {
                            s2.lock().unwrap_or_else(|p| p.into_inner()).feed(at, b);
                        })
                        .await
                        .map_err(local("reading the file"))?;
                    let bytes = std::mem::take(&mut *s.lock().unwrap_or_else(|p| p.into_inner()))
                        .finish(len)
                        .ok_or_else(|| {
                            ClientError::new(ErrorKind::Local, "file hash incomplete")
                        })?;
                    let sha = FileDigest { algorithm, bytes };
                    (sha, d.to_vec())
                }
                None if self.opts.digest.is_some() && !digests.is_empty() => {
                    return Ok(Verification::NotVerified(format!(
                        "the server did not give the {} digest asked for (--digest), so the result was not verified",
                        ours.key()
                    )));
                }
                None => {
                    return Ok(Verification::NotVerified(
                        "the server exposes no Repr-Digest, so the result was not verified".into(),
                    ));
                }
            },
        };
        if ours.bytes.as_slice() == theirs {
            Ok(Verification::Verified)
        } else {
            Err(ClientError::new(
                ErrorKind::Verification,
                format!(
                    "the server's copy differs from the file: server {} {}, local {}",
                    ours.key(),
                    hex::encode(&theirs),
                    ours.hex()
                ),
            ))
        }
    }
}
