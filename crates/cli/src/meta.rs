//! `ferry serve --meta`: where the facts about uploads live. The embedded redb in the data
//! directory by default; a PostgreSQL database shared by instances with
//! `--meta postgres://USER@HOST[:PORT]/DB` (TLS and other options in the URL, as libpq takes
//! them; the password from the URL or `PGPASSWORD`).

use anyhow::{Result, bail};
use clap::Args;
use ferry_store::pg_meta::PgConfig;

#[derive(Args, Debug, Default)]
pub struct MetaArgs {
    /// Where upload records live: the data directory's embedded database, or PostgreSQL
    /// (postgres://USER@HOST[:PORT]/DB[?sslmode=require…]; password in the URL or PGPASSWORD).
    /// [default: the data directory]
    #[arg(long, env = "FERRY_META", value_name = "URL")]
    meta: Option<String>,
    /// This instance's name, in its log lines and PostgreSQL's application_name.
    /// [default: the host name and a hash of the data directory]
    #[arg(long, env = "FERRY_INSTANCE_ID", value_name = "NAME")]
    instance_id: Option<String>,
}

/// How long leases shared through PostgreSQL last (`ferry serve` only).
#[derive(Args, Debug, Default)]
pub struct LeaseArgs {
    /// With --meta postgres://: how long an instance's hold on an upload lasts unless renewed
    /// (every third of it), by the database clock. A dead instance's uploads wait this long
    /// for another; longer tolerates longer database hiccups. [default: 10s]
    #[arg(long, env = "FERRY_LEASE_TTL", value_name = "DURATION")]
    lease_ttl: Option<String>,
    /// How long before its hold could lapse an instance that cannot renew stops writing:
    /// room for its last commit and for clocks running at different rates. [default: 2s]
    #[arg(long, env = "FERRY_LEASE_MARGIN", value_name = "DURATION")]
    lease_margin: Option<String>,
}

impl LeaseArgs {
    /// The timing, flags first, then the file's `lease_ttl` and `lease_margin`.
    pub fn resolve(
        self,
        file_ttl: Option<String>,
        file_margin: Option<String>,
    ) -> Result<ferry_store::pg_meta::LeaseTiming> {
        let default = ferry_store::pg_meta::LeaseTiming::default();
        let parse = |name: &str, v: Option<String>, d: std::time::Duration| match v {
            Some(v) => crate::units::parse_duration(name, &v).map_err(anyhow::Error::msg),
            None => Ok(d),
        };
        let timing = ferry_store::pg_meta::LeaseTiming {
            ttl: parse("--lease-ttl", self.lease_ttl.or(file_ttl), default.ttl)?,
            margin: parse(
                "--lease-margin",
                self.lease_margin.or(file_margin),
                default.margin,
            )?,
        };
        timing.checked().map_err(anyhow::Error::msg)
    }
}

/// Opens the uploads with records in PostgreSQL (`pg`, connected), leases shared through it:
/// the directory marked as the database's, the database bound to the data store (`data`, or
/// the local files in `dir`). The outer error is a setting or the database; the inner one
/// opening the directory.
pub async fn open_shared(
    pg: &std::sync::Arc<ferry_store::pg_meta::PgMetaStore>,
    timing: ferry_store::pg_meta::LeaseTiming,
    dir: &std::path::Path,
    sync: ferry_store::SyncPolicy,
    data: Option<std::sync::Arc<dyn ferry_store::data::DataStore>>,
) -> Result<ferry_store::Result<ferry_store::Uploads>> {
    let db = setup(pg.database_id().await)?;
    check_postgres(dir, &db, true)?;
    let identity = match &data {
        Some(d) => d.identity(),
        // Local files are one machine's: the database is bound to this directory (so one
        // instance serves it).
        None => format!("local:{}", crate::store::dir_owner(dir)?),
    };
    setup(pg.bind_store(&identity).await)?;
    let locker = setup(ferry_store::pg_meta::PgLocker::start(pg.clone(), timing).await)?;
    let meta = pg.clone() as std::sync::Arc<dyn ferry_store::meta::MetaStore>;
    let dir = dir.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || {
        ferry_store::Uploads::open_with_meta(&dir, sync, data, meta, std::sync::Arc::new(locker))
    })
    .await?)
}

