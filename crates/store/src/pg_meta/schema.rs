//! The PostgreSQL schema and its migrations.
//!
//! Versions follow expand/contract so that instances one release apart run side by side
//! during a rolling upgrade:
//!
//! - an *expand* migration only adds (a table, a nullable column, an index) and leaves what
//!   older builds read and write alone: its `readable_from` stays where it was, and those
//!   builds keep serving on the newer schema;
//! - a *contract* migration (dropping or changing what an older build uses) ships a release
//!   later, once no instance runs a build that needs the old shape; its `readable_from` rises to
//!   its own release's version, and older builds then refuse to start with a message that
//!   says which version they need.
//!
//! The database records the newest version applied and the oldest build version that can
//! still use it (`ferry_schema`). A starting instance applies the migrations it knows and the
//! database lacks, one transaction each, under a transaction-level advisory lock (instances
//! starting together apply each one once).

/// One step of the schema.
#[derive(Debug)]
pub(crate) struct Migration {
    /// The schema version it makes.
    pub version: u32,
    /// The oldest build schema version that still works once this step is applied.
    pub readable_from: u32,
    /// What it does (statements run in one transaction).
    pub sql: &'static str,
}

/// Every migration, in order; `MIGRATIONS[i].version == i + 1`.
pub(crate) const MIGRATIONS: &[Migration] = &[V1, V2];

const V1: Migration = Migration {
    version: 1,
    readable_from: 1,
    sql: "
        CREATE TABLE ferry_uploads (
            id          text PRIMARY KEY,
            -- the record (crates/store/src/record.rs): fields read by name, so that adding one
            -- needs no migration; writers keep keys they do not know (see pg_meta.rs)
            record      jsonb NOT NULL,
            -- copies of record fields the queries select on, written with it
            expires_ms  bigint,
            deleted     boolean NOT NULL DEFAULT false,
            unfinished  boolean NOT NULL,
            -- which instance is sweeping this expired record, and until when
            sweep_owner text,
            sweep_until timestamptz
        );
        CREATE INDEX ferry_uploads_expiry ON ferry_uploads (expires_ms)
            WHERE NOT deleted AND expires_ms IS NOT NULL;
        CREATE INDEX ferry_uploads_unfinished ON ferry_uploads (id) WHERE unfinished;
        CREATE TABLE ferry_settings (
            key   text PRIMARY KEY,
            value text NOT NULL
        );
    ",
};

/// The leases instances share (`lease.rs`). Its tables only add, but it contracts what
/// builds may serve: one from before leases writes without them, so it must not serve beside
/// builds that take them (those also refuse to start while one serves: `lease.rs`).
const V2: Migration = Migration {
    version: 2,
    readable_from: 2,
    sql: "
        CREATE TABLE ferry_leases (
            id         text PRIMARY KEY,
            -- the instance holding it; NULL once released
            owner      text,
            -- grows with every grant: the fence commits and reservations carry
            epoch      bigint NOT NULL,
            -- by the database clock, so instances' clocks need not agree
            expires_at timestamptz NOT NULL,
            -- another instance asked the holder to let go
            wanted_at  timestamptz,
            -- the highest store number (S3 part number) any holder reserved
            mark       integer NOT NULL DEFAULT 0
        );
        CREATE INDEX ferry_leases_owner ON ferry_leases (owner) WHERE owner IS NOT NULL;
        -- instances serving now: each says so with its renewals
        CREATE TABLE ferry_instances (
            name    text PRIMARY KEY,
            seen_at timestamptz NOT NULL
        );
    ",
};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// What a starting instance does with the schema it found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Apply migrations `from..=to` (from 1 on an empty database).
    Apply { from: u32, to: u32 },
    /// The schema is this build's.
    Current,
    /// A newer build applied expand steps this build can live with.
    NewerCompatible { version: u32 },
    /// A newer build contracted the schema past what this build reads.
    Refuse { version: u32, readable_from: u32 },
}

/// Decides from the database's `(version, readable_from)` (`None`: no schema yet) and this
/// build's version.
pub(crate) fn plan(found: Option<(u32, u32)>, ours: u32) -> Plan {
    match found {
        None => Plan::Apply { from: 1, to: ours },
        Some((version, _)) if version < ours => Plan::Apply {
            from: version + 1,
            to: ours,
        },
        Some((version, _)) if version == ours => Plan::Current,
        Some((version, readable_from)) if readable_from <= ours => {
            Plan::NewerCompatible { version }
        }
        Some((version, readable_from)) => Plan::Refuse {
            version,
            readable_from,
        },
    }
}

/// The refusal for [`Plan::Refuse`], in words an operator acts on.
pub(crate) fn refusal(version: u32, readable_from: u32, ours: u32) -> String {
    format!(
        "the PostgreSQL schema is at version {version}, which ferry builds of schema \
         {readable_from} or later can use; this build knows schema {ours}: upgrade ferry"
    )
}

/// Creates the version table if missing (a no-op once it exists); run under the lock.
pub(crate) const CREATE_VERSION_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS ferry_schema (
        one           boolean PRIMARY KEY DEFAULT true CHECK (one),
        version       integer NOT NULL,
        readable_from integer NOT NULL
    )";

/// The advisory lock key starting instances serialize migrations on (`ferry` in ASCII).
pub(crate) const MIGRATION_LOCK: i64 = 0x0066_6572_7279;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_never_readable_ahead_of_themselves() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.readable_from >= 1 && m.readable_from <= m.version);
            if i > 0 {
                assert!(m.readable_from >= MIGRATIONS[i - 1].readable_from);
            }
        }
    }

    #[test]
    fn an_empty_database_gets_every_migration() {
        assert_eq!(plan(None, 3), Plan::Apply { from: 1, to: 3 });
    }

    #[test]
    fn an_older_schema_gets_the_missing_steps() {
        assert_eq!(plan(Some((1, 1)), 3), Plan::Apply { from: 2, to: 3 });
        assert_eq!(plan(Some((3, 2)), 3), Plan::Current);
    }

    #[test]
    fn a_newer_schema_is_used_while_it_still_reads_as_ours() {
        // Expand steps of the next release: this build runs beside it.
        assert_eq!(plan(Some((4, 3)), 3), Plan::NewerCompatible { version: 4 });
        assert_eq!(plan(Some((5, 1)), 3), Plan::NewerCompatible { version: 5 });
        // A contract step past this build: refused, with the version it needs.
        assert_eq!(
            plan(Some((5, 4)), 3),
            Plan::Refuse {
                version: 5,
                readable_from: 4
            }
        );
        let why = refusal(5, 4, 3);
        assert!(
            why.contains("schema 4 or later") && why.contains("upgrade ferry"),
            "{why}"
        );
    }
}
