//! Nurture programs end to end on every backend (SQLite always, PostgreSQL when
//! `KIZUNA_TEST_DATABASE_URL` is set), with a manual clock: the 90/60/30 renewal program in
//! milliseconds, wait-for-event on both paths, quiet hours, the frequency cap and duplicate
//! rule across programs, crash and replay, live edits, pause/resume, goals and exits, and every
//! shipped template under simulation and for real.

use chrono::{DateTime, Duration, TimeZone, Utc};
use kizuna_core::clock::{Clock, ManualClock};
use kizuna_core::contact::ContactInput;
use kizuna_core::field::FieldInput;
use kizuna_engine::program::simulate::{Responses, SimOptions, simulate};
use kizuna_engine::program::{self, ProgramRunner, RunnerConfig, templates};
use kizuna_store::email::outbox::{EmailFilter, EmailMessage};
use kizuna_store::events::NewEvent;
use kizuna_store::sales::TaskFilter;
use kizuna_store::{Store, StoreConfig};
use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;

struct Env {
    store: Store,
    clock: ManualClock,
    runner: ProgramRunner,
    name: &'static str,
    _dir: Option<tempfile::TempDir>,
}

fn t0() -> DateTime<Utc> {
    // 09:00 UTC = 18:00 in Tokyo.
    Utc.with_ymd_and_hms(2026, 10, 1, 9, 0, 0).unwrap()
}

async fn envs() -> Vec<Env> {
    let mut out = Vec::new();
    for name in ["sqlite", "postgres"] {
        let (store, dir) = match name {
            "sqlite" => {
                let dir = tempfile::tempdir().unwrap();
                let s = Store::open(&StoreConfig {
                    data_dir: dir.path().to_path_buf(),
                    ..Default::default()
                })
                .await
                .unwrap();
                (s, Some(dir))
            }
            _ => {
                let Ok(url) = std::env::var("KIZUNA_TEST_DATABASE_URL") else {
                    continue;
                };
                let s = Store::open(&StoreConfig {
                    database_url: Some(url),
                    pg_schema: Some(format!("t_{}", Uuid::now_v7().simple())),
                    max_connections: 4,
                    ..Default::default()
                })
                .await
                .expect("KIZUNA_TEST_DATABASE_URL is set but PostgreSQL is not reachable");
                (s, None)
            }
        };
        let clock = ManualClock::new(t0());
        let runner = ProgramRunner::new(
            store.clone(),
            Arc::new(clock.clone()),
            RunnerConfig::default(),
        );
        runner.run_until_idle().await.unwrap();
        out.push(Env {
            store,
            clock,
            runner,
            name,
            _dir: dir,
        });
    }
    out
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

impl Env {
    fn now(&self) -> i64 {
        us(self.clock.now())
    }

    async fn contact(&self, email: &str, extra: Value) -> Uuid {
        let mut v = json!({"email": email, "last_name": email.split('@').next().unwrap()});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let input: ContactInput = serde_json::from_value(v).unwrap();
        self.store
            .create_contact(input, self.clock.now(), "api")
            .await
            .unwrap()
            .id
    }

    async fn event(&self, c: Uuid, t: &str, props: Value) {
        self.store
            .append_events(
                vec![NewEvent::new(c, t, self.clock.now(), "api", props)],
                self.clock.now(),
            )
            .await
            .unwrap();
    }

    async fn run(&self) {
        self.runner.run_until_idle().await.unwrap();
    }

    /// Moves the clock day by day (running the runner each day) for `days`.
    async fn days(&self, days: i64) {
        for _ in 0..days {
            self.clock.advance(Duration::days(1));
            self.run().await;
        }
    }

    async fn mails(&self, c: Uuid) -> Vec<EmailMessage> {
        let mut m = self
            .store
            .list_emails(
                &EmailFilter {
                    contact_id: Some(c),
                    ..Default::default()
                },
                None,
                1000,
            )
            .await
            .unwrap()
            .data;
        m.sort_by_key(|x| x.created_at);
        m
    }

    async fn template_name(&self, id: Uuid) -> String {
        self.store.template(id).await.unwrap().name
    }

    async fn mail_names(&self, c: Uuid) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for m in self.mails(c).await {
            out.push((
                self.template_name(m.template_id).await,
                (m.created_at - t0()).num_days(),
            ));
        }
        out
    }

    async fn tasks(&self, c: Uuid) -> Vec<kizuna_store::sales::Task> {
        self.store
            .tasks(
                &TaskFilter {
                    contact_id: Some(c),
                    ..Default::default()
                },
                None,
                1000,
            )
            .await
            .unwrap()
            .data
    }

    async fn install(&self, key: &str) -> Vec<Uuid> {
        templates::install(&self.store, key, "active", self.now())
            .await
            .unwrap()
    }

    async fn create(&self, def: Value) -> Uuid {
        program::create(&self.store, &def, "active", self.now())
            .await
            .unwrap()
            .id
    }

    async fn mail_template(&self, name: &str) {
        self.store
            .create_template(
                kizuna_store::email::templates::TemplateInput {
                    name: name.into(),
                    kind: "marketing".into(),
                    subject: format!("{name} subject"),
                    mjml: None,
                    html: Some("<p>hello {{ contact.last_name }}</p>".into()),
                    text: None,
                },
                self.clock.now(),
            )
            .await
            .unwrap();
    }

    async fn enrollments(&self, c: Uuid) -> Vec<kizuna_store::programs::Enrollment> {
        self.store.enrollments_of(&[c]).await.unwrap()
    }
}

