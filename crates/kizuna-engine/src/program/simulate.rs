//! Simulation: run a program against the current contacts with a virtual clock for N days,
//! sending nothing, and report what would be sent, when, and how many contacts take each path
//! ("6 mails and 3 calls over 8 weeks", seed 004) — before go-live.
//!
//! The same step machine as the runner ([`kizuna_core::program::advance`]) drives every
//! simulated enrollment. Assumptions, stated in the report: responses at the rates given
//! ([`Responses`]; none by default — a wait_for_event takes its timeout path, opened/clicked
//! conditions are false), other conditions are read from each contact's state now, goals are
//! not reached. Who responds is drawn per enrollment from a stable hash, so a simulation
//! repeats exactly.

use super::{Compiled, FactCache};
use crate::EngineError;
use kizuna_core::program::{
    self, Action, Cond, Env, Position, Program, SendCheck, StepKind, Trigger,
};
use kizuna_core::time::from_micros;
use kizuna_store::Store;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use uuid::Uuid;

const DAY: i64 = 86_400_000_000;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Days of virtual time.
    pub days: u32,
    /// Enroll these contacts now (instead of predicting entries from the triggers).
    pub contacts: Option<Vec<Uuid>>,
    /// Enroll every contact that passes the audience now.
    pub everyone: bool,
    /// At most this many enrollments.
    pub limit: usize,
    /// Assumed response rates.
    pub responses: Responses,
}

/// Assumed response rates, each in 0‥1 (0: nobody responds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Responses {
    /// Share of mails opened (what an `opened` branch sees).
    pub opened: f64,
    /// Share of mails clicked (a clicked mail was opened: at most `opened`).
    pub clicked: f64,
    /// Share of enrollments whose awaited event arrives before a wait_for_event times out
    /// (it arrives halfway through the wait).
    pub responded: f64,
}

/// Mails and other effects of one step on one day.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimDay {
    /// Day from the start (0 = today).
    pub day: i64,
    /// Date (UTC).
    pub date: String,
    /// Step id.
    pub step: String,
    /// Step type.
    pub r#type: String,
    /// Template (mail steps).
    pub template: Option<String>,
    /// How many.
    pub count: u64,
}

/// One step's path count.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimStep {
    /// Step id.
    pub step: String,
    /// Step type.
    pub r#type: String,
    /// Contacts that ran it (at least once).
    pub contacts: u64,
    /// Times run.
    pub runs: u64,
    /// Mails deferred by quiet hours, window or cap.
    pub deferred: u64,
    /// Mails passed over (duplicates).
    pub skipped: u64,
}

/// The simulation report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimReport {
    /// Virtual days.
    pub days: u32,
    /// Start.
    pub start: chrono::DateTime<chrono::Utc>,
    /// Enrollments simulated.
    pub enrolled: u64,
    /// Entries by trigger.
    pub entries: BTreeMap<String, u64>,
    /// What would happen, by day and step.
    pub timeline: Vec<SimDay>,
    /// Path counts per step.
    pub steps: Vec<SimStep>,
    /// Totals by kind: `emails`, `tasks`, `webhooks`, `owner_notifications`, …
    pub totals: BTreeMap<String, u64>,
    /// Per enrolled contact, at most: the same kinds.
    pub per_contact_max: BTreeMap<String, u64>,
    /// How enrollments ended (`completed`, `holdout`, an exit reason) or `active` at the end.
    pub outcomes: BTreeMap<String, u64>,
    /// One line for a marketer.
    pub summary: String,
    /// Triggers whose entries cannot be predicted (they wait for events).
    pub unpredictable_triggers: Vec<String>,
    /// What the simulation assumes.
    pub assumptions: Vec<String>,
}

struct SimEnv<'a> {
    contact: &'a kizuna_core::contact::Contact,
    conds: &'a HashMap<usize, bool>,
    responses: Responses,
    key: String,
    seq: i64,
    program: &'a Program,
    sent: Vec<(String, i64)>,
    now: i64,
}

