//! Nurture programs over real HTTP, on every backend, with a manual clock: the shipped seminar
//! template installed through the API, its three mails (thanks at once, discount after 3 days,
//! "ends this week" after 1 week) received by a real SMTP server (Debian's aiosmtpd, a
//! Maildir); validation errors naming the bad node; simulation; the report; pause/resume and
//! manual enrollment.

use chrono::{Duration, TimeZone, Utc};
use kizuna_core::clock::{Clock, ManualClock};
use kizuna_delivery::{EmailService, EmailSettings, Worker, WorkerConfig};
use kizuna_engine::program::{ProgramRunner, RunnerConfig};
use kizuna_mail::smtp::{SmtpConfig, SmtpSender};
use kizuna_store::events::NewEvent;
use kizuna_store::keys::Scope;
use kizuna_web::{AppState, WebConfig};
use mail_parser::MessageParser;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

mod support;

use support::smtp::start_aiosmtpd;
use support::stores;

fn subjects(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                let raw = std::fs::read(e.path()).unwrap();
                let m = MessageParser::default().parse(&raw).unwrap();
                out.push(m.subject().unwrap_or_default().to_string());
            }
        }
    }
    out
}

struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        m: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(m, format!("{}/api/v1{path}", self.base))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seminar_templates_three_mails_arrive_at_a_real_smtp_server() {
    let tmp = tempfile::tempdir().unwrap();
    for (b, store) in stores(tmp.path()).await {
        let maildir = tmp.path().join(format!("maildir-{b}"));
        let (_smtp, port) = start_aiosmtpd(&maildir);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 2, 1, 0, 0).unwrap(); // 10:00 in Tokyo
        let clock = ManualClock::new(t0);
        let shared: kizuna_core::clock::SharedClock = Arc::new(clock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let svc = EmailService::new(
            store.clone(),
            shared.clone(),
            EmailSettings::for_public_url(&base),
        )
        .await
        .unwrap();
        let worker = Worker::new(
            svc.clone(),
            SmtpSender::new(SmtpConfig::new("127.0.0.1", port)).unwrap(),
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
            shared.clone(),
            WebConfig {
                email: Some(svc),
                ..WebConfig::default()
            },
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(kizuna_web::serve(listener, state, async {
            let _ = rx.await;
        }));
        let api = Api {
            base,
            key,
            http: reqwest::Client::new(),
        };
        let runner = ProgramRunner::new(store.clone(), shared.clone(), RunnerConfig::default());
        runner.run_until_idle().await.unwrap();

        // Validation names the bad node.
        let (st, err) = api
            .post(
                "/programs",
                json!({"name": "Bad", "triggers": [{"type": "segment_entered", "segment": "Nope"}],
                       "steps": [{"id": "w", "type": "wait", "duration": "3 days"}]}),
            )
            .await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(err["error"]["field"], "triggers[0].segment", "{b}: {err}");
        assert!(
            err["error"]["details"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["field"] == "steps[0].duration"),
            "{b}: {err}"
        );

        // The shipped templates, and the seminar one installed active.
        let (st, list) = api.get("/programs/templates").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(list["data"].as_array().unwrap().len(), 7, "{b}");
        let (st, inst) = api
            .post(
                "/programs/templates/seminar-attendee/install",
                json!({"status": "active"}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{b}: {inst}");
        let pid = inst["data"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(inst["data"][0]["status"], "active");

        // Setup: sender, consent for program mail ("marketing"), the attendee.
        let (st, _) = api
            .post(
                "/senders",
                json!({"name": "株式会社キズナ セミナー事務局", "email": "seminar@kizuna.example.jp", "organization": "株式会社キズナ", "postal_address": "〒100-0001 東京都千代田区千代田1-1"}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        api.post(
            "/subscription-types",
            json!({"name": "marketing", "label": "ご案内メール"}),
        )
        .await;
        let (st, c) = api
            .post(
                "/contacts",
                json!({"email": "hanako@example.jp", "last_name": "佐藤", "first_name": "花子"}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{b}: {c}");
        let cid: uuid::Uuid = c["id"].as_str().unwrap().parse().unwrap();
        let (st, x) = api
            .post(
                "/consents",
                json!({"contact_id": cid, "subscription_type": "marketing", "status": "granted", "source": "form", "wording": "セミナー情報をメールで受け取る"}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{b}: {x}");

        // Simulation before go-live: three mails on days 0, 3 and 7, nothing sent.
        let (st, sim) = api
            .post(
                &format!("/programs/{pid}/simulate"),
                json!({"days": 14, "contacts": [cid]}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{b}: {sim}");
        let days: Vec<i64> = sim["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["day"].as_i64().unwrap())
            .collect();
        assert_eq!(days, vec![0, 3, 7], "{b}: {sim}");
        assert_eq!(sim["per_contact_max"]["emails"], 3);
        // Assumed response rates are checked field by field.
        for (assume, field) in [
            (json!({"opened": 1.5}), "assume.opened"),
            (json!({"replied": 0.1}), "assume.replied"),
            (json!({"clicked": "often"}), "assume.clicked"),
            (json!([0.3]), "assume"),
        ] {
            let (st, e) = api
                .post(
                    &format!("/programs/{pid}/simulate"),
                    json!({"days": 14, "contacts": [cid], "assume": assume}),
                )
                .await;
            assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{b}: {e}");
            assert_eq!(e["error"]["field"], field, "{b}: {e}");
        }
        let (st, sim) = api
            .post(
                &format!("/programs/{pid}/simulate"),
                json!({"days": 14, "contacts": [cid], "assume": {"opened": 0.3, "responded": 0.2}}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{b}: {sim}");
        assert!(
            sim["assumptions"][0]
                .as_str()
                .unwrap()
                .contains("30% of mails opened"),
            "{b}: {sim}"
        );

        // The attendee attended: thanks at once.
        store
            .append_events(
                vec![NewEvent::new(
                    cid,
                    "seminar.attended",
                    clock.now(),
                    "import",
                    json!({"seminar": "MA入門"}),
                )],
                clock.now(),
            )
            .await
            .unwrap();
        let step = |d: i64| {
            let clock = clock.clone();
            let runner = runner.clone();
            let worker = &worker;
            async move {
                if d > 0 {
                    clock.advance(Duration::days(d));
                }
                runner.run_until_idle().await.unwrap();
                worker.drain(100).await.unwrap();
            }
        };
        step(0).await;
        assert_eq!(
            subjects(&maildir),
            vec!["セミナーにご参加いただきありがとうございました"],
            "{b}"
        );
        step(2).await;
        assert_eq!(subjects(&maildir).len(), 1, "{b}: nothing on day 2");
        step(1).await;
        assert_eq!(subjects(&maildir).len(), 2, "{b}: the discount on day 3");
        step(3).await;
        assert_eq!(subjects(&maildir).len(), 2, "{b}");
        step(1).await;
        let mut got = subjects(&maildir);
        got.sort();
        let mut want = vec![
            "セミナーにご参加いただきありがとうございました".to_string(),
            "【参加者限定】特別割引のご案内".to_string(),
            "割引は今週で終了します".to_string(),
        ];
        want.sort();
        assert_eq!(got, want, "{b}");

        // The report.
        let (st, r) = api.get(&format!("/programs/{pid}/report")).await;
        assert_eq!(st, StatusCode::OK, "{b}: {r}");
        assert_eq!(
            (r["entered"].as_i64(), r["completed"].as_i64()),
            (Some(1), Some(1)),
            "{b}: {r}"
        );
        for s in r["steps"].as_array().unwrap() {
            if s["type"] == "send_email" {
                assert_eq!(s["email"]["sent"], 1, "{b}: {s}");
            }
        }

        // Pause refuses manual enrollment; resume accepts it; a second time is a 409.
        let (st, _) = api.post(&format!("/programs/{pid}/pause"), json!({})).await;
        assert_eq!(st, StatusCode::OK);
        let (st, _) = api
            .post(
                &format!("/programs/{pid}/enrollments"),
                json!({"contact_id": cid}),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{b}");
        api.post(&format!("/programs/{pid}/resume"), json!({}))
            .await;
        clock.advance(Duration::days(31));
        let (st, e) = api
            .post(
                &format!("/programs/{pid}/enrollments"),
                json!({"contact_id": cid}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{b}: {e}");
        let (st, _) = api
            .post(
                &format!("/programs/{pid}/enrollments"),
                json!({"contact_id": cid}),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{b}: already in");
        let (st, l) = api
            .get(&format!("/programs/{pid}/enrollments?status=active"))
            .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(l["data"].as_array().unwrap().len(), 1, "{b}");
        let _ = tx.send(());
    }
}
