//! Shipped program templates (R-PROG-4, R-PROG-7): ready programs with the e-mail templates
//! they use. Installing one creates what is missing (e-mail templates, lists) and the
//! program(s), as drafts to review, simulate and activate.

use serde::Serialize;
use serde_json::{Value, json};

/// An e-mail template a shipped program uses.
#[derive(Debug, Clone, Serialize)]
pub struct MailTemplate {
    /// Name.
    pub name: &'static str,
    /// Subject.
    pub subject: &'static str,
    /// HTML body (minijinja).
    pub html: &'static str,
}

/// A shipped template.
#[derive(Debug, Clone, Serialize)]
pub struct Shipped {
    /// Key (`seminar-attendee`).
    pub key: &'static str,
    /// What it is for.
    pub description: &'static str,
    /// Lists it needs.
    pub lists: Vec<&'static str>,
    /// E-mail templates.
    pub mails: Vec<MailTemplate>,
    /// Program definitions (one, or two for the tiered newsletter).
    pub programs: Vec<Value>,
}

fn mail(name: &'static str, subject: &'static str, html: &'static str) -> MailTemplate {
    MailTemplate {
        name,
        subject,
        html,
    }
}

const QUIET: fn() -> Value = || {
    json!({"quiet_hours": {"start": "21:00", "end": "08:00"}, "time_zone": "Asia/Tokyo",
           "frequency_cap": {"max": 3, "per": "7d"}})
};

