//! `/imports`: CSV upload (placeholder until the import pipeline lands).

use crate::state::AppState;
use axum::Router;

/// Routes.
pub fn router(_state: &AppState) -> Router<AppState> {
    Router::new()
}
