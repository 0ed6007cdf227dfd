//! Nurture programs (シナリオメール / ステップメール, seed 003 and 004): the documented JSON
//! definition, its validation (every problem names the path of the bad node, e.g.
//! `steps[3].then`), and the step machine that both the durable runner and the simulator drive.
//!
//! A program is a set of entry **triggers**, an optional **audience** (a filter the contact must
//! pass to enter), **steps** (an ordered list; each step goes to the next one unless it says
//! `next`, a branch says `then` / `else`, a split names its paths), **goals** (reaching one ends
//! the enrollment as `goal_reached`), **exit** rules (unsubscribed, active sales cycle), a
//! **re-entry** policy, **pressure** (quiet hours, send window, frequency cap, no duplicate
//! message across programs) and what happens at the end (`on_end`).
//!
//! [`advance`] runs one enrollment from where it stands until it waits or ends, asking an
//! [`Env`] for everything outside the definition (conditions, dates, send checks), and emits
//! [`Action`]s. The runner turns those into database effects keyed by
//! (enrollment, step, sequence) so nothing runs twice; the simulator only counts them.

use crate::contact::{Contact, LifecycleStage};
use crate::error::{ValidationError, ValidationErrors};
use crate::filter::event::EventMatcher;
use crate::filter::{self, Filter, Resolver};
use crate::span::Span;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Most steps a program may have.
pub const MAX_STEPS: usize = 200;
/// Most steps one enrollment runs in one go without waiting (guards against loops).
pub const MAX_RUN: usize = 100;

/// Where a step goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A step (index).
    Step(usize),
    /// The end of the program (`on_end` applies).
    End,
}

/// A branch condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// A condition in the filter language, evaluated for the contact at the step's instant.
    Filter(Box<Filter>),
    /// Whether the mail sent by an earlier step of this enrollment was opened / clicked.
    EmailStep {
        /// The send_email step.
        step: usize,
        /// `opened` or `clicked`.
        what: String,
    },
}

/// A step and what it does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// Put a mail in the outbox.
    SendEmail {
        /// Template name or id.
        template: String,
        /// `identity` (the sender) or `owner` (the contact's owner).
        author: String,
        /// Subscription type (marketing mail needs consent for it).
        subscription_type: Option<String>,
    },
    /// A signed webhook.
    Webhook {
        /// URL.
        url: String,
    },
    /// A sales task for the owner.
    Task {
        /// Title (`{name}` is replaced by the contact's name).
        title: String,
        /// Due after.
        due_in: Option<Span>,
    },
    /// A signed notification to the owner (the handoff policy's webhook).
    NotifyOwner {
        /// What to tell.
        message: String,
    },
    /// Wait a duration.
    Wait {
        /// How long.
        duration: Span,
    },
    /// Wait until an instant: fixed, or a date field plus an offset.
    WaitUntil {
        /// Fixed instant (µs).
        at: Option<i64>,
        /// Date field (`custom.renewal_date`).
        field: Option<String>,
        /// Offset from the field (µs, may be negative).
        offset: i64,
    },
    /// Wait until an event happens, or the timeout passes.
    WaitEvent {
        /// Which events.
        matcher: EventMatcher,
        /// How long to wait.
        timeout: Span,
        /// Where to go on timeout.
        timeout_next: Next,
    },
    /// Branch.
    Branch {
        /// Condition.
        cond: Cond,
        /// When it holds.
        then: Next,
        /// When it does not.
        otherwise: Next,
    },
    /// Random split with holdout.
    Split {
        /// (percent, where).
        paths: Vec<(u32, Next)>,
        /// Percent held out (they exit as `holdout`).
        holdout: u32,
    },
    /// Set a contact field.
    UpdateField {
        /// Field name (`job_title`, `custom.x`).
        field: String,
        /// Value (`null` clears).
        value: Value,
    },
    /// Add (or subtract) points to a number field.
    AddScore {
        /// Number field (default `custom.nurture_score`).
        field: String,
        /// Points.
        points: f64,
    },
    /// Set the lifecycle stage.
    SetStage {
        /// Stage.
        stage: LifecycleStage,
    },
    /// Add to a static list.
    ListAdd {
        /// List name or id.
        list: String,
    },
    /// Remove from a static list.
    ListRemove {
        /// List name or id.
        list: String,
    },
    /// Leave this program and enter another one.
    MoveTo {
        /// Program name or id.
        program: String,
    },
    /// Leave the program.
    Exit {
        /// Reason recorded.
        reason: String,
    },
}

impl StepKind {
    /// The wire name of the step type.
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::SendEmail { .. } => "send_email",
            StepKind::Webhook { .. } => "webhook",
            StepKind::Task { .. } => "create_task",
            StepKind::NotifyOwner { .. } => "notify_owner",
            StepKind::Wait { .. } => "wait",
            StepKind::WaitUntil { .. } => "wait_until",
            StepKind::WaitEvent { .. } => "wait_for_event",
            StepKind::Branch { .. } => "branch",
            StepKind::Split { .. } => "split",
            StepKind::UpdateField { .. } => "update_field",
            StepKind::AddScore { .. } => "add_score",
            StepKind::SetStage { .. } => "set_stage",
            StepKind::ListAdd { .. } => "add_to_list",
            StepKind::ListRemove { .. } => "remove_from_list",
            StepKind::MoveTo { .. } => "move_to_program",
            StepKind::Exit { .. } => "exit",
        }
    }

    /// Whether the enrollment rests on this step (a wait).
    pub fn is_wait(&self) -> bool {
        matches!(
            self,
            StepKind::Wait { .. } | StepKind::WaitUntil { .. } | StepKind::WaitEvent { .. }
        )
    }
}

/// One step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Id, unique in the program (stable across versions: mappings use it).
    pub id: String,
    /// Label.
    pub name: Option<String>,
    /// What it does.
    pub kind: StepKind,
    /// Where it goes next (default: the following step, or the end).
    pub next: Next,
}

/// What starts an enrollment.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// A log event (tracked event, form submitted, segment entered/exited, stage changed, score
    /// threshold crossed, contact created) — each compiled to an event matcher.
    Event {
        /// The trigger's type as written.
        kind: String,
        /// Matcher.
        matcher: EventMatcher,
    },
    /// A date field with an offset (renewal −90 days).
    Date {
        /// Field (`custom.renewal_date`).
        field: String,
        /// Offset (µs).
        offset: i64,
    },
    /// No activity for a span.
    Inactivity {
        /// Quiet for.
        after: Span,
    },
    /// Added by a sales rep or the API only.
    Api,
    /// A recurring schedule enrolling the members of a segment or list.
    Recurring {
        /// First occurrence (µs).
        start: i64,
        /// Period.
        every: Span,
        /// Segment name or id.
        segment: Option<String>,
        /// List name or id.
        list: Option<String>,
    },
}

