//! `ferry serve`: settings from flags > `FERRY_*` environment > TOML file > defaults.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ferry_server::config::{
    ConnLimits, Cors, CreationRate, HostPolicy, normalize_base_path, normalize_public_url,
};
use ferry_server::{AppState, ServerConfig};
use ferry_store::model::now_ms;
use ferry_store::uploads::{ConcatLimits, ExpiryPolicy};
use ferry_store::{SyncPolicy, Uploads};
use serde::Deserialize;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// When acknowledged bytes reach stable storage.
#[derive(Debug, Clone, Copy, ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncArg {
    /// fdatasync data and commit metadata before every acknowledgement (survives power loss).
    Always,
    /// Acknowledge from the page cache (survives a process crash, not a power loss).
    None,
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the long flags, with '_' for '-').
    #[arg(long, env = "FERRY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    /// [default: 127.0.0.1:1080]
    #[arg(long, env = "FERRY_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Directory for upload data and the metadata database. [default: ./ferry-data]
    #[arg(long, env = "FERRY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    store: crate::store::StoreArgs,
    #[command(flatten)]
    meta: crate::meta::MetaArgs,
    #[command(flatten)]
    lease: crate::meta::LeaseArgs,
    /// Prefix for every route, e.g. /api (tus is then at /api/files/).
    #[arg(long, env = "FERRY_BASE_PATH", value_name = "PATH")]
    base_path: Option<String>,
    /// Largest upload accepted, e.g. 10G (curl-style suffixes). [default: unlimited]
    #[arg(long, env = "FERRY_MAX_SIZE", value_name = "SIZE")]
    max_size: Option<String>,
    /// Origin for Location headers, e.g. https://files.example.com (behind a proxy).
    #[arg(long, env = "FERRY_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// How long a request body may stall before the server commits what arrived and ends it.
    /// [default: 60s]
    #[arg(long, env = "FERRY_BODY_IDLE_TIMEOUT", value_name = "DURATION")]
    body_idle_timeout: Option<String>,
    /// How long a client may take to send a request's headers before the connection is
    /// closed (slow-loris guard). [default: 30s]
    #[arg(long, env = "FERRY_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    header_read_timeout: Option<String>,
    /// When bytes are made durable before being acknowledged. [default: always]
    #[arg(long, env = "FERRY_SYNC", value_enum)]
    sync: Option<SyncArg>,
    /// Build URLs from Forwarded / X-Forwarded-* headers (only behind a proxy you trust).
    #[arg(long, env = "FERRY_TRUST_PROXY", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
    trust_proxy: Option<bool>,
    /// On SIGINT/SIGTERM, how long to let requests in flight commit and finish. [default: 10s]
    #[arg(long, env = "FERRY_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    shutdown_timeout: Option<String>,
    /// Unfinished uploads expire this long after their last change ("never" to keep them).
    /// [default: 7d]
    #[arg(long, env = "FERRY_EXPIRE_AFTER", value_name = "DURATION")]
    expire_after: Option<String>,
    /// Finished uploads expire this long after they finished. [default: never]
    #[arg(long, env = "FERRY_EXPIRE_FINISHED_AFTER", value_name = "DURATION")]
    expire_finished_after: Option<String>,
    /// How often expired uploads are deleted (SIGUSR1 sweeps at once). [default: 1m]
    #[arg(long, env = "FERRY_SWEEP_INTERVAL", value_name = "DURATION")]
    sweep_interval: Option<String>,
    /// How often leftovers are looked for: data no upload's committed state needs (a crash
    /// between writing data and recording it). Startup removes them at once. [default: 1h]
    #[arg(long, env = "FERRY_RECONCILE_INTERVAL", value_name = "DURATION")]
    reconcile_interval: Option<String>,
    /// How old a leftover must be before it is removed while serving: longer than creating an
    /// upload or committing a write can take. [default: 1h]
    #[arg(long, env = "FERRY_RECONCILE_GRACE", value_name = "DURATION")]
    reconcile_grace: Option<String>,
    /// Largest Upload-Metadata accepted, e.g. 16K (curl-style suffixes). [default: 16K]
    #[arg(long, env = "FERRY_MAX_METADATA_SIZE", value_name = "SIZE")]
    max_metadata_size: Option<String>,
    /// Uploads one client address may create per second, sustained ("0": no limit); over it,
    /// 429 with Retry-After. [default: 50]
    #[arg(long, env = "FERRY_CREATION_RATE", value_name = "N")]
    creation_rate: Option<u32>,
    /// Uploads one client address may create at once after a quiet spell. [default: 1000]
    #[arg(long, env = "FERRY_CREATION_BURST", value_name = "N")]
    creation_burst: Option<u32>,
    /// Most unfinished uploads the server keeps ("0": no limit); past it, creations get 429
    /// with Retry-After. [default: 100000]
    #[arg(long, env = "FERRY_MAX_UNFINISHED_UPLOADS", value_name = "N")]
    max_unfinished_uploads: Option<u64>,
    /// Least bytes per second a request body must average over --body-rate-window, e.g. 1K
    /// ("0": no minimum); slower bodies end with 408, keeping what arrived. [default: 1K]
    #[arg(long, env = "FERRY_MIN_BODY_RATE", value_name = "SIZE")]
    min_body_rate: Option<String>,
    /// The window --min-body-rate is averaged over. [default: 60s]
    #[arg(long, env = "FERRY_BODY_RATE_WINDOW", value_name = "DURATION")]
    body_rate_window: Option<String>,
    /// Memory for request bodies in flight (write buffers and connection read buffers), in
    /// all; past it bodies wait in their sockets (TCP slows their clients). [default: 16M]
    #[arg(long, env = "FERRY_BUFFER_MEMORY", value_name = "SIZE")]
    buffer_memory: Option<String>,
    /// Connections served at once; past it a few more get 503 (and /healthz its answer), the
    /// rest are closed. [default: from the open-files limit, at most 16384]
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// How long a connection closed with its request body unread keeps reading (and
    /// discarding) it, so the client can read the answer. [default: 30s]
    #[arg(long, env = "FERRY_LINGERING_TIME", value_name = "DURATION")]
    lingering_time: Option<String>,
    /// While lingering, how long to wait for more bytes before closing. [default: 5s]
    #[arg(long, env = "FERRY_LINGERING_TIMEOUT", value_name = "DURATION")]
    lingering_timeout: Option<String>,
    /// Most parts one concatenated (final) upload may list. [default: 10000]
    #[arg(long, env = "FERRY_MAX_FINAL_PARTS", value_name = "N")]
    max_final_parts: Option<usize>,
    /// Most final uploads one part may feed. [default: 1000]
    #[arg(long, env = "FERRY_MAX_FINALS_PER_PART", value_name = "N")]
    max_finals_per_part: Option<usize>,
    /// How long a request with Want-Repr-Digest waits for a digest being computed before it is
    /// answered with the digests already known ("0" answers at once). [default: 5s]
    #[arg(long, env = "FERRY_DIGEST_WAIT", value_name = "DURATION")]
    digest_wait: Option<String>,
    /// Web pages of other origins allowed to use this server (CORS): a comma-separated list
    /// such as https://app.example.com, or "*" for any page on the web. [default: none]
    #[arg(long, env = "FERRY_CORS_ORIGINS", value_name = "ORIGINS")]
    cors_origins: Option<String>,
    /// Host names this server answers to besides localhost, loopback addresses and the
    /// --public-url host (and, off loopback, IP literals), comma-separated, or "*" for any;
    /// other Hosts get 421 (DNS-rebinding guard). [default: those only on a loopback address;
    /// any otherwise]
    #[arg(long, env = "FERRY_ALLOWED_HOSTS", value_name = "HOSTS")]
    allowed_hosts: Option<String>,
    /// Publish this directory read-only under /share/ (listings, ranges, validators). It may
    /// not contain the data directory or lie inside it.
    #[arg(long, env = "FERRY_SHARE", value_name = "DIR")]
    share: Option<PathBuf>,
    /// Serve and list names starting with a dot (.git, .env) under /share/. [default: false]
    #[arg(long, env = "FERRY_SHARE_DOTFILES", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
    share_dotfiles: Option<bool>,
    /// Log filter (tracing syntax), e.g. info or ferry_server=debug. [default: info]
    #[arg(long, env = "FERRY_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// For test harnesses: shut down when standard input closes, so a killed parent never
    /// leaves an orphan server.
    #[arg(long, hide = true)]
    exit_on_stdin_close: bool,
}

