//! Behaviour: which events a condition or rule counts ([`EventMatcher`]) and the small
//! per-contact state that one event updates in O(1) ([`FeatureState`]).

use super::attribute::AttrValue;
use super::op::Op;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// An event type pattern: exact (`page.viewed`), a whole noun (`email.*`) or anything (`*`).
/// Compared case-insensitively (ASCII).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TypePattern {
    /// This type.
    Exact(String),
    /// Types starting with this prefix (the text before `*`).
    Prefix(String),
    /// Any type.
    Any,
}

impl TypePattern {
    /// Parses `page.viewed`, `email.*`, `*`.
    pub fn parse(s: &str) -> Result<TypePattern, String> {
        let t = s.trim().to_ascii_lowercase();
        if t.is_empty() || t.chars().count() > 200 {
            return Err("an event name must be 1 to 200 characters".into());
        }
        if t == "*" {
            return Ok(TypePattern::Any);
        }
        match t.strip_suffix('*') {
            Some(p) if !p.contains('*') => Ok(TypePattern::Prefix(p.to_string())),
            Some(_) => Err("`*` may only end an event name".into()),
            None if t.contains('*') => Err("`*` may only end an event name".into()),
            None => Ok(TypePattern::Exact(t)),
        }
    }

    /// Whether `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            TypePattern::Exact(t) => t.eq_ignore_ascii_case(event_type),
            TypePattern::Prefix(p) => {
                event_type.len() >= p.len()
                    && event_type.is_char_boundary(p.len())
                    && event_type[..p.len()].eq_ignore_ascii_case(p)
            }
            TypePattern::Any => true,
        }
    }
}

/// A test on one event property (`properties.path starts_with "/pricing"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PropertyFilter {
    /// Dotted path into the event's properties, split.
    pub path: Vec<String>,
    /// The test.
    pub op: Op,
}

impl PropertyFilter {
    /// Whether the event's properties pass.
    pub fn test(&self, props: &Value) -> bool {
        let mut v = props;
        for p in &self.path {
            match v.get(p) {
                Some(x) => v = x,
                None => return self.op.test(&AttrValue::Missing, 0).value,
            }
        }
        self.op.test(&AttrValue::from_json(v, None), 0).value
    }
}

/// Which events count: any of the types, with every property filter passing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventMatcher {
    /// Type patterns (any may match).
    pub types: Vec<TypePattern>,
    /// Property filters (all must pass).
    #[serde(rename = "where")]
    pub filters: Vec<PropertyFilter>,
}

impl EventMatcher {
    /// Whether an event matches.
    pub fn matches(&self, event_type: &str, props: &Value) -> bool {
        self.types.iter().any(|t| t.matches(event_type))
            && self.filters.iter().all(|f| f.test(props))
    }

    /// Whether an event type can match at all (before looking at properties).
    pub fn type_matches(&self, event_type: &str) -> bool {
        self.types.iter().any(|t| t.matches(event_type))
    }

    /// The exact types, if no pattern is a wildcard (lets bulk scans filter in SQL).
    pub fn exact_types(&self) -> Option<Vec<String>> {
        self.types
            .iter()
            .map(|t| match t {
                TypePattern::Exact(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Per contact and feature: how many matching events, first and last time, and the most recent
/// times (enough of them to decide the windowed counts that read this feature).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureState {
    /// Matching events ever.
    #[serde(rename = "n")]
    pub count: u64,
    /// First matching event (µs).
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub first: Option<i64>,
    /// Last matching event (µs).
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub last: Option<i64>,
    /// The latest event times, ascending, at most the feature's `keep`.
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<i64>,
}

impl FeatureState {
    /// Records one matching event at `at` (µs), keeping the latest `keep` times.
    pub fn record(&mut self, at: i64, keep: usize) {
        self.count += 1;
        self.first = Some(self.first.map_or(at, |f| f.min(at)));
        self.last = Some(self.last.map_or(at, |l| l.max(at)));
        if keep > 0 {
            let i = self.recent.partition_point(|t| *t <= at);
            self.recent.insert(i, at);
            if self.recent.len() > keep {
                self.recent.remove(0);
            }
        }
    }

    /// The kept times at or after `since`, ascending.
    pub fn recent_since(&self, since: i64) -> &[i64] {
        let i = self.recent.partition_point(|t| *t < since);
        &self.recent[i..]
    }
}

/// A feature: a matcher plus how many recent times to keep. Shared by every condition with the
/// same matcher and depth, and identified by a stable key derived from both.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureDef {
    /// Stable key (`f_` + 16 hex digits).
    pub key: String,
    /// Which events.
    pub matcher: EventMatcher,
    /// Recent times kept (0 when only counts and first/last are read).
    pub keep: usize,
}

impl FeatureDef {
    /// A feature for a matcher and depth.
    pub fn new(matcher: EventMatcher, keep: usize) -> FeatureDef {
        let mut canon = matcher.clone();
        canon.types.sort();
        canon.types.dedup();
        let text = serde_json::to_string(&(&canon, keep)).unwrap_or_default();
        let digest = Sha256::digest(text.as_bytes());
        FeatureDef {
            key: format!("f_{}", hex::encode(&digest[..8])),
            matcher: canon,
            keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::op::Operand;
    use serde_json::json;

    #[test]
    fn type_patterns() {
        let p = TypePattern::parse("Email.*").unwrap();
        assert!(p.matches("email.opened"));
        assert!(!p.matches("emails"));
        assert!(
            TypePattern::parse("page.viewed")
                .unwrap()
                .matches("Page.Viewed")
        );
        assert!(TypePattern::parse("a*b").is_err());
        assert!(TypePattern::parse("").is_err());
    }

    #[test]
    fn matcher_with_property_filters() {
        let m = EventMatcher {
            types: vec![TypePattern::parse("page.viewed").unwrap()],
            filters: vec![PropertyFilter {
                path: vec!["path".into()],
                op: Op::StartsWith("/pricing".into()),
            }],
        };
        assert!(m.matches("page.viewed", &json!({"path": "/pricing"})));
        assert!(!m.matches("page.viewed", &json!({"path": "/blog"})));
        assert!(!m.matches("page.viewed", &json!({})));
        assert!(!m.matches("form.submitted", &json!({"path": "/pricing"})));
        let nested = PropertyFilter {
            path: vec!["context".into(), "campaign".into()],
            op: Op::Eq(Operand::Text("spring".into())),
        };
        assert!(nested.test(&json!({"context": {"campaign": "Spring"}})));
    }

    #[test]
    fn feature_state_keeps_the_latest_times_in_order() {
        let mut f = FeatureState::default();
        for t in [5, 1, 9, 3, 7] {
            f.record(t, 3);
        }
        assert_eq!(f.count, 5);
        assert_eq!((f.first, f.last), (Some(1), Some(9)));
        assert_eq!(f.recent, vec![5, 7, 9]);
        assert_eq!(f.recent_since(6), &[7, 9]);
    }

    #[test]
    fn feature_keys_are_stable_and_depth_specific() {
        let m = |t: &str| EventMatcher {
            types: vec![TypePattern::parse(t).unwrap()],
            filters: vec![],
        };
        assert_eq!(
            FeatureDef::new(m("a"), 4).key,
            FeatureDef::new(m("A"), 4).key
        );
        assert_ne!(
            FeatureDef::new(m("a"), 4).key,
            FeatureDef::new(m("a"), 8).key
        );
        assert_ne!(
            FeatureDef::new(m("a"), 4).key,
            FeatureDef::new(m("b"), 4).key
        );
    }
}
