//! First-touch attribution (R-DATA-1, issue 3 item 5): where did this visit come from? UTM
//! parameters, the referrer and the landing page of a message, and the channel class that the
//! source reports group by.

use super::message::{Message, MessageType};
use super::url;
use crate::contact::Source;
use serde_json::{Map, Value};

/// Channel: a search engine's unpaid results.
pub const ORGANIC_SEARCH: &str = "organic_search";
/// Channel: search ads (cpc/ppc, or an ad click id such as `gclid`).
pub const PAID_SEARCH: &str = "paid_search";
/// Channel: social networks, paid or not.
pub const SOCIAL: &str = "social";
/// Channel: e-mail and newsletters (メルマガ).
pub const EMAIL: &str = "email";
/// Channel: a link on another site.
pub const REFERRAL: &str = "referral";
/// Channel: typed, bookmarked, or nothing known.
pub const DIRECT: &str = "direct";
/// Channel: trade shows, seminars, print, direct mail (a QR code or printed URL with UTM tags).
pub const OFFLINE: &str = "offline";

const OFFLINE_MEDIA: &[&str] = &[
    "offline",
    "tradeshow",
    "trade_show",
    "trade-show",
    "exhibition",
    "event",
    "events",
    "seminar",
    "print",
    "dm",
    "direct_mail",
    "directmail",
    "flyer",
    "qr",
    "qrcode",
    "展示会",
    "セミナー",
    "チラシ",
];
const PAID_MEDIA: &[&str] = &[
    "cpc",
    "ppc",
    "paid",
    "paidsearch",
    "paid_search",
    "paid-search",
    "paid search",
    "sem",
];
const EMAIL_MEDIA: &[&str] = &[
    "email",
    "e-mail",
    "e_mail",
    "mail",
    "newsletter",
    "mailmagazine",
    "mail_magazine",
    "mailmag",
    "merumaga",
    "メルマガ",
    "メール",
];
const SOCIAL_MEDIA: &[&str] = &[
    "social",
    "sns",
    "social_network",
    "social-network",
    "socialnetwork",
    "social_media",
    "social-media",
    "socialmedia",
    "paid_social",
    "paid-social",
    "paidsocial",
];
/// `utm_source` values that name a social network.
const SOCIAL_SOURCES: &[&str] = &[
    "facebook",
    "fb",
    "instagram",
    "ig",
    "twitter",
    "x",
    "linkedin",
    "line",
    "youtube",
    "tiktok",
    "note",
    "threads",
    "pinterest",
    "reddit",
    "hatena",
];
/// `utm_source` values that name a newsletter when the medium is missing.
const EMAIL_SOURCES: &[&str] = &["newsletter", "email", "mailmagazine", "メルマガ"];
/// Referrer domains of social networks (subdomains included).
const SOCIAL_HOSTS: &[&str] = &[
    "facebook.com",
    "fb.com",
    "fb.me",
    "instagram.com",
    "x.com",
    "twitter.com",
    "t.co",
    "linkedin.com",
    "lnkd.in",
    "line.me",
    "youtube.com",
    "youtu.be",
    "tiktok.com",
    "note.com",
    "threads.net",
    "threads.com",
    "pinterest.com",
    "reddit.com",
    "b.hatena.ne.jp",
];
/// Referrer domains of search engines other than Google and Yandex (which use many country
/// domains and are matched by name).
const SEARCH_HOSTS: &[&str] = &[
    "bing.com",
    "search.yahoo.co.jp",
    "search.yahoo.com",
    "duckduckgo.com",
    "baidu.com",
    "ecosia.org",
    "search.goo.ne.jp",
    "search.naver.com",
    "search.brave.com",
    "startpage.com",
    // The Google app on Android sends this as an `android-app://` referrer.
    "com.google.android.googlequicksearchbox",
];
/// Webmail: a click in a mail read in the browser.
const WEBMAIL_HOSTS: &[&str] = &[
    "mail.google.com",
    "outlook.live.com",
    "outlook.office.com",
    "outlook.office365.com",
    "mail.yahoo.co.jp",
    "mail.yahoo.com",
];
/// Ad-click ids that ad platforms append instead of UTM tags (Google Ads auto-tagging, Microsoft
/// Ads, Yahoo! JAPAN / Yandex ads).
const PAID_CLICK_IDS: &[&str] = &["gclid", "gbraid", "wbraid", "msclkid", "yclid"];

