//! The engine's REST API over real HTTP on loopback, with the engine running beside it and a
//! manual clock: segments (create, invalid with path, preview, members), scoring models
//! (what-if, create), a contact's score explanation, stages, segments and sales status, the
//! handoff policy, accept/reject, tasks. SQLite and PostgreSQL.

use chrono::{TimeZone, Utc};
use kizuna_core::clock::{Clock, ManualClock};
use kizuna_engine::{Engine, EngineConfig};
use kizuna_store::events::NewEvent;
use kizuna_store::keys::Scope;
use kizuna_store::users::UserInput;
use kizuna_store::{Store, StoreConfig};
use kizuna_web::{AppState, WebConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

const SEED_001: &str = include_str!("../../../docs/examples/scoring-seed-001.json");

async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = vec![(
        Store::open(&StoreConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .await
        .unwrap(),
        Some(dir),
    )];
    if let Ok(url) = std::env::var("KIZUNA_TEST_DATABASE_URL") {
        out.push((
            Store::open(&StoreConfig {
                database_url: Some(url),
                pg_schema: Some(format!("t_{}", uuid::Uuid::now_v7().simple())),
                max_connections: 4,
                ..Default::default()
            })
            .await
            .unwrap(),
            None,
        ));
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
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
}

#[tokio::test]
async fn the_engine_api_end_to_end() {
    for (store, _dir) in stores().await {
        let t0 = Utc.with_ymd_and_hms(2026, 10, 1, 9, 0, 0).unwrap();
        let clock = ManualClock::new(t0);
        let (_, key) = store
            .create_api_key("test", &[Scope::Admin], t0)
            .await
            .unwrap();
        let email = kizuna_delivery::EmailService::new(
            store.clone(),
            Arc::new(clock.clone()),
            kizuna_delivery::EmailSettings::for_public_url("http://127.0.0.1"),
        )
        .await
        .unwrap();
        let config = WebConfig {
            email: Some(email),
            ..Default::default()
        };
        let state = AppState::new(store.clone(), Arc::new(clock.clone()), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api/v1", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(kizuna_web::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let engine = Engine::new(
            store.clone(),
            Arc::new(clock.clone()),
            EngineConfig::default(),
        );
        let api = Api {
            base,
            key,
            http: reqwest::Client::new(),
        };
        let backend = format!("{:?}", store.dialect());

        // Definitions: a bad one names the bad node; good ones are created.
        let (st, e) = api
            .post("/segments", json!({"name": "bad", "filter": {"all": [{"attribute": "job_title", "op": "eq", "value": "x"}, {"event": "page.viewed", "within": "fortnight"}]}}))
            .await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{backend}");
        assert_eq!(e["error"]["field"], "filter.all[1].within", "{backend}");
        let (st, e) = api
            .post(
                "/scoring-models",
                json!({"name": "m", "behaviour": [{"id": "x", "event": "a", "points": "ten"}]}),
            )
            .await;
        assert_eq!(
            (st, e["error"]["field"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("behaviour[0].points")
            ),
            "{backend}"
        );
        let model: Value = serde_json::from_str(SEED_001).unwrap();
        // What-if before anything is saved.
        let (st, wi) = api
            .post("/scoring-models/what-if", json!({"definition": model}))
            .await;
        assert_eq!(st, StatusCode::OK, "{backend}: {wi}");
        assert_eq!(wi["contacts"], 0);
        let (st, m) = api.post("/scoring-models", model.clone()).await;
        assert_eq!(st, StatusCode::CREATED, "{backend}: {m}");
        assert_eq!(
            (m["name"].as_str(), m["status"].as_str()),
            (Some("seed-001"), Some("building"))
        );
        let seg = json!({"name": "Grade A pricing", "description": "pricing views by grade A",
            "filter": {"all": [{"grade": "seed-001", "op": "eq", "value": "A"},
                               {"event": "page.viewed", "where": [{"property": "path", "op": "starts_with", "value": "/pricing"}]}]}});
        let (st, s) = api.post("/segments", seg).await;
        assert_eq!(st, StatusCode::CREATED, "{backend}: {s}");
        let seg_id = s["id"].as_str().unwrap().to_string();
        let (st, _) = api
            .post(
                "/segments",
                json!({"name": "Grade A pricing", "filter": {"list": "x"}}),
            )
            .await;
        assert_eq!(
            st,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{backend}: unknown list"
        );
        let (st, e) = api.post("/segments", json!({"name": "Grade A pricing", "filter": {"attribute": "email", "op": "exists"}})).await;
        assert_eq!(
            (st, e["error"]["field"].as_str()),
            (StatusCode::CONFLICT, Some("name")),
            "{backend}"
        );
        // Policy, a rep, contacts and behaviour.
        store
            .create_user(
                UserInput {
                    email: "rep@kizuna.example".into(),
                    name: "Rep".into(),
                    role: Some("sales".into()),
                    territory: None,
                },
                t0,
            )
            .await
            .unwrap();
        let (st, _) = api.put("/handoff-policy", json!({"task": {"title": "Call {name}", "due_in": "2d"}, "webhook": {"url": "http://127.0.0.1:9/x", "secret": "hidden"}})).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{backend}");
        let (_, p) = api.get("/handoff-policy").await;
        assert_eq!(
            p["webhook"]["secret"], "********",
            "{backend}: the secret is not shown"
        );
        let (st, e) = api.put("/handoff-policy", json!({"rules": [{"when": {"attribute": "x", "op": "exists"}, "owner": "rep@kizuna.example"}]})).await;
        assert_eq!(
            (st, e["error"]["field"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("rules[0].when.attribute")
            ),
            "{backend}"
        );
        let (_, co) = api
            .post(
                "/companies",
                json!({"name": "山田製作所", "industry": "製造業", "employee_count": 120}),
            )
            .await;
        let (st, c) = api
            .post("/contacts", json!({"email": "api@yamada.example", "last_name": "山田", "job_title": "部長", "company_id": co["id"]}))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{backend}: {c}");
        let cid: uuid::Uuid = c["id"].as_str().unwrap().parse().unwrap();
        let now = clock.now();
        store
            .append_events(
                vec![
                    NewEvent::new(cid, "page.viewed", now, "sdk", json!({"path": "/pricing"})),
                    NewEvent::new(
                        cid,
                        "form.submitted",
                        now,
                        "sdk",
                        json!({"form": "contact"}),
                    ),
                ],
                now,
            )
            .await
            .unwrap();
        // Preview sees the behaviour before the engine has run.
        let (st, pv) = api
            .post("/segments/preview", json!({"filter": {"event": "form.submitted", "where": [{"property": "form", "op": "eq", "value": "contact"}]}, "sample": 5}))
            .await;
        assert_eq!(
            (st, pv["count"].as_u64()),
            (StatusCode::OK, Some(1)),
            "{backend}: {pv}"
        );
        assert_eq!(pv["sample"][0]["email"], "api@yamada.example");
        engine.run_until_idle().await.unwrap();
        let (_, s) = api.get(&format!("/segments/{seg_id}")).await;
        assert_eq!(
            (s["status"].as_str(), s["member_count"].as_i64()),
            (Some("active"), Some(1)),
            "{backend}: {s}"
        );
        let (_, mem) = api
            .get(&format!("/segments/{seg_id}/members?limit=10"))
            .await;
        assert_eq!(mem["data"][0]["email"], "api@yamada.example", "{backend}");
        assert!(mem["data"][0]["entered_at"].is_string());
        let (_, sc) = api.get(&format!("/contacts/{cid}/score")).await;
        assert_eq!(
            (
                sc["data"][0]["score"].as_f64(),
                sc["data"][0]["grade"].as_str()
            ),
            (Some(53.0), Some("A")),
            "{backend}: {sc}"
        );
        assert_eq!(sc["data"][0]["rules"][0]["rule"], "contact_form");
        let (_, segs) = api.get(&format!("/contacts/{cid}/segments")).await;
        assert_eq!(segs["data"][0]["name"], "Grade A pricing");
        // A broadcast can go to a segment: its audience is the segment's members.
        let (st, _) = api
            .post(
                "/subscription-types",
                json!({"name": "newsletter", "label": "メールマガジン"}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{backend}");
        let (st, sender) = api.post("/senders", json!({"name": "キズナ", "email": "news@kizuna.example.jp", "organization": "株式会社キズナ", "postal_address": "〒100-0001 東京都千代田区千代田1-1"})).await;
        assert_eq!(st, StatusCode::CREATED, "{backend}: {sender}");
        let (st, tpl) = api.post("/templates", json!({"name": "grade a", "subject": "ご案内", "html": "<p>{{ contact.last_name }}様</p>"})).await;
        assert_eq!(st, StatusCode::CREATED, "{backend}: {tpl}");
        let broadcast = |audience: Value| json!({"name": "grade A", "template_id": tpl["id"], "sender_id": sender["id"], "subscription_type": "newsletter", "audience": audience});
        let (st, bc) = api
            .post("/broadcasts", broadcast(json!({"segment_id": seg_id})))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{backend}: {bc}");
        let (_, bc) = api
            .get(&format!("/broadcasts/{}", bc["id"].as_str().unwrap()))
            .await;
        assert_eq!(bc["progress"]["audience"], 1, "{backend}: {bc}");
        assert_eq!(bc["audience"]["segment_id"].as_str(), Some(seg_id.as_str()));
        for (audience, field) in [
            (
                json!({"segment_id": uuid::Uuid::now_v7()}),
                "audience.segment_id",
            ),
            (
                json!({"segment_id": seg_id, "list_id": uuid::Uuid::now_v7()}),
                "audience",
            ),
            (json!({}), "audience"),
        ] {
            let (st, e) = api.post("/broadcasts", broadcast(audience)).await;
            assert_eq!(
                (st, e["error"]["field"].as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
                "{backend}: {e}"
            );
        }
        let (_, sales) = api.get(&format!("/contacts/{cid}/sales")).await;
        assert_eq!(
            (
                sales["active_sales_cycle"].as_bool(),
                sales["lifecycle_stage"].as_str()
            ),
            (Some(true), Some("mql")),
            "{backend}: {sales}"
        );
        let (_, tasks) = api.get("/tasks?status=open").await;
        assert_eq!(tasks["data"][0]["title"], "Call 山田", "{backend}: {tasks}");
        let task_id = tasks["data"][0]["id"].as_str().unwrap().to_string();
        // Accept with BANT over HTTP; a bad BANT names the field.
        let (st, e) = api
            .post(
                &format!("/contacts/{cid}/sales/accept"),
                json!({"bant": {"budget": "5M", "authority": "", "need": "x", "timeline": "Q3"}}),
            )
            .await;
        assert_eq!(
            (st, e["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("bant.authority")),
            "{backend}"
        );
        let (st, h) = api
            .post(&format!("/contacts/{cid}/sales/accept"), json!({"bant": {"budget": "5M", "authority": "部長", "need": "MA", "timeline": "Q3"}, "note": "demo booked"}))
            .await;
        assert_eq!(
            (st, h["status"].as_str()),
            (StatusCode::OK, Some("accepted")),
            "{backend}: {h}"
        );
        let (st, _) = api
            .post(
                &format!("/contacts/{cid}/sales/reject"),
                json!({"reason": "no_budget"}),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{backend}: nothing pending");
        let (_, stg) = api.get(&format!("/contacts/{cid}/stages")).await;
        let causes: Vec<&str> = stg["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["cause"].as_str().unwrap())
            .collect();
        assert_eq!(
            causes,
            vec!["created", "scoring:seed-001", "sales.accepted"],
            "{backend}: {stg}"
        );
        assert_eq!(stg["current"], "sql");
        let (st, t) = api
            .call(
                reqwest::Method::PATCH,
                &format!("/tasks/{task_id}"),
                Some(json!({"status": "done", "notes": "called"})),
            )
            .await;
        assert_eq!(
            (st, t["status"].as_str(), t["notes"].as_str()),
            (StatusCode::OK, Some("done"), Some("called")),
            "{backend}"
        );
        let (st, t) = api
            .post(
                "/tasks",
                json!({"contact_id": cid, "title": "Send proposal", "kind": "call"}),
            )
            .await;
        assert_eq!(
            (st, t["source"].as_str()),
            (StatusCode::CREATED, Some("api")),
            "{backend}"
        );
        let (_, hs) = api.get("/handoffs?status=accepted").await;
        assert_eq!(hs["data"].as_array().unwrap().len(), 1, "{backend}");
        // Deleting the model a segment reads is refused.
        let (st, _) = api
            .call(
                reqwest::Method::DELETE,
                &format!("/scoring-models/{}", m["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{backend}");
        let (st, _) = api
            .call(
                reqwest::Method::DELETE,
                &format!("/segments/{seg_id}"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{backend}");
        let (st, _) = api
            .get(&format!("/contacts/{}/score", uuid::Uuid::now_v7()))
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{backend}");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
