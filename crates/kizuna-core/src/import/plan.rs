//! Which column goes to which field: header matching, built-in aliases, `--map` overrides.

use crate::error::{ValidationError, ValidationErrors};
use crate::field::{FieldDefinition, FieldType};
use std::collections::HashMap;
use std::fmt;
use unicode_normalization::UnicodeNormalization;

/// Where the values of one column go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The contact's e-mail address (required: it is how duplicates are found).
    Email,
    /// Given name (名).
    FirstName,
    /// Family name (姓).
    LastName,
    /// Both names in one cell (氏名). Japanese order `姓 名` split on the first space (half or
    /// full width); a value of ASCII letters only is read as `First Last` (or `Last, First`);
    /// no space at all → all of it is the family name.
    FullName,
    /// Phone.
    Phone,
    /// Job title (役職).
    JobTitle,
    /// Department (部署).
    Department,
    /// 郵便番号 / ZIP.
    PostalCode,
    /// 都道府県 / state.
    Region,
    /// 市区町村 / city.
    City,
    /// Street, building, floor (住所).
    Street,
    /// Country code.
    Country,
    /// Funnel stage (`lead`, `mql`, …).
    LifecycleStage,
    /// `cold` / `warm` / `hot`.
    Temperature,
    /// Owning sales rep's id (a UUID).
    OwnerId,
    /// First-touch channel (`offline`, `referral`, …).
    SourceChannel,
    /// First-touch utm_source.
    UtmSource,
    /// First-touch utm_medium.
    UtmMedium,
    /// First-touch utm_campaign.
    UtmCampaign,
    /// The company's name (会社名).
    CompanyName,
    /// The company's domain.
    CompanyDomain,
    /// The company's industry (業種).
    CompanyIndustry,
    /// The company's head count (従業員数).
    CompanyEmployeeCount,
    /// The company's annual revenue (売上高).
    CompanyAnnualRevenue,
    /// The company's web site.
    CompanyWebsite,
    /// A custom field, by name.
    Custom(String),
    /// Not imported.
    Ignore,
}

/// Standard targets with their canonical names (also the export's column headers), in the order
/// error messages list them.
const STANDARD: &[(&str, Target)] = &[
    ("email", Target::Email),
    ("first_name", Target::FirstName),
    ("last_name", Target::LastName),
    ("full_name", Target::FullName),
    ("phone", Target::Phone),
    ("job_title", Target::JobTitle),
    ("department", Target::Department),
    ("company_name", Target::CompanyName),
    ("company_domain", Target::CompanyDomain),
    ("industry", Target::CompanyIndustry),
    ("employee_count", Target::CompanyEmployeeCount),
    ("annual_revenue", Target::CompanyAnnualRevenue),
    ("website", Target::CompanyWebsite),
    ("postal_code", Target::PostalCode),
    ("region", Target::Region),
    ("city", Target::City),
    ("street", Target::Street),
    ("country", Target::Country),
    ("lifecycle_stage", Target::LifecycleStage),
    ("temperature", Target::Temperature),
    ("owner_id", Target::OwnerId),
    ("source_channel", Target::SourceChannel),
    ("utm_source", Target::UtmSource),
    ("utm_medium", Target::UtmMedium),
    ("utm_campaign", Target::UtmCampaign),
];

/// Other spellings of standard names that `--map` and headers accept.
const SYNONYMS: &[(&str, Target)] = &[
    ("company", Target::CompanyName),
    ("company.name", Target::CompanyName),
    ("company.domain", Target::CompanyDomain),
    ("company_industry", Target::CompanyIndustry),
    ("company.industry", Target::CompanyIndustry),
    ("company.employee_count", Target::CompanyEmployeeCount),
    ("company.annual_revenue", Target::CompanyAnnualRevenue),
    ("company_website", Target::CompanyWebsite),
    ("company.website", Target::CompanyWebsite),
];

