//! `kizuna import contacts` and `kizuna export contacts`.

use crate::cli::StoreArgs;
use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kizuna_core::clock::{Clock, SystemClock};
use kizuna_core::export::ContactCsvWriter;
use kizuna_core::import::Encoding;
use kizuna_store::contacts::ContactFilter;
use kizuna_store::csv_import::CsvImportRequest;
use kizuna_store::imports::ImportOptions;
use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// `kizuna import contacts FILE …`
#[derive(Args, Debug)]
pub struct ImportContactsArgs {
    /// The CSV file.
    pub file: PathBuf,
    /// Map a column to a field: `--map 会社名=company_name` (repeatable; `COLUMN=-` ignores it).
    #[arg(long = "map", value_name = "COLUMN=FIELD")]
    pub map: Vec<String>,
    /// utf-8, shift_jis or auto (default).
    #[arg(long, default_value = "auto")]
    pub encoding: String,
    /// Put every imported contact on this static list (created if missing).
    #[arg(long)]
    pub list: Option<String>,
    /// Import the valid rows and report the invalid ones, instead of importing nothing.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Overwrite non-empty fields of existing contacts (default: only fill empty ones).
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `kizuna export contacts --out FILE …`
#[derive(Args, Debug)]
pub struct ExportContactsArgs {
    /// Output file (`-` for standard output).
    #[arg(long)]
    pub out: PathBuf,
    /// Only this segment (segments come with the engine; lists work now via --list).
    #[arg(long)]
    pub segment: Option<String>,
    /// Only members of this static list (name or id).
    #[arg(long)]
    pub list: Option<String>,
    /// Write a UTF-8 BOM so that Excel opens Japanese text correctly.
    #[arg(long)]
    pub excel: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Counts bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Parses `COLUMN=FIELD` pairs (the column may itself contain `=`; the last `=` splits).
pub fn parse_mappings(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|m| match m.rsplit_once('=') {
            Some((c, f)) if !c.trim().is_empty() && !f.trim().is_empty() => {
                Ok((c.trim().to_string(), f.trim().to_string()))
            }
            _ => bail!("--map {m:?}: expected COLUMN=FIELD"),
        })
        .collect()
}

pub async fn import_contacts(args: ImportContactsArgs) -> anyhow::Result<ExitCode> {
    let encoding: Encoding = args
        .encoding
        .parse()
        .map_err(|e: kizuna_core::ValidationError| anyhow::anyhow!(e.message))?;
    let mappings = parse_mappings(&args.map)?;
    let store = args.store.open().await?;
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bytes = Arc::new(AtomicU64::new(0));
    let rows = Arc::new(AtomicU64::new(0));
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {bytes}/{total_bytes} {msg} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let ticker = {
        let (bar, bytes, rows) = (bar.clone(), bytes.clone(), rows.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(bytes.load(Ordering::Relaxed));
                bar.set_message(format!("{} rows", rows.load(Ordering::Relaxed)));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    };
    let req = CsvImportRequest {
        encoding,
        mappings,
        skip_invalid: args.skip_invalid,
        options: ImportOptions {
            overwrite: args.overwrite,
            list: args.list.clone(),
            file_name: args
                .file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned()),
        },
    };
    let started = std::time::Instant::now();
    let result = store
        .import_csv(
            Counting {
                inner: std::io::BufReader::with_capacity(1 << 20, file),
                bytes: bytes.clone(),
            },
            req,
            SystemClock.now(),
            Some(rows.clone()),
        )
        .await;
    ticker.abort();
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(kizuna_store::csv_import::CsvImportError::Plan(errs)) => {
            for e in &errs.0 {
                eprintln!("error: {}: {}", e.field, e.message);
            }
            eprintln!("nothing was imported");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let elapsed = started.elapsed();
    if !report.ignored_columns.is_empty() {
        eprintln!(
            "note: columns not imported (map them with --map COLUMN=FIELD): {}",
            report.ignored_columns.join(", ")
        );
    }
    for n in &report.notes {
        eprintln!("note: row {}: {}", n.row, n.note);
    }
    for e in &report.errors {
        eprintln!(
            "{}: {e}",
            if report.status == "failed" {
                "error"
            } else {
                "skipped"
            }
        );
    }
    if report.error_count as usize > report.errors.len() {
        eprintln!(
            "… and {} more problems",
            report.error_count as usize - report.errors.len()
        );
    }
    if report.status == "failed" {
        eprintln!(
            "{} problem(s) in {} — nothing was imported (fix the rows, or use --skip-invalid to import the valid ones). Import id {}",
            report.error_count,
            args.file.display(),
            report.import_id
        );
        return Ok(ExitCode::from(1));
    }
    let s = &report.summary;
    println!(
        "imported {} rows in {:.1?} ({} encoding): {} created, {} updated, {} unchanged, {} duplicates within the file; {} companies created, {} rows matched an existing company{}{}",
        s.rows,
        elapsed,
        report.encoding,
        s.created,
        s.updated,
        s.unchanged,
        s.duplicates_in_file,
        s.companies_created,
        s.companies_matched,
        args.list
            .as_ref()
            .map(|l| format!("; list {l:?}"))
            .unwrap_or_default(),
        if s.skipped > 0 {
            format!("; {} invalid rows skipped", s.skipped)
        } else {
            String::new()
        },
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn export_contacts(args: ExportContactsArgs) -> anyhow::Result<ExitCode> {
    if args.segment.is_some() {
        bail!(
            "--segment needs the segmentation engine, which this version does not have yet; use --list"
        );
    }
    let store = args.store.open().await?;
    let mut filter = ContactFilter::default();
    if let Some(l) = &args.list {
        let list = match l.parse::<uuid::Uuid>() {
            Ok(id) => store.list(id).await.ok(),
            Err(_) => store.list_by_name(l).await?,
        };
        filter.list_id = Some(list.with_context(|| format!("no list {l:?}"))?.id);
    }
    let custom: Vec<String> = store.fields().await?.into_iter().map(|f| f.name).collect();
    let out: Box<dyn std::io::Write> = if args.out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?,
        ))
    };
    let mut w = ContactCsvWriter::new(out, custom, args.excel)?;
    let mut companies = HashMap::new();
    let mut cursor = None;
    let mut n = 0u64;
    loop {
        let page = store.list_contacts(&filter, cursor, 1000).await?;
        for c in &page.data {
            let company = match c.company_id {
                Some(id) => {
                    if let std::collections::hash_map::Entry::Vacant(e) = companies.entry(id) {
                        e.insert(store.company(id).await.ok());
                    }
                    companies.get(&id).and_then(|c| c.as_ref())
                }
                None => None,
            };
            w.write(c, company)?;
            n += 1;
        }
        match page
            .next_cursor
            .as_deref()
            .and_then(kizuna_store::Cursor::decode)
        {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    w.finish()?;
    eprintln!("exported {n} contacts to {}", args.out.display());
    let _ = SystemClock.now();
    Ok(ExitCode::SUCCESS)
}

/// `kizuna import events FILE …`
#[derive(Args, Debug)]
pub struct ImportEventsArgs {
    /// The CSV file: an `email` (or `contact_id`) column, `event`, `occurred_at`, optional
    /// `message_id`; other columns become the event's properties.
    pub file: PathBuf,
    /// The event type of every row, for a file without an event column (e.g. seminar.attended).
    #[arg(long)]
    pub event: Option<String>,
    /// The time of every row, for a file without an occurred_at column.
    #[arg(long)]
    pub at: Option<String>,
    /// Offset of times written without one.
    #[arg(long, default_value = "+09:00", allow_hyphen_values = true)]
    pub utc_offset: String,
    /// utf-8, shift_jis or auto (default).
    #[arg(long, default_value = "auto")]
    pub encoding: String,
    /// Create a contact for an e-mail nobody has (otherwise such a row is an error).
    #[arg(long)]
    pub create_contacts: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn import_events(args: ImportEventsArgs) -> anyhow::Result<ExitCode> {
    use kizuna_core::tracking::offline::{
        EventsCsvError, EventsCsvOptions, check_event_type, parse_event_time, read_events_csv,
    };
    let encoding: Encoding = args
        .encoding
        .parse()
        .map_err(|e: kizuna_core::ValidationError| anyhow::anyhow!(e.message))?;
    let offset: chrono::FixedOffset = args
        .utc_offset
        .parse()
        .map_err(|_| anyhow::anyhow!("--utc-offset {:?}: expected e.g. +09:00", args.utc_offset))?;
    let event_type = match &args.event {
        Some(t) => Some(check_event_type(t).map_err(|e| anyhow::anyhow!("--event: {e}"))?),
        None => None,
    };
    let occurred_at = match &args.at {
        Some(t) => Some(
            parse_event_time(t, offset)
                .with_context(|| format!("--at {t:?}: expected e.g. 2026-10-14 10:00"))?,
        ),
        None => None,
    };
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let now = SystemClock.now();
    let opts = EventsCsvOptions {
        encoding,
        event_type,
        occurred_at,
        offset,
        now,
    };
    let (events, encoding) = match read_events_csv(&bytes, &opts) {
        Ok(r) => r,
        Err(EventsCsvError::Rows(errs)) => {
            for e in &errs {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{} problem(s) in {} — nothing was imported",
                errs.len(),
                args.file.display()
            );
            return Ok(ExitCode::from(1));
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("nothing was imported");
            return Ok(ExitCode::from(2));
        }
    };
    let store = args.store.open().await?;
    let file_name = args
        .file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned());
    let options = kizuna_store::offline::OfflineOptions {
        create_contacts: args.create_contacts,
        source: "import".into(),
        detail: file_name,
    };
    match store.record_offline_events(events, &options, now).await {
        Ok(out) => {
            println!(
                "imported {} events from {} rows ({} encoding): {} already imported before, {} contacts created",
                out.stored, out.rows, encoding, out.duplicates, out.contacts_created
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(kizuna_store::offline::OfflineError::Rows(errs)) => {
            for e in &errs {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{} row(s) name no known contact — nothing was imported (import the contacts first, or use --create-contacts)",
                errs.len()
            );
            Ok(ExitCode::from(1))
        }
        Err(kizuna_store::offline::OfflineError::Store(e)) => Err(e.into()),
    }
}
