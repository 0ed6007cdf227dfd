//! CSV export of contacts, for spreadsheets and for importing elsewhere (R-DATA-4).
//!
//! The headers are the field names that [`crate::import`] maps back, so an export re-imports
//! as is (`id`, `created_at` and `updated_at` are written for reference and ignored on import).
//!
//! **Formula injection.** A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (or a
//! tab / line break before one) as a formula, so a contact who typed `=HYPERLINK(…)` into a form
//! could attack whoever opens the export. Such cells are written with a leading `'`, which Excel
//! shows as text. The only exception is a plain number (`-5`, `+3.5`, `-1,200`), which no
//! spreadsheet can misuse and which should stay a number. Phone numbers such as
//! `+81-3-1234-5678` *are* guarded: Excel would otherwise compute them (81 − 3 − 1234 − 5678).
//! A value that itself starts with `'` before such a character gets one more `'`, and the
//! importer takes exactly one off, so export → import gives back the stored text.

use crate::company::Company;
use crate::contact::Contact;
use crate::import::header_key;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use std::fmt::Write as _;
use std::io::Write;

/// The standard columns, in order; custom field columns follow.
pub const COLUMNS: [&str; 25] = [
    "id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "job_title",
    "department",
    "company_name",
    "company_domain",
    "industry",
    "employee_count",
    "lifecycle_stage",
    "temperature",
    "owner_id",
    "source_channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "postal_code",
    "region",
    "city",
    "street",
    "country",
    "created_at",
    "updated_at",
];

/// Writes contacts as CSV, one row per contact.
pub struct ContactCsvWriter<W: Write> {
    csv: csv::Writer<W>,
    custom: Vec<String>,
    /// Scratch space for formatted and guarded cells, reused across cells.
    buf: String,
}

impl<W: Write> std::fmt::Debug for ContactCsvWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactCsvWriter")
            .field("custom", &self.custom)
            .finish_non_exhaustive()
    }
}

impl<W: Write> ContactCsvWriter<W> {
    /// Writes the header. `custom`: the custom field names to emit as columns, in order (headed
    /// by the name, or `custom.<name>` should a name clash with a standard column).
    /// `excel_bom`: start with a UTF-8 BOM, without which Excel reads UTF-8 as Shift_JIS and
    /// garbles Japanese.
    pub fn new(mut out: W, custom: Vec<String>, excel_bom: bool) -> Result<Self, csv::Error> {
        if excel_bom {
            out.write_all("\u{feff}".as_bytes())?;
        }
        let csv = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(out);
        let mut w = ContactCsvWriter {
            csv,
            custom,
            buf: String::new(),
        };
        for c in COLUMNS {
            w.csv.write_field(c)?;
        }
        for name in &w.custom {
            let key = header_key(name);
            let clash = crate::import::standard_target(&key).is_some()
                || COLUMNS.contains(&key.as_str())
                || matches!(key.as_str(), "-" | "ignore");
            if clash {
                w.csv.write_field(format!("custom.{name}"))?;
            } else {
                w.csv.write_field(name)?;
            }
        }
        w.csv.write_record(None::<&[u8]>)?;
        Ok(w)
    }

