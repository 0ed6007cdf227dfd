//! The engine loop: hold the lease, keep definitions current (building new or edited ones),
//! process the next batch of the log, fire due timers — each batch committed in one
//! transaction together with the checkpoint, so a crash replays from the last commit and every
//! effect carries an idempotency key.

use crate::definitions::{self, Definitions};
use crate::pipeline::{self, Cause, ENGINE_SOURCE, Effects};
use crate::state::{ContactState, Load, load_states, refresh_profiles};
use crate::{Engine, EngineConfig, EngineError, build, sales};
use kizuna_core::clock::SharedClock;
use kizuna_core::time::micros;
use kizuna_store::Store;
use kizuna_store::engine_state::{self as es, ScoreRow};
use kizuna_store::log::{LogCursor, advance_checkpoint};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

/// Setting holding the last owner picked by round-robin.
pub const ROUND_ROBIN_SETTING: &str = "round_robin_last";

/// What one turn did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Log events consumed.
    pub events: usize,
    /// Timers fired.
    pub timers: usize,
    /// Definitions built.
    pub builds: usize,
}

impl Progress {
    /// Nothing was done.
    pub fn is_idle(&self) -> bool {
        self.events == 0 && self.timers == 0 && self.builds == 0
    }

    fn add(&mut self, o: Progress) {
        self.events += o.events;
        self.timers += o.timers;
        self.builds += o.builds;
    }
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) clock: SharedClock,
    pub(crate) config: EngineConfig,
    position: Mutex<Option<LogCursor>>,
    lease_until: Mutex<i64>,
    defs: Mutex<Option<Arc<Definitions>>>,
    commits: AtomicU64,
    wake: Notify,
    pub(crate) outbox: Arc<Notify>,
    cache: std::sync::Mutex<Cache>,
}

/// Contact states kept between batches, least recently used evicted.
#[derive(Default)]
struct Cache {
    version: i64,
    tick: u64,
    map: HashMap<Uuid, (ContactState, u64)>,
}

impl Cache {
    fn take(&mut self, version: i64, ids: &[Uuid]) -> HashMap<Uuid, ContactState> {
        if version != self.version {
            self.map.clear();
            self.version = version;
        }
        ids.iter()
            .filter_map(|id| self.map.remove(id).map(|(s, _)| (*id, s)))
            .collect()
    }

    fn put(&mut self, version: i64, states: HashMap<Uuid, ContactState>, cap: usize) {
        if version != self.version || cap == 0 {
            return;
        }
        self.tick += 1;
        for (id, mut s) in states {
            s.settled();
            self.map.insert(id, (s, self.tick));
        }
        if self.map.len() > cap + cap / 4 {
            let mut ages: Vec<(u64, Uuid)> =
                self.map.iter().map(|(id, (_, t))| (*t, *id)).collect();
            ages.sort_unstable();
            for (_, id) in ages.into_iter().take(self.map.len() - cap) {
                self.map.remove(&id);
            }
        }
    }
}

impl Inner {
    pub(crate) fn new(store: Store, clock: SharedClock, config: EngineConfig) -> Inner {
        Inner {
            store,
            clock,
            config,
            position: Mutex::new(None),
            lease_until: Mutex::new(0),
            defs: Mutex::new(None),
            commits: AtomicU64::new(0),
            wake: Notify::new(),
            outbox: Arc::new(Notify::new()),
            cache: std::sync::Mutex::new(Cache::default()),
        }
    }
}

impl Engine {
    pub(crate) fn now(&self) -> i64 {
        micros(self.inner.clock.now())
    }

    /// Signalled when a commit queued owner notifications (pass it to
    /// [`Notifier::run`](crate::notify::Notifier::run) so they go out at once).
    pub fn notifications_queued(&self) -> Arc<Notify> {
        self.inner.outbox.clone()
    }

