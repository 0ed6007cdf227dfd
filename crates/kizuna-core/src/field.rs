//! Typed custom fields: the marketer adds `budget` (number), `interest_level` (single select
//! 高/中/低), `exchanged_cards_on` (date)… and every write is checked against the definition.

use crate::error::{ValidationError, ValidationErrors};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use unicode_normalization::UnicodeNormalization;

/// The type of a custom field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Free text.
    Text,
    /// A number (integer or decimal).
    Number,
    /// true / false.
    Boolean,
    /// A calendar date, stored as `YYYY-MM-DD`.
    Date,
    /// An instant, stored as RFC 3339 in UTC.
    Datetime,
    /// One of `options`.
    SingleSelect,
    /// Any subset of `options`, stored as an array.
    MultiSelect,
}

impl FieldType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Date => "date",
            Self::Datetime => "datetime",
            Self::SingleSelect => "single_select",
            Self::MultiSelect => "multi_select",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }
}

/// The definition of one custom field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDefinition {
    /// Machine name used in the API, CSV headers and templates (`[a-z][a-z0-9_]*`).
    pub name: String,
    /// Label shown to marketers (any language).
    pub label: String,
    /// Value type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Allowed values for select types.
    #[serde(default)]
    pub options: Vec<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// A request to define a custom field.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldInput {
    /// Machine name.
    pub name: String,
    /// Label; defaults to the name.
    #[serde(default)]
    pub label: Option<String>,
    /// Value type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Allowed values for select types.
    #[serde(default)]
    pub options: Vec<String>,
}

/// Names that standard contact fields (and their import aliases) already use.
pub const RESERVED_NAMES: &[&str] = &[
    "id",
    "email",
    "first_name",
    "last_name",
    "name",
    "full_name",
    "phone",
    "job_title",
    "department",
    "company",
    "company_id",
    "company_name",
    "company_domain",
    "industry",
    "employee_count",
    "annual_revenue",
    "website",
    "lifecycle_stage",
    "temperature",
    "owner_id",
    "owner",
    "source",
    "custom",
    "created_at",
    "updated_at",
    "postal_code",
    "region",
    "city",
    "street",
    "country",
    "address",
    "score",
    "grade",
];

impl FieldInput {
    /// Checks the definition; errors name the bad part.
    pub fn validate(self) -> Result<Self, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let n = &self.name;
        let valid_name = !n.is_empty()
            && n.len() <= 63
            && n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            errs.push(ValidationError::new(
                "name",
                "invalid_name",
                format!("{n:?} must be 1–63 characters of a–z, 0–9 and _, starting with a letter"),
            ));
        } else if RESERVED_NAMES.contains(&n.as_str()) {
            errs.push(ValidationError::new(
                "name",
                "reserved_name",
                format!("{n:?} is a standard contact field"),
            ));
        }
        let select = matches!(
            self.field_type,
            FieldType::SingleSelect | FieldType::MultiSelect
        );
        if select && self.options.is_empty() {
            errs.push(ValidationError::new(
                "options",
                "required",
                "select fields need at least one option",
            ));
        }
        if !select && !self.options.is_empty() {
            errs.push(ValidationError::new(
                "options",
                "not_allowed",
                "only select fields have options",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, o) in self.options.iter().enumerate() {
            if o.trim().is_empty() || !seen.insert(o) {
                errs.push(ValidationError::new(
                    format!("options[{i}]"),
                    "invalid_option",
                    "options must be non-empty and distinct",
                ));
            }
        }
        errs.into_result(self)
    }
}

/// Validates (and canonicalizes) custom values from JSON against the definitions. Unknown
/// names and wrong types are errors naming `custom.<name>`; `null` is kept (it clears).
pub fn validate_custom(
    values: Map<String, Value>,
    defs: &HashMap<String, FieldDefinition>,
) -> Result<Map<String, Value>, ValidationErrors> {
    let mut errs = ValidationErrors::default();
    let mut out = Map::new();
    for (name, v) in values {
        let path = format!("custom.{name}");
        let Some(def) = defs.get(&name) else {
            errs.push(ValidationError::new(
                path,
                "unknown_field",
                format!("no custom field named {name:?}; define it first under /api/v1/fields"),
            ));
            continue;
        };
        if v.is_null() {
            out.insert(name, v);
            continue;
        }
        match coerce_json(def, &v) {
            Ok(v) => {
                out.insert(name, v);
            }
            Err(msg) => errs.push(ValidationError::new(path, "invalid_value", msg)),
        }
    }
    errs.into_result(out)
}

