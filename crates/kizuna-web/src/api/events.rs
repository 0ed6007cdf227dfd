//! `POST /events`: offline and product events (R-TRACK-4) attached to contacts by e-mail or
//! id, all or nothing — the API twin of `kizuna import events`.

use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Json, Write};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use chrono::FixedOffset;
use kizuna_core::tracking::offline::{
    ContactRef, OfflineEvent, check_event_time, check_event_type, parse_event_time,
};
use kizuna_store::offline::{OfflineError, OfflineOptions, OfflineOutcome};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Most events in one request.
pub const MAX_EVENTS: usize = 10_000;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/events", post(record))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    email: Option<String>,
    contact_id: Option<Uuid>,
    #[serde(rename = "type")]
    event_type: String,
    occurred_at: String,
    #[serde(default)]
    properties: Map<String, Value>,
    message_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    events: Vec<Item>,
    #[serde(default)]
    create_contacts: bool,
}

fn problem(i: usize, field: &str, code: &str, message: String) -> Value {
    json!({"field": format!("events[{i}].{field}"), "code": code, "message": message})
}

async fn record(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(body): Json<Body>,
) -> ApiResult<axum::Json<OfflineOutcome>> {
    if body.events.len() > MAX_EVENTS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_events",
            format!(
                "{} events in one request; the limit is {MAX_EVENTS}",
                body.events.len()
            ),
        )
        .field("events"));
    }
    let now = s.clock.now();
    let utc = FixedOffset::east_opt(0).expect("zero offset");
    let mut problems = Vec::new();
    let mut events = Vec::with_capacity(body.events.len());
    for (i, item) in body.events.into_iter().enumerate() {
        let before = problems.len();
        let contact = match (&item.email, item.contact_id) {
            (Some(e), _) => match kizuna_core::email_address::normalize_email(e, "email") {
                Ok(e) => Some(ContactRef::Email(e)),
                Err(e) => {
                    problems.push(problem(i, "email", e.code, e.message));
                    None
                }
            },
            (None, Some(id)) => Some(ContactRef::Id(id)),
            (None, None) => {
                problems.push(problem(
                    i,
                    "email",
                    "required",
                    "each event needs the contact's email or contact_id".into(),
                ));
                None
            }
        };
        let event_type = check_event_type(&item.event_type)
            .map_err(|m| problems.push(problem(i, "type", "invalid_type", m)))
            .ok();
        let occurred_at = match parse_event_time(&item.occurred_at, utc) {
            Some(t) => match check_event_time(t, now) {
                Ok(()) => Some(t),
                Err(m) => {
                    problems.push(problem(i, "occurred_at", "invalid_time", m));
                    None
                }
            },
            None => {
                problems.push(problem(
                    i,
                    "occurred_at",
                    "invalid_time",
                    "not an ISO 8601 time (e.g. 2026-10-14T10:00:00+09:00)".into(),
                ));
                None
            }
        };
        if problems.len() > before {
            continue;
        }
        if let (Some(contact), Some(event_type), Some(occurred_at)) =
            (contact, event_type, occurred_at)
        {
            events.push(OfflineEvent {
                row: i as u64,
                contact,
                event_type,
                occurred_at,
                message_id: item.message_id.filter(|m| !m.trim().is_empty()),
                properties: item.properties,
            });
        }
    }
    if let Some(first) = problems.first().cloned() {
        return Err(invalid(first, problems));
    }
    let opts = OfflineOptions {
        create_contacts: body.create_contacts,
        source: "api".into(),
        detail: None,
    };
    match s.store.record_offline_events(events, &opts, now).await {
        Ok(out) => {
            s.tracking.ingestor.notify(&out.committed);
            Ok(axum::Json(out))
        }
        Err(OfflineError::Rows(rows)) => {
            let problems: Vec<Value> = rows
                .iter()
                .map(|r| {
                    problem(
                        r.row as usize,
                        r.column.as_deref().unwrap_or("email"),
                        "unknown_contact",
                        r.reason.clone(),
                    )
                })
                .collect();
            Err(invalid(problems[0].clone(), problems))
        }
        Err(OfflineError::Store(e)) => Err(e.into()),
    }
}

fn invalid(first: Value, all: Vec<Value>) -> ApiError {
    let code: &'static str = match first["code"].as_str() {
        Some("unknown_contact") => "unknown_contact",
        Some("invalid_time") => "invalid_time",
        Some("invalid_type") => "invalid_type",
        Some("required") => "required",
        _ => "invalid_email",
    };
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        code,
        format!(
            "{} (nothing was recorded; {} problem(s) in all)",
            first["message"].as_str().unwrap_or("invalid event"),
            all.len()
        ),
    )
    .field(first["field"].as_str().unwrap_or("events"))
    .details(Value::Array(all))
}
