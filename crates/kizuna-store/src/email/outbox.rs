//! The durable outbox: one row per message, unique per idempotency key, worked by leases so that
//! several nodes share it.
//!
//! States: `queued` → `sending` → `sent` | `deferred` (4xx, retried later) | `failed` (5xx: a
//! hard bounce, or retries exhausted) | `ambiguous` (handed to SMTP, result unknown) |
//! `skipped` (suppressed, no consent, no address, cancelled). `held` is `queued` for a paused
//! broadcast.
//!
//! Claiming sets `sending` with a lease (`lease_owner`, `lease_until`) in one statement —
//! `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING …` on PostgreSQL, the same
//! without the lock clause on SQLite (one writer at a time). Just before a group of messages is
//! given to SMTP, [`Store::mark_emails_handed`] commits `handed_at`. After a crash, a `sending`
//! row whose lease has expired (or that belonged to this node's previous run) goes back to
//! `queued` when it was never handed, and to `ambiguous` when it was: it is reported, never
//! silently sent again.

use super::{id_vals, placeholders};
use crate::db::{One, Tx, Val, from_micros};
use crate::events::{NewEvent, append};
use crate::page::{Cursor, Page};
use crate::{Store, StoreError, args};
use chrono::{DateTime, Duration, Utc};
use kizuna_core::company::Company;
use kizuna_core::contact::Contact;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::types::Json;
use std::collections::HashMap;
use uuid::Uuid;

/// A message to put in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// Unique per message: who, what, which step or broadcast (e.g.
    /// `broadcast:{id}:{contact}`, `program:{run}:{step}:{iteration}`). A second enqueue with
    /// the same key is a no-op.
    pub idempotency_key: String,
    /// Recipient.
    pub contact_id: Uuid,
    /// Template.
    pub template_id: Uuid,
    /// Sender identity (`None`: the installation default).
    pub sender_id: Option<Uuid>,
    /// `identity` or `owner`.
    pub author: String,
    /// `marketing` or `transactional` (from the template).
    pub kind: String,
    /// Subscription type (marketing mail needs consent for it).
    pub subscription_type: Option<String>,
    /// Broadcast, if part of one.
    pub broadcast_id: Option<Uuid>,
    /// A/B variant name.
    pub variant: Option<String>,
    /// A/B subject (template) replacing the template's.
    pub subject_override: Option<String>,
    /// `broadcast`, `program`, `api`, `consent`.
    pub source: String,
    /// Extra data (e.g. the double opt-in request).
    pub payload: Value,
    /// Not before.
    pub due_at: DateTime<Utc>,
}

/// An outbox message, as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EmailMessage {
    /// Id (in Message-ID, X-Kizuna-Message and every link).
    pub id: Uuid,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Recipient.
    pub contact_id: Uuid,
    /// Template.
    pub template_id: Uuid,
    /// Sender.
    pub sender_id: Option<Uuid>,
    /// `identity` or `owner`.
    pub author: String,
    /// `marketing` or `transactional`.
    pub kind: String,
    /// Subscription type.
    pub subscription_type: Option<String>,
    /// Broadcast.
    pub broadcast_id: Option<Uuid>,
    /// A/B variant.
    pub variant: Option<String>,
    /// Where it came from.
    pub source: String,
    /// State.
    pub state: String,
    /// Next attempt not before.
    pub due_at: DateTime<Utc>,
    /// SMTP attempts.
    pub attempts: i64,
    /// Address it was sent to.
    pub to_address: Option<String>,
    /// Subject as sent.
    pub subject: Option<String>,
    /// Why skipped.
    pub skip_reason: Option<String>,
    /// Last error.
    pub last_error: Option<String>,
    /// Last SMTP reply.
    pub smtp_reply: Option<String>,
    /// Enqueued.
    pub created_at: DateTime<Utc>,
    /// Handed to SMTP (last attempt).
    pub handed_at: Option<DateTime<Utc>>,
    /// Accepted by the SMTP server.
    pub sent_at: Option<DateTime<Utc>>,
    /// Delivery confirmed by a notification.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Bounced.
    pub bounced_at: Option<DateTime<Utc>>,
    /// `hard` or `soft`.
    pub bounce_type: Option<String>,
    /// Soft bounces reported.
    pub soft_bounces: i64,
    /// Opens (all).
    pub opens: i64,
    /// Opens by people.
    pub human_opens: i64,
    /// First open.
    pub first_open_at: Option<DateTime<Utc>>,
    /// First open by a person.
    pub first_human_open_at: Option<DateTime<Utc>>,
    /// Clicks (all).
    pub clicks: i64,
    /// Clicks by people.
    pub human_clicks: i64,
    /// First click.
    pub first_click_at: Option<DateTime<Utc>>,
    /// First click by a person.
    pub first_human_click_at: Option<DateTime<Utc>>,
    /// Unsubscribed from this message.
    pub unsubscribed_at: Option<DateTime<Utc>>,
    /// Complaint.
    pub complained_at: Option<DateTime<Utc>>,
    /// How an ambiguous send was resolved (`sent` or `resend`).
    pub resolution: Option<String>,
    /// Tracked links in the message.
    pub link_count: Option<i64>,
}

