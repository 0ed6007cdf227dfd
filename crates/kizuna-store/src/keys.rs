//! API keys (secret, stored only as a SHA-256 hash, with scopes) and tracking write keys
//! (public by design: they sit in web pages, like Segment's).

use crate::db::from_micros;
use crate::{Store, StoreError, args};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// What a key may do. `Admin` implies `Write`, which implies `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// GET requests.
    Read,
    /// Changes to contacts, companies, lists, imports…
    Write,
    /// Keys, users, field definitions, erasure.
    Admin,
}

impl Scope {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("{other:?} is not a scope (read, write, admin)")),
        }
    }
}

/// A stored API key (never the secret).
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    /// Id.
    pub id: Uuid,
    /// What it is for.
    pub name: String,
    /// The public part shown in lists (`kz_1a2b3c4d5e`).
    pub prefix: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last seen in a request (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Whether the key grants `needed` (admin ⊇ write ⊇ read).
    pub fn allows(&self, needed: Scope) -> bool {
        self.scopes.iter().any(|s| *s >= needed)
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    name: String,
    prefix: String,
    secret_hash: Vec<u8>,
    scopes: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl From<&KeyRow> for ApiKey {
    fn from(r: &KeyRow) -> Self {
        ApiKey {
            id: r.id,
            name: r.name.clone(),
            prefix: r.prefix.clone(),
            scopes: r.scopes.split(',').filter_map(|s| s.parse().ok()).collect(),
            created_at: from_micros(r.created_at),
            last_used_at: r.last_used_at.map(from_micros),
            revoked_at: r.revoked_at.map(from_micros),
        }
    }
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// `kz_<10 hex>_<43 base64url>`: the prefix finds the row, the hash of the whole key proves it.
fn split_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("kz_")?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == 10 && prefix.chars().all(|c| c.is_ascii_hexdigit()) && secret.len() >= 32)
        .then_some(prefix)
}

impl Store {
    /// Creates an API key; returns it with the secret, which is shown once and never stored.
    pub async fn create_api_key(
        &self,
        name: &str,
        scopes: &[Scope],
        now: DateTime<Utc>,
    ) -> Result<(ApiKey, String), StoreError> {
        if name.trim().is_empty() {
            return Err(StoreError::invalid(
                "name",
                "required",
                "a key needs a name saying what it is for",
            ));
        }
        let mut scopes = scopes.to_vec();
        if scopes.is_empty() {
            scopes.push(Scope::Read);
        }
        scopes.sort();
        scopes.dedup();
        let mut p = [0u8; 5];
        rand::rng().fill_bytes(&mut p);
        let prefix = hex_lower(&p);
        let secret = format!("kz_{prefix}_{}", random_token(32));
        let hash = Sha256::digest(secret.as_bytes()).to_vec();
        let id = Uuid::now_v7();
        let scope_text = scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut tx = self.db().begin().await?;
        tx.execute(
            "INSERT INTO api_keys (id, name, prefix, secret_hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            args![id, name.trim(), format!("kz_{prefix}"), hash, scope_text, now],
        )
        .await?;
        tx.commit().await?;
        let key = ApiKey {
            id,
            name: name.trim().into(),
            prefix: format!("kz_{prefix}"),
            scopes,
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        };
        Ok((key, secret))
    }

    /// The key a presented secret belongs to, if valid and not revoked. The comparison is
    /// constant-time; a wrong secret and an unknown prefix look the same to the caller.
    pub async fn verify_api_key(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let Some(prefix) = split_key(presented) else {
            return Ok(None);
        };
        let row: Option<KeyRow> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT id, name, prefix, secret_hash, scopes, created_at, last_used_at, revoked_at FROM api_keys WHERE prefix = $1",
                args![format!("kz_{prefix}")],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let hash = Sha256::digest(presented.as_bytes());
        if !bool::from(hash.as_slice().ct_eq(&row.secret_hash)) || row.revoked_at.is_some() {
            return Ok(None);
        }
        let key = ApiKey::from(&row);
        // Touch at most once a minute: a write per request would serialize reads on SQLite.
        if key
            .last_used_at
            .is_none_or(|t| now - t > Duration::minutes(1))
        {
            let mut tx = self.db().begin().await?;
            tx.execute(
                "UPDATE api_keys SET last_used_at = $2 WHERE id = $1",
                args![key.id, now],
            )
            .await?;
            tx.commit().await?;
        }
        Ok(Some(key))
    }

    /// Every API key (without secrets).
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<KeyRow> = self
            .db()
            .reader()
            .fetch_all("SELECT id, name, prefix, secret_hash, scopes, created_at, last_used_at, revoked_at FROM api_keys ORDER BY id", vec![])
            .await?;
        Ok(rows.iter().map(ApiKey::from).collect())
    }

    /// Revokes an API key.
    pub async fn revoke_api_key(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        if tx
            .execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                args![id, now],
            )
            .await?
            == 0
        {
            return Err(StoreError::NotFound);
        }
        tx.commit().await
    }

    /// Creates a tracking write key; returns it.
    pub async fn create_write_key(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        if name.trim().is_empty() {
            return Err(StoreError::invalid(
                "name",
                "required",
                "a write key needs a name (e.g. the web site it tracks)",
            ));
        }
        let key = format!("wk_{}", random_token(18));
        let mut tx = self.db().begin().await?;
        tx.execute(
            "INSERT INTO write_keys (id, name, key, created_at) VALUES ($1, $2, $3, $4)",
            args![Uuid::now_v7(), name.trim(), &key, now],
        )
        .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// The id of a valid (not revoked) write key.
    pub async fn verify_write_key(&self, key: &str) -> Result<Option<Uuid>, StoreError> {
        if key.is_empty() || key.len() > 100 {
            return Ok(None);
        }
        let r: Option<crate::db::One<Uuid>> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT id FROM write_keys WHERE key = $1 AND revoked_at IS NULL",
                args![key],
            )
            .await?;
        Ok(r.map(|r| r.0))
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shape_is_checked_before_any_lookup() {
        assert_eq!(
            split_key("kz_0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABC"),
            Some("0123456789")
        );
        assert_eq!(
            split_key("kz_short_abcdefghijklmnopqrstuvwxyz0123456789ABC"),
            None
        );
        assert_eq!(split_key("Bearer something"), None);
        assert_eq!(split_key(""), None);
    }

    #[test]
    fn scopes_nest() {
        let k = ApiKey {
            id: Uuid::nil(),
            name: "x".into(),
            prefix: "kz_".into(),
            scopes: vec![Scope::Write],
            created_at: Utc::now(),
            last_used_at: None,
            revoked_at: None,
        };
        assert!(k.allows(Scope::Read) && k.allows(Scope::Write) && !k.allows(Scope::Admin));
    }
}
