//! Lead scoring (R-SCORE): behaviour rules (event → points, with caps per rule and per period),
//! fit rules (attribute → points, giving a grade A–D), decay (half-life, or −N points per idle
//! period), thresholds (temperature, custom names) and the MQL rule — fit first, behaviour
//! second.
//!
//! Everything here is a pure function of the contact's events, its profile and the time asked
//! about, so the engine's incremental score, the explanation of a score and a what-if run over
//! stored history all agree: they run the same [`ScoringModel::score_event`] over the same
//! events in the same order.
//!
//! The behaviour score never goes below zero. The total score is behaviour + fit.

use crate::company::Company;
use crate::contact::Contact;
use crate::error::{ValidationError, ValidationErrors};
use crate::filter::event::EventMatcher;
use crate::filter::{self, Node, Resolver};
use crate::span::Span;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Fit grade: A (best) to D.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum Grade {
    /// Ideal customer profile.
    A,
    /// Good fit.
    B,
    /// Some fit.
    C,
    /// No fit.
    #[default]
    D,
}

impl Grade {
    /// All grades, best first.
    pub const ALL: [Grade; 4] = [Grade::A, Grade::B, Grade::C, Grade::D];

    /// The letter.
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::A => "A",
            Grade::B => "B",
            Grade::C => "C",
            Grade::D => "D",
        }
    }

    /// Whether this grade is at least as good as `other` (A ≥ B ≥ C ≥ D).
    pub fn at_least(self, other: Grade) -> bool {
        self <= other
    }
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Grade {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "A" | "a" => Ok(Grade::A),
            "B" | "b" => Ok(Grade::B),
            "C" | "c" => Ok(Grade::C),
            "D" | "d" => Ok(Grade::D),
            _ => Err(format!("{s:?} is not a grade (A, B, C or D)")),
        }
    }
}

/// Which part of a score a threshold or condition reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScorePart {
    /// Behaviour + fit.
    #[default]
    Total,
    /// Behaviour points (after decay).
    Behaviour,
    /// Fit points.
    Fit,
}

impl FromStr for ScorePart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "total" => Ok(ScorePart::Total),
            "behaviour" | "behavior" => Ok(ScorePart::Behaviour),
            "fit" => Ok(ScorePart::Fit),
            _ => Err(format!(
                "{s:?} is not a score part (total, behaviour or fit)"
            )),
        }
    }
}

/// How behaviour points lose value (リードデクリメンテーション).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decay {
    /// Points halve every span.
    HalfLife(Span),
    /// `points` are taken off for every full `every` without scored activity.
    Step {
        /// Points taken off per idle period.
        points: f64,
        /// The idle period.
        every: Span,
    },
}

/// A behaviour rule: matching events earn points.
#[derive(Debug, Clone, PartialEq)]
pub struct BehaviourRule {
    /// Stable id within the model.
    pub id: String,
    /// Shown to people.
    pub label: String,
    /// Which events.
    pub matcher: EventMatcher,
    /// Points per event (may be negative).
    pub points: f64,
    /// At most this many points from this rule, ever.
    pub cap: Option<f64>,
    /// At most this many points from this rule per period (the period starts at the first
    /// award after the previous one ended).
    pub limit: Option<(f64, Span)>,
}

/// A fit rule: an attribute condition earns points.
#[derive(Debug, Clone, PartialEq)]
pub struct FitRule {
    /// Stable id within the model.
    pub id: String,
    /// Shown to people.
    pub label: String,
    /// The attribute condition.
    pub when: Node,
    /// Points when it holds.
    pub points: f64,
}

/// The MQL rule: grade at least `min_grade` (fit first), then `part` at least `score`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MqlRule {
    /// Score to reach.
    pub score: f64,
    /// Lowest grade that may become MQL.
    pub min_grade: Grade,
    /// Which score is compared.
    pub part: ScorePart,
}

/// A compiled scoring model.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringModel {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Whether the engine scores with it.
    pub enabled: bool,
    /// Whether it sets temperature and lifecycle stage (MQL) and triggers the handoff.
    pub lifecycle: bool,
    /// Behaviour rules.
    pub rules: Vec<BehaviourRule>,
    /// Fit rules.
    pub fit: Vec<FitRule>,
    /// Minimum fit points for A, B and C (below C is D).
    pub grades: [f64; 3],
    /// Decay.
    pub decay: Option<Decay>,
    /// Named thresholds on the total score, ascending (`warm` and `hot` set the temperature).
    pub thresholds: Vec<(String, f64)>,
    /// The MQL rule.
    pub mql: Option<MqlRule>,
}

// ---------------------------------------------------------------------------------------------
// The documented JSON shape.

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ModelDef {
    #[serde(default)]
    #[allow(dead_code)]
    kind: Option<KindTag>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    lifecycle: bool,
    #[serde(default)]
    behaviour: Vec<RuleDef>,
    #[serde(default)]
    fit: Vec<FitDef>,
    #[serde(default)]
    grades: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    decay: Option<DecayDef>,
    #[serde(default)]
    thresholds: BTreeMap<String, f64>,
    #[serde(default)]
    mql: Option<MqlDef>,
}

