//! Nurture programs, run durably (`docs/programs.md`).
//!
//! The [`ProgramRunner`] is a second consumer of the event log, with its own checkpoint
//! (`programs`) and lease:
//!
//! ```text
//!  log events (commit order) ─▶ exits (unsubscribed, sales cycle) · goals · wait_for_event
//!                                 · triggers (event kinds) → enrollments · inactivity/date schedules
//!  due schedules (date, inactivity, recurring) ─▶ enrollments
//!  due enrollments (waits expiring, deferred mails) ─▶ kizuna_core::program::advance ─▶ effects
//! ```
//!
//! Every batch — enrollment rows, their effects (outbox mails, tasks, webhooks, field and
//! stage changes, list membership, events) and, for log batches, the checkpoint — commits in
//! one transaction. Each effect's key is `program:{enrollment}:{step}:{seq}` (the outbox's
//! idempotency key for mails), and the enrollment's `seq` moves in the same transaction, so a
//! crash replays the batch and nothing runs twice. Waiting contacts are rows scanned through
//! the `due_at` index: a million waits cost storage, not memory.

pub mod simulate;
pub mod templates;

use crate::EngineError;
use crate::definitions::{self, Definitions, Names, POLICY_SETTING};
use crate::state::{ContactState, Load, load_states};
use kizuna_core::clock::SharedClock;
use kizuna_core::contact::{ContactInput, LifecycleStage};
use kizuna_core::filter::Filter;
use kizuna_core::filter::event::{FeatureDef, FeatureState};
use kizuna_core::program::{
    self, Action, Cond, Env, Goal, OnEnd, Position, Program, Reentry, SendCheck, StepKind, Trigger,
};
use kizuna_core::time::{from_micros, micros};
use kizuna_store::Store;
use kizuna_store::email::outbox::{self, NewMessage};
use kizuna_store::events::NewEvent;
use kizuna_store::log::{LogCursor, LogEvent, advance_checkpoint};
use kizuna_store::programs::{self as ps, Enrollment, SendRow, StepCount};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

/// Source of the events programs write.
pub const PROGRAM_SOURCE: &str = "program";

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Checkpoint name in the log.
    pub checkpoint: String,
    /// This node's id in leases.
    pub node_id: String,
    /// Log events per batch.
    pub batch_size: u32,
    /// Due enrollments per batch.
    pub due_batch: u32,
    /// Sleep when idle.
    pub idle_poll: Duration,
    /// Lease length.
    pub lease: chrono::Duration,
    /// How often a busy runner looks for edited programs, templates and lists (0: every turn).
    pub recheck: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            checkpoint: "programs".into(),
            node_id: format!("node-{}", Uuid::now_v7().simple()),
            batch_size: 2000,
            due_batch: 2000,
            idle_poll: Duration::from_millis(5),
            lease: chrono::Duration::seconds(30),
            recheck: Duration::ZERO,
        }
    }
}

/// What one turn did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Turn {
    /// Log events read.
    pub events: usize,
    /// Schedules fired.
    pub schedules: usize,
    /// Enrollments advanced from the due index.
    pub due: usize,
    /// Steps run.
    pub steps: usize,
    /// Schedules built.
    pub builds: usize,
}

impl Turn {
    /// Nothing was done.
    pub fn is_idle(&self) -> bool {
        self.events == 0 && self.schedules == 0 && self.due == 0 && self.builds == 0
    }
}

/// A program as the runner holds it.
pub struct Loaded {
    /// Row.
    pub row: ps::ProgramRow,
    /// Compiled versions.
    pub versions: HashMap<i64, Arc<Program>>,
}

impl Loaded {
    fn current(&self) -> Option<&Arc<Program>> {
        self.versions.get(&self.row.version)
    }
}

/// Everything compiled.
pub struct Compiled {
    stamp: String,
    /// Programs by id.
    pub programs: HashMap<Uuid, Loaded>,
    by_name: HashMap<String, Uuid>,
    /// Templates by name and id: (id, kind).
    templates: HashMap<String, (Uuid, String)>,
    lists: HashMap<String, Uuid>,
    segments: HashMap<String, Uuid>,
    engine: Arc<Definitions>,
    policy_url: Option<String>,
}

impl Compiled {
    /// A program by name or id.
    pub fn program_id(&self, r: &str) -> Option<Uuid> {
        self.by_name.get(r).copied().or_else(|| {
            r.parse::<Uuid>()
                .ok()
                .filter(|id| self.programs.contains_key(id))
        })
    }

    fn template(&self, r: &str) -> Option<&(Uuid, String)> {
        self.templates.get(r)
    }

    fn list(&self, r: &str) -> Option<Uuid> {
        self.lists.get(r).copied().or_else(|| r.parse().ok())
    }
}

/// Checks a definition against the store: the program itself and the names it refers to
/// (templates, programs, lists, segments). `extra_programs` are names being created together.
pub async fn check(
    store: &Store,
    def: &Value,
    extra_programs: &[String],
) -> Result<Program, EngineError> {
    let names = Names::load(store).await?;
    let p = program::compile(def, &names)?;
    let templates = ps::resolve_templates(store).await?;
    let programs = store.programs().await?;
    let mut errs = kizuna_core::ValidationErrors::default();
    for r in p.references() {
        let ok = match r.kind {
            "template" => templates
                .iter()
                .any(|t| t.1 == r.name || t.0.to_string() == r.name),
            "program" => {
                programs
                    .iter()
                    .any(|x| x.name == r.name || x.id.to_string() == r.name)
                    || extra_programs.contains(&r.name)
                    || r.name == p.name
            }
            "list" => kizuna_core::filter::Resolver::list(&names, &r.name).is_some(),
            "segment" => kizuna_core::filter::Resolver::segment(&names, &r.name).is_some(),
            _ => true,
        };
        if !ok {
            errs.push(kizuna_core::ValidationError::new(
                r.path,
                match r.kind {
                    "template" => "unknown_template",
                    "program" => "unknown_program",
                    "list" => "unknown_list",
                    _ => "unknown_segment",
                },
                format!("no {} named {:?}", r.kind, r.name),
            ));
        }
    }
    errs.into_result(p).map_err(EngineError::Invalid)
}

/// Creates a program from a definition (checked first) with `status` (`active`, `paused` or
/// `draft`); events after now may trigger it.
pub async fn create(
    store: &Store,
    def: &Value,
    status: &str,
    now: i64,
) -> Result<ps::ProgramRow, EngineError> {
    let p = check(store, def, &[]).await?;
    check_status(status)?;
    let head = store.log_head().await?;
    Ok(store
        .create_program(
            &p.name,
            def.get("description").and_then(Value::as_str),
            status,
            def,
            head.seq,
            now,
        )
        .await?)
}

/// Publishes a new version of a program. Contacts in flight stay on their version unless
/// `mapping` (old step id → new step id) moves them; mapped-to steps must exist.
pub async fn update(
    store: &Store,
    id: Uuid,
    def: &Value,
    mapping: Option<&BTreeMap<String, String>>,
    now: i64,
) -> Result<(ps::ProgramRow, u64), EngineError> {
    let p = check(store, def, &[]).await?;
    if let Some(m) = mapping {
        let mut errs = kizuna_core::ValidationErrors::default();
        for (from, to) in m {
            if p.step_index(to).is_none() {
                errs.push(kizuna_core::ValidationError::new(
                    format!("mapping.{from}"),
                    "unknown_step",
                    format!("the new version has no step {to:?}"),
                ));
            }
        }
        errs.into_result(()).map_err(EngineError::Invalid)?;
    }
    let (_, moved) = store
        .publish_program_version(
            id,
            &p.name,
            def.get("description").and_then(Value::as_str),
            def,
            mapping,
            now,
        )
        .await?;
    Ok((store.program(id).await?, moved))
}

/// Pauses or resumes a program. Paused, no step runs and no trigger enrolls; resumed, waits
/// that expired meanwhile run at once and only events after the resumption trigger it.
pub async fn set_status(
    store: &Store,
    id: Uuid,
    status: &str,
    now: i64,
) -> Result<ps::ProgramRow, EngineError> {
    check_status(status)?;
    let seq = if status == "active" {
        Some(store.log_head().await?.seq)
    } else {
        None
    };
    Ok(store.set_program_status(id, status, seq, now).await?)
}

