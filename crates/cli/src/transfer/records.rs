//! `ferry status` and `ferry forget`: the resume state kept in the state dir.

use super::*;

/// Runs `ferry status`.
pub fn status(args: StatusArgs) -> ExitCode {
    let state = match state_dir(&args.common) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if args.finished {
        return finished_index(&state, args.common.json);
    }
    let list = match state.list() {
        Ok(l) => l,
        Err(e) => return fail(&ClientError::local("reading the state", e)),
    };
    if list.is_empty() && !args.common.json {
        errln!("no unfinished transfers in {}", state.root().display());
    }
    // What the servers hold of each unfinished upload (a download's progress is on disk).
    let held = if args.offline {
        Vec::new()
    } else {
        match uploads_held(&list, &args.headers) {
            Ok(h) => h,
            Err(e) => return fail(&e),
        }
    };
    let percent = |done: u64, total: u64| {
        if total == 0 {
            100.0
        } else {
            (done.min(total) as f64 * 1000.0 / total as f64).floor() / 10.0
        }
    };
    for (key, loaded) in list {
        match loaded {
            Loaded::Found(Transfer::Upload(u)) => {
                let size = u.identity.size;
                let url = u
                    .completed
                    .as_ref()
                    .map(|c| c.url.as_str())
                    .or(u.final_url.as_deref())
                    .or_else(|| u.parts.first().and_then(|p| p.url.as_deref()));
                let done = held
                    .iter()
                    .find(|(k, _)| k == &key)
                    .and_then(|(_, r)| r.as_ref().ok().copied());
                let unknown = held
                    .iter()
                    .find(|(k, _)| k == &key)
                    .and_then(|(_, r)| r.as_ref().err());
                if args.common.json {
                    let v = serde_json::json!({
                        "key": key, "op": "upload", "file": u.source, "url": url,
                        "bytes_done": done, "bytes_total": size,
                        "percent": done.map(|d| percent(d, size)),
                        "complete": u.completed.is_some(),
                        "error": unknown.map(|e| &e.message),
                        // Fields of the first release, kept for its readers.
                        "kind": "upload", "source": u.source, "endpoint": u.endpoint,
                        "bytes": size, "urls": u.urls().collect::<Vec<_>>(),
                        "completed": u.completed.as_ref().map(|c| &c.url),
                    });
                    outln!("{v}");
                    continue;
                }
                let progress = match (done, unknown) {
                    (Some(d), _) => format!("{:>5.1}%  {d}/{size} bytes", percent(d, size)),
                    (None, Some(_)) => format!("    ?%  ?/{size} bytes (server not reached)"),
                    (None, None) => format!("    ?%  ?/{size} bytes"),
                };
                let url = url.unwrap_or("(not created yet)");
                if u.completed.is_some() {
                    outln!(
                        "{key}  upload    {progress}  {}  done -> {url}  (kept until the rest \
                         of its run is done)",
                        u.source.display(),
                    );
                } else {
                    outln!(
                        "{key}  upload    {progress}  {} -> {url}",
                        u.source.display()
                    );
                }
            }
            Loaded::Found(Transfer::Download(d)) => {
                let have: u64 = d.done.iter().map(|(s, e)| e - s).sum();
                if args.common.json {
                    let v = serde_json::json!({
                        "key": key, "op": "download", "file": d.dest, "url": d.url,
                        "bytes_done": have, "bytes_total": d.size,
                        "percent": percent(have, d.size), "complete": false,
                        // Fields of the first release, kept for its readers.
                        "kind": "download", "dest": d.dest, "bytes": d.size, "done": have,
                    });
                    outln!("{v}");
                } else {
                    outln!(
                        "{key}  download  {:>5.1}%  {have}/{} bytes  {} <- {}",
                        percent(have, d.size),
                        d.size,
                        d.dest.display(),
                        d.url
                    );
                }
            }
            Loaded::Unusable(why) => outln!("{key}  (unusable: {why})"),
            Loaded::Missing => {}
        }
    }
    ExitCode::SUCCESS
}

