//! Machine opens and scanner clicks: pure functions over what the tracking endpoints saw, with
//! the time passed in. They only flag — every open and click is still recorded, so reports can
//! show human and machine figures side by side.
//!
//! Machine opens:
//! - **Apple Mail Privacy Protection** prefetches every image when a message arrives, from Apple
//!   proxies. Seen signals: the request comes from Apple's 17.0.0.0/8 network (configurable:
//!   add the egress ranges Apple publishes for its proxies), or the user agent is the bare
//!   `Mozilla/5.0` the prefetcher sends.
//! - **Image proxies** (Gmail's `GoogleImageProxy`, Yahoo's `YahooMailProxy`, …) fetch on behalf
//!   of a person who opened the message, and cache. They are reported as a proxy; by default a
//!   Gmail or Yahoo proxy open counts as a human open (Gmail does not prefetch), configurable.
//! - Security gateways fetching images (the scanner user agents below), and any open within
//!   [`EngagementConfig::open_min_delay`] of delivery.
//!
//! Scanner clicks: `HEAD` requests, security-scanner user agents (Barracuda, Mimecast,
//! Proofpoint, Microsoft Defender Safe Links, …), generic bots and HTTP libraries, clicks within
//! [`EngagementConfig::click_min_delay`] of delivery, and every link of a message clicked within
//! [`EngagementConfig::burst_window`].

use chrono::{DateTime, Duration, Utc};
use std::net::IpAddr;

/// Why an open or click was flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineReason {
    /// Apple Mail Privacy Protection prefetch.
    AppleMailPrivacyProtection,
    /// An image proxy counted as a machine (see [`EngagementConfig::image_proxy_is_machine`]).
    ImageProxy,
    /// A security scanner / link checker, by user agent.
    SecurityScanner,
    /// A crawler, bot or HTTP library, by user agent.
    Bot,
    /// A `HEAD` request.
    HeadRequest,
    /// Too soon after delivery for a person.
    TooSoonAfterDelivery,
    /// Every link of the message clicked within a moment.
    AllLinksAtOnce,
}

/// An image proxy a person's open went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageProxy {
    /// Gmail (`GoogleImageProxy`).
    Google,
    /// Yahoo Mail.
    Yahoo,
    /// Apple (Mail Privacy Protection).
    Apple,
    /// Another known proxy.
    Other,
}

/// The verdict on one open or click.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether it was (probably) not a person.
    pub machine: bool,
    /// The first reason found, if `machine`.
    pub reason: Option<MachineReason>,
    /// The image proxy the request came through, if recognized.
    pub proxy: Option<ImageProxy>,
}

impl Verdict {
    fn human(proxy: Option<ImageProxy>) -> Self {
        Self {
            machine: false,
            reason: None,
            proxy,
        }
    }
    fn machine(reason: MachineReason, proxy: Option<ImageProxy>) -> Self {
        Self {
            machine: true,
            reason: Some(reason),
            proxy,
        }
    }
}

/// Thresholds and network lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngagementConfig {
    /// Opens sooner than this after delivery are machine opens.
    pub open_min_delay: Duration,
    /// Clicks sooner than this after delivery are scanner clicks.
    pub click_min_delay: Duration,
    /// All links clicked within this window: scanner.
    pub burst_window: Duration,
    /// Networks (CIDR) of Apple's privacy proxies.
    pub apple_networks: Vec<String>,
    /// Count Gmail/Yahoo image-proxy opens as machine opens.
    pub image_proxy_is_machine: bool,
}

impl Default for EngagementConfig {
    fn default() -> Self {
        Self {
            open_min_delay: Duration::seconds(2),
            click_min_delay: Duration::seconds(10),
            burst_window: Duration::seconds(1),
            apple_networks: vec!["17.0.0.0/8".into()],
            image_proxy_is_machine: false,
        }
    }
}

/// What the open pixel endpoint saw.
#[derive(Debug, Clone, Copy)]
pub struct OpenRequest<'a> {
    /// `User-Agent`, if any.
    pub user_agent: Option<&'a str>,
    /// Client address.
    pub ip: Option<IpAddr>,
    /// When the pixel was fetched.
    pub at: DateTime<Utc>,
    /// When the message was handed to the recipient's server, if known.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// What the click endpoint saw.
#[derive(Debug, Clone, Copy)]
pub struct ClickRequest<'a> {
    /// HTTP method (`GET`, `HEAD`, …).
    pub method: &'a str,
    /// `User-Agent`, if any.
    pub user_agent: Option<&'a str>,
    /// Client address.
    pub ip: Option<IpAddr>,
    /// When.
    pub at: DateTime<Utc>,
    /// When the message was delivered, if known.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Which link (index in the message).
    pub link_index: u16,
    /// Number of tracked links in the message.
    pub link_count: u16,
    /// Earlier clicks on the same message: (link index, time).
    pub earlier_clicks: &'a [(u16, DateTime<Utc>)],
}

