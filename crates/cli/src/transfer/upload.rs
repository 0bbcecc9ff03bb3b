//! `ferry upload`: files and directories to a tus, IETF or chunk-session endpoint.

use super::*;
use ferry_client::upload::UploadOutcome;
use ferry_proto::manifest::{MANIFEST_VERSION, Manifest, ManifestFile};

/// Runs `ferry upload`.
pub fn upload(args: UploadArgs) -> ExitCode {
    let json = args.common.json;
    match upload_inner(args) {
        Ok(code) => code,
        Err(e) => fail_run("upload", json, false, &e),
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
        again: args.again,
    };
    let reporter = Reporter::new("upload", args.common.report()?);
    init_logs(&reporter, &args.common);
    let state = state_dir(&args.common)?;
    let rt = runtime()?;
    let files_at_once = at_least_one("--files-at-once", args.files_at_once)?;
    if files.iter().any(|f| f == "-") {
        if files.len() > 1 {
            return Err(usage(
                "standard input (-) is uploaded on its own: ferry upload - URL (a file named - \
                 is ./-)",
            ));
        }
        let name = args.name.clone().unwrap_or_else(|| "stdin".into());
        return upload_stdin(rt, reporter, state, opts, &net, &endpoint, &name);
    } else if args.name.is_some() {
        return Err(usage(
            "--name names standard input (-); files keep their own names",
        ));
    }
    // What cannot be read is reported and skipped; everything else is sent (as rsync does).
    let Expanded {
        files,
        dirs,
        skipped,
    } = expand(files);
    let total: u64 = files.iter().map(|f| f.size).sum();
    reporter.plan(files.len(), Some(total));
    for (what, e) in &skipped {
        reporter.warn(&format!("ferry: {}; skipped", e.message));
        reporter.event("error", report::error_fields(Some(what), None, e));
    }
    if files.is_empty()
        && let Some((_, e)) = skipped.first()
    {
        let code = e.kind.exit_code();
        reporter.finish(code, serde_json::json!({ "files_skipped": skipped.len() }));
        return Ok(ExitCode::from(code));
    }
    // A directory's files are named even when it holds one.
    let several = files.len() + skipped.len() > 1 || !dirs.is_empty();
    let code = rt.block_on(async move {
        let cancel = CancellationToken::new();
        on_ctrl_c(cancel.clone());
        let http = http_client(&net.http)?;
        let finished_state = state.clone();
        let uploader = Uploader::new(
            http,
            state,
            opts,
            Arc::new(ferry_client::progress::NoProgress),
            cancel.clone(),
        );
        let large_at_once = Arc::new(tokio::sync::Semaphore::new(files_at_once.min(8)));
        let jobs = files.iter().map(|f| {
            let large_at_once = large_at_once.clone();
            let sink = reporter.sink(None);
            let up = uploader.with_progress(sink.clone());
            let endpoint = endpoint.clone();
            async move {
                let _permit = if f.size > ferry_client::upload::SMALL_FILE_MAX {
                    large_at_once.acquire().await.ok()
                } else {
                    None
                };
                let result = up.upload(&f.path, &endpoint, f.relative.as_deref()).await;
                (f, sink, result)
            }
        });
        // Results come back in argument order while several files are in flight.
        let mut results = futures_util::stream::iter(jobs).buffered(files_at_once);
        let mut worst: Option<ClientError> = skipped.first().map(|(_, e)| e.clone());
        let (mut failed, mut finished) = (0usize, Vec::new());
        let mut listed: Vec<Vec<ManifestFile>> = dirs.iter().map(|_| Vec::new()).collect();
        let mut dir_failed = vec![false; dirs.len()];
        let mut already = Vec::new();
        while let Some((f, sink, result)) = results.next().await {
            let shown = f
                .relative
                .clone()
                .unwrap_or_else(|| f.path.display().to_string());
            match result {
                Ok(done) => {
                    finished.push(done.key.clone());
                    if done.already_uploaded {
                        already.push((shown.clone(), done.url.clone()));
                    }
                    if let Some(i) = f.dir {
                        listed[i].push(manifest_entry(f, &done));
                    }
                    if let Verification::NotVerified(why) = &done.verification {
                        reporter.note(&format!("ferry: {shown}: {why}"));
                    }
                    reporter.detail(&detail(&shown, &done));
                    reporter.file_done(&sink, done_fields(&shown, &done));
                    // One file: its URL alone (URL=$(ferry upload f URL)); several: each
                    // file beside its URL.
                    if several {
                        reporter.result(&format!("{shown}\t{}", done.url));
                    } else {
                        reporter.result(&done.url);
                    }
                }
                Err(e) => {
                    reporter.file_failed(Some(&sink), Some(&shown), None, &e);
                    failed += 1;
                    if let Some(i) = f.dir {
                        dir_failed[i] = true;
                    }
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
        match already.as_slice() {
            [] => {}
            [(file, url)] => reporter.note(&format!(
                "ferry: {file}: already uploaded, unchanged since: {url} (--again uploads it \
                 anew)"
            )),
            many => reporter.note(&format!(
                "ferry: {} files were already uploaded, unchanged since (--again uploads them \
                 anew)",
                many.len()
            )),
        }
        // Each directory whose files all went up gets its manifest.
        let root = finished_state.root().to_path_buf();
        for (i, (dir, entries)) in dirs.iter().zip(listed).enumerate() {
            let count = entries.len();
            if dir.incomplete
                || dir_failed[i]
                || count < files.iter().filter(|f| f.dir == Some(i)).count()
            {
                reporter.note(&format!(
                    "ferry: {}/: no manifest until every file below it is uploaded",
                    dir.name
                ));
                continue;
            }
            let manifest = match write_manifest(&root, &endpoint, dir, entries) {
                Ok(p) => p,
                Err(e) => {
                    reporter.file_failed(None, Some(&format!("{}/", dir.name)), None, &e);
                    worst.get_or_insert(e);
                    continue;
                }
            };
            let name = ferry_proto::manifest::file_name(&dir.name);
            let up = uploader.with_progress(Arc::new(ferry_client::progress::NoProgress));
            match up.upload(&manifest, &endpoint, Some(&name)).await {
                Ok(done) => {
                    finished.push(done.key.clone());
                    reporter.event(
                        "manifest",
                        serde_json::json!({
                            "dir": dir.name, "url": done.url, "files": count,
                        }),
                    );
                    reporter.result(&format!("{}/\t{}", dir.name, done.url));
                    reporter.note(&format!(
                        "ferry: {}/: manifest at {} (ferry download -r URL -d DIR restores \
                         the tree)",
                        dir.name, done.url
                    ));
                }
                Err(e) => {
                    reporter.file_failed(
                        None,
                        Some(&format!("{}/ (manifest)", dir.name)),
                        None,
                        &e,
                    );
                    worst.get_or_insert(e);
                }
            }
        }
        if (failed > 0 || !skipped.is_empty()) && several {
            reporter.warn(&format!(
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
            reporter.warn(&format!(
                "ferry: could not clear the finished transfers from the state: {e}"
            ));
        }
        let code = worst.map_or(0, |e| e.kind.exit_code());
        reporter.finish(code, serde_json::json!({ "files_skipped": skipped.len() }));
        Ok::<_, ClientError>(ExitCode::from(code))
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// The `-v` line of a finished upload.
fn detail(shown: &str, done: &UploadOutcome) -> String {
    let verified = match &done.digest {
        Some(d) if done.verification == Verification::Verified => {
            format!(", verified ({})", d.algorithm.name())
        }
        _ if done.verification == Verification::Verified => ", verified".into(),
        _ => ", not verified".into(),
    };
    format!(
        "ferry: {shown}: {} in {:.1}s over {}{verified}{}",
        ferry_client::progress::human_bytes(done.bytes),
        done.seconds,
        done.protocol.name(),
        resumed_at(done.resumed_from),
    )
}

/// The `file_done` event of an upload.
fn done_fields(shown: &str, done: &UploadOutcome) -> serde_json::Value {
    let mut v = serde_json::json!({
        "file": shown,
        "url": done.url,
        "bytes": done.bytes,
        "seconds": done.seconds,
        "verified": done.verification == Verification::Verified,
        "resumed_from": done.resumed_from,
        "protocol": done.protocol.name(),
        "already_uploaded": done.already_uploaded,
    });
    // "crc64nvme" against ferry servers, "sha256" against others (or the --digest asked for).
    if let Some(d) = &done.digest {
        v[d.algorithm.name()] = d.hex().into();
    }
    v
}

/// `ferry upload - URL`: standard input, its length deferred until its end.
fn upload_stdin(
    rt: tokio::runtime::Runtime,
    reporter: Reporter,
    state: StateDir,
    opts: UploadOptions,
    net: &Network,
    endpoint: &reqwest::Url,
    name: &str,
) -> Result<ExitCode, ClientError> {
    reporter.plan(1, None);
    let code = rt.block_on(async {
        let cancel = CancellationToken::new();
        on_ctrl_c(cancel.clone());
        let http = http_client(&net.http)?;
        let sink = reporter.sink(None);
        let up = Uploader::new(http, state, opts, sink.clone(), cancel);
        match up.upload_stream(tokio::io::stdin(), endpoint, name).await {
            Ok(done) => {
                if let Verification::NotVerified(why) = &done.verification {
                    reporter.note(&format!("ferry: -: {why}"));
                }
                reporter.detail(&detail("-", &done));
                reporter.file_done(&sink, done_fields("-", &done));
                reporter.result(&done.url);
                reporter.finish(0, serde_json::json!({ "files_skipped": 0 }));
                Ok::<_, ClientError>(ExitCode::SUCCESS)
            }
            Err(e) => {
                reporter.file_failed(Some(&sink), Some("-"), None, &e);
                let code = e.kind.exit_code();
                reporter.finish(code, serde_json::json!({ "files_skipped": 0 }));
                Ok(ExitCode::from(code))
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// A file to upload and, inside an uploaded directory, its `/`-separated relative path.
struct FileArg {
    path: PathBuf,
    relative: Option<String>,
    size: u64,
    /// The directory argument it was found in (an index into [`Expanded::dirs`]).
    dir: Option<usize>,
}

/// A directory argument: its files get a manifest once all of them are uploaded.
struct DirArg {
    /// Its own name, the first segment of its files' relative paths.
    name: String,
    /// Its canonical path (what the manifest's record is keyed by).
    path: PathBuf,
    /// Something below it could not be read: no manifest, which would leave it out.
    incomplete: bool,
}

/// The arguments, expanded.
struct Expanded {
    files: Vec<FileArg>,
    dirs: Vec<DirArg>,
    skipped: Vec<(String, ClientError)>,
}

/// Expands directory arguments into the regular files below them (sorted, symlinks not
/// followed, so a link cannot loop or escape), keeping each one's path relative to the
/// directory's parent (e.g. `photos/2024/a.jpg`). What cannot be read (a missing argument, a
/// directory without permission) is returned beside the files, each with its reason.
fn expand(args: &[String]) -> Expanded {
    let (mut out, mut skipped, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
    for a in args {
        let path = PathBuf::from(a);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                skipped.push((a.clone(), usage(format!("{a}: {}", io_reason(&e)))));
                continue;
            }
        };
        if !meta.is_dir() {
            out.push(FileArg {
                path,
                relative: None,
                size: meta.len(),
                dir: None,
            });
            continue;
        }
        let top = match std::fs::canonicalize(&path) {
            Ok(t) => t,
            Err(e) => {
                skipped.push((a.clone(), ClientError::local(a, e)));
                continue;
            }
        };
        let name = top
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shown = |rel: &str| format!("{}{}", a.trim_end_matches('/'), &rel[name.len()..]);
        let skipped_before = skipped.len();
        let index = dirs.len();
        dirs.push(DirArg {
            name: name.clone(),
            path: top.clone(),
            incomplete: false,
        });
        let mut stack = vec![(top, name.clone())];
        let mut found = Vec::new();
        while let Some((dir, rel)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    skipped.push((shown(&rel), ClientError::local(&shown(&rel), e)));
                    continue;
                }
            };
            for entry in entries {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        skipped.push((shown(&rel), ClientError::local(&shown(&rel), e)));
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
                            dir: Some(index),
                        });
                    }
                    Ok(_) => {}
                    Err(e) => skipped.push((shown(&child), ClientError::local(&shown(&child), e))),
                }
            }
        }
        found.sort_by(|a, b| a.relative.cmp(&b.relative));
        out.extend(found);
        dirs[index].incomplete = skipped.len() > skipped_before;
    }
    Expanded {
        files: out,
        dirs,
        skipped,
    }
}

/// What a manifest lists of one uploaded file.
fn manifest_entry(f: &FileArg, done: &UploadOutcome) -> ManifestFile {
    let mut entry = ManifestFile {
        path: f.relative.clone().unwrap_or_default(),
        size: done.bytes,
        url: done.url.clone(),
        crc64nvme: None,
        sha256: None,
        blake3: None,
    };
    if let Some(d) = &done.digest {
        let hex = Some(d.hex());
        match d.algorithm {
            ChecksumAlgorithm::Crc64Nvme => entry.crc64nvme = hex,
            ChecksumAlgorithm::Sha256 => entry.sha256 = hex,
            ChecksumAlgorithm::Blake3 => entry.blake3 = hex,
            _ => {}
        }
    }
    entry
}

/// Writes the manifest of `dir` into the state dir, where its upload is resumed and indexed
/// like any file's. Rewritten only when it changed: the same tree uploaded again finds the
/// same manifest, already uploaded.
fn write_manifest(
    root: &std::path::Path,
    endpoint: &reqwest::Url,
    dir: &DirArg,
    mut files: Vec<ManifestFile>,
) -> Result<PathBuf, ClientError> {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let m = Manifest {
        ferry_manifest: MANIFEST_VERSION,
        name: dir.name.clone(),
        files,
    };
    let key = ferry_client::state::transfer_key("manifest", endpoint.as_str(), &dir.path);
    let folder = root.join("manifests").join(key);
    let path = folder.join(ferry_proto::manifest::file_name(&dir.name));
    let text = serde_json::to_vec_pretty(&m)
        .map_err(|e| ClientError::local("the manifest", std::io::Error::other(e)))?;
    if std::fs::read(&path).ok().as_ref() != Some(&text) {
        let local = |e| ClientError::local(&path.display().to_string(), e);
        std::fs::create_dir_all(&folder).map_err(local)?;
        let tmp = folder.join(".manifest.tmp");
        std::fs::write(&tmp, &text).map_err(local)?;
        std::fs::rename(&tmp, &path).map_err(local)?;
    }
    Ok(path)
}
