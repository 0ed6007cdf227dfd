//! Tracking ingestion (issue 3: R-TRACK-1, R-TRACK-5, R-DATA-3): checked Segment messages become
//! events on the right contact, exactly once.
//!
//! [`Store::ingest`] writes a group of [`Submission`]s (one per HTTP request; the
//! [`Ingestor`](crate::ingestor::Ingestor) gathers concurrent requests into one group) in **one
//! transaction**, so a request is acknowledged only after the commit that made it durable:
//!
//! 1. **Dedupe**: each message's key (16 bytes of SHA-256 over its source and its `messageId`,
//!    or the parser's content hash when it has none) is claimed in `event_keys`
//!    (`ON CONFLICT DO NOTHING RETURNING`); a message whose key was already there is a retry and
//!    is skipped entirely — no event, no identity change.
//! 2. **Identity resolution**, message by message in order, over identities preloaded with one
//!    query per kind: see [`Resolver::resolve`] for the rules. Contacts made in the group are
//!    written in multi-row statements; an anonymous profile made in the group and identified
//!    in the same group is folded in memory and never written.
//! 3. **First touch**: the first message that carries attribution (UTM, referrer, landing page)
//!    sets the contact's `source`, once.
//! 4. **Events**: one row per message in `events`, in multi-row statements: `type` is the track
//!    event's name or the type's fixed name (`page.viewed`, `contact.identified`, …),
//!    `properties` what rules match on (track/page/screen properties, identify/group traits),
//!    `context` the message's context, ids and client times, `source` `sdk`, `snippet` or `api`.
//!
//! On PostgreSQL the transaction takes an advisory lock ([`lock_identities`]) that merges and
//! erasures also take, so that several nodes never resolve one identity two ways at once.

use crate::contacts::{self, COLUMNS};
use crate::db::{Dialect, One, Tx, Val};
use crate::fields;
use crate::{Store, StoreError, args, companies, merges};
use chrono::{DateTime, Utc};
use kizuna_core::company::{Company, CompanyInput};
use kizuna_core::contact::{Contact, ContactInput, Source};
use kizuna_core::field::FieldDefinition;
use kizuna_core::patch::Patch;
use kizuna_core::tracking::traits::{IgnoredTrait, group_traits, identify_traits};
use kizuna_core::tracking::{Message, MessageSource, MessageType, attribution};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Identity kind of a first-party cookie id (Segment `anonymousId`).
pub const ANONYMOUS_ID: &str = "anonymous_id";
/// Identity kind of an application user id (Segment `userId`, and `previousId` of an alias).
pub const USER_ID: &str = "user_id";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Anonymous,
    User,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Anonymous => ANONYMOUS_ID,
            Kind::User => USER_ID,
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            ANONYMOUS_ID => Some(Kind::Anonymous),
            USER_ID => Some(Kind::User),
            _ => None,
        }
    }
}

/// One request's messages and the source their `messageId`s are unique in (the write key's
/// id: two sites may use the same ids).
#[derive(Debug, Clone)]
pub struct Submission {
    /// The write key's id.
    pub source_key: Uuid,
    /// The checked messages, in the order sent.
    pub messages: Vec<Message>,
}

/// What a group commit did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ingested {
    /// Messages stored as events.
    pub stored: usize,
    /// Messages skipped as retries of ones already stored (same key).
    pub duplicates: usize,
    /// Contacts created (anonymous profiles and contacts known by a user id or e-mail).
    pub contacts_created: usize,
    /// Merges made (each recorded and undoable).
    pub merges: usize,
    /// The contacts that got new events, once each.
    pub contact_ids: Vec<Uuid>,
    /// The events written (tracked events and the `contact.created` / `contact.updated` ones
    /// that resolution wrote), in the order written.
    pub event_ids: Vec<Uuid>,
}

/// What ingestion remembers between groups: which contacts already have a first-touch source,
/// so that their page views need no look-up. Bounded; losing it costs only a query.
#[derive(Debug, Default)]
pub struct IngestCache {
    sourced: HashSet<Uuid>,
}

const CACHE_LIMIT: usize = 1_000_000;

impl IngestCache {
    fn remember(&mut self, ids: impl IntoIterator<Item = Uuid>) {
        if self.sourced.len() > CACHE_LIMIT {
            self.sourced.clear();
        }
        self.sourced.extend(ids);
    }
}

