//! `ferry upload`, `ferry download`, `ferry status`, `ferry forget`: argument handling and
//! output; the work is in `ferry-client`.

mod download;
mod records;
mod upload;

pub use download::download;
pub use records::{forget_cmd, status};
pub use upload::upload;

use crate::report::{self, Reporter};
use clap::{Args, ValueEnum};
use ferry_client::adapter::Protocol;
use ferry_client::chunk::ChunkBounds;
use ferry_client::download::{Destination, DownloadOptions, Downloader, forget_download};
use ferry_client::error::{ClientError, ErrorKind, io_reason};
use ferry_client::http::HttpOptions;
use ferry_client::progress::RateLimiter;
use ferry_client::retry::RetryPolicy;
use ferry_client::state::{Loaded, StateDir, Transfer, default_state_dir};
use ferry_client::upload::{
    ChecksumChoice, Parallel, UploadOptions, Uploader, Verification, forget, http_client,
};
use ferry_proto::checksum::ChecksumAlgorithm;
use ferry_proto::size::parse_size;
use futures_util::StreamExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Per-request checksum setting.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ChecksumArg {
    /// The fastest algorithm the server offers.
    Auto,
    /// None.
    None,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
    /// MD5.
    Md5,
    /// CRC-32 (IEEE).
    Crc32,
    /// CRC-64/NVME.
    Crc64nvme,
    /// BLAKE3.
    Blake3,
}

/// Whole-file digest compared with the server's at the end (`--digest`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DigestArg {
    /// CRC-64/NVME with ferry servers (catches any accident, at a tenth of BLAKE3's CPU),
    /// SHA-256 with others.
    Auto,
    /// CRC-64/NVME.
    Crc64nvme,
    /// BLAKE3 (cryptographic; ferry servers compute it on request).
    Blake3,
    /// SHA-256 (cryptographic; what every RFC 9530 server knows).
    Sha256,
}

/// Upload protocol (`--protocol`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
    /// tus if the server's OPTIONS shows tus, else the IETF draft if it shows that.
    Auto,
    /// tus 1.0 (parallel streams, per-request checksums).
    Tus,
    /// The IETF Resumable Uploads draft (interop version 8; one stream).
    Ietf,
    /// Content-Range chunk sessions at a `{base}/chunks/` URL (parallel streams too).
    Chunks,
}

/// Settings shared by transfer commands.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Where resume state lives. [default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry]
    #[arg(long, env = "FERRY_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Print JSON Lines events on stdout (started, progress, file_done, error, summary)
    /// instead of the results for people.
    #[arg(long)]
    json: bool,
    /// Print only the results and errors: no progress, no notices.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// More detail: each file's protocol, streams, rate and verification; -vv adds the
    /// client's debug log.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Time between progress lines when stderr is not a terminal (and between --json
    /// progress events). [default: 5s; 1s with --json]
    #[arg(long, value_name = "DURATION")]
    progress_interval: Option<String>,
    /// Log filter for stderr (tracing syntax). [default: warn; info with -v]
    #[arg(long, env = "FERRY_LOG", value_name = "FILTER")]
    log: Option<String>,
}

impl CommonArgs {
    /// The output settings these flags ask for.
    fn report(&self) -> Result<report::Settings, ClientError> {
        Ok(report::Settings {
            json: self.json,
            quiet: self.quiet,
            verbose: self.verbose,
            interval: self
                .progress_interval
                .as_deref()
                .map(|v| positive("--progress-interval", v))
                .transpose()?,
            json_to_stderr: false,
        })
    }
}

/// Retry, timeout and bandwidth settings shared by uploads and downloads.
#[derive(Args, Debug)]
pub struct NetworkArgs {
    /// Consecutive failed attempts without progress before giving up.
    #[arg(long, default_value_t = 20, value_name = "N")]
    retries: u32,
    /// Time without progress before giving up.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    retry_time: String,
    /// A request with no progress for this long is abandoned and retried.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    stall_timeout: String,
    /// Time allowed to connect.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    connect_timeout: String,
    /// Bandwidth cap for the whole run, e.g. 10M (bytes per second; 0: none).
    #[arg(long, value_name = "RATE")]
    limit_rate: Option<String>,
    #[command(flatten)]
    headers: HeaderArgs,
}

/// `-H`, shared by every command that talks to a server.
#[derive(Args, Debug, Clone)]
pub struct HeaderArgs {
    /// A header for every request, e.g. 'Authorization: Bearer …' (repeatable). Never saved
    /// in the resume state or logged.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = raw_header)]
    headers: Vec<RawHeader>,
}

impl HeaderArgs {
    /// The headers, checked: a refusal names the header, never its value (clap's own error
    /// would echo the value, a token, to the terminal and to any log of it).
    fn map(&self) -> Result<reqwest::header::HeaderMap, ClientError> {
        self.headers
            .iter()
            .map(|RawHeader(line)| {
                ferry_client::http::parse_header(line).map_err(|e| usage(format!("-H: {e}")))
            })
            .collect()
    }
}

/// One `-H` value as given; its Debug output names the header, never the value.
#[derive(Clone)]
struct RawHeader(String);

