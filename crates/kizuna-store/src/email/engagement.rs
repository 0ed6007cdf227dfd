//! What recipients and their mail systems did with a message: opens and clicks (machine ones
//! flagged, never dropped), unsubscribes, bounces and complaints. Each is recorded on the
//! message, in the engagement log and as an `email.*` event, in one transaction.

use super::consents::{ConsentStatus, NewConsent, record as record_consents, status_in};
use super::outbox::{COLUMNS, EmailMessage, Row};
use crate::db::{One, from_micros};
use crate::events::{NewEvent, append};
use crate::{Store, StoreError, args};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

/// An open or a click as the tracking endpoint saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Engagement {
    /// The message.
    pub message_id: Uuid,
    /// `open` or `click`.
    pub kind: &'static str,
    /// Clicked link (index in the message).
    pub link_index: Option<i64>,
    /// Clicked URL.
    pub url: Option<String>,
    /// Flagged as a machine (privacy prefetch, proxy, scanner).
    pub machine: bool,
    /// Why.
    pub reason: Option<String>,
    /// Client IP.
    pub ip: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A bounce or complaint to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackInput {
    /// Recipient (lowercase).
    pub recipient: String,
    /// `hard_bounce`, `soft_bounce`, `complaint` or `delivered`.
    pub kind: String,
    /// Our message, when the report names it.
    pub message_id: Option<Uuid>,
    /// Enhanced status code.
    pub status: Option<String>,
    /// Detail.
    pub detail: String,
    /// Where it came from (`dsn`, `arf`, `ses`, `sendgrid`).
    pub source: String,
}

/// What applying feedback did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FeedbackReport {
    /// Hard bounces recorded (address suppressed).
    pub hard_bounces: u64,
    /// Soft bounces counted.
    pub soft_bounces: u64,
    /// Complaints recorded (address suppressed, consent withdrawn).
    pub complaints: u64,
    /// Deliveries confirmed.
    pub delivered: u64,
    /// Items that matched no message or contact.
    pub unmatched: u64,
}

fn base_props(m: &EmailMessage) -> serde_json::Map<String, Value> {
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
    p
}

async fn message_in(tx: &mut crate::db::Tx, id: Uuid) -> Result<Option<EmailMessage>, StoreError> {
    let r: Option<Row> = tx
        .fetch_optional(
            sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM email_messages WHERE id = $1"
            )),
            args![id],
        )
        .await?;
    Ok(r.map(Into::into))
}