impl Env for SimEnv<'_> {
    fn condition(&mut self, step: usize, c: &Cond) -> bool {
        match c {
            // One draw per mail: whoever clicked also opened.
            Cond::EmailStep { step: mail, what } => {
                let u = program::stable_sample(&format!("{}:mail:{mail}", self.key));
                let rate = if what == "clicked" {
                    self.responses.clicked.min(self.responses.opened)
                } else {
                    self.responses.opened
                };
                u < rate
            }
            Cond::Filter(_) => self.conds.get(&step).copied().unwrap_or(false),
        }
    }
    fn date_field(&self, f: &str) -> Option<i64> {
        program::contact_date(self.contact, f)
    }
    fn time_zone(&self) -> Option<program::Zone> {
        program::contact_time_zone(self.contact)
    }
    fn sample(&self, step: usize) -> f64 {
        program::stable_sample(&format!("{}:{}:{}", self.key, step, self.seq))
    }
    fn send_check(&mut self, template: &str) -> SendCheck {
        if let Some((max, per)) = self.program.pressure.frequency_cap {
            let since = self.now - per.as_micros();
            let mut ts: Vec<i64> = self
                .sent
                .iter()
                .filter(|x| x.1 > since)
                .map(|x| x.1)
                .collect();
            if ts.len() as u32 >= max {
                ts.sort();
                return SendCheck::Defer(ts[ts.len() - max as usize] + per.as_micros());
            }
        }
        self.sent.push((template.to_string(), self.now));
        SendCheck::Send
    }
}

fn kind_of(k: &StepKind) -> Option<&'static str> {
    Some(match k {
        StepKind::SendEmail { .. } => "emails",
        StepKind::Task { .. } => "tasks",
        StepKind::Webhook { .. } => "webhooks",
        StepKind::NotifyOwner { .. } => "owner_notifications",
        StepKind::SetStage { .. } => "stage_changes",
        StepKind::UpdateField { .. } | StepKind::AddScore { .. } => "field_updates",
        StepKind::ListAdd { .. } | StepKind::ListRemove { .. } => "list_changes",
        _ => return None,
    })
}