/// Security gateways and link scanners, by a lowercase fragment of their user agent.
const SCANNERS: &[&str] = &[
    "barracuda",
    "mimecast",
    "proofpoint",
    "safelinks",
    "safe links",
    "office365",
    "defender",
    "symantec",
    "messagelabs",
    "trend micro",
    "forcepoint",
    "sophos",
    "fortiguard",
    "cisco ironport",
    "zscaler",
    "checkpoint",
    "trustwave",
    "virustotal",
    "urlscan",
];

/// Microsoft Office fetching a link (link previews, Safe Links checks). Outlook loading images
/// for a person sends the same product token, so this list applies to clicks only.
const OFFICE_LINK_CHECKERS: &[&str] = &["microsoft office", "ms-office"];

/// Generic robots and HTTP libraries.
const BOTS: &[&str] = &[
    "bot",
    "crawler",
    "spider",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "curl/",
    "wget/",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww",
    "httpclient",
    "headlesschrome",
    "phantomjs",
    "preview",
];

fn ua_lower(ua: Option<&str>) -> String {
    ua.unwrap_or_default().trim().to_ascii_lowercase()
}

fn proxy_of(ua: &str) -> Option<ImageProxy> {
    if ua.contains("googleimageproxy") || ua.contains("ggpht.com") {
        Some(ImageProxy::Google)
    } else if ua.contains("yahoomailproxy") || ua.contains("yahoo! slurp") {
        Some(ImageProxy::Yahoo)
    } else if ua.contains("outlook-iphone") || ua.contains("imageproxy") {
        Some(ImageProxy::Other)
    } else {
        None
    }
}

