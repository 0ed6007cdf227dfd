//! Signed links: the open pixel, click redirects, unsubscribe, preference center, view in
//! browser and double opt-in confirmation, plus the rewriting of an HTML body so that every
//! trackable link goes through the click redirect.
//!
//! A token is `payload ‖ tag`, url-safe base64 without padding, where `tag` is the first 16
//! bytes of HMAC-SHA256 over a per-kind domain separator and the payload. The kind is not in the
//! token: the endpoint (`/o/`, `/c/`, …) says which kind is expected, so a token for one kind
//! never verifies as another. Payloads:
//!
//! | link | path | payload |
//! |---|---|---|
//! | open pixel | `/o/{token}.gif` | message id (16 bytes) |
//! | click | `/c/{token}` | message id, link index (u16), target URL (UTF-8) |
//! | unsubscribe | `/u/{token}` | message id |
//! | preferences | `/p/{token}` | message id |
//! | view in browser | `/v/{token}` | message id |
//! | double opt-in | `/confirm/{token}` | consent request id, expiry (i64 seconds) |
//!
//! The click target is inside the signed payload, so the click endpoint can only ever redirect
//! to a URL this server signed (no open redirect) and needs no database lookup to do so. The
//! mail-to unsubscribe address uses lowercase base32 (mail systems may change the case of a
//! local part) and fits the 64-character local-part limit.
//!
//! Verification is constant-time in the tag and tries every configured key, so keys can be
//! rotated: sign with the newest, keep the previous ones for verification.

use crate::MailError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the HMAC kept in a token (128 bits).
const TAG_LEN: usize = 16;
/// Tokens longer than this are refused before any work is done.
const MAX_TOKEN_LEN: usize = 8192;
/// Local part prefix of the mail-to unsubscribe address.
const MAILTO_PREFIX: &str = "unsubscribe+";

/// The kinds of signed link. Each has its own MAC domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Open,
    Click,
    Unsubscribe,
    Preferences,
    View,
    Confirm,
    MailtoUnsubscribe,
}

impl Kind {
    fn domain(self) -> &'static [u8] {
        match self {
            Kind::Open => b"kizuna/link/v1/open\0",
            Kind::Click => b"kizuna/link/v1/click\0",
            Kind::Unsubscribe => b"kizuna/link/v1/unsubscribe\0",
            Kind::Preferences => b"kizuna/link/v1/preferences\0",
            Kind::View => b"kizuna/link/v1/view\0",
            Kind::Confirm => b"kizuna/link/v1/confirm\0",
            Kind::MailtoUnsubscribe => b"kizuna/link/v1/mailto-unsubscribe\0",
        }
    }
}

/// A verified click: where to redirect and what to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    /// The outbox message the link was in.
    pub message_id: Uuid,
    /// The link's position in the message (0-based, in document order).
    pub link_index: u16,
    /// The original target URL (always `http://` or `https://`).
    pub url: String,
}

/// The per-message URLs a template can use and the footer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageUrls {
    /// One-click unsubscribe page (`/u/{token}`).
    pub unsubscribe: String,
    /// Preference center (`/p/{token}`).
    pub preferences: String,
    /// The message as a web page (`/v/{token}`).
    pub view_in_browser: String,
    /// `mailto:unsubscribe+TOKEN@domain`, when an unsubscribe mailbox is configured.
    pub unsubscribe_mailto: Option<String>,
    /// The double opt-in confirmation link, in a confirmation mail (`confirm_url`).
    pub confirm: Option<String>,
}

/// Creates and verifies signed links for one installation.
#[derive(Clone)]
pub struct LinkSigner {
    /// Newest key first; only the first signs.
    keys: Vec<Vec<u8>>,
    /// Public base URL without a trailing slash, e.g. `https://mail.example.jp`.
    base_url: String,
    /// Domain of the `unsubscribe+TOKEN@domain` mailbox, if any.
    mailto_domain: Option<String>,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner")
            .field("keys", &self.keys.len())
            .field("base_url", &self.base_url)
            .field("mailto_domain", &self.mailto_domain)
            .finish()
    }
}

