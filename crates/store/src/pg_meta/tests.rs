//! The PostgreSQL store against a real server: `FERRY_TEST_POSTGRES` names it (a URL such as
//! `postgres://postgres@127.0.0.1:PORT/postgres`; scripts/test.sh starts one with
//! scripts/postgres.sh). Each test works in a schema of its own.

use super::errors::{Class, classify, conflict_backoff};
use super::*;
use crate::meta::MetaStore;
use std::sync::Arc;
use tokio_postgres::error::SqlState;

/// The server the tests use. Never skipped: without it the test fails and says why.
fn server_url() -> String {
    std::env::var("FERRY_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "FERRY_TEST_POSTGRES is not set: start PostgreSQL with scripts/postgres.sh start DIR \
             and export the URL it prints (scripts/test.sh does both)"
        )
    })
}

/// A fresh schema on the test server; dropped by [`Db::drop_schema`].
pub(super) struct Db {
    url: String,
    schema: String,
}

impl Db {
    pub(super) async fn new() -> Self {
        let url = server_url();
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).unwrap();
        let schema = format!("t_{}", hex_of(&b));
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect to FERRY_TEST_POSTGRES");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        Self { url, schema }
    }

    fn config(&self) -> tokio_postgres::Config {
        let mut c = parse_url(&self.url, None).unwrap();
        c.options(format!("-c search_path={}", self.schema));
        c
    }

    pub(super) async fn store(&self, instance: &str) -> PgMetaStore {
        PgMetaStore::connect(self.config(), PgSettings::new(instance))
            .await
            .expect("connect")
    }

    /// A plain client in the schema, for what the store does not do (tests only).
    pub(super) async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = self.config().connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    pub(super) async fn drop_schema(self) {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await
            .unwrap();
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) fn id(n: u8) -> UploadId {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    b[0] = n;
    UploadId::from_bytes(b)
}

pub(super) fn record(id: UploadId) -> UploadInfo {
    UploadInfo {
        deleted: false,
        expires_ms: None,
        kind: crate::model::UploadKind::Regular,
        finish_pending: false,
        length: Some(1000),
        offset: 0,
        ..crate::conformance::sample(id)
    }
}

#[tokio::test]
async fn conforms() {
    let db = Db::new().await;
    crate::conformance::meta_store(Arc::new(db.store("conformance").await)).await;
    db.drop_schema().await;
}

