//! Broadcasts (newsletters): one template to an audience, scheduled, throttled, pausable, with
//! an optional A/B test of subject or content decided by a winner rule.
//!
//! A broadcast is expanded into the outbox in batches: each batch reads the next contacts of the
//! audience after `cursor` (ordered by contact id), inserts their messages (idempotency key
//! `broadcast:{id}:{contact}`) and moves the cursor, in one transaction. A crash between batches
//! resumes at the cursor; a repeated batch inserts nothing. Throttling spaces the messages'
//! `due_at` (`60 s / throttle_per_minute` apart); pausing moves waiting messages to `held` and
//! stops expansion; resuming shifts them by the pause's length. With an A/B test, a stable hash
//! of (broadcast, contact) puts `test_percent` % of the audience in the test group (phase 1,
//! split evenly between variants); after `wait_minutes` the winner rule picks a variant and the
//! rest of the audience gets it (phase 2).
//!
//! The audience ([`Audience`]) is a static list or a segment kept by the engine; either is paged
//! by contact id in [`audience_page`], so a segment's members are taken as they are when each
//! batch is enqueued.

use super::metrics::EmailMetrics;
use super::outbox::{NewMessage, enqueue};
use crate::db::{Dialect, One, Tx, from_micros};
use crate::{Store, StoreError, args};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use std::collections::HashMap;
use uuid::Uuid;

/// Who a broadcast goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// A static list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_id: Option<Uuid>,
    /// A segment kept by the engine: its members at the time each batch is enqueued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_id: Option<Uuid>,
}

impl Audience {
    /// Everyone on a static list.
    pub fn list(id: Uuid) -> Audience {
        Audience {
            list_id: Some(id),
            segment_id: None,
        }
    }

    /// The members of a segment.
    pub fn segment(id: Uuid) -> Audience {
        Audience {
            list_id: None,
            segment_id: Some(id),
        }
    }

    /// The membership table, its key column and the id (a list wins if both were set; the API
    /// refuses that).
    fn source(&self) -> (&'static str, &'static str, Uuid) {
        match (self.list_id, self.segment_id) {
            (Some(l), _) => ("list_members", "list_id", l),
            (None, Some(sg)) => ("segment_members", "segment_id", sg),
            (None, None) => ("list_members", "list_id", Uuid::nil()),
        }
    }
}

/// One A/B variant: a subject and/or a template replacing the broadcast's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// `A`, `B`, …
    pub name: String,
    /// Subject (template) for this variant.
    #[serde(default)]
    pub subject: Option<String>,
    /// Template for this variant.
    #[serde(default)]
    pub template_id: Option<Uuid>,
}

/// Which figure wins an A/B test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WinnerMetric {
    /// Unique human opens / delivered.
    OpenRate,
    /// Unique human clicks / delivered.
    ClickRate,
    /// Unique human clicks / unique human opens.
    ClickToOpenRate,
}

/// An A/B test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbTest {
    /// Two or more variants.
    pub variants: Vec<Variant>,
    /// Share of the audience in the test group, 1–100 (100: no remainder, the test is the
    /// whole send and the winner is only reported).
    pub test_percent: u8,
    /// The winner rule.
    pub metric: WinnerMetric,
    /// How long after the test group was enqueued the winner is decided.
    pub wait_minutes: i64,
}

/// A broadcast.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Broadcast {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// `draft`, `scheduled`, `sending`, `paused`, `sent`, `cancelled`.
    pub status: String,
    /// Template.
    pub template_id: Uuid,
    /// Sender.
    pub sender_id: Uuid,
    /// `identity` or `owner`.
    pub author: String,
    /// Subscription type (recipients need consent for it).
    pub subscription_type: String,
    /// Audience.
    pub audience: Audience,
    /// Messages per minute at most.
    pub throttle_per_minute: Option<i64>,
    /// A/B test.
    pub ab: Option<AbTest>,
    /// The winning variant.
    pub winner: Option<String>,
    /// 0 not started, 1 A/B test group, 2 everyone (or the remainder), 3 fully enqueued.
    pub phase: i64,
    /// Messages enqueued so far.
    pub enqueued: i64,
    /// When to start.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Paused at.
    pub paused_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Changed.
    pub updated_at: DateTime<Utc>,
}

