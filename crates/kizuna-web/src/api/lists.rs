//! `/lists`: static lists and their members.

use super::contacts::not_found;
use super::parse_id;
use crate::error::ApiResult;
use crate::extract::{Auth, Json, Read, Write};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use serde::Deserialize;
use uuid::Uuid;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/lists", get(list).post(create))
        .route("/lists/{id}", get(read).delete(remove))
        .route("/lists/{id}/members", post(add_members))
        .route("/lists/{id}/members/{contact_id}", delete(remove_member))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListInput {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

async fn list(_: Auth<Read>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(
        serde_json::json!({"data": s.store.lists().await?, "next_cursor": null}),
    ))
}

async fn create(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(i): Json<ListInput>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        axum::Json(
            s.store
                .create_list(&i.name, i.description.as_deref(), s.clock.now())
                .await?,
        ),
    ))
}

async fn read(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "list")?;
    Ok(axum::Json(
        s.store.list(id).await.map_err(|e| not_found(e, "list"))?,
    ))
}

async fn remove(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "list")?;
    s.store
        .delete_list(id, s.clock.now())
        .await
        .map_err(|e| not_found(e, "list"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Members {
    contact_ids: Vec<Uuid>,
}

async fn add_members(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(m): Json<Members>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "list")?;
    let added = s
        .store
        .add_to_list(id, &m.contact_ids, s.clock.now())
        .await
        .map_err(|e| not_found(e, "list"))?;
    Ok(axum::Json(serde_json::json!({"added": added})))
}

async fn remove_member(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path((id, contact)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (id, contact) = (parse_id(&id, "list")?, parse_id(&contact, "contact")?);
    if s.store.remove_from_list(id, contact, s.clock.now()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(crate::error::ApiError::not_found("list member"))
    }
}
