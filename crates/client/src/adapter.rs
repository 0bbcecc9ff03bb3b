//! The upload protocols behind one interface: the upload driver (ask the offset, send, feed
//! the chunk-size controller, retry, verify) is the same for every protocol; what differs —
//! headers, how an upload is created and completed — lives in one module per protocol
//! ([`crate::tus`], [`crate::ietf`], [`crate::chunks`]), reached through [`Adapter`]. A new
//! protocol is a new variant and a new module.

use crate::error::{AttemptError, ClientError, ErrorKind};
use crate::options::ChecksumChoice;
use crate::response::{RemoteUpload, Sent, ServerCaps};
use crate::tus::{self, RequestChecksum};
use crate::{chunks, ietf};
use ferry_proto::Metadata;
use ferry_proto::checksum::{Checksum, ChecksumAlgorithm};
use reqwest::Url;

/// Which upload protocol to speak (`--protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Decided by the server's OPTIONS answer: tus if it speaks tus (parallel streams,
    /// per-request checksums), else the IETF draft if it speaks that.
    #[default]
    Auto,
    /// tus 1.0.
    Tus,
    /// The IETF Resumable Uploads draft (interop version 8), one stream.
    Ietf,
    /// Content-Range chunk sessions (`{base}/chunks/`): chunks of one session, in parallel
    /// streams too. Never chosen by `auto` (a tus or IETF endpoint is better).
    Chunks,
}

/// The message for a server that shows neither protocol.
pub const NEITHER: &str = "the server speaks neither tus nor the IETF resumable-upload draft; \
                           try --protocol chunks with a /chunks/ URL";

/// The protocol one transfer speaks, once decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    /// tus 1.0.
    Tus,
    /// The IETF draft.
    Ietf,
    /// Content-Range chunk sessions.
    Chunks,
}

/// Where a driver's target sits in the file: bytes `[base, base + len)` of `total`. Chunk
/// sessions address bytes of the whole file; tus and the draft only the target's own offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// First byte of the target in the file.
    pub base: u64,
    /// The target's length.
    pub len: u64,
    /// The file's length.
    pub total: u64,
}

/// One append of a driver: `body` (`len` bytes) at `offset` of the target `at` (offsets
/// relative to the target).
#[derive(Debug)]
pub struct AppendRequest<'a> {
    /// The server-side upload (for chunk sessions, the session).
    pub url: &'a Url,
    /// Where the target sits in the file.
    pub at: Placement,
    /// Where the body goes, from the target's start.
    pub offset: u64,
    /// The body's length.
    pub len: u64,
    /// The bytes.
    pub body: reqwest::Body,
    /// The request ends the upload.
    pub last: bool,
    /// How the body is checksummed.
    pub checksum: RequestChecksum<'a>,
    /// A body larger than any the server has accepted so far (sent with `Connection: close`).
    pub probe: bool,
    /// `Want-Repr-Digest`, for the request that may complete the upload.
    pub want_digest: Option<&'a str>,
}

