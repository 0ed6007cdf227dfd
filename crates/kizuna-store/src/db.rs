//! The single query layer over both backends.
//!
//! Every query in this crate is written once, as SQL text with `$1, $2, …` placeholders that both
//! SQLite and PostgreSQL understand, with its arguments as [`Val`]s and its result as a
//! `#[derive(sqlx::FromRow)]` struct. [`Db`] and [`Tx`] run it on whichever backend is live, so
//! no method repeats a `match` over backends; only the few places where the dialects truly
//! differ ask [`Dialect`].

use crate::StoreError;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::types::Json;
use sqlx::{FromRow, Postgres, SqlSafeStr, Sqlite, Transaction};
use std::sync::Arc;
use uuid::Uuid;

/// SQL text built at run time by this crate's callers (benchmarks, tools). Only for text that
/// contains no user input.
pub type SqlText = sqlx::AssertSqlSafe<String>;

/// Wraps run-time SQL text (see [`SqlText`]).
pub fn assert_sql_safe(s: String) -> SqlText {
    sqlx::AssertSqlSafe(s)
}

/// Which SQL dialect is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// One bound argument. Nulls are typed, because PostgreSQL types every parameter.
#[derive(Debug, Clone)]
pub enum Val {
    /// Integer (also timestamps, as microseconds since the Unix epoch).
    I64(Option<i64>),
    /// Float.
    F64(Option<f64>),
    /// Boolean.
    Bool(Option<bool>),
    /// Text.
    Text(Option<String>),
    /// UUID (BLOB on SQLite, uuid on PostgreSQL).
    Uuid(Option<Uuid>),
    /// JSON (TEXT on SQLite, jsonb on PostgreSQL).
    Json(Option<Value>),
    /// Raw bytes.
    Bytes(Option<Vec<u8>>),
}

macro_rules! val_from {
    ($($t:ty => $v:ident $(, $conv:expr)?);* $(;)?) => {$(
        impl From<$t> for Val {
            fn from(x: $t) -> Self { Val::$v(Some(val_from!(@conv x $(, $conv)?))) }
        }
        impl From<Option<$t>> for Val {
            fn from(x: Option<$t>) -> Self { Val::$v(x.map(|x| val_from!(@conv x $(, $conv)?))) }
        }
    )*};
    (@conv $x:ident) => { $x };
    (@conv $x:ident, $conv:expr) => { ($conv)($x) };
}

val_from! {
    i64 => I64;
    i32 => I64, |x: i32| x as i64;
    f64 => F64;
    bool => Bool;
    String => Text;
    &str => Text, |x: &str| x.to_string();
    &String => Text, |x: &String| x.clone();
    Uuid => Uuid;
    &Uuid => Uuid, |x: &Uuid| *x;
    Value => Json;
    &Value => Json, |x: &Value| x.clone();
    Vec<u8> => Bytes;
    DateTime<Utc> => I64, |x: DateTime<Utc>| x.timestamp_micros();
    &DateTime<Utc> => I64, |x: &DateTime<Utc>| x.timestamp_micros();
}

/// Builds a `Vec<Val>` from mixed values: `args![id, email, now]`.
#[macro_export]
macro_rules! args {
    ($($v:expr),* $(,)?) => { vec![$($crate::db::Val::from($v)),*] };
}

/// SQLite looks a `$N` parameter up by name, scanning every name: binding n named parameters
/// costs O(n²), which dominates a 1,000-row INSERT (measured: 83% of the time). When the
/// placeholders are `$1, $2, … $n` in order, each once (multi-row VALUES, IN lists), they are
/// rewritten to anonymous `?`, which bind positionally. Anything else is left as written.
pub fn sqlite_positional(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut expect = 1u64;
    let mut last = 0;
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                i += 1;
            }
            None if c == b'\'' || c == b'"' => {
                quote = Some(c);
                i += 1;
            }
            None if c == b'$' && i + 1 < b.len() && b[i + 1].is_ascii_digit() => {
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                let n: u64 = sql[i + 1..j].parse().ok()?;
                if n != expect {
                    return None;
                }
                expect += 1;
                out.push_str(&sql[last..i]);
                out.push('?');
                last = j;
                i = j;
            }
            None => i += 1,
        }
    }
    if expect == 1 {
        return None;
    }
    out.push_str(&sql[last..]);
    Some(out)
}