/// Headers that Japanese and English spreadsheets commonly use (compared after [`header_key`]).
const ALIASES: &[(&str, Target)] = &[
    ("会社名", Target::CompanyName),
    ("社名", Target::CompanyName),
    ("企業名", Target::CompanyName),
    ("会社", Target::CompanyName),
    ("company name", Target::CompanyName),
    ("organization", Target::CompanyName),
    ("部署", Target::Department),
    ("部署名", Target::Department),
    ("所属", Target::Department),
    ("役職", Target::JobTitle),
    ("役職名", Target::JobTitle),
    ("肩書", Target::JobTitle),
    ("肩書き", Target::JobTitle),
    ("job title", Target::JobTitle),
    ("title", Target::JobTitle),
    ("姓", Target::LastName),
    ("苗字", Target::LastName),
    ("名字", Target::LastName),
    ("last name", Target::LastName),
    ("family name", Target::LastName),
    ("surname", Target::LastName),
    ("名", Target::FirstName),
    ("first name", Target::FirstName),
    ("given name", Target::FirstName),
    ("氏名", Target::FullName),
    ("名前", Target::FullName),
    ("お名前", Target::FullName),
    ("name", Target::FullName),
    ("full name", Target::FullName),
    ("メールアドレス", Target::Email),
    ("メール", Target::Email),
    ("e-mail", Target::Email),
    ("eメール", Target::Email),
    ("mail", Target::Email),
    ("email address", Target::Email),
    ("e-mail address", Target::Email),
    ("電話番号", Target::Phone),
    ("電話", Target::Phone),
    ("tel", Target::Phone),
    ("携帯電話", Target::Phone),
    ("従業員数", Target::CompanyEmployeeCount),
    ("社員数", Target::CompanyEmployeeCount),
    ("業種", Target::CompanyIndustry),
    ("業界", Target::CompanyIndustry),
    ("郵便番号", Target::PostalCode),
    ("〒", Target::PostalCode),
    ("zip", Target::PostalCode),
    ("zip code", Target::PostalCode),
    ("postal code", Target::PostalCode),
    ("都道府県", Target::Region),
    ("市区町村", Target::City),
    ("住所", Target::Street),
    ("売上高", Target::CompanyAnnualRevenue),
    ("年商", Target::CompanyAnnualRevenue),
    ("url", Target::CompanyWebsite),
    ("ホームページ", Target::CompanyWebsite),
    ("webサイト", Target::CompanyWebsite),
];

impl Target {
    /// The canonical name: what `--map` accepts, error messages show and the export writes.
    pub fn name(&self) -> &str {
        match self {
            Target::Custom(n) => n,
            Target::Ignore => "-",
            t => STANDARD
                .iter()
                .find(|(_, s)| s == t)
                .map(|(n, _)| *n)
                .unwrap_or("-"),
        }
    }

    /// Whether this is a company field rather than a contact field.
    pub fn is_company(&self) -> bool {
        matches!(
            self,
            Target::CompanyName
                | Target::CompanyDomain
                | Target::CompanyIndustry
                | Target::CompanyEmployeeCount
                | Target::CompanyAnnualRevenue
                | Target::CompanyWebsite
        )
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The comparison form of a header or field name: NFKC (full-width ＥＭＡＩＬ, half-width ｶﾅ),
/// trimmed, lower-cased, without a BOM.
pub fn header_key(s: &str) -> String {
    s.trim_start_matches('\u{feff}')
        .nfkc()
        .collect::<String>()
        .trim()
        .to_lowercase()
}

/// A standard name or its synonym (`company.name`); also tries spaces and hyphens as `_`, so that
/// `Job Title` finds `job_title`.
pub(crate) fn standard_target(key: &str) -> Option<Target> {
    let find = |k: &str| {
        STANDARD
            .iter()
            .chain(SYNONYMS)
            .find(|(n, _)| *n == k)
            .map(|(_, t)| t.clone())
    };
    find(key).or_else(|| {
        if key.contains([' ', '-']) {
            find(&key.replace([' ', '-'], "_"))
        } else {
            None
        }
    })
}

fn alias_target(key: &str) -> Option<Target> {
    ALIASES
        .iter()
        .find(|(n, _)| *n == key)
        .map(|(_, t)| t.clone())
}

/// One column of the file and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedColumn {
    /// The header as written in the file (trimmed).
    pub header: String,
    /// 0-based position in the row.
    pub index: usize,
    /// Where its values go ([`Target::Ignore`] when nowhere).
    pub target: Target,
}

/// How the columns of one file map to fields. Built once per import from the header row.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    /// Every column of the file, in file order (`columns[i].index == i`).
    pub columns: Vec<PlannedColumn>,
    /// Headers that nothing maps (neither a field name, an alias, a custom field nor `--map`):
    /// they are not imported, which is not an error. Blank headers show as `(column N)`.
    pub ignored: Vec<String>,
    /// The definition of each column's custom field (`None` for other columns).
    pub(super) defs: Vec<Option<FieldDefinition>>,
}

