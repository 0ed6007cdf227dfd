//! Issue 6 against the real `kizuna` binary: `kill -9` during a wave of expiring program waits,
//! then a restart — every step runs exactly once (tasks carry no idempotency key, so a repeated
//! step would show as a second task). SQLite, and PostgreSQL when `KIZUNA_TEST_DATABASE_URL` is
//! set.

use chrono::Utc;
use kizuna_core::clock::{Clock, ManualClock};
use kizuna_engine::program::{self, ProgramRunner, RunnerConfig};
use kizuna_store::{Store, StoreConfig};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_kizuna");

/// Where a test's data lives, as `kizuna` flags and as a store config.
struct Db {
    name: &'static str,
    dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

#[allow(dead_code)]
impl Db {
    fn sqlite() -> Db {
        Db {
            name: "sqlite",
            dir: tempfile::tempdir().unwrap(),
            pg: None,
        }
    }

    async fn all() -> Vec<Db> {
        let mut out = vec![Db::sqlite()];
        if let Ok(url) = std::env::var("KIZUNA_TEST_DATABASE_URL") {
            let schema = format!("t_{}", Uuid::now_v7().simple());
            // Creates the schema (and migrates it), so the binary can use it by search_path.
            let db = Db {
                name: "postgres",
                dir: tempfile::tempdir().unwrap(),
                pg: Some((url, schema)),
            };
            db.open().await.close().await;
            out.push(db);
        }
        out
    }

    fn args(&self) -> Vec<String> {
        match &self.pg {
            None => vec!["--data-dir".into(), self.dir.path().display().to_string()],
            Some((url, schema)) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                vec![
                    "--database-url".into(),
                    format!("{url}{sep}options[search_path]={schema}"),
                ]
            }
        }
    }

    async fn open(&self) -> Store {
        Store::open(&match &self.pg {
            None => StoreConfig {
                data_dir: self.dir.path().to_path_buf(),
                ..Default::default()
            },
            Some((url, schema)) => StoreConfig {
                database_url: Some(url.clone()),
                pg_schema: Some(schema.clone()),
                max_connections: 2,
                ..Default::default()
            },
        })
        .await
        .unwrap()
    }

    /// Runs a `kizuna` command on this store.
    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.args());
        Command::new(BIN)
            .args(&all)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    fn last_line(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    }
}

/// A running `kizuna serve`, killed (SIGKILL) when dropped.
#[allow(dead_code)]
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(db: &Db) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(db.args())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let rest = &line[i + "listening on ".len()..];
                    let url: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(url);
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("kizuna serve did not start");
        Server { child, base }
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
