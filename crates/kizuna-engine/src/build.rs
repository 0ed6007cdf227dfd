//! The bulk path: building a new or edited segment or scoring model at once (ARCHITECTURE.md:
//! "full recomputation exists for new or edited definitions and is a fast bulk path"), and
//! previewing a segment without saving it.
//!
//! A segment build (1) backfills behaviour features no definition read before, from the log up
//! to the checkpoint; (2) narrows the contacts to candidates — the contacts that can possibly
//! match, from what the filter requires (holders of a required feature, members of a required
//! segment or list, contacts of companies that pass a company condition, contacts with a
//! required grade or score) intersected for AND and united for OR; (3) evaluates the exact
//! filter on those contacts' state; (4) writes the difference with the old members, as
//! `segment.entered` / `segment.exited` events keyed by the build. It runs inside the engine
//! loop, between two batches, so it sees exactly the state at the checkpoint.

use crate::definitions::{self, Definitions, ModelDef, Names, SegmentDef};
use crate::pipeline::ENGINE_SOURCE;
use crate::state::{CONSENT_PREFIX, ContactState, Load, SALES_KEY, load_states};
use crate::{Engine, EngineError};
use kizuna_core::clock::Clock;
use kizuna_core::contact::{Contact, LifecycleStage, Temperature};
use kizuna_core::filter::attribute::{AttrValue, Attribute};
use kizuna_core::filter::event::{FeatureDef, FeatureState};
use kizuna_core::filter::op::{Cmp, Op, Operand};
use kizuna_core::filter::{self, Filter, Node};
use kizuna_core::scoring::{Grade, ScorePart, ScoreState};
use kizuna_core::time::{from_micros, micros};
use kizuna_store::Store;
use kizuna_store::definitions::{DefinitionKind, mark_built};
use kizuna_store::engine_state::{self as es, ScoreRow};
use kizuna_store::events::NewEvent;
use kizuna_store::log::{LogCursor, LogPosition};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use uuid::Uuid;

/// Setting: the behaviour features whose state is complete (maintained since built).
pub const FEATURES_BUILT: &str = "features_built";
/// Contacts evaluated per chunk.
const CHUNK: usize = 1000;
/// Log events read per page.
const PAGE: u32 = 50_000;

async fn built_features(store: &Store) -> Result<BTreeSet<String>, EngineError> {
    Ok(store
        .setting(FEATURES_BUILT)
        .await?
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default())
}

/// Brings stored results in line with the definitions: marks broken definitions failed,
/// backfills new features and drops unused ones, builds pending models and segments (and the
/// segments that read them). Returns how much was done (0: nothing to do).
pub async fn sync(engine: &Engine, defs: &Arc<Definitions>) -> Result<usize, EngineError> {
    let store = engine.store();
    let now = engine.now();
    let pending = defs.pending_builds();
    let mut work = 0;
    if !defs.broken.is_empty() {
        let mut tx = store.db().begin().await?;
        for (k, id, v, err) in &defs.broken {
            tracing::warn!(kind = ?k, %id, error = %err, "definition does not compile; marked failed");
            mark_built(&mut tx, *k, *id, *v, Some(err), now).await?;
        }
        tx.commit().await?;
        work += defs.broken.len();
    }
    let built = built_features(store).await?;
    let wanted: BTreeSet<String> = defs.features.iter().map(|f| f.key.clone()).collect();
    if built != wanted {
        let new: Vec<FeatureDef> = defs
            .features
            .iter()
            .filter(|f| !built.contains(&f.key))
            .cloned()
            .collect();
        if !new.is_empty() {
            let upto = engine.position().await?;
            let started = std::time::Instant::now();
            let states = backfill(store, &new, Some(&upto)).await?;
            write_features(store, &new, states).await?;
            tracing::info!(features = new.len(), elapsed = ?started.elapsed(), "behaviour features backfilled from the log");
        }
        let mut tx = store.db().begin().await?;
        for gone in built.difference(&wanted) {
            es::delete_feature(&mut tx, gone).await?;
        }
        es::set_setting(
            &mut tx,
            FEATURES_BUILT,
            &serde_json::to_string(&wanted).unwrap_or_default(),
            now,
        )
        .await?;
        tx.commit().await?;
        work += 1;
    }
    // Segments to build: the pending ones and every segment reading a rebuilt model or
    // segment, built together in waves (each wave after the segments it reads).
    let mut todo: HashSet<Uuid> = HashSet::new();
    for (kind, id, _) in &pending {
        match kind {
            DefinitionKind::ScoringModel => {
                if let Some(md) = defs.models.iter().find(|m| m.model.id == *id) {
                    build_model(engine, defs, md).await?;
                    work += 1;
                    todo.extend(defs.dependents_of(*id, true));
                }
            }
            DefinitionKind::Segment => {
                if defs.segment(*id).is_some() {
                    todo.insert(*id);
                    work += 1;
                    todo.extend(defs.dependents_of(*id, false));
                }
            }
        }
    }
    build_segments(engine, defs, &todo).await?;
    Ok(work)
}

