//! Merging two records of one person (R-DATA-3). The survivor keeps its id; every field ends up
//! with the union of what the two records knew: an empty field takes the other's value, and when
//! both have different values the more recently updated record wins. Every such conflict is
//! reported so that a person can check it, and the whole merge can be undone from the record.

use crate::contact::Contact;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One field where both records had a different value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// Field name (`job_title`, `custom.budget`, …).
    pub field: String,
    /// The value kept.
    pub kept: Value,
    /// The value dropped.
    pub dropped: Value,
    /// Which record the kept value came from: `survivor` or `merged`.
    pub kept_from: String,
}

/// The result of [`merge_contacts`].
#[derive(Debug, Clone, PartialEq)]
pub struct MergeOutcome {
    /// The surviving contact with the union of fields.
    pub contact: Contact,
    /// Fields both records had with different values.
    pub conflicts: Vec<Conflict>,
}

/// Merges `other` into `survivor`. The survivor's id stays. The earliest `created_at` and the
/// first touch of the earlier-created record are kept (first touch is by definition the
/// earliest one).
pub fn merge_contacts(
    survivor: &Contact,
    other: &Contact,
    now: chrono::DateTime<chrono::Utc>,
) -> MergeOutcome {
    let other_newer = other.updated_at > survivor.updated_at;
    let mut out = survivor.clone();
    let mut conflicts = Vec::new();
    // The survivor is the identity the caller chose: its address stays; the other's is reported.
    out.email = survivor.email.clone().or_else(|| other.email.clone());
    if let (Some(a), Some(b)) = (&survivor.email, &other.email)
        && a != b
    {
        conflicts.push(Conflict {
            field: "email".into(),
            kept: a.as_str().into(),
            dropped: b.as_str().into(),
            kept_from: "survivor".into(),
        });
    }

    let mut pick = |field: &str, a: Value, b: Value| -> Value {
        match (a.is_null(), b.is_null()) {
            (_, true) => a,
            (true, false) => b,
            (false, false) if a == b => a,
            (false, false) => {
                let (kept, dropped, from) = if other_newer {
                    (b, a, "merged")
                } else {
                    (a, b, "survivor")
                };
                conflicts.push(Conflict {
                    field: field.to_string(),
                    kept: kept.clone(),
                    dropped,
                    kept_from: from.to_string(),
                });
                kept
            }
        }
    };
    let j = |v: &Option<String>| {
        v.as_ref()
            .map(|s| Value::String(s.clone()))
            .unwrap_or(Value::Null)
    };
    let s = |v: Value| v.as_str().map(str::to_string);

    out.first_name = s(pick(
        "first_name",
        j(&survivor.first_name),
        j(&other.first_name),
    ));
    out.last_name = s(pick(
        "last_name",
        j(&survivor.last_name),
        j(&other.last_name),
    ));
    out.phone = s(pick("phone", j(&survivor.phone), j(&other.phone)));
    out.job_title = s(pick(
        "job_title",
        j(&survivor.job_title),
        j(&other.job_title),
    ));
    out.department = s(pick(
        "department",
        j(&survivor.department),
        j(&other.department),
    ));
    let uid = |v: Option<uuid::Uuid>| {
        v.map(|u| Value::String(u.to_string()))
            .unwrap_or(Value::Null)
    };
    let to_uid = |v: Value| v.as_str().and_then(|s| s.parse().ok());
    out.company_id = to_uid(pick(
        "company_id",
        uid(survivor.company_id),
        uid(other.company_id),
    ));
    out.owner_id = to_uid(pick(
        "owner_id",
        uid(survivor.owner_id),
        uid(other.owner_id),
    ));
    if survivor.lifecycle_stage != other.lifecycle_stage {
        let st = |c: &Contact| Value::String(c.lifecycle_stage.as_str().into());
        let kept = pick("lifecycle_stage", st(survivor), st(other));
        out.lifecycle_stage = serde_json::from_value(kept).unwrap_or(survivor.lifecycle_stage);
    }
    if survivor.temperature != other.temperature {
        let t = |c: &Contact| Value::String(c.temperature.as_str().into());
        let kept = pick("temperature", t(survivor), t(other));
        out.temperature = serde_json::from_value(kept).unwrap_or(survivor.temperature);
    }
    if survivor.address.is_empty() {
        out.address = other.address.clone();
    } else if !other.address.is_empty() && other.address != survivor.address {
        let a = |c: &Contact| serde_json::to_value(&c.address).unwrap_or(Value::Null);
        let kept = pick("address", a(survivor), a(other));
        out.address = serde_json::from_value(kept).unwrap_or_else(|_| survivor.address.clone());
    }
    let mut keys: Vec<&String> = survivor.custom.keys().chain(other.custom.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let a = survivor.custom.get(k).cloned().unwrap_or(Value::Null);
        let b = other.custom.get(k).cloned().unwrap_or(Value::Null);
        let v = pick(&format!("custom.{k}"), a, b);
        if v.is_null() {
            out.custom.remove(k);
        } else {
            out.custom.insert(k.clone(), v);
        }
    }
    let (first, _) = if other.created_at < survivor.created_at {
        (other, survivor)
    } else {
        (survivor, other)
    };
    out.source = if first.source.is_empty() {
        if first.id == survivor.id {
            other.source.clone()
        } else {
            survivor.source.clone()
        }
    } else {
        first.source.clone()
    };
    out.created_at = survivor.created_at.min(other.created_at);
    out.updated_at = now;
    MergeOutcome {
        contact: out,
        conflicts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::{LifecycleStage, Source};
    use chrono::{Duration, TimeZone, Utc};
    use uuid::Uuid;

    #[test]
    fn union_of_fields_newest_wins_and_conflicts_reported() {
        let t0 = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
        let mut a = Contact::new(Uuid::now_v7(), t0);
        a.email = Some("taro@yamada-shoji.co.jp".into());
        a.job_title = Some("課長".into());
        a.custom.insert("interest".into(), Value::from("中"));
        a.source = Source {
            channel: Some("offline".into()),
            ..Default::default()
        };
        let mut b = Contact::new(Uuid::now_v7(), t0 + Duration::days(3));
        b.phone = Some("03-1234-5678".into());
        b.job_title = Some("部長".into());
        b.lifecycle_stage = LifecycleStage::Mql;
        b.source = Source {
            channel: Some("paid_search".into()),
            ..Default::default()
        };
        b.updated_at = t0 + Duration::days(5);

        let now = t0 + Duration::days(6);
        let m = merge_contacts(&a, &b, now);
        assert_eq!(m.contact.id, a.id);
        assert_eq!(m.contact.email, a.email);
        assert_eq!(m.contact.phone.as_deref(), Some("03-1234-5678"));
        assert_eq!(
            m.contact.job_title.as_deref(),
            Some("部長"),
            "newer record wins"
        );
        assert_eq!(m.contact.lifecycle_stage, LifecycleStage::Mql);
        assert_eq!(m.contact.custom.get("interest"), Some(&Value::from("中")));
        assert_eq!(
            m.contact.source.channel.as_deref(),
            Some("offline"),
            "first touch is the earliest"
        );
        assert_eq!(m.contact.created_at, t0);
        assert_eq!(m.contact.updated_at, now);
        let fields: Vec<_> = m.conflicts.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["job_title", "lifecycle_stage"]);
        assert_eq!(m.conflicts[0].dropped, Value::from("課長"));
        assert_eq!(m.conflicts[0].kept_from, "merged");
    }

    #[test]
    fn older_other_loses_conflicts() {
        let t0 = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
        let mut a = Contact::new(Uuid::now_v7(), t0);
        a.job_title = Some("部長".into());
        a.updated_at = t0 + Duration::days(9);
        let mut b = Contact::new(Uuid::now_v7(), t0);
        b.job_title = Some("課長".into());
        let m = merge_contacts(&a, &b, t0 + Duration::days(10));
        assert_eq!(m.contact.job_title.as_deref(), Some("部長"));
        assert_eq!(m.conflicts[0].kept_from, "survivor");
    }
}