/// Re-entry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    /// Once per contact, ever.
    Never,
    /// Again once this long has passed since the last enrollment ended.
    After(Span),
    /// Every time a trigger fires (never twice at the same time: one active enrollment).
    Always,
}

/// A goal: reaching it ends the enrollment as `goal_reached`.
#[derive(Debug, Clone, PartialEq)]
pub enum Goal {
    /// An event after entry (booked a demo).
    Event {
        /// Goal id.
        id: String,
        /// Matcher.
        matcher: EventMatcher,
    },
    /// A state (became SQL), checked on each of the contact's events and before each step.
    Condition {
        /// Goal id.
        id: String,
        /// Condition.
        filter: Box<Filter>,
    },
}

impl Goal {
    /// The goal's id.
    pub fn id(&self) -> &str {
        match self {
            Goal::Event { id, .. } | Goal::Condition { id, .. } => id,
        }
    }
}

/// A daily window (local time, seconds since midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyWindow {
    /// Start.
    pub start: u32,
    /// End (may be before start: the window spans midnight).
    pub end: u32,
}

impl DailyWindow {
    fn contains(&self, s: u32) -> bool {
        if self.start <= self.end {
            s >= self.start && s < self.end
        } else {
            s >= self.start || s < self.end
        }
    }
}

/// Pressure control (R-PROG-5).
#[derive(Debug, Clone, PartialEq)]
pub struct Pressure {
    /// Default time zone; a contact's `custom.time_zone` wins.
    pub time_zone: Zone,
    /// No mail in these hours.
    pub quiet_hours: Option<DailyWindow>,
    /// Mail only in these hours…
    pub send_window: Option<DailyWindow>,
    /// …on these weekdays (0 = Monday).
    pub send_days: Option<[bool; 7]>,
    /// At most this many program mails per contact per span, across all programs.
    pub frequency_cap: Option<(u32, Span)>,
    /// No two program mails of the same template to one contact within this span.
    pub dedupe: Span,
}

/// A compiled program definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// Name.
    pub name: String,
    /// Triggers.
    pub triggers: Vec<Trigger>,
    /// Entry condition.
    pub audience: Option<Filter>,
    /// Steps.
    pub steps: Vec<Step>,
    /// Goals.
    pub goals: Vec<Goal>,
    /// Exit when the contact unsubscribes from e-mail.
    pub exit_on_unsubscribe: bool,
    /// Exit (and do not enter) when the contact is in an active sales cycle (R-LIFE-4), unless
    /// a rep or the API added it.
    pub exit_on_sales_cycle: bool,
    /// Re-entry.
    pub reentry: Reentry,
    /// Pressure.
    pub pressure: Pressure,
    /// At the end: `complete`, or move to a program.
    pub on_end: OnEnd,
}

/// What happens at the end of the steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnEnd {
    /// The enrollment is completed (and, when given, the contact gets this stage).
    Complete {
        /// Stage to set (e.g. `dormant` after an unanswered re-engagement).
        stage: Option<LifecycleStage>,
    },
    /// The contact moves to another program.
    MoveTo(String),
}

/// Names a program refers to that only the store can check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Path of the node.
    pub path: String,
    /// `template`, `program`, `list`, `segment`.
    pub kind: &'static str,
    /// Name or id as written.
    pub name: String,
}

impl Program {
    /// Index of a step by id.
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// The references to check against the store (templates, programs, lists, segments).
    pub fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            let (kind, name, key) = match &s.kind {
                StepKind::SendEmail { template, .. } => ("template", template, "template"),
                StepKind::ListAdd { list } | StepKind::ListRemove { list } => {
                    ("list", list, "list")
                }
                StepKind::MoveTo { program } => ("program", program, "program"),
                _ => continue,
            };
            out.push(Reference {
                path: format!("steps[{i}].{key}"),
                kind,
                name: name.clone(),
            });
        }
        for (i, t) in self.triggers.iter().enumerate() {
            if let Trigger::Recurring { segment, list, .. } = t {
                if let Some(s) = segment {
                    out.push(Reference {
                        path: format!("triggers[{i}].segment"),
                        kind: "segment",
                        name: s.clone(),
                    });
                }
                if let Some(l) = list {
                    out.push(Reference {
                        path: format!("triggers[{i}].list"),
                        kind: "list",
                        name: l.clone(),
                    });
                }
            }
        }
        if let OnEnd::MoveTo(p) = &self.on_end {
            out.push(Reference {
                path: "on_end.move_to".into(),
                kind: "program",
                name: p.clone(),
            });
        }
        out
    }

    /// Whether the program reads a date field for entry.
    pub fn date_triggers(&self) -> impl Iterator<Item = (usize, &str, i64)> {
        self.triggers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                Trigger::Date { field, offset } => Some((i, field.as_str(), *offset)),
                _ => None,
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation

struct P<'a> {
    errs: ValidationErrors,
    r: &'a dyn Resolver,
}

impl P<'_> {
    fn err(&mut self, path: impl Into<String>, code: &'static str, msg: impl Into<String>) {
        self.errs.push(ValidationError::new(path, code, msg));
    }

    fn str_of(&mut self, v: &Value, key: &str, path: &str, required: bool) -> Option<String> {
        match v.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                self.err(
                    format!("{path}.{key}"),
                    "required",
                    format!("`{key}` is required"),
                );
                None
            }
            Some(_) => {
                self.err(
                    format!("{path}.{key}"),
                    "invalid_value",
                    format!("`{key}` must be a non-empty string"),
                );
                None
            }
        }
    }

    fn span_of(&mut self, v: &Value, key: &str, path: &str, required: bool) -> Option<Span> {
        let s = self.str_of(v, key, path, required)?;
        match s.parse::<Span>() {
            Ok(x) => Some(x),
            Err(m) => {
                self.err(format!("{path}.{key}"), "invalid_duration", m);
                None
            }
        }
    }

    fn offset_of(&mut self, v: &Value, key: &str, path: &str) -> i64 {
        let Some(s) = self.str_of(v, key, path, false) else {
            return 0;
        };
        match parse_offset(&s) {
            Some(x) => x,
            None => {
                self.err(
                    format!("{path}.{key}"),
                    "invalid_duration",
                    format!("{s:?} is not an offset: write e.g. -90d, +1d, 0d or -12h"),
                );
                0
            }
        }
    }

    fn matcher(&mut self, event: Value, filters: Option<&Value>, path: &str) -> EventMatcher {
        match filter::parse_matcher(&event, filters, path) {
            Ok(m) => m,
            Err(e) => {
                self.errs.0.extend(e.0);
                EventMatcher {
                    types: vec![],
                    filters: vec![],
                }
            }
        }
    }

    fn filter(&mut self, v: &Value, path: &str) -> Option<Filter> {
        match filter::compile(v, self.r, path) {
            Ok(f) => Some(f),
            Err(e) => {
                self.errs.0.extend(e.0);
                None
            }
        }
    }
}

