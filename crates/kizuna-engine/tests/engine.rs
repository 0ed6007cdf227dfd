//! The engine end to end, on every backend (SQLite always, PostgreSQL when
//! `KIZUNA_TEST_DATABASE_URL` is set), with a manual clock: seed scoring examples, windows
//! sliding out, decay crossing thresholds both ways, fit gating, round-robin, accept/reject,
//! bulk builds and preview, lists/segments/consent, merges, crash and replay, the log read in
//! commit order, and the signed owner webhook.

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use chrono::{DateTime, Duration, TimeZone, Utc};
use kizuna_core::clock::{Clock, ManualClock};
use kizuna_core::contact::{ContactInput, LifecycleStage, Temperature};
use kizuna_engine::build::preview;
use kizuna_engine::notify::{Notifier, verify};
use kizuna_engine::{Engine, EngineConfig, EngineError, apply, explain, sales};
use kizuna_store::definitions::DefinitionKind;
use kizuna_store::events::{NewEvent, TimelineFilter};
use kizuna_store::users::UserInput;
use kizuna_store::{Store, StoreConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

const SEED_001: &str = include_str!("../../../docs/examples/scoring-seed-001.json");
const SEED_003: &str = include_str!("../../../docs/examples/scoring-seed-003.json");

struct Env {
    store: Store,
    clock: ManualClock,
    engine: Engine,
    name: &'static str,
    _dir: Option<tempfile::TempDir>,
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 10, 1, 9, 0, 0).unwrap()
}

async fn open(name: &'static str) -> Option<(Store, Option<tempfile::TempDir>)> {
    match name {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let s = Store::open(&StoreConfig {
                data_dir: dir.path().to_path_buf(),
                ..Default::default()
            })
            .await
            .unwrap();
            Some((s, Some(dir)))
        }
        _ => {
            let url = std::env::var("KIZUNA_TEST_DATABASE_URL").ok()?;
            let s = Store::open(&StoreConfig {
                database_url: Some(url),
                pg_schema: Some(format!("t_{}", Uuid::now_v7().simple())),
                max_connections: 4,
                ..Default::default()
            })
            .await
            .expect("KIZUNA_TEST_DATABASE_URL is set but PostgreSQL is not reachable");
            Some((s, None))
        }
    }
}

async fn envs_with(config: EngineConfig) -> Vec<Env> {
    let mut out = Vec::new();
    for name in ["sqlite", "postgres"] {
        if let Some((store, dir)) = open(name).await {
            let clock = ManualClock::new(t0());
            let engine = Engine::new(store.clone(), Arc::new(clock.clone()), config.clone());
            out.push(Env {
                store,
                clock,
                engine,
                name,
                _dir: dir,
            });
        }
    }
    out
}

async fn envs() -> Vec<Env> {
    envs_with(EngineConfig::default()).await
}

impl Env {
    async fn company(&self, name: &str, industry: &str, employees: i64) -> Uuid {
        let input = serde_json::from_value(
            json!({"name": name, "industry": industry, "employee_count": employees}),
        )
        .unwrap();
        self.store
            .create_company(input, self.clock.now())
            .await
            .unwrap()
            .id
    }

    async fn contact(&self, email: &str, title: &str, company: Option<Uuid>) -> Uuid {
        let input: ContactInput = serde_json::from_value(json!({
            "email": email, "last_name": email.split('@').next().unwrap(), "job_title": title, "company_id": company,
            "source": {"channel": "organic_search", "referrer": "https://www.google.co.jp/"}
        }))
        .unwrap();
        self.store
            .create_contact(input, self.clock.now(), "api")
            .await
            .unwrap()
            .id
    }

    async fn rep(&self, email: &str, territory: Option<&str>) -> Uuid {
        self.store
            .create_user(
                UserInput {
                    email: email.into(),
                    name: email.split('@').next().unwrap().into(),
                    role: Some("sales".into()),
                    territory: territory.map(str::to_string),
                },
                self.clock.now(),
            )
            .await
            .unwrap()
            .id
    }

    async fn event(&self, contact: Uuid, kind: &str, props: Value) {
        let now = self.clock.now();
        self.store
            .append_events(vec![NewEvent::new(contact, kind, now, "sdk", props)], now)
            .await
            .unwrap();
    }

    async fn apply(&self, docs: Vec<Value>) {
        let docs = docs
            .into_iter()
            .enumerate()
            .map(|(i, d)| (format!("doc{i}"), d))
            .collect();
        apply::apply(&self.store, &self.clock, docs)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", self.name));
    }

    async fn run(&self) -> kizuna_engine::Progress {
        self.engine.run_until_idle().await.unwrap()
    }

    async fn stage(&self, c: Uuid) -> LifecycleStage {
        self.store.contact(c).await.unwrap().lifecycle_stage
    }

    async fn temperature(&self, c: Uuid) -> Temperature {
        self.store.contact(c).await.unwrap().temperature
    }

    async fn events_of(&self, c: Uuid, kind: &str) -> Vec<kizuna_store::events::Event> {
        let mut v = self
            .store
            .timeline(
                c,
                &TimelineFilter {
                    types: vec![kind.into()],
                },
                None,
                1000,
            )
            .await
            .unwrap()
            .data;
        v.reverse();
        v
    }

    async fn segment_id(&self, name: &str) -> Uuid {
        self.store
            .definition_by_name(DefinitionKind::Segment, name)
            .await
            .unwrap()
            .unwrap()
            .id
    }

    async fn members(&self, segment: &str) -> Vec<Uuid> {
        let id = self.segment_id(segment).await;
        let mut v = self.store.segment_member_ids(id).await.unwrap();
        v.sort();
        v
    }

    fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
}

