//! The `kizuna` binary as an operator uses it: real processes, real files, real HTTP on loopback.
//! Server tests run on SQLite always and also on PostgreSQL when `KIZUNA_TEST_DATABASE_URL` is set.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::BIN;
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

fn kizuna(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("KIZUNA_DATABASE_URL")
        .env_remove("KIZUNA_DATA_DIR")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kizuna")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The secret printed alone on the last line of stdout.
fn last_line(o: &Output) -> String {
    stdout(o)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A running `kizuna serve`, stopped with SIGTERM on drop.
struct Served {
    child: Child,
    base: String,
    log: Vec<String>,
}

impl Served {
    fn start(dir: &Path, extra: &[&str]) -> Served {
        Served::start_with(dir, extra, &[])
    }

    fn start_with(dir: &Path, extra: &[&str], env: &[(&str, String)]) -> Served {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = Command::new(BIN)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(dir)
            .env_remove("KIZUNA_DATABASE_URL")
            .env_remove("KIZUNA_DATA_DIR")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kizuna serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = Vec::new();
        let base = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("server exited before listening:\n{}", log.join("\n")))
                .unwrap();
            log.push(line.clone());
            if let Some(i) = line.find("listening on http://") {
                let addr = line[i + "listening on ".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string();
                break addr;
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Served { child, base, log }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status (within 20 s).
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(url: &str, key: Option<&str>) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().get(url);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    })
}

/// Store flags for each backend: SQLite in `dir`, and PostgreSQL in a fresh schema when the test
/// database is configured.
fn backends(dir: &Path) -> Vec<(&'static str, Vec<String>)> {
    let mut out = vec![(
        "sqlite",
        vec!["--data-dir".into(), dir.join("data").display().to_string()],
    )];
    if let Ok(url) = std::env::var("KIZUNA_TEST_DATABASE_URL") {
        let schema = format!("cli_{}", uuid::Uuid::now_v7().simple());
        let status = Command::new("psql")
            .args([url.as_str(), "-qc", &format!("CREATE SCHEMA {schema}")])
            .status()
            .expect("psql");
        assert!(status.success());
        let sep = if url.contains('?') { '&' } else { '?' };
        out.push((
            "postgres",
            vec![
                "--database-url".into(),
                format!("{url}{sep}options[search_path]={schema}"),
            ],
        ));
    }
    out
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn serve_needs_no_flags_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    // No store flags at all: the data lives in ./kizuna-data on SQLite.
    let server = Served::start(dir.path(), &[]);
    assert!(dir.path().join("kizuna-data/kizuna.sqlite").exists());
    let (status, body) = get(&server.url("/healthz"), None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get(&server.url("/api/v1/contacts"), None);
    assert_eq!(status, 401, "the API needs a key: {body}");
    let st = server.stop();
    assert!(st.success(), "SIGTERM is a clean exit, got {st}");
}

#[test]
fn demo_data_and_a_key_are_one_flag_away() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, store) in backends(dir.path()) {
        let mut args = strs(&store);
        args.push("--demo");
        let server = Served::start(dir.path(), &args);
        let log = server.log.join("\n");
        let key = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("Demo admin API key (shown once): "))
            .unwrap_or_else(|| panic!("{backend}: no demo key printed:\n{log}"))
            .trim()
            .to_string();
        let (status, page) = get(&server.url("/api/v1/contacts?limit=1000"), Some(&key));
        assert_eq!(status, 200, "{backend}: {page}");
        let contacts = page["data"].as_array().unwrap();
        assert_eq!(contacts.len(), 1000, "{backend}");
        assert!(
            contacts.iter().any(|c| c["last_name"]
                .as_str()
                .is_some_and(|n| n.chars().any(|ch| ('\u{4e00}'..='\u{9fff}').contains(&ch)))),
            "{backend}: Japanese names among the sample contacts"
        );
        assert!(
            contacts.iter().any(|c| c["company_id"].is_string()),
            "{backend}: contacts belong to companies"
        );
        assert!(server.stop().success());
        // A second start keeps the data and loads nothing twice.
        let server = Served::start(dir.path(), &args);
        assert!(
            server
                .log
                .iter()
                .any(|l| l.contains("already has contacts")),
            "{backend}: {:?}",
            server.log
        );
        assert!(server.stop().success());
    }
}

