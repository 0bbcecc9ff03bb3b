//! `ferry status` and `ferry forget`: the resume state kept in the state dir.

use super::*;

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
        errln!("no unfinished transfers in {}", state.root().display());
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
                    outln!("{v}");
                } else if let Some(c) = &u.completed {
                    outln!(
                        "{key}  upload  {}  {} bytes  done -> {}  (kept until the rest of its run \
                         is done)",
                        u.source.display(),
                        u.identity.size,
                        c.url
                    );
                } else {
                    outln!(
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
                    outln!("{v}");
                } else {
                    outln!(
                        "{key}  download  {}  {have}/{} bytes  <- {}",
                        d.dest.display(),
                        d.size,
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
            errln!("ferry: no saved transfer matches {which:?} (see `ferry status`)");
            code = ExitCode::from(2);
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
