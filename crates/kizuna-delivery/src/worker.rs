//! The delivery worker: broadcasts into the outbox, the outbox onto SMTP.
//!
//! One [`Worker::tick`] (what the run loop repeats, and what tests call with a manual clock):
//! 1. **broadcasts**: each due or sending broadcast advances — start, next batch of recipients,
//!    A/B winner, finished — through [`kizuna_store::Store::advance_broadcast`];
//! 2. **outbox**: due messages are claimed with a lease in batches; for each batch the
//!    contacts, companies, owners, suppressions and consents are loaded in a few queries;
//!    suppressed, unconsented or address-less recipients are skipped with their reason; the rest
//!    are rendered and DKIM-signed on all cores; then, group by group, the messages are marked
//!    *handed* (committed), sent concurrently over the SMTP pool, and their outcomes recorded
//!    in one transaction (sent, deferred with backoff, failed/hard-bounced, ambiguous). The
//!    next batch is claimed and rendered while the current one is on the wire.
//!
//! Time comes from the [`kizuna_core::clock::Clock`]: due times, retries, schedules and A/B
//! decisions all read it; the run loop only sleeps between polls (or until woken by an enqueue).

use crate::DeliveryError;
use crate::service::{EmailService, identity_of, parse_author};
use chrono::{DateTime, Duration, Utc};
use futures_util::future::join_all;
use kizuna_mail::compose::{BuiltMessage, MessageSpec, Owner, SenderIdentity};
use kizuna_mail::links::TrackingOptions;
use kizuna_mail::ratelimit::RateLimiter;
use kizuna_mail::smtp::{SendOutcome, SmtpSender};
use kizuna_mail::template::CompiledTemplate;
use kizuna_store::email::consents::ConsentStatus;
use kizuna_store::email::outbox::{ClaimedMessage, Outcome, SendResult, retry_delay};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This node's name in leases. Stable across restarts of the same node, so that a restart
    /// recovers its own leases at once.
    pub node_id: String,
    /// Messages claimed at once.
    pub batch: u32,
    /// Messages handed to SMTP per group (the most that can become ambiguous in a crash is
    /// about two groups).
    pub group: usize,
    /// Lease length.
    pub lease: Duration,
    /// Poll interval when idle.
    pub poll: std::time::Duration,
    /// Contacts enqueued per broadcast batch.
    pub broadcast_batch: usize,
    /// Attempts before a temporarily failing message fails.
    pub max_attempts: i64,
    /// Age after which a temporarily failing message fails.
    pub max_age: Duration,
    /// Threads rendering and signing.
    pub render_threads: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            node_id: "node".into(),
            batch: 512,
            group: 64,
            lease: Duration::seconds(120),
            poll: std::time::Duration::from_secs(1),
            broadcast_batch: 1000,
            max_attempts: 10,
            max_age: Duration::days(3),
            render_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Messages enqueued by broadcasts.
    pub enqueued: u64,
    /// Accepted by SMTP.
    pub sent: u64,
    /// Deferred (4xx).
    pub deferred: u64,
    /// Failed (5xx or retries exhausted).
    pub failed: u64,
    /// Result unknown.
    pub ambiguous: u64,
    /// Skipped (suppression, consent, no address).
    pub skipped: u64,
    /// Put back for rate limits.
    pub requeued: u64,
}

impl TickReport {
    fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Sent { .. } => self.sent += 1,
            Outcome::Deferred { .. } => self.deferred += 1,
            Outcome::Failed { .. } => self.failed += 1,
            Outcome::Ambiguous { .. } => self.ambiguous += 1,
            Outcome::Skipped { .. } => self.skipped += 1,
            Outcome::Requeue { .. } => self.requeued += 1,
        }
    }
    /// Messages handled.
    pub fn handled(&self) -> u64 {
        self.sent + self.deferred + self.failed + self.ambiguous + self.skipped + self.requeued
    }
}

/// A built message waiting for SMTP.
struct Ready {
    message: ClaimedMessage,
    built: BuiltMessage,
}

/// The delivery worker.
pub struct Worker {
    svc: Arc<EmailService>,
    smtp: SmtpSender,
    limiter: Option<Arc<RateLimiter>>,
    cfg: WorkerConfig,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("node", &self.cfg.node_id)
            .finish()
    }
}

impl Worker {
    /// A worker sending through `smtp`, optionally rate limited.
    pub fn new(
        svc: Arc<EmailService>,
        smtp: SmtpSender,
        limiter: Option<RateLimiter>,
        cfg: WorkerConfig,
    ) -> Self {
        Self {
            svc,
            smtp,
            limiter: limiter.map(Arc::new),
            cfg,
        }
    }

