//! `/segments`: dynamic segments (the filter language, docs/engine.md) — create, read, replace,
//! delete, members, and a preview (count and sample) without saving. The engine builds a new or
//! edited segment in bulk and keeps it current event by event; `status` says where it is.

use super::contacts::{cursor, not_found};
use super::parse_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Json, Query, Read, Write};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use kizuna_core::contact::Contact;
use kizuna_engine::{build, definitions};
use kizuna_store::definitions::{Definition, DefinitionKind};
use kizuna_store::page::clamp_limit;
use kizuna_store::{Cursor, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/segments", get(list).post(create))
        .route("/segments/preview", post(preview))
        .route("/segments/{id}", get(read).put(replace).delete(remove))
        .route("/segments/{id}/members", get(members))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentInput {
    #[serde(default)]
    #[allow(dead_code)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    filter: Value,
}

#[derive(Serialize)]
struct SegmentView {
    id: Uuid,
    name: String,
    description: Option<String>,
    filter: Value,
    version: i64,
    built_version: i64,
    status: String,
    error: Option<String>,
    member_count: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    built_at: Option<DateTime<Utc>>,
}

async fn view(store: &Store, d: Definition) -> ApiResult<SegmentView> {
    Ok(SegmentView {
        member_count: store.segment_member_count(d.id).await?,
        id: d.id,
        name: d.name,
        description: d.description,
        filter: d.definition,
        version: d.version,
        built_version: d.built_version,
        status: d.status,
        error: d.error,
        created_at: d.created_at,
        updated_at: d.updated_at,
        built_at: d.built_at,
    })
}

async fn list(_: Auth<Read>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    let mut data = Vec::new();
    for d in s.store.definitions(DefinitionKind::Segment).await? {
        data.push(view(&s.store, d).await?);
    }
    Ok(axum::Json(json!({"data": data, "next_cursor": null})))
}

async fn create(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(i): Json<SegmentInput>,
) -> ApiResult<impl IntoResponse> {
    definitions::check_segment(&s.store, &i.name, &i.filter, None).await?;
    let d = s
        .store
        .create_definition(
            DefinitionKind::Segment,
            &i.name,
            i.description.as_deref(),
            &i.filter,
            s.clock.now(),
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(view(&s.store, d).await?)))
}

async fn read(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "segment")?;
    let d = s
        .store
        .definition(DefinitionKind::Segment, id)
        .await
        .map_err(|e| not_found(e, "segment"))?;
    Ok(axum::Json(view(&s.store, d).await?))
}

async fn replace(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(i): Json<SegmentInput>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "segment")?;
    s.store
        .definition(DefinitionKind::Segment, id)
        .await
        .map_err(|e| not_found(e, "segment"))?;
    definitions::check_segment(&s.store, &i.name, &i.filter, Some(id)).await?;
    let d = s
        .store
        .replace_definition(
            DefinitionKind::Segment,
            id,
            &i.name,
            i.description.as_deref(),
            &i.filter,
            s.clock.now(),
        )
        .await?;
    Ok(axum::Json(view(&s.store, d).await?))
}

async fn remove(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "segment")?;
    let defs = definitions::load(&s.store).await?;
    let readers = defs.dependents_of(id, false);
    if let Some(r) = readers.first().and_then(|r| defs.segment(*r)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_use",
            format!("segment {:?} reads this segment; change it first", r.name),
        )
        .field("id"));
    }
    s.store
        .delete_definition(DefinitionKind::Segment, id, s.clock.now())
        .await
        .map_err(|e| not_found(e, "segment"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct Member {
    #[serde(flatten)]
    contact: Contact,
    entered_at: DateTime<Utc>,
}

async fn members(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<PageParams>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "segment")?;
    s.store
        .definition(DefinitionKind::Segment, id)
        .await
        .map_err(|e| not_found(e, "segment"))?;
    let limit = clamp_limit(p.limit);
    let after = cursor(&p.cursor)?.map(|c| c.id);
    let rows = s.store.segment_members_page(id, after, limit + 1).await?;
    let more = rows.len() > limit as usize;
    let data: Vec<Member> = rows
        .into_iter()
        .take(limit as usize)
        .map(|(contact, t)| Member {
            contact,
            entered_at: kizuna_core::time::from_micros(t),
        })
        .collect();
    let next = if more {
        data.last().map(|m| {
            Cursor {
                key: 0,
                id: m.contact.id,
            }
            .encode()
        })
    } else {
        None
    };
    Ok(axum::Json(json!({"data": data, "next_cursor": next})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewInput {
    filter: Value,
    #[serde(default)]
    sample: Option<usize>,
}

async fn preview(
    _: Auth<Read>,
    State(s): State<AppState>,
    Json(i): Json<PreviewInput>,
) -> ApiResult<impl IntoResponse> {
    let n = i.sample.unwrap_or(10).min(100);
    let p = build::preview(&s.store, s.clock.as_ref(), &i.filter, n).await?;
    Ok(axum::Json(p))
}
