//! A tiny, forgiving URL reader: just enough to take the host out of a referrer or landing page
//! and the UTM parameters out of a query string. Attribution reads URLs sent by browsers and
//! SDKs, which may be relative, truncated or hostile, so every function here takes any `&str`,
//! never panics, and does work linear in its input. (The `url` crate would be stricter than
//! needed and is one more dependency for three functions.)

use encoding_rs::SHIFT_JIS;
use std::borrow::Cow;

/// The lower-cased host of an absolute (`scheme://host/…`) or protocol-relative (`//host/…`)
/// URL, without user info, port or trailing dot. `None` for relative URLs and empty hosts.
pub(crate) fn host(url: &str) -> Option<String> {
    let s = url.trim();
    let rest = match s.find("://") {
        // A scheme is letters, digits, `+`, `-`, `.`; anything else before `://` means this is
        // not a scheme (e.g. `/path?next=http://x`), so the URL is relative.
        Some(i)
            if i > 0
                && s[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) =>
        {
            &s[i + 3..]
        }
        _ => s.strip_prefix("//")?,
    };
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        // IPv6 literal: keep the brackets off, the colons in.
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        None
    } else {
        Some(host.to_ascii_lowercase())
    }
}

/// The query string of a URL (after the first `?`, before `#`), or the string itself when it is
/// already a query string (`?a=b` as in `location.search`, or bare `a=b`).
pub(crate) fn query(url_or_search: &str) -> &str {
    let s = url_or_search.trim();
    let s = s.split('#').next().unwrap_or("");
    match s.split_once('?') {
        Some((_, q)) => q,
        // No `?`: a bare query string only if it looks like one (has `=` and no path).
        None if s.contains('=') && !s.contains('/') => s,
        None => "",
    }
}

/// The decoded `name=value` pairs of a query string, in order. Pairs without `=` have an empty
/// value; empty pairs (`a=1&&b=2`) are skipped.
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (
            decode_component(k).into_owned(),
            decode_component(v).into_owned(),
        )
    })
}

/// Decodes one query-string component: `+` is a space, `%XX` is a byte; a `%` not followed by two
/// hex digits is kept as it is (browsers do the same). The bytes are read as UTF-8, or — when
/// they are not UTF-8 but are valid Shift_JIS, as some older Japanese sites still encode their
/// links — as Shift_JIS; failing both, invalid bytes become U+FFFD.
pub(crate) fn decode_component(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (
                b.get(i + 1).and_then(|&c| hex_val(c)),
                b.get(i + 2).and_then(|&c| hex_val(c)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => {
            let bytes = e.into_bytes();
            match SHIFT_JIS.decode_without_bom_handling_and_without_replacement(&bytes) {
                Some(sjis) => Cow::Owned(sjis.into_owned()),
                None => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
            }
        }
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether `host` is `domain` or a subdomain of it (`l.facebook.com` is `facebook.com`; but
/// `notfacebook.com` is not).
pub(crate) fn host_is(host: &str, domain: &str) -> bool {
    host == domain
        || (host.len() > domain.len()
            && host.ends_with(domain)
            && host.as_bytes()[host.len() - domain.len() - 1] == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hosts_of_absolute_and_protocol_relative_urls() {
        assert_eq!(
            host("https://www.Google.co.jp/search?q=x").as_deref(),
            Some("www.google.co.jp")
        );
        assert_eq!(
            host("http://user:pw@Example.com:8080/a").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            host("//cdn.example.com/x.js").as_deref(),
            Some("cdn.example.com")
        );
        assert_eq!(host("https://example.com.").as_deref(), Some("example.com"));
        assert_eq!(host("https://[::1]:8080/").as_deref(), Some("::1"));
        assert_eq!(
            host("android-app://com.google.android.googlequicksearchbox/").as_deref(),
            Some("com.google.android.googlequicksearchbox")
        );
        assert_eq!(
            host("https://example.com?x=1").as_deref(),
            Some("example.com")
        );
    }

    #[test]
    fn relative_and_broken_urls_have_no_host() {
        for u in [
            "/pricing",
            "pricing",
            "",
            "https://",
            "://x",
            "/a?next=http://x.com",
            "?",
        ] {
            assert_eq!(host(u), None, "{u:?}");
        }
    }

    #[test]
    fn query_from_url_search_or_bare() {
        assert_eq!(
            query("https://a.jp/p?utm_source=x&b=1#frag"),
            "utm_source=x&b=1"
        );
        assert_eq!(query("?utm_source=x"), "utm_source=x");
        assert_eq!(query("utm_source=x"), "utm_source=x");
        assert_eq!(query("https://a.jp/p"), "");
        assert_eq!(query("https://a.jp/p#x?y=1"), "");
    }

    #[test]
    fn percent_encoding_plus_and_japanese() {
        // 展示会 ("trade show"), as a browser encodes it in a UTM link.
        let pairs: Vec<_> =
            query_pairs("utm_campaign=%E5%B1%95%E7%A4%BA%E4%BC%9A&q=a+b%2Bc").collect();
        assert_eq!(
            pairs,
            vec![
                ("utm_campaign".into(), "展示会".into()),
                ("q".into(), "a b+c".into())
            ]
        );
    }

    #[test]
    fn malformed_percent_sequences_are_kept_literally() {
        assert_eq!(decode_component("100%"), "100%");
        assert_eq!(decode_component("%zz%4"), "%zz%4");
        // Neither UTF-8 nor Shift_JIS: replacement characters, not an error.
        assert_eq!(decode_component("%FF%FE"), "\u{fffd}\u{fffd}");
    }

    #[test]
    fn shift_jis_encoded_parameters_are_read_as_shift_jis() {
        // 展示会 in Shift_JIS: 93 57 8E A6 89 EF.
        assert_eq!(decode_component("%93W%8E%A6%89%EF"), "展示会");
    }

    #[test]
    fn pairs_without_values_and_empty_pairs() {
        let pairs: Vec<_> = query_pairs("a&&b=&=c").collect();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "".into()),
                ("b".into(), "".into()),
                ("".into(), "c".into())
            ]
        );
    }

    #[test]
    fn subdomain_matching_respects_label_boundaries() {
        assert!(host_is("facebook.com", "facebook.com"));
        assert!(host_is("l.facebook.com", "facebook.com"));
        assert!(!host_is("notfacebook.com", "facebook.com"));
        assert!(!host_is("com", "facebook.com"));
    }

    proptest! {
        // Hostile URLs come straight from request bodies: no input may panic.
        #[test]
        fn never_panics(s in ".*") {
            let _ = host(&s);
            let _ = query_pairs(query(&s)).count();
            let _ = decode_component(&s);
        }

        #[test]
        fn never_panics_on_percent_soup(s in "[%+0-9a-fA-F&=?#/:@\\[\\]]{0,40}") {
            let _ = host(&s);
            let _ = query_pairs(query(&s)).count();
        }
    }
}
