//! `ferry upload`, `ferry status`, `ferry forget`: argument handling and output; the work is in
//! `ferry-client`.

use crate::progress::Bars;
use clap::{Args, ValueEnum};
use ferry_client::adapter::Protocol;
use ferry_client::chunk::ChunkBounds;
use ferry_client::download::{Destination, DownloadOptions, Downloader, forget_download};
use ferry_client::error::{ClientError, ErrorKind};
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
    /// Print one JSON object per file on stdout instead of the URL.
    #[arg(long)]
    json: bool,
    /// Log filter for stderr (tracing syntax). [default: warn]
    #[arg(long, env = "FERRY_LOG", value_name = "FILTER")]
    log: Option<String>,
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
    /// Bandwidth cap, e.g. 10M (bytes per second).
    #[arg(long, value_name = "RATE")]
    limit_rate: Option<String>,
}

/// Resolved [`NetworkArgs`].
struct Network {
    retry: RetryPolicy,
    stall_timeout: Duration,
    connect_timeout: Duration,
    limiter: Option<Arc<RateLimiter>>,
}

impl NetworkArgs {
    fn resolve(&self) -> Result<Network, ClientError> {
        Ok(Network {
            retry: RetryPolicy {
                max_retries: self.retries,
                max_time: duration("--retry-time", &self.retry_time)?,
                ..RetryPolicy::default()
            },
            stall_timeout: duration("--stall-timeout", &self.stall_timeout)?,
            connect_timeout: duration("--connect-timeout", &self.connect_timeout)?,
            limiter: match &self.limit_rate {
                Some(r) => Some(Arc::new(RateLimiter::new(size("--limit-rate", r)?.max(1)))),
                None => None,
            },
        })
    }
}

/// `ferry upload`.
#[derive(Args, Debug)]
pub struct UploadArgs {
    /// Files to upload, then the endpoint URL (tus or IETF draft, e.g.
    /// http://127.0.0.1:1080/files/; chunk sessions: .../chunks/ with --protocol chunks).
    #[arg(required = true, num_args = 2.., value_name = "FILE... URL")]
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
    #[command(flatten)]
    common: CommonArgs,
}

/// `ferry forget`.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Transfer key (from `ferry status`) or the local file's path.
    #[arg(required = true)]
    which: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
}

fn usage(msg: impl Into<String>) -> ClientError {
    ClientError::new(ErrorKind::Usage, msg)
}

fn duration(name: &str, v: &str) -> Result<Duration, ClientError> {
    crate::units::parse_duration(name, v).map_err(usage)
}

fn size(name: &str, v: &str) -> Result<u64, ClientError> {
    parse_size(v).map_err(|e| usage(format!("{name}: {e}")))
}

fn state_dir(common: &CommonArgs) -> Result<StateDir, ClientError> {
    let root = common.state_dir.clone().unwrap_or_else(default_state_dir);
    StateDir::open(&root)
        .map_err(|e| ClientError::local(&format!("state dir {}", root.display()), e))
}

