//! The per-event steps, in the order ARCHITECTURE.md draws them: update the contact's computed
//! state (behaviour features, consent, sales cycle), score, settle lifecycle (grades,
//! thresholds both ways, temperature, MQL — fit first — and the handoff), then re-check only
//! the segments that read what changed, and keep the contact's timer at the next instant time
//! alone would change something. Every step is synchronous and works on one contact's
//! in-memory state; what must be written is collected in [`Effects`].

use crate::definitions::{Definitions, SegmentDef};
use crate::state::ContactState;
use kizuna_core::contact::{LifecycleStage, Temperature};
use kizuna_core::filter::eval_attributes;
use kizuna_core::lifecycle::{ends_sales_cycle, may_become_mql};
use kizuna_core::scoring::{ScoreReading, ScoringModel};
use kizuna_core::time::from_micros;
use kizuna_store::events::NewEvent;
use kizuna_store::log::LogEvent;
use serde_json::{Value, json};
use std::collections::HashSet;
use uuid::Uuid;

/// The source of the engine's own events (the engine skips them as input).
pub const ENGINE_SOURCE: &str = "engine";

/// Why the engine is doing something: part of every effect's idempotency key.
#[derive(Debug, Clone)]
pub struct Cause {
    /// `e<tx>.<seq>` (an event), `t<due>` (a timer), `b<version>` (a build), `r<tx>.<seq>` (a
    /// contact rebuilt after a merge).
    pub key: String,
    /// The instant effects are dated (µs).
    pub at: i64,
    /// `event`, `time`, `build` or `rebuild`.
    pub kind: &'static str,
}

/// What changed for a contact in this step.
#[derive(Debug, Default, Clone)]
pub struct Changed {
    /// Everything (rebuilds, builds).
    pub all: bool,
    /// Contact or company attributes (including stage, owner, temperature).
    pub attrs: bool,
    /// Behaviour features (positions in the definitions).
    pub features: HashSet<usize>,
    /// Scores.
    pub models: HashSet<Uuid>,
    /// List membership.
    pub lists: bool,
    /// Segment membership.
    pub segments: HashSet<Uuid>,
    /// Consent.
    pub consent: bool,
    /// Sales cycle.
    pub sales: bool,
    /// Time passed (a timer fired).
    pub time: bool,
}

/// A handoff decided in a step, completed (breakdown, recent activity) before the commit.
#[derive(Debug, Clone)]
pub struct HandoffDraft {
    /// Idempotency key.
    pub key: String,
    /// Contact.
    pub contact_id: Uuid,
    /// Model that qualified the contact (none: moved to MQL by hand).
    pub model: Option<Uuid>,
    /// Owner.
    pub owner: Option<Uuid>,
    /// `existing_owner`, `rule`, `round_robin` or `none`.
    pub assigned_by: &'static str,
    /// Score and grade at handoff.
    pub score: Option<f64>,
    /// Grade letter.
    pub grade: Option<String>,
    /// When (µs).
    pub at: i64,
    /// The stage change it depends on (dropped with it if the stage moved meanwhile).
    pub requires_stage: Option<String>,
}

/// Everything a batch must write besides per-contact state.
#[derive(Debug, Default)]
pub struct Effects {
    /// The engine's events, by idempotency key.
    pub events: Vec<(String, NewEvent)>,
    /// Conditional stage moves: (event key, contact, expected stage, new stage).
    pub stages: Vec<(String, Uuid, LifecycleStage, LifecycleStage)>,
    /// Temperatures to set.
    pub temperatures: Vec<(Uuid, Temperature)>,
    /// Owners to set (only where none is set).
    pub owners: Vec<(Uuid, Uuid)>,
    /// Handoffs.
    pub handoffs: Vec<HandoffDraft>,
    /// Contacts whose open handoffs close.
    pub close_handoffs: Vec<Uuid>,
    /// New segment members: (segment, contact, at µs).
    pub members_in: Vec<(Uuid, Uuid, i64)>,
    /// Segment exits: (segment, contact).
    pub members_out: Vec<(Uuid, Uuid)>,
    /// Round-robin cursor: the last owner assigned.
    pub rr_last: Option<Uuid>,
    /// Whether the cursor moved.
    pub rr_moved: bool,
}

impl Effects {
    fn event(&mut self, key: String, contact: Uuid, kind: &str, at: i64, props: Value) {
        let mut e = NewEvent::new(contact, kind, from_micros(at), ENGINE_SOURCE, props);
        e.message_id = Some(key.clone());
        self.events.push((key, e));
    }
}

