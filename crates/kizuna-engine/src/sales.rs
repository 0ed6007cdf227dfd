//! The sales handoff: completing a handoff the pipeline decided (follow-up task, owner
//! notification with the context a rep needs — score breakdown, recent activity, source), and
//! the rep's answer (accept with BANT → SQL, reject with a reason → recycled to nurture).

use crate::definitions::{Definitions, POLICY_SETTING};
use crate::pipeline::{ENGINE_SOURCE, HandoffDraft};
use crate::state::ContactState;
use crate::{EngineError, explain};
use kizuna_core::clock::Clock;
use kizuna_core::lifecycle::{Bant, check_reject_reason, task_title};
use kizuna_core::time::from_micros;
use kizuna_store::Store;
use kizuna_store::db::Tx;
use kizuna_store::events::NewEvent;
use kizuna_store::log::LogCursor;
use kizuna_store::sales::{Answer, Handoff, Notification, Task};
use serde_json::{Value, json};
use uuid::Uuid;

/// Recent events shown to the rep.
const RECENT: usize = 10;

/// A handoff ready to write.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Idempotency key.
    pub key: String,
    /// The handoff.
    pub handoff: Handoff,
    /// Its follow-up task.
    pub task: Task,
    /// Owner notifications: the webhook (if configured) and the e-mail alert (if asked for).
    pub notifications: Vec<Notification>,
    /// `handoff.created`.
    pub event: NewEvent,
    /// The stage change it depends on.
    pub requires_stage: Option<String>,
}

fn display_name(c: &kizuna_core::contact::Contact) -> String {
    match (&c.last_name, &c.first_name) {
        (Some(l), Some(f)) => format!("{l} {f}"),
        (Some(l), None) => l.clone(),
        (None, Some(f)) => f.clone(),
        _ => c.email.clone().unwrap_or_else(|| c.id.to_string()),
    }
}

/// Completes a handoff: task, notification payload, event.
pub async fn prepare(
    store: &Store,
    defs: &Definitions,
    cs: &ContactState,
    d: HandoffDraft,
    upto: Option<&LogCursor>,
    now: i64,
) -> Result<Prepared, EngineError> {
    let c = &cs.contact;
    let handoff_id = Uuid::now_v7();
    let task_id = Uuid::now_v7();
    let at = from_micros(d.at);
    let task = Task {
        id: task_id,
        contact_id: c.id,
        owner_id: d.owner,
        kind: "follow_up".into(),
        title: task_title(
            &defs.policy.task_title,
            &display_name(c),
            c.email.as_deref().unwrap_or(""),
        ),
        notes: None,
        status: "open".into(),
        due_at: Some(at + defs.policy.task_due_in.duration()),
        source: "handoff".into(),
        handoff_id: Some(handoff_id),
        created_at: at,
        completed_at: None,
    };
    let handoff = Handoff {
        id: handoff_id,
        contact_id: c.id,
        model_id: d.model,
        owner_id: d.owner,
        status: "pending".into(),
        task_id: Some(task_id),
        score: d.score,
        grade: d.grade.clone(),
        assigned_by: d.assigned_by.into(),
        bant: None,
        reason: None,
        note: None,
        created_at: at,
        decided_at: None,
    };
    let mut event = NewEvent::new(
        c.id,
        "handoff.created",
        at,
        ENGINE_SOURCE,
        json!({"handoff_id": handoff_id, "owner_id": d.owner, "task_id": task_id, "model_id": d.model,
               "score": d.score, "grade": d.grade, "assigned_by": d.assigned_by}),
    );
    event.message_id = Some(d.key.clone());
    let mut notifications = Vec::new();
    if defs.policy.webhook_url.is_some() || defs.policy.email_owner {
        let log = store.contact_log(c.id, upto).await?;
        let models: Vec<&kizuna_core::scoring::ScoringModel> = match d.model {
            Some(m) => defs.model(m).into_iter().collect(),
            None => defs
                .models
                .iter()
                .filter(|m| m.model.lifecycle)
                .map(|m| &m.model)
                .collect(),
        };
        let breakdown: Vec<Value> = models
            .iter()
            .map(|m| {
                let (e, _) = explain::explain_with(m, &log, c, cs.company.as_ref(), now);
                serde_json::to_value(e).unwrap_or(Value::Null)
            })
            .collect();
        let recent: Vec<Value> = log
            .iter()
            .rev()
            .filter(|e| e.source != ENGINE_SOURCE)
            .take(RECENT)
            .map(|e| {
                json!({"type": e.event_type, "occurred_at": from_micros(e.occurred_at),
                           "source": e.source, "properties": e.properties})
            })
            .collect();
        let owner_user = match d.owner {
            Some(o) => store.user(o).await.ok(),
            None => None,
        };
        let owner = owner_user.as_ref().map(
            |u| json!({"id": u.id, "name": u.name, "email": u.email, "territory": u.territory}),
        );
        let body = json!({
            "type": "handoff.created",
            "delivery_id": handoff_id,
            "occurred_at": at,
            "handoff": {"id": handoff_id, "status": "pending", "assigned_by": d.assigned_by,
                        "score": d.score, "grade": d.grade, "task_id": task_id, "task_due_at": task.due_at},
            "owner": owner,
            "contact": {
                "id": c.id, "email": c.email, "first_name": c.first_name, "last_name": c.last_name,
                "phone": c.phone, "job_title": c.job_title, "department": c.department,
                "lifecycle_stage": c.lifecycle_stage, "temperature": c.temperature,
                "source": c.source,
                "company": cs.company.as_ref().map(|co| json!({"id": co.id, "name": co.name,
                    "industry": co.industry, "employee_count": co.employee_count, "domain": co.domain})),
            },
            "score_breakdown": breakdown,
            "recent_activity": recent,
        });
        let note = |id: Uuid, url: String| Notification {
            id,
            contact_id: c.id,
            kind: "handoff".into(),
            url,
            body: body.to_string(),
            status: "pending".into(),
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            created_at: now,
        };
        if let Some(url) = &defs.policy.webhook_url {
            notifications.push(note(handoff_id, url.clone()));
        }
        // The owner's e-mail alert: its own delivery, retried like the webhook (written
        // with the handoff, so it exists exactly when the handoff does).
        if defs.policy.email_owner
            && let Some(u) = owner_user.as_ref().filter(|u| !u.email.is_empty())
        {
            notifications.push(note(Uuid::now_v7(), format!("mailto:{}", u.email)));
        }
    }
    Ok(Prepared {
        key: d.key,
        handoff,
        task,
        notifications,
        event,
        requires_stage: d.requires_stage,
    })
}