/// The dedupe key of a message: the first 16 bytes of SHA-256 over `namespace`, a zero byte and
/// the message's idempotency key.
pub fn message_key(namespace: &str, idempotency_key: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(namespace.as_bytes());
    h.update([0]);
    h.update(idempotency_key.as_bytes());
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// On PostgreSQL, serializes identity changes (ingestion, merges, erasure) across nodes for
/// the rest of the transaction; on SQLite the single writer already does.
pub async fn lock_identities(tx: &mut Tx) -> Result<(), StoreError> {
    if tx.dialect() == Dialect::Postgres {
        tx.execute("SELECT pg_advisory_xact_lock(7123894513)", vec![])
            .await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct KindValue {
    kind: String,
    value: String,
}

/// Moves every identity of `from` to `to`; returns them as `(kind, value)` pairs.
pub(crate) async fn move_identities(
    tx: &mut Tx,
    from: Uuid,
    to: Uuid,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows: Vec<KindValue> = tx
        .fetch_all(
            "SELECT kind, value FROM identities WHERE contact_id = $1 ORDER BY kind, value",
            args![from],
        )
        .await?;
    if !rows.is_empty() {
        tx.execute(
            "UPDATE identities SET contact_id = $1 WHERE contact_id = $2",
            args![to, from],
        )
        .await?;
    }
    Ok(rows.into_iter().map(|r| (r.kind, r.value)).collect())
}

/// Points the listed identities back at `to` (undo of a merge).
pub(crate) async fn restore_identities(
    tx: &mut Tx,
    ids: &[(String, String)],
    to: Uuid,
) -> Result<(), StoreError> {
    for (kind, value) in ids {
        tx.execute(
            "UPDATE identities SET contact_id = $1 WHERE kind = $2 AND value = $3",
            args![to, kind, value],
        )
        .await?;
    }
    Ok(())
}

/// Claims dedupe keys; returns the ones that were new.
pub(crate) async fn claim_keys(
    tx: &mut Tx,
    keys: &[[u8; 16]],
    now: DateTime<Utc>,
) -> Result<HashSet<[u8; 16]>, StoreError> {
    let mut fresh = HashSet::with_capacity(keys.len());
    for chunk in keys.chunks(2000) {
        let mut sql = String::with_capacity(64 + chunk.len() * 12);
        sql.push_str("INSERT INTO event_keys (key, received_at) VALUES ");
        let mut a: Vec<Val> = Vec::with_capacity(chunk.len() + 1);
        a.push(now.into());
        for (i, k) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            a.push(k.to_vec().into());
            sql.push_str(&format!("(${},$1)", a.len()));
        }
        sql.push_str(" ON CONFLICT DO NOTHING RETURNING key");
        let rows: Vec<One<Vec<u8>>> = tx.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
        for r in rows {
            if let Ok(k) = <[u8; 16]>::try_from(r.0.as_slice()) {
                fresh.insert(k);
            }
        }
    }
    Ok(fresh)
}

/// An event row with its context (tracked and imported events).
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    pub id: Uuid,
    pub contact_id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub message_id: Option<String>,
    /// JSON text (serialized once, straight from the message, without copying it).
    pub properties: String,
    /// JSON text.
    pub context: Option<String>,
}

/// Appends event rows in multi-row statements. On SQLite each chunk takes a block of log
/// positions (`seq`) at once, as [`crate::events::append`] does, instead of leaving the row
/// trigger to number rows one by one.
pub(crate) async fn insert_events(
    tx: &mut Tx,
    rows: Vec<EventRow>,
    received_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut it = rows.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<EventRow> = it.by_ref().take(1000).collect();
        let sqlite = tx.dialect() == Dialect::Sqlite;
        let mut next_seq = 0i64;
        if sqlite {
            let last: One<i64> = tx
                .fetch_one(
                    "UPDATE event_log_seq SET last = last + $1 WHERE id = 1 RETURNING last",
                    args![chunk.len() as i64],
                )
                .await?;
            next_seq = last.0 - chunk.len() as i64 + 1;
        }
        let mut sql = String::with_capacity(128 + chunk.len() * 52);
        sql.push_str(if sqlite {
            "INSERT INTO events (id, contact_id, type, occurred_at, received_at, source, message_id, properties, context, seq) VALUES "
        } else {
            "INSERT INTO events (id, contact_id, type, occurred_at, received_at, source, message_id, properties, context) VALUES "
        });
        let mut a: Vec<Val> = Vec::with_capacity(chunk.len() * 8 + 1);
        a.push(received_at.into());
        // JSON arrives as text: SQLite stores it as is; PostgreSQL casts it to jsonb.
        let cast = if tx.dialect() == Dialect::Postgres {
            "::jsonb"
        } else {
            ""
        };
        for (i, e) in chunk.into_iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            let n = a.len();
            sql.push_str(&format!(
                "(${},${},${},${},$1,${},${},${}{cast},${}{cast}",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6,
                n + 7,
                n + 8
            ));
            if sqlite {
                sql.push_str(&format!(",${})", n + 9));
            } else {
                sql.push(')');
            }
            a.extend(args![
                e.id,
                e.contact_id,
                e.event_type,
                e.occurred_at,
                e.source,
                e.message_id,
                e.properties,
                e.context
            ]);
            if sqlite {
                a.push(Val::from(next_seq));
                next_seq += 1;
            }
        }
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(())
}

/// Whether a store error is worth retrying the whole group for: a concurrent writer took a
/// unique value first (another node, or the REST API creating the same e-mail), or
/// PostgreSQL asked for a retry.
pub(crate) fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Conflict { .. } => true,
        StoreError::Db(sqlx::Error::Database(d)) => {
            d.is_unique_violation() || matches!(d.code().as_deref(), Some("40001" | "40P01"))
        }
        _ => false,
    }
}

impl Store {
    /// Writes a group of submissions in one transaction (see the module docs). Retries the
    /// whole group, from fresh state, when a concurrent writer got in the way.
    pub async fn ingest(
        &self,
        submissions: &[Submission],
        now: DateTime<Utc>,
        cache: &mut IngestCache,
    ) -> Result<Ingested, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.db().begin().await?;
            let result = async {
                lock_identities(&mut tx).await?;
                ingest_in(&mut tx, submissions, now, cache).await
            }
            .await;
            let result = match result {
                Ok(r) => tx.commit().await.map(|()| r),
                Err(e) => Err(e),
            };
            match result {
                Ok((out, sourced)) => {
                    cache.remember(sourced);
                    return Ok(out);
                }
                Err(e) if attempt < 4 && retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "ingest group retried");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The contact an identity belongs to (`kind` is [`ANONYMOUS_ID`] or [`USER_ID`]).
    pub async fn contact_by_identity(
        &self,
        kind: &str,
        value: &str,
    ) -> Result<Option<Uuid>, StoreError> {
        let r: Option<One<Uuid>> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT contact_id FROM identities WHERE kind = $1 AND value = $2",
                args![kind, value],
            )
            .await?;
        Ok(r.map(|r| r.0))
    }

    /// A contact's identities as `(kind, value)` pairs.
    pub async fn identities(&self, contact_id: Uuid) -> Result<Vec<(String, String)>, StoreError> {
        let rows: Vec<KindValue> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT kind, value FROM identities WHERE contact_id = $1 ORDER BY kind, value",
                args![contact_id],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.kind, r.value)).collect())
    }

    /// Number of stored events of every contact (for tests and benchmarks).
    pub async fn count_all_events(&self) -> Result<i64, StoreError> {
        let n: One<i64> = self
            .db()
            .reader()
            .fetch_one("SELECT COUNT(*) FROM events", vec![])
            .await?;
        Ok(n.0)
    }
}

