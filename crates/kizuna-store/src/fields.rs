//! Custom field definitions.

use crate::db::{Tx, from_micros};
use crate::{Store, StoreError, args, on_unique};
use chrono::{DateTime, Utc};
use kizuna_core::field::{FieldDefinition, FieldInput, FieldType};
use serde_json::Value;
use sqlx::types::Json;
use std::collections::HashMap;

#[derive(sqlx::FromRow)]
struct FieldRow {
    name: String,
    label: String,
    #[sqlx(rename = "type")]
    field_type: String,
    options: Json<Value>,
    created_at: i64,
}

impl From<FieldRow> for FieldDefinition {
    fn from(r: FieldRow) -> Self {
        FieldDefinition {
            name: r.name,
            label: r.label,
            field_type: FieldType::parse(&r.field_type).unwrap_or(FieldType::Text),
            options: serde_json::from_value(r.options.0).unwrap_or_default(),
            created_at: from_micros(r.created_at),
        }
    }
}

const SELECT: &str = "SELECT name, label, type, options, created_at FROM fields ORDER BY name";

/// Every definition by name, inside a transaction.
pub(crate) async fn definitions_in(
    tx: &mut Tx,
) -> Result<HashMap<String, FieldDefinition>, StoreError> {
    let rows: Vec<FieldRow> = tx.fetch_all(SELECT, vec![]).await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.name.clone(), r.into()))
        .collect())
}

impl Store {
    /// Defines a custom field.
    pub async fn create_field(
        &self,
        input: FieldInput,
        now: DateTime<Utc>,
    ) -> Result<FieldDefinition, StoreError> {
        let input = input.validate()?;
        let def = FieldDefinition {
            label: input
                .label
                .clone()
                .filter(|l| !l.trim().is_empty())
                .unwrap_or_else(|| input.name.clone()),
            name: input.name,
            field_type: input.field_type,
            options: input.options,
            created_at: now,
        };
        let mut tx = self.db().begin().await?;
        tx.execute(
            "INSERT INTO fields (name, label, type, options, created_at) VALUES ($1, $2, $3, $4, $5)",
            args![&def.name, &def.label, def.field_type.as_str(), serde_json::to_value(&def.options).unwrap_or_default(), now],
        )
        .await
        .map_err(|e| on_unique(e, "name", || format!("a field named {:?} already exists", def.name)))?;
        tx.commit().await?;
        Ok(def)
    }

    /// Every custom field definition, by name.
    pub async fn fields(&self) -> Result<Vec<FieldDefinition>, StoreError> {
        let rows: Vec<FieldRow> = self.db().reader().fetch_all(SELECT, vec![]).await?;
        Ok(rows.into_iter().map(FieldDefinition::from).collect())
    }

    /// Definitions keyed by name.
    pub async fn field_map(&self) -> Result<HashMap<String, FieldDefinition>, StoreError> {
        Ok(self
            .fields()
            .await?
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect())
    }

    /// Removes a definition. Stored values stay in contacts' `custom` until overwritten, so a
    /// field deleted by mistake can be defined again without data loss.
    pub async fn delete_field(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        if tx
            .execute("DELETE FROM fields WHERE name = $1", args![name])
            .await?
            == 0
        {
            return Err(StoreError::NotFound);
        }
        tx.commit().await
    }
}