/// Computes features from the log up to a cursor (everything committed when `None`):
/// (contact, feature index) → state.
pub async fn backfill(
    store: &Store,
    features: &[FeatureDef],
    upto: Option<&LogCursor>,
) -> Result<HashMap<(Uuid, usize), FeatureState>, EngineError> {
    let mut types: Option<Vec<String>> = Some(Vec::new());
    for f in features {
        match (f.matcher.exact_types(), types.as_mut()) {
            (Some(t), Some(all)) => all.extend(t),
            _ => types = None,
        }
    }
    if let Some(t) = types.as_mut() {
        t.sort();
        t.dedup();
    }
    let mut out: HashMap<(Uuid, usize), FeatureState> = HashMap::new();
    let mut pos = LogPosition {
        tx: i64::MIN,
        seq: i64::MIN,
    };
    loop {
        let batch = match upto {
            Some(u) => store.read_upto(pos, u, types.as_deref(), PAGE).await?,
            None => store.scan_log(pos, types.as_deref(), PAGE).await?,
        };
        let Some(last) = batch.last().map(|e| e.position) else {
            break;
        };
        for e in &batch {
            if e.source == ENGINE_SOURCE {
                continue;
            }
            for (i, f) in features.iter().enumerate() {
                if f.matcher.matches(&e.event_type, &e.properties) {
                    out.entry((e.contact_id, i))
                        .or_default()
                        .record(e.occurred_at, f.keep);
                }
            }
        }
        pos = last;
        if (batch.len() as u32) < PAGE {
            break;
        }
    }
    Ok(out)
}

async fn write_features(
    store: &Store,
    features: &[FeatureDef],
    states: HashMap<(Uuid, usize), FeatureState>,
) -> Result<(), EngineError> {
    let mut rows: Vec<(Uuid, String, String)> = states
        .into_iter()
        .map(|((c, i), st)| {
            (
                c,
                features[i].key.clone(),
                serde_json::to_string(&st).unwrap_or_default(),
            )
        })
        .collect();
    rows.sort_by_key(|a| a.0);
    for chunk in rows.chunks(5000) {
        let mut tx = store.db().begin().await?;
        match es::upsert_features(&mut tx, chunk).await {
            Ok(()) => tx.commit().await?,
            Err(_) => {
                // Events of contacts that no longer exist: keep the rows of those that do.
                drop(tx);
                let ids: Vec<Uuid> = chunk.iter().map(|r| r.0).collect();
                let live = store.existing_contacts(&ids).await?;
                let keep: Vec<_> = chunk
                    .iter()
                    .filter(|r| live.contains(&r.0))
                    .cloned()
                    .collect();
                let mut tx = store.db().begin().await?;
                es::upsert_features(&mut tx, &keep).await?;
                tx.commit().await?;
            }
        }
    }
    Ok(())
}

type Set = HashSet<Uuid>;
type Fut<'a> = Pin<Box<dyn Future<Output = Result<Option<Set>, EngineError>> + Send + 'a>>;

/// Overrides for candidates: in-memory feature holders (preview of unbuilt features).
#[derive(Default)]
pub struct Holders(pub HashMap<String, Set>);

