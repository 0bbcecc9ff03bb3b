//! `ferry upload`: files and directories to a tus, IETF or chunk-session endpoint.

use super::*;

/// Runs `ferry upload`.
pub fn upload(args: UploadArgs) -> ExitCode {
    match upload_inner(args) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn upload_inner(args: UploadArgs) -> Result<ExitCode, ClientError> {
    let Some((url, files)) = args
        .args
        .split_last()
        .filter(|(_, files)| !files.is_empty())
    else {
        return Err(usage(
            "expected at least one FILE and then the URL: ferry upload FILE... URL",
        ));
    };
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
    if chunk.initial == 0 {
        return Err(usage("--chunk-size must be at least 1 byte"));
    }
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
        max_parallel: at_least_one("--max-parallel", args.max_parallel)?,
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
    let files_at_once = at_least_one("--files-at-once", args.files_at_once)?;
    // What cannot be read is reported and skipped; everything else is sent (as rsync does).
    let (files, skipped) = expand(files);
    for e in &skipped {
        bars.println(&format!("ferry: {}; skipped", e.message));
    }
    if files.is_empty()
        && let Some(e) = skipped.first()
    {
        return Ok(ExitCode::from(e.kind.exit_code()));
    }
    let code = rt.block_on(async move {
        let cancel = CancellationToken::new();
        on_ctrl_c(cancel.clone());
        let http = http_client(&net.http)?;
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
        let mut worst: Option<ClientError> = skipped.first().cloned();
        let (mut failed, mut finished) = (0usize, Vec::new());
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
                    failed += 1;
                    // Interrupted, or a server that cannot be reached: the other files would
                    // only say the same.
                    let stop = matches!(e.kind, ErrorKind::Interrupted | ErrorKind::Unreachable);
                    if worst.is_none() || e.kind == ErrorKind::Interrupted {
                        worst = Some(e);
                    }
                    if stop {
                        break;
                    }
                }
            }
        }
        drop(results);
        if let Some(t) = &overall {
            t.finish();
        }
        if (failed > 0 || !skipped.is_empty()) && files.len() + skipped.len() > 1 {
            bars.println(&format!(
                "ferry: {} uploaded, {failed} failed, {} skipped; run the same command again \
                 to retry what did not finish",
                finished.len(),
                skipped.len()
            ));
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
/// directory's parent (e.g. `photos/2024/a.jpg`). What cannot be read (a missing argument, a
/// directory without permission) is returned beside the files, each with its reason.
fn expand(args: &[String]) -> (Vec<FileArg>, Vec<ClientError>) {
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for a in args {
        let path = PathBuf::from(a);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                skipped.push(usage(format!("{a}: {}", io_reason(&e))));
                continue;
            }
        };
        if !meta.is_dir() {
            out.push(FileArg {
                path,
                relative: None,
                size: meta.len(),
            });
            continue;
        }
        let top = match std::fs::canonicalize(&path) {
            Ok(t) => t,
            Err(e) => {
                skipped.push(ClientError::local(a, e));
                continue;
            }
        };
        let name = top
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shown = |rel: &str| format!("{}{}", a.trim_end_matches('/'), &rel[name.len()..]);
        let mut stack = vec![(top, name.clone())];
        let mut found = Vec::new();
        while let Some((dir, rel)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    skipped.push(ClientError::local(&shown(&rel), e));
                    continue;
                }
            };
            for entry in entries {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        skipped.push(ClientError::local(&shown(&rel), e));
                        continue;
                    }
                };
                let child = format!("{rel}/{}", entry.file_name().to_string_lossy());
                match entry.file_type() {
                    Ok(ft) if ft.is_dir() => stack.push((entry.path(), child)),
                    Ok(ft) if ft.is_file() => {
                        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                        found.push(FileArg {
                            path: entry.path(),
                            relative: Some(child),
                            size,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => skipped.push(ClientError::local(&shown(&child), e)),
                }
            }
        }
        found.sort_by(|a, b| a.relative.cmp(&b.relative));
        out.extend(found);
    }
    (out, skipped)
}
