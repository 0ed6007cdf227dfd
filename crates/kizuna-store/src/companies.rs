//! Companies (accounts): CRUD and matching by domain or normalized name.

use crate::db::{Tx, Val, from_micros};
use crate::events::page_of;
use crate::page::{Cursor, Page};
use crate::{Store, StoreError, args, on_unique};
use chrono::{DateTime, Utc};
use kizuna_core::company::{Company, CompanyInput, normalize_company_name};
use kizuna_core::patch::Patch;
use uuid::Uuid;

pub(crate) const COLUMNS: &str = "id, name, name_key, domain, industry, employee_count, annual_revenue, website, phone, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(crate) struct CompanyRow {
    id: Uuid,
    name: String,
    name_key: String,
    domain: Option<String>,
    industry: Option<String>,
    employee_count: Option<i64>,
    annual_revenue: Option<i64>,
    website: Option<String>,
    phone: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl From<CompanyRow> for Company {
    fn from(r: CompanyRow) -> Self {
        Company {
            id: r.id,
            name: r.name,
            name_key: r.name_key,
            domain: r.domain,
            industry: r.industry,
            employee_count: r.employee_count,
            annual_revenue: r.annual_revenue,
            website: r.website,
            phone: r.phone,
            created_at: from_micros(r.created_at),
            updated_at: from_micros(r.updated_at),
        }
    }
}

/// Filter for listing companies.
#[derive(Debug, Clone, Default)]
pub struct CompanyFilter {
    /// Exact domain.
    pub domain: Option<String>,
    /// Name, matched by 名寄せ key (so `(株)山田商事` finds `株式会社山田商事`).
    pub name: Option<String>,
}

/// Applies a validated input to a company. `fill_only` leaves non-empty fields alone.
pub fn apply(c: &mut Company, input: CompanyInput, fill_only: bool) -> bool {
    let mut changed = false;
    fn set<T: PartialEq>(slot: &mut Option<T>, p: Patch<T>, fill_only: bool, changed: &mut bool) {
        match p {
            Patch::Absent => {}
            Patch::Null if !fill_only && slot.is_some() => {
                *slot = None;
                *changed = true;
            }
            Patch::Value(v) if (!fill_only || slot.is_none()) && slot.as_ref() != Some(&v) => {
                *slot = Some(v);
                *changed = true;
            }
            _ => {}
        }
    }
    if let Patch::Value(n) = input.name
        && !fill_only
        && n != c.name
    {
        c.name_key = normalize_company_name(&n);
        c.name = n;
        changed = true;
    }
    set(&mut c.domain, input.domain, fill_only, &mut changed);
    set(&mut c.industry, input.industry, fill_only, &mut changed);
    set(
        &mut c.employee_count,
        input.employee_count,
        fill_only,
        &mut changed,
    );
    set(
        &mut c.annual_revenue,
        input.annual_revenue,
        fill_only,
        &mut changed,
    );
    set(&mut c.website, input.website, fill_only, &mut changed);
    set(&mut c.phone, input.phone, fill_only, &mut changed);
    changed
}

/// A new company from a validated create input.
pub fn new_company(input: CompanyInput, now: DateTime<Utc>) -> Company {
    let name = match &input.name {
        Patch::Value(n) => n.clone(),
        _ => String::new(),
    };
    let mut c = Company {
        id: Uuid::now_v7(),
        name_key: normalize_company_name(&name),
        name,
        domain: None,
        industry: None,
        employee_count: None,
        annual_revenue: None,
        website: None,
        phone: None,
        created_at: now,
        updated_at: now,
    };
    apply(
        &mut c,
        CompanyInput {
            name: Patch::Absent,
            ..input
        },
        false,
    );
    c
}

fn row_args(c: &Company) -> Vec<Val> {
    args![
        c.id,
        &c.name,
        &c.name_key,
        c.domain.clone(),
        c.industry.clone(),
        c.employee_count,
        c.annual_revenue,
        c.website.clone(),
        c.phone.clone(),
        c.created_at,
        c.updated_at
    ]
}

/// Inserts a company.
pub async fn insert(tx: &mut Tx, c: &Company) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO companies (id, name, name_key, domain, industry, employee_count, annual_revenue, website, phone, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
        row_args(c),
    )
    .await
    .map_err(|e| on_unique(e, "domain", || format!("a company with domain {:?} already exists", c.domain.as_deref().unwrap_or(""))))?;
    Ok(())
}