#[tokio::test]
async fn renewal_90_60_30_completes_in_milliseconds_with_the_right_mails_on_the_right_days() {
    for env in envs().await {
        let started = std::time::Instant::now();
        env.store
            .create_field(
                FieldInput {
                    name: "renewal_date".into(),
                    label: None,
                    field_type: kizuna_core::field::FieldType::Date,
                    options: vec![],
                },
                env.clock.now(),
            )
            .await
            .unwrap();
        let renewal = (t0() + Duration::days(100)).format("%Y-%m-%d").to_string();
        let c = env
            .contact(
                "renew@example.jp",
                json!({"custom": {"renewal_date": renewal}}),
            )
            .await;
        let later = (t0() + Duration::days(300)).format("%Y-%m-%d").to_string();
        let other = env
            .contact(
                "later@example.jp",
                json!({"custom": {"renewal_date": later}}),
            )
            .await;
        let ids = env.install("renewal-90-60-30").await;
        env.run().await;
        // Simulation first: nothing sent, the three mails on their days.
        let c_ = env.runner.compiled().await.unwrap();
        let p = c_.programs[&ids[0]].versions[&1].clone();
        let sim = simulate(
            &env.store,
            &c_,
            &p,
            env.now(),
            &SimOptions {
                responses: Default::default(),
                days: 120,
                contacts: None,
                everyone: false,
                limit: 1000,
            },
        )
        .await
        .unwrap();
        // The renewal date is at midnight UTC: −90 days is day 9 (09:00 → midnight).
        let days: Vec<(i64, String)> = sim
            .timeline
            .iter()
            .filter(|d| d.r#type == "send_email")
            .map(|d| (d.day, d.step.clone()))
            .collect();
        assert_eq!(
            days,
            vec![(9, "m90".into()), (39, "m60".into()), (69, "m30".into())],
            "{}",
            env.name
        );
        assert_eq!(sim.enrolled, 1, "{}", env.name);
        assert!(env.mails(c).await.is_empty(), "simulation sent nothing");

        env.days(101).await;
        let got = env.mail_names(c).await;
        // Midnight UTC is 09:00 in Tokyo (no quiet hours) — the clock ticks at 09:00 UTC, so
        // each mail goes at the first tick on or after its instant.
        assert_eq!(
            got,
            vec![
                ("renewal-90".into(), 10),
                ("renewal-60".into(), 40),
                ("renewal-30".into(), 70)
            ],
            "{}",
            env.name
        );
        let tasks = env.tasks(c).await;
        assert_eq!(tasks.len(), 1, "{}", env.name);
        assert!(tasks[0].title.starts_with("Renewal call"));
        let e = env.enrollments(c).await;
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].status, "completed");
        assert!(env.mails(other).await.is_empty());
        assert!(env.enrollments(other).await.is_empty());
        // Keys are (enrollment, step, iteration).
        let keys: Vec<String> = env
            .mails(c)
            .await
            .into_iter()
            .map(|m| m.idempotency_key)
            .collect();
        assert_eq!(keys[0], format!("program:{}:m90:1", e[0].id));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{}",
            env.name
        );
    }
}

