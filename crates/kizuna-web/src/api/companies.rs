//! `/companies`: accounts.

use super::contacts::{cursor, not_found};
use super::parse_id;
use crate::error::ApiResult;
use crate::extract::{Auth, Json, Query, Read, Write};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use kizuna_core::company::{Company, CompanyInput};
use kizuna_store::Page;
use kizuna_store::companies::CompanyFilter;
use kizuna_store::page::clamp_limit;
use serde::Deserialize;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/companies", get(list).post(create))
        .route("/companies/{id}", get(read).patch(update).delete(delete))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    domain: Option<String>,
    name: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list(
    _: Auth<Read>,
    State(s): State<AppState>,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<Company>>> {
    let f = CompanyFilter {
        domain: p.domain,
        name: p.name,
    };
    Ok(axum::Json(
        s.store
            .list_companies(&f, cursor(&p.cursor)?, clamp_limit(p.limit))
            .await?,
    ))
}

async fn create(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(input): Json<CompanyInput>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.store.create_company(input, s.clock.now()).await?),
    ))
}

async fn read(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Company>> {
    let id = parse_id(&id, "company")?;
    s.store
        .company(id)
        .await
        .map(axum::Json)
        .map_err(|e| not_found(e, "company"))
}

async fn update(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<CompanyInput>,
) -> ApiResult<axum::Json<Company>> {
    let id = parse_id(&id, "company")?;
    s.store
        .update_company(id, input, s.clock.now())
        .await
        .map(axum::Json)
        .map_err(|e| not_found(e, "company"))
}

async fn delete(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "company")?;
    s.store
        .delete_company(id)
        .await
        .map_err(|e| not_found(e, "company"))?;
    Ok(StatusCode::NO_CONTENT)
}