/// Whether `ip` is in the CIDR `net` (IPv4 or IPv6). Malformed networks match nothing.
pub fn ip_in_network(ip: IpAddr, net: &str) -> bool {
    let Some((addr, len)) = net.split_once('/') else {
        return false;
    };
    let (Ok(base), Ok(len)) = (addr.trim().parse::<IpAddr>(), len.trim().parse::<u32>()) else {
        return false;
    };
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

fn too_soon(at: DateTime<Utc>, delivered: Option<DateTime<Utc>>, min: Duration) -> bool {
    delivered.is_some_and(|d| at - d < min)
}

/// Classifies an open.
pub fn classify_open(req: &OpenRequest<'_>, config: &EngagementConfig) -> Verdict {
    let ua = ua_lower(req.user_agent);
    let apple_ip = req
        .ip
        .is_some_and(|ip| config.apple_networks.iter().any(|n| ip_in_network(ip, n)));
    if apple_ip || ua == "mozilla/5.0" {
        return Verdict::machine(
            MachineReason::AppleMailPrivacyProtection,
            Some(ImageProxy::Apple),
        );
    }
    let proxy = proxy_of(&ua);
    if SCANNERS.iter().any(|s| ua.contains(s)) {
        return Verdict::machine(MachineReason::SecurityScanner, proxy);
    }
    if proxy.is_none() && BOTS.iter().any(|s| ua.contains(s)) {
        return Verdict::machine(MachineReason::Bot, proxy);
    }
    if too_soon(req.at, req.delivered_at, config.open_min_delay) {
        return Verdict::machine(MachineReason::TooSoonAfterDelivery, proxy);
    }
    if proxy.is_some() && config.image_proxy_is_machine {
        return Verdict::machine(MachineReason::ImageProxy, proxy);
    }
    Verdict::human(proxy)
}

/// Classifies a click.
pub fn classify_click(req: &ClickRequest<'_>, config: &EngagementConfig) -> Verdict {
    let ua = ua_lower(req.user_agent);
    if req.method.eq_ignore_ascii_case("HEAD") {
        return Verdict::machine(MachineReason::HeadRequest, None);
    }
    if SCANNERS
        .iter()
        .chain(OFFICE_LINK_CHECKERS)
        .any(|s| ua.contains(s))
    {
        return Verdict::machine(MachineReason::SecurityScanner, None);
    }
    if ua.is_empty() || BOTS.iter().any(|s| ua.contains(s)) {
        return Verdict::machine(MachineReason::Bot, None);
    }
    if too_soon(req.at, req.delivered_at, config.click_min_delay) {
        return Verdict::machine(MachineReason::TooSoonAfterDelivery, None);
    }
    if req.link_count >= 2 {
        let window_start = req.at - config.burst_window;
        let mut seen = vec![false; usize::from(req.link_count)];
        if let Some(s) = seen.get_mut(usize::from(req.link_index)) {
            *s = true;
        }
        for &(i, t) in req.earlier_clicks {
            if t >= window_start
                && t <= req.at
                && let Some(s) = seen.get_mut(usize::from(i))
            {
                *s = true;
            }
        }
        if seen.iter().all(|&s| s) {
            return Verdict::machine(MachineReason::AllLinksAtOnce, None);
        }
    }
    Verdict::human(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36";

    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap() + Duration::seconds(s)
    }

    fn open(ua: &str, ip: &str, at: i64) -> Verdict {
        classify_open(
            &OpenRequest {
                user_agent: Some(ua),
                ip: ip.parse().ok(),
                at: t(at),
                delivered_at: Some(t(0)),
            },
            &EngagementConfig::default(),
        )
    }

    #[test]
    fn apple_mpp_opens_are_machine() {
        let v = open("Mozilla/5.0", "203.0.113.9", 600);
        assert_eq!(v.reason, Some(MachineReason::AppleMailPrivacyProtection));
        let v = open(IPHONE, "17.58.1.2", 600);
        assert!(v.machine);
        assert_eq!(v.proxy, Some(ImageProxy::Apple));
    }

    #[test]
    fn gmail_proxy_opens_are_human_by_default() {
        let ua = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
        let v = open(ua, "66.249.84.1", 600);
        assert!(!v.machine);
        assert_eq!(v.proxy, Some(ImageProxy::Google));
        let cfg = EngagementConfig {
            image_proxy_is_machine: true,
            ..EngagementConfig::default()
        };
        let v = classify_open(
            &OpenRequest {
                user_agent: Some(ua),
                ip: None,
                at: t(600),
                delivered_at: None,
            },
            &cfg,
        );
        assert_eq!(v.reason, Some(MachineReason::ImageProxy));
        let v = open(
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            "1.2.3.4",
            600,
        );
        assert_eq!(v.proxy, Some(ImageProxy::Yahoo));
    }

    #[test]
    fn early_and_scanner_opens_are_machine() {
        assert_eq!(
            open(CHROME, "1.2.3.4", 1).reason,
            Some(MachineReason::TooSoonAfterDelivery)
        );
        assert!(!open(CHROME, "1.2.3.4", 60).machine);
        let outlook = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)";
        assert!(!open(outlook, "1.2.3.4", 60).machine);
        assert_eq!(
            open("Barracuda Sentinel (EE)", "1.2.3.4", 60).reason,
            Some(MachineReason::SecurityScanner)
        );
    }

    fn click(
        method: &str,
        ua: Option<&str>,
        at: i64,
        index: u16,
        earlier: &[(u16, DateTime<Utc>)],
    ) -> Verdict {
        classify_click(
            &ClickRequest {
                method,
                user_agent: ua,
                ip: None,
                at: t(at),
                delivered_at: Some(t(0)),
                link_index: index,
                link_count: 3,
                earlier_clicks: earlier,
            },
            &EngagementConfig::default(),
        )
    }

    #[test]
    fn scanner_clicks_are_flagged() {
        assert_eq!(
            click("HEAD", Some(CHROME), 600, 0, &[]).reason,
            Some(MachineReason::HeadRequest)
        );
        assert_eq!(
            click("GET", Some(CHROME), 3, 0, &[]).reason,
            Some(MachineReason::TooSoonAfterDelivery)
        );
        assert_eq!(
            click("GET", None, 600, 0, &[]).reason,
            Some(MachineReason::Bot)
        );
        assert_eq!(
            click("GET", Some("python-requests/2.31"), 600, 0, &[]).reason,
            Some(MachineReason::Bot)
        );
        for ua in [
            "Mozilla/5.0 (compatible; Mimecast URL Protect)",
            "Proofpoint URL Defense",
            "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0; SafeLinks)",
        ] {
            assert_eq!(
                click("GET", Some(ua), 600, 0, &[]).reason,
                Some(MachineReason::SecurityScanner),
                "{ua}"
            );
        }
        let burst = [(0u16, t(600)), (1u16, t(600))];
        assert_eq!(
            click("GET", Some(CHROME), 600, 2, &burst).reason,
            Some(MachineReason::AllLinksAtOnce)
        );
        let spread = [(0u16, t(100)), (1u16, t(300))];
        let v = click("GET", Some(CHROME), 600, 2, &spread);
        assert!(!v.machine);
        assert!(v.reason.is_none());
        // Out-of-range indices do not panic.
        assert!(!click("GET", Some(CHROME), 600, 99, &[(77, t(600))]).machine);
    }

    #[test]
    fn cidr_matching() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(ip_in_network(ip("17.0.0.1"), "17.0.0.0/8"));
        assert!(!ip_in_network(ip("18.0.0.1"), "17.0.0.0/8"));
        assert!(ip_in_network(ip("1.2.3.4"), "0.0.0.0/0"));
        assert!(ip_in_network(ip("2a01:b740::1"), "2a01:b740::/32"));
        assert!(!ip_in_network(ip("2a01:b741::1"), "2a01:b740::/32"));
        assert!(!ip_in_network(ip("1.2.3.4"), "garbage"));
        assert!(!ip_in_network(ip("1.2.3.4"), "1.2.3.4/99"));
    }
}
