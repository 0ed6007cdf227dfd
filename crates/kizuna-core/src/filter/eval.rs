//! Evaluation of compiled conditions for one contact at one instant.

use super::attribute::AttrValue;
use super::event::FeatureState;
use super::op::Cmp;
use super::{ConsentStatus, EventCondition, Facts, Node, Outcome};
use crate::company::Company;
use crate::contact::Contact;
use crate::scoring::Grade;

fn fixed(value: bool) -> Outcome {
    Outcome { value, until: None }
}

/// Combines children for AND (`and` = true) or OR, keeping the earliest instant at which the
/// result could change:
/// - while AND holds (or OR fails), any child flipping flips the result: the earliest child;
/// - while AND fails (or OR holds), every deciding child must flip: the latest of them, and
///   never if one of them never flips by time.
fn combine(outs: &[Outcome], and: bool) -> Outcome {
    let value = if and {
        outs.iter().all(|o| o.value)
    } else {
        outs.iter().any(|o| o.value)
    };
    let until = if value == and {
        outs.iter().filter_map(|o| o.until).min()
    } else {
        let deciding = outs.iter().filter(|o| o.value != and);
        let mut max = None;
        let mut never = false;
        for o in deciding {
            match o.until {
                None => never = true,
                Some(t) => max = Some(max.map_or(t, |m: i64| m.max(t))),
            }
        }
        if never { None } else { max }
    };
    Outcome { value, until }
}

pub(super) fn eval(n: &Node, f: &dyn Facts, now: i64) -> Outcome {
    match n {
        Node::All(xs) => combine(
            &xs.iter().map(|x| eval(x, f, now)).collect::<Vec<_>>(),
            true,
        ),
        Node::Any(xs) => combine(
            &xs.iter().map(|x| eval(x, f, now)).collect::<Vec<_>>(),
            false,
        ),
        Node::Not(x) => {
            let o = eval(x, f, now);
            Outcome {
                value: !o.value,
                until: o.until,
            }
        }
        Node::Attribute { attr, op } => op.test(&attr.value(f.contact(), f.company()), now),
        Node::Event(e) => event(e, f.feature(&e.feature.key), now),
        Node::Score {
            model,
            part,
            cmp,
            value,
        } => match f.score(*model) {
            None => fixed(cmp.test(0.0, *value)),
            Some(r) => {
                let v = r.value(*part);
                let holds = cmp.test(v, *value);
                let until = match (cmp, holds) {
                    (Cmp::Gte, true) => r.drop_time(*part, *value, false),
                    (Cmp::Gt, true) => r.drop_time(*part, *value, true),
                    (Cmp::Lt, false) => r.drop_time(*part, *value, false),
                    (Cmp::Lte, false) => r.drop_time(*part, *value, true),
                    _ => None,
                };
                Outcome {
                    value: holds,
                    until,
                }
            }
        },
        Node::Grade { model, allowed } => {
            let g = f.score(*model).map(|r| r.grade).unwrap_or(Grade::D);
            fixed(allowed.contains(&g))
        }
        Node::List(l) => fixed(f.in_list(*l)),
        Node::Segment(s) => fixed(f.in_segment(*s)),
        Node::Consent { key, status } => fixed(matches!(
            (f.consent(key), status),
            (Some(true), ConsentStatus::Granted)
                | (Some(false), ConsentStatus::Withdrawn)
                | (None, ConsentStatus::Unknown)
        )),
        Node::SalesCycle(b) => fixed(f.in_sales_cycle() == *b),
    }
}

/// A behaviour condition on a feature's state.
fn event(e: &EventCondition, st: Option<&FeatureState>, now: i64) -> Outcome {
    let empty = FeatureState::default();
    let st = st.unwrap_or(&empty);
    let (cmp, n) = e.count;
    let count_outcome = match e.within {
        None => fixed(cmp.test(st.count as f64, n as f64)),
        Some(w) => {
            let w = w.as_micros();
            let inw = st.recent_since(now - w);
            let c = inw.len();
            let holds = cmp.test(c as f64, n as f64);
            let n = n as usize;
            // When the count falls by time alone: the i-th oldest time leaves the window.
            let expiry = |i: usize| inw.get(i).map(|t| t + w + 1);
            let until = match (cmp, holds) {
                (Cmp::Gte, true) => expiry(c - n),
                (Cmp::Gt, true) => expiry(c - n - 1),
                (Cmp::Lt, false) => expiry(c - n),
                (Cmp::Lte, false) => expiry(c - n - 1),
                (Cmp::Eq, true) => expiry(0),
                (Cmp::Eq, false) if c > n => expiry(c - n - 1),
                _ => None,
            };
            Outcome {
                value: holds,
                until,
            }
        }
    };
    let mut outs = vec![count_outcome];
    for (op, t) in [(&e.first, st.first), (&e.last, st.last)] {
        if let Some(op) = op {
            let v = t.map(AttrValue::Instant).unwrap_or(AttrValue::Missing);
            outs.push(op.test(&v, now));
        }
    }
    if outs.len() == 1 {
        outs[0]
    } else {
        combine(&outs, true)
    }
}

pub(super) fn attributes_only(n: &Node, c: &Contact, co: Option<&Company>) -> bool {
    match n {
        Node::All(xs) => xs.iter().all(|x| attributes_only(x, c, co)),
        Node::Any(xs) => xs.iter().any(|x| attributes_only(x, c, co)),
        Node::Not(x) => !attributes_only(x, c, co),
        Node::Attribute { attr, op } => op.test(&attr.value(c, co), 0).value,
        _ => false,
    }
}
