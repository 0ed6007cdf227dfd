//! The email REST API: templates (with preview as any contact), senders, subscription types,
//! broadcasts (schedule, pause, resume, cancel, live progress), messages (send one, list, resolve
//! an ambiguous one), consents (ledger, double opt-in), suppressions, and a contact's
//! personal-data export.

use super::contacts::not_found;
use super::parse_id;
use crate::email::{api_error, service};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Json, Query, Read, Write};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use kizuna_delivery::service::{SendRequest, parse_author};
use kizuna_store::email::broadcasts::BroadcastInput;
use kizuna_store::email::consents::{ConsentStatus, NewConsent, SubscriptionType};
use kizuna_store::email::metrics::Scope;
use kizuna_store::email::outbox::EmailFilter;
use kizuna_store::email::senders::SenderInput;
use kizuna_store::email::templates::TemplateInput;
use kizuna_store::events::TimelineFilter;
use kizuna_store::page::clamp_limit;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/templates", get(list_templates).post(create_template))
        .route("/templates/preview", post(preview_unsaved))
        .route(
            "/templates/{id}",
            get(read_template)
                .put(update_template)
                .delete(delete_template),
        )
        .route("/templates/{id}/preview", post(preview_template))
        .route("/templates/{id}/metrics", get(template_metrics))
        .route("/senders", get(list_senders).post(create_sender))
        .route(
            "/senders/{id}",
            get(read_sender).put(update_sender).delete(delete_sender),
        )
        .route("/subscription-types", get(list_types).post(put_type))
        .route("/broadcasts", get(list_broadcasts).post(create_broadcast))
        .route(
            "/broadcasts/{id}",
            get(read_broadcast).put(update_broadcast),
        )
        .route("/broadcasts/{id}/schedule", post(schedule_broadcast))
        .route("/broadcasts/{id}/pause", post(pause_broadcast))
        .route("/broadcasts/{id}/resume", post(resume_broadcast))
        .route("/broadcasts/{id}/cancel", post(cancel_broadcast))
        .route("/emails", get(list_emails).post(send_email))
        .route("/emails/{id}", get(read_email))
        .route("/emails/{id}/resolve", post(resolve_email))
        .route("/consents", post(record_consent))
        .route("/consents/double-opt-in", post(double_opt_in))
        .route("/contacts/{id}/consents", get(contact_consents))
        .route("/contacts/{id}/export", get(export_contact))
        .route(
            "/suppressions",
            get(check_suppression)
                .post(add_suppression)
                .delete(remove_suppression),
        )
}

// ---- templates ------------------------------------------------------------------------------

async fn list_templates(_: Auth<Read>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(
        json!({"data": s.store.templates().await?, "next_cursor": null}),
    ))
}

async fn create_template(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(t): Json<TemplateInput>,
) -> ApiResult<impl IntoResponse> {
    let svc = service(&s)?;
    svc.check_template(&t).await.map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(s.store.create_template(t, s.clock.now()).await?),
    ))
}

async fn read_template(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "template")?;
    Ok(axum::Json(
        s.store
            .template(id)
            .await
            .map_err(|e| not_found(e, "template"))?,
    ))
}

async fn update_template(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(t): Json<TemplateInput>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "template")?;
    let svc = service(&s)?;
    svc.check_template(&t).await.map_err(api_error)?;
    Ok(axum::Json(
        s.store
            .update_template(id, t, s.clock.now())
            .await
            .map_err(|e| not_found(e, "template"))?,
    ))
}