/// The contacts that can possibly match `n` (`None`: any contact could).
pub fn candidates<'a>(
    store: &'a Store,
    n: &'a Node,
    holders: &'a Holders,
    companies: &'a tokio::sync::OnceCell<Vec<kizuna_core::company::Company>>,
) -> Fut<'a> {
    Box::pin(async move {
        Ok(match n {
            Node::All(xs) => {
                let mut sets: Vec<Set> = Vec::new();
                for x in xs {
                    if let Some(s) = candidates(store, x, holders, companies).await? {
                        sets.push(s);
                    }
                }
                sets.sort_by_key(|s| s.len());
                let mut it = sets.into_iter();
                it.next().map(|first| {
                    it.fold(first, |acc, s| {
                        acc.into_iter().filter(|c| s.contains(c)).collect()
                    })
                })
            }
            Node::Any(xs) => {
                let mut acc = Set::new();
                for x in xs {
                    match candidates(store, x, holders, companies).await? {
                        Some(s) => acc.extend(s),
                        None => return Ok(None),
                    }
                }
                Some(acc)
            }
            Node::Event(e) => {
                let needs_one = match e.count {
                    (Cmp::Gte | Cmp::Eq, n) => n >= 1,
                    (Cmp::Gt, _) => true,
                    _ => false,
                } || e.first.is_some()
                    || e.last.is_some();
                if !needs_one {
                    None
                } else if let Some(h) = holders.0.get(&e.feature.key) {
                    Some(h.clone())
                } else {
                    Some(
                        store
                            .feature_holder_ids(&e.feature.key)
                            .await?
                            .into_iter()
                            .collect(),
                    )
                }
            }
            Node::Segment(s) => Some(store.segment_member_ids(*s).await?.into_iter().collect()),
            Node::List(l) => Some(store.list_member_ids(*l).await?.into_iter().collect()),
            Node::Grade { model, allowed } if !allowed.contains(&Grade::D) => {
                let g: Vec<&str> = allowed.iter().map(|g| g.as_str()).collect();
                Some(
                    store
                        .contacts_with_grades(*model, &g)
                        .await?
                        .into_iter()
                        .collect(),
                )
            }
            Node::Score {
                model,
                part: ScorePart::Total,
                cmp: Cmp::Gte | Cmp::Gt,
                value,
            } if *value > 0.0 => Some(
                store
                    .contacts_with_score_at_least(*model, *value)
                    .await?
                    .into_iter()
                    .collect(),
            ),
            Node::Attribute {
                attr: attr @ Attribute::Company(_),
                op,
            } if !op.test(&AttrValue::Missing, 0).value && !op.is_relative() => {
                let all = companies
                    .get_or_try_init(|| async { store.all_companies().await })
                    .await?;
                let dummy = Contact::new(Uuid::nil(), from_micros(0));
                let ids: Vec<Uuid> = all
                    .iter()
                    .filter(|co| op.test(&attr.value(&dummy, Some(co)), 0).value)
                    .map(|co| co.id)
                    .collect();
                Some(
                    store
                        .contacts_of_companies(&ids)
                        .await?
                        .into_iter()
                        .collect(),
                )
            }
            Node::Attribute {
                attr: Attribute::Contact("lifecycle_stage"),
                op: Op::Eq(Operand::Text(s)),
            } => {
                let st: Vec<LifecycleStage> = s.parse().into_iter().collect();
                Some(store.contacts_in_stages(&st).await?.into_iter().collect())
            }
            Node::Attribute {
                attr: Attribute::Contact("lifecycle_stage"),
                op: Op::In(os),
            } => {
                let st: Vec<LifecycleStage> = os
                    .iter()
                    .filter_map(|o| match o {
                        Operand::Text(s) => s.parse().ok(),
                        _ => None,
                    })
                    .collect();
                Some(store.contacts_in_stages(&st).await?.into_iter().collect())
            }
            _ => None,
        })
    })
}

/// The state a build of these filters must load: only the feature rows they read (behaviour
/// features, the consent flags and the sales-cycle flag they test), scores only if they read
/// a model, memberships only if they read segments or lists.
struct Reads {
    keys: Vec<String>,
    members: bool,
    lists: bool,
    scores: bool,
}