fn affected(seg: &SegmentDef, ch: &Changed) -> bool {
    let d = &seg.filter.deps;
    ch.all
        || (d.attributes && ch.attrs)
        || seg.feature_idx.iter().any(|i| ch.features.contains(i))
        || d.models.iter().any(|m| ch.models.contains(m))
        || (!d.lists.is_empty() && ch.lists)
        || d.segments.iter().any(|s| ch.segments.contains(s))
        || (d.consent && ch.consent)
        || (d.sales_cycle && ch.sales)
        || (d.time && ch.time)
}

/// Updates computed state from one event (features, consent, sales cycle, scores) and says
/// what changed. No lifecycle effects: rebuilds replay history through this alone.
pub fn record(defs: &Definitions, cs: &mut ContactState, e: &LogEvent, ch: &mut Changed) {
    let t = e.event_type.as_str();
    let p = &e.properties;
    if t.starts_with("contact.")
        || t.starts_with("company.")
        || t == "stage.changed"
        || t == "temperature.changed"
    {
        ch.attrs = true;
    }
    // A new contact is checked against every segment once: conditions that hold without
    // any event ("not opened in 30 days", "no sales cycle") hold for it from the start.
    if t == "contact.created" {
        ch.all = true;
    }
    match t {
        "consent.granted" | "consent.withdrawn" | "email.unsubscribed" => {
            let granted = t == "consent.granted";
            let channel = if t == "email.unsubscribed" {
                "email".to_string()
            } else {
                p.get("channel")
                    .and_then(Value::as_str)
                    .unwrap_or("email")
                    .trim()
                    .to_lowercase()
            };
            match p.get("subscription_type").and_then(Value::as_str) {
                Some(st) if !st.trim().is_empty() => {
                    cs.set_consent(
                        &format!("{channel}:{}", st.trim().to_lowercase()),
                        granted,
                        e.occurred_at,
                    );
                    if granted {
                        cs.set_consent(&channel, true, e.occurred_at);
                    }
                }
                _ => {
                    cs.set_consent(&channel, granted, e.occurred_at);
                    if !granted {
                        let prefix = format!("{channel}:");
                        let subs: Vec<String> = cs
                            .consent
                            .keys()
                            .filter(|k| k.starts_with(&prefix))
                            .cloned()
                            .collect();
                        for k in subs {
                            cs.set_consent(&k, false, e.occurred_at);
                        }
                    }
                }
            }
            ch.consent = true;
        }
        "handoff.created" | "handoff.accepted" if !cs.in_sales() => {
            cs.set_sales(true, e.occurred_at);
            ch.sales = true;
        }
        "handoff.rejected" | "handoff.closed" => {
            if cs.in_sales() {
                cs.set_sales(false, e.occurred_at);
                ch.sales = true;
            }
            // A rejected lead is recycled: it qualifies again only after falling below the MQL
            // line and crossing it anew.
            for m in defs.models.iter().filter(|m| m.model.lifecycle) {
                let st = cs.score_mut(m.model.id);
                if st.mql_armed {
                    st.mql_armed = false;
                    cs.dirty_scores.insert(m.model.id);
                }
            }
        }
        "list.added" | "list.removed" => ch.lists = true,
        _ => {}
    }
    for fi in defs.features_for(t) {
        let f = &defs.features[fi];
        if f.matcher.matches(t, p) {
            cs.features
                .entry(f.key.clone())
                .or_default()
                .record(e.occurred_at, f.keep);
            cs.dirty_features.insert(f.key.clone());
            ch.features.insert(fi);
        }
    }
    for md in &defs.models {
        let m = &md.model;
        if m.rules.iter().any(|r| r.matcher.type_matches(t)) {
            let st = cs.scores.entry(m.id).or_default();
            if !m.score_event(st, t, p, e.occurred_at).is_empty() {
                cs.dirty_scores.insert(m.id);
                ch.models.insert(m.id);
            }
        }
    }
}

/// One event, all steps.
pub fn apply_event(defs: &Definitions, cs: &mut ContactState, e: &LogEvent, out: &mut Effects) {
    let cause = Cause {
        key: format!("e{}", e.position),
        at: cs.now,
        kind: "event",
    };
    let mut ch = Changed::default();
    record(defs, cs, e, &mut ch);
    if e.event_type == "stage.changed" {
        let to = e
            .properties
            .get("to")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<LifecycleStage>().ok());
        if to == Some(LifecycleStage::Mql)
            && cs.contact.lifecycle_stage == LifecycleStage::Mql
            && !cs.in_sales()
        {
            // Moved to MQL by hand: hand off like a scored MQL.
            handoff(defs, cs, None, None, &cause, out, None);
            ch.sales = true;
            ch.attrs = true;
        } else if to.is_some_and(ends_sales_cycle) && cs.in_sales() {
            cs.set_sales(false, e.occurred_at);
            out.close_handoffs.push(cs.contact.id);
            ch.sales = true;
        }
    }
    settle(defs, cs, ch, &cause, out);
}

