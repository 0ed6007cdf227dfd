//! The engine's per-contact state: behaviour features, scores, segment memberships, timers,
//! the idempotency ledger of its effects, and small settings. Reads take a batch of contacts;
//! writes are multi-row statements inside the engine's transaction.

use crate::db::{One, Tx, Val};
use crate::{Store, StoreError, args};
use kizuna_core::company::Company;
use kizuna_core::contact::{Contact, LifecycleStage, Temperature};
use std::collections::HashSet;
use uuid::Uuid;

/// Ids per `IN (…)` list.
const IN_CHUNK: usize = 500;
/// Rows per multi-row statement.
const ROWS: usize = 500;

fn placeholders(start: usize, n: usize) -> String {
    (start + 1..=start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `(…),(…)` for `rows` rows of `width` parameters.
fn values(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(r * width, width)))
        .collect::<Vec<_>>()
        .join(",")
}

async fn by_ids<T: crate::db::Record>(
    store: &Store,
    sql_before_in: &str,
    sql_after_in: &str,
    ids: &[Uuid],
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for chunk in ids.chunks(IN_CHUNK) {
        let sql = format!(
            "{sql_before_in} IN ({}){sql_after_in}",
            placeholders(0, chunk.len())
        );
        let a: Vec<Val> = chunk.iter().map(|i| Val::from(*i)).collect();
        out.extend(
            store
                .db()
                .reader()
                .fetch_all::<T>(sqlx::AssertSqlSafe(sql), a)
                .await?,
        );
    }
    Ok(out)
}

/// A stored score row.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    /// Contact.
    pub contact_id: Uuid,
    /// Model.
    pub model_id: Uuid,
    /// Total as of `as_of`.
    pub score: f64,
    /// Behaviour as of `as_of`.
    pub behaviour: f64,
    /// Fit.
    pub fit: f64,
    /// Grade letter.
    pub grade: String,
    /// When the numbers were computed (µs).
    pub as_of: i64,
    /// The model state (JSON).
    pub state: String,
}

#[derive(sqlx::FromRow)]
struct ScoreDb {
    contact_id: Uuid,
    model_id: Uuid,
    score: f64,
    behaviour: f64,
    fit: f64,
    grade: String,
    as_of: i64,
    state: String,
}

impl From<ScoreDb> for ScoreRow {
    fn from(r: ScoreDb) -> Self {
        ScoreRow {
            contact_id: r.contact_id,
            model_id: r.model_id,
            score: r.score,
            behaviour: r.behaviour,
            fit: r.fit,
            grade: r.grade,
            as_of: r.as_of,
            state: r.state,
        }
    }
}

#[derive(sqlx::FromRow)]
struct Pair {
    a: Uuid,
    b: Uuid,
}

#[derive(sqlx::FromRow)]
struct FeatureDb {
    contact_id: Uuid,
    feature: String,
    state: String,
}

#[derive(sqlx::FromRow)]
struct TimerDb {
    contact_id: Uuid,
    due_at: i64,
}

impl Store {
    /// Contacts by id (missing ids are left out).
    pub async fn contacts_by_ids(&self, ids: &[Uuid]) -> Result<Vec<Contact>, StoreError> {
        let rows: Vec<crate::contacts::ContactRow> = by_ids(
            self,
            &format!("SELECT {} FROM contacts WHERE id", crate::contacts::COLUMNS),
            "",
            ids,
        )
        .await?;
        Ok(rows.into_iter().map(Contact::from).collect())
    }

    /// Companies by id.
    pub async fn companies_by_ids(&self, ids: &[Uuid]) -> Result<Vec<Company>, StoreError> {
        let rows: Vec<crate::companies::CompanyRow> = by_ids(
            self,
            &format!(
                "SELECT {} FROM companies WHERE id",
                crate::companies::COLUMNS
            ),
            "",
            ids,
        )
        .await?;
        Ok(rows.into_iter().map(Company::from).collect())
    }