impl Reads {
    fn of<'f>(filters: impl IntoIterator<Item = &'f Filter>) -> Reads {
        let mut r = Reads {
            keys: Vec::new(),
            members: false,
            lists: false,
            scores: false,
        };
        for f in filters {
            r.keys.extend(f.features.iter().map(|fd| fd.key.clone()));
            consent_keys(&f.root, &mut r.keys);
            if f.deps.sales_cycle {
                r.keys.push(SALES_KEY.to_string());
            }
            r.members |= !f.deps.segments.is_empty();
            r.lists |= !f.deps.lists.is_empty();
            r.scores |= !f.deps.models.is_empty();
        }
        r.keys.sort();
        r.keys.dedup();
        r
    }

    fn load(&self) -> Load<'_> {
        Load {
            members: self.members,
            lists: self.lists,
            timers: true,
            features: Some(&self.keys),
            scores: self.scores,
        }
    }
}

fn consent_keys(n: &Node, out: &mut Vec<String>) {
    match n {
        Node::All(xs) | Node::Any(xs) => xs.iter().for_each(|x| consent_keys(x, out)),
        Node::Not(x) => consent_keys(x, out),
        Node::Consent { key, .. } => out.push(format!("{CONSENT_PREFIX}{key}")),
        _ => {}
    }
}

/// Loads contacts (all of them when `ids` is `None`) chunk by chunk and hands each state to
/// `visit`.
async fn scan(
    store: &Store,
    defs: &Arc<Definitions>,
    ids: Option<Vec<Uuid>>,
    now: i64,
    load: Load<'_>,
    mut visit: impl FnMut(ContactState),
) -> Result<(), EngineError> {
    match ids {
        Some(mut ids) => {
            ids.sort();
            for chunk in ids.chunks(CHUNK) {
                load_states(store, defs, chunk, now, load)
                    .await?
                    .into_values()
                    .for_each(&mut visit);
            }
        }
        None => {
            let mut after = None;
            loop {
                let chunk = store.contact_ids_after(after, CHUNK as u32).await?;
                let Some(last) = chunk.last().copied() else {
                    break;
                };
                after = Some(last);
                load_states(store, defs, &chunk, now, load)
                    .await?
                    .into_values()
                    .for_each(&mut visit);
            }
        }
    }
    Ok(())
}

/// One segment of a build wave: its old members, its candidates, its new members.
struct Job<'a> {
    seg: &'a SegmentDef,
    old: Set,
    cands: Option<Set>,
    new: Set,
}

/// Builds segments at the checkpoint and writes each one's difference. Segments reading other
/// segments of the set wait for a later wave, so their candidates and memberships are read
/// after those are written.
pub async fn build_segments(
    engine: &Engine,
    defs: &Arc<Definitions>,
    ids: &HashSet<Uuid>,
) -> Result<(), EngineError> {
    let mut left: Vec<&SegmentDef> = defs
        .segments
        .iter()
        .filter(|s| ids.contains(&s.id))
        .collect();
    while !left.is_empty() {
        let waiting: HashSet<Uuid> = left.iter().map(|s| s.id).collect();
        let (mut wave, rest): (Vec<&SegmentDef>, Vec<&SegmentDef>) =
            left.into_iter().partition(|s| {
                s.filter
                    .deps
                    .segments
                    .iter()
                    .all(|d| !waiting.contains(d) || *d == s.id)
            });
        if wave.is_empty() {
            // Not expected (definitions are acyclic): build the rest one by one.
            wave = rest.clone();
            for s in wave {
                build_wave(engine, defs, &[s]).await?;
            }
            return Ok(());
        }
        build_wave(engine, defs, &wave).await?;
        left = rest;
    }
    Ok(())
}