/// A contact's timer fired: re-check everything time can change, and set the next timer.
pub fn tick(defs: &Definitions, cs: &mut ContactState, due: i64, out: &mut Effects) {
    let cause = Cause {
        key: format!("t{due}"),
        at: due.min(cs.now),
        kind: "time",
    };
    cs.timer = None;
    let ch = Changed {
        time: true,
        ..Default::default()
    };
    settle(defs, cs, ch, &cause, out);
}

/// Replays a contact's whole history (after a merge or its undo) and settles everything.
pub fn rebuild(
    defs: &Definitions,
    cs: &mut ContactState,
    log: &[LogEvent],
    cause: &Cause,
    out: &mut Effects,
) {
    let old: Vec<String> = cs
        .features
        .keys()
        .cloned()
        .chain(
            cs.consent
                .keys()
                .map(|k| format!("{}{k}", crate::state::CONSENT_PREFIX)),
        )
        .collect();
    cs.features.clear();
    cs.consent.clear();
    let was_sales = cs.sales.is_some();
    cs.sales = None;
    cs.scores.clear();
    cs.dirty_features.extend(old);
    if was_sales {
        cs.dirty_features.insert(crate::state::SALES_KEY.into());
    }
    cs.dirty_scores
        .extend(defs.models.iter().map(|m| m.model.id));
    let mut ch = Changed::default();
    for e in log.iter().filter(|e| e.source != ENGINE_SOURCE) {
        record(defs, cs, e, &mut ch);
    }
    cs.timer = None;
    settle(
        defs,
        cs,
        Changed {
            all: true,
            ..Default::default()
        },
        cause,
        out,
    );
}

/// Lifecycle and segments after something changed.
pub fn settle(
    defs: &Definitions,
    cs: &mut ContactState,
    mut ch: Changed,
    cause: &Cause,
    out: &mut Effects,
) {
    let now = cs.now;
    let cid = cs.contact.id;
    // Fit and grade read attributes.
    if ch.attrs || ch.all {
        for md in &defs.models {
            let m = &md.model;
            let existed = cs.scores.contains_key(&m.id);
            let st = cs.scores.entry(m.id).or_default();
            let fit_before = st.fit;
            let old = m.refit(st, &cs.contact, cs.company.as_ref());
            if let Some(old) = old {
                out.event(
                    format!("g:{}:{cid}:{}:{}", m.id, st.grade, cause.key),
                    cid,
                    "grade.changed",
                    cause.at,
                    json!({"model_id": m.id, "model": m.name, "from": old, "to": st.grade, "fit": st.fit}),
                );
            }
            if !existed || old.is_some() || st.fit != fit_before {
                cs.dirty_scores.insert(m.id);
                ch.models.insert(m.id);
            }
        }
    }
    // Thresholds (both ways), temperature, MQL.
    let mut lifecycle_touched = false;
    let mut promote_by: Option<(usize, ScoreReading)> = None;
    for (i, md) in defs.models.iter().enumerate() {
        let m = &md.model;
        if !(ch.all || ch.models.contains(&m.id) || (ch.time && m.decay.is_some())) {
            continue;
        }
        let Some(st) = cs.scores.get_mut(&m.id) else {
            continue;
        };
        let crossings = m.crossings(st, now);
        if !crossings.is_empty() {
            cs.dirty_scores.insert(m.id);
        }
        let r = m.reading(st, now);
        for x in crossings {
            out.event(
                format!("x:{}:{cid}:{}:{}:{}", m.id, x.threshold, x.direction, cause.key),
                cid,
                "score.threshold_crossed",
                cause.at,
                json!({"model_id": m.id, "model": m.name, "threshold": x.threshold, "value": x.value,
                       "direction": x.direction, "score": kizuna_core::scoring::round2(r.value(kizuna_core::scoring::ScorePart::Total))}),
            );
        }
        if m.lifecycle {
            lifecycle_touched = true;
            if st.mql_armed && !may_become_mql(cs.contact.lifecycle_stage) && m.qualifies(&r) {
                // Already MQL or further along: nothing to promote; wait for a new crossing.
                st.mql_armed = false;
                cs.dirty_scores.insert(m.id);
            }
            if promote_by.is_none()
                && st.mql_armed
                && m.qualifies(&r)
                && may_become_mql(cs.contact.lifecycle_stage)
            {
                st.mql_armed = false;
                cs.dirty_scores.insert(m.id);
                promote_by = Some((i, r));
            }
        }
        let next = m.next_crossing(st, now);
        cs.consider_timer(next);
    }
    if let Some((i, r)) = promote_by {
        let m = &defs.models[i].model;
        promote(defs, cs, m, r, cause, out);
        ch.attrs = true;
        ch.sales = true;
    }
    if lifecycle_touched {
        let mut hottest: Option<Temperature> = None;
        for md in defs.models.iter().filter(|m| m.model.lifecycle) {
            if let Some(st) = cs.scores.get(&md.model.id)
                && let Some(t) = md.model.temperature(&md.model.reading(st, now))
            {
                hottest = Some(match (hottest, t) {
                    (Some(Temperature::Hot), _) | (_, Temperature::Hot) => Temperature::Hot,
                    (Some(Temperature::Warm), _) | (_, Temperature::Warm) => Temperature::Warm,
                    _ => Temperature::Cold,
                });
            }
        }
        if let Some(t) = hottest
            && t != cs.contact.temperature
        {
            let from = cs.contact.temperature;
            cs.contact.temperature = t;
            out.temperatures.push((cid, t));
            out.event(
                format!("temp:{cid}:{}:{}", t.as_str(), cause.key),
                cid,
                "temperature.changed",
                cause.at,
                json!({"from": from, "to": t, "cause": "scoring"}),
            );
            ch.attrs = true;
        }
    }
    // Segments that read what changed, dependencies first.
    for seg in &defs.segments {
        if seg.built_version != seg.version || !affected(seg, &ch) {
            continue;
        }
        let o = seg.filter.eval(cs, now);
        cs.consider_timer(o.until);
        let was = cs.members.contains(&seg.id);
        if o.value == was {
            continue;
        }
        let (kind, dir) = if o.value {
            cs.members.insert(seg.id);
            out.members_in.push((seg.id, cid, cause.at));
            ("segment.entered", "in")
        } else {
            cs.members.remove(&seg.id);
            out.members_out.push((seg.id, cid));
            ("segment.exited", "out")
        };
        out.event(
            format!("seg:{}:{cid}:{dir}:{}", seg.id, cause.key),
            cid,
            kind,
            cause.at,
            json!({"segment_id": seg.id, "segment": seg.name, "cause": cause.kind}),
        );
        ch.segments.insert(seg.id);
    }
}

