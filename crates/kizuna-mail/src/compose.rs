//! From a rendered template to the bytes handed to SMTP.
//!
//! Every **marketing** mail gets the footer that 特定電子メールの送信の適正化等に関する法律 and
//! CAN-SPAM require — the sender's organization, postal address, an inquiry address, and working
//! unsubscribe and preference links — in the HTML (before `</body>`) and in the text part; plus
//! `List-Unsubscribe` (https and, when configured, mailto) and `List-Unsubscribe-Post:
//! List-Unsubscribe=One-Click` (RFC 8058). **Transactional** mail gets neither.
//!
//! The message is written here (no MIME library): headers folded and RFC 2047-encoded where
//! needed (Japanese subjects and display names as UTF-8 `B` encoded words, split on character
//! boundaries), `multipart/alternative` with a text and an HTML part, both UTF-8 and base64, so
//! the message is 7-bit clean for any server. Then it is DKIM-signed with each configured key.
//!
//! The sender is either a named [`SenderIdentity`] or, with [`Author::Owner`], the contact's
//! owner (seed 004: the first mail from the CEO, later ones from the rep): `From` is the owner,
//! `Reply-To` the owner, and `Sender` the identity's mailbox when
//! [`ComposerConfig::owner_sender_header`] is set. DMARC passes only when the owner's address is
//! in a domain the DKIM key signs for.

use crate::MailError;
use crate::dkim::DkimSigner;
use crate::links::{LinkSigner, MessageUrls, TrackingOptions, insert_before_body_end, track_html};
use crate::template::{CompiledTemplate, RenderContext, Rendered, TemplateKind};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use kizuna_core::company::Company;
use kizuna_core::contact::Contact;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A named sender (a person or the organization) and the legal details for the footer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderIdentity {
    /// Display name, e.g. `株式会社キズナ マーケティング部`.
    pub name: String,
    /// Sending address, e.g. `news@kizuna.example.jp`.
    pub email: String,
    /// Organization name for the footer (送信者の氏名又は名称).
    pub organization: String,
    /// Postal address for the footer (住所).
    pub postal_address: String,
    /// Where replies go, when not the sending address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// A contact's owner (the sales rep), for "send as the owner" and the template's `owner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Display name, e.g. `佐藤 花子`.
    pub name: String,
    /// Address.
    pub email: String,
    /// Job title.
    #[serde(default)]
    pub title: Option<String>,
    /// Phone.
    #[serde(default)]
    pub phone: Option<String>,
    /// Signature block (HTML allowed; printed with `| safe` if the template wants it raw).
    #[serde(default)]
    pub signature: Option<String>,
}

/// Who the message is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Author {
    /// The sender identity.
    #[default]
    Identity,
    /// The contact's owner; falls back to the identity when the contact has none.
    Owner,
}

/// The envelope (`MAIL FROM` / `RCPT TO`), which may differ from the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Return path: where bounces go.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
}

/// The return path (envelope sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnPath {
    /// One fixed bounce address.
    Fixed(String),
    /// VERP: `{local}+{message id}@{domain}`, so every bounce names its message
    /// ([`crate::feedback::message_id_from_verp`]).
    Verp {
        /// Local part before the `+`, e.g. `bounce`.
        local: String,
        /// Bounce domain.
        domain: String,
    },
}

/// Installation-wide composition settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposerConfig {
    /// Domain of `Message-ID`s, e.g. `kizuna.example.jp`.
    pub message_id_domain: String,
    /// Envelope sender.
    pub return_path: ReturnPath,
    /// In owner mode, add `Sender: <identity address>`.
    pub owner_sender_header: bool,
    /// Identifies the mail stream in `Feedback-ID` (Gmail's feedback loop), e.g. `kizuna`.
    pub feedback_sender_id: String,
}

/// One message to build.
#[derive(Debug, Clone, Copy)]
pub struct MessageSpec<'a> {
    /// The outbox message id (also in `X-Kizuna-Message`, `Message-ID` and every link).
    pub message_id: Uuid,
    /// The recipient.
    pub contact: &'a Contact,
    /// The recipient's company.
    pub company: Option<&'a Company>,
    /// The recipient's owner.
    pub owner: Option<&'a Owner>,
    /// The sender identity.
    pub sender: &'a SenderIdentity,
    /// From the identity or the owner.
    pub author: Author,
    /// `Date:` and the DKIM timestamp.
    pub date: DateTime<Utc>,
    /// Campaign (broadcast, program step) id for `Feedback-ID`.
    pub campaign: Option<&'a str>,
    /// Open and click tracking.
    pub tracking: TrackingOptions,
}