async fn delete_template(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "template")?;
    s.store
        .delete_template(id)
        .await
        .map_err(|e| not_found(e, "template"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewAs {
    contact_id: Uuid,
    #[serde(default)]
    sender_id: Option<Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewUnsaved {
    template: TemplateInput,
    contact_id: Uuid,
    #[serde(default)]
    sender_id: Option<Uuid>,
}

async fn preview_template(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(p): Json<PreviewAs>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "template")?;
    let svc = service(&s)?;
    let t = s
        .store
        .template(id)
        .await
        .map_err(|e| not_found(e, "template"))?;
    let input = TemplateInput {
        name: t.name,
        kind: t.kind,
        subject: t.subject,
        mjml: t.mjml,
        html: t.html,
        text: t.text,
    };
    Ok(axum::Json(
        svc.preview(&input, p.contact_id, p.sender_id)
            .await
            .map_err(api_error)?,
    ))
}

async fn preview_unsaved(
    _: Auth<Read>,
    State(s): State<AppState>,
    Json(p): Json<PreviewUnsaved>,
) -> ApiResult<impl IntoResponse> {
    let svc = service(&s)?;
    Ok(axum::Json(
        svc.preview(&p.template, p.contact_id, p.sender_id)
            .await
            .map_err(api_error)?,
    ))
}

async fn template_metrics(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "template")?;
    s.store
        .template(id)
        .await
        .map_err(|e| not_found(e, "template"))?;
    Ok(axum::Json(
        s.store.email_metrics(&Scope::Template(id)).await?,
    ))
}

// ---- senders and subscription types ----------------------------------------------------------

fn check_addresses(i: &SenderInput) -> ApiResult<()> {
    for (field, v) in [("email", Some(&i.email)), ("reply_to", i.reply_to.as_ref())] {
        if let Some(v) = v
            && let Err(e) = kizuna_mail::compose::check_address(v.trim())
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_email",
                e.to_string(),
            )
            .field(field));
        }
    }
    Ok(())
}

async fn list_senders(_: Auth<Read>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(
        json!({"data": s.store.senders().await?, "next_cursor": null}),
    ))
}

async fn create_sender(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(i): Json<SenderInput>,
) -> ApiResult<impl IntoResponse> {
    check_addresses(&i)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(s.store.create_sender(i, s.clock.now()).await?),
    ))
}

async fn read_sender(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "sender")?;
    Ok(axum::Json(
        s.store
            .sender(id)
            .await
            .map_err(|e| not_found(e, "sender"))?,
    ))
}

async fn update_sender(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(i): Json<SenderInput>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "sender")?;
    check_addresses(&i)?;
    Ok(axum::Json(
        s.store
            .update_sender(id, i, s.clock.now())
            .await
            .map_err(|e| not_found(e, "sender"))?,
    ))
}

async fn delete_sender(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "sender")?;
    s.store
        .delete_sender(id)
        .await
        .map_err(|e| not_found(e, "sender"))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_types(_: Auth<Read>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(
        json!({"data": s.store.subscription_types().await?, "next_cursor": null}),
    ))
}

async fn put_type(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(t): Json<SubscriptionType>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.store.put_subscription_type(&t, s.clock.now()).await?),
    ))
}

// ---- broadcasts -----------------------------------------------------------------------------

async fn check_broadcast(s: &AppState, b: &BroadcastInput) -> ApiResult<()> {
    s.store.template(b.template_id).await.map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "no template with this id",
        )
        .field("template_id")
    })?;
    s.store.sender(b.sender_id).await.map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "no sender with this id",
        )
        .field("sender_id")
    })?;
    let bad = |field: &str, msg: &str| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", msg).field(field)
    };
    match (b.audience.list_id, b.audience.segment_id) {
        (Some(list), None) => {
            s.store
                .list(list)
                .await
                .map_err(|_| bad("audience.list_id", "no list with this id"))?;
        }
        (None, Some(segment)) => {
            s.store
                .definition(kizuna_store::definitions::DefinitionKind::Segment, segment)
                .await
                .map_err(|_| bad("audience.segment_id", "no segment with this id"))?;
        }
        _ => {
            return Err(bad(
                "audience",
                "give exactly one of list_id (a static list) and segment_id (a segment)",
            ));
        }
    }

    if !s
        .store
        .subscription_type_exists(&b.subscription_type)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "no subscription type with this name",
        )
        .field("subscription_type"));
    }
    if let Some(ab) = &b.ab {
        for (i, v) in ab.variants.iter().enumerate() {
            if let Some(t) = v.template_id
                && s.store.template(t).await.is_err()
            {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    "no template with this id",
                )
                .field(format!("ab.variants[{i}].template_id")));
            }
            if let Some(subject) = &v.subject {
                let svc = service(s)?;
                let t = s
                    .store
                    .template(v.template_id.unwrap_or(b.template_id))
                    .await?;
                svc.check_template(&TemplateInput {
                    name: t.name,
                    kind: t.kind,
                    subject: subject.clone(),
                    mjml: t.mjml,
                    html: t.html,
                    text: t.text,
                })
                .await
                .map_err(|e| api_error(e).field(format!("ab.variants[{i}].subject")))?;
            }
        }
    }
    Ok(())
}

