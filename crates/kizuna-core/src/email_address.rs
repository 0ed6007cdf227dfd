//! E-mail addresses: one person has one address however it was typed.

use crate::error::ValidationError;
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

/// Normalizes an address for storage and matching: NFKC (full-width letters and `＠` become
/// ASCII), trimmed, lower-cased. Returns an error naming `field` when it is not an address.
pub fn normalize_email(raw: &str, field: &str) -> Result<String, ValidationError> {
    let s: String = raw.nfkc().collect::<String>().trim().to_lowercase();
    validate_normalized(&s).map_err(|why| {
        ValidationError::new(
            field,
            "invalid_email",
            format!("{raw:?} is not an e-mail address: {why}"),
        )
    })?;
    Ok(s)
}

fn validate_normalized(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("it is empty");
    }
    if s.len() > 254 {
        return Err("it is longer than 254 characters");
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return Err("it has no @");
    };
    if local.is_empty() || local.len() > 64 {
        return Err("the part before @ must be 1 to 64 characters");
    }
    if local.contains('@') {
        return Err("it has more than one @");
    }
    if !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return Err("the domain is not valid");
    }
    if s.chars().any(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"' | '(' | ')')
    }) {
        return Err("it contains spaces or characters not allowed in an address");
    }
    if !domain
        .chars()
        .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
    {
        return Err("the domain is not valid");
    }
    Ok(())
}

/// The domain part of a normalized address.
pub fn domain_of(email: &str) -> Option<&str> {
    email.rsplit_once('@').map(|(_, d)| d)
}

/// Whether a domain belongs to a free or consumer mail service, which says nothing about the
/// person's company (so it must never be used to link a contact to a company).
pub fn is_free_mail_domain(domain: &str) -> bool {
    const FREE: &[&str] = &[
        "gmail.com",
        "googlemail.com",
        "yahoo.co.jp",
        "yahoo.com",
        "ymail.com",
        "hotmail.com",
        "hotmail.co.jp",
        "outlook.com",
        "outlook.jp",
        "live.com",
        "live.jp",
        "msn.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "aol.com",
        "protonmail.com",
        "proton.me",
        "gmx.com",
        "gmx.de",
        "mail.com",
        "zoho.com",
        "yandex.com",
        "docomo.ne.jp",
        "ezweb.ne.jp",
        "au.com",
        "softbank.ne.jp",
        "i.softbank.jp",
        "nifty.com",
        "biglobe.ne.jp",
        "ocn.ne.jp",
        "so-net.ne.jp",
        "excite.co.jp",
        "qq.com",
        "163.com",
        "naver.com",
    ];
    FREE.contains(&domain)
}

/// A one-way fingerprint of a normalized address, kept after erasure so that an erased person
/// is never mailed again, without keeping the address itself.
pub fn email_fingerprint(normalized: &str) -> String {
    hex::encode(Sha256::digest(normalized.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_lowercases() {
        assert_eq!(
            normalize_email(" Taro.Yamada@Yamada-Shoji.co.jp ", "email").unwrap(),
            "taro.yamada@yamada-shoji.co.jp"
        );
        assert_eq!(
            normalize_email("YUMI.KATO@ABC-SYSTEMS.EXAMPLE.JP", "email").unwrap(),
            "yumi.kato@abc-systems.example.jp"
        );
    }

    #[test]
    fn full_width_addresses_become_ascii() {
        assert_eq!(
            normalize_email("ｔａｒｏ＠ｅｘａｍｐｌｅ．ｊｐ", "email").unwrap(),
            "taro@example.jp"
        );
    }

    #[test]
    fn rejects_non_addresses_naming_the_field() {
        for bad in [
            "", "taro", "taro@", "@x.jp", "a@b", "a b@x.jp", "a@x..jp", "a@@x.jp",
        ] {
            let e = normalize_email(bad, "contacts.email").unwrap_err();
            assert_eq!(e.field, "contacts.email", "{bad}");
            assert_eq!(e.code, "invalid_email");
        }
    }

    #[test]
    fn free_mail_is_recognized() {
        assert!(is_free_mail_domain("gmail.com"));
        assert!(is_free_mail_domain("yahoo.co.jp"));
        assert!(!is_free_mail_domain("yamada-shoji.co.jp"));
    }

    #[test]
    fn fingerprint_is_stable_and_not_the_address() {
        let f = email_fingerprint("a@x.jp");
        assert_eq!(f, email_fingerprint("a@x.jp"));
        assert_eq!(f.len(), 64);
        assert!(!f.contains("x.jp"));
    }
}
