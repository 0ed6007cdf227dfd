//! One data row → a validated contact (and company), or every problem of the row.

use super::plan::{ImportPlan, Target};
use crate::company::CompanyInput;
use crate::contact::{ContactInput, MAX_TEXT_LEN, PostalAddress, Source};
use crate::email_address::{domain_of, is_free_mail_domain};
use crate::field::{FieldType, parse_integer, parse_text};
use crate::patch::Patch;
use csv::StringRecord;
use serde::Serialize;
use std::fmt;
use uuid::Uuid;

/// A data row that passed validation.
#[derive(Debug, Clone)]
pub struct ImportRow {
    /// Spreadsheet row number: the header is row 1, the first data row is row 2 (blank lines
    /// count, as they do in a spreadsheet; a cell with line breaks is still one row).
    pub row: u64,
    /// The contact, already through [`ContactInput::validate`]: `email` is always a
    /// normalized `Patch::Value`; empty cells are `Patch::Absent` (an import never clears).
    pub contact: ContactInput,
    /// The company, through [`CompanyInput::validate`]; present when the row names a company or a
    /// company domain. `name` is a `Patch::Value` except when the row gave only a company domain
    /// (then link to the company with that domain; do not create one). Without a domain column
    /// the domain comes from the e-mail address, unless that is free mail (gmail.com, …).
    pub company: Option<CompanyInput>,
    /// What was repaired on the way (e.g. an unquoted thousands separator), for the report.
    pub notes: Vec<String>,
}

impl ImportRow {
    /// The normalized e-mail address (every imported row has one).
    pub fn email(&self) -> &str {
        match &self.contact.email {
            Patch::Value(e) => e,
            _ => "",
        }
    }
}