impl ImportPlan {
    /// Maps `headers` (from the file) to fields. `explicit` are `--map COLUMN=FIELD` pairs, which
    /// win over matching by header; FIELD is a standard name (`email`, `company_name` or
    /// `company.name`, …), a custom field name (optionally `custom.NAME`), or `-` / `ignore`.
    /// Headers are otherwise matched, after [`header_key`], against standard names, then custom
    /// field names and labels, then built-in aliases (会社名, 氏名, メールアドレス, …).
    ///
    /// Errors name `map.<COLUMN>` for a bad `--map` (unknown column or field, a column mapped
    /// twice) or for two columns that would fill the same field, and `email` when no column
    /// holds e-mail addresses.
    pub fn build(
        headers: &[String],
        explicit: &[(String, String)],
        custom_fields: &HashMap<String, FieldDefinition>,
    ) -> Result<ImportPlan, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let keys: Vec<String> = headers.iter().map(|h| header_key(h)).collect();
        // Sorted so that two custom fields with one label resolve the same way every time.
        let mut defs_sorted: Vec<&FieldDefinition> = custom_fields.values().collect();
        defs_sorted.sort_by(|a, b| a.name.cmp(&b.name));

        let mut targets: Vec<Option<Target>> = vec![None; headers.len()];
        let mut explicit_cols: Vec<bool> = vec![false; headers.len()];
        for (column, field) in explicit {
            let path = format!("map.{column}");
            let target = match parse_field(field, custom_fields) {
                Some(t) => t,
                None => {
                    errs.push(ValidationError::new(
                        &path,
                        "unknown_field",
                        format!(
                            "{field:?} is not a field; use one of: {}",
                            valid_targets(&defs_sorted)
                        ),
                    ));
                    continue;
                }
            };
            // The exact header first, so that `--map " 会社名 "` can still pick one of two
            // headers that only differ in width or spaces.
            let mut found: Vec<usize> = (0..headers.len())
                .filter(|&i| headers[i] == *column)
                .collect();
            if found.is_empty() {
                let k = header_key(column);
                found = (0..headers.len()).filter(|&i| keys[i] == k).collect();
            }
            match found.as_slice() {
                [] => errs.push(ValidationError::new(
                    &path,
                    "unknown_column",
                    format!(
                        "the file has no column {column:?}; its columns are: {}",
                        quoted_list(headers)
                    ),
                )),
                [i] if explicit_cols[*i] => errs.push(ValidationError::new(
                    &path,
                    "duplicate_mapping",
                    format!("column {column:?} is mapped more than once"),
                )),
                [i] => {
                    targets[*i] = Some(target);
                    explicit_cols[*i] = true;
                }
                _ => errs.push(ValidationError::new(
                    &path,
                    "ambiguous_column",
                    format!(
                        "the file has {} columns named {column:?}; rename one in the file",
                        found.len()
                    ),
                )),
            }
        }

        for (i, key) in keys.iter().enumerate() {
            if targets[i].is_some() || key.is_empty() {
                continue;
            }
            targets[i] = standard_target(key)
                .or_else(|| custom_by_key(key, &defs_sorted))
                .or_else(|| alias_target(key));
        }