#[test]
fn api_keys_print_alone_on_the_last_line_and_work() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, store) in backends(dir.path()) {
        let mut args = vec!["api-key", "create", "--name", "ci", "--scope", "read"];
        args.extend(strs(&store));
        let o = kizuna(dir.path(), &args);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let key = last_line(&o);
        assert!(!key.contains(' ') && key.len() > 20, "{backend}: {key:?}");
        let mut wargs = vec!["write-key", "create", "--name", "web site"];
        wargs.extend(strs(&store));
        let w = kizuna(dir.path(), &wargs);
        assert!(w.status.success(), "{}", stderr(&w));
        assert!(!last_line(&w).is_empty());

        let server = Served::start(dir.path(), &strs(&store));
        assert_eq!(
            get(&server.url("/api/v1/contacts"), Some(&key)).0,
            200,
            "{backend}"
        );
        assert_eq!(get(&server.url("/api/v1/contacts"), Some("kz_nope")).0, 401);
        assert!(server.stop().success());
    }
}

#[test]
fn a_shift_jis_card_list_imports_merges_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("{FIXTURES}/tradeshow-2026-10.sjis.csv");
    for (backend, store) in backends(dir.path()) {
        let mut args = vec![
            "import",
            "contacts",
            &file,
            "--map",
            "会社名=company_name",
            "--list",
            "Trade show 2026-10",
        ];
        args.extend(strs(&store));
        let o = kizuna(dir.path(), &args);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains("imported 12 rows"), "{backend}: {out}");
        assert!(out.contains("11 created"), "{backend}: {out}");
        assert!(out.contains("shift_jis"), "{backend}: {out}");

        // Importing the UTF-8 copy of the same cards creates nobody new.
        let utf8 = format!("{FIXTURES}/tradeshow-2026-10.utf8.csv");
        let mut again = vec!["import", "contacts", utf8.as_str()];
        again.extend(strs(&store));
        let o = kizuna(dir.path(), &again);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("0 created"), "{}", stdout(&o));

        let out_file = dir.path().join(format!("{backend}-export.csv"));
        let out_path = out_file.display().to_string();
        let mut exp = vec![
            "export",
            "contacts",
            "--list",
            "Trade show 2026-10",
            "--out",
            &out_path,
        ];
        exp.extend(strs(&store));
        let o = kizuna(dir.path(), &exp);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let text = std::fs::read_to_string(&out_file).unwrap();
        let mut r = csv::Reader::from_reader(text.trim_start_matches('\u{feff}').as_bytes());
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 11, "{backend}: one row per person:\n{text}");
        assert!(text.contains("山田") && text.contains("taro.yamada@yamada-shoji.co.jp"));
        assert_eq!(
            text.matches("taro.yamada@yamada-shoji.co.jp").count(),
            1,
            "the duplicate card merged"
        );
    }
}

