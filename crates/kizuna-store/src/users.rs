//! Users: marketers, sales reps (contact owners) and admins.

use crate::db::from_micros;
use crate::{Store, StoreError, args, on_unique};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A person who works in Kizuna.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct User {
    /// Id.
    pub id: Uuid,
    /// E-mail (normalized).
    pub email: String,
    /// Display name.
    pub name: String,
    /// `admin`, `marketer` or `sales`.
    pub role: String,
    /// Sales territory (for owner-assignment rules).
    pub territory: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// A request to add a user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    /// E-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role; default `sales`.
    #[serde(default)]
    pub role: Option<String>,
    /// Territory.
    #[serde(default)]
    pub territory: Option<String>,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    name: String,
    role: String,
    territory: Option<String>,
    created_at: i64,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            email: r.email,
            name: r.name,
            role: r.role,
            territory: r.territory,
            created_at: from_micros(r.created_at),
        }
    }
}

/// Roles a user can have.
pub const ROLES: &[&str] = &["admin", "marketer", "sales"];

impl Store {
    /// Adds a user.
    pub async fn create_user(
        &self,
        input: UserInput,
        now: DateTime<Utc>,
    ) -> Result<User, StoreError> {
        let email = kizuna_core::email_address::normalize_email(&input.email, "email")
            .map_err(|e| StoreError::Invalid(e.into()))?;
        let role = input.role.unwrap_or_else(|| "sales".into());
        if !ROLES.contains(&role.as_str()) {
            return Err(StoreError::invalid(
                "role",
                "invalid_value",
                format!("{role:?} is not a role (admin, marketer, sales)"),
            ));
        }
        if input.name.trim().is_empty() {
            return Err(StoreError::invalid(
                "name",
                "required",
                "name must not be empty",
            ));
        }
        let u = User {
            id: Uuid::now_v7(),
            email,
            name: input.name.trim().into(),
            role,
            territory: input.territory,
            created_at: now,
        };
        let mut tx = self.db().begin().await?;
        tx.execute(
            "INSERT INTO users (id, email, name, role, territory, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            args![u.id, &u.email, &u.name, &u.role, u.territory.clone(), now],
        )
        .await
        .map_err(|e| on_unique(e, "email", || format!("a user with e-mail {:?} already exists", u.email)))?;
        tx.commit().await?;
        Ok(u)
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows: Vec<UserRow> = self
            .db()
            .reader()
            .fetch_all(
                "SELECT id, email, name, role, territory, created_at FROM users ORDER BY name, id",
                vec![],
            )
            .await?;
        Ok(rows.into_iter().map(User::from).collect())
    }

    /// A user by id.
    pub async fn user(&self, id: Uuid) -> Result<User, StoreError> {
        let r: Option<UserRow> = self
            .db()
            .reader()
            .fetch_optional(
                "SELECT id, email, name, role, territory, created_at FROM users WHERE id = $1",
                args![id],
            )
            .await?;
        r.map(User::from).ok_or(StoreError::NotFound)
    }
}
