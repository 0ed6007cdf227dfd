//! [`EmailService`]: what the web server and the worker share.

use crate::DeliveryError;
use chrono::{DateTime, Duration, Utc};
use kizuna_core::clock::SharedClock;
use kizuna_core::contact::Contact;
use kizuna_mail::compose::{
    Author, Composer, ComposerConfig, Owner, ReturnPath, SenderIdentity, with_footer,
};
use kizuna_mail::dkim::DkimSigner;
use kizuna_mail::engagement::{
    ClickRequest, EngagementConfig, OpenRequest, classify_click, classify_open,
};
use kizuna_mail::feedback::{Feedback, FeedbackKind};
use kizuna_mail::links::{LinkSigner, MessageUrls};
use kizuna_mail::template::{
    CompileOptions, CompiledTemplate, RenderContext, Template, TemplateKind,
};
use kizuna_store::Store;
use kizuna_store::email::consents::{ConsentRequest, ConsentStatus, NewConsent, SubscriptionType};
use kizuna_store::email::engagement::{Engagement, FeedbackInput, FeedbackReport};
use kizuna_store::email::outbox::{EmailMessage, NewMessage};
use kizuna_store::email::senders::Sender;
use kizuna_store::email::templates::{EmailTemplate, TemplateInput};
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use uuid::Uuid;

/// Installation settings of the email channel.
#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// Public base URL of the tracking, unsubscribe and preference endpoints.
    pub public_url: String,
    /// Link-signing secret; `None`: generated once and kept in the database.
    pub link_secret: Option<Vec<u8>>,
    /// Domain of Message-IDs.
    pub message_id_domain: String,
    /// Envelope sender (bounces).
    pub return_path: ReturnPath,
    /// Domain of the `unsubscribe+TOKEN@` mailbox for `List-Unsubscribe: <mailto:…>`.
    pub unsubscribe_mailbox: Option<String>,
    /// DKIM keys (each one signs).
    pub dkim: Vec<DkimSigner>,
    /// Machine-open and scanner-click thresholds.
    pub engagement: EngagementConfig,
    /// How long a double opt-in link works.
    pub confirm_ttl: Duration,
    /// Secret accepted as `?key=` by the bounce/complaint webhooks.
    pub webhook_secret: Option<String>,
}

impl EmailSettings {
    /// Settings for `public_url` with defaults: Message-IDs and VERP bounces at the URL's
    /// host, no DKIM, links secret from the database, confirmation links valid 7 days.
    pub fn for_public_url(public_url: &str) -> Self {
        let host = public_url
            .split("://")
            .nth(1)
            .unwrap_or("localhost")
            .split(['/', ':'])
            .next()
            .unwrap_or("localhost")
            .to_string();
        let domain = if host.contains('.') && host.parse::<IpAddr>().is_err() {
            host
        } else {
            "kizuna.localhost".into()
        };
        Self {
            public_url: public_url.to_string(),
            link_secret: None,
            message_id_domain: domain.clone(),
            return_path: ReturnPath::Verp {
                local: "bounce".into(),
                domain,
            },
            unsubscribe_mailbox: None,
            dkim: vec![],
            engagement: EngagementConfig::default(),
            confirm_ttl: Duration::days(7),
            webhook_secret: None,
        }
    }
}

/// A template rendered as one contact would get it (footer included, tracking not).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Preview {
    /// Subject.
    pub subject: String,
    /// HTML body.
    pub html: Option<String>,
    /// Text body.
    pub text: String,
    /// MJML strategy (`precompiled` or `per_message`) for MJML templates.
    pub mjml_strategy: Option<&'static str>,
}

/// What the preference center shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Preferences {
    /// The address, partly masked (`ta***@example.jp`).
    pub email: String,
    /// Each subscription type and whether the contact is subscribed.
    pub types: Vec<(SubscriptionType, bool)>,
}

/// The request to send one template to one contact.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    /// Idempotency key (who, what, which step).
    pub idempotency_key: String,
    /// Recipient.
    pub contact_id: Uuid,
    /// Template.
    pub template_id: Uuid,
    /// Sender (`None`: the first sender).
    pub sender_id: Option<Uuid>,
    /// From the identity or the owner.
    pub author: Author,
    /// Needed for marketing mail.
    pub subscription_type: Option<String>,
    /// `api`, `program`, …
    pub source: String,
    /// Not before (`None`: now).
    pub due_at: Option<DateTime<Utc>>,
}

