//! The upload engine's public paths: [`Uploads`] binds the stores and owns the durability
//! order. Its parts (policy, buffers, appends, digests, concatenation, sweeping, opening) live
//! one job per module under the crate's `engine` directory.

pub use crate::engine::{
    Append, BUDGET_BYTES, BUFFER_SIZE, ConcatLimits, ExpiryPolicy, INLINE_DIGEST_MAX, NewUpload,
    Pieces, SPACE_MARGIN, SyncPolicy, TAKEOVER_PATIENCE, Uploads,
};