/// Builds segments that do not read one another in one pass over their candidates.
async fn build_wave(
    engine: &Engine,
    defs: &Arc<Definitions>,
    segs: &[&SegmentDef],
) -> Result<(), EngineError> {
    let store = engine.store();
    let now = engine.now();
    let started = std::time::Instant::now();
    let cells = tokio::sync::OnceCell::new();
    let mut jobs: Vec<Job> = Vec::with_capacity(segs.len());
    for seg in segs {
        jobs.push(Job {
            seg,
            old: store
                .segment_member_ids(seg.id)
                .await?
                .into_iter()
                .collect(),
            cands: candidates(store, &seg.filter.root, &Holders::default(), &cells).await?,
            new: Set::new(),
        });
    }
    let ids: Option<Vec<Uuid>> = if jobs.iter().all(|j| j.cands.is_some()) {
        let mut all = Set::new();
        for j in &jobs {
            all.extend(j.cands.iter().flatten().copied());
        }
        Some(all.into_iter().collect())
    } else {
        None
    };
    let scanned = ids.as_ref().map(|i| i.len());
    let reads = Reads::of(segs.iter().map(|s| &s.filter));
    let mut timers: Vec<(Uuid, Option<i64>)> = Vec::new();
    scan(store, defs, ids, now, reads.load(), |cs| {
        let mut until: Option<i64> = None;
        for j in jobs.iter_mut() {
            if j.cands
                .as_ref()
                .is_some_and(|c| !c.contains(&cs.contact.id))
            {
                continue;
            }
            let o = j.seg.filter.eval(&cs, now);
            if o.value {
                j.new.insert(cs.contact.id);
            }
            if let Some(u) = o.until.filter(|t| *t > now) {
                until = Some(until.map_or(u, |x| x.min(u)));
            }
        }
        if let Some(u) = until
            && cs.timer_loaded.is_none_or(|t| u < t)
        {
            timers.push((cs.contact.id, Some(u)));
        }
    })
    .await?;
    let mut tx = store.db().begin().await?;
    es::set_timers(&mut tx, &timers).await?;
    tx.commit().await?;
    for j in &jobs {
        write_build(store, j, now).await?;
    }
    tracing::info!(segments = jobs.len(), scanned = ?scanned, elapsed = ?started.elapsed(), "segments built");
    Ok(())
}