/// The optional `"kind": "scoring_model"` of a definition file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum KindTag {
    ScoringModel,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    id: String,
    #[serde(default)]
    label: Option<String>,
    event: Value,
    #[serde(default, rename = "where")]
    filters: Option<Value>,
    points: f64,
    #[serde(default)]
    cap: Option<f64>,
    #[serde(default)]
    limit: Option<LimitDef>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LimitDef {
    points: f64,
    per: Span,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FitDef {
    id: String,
    #[serde(default)]
    label: Option<String>,
    when: Value,
    points: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct DecayDef {
    #[serde(default)]
    half_life: Option<Span>,
    #[serde(default)]
    points: Option<f64>,
    #[serde(default)]
    every: Option<Span>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MqlDef {
    score: f64,
    #[serde(default)]
    min_grade: Option<String>,
    #[serde(default)]
    on: Option<String>,
}

/// Longest model name.
pub const MAX_NAME_CHARS: usize = 200;

/// Parses and checks a model definition (the documented JSON); errors name the path of each bad
/// value, under `prefix` (e.g. `definition`).
pub fn compile(
    def: &Value,
    id: Uuid,
    resolver: &dyn Resolver,
    prefix: &str,
) -> Result<ScoringModel, ValidationErrors> {
    let at = |p: &str| {
        if prefix.is_empty() {
            p.to_string()
        } else if p.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{p}")
        }
    };
    let d: ModelDef = serde_path_to_error::deserialize(def).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." {
            inner
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
                .map(&at)
                .unwrap_or_else(|| at(""))
        } else {
            at(&path)
        };
        ValidationErrors::from(ValidationError::new(field, "invalid_value", inner))
    })?;
    let mut errs = ValidationErrors::default();
    let name = d.name.trim().to_string();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        errs.push(ValidationError::new(
            at("name"),
            "invalid_name",
            "a name must be 1 to 200 characters",
        ));
    }
    let mut ids = BTreeSet::new();
    let mut rules = Vec::new();
    for (i, r) in d.behaviour.iter().enumerate() {
        let p = at(&format!("behaviour[{i}]"));
        if r.id.trim().is_empty() || !ids.insert(r.id.clone()) {
            errs.push(ValidationError::new(
                format!("{p}.id"),
                "invalid_id",
                "each rule needs an id, unique within the model",
            ));
        }
        if !r.points.is_finite() || r.points.abs() > 1e6 {
            errs.push(ValidationError::new(
                format!("{p}.points"),
                "invalid_value",
                "points must be a number between -1000000 and 1000000",
            ));
        }
        if let Some(c) = r.cap
            && (!c.is_finite() || c <= 0.0)
        {
            errs.push(ValidationError::new(
                format!("{p}.cap"),
                "invalid_value",
                "a cap must be a positive number of points",
            ));
        }
        if let Some(l) = &r.limit
            && (!l.points.is_finite() || l.points <= 0.0)
        {
            errs.push(ValidationError::new(
                format!("{p}.limit.points"),
                "invalid_value",
                "a limit must be a positive number of points",
            ));
        }
        match filter::parse_matcher(&r.event, r.filters.as_ref(), &p) {
            Ok(m) => rules.push(BehaviourRule {
                id: r.id.clone(),
                label: r.label.clone().unwrap_or_else(|| r.id.clone()),
                matcher: m,
                points: r.points,
                cap: r.cap,
                limit: r.limit.as_ref().map(|l| (l.points, l.per)),
            }),
            Err(e) => errs.0.extend(e.0),
        }
    }
    let mut fit = Vec::new();
    ids.clear();
    for (i, r) in d.fit.iter().enumerate() {
        let p = at(&format!("fit[{i}]"));
        if r.id.trim().is_empty() || !ids.insert(r.id.clone()) {
            errs.push(ValidationError::new(
                format!("{p}.id"),
                "invalid_id",
                "each rule needs an id, unique within the model",
            ));
        }
        if !r.points.is_finite() || r.points.abs() > 1e6 {
            errs.push(ValidationError::new(
                format!("{p}.points"),
                "invalid_value",
                "points must be a number between -1000000 and 1000000",
            ));
        }
        match filter::compile_attributes(&r.when, resolver, &format!("{p}.when")) {
            Ok(n) => fit.push(FitRule {
                id: r.id.clone(),
                label: r.label.clone().unwrap_or_else(|| r.id.clone()),
                when: n,
                points: r.points,
            }),
            Err(e) => errs.0.extend(e.0),
        }
    }
    let mut grades = [f64::INFINITY; 3];
    if let Some(g) = &d.grades {
        for (k, v) in g {
            let slot = match k.as_str() {
                "A" => 0,
                "B" => 1,
                "C" => 2,
                _ => {
                    errs.push(ValidationError::new(
                        at(&format!("grades.{k}")),
                        "invalid_grade",
                        "grades are given as minimum fit points for A, B and C (below C is D)",
                    ));
                    continue;
                }
            };
            grades[slot] = *v;
        }
        if !(grades[0] >= grades[1] && grades[1] >= grades[2]) {
            errs.push(ValidationError::new(
                at("grades"),
                "invalid_value",
                "grade thresholds must not increase from A to C",
            ));
        }
    }
    let decay = match &d.decay {
        None => None,
        Some(DecayDef {
            half_life: Some(h),
            points: None,
            every: None,
        }) => Some(Decay::HalfLife(*h)),
        Some(DecayDef {
            half_life: None,
            points: Some(p),
            every: Some(e),
        }) if p.is_finite() && *p > 0.0 => Some(Decay::Step {
            points: *p,
            every: *e,
        }),
        Some(_) => {
            errs.push(ValidationError::new(
                at("decay"),
                "invalid_decay",
                "decay is either {\"half_life\": \"30d\"} or {\"points\": 5, \"every\": \"30d\"} (positive points)",
            ));
            None
        }
    };
    let mut thresholds: Vec<(String, f64)> = Vec::new();
    for (k, v) in &d.thresholds {
        if !v.is_finite() || k.trim().is_empty() {
            errs.push(ValidationError::new(
                at(&format!("thresholds.{k}")),
                "invalid_value",
                "a threshold is a name and a number of points",
            ));
        } else {
            thresholds.push((k.clone(), *v));
        }
    }
    thresholds.sort_by(|a, b| a.1.total_cmp(&b.1));
    if let (Some(w), Some(h)) = (d.thresholds.get("warm"), d.thresholds.get("hot"))
        && w > h
    {
        errs.push(ValidationError::new(
            at("thresholds.warm"),
            "invalid_value",
            "warm must not be above hot",
        ));
    }
    let mql = match &d.mql {
        None => None,
        Some(m) => {
            let min_grade = match m.min_grade.as_deref().map(str::parse::<Grade>) {
                None => Grade::D,
                Some(Ok(g)) => g,
                Some(Err(e)) => {
                    errs.push(ValidationError::new(
                        at("mql.min_grade"),
                        "invalid_grade",
                        e,
                    ));
                    Grade::D
                }
            };
            let part = match m.on.as_deref().map(str::parse::<ScorePart>) {
                None => ScorePart::Total,
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    errs.push(ValidationError::new(at("mql.on"), "invalid_value", e));
                    ScorePart::Total
                }
            };
            if min_grade != Grade::D && d.grades.is_none() {
                errs.push(ValidationError::new(
                    at("mql.min_grade"),
                    "missing_grades",
                    "a minimum grade needs \"grades\" (fit points for A, B and C)",
                ));
            }
            if !m.score.is_finite() {
                errs.push(ValidationError::new(
                    at("mql.score"),
                    "invalid_value",
                    "the MQL score must be a number",
                ));
            }
            Some(MqlRule {
                score: m.score,
                min_grade,
                part,
            })
        }
    };
    if d.lifecycle && mql.is_none() && thresholds.is_empty() {
        errs.push(ValidationError::new(
            at("lifecycle"),
            "invalid_value",
            "a lifecycle model needs an \"mql\" rule or \"thresholds\" (warm/hot)",
        ));
    }
    errs.into_result(ScoringModel {
        id,
        name,
        enabled: d.enabled,
        lifecycle: d.lifecycle,
        rules,
        fit,
        grades,
        decay,
        thresholds,
        mql,
    })
}

