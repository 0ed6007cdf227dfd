//! Owner notifications: signed outbound webhooks and e-mail alerts, delivered at least once.
//!
//! Each notification is posted as JSON with these headers:
//! - `X-Kizuna-Event: handoff.created`
//! - `X-Kizuna-Delivery: <id>` — the same on every retry, so a receiver can drop repeats;
//! - `X-Kizuna-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` when the
//!   policy has a secret ([`verify`] checks one).
//!
//! 2xx is delivered; 408, 429, 5xx and network errors are retried with backoff (10 s, 1 min,
//! 5 min, 30 min, 2 h, 6 h, 12 h, 24 h), then marked failed; any other 4xx fails at once.
//!
//! A `mailto:` notification is a plain-text alert to the owner, handed to an [`OwnerMail`]
//! (the binary gives one when SMTP is configured): the same retries; a permanent refusal
//! fails at once.

use crate::definitions::POLICY_SETTING;
use hmac::{Hmac, Mac};
use kizuna_core::clock::SharedClock;
use kizuna_core::time::micros;
use kizuna_store::Store;
use sha2::Sha256;
use std::future::Future;
use std::time::Duration;

const BACKOFF_SECONDS: &[i64] = &[10, 60, 300, 1800, 7200, 21_600, 43_200, 86_400];

/// The signature header value for a body at unix time `t`.
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature header against the body, accepting timestamps within `tolerance`
/// seconds of `now` (unix seconds).
pub fn verify(secret: &str, header: &str, body: &str, now: i64, tolerance: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1 = hex::decode(x).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(sig)) = (t, v1) else {
        return false;
    };
    if (now - t).abs() > tolerance {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{body}").as_bytes());
    mac.verify_slice(&sig).is_ok()
}

/// Why an alert was not sent: the reason, and whether to try again later.
pub type MailFailure = (String, bool);

/// Sends owner alerts by e-mail.
pub trait OwnerMail: Send + Sync {
    /// Sends a plain-text alert.
    fn send<'a>(
        &'a self,
        to: &'a str,
        subject: &'a str,
        text: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), MailFailure>> + Send + 'a>>;
}

/// Delivers owner notifications.
#[derive(Clone)]
pub struct Notifier {
    store: Store,
    clock: SharedClock,
    http: reqwest::Client,
    mail: Option<std::sync::Arc<dyn OwnerMail>>,
}

