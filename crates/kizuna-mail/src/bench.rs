//! Per-message cost of the CPU side of sending: personalization (+ MJML), footer, tracking,
//! MIME and DKIM. `kizuna bench send` uses the samples here to render N personalized messages
//! and reports these figures next to its SMTP throughput.

use crate::MailError;
use crate::compose::{
    Author, BuiltMessage, Composer, ComposerConfig, MessageSpec, ReturnPath, SenderIdentity,
};
use crate::dkim::DkimSigner;
use crate::links::{LinkSigner, TrackingOptions};
use crate::template::{CompileOptions, MjmlStrategy, Template, TemplateKind};
use chrono::{DateTime, TimeZone, Utc};
use kizuna_core::company::Company;
use kizuna_core::contact::Contact;
use std::time::Instant;
use uuid::Uuid;

/// A realistic Japanese marketing newsletter in MJML: personalization with fallbacks, an
/// industry-specific block, a button and several links.
pub fn sample_template() -> Template {
    Template {
        subject: "【{{ company.name | default(\"貴社\") }}】{{ contact.last_name | default(\"ご担当者\") }}様、製造業DXセミナーのご案内".into(),
        mjml: Some(SAMPLE_MJML.into()),
        html: None,
        text: None,
        kind: TemplateKind::Marketing,
    }
}

const SAMPLE_MJML: &str = r##"<mjml>
  <mj-head>
    <mj-title>セミナーのご案内</mj-title>
    <mj-preview>{{ contact.last_name | default("ご担当者") }}様へ、11月のセミナーのご案内です</mj-preview>
    <mj-attributes><mj-all font-family="Hiragino Sans, Meiryo, sans-serif" /></mj-attributes>
  </mj-head>
  <mj-body background-color="#f4f4f4">
    <mj-section background-color="#ffffff">
      <mj-column>
        <mj-image width="160px" src="https://kizuna.example.jp/logo.png" alt="Kizuna" />
        <mj-text font-size="15px" line-height="1.8">
          {{ company.name }}<br>
          {{ contact.department }} {{ contact.last_name | default("ご担当者") }}様<br><br>
          いつもお世話になっております。{{ sender.organization }}の{{ owner.name | default(sender.name) }}です。
        </mj-text>
        <mj-text font-size="15px" line-height="1.8">
          {% if company.industry == "製造業" %}
          製造業の皆様に向けて、工場のデータ活用と生産管理のDXを事例でご紹介するセミナーを開催します。
          {% elif company.industry == "小売業" %}
          小売業の皆様に向けて、店舗とECのデータをつなぐ顧客体験のセミナーを開催します。
          {% else %}
          業務のデジタル化を進める皆様に向けて、実践的なセミナーを開催します。
          {% endif %}
        </mj-text>
        <mj-button background-color="#0b5fff" href="https://kizuna.example.jp/seminar/2026-11?utm_source=newsletter&amp;utm_medium=email">セミナーに申し込む</mj-button>
        <mj-text font-size="13px">
          <a href="https://kizuna.example.jp/cases">導入事例</a> ／
          <a href="https://kizuna.example.jp/whitepaper">資料ダウンロード</a> ／
          <a href="{{ view_in_browser_url }}">ブラウザで表示</a>
        </mj-text>
        <mj-divider border-color="#dddddd" />
        <mj-text font-size="12px" color="#666666">
          {{ owner.name | default(sender.name) }}<br>{{ owner.email | default(sender.email) }}
        </mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>"##;

/// `n` sample contacts with companies (every third one in 製造業; some without a family name).
pub fn sample_contacts(n: usize) -> Vec<(Contact, Company)> {
    let t = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let last_names = ["山田", "佐藤", "鈴木", "高橋", "田中", "", "伊藤", "渡辺"];
    let industries = ["製造業", "小売業", "情報通信業"];
    (0..n)
        .map(|i| {
            let company = Company {
                id: Uuid::now_v7(),
                name: format!("株式会社サンプル{i}"),
                name_key: format!("サンプル{i}"),
                domain: Some(format!("sample{i}.example.jp")),
                industry: Some(industries[i % industries.len()].to_string()),
                employee_count: Some(100),
                annual_revenue: None,
                website: None,
                phone: None,
                created_at: t,
                updated_at: t,
            };
            let last = last_names[i % last_names.len()];
            let contact = Contact {
                id: Uuid::now_v7(),
                email: Some(format!("user{i}@sample{i}.example.jp")),
                first_name: Some("太郎".into()),
                last_name: (!last.is_empty()).then(|| last.to_string()),
                phone: None,
                job_title: Some("部長".into()),
                department: Some("生産管理部".into()),
                company_id: Some(company.id),
                lifecycle_stage: Default::default(),
                temperature: Default::default(),
                owner_id: None,
                source: Default::default(),
                address: Default::default(),
                custom: Default::default(),
                created_at: t,
                updated_at: t,
            };
            (contact, company)
        })
        .collect()
}

