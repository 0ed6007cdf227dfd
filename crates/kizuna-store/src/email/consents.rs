//! The consent ledger (R-TRUST-1): append-only records per contact, channel and subscription
//! type — granted, withdrawn or requested (double opt-in) — with the source, the exact wording
//! and its version, the time, IP address and user agent. `consent_state` holds the latest
//! granted/withdrawn record per (contact, channel, type), written in the same transaction, so a
//! send or a segment reads one row. Subscription types name what a contact can subscribe to.

use super::{id_vals, placeholders};
use crate::db::{One, Tx, Val, from_micros};
use crate::events::{NewEvent, append};
use crate::{Store, StoreError, args, on_unique};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use uuid::Uuid;

/// Granted, withdrawn, or requested (waiting for double opt-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    /// Opt-in.
    Granted,
    /// Opt-out.
    Withdrawn,
    /// Double opt-in asked, not yet confirmed (does not allow marketing mail).
    Requested,
}

impl ConsentStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::Withdrawn => "withdrawn",
            Self::Requested => "requested",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "granted" => Self::Granted,
            "requested" => Self::Requested,
            _ => Self::Withdrawn,
        }
    }
}

/// A consent record to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewConsent {
    /// Whose.
    pub contact_id: Uuid,
    /// `email`.
    pub channel: String,
    /// e.g. `newsletter`.
    pub subscription_type: String,
    /// Granted or withdrawn.
    pub status: ConsentStatus,
    /// `form`, `api`, `import`, `double_opt_in`, `one_click`, `unsubscribe_page`,
    /// `preference_center`, `complaint`.
    pub source: String,
    /// The exact wording shown.
    pub wording: Option<String>,
    /// Its version.
    pub wording_version: Option<String>,
    /// Client IP.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// The double opt-in request it confirms.
    pub request_id: Option<Uuid>,
    /// The message an unsubscribe came from.
    pub message_id: Option<Uuid>,
    /// When.
    pub occurred_at: DateTime<Utc>,
}

/// A ledger record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Consent {
    /// Id.
    pub id: Uuid,
    /// Whose.
    pub contact_id: Uuid,
    /// Channel.
    pub channel: String,
    /// Subscription type.
    pub subscription_type: String,
    /// Status.
    pub status: ConsentStatus,
    /// Source.
    pub source: String,
    /// Wording shown.
    pub wording: Option<String>,
    /// Wording version.
    pub wording_version: Option<String>,
    /// IP.
    pub ip: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// Double opt-in request.
    pub request_id: Option<Uuid>,
    /// Message.
    pub message_id: Option<Uuid>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// When Kizuna stored it.
    pub recorded_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    contact_id: Uuid,
    channel: String,
    subscription_type: String,
    status: String,
    source: String,
    wording: Option<String>,
    wording_version: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<Uuid>,
    message_id: Option<Uuid>,
    occurred_at: i64,
    recorded_at: i64,
}

impl From<Row> for Consent {
    fn from(r: Row) -> Self {
        Consent {
            id: r.id,
            contact_id: r.contact_id,
            channel: r.channel,
            subscription_type: r.subscription_type,
            status: ConsentStatus::parse(&r.status),
            source: r.source,
            wording: r.wording,
            wording_version: r.wording_version,
            ip: r.ip,
            user_agent: r.user_agent,
            request_id: r.request_id,
            message_id: r.message_id,
            occurred_at: from_micros(r.occurred_at),
            recorded_at: from_micros(r.recorded_at),
        }
    }
}

/// The current consent of a contact for one channel and type.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConsentState {
    /// Channel.
    pub channel: String,
    /// Subscription type.
    pub subscription_type: String,
    /// Granted or withdrawn.
    pub status: ConsentStatus,
    /// The ledger record that set it.
    pub consent_id: Uuid,
    /// When.
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct StateRow {
    channel: String,
    subscription_type: String,
    status: String,
    consent_id: Uuid,
    updated_at: i64,
}