/// The name in a model definition, if it has one (for upserts by name).
pub fn definition_name(def: &Value) -> Option<String> {
    def.get("name")
        .and_then(Value::as_str)
        .map(|s| s.trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// State and its arithmetic.

/// Per rule: points awarded ever and in the current period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleUsage {
    /// Points awarded ever.
    #[serde(rename = "t")]
    pub total: f64,
    /// Start of the current limit period (µs).
    #[serde(rename = "s", default)]
    pub period_start: i64,
    /// Points awarded in the current period.
    #[serde(rename = "p", default)]
    pub period_points: f64,
}

/// A contact's state under one model (what the engine stores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreState {
    /// Behaviour points as of `at`.
    #[serde(rename = "b")]
    pub behaviour: f64,
    /// When `behaviour` was last brought up to date (µs).
    #[serde(rename = "t")]
    pub at: i64,
    /// Last scored activity (µs), for step decay.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<i64>,
    /// Idle periods already taken off since the last activity.
    #[serde(rename = "p", default)]
    pub idle_applied: i64,
    /// Usage per rule id.
    #[serde(rename = "u", default)]
    pub usage: BTreeMap<String, RuleUsage>,
    /// Fit points.
    #[serde(rename = "f", default)]
    pub fit: f64,
    /// Grade.
    #[serde(rename = "g", default)]
    pub grade: Grade,
    /// Thresholds currently reached (to see crossings both ways).
    #[serde(rename = "x", default)]
    pub reached: BTreeSet<String>,
    /// Whether reaching the MQL rule may promote the contact (false after a promotion or a
    /// rejection until the score falls below the MQL score again).
    #[serde(rename = "m", default = "yes")]
    pub mql_armed: bool,
}

impl Default for ScoreState {
    fn default() -> Self {
        ScoreState {
            behaviour: 0.0,
            at: 0,
            last_activity: None,
            idle_applied: 0,
            usage: BTreeMap::new(),
            fit: 0.0,
            grade: Grade::D,
            reached: BTreeSet::new(),
            mql_armed: true,
        }
    }
}

/// Points a rule awarded for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Award {
    /// Index of the rule in the model.
    pub rule: usize,
    /// Points awarded (after caps).
    pub points: f64,
    /// Points the rule asks for.
    pub requested: f64,
    /// When the event happened (µs).
    pub at: i64,
}

/// A crossing of a named threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Crossing {
    /// Threshold name.
    pub threshold: String,
    /// Its value.
    pub value: f64,
    /// `up` or `down`.
    pub direction: &'static str,
}

fn half(h: Span, dt_us: i64) -> f64 {
    0.5f64.powf(dt_us as f64 / h.as_micros() as f64)
}

impl ScoringModel {
    /// Brings the behaviour points forward to `to` (µs) by applying decay.
    pub fn advance(&self, st: &mut ScoreState, to: i64) {
        if to <= st.at {
            return;
        }
        match self.decay {
            Some(Decay::HalfLife(h)) => st.behaviour *= half(h, to - st.at),
            Some(Decay::Step { points, every }) => {
                if let Some(l) = st.last_activity
                    && to > l
                {
                    let periods = (to - l) / every.as_micros();
                    let new = periods - st.idle_applied;
                    if new > 0 {
                        st.behaviour = (st.behaviour - points * new as f64).max(0.0);
                        st.idle_applied = periods;
                    }
                }
            }
            None => {}
        }
        st.at = to;
    }

