//! The sales side of lifecycle: handoffs (an MQL handed to an owner, then accepted or
//! rejected), follow-up tasks, and owner notifications waiting to be delivered.

use crate::db::{Tx, Val, from_micros};
use crate::events::page_of;
use crate::page::{Cursor, Page};
use crate::{Store, StoreError, args};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A follow-up task for a sales rep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    /// Id.
    pub id: Uuid,
    /// The contact.
    pub contact_id: Uuid,
    /// The rep.
    pub owner_id: Option<Uuid>,
    /// `follow_up`, `call` or `other`.
    pub kind: String,
    /// What to do.
    pub title: String,
    /// Notes.
    pub notes: Option<String>,
    /// `open`, `done` or `canceled`.
    pub status: String,
    /// Due.
    pub due_at: Option<DateTime<Utc>>,
    /// `handoff` or `api`.
    pub source: String,
    /// The handoff that created it.
    pub handoff_id: Option<Uuid>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Done or canceled.
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: Uuid,
    contact_id: Uuid,
    owner_id: Option<Uuid>,
    kind: String,
    title: String,
    notes: Option<String>,
    status: String,
    due_at: Option<i64>,
    source: String,
    handoff_id: Option<Uuid>,
    created_at: i64,
    completed_at: Option<i64>,
}

impl From<TaskRow> for Task {
    fn from(r: TaskRow) -> Self {
        Task {
            id: r.id,
            contact_id: r.contact_id,
            owner_id: r.owner_id,
            kind: r.kind,
            title: r.title,
            notes: r.notes,
            status: r.status,
            due_at: r.due_at.map(from_micros),
            source: r.source,
            handoff_id: r.handoff_id,
            created_at: from_micros(r.created_at),
            completed_at: r.completed_at.map(from_micros),
        }
    }
}

const TASK_COLS: &str = "id, contact_id, owner_id, kind, title, notes, status, due_at, source, handoff_id, created_at, completed_at";

/// Task kinds.
pub const TASK_KINDS: &[&str] = &["follow_up", "call", "other"];
/// Task states.
pub const TASK_STATUSES: &[&str] = &["open", "done", "canceled"];

/// Which tasks to list.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Of this rep.
    pub owner_id: Option<Uuid>,
    /// About this contact.
    pub contact_id: Option<Uuid>,
    /// In this state.
    pub status: Option<String>,
}

/// Inserts a task.
pub async fn insert_task(tx: &mut Tx, t: &Task) -> Result<(), StoreError> {
    let sql =
        format!("INSERT INTO tasks ({TASK_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)");
    tx.execute(
        sqlx::AssertSqlSafe(sql),
        args![
            t.id,
            t.contact_id,
            t.owner_id,
            t.kind.as_str(),
            t.title.as_str(),
            t.notes.clone(),
            t.status.as_str(),
            t.due_at,
            t.source.as_str(),
            t.handoff_id,
            t.created_at,
            t.completed_at
        ],
    )
    .await?;
    Ok(())
}

impl Store {
    /// A task.
    pub async fn task(&self, id: Uuid) -> Result<Task, StoreError> {
        let sql = format!("SELECT {TASK_COLS} FROM tasks WHERE id = $1");
        let r: Option<TaskRow> = self
            .db()
            .reader()
            .fetch_optional(sqlx::AssertSqlSafe(sql), args![id])
            .await?;
        r.map(Task::from).ok_or(StoreError::NotFound)
    }