/// The sample sender identity.
pub fn sample_sender() -> SenderIdentity {
    SenderIdentity {
        name: "株式会社キズナ セミナー事務局".into(),
        email: "seminar@kizuna.example.jp".into(),
        organization: "株式会社キズナ".into(),
        postal_address: "〒100-0001 東京都千代田区千代田1-1".into(),
        reply_to: None,
    }
}

/// A composer for the samples, signing with `dkim`.
pub fn sample_composer(dkim: Vec<DkimSigner>) -> Result<Composer, MailError> {
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
        LinkSigner::new(
            b"bench-secret-bench-secret-bench-secret",
            "https://t.kizuna.example.jp",
        )?
        .with_unsubscribe_mailbox("kizuna.example.jp")?,
        dkim,
    )
}

/// Per-message costs, in microseconds on one core.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Messages rendered per measurement.
    pub messages: usize,
    /// The MJML strategy the sample template compiled to.
    pub mjml_strategy: MjmlStrategy,
    /// Personalization + MJML (as compiled) + footer + tracking + MIME, without DKIM.
    pub render_us: f64,
    /// The same with MJML parsed and rendered per message, for comparison.
    pub render_mjml_per_message_us: f64,
    /// One `rsa-sha256` signature (body hash included), if an RSA key was given.
    pub dkim_rsa_us: Option<f64>,
    /// One `ed25519-sha256` signature.
    pub dkim_ed25519_us: f64,
    /// Average size of a message, bytes.
    pub message_bytes: usize,
}

impl BenchReport {
    /// Messages per second per core with RSA signing (or Ed25519 when no RSA key was given).
    pub fn messages_per_second_per_core(&self) -> f64 {
        1e6 / (self.render_us + self.dkim_rsa_us.unwrap_or(self.dkim_ed25519_us))
    }
}

fn build_all(
    composer: &Composer,
    template: &crate::template::CompiledTemplate,
    people: &[(Contact, Company)],
    sender: &SenderIdentity,
    date: DateTime<Utc>,
) -> Result<Vec<BuiltMessage>, MailError> {
    people
        .iter()
        .map(|(c, co)| {
            composer.build(
                template,
                &MessageSpec {
                    message_id: Uuid::now_v7(),
                    contact: c,
                    company: Some(co),
                    owner: None,
                    sender,
                    author: Author::Identity,
                    date,
                    campaign: Some("bench"),
                    tracking: TrackingOptions::default(),
                },
            )
        })
        .collect()
}

fn per_message_us(start: Instant, n: usize) -> f64 {
    start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64
}

/// Renders `n` personalized sample messages both ways and signs them with each algorithm;
/// returns the per-message costs. Give an RSA key to measure RSA (ring cannot generate one).
pub fn render_and_sign_per_second(
    n: usize,
    rsa: Option<&DkimSigner>,
) -> Result<BenchReport, MailError> {
    let n = n.max(1);
    let people = sample_contacts(n);
    let sender = sample_sender();
    let date = Utc::now();
    let composer = sample_composer(Vec::new())?;
    let template = sample_template().compile()?;
    let per_message = sample_template().compile_with(&CompileOptions {
        precompile_mjml: false,
        ..CompileOptions::default()
    })?;

    // Warm up, then measure.
    build_all(&composer, &template, &people[..n.min(10)], &sender, date)?;
    let t = Instant::now();
    let built = build_all(&composer, &template, &people, &sender, date)?;
    let render_us = per_message_us(t, n);
    let t = Instant::now();
    build_all(&composer, &per_message, &people, &sender, date)?;
    let render_mjml_per_message_us = per_message_us(t, n);

    let sign = |signer: &DkimSigner| -> Result<f64, MailError> {
        let t = Instant::now();
        for m in &built {
            signer.sign(&m.bytes, date)?;
        }
        Ok(per_message_us(t, built.len()))
    };
    let dkim_rsa_us = rsa.map(sign).transpose()?;
    let (ed, _) = DkimSigner::generate_ed25519("kizuna.example.jp", "bench")?;
    let dkim_ed25519_us = sign(&ed)?;
    Ok(BenchReport {
        messages: n,
        mjml_strategy: template.mjml_strategy().unwrap_or(MjmlStrategy::PerMessage),
        render_us,
        render_mjml_per_message_us,
        dkim_rsa_us,
        dkim_ed25519_us,
        message_bytes: built.iter().map(|m| m.bytes.len()).sum::<usize>() / built.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runs_and_the_sample_precompiles() {
        let r = render_and_sign_per_second(5, None).unwrap();
        assert_eq!(r.messages, 5);
        assert_eq!(r.mjml_strategy, MjmlStrategy::Precompiled);
        assert!(r.render_us > 0.0 && r.dkim_ed25519_us > 0.0);
        assert!(r.dkim_rsa_us.is_none());
        assert!(r.message_bytes > 1000);
        assert!(r.messages_per_second_per_core() > 0.0);
    }
}
