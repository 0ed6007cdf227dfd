//! `GET /api/v1/openapi.json`: the API's OpenAPI 3.1 document (public, so tools can read it).

use crate::state::AppState;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The document, kept beside the handlers; a test checks every documented route answers.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(document))
}

async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