impl std::fmt::Debug for RawHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.0.split_once(':').map_or("?", |(n, _)| n.trim());
        write!(f, "{name}: <hidden>")
    }
}

fn raw_header(v: &str) -> Result<RawHeader, String> {
    Ok(RawHeader(v.to_owned()))
}

/// Resolved [`NetworkArgs`].
struct Network {
    retry: RetryPolicy,
    stall_timeout: Duration,
    http: HttpOptions,
    limiter: Option<Arc<RateLimiter>>,
}

impl NetworkArgs {
    fn resolve(&self) -> Result<Network, ClientError> {
        let stall_timeout = positive("--stall-timeout", &self.stall_timeout)?;
        Ok(Network {
            retry: RetryPolicy {
                max_retries: self.retries,
                max_time: duration("--retry-time", &self.retry_time)?,
                ..RetryPolicy::default()
            },
            stall_timeout,
            http: HttpOptions {
                connect_timeout: positive("--connect-timeout", &self.connect_timeout)?,
                stall_timeout,
                headers: self.headers.map()?,
            },
            // 0 is no cap, as with curl.
            limiter: match &self.limit_rate {
                Some(r) => match size("--limit-rate", r)? {
                    0 => None,
                    rate => Some(Arc::new(RateLimiter::new(rate))),
                },
                None => None,
            },
        })
    }
}

/// `ferry upload`.
#[derive(Args, Debug)]
pub struct UploadArgs {
    /// Files or directories to upload, then the endpoint URL (tus or the IETF draft, e.g.
    /// http://127.0.0.1:1080/files/; Content-Range chunk sessions: .../chunks/). Options may
    /// come between them. `-` alone is standard input, sent as it is read (tus with
    /// creation-defer-length; not resumable by a later run).
    #[arg(required = true, value_name = "FILE... URL")]
    args: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
    /// First request size (adapts between --min-chunk and --max-chunk).
    #[arg(long, default_value = "8M", value_name = "SIZE")]
    chunk_size: String,
    /// Smallest request size.
    #[arg(long, default_value = "64K", value_name = "SIZE")]
    min_chunk: String,
    /// Largest request size.
    #[arg(long, default_value = "256M", value_name = "SIZE")]
    max_chunk: String,
    /// Upload protocol: auto picks tus when the server speaks it, else the IETF draft.
    #[arg(long, value_enum, default_value = "auto")]
    protocol: ProtocolArg,
    /// Per-request checksum (tus Upload-Checksum; with the IETF draft, Content-Digest, sent
    /// only for sha256 or sha512).
    #[arg(long, value_enum, default_value = "auto")]
    checksum: ChecksumArg,
    /// Skip comparing the server's Repr-Digest with the file's digest.
    #[arg(long)]
    no_verify: bool,
    /// Whole-file digest to compare with the server's Repr-Digest at the end.
    #[arg(long, value_enum, default_value = "auto")]
    digest: DigestArg,
    #[command(flatten)]
    net: NetworkArgs,
    /// Extra metadata, KEY=VALUE (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Streams per file: a number, or "auto" to choose by measurement. Several streams need
    /// a server with the concatenation extension, or chunk sessions (--protocol chunks).
    #[arg(short = 'j', long, default_value = "auto", value_name = "N|auto")]
    parallel: String,
    /// Most streams per file the automatic choice may use.
    #[arg(long, default_value_t = 32, value_name = "N")]
    max_parallel: usize,
    /// The file name sent for standard input (`ferry upload - URL`). [default: stdin]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Upload even files that this state dir's index says are already on the server
    /// (unchanged since, and the server still has them whole).
    #[arg(long)]
    again: bool,
    /// Files uploaded at the same time (directories and several FILE arguments); of those,
    /// at most 8 larger than 2 MiB (small files go in one request each, so many at once keep
    /// the link busy; large ones fill it alone).
    #[arg(long, default_value_t = 32, value_name = "N")]
    files_at_once: usize,
}

/// `ferry download`.
#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// URLs to download (any HTTP/1.1 server; ranges make it parallel and resumable).
    #[arg(required = true, value_name = "URL")]
    urls: Vec<String>,
    /// Write to this file (one URL only): an existing file is kept unless it is the server's
    /// (then "already complete") or --force; "-", a device or a FIFO is written in order (no
    /// resume); a directory gets the file under the server's name.
    #[arg(short = 'o', long, value_name = "FILE", conflicts_with = "dir")]
    output: Option<PathBuf>,
    /// Replace an existing file that differs from the server's, and write through a symbolic
    /// link.
    #[arg(long)]
    force: bool,
    /// Write into this directory, named by Content-Disposition or the URL. [default: .]
    #[arg(short = 'd', long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Each URL is a shared directory (`ferry serve --share`, ending in /): fetch every file
    /// below it into DIR/NAME/..., each resumed and checked on its own.
    #[arg(short = 'r', long, conflicts_with = "output")]
    recursive: bool,
    #[command(flatten)]
    common: CommonArgs,
    /// Streams per file: a number, or "auto" to choose by measurement (no cap of 16).
    #[arg(short = 'j', long, default_value = "auto", value_name = "N|auto")]
    parallel: String,
    /// Most streams the automatic choice may use.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_parallel: usize,
    /// Expected digest, sha256=HEX (besides the server's Repr-Digest).
    #[arg(long, value_name = "sha256=HEX")]
    checksum: Option<String>,
    #[command(flatten)]
    net: NetworkArgs,
}

