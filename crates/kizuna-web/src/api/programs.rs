//! `/programs`: nurture programs (docs/programs.md) — create (version 1), read, publish a new
//! version (contacts in flight stay on theirs unless a `mapping` moves them), pause, resume,
//! delete, enroll a contact (a sales rep or the API), list enrollments, simulate (saved or
//! unsaved definition, virtual clock, nothing sent), the report, and the shipped templates.

use super::contacts::not_found;
use super::parse_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Json, Query, Read, Write};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use kizuna_core::time::{from_micros, micros};
use kizuna_engine::program::simulate::{Responses, SimOptions, simulate};
use kizuna_engine::program::{self, ProgramRunner, RunnerConfig, templates};
use kizuna_store::Store;
use kizuna_store::page::clamp_limit;
use kizuna_store::programs::ProgramRow;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/programs", get(list).post(create))
        .route("/programs/simulate", post(simulate_unsaved))
        .route("/programs/templates", get(shipped))
        .route("/programs/templates/{key}/install", post(install))
        .route("/programs/{id}", get(read).put(replace).delete(remove))
        .route("/programs/{id}/versions/{version}", get(version))
        .route("/programs/{id}/pause", post(pause))
        .route("/programs/{id}/resume", post(resume))
        .route("/programs/{id}/enrollments", get(enrollments).post(enroll))
        .route("/programs/{id}/simulate", post(simulate_saved))
        .route("/programs/{id}/report", get(report))
}

async fn view(store: &Store, r: ProgramRow) -> ApiResult<Value> {
    let (def, _) = store.program_version(r.id, r.version).await?;
    Ok(json!({
        "id": r.id, "name": r.name, "description": r.description, "status": r.status,
        "version": r.version, "definition": def,
        "created_at": from_micros(r.created_at), "updated_at": from_micros(r.updated_at)
    }))
}

async fn list(_: Auth<Read>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    let mut data = Vec::new();
    for r in s.store.programs().await? {
        data.push(view(&s.store, r).await?);
    }
    Ok(axum::Json(json!({"data": data, "next_cursor": null})))
}

fn split_body(mut v: Value) -> (Value, Option<String>, Option<BTreeMap<String, String>>) {
    let status = v
        .as_object_mut()
        .and_then(|o| o.remove("status"))
        .and_then(|s| s.as_str().map(str::to_string));
    let mapping = v
        .as_object_mut()
        .and_then(|o| o.remove("mapping"))
        .and_then(|m| serde_json::from_value(m).ok());
    if let Some(o) = v.as_object_mut() {
        o.remove("kind");
    }
    (v, status, mapping)
}

async fn create(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(body): Json<Value>,
) -> ApiResult<impl IntoResponse> {
    let (def, status, _) = split_body(body);
    let r = program::create(
        &s.store,
        &def,
        status.as_deref().unwrap_or("draft"),
        micros(s.clock.now()),
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(view(&s.store, r).await?)))
}

async fn read(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "program")?;
    let r = s
        .store
        .program(id)
        .await
        .map_err(|e| not_found(e, "program"))?;
    Ok(axum::Json(view(&s.store, r).await?))
}

async fn replace(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "program")?;
    s.store
        .program(id)
        .await
        .map_err(|e| not_found(e, "program"))?;
    let (def, status, mapping) = split_body(body);
    let now = micros(s.clock.now());
    let (mut r, moved) = program::update(&s.store, id, &def, mapping.as_ref(), now).await?;
    if let Some(st) = status
        && st != r.status
    {
        r = program::set_status(&s.store, id, &st, now).await?;
    }
    let mut v = view(&s.store, r).await?;
    v["moved"] = json!(moved);
    Ok(axum::Json(v))
}

async fn remove(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "program")?;
    s.store
        .delete_program(id)
        .await
        .map_err(|e| not_found(e, "program"))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn version(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path((id, v)): Path<(String, i64)>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "program")?;
    let (def, mapping) = s
        .store
        .program_version(id, v)
        .await
        .map_err(|e| not_found(e, "program version"))?;
    Ok(axum::Json(
        json!({"program_id": id, "version": v, "definition": def, "mapping": mapping}),
    ))
}

async fn set_status(s: &AppState, id: &str, status: &str) -> ApiResult<Value> {
    let id = parse_id(id, "program")?;
    let r = program::set_status(&s.store, id, status, micros(s.clock.now()))
        .await
        .map_err(|e| match e {
            kizuna_engine::EngineError::Store(kizuna_store::StoreError::NotFound) => {
                ApiError::not_found("program")
            }
            other => other.into(),
        })?;
    view(&s.store, r).await
}

async fn pause(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(set_status(&s, &id, "paused").await?))
}

