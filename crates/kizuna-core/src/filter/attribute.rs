//! Contact and company attributes that conditions read, and how their values compare.

use crate::company::Company;
use crate::contact::Contact;
use crate::field::FieldType;
use crate::title::{JobLevel, job_level};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value as Json;
use std::borrow::Cow;
use unicode_normalization::UnicodeNormalization;

/// What kind of value an attribute holds, which decides the operators it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    /// Free text (compared after NFKC and lower-casing).
    Text,
    /// A number.
    Number,
    /// An instant (or a calendar date, read as midnight UTC).
    Instant,
    /// true / false.
    Bool,
    /// A [`JobLevel`], ordered.
    Level,
    /// A lifecycle stage name.
    Stage,
    /// A temperature name.
    Temperature,
    /// A UUID.
    Id,
    /// A set of texts (multi-select custom field).
    Multi,
}

/// A contact or company attribute a condition can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// A contact column: `email`, `job_title`, `lifecycle_stage`, …
    Contact(&'static str),
    /// `source.channel`, `source.utm_campaign`, …
    Source(&'static str),
    /// `address.region`, `address.country`, …
    Address(&'static str),
    /// `company.industry`, `company.employee_count`, …
    Company(&'static str),
    /// `custom.<name>`, with the field's type.
    Custom(String, FieldType),
}

const CONTACT: &[(&str, AttrKind)] = &[
    ("email", AttrKind::Text),
    ("email_domain", AttrKind::Text),
    ("first_name", AttrKind::Text),
    ("last_name", AttrKind::Text),
    ("phone", AttrKind::Text),
    ("job_title", AttrKind::Text),
    ("job_level", AttrKind::Level),
    ("department", AttrKind::Text),
    ("lifecycle_stage", AttrKind::Stage),
    ("temperature", AttrKind::Temperature),
    ("owner_id", AttrKind::Id),
    ("company_id", AttrKind::Id),
    ("created_at", AttrKind::Instant),
    ("updated_at", AttrKind::Instant),
];
const SOURCE: &[&str] = &[
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "referrer",
    "landing_page",
    "detail",
];
const ADDRESS: &[&str] = &["postal_code", "region", "city", "street", "country"];
const COMPANY: &[(&str, AttrKind)] = &[
    ("name", AttrKind::Text),
    ("domain", AttrKind::Text),
    ("industry", AttrKind::Text),
    ("employee_count", AttrKind::Number),
    ("annual_revenue", AttrKind::Number),
    ("website", AttrKind::Text),
];

/// Every fixed attribute name (for error messages and docs).
pub fn attribute_names() -> Vec<String> {
    let mut v: Vec<String> = CONTACT.iter().map(|(n, _)| n.to_string()).collect();
    v.extend(SOURCE.iter().map(|n| format!("source.{n}")));
    v.extend(ADDRESS.iter().map(|n| format!("address.{n}")));
    v.extend(COMPANY.iter().map(|(n, _)| format!("company.{n}")));
    v.push("custom.<field name>".into());
    v
}

impl Attribute {
    /// Parses an attribute path; `custom` resolves custom field names to their type.
    pub fn parse(
        path: &str,
        custom: impl Fn(&str) -> Option<FieldType>,
    ) -> Result<Attribute, String> {
        let unknown = || {
            format!(
                "{path:?} is not an attribute (one of: {})",
                attribute_names().join(", ")
            )
        };
        if let Some(rest) = path.strip_prefix("source.") {
            return SOURCE
                .iter()
                .find(|n| **n == rest)
                .map(|n| Attribute::Source(n))
                .ok_or_else(unknown);
        }
        if let Some(rest) = path.strip_prefix("address.") {
            return ADDRESS
                .iter()
                .find(|n| **n == rest)
                .map(|n| Attribute::Address(n))
                .ok_or_else(unknown);
        }
        if let Some(rest) = path.strip_prefix("company.") {
            return COMPANY
                .iter()
                .find(|(n, _)| *n == rest)
                .map(|(n, _)| Attribute::Company(n))
                .ok_or_else(unknown);
        }
        if let Some(rest) = path.strip_prefix("custom.") {
            return custom(rest)
                .map(|t| Attribute::Custom(rest.to_string(), t))
                .ok_or_else(|| format!("there is no custom field named {rest:?}"));
        }
        CONTACT
            .iter()
            .find(|(n, _)| *n == path)
            .map(|(n, _)| Attribute::Contact(n))
            .ok_or_else(unknown)
    }

    /// The kind of value.
    pub fn kind(&self) -> AttrKind {
        match self {
            Attribute::Contact(n) => CONTACT
                .iter()
                .find(|(c, _)| c == n)
                .map(|(_, k)| *k)
                .unwrap_or(AttrKind::Text),
            Attribute::Source(_) | Attribute::Address(_) => AttrKind::Text,
            Attribute::Company(n) => COMPANY
                .iter()
                .find(|(c, _)| c == n)
                .map(|(_, k)| *k)
                .unwrap_or(AttrKind::Text),
            Attribute::Custom(_, t) => match t {
                FieldType::Text | FieldType::SingleSelect => AttrKind::Text,
                FieldType::Number => AttrKind::Number,
                FieldType::Boolean => AttrKind::Bool,
                FieldType::Date | FieldType::Datetime => AttrKind::Instant,
                FieldType::MultiSelect => AttrKind::Multi,
            },
        }
    }

    /// Whether the value lives on the company (so a company change matters).
    pub fn is_company(&self) -> bool {
        matches!(self, Attribute::Company(_))
    }

    /// The attribute's path as written.
    pub fn path(&self) -> String {
        match self {
            Attribute::Contact(n) => n.to_string(),
            Attribute::Source(n) => format!("source.{n}"),
            Attribute::Address(n) => format!("address.{n}"),
            Attribute::Company(n) => format!("company.{n}"),
            Attribute::Custom(n, _) => format!("custom.{n}"),
        }
    }

    /// The value for a contact (and its company).
    pub fn value<'a>(&self, c: &'a Contact, co: Option<&'a Company>) -> AttrValue<'a> {
        fn text(s: &Option<String>) -> AttrValue<'_> {
            match s {
                Some(s) if !s.is_empty() => AttrValue::Text(Cow::Borrowed(s)),
                _ => AttrValue::Missing,
            }
        }
        match self {
            Attribute::Contact(n) => match *n {
                "email" => text(&c.email),
                "email_domain" => match c.email.as_deref().and_then(|e| e.rsplit_once('@')) {
                    Some((_, d)) => AttrValue::Text(Cow::Borrowed(d)),
                    None => AttrValue::Missing,
                },
                "first_name" => text(&c.first_name),
                "last_name" => text(&c.last_name),
                "phone" => text(&c.phone),
                "job_title" => text(&c.job_title),
                "job_level" => match c.job_title.as_deref().and_then(job_level) {
                    Some(l) => AttrValue::Number(l.rank() as f64),
                    None => AttrValue::Missing,
                },
                "department" => text(&c.department),
                "lifecycle_stage" => AttrValue::Text(Cow::Borrowed(c.lifecycle_stage.as_str())),
                "temperature" => AttrValue::Text(Cow::Borrowed(c.temperature.as_str())),
                "owner_id" => match c.owner_id {
                    Some(id) => AttrValue::Text(Cow::Owned(id.to_string())),
                    None => AttrValue::Missing,
                },
                "company_id" => match c.company_id {
                    Some(id) => AttrValue::Text(Cow::Owned(id.to_string())),
                    None => AttrValue::Missing,
                },
                "created_at" => AttrValue::Instant(c.created_at.timestamp_micros()),
                "updated_at" => AttrValue::Instant(c.updated_at.timestamp_micros()),
                _ => AttrValue::Missing,
            },
            Attribute::Source(n) => text(match *n {
                "channel" => &c.source.channel,
                "utm_source" => &c.source.utm_source,
                "utm_medium" => &c.source.utm_medium,
                "utm_campaign" => &c.source.utm_campaign,
                "utm_term" => &c.source.utm_term,
                "utm_content" => &c.source.utm_content,
                "referrer" => &c.source.referrer,
                "landing_page" => &c.source.landing_page,
                _ => &c.source.detail,
            }),
            Attribute::Address(n) => text(match *n {
                "postal_code" => &c.address.postal_code,
                "region" => &c.address.region,
                "city" => &c.address.city,
                "street" => &c.address.street,
                _ => &c.address.country,
            }),
            Attribute::Company(n) => {
                let Some(co) = co else {
                    return AttrValue::Missing;
                };
                match *n {
                    "name" => AttrValue::Text(Cow::Borrowed(&co.name)),
                    "domain" => text(&co.domain),
                    "industry" => text(&co.industry),
                    "employee_count" => co
                        .employee_count
                        .map(|n| AttrValue::Number(n as f64))
                        .unwrap_or(AttrValue::Missing),
                    "annual_revenue" => co
                        .annual_revenue
                        .map(|n| AttrValue::Number(n as f64))
                        .unwrap_or(AttrValue::Missing),
                    _ => text(&co.website),
                }
            }
            Attribute::Custom(name, ty) => match c.custom.get(name) {
                None | Some(Json::Null) => AttrValue::Missing,
                Some(v) => AttrValue::from_json(v, Some(*ty)),
            },
        }
    }
}

/// A value read from a contact, a company or an event's properties.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue<'a> {
    /// No value.
    Missing,
    /// Text.
    Text(Cow<'a, str>),
    /// Number (job levels are their rank).
    Number(f64),
    /// Microseconds since the epoch.
    Instant(i64),
    /// Boolean.
    Bool(bool),
    /// Several texts.
    Multi(Vec<String>),
}

impl<'a> AttrValue<'a> {
    /// Reads a JSON value; `ty` tells dates from text when known.
    pub fn from_json(v: &'a Json, ty: Option<FieldType>) -> AttrValue<'a> {
        match (v, ty) {
            (Json::Null, _) => AttrValue::Missing,
            (Json::Bool(b), _) => AttrValue::Bool(*b),
            (Json::Number(n), _) => n
                .as_f64()
                .map(AttrValue::Number)
                .unwrap_or(AttrValue::Missing),
            (Json::String(s), Some(FieldType::Date | FieldType::Datetime)) => parse_instant(s)
                .map(AttrValue::Instant)
                .unwrap_or(AttrValue::Missing),
            (Json::String(s), Some(FieldType::Number)) => s
                .trim()
                .parse()
                .map(AttrValue::Number)
                .unwrap_or(AttrValue::Missing),
            (Json::String(s), _) => AttrValue::Text(Cow::Borrowed(s)),
            (Json::Array(a), _) => AttrValue::Multi(
                a.iter()
                    .filter_map(|x| match x {
                        Json::String(s) => Some(s.clone()),
                        Json::Number(n) => Some(n.to_string()),
                        Json::Bool(b) => Some(b.to_string()),
                        _ => None,
                    })
                    .collect(),
            ),
            (Json::Object(_), _) => AttrValue::Text(Cow::Owned(v.to_string())),
        }
    }

    /// As a number, reading numeric text too.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            AttrValue::Number(n) => Some(*n),
            AttrValue::Text(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// As an instant, reading RFC 3339 or `YYYY-MM-DD` text too.
    pub fn as_instant(&self) -> Option<i64> {
        match self {
            AttrValue::Instant(t) => Some(*t),
            AttrValue::Text(s) => parse_instant(s),
            _ => None,
        }
    }
}

/// Text as compared: NFKC (full-width → half-width), lower case, trimmed.
pub fn fold(s: &str) -> String {
    folded(s).into_owned()
}

/// [`fold`] without allocating for text that is already folded ASCII (NFKC leaves ASCII as
/// it is): the common case of event properties such as paths, ids and form names, compared on
/// every event.
pub fn folded(s: &str) -> std::borrow::Cow<'_, str> {
    if s.is_ascii() {
        let t = s.trim();
        if t.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(t.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(t)
        }
    } else {
        std::borrow::Cow::Owned(s.nfkc().collect::<String>().trim().to_lowercase())
    }
}

/// RFC 3339 or `YYYY-MM-DD` (midnight UTC) → microseconds.
pub fn parse_instant(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc).timestamp_micros());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc().timestamp_micros())
}

/// Parses a job level name for comparisons.
pub fn level_rank(s: &str) -> Option<f64> {
    s.parse::<JobLevel>().ok().map(|l| l.rank() as f64)
}