/// `ferry status --finished`: the index of finished uploads.
fn finished_index(state: &StateDir, json: bool) -> ExitCode {
    let list = match state.finished().and_then(|i| i.list()) {
        Ok(l) => l,
        Err(e) => {
            return fail(&ClientError::local(
                "reading the index of finished uploads",
                e,
            ));
        }
    };
    if list.is_empty() && !json {
        errln!("no finished uploads in {}", state.root().display());
    }
    for (key, loaded) in list {
        let Loaded::Found(Transfer::Upload(u)) = loaded else {
            continue;
        };
        let Some(c) = &u.completed else { continue };
        let digest = c.digest().map(|(a, d)| (a.name(), hex(d)));
        if json {
            let mut v = serde_json::json!({
                "key": key, "op": "upload", "file": u.source, "url": c.url,
                "bytes_total": u.identity.size, "endpoint": u.endpoint,
            });
            if let Some((name, hex)) = &digest {
                v[*name] = hex.clone().into();
            }
            outln!("{v}");
        } else {
            outln!(
                "{key}  finished  {} bytes  {} -> {}",
                u.identity.size,
                u.source.display(),
                c.url
            );
        }
    }
    ExitCode::SUCCESS
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asks the servers, a few at a time and briefly, how much of each unfinished upload they
/// hold.
#[allow(clippy::type_complexity)]
fn uploads_held(
    list: &[(String, Loaded)],
    headers: &HeaderArgs,
) -> Result<Vec<(String, Result<u64, ClientError>)>, ClientError> {
    let uploads: Vec<(String, &ferry_client::state::UploadRecord)> = list
        .iter()
        .filter_map(|(k, l)| match l {
            Loaded::Found(Transfer::Upload(u)) => Some((k.clone(), u)),
            _ => None,
        })
        .collect();
    if uploads.is_empty() {
        return Ok(Vec::new());
    }
    let rt = runtime()?;
    let http = http_client(&HttpOptions {
        connect_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(10),
        headers: headers.map()?,
    })?;
    Ok(rt.block_on(
        futures_util::stream::iter(uploads)
            .map(|(k, u)| {
                let http = http.clone();
                async move {
                    // However many parts and however slow the server: five seconds each.
                    let asked = tokio::time::timeout(
                        Duration::from_secs(5),
                        ferry_client::upload::uploaded_bytes(&http, u),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClientError::new(
                            ErrorKind::Unreachable,
                            "no answer within 5 s",
                        ))
                    });
                    (k, asked)
                }
            })
            .buffer_unordered(8)
            .collect(),
    ))
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
    let index = state.finished().ok();
    let finished = index
        .as_ref()
        .and_then(|i| i.list().ok())
        .unwrap_or_default();
    let mut code = ExitCode::SUCCESS;
    for which in &args.which {
        let canonical = std::fs::canonicalize(which).ok();
        let matches = |k: &String, l: &Loaded| {
            let by_key = k == which;
            let by_path = match l {
                Loaded::Found(Transfer::Upload(u)) => Some(&u.source) == canonical.as_ref(),
                Loaded::Found(Transfer::Download(d)) => {
                    std::path::absolute(which).ok().as_ref() == Some(&d.dest)
                }
                _ => false,
            };
            by_key || by_path
        };
        // The index of finished uploads: only the local entry goes (the upload is the
        // user's, and stays on the server).
        let mut dropped = false;
        for (k, l) in finished.iter().filter(|(k, l)| matches(k, l)) {
            let Some(i) = &index else { break };
            match i.remove(k) {
                Ok(()) => {
                    let url = match l {
                        Loaded::Found(Transfer::Upload(u)) => {
                            u.completed.as_ref().map(|c| c.url.as_str())
                        }
                        _ => None,
                    };
                    errln!(
                        "forgot the finished upload {k}{}",
                        url.map(|u| format!(" (it stays on the server: {u})"))
                            .unwrap_or_default()
                    );
                    dropped = true;
                }
                Err(e) => code = fail(&ClientError::local("the index of finished uploads", e)),
            }
        }
        let key = list
            .iter()
            .find_map(|(k, l)| matches(k, l).then(|| k.clone()));
        let Some(key) = key else {
            if !dropped {
                errln!("ferry: no saved transfer matches {which:?} (see `ferry status`)");
                code = ExitCode::from(2);
            }
            continue;
        };
        let is_download = list
            .iter()
            .any(|(k, l)| k == &key && matches!(l, Loaded::Found(Transfer::Download(_))));
        if is_download {
            match forget_download(&state, &key) {
                Ok(()) => errln!("forgot {key}"),
                Err(e) => code = fail(&e),
            }
            continue;
        }
        let result = rt.block_on(async {
            let http = http_client(&HttpOptions {
                headers: args.headers.map()?,
                ..HttpOptions::default()
            })?;
            forget(&http, &state, &key, !args.local).await
        });
        match result {
            Ok(report) => {
                for u in &report.deleted {
                    errln!("deleted {u}");
                }
                for u in &report.already_gone {
                    errln!("already gone from the server: {u}");
                }
                for (u, e) in &report.failed {
                    errln!("ferry: could not delete {u}: {}", e.message);
                }
                if report.forgotten {
                    errln!("forgot {key}");
                } else {
                    errln!(
                        "ferry: kept the record of {which}: run `ferry forget` again once the \
                         server answers, or `ferry forget --local` to drop only the record"
                    );
                }
                if let Some((_, e)) = report.failed.first() {
                    code = ExitCode::from(e.kind.exit_code());
                }
            }
            Err(e) => code = fail(&e),
        }
    }
    code
}
