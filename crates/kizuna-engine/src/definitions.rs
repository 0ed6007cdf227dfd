//! Definitions as the engine uses them: segments and scoring models compiled against the
//! current lists, fields and each other; the behaviour features they read, indexed by event
//! type; and the handoff policy. Also the checks the API and `kizuna apply` run before saving.

use crate::EngineError;
use kizuna_core::error::{ValidationError, ValidationErrors};
use kizuna_core::field::FieldType;
use kizuna_core::filter::event::{FeatureDef, TypePattern};
use kizuna_core::filter::{self, Filter, Resolver};
use kizuna_core::lifecycle::{self, HandoffPolicy};
use kizuna_core::scoring::{self, ScoringModel};
use kizuna_store::Store;
use kizuna_store::definitions::{Definition, DefinitionKind};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use uuid::Uuid;

/// The setting that holds the handoff policy (JSON).
pub const POLICY_SETTING: &str = "handoff_policy";

/// A compiled segment.
#[derive(Debug, Clone)]
pub struct SegmentDef {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Version of the definition.
    pub version: i64,
    /// Version the members are current for.
    pub built_version: i64,
    /// The filter.
    pub filter: Filter,
    /// Positions of its features in [`Definitions::features`].
    pub feature_idx: Vec<usize>,
}

/// A compiled, enabled scoring model.
#[derive(Debug, Clone)]
pub struct ModelDef {
    /// The model.
    pub model: ScoringModel,
    /// Version of the definition.
    pub version: i64,
    /// Version the scores are current for.
    pub built_version: i64,
}

/// Everything the engine evaluates, compiled.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    /// The store's definitions version this was loaded at.
    pub version: i64,
    /// Segments that compiled, dependencies first.
    pub segments: Vec<SegmentDef>,
    /// Enabled scoring models that compiled.
    pub models: Vec<ModelDef>,
    /// Definitions that no longer compile (kind, id, version, reason).
    pub broken: Vec<(DefinitionKind, Uuid, i64, String)>,
    /// Every behaviour feature a segment reads.
    pub features: Vec<FeatureDef>,
    by_type: HashMap<String, Vec<usize>>,
    patterned: Vec<usize>,
    /// The handoff policy.
    pub policy: HandoffPolicy,
    /// Round-robin pool, in order.
    pub sales_pool: Vec<Uuid>,
    /// Whether any segment reads list membership.
    pub uses_lists: bool,
}

impl Definitions {
    /// Features whose type patterns can match this event type.
    pub fn features_for<'a>(&'a self, event_type: &str) -> impl Iterator<Item = usize> + 'a {
        let exact = self
            .by_type
            .get(&event_type.to_ascii_lowercase())
            .map(|v| v.as_slice())
            .unwrap_or(&[]);
        exact.iter().chain(self.patterned.iter()).copied()
    }

    /// Whether an event of this type can change anything the engine keeps: the types it
    /// handles itself (profile, consent, lists, stages, handoffs) and those a behaviour
    /// feature or a scoring rule reads. Other events cost a log read and nothing more.
    pub fn reads(&self, event_type: &str) -> bool {
        const OWN: [&str; 5] = ["contact.", "company.", "list.", "consent.", "handoff."];
        OWN.iter().any(|p| event_type.starts_with(p))
            || matches!(
                event_type,
                "stage.changed" | "temperature.changed" | "email.unsubscribed"
            )
            || self.features_for(event_type).next().is_some()
            || self.models.iter().any(|m| {
                m.model
                    .rules
                    .iter()
                    .any(|r| r.matcher.type_matches(event_type))
            })
    }

    /// A model by id.
    pub fn model(&self, id: Uuid) -> Option<&ScoringModel> {
        self.models
            .iter()
            .find(|m| m.model.id == id)
            .map(|m| &m.model)
    }

    /// A segment by id.
    pub fn segment(&self, id: Uuid) -> Option<&SegmentDef> {
        self.segments.iter().find(|s| s.id == id)
    }

    /// Segments and models whose stored results are behind their definition.
    pub fn pending_builds(&self) -> Vec<(DefinitionKind, Uuid, i64)> {
        let mut v: Vec<_> = self
            .models
            .iter()
            .filter(|m| m.built_version != m.version)
            .map(|m| (DefinitionKind::ScoringModel, m.model.id, m.version))
            .collect();
        v.extend(
            self.segments
                .iter()
                .filter(|s| s.built_version != s.version)
                .map(|s| (DefinitionKind::Segment, s.id, s.version)),
        );
        v
    }

    /// Segments that read `id` (directly or through other segments), dependencies first.
    pub fn dependents_of(&self, id: Uuid, model: bool) -> Vec<Uuid> {
        let mut hit: HashSet<Uuid> = HashSet::new();
        for s in &self.segments {
            let d = &s.filter.deps;
            let direct = if model {
                d.models.contains(&id)
            } else {
                d.segments.contains(&id)
            };
            if direct || d.segments.iter().any(|x| hit.contains(x)) {
                hit.insert(s.id);
            }
        }
        self.segments
            .iter()
            .filter(|s| hit.contains(&s.id))
            .map(|s| s.id)
            .collect()
    }
}