/// Every shipped template.
pub fn all() -> Vec<Shipped> {
    vec![
        Shipped {
            key: "welcome-1-2-3",
            description: "Welcome 1-2-3 touch (seed 004): the first mail signed by the CEO at once, the next two by the owner rep after 3 and 7 days.",
            lists: vec![],
            mails: vec![
                mail(
                    "welcome-1-ceo",
                    "ご登録ありがとうございます",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>代表の{{ sender.name }}です。ご登録ありがとうございます。</p>",
                ),
                mail(
                    "welcome-2-owner",
                    "お役立ち資料のご案内",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>担当の{{ owner.name | default(\"営業担当\") }}です。導入事例をお送りします。</p>",
                ),
                mail(
                    "welcome-3-owner",
                    "個別相談のご案内",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>{{ owner.name | default(\"営業担当\") }}です。30分の個別相談はいかがでしょうか。</p>",
                ),
            ],
            programs: vec![json!({
                "name": "Welcome 1-2-3",
                "description": "seed 004: 1-2-3 touch, CEO first, then the owner",
                "triggers": [{"type": "contact_created"}],
                "steps": [
                    {"id": "ceo", "type": "send_email", "template": "welcome-1-ceo", "author": "identity"},
                    {"id": "wait3", "type": "wait", "duration": "3d"},
                    {"id": "owner1", "type": "send_email", "template": "welcome-2-owner", "author": "owner"},
                    {"id": "wait4", "type": "wait", "duration": "4d"},
                    {"id": "owner2", "type": "send_email", "template": "welcome-3-owner", "author": "owner"}
                ],
                "goals": [{"id": "became_sql", "condition": {"attribute": "lifecycle_stage", "op": "in", "value": ["sql", "opportunity", "customer"]}}],
                "reentry": "never",
                "pressure": QUIET()
            })],
        },
        Shipped {
            key: "seminar-attendee",
            description: "Seminar attendee step mail (seed 003): thanks at once, attendee-only discount after 3 days, \"discount ends this week\" after 1 week.",
            lists: vec![],
            mails: vec![
                mail(
                    "seminar-thanks",
                    "セミナーにご参加いただきありがとうございました",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>本日はセミナーにご参加いただき、ありがとうございました。</p>",
                ),
                mail(
                    "seminar-discount",
                    "【参加者限定】特別割引のご案内",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>セミナー参加者限定の割引をご用意しました。</p>",
                ),
                mail(
                    "seminar-discount-ending",
                    "割引は今週で終了します",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>参加者限定割引は今週末で終了します。</p>",
                ),
            ],
            programs: vec![json!({
                "name": "Seminar attendee follow-up",
                "description": "seed 003: thank you → attendee discount (3 days) → discount ends this week (1 week)",
                "triggers": [{"type": "event", "event": "seminar.attended"}],
                "steps": [
                    {"id": "thanks", "type": "send_email", "template": "seminar-thanks"},
                    {"id": "wait3", "type": "wait", "duration": "3d"},
                    {"id": "discount", "type": "send_email", "template": "seminar-discount"},
                    {"id": "wait4", "type": "wait", "duration": "4d"},
                    {"id": "ending", "type": "send_email", "template": "seminar-discount-ending"}
                ],
                "goals": [{"id": "purchased", "event": "order.completed"}],
                "reentry": {"policy": "after", "after": "30d"}
            })],
        },
        Shipped {
            key: "renewal-90-60-30",
            description: "Contract renewal (seed 004): mails 90, 60 and 30 days before custom.renewal_date, and a call task for the owner at 30 days.",
            lists: vec![],
            mails: vec![
                mail(
                    "renewal-90",
                    "ご契約更新のご案内（90日前）",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>ご契約の更新日が近づいてまいりました。</p>",
                ),
                mail(
                    "renewal-60",
                    "ご契約更新のご案内（60日前）",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>更新プランのご相談を承ります。</p>",
                ),
                mail(
                    "renewal-30",
                    "ご契約更新のご案内（30日前）",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>更新日まで30日となりました。</p>",
                ),
            ],
            programs: vec![json!({
                "name": "Contract renewal 90/60/30",
                "description": "seed 004: renewal −90/−60/−30 days",
                "triggers": [{"type": "date", "field": "custom.renewal_date", "offset": "-90d"}],
                "steps": [
                    {"id": "m90", "type": "send_email", "template": "renewal-90"},
                    {"id": "until60", "type": "wait_until", "field": "custom.renewal_date", "offset": "-60d"},
                    {"id": "m60", "type": "send_email", "template": "renewal-60", "author": "owner"},
                    {"id": "until30", "type": "wait_until", "field": "custom.renewal_date", "offset": "-30d"},
                    {"id": "m30", "type": "send_email", "template": "renewal-30", "author": "owner"},
                    {"id": "call", "type": "create_task", "title": "Renewal call: {name}", "due_in": "3d"}
                ],
                "exit": {"sales_cycle": false},
                "reentry": {"policy": "after", "after": "180d"}
            })],
        },
        Shipped {
            key: "re-engagement-60d",
            description: "Re-engagement after 60 days of silence (seed 004): general and personal mail alternating every 2 weeks for 8 weeks; any engagement is the goal; unanswered contacts become dormant.",
            lists: vec![],
            mails: vec![
                mail(
                    "reengage-general-1",
                    "最近のアップデートのご紹介",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>新機能をご紹介します。</p>",
                ),
                mail(
                    "reengage-personal-1",
                    "その後いかがでしょうか",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>{{ owner.name | default(\"営業担当\") }}です。その後いかがでしょうか。</p>",
                ),
                mail(
                    "reengage-general-2",
                    "導入事例のご紹介",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>同業他社の事例です。</p>",
                ),
                mail(
                    "reengage-personal-2",
                    "最後のご連絡です",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>{{ owner.name | default(\"営業担当\") }}です。ご不要でしたらこのままで結構です。</p>",
                ),
            ],
            programs: vec![json!({
                "name": "Re-engagement after 60 days",
                "description": "seed 004: alternating general / personal mail every 2 weeks; then dormant",
                "triggers": [{"type": "inactivity", "after": "60d"}],
                "audience": {"not": {"attribute": "lifecycle_stage", "op": "in", "value": ["customer", "disqualified"]}},
                "steps": [
                    {"id": "general1", "type": "send_email", "template": "reengage-general-1"},
                    {"id": "w1", "type": "wait", "duration": "14d"},
                    {"id": "personal1", "type": "send_email", "template": "reengage-personal-1", "author": "owner"},
                    {"id": "w2", "type": "wait", "duration": "14d"},
                    {"id": "general2", "type": "send_email", "template": "reengage-general-2"},
                    {"id": "w3", "type": "wait", "duration": "14d"},
                    {"id": "personal2", "type": "send_email", "template": "reengage-personal-2", "author": "owner"},
                    {"id": "w4", "type": "wait", "duration": "14d"}
                ],
                "goals": [{"id": "engaged", "event": ["page.viewed", "email.clicked", "form.submitted"]}],
                "on_end": {"action": "complete", "set_stage": "dormant"},
                "reentry": {"policy": "after", "after": "180d"},
                "pressure": QUIET()
            })],
        },
        Shipped {
            key: "low-usage-customer",
            description: "Low-usage customer: tips at once; if the product is not used within 7 days, a call task for the owner.",
            lists: vec![],
            mails: vec![mail(
                "low-usage-tips",
                "活用のヒントをお届けします",
                "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>よく使われる機能を3つご紹介します。</p>",
            )],
            programs: vec![json!({
                "name": "Low-usage customer",
                "description": "tips, then a call if usage does not pick up",
                "triggers": [{"type": "event", "event": "usage.low"}],
                "audience": {"attribute": "lifecycle_stage", "op": "in", "value": ["customer", "evangelist"]},
                "steps": [
                    {"id": "tips", "type": "send_email", "template": "low-usage-tips"},
                    {"id": "used", "type": "wait_for_event", "event": "product.used", "timeout": "7d", "on_timeout": "call", "next": "end"},
                    {"id": "call", "type": "create_task", "title": "Low usage: call {name}", "due_in": "2d"}
                ],
                "exit": {"sales_cycle": false},
                "reentry": {"policy": "after", "after": "30d"}
            })],
        },
        Shipped {
            key: "lost-deal",
            description: "Lost-deal re-engagement: 90 days after a lost deal, what is new; a month later a case study; a click creates a task for the owner.",
            lists: vec![],
            mails: vec![
                mail(
                    "lost-deal-news",
                    "その後の製品アップデート",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>前回ご検討いただいた後の改善点をご紹介します。</p>",
                ),
                mail(
                    "lost-deal-case",
                    "導入事例：同規模企業の成果",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>事例はこちらです。</p>",
                ),
            ],
            programs: vec![json!({
                "name": "Lost-deal re-engagement",
                "description": "90 days after a lost deal",
                "triggers": [{"type": "event", "event": "deal.lost"}],
                "steps": [
                    {"id": "w90", "type": "wait", "duration": "90d"},
                    {"id": "news", "type": "send_email", "template": "lost-deal-news"},
                    {"id": "w30", "type": "wait", "duration": "30d"},
                    {"id": "case", "type": "send_email", "template": "lost-deal-case"},
                    {"id": "w7", "type": "wait", "duration": "7d"},
                    {"id": "clicked", "type": "branch", "if": {"step": "case", "email": "clicked"}, "then": "task", "else": "end"},
                    {"id": "task", "type": "create_task", "title": "Lost deal re-engaged: {name}"}
                ],
                "reentry": "always"
            })],
        },
        Shipped {
            key: "tiered-newsletter",
            description: "Tiered newsletter (seed 002): the weekly newsletter and a monthly seminar invitation to the cold tier (list \"Cold tier\").",
            lists: vec!["Cold tier"],
            mails: vec![
                mail(
                    "newsletter-weekly",
                    "週刊ニュースレター",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>今週のトピックです。</p>",
                ),
                mail(
                    "seminar-invite-monthly",
                    "今月のセミナーのご案内",
                    "<p>{{ contact.last_name | default(\"ご担当者\") }}様</p><p>今月のセミナーにご招待します。</p>",
                ),
            ],
            programs: vec![
                json!({
                    "name": "Cold tier weekly newsletter",
                    "description": "seed 002: weekly newsletter to the cold tier",
                    "triggers": [{"type": "recurring", "start": "2026-01-05T10:00:00+09:00", "every": "7d", "list": "Cold tier"}],
                    "steps": [{"id": "newsletter", "type": "send_email", "template": "newsletter-weekly", "subscription_type": "newsletter"}],
                    "reentry": "always",
                    "pressure": {"send_window": {"start": "09:00", "end": "18:00", "days": ["mon", "tue", "wed", "thu", "fri"]}, "time_zone": "Asia/Tokyo"}
                }),
                json!({
                    "name": "Cold tier monthly seminar invitation",
                    "description": "seed 002: monthly seminar invitation to the cold tier",
                    "triggers": [{"type": "recurring", "start": "2026-01-07T10:00:00+09:00", "every": "28d", "list": "Cold tier"}],
                    "steps": [{"id": "invite", "type": "send_email", "template": "seminar-invite-monthly"}],
                    "reentry": "always",
                    "pressure": {"send_window": {"start": "09:00", "end": "18:00", "days": ["mon", "tue", "wed", "thu", "fri"]}, "time_zone": "Asia/Tokyo"}
                }),
            ],
        },
    ]
}

/// A shipped template by key.
pub fn get(key: &str) -> Option<Shipped> {
    all().into_iter().find(|s| s.key == key)
}

/// Installs a shipped template: missing lists and e-mail templates, then its programs (left
/// alone when a program of that name exists) with `status`. Returns the programs' ids.
pub async fn install(
    store: &kizuna_store::Store,
    key: &str,
    status: &str,
    now: i64,
) -> Result<Vec<uuid::Uuid>, crate::EngineError> {
    let s = get(key).ok_or(crate::EngineError::NotFound("program template"))?;
    let at = kizuna_core::time::from_micros(now);
    for l in &s.lists {
        if store.list_by_name(l).await?.is_none() {
            store.create_list(l, None, at).await?;
        }
    }
    let existing = store.templates().await?;
    for m in &s.mails {
        if !existing.iter().any(|t| t.name == m.name) {
            store
                .create_template(
                    kizuna_store::email::templates::TemplateInput {
                        name: m.name.into(),
                        kind: "marketing".into(),
                        subject: m.subject.into(),
                        mjml: None,
                        html: Some(m.html.into()),
                        text: None,
                    },
                    at,
                )
                .await?;
        }
    }
    let mut ids = Vec::new();
    for p in &s.programs {
        let name = p["name"].as_str().unwrap_or_default();
        if let Some(row) = store.program_by_name(name).await? {
            ids.push(row.id);
            continue;
        }
        ids.push(super::create(store, p, status, now).await?.id);
    }
    Ok(ids)
}