        let mut columns = Vec::with_capacity(headers.len());
        let mut ignored = Vec::new();
        let mut defs = Vec::with_capacity(headers.len());
        let mut first_of: HashMap<&Target, usize> = HashMap::new();
        for (i, header) in headers.iter().enumerate() {
            let target = match &targets[i] {
                Some(t) => t.clone(),
                None => {
                    ignored.push(if header.trim().is_empty() {
                        format!("(column {})", i + 1)
                    } else {
                        header.clone()
                    });
                    Target::Ignore
                }
            };
            if target != Target::Ignore {
                if let Some(&j) = first_of.get(&target) {
                    let (keep, drop) = if explicit_cols[i] && !explicit_cols[j] {
                        (&headers[i], &headers[j])
                    } else {
                        (&headers[j], &headers[i])
                    };
                    errs.push(ValidationError::new(
                        format!("map.{drop}"),
                        "duplicate_target",
                        format!(
                            "columns {keep:?} and {drop:?} both map to {target}; \
                             leave one out with --map {drop}=- or map it to another field"
                        ),
                    ));
                } else if let Some(t) = targets[i].as_ref() {
                    first_of.insert(t, i);
                }
            }
            defs.push(match &target {
                Target::Custom(n) => custom_fields.get(n).cloned(),
                _ => None,
            });
            columns.push(PlannedColumn {
                header: header.trim_start_matches('\u{feff}').trim().to_string(),
                index: i,
                target,
            });
        }
        if !columns.iter().any(|c| c.target == Target::Email) {
            errs.push(ValidationError::new(
                "email",
                "required",
                format!(
                    "no column holds e-mail addresses (needed to find duplicates); name it with \
                     --map COLUMN=email (the columns are: {})",
                    quoted_list(headers)
                ),
            ));
        }
        errs.into_result(ImportPlan {
            columns,
            ignored,
            defs,
        })
    }

    /// The column that feeds `target`, if any.
    pub fn column_for(&self, target: &Target) -> Option<&PlannedColumn> {
        self.columns.iter().find(|c| c.target == *target)
    }

    /// Whether column `i` holds a number (the only place an unquoted `1,200` can be repaired).
    pub(super) fn is_numeric(&self, i: usize) -> bool {
        match self.columns.get(i).map(|c| &c.target) {
            Some(Target::CompanyEmployeeCount | Target::CompanyAnnualRevenue) => true,
            Some(Target::Custom(_)) => self
                .defs
                .get(i)
                .and_then(Option::as_ref)
                .is_some_and(|d| d.field_type == FieldType::Number),
            _ => false,
        }
    }
}

fn custom_by_key(key: &str, defs: &[&FieldDefinition]) -> Option<Target> {
    let name = key.strip_prefix("custom.").unwrap_or(key);
    defs.iter()
        .find(|d| d.name == name)
        .or_else(|| defs.iter().find(|d| header_key(&d.label) == key))
        .map(|d| Target::Custom(d.name.clone()))
}

fn parse_field(field: &str, custom: &HashMap<String, FieldDefinition>) -> Option<Target> {
    let key = header_key(field);
    if key == "-" || key == "ignore" {
        return Some(Target::Ignore);
    }
    if let Some(t) = standard_target(&key) {
        return Some(t);
    }
    let name = key.strip_prefix("custom.").unwrap_or(&key);
    custom
        .contains_key(name)
        .then(|| Target::Custom(name.to_string()))
}

