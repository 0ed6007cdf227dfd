//! Bounces and complaints, from wherever they arrive, as one list of [`Feedback`]:
//!
//! - [`parse_report`]: a mail received at the bounce or feedback-loop mailbox — a DSN
//!   (RFC 3464, `multipart/report; report-type=delivery-status`) or an ARF complaint (RFC 5965,
//!   `report-type=feedback-report`). The original message (or its headers) inside the report
//!   gives our `X-Kizuna-Message` id, or failing that our `Message-ID`.
//! - [`parse_ses`]: an Amazon SES notification, raw or wrapped in an SNS envelope.
//! - [`parse_sendgrid`]: a SendGrid event webhook batch.
//! - [`message_id_from_verp`]: the message id in a VERP return path (the address a DSN was
//!   sent to), for reports that do not quote the original.
//!
//! Hard bounces suppress the address, soft bounces are counted, complaints suppress and are
//! reported. Deliveries, opens and other events are ignored here.

use crate::MailError;
use mail_parser::{MessageParser, MimeHeaders, PartType};
use serde_json::Value;
use uuid::Uuid;

/// What the feedback says about the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedbackKind {
    /// The address does not exist or refuses our mail for good (5.x.x).
    HardBounce,
    /// A temporary problem (4.x.x, mailbox full, greylisting, delayed).
    SoftBounce,
    /// The recipient marked the mail as spam.
    Complaint,
    /// The receiving system confirmed delivery (DSN `Action: delivered`, SES `Delivery`,
    /// SendGrid `delivered`): recorded as `email.delivered`.
    Delivered,
}

/// One recipient's bounce or complaint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// The recipient address, lowercase.
    pub recipient: String,
    /// Bounce or complaint.
    pub kind: FeedbackKind,
    /// The outbox message, when the report identifies it.
    pub message_id: Option<Uuid>,
    /// Enhanced status code (`5.1.1`), when given.
    pub status: Option<String>,
    /// Human-readable detail (diagnostic code, bounce type, feedback type).
    pub detail: String,
}

fn bad(msg: impl Into<String>) -> MailError {
    MailError::Feedback(msg.into())
}

/// Header-like field blocks (`Name: value` lines, folded lines continued, blank lines between
/// blocks), names lowercased.
fn field_blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let mut blocks = Vec::new();
    let mut block: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = block.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            block.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `rfc822; User@Example.jp` → `user@example.jp`; also strips angle brackets.