    /// Tasks, newest first.
    pub async fn tasks(
        &self,
        f: &TaskFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Task>, StoreError> {
        let mut sql = format!("SELECT {TASK_COLS} FROM tasks WHERE 1=1");
        let mut a: Vec<Val> = Vec::new();
        if let Some(o) = f.owner_id {
            a.push(o.into());
            sql.push_str(&format!(" AND owner_id = ${}", a.len()));
        }
        if let Some(c) = f.contact_id {
            a.push(c.into());
            sql.push_str(&format!(" AND contact_id = ${}", a.len()));
        }
        if let Some(s) = &f.status {
            a.push(s.as_str().into());
            sql.push_str(&format!(" AND status = ${}", a.len()));
        }
        if let Some(c) = cursor {
            a.push(c.id.into());
            sql.push_str(&format!(" AND id < ${}", a.len()));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
        let rows: Vec<TaskRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        Ok(page_of(
            rows.into_iter().map(Task::from).collect(),
            limit,
            |t| Cursor { key: 0, id: t.id },
        ))
    }

    /// Creates a task (from the API).
    pub async fn create_task(&self, t: &Task) -> Result<Task, StoreError> {
        let mut tx = self.db().begin().await?;
        if crate::contacts::get_in(&mut tx, t.contact_id)
            .await?
            .is_none()
        {
            return Err(StoreError::invalid(
                "contact_id",
                "unknown_contact",
                format!("no contact with id {}", t.contact_id),
            ));
        }
        if let Some(o) = t.owner_id
            && tx
                .fetch_optional::<crate::db::One<Uuid>>(
                    "SELECT id FROM users WHERE id = $1",
                    args![o],
                )
                .await?
                .is_none()
        {
            return Err(StoreError::invalid(
                "owner_id",
                "unknown_owner",
                format!("no user with id {o}"),
            ));
        }
        insert_task(&mut tx, t).await?;
        tx.commit().await?;
        self.task(t.id).await
    }

    /// Changes a task's state and notes.
    pub async fn update_task(
        &self,
        id: Uuid,
        status: Option<&str>,
        notes: Option<Option<&str>>,
        now: DateTime<Utc>,
    ) -> Result<Task, StoreError> {
        let mut tx = self.db().begin().await?;
        if let Some(s) = status {
            let completed = (s != "open").then_some(now);
            if tx
                .execute(
                    "UPDATE tasks SET status = $2, completed_at = $3 WHERE id = $1",
                    args![id, s, completed],
                )
                .await?
                == 0
            {
                return Err(StoreError::NotFound);
            }
        }
        if let Some(n) = notes
            && tx
                .execute("UPDATE tasks SET notes = $2 WHERE id = $1", args![id, n])
                .await?
                == 0
        {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        self.task(id).await
    }
}

/// An MQL handed to sales.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Handoff {
    /// Id.
    pub id: Uuid,
    /// Contact.
    pub contact_id: Uuid,
    /// The scoring model that qualified the contact (none for a manual MQL).
    pub model_id: Option<Uuid>,
    /// Owner it went to.
    pub owner_id: Option<Uuid>,
    /// `pending`, `accepted`, `rejected` or `closed`.
    pub status: String,
    /// Follow-up task.
    pub task_id: Option<Uuid>,
    /// Score at handoff.
    pub score: Option<f64>,
    /// Grade at handoff.
    pub grade: Option<String>,
    /// How the owner was chosen: `existing_owner`, `rule`, `round_robin`, `none`.
    pub assigned_by: String,
    /// BANT, when accepted.
    pub bant: Option<Value>,
    /// Rejection reason.
    pub reason: Option<String>,
    /// The rep's note.
    pub note: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Accepted, rejected or closed.
    pub decided_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct HandoffRow {
    id: Uuid,
    contact_id: Uuid,
    model_id: Option<Uuid>,
    owner_id: Option<Uuid>,
    status: String,
    task_id: Option<Uuid>,
    score: Option<f64>,
    grade: Option<String>,
    assigned_by: String,
    bant: Option<String>,
    reason: Option<String>,
    note: Option<String>,
    created_at: i64,
    decided_at: Option<i64>,
}

impl From<HandoffRow> for Handoff {
    fn from(r: HandoffRow) -> Self {
        Handoff {
            id: r.id,
            contact_id: r.contact_id,
            model_id: r.model_id,
            owner_id: r.owner_id,
            status: r.status,
            task_id: r.task_id,
            score: r.score,
            grade: r.grade,
            assigned_by: r.assigned_by,
            bant: r.bant.and_then(|b| serde_json::from_str(&b).ok()),
            reason: r.reason,
            note: r.note,
            created_at: from_micros(r.created_at),
            decided_at: r.decided_at.map(from_micros),
        }
    }
}

const HANDOFF_COLS: &str = "id, contact_id, model_id, owner_id, status, task_id, score, grade, assigned_by, bant, reason, note, created_at, decided_at";

/// Inserts a handoff under its idempotency key.
pub async fn insert_handoff(tx: &mut Tx, h: &Handoff, effect_key: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO handoffs (id, contact_id, model_id, owner_id, status, effect_key, task_id, score, grade, assigned_by, bant, reason, note, created_at, decided_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,NULL,NULL,NULL,$11,NULL)",
        args![
            h.id,
            h.contact_id,
            h.model_id,
            h.owner_id,
            h.status.as_str(),
            effect_key,
            h.task_id,
            h.score,
            h.grade.clone(),
            h.assigned_by.as_str(),
            h.created_at
        ],
    )
    .await?;
    Ok(())
}

/// The contact's open handoff (pending or accepted), inside a transaction.
pub async fn open_handoff_in(tx: &mut Tx, contact: Uuid) -> Result<Option<Handoff>, StoreError> {
    let sql = format!(
        "SELECT {HANDOFF_COLS} FROM handoffs WHERE contact_id = $1 AND status IN ('pending', 'accepted') ORDER BY created_at DESC, id DESC LIMIT 1"
    );
    Ok(tx
        .fetch_optional::<HandoffRow>(sqlx::AssertSqlSafe(sql), args![contact])
        .await?
        .map(Handoff::from))
}

/// Records the rep's decision on a pending handoff. False if it was not pending.
pub async fn decide_handoff(
    tx: &mut Tx,
    id: Uuid,
    status: &str,
    bant: Option<&Value>,
    reason: Option<&str>,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            "UPDATE handoffs SET status = $2, bant = $3, reason = $4, note = $5, decided_at = $6 WHERE id = $1 AND status = 'pending'",
            args![id, status, bant.map(|b| b.to_string()), reason, note, now],
        )
        .await?
        == 1)
}

