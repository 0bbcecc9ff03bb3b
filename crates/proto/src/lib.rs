//! Wire formats of ferry: the tus 1.0 headers, the IETF resumable-upload draft's headers, `Upload-Metadata`, upload ids,
//! human-readable sizes and `Content-Disposition`.
//!
//! This crate is pure: no I/O, no async, no randomness and no HTTP library
//! types. The server and the client share it so that every header has exactly
//! one parser.
//!
//! ```
//! use ferry_proto::{Metadata, UploadId, disposition, size, tus};
//!
//! assert_eq!(tus::parse_upload_offset(" 42 "), Ok(42));
//! assert!(tus::parse_upload_length("-1").is_err());
//!
//! let md = Metadata::parse("filename cmVwb3J0LnBkZg==,is_draft").unwrap();
//! assert_eq!(md.filename(), Some(&b"report.pdf"[..]));
//! assert_eq!(
//!     disposition::attachment(md.filename()),
//!     "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
//! );
//!
//! let id = UploadId::from_bytes([0xab; 16]);
//! assert_eq!(UploadId::parse(&id.to_string()), Ok(id));
//! assert!(UploadId::parse("../etc/passwd").is_err());
//!
//! assert_eq!(size::parse_size("64MiB"), Ok(64 << 20));
//! assert_eq!(size::format_size(64 << 20), "64.0 MiB");
//! ```

pub mod checksum;
pub mod concat;
pub mod digest;
pub mod disposition;
pub mod error;
pub mod http;
pub mod id;
pub mod ietf;
pub mod listing;
pub mod manifest;
pub mod metadata;
pub mod range;
pub mod range_set;
pub mod size;
pub mod tus;

pub use error::ProtoError;
pub use id::UploadId;
pub use metadata::Metadata;
