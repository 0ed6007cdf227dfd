//! Lifecycle (R-LIFE): the history of a contact's stages, the sales handoff policy (owner
//! assignment, follow-up task, notification), and the rep's answer — accept with BANT, or reject
//! with a reason.

use crate::contact::LifecycleStage;
use crate::error::{ValidationError, ValidationErrors};
use crate::filter::{Node, Resolver};
use crate::span::Span;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Stages a contact may be promoted to MQL from (disqualified contacts, customers and contacts
/// already with sales are left alone).
pub fn may_become_mql(stage: LifecycleStage) -> bool {
    matches!(
        stage,
        LifecycleStage::Subscriber | LifecycleStage::Lead | LifecycleStage::Dormant
    )
}

/// Stages that end an active sales cycle.
pub fn ends_sales_cycle(stage: LifecycleStage) -> bool {
    matches!(
        stage,
        LifecycleStage::Customer
            | LifecycleStage::Evangelist
            | LifecycleStage::Disqualified
            | LifecycleStage::Dormant
            | LifecycleStage::Subscriber
            | LifecycleStage::Lead
    )
}

/// One `stage.changed` fact.
#[derive(Debug, Clone, PartialEq)]
pub struct StageChange {
    /// When.
    pub at: DateTime<Utc>,
    /// From (none for the first stage).
    pub from: Option<LifecycleStage>,
    /// To.
    pub to: LifecycleStage,
    /// Why (`api`, `scoring:<model>`, `sales.accepted`, `sales.rejected`, …).
    pub cause: String,
}

/// A stretch of time in one stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StagePeriod {
    /// The stage.
    pub stage: LifecycleStage,
    /// Entered.
    pub entered_at: DateTime<Utc>,
    /// Left (none for the current stage).
    pub left_at: Option<DateTime<Utc>>,
    /// Seconds spent (up to `now` for the current stage).
    pub seconds: i64,
    /// Why the contact entered it.
    pub cause: String,
}

/// The periods a contact spent in each stage, oldest first, from its creation (in
/// `initial` — the stage before the first recorded change) and its stage changes.
pub fn stage_history(
    created_at: DateTime<Utc>,
    initial: LifecycleStage,
    changes: &[StageChange],
    now: DateTime<Utc>,
) -> Vec<StagePeriod> {
    let mut changes: Vec<&StageChange> = changes.iter().collect();
    changes.sort_by_key(|c| c.at);
    let mut out: Vec<StagePeriod> = Vec::new();
    // A first change without a `from` is the stage given at creation; otherwise the contact
    // started in the first change's `from` (or `initial`).
    if changes.first().is_none_or(|c| c.from.is_some()) {
        out.push(StagePeriod {
            stage: changes.first().and_then(|c| c.from).unwrap_or(initial),
            entered_at: created_at,
            left_at: None,
            seconds: 0,
            cause: "created".into(),
        });
    }
    for c in changes {
        if let Some(last) = out.last_mut() {
            if last.stage == c.to {
                continue;
            }
            last.left_at = Some(c.at);
        }
        out.push(StagePeriod {
            stage: c.to,
            entered_at: c.at,
            left_at: None,
            seconds: 0,
            cause: c.cause.clone(),
        });
    }
    for p in &mut out {
        let end = p.left_at.unwrap_or(now);
        p.seconds = (end - p.entered_at).num_seconds().max(0);
    }
    out
}

/// How owners are chosen when a contact becomes an MQL.
#[derive(Debug, Clone, PartialEq)]
pub struct HandoffPolicy {
    /// Rules tried in order (territory, industry, size…); the first that holds picks the owner.
    pub rules: Vec<(Node, Uuid)>,
    /// Round-robin pool when no rule holds (empty: every sales user).
    pub pool: Vec<Uuid>,
    /// Follow-up task title (`{name}` and `{email}` are filled in).
    pub task_title: String,
    /// Task due after.
    pub task_due_in: Span,
    /// Where the owner notification is posted (signed), if anywhere.
    pub webhook_url: Option<String>,
    /// Secret for the signature.
    pub webhook_secret: Option<String>,
    /// Also e-mail the owner (plain-text alert to the sales user's address).
    pub email_owner: bool,
}

