//! `kizuna bench segment`: the real-time engine on demo data (issue 4's benchmark).
//!
//! setup: contacts and the event history are generated, the engine reads the history with
//!     nothing defined yet (consent and sales flags only), then 5 scoring models and 100
//!     segments are defined and built over that history by the bulk path (timed).
//! (b) steady state: the live stream — events appended after the definitions — consumed end
//!     to end (events/s and cost per event) — baseline: reading and decoding the same events
//!     without processing them, same batches, same run.
//! (a) bulk build of a new behavioural segment ("≥ 3 views of /pricing in 14 days AND industry
//!     in […] AND grade ≥ B"), once with its behaviour feature already kept by another segment
//!     and once cold (backfilled from the log) — baseline: the equivalent SQL query on the same
//!     store, whose count must agree.
//! (c) latency from an event's commit to the MQL handoff webhook arriving at a receiver on
//!     loopback, p50/p99 — baseline: a bare POST to the same receiver.

use crate::bench::{BackendMaker, backends, peak_rss_mib};
use anyhow::Context;
use chrono::{DateTime, Utc};
use kizuna_core::clock::{SharedClock, SystemClock};
use kizuna_engine::{Engine, EngineConfig, apply};
use kizuna_store::Store;
use kizuna_store::db::{Dialect, One};
use kizuna_store::definitions::DefinitionKind;
use kizuna_store::events::NewEvent;
use kizuna_store::log::LogCursor;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const SEED_001: &str = include_str!("../../../docs/examples/scoring-seed-001.json");
const SEED_003: &str = include_str!("../../../docs/examples/scoring-seed-003.json");
const INDUSTRIES: &[&str] = &[
    "製造業",
    "情報通信業",
    "卸売業",
    "小売業",
    "建設業",
    "金融業",
    "不動産業",
    "医療・福祉",
    "運輸業",
    "サービス業",
];
const PAGES: &[&str] = &[
    "/",
    "/blog/lead-nurturing",
    "/blog/lead-scoring",
    "/blog/ma-tool-comparison",
    "/products/ma",
    "/products/crm",
    "/products/analytics",
    "/pricing",
    "/pricing/enterprise",
    "/case-studies/manufacturing",
    "/case-studies/it",
    "/seminars",
    "/contact",
    "/careers",
];

fn seg(name: String, filter: Value) -> Value {
    json!({"kind": "segment", "name": name, "filter": filter})
}

fn pricing(n: u64, within: &str, prefix: &str) -> Value {
    json!({"event": "page.viewed", "where": [{"property": "path", "op": "starts_with", "value": prefix}],
           "count": {"gte": n}, "within": within})
}