#[tokio::test]
async fn wait_for_event_takes_the_event_path_or_the_timeout_path() {
    for env in envs().await {
        env.install("low-usage-customer").await;
        let a = env
            .contact("a@example.jp", json!({"lifecycle_stage": "customer"}))
            .await;
        let b = env
            .contact("b@example.jp", json!({"lifecycle_stage": "customer"}))
            .await;
        let lead = env.contact("lead@example.jp", json!({})).await;
        for c in [a, b, lead] {
            env.event(c, "usage.low", json!({})).await;
        }
        env.run().await;
        assert_eq!(env.mails(a).await.len(), 1);
        assert_eq!(env.mails(b).await.len(), 1);
        assert!(
            env.enrollments(lead).await.is_empty(),
            "audience: customers only"
        );
        env.days(2).await;
        env.event(a, "product.used", json!({"feature": "reports"}))
            .await;
        env.run().await;
        let ea = env.enrollments(a).await;
        assert_eq!(ea[0].status, "completed", "{}", env.name);
        env.days(6).await;
        assert!(env.tasks(a).await.is_empty(), "event path: no call");
        let tb = env.tasks(b).await;
        assert_eq!(tb.len(), 1, "timeout path: a call ({})", env.name);
        assert_eq!(
            (tb[0].created_at - t0()).num_days(),
            7,
            "after the 7-day timeout"
        );
        assert_eq!(env.enrollments(b).await[0].status, "completed");
    }
}

#[tokio::test]
async fn quiet_hours_defer_to_the_window() {
    for env in envs().await {
        env.mail_template("quiet").await;
        let pid = env
            .create(json!({"name": "Quiet", "triggers": [{"type": "api"}],
                "steps": [{"id": "m", "type": "send_email", "template": "quiet"}],
                "pressure": {"quiet_hours": {"start": "21:00", "end": "08:00"}, "time_zone": "Asia/Tokyo"}}))
            .await;
        let c = env.contact("q@example.jp", json!({})).await;
        let osaka = env.contact("utc@example.jp", json!({})).await;
        // 14:00 UTC = 23:00 JST.
        env.clock.set(t0() + Duration::hours(5));
        env.runner.enroll(pid, c, false).await.unwrap().unwrap();
        env.run().await;
        assert!(env.mails(c).await.is_empty(), "{}", env.name);
        let e = env.enrollments(c).await;
        assert_eq!(
            e[0].due_at,
            Some(us(t0() + Duration::hours(14))),
            "08:00 JST"
        );
        env.clock.set(t0() + Duration::hours(13));
        env.run().await;
        assert!(env.mails(c).await.is_empty());
        env.clock.set(t0() + Duration::hours(14));
        env.run().await;
        assert_eq!(env.mails(c).await.len(), 1, "{}", env.name);
        let _ = osaka;
    }
}

#[tokio::test]
async fn the_frequency_cap_and_the_duplicate_rule_hold_across_programs() {
    for env in envs().await {
        for t in ["news-a", "news-b", "shared"] {
            env.mail_template(t).await;
        }
        let cap = json!({"frequency_cap": {"max": 1, "per": "7d"}, "time_zone": "UTC"});
        let a = env
            .create(json!({"name": "A", "triggers": [{"type": "event", "event": "x.happened"}],
                "steps": [{"id": "m", "type": "send_email", "template": "news-a"}], "pressure": cap}))
            .await;
        let b = env
            .create(json!({"name": "B", "triggers": [{"type": "event", "event": "x.happened"}],
                "steps": [{"id": "m", "type": "send_email", "template": "news-b"}], "pressure": cap}))
            .await;
        let c = env.contact("cap@example.jp", json!({})).await;
        env.event(c, "x.happened", json!({})).await;
        env.run().await;
        let m = env.mails(c).await;
        assert_eq!(
            m.len(),
            1,
            "one mail in 7 days across A and B ({})",
            env.name
        );
        env.days(6).await;
        assert_eq!(env.mails(c).await.len(), 1);
        env.days(2).await;
        let names = env.mail_names(c).await;
        assert_eq!(names.len(), 2, "{}", env.name);
        assert_eq!(names[1].1, 7, "the second went when the cap allowed");
        let report = program::report(&env.store, a).await.unwrap();
        let rb = program::report(&env.store, b).await.unwrap();
        let deferred: i64 = [report, rb]
            .iter()
            .flat_map(|r| r["steps"].as_array().unwrap().clone())
            .map(|s| s["deferred"].as_i64().unwrap())
            .sum();
        assert!(deferred >= 1);

        // The same message from two programs goes once.
        for n in ["D1", "D2"] {
            env.create(
                json!({"name": n, "triggers": [{"type": "event", "event": "y.happened"}],
                "steps": [{"id": "m", "type": "send_email", "template": "shared"}]}),
            )
            .await;
        }
        let d = env.contact("dup@example.jp", json!({})).await;
        env.event(d, "y.happened", json!({})).await;
        env.run().await;
        let m = env.mails(d).await;
        assert_eq!(m.len(), 1, "{}", env.name);
        let ev = env
            .store
            .timeline(d, &Default::default(), None, 100)
            .await
            .unwrap();
        assert!(
            ev.data
                .iter()
                .any(|e| e.event_type == "program.step_skipped"
                    && e.properties["reason"] == "duplicate"),
            "{}",
            env.name
        );
    }
}