/// What a broadcast is made of.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastInput {
    /// Name.
    pub name: String,
    /// Template.
    pub template_id: Uuid,
    /// Sender.
    pub sender_id: Uuid,
    /// `identity` (default) or `owner`.
    #[serde(default = "identity")]
    pub author: String,
    /// Subscription type.
    pub subscription_type: String,
    /// Audience.
    pub audience: Audience,
    /// Messages per minute at most.
    #[serde(default)]
    pub throttle_per_minute: Option<i64>,
    /// A/B test.
    #[serde(default)]
    pub ab: Option<AbTest>,
}

fn identity() -> String {
    "identity".into()
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    status: String,
    template_id: Uuid,
    sender_id: Uuid,
    author: String,
    subscription_type: String,
    audience: Json<Value>,
    throttle_per_minute: Option<i64>,
    ab: Option<Json<Value>>,
    winner: Option<String>,
    phase: i64,
    cursor: Option<Uuid>,
    next_due_at: Option<i64>,
    enqueued: i64,
    test_expanded_at: Option<i64>,
    scheduled_at: Option<i64>,
    started_at: Option<i64>,
    paused_at: Option<i64>,
    finished_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

const SELECT: &str = "SELECT id, name, status, template_id, sender_id, author, subscription_type, audience, throttle_per_minute, ab, winner, phase, cursor, next_due_at, enqueued, test_expanded_at, scheduled_at, started_at, paused_at, finished_at, created_at, updated_at FROM broadcasts";

impl Row {
    fn to_broadcast(&self) -> Broadcast {
        let t = |v: Option<i64>| v.map(from_micros);
        Broadcast {
            id: self.id,
            name: self.name.clone(),
            status: self.status.clone(),
            template_id: self.template_id,
            sender_id: self.sender_id,
            author: self.author.clone(),
            subscription_type: self.subscription_type.clone(),
            audience: serde_json::from_value(self.audience.0.clone())
                .unwrap_or(Audience::list(Uuid::nil())),
            throttle_per_minute: self.throttle_per_minute,
            ab: self
                .ab
                .as_ref()
                .and_then(|a| serde_json::from_value(a.0.clone()).ok()),
            winner: self.winner.clone(),
            phase: self.phase,
            enqueued: self.enqueued,
            scheduled_at: t(self.scheduled_at),
            started_at: t(self.started_at),
            paused_at: t(self.paused_at),
            finished_at: t(self.finished_at),
            created_at: from_micros(self.created_at),
            updated_at: from_micros(self.updated_at),
        }
    }
}

fn check(i: &BroadcastInput) -> Result<(), StoreError> {
    if i.name.trim().is_empty() {
        return Err(StoreError::invalid("name", "required", "name is required"));
    }
    if !matches!(i.author.as_str(), "identity" | "owner") {
        return Err(StoreError::invalid(
            "author",
            "invalid_author",
            "author is identity or owner",
        ));
    }
    if let Some(t) = i.throttle_per_minute
        && t < 1
    {
        return Err(StoreError::invalid(
            "throttle_per_minute",
            "invalid_throttle",
            "throttle_per_minute must be at least 1",
        ));
    }
    if let Some(ab) = &i.ab {
        if ab.variants.len() < 2 {
            return Err(StoreError::invalid(
                "ab.variants",
                "too_few_variants",
                "an A/B test needs at least two variants",
            ));
        }
        let mut names: Vec<&str> = ab.variants.iter().map(|v| v.name.as_str()).collect();
        names.sort();
        names.dedup();
        if names.len() != ab.variants.len() || names.iter().any(|n| n.trim().is_empty()) {
            return Err(StoreError::invalid(
                "ab.variants",
                "invalid_variant_names",
                "variant names must be unique and not empty",
            ));
        }
        if !(1..=100).contains(&ab.test_percent) {
            return Err(StoreError::invalid(
                "ab.test_percent",
                "invalid_percent",
                "test_percent is 1 to 100",
            ));
        }
        if ab.wait_minutes < 0 {
            return Err(StoreError::invalid(
                "ab.wait_minutes",
                "invalid_wait",
                "wait_minutes cannot be negative",
            ));
        }
    }
    Ok(())
}

/// Stable 64-bit hash of (broadcast, contact, salt).
fn bucket(broadcast: Uuid, contact: Uuid, salt: u8) -> u64 {
    let mut h = Sha256::new();
    h.update(broadcast.as_bytes());
    h.update(contact.as_bytes());
    h.update([salt]);
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]))
}

