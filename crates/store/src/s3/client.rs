//! The S3 calls the object store needs, signed by rusty-s3 (sans-IO: it builds presigned URLs)
//! and sent with reqwest, each retried per [`super::retry`]. Bodies are `Bytes` (cheap to send
//! again) or streamed out; nothing here holds an object in memory.

use super::retry::{self, Outcome};
use crate::data::ByteStream;
use crate::error::{Result, StoreError};
use bytes::Bytes;
use futures_util::TryStreamExt;
use reqwest::{Method, Response, Url};
use rusty_s3::actions::{CreateMultipartUpload, ListParts, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use std::time::Duration;

/// How long a presigned URL stays valid: longer than any retried request takes.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// Where the bucket is and who we are. Its `Debug` leaves the secret and the token out.
#[derive(Clone)]
pub struct S3Config {
    /// The service (`https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:8333`).
    pub endpoint: Url,
    /// The bucket.
    pub bucket: String,
    /// The region the requests are signed for.
    pub region: String,
    /// `https://host/bucket/key` rather than `https://bucket.host/key` (most stores other than
    /// AWS, and any endpoint given as an IP address).
    pub path_style: bool,
    /// Access key id.
    pub key: String,
    /// Secret access key.
    pub secret: String,
    /// Session token of temporary credentials.
    pub token: Option<String>,
}

/// What a request sends: bytes in memory, or a range of a file read as it goes out (a part
/// of any size in flat memory; opened again for each attempt).
#[derive(Debug, Clone)]
pub enum Body {
    /// These bytes.
    Bytes(Bytes),
    /// `len` bytes of the file at `path`, from `start`.
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Where the bytes start.
        start: u64,
        /// How many.
        len: u64,
    },
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    async fn to_reqwest(&self) -> std::io::Result<reqwest::Body> {
        match self {
            Body::Bytes(b) => Ok(reqwest::Body::from(b.clone())),
            Body::File { path, start, len } => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let mut f = tokio::fs::File::open(path).await?;
                f.seek(std::io::SeekFrom::Start(*start)).await?;
                let stream = tokio_util::io::ReaderStream::with_capacity(f.take(*len), 256 * 1024);
                Ok(reqwest::Body::wrap_stream(stream))
            }
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Bytes(b)
    }
}

impl From<Vec<u8>> for Body {
    fn from(b: Vec<u8>) -> Self {
        Body::Bytes(b.into())
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_str())
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// One part of a multipart upload, as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPart {
    /// Its number (1 to 10,000).
    pub number: u16,
    /// Its ETag, quotes included, as Complete wants it back.
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A multipart upload in progress, as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedUpload {
    /// The object key.
    pub key: String,
    /// The store's upload id.
    pub upload_id: String,
    /// When it was started (ms since the epoch), if the store said so readably.
    pub initiated_ms: Option<u64>,
}

/// An object, as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written (ms since the epoch), if the store said so readably.
    pub modified_ms: Option<u64>,
}

/// Milliseconds since the epoch of an S3 timestamp (`2026-12-03T10:00:00.000Z`).
pub(super) fn epoch_ms(text: &str) -> Option<u64> {
    let t: jiff::Timestamp = text.trim().parse().ok()?;
    u64::try_from(t.as_millisecond()).ok()
}

/// An S3 bucket, spoken to over HTTP.
#[derive(Debug, Clone)]
pub struct S3Client {
    bucket: Bucket,
    credentials: Credentials,
    http: reqwest::Client,
}

/// What the store answered, when it was not a success: `S3 {what}: {status} {code} {message}`.
fn refusal(what: &str, status: u16, body: &str) -> String {
    let field = |name: &str| {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find("</")? + start;
        Some(body[start..end].to_string())
    };
    let code = field("Code").unwrap_or_default();
    let message = field("Message").unwrap_or_default();
    format!("S3 {what}: {status} {code} {message}")
}

