//! The email channel's settings (config file `[mail]` table, overridden by `KIZUNA_*`
//! environment variables; see docs/email.md) and the delivery worker `kizuna serve` starts.

use anyhow::Context;
use kizuna_core::clock::SharedClock;
use kizuna_delivery::{EmailService, EmailSettings, Worker, WorkerConfig};
use kizuna_mail::compose::ReturnPath;
use kizuna_mail::dkim::DkimSigner;
use kizuna_mail::ratelimit::{Rate, RateLimiter, RateLimits};
use kizuna_mail::smtp::{SmtpConfig, SmtpCredentials, SmtpSender, TlsMode};
use kizuna_store::Store;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[mail]` in the config file. Every key has a `KIZUNA_…` environment variable (upper case,
/// prefixed) that wins over it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    /// Public base URL of the tracking/unsubscribe links (`KIZUNA_PUBLIC_URL`).
    pub public_url: Option<String>,
    /// SMTP relay host; delivery is off without it (`KIZUNA_SMTP_HOST`).
    pub smtp_host: Option<String>,
    /// SMTP port, default 25 (`KIZUNA_SMTP_PORT`).
    pub smtp_port: Option<u16>,
    /// `none`, `starttls` or `tls` (`KIZUNA_SMTP_TLS`).
    pub smtp_tls: Option<String>,
    /// AUTH user (`KIZUNA_SMTP_USERNAME`).
    pub smtp_username: Option<String>,
    /// AUTH password (`KIZUNA_SMTP_PASSWORD`).
    pub smtp_password: Option<String>,
    /// EHLO name (`KIZUNA_SMTP_HELO`).
    pub smtp_helo: Option<String>,
    /// Pooled connections (`KIZUNA_SMTP_CONNECTIONS`, default 8).
    pub smtp_connections: Option<usize>,
    /// Global messages per second (`KIZUNA_SMTP_RATE`).
    pub smtp_rate: Option<f64>,
    /// Messages per second per recipient domain (`KIZUNA_SMTP_DOMAIN_RATE`).
    pub smtp_domain_rate: Option<f64>,
    /// DKIM `d=` (`KIZUNA_DKIM_DOMAIN`).
    pub dkim_domain: Option<String>,
    /// DKIM `s=` (`KIZUNA_DKIM_SELECTOR`).
    pub dkim_selector: Option<String>,
    /// DKIM private key, PEM file (`KIZUNA_DKIM_KEY_FILE`).
    pub dkim_key_file: Option<PathBuf>,
    /// Domain of Message-IDs and VERP bounces (`KIZUNA_MAIL_DOMAIN`).
    pub mail_domain: Option<String>,
    /// Fixed return path instead of VERP (`KIZUNA_RETURN_PATH`).
    pub return_path: Option<String>,
    /// Domain of the `unsubscribe+TOKEN@` mailbox (`KIZUNA_UNSUBSCRIBE_MAILBOX_DOMAIN`).
    pub unsubscribe_mailbox_domain: Option<String>,
    /// Secret for the bounce/complaint webhooks' `?key=` (`KIZUNA_MAIL_WEBHOOK_SECRET`).
    pub webhook_secret: Option<String>,
    /// Link-signing secret, ≥ 32 bytes; default: generated and kept in the database
    /// (`KIZUNA_LINK_SECRET`).
    pub link_secret: Option<String>,
    /// This node's name in outbox leases (`KIZUNA_NODE_ID`); default: kept in the data dir.
    pub node_id: Option<String>,
    /// Outbox lease, seconds (`KIZUNA_MAIL_LEASE_SECONDS`, default 120).
    pub lease_seconds: Option<i64>,
}

fn env<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not valid")),
        _ => Ok(None),
    }
}

impl MailConfig {
    /// The file's values with the environment on top.
    pub fn with_env(mut self) -> anyhow::Result<Self> {
        macro_rules! over {
            ($($field:ident => $var:literal),* $(,)?) => {$(
                if let Some(v) = env($var)? { self.$field = Some(v); }
            )*};
        }
        over! {
            public_url => "KIZUNA_PUBLIC_URL",
            smtp_host => "KIZUNA_SMTP_HOST",
            smtp_port => "KIZUNA_SMTP_PORT",
            smtp_tls => "KIZUNA_SMTP_TLS",
            smtp_username => "KIZUNA_SMTP_USERNAME",
            smtp_password => "KIZUNA_SMTP_PASSWORD",
            smtp_helo => "KIZUNA_SMTP_HELO",
            smtp_connections => "KIZUNA_SMTP_CONNECTIONS",
            smtp_rate => "KIZUNA_SMTP_RATE",
            smtp_domain_rate => "KIZUNA_SMTP_DOMAIN_RATE",
            dkim_domain => "KIZUNA_DKIM_DOMAIN",
            dkim_selector => "KIZUNA_DKIM_SELECTOR",
            dkim_key_file => "KIZUNA_DKIM_KEY_FILE",
            mail_domain => "KIZUNA_MAIL_DOMAIN",
            return_path => "KIZUNA_RETURN_PATH",
            unsubscribe_mailbox_domain => "KIZUNA_UNSUBSCRIBE_MAILBOX_DOMAIN",
            webhook_secret => "KIZUNA_MAIL_WEBHOOK_SECRET",
            link_secret => "KIZUNA_LINK_SECRET",
            node_id => "KIZUNA_NODE_ID",
            lease_seconds => "KIZUNA_MAIL_LEASE_SECONDS",
        }
        Ok(self)
    }
}

/// The service and, when an SMTP host is configured, the worker.
pub async fn build(
    cfg: &MailConfig,
    store: &Store,
    clock: SharedClock,
    listen: &str,
    data_dir: Option<&Path>,
) -> anyhow::Result<(Arc<EmailService>, Option<Worker>)> {
    let public = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{listen}"));
    let mut s = EmailSettings::for_public_url(&public);
    if let Some(d) = &cfg.mail_domain {
        s.message_id_domain = d.clone();
        s.return_path = ReturnPath::Verp {
            local: "bounce".into(),
            domain: d.clone(),
        };
    }
    if let Some(rp) = &cfg.return_path {
        s.return_path = ReturnPath::Fixed(rp.clone());
    }
    s.unsubscribe_mailbox = cfg.unsubscribe_mailbox_domain.clone();
    s.webhook_secret = cfg.webhook_secret.clone();
    s.link_secret = cfg.link_secret.as_ref().map(|v| v.as_bytes().to_vec());
    if let Some(file) = &cfg.dkim_key_file {
        let domain = cfg
            .dkim_domain
            .clone()
            .context("KIZUNA_DKIM_DOMAIN is needed with a DKIM key")?;
        let selector = cfg.dkim_selector.clone().unwrap_or_else(|| "kizuna".into());
        let signer = DkimSigner::from_pem_file(&domain, &selector, file)
            .with_context(|| format!("DKIM key {}", file.display()))?;
        tracing::info!(
            dns = signer.dns_name(),
            "DKIM signing on; publish: {}",
            signer.dns_record()
        );
        s.dkim.push(signer);
    }
    let svc = EmailService::new(store.clone(), clock.clone(), s)
        .await
        .context("email settings")?;
    let Some(host) = &cfg.smtp_host else {
        tracing::warn!(
            "email delivery is off: set KIZUNA_SMTP_HOST (see docs/email.md); messages stay queued"
        );
        return Ok((svc, None));
    };
    let mut smtp = smtp_config(cfg, host)?;
    smtp.max_connections = cfg.smtp_connections.unwrap_or(8);
    let sender = SmtpSender::new(smtp).context("SMTP settings")?;
    let limits = RateLimits {
        global: cfg.smtp_rate.map(|r| Rate {
            per_second: r,
            burst: r.ceil().max(1.0) as u32,
        }),
        per_domain_default: cfg.smtp_domain_rate.map(|r| Rate {
            per_second: r,
            burst: r.ceil().max(1.0) as u32,
        }),
        per_domain: Default::default(),
    };
    let limiter = (limits.global.is_some() || limits.per_domain_default.is_some())
        .then(|| RateLimiter::new(limits, clock.clone()));
    let node_id = match &cfg.node_id {
        Some(n) => n.clone(),
        None => node_id(data_dir),
    };
    let wcfg = WorkerConfig {
        node_id,
        lease: chrono::Duration::seconds(cfg.lease_seconds.unwrap_or(120)),
        ..WorkerConfig::default()
    };
    tracing::info!(host = %host, node = %wcfg.node_id, "email delivery on");
    Ok((svc.clone(), Some(Worker::new(svc, sender, limiter, wcfg))))
}

fn smtp_config(cfg: &MailConfig, host: &str) -> anyhow::Result<SmtpConfig> {
    let mut smtp = SmtpConfig::new(host, cfg.smtp_port.unwrap_or(25));
    smtp.tls = match cfg.smtp_tls.as_deref().unwrap_or("none") {
        "none" => TlsMode::None,
        "starttls" => TlsMode::StartTls,
        "tls" | "implicit" => TlsMode::Implicit,
        other => anyhow::bail!("KIZUNA_SMTP_TLS must be none, starttls or tls, not {other:?}"),
    };
    if let Some(u) = &cfg.smtp_username {
        smtp.credentials = Some(SmtpCredentials {
            username: u.clone(),
            password: cfg.smtp_password.clone().unwrap_or_default(),
        });
    }
    if let Some(h) = &cfg.smtp_helo {
        smtp.hello_name = h.clone();
    }
    Ok(smtp)
}

/// Owner alerts (handoffs) by e-mail through the configured SMTP server, from the first
/// sender identity. `None` when no SMTP host is configured.
pub fn owner_mail(
    cfg: &MailConfig,
    store: &Store,
) -> anyhow::Result<Option<Arc<dyn kizuna_engine::notify::OwnerMail>>> {
    let Some(host) = &cfg.smtp_host else {
        return Ok(None);
    };
    let mut smtp = smtp_config(cfg, host)?;
    smtp.max_connections = 1;
    let sender = SmtpSender::new(smtp).context("SMTP settings")?;
    Ok(Some(Arc::new(SmtpOwnerMail {
        sender,
        store: store.clone(),
    })))
}

struct SmtpOwnerMail {
    sender: SmtpSender,
    store: Store,
}

impl kizuna_engine::notify::OwnerMail for SmtpOwnerMail {
    fn send<'a>(
        &'a self,
        to: &'a str,
        subject: &'a str,
        text: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<(), kizuna_engine::notify::MailFailure>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            let from = match self.store.senders().await {
                Ok(s) => s.into_iter().next(),
                Err(e) => return Err((e.to_string(), true)),
            };
            let Some(from) = from else {
                return Err((
                    "no sender identity to send owner alerts from (POST /api/v1/senders)".into(),
                    true,
                ));
            };
            let domain = from.email.rsplit('@').next().unwrap_or("localhost");
            let id = format!("alert-{}@{domain}", uuid::Uuid::now_v7().simple());
            let raw = kizuna_mail::compose::internal_message(
                (&from.name, &from.email),
                to,
                subject,
                text,
                &id,
                chrono::Utc::now(),
            )
            .map_err(|e| (e.to_string(), false))?;
            let envelope = kizuna_mail::compose::Envelope {
                from: from.email.clone(),
                to: vec![to.to_string()],
            };
            match self.sender.send(&envelope, &raw).await {
                kizuna_mail::smtp::SendOutcome::Sent { .. } => Ok(()),
                kizuna_mail::smtp::SendOutcome::TemporaryFailure { text, .. } => Err((text, true)),
                other => Err((format!("{other:?}"), false)),
            }
        })
    }
}

/// A node name kept in the data directory (so a restarted node recovers its own leases at
/// once), or the host name.
fn node_id(data_dir: Option<&Path>) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    let Some(dir) = data_dir else {
        return host;
    };
    let file = dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        return id.trim().to_string();
    }
    let id = format!("{host}-{}", uuid::Uuid::now_v7().simple());
    let _ = std::fs::write(&file, &id);
    id
}