fn init_logs(bars: &Bars, common: &CommonArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(common.log.as_deref().unwrap_or("warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(bars.clone())
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
    eprintln!("ferry: {}", e.message);
    ExitCode::from(e.kind.exit_code())
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

/// Runs `ferry upload`.
pub fn upload(args: UploadArgs) -> ExitCode {
    match upload_inner(args) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn upload_inner(args: UploadArgs) -> Result<ExitCode, ClientError> {
    let (url, files) = args.args.split_last().expect("clap requires two values");
    let endpoint: reqwest::Url = url
        .parse()
        .map_err(|e| usage(format!("{url:?} is not a URL: {e}")))?;
    if !matches!(endpoint.scheme(), "http" | "https") {
        return Err(usage(format!("{url:?} must be an http:// or https:// URL")));
    }
    let chunk = ChunkBounds {
        initial: size("--chunk-size", &args.chunk_size)?,
        min: size("--min-chunk", &args.min_chunk)?,
        max: size("--max-chunk", &args.max_chunk)?,
        ..ChunkBounds::default()
    };
    if chunk.min == 0 || chunk.min > chunk.max {
        return Err(usage(
            "--min-chunk must be at least 1 and at most --max-chunk",
        ));
    }
    let mut metadata = Vec::new();
    for m in &args.metadata {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| usage(format!("--metadata {m:?}: expected KEY=VALUE")))?;
        metadata.push((k.to_string(), v.as_bytes().to_vec()));
    }
    let checksum = match args.checksum {
        ChecksumArg::Auto => ChecksumChoice::Auto,
        ChecksumArg::None => ChecksumChoice::Off,
        ChecksumArg::Sha1 => ChecksumChoice::Use(ChecksumAlgorithm::Sha1),
        ChecksumArg::Sha256 => ChecksumChoice::Use(ChecksumAlgorithm::Sha256),
        ChecksumArg::Sha512 => ChecksumChoice::Use(ChecksumAlgorithm::Sha512),
        ChecksumArg::Md5 => ChecksumChoice::Use(ChecksumAlgorithm::Md5),
        ChecksumArg::Crc32 => ChecksumChoice::Use(ChecksumAlgorithm::Crc32),
        ChecksumArg::Crc64nvme => ChecksumChoice::Use(ChecksumAlgorithm::Crc64Nvme),
        ChecksumArg::Blake3 => ChecksumChoice::Use(ChecksumAlgorithm::Blake3),
    };
    let protocol = match args.protocol {
        ProtocolArg::Auto => Protocol::Auto,
        ProtocolArg::Tus => Protocol::Tus,
        ProtocolArg::Ietf => Protocol::Ietf,
        ProtocolArg::Chunks => Protocol::Chunks,
    };
    let net = args.net.resolve()?;
    let opts = UploadOptions {
        protocol,
        parallel: parse_parallel(&args.parallel)?,
        max_parallel: args.max_parallel.max(1),
        metadata,
        chunk,
        checksum,
        retry: net.retry,
        stall_timeout: net.stall_timeout,
        limiter: net.limiter.clone(),
        verify: !args.no_verify,
        digest: match args.digest {
            DigestArg::Auto => None,
            DigestArg::Crc64nvme => Some(ChecksumAlgorithm::Crc64Nvme),
            DigestArg::Blake3 => Some(ChecksumAlgorithm::Blake3),
            DigestArg::Sha256 => Some(ChecksumAlgorithm::Sha256),
        },
        // A file finished while others are not keeps its record until the whole run is done,
        // so that the same command run again after an interruption skips it.
        keep_completed: true,
    };
    let bars = Bars::new();
    init_logs(&bars, &args.common);
    let state = state_dir(&args.common)?;
    let rt = runtime()?;
    let json = args.common.json;
    let files = expand(files)?;
    let files_at_once = args.files_at_once.max(1);
    let code = rt.block_on(async move {
        let cancel = CancellationToken::new();
        on_ctrl_c(cancel.clone());
        let http = http_client(net.connect_timeout, net.stall_timeout)?;
        let total: u64 = files.iter().map(|f| f.size).sum();
        // One file: its own bar. Several: one bar for the total.
        let overall = (files.len() > 1).then(|| bars.total(total, files.len()));
        let finished_state = state.clone();
        let uploader = Uploader::new(http, state, opts, bars.sink(), cancel.clone());
        let large_at_once = Arc::new(tokio::sync::Semaphore::new(files_at_once.min(8)));
        let jobs = files.iter().map(|f| {
            let large_at_once = large_at_once.clone();
            let up = match &overall {
                Some(t) => uploader.with_progress(t.file_sink()),
                None => uploader.with_progress(bars.sink()),
            };
            let endpoint = endpoint.clone();
            async move {
                let _permit = if f.size > ferry_client::upload::SMALL_FILE_MAX {
                    large_at_once.acquire().await.ok()
                } else {
                    None
                };
                (
                    f,
                    up.upload(&f.path, &endpoint, f.relative.as_deref()).await,
                )
            }
        });
        // Results come back in argument order while several files are in flight.
        let mut results = futures_util::stream::iter(jobs).buffered(files_at_once);
        let mut worst: Option<ClientError> = None;
        let mut finished = Vec::new();
        while let Some((f, result)) = results.next().await {
            let shown = f
                .relative
                .clone()
                .unwrap_or_else(|| f.path.display().to_string());
            match result {
                Ok(done) => {
                    finished.push(done.key.clone());
                    if let Verification::NotVerified(why) = &done.verification {
                        bars.println(&format!("ferry: {shown}: {why}"));
                    }
                    if json {
                        let mut v = serde_json::json!({
                            "file": shown,
                            "url": done.url,
                            "bytes": done.bytes,
                            "seconds": done.seconds,
                            "verified": done.verification == Verification::Verified,
                            "resumed_from": done.resumed_from,
                            "protocol": done.protocol.name(),
                        });
                        // "crc64nvme" against ferry servers, "sha256" against others (or the
                        // --digest asked for).
                        if let Some(d) = &done.digest {
                            v[d.algorithm.name()] = d.hex().into();
                        }
                        bars.println_stdout(&v.to_string());
                    } else {
                        bars.println_stdout(&done.url);
                    }
                }
                Err(e) => {
                    bars.println(&format!("ferry: {shown}: {}", e.message));
                    let interrupted = e.kind == ErrorKind::Interrupted;
                    if worst.is_none() || interrupted {
                        worst = Some(e);
                    }
                    if interrupted {
                        break;
                    }
                }
            }
        }
        drop(results);
        if let Some(t) = &overall {
            t.finish();
        }
        // Every file is done: the run leaves no state behind.
        if worst.is_none()
            && let Err(e) = finished_state.remove_many(finished.iter().map(String::as_str))
        {
            bars.println(&format!(
                "ferry: could not clear the finished transfers from the state: {e}"
            ));
        }
        Ok::<_, ClientError>(
            worst.map_or(ExitCode::SUCCESS, |e| ExitCode::from(e.kind.exit_code())),
        )
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// A file to upload and, inside an uploaded directory, its `/`-separated relative path.
struct FileArg {
    path: PathBuf,
    relative: Option<String>,
    size: u64,
}

/// Expands directory arguments into the regular files below them (sorted, symlinks not
/// followed, so a link cannot loop or escape), keeping each one's path relative to the
/// directory's parent (e.g. `photos/2024/a.jpg`).
fn expand(args: &[String]) -> Result<Vec<FileArg>, ClientError> {
    let mut out = Vec::new();
    for a in args {
        let path = PathBuf::from(a);
        let meta = std::fs::metadata(&path).map_err(|e| usage(format!("{a}: {e}")))?;
        if !meta.is_dir() {
            out.push(FileArg {
                path,
                relative: None,
                size: meta.len(),
            });
            continue;
        }
        let top = std::fs::canonicalize(&path).map_err(|e| usage(format!("{a}: {e}")))?;
        let name = top
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut stack = vec![(top, name)];
        let mut found = Vec::new();
        while let Some((dir, rel)) = stack.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| ClientError::local(&dir.display().to_string(), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| ClientError::local(&dir.display().to_string(), e))?;
                let ft = entry
                    .file_type()
                    .map_err(|e| ClientError::local("stat", e))?;
                let child = format!("{rel}/{}", entry.file_name().to_string_lossy());
                if ft.is_dir() {
                    stack.push((entry.path(), child));
                } else if ft.is_file() {
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    found.push(FileArg {
                        path: entry.path(),
                        relative: Some(child),
                        size,
                    });
                }
            }
        }
        found.sort_by(|a, b| a.relative.cmp(&b.relative));
        out.extend(found);
    }
    Ok(out)
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

/// Runs `ferry download`.
pub fn download(args: DownloadArgs) -> ExitCode {
    match download_inner(args) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn download_inner(args: DownloadArgs) -> Result<ExitCode, ClientError> {
    let mut urls = Vec::new();
    for u in &args.urls {
        let url: reqwest::Url = u
            .parse()
            .map_err(|e| usage(format!("{u:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(usage(format!("{u:?} must be an http:// or https:// URL")));
        }
        urls.push(url);
    }
    if args.output.is_some() && urls.len() > 1 {
        return Err(usage("-o names one file: use -d DIR for several URLs"));
    }
    let sha256 = match &args.checksum {
        None => None,
        Some(c) => {
            let hexpart = c
                .strip_prefix("sha256=")
                .ok_or_else(|| usage("--checksum must be sha256=HEX"))?;
            let bytes: Result<Vec<u8>, _> = (0..hexpart.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hexpart.get(i..i + 2).unwrap_or("x"), 16))
                .collect();
            let arr: [u8; 32] = bytes
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| usage("--checksum sha256=HEX needs 64 hex digits"))?;
            Some(arr)
        }
    };
    let net = args.net.resolve()?;
    let opts = DownloadOptions {
        parallel: parse_parallel(&args.parallel)?,
        max_parallel: args.max_parallel.max(1),
        retry: net.retry,
        stall_timeout: net.stall_timeout,
        limiter: net.limiter.clone(),
        sha256,
        force: args.force,
    };
    let bars = Bars::new();
    init_logs(&bars, &args.common);
    let state = state_dir(&args.common)?;
    let rt = runtime()?;
    let json = args.common.json;
    let dest_for = |_: &reqwest::Url| match (&args.output, &args.dir) {
        (Some(o), _) => Destination::File(o.clone()),
        (None, Some(d)) => Destination::Dir(d.clone()),
        (None, None) => Destination::Dir(PathBuf::from(".")),
    };
    let code = rt.block_on(async {
        let cancel = CancellationToken::new();
        on_ctrl_c(cancel.clone());
        // Downloads have their own client: no whole-request deadline (see its doc).
        let http = ferry_client::download::http_client(net.connect_timeout, net.stall_timeout)?;
        let dl = Downloader::new(http, state, opts, bars.sink(), cancel.clone());
        let mut worst: Option<ClientError> = None;
        for url in &urls {
            match dl
                .with_progress(bars.sink())
                .download(url, &dest_for(url))
                .await
            {
                Ok(done) => {
                    if let Verification::NotVerified(why) = &done.verification {
                        bars.println(&format!(
                            "ferry: {}: not verified: {why}",
                            done.path.display()
                        ));
                    }
                    // Standard output carries the file itself: nothing else goes there.
                    let to_stdout = done.path.as_os_str() == "-";
                    if json {
                        let v = serde_json::json!({
                            "url": url.as_str(),
                            "file": done.path.display().to_string(),
                            "bytes": done.bytes,
                            "seconds": done.seconds,
                            "verified": done.verification == Verification::Verified,
                            "resumed_from": done.resumed_from,
                        });
                        if to_stdout {
                            bars.println(&v.to_string());
                        } else {
                            bars.println_stdout(&v.to_string());
                        }
                    } else if !to_stdout {
                        bars.println_stdout(&done.path.display().to_string());
                    }
                }
                Err(e) => {
                    bars.println(&format!("ferry: {url}: {}", e.message));
                    let stop = e.kind == ErrorKind::Interrupted;
                    if worst.is_none() || stop {
                        worst = Some(e);
                    }
                    if stop {
                        break;
                    }
                }
            }
        }
        Ok::<_, ClientError>(
            worst.map_or(ExitCode::SUCCESS, |e| ExitCode::from(e.kind.exit_code())),
        )
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Runs `ferry status`.
pub fn status(args: StatusArgs) -> ExitCode {
    let state = match state_dir(&args.common) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let list = match state.list() {
        Ok(l) => l,
        Err(e) => return fail(&ClientError::local("reading the state", e)),
    };
    if list.is_empty() && !args.common.json {
        eprintln!("no unfinished transfers in {}", state.root().display());
    }
    for (key, loaded) in list {
        match loaded {
            Loaded::Found(Transfer::Upload(u)) => {
                if args.common.json {
                    let v = serde_json::json!({
                        "key": key, "kind": "upload", "source": u.source, "endpoint": u.endpoint,
                        "bytes": u.identity.size, "urls": u.urls().collect::<Vec<_>>(),
                        "completed": u.completed.as_ref().map(|c| &c.url),
                    });
                    println!("{v}");
                } else if let Some(c) = &u.completed {
                    println!(
                        "{key}  upload  {}  {} bytes  done -> {}  (kept until the rest of its run \
                         is done)",
                        u.source.display(),
                        u.identity.size,
                        c.url
                    );
                } else {
                    println!(
                        "{key}  upload  {}  {} bytes  -> {}",
                        u.source.display(),
                        u.identity.size,
                        u.final_url
                            .as_deref()
                            .or_else(|| u.parts.first().and_then(|p| p.url.as_deref()))
                            .unwrap_or("(not created yet)")
                    );
                }
            }
            Loaded::Found(Transfer::Download(d)) => {
                let have: u64 = d.done.iter().map(|(s, e)| e - s).sum();
                if args.common.json {
                    let v = serde_json::json!({
                        "key": key, "kind": "download", "url": d.url, "dest": d.dest,
                        "bytes": d.size, "done": have,
                    });
                    println!("{v}");
                } else {
                    println!(
                        "{key}  download  {}  {have}/{} bytes  <- {}",
                        d.dest.display(),
                        d.size,
                        d.url
                    );
                }
            }
            Loaded::Unusable(why) => println!("{key}  (unusable: {why})"),
            Loaded::Missing => {}
        }
    }
    ExitCode::SUCCESS
}

/// Runs `ferry forget`.
pub fn forget_cmd(args: ForgetArgs) -> ExitCode {
    let state = match state_dir(&args.common) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let list = state.list().unwrap_or_default();
    let mut code = ExitCode::SUCCESS;
    for which in &args.which {
        let canonical = std::fs::canonicalize(which).ok();
        let key = list.iter().find_map(|(k, l)| {
            let by_key = k == which;
            let by_path = match l {
                Loaded::Found(Transfer::Upload(u)) => Some(&u.source) == canonical.as_ref(),
                Loaded::Found(Transfer::Download(d)) => {
                    std::path::absolute(which).ok().as_ref() == Some(&d.dest)
                }
                _ => false,
            };
            (by_key || by_path).then(|| k.clone())
        });
        let Some(key) = key else {
            eprintln!("ferry: no saved transfer matches {which:?} (see `ferry status`)");
            code = ExitCode::from(2);
            continue;
        };
        let is_download = list
            .iter()
            .any(|(k, l)| k == &key && matches!(l, Loaded::Found(Transfer::Download(_))));
        let result = if is_download {
            forget_download(&state, &key).map(|()| Vec::new())
        } else {
            rt.block_on(async {
                let http = http_client(Duration::from_secs(10), Duration::from_secs(30))?;
                forget(&http, &state, &key).await
            })
        };
        match result {
            Ok(deleted) => {
                for u in deleted {
                    eprintln!("deleted {u}");
                }
                eprintln!("forgot {key}");
            }
            Err(e) => code = fail(&e),
        }
    }
    code
}
