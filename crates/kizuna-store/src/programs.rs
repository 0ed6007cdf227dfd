//! Nurture programs as stored (migration 0005): programs and their versions, enrollments,
//! entry schedules, the mails programs queued, and step counters. The runner
//! (`kizuna-engine::program`) owns the semantics; this module only stores and reads.

use crate::db::{One, Tx, Val};
use crate::email::{id_vals, placeholders};
use crate::{Store, StoreError, args};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A program.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ProgramRow {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// `active`, `paused` or `draft`.
    pub status: String,
    /// Published version.
    pub version: i64,
    /// Log position (seq) after which events may trigger it.
    #[serde(skip)]
    pub activated_seq: i64,
    /// Version whose entry schedules were built.
    #[serde(skip)]
    pub scheduled_version: i64,
    /// Created (µs).
    pub created_at: i64,
    /// Updated (µs).
    pub updated_at: i64,
}

const PROGRAM_COLS: &str = "id, name, description, status, version, activated_seq, scheduled_version, created_at, updated_at";

/// An enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Enrollment {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// Program.
    pub program_id: Uuid,
    /// Version it runs on.
    pub version: i64,
    /// Contact.
    pub contact_id: Uuid,
    /// `active`, `completed` or `exited`.
    pub status: String,
    /// Current step.
    pub step_id: Option<String>,
    /// Steps executed (iteration of the idempotency keys).
    pub seq: i64,
    /// Resting on a wait step (1) or not (0).
    pub waiting: i64,
    /// When to look again (µs).
    pub due_at: Option<i64>,
    /// What enrolled it.
    pub source: String,
    /// Added by a sales rep (1): stays in during an active sales cycle.
    pub by_sales: i64,
    /// The goal reached.
    pub goal: Option<String>,
    /// Why it ended.
    pub exit_reason: Option<String>,
    /// Entered (µs).
    pub entered_at: i64,
    /// Ended (µs).
    pub ended_at: Option<i64>,
    /// Updated (µs).
    pub updated_at: i64,
}

const ENR_COLS: &str = "id, program_id, version, contact_id, status, step_id, seq, waiting, due_at, source, by_sales, goal, exit_reason, entered_at, ended_at, updated_at";

/// A mail a program queued.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRow {
    /// The outbox idempotency key.
    pub key: String,
    /// Program.
    pub program_id: Uuid,
    /// Step.
    pub step_id: String,
    /// Contact.
    pub contact_id: Uuid,
    /// Template.
    pub template_id: Uuid,
    /// When (µs).
    pub created_at: i64,
}

/// Step counter increments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepCount {
    /// Runs.
    pub runs: i64,
    /// Mails passed over.
    pub skipped: i64,
    /// Mails deferred.
    pub deferred: i64,
}

/// Per-step figures of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepFigures {
    /// Step id.
    pub step_id: String,
    /// Times run.
    pub runs: i64,
    /// Mails passed over (duplicate across programs).
    pub skipped: i64,
    /// Mails deferred (quiet hours, cap).
    pub deferred: i64,
    /// Contacts there now.
    pub active: i64,
}

fn ids_in(first: usize, ids: &[Uuid]) -> (String, Vec<Val>) {
    (placeholders(first, ids.len()), id_vals(ids))
}

impl Store {
    /// Creates a program with version 1.
    pub async fn create_program(
        &self,
        name: &str,
        description: Option<&str>,
        status: &str,
        definition: &Value,
        activated_seq: i64,
        now: i64,
    ) -> Result<ProgramRow, StoreError> {
        let id = Uuid::now_v7();
        let mut tx = self.db().begin().await?;
        if tx
            .fetch_optional::<One<Uuid>>("SELECT id FROM programs WHERE name = $1", args![name])
            .await?
            .is_some()
        {
            return Err(StoreError::conflict(
                "name",
                format!("a program named {name:?} exists"),
            ));
        }
        tx.execute(
            "INSERT INTO programs (id, name, description, status, version, activated_seq, scheduled_version, created_at, updated_at) VALUES ($1,$2,$3,$4,1,$5,0,$6,$6)",
            args![id, name, description.map(str::to_string), status, activated_seq, now],
        )
        .await?;
        tx.execute(
            "INSERT INTO program_versions (program_id, version, definition, mapping, created_at) VALUES ($1, 1, $2, NULL, $3)",
            args![id, definition.to_string(), now],
        )
        .await?;
        tx.commit().await?;
        self.program(id).await
    }

