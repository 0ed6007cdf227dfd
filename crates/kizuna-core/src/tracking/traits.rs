//! Segment traits → Kizuna fields: what an `identify` says about a person and what a `group`
//! says about a company (issue 3 item 4).
//!
//! Traits are the sender's words, not ours: a value of the wrong type or shape is left out and
//! reported, never a reason to refuse the message (an SDK would retry a refused batch forever).
//! `null` traits are ignored rather than clearing a field.

use crate::company::CompanyInput;
use crate::contact::{ContactInput, PostalAddress};
use crate::patch::Patch;
use serde_json::{Map, Value};
use std::collections::HashSet;

/// A trait that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IgnoredTrait {
    /// The trait's key (`email`, `address.city`, …).
    pub name: String,
    /// Why it was left out.
    pub reason: String,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            let t = s.trim();
            (!t.is_empty()).then(|| t.to_string())
        }
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The first present key among `keys`, as text; a present key of the wrong type is reported.
fn pick(
    traits: &Map<String, Value>,
    keys: &[&str],
    ignored: &mut Vec<IgnoredTrait>,
) -> Option<String> {
    for k in keys {
        match traits.get(*k) {
            None | Some(Value::Null) => continue,
            Some(v) => match text(v) {
                Some(s) => return Some(s),
                None => {
                    if !matches!(v, Value::String(_)) {
                        ignored.push(IgnoredTrait {
                            name: (*k).to_string(),
                            reason: "expected text".into(),
                        });
                    }
                }
            },
        }
    }
    None
}

fn has_cjk(s: &str) -> bool {
    s.chars().any(|c| {
        matches!(c as u32,
            0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xAC00..=0xD7AF)
    })
}

/// Splits a full `name` into (first, last). Names in Japanese, Chinese or Korean script put the
/// family name first (`山田 太郎` → first 太郎, last 山田); others the given name first
/// (`Taro Yamada`). A single word is the family name in CJK script and the given name otherwise.
pub fn split_name(name: &str) -> (Option<String>, Option<String>) {
    let parts: Vec<&str> = name.split_whitespace().collect();
    let cjk = has_cjk(name);
    match parts.as_slice() {
        [] => (None, None),
        [one] if cjk => (None, Some((*one).to_string())),
        [one] => (Some((*one).to_string()), None),
        [family, given @ ..] if cjk => (Some(given.join(" ")), Some((*family).to_string())),
        [given @ .., family] => (Some(given.join(" ")), Some((*family).to_string())),
    }
}

/// What an identify's traits say about the contact, and about their company.
#[derive(Debug, Clone, Default)]
pub struct IdentifyTraits {
    /// Contact fields (not yet validated: see [`ContactInput::validate`]).
    pub contact: ContactInput,
    /// The `company` trait, when present: a name (`"company": "株式会社山田商事"`) or an object
    /// with the group traits below.
    pub company: Option<CompanyInput>,
    /// Traits left out.
    pub ignored: Vec<IgnoredTrait>,
}