#[tokio::test]
async fn a_crash_mid_wave_replays_with_every_step_exactly_once() {
    for env in envs().await {
        env.mail_template("wave-1").await;
        env.mail_template("wave-2").await;
        let pid = env
            .create(
                json!({"name": "Wave", "triggers": [{"type": "api"}], "steps": [
                {"id": "w", "type": "wait", "duration": "1d"},
                {"id": "m1", "type": "send_email", "template": "wave-1"},
                {"id": "t", "type": "create_task", "title": "Call {name}"},
                {"id": "m2", "type": "send_email", "template": "wave-2"}
            ], "pressure": {"time_zone": "UTC"}}),
            )
            .await;
        let mut ids = Vec::new();
        for i in 0..300 {
            ids.push(env.contact(&format!("w{i}@example.jp"), json!({})).await);
        }
        env.runner.release().await;
        let runner = ProgramRunner::new(
            env.store.clone(),
            Arc::new(env.clock.clone()),
            RunnerConfig {
                due_batch: 64,
                ..Default::default()
            },
        );
        runner.run_until_idle().await.unwrap();
        runner.enroll_bulk(pid, &ids, env.now()).await.unwrap();
        runner.run_until_idle().await.unwrap();
        env.clock.advance(Duration::days(1));
        // Crash after two committed batches of the wave, then again after one more.
        runner.crash_after(2);
        assert!(runner.run_until_idle().await.is_err());
        runner.crash_after(1);
        assert!(runner.run_until_idle().await.is_err());
        runner.run_until_idle().await.unwrap();
        let mut mails = 0;
        let mut tasks = 0;
        for c in &ids {
            let m = env.mails(*c).await;
            assert_eq!(m.len(), 2, "{}", env.name);
            mails += m.len();
            tasks += env.tasks(*c).await.len();
        }
        assert_eq!((mails, tasks), (600, 300), "{}", env.name);
        let r = program::report(&env.store, pid).await.unwrap();
        for s in r["steps"].as_array().unwrap() {
            assert_eq!(s["runs"], 300, "{} {s}", env.name);
        }
        assert_eq!(r["completed"], 300);
    }
}

#[tokio::test]
async fn live_edits_keep_or_map_contacts_in_flight_and_pause_resume() {
    for env in envs().await {
        for t in ["v-a", "v-b", "v-c"] {
            env.mail_template(t).await;
        }
        let v1 = json!({"name": "Live", "triggers": [{"type": "api"}], "steps": [
            {"id": "a", "type": "send_email", "template": "v-a"},
            {"id": "wait", "type": "wait", "duration": "2d"},
            {"id": "b", "type": "send_email", "template": "v-b"}
        ], "pressure": {"time_zone": "UTC"}});
        let pid = env.create(v1).await;
        let stay = env.contact("stay@example.jp", json!({})).await;
        env.runner.enroll(pid, stay, false).await.unwrap();
        env.run().await;
        // v2: a new mail after the wait.
        let v2 = json!({"name": "Live", "triggers": [{"type": "api"}], "steps": [
            {"id": "a", "type": "send_email", "template": "v-a"},
            {"id": "wait2", "type": "wait", "duration": "2d"},
            {"id": "c", "type": "send_email", "template": "v-c"}
        ], "pressure": {"time_zone": "UTC"}});
        let (row, moved) = program::update(&env.store, pid, &v2, None, env.now())
            .await
            .unwrap();
        assert_eq!((row.version, moved), (2, 0));
        let fresh = env.contact("fresh@example.jp", json!({})).await;
        env.runner.enroll(pid, fresh, false).await.unwrap();
        env.run().await;
        // v3 maps those waiting on v2's wait2 to v3's wait3.
        let v3 = json!({"name": "Live", "triggers": [{"type": "api"}], "steps": [
            {"id": "a", "type": "send_email", "template": "v-a"},
            {"id": "wait3", "type": "wait", "duration": "2d"},
            {"id": "b", "type": "send_email", "template": "v-b"}
        ], "pressure": {"time_zone": "UTC"}});
        let bad = program::update(
            &env.store,
            pid,
            &v3,
            Some(&[("wait2".to_string(), "nope".to_string())].into()),
            env.now(),
        )
        .await;
        assert!(bad.is_err());
        let (_, moved) = program::update(
            &env.store,
            pid,
            &v3,
            Some(&[("wait2".to_string(), "wait3".to_string())].into()),
            env.now(),
        )
        .await
        .unwrap();
        assert_eq!(moved, 1, "{}", env.name);
        // Pause: nothing runs; resume: the expired waits run, once.
        program::set_status(&env.store, pid, "paused", env.now())
            .await
            .unwrap();
        env.days(3).await;
        assert_eq!(env.mails(stay).await.len(), 1);
        program::set_status(&env.store, pid, "active", env.now())
            .await
            .unwrap();
        env.run().await;
        let s = env.mail_names(stay).await;
        assert_eq!(
            s.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            vec!["v-a", "v-b"],
            "stayed on v1 ({})",
            env.name
        );
        let f = env.mail_names(fresh).await;
        assert_eq!(
            f.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            vec!["v-a", "v-b"],
            "moved from v2 to v3 by the mapping ({})",
            env.name
        );
        assert_eq!(env.enrollments(fresh).await[0].version, 3);
        assert_eq!(env.enrollments(stay).await[0].version, 1);
    }
}