impl Adapter {
    /// The name kept in resume records (`UploadRecord::protocol`).
    pub fn name(self) -> &'static str {
        match self {
            Adapter::Tus => "tus",
            Adapter::Ietf => "ietf",
            Adapter::Chunks => "chunks",
        }
    }

    /// The adapter a resume record names (records older than the field say "tus").
    pub fn from_name(name: &str) -> Option<Adapter> {
        match name {
            "tus" | "" => Some(Adapter::Tus),
            "ietf" => Some(Adapter::Ietf),
            "chunks" => Some(Adapter::Chunks),
            _ => None,
        }
    }

    /// Decides the protocol: an explicit choice wins; `auto` follows a resumed transfer's
    /// record, then the OPTIONS answer (tus first: with ferry it brings parallel streams and
    /// per-request checksums). A server that did not answer OPTIONS usefully is tried with tus,
    /// (its creation request then says what is wrong).
    pub fn choose(
        protocol: Protocol,
        caps: &ServerCaps,
        recorded: Option<Adapter>,
    ) -> Result<Adapter, ClientError> {
        match protocol {
            // A chunk-session endpoint would take the POST and then refuse every PATCH.
            Protocol::Tus | Protocol::Ietf if caps.chunks => Err(ClientError::new(
                ErrorKind::Usage,
                "this URL is a Content-Range chunk-session endpoint ({base}/chunks/): use \
                 --protocol chunks or auto, or the {base}/files/ URL for tus and the IETF draft",
            )),
            Protocol::Tus => Ok(Adapter::Tus),
            Protocol::Ietf => Ok(Adapter::Ietf),
            // A tus or IETF endpoint would take the POST as one of its own uploads.
            Protocol::Chunks if (caps.tus || caps.ietf) && !caps.chunks => Err(ClientError::new(
                ErrorKind::Usage,
                "--protocol chunks needs a Content-Range chunk-session URL \
                     ({base}/chunks/); this endpoint speaks tus or the IETF draft (use \
                     --protocol auto)",
            )),
            Protocol::Chunks => Ok(Adapter::Chunks),
            Protocol::Auto => match recorded {
                Some(a) => Ok(a),
                None if caps.chunks => Ok(Adapter::Chunks),
                None if caps.tus || !caps.answered => Ok(Adapter::Tus),
                None if caps.ietf => Ok(Adapter::Ietf),
                None => Err(ClientError::new(ErrorKind::Refused, NEITHER)),
            },
        }
    }

    /// Whether several streams (concatenation) are possible at all.
    pub fn parallel(self, caps: &ServerCaps) -> bool {
        match self {
            Adapter::Tus => caps.has("concatenation"),
            // The draft forbids concurrent appends to one upload and has no concatenation.
            Adapter::Ietf => false,
            // A session takes concurrent chunks: segments are ranges of it.
            Adapter::Chunks => true,
        }
    }

    /// Whether a small file can go in its creation request.
    pub fn creation_with_body(self, caps: &ServerCaps) -> bool {
        match self {
            Adapter::Tus => caps.has("creation-with-upload"),
            Adapter::Ietf => true,
            // A session is created empty; its first PUT carries a small file.
            Adapter::Chunks => false,
        }
    }

    /// The per-request checksum to send, from the user's choice: tus uses `Upload-Checksum`
    /// (the fastest algorithm the server lists); the draft's `Content-Digest` only knows
    /// SHA-256 and SHA-512 and costs a first read of each chunk, so it is sent only on request.
    pub fn request_checksum(
        self,
        choice: ChecksumChoice,
        caps: &ServerCaps,
    ) -> Result<Option<ChecksumAlgorithm>, ClientError> {
        use ChecksumChoice as C;
        match (self, choice) {
            (_, C::Off) | (Adapter::Chunks, C::Auto) => Ok(None),
            (Adapter::Chunks, C::Use(_)) => Err(ClientError::new(
                ErrorKind::Usage,
                "--checksum: chunk sessions take no per-request checksum (the whole file is \
                 still verified against Repr-Digest)",
            )),
            (Adapter::Tus, C::Auto) => Ok(caps.checksum),
            (_, C::Use(a)) if self == Adapter::Tus => Ok(Some(a)),
            (Adapter::Ietf, C::Auto) => Ok(None),
            (
                Adapter::Ietf,
                C::Use(a @ (ChecksumAlgorithm::Sha256 | ChecksumAlgorithm::Sha512)),
            ) => Ok(Some(a)),
            (_, C::Use(a)) => Err(ClientError::new(
                ErrorKind::Usage,
                format!(
                    "--checksum {}: the IETF draft's Content-Digest knows sha256 and sha512 only",
                    a.name()
                ),
            )),
        }
    }

    /// Whether the request checksum may go in a trailer (tus checksum-trailer).
    pub fn trailer(self, caps: &ServerCaps) -> bool {
        self == Adapter::Tus && caps.has("checksum-trailer")
    }

    /// Creates an empty upload of `len` bytes (`concat`: tus concatenation only).
    pub async fn create(
        self,
        http: &reqwest::Client,
        endpoint: &Url,
        len: u64,
        metadata: &Metadata,
        concat: Option<&str>,
    ) -> Result<Url, AttemptError> {
        match self {
            Adapter::Tus => tus::create(http, endpoint, len, metadata, concat).await,
            Adapter::Ietf => ietf::create(http, endpoint, len, metadata, None, None, None)
                .await
                .map(|(u, _)| u),
            // One session for the whole file, whatever the segment: see `run_segmented`.
            Adapter::Chunks => chunks::create(http, endpoint, len, metadata).await,
        }
    }

    /// Creates an upload carrying the whole (small) file.
    pub async fn create_with_body(
        self,
        http: &reqwest::Client,
        c: tus::CreateWithBody<'_>,
    ) -> Result<(Url, Sent), AttemptError> {
        match self {
            Adapter::Tus => tus::create_with_body(http, c).await,
            Adapter::Ietf => {
                let len = c.data.len() as u64;
                let digest = c.checksum.and_then(content_digest);
                ietf::create(
                    http,
                    c.endpoint,
                    len,
                    c.metadata,
                    Some((tus::Pace::body(c.pace, c.data), len)),
                    digest.as_deref(),
                    c.want_digest,
                )
                .await
            }
            Adapter::Chunks => Err(AttemptError::Fatal(ClientError::new(
                ErrorKind::Local,
                "chunk sessions are created without a body",
            ))),
        }
    }

    /// The upload's state (HEAD), seen from the whole file.
    pub async fn head(
        self,
        http: &reqwest::Client,
        url: &Url,
        want_digest: Option<&str>,
    ) -> Result<RemoteUpload, AttemptError> {
        match self {
            Adapter::Tus => tus::head(http, url, want_digest).await,
            Adapter::Ietf => ietf::head(http, url, want_digest).await,
            Adapter::Chunks => chunks::head(http, url).await.map(|s| RemoteUpload {
                offset: s.offset(0, u64::MAX),
                length: s.length,
                complete: Some(s.complete),
                digests: s.digests,
            }),
        }
    }

    /// The state of a target (HEAD): its offset is what the server has of it in one run from
    /// its start. A chunk session of another length is not this file's (`Gone`); its
    /// completeness is left out, since a segment ends before the session completes.
    pub async fn head_at(
        self,
        http: &reqwest::Client,
        url: &Url,
        at: Placement,
        want_digest: Option<&str>,
    ) -> Result<RemoteUpload, AttemptError> {
        match self {
            Adapter::Tus | Adapter::Ietf => self.head(http, url, want_digest).await,
            Adapter::Chunks => {
                let s = chunks::head(http, url).await?;
                if s.length.is_some_and(|l| l != at.total) {
                    return Err(AttemptError::Gone);
                }
                Ok(RemoteUpload {
                    offset: s.offset(at.base, at.len),
                    length: Some(at.len),
                    complete: None,
                    digests: s.digests,
                })
            }
        }
    }

    /// Bytes the server holds of the upload, wherever they sit in it (a chunk session may
    /// hold ranges past a gap; tus and the draft hold one run from the start).
    pub async fn received(self, http: &reqwest::Client, url: &Url) -> Result<u64, AttemptError> {
        match self {
            Adapter::Tus | Adapter::Ietf => self.head(http, url, None).await.map(|r| r.offset),
            Adapter::Chunks => chunks::head(http, url)
                .await
                .map(|s| s.received.iter().map(|(a, b)| b - a).sum()),
        }
    }

    /// Appends the request's body at its offset of its target; `last` marks the request that
    /// ends the upload.
    pub async fn append(
        self,
        http: &reqwest::Client,
        a: AppendRequest<'_>,
    ) -> Result<Sent, AttemptError> {
        let AppendRequest {
            url,
            at,
            offset,
            len,
            body,
            last,
            checksum,
            probe,
            want_digest,
        } = a;
        match self {
            Adapter::Tus => {
                let p = tus::Patch {
                    url,
                    offset,
                    len,
                    body,
                    checksum,
                    probe,
                    want_digest,
                };
                tus::patch(http, p).await
            }
            Adapter::Ietf => {
                let digest = match checksum {
                    RequestChecksum::Header(c) => content_digest(c),
                    RequestChecksum::None | RequestChecksum::Trailer => None,
                };
                let a = ietf::Append {
                    url,
                    offset,
                    len,
                    body,
                    last,
                    content_digest: digest.as_deref(),
                    probe,
                    want_digest,
                };
                ietf::append(http, a).await
            }
            Adapter::Chunks => chunks::put(http, url, at.base + offset, len, at.total, body, probe)
                .await
                .map(|s| chunks::sent(s, at.base, at.len)),
        }
    }

    /// Deletes the upload (missing counts as deleted).
    pub async fn delete(self, http: &reqwest::Client, url: &Url) -> Result<(), AttemptError> {
        match self {
            Adapter::Tus => tus::delete(http, url).await,
            Adapter::Ietf => ietf::delete(http, url).await,
            Adapter::Chunks => chunks::delete(http, url).await,
        }
    }
}

