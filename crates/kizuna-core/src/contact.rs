//! Contacts: one person, lead or customer, with everything sales and marketing know about them.

use crate::email_address::normalize_email;
use crate::error::{ValidationError, ValidationErrors};
use crate::patch::Patch;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Where a contact stands in the funnel (R-LIFE-1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleStage {
    /// Receives newsletters; no buying signal yet.
    Subscriber,
    /// A known person with some interest (the default for a new contact).
    #[default]
    Lead,
    /// Marketing-qualified lead: fit and engagement passed the thresholds.
    Mql,
    /// Sales-qualified lead: a rep accepted it.
    Sql,
    /// An open deal.
    Opportunity,
    /// Bought.
    Customer,
    /// Recommends us.
    Evangelist,
    /// Not a prospect (wrong fit, competitor, spam).
    Disqualified,
    /// 休眠: was engaged, has gone silent.
    Dormant,
}

impl LifecycleStage {
    /// All stages, in funnel order.
    pub const ALL: [LifecycleStage; 9] = [
        Self::Subscriber,
        Self::Lead,
        Self::Mql,
        Self::Sql,
        Self::Opportunity,
        Self::Customer,
        Self::Evangelist,
        Self::Disqualified,
        Self::Dormant,
    ];

    /// The wire name (`mql`, `sql`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscriber => "subscriber",
            Self::Lead => "lead",
            Self::Mql => "mql",
            Self::Sql => "sql",
            Self::Opportunity => "opportunity",
            Self::Customer => "customer",
            Self::Evangelist => "evangelist",
            Self::Disqualified => "disqualified",
            Self::Dormant => "dormant",
        }
    }
}

impl fmt::Display for LifecycleStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LifecycleStage {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_lowercase();
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == t)
            .ok_or_else(|| {
                ValidationError::new(
                    "lifecycle_stage",
                    "invalid_value",
                    format!(
                        "{s:?} is not a lifecycle stage (one of: {})",
                        Self::ALL.map(|s| s.as_str()).join(", ")
                    ),
                )
            })
    }
}

/// Lead temperature (見込み度), set by scoring thresholds or by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Temperature {
    /// Little or no engagement.
    #[default]
    Cold,
    /// Some engagement.
    Warm,
    /// Ready for sales.
    Hot,
}

impl Temperature {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Warm => "warm",
            Self::Hot => "hot",
        }
    }
}

impl FromStr for Temperature {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_lowercase().as_str() {
            "cold" => Ok(Self::Cold),
            "warm" => Ok(Self::Warm),
            "hot" => Ok(Self::Hot),
            _ => Err(ValidationError::new(
                "temperature",
                "invalid_value",
                format!("{s:?} is not a temperature (cold, warm or hot)"),
            )),
        }
    }
}

/// First-touch source: how the contact first reached us. Set once, never overwritten by later
/// touches (later touches are events).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Channel class: `organic_search`, `paid_search`, `social`, `email`, `referral`, `direct`,
    /// `offline` (trade shows, business cards, seminars), `import`, `api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// utm_source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_source: Option<String>,
    /// utm_medium.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_medium: Option<String>,
    /// utm_campaign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_campaign: Option<String>,
    /// utm_term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_term: Option<String>,
    /// utm_content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_content: Option<String>,
    /// The referring URL of the first visit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    /// The first page seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landing_page: Option<String>,
    /// Free-form detail, e.g. the import or trade show name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Source {
    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        *self == Source::default()
    }
}

/// Postal address (for direct mail and territory rules).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostalAddress {
    /// 郵便番号 / ZIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// 都道府県 / state / region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// 市区町村 / city.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Street, building, floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street: Option<String>,
    /// ISO 3166 country code, e.g. `JP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

impl PostalAddress {
    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        *self == PostalAddress::default()
    }
}

/// A contact as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// Identifier (UUIDv7, so ids sort by creation time).
    pub id: Uuid,
    /// Normalized e-mail address (unique, case-insensitive); `None` for an anonymous visitor.
    pub email: Option<String>,
    /// Given name (名).
    pub first_name: Option<String>,
    /// Family name (姓).
    pub last_name: Option<String>,
    /// Phone.
    pub phone: Option<String>,
    /// Job title (役職).
    pub job_title: Option<String>,
    /// Department (部署).
    pub department: Option<String>,
    /// Company (account) the contact belongs to.
    pub company_id: Option<Uuid>,
    /// Funnel stage.
    pub lifecycle_stage: LifecycleStage,
    /// Lead temperature.
    pub temperature: Temperature,
    /// Sales rep who owns the contact.
    pub owner_id: Option<Uuid>,
    /// First touch.
    pub source: Source,
    /// Postal address.
    pub address: PostalAddress,
    /// Custom field values by field name.
    pub custom: Map<String, Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// The writable fields of a contact. On create, absent means empty; on update, absent means