    /// Publishes a new version. Contacts in flight stay on their version, unless `mapping`
    /// (old step id → new step id) is given: then those on a mapped step move to the new
    /// version at the mapped step (those on unmapped steps stay). Returns the new version.
    pub async fn publish_program_version(
        &self,
        id: Uuid,
        name: &str,
        description: Option<&str>,
        definition: &Value,
        mapping: Option<&std::collections::BTreeMap<String, String>>,
        now: i64,
    ) -> Result<(i64, u64), StoreError> {
        let mut tx = self.db().begin().await?;
        let cur: Option<One<i64>> = tx
            .fetch_optional("SELECT version FROM programs WHERE id = $1", args![id])
            .await?;
        let Some(One(v)) = cur else {
            return Err(StoreError::NotFound);
        };
        if let Some(One(other)) = tx
            .fetch_optional::<One<Uuid>>(
                "SELECT id FROM programs WHERE name = $1 AND id <> $2",
                args![name, id],
            )
            .await?
        {
            let _ = other;
            return Err(StoreError::conflict(
                "name",
                format!("a program named {name:?} exists"),
            ));
        }
        let nv = v + 1;
        tx.execute(
            "INSERT INTO program_versions (program_id, version, definition, mapping, created_at) VALUES ($1,$2,$3,$4,$5)",
            args![
                id,
                nv,
                definition.to_string(),
                mapping.map(|m| serde_json::to_string(m).unwrap_or_default()),
                now
            ],
        )
        .await?;
        tx.execute(
            "UPDATE programs SET name = $2, description = $3, version = $4, updated_at = $5 WHERE id = $1",
            args![id, name, description.map(str::to_string), nv, now],
        )
        .await?;
        let mut moved = 0;
        if let Some(m) = mapping {
            for (from, to) in m {
                moved += tx
                    .execute(
                        "UPDATE program_enrollments SET version = $3, step_id = $4, updated_at = $5 WHERE program_id = $1 AND status = 'active' AND step_id = $2 AND version < $3",
                        args![id, from.as_str(), nv, to.as_str(), now],
                    )
                    .await?;
            }
        }
        tx.commit().await?;
        Ok((nv, moved))
    }