    /// Every company.
    pub async fn all_companies(&self) -> Result<Vec<Company>, StoreError> {
        let rows: Vec<crate::companies::CompanyRow> = self
            .db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!(
                    "SELECT {} FROM companies",
                    crate::companies::COLUMNS
                )),
                vec![],
            )
            .await?;
        Ok(rows.into_iter().map(Company::from).collect())
    }

    /// Which of these contacts exist.
    pub async fn existing_contacts(&self, ids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
        let rows: Vec<One<Uuid>> =
            by_ids(self, "SELECT id FROM contacts WHERE id", "", ids).await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Feature states of contacts: (contact, feature key, state JSON).
    pub async fn features_of(
        &self,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, String, String)>, StoreError> {
        let rows: Vec<FeatureDb> = by_ids(
            self,
            "SELECT contact_id, feature, state FROM engine_features WHERE contact_id",
            "",
            ids,
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.contact_id, r.feature, r.state))
            .collect())
    }

    /// Feature states of contacts, only for the given feature keys (a build reads what its
    /// filter reads, not every feature a contact has).
    pub async fn features_of_keys(
        &self,
        ids: &[Uuid],
        keys: &[String],
    ) -> Result<Vec<(Uuid, String, String)>, StoreError> {
        if keys.is_empty() || ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT contact_id, feature, state FROM engine_features WHERE feature IN ({}) AND contact_id IN ({})",
                placeholders(0, keys.len()),
                placeholders(keys.len(), chunk.len())
            );
            let mut a: Vec<Val> = keys.iter().map(|k| Val::from(k.clone())).collect();
            a.extend(chunk.iter().map(|i| Val::from(*i)));
            let rows: Vec<FeatureDb> = self
                .db()
                .reader()
                .fetch_all(sqlx::AssertSqlSafe(sql), a)
                .await?;
            out.extend(rows.into_iter().map(|r| (r.contact_id, r.feature, r.state)));
        }
        Ok(out)
    }

    /// Contacts with a state for a feature (ids only: candidates of a build).
    pub async fn feature_holder_ids(&self, key: &str) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<One<Uuid>> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT contact_id FROM engine_features WHERE feature = $1",
                args![key],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The feature keys that have any state.
    pub async fn stored_feature_keys(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<One<String>> = self
            .db()
            .reader()
            .fetch_all("SELECT DISTINCT feature FROM engine_features", vec![])
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Score rows of contacts.
    pub async fn scores_of(&self, ids: &[Uuid]) -> Result<Vec<ScoreRow>, StoreError> {
        let rows: Vec<ScoreDb> = by_ids(
            self,
            "SELECT contact_id, model_id, score, behaviour, fit, grade, as_of, state FROM contact_scores WHERE contact_id",
            "",
            ids,
        )
        .await?;
        Ok(rows.into_iter().map(ScoreRow::from).collect())
    }

    /// Contacts scored by a model with one of these grades.
    pub async fn contacts_with_grades(
        &self,
        model: Uuid,
        grades: &[&str],
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut a = args![model];
        let ph: Vec<String> = grades
            .iter()
            .map(|g| {
                a.push((*g).into());
                format!("${}", a.len())
            })
            .collect();
        let sql = format!(
            "SELECT contact_id FROM contact_scores WHERE model_id = $1 AND grade IN ({})",
            ph.join(",")
        );
        let rows: Vec<One<Uuid>> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Contacts whose stored score under a model is at least `min` (stored scores are as of
    /// their last update; decay only lowers them, so this is a superset of the current ones).
    pub async fn contacts_with_score_at_least(
        &self,
        model: Uuid,
        min: f64,
    ) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<One<Uuid>> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT contact_id FROM contact_scores WHERE model_id = $1 AND score >= $2",
                args![model, min],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Segment memberships of contacts: (contact, segment).
    pub async fn memberships_of(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
        let rows: Vec<Pair> = by_ids(
            self,
            "SELECT contact_id AS a, segment_id AS b FROM segment_members WHERE contact_id",
            "",
            ids,
        )
        .await?;
        Ok(rows.into_iter().map(|p| (p.a, p.b)).collect())
    }

    /// Static list memberships of contacts: (contact, list).
    pub async fn list_memberships_of(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
        let rows: Vec<Pair> = by_ids(
            self,
            "SELECT contact_id AS a, list_id AS b FROM list_members WHERE contact_id",
            "",
            ids,
        )
        .await?;
        Ok(rows.into_iter().map(|p| (p.a, p.b)).collect())
    }

    /// Members of a list.
    pub async fn list_member_ids(&self, list: Uuid) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<One<Uuid>> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT contact_id FROM list_members WHERE list_id = $1",
                args![list],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Members of a segment (ids only).
    pub async fn segment_member_ids(&self, segment: Uuid) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<One<Uuid>> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT contact_id FROM segment_members WHERE segment_id = $1",
                args![segment],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Contacts of companies.
    pub async fn contacts_of_companies(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<One<Uuid>> =
            by_ids(self, "SELECT id FROM contacts WHERE company_id", "", ids).await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Contacts in one of these stages.
    pub async fn contacts_in_stages(
        &self,
        stages: &[LifecycleStage],
    ) -> Result<Vec<Uuid>, StoreError> {
        let a: Vec<Val> = stages.iter().map(|s| Val::from(s.as_str())).collect();
        let sql = format!(
            "SELECT id FROM contacts WHERE lifecycle_stage IN ({})",
            placeholders(0, a.len())
        );
        let rows: Vec<One<Uuid>> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Every contact id, in id order, after `after`, at most `limit`.
    pub async fn contact_ids_after(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<One<Uuid>> = match after {
            None => {
                self.db()
                    .reader()
                    .fetch_all(
                        sqlx::AssertSqlSafe(format!(
                            "SELECT id FROM contacts ORDER BY id LIMIT {limit}"
                        )),
                        vec![],
                    )
                    .await?
            }
            Some(a) => {
                self.db()
                    .reader()
                    .fetch_all(
                        sqlx::AssertSqlSafe(format!(
                            "SELECT id FROM contacts WHERE id > $1 ORDER BY id LIMIT {limit}"
                        )),
                        args![a],
                    )
                    .await?
            }
        };
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// A page of a segment's members (contact, entered at µs), by contact id.
    pub async fn segment_members_page(
        &self,
        segment: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<(Contact, i64)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct M {
            contact_id: Uuid,
            entered_at: i64,
        }
        let mut a = args![segment];
        let mut sql = String::from(
            "SELECT contact_id, entered_at FROM segment_members WHERE segment_id = $1",
        );
        if let Some(x) = after {
            a.push(x.into());
            sql.push_str(" AND contact_id > $2");
        }
        sql.push_str(&format!(" ORDER BY contact_id LIMIT {limit}"));
        let rows: Vec<M> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.contact_id).collect();
        let mut contacts: std::collections::HashMap<Uuid, Contact> = self
            .contacts_by_ids(&ids)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        Ok(rows
            .into_iter()
            .filter_map(|r| contacts.remove(&r.contact_id).map(|c| (c, r.entered_at)))
            .collect())
    }

    /// A contact's segments: (segment id, name, entered at µs).
    pub async fn segments_of(&self, contact: Uuid) -> Result<Vec<(Uuid, String, i64)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct S {
            id: Uuid,
            name: String,
            entered_at: i64,
        }
        let rows: Vec<S> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT s.id, s.name, m.entered_at FROM segment_members m JOIN segments s ON s.id = m.segment_id WHERE m.contact_id = $1 ORDER BY s.name",
                args![contact],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.id, r.name, r.entered_at))
            .collect())
    }

    /// Timers of contacts.
    pub async fn timers_of(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, i64)>, StoreError> {
        let rows: Vec<TimerDb> = by_ids(
            self,
            "SELECT contact_id, due_at FROM engine_timers WHERE contact_id",
            "",
            ids,
        )
        .await?;
        Ok(rows.into_iter().map(|t| (t.contact_id, t.due_at)).collect())
    }

    /// Timers due at `now` (µs), earliest first.
    pub async fn due_timers(&self, now: i64, limit: u32) -> Result<Vec<(Uuid, i64)>, StoreError> {
        let rows: Vec<TimerDb> = self
            .db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!(
                    "SELECT contact_id, due_at FROM engine_timers WHERE due_at <= $1 ORDER BY due_at LIMIT {limit}"
                )),
                args![now],
            )
            .await?;
        Ok(rows.into_iter().map(|t| (t.contact_id, t.due_at)).collect())
    }

    /// The earliest timer, if any.
    pub async fn next_timer(&self) -> Result<Option<i64>, StoreError> {
        let r: One<Option<i64>> = self
            .db()
            .reader()
            .fetch_one("SELECT MIN(due_at) FROM engine_timers", vec![])
            .await?;
        Ok(r.0)
    }

    /// Which of these effect keys were already applied.
    pub async fn effects_done(&self, keys: &[String]) -> Result<HashSet<String>, StoreError> {
        let mut out = HashSet::new();
        for chunk in keys.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT key FROM engine_effects WHERE key IN ({})",
                placeholders(0, chunk.len())
            );
            let a: Vec<Val> = chunk.iter().map(|k| Val::from(k.as_str())).collect();
            let rows: Vec<One<String>> = self
                .db()
                .reader()
                .fetch_all(sqlx::AssertSqlSafe(sql), a)
                .await?;
            out.extend(rows.into_iter().map(|r| r.0));
        }
        Ok(out)
    }

    /// A setting.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let r: Option<One<String>> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT value FROM engine_settings WHERE name = $1",
                args![name],
            )
            .await?;
        Ok(r.map(|r| r.0))
    }

    /// The version of the definitions (segments, scoring models, handoff policy); bumped on
    /// every change so that engines reload.
    pub async fn definitions_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .setting("definitions_version")
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }
}