    /// Scores one event (type, properties, time in µs): brings decay up to the event, applies
    /// every matching rule with its caps, and returns the awards.
    pub fn score_event(
        &self,
        st: &mut ScoreState,
        event_type: &str,
        props: &Value,
        at: i64,
    ) -> Vec<Award> {
        let mut awards = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if !r.matcher.matches(event_type, props) {
                continue;
            }
            if awards.is_empty() {
                self.advance(st, at);
            }
            let u = st.usage.entry(r.id.clone()).or_default();
            let mut pts = r.points;
            if pts > 0.0 {
                if let Some(cap) = r.cap {
                    pts = pts.min((cap - u.total).max(0.0));
                }
                if let Some((lim, per)) = r.limit {
                    if u.period_points == 0.0 || at >= u.period_start + per.as_micros() {
                        u.period_start = at;
                        u.period_points = 0.0;
                    }
                    pts = pts.min((lim - u.period_points).max(0.0));
                }
            }
            u.total += pts;
            if r.limit.is_some() && pts > 0.0 {
                u.period_points += pts;
            }
            // An event older than the state's clock counts with the decay it has had since.
            let worth = match self.decay {
                Some(Decay::HalfLife(h)) if at < st.at => pts * half(h, st.at - at),
                _ => pts,
            };
            st.behaviour = (st.behaviour + worth).max(0.0);
            if r.points > 0.0
                && let Some(Decay::Step { .. }) = self.decay
                && st.last_activity.is_none_or(|l| at >= l)
            {
                st.last_activity = Some(at);
                st.idle_applied = 0;
            }
            awards.push(Award {
                rule: i,
                points: pts,
                requested: r.points,
                at,
            });
        }
        awards
    }

    /// Fit points and the ids of the fit rules that hold for a contact.
    pub fn fit_of(&self, c: &Contact, co: Option<&Company>) -> (f64, Vec<&str>) {
        let mut pts = 0.0;
        let mut hit = Vec::new();
        for r in &self.fit {
            if filter::eval_attributes(&r.when, c, co) {
                pts += r.points;
                hit.push(r.id.as_str());
            }
        }
        (pts, hit)
    }

    /// The grade for fit points.
    pub fn grade_for(&self, fit: f64) -> Grade {
        if fit >= self.grades[0] {
            Grade::A
        } else if fit >= self.grades[1] {
            Grade::B
        } else if fit >= self.grades[2] {
            Grade::C
        } else {
            Grade::D
        }
    }

    /// Recomputes fit and grade from the profile; returns the old grade if it changed.
    pub fn refit(&self, st: &mut ScoreState, c: &Contact, co: Option<&Company>) -> Option<Grade> {
        let (fit, _) = self.fit_of(c, co);
        st.fit = fit;
        let g = self.grade_for(fit);
        let old = st.grade;
        st.grade = g;
        (old != g).then_some(old)
    }

    /// The score as it stands at `now` (without changing the state).
    pub fn reading(&self, st: &ScoreState, now: i64) -> ScoreReading {
        let mut s = st.clone();
        self.advance(&mut s, now);
        ScoreReading {
            behaviour: s.behaviour,
            fit: s.fit,
            grade: s.grade,
            decay: self.decay,
            now: now.max(s.at),
            last_activity: s.last_activity,
            idle_applied: s.idle_applied,
        }
    }

    /// Whether the MQL rule holds (fit first: the grade must reach `min_grade` whatever the
    /// behaviour).
    pub fn qualifies(&self, r: &ScoreReading) -> bool {
        match self.mql {
            Some(m) => r.grade.at_least(m.min_grade) && r.value(m.part) >= m.score,
            None => false,
        }
    }

    /// Updates which thresholds are reached at `now`; returns the crossings (both ways) and
    /// re-arms the MQL rule once the score is below it.
    pub fn crossings(&self, st: &mut ScoreState, now: i64) -> Vec<Crossing> {
        let r = self.reading(st, now);
        let total = r.value(ScorePart::Total);
        let mut out = Vec::new();
        for (name, v) in &self.thresholds {
            let reached = total >= *v;
            if reached && st.reached.insert(name.clone()) {
                out.push(Crossing {
                    threshold: name.clone(),
                    value: *v,
                    direction: "up",
                });
            } else if !reached && st.reached.remove(name) {
                out.push(Crossing {
                    threshold: name.clone(),
                    value: *v,
                    direction: "down",
                });
            }
        }
        if let Some(m) = self.mql {
            let reached = r.value(m.part) >= m.score;
            if !reached {
                st.mql_armed = true;
            }
            let name = "mql".to_string();
            if reached && st.reached.insert(name.clone()) {
                out.push(Crossing {
                    threshold: name,
                    value: m.score,
                    direction: "up",
                });
            } else if !reached && st.reached.remove(&name) {
                out.push(Crossing {
                    threshold: name,
                    value: m.score,
                    direction: "down",
                });
            }
        }
        out
    }

    /// The temperature the thresholds give (`None` when the model has neither warm nor hot).
    pub fn temperature(&self, r: &ScoreReading) -> Option<crate::contact::Temperature> {
        use crate::contact::Temperature;
        let get = |n: &str| {
            self.thresholds
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| *v)
        };
        let (warm, hot) = (get("warm"), get("hot"));
        if warm.is_none() && hot.is_none() {
            return None;
        }
        let total = r.value(ScorePart::Total);
        Some(if hot.is_some_and(|h| total >= h) {
            Temperature::Hot
        } else if warm.is_some_and(|w| total >= w) {
            Temperature::Warm
        } else {
            Temperature::Cold
        })
    }

    /// The next instant after `now` at which decay alone moves the score across one of the
    /// model's thresholds (or the MQL score), so a timer can be set for it.
    pub fn next_crossing(&self, st: &ScoreState, now: i64) -> Option<i64> {
        let r = self.reading(st, now);
        let mut next: Option<i64> = None;
        let mut consider = |t: Option<i64>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for (_, v) in &self.thresholds {
            consider(r.drop_time(ScorePart::Total, *v, false));
        }
        if let Some(m) = self.mql {
            consider(r.drop_time(m.part, m.score, false));
        }
        next
    }
}