/// Parses a signed offset: `-90d`, `+1d`, `30d`, `0d`.
pub fn parse_offset(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if rest.starts_with('0') && rest[1..].chars().all(|c| c.is_ascii_alphabetic()) {
        return Some(0);
    }
    let span: Span = rest.parse().ok()?;
    Some(if neg {
        -span.as_micros()
    } else {
        span.as_micros()
    })
}

/// Parses `HH:MM` into seconds since midnight.
pub fn parse_clock(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 3600 + m * 60 <= 86_400).then_some(h * 3600 + m * 60)
}

/// A time zone: an IANA name with its daylight-saving rules (`America/New_York`,
/// `Asia/Tokyo`) or a fixed offset (`+09:00`, `-05:30`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// Seconds east of UTC, all year.
    Fixed(i32),
    /// A named zone of the IANA database.
    Named(chrono_tz::Tz),
}

impl Zone {
    /// Japan Standard Time, the default of programs that name no zone.
    pub const JST: Zone = Zone::Fixed(9 * 3600);

    /// Seconds east of UTC at instant `t` (µs).
    pub fn offset_at(&self, t: i64) -> i32 {
        use chrono::Offset;
        use chrono::TimeZone;
        match self {
            Zone::Fixed(o) => *o,
            Zone::Named(tz) => {
                let utc = chrono::DateTime::from_timestamp_micros(t)
                    .unwrap_or_default()
                    .naive_utc();
                tz.offset_from_utc_datetime(&utc).fix().local_minus_utc()
            }
        }
    }

    /// The instant (µs) of a wall-clock time: `day` days after 1970-01-01 and `secs` seconds
    /// after midnight, local. A time skipped by a daylight-saving jump is read as the same time
    /// after the jump; a repeated one as its first occurrence.
    pub fn instant_of(&self, day: i64, secs: u32) -> i64 {
        use chrono::TimeZone;
        let wall = day * 86_400 + secs as i64;
        match self {
            Zone::Fixed(o) => (wall - *o as i64) * 1_000_000,
            Zone::Named(tz) => {
                let naive = chrono::DateTime::from_timestamp(wall, 0)
                    .unwrap_or_default()
                    .naive_utc();
                let r = tz.from_local_datetime(&naive);
                let at = r.earliest().or_else(|| {
                    tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                        .earliest()
                });
                match at {
                    Some(a) => a.timestamp_micros(),
                    None => (wall - self.offset_at(wall * 1_000_000) as i64) * 1_000_000,
                }
            }
        }
    }
}

/// Parses a time zone: an IANA name (`Asia/Tokyo`, `America/New_York`, `UTC`), `JST`, or a
/// fixed offset `±HH:MM`.
pub fn parse_time_zone(s: &str) -> Option<Zone> {
    let t = s.trim();
    match t {
        "UTC" | "Z" | "GMT" => return Some(Zone::Fixed(0)),
        "JST" => return Some(Zone::JST),
        _ => {}
    }
    if let Ok(tz) = t.parse::<chrono_tz::Tz>() {
        return Some(Zone::Named(tz));
    }
    let (sign, rest) = match t.chars().next()? {
        '+' => (1, &t[1..]),
        '-' => (-1, &t[1..]),
        _ => return None,
    };
    let secs = parse_clock(rest)? as i32;
    (secs <= 14 * 3600).then_some(Zone::Fixed(sign * secs))
}

const TRIGGER_TYPES: &str = "contact_created, event, form_submitted, segment_entered, segment_exited, stage_changed, score_threshold, date, inactivity, api, recurring";
const STEP_TYPES: &str = "send_email, webhook, create_task, notify_owner, wait, wait_until, wait_for_event, branch, split, update_field, add_score, set_stage, add_to_list, remove_from_list, move_to_program, exit";

