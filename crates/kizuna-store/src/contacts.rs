//! Contacts: create, upsert by e-mail, read, list, change and erase.

use crate::db::{Tx, Val, from_micros};
use crate::events::{NewEvent, append, page_of};
use crate::page::{Cursor, Page};
use crate::{Store, StoreError, args, companies, fields, on_unique, suppressions};
use chrono::{DateTime, Utc};
use kizuna_core::contact::{Applied, Contact, ContactInput, LifecycleStage};
use kizuna_core::email_address::{domain_of, is_free_mail_domain};
use kizuna_core::patch::Patch;
use serde_json::{Value, json};
use sqlx::types::Json;
use uuid::Uuid;

pub(crate) const COLUMNS: &str = "id, email, first_name, last_name, phone, job_title, department, company_id, lifecycle_stage, temperature, owner_id, source, address, custom, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(crate) struct ContactRow {
    id: Uuid,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    phone: Option<String>,
    job_title: Option<String>,
    department: Option<String>,
    company_id: Option<Uuid>,
    lifecycle_stage: String,
    temperature: String,
    owner_id: Option<Uuid>,
    source: Json<Value>,
    address: Json<Value>,
    custom: Json<Value>,
    created_at: i64,
    updated_at: i64,
}

impl From<ContactRow> for Contact {
    fn from(r: ContactRow) -> Self {
        Contact {
            id: r.id,
            email: r.email,
            first_name: r.first_name,
            last_name: r.last_name,
            phone: r.phone,
            job_title: r.job_title,
            department: r.department,
            company_id: r.company_id,
            lifecycle_stage: r.lifecycle_stage.parse().unwrap_or_default(),
            temperature: r.temperature.parse().unwrap_or_default(),
            owner_id: r.owner_id,
            source: serde_json::from_value(r.source.0).unwrap_or_default(),
            address: serde_json::from_value(r.address.0).unwrap_or_default(),
            custom: match r.custom.0 {
                Value::Object(m) => m,
                _ => Default::default(),
            },
            created_at: from_micros(r.created_at),
            updated_at: from_micros(r.updated_at),
        }
    }
}

/// The 16 bound values of a contact row, in [`COLUMNS`] order (public for benchmarks).
pub fn row_values(c: &Contact) -> Vec<Val> {
    row_args(c)
}

/// The 16 bound values of a contact row, in [`COLUMNS`] order.
pub(crate) fn row_args(c: &Contact) -> Vec<Val> {
    args![
        c.id,
        c.email.clone(),
        c.first_name.clone(),
        c.last_name.clone(),
        c.phone.clone(),
        c.job_title.clone(),
        c.department.clone(),
        c.company_id,
        c.lifecycle_stage.as_str(),
        c.temperature.as_str(),
        c.owner_id,
        serde_json::to_value(&c.source).unwrap_or_default(),
        serde_json::to_value(&c.address).unwrap_or_default(),
        Value::Object(c.custom.clone()),
        c.created_at,
        c.updated_at,
    ]
}

fn email_taken(email: Option<&str>) -> impl FnOnce() -> String + '_ {
    move || {
        format!(
            "another contact already has the e-mail {:?}",
            email.unwrap_or("")
        )
    }
}

/// Inserts a contact row.
pub(crate) async fn insert(tx: &mut Tx, c: &Contact) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO contacts ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)"
    );
    tx.execute(sqlx::AssertSqlSafe(sql), row_args(c))
        .await
        .map_err(|e| on_unique(e, "email", email_taken(c.email.as_deref())))?;
    Ok(())
}

/// Writes every column of a contact row.
pub(crate) async fn save(tx: &mut Tx, c: &Contact) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE contacts SET email=$2, first_name=$3, last_name=$4, phone=$5, job_title=$6, department=$7, company_id=$8, lifecycle_stage=$9, temperature=$10, owner_id=$11, source=$12, address=$13, custom=$14, created_at=$15, updated_at=$16 WHERE id=$1",
        row_args(c),
    )
    .await
    .map_err(|e| on_unique(e, "email", email_taken(c.email.as_deref())))?;
    Ok(())
}

