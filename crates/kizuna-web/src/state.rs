//! What every handler shares.

use kizuna_core::clock::SharedClock;
use kizuna_store::Store;
use std::path::PathBuf;

/// Settings of the HTTP edge.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Largest CSV accepted by `POST /api/v1/imports`, in bytes.
    pub max_import_bytes: u64,
    /// Largest JSON body accepted by the REST API, in bytes.
    pub max_json_bytes: usize,
    /// Where uploads are spooled before an import reads them.
    pub spool_dir: PathBuf,
    /// The email channel (templates, outbox, tracking, unsubscribe); `None` answers 503 on
    /// email routes.
    pub email: Option<std::sync::Arc<kizuna_delivery::EmailService>>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            max_import_bytes: 512 * 1024 * 1024,
            max_json_bytes: 1024 * 1024,
            spool_dir: std::env::temp_dir(),
            email: None,
        }
    }
}

/// Shared state: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Time.
    pub clock: SharedClock,
    /// Settings.
    pub config: std::sync::Arc<WebConfig>,
    /// Tracking ingestion (group commit) and its write-key cache.
    pub tracking: std::sync::Arc<crate::tracking::Tracking>,
}

impl AppState {
    /// State over a store, with tracking ingestion started (default sizes, no commit hook).
    /// Needs a Tokio runtime (the ingestion writer is a task).
    pub fn new(store: Store, clock: SharedClock, config: WebConfig) -> AppState {
        let ingestor = kizuna_store::ingestor::Ingestor::start(
            store.clone(),
            clock.clone(),
            kizuna_store::ingestor::IngestorConfig::default(),
            None,
        );
        AppState {
            store,
            clock,
            config: std::sync::Arc::new(config),
            tracking: std::sync::Arc::new(crate::tracking::Tracking::new(ingestor)),
        }
    }
}