/// Names → ids of what definitions refer to, as the store has them now.
#[derive(Debug, Clone, Default)]
pub struct Names {
    lists: HashMap<String, Uuid>,
    segments: HashMap<String, Uuid>,
    models: HashMap<String, Uuid>,
    fields: HashMap<String, FieldType>,
}

fn by_name_or_id(map: &HashMap<String, Uuid>, r: &str) -> Option<Uuid> {
    map.get(r).copied().or_else(|| {
        r.parse::<Uuid>()
            .ok()
            .filter(|id| map.values().any(|v| v == id))
    })
}

impl Resolver for Names {
    fn list(&self, r: &str) -> Option<Uuid> {
        by_name_or_id(&self.lists, r)
    }
    fn segment(&self, r: &str) -> Option<Uuid> {
        by_name_or_id(&self.segments, r)
    }
    fn scoring_model(&self, r: &str) -> Option<Uuid> {
        by_name_or_id(&self.models, r)
    }
    fn custom_field(&self, name: &str) -> Option<FieldType> {
        self.fields.get(name).copied()
    }
}

impl Names {
    /// Loads the names from the store.
    pub async fn load(store: &Store) -> Result<Names, EngineError> {
        let mut n = Names::default();
        for l in store.lists().await? {
            n.lists.insert(l.name, l.id);
        }
        for s in store.definitions(DefinitionKind::Segment).await? {
            n.segments.insert(s.name, s.id);
        }
        for m in store.definitions(DefinitionKind::ScoringModel).await? {
            n.models.insert(m.name, m.id);
        }
        for f in store.fields().await? {
            n.fields.insert(f.name, f.field_type);
        }
        Ok(n)
    }

    /// Adds a segment name (for definitions applied together).
    pub fn add_segment(&mut self, name: &str, id: Uuid) {
        self.segments.insert(name.to_string(), id);
    }

    /// Adds a model name.
    pub fn add_model(&mut self, name: &str, id: Uuid) {
        self.models.insert(name.to_string(), id);
    }
}

/// Orders segments so that each comes after the segments it reads; returns the ids in a cycle
/// when there is one.
fn topo(segs: &[(Uuid, BTreeSet<Uuid>)]) -> Result<Vec<Uuid>, Vec<Uuid>> {
    let ids: HashSet<Uuid> = segs.iter().map(|s| s.0).collect();
    let mut done: Vec<Uuid> = Vec::new();
    let mut placed: HashSet<Uuid> = HashSet::new();
    let mut left: Vec<&(Uuid, BTreeSet<Uuid>)> = segs.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|(id, deps)| {
            if deps.iter().all(|d| placed.contains(d) || !ids.contains(d)) {
                placed.insert(*id);
                done.push(*id);
                false
            } else {
                true
            }
        });
        if left.len() == before {
            return Err(left.iter().map(|s| s.0).collect());
        }
    }
    Ok(done)
}