#[tokio::test]
async fn goals_unsubscribes_and_the_sales_cycle_end_enrollments() {
    for env in envs().await {
        env.install("welcome-1-2-3").await;
        env.run().await;
        let goal = env.contact("goal@example.jp", json!({})).await;
        let unsub = env.contact("unsub@example.jp", json!({})).await;
        let sales = env.contact("sales@example.jp", json!({})).await;
        env.run().await;
        for c in [goal, unsub, sales] {
            assert_eq!(
                env.mails(c).await.len(),
                1,
                "CEO mail at once ({})",
                env.name
            );
            assert_eq!(env.mails(c).await[0].author, "identity");
        }
        env.store
            .update_contact(
                goal,
                serde_json::from_value(json!({"lifecycle_stage": "sql"})).unwrap(),
                env.clock.now(),
                "api",
            )
            .await
            .unwrap();
        env.event(unsub, "email.unsubscribed", json!({})).await;
        env.event(sales, "handoff.created", json!({})).await;
        env.run().await;
        let g = &env.enrollments(goal).await[0];
        assert_eq!(
            (
                g.status.as_str(),
                g.exit_reason.as_deref(),
                g.goal.as_deref()
            ),
            ("completed", Some("goal_reached"), Some("became_sql")),
            "{}",
            env.name
        );
        assert_eq!(
            env.enrollments(unsub).await[0].exit_reason.as_deref(),
            Some("unsubscribed")
        );
        assert_eq!(
            env.enrollments(sales).await[0].exit_reason.as_deref(),
            Some("sales_cycle")
        );
        env.days(8).await;
        for c in [goal, unsub, sales] {
            assert_eq!(env.mails(c).await.len(), 1, "nothing after the exit");
        }
        // A contact that stays gets the owner's two mails on days 3 and 7.
        let stays = env.contact("stays@example.jp", json!({})).await;
        env.run().await;
        env.days(8).await;
        let m = env.mails(stays).await;
        assert_eq!(
            m.iter().map(|x| x.author.as_str()).collect::<Vec<_>>(),
            vec!["identity", "owner", "owner"]
        );
        let r = program::report(
            &env.store,
            env.store
                .program_by_name("Welcome 1-2-3")
                .await
                .unwrap()
                .unwrap()
                .id,
        )
        .await
        .unwrap();
        assert_eq!(r["entered"], 4, "{}", env.name);
        assert_eq!(r["goal_reached"], 1);
        assert_eq!(r["exited"]["unsubscribed"], 1);
        assert_eq!(r["exited"]["sales_cycle"], 1);
        assert_eq!(r["completed"], 1);
        let ceo = r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step_id"] == "ceo")
            .unwrap()
            .clone();
        assert_eq!(ceo["runs"], 4);
        assert_eq!(ceo["email"]["queued"], 4);
    }
}

