//! Kizuna's persistence.
//!
//! One [`Store`] over SQLite (the embedded default: `./kizuna-data/kizuna.sqlite`) or PostgreSQL
//! (to scale out: several stateless nodes share one database). Queries are written once in
//! [`db`]'s query layer; modules are named for what they keep, in the marketer's vocabulary:
//! [`contacts`], [`companies`], [`fields`], [`lists`], [`events`] (the timeline), [`merges`],
//! [`imports`] and [`csv_import`], [`ingest`] and [`ingestor`] (tracked events: identity
//! resolution and group commit), [`keys`] (API and write keys), [`users`] (sales reps and marketers),
//! [`suppressions`], [`email`] (templates, senders, consents, the outbox, broadcasts); for the
//! engine: [`log`] (the event log in commit order, checkpoints and leases), [`engine_state`]
//! (per-contact features, scores, memberships, timers, effects), [`definitions`] (segments,
//! scoring models) and [`sales`] (handoffs, tasks, notifications). Migrations ([`migrate`]) are
//! numbered, one folder per backend, and run on start.
#![deny(missing_docs)]

pub mod db;
pub mod migrate;

pub mod companies;
pub mod contacts;
pub mod csv_import;
pub mod definitions;
pub mod email;
pub mod engine_state;
pub mod events;
pub mod fields;
pub mod imports;
pub mod ingest;
pub mod ingestor;
pub mod keys;
pub mod lists;
pub mod log;
pub mod merges;
pub mod offline;
pub mod page;
pub mod programs;
pub mod sales;
pub mod suppressions;
pub mod users;

use db::{Db, Dialect};
use kizuna_core::{ValidationError, ValidationErrors};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use page::{Cursor, Page};

/// Errors of the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule would be broken (e.g. the e-mail already belongs to another contact).
    #[error("{message}")]
    Conflict {
        /// The field whose value is taken.
        field: String,
        /// A human sentence.
        message: String,
    },
    /// The input breaks a rule; each problem names its field.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// The database said no.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed or the schema is newer than this binary.
    #[error("migration error: {0}")]
    Migration(String),
    /// Configuration (URL, data directory) is unusable.
    #[error("configuration error: {0}")]
    Config(String),
}

impl StoreError {
    /// A single-field validation error.
    pub fn invalid(
        field: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        StoreError::Invalid(ValidationError::new(field, code, message).into())
    }

    /// A conflict on `field`.
    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError::Conflict {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Where the data lives.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `postgres://…` to use PostgreSQL; `sqlite://path` or `None` for SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Data directory for the embedded database (created if missing).
    pub data_dir: PathBuf,
    /// PostgreSQL only: a schema to use (created if missing) — lets tests and several Kizuna
    /// installations share one database.
    pub pg_schema: Option<String>,
    /// SQLite only: `full` (default: an acknowledged write survives power loss) or `normal`
    /// (survives a process crash, not power loss; faster).
    pub sqlite_synchronous: String,
    /// Maximum connections in the pool.
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            database_url: None,
            data_dir: PathBuf::from("./kizuna-data"),
            pg_schema: None,
            sqlite_synchronous: "full".into(),
            max_connections: 8,
        }
    }
}

/// The store: cheap to clone, shared by the web server, the engine and the CLI.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    description: Arc<str>,
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let store = Self::connect(config).await?;
        migrate::run(&store.db).await?;
        Ok(store)
    }

    /// Opens without migrating (for `kizuna migrate --status` and tests of migrations).
    pub async fn connect(config: &StoreConfig) -> Result<Store, StoreError> {
        match config.database_url.as_deref() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Self::connect_pg(url, config).await
            }
            Some(url) if url.starts_with("sqlite:") => {
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                Self::connect_sqlite(Path::new(path), config).await
            }
            Some(other) => Err(StoreError::Config(format!(
                "unsupported database URL {other:?}: use postgres://… or sqlite://PATH (or none for SQLite in the data directory)"
            ))),
            None => {
                std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                    StoreError::Config(format!(
                        "cannot create data directory {}: {e}",
                        config.data_dir.display()
                    ))
                })?;
                Self::connect_sqlite(&config.data_dir.join("kizuna.sqlite"), config).await
            }
        }
    }

    async fn connect_sqlite(path: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        let sync = match config.sqlite_synchronous.as_str() {
            "normal" => SqliteSynchronous::Normal,
            "full" => SqliteSynchronous::Full,
            other => {
                return Err(StoreError::Config(format!(
                    "sqlite synchronous must be full or normal, not {other:?}"
                )));
            }
        };
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30))
            // 64 MiB page cache per connection: bulk appends slow down 10× with the 2 MiB default.
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory")
            .pragma("mmap_size", "1073741824");
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections.max(2))
            .connect_with(opts)
            .await?;
        Ok(Store {
            db: Db::Sqlite(pool, Arc::new(tokio::sync::Mutex::new(()))),
            description: format!("sqlite:{}", path.display()).into(),
        })
    }

    async fn connect_pg(url: &str, config: &StoreConfig) -> Result<Store, StoreError> {
        let mut opts = PgConnectOptions::from_str(url)?.application_name("kizuna");
        if let Some(schema) = &config.pg_schema {
            if !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(StoreError::Config(format!(
                    "invalid schema name {schema:?}"
                )));
            }
            let setup = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(opts.clone())
                .await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .execute(&setup)
            .await?;
            setup.close().await;
            opts = opts.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await?;
        let host = url.split('@').next_back().unwrap_or("postgres");
        Ok(Store {
            db: Db::Pg(pool),
            description: format!("postgres://…@{host}").into(),
        })
    }

    /// The query layer (for modules of this crate and for benchmarks).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Which backend is live.
    pub fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    /// A description safe to log (no password).
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .reader()
            .fetch_one::<db::One<i64>>("SELECT CAST(1 AS BIGINT)", vec![])
            .await
            .map(|_| ())
    }

    /// Closes the pool, waiting for in-flight statements to finish.
    pub async fn close(&self) {
        self.db.close().await
    }
}

/// Maps a unique-constraint violation to a [`StoreError::Conflict`] on `field`.
pub(crate) fn on_unique(
    e: StoreError,
    field: &str,
    message: impl FnOnce() -> String,
) -> StoreError {
    if let StoreError::Db(sqlx::Error::Database(d)) = &e
        && d.is_unique_violation()
    {
        return StoreError::conflict(field, message());
    }
    e
}
