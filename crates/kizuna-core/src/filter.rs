//! The filter language: the documented JSON shape of segment conditions (R-SEG-1), also used by
//! fit rules and owner-assignment rules.
//!
//! A condition is a JSON object with exactly one *kind* key:
//!
//! | kind | example |
//! | --- | --- |
//! | `all` / `any` | `{"all": [c1, c2]}` — AND / OR, any depth |
//! | `not` | `{"not": c}` |
//! | `attribute` | `{"attribute": "company.employee_count", "op": "gte", "value": 100}` |
//! | `event` | `{"event": "page.viewed", "where": [{"property": "path", "op": "starts_with", "value": "/pricing"}], "count": {"gte": 3}, "within": "14d"}` |
//! | `email` | `{"email": "opened", "within": "30d"}` (machine opens left out) |
//! | `score` | `{"score": "seed-001", "op": "gte", "value": 50}` (`"part"`: total, behaviour, fit) |
//! | `grade` | `{"grade": "seed-001", "op": "gte", "value": "B"}` |
//! | `list` | `{"list": "Trade show 2026-10"}` (name or id) |
//! | `segment` | `{"segment": "Hot leads"}` (name or id; no cycles) |
//! | `consent` | `{"consent": "email", "status": "granted"}` |
//! | `sales_cycle` | `{"sales_cycle": true}` |
//!
//! [`compile`] checks a definition and resolves names through a [`Resolver`]; every problem is a
//! [`ValidationError`] whose field is the path of the bad node (`filter.all[1].any[0].op`).
//! [`Filter::eval`] answers for one contact through [`Facts`] at an instant, together with the
//! next instant at which the answer could change by time alone ([`Outcome::until`]) — the
//! engine turns that into a timer, so windows slide out without rescans. [`Deps`] says what a
//! filter reads, so an event re-checks only the segments that read what it changed.

pub mod attribute;
mod eval;
pub mod event;
pub mod op;
mod parse;

use crate::company::Company;
use crate::contact::Contact;
use crate::error::ValidationErrors;
use crate::field::FieldType;
use crate::scoring::{Grade, ScorePart, ScoreReading};
use crate::span::Span;
use attribute::Attribute;
use event::{EventMatcher, FeatureDef, FeatureState};
use op::{Cmp, Op};
use serde_json::Value;
use std::collections::BTreeSet;
use uuid::Uuid;

pub use parse::{MAX_DEPTH, MAX_NODES};

/// Looks up the names a definition refers to.
pub trait Resolver {
    /// A static list by name or id.
    fn list(&self, reference: &str) -> Option<Uuid>;
    /// A segment by name or id.
    fn segment(&self, reference: &str) -> Option<Uuid>;
    /// A scoring model by name or id.
    fn scoring_model(&self, reference: &str) -> Option<Uuid>;
    /// A custom field's type by name.
    fn custom_field(&self, name: &str) -> Option<FieldType>;
}

/// What a contact looks like to a filter.
pub trait Facts {
    /// The contact.
    fn contact(&self) -> &Contact;
    /// Its company.
    fn company(&self) -> Option<&Company>;
    /// A behaviour feature's state, if the contact has any matching event.
    fn feature(&self, key: &str) -> Option<&FeatureState>;
    /// The contact's score under a model, read at the instant being evaluated.
    fn score(&self, model: Uuid) -> Option<ScoreReading>;
    /// Static list membership.
    fn in_list(&self, list: Uuid) -> bool;
    /// Segment membership.
    fn in_segment(&self, segment: Uuid) -> bool;
    /// Latest consent for a key (`email`, `email:newsletter`): granted, withdrawn, or unknown.
    fn consent(&self, key: &str) -> Option<bool>;
    /// Whether the contact is in an active sales cycle.
    fn in_sales_cycle(&self) -> bool;
}

/// The answer of a filter, and when it could change by time alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The answer.
    pub value: bool,
    /// The earliest later instant (µs) at which the answer could change without a new event.
    pub until: Option<i64>,
}

/// A consent state a condition asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentStatus {
    /// The latest record grants it.
    Granted,
    /// The latest record withdraws it.
    Withdrawn,
    /// No record.
    Unknown,
}

/// A behaviour condition.
#[derive(Debug, Clone, PartialEq)]
pub struct EventCondition {
    /// The feature it reads.
    pub feature: FeatureDef,
    /// Count comparison (default: at least 1).
    pub count: (Cmp, u64),
    /// Sliding window for the count.
    pub within: Option<Span>,
    /// Test on the first matching event's time.
    pub first: Option<Op>,
    /// Test on the last matching event's time.
    pub last: Option<Op>,
}

