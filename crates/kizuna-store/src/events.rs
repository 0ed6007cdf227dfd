//! The event log: everything that happened to a contact, newest first on the timeline.

use crate::db::{Tx, Val, from_micros};
use crate::page::{Cursor, Page};
use crate::{Store, StoreError, args};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Who it happened to.
    pub contact_id: Uuid,
    /// `noun.verb`, e.g. `contact.created`.
    pub event_type: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Where it came from: `api`, `import`, `sdk`, `snippet`, `kizuna`, `ui`.
    pub source: String,
    /// Sender's idempotency id, if any.
    pub message_id: Option<String>,
    /// Details.
    pub properties: Value,
}

impl NewEvent {
    /// An event raised by Kizuna itself or an API call, with no message id.
    pub fn new(
        contact_id: Uuid,
        event_type: &str,
        at: DateTime<Utc>,
        source: &str,
        properties: Value,
    ) -> Self {
        NewEvent {
            contact_id,
            event_type: event_type.into(),
            occurred_at: at,
            source: source.into(),
            message_id: None,
            properties,
        }
    }
}

/// A stored event, as the timeline shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// Contact.
    pub contact_id: Uuid,
    /// `noun.verb`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// When Kizuna stored it.
    pub received_at: DateTime<Utc>,
    /// Where it came from.
    pub source: String,
    /// Sender's idempotency id.
    pub message_id: Option<String>,
    /// Details.
    pub properties: Value,
    /// For tracked events: the message's context (page, campaign, user agent, library), its
    /// ids and the client's own times. `null` for events Kizuna raises itself.
    pub context: Option<Value>,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    contact_id: Uuid,
    #[sqlx(rename = "type")]
    event_type: String,
    occurred_at: i64,
    received_at: i64,
    source: String,
    message_id: Option<String>,
    properties: Json<Value>,
    context: Option<Json<Value>>,
}

impl From<EventRow> for Event {
    fn from(r: EventRow) -> Self {
        Event {
            id: r.id,
            contact_id: r.contact_id,
            event_type: r.event_type,
            occurred_at: from_micros(r.occurred_at),
            received_at: from_micros(r.received_at),
            source: r.source,
            message_id: r.message_id,
            properties: r.properties.0,
            context: r.context.map(|c| c.0),
        }
    }
}

/// Rows per multi-row INSERT (8 parameters each; well under both backends' limits).
const CHUNK: usize = 1000;

/// Appends events inside a transaction, in multi-row statements. Returns their ids.
///
/// Every row gets its place in the log (`seq`, see migration 0004): on SQLite a block of numbers
/// is taken from `event_log_seq` inside this (writing) transaction, so numbers follow commit
/// order; on PostgreSQL the column defaults fill `seq` and `txid`.
pub async fn append(
    tx: &mut Tx,
    events: Vec<NewEvent>,
    received_at: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    let sqlite = tx.dialect() == crate::db::Dialect::Sqlite;
    let width = if sqlite { 9 } else { 8 };
    let mut ids = Vec::with_capacity(events.len());
    let mut it = events.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<NewEvent> = it.by_ref().take(CHUNK).collect();
        let mut next_seq = 0i64;
        if sqlite {
            let last: crate::db::One<i64> = tx
                .fetch_one(
                    "UPDATE event_log_seq SET last = last + $1 WHERE id = 1 RETURNING last",
                    args![chunk.len() as i64],
                )
                .await?;
            next_seq = last.0 - chunk.len() as i64 + 1;
        }
        let mut sql = String::from(if sqlite {
            "INSERT INTO events (id, contact_id, type, occurred_at, received_at, source, message_id, properties, seq) VALUES "
        } else {
            "INSERT INTO events (id, contact_id, type, occurred_at, received_at, source, message_id, properties) VALUES "
        });
        let mut a: Vec<Val> = Vec::with_capacity(chunk.len() * width);
        for (i, e) in chunk.into_iter().enumerate() {
            let id = Uuid::now_v7();
            ids.push(id);
            if i > 0 {
                sql.push(',');
            }
            let n = a.len();
            sql.push('(');
            for k in 1..=width {
                if k > 1 {
                    sql.push(',');
                }
                sql.push_str(&format!("${}", n + k));
            }
            sql.push(')');
            a.extend(args![
                id,
                e.contact_id,
                e.event_type,
                e.occurred_at,
                received_at,
                e.source,
                e.message_id,
                e.properties
            ]);
            if sqlite {
                a.push(Val::from(next_seq));
                next_seq += 1;
            }
        }
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(ids)
}

/// Filter for a contact's timeline.
#[derive(Debug, Clone, Default)]
pub struct TimelineFilter {
    /// Only these types; a type ending in `.*` matches a whole noun (`email.*`).
    pub types: Vec<String>,
}

impl Store {
    /// A contact's timeline, newest first.
    pub async fn timeline(
        &self,
        contact_id: Uuid,
        filter: &TimelineFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Event>, StoreError> {
        let mut sql = String::from(
            "SELECT id, contact_id, type, occurred_at, received_at, source, message_id, properties, context FROM events WHERE contact_id = $1",
        );
        let mut a = args![contact_id];
        if let Some(c) = cursor {
            sql.push_str(&format!(
                " AND (occurred_at < ${} OR (occurred_at = ${} AND id < ${}))",
                a.len() + 1,
                a.len() + 1,
                a.len() + 2
            ));
            a.extend(args![c.key, c.id]);
        }
        if !filter.types.is_empty() {
            let mut ors = Vec::new();
            for t in &filter.types {
                if let Some(noun) = t.strip_suffix(".*") {
                    ors.push(format!("type LIKE ${}", a.len() + 1));
                    a.push(Val::from(format!("{}.%", noun.replace(['%', '_'], ""))));
                } else {
                    ors.push(format!("type = ${}", a.len() + 1));
                    a.push(Val::from(t.as_str()));
                }
            }
            sql.push_str(&format!(" AND ({})", ors.join(" OR ")));
        }
        sql.push_str(&format!(
            " ORDER BY occurred_at DESC, id DESC LIMIT {}",
            limit + 1
        ));
        let rows: Vec<EventRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        Ok(page_of(
            rows.into_iter().map(Event::from).collect(),
            limit,
            |e| Cursor {
                key: e.occurred_at.timestamp_micros(),
                id: e.id,
            },
        ))
    }

    /// Number of events of a contact (all types).
    pub async fn count_events(&self, contact_id: Uuid) -> Result<i64, StoreError> {
        let n: crate::db::One<i64> = self
            .db()
            .reader()
            .fetch_one(
                "SELECT COUNT(*) FROM events WHERE contact_id = $1",
                args![contact_id],
            )
            .await?;
        Ok(n.0)
    }

    /// Appends events in their own transaction.
    pub async fn append_events(
        &self,
        events: Vec<NewEvent>,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut tx = self.db().begin().await?;
        let ids = append(&mut tx, events, received_at).await?;
        tx.commit().await?;
        Ok(ids)
    }
}

/// Cuts a `limit + 1` fetch to a page and computes the next cursor.
pub(crate) fn page_of<T>(
    mut rows: Vec<T>,
    limit: u32,
    cursor_of: impl Fn(&T) -> Cursor,
) -> Page<T> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| cursor_of(r).encode())
    } else {
        None
    };
    Page {
        data: rows,
        next_cursor,
    }
}
