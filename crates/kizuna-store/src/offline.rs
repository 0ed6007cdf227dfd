//! Offline and product events (R-TRACK-4) attached to contacts by e-mail or id, all or
//! nothing: `kizuna import events FILE.csv` and `POST /api/v1/events`.

use crate::db::{One, Val};
use crate::ingest::{EventRow, Ingested, claim_keys, insert_events, lock_identities, message_key};
use crate::{Store, StoreError, contacts};
use chrono::{DateTime, Utc};
use kizuna_core::contact::{Contact, Source};
use kizuna_core::import::RowError;
use kizuna_core::tracking::OFFLINE;
use kizuna_core::tracking::offline::{ContactRef, OfflineEvent};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// How offline events are recorded.
#[derive(Debug, Clone)]
pub struct OfflineOptions {
    /// Create a contact for an e-mail nobody has (first-touch channel `offline`); otherwise
    /// such a row is an error and nothing is recorded.
    pub create_contacts: bool,
    /// The events' source: `import` (CLI) or `api`.
    pub source: String,
    /// What the events came from (a file name), kept in each event's context and in the source
    /// of contacts created.
    pub detail: Option<String>,
}

/// What recording did.
#[derive(Debug, Clone, Serialize)]
pub struct OfflineOutcome {
    /// Events given.
    pub rows: usize,
    /// Events stored.
    pub stored: usize,
    /// Events skipped because the same one (same message id, or same contact, type, time and
    /// properties) was recorded before.
    pub duplicates: usize,
    /// Contacts created (with `create_contacts`).
    pub contacts_created: usize,
    /// For the commit hook.
    #[serde(skip)]
    pub committed: Ingested,
}

/// Why nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// Rows name contacts that do not exist (every such row is listed).
    #[error("{} events name unknown contacts", .0.len())]
    Rows(Vec<RowError>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(sqlx::FromRow)]
struct IdEmail {
    id: Uuid,
    email: Option<String>,
}

impl Store {
    /// Records checked offline events in one transaction: every contact must exist (or be
    /// created, with `create_contacts`), or nothing is recorded and every unknown one is
    /// reported. A repeated event counts once.
    pub async fn record_offline_events(
        &self,
        events: Vec<OfflineEvent>,
        opts: &OfflineOptions,
        now: DateTime<Utc>,
    ) -> Result<OfflineOutcome, OfflineError> {
        let mut tx = self.db().begin().await?;
        lock_identities(&mut tx).await?;

        // Which contacts exist.
        let emails: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.contact {
                ContactRef::Email(m) => Some(m.clone()),
                ContactRef::Id(_) => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let ids: Vec<Uuid> = events
            .iter()
            .filter_map(|e| match &e.contact {
                ContactRef::Id(id) => Some(*id),
                ContactRef::Email(_) => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut by_email: HashMap<String, Uuid> = HashMap::new();
        for chunk in emails.chunks(1000) {
            let sql = format!(
                "SELECT id, email FROM contacts WHERE email IN ({})",
                ph(chunk.len())
            );
            let a: Vec<Val> = chunk.iter().map(Val::from).collect();
            let rows: Vec<IdEmail> = tx.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
            by_email.extend(rows.into_iter().filter_map(|r| r.email.map(|e| (e, r.id))));
        }
        let mut known_ids: HashSet<Uuid> = HashSet::new();
        for chunk in ids.chunks(1000) {
            let sql = format!("SELECT id FROM contacts WHERE id IN ({})", ph(chunk.len()));
            let a: Vec<Val> = chunk.iter().map(|i| Val::from(*i)).collect();
            let rows: Vec<One<Uuid>> = tx.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
            known_ids.extend(rows.into_iter().map(|r| r.0));
        }

        let mut problems = Vec::new();
        let mut created: Vec<Contact> = Vec::new();
        let mut rows: Vec<EventRow> = Vec::new();
        for e in &events {
            match &e.contact {
                ContactRef::Email(m) if !by_email.contains_key(m) => {
                    if opts.create_contacts {
                        let mut c = Contact::new(Uuid::now_v7(), now);
                        c.email = Some(m.clone());
                        c.source = Source {
                            channel: Some(OFFLINE.into()),
                            detail: opts.detail.clone(),
                            ..Default::default()
                        };
                        by_email.insert(m.clone(), c.id);
                        rows.push(EventRow {
                            id: Uuid::now_v7(),
                            contact_id: c.id,
                            event_type: "contact.created".into(),
                            occurred_at: now,
                            source: opts.source.clone(),
                            message_id: None,
                            properties: json!({"email": m}).to_string(),
                            context: None,
                        });
                        created.push(c);
                    } else {
                        problems.push(RowError {
                            row: e.row,
                            column: Some("email".into()),
                            value: Some(m.clone()),
                            reason: "no contact has this e-mail address (import the contacts first, or allow creating them)".into(),
                        });
                    }
                }
                ContactRef::Id(id) if !known_ids.contains(id) => problems.push(RowError {
                    row: e.row,
                    column: Some("contact_id".into()),
                    value: Some(id.to_string()),
                    reason: "no contact has this id".into(),
                }),
                _ => {}
            }
        }
        if !problems.is_empty() {
            return Err(OfflineError::Rows(problems));
        }
        for c in &created {
            contacts::insert(&mut tx, c).await?;
        }

        // Dedupe, then the events.
        let keyed: Vec<[u8; 16]> = events
            .iter()
            .map(|e| message_key("offline", &e.idempotency_key()))
            .collect();
        let mut seen = HashSet::new();
        let unique: Vec<[u8; 16]> = keyed.iter().filter(|k| seen.insert(**k)).copied().collect();
        let fresh = claim_keys(&mut tx, &unique, now).await?;
        let mut taken = HashSet::new();
        let mut stored = 0;
        for (e, k) in events.iter().zip(&keyed) {
            if !fresh.contains(k) || !taken.insert(*k) {
                continue;
            }
            let contact_id = match &e.contact {
                ContactRef::Email(m) => by_email[m],
                ContactRef::Id(id) => *id,
            };
            let mut ctx = serde_json::Map::new();
            if let Some(d) = &opts.detail {
                ctx.insert("detail".into(), d.as_str().into());
            }
            ctx.insert("row".into(), e.row.into());
            rows.push(EventRow {
                id: Uuid::now_v7(),
                contact_id,
                event_type: e.event_type.clone(),
                occurred_at: e.occurred_at,
                source: opts.source.clone(),
                message_id: e.message_id.clone(),
                properties: serde_json::to_string(&e.properties).unwrap_or_else(|_| "{}".into()),
                context: Some(Value::Object(ctx).to_string()),
            });
            stored += 1;
        }
        let mut committed = Ingested {
            stored,
            duplicates: events.len() - stored,
            contacts_created: created.len(),
            ..Default::default()
        };
        let mut seen = HashSet::new();
        for r in &rows {
            committed.event_ids.push(r.id);
            if seen.insert(r.contact_id) {
                committed.contact_ids.push(r.contact_id);
            }
        }
        insert_events(&mut tx, rows, now).await?;
        tx.commit().await?;
        Ok(OfflineOutcome {
            rows: events.len(),
            stored,
            duplicates: events.len() - stored,
            contacts_created: created.len(),
            committed,
        })
    }
}

fn ph(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}
