//! Stored email templates. Compiling and checking them is `kizuna-mail`'s job (the API refuses a
//! template that does not compile); this module keeps them, with a version bumped on each change.

use crate::db::from_micros;
use crate::{Store, StoreError, args, on_unique};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A stored template.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EmailTemplate {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// `marketing` or `transactional`.
    pub kind: String,
    /// Subject (template).
    pub subject: String,
    /// MJML body (template).
    pub mjml: Option<String>,
    /// HTML body (template), when not MJML.
    pub html: Option<String>,
    /// Plain-text body (template).
    pub text: Option<String>,
    /// Bumped on every change.
    pub version: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// What a template is made of (create or replace).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    /// Unique name.
    pub name: String,
    /// `marketing` (default) or `transactional`.
    #[serde(default = "marketing")]
    pub kind: String,
    /// Subject.
    pub subject: String,
    /// MJML body.
    #[serde(default)]
    pub mjml: Option<String>,
    /// HTML body.
    #[serde(default)]
    pub html: Option<String>,
    /// Text body.
    #[serde(default)]
    pub text: Option<String>,
}

fn marketing() -> String {
    "marketing".into()
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    kind: String,
    subject: String,
    mjml: Option<String>,
    html: Option<String>,
    text: Option<String>,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl From<Row> for EmailTemplate {
    fn from(r: Row) -> Self {
        EmailTemplate {
            id: r.id,
            name: r.name,
            kind: r.kind,
            subject: r.subject,
            mjml: r.mjml,
            html: r.html,
            text: r.text,
            version: r.version,
            created_at: from_micros(r.created_at),
            updated_at: from_micros(r.updated_at),
        }
    }
}

const SELECT: &str = "SELECT id, name, kind, subject, mjml, html, text, version, created_at, updated_at FROM email_templates";

fn check(input: &TemplateInput) -> Result<(), StoreError> {
    let n = input.name.trim();
    if n.is_empty() || n.chars().count() > 200 {
        return Err(StoreError::invalid(
            "name",
            "invalid_name",
            "a template name must be 1 to 200 characters",
        ));
    }
    if !matches!(input.kind.as_str(), "marketing" | "transactional") {
        return Err(StoreError::invalid(
            "kind",
            "invalid_kind",
            "kind must be marketing or transactional",
        ));
    }
    Ok(())
}

fn name_taken(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a template named {name:?} already exists")
}

impl Store {
    /// Adds a template (already checked by the mail library).
    pub async fn create_template(
        &self,
        input: TemplateInput,
        now: DateTime<Utc>,
    ) -> Result<EmailTemplate, StoreError> {
        check(&input)?;
        let id = Uuid::now_v7();
        let name = input.name.trim().to_string();
        self.db()
            .reader()
            .execute(
                "INSERT INTO email_templates (id, name, kind, subject, mjml, html, text, version, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,1,$8,$8)",
                args![id, name.as_str(), input.kind, input.subject, input.mjml, input.html, input.text, now],
            )
            .await
            .map_err(|e| on_unique(e, "name", name_taken(&name)))?;
        self.template(id).await
    }

    /// Replaces a template's content; its version goes up by one.
    pub async fn update_template(
        &self,
        id: Uuid,
        input: TemplateInput,
        now: DateTime<Utc>,
    ) -> Result<EmailTemplate, StoreError> {
        check(&input)?;
        let name = input.name.trim().to_string();
        let n = self
            .db()
            .reader()
            .execute(
                "UPDATE email_templates SET name=$2, kind=$3, subject=$4, mjml=$5, html=$6, text=$7, version=version+1, updated_at=$8 WHERE id=$1",
                args![id, name.as_str(), input.kind, input.subject, input.mjml, input.html, input.text, now],
            )
            .await
            .map_err(|e| on_unique(e, "name", name_taken(&name)))?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        self.template(id).await
    }

    /// A template by id.
    pub async fn template(&self, id: Uuid) -> Result<EmailTemplate, StoreError> {
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

    /// Every template, by name.
    pub async fn templates(&self) -> Result<Vec<EmailTemplate>, StoreError> {
        let rows: Vec<Row> = self
            .db()
            .reader()
            .fetch_all(
                sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY name")),
                vec![],
            )
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Deletes a template that no message or broadcast uses (409 otherwise).
    pub async fn delete_template(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        let used: Option<crate::db::One<i64>> = tx
            .fetch_optional(
                "SELECT 1 FROM email_messages WHERE template_id = $1 UNION ALL SELECT 1 FROM broadcasts WHERE template_id = $1 LIMIT 1",
                args![id],
            )
            .await?;
        if used.is_some() {
            return Err(StoreError::conflict(
                "id",
                "the template has been used by messages or broadcasts; keep it for their records",
            ));
        }
        let n = tx
            .execute("DELETE FROM email_templates WHERE id = $1", args![id])
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await
    }
}