/// Simulates a program (saved or not) for `opts.days` from now.
pub async fn simulate(
    store: &Store,
    c: &Arc<Compiled>,
    p: &Program,
    now: i64,
    opts: &SimOptions,
) -> Result<SimReport, EngineError> {
    let end = now + opts.days as i64 * DAY;
    let mut entries: Vec<(Uuid, i64, String)> = Vec::new();
    let mut unpredictable = Vec::new();
    if let Some(ids) = &opts.contacts {
        entries.extend(ids.iter().map(|i| (*i, now, "given".to_string())));
    } else if opts.everyone {
        let mut after = None;
        while entries.len() < opts.limit {
            let page = store.contacts_page_custom(after, 2000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            entries.extend(page.iter().map(|ct| (ct.id, now, "everyone".to_string())));
        }
    } else {
        for t in &p.triggers {
            match t {
                Trigger::Date { field, offset } => {
                    let mut after = None;
                    loop {
                        let page = store.contacts_page_custom(after, 2000).await?;
                        let Some(last) = page.last() else { break };
                        after = Some(last.id);
                        for ct in &page {
                            if let Some(at) = program::contact_date(ct, field).map(|d| d + offset)
                                && at >= now - DAY
                                && at < end
                            {
                                entries.push((ct.id, at.max(now), "date".into()));
                            }
                        }
                    }
                }
                Trigger::Inactivity { after: span } => {
                    let mut after = None;
                    loop {
                        let page = store.last_activity_page(after, 5000).await?;
                        let Some(last) = page.last() else { break };
                        after = Some(last.0);
                        for (cid, t) in page {
                            let at = (t + span.as_micros()).max(now);
                            if at < end {
                                entries.push((cid, at, "inactivity".into()));
                            }
                        }
                    }
                }
                Trigger::Recurring {
                    start,
                    every,
                    segment,
                    list,
                } => {
                    let members = if let Some(s) = segment.as_ref().and_then(|s| c.segments.get(s))
                    {
                        store.segment_member_ids(*s).await?
                    } else if let Some(l) = list.as_ref().and_then(|l| c.list(l)) {
                        store.list_member_ids(l).await?
                    } else {
                        vec![]
                    };
                    let mut at = *start;
                    let e = every.as_micros();
                    if at < now {
                        at += ((now - at + e - 1) / e) * e;
                    }
                    // Re-entry decides whether later occurrences enroll again; the first does.
                    let mut first = true;
                    while at < end {
                        if first || p.reentry == program::Reentry::Always {
                            entries.extend(members.iter().map(|m| (*m, at, "recurring".into())));
                        }
                        first = false;
                        at += e;
                    }
                }
                Trigger::Event { kind, .. } => unpredictable.push(kind.clone()),
                Trigger::Api => unpredictable.push("api".into()),
            }
        }
    }
    entries.sort_by_key(|e| (e.1, e.0));
    entries.truncate(opts.limit);

    let mut facts = FactCache::default();
    let mut ids: Vec<Uuid> = entries.iter().map(|e| e.0).collect();
    ids.sort();
    ids.dedup();
    for chunk in ids.chunks(2000) {
        facts.preload(store, &c.engine, chunk, now).await?;
    }
    let mut timeline: BTreeMap<(i64, usize), u64> = BTreeMap::new();
    let mut steps: BTreeMap<usize, (HashMap<Uuid, ()>, u64, u64, u64)> = BTreeMap::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_max: BTreeMap<String, u64> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_trigger: BTreeMap<String, u64> = BTreeMap::new();
    let mut enrolled = 0u64;
    let mut active: HashMap<Uuid, i64> = HashMap::new();
    for (n, (cid, at, src)) in entries.iter().enumerate() {
        if !facts.states.contains_key(cid) {
            continue;
        }
        // One active enrollment per contact; re-entry after the end only if the policy says so.
        if let Some(until) = active.get(cid)
            && (*until > *at || p.reentry == program::Reentry::Never)
        {
            continue;
        }
        if p.exit_on_sales_cycle && facts.states[cid].in_sales() {
            continue;
        }
        let mut conds = HashMap::new();
        if let Some(a) = &p.audience {
            let cs = facts.for_filter(store, &c.engine, *cid, a, now).await?;
            if !a.eval(cs, now).value {
                continue;
            }
        }
        for (i, s) in p.steps.iter().enumerate() {
            if let StepKind::Branch {
                cond: Cond::Filter(f),
                ..
            } = &s.kind
            {
                let cs = facts.for_filter(store, &c.engine, *cid, f, now).await?;
                conds.insert(i, f.eval(cs, now).value);
            }
        }
        enrolled += 1;
        *by_trigger.entry(src.clone()).or_default() += 1;
        let contact = facts.states[cid].contact.clone();
        let mut pos = Position {
            step: Some(0),
            ..Default::default()
        };
        let mut t = *at;
        let mut mine: BTreeMap<String, u64> = BTreeMap::new();
        let mut sent = Vec::new();
        let mut event = false;
        let outcome;
        loop {
            let mut env = SimEnv {
                contact: &contact,
                conds: &conds,
                responses: opts.responses,
                key: format!("sim:{n}"),
                seq: pos.seq,
                program: p,
                sent: std::mem::take(&mut sent),
                now: t,
            };
            let mut actions = Vec::new();
            program::advance(p, &mut pos, t, event, &mut env, &mut actions);
            event = false;
            sent = env.sent;
            let mut ended = None;
            for a in actions {
                match a {
                    Action::Ran { step, .. } => {
                        let e = steps.entry(step).or_default();
                        e.0.insert(*cid, ());
                        e.1 += 1;
                        if let Some(k) = kind_of(&p.steps[step].kind) {
                            *timeline
                                .entry(((t - now).div_euclid(DAY), step))
                                .or_default() += 1;
                            *totals.entry(k.into()).or_default() += 1;
                            *mine.entry(k.into()).or_default() += 1;
                        }
                    }
                    Action::Deferred { step, .. } => steps.entry(step).or_default().2 += 1,
                    Action::Skipped { step, .. } => steps.entry(step).or_default().3 += 1,
                    Action::Ended { reason, .. } => ended = Some(reason),
                }
            }
            if let Some(r) = ended {
                outcome = r;
                break;
            }
            let awaiting = pos
                .step
                .is_some_and(|i| matches!(p.steps[i].kind, StepKind::WaitEvent { .. }));
            if awaiting
                && let Some(d) = pos.due_at
                && program::stable_sample(&format!("sim:{n}:event:{}", pos.seq))
                    < opts.responses.responded
            {
                let arrives = t + (d - t) / 2;
                if arrives < end {
                    t = arrives.max(t + 1);
                    event = true;
                    continue;
                }
            }
            match pos.due_at {
                Some(d) if d < end && pos.step.is_some() => t = d.max(t + 1),
                _ => {
                    outcome = "active".into();
                    break;
                }
            }
        }
        active.insert(*cid, if outcome == "active" { i64::MAX } else { t });
        *outcomes.entry(outcome).or_default() += 1;
        for (k, v) in mine {
            let m = per_max.entry(k).or_default();
            *m = (*m).max(v);
        }
    }
    let timeline: Vec<SimDay> = timeline
        .into_iter()
        .map(|((day, step), count)| {
            let s = &p.steps[step];
            SimDay {
                day,
                date: from_micros(now + day * DAY).format("%Y-%m-%d").to_string(),
                step: s.id.clone(),
                r#type: s.kind.type_name().into(),
                template: match &s.kind {
                    StepKind::SendEmail { template, .. } => Some(template.clone()),
                    _ => None,
                },
                count,
            }
        })
        .collect();
    let steps: Vec<SimStep> = p
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let e = steps.remove(&i).unwrap_or_default();
            SimStep {
                step: s.id.clone(),
                r#type: s.kind.type_name().into(),
                contacts: e.0.len() as u64,
                runs: e.1,
                deferred: e.2,
                skipped: e.3,
            }
        })
        .collect();
    let weeks = opts.days as f64 / 7.0;
    let parts: Vec<String> = per_max
        .iter()
        .map(|(k, v)| format!("{v} {}", k.replace('_', " ")))
        .collect();
    let summary = format!(
        "{enrolled} contacts would enter; at most {} per contact over {} ({} days); {} mails in all",
        if parts.is_empty() {
            "nothing".to_string()
        } else {
            parts.join(" and ")
        },
        if weeks.fract() == 0.0 {
            format!("{} weeks", weeks as i64)
        } else {
            format!("{weeks:.1} weeks")
        },
        opts.days,
        totals.get("emails").copied().unwrap_or(0)
    );
    Ok(SimReport {
        days: opts.days,
        start: from_micros(now),
        enrolled,
        entries: by_trigger,
        timeline,
        steps,
        totals,
        per_contact_max: per_max,
        outcomes,
        summary,
        unpredictable_triggers: unpredictable,
        assumptions: vec![
            if opts.responses == Responses::default() {
                "nobody responds: wait_for_event steps take their timeout path, opened/clicked conditions are false".into()
            } else {
                format!(
                    "responses: {:.0}% of mails opened, {:.0}% clicked; {:.0}% of awaited events arrive, halfway through the wait",
                    opts.responses.opened * 100.0,
                    opts.responses.clicked.min(opts.responses.opened) * 100.0,
                    opts.responses.responded * 100.0
                )
            },
            "other conditions are read from each contact's state now".into(),
            "goals are not reached; nothing is sent".into(),
        ],
    })
}