#[test]
fn one_bad_row_imports_nothing_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("seminar.csv");
    std::fs::write(
        &bad,
        "email,last_name,employees\r\nok@example.com,山田,10\r\nbroken-address,佐藤,20\r\nok2@example.com,鈴木,30\r\n",
    )
    .unwrap();
    let bad = bad.display().to_string();
    for (backend, store) in backends(dir.path()) {
        let mut args = vec!["import", "contacts", bad.as_str(), "--map", "employees=-"];
        args.extend(strs(&store));
        let o = kizuna(dir.path(), &args);
        assert_eq!(o.status.code(), Some(1), "{backend}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("row 3") && err.contains("broken-address"),
            "{backend}: {err}"
        );
        assert!(err.contains("nothing was imported"), "{err}");

        let out_file = dir.path().join(format!("{backend}-after-bad.csv"));
        let out_path = out_file.display().to_string();
        let mut exp = vec!["export", "contacts", "--out", out_path.as_str()];
        exp.extend(strs(&store));
        assert!(kizuna(dir.path(), &exp).status.success());
        let text = std::fs::read_to_string(&out_file).unwrap();
        assert!(
            !text.contains("ok@example.com"),
            "{backend}: nothing half-imported:\n{text}"
        );

        // --skip-invalid imports the two good rows.
        args.push("--skip-invalid");
        let o = kizuna(dir.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains("1 invalid rows skipped"),
            "{}",
            stdout(&o)
        );
    }
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let o = kizuna(
        dir.path(),
        &["import", "contacts", "nope.csv", "--encoding", "latin1"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("latin1"), "{}", stderr(&o));
    let o = kizuna(dir.path(), &["serve", "--database-url", "mysql://x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unsupported database URL"),
        "{}",
        stderr(&o)
    );
    let o = kizuna(dir.path(), &["migrate", "--data-dir", "d"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("schema at version"), "{}", stdout(&o));
}

#[test]
fn demo_generates_realistic_contacts() {
    let dir = tempfile::tempdir().unwrap();
    let o = kizuna(
        dir.path(),
        &["demo", "--contacts", "300", "--data-dir", "d"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("created 300 contacts"),
        "{}",
        stdout(&o)
    );
    let o = kizuna(
        dir.path(),
        &["export", "contacts", "--out", "all.csv", "--data-dir", "d"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.path().join("all.csv")).unwrap();
    let mut r = csv::Reader::from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let headers = r.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 300);
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let titles: std::collections::HashSet<&str> =
        rows.iter().map(|r| &r[col("job_title")]).collect();
    assert!(titles.len() >= 5, "varied titles: {titles:?}");
    let emails: std::collections::HashSet<&str> = rows.iter().map(|r| &r[col("email")]).collect();
    assert_eq!(emails.len(), 300, "distinct e-mails");
}

fn send(
    method: &str,
    url: &str,
    auth: (&str, Option<&str>),
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let req = reqwest::Client::new().request(method.parse().unwrap(), url);
        let req = match auth {
            ("bearer", Some(k)) => req.bearer_auth(k),
            ("basic", Some(k)) => req.basic_auth(k, Some("")),
            _ => req,
        };
        let res = req.json(&body).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    })
}