type CacheKey = (Uuid, i64, Option<String>);

/// The email channel's shared state. Cheap to share (`Arc`).
pub struct EmailService {
    store: Store,
    clock: SharedClock,
    composer: Arc<Composer>,
    settings: EmailSettings,
    wake: Arc<Notify>,
    cache: Mutex<HashMap<CacheKey, Arc<CompiledTemplate>>>,
}

impl std::fmt::Debug for EmailService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailService")
            .field("public_url", &self.settings.public_url)
            .finish()
    }
}

/// The built-in double opt-in confirmation template's name.
pub const CONFIRMATION_TEMPLATE: &str = "kizuna: double opt-in confirmation";

fn author_str(a: Author) -> &'static str {
    match a {
        Author::Identity => "identity",
        Author::Owner => "owner",
    }
}

/// Parses `identity` / `owner`.
pub fn parse_author(s: &str) -> Author {
    if s == "owner" {
        Author::Owner
    } else {
        Author::Identity
    }
}

/// The mail library's template from a stored one.
pub fn template_of(t: &TemplateInput) -> Template {
    Template {
        subject: t.subject.clone(),
        mjml: t.mjml.clone(),
        html: t.html.clone(),
        text: t.text.clone(),
        kind: if t.kind == "transactional" {
            TemplateKind::Transactional
        } else {
            TemplateKind::Marketing
        },
    }
}

fn input_of(t: &EmailTemplate) -> TemplateInput {
    TemplateInput {
        name: t.name.clone(),
        kind: t.kind.clone(),
        subject: t.subject.clone(),
        mjml: t.mjml.clone(),
        html: t.html.clone(),
        text: t.text.clone(),
    }
}

/// The sender identity of a stored sender.
pub fn identity_of(s: &Sender) -> SenderIdentity {
    SenderIdentity {
        name: s.name.clone(),
        email: s.email.clone(),
        organization: s.organization.clone(),
        postal_address: s.postal_address.clone(),
        reply_to: s.reply_to.clone(),
    }
}

fn mask(email: &str) -> String {
    match email.split_once('@') {
        Some((l, d)) => {
            let keep: String = l.chars().take(2).collect();
            format!("{keep}***@{d}")
        }
        None => "***".into(),
    }
}