fn sqlite_sql(sql: impl SqlSafeStr) -> sqlx::SqlStr {
    let s = sql.into_sql_str();
    match sqlite_positional(s.as_str()) {
        Some(p) => sqlx::AssertSqlSafe(p).into_sql_str(),
        None => s,
    }
}

fn bind_sqlite<'q>(
    mut q: Query<'q, Sqlite, SqliteArguments>,
    args: Vec<Val>,
) -> Query<'q, Sqlite, SqliteArguments> {
    for a in args {
        q = match a {
            Val::I64(v) => q.bind(v),
            Val::F64(v) => q.bind(v),
            Val::Bool(v) => q.bind(v),
            Val::Text(v) => q.bind(v),
            Val::Uuid(v) => q.bind(v),
            Val::Json(v) => q.bind(v.map(Json)),
            Val::Bytes(v) => q.bind(v),
        };
    }
    q
}

fn bind_pg<'q>(
    mut q: Query<'q, Postgres, PgArguments>,
    args: Vec<Val>,
) -> Query<'q, Postgres, PgArguments> {
    for a in args {
        q = match a {
            Val::I64(v) => q.bind(v),
            Val::F64(v) => q.bind(v),
            Val::Bool(v) => q.bind(v),
            Val::Text(v) => q.bind(v),
            Val::Uuid(v) => q.bind(v),
            Val::Json(v) => q.bind(v.map(Json)),
            Val::Bytes(v) => q.bind(v),
        };
    }
    q
}

/// A row type that decodes from both backends (derive `sqlx::FromRow` on it).
pub trait Record:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> Record for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

/// A single-column result.
#[derive(sqlx::FromRow)]
pub struct One<T>(pub T);

/// The connection pool of the live backend.
#[derive(Clone, Debug)]
pub enum Db {
    /// SQLite, with a lock that serializes writers (SQLite has one writer at a time; taking
    /// turns in-process avoids busy-waiting and upgrade deadlocks).
    Sqlite(SqlitePool, Arc<tokio::sync::Mutex<()>>),
    /// PostgreSQL.
    Pg(PgPool),
}

