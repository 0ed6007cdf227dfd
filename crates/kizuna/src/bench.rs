//! `kizuna bench SUBJECT`: measured figures, each next to a baseline measured in the same run.

use crate::demo::{DemoData, write_csv};
use anyhow::Context;
use clap::Subcommand;
use kizuna_core::clock::{Clock, SystemClock};
use kizuna_core::contact::Contact;
use kizuna_core::import::Encoding;
use kizuna_store::contacts::ContactFilter;
use kizuna_store::csv_import::CsvImportRequest;
use kizuna_store::db::Val;
use kizuna_store::imports::ImportOptions;
use kizuna_store::{Store, StoreConfig};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Subcommand, Debug)]
pub enum Subject {
    /// CSV contact import: rows/s on SQLite (and PostgreSQL), against a plain batched INSERT
    /// of the same rows through the same driver; then list queries on the imported contacts.
    Import {
        /// Rows in the generated CSV.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Write the CSV in Shift_JIS (as Japanese Excel does) instead of UTF-8.
        #[arg(long)]
        shift_jis: bool,
        /// Also measure PostgreSQL at this URL (a fresh schema is created and dropped).
        #[arg(long, env = "KIZUNA_BENCH_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// The real-time engine on demo data: (a) bulk build of a behavioural segment against the
    /// equivalent SQL query, (b) steady-state events/s with 100 segments and 5 scoring models
    /// against reading the log alone, (c) event → MQL handoff webhook latency against a bare
    /// POST.
    #[command(alias = "engine")]
    Segment {
        /// Contacts generated.
        #[arg(long, default_value_t = 1_000_000)]
        contacts: u64,
        /// Behaviour events generated in all: the history, then the live stream.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Of those, events streamed after the definitions are built (the steady state).
        #[arg(long, default_value_t = 500_000)]
        live: u64,
        /// Handoffs timed for the latency figure.
        #[arg(long, default_value_t = 200)]
        handoffs: u32,
        /// Also measure PostgreSQL at this URL (a fresh schema is created and dropped).
        #[arg(long, env = "KIZUNA_BENCH_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Tracking ingestion: Segment batches POSTed to /v1/batch over loopback by concurrent
    /// clients; events/s and p50/p99 latency on SQLite (and PostgreSQL), against the storage
    /// path without HTTP and a no-op handler behind the same HTTP stack.
    Ingest {
        /// Events in all.
        #[arg(long, default_value_t = 300_000)]
        events: usize,
        /// Events per batch.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Distinct visitors the events come from.
        #[arg(long, default_value_t = 20_000)]
        visitors: usize,
        /// Also measure PostgreSQL at this URL (a fresh schema is created and dropped).
        #[arg(long, env = "KIZUNA_BENCH_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Email sending: personalized MJML + footer + tracking + DKIM through the pooled SMTP
    /// client to a local sink, next to the ceiling (one pre-rendered message through the same
    /// client to the same sink), then the full durable outbox path (SQLite, broadcast).
    Send {
        /// Messages per measurement.
        #[arg(long, default_value_t = 100_000)]
        recipients: usize,
        /// SMTP sink `HOST:PORT`; default: start postfix's `smtp-sink` on a free port.
        #[arg(long)]
        smtp: Option<String>,
        /// SMTP connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// DKIM algorithm: `rsa` (2048-bit, key made with openssl) or `ed25519`.
        #[arg(long, default_value = "rsa")]
        dkim: String,
        /// Recipients of the outbox measurement (0 skips it); default: `--recipients`.
        #[arg(long)]
        outbox_recipients: Option<usize>,
    },
    /// Nurture programs (SQLite): a wave of waits expiring together (step executions/s, next
    /// to a plain batched insert of the same outbox rows), then trigger event → mail accepted
    /// by a local SMTP sink, p50/p99, under a background event load.
    Program {
        /// Contacts in the wave.
        #[arg(long, default_value_t = 1_000_000)]
        contacts: u64,
        /// Background events per second during the latency measurement.
        #[arg(long, default_value_t = 1000)]
        background: u32,
        /// Trigger events timed.
        #[arg(long, default_value_t = 300)]
        triggers: u32,
    },
}

pub async fn run(subject: Subject) -> anyhow::Result<ExitCode> {
    // Progress lines from the engine (builds, phases) when RUST_LOG asks for them.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    match subject {
        Subject::Program {
            contacts,
            background,
            triggers,
        } => crate::bench_program::run(contacts, background, triggers).await,
        Subject::Import {
            rows,
            shift_jis,
            database_url,
        } => bench_import(rows, shift_jis, database_url).await,
        Subject::Segment {
            contacts,
            events,
            live,
            handoffs,
            database_url,
        } => {
            crate::bench_engine::bench_segment(contacts, events, live, handoffs, database_url).await
        }
        Subject::Ingest {
            events,
            batch,
            clients,
            visitors,
            database_url,
        } => {
            crate::bench_ingest::run(crate::bench_ingest::IngestBench {
                events,
                batch,
                clients,
                visitors,
                database_url,
            })
            .await
        }
        Subject::Send {
            recipients,
            smtp,
            connections,
            dkim,
            outbox_recipients,
        } => {
            crate::bench_send::run(
                recipients,
                smtp,
                connections,
                &dkim,
                outbox_recipients.unwrap_or(recipients),
            )
            .await
        }
    }
}

pub(crate) struct Backend {
    pub(crate) name: &'static str,
    pub(crate) config: StoreConfig,
    schema: Option<String>,
}

/// Makes a fresh database of one backend for a run tagged `tag`.
pub(crate) type BackendMaker = Box<dyn Fn(&str) -> Backend>;

pub(crate) fn backends(
    tmp: &std::path::Path,
    pg: &Option<String>,
) -> Vec<(&'static str, BackendMaker)> {
    let tmp = tmp.to_path_buf();
    let mut out: Vec<(&'static str, BackendMaker)> = vec![(
        "sqlite",
        Box::new(move |tag: &str| Backend {
            name: "sqlite",
            config: StoreConfig {
                data_dir: tmp.join(tag),
                ..Default::default()
            },
            schema: None,
        }),
    )];
    if let Some(url) = pg.clone() {
        out.push((
            "postgres",
            Box::new(move |tag: &str| {
                let schema = format!("bench_{tag}_{}", Uuid::now_v7().simple());
                Backend {
                    name: "postgres",
                    config: StoreConfig {
                        database_url: Some(url.clone()),
                        pg_schema: Some(schema.clone()),
                        ..Default::default()
                    },
                    schema: Some(schema),
                }
            }),
        ));
    }
    out
}

pub(crate) async fn drop_schema(store: &Store, b: &Backend) {
    if let Some(schema) = &b.schema {
        let mut tx = match store.db().begin().await {
            Ok(t) => t,
            Err(_) => return,
        };
        let _ = tx
            .execute(sqlx_safe(format!("DROP SCHEMA {schema} CASCADE")), vec![])
            .await;
        let _ = tx.commit().await;
    }
    store.close().await;
}

fn sqlx_safe(s: String) -> kizuna_store::db::SqlText {
    kizuna_store::db::assert_sql_safe(s)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn bench_import(rows: u64, shift_jis: bool, pg: Option<String>) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let csv_path = tmp.path().join(if shift_jis {
        "contacts.sjis.csv"
    } else {
        "contacts.csv"
    });
    let t = Instant::now();
    write_csv(&csv_path, rows, shift_jis, 7)?;
    let size = std::fs::metadata(&csv_path)?.len();
    println!(
        "kizuna bench import — {rows} rows, {} CSV, {:.1} MiB (generated in {:.1?})",
        if shift_jis { "Shift_JIS" } else { "UTF-8" },
        size as f64 / 1048576.0,
        t.elapsed()
    );
    println!(
        "{:<9} {:>14} {:>16} {:>9} {:>12} {:>16} {:>16}",
        "backend",
        "import rows/s",
        "ceiling rows/s",
        "ratio",
        "import s",
        "email lookup",
        "updated-since"
    );
    let mut merge_lines = Vec::new();
    for (_, make) in backends(tmp.path(), &pg) {
        // The import, end to end: decode, parse, validate, dedupe, companies, contacts, events, list.
        let b = make("import");
        let store = Store::open(&b.config)
            .await
            .with_context(|| format!("cannot open {}", b.name))?;
        let file = std::fs::File::open(&csv_path)?;
        let req = CsvImportRequest {
            encoding: if shift_jis {
                Encoding::ShiftJis
            } else {
                Encoding::Utf8
            },
            options: ImportOptions {
                list: Some("bench".into()),
                file_name: Some("bench.csv".into()),
                overwrite: false,
            },
            ..Default::default()
        };
        let t = Instant::now();
        let report = store
            .import_csv(
                std::io::BufReader::with_capacity(1 << 20, file),
                req,
                SystemClock.now(),
                None,
            )
            .await?;
        let import_time = t.elapsed();
        anyhow::ensure!(
            report.status == "succeeded",
            "bench import failed: {:?}",
            report.errors.first()
        );
        let imported = report.summary.rows;
        // The generated file repeats an earlier e-mail (upper-cased, padded) on every 20th row:
        // those rows must merge into the first, not create a contact.
        let dups = rows / 20;
        anyhow::ensure!(
            report.summary.created == rows - dups && report.summary.duplicates_in_file == dups,
            "{}: wrong merge result: {} created, {} duplicates (expected {} and {dups})",
            b.name,
            report.summary.created,
            report.summary.duplicates_in_file,
            rows - dups
        );
        let count = store.count_contacts().await? as u64;
        anyhow::ensure!(count == rows - dups, "{}: {count} contacts stored", b.name);
        merge_lines.push(format!(
            "{}: {} rows → {} contacts created, {} duplicate rows merged into their first row, {} companies",
            b.name, rows, report.summary.created, dups, report.summary.companies_created
        ));

        // Queries on the imported contacts.
        let sample: Vec<String> = store
            .list_contacts(&ContactFilter::default(), None, 1000)
            .await?
            .data
            .into_iter()
            .filter_map(|c| c.email)
            .collect();
        let t = Instant::now();
        for e in &sample {
            let found = store.contact_by_email(e).await?;
            anyhow::ensure!(found.is_some(), "lookup by email found nothing");
        }
        let per_lookup = t.elapsed() / sample.len().max(1) as u32;
        let since = SystemClock.now() - chrono::Duration::hours(1);
        let t = Instant::now();
        let mut pages = 0;
        let mut cursor = None;
        while pages < 20 {
            let page = store
                .list_contacts(
                    &ContactFilter {
                        updated_since: Some(since),
                        ..Default::default()
                    },
                    cursor,
                    50,
                )
                .await?;
            pages += 1;
            match page
                .next_cursor
                .as_deref()
                .and_then(kizuna_store::Cursor::decode)
            {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let per_page = t.elapsed() / pages;
        drop_schema(&store, &b).await;

        // The ceiling: the same contact rows, plain multi-row INSERTs in one transaction.
        let b = make("ceiling");
        let store = Store::open(&b.config).await?;
        let mut data = DemoData::new(rows, 7);
        let now = SystemClock.now();
        let t = Instant::now();
        let mut tx = store.db().begin().await?;
        let mut batch: Vec<Contact> = Vec::with_capacity(1000);
        for i in 0..rows {
            let d = data.contact(i);
            let mut c = Contact::new(Uuid::now_v7(), now);
            c.email = Some(if i % 20 == 19 {
                format!("dup{i}@{}", d.email)
            } else {
                d.email
            });
            c.first_name = Some(d.first_name);
            c.last_name = Some(d.last_name);
            c.phone = Some(d.phone);
            c.job_title = Some(d.job_title.into());
            c.department = Some(d.department.into());
            batch.push(c);
            if batch.len() == 1000 || i + 1 == rows {
                insert_plain(&mut tx, &batch).await?;
                batch.clear();
            }
        }
        tx.commit().await?;
        let ceiling_time = t.elapsed();
        drop_schema(&store, &b).await;

        let ir = rate(imported, import_time);
        let cr = rate(rows, ceiling_time);
        println!(
            "{:<9} {:>14.0} {:>16.0} {:>8.0}% {:>12.2} {:>13.0} µs {:>13.2} ms",
            b.name,
            ir,
            cr,
            100.0 * ir / cr,
            import_time.as_secs_f64(),
            per_lookup.as_secs_f64() * 1e6,
            per_page.as_secs_f64() * 1e3
        );
    }
    for l in &merge_lines {
        println!("merge check — {l}");
    }
    if let Some(mib) = peak_rss_mib() {
        println!(
            "peak resident memory of this process: {mib:.0} MiB (the CSV is {:.0} MiB; rows stream in batches of 1,000)",
            size as f64 / 1048576.0
        );
    }
    println!(
        "import = decode + parse + validate + dedupe by e-mail + 名寄せ companies + contacts + contact.created events + list membership, one transaction"
    );
    println!(
        "ceiling = the same contact rows as plain 1,000-row INSERT statements in one transaction, same driver"
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn insert_plain(
    tx: &mut kizuna_store::db::Tx,
    batch: &[Contact],
) -> anyhow::Result<()> {
    let mut sql = String::from(
        "INSERT INTO contacts (id, email, first_name, last_name, phone, job_title, department, company_id, lifecycle_stage, temperature, owner_id, source, address, custom, created_at, updated_at) VALUES ",
    );
    let mut args: Vec<Val> = Vec::with_capacity(batch.len() * 16);
    for (i, c) in batch.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        let n = args.len();
        sql.push('(');
        sql.push_str(
            &(1..=16)
                .map(|k| format!("${}", n + k))
                .collect::<Vec<_>>()
                .join(","),
        );
        sql.push(')');
        args.extend(kizuna_store::contacts::row_values(c));
    }
    tx.execute(sqlx_safe(sql), args).await?;
    Ok(())
}