#[tokio::test]
async fn every_shipped_template_simulates_and_runs() {
    for env in envs().await {
        env.store
            .create_field(
                FieldInput {
                    name: "renewal_date".into(),
                    label: None,
                    field_type: kizuna_core::field::FieldType::Date,
                    options: vec![],
                },
                env.clock.now(),
            )
            .await
            .unwrap();
        let mut expected: Vec<(&str, u64)> = Vec::new();
        for s in templates::all() {
            let ids = env.install(s.key).await;
            assert_eq!(ids.len(), s.programs.len(), "{}", s.key);
            let per_contact_mails = match s.key {
                "welcome-1-2-3" | "seminar-attendee" => 3,
                "re-engagement-60d" => 4,
                "low-usage-customer" => 1,
                "lost-deal" => 2,
                // Given contacts without a renewal date: the waits until it pass at once.
                "renewal-90-60-30" => 3,
                _ => 1,
            };
            expected.push((s.key, per_contact_mails));
        }
        let c = env
            .contact("sim@example.jp", json!({"lifecycle_stage": "customer"}))
            .await;
        let l = env.contact("simlead@example.jp", json!({})).await;
        env.run().await;
        let compiled = env.runner.compiled().await.unwrap();
        for (key, mails) in expected {
            let s = templates::get(key).unwrap();
            let pid = env
                .store
                .program_by_name(s.programs[0]["name"].as_str().unwrap())
                .await
                .unwrap()
                .unwrap()
                .id;
            let p = compiled.programs[&pid].versions[&1].clone();
            let r = simulate(
                &env.store,
                &compiled,
                &p,
                env.now(),
                &SimOptions {
                    responses: Default::default(),
                    days: 200,
                    contacts: Some(vec![c, l]),
                    everyone: false,
                    limit: 10,
                },
            )
            .await
            .unwrap();
            assert_eq!(
                r.per_contact_max.get("emails").copied().unwrap_or(0),
                mails,
                "{key}: {}",
                r.summary
            );
        }
        // Seminar for real: thanks at once, discount on day 3, ending on day 7.
        let att = env.contact("attendee@example.jp", json!({})).await;
        env.event(
            att,
            "seminar.attended",
            json!({"seminar": "2026-10 MA入門"}),
        )
        .await;
        env.run().await;
        env.days(8).await;
        let seminar: Vec<(String, i64)> = env
            .mail_names(att)
            .await
            .into_iter()
            .filter(|x| x.0.starts_with("seminar"))
            .collect();
        assert_eq!(
            seminar,
            vec![
                ("seminar-thanks".into(), 0),
                ("seminar-discount".into(), 3),
                ("seminar-discount-ending".into(), 7)
            ],
            "{}",
            env.name
        );
        // Re-engagement for real: 60 silent days, then four mails two weeks apart, then dormant.
        let quiet = env.contact("quiet@example.jp", json!({})).await;
        env.run().await;
        env.days(60 + 57).await;
        let names: Vec<String> = env
            .mail_names(quiet)
            .await
            .into_iter()
            .map(|x| x.0)
            .filter(|n| n.starts_with("reengage"))
            .collect();
        assert_eq!(names.len(), 4, "{}: {names:?}", env.name);
        assert_eq!(
            env.store.contact(quiet).await.unwrap().lifecycle_stage,
            kizuna_core::contact::LifecycleStage::Dormant,
            "{}",
            env.name
        );
        // Tiered newsletter: members of "Cold tier" get the weekly issue.
        let list = env.store.list_by_name("Cold tier").await.unwrap().unwrap();
        let cold = env.contact("cold@example.jp", json!({})).await;
        env.store
            .add_to_list(list.id, &[cold], env.clock.now())
            .await
            .unwrap();
        // The send window (weekdays 09:00–18:00 in Tokyo) is never open at 09:00 UTC: tick
        // every 6 hours.
        for _ in 0..60 {
            env.clock.advance(Duration::hours(6));
            env.run().await;
        }
        let weekly = env
            .mail_names(cold)
            .await
            .into_iter()
            .filter(|x| x.0 == "newsletter-weekly")
            .count();
        assert!((2..=3).contains(&weekly), "{}: {weekly}", env.name);
    }
}

#[tokio::test]
async fn bad_definitions_name_the_bad_node() {
    for env in envs().await {
        let e = program::create(
            &env.store,
            &json!({"name": "Bad", "triggers": [{"type": "api"}],
                    "steps": [{"id": "m", "type": "send_email", "template": "missing"},
                              {"id": "w", "type": "wait", "duration": "soon"}]}),
            "active",
            env.now(),
        )
        .await
        .unwrap_err();
        let kizuna_engine::EngineError::Invalid(v) = e else {
            panic!("{e}")
        };
        let f: Vec<&str> = v.0.iter().map(|x| x.field.as_str()).collect();
        assert!(f.contains(&"steps[1].duration"), "{f:?}");
        let e = program::create(
            &env.store,
            &json!({"name": "Bad", "triggers": [{"type": "api"}],
                    "steps": [{"id": "m", "type": "send_email", "template": "missing"}]}),
            "active",
            env.now(),
        )
        .await
        .unwrap_err();
        let kizuna_engine::EngineError::Invalid(v) = e else {
            panic!("{e}")
        };
        assert_eq!(v.0[0].field, "steps[0].template");
        assert_eq!(v.0[0].code, "unknown_template");
    }
}