/// Checks and compiles a program definition (the JSON documented in `docs/programs.md`). Every
/// problem is reported with the path of the bad node.
pub fn compile(def: &Value, r: &dyn Resolver) -> Result<Program, ValidationErrors> {
    let mut p = P {
        errs: ValidationErrors::default(),
        r,
    };
    if !def.is_object() {
        p.err("", "invalid_value", "a program is a JSON object");
        return Err(p.errs);
    }
    let name = p.str_of(def, "name", "", true).unwrap_or_default();
    let name = name.trim_start_matches('.').to_string();
    fix_root_paths(&mut p.errs);

    // Triggers.
    let mut triggers = Vec::new();
    match def.get("triggers") {
        Some(Value::Array(ts)) if !ts.is_empty() => {
            for (i, t) in ts.iter().enumerate() {
                if let Some(t) = trigger(&mut p, t, &format!("triggers[{i}]")) {
                    triggers.push(t);
                }
            }
        }
        _ => p.err(
            "triggers",
            "required",
            format!("a program needs at least one trigger (one of: {TRIGGER_TYPES})"),
        ),
    }
    let audience = match def.get("audience") {
        None | Some(Value::Null) => None,
        Some(v) => p.filter(v, "audience"),
    };

    // Steps: ids first, so `next` can point forward.
    let raw_steps: Vec<Value> = match def.get("steps") {
        Some(Value::Array(s)) if !s.is_empty() && s.len() <= MAX_STEPS => s.clone(),
        _ => {
            p.err(
                "steps",
                "required",
                format!("a program needs 1 to {MAX_STEPS} steps"),
            );
            vec![]
        }
    };
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, s) in raw_steps.iter().enumerate() {
        let path = format!("steps[{i}]");
        match s.get("id").and_then(Value::as_str) {
            Some(id) if valid_id(id) => {
                if ids.insert(id.to_string(), i).is_some() {
                    p.err(
                        format!("{path}.id"),
                        "duplicate",
                        format!("step id {id:?} is used twice"),
                    );
                }
            }
            _ => p.err(
                format!("{path}.id"),
                "required",
                "each step needs an `id`: 1 to 64 letters, digits, `_` or `-`",
            ),
        }
    }
    let mut steps = Vec::new();
    for (i, s) in raw_steps.iter().enumerate() {
        let path = format!("steps[{i}]");
        let default_next = if i + 1 < raw_steps.len() {
            Next::Step(i + 1)
        } else {
            Next::End
        };
        if let Some(st) = step(&mut p, s, &path, &ids, default_next) {
            steps.push(st);
        }
    }
    if steps.len() == raw_steps.len() {
        // Email-step conditions must name a send_email step.
        for (i, s) in steps.iter().enumerate() {
            if let StepKind::Branch {
                cond: Cond::EmailStep { step, .. },
                ..
            } = &s.kind
                && !matches!(steps[*step].kind, StepKind::SendEmail { .. })
            {
                p.err(
                    format!("steps[{i}].if.step"),
                    "invalid_value",
                    "an opened/clicked condition names a send_email step",
                );
            }
        }
        check_loops(&mut p, &steps);
    }

    // Goals.
    let mut goals = Vec::new();
    if let Some(gs) = def.get("goals") {
        match gs.as_array() {
            Some(gs) => {
                for (i, g) in gs.iter().enumerate() {
                    let path = format!("goals[{i}]");
                    let id = p
                        .str_of(g, "id", &path, false)
                        .unwrap_or_else(|| format!("goal{}", i + 1));
                    if let Some(c) = g.get("condition") {
                        if let Some(f) = p.filter(c, &format!("{path}.condition")) {
                            goals.push(Goal::Condition {
                                id,
                                filter: Box::new(f),
                            });
                        }
                    } else if let Some(e) = g.get("event") {
                        let m = p.matcher(e.clone(), g.get("where"), &path);
                        goals.push(Goal::Event { id, matcher: m });
                    } else {
                        p.err(
                            path,
                            "invalid_value",
                            "a goal has a `condition` (filter) or an `event`",
                        );
                    }
                }
            }
            None => p.err("goals", "invalid_value", "`goals` is a list"),
        }
    }
    let exit = def.get("exit").cloned().unwrap_or(json!({}));
    let flag = |p: &mut P, k: &str| match exit.get(k) {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            p.err(format!("exit.{k}"), "invalid_value", "true or false");
            true
        }
    };
    let exit_on_unsubscribe = flag(&mut p, "unsubscribed");
    let exit_on_sales_cycle = flag(&mut p, "sales_cycle");

    let reentry = match def.get("reentry") {
        None | Some(Value::Null) => Reentry::Never,
        Some(Value::String(s)) if s == "never" => Reentry::Never,
        Some(Value::String(s)) if s == "always" => Reentry::Always,
        Some(v @ Value::Object(_)) => match v.get("policy").and_then(Value::as_str) {
            Some("never") => Reentry::Never,
            Some("always") => Reentry::Always,
            Some("after") => match p.span_of(v, "after", "reentry", true) {
                Some(s) => Reentry::After(s),
                None => Reentry::Never,
            },
            _ => {
                p.err(
                    "reentry.policy",
                    "invalid_value",
                    "one of never, after, always",
                );
                Reentry::Never
            }
        },
        Some(_) => {
            p.err(
                "reentry",
                "invalid_value",
                "`never`, `always` or {\"policy\": \"after\", \"after\": \"30d\"}",
            );
            Reentry::Never
        }
    };

    let pressure = pressure(&mut p, def.get("pressure").unwrap_or(&json!({})));

    let on_end = match def.get("on_end") {
        None | Some(Value::Null) => OnEnd::Complete { stage: None },
        Some(v) => {
            if let Some(m) = v.get("move_to") {
                match m.as_str() {
                    Some(s) if !s.trim().is_empty() => OnEnd::MoveTo(s.trim().to_string()),
                    _ => {
                        p.err("on_end.move_to", "invalid_value", "a program name or id");
                        OnEnd::Complete { stage: None }
                    }
                }
            } else {
                let stage = match v.get("set_stage") {
                    None | Some(Value::Null) => None,
                    Some(s) => match serde_json::from_value::<LifecycleStage>(s.clone()) {
                        Ok(st) => Some(st),
                        Err(_) => {
                            p.err("on_end.set_stage", "invalid_value", "a lifecycle stage");
                            None
                        }
                    },
                };
                if v.get("action")
                    .and_then(Value::as_str)
                    .unwrap_or("complete")
                    != "complete"
                {
                    p.err(
                        "on_end.action",
                        "invalid_value",
                        "`complete` (or give `move_to`)",
                    );
                }
                OnEnd::Complete { stage }
            }
        }
    };

    if !p.errs.is_empty() {
        return Err(p.errs);
    }
    Ok(Program {
        name,
        triggers,
        audience,
        steps,
        goals,
        exit_on_unsubscribe,
        exit_on_sales_cycle,
        reentry,
        pressure,
        on_end,
    })
}