/// A compiled condition node.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// AND.
    All(Vec<Node>),
    /// OR.
    Any(Vec<Node>),
    /// NOT.
    Not(Box<Node>),
    /// Attribute test.
    Attribute {
        /// Which.
        attr: Attribute,
        /// Test.
        op: Op,
    },
    /// Behaviour (also e-mail engagement).
    Event(EventCondition),
    /// Score comparison.
    Score {
        /// Model.
        model: Uuid,
        /// Part.
        part: ScorePart,
        /// Comparison.
        cmp: Cmp,
        /// Value.
        value: f64,
    },
    /// Grade in a set.
    Grade {
        /// Model.
        model: Uuid,
        /// Grades that qualify.
        allowed: Vec<Grade>,
    },
    /// Static list membership.
    List(Uuid),
    /// Segment membership.
    Segment(Uuid),
    /// Consent.
    Consent {
        /// `channel` or `channel:subscription_type`.
        key: String,
        /// Wanted state.
        status: ConsentStatus,
    },
    /// Active sales cycle (or not).
    SalesCycle(bool),
}

/// What a filter reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deps {
    /// Contact or company attributes.
    pub attributes: bool,
    /// Behaviour features by key.
    pub features: BTreeSet<String>,
    /// Scoring models.
    pub models: BTreeSet<Uuid>,
    /// Static lists.
    pub lists: BTreeSet<Uuid>,
    /// Other segments.
    pub segments: BTreeSet<Uuid>,
    /// Consent.
    pub consent: bool,
    /// Sales cycle.
    pub sales_cycle: bool,
    /// Whether time alone can change the answer (windows, relative dates, decaying scores).
    pub time: bool,
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The root condition.
    pub root: Node,
    /// What it reads.
    pub deps: Deps,
    /// The features its behaviour conditions read.
    pub features: Vec<FeatureDef>,
}

/// Checks and compiles a filter definition. Errors name paths under `prefix`.
pub fn compile(def: &Value, r: &dyn Resolver, prefix: &str) -> Result<Filter, ValidationErrors> {
    let root = parse::parse(def, r, prefix, parse::Allow::All)?;
    let mut deps = Deps::default();
    let mut features = Vec::new();
    collect(&root, &mut deps, &mut features);
    Ok(Filter {
        root,
        deps,
        features,
    })
}

/// Compiles a condition that may only read attributes (no relative dates): fit rules and
/// owner-assignment rules.
pub fn compile_attributes(
    def: &Value,
    r: &dyn Resolver,
    prefix: &str,
) -> Result<Node, ValidationErrors> {
    parse::parse(def, r, prefix, parse::Allow::AttributesOnly)
}

/// Parses an event matcher (`event` name or names, optional `where`), as behaviour rules use.
pub fn parse_matcher(
    event: &Value,
    filters: Option<&Value>,
    prefix: &str,
) -> Result<EventMatcher, ValidationErrors> {
    parse::matcher(event, filters, prefix)
}

/// Evaluates an attributes-only condition.
pub fn eval_attributes(node: &Node, c: &Contact, co: Option<&Company>) -> bool {
    eval::attributes_only(node, c, co)
}

fn collect(n: &Node, d: &mut Deps, f: &mut Vec<FeatureDef>) {
    match n {
        Node::All(xs) | Node::Any(xs) => xs.iter().for_each(|x| collect(x, d, f)),
        Node::Not(x) => collect(x, d, f),
        Node::Attribute { op, .. } => {
            d.attributes = true;
            d.time |= op.is_relative();
        }
        Node::Event(e) => {
            if d.features.insert(e.feature.key.clone()) {
                f.push(e.feature.clone());
            }
            d.time |= e.within.is_some()
                || e.first.as_ref().is_some_and(Op::is_relative)
                || e.last.as_ref().is_some_and(Op::is_relative);
        }
        Node::Score { model, .. } => {
            d.models.insert(*model);
            d.time = true; // decay
        }
        Node::Grade { model, .. } => {
            d.models.insert(*model);
        }
        Node::List(l) => {
            d.lists.insert(*l);
        }
        Node::Segment(s) => {
            d.segments.insert(*s);
        }
        Node::Consent { .. } => d.consent = true,
        Node::SalesCycle(_) => d.sales_cycle = true,
    }
}

fn remap(n: &mut Node, f: &dyn Fn(&FeatureDef) -> FeatureDef) {
    match n {
        Node::All(xs) | Node::Any(xs) => xs.iter_mut().for_each(|x| remap(x, f)),
        Node::Not(x) => remap(x, f),
        Node::Event(e) => e.feature = f(&e.feature),
        _ => {}
    }
}

impl Filter {
    /// Replaces every feature the filter reads (e.g. to share one feature, kept deep enough
    /// for all, between conditions with the same matcher); deps and features follow.
    pub fn remap_features(&mut self, f: &dyn Fn(&FeatureDef) -> FeatureDef) {
        remap(&mut self.root, f);
        let mut deps = Deps::default();
        let mut features = Vec::new();
        collect(&self.root, &mut deps, &mut features);
        self.deps = deps;
        self.features = features;
    }

    /// Evaluates for one contact at `now` (µs).
    pub fn eval(&self, facts: &dyn Facts, now: i64) -> Outcome {
        eval::eval(&self.root, facts, now)
    }
}

#[cfg(test)]
mod tests;
