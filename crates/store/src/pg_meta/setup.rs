//! Opening the store: the URL, TLS, the pool, the schema's migrations, the data-store
//! binding and the shared settings.

use super::errors::Failure;
use super::{PgMetaStore, PgSettings, SCHEMA_VERSION, schema};
use crate::error::{Result, StoreError};
use crate::record::known_keys;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Longest wait for the schema at startup (another instance's migration included).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

/// Parses a libpq-style URL (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB?sslmode=…`). The
/// password may come from `PGPASSWORD` instead, as with libpq, so that it stays out of `ps`.
pub fn parse_url(url: &str, pgpassword: Option<String>) -> Result<tokio_postgres::Config> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| StoreError::WrongStore(format!("--meta: not a PostgreSQL URL: {e}")))?;
    if config.get_hosts().is_empty() {
        return Err(StoreError::WrongStore(
            "--meta: the PostgreSQL URL names no host".into(),
        ));
    }
    if config.get_user().is_none() {
        return Err(StoreError::WrongStore(
            "--meta: the PostgreSQL URL names no user (postgres://USER@HOST/DB)".into(),
        ));
    }
    if config.get_password().is_none()
        && let Some(p) = pgpassword
    {
        config.password(p);
    }
    Ok(config)
}

/// TLS for the connections with `sslmode=require`: rustls, the server's certificate checked
/// against the system's roots (`SSL_CERT_FILE` names a private CA's). Stricter than libpq's
/// `require`, which checks nothing.
pub(super) fn tls(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = if config.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    } else {
        use rustls_platform_verifier::ConfigVerifierExt;
        rustls::ClientConfig::with_platform_verifier()
            .map_err(|e| StoreError::WrongStore(format!("--meta: TLS set-up: {e}")))?
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(client))
}

impl PgMetaStore {
    /// Connects, applies the migrations this build knows and the database lacks (or refuses a
    /// schema too new for it), and checks that commits are durable. A wrong setting (URL,
    /// password, database, a schema this build cannot use) is [`StoreError::WrongStore`]; a
    /// database that cannot be reached is [`StoreError::Unavailable`].
    pub async fn connect(config: tokio_postgres::Config, settings: PgSettings) -> Result<Self> {
        let me = Self::open(config, settings)?;
        me.migrate().await?;
        me.check_durability().await?;
        Ok(me)
    }