fn fix_root_paths(e: &mut ValidationErrors) {
    for x in &mut e.0 {
        if let Some(s) = x.field.strip_prefix('.') {
            x.field = s.to_string();
        }
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn trigger(p: &mut P, t: &Value, path: &str) -> Option<Trigger> {
    let ty = p.str_of(t, "type", path, true)?;
    let ev = |p: &mut P, kind: &str, event: Value, filters: Value| {
        let m = p.matcher(event, Some(&filters), path);
        Some(Trigger::Event {
            kind: kind.to_string(),
            matcher: m,
        })
    };
    match ty.as_str() {
        "contact_created" => ev(p, &ty, json!("contact.created"), json!([])),
        "event" => {
            let Some(e) = t.get("event") else {
                p.err(
                    format!("{path}.event"),
                    "required",
                    "an event name or names",
                );
                return None;
            };
            let w = t.get("where").cloned().unwrap_or(json!([]));
            ev(p, &ty, e.clone(), w)
        }
        "form_submitted" => {
            let mut w = t
                .get("where")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(f) = p.str_of(t, "form", path, false) {
                w.push(json!({"property": "form", "op": "eq", "value": f}));
            }
            ev(p, &ty, json!("form.submitted"), Value::Array(w))
        }
        "segment_entered" | "segment_exited" => {
            let s = p.str_of(t, "segment", path, true)?;
            let Some(id) = p.r.segment(&s) else {
                p.err(
                    format!("{path}.segment"),
                    "unknown_segment",
                    format!("no segment named {s:?}"),
                );
                return None;
            };
            let e = if ty == "segment_entered" {
                "segment.entered"
            } else {
                "segment.exited"
            };
            ev(
                p,
                &ty,
                json!(e),
                json!([{"property": "segment_id", "op": "eq", "value": id.to_string()}]),
            )
        }
        "stage_changed" => {
            let mut w = Vec::new();
            for k in ["to", "from"] {
                if let Some(v) = t.get(k) {
                    if serde_json::from_value::<LifecycleStage>(v.clone()).is_err() {
                        p.err(format!("{path}.{k}"), "invalid_value", "a lifecycle stage");
                        return None;
                    }
                    w.push(json!({"property": k, "op": "eq", "value": v}));
                }
            }
            ev(p, &ty, json!("stage.changed"), Value::Array(w))
        }
        "score_threshold" => {
            let m = p.str_of(t, "model", path, true)?;
            let Some(id) = p.r.scoring_model(&m) else {
                p.err(
                    format!("{path}.model"),
                    "unknown_scoring_model",
                    format!("no scoring model named {m:?}"),
                );
                return None;
            };
            let th = p.str_of(t, "threshold", path, true)?;
            let dir = t.get("direction").and_then(Value::as_str).unwrap_or("up");
            if dir != "up" && dir != "down" {
                p.err(format!("{path}.direction"), "invalid_value", "up or down");
            }
            ev(
                p,
                &ty,
                json!("score.threshold_crossed"),
                json!([{"property": "model_id", "op": "eq", "value": id.to_string()},
                       {"property": "threshold", "op": "eq", "value": th},
                       {"property": "direction", "op": "eq", "value": dir}]),
            )
        }
        "date" => {
            let field = p.str_of(t, "field", path, true)?;
            let offset = p.offset_of(t, "offset", path);
            Some(Trigger::Date { field, offset })
        }
        "inactivity" => {
            let after = p.span_of(t, "after", path, true)?;
            Some(Trigger::Inactivity { after })
        }
        "api" => Some(Trigger::Api),
        "recurring" => {
            let start_s = p.str_of(t, "start", path, true)?;
            let Some(start) = crate::filter::attribute::parse_instant(&start_s) else {
                p.err(
                    format!("{path}.start"),
                    "invalid_value",
                    "an RFC 3339 instant or a date",
                );
                return None;
            };
            let every = p.span_of(t, "every", path, true)?;
            let segment = p.str_of(t, "segment", path, false);
            let list = p.str_of(t, "list", path, false);
            if segment.is_none() == list.is_none() {
                p.err(
                    path.to_string(),
                    "invalid_value",
                    "a recurring trigger enrolls a `segment` or a `list` (one of them)",
                );
                return None;
            }
            Some(Trigger::Recurring {
                start,
                every,
                segment,
                list,
            })
        }
        other => {
            p.err(
                format!("{path}.type"),
                "invalid_value",
                format!("unknown trigger type {other:?} (one of: {TRIGGER_TYPES})"),
            );
            None
        }
    }
}

fn next_of(
    p: &mut P,
    v: Option<&Value>,
    path: &str,
    ids: &HashMap<String, usize>,
    default: Next,
) -> Next {
    match v {
        None | Some(Value::Null) => default,
        Some(Value::String(s)) if s == "end" => Next::End,
        Some(Value::String(s)) => match ids.get(s) {
            Some(i) => Next::Step(*i),
            None => {
                p.err(
                    path.to_string(),
                    "unknown_step",
                    format!("no step with id {s:?} (or write \"end\")"),
                );
                default
            }
        },
        Some(_) => {
            p.err(path.to_string(), "invalid_value", "a step id or \"end\"");
            default
        }
    }
}

fn step(
    p: &mut P,
    s: &Value,
    path: &str,
    ids: &HashMap<String, usize>,
    default_next: Next,
) -> Option<Step> {
    let id = s
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ty = p.str_of(s, "type", path, true)?;
    let next = next_of(p, s.get("next"), &format!("{path}.next"), ids, default_next);
    let kind = match ty.as_str() {
        "send_email" => {
            let template = p.str_of(s, "template", path, true)?;
            let author = p
                .str_of(s, "author", path, false)
                .unwrap_or_else(|| "identity".into());
            if author != "identity" && author != "owner" {
                p.err(
                    format!("{path}.author"),
                    "invalid_value",
                    "identity or owner",
                );
            }
            StepKind::SendEmail {
                template,
                author,
                subscription_type: p.str_of(s, "subscription_type", path, false),
            }
        }
        "webhook" => {
            let url = p.str_of(s, "url", path, true)?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.err(format!("{path}.url"), "invalid_url", "an http(s) URL");
            }
            StepKind::Webhook { url }
        }
        "create_task" => StepKind::Task {
            title: p.str_of(s, "title", path, true)?,
            due_in: p.span_of(s, "due_in", path, false),
        },
        "notify_owner" => StepKind::NotifyOwner {
            message: p
                .str_of(s, "message", path, false)
                .unwrap_or_else(|| "A contact reached a program step".into()),
        },
        "wait" => StepKind::Wait {
            duration: p.span_of(s, "duration", path, true)?,
        },
        "wait_until" => {
            let at = match p.str_of(s, "at", path, false) {
                Some(a) => match crate::filter::attribute::parse_instant(&a) {
                    Some(t) => Some(t),
                    None => {
                        p.err(format!("{path}.at"), "invalid_value", "an RFC 3339 instant");
                        return None;
                    }
                },
                None => None,
            };
            let field = p.str_of(s, "field", path, false);
            if at.is_none() == field.is_none() {
                p.err(
                    path.to_string(),
                    "invalid_value",
                    "wait_until needs `at` or `field` (with an optional `offset`)",
                );
                return None;
            }
            StepKind::WaitUntil {
                at,
                field,
                offset: p.offset_of(s, "offset", path),
            }
        }
        "wait_for_event" => {
            let Some(e) = s.get("event") else {
                p.err(format!("{path}.event"), "required", "an event name");
                return None;
            };
            let matcher = p.matcher(e.clone(), s.get("where"), path);
            let timeout = p.span_of(s, "timeout", path, true)?;
            let timeout_next = next_of(
                p,
                s.get("on_timeout"),
                &format!("{path}.on_timeout"),
                ids,
                next,
            );
            StepKind::WaitEvent {
                matcher,
                timeout,
                timeout_next,
            }
        }
        "branch" => {
            let cond = match (s.get("if"), s.get("condition")) {
                (Some(c), None) => {
                    let st = p.str_of(c, "step", &format!("{path}.if"), true)?;
                    let Some(si) = ids.get(&st) else {
                        p.err(
                            format!("{path}.if.step"),
                            "unknown_step",
                            format!("no step with id {st:?}"),
                        );
                        return None;
                    };
                    let what = p.str_of(c, "email", &format!("{path}.if"), true)?;
                    if what != "opened" && what != "clicked" {
                        p.err(
                            format!("{path}.if.email"),
                            "invalid_value",
                            "opened or clicked",
                        );
                    }
                    Cond::EmailStep { step: *si, what }
                }
                (None, Some(c)) => match p.filter(c, &format!("{path}.condition")) {
                    Some(f) => Cond::Filter(Box::new(f)),
                    None => {
                        next_of(p, s.get("then"), &format!("{path}.then"), ids, next);
                        next_of(p, s.get("else"), &format!("{path}.else"), ids, next);
                        return None;
                    }
                },
                _ => {
                    p.err(
                        path.to_string(),
                        "invalid_value",
                        "a branch has a `condition` (filter) or `if` ({\"step\", \"email\": \"opened\"})",
                    );
                    return None;
                }
            };
            let then = next_of(p, s.get("then"), &format!("{path}.then"), ids, next);
            let otherwise = next_of(p, s.get("else"), &format!("{path}.else"), ids, next);
            StepKind::Branch {
                cond,
                then,
                otherwise,
            }
        }
        "split" => {
            let holdout = s.get("holdout").and_then(Value::as_u64).unwrap_or(0) as u32;
            let mut paths = Vec::new();
            match s.get("paths").and_then(Value::as_array) {
                Some(ps) if !ps.is_empty() => {
                    for (j, x) in ps.iter().enumerate() {
                        let pp = format!("{path}.paths[{j}]");
                        let pct = x.get("percent").and_then(Value::as_u64).unwrap_or(0) as u32;
                        if pct == 0 || pct > 100 {
                            p.err(format!("{pp}.percent"), "invalid_value", "1 to 100");
                        }
                        let n = next_of(p, x.get("next"), &format!("{pp}.next"), ids, next);
                        paths.push((pct, n));
                    }
                }
                _ => p.err(
                    format!("{path}.paths"),
                    "required",
                    "a split has `paths`: [{\"percent\", \"next\"}, …]",
                ),
            }
            let total: u32 = paths.iter().map(|x| x.0).sum::<u32>() + holdout;
            if total != 100 {
                p.err(
                    format!("{path}.paths"),
                    "invalid_value",
                    format!(
                        "the paths and the holdout must add up to 100 (they add up to {total})"
                    ),
                );
            }
            StepKind::Split { paths, holdout }
        }
        "update_field" => {
            let field = p.str_of(s, "field", path, true)?;
            StepKind::UpdateField {
                field,
                value: s.get("value").cloned().unwrap_or(Value::Null),
            }
        }
        "add_score" => {
            let Some(points) = s.get("points").and_then(Value::as_f64) else {
                p.err(
                    format!("{path}.points"),
                    "required",
                    "a number (negative subtracts)",
                );
                return None;
            };
            StepKind::AddScore {
                field: p
                    .str_of(s, "field", path, false)
                    .unwrap_or_else(|| "custom.nurture_score".into()),
                points,
            }
        }
        "set_stage" => match s.get("stage").map(|v| serde_json::from_value(v.clone())) {
            Some(Ok(stage)) => StepKind::SetStage { stage },
            _ => {
                p.err(
                    format!("{path}.stage"),
                    "invalid_value",
                    "a lifecycle stage",
                );
                return None;
            }
        },
        "add_to_list" => StepKind::ListAdd {
            list: p.str_of(s, "list", path, true)?,
        },
        "remove_from_list" => StepKind::ListRemove {
            list: p.str_of(s, "list", path, true)?,
        },
        "move_to_program" => StepKind::MoveTo {
            program: p.str_of(s, "program", path, true)?,
        },
        "exit" => StepKind::Exit {
            reason: p
                .str_of(s, "reason", path, false)
                .unwrap_or_else(|| "exit_step".into()),
        },
        other => {
            p.err(
                format!("{path}.type"),
                "invalid_value",
                format!("unknown step type {other:?} (one of: {STEP_TYPES})"),
            );
            return None;
        }
    };
    Some(Step {
        id,
        name: s.get("name").and_then(Value::as_str).map(str::to_string),
        kind,
        next,
    })
}

/// A cycle of steps must pass through a wait, or an enrollment could loop forever.
fn check_loops(p: &mut P, steps: &[Step]) {
    let succ = |s: &Step| -> Vec<usize> {
        let mut v = Vec::new();
        let mut push = |n: Next| {
            if let Next::Step(i) = n {
                v.push(i)
            }
        };
        match &s.kind {
            StepKind::Branch {
                then, otherwise, ..
            } => {
                push(*then);
                push(*otherwise);
            }
            StepKind::Split { paths, .. } => paths.iter().for_each(|x| push(x.1)),
            StepKind::Exit { .. } | StepKind::MoveTo { .. } => {}
            _ => push(s.next),
        }
        v
    };
    // Graph of non-wait steps only; any cycle there is a loop without a wait.
    let n = steps.len();
    let mut state = vec![0u8; n];
    fn dfs(i: usize, steps: &[Step], succ: &dyn Fn(&Step) -> Vec<usize>, st: &mut [u8]) -> bool {
        if steps[i].kind.is_wait() {
            return false;
        }
        if st[i] == 1 {
            return true;
        }
        if st[i] == 2 {
            return false;
        }
        st[i] = 1;
        for j in succ(&steps[i]) {
            if dfs(j, steps, succ, st) {
                return true;
            }
        }
        st[i] = 2;
        false
    }
    for i in 0..n {
        if dfs(i, steps, &succ, &mut state) {
            p.err(
                format!("steps[{i}]"),
                "loop_without_wait",
                "these steps form a loop without a wait: put a wait step in it",
            );
            return;
        }
    }
}

fn pressure(p: &mut P, v: &Value) -> Pressure {
    let tz = match v.get("time_zone").and_then(Value::as_str) {
        None => Zone::JST,
        Some(s) => parse_time_zone(s).unwrap_or_else(|| {
            p.err(
                "pressure.time_zone",
                "invalid_value",
                "an IANA time zone (Asia/Tokyo, America/New_York, UTC) or a fixed offset (+09:00)",
            );
            Zone::Fixed(0)
        }),
    };
    let window = |p: &mut P, key: &str| -> Option<DailyWindow> {
        let w = v.get(key)?;
        let path = format!("pressure.{key}");
        let s = p
            .str_of(w, "start", &path, true)
            .and_then(|x| parse_clock(&x));
        let e = p
            .str_of(w, "end", &path, true)
            .and_then(|x| parse_clock(&x));
        match (s, e) {
            (Some(start), Some(end)) if start != end => Some(DailyWindow { start, end }),
            _ => {
                p.err(
                    path,
                    "invalid_value",
                    "`start` and `end` as HH:MM, different",
                );
                None
            }
        }
    };
    let quiet_hours = window(p, "quiet_hours");
    let send_window = window(p, "send_window");
    let send_days = v.get("send_window").and_then(|w| w.get("days")).map(|d| {
        let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let mut out = [false; 7];
        for (j, x) in d.as_array().cloned().unwrap_or_default().iter().enumerate() {
            match x.as_str().and_then(|s| {
                names
                    .iter()
                    .position(|n| s.to_ascii_lowercase().starts_with(n))
            }) {
                Some(k) => out[k] = true,
                None => p.err(
                    format!("pressure.send_window.days[{j}]"),
                    "invalid_value",
                    "mon, tue, wed, thu, fri, sat or sun",
                ),
            }
        }
        out
    });
    let frequency_cap = v.get("frequency_cap").and_then(|c| {
        let max = c.get("max").and_then(Value::as_u64);
        let per = p.span_of(c, "per", "pressure.frequency_cap", true);
        match (max, per) {
            (Some(m), Some(per)) if m > 0 => Some((m as u32, per)),
            _ => {
                p.err(
                    "pressure.frequency_cap",
                    "invalid_value",
                    "{\"max\": N (≥ 1), \"per\": \"7d\"}",
                );
                None
            }
        }
    });
    let dedupe = p
        .span_of(v, "dedupe_within", "pressure", false)
        .unwrap_or(Span::days(7));
    Pressure {
        time_zone: tz,
        quiet_hours,
        send_window,
        send_days,
        frequency_cap,
        dedupe,
    }
}

// ---------------------------------------------------------------------------------------------
// Execution

/// Where an enrollment stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// Current step (`None`: finished).
    pub step: Option<usize>,
    /// Steps executed so far (the iteration part of every effect's idempotency key).
    pub seq: i64,
    /// When to look again (µs).
    pub due_at: Option<i64>,
    /// Resting on a wait step until `due_at` (or, for a wait_for_event, the event).
    pub waiting: bool,
}