/// The TOML file's shape: the same settings as the flags. No `Debug`: it may hold S3
/// credentials.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_path_style: Option<bool>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    s3_session_token: Option<String>,
    meta: Option<String>,
    instance_id: Option<String>,
    lease_ttl: Option<String>,
    lease_margin: Option<String>,
    base_path: Option<String>,
    max_size: Option<SizeValue>,
    public_url: Option<String>,
    body_idle_timeout: Option<String>,
    header_read_timeout: Option<String>,
    sync: Option<SyncArg>,
    trust_proxy: Option<bool>,
    shutdown_timeout: Option<String>,
    expire_after: Option<String>,
    expire_finished_after: Option<String>,
    sweep_interval: Option<String>,
    reconcile_interval: Option<String>,
    reconcile_grace: Option<String>,
    max_metadata_size: Option<SizeValue>,
    creation_rate: Option<u32>,
    creation_burst: Option<u32>,
    max_unfinished_uploads: Option<u64>,
    min_body_rate: Option<SizeValue>,
    body_rate_window: Option<String>,
    buffer_memory: Option<SizeValue>,
    max_connections: Option<usize>,
    lingering_time: Option<String>,
    lingering_timeout: Option<String>,
    max_final_parts: Option<usize>,
    max_finals_per_part: Option<usize>,
    digest_wait: Option<String>,
    cors_origins: Option<String>,
    allowed_hosts: Option<String>,
    share: Option<PathBuf>,
    share_dotfiles: Option<bool>,
    log: Option<String>,
}