/// A subscription type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubscriptionType {
    /// Key, e.g. `newsletter` (lowercase letters, digits, `_`, `-`).
    pub name: String,
    /// Shown in the preference center, e.g. `メールマガジン`.
    pub label: String,
    /// Longer description.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(sqlx::FromRow)]
struct TypeRow {
    name: String,
    label: String,
    description: Option<String>,
}

/// A double opt-in request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConsentRequest {
    /// Id (in the signed confirmation link).
    pub id: Uuid,
    /// Whose.
    pub contact_id: Uuid,
    /// Channel.
    pub channel: String,
    /// Subscription type.
    pub subscription_type: String,
    /// Until when the link works.
    pub expires_at: DateTime<Utc>,
    /// When confirmed.
    pub confirmed_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct RequestRow {
    id: Uuid,
    contact_id: Uuid,
    channel: String,
    subscription_type: String,
    source: String,
    wording: Option<String>,
    wording_version: Option<String>,
    expires_at: i64,
    confirmed_at: Option<i64>,
}

const CHUNK: usize = 500;

/// Appends consent records (and their `consent.*` events) and updates the current state.
/// `requested` records go to the ledger only.
pub async fn record(
    tx: &mut Tx,
    consents: &[NewConsent],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    let mut ids = Vec::with_capacity(consents.len());
    let mut events = Vec::new();
    for chunk in consents.chunks(CHUNK) {
        let mut sql = String::from(
            "INSERT INTO consents (id, contact_id, channel, subscription_type, status, source, wording, wording_version, ip, user_agent, request_id, message_id, occurred_at, recorded_at) VALUES ",
        );
        let mut a: Vec<Val> = Vec::with_capacity(chunk.len() * 14);
        let mut state_sql = String::from(
            "INSERT INTO consent_state (contact_id, channel, subscription_type, status, consent_id, updated_at) VALUES ",
        );
        let mut sa: Vec<Val> = Vec::new();
        for (i, c) in chunk.iter().enumerate() {
            if c.subscription_type.trim().is_empty() || c.channel.trim().is_empty() {
                return Err(StoreError::invalid(
                    "subscription_type",
                    "required",
                    "a consent names its channel and subscription type",
                ));
            }
            let id = Uuid::now_v7();
            ids.push(id);
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            sql.push_str(&placeholders(a.len() + 1, 14));
            sql.push(')');
            a.extend(args![
                id,
                c.contact_id,
                c.channel.as_str(),
                c.subscription_type.as_str(),
                c.status.as_str(),
                c.source.as_str(),
                c.wording.clone(),
                c.wording_version.clone(),
                c.ip.clone(),
                c.user_agent.clone(),
                c.request_id,
                c.message_id,
                c.occurred_at,
                now
            ]);
            if c.status != ConsentStatus::Requested {
                if !sa.is_empty() {
                    state_sql.push(',');
                }
                state_sql.push('(');
                state_sql.push_str(&placeholders(sa.len() + 1, 6));
                state_sql.push(')');
                sa.extend(args![
                    c.contact_id,
                    c.channel.as_str(),
                    c.subscription_type.as_str(),
                    c.status.as_str(),
                    id,
                    c.occurred_at
                ]);
                events.push(NewEvent::new(
                    c.contact_id,
                    if c.status == ConsentStatus::Granted {
                        "consent.granted"
                    } else {
                        "consent.withdrawn"
                    },
                    c.occurred_at,
                    "kizuna",
                    json!({
                        "consent_id": id,
                        "channel": c.channel,
                        "subscription_type": c.subscription_type,
                        "source": c.source,
                        "wording_version": c.wording_version,
                    }),
                ));
            }
        }
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
        if !sa.is_empty() {
            // A record that happened before the current one (a late import) does not override it.
            state_sql.push_str(
                " ON CONFLICT (contact_id, channel, subscription_type) DO UPDATE SET status = excluded.status, consent_id = excluded.consent_id, updated_at = excluded.updated_at WHERE consent_state.updated_at <= excluded.updated_at",
            );
            tx.execute(sqlx::AssertSqlSafe(state_sql), sa).await?;
        }
    }
    append(tx, events, now).await?;
    Ok(ids)
}