fn coerce_json(def: &FieldDefinition, v: &Value) -> Result<Value, String> {
    match (def.field_type, v) {
        (FieldType::Text, Value::String(s))
            if s.chars().count() <= crate::contact::MAX_TEXT_LEN =>
        {
            Ok(v.clone())
        }
        (FieldType::Text, Value::String(_)) => Err("text is too long".into()),
        (FieldType::Number, Value::Number(_)) => Ok(v.clone()),
        (FieldType::Boolean, Value::Bool(_)) => Ok(v.clone()),
        (FieldType::MultiSelect, Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Value::String(s) if def.options.contains(s) => out.push(item.clone()),
                    _ => return Err(format!("{item} is not one of {:?}", def.options)),
                }
            }
            Ok(Value::Array(out))
        }
        (FieldType::Date | FieldType::Datetime | FieldType::SingleSelect, Value::String(s)) => {
            parse_text(def, s)
        }
        (t, other) => Err(format!("expected a {} value, got {other}", t.as_str())),
    }
}

/// Parses a value typed as text (a CSV cell, a form field) into the field's JSON value.
/// Accepts what Japanese spreadsheets produce: full-width digits, thousands separators,
/// `2026/10/14` dates, はい/いいえ. An empty cell is `Ok(None)`.
pub fn parse_text(def: &FieldDefinition, raw: &str) -> Result<Value, String> {
    let s: String = raw.nfkc().collect::<String>().trim().to_string();
    match def.field_type {
        FieldType::Text => Ok(Value::String(raw.trim().to_string())),
        FieldType::Number => parse_number(&s)
            .map(Value::from)
            .or_else(|| {
                s.replace(',', "")
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
            })
            .ok_or_else(|| format!("{raw:?} is not a number")),
        FieldType::Boolean => match s.to_lowercase().as_str() {
            "true" | "yes" | "y" | "1" | "はい" | "有" | "あり" | "○" | "◯" => {
                Ok(Value::Bool(true))
            }
            "false" | "no" | "n" | "0" | "いいえ" | "無" | "なし" | "×" => {
                Ok(Value::Bool(false))
            }
            _ => Err(format!("{raw:?} is not yes/no")),
        },
        FieldType::Date => parse_date(&s)
            .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
            .ok_or_else(|| format!("{raw:?} is not a date (YYYY-MM-DD or YYYY/MM/DD)")),
        FieldType::Datetime => DateTime::parse_from_rfc3339(&s)
            .map(|d| d.with_timezone(&Utc))
            .or_else(|_| {
                parse_date(&s)
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|d| d.and_utc())
                    .ok_or(())
            })
            .map(|d| Value::String(d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
            .map_err(|_| format!("{raw:?} is not a date-time (RFC 3339)")),
        FieldType::SingleSelect => {
            let t = raw.trim();
            def.options
                .iter()
                .find(|o| o.as_str() == t || o.nfkc().collect::<String>() == s)
                .map(|o| Value::String(o.clone()))
                .ok_or_else(|| format!("{raw:?} is not one of {:?}", def.options))
        }
        FieldType::MultiSelect => {
            let mut out = Vec::new();
            for part in raw
                .split([';', '|', '、', '；'])
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                let o = def
                    .options
                    .iter()
                    .find(|o| o.as_str() == part)
                    .ok_or_else(|| format!("{part:?} is not one of {:?}", def.options))?;
                out.push(Value::String(o.clone()));
            }
            Ok(Value::Array(out))
        }
    }
}

/// Parses an integer as people type it: `1200`, `1,200`, `１，２００`, `1200人`, `約1200` is not.
pub fn parse_integer(raw: &str) -> Option<i64> {
    let s: String = raw.nfkc().collect::<String>().trim().to_string();
    parse_number(&s)
}