fn promote(
    defs: &Definitions,
    cs: &mut ContactState,
    m: &ScoringModel,
    r: ScoreReading,
    cause: &Cause,
    out: &mut Effects,
) {
    let cid = cs.contact.id;
    let from = cs.contact.lifecycle_stage;
    cs.contact.lifecycle_stage = LifecycleStage::Mql;
    let key = format!("stage:{cid}:mql:{}", cause.key);
    out.stages
        .push((key.clone(), cid, from, LifecycleStage::Mql));
    out.event(
        key.clone(),
        cid,
        "stage.changed",
        cause.at,
        json!({"from": from, "to": LifecycleStage::Mql, "cause": format!("scoring:{}", m.name),
               "model_id": m.id, "score": kizuna_core::scoring::round2(r.value(kizuna_core::scoring::ScorePart::Total)), "grade": r.grade}),
    );
    if !cs.in_sales() {
        handoff(defs, cs, Some(m), Some(r), cause, out, Some(key));
    }
}

fn handoff(
    defs: &Definitions,
    cs: &mut ContactState,
    m: Option<&ScoringModel>,
    r: Option<ScoreReading>,
    cause: &Cause,
    out: &mut Effects,
    requires_stage: Option<String>,
) {
    let cid = cs.contact.id;
    let (owner, by) = if let Some(o) = cs.contact.owner_id {
        (Some(o), "existing_owner")
    } else if let Some((_, o)) = defs
        .policy
        .rules
        .iter()
        .find(|(w, _)| eval_attributes(w, &cs.contact, cs.company.as_ref()))
    {
        (Some(*o), "rule")
    } else if !defs.sales_pool.is_empty() {
        let pool = &defs.sales_pool;
        let next = match out.rr_last.and_then(|l| pool.iter().position(|p| *p == l)) {
            Some(i) => pool[(i + 1) % pool.len()],
            None => pool[0],
        };
        out.rr_last = Some(next);
        out.rr_moved = true;
        (Some(next), "round_robin")
    } else {
        (None, "none")
    };
    if let Some(o) = owner
        && cs.contact.owner_id.is_none()
    {
        cs.contact.owner_id = Some(o);
        out.owners.push((cid, o));
    }
    cs.set_sales(true, cause.at);
    out.handoffs.push(HandoffDraft {
        key: format!("handoff:{cid}:{}", cause.key),
        contact_id: cid,
        model: m.map(|m| m.id),
        owner,
        assigned_by: by,
        score: r
            .map(|r| kizuna_core::scoring::round2(r.value(kizuna_core::scoring::ScorePart::Total))),
        grade: r.map(|r| r.grade.to_string()),
        at: cause.at,
        requires_stage,
    });
}
