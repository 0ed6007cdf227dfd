//! The event log's position column (migration 0004), on every backend.

use chrono::{TimeZone, Utc};
use kizuna_store::events::NewEvent;
use kizuna_store::log::{LogCursor, LogPosition};
use kizuna_store::{Store, StoreConfig, args};
use serde_json::json;

async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = vec![(
        Store::open(&StoreConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .await
        .unwrap(),
        Some(dir),
    )];
    if let Ok(url) = std::env::var("KIZUNA_TEST_DATABASE_URL") {
        out.push((
            Store::open(&StoreConfig {
                database_url: Some(url),
                pg_schema: Some(format!("t_{}", uuid::Uuid::now_v7().simple())),
                max_connections: 4,
                ..Default::default()
            })
            .await
            .unwrap(),
            None,
        ));
    }
    out
}

#[tokio::test]
async fn every_insert_gets_a_place_in_the_log_in_commit_order() {
    for (s, _dir) in stores().await {
        let t = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
        let c = uuid::Uuid::now_v7();
        let ev = |k: &str| NewEvent::new(c, k, t, "api", json!({}));
        s.append_events(vec![ev("a.one"), ev("a.two")], t)
            .await
            .unwrap();
        // A row written by other code, without events::append, is numbered too (SQLite:
        // trigger; PostgreSQL: column defaults).
        let mut tx = s.db().begin().await.unwrap();
        tx.execute(
            "INSERT INTO events (id, contact_id, type, occurred_at, received_at, source, properties) VALUES ($1, $2, 'b.raw', $3, $3, 'api', '{}')",
            args![uuid::Uuid::now_v7(), c, t],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        s.append_events(vec![ev("c.three")], t).await.unwrap();
        let (log, cursor) = s.read_log(&LogCursor::default(), 100).await.unwrap();
        let types: Vec<&str> = log.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, vec!["a.one", "a.two", "b.raw", "c.three"]);
        assert!(log.windows(2).all(|w| w[0].position < w[1].position));
        assert_eq!(s.log_head().await.unwrap(), log[3].position);
        assert_eq!(cursor.position, log[3].position);
        assert!(cursor.pending.is_empty());
        // Reading after a cursor returns only what follows.
        let after_two = LogCursor {
            position: log[1].position,
            pending: vec![],
        };
        assert_eq!(s.read_log(&after_two, 100).await.unwrap().0.len(), 2);
        let limited = s.read_log(&LogCursor::default(), 3).await.unwrap();
        assert_eq!((limited.0.len(), limited.1.position), (3, log[2].position));
        let upto = LogCursor {
            position: log[2].position,
            pending: vec![],
        };
        let types = ["a.two".to_string(), "c.three".to_string()];
        let got = s
            .read_upto(LogPosition::default(), &upto, Some(&types), 100)
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "type filter and upper bound");
    }
}
