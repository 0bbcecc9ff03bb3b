//! What the server says about a file before it is downloaded: its size, whether it takes
//! ranges, its validators, its digest and its name.

use super::Downloader;
use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::response::{classify, network};
use crate::retry::RetryState;
use ferry_proto::checksum::ChecksumAlgorithm;
use ferry_proto::digest::{Digests, KEPT};
use ferry_proto::range::{ETag, parse_content_range};
use reqwest::header::{CONTENT_DISPOSITION, CONTENT_RANGE, DATE, ETAG, LAST_MODIFIED, RANGE};
use reqwest::{StatusCode, Url};
use std::time::Duration;

/// What the server says about the resource.
#[derive(Debug, Clone)]
pub(super) struct Probe {
    pub(super) size: Option<u64>,
    pub(super) ranges: bool,
    pub(super) etag: Option<ETag>,
    pub(super) last_modified: Option<String>,
    /// From `Repr-Digest`: the cheapest to check of CRC-64/NVME, BLAKE3 and SHA-256.
    pub(super) digest: Option<(ChecksumAlgorithm, Vec<u8>)>,
    pub(super) filename: Option<String>,
}

impl Downloader {
    pub(super) async fn probe(
        &self,
        url: &Url,
        retry: &mut RetryState,
    ) -> Result<Probe, ClientError> {
        loop {
            let sent = self
                .http
                .get(url.clone())
                .header(RANGE, "bytes=0-0")
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.backoff(retry, network("GET", e)).await?;
                    continue;
                }
            };
            let status = resp.status();
            if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
                if status == StatusCode::RANGE_NOT_SATISFIABLE {
                    // An empty file.
                    return Ok(Probe {
                        size: Some(0),
                        ranges: true,
                        etag: None,
                        last_modified: None,
                        digest: None,
                        filename: None,
                    });
                }
                match classify(resp, "GET").await {
                    AttemptError::Gone => {
                        return Err(ClientError::new(
                            ErrorKind::Refused,
                            "not found (404)".to_owned(),
                        ));
                    }
                    e => {
                        self.backoff(retry, e).await?;
                        continue;
                    }
                }
            }
            let h = resp.headers();
            let text = |n| {
                h.get(n)
                    .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            };
            let etag = text(ETAG).and_then(ETag::parse).filter(|t| !t.weak);
            // A Last-Modified is a validator only when strong (RFC 9110 §8.8.2.2): at least a
            // second older than the response's Date. A more recent one may be shared by two
            // versions written within the same second, and resuming with it in If-Range
            // could splice them, so it is treated as no validator at all.
            let date = text(DATE).and_then(|d| httpdate::parse_http_date(d).ok());
            let last_modified = text(LAST_MODIFIED)
                .filter(|lm| {
                    httpdate::parse_http_date(lm).is_ok_and(|lm| {
                        date.and_then(|d| d.duration_since(lm).ok())
                            .is_some_and(|age| age >= Duration::from_secs(1))
                    })
                })
                .map(str::to_string);
            let known = text(reqwest::header::HeaderName::from_static("repr-digest"))
                .and_then(|v| Digests::from_field(v).ok())
                .unwrap_or_default();
            // The cheapest digest ferry keeps: the one to check the result with.
            let digest = KEPT
                .into_iter()
                .find_map(|a| known.get(a).map(|d| (a, d.to_vec())));
            let filename = text(CONTENT_DISPOSITION).and_then(filename_from_disposition);
            let (size, ranges) = if status == StatusCode::PARTIAL_CONTENT {
                let cr = text(CONTENT_RANGE).and_then(|v| parse_content_range(v).ok());
                (cr.and_then(|c| c.len), true)
            } else {
                (resp.content_length(), false)
            };
            return Ok(Probe {
                size,
                ranges,
                etag,
                last_modified,
                digest,
                filename,
            });
        }
    }
}

/// The `filename*` or `filename` of a Content-Disposition, reduced to a safe base name.
pub fn filename_from_disposition(v: &str) -> Option<String> {
    let mut plain = None;
    for part in v.split(';') {
        let part = part.trim();
        if let Some(ext) = part.strip_prefix("filename*=") {
            let value = ext.split_once("''").map_or(ext, |(_, v)| v);
            let decoded: Vec<u8> = percent_encoding::percent_decode_str(value).collect();
            return safe_name(&String::from_utf8_lossy(&decoded));
        }
        if let Some(p) = part.strip_prefix("filename=") {
            plain = safe_name(p.trim_matches('"'));
        }
    }
    plain
}

/// A base name that cannot leave the target directory or hide itself.
pub fn safe_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    (!cleaned.is_empty()).then_some(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_names_are_made_safe() {
        assert_eq!(
            filename_from_disposition("attachment; filename=\"a.txt\""),
            Some("a.txt".into())
        );
        assert_eq!(
            filename_from_disposition(
                "attachment; filename=\"x\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
            ),
            Some("résumé.pdf".into())
        );
        assert_eq!(safe_name("../../etc/passwd"), Some("passwd".into()));
        assert_eq!(safe_name("..\\..\\x"), Some("x".into()));
        assert_eq!(safe_name(".."), None);
        assert_eq!(safe_name(".hidden"), Some("hidden".into()));
        assert_eq!(safe_name("a\nb"), Some("ab".into()));
    }
}