/// A finished message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltMessage {
    /// The outbox message id.
    pub message_id: Uuid,
    /// The `Message-ID` header value, with angle brackets.
    pub message_id_header: String,
    /// Envelope for SMTP.
    pub envelope: Envelope,
    /// The subject as rendered.
    pub subject: String,
    /// The original URLs of the tracked links, by link index.
    pub links: Vec<String>,
    /// The signed RFC 5322 message, CRLF line endings, 7-bit.
    pub bytes: Vec<u8>,
}

/// Builds and signs messages.
#[derive(Debug, Clone)]
pub struct Composer {
    config: ComposerConfig,
    links: LinkSigner,
    dkim: Vec<DkimSigner>,
}

impl Composer {
    /// A composer; `dkim` may hold several signers (e.g. RSA and Ed25519: both sign).
    pub fn new(
        config: ComposerConfig,
        links: LinkSigner,
        dkim: Vec<DkimSigner>,
    ) -> Result<Self, MailError> {
        if !is_domain(&config.message_id_domain) {
            return Err(MailError::Config(format!(
                "message id domain {:?} is not a domain name",
                config.message_id_domain
            )));
        }
        match &config.return_path {
            ReturnPath::Fixed(a) => check_address(a)?,
            ReturnPath::Verp { local, domain } => {
                check_address(&format!("{local}@{domain}"))?;
            }
        }
        Ok(Self {
            config,
            links,
            dkim,
        })
    }

    /// The link signer.
    pub fn links(&self) -> &LinkSigner {
        &self.links
    }

    /// Personalizes `template` for `spec.contact`, then composes and signs: the whole per-message
    /// pipeline.
    pub fn build(
        &self,
        template: &CompiledTemplate,
        spec: &MessageSpec<'_>,
    ) -> Result<BuiltMessage, MailError> {
        let urls = self.links.message_urls(spec.message_id);
        self.build_with_urls(template, spec, &urls)
    }

    /// [`Composer::build`] with the per-message URLs given (e.g. with a double opt-in
    /// `confirm` link added).
    pub fn build_with_urls(
        &self,
        template: &CompiledTemplate,
        spec: &MessageSpec<'_>,
        urls: &MessageUrls,
    ) -> Result<BuiltMessage, MailError> {
        let rendered = template.render(&RenderContext {
            contact: spec.contact,
            company: spec.company,
            owner: spec.owner,
            sender: spec.sender,
            urls,
        })?;
        self.compose_with_urls(&rendered, template.kind(), spec, urls)
    }

    /// Composes and signs an already rendered message (e.g. a preview approved by a person).
    pub fn compose(
        &self,
        rendered: &Rendered,
        kind: TemplateKind,
        spec: &MessageSpec<'_>,
    ) -> Result<BuiltMessage, MailError> {
        let urls = self.links.message_urls(spec.message_id);
        self.compose_with_urls(rendered, kind, spec, &urls)
    }