fn check_status(s: &str) -> Result<(), EngineError> {
    if ["active", "paused", "draft"].contains(&s) {
        Ok(())
    } else {
        Err(EngineError::Invalid(
            kizuna_core::ValidationError::new("status", "invalid_value", "active, paused or draft")
                .into(),
        ))
    }
}

/// The program report (R-REPORT-3): entered, active, completed, goal reached, exited by
/// reason, and per step: runs, contacts there now, mails deferred or passed over, and the
/// e-mail figures of each mail step.
pub async fn report(store: &Store, id: Uuid) -> Result<Value, EngineError> {
    let row = store.program(id).await?;
    let (def, _) = store.program_version(id, row.version).await?;
    let (status, steps) = store.program_figures(id).await?;
    let mut entered = 0;
    let mut active = 0;
    let mut completed = 0;
    let mut goal_reached = 0;
    let mut exited: BTreeMap<String, i64> = BTreeMap::new();
    let mut goals: BTreeMap<String, i64> = BTreeMap::new();
    for (st, reason, goal, n) in status {
        entered += n;
        match st.as_str() {
            "active" => active += n,
            _ if goal.is_some() => {
                goal_reached += n;
                *goals.entry(goal.unwrap_or_default()).or_default() += n;
            }
            "completed" => completed += n,
            _ => *exited.entry(reason.unwrap_or_default()).or_default() += n,
        }
    }
    let order: Vec<(String, String)> = def
        .get("steps")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap_or_default().to_string(),
                        s["type"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut by_id: BTreeMap<String, ps::StepFigures> =
        steps.into_iter().map(|s| (s.step_id.clone(), s)).collect();
    let mut out_steps = Vec::new();
    let mut ids: Vec<(String, String)> = order.clone();
    for k in by_id.keys() {
        if !order.iter().any(|o| &o.0 == k) {
            ids.push((k.clone(), String::new()));
        }
    }
    for (sid, ty) in ids {
        let f = by_id.remove(&sid).unwrap_or(ps::StepFigures {
            step_id: sid.clone(),
            ..Default::default()
        });
        let mut v = json!({"step_id": sid, "type": ty, "runs": f.runs, "active": f.active,
                           "skipped": f.skipped, "deferred": f.deferred});
        if ty == "send_email" {
            let [n, sent, skipped, opened, clicked, bounced] =
                store.program_step_email(id, &sid).await?;
            let rate = |x: i64| {
                if sent > 0 {
                    x as f64 / sent as f64
                } else {
                    0.0
                }
            };
            v["email"] = json!({"queued": n, "sent": sent, "skipped": skipped, "opened": opened,
                                "clicked": clicked, "bounced": bounced,
                                "open_rate": rate(opened), "click_rate": rate(clicked)});
        }
        out_steps.push(v);
    }
    Ok(
        json!({"program_id": id, "name": row.name, "status": row.status, "version": row.version,
              "entered": entered, "active": active, "completed": completed,
              "goal_reached": goal_reached, "goals": goals, "exited": exited,
              "steps": out_steps}),
    )
}

/// Loads and compiles every program version (versions that no longer compile, e.g. a template
/// was deleted, are left out and logged).
pub async fn load(store: &Store) -> Result<Compiled, EngineError> {
    let stamp = stamp(store).await?;
    let names = Names::load(store).await?;
    let rows = store.programs().await?;
    let mut programs: HashMap<Uuid, Loaded> = rows
        .into_iter()
        .map(|r| {
            (
                r.id,
                Loaded {
                    row: r,
                    versions: HashMap::new(),
                },
            )
        })
        .collect();
    for (pid, v, def) in store.all_program_versions().await? {
        match program::compile(&def, &names) {
            Ok(p) => {
                if let Some(l) = programs.get_mut(&pid) {
                    l.versions.insert(v, Arc::new(p));
                }
            }
            Err(e) => {
                tracing::warn!(program = %pid, version = v, error = %e, "program version does not compile")
            }
        }
    }
    let by_name = programs
        .values()
        .map(|l| (l.row.name.clone(), l.row.id))
        .collect();
    let mut templates = HashMap::new();
    for (id, name, kind) in ps::resolve_templates(store).await? {
        templates.insert(name, (id, kind.clone()));
        templates.insert(id.to_string(), (id, kind));
    }
    let mut lists = HashMap::new();
    for l in store.lists().await? {
        lists.insert(l.name, l.id);
    }
    let mut segments = HashMap::new();
    for s in store
        .definitions(kizuna_store::definitions::DefinitionKind::Segment)
        .await?
    {
        segments.insert(s.name, s.id);
        segments.insert(s.id.to_string(), s.id);
    }
    let policy_url = store
        .setting(POLICY_SETTING)
        .await?
        .and_then(|p| serde_json::from_str::<Value>(&p).ok())
        .and_then(|v| v.get("webhook")?.get("url")?.as_str().map(str::to_string));
    Ok(Compiled {
        stamp,
        programs,
        by_name,
        templates,
        lists,
        segments,
        engine: Arc::new(definitions::load(store).await?),
        policy_url,
    })
}

async fn stamp(store: &Store) -> Result<String, EngineError> {
    let progs = store.programs().await?;
    let n: String = progs
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}/{}",
                p.id.simple(),
                p.version,
                p.status,
                p.scheduled_version
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let t = progs.iter().map(|p| p.updated_at).max().unwrap_or(0);
    let d = store.definitions_version().await?;
    let tpl = ps::resolve_templates(store).await?.len();
    let lists = store.lists().await?.len();
    Ok(format!("{n}:{t}:{d}:{tpl}:{lists}"))
}

/// The durable program runner. Cheap to clone.
#[derive(Clone)]
pub struct ProgramRunner {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: SharedClock,
    config: RunnerConfig,
    position: Mutex<Option<LogCursor>>,
    lease_until: Mutex<i64>,
    compiled: Mutex<Option<Arc<Compiled>>>,
    checked: std::sync::Mutex<Option<std::time::Instant>>,
    wake: Notify,
    notifications: Arc<Notify>,
    mail: Mutex<Option<Arc<Notify>>>,
    crash_after_batches: std::sync::atomic::AtomicI64,
}

/// One enrollment being worked on in a batch.
struct Work {
    e: Enrollment,
    pos: Position,
    dirty: bool,
    new: bool,
}

/// Effects gathered by a batch.
#[derive(Default)]
struct Out {
    mails: Vec<NewMessage>,
    sends: Vec<SendRow>,
    tasks: Vec<kizuna_store::sales::Task>,
    notes: Vec<kizuna_store::sales::Notification>,
    events: Vec<NewEvent>,
    fields: Vec<(Uuid, ContactInput)>,
    stages: Vec<(Uuid, LifecycleStage, LifecycleStage, String)>,
    list_add: Vec<(Uuid, Uuid)>,
    list_remove: Vec<(Uuid, Uuid)>,
    counts: BTreeMap<(Uuid, String), StepCount>,
    /// Schedules to set (`Some`) or remove (`None`), last word wins.
    schedules: HashMap<(Uuid, Uuid, i64), Option<i64>>,
    moved: Vec<Enrollment>,
    steps: usize,
}

