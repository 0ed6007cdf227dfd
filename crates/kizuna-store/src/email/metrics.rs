//! Figures per template, broadcast, A/B variant (and, on the message itself, per message):
//! sent, delivered, bounced, unique opens (human and machine), clicks, click rate,
//! click-to-open rate, unsubscribes and complaints.
//!
//! Definitions: `delivered` = sent − hard-bounced; an open is a message with a human open *or*
//! a human click (a click proves the open when images were blocked); `open_rate` = human opens /
//! delivered; `click_rate` = human clicks / delivered; `click_to_open_rate` = human clicks /
//! human opens. Machine-only opens (privacy prefetch, proxies, scanners) are counted apart.

use crate::db::{Tx, Val};
use crate::{Store, StoreError, args};
use serde::Serialize;
use uuid::Uuid;

/// What the figures are about.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// Every message of a template.
    Template(Uuid),
    /// Every message of a broadcast.
    Broadcast(Uuid),
    /// One A/B variant of a broadcast.
    Variant(Uuid, String),
}

/// The figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EmailMetrics {
    /// Messages in the outbox.
    pub messages: i64,
    /// Accepted by the SMTP server.
    pub sent: i64,
    /// Sent and not hard-bounced.
    pub delivered: i64,
    /// Delivery confirmed by a notification (SES/SendGrid/DSN).
    pub delivery_confirmed: i64,
    /// Bounced (hard or soft).
    pub bounced: i64,
    /// Hard bounces.
    pub hard_bounced: i64,
    /// Soft bounces.
    pub soft_bounced: i64,
    /// Failed (hard bounce at SMTP or retries exhausted).
    pub failed: i64,
    /// Skipped (suppressed, no consent, …).
    pub skipped: i64,
    /// Unknown SMTP result after a crash.
    pub ambiguous: i64,
    /// Not sent yet (queued, deferred, held, sending).
    pub pending: i64,
    /// Messages opened by a person (or clicked).
    pub unique_opens: i64,
    /// Messages with only machine opens.
    pub machine_only_opens: i64,
    /// Messages with any open (human or machine).
    pub unique_opens_all: i64,
    /// Messages clicked by a person.
    pub unique_clicks: i64,
    /// Messages with only machine clicks.
    pub machine_only_clicks: i64,
    /// Unsubscribes.
    pub unsubscribes: i64,
    /// Complaints.
    pub complaints: i64,
    /// unique_opens / delivered.
    pub open_rate: f64,
    /// unique_clicks / delivered.
    pub click_rate: f64,
    /// unique_clicks / unique_opens.
    pub click_to_open_rate: f64,
    /// unsubscribes / delivered.
    pub unsubscribe_rate: f64,
}

#[derive(sqlx::FromRow)]
struct Counts {
    messages: i64,
    sent: i64,
    hard_bounced: i64,
    soft_bounced: i64,
    delivery_confirmed: i64,
    failed: i64,
    skipped: i64,
    ambiguous: i64,
    pending: i64,
    unique_opens: i64,
    unique_opens_all: i64,
    unique_clicks: i64,
    any_clicks: i64,
    unsubscribes: i64,
    complaints: i64,
}

const SQL: &str = "SELECT COUNT(*) AS messages, \
 COUNT(sent_at) AS sent, \
 COUNT(CASE WHEN bounce_type = 'hard' THEN 1 END) AS hard_bounced, \
 COUNT(CASE WHEN bounce_type = 'soft' THEN 1 END) AS soft_bounced, \
 COUNT(delivered_at) AS delivery_confirmed, \
 COUNT(CASE WHEN state = 'failed' THEN 1 END) AS failed, \
 COUNT(CASE WHEN state = 'skipped' THEN 1 END) AS skipped, \
 COUNT(CASE WHEN state = 'ambiguous' THEN 1 END) AS ambiguous, \
 COUNT(CASE WHEN state IN ('queued','deferred','held','sending') THEN 1 END) AS pending, \
 COUNT(CASE WHEN first_human_open_at IS NOT NULL OR first_human_click_at IS NOT NULL THEN 1 END) AS unique_opens, \
 COUNT(CASE WHEN first_open_at IS NOT NULL OR first_click_at IS NOT NULL THEN 1 END) AS unique_opens_all, \
 COUNT(first_human_click_at) AS unique_clicks, \
 COUNT(first_click_at) AS any_clicks, \
 COUNT(unsubscribed_at) AS unsubscribes, \
 COUNT(complained_at) AS complaints \
 FROM email_messages WHERE ";

fn ratio(a: i64, b: i64) -> f64 {
    if b <= 0 { 0.0 } else { a as f64 / b as f64 }
}

pub(crate) async fn metrics_in(tx: &mut Tx, scope: &Scope) -> Result<EmailMetrics, StoreError> {
    let (cond, a): (&str, Vec<Val>) = match scope {
        Scope::Template(id) => ("template_id = $1", args![*id]),
        Scope::Broadcast(id) => ("broadcast_id = $1", args![*id]),
        Scope::Variant(id, v) => ("broadcast_id = $1 AND variant = $2", args![*id, v.as_str()]),
    };
    let c: Counts = tx
        .fetch_one(sqlx::AssertSqlSafe(format!("{SQL}{cond}")), a)
        .await?;
    Ok(from_counts(c))
}

fn from_counts(c: Counts) -> EmailMetrics {
    let delivered = c.sent - c.hard_bounced.min(c.sent);
    EmailMetrics {
        messages: c.messages,
        sent: c.sent,
        delivered,
        delivery_confirmed: c.delivery_confirmed,
        bounced: c.hard_bounced + c.soft_bounced,
        hard_bounced: c.hard_bounced,
        soft_bounced: c.soft_bounced,
        failed: c.failed,
        skipped: c.skipped,
        ambiguous: c.ambiguous,
        pending: c.pending,
        unique_opens: c.unique_opens,
        machine_only_opens: c.unique_opens_all - c.unique_opens,
        unique_opens_all: c.unique_opens_all,
        unique_clicks: c.unique_clicks,
        machine_only_clicks: c.any_clicks - c.unique_clicks,
        unsubscribes: c.unsubscribes,
        complaints: c.complaints,
        open_rate: ratio(c.unique_opens, delivered),
        click_rate: ratio(c.unique_clicks, delivered),
        click_to_open_rate: ratio(c.unique_clicks, c.unique_opens),
        unsubscribe_rate: ratio(c.unsubscribes, delivered),
    }
}

impl Store {
    /// Figures for a template, a broadcast or one of its variants.
    pub async fn email_metrics(&self, scope: &Scope) -> Result<EmailMetrics, StoreError> {
        let (cond, a): (&str, Vec<Val>) = match scope {
            Scope::Template(id) => ("template_id = $1", args![*id]),
            Scope::Broadcast(id) => ("broadcast_id = $1", args![*id]),
            Scope::Variant(id, v) => ("broadcast_id = $1 AND variant = $2", args![*id, v.as_str()]),
        };
        let c: Counts = self
            .db()
            .reader()
            .fetch_one(sqlx::AssertSqlSafe(format!("{SQL}{cond}")), a)
            .await?;
        Ok(from_counts(c))
    }
}