/// Whether a contact is in the A/B test group, and which variant it gets there.
pub fn ab_assignment(broadcast: Uuid, contact: Uuid, ab: &AbTest) -> Option<usize> {
    let in_test = bucket(broadcast, contact, 0) % 10_000 < u64::from(ab.test_percent) * 100;
    in_test.then(|| (bucket(broadcast, contact, 1) % ab.variants.len() as u64) as usize)
}

/// The next contacts of an audience after `cursor`, in contact-id order. This is the one place
/// that knows how an audience is enumerated: a segment audience adds a query here.
pub async fn audience_page(
    tx: &mut Tx,
    audience: &Audience,
    cursor: Option<Uuid>,
    limit: usize,
) -> Result<Vec<Uuid>, StoreError> {
    let (table, key, id) = audience.source();
    let rows: Vec<One<Uuid>> = match cursor {
        Some(c) => {
            tx.fetch_all(
                sqlx::AssertSqlSafe(format!("SELECT contact_id FROM {table} WHERE {key} = $1 AND contact_id > $2 ORDER BY contact_id LIMIT {limit}")),
                args![id, c],
            )
            .await?
        }
        None => {
            tx.fetch_all(
                sqlx::AssertSqlSafe(format!("SELECT contact_id FROM {table} WHERE {key} = $1 ORDER BY contact_id LIMIT {limit}")),
                args![id],
            )
            .await?
        }
    };
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// The audience's size.
pub async fn audience_size(tx: &mut Tx, audience: &Audience) -> Result<i64, StoreError> {
    let (table, key, id) = audience.source();
    let n: One<i64> = tx
        .fetch_one(
            sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table} WHERE {key} = $1")),
            args![id],
        )
        .await?;
    Ok(n.0)
}

async fn lock(tx: &mut Tx, id: Uuid) -> Result<Row, StoreError> {
    let sql = match tx.dialect() {
        Dialect::Postgres => format!("{SELECT} WHERE id = $1 FOR UPDATE"),
        Dialect::Sqlite => format!("{SELECT} WHERE id = $1"),
    };
    tx.fetch_one(sqlx::AssertSqlSafe(sql), args![id]).await
}

/// What one expansion step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expansion {
    /// Messages inserted.
    pub inserted: u64,
    /// Contacts read from the audience.
    pub read: usize,
    /// The broadcast has more to expand right now.
    pub more: bool,
}

/// A broadcast's live progress.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Progress {
    /// Contacts in the audience now.
    pub audience: i64,
    /// Messages enqueued.
    pub enqueued: i64,
    /// Messages per state.
    pub states: HashMap<String, i64>,
    /// Per-variant figures (A/B), or the one `all` entry.
    pub variants: Vec<(String, EmailMetrics)>,
}

impl Store {
    /// Adds a draft broadcast.
    pub async fn create_broadcast(
        &self,
        i: BroadcastInput,
        now: DateTime<Utc>,
    ) -> Result<Broadcast, StoreError> {
        check(&i)?;
        let id = Uuid::now_v7();
        self.db()
            .reader()
            .execute(
                "INSERT INTO broadcasts (id, name, status, template_id, sender_id, author, subscription_type, audience, throttle_per_minute, ab, created_at, updated_at) VALUES ($1,$2,'draft',$3,$4,$5,$6,$7,$8,$9,$10,$10)",
                args![id, i.name.trim(), i.template_id, i.sender_id, i.author, i.subscription_type, json!(i.audience), i.throttle_per_minute, i.ab.as_ref().map(|a| json!(a)), now],
            )
            .await?;
        self.broadcast(id).await
    }