/// The answer to "may this mail go now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendCheck {
    /// Yes.
    Send,
    /// Not before this instant (frequency cap).
    Defer(i64),
    /// Not at all (duplicate across programs): the step is passed over, recorded with a reason.
    Skip(String),
}

/// What [`advance`] needs from outside the definition.
pub trait Env {
    /// Evaluates a branch condition.
    fn condition(&mut self, step: usize, cond: &Cond) -> bool;
    /// A date field of the contact (µs).
    fn date_field(&self, field: &str) -> Option<i64>;
    /// The contact's time zone (seconds east of UTC), if it has one.
    fn time_zone(&self) -> Option<Zone>;
    /// A number in [0, 1) fixed for this enrollment and step (random split).
    fn sample(&self, step: usize) -> f64;
    /// Pressure checks for a mail of this template.
    fn send_check(&mut self, template: &str) -> SendCheck;
}

/// What an enrollment did.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A step ran (its effect is the step's kind); `seq` is its iteration.
    Ran {
        /// Step index.
        step: usize,
        /// Iteration.
        seq: i64,
    },
    /// A mail step was passed over.
    Skipped {
        /// Step index.
        step: usize,
        /// Why.
        reason: String,
    },
    /// A mail was deferred (quiet hours, window, cap) to an instant.
    Deferred {
        /// Step index.
        step: usize,
        /// Until.
        until: i64,
        /// `quiet_hours` or `frequency_cap`.
        reason: &'static str,
    },
    /// The enrollment ended.
    Ended {
        /// `completed`, `holdout`, an exit step's reason, `moved`.
        reason: String,
        /// Move to this program.
        move_to: Option<String>,
    },
}

