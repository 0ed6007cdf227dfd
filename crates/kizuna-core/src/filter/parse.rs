//! JSON → compiled condition, with the path of every bad node.

use super::attribute::{AttrKind, Attribute, fold, level_rank, parse_instant};
use super::event::{EventMatcher, FeatureDef, PropertyFilter, TypePattern};
use super::op::{Cmp, Op, Operand};
use super::{ConsentStatus, EventCondition, Node, Resolver};
use crate::contact::{LifecycleStage, Temperature};
use crate::error::{ValidationError, ValidationErrors};
use crate::scoring::{Grade, ScorePart};
use crate::span::Span;
use serde_json::{Map, Value};

/// Deepest nesting of conditions.
pub const MAX_DEPTH: usize = 32;
/// Most condition nodes in one definition.
pub const MAX_NODES: usize = 1000;
/// Largest count a behaviour condition may compare with.
const MAX_COUNT: u64 = 1000;
/// Most values in an `in` list.
const MAX_IN: usize = 1000;

const KINDS: &[&str] = &[
    "all",
    "any",
    "not",
    "attribute",
    "event",
    "email",
    "score",
    "grade",
    "list",
    "segment",
    "consent",
    "sales_cycle",
];

const EMAIL_EVENTS: &[&str] = &[
    "sent",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "unsubscribed",
    "complained",
    "any",
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Allow {
    All,
    AttributesOnly,
}

struct Cx<'a> {
    r: &'a dyn Resolver,
    allow: Allow,
    nodes: usize,
    errs: ValidationErrors,
}

fn join(prefix: &str, part: &str) -> String {
    if prefix.is_empty() {
        part.to_string()
    } else if part.starts_with('[') {
        format!("{prefix}{part}")
    } else {
        format!("{prefix}.{part}")
    }
}

fn err(path: impl Into<String>, code: &'static str, msg: impl Into<String>) -> ValidationError {
    ValidationError::new(path, code, msg)
}

pub(super) fn parse(
    def: &Value,
    r: &dyn Resolver,
    prefix: &str,
    allow: Allow,
) -> Result<Node, ValidationErrors> {
    let mut cx = Cx {
        r,
        allow,
        nodes: 0,
        errs: ValidationErrors::default(),
    };
    let n = cx.node(def, prefix, 1);
    match n {
        Some(n) if cx.errs.is_empty() => Ok(n),
        _ => {
            if cx.errs.is_empty() {
                cx.errs
                    .push(err(prefix, "invalid_condition", "invalid condition"));
            }
            Err(cx.errs)
        }
    }
}

pub(super) fn matcher(
    event: &Value,
    filters: Option<&Value>,
    prefix: &str,
) -> Result<EventMatcher, ValidationErrors> {
    let mut errs = ValidationErrors::default();
    let types = match event_types(event, &join(prefix, "event")) {
        Ok(t) => t,
        Err(e) => {
            errs.push(e);
            vec![]
        }
    };
    let filters = match filters {
        None => vec![],
        Some(f) => match property_filters(f, &join(prefix, "where")) {
            Ok(f) => f,
            Err(e) => {
                errs.0.extend(e.0);
                vec![]
            }
        },
    };
    errs.into_result(EventMatcher { types, filters })
}

fn event_types(v: &Value, path: &str) -> Result<Vec<TypePattern>, ValidationError> {
    let one = |s: &Value, p: &str| match s {
        Value::String(s) => TypePattern::parse(s).map_err(|m| err(p, "invalid_event", m)),
        _ => Err(err(p, "invalid_event", "an event name is a string")),
    };
    match v {
        Value::Array(a) if !a.is_empty() && a.len() <= 100 => a
            .iter()
            .enumerate()
            .map(|(i, s)| one(s, &format!("{path}[{i}]")))
            .collect(),
        Value::Array(_) => Err(err(path, "invalid_event", "give 1 to 100 event names")),
        other => one(other, path).map(|t| vec![t]),
    }
}