    /// Writes one contact, with its company (`None` leaves the company columns empty).
    pub fn write(
        &mut self,
        contact: &Contact,
        company: Option<&Company>,
    ) -> Result<(), csv::Error> {
        let c = contact;
        self.display(c.id)?;
        self.text(c.email.as_deref())?;
        self.text(c.first_name.as_deref())?;
        self.text(c.last_name.as_deref())?;
        self.text(c.phone.as_deref())?;
        self.text(c.job_title.as_deref())?;
        self.text(c.department.as_deref())?;
        self.text(company.map(|co| co.name.as_str()))?;
        self.text(company.and_then(|co| co.domain.as_deref()))?;
        self.text(company.and_then(|co| co.industry.as_deref()))?;
        match company.and_then(|co| co.employee_count) {
            Some(n) => self.display(n)?,
            None => self.csv.write_field("")?,
        }
        self.text(Some(c.lifecycle_stage.as_str()))?;
        self.text(Some(c.temperature.as_str()))?;
        match c.owner_id {
            Some(id) => self.display(id)?,
            None => self.csv.write_field("")?,
        }
        self.text(c.source.channel.as_deref())?;
        self.text(c.source.utm_source.as_deref())?;
        self.text(c.source.utm_medium.as_deref())?;
        self.text(c.source.utm_campaign.as_deref())?;
        self.text(c.address.postal_code.as_deref())?;
        self.text(c.address.region.as_deref())?;
        self.text(c.address.city.as_deref())?;
        self.text(c.address.street.as_deref())?;
        self.text(c.address.country.as_deref())?;
        self.time(c.created_at)?;
        self.time(c.updated_at)?;
        for i in 0..self.custom.len() {
            let v = c.custom.get(&self.custom[i]);
            self.buf.clear();
            match v {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    // Multi-select: the importer splits on `;`.
                    for (n, item) in items.iter().enumerate() {
                        if n > 0 {
                            self.buf.push_str("; ");
                        }
                        push_value(&mut self.buf, item);
                    }
                }
                Some(v) => push_value(&mut self.buf, v),
            }
            let cell = std::mem::take(&mut self.buf);
            self.text(Some(&cell))?;
            self.buf = cell;
        }
        self.csv.write_record(None::<&[u8]>)
    }

    /// Flushes and hands back the output.
    pub fn finish(self) -> Result<W, csv::Error> {
        self.csv.into_inner().map_err(|e| e.into_error().into())
    }

    fn text(&mut self, v: Option<&str>) -> Result<(), csv::Error> {
        let v = v.unwrap_or("");
        if needs_guard(v) {
            self.buf.clear();
            self.buf.push('\'');
            self.buf.push_str(v);
            self.csv.write_field(&self.buf)
        } else {
            self.csv.write_field(v)
        }
    }

    fn display(&mut self, v: impl std::fmt::Display) -> Result<(), csv::Error> {
        self.buf.clear();
        let _ = write!(self.buf, "{v}");
        self.csv.write_field(&self.buf)
    }

    fn time(&mut self, t: DateTime<Utc>) -> Result<(), csv::Error> {
        self.csv
            .write_field(t.to_rfc3339_opts(SecondsFormat::Secs, true))
    }
}

fn push_value(buf: &mut String, v: &Value) {
    match v {
        Value::String(s) => buf.push_str(s),
        Value::Null => {}
        other => {
            let _ = write!(buf, "{other}");
        }
    }
}

/// Whether a cell must be written with a leading `'` (see the module docs).
fn needs_guard(v: &str) -> bool {
    let mut chars = v.chars();
    match chars.next() {
        Some('\'') => chars
            .next()
            .is_some_and(|c| c == '\'' || crate::import::is_formula_trigger(c)),
        Some('+' | '-') => !is_plain_number(&v[1..]),
        Some(c) => crate::import::is_formula_trigger(c),
        None => false,
    }
}