/// The running server wires tracking to the engine: a visitor identified and tracked through
/// `/v1/*` enters a behavioural segment without any API call or restart.
#[test]
fn tracked_events_reach_the_engine_in_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, store) in backends(dir.path()) {
        let mut args = vec!["api-key", "create", "--name", "ci", "--scope", "admin"];
        args.extend(strs(&store));
        let key = last_line(&kizuna(dir.path(), &args));
        let mut wargs = vec!["write-key", "create", "--name", "web site"];
        wargs.extend(strs(&store));
        let wk = last_line(&kizuna(dir.path(), &wargs));
        let server = Served::start(dir.path(), &strs(&store));
        let bearer = ("bearer", Some(key.as_str()));
        let (st, seg) = send(
            "POST",
            &server.url("/api/v1/segments"),
            bearer,
            serde_json::json!({"name": "Demo requesters",
                "filter": {"event": "Demo Requested", "where": [{"property": "plan", "op": "eq", "value": "pro"}]}}),
        );
        assert_eq!(st, 201, "{backend}: {seg}");
        let basic = ("basic", Some(wk.as_str()));
        let (st, _) = send(
            "POST",
            &server.url("/v1/identify"),
            basic,
            serde_json::json!({"anonymousId": "anon-1", "userId": "u-1", "traits": {"email": "Taro@Example.co.jp"}}),
        );
        assert_eq!(st, 200, "{backend}");
        // Another plan does not match: only the second track counts.
        for plan in ["free", "pro"] {
            let (st, _) = send(
                "POST",
                &server.url("/v1/track"),
                basic,
                serde_json::json!({"userId": "u-1", "event": "Demo Requested", "properties": {"plan": plan}}),
            );
            assert_eq!(st, 200, "{backend}");
        }
        let (_, found) = get(
            &server.url("/api/v1/contacts?email=taro@example.co.jp"),
            Some(&key),
        );
        let cid = found["data"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{backend}: {found}"))
            .to_string();
        // The engine runs beside the server; wait (bounded) for it to catch up with the log.
        let deadline = Instant::now() + Duration::from_secs(20);
        let segs = loop {
            let (_, segs) = get(
                &server.url(&format!("/api/v1/contacts/{cid}/segments")),
                Some(&key),
            );
            if segs["data"].as_array().is_some_and(|a| !a.is_empty()) || Instant::now() > deadline {
                break segs;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            segs["data"][0]["name"], "Demo requesters",
            "{backend}: {segs}"
        );
        let (_, members) = get(
            &server.url(&format!(
                "/api/v1/segments/{}/members",
                seg["id"].as_str().unwrap()
            )),
            Some(&key),
        );
        assert_eq!(
            members["data"].as_array().map(Vec::len),
            Some(1),
            "{backend}: {members}"
        );
        assert!(server.stop().success(), "{backend}");
    }
}

/// `kizuna apply` takes e-mail templates with the program that sends them (templates first, so
/// the program can name them); a re-run changes nothing; a broken template applies nothing.
#[test]
fn apply_takes_email_templates_with_the_programs_that_send_them() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, store) in backends(dir.path()) {
        let file = dir.path().join(format!("{backend}-nurture.json"));
        let docs = serde_json::json!([
            {"kind": "email_template", "name": "welcome-1", "subject": "{{ contact.last_name }}様、ようこそ",
             "mjml": "<mjml><mj-body><mj-section><mj-column><mj-text>ご登録ありがとうございます</mj-text></mj-column></mj-section></mj-body></mjml>"},
            {"kind": "program", "name": "Welcome from files", "triggers": [{"type": "api"}],
             "steps": [{"id": "m1", "type": "send_email", "template": "welcome-1"}]}
        ]);
        std::fs::write(&file, docs.to_string()).unwrap();
        let path = file.display().to_string();
        let mut args = vec!["apply", path.as_str()];
        args.extend(strs(&store));
        let o = kizuna(dir.path(), &args);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.contains("created email_template \"welcome-1\""),
            "{backend}: {out}"
        );
        assert!(out.contains("program"), "{backend}: {out}");
        let o = kizuna(dir.path(), &args);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        assert!(
            stdout(&o).contains("unchanged email_template \"welcome-1\""),
            "{backend}: {}",
            stdout(&o)
        );

        // A template that does not compile: named by document and part, nothing applied.
        let bad = dir.path().join(format!("{backend}-bad.json"));
        std::fs::write(
            &bad,
            serde_json::json!([
                {"kind": "email_template", "name": "broken", "subject": "{{ contact.last_name", "html": "<p>x</p>"},
                {"kind": "segment", "name": "Should not exist", "filter": {"consent": "email"}}
            ])
            .to_string(),
        )
        .unwrap();
        let bad_path = bad.display().to_string();
        let mut args = vec!["apply", bad_path.as_str()];
        args.extend(strs(&store));
        let o = kizuna(dir.path(), &args);
        assert!(!o.status.success(), "{backend}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains("-bad.json[0]: template:") && err.contains("nothing was applied"),
            "{backend}: {err}"
        );
        let mut args = vec!["apply", bad_path.as_str()];
        args.extend(strs(&store));
        // A template type that does not exist is named by its field.
        std::fs::write(
            &bad,
            serde_json::json!([
                {"kind": "email_template", "name": "broken", "type": "newsletter", "subject": "s", "html": "<p>x</p>"}
            ])
            .to_string(),
        )
        .unwrap();
        let o = kizuna(dir.path(), &args);
        assert!(
            stderr(&o).contains("-bad.json[0]: type: marketing or transactional"),
            "{backend}: {}",
            stderr(&o)
        );
    }
}