/// Maps identify traits to contact fields:
/// `email`; `firstName`/`first_name`; `lastName`/`last_name`; `name` (split with
/// [`split_name`] when neither of the former is given); `phone`; `title`/`jobTitle`/`job_title`;
/// `department`; `address` {`street`, `city`, `state`/`region`, `postalCode`/`postal_code`,
/// `country`}; `company` (see [`IdentifyTraits::company`]); and any trait whose key is the name
/// of a custom field (`custom_fields`). Other traits stay only in the event.
pub fn identify_traits(
    traits: &Map<String, Value>,
    custom_fields: &HashSet<String>,
) -> IdentifyTraits {
    let mut ignored = Vec::new();
    let mut c = ContactInput::default();
    let set = |p: &mut Patch<String>, v: Option<String>| {
        if let Some(v) = v {
            *p = Patch::Value(v);
        }
    };
    set(&mut c.email, pick(traits, &["email"], &mut ignored));
    set(
        &mut c.first_name,
        pick(traits, &["firstName", "first_name"], &mut ignored),
    );
    set(
        &mut c.last_name,
        pick(traits, &["lastName", "last_name"], &mut ignored),
    );
    if !c.first_name.is_present()
        && !c.last_name.is_present()
        && let Some(name) = pick(traits, &["name"], &mut ignored)
    {
        let (first, last) = split_name(&name);
        set(&mut c.first_name, first);
        set(&mut c.last_name, last);
    }
    set(&mut c.phone, pick(traits, &["phone"], &mut ignored));
    set(
        &mut c.job_title,
        pick(traits, &["title", "jobTitle", "job_title"], &mut ignored),
    );
    set(
        &mut c.department,
        pick(traits, &["department"], &mut ignored),
    );
    match traits.get("address") {
        None | Some(Value::Null) => {}
        Some(Value::Object(a)) => {
            let mut sink = Vec::new();
            let addr = PostalAddress {
                postal_code: pick(a, &["postalCode", "postal_code", "zip"], &mut sink),
                region: pick(a, &["state", "region", "prefecture"], &mut sink),
                city: pick(a, &["city"], &mut sink),
                street: pick(a, &["street", "line1"], &mut sink),
                country: pick(a, &["country"], &mut sink),
            };
            for i in sink {
                ignored.push(IgnoredTrait {
                    name: format!("address.{}", i.name),
                    reason: i.reason,
                });
            }
            if !addr.is_empty() {
                c.address = Patch::Value(addr);
            }
        }
        Some(_) => ignored.push(IgnoredTrait {
            name: "address".into(),
            reason: "expected an object".into(),
        }),
    }
    for (k, v) in traits {
        if custom_fields.contains(k) && !v.is_null() {
            c.custom.insert(k.clone(), v.clone());
        }
    }
    let company = match traits.get("company") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => text(v).map(|name| CompanyInput {
            name: Patch::Value(name),
            ..Default::default()
        }),
        Some(Value::Object(o)) => {
            let g = group_traits(o);
            ignored.extend(g.ignored.into_iter().map(|i| IgnoredTrait {
                name: format!("company.{}", i.name),
                reason: i.reason,
            }));
            Some(g.company)
        }
        Some(_) => {
            ignored.push(IgnoredTrait {
                name: "company".into(),
                reason: "expected a name or an object".into(),
            });
            None
        }
    };
    IdentifyTraits {
        contact: c,
        company,
        ignored,
    }
}

/// What a group's traits say about the company.
#[derive(Debug, Clone, Default)]
pub struct GroupTraits {
    /// Company fields (not yet validated: see [`CompanyInput::validate`]).
    pub company: CompanyInput,
    /// Traits left out.
    pub ignored: Vec<IgnoredTrait>,
}

fn integer(
    traits: &Map<String, Value>,
    keys: &[&str],
    ignored: &mut Vec<IgnoredTrait>,
) -> Option<i64> {
    for k in keys {
        match traits.get(*k) {
            None | Some(Value::Null) => continue,
            Some(Value::Number(n)) if n.as_i64().is_some() => return n.as_i64(),
            Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f.is_finite() && f >= 0.0) => {
                return n.as_f64().map(|f| f.round() as i64);
            }
            Some(Value::String(s)) => match crate::field::parse_integer(s) {
                Some(i) => return Some(i),
                None => ignored.push(IgnoredTrait {
                    name: (*k).to_string(),
                    reason: "expected a whole number".into(),
                }),
            },
            Some(_) => ignored.push(IgnoredTrait {
                name: (*k).to_string(),
                reason: "expected a whole number".into(),
            }),
        }
    }
    None
}

