//! `ferry fsck`: checks a data directory's records against its data, and repairs on request.

use crate::store::StoreFile;
use clap::Args;
use ferry_store::{SyncPolicy, Uploads};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// The data directory to check (not while a server runs on it: fsck takes its lock).
    #[arg(
        long,
        env = "FERRY_DATA_DIR",
        value_name = "DIR",
        default_value = "ferry-data"
    )]
    data_dir: PathBuf,
    /// Fix what is found: delete orphaned data, drop records whose bytes are gone, and make
    /// parts and finals agree.
    #[arg(long)]
    repair: bool,
    /// Where the directory's uploads keep their data, as given to `ferry serve`.
    #[command(flatten)]
    store: crate::store::StoreArgs,
}

/// Exit status: 0 when nothing is wrong (or everything was repaired), 1 when problems remain,
/// 2 when the directory cannot be opened.
pub fn run(args: FsckArgs) -> ExitCode {
    if !args.data_dir.join("ferry.redb").exists() {
        errln!(
            "ferry fsck: {} holds no ferry data (no ferry.redb)",
            args.data_dir.display()
        );
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("ferry fsck: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let store = crate::store::resolve(args.store, StoreFile::default(), |k| std::env::var(k).ok())
        .and_then(|choice| crate::store::prepare(&choice, &args.data_dir));
    let (opened, s3) = match store {
        Ok(Some(s3)) => {
            let s3 = Arc::new(s3);
            let opened = Uploads::open_with_data(&args.data_dir, SyncPolicy::Always, s3.clone());
            (opened, Some(s3))
        }
        Ok(None) => (
            Uploads::open_local(&args.data_dir, SyncPolicy::Always),
            None,
        ),
        Err(e) => {
            errln!("ferry fsck: {e:#}");
            return ExitCode::from(2);
        }
    };
    let uploads = match opened {
        Ok(u) => u,
        Err(e) => {
            errln!("ferry fsck: cannot open {}: {e}", args.data_dir.display());
            return ExitCode::from(2);
        }
    };
    // Only the prefix this directory serves: another's uploads would all look like orphans.
    if let Some(s3) = &s3
        && let Err(e) = rt.block_on(crate::store::check_owned(s3, &args.data_dir))
    {
        errln!("ferry fsck: {e:#}");
        return ExitCode::from(2);
    }
    let report = match rt.block_on(uploads.fsck(args.repair)) {
        Ok(r) => r,
        Err(e) => {
            errln!("ferry fsck: {e}");
            return ExitCode::from(2);
        }
    };
    for p in &report.problems {
        outln!("{p}");
    }
    let verdict = if report.problems.is_empty() {
        "no problems".to_string()
    } else if args.repair {
        format!(
            "{} problems, {} left after repair",
            report.problems.len(),
            report.remaining.len()
        )
    } else {
        format!(
            "{} problems (run with --repair to fix)",
            report.problems.len()
        )
    };
    outln!(
        "{} records, {} data objects: {verdict}",
        report.records,
        report.objects
    );
    let clean = report.problems.is_empty() || (args.repair && report.remaining.is_empty());
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