/// Seconds since local midnight, weekday (0 = Monday) and local day number (days since
/// 1970-01-01) of an instant in a time zone.
fn local(t: i64, tz: Zone) -> (u32, usize, i64) {
    let secs = t.div_euclid(1_000_000) + tz.offset_at(t) as i64;
    let day = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    // 1970-01-01 was a Thursday (3).
    let wd = (day + 3).rem_euclid(7) as usize;
    (sod, wd, day)
}

impl Pressure {
    fn allowed(&self, t: i64, tz: Zone) -> bool {
        let (sod, wd, _) = local(t, tz);
        if let Some(q) = self.quiet_hours
            && q.contains(sod)
        {
            return false;
        }
        if let Some(w) = self.send_window
            && !w.contains(sod)
        {
            return false;
        }
        if let Some(days) = self.send_days
            && !days[wd]
        {
            return false;
        }
        true
    }

    /// The first instant at or after `t` at which mail may go (quiet hours, send window and
    /// days, in the given time zone).
    pub fn next_allowed(&self, t: i64, tz: Zone) -> i64 {
        if self.allowed(t, tz) {
            return t;
        }
        let (_, _, today) = local(t, tz);
        let mut best: Option<i64> = None;
        for d in 0..9 {
            for s in [
                self.quiet_hours.map(|q| q.end),
                self.send_window.map(|w| w.start),
                Some(0),
            ]
            .into_iter()
            .flatten()
            {
                let c = tz.instant_of(today + d, s);
                if c >= t && self.allowed(c, tz) {
                    best = Some(best.map_or(c, |b: i64| b.min(c)));
                }
            }
            if best.is_some() {
                break;
            }
        }
        best.unwrap_or(t)
    }
}

fn follow(p: &Program, pos: &mut Position, n: Next, out: &mut Vec<Action>) {
    match n {
        Next::Step(i) => pos.step = Some(i),
        Next::End => {
            pos.step = None;
            let move_to = match &p.on_end {
                OnEnd::MoveTo(x) => Some(x.clone()),
                OnEnd::Complete { .. } => None,
            };
            out.push(Action::Ended {
                reason: if move_to.is_some() {
                    "moved".into()
                } else {
                    "completed".into()
                },
                move_to,
            });
        }
    }
}

