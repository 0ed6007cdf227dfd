//! Per-contact state as the engine holds it while it works on a batch: the contact and its
//! company, behaviour features, consent, the sales-cycle flag, scores per model, segment and
//! list memberships and the timer — loaded for a batch of contacts in a few queries, changed in
//! memory, written back in one transaction.

use crate::EngineError;
use crate::definitions::Definitions;
use kizuna_core::company::Company;
use kizuna_core::contact::Contact;
use kizuna_core::filter::Facts;
use kizuna_core::filter::event::FeatureState;
use kizuna_core::scoring::{ScoreReading, ScoreState};
use kizuna_store::Store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use uuid::Uuid;

/// Feature key of the sales-cycle flag.
pub const SALES_KEY: &str = "s";
/// Prefix of consent feature keys (`c:email`, `c:email:newsletter`).
pub const CONSENT_PREFIX: &str = "c:";

/// A feature row to write: (contact, key, state JSON).
pub type FeatureRow = (Uuid, String, String);

/// Stored form of a flag (consent, sales cycle).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Flag {
    /// Value.
    #[serde(rename = "v")]
    pub value: bool,
    /// When it was set (µs).
    #[serde(rename = "t")]
    pub at: i64,
}

/// One contact's state.
#[derive(Debug, Clone)]
pub struct ContactState {
    /// The contact.
    pub contact: Contact,
    /// Its company.
    pub company: Option<Company>,
    /// Behaviour features by key.
    pub features: HashMap<String, FeatureState>,
    /// Consent by key (`email`, `email:newsletter`).
    pub consent: HashMap<String, Flag>,
    /// Active sales cycle.
    pub sales: Option<Flag>,
    /// Feature keys (behaviour, `c:…`, `s`) changed in memory.
    pub dirty_features: BTreeSet<String>,
    /// Score state per model.
    pub scores: HashMap<Uuid, ScoreState>,
    /// Models whose state changed in memory.
    pub dirty_scores: BTreeSet<Uuid>,
    /// Segment memberships.
    pub members: HashSet<Uuid>,
    /// Static lists.
    pub lists: HashSet<Uuid>,
    /// Timer as loaded.
    pub timer_loaded: Option<i64>,
    /// Timer now.
    pub timer: Option<i64>,
    /// The instant being evaluated (µs).
    pub now: i64,
    pub(crate) defs: Option<std::sync::Arc<Definitions>>,
}

impl ContactState {
    /// A fresh state for a contact (nothing recorded yet).
    pub fn new(
        contact: Contact,
        company: Option<Company>,
        defs: &std::sync::Arc<Definitions>,
        now: i64,
    ) -> Self {
        ContactState {
            contact,
            company,
            features: HashMap::new(),
            consent: HashMap::new(),
            sales: None,
            dirty_features: BTreeSet::new(),
            scores: HashMap::new(),
            dirty_scores: BTreeSet::new(),
            members: HashSet::new(),
            lists: HashSet::new(),
            timer_loaded: None,
            timer: None,
            now,
            defs: Some(defs.clone()),
        }
    }

    /// Whether the contact is in an active sales cycle.
    pub fn in_sales(&self) -> bool {
        self.sales.is_some_and(|f| f.value)
    }

    /// Sets the sales-cycle flag.
    pub fn set_sales(&mut self, value: bool, at: i64) {
        self.sales = Some(Flag { value, at });
        self.dirty_features.insert(SALES_KEY.into());
    }

    /// Sets a consent flag.
    pub fn set_consent(&mut self, key: &str, value: bool, at: i64) {
        self.consent.insert(key.to_string(), Flag { value, at });
        self.dirty_features.insert(format!("{CONSENT_PREFIX}{key}"));
    }

    /// A model's state (created empty).
    pub fn score_mut(&mut self, model: Uuid) -> &mut ScoreState {
        self.scores.entry(model).or_default()
    }

    /// Lowers the timer to `t` if earlier (instants not after `now` are ignored).
    pub fn consider_timer(&mut self, t: Option<i64>) {
        if let Some(t) = t.filter(|t| *t > self.now) {
            self.timer = Some(self.timer.map_or(t, |x| x.min(t)));
        }
    }

    /// The rows to write for changed features: (contact, key, state JSON), and the keys whose
    /// rows go (state forgotten by a rebuild).
    pub fn feature_rows(&self) -> (Vec<FeatureRow>, Vec<(Uuid, String)>) {
        let id = self.contact.id;
        let mut gone = Vec::new();
        let rows = self
            .dirty_features
            .iter()
            .filter_map(|k| {
                let present = if k == SALES_KEY {
                    self.sales.is_some()
                } else if let Some(c) = k.strip_prefix(CONSENT_PREFIX) {
                    self.consent.contains_key(c)
                } else {
                    self.features.contains_key(k)
                };
                if !present {
                    gone.push((id, k.clone()));
                    return None;
                }
                let json = if k == SALES_KEY {
                    serde_json::to_string(&self.sales?).ok()?
                } else if let Some(c) = k.strip_prefix(CONSENT_PREFIX) {
                    serde_json::to_string(self.consent.get(c)?).ok()?
                } else {
                    serde_json::to_string(self.features.get(k)?).ok()?
                };
                Some((id, k.clone(), json))
            })
            .collect();
        (rows, gone)
    }
}