    /// A program.
    pub async fn program(&self, id: Uuid) -> Result<ProgramRow, StoreError> {
        self.db()
            .reader()
            .fetch_optional(
                sqlx::AssertSqlSafe(format!("SELECT {PROGRAM_COLS} FROM programs WHERE id = $1")),
                args![id],
            )
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// A program by name.
    pub async fn program_by_name(&self, name: &str) -> Result<Option<ProgramRow>, StoreError> {
        self.db()
            .reader()
            .fetch_optional(
                sqlx::AssertSqlSafe(format!(
                    "SELECT {PROGRAM_COLS} FROM programs WHERE name = $1"
                )),
                args![name],
            )
            .await
    }

    /// Every program, by name.
    pub async fn programs(&self) -> Result<Vec<ProgramRow>, StoreError> {
        self.db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!("SELECT {PROGRAM_COLS} FROM programs ORDER BY name")),
                vec![],
            )
            .await
    }

    /// A version's definition (JSON as written) and mapping.
    pub async fn program_version(
        &self,
        id: Uuid,
        version: i64,
    ) -> Result<(Value, Option<Value>), StoreError> {
        #[derive(sqlx::FromRow)]
        struct Rw {
            definition: String,
            mapping: Option<String>,
        }
        let r: Rw = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT definition, mapping FROM program_versions WHERE program_id = $1 AND version = $2",
                args![id, version],
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok((
            serde_json::from_str(&r.definition).unwrap_or(Value::Null),
            r.mapping.and_then(|m| serde_json::from_str(&m).ok()),
        ))
    }

    /// Every version of every program (the runner compiles them once).
    pub async fn all_program_versions(&self) -> Result<Vec<(Uuid, i64, Value)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Rw {
            program_id: Uuid,
            version: i64,
            definition: String,
        }
        let rows: Vec<Rw> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT program_id, version, definition FROM program_versions ORDER BY program_id, version",
                vec![],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.program_id,
                    r.version,
                    serde_json::from_str(&r.definition).unwrap_or(Value::Null),
                )
            })
            .collect())
    }

    /// Pauses (`paused`) or resumes (`active`) a program; resuming triggers only on events
    /// after `activated_seq`.
    pub async fn set_program_status(
        &self,
        id: Uuid,
        status: &str,
        activated_seq: Option<i64>,
        now: i64,
    ) -> Result<ProgramRow, StoreError> {
        let mut tx = self.db().begin().await?;
        let n = tx
            .execute(
                "UPDATE programs SET status = $2, activated_seq = COALESCE($3, activated_seq), updated_at = $4 WHERE id = $1",
                args![id, status, activated_seq, now],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        self.program(id).await
    }

    /// Deletes a program with its enrollments.
    pub async fn delete_program(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        for t in [
            "program_enrollments",
            "program_schedules",
            "program_step_stats",
            "program_versions",
        ] {
            tx.execute(
                sqlx::AssertSqlSafe(format!("DELETE FROM {t} WHERE program_id = $1")),
                args![id],
            )
            .await?;
        }
        let n = tx
            .execute("DELETE FROM programs WHERE id = $1", args![id])
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await
    }

    /// Enrollments due at `now` in active programs, earliest first.
    pub async fn due_enrollments(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Enrollment>, StoreError> {
        let cols = ENR_COLS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Walk the due index in order (SQLite would otherwise pick the (program, status, step)
        // index for the join and sort every due row of a large wave, per batch).
        let hint = match self.dialect() {
            crate::db::Dialect::Sqlite => " INDEXED BY program_enrollments_due",
            crate::db::Dialect::Postgres => "",
        };
        self.db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!(
                    "SELECT {cols} FROM program_enrollments e{hint} JOIN programs p ON p.id = e.program_id WHERE e.status = 'active' AND e.due_at IS NOT NULL AND e.due_at <= $1 AND p.status = 'active' ORDER BY e.due_at LIMIT {limit}"
                )),
                args![now],
            )
            .await
    }

    /// The earliest due instant of an active enrollment or schedule, if any.
    pub async fn next_program_due(&self) -> Result<Option<i64>, StoreError> {
        let a: Option<One<Option<i64>>> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT MIN(due_at) FROM program_enrollments WHERE status = 'active' AND due_at IS NOT NULL",
                vec![],
            )
            .await?;
        let b: Option<One<Option<i64>>> = self
            .db()
            .reader()
            .fetch_optional("SELECT MIN(due_at) FROM program_schedules", vec![])
            .await?;
        Ok([a.and_then(|x| x.0), b.and_then(|x| x.0)]
            .into_iter()
            .flatten()
            .min())
    }

    /// Every enrollment (any status) of these contacts.
    pub async fn enrollments_of(&self, contacts: &[Uuid]) -> Result<Vec<Enrollment>, StoreError> {
        if contacts.is_empty() {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for chunk in contacts.chunks(900) {
            let (ph, a) = ids_in(1, chunk);
            let rows: Vec<Enrollment> = self
                .db()
                .reader()
                .fetch_all(
                    sqlx::AssertSqlSafe(format!(
                        "SELECT {ENR_COLS} FROM program_enrollments WHERE contact_id IN ({ph}) ORDER BY entered_at"
                    )),
                    a,
                )
                .await?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Enrollments of a program (`status` filter), cursor-paged by id.
    pub async fn program_enrollments(
        &self,
        program: Uuid,
        status: Option<&str>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Enrollment>, StoreError> {
        self.db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!(
                    "SELECT {ENR_COLS} FROM program_enrollments WHERE program_id = $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT {limit}"
                )),
                args![program, status.map(str::to_string), after],
            )
            .await
    }

    /// One enrollment.
    pub async fn enrollment(&self, id: Uuid) -> Result<Enrollment, StoreError> {
        self.db()
            .reader()
            .fetch_optional(
                sqlx::AssertSqlSafe(format!(
                    "SELECT {ENR_COLS} FROM program_enrollments WHERE id = $1"
                )),
                args![id],
            )
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Due schedules: (program, contact, trigger number, due).
    pub async fn due_schedules(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(Uuid, Uuid, i64, i64)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Rw {
            program_id: Uuid,
            contact_id: Uuid,
            trigger_no: i64,
            due_at: i64,
        }
        let hint = match self.dialect() {
            crate::db::Dialect::Sqlite => " INDEXED BY program_schedules_due",
            crate::db::Dialect::Postgres => "",
        };
        let rows: Vec<Rw> = self
            .db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!(
                    "SELECT s.program_id, s.contact_id, s.trigger_no, s.due_at FROM program_schedules s{hint} JOIN programs p ON p.id = s.program_id WHERE s.due_at <= $1 AND p.status = 'active' ORDER BY s.due_at LIMIT {limit}"
                )),
                args![now],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.program_id, r.contact_id, r.trigger_no, r.due_at))
            .collect())
    }

    /// Mails programs queued for these contacts since `since` (µs).
    pub async fn program_sends_of(
        &self,
        contacts: &[Uuid],
        since: i64,
    ) -> Result<Vec<SendRow>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Rw {
            idempotency_key: String,
            program_id: Uuid,
            step_id: String,
            contact_id: Uuid,
            template_id: Uuid,
            created_at: i64,
        }
        let mut out = Vec::new();
        for chunk in contacts.chunks(900) {
            let (ph, mut a) = ids_in(2, chunk);
            a.insert(0, Val::from(since));
            let rows: Vec<Rw> = self
                .db()
                .reader()
                .fetch_all(
                    sqlx::AssertSqlSafe(format!(
                        "SELECT idempotency_key, program_id, step_id, contact_id, template_id, created_at FROM program_sends WHERE created_at >= $1 AND contact_id IN ({ph})"
                    )),
                    a,
                )
                .await?;
            out.extend(rows.into_iter().map(|r| SendRow {
                key: r.idempotency_key,
                program_id: r.program_id,
                step_id: r.step_id,
                contact_id: r.contact_id,
                template_id: r.template_id,
                created_at: r.created_at,
            }));
        }
        Ok(out)
    }

    /// The outbox message queued under an idempotency key, with its opens and clicks:
    /// (message id, opens, clicks).
    pub async fn program_message(&self, key: &str) -> Result<Option<(Uuid, i64, i64)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Rw {
            id: Uuid,
            opens: i64,
            clicks: i64,
        }
        let r: Option<Rw> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT id, opens, clicks FROM email_messages WHERE idempotency_key = $1",
                args![key],
            )
            .await?;
        Ok(r.map(|r| (r.id, r.opens, r.clicks)))
    }

    /// Report figures: enrollments by status, exit reasons and goals, contacts per step, step
    /// counters.
    pub async fn program_figures(
        &self,
        id: Uuid,
    ) -> Result<
        (
            Vec<(String, Option<String>, Option<String>, i64)>,
            Vec<StepFigures>,
        ),
        StoreError,
    > {
        #[derive(sqlx::FromRow)]
        struct S {
            status: String,
            exit_reason: Option<String>,
            goal: Option<String>,
            n: i64,
        }
        let st: Vec<S> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT status, exit_reason, goal, COUNT(*) AS n FROM program_enrollments WHERE program_id = $1 GROUP BY status, exit_reason, goal",
                args![id],
            )
            .await?;
        #[derive(sqlx::FromRow)]
        struct A {
            step_id: Option<String>,
            n: i64,
        }
        let at: Vec<A> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT step_id, COUNT(*) AS n FROM program_enrollments WHERE program_id = $1 AND status = 'active' GROUP BY step_id",
                args![id],
            )
            .await?;
        #[derive(sqlx::FromRow)]
        struct C {
            step_id: String,
            runs: i64,
            skipped: i64,
            deferred: i64,
        }
        let cs: Vec<C> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT step_id, runs, skipped, deferred FROM program_step_stats WHERE program_id = $1",
                args![id],
            )
            .await?;
        let mut steps: std::collections::BTreeMap<String, StepFigures> = Default::default();
        for c in cs {
            steps.insert(
                c.step_id.clone(),
                StepFigures {
                    step_id: c.step_id,
                    runs: c.runs,
                    skipped: c.skipped,
                    deferred: c.deferred,
                    active: 0,
                },
            );
        }
        for a in at {
            if let Some(s) = a.step_id {
                steps
                    .entry(s.clone())
                    .or_insert_with(|| StepFigures {
                        step_id: s,
                        ..Default::default()
                    })
                    .active = a.n;
            }
        }
        Ok((
            st.into_iter()
                .map(|s| (s.status, s.exit_reason, s.goal, s.n))
                .collect(),
            steps.into_values().collect(),
        ))
    }

    /// Email figures of a program step: (queued, sent, skipped, opened messages, clicked
    /// messages, bounced).
    pub async fn program_step_email(
        &self,
        program: Uuid,
        step: &str,
    ) -> Result<[i64; 6], StoreError> {
        #[derive(sqlx::FromRow)]
        struct Rw {
            n: i64,
            sent: i64,
            skipped: i64,
            opened: i64,
            clicked: i64,
            bounced: i64,
        }
        let r: Rw = self
            .db()
            .reader()
            .fetch_one(
                "SELECT COUNT(m.id) AS n, \
                 COALESCE(SUM(CASE WHEN m.sent_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS sent, \
                 COALESCE(SUM(CASE WHEN m.state = 'skipped' THEN 1 ELSE 0 END), 0) AS skipped, \
                 COALESCE(SUM(CASE WHEN m.opens > 0 THEN 1 ELSE 0 END), 0) AS opened, \
                 COALESCE(SUM(CASE WHEN m.clicks > 0 THEN 1 ELSE 0 END), 0) AS clicked, \
                 COALESCE(SUM(CASE WHEN m.bounced_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS bounced \
                 FROM program_sends s JOIN email_messages m ON m.idempotency_key = s.idempotency_key \
                 WHERE s.program_id = $1 AND s.step_id = $2",
                args![program, step],
            )
            .await?;
        Ok([r.n, r.sent, r.skipped, r.opened, r.clicked, r.bounced])
    }

    /// Contacts and a date-ish custom field (for date triggers): (id, value as text), paged by id.
    pub async fn contacts_page_custom(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<kizuna_core::contact::Contact>, StoreError> {
        let ids: Vec<One<Uuid>> = self
            .db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!(
                    "SELECT id FROM contacts WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT {limit}"
                )),
                args![after],
            )
            .await?;
        let ids: Vec<Uuid> = ids.into_iter().map(|r| r.0).collect();
        let mut cs = self.contacts_by_ids(&ids).await?;
        cs.sort_by_key(|c| c.id);
        Ok(cs)
    }

    /// The last activity (µs) of contacts with any non-engine event, paged by contact id.
    pub async fn last_activity_page(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Rw {
            contact_id: Uuid,
            t: i64,
        }
        let rows: Vec<Rw> = self
            .db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!(
                    "SELECT contact_id, MAX(occurred_at) AS t FROM events WHERE source NOT IN ('engine', 'program') AND ($1 IS NULL OR contact_id > $1) GROUP BY contact_id ORDER BY contact_id LIMIT {limit}"
                )),
                args![after],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.contact_id, r.t)).collect())
    }
}