/// RFC 9530 `Content-Digest` for a checksum (SHA-256 or SHA-512, see `request_checksum`).
fn content_digest(c: &Checksum) -> Option<String> {
    let key = c.algorithm.digest_key()?;
    Some(ferry_proto::digest::format_digest_field(key, &c.digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(tus: bool, ietf: bool) -> ServerCaps {
        ServerCaps {
            answered: true,
            tus,
            ietf,
            ..ServerCaps::default()
        }
    }

    #[test]
    fn auto_prefers_tus_then_the_draft() {
        let a = |c: &ServerCaps| Adapter::choose(Protocol::Auto, c, None);
        assert_eq!(a(&caps(true, true)).unwrap(), Adapter::Tus);
        assert_eq!(a(&caps(true, false)).unwrap(), Adapter::Tus);
        assert_eq!(a(&caps(false, true)).unwrap(), Adapter::Ietf);
        let e = a(&caps(false, false)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Refused);
        assert_eq!(e.kind.exit_code(), 3);
        assert!(e.message.contains("neither tus nor the IETF"), "{e}");
        // No usable OPTIONS answer: tus.
        assert_eq!(a(&ServerCaps::default()).unwrap(), Adapter::Tus);
    }

    #[test]
    fn explicit_choices_and_records() {
        let c = caps(true, true);
        assert_eq!(
            Adapter::choose(Protocol::Ietf, &c, None).unwrap(),
            Adapter::Ietf
        );
        assert_eq!(
            Adapter::choose(Protocol::Tus, &caps(false, true), None).unwrap(),
            Adapter::Tus
        );
        // A resumed transfer keeps its protocol.
        assert_eq!(
            Adapter::choose(Protocol::Auto, &c, Some(Adapter::Ietf)).unwrap(),
            Adapter::Ietf
        );
        // A tus/IETF endpoint is no chunk-session URL.
        let e = Adapter::choose(Protocol::Chunks, &c, None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Usage);
        assert!(e.message.contains("/chunks/"), "{e}");
        // A server that does not announce chunk sessions: auto picks tus.
        let none = ServerCaps::default();
        assert_eq!(
            Adapter::choose(Protocol::Chunks, &none, None).unwrap(),
            Adapter::Chunks
        );
        assert_eq!(
            Adapter::choose(Protocol::Auto, &none, None).unwrap(),
            Adapter::Tus
        );
        assert_eq!(Adapter::from_name("ietf"), Some(Adapter::Ietf));
        assert_eq!(Adapter::from_name("tus"), Some(Adapter::Tus));
        assert_eq!(Adapter::from_name("chunks"), Some(Adapter::Chunks));
        assert_eq!(Adapter::from_name("gopher"), None);
    }

    #[test]
    fn an_announced_chunk_session_endpoint_is_used_by_auto_and_refused_to_tus() {
        // ferry's /chunks/ (its answers also carry Tus-Resumable).
        let c = ServerCaps {
            chunks: true,
            ..caps(true, false)
        };
        assert_eq!(
            Adapter::choose(Protocol::Auto, &c, None).unwrap(),
            Adapter::Chunks
        );
        assert_eq!(
            Adapter::choose(Protocol::Chunks, &c, None).unwrap(),
            Adapter::Chunks
        );
        for p in [Protocol::Tus, Protocol::Ietf] {
            let e = Adapter::choose(p, &c, None).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Usage);
            assert!(e.message.contains("--protocol chunks"), "{e}");
        }
        // A record keeps its protocol.
        assert_eq!(
            Adapter::choose(Protocol::Auto, &c, Some(Adapter::Chunks)).unwrap(),
            Adapter::Chunks
        );
    }

    #[test]
    fn ietf_sends_content_digest_only_on_request() {
        use ChecksumChoice as C;
        let c = ServerCaps {
            checksum: Some(ChecksumAlgorithm::Blake3),
            ..caps(true, true)
        };
        assert_eq!(
            Adapter::Tus.request_checksum(C::Auto, &c).unwrap(),
            Some(ChecksumAlgorithm::Blake3)
        );
        assert_eq!(Adapter::Ietf.request_checksum(C::Auto, &c).unwrap(), None);
        assert_eq!(Adapter::Chunks.request_checksum(C::Auto, &c).unwrap(), None);
        assert!(
            Adapter::Chunks
                .request_checksum(C::Use(ChecksumAlgorithm::Sha256), &c)
                .is_err()
        );
        assert!(Adapter::Chunks.parallel(&c) && !Adapter::Chunks.creation_with_body(&c));
        assert_eq!(
            Adapter::Ietf
                .request_checksum(C::Use(ChecksumAlgorithm::Sha256), &c)
                .unwrap(),
            Some(ChecksumAlgorithm::Sha256)
        );
        assert!(
            Adapter::Ietf
                .request_checksum(C::Use(ChecksumAlgorithm::Crc32), &c)
                .is_err()
        );
        let d = content_digest(&Checksum {
            algorithm: ChecksumAlgorithm::Sha256,
            digest: vec![0; 32],
        })
        .unwrap();
        assert!(d.starts_with("sha-256=:"), "{d}");
    }
}
