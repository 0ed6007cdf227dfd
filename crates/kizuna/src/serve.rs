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
    let mail_cfg = file.mail.clone().unwrap_or_default().with_env()?;
    let (email, worker) = crate::mail::build(
        &mail_cfg,
        &store,
        clock.clone(),
        &addr.to_string(),
        store_cfg
            .database_url
            .is_none()
            .then_some(store_cfg.data_dir.as_path()),
    )
    .await?;
    let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
    let worker_task = worker.map(|w| {
        let mut rx = worker_stopped.clone();
        tokio::spawn(w.run(async move {
            let _ = rx.changed().await;
        }))
    });
    let email_wake = email.wake().clone();
    let config = WebConfig {
        email: Some(email),
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
    // The engine (segments, scores, lifecycle, handoff) and the owner-notification sender run
    // beside the HTTP server and stop after it; every group commit of tracked events wakes it.
    let engine = kizuna_engine::Engine::new(
        store.clone(),
        clock.clone(),
        kizuna_engine::EngineConfig::default(),
    );
    // Tracked events are written by one group-commit writer, which wakes the engine after each
    // commit.
    let ingestor = Ingestor::start(
        store.clone(),
        clock.clone(),
        IngestorConfig::default(),
        Some(Arc::new(engine.clone())),
    );
    let state = AppState {
        store: store.clone(),
        clock: clock.clone(),
        config: Arc::new(config),
        tracking: Arc::new(Tracking::new(ingestor)),
    };
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let engine_task = engine.spawn(until_stopped(stopping.clone()));
    // Nurture programs: their own reader of the log, durable enrollments and timers.
    let programs = kizuna_engine::program::ProgramRunner::new(
        store.clone(),
        clock.clone(),
        kizuna_engine::program::RunnerConfig {
            recheck: std::time::Duration::from_millis(200),
            idle_poll: std::time::Duration::from_millis(10),
            ..Default::default()
        },
    );
    programs.set_mail_wake(email_wake).await;
    let programs_task = programs.spawn(until_stopped(stopping.clone()));
    let mut notifier = kizuna_engine::notify::Notifier::new(store.clone(), clock.clone());
    if let Some(m) = crate::mail::owner_mail(&mail_cfg, &store)? {
        notifier = notifier.with_mail(m);
    }
    let wake = engine.notifications_queued();
    let stop_notes = until_stopped(stopping.clone());
    let notifier_task = tokio::spawn(async move {
        notifier
            .run(
                std::time::Duration::from_millis(200),
                Some(wake),
                stop_notes,
            )
            .await
    });
    let shutdown = shutdown_signal()?;
    tracing::info!(%addr, "kizuna listening on http://{addr}");
    kizuna_web::serve(listener, state, shutdown).await?;
    tracing::info!("stopped accepting requests; in-flight requests finished");
    let _ = stop.send(true);
    let _ = engine_task.await;
    let _ = programs_task.await;
    let _ = notifier_task.await;
    let _ = stop_worker.send(true);
    if let Some(t) = worker_task {
        let _ = t.await;
    }
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

/// Registers for SIGTERM and Ctrl-C now, and returns a future that resolves on either. The
/// handlers must exist before the server says it is listening: a signal that arrives earlier
/// would otherwise kill the process instead of stopping it gracefully.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle Ctrl-C")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutdown requested; finishing in-flight work");
    })
}