    /// Replaces a draft or scheduled broadcast.
    pub async fn update_broadcast(
        &self,
        id: Uuid,
        i: BroadcastInput,
        now: DateTime<Utc>,
    ) -> Result<Broadcast, StoreError> {
        check(&i)?;
        let mut tx = self.db().begin().await?;
        let r = lock(&mut tx, id).await?;
        if !matches!(r.status.as_str(), "draft" | "scheduled") {
            return Err(StoreError::conflict(
                "status",
                format!("a {} broadcast cannot be changed", r.status),
            ));
        }
        tx.execute(
            "UPDATE broadcasts SET name=$2, template_id=$3, sender_id=$4, author=$5, subscription_type=$6, audience=$7, throttle_per_minute=$8, ab=$9, updated_at=$10 WHERE id=$1",
            args![id, i.name.trim(), i.template_id, i.sender_id, i.author, i.subscription_type, json!(i.audience), i.throttle_per_minute, i.ab.as_ref().map(|a| json!(a)), now],
        )
        .await?;
        tx.commit().await?;
        self.broadcast(id).await
    }

    /// A broadcast.
    pub async fn broadcast(&self, id: Uuid) -> Result<Broadcast, StoreError> {
        let r: Row = self
            .db()
            .reader()
            .fetch_one(
                sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1")),
                args![id],
            )
            .await?;
        Ok(r.to_broadcast())
    }

