//! Group commit for tracking ingestion: many concurrent requests, one transaction.
//!
//! Each request hands its checked messages to [`Ingestor::submit`] and waits. One writer task
//! takes the first waiting submission plus every other one already queued (up to
//! [`IngestorConfig::max_group_messages`]), writes them all with [`Store::ingest`] in one
//! transaction, and answers every waiter only after the commit: an acknowledged event is
//! durable, and one commit (one fsync on SQLite) is shared by every request of the group. Under
//! light load a group is one request; under heavy load groups grow, which is what keeps the
//! throughput up.
//!
//! Back-pressure: at most [`IngestorConfig::max_pending_messages`] messages wait at once; past
//! that [`Ingestor::submit`] fails at once with [`IngestError::Overloaded`] (the HTTP layer
//! answers 429 with Retry-After) instead of letting latency and memory grow without bound.
//!
//! After each commit the [`CommitHook`], if any, is told which contacts got which events: the
//! one place where the real-time engine hears about new tracked events.

use crate::ingest::{IngestCache, Ingested, Submission};
use crate::{Store, StoreError};
use kizuna_core::clock::SharedClock;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Told after every commit of tracked or imported events. Called on the writer task: keep it
/// quick (hand the ids to a channel, wake a worker).
pub trait CommitHook: Send + Sync {
    /// New events were committed for these contacts (`committed.contact_ids`,
    /// `committed.event_ids`).
    fn committed(&self, committed: &Ingested);
}

/// Sizes of the group commit.
#[derive(Debug, Clone)]
pub struct IngestorConfig {
    /// Most messages written in one transaction.
    pub max_group_messages: usize,
    /// Most messages waiting (queued or being written) before new requests are refused.
    pub max_pending_messages: usize,
}

impl Default for IngestorConfig {
    fn default() -> Self {
        IngestorConfig {
            max_group_messages: 10_000,
            max_pending_messages: 50_000,
        }
    }
}

/// Why a submission was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// Too much is waiting already; try again shortly.
    #[error("ingestion is overloaded; retry shortly")]
    Overloaded,
    /// The store failed (logged with details); nothing of the submission was stored.
    #[error("the events could not be stored: {0}")]
    Failed(String),
    /// The writer has stopped (the server is shutting down).
    #[error("ingestion has stopped")]
    Stopped,
}

struct Job {
    submission: Submission,
    reply: oneshot::Sender<Result<(), IngestError>>,
    _permit: OwnedSemaphorePermit,
}

/// The handle requests submit to: cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    queue: mpsc::UnboundedSender<Job>,
    permits: Arc<Semaphore>,
    max_pending: usize,
    hook: Option<Arc<dyn CommitHook>>,
}

impl std::fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingestor")
            .field("max_pending", &self.max_pending)
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl Ingestor {
    /// Starts the writer task (on the current Tokio runtime). It stops when every handle is
    /// dropped, after writing what was submitted.
    pub fn start(
        store: Store,
        clock: SharedClock,
        config: IngestorConfig,
        hook: Option<Arc<dyn CommitHook>>,
    ) -> Ingestor {
        let (queue, rx) = mpsc::unbounded_channel();
        let max_pending = config.max_pending_messages.max(1);
        tokio::spawn(run(store, clock, config, hook.clone(), rx));
        Ingestor {
            queue,
            permits: Arc::new(Semaphore::new(max_pending)),
            max_pending,
            hook,
        }
    }

    /// Stores a request's messages; returns once they are committed (or refused).
    pub async fn submit(&self, submission: Submission) -> Result<(), IngestError> {
        let n = submission.messages.len().clamp(1, self.max_pending) as u32;
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| IngestError::Overloaded)?;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job {
                submission,
                reply,
                _permit: permit,
            })
            .map_err(|_| IngestError::Stopped)?;
        answer.await.map_err(|_| IngestError::Stopped)?
    }

    /// Messages that may still be submitted before requests are refused.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Tells the hook about events committed elsewhere (offline imports through the API).
    pub fn notify(&self, committed: &Ingested) {
        if let Some(h) = &self.hook {
            h.committed(committed);
        }
    }
}

async fn run(
    store: Store,
    clock: SharedClock,
    config: IngestorConfig,
    hook: Option<Arc<dyn CommitHook>>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    let mut cache = IngestCache::default();
    while let Some(first) = rx.recv().await {
        let mut n = first.submission.messages.len();
        let mut jobs = vec![first];
        while n < config.max_group_messages {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.submission.messages.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let subs: Vec<Submission> = jobs
            .iter_mut()
            .map(|j| Submission {
                source_key: j.submission.source_key,
                messages: std::mem::take(&mut j.submission.messages),
            })
            .collect();
        match store.ingest(&subs, clock.now(), &mut cache).await {
            Ok(out) => {
                tracing::debug!(
                    requests = jobs.len(),
                    stored = out.stored,
                    duplicates = out.duplicates,
                    "ingest group committed"
                );
                if let Some(h) = &hook {
                    h.committed(&out);
                }
                for j in jobs {
                    let _ = j.reply.send(Ok(()));
                }
            }
            Err(e) if jobs.len() > 1 => {
                // One request must not sink the others: write each alone.
                tracing::warn!(error = %e, requests = jobs.len(), "ingest group failed; retrying its requests one by one");
                for (j, sub) in jobs.into_iter().zip(subs) {
                    let r = store
                        .ingest(std::slice::from_ref(&sub), clock.now(), &mut cache)
                        .await;
                    let _ = j.reply.send(match r {
                        Ok(out) => {
                            if let Some(h) = &hook {
                                h.committed(&out);
                            }
                            Ok(())
                        }
                        Err(e) => Err(failed(e)),
                    });
                }
            }
            Err(e) => {
                let e = failed(e);
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn failed(e: StoreError) -> IngestError {
    tracing::error!(error = %e, "ingest failed");
    IngestError::Failed(e.to_string())
}