/// The current status of `(contact, channel, type)` inside a transaction.
pub async fn status_in(
    tx: &mut Tx,
    contact_id: Uuid,
    channel: &str,
    subscription_type: &str,
) -> Result<Option<ConsentStatus>, StoreError> {
    let r: Option<One<String>> = tx
        .fetch_optional(
            "SELECT status FROM consent_state WHERE contact_id = $1 AND channel = $2 AND subscription_type = $3",
            args![contact_id, channel, subscription_type],
        )
        .await?;
    Ok(r.map(|r| ConsentStatus::parse(&r.0)))
}

fn check_type_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(StoreError::invalid(
            "name",
            "invalid_name",
            "a subscription type name is 1 to 64 lowercase letters, digits, _ or -",
        ));
    }
    Ok(())
}

impl Store {
    /// Appends consent records in their own transaction.
    pub async fn record_consents(
        &self,
        consents: &[NewConsent],
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut tx = self.db().begin().await?;
        let ids = record(&mut tx, consents, now).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// A contact's ledger, oldest first.
    pub async fn consents_of(&self, contact_id: Uuid) -> Result<Vec<Consent>, StoreError> {
        let rows: Vec<Row> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT id, contact_id, channel, subscription_type, status, source, wording, wording_version, ip, user_agent, request_id, message_id, occurred_at, recorded_at FROM consents WHERE contact_id = $1 ORDER BY occurred_at, id",
                args![contact_id],
            )
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// A contact's current consents.
    pub async fn consent_states(&self, contact_id: Uuid) -> Result<Vec<ConsentState>, StoreError> {
        let rows: Vec<StateRow> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT channel, subscription_type, status, consent_id, updated_at FROM consent_state WHERE contact_id = $1 ORDER BY channel, subscription_type",
                args![contact_id],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| ConsentState {
                channel: r.channel,
                subscription_type: r.subscription_type,
                status: ConsentStatus::parse(&r.status),
                consent_id: r.consent_id,
                updated_at: from_micros(r.updated_at),
            })
            .collect())
    }

    /// The current `email` consent for each (contact, type) asked (absent: never recorded).
    pub async fn email_consents(
        &self,
        pairs: &[(Uuid, String)],
    ) -> Result<HashMap<(Uuid, String), ConsentStatus>, StoreError> {
        let mut out = HashMap::new();
        let mut by_type: HashMap<&str, Vec<Uuid>> = HashMap::new();
        for (c, t) in pairs {
            by_type.entry(t.as_str()).or_default().push(*c);
        }
        for (t, ids) in by_type {
            for chunk in ids.chunks(CHUNK) {
                let sql = format!(
                    "SELECT contact_id, status FROM consent_state WHERE channel = 'email' AND subscription_type = $1 AND contact_id IN ({})",
                    placeholders(2, chunk.len())
                );
                let mut a = args![t];
                a.extend(id_vals(chunk));
                let rows: Vec<(Uuid, String)> = self
                    .db()
                    .reader()
                    .fetch_all::<PairRow>(sqlx::AssertSqlSafe(sql), a)
                    .await?
                    .into_iter()
                    .map(|r| (r.contact_id, r.status))
                    .collect();
                for (c, s) in rows {
                    out.insert((c, t.to_string()), ConsentStatus::parse(&s));
                }
            }
        }
        Ok(out)
    }

    /// Adds or renames a subscription type.
    pub async fn put_subscription_type(
        &self,
        t: &SubscriptionType,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionType, StoreError> {
        check_type_name(&t.name)?;
        if t.label.trim().is_empty() {
            return Err(StoreError::invalid(
                "label",
                "required",
                "label is required",
            ));
        }
        self.db()
            .reader()
            .execute(
                "INSERT INTO subscription_types (name, label, description, created_at) VALUES ($1,$2,$3,$4) ON CONFLICT (name) DO UPDATE SET label = excluded.label, description = excluded.description",
                args![t.name.as_str(), t.label.trim(), t.description.clone(), now],
            )
            .await?;
        Ok(t.clone())
    }

    /// Every subscription type, by name.
    pub async fn subscription_types(&self) -> Result<Vec<SubscriptionType>, StoreError> {
        let rows: Vec<TypeRow> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT name, label, description FROM subscription_types ORDER BY name",
                vec![],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| SubscriptionType {
                name: r.name,
                label: r.label,
                description: r.description,
            })
            .collect())
    }

    /// Whether a subscription type exists.
    pub async fn subscription_type_exists(&self, name: &str) -> Result<bool, StoreError> {
        let r: Option<One<String>> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT name FROM subscription_types WHERE name = $1",
                args![name],
            )
            .await?;
        Ok(r.is_some())
    }

    /// Starts a double opt-in: a `requested` ledger record and a request valid until
    /// `expires_at`, confirmed by [`Store::confirm_consent_request`].
    pub async fn create_consent_request(
        &self,
        c: &NewConsent,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<ConsentRequest, StoreError> {
        let id = Uuid::now_v7();
        let mut tx = self.db().begin().await?;
        tx.execute(
            "INSERT INTO consent_requests (id, contact_id, channel, subscription_type, source, wording, wording_version, ip, user_agent, created_at, expires_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
            args![id, c.contact_id, c.channel.as_str(), c.subscription_type.as_str(), c.source.as_str(), c.wording.clone(), c.wording_version.clone(), c.ip.clone(), c.user_agent.clone(), now, expires_at],
        )
        .await
        .map_err(|e| on_unique(e, "id", || "duplicate request".into()))?;
        let mut rec = c.clone();
        rec.status = ConsentStatus::Requested;
        rec.request_id = Some(id);
        record(&mut tx, &[rec], now).await?;
        tx.commit().await?;
        Ok(ConsentRequest {
            id,
            contact_id: c.contact_id,
            channel: c.channel.clone(),
            subscription_type: c.subscription_type.clone(),
            expires_at,
            confirmed_at: None,
        })
    }

    /// A double opt-in request.
    pub async fn consent_request(&self, id: Uuid) -> Result<ConsentRequest, StoreError> {
        let r: RequestRow = self
            .db()
            .reader()
            .fetch_one(
                "SELECT id, contact_id, channel, subscription_type, source, wording, wording_version, expires_at, confirmed_at FROM consent_requests WHERE id = $1",
                args![id],
            )
            .await?;
        Ok(ConsentRequest {
            id: r.id,
            contact_id: r.contact_id,
            channel: r.channel,
            subscription_type: r.subscription_type,
            expires_at: from_micros(r.expires_at),
            confirmed_at: r.confirmed_at.map(from_micros),
        })
    }

    /// Confirms a double opt-in request: the consent is granted with the wording of the request
    /// and the IP/user agent of the confirmation. Confirming twice changes nothing.
    pub async fn confirm_consent_request(
        &self,
        id: Uuid,
        ip: Option<String>,
        user_agent: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<ConsentRequest, StoreError> {
        let mut tx = self.db().begin().await?;
        let r: RequestRow = tx
            .fetch_one(
                "SELECT id, contact_id, channel, subscription_type, source, wording, wording_version, expires_at, confirmed_at FROM consent_requests WHERE id = $1",
                args![id],
            )
            .await?;
        if r.confirmed_at.is_none() {
            tx.execute(
                "UPDATE consent_requests SET confirmed_at = $2 WHERE id = $1",
                args![id, now],
            )
            .await?;
            record(
                &mut tx,
                &[NewConsent {
                    contact_id: r.contact_id,
                    channel: r.channel.clone(),
                    subscription_type: r.subscription_type.clone(),
                    status: ConsentStatus::Granted,
                    source: "double_opt_in".into(),
                    wording: r.wording.clone(),
                    wording_version: r.wording_version.clone(),
                    ip,
                    user_agent,
                    request_id: Some(id),
                    message_id: None,
                    occurred_at: now,
                }],
                now,
            )
            .await?;
        }
        tx.commit().await?;
        let _ = r.source;
        self.consent_request(id).await
    }
}

#[derive(sqlx::FromRow)]
struct PairRow {
    contact_id: Uuid,
    status: String,
}