/// On MQL, the owner gets an e-mail alert (policy `email_owner`) through the configured SMTP
/// server — a real aiosmtpd — with the context a rep needs: who, which company, the score and
/// the rules behind it.
#[test]
fn the_owner_gets_an_email_alert_with_the_context_of_the_handoff() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, store) in backends(dir.path()) {
        let maildir = dir.path().join(format!("{backend}-maildir"));
        let (smtp, smtp_port) = support::smtp::start_aiosmtpd(&maildir);
        let mut args = vec!["api-key", "create", "--name", "ci", "--scope", "admin"];
        args.extend(strs(&store));
        let key = last_line(&kizuna(dir.path(), &args));
        let server = Served::start_with(
            dir.path(),
            &strs(&store),
            &[
                ("KIZUNA_SMTP_HOST", "127.0.0.1".to_string()),
                ("KIZUNA_SMTP_PORT", smtp_port.to_string()),
            ],
        );
        let bearer = ("bearer", Some(key.as_str()));
        for (path, body) in [
            (
                "/api/v1/users",
                serde_json::json!({"email": "rep@kizuna.example.jp", "name": "営業 一郎"}),
            ),
            (
                "/api/v1/senders",
                serde_json::json!({"name": "Kizuna", "email": "alerts@kizuna.example.jp",
                "organization": "株式会社キズナ", "postal_address": "東京都千代田区1-1"}),
            ),
            (
                "/api/v1/scoring-models",
                serde_json::json!({"name": "quick", "lifecycle": true, "behaviour": [
                {"id": "form", "label": "Contact form", "event": "form.submitted", "points": 30}],
                "mql": {"score": 20}}),
            ),
        ] {
            let (st, b) = send("POST", &server.url(path), bearer, body);
            assert_eq!(st, 201, "{backend}: {path}: {b}");
        }
        let (st, b) = send(
            "PUT",
            &server.url("/api/v1/handoff-policy"),
            bearer,
            serde_json::json!({"round_robin": ["rep@kizuna.example.jp"], "email_owner": true}),
        );
        assert!(st == 200 || st == 204, "{backend}: {st} {b}");
        let (st, co) = send(
            "POST",
            &server.url("/api/v1/companies"),
            bearer,
            serde_json::json!({"name": "山田製作所"}),
        );
        assert_eq!(st, 201, "{backend}: {co}");
        let (st, b) = send(
            "POST",
            &server.url("/api/v1/contacts"),
            bearer,
            serde_json::json!({"email": "buyer@yamada.example.jp", "last_name": "山田", "first_name": "花子",
                "company_id": co["id"]}),
        );
        assert_eq!(st, 201, "{backend}: {b}");
        let (st, b) = send(
            "POST",
            &server.url("/api/v1/events"),
            bearer,
            serde_json::json!({"events": [{"email": "buyer@yamada.example.jp", "type": "form.submitted",
                "occurred_at": chrono::Utc::now().to_rfc3339(), "properties": {"form": "contact"}}]}),
        );
        assert!(st == 200 || st == 201, "{backend}: {b}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let raw = loop {
            if let Some(m) = support::smtp::maildir_messages(&maildir).into_iter().next() {
                break m;
            }
            assert!(
                Instant::now() < deadline,
                "{backend}: no alert arrived; server log:\n{}",
                server.log.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let m = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let to = m
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or_default()
            .to_string();
        assert_eq!(to, "rep@kizuna.example.jp", "{backend}");
        let subject = m.subject().unwrap_or_default().to_string();
        assert!(
            subject.contains("山田 花子") && subject.contains("山田製作所"),
            "{backend}: {subject}"
        );
        let text = m.body_text(0).unwrap_or_default().to_string();
        assert!(
            text.contains("buyer@yamada.example.jp"),
            "{backend}: {text}"
        );
        assert!(
            text.contains("Contact form"),
            "{backend}: the rule behind the score: {text}"
        );
        assert!(
            text.contains("form.submitted"),
            "{backend}: recent activity: {text}"
        );
        assert!(server.stop().success(), "{backend}");
        drop(smtp);
    }
}
