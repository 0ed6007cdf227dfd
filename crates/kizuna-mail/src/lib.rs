//! Kizuna's mail library: everything needed to turn a template and a contact into signed bytes
//! on an SMTP server, and to read back what the world says about them. No database, no web
//! server: the durable outbox, broadcasts and the tracking endpoints are built on this API.
//!
//! The data flow, one module per step:
//! - [`template`]: stored templates (subject, MJML or HTML, optional text) compiled once with
//!   every error found at save/preview time, then personalized per contact (minijinja, sandboxed,
//!   `default` falls back on missing *and* empty values).
//! - [`links`]: HMAC-signed, compact tokens for the open pixel, click redirects (the target URL
//!   is inside the signed token: no open redirect), unsubscribe, preference center, view in
//!   browser and double opt-in; click rewriting of the HTML.
//! - [`compose`]: the legally required footer (特定電子メール法 / CAN-SPAM) on marketing mail and
//!   the RFC 5322 message: From (a named sender or the contact's owner), RFC 2047 subjects,
//!   `List-Unsubscribe` + `List-Unsubscribe-Post` (RFC 8058), multipart/alternative.
//! - [`dkim`]: relaxed/relaxed DKIM signatures, `rsa-sha256` and `ed25519-sha256`, on `ring`.
//! - [`smtp`]: a pooled async SMTP sender with a typed outcome (sent, temporary, permanent,
//!   ambiguous), and [`ratelimit`]: Clock-driven token buckets, global and per domain.
//! - [`engagement`]: flags machine opens and scanner clicks (nothing is dropped).
//! - [`feedback`]: bounces and complaints from DSN, ARF, Amazon SES and SendGrid.
//! - [`bench`]: the per-message cost of rendering and signing, for `kizuna bench send`.
//!
//! All failures are one [`MailError`].
#![deny(missing_docs)]

pub mod bench;
pub mod compose;
pub mod dkim;
pub mod engagement;
mod error;
pub mod feedback;
pub mod links;
pub mod ratelimit;
pub mod smtp;
pub mod template;

pub use error::MailError;
