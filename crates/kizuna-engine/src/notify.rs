//! Owner notifications: signed outbound webhooks, delivered at least once.
//!
//! Each notification is posted as JSON with these headers:
//! - `X-Kizuna-Event: handoff.created`
//! - `X-Kizuna-Delivery: <id>` — the same on every retry, so a receiver can drop repeats;
//! - `X-Kizuna-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` when the
//!   policy has a secret ([`verify`] checks one).
//!
//! 2xx is delivered; 408, 429, 5xx and network errors are retried with backoff (10 s, 1 min,
//! 5 min, 30 min, 2 h, 6 h, 12 h, 24 h), then marked failed; any other 4xx fails at once.

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

/// Delivers owner notifications.
#[derive(Clone)]
pub struct Notifier {
    store: Store,
    clock: SharedClock,
    http: reqwest::Client,
}

impl Notifier {
    /// A notifier (HTTP timeout 10 s).
    pub fn new(store: Store, clock: SharedClock) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("kizuna/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client");
        Notifier { store, clock, http }
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
                .await?;
        }
        Ok(due.len())
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