/// 5 scoring models and 100 segments of every kind.
fn definitions() -> Vec<Value> {
    let mut seed3: Value = serde_json::from_str(SEED_003).unwrap();
    seed3["lifecycle"] = json!(false);
    let mut d = vec![
        serde_json::from_str(SEED_001).unwrap(),
        seed3,
        json!({"kind": "scoring_model", "name": "crm-line", "behaviour": [
            {"id": "crm", "event": "page.viewed", "where": [{"property": "path", "op": "starts_with", "value": "/products/crm"}], "points": 5, "cap": 25},
            {"id": "trial", "event": "trial.started", "points": 20},
            {"id": "login", "event": "login", "points": 2, "limit": {"points": 10, "per": "7d"}}],
            "fit": [{"id": "big", "when": {"attribute": "company.employee_count", "op": "gte", "value": 300}, "points": 10}],
            "grades": {"A": 10, "B": 5, "C": 1}, "decay": {"points": 5, "every": "30d"}, "thresholds": {"qualified": 40}}),
        json!({"kind": "scoring_model", "name": "events", "behaviour": [
            {"id": "webinar", "event": "webinar.attended", "points": 10},
            {"id": "seminar", "event": "seminar.attended", "points": 10}],
            "decay": {"half_life": "30d"}, "thresholds": {"engaged": 20}}),
        json!({"kind": "scoring_model", "name": "email", "behaviour": [
            {"id": "open", "event": "email.opened", "where": [{"property": "machine", "op": "ne", "value": true}], "points": 1, "limit": {"points": 5, "per": "7d"}},
            {"id": "click", "event": "email.clicked", "points": 3}],
            "decay": {"half_life": "14d"}, "thresholds": {"reader": 5}}),
    ];
    for ind in INDUSTRIES {
        d.push(seg(
            format!("Industry {ind}"),
            json!({"attribute": "company.industry", "op": "eq", "value": ind}),
        ));
    }
    for st in [
        "subscriber",
        "lead",
        "mql",
        "sql",
        "opportunity",
        "customer",
        "evangelist",
        "disqualified",
        "dormant",
    ] {
        d.push(seg(
            format!("Stage {st}"),
            json!({"attribute": "lifecycle_stage", "op": "eq", "value": st}),
        ));
    }
    for lv in ["manager", "director", "executive"] {
        d.push(seg(
            format!("Level ≥ {lv}"),
            json!({"attribute": "job_level", "op": "gte", "value": lv}),
        ));
    }
    for n in [50, 300, 1000, 3000] {
        d.push(seg(
            format!("≥ {n} employees"),
            json!({"attribute": "company.employee_count", "op": "gte", "value": n}),
        ));
    }
    for p in PAGES {
        for w in ["7d", "30d"] {
            d.push(seg(format!("{p} ×2 in {w}"), pricing(2, w, p)));
        }
        d.push(seg(format!("{p} in 14d"), pricing(1, "14d", p)));
    }
    for (name, f) in [
        ("Downloaded", json!({"event": "content.downloaded"})),
        (
            "Webinar in 30d",
            json!({"event": "webinar.attended", "within": "30d"}),
        ),
        (
            "Seminar in 90d",
            json!({"event": "seminar.attended", "within": "90d"}),
        ),
        (
            "Contact form",
            json!({"event": "form.submitted", "where": [{"property": "form", "op": "eq", "value": "contact"}]}),
        ),
        (
            "Trial in 14d",
            json!({"event": "trial.started", "within": "14d"}),
        ),
        (
            "Logins ≥ 5 in 30d",
            json!({"event": "login", "count": {"gte": 5}, "within": "30d"}),
        ),
        ("Opened in 30d", json!({"email": "opened", "within": "30d"})),
        (
            "Clicked in 30d",
            json!({"email": "clicked", "within": "30d"}),
        ),
        (
            "Not opened in 60d",
            json!({"not": {"email": "opened", "within": "60d"}}),
        ),
        (
            "Opened ≥ 3 in 30d",
            json!({"email": "opened", "count": {"gte": 3}, "within": "30d"}),
        ),
        (
            "Document request 30d",
            json!({"event": "form.submitted", "where": [{"property": "form", "op": "eq", "value": "document_request"}], "within": "30d"}),
        ),
        (
            "Inquiry 30d",
            json!({"event": "form.submitted", "where": [{"property": "form", "op": "eq", "value": "inquiry"}], "within": "30d"}),
        ),
        (
            "Temperature hot",
            json!({"attribute": "temperature", "op": "eq", "value": "hot"}),
        ),
        (
            "Created in 30d",
            json!({"attribute": "created_at", "op": "within_last", "value": "30d"}),
        ),
        (
            "Organic search",
            json!({"attribute": "source.channel", "op": "eq", "value": "organic_search"}),
        ),
        (
            "Offline",
            json!({"attribute": "source.channel", "op": "eq", "value": "offline"}),
        ),
        (
            "Tokyo",
            json!({"attribute": "address.region", "op": "eq", "value": "東京都"}),
        ),
        ("Mailable", json!({"consent": "email"})),
        ("In a sales cycle", json!({"sales_cycle": true})),
        ("Owned", json!({"attribute": "owner_id", "op": "exists"})),
        ("Pricing ×3 in 14d", pricing(3, "14d", "/pricing")),
        (
            "Hot managers",
            json!({"all": [{"attribute": "temperature", "op": "eq", "value": "hot"}, {"attribute": "job_level", "op": "gte", "value": "manager"}]}),
        ),
        (
            "Mfg or IT that downloaded",
            json!({"all": [{"any": [{"segment": "Industry 製造業"}, {"segment": "Industry 情報通信業"}]}, {"segment": "Downloaded"}]}),
        ),
        (
            "Silent grade A",
            json!({"all": [{"not": {"email": "opened", "within": "30d"}}, {"grade": "seed-001", "op": "eq", "value": "A"}]}),
        ),
    ] {
        d.push(seg(name.to_string(), f));
    }
    for m in ["seed-001", "seed-003", "crm-line"] {
        d.push(seg(
            format!("{m} grade ≥ B"),
            json!({"grade": m, "op": "gte", "value": "B"}),
        ));
    }
    for m in ["seed-001", "seed-003", "crm-line", "events", "email"] {
        d.push(seg(
            format!("{m} score ≥ 30"),
            json!({"score": m, "op": "gte", "value": 30}),
        ));
    }
    d
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn wait_builds(engine: &Engine) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        let p = engine.run_once().await?;
        if p.builds == 0 {
            return Ok(t.elapsed());
        }
    }
}