/// The instant a wait step rests until, entered at `now`.
fn wait_until(kind: &StepKind, now: i64, env: &dyn Env) -> i64 {
    match kind {
        StepKind::Wait { duration } => now + duration.as_micros(),
        StepKind::WaitUntil { at, field, offset } => match (at, field) {
            (Some(t), _) => *t,
            (None, Some(f)) => env.date_field(f).map(|d| d + offset).unwrap_or(now),
            _ => now,
        },
        StepKind::WaitEvent { timeout, .. } => now + timeout.as_micros(),
        _ => now,
    }
}

/// Runs an enrollment at `now` from where it stands until it waits or ends. `event` says a
/// matching event for its wait_for_event step arrived (the event path is taken).
pub fn advance(
    p: &Program,
    pos: &mut Position,
    now: i64,
    event: bool,
    env: &mut dyn Env,
    out: &mut Vec<Action>,
) {
    for _ in 0..MAX_RUN {
        let Some(i) = pos.step else { return };
        let Some(step) = p.steps.get(i) else {
            pos.step = None;
            out.push(Action::Ended {
                reason: "completed".into(),
                move_to: None,
            });
            return;
        };
        if pos.waiting {
            if let StepKind::WaitEvent { timeout_next, .. } = &step.kind {
                if event {
                    pos.waiting = false;
                    pos.due_at = None;
                    follow(p, pos, step.next, out);
                    continue;
                }
                if pos.due_at.is_some_and(|d| d <= now) {
                    pos.waiting = false;
                    pos.due_at = None;
                    follow(p, pos, *timeout_next, out);
                    continue;
                }
                return;
            }
            if pos.due_at.is_some_and(|d| d > now) {
                return;
            }
            pos.waiting = false;
            pos.due_at = None;
            follow(p, pos, step.next, out);
            continue;
        }
        match &step.kind {
            StepKind::Wait { .. } | StepKind::WaitUntil { .. } | StepKind::WaitEvent { .. } => {
                let until = wait_until(&step.kind, now, env);
                pos.seq += 1;
                out.push(Action::Ran {
                    step: i,
                    seq: pos.seq,
                });
                if until <= now && !matches!(step.kind, StepKind::WaitEvent { .. }) {
                    follow(p, pos, step.next, out);
                    continue;
                }
                pos.waiting = true;
                pos.due_at = Some(until);
                return;
            }
            StepKind::SendEmail { template, .. } => {
                let tz = env.time_zone().unwrap_or(p.pressure.time_zone);
                let at = p.pressure.next_allowed(now, tz);
                if at > now {
                    pos.due_at = Some(at);
                    out.push(Action::Deferred {
                        step: i,
                        until: at,
                        reason: "quiet_hours",
                    });
                    return;
                }
                match env.send_check(template) {
                    SendCheck::Send => {
                        pos.seq += 1;
                        out.push(Action::Ran {
                            step: i,
                            seq: pos.seq,
                        });
                    }
                    SendCheck::Defer(t) => {
                        let t = p.pressure.next_allowed(t.max(now + 1), tz);
                        pos.due_at = Some(t);
                        out.push(Action::Deferred {
                            step: i,
                            until: t,
                            reason: "frequency_cap",
                        });
                        return;
                    }
                    SendCheck::Skip(reason) => {
                        pos.seq += 1;
                        out.push(Action::Skipped { step: i, reason });
                    }
                }
                pos.due_at = None;
                follow(p, pos, step.next, out);
            }
            StepKind::Branch {
                cond,
                then,
                otherwise,
            } => {
                let v = env.condition(i, cond);
                pos.seq += 1;
                out.push(Action::Ran {
                    step: i,
                    seq: pos.seq,
                });
                follow(p, pos, if v { *then } else { *otherwise }, out);
            }
            StepKind::Split { paths, .. } => {
                let x = env.sample(i) * 100.0;
                pos.seq += 1;
                out.push(Action::Ran {
                    step: i,
                    seq: pos.seq,
                });
                let mut acc = 0.0;
                let mut chosen = None;
                for (pct, n) in paths {
                    acc += *pct as f64;
                    if x < acc {
                        chosen = Some(*n);
                        break;
                    }
                }
                match chosen {
                    Some(n) => follow(p, pos, n, out),
                    None => {
                        pos.step = None;
                        out.push(Action::Ended {
                            reason: "holdout".into(),
                            move_to: None,
                        });
                    }
                }
            }
            StepKind::Exit { reason } => {
                pos.seq += 1;
                out.push(Action::Ran {
                    step: i,
                    seq: pos.seq,
                });
                pos.step = None;
                out.push(Action::Ended {
                    reason: reason.clone(),
                    move_to: None,
                });
            }
            StepKind::MoveTo { program } => {
                pos.seq += 1;
                out.push(Action::Ran {
                    step: i,
                    seq: pos.seq,
                });
                pos.step = None;
                out.push(Action::Ended {
                    reason: "moved".into(),
                    move_to: Some(program.clone()),
                });
            }
            _ => {
                pos.seq += 1;
                out.push(Action::Ran {
                    step: i,
                    seq: pos.seq,
                });
                follow(p, pos, step.next, out);
            }
        }
    }
    // A loop ran MAX_RUN steps without waiting (validation forbids it): look again later.
    pos.due_at = Some(now + 60_000_000);
}

/// The instant a date trigger fires for a contact, if it has the field.
pub fn date_trigger_at(field_value: Option<i64>, offset: i64) -> Option<i64> {
    field_value.map(|d| d + offset)
}

/// Reads a date field of a contact (`custom.x`, `created_at`, `updated_at`) as µs.
pub fn contact_date(c: &Contact, field: &str) -> Option<i64> {
    match field {
        "created_at" => Some(c.created_at.timestamp_micros()),
        "updated_at" => Some(c.updated_at.timestamp_micros()),
        f => {
            let name = f.strip_prefix("custom.").unwrap_or(f);
            let v = c.custom.get(name)?.as_str()?;
            crate::filter::attribute::parse_instant(v)
        }
    }
}

/// A contact's own time zone (`custom.time_zone`), if set and known.
pub fn contact_time_zone(c: &Contact) -> Option<Zone> {
    c.custom
        .get("time_zone")
        .and_then(Value::as_str)
        .and_then(parse_time_zone)
}

/// A stable number in [0, 1) from a key (random splits: the same enrollment always takes the
/// same path).
pub fn stable_sample(key: &str) -> f64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(key.as_bytes());
    let n = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    (n >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests;
