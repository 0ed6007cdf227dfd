//! Addresses that must never be mailed, kept only as fingerprints (see
//! [`kizuna_core::email_address::email_fingerprint`]).

use crate::db::Tx;
use crate::{Store, StoreError, args};
use chrono::{DateTime, Utc};
use kizuna_core::email_address::email_fingerprint;

/// Records that a normalized address must not be mailed (idempotent).
pub async fn add(
    tx: &mut Tx,
    normalized_email: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO suppressions (email_fingerprint, reason, created_at) VALUES ($1, $2, $3) ON CONFLICT (email_fingerprint) DO NOTHING",
        args![email_fingerprint(normalized_email), reason, at],
    )
    .await?;
    Ok(())
}

impl Store {
    /// Why an address is suppressed, if it is.
    pub async fn suppression_reason(
        &self,
        normalized_email: &str,
    ) -> Result<Option<String>, StoreError> {
        let r: Option<crate::db::One<String>> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT reason FROM suppressions WHERE email_fingerprint = $1",
                args![email_fingerprint(normalized_email)],
            )
            .await?;
        Ok(r.map(|r| r.0))
    }

    /// Suppresses an address in its own transaction.
    pub async fn suppress(
        &self,
        normalized_email: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        add(&mut tx, normalized_email, reason, at).await?;
        tx.commit().await
    }
}