/// The handoff policy from its setting (default when unset).
pub fn compile_policy_json(
    v: &Value,
    names: &Names,
    users: &[kizuna_store::users::User],
) -> Result<HandoffPolicy, ValidationErrors> {
    let lookup = |r: &str| -> Option<Uuid> {
        users
            .iter()
            .find(|u| u.email.eq_ignore_ascii_case(r) || u.id.to_string() == r)
            .map(|u| u.id)
    };
    lifecycle::compile_policy(v, names, &lookup)
}

/// Whether a definition that does not compile still needs to be marked failed.
fn unmarked(d: &Definition) -> bool {
    d.built_version != d.version || d.status != "failed"
}

/// Loads and compiles every definition.
pub async fn load(store: &Store) -> Result<Definitions, EngineError> {
    let version = store.definitions_version().await?;
    let names = Names::load(store).await?;
    let mut d = Definitions {
        version,
        ..Default::default()
    };
    for m in store.definitions(DefinitionKind::ScoringModel).await? {
        match scoring::compile(&m.definition, m.id, &names, "") {
            Ok(model) if model.enabled => d.models.push(ModelDef {
                model,
                version: m.version,
                built_version: m.built_version,
            }),
            Ok(_) => {}
            Err(e) if unmarked(&m) => {
                d.broken
                    .push((DefinitionKind::ScoringModel, m.id, m.version, e.to_string()))
            }
            Err(_) => {}
        }
    }
    let mut compiled: HashMap<Uuid, (Definition, Filter)> = HashMap::new();
    for s in store.definitions(DefinitionKind::Segment).await? {
        match filter::compile(&s.definition, &names, "filter") {
            Ok(f) => {
                compiled.insert(s.id, (s, f));
            }
            Err(e) if unmarked(&s) => {
                d.broken
                    .push((DefinitionKind::Segment, s.id, s.version, e.to_string()))
            }
            Err(_) => {}
        }
    }
    let graph: Vec<(Uuid, BTreeSet<Uuid>)> = compiled
        .iter()
        .map(|(id, (_, f))| (*id, f.deps.segments.clone()))
        .collect();
    let order = match topo(&graph) {
        Ok(o) => o,
        Err(cycle) => {
            for id in &cycle {
                let (s, _) = &compiled[id];
                if !unmarked(s) {
                    continue;
                }
                d.broken.push((
                    DefinitionKind::Segment,
                    *id,
                    s.version,
                    "segments refer to each other in a cycle".into(),
                ));
            }
            let cyc: HashSet<Uuid> = cycle.into_iter().collect();
            let rest: Vec<_> = graph.into_iter().filter(|g| !cyc.contains(&g.0)).collect();
            topo(&rest).unwrap_or_default()
        }
    };
    // Conditions with the same matcher share one feature, keeping as many recent times as the
    // deepest of them needs.
    let mut deepest: HashMap<String, usize> = HashMap::new();
    for (_, f) in compiled.values() {
        for fd in &f.features {
            let base = FeatureDef::new(fd.matcher.clone(), 0).key;
            let k = deepest.entry(base).or_default();
            *k = (*k).max(fd.keep);
        }
    }
    let share = |fd: &FeatureDef| {
        let base = FeatureDef::new(fd.matcher.clone(), 0).key;
        FeatureDef::new(
            fd.matcher.clone(),
            deepest.get(&base).copied().unwrap_or(fd.keep),
        )
    };
    let mut feature_pos: HashMap<String, usize> = HashMap::new();
    for id in order {
        let Some((s, mut f)) = compiled.remove(&id) else {
            continue;
        };
        f.remap_features(&share);
        let mut idx = Vec::new();
        for fd in &f.features {
            let i = *feature_pos.entry(fd.key.clone()).or_insert_with(|| {
                d.features.push(fd.clone());
                d.features.len() - 1
            });
            idx.push(i);
        }
        d.uses_lists |= !f.deps.lists.is_empty();
        d.segments.push(SegmentDef {
            id: s.id,
            name: s.name,
            version: s.version,
            built_version: s.built_version,
            filter: f,
            feature_idx: idx,
        });
    }
    for (i, f) in d.features.iter().enumerate() {
        let mut exact = true;
        for t in &f.matcher.types {
            match t {
                TypePattern::Exact(x) => d.by_type.entry(x.clone()).or_default().push(i),
                _ => exact = false,
            }
        }
        if !exact {
            d.patterned.push(i);
        }
    }
    for v in d.by_type.values_mut() {
        v.dedup();
    }
    let users = store.users().await?;
    if let Some(p) = store.setting(POLICY_SETTING).await? {
        let v: Value = serde_json::from_str(&p).unwrap_or(Value::Null);
        match compile_policy_json(&v, &names, &users) {
            Ok(p) => d.policy = p,
            Err(e) => {
                tracing::error!(error = %e, "the stored handoff policy no longer compiles; using the default")
            }
        }
    }
    d.sales_pool = if d.policy.pool.is_empty() {
        let mut sales: Vec<_> = users.into_iter().filter(|u| u.role == "sales").collect();
        sales.sort_by_key(|u| u.id);
        sales.into_iter().map(|u| u.id).collect()
    } else {
        d.policy.pool.clone()
    };
    Ok(d)
}