/// Loads a contact inside a transaction.
pub(crate) async fn get_in(tx: &mut Tx, id: Uuid) -> Result<Option<Contact>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM contacts WHERE id = $1");
    Ok(tx
        .fetch_optional::<ContactRow>(sqlx::AssertSqlSafe(sql), args![id])
        .await?
        .map(Contact::from))
}

pub(crate) async fn get_by_email_in(
    tx: &mut Tx,
    email: &str,
) -> Result<Option<Contact>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM contacts WHERE email = $1");
    Ok(tx
        .fetch_optional::<ContactRow>(sqlx::AssertSqlSafe(sql), args![email])
        .await?
        .map(Contact::from))
}

/// Checks the references a contact input makes (owner, company) and its custom values.
async fn check_input(tx: &mut Tx, mut input: ContactInput) -> Result<ContactInput, StoreError> {
    if let Patch::Value(owner) = input.owner_id {
        let found: Option<crate::db::One<Uuid>> = tx
            .fetch_optional("SELECT id FROM users WHERE id = $1", args![owner])
            .await?;
        if found.is_none() {
            return Err(StoreError::invalid(
                "owner_id",
                "unknown_owner",
                format!("no user with id {owner}"),
            ));
        }
    }
    if let Patch::Value(company) = input.company_id
        && companies::get_in(tx, company).await?.is_none()
    {
        return Err(StoreError::invalid(
            "company_id",
            "unknown_company",
            format!("no company with id {company}"),
        ));
    }
    if !input.custom.is_empty() {
        let defs = fields::definitions_in(tx).await?;
        input.custom =
            kizuna_core::field::validate_custom(std::mem::take(&mut input.custom), &defs)?;
    }
    Ok(input)
}

/// Links a contact without a company to the company owning its e-mail domain (never for free
/// mail domains such as gmail.com).
async fn link_company_by_domain(tx: &mut Tx, c: &mut Contact) -> Result<(), StoreError> {
    if c.company_id.is_some() {
        return Ok(());
    }
    if let Some(domain) = c.email.as_deref().and_then(domain_of)
        && !is_free_mail_domain(domain)
        && let Some(company) = companies::find_by_domain(tx, domain).await?
    {
        c.company_id = Some(company.id);
    }
    Ok(())
}

fn stage_event(
    c: &Contact,
    from: LifecycleStage,
    to: LifecycleStage,
    at: DateTime<Utc>,
    source: &str,
) -> NewEvent {
    NewEvent::new(
        c.id,
        "stage.changed",
        at,
        source,
        json!({"from": from, "to": to, "cause": source}),
    )
}

/// Filter for listing contacts.
#[derive(Debug, Clone, Default)]
pub struct ContactFilter {
    /// Exact e-mail (normalized before matching).
    pub email: Option<String>,
    /// Lifecycle stage.
    pub stage: Option<LifecycleStage>,
    /// Owner.
    pub owner_id: Option<Uuid>,
    /// Company.
    pub company_id: Option<Uuid>,
    /// Member of this static list.
    pub list_id: Option<Uuid>,
    /// Changed at or after this instant (the list is then ordered by `updated_at`).
    pub updated_since: Option<DateTime<Utc>>,
}

impl Store {
    /// Creates a contact. The e-mail must be new (409 otherwise); a contact with a company
    /// domain is linked to that company. Appends `contact.created`.
    pub async fn create_contact(
        &self,
        input: ContactInput,
        now: DateTime<Utc>,
        source: &str,
    ) -> Result<Contact, StoreError> {
        let input = input.validate()?;
        let mut tx = self.db().begin().await?;
        let input = check_input(&mut tx, input).await?;
        let mut c = Contact::new(Uuid::now_v7(), now);
        let stage = matches!(input.lifecycle_stage, Patch::Value(_));
        c.apply(input, true);
        link_company_by_domain(&mut tx, &mut c).await?;
        insert(&mut tx, &c).await?;
        let mut ev = vec![NewEvent::new(
            c.id,
            "contact.created",
            now,
            source,
            json!({"email": c.email}),
        )];
        if stage {
            ev.push(stage_event(
                &c,
                LifecycleStage::Lead,
                c.lifecycle_stage,
                now,
                source,
            ));
            ev.last_mut().expect("just pushed").properties["from"] = Value::Null;
        }
        append(&mut tx, ev, now).await?;
        tx.commit().await?;
        Ok(c)
    }