/// One problem with one row, for the per-row error report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// Spreadsheet row number (header = 1, first data row = 2).
    pub row: u64,
    /// The column's header, when the problem is in one cell.
    pub column: Option<String>,
    /// The offending cell value.
    pub value: Option<String>,
    /// A human sentence saying what is wrong and, where possible, how to fix it.
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}", self.row)?;
        if let Some(c) = &self.column {
            write!(f, ", column {c:?}")?;
        }
        if let Some(v) = &self.value {
            write!(f, " (value {v:?})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Characters that make a spreadsheet treat a cell as a formula. The export prefixes such cells
/// with `'`; [`clean`] takes that apostrophe off again so export → import round-trips.
pub(crate) fn is_formula_trigger(c: char) -> bool {
    matches!(
        c,
        '=' | '+' | '-' | '@' | '\t' | '\r' | '\n' | '＝' | '＋' | '－' | '＠'
    )
}

/// A cell as a value: trimmed, and without the `'` that guards a formula-like value (or another
/// such apostrophe) against spreadsheet evaluation.
pub(crate) fn clean(raw: &str) -> &str {
    let t = raw.trim();
    if let Some(rest) = t.strip_prefix('\'')
        && rest.starts_with(|c: char| c == '\'' || is_formula_trigger(c))
    {
        return rest;
    }
    t
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || ('０'..='９').contains(&c)
}

/// Fixes a row that is longer than the header only because a number was written with an unquoted
/// thousands separator (`…,1,200,…`), when exactly one numeric column could have been split.
/// Returns the repaired record and a note, or `None` when that is not unambiguously the case.
pub(super) fn repair_thousands(
    plan: &ImportPlan,
    rec: &StringRecord,
) -> Option<(StringRecord, String)> {
    let h = plan.columns.len();
    let k = rec.len().checked_sub(h).filter(|&k| k > 0)?;
    let digits = |s: &str, min: usize, max: usize| {
        let n = s.chars().count();
        (min..=max).contains(&n) && s.chars().all(is_digit)
    };
    let mut found = None;
    for i in 0..h {
        if !plan.is_numeric(i) {
            continue;
        }
        let head = rec.get(i).unwrap_or("").trim();
        let split = digits(head, 1, 3)
            && (1..=k).all(|j| digits(rec.get(i + j).unwrap_or("").trim(), 3, 3));
        if split {
            if found.is_some() {
                return None;
            }
            found = Some(i);
        }
    }
    let i = found?;
    let joined = (i..=i + k)
        .map(|j| rec.get(j).unwrap_or("").trim())
        .collect::<Vec<_>>()
        .join(",");
    let mut out = StringRecord::with_capacity(rec.as_slice().len() + k, h);
    for j in 0..i {
        out.push_field(rec.get(j).unwrap_or(""));
    }
    out.push_field(&joined);
    for j in i + k + 1..rec.len() {
        out.push_field(rec.get(j).unwrap_or(""));
    }
    let note = format!(
        "repaired an unquoted thousands separator in {}: {joined}",
        plan.columns[i].header
    );
    Some((out, note))
}

/// The reason for a row whose length does not match the header.
pub(super) fn count_mismatch(row: u64, got: usize, want: usize) -> RowError {
    let hint = if got > want {
        "a value that contains a comma (such as 1,200 or an address) must be in double quotes; \
         or remove the extra comma"
    } else {
        "a comma is missing, or a line break inside a cell split the row (put such a cell in \
         double quotes)"
    };
    RowError {
        row,
        column: None,
        value: None,
        reason: format!("the row has {got} values but the header has {want} columns: {hint}"),
    }
}

/// [`parse_integer`], without its Unicode normalization when the cell is plain ASCII digits.
fn parse_count(v: &str) -> Option<i64> {
    if !v.is_empty() && v.len() <= 18 && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok();
    }
    parse_integer(v)
}

/// Whether an e-mail domain (already normalized) is a host name that
/// [`crate::company::normalize_domain`] accepts unchanged, so it can be the company's domain.
fn is_plain_host(d: &str) -> bool {
    d.contains('.')
        && !d.starts_with(['.', '-'])
        && !d.ends_with(['.', '-'])
        && !d.starts_with("www.")
        && d.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Splits 氏名 into (last, first).
pub(super) fn split_full_name(v: &str) -> (&str, Option<&str>) {
    let western = v
        .chars()
        .all(|c| c.is_ascii_alphabetic() || matches!(c, ' ' | '.' | '-' | '\'' | ','));
    if western {
        if let Some((last, first)) = v.split_once(',') {
            // "Smith, John"
            let (last, first) = (last.trim(), first.trim());
            return (last, (!first.is_empty()).then_some(first));
        }
        if let Some((first, last)) = v.rsplit_once(' ') {
            // "John Smith", "Mary Ann Smith": middle names stay with the given name.
            return (last.trim(), Some(first.trim()).filter(|f| !f.is_empty()));
        }
        return (v, None);
    }
    match v.split_once([' ', '\u{3000}']) {
        Some((last, first)) => {
            let first = first.trim();
            (last, (!first.is_empty()).then_some(first))
        }
        None => (v, None),
    }
}

/// Where a contact field came from, for naming the column in errors that validation reports.
#[derive(Default)]
struct Origins {
    email: Option<usize>,
    first_name: Option<usize>,
    last_name: Option<usize>,
    phone: Option<usize>,
    job_title: Option<usize>,
    department: Option<usize>,
}

/// Maps and validates one record (already of the header's length).
pub(super) fn map_row(
    plan: &ImportPlan,
    rec: &StringRecord,
    row: u64,
    mut notes: Vec<String>,
    mut errors: Vec<RowError>,
) -> Result<ImportRow, Vec<RowError>> {
    let mut contact = ContactInput::default();
    let mut company = CompanyInput::default();
    let mut address = PostalAddress::default();
    let mut source = Source::default();
    let mut origins = Origins::default();
    let mut full_name: Option<(&str, usize)> = None;
    let mut company_cols = [None::<usize>; 4]; // name, domain, employee_count, annual_revenue

    let err = |errors: &mut Vec<RowError>, i: usize, value: &str, reason: String| {
        errors.push(RowError {
            row,
            column: Some(plan.columns[i].header.clone()),
            value: Some(value.to_string()),
            reason,
        });
    };
    let text = |v: &str| Patch::Value(v.to_string());

    for (i, col) in plan.columns.iter().enumerate() {
        let v = clean(rec.get(i).unwrap_or(""));
        if v.is_empty() {
            continue;
        }
        match &col.target {
            Target::Ignore => {}
            Target::Email => {
                contact.email = text(v);
                origins.email = Some(i);
            }
            Target::FirstName => {
                contact.first_name = text(v);
                origins.first_name = Some(i);
            }
            Target::LastName => {
                contact.last_name = text(v);
                origins.last_name = Some(i);
            }
            Target::FullName => full_name = Some((v, i)),
            Target::Phone => {
                contact.phone = text(v);
                origins.phone = Some(i);
            }
            Target::JobTitle => {
                contact.job_title = text(v);
                origins.job_title = Some(i);
            }
            Target::Department => {
                contact.department = text(v);
                origins.department = Some(i);
            }
            Target::PostalCode => address.postal_code = Some(v.to_string()),
            Target::Region => address.region = Some(v.to_string()),
            Target::City => address.city = Some(v.to_string()),
            Target::Street => address.street = Some(v.to_string()),
            Target::Country => address.country = Some(v.to_string()),
            Target::LifecycleStage => match v.parse() {
                Ok(s) => contact.lifecycle_stage = Patch::Value(s),
                Err(e) => err(&mut errors, i, v, e.message),
            },
            Target::Temperature => match v.parse() {
                Ok(t) => contact.temperature = Patch::Value(t),
                Err(e) => err(&mut errors, i, v, e.message),
            },
            Target::OwnerId => match Uuid::parse_str(v) {
                Ok(u) => contact.owner_id = Patch::Value(u),
                Err(_) => err(&mut errors, i, v, format!("{v:?} is not a user id (UUID)")),
            },
            Target::SourceChannel => source.channel = Some(v.to_string()),
            Target::UtmSource => source.utm_source = Some(v.to_string()),
            Target::UtmMedium => source.utm_medium = Some(v.to_string()),
            Target::UtmCampaign => source.utm_campaign = Some(v.to_string()),
            Target::CompanyName => {
                company.name = text(v);
                company_cols[0] = Some(i);
            }
            Target::CompanyDomain => {
                company.domain = text(v);
                company_cols[1] = Some(i);
            }
            Target::CompanyIndustry => company.industry = text(v),
            Target::CompanyWebsite => company.website = text(v),
            Target::CompanyEmployeeCount | Target::CompanyAnnualRevenue => {
                let Some(n) = parse_count(v) else {
                    err(
                        &mut errors,
                        i,
                        v,
                        format!("{v:?} is not a whole number (write e.g. 1200 or 1,200)"),
                    );
                    continue;
                };
                if col.target == Target::CompanyEmployeeCount {
                    company.employee_count = Patch::Value(n);
                    company_cols[2] = Some(i);
                } else {
                    company.annual_revenue = Patch::Value(n);
                    company_cols[3] = Some(i);
                }
            }
            Target::Custom(name) => {
                let Some(def) = plan.defs.get(i).and_then(Option::as_ref) else {
                    continue;
                };
                // The exact option is the common case; parse_text's NFKC is for the rest.
                let exact = (def.field_type == FieldType::SingleSelect)
                    .then(|| def.options.iter().find(|o| o.as_str() == v))
                    .flatten()
                    .map(|o| Ok(serde_json::Value::String(o.clone())));
                match exact.unwrap_or_else(|| parse_text(def, v)) {
                    Ok(value) => {
                        if def.field_type == FieldType::Text && v.chars().count() > MAX_TEXT_LEN {
                            err(
                                &mut errors,
                                i,
                                v,
                                format!("longer than {MAX_TEXT_LEN} characters"),
                            );
                        } else {
                            contact.custom.insert(name.clone(), value);
                        }
                    }
                    Err(msg) => err(&mut errors, i, v, msg),
                }
            }
        }
    }

    // 氏名 only fills names the row does not give in their own columns.
    if let Some((v, i)) = full_name
        && origins.first_name.is_none()
        && origins.last_name.is_none()
    {
        let (last, first) = split_full_name(v);
        contact.last_name = text(last);
        origins.last_name = Some(i);
        if let Some(f) = first {
            contact.first_name = text(f);
            origins.first_name = Some(i);
        }
    }
    if !address.is_empty() {
        contact.address = Patch::Value(address);
    }
    if !source.is_empty() {
        contact.source = Patch::Value(source);
    }
    if origins.email.is_none() {
        errors.push(RowError {
            row,
            column: plan.column_for(&Target::Email).map(|c| c.header.clone()),
            value: None,
            reason: "no e-mail address; every row needs one (it is how duplicates are found)"
                .into(),
        });
    }

    let cell = |i: Option<usize>| i.map(|i| clean(rec.get(i).unwrap_or("")).to_string());
    let header = |i: Option<usize>| i.map(|i| plan.columns[i].header.clone());
    let contact = match contact.validate() {
        Ok(c) => Some(c),
        Err(errs) => {
            for e in errs.0 {
                let i = match e.field.as_str() {
                    "email" => origins.email,
                    "first_name" => origins.first_name,
                    "last_name" => origins.last_name,
                    "phone" => origins.phone,
                    "job_title" => origins.job_title,
                    "department" => origins.department,
                    _ => None,
                };
                errors.push(RowError {
                    row,
                    column: header(i),
                    value: cell(i),
                    reason: e.message,
                });
            }
            None
        }
    };

    let has_company = company.name.is_present() || company.domain.is_present();
    let company = if has_company {
        let creating = company.name.is_present();
        if !company.domain.is_present() {
            // No domain column: the e-mail's domain is the company's, unless it is free mail.
            let derived = contact
                .as_ref()
                .and_then(|c| match &c.email {
                    Patch::Value(e) => domain_of(e),
                    _ => None,
                })
                .filter(|d| !is_free_mail_domain(d) && is_plain_host(d));
            if let Some(d) = derived {
                company.domain = Patch::Value(d.to_string());
            }
        }
        match company.validate(creating) {
            Ok(c) => Some(c),
            Err(errs) => {
                for e in errs.0 {
                    let i = match e.field.as_str() {
                        "name" => company_cols[0],
                        "domain" => company_cols[1],
                        "employee_count" => company_cols[2],
                        "annual_revenue" => company_cols[3],
                        _ => None,
                    };
                    errors.push(RowError {
                        row,
                        column: header(i),
                        value: cell(i),
                        reason: e.message,
                    });
                }
                None
            }
        }
    } else {
        let given = company.industry.is_present()
            || company.employee_count.is_present()
            || company.annual_revenue.is_present()
            || company.website.is_present();
        if given {
            notes.push("company details left out: the row names no company".into());
        }
        None
    };

    match contact {
        Some(contact) if errors.is_empty() => Ok(ImportRow {
            row,
            contact,
            company,
            notes,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_names_japanese_and_western() {
        assert_eq!(split_full_name("山田 太郎"), ("山田", Some("太郎")));
        assert_eq!(split_full_name("山田　太郎"), ("山田", Some("太郎")));
        assert_eq!(split_full_name("山田　 太郎"), ("山田", Some("太郎")));
        assert_eq!(split_full_name("山田太郎"), ("山田太郎", None));
        assert_eq!(split_full_name("John Smith"), ("Smith", Some("John")));
        assert_eq!(
            split_full_name("Mary Ann Smith"),
            ("Smith", Some("Mary Ann"))
        );
        assert_eq!(split_full_name("Smith, John"), ("Smith", Some("John")));
        assert_eq!(split_full_name("Madonna"), ("Madonna", None));
        // Romanized Japanese in Japanese order is indistinguishable; read as Western.
        assert_eq!(split_full_name("Taro Yamada"), ("Yamada", Some("Taro")));
    }

    #[test]
    fn clean_trims_and_takes_off_formula_guards() {
        assert_eq!(clean("  山田 "), "山田");
        assert_eq!(clean("'=1+2"), "=1+2");
        assert_eq!(clean("'+81-3-1234-5678"), "+81-3-1234-5678");
        assert_eq!(clean("''=x"), "'=x");
        assert_eq!(clean("'0312345678"), "'0312345678");
        assert_eq!(clean("'"), "'");
    }
}