    /// Connects to a database this build has already set up, changing nothing: for tools such
    /// as `ferry fsck`. A database without the schema, with an older one, or one this build
    /// cannot use is refused ([`StoreError::WrongStore`]).
    pub async fn connect_existing(
        config: tokio_postgres::Config,
        settings: PgSettings,
    ) -> Result<Self> {
        let store = Self::open(config, settings)?;
        let s = &store;
        let found = store
            .run(
                "schema",
                attempt!(|conn| async {
                    s.trip();
                    let pg = |err| Failure::Pg {
                        err,
                        retry_safe: true,
                    };
                    let client = conn.client();
                    let present: bool = client
                        .query_one("SELECT to_regclass('ferry_schema') IS NOT NULL", &[])
                        .await
                        .map_err(pg)?
                        .get(0);
                    if !present {
                        return Ok(None);
                    }
                    s.trip();
                    Ok(client
                        .query_opt("SELECT version, readable_from FROM ferry_schema", &[])
                        .await
                        .map_err(pg)?
                        .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i32>(1) as u32)))
                }),
            )
            .await?;
        match schema::plan(found, SCHEMA_VERSION) {
            schema::Plan::Current | schema::Plan::NewerCompatible { .. } => Ok(store),
            schema::Plan::Apply { .. } => Err(StoreError::WrongStore(
                "the database holds no ferry schema, or an older one: serve it with this build first"
                    .into(),
            )),
            schema::Plan::Refuse {
                version,
                readable_from,
            } => Err(StoreError::WrongStore(schema::refusal(
                version,
                readable_from,
                SCHEMA_VERSION,
            ))),
        }
    }

    /// The pool, nothing asked of the database yet.
    fn open(mut config: tokio_postgres::Config, settings: PgSettings) -> Result<Self> {
        // libpq's `prefer` encrypts without checking the server; ferry either checks
        // (`require`) or sends in the clear, and says which in the docs.
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Prefer {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        // What a call leaves on the server is bounded too: a statement or a lock wait
        // outliving the call's timeout is cancelled there, and a transaction whose client went
        // silent (a call dropped between its round trips) ends, releasing its row locks.
        let ms = settings.timeout.as_millis();
        let guard = format!(
            "-c statement_timeout={ms} -c lock_timeout={ms} \
             -c idle_in_transaction_session_timeout={}",
            2 * ms
        );
        // First, so that the URL's own `options` can set them otherwise.
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{guard} {o}"),
            _ => guard,
        };
        config.options(options);
        if config.get_application_name().is_none() {
            config.application_name(format!("ferry {}", settings.instance));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(settings.timeout.min(Duration::from_secs(5)));
        }
        // A peer that vanished without a FIN (a dead host, a cut link) is noticed within about
        // a minute (30 s idle, then 3 probes 10 s apart) even on an idle pooled connection;
        // calls in flight have their own timeout.
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        let tls = tls(&config)?;
        let manager = Manager::from_config(
            config.clone(),
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()
            .map_err(|e| StoreError::WrongStore(format!("PostgreSQL connection pool: {e}")))?;
        Ok(Self {
            pool,
            instance: settings.instance,
            timeout: settings.timeout,
            known: known_keys().into_iter().map(String::from).collect(),
            round_trips: AtomicU64::new(0),
            config,
        })
    }

    async fn migrate(&self) -> Result<()> {
        // Waiting for another instance's migration, or a long one, is not a request's wait.
        self.run_for(
            MIGRATION_TIMEOUT,
            "migrate",
            attempt!(|conn| async {
                let me = self;
                let pg = |err| Failure::Pg {
                    err,
                    retry_safe: true,
                };
                conn.in_tx = true;
                me.trip();
                let client = conn.client();
                client
                    .batch_execute(&format!(
                        "BEGIN; SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0; \
                         SELECT pg_advisory_xact_lock({});",
                        schema::MIGRATION_LOCK,
                    ))
                    .await
                    .map_err(pg)?;
                // Created only when missing: once set up, the database user needs no right to
                // create tables.
                let present: bool = client
                    .query_one("SELECT to_regclass('ferry_schema') IS NOT NULL", &[])
                    .await
                    .map_err(pg)?
                    .get(0);
                if !present {
                    client
                        .batch_execute(schema::CREATE_VERSION_TABLE)
                        .await
                        .map_err(pg)?;
                }
                let found = client
                    .query_opt("SELECT version, readable_from FROM ferry_schema", &[])
                    .await
                    .map_err(pg)?
                    .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i32>(1) as u32));
                let ours = SCHEMA_VERSION;
                match schema::plan(found, ours) {
                    schema::Plan::Apply { from, to } => {
                        for m in &schema::MIGRATIONS[from as usize - 1..to as usize] {
                            tracing::debug!(version = m.version, "applying PostgreSQL migration");
                            client.batch_execute(m.sql).await.map_err(pg)?;
                        }
                        let readable_from =
                            schema::MIGRATIONS[to as usize - 1].readable_from as i32;
                        client
                            .execute(
                                "INSERT INTO ferry_schema (version, readable_from) VALUES ($1, $2) \
                             ON CONFLICT (one) DO UPDATE SET version = $1, readable_from = $2",
                                &[&(to as i32), &readable_from],
                            )
                            .await
                            .map_err(pg)?;
                        tracing::info!(from = from - 1, to, "PostgreSQL schema migrated");
                    }
                    schema::Plan::Current => {}
                    schema::Plan::NewerCompatible { version } => tracing::info!(
                        schema = version,
                        ours,
                        "PostgreSQL schema is newer than this build's and compatible with it"
                    ),
                    schema::Plan::Refuse {
                        version,
                        readable_from,
                    } => {
                        me.rollback(conn).await;
                        return Err(Failure::Store(StoreError::WrongStore(schema::refusal(
                            version,
                            readable_from,
                            ours,
                        ))));
                    }
                }
                me.commit(conn).await
            }),
        )
        .await
    }

    /// Warns when PostgreSQL acknowledges commits before they are on disk.
    async fn check_durability(&self) -> Result<()> {
        let (fsync, sync_commit) = self
            .run(
                "settings",
                attempt!(|conn| async {
                    let me = self;
                    me.trip();
                    let row = conn
                    .client()
                    .query_one(
                        "SELECT current_setting('fsync'), current_setting('synchronous_commit')",
                        &[],
                    )
                    .await
                    .map_err(|err| Failure::Pg {
                        err,
                        retry_safe: true,
                    })?;
                    Ok((row.get::<_, String>(0), row.get::<_, String>(1)))
                }),
            )
            .await?;
        if fsync != "on" || sync_commit == "off" {
            tracing::warn!(
                fsync,
                synchronous_commit = sync_commit,
                "PostgreSQL acknowledges commits before they are on disk: offsets ferry \
                 acknowledged can be lost if it crashes"
            );
        }
        Ok(())
    }

    /// Binds this database to the data store `identity`, and refuses another store while it
    /// has records (with none, nothing can be lost: it is bound again).
    pub async fn bind_store(&self, identity: &str) -> Result<()> {
        self.run(
            "bind store",
            attempt!(|conn| async {
                let me = self;
                let pg = |err| Failure::Pg {
                    err,
                    retry_safe: true,
                };
                conn.in_tx = true;
                me.trip();
                let client = conn.client();
                client.batch_execute("BEGIN").await.map_err(pg)?;
                let bound: Option<String> = client
                    .query_opt(
                        "SELECT value FROM ferry_settings WHERE key = 'store' FOR UPDATE",
                        &[],
                    )
                    .await
                    .map_err(pg)?
                    .map(|r| r.get(0));
                if let Some(bound) = bound.filter(|b| b != identity) {
                    let any: bool = client
                        .query_one("SELECT EXISTS (SELECT 1 FROM ferry_uploads)", &[])
                        .await
                        .map_err(pg)?
                        .get(0);
                    if any {
                        me.rollback(conn).await;
                        return Err(Failure::Store(StoreError::WrongStore(format!(
                            "this database's uploads are in {bound}; it cannot be used with \
                         {identity} (another database, or its own store)"
                        ))));
                    }
                }
                client
                    .execute(
                        "INSERT INTO ferry_settings (key, value) VALUES ('store', $1) \
                     ON CONFLICT (key) DO UPDATE SET value = $1",
                        &[&identity],
                    )
                    .await
                    .map_err(pg)?;
                me.commit(conn).await
            }),
        )
        .await
    }

    /// The value of setting `key`, made by `make` and stored the first time it is asked for
    /// (by whichever instance asks first: all then read the same).
    pub async fn setting(&self, key: &str, make: impl Fn() -> String) -> Result<String> {
        let fresh = make();
        let (fresh, key) = (&fresh, &key);
        self.run(
            "setting",
            attempt!(|conn| async {
                let me = self;
                me.trip();
                let client = conn.client();
                let pg = |err| Failure::Pg {
                    err,
                    retry_safe: true,
                };
                // Whoever inserts first wins; everyone then reads the stored value.
                client
                    .execute(
                        "INSERT INTO ferry_settings (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO NOTHING",
                        &[&key, &fresh],
                    )
                    .await
                    .map_err(pg)?;
                me.trip();
                let row = client
                    .query_one("SELECT value FROM ferry_settings WHERE key = $1", &[&key])
                    .await
                    .map_err(pg)?;
                Ok(row.get::<_, String>(0))
            }),
        )
        .await
    }

    /// The value of setting `key`, if any instance stored one (read only).
    pub async fn stored_setting(&self, key: &str) -> Result<Option<String>> {
        self.run(
            "setting",
            attempt!(|conn| async {
                self.trip();
                let row = conn
                    .client()
                    .query_opt("SELECT value FROM ferry_settings WHERE key = $1", &[&key])
                    .await
                    .map_err(|err| Failure::Pg {
                        err,
                        retry_safe: true,
                    })?;
                Ok(row.map(|r| r.get::<_, String>(0)))
            }),
        )
        .await
    }

    /// This database's id (made by the first instance that asks).
    pub async fn database_id(&self) -> Result<String> {
        self.setting("database_id", random_id).await
    }
}

/// 32 random hex digits.
fn random_id() -> String {
    let mut b = [0u8; 16];
    // getrandom fails only without an entropy source, where nothing else works either.
    getrandom::fill(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}
