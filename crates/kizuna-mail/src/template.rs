//! Templates: compile once (every error found at save/preview time), personalize per contact.
//!
//! A [`Template`] has a subject, a body as MJML *or* HTML, an optional plain-text body (derived
//! from the HTML with html2text when absent) and a [`TemplateKind`]. The language is minijinja
//! (Jinja2 syntax), sandboxed: no file access, a fuel limit stops runaway loops, HTML and MJML
//! parts are autoescaped. The context is:
//!
//! | name | content |
//! |---|---|
//! | `contact` | every [`Contact`] field, `full_name` (姓 名) and `custom.*` |
//! | `company` | the contact's [`Company`] (fields are empty when there is none) |
//! | `owner` | the contact's owner: `name`, `email`, `title`, `phone`, `signature` |
//! | `sender` | the sender identity: `name`, `email`, `organization`, `postal_address` |
//! | `unsubscribe_url`, `preferences_url`, `view_in_browser_url` | signed per-message links |
//! | `confirm_url` | the double opt-in link (in a confirmation mail; empty elsewhere) |
//!
//! `default` falls back on missing, null **and empty** values, so
//! `{{ contact.last_name | default("ご担当者") }}様` reads 「ご担当者様」 for a contact without a
//! family name. [`Template::compile`] rejects syntax errors, unknown variables (typos such as
//! `contact.lst_name`), unknown filters and MJML errors, naming the part and line, by checking
//! the template and rendering it against a fully filled and an entirely empty probe contact.
//!
//! MJML strategy: rendering MJML per message costs a parse and a render. When it is provably
//! equivalent, the MJML is instead rendered to HTML once with every template tag kept intact
//! (each tag is swapped for an inert placeholder before MJML and swapped back after), and each
//! message then only personalizes that HTML. It is used only when (1) every tag sits in raw
//! content (`mj-text`, `mj-button`, `mj-raw`, …) or, for `{{ … }}` output, in a URL or text
//! attribute (`href`, `src`, `alt`, `title`), so that no contact can change the MJML layout;
//! (2) every placeholder survives MJML rendering exactly, in order; and (3) both ways give
//! byte-identical HTML for the probe contacts. Otherwise MJML is rendered per message.
//! [`CompiledTemplate::mjml_strategy`] tells which was chosen.

use crate::MailError;
use crate::compose::{Owner, SenderIdentity};
use crate::links::MessageUrls;
use chrono::{TimeZone, Utc};
use kizuna_core::company::Company;
use kizuna_core::contact::{Contact, LifecycleStage, PostalAddress, Source, Temperature};
use minijinja::value::{Serde, Value};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// Marketing mail gets the legal footer, List-Unsubscribe and consent checks; transactional mail
/// (thanks mails, confirmations, receipts) does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateKind {
    /// Newsletters, step mails, targeted mails.
    Marketing,
    /// Mail the contact asked for.
    Transactional,
}

/// A part of a template, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplatePart {
    /// The subject line.
    Subject,
    /// The MJML body.
    Mjml,
    /// The HTML body.
    Html,
    /// The plain-text body.
    Text,
}

impl fmt::Display for TemplatePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Subject => "subject",
            Self::Mjml => "mjml",
            Self::Html => "html",
            Self::Text => "text",
        })
    }
}

impl TemplatePart {
    fn env_name(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Mjml => "mjml",
            Self::Html => "html",
            Self::Text => "text",
        }
    }
}

/// A stored template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Subject line (template).
    pub subject: String,
    /// MJML body (template); takes precedence over `html`.
    #[serde(default)]
    pub mjml: Option<String>,
    /// HTML body (template), when not MJML.
    #[serde(default)]
    pub html: Option<String>,
    /// Plain-text body (template); derived from the HTML when absent.
    #[serde(default)]
    pub text: Option<String>,
    /// Marketing or transactional.
    pub kind: TemplateKind,
}

/// Limits and choices for [`Template::compile_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// Fuel per part and message (minijinja instructions); stops runaway loops.
    pub fuel: u64,
    /// Whether MJML may be rendered once ([`MjmlStrategy::Precompiled`]) when that is provably
    /// equivalent; `false` forces per-message MJML rendering.
    pub precompile_mjml: bool,
    /// Names of custom fields that `contact.custom.NAME` may use; `None` allows any.
    pub custom_fields: Option<Vec<String>>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            fuel: 200_000,
            precompile_mjml: true,
            custom_fields: None,
        }
    }
}

/// How the HTML of an MJML template is produced per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MjmlStrategy {
    /// MJML rendered to HTML once at compile time; each message personalizes the HTML.
    Precompiled,
    /// Each message personalizes the MJML, then parses and renders it.
    PerMessage,
}

/// What a template produced for one contact, before footer, tracking and MIME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The subject (one line).
    pub subject: String,
    /// The HTML body, if the template has one.
    pub html: Option<String>,
    /// The plain-text body.
    pub text: String,
}

/// The data a template is personalized with.
#[derive(Debug, Clone, Copy)]
pub struct RenderContext<'a> {
    /// The recipient.
    pub contact: &'a Contact,
    /// The recipient's company.
    pub company: Option<&'a Company>,
    /// The recipient's owner (sales rep).
    pub owner: Option<&'a Owner>,
    /// The sender identity.
    pub sender: &'a SenderIdentity,
    /// Signed per-message links.
    pub urls: &'a MessageUrls,
}