/// Inserts enrollments.
pub async fn insert_enrollments(tx: &mut Tx, rows: &[Enrollment]) -> Result<(), StoreError> {
    for chunk in rows.chunks(500) {
        let mut sql = format!("INSERT INTO program_enrollments ({ENR_COLS}) VALUES ");
        let mut a: Vec<Val> = Vec::with_capacity(chunk.len() * 16);
        for (i, e) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            sql.push_str(&placeholders(a.len() + 1, 16));
            sql.push(')');
            a.extend(args![
                e.id,
                e.program_id,
                e.version,
                e.contact_id,
                e.status.as_str(),
                e.step_id.clone(),
                e.seq,
                e.waiting,
                e.due_at,
                e.source.as_str(),
                e.by_sales,
                e.goal.clone(),
                e.exit_reason.clone(),
                e.entered_at,
                e.ended_at,
                e.updated_at
            ]);
        }
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(())
}

/// An enrollment's id and changed state, in the order both update statements bind them.
fn state_args(e: &Enrollment) -> Vec<Val> {
    args![
        e.id,
        e.version,
        e.status.as_str(),
        e.step_id.clone(),
        e.seq,
        e.waiting,
        e.due_at,
        e.goal.clone(),
        e.exit_reason.clone(),
        e.ended_at
    ]
}