async fn with_progress(s: &AppState, id: Uuid) -> ApiResult<serde_json::Value> {
    let b = s
        .store
        .broadcast(id)
        .await
        .map_err(|e| not_found(e, "broadcast"))?;
    let p = s.store.broadcast_progress(id).await?;
    let mut v = serde_json::to_value(&b).unwrap_or_default();
    v["progress"] = json!({
        "audience": p.audience,
        "enqueued": p.enqueued,
        "states": p.states,
        "variants": p.variants.into_iter().map(|(name, m)| json!({"name": name, "metrics": m})).collect::<Vec<_>>(),
    });
    Ok(v)
}

async fn list_broadcasts(_: Auth<Read>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(
        json!({"data": s.store.broadcasts().await?, "next_cursor": null}),
    ))
}

async fn create_broadcast(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(b): Json<BroadcastInput>,
) -> ApiResult<impl IntoResponse> {
    check_broadcast(&s, &b).await?;
    let b = s.store.create_broadcast(b, s.clock.now()).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(with_progress(&s, b.id).await?),
    ))
}

async fn read_broadcast(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "broadcast")?;
    Ok(axum::Json(with_progress(&s, id).await?))
}

async fn update_broadcast(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(b): Json<BroadcastInput>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "broadcast")?;
    check_broadcast(&s, &b).await?;
    s.store
        .update_broadcast(id, b, s.clock.now())
        .await
        .map_err(|e| not_found(e, "broadcast"))?;
    Ok(axum::Json(with_progress(&s, id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ScheduleInput {
    #[serde(default)]
    at: Option<DateTime<Utc>>,
}

async fn schedule_broadcast(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "broadcast")?;
    let input: ScheduleInput = if body.is_empty() {
        ScheduleInput::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let now = s.clock.now();
    s.store
        .schedule_broadcast(id, input.at.unwrap_or(now), now)
        .await
        .map_err(|e| not_found(e, "broadcast"))?;
    if let Some(e) = &s.config.email {
        e.wake().notify_one();
    }
    Ok(axum::Json(with_progress(&s, id).await?))
}

async fn pause_broadcast(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "broadcast")?;
    s.store
        .pause_broadcast(id, s.clock.now())
        .await
        .map_err(|e| not_found(e, "broadcast"))?;
    Ok(axum::Json(with_progress(&s, id).await?))
}

async fn resume_broadcast(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "broadcast")?;
    s.store
        .resume_broadcast(id, s.clock.now())
        .await
        .map_err(|e| not_found(e, "broadcast"))?;
    if let Some(e) = &s.config.email {
        e.wake().notify_one();
    }
    Ok(axum::Json(with_progress(&s, id).await?))
}

async fn cancel_broadcast(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "broadcast")?;
    s.store
        .cancel_broadcast(id, s.clock.now())
        .await
        .map_err(|e| not_found(e, "broadcast"))?;
    Ok(axum::Json(with_progress(&s, id).await?))
}

// ---- messages -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendInput {
    idempotency_key: String,
    contact_id: Uuid,
    template_id: Uuid,
    #[serde(default)]
    sender_id: Option<Uuid>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    subscription_type: Option<String>,
    #[serde(default)]
    send_at: Option<DateTime<Utc>>,
}