pub(crate) const COLUMNS: &str = "id, idempotency_key, contact_id, template_id, sender_id, author, kind, subscription_type, broadcast_id, variant, source, state, due_at, attempts, to_address, subject, skip_reason, last_error, smtp_reply, created_at, handed_at, sent_at, delivered_at, bounced_at, bounce_type, soft_bounces, opens, human_opens, first_open_at, first_human_open_at, clicks, human_clicks, first_click_at, first_human_click_at, unsubscribed_at, complained_at, resolution, link_count";

#[derive(sqlx::FromRow)]
pub(crate) struct Row {
    id: Uuid,
    idempotency_key: String,
    contact_id: Uuid,
    template_id: Uuid,
    sender_id: Option<Uuid>,
    author: String,
    kind: String,
    subscription_type: Option<String>,
    broadcast_id: Option<Uuid>,
    variant: Option<String>,
    source: String,
    state: String,
    due_at: i64,
    attempts: i64,
    to_address: Option<String>,
    subject: Option<String>,
    skip_reason: Option<String>,
    last_error: Option<String>,
    smtp_reply: Option<String>,
    created_at: i64,
    handed_at: Option<i64>,
    sent_at: Option<i64>,
    delivered_at: Option<i64>,
    bounced_at: Option<i64>,
    bounce_type: Option<String>,
    soft_bounces: i64,
    opens: i64,
    human_opens: i64,
    first_open_at: Option<i64>,
    first_human_open_at: Option<i64>,
    clicks: i64,
    human_clicks: i64,
    first_click_at: Option<i64>,
    first_human_click_at: Option<i64>,
    unsubscribed_at: Option<i64>,
    complained_at: Option<i64>,
    resolution: Option<String>,
    link_count: Option<i64>,
}

impl From<Row> for EmailMessage {
    fn from(r: Row) -> Self {
        let t = |v: Option<i64>| v.map(from_micros);
        EmailMessage {
            id: r.id,
            idempotency_key: r.idempotency_key,
            contact_id: r.contact_id,
            template_id: r.template_id,
            sender_id: r.sender_id,
            author: r.author,
            kind: r.kind,
            subscription_type: r.subscription_type,
            broadcast_id: r.broadcast_id,
            variant: r.variant,
            source: r.source,
            state: r.state,
            due_at: from_micros(r.due_at),
            attempts: r.attempts,
            to_address: r.to_address,
            subject: r.subject,
            skip_reason: r.skip_reason,
            last_error: r.last_error,
            smtp_reply: r.smtp_reply,
            created_at: from_micros(r.created_at),
            handed_at: t(r.handed_at),
            sent_at: t(r.sent_at),
            delivered_at: t(r.delivered_at),
            bounced_at: t(r.bounced_at),
            bounce_type: r.bounce_type,
            soft_bounces: r.soft_bounces,
            opens: r.opens,
            human_opens: r.human_opens,
            first_open_at: t(r.first_open_at),
            first_human_open_at: t(r.first_human_open_at),
            clicks: r.clicks,
            human_clicks: r.human_clicks,
            first_click_at: t(r.first_click_at),
            first_human_click_at: t(r.first_human_click_at),
            unsubscribed_at: t(r.unsubscribed_at),
            complained_at: t(r.complained_at),
            resolution: r.resolution,
            link_count: r.link_count,
        }
    }
}