impl Default for HandoffPolicy {
    fn default() -> Self {
        HandoffPolicy {
            rules: vec![],
            pool: vec![],
            task_title: "Follow up with MQL {name}".into(),
            task_due_in: Span::days(1),
            webhook_url: None,
            webhook_secret: None,
            email_owner: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDef {
    #[serde(default)]
    rules: Vec<RuleDef>,
    #[serde(default)]
    round_robin: Vec<String>,
    #[serde(default)]
    task: Option<TaskDef>,
    #[serde(default)]
    webhook: Option<WebhookDef>,
    #[serde(default)]
    email_owner: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    when: Value,
    owner: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskDef {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    due_in: Option<Span>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookDef {
    url: String,
    #[serde(default)]
    secret: Option<String>,
}

/// Compiles a handoff policy (documented JSON); `user` resolves an owner given by e-mail or id.
pub fn compile_policy(
    def: &Value,
    resolver: &dyn Resolver,
    user: &dyn Fn(&str) -> Option<Uuid>,
) -> Result<HandoffPolicy, ValidationErrors> {
    let d: PolicyDef = serde_path_to_error::deserialize(def).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." {
            inner
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
                .unwrap_or("")
                .to_string()
        } else {
            path
        };
        ValidationErrors::from(ValidationError::new(field, "invalid_value", inner))
    })?;
    let mut errs = ValidationErrors::default();
    let mut p = HandoffPolicy {
        email_owner: d.email_owner,
        ..HandoffPolicy::default()
    };
    for (i, r) in d.rules.iter().enumerate() {
        let when =
            crate::filter::compile_attributes(&r.when, resolver, &format!("rules[{i}].when"));
        let owner = user(r.owner.trim());
        if owner.is_none() {
            errs.push(ValidationError::new(
                format!("rules[{i}].owner"),
                "unknown_user",
                format!("no user {:?} (give a user's e-mail or id)", r.owner),
            ));
        }
        match (when, owner) {
            (Ok(w), Some(o)) => p.rules.push((w, o)),
            (Err(e), _) => errs.0.extend(e.0),
            _ => {}
        }
    }
    for (i, u) in d.round_robin.iter().enumerate() {
        match user(u.trim()) {
            Some(id) => p.pool.push(id),
            None => errs.push(ValidationError::new(
                format!("round_robin[{i}]"),
                "unknown_user",
                format!("no user {u:?}"),
            )),
        }
    }
    if let Some(t) = d.task {
        if let Some(title) = t.title {
            if title.trim().is_empty() || title.chars().count() > 300 {
                errs.push(ValidationError::new(
                    "task.title",
                    "invalid_value",
                    "a task title is 1 to 300 characters",
                ));
            }
            p.task_title = title;
        }
        if let Some(d) = t.due_in {
            p.task_due_in = d;
        }
    }
    if let Some(w) = d.webhook {
        let url = w.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            errs.push(ValidationError::new(
                "webhook.url",
                "invalid_url",
                "the webhook URL must start with http:// or https://",
            ));
        }
        p.webhook_url = Some(url.to_string());
        p.webhook_secret = w.secret.filter(|s| !s.is_empty());
    }
    errs.into_result(p)
}

/// The rep's qualification when accepting a lead (BANT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bant {
    /// Budget (e.g. "¥5,000,000 approved").
    pub budget: String,
    /// Authority (who decides).
    pub authority: String,
    /// Need (the problem to solve).
    pub need: String,
    /// Timeline (e.g. "within 6 months").
    pub timeline: String,
}

impl Bant {
    /// Every field must say something.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        for (name, v) in [
            ("budget", &self.budget),
            ("authority", &self.authority),
            ("need", &self.need),
            ("timeline", &self.timeline),
        ] {
            if v.trim().is_empty() || v.chars().count() > 1000 {
                errs.push(ValidationError::new(
                    format!("bant.{name}"),
                    "required",
                    format!("{name} must be 1 to 1000 characters"),
                ));
            }
        }
        errs.into_result(())
    }
}

/// Why a rep sent a lead back to nurture (counted in reports).
pub const REJECT_REASONS: &[&str] = &[
    "not_a_fit",
    "no_budget",
    "no_authority",
    "no_need",
    "bad_timing",
    "unreachable",
    "existing_customer",
    "competitor",
    "duplicate",
    "other",
];

/// Checks a rejection reason.
pub fn check_reject_reason(reason: &str) -> Result<(), ValidationError> {
    if REJECT_REASONS.contains(&reason) {
        Ok(())
    } else {
        Err(ValidationError::new(
            "reason",
            "invalid_value",
            format!("reason is one of: {}", REJECT_REASONS.join(", ")),
        ))
    }
}

/// Fills `{name}` and `{email}` in a task title.
pub fn task_title(template: &str, name: &str, email: &str) -> String {
    template.replace("{name}", name).replace("{email}", email)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap() + Duration::hours(h)
    }

    #[test]
    fn history_measures_time_in_each_stage() {
        let changes = vec![
            StageChange {
                at: t(48),
                from: Some(LifecycleStage::Lead),
                to: LifecycleStage::Mql,
                cause: "scoring:seed-001".into(),
            },
            StageChange {
                at: t(72),
                from: Some(LifecycleStage::Mql),
                to: LifecycleStage::Sql,
                cause: "sales.accepted".into(),
            },
        ];
        let h = stage_history(t(0), LifecycleStage::Lead, &changes, t(100));
        let got: Vec<(LifecycleStage, i64, &str)> = h
            .iter()
            .map(|p| (p.stage, p.seconds / 3600, p.cause.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (LifecycleStage::Lead, 48, "created"),
                (LifecycleStage::Mql, 24, "scoring:seed-001"),
                (LifecycleStage::Sql, 28, "sales.accepted"),
            ]
        );
        assert!(h[2].left_at.is_none());
    }

    #[test]
    fn bant_needs_every_field() {
        let b = Bant {
            budget: "5M".into(),
            authority: " ".into(),
            need: "x".into(),
            timeline: "Q3".into(),
        };
        let e = b.validate().unwrap_err();
        assert_eq!(e.0[0].field, "bant.authority");
        assert!(check_reject_reason("no_budget").is_ok());
        assert_eq!(check_reject_reason("meh").unwrap_err().field, "reason");
    }
}
