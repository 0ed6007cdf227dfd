//! Kizuna's HTTP edge (axum).
//!
//! - [`api`]: the REST API under `/api/v1/`, authenticated by API keys with scopes.
//! - [`health`]: `/healthz` and Prometheus `/metrics`.
//! - [`email`]: public email endpoints for recipients (open pixel, click redirect, one-click
//!   unsubscribe, preference center, double opt-in) and bounce/complaint intake.
//! - [`error`]: the one error type, rendered as the contract's JSON error shape.
//! - [`extract`]: JSON/query extractors that name bad fields, and the `Auth` extractor.
//! - [`tracking`]: the Segment-compatible `/v1/*` endpoints and the `/kizuna.js` snippet.
//!
//! [`router`] builds the whole application; [`serve`] runs it until a shutdown signal and lets
//! in-flight requests finish.
#![deny(missing_docs)]

pub mod api;
pub mod email;
pub mod error;
pub mod extract;
pub mod health;
pub mod state;
pub mod tracking;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use std::future::Future;
use std::time::Instant;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use state::{AppState, WebConfig};

/// The whole application.
pub fn router(state: AppState) -> Router {
    build(state, tracking::router())
}

/// The whole application with tracking answered by a handler that only reads the body: the
/// ceiling of the HTTP stack in `kizuna bench ingest`.
pub fn noop_tracking_router(state: AppState) -> Router {
    build(state, tracking::noop_router())
}

fn build(state: AppState, tracking: Router<AppState>) -> Router {
    Router::new()
        .merge(health::router())
        .merge(tracking)
        .merge(email::router())
        .nest("/api/v1", api::router(&state))
        .fallback(|| async { error::ApiError::not_found("route") })
        .layer(middleware::from_fn(record_metrics))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("kizuna_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("kizuna_http_request_duration_seconds", "method" => method, "route" => route).record(start.elapsed().as_secs_f64());
    res
}

/// Serves until `shutdown` resolves, then stops accepting and waits for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    health::install_metrics();
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
