//! The event log as the engine reads it: everything committed, none skipped, from a
//! checkpoint, with a lease so that only one node advances it at a time.
//!
//! A position is `(tx, seq)`. On SQLite `tx` is always 0 and `seq` follows commit order (one
//! writer at a time), so "after the checkpoint" is simply `seq > checkpoint`.
//!
//! On PostgreSQL concurrent transactions take `seq` numbers in one order and may commit in
//! another: reading `seq > checkpoint` would skip a transaction that took a lower number and
//! committed later. So each row also records its writing transaction's id (`txid`, migration
//! 0004), and a [`LogCursor`] is a position plus the transactions that were still running
//! below it. One read is one snapshot: the cursor's pending transactions that have committed
//! meanwhile (all their rows), then rows after the position in `(txid, seq)` order; the next
//! cursor keeps the transactions the snapshot saw running below the new position. A row is
//! either after the position or written by a transaction that was running when the position
//! passed it — and those are remembered until they finish — so nothing is skipped, and a
//! long-running transaction (an import, another application on the same cluster) holds up
//! nothing but its own rows.

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

/// Where a reader stands: a position, and the transactions (PostgreSQL ids) that were running
/// below it when it was read — their rows are still to come.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogCursor {
    /// Everything up to here has been read, except the pending transactions' rows.
    pub position: LogPosition,
    /// Transactions below the position that had not finished.
    pub pending: Vec<i64>,
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
    /// Last place read.
    pub cursor: LogCursor,
    /// Lease holder.
    pub holder: Option<String>,
    /// Lease expiry (µs).
    pub lease_until: i64,
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    tx: i64,
    seq: i64,
    pending: String,
    holder: Option<String>,
    lease_until: i64,
}

const COLS_SQLITE: &str = "id, contact_id, type, occurred_at, source, properties, 0 AS txid, seq";
const COLS_PG: &str = "id, contact_id, type, occurred_at, source, properties, txid, seq";

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

/// `AND position > after [AND position <= upto]`, appending arguments.
fn range(d: Dialect, after: LogPosition, upto: Option<LogPosition>, a: &mut Vec<Val>) -> String {
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
            s.push_str(&format!(
                " AND (txid, seq) > (${}, ${})",
                a.len() - 1,
                a.len()
            ));
            if let Some(u) = upto {
                a.push(u.tx.into());
                a.push(u.seq.into());
                s.push_str(&format!(
                    " AND (txid, seq) <= (${}, ${})",
                    a.len() - 1,
                    a.len()
                ));
            }
        }
    }
    s
}

/// `AND txid NOT IN (…)` (nothing on SQLite or for no ids).
fn not_pending(d: Dialect, pending: &[i64], a: &mut Vec<Val>) -> String {
    if d == Dialect::Sqlite || pending.is_empty() {
        return String::new();
    }
    let ph: Vec<String> = pending
        .iter()
        .map(|t| {
            a.push((*t).into());
            format!("${}", a.len())
        })
        .collect();
    format!(" AND txid NOT IN ({})", ph.join(","))
}

fn types_filter(types: Option<&[String]>, a: &mut Vec<Val>) -> String {
    let Some(types) = types else {
        return String::new();
    };
    let ph: Vec<String> = types
        .iter()
        .map(|t| {
            a.push(t.as_str().into());
            format!("${}", a.len())
        })
        .collect();
    format!(" AND type IN ({})", ph.join(","))
}

#[derive(sqlx::FromRow)]
struct SnapshotRow {
    xip: String,
}

impl Store {
    /// The next events for a reader at `cursor` (up to about `limit`; a pending transaction's
    /// rows come all at once), in the order to apply them, and the cursor after them.
    pub async fn read_log(
        &self,
        cursor: &LogCursor,
        limit: u32,
    ) -> Result<(Vec<LogEvent>, LogCursor), StoreError> {
        let d = self.dialect();
        if d == Dialect::Sqlite {
            let mut a = Vec::new();
            let sql = format!(
                "SELECT {COLS_SQLITE} FROM events WHERE 1=1{} ORDER BY seq LIMIT {limit}",
                range(d, cursor.position, None, &mut a)
            );
            let rows: Vec<LogRow> = self
                .db()
                .reader()
                .fetch_all(sqlx::AssertSqlSafe(sql), a)
                .await?;
            let events: Vec<LogEvent> = rows.into_iter().map(LogEvent::from).collect();
            let position = events.last().map_or(cursor.position, |e| e.position);
            return Ok((
                events,
                LogCursor {
                    position,
                    pending: vec![],
                },
            ));
        }
        let mut tx = self.db().begin_snapshot().await?;
        // The snapshot: which transactions are running.
        let snap: SnapshotRow = tx
            .fetch_one(
                "SELECT COALESCE(string_agg(x::text, ','), '') AS xip FROM pg_snapshot_xip(pg_current_snapshot()) AS x",
                vec![],
            )
            .await?;
        let running: std::collections::HashSet<i64> =
            snap.xip.split(',').filter_map(|x| x.parse().ok()).collect();
        let mut events = Vec::new();
        // Pending transactions that have finished: all their rows are visible now.
        let finished: Vec<i64> = cursor
            .pending
            .iter()
            .copied()
            .filter(|t| !running.contains(t))
            .collect();
        if !finished.is_empty() {
            let mut a = Vec::new();
            let ph: Vec<String> = finished
                .iter()
                .map(|t| {
                    a.push((*t).into());
                    format!("${}", a.len())
                })
                .collect();
            let sql = format!(
                "SELECT {COLS_PG} FROM events WHERE txid IN ({}) ORDER BY txid, seq",
                ph.join(",")
            );
            let rows: Vec<LogRow> = tx.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
            events.extend(rows.into_iter().map(LogEvent::from));
        }
        let mut a = Vec::new();
        let sql = format!(
            "SELECT {COLS_PG} FROM events WHERE 1=1{} ORDER BY txid, seq LIMIT {limit}",
            range(d, cursor.position, None, &mut a)
        );
        let rows: Vec<LogRow> = tx.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
        tx.commit().await?;
        let position = rows.last().map_or(cursor.position, |r| LogPosition {
            tx: r.txid,
            seq: r.seq,
        });
        events.extend(rows.into_iter().map(LogEvent::from));
        let mut pending: Vec<i64> = cursor
            .pending
            .iter()
            .copied()
            .filter(|t| running.contains(t))
            .chain(running.iter().copied().filter(|t| *t < position.tx))
            .collect();
        pending.sort_unstable();
        pending.dedup();
        Ok((events, LogCursor { position, pending }))
    }