#[derive(Serialize)]
struct ContactView<'a> {
    #[serde(flatten)]
    contact: &'a Contact,
    full_name: Option<String>,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The contact's name for the `To:` header (姓 名), if known.
pub(crate) fn contact_display_name(c: &Contact) -> Option<String> {
    full_name(c)
}

/// 姓 名 order, as written in Japanese business mail.
fn full_name(c: &Contact) -> Option<String> {
    match (non_empty(&c.last_name), non_empty(&c.first_name)) {
        (Some(l), Some(f)) => Some(format!("{l} {f}")),
        (Some(n), None) | (None, Some(n)) => Some(n.to_string()),
        (None, None) => None,
    }
}

const COMPANY_FIELDS: &[&str] = &[
    "id",
    "name",
    "name_key",
    "domain",
    "industry",
    "employee_count",
    "annual_revenue",
    "website",
    "phone",
    "created_at",
    "updated_at",
];
const CONTACT_FIELDS: &[&str] = &[
    "id",
    "email",
    "first_name",
    "last_name",
    "full_name",
    "phone",
    "job_title",
    "department",
    "company_id",
    "lifecycle_stage",
    "temperature",
    "owner_id",
    "source",
    "address",
    "custom",
    "created_at",
    "updated_at",
];
const OWNER_FIELDS: &[&str] = &["name", "email", "title", "phone", "signature"];
const SENDER_FIELDS: &[&str] = &["name", "email", "organization", "postal_address"];
const TOP_LEVEL: &[&str] = &[
    "contact",
    "company",
    "owner",
    "sender",
    "unsubscribe_url",
    "preferences_url",
    "view_in_browser_url",
    "confirm_url",
];
/// Names minijinja itself provides.
const BUILTIN_GLOBALS: &[&str] = &["range", "dict", "namespace", "loop", "self", "super"];

fn empty_object(fields: &[&str]) -> Value {
    Value::from(
        fields
            .iter()
            .map(|f| (*f, Value::from(())))
            .collect::<BTreeMap<_, _>>(),
    )
}

impl RenderContext<'_> {
    /// The minijinja context value.
    pub fn to_value(&self) -> Value {
        let mut m: BTreeMap<&str, Value> = BTreeMap::new();
        m.insert(
            "contact",
            Value::from(Serde(ContactView {
                contact: self.contact,
                full_name: full_name(self.contact),
            })),
        );
        m.insert(
            "company",
            match self.company {
                Some(c) => Value::from(Serde(c)),
                None => empty_object(COMPANY_FIELDS),
            },
        );
        m.insert(
            "owner",
            match self.owner {
                Some(o) => Value::from(Serde(o)),
                None => empty_object(OWNER_FIELDS),
            },
        );
        m.insert("sender", Value::from(Serde(self.sender)));
        m.insert(
            "unsubscribe_url",
            Value::from(self.urls.unsubscribe.as_str()),
        );
        m.insert(
            "preferences_url",
            Value::from(self.urls.preferences.as_str()),
        );
        m.insert(
            "view_in_browser_url",
            Value::from(self.urls.view_in_browser.as_str()),
        );
        m.insert(
            "confirm_url",
            Value::from(self.urls.confirm.as_deref().unwrap_or_default()),
        );
        Value::from(m)
    }
}

/// `default` that also falls back on null and empty (or blank) strings, and on empty lists/maps
/// when the second argument is true (Jinja2's "boolean" mode).
fn default_filter(value: Value, fallback: Option<Value>, boolean: Option<bool>) -> Value {
    let fallback = fallback.unwrap_or_else(|| Value::from(""));
    let missing = value.is_undefined()
        || value.is_none()
        || value.as_str().is_some_and(|s| s.trim().is_empty())
        || (boolean == Some(true) && !value.is_true());
    if missing { fallback } else { value }
}

fn new_env(fuel: u64) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(fuel));
    // Missing values print as nothing and chain (`company.industry` with no company), so that
    // no contact can make a send fail; typos are rejected at compile time instead.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_recursion_limit(64);
    env.set_auto_escape_callback(|name| {
        if matches!(name, "html" | "mjml" | "mjml.compiled") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env.add_filter("default", default_filter);
    env.add_filter("d", default_filter);
    env
}

/// A template ready to render: parsed, checked and, for MJML, possibly pre-rendered.
pub struct CompiledTemplate {
    env: Environment<'static>,
    kind: TemplateKind,
    body: Body,
    has_text: bool,
    mjml_options: mrml::prelude::render::RenderOptions,
}

impl fmt::Debug for CompiledTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledTemplate")
            .field("kind", &self.kind)
            .field("body", &self.body)
            .field("has_text", &self.has_text)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Html,
    Mjml(MjmlStrategy),
}

fn template_error(part: TemplatePart, e: &minijinja::Error) -> MailError {
    let mut message = e.kind().to_string();
    if let Some(d) = e.detail() {
        message.push_str(": ");
        message.push_str(d);
    }
    MailError::Template {
        part,
        line: e.line(),
        message,
    }
}