async fn send_email(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(i): Json<SendInput>,
) -> ApiResult<impl IntoResponse> {
    let svc = service(&s)?;
    if let Some(a) = &i.author
        && !matches!(a.as_str(), "identity" | "owner")
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "author is identity or owner",
        )
        .field("author"));
    }
    s.store.contact(i.contact_id).await.map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "no contact with this id",
        )
        .field("contact_id")
    })?;
    let (m, created) = svc
        .enqueue(&SendRequest {
            idempotency_key: i.idempotency_key,
            contact_id: i.contact_id,
            template_id: i.template_id,
            sender_id: i.sender_id,
            author: parse_author(i.author.as_deref().unwrap_or("identity")),
            subscription_type: i.subscription_type,
            source: "api".into(),
            due_at: i.send_at,
        })
        .await
        .map_err(api_error)?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        axum::Json(m),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailParams {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    broadcast_id: Option<Uuid>,
    #[serde(default)]
    contact_id: Option<Uuid>,
    #[serde(default)]
    template_id: Option<Uuid>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    cursor: Option<String>,
}

async fn list_emails(
    _: Auth<Read>,
    State(s): State<AppState>,
    Query(p): Query<EmailParams>,
) -> ApiResult<impl IntoResponse> {
    let cursor = match &p.cursor {
        Some(c) => Some(kizuna_store::Cursor::decode(c).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "the cursor is not one this API returned")
                .field("cursor")
        })?),
        None => None,
    };
    Ok(axum::Json(
        s.store
            .list_emails(
                &EmailFilter {
                    state: p.state,
                    broadcast_id: p.broadcast_id,
                    contact_id: p.contact_id,
                    template_id: p.template_id,
                },
                cursor,
                clamp_limit(p.limit),
            )
            .await?,
    ))
}

async fn read_email(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "email")?;
    Ok(axum::Json(
        s.store.email(id).await.map_err(|e| not_found(e, "email"))?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolve {
    resolution: String,
}

async fn resolve_email(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(r): Json<Resolve>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "email")?;
    let m = s
        .store
        .resolve_ambiguous_email(id, &r.resolution, s.clock.now())
        .await
        .map_err(|e| not_found(e, "email"))?;
    if let Some(e) = &s.config.email {
        e.wake().notify_one();
    }
    Ok(axum::Json(m))
}

// ---- consents and suppressions --------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentInput {
    contact_id: Uuid,
    #[serde(default = "email_channel")]
    channel: String,
    subscription_type: String,
    status: ConsentStatus,
    source: String,
    #[serde(default)]
    wording: Option<String>,
    #[serde(default)]
    wording_version: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    occurred_at: Option<DateTime<Utc>>,
}

fn email_channel() -> String {
    "email".into()
}

async fn consent_of(s: &AppState, i: ConsentInput) -> ApiResult<NewConsent> {
    s.store.contact(i.contact_id).await.map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "no contact with this id",
        )
        .field("contact_id")
    })?;
    if !s
        .store
        .subscription_type_exists(&i.subscription_type)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "no subscription type with this name",
        )
        .field("subscription_type"));
    }
    if i.status == ConsentStatus::Granted
        && i.wording.as_deref().is_none_or(|w| w.trim().is_empty())
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "required",
            "a granted consent keeps the exact wording the person saw",
        )
        .field("wording"));
    }
    Ok(NewConsent {
        contact_id: i.contact_id,
        channel: i.channel,
        subscription_type: i.subscription_type,
        status: i.status,
        source: i.source,
        wording: i.wording,
        wording_version: i.wording_version,
        ip: i.ip,
        user_agent: i.user_agent,
        request_id: None,
        message_id: None,
        occurred_at: i.occurred_at.unwrap_or_else(|| s.clock.now()),
    })
}

async fn record_consent(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(i): Json<ConsentInput>,
) -> ApiResult<impl IntoResponse> {
    if i.status == ConsentStatus::Requested {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "use POST /api/v1/consents/double-opt-in to request a confirmation",
        )
        .field("status"));
    }
    let contact = i.contact_id;
    let c = consent_of(&s, i).await?;
    let ids = s.store.record_consents(&[c], s.clock.now()).await?;
    let ledger = s.store.consents_of(contact).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(ledger.into_iter().find(|c| Some(&c.id) == ids.first())),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DoubleOptIn {
    contact_id: Uuid,
    subscription_type: String,
    wording: String,
    #[serde(default)]
    wording_version: Option<String>,
    #[serde(default = "form_source")]
    source: String,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    template_id: Option<Uuid>,
    #[serde(default)]
    sender_id: Option<Uuid>,
}