fn refused(what: &str, status: u16, body: &str) -> StoreError {
    StoreError::Io(std::io::Error::other(refusal(what, status, body)))
}

/// A request that got no answer. Never with its URL: a presigned URL is a credential for as
/// long as it is valid.
fn no_answer(what: &str, e: reqwest::Error) -> String {
    format!("S3 {what}: {}", e.without_url())
}

impl S3Client {
    /// A client for `config`'s bucket (no request is made).
    pub fn new(config: &S3Config) -> Result<Self> {
        let style = match config.path_style {
            true => UrlStyle::Path,
            false => UrlStyle::VirtualHost,
        };
        let bucket = Bucket::new(
            config.endpoint.clone(),
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| StoreError::Metadata(format!("S3 bucket {}: {e}", config.bucket)))?;
        let credentials = match &config.token {
            Some(t) => Credentials::new_with_token(&config.key, &config.secret, t),
            None => Credentials::new(&config.key, &config.secret),
        };
        // reqwest is built without a TLS provider of its own: ring, as the client crate uses
        // (a no-op once one is installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StoreError::Metadata(format!("S3 client: {e}")))?;
        Ok(Self {
            bucket,
            credentials,
            http,
        })
    }

    /// The bucket's name.
    pub fn bucket_name(&self) -> &str {
        self.bucket.name()
    }

    fn creds(&self) -> Option<&Credentials> {
        Some(&self.credentials)
    }