/// Maps group traits (Segment's reserved ones and common spellings) to company fields: `name`;
/// `domain`, else the host of `website`; `industry`; `employees`/`employee_count`/
/// `employeeCount`; `annual_revenue`/`annualRevenue`/`revenue`; `website`; `phone`.
pub fn group_traits(traits: &Map<String, Value>) -> GroupTraits {
    let mut ignored = Vec::new();
    let mut c = CompanyInput::default();
    let set = |p: &mut Patch<String>, v: Option<String>| {
        if let Some(v) = v {
            *p = Patch::Value(v);
        }
    };
    set(&mut c.name, pick(traits, &["name"], &mut ignored));
    let website = pick(traits, &["website", "url"], &mut ignored);
    set(
        &mut c.domain,
        pick(traits, &["domain"], &mut ignored).or_else(|| website.clone()),
    );
    set(&mut c.website, website);
    set(&mut c.industry, pick(traits, &["industry"], &mut ignored));
    set(&mut c.phone, pick(traits, &["phone"], &mut ignored));
    if let Some(n) = integer(
        traits,
        &["employees", "employee_count", "employeeCount"],
        &mut ignored,
    ) {
        c.employee_count = Patch::Value(n);
    }
    if let Some(n) = integer(
        traits,
        &["annual_revenue", "annualRevenue", "revenue"],
        &mut ignored,
    ) {
        c.annual_revenue = Patch::Value(n);
    }
    GroupTraits {
        company: c,
        ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn names_split_by_script() {
        assert_eq!(
            split_name("山田 太郎"),
            (Some("太郎".into()), Some("山田".into()))
        );
        assert_eq!(
            split_name("Taro Yamada"),
            (Some("Taro".into()), Some("Yamada".into()))
        );
        assert_eq!(
            split_name("Mary Ann Smith"),
            (Some("Mary Ann".into()), Some("Smith".into()))
        );
        assert_eq!(split_name("山田"), (None, Some("山田".into())));
        assert_eq!(split_name("Cher"), (Some("Cher".into()), None));
        assert_eq!(split_name("  "), (None, None));
    }

    #[test]
    fn identify_traits_map_to_fields() {
        let custom: HashSet<String> = ["budget".to_string()].into();
        let t = identify_traits(
            &obj(json!({
                "email": " Hanako@Example.co.jp ", "firstName": "花子", "last_name": "佐藤",
                "name": "ignored when first/last given", "phone": 312345678,
                "title": "部長", "department": "情報システム部",
                "address": {"postalCode": "100-0001", "state": "東京都", "city": "千代田区"},
                "company": {"name": "株式会社山田商事", "employees": "1,200"},
                "budget": 500, "plan": "pro", "email_verified": true
            })),
            &custom,
        );
        let c = &t.contact;
        assert_eq!(c.email, Patch::Value("Hanako@Example.co.jp".into()));
        assert_eq!(c.first_name, Patch::Value("花子".into()));
        assert_eq!(c.last_name, Patch::Value("佐藤".into()));
        assert_eq!(c.phone, Patch::Value("312345678".into()));
        assert_eq!(c.job_title, Patch::Value("部長".into()));
        assert_eq!(c.department, Patch::Value("情報システム部".into()));
        let Patch::Value(a) = &c.address else {
            panic!("address")
        };
        assert_eq!(a.region.as_deref(), Some("東京都"));
        assert_eq!(a.postal_code.as_deref(), Some("100-0001"));
        assert_eq!(c.custom.get("budget"), Some(&json!(500)));
        assert!(!c.custom.contains_key("plan"), "not a custom field");
        let co = t.company.unwrap();
        assert_eq!(co.name, Patch::Value("株式会社山田商事".into()));
        assert_eq!(co.employee_count, Patch::Value(1200));
        assert!(t.ignored.is_empty(), "{:?}", t.ignored);
    }

    #[test]
    fn bad_traits_are_reported_not_fatal() {
        let t = identify_traits(
            &obj(
                json!({"email": {"x": 1}, "name": "Taro Yamada", "address": "Tokyo",
                        "company": [1], "phone": null}),
            ),
            &HashSet::new(),
        );
        assert!(!t.contact.email.is_present());
        assert!(
            !t.contact.phone.is_present(),
            "null is ignored, not a clear"
        );
        assert_eq!(t.contact.first_name, Patch::Value("Taro".into()));
        let names: Vec<_> = t.ignored.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["email", "address", "company"]);
    }

    #[test]
    fn group_traits_map_to_company() {
        let g = group_traits(&obj(json!({
            "name": "(株)山田商事", "website": "https://www.yamada-shoji.co.jp/",
            "industry": "製造業", "employees": 350, "annualRevenue": 1.5e9, "plan": "enterprise"
        })));
        assert_eq!(g.company.name, Patch::Value("(株)山田商事".into()));
        assert_eq!(
            g.company.domain,
            Patch::Value("https://www.yamada-shoji.co.jp/".into()),
            "normalized later by CompanyInput::validate"
        );
        assert_eq!(g.company.employee_count, Patch::Value(350));
        assert_eq!(g.company.annual_revenue, Patch::Value(1_500_000_000));
        let g = group_traits(&obj(json!({"employees": "many"})));
        assert_eq!(g.ignored[0].name, "employees");
    }
}