    /// The service.
    pub fn service(&self) -> &Arc<EmailService> {
        &self.svc
    }

    /// Recovers leases of this node's previous run and expired leases of any node. Returns
    /// (requeued, ambiguous).
    pub async fn recover(&self) -> Result<(u64, u64), DeliveryError> {
        let (q, a) = self
            .svc
            .store()
            .recover_email_leases(self.svc.now(), Some(&self.cfg.node_id))
            .await?;
        if a > 0 {
            tracing::warn!(
                ambiguous = a,
                "messages were handed to SMTP when a node stopped: their result is unknown; they are reported as ambiguous and not sent again (see GET /api/v1/emails?state=ambiguous)"
            );
        }
        if q > 0 {
            tracing::info!(
                requeued = q,
                "claimed but never sent messages are queued again"
            );
        }
        Ok((q, a))
    }

    /// Advances every due broadcast as far as it can go now. Returns messages enqueued.
    pub async fn advance_broadcasts(&self) -> Result<u64, DeliveryError> {
        let store = self.svc.store();
        let mut enqueued = 0;
        for b in store.active_broadcasts(self.svc.now()).await? {
            let kind = store.template(b.template_id).await?.kind;
            loop {
                let e = store
                    .advance_broadcast(b.id, &kind, self.cfg.broadcast_batch, self.svc.now())
                    .await?;
                enqueued += e.inserted;
                if !e.more {
                    break;
                }
            }
        }
        Ok(enqueued)
    }

    /// One round: recover expired leases, advance broadcasts, then send every due message.
    pub async fn tick(&self) -> Result<TickReport, DeliveryError> {
        self.svc
            .store()
            .recover_email_leases(self.svc.now(), None)
            .await?;
        let enqueued = self.advance_broadcasts().await?;
        let mut report = self.drain(u64::MAX).await?;
        report.enqueued = enqueued;
        Ok(report)
    }