/// Closes a contact's open handoffs (the sales cycle ended: customer, disqualified…).
pub async fn close_handoffs(tx: &mut Tx, contact: Uuid, now: i64) -> Result<u64, StoreError> {
    tx.execute(
        "UPDATE handoffs SET status = 'closed', decided_at = $2 WHERE contact_id = $1 AND status IN ('pending', 'accepted')",
        args![contact, now],
    )
    .await
}

impl Store {
    /// A contact's handoffs, newest first.
    pub async fn handoffs_of(&self, contact: Uuid) -> Result<Vec<Handoff>, StoreError> {
        let sql = format!(
            "SELECT {HANDOFF_COLS} FROM handoffs WHERE contact_id = $1 ORDER BY created_at DESC, id DESC"
        );
        let rows: Vec<HandoffRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), args![contact])
            .await?;
        Ok(rows.into_iter().map(Handoff::from).collect())
    }

    /// Handoffs, newest first, optionally in one state.
    pub async fn handoffs(
        &self,
        status: Option<&str>,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Handoff>, StoreError> {
        let mut sql = format!("SELECT {HANDOFF_COLS} FROM handoffs WHERE 1=1");
        let mut a: Vec<Val> = Vec::new();
        if let Some(s) = status {
            a.push(s.into());
            sql.push_str(&format!(" AND status = ${}", a.len()));
        }
        if let Some(c) = cursor {
            a.push(c.id.into());
            sql.push_str(&format!(" AND id < ${}", a.len()));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
        let rows: Vec<HandoffRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        Ok(page_of(
            rows.into_iter().map(Handoff::from).collect(),
            limit,
            |h| Cursor { key: 0, id: h.id },
        ))
    }

    /// Rejected handoffs counted by reason (for reports).
    pub async fn rejection_reasons(&self) -> Result<Vec<(String, i64)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct ReasonCount {
            reason: Option<String>,
            n: i64,
        }
        let rows: Vec<ReasonCount> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT reason, COUNT(*) AS n FROM handoffs WHERE status = 'rejected' GROUP BY reason ORDER BY n DESC, reason",
                vec![],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.reason.unwrap_or_default(), r.n))
            .collect())
    }
}