    /// Sends `method url` (with `body` and `headers`), trying again per [`retry`]; returns the
    /// first answer that is a success, or the error of the last attempt.
    async fn send(
        &self,
        what: &str,
        method: Method,
        url: Url,
        body: Option<Body>,
        headers: &[(&str, String)],
    ) -> Result<Response> {
        let mut attempt = 1;
        loop {
            let mut req = self.http.request(method.clone(), url.clone());
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some(b) = &body {
                // Every request names its length: AWS refuses chunked uploads.
                let stream = b.to_reqwest().await.map_err(StoreError::Io)?;
                req = req
                    .header(reqwest::header::CONTENT_LENGTH, b.len())
                    .body(stream);
            }
            let (outcome, error) = match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    (Outcome::Status(status), refusal(what, status, &text))
                }
                Err(e) => (Outcome::NoAnswer, no_answer(what, e)),
            };
            if !retry::transient(outcome) {
                return Err(StoreError::Io(std::io::Error::other(error)));
            }
            match retry::backoff(attempt, random()) {
                Some(wait) => {
                    tracing::debug!(what, attempt, error = %error, "S3 request tried again");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                // Still throttled, failing or unreachable after every attempt: unavailable
                // (503 to the client, who tries again later), not an internal error.
                None => return Err(StoreError::Unavailable(error)),
            }
        }
    }

    async fn text(
        &self,
        what: &str,
        method: Method,
        url: Url,
        body: Option<Body>,
    ) -> Result<String> {
        let resp = self.send(what, method, url, body, &[]).await?;
        resp.text()
            .await
            .map_err(|e| StoreError::Unavailable(no_answer(what, e)))
    }

    /// Creates the bucket (tests and first-time setups).
    pub async fn create_bucket(&self) -> Result<()> {
        let url = self
            .bucket
            .create_bucket(&self.credentials)
            .sign(SIGNED_FOR);
        self.send("CreateBucket", Method::PUT, url, None, &[])
            .await?;
        Ok(())
    }

    /// Whether the bucket exists and may be read (HeadBucket).
    pub async fn head_bucket(&self) -> Result<()> {
        let url = self.bucket.head_bucket(self.creds()).sign(SIGNED_FOR);
        self.send("HeadBucket", Method::HEAD, url, None, &[])
            .await?;
        Ok(())
    }

    /// Writes a whole object; returns its ETag.
    pub async fn put_object(&self, key: &str, body: impl Into<Body>) -> Result<String> {
        let url = self.bucket.put_object(self.creds(), key).sign(SIGNED_FOR);
        let resp = self
            .send("PutObject", Method::PUT, url, Some(body.into()), &[])
            .await?;
        etag_of("PutObject", &resp)
    }

    /// Streams bytes `[start, end)` of an object (`end` exclusive; an empty range reads nothing).
    pub async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<ByteStream> {
        if start >= end {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let url = self.bucket.get_object(self.creds(), key).sign(SIGNED_FOR);
        let range = format!("bytes={start}-{}", end - 1);
        let resp = self
            .send("GetObject", Method::GET, url, None, &[("range", range)])
            .await?;
        Ok(Box::pin(
            resp.bytes_stream()
                .map_err(|e| std::io::Error::other(e.without_url())),
        ))
    }

    /// Writes an object only if there is none at `key` (`If-None-Match: *`); `false` when one
    /// was there already (412, or 409 for a concurrent conditional write).
    pub async fn put_if_absent(&self, key: &str, body: impl Into<Body>) -> Result<bool> {
        let url = self.bucket.put_object(self.creds(), key).sign(SIGNED_FOR);
        let headers = [("if-none-match", "*".to_string())];
        match self
            .send("PutObject", Method::PUT, url, Some(body.into()), &headers)
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::Io(e))
                if [": 412 ", ": 409 "]
                    .iter()
                    .any(|s| e.to_string().contains(s)) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// A whole (small) object, or `None` if there is none.
    pub async fn get_object(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let url = self.bucket.get_object(self.creds(), key).sign(SIGNED_FOR);
        match self.send("GetObject", Method::GET, url, None, &[]).await {
            Ok(resp) => resp
                .bytes()
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(|e| StoreError::Unavailable(no_answer("GetObject", e))),
            Err(StoreError::Io(e)) if e.to_string().contains(": 404 ") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The size of an object, or `None` if there is none.
    pub async fn head_size(&self, key: &str) -> Result<Option<u64>> {
        let url = self.bucket.head_object(self.creds(), key).sign(SIGNED_FOR);
        match self.send("HeadObject", Method::HEAD, url, None, &[]).await {
            // The header itself: a HEAD answer has no body for `content_length` to measure.
            Ok(resp) => Ok(resp
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())),
            Err(StoreError::Io(e)) if e.to_string().contains(": 404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object under `prefix`, page after page.
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<ListedObject>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(self.creds());
            action.with_prefix(prefix);
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGNED_FOR);
            let text = self.text("ListObjectsV2", Method::GET, url, None).await?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| StoreError::Inconsistent(format!("S3 ListObjectsV2: {e}")))?;
            out.extend(page.contents.into_iter().map(|c| ListedObject {
                modified_ms: c.last_modified.as_deref().and_then(epoch_ms),
                key: c.key,
                size: c.size.unwrap_or(0),
            }));
            match page.next_continuation_token {
                Some(t) if token.as_ref() != Some(&t) => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Removes an object (removing a missing one is fine).
    pub async fn delete_object(&self, key: &str) -> Result<()> {
        let url = self
            .bucket
            .delete_object(self.creds(), key)
            .sign(SIGNED_FOR);
        self.send("DeleteObject", Method::DELETE, url, None, &[])
            .await?;
        Ok(())
    }

    /// Starts a multipart upload of `key`; returns its upload id.
    pub async fn create_multipart(&self, key: &str) -> Result<String> {
        let url = self
            .bucket
            .create_multipart_upload(self.creds(), key)
            .sign(SIGNED_FOR);
        let text = self
            .text("CreateMultipartUpload", Method::POST, url, None)
            .await?;
        let parsed = CreateMultipartUpload::parse_response(&text)
            .map_err(|e| StoreError::Inconsistent(format!("S3 CreateMultipartUpload: {e}")))?;
        Ok(parsed.upload_id().to_string())
    }

    /// Uploads part `number` of a multipart upload; returns its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: impl Into<Body>,
    ) -> Result<String> {
        let url = self
            .bucket
            .upload_part(self.creds(), key, number, upload_id)
            .sign(SIGNED_FOR);
        let resp = self
            .send("UploadPart", Method::PUT, url, Some(body.into()), &[])
            .await?;
        etag_of("UploadPart", &resp)
    }

    /// Every part of a multipart upload, page after page, in number order.
    pub async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<ListedPart>> {
        self.list_parts_paged(key, upload_id, 1000).await
    }

    /// [`list_parts`](Self::list_parts) with `page` parts per request.
    pub async fn list_parts_paged(
        &self,
        key: &str,
        upload_id: &str,
        page: u16,
    ) -> Result<Vec<ListedPart>> {
        let mut out = Vec::new();
        let mut marker = None;
        loop {
            let mut action = self.bucket.list_parts(self.creds(), key, upload_id);
            action.set_max_parts(page);
            if let Some(m) = marker {
                action.set_part_number_marker(m);
            }
            let url = action.sign(SIGNED_FOR);
            let text = self.text("ListParts", Method::GET, url, None).await?;
            let parsed = ListParts::parse_response(&text)
                .map_err(|e| StoreError::Inconsistent(format!("S3 ListParts: {e}")))?;
            out.extend(parsed.parts.iter().map(|p| ListedPart {
                number: p.number,
                etag: p.etag.clone(),
                size: p.size,
            }));
            match parsed.next_part_number_marker {
                Some(m) if marker != Some(m) => marker = Some(m),
                _ => {
                    // In number order whatever the store did (lookups search it).
                    out.sort_by_key(|p| p.number);
                    return Ok(out);
                }
            }
        }
    }

    /// Assembles the object from `parts` (number, ETag), in number order; numbers need not be
    /// consecutive.
    pub async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u16, String)],
    ) -> Result<()> {
        // rusty-s3's body numbers parts 1..n: ours have gaps (a part number belongs to one
        // writer), so the body is written here. The URL is the action's.
        let url = self
            .bucket
            .complete_multipart_upload(self.creds(), key, upload_id, std::iter::empty::<&str>())
            .sign(SIGNED_FOR);
        let mut body = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            body.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                xml_escape(etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        // S3 may answer 200 with an error in the body (the assembly failed after the headers
        // went out).
        let text = self
            .text(
                "CompleteMultipartUpload",
                Method::POST,
                url,
                Some(Body::Bytes(body.into())),
            )
            .await?;
        if text.contains("<Error>") {
            return Err(refused("CompleteMultipartUpload", 200, &text));
        }
        Ok(())
    }

    /// Abandons a multipart upload and its parts (a missing one is fine).
    pub async fn abort(&self, key: &str, upload_id: &str) -> Result<()> {
        let url = self
            .bucket
            .abort_multipart_upload(self.creds(), key, upload_id)
            .sign(SIGNED_FOR);
        match self
            .send("AbortMultipartUpload", Method::DELETE, url, None, &[])
            .await
        {
            Err(StoreError::Io(e)) if e.to_string().contains("NoSuchUpload") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Every multipart upload in progress under `prefix`, page after page (ListMultipartUploads,
    /// which rusty-s3 has no action for: signed here).
    pub async fn list_uploads(&self, prefix: &str) -> Result<Vec<ListedUpload>> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query: Vec<(&str, &str)> = vec![("uploads", ""), ("prefix", prefix)];
            if let Some((k, u)) = &markers {
                query.push(("key-marker", k));
                query.push(("upload-id-marker", u));
            }
            // `sign` takes the canonical query: sorted by name.
            query.sort_unstable();
            let url = rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                rusty_s3::Method::Get,
                self.bucket.base_url().clone(),
                self.credentials.key(),
                self.credentials.secret(),
                self.credentials.token(),
                self.bucket.region(),
                SIGNED_FOR.as_secs(),
                query.iter().copied(),
                std::iter::empty(),
            );
            let text = self
                .text("ListMultipartUploads", Method::GET, url, None)
                .await?;
            let page = uploads_page(&text).ok_or_else(|| {
                StoreError::Inconsistent(
                    "S3 ListMultipartUploads: a truncated page without its next markers".into(),
                )
            })?;
            out.extend(page.uploads);
            match page.next {
                Some(next) if markers.as_ref() != Some(&next) => markers = Some(next),
                _ => return Ok(out),
            }
        }
    }
}