/// Sizes in the file may be numbers or strings with suffixes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// Everything resolved and validated.
struct Settings {
    listen: String,
    data_dir: PathBuf,
    store: crate::store::StoreChoice,
    meta: crate::meta::MetaChoice,
    /// This instance's name, and whether every log line shows it.
    instance: (String, bool),
    lease: ferry_store::pg_meta::LeaseTiming,
    server: ServerConfig,
    sync: SyncPolicy,
    expiry: ExpiryPolicy,
    concat: ConcatLimits,
    share: Option<PathBuf>,
    shutdown_timeout: Duration,
    log: String,
}

fn duration(name: &str, v: &str) -> Result<Duration> {
    crate::units::parse_duration(name, v).map_err(anyhow::Error::msg)
}

/// A duration that may also be "never" (or "0").
fn optional_duration(name: &str, v: &str) -> Result<Option<Duration>> {
    match v.trim() {
        "never" | "none" | "0" => Ok(None),
        other => duration(name, other).map(Some),
    }
}

/// A size from its flag (or environment) else the file; `None` when neither sets it.
fn size_setting(name: &str, flag: Option<String>, file: Option<SizeValue>) -> Result<Option<u64>> {
    match (flag, file) {
        (Some(s), _) | (None, Some(SizeValue::Text(s))) => ferry_proto::size::parse_size(&s)
            .with_context(|| format!("{name} {s:?}"))
            .map(Some),
        (None, Some(SizeValue::Bytes(n))) => Ok(Some(n)),
        (None, None) => Ok(None),
    }
}