    /// Events up to a cursor (excluding its pending transactions), after `after`, in log
    /// order: for rebuilding state as of a checkpoint. `types`: only these exact types.
    pub async fn read_upto(
        &self,
        after: LogPosition,
        upto: &LogCursor,
        types: Option<&[String]>,
        limit: u32,
    ) -> Result<Vec<LogEvent>, StoreError> {
        let d = self.dialect();
        let mut a = Vec::new();
        let mut sql = format!("SELECT {} FROM events WHERE 1=1", cols(d));
        sql.push_str(&range(d, after, Some(upto.position), &mut a));
        sql.push_str(&not_pending(d, &upto.pending, &mut a));
        sql.push_str(&types_filter(types, &mut a));
        sql.push_str(order(d));
        sql.push_str(&format!(" LIMIT {limit}"));
        let rows: Vec<LogRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        Ok(rows.into_iter().map(LogEvent::from).collect())
    }

    /// Everything committed after `after`, in log order (one-off scans that keep no
    /// checkpoint: previews, what-if). `types`: only these exact types.
    pub async fn scan_log(
        &self,
        after: LogPosition,
        types: Option<&[String]>,
        limit: u32,
    ) -> Result<Vec<LogEvent>, StoreError> {
        let d = self.dialect();
        let mut a = Vec::new();
        let mut sql = format!("SELECT {} FROM events WHERE 1=1", cols(d));
        sql.push_str(&range(d, after, None, &mut a));
        sql.push_str(&types_filter(types, &mut a));
        sql.push_str(order(d));
        sql.push_str(&format!(" LIMIT {limit}"));
        let rows: Vec<LogRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        Ok(rows.into_iter().map(LogEvent::from).collect())
    }

    /// The last position written (committed).
    pub async fn log_head(&self) -> Result<LogPosition, StoreError> {
        let sql = match self.dialect() {
            Dialect::Sqlite => "SELECT 0 AS txid, COALESCE(MAX(seq), 0) AS seq FROM events",
            Dialect::Postgres => {
                "SELECT txid, seq FROM events ORDER BY txid DESC, seq DESC LIMIT 1"
            }
        };
        #[derive(sqlx::FromRow)]
        struct P {
            txid: i64,
            seq: i64,
        }
        let p: Option<P> = self.db().reader().fetch_optional(sql, vec![]).await?;
        Ok(p.map(|p| LogPosition {
            tx: p.txid,
            seq: p.seq,
        })
        .unwrap_or_default())
    }

    /// A contact's events in log order: all of them, or those a reader at `upto` has read.
    pub async fn contact_log(
        &self,
        contact_id: Uuid,
        upto: Option<&LogCursor>,
    ) -> Result<Vec<LogEvent>, StoreError> {
        let d = self.dialect();
        let mut a = args![contact_id];
        let mut sql = format!("SELECT {} FROM events WHERE contact_id = $1", cols(d));
        if let Some(u) = upto {
            sql.push_str(&range(
                d,
                LogPosition {
                    tx: i64::MIN,
                    seq: i64::MIN,
                },
                Some(u.position),
                &mut a,
            ));
            sql.push_str(&not_pending(d, &u.pending, &mut a));
        }
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
                "SELECT tx, seq, pending, holder, lease_until FROM engine_checkpoints WHERE name = $1",
                args![name],
            )
            .await?;
        Ok(r.map(|r| Checkpoint {
            cursor: LogCursor {
                position: LogPosition {
                    tx: r.tx,
                    seq: r.seq,
                },
                pending: serde_json::from_str(&r.pending).unwrap_or_default(),
            },
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
            "INSERT INTO engine_checkpoints (name, tx, seq, pending, holder, lease_until, updated_at) VALUES ($1, 0, 0, '[]', NULL, 0, $2) ON CONFLICT (name) DO NOTHING",
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
    to: &LogCursor,
    now: i64,
) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            "UPDATE engine_checkpoints SET tx = $3, seq = $4, pending = $5, updated_at = $6 WHERE name = $1 AND holder = $2",
            args![
                name,
                holder,
                to.position.tx,
                to.position.seq,
                serde_json::to_string(&to.pending).unwrap_or_else(|_| "[]".into()),
                now
            ],
        )
        .await?;
    Ok(n == 1)
}

/// The number of events after a position (for progress reports).
pub async fn count_after(store: &Store, after: LogPosition) -> Result<i64, StoreError> {
    let d = store.dialect();
    let mut a = Vec::new();
    let sql = format!(
        "SELECT COUNT(*) FROM events WHERE 1=1{}",
        range(d, after, None, &mut a)
    );
    let n: One<i64> = store
        .db()
        .reader()
        .fetch_one(sqlx::AssertSqlSafe(sql), a)
        .await?;
    Ok(n.0)
}
