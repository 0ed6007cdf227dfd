//! `kizuna bench ingest`: Segment batches over loopback HTTP into the group-commit writer, with
//! two ceilings measured in the same run — the storage path without HTTP, and a no-op handler
//! behind the same HTTP stack.

use anyhow::Context;
use kizuna_core::clock::{Clock, SharedClock, SystemClock};
use kizuna_core::tracking::{Endpoint, Message, parse};
use kizuna_store::ingest::{Ingested, Submission};
use kizuna_store::ingestor::{CommitHook, Ingestor, IngestorConfig};
use kizuna_store::{Store, StoreConfig};
use kizuna_web::tracking::Tracking;
use kizuna_web::{AppState, WebConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Options of the ingest benchmark.
pub struct IngestBench {
    pub events: usize,
    pub batch: usize,
    pub clients: usize,
    pub visitors: usize,
    pub database_url: Option<String>,
}

const PAGES: &[(&str, &str)] = &[
    ("/", "株式会社サンプル | リードナーチャリングならKizuna"),
    ("/pricing", "料金プラン"),
    ("/features/scoring", "リードスコアリング機能"),
    ("/features/scenario-mail", "シナリオメール機能"),
    ("/case-studies/manufacturing", "導入事例：製造業"),
    (
        "/blog/lead-nurturing-basics",
        "リードナーチャリングとは？基本と進め方",
    ),
    ("/blog/mql-sql", "MQLとSQLの違い"),
    ("/whitepaper/ma-guide", "資料ダウンロード：MA導入ガイド"),
    ("/seminar/2026-11", "オンラインセミナー 11月"),
    ("/contact", "お問い合わせ"),
];
const REFERRERS: &[&str] = &[
    "https://www.google.co.jp/",
    "https://search.yahoo.co.jp/search?p=ma+tool",
    "https://t.co/abc",
    "https://www.facebook.com/",
    "",
    "",
    "https://news.example.com/article/123",
];
const CAMPAIGNS: &[(&str, &str, &str)] = &[
    ("newsletter", "email", "autumn-2026"),
    ("google", "cpc", "ma-tool-brand"),
    ("facebook", "paid_social", "whitepaper-q4"),
    ("it-week", "tradeshow", "itweek-2026-10"),
];
const TRACKS: &[&str] = &[
    "Product Viewed",
    "Whitepaper Downloaded",
    "Webinar Registered",
    "Trial Started",
    "Login",
    "Pricing Calculator Used",
    "Video Played",
    "Demo Requested",
];
const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";

/// Realistic mixed traffic: page views (55%), track events (30%), identifies (10%), groups (3%),
/// screens (2%), from a pool of visitors of whom 30% have a user id.
struct Traffic {
    rng: StdRng,
    visitors: usize,
    seq: u64,
    start: chrono::DateTime<chrono::Utc>,
}

impl Traffic {
    fn new(visitors: usize, seed: u64) -> Traffic {
        Traffic {
            rng: StdRng::seed_from_u64(seed),
            visitors,
            seq: 0,
            start: SystemClock.now() - chrono::Duration::minutes(10),
        }
    }

    fn event(&mut self, visitor: usize) -> Value {
        self.seq += 1;
        let anon = format!(
            "{:08x}-anon-{visitor:08}",
            visitor.wrapping_mul(2654435761) as u32
        );
        let user = (visitor % 10 < 3).then(|| format!("user-{visitor}"));
        let (path, title) = PAGES[self.rng.random_range(0..PAGES.len())];
        let mut url = format!("https://www.example.co.jp{path}");
        let mut context = json!({
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "userAgent": UA,
            "locale": "ja-JP",
            "ip": format!("203.0.113.{}", visitor % 250),
            "timezone": "Asia/Tokyo",
        });
        if self.rng.random_range(0..5) == 0 {
            let (s, m, c) = CAMPAIGNS[self.rng.random_range(0..CAMPAIGNS.len())];
            url.push_str(&format!("?utm_source={s}&utm_medium={m}&utm_campaign={c}"));
            context["campaign"] = json!({"source": s, "medium": m, "name": c});
        }
        let referrer = REFERRERS[self.rng.random_range(0..REFERRERS.len())];
        context["page"] = json!({"path": path, "url": url, "title": title, "referrer": referrer,
            "search": url.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default()});
        let ts = self.start + chrono::Duration::milliseconds(self.seq as i64);
        let mut m = json!({
            "anonymousId": anon,
            "messageId": format!("bench-{}-{}", Uuid::now_v7().simple(), self.seq),
            "timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "context": context,
        });
        if let Some(u) = &user {
            m["userId"] = u.as_str().into();
        }
        let roll = self.rng.random_range(0..100);
        match roll {
            0..55 => {
                m["type"] = "page".into();
                m["properties"] =
                    json!({"path": path, "url": url, "title": title, "referrer": referrer});
            }
            55..85 => {
                m["type"] = "track".into();
                m["event"] = TRACKS[self.rng.random_range(0..TRACKS.len())].into();
                m["properties"] = json!({"path": path, "plan": "standard", "value": self.rng.random_range(0..10_000), "category": "content"});
            }
            85..95 => {
                m["type"] = "identify".into();
                let mut traits = json!({"plan": "trial"});
                if user.is_some() {
                    traits = json!({"email": format!("visitor{visitor}@example{}.co.jp", visitor % 97),
                        "firstName": "太郎", "lastName": format!("山田{}", visitor % 1000),
                        "title": "部長", "company": format!("株式会社サンプル{}", visitor % 97)});
                }
                m["traits"] = traits;
            }
            95..98 => {
                m["type"] = "group".into();
                m["groupId"] = format!("org-{}", visitor % 97).into();
                m["traits"] = json!({"name": format!("株式会社サンプル{}", visitor % 97), "employees": 100 + visitor % 97 * 10, "industry": "製造業"});
            }
            _ => {
                m["type"] = "screen".into();
                m["name"] = "Dashboard".into();
                m["properties"] = json!({"name": "Dashboard"});
            }
        }
        m
    }

    /// One batch as an SDK sends it: events of about ten visitors.
    fn batch(&mut self, n: usize, write_key: &str) -> Vec<u8> {
        let group: Vec<usize> = (0..10)
            .map(|_| self.rng.random_range(0..self.visitors))
            .collect();
        let items: Vec<Value> = (0..n)
            .map(|_| {
                let v = group[self.rng.random_range(0..group.len())];
                self.event(v)
            })
            .collect();
        serde_json::to_vec(&json!({
            "batch": items,
            "sentAt": SystemClock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "writeKey": write_key,
        }))
        .unwrap_or_default()
    }
}

#[derive(Default)]
struct Groups {
    commits: AtomicUsize,
    stored: AtomicUsize,
    duplicates: AtomicUsize,
    created: AtomicUsize,
    merges: AtomicUsize,
}

impl CommitHook for Groups {
    fn committed(&self, c: &Ingested) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.stored.fetch_add(c.stored, Ordering::Relaxed);
        self.duplicates.fetch_add(c.duplicates, Ordering::Relaxed);
        self.created
            .fetch_add(c.contacts_created, Ordering::Relaxed);
        self.merges.fetch_add(c.merges, Ordering::Relaxed);
    }
}