/// unchanged and `null` clears.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    /// E-mail (normalized on validation).
    #[serde(default)]
    pub email: Patch<String>,
    /// Given name.
    #[serde(default)]
    pub first_name: Patch<String>,
    /// Family name.
    #[serde(default)]
    pub last_name: Patch<String>,
    /// Phone.
    #[serde(default)]
    pub phone: Patch<String>,
    /// Job title.
    #[serde(default)]
    pub job_title: Patch<String>,
    /// Department.
    #[serde(default)]
    pub department: Patch<String>,
    /// Company id.
    #[serde(default)]
    pub company_id: Patch<Uuid>,
    /// Stage.
    #[serde(default)]
    pub lifecycle_stage: Patch<LifecycleStage>,
    /// Temperature.
    #[serde(default)]
    pub temperature: Patch<Temperature>,
    /// Owner.
    #[serde(default)]
    pub owner_id: Patch<Uuid>,
    /// First-touch source (only applied when the contact has none yet).
    #[serde(default)]
    pub source: Patch<Source>,
    /// Postal address (replaces the stored one).
    #[serde(default)]
    pub address: Patch<PostalAddress>,
    /// Custom fields to set (`null` clears one); other custom fields are left alone.
    #[serde(default)]
    pub custom: Map<String, Value>,
}

/// Longest accepted text value, in characters.
pub const MAX_TEXT_LEN: usize = 1000;

impl ContactInput {
    /// Normalizes the e-mail and checks lengths; errors name each bad field.
    /// Custom values are checked separately against the field definitions
    /// ([`crate::field::validate_custom`]).
    pub fn validate(mut self) -> Result<Self, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        if let Patch::Value(e) = &self.email {
            match normalize_email(e, "email") {
                Ok(n) => self.email = Patch::Value(n),
                Err(e) => errs.push(e),
            }
        }
        for (name, v) in [
            ("first_name", &mut self.first_name),
            ("last_name", &mut self.last_name),
            ("phone", &mut self.phone),
            ("job_title", &mut self.job_title),
            ("department", &mut self.department),
        ] {
            if let Patch::Value(s) = v {
                let t = s.trim();
                if t.is_empty() {
                    // An empty string means "no value", like null.
                    *v = Patch::Null;
                } else if t.chars().count() > MAX_TEXT_LEN {
                    errs.push(ValidationError::new(
                        name,
                        "too_long",
                        format!("{name} is longer than {MAX_TEXT_LEN} characters"),
                    ));
                } else if t.len() != s.len() {
                    *v = Patch::Value(t.to_string());
                }
            }
        }
        if let Patch::Value(p) = &self.phone
            && !p
                .chars()
                .any(|c| c.is_ascii_digit() || ('０'..='９').contains(&c))
        {
            errs.push(ValidationError::new(
                "phone",
                "invalid_phone",
                format!("{p:?} has no digits"),
            ));
        }
        errs.into_result(self)
    }
}