    fn compose_with_urls(
        &self,
        rendered: &Rendered,
        kind: TemplateKind,
        spec: &MessageSpec<'_>,
        urls: &MessageUrls,
    ) -> Result<BuiltMessage, MailError> {
        let to = spec
            .contact
            .email
            .as_deref()
            .ok_or_else(|| MailError::InvalidAddress {
                address: String::new(),
                reason: "the contact has no e-mail address",
            })?;
        check_address(to)?;
        let marketing = kind == TemplateKind::Marketing;

        // Bodies: footer, then tracking (the footer's own links are never rewritten).
        let Rendered { text, mut html, .. } = with_footer(rendered, kind, spec.sender, urls);
        let mut links = Vec::new();
        if let Some(h) = html.as_mut() {
            let tracked = track_html(h, &self.links, spec.message_id, spec.tracking);
            *h = tracked.html;
            links = tracked.links;
        }

        // Headers.
        let message_id_header = format!("<{}@{}>", spec.message_id, self.config.message_id_domain);
        let mut h = String::with_capacity(2048);
        push_header(&mut h, "Date", &spec.date.to_rfc2822());
        let owner = match spec.author {
            Author::Owner => spec.owner,
            Author::Identity => None,
        };
        match owner {
            Some(o) => {
                check_address(&o.email)?;
                push_header(&mut h, "From", &mailbox(Some(&o.name), &o.email, 6)?);
                if self.config.owner_sender_header
                    && !o.email.eq_ignore_ascii_case(&spec.sender.email)
                {
                    push_header(
                        &mut h,
                        "Sender",
                        &mailbox(Some(&spec.sender.name), &spec.sender.email, 8)?,
                    );
                }
                push_header(&mut h, "Reply-To", &mailbox(Some(&o.name), &o.email, 10)?);
            }
            None => {
                push_header(
                    &mut h,
                    "From",
                    &mailbox(Some(&spec.sender.name), &spec.sender.email, 6)?,
                );
                if let Some(r) = &spec.sender.reply_to {
                    push_header(&mut h, "Reply-To", &mailbox(None, r, 10)?);
                }
            }
        }
        let to_name = crate::template::contact_display_name(spec.contact);
        push_header(&mut h, "To", &mailbox(to_name.as_deref(), to, 4)?);
        push_header(
            &mut h,
            "Subject",
            &encode_unstructured(&rendered.subject, 9),
        );
        push_header(&mut h, "Message-ID", &message_id_header);
        push_header(&mut h, "MIME-Version", "1.0");
        if marketing {
            let mut lu = format!("<{}>", urls.unsubscribe);
            if let Some(m) = &urls.unsubscribe_mailto {
                lu.push_str(",\r\n <");
                lu.push_str(m);
                lu.push('>');
            }
            push_header(&mut h, "List-Unsubscribe", &lu);
            push_header(
                &mut h,
                "List-Unsubscribe-Post",
                "List-Unsubscribe=One-Click",
            );
        }
        let campaign = spec.campaign.map(feedback_id_part).unwrap_or_default();
        push_header(
            &mut h,
            "Feedback-ID",
            &format!(
                "{}:{}:{}",
                if campaign.is_empty() {
                    "none"
                } else {
                    &campaign
                },
                if marketing {
                    "marketing"
                } else {
                    "transactional"
                },
                feedback_id_part(&self.config.feedback_sender_id)
            ),
        );
        push_header(&mut h, "X-Kizuna-Message", &spec.message_id.to_string());

        // Body.
        match &html {
            Some(html) => {
                let boundary = format!("=_kz_{}", spec.message_id.simple());
                push_header(
                    &mut h,
                    "Content-Type",
                    &format!("multipart/alternative;\r\n boundary=\"{boundary}\""),
                );
                h.push_str("\r\n");
                h.push_str("This is a multi-part message in MIME format.\r\n");
                for (ctype, body) in [("text/plain", text.as_str()), ("text/html", html.as_str())] {
                    h.push_str("\r\n--");
                    h.push_str(&boundary);
                    h.push_str("\r\n");
                    push_header(&mut h, "Content-Type", &format!("{ctype}; charset=utf-8"));
                    push_header(&mut h, "Content-Transfer-Encoding", "base64");
                    h.push_str("\r\n");
                    push_base64_lines(&mut h, body.as_bytes());
                }
                h.push_str("\r\n--");
                h.push_str(&boundary);
                h.push_str("--\r\n");
            }
            None => {
                push_header(&mut h, "Content-Type", "text/plain; charset=utf-8");
                push_header(&mut h, "Content-Transfer-Encoding", "base64");
                h.push_str("\r\n");
                push_base64_lines(&mut h, text.as_bytes());
            }
        }

        let unsigned = h.into_bytes();
        let mut signatures = String::new();
        for signer in &self.dkim {
            signatures.push_str(&signer.sign(&unsigned, spec.date)?);
        }
        let mut bytes = Vec::with_capacity(signatures.len() + unsigned.len());
        bytes.extend_from_slice(signatures.as_bytes());
        bytes.extend_from_slice(&unsigned);

        let envelope_from = match &self.config.return_path {
            ReturnPath::Fixed(a) => a.clone(),
            ReturnPath::Verp { local, domain } => {
                format!("{local}+{}@{domain}", spec.message_id.simple())
            }
        };
        Ok(BuiltMessage {
            message_id: spec.message_id,
            message_id_header,
            envelope: Envelope {
                from: envelope_from,
                to: vec![to.to_string()],
            },
            subject: rendered.subject.clone(),
            links,
            bytes,
        })
    }
}