impl Facts for ContactState {
    fn contact(&self) -> &Contact {
        &self.contact
    }
    fn company(&self) -> Option<&Company> {
        self.company.as_ref()
    }
    fn feature(&self, key: &str) -> Option<&FeatureState> {
        self.features.get(key)
    }
    fn score(&self, model: Uuid) -> Option<ScoreReading> {
        let defs = self.defs.as_ref()?;
        let m = defs.model(model)?;
        let st = self.scores.get(&model)?;
        Some(m.reading(st, self.now))
    }
    fn in_list(&self, list: Uuid) -> bool {
        self.lists.contains(&list)
    }
    fn in_segment(&self, segment: Uuid) -> bool {
        self.members.contains(&segment)
    }
    fn consent(&self, key: &str) -> Option<bool> {
        self.consent.get(key).map(|f| f.value)
    }
    fn in_sales_cycle(&self) -> bool {
        self.in_sales()
    }
}

impl ContactState {
    /// Marks everything written: what is in memory is what is stored.
    pub fn settled(&mut self) {
        self.dirty_features.clear();
        self.dirty_scores.clear();
        self.timer_loaded = self.timer;
    }
}

/// Re-reads contacts' profiles (contact row, company, lists) into their state.
pub async fn refresh_profiles(
    store: &Store,
    states: &mut HashMap<Uuid, ContactState>,
    ids: &[Uuid],
    lists: bool,
) -> Result<(), EngineError> {
    if ids.is_empty() {
        return Ok(());
    }
    let contacts = store.contacts_by_ids(ids).await?;
    let mut co_ids: Vec<Uuid> = contacts.iter().filter_map(|c| c.company_id).collect();
    co_ids.sort();
    co_ids.dedup();
    let companies: HashMap<Uuid, Company> = store
        .companies_by_ids(&co_ids)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let found: HashSet<Uuid> = contacts.iter().map(|c| c.id).collect();
    for c in contacts {
        if let Some(cs) = states.get_mut(&c.id) {
            cs.company = c.company_id.and_then(|id| companies.get(&id).cloned());
            cs.contact = c;
            if lists {
                cs.lists.clear();
            }
        }
    }
    // Erased meanwhile: drop.
    for id in ids {
        if !found.contains(id) {
            states.remove(id);
        }
    }
    if lists {
        for (c, l) in store.list_memberships_of(ids).await? {
            if let Some(cs) = states.get_mut(&c) {
                cs.lists.insert(l);
            }
        }
    }
    Ok(())
}

/// What to load besides contacts.
#[derive(Debug, Clone, Copy)]
pub struct Load<'a> {
    /// Segment memberships.
    pub members: bool,
    /// Static lists.
    pub lists: bool,
    /// Timers.
    pub timers: bool,
    /// Feature rows (behaviour, consent `c:…`, sales cycle `s`): only these keys, or all of
    /// them when `None`. A bulk build reads what its filters read, not a contact's whole state.
    pub features: Option<&'a [String]>,
    /// Score states.
    pub scores: bool,
}

impl Load<'_> {
    /// Everything a contact's state holds (the engine's own batches).
    pub fn all(lists: bool) -> Load<'static> {
        Load {
            members: true,
            lists,
            timers: true,
            features: None,
            scores: true,
        }
    }
}

/// Loads the state of contacts (missing contacts are left out).
pub async fn load_states(
    store: &Store,
    defs: &std::sync::Arc<Definitions>,
    ids: &[Uuid],
    now: i64,
    what: Load<'_>,
) -> Result<HashMap<Uuid, ContactState>, EngineError> {
    let contacts = store.contacts_by_ids(ids).await?;
    let company_ids: Vec<Uuid> = {
        let mut v: Vec<Uuid> = contacts.iter().filter_map(|c| c.company_id).collect();
        v.sort();
        v.dedup();
        v
    };
    let companies: HashMap<Uuid, Company> = store
        .companies_by_ids(&company_ids)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let mut out: HashMap<Uuid, ContactState> = contacts
        .into_iter()
        .map(|c| {
            let co = c.company_id.and_then(|id| companies.get(&id).cloned());
            (c.id, ContactState::new(c, co, defs, now))
        })
        .collect();
    let ids: Vec<Uuid> = out.keys().copied().collect();
    if ids.is_empty() {
        return Ok(out);
    }
    let rows = match what.features {
        None => store.features_of(&ids).await?,
        Some(keys) => store.features_of_keys(&ids, keys).await?,
    };
    for (c, key, state) in rows {
        let Some(cs) = out.get_mut(&c) else { continue };
        if key == SALES_KEY {
            cs.sales = serde_json::from_str(&state).ok();
        } else if let Some(k) = key.strip_prefix(CONSENT_PREFIX) {
            if let Ok(f) = serde_json::from_str(&state) {
                cs.consent.insert(k.to_string(), f);
            }
        } else if let Ok(f) = serde_json::from_str(&state) {
            cs.features.insert(key, f);
        }
    }
    if what.scores {
        for r in store.scores_of(&ids).await? {
            if let Some(cs) = out.get_mut(&r.contact_id)
                && let Ok(st) = serde_json::from_str(&r.state)
            {
                cs.scores.insert(r.model_id, st);
            }
        }
    }
    if what.members {
        for (c, s) in store.memberships_of(&ids).await? {
            if let Some(cs) = out.get_mut(&c) {
                cs.members.insert(s);
            }
        }
    }
    if what.lists {
        for (c, l) in store.list_memberships_of(&ids).await? {
            if let Some(cs) = out.get_mut(&c) {
                cs.lists.insert(l);
            }
        }
    }
    if what.timers {
        for (c, t) in store.timers_of(&ids).await? {
            if let Some(cs) = out.get_mut(&c) {
                cs.timer_loaded = Some(t);
                cs.timer = Some(t);
            }
        }
    }
    Ok(out)
}