impl Contact {
    /// A new, empty contact.
    pub fn new(id: Uuid, now: DateTime<Utc>) -> Self {
        Contact {
            id,
            email: None,
            first_name: None,
            last_name: None,
            phone: None,
            job_title: None,
            department: None,
            company_id: None,
            lifecycle_stage: LifecycleStage::default(),
            temperature: Temperature::default(),
            owner_id: None,
            source: Source::default(),
            address: PostalAddress::default(),
            custom: Map::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// Applies a validated input. With `overwrite` false, only empty fields are filled (the rule
    /// for imports that must not clobber what sales typed by hand). Returns whether anything
    /// changed, and the stage change if there was one.
    pub fn apply(&mut self, input: ContactInput, overwrite: bool) -> Applied {
        let mut changed = false;
        let mut set_text = |slot: &mut Option<String>, p: Patch<String>| match p {
            Patch::Absent => {}
            Patch::Null => {
                if overwrite && slot.is_some() {
                    *slot = None;
                    changed = true;
                }
            }
            Patch::Value(v) => {
                if (overwrite || slot.is_none()) && slot.as_deref() != Some(v.as_str()) {
                    *slot = Some(v);
                    changed = true;
                }
            }
        };
        set_text(&mut self.email, input.email);
        set_text(&mut self.first_name, input.first_name);
        set_text(&mut self.last_name, input.last_name);
        set_text(&mut self.phone, input.phone);
        set_text(&mut self.job_title, input.job_title);
        set_text(&mut self.department, input.department);
        fn set_opt<T: PartialEq>(
            slot: &mut Option<T>,
            p: Patch<T>,
            overwrite: bool,
            changed: &mut bool,
        ) {
            match p {
                Patch::Absent => {}
                Patch::Null => {
                    if overwrite && slot.is_some() {
                        *slot = None;
                        *changed = true;
                    }
                }
                Patch::Value(v) => {
                    if (overwrite || slot.is_none()) && slot.as_ref() != Some(&v) {
                        *slot = Some(v);
                        *changed = true;
                    }
                }
            }
        }
        set_opt(
            &mut self.company_id,
            input.company_id,
            overwrite,
            &mut changed,
        );
        set_opt(&mut self.owner_id, input.owner_id, overwrite, &mut changed);
        let mut stage_change = None;
        if let Patch::Value(s) = input.lifecycle_stage
            && overwrite
            && s != self.lifecycle_stage
        {
            stage_change = Some((self.lifecycle_stage, s));
            self.lifecycle_stage = s;
            changed = true;
        }
        if let Patch::Value(t) = input.temperature
            && overwrite
            && t != self.temperature
        {
            self.temperature = t;
            changed = true;
        }
        // First touch is first: never replaced once known.
        if let Patch::Value(s) = input.source
            && self.source.is_empty()
            && !s.is_empty()
        {
            self.source = s;
            changed = true;
        }
        match input.address {
            Patch::Value(a) if (overwrite || self.address.is_empty()) && a != self.address => {
                self.address = a;
                changed = true;
            }
            Patch::Null if overwrite && !self.address.is_empty() => {
                self.address = PostalAddress::default();
                changed = true;
            }
            _ => {}
        }
        for (k, v) in input.custom {
            let present = self.custom.get(&k).is_some_and(|v| !v.is_null());
            if v.is_null() {
                if overwrite && present {
                    self.custom.remove(&k);
                    changed = true;
                }
            } else if (overwrite || !present) && self.custom.get(&k) != Some(&v) {
                self.custom.insert(k, v);
                changed = true;
            }
        }
        Applied {
            changed,
            stage_change,
        }
    }
}

/// What [`Contact::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Whether any stored value changed.
    pub changed: bool,
    /// `(from, to)` when the lifecycle stage changed.
    pub stage_change: Option<(LifecycleStage, LifecycleStage)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 14, 9, 0, 0).unwrap()
    }

    #[test]
    fn stage_names_round_trip() {
        for s in LifecycleStage::ALL {
            assert_eq!(s.as_str().parse::<LifecycleStage>().unwrap(), s);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                Value::String(s.as_str().into())
            );
        }
        assert_eq!(
            "bogus".parse::<LifecycleStage>().unwrap_err().field,
            "lifecycle_stage"
        );
    }

    #[test]
    fn unknown_input_fields_are_named() {
        let e = serde_json::from_str::<ContactInput>(r#"{"emial":"a@b.jp"}"#).unwrap_err();
        assert!(e.to_string().contains("emial"), "{e}");
    }

    #[test]
    fn validation_normalizes_and_blanks() {
        let i: ContactInput =
            serde_json::from_str(r#"{"email":" A@B.JP ","first_name":"  ","last_name":" 山田 "}"#)
                .unwrap();
        let i = i.validate().unwrap();
        assert_eq!(i.email, Patch::Value("a@b.jp".into()));
        assert_eq!(i.first_name, Patch::Null);
        assert_eq!(i.last_name, Patch::Value("山田".into()));
    }

    #[test]
    fn fill_only_keeps_existing_values() {
        let mut c = Contact::new(Uuid::now_v7(), now());
        c.job_title = Some("部長".into());
        let input = ContactInput {
            job_title: Patch::Value("課長".into()),
            phone: Patch::Value("03-1234-5678".into()),
            ..Default::default()
        };
        let a = c.apply(input.clone(), false);
        assert!(a.changed);
        assert_eq!(c.job_title.as_deref(), Some("部長"));
        assert_eq!(c.phone.as_deref(), Some("03-1234-5678"));
        c.apply(input, true);
        assert_eq!(c.job_title.as_deref(), Some("課長"));
    }

    #[test]
    fn first_touch_is_never_replaced() {
        let mut c = Contact::new(Uuid::now_v7(), now());
        let s1 = Source {
            channel: Some("offline".into()),
            ..Default::default()
        };
        let s2 = Source {
            channel: Some("paid_search".into()),
            ..Default::default()
        };
        c.apply(
            ContactInput {
                source: Patch::Value(s1.clone()),
                ..Default::default()
            },
            true,
        );
        c.apply(
            ContactInput {
                source: Patch::Value(s2),
                ..Default::default()
            },
            true,
        );
        assert_eq!(c.source, s1);
    }

    #[test]
    fn stage_change_is_reported() {
        let mut c = Contact::new(Uuid::now_v7(), now());
        let a = c.apply(
            ContactInput {
                lifecycle_stage: Patch::Value(LifecycleStage::Mql),
                ..Default::default()
            },
            true,
        );
        assert_eq!(
            a.stage_change,
            Some((LifecycleStage::Lead, LifecycleStage::Mql))
        );
        let a = c.apply(
            ContactInput {
                lifecycle_stage: Patch::Value(LifecycleStage::Mql),
                ..Default::default()
            },
            true,
        );
        assert_eq!(a.stage_change, None);
        assert!(!a.changed);
    }
}