fn property_filters(v: &Value, path: &str) -> Result<Vec<PropertyFilter>, ValidationErrors> {
    let Value::Array(items) = v else {
        return Err(err(
            path,
            "invalid_where",
            "`where` is a list of {\"property\", \"op\", \"value\"} objects",
        )
        .into());
    };
    let mut errs = ValidationErrors::default();
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Value::Object(m) = it else {
            errs.push(err(
                &p,
                "invalid_where",
                "a property filter is an object with \"property\", \"op\" and \"value\"",
            ));
            continue;
        };
        if let Some(k) = m
            .keys()
            .find(|k| !["property", "op", "value"].contains(&k.as_str()))
        {
            errs.push(err(
                join(&p, k),
                "unknown_key",
                format!("unknown key {k:?} (a property filter has property, op, value)"),
            ));
            continue;
        }
        let prop = match m.get("property") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim(),
            _ => {
                errs.push(err(
                    join(&p, "property"),
                    "required",
                    "name the event property, e.g. \"path\" or \"context.campaign\"",
                ));
                continue;
            }
        };
        match op_of(m, &p, None, false) {
            Ok(op) => out.push(PropertyFilter {
                path: prop.split('.').map(str::to_string).collect(),
                op,
            }),
            Err(e) => errs.push(e),
        }
    }
    errs.into_result(out)
}

/// Canonical operator names and their aliases.
fn op_name(s: &str) -> &str {
    match s {
        "equals" | "is" => "eq",
        "not" | "not_equals" | "is_not" => "ne",
        other => other,
    }
}

fn ops_for(kind: Option<AttrKind>) -> &'static [&'static str] {
    match kind {
        Some(AttrKind::Text) => &[
            "eq",
            "ne",
            "in",
            "not_in",
            "contains",
            "not_contains",
            "starts_with",
            "ends_with",
            "exists",
            "not_exists",
        ],
        Some(AttrKind::Number) => &[
            "eq",
            "ne",
            "in",
            "not_in",
            "gt",
            "gte",
            "lt",
            "lte",
            "between",
            "exists",
            "not_exists",
        ],
        Some(AttrKind::Instant) => &[
            "before",
            "after",
            "within_last",
            "more_than_ago",
            "within_next",
            "exists",
            "not_exists",
        ],
        Some(AttrKind::Bool) => &["eq", "ne", "exists", "not_exists"],
        Some(AttrKind::Level) => &[
            "eq",
            "ne",
            "in",
            "not_in",
            "gt",
            "gte",
            "lt",
            "lte",
            "exists",
            "not_exists",
        ],
        Some(AttrKind::Stage | AttrKind::Temperature | AttrKind::Id) => {
            &["eq", "ne", "in", "not_in", "exists", "not_exists"]
        }
        Some(AttrKind::Multi) => &[
            "contains",
            "not_contains",
            "in",
            "not_in",
            "exists",
            "not_exists",
        ],
        None => &[
            "eq",
            "ne",
            "in",
            "not_in",
            "contains",
            "not_contains",
            "starts_with",
            "ends_with",
            "exists",
            "not_exists",
            "gt",
            "gte",
            "lt",
            "lte",
            "between",
            "before",
            "after",
        ],
    }
}

