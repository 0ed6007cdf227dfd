//! `/fields`: custom field definitions.

use super::contacts::not_found;
use crate::error::ApiResult;
use crate::extract::{Admin, Auth, Json, Read};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use kizuna_core::field::FieldInput;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/fields", get(list).post(create))
        .route("/fields/{name}", delete(remove))
}

async fn list(_: Auth<Read>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(
        serde_json::json!({"data": s.store.fields().await?, "next_cursor": null}),
    ))
}

async fn create(
    _: Auth<Admin>,
    State(s): State<AppState>,
    Json(input): Json<FieldInput>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.store.create_field(input, s.clock.now()).await?),
    ))
}

async fn remove(
    _: Auth<Admin>,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.store
        .delete_field(&name)
        .await
        .map_err(|e| not_found(e, "field"))?;
    Ok(StatusCode::NO_CONTENT)
}
