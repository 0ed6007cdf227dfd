//! The tracking endpoints over real HTTP on loopback, on every backend: paths, auth, bodies,
//! limits, CORS, overload, the timeline and offline-events API; and an HTTP-level fuzz (no
//! input gives a 5xx or a panic).

use chrono::{DateTime, TimeZone, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use kizuna_core::clock::{ManualClock, SharedClock};
use kizuna_store::ingestor::{Ingestor, IngestorConfig};
use kizuna_store::keys::Scope;
use kizuna_store::{Store, StoreConfig};
use kizuna_web::tracking::Tracking;
use kizuna_web::{AppState, WebConfig};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::io::Write;
use std::sync::Arc;
use uuid::Uuid;

struct Server {
    base: String,
    store: Store,
    write_key: String,
    api_key: String,
    name: &'static str,
    tracking: Arc<Tracking>,
    _dir: Option<tempfile::TempDir>,
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 10, 14, 9, 0, 0).unwrap()
}

async fn stores() -> Vec<(Store, &'static str, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&StoreConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut out = vec![(sqlite, "sqlite", Some(dir))];
    if let Ok(url) = std::env::var("KIZUNA_TEST_DATABASE_URL") {
        let pg = Store::open(&StoreConfig {
            database_url: Some(url),
            pg_schema: Some(format!("t_{}", Uuid::now_v7().simple())),
            max_connections: 4,
            ..Default::default()
        })
        .await
        .expect("PostgreSQL not reachable");
        out.push((pg, "postgres", None));
    }
    out
}

fn state(store: &Store, config: IngestorConfig) -> AppState {
    let clock: SharedClock = Arc::new(ManualClock::new(t0()));
    AppState {
        store: store.clone(),
        clock: clock.clone(),
        config: Arc::new(WebConfig::default()),
        tracking: Arc::new(Tracking::new(Ingestor::start(
            store.clone(),
            clock,
            config,
            None,
        ))),
    }
}

async fn servers(config: IngestorConfig) -> Vec<Server> {
    let mut out = Vec::new();
    for (store, name, dir) in stores().await {
        let write_key = store.create_write_key("site", t0()).await.unwrap();
        let (_, api_key) = store
            .create_api_key("t", &[Scope::Admin], t0())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state(&store, config.clone());
        let tracking = st.tracking.clone();
        tokio::spawn(async move {
            axum::serve(listener, kizuna_web::router(st)).await.unwrap();
        });
        out.push(Server {
            base: format!("http://{addr}"),
            store,
            write_key,
            api_key,
            name,
            tracking,
            _dir: dir,
        });
    }
    out
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(
    s: &Server,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut r = client().post(format!("{}{path}", s.base)).body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let res = r.send().await.unwrap();
    let status = res.status().as_u16();
    let h = res.headers().clone();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        h,
    )
}

fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

