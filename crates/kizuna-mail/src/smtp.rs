//! SMTP delivery: a pool of connections to one relay, sending pre-built, signed bytes with an
//! explicit envelope, and a typed [`SendOutcome`].
//!
//! The connections are lettre's `AsyncSmtpConnection` (tokio, rustls), but the transaction and
//! the pool are ours, because the outbox must know *where* a failure happened:
//!
//! - before the message data was sent (connect, EHLO, AUTH, `MAIL`, `RCPT`, `DATA`): nothing
//!   was delivered, so a 4xx or a dropped connection is a [`SendOutcome::TemporaryFailure`] and
//!   a 5xx to `RCPT`/`DATA` is a [`SendOutcome::PermanentFailure`] (a hard bounce). A dropped
//!   pooled connection before the data is retried once on a fresh connection.
//! - after the data was sent: a reply is final (`250` → [`SendOutcome::Sent`], 4xx/5xx as
//!   above), but a dropped connection or a timeout while waiting for the reply is
//!   [`SendOutcome::Ambiguous`] — the server may have accepted the message — and must not be
//!   resent silently.
//!
//! Problems on our side of the relay (refused `MAIL FROM`, failed AUTH, TLS, an unreachable
//! relay) are temporary failures: they must never suppress a recipient. lettre's built-in pool
//! and `send_raw` would hide the stage of a failure, hence this module.

use crate::MailError;
use crate::compose::{Envelope, check_address};
use lettre::Address;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Quit, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Transport security towards the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text (loopback or a trusted network only).
    None,
    /// `STARTTLS` after the greeting, required: fails if the server does not offer it.
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Implicit,
}

/// SMTP AUTH credentials (PLAIN or LOGIN, over TLS).
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpCredentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for SmtpCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Relay host name or address.
    pub host: String,
    /// Port (25, 587, 465, …).
    pub port: u16,
    /// Transport security.
    pub tls: TlsMode,
    /// AUTH, if the relay needs it.
    pub credentials: Option<SmtpCredentials>,
    /// Our name in `EHLO`.
    pub hello_name: String,
    /// Connections open at most at once (also the number of concurrent sends).
    pub max_connections: usize,
    /// Messages per connection before it is closed and replaced.
    pub max_messages_per_connection: usize,
    /// An idle pooled connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
    /// Time limit for connecting and for each command and reply.
    pub timeout: Duration,
    /// Extra trusted root certificates (PEM), for a relay with a private CA.
    pub extra_root_pem: Option<Vec<u8>>,
}

impl SmtpConfig {
    /// Defaults for `host:port`: no TLS, no AUTH, 4 connections, 100 messages per connection,
    /// 30 s idle timeout, 60 s command timeout.
    pub fn new(host: &str, port: u16) -> Self {
        Self {
            host: host.to_string(),
            port,
            tls: TlsMode::None,
            credentials: None,
            hello_name: "localhost".into(),
            max_connections: 4,
            max_messages_per_connection: 100,
            idle_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
            extra_root_pem: None,
        }
    }
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The server accepted the message.
    Sent {
        /// The server's reply, e.g. `250 2.0.0 Ok: queued as 4Zk…`.
        smtp_reply: String,
    },
    /// Not delivered, try again later (4xx, connection refused, relay or AUTH problems).
    TemporaryFailure {
        /// The SMTP reply code, when the server gave one.
        code: Option<u16>,
        /// What happened.
        text: String,
    },
    /// The server refused the recipient or the message for good (5xx): a hard bounce.
    PermanentFailure {
        /// The SMTP reply code.
        code: u16,
        /// The server's text.
        text: String,
    },
    /// The data was sent but no reply came (connection dropped, timeout): the server may or may
    /// not have accepted it. Report; do not resend silently.
    Ambiguous {
        /// What happened.
        detail: String,
    },
}

struct Pooled {
    conn: AsyncSmtpConnection,
    idle_since: Instant,
    sent: usize,
}

