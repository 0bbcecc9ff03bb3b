//! Integration tests: real `ferry` processes on 127.0.0.1, ephemeral ports.

mod support;

// Server protocol, by feature (tus and IETF draft variations inside):
mod append; // HEAD and PATCH: offsets, content types, chunked bodies, the draft's bad requests
mod browser; // Chromium: Uppy from a page of another origin (CORS), a DNS-rebinding page
mod checksum; // tus checksum and checksum-trailer, Repr-Digest, the draft's Content-Digest
mod chunks; // Content-Range chunk sessions: server rules, `--protocol chunks`, Python and curl clients
mod cluster; // three instances on PostgreSQL and S3 behind a per-request balancer: clients, kills, pauses
mod concat; // tus concatenation: partial and final uploads, refusals, deletion, races
mod cors; // CORS preflights, exposed headers, allow lists
mod create; // creating uploads: tus creation and defer-length, the IETF draft's creation
mod download; // ranged GETs from `ferry serve`, third-party download clients, `ferry download`
mod download_resume; // `ferry download` across SIGKILL, cut connections and files that change
mod download_tree; // `ferry download -r`: a shared tree restored, resumed per file
mod edge; // the edges as a process: the host check on a loopback listener, ids in logs
mod expiry; // tus expiration: Upload-Expires, pushed forward by PATCHes, swept on SIGUSR1
mod hostile; // hostile input on every route family: right 4xx, no panic, stored data untouched
mod outputs; // `ferry download -o`: streams, directories, links, existing files, no clobbering
mod resume; // cut-off bodies, takeover of a busy upload, a server SIGKILLed mid-upload
mod routes; // OPTIONS, protocol versions, method override, /healthz, base path, public URL, Host
mod terminate; // tus DELETE and the IETF draft's cancellation

// Clients and the server as a process:
mod config; // `ferry serve` settings: flags, environment, TOML file, data-dir lock, SIGTERM
mod crash; // simulated power loss through scripts/crash_driver.py
mod diskfull; // a full disk: 507 with the committed offset, completion once space is freed
mod durability; // kill -9, fsync order under strace, half-open takeover, graceful shutdown
mod fail_fast; // unreachable or not tus before anything was sent: at once; once begun: waited for
mod faults; // network faults through the fault-injecting proxy, upload and download
mod forget; // `ferry forget` claims only deletions that happened; the record stays when it cannot
mod fsck; // `ferry fsck`: clean after serving, planted orphans found and repaired, cleaned at start
mod generated; // `ferry completions SHELL` and `ferry man` from the clap definitions
mod headers; // -H on every request of upload, download and forget; never saved or logged
mod interop; // third-party tus clients and servers (tus-js-client, tuspy, @tus/server, rustus)
mod keep_going; // unreadable and missing files are skipped, the rest is sent, a summary
mod layout; // a data directory of the previous release (metadata layout 1) migrates and serves
mod limits; // bounds under abuse: connection cap and shedding, accept backoff, lingering close
mod messages; // one line, human sizes, each name once; invalid settings exit 2 naming the variable
mod parallel; // parallel streams, adaptive chunks, directory uploads, the bad-link test
mod pg; // `ferry serve --meta postgres://…`: PostgreSQL restarted mid-upload, wrong settings, instance names
mod pipes; // closed stdout or stderr: no panic; the server still stops on SIGTERM
mod progress; // --json events, plain lines on a log, 80-column terminal lines, --quiet, -v
mod remember; // the index of finished uploads, --again, status progress, directory manifests
mod s3; // `ferry serve --store s3://…` on SeaweedFS: uploads byte-exact, a missing bucket exits 2
mod s3_leftovers; // the S3 reconciler: a kill after CreateMultipartUpload, leftovers past the grace period
mod stdin; // `ferry upload -`: a pipe with a deferred length, cut connections, refusals
mod upload; // `ferry upload`, `status` and `forget` end to end; `--protocol ietf` and `auto`
mod values; // client settings: impossible values refused, one --limit-rate budget, -j notes
