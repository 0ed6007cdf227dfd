//! Definitions as files (`kizuna apply FILE…`, and the API's create/replace): segments, scoring
//! models and the handoff policy, created or updated by name, all checked before anything is
//! written.
//!
//! A file holds one definition object or an array of them, each with a `kind`:
//! `{"kind": "segment", "name", "description"?, "filter"}`, `{"kind": "scoring_model", "name", …}`
//! (the model's documented shape), `{"kind": "handoff_policy", …}` (the policy's shape).

use crate::EngineError;
use crate::definitions::{Names, check_segment_with, compile_policy_json};
use kizuna_core::clock::Clock;
use kizuna_core::error::{ValidationError, ValidationErrors};
use kizuna_core::scoring;
use kizuna_store::Store;
use kizuna_store::definitions::{DefinitionKind, create_in, replace_in};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// What happened to one definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// `segment`, `scoring_model` or `handoff_policy`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// `created`, `updated` or `unchanged`.
    pub outcome: &'static str,
    /// Id (none for the policy).
    pub id: Option<Uuid>,
}

/// One problem in one document.
#[derive(Debug, Clone, PartialEq)]
pub struct DocError {
    /// Which document (file name and position).
    pub source: String,
    /// What is wrong, with paths.
    pub errors: ValidationErrors,
}

/// Splits a file's JSON into definition documents: (source label, document).
pub fn documents(source: &str, v: Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, d)| (format!("{source}[{i}]"), d))
            .collect(),
        other => vec![(source.to_string(), other)],
    }
}

fn strip_kind(d: &Value) -> Value {
    let mut d = d.clone();
    if let Value::Object(m) = &mut d {
        m.remove("kind");
    }
    d
}

