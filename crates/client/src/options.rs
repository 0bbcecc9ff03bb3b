//! Choices a caller makes for transfers, shared by uploads and downloads.

use ferry_proto::checksum::ChecksumAlgorithm;

/// Which checksum to put on each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumChoice {
    /// The fastest algorithm the server lists, none if it lists none.
    #[default]
    Auto,
    /// No per-request checksum.
    Off,
    /// This algorithm (the server must support it).
    Use(ChecksumAlgorithm),
}

/// How many streams to use for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parallel {
    /// Chosen by measurement (one stream on short round trips).
    #[default]
    Auto,
    /// Exactly this many (1 = a single upload).
    Fixed(usize),
}

/// Whether the result was checked against the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The server's digest of the upload equals the file's.
    Verified,
    /// Not checked, and why.
    NotVerified(String),
}
