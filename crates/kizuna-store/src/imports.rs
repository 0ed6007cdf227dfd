//! Writing an import: all rows in one transaction (all or nothing), in multi-row statements,
//! merging into existing contacts by e-mail and into existing companies by domain, then by
//! normalized name (名寄せ).

use crate::companies::{self, CompanyRow, new_company};
use crate::contacts::{self, ContactRow};
use crate::db::{Tx, Val, from_micros};
use crate::events::{NewEvent, append};
use crate::{Store, StoreError, args, lists};
use chrono::{DateTime, Utc};
use kizuna_core::company::{Company, CompanyInput, normalize_company_name};
use kizuna_core::contact::{Contact, ContactInput, Source};
use kizuna_core::patch::Patch;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::types::Json;
use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use uuid::Uuid;

/// One validated row to write.
#[derive(Debug, Clone)]
pub struct ImportItem {
    /// Spreadsheet row number (header = 1).
    pub row: u64,
    /// The contact's fields (e-mail required).
    pub contact: ContactInput,
    /// The company named on the row, if any.
    pub company: Option<CompanyInput>,
}

/// How to write.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportOptions {
    /// Overwrite non-empty fields of existing contacts (default: only fill empty ones).
    pub overwrite: bool,
    /// Put every imported contact on this static list (created if missing).
    pub list: Option<String>,
    /// The file's name, for the record and the contacts' first-touch detail.
    pub file_name: Option<String>,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ImportSummary {
    /// Valid rows written.
    pub rows: u64,
    /// New contacts.
    pub created: u64,
    /// Existing contacts that changed.
    pub updated: u64,
    /// Existing contacts the file added nothing to.
    pub unchanged: u64,
    /// Rows whose e-mail appeared earlier in the same file (merged into that contact).
    pub duplicates_in_file: u64,
    /// Companies created.
    pub companies_created: u64,
    /// Rows matched to an existing company.
    pub companies_matched: u64,
    /// The list the contacts were put on.
    pub list_id: Option<Uuid>,
    /// Invalid rows skipped (only with skip-invalid).
    pub skipped: u64,
}

/// The stored record of an import.
#[derive(Debug, Clone, Serialize)]
pub struct ImportRecord {
    /// Id.
    pub id: Uuid,
    /// `succeeded` or `failed`.
    pub status: String,
    /// File name.
    pub file_name: Option<String>,
    /// Options used.
    pub options: Value,
    /// Counts.
    pub summary: Value,
    /// Row errors (all of them when failed; the skipped ones with skip-invalid).
    pub errors: Value,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ImportRow {
    id: Uuid,
    status: String,
    file_name: Option<String>,
    options: Json<Value>,
    summary: Json<Value>,
    errors: Json<Value>,
    started_at: i64,
    finished_at: i64,
}

/// Above this many cached company keys the cache is dropped (the database still answers):
/// memory stays bounded however many companies a file names.
const COMPANY_CACHE_LIMIT: usize = 200_000;

/// An import in progress: one open write transaction.
pub struct ImportWriter {
    tx: Tx,
    /// Import id (also on every event it appends).
    pub id: Uuid,
    now: DateTime<Utc>,
    options: ImportOptions,
    summary: ImportSummary,
    company_keys: HashMap<String, Uuid>,
    seen_emails: HashSet<u64>,
    created_ids: HashSet<Uuid>,
    filled: HashMap<Uuid, u8>,
}

fn email_hash(e: &str) -> u64 {
    let mut h = DefaultHasher::new();
    e.hash(&mut h);
    h.finish()
}

impl Store {
    /// Starts an import. Nothing is visible to others until [`ImportWriter::commit`].
    pub async fn begin_import(
        &self,
        options: ImportOptions,
        now: DateTime<Utc>,
    ) -> Result<ImportWriter, StoreError> {
        let mut tx = self.db().begin().await?;
        let list_id = match &options.list {
            Some(name) => Some(lists::ensure(&mut tx, name, now).await?),
            None => None,
        };
        Ok(ImportWriter {
            tx,
            id: Uuid::now_v7(),
            now,
            summary: ImportSummary {
                list_id,
                ..Default::default()
            },
            options,
            company_keys: HashMap::new(),
            seen_emails: HashSet::new(),
            created_ids: HashSet::new(),
            filled: HashMap::new(),
        })
    }

