//! Sender identities: a named person or department, the address mail comes from, and the
//! legal footer's organization and postal address. "Send as the contact's owner" is chosen per
//! message or broadcast (`author`), with the identity as fallback and `Sender:` header.

use crate::db::from_micros;
use crate::{Store, StoreError, args};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A sender identity.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sender {
    /// Id.
    pub id: Uuid,
    /// Display name, e.g. `株式会社キズナ 代表取締役 山本`.
    pub name: String,
    /// From address.
    pub email: String,
    /// Organization for the footer.
    pub organization: String,
    /// Postal address for the footer.
    pub postal_address: String,
    /// Reply-To, if not the From address.
    pub reply_to: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Changed.
    pub updated_at: DateTime<Utc>,
}

/// What a sender is made of.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SenderInput {
    /// Display name.
    pub name: String,
    /// From address.
    pub email: String,
    /// Organization for the footer.
    pub organization: String,
    /// Postal address for the footer.
    pub postal_address: String,
    /// Reply-To.
    #[serde(default)]
    pub reply_to: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    email: String,
    organization: String,
    postal_address: String,
    reply_to: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl From<Row> for Sender {
    fn from(r: Row) -> Self {
        Sender {
            id: r.id,
            name: r.name,
            email: r.email,
            organization: r.organization,
            postal_address: r.postal_address,
            reply_to: r.reply_to,
            created_at: from_micros(r.created_at),
            updated_at: from_micros(r.updated_at),
        }
    }
}

const SELECT: &str = "SELECT id, name, email, organization, postal_address, reply_to, created_at, updated_at FROM senders";

fn check(i: &SenderInput) -> Result<(), StoreError> {
    for (field, v) in [
        ("name", &i.name),
        ("email", &i.email),
        ("organization", &i.organization),
        ("postal_address", &i.postal_address),
    ] {
        if v.trim().is_empty() {
            return Err(StoreError::invalid(
                field,
                "required",
                format!("{field} is required (the legal footer needs it)"),
            ));
        }
    }
    Ok(())
}

impl Store {
    /// Adds a sender.
    pub async fn create_sender(
        &self,
        i: SenderInput,
        now: DateTime<Utc>,
    ) -> Result<Sender, StoreError> {
        check(&i)?;
        let id = Uuid::now_v7();
        self.db()
            .reader()
            .execute(
                "INSERT INTO senders (id, name, email, organization, postal_address, reply_to, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$7)",
                args![id, i.name.trim(), i.email.trim(), i.organization.trim(), i.postal_address.trim(), i.reply_to, now],
            )
            .await?;
        self.sender(id).await
    }

    /// Replaces a sender.
    pub async fn update_sender(
        &self,
        id: Uuid,
        i: SenderInput,
        now: DateTime<Utc>,
    ) -> Result<Sender, StoreError> {
        check(&i)?;
        let n = self
            .db()
            .reader()
            .execute(
                "UPDATE senders SET name=$2, email=$3, organization=$4, postal_address=$5, reply_to=$6, updated_at=$7 WHERE id=$1",
                args![id, i.name.trim(), i.email.trim(), i.organization.trim(), i.postal_address.trim(), i.reply_to, now],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        self.sender(id).await
    }

    /// A sender by id.
    pub async fn sender(&self, id: Uuid) -> Result<Sender, StoreError> {
        let r: Row = self
            .db()
            .reader()
            .fetch_one(
                sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1")),
                args![id],
            )
            .await?;
        Ok(r.into())
    }

    /// Every sender.
    pub async fn senders(&self) -> Result<Vec<Sender>, StoreError> {
        let rows: Vec<Row> = self
            .db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY created_at, id")),
                vec![],
            )
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Deletes a sender no broadcast uses.
    pub async fn delete_sender(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        let used: Option<crate::db::One<i64>> = tx
            .fetch_optional(
                "SELECT 1 FROM broadcasts WHERE sender_id = $1 UNION ALL SELECT 1 FROM email_messages WHERE sender_id = $1 AND state IN ('queued','deferred','held','sending') LIMIT 1",
                args![id],
            )
            .await?;
        if used.is_some() {
            return Err(StoreError::conflict(
                "id",
                "the sender is used by a broadcast or by messages waiting to be sent",
            ));
        }
        let n = tx
            .execute("DELETE FROM senders WHERE id = $1", args![id])
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await
    }
}