fn line_of(src: &str, byte: usize) -> usize {
    let byte = byte.min(src.len());
    src.as_bytes()[..byte]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn mrml_position(e: &mrml::prelude::parser::Error) -> Option<usize> {
    use mrml::prelude::parser::Error as E;
    match e {
        E::UnexpectedElement { position, .. }
        | E::UnexpectedToken { position, .. }
        | E::MissingAttribute { position, .. }
        | E::InvalidAttribute { position, .. }
        | E::InvalidFormat { position, .. }
        | E::IncludeLoaderError { position, .. } => Some(position.start),
        // The document ended inside an element: report the last line.
        E::EndOfStream { .. } => Some(usize::MAX),
        _ => None,
    }
}

fn render_mjml(
    mjml: &str,
    opts: &mrml::prelude::render::RenderOptions,
) -> Result<String, (Option<usize>, String)> {
    let parsed = mrml::parse(mjml).map_err(|e| (mrml_position(&e), e.to_string()))?;
    parsed
        .element
        .render(opts)
        .map_err(|e| (None, e.to_string()))
}

impl Template {
    /// Compiles with [`CompileOptions::default`].
    pub fn compile(&self) -> Result<CompiledTemplate, MailError> {
        self.compile_with(&CompileOptions::default())
    }

    /// Parses every part, checks the variables it uses, renders it against probe contacts and
    /// chooses the MJML strategy. Any error names the part and, when known, the line.
    pub fn compile_with(&self, options: &CompileOptions) -> Result<CompiledTemplate, MailError> {
        let mut env = new_env(options.fuel);
        let subject = self.subject.trim();
        if subject.is_empty() {
            return Err(MailError::Template {
                part: TemplatePart::Subject,
                line: None,
                message: "the subject is empty".into(),
            });
        }
        let mut parts = vec![(TemplatePart::Subject, subject.to_string())];
        let body = match (&self.mjml, &self.html) {
            (Some(m), _) if !m.trim().is_empty() => {
                parts.push((TemplatePart::Mjml, m.clone()));
                Body::Mjml(MjmlStrategy::PerMessage)
            }
            (_, Some(h)) if !h.trim().is_empty() => {
                parts.push((TemplatePart::Html, h.clone()));
                Body::Html
            }
            _ => Body::None,
        };
        let has_text = self.text.as_ref().is_some_and(|t| !t.trim().is_empty());
        if has_text {
            parts.push((TemplatePart::Text, self.text.clone().unwrap_or_default()));
        }
        if body == Body::None && !has_text {
            return Err(MailError::Template {
                part: TemplatePart::Text,
                line: None,
                message: "the template has no body (MJML, HTML or text)".into(),
            });
        }
        for (part, src) in &parts {
            env.add_template_owned(part.env_name(), src.clone())
                .map_err(|e| template_error(*part, &e))?;
            let tmpl = env
                .get_template(part.env_name())
                .map_err(|e| template_error(*part, &e))?;
            check_variables(*part, src, &tmpl.undeclared_variables(true), options)?;
            if *part == TemplatePart::Mjml {
                check_mjml_elements(src)?;
            }
        }
        let mut compiled = CompiledTemplate {
            env,
            kind: self.kind,
            body,
            has_text,
            mjml_options: mrml::prelude::render::RenderOptions::default(),
        };
        // Render every part against the probes: unknown filters, type errors, fuel and MJML
        // errors surface now, not at send time.
        let probes = Probes::new();
        let mut per_message_html = Vec::new();
        for ctx in probes.contexts() {
            let rendered = compiled.render(&ctx)?;
            per_message_html.push(rendered.html);
        }
        if let (Body::Mjml(_), Some(mjml)) = (body, &self.mjml)
            && options.precompile_mjml
            && let Some(html) = precompile_mjml(mjml, &compiled.mjml_options)
            && compiled
                .env
                .add_template_owned("mjml.compiled", html)
                .is_ok()
        {
            compiled.body = Body::Mjml(MjmlStrategy::Precompiled);
            let same = probes
                .contexts()
                .iter()
                .zip(&per_message_html)
                .all(|(ctx, expected)| {
                    compiled
                        .render_body(&ctx.to_value())
                        .is_ok_and(|html| &html == expected)
                });
            if !same {
                compiled.body = Body::Mjml(MjmlStrategy::PerMessage);
            }
        }
        Ok(compiled)
    }
}

/// Every element MJML 4 defines. mrml parses unknown `mj-*` elements without complaint (and
/// renders them as nothing), so a typo such as `<mj-buton>` would silently drop content: the
/// names are checked here instead, as the reference MJML validator does.
const MJML_ELEMENTS: &[&str] = &[
    "mjml",
    "mj-head",
    "mj-body",
    "mj-attributes",
    "mj-all",
    "mj-class",
    "mj-breakpoint",
    "mj-font",
    "mj-html-attributes",
    "mj-html-attribute",
    "mj-selector",
    "mj-preview",
    "mj-style",
    "mj-title",
    "mj-accordion",
    "mj-accordion-element",
    "mj-accordion-title",
    "mj-accordion-text",
    "mj-button",
    "mj-carousel",
    "mj-carousel-image",
    "mj-column",
    "mj-divider",
    "mj-group",
    "mj-hero",
    "mj-image",
    "mj-navbar",
    "mj-navbar-link",
    "mj-raw",
    "mj-section",
    "mj-social",
    "mj-social-element",
    "mj-spacer",
    "mj-table",
    "mj-text",
    "mj-wrapper",
];

/// Refuses start or end tags of elements MJML does not define (outside comments), naming the
/// line. `mj-include` is refused too: templates never read files.
fn check_mjml_elements(src: &str) -> Result<(), MailError> {
    let mut i = 0;
    while let Some(off) = src[i..].find('<') {
        let lt = i + off;
        let rest = &src[lt..];
        if rest.starts_with("<!--") {
            i = rest.find("-->").map_or(src.len(), |e| lt + e + 3);
            continue;
        }
        let name_start = if rest.starts_with("</") {
            lt + 2
        } else {
            lt + 1
        };
        let name: &str = src[name_start..]
            .split(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .next()
            .unwrap_or_default();
        if (name == "mjml" || name.starts_with("mj-")) && !MJML_ELEMENTS.contains(&name) {
            return Err(MailError::Template {
                part: TemplatePart::Mjml,
                line: Some(line_of(src, lt)),
                message: if name == "mj-include" {
                    "mj-include is not allowed: a template cannot read files".into()
                } else {
                    format!("unknown MJML element <{name}>")
                },
            });
        }
        i = lt + 1;
    }
    Ok(())
}

fn check_variables(
    part: TemplatePart,
    src: &str,
    names: &std::collections::HashSet<String>,
    options: &CompileOptions,
) -> Result<(), MailError> {
    let mut names: Vec<&String> = names.iter().collect();
    names.sort();
    for name in names {
        let mut segs = name.split('.');
        let root = segs.next().unwrap_or_default();
        let field = segs.next();
        let ok = if BUILTIN_GLOBALS.contains(&root) {
            true
        } else if !TOP_LEVEL.contains(&root) {
            false
        } else {
            match (root, field) {
                (_, None) => true,
                ("contact", Some("custom")) => match (&options.custom_fields, segs.next()) {
                    (Some(allowed), Some(custom)) => allowed.iter().any(|a| a == custom),
                    _ => true,
                },
                ("contact", Some(f)) => CONTACT_FIELDS.contains(&f),
                ("company", Some(f)) => COMPANY_FIELDS.contains(&f),
                ("owner", Some(f)) => OWNER_FIELDS.contains(&f),
                ("sender", Some(f)) => SENDER_FIELDS.contains(&f),
                _ => false,
            }
        };
        if !ok {
            let line = src.find(name.as_str()).map(|p| line_of(src, p));
            return Err(MailError::Template {
                part,
                line,
                message: format!("unknown variable `{name}`"),
            });
        }
    }
    Ok(())
}

impl CompiledTemplate {
    /// Marketing or transactional.
    pub fn kind(&self) -> TemplateKind {
        self.kind
    }

    /// For an MJML template, how its HTML is produced; `None` for HTML or text templates.
    pub fn mjml_strategy(&self) -> Option<MjmlStrategy> {
        match self.body {
            Body::Mjml(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the template produces an HTML part.
    pub fn has_html(&self) -> bool {
        self.body != Body::None
    }

    fn render_part(
        &self,
        name: &str,
        part: TemplatePart,
        ctx: &Value,
    ) -> Result<String, MailError> {
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| template_error(part, &e))?;
        tmpl.render(ctx).map_err(|e| template_error(part, &e))
    }

    fn render_body(&self, ctx: &Value) -> Result<Option<String>, MailError> {
        Ok(match self.body {
            Body::None => None,
            Body::Html => Some(self.render_part("html", TemplatePart::Html, ctx)?),
            Body::Mjml(MjmlStrategy::Precompiled) => {
                Some(self.render_part("mjml.compiled", TemplatePart::Mjml, ctx)?)
            }
            Body::Mjml(MjmlStrategy::PerMessage) => {
                let mjml = self.render_part("mjml", TemplatePart::Mjml, ctx)?;
                let html = render_mjml(&mjml, &self.mjml_options).map_err(|(pos, message)| {
                    MailError::Template {
                        part: TemplatePart::Mjml,
                        line: pos.map(|p| line_of(&mjml, p)),
                        message,
                    }
                })?;
                Some(html)
            }
        })
    }

    /// Personalizes the template for one contact.
    pub fn render(&self, ctx: &RenderContext<'_>) -> Result<Rendered, MailError> {
        let value = ctx.to_value();
        let subject = self.render_part("subject", TemplatePart::Subject, &value)?;
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        let html = self.render_body(&value)?;
        let text = if self.has_text {
            self.render_part("text", TemplatePart::Text, &value)?
        } else {
            html_to_text(html.as_deref().unwrap_or_default())
        };
        Ok(Rendered {
            subject,
            html,
            text,
        })
    }
}

/// Renders a compiled template for one contact, as the editor's preview does. Identical to
/// [`CompiledTemplate::render`]; previews and sends can never disagree.
pub fn preview(
    compiled: &CompiledTemplate,
    ctx: &RenderContext<'_>,
) -> Result<Rendered, MailError> {
    compiled.render(ctx)
}

/// Plain text from HTML: links as footnotes, no table borders, long lines unwrapped.
pub fn html_to_text(html: &str) -> String {
    let text = html2text::config::plain()
        .no_table_borders()
        .string_from_read(html.as_bytes(), 10_000)
        .unwrap_or_default();
    // html2text pads table cells; trim every line and squeeze blank runs.
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(line.trim_start());
    }
    out.push('\n');
    out
}

/// The contacts every template is rendered against at compile time: one with every field
/// filled (with characters that need escaping) and one with nothing.
struct Probes {
    filled: Contact,
    empty: Contact,
    company: Company,
    owner: Owner,
    sender: SenderIdentity,
    urls: MessageUrls,
}

impl Probes {
    fn new() -> Self {
        let t = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default();
        let s = |v: &str| Some(v.to_string());
        let mut custom = serde_json::Map::new();
        custom.insert("probe".into(), serde_json::Value::from("x&y"));
        let filled = Contact {
            id: Uuid::nil(),
            email: s("probe@example.jp"),
            first_name: s("太郎<&>"),
            last_name: s("山田\"'"),
            phone: s("03-0000-0000"),
            job_title: s("部長"),
            department: s("営業部"),
            company_id: Some(Uuid::nil()),
            lifecycle_stage: LifecycleStage::Mql,
            temperature: Temperature::Hot,
            owner_id: Some(Uuid::nil()),
            source: Source {
                channel: s("organic_search"),
                ..Source::default()
            },
            address: PostalAddress {
                region: s("東京都"),
                ..PostalAddress::default()
            },
            custom,
            created_at: t,
            updated_at: t,
        };
        let empty = Contact {
            email: None,
            first_name: None,
            last_name: None,
            phone: None,
            job_title: None,
            department: None,
            company_id: None,
            owner_id: None,
            source: Source::default(),
            address: PostalAddress::default(),
            custom: serde_json::Map::new(),
            ..filled.clone()
        };
        Self {
            filled,
            empty,
            company: Company {
                id: Uuid::nil(),
                name: "株式会社プローブ&".into(),
                name_key: "プローブ".into(),
                domain: s("example.jp"),
                industry: s("情報通信業"),
                employee_count: Some(100),
                annual_revenue: Some(1_000_000),
                website: s("https://example.jp/?a=1&b=2"),
                phone: s("03-0000-0000"),
                created_at: t,
                updated_at: t,
            },
            owner: Owner {
                name: "佐藤 花子".into(),
                email: "owner@example.jp".into(),
                title: s("営業"),
                phone: None,
                signature: s("佐藤<br>"),
            },
            sender: SenderIdentity {
                name: "プローブ".into(),
                email: "news@example.jp".into(),
                organization: "株式会社プローブ".into(),
                postal_address: "東京都".into(),
                reply_to: None,
            },
            urls: MessageUrls {
                unsubscribe: "https://example.jp/u/x".into(),
                preferences: "https://example.jp/p/x".into(),
                view_in_browser: "https://example.jp/v/x".into(),
                unsubscribe_mailto: None,
                confirm: Some("https://example.jp/confirm/x".into()),
            },
        }
    }

    fn contexts(&self) -> [RenderContext<'_>; 2] {
        [
            RenderContext {
                contact: &self.filled,
                company: Some(&self.company),
                owner: Some(&self.owner),
                sender: &self.sender,
                urls: &self.urls,
            },
            RenderContext {
                contact: &self.empty,
                company: None,
                owner: None,
                sender: &self.sender,
                urls: &self.urls,
            },
        ]
    }
}

// ---- MJML precompilation -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagKind {
    /// `{{ … }}`
    Expr,
    /// `{% … %}` or `{# … #}`
    Block,
}

struct JinjaTag<'a> {
    kind: TagKind,
    start: usize,
    src: &'a str,
}

/// Finds every template tag in `src`. `None` when the source cannot be split safely
/// (unterminated tag, `{% raw %}`).
fn jinja_tags(src: &str) -> Option<Vec<JinjaTag<'_>>> {
    let b = src.as_bytes();
    let mut tags = Vec::new();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] != b'{' || !matches!(b[i + 1], b'{' | b'%' | b'#') {
            i += 1;
            continue;
        }
        let open = b[i + 1];
        let close: &[u8] = match open {
            b'{' => b"}}",
            b'%' => b"%}",
            _ => b"#}",
        };
        let mut j = i + 2;
        let mut end = None;
        while j + 1 < b.len() {
            if open != b'#' && (b[j] == b'"' || b[j] == b'\'') {
                let q = b[j];
                j += 1;
                while j < b.len() && b[j] != q {
                    if b[j] == b'\\' {
                        j += 1;
                    }
                    j += 1;
                }
                j += 1;
                continue;
            }
            if &b[j..j + 2] == close {
                end = Some(j + 2);
                break;
            }
            j += 1;
        }
        let end = end?;
        let tag = &src[i..end];
        if open == b'%' {
            let inner = tag[2..tag.len() - 2].trim_matches(|c: char| c == '-' || c == '+');
            if inner.trim_start().starts_with("raw") {
                return None;
            }
        }
        tags.push(JinjaTag {
            kind: if open == b'{' {
                TagKind::Expr
            } else {
                TagKind::Block
            },
            start: i,
            src: tag,
        });
        i = end;
    }
    Some(tags)
}