/// One scalar operand for a kind of value.
fn operand(v: &Value, kind: Option<AttrKind>, path: &str) -> Result<Operand, ValidationError> {
    let bad = |what: &str| err(path, "invalid_value", format!("expected {what}"));
    match kind {
        Some(AttrKind::Number) => v.as_f64().map(Operand::Number).ok_or_else(|| bad("a number")),
        Some(AttrKind::Bool) => v.as_bool().map(Operand::Bool).ok_or_else(|| bad("true or false")),
        Some(AttrKind::Level) => v
            .as_str()
            .and_then(level_rank)
            .map(Operand::Number)
            .ok_or_else(|| {
                bad("a job level: staff, lead, section_manager, manager, director or executive")
            }),
        Some(AttrKind::Stage) => v
            .as_str()
            .and_then(|s| s.parse::<LifecycleStage>().ok())
            .map(|s| Operand::Text(s.as_str().into()))
            .ok_or_else(|| {
                bad("a lifecycle stage (subscriber, lead, mql, sql, opportunity, customer, evangelist, disqualified, dormant)")
            }),
        Some(AttrKind::Temperature) => v
            .as_str()
            .and_then(|s| s.parse::<Temperature>().ok())
            .map(|t| Operand::Text(t.as_str().into()))
            .ok_or_else(|| bad("a temperature (cold, warm, hot)")),
        Some(AttrKind::Id) => v
            .as_str()
            .and_then(|s| s.trim().parse::<uuid::Uuid>().ok())
            .map(|u| Operand::Text(u.to_string()))
            .ok_or_else(|| bad("an id (UUID)")),
        Some(AttrKind::Text | AttrKind::Multi) => match v {
            Value::String(s) => Ok(Operand::Text(fold(s))),
            Value::Number(n) => Ok(Operand::Text(n.to_string())),
            _ => Err(bad("text")),
        },
        Some(AttrKind::Instant) => Err(bad("a date")),
        None => match v {
            Value::String(s) => Ok(Operand::Text(fold(s))),
            Value::Number(n) => n.as_f64().map(Operand::Number).ok_or_else(|| bad("a number")),
            Value::Bool(b) => Ok(Operand::Bool(*b)),
            _ => Err(bad("text, a number or true/false")),
        },
    }
}