/// A score at an instant, with what is needed to tell when decay will move it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreReading {
    /// Behaviour points at `now`.
    pub behaviour: f64,
    /// Fit points.
    pub fit: f64,
    /// Grade.
    pub grade: Grade,
    /// The model's decay.
    pub decay: Option<Decay>,
    /// The instant read (µs).
    pub now: i64,
    /// Last scored activity (step decay).
    pub last_activity: Option<i64>,
    /// Idle periods already taken off.
    pub idle_applied: i64,
}

impl ScoreReading {
    /// One part of the score.
    pub fn value(&self, part: ScorePart) -> f64 {
        match part {
            ScorePart::Total => self.behaviour + self.fit,
            ScorePart::Behaviour => self.behaviour,
            ScorePart::Fit => self.fit,
        }
    }

    /// The first instant after `now` at which `part` no longer satisfies `≥ threshold` (or
    /// `> threshold` when `strict`) through decay alone; `None` if it does not satisfy it now or
    /// never will stop.
    pub fn drop_time(&self, part: ScorePart, threshold: f64, strict: bool) -> Option<i64> {
        let holds = |v: f64| {
            if strict {
                v > threshold
            } else {
                v >= threshold
            }
        };
        if !holds(self.value(part)) || part == ScorePart::Fit {
            return None;
        }
        // Behaviour must fall below this for the part to stop holding.
        let target = match part {
            ScorePart::Total => threshold - self.fit,
            _ => threshold,
        };
        if target < 0.0 || (target == 0.0 && !strict) {
            return None; // behaviour never goes below zero
        }
        let b = self.behaviour;
        match self.decay? {
            Decay::HalfLife(h) => {
                if target == 0.0 {
                    return None; // approaches zero, never reaches it
                }
                let dt = h.as_micros() as f64 * (b / target).log2();
                // One second later the value is certainly past the threshold.
                Some(self.now + dt.ceil() as i64 + 1_000_000)
            }
            Decay::Step { points, every } => {
                let l = self.last_activity?;
                let excess = b - target;
                let steps = if strict {
                    (excess / points).ceil().max(1.0)
                } else {
                    (excess / points).floor() + 1.0
                } as i64;
                Some(l + (self.idle_applied + steps) * every.as_micros())
            }
        }
    }
}

/// One line of an explanation: which event earned how much under which rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AwardLine {
    /// The event.
    pub event_id: Uuid,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it happened.
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    /// Points awarded (after caps).
    pub points: f64,
    /// Whether a cap or limit cut the award.
    pub capped: bool,
    /// What the points are worth now, after decay.
    pub current: f64,
}

/// A behaviour rule's part of an explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleExplanation {
    /// Rule id.
    pub rule: String,
    /// Label.
    pub label: String,
    /// Points awarded by this rule (before decay).
    pub points: f64,
    /// Matching events.
    pub events: usize,
    /// The most recent awards (at most 50), newest last.
    pub awards: Vec<AwardLine>,
}

/// A fit rule's part of an explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitExplanation {
    /// Rule id.
    pub rule: String,
    /// Label.
    pub label: String,
    /// Points the rule gives.
    pub points: f64,
    /// Whether it holds for the contact.
    pub matched: bool,
}

/// Why a contact has its score under a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// Model id.
    pub model_id: Uuid,
    /// Model name.
    pub model: String,
    /// Total score now.
    pub score: f64,
    /// Behaviour points now (after decay).
    pub behaviour: f64,
    /// Behaviour points awarded before decay.
    pub behaviour_awarded: f64,
    /// Points lost to decay.
    pub decayed: f64,
    /// Fit points.
    pub fit: f64,
    /// Grade.
    pub grade: Grade,
    /// Whether the MQL rule holds now.
    pub mql_rule_met: bool,
    /// The instant explained.
    pub as_of: chrono::DateTime<chrono::Utc>,
    /// Behaviour rules that earned points, in model order.
    pub rules: Vec<RuleExplanation>,
    /// Every fit rule, matched or not.
    pub fit_rules: Vec<FitExplanation>,
}

/// An event as the scorer reads it.
#[derive(Debug, Clone)]
pub struct ScoredEvent<'a> {
    /// Id.
    pub id: Uuid,
    /// Type.
    pub event_type: &'a str,
    /// Properties.
    pub properties: &'a Value,
    /// When (µs).
    pub at: i64,
}