/// Subject and text of the owner's e-mail alert, from the notification's JSON body (the same
/// context the webhook carries: who, which company, the score and its rules, recent activity).
pub fn alert_text(body: &serde_json::Value) -> (String, String) {
    use std::fmt::Write;
    let c = &body["contact"];
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let name = format!("{} {}", s(&c["last_name"]), s(&c["first_name"]))
        .trim()
        .to_string();
    let name = if name.is_empty() {
        s(&c["email"])
    } else {
        name
    };
    let company = s(&c["company"]["name"]);
    let h = &body["handoff"];
    let score = h["score"]
        .as_f64()
        .map(|x| format!("{x}"))
        .unwrap_or_default();
    let subject = format!(
        "[Kizuna] MQL: {name}{}{}",
        if company.is_empty() {
            String::new()
        } else {
            format!(" ({company})")
        },
        if score.is_empty() {
            String::new()
        } else {
            format!(" — score {score}")
        }
    );
    let mut t = String::new();
    let _ = writeln!(t, "A lead was handed to you.\n");
    let _ = writeln!(t, "Name:       {name}");
    let _ = writeln!(t, "E-mail:     {}", s(&c["email"]));
    if !s(&c["phone"]).is_empty() {
        let _ = writeln!(t, "Phone:      {}", s(&c["phone"]));
    }
    if !company.is_empty() {
        let _ = writeln!(
            t,
            "Company:    {company} ({}, {} employees)",
            s(&c["company"]["industry"]),
            c["company"]["employee_count"]
        );
    }
    if !s(&c["job_title"]).is_empty() {
        let _ = writeln!(t, "Title:      {}", s(&c["job_title"]));
    }
    let _ = writeln!(
        t,
        "Score:      {score} (grade {})",
        h["grade"].as_str().unwrap_or("-")
    );
    if let Some(d) = h["task_due_at"].as_str() {
        let _ = writeln!(t, "Follow up:  by {d}");
    }
    for b in body["score_breakdown"].as_array().into_iter().flatten() {
        let _ = writeln!(t, "\nWhy ({}):", s(&b["model"]));
        let label = |r: &serde_json::Value| {
            Some(s(&r["label"]))
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| s(&r["rule"]))
        };
        for r in b["rules"].as_array().into_iter().flatten() {
            if r["points"].as_f64().unwrap_or(0.0) != 0.0 {
                let _ = writeln!(
                    t,
                    "  {:>6}  {} ({} events)",
                    r["points"],
                    label(r),
                    r["events"]
                );
            }
        }
        for r in b["fit_rules"].as_array().into_iter().flatten() {
            if r["matched"].as_bool() == Some(true) {
                let _ = writeln!(t, "  {:>6}  {} (fit)", r["points"], label(r));
            }
        }
    }
    let recent = body["recent_activity"].as_array();
    if recent.is_some_and(|r| !r.is_empty()) {
        let _ = writeln!(t, "\nRecent activity:");
        for e in recent.into_iter().flatten().take(10) {
            let _ = writeln!(
                t,
                "  {}  {}  {}",
                s(&e["occurred_at"]),
                s(&e["type"]),
                e["properties"]
                    .get("path")
                    .or_else(|| e["properties"].get("form"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
            );
        }
    }
    let _ = writeln!(
        t,
        "\nAccept or reject: POST /api/v1/contacts/{}/handoff/accept | reject",
        s(&c["id"])
    );
    (subject, t)
}

impl Notifier {
    /// A notifier (HTTP timeout 10 s).
    pub fn new(store: Store, clock: SharedClock) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("kizuna/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client");
        Notifier {
            store,
            clock,
            http,
            mail: None,
        }
    }

    /// Sends `mailto:` notifications (owner e-mail alerts) through `mail`.
    pub fn with_mail(mut self, mail: std::sync::Arc<dyn OwnerMail>) -> Notifier {
        self.mail = Some(mail);
        self
    }

    async fn send_mail(&self, to: &str, body: &str) -> Result<(), MailFailure> {
        let Some(m) = &self.mail else {
            return Err((
                "e-mail delivery is off (KIZUNA_SMTP_HOST is not set)".into(),
                true,
            ));
        };
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let (subject, text) = alert_text(&v);
        m.send(to, &subject, &text).await
    }

    async fn secret(&self) -> Option<String> {
        let p = self.store.setting(POLICY_SETTING).await.ok()??;
        let v: serde_json::Value = serde_json::from_str(&p).ok()?;
        v.get("webhook")?
            .get("secret")?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// Delivers what is due; returns how many were attempted.
    pub async fn deliver_due(&self) -> Result<usize, kizuna_store::StoreError> {
        let now = self.clock.now();
        let due = self.store.due_notifications(micros(now), 50).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let secret = self.secret().await;
        for n in &due {
            if let Some(to) = n.url.strip_prefix("mailto:") {
                let outcome = self.send_mail(to, &n.body).await;
                self.record(n, outcome, now).await?;
                continue;
            }
            let mut req = self
                .http
                .post(&n.url)
                .header("content-type", "application/json")
                .header(
                    "x-kizuna-event",
                    if n.kind == "handoff" {
                        "handoff.created"
                    } else {
                        n.kind.as_str()
                    },
                )
                .header("x-kizuna-delivery", n.id.to_string());
            if let Some(s) = &secret {
                req = req.header("x-kizuna-signature", sign(s, now.timestamp(), &n.body));
            }
            let outcome = match req.body(n.body.clone()).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => {
                    let code = r.status().as_u16();
                    let retry = code == 408 || code == 429 || code >= 500;
                    Err((format!("HTTP {code}"), retry))
                }
                Err(e) => Err((format!("{e}"), true)),
            };
            self.record(n, outcome, now).await?;
        }
        Ok(due.len())
    }

    /// Records an attempt: delivered, retried later (backoff), or failed for good.
    async fn record(
        &self,
        n: &kizuna_store::sales::Notification,
        outcome: Result<(), MailFailure>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), kizuna_store::StoreError> {
        let attempt = n.attempts as usize;
        let result = match outcome {
            Ok(()) => Ok(()),
            Err((e, true)) if attempt < BACKOFF_SECONDS.len() => {
                Err((e, Some(micros(now) + BACKOFF_SECONDS[attempt] * 1_000_000)))
            }
            Err((e, _)) => {
                tracing::warn!(notification = %n.id, error = %e, "owner notification failed for good");
                Err((e, None))
            }
        };
        self.store
            .record_delivery(n.id, result, micros(self.clock.now()))
            .await
    }

    /// Delivers until `shutdown` resolves, polling every `poll` and at once when `wake` is
    /// signalled (see [`Engine::notifications_queued`](crate::Engine::notifications_queued)).
    pub async fn run(
        &self,
        poll: Duration,
        wake: Option<std::sync::Arc<tokio::sync::Notify>>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let wake = wake.unwrap_or_default();
        tokio::pin!(shutdown);
        loop {
            let pause = match self.deliver_due().await {
                Ok(0) => poll,
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::error!(error = %e, "notification delivery failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(pause) => {}
                _ = wake.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_expire() {
        let h = sign("s3cret", 1_800_000_000, "{\"a\":1}");
        assert!(verify("s3cret", &h, "{\"a\":1}", 1_800_000_010, 300));
        assert!(!verify("s3cret", &h, "{\"a\":2}", 1_800_000_010, 300));
        assert!(!verify("other", &h, "{\"a\":1}", 1_800_000_010, 300));
        assert!(!verify("s3cret", &h, "{\"a\":1}", 1_800_001_000, 300));
        assert!(!verify("s3cret", "t=x", "{}", 0, 300));
    }
}
