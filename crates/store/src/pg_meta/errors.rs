//! What an error from PostgreSQL means for the call that met it, and the pause before a
//! call that lost a race runs again.

use crate::error::StoreError;
use deadpool_postgres::PoolError;
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// A connection refused before it was opened (wrong password, no such database): a setting to
/// fix, not a passing state.
fn is_setup_error(code: &SqlState) -> bool {
    [
        SqlState::INVALID_PASSWORD,
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        SqlState::INVALID_CATALOG_NAME,
        SqlState::INSUFFICIENT_PRIVILEGE,
    ]
    .contains(code)
}

/// What an error from PostgreSQL means for the call that met it.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum Class {
    /// The transaction lost a race (deadlock, serialization failure, a record created meanwhile):
    /// run it again.
    Conflict,
    /// The database cannot be reached or is not accepting work now: 503, try later.
    Unavailable,
    /// The database's disk is full.
    Full,
    /// A setting is wrong (authentication, database name, permissions).
    Setup,
    /// Anything else: a bug or a broken schema.
    Other,
}

/// Classifies an error by its SQLSTATE (`None`: no answer from the server, e.g. the
/// connection closed or the socket failed).
pub(super) fn classify(code: Option<&SqlState>) -> Class {
    let Some(code) = code else {
        return Class::Unavailable;
    };
    if [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::UNIQUE_VIOLATION,
    ]
    .contains(code)
    {
        return Class::Conflict;
    }
    if *code == SqlState::DISK_FULL {
        return Class::Full;
    }
    if is_setup_error(code) {
        return Class::Setup;
    }
    // Class 08 (connection exception), shutdown and startup (57P01-57P03), too many
    // connections and other exhausted resources (53), a read-only standby after a failover.
    let c = code.code();
    if c.starts_with("08")
        || c.starts_with("57P")
        || (c.starts_with("53") && *code != SqlState::DISK_FULL)
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        // statement_timeout, lock_timeout and idle_in_transaction_session_timeout, which
        // bound the work a call leaves on the server
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
    {
        return Class::Unavailable;
    }
    Class::Other
}

/// The store error for a PostgreSQL error of class `class`.
pub(super) fn store_error(class: Class, e: &tokio_postgres::Error) -> StoreError {
    let text = describe(e);
    match class {
        Class::Unavailable | Class::Conflict => {
            StoreError::Unavailable(format!("PostgreSQL: {text}"))
        }
        Class::Full => StoreError::StorageFull,
        Class::Setup => StoreError::WrongStore(format!("PostgreSQL: {text}")),
        Class::Other => StoreError::Metadata(format!("PostgreSQL: {text}")),
    }
}

/// The server's message when there is one (tokio-postgres's `Display` says only "db error").
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            if let Some(src) = std::error::Error::source(e) {
                text = format!("{text}: {src}");
            }
            text
        }
    }
}

pub(super) fn pool_error(e: PoolError, timeout: Duration) -> StoreError {
    match e {
        PoolError::Backend(e) => store_error(classify(e.code()).max_unavailable(), &e),
        PoolError::Timeout(_) => StoreError::Unavailable(format!(
            "no PostgreSQL connection within {timeout:?} (every pooled one busy, or the \
             database unreachable)"
        )),
        other => StoreError::Unavailable(format!("PostgreSQL connection pool: {other}")),
    }
}

impl Class {
    /// A connection that could not be opened: unavailable unless a setting is wrong.
    fn max_unavailable(self) -> Class {
        match self {
            Class::Setup | Class::Full => self,
            _ => Class::Unavailable,
        }
    }
}

/// Why one attempt of a call failed.
pub(super) enum Failure {
    /// The attempt found it must run again with more rows locked (a transaction that added
    /// records it had not named): nothing was written.
    Again,
    /// The call's own answer (no such record, the change refused): returned as it is.
    Store(StoreError),
    /// PostgreSQL failed. `retry_safe`: nothing was committed, or the call changes nothing, so
    /// running it again on another connection cannot apply it twice.
    Pg {
        err: tokio_postgres::Error,
        retry_safe: bool,
    },
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// Pause before re-running a change that met a conflict: 5 ms doubling per attempt up to
/// 320 ms, times `jitter` in [0.5, 1.5) so that colliding writers do not collide again.
pub(super) fn conflict_backoff(attempt: u32, jitter: f64) -> Duration {
    let base = 5.0 * f64::from(1u32 << attempt.clamp(1, 7).saturating_sub(1));
    Duration::from_secs_f64(base.min(320.0) * jitter / 1000.0)
}

pub(super) fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    0.5 + f64::from(u16::from_le_bytes(b)) / 65536.0
}
