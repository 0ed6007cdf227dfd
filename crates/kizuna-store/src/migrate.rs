//! Versioned schema migrations, one folder per backend, applied in order on start.
//! A migration is never edited once released; a change is a new, higher-numbered file.

use crate::StoreError;
use crate::db::{Db, Dialect, One};

/// A migration: version, name, SQL per backend.
struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "lead_database",
        sqlite: include_str!("../migrations/sqlite/0001_lead_database.sql"),
        postgres: include_str!("../migrations/postgres/0001_lead_database.sql"),
    },
    Migration {
        version: 2,
        name: "tracking",
        sqlite: include_str!("../migrations/sqlite/0002_tracking.sql"),
        postgres: include_str!("../migrations/postgres/0002_tracking.sql"),
    },
    Migration {
        version: 3,
        name: "mail",
        sqlite: include_str!("../migrations/sqlite/0003_mail.sql"),
        postgres: include_str!("../migrations/postgres/0003_mail.sql"),
    },
    Migration {
        version: 4,
        name: "engine",
        sqlite: include_str!("../migrations/sqlite/0004_engine.sql"),
        postgres: include_str!("../migrations/postgres/0004_engine.sql"),
    },
    Migration {
        version: 5,
        name: "programs",
        sqlite: include_str!("../migrations/sqlite/0005_programs.sql"),
        postgres: include_str!("../migrations/postgres/0005_programs.sql"),
    },
];

/// The newest schema version this binary knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

/// Applies every pending migration; returns the versions applied.
pub async fn run(db: &Db) -> Result<Vec<i64>, StoreError> {
    let mut tx = db.begin().await?;
    if tx.dialect() == Dialect::Postgres {
        // Several nodes may start at once: one migrates, the others wait here.
        tx.execute("SELECT pg_advisory_xact_lock(7123894512)", vec![])
            .await?;
    }
    tx.execute(
        "CREATE TABLE IF NOT EXISTS kizuna_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        vec![],
    )
    .await?;
    let applied: Vec<One<i64>> = tx
        .fetch_all(
            "SELECT version FROM kizuna_migrations ORDER BY version",
            vec![],
        )
        .await?;
    let current = applied.last().map(|v| v.0).unwrap_or(0);
    if current > latest_version() {
        return Err(StoreError::Migration(format!(
            "the database schema is version {current}, newer than this binary knows ({}); upgrade kizuna",
            latest_version()
        )));
    }
    let mut done = Vec::new();
    // Every migration not yet applied, in order (not only those above the highest applied:
    // numbers are assigned to parallel branches, which may land out of order).
    for m in MIGRATIONS
        .iter()
        .filter(|m| !applied.iter().any(|a| a.0 == m.version))
    {
        let sql = match tx.dialect() {
            Dialect::Sqlite => m.sqlite,
            Dialect::Postgres => m.postgres,
        };
        tx.execute_script(sql)
            .await
            .map_err(|e| StoreError::Migration(format!("{:04}_{}: {e}", m.version, m.name)))?;
        tx.execute(
            "INSERT INTO kizuna_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            crate::args![m.version, m.name, chrono::Utc::now()],
        )
        .await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        done.push(m.version);
    }
    tx.commit().await?;
    Ok(done)
}

/// The schema version of the database (0 when empty).
pub async fn current_version(db: &Db) -> Result<i64, StoreError> {
    let r: Result<Option<One<Option<i64>>>, _> = db
        .reader()
        .fetch_optional("SELECT MAX(version) FROM kizuna_migrations", vec![])
        .await;
    Ok(r.ok().flatten().and_then(|v| v.0).unwrap_or(0))
}