/// `ferry status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Do not ask the servers how much of each upload they hold (bytes_done unknown).
    #[arg(long)]
    offline: bool,
    /// List the index of finished uploads instead (file, URL, digest).
    #[arg(long)]
    finished: bool,
    #[command(flatten)]
    headers: HeaderArgs,
    #[command(flatten)]
    common: CommonArgs,
}

/// `ferry forget`.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Transfer key (from `ferry status`, or `ferry status --finished`) or the local file's
    /// path. A finished upload is only dropped from the index: it stays on the server.
    #[arg(required = true)]
    which: Vec<String>,
    /// Drop only the local record; leave the server's unfinished uploads (they expire).
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    headers: HeaderArgs,
    #[command(flatten)]
    common: CommonArgs,
}

fn usage(msg: impl Into<String>) -> ClientError {
    ClientError::new(ErrorKind::Usage, msg)
}

fn duration(name: &str, v: &str) -> Result<Duration, ClientError> {
    crate::units::parse_duration(name, v).map_err(usage)
}

/// `, resumed at 1.0 MiB` for a `-v` line, or nothing for a transfer from the start.
fn resumed_at(bytes: u64) -> String {
    if bytes > 0 {
        format!(
            ", resumed at {}",
            ferry_client::progress::human_bytes(bytes)
        )
    } else {
        String::new()
    }
}

/// A duration that must be more than zero (a zero timeout would give up, or retry, at once
/// and for ever).
fn positive(name: &str, v: &str) -> Result<Duration, ClientError> {
    let d = duration(name, v)?;
    if d.is_zero() {
        return Err(usage(format!("{name} must be more than 0")));
    }
    Ok(d)
}

/// A count that must be at least 1.
fn at_least_one(name: &str, n: usize) -> Result<usize, ClientError> {
    if n == 0 {
        return Err(usage(format!("{name} must be at least 1")));
    }
    Ok(n)
}

fn size(name: &str, v: &str) -> Result<u64, ClientError> {
    parse_size(v).map_err(|e| usage(format!("{name}: {e}")))
}

fn state_dir(common: &CommonArgs) -> Result<StateDir, ClientError> {
    let root = match common.state_dir.clone().or_else(default_state_dir) {
        Some(r) => r,
        None => {
            return Err(usage(
                "no home directory to keep resume state in (HOME is unset or relative): set \
                 HOME or XDG_STATE_HOME, or pass --state-dir DIR",
            ));
        }
    };
    let root = if root.is_absolute() {
        root
    } else {
        std::env::current_dir()
            .map_err(|e| ClientError::local("the current directory", e))?
            .join(root)
    };
    StateDir::open(&root)
        .map_err(|e| ClientError::local(&format!("state dir {}", root.display()), e))
}

fn init_logs(reporter: &Reporter, common: &CommonArgs) {
    let default = match common.verbose {
        0 => "warn",
        1 => "warn,ferry_client=info",
        _ => "warn,ferry_client=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_new(common.log.as_deref().unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(reporter.clone())
        .with_ansi(false)
        .without_time()
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::local("starting the runtime", e))
}

fn fail(e: &ClientError) -> ExitCode {
    errln!("ferry: {}", e.message);
    ExitCode::from(e.kind.exit_code())
}

/// A run that could not start: said on stderr and, with `--json`, as an `error` event and a
/// `summary`, so that a program reading the events always learns the outcome.
fn fail_run(op: &str, json: bool, to_stderr: bool, e: &ClientError) -> ExitCode {
    if json {
        let mut err = report::error_fields(None, None, e);
        err["version"] = report::EVENTS_VERSION.into();
        err["event"] = "error".into();
        err["op"] = op.into();
        let say = |line: String| {
            if to_stderr {
                errln!("{line}");
            } else {
                outln!("{line}");
            }
        };
        say(report::event_line(&err));
        let summary = serde_json::json!({
            "version": report::EVENTS_VERSION, "event": "summary", "op": op,
            "files_done": 0, "files_failed": 0, "files_total": 0, "bytes_done": 0,
            "bytes_moved": 0, "seconds": 0.0, "exit_code": e.kind.exit_code(),
        });
        say(report::event_line(&summary));
    }
    fail(e)
}

/// Ctrl-C: the first one stops cleanly (state stays resumable); a second one exits at once.
fn on_ctrl_c(cancel: CancellationToken) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
}

fn parse_parallel(v: &str) -> Result<Parallel, ClientError> {
    match v.trim() {
        "auto" => Ok(Parallel::Auto),
        n => match n.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Parallel::Fixed(n)),
            _ => Err(usage(format!(
                "-j/--parallel {n:?}: expected a number ≥ 1 or auto"
            ))),
        },
    }
}
