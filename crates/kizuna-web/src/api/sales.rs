//! A contact's engine view and the sales handoff: score explanation, stage history, segment
//! memberships, sales status; the rep's accept (BANT) or reject (reason); handoffs; the handoff
//! policy (owner assignment, follow-up task, signed owner webhook).

use super::contacts::{cursor, not_found};
use super::parse_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Admin, Auth, Json, Query, Read, Write};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use kizuna_core::lifecycle::Bant;
use kizuna_engine::{explain, sales};
use kizuna_store::page::clamp_limit;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/contacts/{id}/score", get(score))
        .route("/contacts/{id}/stages", get(stages))
        .route("/contacts/{id}/segments", get(segments))
        .route("/contacts/{id}/sales", get(status))
        .route("/contacts/{id}/sales/accept", post(accept))
        .route("/contacts/{id}/sales/reject", post(reject))
        .route("/handoffs", get(handoffs))
        .route("/handoff-policy", get(policy).put(set_policy))
}

async fn contact_id(s: &AppState, raw: &str) -> ApiResult<Uuid> {
    let id = parse_id(raw, "contact")?;
    s.store
        .contact(id)
        .await
        .map_err(|e| not_found(e, "contact"))?;
    Ok(id)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreParams {
    model: Option<String>,
}

async fn score(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<ScoreParams>,
) -> ApiResult<impl IntoResponse> {
    let id = contact_id(&s, &id).await?;
    let data = explain::explain_contact(&s.store, s.clock.as_ref(), id, p.model.as_deref()).await?;
    Ok(axum::Json(json!({"data": data})))
}

async fn stages(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = contact_id(&s, &id).await?;
    let data = explain::stages(&s.store, s.clock.as_ref(), id).await?;
    let current = s.store.contact(id).await?.lifecycle_stage;
    Ok(axum::Json(json!({"data": data, "current": current})))
}

async fn segments(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = contact_id(&s, &id).await?;
    let data: Vec<Value> = s
        .store
        .segments_of(id)
        .await?
        .into_iter()
        .map(|(sid, name, t)| {
            json!({"segment_id": sid, "name": name, "entered_at": kizuna_core::time::from_micros(t)})
        })
        .collect();
    Ok(axum::Json(json!({"data": data})))
}

async fn status(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = contact_id(&s, &id).await?;
    let c = s.store.contact(id).await?;
    let handoffs = s.store.handoffs_of(id).await?;
    let active = handoffs
        .iter()
        .any(|h| h.status == "pending" || h.status == "accepted");
    Ok(axum::Json(json!({
        "active_sales_cycle": active,
        "owner_id": c.owner_id,
        "lifecycle_stage": c.lifecycle_stage,
        "handoffs": handoffs,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptInput {
    bant: Bant,
    #[serde(default)]
    note: Option<String>,
}

async fn accept(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(i): Json<AcceptInput>,
) -> ApiResult<impl IntoResponse> {
    let id = contact_id(&s, &id).await?;
    Ok(axum::Json(
        sales::accept(&s.store, s.clock.as_ref(), id, &i.bant, i.note.as_deref()).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectInput {
    reason: String,
    #[serde(default)]
    note: Option<String>,
}

async fn reject(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(i): Json<RejectInput>,
) -> ApiResult<impl IntoResponse> {
    let id = contact_id(&s, &id).await?;
    Ok(axum::Json(
        sales::reject(&s.store, s.clock.as_ref(), id, &i.reason, i.note.as_deref()).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoffParams {
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn handoffs(
    _: Auth<Read>,
    State(s): State<AppState>,
    Query(p): Query<HandoffParams>,
) -> ApiResult<impl IntoResponse> {
    if let Some(st) = &p.status
        && !["pending", "accepted", "rejected", "closed"].contains(&st.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            "status is pending, accepted, rejected or closed",
        )
        .field("status"));
    }
    Ok(axum::Json(
        s.store
            .handoffs(
                p.status.as_deref(),
                cursor(&p.cursor)?,
                clamp_limit(p.limit),
            )
            .await?,
    ))
}

async fn policy(_: Auth<Admin>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    let mut p = sales::policy(&s.store).await?;
    if let Some(secret) = p.pointer_mut("/webhook/secret")
        && secret.is_string()
    {
        *secret = Value::String("********".into());
    }
    Ok(axum::Json(p))
}

async fn set_policy(
    _: Auth<Admin>,
    State(s): State<AppState>,
    Json(mut def): Json<Value>,
) -> ApiResult<StatusCode> {
    if let Value::Object(m) = &mut def {
        m.remove("kind");
    }
    sales::set_policy(&s.store, s.clock.as_ref(), &def).await?;
    Ok(StatusCode::NO_CONTENT)
}