/// Rounds points for display (two decimals).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl ScoringModel {
    /// Replays a contact's events (in log order) through the model and explains the score at
    /// `now`.
    pub fn explain<'a>(
        &self,
        events: impl IntoIterator<Item = ScoredEvent<'a>>,
        c: &Contact,
        co: Option<&Company>,
        now: i64,
    ) -> (Explanation, ScoreState) {
        let mut st = ScoreState::default();
        self.refit(&mut st, c, co);
        let mut per_rule: Vec<RuleExplanation> = self
            .rules
            .iter()
            .map(|r| RuleExplanation {
                rule: r.id.clone(),
                label: r.label.clone(),
                points: 0.0,
                events: 0,
                awards: Vec::new(),
            })
            .collect();
        let mut awarded = 0.0;
        for e in events {
            for a in self.score_event(&mut st, e.event_type, e.properties, e.at) {
                let re = &mut per_rule[a.rule];
                re.points += a.points;
                re.events += 1;
                awarded += a.points;
                re.awards.push(AwardLine {
                    event_id: e.id,
                    event_type: e.event_type.to_string(),
                    occurred_at: crate::time::from_micros(e.at),
                    points: round2(a.points),
                    capped: a.points != a.requested,
                    current: a.points,
                });
                if re.awards.len() > 50 {
                    re.awards.remove(0);
                }
            }
        }
        let r = self.reading(&st, now);
        for re in &mut per_rule {
            for line in &mut re.awards {
                let t = line.occurred_at.timestamp_micros();
                line.current = round2(match self.decay {
                    Some(Decay::HalfLife(h)) if now > t => line.current * half(h, now - t),
                    _ => line.current,
                });
            }
            re.points = round2(re.points);
        }
        let fit_hits = self.fit_of(c, co).1;
        let exp = Explanation {
            model_id: self.id,
            model: self.name.clone(),
            score: round2(r.value(ScorePart::Total)),
            behaviour: round2(r.behaviour),
            behaviour_awarded: round2(awarded),
            decayed: round2((awarded.max(0.0) - r.behaviour).max(0.0)),
            fit: round2(r.fit),
            grade: r.grade,
            mql_rule_met: self.qualifies(&r),
            as_of: crate::time::from_micros(now),
            rules: per_rule.into_iter().filter(|r| r.events > 0).collect(),
            fit_rules: self
                .fit
                .iter()
                .map(|f| FitExplanation {
                    rule: f.id.clone(),
                    label: f.label.clone(),
                    points: f.points,
                    matched: fit_hits.contains(&f.id.as_str()),
                })
                .collect(),
        };
        (exp, st)
    }
}

/// What a what-if run found for one contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The state after the last event, brought to `now` by [`ScoringModel::crossings`].
    pub state: ScoreState,
    /// First instant each threshold (and `mql`) was reached, by name (µs).
    pub first_reached: BTreeMap<String, i64>,
    /// First instant the MQL rule (fit and score) held (µs).
    pub first_qualified: Option<i64>,
}

