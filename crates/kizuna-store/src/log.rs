//! The event log as the engine reads it: in commit order, from a checkpoint, with a lease so
//! that only one node advances it at a time.
//!
//! A position is `(tx, seq)`. On SQLite `tx` is always 0 and `seq` follows commit order (one
//! writer at a time). On PostgreSQL concurrent transactions take `seq` numbers in one order
//! and may commit in another, so the reader only returns rows written by transactions older
//! than every transaction still running (`txid < pg_snapshot_xmin(pg_current_snapshot())`):
//! those transactions have all finished, so nothing can later appear before a position already
//! read. See migration 0004.

use crate::db::{Dialect, One, Tx, Val};
use crate::{Store, StoreError, args};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

/// A place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPosition {
    /// Writing transaction (PostgreSQL), 0 on SQLite.
    pub tx: i64,
    /// Sequence number.
    pub seq: i64,
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.tx, self.seq)
    }
}

/// An event as the engine reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    /// Id.
    pub id: Uuid,
    /// Contact.
    pub contact_id: Uuid,
    /// `noun.verb`.
    pub event_type: String,
    /// When it happened (µs).
    pub occurred_at: i64,
    /// Where it came from (`engine` for the engine's own events).
    pub source: String,
    /// Details.
    pub properties: Value,
    /// Place in the log.
    pub position: LogPosition,
}

#[derive(sqlx::FromRow)]
struct LogRow {
    id: Uuid,
    contact_id: Uuid,
    #[sqlx(rename = "type")]
    event_type: String,
    occurred_at: i64,
    source: String,
    properties: Json<Value>,
    txid: i64,
    seq: i64,
}

impl From<LogRow> for LogEvent {
    fn from(r: LogRow) -> Self {
        LogEvent {
            id: r.id,
            contact_id: r.contact_id,
            event_type: r.event_type,
            occurred_at: r.occurred_at,
            source: r.source,
            properties: r.properties.0,
            position: LogPosition {
                tx: r.txid,
                seq: r.seq,
            },
        }
    }
}

/// Where an engine stands, and who holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Last position processed.
    pub position: LogPosition,
    /// Lease holder.
    pub holder: Option<String>,
    /// Lease expiry (µs).
    pub lease_until: i64,
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    tx: i64,
    seq: i64,
    holder: Option<String>,
    lease_until: i64,
}

const COLS_SQLITE: &str = "id, contact_id, type, occurred_at, source, properties, 0 AS txid, seq";
const COLS_PG: &str = "id, contact_id, type, occurred_at, source, properties, txid, seq";
const PG_HORIZON: &str = "txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

/// `AND position > after [AND position <= upto]` for the dialect, appending arguments; on
/// PostgreSQL only rows of transactions older than every running one (the commit-order
/// horizon).
fn range(d: Dialect, after: LogPosition, upto: Option<LogPosition>, a: &mut Vec<Val>) -> String {
    range_with(d, after, upto, a, true)
}

fn range_with(
    d: Dialect,
    after: LogPosition,
    upto: Option<LogPosition>,
    a: &mut Vec<Val>,
    horizon: bool,
) -> String {
    let mut s = String::new();
    match d {
        Dialect::Sqlite => {
            a.push(after.seq.into());
            s.push_str(&format!(" AND seq > ${}", a.len()));
            if let Some(u) = upto {
                a.push(u.seq.into());
                s.push_str(&format!(" AND seq <= ${}", a.len()));
            }
        }
        Dialect::Postgres => {
            a.push(after.tx.into());
            a.push(after.seq.into());
            s.push_str(&format!(" AND (txid, seq) > (${}, ${})", a.len() - 1, a.len()));
            if let Some(u) = upto {
                a.push(u.tx.into());
                a.push(u.seq.into());
                s.push_str(&format!(" AND (txid, seq) <= (${}, ${})", a.len() - 1, a.len()));
            }
            if horizon {
                s.push_str(&format!(" AND {PG_HORIZON}"));
            }
        }
    }
    s
}

fn cols(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => COLS_SQLITE,
        Dialect::Postgres => COLS_PG,
    }
}

fn order(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => " ORDER BY seq",
        Dialect::Postgres => " ORDER BY txid, seq",
    }
}

impl Store {
    /// Up to `limit` events after `after`, in log order (only finished transactions' events on
    /// PostgreSQL). `types`: only these exact types.
    pub async fn read_log(
        &self,
        after: LogPosition,
        upto: Option<LogPosition>,
        types: Option<&[String]>,
        limit: u32,
    ) -> Result<Vec<LogEvent>, StoreError> {
        self.read_log_with(after, upto, types, limit, true).await
    }

    /// Like [`Store::read_log`], but everything committed, without the commit-order horizon:
    /// for one-off scans (previews, what-if) that keep no checkpoint.
    pub async fn scan_log(
        &self,
        after: LogPosition,
        types: Option<&[String]>,
        limit: u32,
    ) -> Result<Vec<LogEvent>, StoreError> {
        self.read_log_with(after, None, types, limit, false).await
    }