/// Where the records go, resolved.
#[derive(Debug)]
pub enum MetaChoice {
    /// redb in the data directory.
    Embedded,
    /// A PostgreSQL database.
    Postgres(Box<PgConfig>),
}

/// The settings resolved: flags (and their variables) first, then the file's keys.
/// `data_dir` (the server's) makes the default instance name stable across restarts.
pub fn resolve(
    args: MetaArgs,
    file_meta: Option<String>,
    file_instance: Option<String>,
    data_dir: Option<&std::path::Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(MetaChoice, String, bool)> {
    let named = args.instance_id.or(file_instance);
    let explicit = named.is_some();
    let instance = match named {
        Some(n) => {
            let valid = !n.is_empty()
                && n.len() <= 63
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                bail!("--instance-id {n:?}: 1 to 63 of A-Z, a-z, 0-9, '-', '_', '.'");
            }
            n
        }
        None => default_instance(data_dir),
    };
    let choice = match args.meta.or(file_meta) {
        None => MetaChoice::Embedded,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            // Not echoed: the URL may hold a password.
            let config = ferry_store::pg_meta::parse_url(&url, env("PGPASSWORD"))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            MetaChoice::Postgres(Box::new(config))
        }
        Some(_) => bail!(
            "--meta: only postgres://USER@HOST[:PORT]/DB is known (the default is the data \
             directory's embedded database)"
        ),
    };
    let shared = matches!(choice, MetaChoice::Postgres(_));
    Ok((choice, instance, explicit || shared))
}

/// Connects to the database (migrating its schema): a wrong setting is a
/// [`crate::store::SetupError`] (exit 2), an unreachable database a plain error (exit 1).
pub async fn connect(
    config: PgConfig,
    instance: &str,
) -> Result<std::sync::Arc<ferry_store::pg_meta::PgMetaStore>> {
    let store = ferry_store::pg_meta::PgMetaStore::connect(
        config,
        ferry_store::pg_meta::PgSettings::new(instance),
    )
    .await;
    let store = setup(store)?;
    tracing::info!("records in PostgreSQL");
    Ok(std::sync::Arc::new(store))
}

/// A PostgreSQL answer at startup: a wrong setting exits 2, anything else 1.
pub fn setup<T>(r: ferry_store::Result<T>) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(ferry_store::StoreError::WrongStore(why)) => Err(crate::store::SetupError(why).into()),
        Err(ferry_store::StoreError::Unavailable(why)) => bail!("cannot reach {why}"),
        Err(e) => bail!("PostgreSQL: {e}"),
    }
}

/// The file in a data directory served with PostgreSQL records: `postgres DATABASE_ID`.
/// Records never move between stores, so a directory stays with the one it started with: its
/// local files (or its spool) read against another store's records would look orphaned, and
/// the startup sweep would delete them.
const MARKER: &str = "ferry-meta";

fn marker_of(dir: &std::path::Path) -> Result<Option<String>> {
    let path = dir.join(MARKER);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().strip_prefix("postgres ") {
            Some(id) => Ok(Some(id.trim().to_string())),
            None => bail!("{} is not a ferry marker", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
    }
}

/// For the embedded database: refuses a directory whose records are in PostgreSQL.
pub fn check_embedded(dir: &std::path::Path) -> Result<()> {
    if let Some(id) = marker_of(dir)? {
        return Err(crate::store::SetupError(format!(
            "{} keeps its upload records in PostgreSQL (database {id}): serve it with the same \
             --meta",
            dir.display()
        ))
        .into());
    }
    Ok(())
}

/// For PostgreSQL database `id`: refuses a directory whose records are in `ferry.redb` or in
/// another database; with `mark`, marks a new one as this database's.
pub fn check_postgres(dir: &std::path::Path, id: &str, mark: bool) -> Result<()> {
    if dir.join("ferry.redb").exists() {
        return Err(crate::store::SetupError(format!(
            "{} keeps its upload records in ferry.redb; it cannot be served with --meta \
             postgres:// (records do not move between stores)",
            dir.display()
        ))
        .into());
    }
    match marker_of(dir)? {
        Some(other) if other != id => Err(crate::store::SetupError(format!(
            "{} was served with another PostgreSQL database ({other}, not {id})",
            dir.display()
        ))
        .into()),
        Some(_) => Ok(()),
        None if !mark => Ok(()),
        None => {
            use anyhow::Context;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let tmp = dir.join(format!("{MARKER}.tmp"));
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                f.write_all(format!("postgres {id}\n").as_bytes())?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, dir.join(MARKER))?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(())
        }
    }
}

