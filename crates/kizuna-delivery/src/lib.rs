//! Kizuna's email channel at run time: [`kizuna_mail`] (templates, links, MIME, DKIM, SMTP,
//! feedback parsing) on top of [`kizuna_store`] (the outbox, consents, broadcasts, events).
//!
//! - [`service`]: [`EmailService`], shared by the web server and the worker: template checks
//!   and previews as any contact, enqueueing (idempotent), double opt-in, and what recipients
//!   do — opens and clicks (machine ones flagged), one-click unsubscribe, the preference center,
//!   bounce and complaint intake.
//! - [`worker`]: [`Worker`], the delivery loop started by `kizuna serve`: advances broadcasts,
//!   claims due messages with a lease, checks suppressions and consent, renders and signs in
//!   parallel, hands groups to SMTP only after recording that it does, records each outcome,
//!   retries 4xx with backoff, and reports (never repeats) sends whose result is unknown.
//!
//! All failures are one [`DeliveryError`].
#![deny(missing_docs)]

pub mod service;
pub mod worker;

pub use service::{EmailService, EmailSettings};
pub use worker::{TickReport, Worker, WorkerConfig};

/// Everything that can go wrong here.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] kizuna_store::StoreError),
    /// A template, address, token or configuration problem from the mail library.
    #[error(transparent)]
    Mail(#[from] kizuna_mail::MailError),
    /// Input that names something missing or wrong.
    #[error("{message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// A human sentence.
        message: String,
    },
}

impl DeliveryError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}