/// MJML elements whose content is raw HTML or text (the layout cannot depend on it).
const RAW_CONTENT: &[&str] = &[
    "mj-text",
    "mj-button",
    "mj-raw",
    "mj-table",
    "mj-title",
    "mj-preview",
    "mj-style",
    "mj-navbar-link",
    "mj-accordion-title",
    "mj-accordion-text",
    "mj-social-element",
];
/// Attributes whose value is only copied into the output.
const PASS_THROUGH_ATTRS: &[&str] = &["href", "src", "alt", "title"];

/// Whether every placeholder (byte offset in `mjml`, tag kind) sits where it cannot change the
/// MJML layout: in the content of a [`RAW_CONTENT`] element, or (`{{ … }}` only) as the whole
/// value of a [`PASS_THROUGH_ATTRS`] attribute of an `mj-*` element.
fn placeholders_are_layout_neutral(mjml: &str, placeholders: &[(usize, TagKind)]) -> bool {
    let b = mjml.as_bytes();
    let mut stack: Vec<&str> = Vec::new();
    let mut next = 0;
    let mut i = 0;
    while next < placeholders.len() {
        let in_raw = stack.last().is_some_and(|n| RAW_CONTENT.contains(n));
        if i >= b.len() {
            return false;
        }
        if i == placeholders[next].0 {
            if !in_raw {
                return false;
            }
            next += 1;
            i += 1;
            continue;
        }
        if b[i] == b'<' && mjml[i..].starts_with("</mj") {
            let end = mjml[i..].find('>').map_or(b.len(), |e| i + e + 1);
            let name = mjml[i + 2..end.saturating_sub(1).max(i + 2)].trim();
            if let Some(pos) = stack.iter().rposition(|n| *n == name) {
                stack.truncate(pos);
            }
            i = end;
            continue;
        }
        if b[i] == b'<' && !in_raw && mjml[i..].starts_with("<mj") {
            // A start tag: find its end, honouring quotes.
            let mut j = i + 1;
            let mut quote = None;
            while j < b.len() {
                match (quote, b[j]) {
                    (None, q @ (b'"' | b'\'')) => quote = Some(q),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            while next < placeholders.len() && placeholders[next].0 < j {
                let (at, kind) = placeholders[next];
                let before = &mjml[i..at];
                let attr_ok = before.rsplit_once('=').is_some_and(|(lhs, rhs)| {
                    let attr = lhs.rsplit(char::is_whitespace).next().unwrap_or_default();
                    PASS_THROUGH_ATTRS.contains(&attr) && matches!(rhs.trim(), "\"" | "'")
                });
                if !(attr_ok && kind == TagKind::Expr) {
                    return false;
                }
                next += 1;
            }
            let name_end = mjml[i + 1..]
                .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
                .map_or(b.len(), |e| i + 1 + e);
            if j < b.len() && b[j - 1] != b'/' {
                stack.push(&mjml[i + 1..name_end]);
            }
            i = j + 1;
            continue;
        }
        i += 1;
    }
    true
}

/// Renders MJML to HTML once with its template tags intact, when that is layout-neutral and
/// every tag survives; `None` means "render per message".
fn precompile_mjml(mjml: &str, opts: &mrml::prelude::render::RenderOptions) -> Option<String> {
    const MARK: &str = "zqkzjph";
    if mjml.contains(MARK) {
        return None;
    }
    let tags = jinja_tags(mjml)?;
    if tags.is_empty() {
        return render_mjml(mjml, opts).ok();
    }
    let mut substituted = String::with_capacity(mjml.len());
    let mut placeholders = Vec::with_capacity(tags.len());
    let mut last = 0;
    for (n, tag) in tags.iter().enumerate() {
        substituted.push_str(&mjml[last..tag.start]);
        placeholders.push((substituted.len(), tag.kind));
        substituted.push_str(&format!("{MARK}{n}x"));
        last = tag.start + tag.src.len();
    }
    substituted.push_str(&mjml[last..]);
    if !placeholders_are_layout_neutral(&substituted, &placeholders) {
        return None;
    }
    let html = render_mjml(&substituted, opts).ok()?;
    // Every placeholder must come out: block tags exactly once and in order, output tags at
    // least once. Then swap the tags back in.
    let mut out = String::with_capacity(html.len() + mjml.len());
    let mut rest = html.as_str();
    let mut seen = vec![0usize; tags.len()];
    let mut last_block: Option<usize> = None;
    while let Some(p) = rest.find(MARK) {
        out.push_str(&rest[..p]);
        let after = &rest[p + MARK.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let n: usize = after[..digits].parse().ok()?;
        if n >= tags.len() || !after[digits..].starts_with('x') {
            return None;
        }
        if tags[n].kind == TagKind::Block {
            if last_block.is_some_and(|l| l >= n) {
                return None;
            }
            last_block = Some(n);
        }
        seen[n] += 1;
        out.push_str(tags[n].src);
        rest = &after[digits + 1..];
    }
    out.push_str(rest);
    let intact = tags.iter().zip(&seen).all(|(t, &c)| match t.kind {
        TagKind::Block => c == 1,
        TagKind::Expr => c >= 1,
    });
    intact.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_mjml() -> &'static str {
        r#"<mjml>
  <mj-head><mj-title>{{ contact.last_name | default("ご担当者") }}様へ</mj-title></mj-head>
  <mj-body>
    <mj-section>
      <mj-column>
        <mj-text>{{ company.name }} {{ contact.last_name | default("ご担当者") }}様</mj-text>
        <mj-text>{% if company.industry == "製造業" %}製造業の皆様へ: 工場DXセミナーのご案内{% else %}業務効率化のご案内{% endif %}</mj-text>
        <mj-button href="{{ contact.custom.lp | default("https://example.jp/lp") }}">詳しく見る</mj-button>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>"#
    }

    fn ctx_parts(
        last_name: Option<&str>,
        industry: Option<&str>,
    ) -> (Contact, Company, Owner, SenderIdentity, MessageUrls) {
        let p = Probes::new();
        let mut c = p.empty.clone();
        c.last_name = last_name.map(str::to_string);
        let mut co = p.company.clone();
        co.name = "株式会社テスト".into();
        co.industry = industry.map(str::to_string);
        (c, co, p.owner, p.sender, p.urls)
    }

    fn render(t: &CompiledTemplate, last: Option<&str>, industry: Option<&str>) -> Rendered {
        let (c, co, o, s, u) = ctx_parts(last, industry);
        t.render(&RenderContext {
            contact: &c,
            company: Some(&co),
            owner: Some(&o),
            sender: &s,
            urls: &u,
        })
        .unwrap()
    }

    fn mjml_template(mjml: &str) -> Template {
        Template {
            subject: "{{ contact.last_name | default(\"ご担当者\") }}様へのご案内".into(),
            mjml: Some(mjml.into()),
            html: None,
            text: None,
            kind: TemplateKind::Marketing,
        }
    }

    #[test]
    fn default_falls_back_on_missing_null_and_empty() {
        let t = mjml_template(sample_mjml()).compile().unwrap();
        for last in [None, Some(""), Some("  ")] {
            let r = render(&t, last, None);
            assert_eq!(r.subject, "ご担当者様へのご案内");
            assert!(r.html.as_ref().unwrap().contains("ご担当者様"), "{last:?}");
        }
        let r = render(&t, Some("山田"), None);
        assert_eq!(r.subject, "山田様へのご案内");
        assert!(r.html.unwrap().contains("株式会社テスト 山田様"));
    }

    #[test]
    fn industry_blocks_and_text_part() {
        let t = mjml_template(sample_mjml()).compile().unwrap();
        let r = render(&t, Some("山田"), Some("製造業"));
        let html = r.html.unwrap();
        assert!(html.contains("製造業の皆様へ"));
        assert!(!html.contains("業務効率化のご案内"));
        assert!(r.text.contains("製造業の皆様へ"), "{}", r.text);
        assert!(r.text.contains("https://example.jp/lp"), "{}", r.text);
        let r = render(&t, Some("山田"), Some("小売業"));
        assert!(r.html.unwrap().contains("業務効率化のご案内"));
    }

    #[test]
    fn precompiled_mjml_matches_per_message_rendering() {
        let pre = mjml_template(sample_mjml()).compile().unwrap();
        assert_eq!(pre.mjml_strategy(), Some(MjmlStrategy::Precompiled));
        let per = mjml_template(sample_mjml())
            .compile_with(&CompileOptions {
                precompile_mjml: false,
                ..CompileOptions::default()
            })
            .unwrap();
        assert_eq!(per.mjml_strategy(), Some(MjmlStrategy::PerMessage));
        for (last, ind) in [
            (Some("山田 & <b>"), Some("製造業")),
            (None, None),
            (Some("O'Brien \"x\""), Some("小売業")),
        ] {
            assert_eq!(render(&pre, last, ind), render(&per, last, ind));
        }
    }

    #[test]
    fn layout_dependent_tags_fall_back_to_per_message() {
        // A conditional column changes the widths of its siblings: must render per message.
        let mjml = r#"<mjml><mj-body><mj-section>
            {% if company.industry == "製造業" %}<mj-column><mj-text>A</mj-text></mj-column>{% endif %}
            <mj-column><mj-text>B</mj-text></mj-column>
        </mj-section></mj-body></mjml>"#;
        let t = mjml_template(mjml).compile().unwrap();
        assert_eq!(t.mjml_strategy(), Some(MjmlStrategy::PerMessage));
        let one = render(&t, None, Some("小売業")).html.unwrap();
        let two = render(&t, None, Some("製造業")).html.unwrap();
        assert!(one.contains("width:100%") || one.contains("100%"));
        assert_ne!(one, two);
        // An output tag in a layout attribute, likewise.
        let mjml = r#"<mjml><mj-body><mj-section padding="{{ contact.custom.pad }}"><mj-column><mj-text>x</mj-text></mj-column></mj-section></mj-body></mjml>"#;
        let t = mjml_template(mjml).compile().unwrap();
        assert_eq!(t.mjml_strategy(), Some(MjmlStrategy::PerMessage));
    }

    #[test]
    fn html_is_autoescaped_and_text_is_not() {
        let t = Template {
            subject: "{{ contact.last_name }} & co".into(),
            mjml: None,
            html: Some("<p>{{ contact.last_name }}</p>".into()),
            text: Some("{{ contact.last_name }}様".into()),
            kind: TemplateKind::Transactional,
        }
        .compile()
        .unwrap();
        let r = render(&t, Some("<b>A&B</b>"), None);
        assert_eq!(r.html.unwrap(), "<p>&lt;b&gt;A&amp;B&lt;&#x2f;b&gt;</p>");
        assert_eq!(r.text, "<b>A&B</b>様");
        assert_eq!(r.subject, "<b>A&B</b> & co");
    }

    fn compile_err(t: Template) -> (TemplatePart, Option<usize>, String) {
        match t.compile() {
            Err(MailError::Template {
                part,
                line,
                message,
            }) => (part, line, message),
            other => panic!("expected a template error, got {other:?}"),
        }
    }

    fn html_template(html: &str) -> Template {
        Template {
            subject: "件名".into(),
            mjml: None,
            html: Some(html.into()),
            text: None,
            kind: TemplateKind::Marketing,
        }
    }

    #[test]
    fn errors_name_the_part_and_line() {
        let (part, line, msg) = compile_err(html_template("<p>\n{% if x %}\n</p>"));
        assert_eq!(part, TemplatePart::Html);
        assert!(line.is_some(), "{msg}");
        let (part, line, msg) = compile_err(html_template("<p>\n\n{{ contact.lst_name }}</p>"));
        assert_eq!((part, line), (TemplatePart::Html, Some(3)));
        assert!(msg.contains("contact.lst_name"), "{msg}");
        let (part, line, msg) = compile_err(html_template(
            "<p>\n{{ contact.last_name | nosuchfilter }}</p>",
        ));
        assert_eq!((part, line), (TemplatePart::Html, Some(2)), "{msg}");
        let mut t = html_template("<p>x</p>");
        t.subject = "{{ unknown_thing }}".into();
        let (part, _, _) = compile_err(t);
        assert_eq!(part, TemplatePart::Subject);
        let mut t = html_template("<p>x</p>");
        t.text = Some("line1\n{% for %}".into());
        let (part, line, _) = compile_err(t);
        assert_eq!((part, line), (TemplatePart::Text, Some(2)));
        let (part, line, msg) = compile_err(mjml_template(
            "<mjml>\n<mj-body>\n<mj-section>\n<mj-column>\n<mj-text>x</mj-text>\n</mj-section>\n</mj-body></mjml>",
        ));
        assert_eq!(part, TemplatePart::Mjml, "{msg}");
        assert_eq!(line, Some(7), "{msg}");
        let (part, line, msg) = compile_err(mjml_template(
            "<mjml>\n<mj-body>\n<mj-section>\n<mj-column>\n<mj-text>x</mj-text>\n</mj-column>\n</mj-section>\n<mj-bogus />\n</mj-body></mjml>",
        ));
        assert_eq!((part, line), (TemplatePart::Mjml, Some(8)), "{msg}");
    }

    #[test]
    fn unknown_mjml_elements_are_refused_outside_comments() {
        let (part, line, msg) = compile_err(mjml_template(
            "<mjml><mj-body><mj-section><mj-column>\n<mj-buton href=\"https://x.jp\">x</mj-buton>\n</mj-column></mj-section></mj-body></mjml>",
        ));
        assert_eq!((part, line), (TemplatePart::Mjml, Some(2)), "{msg}");
        assert!(msg.contains("mj-buton"), "{msg}");
        let (_, _, msg) = compile_err(mjml_template(
            "<mjml><mj-body><mj-include path=\"/etc/passwd\" /></mj-body></mjml>",
        ));
        assert!(msg.contains("mj-include"), "{msg}");
        let ok = mjml_template(
            "<mjml><mj-body><!-- <mj-old> --><mj-section><mj-column><mj-text>x</mj-text></mj-column></mj-section></mj-body></mjml>",
        );
        assert!(ok.compile().is_ok());
    }

    #[test]
    fn fuel_stops_runaway_templates() {
        let (part, _, msg) = compile_err(html_template(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        ));
        assert_eq!(part, TemplatePart::Html);
        assert!(msg.to_lowercase().contains("fuel"), "{msg}");
    }

    #[test]
    fn custom_fields_can_be_restricted() {
        let t = html_template("<p>{{ contact.custom.plan }}</p>");
        assert!(t.compile().is_ok());
        let opts = CompileOptions {
            custom_fields: Some(vec!["rank".into()]),
            ..CompileOptions::default()
        };
        assert!(t.compile_with(&opts).is_err());
    }

    #[test]
    fn empty_templates_are_refused() {
        let mut t = html_template("");
        assert!(t.compile().is_err());
        t.text = Some("本文".into());
        let c = t.compile().unwrap();
        assert!(!c.has_html());
        t.subject = " ".into();
        assert!(t.compile().is_err());
    }

    #[test]
    fn jinja_tags_split_with_strings() {
        let tags = jinja_tags(r#"a{{ "}}" }}b{% if x %}c{# note #}"#).unwrap();
        let srcs: Vec<&str> = tags.iter().map(|t| t.src).collect();
        assert_eq!(srcs, vec![r#"{{ "}}" }}"#, "{% if x %}", "{# note #}"]);
        assert!(jinja_tags("{% raw %}{{ x }}{% endraw %}").is_none());
        assert!(jinja_tags("{{ x").is_none());
    }
}