async fn ingest_in(
    tx: &mut Tx,
    submissions: &[Submission],
    now: DateTime<Utc>,
    cache: &IngestCache,
) -> Result<(Ingested, Vec<Uuid>), StoreError> {
    // 1. Dedupe: within the group in memory, against earlier groups in event_keys.
    let mut keep: Vec<(&Message, Option<[u8; 16]>)> = Vec::new();
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for s in submissions {
        let ns = s.source_key.to_string();
        for m in &s.messages {
            let key = m.idempotency_key().map(|k| message_key(&ns, k));
            if let Some(k) = key {
                if !seen.insert(k) {
                    duplicates += 1;
                    continue;
                }
                keys.push(k);
            }
            keep.push((m, key));
        }
    }
    let fresh = claim_keys(tx, &keys, now).await?;
    duplicates += keys.len() - fresh.len();
    let messages: Vec<&Message> = keep
        .into_iter()
        .filter(|(_, k)| k.is_none_or(|k| fresh.contains(&k)))
        .map(|(m, _)| m)
        .collect();

    // 2–4. Resolve, apply, write.
    let mut r = Resolver::new(tx, now, cache);
    r.preload(&messages).await?;
    for m in &messages {
        r.message(m).await?;
    }
    let (mut out, sourced) = r.finish().await?;
    out.duplicates = duplicates;
    out.stored = messages.len();
    Ok((out, sourced))
}

/// A contact held in memory during a group.
struct Slot {
    c: Contact,
    /// Made in this group and not yet written.
    new: bool,
    /// Changed since loaded or written.
    dirty: bool,
}

/// Whether a message comes from a browser (a page anyone can script): its traits only fill
/// empty fields and never replace what a person or a server said.
fn from_browser(m: &Message) -> bool {
    if m.source == MessageSource::Snippet {
        return true;
    }
    let lib = m
        .context
        .get("library")
        .and_then(|l| l.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    ["analytics.js", "analytics-next", "javascript", "kizuna.js"]
        .iter()
        .any(|b| lib.contains(b))
}

/// The identify's e-mail trait, normalized, when it is a valid address.
fn traits_email(m: &Message) -> Option<String> {
    if m.kind != MessageType::Identify {
        return None;
    }
    let raw = m.traits.get("email")?.as_str()?;
    kizuna_core::email_address::normalize_email(raw, "email").ok()
}

/// `properties` of a tracked event: the message's properties or traits, plus the few
/// type-specific fields, serialized from the message without copying it.
#[derive(serde::Serialize)]
struct EventProperties<'a> {
    #[serde(flatten)]
    base: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    company_id: Option<String>,
}

/// `context` of a tracked event.
#[derive(serde::Serialize)]
struct EventContext<'a> {
    context: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anonymous_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_timestamp: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    timestamp_clamped: bool,
    #[serde(skip_serializing_if = "Map::is_empty")]
    integrations: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    extra: &'a Map<String, Value>,
}

/// The event a message becomes: what rules match on in `properties`, the rest in `context`.
fn event_row(m: &Message, contact_id: Uuid, company_id: Option<Uuid>) -> EventRow {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    let base = match m.kind {
        MessageType::Track | MessageType::Page | MessageType::Screen => &m.properties,
        MessageType::Identify | MessageType::Group => &m.traits,
        MessageType::Alias => &*EMPTY,
    };
    fn unless<'a>(base: &Map<String, Value>, k: &str, v: &'a Option<String>) -> Option<&'a str> {
        v.as_deref().filter(|_| !base.contains_key(k))
    }
    let properties = EventProperties {
        base,
        name: unless(base, "name", &m.name),
        category: unless(base, "category", &m.category),
        group_id: unless(base, "group_id", &m.group_id),
        previous_id: unless(base, "previous_id", &m.previous_id),
        company_id: company_id
            .filter(|_| !base.contains_key("company_id"))
            .map(|c| c.to_string()),
    };
    let context = EventContext {
        context: &m.context,
        user_id: m.user_id.as_deref(),
        anonymous_id: m.anonymous_id.as_deref(),
        original_timestamp: m.original_timestamp,
        sent_at: m.sent_at,
        timestamp_clamped: m.timestamp_clamped,
        integrations: &m.integrations,
        extra: &m.extra,
    };
    EventRow {
        id: Uuid::now_v7(),
        contact_id,
        event_type: m.event.clone(),
        occurred_at: m.timestamp,
        source: m.source.as_str().to_string(),
        message_id: m.message_id.clone(),
        properties: serde_json::to_string(&properties).unwrap_or_else(|_| "{}".into()),
        context: serde_json::to_string(&context).ok(),
    }
}

/// Identity resolution and writes for one group, inside its transaction.
struct Resolver<'t> {
    tx: &'t mut Tx,
    now: DateTime<Utc>,
    cache: &'t IngestCache,
    /// Identity → contact (preloaded, plus what this group attached).
    ids: HashMap<(Kind, String), Uuid>,
    /// Identities to write at the next flush (their contact is looked up in `ids` then).
    dirty_ids: Vec<(Kind, String)>,
    dirty_id_set: HashSet<(Kind, String)>,
    /// E-mail → contact, for the e-mails this group's identifies carry.
    emails: HashMap<String, Uuid>,
    /// Contacts known to have (or not) a user id.
    has_user_id: HashMap<Uuid, bool>,
    slots: HashMap<Uuid, Slot>,
    /// Merged contact → survivor.
    redirect: HashMap<Uuid, Uuid>,
    rows: Vec<Option<EventRow>>,
    /// Row index of the `contact.created` event of each contact made in this group.
    created_row: HashMap<Uuid, usize>,
    /// First attribution seen per contact not held in memory; checked at the end.
    first_touch: Vec<(Uuid, Source)>,
    first_touch_seen: HashSet<Uuid>,
    /// Contacts known to have a source (for the cache).
    sourced: Vec<Uuid>,
    defs: Option<HashMap<String, FieldDefinition>>,
    groups: HashMap<String, Uuid>,
    out: Ingested,
}

