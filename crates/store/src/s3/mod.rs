//! S3-compatible object storage (issue 21, in progress): the data store ([`S3DataStore`]), the
//! calls it makes (signed with rusty-s3, sent with reqwest), when a failed one is tried again,
//! and how large each part is.

mod client;
mod place;
pub mod plan;
pub mod retry;
mod store;
#[cfg(test)]
mod tests;
mod writer;

pub use client::{Body, ListedPart, ListedUpload, S3Client, S3Config};
pub use store::{AccessError, S3DataStore};