/// Writes enrollments' changed state (status, step, seq, waiting, due, goal, exit, ended).
pub async fn update_enrollments(tx: &mut Tx, rows: &[Enrollment]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    if tx.dialect() == crate::db::Dialect::Sqlite {
        // SQLite plans UPDATE … FROM (VALUES …) as a scan of the whole table per chunk: one
        // keyed statement per row (prepared once, cached) is linear.
        for e in rows {
            let mut a = state_args(e);
            a.push(Val::from(e.updated_at));
            tx.execute(
                "UPDATE program_enrollments SET version = $2, status = $3, step_id = $4, seq = $5, waiting = $6, due_at = $7, goal = $8, exit_reason = $9, ended_at = $10, updated_at = $11 WHERE id = $1",
                a,
            )
            .await?;
        }
        return Ok(());
    }
    // PostgreSQL: one statement per chunk, UPDATE … FROM (VALUES …).
    for chunk in rows.chunks(400) {
        let mut vals = String::new();
        let mut a: Vec<Val> = Vec::with_capacity(chunk.len() * 10);
        for (i, e) in chunk.iter().enumerate() {
            if i > 0 {
                vals.push(',');
            }
            let b = a.len();
            vals.push_str(&format!(
                "(${}::uuid,${}::bigint,${}::text,${}::text,${}::bigint,${}::bigint,${}::bigint,${}::text,${}::text,${}::bigint)",
                b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8, b + 9, b + 10
            ));
            a.extend(state_args(e));
        }
        let now = chunk.iter().map(|e| e.updated_at).max().unwrap_or(0);
        let np = a.len() + 1;
        a.push(Val::from(now));
        let sql = format!(
            "UPDATE program_enrollments AS e SET version = v.version, status = v.status, step_id = v.step_id, seq = v.seq, waiting = v.waiting, due_at = v.due_at, goal = v.goal, exit_reason = v.exit_reason, ended_at = v.ended_at, updated_at = ${np} FROM (VALUES {vals}) AS v(id, version, status, step_id, seq, waiting, due_at, goal, exit_reason, ended_at) WHERE e.id = v.id"
        );
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(())
}

/// Sets (or replaces) entry schedules.
pub async fn upsert_schedules(
    tx: &mut Tx,
    rows: &[(Uuid, Uuid, i64, i64)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(500) {
        let mut sql = String::from(
            "INSERT INTO program_schedules (program_id, contact_id, trigger_no, due_at) VALUES ",
        );
        let mut a: Vec<Val> = Vec::new();
        for (i, r) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            sql.push_str(&placeholders(a.len() + 1, 4));
            sql.push(')');
            a.extend(args![r.0, r.1, r.2, r.3]);
        }
        sql.push_str(
            " ON CONFLICT (program_id, contact_id, trigger_no) DO UPDATE SET due_at = excluded.due_at",
        );
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(())
}

/// Removes schedules.
pub async fn delete_schedules(tx: &mut Tx, rows: &[(Uuid, Uuid, i64)]) -> Result<(), StoreError> {
    for r in rows {
        tx.execute(
            "DELETE FROM program_schedules WHERE program_id = $1 AND contact_id = $2 AND trigger_no = $3",
            args![r.0, r.1, r.2],
        )
        .await?;
    }
    Ok(())
}

/// Removes every schedule of a program (before rebuilding them for a new version).
pub async fn clear_schedules(tx: &mut Tx, program: Uuid) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM program_schedules WHERE program_id = $1",
        args![program],
    )
    .await?;
    Ok(())
}

