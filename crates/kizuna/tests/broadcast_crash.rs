//! Kill -9 in the middle of a 50,000-recipient broadcast, restart: every recipient gets at most
//! one message, every message the sink did not get is accounted for as ambiguous (reported, never
//! resent), and nothing is left unsent. Real `kizuna serve` processes, a real SMTP server
//! (aiosmtpd) that writes down each message before answering 250, SQLite and PostgreSQL.
//!
//! `KIZUNA_CRASH_RECIPIENTS` changes the audience size (default 50,000).

use chrono::Utc;
use kizuna_store::csv_import::CsvImportRequest;
use kizuna_store::email::broadcasts::{Audience, BroadcastInput};
use kizuna_store::email::consents::{ConsentStatus, NewConsent};
use kizuna_store::email::senders::SenderInput;
use kizuna_store::email::templates::TemplateInput;
use kizuna_store::imports::ImportOptions;
use kizuna_store::keys::Scope;
use kizuna_store::{Store, StoreConfig};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_kizuna");

/// Records `recipient<TAB>X-Kizuna-Message` for each message, flushed before the 250 reply: a
/// message Kizuna saw accepted is always in the file.
const SINK: &str = r#"
import sys, threading
from aiosmtpd.controller import Controller
out = open(sys.argv[2], "a", buffering=1)
class Handler:
    async def handle_DATA(self, server, session, envelope):
        mid = ""
        for line in envelope.original_content.split(b"\r\n"):
            if not line:
                break
            if line.lower().startswith(b"x-kizuna-message:"):
                mid = line.split(b":", 1)[1].strip().decode()
        for r in envelope.rcpt_tos:
            out.write(r + "\t" + mid + "\n")
        out.flush()
        return "250 2.0.0 OK"
c = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
threading.Event().wait()
"#;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_sink(file: &Path) -> (Proc, u16) {
    let port = free_port();
    let mut child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SINK)
        .arg(port.to_string())
        .arg(file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with aiosmtpd: run scripts/test-peers");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "ready", "the SMTP sink did not start");
    (Proc(child), port)
}

fn sink_lines(file: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(r, m)| (r.to_string(), m.to_string()))
        .collect()
}

