//! Issue 6 against the real `kizuna` binary: `kill -9` during a wave of expiring program waits,
//! then a restart — every step runs exactly once (tasks carry no idempotency key, so a repeated
//! step would show as a second task). SQLite, and PostgreSQL when `KIZUNA_TEST_DATABASE_URL` is
//! set.

use chrono::Utc;
use kizuna_core::clock::{Clock, ManualClock};
use kizuna_engine::program::{self, ProgramRunner, RunnerConfig};
use kizuna_store::Store;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

mod support;

use support::{Db, Server};

async fn runs(store: &Store, pid: Uuid, step: &str) -> i64 {
    program::report(store, pid).await.unwrap()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == step)
        .map(|s| s["runs"].as_i64().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_wave_of_expiring_waits_then_restart_runs_every_step_exactly_once() {
    const N: usize = 3000;
    for db in Db::all().await {
        let n = db.name;
        let store = db.open().await;
        // Set up ten minutes in the past (manual clock), so every 1-second wait has long expired
        // by the server's real clock when it starts: one wave, without waiting for time to pass.
        let now = Utc::now() - chrono::Duration::minutes(10);
        let mut ids = Vec::with_capacity(N);
        for i in 0..N {
            let input = serde_json::from_value(
                json!({"email": format!("p{i}@example.jp"), "last_name": format!("P{i}")}),
            )
            .unwrap();
            ids.push(store.create_contact(input, now, "api").await.unwrap().id);
        }
        store
            .create_template(
                kizuna_store::email::templates::TemplateInput {
                    name: "wave".into(),
                    kind: "marketing".into(),
                    subject: "wave".into(),
                    mjml: None,
                    html: Some("<p>{{ contact.last_name }}</p>".into()),
                    text: None,
                },
                now,
            )
            .await
            .unwrap();
        let clock = ManualClock::new(now);
        let pid = program::create(
            &store,
            &json!({"name": "Wave", "triggers": [{"type": "api"}], "steps": [
                {"id": "wait", "type": "wait", "duration": "1s"},
                {"id": "mail", "type": "send_email", "template": "wave"},
                {"id": "task", "type": "create_task", "title": "Call {name}"},
                {"id": "mail2", "type": "send_email", "template": "wave"}
            ], "pressure": {"time_zone": "UTC"}}),
            "active",
            now.timestamp_micros(),
        )
        .await
        .unwrap()
        .id;
        // Everyone into the 1-second wait (in this process), then hand the lease over.
        let runner = ProgramRunner::new(
            store.clone(),
            Arc::new(clock.clone()),
            RunnerConfig::default(),
        );
        runner.run_until_idle().await.unwrap();
        runner
            .enroll_bulk(pid, &ids, clock.now().timestamp_micros())
            .await
            .unwrap();
        runner.run_until_idle().await.unwrap();
        assert_eq!(runs(&store, pid, "wait").await, N as i64, "{n}");
        runner.release().await;
        drop(runner);
        let mut server = Server::start(&db);
        let deadline = Instant::now() + Duration::from_secs(60);
        let at_kill = loop {
            let r = runs(&store, pid, "mail").await;
            if r > 0 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        server.kill_9();
        assert!(
            at_kill > 0 && at_kill < N as i64,
            "{n}: killed mid-wave ({at_kill} of {N})"
        );
        let _server = Server::start(&db);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = program::report(&store, pid).await.unwrap();
            if r["completed"] == N as i64 {
                break;
            }
            assert!(Instant::now() < deadline, "{n}: {r}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for step in ["mail", "task", "mail2"] {
            assert_eq!(runs(&store, pid, step).await, N as i64, "{n}: {step}");
        }
        let count = |sql: &'static str| {
            let store = store.clone();
            async move {
                store
                    .db()
                    .reader()
                    .fetch_one::<kizuna_store::db::One<i64>>(sql, vec![])
                    .await
                    .unwrap()
                    .0
            }
        };
        assert_eq!(
            count("SELECT COUNT(*) FROM tasks").await,
            N as i64,
            "{n}: tasks"
        );
        assert_eq!(
            count("SELECT COUNT(DISTINCT contact_id) FROM tasks").await,
            N as i64,
            "{n}: one task per contact"
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM email_messages").await,
            2 * N as i64,
            "{n}: two mails per contact"
        );
        assert_eq!(
            count("SELECT COUNT(DISTINCT contact_id) FROM email_messages").await,
            N as i64,
            "{n}"
        );
        println!(
            "{n}: killed with {at_kill} of {N} mails queued; after the restart every step ran exactly once"
        );
    }
}