/// Checks a segment before it is saved: the filter compiles against the current names, and it
/// does not read itself through other segments.
pub async fn check_segment(
    store: &Store,
    name: &str,
    filter_def: &Value,
    self_id: Option<Uuid>,
) -> Result<Filter, EngineError> {
    let names = Names::load(store).await?;
    check_segment_with(store, &names, name, filter_def, self_id).await
}

/// [`check_segment`] with given names (for definitions applied together).
pub async fn check_segment_with(
    store: &Store,
    names: &Names,
    name: &str,
    filter_def: &Value,
    self_id: Option<Uuid>,
) -> Result<Filter, EngineError> {
    let mut errs = ValidationErrors::default();
    if name.trim().is_empty() || name.trim().chars().count() > 200 {
        errs.push(ValidationError::new(
            "name",
            "invalid_name",
            "a name must be 1 to 200 characters",
        ));
    }
    let f = match filter::compile(filter_def, names, "filter") {
        Ok(f) => f,
        Err(e) => {
            errs.0.extend(e.0);
            return Err(EngineError::Invalid(errs));
        }
    };
    if let Some(me) = self_id {
        // Walk the segments this one reads; reaching itself is a cycle.
        let mut stack: Vec<Uuid> = f.deps.segments.iter().copied().collect();
        let mut seen = HashSet::new();
        while let Some(s) = stack.pop() {
            if s == me {
                errs.push(ValidationError::new(
                    "filter",
                    "segment_cycle",
                    "this segment would read itself through the segments it refers to",
                ));
                break;
            }
            if !seen.insert(s) {
                continue;
            }
            if let Ok(def) = store.definition(DefinitionKind::Segment, s).await
                && let Ok(g) = filter::compile(&def.definition, names, "")
            {
                stack.extend(g.deps.segments.iter().copied());
            }
        }
    }
    errs.into_result(f).map_err(EngineError::Invalid)
}

/// Checks a scoring model definition.
pub async fn check_model(
    store: &Store,
    def: &Value,
    id: Uuid,
) -> Result<ScoringModel, EngineError> {
    let names = Names::load(store).await?;
    scoring::compile(def, id, &names, "").map_err(EngineError::Invalid)
}

/// Checks a handoff policy.
pub async fn check_policy(store: &Store, def: &Value) -> Result<HandoffPolicy, EngineError> {
    let names = Names::load(store).await?;
    let users = store.users().await?;
    compile_policy_json(def, &names, &users).map_err(EngineError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topo_orders_dependencies_first_and_finds_cycles() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let order = topo(&[
            (a, [b].into_iter().collect()),
            (b, [c].into_iter().collect()),
            (c, BTreeSet::new()),
        ])
        .unwrap();
        assert_eq!(order, vec![c, b, a]);
        let cyc = topo(&[
            (a, [b].into_iter().collect()),
            (b, [a].into_iter().collect()),
            (c, BTreeSet::new()),
        ])
        .unwrap_err();
        assert_eq!(cyc.len(), 2);
    }
}