/// The equivalent SQL of the benchmark segment, on the same store: its count and time.
async fn sql_baseline(
    store: &Store,
    model: Uuid,
    prefix: &str,
    n: i64,
    since: i64,
    industries: &[&str],
) -> anyhow::Result<(i64, Duration)> {
    let path = match store.dialect() {
        Dialect::Sqlite => "json_extract(e.properties, '$.path')",
        Dialect::Postgres => "(e.properties->>'path')",
    };
    let inds = industries
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT COUNT(*) FROM (SELECT e.contact_id FROM events e \
         JOIN contacts c ON c.id = e.contact_id JOIN companies co ON co.id = c.company_id \
         JOIN contact_scores s ON s.contact_id = e.contact_id AND s.model_id = $1 \
         WHERE e.type = 'page.viewed' AND e.occurred_at >= $2 AND {path} LIKE '{prefix}%' \
         AND co.industry IN ({inds}) AND s.grade IN ('A', 'B') \
         GROUP BY e.contact_id HAVING COUNT(*) >= $3) AS t"
    );
    let t = Instant::now();
    let c: One<i64> = store
        .db()
        .reader()
        .fetch_one(
            kizuna_store::db::assert_sql_safe(sql),
            kizuna_store::args![model, since, n],
        )
        .await?;
    Ok((c.0, t.elapsed()))
}

struct Run {
    backend: &'static str,
}

pub async fn bench_segment(
    contacts: u64,
    events: u64,
    live: u64,
    handoffs: u32,
    pg: Option<String>,
) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    println!(
        "kizuna bench segment — {contacts} contacts, {events} behaviour events ({} history, {} live), 5 scoring models, 100 segments",
        events.saturating_sub(live),
        live.min(events)
    );
    for (_, make) in backends(tmp.path(), &pg) {
        let make: &BackendMaker = &make;
        let b = make("engine");
        let run = Run { backend: b.name };
        let store = Store::open(&b.config)
            .await
            .with_context(|| format!("cannot open {}", b.name))?;
        let result = one_backend(&run, &store, contacts, events, live, handoffs).await;
        crate::bench::drop_schema(&store, &b).await;
        result?;
    }
    if let Some(mib) = peak_rss_mib() {
        println!("peak resident memory of this process: {mib:.0} MiB");
    }
    Ok(ExitCode::SUCCESS)
}