/// The host name and 6 hex digits: of a hash of the data directory's absolute path when there
/// is one (a directory serves one process at a time, so the name is unique among running
/// instances, and a restarted instance frees at once the leases its former self left), else
/// random.
fn default_instance(data_dir: Option<&std::path::Path>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
                .take(48)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ferry".into());
    let mut b = [0u8; 3];
    match data_dir.and_then(|d| std::path::absolute(d).ok()) {
        Some(dir) => {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            dir.hash(&mut h);
            b.copy_from_slice(&h.finish().to_be_bytes()[..3]);
        }
        None => {
            let _ = getrandom::fill(&mut b);
        }
    }
    format!("{host}-{:02x}{:02x}{:02x}", b[0], b[1], b[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_directory_stays_with_the_records_it_started_with() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        check_embedded(&dir).unwrap();
        check_postgres(&dir, "db1", true).unwrap();
        check_postgres(&dir, "db1", true).unwrap();
        let err = check_postgres(&dir, "db2", true).unwrap_err().to_string();
        assert!(err.contains("another PostgreSQL database"), "{err}");
        let err = check_embedded(&dir).unwrap_err().to_string();
        assert!(err.contains("in PostgreSQL (database db1)"), "{err}");
        let other = d.path().join("redb");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("ferry.redb"), b"").unwrap();
        let err = check_postgres(&other, "db1", true).unwrap_err().to_string();
        assert!(err.contains("ferry.redb"), "{err}");
        assert!(!other.join(MARKER).exists());
    }

    #[test]
    fn embedded_by_default_with_a_generated_instance() {
        let (choice, instance, shown) =
            resolve(MetaArgs::default(), None, None, None, no_env).unwrap();
        assert!(matches!(choice, MetaChoice::Embedded));
        let (host, suffix) = instance.rsplit_once('-').unwrap();
        assert!(!host.is_empty() && suffix.len() == 6, "{instance}");
        assert!(!shown, "a lone embedded instance keeps its log lines short");
        let (_, other, _) = resolve(MetaArgs::default(), None, None, None, no_env).unwrap();
        assert_ne!(instance, other, "without a directory the suffix is random");
        // A server's name follows its data directory: the same after a restart, another for
        // another directory.
        let named = |d: &str| {
            let dir = std::path::Path::new(d);
            resolve(MetaArgs::default(), None, None, Some(dir), no_env)
                .unwrap()
                .1
        };
        assert_eq!(named("/srv/ferry/a"), named("/srv/ferry/a"));
        assert_ne!(named("/srv/ferry/a"), named("/srv/ferry/b"));
    }

    #[test]
    fn postgres_urls_and_names_are_checked() {
        let args = MetaArgs {
            meta: Some("postgres://ferry@db.example:5433/ferry?sslmode=require".into()),
            instance_id: Some("web-1".into()),
        };
        let (choice, instance, shown) = resolve(args, None, None, None, no_env).unwrap();
        assert!(matches!(choice, MetaChoice::Postgres(_)));
        assert_eq!(instance, "web-1");
        assert!(shown);
        let (choice, _, _) = resolve(
            MetaArgs::default(),
            Some("postgresql://u@h/db".into()),
            None,
            None,
            |k| (k == "PGPASSWORD").then(|| "pw".to_string()),
        )
        .unwrap();
        let MetaChoice::Postgres(c) = choice else {
            panic!("file key")
        };
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        for (meta, id, why) in [
            (Some("redis://h"), None, "only postgres://"),
            (Some("postgres://h/db"), None, "no user"),
            (None, Some("a b"), "--instance-id"),
            (None, Some(""), "--instance-id"),
        ] {
            let args = MetaArgs {
                meta: meta.map(Into::into),
                instance_id: id.map(Into::into),
            };
            let err = resolve(args, None, None, None, no_env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{meta:?} {id:?}: {err}");
        }
    }
}