async fn get(s: &Server, path: &str) -> (u16, Value) {
    let res = client()
        .get(format!("{}{path}", s.base))
        .bearer_auth(&s.api_key)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_path_auth_and_body_form_is_accepted() {
    for s in servers(IngestorConfig::default()).await {
        let auth = basic(&s.write_key);
        let n = s.name;
        // Long paths with basic auth and JSON.
        for (path, body) in [
            (
                "/v1/identify",
                json!({"userId": "u1", "traits": {"email": "u1@example.co.jp"}, "messageId": "a1"}),
            ),
            (
                "/v1/track",
                json!({"userId": "u1", "event": "Trial Started", "messageId": "a2"}),
            ),
            (
                "/v1/page",
                json!({"userId": "u1", "name": "Pricing", "messageId": "a3"}),
            ),
            (
                "/v1/screen",
                json!({"userId": "u1", "name": "Home", "messageId": "a4"}),
            ),
            (
                "/v1/group",
                json!({"userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}, "messageId": "a5"}),
            ),
            (
                "/v1/alias",
                json!({"userId": "u1", "previousId": "old-1", "messageId": "a6"}),
            ),
            (
                "/v1/batch",
                json!({"batch": [{"type": "track", "userId": "u1", "event": "Login", "messageId": "a7"}]}),
            ),
            (
                "/v1/import",
                json!({"batch": [{"type": "track", "userId": "u1", "event": "Login", "messageId": "a8"}]}),
            ),
        ] {
            let (st, b, _) = post(
                &s,
                path,
                serde_json::to_vec(&body).unwrap(),
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
            )
            .await;
            assert_eq!((st, b), (200, json!({"success": true})), "{n} {path}");
        }
        // analytics.js short paths: text/plain, write key in the body.
        for (path, body) in [
            (
                "/v1/t",
                json!({"anonymousId": "b1", "event": "Clicked", "messageId": "b-t", "writeKey": s.write_key}),
            ),
            (
                "/v1/p",
                json!({"anonymousId": "b1", "messageId": "b-p", "writeKey": s.write_key}),
            ),
            (
                "/v1/i",
                json!({"anonymousId": "b1", "traits": {"plan": "x"}, "messageId": "b-i", "writeKey": s.write_key}),
            ),
            (
                "/v1/s",
                json!({"anonymousId": "b1", "messageId": "b-s", "writeKey": s.write_key}),
            ),
            (
                "/v1/g",
                json!({"anonymousId": "b1", "groupId": "g2", "messageId": "b-g", "writeKey": s.write_key}),
            ),
            (
                "/v1/a",
                json!({"userId": "u2", "previousId": "b1", "messageId": "b-a", "writeKey": s.write_key}),
            ),
            (
                "/v1/b",
                json!({"batch": [{"type": "page", "anonymousId": "b1", "messageId": "b-b"}], "writeKey": s.write_key}),
            ),
        ] {
            let (st, _, _) = post(
                &s,
                path,
                serde_json::to_vec(&body).unwrap(),
                &[("Content-Type", "text/plain")],
            )
            .await;
            assert_eq!(st, 200, "{n} {path}");
        }
        // gzip, as the Python SDKs send it.
        let body = json!({"batch": [{"type": "track", "userId": "u1", "event": "Gzipped", "messageId": "c1"}]});
        let (st, _, _) = post(
            &s,
            "/v1/batch",
            gzip(&serde_json::to_vec(&body).unwrap()),
            &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        )
        .await;
        assert_eq!(st, 200, "{n}");

        let u1 = s
            .store
            .contact_by_identity("user_id", "u1")
            .await
            .unwrap()
            .unwrap();
        let (st, tl) = get(&s, &format!("/api/v1/contacts/{u1}/timeline?limit=100")).await;
        assert_eq!(st, 200);
        let types: Vec<&str> = tl["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        for t in [
            "contact.identified",
            "Trial Started",
            "page.viewed",
            "screen.viewed",
            "company.linked",
            "contact.aliased",
            "Login",
            "Gzipped",
        ] {
            assert!(types.contains(&t), "{n}: {t} in {types:?}");
        }
        assert!(
            tl["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["source"].is_string()),
            "source on every event"
        );
        // b1's profile merged into u2 by the alias.
        let u2 = s.store.contact_by_identity("user_id", "u2").await.unwrap();
        assert_eq!(
            s.store
                .contact_by_identity("anonymous_id", "b1")
                .await
                .unwrap(),
            u2,
            "{n}"
        );
    }
}

/// Path, body, headers, expected status, error code and field.
type BadCase = (
    &'static str,
    Vec<u8>,
    Vec<(&'static str, String)>,
    u16,
    &'static str,
    Option<&'static str>,
);

#[tokio::test]
async fn bad_requests_get_clear_errors_and_store_nothing() {
    for s in servers(IngestorConfig::default()).await {
        let auth = basic(&s.write_key);
        let n = s.name;
        let cases: Vec<BadCase> = vec![
            ("/v1/track", br#"{"event":"E"}"#.to_vec(), vec![("Authorization", auth.clone())], 400, "missing_identity", Some("anonymousId")),
            ("/v1/track", br#"{"userId":"u","event":"E"}"#.to_vec(), vec![], 401, "missing_write_key", None),
            ("/v1/track", br#"{"userId":"u","event":"E"}"#.to_vec(), vec![("Authorization", basic("wk_nope"))], 401, "invalid_write_key", None),
            ("/v1/track", br#"{"userId":"u","event":"E","writeKey":"wk_nope"}"#.to_vec(), vec![], 401, "invalid_write_key", None),
            ("/v1/track", b"{not json".to_vec(), vec![("Authorization", auth.clone())], 400, "invalid_json", None),
            ("/v1/batch", br#"{"batch":[{"type":"track","userId":"u","event":"ok","messageId":"z1"},{"type":"track","event":"E"}]}"#.to_vec(), vec![("Authorization", auth.clone())], 400, "missing_identity", Some("batch[1].anonymousId")),
            ("/v1/track", format!(r#"{{"userId":"u","event":"E","properties":{{"x":"{}"}}}}"#, "a".repeat(33 * 1024)).into_bytes(), vec![("Authorization", auth.clone())], 400, "message_too_large", None),
            ("/v1/batch", format!(r#"{{"batch":[],"pad":"{}"}}"#, "a".repeat(501 * 1024)).into_bytes(), vec![("Authorization", auth.clone())], 400, "batch_too_large", None),
            ("/v1/track", br#"{"userId":"u","event":"E"}"#.to_vec(), vec![("Authorization", auth.clone()), ("Content-Encoding", "br".to_string())], 415, "unsupported_encoding", None),
            ("/v1/track", b"\x1f\x8bnot gzip".to_vec(), vec![("Authorization", auth.clone()), ("Content-Encoding", "gzip".to_string())], 400, "invalid_body", None),
            ("/v1/merge", br#"{"userId":"u"}"#.to_vec(), vec![("Authorization", auth.clone())], 400, "unsupported_type", None),
            ("/v1/nothing", b"{}".to_vec(), vec![("Authorization", auth.clone())], 404, "not_found", None),
        ];
        for (path, body, headers, want, code, field) in cases {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (st, b, _) = post(&s, path, body, &h).await;
            assert_eq!(st, want, "{n} {path} {code}: {b}");
            assert_eq!(b["error"]["code"], code, "{n} {path}: {b}");
            assert_eq!(b["error"]["field"].as_str(), field, "{n} {path}: {b}");
        }
        // A gzip bomb is cut at the limit: 10 MB of zeros in a few KB.
        let bomb = gzip(&vec![b' '; 10 * 1024 * 1024]);
        let (st, b, _) = post(
            &s,
            "/v1/batch",
            bomb,
            &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        )
        .await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (400, Some("batch_too_large")),
            "{n}"
        );
        assert_eq!(
            s.store.count_all_events().await.unwrap(),
            0,
            "{n}: nothing stored"
        );
    }
}

#[tokio::test]
async fn browsers_get_cors_and_the_snippet() {
    for s in servers(IngestorConfig::default()).await {
        let res = client()
            .request(reqwest::Method::OPTIONS, format!("{}/v1/t", s.base))
            .header("Origin", "https://www.example.co.jp")
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "content-type,authorization",
            )
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", s.name);
        assert_eq!(res.headers()["access-control-allow-origin"], "*");
        assert!(
            res.headers()["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .contains("POST")
        );
        let body =
            serde_json::to_vec(&json!({"anonymousId": "x", "event": "E", "writeKey": s.write_key}))
                .unwrap();
        let (st, _, h) = post(
            &s,
            "/v1/t",
            body,
            &[
                ("Origin", "https://www.example.co.jp"),
                ("Content-Type", "text/plain"),
            ],
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(h["access-control-allow-origin"], "*");
        let js = client()
            .get(format!("{}/kizuna.js", s.base))
            .send()
            .await
            .unwrap();
        assert!(
            js.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/javascript")
        );
        let text = js.text().await.unwrap();
        assert!(
            text.contains("/v1/b") && text.contains("kizuna.js"),
            "{}",
            s.name
        );
    }
}

#[tokio::test]
async fn overload_is_a_429_with_retry_after() {
    for s in servers(IngestorConfig {
        max_group_messages: 10_000,
        max_pending_messages: 50,
    })
    .await
    {
        // Hold the writer: it cannot take the identity lock, so submissions wait.
        let mut blocker = s.store.db().begin().await.unwrap();
        kizuna_store::ingest::lock_identities(&mut blocker)
            .await
            .unwrap();
        let batch = |tag: &str| {
            serde_json::to_vec(&json!({"batch": (0..40).map(|i| json!({"type": "track", "anonymousId": "o", "event": "E", "messageId": format!("{tag}{i}")})).collect::<Vec<_>>()})).unwrap()
        };
        let auth = basic(&s.write_key);
        let first = {
            let (url, auth, body) = (format!("{}/v1/batch", s.base), auth.clone(), batch("a"));
            tokio::spawn(async move {
                client()
                    .post(url)
                    .header("Authorization", auth)
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        };
        // Once the first request waits for the writer, the second does not fit.
        for _ in 0..5000 {
            if s.tracking.ingestor.available() < 50 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(
            s.tracking.ingestor.available(),
            10,
            "{}: the first request waits",
            s.name
        );
        let (st, b, h) = post(&s, "/v1/batch", batch("b"), &[("Authorization", &auth)]).await;
        assert_eq!(st, 429, "{}: {b}", s.name);
        assert_eq!(b["error"]["code"], "overloaded");
        assert_eq!(h["retry-after"], "1");
        drop(blocker);
        assert_eq!(
            first.await.unwrap(),
            200,
            "{}: the waiting request is stored",
            s.name
        );
        assert_eq!(
            s.store.count_all_events().await.unwrap(),
            41,
            "{}: 40 events and one contact.created",
            s.name
        );
    }
}

#[tokio::test]
async fn timeline_filters_pages_and_offline_events_api() {
    for s in servers(IngestorConfig::default()).await {
        let n = s.name;
        let auth = basic(&s.write_key);
        let batch: Vec<Value> = (0..7)
            .map(|i| json!({"type": "page", "userId": "tl", "messageId": format!("p{i}"), "timestamp": format!("2026-10-14T08:0{i}:00Z"), "properties": {"path": format!("/p{i}")}}))
            .chain([json!({"type": "track", "userId": "tl", "event": "Whitepaper Downloaded", "messageId": "d1", "timestamp": "2026-10-14T08:30:00Z"})])
            .collect();
        let (st, _, _) = post(
            &s,
            "/v1/batch",
            serde_json::to_vec(&json!({"batch": batch})).unwrap(),
            &[("Authorization", &auth)],
        )
        .await;
        assert_eq!(st, 200);
        let id = s
            .store
            .contact_by_identity("user_id", "tl")
            .await
            .unwrap()
            .unwrap();
        // Pages of 3, newest first, only page views.
        let mut paths = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = cursor
                .as_ref()
                .map(|c| format!("&cursor={c}"))
                .unwrap_or_default();
            let (st, page) = get(
                &s,
                &format!("/api/v1/contacts/{id}/timeline?type=page.viewed&limit=3{q}"),
            )
            .await;
            assert_eq!(st, 200, "{n}: {page}");
            for e in page["data"].as_array().unwrap() {
                assert_eq!(e["type"], "page.viewed");
                assert_eq!(e["source"], "api");
                paths.push(e["properties"]["path"].as_str().unwrap().to_string());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(
            paths,
            ["/p6", "/p5", "/p4", "/p3", "/p2", "/p1", "/p0"],
            "{n}"
        );
        let (_, both) = get(
            &s,
            &format!(
                "/api/v1/contacts/{id}/timeline?type=page.viewed,Whitepaper%20Downloaded&limit=100"
            ),
        )
        .await;
        assert_eq!(both["data"].as_array().unwrap().len(), 8);
        assert_eq!(both["data"][0]["type"], "Whitepaper Downloaded");
        let (st, bad) = get(
            &s,
            &format!("/api/v1/contacts/{id}/timeline?cursor=nonsense"),
        )
        .await;
        assert_eq!((st, bad["error"]["field"].as_str()), (400, Some("cursor")));

        // Offline events through the API: all or nothing, by e-mail.
        let c = s
            .store
            .create_contact(
                serde_json::from_value(json!({"email": "seminar@example.jp"})).unwrap(),
                t0(),
                "api",
            )
            .await
            .unwrap();
        let res = client()
            .post(format!("{}/api/v1/events", s.base))
            .bearer_auth(&s.api_key)
            .json(&json!({"events": [
                {"email": "seminar@example.jp", "type": "webinar.attended", "occurred_at": "2026-10-10T15:00:00+09:00", "properties": {"webinar": "MA入門"}},
                {"email": "ghost@example.jp", "type": "webinar.attended", "occurred_at": "2026-10-10T15:00:00+09:00"}
            ]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 422, "{n}");
        let b: Value = res.json().await.unwrap();
        assert_eq!(b["error"]["field"], "events[1].email", "{n}: {b}");
        assert_eq!(
            s.store.count_events(c.id).await.unwrap(),
            1,
            "only contact.created"
        );
        let res = client()
            .post(format!("{}/api/v1/events", s.base))
            .bearer_auth(&s.api_key)
            .json(&json!({"events": [
                {"email": "seminar@example.jp", "type": "webinar.attended", "occurred_at": "2026-10-10T15:00:00+09:00", "properties": {"webinar": "MA入門"}, "message_id": "zoom-1"},
                {"contact_id": c.id, "type": "call.made", "occurred_at": "2026-10-11T10:00:00+09:00"}
            ]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{n}");
        let b: Value = res.json().await.unwrap();
        assert_eq!(
            (b["stored"].as_u64(), b["duplicates"].as_u64()),
            (Some(2), Some(0))
        );
        let (_, tl) = get(
            &s,
            &format!("/api/v1/contacts/{}/timeline?type=webinar.*,call.*", c.id),
        )
        .await;
        let got: Vec<(&str, &str)> = tl["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["type"].as_str().unwrap(), e["source"].as_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [("call.made", "api"), ("webinar.attended", "api")],
            "{n}"
        );
    }
}

#[tokio::test]
async fn documented_tracking_routes_answer() {
    let doc: Value = serde_json::from_str(kizuna_web::api::openapi::DOCUMENT).unwrap();
    let s = servers(IngestorConfig::default()).await.remove(0);
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/identify",
        "/v1/track",
        "/v1/page",
        "/v1/screen",
        "/v1/group",
        "/v1/alias",
        "/v1/batch",
        "/v1/import",
        "/kizuna.js",
        "/events",
        "/contacts/{id}/timeline",
    ] {
        assert!(paths.contains_key(p), "{p} is documented");
    }
    // Paths with their own server (the public tracking endpoints) answer there without an API key.
    let mut checked = 0;
    for (path, item) in paths {
        let Some(server) = item["servers"][0]["url"].as_str() else {
            continue;
        };
        assert_eq!(server, "/");
        for method in item.as_object().unwrap().keys().filter(|k| *k != "servers") {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let res = client()
                .request(m, format!("{}{path}", s.base))
                .body("{}")
                .send()
                .await
                .unwrap();
            let st = res.status().as_u16();
            assert!(st != 404 && st != 405, "{method} {path} is routed ({st})");
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
}

/// Requests built from arbitrary parts: path, headers and body.
fn hostile() -> impl Strategy<Value = (String, Option<String>, Option<String>, Vec<u8>, bool)> {
    let paths = prop::sample::select(vec![
        "identify", "track", "page", "screen", "group", "alias", "batch", "import", "t", "i", "p",
        "s", "g", "a", "b", "merge", "x", "",
    ]);
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        "[ -~]{0,300}".prop_map(String::into_bytes),
        Just(br#"{"batch":[{"type":"track","userId":"u","event":"E"}],"writeKey":"KEY"}"#.to_vec()),
        Just(br#"{"userId":"u","event":"E","properties":{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}"#.to_vec()),
        Just(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes()),
    ];
    (
        paths.prop_map(str::to_string),
        prop::option::of(prop_oneof![
            Just("gzip".to_string()),
            Just("br".to_string()),
            "[a-z]{0,6}"
        ]),
        prop::option::of(prop_oneof![Just("Basic KEY".to_string()), "[ -~]{0,40}"]),
        body,
        any::<bool>(),
    )
}

#[test]
fn fuzz_no_input_gives_a_server_error() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (router, write_key, _dir) = rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .await
        .unwrap();
        let key = store.create_write_key("fuzz", t0()).await.unwrap();
        (
            kizuna_web::router(state(&store, IngestorConfig::default())),
            key,
            dir,
        )
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(300);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    runner
        .run(&hostile(), |(path, encoding, auth, body, gzipped)| {
            use tower::ServiceExt;
            let body = String::from_utf8_lossy(&body)
                .replace("KEY", &write_key)
                .into_bytes();
            let body = if gzipped { gzip(&body) } else { body };
            let mut req = axum::http::Request::post(format!("/v1/{path}"));
            if let Some(e) = encoding {
                req = req.header("Content-Encoding", e);
            }
            if let Some(a) = auth {
                use base64::Engine;
                let a = a.replace(
                    "KEY",
                    &base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:")),
                );
                if let Ok(v) = axum::http::HeaderValue::from_str(&a) {
                    req = req.header("Authorization", v);
                }
            }
            let req = req.body(axum::body::Body::from(body)).unwrap();
            let res = rt.block_on(router.clone().oneshot(req)).unwrap();
            let status = res.status().as_u16();
            prop_assert!(status < 500, "server error {status}");
            prop_assert!(
                matches!(status, 200 | 400 | 401 | 404 | 405 | 413 | 415),
                "unexpected {status}"
            );
            Ok(())
        })
        .unwrap();
}
