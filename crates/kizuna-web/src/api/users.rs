//! `/users`: marketers, sales reps (owners) and admins.

use crate::error::ApiResult;
use crate::extract::{Admin, Auth, Json, Read};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use kizuna_store::users::UserInput;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/users", get(list).post(create))
}

async fn list(_: Auth<Read>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(
        serde_json::json!({"data": s.store.users().await?, "next_cursor": null}),
    ))
}

async fn create(
    _: Auth<Admin>,
    State(s): State<AppState>,
    Json(i): Json<UserInput>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.store.create_user(i, s.clock.now()).await?),
    ))
}
