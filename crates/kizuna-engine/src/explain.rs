//! Why a contact has its score (each rule, event, points and time), how long it spent in each
//! stage, and what-if: a new or edited model run over stored history before it is enabled.

use crate::EngineError;
use crate::definitions::Names;
use crate::pipeline::ENGINE_SOURCE;
use kizuna_core::clock::Clock;
use kizuna_core::company::Company;
use kizuna_core::contact::{Contact, LifecycleStage};
use kizuna_core::lifecycle::{StageChange, StagePeriod, stage_history};
use kizuna_core::scoring::{self, Explanation, Grade, ScoredEvent, ScoringModel};
use kizuna_core::time::{from_micros, micros};
use kizuna_store::Store;
use kizuna_store::definitions::DefinitionKind;
use kizuna_store::log::{LogEvent, LogPosition};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

fn scored(log: &[LogEvent]) -> impl Iterator<Item = ScoredEvent<'_>> {
    log.iter()
        .filter(|e| e.source != ENGINE_SOURCE)
        .map(|e| ScoredEvent {
            id: e.id,
            event_type: &e.event_type,
            properties: &e.properties,
            at: e.occurred_at,
        })
}

/// Explains a model's score for a contact from its log.
pub fn explain_with(
    m: &ScoringModel,
    log: &[LogEvent],
    c: &Contact,
    co: Option<&Company>,
    now: i64,
) -> (Explanation, kizuna_core::scoring::ScoreState) {
    m.explain(scored(log), c, co, now)
}

/// Explanations of a contact's scores: every enabled model, or the one named (name or id).
pub async fn explain_contact(
    store: &Store,
    clock: &dyn Clock,
    contact: Uuid,
    model: Option<&str>,
) -> Result<Vec<Explanation>, EngineError> {
    let c = store.contact(contact).await.map_err(|e| match e {
        kizuna_store::StoreError::NotFound => EngineError::NotFound("contact"),
        e => e.into(),
    })?;
    let co = match c.company_id {
        Some(id) => store.company(id).await.ok(),
        None => None,
    };
    let names = Names::load(store).await?;
    let mut models = Vec::new();
    for d in store.definitions(DefinitionKind::ScoringModel).await? {
        if let Some(want) = model
            && d.name != want
            && d.id.to_string() != want
        {
            continue;
        }
        if let Ok(m) = scoring::compile(&d.definition, d.id, &names, "")
            && (m.enabled || model.is_some())
        {
            models.push(m);
        }
    }
    if model.is_some() && models.is_empty() {
        return Err(EngineError::NotFound("scoring model"));
    }
    let log = store.contact_log(contact, None).await?;
    let now = micros(clock.now());
    Ok(models
        .iter()
        .map(|m| explain_with(m, &log, &c, co.as_ref(), now).0)
        .collect())
}

/// A contact's stage history.
pub async fn stages(
    store: &Store,
    clock: &dyn Clock,
    contact: Uuid,
) -> Result<Vec<StagePeriod>, EngineError> {
    let c = store.contact(contact).await.map_err(|e| match e {
        kizuna_store::StoreError::NotFound => EngineError::NotFound("contact"),
        e => e.into(),
    })?;
    let log = store.contact_log(contact, None).await?;
    let changes: Vec<StageChange> = log
        .iter()
        .filter(|e| e.event_type == "stage.changed")
        .filter_map(|e| {
            let to = e.properties.get("to")?.as_str()?.parse().ok()?;
            Some(StageChange {
                at: from_micros(e.occurred_at),
                from: e
                    .properties
                    .get("from")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok()),
                to,
                cause: e
                    .properties
                    .get("cause")
                    .and_then(Value::as_str)
                    .unwrap_or(&e.source)
                    .to_string(),
            })
        })
        .collect();
    let initial = changes
        .iter()
        .min_by_key(|c| c.at)
        .and_then(|c| c.from)
        .unwrap_or(if changes.is_empty() {
            c.lifecycle_stage
        } else {
            LifecycleStage::Lead
        });
    Ok(stage_history(c.created_at, initial, &changes, clock.now()))
}

/// What a model would do over the stored history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WhatIf {
    /// Model name.
    pub model: String,
    /// Contacts evaluated.
    pub contacts: u64,
    /// Per threshold (and `mql`): how many are at or above it now, how many ever reached it,
    /// and when they first did (by ISO week).
    pub thresholds: BTreeMap<String, ThresholdReport>,
    /// The MQL rule (fit first): contacts meeting it now, ever, and by week first met.
    pub mql: ThresholdReport,
    /// Contacts per grade.
    pub grades: BTreeMap<String, u64>,
    /// Against the current version of the model (when editing one): contacts meeting the MQL
    /// rule now under the stored model, and how many would start or stop meeting it.
    pub compared: Option<Comparison>,
    /// A few contacts that would meet the MQL rule now, with score and grade.
    pub sample: Vec<Value>,
}

/// One threshold in a what-if report.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ThresholdReport {
    /// Value of the threshold.
    pub value: Option<f64>,
    /// At or above it now.
    pub now: u64,
    /// Reached it at some time in the history.
    pub ever: u64,
    /// First reached, by week (`2026-W41` → count).
    pub first_reached_by_week: BTreeMap<String, u64>,
}