fn address_of(v: &str) -> String {
    let v = v.split_once(';').map_or(v, |(_, a)| a);
    let v = match (v.find('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v,
    };
    v.trim().to_ascii_lowercase()
}

/// Our message id from a `Message-ID` value like `<0190…@kizuna.example.jp>`.
pub fn message_id_from_header(value: &str) -> Option<Uuid> {
    let v = value.trim().trim_start_matches('<');
    let local = v.split('@').next()?;
    Uuid::parse_str(local.trim()).ok()
}

/// Our message id from a VERP return path like `bounce+0190…@kizuna.example.jp`.
pub fn message_id_from_verp(address: &str) -> Option<Uuid> {
    let a = address_of(address);
    let local = a.split('@').next()?;
    let (_, id) = local.rsplit_once('+')?;
    Uuid::parse_str(id).ok()
}

/// The message id found in the headers of an original message quoted in a report.
fn message_id_from_original(headers_text: &str) -> (Option<Uuid>, Option<String>) {
    let head = headers_text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .split("\n\n")
        .next()
        .unwrap_or_default();
    let blocks = field_blocks(head);
    let Some(b) = blocks.first() else {
        return (None, None);
    };
    let id = field(b, "x-kizuna-message")
        .and_then(|v| Uuid::parse_str(v.trim()).ok())
        .or_else(|| field(b, "message-id").and_then(message_id_from_header));
    let to = field(b, "to").map(address_of);
    (id, to)
}

/// Parses a DSN or an ARF report.
pub fn parse_report(raw: &[u8]) -> Result<Vec<Feedback>, MailError> {
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| bad("not a mail message"))?;
    let root = msg.root_part();
    let report_type = root
        .content_type()
        .filter(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        })
        .and_then(|ct| ct.attribute("report-type"))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| bad("not a multipart/report message"))?;

    let mut status_text: Option<String> = None;
    let mut original: Option<String> = None;
    for part in msg.parts.iter().skip(1) {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let full = format!(
            "{}/{}",
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or_default().to_ascii_lowercase()
        );
        let text = || String::from_utf8_lossy(part.contents()).into_owned();
        match full.as_str() {
            "message/delivery-status"
            | "message/global-delivery-status"
            | "message/feedback-report" => {
                status_text.get_or_insert_with(text);
            }
            "message/rfc822"
            | "message/global"
            | "text/rfc822-headers"
            | "message/rfc822-headers"
            | "message/global-headers"
                if original.is_none() =>
            {
                original = Some(match &part.body {
                    PartType::Message(m) => String::from_utf8_lossy(m.raw_message()).into_owned(),
                    _ => text(),
                });
            }
            _ => {}
        }
    }
    let status_text = status_text
        .ok_or_else(|| bad(format!("report-type={report_type} without a status part")))?;
    let (message_id, original_to) = original
        .as_deref()
        .map(message_id_from_original)
        .unwrap_or((None, None));
    let blocks = field_blocks(&status_text);

    match report_type.as_str() {
        "delivery-status" => {
            let mut out = Vec::new();
            for block in blocks.iter().skip(1) {
                let Some(recipient) = field(block, "final-recipient")
                    .or_else(|| field(block, "original-recipient"))
                    .map(address_of)
                else {
                    continue;
                };
                let action = field(block, "action")
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let status = field(block, "status")
                    .map(|s| s.split_whitespace().next().unwrap_or_default().to_string());
                let class = status.as_deref().and_then(|s| s.chars().next());
                let kind = match (action.as_str(), class) {
                    ("failed", Some('4')) => FeedbackKind::SoftBounce,
                    ("failed", _) => FeedbackKind::HardBounce,
                    ("delayed", _) => FeedbackKind::SoftBounce,
                    ("delivered", _) => FeedbackKind::Delivered,
                    _ => continue, // relayed, expanded: no final outcome yet
                };
                let detail = field(block, "diagnostic-code")
                    .map(|d| d.split_once(';').map_or(d, |(_, t)| t).trim().to_string())
                    .unwrap_or_else(|| format!("{action} {}", status.clone().unwrap_or_default()));
                out.push(Feedback {
                    recipient,
                    kind,
                    message_id,
                    status,
                    detail,
                });
            }
            if out.is_empty() {
                return Err(bad(
                    "delivery-status report without a delivered, failed or delayed recipient",
                ));
            }
            Ok(out)
        }
        "feedback-report" => {
            let block: Vec<(String, String)> = blocks.into_iter().flatten().collect();
            let feedback_type = field(&block, "feedback-type")
                .unwrap_or("abuse")
                .to_ascii_lowercase();
            if feedback_type == "not-spam" {
                return Ok(Vec::new());
            }
            let recipient = field(&block, "original-rcpt-to")
                .map(address_of)
                .or(original_to)
                .ok_or_else(|| bad("complaint without Original-Rcpt-To or original To"))?;
            let reporter = field(&block, "user-agent")
                .or_else(|| field(&block, "reporting-mta"))
                .unwrap_or("unknown reporter");
            Ok(vec![Feedback {
                recipient,
                kind: FeedbackKind::Complaint,
                message_id,
                status: None,
                detail: format!("{feedback_type} report from {reporter}"),
            }])
        }
        other => Err(bad(format!("unsupported report-type {other}"))),
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn ses_message_id(mail: Option<&Value>) -> Option<Uuid> {
    let mail = mail?;
    let from_headers = mail
        .get("headers")
        .and_then(Value::as_array)
        .and_then(|hs| {
            hs.iter().find_map(|h| {
                let name = h.get("name")?.as_str()?;
                if name.eq_ignore_ascii_case("x-kizuna-message") {
                    Uuid::parse_str(h.get("value")?.as_str()?.trim()).ok()
                } else {
                    None
                }
            })
        });
    from_headers
        .or_else(|| str_at(mail, &["commonHeaders", "messageId"]).and_then(message_id_from_header))
}

/// The `SubscribeURL` of an SNS subscription confirmation, which the web layer must fetch once
/// to start receiving notifications; `None` for anything else.
pub fn ses_subscription_url(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    (str_at(&v, &["Type"])? == "SubscriptionConfirmation")
        .then(|| str_at(&v, &["SubscribeURL"]).map(str::to_string))
        .flatten()
}

/// Parses an Amazon SES bounce, complaint or delivery notification (SNS envelope or raw).
/// Other notification types (subscription confirmations, sends) give an empty list.
/// The SNS signature is not checked here.
pub fn parse_ses(body: &str) -> Result<Vec<Feedback>, MailError> {
    let outer: Value =
        serde_json::from_str(body).map_err(|e| bad(format!("SES notification: {e}")))?;
    let inner: Value = match str_at(&outer, &["Type"]) {
        Some("Notification") => {
            let m = str_at(&outer, &["Message"])
                .ok_or_else(|| bad("SNS notification without Message"))?;
            serde_json::from_str(m).map_err(|e| bad(format!("SNS Message: {e}")))?
        }
        Some(_) => return Ok(Vec::new()),
        None => outer,
    };
    let kind = str_at(&inner, &["notificationType"])
        .or_else(|| str_at(&inner, &["eventType"]))
        .unwrap_or_default();
    let message_id = ses_message_id(inner.get("mail"));
    let mut out = Vec::new();
    match kind {
        "Bounce" => {
            let b = inner
                .get("bounce")
                .ok_or_else(|| bad("Bounce without bounce"))?;
            let bounce_type = str_at(b, &["bounceType"]).unwrap_or("Undetermined");
            let sub = str_at(b, &["bounceSubType"]).unwrap_or_default();
            let k = if bounce_type == "Permanent" {
                FeedbackKind::HardBounce
            } else {
                FeedbackKind::SoftBounce
            };
            for r in b
                .get("bouncedRecipients")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(addr) = str_at(r, &["emailAddress"]) else {
                    continue;
                };
                let diag = str_at(r, &["diagnosticCode"]).unwrap_or_default();
                out.push(Feedback {
                    recipient: address_of(addr),
                    kind: k,
                    message_id,
                    status: str_at(r, &["status"]).map(str::to_string),
                    detail: format!("{bounce_type}/{sub} {diag}").trim().to_string(),
                });
            }
        }
        "Complaint" => {
            let c = inner
                .get("complaint")
                .ok_or_else(|| bad("Complaint without complaint"))?;
            let ft = str_at(c, &["complaintFeedbackType"]).unwrap_or("abuse");
            if ft == "not-spam" {
                return Ok(Vec::new());
            }
            for r in c
                .get("complainedRecipients")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(addr) = str_at(r, &["emailAddress"]) {
                    out.push(Feedback {
                        recipient: address_of(addr),
                        kind: FeedbackKind::Complaint,
                        message_id,
                        status: None,
                        detail: format!("{ft} complaint via SES"),
                    });
                }
            }
        }
        "Delivery" => {
            let d = inner
                .get("delivery")
                .ok_or_else(|| bad("Delivery without delivery"))?;
            for addr in d
                .get("recipients")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                out.push(Feedback {
                    recipient: address_of(addr),
                    kind: FeedbackKind::Delivered,
                    message_id,
                    status: None,
                    detail: str_at(d, &["smtpResponse"])
                        .unwrap_or("delivered via SES")
                        .to_string(),
                });
            }
        }
        _ => {}
    }
    Ok(out)
}