/// A message claimed by a worker: what it needs to build and send it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ClaimedMessage {
    /// Id.
    pub id: Uuid,
    /// Recipient.
    pub contact_id: Uuid,
    /// Template.
    pub template_id: Uuid,
    /// Sender.
    pub sender_id: Option<Uuid>,
    /// `identity` or `owner`.
    pub author: String,
    /// `marketing` or `transactional`.
    pub kind: String,
    /// Subscription type.
    pub subscription_type: Option<String>,
    /// Broadcast.
    pub broadcast_id: Option<Uuid>,
    /// A/B variant.
    pub variant: Option<String>,
    /// A/B subject.
    pub subject_override: Option<String>,
    /// Source.
    pub source: String,
    /// Extra data.
    pub payload: Json<Value>,
    /// Attempts so far.
    pub attempts: i64,
    /// Enqueued (microseconds).
    pub created_at: i64,
}

/// What happened to a claimed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Accepted by the SMTP server.
    Sent {
        /// The server's reply.
        smtp_reply: String,
        /// Recipient address.
        to_address: String,
        /// Subject as sent.
        subject: String,
        /// Tracked links in the message.
        link_count: i64,
    },
    /// Temporary failure: try again at `retry_at`.
    Deferred {
        /// What happened.
        error: String,
        /// Next attempt.
        retry_at: DateTime<Utc>,
    },
    /// Permanent failure. `hard_bounce` (a 5xx from the server) suppresses the address.
    Failed {
        /// What happened.
        error: String,
        /// The SMTP code, when the server refused.
        code: Option<u16>,
        /// Suppress the address.
        hard_bounce: bool,
        /// Recipient address, when known.
        to_address: Option<String>,
    },
    /// Handed to SMTP but the result is unknown.
    Ambiguous {
        /// What happened.
        detail: String,
    },
    /// Not sent, on purpose.
    Skipped {
        /// `no_consent`, `unsubscribed`, `hard_bounce`, `complaint`, `blocked`, `erased`,
        /// `no_email`, `contact_deleted`, `cancelled`…
        reason: String,
    },
    /// Not handed to SMTP (rate limited): back to the queue without counting an attempt.
    Requeue {
        /// Not before.
        due_at: DateTime<Utc>,
    },
}

/// A message and its outcome, with what the events need.
#[derive(Debug, Clone)]
pub struct SendResult {
    /// The claimed message.
    pub message: ClaimedMessage,
    /// What happened.
    pub outcome: Outcome,
}

/// Filters for [`Store::list_emails`].
#[derive(Debug, Clone, Default)]
pub struct EmailFilter {
    /// Only this state.
    pub state: Option<String>,
    /// Only this broadcast.
    pub broadcast_id: Option<Uuid>,
    /// Only this contact.
    pub contact_id: Option<Uuid>,
    /// Only this template.
    pub template_id: Option<Uuid>,
}

const CHUNK: usize = 500;

