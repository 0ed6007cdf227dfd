//! `/tasks`: follow-up tasks for sales reps (the handoff creates one per MQL; reps and
//! integrations can add their own).

use super::contacts::{cursor, not_found};
use super::parse_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Json, Query, Read, Write};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use kizuna_core::patch::Patch;
use kizuna_store::page::clamp_limit;
use kizuna_store::sales::{TASK_KINDS, TASK_STATUSES, Task, TaskFilter};
use serde::Deserialize;
use uuid::Uuid;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks", get(list).post(create))
        .route("/tasks/{id}", get(read).patch(update))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    owner_id: Option<Uuid>,
    contact_id: Option<Uuid>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn check_status(s: &str) -> ApiResult<()> {
    if TASK_STATUSES.contains(&s) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "status is open, done or canceled",
        )
        .field("status"))
    }
}

async fn list(
    _: Auth<Read>,
    State(s): State<AppState>,
    Query(p): Query<ListParams>,
) -> ApiResult<impl IntoResponse> {
    if let Some(st) = &p.status {
        check_status(st)?;
    }
    let f = TaskFilter {
        owner_id: p.owner_id,
        contact_id: p.contact_id,
        status: p.status,
    };
    Ok(axum::Json(
        s.store
            .tasks(&f, cursor(&p.cursor)?, clamp_limit(p.limit))
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskInput {
    contact_id: Uuid,
    #[serde(default)]
    owner_id: Option<Uuid>,
    title: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    due_at: Option<DateTime<Utc>>,
    #[serde(default)]
    notes: Option<String>,
}

async fn create(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(i): Json<TaskInput>,
) -> ApiResult<impl IntoResponse> {
    let kind = i.kind.unwrap_or_else(|| "follow_up".into());
    if !TASK_KINDS.contains(&kind.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "kind is follow_up, call or other",
        )
        .field("kind"));
    }
    if i.title.trim().is_empty() || i.title.chars().count() > 300 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "a title is 1 to 300 characters",
        )
        .field("title"));
    }
    let t = Task {
        id: Uuid::now_v7(),
        contact_id: i.contact_id,
        owner_id: i.owner_id,
        kind,
        title: i.title.trim().into(),
        notes: i.notes,
        status: "open".into(),
        due_at: i.due_at,
        source: "api".into(),
        handoff_id: None,
        created_at: s.clock.now(),
        completed_at: None,
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(s.store.create_task(&t).await?),
    ))
}

async fn read(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "task")?;
    Ok(axum::Json(
        s.store.task(id).await.map_err(|e| not_found(e, "task"))?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskPatch {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    notes: Patch<String>,
}

async fn update(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(p): Json<TaskPatch>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "task")?;
    if let Some(st) = &p.status {
        check_status(st)?;
    }
    let notes = match &p.notes {
        Patch::Absent => None,
        Patch::Null => Some(None),
        Patch::Value(n) => Some(Some(n.as_str())),
    };
    Ok(axum::Json(
        s.store
            .update_task(id, p.status.as_deref(), notes, s.clock.now())
            .await
            .map_err(|e| not_found(e, "task"))?,
    ))
}