struct Run {
    events: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    rejected: usize,
}

impl Run {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1000.0
    }
}

/// Posts every body to `url` from `clients` concurrent connections; a 429 is retried after a
/// short pause (and counted).
async fn drive_http(
    url: String,
    bodies: Arc<Vec<Vec<u8>>>,
    clients: usize,
    per_batch: usize,
) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, bodies, next) = (url.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            let mut lat = Vec::new();
            let mut rejected = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                loop {
                    let t = Instant::now();
                    let res = client
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .body(body.clone())
                        .send()
                        .await?;
                    let status = res.status().as_u16();
                    let _ = res.bytes().await?;
                    if status == 429 {
                        rejected += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    anyhow::ensure!(status == 200, "POST answered {status}");
                    lat.push(t.elapsed());
                    break;
                }
            }
            anyhow::Ok((lat, rejected))
        }));
    }
    let mut latencies = Vec::new();
    let mut rejected = 0;
    for t in tasks {
        let (l, r) = t.await??;
        latencies.extend(l);
        rejected += r;
    }
    Ok(Run {
        events: bodies.len() * per_batch,
        elapsed: started.elapsed(),
        latencies,
        rejected,
    })
}

/// The same messages through the group-commit writer from `clients` concurrent submitters,
/// without HTTP or JSON.
async fn drive_store(
    ingestor: Ingestor,
    batches: Vec<Vec<Message>>,
    source_key: Uuid,
    clients: usize,
) -> anyhow::Result<Run> {
    let events: usize = batches.iter().map(Vec::len).sum();
    let queue = Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (ingestor, queue) = (ingestor.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let next = queue.lock().expect("not poisoned").next();
                let Some(messages) = next else { break };
                let t = Instant::now();
                ingestor
                    .submit(Submission {
                        source_key,
                        messages,
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Run {
        events,
        elapsed: started.elapsed(),
        latencies,
        rejected: 0,
    })
}

async fn serve(router: axum::Router) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let h = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((format!("http://{addr}"), h))
}

fn fresh(name: &str, tmp: &std::path::Path, pg: &Option<String>) -> (StoreConfig, Option<String>) {
    let sync = std::env::var("KIZUNA_SQLITE_SYNCHRONOUS").unwrap_or_else(|_| "full".into());
    match (name, pg) {
        ("postgres", Some(url)) => {
            let schema = format!("bench_ingest_{}", Uuid::now_v7().simple());
            (
                StoreConfig {
                    database_url: Some(url.clone()),
                    pg_schema: Some(schema.clone()),
                    max_connections: 8,
                    ..Default::default()
                },
                Some(schema),
            )
        }
        _ => (
            StoreConfig {
                data_dir: tmp.join(Uuid::now_v7().simple().to_string()),
                sqlite_synchronous: sync,
                ..Default::default()
            },
            None,
        ),
    }
}

async fn drop_schema(store: &Store, schema: Option<String>) {
    if let Some(s) = schema
        && let Ok(mut tx) = store.db().begin().await
    {
        let _ = tx
            .execute(
                kizuna_store::db::assert_sql_safe(format!("DROP SCHEMA {s} CASCADE")),
                vec![],
            )
            .await;
        let _ = tx.commit().await;
    }
    store.close().await;
}

fn state(store: &Store, clock: SharedClock, ingestor: Ingestor) -> AppState {
    AppState {
        store: store.clone(),
        clock,
        config: Arc::new(WebConfig::default()),
        tracking: Arc::new(Tracking::new(ingestor)),
    }
}

pub async fn run(opts: IngestBench) -> anyhow::Result<ExitCode> {
    let per = opts
        .batch
        .clamp(1, kizuna_core::tracking::MAX_BATCH_MESSAGES);
    let n_batches = opts.events.div_ceil(per).max(1);
    let tmp = tempfile::tempdir()?;
    let mut backends = vec!["sqlite"];
    if opts.database_url.is_some() {
        backends.push("postgres");
    }
    let clock: SharedClock = Arc::new(SystemClock);
    // The write key is part of each body; it is made per store below, so bodies are made per
    // backend with that store's key.
    println!(
        "kizuna bench ingest — {} events in {n_batches} batches of {per}, {} concurrent clients, {} visitors, loopback HTTP, {} worker threads",
        n_batches * per,
        opts.clients,
        opts.visitors,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<9} {:<38} {:>10} {:>9} {:>9} {:>10}",
        "backend", "path", "events/s", "p50 ms", "p99 ms", "of ceiling"
    );
    for name in backends {
        // 1. The real thing: HTTP → parse → group commit.
        let (cfg, schema) = fresh(name, tmp.path(), &opts.database_url);
        let store = Store::open(&cfg)
            .await
            .with_context(|| format!("cannot open {name}"))?;
        let wk = store.create_write_key("bench", clock.now()).await?;
        let mut traffic = Traffic::new(opts.visitors, 7);
        let bodies: Arc<Vec<Vec<u8>>> =
            Arc::new((0..n_batches).map(|_| traffic.batch(per, &wk)).collect());
        let size = bodies.iter().map(Vec::len).sum::<usize>() / bodies.len();
        let groups = Arc::new(Groups::default());
        let ingestor = Ingestor::start(
            store.clone(),
            clock.clone(),
            IngestorConfig::default(),
            Some(groups.clone()),
        );
        let (base, server) =
            serve(kizuna_web::router(state(&store, clock.clone(), ingestor))).await?;
        let real = drive_http(
            format!("{base}/v1/batch"),
            bodies.clone(),
            opts.clients,
            per,
        )
        .await?;
        server.abort();
        let stored = store.count_all_events().await? as usize;
        let contacts = store.count_contacts().await?;
        let commits = groups.commits.load(Ordering::Relaxed).max(1);
        drop_schema(&store, schema).await;

        // 2. Ceiling (a): the same messages through the same writer, without HTTP.
        let (cfg, schema) = fresh(name, tmp.path(), &opts.database_url);
        let store = Store::open(&cfg).await?;
        let key_id = Uuid::now_v7();
        let now = clock.now();
        let parsed: Vec<Vec<Message>> = bodies
            .iter()
            .map(|b| parse(Endpoint::Batch, b, None, now).map(|p| p.messages))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let ingestor = Ingestor::start(
            store.clone(),
            clock.clone(),
            IngestorConfig::default(),
            None,
        );
        let storage = drive_store(ingestor, parsed, key_id, opts.clients).await?;
        drop_schema(&store, schema).await;

        // 3. Ceiling (b): the same HTTP stack and bodies, a handler that only reads the body.
        let (cfg, schema) = fresh(name, tmp.path(), &opts.database_url);
        let store = Store::open(&cfg).await?;
        let ingestor = Ingestor::start(
            store.clone(),
            clock.clone(),
            IngestorConfig::default(),
            None,
        );
        let (base, server) = serve(kizuna_web::noop_tracking_router(state(
            &store,
            clock.clone(),
            ingestor,
        )))
        .await?;
        let noop = drive_http(
            format!("{base}/v1/batch"),
            bodies.clone(),
            opts.clients,
            per,
        )
        .await?;
        server.abort();
        drop_schema(&store, schema).await;

        let ceiling = storage.rate().min(noop.rate());
        println!(
            "{:<9} {:<38} {:>10.0} {:>9.1} {:>9.1} {:>9.0}%",
            name,
            "HTTP /v1/batch → durable commit",
            real.rate(),
            real.pct(0.50),
            real.pct(0.99),
            100.0 * real.rate() / ceiling
        );
        println!(
            "{:<9} {:<38} {:>10.0} {:>9.1} {:>9.1} {:>10}",
            name,
            "(a) storage: same writer, no HTTP",
            storage.rate(),
            storage.pct(0.50),
            storage.pct(0.99),
            "ceiling"
        );
        println!(
            "{:<9} {:<38} {:>10.0} {:>9.1} {:>9.1} {:>10}",
            name,
            "(b) HTTP stack, no-op handler",
            noop.rate(),
            noop.pct(0.50),
            noop.pct(0.99),
            "ceiling"
        );
        println!(
            "          {stored} rows written ({} events + {} contact.created/updated), {contacts} contacts ({} merges), {:.1} requests per commit, {:.0} KB per batch, {} requests got 429 and were retried; vs storage ceiling {:.0}%",
            groups.stored.load(Ordering::Relaxed),
            stored.saturating_sub(groups.stored.load(Ordering::Relaxed)),
            groups.merges.load(Ordering::Relaxed),
            n_batches as f64 / commits as f64,
            size as f64 / 1024.0,
            real.rejected,
            100.0 * real.rate() / storage.rate()
        );
        anyhow::ensure!(
            groups.duplicates.load(Ordering::Relaxed) == 0,
            "the benchmark's message ids should all be new"
        );
    }
    println!(
        "HTTP = parse + write-key check + dedupe + identity resolution + first touch + events, acknowledged after commit (SQLite synchronous={})",
        std::env::var("KIZUNA_SQLITE_SYNCHRONOUS").unwrap_or_else(|_| "full".into())
    );
    Ok(ExitCode::SUCCESS)
}