/// Sets a setting.
pub async fn set_setting(tx: &mut Tx, name: &str, value: &str, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO engine_settings (name, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        args![name, value, now],
    )
    .await?;
    Ok(())
}

/// Bumps the definitions version (engines reload on the next batch).
pub async fn bump_definitions(tx: &mut Tx, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO engine_settings (name, value, updated_at) VALUES ('definitions_version', '1', $1) ON CONFLICT (name) DO UPDATE SET value = CAST(CAST(engine_settings.value AS BIGINT) + 1 AS TEXT), updated_at = excluded.updated_at",
        args![now],
    )
    .await?;
    Ok(())
}

/// Upserts feature states.
pub async fn upsert_features(
    tx: &mut Tx,
    rows: &[(Uuid, String, String)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO engine_features (contact_id, feature, state) VALUES {} ON CONFLICT (contact_id, feature) DO UPDATE SET state = excluded.state",
            values(chunk.len(), 3)
        );
        let mut a = Vec::with_capacity(chunk.len() * 3);
        for (c, k, s) in chunk {
            a.extend(args![*c, k.as_str(), s.as_str()]);
        }
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(())
}

/// Deletes some contacts' feature rows: (contact, key).
pub async fn delete_contact_features(
    tx: &mut Tx,
    rows: &[(Uuid, String)],
) -> Result<(), StoreError> {
    for (c, k) in rows {
        tx.execute(
            "DELETE FROM engine_features WHERE contact_id = $1 AND feature = $2",
            args![*c, k.as_str()],
        )
        .await?;
    }
    Ok(())
}