/// An owner notification waiting for (or past) delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// Id (also the delivery id the receiver sees).
    pub id: Uuid,
    /// Contact.
    pub contact_id: Uuid,
    /// What it is about (`handoff`).
    pub kind: String,
    /// Where it goes.
    pub url: String,
    /// The JSON body, exactly as signed and sent.
    pub body: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Next attempt (µs).
    pub next_attempt_at: i64,
    /// Last error.
    pub last_error: Option<String>,
    /// Created (µs).
    pub created_at: i64,
}

#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: Uuid,
    contact_id: Uuid,
    kind: String,
    url: String,
    body: String,
    status: String,
    attempts: i64,
    next_attempt_at: i64,
    last_error: Option<String>,
    created_at: i64,
}

impl From<NotificationRow> for Notification {
    fn from(r: NotificationRow) -> Self {
        Notification {
            id: r.id,
            contact_id: r.contact_id,
            kind: r.kind,
            url: r.url,
            body: r.body,
            status: r.status,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            created_at: r.created_at,
        }
    }
}

const NOTE_COLS: &str =
    "id, contact_id, kind, url, body, status, attempts, next_attempt_at, last_error, created_at";

/// Queues a notification.
pub async fn enqueue_notification(tx: &mut Tx, n: &Notification) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO notification_outbox ({NOTE_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"
    );
    tx.execute(
        sqlx::AssertSqlSafe(sql),
        args![
            n.id,
            n.contact_id,
            n.kind.as_str(),
            n.url.as_str(),
            n.body.as_str(),
            n.status.as_str(),
            n.attempts,
            n.next_attempt_at,
            n.last_error.clone(),
            n.created_at
        ],
    )
    .await?;
    Ok(())
}

impl Store {
    /// Pending notifications due at `now` (µs).
    pub async fn due_notifications(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let sql = format!(
            "SELECT {NOTE_COLS} FROM notification_outbox WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT {limit}"
        );
        let rows: Vec<NotificationRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), args![now])
            .await?;
        Ok(rows.into_iter().map(Notification::from).collect())
    }

    /// A contact's notifications, oldest first.
    pub async fn notifications_of(&self, contact: Uuid) -> Result<Vec<Notification>, StoreError> {
        let sql = format!(
            "SELECT {NOTE_COLS} FROM notification_outbox WHERE contact_id = $1 ORDER BY created_at, id"
        );
        let rows: Vec<NotificationRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), args![contact])
            .await?;
        Ok(rows.into_iter().map(Notification::from).collect())
    }

    /// Records a delivery attempt: delivered, retry at `retry_at`, or failed for good.
    pub async fn record_delivery(
        &self,
        id: Uuid,
        outcome: Result<(), (String, Option<i64>)>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        match outcome {
            Ok(()) => {
                tx.execute(
                    "UPDATE notification_outbox SET status = 'delivered', attempts = attempts + 1, delivered_at = $2, last_error = NULL WHERE id = $1",
                    args![id, now],
                )
                .await?
            }
            Err((e, Some(retry))) => {
                tx.execute(
                    "UPDATE notification_outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE id = $1",
                    args![id, retry, e],
                )
                .await?
            }
            Err((e, None)) => {
                tx.execute(
                    "UPDATE notification_outbox SET status = 'failed', attempts = attempts + 1, last_error = $2 WHERE id = $1",
                    args![id, e],
                )
                .await?
            }
        };
        tx.commit().await
    }
}

