//! `/scoring-models`: scoring models (docs/engine.md) — create, read, replace, delete, and
//! what-if: a new or edited model run over the stored history before it is enabled.

use super::contacts::not_found;
use super::parse_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Json, Read, Write};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use kizuna_engine::{definitions, explain};
use kizuna_store::definitions::{Definition, DefinitionKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/scoring-models", get(list).post(create))
        .route("/scoring-models/what-if", post(what_if))
        .route(
            "/scoring-models/{id}",
            get(read).put(replace).delete(remove),
        )
}

#[derive(Serialize)]
struct ModelView {
    id: Uuid,
    name: String,
    description: Option<String>,
    definition: Value,
    version: i64,
    built_version: i64,
    status: String,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    built_at: Option<DateTime<Utc>>,
}

fn view(d: Definition) -> ModelView {
    ModelView {
        id: d.id,
        name: d.name,
        description: d.description,
        definition: d.definition,
        version: d.version,
        built_version: d.built_version,
        status: d.status,
        error: d.error,
        created_at: d.created_at,
        updated_at: d.updated_at,
        built_at: d.built_at,
    }
}

fn body(mut def: Value) -> (Value, String, Option<String>) {
    if let Value::Object(m) = &mut def {
        m.remove("kind");
    }
    let name = kizuna_core::scoring::definition_name(&def).unwrap_or_default();
    let description = def
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_string);
    (def, name, description)
}

async fn list(_: Auth<Read>, State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    let data: Vec<ModelView> = s
        .store
        .definitions(DefinitionKind::ScoringModel)
        .await?
        .into_iter()
        .map(view)
        .collect();
    Ok(axum::Json(json!({"data": data, "next_cursor": null})))
}

async fn create(
    _: Auth<Write>,
    State(s): State<AppState>,
    Json(def): Json<Value>,
) -> ApiResult<impl IntoResponse> {
    let (def, name, description) = body(def);
    definitions::check_model(&s.store, &def, Uuid::nil()).await?;
    let d = s
        .store
        .create_definition(
            DefinitionKind::ScoringModel,
            &name,
            description.as_deref(),
            &def,
            s.clock.now(),
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(view(d))))
}

async fn read(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "scoring model")?;
    let d = s
        .store
        .definition(DefinitionKind::ScoringModel, id)
        .await
        .map_err(|e| not_found(e, "scoring model"))?;
    Ok(axum::Json(view(d)))
}

async fn replace(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(def): Json<Value>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id, "scoring model")?;
    s.store
        .definition(DefinitionKind::ScoringModel, id)
        .await
        .map_err(|e| not_found(e, "scoring model"))?;
    let (def, name, description) = body(def);
    definitions::check_model(&s.store, &def, id).await?;
    let d = s
        .store
        .replace_definition(
            DefinitionKind::ScoringModel,
            id,
            &name,
            description.as_deref(),
            &def,
            s.clock.now(),
        )
        .await?;
    Ok(axum::Json(view(d)))
}

async fn remove(
    _: Auth<Write>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "scoring model")?;
    let defs = definitions::load(&s.store).await?;
    if let Some(r) = defs
        .dependents_of(id, true)
        .first()
        .and_then(|r| defs.segment(*r))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_use",
            format!("segment {:?} reads this model; change it first", r.name),
        )
        .field("id"));
    }
    s.store
        .delete_definition(DefinitionKind::ScoringModel, id, s.clock.now())
        .await
        .map_err(|e| not_found(e, "scoring model"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhatIfInput {
    definition: Value,
    #[serde(default)]
    compare_with: Option<String>,
}

async fn what_if(
    _: Auth<Read>,
    State(s): State<AppState>,
    Json(i): Json<WhatIfInput>,
) -> ApiResult<impl IntoResponse> {
    let (def, _, _) = body(i.definition);
    let r = explain::what_if(&s.store, s.clock.as_ref(), &def, i.compare_with.as_deref())
        .await
        .map_err(|e| match e {
            kizuna_engine::EngineError::Invalid(mut errs) => {
                for er in &mut errs.0 {
                    er.field = if er.field.is_empty() {
                        "definition".into()
                    } else {
                        format!("definition.{}", er.field)
                    };
                }
                ApiError::invalid(errs)
            }
            other => other.into(),
        })?;
    Ok(axum::Json(r))
}