/// Deletes every contact's state for features no definition reads any more.
pub async fn delete_feature(tx: &mut Tx, key: &str) -> Result<(), StoreError> {
    tx.execute("DELETE FROM engine_features WHERE feature = $1", args![key])
        .await?;
    Ok(())
}

/// Upserts score rows.
pub async fn upsert_scores(tx: &mut Tx, rows: &[ScoreRow]) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO contact_scores (contact_id, model_id, score, behaviour, fit, grade, as_of, state) VALUES {} ON CONFLICT (contact_id, model_id) DO UPDATE SET score = excluded.score, behaviour = excluded.behaviour, fit = excluded.fit, grade = excluded.grade, as_of = excluded.as_of, state = excluded.state",
            values(chunk.len(), 8)
        );
        let mut a = Vec::with_capacity(chunk.len() * 8);
        for r in chunk {
            a.extend(args![
                r.contact_id,
                r.model_id,
                r.score,
                r.behaviour,
                r.fit,
                r.grade.as_str(),
                r.as_of,
                r.state.as_str()
            ]);
        }
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(())
}

/// Deletes every score of a model.
pub async fn delete_model_scores(tx: &mut Tx, model: Uuid) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM contact_scores WHERE model_id = $1",
        args![model],
    )
    .await?;
    Ok(())
}

