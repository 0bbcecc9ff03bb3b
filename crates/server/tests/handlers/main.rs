//! In-process handler tests: every status of every route, sent straight to
//! `ferry_server::dispatch` on a temporary store. docs/handler-tests.md maps route × status to
//! these tests; `table` checks that the map and the tests agree.

mod support;

/// What the data store can do decides the extensions, routes and ranges offered.
mod capabilities;
/// Chunk sessions: `/chunks/` and `/chunks/{id}`.
mod chunks;
/// Downloads: GET and plain HEAD of `/files/{id}` (ranges, validators).
mod download;
/// The edges: Location, the host check, cross-origin access, what errors reveal.
mod edge;
/// The data store's finish step: recorded first, finished after, recovered by the next request.
mod finish;
/// The IETF resumable-uploads draft on `/files/`.
mod ietf;
/// Routing, CORS, method override, `/healthz`.
mod misc;
/// `--share`: `/share/`.
mod share;
/// docs/handler-tests.md agrees with the tests.
mod table;
/// tus on the collection: creation, creation-with-upload, concatenation.
mod tus_collection;
/// tus on an upload: HEAD, PATCH, DELETE, OPTIONS.
mod tus_upload;