/// A rep's answer to a pending handoff.
#[derive(Debug, Clone)]
pub enum Answer<'a> {
    /// Accepted: the contact becomes an SQL, with BANT.
    Accept {
        /// Budget, authority, need, timeline (JSON object).
        bant: &'a Value,
        /// Note.
        note: Option<&'a str>,
    },
    /// Rejected: the contact goes back to nurture (lead), with a reason.
    Reject {
        /// Reason code.
        reason: &'a str,
        /// Note.
        note: Option<&'a str>,
    },
}

impl Store {
    /// Records a rep's answer to a contact's pending handoff: the handoff's state, the stage
    /// (SQL on accept, lead on reject), `handoff.accepted`/`handoff.rejected` and
    /// `stage.changed` events; a rejection cancels the open follow-up tasks.
    pub async fn answer_handoff(
        &self,
        contact: Uuid,
        answer: Answer<'_>,
        now: DateTime<Utc>,
    ) -> Result<Handoff, StoreError> {
        let mut tx = self.db().begin().await?;
        let c = crate::contacts::get_in(&mut tx, contact)
            .await?
            .ok_or(StoreError::NotFound)?;
        let h = open_handoff_in(&mut tx, contact).await?;
        let Some(h) = h.filter(|h| h.status == "pending") else {
            return Err(StoreError::conflict(
                "contact_id",
                "this contact has no pending handoff to answer",
            ));
        };
        let (status, to, cause, mut props) = match &answer {
            Answer::Accept { bant, note } => (
                "accepted",
                kizuna_core::contact::LifecycleStage::Sql,
                "sales.accepted",
                serde_json::json!({"handoff_id": h.id, "owner_id": h.owner_id, "bant": bant, "note": note}),
            ),
            Answer::Reject { reason, note } => (
                "rejected",
                kizuna_core::contact::LifecycleStage::Lead,
                "sales.rejected",
                serde_json::json!({"handoff_id": h.id, "owner_id": h.owner_id, "reason": reason, "note": note}),
            ),
        };
        let (bant, reason, note) = match &answer {
            Answer::Accept { bant, note } => (Some(*bant), None, *note),
            Answer::Reject { reason, note } => (None, Some(*reason), *note),
        };
        decide_handoff(&mut tx, h.id, status, bant, reason, note, now).await?;
        tx.execute(
            "UPDATE contacts SET lifecycle_stage = $2, updated_at = $3 WHERE id = $1",
            args![contact, to.as_str(), now],
        )
        .await?;
        if status == "rejected" {
            tx.execute(
                "UPDATE tasks SET status = 'canceled', completed_at = $2 WHERE handoff_id = $1 AND status = 'open'",
                args![h.id, now],
            )
            .await?;
        }
        props["from_stage"] = serde_json::json!(c.lifecycle_stage);
        let mut events = vec![crate::events::NewEvent::new(
            contact,
            if status == "accepted" {
                "handoff.accepted"
            } else {
                "handoff.rejected"
            },
            now,
            "sales",
            props,
        )];
        if c.lifecycle_stage != to {
            events.push(crate::events::NewEvent::new(
                contact,
                "stage.changed",
                now,
                "sales",
                serde_json::json!({"from": c.lifecycle_stage, "to": to, "cause": cause}),
            ));
        }
        crate::events::append(&mut tx, events, now).await?;
        tx.commit().await?;
        Ok(self
            .handoffs_of(contact)
            .await?
            .into_iter()
            .find(|x| x.id == h.id)
            .unwrap_or(h))
    }

    /// The contact's open handoff, if any (pending or accepted).
    pub async fn open_handoff(&self, contact: Uuid) -> Result<Option<Handoff>, StoreError> {
        Ok(self
            .handoffs_of(contact)
            .await?
            .into_iter()
            .find(|h| h.status == "pending" || h.status == "accepted"))
    }
}