struct Inner {
    config: SmtpConfig,
    hello: ClientId,
    tls: Option<TlsParameters>,
    idle: Mutex<Vec<Pooled>>,
    permits: Semaphore,
}

/// A pooled SMTP sender for one relay. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct SmtpSender {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSender")
            .field("host", &self.inner.config.host)
            .field("port", &self.inner.config.port)
            .field("tls", &self.inner.config.tls)
            .finish()
    }
}

enum Stage {
    Connect,
    MailFrom,
    RcptTo,
    Data,
    Message,
}

struct Failure {
    stage: Stage,
    code: Option<u16>,
    text: String,
}

fn lettre_failure(stage: Stage, e: &lettre::transport::smtp::Error) -> Failure {
    let mut text = e.to_string();
    if let Some(src) = std::error::Error::source(e) {
        let s = src.to_string();
        if !text.contains(&s) {
            text = format!("{text}: {s}");
        }
    }
    Failure {
        stage,
        code: e.status().map(u16::from),
        text,
    }
}

fn timeout_failure(stage: Stage) -> Failure {
    Failure {
        stage,
        code: None,
        text: "timed out".into(),
    }
}

async fn timed<T>(
    limit: Duration,
    stage: fn() -> Stage,
    fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(lettre_failure(stage(), &e)),
        Err(_) => Err(timeout_failure(stage())),
    }
}

fn reply_text(r: &Response) -> String {
    let lines: Vec<&str> = r.message().collect();
    format!("{} {}", u16::from(r.code()), lines.join(" "))
}