/// A write transaction on the live backend. Dropped without [`Tx::commit`], it rolls back.
pub enum Tx {
    /// SQLite (`BEGIN IMMEDIATE`, holding the writer turn; no turn for a read snapshot).
    Sqlite(
        Transaction<'static, Sqlite>,
        Option<tokio::sync::OwnedMutexGuard<()>>,
    ),
    /// PostgreSQL.
    Pg(Transaction<'static, Postgres>),
}

macro_rules! query_methods {
    ($kind:ident, $c:ident, $conn:expr) => {
        /// Runs a statement; returns the number of rows affected.
        pub async fn execute(
            &mut self,
            sql: impl SqlSafeStr,
            args: Vec<Val>,
        ) -> Result<u64, StoreError> {
            Ok(match self {
                $kind::Sqlite($c, ..) => bind_sqlite(sqlx::query(sqlite_sql(sql)), args)
                    .execute($conn)
                    .await?
                    .rows_affected(),
                $kind::Pg($c, ..) => bind_pg(sqlx::query(sql), args)
                    .execute($conn)
                    .await?
                    .rows_affected(),
            })
        }

        /// Runs a query and decodes every row.
        pub async fn fetch_all<T: Record>(
            &mut self,
            sql: impl SqlSafeStr,
            args: Vec<Val>,
        ) -> Result<Vec<T>, StoreError> {
            Ok(match self {
                $kind::Sqlite($c, ..) => {
                    let rows = bind_sqlite(sqlx::query(sqlite_sql(sql)), args).fetch_all($conn).await?;
                    rows.iter().map(T::from_row).collect::<Result<_, _>>()?
                }
                $kind::Pg($c, ..) => {
                    let rows = bind_pg(sqlx::query(sql), args).fetch_all($conn).await?;
                    rows.iter().map(T::from_row).collect::<Result<_, _>>()?
                }
            })
        }

        /// Runs a query and decodes the first row, if any.
        pub async fn fetch_optional<T: Record>(
            &mut self,
            sql: impl SqlSafeStr,
            args: Vec<Val>,
        ) -> Result<Option<T>, StoreError> {
            Ok(match self {
                $kind::Sqlite($c, ..) => match bind_sqlite(sqlx::query(sqlite_sql(sql)), args)
                    .fetch_optional($conn)
                    .await?
                {
                    Some(r) => Some(T::from_row(&r)?),
                    None => None,
                },
                $kind::Pg($c, ..) => match bind_pg(sqlx::query(sql), args)
                    .fetch_optional($conn)
                    .await?
                {
                    Some(r) => Some(T::from_row(&r)?),
                    None => None,
                },
            })
        }

        /// Runs a query that must return a row.
        pub async fn fetch_one<T: Record>(
            &mut self,
            sql: impl SqlSafeStr,
            args: Vec<Val>,
        ) -> Result<T, StoreError> {
            self.fetch_optional(sql, args)
                .await?
                .ok_or(StoreError::NotFound)
        }
    };
}

impl Db {
    /// The live dialect.
    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(..) => Dialect::Sqlite,
            Db::Pg(_) => Dialect::Postgres,
        }
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Db::Sqlite(pool, lock) => {
                let turn = lock.clone().lock_owned().await;
                Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?, Some(turn))
            }
            Db::Pg(pool) => Tx::Pg(pool.begin().await?),
        })
    }

    /// A read-only transaction whose statements all see one snapshot (PostgreSQL: `REPEATABLE
    /// READ READ ONLY`; SQLite: a deferred transaction, which reads one snapshot in WAL mode and
    /// takes no writer turn).
    pub async fn begin_snapshot(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Db::Sqlite(pool, _) => Tx::Sqlite(pool.begin_with("BEGIN DEFERRED").await?, None),
            Db::Pg(pool) => Tx::Pg(
                pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?,
            ),
        })
    }

    /// A reader over the pool (autocommit, no transaction).
    pub fn reader(&self) -> Reader<'_> {
        match self {
            Db::Sqlite(p, _) => Reader::Sqlite(p),
            Db::Pg(p) => Reader::Pg(p),
        }
    }

    /// Closes every connection (waits for in-flight queries).
    pub async fn close(&self) {
        match self {
            Db::Sqlite(p, _) => p.close().await,
            Db::Pg(p) => p.close().await,
        }
    }
}

/// Autocommit access to the pool, for reads and single statements.
pub enum Reader<'a> {
    /// SQLite.
    Sqlite(&'a SqlitePool),
    /// PostgreSQL.
    Pg(&'a PgPool),
}

impl Reader<'_> {
    query_methods!(Reader, c, *c);
}

impl Tx {
    query_methods!(Tx, c, &mut **c);

    /// The live dialect.
    pub fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(..) => Dialect::Sqlite,
            Tx::Pg(_) => Dialect::Postgres,
        }
    }

    /// Runs a multi-statement script (migrations).
    pub async fn execute_script(&mut self, sql: &'static str) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(c, _) => {
                sqlx::raw_sql(sql).execute(&mut **c).await?;
            }
            Tx::Pg(c) => {
                sqlx::raw_sql(sql).execute(&mut **c).await?;
            }
        }
        Ok(())
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t, _turn) => t.commit().await?,
            Tx::Pg(t) => t.commit().await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_positional;

    #[test]
    fn in_order_placeholders_become_positional() {
        assert_eq!(
            sqlite_positional("INSERT INTO t VALUES ($1,$2),($3,$4)").as_deref(),
            Some("INSERT INTO t VALUES (?,?),(?,?)")
        );
        assert_eq!(
            sqlite_positional("SELECT json_extract(p, '$.path'), $1 FROM t WHERE a = $2").as_deref(),
            Some("SELECT json_extract(p, '$.path'), ? FROM t WHERE a = ?")
        );
        assert_eq!(sqlite_positional("UPDATE t SET a = $2 WHERE id = $1"), None);
        assert_eq!(sqlite_positional("SELECT $1, $1"), None);
        assert_eq!(sqlite_positional("SELECT 1"), None);
        assert_eq!(sqlite_positional("SELECT $10").as_deref(), None);
    }
}

/// Microseconds since the epoch → instant.
pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}