/// Writes every field of a company.
pub async fn save(tx: &mut Tx, c: &Company) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE companies SET name=$2, name_key=$3, domain=$4, industry=$5, employee_count=$6, annual_revenue=$7, website=$8, phone=$9, created_at=$10, updated_at=$11 WHERE id=$1",
        row_args(c),
    )
    .await
    .map_err(|e| on_unique(e, "domain", || format!("a company with domain {:?} already exists", c.domain.as_deref().unwrap_or(""))))?;
    Ok(())
}

/// The company with this domain, if any.
pub async fn find_by_domain(tx: &mut Tx, domain: &str) -> Result<Option<Company>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM companies WHERE domain = $1");
    let r: Option<CompanyRow> = tx
        .fetch_optional(sqlx::AssertSqlSafe(sql), args![domain])
        .await?;
    Ok(r.map(Company::from))
}

/// Loads a company inside a transaction.
pub async fn get_in(tx: &mut Tx, id: Uuid) -> Result<Option<Company>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM companies WHERE id = $1");
    let r: Option<CompanyRow> = tx
        .fetch_optional(sqlx::AssertSqlSafe(sql), args![id])
        .await?;
    Ok(r.map(Company::from))
}

impl Store {
    /// Creates a company from a validated input.
    pub async fn create_company(
        &self,
        input: CompanyInput,
        now: DateTime<Utc>,
    ) -> Result<Company, StoreError> {
        let input = input.validate(true)?;
        let c = new_company(input, now);
        let mut tx = self.db().begin().await?;
        insert(&mut tx, &c).await?;
        tx.commit().await?;
        Ok(c)
    }

    /// A company by id.
    pub async fn company(&self, id: Uuid) -> Result<Company, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM companies WHERE id = $1");
        let r: Option<CompanyRow> = self
            .db()
            .reader()
            .fetch_optional(sqlx::AssertSqlSafe(sql), args![id])
            .await?;
        r.map(Company::from).ok_or(StoreError::NotFound)
    }

    /// Changes a company; absent fields stay, `null` clears.
    pub async fn update_company(
        &self,
        id: Uuid,
        input: CompanyInput,
        now: DateTime<Utc>,
    ) -> Result<Company, StoreError> {
        let input = input.validate(false)?;
        let mut tx = self.db().begin().await?;
        let mut c = get_in(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
        if apply(&mut c, input, false) {
            c.updated_at = now;
            save(&mut tx, &c).await?;
            company_changed(&mut tx, id, now).await?;
        }
        tx.commit().await?;
        Ok(c)
    }

    /// Deletes a company; its contacts stay, unlinked.
    pub async fn delete_company(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        company_changed(&mut tx, id, chrono::Utc::now()).await?;
        tx.execute(
            "UPDATE contacts SET company_id = NULL WHERE company_id = $1",
            args![id],
        )
        .await?;
        let n = tx
            .execute("DELETE FROM companies WHERE id = $1", args![id])
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await
    }

    /// Lists companies ordered by id (creation order).
    pub async fn list_companies(
        &self,
        filter: &CompanyFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Company>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM companies WHERE 1=1");
        let mut a: Vec<Val> = Vec::new();
        if let Some(d) = &filter.domain {
            a.push(
                kizuna_core::company::normalize_domain(d)
                    .unwrap_or_else(|| d.clone())
                    .into(),
            );
            sql.push_str(&format!(" AND domain = ${}", a.len()));
        }
        if let Some(n) = &filter.name {
            a.push(normalize_company_name(n).into());
            sql.push_str(&format!(" AND name_key = ${}", a.len()));
        }
        if let Some(c) = cursor {
            a.push(c.id.into());
            sql.push_str(&format!(" AND id > ${}", a.len()));
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", limit + 1));
        let rows: Vec<CompanyRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), a)
            .await?;
        Ok(page_of(
            rows.into_iter().map(Company::from).collect(),
            limit,
            |c| Cursor { key: 0, id: c.id },
        ))
    }
}

/// `company.updated` on the timeline of each of the company's contacts, so that what reads
/// company fields (segments, fit rules) follows the change.
async fn company_changed(tx: &mut Tx, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
    let contacts: Vec<crate::db::One<Uuid>> = tx
        .fetch_all("SELECT id FROM contacts WHERE company_id = $1", args![id])
        .await?;
    let events = contacts
        .into_iter()
        .map(|c| {
            crate::events::NewEvent::new(
                c.0,
                "company.updated",
                now,
                "kizuna",
                serde_json::json!({"company_id": id}),
            )
        })
        .collect();
    crate::events::append(tx, events, now).await?;
    Ok(())
}