    async fn read_log_with(
        &self,
        after: LogPosition,
        upto: Option<LogPosition>,
        types: Option<&[String]>,
        limit: u32,
        horizon: bool,
    ) -> Result<Vec<LogEvent>, StoreError> {
        let d = self.dialect();
        let mut a = Vec::new();
        let mut sql = format!("SELECT {} FROM events WHERE 1=1", cols(d));
        sql.push_str(&range_with(d, after, upto, &mut a, horizon));
        if let Some(types) = types {
            if types.is_empty() {
                return Ok(vec![]);
            }
            let mut ph = Vec::new();
            for t in types {
                a.push(t.as_str().into());
                ph.push(format!("${}", a.len()));
            }
            sql.push_str(&format!(" AND type IN ({})", ph.join(",")));
        }
        sql.push_str(order(d));
        sql.push_str(&format!(" LIMIT {limit}"));
        let rows: Vec<LogRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        Ok(rows.into_iter().map(LogEvent::from).collect())
    }

    /// Whether events after `after` exist that the reader cannot return yet (PostgreSQL: written
    /// by transactions newer than one still running). Always false on SQLite.
    pub async fn log_held_back(&self, after: LogPosition) -> Result<bool, StoreError> {
        if self.dialect() == Dialect::Sqlite {
            return Ok(false);
        }
        let r: Option<One<i32>> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT 1 FROM events WHERE (txid, seq) > ($1, $2) LIMIT 1",
                args![after.tx, after.seq],
            )
            .await?;
        Ok(r.is_some())
    }

    /// The last readable position (everything up to it is committed and visible).
    pub async fn log_head(&self) -> Result<LogPosition, StoreError> {
        let d = self.dialect();
        let sql = match d {
            Dialect::Sqlite => "SELECT 0 AS txid, COALESCE(MAX(seq), 0) AS seq FROM events".to_string(),
            Dialect::Postgres => format!(
                "SELECT txid, seq FROM events WHERE {PG_HORIZON} ORDER BY txid DESC, seq DESC LIMIT 1"
            ),
        };
        #[derive(sqlx::FromRow)]
        struct P {
            txid: i64,
            seq: i64,
        }
        let p: Option<P> = self
            .db()
            .reader()
            .fetch_optional(sqlx::AssertSqlSafe(sql), vec![])
            .await?;
        Ok(p.map(|p| LogPosition { tx: p.txid, seq: p.seq })
            .unwrap_or_default())
    }

    /// A contact's events up to a position (all when `None`), in log order.
    pub async fn contact_log(
        &self,
        contact_id: Uuid,
        upto: Option<LogPosition>,
    ) -> Result<Vec<LogEvent>, StoreError> {
        let d = self.dialect();
        let mut a = args![contact_id];
        let mut sql = format!("SELECT {} FROM events WHERE contact_id = $1", cols(d));
        sql.push_str(&range_with(
            d,
            LogPosition { tx: i64::MIN, seq: i64::MIN },
            upto,
            &mut a,
            upto.is_some(),
        ));
        sql.push_str(order(d));
        let rows: Vec<LogRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        Ok(rows.into_iter().map(LogEvent::from).collect())
    }

    /// The checkpoint named `name`, if any.
    pub async fn checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        let r: Option<CheckpointRow> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT tx, seq, holder, lease_until FROM engine_checkpoints WHERE name = $1",
                args![name],
            )
            .await?;
        Ok(r.map(|r| Checkpoint {
            position: LogPosition { tx: r.tx, seq: r.seq },
            holder: r.holder,
            lease_until: r.lease_until,
        }))
    }

    /// Takes or renews the lease on a checkpoint until `until` (µs); true when held. A lease
    /// held by someone else is taken only once it has expired at `now`.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db().begin().await?;
        tx.execute(
            "INSERT INTO engine_checkpoints (name, tx, seq, holder, lease_until, updated_at) VALUES ($1, 0, 0, NULL, 0, $2) ON CONFLICT (name) DO NOTHING",
            args![name, now],
        )
        .await?;
        let n = tx
            .execute(
                "UPDATE engine_checkpoints SET holder = $2, lease_until = $3 WHERE name = $1 AND (holder = $2 OR holder IS NULL OR lease_until < $4)",
                args![name, holder, until, now],
            )
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Gives a lease up (on shutdown), so another node can take over at once.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        tx.execute(
            "UPDATE engine_checkpoints SET holder = NULL, lease_until = 0 WHERE name = $1 AND holder = $2",
            args![name, holder],
        )
        .await?;
        tx.commit().await
    }
}

/// Moves a checkpoint inside the transaction that applies the work up to `to`. False (and
/// nothing should be committed) when `holder` no longer holds the lease.
pub async fn advance_checkpoint(
    tx: &mut Tx,
    name: &str,
    holder: &str,
    to: LogPosition,
    now: i64,
) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            "UPDATE engine_checkpoints SET tx = $3, seq = $4, updated_at = $5 WHERE name = $1 AND holder = $2",
            args![name, holder, to.tx, to.seq, now],
        )
        .await?;
    Ok(n == 1)
}

/// The number of events after a position (for progress reports).
pub async fn count_after(store: &Store, after: LogPosition) -> Result<i64, StoreError> {
    let d = store.dialect();
    let mut a = Vec::new();
    let sql = format!("SELECT COUNT(*) FROM events WHERE 1=1{}", range(d, after, None, &mut a));
    let n: One<i64> = store
        .db()
        .reader()
        .fetch_one(sqlx::AssertSqlSafe(sql), a)
        .await?;
    Ok(n.0)
}