impl SmtpSender {
    /// A sender; connects lazily.
    pub fn new(config: SmtpConfig) -> Result<Self, MailError> {
        if config.max_connections == 0 || config.max_messages_per_connection == 0 {
            return Err(MailError::Config(
                "max_connections and max_messages_per_connection must be at least 1".into(),
            ));
        }
        let tls = match config.tls {
            TlsMode::None => None,
            TlsMode::StartTls | TlsMode::Implicit => {
                let mut b = TlsParameters::builder(config.host.clone());
                if let Some(pem) = &config.extra_root_pem {
                    if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
                        return Err(MailError::Config(
                            "extra root certificate is not a PEM certificate".into(),
                        ));
                    }
                    let cert = Certificate::from_pem(pem)
                        .map_err(|e| MailError::Config(format!("extra root certificate: {e}")))?;
                    b = b.add_root_certificate(cert);
                }
                Some(
                    b.build_rustls()
                        .map_err(|e| MailError::Config(format!("TLS: {e}")))?,
                )
            }
        };
        let hello = match config.hello_name.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => ClientId::Ipv4(a),
            Ok(std::net::IpAddr::V6(a)) => ClientId::Ipv6(a),
            Err(_) => ClientId::Domain(config.hello_name.clone()),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                permits: Semaphore::new(config.max_connections),
                config,
                hello,
                tls,
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Idle connections currently pooled.
    pub fn idle_connections(&self) -> usize {
        self.inner.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Closes every idle connection politely (`QUIT`).
    pub async fn close(&self) {
        let conns: Vec<Pooled> = match self.inner.idle.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => return,
        };
        for mut p in conns {
            let _ = tokio::time::timeout(Duration::from_secs(2), p.conn.command(Quit)).await;
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, Failure> {
        let cfg = &self.inner.config;
        let implicit = match cfg.tls {
            TlsMode::Implicit => self.inner.tls.clone(),
            _ => None,
        };
        let mut conn = match implicit {
            Some(tls) => {
                timed(cfg.timeout, || Stage::Connect, async {
                    AsyncSmtpConnection::connect_tokio1(
                        (cfg.host.as_str(), cfg.port),
                        Some(cfg.timeout),
                        &self.inner.hello,
                        Some(tls),
                        None,
                    )
                    .await
                })
                .await?
            }
            None => {
                // Our own socket, with Nagle off: the command/reply exchange of SMTP otherwise
                // stalls on delayed ACKs (~40 ms per message on loopback).
                let stream = match tokio::time::timeout(
                    cfg.timeout,
                    tokio::net::TcpStream::connect((cfg.host.as_str(), cfg.port)),
                )
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        return Err(Failure {
                            stage: Stage::Connect,
                            code: None,
                            text: format!("connecting to {}:{}: {e}", cfg.host, cfg.port),
                        });
                    }
                    Err(_) => return Err(timeout_failure(Stage::Connect)),
                };
                let _ = stream.set_nodelay(true);
                timed(
                    cfg.timeout,
                    || Stage::Connect,
                    AsyncSmtpConnection::connect_with_transport(
                        Box::new(stream),
                        &self.inner.hello,
                    ),
                )
                .await?
            }
        };
        if cfg.tls == TlsMode::StartTls {
            let params = self.inner.tls.clone().ok_or_else(|| Failure {
                stage: Stage::Connect,
                code: None,
                text: "STARTTLS without TLS parameters".into(),
            })?;
            if !conn.can_starttls() {
                return Err(Failure {
                    stage: Stage::Connect,
                    code: None,
                    text: "the server does not offer STARTTLS".into(),
                });
            }
            timed(
                cfg.timeout,
                || Stage::Connect,
                conn.starttls(params, &self.inner.hello),
            )
            .await?;
        }
        if let Some(c) = &cfg.credentials {
            let creds = Credentials::new(c.username.clone(), c.password.clone());
            timed(
                cfg.timeout,
                || Stage::Connect,
                conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds),
            )
            .await?;
        }
        Ok(conn)
    }

    fn checkout_idle(&self) -> Option<Pooled> {
        let mut idle = self.inner.idle.lock().ok()?;
        while let Some(p) = idle.pop() {
            if p.idle_since.elapsed() < self.inner.config.idle_timeout && !p.conn.has_broken() {
                return Some(p);
            }
            // Too old: dropped (the server will time it out on its side too).
        }
        None
    }

    fn checkin(&self, mut p: Pooled) {
        if p.conn.has_broken() {
            return;
        }
        if p.sent >= self.inner.config.max_messages_per_connection {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), p.conn.command(Quit)).await;
            });
            return;
        }
        p.idle_since = Instant::now();
        if let Ok(mut idle) = self.inner.idle.lock() {
            idle.push(p);
        }
    }

    /// Sends `message` (complete, signed RFC 5322 bytes) to the envelope's recipients.
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> SendOutcome {
        if let Err(e) = check_address(&envelope.from) {
            return SendOutcome::TemporaryFailure {
                code: None,
                text: format!("bad envelope sender: {e}"),
            };
        }
        let Ok(from) = envelope.from.parse::<Address>() else {
            return SendOutcome::TemporaryFailure {
                code: None,
                text: format!("bad envelope sender {:?}", envelope.from),
            };
        };
        let mut to = Vec::with_capacity(envelope.to.len());
        for r in &envelope.to {
            match (check_address(r), r.parse::<Address>()) {
                (Ok(()), Ok(a)) => to.push(a),
                _ => {
                    return SendOutcome::PermanentFailure {
                        code: 553,
                        text: format!("invalid recipient address {r:?} (refused before sending)"),
                    };
                }
            }
        }
        if to.is_empty() {
            return SendOutcome::PermanentFailure {
                code: 554,
                text: "no recipients".into(),
            };
        }
        let Ok(_permit) = self.inner.permits.acquire().await else {
            return SendOutcome::TemporaryFailure {
                code: None,
                text: "sender closed".into(),
            };
        };

        // At most two attempts: a pooled connection that died while idle is replaced once.
        for attempt in 0..2 {
            let (mut pooled, reused) = match self.checkout_idle() {
                Some(p) => (p, true),
                None => match self.connect().await {
                    Ok(conn) => (
                        Pooled {
                            conn,
                            idle_since: Instant::now(),
                            sent: 0,
                        },
                        false,
                    ),
                    Err(f) => {
                        return SendOutcome::TemporaryFailure {
                            code: f.code,
                            text: format!("connecting to the relay: {}", f.text),
                        };
                    }
                },
            };
            match self
                .transaction(&mut pooled.conn, &from, &to, message)
                .await
            {
                Ok(reply) => {
                    pooled.sent += 1;
                    self.checkin(pooled);
                    return SendOutcome::Sent {
                        smtp_reply: reply_text(&reply),
                    };
                }
                Err(f) => {
                    let outcome = match (&f.stage, f.code) {
                        // Dropped before any data: nothing delivered.
                        (Stage::Connect | Stage::MailFrom | Stage::RcptTo | Stage::Data, None) => {
                            if reused && attempt == 0 {
                                continue;
                            }
                            SendOutcome::TemporaryFailure {
                                code: None,
                                text: f.text,
                            }
                        }
                        (Stage::Message, None) => SendOutcome::Ambiguous {
                            detail: format!("no reply after the message data: {}", f.text),
                        },
                        (_, Some(code))
                            if code >= 500
                                && !matches!(f.stage, Stage::MailFrom | Stage::Connect) =>
                        {
                            SendOutcome::PermanentFailure { code, text: f.text }
                        }
                        (_, Some(code)) => SendOutcome::TemporaryFailure {
                            code: Some(code),
                            text: f.text,
                        },
                    };
                    if f.code.is_some() {
                        // The server answered: the connection is in a known state.
                        let reset = matches!(f.stage, Stage::Message)
                            || tokio::time::timeout(
                                self.inner.config.timeout,
                                pooled.conn.command(Rset),
                            )
                            .await
                            .is_ok_and(|r| r.is_ok());
                        if reset {
                            pooled.sent += 1;
                            self.checkin(pooled);
                        }
                    }
                    return outcome;
                }
            }
        }
        SendOutcome::TemporaryFailure {
            code: None,
            text: "connection lost before sending".into(),
        }
    }

    async fn transaction(
        &self,
        conn: &mut AsyncSmtpConnection,
        from: &Address,
        to: &[Address],
        message: &[u8],
    ) -> Result<Response, Failure> {
        let t = self.inner.config.timeout;
        let mut params = Vec::new();
        if !message.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        timed(
            t,
            || Stage::MailFrom,
            conn.command(Mail::new(Some(from.clone()), params)),
        )
        .await?;
        for rcpt in to {
            timed(
                t,
                || Stage::RcptTo,
                conn.command(Rcpt::new(rcpt.clone(), vec![])),
            )
            .await?;
        }
        timed(t, || Stage::Data, conn.command(Data)).await?;
        // From here on, a lost connection is ambiguous.
        timed(t, || Stage::Message, conn.message(message)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let mut c = SmtpConfig::new("127.0.0.1", 25);
        c.max_connections = 0;
        assert!(SmtpSender::new(c).is_err());
        let mut c = SmtpConfig::new("mail.example.jp", 465);
        c.tls = TlsMode::Implicit;
        assert!(SmtpSender::new(c).is_ok());
        let mut c = SmtpConfig::new("mail.example.jp", 587);
        c.tls = TlsMode::StartTls;
        c.extra_root_pem = Some(b"not a certificate".to_vec());
        assert!(SmtpSender::new(c).is_err());
    }

    #[test]
    fn credentials_are_redacted() {
        let c = SmtpCredentials {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[tokio::test]
    async fn refused_connection_is_temporary() {
        // Bind then drop a listener: the port is closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let sender = SmtpSender::new(SmtpConfig::new("127.0.0.1", port)).unwrap();
        let out = sender
            .send(
                &Envelope {
                    from: "a@example.jp".into(),
                    to: vec!["b@example.jp".into()],
                },
                b"Subject: x\r\n\r\nx\r\n",
            )
            .await;
        assert!(
            matches!(out, SendOutcome::TemporaryFailure { code: None, .. }),
            "{out:?}"
        );
        let out = sender
            .send(
                &Envelope {
                    from: "a@example.jp".into(),
                    to: vec!["bad address".into()],
                },
                b"x",
            )
            .await;
        assert!(matches!(
            out,
            SendOutcome::PermanentFailure { code: 553, .. }
        ));
    }
}
