//! Realistic sample data: Japanese and English B2B contacts at companies of every size and
//! industry, with titles, departments, lifecycle stages and first-touch sources. Deterministic
//! for a given seed, so benchmarks are repeatable. Also writes the same rows as CSV for the
//! import benchmark.

use chrono::{DateTime, Utc};
use kizuna_core::company::CompanyInput;
use kizuna_core::contact::{ContactInput, LifecycleStage, Source, Temperature};
use kizuna_core::patch::Patch;
use kizuna_store::Store;
use kizuna_store::imports::{ImportItem, ImportOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const JA_LAST: &[&str] = &[
    "佐藤",
    "鈴木",
    "高橋",
    "田中",
    "伊藤",
    "渡辺",
    "山本",
    "中村",
    "小林",
    "加藤",
    "吉田",
    "山田",
    "佐々木",
    "山口",
    "松本",
    "井上",
    "木村",
    "林",
    "斎藤",
    "清水",
    "髙橋",
    "山﨑",
];
const JA_LAST_ROMAJI: &[&str] = &[
    "sato",
    "suzuki",
    "takahashi",
    "tanaka",
    "ito",
    "watanabe",
    "yamamoto",
    "nakamura",
    "kobayashi",
    "kato",
    "yoshida",
    "yamada",
    "sasaki",
    "yamaguchi",
    "matsumoto",
    "inoue",
    "kimura",
    "hayashi",
    "saito",
    "shimizu",
    "takahashi",
    "yamazaki",
];
const JA_FIRST: &[&str] = &[
    "太郎",
    "花子",
    "一郎",
    "美咲",
    "健",
    "直子",
    "誠",
    "由美",
    "大輔",
    "彩",
    "翔太",
    "陽子",
    "拓也",
    "恵",
    "悠斗",
    "さくら",
];
const JA_FIRST_ROMAJI: &[&str] = &[
    "taro", "hanako", "ichiro", "misaki", "ken", "naoko", "makoto", "yumi", "daisuke", "aya",
    "shota", "yoko", "takuya", "megumi", "yuto", "sakura",
];
const EN_FIRST: &[&str] = &[
    "John", "Emily", "Michael", "Sarah", "David", "Laura", "James", "Anna", "Robert", "Maria",
];
const EN_LAST: &[&str] = &[
    "Smith", "Johnson", "Brown", "Taylor", "Miller", "Wilson", "Moore", "Clark", "Lewis", "Walker",
];
const JA_COMPANY_STEMS: &[&str] = &[
    "山田商事",
    "鈴木製作所",
    "東都システム",
    "みらい物流",
    "さくら食品",
    "北辰建設",
    "青葉ソフト",
    "富士精機",
    "日の出印刷",
    "大和化学",
    "光和電機",
    "千代田商会",
    "なにわ工業",
    "朝日メディカル",
    "桜井不動産",
    "新星エナジー",
];
const EN_COMPANY_STEMS: &[&str] = &[
    "Global Trade",
    "Northwind",
    "Acme Robotics",
    "Blue Harbor",
    "Pacific Data",
    "Summit Health",
    "Crescent Foods",
    "Vertex Energy",
];
const SUFFIXES: &[&str] = &[
    "",
    "ホールディングス",
    "テクノロジー",
    "ソリューションズ",
    "工業",
    "サービス",
    "ジャパン",
];
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
const TITLES: &[&str] = &[
    "代表取締役",
    "取締役",
    "部長",
    "部長",
    "課長",
    "課長",
    "課長",
    "係長",
    "主任",
    "主任",
    "担当",
    "担当",
    "担当",
    "マネージャー",
];
const EN_TITLES: &[&str] = &[
    "CEO",
    "VP Sales",
    "Director",
    "Manager",
    "Manager",
    "Engineer",
    "Analyst",
    "Specialist",
];
const DEPARTMENTS: &[&str] = &[
    "営業部",
    "マーケティング部",
    "情報システム部",
    "経営企画室",
    "総務部",
    "製造本部",
    "品質保証部",
    "DX推進室",
    "購買部",
];
const REGIONS: &[&str] = &[
    "東京都",
    "東京都",
    "東京都",
    "大阪府",
    "愛知県",
    "神奈川県",
    "福岡県",
    "北海道",
    "宮城県",
    "広島県",
];

/// How much was generated.
pub struct Generated {
    pub contacts: u64,
    pub companies: u64,
}

/// One sample company.
pub struct DemoCompany {
    pub name: String,
    pub domain: String,
    pub industry: &'static str,
    pub employees: i64,
}

/// One sample contact, as plain values (used for the store and for CSV).
pub struct DemoContact {
    pub email: String,
    pub last_name: String,
    pub first_name: String,
    pub job_title: &'static str,
    pub department: &'static str,
    pub phone: String,
    pub region: &'static str,
    pub company: usize,
    pub stage: LifecycleStage,
    pub temperature: Temperature,
    pub source: Source,
}

/// Deterministic sample data.
pub struct DemoData {
    rng: StdRng,
    pub companies: Vec<DemoCompany>,
}

impl DemoData {
    /// A generator for about `contacts` contacts (one company per ~8 contacts).
    pub fn new(contacts: u64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let n_companies = (contacts / 8).max(1);
        let companies = (0..n_companies)
            .map(|i| {
                let en = rng.random_bool(0.15);
                let (name, slug) = if en {
                    let stem = EN_COMPANY_STEMS[rng.random_range(0..EN_COMPANY_STEMS.len())];
                    (
                        format!("{stem} {} Co., Ltd.", i),
                        format!("{}{}", stem.to_lowercase().replace(' ', ""), i),
                    )
                } else {
                    let stem = JA_COMPANY_STEMS[rng.random_range(0..JA_COMPANY_STEMS.len())];
                    let suffix = SUFFIXES[rng.random_range(0..SUFFIXES.len())];
                    let form = match rng.random_range(0..20) {
                        0..=11 => "株式会社{}",
                        12..=16 => "{}株式会社",
                        17..=18 => "有限会社{}",
                        _ => "合同会社{}",
                    };
                    (
                        form.replace("{}", &format!("{stem}{suffix}{i}")),
                        format!("corp{i}"),
                    )
                };
                let employees = match rng.random_range(0..100) {
                    0..=39 => rng.random_range(5..50),
                    40..=74 => rng.random_range(50..300),
                    75..=94 => rng.random_range(300..3000),
                    _ => rng.random_range(3000..50000),
                };
                DemoCompany {
                    name,
                    domain: format!("{slug}.example.jp"),
                    industry: INDUSTRIES[rng.random_range(0..INDUSTRIES.len())],
                    employees,
                }
            })
            .collect();
        DemoData { rng, companies }
    }

    /// The `i`-th contact.
    pub fn contact(&mut self, i: u64) -> DemoContact {
        let rng = &mut self.rng;
        let company = rng.random_range(0..self.companies.len());
        let en = rng.random_bool(0.1);
        let (last, first, local, title) = if en {
            let f = EN_FIRST[rng.random_range(0..EN_FIRST.len())];
            let l = EN_LAST[rng.random_range(0..EN_LAST.len())];
            (
                l.to_string(),
                f.to_string(),
                format!("{}.{}{i}", f.to_lowercase(), l.to_lowercase()),
                EN_TITLES[rng.random_range(0..EN_TITLES.len())],
            )
        } else {
            let li = rng.random_range(0..JA_LAST.len());
            let fi = rng.random_range(0..JA_FIRST.len());
            (
                JA_LAST[li].to_string(),
                JA_FIRST[fi].to_string(),
                format!("{}.{}{i}", JA_FIRST_ROMAJI[fi], JA_LAST_ROMAJI[li]),
                TITLES[rng.random_range(0..TITLES.len())],
            )
        };
        let stage = match rng.random_range(0..100) {
            0..=14 => LifecycleStage::Subscriber,
            15..=69 => LifecycleStage::Lead,
            70..=79 => LifecycleStage::Mql,
            80..=85 => LifecycleStage::Sql,
            86..=89 => LifecycleStage::Opportunity,
            90..=95 => LifecycleStage::Customer,
            96 => LifecycleStage::Evangelist,
            97 => LifecycleStage::Disqualified,
            _ => LifecycleStage::Dormant,
        };
        let temperature = match stage {
            LifecycleStage::Mql | LifecycleStage::Sql | LifecycleStage::Opportunity => {
                Temperature::Hot
            }
            LifecycleStage::Lead if rng.random_bool(0.3) => Temperature::Warm,
            _ => Temperature::Cold,
        };
        let source = match rng.random_range(0..7) {
            0 => Source {
                channel: Some("organic_search".into()),
                referrer: Some("https://www.google.co.jp/".into()),
                landing_page: Some("/blog/lead-nurturing".into()),
                ..Default::default()
            },
            1 => Source {
                channel: Some("paid_search".into()),
                utm_source: Some("google".into()),
                utm_medium: Some("cpc".into()),
                utm_campaign: Some("ma-tool-2026".into()),
                ..Default::default()
            },
            2 => Source {
                channel: Some("social".into()),
                utm_source: Some("linkedin".into()),
                utm_medium: Some("social".into()),
                ..Default::default()
            },
            3 => Source {
                channel: Some("email".into()),
                utm_source: Some("newsletter".into()),
                utm_medium: Some("email".into()),
                ..Default::default()
            },
            4 => Source {
                channel: Some("referral".into()),
                referrer: Some("https://note.com/".into()),
                ..Default::default()
            },
            5 => Source {
                channel: Some("offline".into()),
                detail: Some("展示会 2026-10".into()),
                ..Default::default()
            },
            _ => Source {
                channel: Some("direct".into()),
                landing_page: Some("/".into()),
                ..Default::default()
            },
        };
        DemoContact {
            email: format!("{local}@{}", self.companies[company].domain),
            last_name: last,
            first_name: first,
            job_title: title,
            department: DEPARTMENTS[rng.random_range(0..DEPARTMENTS.len())],
            phone: format!(
                "0{}-{:04}-{:04}",
                rng.random_range(3..99),
                rng.random_range(0..10000),
                rng.random_range(0..10000)
            ),
            region: REGIONS[rng.random_range(0..REGIONS.len())],
            company,
            stage,
            temperature,
            source,
        }
    }
}

fn item(d: &DemoData, c: DemoContact, row: u64) -> ImportItem {
    let co = &d.companies[c.company];
    ImportItem {
        row,
        contact: ContactInput {
            email: Patch::Value(c.email),
            first_name: Patch::Value(c.first_name),
            last_name: Patch::Value(c.last_name),
            phone: Patch::Value(c.phone),
            job_title: Patch::Value(c.job_title.into()),
            department: Patch::Value(c.department.into()),
            lifecycle_stage: Patch::Value(c.stage),
            temperature: Patch::Value(c.temperature),
            source: Patch::Value(c.source),
            address: Patch::Value(kizuna_core::contact::PostalAddress {
                region: Some(c.region.into()),
                country: Some("JP".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        company: Some(CompanyInput {
            name: Patch::Value(co.name.clone()),
            domain: Patch::Value(co.domain.clone()),
            industry: Patch::Value(co.industry.into()),
            employee_count: Patch::Value(co.employees),
            ..Default::default()
        }),
    }
}

/// Writes `contacts` sample contacts (and their companies) through the bulk import path.
pub async fn generate(
    store: &Store,
    contacts: u64,
    seed: u64,
    now: DateTime<Utc>,
) -> anyhow::Result<Generated> {
    let mut data = DemoData::new(contacts, seed);
    let mut w = store
        .begin_import(
            ImportOptions {
                file_name: Some("demo".into()),
                ..Default::default()
            },
            now,
        )
        .await?;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..contacts {
        let c = data.contact(i);
        batch.push(item(&data, c, i + 2));
        if batch.len() == 1000 {
            w.write(std::mem::take(&mut batch)).await?;
        }
    }
    w.write(batch).await?;
    let (_, summary) = w.commit(now, serde_json::json!([]), 0).await?;
    Ok(Generated {
        contacts: summary.created,
        companies: summary.companies_created,
    })
}

/// Writes `rows` sample contacts as a CSV file with Japanese headers, as a trade-show list
/// exported from Excel would be (UTF-8 or Shift_JIS); every 20th row repeats an earlier person
/// with a differently typed e-mail, to exercise dedupe.
pub fn write_csv(
    path: &std::path::Path,
    rows: u64,
    shift_jis: bool,
    seed: u64,
) -> anyhow::Result<()> {
    let mut data = DemoData::new(rows, seed);
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut sink: Box<dyn std::io::Write> = Box::new(file);
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(1 << 16));
    w.write_record([
        "会社名",
        "部署",
        "役職",
        "姓",
        "名",
        "メールアドレス",
        "電話番号",
        "従業員数",
        "業種",
        "都道府県",
    ])?;
    let mut earlier: Vec<String> = Vec::new();
    for i in 0..rows {
        let c = data.contact(i);
        let co = &data.companies[c.company];
        let email = if i % 20 == 19 && !earlier.is_empty() {
            format!(
                " {} ",
                earlier[(i as usize * 7) % earlier.len()].to_uppercase()
            )
        } else {
            c.email.clone()
        };
        if earlier.len() < 10_000 {
            earlier.push(c.email.clone());
        }
        w.write_record([
            co.name.as_str(),
            c.department,
            c.job_title,
            &c.last_name,
            &c.first_name,
            &email,
            &c.phone,
            &co.employees.to_string(),
            co.industry,
            c.region,
        ])?;
        if w.get_ref().len() > (1 << 16) - 1024 {
            flush(&mut w, &mut sink, shift_jis)?;
        }
    }
    flush(&mut w, &mut sink, shift_jis)?;
    sink.flush()?;
    Ok(())
}

fn flush(
    w: &mut csv::Writer<Vec<u8>>,
    sink: &mut Box<dyn std::io::Write>,
    shift_jis: bool,
) -> anyhow::Result<()> {
    // The csv writer gives no mutable access to its buffer: swap in a fresh writer and take the old one's.
    let fresh = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(1 << 16));
    let buf = std::mem::replace(w, fresh)
        .into_inner()
        .map_err(|e| anyhow::anyhow!("csv buffer: {}", e.error()))?;
    if shift_jis {
        let text = std::str::from_utf8(&buf)?;
        let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(text);
        anyhow::ensure!(!unmappable, "sample text not representable in Shift_JIS");
        sink.write_all(&bytes)?;
    } else {
        sink.write_all(&buf)?;
    }
    Ok(())
}

use std::io::Write as _;

/// Weighted choice.
fn pick<'a, T>(rng: &mut StdRng, items: &'a [(T, u32)]) -> &'a T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (it, w) in items {
        if x < *w {
            return it;
        }
        x -= w;
    }
    &items[0].0
}