#[tokio::test]
async fn kizuna_apply_creates_then_versions_a_program_file() {
    for env in envs().await {
        templates::install(&env.store, "seminar-attendee", "draft", env.now())
            .await
            .unwrap();
        let file: Value =
            serde_json::from_str(include_str!("../../../docs/examples/program-seminar.json"))
                .unwrap();
        let docs = kizuna_engine::apply::documents("program-seminar.json", file);
        let r = kizuna_engine::apply::apply(&env.store, &env.clock, docs.clone())
            .await
            .unwrap();
        assert_eq!(
            (r[0].kind.as_str(), r[0].outcome),
            ("program", "updated"),
            "{}",
            env.name
        );
        let row = env
            .store
            .program_by_name("Seminar attendee follow-up")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((row.version, row.status.as_str()), (2, "draft"));
        let r = kizuna_engine::apply::apply(&env.store, &env.clock, docs)
            .await
            .unwrap();
        assert_eq!(r[0].outcome, "unchanged");
        let bad = kizuna_engine::apply::apply(
            &env.store,
            &env.clock,
            vec![("bad.json".into(), json!({"kind": "program", "name": "X", "triggers": [{"type": "api"}], "steps": [{"id": "a", "type": "wait"}]}))],
        )
        .await
        .unwrap_err();
        assert_eq!(bad[0].errors.0[0].field, "steps[0].duration");
    }
}

#[tokio::test]
async fn segment_trigger_branches_splits_and_contact_steps() {
    for env in envs().await {
        let engine = kizuna_engine::Engine::new(
            env.store.clone(),
            Arc::new(env.clock.clone()),
            kizuna_engine::EngineConfig::default(),
        );
        env.store
            .create_definition(
                kizuna_store::definitions::DefinitionKind::Segment,
                "Managers",
                None,
                &json!({"attribute": "job_title", "op": "contains", "value": "部長"}),
                env.clock.now(),
            )
            .await
            .unwrap();
        env.store
            .create_list("Nurtured", None, env.clock.now())
            .await
            .unwrap();
        env.store
            .create_list("Old", None, env.clock.now())
            .await
            .unwrap();
        env.store
            .create_field(
                FieldInput {
                    name: "nurture_score".into(),
                    label: None,
                    field_type: kizuna_core::field::FieldType::Number,
                    options: vec![],
                },
                env.clock.now(),
            )
            .await
            .unwrap();
        env.store
            .create_field(
                FieldInput {
                    name: "track".into(),
                    label: None,
                    field_type: kizuna_core::field::FieldType::Text,
                    options: vec![],
                },
                env.clock.now(),
            )
            .await
            .unwrap();
        env.mail_template("next-step").await;
        engine.run_until_idle().await.unwrap();
        env.create(json!({"name": "Next", "triggers": [{"type": "api"}],
            "steps": [{"id": "m", "type": "send_email", "template": "next-step"}]}))
            .await;
        env.create(json!({"name": "Managers", "triggers": [{"type": "segment_entered", "segment": "Managers"}],
            "steps": [
                {"id": "score", "type": "add_score", "points": 5},
                {"id": "score2", "type": "add_score", "points": -2},
                {"id": "tag", "type": "update_field", "field": "custom.track", "value": "manager"},
                {"id": "list", "type": "add_to_list", "list": "Nurtured"},
                {"id": "unlist", "type": "remove_from_list", "list": "Old"},
                {"id": "is_lead", "type": "branch", "condition": {"attribute": "lifecycle_stage", "op": "eq", "value": "lead"}, "then": "mql", "else": "split"},
                {"id": "mql", "type": "set_stage", "stage": "mql", "next": "split"},
                {"id": "split", "type": "split", "paths": [{"percent": 100, "next": "move"}], "holdout": 0},
                {"id": "move", "type": "move_to_program", "program": "Next"}
            ]}))
            .await;
        let c = env
            .contact("bucho@example.jp", json!({"lifecycle_stage": "lead"}))
            .await;
        let old = env.store.list_by_name("Old").await.unwrap().unwrap();
        env.store
            .add_to_list(old.id, &[c], env.clock.now())
            .await
            .unwrap();
        env.run().await;
        assert!(env.enrollments(c).await.is_empty());
        env.store
            .update_contact(
                c,
                serde_json::from_value(json!({"job_title": "営業部長"})).unwrap(),
                env.clock.now(),
                "api",
            )
            .await
            .unwrap();
        engine.run_until_idle().await.unwrap();
        env.run().await;
        env.run().await;
        let ct = env.store.contact(c).await.unwrap();
        assert_eq!(ct.custom["nurture_score"], json!(3.0), "{}", env.name);
        assert_eq!(ct.custom["track"], json!("manager"));
        assert_eq!(
            ct.lifecycle_stage,
            kizuna_core::contact::LifecycleStage::Mql,
            "{}",
            env.name
        );
        let lists: Vec<String> = env
            .store
            .list_memberships_of(&[c])
            .await
            .unwrap()
            .into_iter()
            .map(|(_, l)| l.to_string())
            .collect();
        let nurtured = env.store.list_by_name("Nurtured").await.unwrap().unwrap();
        assert_eq!(lists, vec![nurtured.id.to_string()], "{}", env.name);
        let e = env.enrollments(c).await;
        assert_eq!(e.len(), 2, "{}", env.name);
        let mgr = env
            .store
            .program_by_name("Managers")
            .await
            .unwrap()
            .unwrap()
            .id;
        let (a, b): (Vec<_>, Vec<_>) = e.into_iter().partition(|x| x.program_id == mgr);
        assert_eq!(a[0].exit_reason.as_deref(), Some("moved"));
        assert_eq!(b[0].status, "completed", "{}", env.name);
        assert_eq!(env.mail_names(c).await[0].0, "next-step");
    }
}

