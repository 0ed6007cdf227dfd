//! Companies (accounts) and 名寄せ: recognising one company however its name was written.

use crate::error::{ValidationError, ValidationErrors};
use crate::patch::Patch;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

/// A company (account) that contacts belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Company {
    /// Identifier (UUIDv7).
    pub id: Uuid,
    /// Display name as first written, e.g. `株式会社山田商事`.
    pub name: String,
    /// Key used for matching: see [`normalize_company_name`].
    pub name_key: String,
    /// Main e-mail/web domain, e.g. `yamada-shoji.co.jp`; used to join contacts to the company.
    pub domain: Option<String>,
    /// Industry, free text or a value from the customer's own list (e.g. `製造業`).
    pub industry: Option<String>,
    /// Number of employees.
    pub employee_count: Option<i64>,
    /// Annual revenue in the account's currency unit (yen by default).
    pub annual_revenue: Option<i64>,
    /// Web site URL.
    pub website: Option<String>,
    /// Phone number of the main office.
    pub phone: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// The writable fields of a company (create, or patch on update).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompanyInput {
    /// Display name (required on create).
    #[serde(default)]
    pub name: Patch<String>,
    /// Domain (a bare host name; `https://` and `www.` are stripped).
    #[serde(default)]
    pub domain: Patch<String>,
    /// Industry.
    #[serde(default)]
    pub industry: Patch<String>,
    /// Employees (≥ 0).
    #[serde(default)]
    pub employee_count: Patch<i64>,
    /// Annual revenue (≥ 0).
    #[serde(default)]
    pub annual_revenue: Patch<i64>,
    /// Web site.
    #[serde(default)]
    pub website: Patch<String>,
    /// Phone.
    #[serde(default)]
    pub phone: Patch<String>,
}

impl CompanyInput {
    /// Checks values and normalizes the domain; `creating` requires a name.
    pub fn validate(mut self, creating: bool) -> Result<Self, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        match &self.name {
            Patch::Value(n) if n.trim().is_empty() => errs.push(ValidationError::new(
                "name",
                "required",
                "name must not be empty",
            )),
            Patch::Value(n) if n.chars().count() > 200 => errs.push(ValidationError::new(
                "name",
                "too_long",
                "name is longer than 200 characters",
            )),
            Patch::Null => errs.push(ValidationError::new(
                "name",
                "required",
                "name cannot be cleared",
            )),
            Patch::Absent if creating => {
                errs.push(ValidationError::new("name", "required", "name is required"))
            }
            _ => {}
        }
        if let Patch::Value(d) = &self.domain {
            match normalize_domain(d) {
                Some(n) => self.domain = Patch::Value(n),
                None => errs.push(ValidationError::new(
                    "domain",
                    "invalid_domain",
                    format!("{d:?} is not a domain name"),
                )),
            }
        }
        for (field, v) in [
            ("employee_count", &self.employee_count),
            ("annual_revenue", &self.annual_revenue),
        ] {
            if let Patch::Value(n) = v
                && *n < 0
            {
                errs.push(ValidationError::new(
                    field,
                    "out_of_range",
                    format!("{field} must not be negative"),
                ));
            }
        }
        errs.into_result(self)
    }
}

/// Normalizes a domain or URL to a bare lower-case host: `https://www.Example.co.jp/about` →
/// `example.co.jp`. `None` when it is not a host name.
pub fn normalize_domain(raw: &str) -> Option<String> {
    let mut s: String = raw.nfkc().collect::<String>().trim().to_lowercase();
    for prefix in ["https://", "http://"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest.to_string();
        }
    }
    let host = s.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    let host = host.strip_prefix("www.").unwrap_or(host);
    let ok = host.contains('.')
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    ok.then(|| host.to_string())
}

