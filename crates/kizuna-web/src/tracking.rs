//! Segment-compatible tracking endpoints (R-TRACK-1) and the `/kizuna.js` snippet (R-TRACK-2).
//!
//! `POST /v1/identify|track|page|screen|group|alias|batch|import` and analytics.js's short
//! paths `/v1/i|t|p|s|g|a|b`, with CORS for browsers. The body (JSON, any content type — the
//! browser SDKs send `text/plain` — optionally gzip-compressed) is read within Segment's limits,
//! checked by [`kizuna_core::tracking::parse`], authenticated by its write key (basic-auth user
//! name, or `writeKey` in the body), and handed to the group-commit [`Ingestor`]; the answer
//! `200 {"success":true}` comes only after the commit. Errors use the contract's shape:
//! 400 (bad or too large body, naming the field), 401 (missing or unknown write key), 429 with
//! `Retry-After` when too much is waiting, 503 with `Retry-After` if the store fails.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use futures_util::StreamExt;
use kizuna_core::tracking::{Endpoint, MAX_BATCH_BYTES, MAX_MESSAGE_BYTES, TrackingError, parse};
use kizuna_store::ingest::Submission;
use kizuna_store::ingestor::{IngestError, Ingestor};
use kizuna_store::{Store, StoreError};
use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tower_http::cors::{Any, CorsLayer};
use uuid::Uuid;

/// The snippet's source, served at `/kizuna.js`.
pub const SNIPPET: &str = include_str!("tracking/kizuna.js");

/// How long a verified write key is trusted without asking the database again (a revoked key
/// stops working within this time).
const KEY_TTL: Duration = Duration::from_secs(30);
/// How long an unknown key is remembered as unknown.
const BAD_KEY_TTL: Duration = Duration::from_secs(5);

/// Tracking's share of the application state.
pub struct Tracking {
    /// The group-commit writer.
    pub ingestor: Ingestor,
    keys: Mutex<HashMap<String, (Option<Uuid>, Instant)>>,
}

impl Tracking {
    /// Tracking over a running ingestor.
    pub fn new(ingestor: Ingestor) -> Tracking {
        Tracking {
            ingestor,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The id of a valid write key, from the cache or the store.
    async fn write_key_id(&self, store: &Store, key: &str) -> Result<Option<Uuid>, StoreError> {
        if let Some((id, at)) = self.keys.lock().expect("not poisoned").get(key) {
            let ttl = if id.is_some() { KEY_TTL } else { BAD_KEY_TTL };
            if at.elapsed() < ttl {
                return Ok(*id);
            }
        }
        let id = store.verify_write_key(key).await?;
        let mut keys = self.keys.lock().expect("not poisoned");
        if keys.len() > 10_000 {
            keys.clear();
        }
        keys.insert(key.to_string(), (id, Instant::now()));
        Ok(id)
    }
}

impl std::fmt::Debug for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracking")
            .field("ingestor", &self.ingestor)
            .finish()
    }
}

/// CORS for browsers: any origin may post events (write keys are public by design).
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(Any)
        .max_age(Duration::from_secs(86400))
}

/// The tracking routes and the snippet.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/{kind}", post(ingest))
        .layer(cors())
        .route("/kizuna.js", get(snippet))
}

/// The same routes answered by a handler that only reads the body (a benchmark's ceiling for
/// the HTTP stack).
pub fn noop_router() -> Router<AppState> {
    Router::new()
        .route("/v1/{kind}", post(noop))
        .layer(cors())
        .route("/kizuna.js", get(snippet))
}

async fn snippet() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SNIPPET,
    )
}

/// A tracking error in the contract's shape.
fn tracking_error(e: TrackingError) -> ApiError {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut err = ApiError::new(status, e.code, e.message);
    if let Some(f) = e.field {
        err = err.field(f);
    }
    err
}

fn too_large(endpoint: Endpoint) -> ApiError {
    if endpoint.is_batch() {
        ApiError::bad_request(
            "batch_too_large",
            format!("the batch is larger than {MAX_BATCH_BYTES} bytes (500 KB)"),
        )
    } else {
        ApiError::bad_request(
            "message_too_large",
            format!("the message is larger than {MAX_MESSAGE_BYTES} bytes (32 KB)"),
        )
    }
}

