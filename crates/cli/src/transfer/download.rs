//! `ferry download`: URLs to files, directories or a stream.

use super::*;

/// Runs `ferry download`.
pub fn download(args: DownloadArgs) -> ExitCode {
    let json = args.common.json;
    let to_stderr = writes_to_stdout(args.output.as_deref());
    match download_inner(args) {
        Ok(code) => code,
        Err(e) => fail_run("download", json, to_stderr, &e),
    }
}

/// Whether `-o` is standard output (`-`, `/dev/stdout`, the file stdout is open on): then the
/// file goes there, and the events to stderr.
fn writes_to_stdout(output: Option<&std::path::Path>) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(o) = output else {
        return false;
    };
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| std::fs::File::from(fd).metadata().ok());
    o.as_os_str() == "-"
        || std::fs::metadata(o)
            .ok()
            .zip(stdout)
            .is_some_and(|(a, b)| a.dev() == b.dev() && a.ino() == b.ino())
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
        max_parallel: at_least_one("--max-parallel", args.max_parallel)?,
        retry: net.retry,
        stall_timeout: net.stall_timeout,
        limiter: net.limiter.clone(),
        sha256,
        force: args.force,
    };
    let mut settings = args.common.report()?;
    settings.json_to_stderr = writes_to_stdout(args.output.as_deref());
    let reporter = Reporter::new("download", settings);
    init_logs(&reporter, &args.common);
    let state = state_dir(&args.common)?;
    let rt = runtime()?;
    let dest_for = |_: &reqwest::Url| match (&args.output, &args.dir) {
        (Some(o), _) => Destination::File(o.clone()),
        (None, Some(d)) => Destination::Dir(d.clone()),
        (None, None) => Destination::Dir(PathBuf::from(".")),
    };
    let code = rt.block_on(async {
        let cancel = CancellationToken::new();
        on_ctrl_c(cancel.clone());
        // Downloads have their own client: no whole-request deadline (see its doc).
        let http = ferry_client::download::http_client(&net.http)?;
        // With -r, each URL stands for the files below it.
        let jobs: Vec<(reqwest::Url, Destination)> = if args.recursive {
            let base = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
            let mut jobs = Vec::new();
            let mut sizes = Some(0u64);
            for url in &urls {
                // A URL ending in / is a shared directory; another, a manifest.
                let files = if url.path().ends_with('/') {
                    ferry_client::download::tree::walk(&http, url).await?
                } else {
                    ferry_client::download::tree::manifest(&http, url).await?
                };
                for f in files {
                    let path = base.join(&f.path);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| ClientError::local(&parent.display().to_string(), e))?;
                    }
                    sizes = sizes.zip(f.size).and_then(|(a, b)| a.checked_add(b));
                    jobs.push((f.url, Destination::File(path)));
                }
            }
            reporter.plan(jobs.len(), sizes);
            jobs
        } else {
            reporter.plan(urls.len(), None);
            urls.iter().map(|u| (u.clone(), dest_for(u))).collect()
        };
        let several = jobs.len() > 1;
        let dl = Downloader::new(
            http,
            state,
            opts,
            Arc::new(ferry_client::progress::NoProgress),
            cancel.clone(),
        );
        let mut worst: Option<ClientError> = None;
        let (mut done_count, mut failed) = (0usize, 0usize);
        let mut unverified: Option<(usize, String)> = None;
        for (url, dest) in &jobs {
            let sink = reporter.sink(Some(url.as_str()));
            match dl.with_progress(sink.clone()).download(url, dest).await {
                Ok(done) => {
                    done_count += 1;
                    let verified = done.verification == Verification::Verified;
                    let file = done.path.display().to_string();
                    if let Verification::NotVerified(why) = &done.verification {
                        // A tree's files share the reason: said once, at the end.
                        if args.recursive {
                            unverified.get_or_insert_with(|| (0, why.clone())).0 += 1;
                        } else {
                            reporter.note(&format!("ferry: {file}: not verified: {why}"));
                        }
                    }
                    reporter.detail(&format!(
                        "ferry: {file}: {} in {:.1}s{}{}",
                        ferry_client::progress::human_bytes(done.bytes),
                        done.seconds,
                        if verified {
                            ", verified"
                        } else {
                            ", not verified"
                        },
                        resumed_at(done.resumed_from),
                    ));
                    reporter.file_done(
                        &sink,
                        serde_json::json!({
                            "url": url.as_str(),
                            "file": file,
                            "bytes": done.bytes,
                            "seconds": done.seconds,
                            "verified": verified,
                            "resumed_from": done.resumed_from,
                        }),
                    );
                    // Standard output carries the file itself: nothing else goes there.
                    if done.path.as_os_str() != "-" {
                        if several {
                            reporter.result(&format!("{file}\t{url}"));
                        } else {
                            reporter.result(&file);
                        }
                    }
                }
                Err(e) => {
                    reporter.file_failed(Some(&sink), None, Some(url.as_str()), &e);
                    failed += 1;
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
        if let Some((n, why)) = &unverified {
            reporter.note(&format!(
                "ferry: {n} files checked by size and validator only (not verified: {why})"
            ));
        }
        if failed > 0 && several {
            reporter.warn(&format!(
                "ferry: {done_count} downloaded, {failed} failed; run the same command again \
                 to retry what did not finish"
            ));
        }
        let code = worst.map_or(0, |e| e.kind.exit_code());
        reporter.finish(code, serde_json::json!({}));
        Ok::<_, ClientError>(ExitCode::from(code))
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}