/// Checks every document, then writes them all in one transaction (or nothing).
pub async fn apply(
    store: &Store,
    clock: &dyn Clock,
    docs: Vec<(String, Value)>,
) -> Result<Vec<Applied>, Vec<DocError>> {
    let (programs, docs): (Vec<_>, Vec<_>) = docs
        .into_iter()
        .partition(|(_, d)| d.get("kind").and_then(Value::as_str) == Some("program"));
    let r = if docs.is_empty() {
        Ok(vec![])
    } else {
        apply_inner(store, clock, docs).await
    };
    let r = match r {
        Ok(mut done) if !programs.is_empty() => {
            match apply_programs(store, clock, programs).await {
                Ok(p) => {
                    done.extend(p);
                    Ok(done)
                }
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    match r {
        Ok(r) => Ok(r),
        Err(Err(e)) => Err(vec![DocError {
            source: "store".into(),
            errors: ValidationError::new("", "store_error", e.to_string()).into(),
        }]),
        Err(Ok(errs)) => Err(errs),
    }
}

type Inner = Result<Vec<Applied>, Result<Vec<DocError>, EngineError>>;

async fn apply_inner(store: &Store, clock: &dyn Clock, docs: Vec<(String, Value)>) -> Inner {
    let mut names = Names::load(store).await.map_err(Err)?;
    let mut errors = Vec::new();
    let kind_of = |d: &Value| d.get("kind").and_then(Value::as_str).map(str::to_string);
    // Names first, so definitions applied together may refer to each other.
    let mut planned: Vec<(String, String, Value, Option<Uuid>, Uuid)> = Vec::new();
    for (src, d) in &docs {
        let kind = kind_of(d).unwrap_or_default();
        let name = d
            .get("name")
            .and_then(Value::as_str)
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let dk = match kind.as_str() {
            "segment" => Some(DefinitionKind::Segment),
            "scoring_model" => Some(DefinitionKind::ScoringModel),
            "handoff_policy" => None,
            _ => {
                errors.push(DocError {
                    source: src.clone(),
                    errors: ValidationError::new(
                        "kind",
                        "invalid_kind",
                        "kind is segment, scoring_model, handoff_policy or program",
                    )
                    .into(),
                });
                continue;
            }
        };
        let existing = match dk {
            Some(k) => store
                .definition_by_name(k, &name)
                .await
                .map_err(|e| Err(e.into()))?
                .map(|d| d.id),
            None => None,
        };
        let id = existing.unwrap_or_else(Uuid::now_v7);
        match dk {
            Some(DefinitionKind::Segment) => names.add_segment(&name, id),
            Some(DefinitionKind::ScoringModel) => names.add_model(&name, id),
            None => {}
        }
        planned.push((src.clone(), kind, d.clone(), existing, id));
    }
    let users = store.users().await.map_err(|e| Err(e.into()))?;
    for (src, kind, d, existing, id) in &planned {
        let res: Result<(), ValidationErrors> = match kind.as_str() {
            "segment" => {
                let name = d.get("name").and_then(Value::as_str).unwrap_or("");
                let mut errs = ValidationErrors::default();
                if let Value::Object(m) = d
                    && let Some(k) = m
                        .keys()
                        .find(|k| !["kind", "name", "description", "filter"].contains(&k.as_str()))
                {
                    errs.push(ValidationError::new(
                        k.clone(),
                        "unknown_key",
                        format!("unknown key {k:?}"),
                    ));
                }
                let filter = d.get("filter").cloned().unwrap_or(Value::Null);
                match check_segment_with(store, &names, name, &filter, existing.or(Some(*id))).await
                {
                    Ok(_) => {}
                    Err(EngineError::Invalid(e)) => errs.0.extend(e.0),
                    Err(e) => return Err(Err(e)),
                }
                errs.into_result(())
            }
            "scoring_model" => scoring::compile(&strip_kind(d), *id, &names, "").map(|_| ()),
            _ => compile_policy_json(&strip_kind(d), &names, &users).map(|_| ()),
        };
        if let Err(e) = res {
            errors.push(DocError {
                source: src.clone(),
                errors: e,
            });
        }
    }
    if !errors.is_empty() {
        return Err(Ok(errors));
    }
    let now = clock.now();
    let mut out = Vec::new();
    let mut tx = store.db().begin().await.map_err(|e| Err(e.into()))?;
    for (_, kind, d, existing, id) in planned {
        let name = d
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string();
        let (dk, body, description) = match kind.as_str() {
            "segment" => (
                DefinitionKind::Segment,
                d.get("filter").cloned().unwrap_or(Value::Null),
                d.get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ),
            "scoring_model" => (
                DefinitionKind::ScoringModel,
                strip_kind(&d),
                d.get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ),
            _ => {
                kizuna_store::engine_state::set_setting(
                    &mut tx,
                    crate::definitions::POLICY_SETTING,
                    &strip_kind(&d).to_string(),
                    now.timestamp_micros(),
                )
                .await
                .map_err(|e| Err(e.into()))?;
                kizuna_store::engine_state::bump_definitions(&mut tx, now.timestamp_micros())
                    .await
                    .map_err(|e| Err(e.into()))?;
                out.push(Applied {
                    kind,
                    name: "handoff policy".into(),
                    outcome: "updated",
                    id: None,
                });
                continue;
            }
        };
        let outcome = match existing {
            None => {
                create_in(&mut tx, dk, id, &name, description.as_deref(), &body, now)
                    .await
                    .map_err(|e| Err(e.into()))?;
                "created"
            }
            Some(id) => {
                let cur = store.definition(dk, id).await.map_err(|e| Err(e.into()))?;
                if cur.definition == body && cur.description == description {
                    "unchanged"
                } else {
                    replace_in(&mut tx, dk, id, &name, description.as_deref(), &body, now)
                        .await
                        .map_err(|e| Err(e.into()))?;
                    "updated"
                }
            }
        };
        out.push(Applied {
            kind,
            name,
            outcome,
            id: Some(id),
        });
    }
    tx.commit().await.map_err(|e| Err(e.into()))?;
    Ok(out)
}

/// Programs (after the other definitions, which they may refer to): every program is checked
/// first — with the names of the programs applied together — then created (status from the
/// file's `status`, default `draft`) or, when the definition changed, published as a new
/// version (with the file's `mapping`, if any).
async fn apply_programs(store: &Store, clock: &dyn Clock, docs: Vec<(String, Value)>) -> Inner {
    let names: Vec<String> = docs
        .iter()
        .filter_map(|(_, d)| d.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    let mut errors = Vec::new();
    let mut planned = Vec::new();
    for (src, d) in docs {
        let mut def = d.clone();
        let o = def.as_object_mut().expect("an object with a kind");
        o.remove("kind");
        let status = o
            .remove("status")
            .and_then(|s| s.as_str().map(str::to_string))
            .unwrap_or_else(|| "draft".into());
        let mapping: Option<std::collections::BTreeMap<String, String>> = o
            .remove("mapping")
            .and_then(|m| serde_json::from_value(m).ok());
        match crate::program::check(store, &def, &names).await {
            Ok(_) => planned.push((def, status, mapping)),
            Err(EngineError::Invalid(e)) => errors.push(DocError {
                source: src,
                errors: e,
            }),
            Err(e) => return Err(Err(e)),
        }
    }
    if !errors.is_empty() {
        return Err(Ok(errors));
    }
    let now = clock.now().timestamp_micros();
    let mut out = Vec::new();
    for (def, status, mapping) in planned {
        let name = def["name"].as_str().unwrap_or_default().trim().to_string();
        let existing = store
            .program_by_name(&name)
            .await
            .map_err(|e| Err(e.into()))?;
        let (id, outcome) = match existing {
            None => (
                crate::program::create(store, &def, &status, now)
                    .await
                    .map_err(Err)?
                    .id,
                "created",
            ),
            Some(row) => {
                let (cur, _) = store
                    .program_version(row.id, row.version)
                    .await
                    .map_err(|e| Err(e.into()))?;
                let mut outcome = "unchanged";
                if cur != def {
                    crate::program::update(store, row.id, &def, mapping.as_ref(), now)
                        .await
                        .map_err(Err)?;
                    outcome = "updated";
                }
                if row.status != status {
                    crate::program::set_status(store, row.id, &status, now)
                        .await
                        .map_err(Err)?;
                    outcome = "updated";
                }
                (row.id, outcome)
            }
        };
        out.push(Applied {
            kind: "program".into(),
            name,
            outcome,
            id: Some(id),
        });
    }
    Ok(out)
}
