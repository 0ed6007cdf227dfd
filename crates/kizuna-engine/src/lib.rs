//! Kizuna's real-time engine.
//!
//! One engine consumes the event log in order and keeps every segment, score, grade,
//! temperature and lifecycle stage current within milliseconds of the event that changed it
//! (ARCHITECTURE.md, "incremental, not batch"):
//!
//! ```text
//!  events (store::log, in commit order, from a checkpoint)
//!    └─ per contact, per event (pipeline):
//!         record     behaviour features (counts, last-seen, recent times), consent, sales cycle
//!         score      behaviour rules with caps; decay brought forward lazily
//!         settle     fit → grade; thresholds both ways; temperature; MQL (fit first) → handoff
//!                    segments that read what changed → segment.entered / segment.exited
//!                    the contact's timer: the next instant time alone changes an answer
//!    └─ one transaction: state, effects (idempotency keys), checkpoint
//!  timers (durable, Clock-driven): windows sliding out, decay crossing thresholds
//!  builds: new or edited definitions, by a bulk path (build)
//! ```
//!
//! Modules: [`definitions`] (compiled segments, models, features, policy; checks for the API),
//! [`state`] (per-contact state and loading it), [`pipeline`] (the steps), [`runner`] (the loop:
//! lease, batches, timers, commit), [`build`] (bulk builds, preview), [`explain`] (score
//! explanations, what-if), [`sales`] (handoff completion, accept/reject), [`notify`] (signed
//! owner webhooks), [`apply`] (definitions from files).
//!
//! Time comes from a [`Clock`](kizuna_core::clock::Clock): tests drive a manual clock and call
//! [`Engine::run_until_idle`].
#![deny(missing_docs)]

pub mod apply;
pub mod build;
pub mod definitions;
pub mod explain;
pub mod notify;
pub mod pipeline;
pub mod program;
pub mod runner;
pub mod sales;
pub mod state;

use kizuna_core::ValidationErrors;
use kizuna_core::clock::SharedClock;
use kizuna_store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

pub use runner::Progress;

/// Errors of the engine boundary.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A definition or request is invalid; each problem names its path.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// Another node holds the lease on the log.
    #[error("another engine holds the lease on the event log")]
    LeaseLost,
    /// A conflict with the current state (e.g. no pending handoff to accept).
    #[error("{message}")]
    Conflict {
        /// The field concerned.
        field: String,
        /// A human sentence.
        message: String,
    },
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A crash injected by a test before a commit.
    #[error("injected crash before commit")]
    InjectedCrash,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Name of the checkpoint (one per log consumer).
    pub checkpoint: String,
    /// This node's id in leases (default: random).
    pub node_id: String,
    /// Events per batch.
    pub batch_size: u32,
    /// Timers per batch.
    pub timer_batch: u32,
    /// Sleep when idle.
    pub idle_poll: Duration,
    /// Lease length (renewed every turn).
    pub lease: chrono::Duration,
    /// Contacts whose state is kept in memory between batches (the engine is the only writer
    /// of its state while it holds the lease; profiles are re-read when an event says they
    /// changed).
    pub cache_contacts: usize,
    /// Test hook: fail with [`EngineError::InjectedCrash`] before committing the n-th batch.
    pub crash_before_commit: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            checkpoint: "main".into(),
            node_id: format!("node-{}", uuid::Uuid::now_v7().simple()),
            batch_size: 5000,
            timer_batch: 2000,
            idle_poll: Duration::from_millis(5),
            lease: chrono::Duration::seconds(30),
            cache_contacts: 200_000,
            crash_before_commit: None,
        }
    }
}

/// The engine. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<runner::Inner>,
}

impl Engine {
    /// An engine over a store, reading time from `clock`.
    pub fn new(store: Store, clock: SharedClock, config: EngineConfig) -> Engine {
        Engine {
            inner: Arc::new(runner::Inner::new(store, clock, config)),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }
}

/// The tracking writer wakes the engine after each group commit, so new events are scored and
/// segmented at once rather than at the next poll.
impl kizuna_store::ingestor::CommitHook for Engine {
    fn committed(&self, _committed: &kizuna_store::ingest::Ingested) {
        self.wake();
    }
}
