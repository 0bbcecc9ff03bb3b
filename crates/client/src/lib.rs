//! ferry's transfer engine, usable without the CLI.
//!
//! - [`upload::Uploader`] uploads files to any tus 1.0 server, any server speaking the IETF
//!   resumable-upload draft, or Content-Range chunk sessions ([`adapter::Protocol`]), resuming
//!   from a durable state directory ([`state::StateDir`]), retrying with backoff ([`retry`]),
//!   sizing requests with [`chunk::ChunkSizeController`], and verifying the result against
//!   the server's `Repr-Digest`.
//! - [`download::Downloader`] downloads from any HTTP/1.1 server with Range, resuming and
//!   verifying likewise.
//! - [`tus`], [`ietf`] and [`chunks`] hold the individual requests of each protocol, reached
//!   through [`adapter::Adapter`]; they share [`response`] (what servers answer) and
//!   [`discovery`] (OPTIONS). [`http`] builds the HTTP clients, [`options`] holds the choices
//!   shared by uploads and downloads, and [`source`] reads the local file.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_client::error::ClientError> {
//! use ferry_client::{progress::NoProgress, state::StateDir, upload::*};
//! use std::{sync::Arc, time::Duration};
//! let http = http_client(&ferry_client::http::HttpOptions::default())?;
//! let state = StateDir::open(&ferry_client::state::default_state_dir().unwrap()).unwrap();
//! let up = Uploader::new(http, state, UploadOptions::default(), Arc::new(NoProgress), Default::default());
//! let endpoint = "http://127.0.0.1:1080/files/".parse().unwrap();
//! let done = up.upload("big.iso".as_ref(), &endpoint, None).await?;
//! println!("{} ({:?})", done.url, done.verification);
//! # Ok(()) }
//! ```

pub mod adapter;
pub mod chunk;
pub mod chunks;
pub mod discovery;
pub mod download;
pub mod error;
pub mod http;
pub mod identity;
pub mod ietf;
pub mod options;
pub mod parallel;
pub mod progress;
pub mod response;
pub mod retry;
pub mod source;
pub mod state;
pub mod tus;
pub mod upload;

pub use upload::segmented;

pub use error::{ClientError, ErrorKind};
pub use options::Verification;
pub use upload::{UploadOptions, UploadOutcome, Uploader};