fn parse_number(s: &str) -> Option<i64> {
    let s = s.trim_end_matches(['人', '名', '社', '円']).trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    // Thousands separators must be well placed: "1,200" yes, "12,00" no.
    if digits.contains(',') {
        let groups: Vec<&str> = digits.split(',').collect();
        let ok = !groups[0].is_empty()
            && groups[0].len() <= 3
            && groups[1..].iter().all(|g| g.len() == 3);
        if !ok || !groups.iter().all(|g| g.chars().all(|c| c.is_ascii_digit())) {
            return None;
        }
    } else if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: i64 = digits.replace(',', "").parse().ok()?;
    Some(if neg { -n } else { n })
}

/// Parses `2026-10-14`, `2026/10/14`, `2026/1/5`, `2026年10月14日`, `20261014`.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let s: String = s.nfkc().collect::<String>();
    let s = s.trim();
    for fmt in ["%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y年%m月%d日", "%Y%m%d"] {
        if let Ok(d) = NaiveDate::parse_from_str(s, fmt) {
            return Some(d);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(t: FieldType, options: &[&str]) -> FieldDefinition {
        FieldDefinition {
            name: "f".into(),
            label: "F".into(),
            field_type: t,
            options: options.iter().map(|s| s.to_string()).collect(),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn numbers_as_spreadsheets_write_them() {
        assert_eq!(parse_integer("1,200"), Some(1200));
        assert_eq!(parse_integer("１５０"), Some(150));
        assert_eq!(parse_integer("１，２００"), Some(1200));
        assert_eq!(parse_integer("300人"), Some(300));
        assert_eq!(parse_integer("12,00"), None);
        assert_eq!(parse_integer("many"), None);
        assert_eq!(parse_integer(""), None);
    }

    #[test]
    fn dates_in_japanese_formats() {
        let d = NaiveDate::from_ymd_opt(2026, 10, 14).unwrap();
        for s in [
            "2026-10-14",
            "2026/10/14",
            "２０２６/１０/１４",
            "2026年10月14日",
            "20261014",
        ] {
            assert_eq!(parse_date(s), Some(d), "{s}");
        }
        assert_eq!(parse_date("2026/13/01"), None);
    }

    #[test]
    fn text_values_by_type() {
        assert_eq!(
            parse_text(&def(FieldType::Number, &[]), "１，２００").unwrap(),
            Value::from(1200)
        );
        assert_eq!(
            parse_text(&def(FieldType::Boolean, &[]), "はい").unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            parse_text(&def(FieldType::Date, &[]), "2026/10/14").unwrap(),
            Value::from("2026-10-14")
        );
        assert_eq!(
            parse_text(&def(FieldType::SingleSelect, &["高", "中", "低"]), "中").unwrap(),
            Value::from("中")
        );
        assert!(parse_text(&def(FieldType::SingleSelect, &["高", "中", "低"]), "最高").is_err());
        assert_eq!(
            parse_text(&def(FieldType::MultiSelect, &["a", "b"]), "a; b").unwrap(),
            serde_json::json!(["a", "b"])
        );
    }

    #[test]
    fn json_values_are_type_checked_and_named() {
        let mut defs = HashMap::new();
        defs.insert(
            "budget".to_string(),
            FieldDefinition {
                name: "budget".into(),
                ..def(FieldType::Number, &[])
            },
        );
        let ok: Map<String, Value> = serde_json::from_str(r#"{"budget": 5000000}"#).unwrap();
        assert!(validate_custom(ok, &defs).is_ok());
        let bad: Map<String, Value> =
            serde_json::from_str(r#"{"budget": "lots", "nope": 1}"#).unwrap();
        let errs = validate_custom(bad, &defs).unwrap_err();
        let fields: Vec<_> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert!(
            fields.contains(&"custom.budget") && fields.contains(&"custom.nope"),
            "{fields:?}"
        );
    }

    #[test]
    fn definitions_are_checked() {
        let bad = FieldInput {
            name: "Email".into(),
            label: None,
            field_type: FieldType::SingleSelect,
            options: vec![],
        };
        let errs = bad.validate().unwrap_err();
        assert_eq!(errs.0.len(), 2);
        let reserved = FieldInput {
            name: "email".into(),
            label: None,
            field_type: FieldType::Text,
            options: vec![],
        };
        assert_eq!(
            reserved.validate().unwrap_err().first().unwrap().code,
            "reserved_name"
        );
    }
}