    /// Creates the contact with this e-mail or changes it. With `overwrite` false, only empty
    /// fields are filled. Returns the contact and whether it was created.
    pub async fn upsert_contact_by_email(
        &self,
        input: ContactInput,
        overwrite: bool,
        now: DateTime<Utc>,
        source: &str,
    ) -> Result<(Contact, bool), StoreError> {
        let input = input.validate()?;
        let Patch::Value(email) = input.email.clone() else {
            return Err(StoreError::invalid(
                "email",
                "required",
                "upsert needs an e-mail",
            ));
        };
        let mut tx = self.db().begin().await?;
        let input = check_input(&mut tx, input).await?;
        let result = match get_by_email_in(&mut tx, &email).await? {
            Some(mut c) => {
                let applied = c.apply(input, overwrite);
                record_change(&mut tx, &mut c, applied, now, source).await?;
                (c, false)
            }
            None => {
                let mut c = Contact::new(Uuid::now_v7(), now);
                c.apply(input, true);
                link_company_by_domain(&mut tx, &mut c).await?;
                insert(&mut tx, &c).await?;
                append(
                    &mut tx,
                    vec![NewEvent::new(
                        c.id,
                        "contact.created",
                        now,
                        source,
                        json!({"email": c.email}),
                    )],
                    now,
                )
                .await?;
                (c, true)
            }
        };
        tx.commit().await?;
        Ok(result)
    }