/// Parses `op` and `value` of an object (attribute test or property filter).
fn op_of(
    m: &Map<String, Value>,
    path: &str,
    kind: Option<AttrKind>,
    allow_relative: bool,
) -> Result<Op, ValidationError> {
    let op_path = join(path, "op");
    let raw = match m.get("op") {
        Some(Value::String(s)) => s.trim(),
        Some(_) => return Err(err(op_path, "invalid_operator", "op is a string")),
        None => return Err(err(op_path, "required", "op is required")),
    };
    let name = op_name(raw);
    let allowed = ops_for(kind);
    if !allowed.contains(&name) {
        let relative = ["within_last", "more_than_ago", "within_next"].contains(&name);
        return Err(err(
            op_path,
            "invalid_operator",
            if relative && kind.is_none() {
                "relative dates are not available on event properties".to_string()
            } else {
                format!(
                    "{raw:?} does not apply here (use one of: {})",
                    allowed.join(", ")
                )
            },
        ));
    }
    let vpath = join(path, "value");
    let value = m.get("value");
    let need = || err(&vpath, "required", format!("{name} needs a value"));
    let text = |v: Option<&Value>| -> Result<String, ValidationError> {
        match v {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(fold(s)),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(_) => Err(err(&vpath, "invalid_value", "expected non-empty text")),
            None => Err(need()),
        }
    };
    let number = |v: Option<&Value>| -> Result<f64, ValidationError> {
        match (v, kind) {
            (Some(Value::String(s)), Some(AttrKind::Level)) => level_rank(s).ok_or_else(|| {
                err(
                    &vpath,
                    "invalid_value",
                    "expected a job level: staff, lead, section_manager, manager, director or executive",
                )
            }),
            (Some(v), _) => v
                .as_f64()
                .ok_or_else(|| err(&vpath, "invalid_value", "expected a number")),
            (None, _) => Err(need()),
        }
    };
    Ok(match name {
        "eq" | "ne" => {
            let o = operand(value.ok_or_else(need)?, kind, &vpath)?;
            if name == "eq" { Op::Eq(o) } else { Op::Ne(o) }
        }
        "in" | "not_in" => {
            let Some(Value::Array(a)) = value else {
                return Err(err(
                    &vpath,
                    "invalid_value",
                    format!("{name} needs a list of values"),
                ));
            };
            if a.is_empty() || a.len() > MAX_IN {
                return Err(err(&vpath, "invalid_value", "give 1 to 1000 values"));
            }
            let os = a
                .iter()
                .enumerate()
                .map(|(i, v)| operand(v, kind, &format!("{vpath}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            if name == "in" {
                Op::In(os)
            } else {
                Op::NotIn(os)
            }
        }
        "contains" => Op::Contains(text(value)?),
        "not_contains" => Op::NotContains(text(value)?),
        "starts_with" => Op::StartsWith(text(value)?),
        "ends_with" => Op::EndsWith(text(value)?),
        "exists" | "not_exists" => {
            if value.is_some() {
                return Err(err(
                    &vpath,
                    "unexpected_value",
                    format!("{name} takes no value"),
                ));
            }
            if name == "exists" {
                Op::Exists
            } else {
                Op::NotExists
            }
        }
        "gt" | "gte" | "lt" | "lte" => Op::Cmp(Cmp::parse(name).unwrap_or(Cmp::Eq), number(value)?),
        "between" => match value {
            Some(Value::Array(a)) if a.len() == 2 => {
                let (x, y) = (number(Some(&a[0]))?, number(Some(&a[1]))?);
                if x > y {
                    return Err(err(&vpath, "invalid_value", "between needs [low, high]"));
                }
                Op::Between(x, y)
            }
            _ => return Err(err(&vpath, "invalid_value", "between needs [low, high]")),
        },
        "before" | "after" => {
            let t = value
                .and_then(Value::as_str)
                .and_then(parse_instant)
                .ok_or_else(|| {
                    err(
                        &vpath,
                        "invalid_value",
                        "expected a date (2026-10-01) or an RFC 3339 time",
                    )
                })?;
            if name == "before" {
                Op::Before(t)
            } else {
                Op::After(t)
            }
        }
        "within_last" | "more_than_ago" | "within_next" => {
            if !allow_relative {
                return Err(err(
                    op_path,
                    "invalid_operator",
                    "relative dates are not available here (the result must not change with time)",
                ));
            }
            let s: Span = value
                .and_then(Value::as_str)
                .ok_or_else(need)?
                .parse()
                .map_err(|m: String| err(&vpath, "invalid_value", m))?;
            match name {
                "within_last" => Op::WithinLast(s),
                "more_than_ago" => Op::MoreThanAgo(s),
                _ => Op::WithinNext(s),
            }
        }
        _ => unreachable!("checked against the allowed list"),
    })
}

fn time_test(v: &Value, path: &str) -> Result<Op, ValidationError> {
    let Value::Object(m) = v else {
        return Err(err(
            path,
            "invalid_value",
            "write a time test, e.g. {\"within_last\": \"30d\"} or {\"before\": \"2026-10-01\"}",
        ));
    };
    if m.len() != 1 {
        return Err(err(
            path,
            "invalid_value",
            "give exactly one of before, after, within_last, more_than_ago",
        ));
    }
    let (k, val) = m.iter().next().expect("one entry");
    let mut one = Map::new();
    one.insert("op".into(), Value::String(k.clone()));
    one.insert("value".into(), val.clone());
    if !["before", "after", "within_last", "more_than_ago"].contains(&k.as_str()) {
        return Err(err(
            join(path, k),
            "invalid_operator",
            "use before, after, within_last or more_than_ago",
        ));
    }
    op_of(&one, path, Some(AttrKind::Instant), true).map_err(|mut e| {
        e.field = join(path, k);
        e
    })
}

fn count_of(v: &Value, path: &str) -> Result<(Cmp, u64), ValidationError> {
    let n = |x: &Value, p: &str| {
        x.as_u64().filter(|n| *n <= MAX_COUNT).ok_or_else(|| {
            err(
                p,
                "invalid_value",
                "a count is a whole number from 0 to 1000",
            )
        })
    };
    match v {
        Value::Number(_) => Ok((Cmp::Gte, n(v, path)?)),
        Value::Object(m) if m.len() == 1 => {
            let (k, x) = m.iter().next().expect("one entry");
            let c = Cmp::parse(k).ok_or_else(|| {
                err(
                    join(path, k),
                    "invalid_operator",
                    "a count is compared with eq, gt, gte, lt or lte",
                )
            })?;
            Ok((c, n(x, &join(path, k))?))
        }
        _ => Err(err(
            path,
            "invalid_value",
            "write a count as 3 or {\"gte\": 3}",
        )),
    }
}

impl Cx<'_> {
    fn fail(&mut self, e: ValidationError) -> Option<Node> {
        self.errs.push(e);
        None
    }

    fn node(&mut self, v: &Value, path: &str, depth: usize) -> Option<Node> {
        if depth > MAX_DEPTH {
            return self.fail(err(
                path,
                "too_deep",
                format!("conditions nest at most {MAX_DEPTH} levels deep"),
            ));
        }
        self.nodes += 1;
        if self.nodes == MAX_NODES + 1 {
            return self.fail(err(
                path,
                "too_many_conditions",
                format!("a definition has at most {MAX_NODES} conditions"),
            ));
        } else if self.nodes > MAX_NODES {
            return None;
        }
        let Value::Object(m) = v else {
            return self.fail(err(
                path,
                "invalid_condition",
                format!(
                    "a condition is a JSON object with one of the keys {}",
                    KINDS.join(", ")
                ),
            ));
        };
        let kinds: Vec<&str> = KINDS
            .iter()
            .copied()
            .filter(|k| m.contains_key(*k))
            .collect();
        let kind = match kinds.as_slice() {
            [k] => *k,
            [] => {
                return self.fail(err(
                    path,
                    "invalid_condition",
                    format!("a condition needs one of the keys {}", KINDS.join(", ")),
                ));
            }
            several => {
                return self.fail(err(
                    path,
                    "invalid_condition",
                    format!(
                        "a condition has exactly one kind, not {}",
                        several.join(" and ")
                    ),
                ));
            }
        };
        if self.allow == Allow::AttributesOnly
            && !["all", "any", "not", "attribute"].contains(&kind)
        {
            return self.fail(err(
                join(path, kind),
                "not_allowed_here",
                "only attribute conditions (with all, any, not) are allowed here",
            ));
        }
        let extra: &[&str] = match kind {
            "all" | "any" | "not" | "list" | "segment" | "sales_cycle" => &[],
            "attribute" => &["op", "value"],
            "event" => &["where", "count", "within", "first", "last"],
            "email" => &["where", "count", "within", "include_machine"],
            "score" => &["part", "op", "value"],
            "grade" => &["op", "value"],
            "consent" => &["subscription_type", "status"],
            _ => &[],
        };
        if let Some(k) = m
            .keys()
            .find(|k| *k != kind && !extra.contains(&k.as_str()))
        {
            return self.fail(err(
                join(path, k),
                "unknown_key",
                format!("unknown key {k:?} in a {kind} condition"),
            ));
        }
        let here = join(path, kind);
        let val = &m[kind];
        match kind {
            "all" | "any" => {
                let Value::Array(items) = val else {
                    return self.fail(err(
                        here,
                        "invalid_condition",
                        format!("{kind} takes a list of conditions"),
                    ));
                };
                if items.is_empty() {
                    return self.fail(err(
                        here,
                        "invalid_condition",
                        format!("{kind} needs at least one condition"),
                    ));
                }
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, it) in items.iter().enumerate() {
                    match self.node(it, &format!("{here}[{i}]"), depth + 1) {
                        Some(n) => out.push(n),
                        None => ok = false,
                    }
                }
                ok.then(|| {
                    if kind == "all" {
                        Node::All(out)
                    } else {
                        Node::Any(out)
                    }
                })
            }
            "not" => self
                .node(val, &here, depth + 1)
                .map(|n| Node::Not(Box::new(n))),
            "attribute" => {
                let Value::String(name) = val else {
                    return self.fail(err(
                        here,
                        "invalid_attribute",
                        "attribute is a name, e.g. \"job_title\"",
                    ));
                };
                let r = self.r;
                let attr = match Attribute::parse(name.trim(), |f| r.custom_field(f)) {
                    Ok(a) => a,
                    Err(msg) => return self.fail(err(here, "unknown_attribute", msg)),
                };
                match op_of(m, path, Some(attr.kind()), self.allow == Allow::All) {
                    Ok(op) => Some(Node::Attribute { attr, op }),
                    Err(e) => self.fail(e),
                }
            }
            "event" | "email" => self.event(kind, m, path),
            "score" => {
                let model = self.model_ref(val, &here)?;
                let part = match m.get("part") {
                    None => ScorePart::Total,
                    Some(Value::String(s)) => match s.parse() {
                        Ok(p) => p,
                        Err(msg) => {
                            return self.fail(err(join(path, "part"), "invalid_value", msg));
                        }
                    },
                    Some(_) => {
                        return self.fail(err(
                            join(path, "part"),
                            "invalid_value",
                            "part is total, behaviour or fit",
                        ));
                    }
                };
                let cmp = match m
                    .get("op")
                    .and_then(Value::as_str)
                    .map(op_name)
                    .and_then(Cmp::parse)
                {
                    Some(c) => c,
                    None => {
                        return self.fail(err(
                            join(path, "op"),
                            "invalid_operator",
                            "compare a score with eq, gt, gte, lt or lte",
                        ));
                    }
                };
                match m.get("value").and_then(Value::as_f64) {
                    Some(value) => Some(Node::Score {
                        model,
                        part,
                        cmp,
                        value,
                    }),
                    None => self.fail(err(
                        join(path, "value"),
                        "invalid_value",
                        "a score is compared with a number",
                    )),
                }
            }
            "grade" => {
                let model = self.model_ref(val, &here)?;
                let op = m
                    .get("op")
                    .and_then(Value::as_str)
                    .map(op_name)
                    .unwrap_or("eq");
                let vpath = join(path, "value");
                let grade = |v: &Value| v.as_str().and_then(|s| s.parse::<Grade>().ok());
                let allowed: Vec<Grade> = match op {
                    "in" | "not_in" => {
                        let Some(list) = m
                            .get("value")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().map(grade).collect::<Option<Vec<_>>>())
                            .and_then(|x| x)
                            .filter(|l| !l.is_empty())
                        else {
                            return self.fail(err(
                                vpath,
                                "invalid_value",
                                "give a list of grades, e.g. [\"A\", \"B\"]",
                            ));
                        };
                        Grade::ALL
                            .into_iter()
                            .filter(|g| list.contains(g) == (op == "in"))
                            .collect()
                    }
                    "eq" | "ne" | "gt" | "gte" | "lt" | "lte" => {
                        let Some(g) = m.get("value").and_then(grade) else {
                            return self.fail(err(
                                vpath,
                                "invalid_value",
                                "a grade is A, B, C or D",
                            ));
                        };
                        Grade::ALL
                            .into_iter()
                            .filter(|x| match op {
                                "eq" => *x == g,
                                "ne" => *x != g,
                                "gte" => x.at_least(g),
                                "gt" => x.at_least(g) && *x != g,
                                "lte" => g.at_least(*x),
                                _ => g.at_least(*x) && *x != g,
                            })
                            .collect()
                    }
                    _ => {
                        return self.fail(err(
                            join(path, "op"),
                            "invalid_operator",
                            "compare a grade with eq, ne, gt, gte, lt, lte, in or not_in",
                        ));
                    }
                };
                Some(Node::Grade { model, allowed })
            }
            "list" => {
                let Some(s) = val.as_str() else {
                    return self.fail(err(here, "invalid_value", "name the list (or give its id)"));
                };
                match self.r.list(s.trim()) {
                    Some(id) => Some(Node::List(id)),
                    None => self.fail(err(here, "unknown_list", format!("there is no list {s:?}"))),
                }
            }
            "segment" => {
                let Some(s) = val.as_str() else {
                    return self.fail(err(
                        here,
                        "invalid_value",
                        "name the segment (or give its id)",
                    ));
                };
                match self.r.segment(s.trim()) {
                    Some(id) => Some(Node::Segment(id)),
                    None => self.fail(err(
                        here,
                        "unknown_segment",
                        format!("there is no segment {s:?}"),
                    )),
                }
            }
            "consent" => {
                let channel = match val.as_str().map(|s| s.trim().to_lowercase()) {
                    Some(c)
                        if !c.is_empty()
                            && c.chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
                    {
                        c
                    }
                    _ => {
                        return self.fail(err(
                            here,
                            "invalid_value",
                            "name the channel, e.g. \"email\"",
                        ));
                    }
                };
                let key = match m.get("subscription_type") {
                    None => channel,
                    Some(Value::String(t)) if !t.trim().is_empty() => {
                        format!("{channel}:{}", t.trim().to_lowercase())
                    }
                    Some(_) => {
                        return self.fail(err(
                            join(path, "subscription_type"),
                            "invalid_value",
                            "a subscription type is a name",
                        ));
                    }
                };
                let status = match m.get("status").and_then(Value::as_str) {
                    None | Some("granted") => ConsentStatus::Granted,
                    Some("withdrawn") => ConsentStatus::Withdrawn,
                    Some("unknown") => ConsentStatus::Unknown,
                    Some(_) => {
                        return self.fail(err(
                            join(path, "status"),
                            "invalid_value",
                            "status is granted, withdrawn or unknown",
                        ));
                    }
                };
                Some(Node::Consent { key, status })
            }
            "sales_cycle" => match val.as_bool() {
                Some(b) => Some(Node::SalesCycle(b)),
                None => self.fail(err(here, "invalid_value", "sales_cycle is true or false")),
            },
            _ => None,
        }
    }

    fn model_ref(&mut self, v: &Value, path: &str) -> Option<uuid::Uuid> {
        let Some(s) = v.as_str() else {
            self.errs.push(err(
                path,
                "invalid_value",
                "name the scoring model (or give its id)",
            ));
            return None;
        };
        match self.r.scoring_model(s.trim()) {
            Some(id) => Some(id),
            None => {
                self.errs.push(err(
                    path,
                    "unknown_scoring_model",
                    format!("there is no scoring model {s:?}"),
                ));
                None
            }
        }
    }

    fn event(&mut self, kind: &str, m: &Map<String, Value>, path: &str) -> Option<Node> {
        let mut matcher = if kind == "email" {
            let what = m[kind].as_str().map(str::trim).unwrap_or("");
            if !EMAIL_EVENTS.contains(&what) {
                return self.fail(err(
                    join(path, kind),
                    "invalid_value",
                    format!("email engagement is one of: {}", EMAIL_EVENTS.join(", ")),
                ));
            }
            let t = if what == "any" {
                "email.*".to_string()
            } else {
                format!("email.{what}")
            };
            match matcher(&Value::String(t), m.get("where"), path) {
                Ok(mt) => mt,
                Err(e) => {
                    self.errs.0.extend(e.0);
                    return None;
                }
            }
        } else {
            match matcher(&m[kind], m.get("where"), path) {
                Ok(mt) => mt,
                Err(e) => {
                    self.errs.0.extend(e.0);
                    return None;
                }
            }
        };
        if kind == "email" {
            match m.get("include_machine") {
                None | Some(Value::Bool(false)) => matcher.filters.push(PropertyFilter {
                    path: vec!["machine".into()],
                    op: Op::Ne(Operand::Bool(true)),
                }),
                Some(Value::Bool(true)) => {}
                Some(_) => {
                    return self.fail(err(
                        join(path, "include_machine"),
                        "invalid_value",
                        "include_machine is true or false",
                    ));
                }
            }
        }
        let count = match m.get("count") {
            None => (Cmp::Gte, 1),
            Some(v) => match count_of(v, &join(path, "count")) {
                Ok(c) => c,
                Err(e) => return self.fail(e),
            },
        };
        let within = match m.get("within") {
            None => None,
            Some(Value::String(s)) => match s.parse::<Span>() {
                Ok(s) => Some(s),
                Err(msg) => return self.fail(err(join(path, "within"), "invalid_value", msg)),
            },
            Some(_) => {
                return self.fail(err(
                    join(path, "within"),
                    "invalid_value",
                    "within is a duration such as \"14d\"",
                ));
            }
        };
        let mut times = [None, None];
        for (i, k) in ["first", "last"].into_iter().enumerate() {
            if let Some(v) = m.get(k) {
                match time_test(v, &join(path, k)) {
                    Ok(op) => times[i] = Some(op),
                    Err(e) => return self.fail(e),
                }
            }
        }
        let keep = if within.is_some() {
            ((count.1 + 1).next_power_of_two() as usize).max(2)
        } else {
            0
        };
        let [first, last] = times;
        Some(Node::Event(EventCondition {
            feature: FeatureDef::new(matcher, keep),
            count,
            within,
            first,
            last,
        }))
    }
}
