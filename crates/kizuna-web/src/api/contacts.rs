//! `/contacts`: create, upsert by e-mail, read, list, change, erase, merge, timeline.

use super::parse_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Admin, Auth, Json, Query, Read, Write};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use kizuna_core::contact::{Contact, ContactInput, LifecycleStage};
use kizuna_store::contacts::ContactFilter;
use kizuna_store::events::{Event, TimelineFilter};
use kizuna_store::merges::MergeRecord;
use kizuna_store::page::clamp_limit;
use kizuna_store::{Cursor, Page};
use serde::Deserialize;
use uuid::Uuid;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/contacts", get(list).post(create))
        .route("/contacts/upsert", post(upsert))
        .route("/contacts/{id}", get(read).patch(update).delete(erase))
        .route("/contacts/{id}/timeline", get(timeline))
        .route("/contacts/{id}/merge", post(merge))
        .route("/merges/{id}/undo", post(undo_merge))
}

/// Decodes a cursor parameter, naming it when it is not one of ours.
pub fn cursor(raw: &Option<String>) -> Result<Option<Cursor>, ApiError> {
    match raw {
        None => Ok(None),
        Some(s) => Cursor::decode(s).map(Some).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor is not a value this API returned")
                .field("cursor")
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    email: Option<String>,
    stage: Option<LifecycleStage>,
    lifecycle_stage: Option<LifecycleStage>,
    owner_id: Option<Uuid>,
    company_id: Option<Uuid>,
    list_id: Option<Uuid>,
    updated_since: Option<DateTime<Utc>>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list(
    _: Auth<Read>,
    State(s): State<AppState>,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<Contact>>> {
    let filter = ContactFilter {
        email: p.email,
        stage: p.stage.or(p.lifecycle_stage),
        owner_id: p.owner_id,
        company_id: p.company_id,
        list_id: p.list_id,
        updated_since: p.updated_since,
    };
    Ok(axum::Json(
        s.store
            .list_contacts(&filter, cursor(&p.cursor)?, clamp_limit(p.limit))
            .await?,
    ))
}

async fn create(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(input): Json<ContactInput>,
) -> ApiResult<impl IntoResponse> {
    let c = s.store.create_contact(input, s.clock.now(), "api").await?;
    Ok((StatusCode::CREATED, axum::Json(c)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertParams {
    #[serde(default)]
    overwrite: bool,
}

async fn upsert(
    _: Auth<Write>,
    State(s): State<AppState>,
    Query(p): Query<UpsertParams>,
    Json(input): Json<ContactInput>,
) -> ApiResult<impl IntoResponse> {
    let (c, created) = s
        .store
        .upsert_contact_by_email(input, p.overwrite, s.clock.now(), "api")
        .await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        axum::Json(c),
    ))
}

async fn read(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Contact>> {
    let id = parse_id(&id, "contact")?;
    s.store
        .contact(id)
        .await
        .map(axum::Json)
        .map_err(|e| not_found(e, "contact"))
}

async fn update(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<ContactInput>,
) -> ApiResult<axum::Json<Contact>> {
    let id = parse_id(&id, "contact")?;
    s.store
        .update_contact(id, input, s.clock.now(), "api")
        .await
        .map(axum::Json)
        .map_err(|e| not_found(e, "contact"))
}

async fn erase(
    _: Auth<Admin>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "contact")?;
    s.store
        .erase_contact(id, s.clock.now())
        .await
        .map_err(|e| not_found(e, "contact"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineParams {
    #[serde(rename = "type")]
    types: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn timeline(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<TimelineParams>,
) -> ApiResult<axum::Json<Page<Event>>> {
    let id = parse_id(&id, "contact")?;
    s.store
        .contact(id)
        .await
        .map_err(|e| not_found(e, "contact"))?;
    let types = p
        .types
        .map(|t| {
            t.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(axum::Json(
        s.store
            .timeline(
                id,
                &TimelineFilter { types },
                cursor(&p.cursor)?,
                clamp_limit(p.limit),
            )
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeBody {
    other_id: Uuid,
}

async fn merge(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(b): Json<MergeBody>,
) -> ApiResult<axum::Json<MergeRecord>> {
    let id = parse_id(&id, "contact")?;
    s.store
        .merge_contacts(id, b.other_id, s.clock.now(), "api")
        .await
        .map(axum::Json)
        .map_err(|e| not_found(e, "contact"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UndoParams {
    #[serde(default)]
    force: bool,
}

async fn undo_merge(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<UndoParams>,
) -> ApiResult<axum::Json<MergeRecord>> {
    let id = parse_id(&id, "merge")?;
    s.store
        .undo_merge(id, p.force, s.clock.now())
        .await
        .map(axum::Json)
        .map_err(|e| not_found(e, "merge"))
}

/// A store `NotFound` as a 404 naming what was missing.
pub fn not_found(e: kizuna_store::StoreError, what: &str) -> ApiError {
    match e {
        kizuna_store::StoreError::NotFound => ApiError::not_found(what),
        other => other.into(),
    }
}
