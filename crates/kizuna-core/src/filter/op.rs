//! Operators: how one value is tested, and when (by time alone) the answer could change.

use super::Outcome;
use super::attribute::{AttrValue, fold, folded};
use crate::span::Span;
use serde::Serialize;

/// A comparison of numbers (and of counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cmp {
    /// =
    Eq,
    /// >
    Gt,
    /// ≥
    Gte,
    /// <
    Lt,
    /// ≤
    Lte,
}

impl Cmp {
    /// `a <cmp> b`.
    pub fn test(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Gt => a > b,
            Cmp::Gte => a >= b,
            Cmp::Lt => a < b,
            Cmp::Lte => a <= b,
        }
    }

    /// Parses `eq`, `gt`, `gte`, `lt`, `lte`.
    pub fn parse(s: &str) -> Option<Cmp> {
        Some(match s {
            "eq" | "equals" => Cmp::Eq,
            "gt" => Cmp::Gt,
            "gte" => Cmp::Gte,
            "lt" => Cmp::Lt,
            "lte" => Cmp::Lte,
            _ => return None,
        })
    }
}

/// A literal a value is compared with (text already folded).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Operand {
    /// Folded text.
    Text(String),
    /// Number.
    Number(f64),
    /// Boolean.
    Bool(bool),
}

/// A compiled operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal (text: after folding).
    Eq(Operand),
    /// Not equal (a missing value is not equal).
    Ne(Operand),
    /// Equal to one of.
    In(Vec<Operand>),
    /// Equal to none of (a missing value qualifies).
    NotIn(Vec<Operand>),
    /// Text contains (multi-select: has the option).
    Contains(String),
    /// Does not contain (a missing value qualifies).
    NotContains(String),
    /// Text starts with.
    StartsWith(String),
    /// Text ends with.
    EndsWith(String),
    /// Has a value.
    Exists,
    /// Has no value.
    NotExists,
    /// Numeric comparison.
    Cmp(Cmp, f64),
    /// Inclusive numeric range.
    Between(f64, f64),
    /// Instant strictly before (µs).
    Before(i64),
    /// Instant strictly after (µs).
    After(i64),
    /// Instant within the last span (and not in the future).
    WithinLast(Span),
    /// Instant more than the span ago.
    MoreThanAgo(Span),
    /// Instant within the next span (and not in the past).
    WithinNext(Span),
}

fn eq(v: &AttrValue<'_>, o: &Operand) -> bool {
    match (v, o) {
        (AttrValue::Missing, _) => false,
        (AttrValue::Text(s), Operand::Text(t)) => folded(s) == *t,
        (AttrValue::Text(s), Operand::Number(n)) => s.trim().parse::<f64>().ok() == Some(*n),
        (AttrValue::Text(s), Operand::Bool(b)) => fold(s) == b.to_string(),
        (AttrValue::Number(a), Operand::Number(b)) => a == b,
        (AttrValue::Number(a), Operand::Text(t)) => t.parse::<f64>().ok() == Some(*a),
        (AttrValue::Bool(a), Operand::Bool(b)) => a == b,
        (AttrValue::Bool(a), Operand::Text(t)) => a.to_string() == *t,
        (AttrValue::Multi(items), o) => items
            .iter()
            .any(|i| eq(&AttrValue::Text(std::borrow::Cow::Borrowed(i)), o)),
        _ => false,
    }
}

fn text_test(v: &AttrValue<'_>, f: impl Fn(&str) -> bool) -> bool {
    match v {
        AttrValue::Text(s) => f(&folded(s)),
        AttrValue::Multi(items) => items.iter().any(|i| f(&folded(i))),
        AttrValue::Number(n) => f(&n.to_string()),
        _ => false,
    }
}

fn fixed(value: bool) -> Outcome {
    Outcome { value, until: None }
}

impl Op {
    /// Whether the operator reads the clock (relative dates).
    pub fn is_relative(&self) -> bool {
        matches!(
            self,
            Op::WithinLast(_) | Op::MoreThanAgo(_) | Op::WithinNext(_)
        )
    }