fn form_source() -> String {
    "form".into()
}

async fn double_opt_in(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(i): Json<DoubleOptIn>,
) -> ApiResult<impl IntoResponse> {
    let svc = service(&s)?;
    let c = consent_of(
        &s,
        ConsentInput {
            contact_id: i.contact_id,
            channel: "email".into(),
            subscription_type: i.subscription_type,
            status: ConsentStatus::Requested,
            source: i.source,
            wording: Some(i.wording),
            wording_version: i.wording_version,
            ip: i.ip,
            user_agent: i.user_agent,
            occurred_at: None,
        },
    )
    .await?;
    let (req, msg) = svc
        .request_double_opt_in(c, i.template_id, i.sender_id)
        .await
        .map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"request": req, "email": msg})),
    ))
}

async fn contact_consents(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "contact")?;
    s.store
        .contact(id)
        .await
        .map_err(|e| not_found(e, "contact"))?;
    Ok(axum::Json(json!({
        "current": s.store.consent_states(id).await?,
        "ledger": s.store.consents_of(id).await?,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailParam {
    email: String,
}

fn normalized(e: &str) -> ApiResult<String> {
    kizuna_core::email_address::normalize_email(e, "email").map_err(|e| ApiError::invalid(e.into()))
}

async fn check_suppression(
    _: Auth<Read>,
    State(s): State<AppState>,
    Query(p): Query<EmailParam>,
) -> ApiResult<impl IntoResponse> {
    let e = normalized(&p.email)?;
    let reason = s.store.suppression_reason(&e).await?;
    Ok(axum::Json(
        json!({"email": e, "suppressed": reason.is_some(), "reason": reason}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Block {
    email: String,
}

async fn add_suppression(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(b): Json<Block>,
) -> ApiResult<impl IntoResponse> {
    let e = normalized(&b.email)?;
    s.store.suppress(&e, "blocked", s.clock.now()).await?;
    let reason = s.store.suppression_reason(&e).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"email": e, "suppressed": true, "reason": reason})),
    ))
}

async fn remove_suppression(
    _: Auth<Write>,
    State(s): State<AppState>,
    Query(p): Query<EmailParam>,
) -> ApiResult<StatusCode> {
    let e = normalized(&p.email)?;
    if s.store.remove_suppression(&e).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "removable suppression (erased addresses stay suppressed)",
        ))
    }
}

// ---- personal data export -------------------------------------------------------------------

async fn export_contact(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "contact")?;
    let contact = s
        .store
        .contact(id)
        .await
        .map_err(|e| not_found(e, "contact"))?;
    let company = match contact.company_id {
        Some(c) => s.store.company(c).await.ok(),
        None => None,
    };
    let mut events = Vec::new();
    let mut cursor = None;
    loop {
        let p = s
            .store
            .timeline(id, &TimelineFilter::default(), cursor, 1000)
            .await?;
        events.extend(p.data);
        match p
            .next_cursor
            .as_deref()
            .and_then(kizuna_store::Cursor::decode)
        {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut emails = Vec::new();
    let mut cursor = None;
    loop {
        let p = s
            .store
            .list_emails(
                &EmailFilter {
                    contact_id: Some(id),
                    ..Default::default()
                },
                cursor,
                1000,
            )
            .await?;
        emails.extend(p.data);
        match p
            .next_cursor
            .as_deref()
            .and_then(kizuna_store::Cursor::decode)
        {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let suppression = match &contact.email {
        Some(e) => s.store.suppression_reason(e).await?,
        None => None,
    };
    Ok(axum::Json(json!({
        "exported_at": s.clock.now(),
        "contact": contact,
        "company": company,
        "consents": {
            "current": s.store.consent_states(id).await?,
            "ledger": s.store.consents_of(id).await?,
        },
        "emails": emails,
        "suppression": suppression,
        "events": events,
    })))
}
