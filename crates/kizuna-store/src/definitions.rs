//! Definitions kept as data: segments and scoring models. Each has a unique name, its JSON
//! definition as written, a version (bumped on every edit) and the version the engine last
//! built. Checking a definition needs the filter language and the other definitions, so it is
//! the engine's job; this module stores.

use crate::db::{One, Tx, from_micros};
use crate::engine_state::bump_definitions;
use crate::{Store, StoreError, args, on_unique};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// Which kind of definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DefinitionKind {
    /// A dynamic segment.
    Segment,
    /// A scoring model.
    ScoringModel,
}

impl DefinitionKind {
    fn table(self) -> &'static str {
        match self {
            DefinitionKind::Segment => "segments",
            DefinitionKind::ScoringModel => "scoring_models",
        }
    }

    /// The word people read.
    pub fn noun(self) -> &'static str {
        match self {
            DefinitionKind::Segment => "segment",
            DefinitionKind::ScoringModel => "scoring model",
        }
    }
}

/// A stored definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definition {
    /// Id.
    pub id: Uuid,
    /// Kind.
    #[serde(skip)]
    pub kind: DefinitionKind,
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// The definition as written (a segment's filter; a model's whole JSON).
    pub definition: Value,
    /// Bumped on every edit.
    pub version: i64,
    /// The version the engine has built (members or scores are current for it).
    pub built_version: i64,
    /// `building`, `active` or `failed`.
    pub status: String,
    /// Why a build failed.
    pub error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last edited.
    pub updated_at: DateTime<Utc>,
    /// Last built.
    pub built_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    description: Option<String>,
    definition: String,
    version: i64,
    built_version: i64,
    status: String,
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
    built_at: Option<i64>,
}

const COLS: &str = "id, name, description, definition, version, built_version, status, error, created_at, updated_at, built_at";

fn to_def(kind: DefinitionKind, r: Row) -> Definition {
    Definition {
        id: r.id,
        kind,
        name: r.name,
        description: r.description,
        definition: serde_json::from_str(&r.definition).unwrap_or(Value::Null),
        version: r.version,
        built_version: r.built_version,
        status: r.status,
        error: r.error,
        created_at: from_micros(r.created_at),
        updated_at: from_micros(r.updated_at),
        built_at: r.built_at.map(from_micros),
    }
}

fn taken(kind: DefinitionKind, name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a {} named {name:?} already exists", kind.noun())
}

impl Store {
    /// Creates a definition (the engine builds it on its next turn).
    pub async fn create_definition(
        &self,
        kind: DefinitionKind,
        name: &str,
        description: Option<&str>,
        definition: &Value,
        now: DateTime<Utc>,
    ) -> Result<Definition, StoreError> {
        let id = Uuid::now_v7();
        let mut tx = self.db().begin().await?;
        create_in(&mut tx, kind, id, name, description, definition, now).await?;
        tx.commit().await?;
        self.definition(kind, id).await
    }

    /// Replaces a definition (version + 1; the engine rebuilds it).
    pub async fn replace_definition(
        &self,
        kind: DefinitionKind,
        id: Uuid,
        name: &str,
        description: Option<&str>,
        definition: &Value,
        now: DateTime<Utc>,
    ) -> Result<Definition, StoreError> {
        let mut tx = self.db().begin().await?;
        replace_in(&mut tx, kind, id, name, description, definition, now).await?;
        tx.commit().await?;
        self.definition(kind, id).await
    }

    /// Deletes a definition (segment members and model scores go with it).
    pub async fn delete_definition(
        &self,
        kind: DefinitionKind,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        let sql = format!("DELETE FROM {} WHERE id = $1", kind.table());
        if tx.execute(sqlx::AssertSqlSafe(sql), args![id]).await? == 0 {
            return Err(StoreError::NotFound);
        }
        bump_definitions(&mut tx, now.timestamp_micros()).await?;
        tx.commit().await
    }

    /// A definition by id.
    pub async fn definition(
        &self,
        kind: DefinitionKind,
        id: Uuid,
    ) -> Result<Definition, StoreError> {
        let sql = format!("SELECT {COLS} FROM {} WHERE id = $1", kind.table());
        let r: Option<Row> = self
            .db()
            .reader()
            .fetch_optional(sqlx::AssertSqlSafe(sql), args![id])
            .await?;
        r.map(|r| to_def(kind, r)).ok_or(StoreError::NotFound)
    }

    /// A definition by name.
    pub async fn definition_by_name(
        &self,
        kind: DefinitionKind,
        name: &str,
    ) -> Result<Option<Definition>, StoreError> {
        let sql = format!("SELECT {COLS} FROM {} WHERE name = $1", kind.table());
        let r: Option<Row> = self
            .db()
            .reader()
            .fetch_optional(sqlx::AssertSqlSafe(sql), args![name.trim()])
            .await?;
        Ok(r.map(|r| to_def(kind, r)))
    }

    /// Every definition of a kind, by name.
    pub async fn definitions(&self, kind: DefinitionKind) -> Result<Vec<Definition>, StoreError> {
        let sql = format!("SELECT {COLS} FROM {} ORDER BY name", kind.table());
        let rows: Vec<Row> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), vec![])
            .await?;
        Ok(rows.into_iter().map(|r| to_def(kind, r)).collect())
    }

    /// Number of members of a segment.
    pub async fn segment_member_count(&self, id: Uuid) -> Result<i64, StoreError> {
        let n: One<i64> = self
            .db()
            .reader()
            .fetch_one(
                "SELECT COUNT(*) FROM segment_members WHERE segment_id = $1",
                args![id],
            )
            .await?;
        Ok(n.0)
    }
}

/// Creates a definition inside a transaction.
pub async fn create_in(
    tx: &mut Tx,
    kind: DefinitionKind,
    id: Uuid,
    name: &str,
    description: Option<&str>,
    definition: &Value,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO {} (id, name, description, definition, version, built_version, status, error, created_at, updated_at, built_at) VALUES ($1, $2, $3, $4, 1, 0, 'building', NULL, $5, $5, NULL)",
        kind.table()
    );
    tx.execute(
        sqlx::AssertSqlSafe(sql),
        args![id, name.trim(), description, definition.to_string(), now],
    )
    .await
    .map_err(|e| on_unique(e, "name", taken(kind, name.trim())))?;
    bump_definitions(tx, now.timestamp_micros()).await
}

/// Replaces a definition inside a transaction.
pub async fn replace_in(
    tx: &mut Tx,
    kind: DefinitionKind,
    id: Uuid,
    name: &str,
    description: Option<&str>,
    definition: &Value,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE {} SET name = $2, description = $3, definition = $4, version = version + 1, status = 'building', error = NULL, updated_at = $5 WHERE id = $1",
        kind.table()
    );
    let n = tx
        .execute(
            sqlx::AssertSqlSafe(sql),
            args![id, name.trim(), description, definition.to_string(), now],
        )
        .await
        .map_err(|e| on_unique(e, "name", taken(kind, name.trim())))?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    bump_definitions(tx, now.timestamp_micros()).await
}

/// Records that the engine built `version` (status `active`, or `failed` with the reason).
pub async fn mark_built(
    tx: &mut Tx,
    kind: DefinitionKind,
    id: Uuid,
    version: i64,
    error: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE {} SET built_version = $2, status = $3, error = $4, built_at = $5 WHERE id = $1 AND version = $2",
        kind.table()
    );
    tx.execute(
        sqlx::AssertSqlSafe(sql),
        args![
            id,
            version,
            if error.is_some() { "failed" } else { "active" },
            error,
            now
        ],
    )
    .await?;
    Ok(())
}