/// Japanese and international legal-form words that do not distinguish one company from another.
const LEGAL_FORMS: &[&str] = &[
    "株式会社",
    "有限会社",
    "合同会社",
    "合資会社",
    "合名会社",
    "一般社団法人",
    "一般財団法人",
    "公益社団法人",
    "公益財団法人",
    "特定非営利活動法人",
    "npo法人",
    "医療法人",
    "社会福祉法人",
    "学校法人",
    "(株)",
    "(有)",
    "(同)",
    "(社)",
    "(財)",
    "(医)",
];
const LATIN_LEGAL_FORMS: &[&str] = &[
    "co., ltd.",
    "co.,ltd.",
    "co. ltd.",
    "co.ltd.",
    "co., ltd",
    "co.,ltd",
    "corporation",
    "corp.",
    "corp",
    "inc.",
    "inc",
    "ltd.",
    "ltd",
    "llc",
    "l.l.c.",
    "k.k.",
    "kk",
    "gmbh",
    "plc",
];

/// The matching key of a company name (名寄せ): NFKC (full-width ＡＢＣ and half-width ｶﾅ unified,
/// ㈱ → (株)), case-folded, legal forms such as 株式会社 / (株) / Co., Ltd. removed wherever they
/// stand, spaces and punctuation dropped. `株式会社山田商事`, `(株)山田商事`, `山田商事株式会社` and
/// `株式会社 山田商事` all give `山田商事`.
pub fn normalize_company_name(raw: &str) -> String {
    let mut s: String = raw.nfkc().collect::<String>().to_lowercase();
    // NFKC turns ㈱ into "(株)"; full-width parentheses become ASCII too.
    for form in LEGAL_FORMS {
        s = s.replace(form, " ");
    }
    let mut words: Vec<&str> = s.split_whitespace().collect();
    // Latin legal forms only count as whole trailing/leading words ("Inc" inside "Incubate" stays).
    let mut joined = words.join(" ");
    loop {
        let before = joined.clone();
        for form in LATIN_LEGAL_FORMS {
            if let Some(rest) = joined.strip_suffix(form)
                && (rest.is_empty() || rest.ends_with([' ', ',']))
            {
                joined = rest.trim_end_matches([' ', ',']).to_string();
            }
        }
        if joined == before {
            break;
        }
    }
    words = joined.split_whitespace().collect();
    words
        .concat()
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_legal_forms_in_any_position_and_width() {
        let key = normalize_company_name("株式会社山田商事");
        assert_eq!(key, "山田商事");
        for v in [
            "(株)山田商事",
            "山田商事株式会社",
            "株式会社 山田商事",
            "（株）山田商事",
            "山田商事 ㈱",
        ] {
            assert_eq!(normalize_company_name(v), key, "{v}");
        }
        assert_eq!(
            normalize_company_name("㈱鈴木製作所"),
            normalize_company_name("株式会社 鈴木製作所")
        );
        assert_eq!(
            normalize_company_name("株式会社ＡＢＣシステムズ"),
            normalize_company_name("ABCシステムズ株式会社")
        );
        assert_eq!(
            normalize_company_name("ｶﾌﾞｼｷｶﾞｲｼｬ"),
            normalize_company_name("カブシキガイシャ")
        );
    }

    #[test]
    fn latin_legal_forms_only_as_whole_words() {
        assert_eq!(
            normalize_company_name("Global Trade Co., Ltd."),
            "globaltrade"
        );
        assert_eq!(normalize_company_name("GLOBAL TRADE INC"), "globaltrade");
        assert_eq!(
            normalize_company_name("Incubate Partners"),
            "incubatepartners"
        );
    }

    #[test]
    fn different_companies_stay_different() {
        assert_ne!(
            normalize_company_name("株式会社山田商事"),
            normalize_company_name("株式会社山田商会")
        );
    }

    #[test]
    fn domains_are_bare_hosts() {
        assert_eq!(
            normalize_domain("https://www.Example.co.jp/about").as_deref(),
            Some("example.co.jp")
        );
        assert_eq!(
            normalize_domain("yamada-shoji.co.jp").as_deref(),
            Some("yamada-shoji.co.jp")
        );
        assert_eq!(normalize_domain("not a domain"), None);
        assert_eq!(normalize_domain("localhost"), None);
    }

    #[test]
    fn create_requires_a_name() {
        let e = CompanyInput::default().validate(true).unwrap_err();
        assert_eq!(e.first().unwrap().field, "name");
        assert!(CompanyInput::default().validate(false).is_ok());
    }
}