const PAGES: &[(&str, u32)] = &[
    ("/", 14),
    ("/blog/lead-nurturing", 12),
    ("/blog/lead-scoring", 9),
    ("/blog/ma-tool-comparison", 6),
    ("/products/ma", 11),
    ("/products/crm", 7),
    ("/products/analytics", 4),
    ("/pricing", 11),
    ("/pricing/enterprise", 3),
    ("/case-studies/manufacturing", 5),
    ("/case-studies/it", 3),
    ("/seminars", 5),
    ("/contact", 3),
    ("/careers", 2),
];

const KINDS: &[(&str, u32)] = &[
    ("page.viewed", 55),
    ("email.delivered", 8),
    ("email.opened", 14),
    ("email.clicked", 5),
    ("content.downloaded", 5),
    ("webinar.attended", 3),
    ("seminar.attended", 2),
    ("form.submitted", 5),
    ("trial.started", 1),
    ("login", 2),
];

/// One realistic behaviour event for a contact at `at`.
fn demo_event(
    rng: &mut StdRng,
    contact: uuid::Uuid,
    at: DateTime<Utc>,
) -> kizuna_store::events::NewEvent {
    use serde_json::json;
    let kind = *pick(rng, KINDS);
    let (source, props) = match kind {
        "page.viewed" => {
            let path = *pick(rng, PAGES);
            (
                "sdk",
                json!({"path": path, "url": format!("https://www.kizuna.example{path}"),
                       "title": path.trim_start_matches('/').replace('/', " — "),
                       "referrer": if rng.random_bool(0.3) { "https://www.google.co.jp/" } else { "" }}),
            )
        }
        "email.delivered" | "email.opened" | "email.clicked" => {
            let n = rng.random_range(1..40);
            let mut p = json!({"email_id": format!("nl-2026-{n:02}"), "template": "newsletter"});
            if kind == "email.opened" && rng.random_bool(0.2) {
                p["machine"] = json!(true);
            }
            if kind == "email.clicked" {
                p["url"] = json!("https://www.kizuna.example/blog/lead-scoring");
            }
            ("kizuna", p)
        }
        "content.downloaded" => (
            "sdk",
            json!({"asset": *pick(rng, &[("whitepaper-ma-guide", 5), ("checklist-scoring", 3), ("case-study-manufacturing", 2)]), "type": "whitepaper"}),
        ),
        "webinar.attended" => (
            "import",
            json!({"webinar": "MA入門ウェビナー", "minutes": rng.random_range(10..60)}),
        ),
        "seminar.attended" => (
            "import",
            json!({"seminar": "リードナーチャリング実践セミナー", "city": "東京"}),
        ),
        "form.submitted" => (
            "sdk",
            json!({"form": *pick(rng, &[("document_request", 5), ("inquiry", 3), ("contact", 2)])}),
        ),
        _ => ("api", json!({})),
    };
    kizuna_store::events::NewEvent::new(contact, kind, at, source, props)
}