fn valid_targets(defs: &[&FieldDefinition]) -> String {
    let mut s: String = STANDARD
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ");
    s.push_str(" (company fields also as company.name, company.domain, …)");
    if defs.is_empty() {
        s.push_str(", a custom field name (none defined yet)");
    } else {
        s.push_str(", a custom field (");
        s.push_str(
            &defs
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
        s.push(')');
    }
    s.push_str(", or - to leave the column out");
    s
}

fn quoted_list(headers: &[String]) -> String {
    headers
        .iter()
        .map(|h| format!("{h:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn hs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn interest() -> HashMap<String, FieldDefinition> {
        let mut m = HashMap::new();
        m.insert(
            "interest".to_string(),
            FieldDefinition {
                name: "interest".into(),
                label: "関心度".into(),
                field_type: FieldType::SingleSelect,
                options: vec!["高".into(), "中".into(), "低".into()],
                created_at: Utc::now(),
            },
        );
        m
    }

    fn targets(p: &ImportPlan) -> Vec<Target> {
        p.columns.iter().map(|c| c.target.clone()).collect()
    }

    #[test]
    fn japanese_headers_map_by_alias() {
        let p = ImportPlan::build(
            &hs(&[
                "\u{feff}会社名",
                "部署",
                "役職",
                "姓",
                "名",
                "メールアドレス",
                "電話番号",
                "従業員数",
                "業種",
                "名刺交換日",
            ]),
            &[],
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(
            targets(&p),
            vec![
                Target::CompanyName,
                Target::Department,
                Target::JobTitle,
                Target::LastName,
                Target::FirstName,
                Target::Email,
                Target::Phone,
                Target::CompanyEmployeeCount,
                Target::CompanyIndustry,
                Target::Ignore,
            ]
        );
        assert_eq!(p.ignored, vec!["名刺交換日".to_string()]);
        assert_eq!(p.columns[0].header, "会社名");
    }

    #[test]
    fn standard_names_widths_and_spaces() {
        let p = ImportPlan::build(
            &hs(&[
                "ＥＭＡＩＬ",
                "Job Title",
                "company.name",
                " TEL ",
                "Ｅメール2",
            ]),
            &[],
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(
            targets(&p),
            vec![
                Target::Email,
                Target::JobTitle,
                Target::CompanyName,
                Target::Phone,
                Target::Ignore
            ]
        );
    }

    #[test]
    fn custom_fields_by_name_and_label() {
        let p = ImportPlan::build(&hs(&["email", "関心度"]), &[], &interest()).unwrap();
        assert_eq!(p.columns[1].target, Target::Custom("interest".into()));
        let p = ImportPlan::build(&hs(&["email", "custom.interest"]), &[], &interest()).unwrap();
        assert_eq!(p.columns[1].target, Target::Custom("interest".into()));
    }

    #[test]
    fn explicit_mapping_wins() {
        let p = ImportPlan::build(
            &hs(&["連絡先", "会社名", "アンケート:関心度"]),
            &[
                ("連絡先".into(), "email".into()),
                ("会社名".into(), "-".into()),
                ("アンケート:関心度".into(), "interest".into()),
            ],
            &interest(),
        )
        .unwrap();
        assert_eq!(
            targets(&p),
            vec![
                Target::Email,
                Target::Ignore,
                Target::Custom("interest".into())
            ]
        );
        // Explicitly left out is not "nobody maps it".
        assert!(p.ignored.is_empty());
    }

    #[test]
    fn explicit_mapping_errors_name_the_column() {
        let errs = ImportPlan::build(
            &hs(&["email", "会社名"]),
            &[
                ("部署".into(), "department".into()),
                ("会社名".into(), "compnay".into()),
            ],
            &interest(),
        )
        .unwrap_err();
        let by_field: HashMap<_, _> = errs.0.iter().map(|e| (e.field.as_str(), e)).collect();
        let col = by_field["map.部署"];
        assert_eq!(col.code, "unknown_column");
        assert!(col.message.contains("\"会社名\""), "{}", col.message);
        let field = by_field["map.会社名"];
        assert_eq!(field.code, "unknown_field");
        assert!(
            field.message.contains("company_name") && field.message.contains("interest"),
            "{}",
            field.message
        );
    }

    #[test]
    fn two_columns_for_one_field_is_an_error() {
        let errs = ImportPlan::build(
            &hs(&["email", "メール", "x"]),
            &[("x".into(), "email".into())],
            &HashMap::new(),
        )
        .unwrap_err();
        assert_eq!(errs.0.len(), 2, "{errs}");
        assert!(errs.0.iter().all(|e| e.code == "duplicate_target"));
        // The explicitly mapped column is the one kept.
        assert!(errs.0.iter().any(|e| e.field == "map.email"), "{errs}");
        assert!(errs.0.iter().any(|e| e.field == "map.メール"), "{errs}");
    }

    #[test]
    fn email_must_be_mapped() {
        let errs = ImportPlan::build(&hs(&["会社名", "氏名"]), &[], &HashMap::new()).unwrap_err();
        assert_eq!(errs.first().unwrap().field, "email");
        assert!(errs.first().unwrap().message.contains("--map"));
    }

    #[test]
    fn names_round_trip() {
        for (n, t) in STANDARD {
            assert_eq!(t.name(), *n);
            assert_eq!(standard_target(n).as_ref(), Some(t));
        }
        assert_eq!(
            parse_field("company.industry", &HashMap::new()),
            Some(Target::CompanyIndustry)
        );
        assert_eq!(parse_field("ignore", &HashMap::new()), Some(Target::Ignore));
        assert_eq!(parse_field("nope", &HashMap::new()), None);
    }
}