    /// Tests a value at `now` (µs).
    pub fn test(&self, v: &AttrValue<'_>, now: i64) -> Outcome {
        match self {
            Op::Eq(o) => fixed(eq(v, o)),
            Op::Ne(o) => fixed(!eq(v, o)),
            Op::In(os) => fixed(os.iter().any(|o| eq(v, o))),
            Op::NotIn(os) => fixed(!os.iter().any(|o| eq(v, o))),
            Op::Contains(s) => fixed(match v {
                AttrValue::Multi(items) => items.iter().any(|i| folded(i) == *s),
                _ => text_test(v, |t| t.contains(s.as_str())),
            }),
            Op::NotContains(s) => fixed(!match v {
                AttrValue::Multi(items) => items.iter().any(|i| folded(i) == *s),
                _ => text_test(v, |t| t.contains(s.as_str())),
            }),
            Op::StartsWith(s) => fixed(text_test(v, |t| t.starts_with(s.as_str()))),
            Op::EndsWith(s) => fixed(text_test(v, |t| t.ends_with(s.as_str()))),
            Op::Exists => fixed(!matches!(v, AttrValue::Missing)),
            Op::NotExists => fixed(matches!(v, AttrValue::Missing)),
            Op::Cmp(c, n) => fixed(v.as_number().is_some_and(|x| c.test(x, *n))),
            Op::Between(a, b) => fixed(v.as_number().is_some_and(|x| *a <= x && x <= *b)),
            Op::Before(t) => fixed(v.as_instant().is_some_and(|x| x < *t)),
            Op::After(t) => fixed(v.as_instant().is_some_and(|x| x > *t)),
            Op::WithinLast(_) | Op::MoreThanAgo(_) | Op::WithinNext(_) => match v.as_instant() {
                Some(t) => relative(self, t, now),
                None => fixed(false),
            },
        }
    }
}

/// A relative date test on instant `t` at `now`, with the next instant the answer flips.
pub fn relative(op: &Op, t: i64, now: i64) -> Outcome {
    let future = |x: i64| (x > now).then_some(x);
    match op {
        Op::WithinLast(w) => {
            let w = w.as_micros();
            Outcome {
                value: t <= now && now - w <= t,
                // Becomes true when t arrives; false once t is older than the window.
                until: if t > now { Some(t) } else { future(t + w + 1) },
            }
        }
        Op::MoreThanAgo(w) => {
            let w = w.as_micros();
            Outcome {
                value: t < now - w,
                until: future(t + w + 1),
            }
        }
        Op::WithinNext(w) => {
            let w = w.as_micros();
            Outcome {
                value: now <= t && t <= now + w,
                until: if now < t - w {
                    Some(t - w)
                } else {
                    future(t + 1)
                },
            }
        }
        _ => Outcome {
            value: false,
            until: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn text(s: &str) -> AttrValue<'_> {
        AttrValue::Text(Cow::Borrowed(s))
    }

    #[test]
    fn text_ops_fold_width_and_case() {
        assert!(
            Op::Eq(Operand::Text("abc".into()))
                .test(&text("ＡＢＣ"), 0)
                .value
        );
        assert!(Op::Contains("部長".into()).test(&text("営業部長"), 0).value);
        assert!(
            Op::StartsWith("/pricing".into())
                .test(&text("/Pricing/enterprise"), 0)
                .value
        );
        assert!(
            !Op::StartsWith("/pricing".into())
                .test(&AttrValue::Missing, 0)
                .value
        );
        assert!(
            Op::NotContains("x".into())
                .test(&AttrValue::Missing, 0)
                .value
        );
        assert!(
            Op::Ne(Operand::Text("a".into()))
                .test(&AttrValue::Missing, 0)
                .value
        );
    }

    #[test]
    fn numbers_and_ranges() {
        let v = AttrValue::Number(120.0);
        assert!(Op::Cmp(Cmp::Gte, 100.0).test(&v, 0).value);
        assert!(!Op::Cmp(Cmp::Lt, 100.0).test(&v, 0).value);
        assert!(Op::Between(100.0, 300.0).test(&v, 0).value);
        assert!(Op::Cmp(Cmp::Gt, 5.0).test(&text("7"), 0).value);
    }

    #[test]
    fn relative_dates_say_when_they_flip() {
        let day = 86_400_000_000i64;
        let w = Span::days(30);
        // Created 10 days ago: within the last 30 days until day 30 (+1 µs).
        let o = Op::WithinLast(w).test(&AttrValue::Instant(0), 10 * day);
        assert!(o.value);
        assert_eq!(o.until, Some(30 * day + 1));
        let o = Op::MoreThanAgo(w).test(&AttrValue::Instant(0), 10 * day);
        assert!(!o.value);
        assert_eq!(o.until, Some(30 * day + 1));
        // A renewal date 100 days ahead enters "within the next 90 days" at day 10.
        let o = Op::WithinNext(Span::days(90)).test(&AttrValue::Instant(100 * day), 0);
        assert!(!o.value);
        assert_eq!(o.until, Some(10 * day));
    }
}