impl ProgramRunner {
    /// A runner over a store.
    pub fn new(store: Store, clock: SharedClock, config: RunnerConfig) -> ProgramRunner {
        ProgramRunner {
            inner: Arc::new(Inner {
                store,
                clock,
                config,
                position: Mutex::new(None),
                lease_until: Mutex::new(0),
                compiled: Mutex::new(None),
                checked: std::sync::Mutex::new(None),
                wake: Notify::new(),
                notifications: Arc::new(Notify::new()),
                mail: Mutex::new(None),
                crash_after_batches: std::sync::atomic::AtomicI64::new(-1),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Wakes the loop.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Signalled when a batch queued webhooks or owner notifications.
    pub fn notifications_queued(&self) -> Arc<Notify> {
        self.inner.notifications.clone()
    }

    /// Signals this when a batch queued mails (the outbox worker's wake-up).
    pub async fn set_mail_wake(&self, n: Arc<Notify>) {
        *self.inner.mail.lock().await = Some(n);
    }

    fn now(&self) -> i64 {
        micros(self.inner.clock.now())
    }

    async fn ensure_lease(&self, now: i64) -> Result<(), EngineError> {
        let mut until = self.inner.lease_until.lock().await;
        let lease = self
            .inner
            .config
            .lease
            .num_microseconds()
            .unwrap_or(30_000_000);
        if *until - now > lease / 2 {
            return Ok(());
        }
        let store = &self.inner.store;
        let fresh = store
            .checkpoint(&self.inner.config.checkpoint)
            .await?
            .is_none();
        if store
            .acquire_lease(
                &self.inner.config.checkpoint,
                &self.inner.config.node_id,
                now,
                now + lease,
            )
            .await?
        {
            if fresh {
                // A new runner starts at the head: history does not trigger programs.
                let head = store.log_head().await?;
                let mut tx = store.db().begin().await?;
                advance_checkpoint(
                    &mut tx,
                    &self.inner.config.checkpoint,
                    &self.inner.config.node_id,
                    &LogCursor {
                        position: head,
                        pending: vec![],
                    },
                    now,
                )
                .await?;
                tx.commit().await?;
            }
            if *until <= now {
                *self.inner.position.lock().await = None;
            }
            *until = now + lease;
            Ok(())
        } else {
            *until = 0;
            Err(EngineError::LeaseLost)
        }
    }

    async fn position(&self) -> Result<LogCursor, EngineError> {
        let mut p = self.inner.position.lock().await;
        if let Some(p) = p.as_ref() {
            return Ok(p.clone());
        }
        let cp = self
            .inner
            .store
            .checkpoint(&self.inner.config.checkpoint)
            .await?
            .map(|c| c.cursor)
            .unwrap_or_default();
        *p = Some(cp.clone());
        Ok(cp)
    }

    /// The compiled programs (reloaded when programs, templates, lists or engine definitions
    /// changed).
    pub async fn compiled(&self) -> Result<Arc<Compiled>, EngineError> {
        // Look for edits at most every `recheck` (real time).
        {
            let checked = *self.inner.checked.lock().expect("lock");
            let c = self.inner.compiled.lock().await;
            if let (Some(t), Some(x)) = (checked, c.as_ref())
                && t.elapsed() < self.inner.config.recheck
            {
                return Ok(x.clone());
            }
        }
        *self.inner.checked.lock().expect("lock") = Some(std::time::Instant::now());
        let s = stamp(&self.inner.store).await?;
        let mut c = self.inner.compiled.lock().await;
        if let Some(x) = c.as_ref()
            && x.stamp == s
        {
            return Ok(x.clone());
        }
        let fresh = Arc::new(load(&self.inner.store).await?);
        *c = Some(fresh.clone());
        Ok(fresh)
    }

    /// Gives the lease up (on shutdown, or to hand over to another runner).
    pub async fn release(&self) {
        *self.inner.lease_until.lock().await = 0;
        let _ = self
            .inner
            .store
            .release_lease(&self.inner.config.checkpoint, &self.inner.config.node_id)
            .await;
    }

    /// Test hook: fail (as a crash would) before committing after `n` more batches.
    pub fn crash_after(&self, n: i64) {
        self.inner
            .crash_after_batches
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// One turn: schedules to build, one log batch, due schedules, one batch of due enrollments.
    pub async fn run_once(&self) -> Result<Turn, EngineError> {
        let now = self.now();
        self.ensure_lease(now).await?;
        let c = self.compiled().await?;
        let mut t = Turn {
            builds: self.build_schedules(&c, now).await?,
            ..Default::default()
        };
        if t.builds > 0 {
            *self.inner.compiled.lock().await = None;
            return Ok(t);
        }
        let (events, steps) = self.process_log(&c, now).await?;
        t.events = events;
        t.steps += steps;
        let (sch, steps) = self.process_schedules(&c, now).await?;
        t.schedules = sch;
        t.steps += steps;
        let (due, steps) = self.process_due(&c, now).await?;
        t.due = due;
        t.steps += steps;
        Ok(t)
    }

    /// Turns until idle.
    pub async fn run_until_idle(&self) -> Result<Turn, EngineError> {
        let mut total = Turn::default();
        loop {
            let t = self.run_once().await?;
            if t.is_idle() {
                return Ok(total);
            }
            total.events += t.events;
            total.schedules += t.schedules;
            total.due += t.due;
            total.steps += t.steps;
            total.builds += t.builds;
        }
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        loop {
            let pause = match self.run_once().await {
                Ok(t) if t.is_idle() => Some(self.inner.config.idle_poll),
                Ok(_) => None,
                Err(EngineError::LeaseLost) => Some(Duration::from_secs(2)),
                Err(e) => {
                    tracing::error!(error = %e, "program turn failed; retrying from the checkpoint");
                    *self.inner.position.lock().await = None;
                    *self.inner.compiled.lock().await = None;
                    Some(Duration::from_secs(1))
                }
            };
            if let Some(d) = pause {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(d) => {}
                    _ = self.inner.wake.notified() => {}
                }
            } else {
                let done = tokio::select! {
                    biased;
                    _ = &mut shutdown => true,
                    _ = std::future::ready(()) => false,
                };
                if done {
                    break;
                }
            }
        }
        let _ = self
            .inner
            .store
            .release_lease(&self.inner.config.checkpoint, &self.inner.config.node_id)
            .await;
    }

    /// Spawns [`ProgramRunner::run`].
    pub fn spawn(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let r = self.clone();
        tokio::spawn(async move { r.run(shutdown).await })
    }

    // -----------------------------------------------------------------------------------------

    /// Builds entry schedules (date and inactivity triggers for every contact; the next
    /// occurrence of recurring triggers) for programs whose current version has none yet.
    async fn build_schedules(&self, c: &Compiled, now: i64) -> Result<usize, EngineError> {
        let store = &self.inner.store;
        let mut built = 0;
        for l in c.programs.values() {
            if l.row.scheduled_version == l.row.version {
                continue;
            }
            let Some(p) = l.current() else { continue };
            let pid = l.row.id;
            let mut rows: Vec<(Uuid, Uuid, i64, i64)> = Vec::new();
            for (i, t) in p.triggers.iter().enumerate() {
                if let Trigger::Recurring { start, every, .. } = t {
                    let e = every.as_micros();
                    let mut at = *start;
                    if at < now {
                        at += ((now - at + e - 1) / e) * e;
                    }
                    rows.push((pid, Uuid::nil(), i as i64, at));
                }
            }
            let has_date = p.date_triggers().next().is_some();
            if has_date {
                let mut after = None;
                loop {
                    let page = store.contacts_page_custom(after, 2000).await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.id);
                    for ct in &page {
                        for (i, f, off) in p.date_triggers() {
                            if let Some(at) = program::contact_date(ct, f).map(|d| d + off)
                                && at >= now - 86_400_000_000
                            {
                                rows.push((pid, ct.id, i as i64, at.max(now)));
                            }
                        }
                    }
                }
            }
            for (i, t) in p.triggers.iter().enumerate() {
                if let Trigger::Inactivity { after: span } = t {
                    let mut after = None;
                    loop {
                        let page = store.last_activity_page(after, 5000).await?;
                        let Some(last) = page.last() else { break };
                        after = Some(last.0);
                        for (cid, t) in &page {
                            rows.push((pid, *cid, i as i64, (t + span.as_micros()).max(now)));
                        }
                    }
                }
            }
            let mut tx = store.db().begin().await?;
            ps::clear_schedules(&mut tx, pid).await?;
            ps::upsert_schedules(&mut tx, &rows).await?;
            ps::mark_scheduled(&mut tx, pid, l.row.version).await?;
            tx.commit().await?;
            built += 1;
        }
        Ok(built)
    }

    async fn process_log(
        &self,
        c: &Arc<Compiled>,
        now: i64,
    ) -> Result<(usize, usize), EngineError> {
        let store = &self.inner.store;
        let pos = self.position().await?;
        let (events, next) = store.read_log(&pos, self.inner.config.batch_size).await?;
        if events.is_empty() {
            if next != pos {
                self.commit(c, vec![], Out::default(), Some(next), now)
                    .await?;
            }
            return Ok((0, 0));
        }
        let relevant: Vec<&LogEvent> = events
            .iter()
            .filter(|e| !e.event_type.starts_with("program."))
            .collect();
        let mut ids: Vec<Uuid> = relevant.iter().map(|e| e.contact_id).collect();
        ids.sort();
        ids.dedup();
        let existing = store.existing_contacts(&ids).await?;
        let ids: Vec<Uuid> = ids.into_iter().filter(|i| existing.contains(i)).collect();
        let mut works: Vec<Work> = store
            .enrollments_of(&ids)
            .await?
            .into_iter()
            .map(|e| Work {
                pos: position_of(c, &e),
                e,
                dirty: false,
                new: false,
            })
            .collect();
        let mut out = Out::default();
        let mut facts = FactCache::default();
        let mut goal_check: HashSet<Uuid> = HashSet::new();
        for ev in relevant {
            if !existing.contains(&ev.contact_id) {
                continue;
            }
            let cid = ev.contact_id;
            let t = ev.event_type.as_str();
            let unsub = t == "email.unsubscribed"
                || (t == "consent.withdrawn"
                    && ev.properties.get("channel").and_then(Value::as_str) == Some("email")
                    && ev
                        .properties
                        .get("subscription_type")
                        .is_none_or(Value::is_null));
            let handoff = t == "handoff.created";
            // Enrolled contacts: exits, event goals, waits for events.
            for w in works
                .iter_mut()
                .filter(|w| w.e.contact_id == cid && w.e.status == "active")
            {
                let Some(p) = c
                    .programs
                    .get(&w.e.program_id)
                    .and_then(|l| l.versions.get(&w.e.version))
                else {
                    continue;
                };
                if unsub && p.exit_on_unsubscribe {
                    end(w, "exited", Some("unsubscribed"), None, now, &mut out);
                    continue;
                }
                if handoff && p.exit_on_sales_cycle && w.e.by_sales == 0 {
                    end(w, "exited", Some("sales_cycle"), None, now, &mut out);
                    continue;
                }
                if ev.occurred_at >= w.e.entered_at - 1_000_000 || ev.position.seq > 0 {
                    let hit = p.goals.iter().find_map(|g| match g {
                        Goal::Event { id, matcher }
                            if matcher.matches(t, &ev.properties)
                                && ev.occurred_at >= w.e.entered_at =>
                        {
                            Some(id.clone())
                        }
                        _ => None,
                    });
                    if let Some(g) = hit {
                        end(w, "completed", Some("goal_reached"), Some(g), now, &mut out);
                        continue;
                    }
                }
                if p.goals.iter().any(|g| matches!(g, Goal::Condition { .. })) {
                    goal_check.insert(cid);
                }
                if w.pos.waiting
                    && let Some(i) = w.pos.step
                    && let StepKind::WaitEvent { matcher, .. } = &p.steps[i].kind
                    && matcher.matches(t, &ev.properties)
                    && ev.occurred_at >= w.e.updated_at - 1_000_000
                {
                    self.step_enrollment(c, p, w, now, true, &mut facts, &mut out)
                        .await?;
                }
            }
            // Triggers.
            for l in c.programs.values() {
                if l.row.status != "active" || ev.position.seq <= l.row.activated_seq {
                    continue;
                }
                let Some(p) = l.current() else { continue };
                for (i, tr) in p.triggers.iter().enumerate() {
                    match tr {
                        Trigger::Event { matcher, kind } if matcher.matches(t, &ev.properties) => {
                            self.try_enroll(
                                c, l, cid, kind, false, now, &mut works, &mut facts, &mut out,
                            )
                            .await?;
                        }
                        Trigger::Inactivity { after }
                            if ev.source != "engine" && is_activity(t) =>
                        {
                            out.schedules.insert(
                                (l.row.id, cid, i as i64),
                                Some(
                                    ev.occurred_at.max(now - after.as_micros()) + after.as_micros(),
                                ),
                            );
                        }
                        Trigger::Date { field, offset }
                            if t == "contact.created" || t == "contact.updated" =>
                        {
                            let cs = facts.get(store, &c.engine, cid, now).await?;
                            match program::contact_date(&cs.contact, field).map(|d| d + offset) {
                                Some(at) if at >= now - 86_400_000_000 => {
                                    out.schedules
                                        .insert((l.row.id, cid, i as i64), Some(at.max(now)));
                                }
                                _ => {
                                    out.schedules.insert((l.row.id, cid, i as i64), None);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        // Condition goals of contacts that had events.
        for cid in goal_check {
            for w in works
                .iter_mut()
                .filter(|w| w.e.contact_id == cid && w.e.status == "active")
            {
                let Some(p) = program_of(c, &w.e) else {
                    continue;
                };
                if let Some(g) = self.goal_reached(c, &p, cid, now, &mut facts).await? {
                    end(w, "completed", Some("goal_reached"), Some(g), now, &mut out);
                }
            }
        }
        let n = events.len();
        let steps = out.steps;
        self.commit(c, works, out, Some(next), now).await?;
        Ok((n, steps))
    }

    async fn goal_reached(
        &self,
        c: &Compiled,
        p: &Program,
        cid: Uuid,
        now: i64,
        facts: &mut FactCache,
    ) -> Result<Option<String>, EngineError> {
        for g in &p.goals {
            if let Goal::Condition { id, filter } = g {
                let cs = facts
                    .for_filter(&self.inner.store, &c.engine, cid, filter, now)
                    .await?;
                if filter.eval(cs, now).value {
                    return Ok(Some(id.clone()));
                }
            }
        }
        Ok(None)
    }

    /// Enrolls a contact (trigger fired or added by hand), honouring re-entry, the audience and
    /// the sales-cycle rule; runs its first steps at once. Returns the enrollment if created.
    #[allow(clippy::too_many_arguments)]
    async fn try_enroll(
        &self,
        c: &Arc<Compiled>,
        l: &Loaded,
        cid: Uuid,
        source: &str,
        by_sales: bool,
        now: i64,
        works: &mut Vec<Work>,
        facts: &mut FactCache,
        out: &mut Out,
    ) -> Result<Option<Uuid>, EngineError> {
        let Some(p) = l.current().cloned() else {
            return Ok(None);
        };
        let mine: Vec<&Work> = works
            .iter()
            .filter(|w| w.e.contact_id == cid && w.e.program_id == l.row.id)
            .collect();
        if mine.iter().any(|w| w.e.status == "active") {
            return Ok(None);
        }
        let allowed = match p.reentry {
            Reentry::Always => true,
            Reentry::Never => mine.is_empty(),
            Reentry::After(s) => mine
                .iter()
                .all(|w| w.e.ended_at.is_some_and(|t| t + s.as_micros() <= now)),
        };
        if !allowed {
            return Ok(None);
        }
        let store = &self.inner.store;
        if let Some(a) = &p.audience {
            let cs = facts.for_filter(store, &c.engine, cid, a, now).await?;
            if !a.eval(cs, now).value {
                return Ok(None);
            }
        }
        if p.exit_on_sales_cycle && !by_sales {
            let cs = facts.get(store, &c.engine, cid, now).await?;
            if cs.in_sales() {
                return Ok(None);
            }
        }
        let e = Enrollment {
            id: Uuid::now_v7(),
            program_id: l.row.id,
            version: l.row.version,
            contact_id: cid,
            status: "active".into(),
            step_id: p.steps.first().map(|s| s.id.clone()),
            seq: 0,
            waiting: 0,
            due_at: None,
            source: source.into(),
            by_sales: by_sales as i64,
            goal: None,
            exit_reason: None,
            entered_at: now,
            ended_at: None,
            updated_at: now,
        };
        out.events.push(NewEvent::new(
            cid,
            "program.entered",
            from_micros(now),
            PROGRAM_SOURCE,
            json!({"program_id": l.row.id, "program": l.row.name, "version": l.row.version, "enrollment_id": e.id, "trigger": source}),
        ));
        let id = e.id;
        let mut w = Work {
            pos: Position {
                step: Some(0),
                ..Default::default()
            },
            e,
            dirty: true,
            new: true,
        };
        self.step_enrollment(c, &p, &mut w, now, false, facts, out)
            .await?;
        works.push(w);
        Ok(Some(id))
    }

    /// Runs one enrollment from where it stands.
    #[allow(clippy::too_many_arguments)]
    async fn step_enrollment(
        &self,
        c: &Arc<Compiled>,
        p: &Program,
        w: &mut Work,
        now: i64,
        event: bool,
        facts: &mut FactCache,
        out: &mut Out,
    ) -> Result<(), EngineError> {
        let store = &self.inner.store;
        let cid = w.e.contact_id;
        // Goals are checked before each run of steps.
        if !p.goals.is_empty()
            && let Some(g) = self.goal_reached(c, p, cid, now, facts).await?
        {
            end(w, "completed", Some("goal_reached"), Some(g), now, out);
            return Ok(());
        }
        // Branch conditions, evaluated up front for this contact (the step machine is pure).
        let mut conds: HashMap<usize, bool> = HashMap::new();
        if w.pos.step.is_some() {
            for (i, s) in p.steps.iter().enumerate() {
                if let StepKind::Branch { cond, .. } = &s.kind {
                    let v = match cond {
                        Cond::Filter(f) => {
                            let cs = facts.for_filter(store, &c.engine, cid, f, now).await?;
                            f.eval(cs, now).value
                        }
                        Cond::EmailStep { step, what } => {
                            self.email_step(w, p, *step, what, out).await?
                        }
                    };
                    conds.insert(i, v);
                }
            }
        }
        let cs = facts.get(store, &c.engine, cid, now).await?.clone();
        let recent = facts.sends(store, cid, now).await?;
        let mut env = RunEnv {
            contact: &cs.contact,
            conds,
            enrollment: w.e.id,
            seq: w.pos.seq,
            program: p,
            recent,
            now,
            templates: &c.templates,
        };
        let mut actions = Vec::new();
        let before = w.pos.clone();
        program::advance(p, &mut w.pos, now, event, &mut env, &mut actions);
        if w.pos != before || !actions.is_empty() {
            w.dirty = true;
        }
        for a in actions {
            self.effect(c, p, w, &cs, a, now, facts, out)?;
        }
        sync_row(w, p, now);
        Ok(())
    }

    async fn email_step(
        &self,
        w: &Work,
        p: &Program,
        step: usize,
        what: &str,
        out: &Out,
    ) -> Result<bool, EngineError> {
        let sid = &p.steps[step].id;
        let prefix = format!("program:{}:{}:", w.e.id, sid);
        // The latest mail of that step (queued in this batch: not opened yet).
        if out.sends.iter().any(|s| s.key.starts_with(&prefix)) {
            return Ok(false);
        }
        let sends = self
            .inner
            .store
            .program_sends_of(&[w.e.contact_id], w.e.entered_at)
            .await?;
        let Some(s) = sends
            .iter()
            .filter(|s| s.key.starts_with(&prefix))
            .max_by_key(|s| s.created_at)
        else {
            return Ok(false);
        };
        let Some((_, opens, clicks)) = self.inner.store.program_message(&s.key).await? else {
            return Ok(false);
        };
        Ok(match what {
            "clicked" => clicks > 0,
            _ => opens > 0 || clicks > 0,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn effect(
        &self,
        c: &Arc<Compiled>,
        p: &Program,
        w: &mut Work,
        cs: &ContactState,
        a: Action,
        now: i64,
        facts: &mut FactCache,
        out: &mut Out,
    ) -> Result<(), EngineError> {
        let pid = w.e.program_id;
        let cid = w.e.contact_id;
        let at = from_micros(now);
        match a {
            Action::Ran { step, seq } => {
                out.steps += 1;
                let s = &p.steps[step];
                out.counts.entry((pid, s.id.clone())).or_default().runs += 1;
                let key = format!("program:{}:{}:{}", w.e.id, s.id, seq);
                match &s.kind {
                    StepKind::SendEmail {
                        template,
                        author,
                        subscription_type,
                    } => {
                        if let Some((tid, kind)) = c.template(template) {
                            out.mails.push(NewMessage {
                                idempotency_key: key.clone(),
                                contact_id: cid,
                                template_id: *tid,
                                sender_id: None,
                                author: author.clone(),
                                kind: kind.clone(),
                                subscription_type: subscription_type.clone(),
                                broadcast_id: None,
                                variant: None,
                                subject_override: None,
                                source: "program".into(),
                                payload: json!({"program_id": pid, "step": s.id, "enrollment_id": w.e.id}),
                                due_at: at,
                            });
                            out.sends.push(SendRow {
                                key,
                                program_id: pid,
                                step_id: s.id.clone(),
                                contact_id: cid,
                                template_id: *tid,
                                created_at: now,
                            });
                            facts.note_send(cid, *tid, now, w.e.id);
                        }
                    }
                    StepKind::Webhook { url } => {
                        out.notes.push(note(
                            cid,
                            "program.webhook",
                            url,
                            json!({"type": "program.webhook", "delivery_key": key, "occurred_at": at,
                                   "program": {"id": pid, "name": p.name, "step": s.id},
                                   "contact": contact_json(cs)}),
                            now,
                        ));
                    }
                    StepKind::NotifyOwner { message } => {
                        if let Some(url) = &c.policy_url {
                            out.notes.push(note(
                                cid,
                                "program.notify_owner",
                                url,
                                json!({"type": "program.notify_owner", "delivery_key": key, "occurred_at": at,
                                       "message": message, "owner_id": cs.contact.owner_id,
                                       "program": {"id": pid, "name": p.name, "step": s.id},
                                       "contact": contact_json(cs)}),
                                now,
                            ));
                        } else {
                            out.tasks.push(task(cs, message, None, now));
                        }
                    }
                    StepKind::Task { title, due_in } => {
                        out.tasks.push(task(cs, title, *due_in, now));
                    }
                    StepKind::UpdateField { field, value } => {
                        if let Some(inp) = field_input(field, value.clone()) {
                            out.fields.push((cid, inp));
                        }
                    }
                    StepKind::AddScore { field, points } => {
                        let name = field.strip_prefix("custom.").unwrap_or(field);
                        let pending: f64 = out
                            .fields
                            .iter()
                            .filter(|(x, _)| *x == cid)
                            .filter_map(|(_, i)| i.custom.get(name)?.as_f64())
                            .next_back()
                            .unwrap_or_else(|| {
                                cs.contact
                                    .custom
                                    .get(name)
                                    .and_then(Value::as_f64)
                                    .unwrap_or(0.0)
                            });
                        if let Some(inp) = field_input(field, json!(pending + points)) {
                            out.fields.push((cid, inp));
                        }
                    }
                    StepKind::SetStage { stage } => {
                        out.stages.push((
                            cid,
                            cs.contact.lifecycle_stage,
                            *stage,
                            format!("program:{}", p.name),
                        ));
                    }
                    StepKind::ListAdd { list } => {
                        if let Some(l) = c.list(list) {
                            out.list_add.push((l, cid));
                        }
                    }
                    StepKind::ListRemove { list } => {
                        if let Some(l) = c.list(list) {
                            out.list_remove.push((l, cid));
                        }
                    }
                    _ => {}
                }
            }
            Action::Skipped { step, reason } => {
                let s = &p.steps[step];
                out.counts.entry((pid, s.id.clone())).or_default().skipped += 1;
                out.events.push(NewEvent::new(
                    cid,
                    "program.step_skipped",
                    at,
                    PROGRAM_SOURCE,
                    json!({"program_id": pid, "step": s.id, "reason": reason, "enrollment_id": w.e.id}),
                ));
            }
            Action::Deferred { step, .. } => {
                let s = &p.steps[step];
                out.counts.entry((pid, s.id.clone())).or_default().deferred += 1;
            }
            Action::Ended { reason, move_to } => {
                let status = if reason == "completed" {
                    "completed"
                } else {
                    "exited"
                };
                end(w, status, Some(&reason), None, now, out);
                if reason == "completed"
                    && let OnEnd::Complete { stage: Some(st) } = &p.on_end
                {
                    out.stages.push((
                        cid,
                        cs.contact.lifecycle_stage,
                        *st,
                        format!("program:{}", p.name),
                    ));
                }
                if let Some(target) = move_to.and_then(|m| c.program_id(&m))
                    && let Some(l) = c.programs.get(&target)
                    && l.current().is_some()
                {
                    // Entered at once, first steps on the next due scan.
                    let e = Enrollment {
                        id: Uuid::now_v7(),
                        program_id: target,
                        version: l.row.version,
                        contact_id: cid,
                        status: "active".into(),
                        step_id: l
                            .current()
                            .and_then(|p| p.steps.first())
                            .map(|s| s.id.clone()),
                        seq: 0,
                        waiting: 0,
                        due_at: Some(now),
                        source: "moved".into(),
                        by_sales: w.e.by_sales,
                        goal: None,
                        exit_reason: None,
                        entered_at: now,
                        ended_at: None,
                        updated_at: now,
                    };
                    out.events.push(NewEvent::new(
                        cid,
                        "program.entered",
                        at,
                        PROGRAM_SOURCE,
                        json!({"program_id": target, "program": l.row.name, "enrollment_id": e.id, "trigger": "moved", "from_program_id": pid}),
                    ));
                    out.moved.push(e);
                }
            }
        }
        Ok(())
    }

    async fn process_schedules(
        &self,
        c: &Arc<Compiled>,
        now: i64,
    ) -> Result<(usize, usize), EngineError> {
        let store = &self.inner.store;
        let due = store
            .due_schedules(now, self.inner.config.due_batch)
            .await?;
        if due.is_empty() {
            return Ok((0, 0));
        }
        let mut out = Out::default();
        let mut targets: Vec<(Uuid, Uuid, &'static str)> = Vec::new();
        for (pid, cid, tno, at) in &due {
            let Some(l) = c.programs.get(pid) else {
                continue;
            };
            let Some(p) = l.current() else { continue };
            match p.triggers.get(*tno as usize) {
                Some(Trigger::Recurring {
                    every,
                    segment,
                    list,
                    ..
                }) => {
                    let members = if let Some(s) = segment.as_ref().and_then(|s| c.segments.get(s))
                    {
                        store.segment_member_ids(*s).await?
                    } else if let Some(l) = list.as_ref().and_then(|l| c.list(l)) {
                        store.list_member_ids(l).await?
                    } else {
                        vec![]
                    };
                    for m in members {
                        targets.push((*pid, m, "recurring"));
                    }
                    let mut next = *at + every.as_micros();
                    while next <= now {
                        next += every.as_micros();
                    }
                    out.schedules.insert((*pid, *cid, *tno), Some(next));
                }
                Some(Trigger::Date { .. }) => {
                    targets.push((*pid, *cid, "date"));
                    out.schedules.insert((*pid, *cid, *tno), None);
                }
                Some(Trigger::Inactivity { .. }) => {
                    targets.push((*pid, *cid, "inactivity"));
                    out.schedules.insert((*pid, *cid, *tno), None);
                }
                _ => {
                    out.schedules.insert((*pid, *cid, *tno), None);
                }
            }
        }
        let mut ids: Vec<Uuid> = targets.iter().map(|t| t.1).collect();
        ids.sort();
        ids.dedup();
        let existing = store.existing_contacts(&ids).await?;
        let mut works: Vec<Work> = store
            .enrollments_of(&ids)
            .await?
            .into_iter()
            .map(|e| Work {
                pos: position_of(c, &e),
                e,
                dirty: false,
                new: false,
            })
            .collect();
        let mut facts = FactCache::default();
        for (pid, cid, src) in targets {
            if !existing.contains(&cid) {
                continue;
            }
            if let Some(l) = c.programs.get(&pid) {
                self.try_enroll(c, l, cid, src, false, now, &mut works, &mut facts, &mut out)
                    .await?;
            }
        }
        let steps = out.steps;
        self.commit(c, works, out, None, now).await?;
        Ok((due.len(), steps))
    }

    async fn process_due(
        &self,
        c: &Arc<Compiled>,
        now: i64,
    ) -> Result<(usize, usize), EngineError> {
        let store = &self.inner.store;
        let due = store
            .due_enrollments(now, self.inner.config.due_batch)
            .await?;
        if due.is_empty() {
            return Ok((0, 0));
        }
        let ids: Vec<Uuid> = {
            let mut v: Vec<Uuid> = due.iter().map(|e| e.contact_id).collect();
            v.sort();
            v.dedup();
            v
        };
        let mut facts = FactCache::default();
        facts.preload(store, &c.engine, &ids, now).await?;
        facts.preload_sends(store, &ids, now).await?;
        let mut out = Out::default();
        let mut works: Vec<Work> = Vec::with_capacity(due.len());
        for e in due {
            let mut w = Work {
                pos: position_of(c, &e),
                e,
                dirty: false,
                new: false,
            };
            match program_of(c, &w.e) {
                Some(p) => {
                    self.step_enrollment(c, &p, &mut w, now, false, &mut facts, &mut out)
                        .await?;
                    if w.e.status == "active" && w.e.due_at.is_some_and(|d| d <= now) && !w.dirty {
                        // Nothing moved (should not happen): look again later, not in a spin.
                        w.e.due_at = Some(now + 60_000_000);
                        w.dirty = true;
                    }
                }
                None => {
                    end(
                        &mut w,
                        "exited",
                        Some("version_unavailable"),
                        None,
                        now,
                        &mut out,
                    );
                }
            }
            works.push(w);
        }
        let n = works.len();
        let steps = out.steps;
        self.commit(c, works, out, None, now).await?;
        Ok((n, steps))
    }

    /// Adds a contact to a program by hand (a sales rep or the API). Returns the enrollment
    /// id, or `None` when the re-entry policy, the audience or the sales cycle keeps it out.
    pub async fn enroll(
        &self,
        program: Uuid,
        contact: Uuid,
        by_sales: bool,
    ) -> Result<Option<Uuid>, EngineError> {
        let now = self.now();
        let c = self.compiled().await?;
        let Some(l) = c.programs.get(&program) else {
            return Err(EngineError::NotFound("program"));
        };
        let store = &self.inner.store;
        if store.existing_contacts(&[contact]).await?.is_empty() {
            return Err(EngineError::NotFound("contact"));
        }
        let mut works: Vec<Work> = store
            .enrollments_of(&[contact])
            .await?
            .into_iter()
            .map(|e| Work {
                pos: position_of(&c, &e),
                e,
                dirty: false,
                new: false,
            })
            .collect();
        let mut facts = FactCache::default();
        let mut out = Out::default();
        let source = if by_sales { "sales" } else { "api" };
        // Enrolled as due now: the runner takes the first steps (in its own transaction).
        let id = {
            let Some(p) = l.current().cloned() else {
                return Err(EngineError::NotFound("program version"));
            };
            let mine: Vec<&Work> = works.iter().filter(|w| w.e.program_id == program).collect();
            if mine.iter().any(|w| w.e.status == "active") {
                return Ok(None);
            }
            let allowed = match p.reentry {
                Reentry::Always => true,
                Reentry::Never => mine.is_empty(),
                Reentry::After(s) => mine
                    .iter()
                    .all(|w| w.e.ended_at.is_some_and(|t| t + s.as_micros() <= now)),
            };
            if !allowed {
                return Ok(None);
            }
            if let Some(a) = &p.audience {
                let cs = facts.for_filter(store, &c.engine, contact, a, now).await?;
                if !a.eval(cs, now).value {
                    return Ok(None);
                }
            }
            if p.exit_on_sales_cycle
                && !by_sales
                && facts.get(store, &c.engine, contact, now).await?.in_sales()
            {
                return Ok(None);
            }
            let e = Enrollment {
                id: Uuid::now_v7(),
                program_id: program,
                version: l.row.version,
                contact_id: contact,
                status: "active".into(),
                step_id: p.steps.first().map(|s| s.id.clone()),
                seq: 0,
                waiting: 0,
                due_at: Some(now),
                source: source.into(),
                by_sales: by_sales as i64,
                goal: None,
                exit_reason: None,
                entered_at: now,
                ended_at: None,
                updated_at: now,
            };
            out.events.push(NewEvent::new(
                contact,
                "program.entered",
                from_micros(now),
                PROGRAM_SOURCE,
                json!({"program_id": program, "program": l.row.name, "version": l.row.version, "enrollment_id": e.id, "trigger": source}),
            ));
            let id = e.id;
            works.push(Work {
                pos: Position {
                    step: Some(0),
                    ..Default::default()
                },
                e,
                dirty: true,
                new: true,
            });
            id
        };
        let mut tx = store.db().begin().await?;
        let news: Vec<Enrollment> = works.into_iter().filter(|w| w.new).map(|w| w.e).collect();
        ps::insert_enrollments(&mut tx, &news).await?;
        kizuna_store::events::append(&mut tx, out.events, from_micros(now)).await?;
        tx.commit().await?;
        self.wake();
        Ok(Some(id))
    }

    /// Adds many contacts at once as due now (benchmarks, bulk API): no checks but "not
    /// already active in the program". Returns how many were enrolled.
    pub async fn enroll_bulk(
        &self,
        program: Uuid,
        contacts: &[Uuid],
        due_at: i64,
    ) -> Result<u64, EngineError> {
        let c = self.compiled().await?;
        let Some(l) = c.programs.get(&program) else {
            return Err(EngineError::NotFound("program"));
        };
        let Some(p) = l.current() else {
            return Err(EngineError::NotFound("program version"));
        };
        let now = self.now();
        let mut n = 0;
        for chunk in contacts.chunks(5000) {
            let rows: Vec<Enrollment> = chunk
                .iter()
                .map(|cid| Enrollment {
                    id: Uuid::now_v7(),
                    program_id: program,
                    version: l.row.version,
                    contact_id: *cid,
                    status: "active".into(),
                    step_id: p.steps.first().map(|s| s.id.clone()),
                    seq: 0,
                    waiting: 0,
                    due_at: Some(due_at),
                    source: "api".into(),
                    by_sales: 0,
                    goal: None,
                    exit_reason: None,
                    entered_at: now,
                    ended_at: None,
                    updated_at: now,
                })
                .collect();
            let mut tx = self.inner.store.db().begin().await?;
            ps::insert_enrollments(&mut tx, &rows).await?;
            tx.commit().await?;
            n += rows.len() as u64;
        }
        self.wake();
        Ok(n)
    }

    /// Writes a batch in one transaction: enrollments, effects, schedules, counters and (for
    /// log batches) the checkpoint.
    async fn commit(
        &self,
        _c: &Arc<Compiled>,
        works: Vec<Work>,
        out: Out,
        to: Option<LogCursor>,
        now: i64,
    ) -> Result<(), EngineError> {
        let store = &self.inner.store;
        let at = from_micros(now);
        let crash = self
            .inner
            .crash_after_batches
            .load(std::sync::atomic::Ordering::SeqCst);
        if crash == 0 {
            self.inner
                .crash_after_batches
                .store(-1, std::sync::atomic::Ordering::SeqCst);
            *self.inner.position.lock().await = None;
            return Err(EngineError::InjectedCrash);
        } else if crash > 0 {
            self.inner
                .crash_after_batches
                .store(crash - 1, std::sync::atomic::Ordering::SeqCst);
        }
        let mut tx = store.db().begin().await?;
        let (news, olds): (Vec<Work>, Vec<Work>) = works.into_iter().partition(|w| w.new);
        let news: Vec<Enrollment> = news.into_iter().map(|w| w.e).collect();
        let mut all_new = news;
        all_new.extend(out.moved.iter().cloned());
        ps::insert_enrollments(&mut tx, &all_new).await?;
        let changed: Vec<Enrollment> = olds.into_iter().filter(|w| w.dirty).map(|w| w.e).collect();
        ps::update_enrollments(&mut tx, &changed).await?;
        let mails = !out.mails.is_empty();
        outbox::enqueue(&mut tx, &out.mails, at).await?;
        ps::insert_sends(&mut tx, &out.sends).await?;
        for t in &out.tasks {
            kizuna_store::sales::insert_task(&mut tx, t).await?;
        }
        let notes = !out.notes.is_empty();
        for n in &out.notes {
            kizuna_store::sales::enqueue_notification(&mut tx, n).await?;
        }
        let mut events = out.events;
        for (cid, input) in out.fields {
            match kizuna_store::contacts::update_in(&mut tx, cid, input, at, PROGRAM_SOURCE).await {
                Ok(_) => {}
                Err(kizuna_store::StoreError::Invalid(e)) => {
                    tracing::warn!(contact = %cid, error = %e, "program field update refused");
                }
                Err(e) => return Err(e.into()),
            }
        }
        for (cid, from, to_stage, cause) in out.stages {
            if from != to_stage
                && kizuna_store::engine_state::set_stage_if(&mut tx, cid, from, to_stage, now)
                    .await?
            {
                events.push(NewEvent::new(
                    cid,
                    "stage.changed",
                    at,
                    PROGRAM_SOURCE,
                    json!({"from": from, "to": to_stage, "cause": cause}),
                ));
            }
        }
        let mut by_list: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for (l, cid) in out.list_add {
            by_list.entry(l).or_default().push(cid);
        }
        for (l, cids) in by_list {
            kizuna_store::lists::add_members(&mut tx, l, &cids, at).await?;
        }
        for (l, cid) in out.list_remove {
            let n = tx
                .execute(
                    "DELETE FROM list_members WHERE list_id = $1 AND contact_id = $2",
                    kizuna_store::args![l, cid],
                )
                .await?;
            if n > 0 {
                events.push(NewEvent::new(
                    cid,
                    "list.removed",
                    at,
                    PROGRAM_SOURCE,
                    json!({"list_id": l}),
                ));
            }
        }
        kizuna_store::events::append(&mut tx, events, at).await?;
        let mut set = Vec::new();
        let mut del = Vec::new();
        for ((p, c, t), due) in out.schedules {
            match due {
                Some(d) => set.push((p, c, t, d)),
                None => del.push((p, c, t)),
            }
        }
        ps::upsert_schedules(&mut tx, &set).await?;
        ps::delete_schedules(&mut tx, &del).await?;
        let counts: Vec<((Uuid, String), StepCount)> = out.counts.into_iter().collect();
        ps::add_step_counts(&mut tx, &counts).await?;
        if let Some(t) = &to {
            if !advance_checkpoint(
                &mut tx,
                &self.inner.config.checkpoint,
                &self.inner.config.node_id,
                t,
                now,
            )
            .await?
            {
                *self.inner.lease_until.lock().await = 0;
                return Err(EngineError::LeaseLost);
            }
        } else {
            // Still the holder? (Another node may have taken over after a long pause.)
            let held = store
                .checkpoint(&self.inner.config.checkpoint)
                .await?
                .is_some_and(|cp| cp.holder.as_deref() == Some(&self.inner.config.node_id));
            if !held {
                *self.inner.lease_until.lock().await = 0;
                return Err(EngineError::LeaseLost);
            }
        }
        tx.commit().await?;
        if let Some(t) = to {
            *self.inner.position.lock().await = Some(t);
        }
        if notes {
            self.inner.notifications.notify_one();
        }
        if mails && let Some(m) = self.inner.mail.lock().await.as_ref() {
            m.notify_one();
        }
        Ok(())
    }
}

fn is_activity(t: &str) -> bool {
    !(t.starts_with("segment.")
        || t.starts_with("score.")
        || t.starts_with("grade.")
        || t.starts_with("temperature.")
        || t.starts_with("program.")
        || t == "email.sent"
        || t == "email.delivered"
        || t == "contact.updated"
        || t == "list.added"
        || t == "list.removed")
}

fn program_of(c: &Compiled, e: &Enrollment) -> Option<Arc<Program>> {
    c.programs
        .get(&e.program_id)?
        .versions
        .get(&e.version)
        .cloned()
}

fn position_of(c: &Compiled, e: &Enrollment) -> Position {
    let step = program_of(c, e).and_then(|p| e.step_id.as_deref().and_then(|s| p.step_index(s)));
    Position {
        step: if e.status == "active" { step } else { None },
        seq: e.seq,
        due_at: e.due_at,
        waiting: e.waiting != 0,
    }
}

fn sync_row(w: &mut Work, p: &Program, now: i64) {
    if w.e.status != "active" {
        return;
    }
    w.e.step_id = w.pos.step.map(|i| p.steps[i].id.clone());
    w.e.seq = w.pos.seq;
    w.e.waiting = w.pos.waiting as i64;
    w.e.due_at = w.pos.due_at;
    w.e.updated_at = now;
}

fn end(
    w: &mut Work,
    status: &str,
    reason: Option<&str>,
    goal: Option<String>,
    now: i64,
    out: &mut Out,
) {
    if w.e.status != "active" {
        return;
    }
    w.e.status = status.into();
    w.e.exit_reason = reason.map(str::to_string);
    w.e.goal = goal.clone();
    w.e.ended_at = Some(now);
    w.e.due_at = None;
    w.e.waiting = 0;
    w.e.updated_at = now;
    w.e.seq = w.pos.seq.max(w.e.seq);
    w.pos.step = None;
    w.dirty = true;
    let ty = if goal.is_some() {
        "program.goal_reached"
    } else if status == "completed" {
        "program.completed"
    } else {
        "program.exited"
    };
    out.events.push(NewEvent::new(
        w.e.contact_id,
        ty,
        from_micros(now),
        PROGRAM_SOURCE,
        json!({"program_id": w.e.program_id, "enrollment_id": w.e.id, "reason": reason, "goal": goal}),
    ));
}

fn note(
    cid: Uuid,
    kind: &str,
    url: &str,
    body: Value,
    now: i64,
) -> kizuna_store::sales::Notification {
    let id = Uuid::now_v7();
    let mut body = body;
    body["delivery_id"] = json!(id);
    kizuna_store::sales::Notification {
        id,
        contact_id: cid,
        kind: kind.into(),
        url: url.into(),
        body: body.to_string(),
        status: "pending".into(),
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        created_at: now,
    }
}

fn task(
    cs: &ContactState,
    title: &str,
    due_in: Option<kizuna_core::span::Span>,
    now: i64,
) -> kizuna_store::sales::Task {
    let name = [
        cs.contact.last_name.as_deref(),
        cs.contact.first_name.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    let name = if name.is_empty() {
        cs.contact.email.clone().unwrap_or_default()
    } else {
        name
    };
    kizuna_store::sales::Task {
        id: Uuid::now_v7(),
        contact_id: cs.contact.id,
        owner_id: cs.contact.owner_id,
        kind: "call".into(),
        title: title.replace("{name}", &name),
        notes: None,
        status: "open".into(),
        due_at: due_in.map(|d| from_micros(now + d.as_micros())),
        source: "program".into(),
        handoff_id: None,
        created_at: from_micros(now),
        completed_at: None,
    }
}

fn contact_json(cs: &ContactState) -> Value {
    let c = &cs.contact;
    json!({"id": c.id, "email": c.email, "first_name": c.first_name, "last_name": c.last_name,
           "job_title": c.job_title, "lifecycle_stage": c.lifecycle_stage, "owner_id": c.owner_id,
           "company": cs.company.as_ref().map(|co| json!({"id": co.id, "name": co.name}))})
}

fn field_input(field: &str, value: Value) -> Option<ContactInput> {
    let v = match field.strip_prefix("custom.") {
        Some(n) => json!({"custom": {n: value}}),
        None => json!({field: value}),
    };
    serde_json::from_value(v).ok()
}

/// What an enrollment's steps see of the outside while running.
struct RunEnv<'a> {
    contact: &'a kizuna_core::contact::Contact,
    conds: HashMap<usize, bool>,
    enrollment: Uuid,
    seq: i64,
    program: &'a Program,
    recent: Vec<(Uuid, i64, Uuid)>,
    now: i64,
    templates: &'a HashMap<String, (Uuid, String)>,
}

impl Env for RunEnv<'_> {
    fn condition(&mut self, step: usize, _cond: &Cond) -> bool {
        self.conds.get(&step).copied().unwrap_or(false)
    }
    fn date_field(&self, field: &str) -> Option<i64> {
        program::contact_date(self.contact, field)
    }
    fn time_zone(&self) -> Option<program::Zone> {
        program::contact_time_zone(self.contact)
    }
    fn sample(&self, step: usize) -> f64 {
        program::stable_sample(&format!("{}:{}:{}", self.enrollment, step, self.seq))
    }
    fn send_check(&mut self, template: &str) -> SendCheck {
        let tid = self.templates.get(template).map(|t| t.0);
        let pr = &self.program.pressure;
        if let Some(tid) = tid
            && self.recent.iter().any(|(t, at, enr)| {
                *t == tid && *enr != self.enrollment && *at > self.now - pr.dedupe.as_micros()
            })
        {
            return SendCheck::Skip("duplicate".into());
        }
        if let Some((max, per)) = pr.frequency_cap {
            let since = self.now - per.as_micros();
            let mut ts: Vec<i64> = self
                .recent
                .iter()
                .filter(|(_, at, _)| *at > since)
                .map(|x| x.1)
                .collect();
            if ts.len() as u32 >= max {
                ts.sort();
                let k = ts.len() - max as usize;
                return SendCheck::Defer(ts[k] + per.as_micros());
            }
        }
        if let Some(tid) = tid {
            self.recent.push((tid, self.now, self.enrollment));
        }
        SendCheck::Send
    }
}

/// Contact facts loaded for a batch (engine state plus behaviour the engine does not keep,
/// read from the contact's log when a program condition needs it), and recent program mails.
#[derive(Default)]
struct FactCache {
    states: HashMap<Uuid, ContactState>,
    filled: HashSet<(Uuid, String)>,
    sends: HashMap<Uuid, Vec<(Uuid, i64, Uuid)>>,
    sends_loaded: HashSet<Uuid>,
}

impl FactCache {
    async fn preload(
        &mut self,
        store: &Store,
        defs: &Arc<Definitions>,
        ids: &[Uuid],
        now: i64,
    ) -> Result<(), EngineError> {
        let missing: Vec<Uuid> = ids
            .iter()
            .filter(|i| !self.states.contains_key(i))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let loaded = load_states(
            store,
            defs,
            &missing,
            now,
            Load {
                timers: false,
                ..Load::all(true)
            },
        )
        .await?;
        self.states.extend(loaded);
        Ok(())
    }

    async fn preload_sends(
        &mut self,
        store: &Store,
        ids: &[Uuid],
        now: i64,
    ) -> Result<(), EngineError> {
        let since = now - 400 * 86_400_000_000;
        let rows = store.program_sends_of(ids, since).await?;
        for id in ids {
            self.sends_loaded.insert(*id);
            self.sends.entry(*id).or_default();
        }
        for r in rows {
            let enr = r
                .key
                .split(':')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_default();
            self.sends
                .entry(r.contact_id)
                .or_default()
                .push((r.template_id, r.created_at, enr));
        }
        Ok(())
    }

    async fn sends(
        &mut self,
        store: &Store,
        cid: Uuid,
        now: i64,
    ) -> Result<Vec<(Uuid, i64, Uuid)>, EngineError> {
        if !self.sends_loaded.contains(&cid) {
            self.preload_sends(store, &[cid], now).await?;
        }
        Ok(self.sends.get(&cid).cloned().unwrap_or_default())
    }

    fn note_send(&mut self, cid: Uuid, tid: Uuid, now: i64, enrollment: Uuid) {
        self.sends
            .entry(cid)
            .or_default()
            .push((tid, now, enrollment));
    }

    async fn get(
        &mut self,
        store: &Store,
        defs: &Arc<Definitions>,
        cid: Uuid,
        now: i64,
    ) -> Result<&ContactState, EngineError> {
        if !self.states.contains_key(&cid) {
            self.preload(store, defs, &[cid], now).await?;
        }
        self.states
            .get(&cid)
            .ok_or(EngineError::NotFound("contact"))
    }

    /// The contact's state with every feature `f` reads filled in.
    async fn for_filter(
        &mut self,
        store: &Store,
        defs: &Arc<Definitions>,
        cid: Uuid,
        f: &Filter,
        now: i64,
    ) -> Result<&ContactState, EngineError> {
        self.get(store, defs, cid, now).await?;
        let need: Vec<FeatureDef> = f
            .features
            .iter()
            .filter(|fd| !self.filled.contains(&(cid, fd.key.clone())))
            .cloned()
            .collect();
        if !need.is_empty() {
            let log = store.contact_log(cid, None).await?;
            let cs = self.states.get_mut(&cid).expect("loaded");
            for fd in &need {
                let mut st = FeatureState::default();
                for e in &log {
                    if fd.matcher.matches(&e.event_type, &e.properties) {
                        st.record(e.occurred_at, fd.keep);
                    }
                }
                if st.count > 0 {
                    cs.features.insert(fd.key.clone(), st);
                } else {
                    cs.features.remove(&fd.key);
                }
                self.filled.insert((cid, fd.key.clone()));
            }
        }
        let cs = self.states.get_mut(&cid).expect("loaded");
        cs.now = now;
        Ok(cs)
    }
}
