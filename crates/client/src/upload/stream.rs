//! `ferry upload - URL`: standard input, whose length is known only at its end. The upload is
//! created with a deferred length (tus creation-defer-length) and fed a chunk at a time; the
//! chunk in flight stays in memory until the server acknowledges it, so a failed request is
//! sent again from the offset the server reports. What stdin gave cannot be read twice: a run
//! that ends early cannot be resumed by the next one (the state dir keeps nothing).

use super::policy::want_digest_for;
use super::{FileDigest, UploadOutcome, Uploader};
use crate::adapter::Adapter;
use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::options::Verification;
use crate::response::Digests;
use crate::response::{classify, created_url, digests_of, header, network};
use crate::retry::RetryState;
use crate::source::{Activity, stalled};
use bytes::{Bytes, BytesMut};
use ferry_proto::checksum::Hasher;
use ferry_proto::{Metadata, tus};
use reqwest::Url;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest chunk held in memory, whatever `--chunk-size` says.
const MAX_STREAM_CHUNK: u64 = 64 << 20;

/// Where the stream stands: bytes before `offset` are on the server; `pending` follows them.
struct Cursor {
    offset: u64,
    pending: Bytes,
    /// The input has ended: the length is `offset + pending.len()`.
    ended: bool,
    /// The server has the length (sent with the request that ended the input).
    length_known: bool,
}

impl Uploader {
    /// Uploads everything `input` yields, named `name`, to a tus endpoint that offers
    /// creation-defer-length.
    pub async fn upload_stream<R: AsyncRead + Unpin>(
        &self,
        mut input: R,
        endpoint: &Url,
        name: &str,
    ) -> Result<UploadOutcome, ClientError> {
        let started = Instant::now();
        let mut retry = RetryState::new(self.opts.retry, Instant::now());
        let (caps, _) = self.server_caps(endpoint, &mut retry).await?;
        retry.begin();
        if !(caps.tus && caps.has("creation-defer-length")) {
            return Err(ClientError::new(
                ErrorKind::Refused,
                format!(
                    "{endpoint} cannot take an upload of unknown length (no tus \
                     creation-defer-length): save the input to a file and upload that"
                ),
            ));
        }
        let algorithm = super::policy::choose_digest(self.opts.digest, &caps, Adapter::Tus);
        let mut metadata = Metadata::default();
        let usage = |e: ferry_proto::ProtoError| ClientError::new(ErrorKind::Usage, e.to_string());
        metadata
            .insert("filename".into(), Some(name.as_bytes().to_vec()))
            .map_err(usage)?;
        for (k, v) in &self.opts.metadata {
            metadata.insert(k.clone(), Some(v.clone())).map_err(usage)?;
        }
        let url = loop {
            match create_deferred(&self.http, endpoint, &metadata).await {
                Ok(u) => break u,
                Err(e) => self.wait_or_give_up(&mut retry, e).await?,
            }
        };
        self.progress.start_unknown("-");
        let chunk = self.opts.chunk.initial.clamp(1, MAX_STREAM_CHUNK) as usize;
        let mut hasher = Hasher::new(algorithm);
        let mut at = Cursor {
            offset: 0,
            pending: Bytes::new(),
            ended: false,
            length_known: false,
        };
        let want = want_digest_for(algorithm);
        let mut digests = Digests::default();
        let stall = self.opts.stall_timeout;
        while !(at.ended && at.pending.is_empty() && at.length_known) {
            // Fill the chunk (or reach the end): one chunk in memory, each byte hashed once.
            if at.pending.len() < chunk && !at.ended {
                let mut buf = BytesMut::with_capacity(chunk);
                buf.extend_from_slice(&at.pending);
                while buf.len() < chunk && !at.ended {
                    let before = buf.len();
                    let mut limited = (&mut input).take((chunk - before) as u64);
                    let n = tokio::select! {
                        r = limited.read_buf(&mut buf) => r.map_err(|e| ClientError::local("reading standard input", e))?,
                        _ = self.cancel.cancelled() => return Err(interrupted()),
                    };
                    at.ended = n == 0;
                    hasher.update(&buf[before..]);
                }
                at.pending = buf.freeze();
            }
            // The length goes once, with the request that ends the input (tusd refuses it
            // on a second request).
            let length =
                (at.ended && !at.length_known).then(|| at.offset + at.pending.len() as u64);
            let activity = Arc::new(Activity::default());
            activity.touch();
            let counted = activity.clone();
            let body = crate::progress::paced_body(
                at.pending.clone(),
                self.opts.limiter.clone(),
                move |n| counted.moved(n),
            );
            let request = patch(
                &self.http,
                &url,
                at.offset,
                at.pending.len(),
                body,
                length,
                length.map(|_| want),
            );
            let stall_seen = stalled(&activity, stall);
            tokio::pin!(request, stall_seen);
            let mut shown = tokio::time::interval(std::time::Duration::from_millis(200));
            let sent = loop {
                tokio::select! {
                    r = &mut request => break r,
                    () = &mut stall_seen => break Err(AttemptError::retry(format!(
                        "no progress for {}s (stalled connection)", stall.as_secs()
                    ))),
                    _ = shown.tick() => self.progress.position(at.offset + activity.bytes().min(at.pending.len() as u64)),
                    () = self.cancel.cancelled() => return Err(interrupted()),
                }
            };
            let sent = match sent {
                Ok((offset, _)) if offset <= at.offset && !at.pending.is_empty() => Err(
                    AttemptError::retry("the server took none of the request's body"),
                ),
                other => other,
            };
            match sent {
                Ok((offset, d)) => {
                    self.advance(&mut at, offset)?;
                    at.length_known |= length.is_some();
                    retry.progress(Instant::now());
                    digests = d;
                }
                Err(e) => {
                    self.wait_or_give_up(&mut retry, e).await?;
                    // The server may have kept part of the body, and the length: go on from
                    // what it says it has.
                    loop {
                        match crate::tus::head(&self.http, &url, None).await {
                            Ok(r) => {
                                self.advance(&mut at, r.offset)?;
                                at.length_known = r.length.is_some();
                                break;
                            }
                            Err(e) => self.wait_or_give_up(&mut retry, e).await?,
                        }
                    }
                }
            }
        }
        let len = at.offset;
        let digest = FileDigest {
            algorithm,
            bytes: hasher.finalize(),
        };
        let mut theirs = digests.get(algorithm).map(<[u8]>::to_vec);
        if theirs.is_none() && self.opts.verify {
            theirs = loop {
                match crate::tus::head(&self.http, &url, Some(want)).await {
                    Ok(r) => break r.digests.get(algorithm).map(<[u8]>::to_vec),
                    Err(e) => self.wait_or_give_up(&mut retry, e).await?,
                }
            };
        }
        let verification = match (&theirs, self.opts.verify) {
            (_, false) => Verification::NotVerified("verification was turned off".into()),
            (Some(t), true) if *t == digest.bytes => Verification::Verified,
            (Some(_), true) => {
                return Err(ClientError::new(
                    ErrorKind::Verification,
                    format!(
                        "the server's {} of the upload differs from that of the bytes read",
                        algorithm.name()
                    ),
                ));
            }
            (None, true) => Verification::NotVerified(
                "the server exposes no Repr-Digest, so the result was not verified".into(),
            ),
        };
        self.progress.finish();
        Ok(UploadOutcome {
            url: url.to_string(),
            bytes: len,
            seconds: started.elapsed().as_secs_f64(),
            digest: Some(digest),
            verification,
            resumed_from: 0,
            key: String::new(),
            protocol: Adapter::Tus,
            already_uploaded: false,
        })
    }

