//! `/api-keys` (admin): list, create (the secret is shown once), revoke; `/write-keys`: create.

use super::contacts::not_found;
use super::parse_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Admin, Auth, Json};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use kizuna_store::keys::Scope;
use serde::Deserialize;
use serde_json::json;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api-keys", get(list).post(create))
        .route("/api-keys/{id}", delete(revoke))
        .route("/write-keys", post(create_write_key))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyInput {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
}

async fn list(_: Auth<Admin>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(
        json!({"data": s.store.api_keys().await?, "next_cursor": null}),
    ))
}

async fn create(
    _: Auth<Admin>,
    State(s): State<AppState>,
    Json(i): Json<KeyInput>,
) -> ApiResult<impl IntoResponse> {
    let mut scopes = Vec::new();
    for (n, raw) in i.scopes.iter().enumerate() {
        scopes.push(raw.parse::<Scope>().map_err(|m| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", m)
                .field(format!("scopes[{n}]"))
        })?);
    }
    let (key, secret) = s
        .store
        .create_api_key(&i.name, &scopes, s.clock.now())
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"key": key, "secret": secret})),
    ))
}

async fn revoke(
    _: Auth<Admin>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "API key")?;
    s.store
        .revoke_api_key(id, s.clock.now())
        .await
        .map_err(|e| not_found(e, "API key"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteKeyInput {
    name: String,
}

async fn create_write_key(
    _: Auth<Admin>,
    State(s): State<AppState>,
    Json(i): Json<WriteKeyInput>,
) -> ApiResult<impl IntoResponse> {
    let key = s.store.create_write_key(&i.name, s.clock.now()).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"name": i.name, "write_key": key})),
    ))
}