/// `5`, `3.25`, `1,200`, `1,200.5` (after the sign).
fn is_plain_number(s: &str) -> bool {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int_ok = if int.contains(',') {
        let mut groups = int.split(',');
        let first = groups.next().unwrap_or("");
        (1..=3).contains(&first.len())
            && first.bytes().all(|b| b.is_ascii_digit())
            && groups.all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()))
    } else {
        !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit())
    };
    let frac_ok =
        !s.contains('.') || (!frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit()));
    int_ok && frac_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::{LifecycleStage, PostalAddress, Source, Temperature};
    use crate::field::{FieldDefinition, FieldType};
    use crate::import::{CsvContactReader, Encoding, ImportPlan, ImportRow};
    use crate::patch::Patch;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::HashMap;
    use uuid::Uuid;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 14, 9, 0, 0).unwrap()
    }

    fn defs() -> HashMap<String, FieldDefinition> {
        let mut m = HashMap::new();
        for (name, t, options) in [
            ("interest", FieldType::SingleSelect, vec!["高", "中", "低"]),
            ("products", FieldType::MultiSelect, vec!["MA", "CRM", "SFA"]),
            ("budget", FieldType::Number, vec![]),
            ("memo", FieldType::Text, vec![]),
        ] {
            m.insert(
                name.to_string(),
                FieldDefinition {
                    name: name.into(),
                    label: name.into(),
                    field_type: t,
                    options: options.into_iter().map(String::from).collect(),
                    created_at: now(),
                },
            );
        }
        m
    }

    fn yamada() -> (Contact, Company) {
        let mut c = Contact::new(Uuid::now_v7(), now());
        c.email = Some("taro.yamada@yamada-shoji.co.jp".into());
        c.first_name = Some("太郎".into());
        c.last_name = Some("山田".into());
        c.phone = Some("+81-3-1234-5678".into());
        c.job_title = Some("部長".into());
        c.department = Some("=HYPERLINK(\"http://evil.example\")".into());
        c.lifecycle_stage = LifecycleStage::Mql;
        c.temperature = Temperature::Hot;
        c.owner_id = Some(Uuid::now_v7());
        c.source = Source {
            channel: Some("offline".into()),
            utm_source: Some("tradeshow".into()),
            utm_medium: Some("booth".into()),
            utm_campaign: Some("2026-10".into()),
            ..Default::default()
        };
        c.address = PostalAddress {
            postal_code: Some("100-0001".into()),
            region: Some("東京都".into()),
            city: Some("千代田区".into()),
            street: Some("千代田1-1, 山田ビル 3F".into()),
            country: Some("JP".into()),
        };
        c.custom.insert("interest".into(), json!("高"));
        c.custom.insert("products".into(), json!(["MA", "CRM"]));
        c.custom.insert("budget".into(), json!(-5));
        c.custom
            .insert("memo".into(), json!("'=not a formula\n2行目"));
        let co = Company {
            id: Uuid::now_v7(),
            name: "株式会社山田商事".into(),
            name_key: "山田商事".into(),
            domain: Some("yamada-shoji.co.jp".into()),
            industry: Some("卸売業".into()),
            employee_count: Some(1200),
            annual_revenue: None,
            website: None,
            phone: None,
            created_at: now(),
            updated_at: now(),
        };
        (c, co)
    }

    fn export(rows: &[(Contact, Option<Company>)], bom: bool) -> Vec<u8> {
        let custom = vec![
            "interest".to_string(),
            "products".into(),
            "budget".into(),
            "memo".into(),
        ];
        let mut w = ContactCsvWriter::new(Vec::new(), custom, bom).unwrap();
        for (c, co) in rows {
            w.write(c, co.as_ref()).unwrap();
        }
        w.finish().unwrap()
    }

    fn reimport(bytes: &[u8]) -> (ImportPlan, Vec<ImportRow>) {
        let mut r = CsvContactReader::new(bytes, Encoding::Auto).unwrap();
        let plan = ImportPlan::build(r.headers(), &[], &defs()).unwrap();
        let mut out = Vec::new();
        while let Some(row) = r.next_row(&plan).unwrap() {
            out.push(row.unwrap_or_else(|e| panic!("{e:?}")));
        }
        (plan, out)
    }

    fn v<T: Clone>(p: &Patch<T>) -> Option<T> {
        match p {
            Patch::Value(x) => Some(x.clone()),
            _ => None,
        }
    }

    #[test]
    fn export_then_import_gives_the_same_values() {
        let (c1, co1) = yamada();
        let mut c2 = Contact::new(Uuid::now_v7(), now());
        c2.email = Some("john.smith@gmail.com".into());
        c2.first_name = Some("John".into());
        c2.last_name = Some("Smith".into());
        let bytes = export(&[(c1.clone(), Some(co1.clone())), (c2.clone(), None)], true);
        assert!(bytes.starts_with("\u{feff}id,email,".as_bytes()));
        let (plan, rows) = reimport(&bytes);
        assert_eq!(plan.ignored, vec!["id", "created_at", "updated_at"]);
        assert_eq!(rows.len(), 2);

        let (r1, r2) = (&rows[0], &rows[1]);
        assert_eq!(r1.row, 2);
        for (got, want) in [
            (&r1.contact.email, &c1.email),
            (&r1.contact.first_name, &c1.first_name),
            (&r1.contact.last_name, &c1.last_name),
            (&r1.contact.phone, &c1.phone),
            (&r1.contact.job_title, &c1.job_title),
            (&r1.contact.department, &c1.department),
        ] {
            assert_eq!(&v(got), want);
        }
        assert_eq!(v(&r1.contact.lifecycle_stage), Some(c1.lifecycle_stage));
        assert_eq!(v(&r1.contact.temperature), Some(c1.temperature));
        assert_eq!(v(&r1.contact.owner_id), c1.owner_id);
        assert_eq!(v(&r1.contact.source), Some(c1.source.clone()));
        assert_eq!(v(&r1.contact.address), Some(c1.address.clone()));
        assert_eq!(r1.contact.custom, c1.custom);
        let co = r1.company.as_ref().unwrap();
        assert_eq!(v(&co.name), Some(co1.name.clone()));
        assert_eq!(v(&co.domain), co1.domain.clone());
        assert_eq!(v(&co.industry), co1.industry.clone());
        assert_eq!(v(&co.employee_count), co1.employee_count);

        assert_eq!(v(&r2.contact.email), c2.email);
        assert_eq!(v(&r2.contact.first_name), c2.first_name);
        assert_eq!(v(&r2.contact.last_name), c2.last_name);
        assert_eq!(r2.contact.phone, Patch::Absent);
        assert!(r2.company.is_none());
        assert!(r2.contact.custom.is_empty());
    }

    #[test]
    fn formula_like_cells_are_guarded() {
        let (c, co) = yamada();
        let text = String::from_utf8(export(&[(c, Some(co))], false)).unwrap();
        assert!(!text.starts_with('\u{feff}'));
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let headers = r.headers().unwrap().clone();
        let rec = r.records().next().unwrap().unwrap();
        let get = |h: &str| {
            rec.get(headers.iter().position(|x| x == h).unwrap())
                .unwrap()
        };
        assert_eq!(get("department"), "'=HYPERLINK(\"http://evil.example\")");
        assert_eq!(get("phone"), "'+81-3-1234-5678");
        assert_eq!(get("budget"), "-5");
        assert_eq!(get("memo"), "''=not a formula\n2行目");
        assert_eq!(get("products"), "MA; CRM");
        assert_eq!(get("employee_count"), "1200");
        assert_eq!(get("created_at"), "2026-10-14T09:00:00Z");
        assert_eq!(get("job_title"), "部長");
    }

    #[test]
    fn guard_rules() {
        for s in [
            "=1+2",
            "@SUM(A1)",
            "+cmd|' /C calc'!A0",
            "-2+3",
            "\t=1",
            "＝1",
            "'=x",
            "''",
            "-",
            "+81 3 1234",
        ] {
            assert!(needs_guard(s), "{s}");
        }
        for s in [
            "",
            "abc",
            "-5",
            "+3.25",
            "-1,200",
            "-1,200.5",
            "03-1234-5678",
            "'abc",
            "'",
        ] {
            assert!(!needs_guard(s), "{s}");
        }
    }

    #[test]
    fn custom_names_that_clash_get_a_prefix() {
        let w = ContactCsvWriter::new(Vec::new(), vec!["tel".into(), "utm_source".into()], false)
            .unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        assert!(
            text.trim_end().ends_with(",tel,custom.utm_source"),
            "{text}"
        );
    }

    proptest! {
        #[test]
        fn any_text_round_trips(s in "\\PC{1,40}") {
            let s = s.trim().to_string();
            prop_assume!(!s.is_empty());
            let mut c = Contact::new(Uuid::now_v7(), now());
            c.email = Some("a@x.example.jp".into());
            c.job_title = Some(s.clone());
            c.custom.insert("memo".into(), json!(s.clone()));
            let (_, rows) = reimport(&export(&[(c, None)], true));
            prop_assert_eq!(v(&rows[0].contact.job_title), Some(s.clone()));
            prop_assert_eq!(rows[0].contact.custom.get("memo"), Some(&json!(s)));
        }
    }
}