/// Two instances (two pools, so two sets of connections) updating one record at once, many
/// times over: every change lands, none is lost.
#[tokio::test]
async fn two_instances_updating_one_record_lose_nothing() {
    let db = Db::new().await;
    let a: Arc<dyn MetaStore> = Arc::new(db.store("a").await);
    let b: Arc<dyn MetaStore> = Arc::new(db.store("b").await);
    for round in 0..5 {
        let r = record(id(round));
        a.insert(&r).await.unwrap();
        let mut tasks = Vec::new();
        for n in 0..60 {
            let s = if n % 2 == 0 { a.clone() } else { b.clone() };
            let rid = r.id;
            tasks.push(tokio::spawn(async move {
                s.update(
                    rid,
                    Box::new(|i| {
                        i.offset += 1;
                        Ok(())
                    }),
                )
                .await
                .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            b.get(r.id).await.unwrap().unwrap().offset,
            60,
            "round {round}"
        );
        a.remove(r.id).await.unwrap();
    }
    db.drop_schema().await;
}

/// Two instances sweeping at once page through the same expired records; each record goes to
/// one of them (no double work), and together they see all.
#[tokio::test]
async fn instances_share_expiry_without_double_work() {
    let db = Db::new().await;
    let a = Arc::new(db.store("a").await);
    let b = Arc::new(db.store("b").await);
    for round in 0..5u8 {
        let mut due = Vec::new();
        for n in 0..60u8 {
            let r = UploadInfo {
                expires_ms: Some(1000),
                ..record(id(n))
            };
            a.insert(&r).await.unwrap();
            due.push(r.id);
        }
        let sweep = |s: Arc<PgMetaStore>| async move {
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let page = s.expired(2000, after, 7).await.unwrap();
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                got.extend(page.into_iter().map(|i| i.id));
            }
            got
        };
        let (ga, gb) = tokio::join!(sweep(a.clone()), sweep(b.clone()));
        let mut all: Vec<_> = ga.iter().chain(&gb).copied().collect();
        all.sort();
        due.sort();
        assert_eq!(
            all, due,
            "round {round}: every record handed out exactly once"
        );
        // The same instance asking again gets its own claims back, the other none of them.
        let again = sweep(a.clone()).await;
        let mut ga_sorted = ga.clone();
        ga_sorted.sort();
        assert_eq!(again, ga_sorted, "round {round}: a's claims are a's");
        for id in due {
            a.remove(id).await.unwrap();
        }
    }
    db.drop_schema().await;
}

/// Keys a newer build wrote survive an update by this one; keys this build writes are
/// replaced, including one it drops by leaving it out.
#[tokio::test]
async fn updates_keep_what_a_newer_build_added() {
    let db = Db::new().await;
    let store = db.store("a").await;
    let r = UploadInfo {
        finish_pending: true,
        ..record(id(1))
    };
    store.insert(&r).await.unwrap();
    let client = db.client().await;
    client
        .execute(
            "UPDATE ferry_uploads SET record = record || '{\"later_field\": [1, 2]}' WHERE id = $1",
            &[&r.id.to_string()],
        )
        .await
        .unwrap();
    store
        .update(
            r.id,
            Box::new(|i| {
                i.finish_pending = false;
                i.offset = 7;
                Ok(())
            }),
        )
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT record->'later_field', record ? 'finish_pending', (record->>'offset')::int \
             FROM ferry_uploads WHERE id = $1",
            &[&r.id.to_string()],
        )
        .await
        .unwrap();
    let later: Option<String> = client
        .query_one(
            "SELECT (record->'later_field')::text FROM ferry_uploads WHERE id = $1",
            &[&r.id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(later.as_deref(), Some("[1, 2]"), "unknown key kept");
    assert!(
        !row.get::<_, bool>(1),
        "a field written as absent is removed"
    );
    assert_eq!(row.get::<_, i32>(2), 7);
    let got = store.get(r.id).await.unwrap().unwrap();
    assert!(!got.finish_pending && got.offset == 7);
    db.drop_schema().await;
}

#[tokio::test]
async fn schemas_migrate_once_and_newer_ones_are_used_or_refused() {
    let db = Db::new().await;
    // Instances starting together: each migration applied once, all start.
    let mut starts = Vec::new();
    for n in 0..4 {
        let config = db.config();
        starts.push(tokio::spawn(async move {
            PgMetaStore::connect(config, PgSettings::new(format!("i{n}"))).await
        }));
    }
    for s in starts {
        s.await.unwrap().expect("concurrent start");
    }
    let client = db.client().await;
    let row = client
        .query_one("SELECT count(*), max(version) FROM ferry_schema", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, i32>(1), SCHEMA_VERSION as i32);

    // The next release's expand step: still readable by this build.
    let ours = SCHEMA_VERSION as i32;
    client
        .execute(
            "UPDATE ferry_schema SET version = $1, readable_from = $2",
            &[&(ours + 1), &ours],
        )
        .await
        .unwrap();
    let store = db.store("old").await;
    let r = record(id(1));
    store.insert(&r).await.unwrap();
    assert!(store.get(r.id).await.unwrap().is_some());
    assert_eq!(
        client
            .query_one("SELECT version FROM ferry_schema", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        ours + 1,
        "an older build never lowers the version"
    );

    // A contract step past this build: refused with what to do.
    client
        .execute(
            "UPDATE ferry_schema SET version = $1, readable_from = $1",
            &[&(ours + 2)],
        )
        .await
        .unwrap();
    let err = PgMetaStore::connect(db.config(), PgSettings::new("old"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::WrongStore(m) if m.contains("upgrade ferry")),
        "{err}"
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn a_database_stays_bound_to_its_data_store() {
    let db = Db::new().await;
    let store = db.store("a").await;
    store.bind_store("s3://one/").await.unwrap();
    store
        .bind_store("s3://two/")
        .await
        .expect("no records yet: bound again");
    let r = record(id(1));
    store.insert(&r).await.unwrap();
    let err = store.bind_store("s3://one/").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::WrongStore(m) if m.contains("s3://two/")),
        "{err}"
    );
    store.bind_store("s3://two/").await.unwrap();

    // A setting is made once, by whoever asks first.
    let other = db.store("b").await;
    let (x, y) = tokio::join!(
        store.setting("owner", || "from-a".into()),
        other.setting("owner", || "from-b".into())
    );
    assert_eq!(x.unwrap(), y.unwrap());
    db.drop_schema().await;
}

/// A database that does not answer, and a pool whose every connection is stuck: the call
/// ends within the timeout as Unavailable (a 503), never hangs; afterwards the store works.
#[tokio::test]
async fn stuck_or_unreachable_database_is_unavailable_in_time() {
    // Nothing listens on port 1.
    let mut c = parse_url("postgres://postgres@127.0.0.1:1/postgres", None).unwrap();
    c.connect_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let err = PgMetaStore::connect(c, PgSettings::new("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let db = Db::new().await;
    let store = Arc::new(
        PgMetaStore::connect(
            db.config(),
            PgSettings {
                pool_size: 1,
                timeout: Duration::from_millis(800),
                ..PgSettings::new("small")
            },
        )
        .await
        .unwrap(),
    );
    let r = record(id(1));
    store.insert(&r).await.unwrap();
    // Another session holds the record's row lock: the update waits on it.
    let blocker = db.client().await;
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM ferry_uploads WHERE id = '{}' FOR UPDATE",
            r.id
        ))
        .await
        .unwrap();
    let s = store.clone();
    let stuck = tokio::spawn(async move {
        let t = std::time::Instant::now();
        let out = s
            .update(
                r.id,
                Box::new(|i| {
                    i.offset = 1;
                    Ok(())
                }),
            )
            .await;
        (out, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stuck.is_finished(), "the update waits on the row lock");
    let (out, took) = stuck.await.unwrap();
    assert!(matches!(out, Err(StoreError::Unavailable(_))), "{out:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Nor does the abandoned call's work stay on the server: its lock wait ends there too
    // (lock_timeout), while the blocker still holds the lock.
    // (Asked outside the blocker's transaction: a transaction sees one snapshot of the
    // activity view.)
    let watcher = db.client().await;
    let waiting = async || -> i64 {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'ferry small' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };
    let t = std::time::Instant::now();
    while waiting().await > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the lock wait went on on the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every pooled connection taken (here by the test itself): a call waits for one, then
    // gives up.
    let held = store.pool.get().await.unwrap();
    let t = std::time::Instant::now();
    let err = store.get(r.id).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    drop(held);
    blocker.batch_execute("ROLLBACK").await.unwrap();
    // The timed-out connection (mid-transaction) was closed, not pooled: the next call works
    // and sees nothing of the abandoned update.
    assert_eq!(store.get(r.id).await.unwrap().unwrap().offset, 0);
    store
        .update(
            r.id,
            Box::new(|i| {
                i.offset = 2;
                Ok(())
            }),
        )
        .await
        .unwrap();
    assert_eq!(store.get(r.id).await.unwrap().unwrap().offset, 2);
    db.drop_schema().await;
}

#[test]
fn errors_are_classified_by_sqlstate() {
    assert_eq!(classify(None), Class::Unavailable);
    assert_eq!(
        classify(Some(&SqlState::T_R_SERIALIZATION_FAILURE)),
        Class::Conflict
    );
    assert_eq!(
        classify(Some(&SqlState::T_R_DEADLOCK_DETECTED)),
        Class::Conflict
    );
    assert_eq!(classify(Some(&SqlState::UNIQUE_VIOLATION)), Class::Conflict);
    assert_eq!(
        classify(Some(&SqlState::ADMIN_SHUTDOWN)),
        Class::Unavailable
    );
    assert_eq!(
        classify(Some(&SqlState::CANNOT_CONNECT_NOW)),
        Class::Unavailable
    );
    assert_eq!(
        classify(Some(&SqlState::CONNECTION_FAILURE)),
        Class::Unavailable
    );
    assert_eq!(
        classify(Some(&SqlState::TOO_MANY_CONNECTIONS)),
        Class::Unavailable
    );
    assert_eq!(
        classify(Some(&SqlState::READ_ONLY_SQL_TRANSACTION)),
        Class::Unavailable
    );
    assert_eq!(classify(Some(&SqlState::DISK_FULL)), Class::Full);
    assert_eq!(classify(Some(&SqlState::INVALID_PASSWORD)), Class::Setup);
    assert_eq!(
        classify(Some(&SqlState::INVALID_CATALOG_NAME)),
        Class::Setup
    );
    assert_eq!(classify(Some(&SqlState::UNDEFINED_TABLE)), Class::Other);
}

#[test]
fn conflict_backoff_grows_and_is_capped() {
    assert_eq!(conflict_backoff(1, 1.0), Duration::from_millis(5));
    assert_eq!(conflict_backoff(2, 1.0), Duration::from_millis(10));
    assert_eq!(conflict_backoff(7, 1.0), Duration::from_millis(320));
    assert_eq!(conflict_backoff(30, 1.0), Duration::from_millis(320));
    assert!(conflict_backoff(3, 0.5) < conflict_backoff(3, 1.49));
}

#[test]
fn urls_need_a_host_and_a_user_and_take_pgpassword() {
    assert!(parse_url("postgres://u@h/db", None).is_ok());
    assert!(parse_url("postgres://h/db", None).is_err(), "no user");
    assert!(parse_url("mysql://u@h/db", None).is_err());
    // libpq's verify modes are not known to tokio-postgres: refused, not silently weakened.
    assert!(parse_url("postgres://u@h/db?sslmode=verify-full", None).is_err());
    let c = parse_url("postgres://u@h/db", Some("pw".into())).unwrap();
    assert_eq!(c.get_password(), Some(&b"pw"[..]));
    let c = parse_url("postgres://u:inurl@h/db", Some("pw".into())).unwrap();
    assert_eq!(c.get_password(), Some(&b"inurl"[..]), "the URL's wins");
}