impl Store {
    /// Earlier clicks on a message (link index, time) and its number of tracked links.
    pub async fn email_clicks(
        &self,
        message_id: Uuid,
    ) -> Result<(Vec<(u16, DateTime<Utc>)>, u16), StoreError> {
        #[derive(sqlx::FromRow)]
        struct C {
            link_index: Option<i64>,
            occurred_at: i64,
        }
        let rows: Vec<C> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT link_index, occurred_at FROM email_engagements WHERE message_id = $1 AND kind = 'click' ORDER BY occurred_at",
                args![message_id],
            )
            .await?;
        let links: Option<One<Option<i64>>> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT link_count FROM email_messages WHERE id = $1",
                args![message_id],
            )
            .await?;
        Ok((
            rows.into_iter()
                .map(|c| {
                    (
                        u16::try_from(c.link_index.unwrap_or(0)).unwrap_or(0),
                        from_micros(c.occurred_at),
                    )
                })
                .collect(),
            links
                .and_then(|l| l.0)
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or(0),
        ))
    }

    /// Records an open or a click. Returns the message, or `None` when it does not exist (a
    /// genuine token for an erased contact's message).
    pub async fn record_engagement(
        &self,
        e: &Engagement,
    ) -> Result<Option<EmailMessage>, StoreError> {
        let mut tx = self.db().begin().await?;
        let Some(m) = message_in(&mut tx, e.message_id).await? else {
            return Ok(None);
        };
        let human = i64::from(!e.machine);
        tx.execute(
            "INSERT INTO email_engagements (id, message_id, contact_id, kind, link_index, url, machine, reason, ip, user_agent, occurred_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
            args![Uuid::now_v7(), m.id, m.contact_id, e.kind, e.link_index, e.url.clone(), i64::from(e.machine), e.reason.clone(), e.ip.clone(), e.user_agent.clone(), e.at],
        )
        .await?;
        let sql = if e.kind == "open" {
            "UPDATE email_messages SET opens = opens + 1, human_opens = human_opens + $2, first_open_at = COALESCE(first_open_at, $3), first_human_open_at = CASE WHEN $2 = 1 THEN COALESCE(first_human_open_at, $3) ELSE first_human_open_at END WHERE id = $1"
        } else {
            "UPDATE email_messages SET clicks = clicks + 1, human_clicks = human_clicks + $2, first_click_at = COALESCE(first_click_at, $3), first_human_click_at = CASE WHEN $2 = 1 THEN COALESCE(first_human_click_at, $3) ELSE first_human_click_at END WHERE id = $1"
        };
        tx.execute(sql, args![m.id, human, e.at]).await?;
        let mut p = base_props(&m);
        p.insert("machine".into(), json!(e.machine));
        if let Some(r) = &e.reason {
            p.insert("machine_reason".into(), json!(r));
        }
        if e.kind == "click" {
            p.insert("url".into(), json!(e.url));
            p.insert("link_index".into(), json!(e.link_index));
        }
        let first = if e.kind == "open" {
            m.first_open_at.is_none()
        } else {
            m.first_click_at.is_none()
        };
        p.insert("first".into(), json!(first));
        append(
            &mut tx,
            vec![NewEvent::new(
                m.contact_id,
                if e.kind == "open" {
                    "email.opened"
                } else {
                    "email.clicked"
                },
                e.at,
                "kizuna",
                Value::Object(p),
            )],
            e.at,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(m))
    }

    /// Unsubscribes the recipient of a message from the message's subscription type (one-click
    /// POST, the confirmation page or a mail to the unsubscribe address). Honoured at once;
    /// repeating it records nothing new. Returns the message, `None` when it does not exist.
    pub async fn unsubscribe_by_email(
        &self,
        message_id: Uuid,
        source: &str,
        ip: Option<String>,
        user_agent: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Option<EmailMessage>, StoreError> {
        let mut tx = self.db().begin().await?;
        let Some(m) = message_in(&mut tx, message_id).await? else {
            return Ok(None);
        };
        let stype = m
            .subscription_type
            .clone()
            .unwrap_or_else(|| "marketing".into());
        let current = status_in(&mut tx, m.contact_id, "email", &stype).await?;
        if current != Some(ConsentStatus::Withdrawn) {
            record_consents(
                &mut tx,
                &[NewConsent {
                    contact_id: m.contact_id,
                    channel: "email".into(),
                    subscription_type: stype.clone(),
                    status: ConsentStatus::Withdrawn,
                    source: source.into(),
                    wording: None,
                    wording_version: None,
                    ip,
                    user_agent,
                    request_id: None,
                    message_id: Some(m.id),
                    occurred_at: now,
                }],
                now,
            )
            .await?;
        }
        if m.unsubscribed_at.is_none() {
            tx.execute(
                "UPDATE email_messages SET unsubscribed_at = $2 WHERE id = $1",
                args![m.id, now],
            )
            .await?;
            let mut p = base_props(&m);
            p.insert("subscription_type".into(), json!(stype));
            p.insert("via".into(), json!(source));
            append(
                &mut tx,
                vec![NewEvent::new(
                    m.contact_id,
                    "email.unsubscribed",
                    now,
                    "kizuna",
                    Value::Object(p),
                )],
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(m))
    }

    /// Applies bounces, complaints and delivery notifications. A hard bounce suppresses the
    /// address; a complaint suppresses it and withdraws the consent; a soft bounce is counted.
    /// Each is recorded once per message.
    pub async fn apply_email_feedback(
        &self,
        items: &[FeedbackInput],
        now: DateTime<Utc>,
    ) -> Result<FeedbackReport, StoreError> {
        let mut report = FeedbackReport::default();
        let mut tx = self.db().begin().await?;
        let mut events = Vec::new();
        for f in items {
            let mut m = match f.message_id {
                Some(id) => message_in(&mut tx, id).await?,
                None => None,
            };
            if m.is_none() {
                // The latest message sent to that address.
                let r: Option<Row> = tx
                    .fetch_optional(
                        sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM email_messages WHERE to_address = $1 ORDER BY id DESC LIMIT 1")),
                        args![f.recipient.as_str()],
                    )
                    .await?;
                m = r.map(Into::into);
            }
            let contact_id = match &m {
                Some(m) => Some(m.contact_id),
                None => tx
                    .fetch_optional::<One<Uuid>>(
                        "SELECT id FROM contacts WHERE email = $1",
                        args![f.recipient.as_str()],
                    )
                    .await?
                    .map(|r| r.0),
            };
            let mut props = m.as_ref().map(base_props).unwrap_or_default();
            props.insert("recipient".into(), json!(f.recipient));
            props.insert("status".into(), json!(f.status));
            props.insert("detail".into(), json!(f.detail));
            props.insert("feedback_source".into(), json!(f.source));
            match f.kind.as_str() {
                "hard_bounce" => {
                    crate::suppressions::add(&mut tx, &f.recipient, "hard_bounce", now).await?;
                    let first = match &m {
                        Some(m) => {
                            tx.execute(
                                "UPDATE email_messages SET bounced_at = $2, bounce_type = 'hard' WHERE id = $1 AND (bounce_type IS NULL OR bounce_type = 'soft')",
                                args![m.id, now],
                            )
                            .await?
                                > 0
                        }
                        None => true,
                    };
                    if first {
                        report.hard_bounces += 1;
                        props.insert("bounce_type".into(), json!("hard"));
                        if let Some(c) = contact_id {
                            events.push(NewEvent::new(
                                c,
                                "email.bounced",
                                now,
                                "kizuna",
                                Value::Object(props),
                            ));
                        }
                    }
                }
                "soft_bounce" => {
                    report.soft_bounces += 1;
                    if let Some(m) = &m {
                        tx.execute(
                            "UPDATE email_messages SET soft_bounces = soft_bounces + 1, bounced_at = COALESCE(bounced_at, $2), bounce_type = COALESCE(bounce_type, 'soft') WHERE id = $1",
                            args![m.id, now],
                        )
                        .await?;
                    }
                    props.insert("bounce_type".into(), json!("soft"));
                    if let Some(c) = contact_id {
                        events.push(NewEvent::new(
                            c,
                            "email.bounced",
                            now,
                            "kizuna",
                            Value::Object(props),
                        ));
                    }
                }
                "complaint" => {
                    crate::suppressions::add(&mut tx, &f.recipient, "complaint", now).await?;
                    let first = match &m {
                        Some(m) => {
                            tx.execute(
                                "UPDATE email_messages SET complained_at = $2 WHERE id = $1 AND complained_at IS NULL",
                                args![m.id, now],
                            )
                            .await?
                                > 0
                        }
                        None => true,
                    };
                    if first {
                        report.complaints += 1;
                        if let Some(c) = contact_id {
                            let stype = m
                                .as_ref()
                                .and_then(|m| m.subscription_type.clone())
                                .unwrap_or_else(|| "marketing".into());
                            record_consents(
                                &mut tx,
                                &[NewConsent {
                                    contact_id: c,
                                    channel: "email".into(),
                                    subscription_type: stype,
                                    status: ConsentStatus::Withdrawn,
                                    source: "complaint".into(),
                                    wording: None,
                                    wording_version: None,
                                    ip: None,
                                    user_agent: None,
                                    request_id: None,
                                    message_id: m.as_ref().map(|m| m.id),
                                    occurred_at: now,
                                }],
                                now,
                            )
                            .await?;
                            events.push(NewEvent::new(
                                c,
                                "email.complained",
                                now,
                                "kizuna",
                                Value::Object(props),
                            ));
                        }
                    }
                }
                "delivered" => {
                    if let Some(m) = &m {
                        let first = tx
                            .execute(
                                "UPDATE email_messages SET delivered_at = $2 WHERE id = $1 AND delivered_at IS NULL",
                                args![m.id, now],
                            )
                            .await?
                            > 0;
                        if first {
                            report.delivered += 1;
                            events.push(NewEvent::new(
                                m.contact_id,
                                "email.delivered",
                                now,
                                "kizuna",
                                Value::Object(props),
                            ));
                        }
                    }
                }
                other => {
                    return Err(StoreError::invalid(
                        "kind",
                        "invalid_kind",
                        format!("unknown feedback kind {other:?}"),
                    ));
                }
            }
            if m.is_none() && contact_id.is_none() {
                report.unmatched += 1;
            }
        }
        append(&mut tx, events, now).await?;
        tx.commit().await?;
        Ok(report)
    }

    /// Removes a suppression (only `blocked`, `hard_bounce` and `complaint`: an erased address
    /// stays suppressed). Returns whether one was removed.
    pub async fn remove_suppression(&self, normalized_email: &str) -> Result<bool, StoreError> {
        let n = self
            .db()
            .reader()
            .execute(
                "DELETE FROM suppressions WHERE email_fingerprint = $1 AND reason IN ('blocked', 'hard_bounce', 'complaint')",
                args![kizuna_core::email_address::email_fingerprint(normalized_email)],
            )
            .await?;
        Ok(n > 0)
    }
}