impl ScoringModel {
    /// Replays a contact's history: the state at `now` and when each threshold was first
    /// reached.
    pub fn replay<'a>(
        &self,
        events: impl IntoIterator<Item = ScoredEvent<'a>>,
        c: &Contact,
        co: Option<&Company>,
        now: i64,
    ) -> Replay {
        let mut st = ScoreState::default();
        self.refit(&mut st, c, co);
        let mut first_reached = BTreeMap::new();
        let mut first_qualified = None;
        for e in events {
            if self
                .score_event(&mut st, e.event_type, e.properties, e.at)
                .is_empty()
            {
                continue;
            }
            for x in self.crossings(&mut st, e.at) {
                if x.direction == "up" {
                    first_reached.entry(x.threshold).or_insert(e.at);
                }
            }
            if first_qualified.is_none() && self.qualifies(&self.reading(&st, e.at)) {
                first_qualified = Some(e.at);
            }
        }
        self.crossings(&mut st, now);
        self.advance(&mut st, now);
        Replay {
            state: st,
            first_reached,
            first_qualified,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::FieldType;
    use chrono::TimeZone;
    use serde_json::json;

    const DAY: i64 = 86_400_000_000;
    const SEED_001: &str = include_str!("../../../docs/examples/scoring-seed-001.json");
    const SEED_003: &str = include_str!("../../../docs/examples/scoring-seed-003.json");

    struct R;
    impl Resolver for R {
        fn list(&self, _: &str) -> Option<Uuid> {
            None
        }
        fn segment(&self, _: &str) -> Option<Uuid> {
            None
        }
        fn scoring_model(&self, _: &str) -> Option<Uuid> {
            None
        }
        fn custom_field(&self, _: &str) -> Option<FieldType> {
            None
        }
    }

    fn model(text: &str) -> ScoringModel {
        let v: Value = serde_json::from_str(text).unwrap();
        compile(&v, Uuid::from_u128(1), &R, "").unwrap()
    }

    fn person(title: &str, industry: &str, employees: i64) -> (Contact, Company) {
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut c = Contact::new(Uuid::from_u128(2), t);
        c.job_title = Some(title.into());
        let co = Company {
            id: Uuid::from_u128(3),
            name: "x".into(),
            name_key: "x".into(),
            domain: None,
            industry: Some(industry.into()),
            employee_count: Some(employees),
            annual_revenue: None,
            website: None,
            phone: None,
            created_at: t,
            updated_at: t,
        };
        (c, co)
    }

    /// Plays (type, properties, day) events; returns the final state and the day MQL first held.
    fn play(
        m: &ScoringModel,
        c: &Contact,
        co: &Company,
        events: &[(&str, Value, i64)],
    ) -> (ScoreState, Option<i64>) {
        let mut st = ScoreState::default();
        m.refit(&mut st, c, Some(co));
        let mut mql_day = None;
        for (t, p, day) in events {
            m.score_event(&mut st, t, p, day * DAY);
            if mql_day.is_none() && m.qualifies(&m.reading(&st, day * DAY)) {
                mql_day = Some(*day);
            }
        }
        (st, mql_day)
    }

    #[test]
    fn seed_001_fit_then_behaviour() {
        let m = model(SEED_001);
        assert!(m.lifecycle);
        // 部長 at a 120-person manufacturer: 10 + 5 + 8 = 23 fit points, grade A.
        let (c, co) = person("製造部長", "製造業", 120);
        let events = [
            ("page.viewed", json!({"path": "/products/ma"}), 0),
            ("page.viewed", json!({"path": "/products/crm"}), 0),
            ("content.downloaded", json!({"asset": "whitepaper"}), 0),
            ("webinar.attended", json!({}), 0),
        ];
        let (st, mql) = play(&m, &c, &co, &events);
        assert_eq!((st.fit, st.grade), (23.0, Grade::A));
        assert_eq!(st.behaviour, 35.0);
        assert_eq!(mql, Some(0), "58 ≥ 50 after the webinar");
        let r = m.reading(&st, 0);
        assert_eq!(m.temperature(&r), Some(crate::contact::Temperature::Hot));
        // Without the webinar: 43, warm, not MQL.
        let (st, mql) = play(&m, &c, &co, &events[..3]);
        assert_eq!((st.behaviour + st.fit, mql), (43.0, None));
        assert_eq!(
            m.temperature(&m.reading(&st, 0)),
            Some(crate::contact::Temperature::Warm)
        );
    }

    #[test]
    fn seed_001_high_activity_without_fit_is_not_mql() {
        let m = model(SEED_001);
        let (c, co) = person("担当", "小売業", 20);
        let events = [
            ("form.submitted", json!({"form": "contact"}), 0),
            ("webinar.attended", json!({}), 0),
            ("content.downloaded", json!({}), 0),
        ];
        let (st, mql) = play(&m, &c, &co, &events);
        assert_eq!((st.behaviour, st.fit, st.grade), (55.0, 0.0, Grade::D));
        assert_eq!(mql, None, "fit first: grade D never becomes MQL");
        // A 課長 at a 300-person retailer has 5 fit points (grade C) and qualifies at 50.
        let (c, co) = person("課長", "小売業", 300);
        let (st, mql) = play(&m, &c, &co, &events[..2]);
        assert_eq!((st.fit, st.grade, mql), (5.0, Grade::C, Some(0)));
    }

    #[test]
    fn seed_003_threshold_60_after_fit() {
        let m = model(SEED_003);
        let (c, co) = person("営業部長", "製造業", 1500);
        let mut events = vec![
            ("seminar.attended", json!({}), 1),
            ("form.submitted", json!({"form": "inquiry"}), 2),
            ("form.submitted", json!({"form": "document_request"}), 3),
            ("email.opened", json!({"machine": true}), 3),
            ("email.opened", json!({}), 4),
            ("seminar.attended", json!({}), 5),
        ];
        let (st, mql) = play(&m, &c, &co, &events);
        assert_eq!((st.fit, st.grade), (20.0, Grade::A));
        assert_eq!(
            st.behaviour,
            8.0 + 10.0 + 3.0 + 1.0 + 8.0,
            "machine open scores nothing"
        );
        assert_eq!(mql, None);
        events.push(("form.submitted", json!({"form": "inquiry"}), 6));
        let (st, mql) = play(&m, &c, &co, &events);
        assert_eq!(st.behaviour + st.fit, 60.0);
        assert_eq!(mql, Some(6));
        // 担当 at a 50-person firm: lots of activity, no fit.
        let (c, co) = person("担当", "製造業", 50);
        let many: Vec<_> = (0..6)
            .map(|d| ("form.submitted", json!({"form": "inquiry"}), d))
            .collect();
        let (st, mql) = play(&m, &c, &co, &many);
        assert_eq!((st.behaviour, st.grade, mql), (60.0, Grade::D, None));
    }

    #[test]
    fn caps_per_rule_and_period() {
        let m = model(SEED_003);
        let (c, co) = person("部長", "x", 10);
        // Email opens: at most 5 points per 7 days.
        let opens: Vec<_> = (0..8).map(|i| ("email.opened", json!({}), i / 4)).collect();
        let (st, _) = play(&m, &c, &co, &opens);
        assert_eq!(st.behaviour, 5.0);
        let (st, _) = play(
            &m,
            &c,
            &co,
            &[opens.clone(), vec![("email.opened", json!({}), 7)]].concat(),
        );
        assert_eq!(
            st.behaviour, 6.0,
            "a new period starts 7 days after the first award"
        );
        let v: Value = json!({"name": "capped", "behaviour": [
            {"id": "visit", "event": "page.viewed", "points": 4, "cap": 10}]});
        let capped = compile(&v, Uuid::nil(), &R, "").unwrap();
        let mut st = ScoreState::default();
        let mut got = vec![];
        for i in 0..4 {
            got.push(capped.score_event(&mut st, "page.viewed", &json!({}), i)[0].points);
        }
        assert_eq!(got, vec![4.0, 4.0, 2.0, 0.0]);
    }

    #[test]
    fn half_life_decay_and_crossings_both_ways() {
        let m = model(SEED_001); // half-life 90 days, hot at 50
        let (c, co) = person("部長", "製造業", 120); // fit 23
        let mut st = ScoreState::default();
        m.refit(&mut st, &c, Some(&co));
        m.score_event(&mut st, "form.submitted", &json!({"form": "contact"}), 0);
        let up = m.crossings(&mut st, 0);
        let names: Vec<_> = up
            .iter()
            .map(|x| (x.threshold.as_str(), x.direction))
            .collect();
        assert_eq!(names, vec![("warm", "up"), ("hot", "up"), ("mql", "up")]);
        // Total 53; falls under 50 when 30 behaviour points decay below 27:
        // 90 d × log2(30/27) ≈ 13.68 days.
        let t = m.next_crossing(&st, 0).unwrap();
        assert!((t - (13.68 * DAY as f64) as i64).abs() < DAY / 20, "{t}");
        assert!(m.crossings(&mut st, t - DAY).is_empty());
        let down = m.crossings(&mut st, t);
        let names: Vec<_> = down
            .iter()
            .map(|x| (x.threshold.as_str(), x.direction))
            .collect();
        assert_eq!(names, vec![("hot", "down"), ("mql", "down")]);
        assert!(st.mql_armed, "falling below the MQL score re-arms it");
        // After 90 days the 30 points are worth 15.
        let r = m.reading(&st, 90 * DAY);
        assert!((r.behaviour - 15.0).abs() < 1e-9);
    }

    #[test]
    fn step_decay_takes_points_per_idle_period() {
        let m = model(SEED_003); // −5 every 30 idle days
        let (c, co) = person("部長", "x", 10);
        let mut st = ScoreState::default();
        m.refit(&mut st, &c, Some(&co));
        for d in 0..3 {
            m.score_event(
                &mut st,
                "form.submitted",
                &json!({"form": "inquiry"}),
                d * DAY,
            );
        }
        assert_eq!(m.reading(&st, 31 * DAY).behaviour, 30.0);
        assert_eq!(m.reading(&st, 32 * DAY).behaviour, 25.0);
        assert_eq!(m.reading(&st, 92 * DAY).behaviour, 15.0);
        let r = m.reading(&st, 10 * DAY);
        // behaviour ≥ 22 stops holding after two deductions: day 2 + 2 × 30.
        assert_eq!(
            r.drop_time(ScorePart::Behaviour, 22.0, false),
            Some(62 * DAY)
        );
        // Activity resumes: the deductions so far stay, the idle clock restarts.
        m.score_event(&mut st, "seminar.attended", &json!({}), 70 * DAY);
        assert_eq!(m.reading(&st, 70 * DAY).behaviour, 20.0 + 8.0);
        assert_eq!(m.reading(&st, 99 * DAY).behaviour, 28.0);
        assert_eq!(m.reading(&st, 100 * DAY).behaviour, 23.0);
    }

    #[test]
    fn explanation_lists_rule_event_points_and_time() {
        let m = model(SEED_001);
        let (c, co) = person("部長", "製造業", 120);
        let ids: Vec<Uuid> = (0..3).map(|i| Uuid::from_u128(100 + i)).collect();
        let props = [
            json!({"path": "/products/a"}),
            json!({"path": "/products/b"}),
            json!({"path": "/products/c"}),
        ];
        let evs: Vec<ScoredEvent> = (0..3)
            .map(|i| ScoredEvent {
                id: ids[i],
                event_type: "page.viewed",
                properties: &props[i],
                at: i as i64 * 1_000_000,
            })
            .collect();
        let (e, st) = m.explain(evs, &c, Some(&co), 0);
        assert_eq!(e.rules.len(), 1);
        let r = &e.rules[0];
        assert_eq!(
            (r.rule.as_str(), r.points, r.events),
            ("product_page", 10.0, 3)
        );
        assert_eq!(r.awards[2].event_id, ids[2]);
        assert!(
            r.awards[2].capped && r.awards[2].points == 0.0,
            "the daily limit of 10"
        );
        assert_eq!((e.fit, e.score, e.grade), (23.0, 33.0, Grade::A));
        assert_eq!(e.fit_rules.iter().filter(|f| f.matched).count(), 3);
        assert!(
            (st.behaviour - 10.0).abs() < 1e-3,
            "two seconds of a 90-day half-life"
        );
    }

    #[test]
    fn definitions_are_checked_with_paths() {
        let bad = json!({"name": "m", "behaviour": [
            {"id": "a", "event": "page.viewed", "points": 5},
            {"id": "a", "event": "x*y", "points": "many"}]});
        let e = compile(&bad, Uuid::nil(), &R, "definition").unwrap_err();
        assert_eq!(e.0[0].field, "definition.behaviour[1].points");
        let bad = json!({"name": "m", "behaviour": [
            {"id": "a", "event": "page.viewed", "points": 5},
            {"id": "a", "event": "x*y", "points": 1}],
            "fit": [{"id": "f", "when": {"attribute": "nope", "op": "exists"}, "points": 1}],
            "decay": {"half_life": "30d", "points": 3},
            "mql": {"score": 50, "min_grade": "B"}});
        let e = compile(&bad, Uuid::nil(), &R, "").unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "behaviour[1].id",
                "behaviour[1].event",
                "fit[0].when.attribute",
                "decay",
                "mql.min_grade"
            ]
        );
        let e = compile(&json!({"name": "m", "colour": 1}), Uuid::nil(), &R, "").unwrap_err();
        assert_eq!(e.0[0].field, "colour");
    }

    #[test]
    fn replay_reports_first_crossings() {
        let m = model(SEED_003);
        let (c, co) = person("部長", "x", 2000);
        let props = json!({"form": "inquiry"});
        let evs: Vec<ScoredEvent> = (0..5)
            .map(|d| ScoredEvent {
                id: Uuid::nil(),
                event_type: "form.submitted",
                properties: &props,
                at: d * DAY,
            })
            .collect();
        let r = m.replay(evs, &c, Some(&co), 10 * DAY);
        // Fit 20 (部長, 2,000 employees) + 4 inquiries = 60 on day 3.
        assert_eq!(r.first_reached.get("hot"), Some(&(3 * DAY)));
        assert_eq!(r.first_qualified, Some(3 * DAY));
    }
}