/// A what-if compared with the stored model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    /// Meeting the MQL rule now under the stored model.
    pub current_mql: u64,
    /// Would start meeting it.
    pub gained: u64,
    /// Would stop meeting it.
    pub lost: u64,
}

fn week(t: i64) -> String {
    use chrono::Datelike;
    let w = from_micros(t).iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

/// Runs a model definition over the stored history of every contact. `compare` (a stored
/// model's id or name) reports the difference with it.
pub async fn what_if(
    store: &Store,
    clock: &dyn Clock,
    def: &Value,
    compare: Option<&str>,
) -> Result<WhatIf, EngineError> {
    let names = Names::load(store).await?;
    let model = scoring::compile(def, Uuid::nil(), &names, "").map_err(EngineError::Invalid)?;
    let current = match compare {
        None => None,
        Some(r) => {
            let d = match r.parse::<Uuid>() {
                Ok(id) => store
                    .definition(DefinitionKind::ScoringModel, id)
                    .await
                    .ok(),
                Err(_) => {
                    store
                        .definition_by_name(DefinitionKind::ScoringModel, r)
                        .await?
                }
            }
            .ok_or(EngineError::NotFound("scoring model"))?;
            Some(scoring::compile(&d.definition, d.id, &names, "").map_err(EngineError::Invalid)?)
        }
    };
    let now = micros(clock.now());
    // Every scored event, grouped by contact, in log order.
    let mut types: Option<Vec<String>> = Some(Vec::new());
    for m in std::iter::once(&model).chain(current.iter()) {
        for r in &m.rules {
            match (r.matcher.exact_types(), types.as_mut()) {
                (Some(t), Some(all)) => all.extend(t),
                _ => types = None,
            }
        }
    }
    let mut per_contact: HashMap<Uuid, Vec<LogEvent>> = HashMap::new();
    if types.as_ref().is_none_or(|t| !t.is_empty()) {
        let mut pos = LogPosition {
            tx: i64::MIN,
            seq: i64::MIN,
        };
        loop {
            let batch = store.scan_log(pos, types.as_deref(), 20_000).await?;
            let Some(last) = batch.last().map(|e| e.position) else {
                break;
            };
            for e in batch {
                if e.source != ENGINE_SOURCE {
                    per_contact.entry(e.contact_id).or_default().push(e);
                }
            }
            pos = last;
        }
    }
    let mut report = WhatIf {
        model: model.name.clone(),
        contacts: 0,
        thresholds: model
            .thresholds
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    ThresholdReport {
                        value: Some(*v),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        mql: ThresholdReport {
            value: model.mql.map(|m| m.score),
            ..Default::default()
        },
        grades: Grade::ALL.iter().map(|g| (g.to_string(), 0)).collect(),
        compared: current.as_ref().map(|_| Comparison {
            current_mql: 0,
            gained: 0,
            lost: 0,
        }),
        sample: Vec::new(),
    };
    let empty = Vec::new();
    let mut after = None;
    loop {
        let ids = store.contact_ids_after(after, 2000).await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        after = Some(last);
        let contacts = store.contacts_by_ids(&ids).await?;
        let mut co_ids: Vec<Uuid> = contacts.iter().filter_map(|c| c.company_id).collect();
        co_ids.sort();
        co_ids.dedup();
        let companies: HashMap<Uuid, Company> = store
            .companies_by_ids(&co_ids)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        for c in &contacts {
            let co = c.company_id.and_then(|id| companies.get(&id));
            let log = per_contact.get(&c.id).unwrap_or(&empty);
            let r = model.replay(scored(log), c, co, now);
            report.contacts += 1;
            *report.grades.entry(r.state.grade.to_string()).or_default() += 1;
            let reading = model.reading(&r.state, now);
            let total = reading.value(scoring::ScorePart::Total);
            for (name, t) in report.thresholds.iter_mut() {
                if t.value.is_some_and(|v| total >= v) {
                    t.now += 1;
                }
                if let Some(at) = r.first_reached.get(name) {
                    t.ever += 1;
                    *t.first_reached_by_week.entry(week(*at)).or_default() += 1;
                }
            }
            let meets = model.qualifies(&reading);
            if meets {
                report.mql.now += 1;
                if report.sample.len() < 10 {
                    report
                        .sample
                        .push(serde_json::json!({"contact_id": c.id, "email": c.email,
                        "score": scoring::round2(total), "grade": reading.grade}));
                }
            }
            if let Some(at) = r.first_qualified {
                report.mql.ever += 1;
                *report
                    .mql
                    .first_reached_by_week
                    .entry(week(at))
                    .or_default() += 1;
            }
            if let (Some(cur), Some(cmp)) = (&current, report.compared.as_mut()) {
                let rc = cur.replay(scored(log), c, co, now);
                let was = cur.qualifies(&cur.reading(&rc.state, now));
                cmp.current_mql += was as u64;
                cmp.gained += (meets && !was) as u64;
                cmp.lost += (!meets && was) as u64;
            }
        }
    }
    Ok(report)
}