fn model(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn pricing_segment(name: &str) -> Value {
    json!({"kind": "segment", "name": name, "filter": {
        "event": "page.viewed", "where": [{"property": "path", "op": "starts_with", "value": "/pricing"}],
        "count": {"gte": 3}, "within": "14d"}})
}

#[tokio::test]
async fn seed_001_scoring_produces_the_documented_mqls() {
    for env in envs().await {
        let n = env.name;
        let r1 = env.rep("rep1@kizuna.example", None).await;
        let r2 = env.rep("rep2@kizuna.example", None).await;
        env.apply(vec![model(SEED_001)]).await;
        env.run().await;
        let mfg = env.company("株式会社山田製作所", "製造業", 120).await;
        let shop = env.company("鈴木商店", "小売業", 20).await;
        let retail = env.company("高橋リテール", "小売業", 300).await;
        let sato = env
            .contact("sato@yamada.example", "製造部長", Some(mfg))
            .await;
        let suzuki = env
            .contact("suzuki@suzuki.example", "担当", Some(shop))
            .await;
        let takahashi = env
            .contact("takahashi@retail.example", "課長", Some(retail))
            .await;
        env.run().await;
        for p in ["/products/ma", "/products/crm"] {
            env.event(sato, "page.viewed", json!({"path": p})).await;
        }
        env.event(sato, "content.downloaded", json!({"asset": "whitepaper"}))
            .await;
        env.run().await;
        assert_eq!(env.stage(sato).await, LifecycleStage::Lead, "{n}: 43 < 50");
        assert_eq!(env.temperature(sato).await, Temperature::Warm, "{n}");
        env.event(sato, "webinar.attended", json!({"webinar": "MA入門"}))
            .await;
        for (c, kinds) in [
            (
                suzuki,
                vec![
                    ("form.submitted", json!({"form": "contact"})),
                    ("webinar.attended", json!({})),
                    ("content.downloaded", json!({})),
                ],
            ),
            (
                takahashi,
                vec![
                    ("form.submitted", json!({"form": "contact"})),
                    ("webinar.attended", json!({})),
                ],
            ),
        ] {
            for (k, p) in kinds {
                env.event(c, k, p).await;
            }
        }
        env.run().await;
        assert_eq!(
            env.stage(sato).await,
            LifecycleStage::Mql,
            "{n}: 58 ≥ 50, grade A"
        );
        assert_eq!(env.temperature(sato).await, Temperature::Hot, "{n}");
        assert_eq!(
            env.stage(suzuki).await,
            LifecycleStage::Lead,
            "{n}: 55 points but grade D — fit first"
        );
        assert_eq!(
            env.stage(takahashi).await,
            LifecycleStage::Mql,
            "{n}: 50 with grade C"
        );
        // Handoffs: round-robin in order, a follow-up task each, owner set.
        let hs = env.store.handoffs_of(sato).await.unwrap();
        assert_eq!(hs.len(), 1, "{n}");
        assert_eq!(
            (
                hs[0].owner_id,
                hs[0].assigned_by.as_str(),
                hs[0].status.as_str()
            ),
            (Some(r1), "round_robin", "pending"),
            "{n}"
        );
        assert_eq!(
            env.store.handoffs_of(takahashi).await.unwrap()[0].owner_id,
            Some(r2),
            "{n}"
        );
        assert!(
            env.store.handoffs_of(suzuki).await.unwrap().is_empty(),
            "{n}"
        );
        assert_eq!(
            env.store.contact(sato).await.unwrap().owner_id,
            Some(r1),
            "{n}"
        );
        let task = env.store.task(hs[0].task_id.unwrap()).await.unwrap();
        assert_eq!(
            (task.owner_id, task.status.as_str(), task.kind.as_str()),
            (Some(r1), "open", "follow_up"),
            "{n}"
        );
        assert_eq!(
            task.due_at,
            Some(env.clock.now() + Duration::days(1)),
            "{n}"
        );
        // Stage history with cause; the explanation lists rules, events, points.
        let hist = explain::stages(&env.store, &env.clock, sato).await.unwrap();
        let got: Vec<_> = hist.iter().map(|p| (p.stage, p.cause.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (LifecycleStage::Lead, "created"),
                (LifecycleStage::Mql, "scoring:seed-001")
            ],
            "{n}"
        );
        let ex = explain::explain_contact(&env.store, &env.clock, sato, Some("seed-001"))
            .await
            .unwrap();
        let e = &ex[0];
        assert_eq!(
            (e.score, e.fit, e.behaviour, e.grade.as_str()),
            (58.0, 23.0, 35.0, "A"),
            "{n}"
        );
        let rules: Vec<(&str, f64, usize)> = e
            .rules
            .iter()
            .map(|r| (r.rule.as_str(), r.points, r.events))
            .collect();
        assert_eq!(
            rules,
            vec![
                ("product_page", 10.0, 2),
                ("download", 10.0, 1),
                ("webinar", 15.0, 1)
            ],
            "{n}"
        );
        assert_eq!(e.rules[2].awards[0].event_type, "webinar.attended");
        // The stored score agrees with the explanation.
        let stored = env.store.scores_of(&[sato]).await.unwrap();
        assert_eq!(
            (stored[0].score, stored[0].grade.as_str()),
            (58.0, "A"),
            "{n}"
        );
        // Events tell the story.
        assert_eq!(env.events_of(sato, "handoff.created").await.len(), 1, "{n}");
        let crossed: Vec<String> = env
            .events_of(sato, "score.threshold_crossed")
            .await
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e.properties["threshold"].as_str().unwrap(),
                    e.properties["direction"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(crossed, vec!["warm:up", "hot:up", "mql:up"], "{n}");
    }
}

#[tokio::test]
async fn seed_003_threshold_60_is_judged_after_fit() {
    for env in envs().await {
        let n = env.name;
        env.rep("rep@kizuna.example", None).await;
        env.apply(vec![model(SEED_003)]).await;
        let big = env.company("大和化学", "製造業", 1500).await;
        let small = env.company("小さな会社", "製造業", 50).await;
        let yamada = env
            .contact("yamada@daiwa.example", "営業部長", Some(big))
            .await;
        let ito = env.contact("ito@small.example", "担当", Some(small)).await;
        env.run().await;
        for (k, p) in [
            ("seminar.attended", json!({})),
            ("form.submitted", json!({"form": "inquiry"})),
            ("form.submitted", json!({"form": "document_request"})),
            ("email.opened", json!({"machine": true})),
            ("email.opened", json!({})),
            ("seminar.attended", json!({})),
        ] {
            env.event(yamada, k, p).await;
        }
        for _ in 0..6 {
            env.event(ito, "form.submitted", json!({"form": "inquiry"}))
                .await;
        }
        env.run().await;
        assert_eq!(
            env.stage(yamada).await,
            LifecycleStage::Lead,
            "{n}: 20 fit + 30 = 50 < 60"
        );
        env.event(yamada, "form.submitted", json!({"form": "inquiry"}))
            .await;
        env.run().await;
        assert_eq!(env.stage(yamada).await, LifecycleStage::Mql, "{n}: 60");
        assert_eq!(
            env.stage(ito).await,
            LifecycleStage::Lead,
            "{n}: 60 behaviour, grade D"
        );
        let s = env.store.scores_of(&[ito]).await.unwrap();
        assert_eq!((s[0].behaviour, s[0].grade.as_str()), (60.0, "D"), "{n}");
    }
}

#[tokio::test]
async fn windows_slide_out_through_timers() {
    for env in envs().await {
        let n = env.name;
        env.apply(vec![pricing_segment("Pricing ×3 in 14 days")])
            .await;
        let c = env.contact("window@example.jp", "担当", None).await;
        let other = env.contact("other@example.jp", "担当", None).await;
        env.run().await;
        env.event(c, "page.viewed", json!({"path": "/pricing"}))
            .await;
        env.event(c, "page.viewed", json!({"path": "/pricing/enterprise"}))
            .await;
        env.event(other, "page.viewed", json!({"path": "/blog"}))
            .await;
        env.run().await;
        assert!(env.members("Pricing ×3 in 14 days").await.is_empty(), "{n}");
        env.advance(Duration::days(1));
        env.event(c, "page.viewed", json!({"path": "/pricing"}))
            .await;
        env.run().await;
        assert_eq!(env.members("Pricing ×3 in 14 days").await, vec![c], "{n}");
        let entered = env.events_of(c, "segment.entered").await;
        assert_eq!(entered.len(), 1, "{n}");
        assert_eq!(entered[0].occurred_at, env.clock.now(), "{n}");
        // The first two visits (day 0) leave the window at day 14: still there a second before.
        env.clock
            .set(t0() + Duration::days(14) - Duration::seconds(1));
        let p = env.run().await;
        assert_eq!(p.timers, 0, "{n}: nothing due yet");
        assert_eq!(env.members("Pricing ×3 in 14 days").await, vec![c], "{n}");
        env.clock
            .set(t0() + Duration::days(14) + Duration::seconds(1));
        let p = env.run().await;
        assert_eq!(p.timers, 1, "{n}: the contact's timer fired");
        assert!(env.members("Pricing ×3 in 14 days").await.is_empty(), "{n}");
        let exited = env.events_of(c, "segment.exited").await;
        assert_eq!(exited.len(), 1, "{n}");
        assert_eq!(exited[0].properties["cause"], "time", "{n}");
        assert_eq!(
            exited[0].occurred_at,
            t0() + Duration::days(14) + Duration::microseconds(1),
            "{n}: dated at the instant the window let go"
        );
        // No timer left for a contact with nothing pending.
        assert!(
            env.store.timers_of(&[c, other]).await.unwrap().is_empty(),
            "{n}"
        );
    }
}

#[tokio::test]
async fn decay_moves_scores_across_thresholds_both_ways() {
    for env in envs().await {
        let n = env.name;
        env.rep("rep@kizuna.example", None).await;
        env.apply(vec![
            model(SEED_001),
            json!({"kind": "segment", "name": "Hot", "filter": {"score": "seed-001", "op": "gte", "value": 50}}),
        ])
        .await;
        let mfg = env.company("山田製作所", "製造業", 120).await;
        let c = env.contact("decay@yamada.example", "部長", Some(mfg)).await;
        env.run().await;
        env.event(c, "form.submitted", json!({"form": "contact"}))
            .await;
        env.run().await;
        assert_eq!(
            (env.stage(c).await, env.temperature(c).await),
            (LifecycleStage::Mql, Temperature::Hot),
            "{n}"
        );
        assert_eq!(env.members("Hot").await, vec![c], "{n}");
        // 23 fit + 30 behaviour; 90-day half-life: under 50 after ≈ 13.7 days.
        env.advance(Duration::days(13));
        env.run().await;
        assert_eq!(env.temperature(c).await, Temperature::Hot, "{n}");
        env.advance(Duration::days(1));
        let p = env.run().await;
        assert!(p.timers >= 1, "{n}");
        assert_eq!(
            env.temperature(c).await,
            Temperature::Warm,
            "{n}: decayed under hot"
        );
        assert!(env.members("Hot").await.is_empty(), "{n}: exited by time");
        assert_eq!(
            env.stage(c).await,
            LifecycleStage::Mql,
            "{n}: a stage is not taken back by decay"
        );
        let dirs: Vec<String> = env
            .events_of(c, "score.threshold_crossed")
            .await
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e.properties["threshold"].as_str().unwrap(),
                    e.properties["direction"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            dirs,
            vec!["warm:up", "hot:up", "mql:up", "hot:down", "mql:down"],
            "{n}"
        );
        // The explanation shows the decay.
        let e = &explain::explain_contact(&env.store, &env.clock, c, None)
            .await
            .unwrap()[0];
        assert_eq!(e.behaviour_awarded, 30.0, "{n}");
        assert!(e.behaviour < 27.0 && e.decayed > 3.0, "{n}: {e:?}");
        // Warm ends at 25 total (2 behaviour points): about 310 days after the award.
        env.advance(Duration::days(400));
        env.run().await;
        assert_eq!(env.temperature(c).await, Temperature::Cold, "{n}");
    }
}

#[tokio::test]
async fn round_robin_is_fair_and_rules_route_by_territory() {
    for env in envs().await {
        let n = env.name;
        let reps = [
            env.rep("a@kizuna.example", None).await,
            env.rep("b@kizuna.example", None).await,
            env.rep("c@kizuna.example", None).await,
        ];
        let osaka = env.rep("osaka@kizuna.example", Some("関西")).await;
        env.apply(vec![
            json!({"kind": "scoring_model", "name": "demo", "lifecycle": true,
                   "behaviour": [{"id": "demo", "event": "demo.requested", "points": 100}],
                   "mql": {"score": 50}}),
            json!({"kind": "handoff_policy",
                   "rules": [{"when": {"attribute": "address.region", "op": "in", "value": ["大阪府", "京都府"]}, "owner": "osaka@kizuna.example"}],
                   "round_robin": ["a@kizuna.example", "b@kizuna.example", "c@kizuna.example"],
                   "task": {"title": "Call {name} within a day", "due_in": "1d"}}),
        ])
        .await;
        let mut contacts = Vec::new();
        for i in 0..6 {
            contacts.push(
                env.contact(&format!("rr{i}@example.jp"), "担当", None)
                    .await,
            );
        }
        let kansai: ContactInput = serde_json::from_value(
            json!({"email": "kansai@example.jp", "address": {"region": "大阪府"}}),
        )
        .unwrap();
        let k = env
            .store
            .create_contact(kansai, env.clock.now(), "api")
            .await
            .unwrap()
            .id;
        env.run().await;
        for c in contacts.iter().chain([&k]) {
            env.event(*c, "demo.requested", json!({})).await;
        }
        env.run().await;
        let mut owners = Vec::new();
        for c in &contacts {
            let h = env.store.handoffs_of(*c).await.unwrap();
            assert_eq!(h.len(), 1, "{n}");
            owners.push(h[0].owner_id.unwrap());
        }
        assert_eq!(owners, [reps, reps].concat(), "{n}: a, b, c, a, b, c");
        let hk = &env.store.handoffs_of(k).await.unwrap()[0];
        assert_eq!(
            (hk.owner_id, hk.assigned_by.as_str()),
            (Some(osaka), "rule"),
            "{n}"
        );
        let t = env.store.task(hk.task_id.unwrap()).await.unwrap();
        assert_eq!(t.title, "Call kansai@example.jp within a day", "{n}");
    }
}

#[tokio::test]
async fn accept_makes_an_sql_and_reject_recycles_until_a_new_crossing() {
    for env in envs().await {
        let n = env.name;
        env.rep("rep@kizuna.example", None).await;
        env.apply(vec![
            json!({"kind": "scoring_model", "name": "demo", "lifecycle": true,
            "behaviour": [{"id": "demo", "event": "demo.requested", "points": 100}],
            "decay": {"half_life": "1d"}, "mql": {"score": 50}}),
        ])
        .await;
        let yes = env.contact("yes@example.jp", "部長", None).await;
        let no = env.contact("no@example.jp", "担当", None).await;
        env.run().await;
        env.event(yes, "demo.requested", json!({})).await;
        env.event(no, "demo.requested", json!({})).await;
        env.run().await;
        // Accept: SQL with BANT, the sales cycle stays active.
        let bant = kizuna_core::lifecycle::Bant {
            budget: "¥5,000,000 approved".into(),
            authority: "部長 decides".into(),
            need: "replace spreadsheets".into(),
            timeline: "within 6 months".into(),
        };
        let bad = kizuna_core::lifecycle::Bant {
            need: "".into(),
            ..bant.clone()
        };
        match sales::accept(&env.store, &env.clock, yes, &bad, None).await {
            Err(EngineError::Invalid(e)) => assert_eq!(e.0[0].field, "bant.need", "{n}"),
            other => panic!("{n}: {other:?}"),
        }
        let h = sales::accept(&env.store, &env.clock, yes, &bant, Some("good call"))
            .await
            .unwrap();
        assert_eq!(
            (
                h.status.as_str(),
                h.bant.as_ref().unwrap()["budget"].as_str()
            ),
            ("accepted", Some("¥5,000,000 approved")),
            "{n}"
        );
        assert_eq!(env.stage(yes).await, LifecycleStage::Sql, "{n}");
        assert!(
            env.store.open_handoff(yes).await.unwrap().is_some(),
            "{n}: active sales cycle"
        );
        assert!(
            matches!(
                sales::accept(&env.store, &env.clock, yes, &bant, None).await,
                Err(EngineError::Store(
                    kizuna_store::StoreError::Conflict { .. }
                ))
            ),
            "{n}: nothing pending any more"
        );
        // Reject: back to lead with the reason, task canceled, not handed off again at once.
        assert!(
            sales::reject(&env.store, &env.clock, no, "meh", None)
                .await
                .is_err(),
            "{n}"
        );
        let h = sales::reject(
            &env.store,
            &env.clock,
            no,
            "bad_timing",
            Some("next fiscal year"),
        )
        .await
        .unwrap();
        assert_eq!(
            (h.status.as_str(), h.reason.as_deref()),
            ("rejected", Some("bad_timing")),
            "{n}"
        );
        assert_eq!(env.stage(no).await, LifecycleStage::Lead, "{n}");
        assert_eq!(
            env.store.task(h.task_id.unwrap()).await.unwrap().status,
            "canceled",
            "{n}"
        );
        env.run().await;
        env.event(no, "demo.requested", json!({})).await;
        env.run().await;
        assert_eq!(
            env.stage(no).await,
            LifecycleStage::Lead,
            "{n}: still above the line since the rejection"
        );
        assert_eq!(env.store.handoffs_of(no).await.unwrap().len(), 1, "{n}");
        // Three days later the score has fallen under 50 (re-armed); a new crossing hands off again.
        env.advance(Duration::days(3));
        env.run().await;
        env.event(no, "demo.requested", json!({})).await;
        env.run().await;
        assert_eq!(env.stage(no).await, LifecycleStage::Mql, "{n}");
        assert_eq!(env.store.handoffs_of(no).await.unwrap().len(), 2, "{n}");
        assert_eq!(
            env.store.rejection_reasons().await.unwrap(),
            vec![("bad_timing".to_string(), 1)],
            "{n}"
        );
        let causes: Vec<String> = explain::stages(&env.store, &env.clock, no)
            .await
            .unwrap()
            .iter()
            .map(|p| p.cause.clone())
            .collect();
        assert_eq!(
            causes,
            vec!["created", "scoring:demo", "sales.rejected", "scoring:demo"],
            "{n}"
        );
    }
}

#[tokio::test]
async fn bulk_build_preview_and_edit() {
    for env in envs().await {
        let n = env.name;
        let mfg = env.company("A製造", "製造業", 500).await;
        let shop = env.company("B小売", "小売業", 500).await;
        let mut hot = Vec::new();
        for i in 0..5 {
            let co = if i % 2 == 0 { mfg } else { shop };
            let c = env
                .contact(&format!("b{i}@example.jp"), "担当", Some(co))
                .await;
            for _ in 0..(i + 1) {
                env.event(c, "page.viewed", json!({"path": "/pricing"}))
                    .await;
            }
            hot.push(c);
        }
        let seg = json!({"all": [
            {"event": "page.viewed", "where": [{"property": "path", "op": "starts_with", "value": "/pricing"}], "count": {"gte": 3}, "within": "14d"},
            {"attribute": "company.industry", "op": "in", "value": ["製造業"]}]});
        // Preview (nothing saved, the feature computed from the log): b2 (3 views) and b4 (5).
        let p = preview(&env.store, &env.clock, &seg, 10).await.unwrap();
        assert_eq!(p.count, 2, "{n}");
        let mut want = vec![hot[2], hot[4]];
        want.sort();
        assert_eq!(
            p.sample.iter().map(|c| c.id).collect::<Vec<_>>(),
            want,
            "{n}"
        );
        assert!(
            p.evaluated <= 3,
            "{n}: only candidates (feature holders at 製造業) were evaluated, got {}",
            p.evaluated
        );
        assert!(
            env.store
                .definitions(DefinitionKind::Segment)
                .await
                .unwrap()
                .is_empty(),
            "{n}"
        );
        // Save it: built in bulk from history.
        env.run().await;
        env.apply(vec![
            json!({"kind": "segment", "name": "Pricing, manufacturing", "filter": seg}),
        ])
        .await;
        let progress = env.run().await;
        assert!(progress.builds >= 1, "{n}");
        assert_eq!(env.members("Pricing, manufacturing").await, want, "{n}");
        let d = env
            .store
            .definition_by_name(DefinitionKind::Segment, "Pricing, manufacturing")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((d.status.as_str(), d.built_version), ("active", 1), "{n}");
        assert_eq!(
            env.events_of(hot[4], "segment.entered").await[0].properties["cause"],
            "build",
            "{n}"
        );
        // Edit: ≥ 5 views → b2 exits.
        let seg5 = json!({"all": [
            {"event": "page.viewed", "where": [{"property": "path", "op": "starts_with", "value": "/pricing"}], "count": {"gte": 5}, "within": "14d"},
            {"attribute": "company.industry", "op": "in", "value": ["製造業"]}]});
        env.apply(vec![
            json!({"kind": "segment", "name": "Pricing, manufacturing", "filter": seg5}),
        ])
        .await;
        env.run().await;
        assert_eq!(
            env.members("Pricing, manufacturing").await,
            vec![hot[4]],
            "{n}"
        );
        assert_eq!(
            env.events_of(hot[2], "segment.exited").await.len(),
            1,
            "{n}"
        );
        // Incremental from here: two more views make b2 a member again.
        env.event(hot[2], "page.viewed", json!({"path": "/pricing"}))
            .await;
        env.event(hot[2], "page.viewed", json!({"path": "/pricing"}))
            .await;
        env.run().await;
        assert_eq!(env.members("Pricing, manufacturing").await, want, "{n}");
    }
}

#[tokio::test]
async fn lists_segments_of_segments_and_consent() {
    for env in envs().await {
        let n = env.name;
        let list = env
            .store
            .create_list("Trade show 2026-10", None, env.clock.now())
            .await
            .unwrap();
        env.apply(vec![
            json!({"kind": "segment", "name": "Visitors", "filter": {"list": "Trade show 2026-10"}}),
            json!({"kind": "segment", "name": "Mailable visitors", "filter": {"all": [{"segment": "Visitors"}, {"consent": "email"}]}}),
            json!({"kind": "segment", "name": "Opened lately", "filter": {"email": "opened", "within": "30d"}}),
        ])
        .await;
        let c = env.contact("visitor@example.jp", "担当", None).await;
        env.run().await;
        env.store
            .add_to_list(list.id, &[c], env.clock.now())
            .await
            .unwrap();
        env.run().await;
        assert_eq!(env.members("Visitors").await, vec![c], "{n}");
        assert!(
            env.members("Mailable visitors").await.is_empty(),
            "{n}: no consent yet"
        );
        env.event(
            c,
            "consent.granted",
            json!({"channel": "email", "subscription_type": "newsletter"}),
        )
        .await;
        env.event(c, "email.opened", json!({"machine": true})).await;
        env.run().await;
        assert_eq!(env.members("Mailable visitors").await, vec![c], "{n}");
        assert!(
            env.members("Opened lately").await.is_empty(),
            "{n}: a machine open is not engagement"
        );
        env.event(c, "email.opened", json!({})).await;
        env.run().await;
        assert_eq!(env.members("Opened lately").await, vec![c], "{n}");
        env.event(c, "email.unsubscribed", json!({})).await;
        env.run().await;
        assert!(
            env.members("Mailable visitors").await.is_empty(),
            "{n}: unsubscribed"
        );
        env.event(c, "consent.granted", json!({"channel": "email"}))
            .await;
        env.run().await;
        assert_eq!(env.members("Mailable visitors").await, vec![c], "{n}");
        assert!(
            env.store
                .remove_from_list(list.id, c, env.clock.now())
                .await
                .unwrap()
        );
        env.run().await;
        assert!(env.members("Visitors").await.is_empty(), "{n}");
        assert!(
            env.members("Mailable visitors").await.is_empty(),
            "{n}: follows the segment it reads"
        );
        // A segment cannot read itself through others.
        let docs = vec![(
            "x".to_string(),
            json!({"kind": "segment", "name": "Visitors", "filter": {"segment": "Mailable visitors"}}),
        )];
        let errs = apply::apply(&env.store, &env.clock, docs)
            .await
            .unwrap_err();
        assert_eq!(errs[0].errors.0[0].code, "segment_cycle", "{n}");
    }
}

#[tokio::test]
async fn invalid_definitions_are_rejected_with_the_path_of_the_bad_node() {
    for env in envs().await {
        let n = env.name;
        let docs = vec![
            (
                "a.json".to_string(),
                json!({"kind": "segment", "name": "x", "filter": {"all": [{"attribute": "job_title", "op": "eq", "value": "部長"}, {"any": [{"event": "page.viewed", "count": {"gte": "three"}}]}]}}),
            ),
            (
                "b.json".to_string(),
                json!({"kind": "scoring_model", "name": "m", "behaviour": [{"id": "r", "event": "x", "points": 1, "limit": {"points": 0, "per": "1d"}}]}),
            ),
            (
                "c.json".to_string(),
                json!({"kind": "handoff_policy", "rules": [{"when": {"attribute": "company.industry", "op": "eq", "value": "x"}, "owner": "nobody@example.jp"}]}),
            ),
        ];
        let errs = apply::apply(&env.store, &env.clock, docs)
            .await
            .unwrap_err();
        let got: Vec<(String, String)> = errs
            .iter()
            .map(|e| (e.source.clone(), e.errors.0[0].field.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a.json".into(), "filter.all[1].any[0].count.gte".into()),
                ("b.json".into(), "behaviour[0].limit.points".into()),
                ("c.json".into(), "rules[0].owner".into()),
            ],
            "{n}"
        );
        assert!(
            env.store
                .definitions(DefinitionKind::Segment)
                .await
                .unwrap()
                .is_empty(),
            "{n}: nothing written"
        );
    }
}

#[tokio::test]
async fn merges_rebuild_the_survivor_from_its_whole_history() {
    for env in envs().await {
        let n = env.name;
        env.apply(vec![pricing_segment("Pricing")]).await;
        let a = env.contact("merge-a@example.jp", "担当", None).await;
        let b = env.contact("merge-b@example.jp", "担当", None).await;
        env.run().await;
        env.event(a, "page.viewed", json!({"path": "/pricing"}))
            .await;
        env.event(b, "page.viewed", json!({"path": "/pricing"}))
            .await;
        env.event(b, "page.viewed", json!({"path": "/pricing"}))
            .await;
        env.run().await;
        assert!(env.members("Pricing").await.is_empty(), "{n}");
        env.store
            .merge_contacts(a, b, env.clock.now(), "api")
            .await
            .unwrap();
        env.run().await;
        assert_eq!(
            env.members("Pricing").await,
            vec![a],
            "{n}: 1 + 2 visits, one person"
        );
    }
}

/// Runs the engine until idle; when it crashes (injected), starts a new one on the same store
/// — as a restarted process would — and goes on.
async fn drive(env: &Env, engine: &mut Engine, crashes: &mut u32, config: &EngineConfig) {
    loop {
        match engine.run_once().await {
            Ok(p) if p.is_idle() => return,
            Ok(_) => {}
            Err(EngineError::InjectedCrash) => {
                *crashes += 1;
                *engine = Engine::new(
                    env.store.clone(),
                    Arc::new(env.clock.clone()),
                    config.clone(),
                );
            }
            Err(e) => panic!("{}: {e}", env.name),
        }
    }
}

#[tokio::test]
async fn a_company_edit_moves_its_contacts() {
    for env in envs().await {
        let n = env.name;
        env.apply(vec![json!({"kind": "segment", "name": "Finance", "filter": {"attribute": "company.industry", "op": "eq", "value": "金融業"}})])
            .await;
        let co = env.company("みずほ的銀行", "製造業", 5000).await;
        let c = env.contact("bank@example.jp", "部長", Some(co)).await;
        env.run().await;
        assert!(env.members("Finance").await.is_empty(), "{n}");
        let input = serde_json::from_value(json!({"industry": "金融業"})).unwrap();
        env.store
            .update_company(co, input, env.clock.now())
            .await
            .unwrap();
        env.run().await;
        assert_eq!(env.members("Finance").await, vec![c], "{n}");
    }
}

async fn scenario(env: &Env, engine: &mut Engine, crashes: &mut u32, restart: &EngineConfig) {
    env.rep("r1@kizuna.example", None).await;
    env.rep("r2@kizuna.example", None).await;
    env.apply(vec![
        model(SEED_001),
        pricing_segment("Pricing"),
        json!({"kind": "segment", "name": "Hot MQLs", "filter": {"all": [
            {"attribute": "temperature", "op": "eq", "value": "hot"}, {"attribute": "lifecycle_stage", "op": "eq", "value": "mql"}]}}),
    ])
    .await;
    drive(env, engine, crashes, restart).await;
    let mfg = env.company("山田製作所", "製造業", 120).await;
    let mut cs = Vec::new();
    for i in 0..8 {
        let title = if i % 2 == 0 { "部長" } else { "担当" };
        cs.push(
            env.contact(&format!("s{i}@yamada.example"), title, Some(mfg))
                .await,
        );
    }
    for round in 0..3 {
        for (i, c) in cs.iter().enumerate() {
            if (i + round) % 3 != 0 {
                env.event(*c, "page.viewed", json!({"path": "/pricing"}))
                    .await;
            }
            if i % 2 == 0 && round == 1 {
                env.event(*c, "form.submitted", json!({"form": "contact"}))
                    .await;
            }
            env.event(*c, "webinar.attended", json!({})).await;
        }
        drive(env, engine, crashes, restart).await;
        env.advance(Duration::days(5));
        drive(env, engine, crashes, restart).await;
    }
    env.advance(Duration::days(20));
    drive(env, engine, crashes, restart).await;
}

/// Everything that must come out the same: by e-mail and segment name.
async fn snapshot(env: &Env) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let ids = env.store.contact_ids_after(None, 1000).await.unwrap();
    let segs = env
        .store
        .definitions(DefinitionKind::Segment)
        .await
        .unwrap();
    for c in env.store.contacts_by_ids(&ids).await.unwrap() {
        let mut members: Vec<String> = Vec::new();
        for s in &segs {
            if env
                .store
                .segment_member_ids(s.id)
                .await
                .unwrap()
                .contains(&c.id)
            {
                members.push(s.name.clone());
            }
        }
        let scores: Vec<Value> = env
            .store
            .scores_of(&[c.id])
            .await
            .unwrap()
            .iter()
            .map(|s| json!([(s.score * 1000.0).round(), s.grade]))
            .collect();
        let mut counts = BTreeMap::new();
        for k in [
            "segment.entered",
            "segment.exited",
            "handoff.created",
            "stage.changed",
            "temperature.changed",
            "score.threshold_crossed",
        ] {
            counts.insert(k, env.events_of(c.id, k).await.len());
        }
        out.insert(
            c.email.clone().unwrap(),
            json!({"stage": c.lifecycle_stage, "temperature": c.temperature, "members": members, "scores": scores,
                   "events": counts, "handoffs": env.store.handoffs_of(c.id).await.unwrap().len(),
                   "owner": c.owner_id.is_some()}),
        );
    }
    out
}

#[tokio::test]
async fn crash_and_replay_give_the_same_state_without_duplicate_effects() {
    let small = EngineConfig {
        batch_size: 7,
        node_id: "node-a".into(),
        ..Default::default()
    };
    let reference = {
        let env = envs_with(small.clone()).await.remove(0);
        let mut engine = env.engine.clone();
        let mut crashes = 0;
        scenario(&env, &mut engine, &mut crashes, &small).await;
        assert_eq!(crashes, 0);
        snapshot(&env).await
    };
    assert!(
        reference.values().any(|v| v["stage"] == "mql"),
        "the scenario makes MQLs"
    );
    assert!(
        reference
            .values()
            .any(|v| v["events"]["segment.exited"].as_u64() > Some(0)),
        "and exits: {reference:#?}"
    );
    for crash_at in [1, 2, 3, 5, 8, 13, 21] {
        for env in envs_with(EngineConfig {
            crash_before_commit: Some(crash_at),
            ..small.clone()
        })
        .await
        {
            let n = env.name;
            let mut engine = env.engine.clone();
            let mut crashes = 0;
            scenario(&env, &mut engine, &mut crashes, &small).await;
            assert_eq!(crashes, 1, "{n}: crash before commit {crash_at} happened");
            assert_eq!(
                snapshot(&env).await,
                reference,
                "{n}: crash before commit {crash_at}"
            );
        }
    }
}

#[tokio::test]
async fn a_second_node_waits_for_the_lease() {
    for env in envs().await {
        let n = env.name;
        env.run().await;
        let other = Engine::new(
            env.store.clone(),
            Arc::new(env.clock.clone()),
            EngineConfig::default(),
        );
        assert!(
            matches!(other.run_once().await, Err(EngineError::LeaseLost)),
            "{n}"
        );
        env.advance(Duration::seconds(31));
        assert!(
            other.run_once().await.is_ok(),
            "{n}: an expired lease is taken over"
        );
        assert!(
            matches!(env.engine.run_once().await, Err(EngineError::LeaseLost)),
            "{n}"
        );
    }
}

#[tokio::test]
async fn postgres_transactions_committing_out_of_order_are_not_skipped_nor_waited_for() {
    let Some((store, _)) = open("postgres").await else {
        return;
    };
    let clock = ManualClock::new(t0());
    let engine = Engine::new(
        store.clone(),
        Arc::new(clock.clone()),
        EngineConfig::default(),
    );
    let c = store
        .create_contact(
            serde_json::from_value(json!({"email": "order@example.jp"})).unwrap(),
            t0(),
            "api",
        )
        .await
        .unwrap()
        .id;
    let doc = vec![("s".to_string(), pricing_segment("Pricing"))];
    apply::apply(&store, &clock, doc).await.unwrap();
    engine.run_until_idle().await.unwrap();
    let view = |p: &str| NewEvent::new(c, "page.viewed", t0(), "sdk", json!({"path": p}));
    let count = || async {
        let f = store.features_of(&[c]).await.unwrap();
        f.first()
            .map(|f| {
                serde_json::from_str::<kizuna_core::filter::event::FeatureState>(&f.2)
                    .unwrap()
                    .count
            })
            .unwrap_or(0)
    };
    // Transaction A takes its place in the log first, and commits last.
    let mut a = store.db().begin().await.unwrap();
    kizuna_store::events::append(&mut a, vec![view("/pricing/a")], t0())
        .await
        .unwrap();
    store
        .append_events(vec![view("/pricing/b1"), view("/pricing/b2")], t0())
        .await
        .unwrap();
    // B is processed at once — a running transaction does not hold the engine up …
    engine.run_until_idle().await.unwrap();
    assert_eq!(count().await, 2);
    let cp = store.checkpoint("main").await.unwrap().unwrap();
    assert!(
        !cp.cursor.pending.is_empty(),
        "… and A, still running below the position, is remembered"
    );
    // … and when A commits, after B, its event is not skipped.
    a.commit().await.unwrap();
    engine.run_until_idle().await.unwrap();
    assert_eq!(count().await, 3, "none skipped");
    let seg = store
        .definition_by_name(DefinitionKind::Segment, "Pricing")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.segment_member_ids(seg.id).await.unwrap(), vec![c]);
    // A rolled-back transaction leaves nothing behind either.
    let mut r = store.db().begin().await.unwrap();
    kizuna_store::events::append(&mut r, vec![view("/pricing/rolled-back")], t0())
        .await
        .unwrap();
    store
        .append_events(vec![view("/pricing/after")], t0())
        .await
        .unwrap();
    engine.run_until_idle().await.unwrap();
    drop(r);
    engine.run_until_idle().await.unwrap();
    assert_eq!(count().await, 4);
    let mut ids = Vec::new();
    for e in store.contact_log(c, None).await.unwrap() {
        if e.event_type == "page.viewed" {
            ids.push(e.properties["path"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        ids,
        vec!["/pricing/a", "/pricing/b1", "/pricing/b2", "/pricing/after"]
    );
}

type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;

#[tokio::test]
async fn owners_get_a_signed_webhook_with_the_context_a_rep_needs() {
    // A real HTTP receiver on loopback: fails the first delivery, accepts the retry.
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let s = s2.clone();
            async move {
                let mut v = s.lock().unwrap();
                v.push((headers, body));
                if v.len() == 1 {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    for env in envs().await {
        seen.lock().unwrap().clear();
        let n = env.name;
        env.rep("rep@kizuna.example", None).await;
        env.apply(vec![
            model(SEED_001),
            json!({"kind": "handoff_policy", "webhook": {"url": format!("http://{addr}/hook"), "secret": "s3cret"}}),
        ])
        .await;
        let mfg = env.company("山田製作所", "製造業", 120).await;
        let c = env.contact("hook@yamada.example", "部長", Some(mfg)).await;
        env.run().await;
        env.event(c, "page.viewed", json!({"path": "/products/ma"}))
            .await;
        env.event(c, "form.submitted", json!({"form": "contact"}))
            .await;
        env.run().await;
        let notifier = Notifier::new(env.store.clone(), Arc::new(env.clock.clone()));
        assert_eq!(notifier.deliver_due().await.unwrap(), 1, "{n}");
        assert_eq!(
            notifier.deliver_due().await.unwrap(),
            0,
            "{n}: retried only after the backoff"
        );
        env.advance(Duration::seconds(11));
        assert_eq!(notifier.deliver_due().await.unwrap(), 1, "{n}");
        let got = seen.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "{n}");
        let (h, body) = &got[1];
        assert_eq!(
            h["x-kizuna-delivery"], got[0].0["x-kizuna-delivery"],
            "{n}: same delivery id on retry"
        );
        let sig = h["x-kizuna-signature"].to_str().unwrap();
        assert!(
            verify("s3cret", sig, body, env.clock.now().timestamp(), 300),
            "{n}"
        );
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "handoff.created");
        assert_eq!(v["owner"]["email"], "rep@kizuna.example", "{n}");
        assert_eq!(v["contact"]["email"], "hook@yamada.example", "{n}");
        assert_eq!(v["contact"]["company"]["industry"], "製造業", "{n}");
        assert_eq!(v["contact"]["source"]["channel"], "organic_search", "{n}");
        assert_eq!(v["score_breakdown"][0]["score"], 58.0, "{n}");
        let rules: Vec<&str> = v["score_breakdown"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap())
            .collect();
        assert_eq!(rules, vec!["product_page", "contact_form"], "{n}");
        let recent: Vec<&str> = v["recent_activity"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            recent,
            vec!["form.submitted", "page.viewed", "contact.created"],
            "{n}"
        );
        let out = env.store.notifications_of(c).await.unwrap();
        assert_eq!(
            (out[0].status.as_str(), out[0].attempts),
            ("delivered", 2),
            "{n}"
        );
    }
}

#[tokio::test]
async fn what_if_reports_who_would_cross_and_when() {
    for env in envs().await {
        let n = env.name;
        let mfg = env.company("山田製作所", "製造業", 1500).await;
        let a = env.contact("wa@yamada.example", "部長", Some(mfg)).await;
        let b = env.contact("wb@yamada.example", "担当", None).await;
        for c in [a, b] {
            for _ in 0..4 {
                env.event(c, "form.submitted", json!({"form": "inquiry"}))
                    .await;
            }
        }
        let r = explain::what_if(&env.store, &env.clock, &model(SEED_003), None)
            .await
            .unwrap();
        assert_eq!(r.contacts, 2, "{n}");
        assert_eq!(
            (r.mql.now, r.mql.ever),
            (1, 1),
            "{n}: a (fit 20 + 40); b has no fit"
        );
        assert_eq!(r.thresholds["hot"].now, 1, "{n}");
        assert_eq!(r.grades["A"], 1, "{n}");
        assert_eq!(r.sample[0]["email"], "wa@yamada.example", "{n}");
        assert_eq!(r.mql.first_reached_by_week.values().sum::<u64>(), 1, "{n}");
        assert!(
            env.store
                .definitions(DefinitionKind::ScoringModel)
                .await
                .unwrap()
                .is_empty(),
            "{n}: nothing saved"
        );
    }
}

/// Segments defined after the history exists are built together in one pass per wave (a
/// segment reading another waits for the next wave): the bulk path must give exactly the
/// members the incremental path maintained for the same filters defined before the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_builds_of_many_segments_agree_with_the_incremental_path() {
    let filters = [
        json!({"attribute": "company.industry", "op": "eq", "value": "製造業"}),
        json!({"event": "page.viewed", "where": [{"property": "path", "op": "starts_with", "value": "/pricing"}], "count": {"gte": 2}, "within": "14d"}),
        json!({"consent": "email"}),
        json!({"not": {"email": "opened", "within": "30d"}}),
        json!({"grade": "fit", "op": "gte", "value": "B"}),
        json!({"sales_cycle": false}),
    ];
    for env in envs().await {
        let n = env.name;
        env.apply(vec![json!({"kind": "scoring_model", "name": "fit", "behaviour": [
            {"id": "pricing", "event": "page.viewed", "points": 1}],
            "fit": [{"id": "mfg", "when": {"attribute": "company.industry", "op": "eq", "value": "製造業"}, "points": 10}],
            "grades": {"A": 10, "B": 5, "C": 1}})])
        .await;
        let mut docs: Vec<Value> = filters
            .iter()
            .enumerate()
            .map(|(i, f)| json!({"kind": "segment", "name": format!("live {i}"), "filter": f}))
            .collect();
        docs.push(json!({"kind": "segment", "name": "live chained", "filter":
            {"all": [{"segment": "live 0"}, {"segment": "live 1"}, {"segment": "live 2"}]}}));
        env.apply(docs).await;
        env.run().await;
        let mfg = env.company("製作所", "製造業", 300).await;
        let it = env.company("情報", "情報通信業", 50).await;
        let mut contacts = Vec::new();
        for i in 0..12 {
            let co = if i % 3 == 0 { Some(it) } else { Some(mfg) };
            contacts.push(env.contact(&format!("c{i}@example.jp"), "担当", co).await);
        }
        for (i, c) in contacts.iter().enumerate() {
            for _ in 0..(i % 4) {
                env.event(*c, "page.viewed", json!({"path": "/pricing/enterprise"}))
                    .await;
            }
            if i % 2 == 0 {
                env.event(*c, "consent.granted", json!({"channel": "email"}))
                    .await;
            }
            if i % 5 == 0 {
                env.event(*c, "email.opened", json!({})).await;
            }
        }
        env.run().await;
        // The same filters, defined now: built in bulk over the history.
        let mut docs: Vec<Value> = filters
            .iter()
            .enumerate()
            .map(|(i, f)| json!({"kind": "segment", "name": format!("bulk {i}"), "filter": f}))
            .collect();
        docs.push(json!({"kind": "segment", "name": "bulk chained", "filter":
            {"all": [{"segment": "bulk 0"}, {"segment": "bulk 1"}, {"segment": "bulk 2"}]}}));
        env.apply(docs).await;
        env.run().await;
        let mut names: Vec<String> = (0..filters.len()).map(|i| i.to_string()).collect();
        names.push("chained".into());
        for name in names {
            let live = env.members(&format!("live {name}")).await;
            let bulk = env.members(&format!("bulk {name}")).await;
            assert_eq!(live, bulk, "{n}: segment {name}");
        }
        let chained = env.members("bulk chained").await;
        assert!(
            !chained.is_empty() && chained.len() < contacts.len(),
            "{n}: the chained segment must select some contacts, not all: {}",
            chained.len()
        );
    }
}