/// Writes a prepared handoff (inside the engine's transaction).
pub async fn write_prepared(tx: &mut Tx, p: &Prepared) -> Result<(), EngineError> {
    kizuna_store::sales::insert_task(tx, &p.task).await?;
    kizuna_store::sales::insert_handoff(tx, &p.handoff, &p.key).await?;
    for n in &p.notifications {
        kizuna_store::sales::enqueue_notification(tx, n).await?;
    }
    Ok(())
}

/// A rep accepts a contact's pending handoff: SQL, with BANT.
pub async fn accept(
    store: &Store,
    clock: &dyn Clock,
    contact: Uuid,
    bant: &Bant,
    note: Option<&str>,
) -> Result<Handoff, EngineError> {
    bant.validate()?;
    let b = serde_json::to_value(bant).unwrap_or(Value::Null);
    Ok(store
        .answer_handoff(contact, Answer::Accept { bant: &b, note }, clock.now())
        .await?)
}

/// A rep rejects a contact's pending handoff with a reason: back to nurture (lead).
pub async fn reject(
    store: &Store,
    clock: &dyn Clock,
    contact: Uuid,
    reason: &str,
    note: Option<&str>,
) -> Result<Handoff, EngineError> {
    check_reject_reason(reason).map_err(kizuna_core::ValidationErrors::from)?;
    Ok(store
        .answer_handoff(contact, Answer::Reject { reason, note }, clock.now())
        .await?)
}

/// Replaces the handoff policy (checked first).
pub async fn set_policy(store: &Store, clock: &dyn Clock, def: &Value) -> Result<(), EngineError> {
    crate::definitions::check_policy(store, def).await?;
    let now = clock.now().timestamp_micros();
    let mut tx = store.db().begin().await?;
    kizuna_store::engine_state::set_setting(&mut tx, POLICY_SETTING, &def.to_string(), now).await?;
    kizuna_store::engine_state::bump_definitions(&mut tx, now).await?;
    tx.commit().await?;
    Ok(())
}

/// The stored handoff policy (as written), if any.
pub async fn policy(store: &Store) -> Result<Value, EngineError> {
    Ok(store
        .setting(POLICY_SETTING)
        .await?
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| json!({})))
}