    /// Every broadcast, newest first.
    pub async fn broadcasts(&self) -> Result<Vec<Broadcast>, StoreError> {
        let rows: Vec<Row> = self
            .db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY id DESC")),
                vec![],
            )
            .await?;
        Ok(rows.iter().map(Row::to_broadcast).collect())
    }

    /// Schedules a draft (or reschedules a scheduled) broadcast to start at `at`.
    pub async fn schedule_broadcast(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Broadcast, StoreError> {
        self.transition(id, &["draft", "scheduled"], |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE broadcasts SET status='scheduled', scheduled_at=$2, updated_at=$3 WHERE id=$1",
                    args![id, at, now],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }

    /// Pauses a scheduled or sending broadcast: no new messages are enqueued and waiting ones
    /// are held (messages already handed to SMTP finish).
    pub async fn pause_broadcast(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Broadcast, StoreError> {
        self.transition(id, &["scheduled", "sending"], |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE broadcasts SET status='paused', paused_at=$2, updated_at=$2 WHERE id=$1",
                    args![id, now],
                )
                .await?;
                tx.execute(
                    "UPDATE email_messages SET state='held' WHERE broadcast_id=$1 AND state IN ('queued','deferred')",
                    args![id],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }

    /// Resumes a paused broadcast where it stopped: held messages are due again, shifted by the
    /// length of the pause (so throttling holds).
    pub async fn resume_broadcast(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Broadcast, StoreError> {
        self.transition(id, &["paused"], |tx| {
            Box::pin(async move {
                let r = lock(tx, id).await?;
                let shift = r.paused_at.map(|p| now.timestamp_micros() - p).unwrap_or(0).max(0);
                let status = if r.started_at.is_some() { "sending" } else { "scheduled" };
                tx.execute(
                    "UPDATE broadcasts SET status=$2, paused_at=NULL, next_due_at = CASE WHEN next_due_at IS NULL THEN NULL ELSE next_due_at + $3 END, updated_at=$4 WHERE id=$1",
                    args![id, status, shift, now],
                )
                .await?;
                tx.execute(
                    "UPDATE email_messages SET state='queued', due_at = due_at + $2 WHERE broadcast_id=$1 AND state='held'",
                    args![id, shift],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }

    /// Cancels a broadcast: messages not yet sent are skipped (reason `cancelled`).
    pub async fn cancel_broadcast(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Broadcast, StoreError> {
        self.transition(id, &["draft", "scheduled", "sending", "paused"], |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE broadcasts SET status='cancelled', finished_at=$2, updated_at=$2 WHERE id=$1",
                    args![id, now],
                )
                .await?;
                tx.execute(
                    "UPDATE email_messages SET state='skipped', skip_reason='cancelled' WHERE broadcast_id=$1 AND state IN ('queued','deferred','held')",
                    args![id],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }

    async fn transition<F>(&self, id: Uuid, from: &[&str], f: F) -> Result<Broadcast, StoreError>
    where
        F: for<'t> FnOnce(
            &'t mut Tx,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 't>,
        >,
    {
        let mut tx = self.db().begin().await?;
        let r = lock(&mut tx, id).await?;
        if !from.contains(&r.status.as_str()) {
            return Err(StoreError::conflict(
                "status",
                format!(
                    "the broadcast is {}; this needs it to be {}",
                    r.status,
                    from.join(" or ")
                ),
            ));
        }
        f(&mut tx).await?;
        tx.commit().await?;
        self.broadcast(id).await
    }

    /// Broadcasts the scheduler must look at: scheduled ones whose time has come, and sending
    /// ones.
    pub async fn active_broadcasts(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<Broadcast>, StoreError> {
        let rows: Vec<Row> = self
            .db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!("{SELECT} WHERE (status = 'scheduled' AND scheduled_at <= $1) OR status = 'sending' ORDER BY id")),
                args![now],
            )
            .await?;
        Ok(rows.iter().map(Row::to_broadcast).collect())
    }

    /// One step of a broadcast's life, driven by the scheduler: start it when due, enqueue the
    /// next batch of up to `batch` contacts, decide an A/B winner when its time has come, and
    /// mark it sent when every message is done. Safe to run on several nodes at once.
    pub async fn advance_broadcast(
        &self,
        id: Uuid,
        template_kind: &str,
        batch: usize,
        now: DateTime<Utc>,
    ) -> Result<Expansion, StoreError> {
        let mut tx = self.db().begin().await?;
        let r = lock(&mut tx, id).await?;
        let b = r.to_broadcast();
        let mut out = Expansion::default();
        match b.status.as_str() {
            "scheduled" if b.scheduled_at.is_some_and(|s| s <= now) => {
                let phase = if b.ab.is_some() { 1 } else { 2 };
                tx.execute(
                    "UPDATE broadcasts SET status='sending', started_at=$2, phase=$3, cursor=NULL, next_due_at=$2, updated_at=$2 WHERE id=$1",
                    args![id, now, phase],
                )
                .await?;
                out.more = true;
            }
            "sending" if b.phase == 1 && r.test_expanded_at.is_some() => {
                let ab = b.ab.clone().unwrap_or(AbTest {
                    variants: vec![],
                    test_percent: 100,
                    metric: WinnerMetric::OpenRate,
                    wait_minutes: 0,
                });
                let decide_at = from_micros(r.test_expanded_at.unwrap_or(0))
                    + Duration::minutes(ab.wait_minutes);
                if now >= decide_at {
                    let winner = decide_winner(&mut tx, id, &ab).await?;
                    tx.execute(
                        "UPDATE broadcasts SET winner=$2, phase=2, cursor=NULL, updated_at=$3 WHERE id=$1",
                        args![id, winner, now],
                    )
                    .await?;
                    out.more = true;
                }
            }
            "sending" if b.phase == 1 || b.phase == 2 => {
                let contacts = audience_page(&mut tx, &b.audience, r.cursor, batch).await?;
                out.read = contacts.len();
                let mut next_due =
                    from_micros(r.next_due_at.unwrap_or(now.timestamp_micros())).max(now);
                let step = b
                    .throttle_per_minute
                    .map(|t| Duration::microseconds(60_000_000 / t.max(1)));
                let mut msgs = Vec::with_capacity(contacts.len());
                for c in &contacts {
                    let (variant, in_phase) = match (&b.ab, b.phase) {
                        (None, _) => (None, true),
                        (Some(ab), 1) => match ab_assignment(id, *c, ab) {
                            Some(v) => (Some(&ab.variants[v]), true),
                            None => (None, false),
                        },
                        (Some(ab), _) => (
                            ab.variants
                                .iter()
                                .find(|v| Some(&v.name) == b.winner.as_ref()),
                            ab_assignment(id, *c, ab).is_none(),
                        ),
                    };
                    if !in_phase {
                        continue;
                    }
                    msgs.push(NewMessage {
                        idempotency_key: format!("broadcast:{id}:{c}"),
                        contact_id: *c,
                        template_id: variant.and_then(|v| v.template_id).unwrap_or(b.template_id),
                        sender_id: Some(b.sender_id),
                        author: b.author.clone(),
                        kind: template_kind.to_string(),
                        subscription_type: Some(b.subscription_type.clone()),
                        broadcast_id: Some(id),
                        variant: variant.map(|v| v.name.clone()),
                        subject_override: variant.and_then(|v| v.subject.clone()),
                        source: "broadcast".into(),
                        payload: json!({}),
                        due_at: next_due,
                    });
                    if let Some(s) = step {
                        next_due += s;
                    }
                }
                out.inserted = enqueue(&mut tx, &msgs, now).await?;
                let done = contacts.len() < batch;
                let cursor = if done { None } else { contacts.last().copied() };
                let (phase, test_expanded_at) = match (done, b.phase, &b.ab) {
                    (true, 1, Some(ab)) if ab.test_percent >= 100 => (3, Some(now)),
                    (true, 1, _) => (1, Some(now)),
                    (true, _, _) => (3, r.test_expanded_at.map(from_micros)),
                    (false, p, _) => (p, r.test_expanded_at.map(from_micros)),
                };
                tx.execute(
                    "UPDATE broadcasts SET cursor=$2, phase=$3, test_expanded_at=$4, next_due_at=$5, enqueued=enqueued+$6, updated_at=$7 WHERE id=$1",
                    args![id, cursor, phase, test_expanded_at, next_due, out.inserted as i64, now],
                )
                .await?;
                if phase == 3 && b.ab.as_ref().is_some_and(|a| a.test_percent >= 100) {
                    // The test was the whole send: the winner is reported once decided below.
                }
                out.more = !done;
            }
            "sending" if b.phase >= 3 => {
                let open: One<i64> = tx
                    .fetch_one(
                        "SELECT COUNT(*) FROM email_messages WHERE broadcast_id = $1 AND state IN ('queued','deferred','held','sending')",
                        args![id],
                    )
                    .await?;
                if open.0 == 0 {
                    let winner = match (&b.ab, &b.winner) {
                        (Some(ab), None) => Some(decide_winner(&mut tx, id, ab).await?),
                        _ => b.winner.clone(),
                    };
                    tx.execute(
                        "UPDATE broadcasts SET status='sent', finished_at=$2, winner=$3, updated_at=$2 WHERE id=$1",
                        args![id, now, winner],
                    )
                    .await?;
                }
            }
            _ => {}
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Live progress: audience size, messages per state and figures per variant.
    pub async fn broadcast_progress(&self, id: Uuid) -> Result<Progress, StoreError> {
        let b = self.broadcast(id).await?;
        let mut tx = self.db().begin().await?;
        let audience = audience_size(&mut tx, &b.audience).await?;
        drop(tx);
        let states = self.email_state_counts(Some(id)).await?;
        let mut variants = Vec::new();
        match &b.ab {
            Some(ab) => {
                for v in &ab.variants {
                    variants.push((
                        v.name.clone(),
                        self.email_metrics(&super::metrics::Scope::Variant(id, v.name.clone()))
                            .await?,
                    ));
                }
            }
            None => variants.push((
                "all".into(),
                self.email_metrics(&super::metrics::Scope::Broadcast(id))
                    .await?,
            )),
        }
        Ok(Progress {
            audience,
            enqueued: b.enqueued,
            states,
            variants,
        })
    }
}

async fn decide_winner(tx: &mut Tx, id: Uuid, ab: &AbTest) -> Result<String, StoreError> {
    let mut best: Option<(f64, &str)> = None;
    for v in &ab.variants {
        let m = super::metrics::metrics_in(tx, &super::metrics::Scope::Variant(id, v.name.clone()))
            .await?;
        let score = match ab.metric {
            WinnerMetric::OpenRate => m.open_rate,
            WinnerMetric::ClickRate => m.click_rate,
            WinnerMetric::ClickToOpenRate => m.click_to_open_rate,
        };
        // Strictly better wins; ties go to the earlier variant.
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, v.name.as_str()));
        }
    }
    Ok(best.map(|(_, n)| n.to_string()).unwrap_or_default())
}