/// The bodies as the recipient will read them, before tracking and MIME: with the legal footer
/// when `kind` is marketing. Previews show this.
pub fn with_footer(
    rendered: &Rendered,
    kind: TemplateKind,
    sender: &SenderIdentity,
    urls: &MessageUrls,
) -> Rendered {
    let mut out = rendered.clone();
    if kind == TemplateKind::Marketing {
        append_text_footer(&mut out.text, sender, urls);
        if let Some(h) = out.html.as_mut() {
            insert_before_body_end(h, &html_footer(sender, urls));
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The legal footer, HTML.
pub fn html_footer(sender: &SenderIdentity, urls: &MessageUrls) -> String {
    let inquiry = sender.reply_to.as_deref().unwrap_or(&sender.email);
    format!(
        concat!(
            "<div class=\"kizuna-footer\" style=\"margin:24px auto 0;padding:16px;max-width:600px;",
            "font-family:sans-serif;font-size:12px;line-height:1.6;color:#666666;text-align:center\">",
            "<p style=\"margin:0 0 8px\">{org}<br>{addr}<br>お問い合わせ / Contact: ",
            "<a href=\"mailto:{inq}\" style=\"color:#666666\">{inq}</a></p>",
            "<p style=\"margin:0\">今後このようなメールの配信を希望されない場合は",
            "<a href=\"{unsub}\" style=\"color:#666666\">配信停止 / Unsubscribe</a>",
            "　｜　<a href=\"{prefs}\" style=\"color:#666666\">配信設定の変更 / Preferences</a></p>",
            "</div>"
        ),
        org = html_escape(&sender.organization),
        addr = html_escape(&sender.postal_address),
        inq = html_escape(inquiry),
        unsub = html_escape(&urls.unsubscribe),
        prefs = html_escape(&urls.preferences),
    )
}

fn append_text_footer(text: &mut String, sender: &SenderIdentity, urls: &MessageUrls) {
    let inquiry = sender.reply_to.as_deref().unwrap_or(&sender.email);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "\n--\n{}\n{}\nお問い合わせ / Contact: {inquiry}\n配信停止 / Unsubscribe: {}\n配信設定の変更 / Preferences: {}\n",
        sender.organization, sender.postal_address, urls.unsubscribe, urls.preferences
    ));
}

fn feedback_id_part(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect()
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Accepts plain ASCII addresses (`local@domain`); refuses anything that could break a header or
/// an SMTP command.
pub fn check_address(address: &str) -> Result<(), MailError> {
    let bad = |reason| {
        Err(MailError::InvalidAddress {
            address: address.to_string(),
            reason,
        })
    };
    if address.len() > 254 {
        return bad("longer than 254 characters");
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return bad("no @");
    };
    if local.is_empty() || local.len() > 64 {
        return bad("local part is empty or longer than 64 characters");
    }
    if !local
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b))
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return bad("local part has characters that need quoting or are not ASCII");
    }
    if !is_domain(domain) {
        return bad("domain is not an ASCII domain name (use punycode)");
    }
    Ok(())
}

/// A plain-text internal message (an alert to a sales rep, not marketing mail: no footer,
/// no tracking, no unsubscribe): RFC 5322 bytes with encoded headers and a base64 UTF-8 body.
pub fn internal_message(
    from: (&str, &str),
    to: &str,
    subject: &str,
    text: &str,
    message_id: &str,
    date: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<u8>, MailError> {
    let mut h = String::with_capacity(text.len() * 2 + 512);
    push_header(&mut h, "From", &mailbox(Some(from.0), from.1, 6)?);
    push_header(&mut h, "To", &mailbox(None, to, 4)?);
    push_header(&mut h, "Subject", &encode_unstructured(subject, 9));
    push_header(&mut h, "Date", &date.to_rfc2822());
    push_header(&mut h, "Message-ID", &format!("<{message_id}>"));
    push_header(&mut h, "Auto-Submitted", "auto-generated");
    push_header(&mut h, "MIME-Version", "1.0");
    push_header(&mut h, "Content-Type", "text/plain; charset=utf-8");
    push_header(&mut h, "Content-Transfer-Encoding", "base64");
    h.push_str("\r\n");
    push_base64_lines(&mut h, text.replace('\n', "\r\n").as_bytes());
    Ok(h.into_bytes())
}

fn push_header(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    out.push_str(value);
    out.push_str("\r\n");
}

fn clean_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `name <address>` with the name quoted or RFC 2047-encoded as needed. `offset` is the length
/// of the header name and `": "`, for folding.
fn mailbox(name: Option<&str>, address: &str, offset: usize) -> Result<String, MailError> {
    check_address(address)?;
    let name = name.map(clean_line).filter(|n| !n.is_empty());
    Ok(match name {
        None => address.to_string(),
        Some(n) if n.is_ascii() => {
            let atoms = n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" !#$%&'*+-/=?^_`{|}~".contains(&b));
            if atoms {
                format!("{n} <{address}>")
            } else {
                let q = n.replace('\\', "\\\\").replace('"', "\\\"");
                format!("\"{q}\" <{address}>")
            }
        }
        Some(n) => format!("{}\r\n <{address}>", encoded_words(&n, offset)),
    })
}

