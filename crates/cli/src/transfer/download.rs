//! `ferry download`: URLs to files, directories or a stream.

use super::*;

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
        max_parallel: at_least_one("--max-parallel", args.max_parallel)?,
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
        let http = ferry_client::download::http_client(&net.http)?;
        // With -r, each URL stands for the files below it.
        let jobs: Vec<(reqwest::Url, Destination)> = if args.recursive {
            let base = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
            let mut jobs = Vec::new();
            for url in &urls {
                for f in ferry_client::download::tree::walk(&http, url).await? {
                    let path = base.join(&f.path);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| ClientError::local(&parent.display().to_string(), e))?;
                    }
                    jobs.push((f.url, Destination::File(path)));
                }
            }
            jobs
        } else {
            urls.iter().map(|u| (u.clone(), dest_for(u))).collect()
        };
        let dl = Downloader::new(http, state, opts, bars.sink(), cancel.clone());
        let mut worst: Option<ClientError> = None;
        let (mut done_count, mut failed) = (0usize, 0usize);
        let mut unverified: Option<(usize, String)> = None;
        for (url, dest) in &jobs {
            match dl.with_progress(bars.sink()).download(url, dest).await {
                Ok(done) => {
                    done_count += 1;
                    if let Verification::NotVerified(why) = &done.verification {
                        // A tree's files share the reason: said once, at the end.
                        if args.recursive {
                            unverified.get_or_insert_with(|| (0, why.clone())).0 += 1;
                        } else {
                            bars.println(&format!(
                                "ferry: {}: not verified: {why}",
                                done.path.display()
                            ));
                        }
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
            bars.println(&format!(
                "ferry: {n} files checked by size and validator only (not verified: {why})"
            ));
        }
        if failed > 0 && jobs.len() > 1 {
            bars.println(&format!(
                "ferry: {done_count} downloaded, {failed} failed; run the same command again \
                 to retry what did not finish"
            ));
        }
        Ok::<_, ClientError>(
            worst.map_or(ExitCode::SUCCESS, |e| ExitCode::from(e.kind.exit_code())),
        )
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}