/// Writes one built segment: members entered and exited (with their events, keyed by the
/// build) and the built version, in one transaction.
async fn write_build(store: &Store, j: &Job<'_>, now: i64) -> Result<(), EngineError> {
    let seg = j.seg;
    let entered: Vec<Uuid> = j.new.difference(&j.old).copied().collect();
    let exited: Vec<Uuid> = j.old.difference(&j.new).copied().collect();
    let cause = format!("b{}", seg.version);
    let mut tx = store.db().begin().await?;
    es::insert_members(
        &mut tx,
        &entered
            .iter()
            .map(|c| (seg.id, *c, now))
            .collect::<Vec<_>>(),
    )
    .await?;
    es::delete_members(
        &mut tx,
        &exited.iter().map(|c| (seg.id, *c)).collect::<Vec<_>>(),
    )
    .await?;
    let mut events = Vec::new();
    for (list, kind, dir) in [
        (&entered, "segment.entered", "in"),
        (&exited, "segment.exited", "out"),
    ] {
        for c in list.iter() {
            let key = format!("seg:{}:{c}:{dir}:{cause}", seg.id);
            let mut e = NewEvent::new(
                *c,
                kind,
                from_micros(now),
                ENGINE_SOURCE,
                json!({"segment_id": seg.id, "segment": seg.name, "cause": "build", "version": seg.version}),
            );
            e.message_id = Some(key);
            events.push(e);
        }
    }
    // No effects ledger here: the events commit with the built version, so a build that
    // committed is never redone and one that did not left nothing behind.
    kizuna_store::events::append(&mut tx, events, from_micros(now)).await?;
    mark_built(
        &mut tx,
        DefinitionKind::Segment,
        seg.id,
        seg.version,
        None,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(segment = %seg.name, candidates = ?j.cands.as_ref().map(|c| c.len()), members = j.new.len(),
        entered = entered.len(), exited = exited.len(), "segment built");
    Ok(())
}

/// Scores every contact under a new or edited model, from the log up to the checkpoint.
/// Thresholds already reached are recorded without crossing events, and contacts already
/// meeting the MQL rule are not handed off by the build: only a new crossing does that.
pub async fn build_model(
    engine: &Engine,
    defs: &Arc<Definitions>,
    md: &ModelDef,
) -> Result<(), EngineError> {
    let store = engine.store();
    let now = engine.now();
    let m = &md.model;
    let started = std::time::Instant::now();
    let upto = engine.position().await?;
    let mut types: Option<Vec<String>> = Some(Vec::new());
    for r in &m.rules {
        match (r.matcher.exact_types(), types.as_mut()) {
            (Some(t), Some(all)) => all.extend(t),
            _ => types = None,
        }
    }
    let mut states: HashMap<Uuid, ScoreState> = HashMap::new();
    if types.as_ref().is_none_or(|t| !t.is_empty()) {
        let mut pos = LogPosition {
            tx: i64::MIN,
            seq: i64::MIN,
        };
        loop {
            let batch = store.read_upto(pos, &upto, types.as_deref(), PAGE).await?;
            let Some(last) = batch.last().map(|e| e.position) else {
                break;
            };
            for e in &batch {
                if e.source != ENGINE_SOURCE {
                    let st = states.entry(e.contact_id).or_default();
                    m.score_event(st, &e.event_type, &e.properties, e.occurred_at);
                }
            }
            pos = last;
            if (batch.len() as u32) < PAGE {
                break;
            }
        }
    }
    let others: Vec<&ModelDef> = defs
        .models
        .iter()
        .filter(|o| o.model.lifecycle && o.model.id != m.id)
        .collect();
    let cause = format!("b{}:{}", m.id, md.version);
    let mut after = None;
    loop {
        let ids = store.contact_ids_after(after, 2000).await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        after = Some(last);
        let loaded = load_states(
            store,
            defs,
            &ids,
            now,
            Load {
                members: false,
                lists: false,
                timers: true,
                features: Some(&[]),
                scores: true,
            },
        )
        .await?;
        let mut rows = Vec::with_capacity(loaded.len());
        let mut timers = Vec::new();
        let mut temps = Vec::new();
        let mut events = Vec::new();
        let mut keys = Vec::new();
        for cs in loaded.values() {
            let mut st = states.remove(&cs.contact.id).unwrap_or_default();
            m.refit(&mut st, &cs.contact, cs.company.as_ref());
            m.crossings(&mut st, now);
            let r = m.reading(&st, now);
            st.mql_armed = !m.qualifies(&r);
            if let Some(t) = m.next_crossing(&st, now)
                && cs.timer_loaded.is_none_or(|x| t < x)
            {
                timers.push((cs.contact.id, Some(t)));
            }
            if m.lifecycle {
                let mut temp = m.temperature(&r);
                for o in &others {
                    if let Some(ost) = cs.scores.get(&o.model.id)
                        && let Some(t) = o.model.temperature(&o.model.reading(ost, now))
                    {
                        temp = Some(hotter(temp, t));
                    }
                }
                if let Some(t) = temp
                    && t != cs.contact.temperature
                {
                    temps.push((cs.contact.id, t));
                    let key = format!("temp:{}:{}:{cause}", cs.contact.id, t.as_str());
                    let mut e = NewEvent::new(
                        cs.contact.id,
                        "temperature.changed",
                        from_micros(now),
                        ENGINE_SOURCE,
                        json!({"from": cs.contact.temperature, "to": t, "cause": format!("scoring:{}", m.name)}),
                    );
                    e.message_id = Some(key.clone());
                    keys.push((key, cs.contact.id));
                    events.push(e);
                }
            }
            rows.push(ScoreRow {
                contact_id: cs.contact.id,
                model_id: m.id,
                score: r.value(ScorePart::Total),
                behaviour: r.behaviour,
                fit: r.fit,
                grade: r.grade.to_string(),
                as_of: now,
                state: serde_json::to_string(&st).unwrap_or_default(),
            });
        }
        let mut tx = store.db().begin().await?;
        es::upsert_scores(&mut tx, &rows).await?;
        es::set_timers(&mut tx, &timers).await?;
        for (c, t) in &temps {
            es::set_temperature(&mut tx, *c, *t, now).await?;
        }
        let done = store
            .effects_done(
                &keys
                    .iter()
                    .map(|k: &(String, Uuid)| k.0.clone())
                    .collect::<Vec<_>>(),
            )
            .await?;
        events.retain(|e| !done.contains(e.message_id.as_deref().unwrap_or("")));
        keys.retain(|k| !done.contains(&k.0));
        kizuna_store::events::append(&mut tx, events, from_micros(now)).await?;
        es::record_effects(&mut tx, &keys, now).await?;
        tx.commit().await?;
    }
    let mut tx = store.db().begin().await?;
    mark_built(
        &mut tx,
        DefinitionKind::ScoringModel,
        m.id,
        md.version,
        None,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(model = %m.name, elapsed = ?started.elapsed(), "scoring model built");
    Ok(())
}

fn hotter(a: Option<Temperature>, b: Temperature) -> Temperature {
    match (a, b) {
        (Some(Temperature::Hot), _) | (_, Temperature::Hot) => Temperature::Hot,
        (Some(Temperature::Warm), _) | (_, Temperature::Warm) => Temperature::Warm,
        _ => Temperature::Cold,
    }
}

/// A segment preview: how many contacts match now and a few of them.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    /// Matching contacts.
    pub count: u64,
    /// Contacts evaluated exactly (after narrowing to candidates).
    pub evaluated: u64,
    /// A sample of matching contacts (lowest ids first).
    pub sample: Vec<Contact>,
    /// When.
    pub evaluated_at: chrono::DateTime<chrono::Utc>,
}

/// Evaluates a filter without saving it (count and sample). Features no saved definition reads
/// are computed from the log for the occasion.
pub async fn preview(
    store: &Store,
    clock: &dyn Clock,
    filter_def: &Value,
    sample: usize,
) -> Result<Preview, EngineError> {
    let names = Names::load(store).await?;
    let mut f = filter::compile(filter_def, &names, "filter")?;
    let defs = Arc::new(definitions::load(store).await?);
    // Read the features saved segments keep when they are deep enough.
    f.remap_features(&|fd| {
        defs.features
            .iter()
            .find(|x| x.matcher == fd.matcher && x.keep >= fd.keep)
            .cloned()
            .unwrap_or_else(|| fd.clone())
    });
    let now = micros(clock.now());
    let built = built_features(store).await?;
    let missing: Vec<FeatureDef> = f
        .features
        .iter()
        .filter(|fd| !built.contains(&fd.key))
        .cloned()
        .collect();
    let mut extra: HashMap<String, HashMap<Uuid, FeatureState>> = HashMap::new();
    let mut holders = Holders::default();
    if !missing.is_empty() {
        for ((c, i), st) in backfill(store, &missing, None).await? {
            extra
                .entry(missing[i].key.clone())
                .or_default()
                .insert(c, st);
        }
        for fd in &missing {
            let m = extra.entry(fd.key.clone()).or_default();
            holders
                .0
                .insert(fd.key.clone(), m.keys().copied().collect());
        }
    }
    let cells = tokio::sync::OnceCell::new();
    let cands = candidates(store, &f.root, &holders, &cells).await?;
    let mut count = 0u64;
    let mut evaluated = 0u64;
    let mut hits: Vec<Contact> = Vec::new();
    let reads = Reads::of([&f]);
    scan(
        store,
        &defs,
        cands.map(|c| c.into_iter().collect()),
        now,
        reads.load(),
        |mut cs| {
            for (k, m) in &extra {
                if let Some(st) = m.get(&cs.contact.id) {
                    cs.features.insert(k.clone(), st.clone());
                }
            }
            evaluated += 1;
            if f.eval(&cs, now).value {
                count += 1;
                hits.push(cs.contact);
                if hits.len() > sample * 4 + 64 {
                    hits.sort_by_key(|c| c.id);
                    hits.truncate(sample);
                }
            }
        },
    )
    .await?;
    hits.sort_by_key(|c| c.id);
    hits.truncate(sample);
    Ok(Preview {
        count,
        evaluated,
        sample: hits,
        evaluated_at: from_micros(now),
    })
}
