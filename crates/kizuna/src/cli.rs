//! Command-line interface (names per the public contract).

use crate::config::FileConfig;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use kizuna_core::clock::{Clock, SystemClock};
use kizuna_store::keys::Scope;
use kizuna_store::{Store, StoreConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Kizuna — lead nurturing and marketing automation.
#[derive(Parser, Debug)]
#[command(name = "kizuna", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Which database to use (every command accepts these).
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Data directory for the embedded SQLite database.
    #[arg(long, env = "KIZUNA_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// `postgres://user:pass@host/db` to use PostgreSQL instead of SQLite.
    #[arg(
        long,
        env = "KIZUNA_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Config file (TOML).
    #[arg(long, env = "KIZUNA_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

impl StoreArgs {
    /// Resolves flags, env and the config file into a store config.
    pub fn resolve(&self) -> anyhow::Result<(StoreConfig, FileConfig)> {
        let file = FileConfig::load(self.config.as_deref())?;
        let defaults = StoreConfig::default();
        let cfg = StoreConfig {
            database_url: self.database_url.clone().or(file.database_url.clone()),
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir.clone())
                .unwrap_or(defaults.data_dir),
            sqlite_synchronous: std::env::var("KIZUNA_SQLITE_SYNCHRONOUS")
                .ok()
                .or(file.sqlite_synchronous.clone())
                .unwrap_or(defaults.sqlite_synchronous),
            ..defaults
        };
        Ok((cfg, file))
    }

    /// Opens the store (migrating it).
    pub async fn open(&self) -> anyhow::Result<Store> {
        let (cfg, _) = self.resolve()?;
        Store::open(&cfg).await.context("cannot open the database")
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: API, tracking, UI, engine and workers.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "KIZUNA_LISTEN")]
        listen: Option<String>,
        /// Load realistic sample data on first start (and print a demo API key).
        #[arg(long)]
        demo: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Apply schema migrations (serve also does this on start).
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage API keys.
    ApiKey {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Manage tracking write keys.
    WriteKey {
        #[command(subcommand)]
        action: WriteKeyAction,
    },
    /// Import contacts or events from CSV.
    Import {
        #[command(subcommand)]
        what: ImportWhat,
    },
    /// Export contacts to CSV.
    Export {
        #[command(subcommand)]
        what: ExportWhat,
    },
    /// Generate realistic sample data (also the benchmark data).
    Demo {
        /// Number of contacts.
        #[arg(long, default_value_t = 2000)]
        contacts: u64,
        /// Number of behaviour events to generate.
        #[arg(long, default_value_t = 0)]
        events: u64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Create or update segments, scoring models and the handoff policy from JSON files (all
    /// checked first; nothing is written if one is invalid).
    Apply {
        /// Definition files: one definition object or an array, each with a "kind" (segment,
        /// scoring_model, handoff_policy, program, email_template).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print measured figures for a subject, with a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        subject: crate::bench::Subject,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// Create a key; the secret is printed alone on the last line, once.
    Create {
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// read, write or admin (repeatable; admin ⊇ write ⊇ read). Default: read.
        #[arg(long = "scope", value_parser = ["read", "write", "admin"])]
        scopes: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum WriteKeyAction {
    /// Create a write key; printed alone on the last line.
    Create {
        /// The source it is for (e.g. the web site).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImportWhat {
    /// Import contacts (dedupe/merge by e-mail, all or nothing).
    Contacts(crate::transfer::ImportContactsArgs),
    /// Import offline events (seminar attended, trade-show visit, call…) attached by e-mail,
    /// all or nothing.
    Events(crate::transfer::ImportEventsArgs),
}

#[derive(Subcommand, Debug)]
pub enum ExportWhat {
    /// Export contacts.
    Contacts(crate::transfer::ExportContactsArgs),
}

/// Runs a command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            listen,
            demo,
            store,
        } => crate::serve::run(listen, demo, store).await,
        Command::Migrate { store } => {
            crate::serve::init_logging(None);
            let s = store.open().await?;
            println!(
                "schema at version {} ({})",
                kizuna_store::migrate::current_version(s.db()).await?,
                s.describe()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ApiKey {
            action:
                KeyAction::Create {
                    name,
                    scopes,
                    store,
                },
        } => {
            let s = store.open().await?;
            let scopes: Vec<Scope> = scopes
                .iter()
                .map(|x| x.parse())
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?;
            let (key, secret) = s.create_api_key(&name, &scopes, SystemClock.now()).await?;
            eprintln!(
                "created API key {:?} ({}) with scopes {:?}; store the secret now, it is not shown again:",
                key.name, key.prefix, key.scopes
            );
            println!("{secret}");
            Ok(ExitCode::SUCCESS)
        }
        Command::ApiKey {
            action: KeyAction::List { store },
        } => {
            let s = store.open().await?;
            for k in s.api_keys().await? {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.prefix,
                    k.name,
                    k.scopes
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    state
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::WriteKey {
            action: WriteKeyAction::Create { name, store },
        } => {
            let s = store.open().await?;
            let key = s.create_write_key(&name, SystemClock.now()).await?;
            eprintln!("created write key for {name:?}:");
            println!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Import {
            what: ImportWhat::Contacts(args),
        } => crate::transfer::import_contacts(args).await,
        Command::Import {
            what: ImportWhat::Events(args),
        } => crate::transfer::import_events(args).await,
        Command::Export {
            what: ExportWhat::Contacts(args),
        } => crate::transfer::export_contacts(args).await,
        Command::Demo {
            contacts,
            events,
            store,
        } => {
            let s = store.open().await?;
            let started = std::time::Instant::now();
            let now = SystemClock.now();
            let n = crate::demo::generate(&s, contacts, 42, now).await?;
            println!(
                "created {} contacts and {} companies in {:.1?}",
                n.contacts,
                n.companies,
                started.elapsed()
            );
            if events > 0 {
                let started = std::time::Instant::now();
                let written = crate::demo::generate_events(&s, events, 42, now, true).await?;
                println!(
                    "appended {written} behaviour events (page views, downloads, webinars, seminars, forms, email) over the last 90 days in {:.1?}",
                    started.elapsed()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply { files, store } => {
            let s = store.open().await?;
            let mut docs = Vec::new();
            for f in &files {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid JSON", f.display()))?;
                docs.extend(kizuna_engine::apply::documents(&f.display().to_string(), v));
            }
            // Templates first: programs of the same run may name them.
            let templates = match crate::apply_templates::apply(&s, &mut docs).await? {
                Ok(t) => t,
                Err(errs) => {
                    for e in errs {
                        for v in e.errors.0 {
                            eprintln!("{}: {}: {}", e.source, v.field, v.message);
                        }
                    }
                    eprintln!("nothing was applied");
                    return Ok(ExitCode::FAILURE);
                }
            };
            for a in &templates {
                let id = a.id.map(|i| format!(" ({i})")).unwrap_or_default();
                println!("{} {} {:?}{id}", a.outcome, a.kind, a.name);
            }
            if docs.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            match kizuna_engine::apply::apply(&s, &SystemClock, docs).await {
                Ok(done) => {
                    for a in done {
                        let id = a.id.map(|i| format!(" ({i})")).unwrap_or_default();
                        println!("{} {} {:?}{id}", a.outcome, a.kind, a.name);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errs) => {
                    for e in errs {
                        for v in e.errors.0 {
                            eprintln!("{}: {}: {}", e.source, v.field, v.message);
                        }
                    }
                    if templates.is_empty() {
                        eprintln!("nothing was applied");
                    } else {
                        eprintln!("only the e-mail templates above were applied");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Bench { subject } => crate::bench::run(subject).await,
    }
}
