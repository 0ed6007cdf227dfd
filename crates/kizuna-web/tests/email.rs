//! Email end to end, on every backend: a real SMTP server (Debian's aiosmtpd, storing a
//! Maildir) receives the mail; an independent verifier (dkimpy) checks the DKIM signature,
//! including List-Unsubscribe and List-Unsubscribe-Post; RFC 8058 one-click unsubscribe over
//! real HTTP; the next send skips the contact. Time is a manual clock.

use chrono::{TimeZone, Utc};
use kizuna_core::clock::ManualClock;
use kizuna_delivery::{EmailService, EmailSettings, Worker, WorkerConfig};
use kizuna_mail::dkim::DkimSigner;
use kizuna_mail::smtp::{SmtpConfig, SmtpSender};
use kizuna_store::Store;
use kizuna_store::keys::Scope;
use kizuna_web::{AppState, WebConfig};
use mail_parser::MessageParser;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

mod support;

use support::smtp::{PY, maildir_messages, start_aiosmtpd};
use support::stores;

fn rsa_key(dir: &Path) -> PathBuf {
    let key = dir.join("dkim.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey");
    key
}

/// dkimpy's verdict on a message, with the DNS TXT record given.
fn dkimpy_verify(raw: &[u8], dns_record: &str, dir: &Path) -> String {
    let f = dir.join(format!("msg-{}.eml", uuid::Uuid::now_v7()));
    std::fs::write(&f, raw).unwrap();
    let script = format!(
        "import dkim,sys\nmsg=open(sys.argv[1],'rb').read()\nrec={dns_record:?}.encode()\nd=dkim.DKIM(msg)\nok=d.verify(dnsfunc=lambda name, timeout=5: rec)\nprint('PASS' if ok else 'FAIL', b','.join(d.include_headers).decode() if d.include_headers else '')\n"
    );
    let out = Command::new(PY)
        .arg("-c")
        .arg(script)
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Env {
    base: String,
    key: String,
    http: reqwest::Client,
    store: Store,
    worker: Worker,
    backend: &'static str,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn env(
    backend: &'static str,
    store: Store,
    smtp_port: u16,
    dkim: DkimSigner,
    clock: ManualClock,
) -> Env {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let mut settings = EmailSettings::for_public_url(&base);
    settings.message_id_domain = "kizuna.example.jp".into();
    settings.dkim = vec![dkim];
    settings.webhook_secret = Some("hook-secret".into());
    let clock: kizuna_core::clock::SharedClock = Arc::new(clock);
    let svc = EmailService::new(store.clone(), clock.clone(), settings)
        .await
        .unwrap();
    let mut cfg = SmtpConfig::new("127.0.0.1", smtp_port);
    cfg.max_connections = 2;
    let worker = Worker::new(
        svc.clone(),
        SmtpSender::new(cfg).unwrap(),
        None,
        WorkerConfig {
            node_id: "test".into(),
            ..WorkerConfig::default()
        },
    );
    let (_, key) = store
        .create_api_key("t", &[Scope::Admin], clock.now())
        .await
        .unwrap();
    let state = AppState::new(
        store.clone(),
        clock,
        WebConfig {
            email: Some(svc),
            ..WebConfig::default()
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kizuna_web::serve(listener, state, async {
        let _ = rx.await;
    }));
    Env {
        base,
        key,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        store,
        worker,
        backend,
        _shutdown: tx,
    }
}

impl Env {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.unwrap();
        let st = res.status();
        (st, res.json().await.unwrap_or(Value::Null))
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
}

const MJML: &str = r#"<mjml><mj-body><mj-section><mj-column>
<mj-text>{{ company.name | default("") }} {{ contact.last_name | default("ご担当者") }}様</mj-text>
<mj-text>{% if company.industry == "製造業" %}製造業向けセミナーのご案内{% else %}セミナーのご案内{% endif %}</mj-text>
<mj-button href="https://example.jp/seminar?id=42">申し込む</mj-button>
</mj-column></mj-section></mj-body></mjml>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_reaches_a_real_smtp_server_signed_and_one_click_unsubscribe_stops_the_next_send() {
    let tmp = tempfile::tempdir().unwrap();
    let key_file = rsa_key(tmp.path());
    let dkim = DkimSigner::from_pem_file("kizuna.example.jp", "test", &key_file).unwrap();
    let dns = dkim.dns_record();
    for (backend, store) in stores(tmp.path()).await {
        let maildir = tmp.path().join(format!("maildir-{backend}"));
        let (_smtp, port) = start_aiosmtpd(&maildir);
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap());
        let e = env(backend, store, port, dkim.clone(), clock.clone()).await;
        let b = e.backend;

        // Setup over the API.
        assert_eq!(
            e.post(
                "/subscription-types",
                json!({"name": "newsletter", "label": "メールマガジン"})
            )
            .await
            .0,
            StatusCode::CREATED
        );
        let (st, sender) = e.post("/senders", json!({"name": "株式会社キズナ セミナー事務局", "email": "seminar@kizuna.example.jp", "organization": "株式会社キズナ", "postal_address": "〒100-0001 東京都千代田区千代田1-1"})).await;
        assert_eq!(st, StatusCode::CREATED, "{b}: {sender}");
        // A template with an error is refused, naming the part and line.
        let (st, err) = e
            .post(
                "/templates",
                json!({"name": "bad", "subject": "x", "html": "<p>\n{{ contact.lst_name }}</p>"}),
            )
            .await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(err["error"]["field"], "html", "{b}: {err}");
        assert_eq!(err["error"]["details"]["line"], 2, "{b}: {err}");
        let (st, tpl) = e.post("/templates", json!({"name": "seminar", "subject": "{{ contact.last_name | default(\"ご担当者\") }}様へ セミナーのご案内", "mjml": MJML})).await;
        assert_eq!(st, StatusCode::CREATED, "{b}: {tpl}");
        let (_, company) = e
            .post(
                "/companies",
                json!({"name": "株式会社ヤマダ製作所", "industry": "製造業"}),
            )
            .await;
        let (st, contact) = e.post("/contacts", json!({"email": "taro@yamada.example.jp", "last_name": "山田", "first_name": "太郎", "company_id": company["id"]})).await;
        assert_eq!(st, StatusCode::CREATED, "{b}: {contact}");
        let cid = contact["id"].as_str().unwrap().to_string();
        // Preview as the contact: personalization, industry block and footer.
        let (st, p) = e
            .post(
                &format!("/templates/{}/preview", tpl["id"].as_str().unwrap()),
                json!({"contact_id": cid}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{b}: {p}");
        assert_eq!(p["subject"], "山田様へ セミナーのご案内");
        let html = p["html"].as_str().unwrap();
        assert!(
            html.contains("株式会社ヤマダ製作所 山田様") && html.contains("製造業向け"),
            "{b}"
        );
        assert!(html.contains("〒100-0001"), "{b}: footer");

        // No consent yet: a marketing send is skipped.
        let send = |key: &str| json!({"idempotency_key": key, "contact_id": cid, "template_id": tpl["id"], "sender_id": sender["id"], "subscription_type": "newsletter"});
        let (st, m0) = e.post("/emails", send("k0")).await;
        assert_eq!(st, StatusCode::CREATED, "{b}: {m0}");
        e.worker.tick().await.unwrap();
        let (_, m0) = e
            .get(&format!("/emails/{}", m0["id"].as_str().unwrap()))
            .await;
        assert_eq!(
            (m0["state"].as_str(), m0["skip_reason"].as_str()),
            (Some("skipped"), Some("no_consent")),
            "{b}"
        );

        // Consent with its wording, then the send.
        let (st, c) = e.post("/consents", json!({"contact_id": cid, "subscription_type": "newsletter", "status": "granted", "source": "form", "wording": "セミナー情報をメールで受け取る", "wording_version": "2026-10", "ip": "203.0.113.9", "user_agent": "Mozilla/5.0"})).await;
        assert_eq!(st, StatusCode::CREATED, "{b}: {c}");
        let (st, m1) = e.post("/emails", send("k1")).await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
        let (st, again) = e.post("/emails", send("k1")).await;
        assert_eq!(
            (st, &again["id"]),
            (StatusCode::OK, &m1["id"]),
            "{b}: duplicate enqueue is a no-op"
        );
        let r = e.worker.tick().await.unwrap();
        assert_eq!(r.sent, 1, "{b}: {r:?}");
        let got = maildir_messages(&maildir);
        assert_eq!(got.len(), 1, "{b}");
        let raw = &got[0];
        let verdict = dkimpy_verify(raw, &dns, tmp.path());
        assert!(verdict.starts_with("PASS"), "{b}: dkimpy: {verdict}");
        let signed = verdict.to_ascii_lowercase();
        assert!(
            signed.contains("list-unsubscribe") && signed.contains("list-unsubscribe-post"),
            "{b}: {verdict}"
        );
        let msg = MessageParser::default().parse(raw).unwrap();
        assert_eq!(msg.subject(), Some("山田様へ セミナーのご案内"));
        let lu = msg.header_raw("List-Unsubscribe").unwrap().to_string();
        assert_eq!(
            msg.header_raw("List-Unsubscribe-Post").unwrap().trim(),
            "List-Unsubscribe=One-Click"
        );
        let body = msg.body_html(0).unwrap().to_string();
        let text = msg.body_text(0).unwrap().to_string();
        assert!(body.contains("株式会社ヤマダ製作所 山田様"), "{b}");
        assert!(
            text.contains("株式会社キズナ") && text.contains("〒100-0001 東京都千代田区千代田1-1"),
            "{b}: footer in text"
        );
        assert!(text.contains("/u/"), "{b}: unsubscribe link in the footer");

        // Click: the signed redirect; a forged one is a 400 without a Location.
        let click = body
            .split("href=\"")
            .filter_map(|s| s.split('"').next())
            .find(|u| u.contains("/c/"))
            .unwrap()
            .replace("&amp;", "&");
        clock.advance(chrono::Duration::minutes(5));
        let res = e
            .http
            .get(&click)
            .header("user-agent", "Mozilla/5.0 (Macintosh) AppleWebKit")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FOUND, "{b}");
        assert_eq!(
            res.headers()["location"],
            "https://example.jp/seminar?id=42"
        );
        let mut forged = click.clone();
        forged.pop();
        forged.push(if click.ends_with('A') { 'B' } else { 'A' });
        let res = e.http.get(&forged).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{b}");
        assert!(res.headers().get("location").is_none());

        // Unsubscribe: GET only shows a page, POST (RFC 8058) unsubscribes, no cookie, no redirect.
        let url = lu
            .split('<')
            .nth(1)
            .unwrap()
            .split('>')
            .next()
            .unwrap()
            .to_string();
        let res = e.http.get(&url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let (_, states) = e.get(&format!("/contacts/{cid}/consents")).await;
        assert_eq!(
            states["current"][0]["status"], "granted",
            "{b}: GET changes nothing"
        );
        let res = e
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{b}");
        assert!(
            res.headers().get("set-cookie").is_none() && res.headers().get("location").is_none()
        );
        let (_, states) = e.get(&format!("/contacts/{cid}/consents")).await;
        assert_eq!(states["current"][0]["status"], "withdrawn", "{b}");
        assert_eq!(
            states["ledger"].as_array().unwrap().len(),
            2,
            "{b}: the ledger keeps both"
        );

        // The next send skips the contact; the server receives nothing new.
        let (_, m2) = e.post("/emails", send("k2")).await;
        e.worker.tick().await.unwrap();
        let (_, m2) = e
            .get(&format!("/emails/{}", m2["id"].as_str().unwrap()))
            .await;
        assert_eq!(
            (m2["state"].as_str(), m2["skip_reason"].as_str()),
            (Some("skipped"), Some("unsubscribed")),
            "{b}"
        );
        assert_eq!(maildir_messages(&maildir).len(), 1, "{b}");

        // The provider confirms delivery of the sent message; a retried webhook counts once.
        let delivered = json!([{"email": "taro@yamada.example.jp", "event": "delivered", "response": "250 2.0.0 OK", "timestamp": 1790000000, "kizuna_message": m1["id"]}]);
        for _ in 0..2 {
            let res = e
                .http
                .post(format!(
                    "{}/email/feedback/sendgrid?key=hook-secret",
                    e.base
                ))
                .json(&delivered)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{b}");
        }

        // Everything is on the timeline for the engine.
        let (_, tl) = e.get(&format!("/contacts/{cid}/timeline?limit=100")).await;
        let delivered_events = tl["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "email.delivered")
            .count();
        assert_eq!(delivered_events, 1, "{b}: {tl}");
        let types: Vec<&str> = tl["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        for t in [
            "email.sent",
            "email.clicked",
            "email.unsubscribed",
            "consent.granted",
            "consent.withdrawn",
        ] {
            assert!(types.contains(&t), "{b}: {t} missing from {types:?}");
        }
        // Metrics per template.
        let (_, mt) = e
            .get(&format!(
                "/templates/{}/metrics",
                tpl["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(
            (
                mt["sent"].as_i64(),
                mt["unique_clicks"].as_i64(),
                mt["unsubscribes"].as_i64(),
                mt["skipped"].as_i64()
            ),
            (Some(1), Some(1), Some(1), Some(2)),
            "{b}: {mt}"
        );

        // A hard bounce from a SendGrid webhook suppresses the address.
        let hook = json!([{"email": "taro@yamada.example.jp", "event": "bounce", "type": "bounce", "status": "5.1.1", "reason": "550 5.1.1 user unknown", "timestamp": 1790000000}]);
        let res = e
            .http
            .post(format!("{}/email/feedback/sendgrid?key=wrong", e.base))
            .json(&hook)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{b}");
        let res = e
            .http
            .post(format!(
                "{}/email/feedback/sendgrid?key=hook-secret",
                e.base
            ))
            .json(&hook)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{b}");
        let (_, sup) = e.get("/suppressions?email=taro@yamada.example.jp").await;
        assert_eq!(sup["reason"], "hard_bounce", "{b}: {sup}");

        // Personal-data export.
        let (st, x) = e.get(&format!("/contacts/{cid}/export")).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(x["consents"]["ledger"].as_array().unwrap().len(), 2, "{b}");
        assert_eq!(x["emails"].as_array().unwrap().len(), 3, "{b}");
        let _ = &e.store;
    }
}