    /// Wakes the loop (e.g. after an API write) instead of waiting for the next poll.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
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
        let held_before = *until > now;
        if self
            .inner
            .store
            .acquire_lease(
                &self.inner.config.checkpoint,
                &self.inner.config.node_id,
                now,
                now + lease,
            )
            .await?
        {
            *until = now + lease;
            if !held_before {
                // (Re)gained: start from the stored checkpoint, with nothing cached.
                *self.inner.position.lock().await = None;
                self.forget_cache();
            }
            Ok(())
        } else {
            *until = 0;
            Err(EngineError::LeaseLost)
        }
    }

    /// Where the engine stands in the log.
    pub async fn position(&self) -> Result<LogCursor, EngineError> {
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

    /// The compiled definitions (reloaded when the store's definitions version moved).
    pub async fn definitions(&self) -> Result<Arc<Definitions>, EngineError> {
        let version = self.inner.store.definitions_version().await?;
        let mut d = self.inner.defs.lock().await;
        if let Some(defs) = d.as_ref()
            && defs.version == version
        {
            return Ok(defs.clone());
        }
        let fresh = Arc::new(definitions::load(&self.inner.store).await?);
        *d = Some(fresh.clone());
        self.forget_cache();
        Ok(fresh)
    }

    pub(crate) async fn forget_definitions(&self) {
        *self.inner.defs.lock().await = None;
        self.forget_cache();
    }

    pub(crate) fn forget_cache(&self) {
        let mut c = self.inner.cache.lock().expect("cache lock");
        c.map.clear();
        c.version = -1;
    }

    /// States of contacts: from the cache when kept, else from the store; profiles re-read
    /// for `stale`.
    async fn states(
        &self,
        defs: &Arc<Definitions>,
        ids: &[Uuid],
        stale: &HashSet<Uuid>,
        now: i64,
    ) -> Result<HashMap<Uuid, ContactState>, EngineError> {
        let mut states = self
            .inner
            .cache
            .lock()
            .expect("cache lock")
            .take(defs.version, ids);
        let refresh: Vec<Uuid> = states
            .keys()
            .filter(|id| stale.contains(id))
            .copied()
            .collect();
        refresh_profiles(&self.inner.store, &mut states, &refresh, defs.uses_lists).await?;
        let missing: Vec<Uuid> = ids
            .iter()
            .filter(|id| !states.contains_key(id))
            .copied()
            .collect();
        if !missing.is_empty() {
            states.extend(
                load_states(
                    &self.inner.store,
                    defs,
                    &missing,
                    now,
                    Load::all(defs.uses_lists),
                )
                .await?,
            );
        }
        for cs in states.values_mut() {
            cs.now = now;
        }
        Ok(states)
    }

    fn keep(&self, defs: &Definitions, states: HashMap<Uuid, ContactState>) {
        self.inner.cache.lock().expect("cache lock").put(
            defs.version,
            states,
            self.inner.config.cache_contacts,
        );
    }

    /// One turn: definitions, one batch of events, one batch of due timers.
    pub async fn run_once(&self) -> Result<Progress, EngineError> {
        let now = self.now();
        self.ensure_lease(now).await?;
        let defs = self.definitions().await?;
        let builds = build::sync(self, &defs).await?;
        if builds > 0 {
            self.forget_definitions().await;
            return Ok(Progress {
                builds,
                ..Default::default()
            });
        }
        let events = self.process_events(&defs, now).await?;
        let timers = self.process_timers(&defs, now).await?;
        Ok(Progress {
            events,
            timers,
            builds: 0,
        })
    }

    /// Turns until there is nothing left to do (tests, benchmarks, catch-up).
    pub async fn run_until_idle(&self) -> Result<Progress, EngineError> {
        let mut total = Progress::default();
        loop {
            let p = self.run_once().await?;
            if p.is_idle() {
                return Ok(total);
            }
            total.add(p);
        }
    }

    /// Runs the loop until `shutdown` resolves; gives the lease up on the way out.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let idle = self.inner.config.idle_poll;
        loop {
            let pause = match self.run_once().await {
                Ok(p) if p.is_idle() => Some(idle),
                Ok(_) => None,
                Err(EngineError::LeaseLost) => Some(std::time::Duration::from_secs(2)),
                Err(e) => {
                    tracing::error!(error = %e, "engine turn failed; retrying from the checkpoint");
                    *self.inner.position.lock().await = None;
                    self.forget_cache();
                    Some(std::time::Duration::from_secs(1))
                }
            };
            if let Some(d) = pause {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(d) => {}
                    _ = self.inner.wake.notified() => {}
                }
            } else if futures_ready(&mut shutdown).await {
                break;
            }
        }
        let _ = self
            .inner
            .store
            .release_lease(&self.inner.config.checkpoint, &self.inner.config.node_id)
            .await;
        tracing::info!("engine stopped");
    }

    /// Spawns [`Engine::run`] on the runtime.
    pub fn spawn(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let e = self.clone();
        tokio::spawn(async move { e.run(shutdown).await })
    }

    async fn process_events(
        &self,
        defs: &Arc<Definitions>,
        now: i64,
    ) -> Result<usize, EngineError> {
        let store = &self.inner.store;
        let pos = self.position().await?;
        let (events, next) = store.read_log(&pos, self.inner.config.batch_size).await?;
        if events.is_empty() {
            if next != pos {
                // Pending transactions finished without events: remember that.
                self.commit(defs, HashMap::new(), Effects::default(), Some(next), now)
                    .await?;
            }
            return Ok(0);
        }
        let last = next.position;
        let mut ids: Vec<Uuid> = Vec::new();
        let mut rebuild: Vec<Uuid> = Vec::new();
        let mut stale: HashSet<Uuid> = HashSet::new();
        let mut reads: HashMap<String, bool> = HashMap::new();
        let relevant = |e: &kizuna_store::log::LogEvent, reads: &mut HashMap<String, bool>| {
            if e.source == ENGINE_SOURCE {
                return false;
            }
            if let Some(r) = reads.get(e.event_type.as_str()) {
                return *r;
            }
            let r = defs.reads(&e.event_type);
            reads.insert(e.event_type.clone(), r);
            r
        };
        for e in &events {
            if !relevant(e, &mut reads) {
                continue;
            }
            ids.push(e.contact_id);
            let t = e.event_type.as_str();
            if t.starts_with("contact.")
                || t.starts_with("company.")
                || t.starts_with("list.")
                || t == "stage.changed"
                || t == "temperature.changed"
            {
                stale.insert(e.contact_id);
            }
            match e.event_type.as_str() {
                "contact.merged" => rebuild.push(e.contact_id),
                "contact.merge_undone" => {
                    rebuild.push(e.contact_id);
                    if let Some(r) = e
                        .properties
                        .get("restored_id")
                        .and_then(|v| v.as_str())
                        .and_then(|s| s.parse().ok())
                    {
                        rebuild.push(r);
                        ids.push(r);
                        stale.insert(r);
                    }
                }
                _ => {}
            }
        }
        ids.sort();
        ids.dedup();
        rebuild.sort();
        rebuild.dedup();
        let mut states = self.states(defs, &ids, &stale, now).await?;
        let mut out = Effects {
            rr_last: self.round_robin_last().await?,
            ..Default::default()
        };
        let rebuilding: HashSet<Uuid> = rebuild.iter().copied().collect();
        for e in &events {
            if !relevant(e, &mut reads) || rebuilding.contains(&e.contact_id) {
                continue;
            }
            if let Some(cs) = states.get_mut(&e.contact_id) {
                pipeline::apply_event(defs, cs, e, &mut out);
            }
        }
        for c in rebuild {
            if let Some(cs) = states.get_mut(&c) {
                let log = store.contact_log(c, Some(&next)).await?;
                let cause = Cause {
                    key: format!("r{last}"),
                    at: now,
                    kind: "rebuild",
                };
                pipeline::rebuild(defs, cs, &log, &cause, &mut out);
            }
        }
        let states = self.commit(defs, states, out, Some(next), now).await?;
        self.keep(defs, states);
        Ok(events.len())
    }

    async fn process_timers(
        &self,
        defs: &Arc<Definitions>,
        now: i64,
    ) -> Result<usize, EngineError> {
        let store = &self.inner.store;
        let due = store.due_timers(now, self.inner.config.timer_batch).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = due.iter().map(|d| d.0).collect();
        let mut states = self.states(defs, &ids, &HashSet::new(), now).await?;
        let mut out = Effects {
            rr_last: self.round_robin_last().await?,
            ..Default::default()
        };
        for cs in states.values_mut() {
            if let Some(d) = cs.timer_loaded.filter(|d| *d <= now) {
                pipeline::tick(defs, cs, d, &mut out);
            }
        }
        let states = self.commit(defs, states, out, None, now).await?;
        self.keep(defs, states);
        Ok(due.len())
    }

    async fn round_robin_last(&self) -> Result<Option<Uuid>, EngineError> {
        Ok(self
            .inner
            .store
            .setting(ROUND_ROBIN_SETTING)
            .await?
            .and_then(|s| s.parse().ok()))
    }

    /// Writes a batch: state, effects not yet applied, and (when `to` is given) the checkpoint —
    /// all in one transaction. Gives the states back once written.
    pub(crate) async fn commit(
        &self,
        defs: &Arc<Definitions>,
        states: HashMap<Uuid, ContactState>,
        out: Effects,
        to: Option<LogCursor>,
        now: i64,
    ) -> Result<HashMap<Uuid, ContactState>, EngineError> {
        let r = self.write(defs, &states, out, to, now).await;
        if r.is_err() {
            self.forget_cache();
        }
        r.map(|()| states)
    }

    async fn write(
        &self,
        defs: &Arc<Definitions>,
        states: &HashMap<Uuid, ContactState>,
        mut out: Effects,
        to: Option<LogCursor>,
        now: i64,
    ) -> Result<(), EngineError> {
        let n = self.inner.commits.fetch_add(1, Ordering::SeqCst) + 1;
        if self.inner.config.crash_before_commit == Some(n) {
            return Err(EngineError::InjectedCrash);
        }
        let store = &self.inner.store;
        let mut prepared = Vec::new();
        for d in std::mem::take(&mut out.handoffs) {
            if let Some(cs) = states.get(&d.contact_id) {
                prepared.push(sales::prepare(store, defs, cs, d, to.as_ref(), now).await?);
            }
        }
        let mut keys: Vec<String> = out.events.iter().map(|(k, _)| k.clone()).collect();
        keys.extend(prepared.iter().map(|p| p.key.clone()));
        keys.extend(out.stages.iter().map(|s| s.0.clone()));
        let done = if keys.is_empty() {
            HashSet::new()
        } else {
            store.effects_done(&keys).await?
        };
        let mut tx = store.db().begin().await?;
        let mut dropped: HashSet<String> = HashSet::new();
        for (key, c, from, to_stage) in &out.stages {
            if done.contains(key) {
                continue;
            }
            if !es::set_stage_if(&mut tx, *c, *from, *to_stage, now).await? {
                dropped.insert(key.clone());
            }
        }
        let mut feature_rows = Vec::new();
        let mut feature_gone = Vec::new();
        let mut score_rows = Vec::new();
        let mut timers = Vec::new();
        for cs in states.values() {
            let (rows, gone) = cs.feature_rows();
            feature_rows.extend(rows);
            feature_gone.extend(gone);
            for m in &cs.dirty_scores {
                let (Some(model), Some(st)) = (defs.model(*m), cs.scores.get(m)) else {
                    continue;
                };
                let r = model.reading(st, now);
                score_rows.push(ScoreRow {
                    contact_id: cs.contact.id,
                    model_id: *m,
                    score: r.value(kizuna_core::scoring::ScorePart::Total),
                    behaviour: r.behaviour,
                    fit: r.fit,
                    grade: r.grade.to_string(),
                    as_of: now,
                    state: serde_json::to_string(st).unwrap_or_default(),
                });
            }
            if cs.timer != cs.timer_loaded {
                timers.push((cs.contact.id, cs.timer));
            }
        }
        es::upsert_features(&mut tx, &feature_rows).await?;
        es::delete_contact_features(&mut tx, &feature_gone).await?;
        es::upsert_scores(&mut tx, &score_rows).await?;
        es::set_timers(&mut tx, &timers).await?;
        es::insert_members(&mut tx, &out.members_in).await?;
        es::delete_members(&mut tx, &out.members_out).await?;
        for (c, t) in &out.temperatures {
            es::set_temperature(&mut tx, *c, *t, now).await?;
        }
        for (c, o) in &out.owners {
            es::set_owner_if_none(&mut tx, *c, *o, now).await?;
        }
        for c in &out.close_handoffs {
            kizuna_store::sales::close_handoffs(&mut tx, *c, now).await?;
        }
        let mut applied: Vec<(String, Uuid)> = Vec::new();
        let mut events = Vec::new();
        let mut queued = false;
        for p in prepared {
            if done.contains(&p.key)
                || p.requires_stage
                    .as_ref()
                    .is_some_and(|k| dropped.contains(k))
            {
                continue;
            }
            sales::write_prepared(&mut tx, &p).await?;
            queued |= !p.notifications.is_empty();
            applied.push((p.key.clone(), p.handoff.contact_id));
            events.push(p.event);
        }
        for (key, e) in out.events {
            if done.contains(&key) || dropped.contains(&key) {
                continue;
            }
            applied.push((key, e.contact_id));
            events.push(e);
        }
        kizuna_store::events::append(&mut tx, events, kizuna_core::time::from_micros(now)).await?;
        es::record_effects(&mut tx, &applied, now).await?;
        if out.rr_moved
            && let Some(l) = out.rr_last
        {
            es::set_setting(&mut tx, ROUND_ROBIN_SETTING, &l.to_string(), now).await?;
        }
        let target = match to {
            Some(t) => t,
            None => self.position().await?,
        };
        if !advance_checkpoint(
            &mut tx,
            &self.inner.config.checkpoint,
            &self.inner.config.node_id,
            &target,
            now,
        )
        .await?
        {
            *self.inner.lease_until.lock().await = 0;
            return Err(EngineError::LeaseLost);
        }
        tx.commit().await?;
        *self.inner.position.lock().await = Some(target);
        if queued {
            self.inner.outbox.notify_one();
        }
        Ok(())
    }
}

/// Whether a pinned future is already complete (without waiting).
async fn futures_ready<F: Future<Output = ()>>(f: &mut std::pin::Pin<&mut F>) -> bool {
    tokio::select! {
        biased;
        _ = f.as_mut() => true,
        _ = std::future::ready(()) => false,
    }
}
