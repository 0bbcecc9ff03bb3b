//! S3-compatible object storage: the data store ([`S3DataStore`]), the
//! calls it makes (signed with rusty-s3, sent with reqwest), when a failed one is tried again,
//! and how large each part is.

mod assemble;
mod client;
mod place;
pub mod plan;
mod reconcile;
pub mod retry;
mod store;
#[cfg(test)]
mod tests;
mod writer;

pub use client::{Body, ListedObject, ListedPart, ListedUpload, S3Client, S3Config};
pub use store::{AccessError, S3DataStore};
