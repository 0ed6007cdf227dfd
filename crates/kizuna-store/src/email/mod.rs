//! Email: what the mail channel keeps. Templates and senders ([`templates`], [`senders`]), the
//! consent ledger and subscription types ([`consents`]), the durable outbox ([`outbox`]),
//! opens, clicks, unsubscribes and bounces ([`engagement`]), newsletters ([`broadcasts`]),
//! per-template/broadcast/message figures ([`metrics`]) and installation settings
//! ([`settings`]). Rendering, signing and SMTP live in `kizuna-mail`; this module only stores.
//!
//! Every email fact that the engine should see is appended to the `events` table in the same
//! transaction as the row it describes: `email.sent`, `email.delivered`, `email.opened`,
//! `email.clicked`, `email.bounced`, `email.unsubscribed`, `email.complained`, plus
//! `consent.granted` / `consent.withdrawn`.

pub mod broadcasts;
pub mod consents;
pub mod engagement;
pub mod metrics;
pub mod outbox;
pub mod senders;
pub mod settings;
pub mod templates;

use crate::db::{Tx, Val};
use crate::{StoreError, args};
use uuid::Uuid;

/// `$first, $first+1, …` for `n` values: the inside of an `IN (…)`.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Ids as bound values.
pub(crate) fn id_vals(ids: &[Uuid]) -> Vec<Val> {
    ids.iter().map(|i| Val::from(*i)).collect()
}

/// Deletes a contact's email records (right to erasure). The suppression fingerprint written by
/// the erasure itself is what keeps the address from being mailed again.
pub(crate) async fn erase_contact(tx: &mut Tx, contact_id: Uuid) -> Result<(), StoreError> {
    for table in [
        "consents",
        "consent_state",
        "consent_requests",
        "email_engagements",
        "email_messages",
    ] {
        tx.execute(
            sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE contact_id = $1")),
            args![contact_id],
        )
        .await?;
    }
    Ok(())
}