impl LinkSigner {
    /// A signer with one secret (at least 32 bytes) and the public base URL of the tracking
    /// endpoints (`http://` or `https://`, no query or fragment).
    pub fn new(secret: &[u8], base_url: &str) -> Result<Self, MailError> {
        if secret.len() < 32 {
            return Err(MailError::Config(
                "link signing secret must be at least 32 bytes".into(),
            ));
        }
        let base = base_url.trim().trim_end_matches('/');
        let lower = base.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://"))
            || base.contains(['?', '#', '"', '<', '>', ' ', '\''])
            || base.chars().any(char::is_control)
        {
            return Err(MailError::Config(format!(
                "link base URL {base_url:?} must be an http(s) URL without query or fragment"
            )));
        }
        Ok(Self {
            keys: vec![secret.to_vec()],
            base_url: base.to_string(),
            mailto_domain: None,
        })
    }

    /// Adds an older key that is still accepted when verifying (key rotation).
    pub fn with_previous_key(mut self, secret: &[u8]) -> Self {
        self.keys.push(secret.to_vec());
        self
    }

    /// Enables `mailto:unsubscribe+TOKEN@domain` in `List-Unsubscribe`.
    pub fn with_unsubscribe_mailbox(mut self, domain: &str) -> Result<Self, MailError> {
        let d = domain.trim().to_ascii_lowercase();
        if d.is_empty()
            || !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(MailError::Config(format!(
                "unsubscribe mailbox domain {domain:?} is not an ASCII domain name"
            )));
        }
        self.mailto_domain = Some(d);
        Ok(self)
    }

    /// The public base URL (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn tag(key: &[u8], kind: Kind, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(kind.domain());
        mac.update(payload);
        mac
    }

    fn seal(&self, kind: Kind, payload: &[u8]) -> Vec<u8> {
        let tag = Self::tag(&self.keys[0], kind, payload)
            .finalize()
            .into_bytes();
        let mut out = Vec::with_capacity(payload.len() + TAG_LEN);
        out.extend_from_slice(payload);
        out.extend_from_slice(&tag[..TAG_LEN]);
        out
    }

    fn token(&self, kind: Kind, payload: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.seal(kind, payload))
    }

    /// Checks the tag of `raw` for `kind` and returns the payload.
    fn open_raw<'a>(&self, kind: Kind, raw: &'a [u8]) -> Result<&'a [u8], MailError> {
        if raw.len() < TAG_LEN {
            return Err(MailError::InvalidToken);
        }
        let (payload, tag) = raw.split_at(raw.len() - TAG_LEN);
        for key in &self.keys {
            // `verify_truncated_left` compares in constant time.
            if Self::tag(key, kind, payload)
                .verify_truncated_left(tag)
                .is_ok()
            {
                return Ok(payload);
            }
        }
        Err(MailError::InvalidToken)
    }

    fn open(&self, kind: Kind, token: &str) -> Result<Vec<u8>, MailError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(MailError::InvalidToken);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token.as_bytes())
            .map_err(|_| MailError::InvalidToken)?;
        let payload = self.open_raw(kind, &raw)?;
        Ok(payload.to_vec())
    }

    fn id_payload(payload: &[u8]) -> Result<Uuid, MailError> {
        let bytes: [u8; 16] = payload.try_into().map_err(|_| MailError::InvalidToken)?;
        Ok(Uuid::from_bytes(bytes))
    }

    /// The open pixel URL: `{base}/o/{token}.gif`.
    pub fn open_url(&self, message_id: Uuid) -> String {
        format!(
            "{}/o/{}.gif",
            self.base_url,
            self.token(Kind::Open, message_id.as_bytes())
        )
    }

    /// The click redirect URL for the `link_index`-th link of a message: `{base}/c/{token}`.
    pub fn click_url(&self, message_id: Uuid, link_index: u16, target: &str) -> String {
        let mut payload = Vec::with_capacity(18 + target.len());
        payload.extend_from_slice(message_id.as_bytes());
        payload.extend_from_slice(&link_index.to_be_bytes());
        payload.extend_from_slice(target.as_bytes());
        format!("{}/c/{}", self.base_url, self.token(Kind::Click, &payload))
    }

    /// The one-click unsubscribe URL: `{base}/u/{token}`.
    pub fn unsubscribe_url(&self, message_id: Uuid) -> String {
        format!(
            "{}/u/{}",
            self.base_url,
            self.token(Kind::Unsubscribe, message_id.as_bytes())
        )
    }

    /// The preference center URL: `{base}/p/{token}`.
    pub fn preferences_url(&self, message_id: Uuid) -> String {
        format!(
            "{}/p/{}",
            self.base_url,
            self.token(Kind::Preferences, message_id.as_bytes())
        )
    }

    /// The "view in browser" URL: `{base}/v/{token}`.
    pub fn view_url(&self, message_id: Uuid) -> String {
        format!(
            "{}/v/{}",
            self.base_url,
            self.token(Kind::View, message_id.as_bytes())
        )
    }

    /// The double opt-in confirmation URL, valid until `expires_at`: `{base}/confirm/{token}`.
    pub fn confirm_url(&self, consent_request_id: Uuid, expires_at: DateTime<Utc>) -> String {
        let mut payload = [0u8; 24];
        payload[..16].copy_from_slice(consent_request_id.as_bytes());
        payload[16..].copy_from_slice(&expires_at.timestamp().to_be_bytes());
        format!(
            "{}/confirm/{}",
            self.base_url,
            self.token(Kind::Confirm, &payload)
        )
    }

    /// `mailto:unsubscribe+TOKEN@domain` for `List-Unsubscribe`, when a mailbox is configured.
    pub fn unsubscribe_mailto(&self, message_id: Uuid) -> Option<String> {
        let domain = self.mailto_domain.as_ref()?;
        let sealed = self.seal(Kind::MailtoUnsubscribe, message_id.as_bytes());
        Some(format!(
            "mailto:{MAILTO_PREFIX}{}@{domain}",
            base32_encode(&sealed)
        ))
    }

    /// All per-message URLs at once.
    pub fn message_urls(&self, message_id: Uuid) -> MessageUrls {
        MessageUrls {
            unsubscribe: self.unsubscribe_url(message_id),
            preferences: self.preferences_url(message_id),
            view_in_browser: self.view_url(message_id),
            unsubscribe_mailto: self.unsubscribe_mailto(message_id),
            confirm: None,
        }
    }

    /// Verifies an open-pixel token (with or without the `.gif` suffix); returns the message id.
    pub fn verify_open(&self, token: &str) -> Result<Uuid, MailError> {
        let token = token.strip_suffix(".gif").unwrap_or(token);
        Self::id_payload(&self.open(Kind::Open, token)?)
    }

    /// Verifies a click token and returns the message, link index and the signed target URL.
    pub fn verify_click(&self, token: &str) -> Result<Click, MailError> {
        let payload = self.open(Kind::Click, token)?;
        if payload.len() < 18 {
            return Err(MailError::InvalidToken);
        }
        let message_id = Self::id_payload(&payload[..16])?;
        let link_index = u16::from_be_bytes([payload[16], payload[17]]);
        let url = String::from_utf8(payload[18..].to_vec()).map_err(|_| MailError::InvalidToken)?;
        // Only http(s) targets are ever signed; refuse anything else as a second line of defence.
        if !is_trackable_url(&url) {
            return Err(MailError::InvalidToken);
        }
        Ok(Click {
            message_id,
            link_index,
            url,
        })
    }

    /// Verifies an unsubscribe token; returns the message id.
    pub fn verify_unsubscribe(&self, token: &str) -> Result<Uuid, MailError> {
        Self::id_payload(&self.open(Kind::Unsubscribe, token)?)
    }

    /// Verifies a preference-center token; returns the message id.
    pub fn verify_preferences(&self, token: &str) -> Result<Uuid, MailError> {
        Self::id_payload(&self.open(Kind::Preferences, token)?)
    }

    /// Verifies a view-in-browser token; returns the message id.
    pub fn verify_view(&self, token: &str) -> Result<Uuid, MailError> {
        Self::id_payload(&self.open(Kind::View, token)?)
    }

    /// Verifies a double opt-in token at `now`; returns the consent request id.
    /// A genuine token past its expiry is [`MailError::TokenExpired`].
    pub fn verify_confirm(&self, token: &str, now: DateTime<Utc>) -> Result<Uuid, MailError> {
        let payload = self.open(Kind::Confirm, token)?;
        if payload.len() != 24 {
            return Err(MailError::InvalidToken);
        }
        let id = Self::id_payload(&payload[..16])?;
        let expires = i64::from_be_bytes(payload[16..24].try_into().expect("8 bytes"));
        if now.timestamp() > expires {
            return Err(MailError::TokenExpired);
        }
        Ok(id)
    }

    /// Verifies the recipient address of a mail sent to the unsubscribe mailbox
    /// (`unsubscribe+TOKEN@domain`, any case, with or without `mailto:`); returns the message id.
    pub fn verify_unsubscribe_address(&self, address: &str) -> Result<Uuid, MailError> {
        let a = address.trim().trim_start_matches('<').trim_end_matches('>');
        let a = a
            .strip_prefix("mailto:")
            .or_else(|| a.strip_prefix("MAILTO:"))
            .unwrap_or(a);
        let local = a.split('@').next().unwrap_or_default();
        if local.len() <= MAILTO_PREFIX.len()
            || !local[..MAILTO_PREFIX.len()].eq_ignore_ascii_case(MAILTO_PREFIX)
        {
            return Err(MailError::InvalidToken);
        }
        let raw = base32_decode(&local[MAILTO_PREFIX.len()..]).ok_or(MailError::InvalidToken)?;
        Self::id_payload(self.open_raw(Kind::MailtoUnsubscribe, &raw)?)
    }

    /// Whether `url` is one of this signer's own links (never rewritten for click tracking).
    pub fn is_own_link(&self, url: &str) -> bool {
        let Some(rest) = url.strip_prefix(self.base_url.as_str()) else {
            return false;
        };
        ["/o/", "/c/", "/u/", "/p/", "/v/", "/confirm/"]
            .iter()
            .any(|p| rest.starts_with(p))
    }
}

