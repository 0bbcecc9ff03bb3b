//! Errors of the storage layer.

use ferry_proto::UploadId;

/// What can go wrong below the HTTP layer. The server maps each variant to one status code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No upload with this id (never created, deleted, or expired).
    #[error("upload {0} not found")]
    NotFound(UploadId),
    /// An upload with this id already exists (id collision or double create).
    #[error("upload {0} already exists")]
    AlreadyExists(UploadId),
    /// Another request held the upload and did not let go in time.
    #[error("upload {0} is busy: another request holds it")]
    Busy(UploadId),
    /// The disk (or quota) is full.
    #[error("storage full")]
    StorageFull,
    /// An upload's declared length does not fit in the free space (checked at creation).
    #[error("{length} bytes do not fit: {available} bytes free")]
    NoSpaceFor {
        /// The declared length.
        length: u64,
        /// Free bytes in the data store.
        available: u64,
    },
    /// The server keeps as many unfinished uploads as allowed.
    #[error("the server holds {max} unfinished uploads, the most allowed")]
    TooManyUploads {
        /// The limit.
        max: u64,
    },
    /// A final upload named an upload that is not a partial one.
    #[error("upload {0} is not a partial upload")]
    NotPartial(UploadId),
    /// A final upload listed the same part twice.
    #[error("upload {0} is listed twice: a final lists each part once")]
    DuplicatePart(UploadId),
    /// A final upload listed more parts than allowed.
    #[error("a final lists {count} parts; at most {max} are allowed")]
    TooManyParts {
        /// Parts listed.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A part already feeds as many finals as allowed.
    #[error("upload {part} is already part of {max} final uploads, the most allowed")]
    TooManyFinals {
        /// The part.
        part: UploadId,
        /// The limit.
        max: usize,
    },
    /// Final uploads take no bytes of their own.
    #[error("upload {0} is a final upload: it cannot be written")]
    IsFinal(UploadId),
    /// An upload would exceed the size limit.
    #[error("{length} bytes exceed the maximum size of {max}")]
    TooLarge {
        /// The requested length.
        length: u64,
        /// The limit.
        max: u64,
    },
    /// A write would go past the upload's declared length.
    #[error("body goes past the upload's length of {length} bytes")]
    ExceedsLength {
        /// The declared length.
        length: u64,
    },
    /// A range (a chunk of a Content-Range session) ends past the upload's length.
    #[error("the range goes past the upload's length of {length} bytes")]
    OutOfRange {
        /// The upload's length.
        length: u64,
    },
    /// A newer request asked this one to let go of the bytes it was writing.
    #[error("a newer request took over the bytes of upload {0} this request was writing")]
    TakenOver(UploadId),
    /// A writer of a later lease epoch has opened the upload: this one may write no more.
    #[error("upload {id} is written under a later lease (epoch {current}, this writer's {epoch})")]
    Fenced {
        /// The upload.
        id: UploadId,
        /// This writer's epoch.
        epoch: u64,
        /// The latest epoch the store has seen.
        current: u64,
    },
    /// The stored offset is not where the writer expected it (someone else committed).
    #[error("upload {0} changed underneath this request")]
    Conflict(UploadId),
    /// The upload belongs to another protocol's rules (e.g. a tus append on a chunk session,
    /// whose bytes arrive out of order).
    #[error("upload {0} was created by another protocol")]
    WrongProtocol(UploadId),
    /// A chunk declared a total length other than the upload's.
    #[error("total length {declared} differs from the upload's length of {length} bytes")]
    LengthMismatch {
        /// The upload's length.
        length: u64,
        /// What the request declared.
        declared: u64,
    },
    /// A chunk would split what has arrived into more separate ranges than allowed.
    #[error("more than {limit} separate byte ranges: send chunks that fill the gaps first")]
    TooFragmented {
        /// The limit.
        limit: usize,
    },
    /// A chunk session holds as many chunks as its data store can keep track of.
    #[error("more than {limit} chunks in one session on this store: send larger chunks")]
    TooManyChunks {
        /// The limit.
        limit: usize,
    },
    /// Stored state contradicts itself (e.g. data shorter than the committed offset).
    #[error("inconsistent stored state: {0}")]
    Inconsistent(String),
    /// The metadata database was written by a newer ferry, or cannot be read.
    #[error("metadata store: {0}")]
    Metadata(String),
    /// A data directory opened with a store other than the one its records belong to.
    #[error("{0}")]
    WrongStore(String),
    /// The data store is a service that cannot be reached, or keeps failing, after the
    /// retries inside ferry: a passing state (the client tries again later), never data lost.
    #[error("the data store is unavailable: {0}")]
    Unavailable(String),
    /// Any other I/O failure.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        // ENOSPC / EDQUOT become their own variant so the server can answer 507.
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                StoreError::StorageFull
            }
            _ => StoreError::Io(e),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