    /// Records an import that was refused (nothing written), with every row error.
    pub async fn record_failed_import(
        &self,
        options: &ImportOptions,
        errors: Value,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::now_v7();
        let mut tx = self.db().begin().await?;
        insert_record(
            &mut tx,
            id,
            "failed",
            options,
            &ImportSummary::default(),
            errors,
            started,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// An import's record.
    pub async fn import_record(&self, id: Uuid) -> Result<ImportRecord, StoreError> {
        let r: ImportRow = self
            .db()
            .reader()
            .fetch_optional("SELECT id, status, file_name, options, summary, errors, started_at, finished_at FROM imports WHERE id = $1", args![id])
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(ImportRecord {
            id: r.id,
            status: r.status,
            file_name: r.file_name,
            options: r.options.0,
            summary: r.summary.0,
            errors: r.errors.0,
            started_at: from_micros(r.started_at),
            finished_at: from_micros(r.finished_at),
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_record(
    tx: &mut Tx,
    id: Uuid,
    status: &str,
    o: &ImportOptions,
    s: &ImportSummary,
    errors: Value,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO imports (id, status, file_name, list_id, options, summary, errors, started_at, finished_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
        args![
            id,
            status,
            o.file_name.clone(),
            s.list_id,
            serde_json::to_value(o).unwrap_or_default(),
            serde_json::to_value(s).unwrap_or_default(),
            errors,
            started,
            now
        ],
    )
    .await?;
    Ok(())
}

/// The company fields an input gives, as bits (industry, employees, revenue, website, phone).
fn provided_bits(c: &CompanyInput) -> u8 {
    (c.industry.is_present() as u8)
        | (c.employee_count.is_present() as u8) << 1
        | (c.annual_revenue.is_present() as u8) << 2
        | (c.website.is_present() as u8) << 3
        | (c.phone.is_present() as u8) << 4
}

/// The company fields already known.
fn company_bits(c: &Company) -> u8 {
    (c.industry.is_some() as u8)
        | (c.employee_count.is_some() as u8) << 1
        | (c.annual_revenue.is_some() as u8) << 2
        | (c.website.is_some() as u8) << 3
        | (c.phone.is_some() as u8) << 4
}

/// An input reduced to the fields a fill may set (never the name or domain).
fn fill_input(c: &CompanyInput) -> CompanyInput {
    CompanyInput {
        name: Patch::Absent,
        domain: Patch::Absent,
        ..c.clone()
    }
}

impl ImportWriter {
    /// Counts so far.
    pub fn summary(&self) -> &ImportSummary {
        &self.summary
    }

    /// Writes a batch of rows (any size; 500–1000 is a good batch).
    pub async fn write(&mut self, items: Vec<ImportItem>) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let company_ids = self.resolve_companies(&items).await?;

        // Existing contacts with these e-mails (including ones this import created earlier).
        let emails: Vec<String> = items
            .iter()
            .filter_map(|i| match &i.contact.email {
                Patch::Value(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        let mut existing: HashMap<String, Contact> = HashMap::new();
        for chunk in emails.chunks(900) {
            let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {} FROM contacts WHERE email IN ({})",
                contacts::COLUMNS,
                ph.join(",")
            );
            let rows: Vec<ContactRow> = self
                .tx
                .fetch_all(
                    sqlx::AssertSqlSafe(sql),
                    chunk.iter().map(Val::from).collect(),
                )
                .await?;
            for r in rows {
                let c = Contact::from(r);
                if let Some(e) = c.email.clone() {
                    existing.insert(e, c);
                }
            }
        }

        let source = Source {
            channel: Some("offline".into()),
            detail: self
                .options
                .list
                .clone()
                .or_else(|| self.options.file_name.clone()),
            ..Default::default()
        };
        let mut new: Vec<Contact> = Vec::new();
        let mut new_index: HashMap<String, usize> = HashMap::new();
        let mut changed: HashMap<String, (Contact, bool)> = HashMap::new();
        let mut rows_of: HashMap<Uuid, u64> = HashMap::new();
        for (item, company_id) in items.into_iter().zip(company_ids) {
            let Patch::Value(email) = item.contact.email.clone() else {
                return Err(StoreError::invalid(
                    format!("rows[{}].email", item.row),
                    "required",
                    "every imported row needs an e-mail",
                ));
            };
            let mut input = item.contact;
            if let (Some(cid), false) = (company_id, input.company_id.is_present()) {
                input.company_id = Patch::Value(cid);
            }
            if !self.seen_emails.insert(email_hash(&email)) {
                self.summary.duplicates_in_file += 1;
            }
            self.summary.rows += 1;
            if let Some(&i) = new_index.get(&email) {
                // Same person twice in this batch: the later row fills (or overwrites) the first.
                new[i].apply(input, self.options.overwrite);
                continue;
            }
            if let Some(mut c) = changed
                .remove(&email)
                .or_else(|| existing.remove(&email).map(|c| (c, false)))
            {
                let applied = c.0.apply(input, self.options.overwrite);
                c.1 |= applied.changed;
                rows_of.insert(c.0.id, item.row);
                changed.insert(email, c);
                continue;
            }
            let mut c = Contact::new(Uuid::now_v7(), self.now);
            c.apply(input, true);
            if c.source.is_empty() {
                c.source = source.clone();
            }
            rows_of.insert(c.id, item.row);
            new_index.insert(email, new.len());
            new.push(c);
        }

        // New contacts: multi-row INSERT.
        for chunk in new.chunks(1000) {
            let mut sql = format!("INSERT INTO contacts ({}) VALUES ", contacts::COLUMNS);
            let mut a: Vec<Val> = Vec::with_capacity(chunk.len() * 16);
            for (i, c) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                let n = a.len();
                sql.push('(');
                sql.push_str(
                    &(1..=16)
                        .map(|k| format!("${}", n + k))
                        .collect::<Vec<_>>()
                        .join(","),
                );
                sql.push(')');
                a.extend(contacts::row_args(c));
            }
            self.tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
        }
        let mut events: Vec<NewEvent> = new
            .iter()
            .map(|c| NewEvent::new(c.id, "contact.created", self.now, "import", json!({"import_id": self.id, "row": rows_of.get(&c.id), "list": self.options.list})))
            .collect();
        self.summary.created += new.len() as u64;
        self.created_ids.extend(new.iter().map(|c| c.id));

        for (_, (mut c, dirty)) in changed {
            let created_here = self.created_ids.contains(&c.id);
            if dirty && created_here {
                // A later row of a person this import created: still "created", not "updated".
                c.updated_at = self.now;
                contacts::save(&mut self.tx, &c).await?;
            } else if created_here {
            } else if dirty {
                c.updated_at = self.now;
                contacts::save(&mut self.tx, &c).await?;
                events.push(NewEvent::new(c.id, "contact.updated", self.now, "import", json!({"import_id": self.id, "row": rows_of.get(&c.id), "list": self.options.list})));
                self.summary.updated += 1;
            } else {
                self.summary.unchanged += 1;
            }
            new.push(c); // for list membership below
        }
        append(&mut self.tx, events, self.now).await?;
        if let Some(list_id) = self.summary.list_id {
            let ids: Vec<Uuid> = new.iter().map(|c| c.id).collect();
            lists::add_members(&mut self.tx, list_id, &ids, self.now).await?;
        }
        Ok(())
    }

    /// Finds or creates the company of each item: by domain first, then by normalized name.
    /// Fields of a company are filled (never overwritten) by the first row naming it.
    async fn resolve_companies(
        &mut self,
        items: &[ImportItem],
    ) -> Result<Vec<Option<Uuid>>, StoreError> {
        if self.company_keys.len() > COMPANY_CACHE_LIMIT {
            self.company_keys.clear();
            self.filled.clear();
        }
        let keys = |c: &CompanyInput| -> (Option<String>, Option<String>) {
            let d = match &c.domain {
                Patch::Value(d) => Some(format!("d:{d}")),
                _ => None,
            };
            let n = match &c.name {
                Patch::Value(n) => {
                    Some(format!("n:{}", normalize_company_name(n))).filter(|k| k.len() > 2)
                }
                _ => None,
            };
            (d, n)
        };
        // Look up what the cache does not know, in one query.
        let mut want_domains = Vec::new();
        let mut want_names = Vec::new();
        for c in items.iter().filter_map(|i| i.company.as_ref()) {
            let (d, n) = keys(c);
            let cached = d
                .as_ref()
                .is_some_and(|k| self.company_keys.contains_key(k))
                || (d.is_none()
                    && n.as_ref()
                        .is_some_and(|k| self.company_keys.contains_key(k)));
            if !cached {
                if let Some(d) = d {
                    want_domains.push(d[2..].to_string());
                }
                if let Some(n) = n {
                    want_names.push(n[2..].to_string());
                }
            }
        }
        if !want_domains.is_empty() || !want_names.is_empty() {
            want_domains.sort();
            want_domains.dedup();
            want_names.sort();
            want_names.dedup();
            let mut a: Vec<Val> = Vec::new();
            let mut conds = Vec::new();
            if !want_domains.is_empty() {
                let ph: Vec<String> = want_domains
                    .iter()
                    .map(|d| {
                        a.push(d.into());
                        format!("${}", a.len())
                    })
                    .collect();
                conds.push(format!("domain IN ({})", ph.join(",")));
            }
            if !want_names.is_empty() {
                let ph: Vec<String> = want_names
                    .iter()
                    .map(|n| {
                        a.push(n.into());
                        format!("${}", a.len())
                    })
                    .collect();
                conds.push(format!("name_key IN ({})", ph.join(",")));
            }
            let sql = format!(
                "SELECT {} FROM companies WHERE {} ORDER BY id",
                companies::COLUMNS,
                conds.join(" OR ")
            );
            let rows: Vec<CompanyRow> = self.tx.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
            for r in rows {
                let c = Company::from(r);
                if let Some(d) = &c.domain {
                    self.company_keys.insert(format!("d:{d}"), c.id);
                }
                self.company_keys
                    .entry(format!("n:{}", c.name_key))
                    .or_insert(c.id);
                self.filled.insert(c.id, company_bits(&c));
            }
        }

        let mut out = Vec::with_capacity(items.len());
        let mut created: Vec<Company> = Vec::new();
        let mut fills: Vec<(Uuid, CompanyInput)> = Vec::new();
        for item in items {
            let Some(input) = &item.company else {
                out.push(None);
                continue;
            };
            let (d, n) = keys(input);
            let found = d
                .as_ref()
                .and_then(|k| self.company_keys.get(k))
                .or_else(|| n.as_ref().and_then(|k| self.company_keys.get(k)))
                .copied();
            match found {
                Some(id) => {
                    self.summary.companies_matched += 1;
                    if let Some(c) = created.iter_mut().find(|c| c.id == id) {
                        companies::apply(c, fill_input(input), true);
                    } else {
                        // Fill empty fields of an existing company, at most once per field
                        // and import: `filled` remembers which fields are known non-empty.
                        let have = self.filled.get(&id).copied().unwrap_or(0);
                        let give = provided_bits(input);
                        if give & !have != 0 {
                            fills.push((id, input.clone()));
                            self.filled.insert(id, have | give);
                        }
                    }
                    if let Some(d) = d {
                        self.company_keys.entry(d).or_insert(id);
                    }
                    out.push(Some(id));
                }
                None if !input.name.is_present() => {
                    // Only a domain was given and no company has it: nothing to link to.
                    out.push(None);
                }
                None => {
                    let c = new_company(input.clone(), self.now);
                    if let Some(d) = d {
                        self.company_keys.insert(d, c.id);
                    }
                    if let Some(n) = n {
                        self.company_keys.insert(n, c.id);
                    }
                    out.push(Some(c.id));
                    created.push(c);
                }
            }
        }
        for c in &created {
            companies::insert(&mut self.tx, c).await?;
            self.filled.insert(c.id, company_bits(c));
        }
        self.summary.companies_created += created.len() as u64;
        for (id, input) in fills {
            let v = |p: &Patch<String>| match p {
                Patch::Value(v) => Some(v.clone()),
                _ => None,
            };
            let n = |p: &Patch<i64>| match p {
                Patch::Value(v) => Some(*v),
                _ => None,
            };
            self.tx
                .execute(
                    "UPDATE companies SET industry = COALESCE(industry, $2), employee_count = COALESCE(employee_count, $3), annual_revenue = COALESCE(annual_revenue, $4), website = COALESCE(website, $5), phone = COALESCE(phone, $6), updated_at = $7 WHERE id = $1",
                    args![id, v(&input.industry), n(&input.employee_count), n(&input.annual_revenue), v(&input.website), v(&input.phone), self.now],
                )
                .await?;
        }
        Ok(out)
    }

    /// Commits everything and records the import. `skipped` are the row errors of rows left
    /// out with skip-invalid.
    pub async fn commit(
        mut self,
        started: DateTime<Utc>,
        skipped: Value,
        skipped_count: u64,
    ) -> Result<(Uuid, ImportSummary), StoreError> {
        self.summary.skipped = skipped_count;
        insert_record(
            &mut self.tx,
            self.id,
            "succeeded",
            &self.options,
            &self.summary,
            skipped,
            started,
            self.now,
        )
        .await?;
        self.tx.commit().await?;
        Ok((self.id, self.summary))
    }

    /// Abandons the import: nothing it wrote remains.
    pub async fn rollback(self) {
        drop(self.tx);
    }
}