async fn resume(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(set_status(&s, &id, "active").await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollInput {
    contact_id: Uuid,
    #[serde(default)]
    by_sales: bool,
}

fn runner(s: &AppState) -> ProgramRunner {
    ProgramRunner::new(s.store.clone(), s.clock.clone(), RunnerConfig::default())
}

async fn enroll(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(i): Json<EnrollInput>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "program")?;
    let r = s
        .store
        .program(id)
        .await
        .map_err(|e| not_found(e, "program"))?;
    if r.status != "active" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "program_not_active",
            format!("program {:?} is {}; resume it first", r.name, r.status),
        )
        .field("status"));
    }
    match runner(&s).enroll(id, i.contact_id, i.by_sales).await? {
        Some(e) => Ok((
            StatusCode::CREATED,
            axum::Json(serde_json::to_value(s.store.enrollment(e).await?).unwrap_or_default()),
        )),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_enrolled",
            "the contact is already in the program, the re-entry policy or the audience keeps it out",
        )
        .field("contact_id")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollmentParams {
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn enrollments(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<EnrollmentParams>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "program")?;
    s.store
        .program(id)
        .await
        .map_err(|e| not_found(e, "program"))?;
    let limit = clamp_limit(p.limit);
    let after = match &p.cursor {
        Some(c) => Some(c.parse::<Uuid>().map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_cursor",
                "a cursor from next_cursor",
            )
            .field("cursor")
        })?),
        None => None,
    };
    let rows = s
        .store
        .program_enrollments(id, p.status.as_deref(), after, limit + 1)
        .await?;
    let more = rows.len() > limit as usize;
    let data: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let next = if more {
        data.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(axum::Json(json!({"data": data, "next_cursor": next})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimInput {
    #[serde(default)]
    definition: Option<Value>,
    #[serde(default)]
    days: Option<u32>,
    #[serde(default)]
    contacts: Option<Value>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    assume: Option<Value>,
}

/// `assume: {"opened", "clicked", "responded"}`, each a share in 0‥1.
fn responses(v: &Option<Value>) -> ApiResult<Responses> {
    let mut r = Responses::default();
    let Some(v) = v.as_ref().filter(|v| !v.is_null()) else {
        return Ok(r);
    };
    let Some(o) = v.as_object() else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "an object of response rates: opened, clicked, responded",
        )
        .field("assume"));
    };
    for (k, x) in o {
        let rate = x.as_f64().filter(|f| (0.0..=1.0).contains(f));
        let slot = match k.as_str() {
            "opened" => &mut r.opened,
            "clicked" => &mut r.clicked,
            "responded" => &mut r.responded,
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_field",
                    "one of opened, clicked, responded",
                )
                .field(format!("assume.{k}")));
            }
        };
        *slot = rate.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_value",
                "a share between 0 and 1",
            )
            .field(format!("assume.{k}"))
        })?;
    }
    Ok(r)
}

async fn run_sim(
    s: &AppState,
    p: &kizuna_core::program::Program,
    i: &SimInput,
) -> ApiResult<Value> {
    let days = i.days.unwrap_or(56);
    if days == 0 || days > 3660 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "1 to 3660 days",
        )
        .field("days"));
    }
    let (contacts, everyone) = match &i.contacts {
        None | Some(Value::Null) => (None, false),
        Some(Value::String(x)) if x == "everyone" => (None, true),
        Some(Value::String(x)) if x == "triggers" => (None, false),
        Some(v @ Value::Array(_)) => (
            Some(serde_json::from_value::<Vec<Uuid>>(v.clone()).map_err(|_| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_value",
                    "a list of contact ids",
                )
                .field("contacts")
            })?),
            false,
        ),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_value",
                "\"triggers\" (default), \"everyone\" or a list of contact ids",
            )
            .field("contacts"));
        }
    };
    let c = runner(s).compiled().await?;
    let r = simulate(
        &s.store,
        &c,
        p,
        micros(s.clock.now()),
        &SimOptions {
            days,
            contacts,
            everyone,
            limit: i.limit.unwrap_or(100_000).min(1_000_000),
            responses: responses(&i.assume)?,
        },
    )
    .await?;
    Ok(serde_json::to_value(r).unwrap_or_default())
}

async fn simulate_saved(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(i): Json<SimInput>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "program")?;
    let r = s
        .store
        .program(id)
        .await
        .map_err(|e| not_found(e, "program"))?;
    let def = match &i.definition {
        Some(d) => d.clone(),
        None => s.store.program_version(id, r.version).await?.0,
    };
    let p = program::check(&s.store, &def, &[]).await?;
    Ok(axum::Json(run_sim(&s, &p, &i).await?))
}

async fn simulate_unsaved(
    _: Auth<Read>,
    State(s): State<AppState>,
    Json(i): Json<SimInput>,
) -> ApiResult<impl IntoResponse> {
    let Some(def) = &i.definition else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "required",
            "the program definition to simulate",
        )
        .field("definition"));
    };
    let p = program::check(&s.store, def, &[])
        .await
        .map_err(|e| match e {
            kizuna_engine::EngineError::Invalid(mut v) => {
                for x in &mut v.0 {
                    x.field = format!("definition.{}", x.field);
                }
                ApiError::invalid(v)
            }
            other => other.into(),
        })?;
    Ok(axum::Json(run_sim(&s, &p, &i).await?))
}

async fn report(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "program")?;
    s.store
        .program(id)
        .await
        .map_err(|e| not_found(e, "program"))?;
    Ok(axum::Json(program::report(&s.store, id).await?))
}

async fn shipped(_: Auth<Read>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(
        json!({"data": templates::all(), "next_cursor": null}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InstallInput {
    #[serde(default)]
    status: Option<String>,
}

async fn install(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<impl IntoResponse> {
    let i: InstallInput = if body.iter().all(u8::is_ascii_whitespace) {
        InstallInput::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let ids = templates::install(
        &s.store,
        &key,
        i.status.as_deref().unwrap_or("draft"),
        micros(s.clock.now()),
    )
    .await?;
    let mut data = Vec::new();
    for id in ids {
        data.push(view(&s.store, s.store.program(id).await?).await?);
    }
    Ok((StatusCode::CREATED, axum::Json(json!({"data": data}))))
}