/// An unstructured header value (e.g. `Subject`): as-is when short printable ASCII, folded when
/// long ASCII, RFC 2047 `B` words otherwise.
pub fn encode_unstructured(value: &str, offset: usize) -> String {
    let v = clean_line(value);
    if v.is_ascii() && !v.contains("=?") {
        if offset + v.len() <= 78 {
            return v;
        }
        // Fold at spaces.
        let mut out = String::with_capacity(v.len() + 16);
        let mut line = offset;
        for (i, word) in v.split(' ').enumerate() {
            if i > 0 {
                if line + 1 + word.len() > 78 {
                    out.push_str("\r\n ");
                    line = 1;
                } else {
                    out.push(' ');
                    line += 1;
                }
            }
            out.push_str(word);
            line += word.len();
        }
        return out;
    }
    encoded_words(&v, offset)
}

/// RFC 2047 `=?UTF-8?B?…?=` words of at most 75 characters, split on character boundaries,
/// joined by folding whitespace.
fn encoded_words(s: &str, offset: usize) -> String {
    // 39 bytes -> 52 base64 chars + 12 of framing = 64: fits a 78-column line after the name.
    const MAX_BYTES: usize = 39;
    let _ = offset;
    let mut out = String::with_capacity(s.len() * 2);
    let mut start = 0;
    let mut end = 0;
    let mut first = true;
    let mut flush = |chunk: &str, out: &mut String| {
        if !first {
            out.push_str("\r\n ");
        }
        first = false;
        out.push_str("=?UTF-8?B?");
        out.push_str(&STANDARD.encode(chunk.as_bytes()));
        out.push_str("?=");
    };
    for (i, c) in s.char_indices() {
        if i + c.len_utf8() - start > MAX_BYTES {
            flush(&s[start..end], &mut out);
            start = i;
        }
        end = i + c.len_utf8();
    }
    if end > start || out.is_empty() {
        flush(&s[start..end], &mut out);
    }
    out
}