fn one_of(value: &str, list: &[&str]) -> bool {
    list.iter().any(|m| m.eq_ignore_ascii_case(value))
}

fn host_in(host: &str, list: &[&str]) -> bool {
    list.iter().any(|d| url::host_is(host, d))
}

/// Google and Yandex search on any country domain: `google.com`, `www.google.co.jp`,
/// `yandex.ru`; but not `mail.google.com` or `docs.google.com`.
fn is_search_host(host: &str) -> bool {
    let h = host.strip_prefix("www.").unwrap_or(host);
    if let Some((first, rest)) = h.split_once('.')
        && matches!(first, "google" | "yandex")
        && (1..=2).contains(&rest.split('.').count())
    {
        return true;
    }
    host_in(host, SEARCH_HOSTS) || h == "yahoo.co.jp"
}

/// Whether a referrer on `referrer_host` comes from outside the site on `landing_host` (the same
/// host, `www.` or not, and subdomains of one another count as the same site).
fn is_external(referrer_host: &str, landing_host: Option<&str>) -> bool {
    let Some(landing) = landing_host else {
        return true;
    };
    let r = referrer_host.strip_prefix("www.").unwrap_or(referrer_host);
    let l = landing.strip_prefix("www.").unwrap_or(landing);
    !(url::host_is(r, l) || url::host_is(l, r))
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// The channel class of a visit, one of [`ORGANIC_SEARCH`], [`PAID_SEARCH`], [`SOCIAL`],
/// [`EMAIL`], [`REFERRAL`], [`DIRECT`], [`OFFLINE`]. `referrer` is the referring URL;
/// `landing_host` the host of the page landed on. Media compare case-insensitively.
///
/// The rules, first match wins:
/// 1. medium offline / tradeshow / event / seminar / print / dm / qr → offline;
/// 2. medium cpc / ppc / paid / paidsearch / sem → paid search (social if the source is a social
///    network: a paid Facebook post is social);
/// 3. medium email / newsletter / mail / mailmagazine / メルマガ → email;
/// 4. medium social / sns (and variants) → social; medium organic → organic search;
/// 5. referrer on webmail (mail.google.com, outlook…) → email; on a social network → social;
///    on a search engine (google.*, bing, yahoo.co.jp / search.yahoo, duckduckgo, baidu,
///    yandex, ecosia…) → organic search;
/// 6. source a social network → social; source newsletter → email;
/// 7. another site's referrer → referral; a tagged link from an unknown place (any other
///    medium or source) → referral;
/// 8. nothing → direct.
pub fn classify_channel(
    utm_medium: Option<&str>,
    utm_source: Option<&str>,
    referrer: Option<&str>,
    landing_host: Option<&str>,
) -> &'static str {
    let medium = non_empty(utm_medium);
    let source = non_empty(utm_source);
    let social_source = source.is_some_and(|s| one_of(s, SOCIAL_SOURCES));
    if let Some(m) = medium {
        if one_of(m, OFFLINE_MEDIA) {
            return OFFLINE;
        }
        if one_of(m, PAID_MEDIA) {
            return if social_source { SOCIAL } else { PAID_SEARCH };
        }
        if one_of(m, EMAIL_MEDIA) {
            return EMAIL;
        }
        if one_of(m, SOCIAL_MEDIA) {
            return SOCIAL;
        }
        if m.eq_ignore_ascii_case("organic") {
            return ORGANIC_SEARCH;
        }
    }
    let referrer_host = non_empty(referrer).and_then(url::host);
    let landing_host = non_empty(landing_host).map(|h| h.to_ascii_lowercase());
    if let Some(r) = referrer_host.as_deref() {
        if host_in(r, WEBMAIL_HOSTS) {
            return EMAIL;
        }
        if host_in(r, SOCIAL_HOSTS) {
            return SOCIAL;
        }
        if is_search_host(r) {
            return ORGANIC_SEARCH;
        }
    }
    if social_source {
        return SOCIAL;
    }
    if source.is_some_and(|s| one_of(s, EMAIL_SOURCES)) {
        return EMAIL;
    }
    if referrer_host
        .as_deref()
        .is_some_and(|r| is_external(r, landing_host.as_deref()))
    {
        return REFERRAL;
    }
    if medium.is_some() || source.is_some() {
        return REFERRAL;
    }
    DIRECT
}

fn str_field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    non_empty(map.get(key).and_then(Value::as_str))
}

fn obj_field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    map.get(key).and_then(Value::as_object)
}