/// Marks a program's schedules as built for a version.
pub async fn mark_scheduled(tx: &mut Tx, program: Uuid, version: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE programs SET scheduled_version = $2 WHERE id = $1",
        args![program, version],
    )
    .await?;
    Ok(())
}

/// Records program mails.
pub async fn insert_sends(tx: &mut Tx, rows: &[SendRow]) -> Result<(), StoreError> {
    for chunk in rows.chunks(500) {
        let mut sql = String::from(
            "INSERT INTO program_sends (idempotency_key, program_id, step_id, contact_id, template_id, created_at) VALUES ",
        );
        let mut a: Vec<Val> = Vec::new();
        for (i, r) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            sql.push_str(&placeholders(a.len() + 1, 6));
            sql.push(')');
            a.extend(args![
                r.key.as_str(),
                r.program_id,
                r.step_id.as_str(),
                r.contact_id,
                r.template_id,
                r.created_at
            ]);
        }
        sql.push_str(" ON CONFLICT (idempotency_key) DO NOTHING");
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(())
}

/// Adds to step counters.
pub async fn add_step_counts(
    tx: &mut Tx,
    rows: &[((Uuid, String), StepCount)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(500) {
        let mut sql = String::from(
            "INSERT INTO program_step_stats (program_id, step_id, runs, skipped, deferred) VALUES ",
        );
        let mut a: Vec<Val> = Vec::new();
        for (i, ((p, s), c)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            sql.push_str(&placeholders(a.len() + 1, 5));
            sql.push(')');
            a.extend(args![*p, s.as_str(), c.runs, c.skipped, c.deferred]);
        }
        sql.push_str(" ON CONFLICT (program_id, step_id) DO UPDATE SET runs = program_step_stats.runs + excluded.runs, skipped = program_step_stats.skipped + excluded.skipped, deferred = program_step_stats.deferred + excluded.deferred");
        tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
    }
    Ok(())
}

/// Templates by id or name: (reference → (id, kind, subscription type)).
pub async fn resolve_templates(store: &Store) -> Result<Vec<(Uuid, String, String)>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Rw {
        id: Uuid,
        name: String,
        kind: String,
    }
    let rows: Vec<Rw> = store
        .db()
        .reader()
        .fetch_all("SELECT id, name, kind FROM email_templates", vec![])
        .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.name, r.kind)).collect())
}