    /// Runs until `shutdown` resolves: recovers, then ticks, sleeping `poll` (or until woken)
    /// when there is nothing to do. In-flight groups finish before it returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        if let Err(e) = self.recover().await {
            tracing::error!(error = %e, "recovering outbox leases failed");
        }
        tokio::pin!(shutdown);
        let wake = self.svc.wake().clone();
        loop {
            let idle = match self.tick_bounded().await {
                Ok(r) => {
                    if r.handled() > 0 || r.enqueued > 0 {
                        tracing::info!(
                            sent = r.sent,
                            deferred = r.deferred,
                            failed = r.failed,
                            ambiguous = r.ambiguous,
                            skipped = r.skipped,
                            enqueued = r.enqueued,
                            "delivery round"
                        );
                    }
                    r.handled() == 0 && r.enqueued == 0
                }
                Err(e) => {
                    tracing::error!(error = %e, "delivery round failed");
                    true
                }
            };
            if idle {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = wake.notified() => {},
                    _ = tokio::time::sleep(self.cfg.poll) => {},
                }
            } else {
                // Let a shutdown in between rounds.
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = tokio::task::yield_now() => {},
                }
            }
        }
        self.smtp.close().await;
        tracing::info!("delivery worker stopped");
    }

    /// A tick whose sending part stops after a few batches, so broadcasts keep advancing.
    async fn tick_bounded(&self) -> Result<TickReport, DeliveryError> {
        self.svc
            .store()
            .recover_email_leases(self.svc.now(), None)
            .await?;
        let enqueued = self.advance_broadcasts().await?;
        let mut r = self.drain(8).await?;
        r.enqueued = enqueued;
        Ok(r)
    }

    /// Claims, builds and sends due messages, batch after batch (at most `max_batches`), with
    /// the next batch built while the current one is sent.
    pub async fn drain(&self, max_batches: u64) -> Result<TickReport, DeliveryError> {
        let (tx, mut rx) = mpsc::channel::<Result<(Vec<Ready>, Vec<SendResult>), DeliveryError>>(1);
        let producer = async {
            let mut n = 0;
            while n < max_batches {
                n += 1;
                let now = self.svc.now();
                let claimed = match self
                    .svc
                    .store()
                    .claim_due_emails(&self.cfg.node_id, now, now + self.cfg.lease, self.cfg.batch)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                };
                if claimed.is_empty() {
                    break;
                }
                let prepared = self.prepare(claimed).await;
                let stop = prepared.is_err();
                if tx.send(prepared).await.is_err() || stop {
                    break;
                }
            }
            drop(tx);
        };
        let consumer = async {
            let mut report = TickReport::default();
            while let Some(batch) = rx.recv().await {
                let (ready, done) = batch?;
                for d in &done {
                    report.add(&d.outcome);
                }
                self.svc
                    .store()
                    .record_email_results(&self.cfg.node_id, &done, self.svc.now())
                    .await?;
                let mut ready = ready;
                while !ready.is_empty() {
                    let rest = ready.split_off(ready.len().min(self.cfg.group));
                    let group = std::mem::replace(&mut ready, rest);
                    let results = self.send_group(group).await?;
                    for r in &results {
                        report.add(&r.outcome);
                    }
                    self.svc
                        .store()
                        .record_email_results(&self.cfg.node_id, &results, self.svc.now())
                        .await?;
                }
            }
            Ok::<_, DeliveryError>(report)
        };
        let ((), report) = tokio::join!(producer, consumer);
        report
    }

    /// Checks and builds a claimed batch: (ready to send, settled without sending).
    async fn prepare(
        &self,
        claimed: Vec<ClaimedMessage>,
    ) -> Result<(Vec<Ready>, Vec<SendResult>), DeliveryError> {
        let store = self.svc.store();
        let mut contact_ids: Vec<Uuid> = claimed.iter().map(|m| m.contact_id).collect();
        contact_ids.sort();
        contact_ids.dedup();
        let ctx = store.email_send_context(&contact_ids).await?;
        let pairs: Vec<(Uuid, String)> = claimed
            .iter()
            .filter(|m| m.kind == "marketing")
            .map(|m| {
                (
                    m.contact_id,
                    m.subscription_type
                        .clone()
                        .unwrap_or_else(|| "marketing".into()),
                )
            })
            .collect();
        let consents = store.email_consents(&pairs).await?;
        let mut templates: HashMap<(Uuid, Option<String>), Arc<CompiledTemplate>> = HashMap::new();
        let mut senders: HashMap<Option<Uuid>, Arc<SenderIdentity>> = HashMap::new();
        let mut done = Vec::new();
        let mut jobs = Vec::new();
        for m in claimed {
            let skip = |reason: &str| SendResult {
                message: m.clone(),
                outcome: Outcome::Skipped {
                    reason: reason.into(),
                },
            };
            let Some(contact) = ctx.contacts.get(&m.contact_id) else {
                done.push(skip("contact_deleted"));
                continue;
            };
            let Some(email) = contact.email.as_deref() else {
                done.push(skip("no_email"));
                continue;
            };
            if let Some(reason) = ctx.suppressed.get(email) {
                done.push(skip(reason));
                continue;
            }
            if m.kind == "marketing" {
                let t = m
                    .subscription_type
                    .clone()
                    .unwrap_or_else(|| "marketing".into());
                match consents.get(&(m.contact_id, t)) {
                    Some(ConsentStatus::Granted) => {}
                    Some(ConsentStatus::Withdrawn) => {
                        done.push(skip("unsubscribed"));
                        continue;
                    }
                    _ => {
                        done.push(skip("no_consent"));
                        continue;
                    }
                }
            }
            let key = (m.template_id, m.subject_override.clone());
            let compiled = match templates.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = match store.template(m.template_id).await {
                        Ok(t) => self.svc.compiled(&t, m.subject_override.as_deref()).await,
                        Err(e) => Err(e.into()),
                    };
                    match c {
                        Ok(c) => {
                            templates.insert(key, c.clone());
                            c
                        }
                        Err(e) => {
                            done.push(SendResult {
                                message: m.clone(),
                                outcome: Outcome::Failed {
                                    error: format!("template: {e}"),
                                    code: None,
                                    hard_bounce: false,
                                    to_address: Some(email.to_string()),
                                },
                            });
                            continue;
                        }
                    }
                }
            };
            let sender = match senders.get(&m.sender_id) {
                Some(s) => s.clone(),
                None => match self.svc.sender_or_default(m.sender_id).await {
                    Ok(s) => {
                        let s = Arc::new(identity_of(&s));
                        senders.insert(m.sender_id, s.clone());
                        s
                    }
                    Err(e) => {
                        // Configuration on our side: retry later rather than lose the message.
                        let now = self.svc.now();
                        done.push(SendResult {
                            message: m.clone(),
                            outcome: Outcome::Deferred {
                                error: format!("sender: {e}"),
                                retry_at: now + retry_delay(m.attempts + 1),
                            },
                        });
                        continue;
                    }
                },
            };
            let company = contact
                .company_id
                .and_then(|c| ctx.companies.get(&c))
                .cloned();
            let owner = contact
                .owner_id
                .and_then(|o| ctx.owners.get(&o))
                .map(|(name, email)| Owner {
                    name: name.clone(),
                    email: email.clone(),
                    title: None,
                    phone: None,
                    signature: None,
                });
            jobs.push((m, contact.clone(), company, owner, sender, compiled));
        }
        // Render and sign on every core.
        let threads = self.cfg.render_threads.max(1);
        let per = jobs.len().div_ceil(threads).max(1);
        let date = self.svc.now();
        let mut handles = Vec::new();
        let mut jobs = jobs;
        while !jobs.is_empty() {
            let rest = jobs.split_off(jobs.len().min(per));
            let chunk = std::mem::replace(&mut jobs, rest);
            let composer = self.svc.composer().clone();
            let svc = self.svc.clone();
            handles.push(tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .map(|(m, contact, company, owner, sender, compiled)| {
                        let urls = svc.message_urls(m.id, &m.payload.0);
                        let built = composer.build_with_urls(
                            &compiled,
                            &MessageSpec {
                                message_id: m.id,
                                contact: &contact,
                                company: company.as_ref(),
                                owner: owner.as_ref(),
                                sender: &sender,
                                author: parse_author(&m.author),
                                date,
                                campaign: m.broadcast_id.map(|b| b.simple().to_string()).as_deref(),
                                tracking: TrackingOptions::default(),
                            },
                            &urls,
                        );
                        (m, contact.email.clone(), built)
                    })
                    .collect::<Vec<_>>()
            }));
        }
        let mut ready = Vec::new();
        for h in handles {
            let built = h.await.map_err(|e| {
                DeliveryError::invalid("render", format!("rendering task failed: {e}"))
            })?;
            for (m, email, b) in built {
                match b {
                    Ok(built) => ready.push(Ready { message: m, built }),
                    Err(e) => done.push(SendResult {
                        message: m,
                        outcome: Outcome::Failed {
                            error: e.to_string(),
                            code: None,
                            hard_bounce: false,
                            to_address: email,
                        },
                    }),
                }
            }
        }
        Ok((ready, done))
    }

    /// Rate limits, marks handed, sends concurrently, maps outcomes.
    async fn send_group(&self, group: Vec<Ready>) -> Result<Vec<SendResult>, DeliveryError> {
        let now = self.svc.now();
        let mut results = Vec::new();
        let mut go = Vec::with_capacity(group.len());
        for r in group {
            if let Some(l) = &self.limiter
                && let Err(wait) = l.try_acquire(&r.built.envelope.to[0])
            {
                results.push(SendResult {
                    message: r.message,
                    outcome: Outcome::Requeue { due_at: now + wait },
                });
                continue;
            }
            go.push(r);
        }
        let ids: Vec<Uuid> = go.iter().map(|r| r.message.id).collect();
        let handed = self
            .svc
            .store()
            .mark_emails_handed(&self.cfg.node_id, &ids, now, now + self.cfg.lease)
            .await?;
        go.retain(|r| handed.contains(&r.message.id));
        let outcomes = join_all(
            go.iter()
                .map(|r| self.smtp.send(&r.built.envelope, &r.built.bytes)),
        )
        .await;
        let now = self.svc.now();
        for (r, o) in go.into_iter().zip(outcomes) {
            let attempts = r.message.attempts + 1;
            let created =
                DateTime::<Utc>::from_timestamp_micros(r.message.created_at).unwrap_or(now);
            let to = r.built.envelope.to[0].clone();
            let outcome = match o {
                SendOutcome::Sent { smtp_reply } => Outcome::Sent {
                    smtp_reply,
                    to_address: to,
                    subject: r.built.subject.clone(),
                    link_count: r.built.links.len() as i64,
                },
                SendOutcome::TemporaryFailure { code, text } => {
                    let text = match code {
                        Some(c) => format!("{c} {text}"),
                        None => text,
                    };
                    if attempts >= self.cfg.max_attempts || now - created > self.cfg.max_age {
                        Outcome::Failed {
                            error: format!("gave up after {attempts} attempts: {text}"),
                            code,
                            hard_bounce: false,
                            to_address: Some(to),
                        }
                    } else {
                        Outcome::Deferred {
                            error: text,
                            retry_at: now + retry_delay(attempts),
                        }
                    }
                }
                SendOutcome::PermanentFailure { code, text } => Outcome::Failed {
                    error: text,
                    code: Some(code),
                    hard_bounce: true,
                    to_address: Some(to),
                },
                SendOutcome::Ambiguous { detail } => {
                    tracing::warn!(message = %r.message.id, %detail, "SMTP result unknown: marked ambiguous, not resent");
                    Outcome::Ambiguous { detail }
                }
            };
            results.push(SendResult {
                message: r.message,
                outcome,
            });
        }
        Ok(results)
    }
}