/// A campaign value from `context.campaign`: strings as they are, numbers (campaign ids) as text.
fn campaign_field(map: &Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key)? {
        Value::String(s) => non_empty(Some(s)).map(str::to_string),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The first-touch [`Source`] this message carries, or `None` when it carries nothing about
/// where the visitor came from (a server-side event without page or campaign context).
///
/// Read, first found wins per field:
/// - UTM: `context.campaign` {`name`→utm_campaign, `source`, `medium`, `term`, `content`}
///   (analytics.js fills it from the URL), then the `utm_*` parameters of the landing page URL,
///   then of `context.page.search` (or `properties.search`);
/// - landing page: `context.page.url`, else `context.page.path`; for page and screen calls also
///   `properties.url` / `properties.path`;
/// - referrer: `context.page.referrer`, for page calls also `properties.referrer`.
///
/// `channel` is [`classify_channel`] of those; an ad click id (`gclid`, `msclkid`, `yclid`…) in
/// the landing URL counts as medium `cpc` for the classification (Google Ads auto-tagging sends
/// no UTM tags) without being stored as a UTM value.
pub fn attribution(msg: &Message) -> Option<Source> {
    let page = obj_field(&msg.context, "page");
    let props =
        matches!(msg.kind, MessageType::Page | MessageType::Screen).then_some(&msg.properties);
    let from_page = |key: &str| {
        page.and_then(|p| str_field(p, key))
            .or_else(|| props.and_then(|p| str_field(p, key)))
    };
    let landing_url = from_page("url");
    let landing = landing_url.or_else(|| from_page("path"));
    let referrer = from_page("referrer");
    let search = from_page("search");

    let mut src = Source::default();
    if let Some(c) = obj_field(&msg.context, "campaign") {
        src.utm_campaign = campaign_field(c, "name");
        src.utm_source = campaign_field(c, "source");
        src.utm_medium = campaign_field(c, "medium");
        src.utm_term = campaign_field(c, "term");
        src.utm_content = campaign_field(c, "content");
    }
    let mut click_id = false;
    for q in [landing_url.map(url::query), search.map(url::query)]
        .into_iter()
        .flatten()
    {
        for (k, v) in url::query_pairs(q) {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            let slot = match k.to_ascii_lowercase().as_str() {
                "utm_source" => &mut src.utm_source,
                "utm_medium" => &mut src.utm_medium,
                "utm_campaign" => &mut src.utm_campaign,
                "utm_term" => &mut src.utm_term,
                "utm_content" => &mut src.utm_content,
                k => {
                    click_id |= one_of(k, PAID_CLICK_IDS);
                    continue;
                }
            };
            if slot.is_none() {
                *slot = Some(v.to_string());
            }
        }
    }
    src.referrer = referrer.map(str::to_string);
    src.landing_page = landing.map(str::to_string);
    if src.is_empty() {
        return None;
    }
    let medium = src
        .utm_medium
        .as_deref()
        .or(if click_id { Some("cpc") } else { None });
    let landing_host = landing_url.and_then(url::host);
    src.channel = Some(
        classify_channel(
            medium,
            src.utm_source.as_deref(),
            src.referrer.as_deref(),
            landing_host.as_deref(),
        )
        .to_string(),
    );
    Some(src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::{Endpoint, parse};
    use chrono::{DateTime, Utc};

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_714_564_800, 0).unwrap()
    }

    fn msg(endpoint: Endpoint, body: serde_json::Value) -> Message {
        let bytes = serde_json::to_vec(&body).unwrap();
        parse(endpoint, &bytes, Some("wk"), now())
            .unwrap()
            .messages
            .remove(0)
    }

    const LANDING: Option<&str> = Some("www.example.co.jp");

    #[test]
    fn channel_table() {
        // (utm_medium, utm_source, referrer, expected channel)
        type Case = (
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
            &'static str,
        );
        let cases: &[Case] = &[
            // medium decides first
            (Some("cpc"), Some("google"), None, PAID_SEARCH),
            (
                Some("PPC"),
                Some("yahoo"),
                Some("https://search.yahoo.co.jp/"),
                PAID_SEARCH,
            ),
            (Some("paidsearch"), None, None, PAID_SEARCH),
            (Some("paid"), None, None, PAID_SEARCH),
            (Some("cpc"), Some("facebook"), None, SOCIAL),
            (Some("email"), Some("newsletter"), None, EMAIL),
            (Some("newsletter"), None, None, EMAIL),
            (Some("mail"), None, Some("https://www.google.com/"), EMAIL),
            (Some("メルマガ"), None, None, EMAIL),
            (Some("social"), Some("x"), None, SOCIAL),
            (Some("sns"), None, None, SOCIAL),
            (Some("offline"), None, None, OFFLINE),
            (Some("tradeshow"), Some("it-week"), None, OFFLINE),
            (Some("event"), None, None, OFFLINE),
            (Some("seminar"), None, None, OFFLINE),
            (Some("print"), None, None, OFFLINE),
            (Some("organic"), Some("yahoo"), None, ORGANIC_SEARCH),
            // then the referrer
            (
                None,
                None,
                Some("https://www.google.co.jp/"),
                ORGANIC_SEARCH,
            ),
            (
                None,
                None,
                Some("https://google.com/search?q=ma"),
                ORGANIC_SEARCH,
            ),
            (
                None,
                None,
                Some("https://www.bing.com/search?q=x"),
                ORGANIC_SEARCH,
            ),
            (
                None,
                None,
                Some("https://search.yahoo.co.jp/search?p=x"),
                ORGANIC_SEARCH,
            ),
            (None, None, Some("https://duckduckgo.com/"), ORGANIC_SEARCH),
            (
                None,
                None,
                Some("https://www.baidu.com/link?x"),
                ORGANIC_SEARCH,
            ),
            (None, None, Some("https://yandex.ru/"), ORGANIC_SEARCH),
            (None, None, Some("https://www.ecosia.org/"), ORGANIC_SEARCH),
            (
                None,
                None,
                Some("android-app://com.google.android.googlequicksearchbox/"),
                ORGANIC_SEARCH,
            ),
            (None, None, Some("https://l.facebook.com/l.php"), SOCIAL),
            (None, None, Some("https://www.instagram.com/"), SOCIAL),
            (None, None, Some("https://x.com/someone"), SOCIAL),
            (None, None, Some("https://t.co/abc"), SOCIAL),
            (None, None, Some("https://www.linkedin.com/feed/"), SOCIAL),
            (None, None, Some("https://lnkd.in/xyz"), SOCIAL),
            (None, None, Some("https://line.me/R/"), SOCIAL),
            (
                None,
                None,
                Some("https://www.youtube.com/watch?v=1"),
                SOCIAL,
            ),
            (None, None, Some("https://www.tiktok.com/@a"), SOCIAL),
            (None, None, Some("https://note.com/kizuna/n/1"), SOCIAL),
            (None, None, Some("https://mail.google.com/mail/u/0/"), EMAIL),
            (
                None,
                None,
                Some("https://docs.google.com/document/d/1"),
                REFERRAL,
            ),
            (None, None, Some("https://notfacebook.com/"), REFERRAL),
            (
                None,
                None,
                Some("https://partner.example.com/blog"),
                REFERRAL,
            ),
            // the same site is not a referral
            (
                None,
                None,
                Some("https://www.example.co.jp/pricing"),
                DIRECT,
            ),
            (None, None, Some("https://example.co.jp/"), DIRECT),
            (None, None, Some("https://blog.example.co.jp/post"), DIRECT),
            // sources without a medium
            (None, Some("facebook"), None, SOCIAL),
            (None, Some("newsletter"), None, EMAIL),
            (Some("affiliate"), Some("partner"), None, REFERRAL),
            (
                Some("banner"),
                None,
                Some("https://www.example.co.jp/"),
                REFERRAL,
            ),
            // nothing
            (None, None, None, DIRECT),
            (Some(" "), Some(""), Some(""), DIRECT),
            (None, None, Some("/relative"), DIRECT),
        ];
        for &(medium, source, referrer, want) in cases {
            assert_eq!(
                classify_channel(medium, source, referrer, LANDING),
                want,
                "medium={medium:?} source={source:?} referrer={referrer:?}"
            );
        }
    }

    #[test]
    fn unknown_landing_host_makes_any_referrer_external() {
        assert_eq!(
            classify_channel(None, None, Some("https://www.example.co.jp/"), None),
            REFERRAL
        );
    }

    #[test]
    fn utm_from_the_page_url_with_percent_encoded_japanese() {
        let m = msg(
            Endpoint::Page,
            serde_json::json!({
                "anonymousId": "a1",
                "context": {"page": {
                    "url": "https://www.example.co.jp/lp?utm_source=bigsight&utm_medium=tradeshow&utm_campaign=%E5%B1%95%E7%A4%BA%E4%BC%9A&utm_term=ma+tool&utm_content=qr",
                    "referrer": ""
                }}
            }),
        );
        let s = attribution(&m).unwrap();
        assert_eq!(s.utm_campaign.as_deref(), Some("展示会"));
        assert_eq!(s.utm_source.as_deref(), Some("bigsight"));
        assert_eq!(s.utm_medium.as_deref(), Some("tradeshow"));
        assert_eq!(s.utm_term.as_deref(), Some("ma tool"));
        assert_eq!(s.utm_content.as_deref(), Some("qr"));
        assert_eq!(s.channel.as_deref(), Some(OFFLINE));
        assert_eq!(s.referrer, None);
        assert!(
            s.landing_page
                .unwrap()
                .starts_with("https://www.example.co.jp/lp?")
        );
    }

    #[test]
    fn context_campaign_wins_over_the_url() {
        let m = msg(
            Endpoint::Track,
            serde_json::json!({
                "userId": 1, "event": "Signed Up",
                "context": {
                    "campaign": {"name": "spring", "source": "google", "medium": "cpc", "term": 42},
                    "page": {"url": "https://example.com/?utm_campaign=other&utm_content=ad1",
                             "referrer": "https://www.google.com/"}
                }
            }),
        );
        let s = attribution(&m).unwrap();
        assert_eq!(s.utm_campaign.as_deref(), Some("spring"));
        assert_eq!(s.utm_term.as_deref(), Some("42"));
        assert_eq!(s.utm_content.as_deref(), Some("ad1"));
        assert_eq!(s.channel.as_deref(), Some(PAID_SEARCH));
        assert_eq!(s.referrer.as_deref(), Some("https://www.google.com/"));
    }

    #[test]
    fn page_call_properties_and_search_string() {
        let m = msg(
            Endpoint::Page,
            serde_json::json!({
                "anonymousId": "a1",
                "properties": {
                    "path": "/whitepaper",
                    "search": "?utm_source=newsletter&utm_medium=email",
                    "referrer": "https://mail.yahoo.co.jp/"
                }
            }),
        );
        let s = attribution(&m).unwrap();
        assert_eq!(s.landing_page.as_deref(), Some("/whitepaper"));
        assert_eq!(s.utm_source.as_deref(), Some("newsletter"));
        assert_eq!(s.channel.as_deref(), Some(EMAIL));
    }

    #[test]
    fn track_properties_are_not_page_data() {
        // A track call's properties.url is whatever the event is about, not the page.
        let m = msg(
            Endpoint::Track,
            serde_json::json!({"userId": "u", "event": "Download",
                "properties": {"url": "https://example.com/?utm_source=x"}}),
        );
        assert_eq!(attribution(&m), None);
    }

    #[test]
    fn google_ads_auto_tagging_is_paid_search() {
        let m = msg(
            Endpoint::Page,
            serde_json::json!({"anonymousId": "a",
                "context": {"page": {"url": "https://example.com/lp?gclid=Cj0KCQ",
                                     "referrer": "https://www.google.com/"}}}),
        );
        let s = attribution(&m).unwrap();
        assert_eq!(s.channel.as_deref(), Some(PAID_SEARCH));
        assert_eq!(s.utm_medium, None);
    }

    #[test]
    fn a_plain_visit_is_direct_and_an_empty_message_has_no_source() {
        let m = msg(
            Endpoint::Page,
            serde_json::json!({"anonymousId": "a",
                "context": {"page": {"url": "https://example.com/"}}}),
        );
        assert_eq!(attribution(&m).unwrap().channel.as_deref(), Some(DIRECT));
        let m = msg(
            Endpoint::Identify,
            serde_json::json!({"userId": "u", "traits": {"email": "a@example.com"}}),
        );
        assert_eq!(attribution(&m), None);
    }

    #[test]
    fn external_referrer_is_referral() {
        let m = msg(
            Endpoint::Page,
            serde_json::json!({"anonymousId": "a",
                "context": {"page": {"url": "https://www.example.com/blog",
                                     "referrer": "https://news.partner.jp/article/1"}}}),
        );
        let s = attribution(&m).unwrap();
        assert_eq!(s.channel.as_deref(), Some(REFERRAL));
        assert_eq!(
            s.referrer.as_deref(),
            Some("https://news.partner.jp/article/1")
        );
    }
}