/// The ETag a write answered with: Complete needs it back, so none is an error.
fn etag_of(what: &str, resp: &Response) -> Result<String> {
    resp.headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .ok_or_else(|| StoreError::Inconsistent(format!("S3 {what}: the answer has no ETag")))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// One page of a ListMultipartUploads answer.
#[derive(Debug, Default, PartialEq, Eq)]
struct UploadsPage {
    uploads: Vec<ListedUpload>,
    /// The key and upload-id markers of the next page, when truncated.
    next: Option<(String, String)>,
}

/// Reads a ListMultipartUploads answer: the `<Upload>` elements and, when `IsTruncated`, the
/// next markers (`None` when a truncated page lacks them). A small, flat document: read by
/// hand (rusty-s3 has no parser for it).
fn uploads_page(xml: &str) -> Option<UploadsPage> {
    fn field(s: &str, name: &str) -> Option<String> {
        let open = format!("<{name}>");
        let start = s.find(&open)? + open.len();
        let end = s[start..].find(&format!("</{name}>"))? + start;
        Some(xml_unescape(&s[start..end]))
    }
    let mut page = UploadsPage::default();
    let mut rest = xml;
    while let Some(i) = rest.find("<Upload>") {
        let tail = &rest[i + "<Upload>".len()..];
        let Some(j) = tail.find("</Upload>") else {
            break;
        };
        let one = &tail[..j];
        if let (Some(key), Some(upload_id)) = (field(one, "Key"), field(one, "UploadId")) {
            page.uploads.push(ListedUpload {
                key,
                upload_id,
                initiated_ms: field(one, "Initiated").as_deref().and_then(epoch_ms),
            });
        }
        rest = &tail[j..];
    }
    if field(xml, "IsTruncated").as_deref() == Some("true") {
        let key = field(xml, "NextKeyMarker").filter(|k| !k.is_empty())?;
        let id = field(xml, "NextUploadIdMarker").unwrap_or_default();
        page.next = Some((key, id));
    }
    Some(page)
}

fn random() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_multipart_uploads_page_is_read_with_its_markers() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/b&amp;c</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
  <MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/a</Key><UploadId>u1</UploadId><Initiated>2026-12-03T10:00:00.000Z</Initiated></Upload>
  <Upload><Key>p/b&amp;c</Key><UploadId>u2</UploadId><Initiated>2026-12-03T10:00:01.000Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page = uploads_page(xml).unwrap();
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[1].key, "p/b&c");
        assert_eq!(page.uploads[0].upload_id, "u1");
        assert_eq!(page.uploads[1].initiated_ms, Some(1_796_292_001_000));
        assert_eq!(epoch_ms("2026-12-03T10:00:01Z"), Some(1_796_292_001_000));
        assert_eq!(epoch_ms("yesterday"), None);
        assert_eq!(page.next, Some(("p/b&c".into(), "u2".into())));
        let last = xml.replace("<IsTruncated>true", "<IsTruncated>false");
        assert_eq!(uploads_page(&last).unwrap().next, None);
        assert_eq!(
            uploads_page("<ListMultipartUploadsResult/>"),
            Some(UploadsPage::default())
        );
        let no_marker = xml.replace("<NextKeyMarker>p/b&amp;c</NextKeyMarker>", "");
        assert_eq!(uploads_page(&no_marker), None, "truncated without markers");
    }

    #[test]
    fn an_error_answer_names_its_code() {
        let e = refused(
            "UploadPart",
            404,
            "<Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>",
        );
        assert!(e.to_string().contains("404 NoSuchUpload gone"), "{e}");
    }
}