impl EmailService {
    /// Builds the service: loads (or creates) the link secret and checks the settings.
    pub async fn new(
        store: Store,
        clock: SharedClock,
        settings: EmailSettings,
    ) -> Result<Arc<Self>, DeliveryError> {
        let secret = match &settings.link_secret {
            Some(s) => s.clone(),
            None => {
                let fresh: [u8; 32] = rand::random();
                let v = store
                    .mail_setting_or_init("link_secret", &hex32(&fresh))
                    .await?;
                v.into_bytes()
            }
        };
        let mut links = LinkSigner::new(&secret, &settings.public_url)?;
        if let Some(d) = &settings.unsubscribe_mailbox {
            links = links.with_unsubscribe_mailbox(d)?;
        }
        let composer = Composer::new(
            ComposerConfig {
                message_id_domain: settings.message_id_domain.clone(),
                return_path: settings.return_path.clone(),
                owner_sender_header: true,
                feedback_sender_id: "kizuna".into(),
            },
            links,
            settings.dkim.clone(),
        )?;
        Ok(Arc::new(Self {
            store,
            clock,
            composer: Arc::new(composer),
            settings,
            wake: Arc::new(Notify::new()),
            cache: Mutex::new(HashMap::new()),
        }))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The composer (renders, adds the footer and tracking, signs).
    pub fn composer(&self) -> &Arc<Composer> {
        &self.composer
    }

    /// The link signer.
    pub fn links(&self) -> &LinkSigner {
        self.composer.links()
    }

    /// Woken whenever a message is enqueued, so the worker does not wait for its next poll.
    pub fn wake(&self) -> &Arc<Notify> {
        &self.wake
    }

    /// The webhook secret, if configured.
    pub fn webhook_secret(&self) -> Option<&str> {
        self.settings.webhook_secret.as_deref()
    }

    async fn compile_options(&self) -> Result<CompileOptions, DeliveryError> {
        let fields = self.store.fields().await?;
        Ok(CompileOptions {
            custom_fields: Some(fields.into_iter().map(|f| f.name).collect()),
            ..CompileOptions::default()
        })
    }

    /// Compiles a template as it would be saved: every error names the part and line.
    pub async fn check_template(
        &self,
        t: &TemplateInput,
    ) -> Result<CompiledTemplate, DeliveryError> {
        let opts = self.compile_options().await?;
        Ok(template_of(t).compile_with(&opts)?)
    }

    /// The compiled form of a stored template (with an A/B subject, if any), cached by version.
    pub async fn compiled(
        &self,
        t: &EmailTemplate,
        subject_override: Option<&str>,
    ) -> Result<Arc<CompiledTemplate>, DeliveryError> {
        let key = (t.id, t.version, subject_override.map(str::to_string));
        if let Some(c) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(c);
        }
        let mut input = input_of(t);
        if let Some(s) = subject_override {
            input.subject = s.to_string();
        }
        // Compiled without the custom-field restriction: a field deleted after the template was
        // saved prints as nothing rather than failing a send.
        let compiled = Arc::new(template_of(&input).compile()?);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() > 1000 {
                c.clear();
            }
            c.insert(key, compiled.clone());
        }
        Ok(compiled)
    }

    /// The sender to use: the given one or, when `None`, the first one created.
    pub async fn sender_or_default(&self, id: Option<Uuid>) -> Result<Sender, DeliveryError> {
        match id {
            Some(id) => self.store.sender(id).await.map_err(|e| match e {
                kizuna_store::StoreError::NotFound => {
                    DeliveryError::invalid("sender_id", "no sender with this id")
                }
                e => e.into(),
            }),
            None => self
                .store
                .senders()
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    DeliveryError::invalid(
                        "sender_id",
                        "no sender identity exists yet: create one (POST /api/v1/senders)",
                    )
                }),
        }
    }

    /// The owner of a contact, for "send as the owner" and `{{ owner.* }}`.
    pub async fn owner_of(&self, c: &Contact) -> Result<Option<Owner>, DeliveryError> {
        let Some(id) = c.owner_id else {
            return Ok(None);
        };
        Ok(match self.store.user(id).await {
            Ok(u) => Some(Owner {
                name: u.name,
                email: u.email,
                title: None,
                phone: None,
                signature: None,
            }),
            Err(kizuna_store::StoreError::NotFound) => None,
            Err(e) => return Err(e.into()),
        })
    }

    /// Renders a template for a contact as it would be sent (footer included), without sending.
    pub async fn preview(
        &self,
        t: &TemplateInput,
        contact_id: Uuid,
        sender_id: Option<Uuid>,
    ) -> Result<Preview, DeliveryError> {
        let compiled = self.check_template(t).await?;
        let contact = self.store.contact(contact_id).await.map_err(|e| match e {
            kizuna_store::StoreError::NotFound => {
                DeliveryError::invalid("contact_id", "no contact with this id")
            }
            e => e.into(),
        })?;
        let company = match contact.company_id {
            Some(id) => self.store.company(id).await.ok(),
            None => None,
        };
        let owner = self.owner_of(&contact).await?;
        let sender = match self.sender_or_default(sender_id).await {
            Ok(s) => identity_of(&s),
            Err(DeliveryError::Invalid { .. }) if sender_id.is_none() => SenderIdentity {
                name: "(sender)".into(),
                email: "sender@example.invalid".into(),
                organization: "(organization)".into(),
                postal_address: "(postal address)".into(),
                reply_to: None,
            },
            Err(e) => return Err(e),
        };
        let urls = self.links().message_urls(Uuid::nil());
        let rendered = compiled.render(&RenderContext {
            contact: &contact,
            company: company.as_ref(),
            owner: owner.as_ref(),
            sender: &sender,
            urls: &urls,
        })?;
        let r = with_footer(&rendered, compiled.kind(), &sender, &urls);
        Ok(Preview {
            subject: r.subject,
            html: r.html,
            text: r.text,
            mjml_strategy: compiled.mjml_strategy().map(|s| match s {
                kizuna_mail::template::MjmlStrategy::Precompiled => "precompiled",
                kizuna_mail::template::MjmlStrategy::PerMessage => "per_message",
            }),
        })
    }

    /// Puts one message in the outbox (a duplicate idempotency key is a no-op that returns the
    /// existing message) and wakes the worker.
    pub async fn enqueue(&self, r: &SendRequest) -> Result<(EmailMessage, bool), DeliveryError> {
        let t = self
            .store
            .template(r.template_id)
            .await
            .map_err(|e| match e {
                kizuna_store::StoreError::NotFound => {
                    DeliveryError::invalid("template_id", "no template with this id")
                }
                e => e.into(),
            })?;
        if let Some(s) = r.sender_id {
            self.sender_or_default(Some(s)).await?;
        }
        let subscription_type = match (&r.subscription_type, t.kind.as_str()) {
            (Some(s), _) => {
                if !self.store.subscription_type_exists(s).await? {
                    return Err(DeliveryError::invalid(
                        "subscription_type",
                        format!("no subscription type {s:?}: create it first"),
                    ));
                }
                Some(s.clone())
            }
            (None, "marketing") => {
                return Err(DeliveryError::invalid(
                    "subscription_type",
                    "marketing mail needs the subscription type the recipient consented to",
                ));
            }
            (None, _) => None,
        };
        let now = self.now();
        let out = self
            .store
            .enqueue_email(
                &NewMessage {
                    idempotency_key: r.idempotency_key.clone(),
                    contact_id: r.contact_id,
                    template_id: t.id,
                    sender_id: r.sender_id,
                    author: author_str(r.author).into(),
                    kind: t.kind.clone(),
                    subscription_type,
                    broadcast_id: None,
                    variant: None,
                    subject_override: None,
                    source: r.source.clone(),
                    payload: json!({}),
                    due_at: r.due_at.unwrap_or(now),
                },
                now,
            )
            .await?;
        self.wake.notify_one();
        Ok(out)
    }

    /// The built-in confirmation template, created on first use.
    async fn confirmation_template(&self) -> Result<EmailTemplate, DeliveryError> {
        if let Some(t) = self
            .store
            .templates()
            .await?
            .into_iter()
            .find(|t| t.name == CONFIRMATION_TEMPLATE)
        {
            return Ok(t);
        }
        let input = TemplateInput {
            name: CONFIRMATION_TEMPLATE.into(),
            kind: "transactional".into(),
            subject: "【{{ sender.organization }}】メール配信登録の確認 / Please confirm your subscription".into(),
            mjml: None,
            html: None,
            text: Some("{{ contact.last_name | default(\"お客\") }}様\n\n{{ sender.organization }}からのメール配信へのご登録ありがとうございます。\n以下のリンクから登録を確認してください。\n\n{{ confirm_url }}\n\nお心当たりのない場合は、このメールを破棄してください。\n\nThank you for subscribing. Please confirm with the link above; if it was not you, ignore this mail.\n".into()),
        };
        match self.store.create_template(input, self.now()).await {
            Ok(t) => Ok(t),
            Err(kizuna_store::StoreError::Conflict { .. }) => Ok(self
                .store
                .templates()
                .await?
                .into_iter()
                .find(|t| t.name == CONFIRMATION_TEMPLATE)
                .ok_or(kizuna_store::StoreError::NotFound)?),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts a double opt-in: records the request (`requested` in the ledger) and enqueues a
    /// transactional confirmation mail with the signed `{{ confirm_url }}`.
    pub async fn request_double_opt_in(
        &self,
        consent: NewConsent,
        template_id: Option<Uuid>,
        sender_id: Option<Uuid>,
    ) -> Result<(ConsentRequest, EmailMessage), DeliveryError> {
        if !self
            .store
            .subscription_type_exists(&consent.subscription_type)
            .await?
        {
            return Err(DeliveryError::invalid(
                "subscription_type",
                format!("no subscription type {:?}", consent.subscription_type),
            ));
        }
        let contact = self.store.contact(consent.contact_id).await?;
        if contact.email.is_none() {
            return Err(DeliveryError::invalid(
                "contact_id",
                "the contact has no e-mail address",
            ));
        }
        let template = match template_id {
            Some(id) => self.store.template(id).await?,
            None => self.confirmation_template().await?,
        };
        if template.kind != "transactional" {
            return Err(DeliveryError::invalid(
                "template_id",
                "a confirmation mail uses a transactional template",
            ));
        }
        let sender = self.sender_or_default(sender_id).await?;
        let now = self.now();
        let expires = now + self.settings.confirm_ttl;
        let req = self
            .store
            .create_consent_request(&consent, expires, now)
            .await?;
        let (msg, _) = self
            .store
            .enqueue_email(
                &NewMessage {
                    idempotency_key: format!("consent:{}", req.id),
                    contact_id: consent.contact_id,
                    template_id: template.id,
                    sender_id: Some(sender.id),
                    author: "identity".into(),
                    kind: "transactional".into(),
                    subscription_type: Some(consent.subscription_type.clone()),
                    broadcast_id: None,
                    variant: None,
                    subject_override: None,
                    source: "consent".into(),
                    payload: json!({"consent_request_id": req.id, "expires_at": expires.timestamp()}),
                    due_at: now,
                },
                now,
            )
            .await?;
        self.wake.notify_one();
        Ok((req, msg))
    }

    /// The per-message URLs of a message, with the confirmation link of a double opt-in mail.
    pub fn message_urls(&self, id: Uuid, payload: &serde_json::Value) -> MessageUrls {
        let mut urls = self.links().message_urls(id);
        if let (Some(req), Some(exp)) = (
            payload
                .get("consent_request_id")
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse::<Uuid>().ok()),
            payload.get("expires_at").and_then(|v| v.as_i64()),
        ) {
            let exp = DateTime::from_timestamp(exp, 0).unwrap_or_default();
            urls.confirm = Some(self.links().confirm_url(req, exp));
        }
        urls
    }

    /// Confirms a double opt-in from its signed link.
    pub async fn confirm(
        &self,
        token: &str,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<ConsentRequest, DeliveryError> {
        let id = self.links().verify_confirm(token, self.now())?;
        Ok(self
            .store
            .confirm_consent_request(
                id,
                ip.map(|i| i.to_string()),
                user_agent.map(str::to_string),
                self.now(),
            )
            .await?)
    }

    /// Records an open from the pixel. Bad tokens are an error (the endpoint answers 400).
    pub async fn open(
        &self,
        token: &str,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<(), DeliveryError> {
        let id = self.links().verify_open(token)?;
        let now = self.now();
        let sent_at = self.store.email(id).await.ok().and_then(|m| m.sent_at);
        let v = classify_open(
            &OpenRequest {
                user_agent,
                ip,
                at: now,
                delivered_at: sent_at,
            },
            &self.settings.engagement,
        );
        self.store
            .record_engagement(&Engagement {
                message_id: id,
                kind: "open",
                link_index: None,
                url: None,
                machine: v.machine,
                reason: v.reason.map(|r| format!("{r:?}")),
                ip: ip.map(|i| i.to_string()),
                user_agent: user_agent.map(str::to_string),
                at: now,
            })
            .await?;
        Ok(())
    }

    /// Records a click and returns where to redirect (the URL inside the signed token).
    pub async fn click(
        &self,
        token: &str,
        method: &str,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<String, DeliveryError> {
        let click = self.links().verify_click(token)?;
        let now = self.now();
        let sent_at = self
            .store
            .email(click.message_id)
            .await
            .ok()
            .and_then(|m| m.sent_at);
        let (earlier, link_count) = self.store.email_clicks(click.message_id).await?;
        let v = classify_click(
            &ClickRequest {
                method,
                user_agent,
                ip,
                at: now,
                delivered_at: sent_at,
                link_index: click.link_index,
                link_count,
                earlier_clicks: &earlier,
            },
            &self.settings.engagement,
        );
        self.store
            .record_engagement(&Engagement {
                message_id: click.message_id,
                kind: "click",
                link_index: Some(i64::from(click.link_index)),
                url: Some(click.url.clone()),
                machine: v.machine,
                reason: v.reason.map(|r| format!("{r:?}")),
                ip: ip.map(|i| i.to_string()),
                user_agent: user_agent.map(str::to_string),
                at: now,
            })
            .await?;
        Ok(click.url)
    }

    /// Unsubscribes the recipient of the message a token names (from that message's
    /// subscription type). Returns the message, `None` for an unknown message.
    pub async fn unsubscribe(
        &self,
        token: &str,
        source: &str,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<Option<EmailMessage>, DeliveryError> {
        let id = self.links().verify_unsubscribe(token)?;
        Ok(self
            .store
            .unsubscribe_by_email(
                id,
                source,
                ip.map(|i| i.to_string()),
                user_agent.map(str::to_string),
                self.now(),
            )
            .await?)
    }

    /// The message id an unsubscribe-page token names (checked), for the confirmation page.
    pub fn verify_unsubscribe(&self, token: &str) -> Result<Uuid, DeliveryError> {
        Ok(self.links().verify_unsubscribe(token)?)
    }

    async fn preference_contact(&self, token: &str) -> Result<Contact, DeliveryError> {
        let id = self.links().verify_preferences(token)?;
        let m = self.store.email(id).await?;
        Ok(self.store.contact(m.contact_id).await?)
    }

    /// What the preference center shows for a token.
    pub async fn preferences(&self, token: &str) -> Result<Preferences, DeliveryError> {
        let c = self.preference_contact(token).await?;
        let states = self.store.consent_states(c.id).await?;
        let types = self.store.subscription_types().await?;
        Ok(Preferences {
            email: mask(c.email.as_deref().unwrap_or_default()),
            types: types
                .into_iter()
                .map(|t| {
                    let on = states.iter().any(|s| {
                        s.channel == "email"
                            && s.subscription_type == t.name
                            && s.status == ConsentStatus::Granted
                    });
                    (t, on)
                })
                .collect(),
        })
    }

    /// Saves the preference center: each type in `subscribed` is granted, every other one that
    /// was granted is withdrawn (so "unsubscribe from all" is an empty list).
    pub async fn save_preferences(
        &self,
        token: &str,
        subscribed: &[String],
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<Preferences, DeliveryError> {
        let c = self.preference_contact(token).await?;
        let current = self.preferences(token).await?;
        let now = self.now();
        let mut records = Vec::new();
        for (t, on) in &current.types {
            let want = subscribed.iter().any(|s| s == &t.name);
            if want != *on {
                records.push(NewConsent {
                    contact_id: c.id,
                    channel: "email".into(),
                    subscription_type: t.name.clone(),
                    status: if want {
                        ConsentStatus::Granted
                    } else {
                        ConsentStatus::Withdrawn
                    },
                    source: "preference_center".into(),
                    wording: Some(format!("{} ({})", t.label, t.name)),
                    wording_version: Some("preference-center-v1".into()),
                    ip: ip.map(|i| i.to_string()),
                    user_agent: user_agent.map(str::to_string),
                    request_id: None,
                    message_id: self.links().verify_preferences(token).ok(),
                    occurred_at: now,
                });
            }
        }
        self.store.record_consents(&records, now).await?;
        self.preferences(token).await
    }

    /// The message of a view-in-browser token, rendered again for its contact.
    pub async fn view(&self, token: &str) -> Result<String, DeliveryError> {
        let id = self.links().verify_view(token)?;
        let m = self.store.email(id).await?;
        let t = self.store.template(m.template_id).await?;
        let p = self
            .preview(&input_of(&t), m.contact_id, m.sender_id)
            .await?;
        Ok(p.html
            .unwrap_or_else(|| format!("<pre>{}</pre>", html_escape(&p.text))))
    }

    /// Applies parsed bounces, complaints and delivery confirmations.
    pub async fn apply_feedback(
        &self,
        items: &[Feedback],
        source: &str,
    ) -> Result<FeedbackReport, DeliveryError> {
        let inputs: Vec<FeedbackInput> = items
            .iter()
            .map(|f| FeedbackInput {
                recipient: f.recipient.clone(),
                kind: match f.kind {
                    FeedbackKind::HardBounce => "hard_bounce",
                    FeedbackKind::SoftBounce => "soft_bounce",
                    FeedbackKind::Complaint => "complaint",
                    FeedbackKind::Delivered => "delivered",
                }
                .into(),
                message_id: f.message_id,
                status: f.status.clone(),
                detail: f.detail.clone(),
                source: source.into(),
            })
            .collect();
        Ok(self.store.apply_email_feedback(&inputs, self.now()).await?)
    }
}

/// Minimal HTML escaping for pages.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn hex32(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