/// Adds segment members: (segment, contact, entered_at µs).
pub async fn insert_members(tx: &mut Tx, rows: &[(Uuid, Uuid, i64)]) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO segment_members (segment_id, contact_id, entered_at) VALUES {} ON CONFLICT (segment_id, contact_id) DO NOTHING",
            values(chunk.len(), 3)
        );
        let mut a = Vec::with_capacity(chunk.len() * 3);
        for (s, c, t) in chunk {
            a.extend(args![*s, *c, *t]);
        }
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(())
}

/// Removes segment members: (segment, contact).
pub async fn delete_members(tx: &mut Tx, rows: &[(Uuid, Uuid)]) -> Result<(), StoreError> {
    for (s, c) in rows {
        tx.execute(
            "DELETE FROM segment_members WHERE segment_id = $1 AND contact_id = $2",
            args![*s, *c],
        )
        .await?;
    }
    Ok(())
}

/// Sets (Some) or clears (None) contacts' timers.
pub async fn set_timers(tx: &mut Tx, rows: &[(Uuid, Option<i64>)]) -> Result<(), StoreError> {
    let (set, clear): (Vec<_>, Vec<_>) = rows.iter().partition(|(_, d)| d.is_some());
    for chunk in set.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO engine_timers (contact_id, due_at) VALUES {} ON CONFLICT (contact_id) DO UPDATE SET due_at = excluded.due_at",
            values(chunk.len(), 2)
        );
        let mut a = Vec::with_capacity(chunk.len() * 2);
        for (c, d) in chunk {
            a.extend(args![*c, d.unwrap_or_default()]);
        }
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    for chunk in clear.chunks(IN_CHUNK) {
        let sql = format!(
            "DELETE FROM engine_timers WHERE contact_id IN ({})",
            placeholders(0, chunk.len())
        );
        let a: Vec<Val> = chunk.iter().map(|(c, _)| Val::from(*c)).collect();
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(())
}

/// Records applied effects (keys already present are left alone).
pub async fn record_effects(
    tx: &mut Tx,
    rows: &[(String, Uuid)],
    now: i64,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO engine_effects (key, contact_id, created_at) VALUES {} ON CONFLICT (key) DO NOTHING",
            values(chunk.len(), 3)
        );
        let mut a = Vec::with_capacity(chunk.len() * 3);
        for (k, c) in chunk {
            a.extend(args![k.as_str(), *c, now]);
        }
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(())
}

/// Moves a contact to a stage if it is still in `expected` (someone else may have moved it
/// since the engine read it). True when changed.
pub async fn set_stage_if(
    tx: &mut Tx,
    contact: Uuid,
    expected: LifecycleStage,
    to: LifecycleStage,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            "UPDATE contacts SET lifecycle_stage = $3, updated_at = $4 WHERE id = $1 AND lifecycle_stage = $2",
            args![contact, expected.as_str(), to.as_str(), now],
        )
        .await?
        == 1)
}

/// Sets a contact's temperature.
pub async fn set_temperature(
    tx: &mut Tx,
    contact: Uuid,
    t: Temperature,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE contacts SET temperature = $2, updated_at = $3 WHERE id = $1",
        args![contact, t.as_str(), now],
    )
    .await?;
    Ok(())
}

/// Gives a contact an owner if it has none. True when set.
pub async fn set_owner_if_none(
    tx: &mut Tx,
    contact: Uuid,
    owner: Uuid,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            "UPDATE contacts SET owner_id = $2, updated_at = $3 WHERE id = $1 AND owner_id IS NULL",
            args![contact, owner, now],
        )
        .await?
        == 1)
}