fn push_base64_lines(out: &mut String, data: &[u8]) {
    // 57 input bytes -> 76 output characters per line.
    for chunk in data.chunks(57) {
        STANDARD.encode_string(chunk, out);
        out.push_str("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Template;
    use chrono::TimeZone;

    pub(crate) fn sender() -> SenderIdentity {
        SenderIdentity {
            name: "株式会社キズナ マーケティング部".into(),
            email: "news@kizuna.example.jp".into(),
            organization: "株式会社キズナ".into(),
            postal_address: "〒100-0001 東京都千代田区千代田1-1".into(),
            reply_to: None,
        }
    }

    fn composer() -> Composer {
        Composer::new(
            ComposerConfig {
                message_id_domain: "kizuna.example.jp".into(),
                return_path: ReturnPath::Verp {
                    local: "bounce".into(),
                    domain: "kizuna.example.jp".into(),
                },
                owner_sender_header: true,
                feedback_sender_id: "kizuna".into(),
            },
            LinkSigner::new(&[9u8; 32], "https://t.kizuna.example.jp")
                .unwrap()
                .with_unsubscribe_mailbox("kizuna.example.jp")
                .unwrap(),
            vec![],
        )
        .unwrap()
    }

    fn contact() -> Contact {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        Contact {
            id: Uuid::now_v7(),
            email: Some("taro@example.co.jp".into()),
            first_name: Some("太郎".into()),
            last_name: Some("山田".into()),
            phone: None,
            job_title: None,
            department: None,
            company_id: None,
            lifecycle_stage: Default::default(),
            temperature: Default::default(),
            owner_id: None,
            source: Default::default(),
            address: Default::default(),
            custom: Default::default(),
            created_at: t,
            updated_at: t,
        }
    }

    fn decode_words(v: &str) -> String {
        v.split_whitespace()
            .map(|w| {
                let b = w.trim_start_matches("=?UTF-8?B?").trim_end_matches("?=");
                String::from_utf8(STANDARD.decode(b).unwrap()).unwrap()
            })
            .collect()
    }

    fn header(msg: &str, name: &str) -> Option<String> {
        let head = msg.split("\r\n\r\n").next().unwrap();
        let mut out: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(o) = out.as_mut() {
                    o.push_str(line);
                }
                continue;
            }
            if out.is_some() {
                return out;
            }
            if let Some(v) = line.strip_prefix(&format!("{name}: ")) {
                out = Some(v.to_string());
            }
        }
        out
    }

    fn build(kind: TemplateKind, author: Author, owner: Option<&Owner>) -> BuiltMessage {
        let t = Template {
            subject: "【ご案内】{{ contact.last_name | default(\"ご担当者\") }}様、製造業DXセミナー2026のお知らせです".into(),
            mjml: None,
            html: Some("<html><body><p>{{ contact.last_name }}様</p><a href=\"https://example.jp/seminar\">詳細</a></body></html>".into()),
            text: None,
            kind,
        }
        .compile()
        .unwrap();
        let c = contact();
        let s = sender();
        composer()
            .build(
                &t,
                &MessageSpec {
                    message_id: Uuid::now_v7(),
                    contact: &c,
                    company: None,
                    owner,
                    sender: &s,
                    author,
                    date: Utc.with_ymd_and_hms(2026, 11, 2, 1, 2, 3).unwrap(),
                    campaign: Some("bc-42"),
                    tracking: TrackingOptions::default(),
                },
            )
            .unwrap()
    }

    #[test]
    fn marketing_mail_has_headers_footer_and_tracking() {
        let m = build(TemplateKind::Marketing, Author::Identity, None);
        let s = String::from_utf8(m.bytes.clone()).unwrap();
        assert!(s.is_ascii());
        assert!(s.lines().all(|l| l.len() <= 998));
        let subject = header(&s, "Subject").unwrap();
        assert_eq!(
            decode_words(&subject),
            "【ご案内】山田様、製造業DXセミナー2026のお知らせです"
        );
        // Header lines fold at 78 columns, except where a URL cannot be folded.
        for line in s.split("\r\n").take_while(|l| !l.is_empty()) {
            assert!(
                line.len() <= 78 || line.contains("https://") || line.contains("mailto:"),
                "{line}"
            );
        }
        let lu = header(&s, "List-Unsubscribe").unwrap();
        assert!(lu.starts_with("<https://t.kizuna.example.jp/u/"), "{lu}");
        assert!(lu.contains("<mailto:unsubscribe+"), "{lu}");
        assert_eq!(
            header(&s, "List-Unsubscribe-Post").unwrap(),
            "List-Unsubscribe=One-Click"
        );
        assert_eq!(
            header(&s, "X-Kizuna-Message").unwrap(),
            m.message_id.to_string()
        );
        assert_eq!(header(&s, "Feedback-ID").unwrap(), "bc-42:marketing:kizuna");
        assert_eq!(
            header(&s, "Message-ID").unwrap(),
            format!("<{}@kizuna.example.jp>", m.message_id)
        );
        assert_eq!(
            header(&s, "Date").unwrap(),
            "Mon, 2 Nov 2026 01:02:03 +0000"
        );
        let from = header(&s, "From").unwrap();
        assert!(from.ends_with("<news@kizuna.example.jp>"), "{from}");
        let to = header(&s, "To").unwrap();
        assert!(to.ends_with("<taro@example.co.jp>"));
        assert_eq!(
            m.envelope.from,
            format!("bounce+{}@kizuna.example.jp", m.message_id.simple())
        );
        assert_eq!(m.envelope.to, vec!["taro@example.co.jp"]);
        assert_eq!(m.links, vec!["https://example.jp/seminar"]);
        // Decode the two parts.
        let parts = decoded_parts(&s);
        assert_eq!(parts.len(), 2);
        let (text, html) = (&parts[0], &parts[1]);
        assert!(text.contains("山田様"));
        assert!(text.contains("株式会社キズナ"));
        assert!(text.contains("〒100-0001 東京都千代田区千代田1-1"));
        assert!(text.contains("配信停止 / Unsubscribe: https://t.kizuna.example.jp/u/"));
        assert!(html.contains("株式会社キズナ"));
        assert!(html.contains("href=\"https://t.kizuna.example.jp/u/"));
        assert!(html.contains("href=\"https://t.kizuna.example.jp/p/"));
        assert!(html.contains("/c/"));
        assert!(html.contains("/o/"));
        let footer = html.find("kizuna-footer").unwrap();
        assert!(footer < html.find("</body>").unwrap());
    }

    fn decoded_parts(s: &str) -> Vec<String> {
        s.split("Content-Transfer-Encoding: base64\r\n\r\n")
            .skip(1)
            .map(|p| {
                let b64: String = p
                    .split("\r\n")
                    .take_while(|l| !l.is_empty() && !l.starts_with("--"))
                    .collect();
                String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap()
            })
            .collect()
    }

    #[test]
    fn transactional_mail_has_no_footer_or_list_headers() {
        let m = build(TemplateKind::Transactional, Author::Identity, None);
        let s = String::from_utf8(m.bytes).unwrap();
        assert!(header(&s, "List-Unsubscribe").is_none());
        assert!(header(&s, "List-Unsubscribe-Post").is_none());
        let parts = decoded_parts(&s);
        assert!(!parts[0].contains("配信停止"));
        assert!(!parts[1].contains("kizuna-footer"));
        assert_eq!(
            header(&s, "Feedback-ID").unwrap(),
            "bc-42:transactional:kizuna"
        );
    }

    #[test]
    fn owner_mode_sets_from_sender_and_reply_to() {
        let owner = Owner {
            name: "Hanako Sato".into(),
            email: "sato@kizuna.example.jp".into(),
            title: None,
            phone: None,
            signature: None,
        };
        let m = build(TemplateKind::Marketing, Author::Owner, Some(&owner));
        let s = String::from_utf8(m.bytes).unwrap();
        assert_eq!(
            header(&s, "From").unwrap(),
            "Hanako Sato <sato@kizuna.example.jp>"
        );
        assert_eq!(
            header(&s, "Reply-To").unwrap(),
            "Hanako Sato <sato@kizuna.example.jp>"
        );
        assert!(
            header(&s, "Sender")
                .unwrap()
                .ends_with("<news@kizuna.example.jp>")
        );
        // Without an owner: the identity.
        let m = build(TemplateKind::Marketing, Author::Owner, None);
        let s = String::from_utf8(m.bytes).unwrap();
        assert!(
            header(&s, "From")
                .unwrap()
                .ends_with("<news@kizuna.example.jp>")
        );
        assert!(header(&s, "Sender").is_none());
    }

    #[test]
    fn encoded_words_split_on_characters() {
        let s = "あ".repeat(40) + "abc";
        let enc = encoded_words(&s, 9);
        for w in enc.split("\r\n ") {
            assert!(w.len() <= 75, "{w}");
        }
        assert_eq!(decode_words(&enc), s);
        assert_eq!(
            encode_unstructured("Hello\r\nBcc: x@y.z", 9),
            "Hello Bcc: x@y.z"
        );
        let long = "word ".repeat(30);
        let folded = encode_unstructured(&long, 9);
        assert!(folded.split("\r\n").all(|l| l.len() <= 78));
        assert_eq!(folded.replace("\r\n ", " "), long.trim());
    }

    #[test]
    fn mailboxes_are_quoted_and_checked() {
        assert_eq!(mailbox(Some("Taro"), "a@b.jp", 4).unwrap(), "Taro <a@b.jp>");
        assert_eq!(
            mailbox(Some("Yamada, \"Taro\""), "a@b.jp", 4).unwrap(),
            "\"Yamada, \\\"Taro\\\"\" <a@b.jp>"
        );
        assert!(
            mailbox(Some("山田"), "a@b.jp", 4)
                .unwrap()
                .starts_with("=?UTF-8?B?")
        );
        for bad in [
            "a",
            "a@",
            "@b.jp",
            "a b@c.jp",
            "a@b.jp\r\nBcc: x@y.z",
            "山田@b.jp",
            "a@例え.jp",
            "a..b@c.jp",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
        assert!(check_address("unsubscribe+abc_def-1@x.example.jp").is_ok());
    }
}
