//! `kizuna serve`: everything in one process, stopped gracefully by SIGTERM or Ctrl-C.

use crate::cli::StoreArgs;
use anyhow::Context;
use kizuna_core::clock::{Clock, SharedClock, SystemClock};
use kizuna_store::Store;
use kizuna_store::ingestor::{Ingestor, IngestorConfig};
use kizuna_store::keys::Scope;
use kizuna_web::tracking::Tracking;
use kizuna_web::{AppState, WebConfig};
use std::process::ExitCode;
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

/// Structured logs: `RUST_LOG` filters (default `info`); `KIZUNA_LOG_FORMAT=json` (or
/// `log_format = "json"` in the config file) for one JSON object per line.
pub fn init_logging(format: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let format = std::env::var("KIZUNA_LOG_FORMAT")
        .ok()
        .or(format.map(str::to_string))
        .unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Runs the server.
pub async fn run(
    listen: Option<String>,
    demo: bool,
    store_args: StoreArgs,
) -> anyhow::Result<ExitCode> {
    let (store_cfg, file) = store_args.resolve()?;
    init_logging(file.log_format.as_deref());
    let shutdown = shutdown_signal();
    let listen = listen
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let store = Store::open(&store_cfg)
        .await
        .context("cannot open the database")?;
    tracing::info!(database = store.describe(), "database ready");
    let clock: SharedClock = Arc::new(SystemClock);

    if demo {
        load_demo(&store, clock.as_ref()).await?;
    }

    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let config = WebConfig {
        max_import_bytes: file.max_import_mib.unwrap_or(512) * 1024 * 1024,
        spool_dir: if store_cfg.database_url.is_none() {
            store_cfg.data_dir.join("spool")
        } else {
            std::env::temp_dir()
        },
        ..Default::default()
    };
    std::fs::create_dir_all(&config.spool_dir)
        .with_context(|| format!("cannot create {}", config.spool_dir.display()))?;
    // Tracked events are written by one group-commit writer; the engine's hook goes here.
    let ingestor = Ingestor::start(
        store.clone(),
        clock.clone(),
        IngestorConfig::default(),
        None,
    );
    let state = AppState {
        store: store.clone(),
        clock,
        config: Arc::new(config),
        tracking: Arc::new(Tracking::new(ingestor)),
    };
    tracing::info!(%addr, "kizuna listening on http://{addr}");
    kizuna_web::serve(listener, state, shutdown).await?;
    tracing::info!("stopped accepting requests; in-flight requests finished");
    store.close().await;
    tracing::info!("database closed; bye");
    Ok(ExitCode::SUCCESS)
}

async fn load_demo(store: &Store, clock: &dyn Clock) -> anyhow::Result<()> {
    if store.count_contacts().await? > 0 {
        tracing::info!("--demo: the database already has contacts; not loading sample data again");
        return Ok(());
    }
    let n = crate::demo::generate(store, 2000, 42, clock.now()).await?;
    let (_, secret) = store
        .create_api_key("demo", &[Scope::Admin], clock.now())
        .await?;
    let wk = store.create_write_key("demo site", clock.now()).await?;
    tracing::info!(
        contacts = n.contacts,
        companies = n.companies,
        "--demo: sample data loaded"
    );
    eprintln!(
        "\n  Demo data loaded: {} contacts, {} companies.\n  Demo admin API key (shown once): {secret}\n  Tracking write key: {wk}\n  Try: curl -H 'Authorization: Bearer {secret}' http://127.0.0.1:8080/api/v1/contacts?limit=3\n",
        n.contacts, n.companies
    );
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives while the server is starting is not lost
/// (nor does it kill the process with the default action).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        {
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = term => {},
                _ = int => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested; finishing in-flight work");
    }
}