fn resolve(args: ServeArgs) -> Result<Settings> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("config file {} is invalid", path.display()))?
        }
        None => FileConfig::default(),
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:1080".into());
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| "ferry-data".into());
    let store_file = crate::store::StoreFile {
        store: file.store,
        s3_endpoint: file.s3_endpoint,
        s3_region: file.s3_region,
        s3_path_style: file.s3_path_style,
        s3_access_key_id: file.s3_access_key_id,
        s3_secret_access_key: file.s3_secret_access_key,
        s3_session_token: file.s3_session_token,
    };
    let store = crate::store::resolve(args.store, store_file, |k| std::env::var(k).ok())?;
    let env = |k: &str| std::env::var(k).ok();
    let (meta, instance, name_instance) =
        crate::meta::resolve(args.meta, file.meta, file.instance_id, Some(&data_dir), env)?;
    let base_path = normalize_base_path(&args.base_path.or(file.base_path).unwrap_or_default())
        .map_err(anyhow::Error::msg)?;
    let max_size = size_setting("--max-size", args.max_size, file.max_size)?;
    let public_url = match args.public_url.or(file.public_url) {
        Some(u) => Some(normalize_public_url(&u).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let body_idle_timeout = duration(
        "--body-idle-timeout",
        &args
            .body_idle_timeout
            .or(file.body_idle_timeout)
            .unwrap_or_else(|| "60s".into()),
    )?;
    if body_idle_timeout.is_zero() {
        bail!("--body-idle-timeout must be more than zero");
    }
    let header_read_timeout = duration(
        "--header-read-timeout",
        &args
            .header_read_timeout
            .or(file.header_read_timeout)
            .unwrap_or_else(|| "30s".into()),
    )?;
    if header_read_timeout.is_zero() {
        bail!("--header-read-timeout must be more than zero");
    }
    let shutdown_timeout = duration(
        "--shutdown-timeout",
        &args
            .shutdown_timeout
            .or(file.shutdown_timeout)
            .unwrap_or_else(|| "10s".into()),
    )?;
    let expiry = ExpiryPolicy {
        unfinished: optional_duration(
            "--expire-after",
            &args
                .expire_after
                .or(file.expire_after)
                .unwrap_or_else(|| "7d".into()),
        )?,
        finished: optional_duration(
            "--expire-finished-after",
            &args
                .expire_finished_after
                .or(file.expire_finished_after)
                .unwrap_or_else(|| "never".into()),
        )?,
    };
    let sweep_interval = duration(
        "--sweep-interval",
        &args
            .sweep_interval
            .or(file.sweep_interval)
            .unwrap_or_else(|| "1m".into()),
    )?;
    if sweep_interval.is_zero() {
        bail!("--sweep-interval must be more than zero");
    }
    let reconcile_interval = duration(
        "--reconcile-interval",
        &args
            .reconcile_interval
            .or(file.reconcile_interval)
            .unwrap_or_else(|| "1h".into()),
    )?;
    if reconcile_interval.is_zero() {
        bail!("--reconcile-interval must be more than zero");
    }
    let reconcile_grace = duration(
        "--reconcile-grace",
        &args
            .reconcile_grace
            .or(file.reconcile_grace)
            .unwrap_or_else(|| "1h".into()),
    )?;
    // Anything younger may be a creation or a write between staging and its commit.
    if reconcile_grace < Duration::from_secs(1) {
        bail!("--reconcile-grace must be at least 1s");
    }
    let max_metadata = size_setting(
        "--max-metadata-size",
        args.max_metadata_size,
        file.max_metadata_size,
    )?
    .unwrap_or(ferry_server::config::MAX_METADATA as u64);
    let max_metadata = usize::try_from(max_metadata)
        .map_err(|_| anyhow::anyhow!("--max-metadata-size {max_metadata} is too large"))?;
    let default_rate = CreationRate::DEFAULT;
    let rate = args
        .creation_rate
        .or(file.creation_rate)
        .unwrap_or(default_rate.per_second.get());
    let burst = args
        .creation_burst
        .or(file.creation_burst)
        .unwrap_or(default_rate.burst.get());
    let creation_rate = match NonZeroU32::new(rate) {
        None => None,
        Some(per_second) => Some(CreationRate {
            per_second,
            burst: NonZeroU32::new(burst)
                .ok_or_else(|| anyhow::anyhow!("--creation-burst must be at least 1"))?,
        }),
    };
    let max_unfinished = match args
        .max_unfinished_uploads
        .or(file.max_unfinished_uploads)
        .unwrap_or(ferry_server::config::MAX_UNFINISHED)
    {
        0 => None,
        n => Some(n),
    };
    let min_body_rate = size_setting("--min-body-rate", args.min_body_rate, file.min_body_rate)?
        .unwrap_or(ferry_server::config::MIN_BODY_RATE);
    let body_rate_window = duration(
        "--body-rate-window",
        &args
            .body_rate_window
            .or(file.body_rate_window)
            .unwrap_or_else(|| "60s".into()),
    )?;
    if body_rate_window.is_zero() {
        bail!("--body-rate-window must be more than zero");
    }
    let buffer_memory = size_setting("--buffer-memory", args.buffer_memory, file.buffer_memory)?
        .unwrap_or(ferry_server::config::ServerConfig::default().buffer_memory as u64);
    if buffer_memory < 1024 * 1024 {
        bail!("--buffer-memory must be at least 1M");
    }
    let buffer_memory = usize::try_from(buffer_memory)
        .map_err(|_| anyhow::anyhow!("--buffer-memory {buffer_memory} is too large"))?;
    let conn_defaults = ConnLimits::default();
    let connections = ConnLimits {
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(conn_defaults.max_connections),
        lingering_time: match args.lingering_time.or(file.lingering_time) {
            Some(v) => duration("--lingering-time", &v)?,
            None => conn_defaults.lingering_time,
        },
        lingering_timeout: match args.lingering_timeout.or(file.lingering_timeout) {
            Some(v) => duration("--lingering-timeout", &v)?,
            None => conn_defaults.lingering_timeout,
        },
    };
    if connections.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let defaults = ConcatLimits::default();
    let concat = ConcatLimits {
        max_parts: args
            .max_final_parts
            .or(file.max_final_parts)
            .unwrap_or(defaults.max_parts),
        max_finals_per_part: args
            .max_finals_per_part
            .or(file.max_finals_per_part)
            .unwrap_or(defaults.max_finals_per_part),
    };
    if concat.max_parts == 0 || concat.max_finals_per_part == 0 {
        bail!("--max-final-parts and --max-finals-per-part must be at least 1");
    }
    let digest_wait = duration(
        "--digest-wait",
        &args
            .digest_wait
            .or(file.digest_wait)
            .unwrap_or_else(|| "5s".into()),
    )?;
    let cors = Cors::parse(
        &args
            .cors_origins
            .or(file.cors_origins)
            .unwrap_or_else(|| "none".into()),
    )
    .map_err(|e| anyhow::anyhow!("--cors-origins: {e}"))?;
    let allowed_hosts = match args.allowed_hosts.or(file.allowed_hosts) {
        Some(h) => HostPolicy::parse(&h).map_err(|e| anyhow::anyhow!("--allowed-hosts: {e}"))?,
        None => HostPolicy::Auto,
    };
    let share = args.share.or(file.share);
    if let Some(dir) = &share {
        check_share(dir, &data_dir)?;
    }
    let sync = match args.sync.or(file.sync).unwrap_or(SyncArg::Always) {
        SyncArg::Always => SyncPolicy::Always,
        SyncArg::None => SyncPolicy::None,
    };
    Ok(Settings {
        listen,
        data_dir,
        store,
        meta,
        instance: (instance, name_instance),
        lease: args.lease.resolve(file.lease_ttl, file.lease_margin)?,
        server: ServerConfig {
            base_path,
            max_size,
            public_url,
            body_idle_timeout,
            header_read_timeout,
            trust_proxy: args.trust_proxy.or(file.trust_proxy).unwrap_or(false),
            sweep_interval,
            reconcile_interval,
            reconcile_grace,
            cors,
            digest_wait,
            max_metadata,
            creation_rate,
            max_unfinished,
            connections,
            min_body_rate: (min_body_rate > 0).then_some(min_body_rate),
            buffer_memory,
            body_rate_window,
            allowed_hosts,
            share_dotfiles: args.share_dotfiles.or(file.share_dotfiles).unwrap_or(false),
            ..ServerConfig::default()
        },
        sync,
        expiry,
        concat,
        share,
        shutdown_timeout,
        log: args.log.or(file.log).unwrap_or_else(|| "info".into()),
    })
}

/// Refuses a share that would publish the data directory (the metadata database and every
/// upload id, which are capabilities) or live inside it (where the server deletes files).
fn check_share(share: &std::path::Path, data_dir: &std::path::Path) -> Result<()> {
    let shared = share.canonicalize().map_err(|e| {
        anyhow::anyhow!(
            "--share {}: {}",
            share.display(),
            ferry_client::error::io_reason(&e)
        )
    })?;
    if !shared.is_dir() {
        bail!("--share {}: not a directory", share.display());
    }
    let data =
        canonical_beyond(data_dir).with_context(|| format!("--data-dir {}", data_dir.display()))?;
    if data.starts_with(&shared) {
        bail!(
            "--share {} contains the data directory {}: it would publish every upload; share \
             another directory or move the data directory out of it",
            share.display(),
            data_dir.display()
        );
    }
    if shared.starts_with(&data) {
        bail!(
            "--share {} lies inside the data directory {}: share a directory outside it",
            share.display(),
            data_dir.display()
        );
    }
    Ok(())
}

/// The canonical form of a path that may not exist yet: its nearest existing ancestor
/// resolved, the rest appended.
fn canonical_beyond(path: &std::path::Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(c) => return Ok(rest.iter().rev().fold(c, |p: PathBuf, r| p.join(r))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Err(e);
                };
                rest.push(name.to_owned());
                existing = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

pub fn run(args: ServeArgs) -> ExitCode {
    let exit_on_stdin_close = args.exit_on_stdin_close;
    // Before the settings: the default connection cap follows the limit in force.
    let open_files = ferry_server::conn::raise_open_files_limit();
    let settings = match resolve(args) {
        Ok(s) => s,
        Err(e) => {
            errln!("ferry serve: {e:#}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::logs::Stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if settings.instance.1 {
        crate::logs::name_instance(&settings.instance.0);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // File I/O and fsyncs run on blocking threads. Tokio's default allows 512 of them; under
        // 1,000 concurrent uploads each one costs a stack and a malloc arena (peak RSS went
        // past 390 MiB), while the disk gains nothing from more than a few dozen fsyncs in
        // flight. Extra work queues instead.
        .max_blocking_threads(64)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("ferry serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(serve(settings, exit_on_stdin_close, open_files));
    // A blocking stdin read (--exit-on-stdin-close) would hold a plain runtime drop forever.
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("ferry serve: {e:#}");
            // A store that is not set up as it must be is a setting to fix, as a bad flag is.
            if e.downcast_ref::<crate::store::SetupError>().is_some() {
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings, exit_on_stdin_close: bool, open_files: u64) -> Result<()> {
    let dir = settings.data_dir.clone();
    let sync = settings.sync;
    let (expiry, concat) = (settings.expiry, settings.concat);
    let s3 = crate::store::prepare(&settings.store, &dir)?;
    let data = s3
        .clone()
        .map(|s| Arc::new(s) as Arc<dyn ferry_store::data::DataStore>);
    let (uploads, pg) = match settings.meta {
        crate::meta::MetaChoice::Embedded => {
            crate::meta::check_embedded(&dir)?;
            let opened = tokio::task::spawn_blocking(move || match data {
                Some(data) => Uploads::open_with_data(&dir, sync, data),
                None => Uploads::open_served(&dir, sync),
            })
            .await?;
            (opened, None)
        }
        crate::meta::MetaChoice::Postgres(config) => {
            let pg = crate::meta::connect(*config, &settings.instance.0).await?;
            let opened = crate::meta::open_shared(&pg, settings.lease, &dir, sync, data).await?;
            (opened, Some(pg))
        }
    };
    let uploads = match uploads {
        Ok(u) => u.with_expiry(expiry).with_concat_limits(concat),
        // Opened with a store its records do not belong to: a setting to fix (exit 2).
        Err(ferry_store::StoreError::WrongStore(why)) => {
            return Err(crate::store::SetupError(why).into());
        }
        Err(e) => Err(e)
            .with_context(|| format!("cannot open data dir {}", settings.data_dir.display()))?,
    };
    // Locked and bound: now the bucket may be asked and the prefix claimed.
    if let Some(s3) = &s3 {
        // The prefix belongs to whatever holds its records: this directory's database, or the
        // PostgreSQL database every instance shares.
        let owner = match &pg {
            None => crate::store::dir_owner(&settings.data_dir)?,
            Some(pg) => {
                crate::meta::setup(pg.setting("s3_owner", crate::store::new_owner_id).await)?
            }
        };
        crate::store::check(s3, &settings.store, &owner).await?;
    }
    // Data a crash left without its record: nobody can address it. Alone, nothing is being
    // written yet, whatever its age; instances sharing records write, so past the grace only.
    let grace = settings.server.reconcile_grace.as_millis() as u64;
    let cutoff = pg.as_ref().map(|_| now_ms().saturating_sub(grace));
    match uploads.reconcile(cutoff).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, "deleted data that no upload owns"),
        Err(e) => tracing::warn!(error = %e, "looking for orphaned data failed"),
    }
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let mut config = settings.server;
    config.local_addr = Some(addr);
    let base = config.base_path.clone();
    let shutdown = CancellationToken::new();
    let mut state = AppState::new(uploads, config, shutdown.clone());
    if let Some(dir) = &settings.share {
        state.share = Some(
            ferry_server::share::Share::open(dir)
                .with_context(|| format!("cannot share {}", dir.display()))?,
        );
    }
    let state = Arc::new(state);
    // Nobody reading standard output is no reason not to serve.
    outln!("ferry listening on http://{addr}{base}/files/");
    if let Some(dir) = &settings.share {
        outln!(
            "ferry sharing {} read-only at http://{addr}{base}/share/",
            dir.display()
        );
    }
    let meta = match &pg {
        Some(_) => format!("postgres (schema {})", ferry_store::pg_meta::SCHEMA_VERSION),
        None => "embedded".to_string(),
    };
    let meta_round_trips = pg.as_ref().map(|pg| pg.round_trips());
    // (named on every line when shared or chosen; here otherwise)
    let instance = (!settings.instance.1).then_some(settings.instance.0.as_str());
    tracing::info!(%addr, data_dir = %settings.data_dir.display(), sync = ?sync, open_files, max_connections = state.config.connections.max_connections, meta, meta_round_trips, instance, "serving tus 1.0");

    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal(exit_on_stdin_close).await;
        tracing::info!("shutting down: requests in flight commit what they received");
        signals.cancel();
    });
    tokio::spawn(ferry_server::run_sweeper(state.clone()));
    tokio::spawn(ferry_server::run_reconciler(state.clone()));
    // Every unfinished upload's recorded parts and pieces against the store, while serving:
    // what is missing is reported (the upload refuses to go on until `ferry fsck --repair`).
    {
        let state = state.clone();
        tokio::spawn(async move {
            match state.uploads.short_uploads().await {
                Ok(short) => {
                    for p in &short {
                        tracing::error!(problem = %p, "data missing from the store: run ferry fsck --repair");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "checking uploads against the store failed"),
            }
        });
    }
    {
        // SIGUSR1: sweep expired uploads now (operators and tests; no need to wait a week).
        let state = state.clone();
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                state.sweep_now.notify_one();
            }
        });
    }
    let server = tokio::spawn(ferry_server::serve(listener, state.clone()));
    shutdown.cancelled().await;
    match tokio::time::timeout(settings.shutdown_timeout, server).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("shutdown deadline passed; closing remaining connections"),
    }
    // Dropping the last reference to the state closes the metadata store (joins its writer).
    drop(state);
    if let Some(pg) = pg {
        if let Err(e) = pg.leave().await {
            tracing::warn!(error = %e, "freeing this instance's leases failed: they lapse");
        }
        tracing::info!(
            round_trips = pg.round_trips(),
            "PostgreSQL round trips made"
        );
    }
    Ok(())
}

async fn wait_for_signal(exit_on_stdin_close: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let stdin_closed = async {
        if exit_on_stdin_close {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
        () = stdin_closed => {},
    }
}

#[cfg(test)]
mod tests;