/// Puts messages in the outbox; those whose idempotency key exists are left alone. Returns how
/// many were inserted.
pub async fn enqueue(
    tx: &mut Tx,
    messages: &[NewMessage],
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut inserted = 0;
    for chunk in messages.chunks(CHUNK) {
        let mut sql = String::from(
            "INSERT INTO email_messages (id, idempotency_key, contact_id, template_id, sender_id, author, kind, subscription_type, broadcast_id, variant, subject_override, source, payload, state, due_at, created_at) VALUES ",
        );
        let mut a: Vec<Val> = Vec::with_capacity(chunk.len() * 16);
        for (i, m) in chunk.iter().enumerate() {
            if m.idempotency_key.is_empty() || m.idempotency_key.len() > 400 {
                return Err(StoreError::invalid(
                    "idempotency_key",
                    "invalid_idempotency_key",
                    "an idempotency key is 1 to 400 characters",
                ));
            }
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            sql.push_str(&placeholders(a.len() + 1, 16));
            sql.push(')');
            a.extend(args![
                Uuid::now_v7(),
                m.idempotency_key.as_str(),
                m.contact_id,
                m.template_id,
                m.sender_id,
                m.author.as_str(),
                m.kind.as_str(),
                m.subscription_type.clone(),
                m.broadcast_id,
                m.variant.clone(),
                m.subject_override.clone(),
                m.source.as_str(),
                m.payload.clone(),
                "queued",
                m.due_at,
                now
            ]);
        }
        sql.push_str(" ON CONFLICT (idempotency_key) DO NOTHING");
        inserted += tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(inserted)
}

fn event_props(m: &ClaimedMessage) -> serde_json::Map<String, Value> {
    let mut p = serde_json::Map::new();
    p.insert("message_id".into(), json!(m.id));
    p.insert("template_id".into(), json!(m.template_id));
    if let Some(b) = m.broadcast_id {
        p.insert("broadcast_id".into(), json!(b));
    }
    if let Some(v) = &m.variant {
        p.insert("variant".into(), json!(v));
    }
    if let Some(t) = &m.subscription_type {
        p.insert("subscription_type".into(), json!(t));
    }
    p.insert("source".into(), json!(m.source));
    p
}

/// Everything a worker needs to build a batch of messages, loaded in a few queries.
#[derive(Debug, Default)]
pub struct SendContext {
    /// Contacts by id.
    pub contacts: HashMap<Uuid, Contact>,
    /// Their companies by id.
    pub companies: HashMap<Uuid, Company>,
    /// Their owners by user id: (name, email).
    pub owners: HashMap<Uuid, (String, String)>,
    /// Suppressed addresses (normalized) and why.
    pub suppressed: HashMap<String, String>,
}

impl Store {
    /// Puts one message in the outbox. Returns the message and whether it was created (a
    /// duplicate idempotency key returns the existing message unchanged).
    pub async fn enqueue_email(
        &self,
        m: &NewMessage,
        now: DateTime<Utc>,
    ) -> Result<(EmailMessage, bool), StoreError> {
        let mut tx = self.db().begin().await?;
        let n = enqueue(&mut tx, std::slice::from_ref(m), now).await?;
        tx.commit().await?;
        let r: Row = self
            .db()
            .reader()
            .fetch_one(
                sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM email_messages WHERE idempotency_key = $1"
                )),
                args![m.idempotency_key.as_str()],
            )
            .await?;
        Ok((r.into(), n == 1))
    }

    /// Puts many messages in the outbox in one transaction; returns how many were new.
    pub async fn enqueue_emails(
        &self,
        messages: &[NewMessage],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.db().begin().await?;
        let n = enqueue(&mut tx, messages, now).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// A message by id.
    pub async fn email(&self, id: Uuid) -> Result<EmailMessage, StoreError> {
        let r: Row = self
            .db()
            .reader()
            .fetch_one(
                sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM email_messages WHERE id = $1"
                )),
                args![id],
            )
            .await?;
        Ok(r.into())
    }

    /// Messages, newest first, filtered.
    pub async fn list_emails(
        &self,
        f: &EmailFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<EmailMessage>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM email_messages WHERE 1=1");
        let mut a: Vec<Val> = Vec::new();
        if let Some(s) = &f.state {
            a.push(s.as_str().into());
            sql.push_str(&format!(" AND state = ${}", a.len()));
        }
        if let Some(b) = f.broadcast_id {
            a.push(b.into());
            sql.push_str(&format!(" AND broadcast_id = ${}", a.len()));
        }
        if let Some(c) = f.contact_id {
            a.push(c.into());
            sql.push_str(&format!(" AND contact_id = ${}", a.len()));
        }
        if let Some(t) = f.template_id {
            a.push(t.into());
            sql.push_str(&format!(" AND template_id = ${}", a.len()));
        }
        if let Some(c) = cursor {
            a.push(c.id.into());
            sql.push_str(&format!(" AND id < ${}", a.len()));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
        let rows: Vec<Row> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        Ok(crate::events::page_of(
            rows.into_iter().map(EmailMessage::from).collect(),
            limit,
            |m| Cursor { key: 0, id: m.id },
        ))
    }

    /// Claims up to `limit` due messages for `owner` until `lease_until`.
    pub async fn claim_due_emails(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        let lock = match self.dialect() {
            crate::db::Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            crate::db::Dialect::Sqlite => "",
        };
        let sql = format!(
            "UPDATE email_messages SET state = 'sending', lease_owner = $1, lease_until = $2, handed_at = NULL \
             WHERE id IN (SELECT id FROM email_messages WHERE state IN ('queued', 'deferred') AND due_at <= $3 ORDER BY due_at, id LIMIT {limit}{lock}) \
             RETURNING id, contact_id, template_id, sender_id, author, kind, subscription_type, broadcast_id, variant, subject_override, source, payload, attempts, created_at"
        );
        let mut tx = self.db().begin().await?;
        let mut rows: Vec<ClaimedMessage> = tx
            .fetch_all(sqlx::AssertSqlSafe(sql), args![owner, lease_until, now])
            .await?;
        tx.commit().await?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Records that these claimed messages are about to be given to SMTP (committed before
    /// the first byte is sent). Returns the ids still leased by `owner` — only those may be sent.
    pub async fn mark_emails_handed(
        &self,
        owner: &str,
        ids: &[Uuid],
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, StoreError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let mut tx = self.db().begin().await?;
        let mut ok = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "UPDATE email_messages SET handed_at = $1, attempts = attempts + 1, lease_until = $2 WHERE state = 'sending' AND lease_owner = $3 AND id IN ({}) RETURNING id",
                placeholders(4, chunk.len())
            );
            let mut a = args![now, lease_until, owner];
            a.extend(id_vals(chunk));
            let r: Vec<One<Uuid>> = tx.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
            ok.extend(r.into_iter().map(|r| r.0));
        }
        tx.commit().await?;
        Ok(ok)
    }

    /// Records what happened to claimed messages, with their events and suppressions, in one
    /// transaction. A row no longer leased by `owner` is left alone.
    pub async fn record_email_results(
        &self,
        owner: &str,
        results: &[SendResult],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if results.is_empty() {
            return Ok(());
        }
        let mut tx = self.db().begin().await?;
        let mut events = Vec::new();
        let guard = "WHERE id = $1 AND state = 'sending' AND lease_owner = $2";
        for r in results {
            let m = &r.message;
            let props = event_props(m);
            let n = match &r.outcome {
                Outcome::Sent {
                    smtp_reply,
                    to_address,
                    subject,
                    link_count,
                } => {
                    let n = tx
                        .execute(
                            sqlx::AssertSqlSafe(format!("UPDATE email_messages SET state = 'sent', sent_at = $3, smtp_reply = $4, to_address = $5, subject = $6, link_count = $7, last_error = NULL, lease_owner = NULL, lease_until = NULL {guard}")),
                            args![m.id, owner, now, smtp_reply.as_str(), to_address.as_str(), subject.as_str(), *link_count],
                        )
                        .await?;
                    if n > 0 {
                        let mut p = props;
                        p.insert("subject".into(), json!(subject));
                        events.push(NewEvent::new(
                            m.contact_id,
                            "email.sent",
                            now,
                            "kizuna",
                            Value::Object(p),
                        ));
                    }
                    n
                }
                Outcome::Deferred { error, retry_at } => {
                    tx.execute(
                        sqlx::AssertSqlSafe(format!("UPDATE email_messages SET state = 'deferred', due_at = $3, last_error = $4, lease_owner = NULL, lease_until = NULL {guard}")),
                        args![m.id, owner, *retry_at, error.as_str()],
                    )
                    .await?
                }
                Outcome::Failed {
                    error,
                    code,
                    hard_bounce,
                    to_address,
                } => {
                    let n = tx
                        .execute(
                            sqlx::AssertSqlSafe(format!("UPDATE email_messages SET state = 'failed', failed_at = $3, last_error = $4, to_address = COALESCE($5, to_address), bounced_at = CASE WHEN $6 = 1 THEN $3 ELSE bounced_at END, bounce_type = CASE WHEN $6 = 1 THEN 'hard' ELSE bounce_type END, lease_owner = NULL, lease_until = NULL {guard}")),
                            args![m.id, owner, now, error.as_str(), to_address.clone(), i64::from(*hard_bounce)],
                        )
                        .await?;
                    if n > 0 && *hard_bounce {
                        if let Some(addr) = to_address {
                            crate::suppressions::add(&mut tx, addr, "hard_bounce", now).await?;
                        }
                        let mut p = props;
                        p.insert("bounce_type".into(), json!("hard"));
                        p.insert("smtp_code".into(), json!(code));
                        p.insert("detail".into(), json!(error));
                        p.insert("during".into(), json!("smtp"));
                        events.push(NewEvent::new(
                            m.contact_id,
                            "email.bounced",
                            now,
                            "kizuna",
                            Value::Object(p),
                        ));
                    }
                    n
                }
                Outcome::Ambiguous { detail } => {
                    tx.execute(
                        sqlx::AssertSqlSafe(format!("UPDATE email_messages SET state = 'ambiguous', last_error = $3, lease_owner = NULL, lease_until = NULL {guard}")),
                        args![m.id, owner, detail.as_str()],
                    )
                    .await?
                }
                Outcome::Skipped { reason } => {
                    tx.execute(
                        sqlx::AssertSqlSafe(format!("UPDATE email_messages SET state = 'skipped', skip_reason = $3, lease_owner = NULL, lease_until = NULL {guard}")),
                        args![m.id, owner, reason.as_str()],
                    )
                    .await?
                }
                Outcome::Requeue { due_at } => {
                    tx.execute(
                        sqlx::AssertSqlSafe(format!("UPDATE email_messages SET state = 'queued', due_at = $3, handed_at = NULL, lease_owner = NULL, lease_until = NULL {guard}")),
                        args![m.id, owner, *due_at],
                    )
                    .await?
                }
            };
            if n == 0 {
                tracing::warn!(message = %m.id, "lease lost before the result was recorded");
            }
        }
        append(&mut tx, events, now).await?;
        tx.commit().await
    }

    /// Returns expired leases to the queue: never-handed messages become `queued` again, handed
    /// ones `ambiguous`. `own_previous_run` also recovers at once every lease held by that owner
    /// name (this node before a restart), expired or not. Returns (requeued, ambiguous).
    pub async fn recover_email_leases(
        &self,
        now: DateTime<Utc>,
        own_previous_run: Option<&str>,
    ) -> Result<(u64, u64), StoreError> {
        let owner = own_previous_run.unwrap_or("");
        let mut tx = self.db().begin().await?;
        let requeued = tx
            .execute(
                "UPDATE email_messages SET state = 'queued', lease_owner = NULL, lease_until = NULL WHERE state = 'sending' AND handed_at IS NULL AND (lease_until < $1 OR (lease_owner = $2 AND $2 <> ''))",
                args![now, owner],
            )
            .await?;
        let ambiguous = tx
            .execute(
                "UPDATE email_messages SET state = 'ambiguous', last_error = 'the node sending it stopped before the SMTP result was recorded', lease_owner = NULL, lease_until = NULL WHERE state = 'sending' AND handed_at IS NOT NULL AND (lease_until < $1 OR (lease_owner = $2 AND $2 <> ''))",
                args![now, owner],
            )
            .await?;
        tx.commit().await?;
        Ok((requeued, ambiguous))
    }

    /// Resolves an ambiguous message after checking with the relay: `sent` (it was delivered)
    /// or `resend` (it was not: queue it again).
    pub async fn resolve_ambiguous_email(
        &self,
        id: Uuid,
        resolution: &str,
        now: DateTime<Utc>,
    ) -> Result<EmailMessage, StoreError> {
        let sql = match resolution {
            "sent" => {
                "UPDATE email_messages SET state = 'sent', sent_at = COALESCE(handed_at, $2), resolution = 'sent', resolved_at = $2 WHERE id = $1 AND state = 'ambiguous'"
            }
            "resend" => {
                "UPDATE email_messages SET state = 'queued', due_at = $2, handed_at = NULL, resolution = 'resend', resolved_at = $2 WHERE id = $1 AND state = 'ambiguous'"
            }
            _ => {
                return Err(StoreError::invalid(
                    "resolution",
                    "invalid_resolution",
                    "resolution is sent or resend",
                ));
            }
        };
        let mut tx = self.db().begin().await?;
        let n = tx.execute(sql, args![id, now]).await?;
        if n == 0 {
            let exists: Option<One<String>> = tx
                .fetch_optional("SELECT state FROM email_messages WHERE id = $1", args![id])
                .await?;
            return Err(match exists {
                None => StoreError::NotFound,
                Some(s) => StoreError::conflict(
                    "state",
                    format!(
                        "only an ambiguous message can be resolved; this one is {}",
                        s.0
                    ),
                ),
            });
        }
        if resolution == "sent" {
            let m: Row = tx
                .fetch_one(
                    sqlx::AssertSqlSafe(format!(
                        "SELECT {COLUMNS} FROM email_messages WHERE id = $1"
                    )),
                    args![id],
                )
                .await?;
            let m: EmailMessage = m.into();
            append(
                &mut tx,
                vec![NewEvent::new(
                    m.contact_id,
                    "email.sent",
                    now,
                    "kizuna",
                    json!({"message_id": m.id, "template_id": m.template_id, "broadcast_id": m.broadcast_id, "resolved": true}),
                )],
                now,
            )
            .await?;
        }
        tx.commit().await?;
        self.email(id).await
    }

    /// Counts of messages per state (all, or of one broadcast).
    pub async fn email_state_counts(
        &self,
        broadcast_id: Option<Uuid>,
    ) -> Result<HashMap<String, i64>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct C {
            state: String,
            n: i64,
        }
        let rows: Vec<C> = match broadcast_id {
            Some(b) => {
                self.db()
                    .reader()
                    .fetch_all(
                        "SELECT state, COUNT(*) AS n FROM email_messages WHERE broadcast_id = $1 GROUP BY state",
                        args![b],
                    )
                    .await?
            }
            None => {
                self.db()
                    .reader()
                    .fetch_all(
                        "SELECT state, COUNT(*) AS n FROM email_messages GROUP BY state",
                        vec![],
                    )
                    .await?
            }
        };
        Ok(rows.into_iter().map(|c| (c.state, c.n)).collect())
    }

    /// Loads the contacts, companies, owners and suppressions a batch of messages needs.
    pub async fn email_send_context(
        &self,
        contact_ids: &[Uuid],
    ) -> Result<SendContext, StoreError> {
        let mut ctx = SendContext::default();
        let r = self.db().reader();
        let mut r = r;
        for chunk in contact_ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT {} FROM contacts WHERE id IN ({})",
                crate::contacts::COLUMNS,
                placeholders(1, chunk.len())
            );
            let rows: Vec<crate::contacts::ContactRow> = r
                .fetch_all(sqlx::AssertSqlSafe(sql), id_vals(chunk))
                .await?;
            for row in rows {
                let c: Contact = row.into();
                ctx.contacts.insert(c.id, c);
            }
        }
        let company_ids: Vec<Uuid> = {
            let mut v: Vec<Uuid> = ctx.contacts.values().filter_map(|c| c.company_id).collect();
            v.sort();
            v.dedup();
            v
        };
        for chunk in company_ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT {} FROM companies WHERE id IN ({})",
                crate::companies::COLUMNS,
                placeholders(1, chunk.len())
            );
            let rows: Vec<crate::companies::CompanyRow> = r
                .fetch_all(sqlx::AssertSqlSafe(sql), id_vals(chunk))
                .await?;
            for row in rows {
                let c: Company = row.into();
                ctx.companies.insert(c.id, c);
            }
        }
        let owner_ids: Vec<Uuid> = {
            let mut v: Vec<Uuid> = ctx.contacts.values().filter_map(|c| c.owner_id).collect();
            v.sort();
            v.dedup();
            v
        };
        #[derive(sqlx::FromRow)]
        struct U {
            id: Uuid,
            name: String,
            email: String,
        }
        for chunk in owner_ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT id, name, email FROM users WHERE id IN ({})",
                placeholders(1, chunk.len())
            );
            let rows: Vec<U> = r
                .fetch_all(sqlx::AssertSqlSafe(sql), id_vals(chunk))
                .await?;
            for u in rows {
                ctx.owners.insert(u.id, (u.name, u.email));
            }
        }
        let emails: Vec<(String, String)> = ctx
            .contacts
            .values()
            .filter_map(|c| c.email.clone())
            .map(|e| (kizuna_core::email_address::email_fingerprint(&e), e))
            .collect();
        #[derive(sqlx::FromRow)]
        struct S {
            email_fingerprint: String,
            reason: String,
        }
        let by_fp: HashMap<&str, &str> = emails
            .iter()
            .map(|(f, e)| (f.as_str(), e.as_str()))
            .collect();
        for chunk in emails.chunks(CHUNK) {
            let sql = format!(
                "SELECT email_fingerprint, reason FROM suppressions WHERE email_fingerprint IN ({})",
                placeholders(1, chunk.len())
            );
            let a: Vec<Val> = chunk.iter().map(|(f, _)| Val::from(f.as_str())).collect();
            let rows: Vec<S> = r.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
            for s in rows {
                if let Some(e) = by_fp.get(s.email_fingerprint.as_str()) {
                    ctx.suppressed.insert((*e).to_string(), s.reason);
                }
            }
        }
        Ok(ctx)
    }
}

/// Default retry schedule after a temporary failure: the wait before attempt `n + 1`.
pub fn retry_delay(attempts: i64) -> Duration {
    const MINUTES: [i64; 8] = [1, 5, 15, 30, 60, 120, 240, 480];
    let i = usize::try_from(attempts.max(1) - 1)
        .unwrap_or(0)
        .min(MINUTES.len() - 1);
    Duration::minutes(MINUTES[i])
}