async fn one_backend(
    run: &Run,
    store: &Store,
    contacts: u64,
    events: u64,
    live: u64,
    handoffs: u32,
) -> anyhow::Result<()> {
    let clock: SharedClock = Arc::new(SystemClock);
    let now = clock.now();
    let name = run.backend;
    let live = live.min(events);
    println!("\n[{name}]");
    let t = Instant::now();
    crate::demo::generate(store, contacts, 42, now).await?;
    println!(
        "  setup: {contacts} contacts imported in {:.1?}",
        t.elapsed()
    );
    // History: 90 days up to an hour ago.
    let t = Instant::now();
    let history = crate::demo::generate_events_between(
        store,
        events - live,
        42,
        now - chrono::Duration::days(90),
        now - chrono::Duration::hours(1),
        false,
    )
    .await?;
    println!(
        "  setup: {history} history events appended in {:.1?}",
        t.elapsed()
    );
    let engine = Engine::new(store.clone(), clock.clone(), EngineConfig::default());
    let t = Instant::now();
    engine.run_until_idle().await?;
    println!(
        "  setup: engine read the history with nothing defined in {:.1?}",
        t.elapsed()
    );
    let defs: Vec<(String, Value)> = definitions()
        .into_iter()
        .enumerate()
        .map(|(i, d)| (format!("bench[{i}]"), d))
        .collect();
    let n_segments = defs.iter().filter(|d| d.1["kind"] == "segment").count();
    apply::apply(store, clock.as_ref(), defs)
        .await
        .map_err(|e| anyhow::anyhow!("bench definitions invalid: {e:?}"))?;
    let built = wait_builds(&engine).await?;
    let t = Instant::now();
    let p = engine.run_until_idle().await?;
    println!(
        "  setup: 5 models and {n_segments} segments built by the bulk path over {contacts} contacts and {history} events in {built:.1?} (then {} of their own entry/crossing events read back in {:.1?})",
        p.events,
        t.elapsed()
    );
    let t = Instant::now();
    let written = crate::demo::generate_events_between(
        store,
        live,
        43,
        now - chrono::Duration::hours(1),
        now - chrono::Duration::minutes(1),
        false,
    )
    .await?;
    let append = t.elapsed();
    println!(
        "  setup: {written} live events appended in {append:.1?} ({:.0} events/s)",
        written as f64 / append.as_secs_f64()
    );

    // (b) steady state.
    let t = Instant::now();
    let mut cursor: LogCursor = engine.position().await?;
    let mut read = 0usize;
    loop {
        let (batch, next) = store.read_log(&cursor, 5000).await?;
        if batch.is_empty() {
            break;
        }
        read += batch.len();
        cursor = next;
    }
    let read_time = t.elapsed();
    let t = Instant::now();
    let p = engine.run_until_idle().await?;
    let engine_time = t.elapsed();
    let eps = read as f64 / engine_time.as_secs_f64();
    println!("  (b) steady state, {n_segments} segments + 5 models:");
    println!(
        "      engine end to end: {read} events in {:.1?} = {:.0} events/s ({:.1} µs per event; it also read back the {} events it wrote itself — segment entries/exits, crossings, stages, handoffs — and fired {} timers)",
        engine_time,
        eps,
        engine_time.as_secs_f64() * 1e6 / read.max(1) as f64,
        p.events.saturating_sub(read),
        p.timers
    );
    println!(
        "      baseline, reading the same log without processing: {read} events in {:.1?} = {:.0} events/s ({:.1} µs per event)",
        read_time,
        read as f64 / read_time.as_secs_f64(),
        read_time.as_secs_f64() * 1e6 / read.max(1) as f64
    );
    println!(
        "      engine cost beyond reading the log: {:.1} µs per event",
        (engine_time.as_secs_f64() - read_time.as_secs_f64()).max(0.0) * 1e6 / read.max(1) as f64
    );

    // (a) bulk build of a behavioural segment.
    let model = store
        .definition_by_name(DefinitionKind::ScoringModel, "seed-001")
        .await?
        .context("seed-001")?
        .id;
    let industries = ["製造業", "情報通信業", "金融業"];
    let since = (clock.now() - chrono::Duration::days(14)).timestamp_micros();
    println!(
        "  (a) bulk build: ≥ 3 views of /pricing in 14 days AND industry in 製造業/情報通信業/金融業 AND grade ≥ B (seed-001)"
    );
    for (label, prefix, n) in [
        ("feature already kept by another segment", "/pricing", 3u64),
        (
            "cold: feature backfilled from the log",
            "/pricing/enterprise",
            2u64,
        ),
    ] {
        let seg_name = format!("bench: {prefix} ≥ {n}");
        let filter = json!({"all": [pricing(n, "14d", prefix),
            {"attribute": "company.industry", "op": "in", "value": industries},
            {"grade": "seed-001", "op": "gte", "value": "B"}]});
        apply::apply(
            store,
            clock.as_ref(),
            vec![("a".into(), seg(seg_name.clone(), filter))],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let took = wait_builds(&engine).await?;
        let id = store
            .definition_by_name(DefinitionKind::Segment, &seg_name)
            .await?
            .context("segment")?
            .id;
        let members = store.segment_member_count(id).await?;
        let (sql_count, sql_time) =
            sql_baseline(store, model, prefix, n as i64, since, &industries).await?;
        println!(
            "      {label} ({prefix} ≥ {n}): built in {took:.2?}, {members} members; baseline SQL query: {sql_time:.2?}, {sql_count} rows — {}",
            if sql_count == members {
                "same answer"
            } else {
                "DIFFERENT ANSWER"
            }
        );
    }

    // (c) latency from an event to the owner's webhook.
    latency(store, &engine, clock, handoffs).await?;
    Ok(())
}

type Arrivals = Arc<Mutex<HashMap<Uuid, Instant>>>;

async fn latency(store: &Store, engine: &Engine, clock: SharedClock, n: u32) -> anyhow::Result<()> {
    let arrivals: Arrivals = Arc::default();
    let a2 = arrivals.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let a = a2.clone();
            async move {
                let at = Instant::now();
                if let Some(id) = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["contact"]["id"].as_str().and_then(|s| s.parse().ok()))
                {
                    a.lock().unwrap().insert(id, at);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let policy = json!({"kind": "handoff_policy", "webhook": {"url": url, "secret": "bench"}});
    apply::apply(store, clock.as_ref(), vec![("p".into(), policy)])
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // Contacts one event short of MQL under seed-001: 部長 at a 120-person manufacturer (fit
    // 23), a webinar (15) and a download (10) = 48.
    let co = store
        .create_company(
            serde_json::from_value(
                json!({"name": "ベンチ製作所", "industry": "製造業", "employee_count": 120}),
            )?,
            clock.now(),
        )
        .await?;
    let mut ids = Vec::new();
    for i in 0..n {
        let c = store
            .create_contact(
                serde_json::from_value(json!({"email": format!("latency{i}@bench.example"), "job_title": "部長", "company_id": co.id}))?,
                clock.now(),
                "api",
            )
            .await?;
        let now = clock.now();
        store
            .append_events(
                vec![
                    NewEvent::new(c.id, "webinar.attended", now, "import", json!({})),
                    NewEvent::new(c.id, "content.downloaded", now, "sdk", json!({})),
                ],
                now,
            )
            .await?;
        ids.push(c.id);
    }
    engine.run_until_idle().await?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let engine_task = engine.spawn(until(stopping.clone()));
    let notifier = kizuna_engine::notify::Notifier::new(store.clone(), clock.clone());
    let wake = engine.notifications_queued();
    let stop_n = until(stopping.clone());
    let notifier_task = tokio::spawn(async move {
        notifier
            .run(Duration::from_millis(200), Some(wake), stop_n)
            .await
    });
    let mut sent: Vec<(Uuid, Instant)> = Vec::new();
    for id in &ids {
        let now: DateTime<Utc> = clock.now();
        store
            .append_events(
                vec![NewEvent::new(
                    *id,
                    "page.viewed",
                    now,
                    "sdk",
                    json!({"path": "/products/ma"}),
                )],
                now,
            )
            .await?;
        sent.push((*id, Instant::now()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(true);
    let _ = engine_task.await;
    let _ = notifier_task.await;
    let got = arrivals.lock().unwrap().clone();
    let lat: Vec<f64> = sent
        .iter()
        .filter_map(|(id, t)| {
            got.get(id)
                .map(|a| a.duration_since(*t).as_secs_f64() * 1e3)
        })
        .collect();
    // Baseline: the HTTP hop alone, a bare POST to the same receiver.
    let http = reqwest::Client::new();
    let mut hop = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        http.post(&url).body("{}").send().await?;
        hop.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "  (c) event committed → MQL handoff webhook received ({} of {} arrived): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        ids.len(),
        pct(lat.clone(), 0.5),
        pct(lat.clone(), 0.99),
        pct(lat, 1.0)
    );
    println!(
        "      baseline, a bare POST to the same receiver: p50 {:.2} ms, p99 {:.2} ms",
        pct(hop.clone(), 0.5),
        pct(hop, 0.99)
    );
    Ok(())
}