/// Reads the body within the endpoint's limit, gunzipping it if it says so; a gzip bomb stops
/// at the limit too.
async fn read_body(
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, ApiError> {
    let limit = if endpoint.is_batch() {
        MAX_BATCH_BYTES
    } else {
        MAX_MESSAGE_BYTES
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large(endpoint));
    }
    let mut raw = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("invalid_body", format!("the body could not be read: {e}"))
        })?;
        if raw.len() + chunk.len() > limit {
            return Err(too_large(endpoint));
        }
        raw.extend_from_slice(&chunk);
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity(raw.len() * 4);
            let mut decoder =
                flate2::read::MultiGzDecoder::new(raw.as_slice()).take(limit as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| {
                ApiError::bad_request(
                    "invalid_body",
                    format!("the body says gzip but is not valid gzip data: {e}"),
                )
            })?;
            if out.len() > limit {
                return Err(too_large(endpoint));
            }
            Ok(out)
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("Content-Encoding {other:?} is not supported; send gzip or nothing"),
        )),
    }
}

/// The basic-auth user name (the write key), if the request has basic auth.
fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    Some(user.to_string())
}

fn endpoint_of(kind: &str) -> Result<Endpoint, ApiError> {
    Endpoint::from_path(kind).ok_or_else(|| {
        if kind.eq_ignore_ascii_case("merge") {
            ApiError::bad_request(
                "unsupported_type",
                "RudderStack merge calls are not supported; send an alias (previousId → userId) or an identify",
            )
        } else {
            ApiError::not_found("tracking endpoint")
        }
    })
}

fn success() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"success":true}"#,
    )
        .into_response()
}

fn retry_after(mut res: Response, seconds: u32) -> Response {
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    res
}

async fn ingest(
    State(s): State<AppState>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match ingest_inner(&s, &kind, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn ingest_inner(
    s: &AppState,
    kind: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let endpoint = endpoint_of(kind)?;
    let bytes = read_body(endpoint, headers, body).await?;
    let auth = basic_auth_user(headers);
    let parsed = parse(endpoint, &bytes, auth.as_deref(), s.clock.now()).map_err(tracking_error)?;
    let Some(source_key) = s.tracking.write_key_id(&s.store, &parsed.write_key).await? else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_write_key",
            "the write key is unknown or revoked (create one with `kizuna write-key create`)",
        ));
    };
    if parsed.messages.is_empty() {
        return Ok(success());
    }
    let submission = Submission {
        source_key,
        messages: parsed.messages,
    };
    match s.tracking.ingestor.submit(submission).await {
        Ok(()) => Ok(success()),
        Err(IngestError::Overloaded) => Ok(retry_after(
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "too many events are waiting to be stored; retry after the given seconds",
            )
            .into_response(),
            1,
        )),
        Err(e) => Ok(retry_after(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{e}; nothing was stored, retry later"),
            )
            .into_response(),
            5,
        )),
    }
}

async fn noop(Path(kind): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let endpoint = match endpoint_of(&kind) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    match read_body(endpoint, &headers, body).await {
        Ok(_) => success(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_user_name_is_the_write_key() {
        let mut h = HeaderMap::new();
        let enc = base64::engine::general_purpose::STANDARD.encode("wk_abc:");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {enc}").parse().unwrap(),
        );
        assert_eq!(basic_auth_user(&h).as_deref(), Some("wk_abc"));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_auth_user(&h), None);
        h.insert(header::AUTHORIZATION, "Basic %%%".parse().unwrap());
        assert_eq!(basic_auth_user(&h), None);
    }

    #[test]
    fn merge_is_refused_clearly_and_unknown_paths_are_404() {
        assert_eq!(endpoint_of("merge").unwrap_err().code, "unsupported_type");
        assert_eq!(
            endpoint_of("nope").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(endpoint_of("b").unwrap(), Endpoint::Batch);
    }
}