/// Appends `events` realistic behaviour events for the contacts already in the store, spread
/// over the 90 days before `now` in time order; activity is skewed (a few contacts are very
/// active, most are not), as on a real site. Written directly through the store's event log.
pub async fn generate_events(
    store: &Store,
    events: u64,
    seed: u64,
    now: DateTime<Utc>,
    progress: bool,
) -> anyhow::Result<u64> {
    generate_events_between(
        store,
        events,
        seed,
        now - chrono::Duration::days(90),
        now,
        progress,
    )
    .await
}

/// Like [`generate_events`], spread evenly between `start` and `end`.
pub async fn generate_events_between(
    store: &Store,
    events: u64,
    seed: u64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    progress: bool,
) -> anyhow::Result<u64> {
    let now = end;
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        let chunk = store.contact_ids_after(after, 50_000).await?;
        let Some(last) = chunk.last().copied() else {
            break;
        };
        after = Some(last);
        ids.extend(chunk);
    }
    anyhow::ensure!(!ids.is_empty(), "there are no contacts to attach events to");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let span = (end - start).num_microseconds().unwrap_or(1).max(1);
    let mut written = 0u64;
    let per_tx = 20_000u64;
    while written < events {
        let n = per_tx.min(events - written);
        let batch: Vec<_> = (0..n)
            .map(|k| {
                let i = written + k;
                let at = start + chrono::Duration::microseconds(span / events as i64 * i as i64);
                let u: f64 = rng.random();
                let c = ids[((u.powf(2.5) * ids.len() as f64) as usize).min(ids.len() - 1)];
                demo_event(&mut rng, c, at)
            })
            .collect();
        store.append_events(batch, now).await?;
        written += n;
        if progress && written % 1_000_000 < per_tx {
            eprintln!("  {written} events…");
        }
    }
    Ok(written)
}
