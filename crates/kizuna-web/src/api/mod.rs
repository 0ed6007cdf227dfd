//! The REST API under `/api/v1/`. One module per resource, each with its own `router()`.

pub mod companies;
pub mod contacts;
pub mod email;
pub mod events;
pub mod fields;
pub mod imports;
pub mod keys;
pub mod lists;
pub mod openapi;
pub mod programs;
pub mod sales;
pub mod scoring_models;
pub mod segments;
pub mod tasks;
pub mod users;

use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use uuid::Uuid;

/// Every API route. The JSON body limit applies to all but the import upload, which sets its own.
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(contacts::router())
        .merge(events::router())
        .merge(companies::router())
        .merge(fields::router())
        .merge(lists::router())
        .merge(users::router())
        .merge(keys::router())
        .merge(email::router())
        .merge(openapi::router())
        .merge(segments::router())
        .merge(programs::router())
        .merge(scoring_models::router())
        .merge(tasks::router())
        .merge(sales::router())
        .layer(DefaultBodyLimit::max(state.config.max_json_bytes))
        .merge(imports::router(state))
        .fallback(|| async { ApiError::not_found("API route") })
}

/// Parses an id from a path segment, naming it when it is not a UUID.
pub fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what))
}