#[derive(sqlx::FromRow)]
struct IdentityRow {
    kind: String,
    value: String,
    contact_id: Uuid,
}

#[derive(sqlx::FromRow)]
struct EmailRow {
    id: Uuid,
    email: Option<String>,
}

#[derive(sqlx::FromRow)]
struct SourceRow {
    id: Uuid,
    source: Json<Value>,
}

/// `$a,$b,…` placeholders for `n` values after `start` bound ones.
fn placeholders(start: usize, n: usize) -> String {
    (start + 1..=start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl<'t> Resolver<'t> {
    fn new(tx: &'t mut Tx, now: DateTime<Utc>, cache: &'t IngestCache) -> Self {
        Resolver {
            tx,
            now,
            cache,
            ids: HashMap::new(),
            dirty_ids: Vec::new(),
            dirty_id_set: HashSet::new(),
            emails: HashMap::new(),
            has_user_id: HashMap::new(),
            slots: HashMap::new(),
            redirect: HashMap::new(),
            rows: Vec::new(),
            created_row: HashMap::new(),
            first_touch: Vec::new(),
            first_touch_seen: HashSet::new(),
            sourced: Vec::new(),
            defs: None,
            groups: HashMap::new(),
            out: Ingested::default(),
        }
    }

    /// Loads every identity and e-mail the group names, one query per kind.
    async fn preload(&mut self, messages: &[&Message]) -> Result<(), StoreError> {
        let mut anon: HashSet<&str> = HashSet::new();
        let mut users: HashSet<&str> = HashSet::new();
        let mut emails: HashSet<String> = HashSet::new();
        for m in messages {
            if let Some(a) = &m.anonymous_id {
                anon.insert(a);
            }
            if let Some(u) = &m.user_id {
                users.insert(u);
            }
            if let Some(p) = &m.previous_id {
                anon.insert(p);
                users.insert(p);
            }
            if let Some(e) = traits_email(m) {
                emails.insert(e);
            }
        }
        for (kind, values) in [(Kind::Anonymous, anon), (Kind::User, users)] {
            let values: Vec<&str> = values.into_iter().collect();
            for chunk in values.chunks(1000) {
                let sql = format!(
                    "SELECT kind, value, contact_id FROM identities WHERE kind = $1 AND value IN ({})",
                    placeholders(1, chunk.len())
                );
                let mut a = args![kind.as_str()];
                a.extend(chunk.iter().map(|v| Val::from(*v)));
                let rows: Vec<IdentityRow> = self.tx.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
                for r in rows {
                    if let Some(k) = Kind::parse(&r.kind) {
                        if k == Kind::User {
                            self.has_user_id.insert(r.contact_id, true);
                        }
                        self.ids.insert((k, r.value), r.contact_id);
                    }
                }
            }
        }
        let emails: Vec<String> = emails.into_iter().collect();
        for chunk in emails.chunks(1000) {
            let sql = format!(
                "SELECT id, email FROM contacts WHERE email IN ({})",
                placeholders(0, chunk.len())
            );
            let a: Vec<Val> = chunk.iter().map(Val::from).collect();
            let rows: Vec<EmailRow> = self.tx.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
            for r in rows {
                if let Some(e) = r.email {
                    self.emails.insert(e, r.id);
                }
            }
        }
        Ok(())
    }

    fn follow(&self, mut id: Uuid) -> Uuid {
        while let Some(next) = self.redirect.get(&id) {
            id = *next;
        }
        id
    }

    fn lookup(&self, kind: Kind, value: &str) -> Option<Uuid> {
        self.ids
            .get(&(kind, value.to_string()))
            .map(|id| self.follow(*id))
    }

    fn attach(&mut self, kind: Kind, value: &str, contact: Uuid) {
        let key = (kind, value.to_string());
        self.ids.insert(key.clone(), contact);
        if kind == Kind::User {
            self.has_user_id.insert(contact, true);
        }
        if self.dirty_id_set.insert(key.clone()) {
            self.dirty_ids.push(key);
        }
    }

    /// Makes a contact (written at the next flush) with a `contact.created` event.
    fn new_contact(&mut self, m: &Message, source: Option<&Source>) -> Uuid {
        let id = Uuid::now_v7();
        let mut c = Contact::new(id, self.now);
        if let Some(s) = source {
            c.source = s.clone();
        }
        let anonymous = m.user_id.is_none() && traits_email(m).is_none();
        let mut props = json!({"anonymous": anonymous});
        if let Some(a) = &m.anonymous_id {
            props["anonymous_id"] = a.as_str().into();
        }
        if let Some(u) = &m.user_id {
            props["user_id"] = u.as_str().into();
        }
        self.created_row.insert(id, self.rows.len());
        self.rows.push(Some(EventRow {
            id: Uuid::now_v7(),
            contact_id: id,
            event_type: "contact.created".into(),
            occurred_at: m.timestamp.min(self.now),
            source: m.source.as_str().into(),
            message_id: None,
            properties: props.to_string(),
            context: None,
        }));
        self.has_user_id.insert(id, false);
        self.slots.insert(
            id,
            Slot {
                c,
                new: true,
                dirty: false,
            },
        );
        self.out.contacts_created += 1;
        id
    }

    /// Holds a contact in memory; `false` if it does not exist.
    async fn load(&mut self, id: Uuid) -> Result<bool, StoreError> {
        if self.slots.contains_key(&id) {
            return Ok(true);
        }
        match contacts::get_in(self.tx, id).await? {
            Some(c) => {
                if !c.source.is_empty() {
                    self.sourced.push(id);
                }
                self.slots.insert(
                    id,
                    Slot {
                        c,
                        new: false,
                        dirty: false,
                    },
                );
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The user ids of a contact (written ones and this group's).
    async fn user_ids_of(&mut self, id: Uuid) -> Result<HashSet<String>, StoreError> {
        let mut out: HashSet<String> = self
            .ids
            .iter()
            .filter(|((k, _), c)| *k == Kind::User && self.follow(**c) == id)
            .map(|((_, v), _)| v.clone())
            .collect();
        if !self.slots.get(&id).is_some_and(|s| s.new) {
            let rows: Vec<One<String>> = self
                .tx
                .fetch_all(
                    "SELECT value FROM identities WHERE contact_id = $1 AND kind = $2",
                    args![id, USER_ID],
                )
                .await?;
            out.extend(rows.into_iter().map(|r| r.0));
        }
        self.has_user_id.insert(id, !out.is_empty());
        Ok(out)
    }

    /// Whether the contact has a user id other than `uid`.
    async fn has_other_user_id(&mut self, id: Uuid, uid: &str) -> Result<bool, StoreError> {
        Ok(self.user_ids_of(id).await?.iter().any(|u| u != uid))
    }

    /// An anonymous profile: no e-mail and no user id.
    async fn is_anonymous(&mut self, id: Uuid) -> Result<bool, StoreError> {
        if !self.load(id).await? {
            return Ok(false);
        }
        if self.slots[&id].c.email.is_some() {
            return Ok(false);
        }
        let known = match self.has_user_id.get(&id) {
            Some(true) => true,
            _ => !self.user_ids_of(id).await?.is_empty(),
        };
        Ok(!known)
    }

    /// Folds `other` into `survivor`. An anonymous profile made in this group is folded in
    /// memory (it never existed outside this transaction); anything else is a recorded merge
    /// ([`merges::merge_in`]), which can be undone.
    async fn merge(
        &mut self,
        survivor: Uuid,
        other: Uuid,
        prefer_survivor: bool,
        source: &str,
    ) -> Result<(), StoreError> {
        let (survivor, other) = (self.follow(survivor), self.follow(other));
        if survivor == other {
            return Ok(());
        }
        let fresh_profile = self
            .slots
            .get(&other)
            .is_some_and(|s| s.new && s.c.email.is_none())
            && !self.has_user_id.get(&other).copied().unwrap_or(false);
        if fresh_profile && self.load(survivor).await? {
            let o = self.slots.remove(&other).expect("checked above");
            if let Some(i) = self.created_row.remove(&other) {
                self.rows[i] = None;
                self.out.contacts_created -= 1;
            }
            let s = self.slots.get_mut(&survivor).expect("loaded");
            if s.c.source.is_empty() && !o.c.source.is_empty() {
                s.c.source = o.c.source;
                s.c.updated_at = self.now;
                s.dirty = !s.new;
            }
            self.repoint(other, survivor);
            return Ok(());
        }
        self.flush().await?;
        let record =
            merges::merge_in(self.tx, survivor, other, self.now, source, prefer_survivor).await?;
        self.out.merges += 1;
        self.slots.remove(&other);
        if let Some(c) = record.contact {
            self.slots.insert(
                survivor,
                Slot {
                    c,
                    new: false,
                    dirty: false,
                },
            );
        }
        self.repoint(other, survivor);
        Ok(())
    }

    fn repoint(&mut self, from: Uuid, to: Uuid) {
        self.redirect.insert(from, to);
        for v in self.ids.values_mut() {
            if *v == from {
                *v = to;
            }
        }
        let kept = self.slots.get(&to).and_then(|s| s.c.email.clone());
        self.emails.retain(|e, v| {
            if *v == from {
                *v = to;
                kept.as_deref() == Some(e.as_str())
            } else {
                true
            }
        });
        if self.has_user_id.get(&from).copied().unwrap_or(false) {
            self.has_user_id.insert(to, true);
        }
    }

    /// Decides which contact a message (other than an alias) belongs to, creating, attaching
    /// and merging as the rules say. Returns the contact and whether the identify's e-mail
    /// may be applied to it.
    ///
    /// With a `userId`: the contact with that user id; else the one with the identify's e-mail
    /// (unless that contact has a different user id: the e-mail is then not applied); else the
    /// cookie's anonymous profile; else a new contact. A contact with the user id and another
    /// with the e-mail are one person and merge into the e-mail's. The cookie's anonymous
    /// profile merges into the contact (the contact's values win); a cookie whose profile is
    /// already someone known is left alone (a shared computer).
    ///
    /// With only an `anonymousId`: the cookie's contact, else a new anonymous profile. An
    /// identify with an e-mail that belongs to another contact moves the cookie there (an
    /// anonymous profile merging into it); an e-mail nobody has goes on the cookie's profile,
    /// unless that profile already has a different e-mail (then a new contact gets it).
    async fn resolve(
        &mut self,
        m: &Message,
        touch: Option<&Source>,
    ) -> Result<(Uuid, bool), StoreError> {
        let email = traits_email(m);
        let src = m.source.as_str();
        if let Some(uid) = &m.user_id {
            let mut target = self.lookup(Kind::User, uid);
            let by_email = email.as_ref().and_then(|e| self.emails.get(e).copied());
            let mut apply_email = true;
            if let (Some(t), Some(e)) = (target, by_email)
                && t != e
            {
                if self.has_other_user_id(e, uid).await? {
                    apply_email = false;
                } else {
                    self.merge(e, t, false, src).await?;
                    target = Some(self.follow(e));
                }
            }
            if target.is_none()
                && let Some(e) = by_email
            {
                if self.has_other_user_id(e, uid).await? {
                    apply_email = false;
                } else {
                    target = Some(e);
                }
            }
            let by_aid = m
                .anonymous_id
                .as_ref()
                .and_then(|a| self.lookup(Kind::Anonymous, a));
            if target.is_none()
                && let Some(a) = by_aid
                && self.is_anonymous(a).await?
            {
                target = Some(a);
            }
            let target = match target {
                Some(t) => t,
                None => self.new_contact(m, touch),
            };
            if self.lookup(Kind::User, uid) != Some(target) {
                self.attach(Kind::User, uid, target);
            }
            if let Some(aid) = &m.anonymous_id {
                match self.lookup(Kind::Anonymous, aid) {
                    None => self.attach(Kind::Anonymous, aid, target),
                    Some(a) if a != target && self.is_anonymous(a).await? => {
                        self.merge(target, a, true, src).await?;
                    }
                    _ => {}
                }
            }
            return Ok((self.follow(target), apply_email));
        }

        let aid = m.anonymous_id.as_deref().unwrap_or_default();
        let mut target = self.lookup(Kind::Anonymous, aid);
        if let Some(e) = &email {
            match self.emails.get(e).copied() {
                Some(owner) => {
                    if let Some(t) = target
                        && t != owner
                        && self.is_anonymous(t).await?
                    {
                        self.merge(owner, t, true, src).await?;
                    }
                    target = Some(self.follow(owner));
                }
                None => {
                    if let Some(t) = target
                        && self.load(t).await?
                        && self.slots[&t].c.email.as_ref().is_some_and(|x| x != e)
                    {
                        target = None;
                    }
                }
            }
        }
        let target = match target {
            Some(t) => t,
            None => self.new_contact(m, touch),
        };
        if self.lookup(Kind::Anonymous, aid) != Some(target) {
            self.attach(Kind::Anonymous, aid, target);
        }
        Ok((target, true))
    }

    /// An alias: `previousId` (a user id or a cookie id) and `userId` are one person.
    async fn alias(&mut self, m: &Message, touch: Option<&Source>) -> Result<Uuid, StoreError> {
        let uid = m.user_id.as_deref().unwrap_or_default();
        let prev = m.previous_id.as_deref().unwrap_or_default();
        let p = self
            .lookup(Kind::User, prev)
            .or_else(|| self.lookup(Kind::Anonymous, prev));
        let k = self.lookup(Kind::User, uid);
        let target = match (p, k) {
            (None, None) => {
                let t = self.new_contact(m, touch);
                self.attach(Kind::User, uid, t);
                self.attach(Kind::User, prev, t);
                t
            }
            (None, Some(k)) => {
                self.attach(Kind::User, prev, k);
                k
            }
            (Some(p), None) => {
                self.attach(Kind::User, uid, p);
                p
            }
            (Some(p), Some(k)) if p != k => {
                let anonymous = self.is_anonymous(p).await?;
                self.merge(k, p, anonymous, m.source.as_str()).await?;
                self.follow(k)
            }
            (Some(p), Some(_)) => p,
        };
        if let Some(aid) = &m.anonymous_id
            && self.lookup(Kind::Anonymous, aid).is_none()
        {
            self.attach(Kind::Anonymous, aid, target);
        }
        Ok(target)
    }

    async fn message(&mut self, m: &Message) -> Result<(), StoreError> {
        let target = match m.kind {
            MessageType::Alias => self.alias(m, None).await?,
            _ => {
                let (target, apply_email) = self.resolve(m, None).await?;
                if m.kind == MessageType::Identify {
                    self.identify(m, target, apply_email).await?;
                }
                target
            }
        };
        let target = self.follow(target);
        // Attribution is worked out only for a contact that may still lack a first touch
        // (most events come from contacts that have one).
        if self.may_need_source(target)
            && let Some(src) = attribution(m)
        {
            self.touch(target, src);
        }
        let company = match m.kind {
            MessageType::Group => Some(self.group(m, target).await?),
            _ => None,
        };
        self.rows.push(Some(event_row(m, target, company)));
        Ok(())
    }

    /// Whether a contact may have no first-touch source yet.
    fn may_need_source(&self, id: Uuid) -> bool {
        match self.slots.get(&id) {
            Some(s) => s.c.source.is_empty(),
            None => !self.cache.sourced.contains(&id) && !self.first_touch_seen.contains(&id),
        }
    }

    /// Records first-touch attribution for a contact that may not have any yet.
    fn touch(&mut self, id: Uuid, src: Source) {
        if let Some(s) = self.slots.get_mut(&id) {
            if s.c.source.is_empty() {
                s.c.source = src;
                s.c.updated_at = self.now;
                s.dirty = !s.new;
            }
            return;
        }
        if self.cache.sourced.contains(&id) || !self.first_touch_seen.insert(id) {
            return;
        }
        self.first_touch.push((id, src));
    }

    async fn definitions(&mut self) -> Result<&HashMap<String, FieldDefinition>, StoreError> {
        if self.defs.is_none() {
            self.defs = Some(fields::definitions_in(self.tx).await?);
        }
        Ok(self.defs.as_ref().expect("just set"))
    }

    /// Applies an identify's traits to its contact.
    async fn identify(
        &mut self,
        m: &Message,
        target: Uuid,
        apply_email: bool,
    ) -> Result<(), StoreError> {
        if m.traits.is_empty() || !self.load(target).await? {
            return Ok(());
        }
        let custom_names: HashSet<String> = self.definitions().await?.keys().cloned().collect();
        let mut t = identify_traits(&m.traits, &custom_names);
        if !apply_email {
            t.contact.email = Patch::Absent;
            t.ignored.push(IgnoredTrait {
                name: "email".into(),
                reason: "the address belongs to a contact with another user id".into(),
            });
        }
        let mut input = self.checked_input(t.contact, &mut t.ignored).await?;
        if let Some(company) = t.company
            && let Some(id) = self.company_for(None, company).await?
        {
            input.company_id = Patch::Value(id);
        }
        let overwrite = !from_browser(m);
        let slot = self.slots.get_mut(&target).expect("loaded");
        let old_email = slot.c.email.clone();
        let applied = slot.c.apply(input, overwrite);
        if applied.changed {
            slot.c.updated_at = self.now;
            slot.dirty = !slot.new;
            let new_email = slot.c.email.clone();
            if new_email != old_email {
                if let Some(e) = old_email {
                    self.emails.remove(&e);
                }
                if let Some(e) = new_email {
                    self.emails.insert(e, target);
                }
            }
            let mut props = json!({"via": "identify"});
            if !t.ignored.is_empty() {
                props["ignored_traits"] = serde_json::to_value(&t.ignored).unwrap_or_default();
            }
            self.rows.push(Some(EventRow {
                id: Uuid::now_v7(),
                contact_id: target,
                event_type: "contact.updated".into(),
                occurred_at: m.timestamp.min(self.now),
                source: m.source.as_str().into(),
                message_id: None,
                properties: props.to_string(),
                context: None,
            }));
        }
        Ok(())
    }

    /// Validates a contact input field by field: a bad value is left out and reported.
    async fn checked_input(
        &mut self,
        input: ContactInput,
        ignored: &mut Vec<IgnoredTrait>,
    ) -> Result<ContactInput, StoreError> {
        let mut input = match input.clone().validate() {
            Ok(i) => i,
            Err(errs) => {
                let mut input = input;
                for e in &errs.0 {
                    ignored.push(IgnoredTrait {
                        name: e.field.clone(),
                        reason: e.message.clone(),
                    });
                    match e.field.split('.').next().unwrap_or("") {
                        "email" => input.email = Patch::Absent,
                        "first_name" => input.first_name = Patch::Absent,
                        "last_name" => input.last_name = Patch::Absent,
                        "phone" => input.phone = Patch::Absent,
                        "job_title" => input.job_title = Patch::Absent,
                        "department" => input.department = Patch::Absent,
                        "address" => input.address = Patch::Absent,
                        "custom" => {
                            if let Some(k) = e.field.strip_prefix("custom.") {
                                input.custom.remove(k);
                            }
                        }
                        _ => {}
                    }
                }
                input.validate().unwrap_or_default()
            }
        };
        if !input.custom.is_empty() {
            let defs = self.definitions().await?.clone();
            let mut kept = Map::new();
            for (k, v) in std::mem::take(&mut input.custom) {
                let mut one = Map::new();
                one.insert(k.clone(), v);
                match kizuna_core::field::validate_custom(one, &defs) {
                    Ok(ok) => kept.extend(ok),
                    Err(errs) => ignored.extend(errs.0.into_iter().map(|e| IgnoredTrait {
                        name: k.clone(),
                        reason: e.message,
                    })),
                }
            }
            input.custom = kept;
        }
        Ok(input)
    }

    /// The company a group id or company traits stand for: the group's company, else the one
    /// with the traits' domain, else the one whose name matches by 名寄せ, else a new one. The
    /// traits update it. `None` when nothing identifies a company.
    async fn company_for(
        &mut self,
        group_id: Option<&str>,
        input: CompanyInput,
    ) -> Result<Option<Uuid>, StoreError> {
        let input = match input.clone().validate(false) {
            Ok(i) => i,
            Err(errs) => {
                // Keep what is valid (a bad domain must not lose the name).
                let mut input = input;
                for e in &errs.0 {
                    match e.field.as_str() {
                        "name" => input.name = Patch::Absent,
                        "domain" => input.domain = Patch::Absent,
                        "industry" => input.industry = Patch::Absent,
                        "employee_count" => input.employee_count = Patch::Absent,
                        "annual_revenue" => input.annual_revenue = Patch::Absent,
                        "website" => input.website = Patch::Absent,
                        "phone" => input.phone = Patch::Absent,
                        _ => {}
                    }
                }
                input.validate(false).unwrap_or_default()
            }
        };
        let mut found: Option<Company> = None;
        if let Some(g) = group_id {
            let id = match self.groups.get(g) {
                Some(id) => Some(*id),
                None => self
                    .tx
                    .fetch_optional::<One<Uuid>>(
                        "SELECT company_id FROM company_groups WHERE group_id = $1",
                        args![g],
                    )
                    .await?
                    .map(|r| r.0),
            };
            if let Some(id) = id {
                found = companies::get_in(self.tx, id).await?;
            }
        }
        if found.is_none()
            && let Patch::Value(d) = &input.domain
        {
            found = companies::find_by_domain(self.tx, d).await?;
        }
        if found.is_none()
            && let Patch::Value(n) = &input.name
        {
            let key = kizuna_core::company::normalize_company_name(n);
            let sql = format!(
                "SELECT {} FROM companies WHERE name_key = $1 ORDER BY id LIMIT 1",
                companies::COLUMNS
            );
            found = self
                .tx
                .fetch_optional::<companies::CompanyRow>(sqlx::AssertSqlSafe(sql), args![key])
                .await?
                .map(Company::from);
        }
        let id = match found {
            Some(mut c) => {
                if companies::apply(&mut c, input, false) {
                    c.updated_at = self.now;
                    companies::save(self.tx, &c).await?;
                }
                c.id
            }
            None => {
                let name = match (&input.name, group_id) {
                    (Patch::Value(n), _) => n.clone(),
                    (_, Some(g)) => g.to_string(),
                    _ => return Ok(None),
                };
                let c = companies::new_company(
                    CompanyInput {
                        name: Patch::Value(name),
                        ..input
                    },
                    self.now,
                );
                companies::insert(self.tx, &c).await?;
                c.id
            }
        };
        if let Some(g) = group_id
            && self.groups.get(g) != Some(&id)
        {
            self.tx
                .execute(
                    "INSERT INTO company_groups (group_id, company_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (group_id) DO UPDATE SET company_id = excluded.company_id",
                    args![g, id, self.now],
                )
                .await?;
            self.groups.insert(g.to_string(), id);
        }
        Ok(Some(id))
    }

    /// A group call: the contact belongs to the group's company (traits update the company).
    async fn group(&mut self, m: &Message, target: Uuid) -> Result<Uuid, StoreError> {
        let g = group_traits(&m.traits);
        let group_id = m.group_id.as_deref().unwrap_or_default();
        let company = self
            .company_for(Some(group_id), g.company)
            .await?
            .expect("a group id always names a company");
        if self.load(target).await? {
            let s = self.slots.get_mut(&target).expect("loaded");
            if s.c.company_id != Some(company) {
                s.c.company_id = Some(company);
                s.c.updated_at = self.now;
                s.dirty = !s.new;
            }
        }
        Ok(company)
    }

    /// Writes new contacts, changed contacts and new identities.
    async fn flush(&mut self) -> Result<(), StoreError> {
        let mut new: Vec<Uuid> = self
            .slots
            .iter()
            .filter(|(_, s)| s.new)
            .map(|(id, _)| *id)
            .collect();
        new.sort();
        for chunk in new.chunks(500) {
            let mut sql = format!("INSERT INTO contacts ({COLUMNS}) VALUES ");
            let mut a: Vec<Val> = Vec::with_capacity(chunk.len() * 16);
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push('(');
                sql.push_str(&placeholders(a.len(), 16));
                sql.push(')');
                a.extend(contacts::row_args(&self.slots[id].c));
            }
            self.tx
                .execute(sqlx::AssertSqlSafe(sql), a)
                .await
                .map_err(|e| {
                    crate::on_unique(e, "email", || {
                        "a concurrent writer created a contact with the same e-mail".into()
                    })
                })?;
        }
        let mut dirty: Vec<Uuid> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dirty && !s.new)
            .map(|(id, _)| *id)
            .collect();
        dirty.sort();
        for id in dirty {
            contacts::save(self.tx, &self.slots[&id].c).await?;
        }
        for s in self.slots.values_mut() {
            s.new = false;
            s.dirty = false;
        }
        let ids = std::mem::take(&mut self.dirty_ids);
        self.dirty_id_set.clear();
        for chunk in ids.chunks(1000) {
            let mut sql = String::from(
                "INSERT INTO identities (kind, value, contact_id, created_at) VALUES ",
            );
            let mut a: Vec<Val> = Vec::with_capacity(chunk.len() * 3 + 1);
            a.push(self.now.into());
            for (i, key) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                let contact = self.follow(self.ids[key]);
                let n = a.len();
                sql.push_str(&format!("(${},${},${},$1)", n + 1, n + 2, n + 3));
                a.extend(args![key.0.as_str(), key.1.as_str(), contact]);
            }
            sql.push_str(
                " ON CONFLICT (kind, value) DO UPDATE SET contact_id = excluded.contact_id",
            );
            self.tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
        }
        Ok(())
    }

    /// Sets pending first touches, writes everything, and appends the events.
    async fn finish(mut self) -> Result<(Ingested, Vec<Uuid>), StoreError> {
        let mut check: Vec<(Uuid, Source)> = Vec::new();
        let mut checked = HashSet::new();
        for (id, src) in std::mem::take(&mut self.first_touch) {
            let id = self.follow(id);
            if self.slots.contains_key(&id) {
                self.touch(id, src);
            } else if checked.insert(id) {
                check.push((id, src));
            }
        }
        self.flush().await?;
        for chunk in check.chunks(1000) {
            let sql = format!(
                "SELECT id, source FROM contacts WHERE id IN ({})",
                placeholders(0, chunk.len())
            );
            let a: Vec<Val> = chunk.iter().map(|(id, _)| Val::from(*id)).collect();
            let rows: Vec<SourceRow> = self.tx.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
            let empty: HashSet<Uuid> = rows
                .iter()
                .filter(|r| match &r.source.0 {
                    Value::Object(o) => o.values().all(Value::is_null),
                    _ => true,
                })
                .map(|r| r.id)
                .collect();
            for (id, src) in chunk {
                if empty.contains(id) {
                    self.tx
                        .execute(
                            "UPDATE contacts SET source = $2, updated_at = $3 WHERE id = $1",
                            args![*id, serde_json::to_value(src).unwrap_or_default(), self.now],
                        )
                        .await?;
                }
            }
            self.sourced.extend(rows.iter().map(|r| r.id));
        }
        for (id, s) in &self.slots {
            if !s.c.source.is_empty() {
                self.sourced.push(*id);
            }
        }
        let mut rows = Vec::with_capacity(self.rows.len());
        let mut contacts = Vec::new();
        let mut seen = HashSet::new();
        for r in std::mem::take(&mut self.rows).into_iter().flatten() {
            let mut r = r;
            r.contact_id = self.follow(r.contact_id);
            if seen.insert(r.contact_id) {
                contacts.push(r.contact_id);
            }
            self.out.event_ids.push(r.id);
            rows.push(r);
        }
        insert_events(self.tx, rows, self.now).await?;
        self.out.contact_ids = contacts;
        Ok((self.out, self.sourced))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_depend_on_the_source() {
        assert_eq!(message_key("a", "m1"), message_key("a", "m1"));
        assert_ne!(message_key("a", "m1"), message_key("b", "m1"));
        assert_ne!(message_key("a", "m1"), message_key("a", "m2"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(message_key("ab", "c"), message_key("a", "bc"));
    }

    #[test]
    fn retryable_errors() {
        assert!(retryable(&StoreError::conflict("email", "taken")));
        assert!(!retryable(&StoreError::NotFound));
    }
}