    /// The server holds `offset` bytes: drop what it has from the pending chunk.
    fn advance(&self, at: &mut Cursor, offset: u64) -> Result<(), ClientError> {
        let end = at.offset + at.pending.len() as u64;
        if offset < at.offset || offset > end {
            return Err(ClientError::new(
                ErrorKind::Refused,
                format!(
                    "the server reports {offset} bytes, but {} were acknowledged and {end} sent: \
                     standard input cannot be read again",
                    at.offset
                ),
            ));
        }
        at.pending = at.pending.slice((offset - at.offset) as usize..);
        at.offset = offset;
        self.progress.position(offset);
        Ok(())
    }
}

/// POST with `Upload-Defer-Length: 1`.
async fn create_deferred(
    http: &reqwest::Client,
    endpoint: &Url,
    metadata: &Metadata,
) -> Result<Url, AttemptError> {
    let resp = http
        .post(endpoint.clone())
        .header(tus::TUS_RESUMABLE, tus::TUS_VERSION)
        .header(tus::UPLOAD_DEFER_LENGTH, "1")
        .header(tus::UPLOAD_METADATA, metadata.format())
        .header(reqwest::header::CONTENT_LENGTH, 0)
        .send()
        .await
        .map_err(|e| network("POST", e))?;
    Ok(created_url(endpoint, resp, "is not a tus endpoint", 0)
        .await?
        .0)
}

/// PATCH `body` at `offset`, with `Upload-Length` once the input has ended; the new offset and
/// any digests the answer carries.
async fn patch(
    http: &reqwest::Client,
    url: &Url,
    offset: u64,
    len: usize,
    body: reqwest::Body,
    length: Option<u64>,
    want_digest: Option<&str>,
) -> Result<(u64, ferry_proto::digest::Digests), AttemptError> {
    let mut req = http
        .patch(url.clone())
        .header(tus::TUS_RESUMABLE, tus::TUS_VERSION)
        .header(tus::UPLOAD_OFFSET, offset)
        .header(reqwest::header::CONTENT_TYPE, tus::OFFSET_OCTET_STREAM)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .timeout(crate::http::PATCH_TIME_LIMIT)
        .body(body);
    if let Some(l) = length {
        req = req.header(tus::UPLOAD_LENGTH, l);
    }
    if let Some(w) = want_digest {
        req = req.header("want-repr-digest", w);
    }
    let resp = req.send().await.map_err(|e| network("PATCH", e))?;
    if !matches!(resp.status().as_u16(), 200 | 204) {
        return Err(classify(resp, "PATCH").await);
    }
    let offset = header(&resp, tus::UPLOAD_OFFSET)
        .and_then(|v| tus::parse_upload_offset(v).ok())
        .ok_or_else(|| AttemptError::retry("PATCH answered without a valid Upload-Offset"))?;
    Ok((offset, digests_of(&resp)))
}

/// Ctrl-C: stdin is gone with the process, so there is nothing to resume.
fn interrupted() -> ClientError {
    ClientError::new(
        ErrorKind::Interrupted,
        "interrupted; standard input cannot be resumed: run the command again",
    )
}