/// `kizuna serve` with delivery to the sink; returns once it listens.
fn serve(dir: &Path, store_args: &[String], smtp_port: u16) -> (Proc, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(store_args)
        .current_dir(dir)
        .env_remove("KIZUNA_DATABASE_URL")
        .env_remove("KIZUNA_DATA_DIR")
        .env("KIZUNA_SMTP_HOST", "127.0.0.1")
        .env("KIZUNA_SMTP_PORT", smtp_port.to_string())
        .env("KIZUNA_MAIL_DOMAIN", "kizuna.example.jp")
        .env("KIZUNA_NODE_ID", "crash-test-node")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kizuna serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(i) = line.find("listening on http://") {
            break line[i + "listening on ".len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (Proc(child), base)
}

fn get(url: &str, key: &str) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .get(url)
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
}

/// Contacts on a list, each with newsletter consent, and a scheduled broadcast to the list.
async fn prepare(store: &Store, n: usize) -> (Uuid, String) {
    let now = Utc::now();
    let mut csv = String::from("email,last_name\n");
    for i in 0..n {
        csv.push_str(&format!("r{i}@example.jp,受信者{i}\n"));
    }
    let report = store
        .import_csv(
            std::io::Cursor::new(csv.into_bytes()),
            CsvImportRequest {
                options: ImportOptions {
                    list: Some("crash".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
            now,
            None,
        )
        .await
        .unwrap();
    assert_eq!(report.summary.created, n as u64);
    let list = store.list_by_name("crash").await.unwrap().unwrap();
    let mut cursor = None;
    loop {
        let page = store
            .list_contacts(
                &kizuna_store::contacts::ContactFilter {
                    list_id: Some(list.id),
                    ..Default::default()
                },
                cursor,
                1000,
            )
            .await
            .unwrap();
        let consents: Vec<NewConsent> = page
            .data
            .iter()
            .map(|c| NewConsent {
                contact_id: c.id,
                channel: "email".into(),
                subscription_type: "newsletter".into(),
                status: ConsentStatus::Granted,
                source: "import".into(),
                wording: Some("ニュースレターを受け取る".into()),
                wording_version: Some("2026-11".into()),
                ip: None,
                user_agent: None,
                request_id: None,
                message_id: None,
                occurred_at: now,
            })
            .collect();
        store.record_consents(&consents, now).await.unwrap();
        match page.next_cursor.as_deref() {
            Some(c) => cursor = kizuna_store::page::Cursor::decode(c),
            None => break,
        }
    }
    let template = store
        .create_template(
            TemplateInput {
                name: "weekly".into(),
                kind: "marketing".into(),
                subject: "{{ contact.last_name }}様 今週のお知らせ".into(),
                mjml: None,
                html: Some(
                    "<p>{{ contact.last_name }}様</p><p>今週のセミナー情報です。</p>".into(),
                ),
                text: None,
            },
            now,
        )
        .await
        .unwrap();
    let sender = store
        .create_sender(
            SenderInput {
                name: "キズナ".into(),
                email: "news@kizuna.example.jp".into(),
                organization: "株式会社キズナ".into(),
                postal_address: "〒100-0001 東京都千代田区千代田1-1".into(),
                reply_to: None,
            },
            now,
        )
        .await
        .unwrap();
    let bc = store
        .create_broadcast(
            BroadcastInput {
                name: "crash test".into(),
                template_id: template.id,
                sender_id: sender.id,
                author: "identity".into(),
                subscription_type: "newsletter".into(),
                audience: Audience::list(list.id),
                throttle_per_minute: None,
                ab: None,
            },
            now,
        )
        .await
        .unwrap();
    store.schedule_broadcast(bc.id, now, now).await.unwrap();
    let (_, key) = store
        .create_api_key("crash test", &[Scope::Admin], now)
        .await
        .unwrap();
    (bc.id, key)
}

fn backends(dir: &Path) -> Vec<(&'static str, StoreConfig, Vec<String>)> {
    let data: PathBuf = dir.join("data");
    let mut out = vec![(
        "sqlite",
        StoreConfig {
            data_dir: data.clone(),
            ..Default::default()
        },
        vec!["--data-dir".to_string(), data.display().to_string()],
    )];
    if let Ok(url) = std::env::var("KIZUNA_TEST_DATABASE_URL") {
        let schema = format!("crash_{}", Uuid::now_v7().simple());
        let sep = if url.contains('?') { '&' } else { '?' };
        out.push((
            "postgres",
            StoreConfig {
                database_url: Some(url.clone()),
                pg_schema: Some(schema.clone()),
                ..Default::default()
            },
            vec![
                "--database-url".to_string(),
                format!("{url}{sep}options[search_path]={schema}"),
            ],
        ));
    }
    out
}

#[test]
fn kill_9_mid_broadcast_then_restart_sends_each_recipient_at_most_once() {
    let n: usize = std::env::var("KIZUNA_CRASH_RECIPIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let dir = tempfile::tempdir().unwrap();
    for (backend, cfg, args) in backends(dir.path()) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (bc, key) = rt.block_on(async {
            let store = Store::open(&cfg).await.unwrap();
            let r = prepare(&store, n).await;
            store.close().await;
            r
        });
        let received = dir.path().join(format!("{backend}-received.tsv"));
        let (_sink, port) = start_sink(&received);

        // First run: kill -9 once a fifth of the audience has been received.
        let (mut first, _) = serve(dir.path(), &args, port);
        let deadline = Instant::now() + Duration::from_secs(600);
        while sink_lines(&received).len() < n / 5 {
            assert!(
                Instant::now() < deadline,
                "{backend}: the broadcast did not get going"
            );
            assert!(
                first.0.try_wait().unwrap().is_none(),
                "{backend}: the server died on its own"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        first.0.kill().unwrap(); // SIGKILL: no shutdown path runs
        first.0.wait().unwrap();
        let at_kill = sink_lines(&received).len();
        assert!(at_kill < n, "{backend}: killed before the end");

        // Second run: finishes the broadcast.
        let (_second, base) = serve(dir.path(), &args, port);
        let url = format!("{base}/api/v1/broadcasts/{bc}");
        let deadline = Instant::now() + Duration::from_secs(900);
        let progress = loop {
            let b = get(&url, &key);
            let states = &b["progress"]["states"];
            let count = |s: &str| states[s].as_u64().unwrap_or(0);
            let done = count("sent") + count("ambiguous") + count("failed") + count("skipped");
            if b["progress"]["enqueued"].as_u64() == Some(n as u64) && done == n as u64 {
                break b;
            }
            assert!(
                Instant::now() < deadline,
                "{backend}: the broadcast did not finish after the restart: {b}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let states = &progress["progress"]["states"];
        let sent = states["sent"].as_u64().unwrap_or(0);
        let ambiguous = states["ambiguous"].as_u64().unwrap_or(0);
        assert_eq!(
            sent + ambiguous,
            n as u64,
            "{backend}: nothing failed or skipped: {states}"
        );

        let lines = sink_lines(&received);
        let mut per_recipient: HashMap<&str, usize> = HashMap::new();
        for (r, _) in &lines {
            *per_recipient.entry(r.as_str()).or_default() += 1;
        }
        let twice: Vec<_> = per_recipient.iter().filter(|(_, c)| **c > 1).collect();
        assert!(twice.is_empty(), "{backend}: sent twice: {twice:?}");
        // Every message recorded as sent reached the sink; the ones the sink lacks are among the
        // ambiguous (handed to SMTP when the process died), which are reported, not resent.
        let missing = n - per_recipient.len();
        assert!(
            missing as u64 <= ambiguous,
            "{backend}: {missing} recipients got nothing but only {ambiguous} are ambiguous"
        );
        assert!(
            lines.len() as u64 >= sent,
            "{backend}: the sink has fewer messages than were recorded as sent"
        );
        // At most the messages in flight at the kill can be ambiguous.
        assert!(
            ambiguous <= 1000,
            "{backend}: {ambiguous} ambiguous is more than one claim could hold"
        );
        let reported = get(
            &format!("{base}/api/v1/emails?state=ambiguous&broadcast_id={bc}&limit=1000"),
            &key,
        );
        assert_eq!(
            reported["data"].as_array().map(Vec::len),
            Some(ambiguous as usize),
            "{backend}: ambiguous messages are listed for the operator"
        );
        eprintln!(
            "{backend}: {n} recipients, killed at {at_kill} received; after restart sent {sent}, ambiguous {ambiguous}, received {} (none twice), without a message {missing}",
            lines.len()
        );
    }
}