    /// A contact by id.
    pub async fn contact(&self, id: Uuid) -> Result<Contact, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM contacts WHERE id = $1");
        let r: Option<ContactRow> = self
            .db()
            .reader()
            .fetch_optional(sqlx::AssertSqlSafe(sql), args![id])
            .await?;
        r.map(Contact::from).ok_or(StoreError::NotFound)
    }

    /// A contact by e-mail (normalized first).
    pub async fn contact_by_email(&self, email: &str) -> Result<Option<Contact>, StoreError> {
        let email = kizuna_core::email_address::normalize_email(email, "email")
            .map_err(|e| StoreError::Invalid(e.into()))?;
        let sql = format!("SELECT {COLUMNS} FROM contacts WHERE email = $1");
        let r: Option<ContactRow> = self
            .db()
            .reader()
            .fetch_optional(sqlx::AssertSqlSafe(sql), args![email])
            .await?;
        Ok(r.map(Contact::from))
    }

    /// Changes a contact: absent fields stay, `null` clears. A stage change is recorded as a
    /// `stage.changed` event with its cause.
    pub async fn update_contact(
        &self,
        id: Uuid,
        input: ContactInput,
        now: DateTime<Utc>,
        source: &str,
    ) -> Result<Contact, StoreError> {
        let input = input.validate()?;
        let mut tx = self.db().begin().await?;
        let input = check_input(&mut tx, input).await?;
        let mut c = get_in(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
        let applied = c.apply(input, true);
        record_change(&mut tx, &mut c, applied, now, source).await?;
        tx.commit().await?;
        Ok(c)
    }

    /// Erases a contact (right to erasure): the contact, its events, list memberships and merge
    /// records are deleted; only a fingerprint of the e-mail stays, so the person is never
    /// mailed again. Returns whether a contact was erased.
    pub async fn erase_contact(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        crate::ingest::lock_identities(&mut tx).await?;
        let c = get_in(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
        if let Some(email) = &c.email {
            suppressions::add(&mut tx, email, "erased", now).await?;
        }
        tx.execute("DELETE FROM events WHERE contact_id = $1", args![id])
            .await?;
        crate::email::erase_contact(&mut tx, id).await?;
        tx.execute("DELETE FROM list_members WHERE contact_id = $1", args![id])
            .await?;
        tx.execute("DELETE FROM identities WHERE contact_id = $1", args![id])
            .await?;
        tx.execute(
            "DELETE FROM merges WHERE survivor_id = $1 OR merged_id = $1",
            args![id],
        )
        .await?;
        tx.execute("DELETE FROM contacts WHERE id = $1", args![id])
            .await?;
        tx.commit().await
    }

    /// Lists contacts: by id (creation order), or by `updated_at` when `updated_since` is set.
    pub async fn list_contacts(
        &self,
        f: &ContactFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Contact>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM contacts WHERE 1=1");
        let mut a: Vec<Val> = Vec::new();
        let cond = |sql: &mut String, a: &mut Vec<Val>, clause: &str, v: Val| {
            a.push(v);
            sql.push_str(&clause.replace("$?", &format!("${}", a.len())));
        };
        if let Some(e) = &f.email {
            let e = kizuna_core::email_address::normalize_email(e, "email")
                .map_err(|e| StoreError::Invalid(e.into()))?;
            cond(&mut sql, &mut a, " AND email = $?", e.into());
        }
        if let Some(s) = f.stage {
            cond(
                &mut sql,
                &mut a,
                " AND lifecycle_stage = $?",
                s.as_str().into(),
            );
        }
        if let Some(o) = f.owner_id {
            cond(&mut sql, &mut a, " AND owner_id = $?", o.into());
        }
        if let Some(c) = f.company_id {
            cond(&mut sql, &mut a, " AND company_id = $?", c.into());
        }
        if let Some(l) = f.list_id {
            cond(
                &mut sql,
                &mut a,
                " AND id IN (SELECT contact_id FROM list_members WHERE list_id = $?)",
                l.into(),
            );
        }
        let by_update = f.updated_since.is_some();
        if let Some(t) = f.updated_since {
            cond(&mut sql, &mut a, " AND updated_at >= $?", t.into());
        }
        if let Some(c) = cursor {
            if by_update {
                a.push(c.key.into());
                a.push(c.id.into());
                let (k, i) = (a.len() - 1, a.len());
                sql.push_str(&format!(
                    " AND (updated_at > ${k} OR (updated_at = ${k} AND id > ${i}))"
                ));
            } else {
                cond(&mut sql, &mut a, " AND id > $?", c.id.into());
            }
        }
        sql.push_str(if by_update {
            " ORDER BY updated_at, id"
        } else {
            " ORDER BY id"
        });
        sql.push_str(&format!(" LIMIT {}", limit + 1));
        let rows: Vec<ContactRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        let contacts: Vec<Contact> = rows.into_iter().map(Contact::from).collect();
        Ok(page_of(contacts, limit, |c| Cursor {
            key: if by_update {
                c.updated_at.timestamp_micros()
            } else {
                0
            },
            id: c.id,
        }))
    }

    /// Number of contacts.
    pub async fn count_contacts(&self) -> Result<i64, StoreError> {
        let n: crate::db::One<i64> = self
            .db()
            .reader()
            .fetch_one("SELECT COUNT(*) FROM contacts", vec![])
            .await?;
        Ok(n.0)
    }
}

/// Saves a changed contact and appends `contact.updated` / `stage.changed`.
pub(crate) async fn record_change(
    tx: &mut Tx,
    c: &mut Contact,
    applied: Applied,
    now: DateTime<Utc>,
    source: &str,
) -> Result<(), StoreError> {
    if !applied.changed {
        return Ok(());
    }
    c.updated_at = now;
    save(tx, c).await?;
    let mut ev = vec![NewEvent::new(
        c.id,
        "contact.updated",
        now,
        source,
        json!({}),
    )];
    if let Some((from, to)) = applied.stage_change {
        ev.push(stage_event(c, from, to, now, source));
    }
    append(tx, ev, now).await?;
    Ok(())
}

/// Changes a contact inside a caller's transaction (program steps): absent fields stay,
/// `null` clears; the change is recorded like [`Store::update_contact`] does.
pub async fn update_in(
    tx: &mut Tx,
    id: Uuid,
    input: ContactInput,
    now: DateTime<Utc>,
    source: &str,
) -> Result<Contact, StoreError> {
    let input = input.validate()?;
    let input = check_input(tx, input).await?;
    let mut c = get_in(tx, id).await?.ok_or(StoreError::NotFound)?;
    let applied = c.apply(input, true);
    record_change(tx, &mut c, applied, now, source).await?;
    Ok(c)
}