/// Whether a URL may be tracked (and so signed into a click token): `http://` or `https://`
/// with a host and no whitespace or control characters.
pub fn is_trackable_url(url: &str) -> bool {
    let lower_prefix: String = url.chars().take(8).collect::<String>().to_ascii_lowercase();
    let rest = if lower_prefix.starts_with("https://") {
        &url[8..]
    } else if lower_prefix.starts_with("http://") {
        &url[7..]
    } else {
        return false;
    };
    !rest.is_empty()
        && !rest.starts_with('/')
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c.to_ascii_lowercase() {
            c @ b'a'..=b'z' => c - b'a',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    // Leftover bits must be zero padding (canonical encoding only).
    if bits >= 5 || buffer & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

/// Options for [`track_html`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackingOptions {
    /// Append the open pixel.
    pub opens: bool,
    /// Rewrite links to the click redirect.
    pub clicks: bool,
}

impl Default for TrackingOptions {
    fn default() -> Self {
        Self {
            opens: true,
            clicks: true,
        }
    }
}

/// An HTML body after tracking was added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedHtml {
    /// The rewritten HTML.
    pub html: String,
    /// The original targets of the rewritten links, by link index.
    pub links: Vec<String>,
}

/// Rewrites every `<a href="http(s)://…">` to a signed click link and appends the open pixel
/// before `</body>`. Left alone: `mailto:`, `tel:`, `#anchors`, relative links, this signer's
/// own links (unsubscribe, preferences, …), links with a `data-kizuna-notrack` attribute, and
/// anything inside comments (including Outlook conditional comments), `<script>` and `<style>`.
/// Malformed markup is copied through unchanged; this function never panics.
pub fn track_html(
    html: &str,
    signer: &LinkSigner,
    message_id: Uuid,
    options: TrackingOptions,
) -> TrackedHtml {
    let mut out = String::with_capacity(html.len() + 256);
    let mut links = Vec::new();
    let bytes = html.as_bytes();
    let mut copied = 0; // html[..copied] has been written to `out`
    // With click tracking off, the scan is skipped and the HTML copied as it is.
    let mut i = if options.clicks { 0 } else { bytes.len() };
    while i < bytes.len() {
        let Some(off) = memchr(b'<', &bytes[i..]) else {
            break;
        };
        let lt = i + off;
        let rest = &bytes[lt..];
        if rest.starts_with(b"<!--") {
            i = match find(&bytes[lt + 4..], b"-->") {
                Some(e) => lt + 4 + e + 3,
                None => bytes.len(),
            };
            continue;
        }
        if let Some(name) = raw_text_element(rest) {
            i = find_closing_tag(bytes, lt + 1 + name.len(), name).unwrap_or(bytes.len());
            continue;
        }
        if rest.len() > 2 && rest[1].eq_ignore_ascii_case(&b'a') && is_tag_space(rest[2]) {
            match parse_tag(bytes, lt + 2) {
                Some(tag) => {
                    if let Some((vs, ve)) = tag.trackable_href(bytes) {
                        let url = decode_entities(&html[vs..ve]);
                        if is_trackable_url(&url) && !signer.is_own_link(&url) {
                            let index = links.len();
                            if let Ok(idx16) = u16::try_from(index) {
                                let click = signer.click_url(message_id, idx16, &url);
                                out.push_str(&html[copied..tag.href_attr_start]);
                                out.push_str("href=\"");
                                push_attr_escaped(&mut out, &click);
                                out.push('"');
                                copied = tag.href_attr_end;
                                links.push(url);
                            }
                        }
                    }
                    i = tag.end;
                }
                None => break, // unterminated tag: copy the rest as it is
            }
            continue;
        }
        i = lt + 1;
    }
    out.push_str(&html[copied..]);
    if options.opens {
        let pixel = format!(
            "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;width:1px;height:1px;border:0\">",
            signer.open_url(message_id)
        );
        insert_before_body_end(&mut out, &pixel);
    }
    TrackedHtml { html: out, links }
}

