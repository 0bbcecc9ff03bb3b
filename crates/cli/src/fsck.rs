//! `ferry fsck`: checks a data directory's records against its data, and repairs on request.

use crate::store::StoreFile;
use clap::Args;
use ferry_store::{SyncPolicy, Uploads};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    /// Where the directory's records are, as given to `ferry serve`.
    #[command(flatten)]
    meta: crate::meta::MetaArgs,
}

/// Exit status: 0 when nothing is wrong (or everything was repaired), 1 when problems remain,
/// 2 when the directory cannot be opened.
pub fn run(args: FsckArgs) -> ExitCode {
    let meta = match crate::meta::resolve(args.meta, None, None, None, |k| std::env::var(k).ok()) {
        Ok((meta, _, _)) => meta,
        Err(e) => {
            errln!("ferry fsck: {e:#}");
            return ExitCode::from(2);
        }
    };
    let embedded = matches!(meta, crate::meta::MetaChoice::Embedded);
    if embedded && let Err(e) = crate::meta::check_embedded(&args.data_dir) {
        errln!("ferry fsck: {e:#}");
        return ExitCode::from(2);
    }
    if embedded && !args.data_dir.join("ferry.redb").exists() {
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
    let s3 = match store {
        Ok(s3) => s3.map(Arc::new),
        Err(e) => {
            errln!("ferry fsck: {e:#}");
            return ExitCode::from(2);
        }
    };
    let opened = match meta {
        crate::meta::MetaChoice::Embedded => match &s3 {
            Some(s3) => Uploads::open_with_data(&args.data_dir, SyncPolicy::Always, s3.clone()),
            None => Uploads::open_local(&args.data_dir, SyncPolicy::Always),
        }
        .map(|u| (u, None, None)),
        crate::meta::MetaChoice::Postgres(config) => {
            match rt.block_on(open_pg(*config, &args.data_dir, s3.clone(), args.repair)) {
                Ok(opened) => Ok(opened),
                Err(e) => {
                    errln!("ferry fsck: {e:#}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    // A repair holds the database until it ends.
    let (uploads, pg_owner, _hold) = match opened {
        Ok(u) => u,
        Err(e) => {
            errln!("ferry fsck: cannot open {}: {e}", args.data_dir.display());
            return ExitCode::from(2);
        }
    };
    // Only the prefix these records hold: another's uploads would all look like orphans.
    if let Some(s3) = &s3 {
        let owned = match &pg_owner {
            None => rt.block_on(crate::store::check_owned(s3, &args.data_dir)),
            Some(owner) => rt.block_on(crate::store::check_owner(s3, owner, "this database")),
        };
        if let Err(e) = owned {
            errln!("ferry fsck: {e:#}");
            return ExitCode::from(2);
        }
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

/// Opens records in PostgreSQL for checking, without binding or claiming anything: the
/// database must already be bound to this store (local files: this directory). Returns the
/// uploads, for S3 the prefix owner the database recorded, and for a repair the database held
/// exclusively.
async fn open_pg(
    config: ferry_store::pg_meta::PgConfig,
    data_dir: &std::path::Path,
    s3: Option<Arc<ferry_store::s3::S3DataStore>>,
    repair: bool,
) -> anyhow::Result<(
    Uploads,
    Option<String>,
    Option<ferry_store::pg_meta::ExclusiveHold>,
)> {
    // Read only: no migration, no marker, no owner id made.
    let pg = crate::meta::setup(
        ferry_store::pg_meta::PgMetaStore::connect_existing(
            config,
            ferry_store::pg_meta::PgSettings::new("fsck"),
        )
        .await,
    )?;
    let db = crate::meta::setup(pg.stored_setting("database_id").await)?
        .ok_or_else(|| anyhow::anyhow!("the database has never been served"))?;
    crate::meta::check_postgres(data_dir, &db, false)?;
    // Not while an instance serves the database: a repair would race its writes. The
    // database is held exclusively for the repair (instances refuse to start meanwhile), then
    // no instance may have said it serves for a minute (they say so every few seconds).
    let hold = match repair {
        true => Some(
            crate::meta::setup(pg.hold_exclusive().await)?.ok_or_else(|| {
                crate::store::SetupError(
                    "the database is held by an instance starting, an older ferry build \
                     serving, or another repair: stop every instance before a repair"
                        .into(),
                )
            })?,
        ),
        false => None,
    };
    if repair {
        let live = crate::meta::setup(pg.live_instances(Duration::from_secs(60)).await)?;
        if let Some((name, ago)) = live.first() {
            return Err(crate::store::SetupError(format!(
                "instance {name} is serving this database (seen {ago:.0} s ago, {} in all): \
                 stop every instance before a repair",
                live.len()
            ))
            .into());
        }
    }
    let identity = match &s3 {
        Some(s) => ferry_store::data::DataStore::identity(s.as_ref()),
        None => format!("local:{}", crate::store::existing_dir_owner(data_dir)?),
    };
    let pg = Arc::new(pg);
    match crate::meta::setup(pg.stored_setting("store").await)? {
        Some(bound) if bound == identity => {}
        Some(bound) => anyhow::bail!("the database's uploads are in {bound}, not {identity}"),
        None => anyhow::bail!("the database has never served {identity}"),
    }
    let owner = match &s3 {
        Some(_) => Some(
            crate::meta::setup(pg.stored_setting("s3_owner").await)?
                .ok_or_else(|| anyhow::anyhow!("the database has never claimed the prefix"))?,
        ),
        None => None,
    };
    let data = s3.map(|s| s as Arc<dyn ferry_store::data::DataStore>);
    let meta = pg as Arc<dyn ferry_store::meta::MetaStore>;
    // Its own leases: a repair runs with the instances stopped (checked by the caller).
    let locker = Arc::new(ferry_store::lock::LocalLocker::new(
        ferry_store::uploads::TAKEOVER_PATIENCE,
    ));
    let uploads = Uploads::open_with_meta(data_dir, SyncPolicy::Always, data, meta, locker)?;
    Ok((uploads, owner, hold))
}
