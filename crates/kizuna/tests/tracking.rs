//! Issue 3 end to end, against the real `kizuna` binary: the official Segment and RudderStack
//! Python SDKs, the `/kizuna.js` snippet in headless Chromium (over WebDriver), `kill -9` right
//! after a 200, a replayed batch, and `kizuna import events`.
//!
//! Peers (installed by `scripts/test-peers`): python3 with `segment-analytics-python` and
//! `rudder-sdk-python`; Debian `chromium` and `chromium-driver`. PostgreSQL runs too when
//! `KIZUNA_TEST_DATABASE_URL` is set.

use kizuna_store::db::One;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{Db, Server};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

async fn api(base: &str, key: &str, path: &str) -> Value {
    let res = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{path}: {}", res.status());
    res.json().await.unwrap()
}

async fn contact_by_email(base: &str, key: &str, email: &str) -> Value {
    let page = api(base, key, &format!("/api/v1/contacts?email={email}")).await;
    page["data"][0].clone()
}

async fn timeline(base: &str, key: &str, id: &str) -> Vec<Value> {
    api(
        base,
        key,
        &format!("/api/v1/contacts/{id}/timeline?limit=1000"),
    )
    .await["data"]
        .as_array()
        .unwrap()
        .clone()
}

fn python(script: &str, args: &[&str]) {
    // The same interpreter scripts/test-peers installs the SDKs into.
    let py = std::env::var("KIZUNA_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 (install the SDKs with scripts/test-peers)");
    assert!(
        out.status.success(),
        "python SDK script failed (run scripts/test-peers?): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const SEGMENT_PY: &str = r#"
import sys
import segment.analytics as analytics
analytics.write_key = sys.argv[1]
analytics.host = sys.argv[2]
analytics.sync_mode = True
analytics.gzip = True
errors = []
analytics.on_error = lambda e, batch: errors.append(repr(e))
analytics.identify('py-user-1', {'email': 'Py.User@Example.co.jp', 'firstName': 'Taro', 'lastName': 'Yamada', 'title': '部長'})
analytics.track('py-user-1', 'Trial Started', {'plan': 'pro', 'seats': 5})
analytics.page('py-user-1', 'Docs', 'Getting Started', {'url': 'https://example.jp/docs?utm_source=google&utm_medium=cpc', 'path': '/docs'})
analytics.group('py-user-1', 'org-9', {'name': '株式会社ヤマダ', 'employees': 120, 'industry': '製造業'})
analytics.flush()
if errors:
    print(errors)
    sys.exit(1)
"#;

const RUDDER_PY: &str = r#"
import sys
import rudderstack.analytics as rudder_analytics
rudder_analytics.write_key = sys.argv[1]
rudder_analytics.dataPlaneUrl = sys.argv[2]
rudder_analytics.sync_mode = True
errors = []
rudder_analytics.on_error = lambda e, batch: errors.append(repr(e))
rudder_analytics.identify('rs-user-7', {'email': 'rs.user@example.co.jp', 'name': '鈴木 一郎'})
rudder_analytics.track('rs-user-7', 'Webinar Attended', {'webinar': 'MA入門'})
rudder_analytics.flush()
if errors:
    print(errors)
    sys.exit(1)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn real_sdks_identify_track_page_and_group() {
    for db in Db::all().await {
        let n = db.name;
        let wk = db.last_line(&["write-key", "create", "--name", "sdk"]);
        let key = db.last_line(&["api-key", "create", "--name", "t", "--scope", "read"]);
        let server = Server::start(&db);
        let base = server.base.clone();
        python(SEGMENT_PY, &[&wk, &base]);
        python(RUDDER_PY, &[&wk, &base]);

        let c = contact_by_email(&base, &key, "py.user@example.co.jp").await;
        assert_eq!(c["first_name"], "Taro", "{n}: {c}");
        assert_eq!(c["last_name"], "Yamada");
        assert_eq!(c["job_title"], "部長");
        assert!(
            c["company_id"].is_string(),
            "{n}: the group linked a company"
        );
        let tl = timeline(&base, &key, c["id"].as_str().unwrap()).await;
        let find = |t: &str| {
            tl.iter()
                .find(|e| e["type"] == t)
                .cloned()
                .unwrap_or(Value::Null)
        };
        assert_eq!(find("Trial Started")["properties"]["plan"], "pro", "{n}");
        assert_eq!(find("page.viewed")["properties"]["name"], "Getting Started");
        assert_eq!(find("page.viewed")["properties"]["category"], "Docs");
        assert_eq!(find("company.linked")["properties"]["group_id"], "org-9");
        for t in [
            "contact.identified",
            "Trial Started",
            "page.viewed",
            "company.linked",
        ] {
            assert_eq!(find(t)["source"], "sdk", "{n}: {t}");
        }
        let company = api(
            &base,
            &key,
            &format!("/api/v1/companies/{}", c["company_id"].as_str().unwrap()),
        )
        .await;
        assert_eq!(company["employee_count"], 120, "{n}: {company}");

        let r = contact_by_email(&base, &key, "rs.user@example.co.jp").await;
        assert_eq!(
            (r["last_name"].as_str(), r["first_name"].as_str()),
            (Some("鈴木"), Some("一郎")),
            "{n}: {r}"
        );
        let rtl = timeline(&base, &key, r["id"].as_str().unwrap()).await;
        let w = rtl
            .iter()
            .find(|e| e["type"] == "Webinar Attended")
            .expect("rudder track");
        assert_eq!(
            (w["source"].as_str(), w["properties"]["webinar"].as_str()),
            (Some("sdk"), Some("MA入門"))
        );

        // A replayed batch (an SDK retry after a lost response) counts once.
        let batch = json!({"writeKey": wk, "batch": [
            {"type": "track", "userId": "py-user-1", "event": "Invoice Paid", "messageId": "retry-1"},
            {"type": "track", "userId": "py-user-1", "event": "Invoice Paid", "messageId": "retry-2"}]});
        for _ in 0..3 {
            let res = reqwest::Client::new()
                .post(format!("{base}/v1/batch"))
                .json(&batch)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 200);
        }
        let tl = timeline(&base, &key, c["id"].as_str().unwrap()).await;
        assert_eq!(
            tl.iter().filter(|e| e["type"] == "Invoice Paid").count(),
            2,
            "{n}: each once"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_right_after_a_200_loses_nothing() {
    for db in Db::all().await {
        let n = db.name;
        let wk = db.last_line(&["write-key", "create", "--name", "site"]);
        let mut server = Server::start(&db);
        let base = server.base.clone();
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for b in 0..12 {
            let batch: Vec<Value> = (0..50)
                .map(|i| json!({"type": "track", "anonymousId": format!("v{}", i % 7), "event": "Viewed", "messageId": format!("k{b}-{i}")}))
                .collect();
            let (client, url, body) = (
                client.clone(),
                format!("{base}/v1/batch"),
                json!({"batch": batch, "writeKey": wk}),
            );
            tasks.push(tokio::spawn(async move {
                match client.post(url).json(&body).send().await {
                    Ok(r) => r.status().as_u16() == 200,
                    Err(_) => false,
                }
            }));
        }
        // Kill the server the moment the first request is acknowledged.
        let mut acked = Vec::new();
        let mut pending: Vec<(usize, tokio::task::JoinHandle<bool>)> =
            tasks.into_iter().enumerate().collect();
        let started = Instant::now();
        while acked.is_empty() && started.elapsed() < Duration::from_secs(60) {
            let mut rest = Vec::new();
            for (b, t) in pending {
                if t.is_finished() {
                    if t.await.unwrap() {
                        acked.push(b);
                    }
                } else {
                    rest.push((b, t));
                }
            }
            pending = rest;
            tokio::task::yield_now().await;
        }
        server.kill_9();
        for (b, t) in pending {
            if t.await.unwrap() {
                acked.push(b);
            }
        }
        assert!(!acked.is_empty(), "{n}: some request was acknowledged");

        let store = db.open().await;
        let ids: Vec<One<String>> = store
            .db()
            .reader()
            .fetch_all(
                "SELECT message_id FROM events WHERE message_id IS NOT NULL",
                vec![],
            )
            .await
            .unwrap();
        let ids: std::collections::HashSet<String> = ids.into_iter().map(|r| r.0).collect();
        for b in 0..12 {
            let have = (0..50)
                .filter(|i| ids.contains(&format!("k{b}-{i}")))
                .count();
            if acked.contains(&b) {
                assert_eq!(have, 50, "{n}: acknowledged batch {b} is complete");
            } else {
                assert!(
                    have == 0 || have == 50,
                    "{n}: batch {b} is all or nothing ({have})"
                );
            }
        }
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn import_events_from_csv_by_email_all_or_nothing() {
    let db = Db::sqlite();
    let out = db.run(&[
        "import",
        "contacts",
        fixture("tradeshow-2026-10.utf8.csv").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("seminar-bad.csv");
    std::fs::write(
        &bad,
        "メールアドレス,イベント,日時,セミナー名\n\
         Taro.Yamada@yamada-shoji.co.jp,seminar.attended,2026/10/20 14:00,秋のDXセミナー\n\
         nobody@example.jp,seminar.attended,2026/10/20 14:00,秋のDXセミナー\n",
    )
    .unwrap();
    let out = db.run(&["import", "events", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("row 3") && err.contains("nothing was imported"),
        "{err}"
    );

    // The same people visited the booth (one type for the whole file, a time column).
    let good = dir.path().join("booth.csv");
    let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode(
        "メールアドレス,日時,ブース\nTaro.Yamada@yamada-shoji.co.jp,2026/10/14 11:00,A-12\nhanako.tanaka@yamada-shoji.co.jp,2026/10/14 11:30,A-12\n",
    );
    std::fs::write(&good, &sjis).unwrap();
    let args = [
        "import",
        "events",
        good.to_str().unwrap(),
        "--event",
        "tradeshow.visited",
    ];
    let out = db.run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported 2 events"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = db.run(&args);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported 0 events"),
        "a re-import adds nothing"
    );

    let store = db.open().await;
    let taro = store
        .contact_by_email("taro.yamada@yamada-shoji.co.jp")
        .await
        .unwrap()
        .unwrap();
    let tl = store
        .timeline(
            taro.id,
            &kizuna_store::events::TimelineFilter {
                types: vec!["tradeshow.*".into()],
            },
            None,
            10,
        )
        .await
        .unwrap()
        .data;
    assert_eq!(tl.len(), 1);
    assert_eq!(tl[0].source, "import");
    assert_eq!(tl[0].properties["ブース"], "A-12");
    assert_eq!(
        tl[0].occurred_at.to_rfc3339(),
        "2026-10-14T02:00:00+00:00",
        "11:00 in Japan"
    );
    assert_eq!(tl[0].context.as_ref().unwrap()["detail"], "booth.csv");
}

// ---- the snippet in headless Chromium ----

/// A WebDriver session on Debian's chromedriver + chromium.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start(profile: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver; run scripts/test-peers)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..200 {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "chromedriver did not start");
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--no-first-run", "--disable-sync", "--disable-component-update",
                     format!("--user-data-dir={}", profile.display())]}}}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
        }
    }

    async fn cmd(&self, path: &str, body: Value) -> Value {
        let v: Value = self
            .http
            .post(format!("{}/session/{}/{path}", self.base, self.session))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v["value"].get("error").is_none(), "{path}: {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd("url", json!({"url": url})).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd("execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Waits until the snippet has sent everything it queued.
    async fn drained(&self) {
        for _ in 0..400 {
            let left = self
                .js("return window.kizuna && window.kizuna.loaded ? JSON.parse(localStorage.getItem('kz_queue') || '[]').length : -1")
                .await;
            if left == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the snippet did not send its queue");
    }

    async fn quit(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The customer's web site (another origin than Kizuna), each page carrying the one-line install.
async fn site(kizuna: String, write_key: String) -> String {
    use axum::extract::Path as P;
    use axum::response::Html;
    let tag = format!(
        r#"<script async src="{kizuna}/kizuna.js" data-write-key="{write_key}" data-flush-interval="100" data-respect-dnt></script>"#
    );
    let page = move |P(name): P<String>| {
        let tag = tag.clone();
        async move {
            let body = match name.as_str() {
                "whitepaper" => {
                    r#"<a id="dl" href="/files/guide.pdf">資料ダウンロード</a>
                    <script>document.addEventListener("click", function (e) { e.preventDefault(); });</script>"#
                }
                "contact" => {
                    r#"<form id="f" action="/thanks" method="get">
                    <input type="email" name="email"><input name="lastName"><button>送信</button></form>"#
                }
                "dnt" => "",
                _ => "<p>…</p>",
            };
            let pre = if name == "dnt" {
                r#"<script>Object.defineProperty(Navigator.prototype, "doNotTrack", {get: function () { return "1"; }});</script>"#
            } else {
                ""
            };
            Html(format!(
                "<!doctype html><html><head><meta charset=utf-8><title>{name}</title>{pre}{tag}</head><body>{body}</body></html>"
            ))
        }
    };
    let app = axum::Router::new().route("/{name}", axum::routing::get(page));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn snippet_in_chromium_merges_the_anonymous_session_on_identify() {
    let db = Db::sqlite();
    // Hanako was met at a trade show: imported from the business-card CSV.
    let out = db.run(&[
        "import",
        "contacts",
        fixture("tradeshow-2026-10.utf8.csv").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wk = db.last_line(&["write-key", "create", "--name", "www"]);
    let key = db.last_line(&["api-key", "create", "--name", "t", "--scope", "read"]);
    let server = Server::start(&db);
    let kz = server.base.clone();
    let www = site(kz.clone(), wk).await;
    let before = contact_by_email(&kz, &key, "hanako.tanaka@yamada-shoji.co.jp").await;
    let contacts_before = api(&kz, &key, "/api/v1/contacts?limit=1000").await["data"]
        .as_array()
        .unwrap()
        .len();

    let profile = tempfile::tempdir().unwrap();
    let b = Browser::start(profile.path()).await;

    // A visitor with Do-Not-Track set (and the site respecting it) sends nothing.
    b.goto(&format!("{www}/dnt")).await;
    assert_eq!(b.js("return window.kizuna.disabled").await, true);
    let dnt_id = b.js("return window.kizuna.anonymousId()").await;
    assert_eq!(
        b.js("return document.cookie").await,
        "",
        "no cookie under DNT"
    );

    // Anonymous browsing: a newsletter link, then pricing, then a download.
    b.goto(&format!(
        "{www}/landing?utm_source=newsletter&utm_medium=email&utm_campaign=autumn"
    ))
    .await;
    b.drained().await;
    let anon = b.js("return window.kizuna.anonymousId()").await;
    assert_ne!(anon, dnt_id);
    assert!(
        b.js("return document.cookie")
            .await
            .as_str()
            .unwrap()
            .contains(anon.as_str().unwrap()),
        "first-party cookie"
    );
    b.goto(&format!("{www}/pricing")).await;
    b.drained().await;
    assert_eq!(
        b.js("return window.kizuna.anonymousId()").await,
        anon,
        "the cookie keeps the id across pages"
    );
    b.goto(&format!("{www}/whitepaper")).await;
    b.js("document.getElementById('dl').click()").await;
    b.drained().await;
    let store = db.open().await;
    let profile_id = store
        .contact_by_identity("anonymous_id", anon.as_str().unwrap())
        .await
        .unwrap()
        .expect("an anonymous profile");
    assert_ne!(profile_id.to_string(), before["id"].as_str().unwrap());
    assert!(
        store
            .contact_by_identity("anonymous_id", dnt_id.as_str().unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // The contact form identifies her.
    b.goto(&format!("{www}/contact")).await;
    b.js("document.querySelector('input[type=email]').value = 'Hanako.Tanaka@yamada-shoji.co.jp'; document.getElementById('f').requestSubmit();").await;
    for _ in 0..200 {
        if b.js("return location.pathname").await == "/thanks" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    b.drained().await;
    let id = before["id"].as_str().unwrap();
    let mut tl = Vec::new();
    for _ in 0..200 {
        tl = timeline(&kz, &key, id).await;
        if tl.iter().any(|e| e["type"] == "form.submitted")
            && tl
                .iter()
                .any(|e| e["type"] == "page.viewed" && e["properties"]["path"] == "/thanks")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    b.quit().await;

    let types: Vec<&str> = tl.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in [
        "page.viewed",
        "content.downloaded",
        "form.submitted",
        "contact.identified",
        "contact.merged",
    ] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
    let paths: Vec<&str> = tl
        .iter()
        .filter(|e| e["type"] == "page.viewed")
        .map(|e| e["properties"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/thanks", "/contact", "/whitepaper", "/pricing", "/landing"],
        "newest first, the anonymous pages included"
    );
    assert!(
        tl.iter()
            .filter(|e| e["type"] != "contact.merged"
                && e["type"] != "contact.created"
                && e["type"] != "contact.updated")
            .all(|e| e["source"] == "snippet")
    );
    let landing = tl
        .iter()
        .find(|e| e["properties"]["path"] == "/landing")
        .unwrap();
    assert_eq!(landing["context"]["context"]["campaign"]["name"], "autumn");
    assert_eq!(
        landing["context"]["context"]["library"]["name"],
        "kizuna.js"
    );
    let dl = tl
        .iter()
        .find(|e| e["type"] == "content.downloaded")
        .unwrap();
    assert!(
        dl["properties"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/files/guide.pdf")
    );

    let after = contact_by_email(&kz, &key, "hanako.tanaka@yamada-shoji.co.jp").await;
    assert_eq!(after["id"], before["id"], "the imported contact survives");
    assert_eq!(after["first_name"], before["first_name"]);
    assert_eq!(
        after["source"]["channel"], "offline",
        "first touch stays the trade show, which came first"
    );
    assert_eq!(
        store
            .contact_by_identity("anonymous_id", anon.as_str().unwrap())
            .await
            .unwrap()
            .map(|u| u.to_string())
            .as_deref(),
        Some(id),
        "the cookie now belongs to her"
    );
    assert!(
        store.contact(profile_id).await.is_err(),
        "the anonymous profile is folded in"
    );
    let contacts_after = api(&kz, &key, "/api/v1/contacts?limit=1000").await["data"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(contacts_after, contacts_before, "no stray contacts");
}