/// Parses a SendGrid event webhook body (a JSON array of events). `bounce` (type `bounce`) is
/// hard, `bounce` of type `blocked` and `deferred` are soft, `spamreport` is a complaint,
/// `dropped` is hard or a complaint by its reason, `delivered` confirms delivery; other events
/// (opens and clicks are tracked by Kizuna itself) are ignored. Our id is read
/// from the custom argument `kizuna_message` when the sender set it, else from `smtp-id`.
pub fn parse_sendgrid(body: &str) -> Result<Vec<Feedback>, MailError> {
    let events: Value =
        serde_json::from_str(body).map_err(|e| bad(format!("SendGrid events: {e}")))?;
    let events = events
        .as_array()
        .ok_or_else(|| bad("SendGrid events must be a JSON array"))?;
    let mut out = Vec::new();
    for e in events {
        let (Some(email), Some(event)) = (str_at(e, &["email"]), str_at(e, &["event"])) else {
            continue;
        };
        let reason = str_at(e, &["reason"])
            .or_else(|| str_at(e, &["response"]))
            .unwrap_or_default();
        let lower = reason.to_ascii_lowercase();
        let kind = match event {
            "bounce" if str_at(e, &["type"]) == Some("blocked") => FeedbackKind::SoftBounce,
            "bounce" => FeedbackKind::HardBounce,
            "deferred" => FeedbackKind::SoftBounce,
            "spamreport" => FeedbackKind::Complaint,
            "delivered" => FeedbackKind::Delivered,
            "dropped" if lower.contains("spam") => FeedbackKind::Complaint,
            "dropped" if lower.contains("bounce") || lower.contains("invalid") => {
                FeedbackKind::HardBounce
            }
            _ => continue,
        };
        let message_id = str_at(e, &["kizuna_message"])
            .and_then(|v| Uuid::parse_str(v.trim()).ok())
            .or_else(|| str_at(e, &["smtp-id"]).and_then(message_id_from_header));
        let status = match e.get("status") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        out.push(Feedback {
            recipient: address_of(email),
            kind,
            message_id,
            status,
            detail: format!("{event}: {reason}")
                .trim_end_matches([':', ' '])
                .to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0193a5b2-7c1d-7e4f-8a9b-0c1d2e3f4a5b";

    fn id() -> Option<Uuid> {
        Some(Uuid::parse_str(ID).unwrap())
    }

    #[test]
    fn postfix_hard_bounce() {
        let f = parse_report(include_bytes!("../tests/data/dsn_hard_postfix.eml")).unwrap();
        assert_eq!(
            f,
            vec![Feedback {
                recipient: "nosuchuser@example.co.jp".into(),
                kind: FeedbackKind::HardBounce,
                message_id: id(),
                status: Some("5.1.1".into()),
                detail: "550 5.1.1 <nosuchuser@example.co.jp>: Recipient address rejected: User unknown in virtual mailbox table".into(),
            }]
        );
    }

    #[test]
    fn delayed_dsn_with_headers_only_is_soft() {
        let f = parse_report(include_bytes!("../tests/data/dsn_delayed_headers.eml")).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].recipient, "full@example.ne.jp");
        assert_eq!(f[0].kind, FeedbackKind::SoftBounce);
        assert_eq!(f[0].status.as_deref(), Some("4.2.2"));
        // The id comes from the Message-ID when X-Kizuna-Message is absent.
        assert_eq!(f[0].message_id, id());
        assert_eq!(f[1].recipient, "gone@example.ne.jp");
        assert_eq!(f[1].kind, FeedbackKind::HardBounce);
        // The recipient the report says was delivered is a delivery confirmation.
        assert_eq!(
            (f[2].recipient.as_str(), f[2].kind),
            ("fine@example.ne.jp", FeedbackKind::Delivered)
        );
    }

    #[test]
    fn delivery_confirmations() {
        let f = parse_report(include_bytes!("../tests/data/dsn_delivered_postfix.eml")).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].recipient.as_str(), f[0].kind, f[0].message_id),
            ("hanako@example.co.jp", FeedbackKind::Delivered, id())
        );
        assert_eq!(f[0].status.as_deref(), Some("2.0.0"));
        let f = parse_ses(include_str!("../tests/data/ses_delivery.json")).unwrap();
        let got: Vec<(&str, FeedbackKind)> =
            f.iter().map(|x| (x.recipient.as_str(), x.kind)).collect();
        assert_eq!(
            got,
            vec![
                ("taro@example.co.jp", FeedbackKind::Delivered),
                ("jiro@example.co.jp", FeedbackKind::Delivered)
            ]
        );
        assert_eq!(f[0].message_id, id());
        assert!(f[0].detail.starts_with("250"), "{}", f[0].detail);
    }

    #[test]
    fn arf_complaint() {
        let f = parse_report(include_bytes!("../tests/data/arf_abuse.eml")).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].recipient, "hanako@example.com");
        assert_eq!(f[0].kind, FeedbackKind::Complaint);
        assert_eq!(f[0].message_id, id());
        assert!(f[0].detail.contains("abuse"), "{}", f[0].detail);
    }

    #[test]
    fn non_reports_are_errors() {
        assert!(parse_report(b"").is_err());
        assert!(parse_report(b"From: a@b.jp\r\nSubject: hi\r\n\r\nhello\r\n").is_err());
        assert!(parse_report(b"\xff\xfe garbage \x00").is_err());
    }

    #[test]
    fn ses_bounce_and_complaint() {
        let f = parse_ses(include_str!("../tests/data/ses_bounce_sns.json")).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].recipient, "bounce@simulator.amazonses.com");
        assert_eq!(f[0].kind, FeedbackKind::HardBounce);
        assert_eq!(f[0].message_id, id());
        assert_eq!(f[0].status.as_deref(), Some("5.1.1"));
        let f = parse_ses(include_str!("../tests/data/ses_complaint.json")).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, FeedbackKind::Complaint);
        assert_eq!(f[0].message_id, id());
        let sub = r#"{"Type":"SubscriptionConfirmation","SubscribeURL":"https://sns.example/confirm?x=1","Message":"You have chosen to subscribe"}"#;
        assert!(parse_ses(sub).unwrap().is_empty());
        assert_eq!(
            ses_subscription_url(sub).as_deref(),
            Some("https://sns.example/confirm?x=1")
        );
        assert!(parse_ses("not json").is_err());
        let transient = r#"{"notificationType":"Bounce","bounce":{"bounceType":"Transient","bounceSubType":"MailboxFull","bouncedRecipients":[{"emailAddress":"A@B.jp"}]},"mail":{}}"#;
        let f = parse_ses(transient).unwrap();
        assert_eq!(f[0].kind, FeedbackKind::SoftBounce);
        assert_eq!(f[0].recipient, "a@b.jp");
        assert_eq!(f[0].message_id, None);
    }

    #[test]
    fn sendgrid_events() {
        let f = parse_sendgrid(include_str!("../tests/data/sendgrid_events.json")).unwrap();
        let kinds: Vec<(&str, FeedbackKind)> =
            f.iter().map(|x| (x.recipient.as_str(), x.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("hard@example.jp", FeedbackKind::HardBounce),
                ("blocked@example.jp", FeedbackKind::SoftBounce),
                ("later@example.jp", FeedbackKind::SoftBounce),
                ("angry@example.jp", FeedbackKind::Complaint),
                ("known-bad@example.jp", FeedbackKind::HardBounce),
                ("delivered@example.jp", FeedbackKind::Delivered),
            ]
        );
        assert_eq!(f[0].message_id, id());
        assert_eq!(f[1].message_id, id(), "from smtp-id");
        assert!(parse_sendgrid("{}").is_err());
    }

    #[test]
    fn verp_and_header_ids() {
        let u = Uuid::parse_str(ID).unwrap();
        assert_eq!(
            message_id_from_verp(&format!("bounce+{}@b.jp", u.simple())),
            Some(u)
        );
        assert_eq!(message_id_from_verp(&format!("<bounce+{u}@b.jp>")), Some(u));
        assert_eq!(message_id_from_verp("bounce@b.jp"), None);
        assert_eq!(
            message_id_from_header(&format!("<{u}@kizuna.example.jp>")),
            Some(u)
        );
        assert_eq!(message_id_from_header("<abc@x>"), None);
    }
}