/// With assumed response rates the simulation sends some contacts down the "opened" and
/// "event arrived" paths — close to the rates, the same on every run — and without them
/// everyone takes the no-response paths.
#[tokio::test]
async fn simulation_with_assumed_responses_splits_the_paths() {
    for env in envs().await {
        let n = env.name;
        env.mail_template("first").await;
        env.mail_template("follow-up").await;
        env.mail_template("thanks").await;
        for i in 0..400 {
            env.contact(&format!("sim{i}@example.jp"), json!({})).await;
        }
        let id = env
            .create(json!({"name": "Responses", "triggers": [{"type": "api"}], "steps": [
                {"id": "m1", "type": "send_email", "template": "first"},
                {"id": "b", "type": "branch", "if": {"step": "m1", "email": "opened"}, "then": "w", "else": "m2"},
                {"id": "m2", "type": "send_email", "template": "follow-up", "next": "end"},
                {"id": "w", "type": "wait_for_event", "event": "form.submitted", "timeout": "14d", "on_timeout": "end", "next": "m3"},
                {"id": "m3", "type": "send_email", "template": "thanks"}
            ]}))
            .await;
        env.run().await;
        let c = env.runner.compiled().await.unwrap();
        let p = c.programs[&id].versions[&1].clone();
        let sim = |responses: Responses| {
            let (store, c, p, now) = (env.store.clone(), c.clone(), p.clone(), env.now());
            async move {
                simulate(
                    &store,
                    &c,
                    &p,
                    now,
                    &SimOptions {
                        responses,
                        days: 30,
                        contacts: None,
                        everyone: true,
                        limit: 10_000,
                    },
                )
                .await
                .unwrap()
            }
        };
        let runs = |r: &kizuna_engine::program::simulate::SimReport, step: &str| {
            r.steps.iter().find(|s| s.step == step).unwrap().contacts
        };
        let none = sim(Responses::default()).await;
        assert_eq!(none.enrolled, 400, "{n}");
        assert_eq!(runs(&none, "m2"), 400, "{n}: nobody opens");
        assert_eq!(runs(&none, "w"), 0, "{n}");
        let assumed = Responses {
            opened: 0.5,
            clicked: 0.1,
            responded: 0.25,
        };
        let some = sim(assumed).await;
        let opened = runs(&some, "w");
        assert!(
            (160..=240).contains(&opened),
            "{n}: about half open: {opened}"
        );
        assert_eq!(
            runs(&some, "m2"),
            400 - opened,
            "{n}: the rest get the follow-up"
        );
        let thanked = runs(&some, "m3");
        let share = thanked as f64 / opened as f64;
        assert!(
            (0.15..=0.35).contains(&share),
            "{n}: about a quarter of the openers respond: {thanked} of {opened}"
        );
        assert_eq!(some.totals["emails"], 400 + (400 - opened) + thanked, "{n}");
        assert!(some.assumptions[0].contains("50% of mails opened"), "{n}");
        assert_eq!(sim(assumed).await.steps, some.steps, "{n}: stable");
    }
}