/// Inserts `snippet` before the last `</body>` (any case), or appends it when there is none.
pub fn insert_before_body_end(html: &mut String, snippet: &str) {
    match rfind_ci(html.as_bytes(), b"</body") {
        Some(pos) => html.insert_str(pos, snippet),
        None => html.push_str(snippet),
    }
}

/// A parsed `<a …>` start tag.
struct Tag {
    /// Index just past the closing `>`.
    end: usize,
    /// Span of the whole `href=…` attribute (name through value and quote).
    href_attr_start: usize,
    href_attr_end: usize,
    /// Span of the href value (inside quotes), if there is an href.
    href_value: Option<(usize, usize)>,
    notrack: bool,
}

impl Tag {
    fn trackable_href(&self, _bytes: &[u8]) -> Option<(usize, usize)> {
        if self.notrack {
            return None;
        }
        self.href_value
    }
}

fn is_tag_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

/// Parses the attributes of a start tag from `i` (just after the tag name) to its `>`.
/// Returns `None` when the tag is not terminated.
fn parse_tag(bytes: &[u8], mut i: usize) -> Option<Tag> {
    let mut tag = Tag {
        end: 0,
        href_attr_start: 0,
        href_attr_end: 0,
        href_value: None,
        notrack: false,
    };
    loop {
        while i < bytes.len() && (is_tag_space(bytes[i]) || bytes[i] == b'/') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == b'>' {
            tag.end = i + 1;
            return Some(tag);
        }
        let name_start = i;
        while i < bytes.len() && !is_tag_space(bytes[i]) && !matches!(bytes[i], b'=' | b'>' | b'/')
        {
            i += 1;
        }
        let name = &bytes[name_start..i];
        let mut j = i;
        while j < bytes.len() && is_tag_space(bytes[j]) {
            j += 1;
        }
        let mut value = None;
        if j < bytes.len() && bytes[j] == b'=' {
            j += 1;
            while j < bytes.len() && is_tag_space(bytes[j]) {
                j += 1;
            }
            if j >= bytes.len() {
                return None;
            }
            match bytes[j] {
                q @ (b'"' | b'\'') => {
                    let close = memchr(q, &bytes[j + 1..])?;
                    value = Some((j + 1, j + 1 + close));
                    i = j + 1 + close + 1;
                }
                _ => {
                    let start = j;
                    while j < bytes.len() && !is_tag_space(bytes[j]) && bytes[j] != b'>' {
                        j += 1;
                    }
                    value = Some((start, j));
                    i = j;
                }
            }
        }
        if name.eq_ignore_ascii_case(b"href") && tag.href_value.is_none() {
            tag.href_attr_start = name_start;
            tag.href_attr_end = i;
            tag.href_value = value;
        } else if name.eq_ignore_ascii_case(b"data-kizuna-notrack") {
            tag.notrack = true;
        }
    }
}

/// `<script` or `<style` (followed by a tag boundary): elements whose content is raw text.
fn raw_text_element(rest: &[u8]) -> Option<&'static [u8]> {
    for name in [&b"script"[..], &b"style"[..]] {
        if rest.len() > name.len() + 1
            && rest[1..=name.len()].eq_ignore_ascii_case(name)
            && (is_tag_space(rest[name.len() + 1]) || matches!(rest[name.len() + 1], b'>' | b'/'))
        {
            return Some(name);
        }
    }
    None
}

/// Index just past `</name…>` searching from `from`.
fn find_closing_tag(bytes: &[u8], from: usize, name: &[u8]) -> Option<usize> {
    let mut i = from;
    loop {
        let off = find(&bytes[i..], b"</")?;
        let p = i + off + 2;
        if bytes.len() >= p + name.len() && bytes[p..p + name.len()].eq_ignore_ascii_case(name) {
            let gt = memchr(b'>', &bytes[p..])?;
            return Some(p + gt + 1);
        }
        i = p;
    }
}

fn push_attr_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
}

/// Decodes the HTML character references that appear in attribute values (`&amp;`, `&#38;`,
/// `&#x26;`, …). Unknown references are kept as written.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.trim().to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let end = rest
            .char_indices()
            .take(12)
            .find(|&(_, c)| c == ';')
            .map(|(i, _)| i);
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    if let Some(hex) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                        u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
                    } else if let Some(dec) = name.strip_prefix('#') {
                        dec.parse::<u32>().ok().and_then(char::from_u32)
                    } else {
                        None
                    }
                }
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .rev()
        .find(|&i| hay[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn signer() -> LinkSigner {
        LinkSigner::new(&[7u8; 32], "https://mail.example.jp/")
            .unwrap()
            .with_unsubscribe_mailbox("example.jp")
            .unwrap()
    }

    fn token_of(url: &str, prefix: &str) -> String {
        url.split(prefix).nth(1).unwrap().to_string()
    }

    #[test]
    fn every_kind_round_trips_and_kinds_do_not_mix() {
        let s = signer();
        let id = Uuid::now_v7();
        let open = token_of(&s.open_url(id), "/o/");
        assert!(open.ends_with(".gif"));
        assert_eq!(s.verify_open(&open).unwrap(), id);
        let u = token_of(&s.unsubscribe_url(id), "/u/");
        assert_eq!(s.verify_unsubscribe(&u).unwrap(), id);
        let p = token_of(&s.preferences_url(id), "/p/");
        assert_eq!(s.verify_preferences(&p).unwrap(), id);
        let v = token_of(&s.view_url(id), "/v/");
        assert_eq!(s.verify_view(&v).unwrap(), id);
        // The same payload signed for one kind never verifies as another.
        assert!(matches!(
            s.verify_preferences(&u),
            Err(MailError::InvalidToken)
        ));
        assert!(matches!(
            s.verify_unsubscribe(&p),
            Err(MailError::InvalidToken)
        ));
        assert!(matches!(s.verify_open(&u), Err(MailError::InvalidToken)));
        assert_eq!(u.len(), 43, "compact: 16-byte id + 16-byte tag");
    }

    #[test]
    fn click_tokens_carry_the_signed_target() {
        let s = signer();
        let id = Uuid::now_v7();
        let target = "https://example.jp/seminar?utm_source=mail&x=日本";
        let t = token_of(&s.click_url(id, 3, target), "/c/");
        let click = s.verify_click(&t).unwrap();
        assert_eq!(click.message_id, id);
        assert_eq!(click.link_index, 3);
        assert_eq!(click.url, target);
    }

    #[test]
    fn forged_truncated_and_tampered_tokens_are_refused() {
        let s = signer();
        let id = Uuid::now_v7();
        let t = token_of(&s.click_url(id, 0, "https://example.jp/a"), "/c/");
        // Truncated.
        for cut in [1, 5, t.len() / 2, t.len() - 1] {
            assert!(matches!(
                s.verify_click(&t[..cut]),
                Err(MailError::InvalidToken)
            ));
        }
        // Tampered: change the target inside the payload.
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        let last_url_byte = raw.len() - TAG_LEN - 1;
        raw[last_url_byte] = b'b';
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        assert!(matches!(
            s.verify_click(&forged),
            Err(MailError::InvalidToken)
        ));
        // Another key.
        let other = LinkSigner::new(&[8u8; 32], "https://mail.example.jp").unwrap();
        assert!(matches!(
            other.verify_click(&t),
            Err(MailError::InvalidToken)
        ));
        // Garbage and padding.
        for bad in ["", "!!!", "a", &format!("{t}="), &"A".repeat(10_000)] {
            assert!(s.verify_click(bad).is_err(), "{bad:?}");
        }
        // An attacker-built token with a javascript: URL cannot have a valid tag; and even a
        // signed non-http target is refused.
        let js = token_of(&s.click_url(id, 0, "javascript:alert(1)"), "/c/");
        assert!(matches!(s.verify_click(&js), Err(MailError::InvalidToken)));
    }

    #[test]
    fn rotated_keys_still_verify() {
        let old = LinkSigner::new(&[1u8; 32], "https://m.example.jp").unwrap();
        let id = Uuid::now_v7();
        let t = token_of(&old.unsubscribe_url(id), "/u/");
        let new = LinkSigner::new(&[2u8; 32], "https://m.example.jp")
            .unwrap()
            .with_previous_key(&[1u8; 32]);
        assert_eq!(new.verify_unsubscribe(&t).unwrap(), id);
        let fresh = LinkSigner::new(&[2u8; 32], "https://m.example.jp").unwrap();
        assert!(fresh.verify_unsubscribe(&t).is_err());
    }

    #[test]
    fn confirm_tokens_expire() {
        let s = signer();
        let id = Uuid::now_v7();
        let now = Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap();
        let t = token_of(&s.confirm_url(id, now + Duration::hours(48)), "/confirm/");
        assert_eq!(s.verify_confirm(&t, now).unwrap(), id);
        assert_eq!(s.verify_confirm(&t, now + Duration::hours(48)).unwrap(), id);
        assert!(matches!(
            s.verify_confirm(&t, now + Duration::hours(49)),
            Err(MailError::TokenExpired)
        ));
    }

    #[test]
    fn mailto_unsubscribe_fits_a_local_part_and_ignores_case() {
        let s = signer();
        let id = Uuid::now_v7();
        let mailto = s.unsubscribe_mailto(id).unwrap();
        let addr = mailto.strip_prefix("mailto:").unwrap();
        let local = addr.split('@').next().unwrap();
        assert!(local.len() <= 64, "{} chars", local.len());
        assert_eq!(s.verify_unsubscribe_address(addr).unwrap(), id);
        assert_eq!(
            s.verify_unsubscribe_address(&addr.to_uppercase()).unwrap(),
            id
        );
        assert_eq!(s.verify_unsubscribe_address(&mailto).unwrap(), id);
        assert!(
            s.verify_unsubscribe_address("unsubscribe+aaaa@example.jp")
                .is_err()
        );
        assert!(s.verify_unsubscribe_address("someone@example.jp").is_err());
        assert!(s.verify_unsubscribe_address("").is_err());
    }

    #[test]
    fn base32_round_trips() {
        for n in 0..40 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base32_decode(&base32_encode(&data)).unwrap(), data);
        }
    }

    #[test]
    fn rewrites_trackable_links_only() {
        let s = signer();
        let id = Uuid::now_v7();
        let unsub = s.unsubscribe_url(id);
        let html = format!(
            r##"<html><body>
<a href="https://example.jp/a?x=1&amp;y=2">A</a>
<A HREF='http://example.jp/b' class="btn">B</A>
<a class=x href=https://example.jp/c>C</a>
<a href="mailto:sales@example.jp">mail</a>
<a href="tel:0312345678">tel</a>
<a href="#top">top</a>
<a href="/relative">rel</a>
<a href="https://example.jp/notrack" data-kizuna-notrack>no</a>
<a href="{unsub}">unsubscribe</a>
<!-- <a href="https://example.jp/commented">x</a> -->
<style>a[href="https://example.jp/css"] {{}}</style>
<abbr title="x">not a link</abbr>
</body></html>"##
        );
        let out = track_html(&html, &s, id, TrackingOptions::default());
        assert_eq!(
            out.links,
            vec![
                "https://example.jp/a?x=1&y=2",
                "http://example.jp/b",
                "https://example.jp/c"
            ]
        );
        assert!(out.html.contains("mailto:sales@example.jp"));
        assert!(out.html.contains("href=\"#top\""));
        assert!(out.html.contains(&format!("href=\"{unsub}\"")));
        assert!(out.html.contains("https://example.jp/notrack"));
        assert!(out.html.contains("https://example.jp/commented"));
        assert!(out.html.contains("class=\"btn\""));
        assert!(!out.html.contains("href=\"https://example.jp/a"));
        // The rewritten hrefs verify back to their targets, in order.
        let clicks: Vec<Click> = out
            .html
            .match_indices("/c/")
            .map(|(p, _)| {
                let t: String = out.html[p + 3..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                s.verify_click(&t).unwrap()
            })
            .collect();
        assert_eq!(clicks.len(), 3);
        for (i, c) in clicks.iter().enumerate() {
            assert_eq!(c.link_index as usize, i);
            assert_eq!(c.url, out.links[i]);
        }
        // The pixel sits before </body>.
        let pixel = out.html.find("/o/").unwrap();
        assert!(pixel < out.html.find("</body>").unwrap());
    }

    #[test]
    fn odd_html_never_panics() {
        let s = signer();
        let id = Uuid::now_v7();
        for html in [
            "",
            "<",
            "<a",
            "<a ",
            "<a href",
            "<a href=",
            "<a href=\"https://x.jp",
            "<a href='https://x.jp'",
            "<!--",
            "<script>",
            "<style",
            "<a href=\"https://x.jp\">日本語</a><a",
            "<<a href=https://x.jp>>",
            "<a\thref\n=\n\"https://x.jp/t\">tab</a>",
            "</body",
            "日本語<a href=\"https://例え.jp/パス\">x</a>",
        ] {
            let out = track_html(html, &s, id, TrackingOptions::default());
            assert!(out.html.contains("/o/"), "{html:?}");
        }
        let out = track_html(
            "<a\thref\n=\n\"https://x.jp/t\">tab</a>",
            &s,
            id,
            TrackingOptions {
                opens: false,
                clicks: true,
            },
        );
        assert_eq!(out.links, vec!["https://x.jp/t"]);
        assert!(!out.html.contains("/o/"));
    }

    #[test]
    fn decodes_entities() {
        assert_eq!(
            decode_entities("a&amp;b&#38;c&#x26;d&bogus;e&"),
            "a&b&c&d&bogus;e&"
        );
        assert_eq!(decode_entities(" https://x.jp "), "https://x.jp");
    }

    #[test]
    fn refuses_bad_configuration() {
        assert!(LinkSigner::new(&[0u8; 8], "https://x.jp").is_err());
        assert!(LinkSigner::new(&[0u8; 32], "ftp://x.jp").is_err());
        assert!(LinkSigner::new(&[0u8; 32], "https://x.jp/?q").is_err());
        assert!(
            LinkSigner::new(&[0u8; 32], "https://x.jp")
                .unwrap()
                .with_unsubscribe_mailbox("a b")
                .is_err()
        );
    }
}
